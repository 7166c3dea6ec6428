//! `Type=forking`: reading a daemon's PID file and deciding whether to trust
//! it. systemd refuses a PID file that is not owned by root when the pid it
//! names is outside the unit's cgroup (an unprivileged daemon could write any
//! pid there and have the manager signal, and wait on, a foreign process);
//! aikore applies the same rule with its own notion of membership (the unit's
//! cgroup, or its process group and environment markers without one).

use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use super::machine::PidFileError;

/// What a PID file says, and who owns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PidFile {
    pub pid: i32,
    pub owner: u32,
}

/// Reads `path` without following a symlink in its last component (a link
/// planted by the daemon's user could point at any file). Missing, empty or
/// half-written: not yet.
pub fn read(path: &Path) -> Result<PidFile, PidFileError> {
    let mut file = match std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(PidFileError::NotYet),
        Err(e) => return Err(PidFileError::Refused(format!("PIDFile {}: {e}", path.display()))),
    };
    let meta = file.metadata().map_err(|e| PidFileError::Refused(format!("PIDFile {}: {e}", path.display())))?;
    if !meta.is_file() {
        return Err(PidFileError::Refused(format!("PIDFile {} is not a regular file", path.display())));
    }
    let mut text = String::new();
    // A PID file is a number and a newline; more is not a PID file.
    (&mut file).take(64).read_to_string(&mut text).map_err(|_| PidFileError::NotYet)?;
    let Some(word) = text.split_whitespace().next() else { return Err(PidFileError::NotYet) };
    match word.parse::<i32>() {
        Ok(pid) if pid > 1 => Ok(PidFile { pid, owner: meta.uid() }),
        _ => Err(PidFileError::Refused(format!("PIDFile {} does not hold a pid: {word:?}", path.display()))),
    }
}

/// Whether `pid` is a live process (not a zombie: one that already ended is not a main process).
pub fn alive(pid: i32) -> bool {
    crate::sys::proc::stat(pid).is_some_and(|s| !s.is_zombie())
}

/// systemd's rule: a PID file owned by someone other than the manager's
/// user is only believed when the pid is one of the unit's processes.
pub fn trusted(file: PidFile, manager_uid: u32, member: bool, path: &Path) -> Result<i32, PidFileError> {
    if file.owner == manager_uid || member {
        Ok(file.pid)
    } else {
        Err(PidFileError::Refused(format!(
            "PIDFile {} is owned by uid {}, not by aikore's uid {manager_uid}, and names pid {}, which is not a \
             process of this unit: refused",
            path.display(),
            file.owner,
            file.pid
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pid_file_is_read_without_following_links_and_judged_by_owner_and_membership() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.pid");
        assert_eq!(read(&path), Err(PidFileError::NotYet));
        std::fs::write(&path, "").unwrap();
        assert_eq!(read(&path), Err(PidFileError::NotYet));
        std::fs::write(&path, "4242\n").unwrap();
        let file = read(&path).unwrap();
        assert_eq!(file.pid, 4242);
        assert!(matches!(read(&path), Ok(PidFile { pid: 4242, .. })));
        std::fs::write(&path, "nope").unwrap();
        assert!(matches!(read(&path), Err(PidFileError::Refused(_))));
        let link = dir.path().join("link.pid");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(matches!(read(&link), Err(PidFileError::Refused(_))), "a symlink is not followed");

        let foreign = PidFile { pid: 1234, owner: 1000 };
        assert!(matches!(trusted(foreign, 0, false, &path), Err(PidFileError::Refused(m)) if m.contains("uid 1000")));
        assert_eq!(trusted(foreign, 0, true, &path), Ok(1234), "a process of the unit is believed");
        assert_eq!(trusted(PidFile { pid: 1234, owner: 0 }, 0, false, &path), Ok(1234), "root's file is believed");
    }
}
