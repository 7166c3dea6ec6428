//! The run's credentials directory (`LoadCredential=`, `SetCredential=`):
//! `/run/credentials/<unit>`, as systemd names it, 0500 with 0400 files,
//! owned by the unit's `User=`/`Group=`, in `$CREDENTIALS_DIRECTORY`;
//! removed when the run ends.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::units::{Credential, CredentialSource};

/// Where a credential name (a `LoadCredential=` path that is not absolute)
/// is looked up, after aikore's own `$CREDENTIALS_DIRECTORY` (credentials
/// passed to aikore itself): systemd's system credential stores.
pub const STORES: &[&str] = &["/etc/credstore", "/run/credstore", "/usr/lib/credstore"];

/// Where the credentials directories live.
pub const BASE: &str = "/run/credentials";

/// systemd's cap on one credential (CREDENTIAL_SIZE_MAX).
const MAX_SIZE: u64 = 1024 * 1024;

fn read_capped(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?.take(MAX_SIZE + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_SIZE {
        return Err(std::io::Error::other("larger than 1 MiB"));
    }
    Ok(bytes)
}

/// The bytes of a `LoadCredential=` source.
fn load(path: &Path, id: &str) -> Result<Vec<u8>, String> {
    if path.is_absolute() {
        return read_capped(path).map_err(|e| format!("LoadCredential={id}:{}: {e}", path.display()));
    }
    let own = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
    let dirs = own.into_iter().chain(STORES.iter().map(PathBuf::from));
    let mut tried = Vec::new();
    for dir in dirs {
        let candidate = dir.join(path);
        match read_capped(&candidate) {
            Ok(bytes) => return Ok(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => tried.push(candidate.display().to_string()),
            Err(e) => return Err(format!("LoadCredential={id}: {}: {e}", candidate.display())),
        }
    }
    Err(format!("LoadCredential={id}: '{}' is in none of {}", path.display(), tried.join(", ")))
}

/// The bytes of each credential id: a `LoadCredential=` that cannot be read
/// falls back to a `SetCredential=` of the same id (systemd's rule), else it
/// fails the start.
fn resolve(creds: &[Credential]) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    let mut ids: Vec<&str> = Vec::new();
    for c in creds {
        if !ids.contains(&c.id.as_str()) {
            ids.push(&c.id);
        }
    }
    for id in ids {
        let from_file = creds.iter().rev().find_map(|c| match &c.source {
            CredentialSource::Load(p) if c.id == id => Some(p),
            _ => None,
        });
        let set = creds.iter().rev().find_map(|c| match &c.source {
            CredentialSource::Set(v) if c.id == id => Some(v),
            _ => None,
        });
        let bytes = match (from_file.map(|p| load(p, id)), set) {
            (Some(Ok(b)), _) => b,
            (Some(Err(_)), Some(v)) | (None, Some(v)) => v.clone(),
            (Some(Err(e)), None) => return Err(e),
            (None, None) => continue,
        };
        out.push((id.to_string(), bytes));
    }
    Ok(out)
}

/// Writes the unit's credentials into a fresh `/run/credentials/<unit>`
/// and returns that directory, or None when the unit has none.
pub fn write(unit: &str, creds: &[Credential], owner: (Option<u32>, Option<u32>)) -> Result<Option<PathBuf>, String> {
    if creds.is_empty() {
        return Ok(None);
    }
    let values = resolve(creds)?;
    let dir = Path::new(BASE).join(unit);
    remove(&dir);
    std::fs::create_dir_all(BASE).map_err(|e| format!("{BASE}: {e}"))?;
    // Made 0700 while it is filled, so nobody reads a half-written file.
    std::fs::DirBuilder::new().mode(0o700).create(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let fill = || -> std::io::Result<()> {
        for (id, bytes) in &values {
            let path = dir.join(id);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o400)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)?;
            f.write_all(bytes)?;
            std::os::unix::fs::fchown(&f, owner.0, owner.1)?;
        }
        std::os::unix::fs::chown(&dir, owner.0, owner.1)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o500))
    };
    if let Err(e) = fill() {
        remove(&dir);
        return Err(format!("credentials in {}: {e}", dir.display()));
    }
    Ok(Some(dir))
}

/// Removes a credentials directory (its 0500 mode is lifted first, so that
/// this works without CAP_DAC_OVERRIDE too).
pub fn remove(dir: &Path) {
    if dir.symlink_metadata().is_err() {
        return;
    }
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    if let Err(e) = std::fs::remove_dir_all(dir) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a credentials directory");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_load_falls_back_to_set_and_otherwise_fails() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, "from-file").unwrap();
        let cred = |id: &str, source| Credential { id: id.into(), source };
        let creds = vec![
            cred("a", CredentialSource::Load(file.clone())),
            cred("a", CredentialSource::Set(b"default".to_vec())),
            cred("b", CredentialSource::Load("/nonexistent/aikore".into())),
            cred("b", CredentialSource::Set(b"fallback".to_vec())),
        ];
        let got = resolve(&creds).unwrap();
        assert_eq!(got, vec![("a".into(), b"from-file".to_vec()), ("b".into(), b"fallback".to_vec())]);
        let err = resolve(&[cred("c", CredentialSource::Load("aikore-surely-absent".into()))]).unwrap_err();
        assert!(err.contains("/etc/credstore/aikore-surely-absent"), "{err}");
    }
}
