//! The namespaces of one unit run beyond its mount namespace: the network
//! and IPC namespaces every process of the run shares (`PrivateNetwork=`,
//! `PrivateIPC=`), the user namespace each process enters
//! (`PrivateUsers=`), and `RemoveIPC=`'s cleanup at the run's end.
//!
//! systemd makes one network namespace per unit run, joined by every
//! command of it (ExecStartPre=, ExecStart=, ExecReload=, ...). aikore makes
//! it in a short-lived thread (`unshare` of a network or IPC namespace
//! changes only the calling thread), keeps it alive by an fd held in the
//! run's [`RunNamespaces`], and each child joins it with `setns()` before
//! exec. The namespace goes when the run ends and its last process exits.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::Path;

/// The namespaces a run's processes share, made at its first process.
#[derive(Debug, Default)]
pub struct RunNamespaces {
    pub net: Option<OwnedFd>,
    pub ipc: Option<OwnedFd>,
    /// What the kernel refused, for the unit's log at each process start.
    pub notes: Vec<String>,
}

impl RunNamespaces {
    /// Makes the namespaces asked for. A refusal (a container without
    /// CAP_SYS_ADMIN) is a note, never silence: the unit runs without it.
    pub fn new(net: bool, ipc: bool) -> RunNamespaces {
        let mut made = RunNamespaces::default();
        if net {
            match new_namespace(libc::CLONE_NEWNET, "/proc/thread-self/ns/net") {
                Ok(fd) => made.net = Some(fd),
                Err(e) => made.notes.push(format!(
                    "PrivateNetwork= not applied: the kernel refused a network namespace ({e}; \
                     unshare(CLONE_NEWNET) needs CAP_SYS_ADMIN in the container); the unit shares aikore's network"
                )),
            }
        }
        if ipc {
            match new_namespace(libc::CLONE_NEWIPC, "/proc/thread-self/ns/ipc") {
                Ok(fd) => made.ipc = Some(fd),
                Err(e) => made.notes.push(format!(
                    "PrivateIPC= not applied: the kernel refused an IPC namespace ({e}; unshare(CLONE_NEWIPC) \
                     needs CAP_SYS_ADMIN in the container); the unit shares aikore's System V IPC and POSIX \
                     message queues"
                )),
            }
        }
        made
    }

    pub fn net_fd(&self) -> Option<RawFd> {
        self.net.as_ref().map(|f| f.as_raw_fd())
    }

    pub fn ipc_fd(&self) -> Option<RawFd> {
        self.ipc.as_ref().map(|f| f.as_raw_fd())
    }
}

/// A new namespace of `flag`, made by a thread of its own and kept by an fd
/// to it (`/proc/thread-self/ns/...`). A new network namespace gets `lo` up.
fn new_namespace(flag: libc::c_int, path: &'static str) -> std::io::Result<OwnedFd> {
    std::thread::spawn(move || -> std::io::Result<OwnedFd> {
        // SAFETY: unshare of a network or IPC namespace changes only this
        // thread's namespaces (no CLONE_FS, no CLONE_NEWUSER), and the thread ends right after.
        if unsafe { libc::unshare(flag) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if flag == libc::CLONE_NEWNET {
            // SAFETY: system calls on stack data.
            if !unsafe { loopback_up() } {
                return Err(std::io::Error::other(format!("bringing lo up: {}", std::io::Error::last_os_error())));
            }
        }
        let file = File::open(path)?;
        Ok(file.into())
    })
    .join()
    .map_err(|_| std::io::Error::other("the namespace thread panicked"))?
}

/// Runs `f` on a thread inside the network namespace `fd`: a socket it
/// makes (the unit's sd_notify socket, an abstract one, which only a
/// process in the same network namespace can reach) stays there.
pub fn in_network_namespace<T: Send>(fd: BorrowedFd<'_>, f: impl FnOnce() -> T + Send) -> std::io::Result<T> {
    let raw = fd.as_fd().as_raw_fd();
    std::thread::scope(|s| {
        s.spawn(move || {
            // SAFETY: setns moves only this thread, which ends when `f` returns.
            if unsafe { libc::setns(raw, libc::CLONE_NEWNET) } < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(f())
        })
        .join()
        .map_err(|_| std::io::Error::other("the namespace thread panicked"))?
    })
}

/// Sets `lo` up (IFF_UP) in the current network namespace.
///
/// # Safety
/// System calls on stack data only.
unsafe fn loopback_up() -> bool {
    let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
    if fd < 0 {
        return false;
    }
    let mut req: libc::ifreq = std::mem::zeroed();
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    let ok = libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) == 0 && {
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        libc::ioctl(fd, libc::SIOCSIFFLAGS, &req) == 0
    };
    libc::close(fd);
    ok
}

/// `PrivateUsers=`: the uid_map and gid_map lines, made before fork. As
/// systemd documents, root and the unit's user (group) map to themselves
/// and nothing else; every other id shows as the overflow id (nobody).
#[derive(Debug, Clone)]
pub struct UserMaps {
    uid_map: Vec<u8>,
    gid_map: Vec<u8>,
}

impl UserMaps {
    pub fn new(uid: Option<u32>, gid: Option<u32>) -> UserMaps {
        let map = |id: Option<u32>| match id {
            Some(n) if n != 0 => format!("0 0 1\n{n} {n} 1\n").into_bytes(),
            _ => b"0 0 1\n".to_vec(),
        };
        UserMaps { uid_map: map(uid), gid_map: map(gid) }
    }
}

/// What [`enter_user_namespace`] did.
pub(super) enum UserNs {
    Entered,
    /// The kernel refused the namespace (errno left set): the process goes on without it.
    Refused,
    /// Writing the maps failed (errno set to the helper's).
    MapFailed,
}

/// Moves the calling process into a new user namespace with `maps`. A
/// process cannot write its own maps with more than its own id, so a
/// helper forked first, still in the parent namespace with its
/// capabilities, writes them once the process has unshared, as systemd does.
///
/// # Safety
/// Only in the forked, single-threaded child: system calls on prepared data
/// and stack buffers, nothing allocated.
pub(super) unsafe fn enter_user_namespace(maps: &UserMaps) -> UserNs {
    let mut pipe = [0 as RawFd; 2];
    if libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) < 0 {
        return UserNs::MapFailed;
    }
    let helper = libc::fork();
    if helper < 0 {
        return UserNs::MapFailed;
    }
    if helper == 0 {
        libc::close(pipe[1]);
        let mut go = [0u8; 1];
        if libc::read(pipe[0], go.as_mut_ptr().cast(), 1) != 1 || go[0] != 1 {
            libc::_exit(0);
        }
        let target = libc::getppid();
        for (name, map) in [(&b"uid_map"[..], &maps.uid_map), (&b"gid_map"[..], &maps.gid_map)] {
            let mut path = [0u8; 48];
            let len = proc_path(&mut path, target, name);
            if len == 0 {
                libc::_exit(libc::EINVAL);
            }
            let fd = libc::open(path.as_ptr().cast(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 || libc::write(fd, map.as_ptr().cast(), map.len()) != map.len() as isize {
                libc::_exit(*libc::__errno_location());
            }
            libc::close(fd);
        }
        libc::_exit(0);
    }
    libc::close(pipe[0]);
    let entered = libc::unshare(libc::CLONE_NEWUSER) == 0;
    let errno = *libc::__errno_location();
    let go = [u8::from(entered)];
    libc::write(pipe[1], go.as_ptr().cast(), 1);
    libc::close(pipe[1]);
    let mut status = 0;
    while libc::waitpid(helper, &mut status, 0) < 0 && *libc::__errno_location() == libc::EINTR {}
    if !entered {
        *libc::__errno_location() = errno;
        return UserNs::Refused;
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        *libc::__errno_location() =
            if libc::WIFEXITED(status) { libc::WEXITSTATUS(status).max(1) } else { libc::ECHILD };
        return UserNs::MapFailed;
    }
    UserNs::Entered
}

/// Writes `/proc/<pid>/<name>\0` into `buf` without allocating; 0 if it does not fit.
fn proc_path(buf: &mut [u8], pid: i32, name: &[u8]) -> usize {
    let mut digits = [0u8; 12];
    let mut n = pid.unsigned_abs();
    let mut d = digits.len();
    loop {
        d -= 1;
        digits[d] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let parts: [&[u8]; 4] = [b"/proc/", &digits[d..], b"/", name];
    let mut at = 0;
    for part in parts {
        if at + part.len() >= buf.len() {
            return 0;
        }
        buf[at..at + part.len()].copy_from_slice(part);
        at += part.len();
    }
    buf[at] = 0;
    at + 1
}

/// `RemoveIPC=`: at the run's end, the System V shared memory segments,
/// semaphore sets and message queues owned or created by the unit's user or
/// group, and its POSIX shared memory (/dev/shm) and message queues
/// (/dev/mqueue), as systemd removes them. Never root's.
pub fn remove_ipc(uid: Option<u32>, gid: Option<u32>) -> usize {
    let uid = uid.filter(|u| *u != 0);
    let gid = gid.filter(|g| *g != 0);
    if uid.is_none() && gid.is_none() {
        return 0;
    }
    let mut removed = 0;
    // (file, the id column, the uid, gid, cuid, cgid columns, IPC_RMID on it)
    type Remove = fn(i32) -> bool;
    let kinds: [(&str, [usize; 4], Remove); 3] = [
        // key shmid perms size cpid lpid nattch uid gid cuid cgid ...
        ("/proc/sysvipc/shm", [7, 8, 9, 10], |id| {
            // SAFETY: shmctl on an id; IPC_RMID takes no buffer.
            unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) == 0 }
        }),
        // key semid perms nsems uid gid cuid cgid ...
        ("/proc/sysvipc/sem", [4, 5, 6, 7], |id| {
            // SAFETY: semctl with IPC_RMID takes no fourth argument.
            unsafe { libc::semctl(id, 0, libc::IPC_RMID) == 0 }
        }),
        // key msqid perms cbytes qnum lspid lrpid uid gid cuid cgid ...
        ("/proc/sysvipc/msg", [7, 8, 9, 10], |id| {
            // SAFETY: msgctl on an id; IPC_RMID takes no buffer.
            unsafe { libc::msgctl(id, libc::IPC_RMID, std::ptr::null_mut()) == 0 }
        }),
    ];
    for (file, [u, g, cu, cg], rmid) in kinds {
        let Ok(text) = std::fs::read_to_string(file) else { continue };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let num = |i: usize| cols.get(i).and_then(|c| c.parse::<u32>().ok());
            let owned = uid.is_some_and(|id| num(u) == Some(id) || num(cu) == Some(id))
                || gid.is_some_and(|id| num(g) == Some(id) || num(cg) == Some(id));
            if let (true, Some(id)) = (owned, cols.get(1).and_then(|c| c.parse::<i32>().ok())) {
                if rmid(id) {
                    removed += 1;
                }
            }
        }
    }
    for dir in ["/dev/shm", "/dev/mqueue"] {
        removed += remove_owned_files(Path::new(dir), uid, gid);
    }
    removed
}

/// Removes what `uid` or `gid` owns in `dir` (POSIX IPC objects are its
/// plain entries; a directory is walked, as systemd's clean_posix_shm does).
fn remove_owned_files(dir: &Path, uid: Option<u32>, gid: Option<u32>) -> usize {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    let mut removed = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
        let owned = uid == Some(meta.uid()) || gid == Some(meta.gid());
        if meta.is_dir() {
            removed += remove_owned_files(&path, uid, gid);
            if owned && std::fs::remove_dir(&path).is_ok() {
                removed += 1;
            }
        } else if owned && std::fs::remove_file(&path).is_ok() {
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_hold_root_and_the_unit_user_only() {
        let m = UserMaps::new(Some(101), Some(102));
        assert_eq!(m.uid_map, b"0 0 1\n101 101 1\n");
        assert_eq!(m.gid_map, b"0 0 1\n102 102 1\n");
        assert_eq!(UserMaps::new(None, None).uid_map, b"0 0 1\n");
        assert_eq!(UserMaps::new(Some(0), Some(0)).gid_map, b"0 0 1\n");
    }

    #[test]
    fn proc_paths_are_built_without_allocating() {
        let mut buf = [0u8; 48];
        let n = proc_path(&mut buf, 12345, b"uid_map");
        assert_eq!(&buf[..n], b"/proc/12345/uid_map\0");
        let mut small = [0u8; 8];
        assert_eq!(proc_path(&mut small, 12345, b"uid_map"), 0);
    }

    #[test]
    fn root_ipc_is_never_removed() {
        assert_eq!(remove_ipc(Some(0), Some(0)), 0);
        assert_eq!(remove_ipc(None, None), 0);
    }
}
