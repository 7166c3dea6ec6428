//! The supervisor task: the only code that changes a unit's state.
//!
//! Each unit has a [`Runtime`] whose `phase` says what the engine is waiting
//! for (dependencies, a pre-start command, the main process, a stop command,
//! processes to die). Timers and readiness probes carry the phase `epoch` they
//! were armed in, so one that fires after the phase moved on is ignored.
//!
//! Timers are entries in one queue the run loop sleeps on, not tasks. Nothing
//! is polled: a draining unit is checked when one of its processes exits or
//! the OS side sends a [`DrainHint`] (its cgroup emptied, an orphan was
//! reaped), and TimeoutStopSec is its one timer.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::Instant;

use super::ready;
use super::state::{backoff_delay, should_restart, RunEnd, StartLimit, Status, BACKOFF_RESET_AFTER};
use super::{
    Command, CommandError, DrainHint, ExitReport, Prepared, ProcessControl, Reply, Role, ShutdownReport, UnitEvent,
    UnitSnapshot,
};
use crate::clock::now_ms;
use crate::failure::{classify, Failure, FailureClass};
use crate::init::ExitStatus;
use crate::units::{KillMode, Unit, UnitKind};

/// After SIGKILL, how long to wait for processes to vanish before giving up on
/// them (a process in uninterruptible sleep cannot die until its I/O returns).
const KILL_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TimerKind {
    RestartDue,
    StartTimeout,
    Stall,
    StopTimeout,
    Ready,
}

/// One input of the run loop besides exits and hints (which are batched).
enum Input {
    Tick(Tick),
    Timers,
    Command(Command),
}

#[derive(Debug)]
struct Tick {
    unit: String,
    epoch: u64,
    kind: TimerKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Idle,
    /// A start job queued behind ordering (After=/Before=, services before instances).
    WaitDeps,
    Pre {
        index: usize,
        pid: i32,
    },
    Running {
        pid: i32,
    },
    Backoff,
    /// A stop job queued until the units ordered after this one are down.
    StopWaitOrder,
    StopCmd {
        index: usize,
        pid: i32,
    },
    /// Signals sent; waiting for every process to be gone.
    Draining {
        sigkill_sent: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Goal {
    Up,
    Down,
    /// Down, then up again (a restart while running).
    Restart,
}

struct ReloadJob {
    index: usize,
    pid: i32,
    reply: Option<Reply<()>>,
}

struct Runtime {
    unit: Arc<Unit>,
    /// Set when the unit cannot run at all (part of an ordering cycle).
    invalid: Option<String>,
    /// Removed from disk: dropped as soon as it is inactive.
    removed: bool,
    status: Status,
    detail: Option<String>,
    phase: Phase,
    goal: Goal,
    epoch: u64,
    main_pid: Option<i32>,
    prepared: Prepared,
    /// Why the current run is ending, decided at the first cause (a stop
    /// request, an exit, a timeout) and kept through the drain.
    ending: Option<RunEnd>,
    /// This run's log starts fresh (a user or boot start) rather than continuing (a restart).
    fresh_start: bool,
    restarts: u32,
    consecutive_failures: u32,
    start_limit: StartLimit,
    run_started: Option<Instant>,
    since_ms: i64,
    started_ms: Option<i64>,
    last_exit: Option<String>,
    /// Why the last run ended badly; cleared by a user's (fresh) start.
    failure: Option<Failure>,
    /// A stop of this unit needed SIGKILL (makes shutdown unclean).
    needed_sigkill: bool,
    reload: Option<ReloadJob>,
    probe: Option<tokio::task::AbortHandle>,
    /// The `seq` of the last event emitted for this unit (0: none yet), so a
    /// snapshot tells a reader which events it already reflects.
    seq: u64,
}

impl Runtime {
    fn new(unit: Arc<Unit>) -> Runtime {
        Runtime {
            unit,
            invalid: None,
            removed: false,
            status: Status::Stopped,
            detail: None,
            phase: Phase::Idle,
            goal: Goal::Down,
            epoch: 0,
            main_pid: None,
            prepared: Prepared::default(),
            ending: None,
            fresh_start: true,
            restarts: 0,
            consecutive_failures: 0,
            start_limit: StartLimit::default(),
            run_started: None,
            since_ms: now_ms(),
            started_ms: None,
            last_exit: None,
            failure: None,
            needed_sigkill: false,
            reload: None,
            probe: None,
            seq: 0,
        }
    }

    /// Part of a start job that dependents must wait for.
    fn is_starting_job(&self) -> bool {
        match self.phase {
            Phase::WaitDeps | Phase::Pre { .. } | Phase::Backoff => true,
            Phase::Running { .. } => self.status == Status::Starting,
            _ => false,
        }
    }

    fn is_stopping_job(&self) -> bool {
        matches!(self.phase, Phase::StopWaitOrder | Phase::StopCmd { .. })
            || (matches!(self.phase, Phase::Draining { .. }) && self.goal != Goal::Up)
    }
}

/// `a` must be up before `b` starts, and `b` down before `a` stops.
fn ordered_before(a: &Unit, b: &Unit) -> bool {
    b.after.contains(&a.name)
        || a.before.contains(&b.name)
        // Instances run on the services (NGINX, ...), never the other way round.
        || (a.kind == UnitKind::Service && b.kind == UnitKind::Instance)
}

pub struct Engine<C: ProcessControl> {
    ctl: C,
    units: BTreeMap<String, Runtime>,
    /// Which unit and command each live pid of ours belongs to.
    pids: HashMap<i32, (String, Role)>,
    events: broadcast::Sender<UnitEvent>,
    /// Readiness probes (tasks) report here.
    ticks_tx: mpsc::UnboundedSender<Tick>,
    ticks_rx: mpsc::UnboundedReceiver<Tick>,
    /// Armed timers by deadline; the sequence number keeps equal deadlines in arming order.
    timers: BTreeMap<(Instant, u64), Tick>,
    timer_seq: u64,
    shutdown: Option<oneshot::Sender<ShutdownReport>>,
    shutting_down: bool,
    /// The last `seq` handed out. One counter for all units, so a unit removed
    /// and re-added under the same name never repeats a number a page has seen.
    last_seq: u64,
}

impl<C: ProcessControl> Engine<C> {
    pub fn new(ctl: C, units: Vec<Unit>, events: broadcast::Sender<UnitEvent>) -> Engine<C> {
        let (ticks_tx, ticks_rx) = mpsc::unbounded_channel();
        let mut engine = Engine {
            ctl,
            units: BTreeMap::new(),
            pids: HashMap::new(),
            events,
            ticks_tx,
            ticks_rx,
            timers: BTreeMap::new(),
            timer_seq: 0,
            shutdown: None,
            shutting_down: false,
            last_seq: 0,
        };
        engine.apply_units(units);
        engine
    }

    /// Runs until a shutdown completed (or every command sender is gone).
    /// `hints` comes from the [`ProcessControl`]'s side (see [`DrainHint`]).
    pub async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut exits: mpsc::UnboundedReceiver<ExitReport>,
        mut hints: mpsc::UnboundedReceiver<DrainHint>,
    ) {
        // Once every sender is gone during a shutdown, stop polling the closed
        // channel (it would answer None at once, forever) and finish the stops.
        let mut commands_open = true;
        let mut batch_exits: Vec<ExitReport> = Vec::new();
        let mut pending_hints: Vec<DrainHint> = Vec::new();
        loop {
            let next_timer = self.timers.keys().next().map(|(at, _)| *at);
            // Only received here; handled below, after the exits.
            let input = tokio::select! {
                biased;
                Some(exit) = exits.recv() => {
                    batch_exits.push(exit);
                    None
                }
                Some(hint) = hints.recv() => {
                    pending_hints.push(hint);
                    None
                }
                Some(tick) = self.ticks_rx.recv() => Some(Input::Tick(tick)),
                _ = tokio::time::sleep_until(next_timer.unwrap_or_else(Instant::now)), if next_timer.is_some() => {
                    Some(Input::Timers)
                }
                command = commands.recv(), if commands_open => match command {
                    Some(command) => Some(Input::Command(command)),
                    None if self.shutting_down => {
                        commands_open = false;
                        None
                    }
                    None => return,
                },
            };
            // What already arrived joins this batch (100 units ending together
            // cost one check each and share one /proc sweep), and every exit
            // goes first: a sweep taken while handling the batch is then newer
            // than every exit in it, so it never shows a process whose end was
            // already handled (that end would wake nobody again).
            while let Ok(exit) = exits.try_recv() {
                batch_exits.push(exit);
            }
            while let Ok(hint) = hints.try_recv() {
                pending_hints.push(hint);
            }
            for (pid, status) in std::mem::take(&mut batch_exits) {
                self.on_exit(pid, status);
            }
            match input {
                Some(Input::Tick(tick)) => self.on_tick(tick),
                Some(Input::Timers) => self.fire_due_timers(),
                Some(Input::Command(command)) => self.on_command(command),
                None => {}
            }
            self.on_hints(std::mem::take(&mut pending_hints));
            self.advance();
            self.ctl.batch_done();
            if self.shutting_down && self.units.values().all(|rt| rt.phase == Phase::Idle) {
                if let Some(reply) = self.shutdown.take() {
                    let clean = self.units.values().all(|rt| !rt.needed_sigkill);
                    let _ = reply.send(ShutdownReport { clean });
                    return;
                }
            }
        }
    }

    fn fire_due_timers(&mut self) {
        let now = Instant::now();
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let tick = entry.remove();
            self.on_tick(tick);
        }
    }

    /// A hint names a unit whose cgroup emptied, or (`Any`) says an orphan
    /// was reaped: then every draining unit is checked once.
    fn on_hints(&mut self, hints: Vec<DrainHint>) {
        if hints.is_empty() {
            return;
        }
        let names: Vec<String> = if hints.contains(&DrainHint::Any) {
            self.units
                .values()
                .filter(|rt| matches!(rt.phase, Phase::Draining { .. }))
                .map(|rt| rt.unit.name.clone())
                .collect()
        } else {
            let mut names: Vec<String> =
                hints.into_iter().filter_map(|h| if let DrainHint::Unit(n) = h { Some(n) } else { None }).collect();
            names.sort();
            names.dedup();
            names
        };
        for name in names {
            self.check_drained(&name);
        }
    }

    // ---- commands -------------------------------------------------------

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Start { unit, reply } => {
                let result = self.request_start(&unit, true).map(|_| self.status_of(&unit));
                let _ = reply.send(result);
            }
            Command::Stop { unit, reply } => {
                let result = self.request_stop(&unit).map(|_| self.status_of(&unit));
                let _ = reply.send(result);
            }
            Command::Restart { unit, reply } => {
                let _ = reply.send(self.request_restart(&unit).map(|_| self.status_of(&unit)));
            }
            Command::Reload { unit, reply } => self.request_reload(&unit, reply),
            Command::SetUnits { units, reply } => {
                self.apply_units(units);
                let _ = reply.send(Ok(()));
            }
            Command::StartAll { reply } => {
                let result = self.start_all();
                let _ = reply.send(result);
            }
            Command::Snapshot { reply } => {
                let _ = reply.send(self.snapshot());
            }
            Command::Shutdown { reply } => {
                self.shutdown = Some(reply);
                self.begin_shutdown();
            }
            Command::ResetFailed { unit, reply } => {
                let _ = reply.send(self.reset_failed(&unit));
            }
            Command::KillAll => {
                let names: Vec<String> = self.units.keys().cloned().collect();
                for name in names {
                    if self.units[&name].phase != Phase::Idle {
                        self.ctl.signal_unit(&name, libc::SIGKILL);
                        if let Some(rt) = self.units.get_mut(&name) {
                            rt.needed_sigkill = true;
                        }
                    }
                }
            }
        }
    }

    fn reset_failed(&mut self, name: &str) -> Result<Status, CommandError> {
        let rt = self.lookup(name)?;
        if rt.phase == Phase::Idle && matches!(rt.status, Status::Failed | Status::Error) {
            if let Some(rt) = self.units.get_mut(name) {
                rt.start_limit.reset();
                rt.consecutive_failures = 0;
                rt.failure = None;
            }
            self.set_status(name, Status::Stopped, Some("failed state reset".into()));
        }
        Ok(self.status_of(name))
    }

    fn status_of(&self, unit: &str) -> Status {
        self.units.get(unit).map(|rt| rt.status).unwrap_or(Status::Stopped)
    }

    fn lookup(&self, unit: &str) -> Result<&Runtime, CommandError> {
        self.units.get(unit).ok_or_else(|| CommandError::NoSuchUnit(unit.to_string()))
    }

    fn start_all(&mut self) -> Result<(), CommandError> {
        let wanted: Vec<String> = self
            .units
            .values()
            .filter(|rt| rt.invalid.is_none())
            .filter(|rt| match &rt.unit.instance {
                None => rt.unit.starts_at_boot,
                Some(instance) => instance.autostart,
            })
            .map(|rt| rt.unit.name.clone())
            .collect();
        for name in wanted {
            if let Err(e) = self.request_start(&name, true) {
                tracing::warn!(unit = %name, error = %e, "boot start refused");
            }
        }
        Ok(())
    }

    fn request_start(&mut self, name: &str, fresh: bool) -> Result<(), CommandError> {
        if self.shutting_down {
            return Err(CommandError::ShuttingDown);
        }
        let rt = self.lookup(name)?;
        if let Some(why) = &rt.invalid {
            return Err(CommandError::Refused { unit: name.into(), action: "start", why: why.clone() });
        }
        match rt.phase {
            Phase::Idle | Phase::Backoff => {}
            Phase::StopWaitOrder | Phase::StopCmd { .. } | Phase::Draining { .. } => {
                // Finish stopping first, then come back up.
                let rt = self.units.get_mut(name).expect("looked up above");
                if rt.goal == Goal::Down {
                    rt.goal = Goal::Restart;
                }
                return Ok(());
            }
            _ => return Ok(()),
        }
        let deps: Vec<String> = rt.unit.requires.iter().chain(&rt.unit.wants).cloned().collect();
        let rt = self.units.get_mut(name).expect("looked up above");
        rt.goal = Goal::Up;
        rt.fresh_start = fresh;
        if fresh {
            // A user's start is a new attempt: forget the previous crash loop.
            rt.start_limit.reset();
            rt.restarts = 0;
            rt.consecutive_failures = 0;
            rt.failure = None;
        }
        self.set_phase(name, Phase::WaitDeps);
        self.set_status(name, Status::Starting, Some("waiting for dependencies".into()));
        for dep in deps {
            // A dependency on its way down comes back up once stopped (its goal becomes Restart).
            let wanted = |d: &Runtime| d.phase == Phase::Idle || (d.is_stopping_job() && !d.removed);
            if self.units.get(&dep).is_some_and(|d| wanted(d) && d.invalid.is_none()) {
                let _ = self.request_start(&dep, true);
            }
        }
        Ok(())
    }

    fn request_stop(&mut self, name: &str) -> Result<(), CommandError> {
        let rt = self.lookup(name)?;
        match rt.phase {
            Phase::Idle => return Ok(()),
            Phase::WaitDeps | Phase::Backoff => {
                self.set_phase(name, Phase::Idle);
                if let Some(rt) = self.units.get_mut(name) {
                    rt.goal = Goal::Down;
                }
                self.set_status(name, Status::Stopped, Some("stopped".into()));
                return Ok(());
            }
            Phase::StopWaitOrder | Phase::StopCmd { .. } | Phase::Draining { .. } => {
                if let Some(rt) = self.units.get_mut(name) {
                    rt.goal = Goal::Down;
                }
                return Ok(());
            }
            Phase::Pre { pid, .. } => {
                // Half-started: nothing depends on it yet, so no ordering to wait for.
                let signal = rt.unit.service.kill_signal;
                if let Some(rt) = self.units.get_mut(name) {
                    rt.goal = Goal::Down;
                    rt.ending.get_or_insert(RunEnd::Requested);
                }
                self.set_status(name, Status::Stopping, None);
                self.ctl.signal_group(pid, signal);
                self.send_kill_signal(name);
                return Ok(());
            }
            Phase::Running { .. } => {}
        }
        // Units that require this one cannot keep running without it.
        let dependents: Vec<String> = self
            .units
            .values()
            .filter(|d| d.unit.requires.iter().any(|r| r == name) && d.phase != Phase::Idle)
            .map(|d| d.unit.name.clone())
            .collect();
        let rt = self.units.get_mut(name).expect("looked up above");
        rt.goal = Goal::Down;
        rt.ending.get_or_insert(RunEnd::Requested);
        self.set_phase(name, Phase::StopWaitOrder);
        self.set_status(name, Status::Stopping, None);
        for dependent in dependents {
            let _ = self.request_stop(&dependent);
        }
        Ok(())
    }

    fn request_restart(&mut self, name: &str) -> Result<(), CommandError> {
        if self.shutting_down {
            return Err(CommandError::ShuttingDown);
        }
        let rt = self.lookup(name)?;
        match rt.phase {
            Phase::Idle | Phase::Backoff | Phase::WaitDeps => {
                if rt.phase == Phase::WaitDeps {
                    return Ok(());
                }
                self.request_start(name, true)
            }
            _ => {
                let stopping_before: Vec<String> =
                    self.units.values().filter(|rt| rt.is_stopping_job()).map(|rt| rt.unit.name.clone()).collect();
                self.request_stop(name)?;
                // The stop took down the units that require this one; as in systemd they come back too.
                for rt in self.units.values_mut() {
                    if rt.is_stopping_job() && rt.goal == Goal::Down && !stopping_before.contains(&rt.unit.name) {
                        rt.goal = Goal::Restart;
                    }
                }
                if let Some(rt) = self.units.get_mut(name) {
                    rt.goal = Goal::Restart;
                }
                Ok(())
            }
        }
    }

    fn request_reload(&mut self, name: &str, reply: Reply<()>) {
        let rt = match self.lookup(name) {
            Ok(rt) => rt,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        let refuse = |why: &str| CommandError::Refused { unit: name.into(), action: "reload", why: why.into() };
        if rt.unit.service.exec_reload.is_empty() {
            let _ = reply.send(Err(refuse("it has no ExecReload=")));
            return;
        }
        if !matches!(rt.phase, Phase::Running { .. }) {
            let _ = reply.send(Err(refuse(&format!("it is {}", rt.status))));
            return;
        }
        if rt.reload.is_some() {
            let _ = reply.send(Err(refuse("a reload is already running")));
            return;
        }
        self.run_reload_command(name, 0, Some(reply));
    }

    fn run_reload_command(&mut self, name: &str, index: usize, reply: Option<Reply<()>>) {
        let Some(rt) = self.units.get(name) else { return };
        let unit = Arc::clone(&rt.unit);
        let Some(command) = unit.service.exec_reload.get(index) else {
            if let Some(reply) = reply {
                let _ = reply.send(Ok(()));
            }
            self.emit(name, "info", Some("reloaded".into()));
            return;
        };
        let env = self.command_env(name);
        match self.ctl.spawn(&unit, Role::Reload, command, &env) {
            Ok(pid) => {
                self.pids.insert(pid, (name.to_string(), Role::Reload));
                if let Some(rt) = self.units.get_mut(name) {
                    rt.reload = Some(ReloadJob { index, pid, reply });
                }
            }
            Err(why) => {
                let message = format!("ExecReload could not start: {why}");
                self.emit(name, "error", Some(message.clone()));
                if let Some(reply) = reply {
                    let _ =
                        reply.send(Err(CommandError::Refused { unit: name.into(), action: "reload", why: message }));
                }
            }
        }
    }

    fn apply_units(&mut self, units: Vec<Unit>) {
        let mut incoming: BTreeMap<String, Arc<Unit>> =
            units.into_iter().map(|u| (u.name.clone(), Arc::new(u))).collect();
        let names: Vec<String> = self.units.keys().cloned().collect();
        for name in names {
            match incoming.remove(&name) {
                Some(unit) => {
                    let rt = self.units.get_mut(&name).expect("listed above");
                    if *rt.unit != *unit {
                        rt.unit = unit;
                        rt.removed = false;
                        let note = if rt.phase == Phase::Idle {
                            "definition changed"
                        } else {
                            "definition changed; restart to apply"
                        };
                        self.emit(&name, "config", Some(note.into()));
                    }
                }
                None => {
                    if let Some(rt) = self.units.get_mut(&name) {
                        rt.removed = true;
                    }
                    let _ = self.request_stop(&name);
                    self.emit(&name, "config", Some("unit file removed".into()));
                }
            }
        }
        for (name, unit) in incoming {
            self.units.insert(name.clone(), Runtime::new(unit));
            self.emit(&name, "config", Some("unit added".into()));
        }
        self.mark_cycles();
        self.drop_removed();
    }

    /// Units on an ordering cycle cannot be started in any order: refuse them, naming the cycle.
    fn mark_cycles(&mut self) {
        let all: Vec<Unit> = self.units.values().map(|rt| (*rt.unit).clone()).collect();
        let cycle = crate::units::find_cycle(&all);
        for rt in self.units.values_mut() {
            rt.invalid = cycle
                .as_ref()
                .filter(|c| c.contains(&rt.unit.name))
                .map(|c| format!("ordering cycle: {}", c.join(" -> ")));
        }
    }

    fn drop_removed(&mut self) {
        self.units.retain(|_, rt| !(rt.removed && rt.phase == Phase::Idle));
    }

    fn begin_shutdown(&mut self) {
        self.shutting_down = true;
        // `clean` is about this shutdown: a SIGKILL in an earlier, finished stop does not count.
        for rt in self.units.values_mut().filter(|rt| rt.phase == Phase::Idle) {
            rt.needed_sigkill = false;
        }
        let names: Vec<String> = self.units.keys().cloned().collect();
        for name in names {
            let _ = self.request_stop(&name);
        }
    }

    fn snapshot(&self) -> Vec<UnitSnapshot> {
        self.units
            .values()
            .map(|rt| UnitSnapshot {
                name: rt.unit.name.clone(),
                kind: rt.unit.kind,
                description: rt.unit.description.clone(),
                status: rt.status,
                detail: rt.detail.clone(),
                pid: rt.main_pid,
                restarts: rt.restarts,
                since_ms: rt.since_ms,
                started_ms: rt.started_ms,
                last_exit: rt.last_exit.clone(),
                failure: rt.failure.clone(),
                path: rt.unit.path.display().to_string(),
                port: rt.prepared.port,
                app_port: rt.prepared.app_port,
                vnc_port: rt.prepared.vnc_port,
                seq: rt.seq,
                unit: Arc::clone(&rt.unit),
            })
            .collect()
    }

    // ---- the job queue -------------------------------------------------

    /// Lets queued start and stop jobs proceed once their ordering allows,
    /// until nothing more can move.
    fn advance(&mut self) {
        loop {
            let mut moved = false;
            let waiting_start: Vec<String> =
                self.units.values().filter(|rt| rt.phase == Phase::WaitDeps).map(|rt| rt.unit.name.clone()).collect();
            for name in waiting_start {
                moved |= self.try_begin_start(&name);
            }
            let waiting_stop: Vec<String> = self
                .units
                .values()
                .filter(|rt| rt.phase == Phase::StopWaitOrder)
                .map(|rt| rt.unit.name.clone())
                .collect();
            for name in waiting_stop {
                let unit = Arc::clone(&self.units[&name].unit);
                let blocked = self.units.values().any(|other| {
                    other.unit.name != name && ordered_before(&unit, &other.unit) && other.is_stopping_job()
                });
                if !blocked {
                    self.begin_stop(&name);
                    moved = true;
                }
            }
            if !moved {
                break;
            }
        }
        self.drop_removed();
    }

    fn try_begin_start(&mut self, name: &str) -> bool {
        let unit = Arc::clone(&self.units[name].unit);
        for dep in &unit.requires {
            let why = match self.units.get(dep) {
                None => Some(format!("requires {dep}, which does not exist")),
                Some(d) if matches!(d.status, Status::Error | Status::Failed) => {
                    Some(format!("dependency {dep} failed"))
                }
                Some(d) if d.phase == Phase::Idle => Some(format!("required unit {dep} is not running")),
                _ => None,
            };
            if let Some(why) = why {
                self.set_phase(name, Phase::Idle);
                self.set_status(name, Status::Failed, Some(why));
                return true;
            }
        }
        // As in systemd, a stop job of a unit ordered before this one also goes first.
        let blocked = self.units.values().any(|other| {
            other.unit.name != name
                && ordered_before(&other.unit, &unit)
                && (other.is_starting_job() || other.is_stopping_job())
        });
        if blocked {
            return false;
        }
        self.begin_start(name);
        true
    }

    /// One start attempt: start limit, log rotation, leases, then the first command.
    fn begin_start(&mut self, name: &str) {
        let now = Instant::now();
        let unit = Arc::clone(&self.units[name].unit);
        if let Some(why) = self.ctl.unmet_condition(&unit) {
            if let Some(rt) = self.units.get_mut(name) {
                rt.goal = Goal::Down;
            }
            self.set_phase(name, Phase::Idle);
            self.set_status(name, Status::Stopped, Some(format!("skipped: {why}")));
            return;
        }
        let rt = self.units.get_mut(name).expect("caller checked");
        if !rt.start_limit.try_start(now, unit.start_limit_interval, unit.start_limit_burst) {
            let why = format!(
                "start limit hit: more than {} starts within {:?} (StartLimitBurst=, StartLimitIntervalSec=)",
                unit.start_limit_burst, unit.start_limit_interval
            );
            rt.goal = Goal::Down;
            self.set_phase(name, Phase::Idle);
            self.ctl.note(name, &format!("[aikore] {why}"));
            self.set_status(name, Status::Failed, Some(why));
            return;
        }
        rt.ending = None;
        rt.needed_sigkill = false;
        let fresh = std::mem::replace(&mut rt.fresh_start, false);
        match self.ctl.begin_run(&unit, fresh) {
            Ok(prepared) => self.units.get_mut(name).expect("exists").prepared = prepared,
            Err(why) => {
                self.set_phase(name, Phase::Idle);
                // aikore's own reason may tell a class (an instance's port found taken).
                let evidence = crate::failure::Evidence { lines: vec![why.clone()], ..Default::default() };
                let failure = classify(&evidence, &[]);
                let detail = if failure.class == FailureClass::Unknown {
                    why
                } else {
                    let failure = self.record_failure(name, failure);
                    format!("{why} ({})", failure.summary())
                };
                self.set_status(name, Status::Failed, Some(detail));
                return;
            }
        }
        self.run_pre_or_main(name, 0);
    }

    fn run_pre_or_main(&mut self, name: &str, index: usize) {
        let unit = Arc::clone(&self.units[name].unit);
        let env = self.units[name].prepared.env.clone();
        if let Some(command) = unit.service.exec_start_pre.get(index) {
            self.set_status(
                name,
                Status::Starting,
                Some(format!("ExecStartPre {}/{}", index + 1, unit.service.exec_start_pre.len())),
            );
            match self.ctl.spawn(&unit, Role::Pre, command, &env) {
                Ok(pid) => {
                    self.pids.insert(pid, (name.to_string(), Role::Pre));
                    self.set_phase(name, Phase::Pre { index, pid });
                }
                Err(why) => self.run_ended(name, RunEnd::SpawnFailed(why)),
            }
            return;
        }
        let default = self.units[name].prepared.default_exec_start.clone();
        let Some(mut command) = unit.service.exec_start.clone().or(default) else {
            self.run_ended(name, RunEnd::SpawnFailed("no ExecStart= and no default for this unit".into()));
            return;
        };
        let wrapper = &self.units[name].prepared.main_wrapper;
        if !wrapper.is_empty() {
            command.argv.splice(0..0, wrapper.iter().cloned());
        }
        match self.ctl.spawn(&unit, Role::Main, &command, &env) {
            Ok(pid) => {
                self.pids.insert(pid, (name.to_string(), Role::Main));
                let rt = self.units.get_mut(name).expect("exists");
                rt.main_pid = Some(pid);
                rt.run_started = Some(Instant::now());
                rt.started_ms = Some(now_ms());
                let ready = rt.prepared.ready.clone();
                self.set_phase(name, Phase::Running { pid });
                self.ctl.note(name, &format!("[aikore] started {}, pid {pid}", command.argv.join(" ")));
                match ready {
                    None => self.set_status(name, Status::Started, None),
                    Some(target) => {
                        self.set_status(name, Status::Starting, Some("waiting for readiness".into()));
                        self.start_probe(name, target);
                        if let Some(instance) = &unit.instance {
                            self.arm(name, TimerKind::Stall, instance.stall_after);
                        } else if let Some(timeout) = unit.service.timeout_start {
                            self.arm(name, TimerKind::StartTimeout, timeout);
                        }
                    }
                }
            }
            Err(why) => self.run_ended(name, RunEnd::SpawnFailed(why)),
        }
    }

    fn start_probe(&mut self, name: &str, target: super::ReadyTarget) {
        let epoch = self.units[name].epoch;
        let ticks = self.ticks_tx.clone();
        let unit = name.to_string();
        let task = tokio::spawn(async move {
            ready::wait_ready(&target).await;
            let _ = ticks.send(Tick { unit, epoch, kind: TimerKind::Ready });
        });
        if let Some(rt) = self.units.get_mut(name) {
            rt.probe = Some(task.abort_handle());
        }
    }

    /// Moves a unit towards down: ExecStop, then the kill signal per KillMode.
    fn begin_stop(&mut self, name: &str) {
        if self.units[name].main_pid.is_some() {
            self.run_stop_command(name, 0);
        } else {
            self.send_kill_signal(name);
        }
    }

    fn run_stop_command(&mut self, name: &str, index: usize) {
        let unit = Arc::clone(&self.units[name].unit);
        let main_alive = self.units[name].main_pid.is_some();
        if let (true, Some(command)) = (main_alive, unit.service.exec_stop.get(index)) {
            let env = self.command_env(name);
            match self.ctl.spawn(&unit, Role::Stop, command, &env) {
                Ok(pid) => {
                    self.pids.insert(pid, (name.to_string(), Role::Stop));
                    let first = index == 0;
                    self.set_phase(name, Phase::StopCmd { index, pid });
                    if first {
                        if let Some(timeout) = unit.service.timeout_stop {
                            self.arm(name, TimerKind::StopTimeout, timeout);
                        }
                    }
                    return;
                }
                Err(why) => self.emit(name, "error", Some(format!("ExecStop could not start: {why}"))),
            }
        }
        self.send_kill_signal(name);
    }

    fn send_kill_signal(&mut self, name: &str) {
        let rt = &self.units[name];
        let signal = rt.unit.service.kill_signal;
        match (rt.unit.service.kill_mode, rt.main_pid) {
            (KillMode::ControlGroup, _) => self.ctl.signal_unit(name, signal),
            (KillMode::ProcessGroup, Some(pid)) => self.ctl.signal_group(pid, signal),
            (KillMode::Mixed | KillMode::Process, Some(pid)) => self.ctl.signal_process(pid, signal),
            (_, None) => self.ctl.signal_unit(name, signal),
        }
        // Stopped (SIGSTOP'd) processes would never see the signal.
        if signal != libc::SIGKILL {
            self.ctl.signal_unit(name, libc::SIGCONT);
        }
        let had_timer = matches!(self.units[name].phase, Phase::StopCmd { .. });
        self.begin_drain(name);
        if !had_timer {
            if let Some(timeout) = self.units[name].unit.service.timeout_stop {
                self.arm(name, TimerKind::StopTimeout, timeout);
            }
        }
    }

    fn begin_drain(&mut self, name: &str) {
        let keep_timer = matches!(self.units[name].phase, Phase::StopCmd { .. });
        if keep_timer {
            // The stop timer armed with ExecStop keeps running: same phase epoch.
            if let Some(rt) = self.units.get_mut(name) {
                rt.phase = Phase::Draining { sigkill_sent: false };
            }
        } else {
            self.set_phase(name, Phase::Draining { sigkill_sent: false });
        }
        self.check_drained(name);
    }

    /// Finishes the run once the main process is reaped and no process of the unit is left.
    fn check_drained(&mut self, name: &str) {
        let Some(rt) = self.units.get(name) else { return };
        if !matches!(rt.phase, Phase::Draining { .. }) {
            return;
        }
        let busy_pids = self.pids.values().any(|(u, role)| u == name && *role != Role::Reload);
        // Asked before looking, so an end between the look and the wait still wakes us.
        self.ctl.watch_drain(name);
        let live = self.ctl.live_processes(name);
        let main_gone = !busy_pids && rt.main_pid.is_none();
        if main_gone
            && live > 0
            && rt.unit.service.kill_mode == KillMode::Mixed
            && rt.phase == (Phase::Draining { sigkill_sent: false })
        {
            // KillMode=mixed: once the main process is gone, the rest get SIGKILL at once (systemd).
            self.ctl.signal_unit(name, libc::SIGKILL);
            if let Some(rt) = self.units.get_mut(name) {
                rt.phase = Phase::Draining { sigkill_sent: true };
            }
        }
        if busy_pids || live > 0 {
            // The next exit of ours or DrainHint checks again; TimeoutStopSec bounds the wait.
            return;
        }
        self.finish_run(name);
    }

    /// Classifies a run that ended badly by itself (an exit or a failed
    /// ExecStartPre), while its cgroup and log are still there to ask; records
    /// it and says so in the log and the journal.
    fn classify_end(&mut self, name: &str) -> Option<Failure> {
        let rt = &self.units[name];
        let ending = rt.ending.as_ref()?;
        let mut evidence = match ending {
            RunEnd::Exited(status) | RunEnd::PreFailed(status) if !ending.is_clean() => {
                let status = *status;
                let mut evidence = self.ctl.failure_evidence(name);
                (evidence.code, evidence.signal) = match status {
                    ExitStatus::Exited { code } => (Some(code), None),
                    ExitStatus::Signaled { signal, .. } => (None, Some(signal)),
                };
                evidence
            }
            // aikore's own reason tells (an instance's port found taken before the fork).
            RunEnd::SpawnFailed(why) => crate::failure::Evidence { lines: vec![why.clone()], ..Default::default() },
            _ => return None,
        };
        let rt = &self.units[name];
        // The port the app itself binds (behind NGINX in port mode) is the one it found taken; a
        // service's is the one its ReadyCheck= probes.
        let probed = rt.prepared.ready.as_ref().map(|target| match target {
            super::ReadyTarget::Tcp { port, .. } | super::ReadyTarget::Http { port, .. } => *port,
        });
        evidence.port = rt.prepared.app_port.or(rt.prepared.port).or(probed);
        let failure = classify(&evidence, &rt.prepared.failure_patterns);
        Some(self.record_failure(name, failure))
    }

    /// Keeps `failure` as the unit's last, and says it in the log and the journal.
    fn record_failure(&mut self, name: &str, mut failure: Failure) -> Failure {
        if failure.class == FailureClass::PortInUse {
            if let Some(holder) = failure.port.and_then(|port| self.ctl.port_holder(port)) {
                failure.hint = Some(crate::failure::port_hint(failure.port, Some(&holder)));
            }
        }
        let mut said = format!("failure class: {}", failure.class);
        if let Some(line) = &failure.line {
            said.push_str(&format!(" ({line})"));
        }
        tracing::warn!(unit = %name, class = %failure.class, line = failure.line.as_deref().unwrap_or(""), "run failed");
        self.ctl.note(name, &format!("[aikore] {said}"));
        if let Some(rt) = self.units.get_mut(name) {
            rt.failure = Some(failure.clone());
        }
        let detail = match (&failure.line, &failure.hint) {
            (Some(line), _) => format!("{}: {line}", failure.class),
            (None, Some(hint)) => format!("{}: {hint}", failure.class),
            (None, None) => failure.class.to_string(),
        };
        self.emit(name, "failure", Some(detail));
        failure
    }

    fn finish_run(&mut self, name: &str) {
        let failure = self.classify_end(name);
        // The exit status says it all for these; other classes name their cause next to it.
        let told = |described: String| match &failure {
            Some(f) if !matches!(f.class, FailureClass::Unknown | FailureClass::Killed) => {
                format!("{described} ({})", f.summary())
            }
            _ => described,
        };
        self.ctl.end_run(name);
        let rt = self.units.get_mut(name).expect("exists");
        if let Some(probe) = rt.probe.take() {
            probe.abort();
        }
        rt.main_pid = None;
        let ending = rt.ending.take().unwrap_or(RunEnd::Requested);
        let ran_for = rt.run_started.take().map(|t| t.elapsed()).unwrap_or_default();
        let policy = rt.unit.service.restart;
        let restart_sec = rt.unit.service.restart_sec;
        let goal = rt.goal;
        if ran_for >= BACKOFF_RESET_AFTER {
            rt.consecutive_failures = 0;
        }
        self.set_phase(name, Phase::Idle);
        match goal {
            Goal::Restart => {
                let rt = self.units.get_mut(name).expect("exists");
                rt.goal = Goal::Down;
                self.set_status(name, Status::Stopped, Some("restarting".into()));
                let _ = self.request_start(name, true);
            }
            Goal::Down => {
                let (status, detail) = if ending.is_clean() || ending == RunEnd::Requested {
                    (Status::Stopped, None)
                } else {
                    (Status::Error, Some(told(ending.describe())))
                };
                self.set_status(name, status, detail);
            }
            Goal::Up
                if !self.shutting_down
                    && should_restart(policy, &ending)
                    && failure.as_ref().is_some_and(|f| f.class.restart_cannot_fix()) =>
            {
                // Another run would end the same way: say why now instead of burning the start limit.
                let rt = self.units.get_mut(name).expect("exists");
                rt.goal = Goal::Down;
                let detail = format!("{}; not restarting", told(ending.describe()));
                self.ctl.note(name, &format!("[aikore] {detail}"));
                self.set_status(name, Status::Failed, Some(detail));
            }
            Goal::Up if !self.shutting_down && should_restart(policy, &ending) => {
                let rt = self.units.get_mut(name).expect("exists");
                let delay = backoff_delay(restart_sec, rt.consecutive_failures);
                rt.consecutive_failures = rt.consecutive_failures.saturating_add(1);
                rt.restarts += 1;
                self.set_phase(name, Phase::Backoff);
                let detail = format!("{}; restarting in {:.1}s", told(ending.describe()), delay.as_secs_f64());
                self.ctl.note(name, &format!("[aikore] {detail}"));
                self.set_status(name, Status::Restarting, Some(detail));
                self.arm(name, TimerKind::RestartDue, delay);
            }
            Goal::Up => {
                let rt = self.units.get_mut(name).expect("exists");
                rt.goal = Goal::Down;
                let (status, detail) = if ending.is_clean() {
                    (Status::Stopped, Some(ending.describe()))
                } else {
                    (Status::Error, Some(told(ending.describe())))
                };
                self.set_status(name, status, detail);
            }
        }
    }

    /// A run ended by itself (exit, failed pre-start, timeout, spawn failure):
    /// record why, then make sure nothing of it is left.
    fn run_ended(&mut self, name: &str, ending: RunEnd) {
        let rt = self.units.get_mut(name).expect("exists");
        let described = ending.describe();
        rt.ending.get_or_insert(ending);
        rt.last_exit = Some(described.clone());
        self.ctl.note(name, &format!("[aikore] {described}"));
        self.emit(name, "exit", Some(described));
        let rt = &self.units[name];
        if self.ctl.live_processes(name) > 0 {
            let signal = rt.unit.service.kill_signal;
            // Say so while the leftovers are killed: the unit is no longer serving.
            self.set_status(name, Status::Stopping, Some("main process exited; stopping what it left".into()));
            self.ctl.signal_unit(name, signal);
            self.ctl.signal_unit(name, libc::SIGCONT);
            self.set_phase(name, Phase::Draining { sigkill_sent: false });
            if let Some(timeout) = self.units[name].unit.service.timeout_stop {
                self.arm(name, TimerKind::StopTimeout, timeout);
            }
            self.check_drained(name);
        } else {
            self.set_phase(name, Phase::Draining { sigkill_sent: false });
            self.check_drained(name);
        }
    }

    // ---- exits and timers ---------------------------------------------

    fn on_exit(&mut self, pid: i32, status: ExitStatus) {
        let Some((name, role)) = self.pids.remove(&pid) else { return };
        let Some(rt) = self.units.get(&name) else { return };
        match role {
            Role::Main => {
                if rt.main_pid != Some(pid) {
                    return;
                }
                let phase = rt.phase.clone();
                if let Some(rt) = self.units.get_mut(&name) {
                    rt.main_pid = None;
                }
                match phase {
                    Phase::Running { .. } => self.run_ended(&name, RunEnd::Exited(status)),
                    Phase::StopCmd { .. } | Phase::StopWaitOrder | Phase::Draining { .. } => {
                        let sent = self.signals_sent(&name, &phase);
                        let mut described = crate::supervisor::state::describe_stop_exit(status, &sent);
                        if phase == (Phase::Draining { sigkill_sent: true })
                            && status == (ExitStatus::Signaled { signal: libc::SIGKILL, core_dumped: false })
                        {
                            // Normal, but worth knowing: it did not stop within TimeoutStopSec.
                            described.push_str(" after TimeoutStopSec");
                        }
                        if let Some(rt) = self.units.get_mut(&name) {
                            rt.last_exit = Some(described.clone());
                        }
                        self.ctl.note(&name, &format!("[aikore] main process {described}"));
                        self.check_drained(&name);
                    }
                    _ => {}
                }
            }
            Role::Pre => {
                let Phase::Pre { index, pid: current } = rt.phase else {
                    self.check_drained(&name);
                    return;
                };
                if current != pid {
                    return;
                }
                let ignore = rt.unit.service.exec_start_pre.get(index).is_some_and(|c| c.ignore_failure);
                if status.success() || ignore {
                    self.run_pre_or_main(&name, index + 1);
                } else {
                    self.run_ended(&name, RunEnd::PreFailed(status));
                }
            }
            Role::Stop => {
                if let Phase::StopCmd { index, pid: current } = rt.phase {
                    if current == pid {
                        if !status.success() {
                            self.emit(&name, "error", Some(format!("ExecStop {status}")));
                        }
                        self.run_stop_command(&name, index + 1);
                        return;
                    }
                }
                self.check_drained(&name);
            }
            Role::Reload => {
                let current = self.units.get(&name).and_then(|rt| rt.reload.as_ref()).map(|job| job.pid);
                if current != Some(pid) {
                    return;
                }
                let Some(job) = self.units.get_mut(&name).and_then(|rt| rt.reload.take()) else { return };
                let ignore =
                    self.units[&name].unit.service.exec_reload.get(job.index).is_some_and(|c| c.ignore_failure);
                if status.success() || ignore {
                    self.run_reload_command(&name, job.index + 1, job.reply);
                } else {
                    let why = format!("ExecReload {status}");
                    self.emit(&name, "error", Some(why.clone()));
                    if let Some(reply) = job.reply {
                        let _ = reply.send(Err(CommandError::Refused { unit: name.clone(), action: "reload", why }));
                    }
                }
            }
        }
    }

    fn on_tick(&mut self, tick: Tick) {
        let Some(rt) = self.units.get(&tick.unit) else { return };
        if rt.epoch != tick.epoch {
            return;
        }
        let name = tick.unit;
        match tick.kind {
            TimerKind::RestartDue if rt.phase == Phase::Backoff => {
                self.set_phase(&name, Phase::WaitDeps);
                self.set_status(&name, Status::Starting, Some("restarting".into()));
            }
            TimerKind::Ready if matches!(rt.phase, Phase::Running { .. }) => {
                if let Some(rt) = self.units.get_mut(&name) {
                    rt.probe = None;
                }
                self.set_status(&name, Status::Started, None);
            }
            TimerKind::Stall if rt.status == Status::Starting && matches!(rt.phase, Phase::Running { .. }) => {
                self.set_status(&name, Status::Stalled, Some("no answer on its port yet".into()));
            }
            TimerKind::StartTimeout if rt.status == Status::Starting && matches!(rt.phase, Phase::Running { .. }) => {
                if let Some(rt) = self.units.get_mut(&name) {
                    rt.ending = Some(RunEnd::StartTimeout);
                }
                self.ctl.note(&name, "[aikore] not ready within TimeoutStartSec; stopping it");
                self.run_stop_command(&name, 0);
            }
            TimerKind::StopTimeout => match rt.phase {
                Phase::StopCmd { .. } => {
                    // ExecStop took all the time: go straight to the kill signal, then SIGKILL later.
                    self.ctl.note(&name, "[aikore] ExecStop timed out");
                    self.ctl.signal_unit(&name, libc::SIGKILL);
                    self.escalated(&name);
                }
                Phase::Draining { sigkill_sent: false } => {
                    self.ctl.note(&name, "[aikore] still running after TimeoutStopSec; sending SIGKILL");
                    self.ctl.signal_unit(&name, libc::SIGKILL);
                    self.escalated(&name);
                }
                Phase::Draining { sigkill_sent: true } => {
                    // Unkillable (D state): give up waiting rather than hang shutdown forever.
                    self.emit(&name, "error", Some("processes survived SIGKILL; giving up on them".into()));
                    self.pids.retain(|_, (u, _)| *u != name);
                    self.finish_run(&name);
                }
                _ => {}
            },
            _ => {}
        }
    }

    fn escalated(&mut self, name: &str) {
        if let Some(rt) = self.units.get_mut(name) {
            rt.needed_sigkill = true;
            rt.phase = Phase::Draining { sigkill_sent: true };
        }
        self.arm(name, TimerKind::StopTimeout, KILL_GRACE);
        self.check_drained(name);
    }

    // ---- helpers ---------------------------------------------------------

    /// The signals a stop in `phase` has sent the unit: KillSignal once
    /// draining, SIGKILL after escalation, and while ExecStop runs whatever a
    /// stop command conventionally sends (it may send any of them).
    fn signals_sent(&self, name: &str, phase: &Phase) -> Vec<i32> {
        let Some(rt) = self.units.get(name) else { return Vec::new() };
        let kill_signal = rt.unit.service.kill_signal;
        match phase {
            Phase::Draining { sigkill_sent } => {
                let mut sent = vec![kill_signal];
                if *sigkill_sent {
                    sent.push(libc::SIGKILL);
                }
                sent
            }
            Phase::StopCmd { .. } => {
                vec![kill_signal, libc::SIGTERM, libc::SIGINT, libc::SIGQUIT, libc::SIGHUP, libc::SIGKILL]
            }
            _ => Vec::new(),
        }
    }

    /// Environment for ExecStop=/ExecReload=: the run's plus $MAINPID, as systemd gives.
    fn command_env(&self, name: &str) -> Vec<(String, String)> {
        let rt = &self.units[name];
        let mut env = rt.prepared.env.clone();
        if let Some(pid) = rt.main_pid {
            env.push(("MAINPID".into(), pid.to_string()));
        }
        env
    }

    fn set_phase(&mut self, name: &str, phase: Phase) {
        if let Some(rt) = self.units.get_mut(name) {
            rt.phase = phase;
            rt.epoch += 1;
        }
    }

    fn arm(&mut self, name: &str, kind: TimerKind, after: Duration) {
        let epoch = self.units[name].epoch;
        // Timers of a phase that moved on can never fire usefully: drop them here, so the queue stays as
        // small as the number of live timers.
        self.timers.retain(|_, tick| tick.unit != name || tick.epoch == epoch);
        self.timer_seq += 1;
        self.timers.insert((Instant::now() + after, self.timer_seq), Tick { unit: name.to_string(), epoch, kind });
    }

    fn set_status(&mut self, name: &str, status: Status, detail: Option<String>) {
        let Some(rt) = self.units.get_mut(name) else { return };
        let changed = rt.status != status || rt.detail != detail;
        if rt.status != status {
            rt.since_ms = now_ms();
        }
        rt.status = status;
        rt.detail = detail.clone();
        if changed {
            tracing::info!(unit = %name, status = %status, detail = detail.as_deref().unwrap_or(""), "state");
            self.emit(name, "state", detail);
        }
    }

    fn emit(&mut self, name: &str, event: &'static str, detail: Option<String>) {
        let Some(rt) = self.units.get_mut(name) else { return };
        self.last_seq += 1;
        rt.seq = self.last_seq;
        let _ = self.events.send(UnitEvent {
            seq: rt.seq,
            port: rt.prepared.port,
            ts_ms: now_ms(),
            unit: name.to_string(),
            kind: rt.unit.kind,
            event,
            status: rt.status,
            detail,
            pid: rt.main_pid,
            restarts: rt.restarts,
            since_ms: rt.since_ms,
            started_ms: rt.started_ms,
            last_exit: rt.last_exit.clone(),
            failure: rt.failure.clone(),
        });
    }
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
