//! Unit files: the systemd-dialect definitions of what aikore runs.
//!
//! Parsing happens in two stages (as ripgrep does with its config): `ini` reads
//! the raw `[Section]` / `Key=Value` entries with their source lines and makes no
//! system calls; `resolve` turns those entries into a typed [`Unit`], collecting
//! every diagnostic instead of stopping at the first. `load` reads unit
//! directories (a user dir overrides the stock one) and `graph` orders the
//! loaded set and finds cycles and dangling Requires=/Wants=.

use std::path::{Path, PathBuf};
use std::time::Duration;

pub mod cgroup_access;
mod checks;
mod checks_host;
pub mod corpus;
mod credentials;
mod env_name;
mod exec;
mod expand;
pub mod gpus;
mod graph;
mod ini;
pub mod install;
pub mod keys;
mod load;
pub mod name;
mod namespaces;
mod quote;
mod resolve;
pub mod seccomp;
pub mod specifier;
mod syscall_filter;
mod syscall_table;
mod timespan;

pub use checks::{unescape_octal as unescape_mount_path, Check, Checks};
pub use credentials::{Credential, Source as CredentialSource};
pub use env_name::EnvName;
pub use exec::{
    DirKind, Directories, ExecConfig, Input, Output, Preserve, ProtectHome, ProtectSystem, Resources, Rlimit,
    SandboxPath, TasksMax, ALL_CAPS, CAPABILITIES,
};
pub use expand::{expand_vars, parse_env_file};
pub use gpus::{GpuId, GpuSpec, InstanceLimits};
pub use graph::{check_graph, dependency_tree, find_cycle, start_order, DependencyNode};
pub use load::{check_paths, load_dirs, load_dirs_with, resolve_aliases, LoadedUnits};
pub use name::{is_valid_service_name, template_of};
pub use namespaces::{BindPath, NamespaceConfig, ProtectProc, TmpfsMount};
pub use quote::{is_valid_env_name, split_command_line};
pub use resolve::{is_masked, parse_signal, parse_unit_file, parse_unit_named, parse_unit_str};
pub use timespan::parse_timespan;

/// systemd's ActiveState for an aikore status (`aikore is-active`, `show`).
pub fn active_state_of(status: &str) -> &'static str {
    match status {
        "started" | "stalled" => "active",
        "starting" | "restarting" => "activating",
        "stopping" => "deactivating",
        "failed" | "error" => "failed",
        _ => "inactive",
    }
}

/// Names an instance may have: its name becomes a path, a URL segment and an
/// NGINX location, so nothing outside this alphabet is accepted. Services
/// follow systemd's wider grammar ([`is_valid_service_name`]).
pub fn is_valid_unit_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_' || *b == b'-')
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnitKind {
    Service,
    Instance,
}

impl UnitKind {
    pub fn from_path(path: &Path) -> Option<UnitKind> {
        match path.extension()?.to_str()? {
            "service" => Some(UnitKind::Service),
            "instance" => Some(UnitKind::Instance),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            UnitKind::Service => "service",
            UnitKind::Instance => "instance",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

/// One finding about a unit file, printed as `path:line: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub path: PathBuf,
    /// 1-based; 0 when the finding is about the file as a whole.
    pub line: usize,
    pub severity: Severity,
    pub message: String,
}

impl std::fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let prefix = match self.severity {
            Severity::Error => "",
            Severity::Warning => "warning: ",
        };
        write!(f, "{}:{}: {}{}", self.path.display(), self.line, prefix, self.message)
    }
}

/// NotifyAccess=: which processes may send sd_notify messages for the unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifyAccess {
    None,
    /// The main process only.
    Main,
    /// The main process and the ones the supervisor started (ExecStartPre=, ExecStop=, ...).
    Exec,
    /// Every process of the unit.
    All,
}

/// A set of exit codes and signals (SuccessExitStatus=, RestartPreventExitStatus=, RestartForceExitStatus=).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExitSet {
    pub codes: Vec<i32>,
    pub signals: Vec<i32>,
}

impl ExitSet {
    /// `code`: the exit code of a process that exited; `signal`: the signal that killed one.
    pub fn contains(&self, code: Option<i32>, signal: Option<i32>) -> bool {
        code.is_some_and(|c| self.codes.contains(&c)) || signal.is_some_and(|s| self.signals.contains(&s))
    }

    pub fn is_empty(&self) -> bool {
        self.codes.is_empty() && self.signals.is_empty()
    }
}

/// A command line from ExecStart= and friends, already split into words.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExecCommand {
    pub argv: Vec<String>,
    /// `-` prefix: a non-zero exit is not a failure.
    pub ignore_failure: bool,
    /// `@` prefix: the argv[0] the process sees (the word after the executable).
    pub argv0: Option<String>,
    /// `:` prefix: `$VAR` and `${VAR}` are left as written.
    pub no_expand: bool,
    /// `+`, `!` and `!!` prefixes.
    pub privilege: Privilege,
}

/// What an `Exec*=` prefix lifts for that one command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Privilege {
    #[default]
    Normal,
    /// `!`: run as root, without User=/Group=/SupplementaryGroups=; the sandbox still applies.
    NoUser,
    /// `+`: run as root, without the sandbox (capabilities, NoNewPrivileges=, mount namespace, seccomp filter).
    Full,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    #[default]
    No,
    OnFailure,
    OnAbnormal,
    Always,
    OnSuccess,
    OnAbort,
    OnWatchdog,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KillMode {
    /// Every process of the unit (its cgroup, or its process group plus marked descendants).
    #[default]
    ControlGroup,
    /// The main process's process group only.
    ProcessGroup,
    /// KillSignal to the main process, SIGKILL to the rest at the end.
    Mixed,
    /// systemd's `process`: only the main process is signalled and the rest
    /// may outlive the unit (`aikore check` warns about it).
    Process,
}

/// Type= as written. `simple`, `exec` and `idle` are supervised alike (the
/// spawner returns once exec succeeded, so `exec`'s rule holds for all
/// three); `oneshot` runs its ExecStart= commands in turn and is started
/// once they all succeeded; `notify` (and `notify-reload`) is started at
/// `READY=1` on its NOTIFY_SOCKET; `forking` is started once its starter
/// exited 0 and (with `PIDFile=`) the main pid was read; `dbus` is started
/// once its `BusName=` has an owner on the system bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ServiceType {
    #[default]
    Simple,
    Exec,
    Forking,
    Oneshot,
    Dbus,
    Notify,
    NotifyReload,
    Idle,
}

impl ServiceType {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::Simple => "simple",
            ServiceType::Exec => "exec",
            ServiceType::Forking => "forking",
            ServiceType::Oneshot => "oneshot",
            ServiceType::Dbus => "dbus",
            ServiceType::Notify => "notify",
            ServiceType::NotifyReload => "notify-reload",
            ServiceType::Idle => "idle",
        }
    }

    /// Ready when it says so on NOTIFY_SOCKET.
    pub fn notifies(self) -> bool {
        matches!(self, ServiceType::Notify | ServiceType::NotifyReload)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ReadyCheck {
    /// Not given: instances probe their port over HTTP, services are ready once exec'd.
    #[default]
    Default,
    None,
    Tcp(u16),
    /// `http://127.0.0.1:PORT/path`, kept as host:port plus path.
    Http {
        host: String,
        port: u16,
        path: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvironmentFile {
    pub path: PathBuf,
    /// `-` prefix: a missing file is not an error.
    pub optional: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServiceConfig {
    pub service_type: ServiceType,
    /// The first ExecStart= (the only one, except in a oneshot).
    pub exec_start: Option<ExecCommand>,
    /// A `Type=oneshot`'s further ExecStart= commands, run in order after `exec_start`.
    pub exec_start_more: Vec<ExecCommand>,
    /// RemainAfterExit=: a oneshot stays active once its commands are done.
    pub remain_after_exit: bool,
    /// WatchdogSec=: a notify service that sends no `WATCHDOG=1` for this long is killed (None: off).
    pub watchdog: Option<Duration>,
    /// NotifyAccess=: whose notifications count (None: not set, systemd's `main` for a notify service).
    pub notify_access: Option<NotifyAccess>,
    /// PermissionsStartOnly=yes: every command but ExecStart= runs as with the `+` prefix (deprecated in systemd).
    pub permissions_start_only: bool,
    /// RuntimeMaxSec=: a running service is stopped after this long, as a timeout (None: no limit).
    pub runtime_max: Option<Duration>,
    /// ReloadSignal=: what a reload of a `Type=notify-reload` service sends its main process.
    pub reload_signal: i32,
    /// PIDFile=: a `Type=forking` service's main pid is read from it once the starter exited.
    pub pid_file: Option<PathBuf>,
    /// BusName=: a `Type=dbus` service is started once this name has an owner on the system bus.
    pub bus_name: Option<String>,
    /// SuccessExitStatus=: exit codes and signals that count as a clean end besides 0 and SIGHUP/INT/TERM/PIPE.
    pub success_exit: ExitSet,
    /// RestartPreventExitStatus=: never restart after these, whatever Restart= says.
    pub restart_prevent: ExitSet,
    /// RestartForceExitStatus=: always restart after these, whatever Restart= says.
    pub restart_force: ExitSet,
    /// RestartSteps= and RestartMaxDelaySec=: the delay climbs from RestartSec to the max in this many steps.
    pub restart_steps: u32,
    pub restart_max_delay: Option<Duration>,
    pub exec_start_pre: Vec<ExecCommand>,
    /// ExecCondition=: run before ExecStartPre=; exit 1-254 skips the start (as an unmet condition).
    pub exec_condition: Vec<ExecCommand>,
    /// ExecStartPost=: run once the main process is started (ready), before the unit counts as started.
    pub exec_start_post: Vec<ExecCommand>,
    /// ExecStopPost=: run once every process of a run is gone, however it ended.
    pub exec_stop_post: Vec<ExecCommand>,
    pub exec_reload: Vec<ExecCommand>,
    pub exec_stop: Vec<ExecCommand>,
    pub restart: RestartPolicy,
    pub restart_sec: Duration,
    /// `None` = infinity (`0` or `infinity` in the file).
    pub timeout_start: Option<Duration>,
    pub timeout_stop: Option<Duration>,
    /// TimeoutAbortSec=: the stop after a watchdog timeout (None: not set, TimeoutStopSec= applies).
    pub timeout_abort: Option<Option<Duration>>,
    /// A signal number (parsed from `SIGTERM`, `TERM` or `15`).
    pub kill_signal: i32,
    /// RestartKillSignal=: the kill signal of a stop that is part of a restart (None: KillSignal=).
    pub restart_kill_signal: Option<i32>,
    /// FinalKillSignal=: what TimeoutStopSec escalates to (SIGKILL by default).
    pub final_kill_signal: i32,
    /// SendSIGKILL=no: after TimeoutStopSec, leave what is left running instead of escalating.
    pub send_sigkill: bool,
    /// SendSIGHUP=yes: SIGHUP right after the kill signal (shells and the like).
    pub send_sighup: bool,
    /// WatchdogSignal=: sent when WatchdogSec= passes without `WATCHDOG=1` (SIGABRT by default).
    pub watchdog_signal: i32,
    pub kill_mode: KillMode,
    /// Environment= entries in order; later ones win.
    pub environment: Vec<(String, String)>,
    pub environment_files: Vec<EnvironmentFile>,
    pub working_directory: Option<PathBuf>,
    pub user: Option<String>,
    pub group: Option<String>,
    pub umask: Option<u32>,
    pub nice: Option<i32>,
    /// MemoryMax=: the unit cgroup's `memory.max` (and no swap), in bytes; None: no limit.
    pub memory_max: Option<u64>,
    pub ready_check: ReadyCheck,
    /// systemd.exec(5) and resource-control keys beyond the ones above (issue 14).
    pub exec: ExecConfig,
    /// LogMaxFileSize=, LogMaxFiles=, LogCompress=: this unit's log retention
    /// (docs/operations.md); None: the global AIKORE_LOG_* setting.
    pub log_max_file_size: Option<u64>,
    pub log_max_files: Option<u32>,
    pub log_compress: Option<bool>,
    /// GuessMainPID=: a `Type=forking` service without PIDFile= takes the one
    /// process left as its main one (yes, the default); no: it has none and is
    /// active while any of its processes is left.
    pub guess_main_pid: bool,
    /// OOMPolicy=: what an OOM kill of one of its processes does to the unit.
    pub oom_policy: OomPolicy,
    /// ExitType=cgroup: the run lasts until its last process is gone, not its main one.
    pub exit_type_cgroup: bool,
    /// TimeoutStartFailureMode=, TimeoutStopFailureMode=: what a start or stop that timed out sends.
    pub timeout_start_failure_mode: TimeoutMode,
    pub timeout_stop_failure_mode: TimeoutMode,
    /// RestartMode=normal (systemd 254): an automatic restart passes through
    /// failed (or stopped), so OnFailure=/OnSuccess= and BindsTo= see it;
    /// `direct`, aikore's default as systemd 252 behaves, goes straight to restarting.
    pub restart_mode_normal: bool,
    /// RuntimeRandomizedExtraSec=: RuntimeMaxSec= is longer by a random share of this, drawn per run.
    pub runtime_randomized_extra: Duration,
}

/// TimeoutStartFailureMode=/TimeoutStopFailureMode= (systemd's default: terminate).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TimeoutMode {
    /// KillSignal= (a start), FinalKillSignal= once the kill signal was sent (a stop).
    #[default]
    Terminate,
    /// WatchdogSignal= (SIGABRT, for a core dump), bounded by TimeoutAbortSec=, then FinalKillSignal=.
    Abort,
    /// SIGKILL at once.
    Kill,
}

/// OOMPolicy=: systemd's default for services is `stop`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OomPolicy {
    /// Logged, nothing more.
    Continue,
    /// The unit is stopped, with result `oom-kill`.
    #[default]
    Stop,
    /// Every process of the unit is killed (the kernel does it with `memory.oom.group=1`).
    Kill,
}

impl OomPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            OomPolicy::Continue => "continue",
            OomPolicy::Stop => "stop",
            OomPolicy::Kill => "kill",
        }
    }
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            service_type: ServiceType::Simple,
            exec_start: None,
            exec_start_more: Vec::new(),
            remain_after_exit: false,
            watchdog: None,
            notify_access: None,
            permissions_start_only: false,
            runtime_max: None,
            reload_signal: libc::SIGHUP,
            pid_file: None,
            bus_name: None,
            success_exit: ExitSet::default(),
            restart_prevent: ExitSet::default(),
            restart_force: ExitSet::default(),
            restart_steps: 0,
            restart_max_delay: None,
            exec_start_pre: Vec::new(),
            exec_condition: Vec::new(),
            exec_start_post: Vec::new(),
            exec_stop_post: Vec::new(),
            exec_reload: Vec::new(),
            exec_stop: Vec::new(),
            restart: RestartPolicy::No,
            // systemd's defaults: RestartSec=100ms, TimeoutStartSec/TimeoutStopSec=90s.
            restart_sec: Duration::from_millis(100),
            timeout_start: Some(Duration::from_secs(90)),
            timeout_stop: Some(Duration::from_secs(90)),
            timeout_abort: None,
            kill_signal: libc::SIGTERM,
            restart_kill_signal: None,
            final_kill_signal: libc::SIGKILL,
            send_sigkill: true,
            send_sighup: false,
            watchdog_signal: libc::SIGABRT,
            kill_mode: KillMode::ControlGroup,
            environment: Vec::new(),
            environment_files: Vec::new(),
            working_directory: None,
            user: None,
            group: None,
            umask: None,
            nice: None,
            memory_max: None,
            ready_check: ReadyCheck::Default,
            exec: ExecConfig::default(),
            log_max_file_size: None,
            log_max_files: None,
            log_compress: None,
            guess_main_pid: true,
            oom_policy: OomPolicy::Stop,
            exit_type_cgroup: false,
            timeout_start_failure_mode: TimeoutMode::Terminate,
            timeout_stop_failure_mode: TimeoutMode::Terminate,
            restart_mode_normal: false,
            runtime_randomized_extra: Duration::ZERO,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PortSpec {
    #[default]
    Auto,
    Fixed(u16),
}

#[derive(Debug, Clone, PartialEq)]
pub struct InstanceConfig {
    pub blueprint: String,
    /// `GPUs=`: pinned GPUs (empty = CPU only) or `auto[:N]`.
    pub gpus: GpuSpec,
    pub port: PortSpec,
    pub autostart: bool,
    /// `comfyui` or none.
    pub active_slot: Option<String>,
    pub persistent_mode: bool,
    /// `Public=yes`: its app is served without login (shared deliberately);
    /// part of the definition, so it moves with a rename and dies with it.
    pub public: bool,
    pub stall_after: Duration,
    pub output_dir: Option<PathBuf>,
    /// `DrainCheck=`: what says the app has no work left before a stop
    /// (`comfyui`, or `<path> <json key>...`); parsed by `instances::quiesce`.
    pub drain_check: Option<String>,
    /// `DrainTimeoutSec=`: the longest a stop waits for the drain check.
    pub drain_timeout: Duration,
    /// `IdleStopSec=`: stopped after this long without a request through the proxy.
    pub idle_stop: Option<Duration>,
    /// GPUMemoryMin=, MemoryRestartAbove=, GPUMemoryRestartAbove=, RestartAboveSec=.
    pub limits: InstanceLimits,
}

impl Default for InstanceConfig {
    fn default() -> Self {
        InstanceConfig {
            blueprint: String::new(),
            gpus: GpuSpec::default(),
            port: PortSpec::Auto,
            autostart: false,
            active_slot: None,
            persistent_mode: false,
            public: false,
            // Stalled after 180 s without an answer on the port: long enough for a model load.
            stall_after: Duration::from_secs(180),
            output_dir: None,
            drain_check: None,
            // Long enough for a few image generations, short enough that a stop is not forgotten.
            drain_timeout: Duration::from_secs(600),
            idle_stop: None,
            limits: InstanceLimits::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathCondition {
    pub path: PathBuf,
    /// `!` prefix: the path must NOT exist.
    pub negate: bool,
    /// `|` prefix: a triggering condition; of those, one holding is enough.
    pub trigger: bool,
}

impl PathCondition {
    pub fn holds(&self) -> bool {
        self.path.exists() != self.negate
    }

    fn written(&self) -> String {
        let trigger = if self.trigger { "|" } else { "" };
        let negate = if self.negate { "!" } else { "" };
        format!("ConditionPathExists={trigger}{negate}{}", self.path.display())
    }
}

/// Why a start is skipped, as systemd judges conditions: every plain one
/// must hold, and of the `|` (triggering) ones at least one, if there are any.
pub fn unmet_condition(conditions: &[PathCondition]) -> Option<String> {
    if let Some(c) = conditions.iter().find(|c| !c.trigger && !c.holds()) {
        return Some(format!("{} not met", c.written()));
    }
    let triggers: Vec<&PathCondition> = conditions.iter().filter(|c| c.trigger).collect();
    if !triggers.is_empty() && !triggers.iter().any(|c| c.holds()) {
        let all: Vec<String> = triggers.iter().map(|c| c.written()).collect();
        return Some(format!("none of {} met", all.join(", ")));
    }
    None
}

/// systemd's further dependency keys, as unit names (suffixes stripped).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Relations {
    /// RefuseManualStart=/RefuseManualStop=: a client's start/stop is refused;
    /// dependencies and relations still start and stop the unit.
    pub refuse_manual_start: bool,
    pub refuse_manual_stop: bool,
    /// SuccessAction=/FailureAction= other than `none`, as written (`exit`,
    /// `poweroff`, `reboot`, ...): in a container each means aikore's ordered
    /// shutdown, so the container ends (and its runtime may restart it).
    pub success_action: Option<String>,
    pub failure_action: Option<String>,
    pub requisite: Vec<String>,
    pub binds_to: Vec<String>,
    pub part_of: Vec<String>,
    pub upholds: Vec<String>,
    pub conflicts: Vec<String>,
    pub on_failure: Vec<String>,
    pub on_success: Vec<String>,
    /// PropagatesReloadTo= (and the other side's ReloadPropagatedFrom=, folded in by `load`):
    /// a reload of this unit reloads these too.
    pub propagates_reload_to: Vec<String>,
    pub reload_propagated_from: Vec<String>,
    /// PropagatesStopTo= (and StopPropagatedFrom=): a stop or restart of this unit stops or restarts these too.
    pub propagates_stop_to: Vec<String>,
    pub stop_propagated_from: Vec<String>,
    /// StopWhenUnneeded=yes: stopped once no active unit Requires=/Requisite=/Wants=/BindsTo=/Upholds= it.
    pub stop_when_unneeded: bool,
    /// SuccessActionExitStatus=/FailureActionExitStatus=: aikore's exit status when that action is `exit`/`exit-force`.
    pub success_action_exit_status: Option<u8>,
    pub failure_action_exit_status: Option<u8>,
    /// StartLimitAction= other than `none`: hitting the start limit ends the container as SuccessAction= does.
    pub start_limit_action: Option<String>,
}

impl Relations {
    /// `(key, names)` for every relation, in systemd's order.
    pub fn all(&self) -> [(&'static str, &[String]); 11] {
        [
            ("Requisite", &self.requisite),
            ("BindsTo", &self.binds_to),
            ("PartOf", &self.part_of),
            ("Upholds", &self.upholds),
            ("Conflicts", &self.conflicts),
            ("OnFailure", &self.on_failure),
            ("OnSuccess", &self.on_success),
            ("PropagatesReloadTo", &self.propagates_reload_to),
            ("ReloadPropagatedFrom", &self.reload_propagated_from),
            ("PropagatesStopTo", &self.propagates_stop_to),
            ("StopPropagatedFrom", &self.stop_propagated_from),
        ]
    }
}

/// `[Install]`: names as written (targets keep their `.target`, services
/// lose `.service`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InstallConfig {
    pub wanted_by: Vec<String>,
    pub required_by: Vec<String>,
    /// UpheldBy=: `aikore enable` links the unit into `<unit>.upholds/`.
    pub upheld_by: Vec<String>,
    pub also: Vec<String>,
    pub default_instance: Option<String>,
    /// Alias=: further names of the unit (without `.service`), with the line each was written on.
    pub alias: Vec<(String, usize)>,
}

impl InstallConfig {
    /// Whether `aikore enable` has anything to link.
    pub fn is_installable(&self) -> bool {
        !self.wanted_by.is_empty()
            || !self.required_by.is_empty()
            || !self.upheld_by.is_empty()
            || !self.also.is_empty()
    }
}

/// A parsed, validated unit definition.
#[derive(Debug, Clone, PartialEq)]
pub struct Unit {
    /// The file stem: `nginx` for `nginx.service`.
    pub name: String,
    pub kind: UnitKind,
    pub path: PathBuf,
    pub description: String,
    pub documentation: Vec<String>,
    /// Dependency names with any `.service`/`.instance` suffix removed.
    pub after: Vec<String>,
    pub before: Vec<String>,
    pub requires: Vec<String>,
    pub wants: Vec<String>,
    /// Requisite=, BindsTo=, PartOf=, Upholds=, Conflicts=, OnFailure=, OnSuccess=.
    pub relations: Relations,
    /// [Install]: what `aikore enable` links.
    pub install: InstallConfig,
    /// Started by `StartAll` at boot: a service with no WantedBy=/RequiredBy=/UpheldBy=
    /// (aikore's rule since the start), or one enabled with `aikore enable`.
    /// Instances use `Autostart=` instead.
    pub starts_at_boot: bool,
    /// `echo@` for `echo@a`: the template this unit was instantiated from.
    pub template: Option<String>,
    /// The names the unit answers to besides its own, once loaded (`load`):
    /// its `Alias=` names and the links to its file under another name.
    pub aliases: Vec<String>,
    pub start_limit_interval: Duration,
    pub start_limit_burst: u32,
    /// ConditionPathExists=: every one must hold or the start is skipped
    /// (not failed), as in systemd. `!` prefix negates.
    pub conditions: Vec<PathCondition>,
    /// The other Condition*=/Assert*= (issue 14).
    pub checks: Checks,
    pub service: ServiceConfig,
    /// Present for `*.instance` files.
    pub instance: Option<InstanceConfig>,
}
