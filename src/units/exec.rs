//! The execution context of a service (systemd.exec(5) and
//! systemd.resource-control(5)): process limits, stdio, directories,
//! capabilities, the mount-namespace sandbox and cgroup v2 resource keys, as
//! parsed and typed values. No system calls: the supervisor applies them
//! (`supervisor::exec` between fork and exec, `supervisor::cgroup` for the
//! resource files).

use std::path::PathBuf;

/// [Service] keys this module parses itself; [`service_keys`] adds those
/// it hands to `seccomp`, `namespaces` and `cgroup_access`.
const SERVICE_KEYS: &[&str] = &[
    "LimitCPU",
    "LimitFSIZE",
    "LimitDATA",
    "LimitSTACK",
    "LimitCORE",
    "LimitRSS",
    "LimitNOFILE",
    "LimitAS",
    "LimitNPROC",
    "LimitMEMLOCK",
    "LimitLOCKS",
    "LimitSIGPENDING",
    "LimitMSGQUEUE",
    "LimitNICE",
    "LimitRTPRIO",
    "LimitRTTIME",
    "OOMScoreAdjust",
    "SupplementaryGroups",
    "StandardInput",
    "StandardOutput",
    "StandardError",
    "RuntimeDirectory",
    "StateDirectory",
    "CacheDirectory",
    "LogsDirectory",
    "ConfigurationDirectory",
    "RuntimeDirectoryMode",
    "StateDirectoryMode",
    "CacheDirectoryMode",
    "LogsDirectoryMode",
    "ConfigurationDirectoryMode",
    "RuntimeDirectoryPreserve",
    "NoNewPrivileges",
    "CapabilityBoundingSet",
    "AmbientCapabilities",
    "PrivateTmp",
    "ProtectSystem",
    "ProtectHome",
    "ReadWritePaths",
    "ReadOnlyPaths",
    "InaccessiblePaths",
    // Their old names (systemd < 231), still in Debian's redis unit.
    "ReadWriteDirectories",
    "ReadOnlyDirectories",
    "InaccessibleDirectories",
    "MemoryHigh",
    "MemorySwapMax",
    "CPUWeight",
    "CPUQuota",
    "AllowedCPUs",
    "TasksMax",
    "IOWeight",
    "LoadCredential",
    "SetCredential",
    "UnsetEnvironment",
    "CPUSchedulingPolicy",
    "CPUSchedulingPriority",
    "IOSchedulingClass",
    "IOSchedulingPriority",
    "IgnoreSIGPIPE",
];

/// Every [Service] key of the execution context (they are `Implemented` in `keys`).
pub fn service_keys() -> impl Iterator<Item = &'static str> {
    let parts = [SERVICE_KEYS, super::seccomp::KEYS, super::namespaces::KEYS, super::cgroup_access::KEYS];
    parts.into_iter().flatten().copied()
}

/// Resource keys an `.instance` file may set (keys.rs holds the allow-list; a test keeps them in step): they only restrict what the
/// instance user's processes get (unlike `Limit*=`, which can raise a hard
/// limit as root would, or `OOMScoreAdjust=`, which can shield from the OOM killer).
#[cfg(test)]
const INSTANCE_SERVICE_KEYS: &[&str] =
    &["MemoryHigh", "MemorySwapMax", "CPUWeight", "CPUQuota", "AllowedCPUs", "TasksMax", "IOWeight"];

/// One `Limit*=`: the resource (a `libc::RLIMIT_*` value) and its soft and hard values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rlimit {
    pub key: &'static str,
    pub resource: i32,
    pub soft: u64,
    pub hard: u64,
}

/// `RLIM_INFINITY` (`infinity` in a unit file).
pub const RLIM_INFINITY: u64 = u64::MAX;

/// How a `Limit*=` value is read.
#[derive(Clone, Copy)]
enum LimitUnit {
    Count,
    Bytes,
    /// Seconds (LimitCPU=).
    Seconds,
    /// Microseconds (LimitRTTIME=).
    Micros,
    /// A nice value (`-20..19`, stored as `20 - nice`) or the raw rlimit `0..40`.
    Nice,
}

const LIMITS: &[(&str, i32, LimitUnit)] = &[
    ("LimitCPU", libc::RLIMIT_CPU as i32, LimitUnit::Seconds),
    ("LimitFSIZE", libc::RLIMIT_FSIZE as i32, LimitUnit::Bytes),
    ("LimitDATA", libc::RLIMIT_DATA as i32, LimitUnit::Bytes),
    ("LimitSTACK", libc::RLIMIT_STACK as i32, LimitUnit::Bytes),
    ("LimitCORE", libc::RLIMIT_CORE as i32, LimitUnit::Bytes),
    ("LimitRSS", libc::RLIMIT_RSS as i32, LimitUnit::Bytes),
    ("LimitNOFILE", libc::RLIMIT_NOFILE as i32, LimitUnit::Count),
    ("LimitAS", libc::RLIMIT_AS as i32, LimitUnit::Bytes),
    ("LimitNPROC", libc::RLIMIT_NPROC as i32, LimitUnit::Count),
    ("LimitMEMLOCK", libc::RLIMIT_MEMLOCK as i32, LimitUnit::Bytes),
    ("LimitLOCKS", libc::RLIMIT_LOCKS as i32, LimitUnit::Count),
    ("LimitSIGPENDING", libc::RLIMIT_SIGPENDING as i32, LimitUnit::Count),
    ("LimitMSGQUEUE", libc::RLIMIT_MSGQUEUE as i32, LimitUnit::Bytes),
    ("LimitNICE", libc::RLIMIT_NICE as i32, LimitUnit::Nice),
    ("LimitRTPRIO", libc::RLIMIT_RTPRIO as i32, LimitUnit::Count),
    ("LimitRTTIME", libc::RLIMIT_RTTIME as i32, LimitUnit::Micros),
];

/// Where a standard stream goes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Output {
    /// `journal`, `syslog`, `kmsg`, `inherit` (for stdout) and their `+console`
    /// forms: the unit's log, aikore's journal.
    #[default]
    Log,
    Null,
    /// `file:PATH` (written from the start without truncating, as systemd does).
    File(PathBuf),
    Append(PathBuf),
    Truncate(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Input {
    #[default]
    Null,
    File(PathBuf),
}

/// The four per-unit directory kinds of systemd (`ConfigurationDirectory=` too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DirKind {
    Runtime,
    State,
    Cache,
    Logs,
    Configuration,
}

impl DirKind {
    pub const ALL: [DirKind; 5] =
        [DirKind::Runtime, DirKind::State, DirKind::Cache, DirKind::Logs, DirKind::Configuration];

    /// The base directory (systemd's for system services).
    pub fn base(self) -> &'static str {
        match self {
            DirKind::Runtime => "/run",
            DirKind::State => "/var/lib",
            DirKind::Cache => "/var/cache",
            DirKind::Logs => "/var/log",
            DirKind::Configuration => "/etc",
        }
    }

    /// The environment variable that lists the unit's directories of this kind.
    pub fn env_name(self) -> &'static str {
        match self {
            DirKind::Runtime => "RUNTIME_DIRECTORY",
            DirKind::State => "STATE_DIRECTORY",
            DirKind::Cache => "CACHE_DIRECTORY",
            DirKind::Logs => "LOGS_DIRECTORY",
            DirKind::Configuration => "CONFIGURATION_DIRECTORY",
        }
    }

    fn from_key(key: &str) -> Option<DirKind> {
        let prefix = key.strip_suffix("DirectoryMode").or_else(|| key.strip_suffix("Directory"))?;
        DirKind::ALL.into_iter().find(|k| format!("{k:?}") == prefix)
    }
}

/// `XDirectory=` names with `XDirectoryMode=`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directories {
    pub kind: DirKind,
    /// Relative to [`DirKind::base`], without `..`.
    pub names: Vec<String>,
    pub mode: u32,
}

/// `RuntimeDirectoryPreserve=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Preserve {
    /// Removed whenever the unit stops (systemd's default).
    #[default]
    No,
    Yes,
    /// Kept across an automatic restart, removed on a stop.
    Restart,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProtectSystem {
    #[default]
    No,
    /// `/usr`, `/boot`, `/efi` read-only.
    Yes,
    /// ...and `/etc`.
    Full,
    /// The whole tree read-only except `/dev`, `/proc`, `/sys` and ReadWritePaths=.
    Strict,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProtectHome {
    #[default]
    No,
    /// `/home`, `/root`, `/run/user` inaccessible.
    Yes,
    ReadOnly,
    /// An empty tmpfs over each.
    Tmpfs,
}

/// A path of ReadWritePaths= and friends; `-` prefix: a missing path is skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxPath {
    pub path: PathBuf,
    pub optional: bool,
}

/// `TasksMax=`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TasksMax {
    Count(u64),
    /// Of the kernel's `threads-max`, resolved when applied.
    Percent(f64),
}

/// systemd.resource-control(5) keys beyond MemoryMax=, for the unit's cgroup v2.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Resources {
    /// `memory.high` in bytes; `Some(None)` writes `max`.
    pub memory_high: Option<Option<u64>>,
    pub memory_swap_max: Option<Option<u64>>,
    /// `cpu.weight` (1..10000); `idle` is `cpu.idle` 1 (weight None).
    pub cpu_weight: Option<u64>,
    pub cpu_idle: bool,
    /// CPUQuota= in percent of one CPU: `cpu.max` `quota 100000`.
    pub cpu_quota_percent: Option<u64>,
    /// `cpuset.cpus`, validated (`0-3,6`).
    pub allowed_cpus: Option<String>,
    /// `pids.max`; `Some(None)` writes `max`.
    pub tasks_max: Option<Option<TasksMax>>,
    /// `io.weight` `default N`.
    pub io_weight: Option<u64>,
    /// DeviceAllow=, IPAddressAllow= and friends, Delegate= (units/cgroup_access.rs).
    pub access: super::cgroup_access::CgroupAccess,
}

impl Resources {
    pub fn is_empty(&self) -> bool {
        *self == Resources::default()
    }
}

/// Everything systemd.exec(5) beyond the identity, cwd, umask and nice.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ExecConfig {
    pub limits: Vec<Rlimit>,
    pub oom_score_adjust: Option<i32>,
    /// Group names or numbers, resolved at start.
    pub supplementary_groups: Vec<String>,
    pub stdin: Input,
    pub stdout: Output,
    /// None (`inherit`, the default): wherever stdout goes.
    pub stderr: Option<Output>,
    /// `WorkingDirectory=-/path`: a missing dir is not an error (the process starts in `/`).
    pub working_directory_optional: bool,
    /// `WorkingDirectory=~`: the User='s home.
    pub working_directory_home: bool,
    pub directories: Vec<Directories>,
    pub runtime_preserve: Preserve,
    /// `None`: not set (an instance then gets `yes`, a service `no`).
    pub no_new_privileges: Option<bool>,
    /// Bit `n` is capability `n`; None: not set (all kept).
    pub capability_bounding_set: Option<u64>,
    pub ambient_capabilities: u64,
    pub private_tmp: bool,
    pub protect_system: ProtectSystem,
    pub protect_home: ProtectHome,
    pub read_write_paths: Vec<SandboxPath>,
    pub read_only_paths: Vec<SandboxPath>,
    pub inaccessible_paths: Vec<SandboxPath>,
    pub resources: Resources,
    /// The seccomp keys (units/seccomp.rs).
    pub seccomp: super::seccomp::SeccompConfig,
    /// `LoadCredential=` and `SetCredential=`, in file order.
    pub credentials: Vec<super::credentials::Credential>,
    /// `UnsetEnvironment=`: `NAME` or `NAME=VALUE`, applied last.
    pub unset_environment: Vec<String>,
    /// `CPUSchedulingPolicy=` as a `libc::SCHED_*` value.
    pub cpu_sched_policy: Option<i32>,
    pub cpu_sched_priority: Option<i32>,
    /// `IOSchedulingClass=`: 0 none, 1 realtime, 2 best-effort, 3 idle (ioprio_set's classes).
    pub io_sched_class: Option<u16>,
    pub io_sched_priority: Option<u16>,
    /// `IgnoreSIGPIPE=`; None: systemd's default, yes.
    pub ignore_sigpipe: Option<bool>,
    /// PrivateDevices=, PrivateNetwork=, PrivateUsers=, BindPaths=, ... (units/namespaces.rs).
    pub ns: super::namespaces::NamespaceConfig,
}

impl ExecConfig {
    /// Whether a mount namespace is needed.
    pub fn wants_mount_namespace(&self) -> bool {
        self.private_tmp
            || self.protect_system != ProtectSystem::No
            || self.protect_home != ProtectHome::No
            || !self.read_write_paths.is_empty()
            || !self.read_only_paths.is_empty()
            || !self.inaccessible_paths.is_empty()
            || self.ns.wants_mount_namespace()
    }

    pub fn directories(&self, kind: DirKind) -> Option<&Directories> {
        self.directories.iter().find(|d| d.kind == kind)
    }

    /// Applies one [Service] key of [`service_keys`]. `Ok(Some(w))` is a warning.
    pub fn apply(&mut self, key: &str, value: &str) -> Result<Option<String>, String> {
        let value = value.trim();
        if let Some(&(key, resource, unit)) = LIMITS.iter().find(|(k, _, _)| *k == key) {
            self.limits.retain(|l| l.resource != resource);
            if !value.is_empty() {
                let (soft, hard) = parse_limit(value, unit)?;
                self.limits.push(Rlimit { key, resource, soft, hard });
            }
            return Ok(None);
        }
        if super::seccomp::KEYS.contains(&key) {
            return self.seccomp.apply(key, value);
        }
        if super::namespaces::KEYS.contains(&key) {
            return self.ns.apply(key, value).map(|()| None);
        }
        if super::cgroup_access::KEYS.contains(&key) {
            return self.resources.access.apply(key, value).map(|()| None);
        }
        if let Some(kind) = DirKind::from_key(key) {
            return self.apply_directory(kind, key.ends_with("Mode"), value).map(|()| None);
        }
        match key {
            "CPUSchedulingPolicy" => {
                self.cpu_sched_policy = match value {
                    "" => None,
                    "other" => Some(libc::SCHED_OTHER),
                    "batch" => Some(libc::SCHED_BATCH),
                    "idle" => Some(libc::SCHED_IDLE),
                    "fifo" => Some(libc::SCHED_FIFO),
                    "rr" => Some(libc::SCHED_RR),
                    _ => return Err("expected other, batch, idle, fifo or rr".to_string()),
                }
            }
            "CPUSchedulingPriority" => {
                self.cpu_sched_priority = match value {
                    "" => None,
                    v => Some(v.parse().ok().filter(|n| (0..=99).contains(n)).ok_or("expected 0 to 99")?),
                }
            }
            "IOSchedulingClass" => {
                self.io_sched_class = match value {
                    "" => None,
                    "none" | "0" => Some(0),
                    "realtime" | "1" => Some(1),
                    "best-effort" | "2" => Some(2),
                    "idle" | "3" => Some(3),
                    _ => return Err("expected realtime, best-effort, idle or none".to_string()),
                }
            }
            "IOSchedulingPriority" => {
                self.io_sched_priority = match value {
                    "" => None,
                    v => Some(v.parse().ok().filter(|n| *n <= 7).ok_or("expected 0 to 7")?),
                }
            }
            "IgnoreSIGPIPE" => {
                self.ignore_sigpipe = if value.is_empty() { None } else { Some(super::resolve::parse_bool(value)?) }
            }
            "UnsetEnvironment" => {
                if value.is_empty() {
                    self.unset_environment.clear();
                }
                for word in super::quote::split_command_line(value)? {
                    let name = word.split_once('=').map_or(word.as_str(), |(n, _)| n);
                    if !super::quote::is_valid_env_name(name) {
                        return Err(format!("'{word}' is not NAME or NAME=VALUE"));
                    }
                    self.unset_environment.push(word);
                }
            }
            "LoadCredential" | "SetCredential" => super::credentials::apply(&mut self.credentials, key, value)?,
            "OOMScoreAdjust" => {
                let n: i32 = value.parse().map_err(|_| "expected a number from -1000 to 1000".to_string())?;
                if !(-1000..=1000).contains(&n) {
                    return Err("expected a number from -1000 to 1000".to_string());
                }
                self.oom_score_adjust = Some(n);
            }
            "SupplementaryGroups" => {
                if value.is_empty() {
                    self.supplementary_groups.clear();
                }
                for g in value.split_whitespace() {
                    if !g.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.$".contains(&b)) {
                        return Err(format!("'{g}' is not a group name"));
                    }
                    self.supplementary_groups.push(g.to_string());
                }
            }
            "StandardInput" => return self.apply_input(value),
            "StandardOutput" => {
                let (out, warning) = parse_output(value, false)?;
                self.stdout = out;
                return Ok(warning);
            }
            "StandardError" => {
                if matches!(value, "" | "inherit") {
                    self.stderr = None;
                    return Ok(None);
                }
                let (out, warning) = parse_output(value, true)?;
                self.stderr = Some(out);
                return Ok(warning);
            }
            "RuntimeDirectoryPreserve" => {
                self.runtime_preserve = match value {
                    "restart" => Preserve::Restart,
                    v => {
                        if super::resolve::parse_bool(v).map_err(|_| "expected yes, no or restart".to_string())? {
                            Preserve::Yes
                        } else {
                            Preserve::No
                        }
                    }
                }
            }
            "NoNewPrivileges" => self.no_new_privileges = Some(super::resolve::parse_bool(value)?),
            "CapabilityBoundingSet" => {
                // systemd: an empty assignment is the empty set (drop them all), not a reset.
                if value.is_empty() {
                    self.capability_bounding_set = Some(0);
                } else {
                    let (invert, set) = parse_caps(value)?;
                    let current = self.capability_bounding_set;
                    self.capability_bounding_set = Some(if invert {
                        current.unwrap_or(ALL_CAPS) & !set
                    } else {
                        current.map_or(set, |c| c | set)
                    });
                }
            }
            "AmbientCapabilities" => {
                if value.is_empty() {
                    self.ambient_capabilities = 0;
                } else {
                    let (invert, set) = parse_caps(value)?;
                    self.ambient_capabilities = if invert {
                        (self.ambient_capabilities | ALL_CAPS) & !set
                    } else {
                        self.ambient_capabilities | set
                    };
                }
            }
            "PrivateTmp" => {
                // systemd 255 also takes `disconnected`: a private /tmp either way here.
                self.private_tmp = value == "disconnected" || super::resolve::parse_bool(value)?;
            }
            "ProtectSystem" => {
                self.protect_system = match value {
                    "full" => ProtectSystem::Full,
                    "strict" => ProtectSystem::Strict,
                    v => match super::resolve::parse_bool(v) {
                        Ok(true) => ProtectSystem::Yes,
                        Ok(false) => ProtectSystem::No,
                        Err(_) => return Err("expected yes, no, full or strict".to_string()),
                    },
                }
            }
            "ProtectHome" => {
                self.protect_home = match value {
                    "read-only" => ProtectHome::ReadOnly,
                    "tmpfs" => ProtectHome::Tmpfs,
                    v => match super::resolve::parse_bool(v) {
                        Ok(true) => ProtectHome::Yes,
                        Ok(false) => ProtectHome::No,
                        Err(_) => return Err("expected yes, no, read-only or tmpfs".to_string()),
                    },
                }
            }
            "ReadWritePaths" | "ReadWriteDirectories" => parse_paths(&mut self.read_write_paths, value)?,
            "ReadOnlyPaths" | "ReadOnlyDirectories" => parse_paths(&mut self.read_only_paths, value)?,
            "InaccessiblePaths" | "InaccessibleDirectories" => parse_paths(&mut self.inaccessible_paths, value)?,
            "MemoryHigh" => self.resources.memory_high = Some(parse_bytes_or_infinity(value)?),
            "MemorySwapMax" => self.resources.memory_swap_max = Some(parse_bytes_or_infinity(value)?),
            "CPUWeight" => {
                self.resources.cpu_idle = value == "idle";
                self.resources.cpu_weight = match value {
                    "" | "idle" => None,
                    v => Some(parse_weight(v)?),
                };
            }
            "IOWeight" => self.resources.io_weight = (!value.is_empty()).then(|| parse_weight(value)).transpose()?,
            "CPUQuota" => {
                self.resources.cpu_quota_percent = match value {
                    "" => None,
                    v => {
                        let n: u64 = v
                            .strip_suffix('%')
                            .and_then(|n| n.trim().parse().ok())
                            .filter(|n| *n > 0)
                            .ok_or_else(|| "expected a percentage of one CPU, such as 50% or 200%".to_string())?;
                        Some(n)
                    }
                }
            }
            "AllowedCPUs" => {
                self.resources.allowed_cpus = match value {
                    "" => None,
                    v => Some(parse_cpu_list(v)?),
                }
            }
            "TasksMax" => {
                self.resources.tasks_max = match value {
                    "" => None,
                    "infinity" => Some(None),
                    v => Some(Some(match v.strip_suffix('%') {
                        Some(p) => TasksMax::Percent(
                            p.trim()
                                .parse::<f64>()
                                .ok()
                                .filter(|p| *p > 0.0 && *p <= 100.0)
                                .ok_or_else(|| "expected a count, a percentage or infinity".to_string())?,
                        ),
                        None => TasksMax::Count(
                            v.parse()
                                .ok()
                                .filter(|n| *n > 0)
                                .ok_or_else(|| "expected a count, a percentage or infinity".to_string())?,
                        ),
                    })),
                }
            }
            _ => return Err(format!("{key}= is not an execution key")),
        }
        Ok(None)
    }

    fn apply_input(&mut self, value: &str) -> Result<Option<String>, String> {
        if let Some(path) = value.strip_prefix("file:") {
            self.stdin = Input::File(absolute(path)?);
            return Ok(None);
        }
        self.stdin = Input::Null;
        match value {
            "" | "null" => Ok(None),
            "tty" | "tty-force" | "tty-fail" => {
                Ok(Some(format!("StandardInput={value}: aikore gives units no terminal; stdin is /dev/null")))
            }
            "data" | "socket" => Ok(Some(format!("StandardInput={value} is not supported; stdin is /dev/null"))),
            v if v.starts_with("fd:") => Ok(Some(format!("StandardInput={v} is not supported; stdin is /dev/null"))),
            _ => Err("expected null, tty or file:PATH".to_string()),
        }
    }

    fn apply_directory(&mut self, kind: DirKind, mode: bool, value: &str) -> Result<(), String> {
        let index = match self.directories.iter().position(|d| d.kind == kind) {
            Some(i) => i,
            None => {
                self.directories.push(Directories { kind, names: Vec::new(), mode: 0o755 });
                self.directories.len() - 1
            }
        };
        let dirs = &mut self.directories[index];
        if mode {
            let m = u32::from_str_radix(value, 8).map_err(|_| "expected an octal mode such as 0755".to_string())?;
            if m > 0o7777 {
                return Err("a mode is at most 07777".to_string());
            }
            dirs.mode = m;
            return Ok(());
        }
        if value.is_empty() {
            dirs.names.clear();
        }
        for name in value.split_whitespace() {
            // systemd 254's `name:symlink` form: the directory part is what we create.
            let name = name.split(':').next().unwrap_or(name);
            if name.starts_with('/') || name.split('/').any(|c| c == ".." || c == ".") || name.is_empty() {
                return Err(format!("'{name}' must be a relative path without '.' or '..'"));
            }
            if !dirs.names.iter().any(|n| n == name) {
                dirs.names.push(name.trim_end_matches('/').to_string());
            }
        }
        Ok(())
    }
}

fn absolute(path: &str) -> Result<PathBuf, String> {
    if path.starts_with('/') {
        Ok(PathBuf::from(path))
    } else {
        Err(format!("'{path}' must be an absolute path"))
    }
}

fn parse_output(value: &str, stderr: bool) -> Result<(Output, Option<String>), String> {
    for (prefix, make) in
        [("file:", Output::File as fn(PathBuf) -> Output), ("append:", Output::Append), ("truncate:", Output::Truncate)]
    {
        if let Some(path) = value.strip_prefix(prefix) {
            return Ok((make(absolute(path)?), None));
        }
    }
    let out = match value {
        "inherit" | "" | "journal" | "syslog" | "kmsg" | "journal+console" | "syslog+console" | "kmsg+console" => {
            Output::Log
        }
        "null" => Output::Null,
        "tty" | "socket" => {
            return Ok((
                Output::Log,
                Some(format!(
                    "Standard{}={value}: written to the unit's log instead",
                    if stderr { "Error" } else { "Output" }
                )),
            ))
        }
        v if v.starts_with("fd:") => {
            return Ok((
                Output::Log,
                Some(format!(
                    "Standard{}={v}: written to the unit's log instead",
                    if stderr { "Error" } else { "Output" }
                )),
            ))
        }
        _ => return Err("expected inherit, null, journal, file:PATH, append:PATH or truncate:PATH".to_string()),
    };
    Ok((out, None))
}

pub(super) fn parse_paths(list: &mut Vec<SandboxPath>, value: &str) -> Result<(), String> {
    if value.is_empty() {
        list.clear();
    }
    for word in super::quote::split_command_line(value)? {
        let mut rest = word.as_str();
        let mut optional = false;
        // `-`: ignore a missing path; `+`: relative to RootDirectory=, which aikore has not, so the same path.
        while let Some(r) = rest.strip_prefix('-').or_else(|| rest.strip_prefix('+')) {
            optional |= rest.starts_with('-');
            rest = r;
        }
        list.push(SandboxPath { path: absolute(rest)?, optional });
    }
    Ok(())
}

/// Bytes with an optional K, M, G, T, P or E suffix (powers of 1024), or `infinity`.
pub fn parse_bytes_or_infinity(v: &str) -> Result<Option<u64>, String> {
    let v = v.trim();
    if v == "infinity" {
        return Ok(None);
    }
    parse_bytes(v).map(Some)
}

fn parse_bytes(v: &str) -> Result<u64, String> {
    let err = || format!("'{v}' is not a size (bytes with an optional K, M, G, T, P or E suffix, or infinity)");
    if v.ends_with('%') {
        return Err(format!("'{v}': percentages of RAM are not supported; give a size"));
    }
    let (digits, shift) = match v.char_indices().last() {
        Some((i, 'K' | 'k')) => (&v[..i], 10),
        Some((i, 'M' | 'm')) => (&v[..i], 20),
        Some((i, 'G' | 'g')) => (&v[..i], 30),
        Some((i, 'T' | 't')) => (&v[..i], 40),
        Some((i, 'P' | 'p')) => (&v[..i], 50),
        Some((i, 'E' | 'e')) => (&v[..i], 60),
        _ => (v, 0),
    };
    let n: u64 = digits.trim().parse().map_err(|_| err())?;
    n.checked_mul(1u64 << shift).ok_or_else(err)
}

fn parse_weight(v: &str) -> Result<u64, String> {
    v.parse::<u64>().ok().filter(|n| (1..=10_000).contains(n)).ok_or_else(|| "expected a weight from 1 to 10000".into())
}

/// `0-3,6 8`: CPU indices and ranges, separated by commas or spaces.
fn parse_cpu_list(v: &str) -> Result<String, String> {
    let err = || format!("'{v}' is not a CPU list such as 0-3,6");
    let mut parts = Vec::new();
    for item in v.split(|c: char| c == ',' || c.is_whitespace()).filter(|s| !s.is_empty()) {
        let (a, b) = item.split_once('-').unwrap_or((item, item));
        let (a, b): (u32, u32) = (a.parse().map_err(|_| err())?, b.parse().map_err(|_| err())?);
        if a > b || b > 8191 {
            return Err(err());
        }
        parts.push(if a == b { a.to_string() } else { format!("{a}-{b}") });
    }
    if parts.is_empty() {
        return Err(err());
    }
    Ok(parts.join(","))
}

/// `soft:hard` or one value for both, each a number (with the unit's
/// suffixes) or `infinity`.
fn parse_limit(value: &str, unit: LimitUnit) -> Result<(u64, u64), String> {
    let one = |v: &str| -> Result<u64, String> {
        let v = v.trim();
        if v == "infinity" {
            return Ok(RLIM_INFINITY);
        }
        match unit {
            LimitUnit::Count => v.parse().map_err(|_| format!("'{v}' is not a number or infinity")),
            LimitUnit::Bytes => parse_bytes(v),
            LimitUnit::Seconds | LimitUnit::Micros => {
                let d = super::timespan::parse_finite_timespan(v)?;
                Ok(if matches!(unit, LimitUnit::Seconds) { d.as_secs() } else { d.as_micros() as u64 })
            }
            LimitUnit::Nice => {
                let n: i64 = v.parse().map_err(|_| format!("'{v}' is not a nice value"))?;
                if v.starts_with(['-', '+']) {
                    if !(-20..=19).contains(&n) {
                        return Err("a nice value is -20..19".to_string());
                    }
                    Ok((20 - n) as u64)
                } else if (0..=40).contains(&n) {
                    Ok(n as u64)
                } else {
                    Err("expected a nice value (-20..19, with its sign) or 0..40".to_string())
                }
            }
        }
    };
    let (soft, hard) = match value.split_once(':') {
        Some((s, h)) => (one(s)?, one(h)?),
        None => {
            let v = one(value)?;
            (v, v)
        }
    };
    if soft > hard {
        return Err("the soft limit is above the hard one".to_string());
    }
    Ok((soft, hard))
}

/// capabilities(7) by number (`CAP_LAST_CAP` of Linux 6.x is 40).
pub const CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

pub const ALL_CAPS: u64 = (1u64 << CAPABILITIES.len()) - 1;

/// A capability list, `~` first for "all but these".
fn parse_caps(value: &str) -> Result<(bool, u64), String> {
    let (invert, list) = match value.strip_prefix('~') {
        Some(rest) => (true, rest),
        None => (false, value),
    };
    let mut set = 0u64;
    for name in list.split_whitespace() {
        let upper = name.to_ascii_uppercase();
        let full = if upper.starts_with("CAP_") { upper } else { format!("CAP_{upper}") };
        let bit = CAPABILITIES
            .iter()
            .position(|c| *c == full)
            .ok_or_else(|| format!("unknown capability {name} (see capabilities(7))"))?;
        set |= 1 << bit;
    }
    Ok((invert, set))
}

/// The names of the capabilities in `set`.
#[cfg(test)]
fn cap_names(set: u64) -> Vec<&'static str> {
    CAPABILITIES.iter().enumerate().filter(|(i, _)| set & (1 << i) != 0).map(|(_, n)| *n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(lines: &[(&str, &str)]) -> ExecConfig {
        let mut c = ExecConfig::default();
        for (k, v) in lines {
            c.apply(k, v).unwrap_or_else(|e| panic!("{k}={v}: {e}"));
        }
        c
    }

    #[test]
    fn limits_take_soft_hard_infinity_and_units() {
        let c = parsed(&[
            ("LimitNOFILE", "1024:4096"),
            ("LimitCORE", "infinity"),
            ("LimitMEMLOCK", "64M"),
            ("LimitCPU", "1min"),
            ("LimitNICE", "-5"),
            ("LimitSTACK", "8M:infinity"),
        ]);
        let get = |r: libc::__rlimit_resource_t| c.limits.iter().find(|l| l.resource == r as i32).copied().unwrap();
        assert_eq!((get(libc::RLIMIT_NOFILE).soft, get(libc::RLIMIT_NOFILE).hard), (1024, 4096));
        assert_eq!(get(libc::RLIMIT_CORE).soft, RLIM_INFINITY);
        assert_eq!(get(libc::RLIMIT_MEMLOCK).hard, 64 << 20);
        assert_eq!(get(libc::RLIMIT_CPU).soft, 60);
        assert_eq!(get(libc::RLIMIT_NICE).soft, 25);
        assert_eq!((get(libc::RLIMIT_STACK).soft, get(libc::RLIMIT_STACK).hard), (8 << 20, RLIM_INFINITY));
        // A later line replaces, an empty one resets.
        let c = parsed(&[("LimitNOFILE", "10"), ("LimitNOFILE", "20")]);
        assert_eq!(c.limits.len(), 1);
        assert_eq!(c.limits[0].soft, 20);
        assert!(parsed(&[("LimitNOFILE", "10"), ("LimitNOFILE", "")]).limits.is_empty());
        let mut c = ExecConfig::default();
        assert!(c.apply("LimitNOFILE", "4096:1024").unwrap_err().contains("soft limit is above"));
        assert!(c.apply("LimitNOFILE", "lots").is_err());
        assert!(c.apply("LimitAS", "12Q").is_err());
    }

    #[test]
    fn stdio_forms() {
        let c = parsed(&[("StandardOutput", "append:/var/log/x.log"), ("StandardError", "inherit")]);
        assert_eq!(c.stdout, Output::Append("/var/log/x.log".into()));
        assert_eq!(c.stderr, None);
        let c = parsed(&[("StandardOutput", "journal+console"), ("StandardError", "null"), ("StandardInput", "null")]);
        assert_eq!((c.stdout, c.stderr, c.stdin), (Output::Log, Some(Output::Null), Input::Null));
        let c = parsed(&[("StandardOutput", "file:/tmp/o"), ("StandardError", "truncate:/tmp/e")]);
        assert_eq!(c.stderr, Some(Output::Truncate("/tmp/e".into())));
        assert_eq!(parsed(&[("StandardError", "journal")]).stderr, Some(Output::Log));
        let mut c = ExecConfig::default();
        assert!(c.apply("StandardInput", "tty").unwrap().unwrap().contains("no terminal"));
        assert!(c.apply("StandardOutput", "file:relative").is_err());
        assert!(c.apply("StandardOutput", "jounral").is_err());
    }

    #[test]
    fn directories_and_modes() {
        let c = parsed(&[
            ("RuntimeDirectory", "app app/sub"),
            ("RuntimeDirectoryMode", "0700"),
            ("StateDirectory", "app"),
            ("RuntimeDirectoryPreserve", "restart"),
        ]);
        let run = c.directories(DirKind::Runtime).unwrap();
        assert_eq!((run.names.clone(), run.mode), (vec!["app".to_string(), "app/sub".to_string()], 0o700));
        assert_eq!(c.directories(DirKind::State).unwrap().mode, 0o755);
        assert_eq!(c.runtime_preserve, Preserve::Restart);
        let mut c = ExecConfig::default();
        assert!(c.apply("StateDirectory", "../etc").is_err());
        assert!(c.apply("CacheDirectory", "/abs").is_err());
        assert!(c.apply("LogsDirectoryMode", "999").is_err());
    }

    #[test]
    fn capabilities_sets_and_inversion() {
        let c = parsed(&[("CapabilityBoundingSet", "CAP_NET_BIND_SERVICE cap_chown")]);
        assert_eq!(cap_names(c.capability_bounding_set.unwrap()), ["CAP_CHOWN", "CAP_NET_BIND_SERVICE"]);
        let c = parsed(&[("CapabilityBoundingSet", "~CAP_SYS_ADMIN")]);
        let set = c.capability_bounding_set.unwrap();
        assert_eq!(set & (1 << 21), 0);
        assert_eq!(set.count_ones() as usize, CAPABILITIES.len() - 1);
        let c = parsed(&[("AmbientCapabilities", "CAP_NET_BIND_SERVICE"), ("NoNewPrivileges", "yes")]);
        assert_eq!(c.ambient_capabilities, 1 << 10);
        assert_eq!(c.no_new_privileges, Some(true));
        assert!(ExecConfig::default().apply("CapabilityBoundingSet", "CAP_FLY").is_err());
        // Debian's redis unit: `CapabilityBoundingSet=` drops every capability.
        assert_eq!(
            parsed(&[("CapabilityBoundingSet", "CAP_CHOWN"), ("CapabilityBoundingSet", "")]).capability_bounding_set,
            Some(0)
        );
    }

    #[test]
    fn sandbox_paths_and_modes() {
        let c = parsed(&[
            ("ProtectSystem", "strict"),
            ("ProtectHome", "read-only"),
            ("PrivateTmp", "yes"),
            ("ReadWritePaths", "/var/lib/x -/srv/maybe"),
            ("InaccessiblePaths", "/etc/secret"),
        ]);
        assert_eq!(c.protect_system, ProtectSystem::Strict);
        assert_eq!(c.protect_home, ProtectHome::ReadOnly);
        assert!(c.private_tmp && c.wants_mount_namespace());
        assert_eq!(
            c.read_write_paths,
            [
                SandboxPath { path: "/var/lib/x".into(), optional: false },
                SandboxPath { path: "/srv/maybe".into(), optional: true }
            ]
        );
        assert!(!ExecConfig::default().wants_mount_namespace());
        assert!(ExecConfig::default().apply("ProtectSystem", "mostly").is_err());
        assert!(ExecConfig::default().apply("ReadOnlyPaths", "relative").is_err());
    }

    #[test]
    fn resource_keys() {
        let c = parsed(&[
            ("MemoryHigh", "512M"),
            ("MemorySwapMax", "0"),
            ("CPUWeight", "50"),
            ("CPUQuota", "150%"),
            ("AllowedCPUs", "0-1 3"),
            ("TasksMax", "32"),
            ("IOWeight", "200"),
        ]);
        let r = &c.resources;
        assert_eq!(r.memory_high, Some(Some(512 << 20)));
        assert_eq!(r.memory_swap_max, Some(Some(0)));
        assert_eq!((r.cpu_weight, r.cpu_quota_percent, r.io_weight), (Some(50), Some(150), Some(200)));
        assert_eq!(r.allowed_cpus.as_deref(), Some("0-1,3"));
        assert_eq!(r.tasks_max, Some(Some(TasksMax::Count(32))));
        assert_eq!(parsed(&[("TasksMax", "infinity")]).resources.tasks_max, Some(None));
        assert_eq!(parsed(&[("TasksMax", "15%")]).resources.tasks_max, Some(Some(TasksMax::Percent(15.0))));
        assert!(parsed(&[("CPUWeight", "idle")]).resources.cpu_idle);
        let mut c = ExecConfig::default();
        assert!(c.apply("CPUWeight", "0").is_err());
        assert!(c.apply("CPUQuota", "50").is_err());
        assert!(c.apply("AllowedCPUs", "3-1").is_err());
        assert!(c.apply("MemoryHigh", "50%").unwrap_err().contains("percentages"));
        assert!(c.apply("OOMScoreAdjust", "-1001").is_err());
        assert_eq!(parsed(&[("OOMScoreAdjust", "500")]).oom_score_adjust, Some(500));
    }

    #[test]
    fn private_network_and_ignore_sigpipe() {
        assert!(parsed(&[("PrivateNetwork", "yes")]).ns.private_network);
        assert!(!parsed(&[("PrivateNetwork", "yes"), ("PrivateNetwork", "")]).ns.private_network);
        assert!(ExecConfig::default().apply("PrivateNetwork", "maybe").is_err());
        assert!(parsed(&[("PrivateDevices", "yes")]).wants_mount_namespace());
        assert_eq!(parsed(&[("IgnoreSIGPIPE", "no")]).ignore_sigpipe, Some(false));
        assert_eq!(ExecConfig::default().ignore_sigpipe, None, "None means systemd's default, yes");
    }

    #[test]
    fn scheduling_keys() {
        let c = parsed(&[
            ("CPUSchedulingPolicy", "fifo"),
            ("CPUSchedulingPriority", "10"),
            ("IOSchedulingClass", "best-effort"),
            ("IOSchedulingPriority", "7"),
        ]);
        assert_eq!((c.cpu_sched_policy, c.cpu_sched_priority), (Some(libc::SCHED_FIFO), Some(10)));
        assert_eq!((c.io_sched_class, c.io_sched_priority), (Some(2), Some(7)));
        assert!(ExecConfig::default().apply("CPUSchedulingPriority", "100").is_err());
        assert!(ExecConfig::default().apply("CPUSchedulingPolicy", "deadline").is_err());
        assert!(ExecConfig::default().apply("IOSchedulingPriority", "8").is_err());
        assert!(ExecConfig::default().apply("IOSchedulingClass", "fast").is_err());
    }

    #[test]
    fn unset_environment_takes_names_and_assignments() {
        let c = parsed(&[("UnsetEnvironment", "LANG \"X=a b\""), ("UnsetEnvironment", "TERM")]);
        assert_eq!(c.unset_environment, vec!["LANG", "X=a b", "TERM"]);
        assert!(parsed(&[("UnsetEnvironment", "LANG"), ("UnsetEnvironment", "")]).unset_environment.is_empty());
        assert!(ExecConfig::default().apply("UnsetEnvironment", "1BAD").is_err());
        assert!(ExecConfig::default().apply("UnsetEnvironment", "=x").is_err());
    }

    #[test]
    fn keys_are_implemented_and_instances_get_only_the_restricting_ones() {
        use super::super::keys::{classify_key, instance_may_set, KeyClass, Section};
        for key in service_keys() {
            assert_eq!(classify_key(Section::Service, key), KeyClass::Implemented, "{key}");
            assert_eq!(instance_may_set(Section::Service, key).is_ok(), INSTANCE_SERVICE_KEYS.contains(&key), "{key}");
        }
        for key in super::super::checks::UNIT_KEYS {
            assert_eq!(classify_key(Section::Unit, key), KeyClass::Implemented, "{key}");
            assert!(instance_may_set(Section::Unit, key).is_err(), "{key}: a check as root reads any path");
        }
    }

    #[test]
    fn every_key_is_handled() {
        for key in service_keys() {
            let err = ExecConfig::default().apply(key, "").err();
            assert!(!err.as_deref().unwrap_or("").contains("not an execution key"), "{key}: {err:?}");
        }
    }
}
