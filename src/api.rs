//! The JSON API's wire model: one type per body, serialized by the axum
//! handlers (`web`) and deserialized by the CLI (`cli`), so the client is
//! checked against the server by the compiler and by a round-trip test
//! (`tests/inprocess.rs`) instead of reading fields by string key.
//!
//! Layer 3: it names the supervisor's `Status`, the unit kind, the failure
//! class and a log line as they are, so a status never gets a second spelling.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use crate::failure::Failure;
pub use crate::logs::LogLine;
pub use crate::supervisor::reload::ReloadReport;
pub use crate::supervisor::Status;
pub use crate::units::{EnvName, UnitKind};
pub use crate::urls::{ProxyMode, Slot};

use crate::supervisor::{CommandError, SupervisorHandle, UnitSnapshot};

/// Every error answer: `{"error": "..."}` with a 4xx (the client's to fix)
/// or 5xx (ours) status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// `GET /healthz`: liveness plus the init facts worth checking from outside.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// Always `ok`: the daemon answered.
    pub status: String,
    pub pid1: bool,
    /// `cgroup` or `process-group`: how unit processes are tracked here.
    pub tracking: String,
    pub children_reaped: u64,
    pub orphans_reaped: u64,
}

/// `GET /api/v1/units` (a list) and `GET /api/v1/units/{name}`: one unit's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitView {
    pub name: String,
    pub kind: UnitKind,
    pub description: String,
    pub status: Status,
    pub detail: Option<String>,
    pub pid: Option<i32>,
    pub restarts: u32,
    /// When the unit entered its current status (Unix ms).
    pub since: i64,
    pub started: Option<i64>,
    pub last_exit: Option<String>,
    /// Why the last run ended badly: `{class, line, hint}` (docs/operations.md).
    pub failure: Option<Failure>,
    pub path: String,
    /// The seq of the unit's latest event: a reader drops any state with a seq <= the one it shows.
    pub seq: u64,
    /// The port of the current (or last) run.
    pub port: Option<u16>,
}

impl From<UnitSnapshot> for UnitView {
    fn from(s: UnitSnapshot) -> UnitView {
        UnitView {
            name: s.name,
            kind: s.kind,
            description: s.description,
            status: s.status,
            detail: s.detail,
            pid: s.pid,
            restarts: s.restarts,
            since: s.since_ms,
            started: s.started_ms,
            last_exit: s.last_exit,
            failure: s.failure,
            path: s.path,
            seq: s.seq,
            port: s.port,
        }
    }
}

/// What a user can ask of any unit (or instance): the one dispatch the API,
/// the dashboard's forms and the CLI share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Start,
    Stop,
    Restart,
}

impl Action {
    pub const ALL: [Action; 3] = [Action::Start, Action::Stop, Action::Restart];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Start => "start",
            Action::Stop => "stop",
            Action::Restart => "restart",
        }
    }

    /// `start`, `stop` or `restart`; anything else is None (a route may have
    /// verbs of its own, like `reload` or `rebuild`).
    pub fn parse(text: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.as_str() == text)
    }

    /// Asks the supervisor; answers the unit's status right after.
    pub async fn apply(self, supervisor: &SupervisorHandle, unit: &str) -> Result<Status, CommandError> {
        match self {
            Action::Start => supervisor.start(unit).await,
            Action::Stop => supervisor.stop(unit).await,
            Action::Restart => supervisor.restart(unit).await,
        }
    }

    /// The status `--wait` waits for.
    pub fn goal(self) -> Status {
        match self {
            Action::Stop => Status::Stopped,
            Action::Start | Action::Restart => Status::Started,
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A verb of `POST /api/v1/units/{name}/{verb}`: an [`Action`] or `reload`
/// (re-read this unit's file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum UnitVerb {
    Action(Action),
    Reload(ReloadVerb),
}

/// The `reload` verb alone (a separate type so [`UnitVerb`] serializes as the bare word).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReloadVerb {
    Reload,
}

impl UnitVerb {
    pub fn parse(text: &str) -> Option<UnitVerb> {
        match text {
            "reload" => Some(UnitVerb::Reload(ReloadVerb::Reload)),
            other => Action::parse(other).map(UnitVerb::Action),
        }
    }
}

/// `POST /api/v1/units/{name}/{verb}`: the unit's status right after the request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitActionReply {
    pub unit: String,
    pub action: UnitVerb,
    pub status: ShownStatus,
}

/// The status an action's reply shows: the engine's, or the overlay an
/// instance's operations put over it (`draining` while a stop waits for its
/// queue, `installing` after a reinstall request: see `instances::quiesce`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ShownStatus {
    Unit(Status),
    Overlay(String),
}

impl ShownStatus {
    pub fn as_str(&self) -> &str {
        match self {
            ShownStatus::Unit(status) => status.as_str(),
            ShownStatus::Overlay(text) => text,
        }
    }

    /// An overlay that says the engine's status is not the end of the
    /// request yet: a stop or restart waits for the queue (`draining`), a
    /// start for its install phase (`installing`).
    pub fn is_in_progress(&self) -> bool {
        matches!(self, ShownStatus::Overlay(text) if text == "draining" || text == "installing")
    }
}

impl std::fmt::Display for ShownStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `GET /api/v1/units/{name}/logs?tail=N`: the last lines (the SSE stream
/// `/logs/stream` sends one [`LogLine`] per `line` event).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitLogs {
    pub unit: String,
    pub lines: Vec<LogLine>,
}

/// `POST /api/v1/instances/{name}/{verb}`: an [`Action`] or `rebuild`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceActionReply {
    pub instance: String,
    /// `start`, `stop`, `restart`, `rebuild`, `reinstall` or `update`.
    pub action: String,
    pub status: ShownStatus,
}

/// An instance's `Port=`: `"auto"` (leased from the port range) or a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PortSetting {
    Auto(AutoPort),
    Fixed(u16),
}

impl std::fmt::Display for PortSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PortSetting::Auto(_) => f.write_str("auto"),
            PortSetting::Fixed(port) => write!(f, "{port}"),
        }
    }
}

/// The word `auto` (a separate type so [`PortSetting`] serializes as the bare word).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AutoPort {
    Auto,
}

/// What aikore knows of an instance's install phase, from its current or last run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallPhase {
    /// `installing`, `done`, `skipped` (stamp unchanged), `failed` (the run
    /// ended during it) or `interrupted` (stopped during it).
    pub state: String,
    /// The step running (or last run), 1-based; 0 before the first.
    pub step: u32,
    pub steps: u32,
    /// The step's name, as the blueprint gave it.
    pub name: String,
    /// The last pip or git progress line of the step.
    pub activity: Option<String>,
    /// The app version (release tag or pinned ref) being or last installed.
    pub version: Option<String>,
}

/// `GET /api/v1/instances` (a list) and `/api/v1/instances/{name}`: an
/// instance's settings and state, its overlay included.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceView {
    pub name: String,
    pub kind: UnitKind,
    pub description: String,
    pub blueprint: String,
    pub gpus: String,
    pub port: PortSetting,
    /// The port the current or last run used (an `auto` lease once started).
    pub current_port: Option<u16>,
    pub autostart: bool,
    pub active_slot: Option<String>,
    pub persistent_mode: bool,
    /// Served without login (part of the definition: `Public=`).
    pub public: bool,
    pub stall_after_sec: u64,
    pub output_dir: Option<String>,
    pub environment: BTreeMap<String, String>,
    /// The engine's status, or `draining` / `idle-stopped` / `installing` /
    /// `failed` laid over it (docs/operations.md).
    pub status: ShownStatus,
    pub detail: Option<String>,
    /// The install phase of the current or last run (blueprints with `run_install`).
    pub install: Option<InstallPhase>,
    /// The app version installed (or being installed): a release tag or a pinned ref.
    pub app_version: Option<String>,
    /// `IdleStopSec=` in seconds (none: never stopped for being idle).
    pub idle_stop_sec: Option<u64>,
    /// `DrainCheck=` as written in the unit (none: the blueprint's `# aikore.drain`, if any).
    pub drain_check: Option<String>,
    /// Why the last run ended badly: `{class, line, hint}` (docs/operations.md).
    pub failure: Option<Failure>,
    pub pid: Option<i32>,
    pub restarts: u32,
    pub since: i64,
    /// The seq of the unit's latest event: the dashboard drops any live
    /// state with a seq <= the one it shows.
    pub seq: u64,
    /// Where a browser opens it, a full URL on the apps origin (docs/security.md):
    /// `vnc_url` for a persistent instance, else `app_url`.
    pub url: String,
    /// The app itself behind NGINX (`<apps origin>/app/<name>/` or `/comfyui/`;
    /// `http(s)://<host>:<direct_port>/` for a `port` instance).
    pub app_url: String,
    /// Persistent mode: noVNC on its display (remote resize, autoconnect).
    pub vnc_url: Option<String>,
    /// `subpath` (behind NGINX at `/app/<name>/`) or `port` (NGINX on its
    /// own port, behind the same login; `url` and `app_url` point there).
    pub proxy: ProxyMode,
    /// For `port` instances: the port to open on the same host.
    pub direct_port: Option<u16>,
    /// Things the user should know but that do not stop the instance
    /// (a GPU id NVML does not report).
    pub warnings: Vec<String>,
    /// The GPU indices the current (or last) run was given: `GPUs=auto`'s
    /// choice, or the pinned list resolved; None when none was placed.
    pub placed_gpus: Option<Vec<u32>>,
    /// VRAM its processes use, over all GPUs, as last measured (None: not measured).
    pub vram_bytes: Option<u64>,
}

/// `PATCH /api/v1/instances/{name}`: the instance after the change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceUpdateReply {
    pub instance: Option<InstanceView>,
    /// Restarted now (`?restart=true` and it ran).
    pub restarted: bool,
    /// The change takes effect at the next start (it runs; no `?restart=true`).
    pub restart_pending: bool,
}

/// `GET /api/v1/instances/{name}/script`: its launch.sh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceScript {
    pub instance: String,
    pub content: String,
}

/// `PUT /api/v1/instances/{name}/script`: saved; whether a restart is still owed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScriptSaved {
    pub instance: String,
    pub saved: bool,
    pub restart_pending: bool,
}

/// `GET /api/v1/units/{name}/file` (`aikore cat`): the file a unit was read
/// from (its template's for an instance of one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitFile {
    pub unit: String,
    pub path: String,
    pub text: String,
}

/// `GET /api/v1/units/{name}/properties` (`aikore show`): `[key, value]`
/// pairs in systemd's order and names where they exist.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitProperties {
    pub unit: String,
    pub properties: Vec<(String, String)>,
}

/// `GET /api/v1/units/{name}/dependencies` (`aikore list-dependencies`): a
/// unit and what it pulls in, recursively (`units::DependencyNode` on the wire).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DependencyTree {
    pub name: String,
    /// The key of the parent that names this unit (`Requires`, `Wants`, ...); empty at the root.
    pub via: String,
    /// False when no unit of that name is loaded.
    pub loaded: bool,
    pub children: Vec<DependencyTree>,
}

impl From<crate::units::DependencyNode> for DependencyTree {
    fn from(node: crate::units::DependencyNode) -> DependencyTree {
        DependencyTree {
            name: node.name,
            via: node.via.to_string(),
            loaded: node.loaded,
            children: node.children.into_iter().map(DependencyTree::from).collect(),
        }
    }
}

/// One process of a unit: its parent (to draw the tree) and its command line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessInfo {
    pub pid: i32,
    pub ppid: i32,
    /// The command line, or `[comm]` when it has none; control characters removed.
    pub command: String,
}

/// `GET /api/v1/units/{name}/processes` (`aikore status NAME`): the unit's
/// live processes and what they use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnitProcesses {
    pub unit: String,
    pub main_pid: Option<i32>,
    /// How many processes the unit has (0: nothing runs).
    pub tasks: usize,
    /// CPU time of all of them; None without the metrics sampler.
    pub cpu_seconds: Option<f64>,
    pub memory_bytes: Option<u64>,
    pub processes: Vec<ProcessInfo>,
    /// `IPAccounting=`: what passed the unit's IP programs in its current run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpTraffic>,
}

/// Bytes and packets in each direction (`IPAccounting=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpTraffic {
    pub ingress_bytes: u64,
    pub ingress_packets: u64,
    pub egress_bytes: u64,
    pub egress_packets: u64,
}

/// `POST /api/v1/units/{name}/kill?signal=S` (`aikore kill`): who got the signal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KillReply {
    pub unit: String,
    /// The signal's number.
    pub signal: i32,
    /// The processes it was delivered to (empty: nothing ran).
    pub pids: Vec<i32>,
}

/// `POST /api/v1/units/{name}/reset-failed`: the unit's status after.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResetFailedReply {
    pub unit: String,
    pub status: Status,
}

/// `POST /api/v1/units/{name}/enable` and `/disable`: the links made or
/// removed, as systemctl prints them (`Created symlink ...`, `Removed ...`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallChanges {
    pub unit: String,
    pub enabled: bool,
    pub changes: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_parse_from_their_names_and_serialize_back() {
        for a in Action::ALL {
            assert_eq!(Action::parse(a.as_str()), Some(a));
            assert_eq!(serde_json::to_value(a).unwrap(), serde_json::json!(a.as_str()));
        }
        assert_eq!(Action::parse("Start"), None);
        assert_eq!(UnitVerb::parse("reload"), Some(UnitVerb::Reload(ReloadVerb::Reload)));
        assert_eq!(UnitVerb::parse("rebuild"), None);
        let verb: UnitVerb = serde_json::from_str("\"reload\"").unwrap();
        assert_eq!(verb, UnitVerb::Reload(ReloadVerb::Reload));
        let verb: UnitVerb = serde_json::from_str("\"stop\"").unwrap();
        assert_eq!(verb, UnitVerb::Action(Action::Stop));
    }

    /// The dashboard's script keeps its own list of the statuses in which a
    /// unit's process runs (or is about to): it must be exactly the active
    /// ones of `Status::ALL`, so a new status cannot be forgotten there.
    #[test]
    fn the_dashboards_running_statuses_are_the_active_ones_of_status_all() {
        let script = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/web/static/app.js")).unwrap();
        let line = script.lines().find(|l| l.contains("const RUNNING = new Set([")).expect("app.js defines RUNNING");
        let inside = line.split('[').nth(1).and_then(|s| s.split(']').next()).unwrap();
        let mut in_js: Vec<&str> = inside.split(',').map(|s| s.trim().trim_matches('"')).collect();
        let mut active: Vec<&str> = Status::ALL.iter().filter(|s| !s.is_inactive()).map(|s| s.as_str()).collect();
        // The instance overlays in which the app still runs (instances::quiesce): a drain, an install.
        let quiesce =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/instances/quiesce.rs")).unwrap();
        for overlay in ["draining", "installing"] {
            assert!(quiesce.contains(&format!("\"{overlay}\"")), "instances::quiesce no longer shows {overlay}");
            active.push(overlay);
        }
        in_js.sort_unstable();
        active.sort_unstable();
        assert_eq!(in_js, active);
        for s in Status::ALL {
            let parsed: Status = serde_json::from_value(serde_json::json!(s.as_str())).unwrap();
            assert_eq!(parsed, s);
        }
    }
}
