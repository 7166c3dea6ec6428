//! File operations in places the instance user can write (an instance's work
//! dir): relative to a directory fd, never following a symlink, never trusting
//! a name that could have been planted there. docs/security.md has the model.
//!
//! The parent of an instance dir (`<data>/instances/`) is the daemon's, so the
//! path up to the instance dir is trustworthy; only the last component and
//! everything inside it are the instance user's, and those are handled here.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn cstr(name: &str) -> io::Result<CString> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{name:?} is not a plain file name")));
    }
    CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a file name"))
}

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Opens a directory without following a symlink at its last component.
pub fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a path"))?;
    // SAFETY: a valid NUL-terminated path; the returned fd is owned below.
    let fd = check(unsafe {
        libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
    })?;
    // SAFETY: open() just returned this fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens the directory `name` in `dir`, refusing a symlink.
pub fn open_dir_at(dir: &impl AsFd, name: &str) -> io::Result<OwnedFd> {
    let c = cstr(name)?;
    // SAFETY: a valid dir fd and NUL-terminated name; the fd is owned below.
    let fd = check(unsafe {
        libc::openat(
            dir.as_fd().as_raw_fd(),
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: openat() just returned this fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Makes `base/rel` a directory, creating missing parts for `owner`, without
/// following a symlink anywhere below `base` (which must be trustworthy).
pub fn ensure_dirs_beneath(base: &Path, rel: &Path, owner: Option<(u32, u32)>) -> io::Result<()> {
    let mut dir = open_dir(base)?;
    for part in rel.components() {
        let std::path::Component::Normal(name) = part else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{} is not a plain path", rel.display())));
        };
        let name = name.to_str().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "non-UTF-8 path"))?;
        ensure_dir_at(&dir, name, owner)?;
        dir = open_dir_at(&dir, name)?;
    }
    Ok(())
}

/// Removes the entry `name` (not a directory) from `dir`.
pub fn unlink_at(dir: &impl AsFd, name: &str) -> io::Result<()> {
    let c = cstr(name)?;
    // SAFETY: a valid dir fd and NUL-terminated name.
    check(unsafe { libc::unlinkat(dir.as_fd().as_raw_fd(), c.as_ptr(), 0) })?;
    Ok(())
}

/// Opens `name` in `dir` for reading: a regular file only (a symlink, FIFO or
/// device is refused, so a planted FIFO cannot block the daemon).
pub fn open_regular_at(dir: &impl AsFd, name: &str) -> io::Result<File> {
    let c = cstr(name)?;
    // SAFETY: a valid dir fd and NUL-terminated name; the fd is owned below.
    let fd = check(unsafe {
        libc::openat(
            dir.as_fd().as_raw_fd(),
            c.as_ptr(),
            libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY,
        )
    })?;
    // SAFETY: openat() just returned this fd.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("{name} is not a regular file")));
    }
    Ok(file)
}

/// Reads at most `limit` bytes of a regular file `name` in `dir` as text.
pub fn read_text_at(dir: &impl AsFd, name: &str, limit: u64) -> io::Result<String> {
    let file = open_regular_at(dir, name)?;
    let mut text = String::new();
    file.take(limit).read_to_string(&mut text)?;
    Ok(text)
}

/// A temp name nobody can predict, so pre-planting it is pointless (and
/// O_EXCL refuses whatever is there anyway).
fn temp_name() -> String {
    let mut bytes = [0u8; 12];
    // SAFETY: getrandom writes at most bytes.len() bytes into our buffer.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != bytes.len() as isize {
        // Uniqueness is all O_EXCL needs; the clock and pid give that.
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos());
        return format!(".aikore-{}-{}.tmp", std::process::id(), nanos.unwrap_or(0));
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(".aikore-{hex}.tmp")
}

/// Replaces `name` in `dir` with `bytes` atomically: a fresh file created with
/// O_EXCL|O_NOFOLLOW under a random name, given to `owner`, then renamed over
/// `name` (a symlink there is replaced, never followed).
pub fn write_at(dir: &impl AsFd, name: &str, bytes: &[u8], mode: u32, owner: Option<(u32, u32)>) -> io::Result<()> {
    let target = cstr(name)?;
    let dirfd = dir.as_fd().as_raw_fd();
    for _ in 0..8 {
        let tmp_name = temp_name();
        let tmp = cstr(&tmp_name)?;
        // SAFETY: a valid dir fd and NUL-terminated name; the fd is owned below.
        let fd = unsafe {
            libc::openat(
                dirfd,
                tmp.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0o600 as libc::c_uint,
            )
        };
        if fd < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::AlreadyExists {
                continue;
            }
            return Err(e);
        }
        // SAFETY: openat() just returned this fd.
        let mut file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        let written = (|| -> io::Result<()> {
            file.write_all(bytes)?;
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::fchown(&file, Some(uid), Some(gid))?;
            }
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(std::fs::Permissions::from_mode(mode))?;
            file.sync_all()?;
            // SAFETY: valid dir fd and NUL-terminated names.
            check(unsafe { libc::renameat(dirfd, tmp.as_ptr(), dirfd, target.as_ptr()) })?;
            Ok(())
        })();
        if written.is_err() {
            // SAFETY: valid dir fd and name; removes only our own temp entry.
            unsafe { libc::unlinkat(dirfd, tmp.as_ptr(), 0) };
        }
        return written;
    }
    Err(io::Error::new(io::ErrorKind::AlreadyExists, "no free temp name"))
}

/// Makes sure `name` in `dir` is a directory (not a symlink to one), creating
/// it for `owner` when missing.
pub fn ensure_dir_at(dir: &impl AsFd, name: &str, owner: Option<(u32, u32)>) -> io::Result<()> {
    let c = cstr(name)?;
    let dirfd = dir.as_fd().as_raw_fd();
    // SAFETY: valid dir fd and NUL-terminated name.
    let made = unsafe { libc::mkdirat(dirfd, c.as_ptr(), 0o755) };
    if made < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::AlreadyExists {
            return Err(e);
        }
    }
    // SAFETY: an all-zero stat is a valid out-buffer for fstatat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid dir fd, name and out-pointer.
    check(unsafe { libc::fstatat(dirfd, c.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) })?;
    if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("{name} exists and is not a directory")));
    }
    if made == 0 {
        if let Some((uid, gid)) = owner {
            // SAFETY: valid dir fd and name; AT_SYMLINK_NOFOLLOW never chowns a link's target.
            check(unsafe { libc::fchownat(dirfd, c.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW) })?;
        }
    }
    Ok(())
}

/// Replaces `path` whole or not at all (a reader sees the old or the new
/// bytes, never half): written beside it, synced, then renamed over it.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_at_replaces_a_symlink_instead_of_following_it() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        let inner = d.path().join("inner");
        std::fs::create_dir(&inner).unwrap();
        std::os::unix::fs::symlink(&victim, inner.join("launch.sh")).unwrap();
        let dir = open_dir(&inner).unwrap();
        write_at(&dir, "launch.sh", b"new", 0o755, None).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
        assert_eq!(std::fs::read_to_string(inner.join("launch.sh")).unwrap(), "new");
        assert!(!std::fs::symlink_metadata(inner.join("launch.sh")).unwrap().file_type().is_symlink());
        assert_eq!(std::fs::read_dir(&inner).unwrap().count(), 1, "no temp file left behind");
    }

    #[test]
    fn reads_refuse_symlinks_and_fifos() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("secret"), "x").unwrap();
        std::os::unix::fs::symlink(d.path().join("secret"), d.path().join("link")).unwrap();
        let fifo = CString::new(d.path().join("fifo").as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let dir = open_dir(d.path()).unwrap();
        assert!(read_text_at(&dir, "link", 100).is_err());
        assert!(read_text_at(&dir, "fifo", 100).is_err());
        assert_eq!(read_text_at(&dir, "secret", 100).unwrap(), "x");
        assert!(read_text_at(&dir, "../secret", 100).is_err());
        assert!(open_dir(&d.path().join("link")).is_err());
    }

    #[test]
    fn ensure_dirs_beneath_never_follows_a_symlink_on_the_way() {
        let d = tempfile::tempdir().unwrap();
        let elsewhere = d.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        let base = d.path().join("base");
        std::fs::create_dir(&base).unwrap();
        std::os::unix::fs::symlink(&elsewhere, base.join("link")).unwrap();
        assert!(ensure_dirs_beneath(&base, Path::new("link/out"), None).is_err());
        assert!(!elsewhere.join("out").exists());
        ensure_dirs_beneath(&base, Path::new("a/b/c"), None).unwrap();
        assert!(base.join("a/b/c").is_dir());
        assert!(ensure_dirs_beneath(&base, Path::new("../x"), None).is_err());
    }

    #[test]
    fn ensure_dir_at_refuses_a_symlink() {
        let d = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/", d.path().join("outputs")).unwrap();
        let dir = open_dir(d.path()).unwrap();
        assert!(ensure_dir_at(&dir, "outputs", None).is_err());
        ensure_dir_at(&dir, "fresh", None).unwrap();
        ensure_dir_at(&dir, "fresh", None).unwrap();
        assert!(d.path().join("fresh").is_dir());
    }
}
