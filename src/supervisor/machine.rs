//! The supervisor's decisions as a pure state machine: [`Units::step`] takes
//! one [`Input`] (a command, an exit, a timer, a readiness or membership
//! answer) and the time, changes the units' states and returns what must be
//! done as [`Effect`]s. It does no I/O, reads no clock and spawns no task; the
//! driver (`engine.rs`) applies the effects through `ProcessControl` and feeds
//! the answers of the ones that ask the OS something (conditions, begin-run,
//! spawn, membership, failure evidence, a port's holder) straight back as
//! inputs, before anything else happens.
//!
//! Each unit's [`UnitState`] carries its data (the main pid while there is
//! one, why a run is ending, what comes after a stop); the public [`Status`]
//! is derived from it. Timers and probes carry the `epoch` of the state they
//! were armed in, so one that fires after the state moved on is ignored.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::time::Instant;

use super::dbus::BusEvent;
use super::state::{
    describe_stop_exit, restart_delay, should_restart, RunEnd, StartLimit, Status, BACKOFF_RESET_AFTER,
};
use super::{CommandError, DrainHint, EventKind, OsError, Prepared, ReadyTarget, Role, UnitEvent, UnitSnapshot};
use crate::failure::{classify, Evidence, Failure, FailureClass};
use crate::init::ExitStatus;
use crate::units::{ExecCommand, KillMode, NotifyAccess, OomPolicy, ServiceType, TimeoutMode, Unit, UnitKind};

fn access_name(access: NotifyAccess) -> &'static str {
    match access {
        NotifyAccess::None => "none",
        NotifyAccess::Main => "main",
        NotifyAccess::Exec => "exec",
        NotifyAccess::All => "all",
    }
}

/// After SIGKILL, how long to wait for processes to vanish before giving up on
/// them (a process in uninterruptible sleep cannot die until its I/O returns).
pub const KILL_GRACE: Duration = Duration::from_secs(5);

/// How often a PIDFile= not written yet is read again.
pub const PID_FILE_RETRY: Duration = Duration::from_millis(50);

/// A unit's slot. Slots are never reused, so an id in a late timer or probe
/// answer can never name another unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UnitId(usize);

/// The time of an input: monotonic for timers and rates, wall-clock ms for what is shown.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub at: Instant,
    pub wall_ms: i64,
}

/// Which state a timer or probe belongs to; unique over all units.
pub type Epoch = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerKind {
    RestartDue,
    StartTimeout,
    Stall,
    StopTimeout,
    /// WatchdogSec= of a notify service, re-armed by each `WATCHDOG=1`.
    Watchdog,
    /// RuntimeMaxSec= of a running service.
    RuntimeMax,
    /// Read a forking service's PIDFile= again (the daemon writes it after its parent exited).
    PidFileRetry,
}

/// Names a pending reply the driver holds (a oneshot sender is not data).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReplyTo(pub u64);

#[derive(Debug, Clone, PartialEq)]
pub enum Cmd {
    Start(String),
    Stop(String),
    Restart(String),
    Reload(String),
    /// `aikore reset-failed`: a `failed` or `error` unit that is not running
    /// becomes `stopped`, its start limit and failure forgotten.
    ResetFailed(String),
    SetUnits(Vec<Unit>),
    StartAll,
    Shutdown,
    KillAll,
}

#[derive(Debug, Clone)]
pub enum Input {
    Command {
        cmd: Cmd,
        reply: Option<ReplyTo>,
    },
    /// The reaper saw one of our pids end.
    Exit {
        pid: i32,
        status: ExitStatus,
    },
    Hint(DrainHint),
    Timer {
        unit: UnitId,
        epoch: Epoch,
        kind: TimerKind,
    },
    /// A readiness probe succeeded.
    Ready {
        unit: UnitId,
        epoch: Epoch,
    },
    // Answers to effects, fed back at once by the driver.
    Conditions {
        unit: UnitId,
        unmet: Option<String>,
    },
    RunBegun {
        unit: UnitId,
        result: Result<Prepared, OsError>,
    },
    Spawned {
        unit: UnitId,
        role: Role,
        result: Result<i32, OsError>,
    },
    /// How many processes of the unit are left.
    Members {
        unit: UnitId,
        live: usize,
    },
    Evidence {
        unit: UnitId,
        evidence: Evidence,
    },
    PortHolder {
        unit: UnitId,
        holder: Option<String>,
    },
    /// A datagram on the unit's NOTIFY_SOCKET.
    Notify {
        unit: UnitId,
        message: String,
        sender: Sender,
    },
    /// A `Type=forking` service's main pid, read from its PIDFile= (or the
    /// one process left when it has none); Err says why it cannot be trusted.
    PidFile {
        unit: UnitId,
        result: Result<i32, PidFileError>,
    },
    /// OOM kills in the unit's cgroup since its run began (answering [`DrainHint::Oom`]).
    OomKills {
        unit: UnitId,
        kills: u64,
    },
    /// What the system bus says of a `Type=dbus` service's BusName= (from [`Effect::WatchBus`]).
    Bus {
        unit: UnitId,
        epoch: Epoch,
        event: BusEvent,
    },
}

/// Who sent an sd_notify datagram, as the kernel and the OS side tell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sender {
    /// From SCM_CREDENTIALS (None: the kernel did not say).
    pub pid: Option<i32>,
    /// The pid is one of the unit's processes (what NotifyAccess=all asks).
    pub member: bool,
}

/// Why a forking service's main pid is not known yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PidFileError {
    /// Not written yet (or naming a pid that is gone): asked again until TimeoutStartSec.
    NotYet,
    /// It cannot be trusted: the start fails.
    Refused(String),
    /// Without PIDFile=, no one process can be told the main one (none or
    /// several left, or GuessMainPID=no): systemd runs the unit without a
    /// main pid, active while any of its processes is left.
    NoMain(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Status(Status),
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Process(i32),
    Group(i32),
    Unit(UnitId),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Answer: [`Input::Conditions`].
    CheckConditions {
        unit: UnitId,
    },
    /// Rotate the log when `fresh`, lease what the run needs. Answer: [`Input::RunBegun`].
    BeginRun {
        unit: UnitId,
        fresh: bool,
    },
    /// Answer: [`Input::Spawned`]; the exit comes later as [`Input::Exit`].
    Spawn {
        unit: UnitId,
        role: Role,
        command: ExecCommand,
        env: Vec<(String, String)>,
    },
    Signal {
        target: Target,
        signal: Signal,
    },
    /// Replaces the unit's timers of other epochs.
    ArmTimer {
        unit: UnitId,
        kind: TimerKind,
        at: Instant,
        epoch: Epoch,
    },
    /// Probe until ready; answer: [`Input::Ready`]. Ends with the run.
    Probe {
        unit: UnitId,
        target: ReadyTarget,
        epoch: Epoch,
    },
    /// Follow who owns `name` on the system bus; each change comes back as
    /// [`Input::Bus`]. Ends with the run.
    WatchBus {
        unit: UnitId,
        name: String,
        epoch: Epoch,
    },
    /// Watch for the unit's processes to end, and count them now. Answer: [`Input::Members`].
    CheckDrained {
        unit: UnitId,
    },
    /// A forking service's starter exited 0: find its main pid. Answer: [`Input::PidFile`].
    ReadPidFile {
        unit: UnitId,
    },
    /// Answer: [`Input::Evidence`].
    GatherEvidence {
        unit: UnitId,
    },
    /// Answer: [`Input::PortHolder`].
    FindPortHolder {
        unit: UnitId,
        port: u16,
    },
    /// No process of the run is left: release its cgroup, leases and probe.
    EndRun {
        unit: UnitId,
    },
    /// A line from aikore into the unit's log.
    Note {
        unit: UnitId,
        text: String,
    },
    Emit(UnitEvent),
    /// For the daemon's own log only.
    Warn {
        unit: UnitId,
        text: String,
    },
    Reply {
        to: ReplyTo,
        result: Result<Answer, CommandError>,
    },
    /// Every unit is down after a shutdown; `clean` when none needed SIGKILL.
    ShutdownDone {
        clean: bool,
    },
    /// StartLimitAction=: end the container (aikore's ordered shutdown).
    EndContainer {
        why: String,
    },
}

/// How an inactive unit ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Stopped,
    /// A `Type=oneshot` whose commands all succeeded: what requires it may start.
    Finished,
    Error,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartStep {
    Conditions {
        fresh: bool,
    },
    Begin,
    SpawnPre {
        index: usize,
    },
    Pre {
        index: usize,
        pid: i32,
    },
    SpawnMain {
        argv: String,
    },
    /// A `Type=oneshot`'s ExecStart= commands, one after the other.
    SpawnOneshot {
        index: usize,
    },
    Oneshot {
        index: usize,
        pid: i32,
    },
    /// A `Type=forking` service's starter, which forks the daemon and exits.
    Forking {
        pid: i32,
    },
    /// The starter exited 0; the main pid is being read (answer: [`Input::PidFile`]).
    PidFile,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    Waiting,
    /// An instance that has not answered within StallAfterSec.
    Stalled,
    Ready,
}

/// What a stop leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Then {
    /// Stay down (a stop request).
    Down,
    /// Start again once down (a restart, or a start while stopping).
    Up,
    /// The run ended by itself: `Restart=` decides.
    Policy,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopStage {
    /// Queued until the units ordered after this one are down.
    WaitOrder,
    SpawnCmd {
        index: usize,
    },
    Command {
        index: usize,
        pid: i32,
    },
    /// The main process ended by itself; whether it left processes is being asked.
    Exited,
    /// Signals sent; waiting for every process to be gone.
    Draining {
        sigkill_sent: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stop {
    pub stage: StopStage,
    /// The main process, until it is reaped.
    pub main: Option<i32>,
    /// Why the run is ending, decided at the first cause and kept through the drain.
    pub ending: RunEnd,
    pub then: Then,
    /// TimeoutStopSec ran out and SIGKILL was needed (a shutdown is then not clean).
    pub escalated: bool,
    /// Stopping a oneshot that remained active: its ExecStop= runs though no main process is left.
    pub remained: bool,
    /// ExecStopPost=: the index of the next command, once they began (None: not yet).
    pub post: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinishEnd {
    Run {
        ending: RunEnd,
        then: Then,
    },
    /// begin-run refused (`why`), classified.
    BeginFailed {
        why: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Awaiting {
    Evidence,
    PortHolder(Failure),
}

/// Every process is gone; the failure classification waits for the OS's answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finish {
    pub end: FinishEnd,
    pub awaiting: Awaiting,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnitState {
    Inactive(Outcome),
    /// A start job queued behind ordering; `fresh`: its log starts afresh (a user's or boot start).
    WaitDeps {
        fresh: bool,
    },
    Starting(StartStep),
    Running {
        pid: i32,
        ready: Readiness,
    },
    /// A `Type=oneshot` with `RemainAfterExit=yes` whose commands succeeded: active, no process.
    Remaining,
    /// Active without a main process, until every process of the unit is
    /// gone: a `Type=forking` service whose main pid cannot be told
    /// (GuessMainPID=), or one with `ExitType=cgroup` whose main process
    /// exited cleanly (`exited`: how, for the run's end). `ready` once its
    /// ExecStartPost= commands are done (a forking service's).
    Cgroup {
        exited: Option<ExitStatus>,
        ready: bool,
    },
    /// Waiting out the restart delay.
    Backoff,
    Stopping(Stop),
    Finishing(Finish),
}

/// A command that does not fit the unit's state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("it is {status}")]
pub struct WrongState {
    pub status: Status,
}

/// What a start means in the current state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartMove {
    Begin,
    /// Already starting or running.
    Nothing,
    /// Come back up once stopped.
    AfterStop,
}

impl UnitState {
    pub fn status(&self) -> Status {
        match self {
            UnitState::Inactive(Outcome::Stopped | Outcome::Finished) => Status::Stopped,
            UnitState::Inactive(Outcome::Error) => Status::Error,
            UnitState::Inactive(Outcome::Failed) => Status::Failed,
            UnitState::WaitDeps { .. } | UnitState::Starting(_) => Status::Starting,
            UnitState::Running { ready: Readiness::Waiting, .. } => Status::Starting,
            UnitState::Running { ready: Readiness::Stalled, .. } => Status::Stalled,
            UnitState::Running { ready: Readiness::Ready, .. }
            | UnitState::Remaining
            | UnitState::Cgroup { ready: true, .. } => Status::Started,
            UnitState::Cgroup { ready: false, .. } => Status::Starting,
            UnitState::Backoff => Status::Restarting,
            UnitState::Stopping(_) | UnitState::Finishing(_) => Status::Stopping,
        }
    }

    pub fn can_start(&self) -> StartMove {
        match self {
            UnitState::Inactive(_) | UnitState::Backoff => StartMove::Begin,
            UnitState::Stopping(_) | UnitState::Finishing(_) => StartMove::AfterStop,
            _ => StartMove::Nothing,
        }
    }

    /// Ok when a stop has anything to do.
    pub fn can_stop(&self) -> Result<(), WrongState> {
        match self {
            UnitState::Inactive(_) => Err(WrongState { status: self.status() }),
            _ => Ok(()),
        }
    }

    /// The main pid, when a reload can run.
    pub fn can_reload(&self) -> Result<i32, WrongState> {
        match self {
            UnitState::Running { pid, .. } => Ok(*pid),
            _ => Err(WrongState { status: self.status() }),
        }
    }

    pub fn main_pid(&self) -> Option<i32> {
        match self {
            UnitState::Running { pid, .. } | UnitState::Starting(StartStep::Oneshot { pid, .. }) => Some(*pid),
            UnitState::Stopping(stop) => stop.main,
            _ => None,
        }
    }

    /// Part of a start job that dependents must wait for. A run that ended
    /// by itself counts until `Restart=` has decided what comes next.
    fn is_starting_job(&self) -> bool {
        match self {
            UnitState::WaitDeps { .. } | UnitState::Starting(_) | UnitState::Backoff => true,
            UnitState::Running { ready, .. } => *ready == Readiness::Waiting,
            UnitState::Cgroup { ready, .. } => !*ready,
            UnitState::Stopping(stop) => stop.then == Then::Policy,
            UnitState::Finishing(Finish { end: FinishEnd::Run { then, .. }, .. }) => *then == Then::Policy,
            UnitState::Finishing(Finish { end: FinishEnd::BeginFailed { .. }, .. }) => true,
            _ => false,
        }
    }

    fn is_stopping_job(&self) -> bool {
        match self {
            UnitState::Stopping(stop) => {
                matches!(stop.stage, StopStage::WaitOrder | StopStage::SpawnCmd { .. } | StopStage::Command { .. })
                    || stop.then != Then::Policy
            }
            UnitState::Finishing(Finish { end: FinishEnd::Run { then, .. }, .. }) => *then != Then::Policy,
            _ => false,
        }
    }

    fn is_inactive(&self) -> bool {
        matches!(self, UnitState::Inactive(_))
    }

    fn then_mut(&mut self) -> Option<&mut Then> {
        match self {
            UnitState::Stopping(stop) => Some(&mut stop.then),
            UnitState::Finishing(Finish { end: FinishEnd::Run { then, .. }, .. }) => Some(then),
            _ => None,
        }
    }
}

struct ReloadJob {
    index: usize,
    /// None until spawned.
    pid: Option<i32>,
    reply: Option<ReplyTo>,
}

struct Slot {
    unit: Arc<Unit>,
    state: UnitState,
    epoch: Epoch,
    /// Set when the unit cannot run at all (part of an ordering cycle).
    invalid: Option<String>,
    /// Removed from disk: dropped as soon as it is inactive.
    removed: bool,
    /// Our live children of this unit, by role (a stop command or a
    /// pre-start command may outlive the state that spawned it).
    children: Vec<(i32, Role)>,
    /// The status and detail subscribers were last told (events carry it;
    /// snapshots derive the status from `state`).
    announced: Status,
    detail: Option<String>,
    prepared: Prepared,
    restarts: u32,
    consecutive_failures: u32,
    start_limit: StartLimit,
    run_started: Option<Instant>,
    since_ms: i64,
    started_ms: Option<i64>,
    last_exit: Option<String>,
    /// Why the last run ended badly; cleared by a user's (fresh) start.
    failure: Option<Failure>,
    reload: Option<ReloadJob>,
    /// The `seq` of the last event emitted for this unit (0: none yet).
    seq: u64,
    /// Sent `RELOADING=1` and no `READY=1` since.
    reloading: bool,
    /// The ExecStartPost= command running (its index and pid once spawned).
    post: Option<(usize, Option<i32>)>,
    /// The OOM kills of this run already acted on (OOMPolicy=).
    oom_seen: u64,
    /// TimeoutStopFailureMode=abort: WatchdogSignal= was sent when the stop timed out; the next timeout kills.
    abort_sent: bool,
    /// When TimeoutStartSec= runs out for this start: set by its first
    /// ExecCondition=/ExecStartPre= command, so one deadline covers them and
    /// the main process's start, as in systemd.
    start_deadline: Option<Instant>,
}

struct ShutdownJob {
    /// A stop of this shutdown needed SIGKILL.
    sigkilled: bool,
    done: bool,
}

/// `a` must be up before `b` starts, and `b` down before `a` stops.
fn ordered_before(a: &Unit, b: &Unit) -> bool {
    b.after.contains(&a.name)
        || a.before.contains(&b.name)
        // Instances run on the services (NGINX, ...), never the other way round.
        || (a.kind == UnitKind::Service && b.kind == UnitKind::Instance)
}

fn kill_signal(unit: &Unit) -> Signal {
    Signal::try_from(unit.service.kill_signal).unwrap_or(Signal::SIGTERM)
}

/// The signal of a stop: RestartKillSignal= when the unit comes back up, else KillSignal=.
fn stop_signal(unit: &Unit, then: Then) -> Signal {
    match (then, unit.service.restart_kill_signal) {
        (Then::Up, Some(signal)) => Signal::try_from(signal).unwrap_or_else(|_| kill_signal(unit)),
        _ => kill_signal(unit),
    }
}

/// What TimeoutStartFailureMode=/TimeoutStopFailureMode= send instead of the usual (None: terminate, the usual).
fn timeout_signal(unit: &Unit, mode: TimeoutMode) -> Option<Signal> {
    match mode {
        TimeoutMode::Terminate => None,
        TimeoutMode::Abort => Some(Signal::try_from(unit.service.watchdog_signal).unwrap_or(Signal::SIGABRT)),
        TimeoutMode::Kill => Some(Signal::SIGKILL),
    }
}

/// FinalKillSignal=: what a stop escalates to after TimeoutStopSec.
fn final_kill_signal(unit: &Unit) -> Signal {
    Signal::try_from(unit.service.final_kill_signal).unwrap_or(Signal::SIGKILL)
}

/// Every unit's state, and the rules that move it.
pub struct Units {
    slots: Vec<Slot>,
    /// The live units by name (name order is the order of snapshots and of job scans).
    index: BTreeMap<String, UnitId>,
    /// Alias=: other names a command may address a unit by.
    aliases: BTreeMap<String, UnitId>,
    last_epoch: Epoch,
    /// The last `seq` handed out; one counter for all units, so a unit removed
    /// and re-added under the same name never repeats a number a page has seen.
    last_seq: u64,
    shutdown: Option<ShutdownJob>,
    now: Now,
    out: Vec<Effect>,
}

impl Units {
    pub fn new(units: Vec<Unit>, now: Now) -> (Units, Vec<Effect>) {
        let mut this = Units {
            slots: Vec::new(),
            index: BTreeMap::new(),
            aliases: BTreeMap::new(),
            last_epoch: 0,
            last_seq: 0,
            shutdown: None,
            now,
            out: Vec::new(),
        };
        this.apply_units(units);
        let out = std::mem::take(&mut this.out);
        (this, out)
    }

    /// Handles one input, then lets queued jobs proceed.
    pub fn step(&mut self, input: Input, now: Now) -> Vec<Effect> {
        self.now = now;
        match input {
            Input::Command { cmd, reply } => self.on_command(cmd, reply),
            Input::Exit { pid, status } => self.on_exit(pid, status),
            Input::Hint(hint) => self.on_hint(hint),
            Input::Timer { unit, epoch, kind } => {
                if self.slots[unit.0].epoch == epoch {
                    self.on_timer(unit, kind);
                }
            }
            Input::Ready { unit, epoch } => self.on_ready(unit, epoch),
            Input::Conditions { unit, unmet } => self.on_conditions(unit, unmet),
            Input::RunBegun { unit, result } => self.on_run_begun(unit, result),
            Input::Spawned { unit, role, result } => self.on_spawned(unit, role, result),
            Input::Members { unit, live } => self.on_members(unit, live),
            Input::Evidence { unit, evidence } => self.on_evidence(unit, evidence),
            Input::PortHolder { unit, holder } => self.on_port_holder(unit, holder),
            Input::Notify { unit, message, sender } => self.on_notify(unit, &message, sender),
            Input::PidFile { unit, result } => self.on_pid_file(unit, result),
            Input::OomKills { unit, kills } => self.on_oom(unit, kills),
            Input::Bus { unit, epoch, event } => self.on_bus(unit, epoch, event),
        }
        self.stop_unneeded();
        self.advance();
        if let Some(job) = self.shutdown.as_mut() {
            if !job.done && self.slots.iter().all(|s| s.state.is_inactive()) {
                job.done = true;
                let clean = !job.sigkilled;
                self.out.push(Effect::ShutdownDone { clean });
            }
        }
        std::mem::take(&mut self.out)
    }

    pub fn id(&self, name: &str) -> Option<UnitId> {
        self.index.get(name).copied()
    }

    pub fn unit(&self, id: UnitId) -> &Arc<Unit> {
        &self.slots[id.0].unit
    }

    pub fn state(&self, id: UnitId) -> &UnitState {
        &self.slots[id.0].state
    }

    /// The epoch timers and probes of the unit's current state carry.
    pub fn epoch(&self, id: UnitId) -> Epoch {
        self.slots[id.0].epoch
    }

    pub fn shutting_down(&self) -> bool {
        self.shutdown.is_some()
    }

    pub fn snapshot(&self) -> Vec<UnitSnapshot> {
        self.index
            .values()
            .map(|id| {
                let s = &self.slots[id.0];
                UnitSnapshot {
                    name: s.unit.name.clone(),
                    kind: s.unit.kind,
                    description: s.unit.description.clone(),
                    status: s.state.status(),
                    detail: s.detail.clone(),
                    pid: s.state.main_pid(),
                    restarts: s.restarts,
                    since_ms: s.since_ms,
                    started_ms: s.started_ms,
                    last_exit: s.last_exit.clone(),
                    failure: s.failure.clone(),
                    path: s.unit.path.display().to_string(),
                    port: s.prepared.port,
                    app_port: s.prepared.app_port,
                    vnc_port: s.prepared.vnc_port,
                    seq: s.seq,
                    unit: Arc::clone(&s.unit),
                }
            })
            .collect()
    }

    // ---- commands -------------------------------------------------------

    fn on_command(&mut self, cmd: Cmd, reply: Option<ReplyTo>) {
        let result = match cmd {
            Cmd::Start(name) => self.lookup(&name).and_then(|id| {
                self.request_start(id, true)?;
                Ok(Answer::Status(self.slots[id.0].state.status()))
            }),
            Cmd::Stop(name) => self.lookup(&name).map(|id| {
                self.request_stop(id);
                Answer::Status(self.slots[id.0].state.status())
            }),
            Cmd::Restart(name) => self.lookup(&name).and_then(|id| {
                self.request_restart(id)?;
                Ok(Answer::Status(self.slots[id.0].state.status()))
            }),
            Cmd::Reload(name) => match self.lookup(&name).and_then(|id| self.request_reload(id, reply).map(|_| id)) {
                // The reply comes when the commands finish.
                Ok(id) => {
                    self.propagate_reload(id);
                    return;
                }
                Err(e) => Err(e),
            },
            Cmd::ResetFailed(name) => self.lookup(&name).map(|id| {
                self.reset_failed(id);
                Answer::Status(self.slots[id.0].state.status())
            }),
            Cmd::SetUnits(units) => {
                self.apply_units(units);
                Ok(Answer::Done)
            }
            Cmd::StartAll => {
                self.start_all();
                Ok(Answer::Done)
            }
            Cmd::Shutdown => {
                self.begin_shutdown();
                return;
            }
            Cmd::KillAll => {
                for id in self.live_ids() {
                    if !self.slots[id.0].state.is_inactive() {
                        self.out.push(Effect::Signal { target: Target::Unit(id), signal: Signal::SIGKILL });
                        if let Some(job) = self.shutdown.as_mut() {
                            job.sigkilled = true;
                        }
                    }
                }
                return;
            }
        };
        if let Some(to) = reply {
            self.out.push(Effect::Reply { to, result });
        }
    }

    /// A unit by its name or one of its aliases (Alias=).
    fn lookup(&self, name: &str) -> Result<UnitId, CommandError> {
        self.id(name)
            .or_else(|| self.aliases.get(name).copied().filter(|id| self.index.values().any(|live| live == id)))
            .ok_or_else(|| CommandError::NoSuchUnit(name.to_string()))
    }

    fn live_ids(&self) -> Vec<UnitId> {
        self.index.values().copied().collect()
    }

    fn reset_failed(&mut self, id: UnitId) {
        let s = &mut self.slots[id.0];
        if matches!(s.state, UnitState::Inactive(Outcome::Failed | Outcome::Error)) {
            s.start_limit.reset();
            s.consecutive_failures = 0;
            s.failure = None;
            self.enter(id, UnitState::Inactive(Outcome::Stopped));
            self.publish(id, Some("failed state reset".into()));
        }
    }

    fn start_all(&mut self) {
        let wanted: Vec<UnitId> = self
            .live_ids()
            .into_iter()
            .filter(|id| {
                let s = &self.slots[id.0];
                // A service with [Install] WantedBy= starts at boot once enabled (units::install).
                s.invalid.is_none() && s.unit.instance.as_ref().map_or(s.unit.starts_at_boot, |i| i.autostart)
            })
            .collect();
        for id in wanted {
            if let Err(e) = self.request_start(id, true) {
                self.out.push(Effect::Warn { unit: id, text: format!("boot start refused: {e}") });
            }
        }
    }

    fn request_start(&mut self, id: UnitId, fresh: bool) -> Result<(), CommandError> {
        if self.shutdown.is_some() {
            return Err(CommandError::ShuttingDown);
        }
        let s = &mut self.slots[id.0];
        if let Some(why) = &s.invalid {
            return Err(CommandError::Refused { unit: s.unit.name.clone(), action: "start", why: why.clone() });
        }
        match s.state.can_start() {
            StartMove::Begin => {}
            StartMove::Nothing => return Ok(()),
            StartMove::AfterStop => {
                // Finish stopping first, then come back up.
                if let Some(then) = s.state.then_mut() {
                    if *then == Then::Down {
                        *then = Then::Up;
                    }
                }
                return Ok(());
            }
        }
        if fresh {
            // A user's start is a new attempt: forget the previous crash loop.
            s.start_limit.reset();
            s.restarts = 0;
            s.consecutive_failures = 0;
            s.failure = None;
        }
        let unit = Arc::clone(&s.unit);
        self.enter(id, UnitState::WaitDeps { fresh });
        self.publish(id, Some("waiting for dependencies".into()));
        for dep in unit.requires.iter().chain(&unit.wants) {
            let Some(dep) = self.id(dep) else { continue };
            let d = &self.slots[dep.0];
            // A dependency on its way down comes back up once stopped.
            let wanted = d.state.is_inactive() || (d.state.is_stopping_job() && !d.removed);
            if wanted && d.invalid.is_none() {
                let _ = self.request_start(dep, true);
            }
        }
        Ok(())
    }

    /// A stop job for the unit, and for the units it propagates stops to
    /// (PropagatesStopTo=, StopPropagatedFrom=) when this one was not
    /// already on its way down (so a loop of them ends).
    fn request_stop(&mut self, id: UnitId) {
        let state = &self.slots[id.0].state;
        let already = state.is_inactive() || state.is_stopping_job();
        self.stop_one(id);
        if already {
            return;
        }
        for name in self.slots[id.0].unit.relations.propagates_stop_to.clone() {
            if let Some(other) = self.id(&name) {
                if !self.slots[other.0].state.is_inactive() {
                    self.note(other, &format!("stopped with {} (PropagatesStopTo=)", self.slots[id.0].unit.name));
                }
                self.request_stop(other);
            }
        }
    }

    fn stop_one(&mut self, id: UnitId) {
        let s = &mut self.slots[id.0];
        if s.state.can_stop().is_err() {
            return;
        }
        match &mut s.state {
            UnitState::WaitDeps { .. } | UnitState::Backoff => {
                self.enter(id, UnitState::Inactive(Outcome::Stopped));
                self.publish(id, Some("stopped".into()));
                return;
            }
            UnitState::Stopping(_) | UnitState::Finishing(_) => {
                if let Some(then) = s.state.then_mut() {
                    *then = Then::Down;
                }
                return;
            }
            UnitState::Starting(
                StartStep::Pre { pid, .. } | StartStep::Oneshot { pid, .. } | StartStep::Forking { pid },
            ) => {
                // Half-started: nothing depends on it yet, so no ordering to wait for.
                let pid = *pid;
                let signal = kill_signal(&s.unit);
                s.state = UnitState::Stopping(Stop {
                    stage: StopStage::Draining { sigkill_sent: false },
                    main: None,
                    ending: RunEnd::Requested,
                    then: Then::Down,
                    escalated: false,
                    remained: false,
                    post: None,
                });
                self.publish(id, None);
                self.out.push(Effect::Signal { target: Target::Group(pid), signal });
                self.send_kill_signal(id, false);
                return;
            }
            UnitState::Starting(_) => {
                // Between an effect and its answer (never seen by a command): nothing runs yet.
                self.enter(id, UnitState::Inactive(Outcome::Stopped));
                self.publish(id, Some("stopped".into()));
                return;
            }
            UnitState::Inactive(_) | UnitState::Running { .. } | UnitState::Remaining | UnitState::Cgroup { .. } => {}
        }
        let (main, remained) = match s.state {
            UnitState::Running { pid, .. } => (Some(pid), false),
            // No main process: ExecStop= still runs, then the kill signal goes to the whole unit.
            UnitState::Remaining | UnitState::Cgroup { .. } => (None, true),
            _ => return,
        };
        let name = s.unit.name.clone();
        // Units that require this one cannot keep running without it.
        let dependents: Vec<UnitId> = self
            .live_ids()
            .into_iter()
            .filter(|d| {
                let d = &self.slots[d.0];
                (d.unit.requires.contains(&name) || d.unit.relations.requisite.contains(&name))
                    && !d.state.is_inactive()
            })
            .collect();
        self.enter(
            id,
            UnitState::Stopping(Stop {
                stage: StopStage::WaitOrder,
                main,
                ending: RunEnd::Requested,
                then: Then::Down,
                escalated: false,
                remained,
                post: None,
            }),
        );
        self.publish(id, None);
        for dependent in dependents {
            self.request_stop(dependent);
        }
    }

    fn request_restart(&mut self, id: UnitId) -> Result<(), CommandError> {
        if self.shutdown.is_some() {
            return Err(CommandError::ShuttingDown);
        }
        match self.slots[id.0].state {
            UnitState::WaitDeps { .. } => Ok(()),
            UnitState::Inactive(_) | UnitState::Backoff => self.request_start(id, true),
            _ => {
                let stopping_before: Vec<bool> = self.slots.iter().map(|s| s.state.is_stopping_job()).collect();
                self.request_stop(id);
                // The stop took down the units that require this one; as in systemd they come back too.
                for (i, s) in self.slots.iter_mut().enumerate() {
                    let newly = s.state.is_stopping_job() && !stopping_before[i];
                    if let Some(then) = s.state.then_mut() {
                        if newly && *then == Then::Down {
                            *then = Then::Up;
                        }
                    }
                }
                if let Some(then) = self.slots[id.0].state.then_mut() {
                    *then = Then::Up;
                }
                Ok(())
            }
        }
    }

    fn request_reload(&mut self, id: UnitId, reply: Option<ReplyTo>) -> Result<(), CommandError> {
        let s = &self.slots[id.0];
        let refuse = |why: String| CommandError::Refused { unit: s.unit.name.clone(), action: "reload", why };
        if s.unit.service.exec_reload.is_empty() && s.unit.service.service_type == ServiceType::NotifyReload {
            // Type=notify-reload: ReloadSignal= to the main process, which answers RELOADING=1 ... READY=1.
            let pid = s.state.can_reload().map_err(|e| refuse(e.to_string()))?;
            let signal = Signal::try_from(s.unit.service.reload_signal).unwrap_or(Signal::SIGHUP);
            self.out.push(Effect::Signal { target: Target::Process(pid), signal });
            self.note(id, &format!("reload: {} sent to pid {pid} (ReloadSignal=)", signal.as_str()));
            if let Some(to) = reply {
                self.out.push(Effect::Reply { to, result: Ok(Answer::Done) });
            }
            return Ok(());
        }
        if s.unit.service.exec_reload.is_empty() {
            return Err(refuse("it has no ExecReload=".into()));
        }
        if !matches!(s.state, UnitState::Cgroup { .. }) {
            s.state.can_reload().map_err(|e| refuse(e.to_string()))?;
        }
        if s.reload.is_some() {
            return Err(refuse("a reload is already running".into()));
        }
        self.run_reload_command(id, 0, reply);
        Ok(())
    }

    fn run_reload_command(&mut self, id: UnitId, index: usize, reply: Option<ReplyTo>) {
        let s = &mut self.slots[id.0];
        let Some(command) = s.unit.service.exec_reload.get(index).cloned() else {
            if let Some(to) = reply {
                self.out.push(Effect::Reply { to, result: Ok(Answer::Done) });
            }
            self.emit(id, EventKind::Info, Some("reloaded".into()));
            return;
        };
        s.reload = Some(ReloadJob { index, pid: None, reply });
        let env = self.command_env(id);
        self.out.push(Effect::Spawn { unit: id, role: Role::Reload, command, env });
    }

    fn apply_units(&mut self, units: Vec<Unit>) {
        let mut incoming: BTreeMap<String, Arc<Unit>> =
            units.into_iter().map(|u| (u.name.clone(), Arc::new(u))).collect();
        for id in self.live_ids() {
            let name = self.slots[id.0].unit.name.clone();
            match incoming.remove(&name) {
                Some(unit) => {
                    let s = &mut self.slots[id.0];
                    if *s.unit != *unit {
                        s.unit = unit;
                        s.removed = false;
                        let note = if s.state.is_inactive() {
                            "definition changed"
                        } else {
                            "definition changed; restart to apply"
                        };
                        self.emit(id, EventKind::Config, Some(note.into()));
                    }
                }
                None => {
                    self.slots[id.0].removed = true;
                    self.request_stop(id);
                    self.emit(id, EventKind::Config, Some("unit file removed".into()));
                }
            }
        }
        for (name, unit) in incoming {
            let id = UnitId(self.slots.len());
            self.slots.push(Slot {
                unit,
                state: UnitState::Inactive(Outcome::Stopped),
                epoch: 0,
                invalid: None,
                removed: false,
                children: Vec::new(),
                announced: Status::Stopped,
                detail: None,
                prepared: Prepared::default(),
                restarts: 0,
                consecutive_failures: 0,
                start_limit: StartLimit::default(),
                run_started: None,
                start_deadline: None,
                since_ms: self.now.wall_ms,
                started_ms: None,
                last_exit: None,
                failure: None,
                reload: None,
                seq: 0,
                reloading: false,
                post: None,
                oom_seen: 0,
                abort_sent: false,
            });
            self.index.insert(name, id);
            self.emit(id, EventKind::Config, Some("unit added".into()));
        }
        self.mark_cycles();
        self.drop_removed();
        self.aliases = self
            .index
            .values()
            .flat_map(|id| self.slots[id.0].unit.aliases.iter().map(move |alias| (alias.clone(), *id)))
            .collect();
    }

    /// Units on an ordering cycle cannot be started in any order: refuse them, naming the cycle.
    fn mark_cycles(&mut self) {
        let all: Vec<Unit> = self.index.values().map(|id| (*self.slots[id.0].unit).clone()).collect();
        let cycle = crate::units::find_cycle(&all);
        for id in self.live_ids() {
            let s = &mut self.slots[id.0];
            s.invalid = cycle
                .as_ref()
                .filter(|c| c.contains(&s.unit.name))
                .map(|c| format!("ordering cycle: {}", c.join(" -> ")));
        }
    }

    fn drop_removed(&mut self) {
        let slots = &self.slots;
        self.index.retain(|_, id| !(slots[id.0].removed && slots[id.0].state.is_inactive()));
    }

    fn begin_shutdown(&mut self) {
        // `clean` is about this shutdown: a SIGKILL in an earlier, finished stop does not count.
        let sigkilled = self.slots.iter().any(|s| matches!(&s.state, UnitState::Stopping(stop) if stop.escalated));
        self.shutdown = Some(ShutdownJob { sigkilled, done: false });
        for id in self.live_ids() {
            self.request_stop(id);
        }
    }

    // ---- the job queue -------------------------------------------------

    /// Lets queued start and stop jobs proceed once their ordering allows,
    /// until nothing more can move.
    fn advance(&mut self) {
        loop {
            let mut moved = false;
            let waiting: Vec<UnitId> = self
                .index
                .values()
                .copied()
                .filter(|id| {
                    matches!(
                        self.slots[id.0].state,
                        UnitState::WaitDeps { .. } | UnitState::Stopping(Stop { stage: StopStage::WaitOrder, .. })
                    )
                })
                .collect();
            for id in waiting {
                match self.slots[id.0].state {
                    UnitState::WaitDeps { fresh } => moved |= self.try_begin_start(id, fresh),
                    UnitState::Stopping(Stop { stage: StopStage::WaitOrder, .. }) => {
                        let unit = &self.slots[id.0].unit;
                        let blocked = self.index.values().any(|other| {
                            let o = &self.slots[other.0];
                            *other != id && ordered_before(unit, &o.unit) && o.state.is_stopping_job()
                        });
                        if !blocked {
                            self.begin_stop(id);
                            moved = true;
                        }
                    }
                    _ => {}
                }
            }
            if !moved {
                break;
            }
        }
        self.drop_removed();
    }

    fn try_begin_start(&mut self, id: UnitId, fresh: bool) -> bool {
        let unit = Arc::clone(&self.slots[id.0].unit);
        for dep in &unit.requires {
            let why = match self.id(dep).map(|d| &self.slots[d.0].state) {
                None => Some(format!("requires {dep}, which does not exist")),
                Some(UnitState::Inactive(Outcome::Error | Outcome::Failed)) => Some(format!("dependency {dep} failed")),
                Some(UnitState::Inactive(Outcome::Stopped)) => Some(format!("required unit {dep} is not running")),
                // A oneshot that did its work is what was required.
                Some(UnitState::Inactive(Outcome::Finished)) => None,
                _ => None,
            };
            if let Some(why) = why {
                self.enter(id, UnitState::Inactive(Outcome::Failed));
                self.publish(id, Some(why));
                return true;
            }
        }
        // As in systemd, a stop job of a unit ordered before this one also goes first.
        let blocked = self.index.values().any(|other| {
            let o = &self.slots[other.0];
            *other != id && ordered_before(&o.unit, &unit) && (o.state.is_starting_job() || o.state.is_stopping_job())
        });
        if blocked {
            return false;
        }
        // Requisite=: the other unit must be active already; it is never started for this one.
        for dep in &unit.relations.requisite {
            let active = self.id(dep).is_some_and(|d| self.slots[d.0].state.status() == Status::Started);
            if !active {
                self.enter(id, UnitState::Inactive(Outcome::Failed));
                self.publish(id, Some(format!("requisite {dep} is not active")));
                return true;
            }
        }
        self.enter(id, UnitState::Starting(StartStep::Conditions { fresh }));
        self.out.push(Effect::CheckConditions { unit: id });
        true
    }

    /// A start attempt past its conditions: start limit, then log rotation and leases.
    fn on_conditions(&mut self, id: UnitId, unmet: Option<String>) {
        let UnitState::Starting(StartStep::Conditions { fresh }) = self.slots[id.0].state else { return };
        if let Some(why) = unmet {
            self.enter(id, UnitState::Inactive(Outcome::Stopped));
            self.publish(id, Some(format!("skipped: {why}")));
            return;
        }
        let now = self.now.at;
        let s = &mut self.slots[id.0];
        let unit = Arc::clone(&s.unit);
        if !s.start_limit.try_start(now, unit.start_limit_interval, unit.start_limit_burst) {
            let why = format!(
                "start limit hit: more than {} starts within {:?} (StartLimitBurst=, StartLimitIntervalSec=)",
                unit.start_limit_burst, unit.start_limit_interval
            );
            self.enter(id, UnitState::Inactive(Outcome::Failed));
            self.note(id, &why);
            self.publish(id, Some(why));
            if let Some(action) = &unit.relations.start_limit_action {
                let why = format!("{} hit its start limit: StartLimitAction={action}", unit.name);
                self.out.push(Effect::EndContainer { why });
            }
            return;
        }
        s.state = UnitState::Starting(StartStep::Begin);
        self.out.push(Effect::BeginRun { unit: id, fresh });
    }

    fn on_run_begun(&mut self, id: UnitId, result: Result<Prepared, OsError>) {
        if self.slots[id.0].state != UnitState::Starting(StartStep::Begin) {
            return;
        }
        match result {
            Ok(prepared) => {
                self.slots[id.0].prepared = prepared;
                self.slots[id.0].oom_seen = 0;
                self.slots[id.0].start_deadline = None;
                self.run_pre_or_main(id, 0);
            }
            Err(why) => {
                let why = why.to_string();
                // aikore's own reason may tell a class (an instance's port found taken).
                let evidence = Evidence { lines: vec![why.clone()], ..Default::default() };
                let failure = classify(&evidence, &[]);
                if failure.class == FailureClass::Unknown {
                    self.enter(id, UnitState::Inactive(Outcome::Failed));
                    self.publish(id, Some(why));
                } else {
                    self.conclude(id, FinishEnd::BeginFailed { why }, failure);
                }
            }
        }
    }

    fn run_pre_or_main(&mut self, id: UnitId, index: usize) {
        let s = &self.slots[id.0];
        let unit = Arc::clone(&s.unit);
        let env = s.prepared.env.clone();
        // ExecCondition= commands first, then ExecStartPre=, in one run of indices.
        let (conditions, pre) = (&unit.service.exec_condition, &unit.service.exec_start_pre);
        if let Some(command) = conditions.iter().chain(pre).nth(index) {
            self.slots[id.0].state = UnitState::Starting(StartStep::SpawnPre { index });
            let step = match index.checked_sub(conditions.len()) {
                None => format!("ExecCondition {}/{}", index + 1, conditions.len()),
                Some(i) => format!("ExecStartPre {}/{}", i + 1, pre.len()),
            };
            self.publish(id, Some(step));
            self.out.push(Effect::Spawn { unit: id, role: Role::Pre, command: command.clone(), env });
            if index == 0 {
                self.slots[id.0].start_deadline = unit.service.timeout_start.map(|t| self.now.at + t);
            }
            return;
        }
        if unit.service.service_type == ServiceType::Oneshot {
            self.run_oneshot_command(id, 0);
            return;
        }
        let Some(mut command) = unit.service.exec_start.clone().or_else(|| s.prepared.default_exec_start.clone())
        else {
            self.run_ended(id, RunEnd::SpawnFailed("no ExecStart= and no default for this unit".into()));
            return;
        };
        if !s.prepared.main_wrapper.is_empty() {
            command.argv.splice(0..0, s.prepared.main_wrapper.iter().cloned());
        }
        self.slots[id.0].state = UnitState::Starting(StartStep::SpawnMain { argv: command.argv.join(" ") });
        self.out.push(Effect::Spawn { unit: id, role: Role::Main, command, env });
    }

    /// A oneshot's `index`th ExecStart=; once none is left, it is done.
    fn run_oneshot_command(&mut self, id: UnitId, index: usize) {
        let s = &self.slots[id.0];
        let service = &s.unit.service;
        // A oneshot's ExecStartPost= commands follow its ExecStart= ones, under the same rules.
        let commands = service.exec_start.iter().chain(&service.exec_start_more).chain(&service.exec_start_post);
        let Some(command) = commands.clone().nth(index).cloned() else {
            if service.remain_after_exit {
                self.enter(id, UnitState::Remaining);
                self.publish(id, None);
            } else {
                // Done: ends as a run does (leftovers killed), and Restart= sees a clean exit.
                self.run_ended(id, RunEnd::Exited(ExitStatus::Exited { code: 0 }));
            }
            return;
        };
        let env = s.prepared.env.clone();
        let count = usize::from(service.exec_start.is_some()) + service.exec_start_more.len();
        let posts = service.exec_start_post.len();
        let step = match index.checked_sub(count) {
            None if count > 1 => Some(format!("ExecStart {}/{count}", index + 1)),
            None => None,
            Some(i) => Some(format!("ExecStartPost {}/{posts}", i + 1)),
        };
        self.slots[id.0].state = UnitState::Starting(StartStep::SpawnOneshot { index });
        if let Some(step) = step {
            self.publish(id, Some(step));
        }
        self.out.push(Effect::Spawn { unit: id, role: Role::Main, command, env });
    }

    fn on_spawned(&mut self, id: UnitId, role: Role, result: Result<i32, OsError>) {
        if let Ok(pid) = result {
            self.slots[id.0].children.push((pid, role));
        }
        let state = self.slots[id.0].state.clone();
        match (role, state, result) {
            (Role::Pre, UnitState::Starting(StartStep::SpawnPre { index }), Ok(pid)) => {
                self.enter(id, UnitState::Starting(StartStep::Pre { index, pid }));
                if let Some(timeout) = self.slots[id.0].unit.service.timeout_start {
                    self.arm_start_timeout(id, timeout);
                }
            }
            (Role::Main, UnitState::Starting(StartStep::SpawnMain { argv }), Ok(pid)) => {
                self.main_spawned(id, pid, argv)
            }
            (Role::Main, UnitState::Starting(StartStep::SpawnOneshot { index }), Ok(pid)) => {
                if index == 0 {
                    self.slots[id.0].run_started = Some(self.now.at);
                    self.slots[id.0].started_ms = Some(self.now.wall_ms);
                    // TimeoutStartSec= covers all of a oneshot's commands: one timer, kept across them.
                    self.enter(id, UnitState::Starting(StartStep::Oneshot { index, pid }));
                    if let Some(timeout) = self.slots[id.0].unit.service.timeout_start {
                        self.arm_start_timeout(id, timeout);
                    }
                } else {
                    self.slots[id.0].state = UnitState::Starting(StartStep::Oneshot { index, pid });
                }
            }
            (
                Role::Pre | Role::Main,
                UnitState::Starting(
                    StartStep::SpawnPre { .. } | StartStep::SpawnMain { .. } | StartStep::SpawnOneshot { .. },
                ),
                Err(why),
            ) => self.run_ended(id, RunEnd::SpawnFailed(why.to_string())),
            (Role::Stop, UnitState::Stopping(mut stop), result) => {
                let StopStage::SpawnCmd { index } = stop.stage else { return };
                match result {
                    Ok(pid) => {
                        stop.stage = StopStage::Command { index, pid };
                        self.slots[id.0].state = UnitState::Stopping(stop);
                    }
                    Err(why) => {
                        self.emit(id, EventKind::Error, Some(format!("ExecStop could not start: {why}")));
                        self.send_kill_signal(id, true);
                    }
                }
            }
            (Role::Post, UnitState::Running { .. } | UnitState::Cgroup { .. }, result)
                if self.slots[id.0].post.is_some() =>
            {
                match result {
                    Ok(pid) => {
                        if let Some((_, p)) = self.slots[id.0].post.as_mut() {
                            *p = Some(pid);
                        }
                    }
                    Err(why) => {
                        self.emit(id, EventKind::Error, Some(format!("ExecStartPost could not start: {why}")));
                        self.post_exited(id, ExitStatus::Exited { code: 203 });
                    }
                }
            }
            (Role::StopPost, UnitState::Stopping(_), Err(why)) => {
                self.emit(id, EventKind::Error, Some(format!("ExecStopPost could not start: {why}")));
                self.run_stop_post(id);
            }
            (Role::StopPost, UnitState::Stopping(_), Ok(_)) => {}
            (Role::Reload, _, result) => {
                let Some(job) = self.slots[id.0].reload.as_mut() else { return };
                match result {
                    Ok(pid) => job.pid = Some(pid),
                    Err(why) => {
                        let reply = self.slots[id.0].reload.take().and_then(|job| job.reply);
                        let message = format!("ExecReload could not start: {why}");
                        self.emit(id, EventKind::Error, Some(message.clone()));
                        if let Some(to) = reply {
                            let unit = self.slots[id.0].unit.name.clone();
                            let error = CommandError::Refused { unit, action: "reload", why: message };
                            self.out.push(Effect::Reply { to, result: Err(error) });
                        }
                    }
                }
            }
            (_, _, Ok(pid)) => {
                // Only a state that asked for it takes a process: never leave one unsupervised.
                self.out.push(Effect::Signal { target: Target::Group(pid), signal: Signal::SIGKILL });
            }
            _ => {}
        }
    }

    fn main_spawned(&mut self, id: UnitId, pid: i32, argv: String) {
        let now = self.now;
        let s = &mut self.slots[id.0];
        s.run_started = Some(now.at);
        s.started_ms = Some(now.wall_ms);
        if s.unit.service.service_type == ServiceType::Forking {
            // Started once the starter exits 0 and the daemon's pid is known; TimeoutStartSec= bounds both.
            let timeout = s.unit.service.timeout_start;
            self.enter(id, UnitState::Starting(StartStep::Forking { pid }));
            self.note(id, &format!("started {argv}, pid {pid}; waiting for it to fork and exit"));
            self.publish(id, Some("waiting for the starter to fork".into()));
            if let Some(timeout) = timeout {
                self.arm_start_timeout(id, timeout);
            }
            return;
        }
        let ready = s.prepared.ready.clone();
        let unit = Arc::clone(&s.unit);
        let notifies = unit.service.service_type.notifies();
        // Type=dbus: started once BusName= has an owner (the parser makes sure there is a name).
        let bus = unit.service.bus_name.clone().filter(|_| unit.service.service_type == ServiceType::Dbus);
        let posts = !unit.service.exec_start_post.is_empty();
        let waits = ready.is_some() || notifies || bus.is_some() || posts;
        let readiness = if waits { Readiness::Waiting } else { Readiness::Ready };
        self.enter(id, UnitState::Running { pid, ready: readiness });
        self.arm_runtime_max(id);
        self.note(id, &format!("started {argv}, pid {pid}"));
        match ready {
            None if bus.is_some() => {
                let name = bus.unwrap_or_default();
                self.publish(id, Some(format!("waiting for {name} on the system bus")));
                let epoch = self.slots[id.0].epoch;
                self.out.push(Effect::WatchBus { unit: id, name, epoch });
                if let Some(timeout) = unit.service.timeout_start {
                    self.arm_start_timeout(id, timeout);
                }
            }
            None if notifies => {
                self.publish(id, Some("waiting for READY=1".into()));
                if let Some(timeout) = unit.service.timeout_start {
                    self.arm_start_timeout(id, timeout);
                }
            }
            None if posts => self.run_post(id, 0),
            None => self.publish(id, None),
            Some(target) => {
                self.publish(id, Some("waiting for readiness".into()));
                let epoch = self.slots[id.0].epoch;
                self.out.push(Effect::Probe { unit: id, target, epoch });
                if let Some(instance) = &unit.instance {
                    self.arm(id, TimerKind::Stall, instance.stall_after);
                } else if let Some(timeout) = unit.service.timeout_start {
                    self.arm_start_timeout(id, timeout);
                }
            }
        }
    }

    // ---- stopping -------------------------------------------------------

    /// Moves a unit towards down: ExecStop, then the kill signal per KillMode.
    /// TimeoutStopSec runs from here, once for the whole stop.
    fn begin_stop(&mut self, id: UnitId) {
        self.bump_epoch(id);
        if let Some(timeout) = self.slots[id.0].unit.service.timeout_stop {
            self.arm(id, TimerKind::StopTimeout, timeout);
        }
        self.run_stop_command(id, 0);
    }

    fn run_stop_command(&mut self, id: UnitId, index: usize) {
        let s = &mut self.slots[id.0];
        let UnitState::Stopping(stop) = &mut s.state else { return };
        let commands = stop.main.is_some() || stop.remained;
        if let (true, Some(command)) = (commands, s.unit.service.exec_stop.get(index)) {
            let command = command.clone();
            stop.stage = StopStage::SpawnCmd { index };
            let env = self.command_env(id);
            self.out.push(Effect::Spawn { unit: id, role: Role::Stop, command, env });
            return;
        }
        self.send_kill_signal(id, true);
    }

    /// The kill signal per KillMode, then the drain. `timed`: TimeoutStopSec already runs.
    fn send_kill_signal(&mut self, id: UnitId, timed: bool) {
        let s = &mut self.slots[id.0];
        let UnitState::Stopping(stop) = &mut s.state else { return };
        let signal = stop_signal(&s.unit, stop.then);
        let target = match (s.unit.service.kill_mode, stop.main) {
            (KillMode::ControlGroup, _) | (_, None) => Target::Unit(id),
            (KillMode::ProcessGroup, Some(pid)) => Target::Group(pid),
            (KillMode::Mixed | KillMode::Process, Some(pid)) => Target::Process(pid),
        };
        stop.stage = StopStage::Draining { sigkill_sent: false };
        let timeout = s.unit.service.timeout_stop;
        let sighup = s.unit.service.send_sighup && signal != Signal::SIGHUP;
        self.out.push(Effect::Signal { target, signal });
        if sighup {
            // SendSIGHUP=yes: shells and the like hang up at once.
            self.out.push(Effect::Signal { target, signal: Signal::SIGHUP });
        }
        // Stopped (SIGSTOP'd) processes would never see the signal.
        if signal != Signal::SIGKILL {
            self.out.push(Effect::Signal { target: Target::Unit(id), signal: Signal::SIGCONT });
        }
        if !timed {
            if let Some(timeout) = timeout {
                self.arm(id, TimerKind::StopTimeout, timeout);
            }
        }
        self.out.push(Effect::CheckDrained { unit: id });
    }

    /// A run ended by itself (exit, failed pre-start, spawn failure): record
    /// why, then make sure nothing of it is left.
    fn run_ended(&mut self, id: UnitId, ending: RunEnd) {
        let described = ending.describe();
        self.slots[id.0].last_exit = Some(described.clone());
        self.note(id, &described);
        self.emit(id, EventKind::Exit, Some(described));
        self.enter(
            id,
            UnitState::Stopping(Stop {
                stage: StopStage::Exited,
                main: None,
                ending,
                then: Then::Policy,
                escalated: false,
                remained: false,
                post: None,
            }),
        );
        self.out.push(Effect::CheckDrained { unit: id });
    }

    fn on_members(&mut self, id: UnitId, live: usize) {
        if let UnitState::Cgroup { exited, .. } = self.slots[id.0].state {
            if live == 0 {
                // The last process of a run without a main one is gone: it ends as its main would have.
                self.run_ended(id, RunEnd::Exited(exited.unwrap_or(ExitStatus::Exited { code: 0 })));
            }
            return;
        }
        let s = &mut self.slots[id.0];
        let UnitState::Stopping(stop) = &mut s.state else { return };
        match stop.stage {
            StopStage::Exited if live > 0 && s.unit.service.kill_mode == KillMode::Process => {
                // systemd's KillMode=process: what the main process started is left running.
                stop.stage = StopStage::Draining { sigkill_sent: false };
                self.drained(id, live);
            }
            StopStage::Exited if live > 0 => {
                stop.stage = StopStage::Draining { sigkill_sent: false };
                let signal = kill_signal(&s.unit);
                let timeout = s.unit.service.timeout_stop;
                // Say so while the leftovers are killed: the unit is no longer serving.
                self.publish(id, Some("main process exited; stopping what it left".into()));
                self.out.push(Effect::Signal { target: Target::Unit(id), signal });
                self.out.push(Effect::Signal { target: Target::Unit(id), signal: Signal::SIGCONT });
                if let Some(timeout) = timeout {
                    self.arm(id, TimerKind::StopTimeout, timeout);
                }
                self.out.push(Effect::CheckDrained { unit: id });
            }
            StopStage::Exited => {
                stop.stage = StopStage::Draining { sigkill_sent: false };
                self.drained(id, live);
            }
            StopStage::Draining { .. } => self.drained(id, live),
            _ => {}
        }
    }

    /// Finishes the run once the main process is reaped and no process of the unit is left.
    fn drained(&mut self, id: UnitId, live: usize) {
        let s = &mut self.slots[id.0];
        let UnitState::Stopping(stop) = &mut s.state else { return };
        let busy = s.children.iter().any(|(_, role)| *role != Role::Reload);
        let main_gone = !busy && stop.main.is_none();
        if main_gone
            && live > 0
            && s.unit.service.kill_mode == KillMode::Mixed
            && stop.stage == (StopStage::Draining { sigkill_sent: false })
        {
            // KillMode=mixed: once the main process is gone, the rest get SIGKILL at once (systemd).
            stop.stage = StopStage::Draining { sigkill_sent: true };
            self.out.push(Effect::Signal { target: Target::Unit(id), signal: Signal::SIGKILL });
        }
        if main_gone && live > 0 && s.unit.service.kill_mode == KillMode::Process {
            // KillMode=process: the run ends with its main process; the rest stay, as under systemd.
            let text = format!("KillMode=process: {live} other process(es) of the unit left running");
            self.note(id, &text);
        } else if busy || live > 0 {
            // The next exit of ours or DrainHint checks again; TimeoutStopSec bounds the wait.
            return;
        }
        let s = &self.slots[id.0];
        if let UnitState::Stopping(Stop { post: None, .. }) = s.state {
            if !s.unit.service.exec_stop_post.is_empty() {
                self.run_stop_post(id);
                return;
            }
        }
        self.finish_run(id);
    }

    /// The next ExecStopPost= command (with the run's result in its
    /// environment, as systemd gives it); once none is left, the run is over.
    fn run_stop_post(&mut self, id: UnitId) {
        let s = &mut self.slots[id.0];
        let UnitState::Stopping(stop) = &mut s.state else { return };
        let index = stop.post.unwrap_or(0);
        let Some(command) = s.unit.service.exec_stop_post.get(index).cloned() else {
            self.finish_run(id);
            return;
        };
        stop.post = Some(index + 1);
        let mut env = s.prepared.env.clone();
        env.extend(super::state::result_env(&stop.ending));
        self.out.push(Effect::Spawn { unit: id, role: Role::StopPost, command, env });
    }

    /// An ExecCondition= exited non-zero: 1-254 skips the start as an unmet
    /// condition does; 255 or a signal fails it (systemd's rule).
    fn condition_failed(&mut self, id: UnitId, index: usize, status: ExitStatus) {
        match status {
            ExitStatus::Exited { code: 1..=254 } => {
                let why = format!("skipped: ExecCondition {} {status}", index + 1);
                self.note(id, &why);
                self.out.push(Effect::Signal { target: Target::Unit(id), signal: Signal::SIGKILL });
                self.out.push(Effect::EndRun { unit: id });
                self.enter(id, UnitState::Inactive(Outcome::Stopped));
                self.publish(id, Some(why));
            }
            _ => self.run_ended(id, RunEnd::PreFailed(status)),
        }
    }

    /// The main process counts as started: its ExecStartPost= commands run
    /// (the unit still starting), then it is ready.
    fn run_post(&mut self, id: UnitId, index: usize) {
        let s = &mut self.slots[id.0];
        if !matches!(s.state, UnitState::Running { .. } | UnitState::Cgroup { .. }) {
            return;
        }
        let posts = &s.unit.service.exec_start_post;
        let Some(command) = posts.get(index).cloned() else {
            s.post = None;
            match &mut s.state {
                UnitState::Running { ready, .. } => *ready = Readiness::Ready,
                UnitState::Cgroup { ready, .. } => *ready = true,
                _ => {}
            }
            self.publish(id, None);
            return;
        };
        let count = posts.len();
        s.post = Some((index, None));
        let env = self.command_env(id);
        self.publish(id, Some(format!("ExecStartPost {}/{count}", index + 1)));
        self.out.push(Effect::Spawn { unit: id, role: Role::Post, command, env });
    }

    fn post_exited(&mut self, id: UnitId, status: ExitStatus) {
        let s = &mut self.slots[id.0];
        let Some((index, _)) = s.post.take() else { return };
        let ignore = s.unit.service.exec_start_post.get(index).is_some_and(|c| c.ignore_failure);
        if status.success() || ignore {
            self.run_post(id, index + 1);
            return;
        }
        // A failed ExecStartPost= fails the start: the main process is stopped, and Restart= decides.
        let main = match self.slots[id.0].state {
            UnitState::Running { pid, .. } => Some(pid),
            UnitState::Cgroup { .. } => None,
            _ => return,
        };
        self.enter(
            id,
            UnitState::Stopping(Stop {
                stage: StopStage::WaitOrder,
                main,
                ending: RunEnd::PostFailed(status),
                then: Then::Policy,
                escalated: false,
                // Without a main process ExecStop= still runs, then the whole unit is signalled.
                remained: main.is_none(),
                post: None,
            }),
        );
        self.note(id, &format!("ExecStartPost {status}; stopping it"));
        self.publish(id, Some(format!("ExecStartPost {status}; stopping it")));
        self.begin_stop(id);
    }

    fn check_drained(&mut self, id: UnitId) {
        if matches!(
            self.slots[id.0].state,
            UnitState::Stopping(Stop { stage: StopStage::Draining { .. }, .. }) | UnitState::Cgroup { .. }
        ) {
            self.out.push(Effect::CheckDrained { unit: id });
        }
    }

    fn on_hint(&mut self, hint: DrainHint) {
        match hint {
            DrainHint::Any => {
                for id in self.live_ids() {
                    self.check_drained(id);
                }
            }
            DrainHint::Unit(name) => {
                if let Some(id) = self.id(&name) {
                    self.check_drained(id);
                }
            }
            // The driver turns these into `Input::Notify` and `Input::OomKills`.
            DrainHint::Notify { .. } | DrainHint::Oom(_) => {}
        }
    }

    // ---- the end of a run -----------------------------------------------

    /// Every process is gone: classify a run that ended badly (its cgroup
    /// and log are still there to ask), then decide what comes next.
    fn finish_run(&mut self, id: UnitId) {
        let UnitState::Stopping(stop) = &self.slots[id.0].state else { return };
        let (ending, then) = (stop.ending.clone(), stop.then);
        let clean = ending.is_clean_with(&self.slots[id.0].unit.service.success_exit);
        match &ending {
            RunEnd::Exited(_) | RunEnd::PreFailed(_) | RunEnd::PostFailed(_) | RunEnd::OomKill if !clean => {
                self.slots[id.0].state =
                    UnitState::Finishing(Finish { end: FinishEnd::Run { ending, then }, awaiting: Awaiting::Evidence });
                self.out.push(Effect::GatherEvidence { unit: id });
            }
            // aikore's own reason tells (an instance's port found taken before the fork).
            RunEnd::SpawnFailed(why) => {
                let evidence = Evidence { lines: vec![why.clone()], ..Default::default() };
                let failure = self.classify(id, evidence);
                self.conclude(id, FinishEnd::Run { ending, then }, failure);
            }
            _ => self.complete_run(id, ending, then, None),
        }
    }

    fn on_evidence(&mut self, id: UnitId, mut evidence: Evidence) {
        let UnitState::Finishing(Finish { end, awaiting: Awaiting::Evidence }) = &self.slots[id.0].state else {
            return;
        };
        let end = end.clone();
        if let FinishEnd::Run {
            ending: RunEnd::Exited(status) | RunEnd::PreFailed(status) | RunEnd::PostFailed(status),
            ..
        } = &end
        {
            (evidence.code, evidence.signal) = match *status {
                ExitStatus::Exited { code } => (Some(code), None),
                ExitStatus::Signaled { signal, .. } => (None, Some(signal)),
            };
        }
        let failure = self.classify(id, evidence);
        self.conclude(id, end, failure);
    }

    fn classify(&self, id: UnitId, mut evidence: Evidence) -> Failure {
        let s = &self.slots[id.0];
        // The port the app itself binds (behind NGINX in port mode) is the one it found taken; a
        // service's is the one its ReadyCheck= probes.
        let probed = s.prepared.ready.as_ref().map(|target| match target {
            ReadyTarget::Tcp { port, .. } | ReadyTarget::Http { port, .. } => *port,
        });
        evidence.port = s.prepared.app_port.or(s.prepared.port).or(probed);
        classify(&evidence, &s.prepared.failure_patterns)
    }

    /// A port found taken is worth naming its holder; everything else is recorded at once.
    fn conclude(&mut self, id: UnitId, end: FinishEnd, failure: Failure) {
        if let (FailureClass::PortInUse, Some(port)) = (failure.class, failure.port) {
            self.slots[id.0].state = UnitState::Finishing(Finish { end, awaiting: Awaiting::PortHolder(failure) });
            self.out.push(Effect::FindPortHolder { unit: id, port });
            return;
        }
        self.concluded(id, end, failure);
    }

    fn on_port_holder(&mut self, id: UnitId, holder: Option<String>) {
        let UnitState::Finishing(Finish { end, awaiting: Awaiting::PortHolder(failure) }) = &self.slots[id.0].state
        else {
            return;
        };
        let (end, mut failure) = (end.clone(), failure.clone());
        if let Some(holder) = holder {
            failure.hint = Some(crate::failure::port_hint(failure.port, Some(&holder)));
        }
        self.concluded(id, end, failure);
    }

    fn concluded(&mut self, id: UnitId, end: FinishEnd, failure: Failure) {
        let failure = self.record_failure(id, failure);
        match end {
            FinishEnd::Run { ending, then } => self.complete_run(id, ending, then, Some(failure)),
            FinishEnd::BeginFailed { why } => {
                self.enter(id, UnitState::Inactive(Outcome::Failed));
                self.publish(id, Some(format!("{why} ({})", failure.summary())));
            }
        }
    }

    /// Keeps `failure` as the unit's last, and says it in the log and the journal.
    fn record_failure(&mut self, id: UnitId, failure: Failure) -> Failure {
        let mut said = format!("failure class: {}", failure.class);
        if let Some(line) = &failure.line {
            said.push_str(&format!(" ({line})"));
        }
        self.note(id, &said);
        self.slots[id.0].failure = Some(failure.clone());
        let detail = match (&failure.line, &failure.hint) {
            (Some(line), _) => format!("{}: {line}", failure.class),
            (None, Some(hint)) => format!("{}: {hint}", failure.class),
            (None, None) => failure.class.to_string(),
        };
        self.emit(id, EventKind::Failure, Some(detail));
        failure
    }

    fn complete_run(&mut self, id: UnitId, ending: RunEnd, then: Then, failure: Option<Failure>) {
        // The exit status says it all for these; other classes name their cause next to it.
        let told = |described: String| match &failure {
            Some(f) if !matches!(f.class, FailureClass::Unknown | FailureClass::Killed) => {
                format!("{described} ({})", f.summary())
            }
            _ => described,
        };
        self.out.push(Effect::EndRun { unit: id });
        let now = self.now.at;
        let s = &mut self.slots[id.0];
        s.abort_sent = false;
        let ran_for = s.run_started.take().map(|t| now.saturating_duration_since(t)).unwrap_or_default();
        let service = Arc::clone(&s.unit);
        let service = &service.service;
        let clean = ending.is_clean_with(&service.success_exit);
        if ran_for >= BACKOFF_RESET_AFTER {
            s.consecutive_failures = 0;
        }
        let shutting_down = self.shutdown.is_some();
        match then {
            Then::Up => {
                self.enter(id, UnitState::Inactive(Outcome::Stopped));
                self.publish(id, Some("restarting".into()));
                let _ = self.request_start(id, true);
            }
            Then::Down => {
                if clean {
                    self.enter(id, UnitState::Inactive(Outcome::Stopped));
                    self.publish(id, None);
                } else {
                    self.enter(id, UnitState::Inactive(Outcome::Error));
                    self.publish(id, Some(told(ending.describe())));
                }
            }
            Then::Policy
                if !shutting_down
                    && should_restart(service, &ending)
                    && failure.as_ref().is_some_and(|f| f.class.restart_cannot_fix()) =>
            {
                // Another run would end the same way: say why now instead of burning the start limit.
                let detail = format!("{}; not restarting", told(ending.describe()));
                self.enter(id, UnitState::Inactive(Outcome::Failed));
                self.note(id, &detail);
                self.publish(id, Some(detail));
            }
            Then::Policy if !shutting_down && should_restart(service, &ending) => {
                if service.restart_mode_normal {
                    // RestartMode=normal: through failed (error) or stopped first, as systemd 254 shows it, so
                    // OnFailure=/OnSuccess= run and what is bound to the unit stops; then the restart.
                    let s = &mut self.slots[id.0];
                    s.announced = if clean { Status::Stopped } else { Status::Error };
                    s.detail = Some(told(ending.describe()));
                    self.emit(id, EventKind::State, Some(told(ending.describe())));
                }
                let s = &mut self.slots[id.0];
                let delay = restart_delay(service, s.consecutive_failures);
                s.consecutive_failures = s.consecutive_failures.saturating_add(1);
                s.restarts += 1;
                self.enter(id, UnitState::Backoff);
                let detail = format!("{}; restarting in {:.1}s", told(ending.describe()), delay.as_secs_f64());
                self.note(id, &detail);
                self.publish(id, Some(detail));
                self.arm(id, TimerKind::RestartDue, delay);
            }
            Then::Policy => {
                if clean {
                    let oneshot = self.slots[id.0].unit.service.service_type == ServiceType::Oneshot;
                    let outcome =
                        if oneshot && ending != RunEnd::Requested { Outcome::Finished } else { Outcome::Stopped };
                    self.enter(id, UnitState::Inactive(outcome));
                    self.publish(id, Some(ending.describe()));
                } else {
                    self.enter(id, UnitState::Inactive(Outcome::Error));
                    self.publish(id, Some(told(ending.describe())));
                }
            }
        }
    }

    // ---- exits, timers, probes -------------------------------------------

    fn on_exit(&mut self, pid: i32, status: ExitStatus) {
        let Some((id, role)) = self
            .slots
            .iter()
            .enumerate()
            .find_map(|(i, s)| s.children.iter().find(|(p, _)| *p == pid).map(|(_, role)| (UnitId(i), *role)))
        else {
            return;
        };
        self.slots[id.0].children.retain(|(p, _)| *p != pid);
        let state = self.slots[id.0].state.clone();
        match (role, state) {
            (Role::Main, UnitState::Running { pid: main, .. }) if main == pid => {
                let service = &self.slots[id.0].unit.service;
                if service.exit_type_cgroup && RunEnd::Exited(status).is_clean_with(&service.success_exit) {
                    // ExitType=cgroup: the run lasts while any process of the unit is left.
                    self.note(id, &format!("main process {status}; ExitType=cgroup: active while its processes last"));
                    self.without_main(id, Some(status), None);
                } else {
                    self.run_ended(id, RunEnd::Exited(status))
                }
            }
            (Role::Main, UnitState::Starting(StartStep::Oneshot { index, pid: current })) if current == pid => {
                let service = &self.slots[id.0].unit.service;
                let command = service
                    .exec_start
                    .iter()
                    .chain(&service.exec_start_more)
                    .chain(&service.exec_start_post)
                    .nth(index);
                if status.success() || command.is_some_and(|c| c.ignore_failure) {
                    self.run_oneshot_command(id, index + 1);
                } else {
                    self.run_ended(id, RunEnd::Exited(status));
                }
            }
            (Role::Main, UnitState::Starting(StartStep::Forking { pid: current })) if current == pid => {
                let service = &self.slots[id.0].unit.service;
                if status.success() && service.pid_file.is_none() && !service.guess_main_pid {
                    let why = "GuessMainPID=no and no PIDFile=: no main process".to_string();
                    self.without_main(id, None, Some(why));
                } else if status.success() {
                    self.slots[id.0].state = UnitState::Starting(StartStep::PidFile);
                    self.out.push(Effect::ReadPidFile { unit: id });
                } else {
                    self.run_ended(id, RunEnd::Exited(status));
                }
            }
            (Role::Main, UnitState::Stopping(stop)) if stop.main == Some(pid) => self.main_stopped(id, stop, status),
            (Role::Pre, UnitState::Starting(StartStep::Pre { index, pid: current })) if current == pid => {
                let service = &self.slots[id.0].unit.service;
                let conditions = service.exec_condition.len();
                if index < conditions && !status.success() {
                    self.condition_failed(id, index, status);
                    return;
                }
                let command = service.exec_condition.iter().chain(&service.exec_start_pre).nth(index);
                let ignore = index >= conditions && command.is_some_and(|c| c.ignore_failure);
                if status.success() || ignore {
                    self.run_pre_or_main(id, index + 1);
                } else {
                    self.run_ended(id, RunEnd::PreFailed(status));
                }
            }
            (Role::Stop, UnitState::Stopping(Stop { stage: StopStage::Command { index, pid: current }, .. }))
                if current == pid =>
            {
                if !status.success() {
                    self.emit(id, EventKind::Error, Some(format!("ExecStop {status}")));
                }
                self.run_stop_command(id, index + 1);
            }
            (Role::Reload, _) => self.reload_exited(id, pid, status),
            // A pre-start or stop command that outlived its step (a stop interrupted it): one less to wait for.
            (Role::Post, UnitState::Running { .. } | UnitState::Cgroup { .. })
                if self.slots[id.0].post.is_some_and(|(_, p)| p == Some(pid)) =>
            {
                self.post_exited(id, status)
            }
            (Role::StopPost, UnitState::Stopping(stop)) if stop.post.is_some() => {
                let service = &self.slots[id.0].unit.service;
                let index = stop.post.unwrap_or(1).saturating_sub(1);
                if !status.success() && !service.exec_stop_post.get(index).is_some_and(|c| c.ignore_failure) {
                    self.emit(id, EventKind::Error, Some(format!("ExecStopPost {status}")));
                }
                self.run_stop_post(id);
            }
            (Role::Pre | Role::Stop | Role::Post | Role::StopPost, _) => self.check_drained(id),
            (Role::Main, _) => {}
        }
    }

    /// The main process of a stopping unit ended: a signal we sent reads as a stop, not a crash.
    fn main_stopped(&mut self, id: UnitId, mut stop: Stop, status: ExitStatus) {
        stop.main = None;
        let sent = self.signals_sent(id, &stop.stage);
        let mut described = describe_stop_exit(status, &sent);
        if stop.stage == (StopStage::Draining { sigkill_sent: true })
            && status == (ExitStatus::Signaled { signal: libc::SIGKILL, core_dumped: false })
        {
            // Normal, but worth knowing: it did not stop within TimeoutStopSec.
            described.push_str(" after TimeoutStopSec");
        }
        let s = &mut self.slots[id.0];
        s.state = UnitState::Stopping(stop);
        s.last_exit = Some(described.clone());
        self.note(id, &format!("main process {described}"));
        self.check_drained(id);
    }

    fn reload_exited(&mut self, id: UnitId, pid: i32, status: ExitStatus) {
        let s = &mut self.slots[id.0];
        if s.reload.as_ref().and_then(|job| job.pid) != Some(pid) {
            return;
        }
        let Some(job) = s.reload.take() else { return };
        let ignore = s.unit.service.exec_reload.get(job.index).is_some_and(|c| c.ignore_failure);
        if status.success() || ignore {
            self.run_reload_command(id, job.index + 1, job.reply);
            return;
        }
        let why = format!("ExecReload {status}");
        self.emit(id, EventKind::Error, Some(why.clone()));
        if let Some(to) = job.reply {
            let unit = self.slots[id.0].unit.name.clone();
            let error = CommandError::Refused { unit, action: "reload", why };
            self.out.push(Effect::Reply { to, result: Err(error) });
        }
    }

    /// sd_notify: READY=1 makes a notify service started, STATUS= is its
    /// detail, WATCHDOG=1 re-arms WatchdogSec=, MAINPID= names another of
    /// our processes as the main one.
    fn on_notify(&mut self, id: UnitId, message: &str, sender: Sender) {
        let notice = super::notify::Notice::parse(message);
        let s = &self.slots[id.0];
        let access = s.unit.service.notify_access.unwrap_or(NotifyAccess::Main);
        let main = s.state.main_pid();
        let ours = |pid: i32| Some(pid) == main || s.children.iter().any(|(child, _)| *child == pid);
        let allowed = match (access, sender.pid) {
            (NotifyAccess::None, _) | (_, None) => false,
            (NotifyAccess::Main, Some(pid)) => Some(pid) == main,
            (NotifyAccess::Exec, Some(pid)) => ours(pid),
            (NotifyAccess::All, Some(pid)) => sender.member || ours(pid),
        };
        if !allowed {
            let who = sender.pid.map_or("an unknown sender".to_string(), |pid| format!("pid {pid}"));
            let text = format!("notification from {who} ignored: NotifyAccess={} allows it not", access_name(access));
            self.out.push(Effect::Warn { unit: id, text });
            return;
        }
        if let Some(more) = notice.extend_timeout {
            self.extend_timeout(id, more);
        }
        let s = &mut self.slots[id.0];
        let UnitState::Running { pid, .. } = &mut s.state else { return };
        let watchdog = s.unit.service.watchdog;
        if let Some(new) = notice.main_pid.filter(|new| new != pid) {
            if s.children.iter().any(|(child, _)| *child == new) {
                for child in s.children.iter_mut().filter(|(child, _)| *child == new) {
                    child.1 = Role::Main;
                }
                *pid = new;
            } else {
                let text = format!("MAINPID={new} ignored: aikore follows only processes it started");
                self.note(id, &text);
            }
        }
        let s = &mut self.slots[id.0];
        let notifies = s.unit.service.service_type.notifies();
        let UnitState::Running { ready, .. } = &mut s.state else { return };
        let became_ready = notice.ready && *ready != Readiness::Ready && notifies && s.post.is_none();
        let posts = !s.unit.service.exec_start_post.is_empty();
        if became_ready && !posts {
            *ready = Readiness::Ready;
        }
        let reloaded = notice.ready && !became_ready && s.reloading;
        if notice.reloading {
            s.reloading = true;
        } else if notice.ready {
            s.reloading = false;
        }
        let detail = match (&notice.status, notice.stopping) {
            (_, true) => Some("stopping (STOPPING=1)".to_string()),
            (Some(text), false) => Some(text.clone()),
            (None, false) if notice.reloading => Some("reloading (RELOADING=1)".to_string()),
            (None, false) if became_ready || reloaded => None,
            (None, false) => s.detail.clone(),
        };
        if became_ready || reloaded || notice.reloading || notice.status.is_some() || notice.stopping {
            self.publish(id, detail);
        }
        if reloaded {
            self.emit(id, EventKind::Info, Some("reloaded (READY=1 after RELOADING=1)".into()));
        }
        if became_ready && posts {
            self.run_post(id, 0);
        }
        if notice.watchdog_trigger {
            self.watchdog_fired(id);
            return;
        }
        if let (Some(after), true) = (watchdog, notice.watchdog || became_ready) {
            self.arm(id, TimerKind::Watchdog, after);
        }
    }

    fn arm_runtime_max(&mut self, id: UnitId) {
        let s = &self.slots[id.0];
        if let Some(max) = s.unit.service.runtime_max {
            // RuntimeRandomizedExtraSec=: the run's share was drawn at begin-run.
            let extra = s.prepared.runtime_extra;
            self.arm(id, TimerKind::RuntimeMax, max + extra);
        }
    }

    /// EXTEND_TIMEOUT_USEC=: the start (not ready yet) or the stop under way
    /// may run `more` from now, even past TimeoutStartSec=/TimeoutStopSec=.
    fn extend_timeout(&mut self, id: UnitId, more: Duration) {
        let kind = match &self.slots[id.0].state {
            UnitState::Running { ready: Readiness::Waiting, .. } | UnitState::Starting(_) => TimerKind::StartTimeout,
            UnitState::Stopping(Stop {
                stage: StopStage::Draining { sigkill_sent: false } | StopStage::Command { .. },
                ..
            }) => TimerKind::StopTimeout,
            _ => return,
        };
        self.note(id, &format!("EXTEND_TIMEOUT_USEC: {kind:?} extended to {:.1}s from now", more.as_secs_f64()));
        self.arm(id, kind, more);
    }

    /// A forking service's main pid is known (or cannot be trusted): it is started, or the run ends.
    fn on_pid_file(&mut self, id: UnitId, result: Result<i32, PidFileError>) {
        if self.slots[id.0].state != UnitState::Starting(StartStep::PidFile) {
            return;
        }
        match result {
            Ok(pid) => {
                let s = &mut self.slots[id.0];
                // Adopted: its exit (we are its subreaper) ends the run as a main process's does.
                s.children.push((pid, Role::Main));
                self.enter(id, UnitState::Running { pid, ready: Readiness::Waiting });
                self.arm_runtime_max(id);
                self.note(id, &format!("main pid {pid} (forked)"));
                self.run_post(id, 0);
            }
            // The epoch stays that of the start, so TimeoutStartSec= still bounds the wait.
            Err(PidFileError::NotYet) => self.arm(id, TimerKind::PidFileRetry, PID_FILE_RETRY),
            Err(PidFileError::Refused(why)) => self.run_ended(id, RunEnd::SpawnFailed(why)),
            Err(PidFileError::NoMain(why)) => self.without_main(id, None, Some(why)),
        }
    }

    /// Active without a main process (GuessMainPID=, ExitType=cgroup): the
    /// run ends once no process of the unit is left, which is asked now and
    /// at every drain hint.
    fn without_main(&mut self, id: UnitId, exited: Option<ExitStatus>, why: Option<String>) {
        // A forking service's ExecStartPost= runs once it counts as started, main pid or not.
        let posts = exited.is_none() && !self.slots[id.0].unit.service.exec_start_post.is_empty();
        self.enter(id, UnitState::Cgroup { exited, ready: !posts });
        if let Some(why) = &why {
            self.note(id, &format!("{why}; active while any of its processes is left"));
        }
        self.publish(id, why.map(|w| format!("{w}: active while its processes last")));
        self.out.push(Effect::CheckDrained { unit: id });
        if posts {
            self.run_post(id, 0);
        }
    }

    /// OOMPolicy=: what the kernel's OOM killer killing a process of the
    /// unit does to it. `kills` counts this run's OOM kills so far.
    fn on_oom(&mut self, id: UnitId, kills: u64) {
        let s = &mut self.slots[id.0];
        if kills <= s.oom_seen || s.state.is_inactive() {
            return;
        }
        let new = kills - s.oom_seen;
        s.oom_seen = kills;
        let policy = s.unit.service.oom_policy;
        let ending = matches!(s.state, UnitState::Stopping(_) | UnitState::Finishing(_));
        self.note(
            id,
            &format!("the kernel's OOM killer killed {new} process(es) of this unit; OOMPolicy={}", policy.as_str()),
        );
        match policy {
            OomPolicy::Continue => {}
            OomPolicy::Kill => {
                // What memory.oom.group=1 makes the kernel do, done here too where it could not be set.
                self.out.push(Effect::Signal { target: Target::Unit(id), signal: Signal::SIGKILL });
                self.check_drained(id);
            }
            OomPolicy::Stop if ending => {}
            OomPolicy::Stop => {
                self.request_stop(id);
                if let UnitState::Stopping(stop) = &mut self.slots[id.0].state {
                    // Restart= decides, as after any failure; the result is oom-kill.
                    stop.ending = RunEnd::OomKill;
                    stop.then = Then::Policy;
                }
            }
        }
    }

    /// StopWhenUnneeded=yes: an active unit no active unit needs any more
    /// (Requires=, Requisite=, Wants=, BindsTo=, Upholds=) is stopped, as
    /// systemd does. One enabled under a target counts as needed by it
    /// (aikore's targets are reached at boot and never left).
    fn stop_unneeded(&mut self) {
        if self.shutdown.is_some() {
            return;
        }
        let unneeded: Vec<UnitId> = self
            .index
            .values()
            .copied()
            .filter(|id| {
                let s = &self.slots[id.0];
                let unit = &s.unit;
                let active = matches!(
                    s.state,
                    UnitState::Running { ready: Readiness::Ready, .. }
                        | UnitState::Remaining
                        | UnitState::Cgroup { ready: true, .. }
                );
                let by_target = unit.starts_at_boot
                    && unit.install.wanted_by.iter().chain(&unit.install.required_by).any(|t| t.ends_with(".target"));
                unit.relations.stop_when_unneeded && active && !by_target
            })
            .filter(|id| {
                let name = &self.slots[id.0].unit.name;
                !self.index.values().any(|other| {
                    let o = &self.slots[other.0];
                    let r = &o.unit.relations;
                    let pins = [&o.unit.requires, &o.unit.wants, &r.requisite, &r.binds_to, &r.upholds]
                        .iter()
                        .any(|list| list.contains(name));
                    other != id && pins && !o.state.is_inactive()
                })
            })
            .collect();
        for id in unneeded {
            self.note(id, "no active unit needs it any more (StopWhenUnneeded=yes); stopping it");
            self.request_stop(id);
        }
    }

    /// PropagatesReloadTo= (and ReloadPropagatedFrom=): the units a reload
    /// of `id` reaches are reloaded too, if they are active and can reload;
    /// in turn their own, once each.
    fn propagate_reload(&mut self, id: UnitId) {
        let mut done = vec![id];
        let mut todo: Vec<UnitId> = vec![id];
        while let Some(from) = todo.pop() {
            let from_name = self.slots[from.0].unit.name.clone();
            for name in self.slots[from.0].unit.relations.propagates_reload_to.clone() {
                let Some(to) = self.id(&name) else { continue };
                if done.contains(&to) || self.slots[to.0].state.status() != Status::Started {
                    continue;
                }
                done.push(to);
                match self.request_reload(to, None) {
                    Ok(()) => {
                        self.note(to, &format!("reloaded with {from_name} (PropagatesReloadTo=)"));
                        todo.push(to);
                    }
                    Err(e) => self.note(to, &format!("reload propagated from {from_name} not done: {e}")),
                }
            }
        }
    }

    /// A `Type=dbus` service's name: owned makes a starting one started;
    /// released stops a running one, as systemd does (a clean end:
    /// `Restart=always` or `on-success` bring it back, `on-failure` does not).
    fn on_bus(&mut self, id: UnitId, epoch: Epoch, event: BusEvent) {
        let s = &self.slots[id.0];
        if s.epoch != epoch {
            return;
        }
        let UnitState::Running { pid, ready } = s.state else { return };
        let name = s.unit.service.bus_name.clone().unwrap_or_default();
        match event {
            BusEvent::Owned if ready == Readiness::Waiting && s.post.is_none() => {
                self.note(id, &format!("{name} appeared on the system bus"));
                self.run_post(id, 0);
            }
            BusEvent::Unreachable(why) if ready == Readiness::Waiting => {
                self.note(id, &format!("waiting for {name}: {why}"));
                self.publish(id, Some(format!("waiting for {name}: the system bus is unreachable")));
            }
            BusEvent::Unreachable(why) => self.note(id, &format!("no longer watching {name}: {why}")),
            BusEvent::Released if ready == Readiness::Ready => {
                self.enter(
                    id,
                    UnitState::Stopping(Stop {
                        stage: StopStage::WaitOrder,
                        main: Some(pid),
                        ending: RunEnd::Requested,
                        then: Then::Policy,
                        escalated: false,
                        remained: false,
                        post: None,
                    }),
                );
                self.note(id, &format!("{name} was released on the system bus; stopping it"));
                self.publish(id, Some(format!("{name} released; stopping it")));
                self.begin_stop(id);
            }
            _ => {}
        }
    }

    /// No WATCHDOG=1 in time: the run ends like a crash, killed with
    /// SIGABRT (systemd's WatchdogSignal= default, for a core dump), and
    /// Restart= decides (on-failure and on-abnormal restart it).
    fn watchdog_fired(&mut self, id: UnitId) {
        let UnitState::Running { pid, .. } = self.slots[id.0].state else { return };
        let signal = Signal::try_from(self.slots[id.0].unit.service.watchdog_signal).unwrap_or(Signal::SIGABRT);
        self.note(id, &format!("watchdog timeout: no WATCHDOG=1 within WatchdogSec=; sending {}", signal.as_str()));
        self.enter(
            id,
            UnitState::Stopping(Stop {
                stage: StopStage::Draining { sigkill_sent: false },
                main: Some(pid),
                ending: RunEnd::Watchdog,
                then: Then::Policy,
                escalated: false,
                remained: false,
                post: None,
            }),
        );
        self.publish(id, Some("watchdog timeout".into()));
        self.out.push(Effect::Signal { target: Target::Unit(id), signal });
        self.out.push(Effect::Signal { target: Target::Unit(id), signal: Signal::SIGCONT });
        let service = &self.slots[id.0].unit.service;
        // TimeoutAbortSec= bounds this stop when set (a core dump may take longer than a stop).
        if let Some(timeout) = service.timeout_abort.unwrap_or(service.timeout_stop) {
            self.arm(id, TimerKind::StopTimeout, timeout);
        }
        self.out.push(Effect::CheckDrained { unit: id });
    }

    fn on_ready(&mut self, id: UnitId, epoch: Epoch) {
        let s = &mut self.slots[id.0];
        if s.epoch != epoch {
            return;
        }
        if let UnitState::Running { ready: Readiness::Waiting | Readiness::Stalled, .. } = s.state {
            if s.post.is_none() {
                self.run_post(id, 0);
            }
        }
    }

    fn on_timer(&mut self, id: UnitId, kind: TimerKind) {
        let s = &mut self.slots[id.0];
        match (kind, &mut s.state) {
            (TimerKind::RestartDue, UnitState::Backoff) => {
                self.enter(id, UnitState::WaitDeps { fresh: false });
                self.publish(id, Some("restarting".into()));
            }
            (TimerKind::Watchdog, UnitState::Running { .. }) => self.watchdog_fired(id),
            (TimerKind::Stall, UnitState::Running { ready: ready @ Readiness::Waiting, .. }) => {
                *ready = Readiness::Stalled;
                self.publish(id, Some("no answer on its port yet".into()));
            }
            (TimerKind::StartTimeout, UnitState::Running { pid, ready: Readiness::Waiting })
                if s.unit.service.timeout_start_failure_mode != TimeoutMode::Terminate =>
            {
                let pid = *pid;
                self.timed_out_start(id, Some(pid));
            }
            (TimerKind::StartTimeout, UnitState::Running { pid, ready: Readiness::Waiting }) => {
                let pid = *pid;
                self.stop_for(id, pid, RunEnd::StartTimeout, "not ready within TimeoutStartSec; stopping it");
            }
            (TimerKind::RuntimeMax, UnitState::Running { pid, .. }) => {
                let pid = *pid;
                self.stop_for(id, pid, RunEnd::RuntimeMax, "ran longer than RuntimeMaxSec; stopping it");
            }
            (TimerKind::PidFileRetry, UnitState::Starting(StartStep::PidFile)) => {
                self.out.push(Effect::ReadPidFile { unit: id });
            }
            (
                TimerKind::StartTimeout,
                UnitState::Starting(
                    StartStep::Pre { .. } | StartStep::Oneshot { .. } | StartStep::Forking { .. } | StartStep::PidFile,
                ),
            ) => {
                // Half-started: nothing depends on it yet, so no ordering or ExecStop= to go through.
                let starter = match &s.state {
                    UnitState::Starting(
                        StartStep::Pre { pid, .. } | StartStep::Oneshot { pid, .. } | StartStep::Forking { pid },
                    ) => Some(*pid),
                    _ => None,
                };
                let signal = match timeout_signal(&s.unit, s.unit.service.timeout_start_failure_mode) {
                    Some(signal) => signal,
                    None => kill_signal(&s.unit),
                };
                if s.unit.service.timeout_start_failure_mode != TimeoutMode::Terminate {
                    if let Some(pid) = starter {
                        self.out.push(Effect::Signal { target: Target::Group(pid), signal });
                    }
                    self.timed_out_start(id, None);
                    return;
                }
                s.state = UnitState::Stopping(Stop {
                    stage: StopStage::Draining { sigkill_sent: false },
                    main: None,
                    ending: RunEnd::StartTimeout,
                    then: Then::Policy,
                    escalated: false,
                    remained: false,
                    post: None,
                });
                self.note(id, "not started within TimeoutStartSec; stopping it");
                self.publish(id, Some("not started within TimeoutStartSec; stopping it".into()));
                if let Some(pid) = starter {
                    self.out.push(Effect::Signal { target: Target::Group(pid), signal });
                }
                self.bump_epoch(id);
                self.send_kill_signal(id, false);
            }
            (TimerKind::StopTimeout, UnitState::Stopping(_)) if !s.unit.service.send_sigkill => {
                // SendSIGKILL=no: what is left keeps running, unsupervised, as systemd leaves it.
                self.note(id, "still running after TimeoutStopSec; SendSIGKILL=no, so it is left running");
                self.emit(
                    id,
                    EventKind::Error,
                    Some("processes left running after TimeoutStopSec (SendSIGKILL=no)".into()),
                );
                self.slots[id.0].children.retain(|(_, role)| *role == Role::Reload);
                if let UnitState::Stopping(stop) = &mut self.slots[id.0].state {
                    stop.main = None;
                }
                self.finish_run(id);
            }
            (TimerKind::StopTimeout, UnitState::Stopping(stop)) => match stop.stage {
                StopStage::SpawnCmd { .. } | StopStage::Command { .. } => {
                    // TimeoutStopFailureMode=: terminate sends KillSignal= and waits TimeoutStopSec again
                    // (systemd), abort WatchdogSignal=, kill SIGKILL at once.
                    let mode = s.unit.service.timeout_stop_failure_mode;
                    self.note(id, "ExecStop timed out");
                    match mode {
                        TimeoutMode::Terminate => self.send_kill_signal(id, false),
                        TimeoutMode::Abort => self.abort_stop(id),
                        TimeoutMode::Kill => self.escalate(id),
                    }
                }
                StopStage::Draining { sigkill_sent: false }
                    if s.unit.service.timeout_stop_failure_mode == TimeoutMode::Abort && !s.abort_sent =>
                {
                    self.note(id, "still running after TimeoutStopSec; TimeoutStopFailureMode=abort");
                    self.abort_stop(id);
                }
                StopStage::Draining { sigkill_sent: false } => {
                    self.note(id, "still running after TimeoutStopSec; sending SIGKILL");
                    self.escalate(id);
                }
                StopStage::Draining { sigkill_sent: true } => {
                    // Unkillable (D state): give up waiting rather than hang shutdown forever.
                    self.emit(id, EventKind::Error, Some("processes survived SIGKILL; giving up on them".into()));
                    self.slots[id.0].children.clear();
                    self.finish_run(id);
                }
                StopStage::WaitOrder | StopStage::Exited => {}
            },
            _ => {}
        }
    }

    /// A start that timed out, by TimeoutStartFailureMode=abort (WatchdogSignal=,
    /// bounded by TimeoutAbortSec=) or kill (SIGKILL): straight to signals, as systemd.
    fn timed_out_start(&mut self, id: UnitId, main: Option<i32>) {
        let service = &self.slots[id.0].unit.service;
        let mode = service.timeout_start_failure_mode;
        let signal = timeout_signal(&self.slots[id.0].unit, mode).unwrap_or(Signal::SIGKILL);
        let timeout = if mode == TimeoutMode::Kill {
            Some(KILL_GRACE)
        } else {
            service.timeout_abort.unwrap_or(service.timeout_stop)
        };
        let killed = mode == TimeoutMode::Kill;
        self.enter(
            id,
            UnitState::Stopping(Stop {
                stage: StopStage::Draining { sigkill_sent: killed },
                main,
                ending: RunEnd::StartTimeout,
                then: Then::Policy,
                escalated: killed,
                remained: false,
                post: None,
            }),
        );
        let how = if killed {
            "killing it (TimeoutStartFailureMode=kill)"
        } else {
            "aborting it (TimeoutStartFailureMode=abort)"
        };
        self.note(id, &format!("not started within TimeoutStartSec; {how}"));
        self.publish(id, Some(format!("not started within TimeoutStartSec; {how}")));
        self.out.push(Effect::Signal { target: Target::Unit(id), signal });
        self.out.push(Effect::Signal { target: Target::Unit(id), signal: Signal::SIGCONT });
        if let Some(timeout) = timeout {
            self.arm(id, TimerKind::StopTimeout, timeout);
        }
        self.out.push(Effect::CheckDrained { unit: id });
    }

    /// TimeoutStopFailureMode=abort: WatchdogSignal= to the unit, then after
    /// TimeoutAbortSec= (TimeoutStopSec= when unset) the final kill.
    fn abort_stop(&mut self, id: UnitId) {
        let s = &mut self.slots[id.0];
        s.abort_sent = true;
        let signal = timeout_signal(&s.unit, TimeoutMode::Abort).unwrap_or(Signal::SIGABRT);
        let timeout = s.unit.service.timeout_abort.unwrap_or(s.unit.service.timeout_stop);
        if let UnitState::Stopping(stop) = &mut s.state {
            stop.stage = StopStage::Draining { sigkill_sent: false };
        }
        self.out.push(Effect::Signal { target: Target::Unit(id), signal });
        self.out.push(Effect::Signal { target: Target::Unit(id), signal: Signal::SIGCONT });
        if let Some(timeout) = timeout {
            self.arm(id, TimerKind::StopTimeout, timeout);
        }
        self.check_drained(id);
    }

    /// A running unit's own rule ends it (a timeout, RuntimeMaxSec=): the
    /// ordered stop with ExecStop=, then Restart= decides.
    fn stop_for(&mut self, id: UnitId, pid: i32, ending: RunEnd, why: &str) {
        let stop = Stop {
            stage: StopStage::WaitOrder,
            main: Some(pid),
            ending,
            then: Then::Policy,
            escalated: false,
            remained: false,
            post: None,
        };
        self.enter(id, UnitState::Stopping(stop));
        self.note(id, why);
        self.publish(id, Some(why.to_string()));
        self.begin_stop(id);
    }

    fn escalate(&mut self, id: UnitId) {
        let s = &self.slots[id.0];
        let signal = final_kill_signal(&s.unit);
        let target = match (&s.state, s.unit.service.kill_mode) {
            // KillMode=process: the final signal too goes to the main process alone.
            (UnitState::Stopping(Stop { main: Some(pid), .. }), KillMode::Process) => Target::Process(*pid),
            _ => Target::Unit(id),
        };
        self.out.push(Effect::Signal { target, signal });
        if let UnitState::Stopping(stop) = &mut self.slots[id.0].state {
            stop.escalated = true;
            stop.stage = StopStage::Draining { sigkill_sent: true };
        }
        if let Some(job) = self.shutdown.as_mut() {
            job.sigkilled = true;
        }
        self.arm(id, TimerKind::StopTimeout, KILL_GRACE);
        self.check_drained(id);
    }

    // ---- helpers ---------------------------------------------------------

    /// The signals a stop in `stage` has sent the unit: KillSignal once
    /// draining, SIGKILL after escalation, and while ExecStop runs whatever a
    /// stop command conventionally sends (it may send any of them).
    fn signals_sent(&self, id: UnitId, stage: &StopStage) -> Vec<Signal> {
        let unit = &self.slots[id.0].unit;
        let kill = kill_signal(unit);
        match stage {
            StopStage::Draining { sigkill_sent } => {
                let mut sent = vec![kill, stop_signal(unit, Then::Up)];
                if unit.service.send_sighup {
                    sent.push(Signal::SIGHUP);
                }
                if *sigkill_sent {
                    sent.extend([Signal::SIGKILL, final_kill_signal(unit)]);
                }
                sent
            }
            StopStage::SpawnCmd { .. } | StopStage::Command { .. } => {
                use Signal::*;
                vec![kill, SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGKILL]
            }
            _ => Vec::new(),
        }
    }

    /// Environment for ExecStop=/ExecReload=: the run's plus $MAINPID, as systemd gives.
    fn command_env(&self, id: UnitId) -> Vec<(String, String)> {
        let s = &self.slots[id.0];
        let mut env = s.prepared.env.clone();
        if let Some(pid) = s.state.main_pid() {
            env.push(("MAINPID".into(), pid.to_string()));
        }
        env
    }

    fn bump_epoch(&mut self, id: UnitId) {
        self.last_epoch += 1;
        self.slots[id.0].epoch = self.last_epoch;
    }

    /// A new state whose timers start afresh.
    fn enter(&mut self, id: UnitId, state: UnitState) {
        self.slots[id.0].state = state;
        self.bump_epoch(id);
    }

    /// TimeoutStartSec= from now, or what is left of it when the start's
    /// ExecStartPre= commands already began it.
    fn arm_start_timeout(&mut self, id: UnitId, timeout: Duration) {
        let s = &self.slots[id.0];
        let at = s.start_deadline.unwrap_or(self.now.at + timeout);
        self.out.push(Effect::ArmTimer { unit: id, kind: TimerKind::StartTimeout, at, epoch: s.epoch });
    }

    fn arm(&mut self, id: UnitId, kind: TimerKind, after: Duration) {
        let epoch = self.slots[id.0].epoch;
        self.out.push(Effect::ArmTimer { unit: id, kind, at: self.now.at + after, epoch });
    }

    fn note(&mut self, id: UnitId, text: &str) {
        self.out.push(Effect::Note { unit: id, text: format!("[aikore] {text}") });
    }

    /// Tells subscribers the unit's (derived) status with `detail`, if either changed.
    fn publish(&mut self, id: UnitId, detail: Option<String>) {
        let s = &mut self.slots[id.0];
        let status = s.state.status();
        let changed = s.announced != status || s.detail != detail;
        if s.announced != status {
            s.since_ms = self.now.wall_ms;
        }
        s.announced = status;
        s.detail = detail.clone();
        if changed {
            self.emit(id, EventKind::State, detail);
        }
    }

    fn emit(&mut self, id: UnitId, event: EventKind, detail: Option<String>) {
        self.last_seq += 1;
        let s = &mut self.slots[id.0];
        s.seq = self.last_seq;
        self.out.push(Effect::Emit(UnitEvent {
            seq: s.seq,
            port: s.prepared.port,
            ts_ms: self.now.wall_ms,
            unit: s.unit.name.clone(),
            kind: s.unit.kind,
            event,
            status: s.announced,
            detail,
            pid: s.state.main_pid(),
            restarts: s.restarts,
            since_ms: s.since_ms,
            started_ms: s.started_ms,
            last_exit: s.last_exit.clone(),
            failure: s.failure.clone(),
        }));
    }
}
