//! The exec context of one unit process: rlimits, OOM score, stdio files,
//! the mount-namespace sandbox, capabilities and no_new_privs.
//!
//! [`ExecContext::prepare`] does every allocation, lookup and file open in
//! the parent; the child (see `spawn::child_after_fork`) then only makes
//! system calls on that prepared data, because the daemon is multi-threaded
//! and a fork copies whatever lock another thread held.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::units::{DirKind, ExecConfig, Input, Output, Preserve, ProtectHome, ProtectSystem, SandboxPath, Unit};

/// Stage numbers the child reports for failures of this module's steps
/// (spawn.rs's own stages are 0..=8); mounts and rlimits carry their index.
pub(super) const STAGE_OOM: u32 = 20;
pub(super) const STAGE_CAPBSET: u32 = 21;
pub(super) const STAGE_KEEPCAPS: u32 = 22;
pub(super) const STAGE_CAPSET: u32 = 23;
pub(super) const STAGE_AMBIENT: u32 = 24;
pub(super) const STAGE_NNP: u32 = 25;
pub(super) const STAGE_SECCOMP: u32 = 26;
/// CPUSchedulingPolicy=/CPUSchedulingPriority= and IOSchedulingClass=/IOSchedulingPriority=.
pub(super) const STAGE_SCHED: u32 = 40;
pub(super) const STAGE_IOPRIO: u32 = 41;
/// PrivateNetwork=, PrivateIPC=: joining the run's namespace (setns).
pub(super) const STAGE_SETNS_NET: u32 = 42;
pub(super) const STAGE_SETNS_IPC: u32 = 43;
/// PrivateUsers=: the helper could not write the new namespace's maps.
pub(super) const STAGE_USERNS: u32 = 44;
pub(super) const STAGE_RLIMIT: u32 = 100;
pub(super) const STAGE_MOUNT: u32 = 200;
/// Not a failure: the kernel refused a mount namespace, the unit runs unsandboxed.
pub(super) const WARN_NO_MOUNT_NS: u32 = 1000;
/// Not a failure: OOMScoreAdjust= was refused (lowering it needs
/// CAP_SYS_RESOURCE); systemd too goes on, "assuming containerized execution".
pub(super) const WARN_OOM: u32 = 1001;
/// Not a failure: the kernel refused a new procfs instance (ProtectProc=, ProcSubset=).
pub(super) const WARN_NO_PROC: u32 = 1002;
/// Not a failure: the kernel refused a user namespace (PrivateUsers=).
pub(super) const WARN_NO_USERNS: u32 = 1003;
/// Not a failure: the kernel refused a sysfs instance in the unit's network namespace.
pub(super) const WARN_NO_SYSFS: u32 = 1004;
/// Not a failure: the kernel refused a UTS namespace (ProtectHostname=).
pub(super) const WARN_NO_UTS: u32 = 1005;
/// Not a failure: `Limit*=` number (this + index) was above what may be
/// raised, and was set to the hard limit the process has (systemd's
/// `setrlimit_closest`).
pub(super) const WARN_RLIMIT_CLAMPED: u32 = 1100;
/// The first stage number past the warnings.
const WARN_END: u32 = 1200;

/// Where stderr goes.
#[derive(Debug, Default)]
pub enum ErrTarget {
    /// The log pipe.
    #[default]
    Log,
    /// Wherever stdout goes.
    Stdout,
    File(OwnedFd),
}

/// One file system call of the sandbox, with its C strings made before fork.
#[derive(Debug)]
struct MountStep {
    source: Option<CString>,
    target: CString,
    fstype: Option<CString>,
    flags: libc::c_ulong,
    data: Option<CString>,
    /// A failing optional step (a submount's read-only remount) is skipped.
    required: bool,
    op: Op,
    /// On failure: warn with this stage and skip this many following steps
    /// (the rest of a feature the kernel refused, as a new procfs instance).
    fallback: Option<(u32, usize)>,
}

/// What a [`MountStep`] does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    /// mount(source, target, fstype, flags, data).
    Mount,
    /// mkdir(target, mode); an existing one is fine.
    Mkdir(u32),
    /// An empty file to bind a file over; an existing one is fine.
    Touch,
    /// symlink(source, target); an existing one is fine.
    Symlink,
    /// umount2(target, MNT_DETACH).
    Detach,
    /// mount_setattr(2) on the mount at target: only these attributes change,
    /// whatever else it has (Linux >= 5.12).
    SetAttr { set: u64, clear: u64, recursive: bool },
}

impl MountStep {
    fn op(op: Op, target: CString) -> MountStep {
        MountStep { source: None, target, fstype: None, flags: 0, data: None, required: true, op, fallback: None }
    }

    /// Runs the step; < 0 with errno set on failure.
    ///
    /// # Safety
    /// In the forked child: system calls on prepared data only.
    unsafe fn run(&self) -> libc::c_int {
        let ptr = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
        let exists = |rc: libc::c_int| if rc < 0 && *libc::__errno_location() == libc::EEXIST { 0 } else { rc };
        match self.op {
            Op::Mount => libc::mount(
                ptr(&self.source),
                self.target.as_ptr(),
                ptr(&self.fstype),
                self.flags,
                ptr(&self.data).cast(),
            ),
            Op::Mkdir(mode) => exists(libc::mkdir(self.target.as_ptr(), mode as libc::mode_t)),
            Op::Touch => {
                let fd = libc::open(
                    self.target.as_ptr(),
                    libc::O_WRONLY | libc::O_CREAT | libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NOFOLLOW,
                    0o644 as libc::c_uint,
                );
                if fd >= 0 {
                    libc::close(fd);
                    0
                } else if *libc::__errno_location() == libc::EISDIR {
                    0
                } else {
                    // A device node or socket already there (opening it for writing may fail).
                    let mut st: libc::stat = std::mem::zeroed();
                    if libc::lstat(self.target.as_ptr(), &mut st) == 0 && st.st_mode & libc::S_IFMT != libc::S_IFLNK {
                        0
                    } else {
                        -1
                    }
                }
            }
            Op::Symlink => exists(libc::symlink(ptr(&self.source), self.target.as_ptr())),
            Op::Detach => libc::umount2(self.target.as_ptr(), libc::MNT_DETACH),
            Op::SetAttr { set, clear, recursive } => {
                let attr = MountAttr { attr_set: set, attr_clr: clear, propagation: 0, userns_fd: 0 };
                let flags = if recursive { libc::AT_RECURSIVE } else { 0 };
                let rc = libc::syscall(
                    libc::SYS_mount_setattr,
                    libc::AT_FDCWD,
                    self.target.as_ptr(),
                    flags as libc::c_uint,
                    &attr as *const MountAttr,
                    std::mem::size_of::<MountAttr>(),
                ) as libc::c_int;
                if rc == 0 || *libc::__errno_location() != libc::ENOSYS {
                    return rc;
                }
                // Before Linux 5.12: a remount of the mount at the path alone
                // (not those below it), repeating the flags it has (statvfs's
                // ST_* flags are the MS_* values), which a user namespace
                // refuses to clear. glibc takes them from statfs's f_flags
                // (Linux 2.6.36 on), without reading /proc/mounts.
                let mut fs: libc::statvfs = std::mem::zeroed();
                if libc::statvfs(self.target.as_ptr(), &mut fs) < 0 {
                    return -1;
                }
                let kept = libc::MS_RDONLY
                    | libc::MS_NOSUID
                    | libc::MS_NODEV
                    | libc::MS_NOEXEC
                    | libc::MS_NOATIME
                    | libc::MS_NODIRATIME
                    | libc::MS_RELATIME;
                let mut now = fs.f_flag as libc::c_ulong & kept;
                let as_ms = |attr: u64| {
                    (if attr & MOUNT_ATTR_RDONLY != 0 { libc::MS_RDONLY } else { 0 })
                        | (if attr & MOUNT_ATTR_NOEXEC != 0 { libc::MS_NOEXEC } else { 0 })
                };
                now = (now | as_ms(set)) & !as_ms(clear);
                libc::mount(
                    std::ptr::null(),
                    self.target.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND | libc::MS_REMOUNT | now,
                    std::ptr::null(),
                )
            }
        }
    }
}

/// `struct mount_attr` of mount_setattr(2).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOEXEC: u64 = 0x8;

/// What the child applies besides the identity, cwd, umask and nice.
#[derive(Debug, Default)]
pub struct ExecContext {
    rlimits: Vec<(i32, libc::rlimit, &'static str)>,
    oom_score_adj: Option<Vec<u8>>,
    /// None: /dev/null.
    pub(super) stdin: Option<OwnedFd>,
    /// None: the log pipe.
    pub(super) stdout: Option<OwnedFd>,
    pub(super) stderr: ErrTarget,
    /// None: no mount namespace.
    mounts: Option<Vec<MountStep>>,
    /// What to say when the kernel refuses the mount namespace.
    sandbox_note: String,
    /// Capabilities to drop from the bounding set.
    cap_drop: u64,
    ambient: u64,
    /// The process changes uid and keeps ambient capabilities across it.
    keep_caps: bool,
    no_new_privs: bool,
    /// The seccomp keys' filter (supervisor/seccomp.rs), installed last.
    seccomp: Option<super::seccomp::Filter>,
    /// WorkingDirectory=-: a failing chdir falls back to `/`.
    pub(super) cwd_optional: bool,
    /// sched_setscheduler's policy and priority.
    sched: Option<(i32, i32)>,
    /// ioprio_set's value (class << 13 | priority).
    ioprio: Option<i32>,
    /// IgnoreSIGPIPE= (default yes, as in systemd).
    ignore_sigpipe: bool,
    /// The run's network and IPC namespaces to join (PrivateNetwork=, PrivateIPC=).
    netns: Option<RawFd>,
    ipcns: Option<RawFd>,
    /// PrivateUsers=: the maps of the user namespace entered before setuid.
    userns: Option<super::namespaces::UserMaps>,
    /// What to say when the kernel refuses a new procfs instance.
    proc_note: String,
    /// ProtectHostname=: a UTS namespace of the process's own.
    new_uts: bool,
}

/// The inputs of [`ExecContext::prepare`] that come from outside the unit file.
pub struct Options<'a> {
    /// Whether the process changes its uid (User= or the instance user).
    pub changes_uid: bool,
    /// An instance: NoNewPrivileges= defaults to yes.
    pub instance: bool,
    /// The run's private /tmp (PrivateTmp=), made by the caller.
    pub private_tmp: Option<&'a PrivateTmp>,
    /// The run's network and IPC namespaces (PrivateNetwork=, PrivateIPC=).
    pub namespaces: Option<&'a super::namespaces::RunNamespaces>,
    /// User= and Group= (PrivateUsers= maps them to themselves).
    pub identity: (Option<u32>, Option<u32>),
}

fn cstring(path: &Path) -> Result<CString, String> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| format!("{} contains a NUL byte", path.display()))
}

fn open_output(out: &Output) -> Result<Option<OwnedFd>, String> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC);
    let path = match out {
        Output::Log => return Ok(None),
        Output::Null => Path::new("/dev/null"),
        Output::File(p) => {
            options.create(true).mode(0o644);
            p
        }
        Output::Append(p) => {
            options.create(true).append(true).mode(0o644);
            p
        }
        Output::Truncate(p) => {
            options.create(true).truncate(true).mode(0o644);
            p
        }
    };
    let file = options.open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Some(file.into()))
}

impl ExecContext {
    /// Prepares `cfg` for one process. The notes are for the unit's log
    /// (what could not be applied, said at each start).
    pub fn prepare(cfg: &ExecConfig, opts: &Options) -> Result<(ExecContext, Vec<String>), String> {
        let mut notes = Vec::new();
        let mut cx = ExecContext { cwd_optional: cfg.working_directory_optional, ..Default::default() };
        cx.rlimits = cfg
            .limits
            .iter()
            .map(|l| {
                let rl = libc::rlimit {
                    rlim_cur: if l.soft == u64::MAX { libc::RLIM_INFINITY } else { l.soft },
                    rlim_max: if l.hard == u64::MAX { libc::RLIM_INFINITY } else { l.hard },
                };
                (l.resource, rl, l.key)
            })
            .collect();
        cx.oom_score_adj = cfg.oom_score_adjust.map(|n| n.to_string().into_bytes());
        cx.stdin = match &cfg.stdin {
            Input::Null => None,
            Input::File(p) => Some(
                std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
                    .open(p)
                    .map_err(|e| format!("StandardInput=file:{}: {e}", p.display()))?
                    .into(),
            ),
        };
        cx.stdout = open_output(&cfg.stdout).map_err(|e| format!("StandardOutput=: {e}"))?;
        cx.stderr = match &cfg.stderr {
            None => ErrTarget::Stdout,
            Some(Output::Log) => ErrTarget::Log,
            Some(other) => ErrTarget::File(
                open_output(other).map_err(|e| format!("StandardError=: {e}"))?.ok_or("StandardError=: no file")?,
            ),
        };
        if let Some(set) = cfg.capability_bounding_set {
            cx.cap_drop = !set & crate::units::ALL_CAPS;
        }
        // As systemd drops them: PrivateDevices=, no device nodes to make, no
        // raw I/O; ProtectKernelModules=, no module loading; ProtectKernelLogs=,
        // no kernel log; ProtectClock=, no clock or wake alarm to set.
        let ns = &cfg.ns;
        for (on, caps) in [
            (ns.private_devices, 1 << CAP_MKNOD | 1 << CAP_SYS_RAWIO),
            (ns.protect_kernel_modules, 1 << CAP_SYS_MODULE),
            (ns.protect_kernel_logs, 1 << CAP_SYSLOG),
            (ns.protect_clock, 1 << CAP_SYS_TIME | 1 << CAP_WAKE_ALARM),
        ] {
            if on {
                cx.cap_drop |= caps;
            }
        }
        cx.new_uts = ns.protect_hostname;
        cx.ambient = cfg.ambient_capabilities;
        cx.keep_caps = cx.ambient != 0 && opts.changes_uid;
        cx.no_new_privs = cfg.no_new_privileges.unwrap_or(opts.instance);
        cx.seccomp = super::seccomp::build(&cfg.seccomp)?;
        if cfg.wants_mount_namespace() {
            let table = mount_table();
            let mut steps = Vec::new();
            if cfg.ns.private_network && opts.namespaces.is_some_and(|n| n.net.is_some()) {
                steps.extend(sysfs_steps(&table)?);
            }
            steps.extend(sandbox_steps(cfg, opts.private_tmp, &table)?);
            cx.mounts = Some(steps);
            cx.sandbox_note = no_sandbox_note(cfg);
            cx.proc_note = no_proc_note(cfg);
        }
        if let Some(ns) = opts.namespaces {
            cx.netns = ns.net_fd().filter(|_| cfg.ns.private_network);
            cx.ipcns = ns.ipc_fd().filter(|_| cfg.ns.private_ipc);
        }
        if cfg.ns.private_users {
            cx.userns = Some(super::namespaces::UserMaps::new(opts.identity.0, opts.identity.1));
        }
        cx.sched = scheduling(cfg)?;
        cx.ignore_sigpipe = cfg.ignore_sigpipe.unwrap_or(true);
        cx.ioprio = cfg.io_sched_class.or(cfg.io_sched_priority.map(|_| 2)).map(|class| {
            // systemd's defaults: best-effort, priority 4; class none takes no priority.
            let prio = if class == 0 { 0 } else { cfg.io_sched_priority.unwrap_or(4) };
            i32::from(class) << 13 | i32::from(prio)
        });
        if cx.ambient != 0 && cfg.capability_bounding_set.is_some_and(|b| cx.ambient & !b != 0) {
            notes.push("AmbientCapabilities= outside CapabilityBoundingSet= cannot be raised".to_string());
        }
        Ok((cx, notes))
    }

    /// Names a stage of this module for the parent's error message, or
    /// says what a warning record means.
    pub(super) fn describe_stage(&self, stage: u32) -> Option<String> {
        Some(match stage {
            STAGE_OOM => "OOMScoreAdjust= (writing /proc/self/oom_score_adj)".to_string(),
            STAGE_CAPBSET => "CapabilityBoundingSet= (PR_CAPBSET_DROP)".to_string(),
            STAGE_KEEPCAPS => "AmbientCapabilities= (PR_SET_KEEPCAPS)".to_string(),
            STAGE_CAPSET => "AmbientCapabilities= (capset)".to_string(),
            STAGE_AMBIENT => "AmbientCapabilities= (PR_CAP_AMBIENT_RAISE)".to_string(),
            STAGE_NNP => "NoNewPrivileges= (PR_SET_NO_NEW_PRIVS)".to_string(),
            STAGE_SECCOMP => "the seccomp filter (PR_SET_SECCOMP)".to_string(),
            STAGE_SCHED => "CPUSchedulingPolicy=/CPUSchedulingPriority= (sched_setscheduler; fifo and rr need \
                            CAP_SYS_NICE)"
                .to_string(),
            STAGE_IOPRIO => {
                "IOSchedulingClass=/IOSchedulingPriority= (ioprio_set; realtime needs CAP_SYS_ADMIN)".to_string()
            }
            s if (STAGE_RLIMIT..STAGE_MOUNT).contains(&s) => {
                format!("{}= (setrlimit)", self.rlimits.get((s - STAGE_RLIMIT) as usize)?.2)
            }
            WARN_NO_MOUNT_NS => self.sandbox_note.clone(),
            STAGE_SETNS_NET => "PrivateNetwork= (joining the run's network namespace: setns)".to_string(),
            STAGE_SETNS_IPC => "PrivateIPC= (joining the run's IPC namespace: setns)".to_string(),
            STAGE_USERNS => "PrivateUsers= (writing the user namespace's uid_map and gid_map)".to_string(),
            WARN_NO_PROC => self.proc_note.clone(),
            WARN_NO_SYSFS => "PrivateNetwork=: /sys not remounted: the kernel refused a sysfs instance in the unit's \
                              network namespace (a container's read-only or masked /sys); /sys/class/net lists \
                              aikore's interfaces, /proc/net the unit's own"
                .to_string(),
            WARN_NO_UTS => "ProtectHostname=: the kernel refused a UTS namespace (unshare(CLONE_NEWUTS) needs \
                            CAP_SYS_ADMIN in the container); the unit shares aikore's host name, and sethostname() \
                            and setdomainname() are still refused"
                .to_string(),
            WARN_NO_USERNS => {
                "PrivateUsers= not applied: the kernel refused a user namespace (unshare(CLONE_NEWUSER); \
                               a container's seccomp profile or user.max_user_namespaces=0 can forbid it); the unit \
                               runs in aikore's user namespace"
                    .to_string()
            }
            WARN_OOM => format!(
                "OOMScoreAdjust={} not applied: the kernel refused it (lowering it needs CAP_SYS_RESOURCE)",
                String::from_utf8_lossy(self.oom_score_adj.as_deref().unwrap_or_default())
            ),
            s if (WARN_RLIMIT_CLAMPED..WARN_END).contains(&s) => {
                let (resource, rl, key) = self.rlimits.get((s - WARN_RLIMIT_CLAMPED) as usize)?;
                let mut ours: libc::rlimit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
                // SAFETY: getrlimit fills the struct we own; the child inherited the same hard limit.
                unsafe { libc::getrlimit(*resource as libc::__rlimit_resource_t, &mut ours) };
                let show =
                    |v: libc::rlim_t| if v == libc::RLIM_INFINITY { "infinity".to_string() } else { v.to_string() };
                format!(
                    "{key}={}:{} is above the hard limit aikore has ({}), so it was set to that \
                     (raising a hard limit needs CAP_SYS_RESOURCE)",
                    show(rl.rlim_cur),
                    show(rl.rlim_max),
                    show(ours.rlim_max)
                )
            }
            s if (STAGE_MOUNT..WARN_NO_MOUNT_NS).contains(&s) => {
                let step = self.mounts.as_ref()?.get((s - STAGE_MOUNT) as usize)?;
                let target = step.target.to_string_lossy();
                match step.op {
                    Op::Mount if step.flags & libc::MS_MOVE != 0 => format!("sandbox mount moved onto {target}"),
                    Op::Mount => format!("sandbox mount on {target}"),
                    Op::Mkdir(_) => format!("sandbox mount point {target} (mkdir)"),
                    Op::Touch => format!("sandbox mount point {target} (an empty file)"),
                    Op::Symlink => format!("sandbox symlink {target}"),
                    Op::Detach => format!("sandbox unmount of {target}"),
                    Op::SetAttr { .. } => format!(
                        "sandbox mount attributes on {target} (ExecPaths=, NoExecPaths=, BindReadOnlyPaths=, \
                         TemporaryFileSystem=...:ro)"
                    ),
                }
            }
            _ => return None,
        })
    }

    /// Whether a record from the child is a warning (it went on) rather than its failure.
    pub(super) fn is_warning(stage: u32) -> bool {
        (WARN_NO_MOUNT_NS..WARN_END).contains(&stage)
    }

    /// The steps that need privileges: rlimits (a raised hard limit),
    /// the OOM score (a lowered one), the mount namespace and the bounding
    /// set. Run in the child before it drops its identity.
    ///
    /// # Safety
    /// Only in the forked child: makes system calls on prepared data and
    /// allocates nothing. `warn` must be async-signal-safe too.
    pub(super) unsafe fn before_identity(&self, warn: &dyn Fn(u32)) -> Result<(), u32> {
        if self.ignore_sigpipe {
            // Inherited across exec: a write to a closed pipe then fails with EPIPE instead of killing.
            libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        }
        for (i, (resource, rl, _)) in self.rlimits.iter().enumerate() {
            let resource = *resource as libc::__rlimit_resource_t;
            if libc::setrlimit(resource, rl) == 0 {
                continue;
            }
            // Raising a hard limit needs CAP_SYS_RESOURCE, which containers
            // often drop: as systemd does, take the closest value allowed
            // (the current hard limit), and say so.
            let mut current: libc::rlimit = std::mem::zeroed();
            if *libc::__errno_location() != libc::EPERM || libc::getrlimit(resource, &mut current) < 0 {
                return Err(STAGE_RLIMIT + i as u32);
            }
            let hard = rl.rlim_max.min(current.rlim_max);
            let closest = libc::rlimit { rlim_cur: rl.rlim_cur.min(hard), rlim_max: hard };
            if libc::setrlimit(resource, &closest) < 0 {
                return Err(STAGE_RLIMIT + i as u32);
            }
            warn(WARN_RLIMIT_CLAMPED + i as u32);
        }
        if let Some(value) = &self.oom_score_adj {
            let fd = libc::open(c"/proc/self/oom_score_adj".as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(STAGE_OOM);
            }
            if libc::write(fd, value.as_ptr().cast(), value.len()) != value.len() as isize {
                let errno = *libc::__errno_location();
                if errno != libc::EACCES && errno != libc::EPERM {
                    return Err(STAGE_OOM);
                }
                warn(WARN_OOM);
            }
            libc::close(fd);
        }
        if let Some(fd) = self.netns {
            if libc::setns(fd, libc::CLONE_NEWNET) < 0 {
                return Err(STAGE_SETNS_NET);
            }
        }
        if let Some(fd) = self.ipcns {
            if libc::setns(fd, libc::CLONE_NEWIPC) < 0 {
                return Err(STAGE_SETNS_IPC);
            }
        }
        if self.new_uts && libc::unshare(libc::CLONE_NEWUTS) < 0 {
            // As systemd: the unit still runs, and the filter still refuses sethostname().
            warn(WARN_NO_UTS);
        }
        if let Some(steps) = &self.mounts {
            // A new mount namespace whose changes never propagate back
            // (slave), or, where the kernel refuses it, a warning and no sandbox.
            if libc::unshare(libc::CLONE_NEWNS) < 0
                || libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_SLAVE,
                    std::ptr::null(),
                ) < 0
            {
                warn(WARN_NO_MOUNT_NS);
            } else {
                let mut i = 0;
                while let Some(s) = steps.get(i) {
                    if s.run() < 0 {
                        if let Some((stage, skip)) = s.fallback {
                            warn(stage);
                            i += 1 + skip;
                            continue;
                        }
                        if s.required {
                            return Err(STAGE_MOUNT + i as u32);
                        }
                    }
                    i += 1;
                }
            }
        }
        if let Some((policy, priority)) = self.sched {
            let param = libc::sched_param { sched_priority: priority };
            if libc::sched_setscheduler(0, policy, &param) < 0 {
                return Err(STAGE_SCHED);
            }
        }
        // IOPRIO_WHO_PROCESS (1), this process (0).
        if let Some(value) = self.ioprio {
            if libc::syscall(libc::SYS_ioprio_set, 1, 0, value) < 0 {
                return Err(STAGE_IOPRIO);
            }
        }
        Ok(())
    }

    /// After setgroups and setgid, before setuid: the user namespace
    /// (PrivateUsers=; after the groups, which it could no longer set, and
    /// after every other namespace and mount, which it could no longer
    /// make), then the bounding set and keep-caps (a new user namespace
    /// starts with a full bounding set and cleared securebits).
    ///
    /// # Safety
    /// As [`Self::before_identity`].
    pub(super) unsafe fn before_setuid(&self, warn: &dyn Fn(u32)) -> Result<(), u32> {
        if let Some(maps) = &self.userns {
            match super::namespaces::enter_user_namespace(maps) {
                super::namespaces::UserNs::Entered => {}
                super::namespaces::UserNs::Refused => warn(WARN_NO_USERNS),
                super::namespaces::UserNs::MapFailed => return Err(STAGE_USERNS),
            }
        }
        if self.cap_drop != 0 {
            for cap in 0..64u32 {
                if self.cap_drop & (1 << cap) != 0
                    && libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) < 0
                    // EINVAL: a capability this kernel does not know; nothing to drop.
                    && *libc::__errno_location() != libc::EINVAL
                {
                    return Err(STAGE_CAPBSET);
                }
            }
        }
        if self.keep_caps && libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) < 0 {
            return Err(STAGE_KEEPCAPS);
        }
        Ok(())
    }

    /// Ambient capabilities and no_new_privs, after setuid.
    ///
    /// # Safety
    /// As [`Self::before_identity`].
    pub(super) unsafe fn after_identity(&self) -> Result<(), u32> {
        if self.ambient != 0 {
            // capset: the ambient set must be in the permitted and
            // inheritable sets; setuid cleared the effective one.
            let mut header = CapHeader { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
            let mut data = [CapData::default(); 2];
            if libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) < 0 {
                return Err(STAGE_CAPSET);
            }
            for (i, d) in data.iter_mut().enumerate() {
                d.inheritable |= (self.ambient >> (32 * i)) as u32 & d.permitted;
                d.effective = d.permitted;
            }
            if libc::syscall(libc::SYS_capset, &header, data.as_ptr()) < 0 {
                return Err(STAGE_CAPSET);
            }
            for cap in 0..64u32 {
                if self.ambient & (1 << cap) != 0
                    && libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_RAISE, cap as libc::c_ulong, 0, 0) < 0
                {
                    return Err(STAGE_AMBIENT);
                }
            }
        }
        if self.no_new_privs && libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 {
            return Err(STAGE_NNP);
        }
        Ok(())
    }

    /// The seccomp filter: the child's very last step before exec, as in
    /// systemd, so `SystemCallFilter=` need not allow what the child does
    /// on its way (chdir, setuid...), only the exec (in `@default`).
    ///
    /// # Safety
    /// As [`Self::before_identity`].
    pub(super) unsafe fn install_seccomp(&self) -> Result<(), u32> {
        if let Some(filter) = &self.seccomp {
            if super::seccomp::install(filter).is_err() {
                return Err(STAGE_SECCOMP);
            }
        }
        Ok(())
    }

    /// Raw fds for the child's stdio, given the defaults (/dev/null, the log pipe).
    pub(super) fn stdio(&self, devnull: RawFd, log: RawFd) -> [RawFd; 3] {
        let stdin = self.stdin.as_ref().map_or(devnull, |f| f.as_raw_fd());
        let stdout = self.stdout.as_ref().map_or(log, |f| f.as_raw_fd());
        let stderr = match &self.stderr {
            ErrTarget::Log => log,
            ErrTarget::Stdout => stdout,
            ErrTarget::File(f) => f.as_raw_fd(),
        };
        [stdin, stdout, stderr]
    }
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

/// `struct __user_cap_data_struct`.
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// One line of /proc/self/mountinfo: where, and its per-mount flags.
#[derive(Debug, Clone)]
pub struct MountEntry {
    pub point: PathBuf,
    pub flags: libc::c_ulong,
    pub read_only: bool,
}

/// The mounts this process sees, parents before children (file order).
pub fn mount_table() -> Vec<MountEntry> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let point = crate::units::unescape_mount_path(fields.nth(4)?);
            let options = fields.next()?;
            let read_only = options.split(',').any(|o| o == "ro");
            Some(MountEntry { point: PathBuf::from(point), flags: mount_flags(options), read_only })
        })
        .collect()
}

/// Per-mount options as MS_* flags: a read-only remount of a bind mount must
/// repeat them (a user namespace refuses to clear locked ones).
fn mount_flags(options: &str) -> libc::c_ulong {
    options.split(',').fold(0, |acc, o| {
        acc | match o {
            "nosuid" => libc::MS_NOSUID,
            "nodev" => libc::MS_NODEV,
            "noexec" => libc::MS_NOEXEC,
            "noatime" => libc::MS_NOATIME,
            "nodiratime" => libc::MS_NODIRATIME,
            "relatime" => libc::MS_RELATIME,
            _ => 0,
        }
    })
}

#[derive(Debug, Clone, PartialEq)]
enum Mode {
    ReadOnly,
    ReadWrite,
    Inaccessible,
    /// An empty read-only tmpfs (ProtectHome=tmpfs).
    EmptyTmpfs,
    /// Bind this (PrivateTmp=) over the path.
    BindFrom(PathBuf),
    /// BindPaths=, BindReadOnlyPaths=: bind `source` here, making the mount point.
    Bind {
        source: PathBuf,
        recursive: bool,
        read_only: bool,
        dir: bool,
    },
    /// TemporaryFileSystem= with its options.
    Tmpfs(String),
}

/// capabilities(7) numbers PrivateDevices=, ProtectKernelModules=,
/// ProtectKernelLogs= and ProtectClock= drop.
const CAP_SYS_MODULE: u32 = 16;
const CAP_SYS_RAWIO: u32 = 17;
const CAP_SYS_TIME: u32 = 25;
const CAP_MKNOD: u32 = 27;
const CAP_SYSLOG: u32 = 34;
const CAP_WAKE_ALARM: u32 = 35;

/// An empty directory under /run/aikore where a unit's new /dev or /proc is
/// built in its own mount namespace before it is moved into place. One for
/// all units: each mounts on it only in its own namespace.
fn staging_dir(name: &str) -> Result<PathBuf, String> {
    let dir = Path::new("/run/aikore").join(name);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(dir)
}

fn bind_step(source: &Path, target: CString, flags: libc::c_ulong) -> Result<MountStep, String> {
    Ok(MountStep { source: Some(cstring(source)?), flags: libc::MS_BIND | flags, ..MountStep::op(Op::Mount, target) })
}

/// `mkdir -p` of `path`'s parents, each step optional (existing ones are fine).
fn mkdir_parents(path: &Path, steps: &mut Vec<MountStep>) -> Result<(), String> {
    let mut parents: Vec<&Path> = path.ancestors().skip(1).filter(|p| p.parent().is_some()).collect();
    parents.reverse();
    for p in parents {
        steps.push(MountStep { required: false, ..MountStep::op(Op::Mkdir(0o755), cstring(p)?) });
    }
    Ok(())
}

/// PrivateDevices=: a tmpfs /dev holding only the pseudo devices, as
/// systemd's: null, zero, full, random, urandom and tty bound from the real
/// ones (a container may refuse mknod, a bind works everywhere), devpts and
/// ptmx, shm, mqueue and hugepages, and the fd/stdio links. Built on a
/// staging dir, then moved over /dev.
fn private_dev_steps(table: &[MountEntry]) -> Result<Vec<MountStep>, String> {
    let staging = staging_dir("private-dev")?;
    let at = |rel: &str| cstring(&staging.join(rel));
    let mut steps = vec![MountStep {
        source: Some(c"tmpfs".into()),
        fstype: Some(c"tmpfs".into()),
        flags: libc::MS_NOSUID | libc::MS_NOEXEC | libc::MS_STRICTATIME,
        data: Some(c"mode=0755,size=4m".into()),
        ..MountStep::op(Op::Mount, cstring(&staging)?)
    }];
    for name in ["null", "zero", "full", "random", "urandom", "tty"] {
        let host = Path::new("/dev").join(name);
        if host.exists() {
            steps.push(MountStep::op(Op::Touch, at(name)?));
            steps.push(bind_step(&host, at(name)?, 0)?);
        }
    }
    if Path::new("/dev/pts").is_dir() {
        steps.push(MountStep::op(Op::Mkdir(0o755), at("pts")?));
        steps.push(bind_step(Path::new("/dev/pts"), at("pts")?, 0)?);
    }
    match std::fs::symlink_metadata("/dev/ptmx") {
        Ok(m) if m.file_type().is_symlink() => {
            steps.push(MountStep { source: Some(c"pts/ptmx".into()), ..MountStep::op(Op::Symlink, at("ptmx")?) })
        }
        Ok(_) => {
            steps.push(MountStep::op(Op::Touch, at("ptmx")?));
            steps.push(bind_step(Path::new("/dev/ptmx"), at("ptmx")?, 0)?);
        }
        Err(_) => {}
    }
    for name in ["shm", "mqueue", "hugepages"] {
        let host = Path::new("/dev").join(name);
        if host.is_dir() {
            steps.push(MountStep::op(Op::Mkdir(0o755), at(name)?));
            steps.push(bind_step(&host, at(name)?, libc::MS_REC)?);
        }
    }
    let mut links = vec![
        ("fd", PathBuf::from("/proc/self/fd")),
        ("stdin", "/proc/self/fd/0".into()),
        ("stdout", "/proc/self/fd/1".into()),
        ("stderr", "/proc/self/fd/2".into()),
    ];
    if Path::new("/proc/kcore").exists() {
        links.push(("core", "/proc/kcore".into()));
    }
    // A syslog socket: the same link (or the socket bound) as on the host.
    match std::fs::read_link("/dev/log") {
        Ok(target) => links.push(("log", target)),
        Err(_) if Path::new("/dev/log").exists() => {
            steps.push(MountStep::op(Op::Touch, at("log")?));
            steps.push(bind_step(Path::new("/dev/log"), at("log")?, 0)?);
        }
        Err(_) => {}
    }
    for (name, target) in links {
        steps.push(MountStep { source: Some(cstring(&target)?), ..MountStep::op(Op::Symlink, at(name)?) });
    }
    if table.iter().any(|m| m.point == Path::new("/dev")) {
        // The old /dev and what is mounted below it go; a container's
        // locked mounts cannot, and stay hidden under the new one.
        steps.push(MountStep { required: false, ..MountStep::op(Op::Detach, c"/dev".into()) });
    }
    steps.push(MountStep { flags: libc::MS_MOVE, ..bind_step(&staging, c"/dev".into(), 0)? });
    Ok(steps)
}

/// ProtectProc=, ProcSubset=: a procfs instance of the unit's own with
/// `hidepid=` and `subset=pid` (each mount has its own options since Linux
/// 5.8), moved over /proc. What a container runtime mounted below /proc
/// (/proc/kcore masked, /proc/sys read-only, ...) is bound onto the new one
/// first, so it stays masked. Where the kernel refuses the instance, a
/// warning and the rest skipped.
fn proc_steps(cfg: &ExecConfig, table: &[MountEntry]) -> Result<Vec<MountStep>, String> {
    let mut options: Vec<String> = cfg.ns.protect_proc.hidepid().map(|h| format!("hidepid={h}")).into_iter().collect();
    if cfg.ns.proc_subset_pid {
        options.push("subset=pid".to_string());
    }
    // Under subset=pid most of what is mounted below /proc is gone from the new instance: nothing to mask.
    fresh_instance_steps("proc", "/proc", &options.join(","), 0, !cfg.ns.proc_subset_pid, WARN_NO_PROC, table)
}

/// PrivateNetwork= with a mount namespace: a sysfs instance made inside the
/// unit's network namespace, so /sys/class/net lists its own interfaces
/// (`lo`), as systemd does; read-only where the container's /sys is.
fn sysfs_steps(table: &[MountEntry]) -> Result<Vec<MountStep>, String> {
    let read_only = table.iter().rfind(|m| m.point == Path::new("/sys")).is_some_and(|m| m.read_only);
    let flags = if read_only { libc::MS_RDONLY } else { 0 };
    fresh_instance_steps("sysfs", "/sys", "", flags, true, WARN_NO_SYSFS, table)
}

/// A new instance of an API file system (`proc`, `sysfs`) with `data`,
/// built on a staging dir, what is mounted below the old one bound onto it
/// (a container runtime's masks stay), the old one unmounted and the new
/// one moved into place. Where the kernel refuses the instance: the
/// warning `refused`, and the rest skipped.
fn fresh_instance_steps(
    fstype: &str,
    point: &str,
    data: &str,
    flags: libc::c_ulong,
    masks_required: bool,
    refused: u32,
    table: &[MountEntry],
) -> Result<Vec<MountStep>, String> {
    let staging = staging_dir(&format!("private-{}", fstype))?;
    let c = |s: &str| CString::new(s).map_err(|e| e.to_string());
    let mut steps = vec![MountStep {
        source: Some(c(fstype)?),
        fstype: Some(c(fstype)?),
        flags: libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC | flags,
        data: Some(c(data)?),
        ..MountStep::op(Op::Mount, cstring(&staging)?)
    }];
    let top = Path::new(point);
    let below: Vec<&Path> = table.iter().map(|m| m.point.as_path()).filter(|p| under(p, top) && *p != top).collect();
    for sub in below.iter().filter(|p| !below.iter().any(|q| q != *p && under(p, q))) {
        let rel = sub.strip_prefix(top).map_err(|e| e.to_string())?;
        let step = bind_step(sub, cstring(&staging.join(rel))?, libc::MS_REC)?;
        steps.push(MountStep { required: masks_required, ..step });
    }
    if table.iter().any(|m| m.point == top) {
        steps.push(MountStep { required: false, ..MountStep::op(Op::Detach, c(point)?) });
    }
    steps.push(MountStep { flags: libc::MS_MOVE, ..bind_step(&staging, c(point)?, 0)? });
    let rest = steps.len() - 1;
    steps[0].fallback = Some((refused, rest));
    Ok(steps)
}

/// DynamicUser=: `<base>/private` (0700, root's) replaced by a tmpfs the
/// unit's user may enter, holding only the unit's own dirs bound from the
/// real ones, so the `<base>/<name>` symlinks lead there; as systemd does.
fn dynamic_user_steps(cfg: &ExecConfig) -> Result<Vec<MountStep>, String> {
    let mut steps = Vec::new();
    for kind in [DirKind::State, DirKind::Cache, DirKind::Logs] {
        let dirs: Vec<(String, PathBuf)> = unit_directories(cfg)
            .into_iter()
            .filter(|(k, _, real)| *k == kind && is_private_kind(cfg, *k) && real.is_dir())
            .map(|(_, name, real)| (name, real))
            .collect();
        if dirs.is_empty() {
            continue;
        }
        let staging = staging_dir(&format!("dynamic-{}", kind.env_name().to_ascii_lowercase()))?;
        steps.push(MountStep {
            source: Some(c"tmpfs".into()),
            fstype: Some(c"tmpfs".into()),
            flags: libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            data: Some(c"mode=0755,size=4k".into()),
            ..MountStep::op(Op::Mount, cstring(&staging)?)
        });
        for (name, real) in dirs {
            let point = staging.join(&name);
            mkdir_parents(&point, &mut steps)?;
            steps.push(MountStep::op(Op::Mkdir(0o755), cstring(&point)?));
            steps.push(bind_step(&real, cstring(&point)?, libc::MS_REC)?);
        }
        let private = Path::new(kind.base()).join("private");
        steps.push(MountStep { flags: libc::MS_MOVE, ..bind_step(&staging, cstring(&private)?, 0)? });
    }
    Ok(steps)
}

/// TemporaryFileSystem= options: mount flags, the tmpfs data (after
/// systemd's default `mode=0755`), and whether it ends read-only.
fn tmpfs_options(options: &str) -> (libc::c_ulong, String, bool) {
    let mut flags = libc::MS_NODEV | libc::MS_STRICTATIME;
    let mut data = vec!["mode=0755".to_string()];
    let mut read_only = false;
    for o in options.split(',').filter(|o| !o.is_empty()) {
        match o {
            "ro" => read_only = true,
            "rw" => read_only = false,
            "nosuid" => flags |= libc::MS_NOSUID,
            "suid" => flags &= !libc::MS_NOSUID,
            "nodev" => flags |= libc::MS_NODEV,
            "dev" => flags &= !libc::MS_NODEV,
            "noexec" => flags |= libc::MS_NOEXEC,
            "exec" => flags &= !libc::MS_NOEXEC,
            "noatime" => flags = flags & !libc::MS_STRICTATIME | libc::MS_NOATIME,
            "relatime" => flags = flags & !libc::MS_STRICTATIME | libc::MS_RELATIME,
            "strictatime" => flags |= libc::MS_STRICTATIME,
            other => data.push(other.to_string()),
        }
    }
    (flags, data.join(","), read_only)
}

/// API file systems ProtectSystem=strict leaves writable, as systemd does.
const API_VFS: &[&str] = &["/dev", "/proc", "/sys"];

/// What a read-only /sys leaves writable, as systemd's
/// ProtectKernelTunables= table does (READWRITE_IMPLICIT):
/// ProtectControlGroups= makes the cgroup tree read-only, not this key.
const SYS_KEPT: &[&str] = &["/sys/fs/cgroup", "/sys/fs/selinux"];

/// ProtectKernelTunables=, ProtectKernelModules=, ProtectKernelLogs=,
/// ProtectControlGroups= and ProtectHostname=: systemd 252's tables
/// (src/core/namespace.c). A path missing here is skipped, as there; so is
/// what the unit's new /proc (ProcSubset=pid) or /dev (PrivateDevices=)
/// does not have. The mounts below /sys (/sys/fs/bpf, /sys/kernel/debug,
/// /sys/kernel/tracing, ...) become read-only with it, except [`SYS_KEPT`].
fn protect_entries(cfg: &ExecConfig) -> Vec<(PathBuf, Mode)> {
    let ns = &cfg.ns;
    let proc = !ns.proc_subset_pid;
    let mut list: Vec<(&str, Mode)> = Vec::new();
    if ns.protect_kernel_tunables {
        if proc {
            for p in [
                "/proc/acpi",
                "/proc/apm",
                "/proc/asound",
                "/proc/bus",
                "/proc/fs",
                "/proc/irq",
                "/proc/latency_stats",
                "/proc/mtrr",
                "/proc/scsi",
                "/proc/sys",
                "/proc/sysrq-trigger",
                "/proc/timer_stats",
            ] {
                list.push((p, Mode::ReadOnly));
            }
            list.push(("/proc/kallsyms", Mode::Inaccessible));
            list.push(("/proc/kcore", Mode::Inaccessible));
        }
        list.push(("/sys", Mode::ReadOnly));
    }
    if ns.protect_kernel_modules {
        list.push(("/usr/lib/modules", Mode::Inaccessible));
        // Without merged /usr, /lib/modules is a directory of its own.
        let same = std::fs::canonicalize("/lib/modules").ok() == std::fs::canonicalize("/usr/lib/modules").ok();
        if !same {
            list.push(("/lib/modules", Mode::Inaccessible));
        }
    }
    if ns.protect_kernel_logs {
        if proc {
            list.push(("/proc/kmsg", Mode::Inaccessible));
        }
        if !ns.private_devices {
            list.push(("/dev/kmsg", Mode::Inaccessible));
        }
    }
    if ns.protect_control_groups {
        list.push(("/sys/fs/cgroup", Mode::ReadOnly));
    }
    if ns.protect_hostname && proc {
        list.push(("/proc/sys/kernel/hostname", Mode::ReadOnly));
        list.push(("/proc/sys/kernel/domainname", Mode::ReadOnly));
    }
    list.into_iter()
        .filter(|(p, _)| Path::new(p).symlink_metadata().is_ok())
        .map(|(p, mode)| (PathBuf::from(p), mode))
        .collect()
}

fn under(path: &Path, root: &Path) -> bool {
    path.starts_with(root)
}

/// The mount steps of the sandbox, in order: shallow paths first, so a
/// ReadWritePaths= below a read-only tree is bound after it.
fn sandbox_steps(
    cfg: &ExecConfig,
    private_tmp: Option<&PrivateTmp>,
    table: &[MountEntry],
) -> Result<Vec<MountStep>, String> {
    let mut entries: Vec<(PathBuf, Mode)> = Vec::new();
    let existing = |p: &str| Path::new(p).exists().then(|| PathBuf::from(p));
    match cfg.protect_system {
        ProtectSystem::No => {}
        ProtectSystem::Yes | ProtectSystem::Full => {
            let mut list = vec!["/usr", "/boot", "/efi"];
            if cfg.protect_system == ProtectSystem::Full {
                list.push("/etc");
            }
            entries.extend(list.into_iter().filter_map(existing).map(|p| (p, Mode::ReadOnly)));
        }
        ProtectSystem::Strict => entries.push(("/".into(), Mode::ReadOnly)),
    }
    let home_mode = match cfg.protect_home {
        ProtectHome::No => None,
        ProtectHome::Yes => Some(Mode::Inaccessible),
        ProtectHome::ReadOnly => Some(Mode::ReadOnly),
        ProtectHome::Tmpfs => Some(Mode::EmptyTmpfs),
    };
    if let Some(mode) = home_mode {
        for p in ["/home", "/root", "/run/user"].into_iter().filter_map(existing) {
            entries.push((p, mode.clone()));
        }
    }
    let mut add = |list: &[SandboxPath], mode: Mode, key: &str| -> Result<(), String> {
        for sp in list {
            if sp.path.symlink_metadata().is_err() {
                if sp.optional {
                    continue;
                }
                return Err(format!(
                    "{key}={}: no such file or directory (prefix it with - to skip it)",
                    sp.path.display()
                ));
            }
            entries.push((sp.path.clone(), mode.clone()));
        }
        Ok(())
    };
    add(&cfg.read_only_paths, Mode::ReadOnly, "ReadOnlyPaths")?;
    add(&cfg.read_write_paths, Mode::ReadWrite, "ReadWritePaths")?;
    add(&cfg.inaccessible_paths, Mode::Inaccessible, "InaccessiblePaths")?;
    entries.extend(protect_entries(cfg));
    if cfg.protect_system == ProtectSystem::Strict {
        // As systemd: the unit's own RuntimeDirectory=, StateDirectory=, ... stay writable.
        for (_, _, real) in unit_directories(cfg) {
            if real.is_dir() {
                entries.push((real, Mode::ReadWrite));
            }
        }
    }
    for b in &cfg.ns.bind_paths {
        let key = if b.read_only { "BindReadOnlyPaths" } else { "BindPaths" };
        let Ok(meta) = std::fs::metadata(&b.source) else {
            if b.optional {
                continue;
            }
            return Err(format!(
                "{key}={}: no such file or directory (prefix it with - to skip it)",
                b.source.display()
            ));
        };
        let mode =
            Mode::Bind { source: b.source.clone(), recursive: b.recursive, read_only: b.read_only, dir: meta.is_dir() };
        entries.push((b.dest.clone(), mode));
    }
    for t in &cfg.ns.temporary_fs {
        entries.push((t.path.clone(), Mode::Tmpfs(t.options.clone())));
    }
    if let Some(private) = private_tmp {
        entries.push(("/tmp".into(), Mode::BindFrom(private.tmp.clone())));
        if let Some(var_tmp) = &private.var_tmp {
            entries.push(("/var/tmp".into(), Mode::BindFrom(var_tmp.clone())));
        }
    }
    // Shallow first; among equals, the order above (a later key wins, as in systemd's sorting by mode).
    entries.sort_by_key(|(p, _)| p.components().count());

    // The new /dev and /proc first: the path keys below may refer to them.
    let mut steps = Vec::new();
    if cfg.ns.private_devices {
        steps.extend(private_dev_steps(table)?);
    }
    if cfg.ns.protect_proc != crate::units::ProtectProc::Default || cfg.ns.proc_subset_pid {
        steps.extend(proc_steps(cfg, table)?);
    }
    // Attributes set once everything is mounted: a read-only tmpfs still
    // takes the mount points of the binds below it.
    let mut late = Vec::new();
    for (path, mode) in entries {
        let target = cstring(&path)?;
        let bind = |source: &Path| -> Result<MountStep, String> {
            Ok(MountStep {
                source: Some(cstring(source)?),
                target: target.clone(),
                fstype: None,
                flags: libc::MS_BIND | libc::MS_REC,
                data: None,
                required: true,
                op: Op::Mount,
                fallback: None,
            })
        };
        match mode {
            Mode::ReadOnly | Mode::ReadWrite => {
                let ro = if mode == Mode::ReadOnly { libc::MS_RDONLY } else { 0 };
                // `/` is a mount already: a bind stacked on it would be a
                // root the process never enters (it keeps the one below),
                // and the kernel then counts it as chrooted and refuses it
                // a user namespace (PrivateUsers=).
                if path != Path::new("/") {
                    steps.push(bind(&path)?);
                }
                // Every mount at or below the path, as the recursive bind copied them.
                for m in table.iter().filter(|m| under(&m.point, &path)) {
                    let is_top = m.point == path;
                    // A read-only tree leaves the API file systems below it
                    // (and, below /sys, SYS_KEPT) as they are, unless it is
                    // itself inside one (ProtectKernelTunables=, ProtectControlGroups=).
                    let kept = |list: &[&str]| {
                        list.iter().any(|a| under(&m.point, Path::new(a)) && !under(&path, Path::new(a)))
                    };
                    if !is_top && (mode == Mode::ReadWrite || kept(API_VFS) || kept(SYS_KEPT)) {
                        continue;
                    }
                    steps.push(MountStep {
                        source: None,
                        target: cstring(&m.point)?,
                        fstype: None,
                        flags: libc::MS_BIND | libc::MS_REMOUNT | ro | m.flags,
                        data: None,
                        required: false,
                        op: Op::Mount,
                        fallback: None,
                    });
                }
                // The path itself when it is no mount point of its own: flags of the mount it lives on.
                if !table.iter().any(|m| m.point == path) {
                    let host = table.iter().rfind(|m| under(&path, &m.point)).map_or(0, |m| m.flags);
                    steps.push(MountStep {
                        source: None,
                        target: target.clone(),
                        fstype: None,
                        flags: libc::MS_BIND | libc::MS_REMOUNT | ro | host,
                        data: None,
                        required: true,
                        op: Op::Mount,
                        fallback: None,
                    });
                }
            }
            Mode::Inaccessible | Mode::EmptyTmpfs => {
                if path.is_dir() || mode == Mode::EmptyTmpfs {
                    let data = if mode == Mode::Inaccessible { "mode=000,size=4k" } else { "mode=755,size=4k" };
                    steps.push(MountStep {
                        source: Some(c"tmpfs".into()),
                        target,
                        fstype: Some(c"tmpfs".into()),
                        flags: libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                        data: Some(CString::new(data).map_err(|e| e.to_string())?),
                        required: true,
                        op: Op::Mount,
                        fallback: None,
                    });
                } else {
                    // A file: an empty mode-000 file bound over it, then made read-only.
                    let node = inaccessible_file()?;
                    steps.push(MountStep { flags: libc::MS_BIND, ..bind(&node)? });
                    steps.push(MountStep {
                        source: None,
                        target,
                        fstype: None,
                        flags: libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
                        data: None,
                        required: true,
                        op: Op::Mount,
                        fallback: None,
                    });
                }
            }
            Mode::BindFrom(source) => {
                steps.push(bind(&source)?);
                // A bind copies its source mount's flags: read-only when
                // ProtectSystem=strict made / so. The private /tmp is writable.
                let host = table.iter().rfind(|m| under(&source, &m.point)).map_or(0, |m| m.flags);
                steps.push(MountStep {
                    source: None,
                    target,
                    fstype: None,
                    flags: libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID | libc::MS_NODEV | host,
                    data: None,
                    required: true,
                    op: Op::Mount,
                    fallback: None,
                });
            }
            Mode::Bind { source, recursive, read_only, dir } => {
                // The mount point, made as systemd makes it.
                mkdir_parents(&path, &mut steps)?;
                let point = if dir { Op::Mkdir(0o755) } else { Op::Touch };
                steps.push(MountStep { required: false, ..MountStep::op(point, target.clone()) });
                steps.push(bind_step(&source, target.clone(), if recursive { libc::MS_REC } else { 0 })?);
                if read_only {
                    let attr = Op::SetAttr { set: MOUNT_ATTR_RDONLY, clear: 0, recursive };
                    steps.push(MountStep::op(attr, target));
                }
            }
            Mode::Tmpfs(options) => {
                mkdir_parents(&path, &mut steps)?;
                steps.push(MountStep { required: false, ..MountStep::op(Op::Mkdir(0o755), target.clone()) });
                let (flags, data, read_only) = tmpfs_options(&options);
                steps.push(MountStep {
                    source: Some(c"tmpfs".into()),
                    fstype: Some(c"tmpfs".into()),
                    flags,
                    data: Some(CString::new(data).map_err(|e| e.to_string())?),
                    ..MountStep::op(Op::Mount, target.clone())
                });
                if read_only {
                    late.push(MountStep::op(
                        Op::SetAttr { set: MOUNT_ATTR_RDONLY, clear: 0, recursive: false },
                        target,
                    ));
                }
            }
        }
    }
    steps.extend(dynamic_user_steps(cfg)?);
    steps.extend(late);
    // NoExecPaths=, then ExecPaths= below them, shallow first: a bind of the
    // path onto itself, and noexec set or cleared on it and every mount below.
    let mut exec: Vec<(PathBuf, bool, &str)> = Vec::new();
    for (list, noexec, key) in [(&cfg.ns.no_exec_paths, true, "NoExecPaths"), (&cfg.ns.exec_paths, false, "ExecPaths")]
    {
        for sp in list {
            if sp.path.symlink_metadata().is_err() {
                if sp.optional {
                    continue;
                }
                return Err(format!(
                    "{key}={}: no such file or directory (prefix it with - to skip it)",
                    sp.path.display()
                ));
            }
            exec.push((sp.path.clone(), noexec, key));
        }
    }
    exec.sort_by_key(|(p, _, _)| p.components().count());
    for (path, noexec, _) in exec {
        let target = cstring(&path)?;
        if path != Path::new("/") {
            steps.push(bind_step(&path, target.clone(), libc::MS_REC)?);
        }
        let (set, clear) = if noexec { (MOUNT_ATTR_NOEXEC, 0) } else { (0, MOUNT_ATTR_NOEXEC) };
        steps.push(MountStep::op(Op::SetAttr { set, clear, recursive: true }, target));
    }
    Ok(steps)
}

/// An empty file nobody may open (mode 000), bound over inaccessible files.
fn inaccessible_file() -> Result<PathBuf, String> {
    let dir = Path::new("/run/aikore");
    let path = dir.join("inaccessible");
    if !path.exists() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o000)
            .open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(path)
}

/// The run's private /tmp and /var/tmp (PrivateTmp=), made before its first
/// process, as systemd does: `/tmp/aikore-private-<unit>-<random>/tmp` and
/// the same under /var/tmp (the outer dirs 0700, root's; the inner ones 1777
/// like /tmp). Each lives on the file system it replaces, and the /var/tmp
/// one is still reachable after /tmp is bound over. Removed at the run's end.
#[derive(Debug, Clone)]
pub struct PrivateTmp {
    /// The outer dirs, for the cleanup.
    pub outer: Vec<PathBuf>,
    pub tmp: PathBuf,
    pub var_tmp: Option<PathBuf>,
}

pub fn make_private_tmp(unit: &str) -> Result<PrivateTmp, String> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let mut random = [0u8; 6];
    // SAFETY: getrandom fills the buffer we own.
    let n = unsafe { libc::getrandom(random.as_mut_ptr().cast(), random.len(), 0) };
    if n != random.len() as isize {
        return Err(format!("PrivateTmp=: getrandom: {}", std::io::Error::last_os_error()));
    }
    let suffix: String = random.iter().map(|b| format!("{b:02x}")).collect();
    let name = format!("aikore-private-{unit}-{suffix}");
    let mut made = PrivateTmp { outer: Vec::new(), tmp: PathBuf::new(), var_tmp: None };
    for base in ["/tmp", "/var/tmp"] {
        if !Path::new(base).is_dir() {
            continue;
        }
        let outer = Path::new(base).join(&name);
        let inner = outer.join("tmp");
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&outer)
            .map_err(|e| format!("PrivateTmp=: {}: {e}", outer.display()))?;
        made.outer.push(outer);
        std::fs::DirBuilder::new()
            .mode(0o1777)
            .create(&inner)
            .map_err(|e| format!("PrivateTmp=: {}: {e}", inner.display()))?;
        // The umask may have cut the sticky, group and other bits.
        std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(0o1777)).map_err(|e| e.to_string())?;
        if base == "/tmp" {
            made.tmp = inner;
        } else {
            made.var_tmp = Some(inner);
        }
    }
    if made.tmp.as_os_str().is_empty() {
        return Err("PrivateTmp=: /tmp does not exist".to_string());
    }
    Ok(made)
}

/// The text for the unit's log when the kernel refused a mount namespace.
fn no_sandbox_note(cfg: &ExecConfig) -> String {
    let mut keys = Vec::new();
    if cfg.private_tmp {
        keys.push("PrivateTmp=");
    }
    if cfg.protect_system != ProtectSystem::No {
        keys.push("ProtectSystem=");
    }
    if cfg.protect_home != ProtectHome::No {
        keys.push("ProtectHome=");
    }
    if !cfg.read_write_paths.is_empty() {
        keys.push("ReadWritePaths=");
    }
    if !cfg.read_only_paths.is_empty() {
        keys.push("ReadOnlyPaths=");
    }
    if !cfg.inaccessible_paths.is_empty() {
        keys.push("InaccessiblePaths=");
    }
    keys.extend(cfg.ns.mount_keys());
    format!(
        "{} not applied: the kernel refused a mount namespace (unshare(CLONE_NEWNS) needs CAP_SYS_ADMIN in the \
         container); the unit runs without that sandbox",
        keys.join(", ")
    )
}

/// The text for the unit's log when the kernel refused a new procfs instance.
fn no_proc_note(cfg: &ExecConfig) -> String {
    let mut keys = Vec::new();
    if let Some(h) = cfg.ns.protect_proc.hidepid() {
        keys.push(format!("ProtectProc={h}"));
    }
    if cfg.ns.proc_subset_pid {
        keys.push("ProcSubset=pid".to_string());
    }
    format!(
        "{} not applied: the kernel refused a new procfs instance with hidepid=/subset= (they need Linux 5.8, \
         and CAP_SYS_ADMIN over the container's PID namespace; in a user namespace, a runtime that masks parts \
         of /proc makes the kernel refuse an unmasked one); the unit sees aikore's /proc",
        keys.join(", ")
    )
}

/// CPUSchedulingPolicy= and CPUSchedulingPriority=: fifo and rr take 1..99
/// (default 1, as systemd clamps), the others only 0.
fn scheduling(cfg: &ExecConfig) -> Result<Option<(i32, i32)>, String> {
    let realtime = |p: i32| p == libc::SCHED_FIFO || p == libc::SCHED_RR;
    match (cfg.cpu_sched_policy, cfg.cpu_sched_priority) {
        (None, None) => Ok(None),
        (Some(p), prio) if realtime(p) => Ok(Some((p, prio.unwrap_or(1).max(1)))),
        (Some(p), None | Some(0)) => Ok(Some((p, 0))),
        (_, Some(0)) => Ok(None),
        _ => Err("CPUSchedulingPriority= above 0 needs CPUSchedulingPolicy=fifo or rr".to_string()),
    }
}

/// Per-run leftovers of the exec context on the host: cleaned at the run's end.
#[derive(Debug, Default)]
pub struct RunDirs {
    /// The run's PrivateTmp= dirs.
    pub private_tmp: Option<PrivateTmp>,
    /// RuntimeDirectory= dirs made for this run.
    pub runtime: Vec<PathBuf>,
    pub preserve: Preserve,
    /// The run's credentials directory (`LoadCredential=`, `SetCredential=`).
    pub credentials: Option<PathBuf>,
    /// The run's network and IPC namespaces (PrivateNetwork=, PrivateIPC=),
    /// kept by fds until the run ends.
    pub namespaces: Option<super::namespaces::RunNamespaces>,
    /// RemoveIPC=: the user and group whose IPC objects go at the run's end.
    pub remove_ipc: Option<(Option<u32>, Option<u32>)>,
    /// JoinsNamespaceOf= of the unit, for units started after it.
    pub joins: Vec<String>,
}

impl RunDirs {
    /// The run ended: its private /tmp goes, and its RuntimeDirectory= dirs
    /// unless RuntimeDirectoryPreserve= keeps them.
    pub fn clean(self) {
        if let Some((uid, gid)) = self.remove_ipc {
            let removed = super::namespaces::remove_ipc(uid, gid);
            if removed > 0 {
                tracing::info!(removed, "RemoveIPC=: IPC objects of the unit's user removed");
            }
        }
        if let Some(dir) = &self.credentials {
            super::credentials::remove(dir);
        }
        for dir in self.private_tmp.map(|p| p.outer).unwrap_or_default() {
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a private /tmp");
            }
        }
        if self.preserve == Preserve::No {
            for dir in self.runtime {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }
}

/// The run's network and IPC namespaces, made at the first call of a run
/// (PrivateNetwork=, PrivateIPC=); None when the unit asks for neither.
pub fn run_namespaces<'a>(unit: &Unit, run: &'a mut RunDirs) -> Option<&'a super::namespaces::RunNamespaces> {
    let ns = &unit.service.exec.ns;
    if !(ns.private_network || ns.private_ipc) {
        return None;
    }
    Some(
        run.namespaces.get_or_insert_with(|| super::namespaces::RunNamespaces::new(ns.private_network, ns.private_ipc)),
    )
}

/// JoinsNamespaceOf=: before the run's first process, a unit that asks for
/// a network or IPC namespace takes those of a running unit it names, or
/// that names it (systemd's relation works both ways), as copies of its
/// fds; a kind that unit has not is made anew. Nothing running: its own.
pub fn share_namespaces(unit: &Unit, runs: &mut std::collections::HashMap<String, RunDirs>) {
    let ns = &unit.service.exec.ns;
    if !(ns.private_network || ns.private_ipc) || runs.get(&unit.name).is_some_and(|r| r.namespaces.is_some()) {
        return;
    }
    let partner = runs.iter().find_map(|(name, run)| {
        let related = ns.joins_namespace_of.contains(name) || run.joins.contains(&unit.name);
        run.namespaces.as_ref().filter(|_| related && *name != unit.name).map(|n| (name.clone(), n))
    });
    let Some((partner, theirs)) = partner else { return };
    let copy = |fd: &Option<std::os::fd::OwnedFd>, wanted: bool| {
        fd.as_ref().filter(|_| wanted).and_then(|f| f.try_clone().ok())
    };
    let mut shared = super::namespaces::RunNamespaces {
        net: copy(&theirs.net, ns.private_network),
        ipc: copy(&theirs.ipc, ns.private_ipc),
        notes: Vec::new(),
    };
    let fresh = super::namespaces::RunNamespaces::new(
        ns.private_network && shared.net.is_none(),
        ns.private_ipc && shared.ipc.is_none(),
    );
    shared.net = shared.net.or(fresh.net);
    shared.ipc = shared.ipc.or(fresh.ipc);
    shared.notes = fresh.notes;
    tracing::debug!(unit = %unit.name, %partner, "JoinsNamespaceOf=: sharing the namespaces");
    let run = runs.entry(unit.name.clone()).or_default();
    run.namespaces = Some(shared);
}

/// Removes the unit's RuntimeDirectory= dirs (a fresh start with
/// RuntimeDirectoryPreserve=restart).
pub fn remove_runtime_directories(unit: &Unit) {
    if let Some(dirs) = unit.service.exec.directories(DirKind::Runtime) {
        for name in &dirs.names {
            let _ = std::fs::remove_dir_all(Path::new(DirKind::Runtime.base()).join(name));
        }
    }
}

/// What the host adds to one process of a unit: its exec context, the
/// directory variables, and the supplementary groups.
pub struct ForProcess {
    pub context: ExecContext,
    pub env: Vec<(String, String)>,
    pub groups: Vec<u32>,
    pub notes: Vec<String>,
}

/// Resolves a group name or number (SupplementaryGroups=).
fn resolve_group(name: &str) -> Result<u32, String> {
    let group = match name.parse::<u32>() {
        Ok(n) => nix::unistd::Group::from_gid(n.into()),
        Err(_) => nix::unistd::Group::from_name(name),
    }
    .map_err(|e| format!("SupplementaryGroups={name}: {e}"))?
    .ok_or_else(|| format!("SupplementaryGroups={name}: no such group"))?;
    Ok(group.gid.as_raw())
}

/// DynamicUser=: state, cache and logs dirs live under `<base>/private/`.
fn is_private_kind(cfg: &ExecConfig, kind: DirKind) -> bool {
    cfg.ns.dynamic_user && matches!(kind, DirKind::State | DirKind::Cache | DirKind::Logs)
}

/// The real paths of the unit's directories (under `private/` for a dynamic user).
fn unit_directories(cfg: &ExecConfig) -> Vec<(DirKind, String, PathBuf)> {
    let mut all = Vec::new();
    for dirs in &cfg.directories {
        for name in &dirs.names {
            let base = Path::new(dirs.kind.base());
            let real = if is_private_kind(cfg, dirs.kind) { base.join("private").join(name) } else { base.join(name) };
            all.push((dirs.kind, name.clone(), real));
        }
    }
    all
}

/// Creates the unit's RuntimeDirectory=, StateDirectory=, CacheDirectory=,
/// LogsDirectory= and ConfigurationDirectory= (owned by its user, with the
/// `*DirectoryMode=`), and returns their `*_DIRECTORY` variables.
fn create_directories(
    cfg: &ExecConfig,
    owner: (Option<u32>, Option<u32>),
    run: &mut RunDirs,
) -> Result<Vec<(String, String)>, String> {
    use std::os::unix::fs::PermissionsExt;
    let mut env = Vec::new();
    for dirs in cfg.directories.iter().filter(|d| !d.names.is_empty()) {
        let mut paths = Vec::new();
        for name in &dirs.names {
            let key = format!("{:?}Directory={name}", dirs.kind);
            let public = Path::new(dirs.kind.base()).join(name);
            let path = if is_private_kind(cfg, dirs.kind) {
                // DynamicUser=: the real dir under private/, reached through the symlink.
                let real = super::dynamic_user::private_directory(Path::new(dirs.kind.base()), name)
                    .map_err(|e| format!("{key}: {e}"))?;
                if let (Some(uid), Some(gid)) = owner {
                    super::dynamic_user::chown_tree(&real, uid, gid).map_err(|e| format!("{key}: {e}"))?;
                }
                real
            } else {
                public.clone()
            };
            std::fs::create_dir_all(&path).map_err(|e| format!("{key}: {}: {e}", path.display()))?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(dirs.mode))
                .map_err(|e| format!("{key}: chmod {}: {e}", path.display()))?;
            if owner.0.is_some() || owner.1.is_some() {
                std::os::unix::fs::lchown(&path, owner.0, owner.1)
                    .map_err(|e| format!("{key}: chown {}: {e}", path.display()))?;
            }
            if dirs.kind == DirKind::Runtime && !run.runtime.contains(&path) {
                run.runtime.push(path.clone());
            }
            paths.push(public.display().to_string());
        }
        env.push((dirs.kind.env_name().to_string(), paths.join(":")));
    }
    Ok(env)
}

/// Everything the exec context of one process of `unit` needs from the
/// host, made before its fork. `groups` are the identity's groups (empty
/// without User=); `instance`: NoNewPrivileges= defaults to yes.
pub fn for_process(
    unit: &Unit,
    owner: (Option<u32>, Option<u32>),
    groups: &[u32],
    instance: bool,
    run: &mut RunDirs,
) -> Result<ForProcess, String> {
    let implied = unit.service.exec.with_implied();
    let cfg = &implied;
    let mut all_groups = groups.to_vec();
    for name in &cfg.supplementary_groups {
        let gid = resolve_group(name)?;
        if !all_groups.contains(&gid) {
            all_groups.push(gid);
        }
    }
    if owner.1.is_none() && !cfg.supplementary_groups.is_empty() {
        // Root's own group stays first, as it would be without the key.
        // SAFETY: getgid has no preconditions.
        all_groups.insert(0, unsafe { libc::getgid() });
    }
    run.preserve = cfg.runtime_preserve;
    let mut env = create_directories(cfg, owner, run)?;
    if run.credentials.is_none() {
        run.credentials = super::credentials::write(&unit.name, &cfg.credentials, owner)?;
    }
    if let Some(dir) = &run.credentials {
        env.push(("CREDENTIALS_DIRECTORY".to_string(), dir.display().to_string()));
    }
    if cfg.private_tmp && run.private_tmp.is_none() {
        run.private_tmp = Some(make_private_tmp(&unit.name)?);
    }
    if cfg.ns.remove_ipc {
        run.remove_ipc = Some(owner);
    }
    run.joins = cfg.ns.joins_namespace_of.clone();
    run_namespaces(unit, run);
    let opts = Options {
        changes_uid: owner.0.is_some(),
        instance,
        private_tmp: run.private_tmp.as_ref(),
        namespaces: run.namespaces.as_ref(),
        identity: owner,
    };
    let (context, mut notes) = ExecContext::prepare(cfg, &opts)?;
    if let Some(ns) = &run.namespaces {
        notes.extend(ns.notes.iter().cloned());
    }
    Ok(ForProcess { context, env, groups: all_groups, notes })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A service's options: no uid change, no private /tmp or namespaces.
    fn plain_options() -> Options<'static> {
        Options { changes_uid: false, instance: false, private_tmp: None, namespaces: None, identity: (None, None) }
    }

    fn table(points: &[(&str, &str)]) -> Vec<MountEntry> {
        points
            .iter()
            .map(|(p, o)| MountEntry {
                point: p.into(),
                flags: mount_flags(o),
                read_only: o.split(',').any(|o| o == "ro"),
            })
            .collect()
    }

    fn targets(steps: &[MountStep]) -> Vec<(String, bool)> {
        steps.iter().map(|s| (s.target.to_string_lossy().into_owned(), s.flags & libc::MS_RDONLY != 0)).collect()
    }

    #[test]
    fn strict_is_read_only_but_api_vfs_and_read_write_paths() {
        let mut cfg = ExecConfig::default();
        cfg.apply("ProtectSystem", "strict").unwrap();
        cfg.apply("ReadWritePaths", "/tmp").unwrap();
        let t = table(&[("/", "rw,relatime"), ("/proc", "rw,nosuid,nodev,noexec"), ("/data", "rw,nosuid")]);
        let steps = sandbox_steps(&cfg, None, &t).unwrap();
        let got = targets(&steps);
        assert_eq!(got[0], ("/".to_string(), true), "no bind stacked on /: its own mount made read-only");
        assert_eq!(steps[0].flags & libc::MS_REMOUNT, libc::MS_REMOUNT);
        assert!(got.contains(&("/data".to_string(), true)), "{got:?}");
        assert!(!got.iter().any(|(p, _)| p == "/proc"), "API file systems stay writable: {got:?}");
        let tmp: Vec<_> = got.iter().filter(|(p, _)| p == "/tmp").collect();
        assert_eq!(tmp.len(), 2, "bind then rw remount: {got:?}");
        assert!(tmp.iter().all(|(_, ro)| !ro));
        // The read-only remount repeats the mount's own flags.
        let data = steps.iter().find(|s| s.target.as_bytes() == b"/data").unwrap();
        assert_ne!(data.flags & libc::MS_NOSUID, 0);
    }

    #[test]
    fn private_tmp_home_and_missing_paths() {
        let mut cfg = ExecConfig::default();
        cfg.apply("PrivateTmp", "yes").unwrap();
        cfg.apply("ProtectHome", "tmpfs").unwrap();
        let private = PrivateTmp {
            outer: vec![],
            tmp: "/tmp/aikore-private-x/tmp".into(),
            var_tmp: Some("/var/tmp/aikore-private-x/tmp".into()),
        };
        let steps = sandbox_steps(&cfg, Some(&private), &[]).unwrap();
        let tmp = steps.iter().find(|s| s.target.as_bytes() == b"/tmp").unwrap();
        assert_eq!(tmp.source.as_deref().unwrap().to_bytes(), b"/tmp/aikore-private-x/tmp");
        let var_tmp = steps.iter().find(|s| s.target.as_bytes() == b"/var/tmp").unwrap();
        assert_eq!(var_tmp.source.as_deref().unwrap().to_bytes(), b"/var/tmp/aikore-private-x/tmp");
        if Path::new("/root").exists() {
            let root = steps.iter().find(|s| s.target.as_bytes() == b"/root").unwrap();
            assert_eq!(root.fstype.as_deref(), Some(c"tmpfs"));
        }
        let mut cfg = ExecConfig::default();
        cfg.apply("ReadOnlyPaths", "/nonexistent/aikore").unwrap();
        assert!(sandbox_steps(&cfg, None, &[]).unwrap_err().contains("prefix it with -"));
        let mut cfg = ExecConfig::default();
        cfg.apply("ReadOnlyPaths", "-/nonexistent/aikore").unwrap();
        assert!(sandbox_steps(&cfg, None, &[]).unwrap().is_empty());
    }

    #[test]
    fn new_dev_and_proc_first_then_binds_then_exec_attributes() {
        let mut cfg = ExecConfig::default();
        for (k, v) in [
            ("PrivateDevices", "yes"),
            ("ProtectProc", "invisible"),
            ("ProcSubset", "pid"),
            ("NoExecPaths", "/"),
            ("ExecPaths", "/usr"),
            ("BindReadOnlyPaths", "/etc:/srv/aikore-test/etc"),
            ("TemporaryFileSystem", "/mnt:ro,size=1M"),
        ] {
            cfg.apply(k, v).unwrap();
        }
        let t =
            table(&[("/", "rw"), ("/dev", "rw,nosuid"), ("/proc", "rw"), ("/proc/sys", "ro"), ("/proc/sys/x", "rw")]);
        let steps = sandbox_steps(&cfg, None, &t).unwrap();
        let pos = |pred: &dyn Fn(&MountStep) -> bool| steps.iter().position(pred).expect("a step");
        let is = |s: &MountStep, target: &str| s.target.as_bytes() == target.as_bytes();
        let dev_tmpfs =
            pos(&|s| s.fstype.as_deref() == Some(c"tmpfs") && s.target.to_bytes().ends_with(b"private-dev"));
        let null = pos(&|s| s.op == Op::Mount && s.source.as_deref() == Some(c"/dev/null"));
        let dev_move = pos(&|s| s.flags & libc::MS_MOVE != 0 && is(s, "/dev"));
        assert!(dev_tmpfs < null && null < dev_move);
        assert!(!steps.iter().any(|s| s.source.as_deref().is_some_and(|c| c.to_bytes().starts_with(b"/dev/vd"))));
        let proc = pos(&|s| s.fstype.as_deref() == Some(c"proc"));
        assert_eq!(steps[proc].data.as_deref(), Some(c"hidepid=invisible,subset=pid"));
        // Where the kernel refuses the instance: a warning, and the rest of /proc's steps skipped.
        let proc_move = pos(&|s| s.flags & libc::MS_MOVE != 0 && is(s, "/proc"));
        assert_eq!(steps[proc].fallback, Some((WARN_NO_PROC, proc_move - proc)));
        // The runtime's /proc/sys carried over (once, with what is below it); optional under subset=pid.
        let sys: Vec<_> = steps.iter().filter(|s| s.source.as_deref() == Some(c"/proc/sys")).collect();
        assert_eq!(sys.len(), 1);
        assert!(!sys[0].required && sys[0].flags & libc::MS_REC != 0);
        assert!(dev_move < proc);
        let bind = pos(&|s| s.op == Op::Mount && is(s, "/srv/aikore-test/etc"));
        assert!(steps[..bind].iter().any(|s| s.op == Op::Mkdir(0o755) && is(s, "/srv/aikore-test")));
        assert_eq!(steps[bind + 1].op, Op::SetAttr { set: MOUNT_ATTR_RDONLY, clear: 0, recursive: true });
        let tmpfs = pos(&|s| s.op == Op::Mount && is(s, "/mnt"));
        assert_eq!(steps[tmpfs].data.as_deref(), Some(c"mode=0755,size=1M"));
        let tmpfs_ro = pos(&|s| matches!(s.op, Op::SetAttr { set: MOUNT_ATTR_RDONLY, recursive: false, .. }));
        let noexec = pos(&|s| matches!(s.op, Op::SetAttr { set: MOUNT_ATTR_NOEXEC, .. }) && is(s, "/"));
        let exec = pos(&|s| matches!(s.op, Op::SetAttr { clear: MOUNT_ATTR_NOEXEC, .. }) && is(s, "/usr"));
        assert!(bind < tmpfs_ro && tmpfs_ro < noexec && noexec < exec, "{steps:#?}");
        let mut missing = ExecConfig::default();
        missing.apply("NoExecPaths", "/nonexistent/aikore").unwrap();
        assert!(sandbox_steps(&missing, None, &t).unwrap_err().contains("NoExecPaths=/nonexistent/aikore"));
        let mut missing = ExecConfig::default();
        missing.apply("BindPaths", "/nonexistent/aikore").unwrap();
        assert!(sandbox_steps(&missing, None, &t).unwrap_err().contains("BindPaths="));
    }

    #[test]
    fn protect_kernel_keys_drop_their_capabilities_and_make_the_kernels_files_read_only() {
        let mut cfg = ExecConfig::default();
        for key in [
            "ProtectKernelTunables",
            "ProtectKernelModules",
            "ProtectKernelLogs",
            "ProtectControlGroups",
            "ProtectClock",
        ] {
            cfg.apply(key, "yes").unwrap();
        }
        let opts = plain_options();
        let (cx, _) = ExecContext::prepare(&cfg, &opts).unwrap();
        assert_eq!(
            cx.cap_drop,
            1 << CAP_SYS_MODULE | 1 << CAP_SYSLOG | 1 << CAP_SYS_TIME | 1 << CAP_WAKE_ALARM,
            "ProtectKernelTunables= and ProtectControlGroups= drop nothing"
        );
        assert!(!cx.new_uts);
        assert!(cx.sandbox_note.contains("ProtectKernelTunables=, ProtectKernelModules="), "{}", cx.sandbox_note);

        // A hybrid v1/v2 /sys/fs/cgroup below /sys, as on this project's dev box.
        let t = table(&[
            ("/", "rw"),
            ("/proc", "rw,nosuid,nodev,noexec"),
            ("/sys", "rw,nosuid,nodev,noexec"),
            ("/sys/fs/cgroup", "rw,nosuid"),
            ("/sys/fs/cgroup/memory", "rw,nosuid"),
            ("/sys/kernel/debug", "rw"),
        ]);
        let mut tunables = ExecConfig::default();
        tunables.apply("ProtectKernelTunables", "yes").unwrap();
        let got = targets(&sandbox_steps(&tunables, None, &t).unwrap());
        assert!(got.contains(&("/sys".to_string(), true)), "{got:?}");
        assert!(got.contains(&("/proc/sys".to_string(), true)), "{got:?}");
        assert!(got.contains(&("/sys/kernel/debug".to_string(), true)), "a mount below /sys too: {got:?}");
        assert!(!got.iter().any(|(p, _)| p.starts_with("/sys/fs/cgroup")), "the cgroup tree is left: {got:?}");
        let mut cgroups = tunables.clone();
        cgroups.apply("ProtectControlGroups", "yes").unwrap();
        let got = targets(&sandbox_steps(&cgroups, None, &t).unwrap());
        assert!(got.contains(&("/sys/fs/cgroup".to_string(), true)), "{got:?}");
        assert!(got.contains(&("/sys/fs/cgroup/memory".to_string(), true)), "its v1 mounts too: {got:?}");
        // ProtectSystem=strict still leaves /sys and what is below it.
        let mut strict = ExecConfig::default();
        strict.apply("ProtectSystem", "strict").unwrap();
        let got = targets(&sandbox_steps(&strict, None, &t).unwrap());
        assert!(!got.iter().any(|(p, _)| p.starts_with("/sys")), "{got:?}");
        // ProcSubset=pid has no /proc/sys to protect; PrivateDevices= no /dev/kmsg.
        let mut subset = ExecConfig::default();
        for (k, v) in [("ProtectKernelTunables", "yes"), ("ProtectKernelLogs", "yes"), ("ProcSubset", "pid")] {
            subset.apply(k, v).unwrap();
        }
        subset.apply("PrivateDevices", "yes").unwrap();
        let got: Vec<PathBuf> = protect_entries(&subset).into_iter().map(|(p, _)| p).collect();
        assert!(!got.iter().any(|p| p.starts_with("/proc") || p == Path::new("/dev/kmsg")), "{got:?}");
    }

    #[test]
    fn protect_hostname_asks_for_a_uts_namespace() {
        let mut cfg = ExecConfig::default();
        cfg.apply("ProtectHostname", "yes").unwrap();
        assert!(!cfg.wants_mount_namespace(), "a UTS namespace alone");
        let opts = plain_options();
        let (cx, _) = ExecContext::prepare(&cfg, &opts).unwrap();
        assert!(cx.new_uts && cx.cap_drop == 0);
        assert!(cx.describe_stage(WARN_NO_UTS).unwrap().starts_with("ProtectHostname=: the kernel refused"));
    }

    #[test]
    fn private_devices_drop_mknod_and_rawio() {
        let mut cfg = ExecConfig::default();
        cfg.apply("PrivateDevices", "yes").unwrap();
        let opts = plain_options();
        let (cx, _) = ExecContext::prepare(&cfg, &opts).unwrap();
        assert_eq!(cx.cap_drop, 1 << CAP_MKNOD | 1 << CAP_SYS_RAWIO);
        assert!(cx.sandbox_note.starts_with("PrivateDevices= not applied"), "{}", cx.sandbox_note);
    }

    #[test]
    fn scheduling_defaults_and_conflicts() {
        let cfg = |p: Option<i32>, n: Option<i32>| ExecConfig {
            cpu_sched_policy: p,
            cpu_sched_priority: n,
            ..Default::default()
        };
        assert_eq!(scheduling(&cfg(None, None)), Ok(None));
        assert_eq!(scheduling(&cfg(Some(libc::SCHED_FIFO), None)), Ok(Some((libc::SCHED_FIFO, 1))));
        assert_eq!(scheduling(&cfg(Some(libc::SCHED_RR), Some(50))), Ok(Some((libc::SCHED_RR, 50))));
        assert_eq!(scheduling(&cfg(Some(libc::SCHED_BATCH), None)), Ok(Some((libc::SCHED_BATCH, 0))));
        assert!(scheduling(&cfg(Some(libc::SCHED_BATCH), Some(5))).is_err());
        assert!(scheduling(&cfg(None, Some(5))).is_err());
    }

    #[test]
    fn stage_names_say_the_key() {
        let mut cfg = ExecConfig::default();
        cfg.apply("LimitNOFILE", "10").unwrap();
        cfg.apply("NoNewPrivileges", "yes").unwrap();
        let opts = plain_options();
        let (cx, _) = ExecContext::prepare(&cfg, &opts).unwrap();
        assert_eq!(cx.describe_stage(STAGE_RLIMIT).unwrap(), "LimitNOFILE= (setrlimit)");
        assert!(cx.describe_stage(STAGE_NNP).unwrap().starts_with("NoNewPrivileges="));
        assert_eq!(cx.describe_stage(7), None);
        // An instance gets no_new_privs unless its file says otherwise.
        let (cx, _) = ExecContext::prepare(&ExecConfig::default(), &Options { instance: true, ..opts }).unwrap();
        assert!(cx.no_new_privs);
    }
}
