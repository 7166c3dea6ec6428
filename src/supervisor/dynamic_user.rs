//! `DynamicUser=yes`: a transient uid and gid for a unit while it runs,
//! from systemd's documented range 61184–65519, and its state, cache and
//! logs directories under `private/` with a symlink, as systemd keeps them.
//!
//! The id is a hash of the user name into the range, moved past ids that
//! /etc/passwd or /etc/group already use or another running unit holds, so
//! the same unit gets the same id run after run unless something took it.
//! Units naming the same `User=` share it while both run, as in systemd.
//! There is no NSS module here: the id has no passwd entry (`id` prints
//! the number alone), and `USER`, `LOGNAME` and `HOME=/` come from aikore.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use std::sync::Mutex;

/// systemd's range for dynamic users (`DYNAMIC_UID_MIN`..=`DYNAMIC_UID_MAX`).
pub const FIRST: u32 = 61184;
pub const LAST: u32 = 65519;

/// The ids held now: uid → (user name, the units holding it).
static HELD: Mutex<BTreeMap<u32, (String, Vec<String>)>> = Mutex::new(BTreeMap::new());

/// A dynamic user of one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DynamicUser {
    pub uid: u32,
    pub name: String,
}

/// The dynamic user of `unit` when it asks for one: none when `User=` names
/// a user that exists (systemd then uses that one), else the id held for
/// that name or a free one.
pub fn for_unit(unit: &crate::units::Unit) -> Option<Result<DynamicUser, String>> {
    if !unit.service.exec.ns.dynamic_user {
        return None;
    }
    let name = match &unit.service.user {
        Some(name) => {
            if nix::unistd::User::from_name(name).ok().flatten().is_some() {
                return None;
            }
            name.clone()
        }
        None => {
            unit.name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '-' }).collect()
        }
    };
    Some(acquire(&unit.name, &name).map(|uid| DynamicUser { uid, name }))
}

fn taken_by_the_system(id: u32) -> bool {
    nix::unistd::User::from_uid(id.into()).ok().flatten().is_some()
        || nix::unistd::Group::from_gid(id.into()).ok().flatten().is_some()
}

/// FNV-1a of the name: where the search for a free id starts.
fn start_of(name: &str) -> u32 {
    let hash = name.bytes().fold(0x811c_9dc5u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193));
    hash % (LAST - FIRST + 1)
}

fn acquire(unit: &str, name: &str) -> Result<u32, String> {
    let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((&uid, (_, units))) = held.iter_mut().find(|(_, (n, _))| n == name) {
        if !units.iter().any(|u| u == unit) {
            units.push(unit.to_string());
        }
        return Ok(uid);
    }
    let span = LAST - FIRST + 1;
    let start = start_of(name);
    for i in 0..span {
        let uid = FIRST + (start + i) % span;
        if held.contains_key(&uid) || taken_by_the_system(uid) {
            continue;
        }
        held.insert(uid, (name.to_string(), vec![unit.to_string()]));
        return Ok(uid);
    }
    Err(format!("DynamicUser=: no free id left in {FIRST}-{LAST}"))
}

/// The run of `unit` ended: its hold on the id goes.
pub fn release(unit: &str) {
    let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
    for (_, units) in held.values_mut() {
        units.retain(|u| u != unit);
    }
    held.retain(|_, (_, units)| !units.is_empty());
}

/// A `StateDirectory=`/`CacheDirectory=`/`LogsDirectory=` of a dynamic
/// user: the real directory `<base>/private/<name>` (`private` 0700 and
/// root's, so a later holder of the same id cannot reach it from the host),
/// and the symlink `<base>/<name>` → `private/<name>`. A directory left at
/// `<base>/<name>` by a run without DynamicUser= is moved in, as systemd does.
pub fn private_directory(base: &Path, name: &str) -> Result<PathBuf, String> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let private = base.join("private");
    if !private.is_dir() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&private)
            .map_err(|e| format!("{}: {e}", private.display()))?;
    }
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| format!("chmod {}: {e}", private.display()))?;
    let real = private.join(name);
    let public = base.join(name);
    let link_target = Path::new("private").join(name);
    match std::fs::symlink_metadata(&public) {
        Ok(m) if m.file_type().is_symlink() => {}
        Ok(m) if m.is_dir() && !real.exists() => {
            if let Some(parent) = real.parent() {
                std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
            }
            std::fs::rename(&public, &real)
                .map_err(|e| format!("moving {} to {}: {e}", public.display(), real.display()))?;
        }
        Ok(_) => return Err(format!("{} exists and is not the dynamic user's symlink", public.display())),
        Err(_) => {}
    }
    std::fs::create_dir_all(&real).map_err(|e| format!("{}: {e}", real.display()))?;
    if std::fs::symlink_metadata(&public).is_err() {
        // `a/b` lives in `private/a/b`: the link is relative to `a/`.
        let depth = Path::new(name).components().count();
        let up: PathBuf = std::iter::repeat_n("..", depth - 1).collect();
        let target = if depth > 1 { up.join(&link_target) } else { link_target };
        if let Some(parent) = public.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        std::os::unix::fs::symlink(&target, &public).map_err(|e| format!("symlink {}: {e}", public.display()))?;
    }
    Ok(real)
}

/// Gives `dir` and everything in it to `uid`/`gid` when the top is someone
/// else's (the id changed since the last run), without following symlinks.
pub fn chown_tree(dir: &Path, uid: u32, gid: u32) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let top = std::fs::symlink_metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if top.uid() == uid && top.gid() == gid {
        return Ok(());
    }
    fn walk(path: &Path, uid: u32, gid: u32) -> Result<(), String> {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(|e| format!("chown {}: {e}", path.display()))?;
        let meta = std::fs::symlink_metadata(path).map_err(|e| e.to_string())?;
        if meta.is_dir() {
            for entry in std::fs::read_dir(path).map_err(|e| format!("{}: {e}", path.display()))?.flatten() {
                walk(&entry.path(), uid, gid)?;
            }
        }
        Ok(())
    }
    walk(dir, uid, gid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_per_name_shared_by_name_and_freed_at_the_end() {
        let a = acquire("dyn-test-a.service", "dyn-test-user").unwrap();
        assert!((FIRST..=LAST).contains(&a));
        assert_eq!(acquire("dyn-test-b.service", "dyn-test-user").unwrap(), a, "the same User= shares the id");
        let other = acquire("dyn-test-c.service", "dyn-test-other").unwrap();
        assert_ne!(other, a);
        release("dyn-test-a.service");
        assert_eq!(acquire("dyn-test-d.service", "dyn-test-user").unwrap(), a, "still held by b");
        for u in ["dyn-test-b.service", "dyn-test-c.service", "dyn-test-d.service"] {
            release(u);
        }
        assert!(!HELD.lock().unwrap().contains_key(&a));
        assert_eq!(acquire("dyn-test-e.service", "dyn-test-user").unwrap(), a, "the same id next run");
        release("dyn-test-e.service");
    }

    #[test]
    fn private_directories_get_a_symlink_and_take_over_an_old_dir() {
        let base = tempfile::tempdir().unwrap();
        let real = private_directory(base.path(), "app").unwrap();
        assert_eq!(real, base.path().join("private/app"));
        assert_eq!(std::fs::read_link(base.path().join("app")).unwrap(), Path::new("private/app"));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(base.path().join("private")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        // Again: nothing changes.
        assert_eq!(private_directory(base.path(), "app").unwrap(), real);
        // An old plain dir moves in with its files.
        std::fs::create_dir(base.path().join("old")).unwrap();
        std::fs::write(base.path().join("old/kept"), "x").unwrap();
        let moved = private_directory(base.path(), "old").unwrap();
        assert!(moved.join("kept").exists());
        assert!(std::fs::symlink_metadata(base.path().join("old")).unwrap().file_type().is_symlink());
        // A nested name links back up.
        private_directory(base.path(), "a/b").unwrap();
        assert_eq!(std::fs::read_link(base.path().join("a/b")).unwrap(), Path::new("../private/a/b"));
        assert!(base.path().join("a/b").is_dir());
    }
}
