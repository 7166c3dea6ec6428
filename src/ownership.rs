//! Who owns what in the data dir (docs/security.md, "Privilege separation"):
//! aikore's own state is the daemon's and not writable by the instance user
//! (PUID); only the instances' work dirs are PUID's. Older versions gave the
//! whole top level to PUID, so every start puts aikore's state back.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Top-level dirs that hold aikore's own state: the daemon's, recursively.
pub const STATE_DIRS: &[&str] = &["units", "nginx", "logs", "trashcan", "blueprints"];
/// Top-level files that are aikore's own state, mode 0600.
pub const STATE_FILES: &[&str] = &["aikore.db", "aikore.db-wal", "aikore.db-shm", "cli.token", "aikore.pids"];
/// Where symlinks and other things found in aikore's own dirs are moved
/// (root 0700): never followed, never deleted, there for the operator to inspect.
pub const QUARANTINE: &str = "quarantine";
/// The parent of NGINX's temp dirs (the daemon's); the dirs in it are the
/// only part of `nginx/` its workers write.
pub const NGINX_TMP: &str = "nginx/tmp";

/// What `secure_data_dir` changed, for the log.
#[derive(Debug, Default)]
pub struct Secured {
    /// Entries whose owner or mode was fixed.
    pub fixed: usize,
    /// Entries moved to the quarantine dir (symlinks, hard links, devices).
    pub quarantined: Vec<PathBuf>,
}

fn me() -> (u32, u32) {
    (nix::unistd::geteuid().as_raw(), nix::unistd::getegid().as_raw())
}

/// Makes `path` (never a symlink: checked by the caller) the daemon's and not
/// writable by group or others (`mode` when given).
fn own(path: &Path, meta: &fs::Metadata, mode: Option<u32>, out: &mut Secured) -> io::Result<()> {
    let (uid, gid) = me();
    if meta.uid() != uid || meta.gid() != gid {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
        out.fixed += 1;
    }
    let current = meta.permissions().mode() & 0o7777;
    // setuid/setgid bits planted by someone else go too.
    let wanted = mode.unwrap_or(current & !0o6022);
    if current != wanted {
        fs::set_permissions(path, fs::Permissions::from_mode(wanted))?;
        out.fixed += 1;
    }
    Ok(())
}

fn quarantine(data_dir: &Path, path: &Path, out: &mut Secured) -> io::Result<()> {
    let dir = data_dir.join(QUARANTINE);
    fs::create_dir_all(&dir)?;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    let label = path.strip_prefix(data_dir).unwrap_or(path).display().to_string().replace('/', "_");
    let target = dir.join(format!("{label}-{stamp}"));
    // rename() moves the link itself, never what it points at.
    fs::rename(path, &target)?;
    tracing::warn!(path = %path.display(), moved_to = %target.display(), "found a symlink or odd file in aikore's own state; moved it to quarantine");
    out.quarantined.push(target);
    Ok(())
}

/// Whether `meta` is something aikore's own dirs may hold: a directory, or a
/// regular file with one link (a hard link to a file elsewhere would make a
/// chmod here change that file too).
fn acceptable(meta: &fs::Metadata) -> bool {
    let t = meta.file_type();
    t.is_dir() || (t.is_file() && meta.nlink() == 1)
}

/// Secures `path` and, for a dir, everything below it, top-down: a dir is made
/// the daemon's before it is listed, so nothing in it can be swapped while
/// we walk it. `skip` names subtrees that are not aikore's (instance dirs in
/// the trash, NGINX's temp dirs): they are left as they are.
fn secure_tree(data_dir: &Path, path: &Path, skip: &dyn Fn(&Path) -> bool, out: &mut Secured) -> io::Result<()> {
    let meta = fs::symlink_metadata(path)?;
    if !acceptable(&meta) {
        return quarantine(data_dir, path, out);
    }
    own(path, &meta, None, out)?;
    if meta.is_dir() {
        for entry in fs::read_dir(path)? {
            let entry = entry?;
            let child = entry.path();
            if skip(&child) {
                // Not ours, but never a symlink either: a restore would move it into place.
                if !fs::symlink_metadata(&child)?.is_dir() {
                    quarantine(data_dir, &child, out)?;
                }
                continue;
            }
            secure_tree(data_dir, &child, skip, out)?;
        }
    }
    Ok(())
}

/// Puts aikore's own state in the data dir back into the daemon's hands
/// (a no-op unless we run as root: only root has another user to fear here).
/// NGINX's temp dirs in `nginx/tmp/` are left to its workers (the daemon
/// gives them out after writing the config).
pub fn secure_data_dir(data_dir: &Path) -> io::Result<Secured> {
    let mut out = Secured::default();
    if !nix::unistd::geteuid().is_root() {
        return Ok(out);
    }
    let meta = fs::symlink_metadata(data_dir)?;
    own(data_dir, &meta, Some(0o755), &mut out)?;
    let trash = data_dir.join("trashcan");
    let nginx_tmp = data_dir.join(NGINX_TMP);
    // An instance dir in the trash stays its user's, as it was before delete;
    // NGINX's temp dirs are its workers'.
    let skip = |p: &Path| {
        p.parent() == Some(&nginx_tmp) || (p.parent().and_then(Path::parent) == Some(&trash) && p.ends_with("instance"))
    };
    for name in STATE_DIRS {
        let path = data_dir.join(name);
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => secure_tree(data_dir, &path, &skip, &mut out)?,
            Ok(_) => quarantine(data_dir, &path, &mut out)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    for name in STATE_FILES {
        let path = data_dir.join(name);
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_file() && m.nlink() == 1 => own(&path, &m, Some(0o600), &mut out)?,
            Ok(_) => quarantine(data_dir, &path, &mut out)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    // instances/ is the daemon's; each instance dir in it stays its user's.
    let instances = data_dir.join("instances");
    match fs::symlink_metadata(&instances) {
        Ok(m) if m.is_dir() => {
            own(&instances, &m, Some(0o755), &mut out)?;
            for entry in fs::read_dir(&instances)? {
                let entry = entry?;
                if !entry.file_type()?.is_dir() {
                    quarantine(data_dir, &entry.path(), &mut out)?;
                }
            }
        }
        Ok(_) => quarantine(data_dir, &instances, &mut out)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    Ok(out)
}

/// Creates `path` (a dir of aikore's own state) if missing, the daemon's, 0755.
/// Hands `path` to `who` (uid, gid) without following a symlink at its end:
/// the one way aikore gives something in the data dir to another user (an
/// instance's work dir to PUID, NGINX's temp dirs to its worker user).
pub fn hand_over(path: &Path, who: (u32, u32)) -> io::Result<()> {
    std::os::unix::fs::lchown(path, Some(who.0), Some(who.1))
}

/// The data dir, opened once at boot: created, canonical, and aikore's own
/// state in it given back to the daemon before anything in it is read.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// `strict` (an instance user is set): failing to secure the state is an
    /// error, as the instance user could otherwise plant links in it; without
    /// one it is a warning (a checkout run by a plain user cannot chown).
    pub fn open(path: &Path, strict: bool) -> io::Result<DataDir> {
        fs::create_dir_all(path)
            .map_err(|e| io::Error::new(e.kind(), format!("creating data dir {}: {e}", path.display())))?;
        let root = fs::canonicalize(path)?;
        match secure_data_dir(&root) {
            Ok(secured) if secured.fixed > 0 || !secured.quarantined.is_empty() => tracing::warn!(
                fixed = secured.fixed,
                quarantined = secured.quarantined.len(),
                "gave aikore's own state in the data dir back to the daemon"
            ),
            Ok(_) => {}
            Err(e) if strict => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("securing aikore's state in the data dir from the instance user: {e}"),
                ))
            }
            Err(e) => tracing::warn!(error = %e, "cannot secure aikore's state in the data dir"),
        }
        Ok(DataDir { root })
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    /// A dir of aikore's own state (`units`, `logs`, ...): the daemon's, never a symlink.
    pub fn state_dir(&self, rel: &str) -> io::Result<PathBuf> {
        let path = self.root.join(rel);
        state_dir(&path)?;
        Ok(path)
    }

    /// A file of aikore's own state made 0600 if it exists (the store's files).
    pub fn private_file(&self, rel: &str) {
        private_file(&self.root.join(rel));
    }

    /// Hands `rel` (below the data dir) to `who`; see [`hand_over`].
    pub fn hand_over(&self, rel: &str, who: (u32, u32)) -> io::Result<()> {
        hand_over(&self.root.join(rel), who)
    }
}

pub fn state_dir(path: &Path) -> io::Result<()> {
    fs::create_dir_all(path)?;
    if fs::symlink_metadata(path)?.file_type().is_symlink() {
        return Err(io::Error::other(format!("{} is a symlink", path.display())));
    }
    Ok(())
}

/// Makes a file of aikore's own state 0600 (the database and its journals).
pub fn private_file(path: &Path) {
    if let Ok(m) = fs::symlink_metadata(path) {
        if m.is_file() && m.permissions().mode() & 0o077 != 0 {
            let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o600));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quarantines_symlinks_and_hard_links_in_state_dirs() {
        if !nix::unistd::geteuid().is_root() {
            // The function is a no-op for a non-root daemon; nothing to check.
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let data = d.path();
        fs::create_dir_all(data.join("units")).unwrap();
        fs::create_dir_all(data.join("instances/a")).unwrap();
        fs::create_dir_all(data.join("nginx/tmp/proxy")).unwrap();
        std::os::unix::fs::symlink("/etc", data.join("nginx/tmp/client_body")).unwrap();
        fs::write(data.join("outside"), "x").unwrap();
        fs::write(data.join("units/a.instance"), "[Instance]\n").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", data.join("units/evil.service")).unwrap();
        fs::hard_link(data.join("outside"), data.join("units/linked.service")).unwrap();
        std::os::unix::fs::symlink("/root", data.join("logs")).unwrap();
        for p in ["", "units", "units/a.instance", "instances", "instances/a"] {
            std::os::unix::fs::lchown(data.join(p), Some(65534), Some(65534)).unwrap();
        }
        fs::set_permissions(data.join("units"), fs::Permissions::from_mode(0o777)).unwrap();
        std::os::unix::fs::lchown(data.join("nginx/tmp/proxy"), Some(33), Some(33)).unwrap();
        let secured = secure_data_dir(data).unwrap();
        assert_eq!(secured.quarantined.len(), 4, "{secured:?}");
        assert!(fs::symlink_metadata(data.join("nginx/tmp/client_body")).is_err(), "a link NGINX would chown through");
        assert!(fs::symlink_metadata(data.join("units/evil.service")).is_err());
        assert!(fs::symlink_metadata(data.join("logs")).is_err());
        assert!(fs::symlink_metadata(data.join("units/linked.service")).is_err());
        for p in ["", "units", "units/a.instance", "instances"] {
            let m = fs::metadata(data.join(p)).unwrap();
            assert_eq!(m.uid(), 0, "{p}");
            assert_eq!(m.mode() & 0o022, 0, "{p}");
        }
        assert_eq!(fs::metadata(data.join("instances/a")).unwrap().uid(), 65534, "instance dirs stay PUID's");
        assert_eq!(fs::metadata(data.join("nginx/tmp")).unwrap().uid(), 0);
        assert_eq!(fs::metadata(data.join("nginx/tmp/proxy")).unwrap().uid(), 33, "the workers' own");
        assert_eq!(fs::metadata(data.join(QUARANTINE)).unwrap().mode() & 0o777, 0o700);
    }
}
