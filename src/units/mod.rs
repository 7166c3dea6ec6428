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

mod graph;
mod ini;
mod keys;
mod load;
mod quote;
mod resolve;
mod timespan;

pub use graph::{check_graph, find_cycle, start_order};
pub use load::{check_paths, load_dirs, LoadedUnits};
pub use quote::split_command_line;
pub use resolve::{parse_unit_file, parse_unit_str};
pub use timespan::parse_timespan;

/// Names a unit may have: a name becomes a path, a URL segment and an NGINX
/// location, so nothing outside this alphabet is accepted.
pub fn is_valid_unit_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_' || *b == b'-')
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
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

/// A command line from ExecStart= and friends, already split into words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecCommand {
    pub argv: Vec<String>,
    /// `-` prefix: a non-zero exit is not a failure.
    pub ignore_failure: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    #[default]
    No,
    OnFailure,
    OnAbnormal,
    Always,
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
    pub exec_start: Option<ExecCommand>,
    pub exec_start_pre: Vec<ExecCommand>,
    pub exec_reload: Vec<ExecCommand>,
    pub exec_stop: Vec<ExecCommand>,
    pub restart: RestartPolicy,
    pub restart_sec: Duration,
    /// `None` = infinity (`0` or `infinity` in the file).
    pub timeout_start: Option<Duration>,
    pub timeout_stop: Option<Duration>,
    /// A signal number (parsed from `SIGTERM`, `TERM` or `15`).
    pub kill_signal: i32,
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
    /// LogMaxFileSize=, LogMaxFiles=, LogCompress=: this unit's log retention
    /// (docs/operations.md); None: the global AIKORE_LOG_* setting.
    pub log_max_file_size: Option<u64>,
    pub log_max_files: Option<u32>,
    pub log_compress: Option<bool>,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            exec_start: None,
            exec_start_pre: Vec::new(),
            exec_reload: Vec::new(),
            exec_stop: Vec::new(),
            restart: RestartPolicy::No,
            // systemd's defaults: RestartSec=100ms, TimeoutStartSec/TimeoutStopSec=90s.
            restart_sec: Duration::from_millis(100),
            timeout_start: Some(Duration::from_secs(90)),
            timeout_stop: Some(Duration::from_secs(90)),
            kill_signal: libc::SIGTERM,
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
            log_max_file_size: None,
            log_max_files: None,
            log_compress: None,
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
    /// GPU indices or UUIDs, as written; empty = CPU only.
    pub gpus: Vec<String>,
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
}

impl Default for InstanceConfig {
    fn default() -> Self {
        InstanceConfig {
            blueprint: String::new(),
            gpus: Vec::new(),
            port: PortSpec::Auto,
            autostart: false,
            active_slot: None,
            persistent_mode: false,
            public: false,
            // Stalled after 180 s without an answer on the port: long enough for a model load.
            stall_after: Duration::from_secs(180),
            output_dir: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathCondition {
    pub path: PathBuf,
    /// `!` prefix: the path must NOT exist.
    pub negate: bool,
}

impl PathCondition {
    pub fn holds(&self) -> bool {
        self.path.exists() != self.negate
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
    pub start_limit_interval: Duration,
    pub start_limit_burst: u32,
    /// ConditionPathExists=: every one must hold or the start is skipped
    /// (not failed), as in systemd. `!` prefix negates.
    pub conditions: Vec<PathCondition>,
    pub service: ServiceConfig,
    /// Present for `*.instance` files.
    pub instance: Option<InstanceConfig>,
}
