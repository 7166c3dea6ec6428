//! Fork and exec of one unit process.
//!
//! Everything the child needs (paths, argv, envp, ids, open fds) is prepared
//! in [`SpawnPlan`] before fork(): between fork and exec only async-signal-safe
//! calls run, because the parent is multi-threaded and another thread may hold
//! the allocator's lock at the moment of the fork.

use std::ffi::{CString, OsStr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::exec::ExecContext;
use crate::init::reaper::{reaper, Route};

/// What a process should be: resolved, typed, ready for fork.
#[derive(Debug, Clone)]
pub struct ProcessSpec {
    pub argv: Vec<String>,
    /// What the process sees as its argv[0], when not the executable (the `@` prefix).
    pub argv0: Option<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<PathBuf>,
    pub umask: Option<u32>,
    pub nice: Option<i32>,
    /// Resolved ids; `None` keeps ours (root in the container).
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub groups: Vec<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("empty command line")]
    EmptyCommand,
    #[error("{0}: command not found in PATH")]
    NotFound(String),
    #[error("argument contains a NUL byte")]
    Nul,
    #[error("{stage} failed: {source}")]
    Child { stage: String, source: std::io::Error },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

pub struct Spawned {
    pub pid: i32,
    /// The pipe carrying the child's stdout and stderr, for the log task.
    pub output: OwnedFd,
    /// What the child could not apply as asked and went on without (the
    /// sandbox where the kernel refused a mount namespace, a limit above the
    /// hard one), for the unit's log.
    pub warnings: Vec<String>,
}

/// Default search path when the unit's environment has none (systemd's).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Finds argv[0]: an absolute path is taken as is, a bare name is searched in
/// the unit's PATH (systemd does the same since v239).
pub fn resolve_executable(argv0: &str, env: &[(String, String)]) -> Result<PathBuf, SpawnError> {
    if argv0.contains('/') {
        return Ok(PathBuf::from(argv0));
    }
    let path_var = env.iter().rev().find(|(k, _)| k == "PATH").map(|(_, v)| v.as_str()).unwrap_or(DEFAULT_PATH);
    for dir in path_var.split(':').filter(|d| !d.is_empty()) {
        let candidate = Path::new(dir).join(argv0);
        if is_executable(&candidate) {
            return Ok(candidate);
        }
    }
    Err(SpawnError::NotFound(argv0.to_string()))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

fn cstring(bytes: &[u8]) -> Result<CString, SpawnError> {
    CString::new(bytes).map_err(|_| SpawnError::Nul)
}

/// The pre-built image of a child: raw pointers into owned CStrings, kept alive
/// by this struct until after fork.
struct SpawnPlan {
    path: CString,
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    _envp: Vec<CString>,
    envp_ptrs: Vec<*const libc::c_char>,
    cwd: Option<CString>,
    umask: Option<u32>,
    nice: Option<i32>,
    uid: Option<u32>,
    gid: Option<u32>,
    groups: Vec<libc::gid_t>,
}

impl SpawnPlan {
    fn new(spec: &ProcessSpec) -> Result<SpawnPlan, SpawnError> {
        let argv0 = spec.argv.first().ok_or(SpawnError::EmptyCommand)?;
        let exe = resolve_executable(argv0, &spec.env)?;
        let path = cstring(exe.as_os_str().as_bytes())?;
        let shown = spec.argv0.iter().chain(spec.argv.iter().skip(usize::from(spec.argv0.is_some())));
        let argv: Vec<CString> = shown.map(|a| cstring(a.as_bytes())).collect::<Result<_, _>>()?;
        let envp: Vec<CString> =
            spec.env.iter().map(|(k, v)| cstring(format!("{k}={v}").as_bytes())).collect::<Result<_, _>>()?;
        let argv_ptrs = argv.iter().map(|c| c.as_ptr()).chain(std::iter::once(std::ptr::null())).collect();
        let envp_ptrs = envp.iter().map(|c| c.as_ptr()).chain(std::iter::once(std::ptr::null())).collect();
        let cwd = spec.cwd.as_ref().map(|d| cstring(OsStr::as_bytes(d.as_os_str()))).transpose()?;
        Ok(SpawnPlan {
            path,
            _argv: argv,
            argv_ptrs,
            _envp: envp,
            envp_ptrs,
            cwd,
            umask: spec.umask,
            nice: spec.nice,
            uid: spec.uid,
            gid: spec.gid,
            groups: spec.groups.iter().map(|g| *g as libc::gid_t).collect(),
        })
    }
}

/// Stages the child reports back through the error pipe, so the parent can say
/// which step failed.
const STAGES: [&str; 9] =
    ["cgroup join", "setsid", "stdio setup", "nice", "setgroups", "setgid", "setuid", "chdir", "exec"];

fn pipe_cloexec() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two fds into the array we own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both fds were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Forks and execs `spec` in a new session and process group, optionally inside
/// the cgroup whose `cgroup.procs` is given, with stdout+stderr on one pipe and
/// stdin on /dev/null. `route` receives the exit status from the reaper.
pub fn spawn(spec: &ProcessSpec, cgroup_procs: Option<&OwnedFd>, route: Route) -> Result<Spawned, SpawnError> {
    spawn_in(spec, &ExecContext::default(), cgroup_procs, route)
}

/// [`spawn`] with an exec context (limits, stdio files, sandbox,
/// capabilities) applied in the child between fork and exec.
pub fn spawn_in(
    spec: &ProcessSpec,
    context: &ExecContext,
    cgroup_procs: Option<&OwnedFd>,
    route: Route,
) -> Result<Spawned, SpawnError> {
    let plan = SpawnPlan::new(spec)?;
    let (out_read, out_write) = pipe_cloexec()?;
    let (err_read, err_write) = pipe_cloexec()?;
    let devnull = std::fs::File::open("/dev/null")?;
    let cgroup_fd = cgroup_procs.map(|fd| fd.as_raw_fd()).unwrap_or(-1);

    let mut routes = reaper().lock();
    // SAFETY: after fork the child only runs `child_after_fork`, which makes
    // async-signal-safe system calls on data prepared above and never returns.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(SpawnError::Io(std::io::Error::last_os_error()));
    }
    if pid == 0 {
        // SAFETY: we are the child of a fork; see child_after_fork's contract.
        unsafe {
            child_after_fork(
                &plan,
                context,
                cgroup_fd,
                ChildIo::Pipe(context.stdio(devnull.as_raw_fd(), out_write.as_raw_fd())),
                err_write.as_raw_fd(),
            )
        }
    }
    routes.register(pid, route);
    drop(routes);
    drop(out_write);
    drop(err_write);
    let warnings = read_child_report(&err_read, context)?;
    Ok(Spawned { pid, output: out_read, warnings })
}

/// Like [`spawn`], but the child's stdin, stdout and stderr are a new
/// pseudo-terminal that becomes its controlling terminal (setsid +
/// TIOCSCTTY), for interactive shells; `output` is the PTY's master side.
/// No cgroup: the shell belongs to no unit.
pub fn spawn_pty(spec: &ProcessSpec, size: (u16, u16), route: Route) -> Result<Spawned, SpawnError> {
    use nix::fcntl::OFlag;
    let plan = SpawnPlan::new(spec)?;
    // O_CLOEXEC from the start: a unit forked by another thread meanwhile
    // must not inherit the terminal (it would keep it open after the shell).
    let master =
        nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC).map_err(std::io::Error::from)?;
    nix::pty::grantpt(&master).map_err(std::io::Error::from)?;
    nix::pty::unlockpt(&master).map_err(std::io::Error::from)?;
    let slave_path = nix::pty::ptsname_r(&master).map_err(std::io::Error::from)?;
    let slave: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(&slave_path)?
        .into();
    set_window_size(master.as_raw_fd(), size.0, size.1)?;
    let (err_read, err_write) = pipe_cloexec()?;

    let mut routes = reaper().lock();
    // SAFETY: as in `spawn`: the child only runs `child_after_fork`.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(SpawnError::Io(std::io::Error::last_os_error()));
    }
    if pid == 0 {
        // SAFETY: we are the child of a fork.
        unsafe {
            child_after_fork(&plan, &ExecContext::default(), -1, ChildIo::Tty(slave.as_raw_fd()), err_write.as_raw_fd())
        }
    }
    routes.register(pid, route);
    drop(routes);
    drop(slave);
    drop(err_write);
    read_child_report(&err_read, &ExecContext::default())?;
    // SAFETY: the master fd is ours; into_raw_fd hands over its ownership.
    let master = unsafe { OwnedFd::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(master)) };
    Ok(Spawned { pid, output: master, warnings: Vec::new() })
}

/// TIOCSWINSZ on a PTY: the kernel tells the foreground process group with SIGWINCH.
pub fn set_window_size(fd: RawFd, cols: u16, rows: u16) -> std::io::Result<()> {
    let size = libc::winsize { ws_row: rows.max(1), ws_col: cols.max(1), ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads one winsize struct that we own.
    if unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &size) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Waits for exec: the error pipe closes on success (CLOEXEC). The child
/// writes 8-byte records [stage, errno] before that: a warning stage
/// ([`ExecContext::is_warning`]) means it went on; any other is its failure.
fn read_child_report(err_read: &OwnedFd, context: &ExecContext) -> Result<Vec<String>, SpawnError> {
    let mut warnings = Vec::new();
    loop {
        let mut report = [0u8; 8];
        let mut got = 0;
        while got < report.len() {
            // SAFETY: reading into our own buffer from an fd we own.
            let n = unsafe { libc::read(err_read.as_raw_fd(), report[got..].as_mut_ptr().cast(), report.len() - got) };
            if n > 0 {
                got += n as usize;
            } else if n == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                break;
            }
        }
        if got < report.len() {
            return Ok(warnings);
        }
        let stage = u32::from_ne_bytes([report[0], report[1], report[2], report[3]]);
        let errno = i32::from_ne_bytes([report[4], report[5], report[6], report[7]]);
        if ExecContext::is_warning(stage) {
            warnings.push(context.describe_stage(stage).unwrap_or_else(|| format!("warning {stage}")));
            continue;
        }
        let name = STAGES
            .get(stage as usize)
            .map(|s| s.to_string())
            .or_else(|| context.describe_stage(stage))
            .unwrap_or_else(|| "child setup".to_string());
        return Err(SpawnError::Child { stage: name, source: std::io::Error::from_raw_os_error(errno) });
    }
}

/// Where the child's stdio goes.
#[derive(Clone, Copy)]
enum ChildIo {
    /// stdin, stdout and stderr: /dev/null and the log pipe unless the
    /// unit's StandardInput/Output/Error= name files.
    Pipe([RawFd; 3]),
    /// All three on this PTY slave, which becomes the controlling terminal.
    Tty(RawFd),
}

/// Runs in the forked child. Never returns.
///
/// # Safety
/// Must only be called in the child right after fork(); it touches no lock and
/// allocates nothing.
unsafe fn child_after_fork(
    plan: &SpawnPlan,
    context: &ExecContext,
    cgroup_fd: RawFd,
    io: ChildIo,
    err_pipe: RawFd,
) -> ! {
    let report = |stage: u32| {
        let errno = *libc::__errno_location();
        let mut msg = [0u8; 8];
        msg[..4].copy_from_slice(&stage.to_ne_bytes());
        msg[4..].copy_from_slice(&errno.to_ne_bytes());
        libc::write(err_pipe, msg.as_ptr().cast(), msg.len());
    };
    let fail = |stage: u32| -> ! {
        report(stage);
        libc::_exit(127)
    };

    // Signal state is inherited across exec: clear the mask and give back
    // default dispositions (Rust ignores SIGPIPE, which must not leak into units).
    let mut empty: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut empty);
    libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
    for sig in 1..32 {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            libc::signal(sig, libc::SIG_DFL);
        }
    }

    if cgroup_fd >= 0 {
        // Writing "0" moves the writing process itself; done before exec so
        // every descendant is born inside the cgroup.
        if libc::write(cgroup_fd, b"0".as_ptr().cast(), 1) != 1 {
            fail(0);
        }
    }
    if libc::setsid() < 0 {
        fail(1);
    }
    match io {
        ChildIo::Pipe([stdin, stdout, stderr]) => {
            if libc::dup2(stdin, 0) < 0 || libc::dup2(stdout, 1) < 0 || libc::dup2(stderr, 2) < 0 {
                fail(2);
            }
        }
        ChildIo::Tty(tty) => {
            // A session leader's first terminal opened... is not automatic
            // with O_NOCTTY: claim it explicitly.
            if libc::ioctl(tty, libc::TIOCSCTTY, 0) < 0
                || libc::dup2(tty, 0) < 0
                || libc::dup2(tty, 1) < 0
                || libc::dup2(tty, 2) < 0
            {
                fail(2);
            }
        }
    }
    if let Some(nice) = plan.nice {
        if libc::setpriority(libc::PRIO_PROCESS, 0, nice) < 0 {
            fail(3);
        }
    }
    if let Some(mask) = plan.umask {
        libc::umask(mask as libc::mode_t);
    }
    // Limits, OOM score, sandbox mounts, bounding set: while still privileged.
    if let Err(stage) = context.before_identity(&report) {
        fail(stage);
    }
    // SupplementaryGroups= alone (no User=) sets the groups too.
    if plan.gid.is_some() || plan.uid.is_some() || !plan.groups.is_empty() {
        // Supplementary groups go first, while we still have the right to set them.
        if libc::setgroups(plan.groups.len(), plan.groups.as_ptr()) < 0 {
            fail(4);
        }
    }
    if let Some(gid) = plan.gid {
        if libc::setgid(gid) < 0 {
            fail(5);
        }
    }
    // PrivateUsers= and the bounding set: after the groups, before the uid.
    if let Err(stage) = context.before_setuid(&report) {
        fail(stage);
    }
    if let Some(uid) = plan.uid {
        if libc::setuid(uid) < 0 {
            fail(6);
        }
    }
    if let Err(stage) = context.after_identity() {
        fail(stage);
    }
    if let Some(cwd) = &plan.cwd {
        // WorkingDirectory=-/path: a missing dir starts the process in /.
        if libc::chdir(cwd.as_ptr()) < 0 && (!context.cwd_optional || libc::chdir(c"/".as_ptr()) < 0) {
            fail(7);
        }
    }
    if let Err(stage) = context.install_seccomp() {
        fail(stage);
    }
    libc::execve(plan.path.as_ptr(), plan.argv_ptrs.as_ptr(), plan.envp_ptrs.as_ptr());
    fail(8)
}
