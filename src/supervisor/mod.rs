//! The supervisor: one task owns every unit's runtime state. Commands come in
//! over an mpsc channel, exits come from the reaper, and every state change
//! goes out on a broadcast channel to the store, logs and web.

pub mod cgroup;
pub mod cgroup_bpf;
pub mod credentials;
pub mod dbus;
pub mod drain;
pub mod dynamic_user;
mod engine;
pub mod exec;
pub mod forking;
pub mod host;
pub mod machine;
pub mod members;
pub mod namespaces;
pub mod notify;
pub mod ready;
pub mod relations;
pub mod reload;
pub mod seccomp;
pub mod sockets;
pub mod spawn;
pub mod spawner;
pub mod state;

use std::sync::Arc;

use nix::sys::signal::Signal;
use tokio::sync::{broadcast, mpsc, oneshot};

pub use engine::Engine;
pub use host::{HostConfig, HostProcesses};
pub use state::Status;

use crate::init::ExitStatus;
use crate::units::{ExecCommand, Unit, UnitKind};

/// Which of a unit's commands a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Main,
    Pre,
    Stop,
    Reload,
    /// ExecStartPost=.
    Post,
    /// ExecStopPost=.
    StopPost,
}

/// Where readiness is probed, resolved at start (an instance's port may be leased then).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadyTarget {
    Tcp { host: String, port: u16 },
    Http { host: String, port: u16, path: String },
}

/// What the OS side decided when a run begins.
#[derive(Debug, Clone, Default)]
pub struct Prepared {
    /// None: ready as soon as the main process runs.
    pub ready: Option<ReadyTarget>,
    /// Extra environment for every process of this run (WEBUI_PORT, CUDA_VISIBLE_DEVICES, ...).
    pub env: Vec<(String, String)>,
    /// The main command when the unit gives none (an instance's launch.sh).
    pub default_exec_start: Option<ExecCommand>,
    /// The port this run serves on (an instance's leased or fixed port).
    pub port: Option<u16>,
    /// The port the app itself listens on: `port`, or for an instance NGINX
    /// fronts on `port` (`# aikore.proxy = port`), a loopback port behind it.
    pub app_port: Option<u16>,
    /// Put before the main command's argv (persistent mode's wrapper script,
    /// which runs the display and browser around the app).
    pub main_wrapper: Vec<String>,
    /// A persistent instance's websockify port (noVNC behind `/vnc/<name>/`).
    pub vnc_port: Option<u16>,
    /// Extra tells for the failure classifier (a blueprint's `# aikore.failure = class: regex`).
    pub failure_patterns: Vec<crate::failure::Pattern>,
    /// RuntimeRandomizedExtraSec=: this run's random share of it, added to
    /// RuntimeMaxSec= (drawn here: the machine has no randomness of its own).
    pub runtime_extra: std::time::Duration,
}

/// What a higher layer adds to the runs of its units (today `instances`:
/// port lease, GPU env, launch.sh, persistent display). The daemon hands an
/// implementation to [`HostConfig`] at boot; the supervisor calls it and
/// never imports the layer that implements it.
pub trait RunHooks: Send + Sync {
    /// Before the fork of a run of a unit with an `[Instance]` section.
    fn prepare(&self, unit: &Unit) -> Result<Prepared, String>;
    /// The dir such a unit's processes work in (and the instance user's HOME).
    fn work_dir(&self, unit: &str) -> std::path::PathBuf;
    /// Every process of a run that held a display (`Prepared::vnc_port`) is
    /// gone: release what `prepare` leased for it.
    fn end(&self, unit: &str);
}

/// The OS boundary, so restart, backoff, escalation and ordering are tested
/// with a recording fake instead of processes.
pub trait ProcessControl: Send + 'static {
    /// A run of `unit` begins: rotate logs when `fresh`, lease what it needs.
    fn begin_run(&mut self, unit: &Unit, fresh: bool) -> Result<Prepared, OsError>;
    /// Starts one process; its exit is delivered later as (pid, status) on the exits channel.
    fn spawn(
        &mut self,
        unit: &Unit,
        role: Role,
        command: &ExecCommand,
        env: &[(String, String)],
    ) -> Result<i32, OsError>;
    /// [`ProcessControl::spawn`], or its start on another thread (issue 15:
    /// parallel starts): `Later` means a [`spawner::SpawnReport`] with this
    /// `ticket` comes on the channel [`ProcessControl::spawn_reports`] gave.
    fn start_spawn(
        &mut self,
        unit: &Unit,
        role: Role,
        command: &ExecCommand,
        env: &[(String, String)],
        _ticket: u64,
    ) -> spawner::Spawning {
        spawner::Spawning::Now(self.spawn(unit, role, command, env))
    }
    /// The channel of spawns finished off the engine's thread; taken once.
    fn spawn_reports(&mut self) -> Option<mpsc::UnboundedReceiver<spawner::SpawnReport>> {
        None
    }
    /// A spawn finished off the thread, made the answer `spawn` would have
    /// given (its output captured, its pid recorded).
    fn finish_spawn(&mut self, _done: spawner::SpawnDone) -> Result<i32, OsError> {
        Err(OsError::Spawn("no spawner".into()))
    }
    /// A process that is gone already is not an error (it may have ended since).
    fn signal_process(&mut self, pid: i32, signal: Signal);
    fn signal_group(&mut self, pgid: i32, signal: Signal);
    /// Every process of the unit.
    fn signal_unit(&mut self, unit: &str, signal: Signal);
    /// Nonzero while any process of the unit is left. Called on every exit
    /// and [`DrainHint`] of a draining unit, never on a timer, so it must be
    /// cheap in the common case.
    fn live_processes(&mut self, unit: &str) -> usize;
    /// The engine now waits for every process of `unit` to end. From before
    /// this returns until `end_run`, whenever that may have become true
    /// without an exit the engine sees (a descendant it did not spawn ended),
    /// a [`DrainHint`] must follow. Called again on every check; must be idempotent.
    fn watch_drain(&mut self, _unit: &str) {}
    /// OOM kills in the unit's cgroup since its run began (`memory.events`
    /// `oom_kill`); 0 without a cgroup (OOMPolicy= then sees none).
    fn oom_kills(&mut self, _unit: &str) -> u64 {
        0
    }
    /// The engine handled one batch of inputs: facts gathered for it (a /proc
    /// sweep shared by the units it signalled) are stale from here on.
    fn batch_done(&mut self) {}
    /// The unit has no process left: release its cgroup and leases.
    fn end_run(&mut self, unit: &str);
    /// A line from aikore itself into the unit's log.
    fn note(&mut self, unit: &str, text: &str);
    /// What the OS knows of how the current run went, for the failure
    /// classifier: its log's last lines and the OOM kills during it (the
    /// engine fills in the exit status). Called once its processes are gone,
    /// before `end_run`, and only for runs that ended badly.
    fn failure_evidence(&mut self, _unit: &str) -> crate::failure::Evidence {
        crate::failure::Evidence::default()
    }
    /// A `Type=forking` service's starter exited 0: its main pid, from
    /// PIDFile= (checked as trusted) or the one process left without one;
    /// on success its exit is reported like a spawned process's.
    fn forked_main_pid(&mut self, _unit: &Unit) -> Result<i32, machine::PidFileError> {
        Err(machine::PidFileError::Refused("Type=forking is not supported here".into()))
    }
    /// Whether `pid` is one of the unit's processes (its cgroup, or its group and markers).
    fn is_member(&mut self, _unit: &str, _pid: i32) -> bool {
        false
    }
    /// Who listens on `port` (`comm (pid N)`), for the `port-in-use` hint.
    fn port_holder(&mut self, _port: u16) -> Option<String> {
        None
    }
    /// The first ConditionPathExists= that does not hold, if any: the start is
    /// then skipped, not failed (systemd's semantics).
    fn unmet_condition(&mut self, unit: &Unit) -> Option<String> {
        crate::units::unmet_condition(&unit.conditions).or_else(|| unit.checks.unmet_condition())
        // the other Condition*= kinds: units::checks
    }
}

/// Why a run could not begin or a process could not start, as the OS side tells it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OsError {
    /// What aikore checked before asking the OS: an unknown `User=`, an
    /// unreadable `EnvironmentFile=`, instances not configured, a hook's refusal.
    #[error("{0}")]
    Refused(String),
    /// A file or system call on the way failed (`what`: which one).
    #[error("{what}: {message}")]
    Io { what: &'static str, message: String },
    /// fork/exec of the command failed.
    #[error("{0}")]
    Spawn(String),
}

impl OsError {
    pub fn io(what: &'static str, error: std::io::Error) -> OsError {
        OsError::Io { what, message: error.to_string() }
    }
}

/// What an event says, for the journal, the events stream and followers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// A status transition (or a new detail for the same status).
    State,
    /// A run ended (exit status or why it could not start).
    Exit,
    /// The unit's definition was added, changed or removed.
    Config,
    Info,
    Error,
    /// A run that ended badly was classified.
    Failure,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::State => "state",
            EventKind::Exit => "exit",
            EventKind::Config => "config",
            EventKind::Info => "info",
            EventKind::Error => "error",
            EventKind::Failure => "failure",
        }
    }
}

impl AsRef<str> for EventKind {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A state change or notable fact, for the journal, the events stream and followers.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct UnitEvent {
    pub ts_ms: i64,
    pub unit: String,
    pub kind: UnitKind,
    pub event: EventKind,
    pub status: Status,
    pub detail: Option<String>,
    pub pid: Option<i32>,
    pub restarts: u32,
    pub since_ms: i64,
    pub started_ms: Option<i64>,
    pub last_exit: Option<String>,
    /// Why the last run ended badly (class, log line, hint); None after a clean run or a user's start.
    pub failure: Option<crate::failure::Failure>,
    /// Orders the unit's states: higher is newer. Increases with every event
    /// of the unit (the counter is shared by all units), so a reader holding
    /// a newer state can drop an older one that arrives late.
    pub seq: u64,
    /// The port of the current (or last) run, so live updates refresh it.
    pub port: Option<u16>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct UnitSnapshot {
    pub name: String,
    pub kind: UnitKind,
    pub description: String,
    pub status: Status,
    pub detail: Option<String>,
    pub pid: Option<i32>,
    pub restarts: u32,
    pub since_ms: i64,
    pub started_ms: Option<i64>,
    pub last_exit: Option<String>,
    /// Why the last run ended badly (class, log line, hint).
    pub failure: Option<crate::failure::Failure>,
    pub path: String,
    /// The port of the current (or last) run, for URLs.
    pub port: Option<u16>,
    /// Where the app of the current (or last) run listens (`Prepared::app_port`).
    #[serde(skip)]
    pub app_port: Option<u16>,
    /// A persistent instance's websockify port, current (or last) run.
    pub vnc_port: Option<u16>,
    /// The `seq` of the unit's latest event (0: none yet).
    pub seq: u64,
    #[serde(skip)]
    pub unit: Arc<Unit>,
}

/// The exit status a unit's `SuccessActionExitStatus=`/`FailureActionExitStatus=`
/// asked aikore to end with (-1: none). One daemon per process, as PID 1.
static REQUESTED_EXIT: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

/// What a unit's action asked the daemon's exit status to be, if anything.
pub fn requested_exit_status() -> Option<i32> {
    let code = REQUESTED_EXIT.load(std::sync::atomic::Ordering::SeqCst);
    (code >= 0).then_some(code)
}

/// A unit's SuccessAction=/FailureAction=/StartLimitAction= ends the container:
/// aikore's own SIGTERM path (every unit stopped in order), ending with
/// `exit_status` when the unit gave one (`*ActionExitStatus=`).
pub fn end_container(why: &str, exit_status: Option<u8>) {
    if let Some(code) = exit_status {
        // The first action's status wins, as systemd keeps the first exit request.
        let _ = REQUESTED_EXIT.compare_exchange(
            -1,
            i32::from(code),
            std::sync::atomic::Ordering::SeqCst,
            std::sync::atomic::Ordering::SeqCst,
        );
    }
    tracing::warn!(reason = %why, "a unit's action ends the container: ordered shutdown");
    let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGTERM);
}

impl UnitSnapshot {
    /// Whether `name` addresses this unit: its own name or one of its aliases (Alias=).
    pub fn answers_to(&self, name: &str) -> bool {
        self.name == name || self.unit.aliases.iter().any(|a| a == name)
    }
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CommandError {
    #[error("no unit named {0:?}")]
    NoSuchUnit(String),
    #[error("unit {unit} cannot {action}: {why}")]
    Refused { unit: String, action: &'static str, why: String },
    #[error("aikore is shutting down")]
    ShuttingDown,
    #[error("the supervisor is not running")]
    Gone,
}

pub type Reply<T> = oneshot::Sender<Result<T, CommandError>>;

/// Result of a full shutdown: every unit down; `clean` when none needed SIGKILL.
#[derive(Debug, Clone, Copy)]
pub struct ShutdownReport {
    pub clean: bool,
}

pub enum Command {
    Start {
        unit: String,
        reply: Reply<Status>,
    },
    Stop {
        unit: String,
        reply: Reply<Status>,
    },
    Restart {
        unit: String,
        reply: Reply<Status>,
    },
    /// Runs the unit's ExecReload= commands; replies when they finish.
    Reload {
        unit: String,
        reply: Reply<()>,
    },
    /// New definitions (from `aikore reload` / SIGHUP): takes effect at each unit's next start.
    SetUnits {
        units: Vec<Unit>,
        reply: Reply<()>,
    },
    /// Boot: services in dependency order, then Autostart instances.
    StartAll {
        reply: Reply<()>,
    },
    Snapshot {
        reply: oneshot::Sender<Vec<UnitSnapshot>>,
    },
    Shutdown {
        reply: oneshot::Sender<ShutdownReport>,
    },
    /// The global deadline passed: SIGKILL whatever is left.
    KillAll,
    /// `aikore reset-failed`: a `failed` or `error` unit that is not running
    /// becomes `stopped`, its start limit and failure forgotten.
    ResetFailed {
        unit: String,
        reply: Reply<Status>,
    },
}

/// The cheap, cloneable way everything else talks to the supervisor.
#[derive(Clone)]
pub struct SupervisorHandle {
    commands: mpsc::Sender<Command>,
    events: broadcast::Sender<UnitEvent>,
}

/// Events are small; 4096 lets a burst (shutdown of 100 units) reach a
/// momentarily slow subscriber without a Lagged.
pub const EVENT_CAPACITY: usize = 4096;

impl SupervisorHandle {
    pub fn new(commands: mpsc::Sender<Command>, events: broadcast::Sender<UnitEvent>) -> Self {
        SupervisorHandle { commands, events }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<UnitEvent> {
        self.events.subscribe()
    }

    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, CommandError> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(make(tx)).await.map_err(|_| CommandError::Gone)?;
        rx.await.map_err(|_| CommandError::Gone)?
    }

    pub async fn start(&self, unit: &str) -> Result<Status, CommandError> {
        self.ask(|reply| Command::Start { unit: unit.into(), reply }).await
    }
    pub async fn stop(&self, unit: &str) -> Result<Status, CommandError> {
        self.ask(|reply| Command::Stop { unit: unit.into(), reply }).await
    }
    pub async fn restart(&self, unit: &str) -> Result<Status, CommandError> {
        self.ask(|reply| Command::Restart { unit: unit.into(), reply }).await
    }
    pub async fn reload(&self, unit: &str) -> Result<(), CommandError> {
        self.ask(|reply| Command::Reload { unit: unit.into(), reply }).await
    }
    pub async fn set_units(&self, units: Vec<Unit>) -> Result<(), CommandError> {
        self.ask(|reply| Command::SetUnits { units, reply }).await
    }
    pub async fn start_all(&self) -> Result<(), CommandError> {
        self.ask(|reply| Command::StartAll { reply }).await
    }
    pub async fn snapshot(&self) -> Result<Vec<UnitSnapshot>, CommandError> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::Snapshot { reply: tx }).await.map_err(|_| CommandError::Gone)?;
        rx.await.map_err(|_| CommandError::Gone)
    }
    pub async fn shutdown(&self) -> Result<ShutdownReport, CommandError> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::Shutdown { reply: tx }).await.map_err(|_| CommandError::Gone)?;
        rx.await.map_err(|_| CommandError::Gone)
    }
    pub async fn reset_failed(&self, unit: &str) -> Result<Status, CommandError> {
        self.ask(|reply| Command::ResetFailed { unit: unit.into(), reply }).await
    }
    pub async fn kill_all(&self) {
        let _ = self.commands.send(Command::KillAll).await;
    }
}

/// A unit's exit as the reaper saw it.
pub type ExitReport = (i32, ExitStatus);

/// The OS side's word that a draining unit may have no process left. The
/// engine answers with one `live_processes` check, so a spurious hint costs
/// little, and a missing one stalls the drain until TimeoutStopSec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DrainHint {
    /// This unit's processes are all gone (its cgroup's `cgroup.events` says `populated 0`).
    Unit(String),
    /// The reaper reaped a process nobody spawned (an orphan of some unit):
    /// any unit without a cgroup may be done.
    Any,
    /// Not about draining: a datagram on the unit's `NOTIFY_SOCKET`
    /// (sd_notify's `KEY=VALUE` lines), which reaches the engine on the same
    /// channel from the OS side ([`notify`]).
    /// `pid`: the sender, as the kernel tells it (SCM_CREDENTIALS).
    Notify { unit: String, message: String, pid: Option<i32> },
    /// Not about draining either: the unit cgroup's `memory.events` changed
    /// (an OOM kill moves its `oom_kill`); the driver asks for the count.
    Oom(String),
}
