//! The supervisor task: the driver of the pure machine in [`super::machine`].
//!
//! It turns channel messages into [`Input`]s, applies the [`Effect`]s that
//! [`Units::step`] returns through [`ProcessControl`], and feeds the answer of
//! every effect that asks the OS something straight back as the next input
//! (depth first, so the machine sees the same order a direct call would give).
//! It owns the one timer queue the run loop sleeps on and the readiness
//! probes (tasks that report back), so the machine itself has no task, no
//! I/O and no clock.
//!
//! Nothing is polled: a draining unit is checked when one of its processes
//! exits or the OS side sends a [`DrainHint`] (its cgroup emptied, an orphan
//! was reaped), and TimeoutStopSec is its one timer.

use std::collections::{BTreeMap, HashMap};

use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::Instant;

use super::dbus::{self, BusEvent};
use super::machine::{Answer, Cmd, Effect, Epoch, Input, Now, ReplyTo, Sender, Target, TimerKind, UnitId, Units};
use super::spawner::{SpawnReport, Spawning};
use super::{
    ready, Command, CommandError, DrainHint, EventKind, ExitReport, ProcessControl, Reply, ShutdownReport, Status,
    UnitEvent,
};
use crate::clock::now_ms;
use crate::units::Unit;

/// A readiness probe's report, or a `Type=dbus` watch's news.
struct ProbeDone {
    unit: UnitId,
    epoch: Epoch,
    /// None: a probe succeeded (and ended); Some: the bus watch (still running) saw this.
    bus: Option<BusEvent>,
}

/// A reply the machine will answer later (or at once) by [`ReplyTo`].
enum Pending {
    Status(Reply<Status>),
    Done(Reply<()>),
}

struct Timer {
    unit: UnitId,
    epoch: Epoch,
    kind: TimerKind,
}

pub struct Engine<C: ProcessControl> {
    ctl: C,
    units: Units,
    events: broadcast::Sender<UnitEvent>,
    probes_tx: mpsc::UnboundedSender<ProbeDone>,
    probes_rx: mpsc::UnboundedReceiver<ProbeDone>,
    /// The running probe of each unit, aborted when its run ends.
    probes: HashMap<UnitId, tokio::task::AbortHandle>,
    /// Armed timers by deadline; the sequence number keeps equal deadlines in arming order.
    timers: BTreeMap<(Instant, u64), Timer>,
    timer_seq: u64,
    replies: HashMap<ReplyTo, Pending>,
    last_reply: u64,
    shutdown: Option<oneshot::Sender<ShutdownReport>>,
    /// Spawns running off this thread (`ProcessControl::start_spawn`), by ticket.
    spawning: HashMap<u64, (UnitId, super::Role)>,
    /// Per unit with a spawn out: the effects that came after it, applied
    /// once its answer was fed (a direct call would have answered first).
    held: HashMap<UnitId, Vec<Effect>>,
    last_ticket: u64,
    spawn_reports: Option<mpsc::UnboundedReceiver<SpawnReport>>,
    /// The shutdown finished: the run loop returns after this batch.
    finished: bool,
}

fn now() -> Now {
    Now { at: Instant::now(), wall_ms: now_ms() }
}

impl<C: ProcessControl> Engine<C> {
    pub fn new(ctl: C, units: Vec<Unit>, events: broadcast::Sender<UnitEvent>) -> Engine<C> {
        let (probes_tx, probes_rx) = mpsc::unbounded_channel();
        let (units, effects) = Units::new(units, now());
        let mut engine = Engine {
            ctl,
            units,
            events,
            probes_tx,
            probes_rx,
            probes: HashMap::new(),
            timers: BTreeMap::new(),
            timer_seq: 0,
            replies: HashMap::new(),
            last_reply: 0,
            shutdown: None,
            spawning: HashMap::new(),
            held: HashMap::new(),
            last_ticket: 0,
            spawn_reports: None,
            finished: false,
        };
        engine.spawn_reports = engine.ctl.spawn_reports();
        engine.apply(effects);
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
        let mut reports: Vec<SpawnReport> = Vec::new();
        enum Woken {
            Probe(ProbeDone),
            Timers,
            Command(Command),
        }
        loop {
            let next_timer = self.timers.keys().next().map(|(at, _)| *at);
            // While spawns are out, commands and timers wait: the machine then never
            // sees a unit between its Spawn effect and the answer, as with a direct call.
            let settled = self.spawning.is_empty();
            // Only received here; handled below, after the exits.
            let woken = tokio::select! {
                biased;
                Some(exit) = exits.recv() => {
                    batch_exits.push(exit);
                    None
                }
                Some(hint) = hints.recv() => {
                    pending_hints.push(hint);
                    None
                }
                Some(report) = next_report(&mut self.spawn_reports) => {
                    reports.push(report);
                    None
                }
                Some(done) = self.probes_rx.recv() => Some(Woken::Probe(done)),
                _ = tokio::time::sleep_until(next_timer.unwrap_or_else(Instant::now)), if next_timer.is_some() && settled => {
                    Some(Woken::Timers)
                }
                command = commands.recv(), if commands_open && settled => match command {
                    Some(command) => Some(Woken::Command(command)),
                    None if self.units.shutting_down() => {
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
            // Spawn reports before exits: an exit on `exits` was sent after its
            // spawn's report (spawner.rs), so the machine knows the pid first.
            if let Some(rx) = self.spawn_reports.as_mut() {
                while let Ok(report) = rx.try_recv() {
                    reports.push(report);
                }
            }
            for report in std::mem::take(&mut reports) {
                self.on_spawn_report(report);
            }
            for (pid, status) in std::mem::take(&mut batch_exits) {
                self.feed(Input::Exit { pid, status });
            }
            match woken {
                Some(Woken::Probe(ProbeDone { unit, epoch, bus: Some(event) })) => {
                    self.feed(Input::Bus { unit, epoch, event });
                }
                Some(Woken::Probe(done)) => {
                    self.probes.remove(&done.unit);
                    self.feed(Input::Ready { unit: done.unit, epoch: done.epoch });
                }
                Some(Woken::Timers) => self.fire_due_timers(),
                Some(Woken::Command(command)) => self.on_command(command),
                None => {}
            }
            for hint in dedup_hints(std::mem::take(&mut pending_hints)) {
                match hint {
                    DrainHint::Notify { unit: name, message, pid } => {
                        if let Some(unit) = self.units.id(&name) {
                            // NotifyAccess=all accepts a process of the unit: asked here, where the OS is.
                            let member = pid.is_some_and(|pid| self.ctl.is_member(&name, pid));
                            self.feed(Input::Notify { unit, message, sender: Sender { pid, member } });
                        }
                    }
                    DrainHint::Oom(name) => {
                        if let Some(unit) = self.units.id(&name) {
                            // Counted here, where the OS is; what it means is the machine's (OOMPolicy=).
                            let kills = self.ctl.oom_kills(&name);
                            self.feed(Input::OomKills { unit, kills });
                        }
                    }
                    hint => self.feed(Input::Hint(hint)),
                }
            }
            self.ctl.batch_done();
            if self.finished {
                return;
            }
        }
    }

    fn on_spawn_report(&mut self, report: SpawnReport) {
        match report {
            SpawnReport::Done(done) => {
                let Some((unit, role)) = self.spawning.remove(&done.ticket) else { return };
                let result = self.ctl.finish_spawn(done);
                let held = self.held.remove(&unit).unwrap_or_default();
                self.feed(Input::Spawned { unit, role, result });
                self.apply(held);
            }
            SpawnReport::Exit((pid, status)) => self.feed(Input::Exit { pid, status }),
        }
    }

    fn fire_due_timers(&mut self) {
        let now = Instant::now();
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let Timer { unit, epoch, kind } = entry.remove();
            self.feed(Input::Timer { unit, epoch, kind });
        }
    }

    fn on_command(&mut self, command: Command) {
        let (cmd, pending) = match command {
            Command::Start { unit, reply } => (Cmd::Start(unit), Some(Pending::Status(reply))),
            Command::Stop { unit, reply } => (Cmd::Stop(unit), Some(Pending::Status(reply))),
            Command::Restart { unit, reply } => (Cmd::Restart(unit), Some(Pending::Status(reply))),
            Command::Reload { unit, reply } => (Cmd::Reload(unit), Some(Pending::Done(reply))),
            Command::ResetFailed { unit, reply } => (Cmd::ResetFailed(unit), Some(Pending::Status(reply))),
            Command::SetUnits { units, reply } => (Cmd::SetUnits(units), Some(Pending::Done(reply))),
            Command::StartAll { reply } => (Cmd::StartAll, Some(Pending::Done(reply))),
            Command::Snapshot { reply } => {
                let _ = reply.send(self.units.snapshot());
                return;
            }
            Command::Shutdown { reply } => {
                self.shutdown = Some(reply);
                (Cmd::Shutdown, None)
            }
            Command::KillAll => (Cmd::KillAll, None),
        };
        let reply = pending.map(|pending| {
            self.last_reply += 1;
            let to = ReplyTo(self.last_reply);
            self.replies.insert(to, pending);
            to
        });
        self.feed(Input::Command { cmd, reply });
    }

    /// One input through the machine, and its effects applied.
    fn feed(&mut self, input: Input) {
        let effects = self.units.step(input, now());
        self.apply(effects);
    }

    fn apply(&mut self, effects: Vec<Effect>) {
        for effect in effects {
            if let Some(held) = effect_unit(&effect).and_then(|unit| self.held.get_mut(&unit)) {
                held.push(effect);
                continue;
            }
            if let Some(answer) = self.apply_one(effect) {
                // Answered at once, before the effects after it: as if the machine had called the OS itself.
                self.feed(answer);
            }
        }
    }

    /// Applies one effect; returns the answer to feed back, for those that ask.
    fn apply_one(&mut self, effect: Effect) -> Option<Input> {
        match effect {
            Effect::CheckConditions { unit } => {
                let unmet = self.ctl.unmet_condition(self.units.unit(unit));
                Some(Input::Conditions { unit, unmet })
            }
            Effect::BeginRun { unit, fresh } => {
                let result = self.ctl.begin_run(self.units.unit(unit), fresh);
                Some(Input::RunBegun { unit, result })
            }
            Effect::Spawn { unit, role, command, env } => {
                self.last_ticket += 1;
                match self.ctl.start_spawn(self.units.unit(unit), role, &command, &env, self.last_ticket) {
                    Spawning::Now(result) => Some(Input::Spawned { unit, role, result }),
                    Spawning::Later => {
                        self.spawning.insert(self.last_ticket, (unit, role));
                        self.held.insert(unit, Vec::new());
                        None
                    }
                }
            }
            Effect::Signal { target, signal } => {
                match target {
                    Target::Process(pid) => self.ctl.signal_process(pid, signal),
                    Target::Group(pgid) => self.ctl.signal_group(pgid, signal),
                    Target::Unit(unit) => {
                        let name = self.units.unit(unit).name.clone();
                        self.ctl.signal_unit(&name, signal);
                    }
                }
                None
            }
            Effect::ArmTimer { unit, kind, at, epoch } => {
                // Timers of a state that moved on can never fire usefully, and a timer re-armed
                // (the watchdog) replaces its kind: drop them here, so the queue stays as small
                // as the number of live timers.
                self.timers.retain(|_, t| t.unit != unit || (t.epoch == epoch && t.kind != kind));
                self.timer_seq += 1;
                self.timers.insert((at, self.timer_seq), Timer { unit, epoch, kind });
                None
            }
            Effect::Probe { unit, target, epoch } => {
                let done = self.probes_tx.clone();
                let task = tokio::spawn(async move {
                    ready::wait_ready(&target).await;
                    let _ = done.send(ProbeDone { unit, epoch, bus: None });
                });
                if let Some(old) = self.probes.insert(unit, task.abort_handle()) {
                    old.abort();
                }
                None
            }
            Effect::WatchBus { unit, name, epoch } => {
                let done = self.probes_tx.clone();
                let report = move |event| done.send(ProbeDone { unit, epoch, bus: Some(event) }).is_ok();
                // Read at each start, so a unit started after the bus moved sees the current address.
                let task = tokio::spawn(dbus::watch(dbus::system_bus_address(), name, report));
                if let Some(old) = self.probes.insert(unit, task.abort_handle()) {
                    old.abort();
                }
                None
            }
            Effect::CheckDrained { unit } => {
                let name = self.units.unit(unit).name.clone();
                // Asked before looking, so an end between the look and the wait still wakes us.
                self.ctl.watch_drain(&name);
                let live = self.ctl.live_processes(&name);
                Some(Input::Members { unit, live })
            }
            Effect::ReadPidFile { unit } => {
                let result = self.ctl.forked_main_pid(self.units.unit(unit));
                Some(Input::PidFile { unit, result })
            }
            Effect::GatherEvidence { unit } => {
                let name = self.units.unit(unit).name.clone();
                let evidence = self.ctl.failure_evidence(&name);
                Some(Input::Evidence { unit, evidence })
            }
            Effect::FindPortHolder { unit, port } => {
                let holder = self.ctl.port_holder(port);
                Some(Input::PortHolder { unit, holder })
            }
            Effect::EndRun { unit } => {
                if let Some(probe) = self.probes.remove(&unit) {
                    probe.abort();
                }
                let name = self.units.unit(unit).name.clone();
                self.ctl.end_run(&name);
                None
            }
            Effect::Note { unit, text } => {
                let name = self.units.unit(unit).name.clone();
                self.ctl.note(&name, &text);
                None
            }
            Effect::Emit(event) => {
                match event.event {
                    EventKind::State => tracing::info!(
                        unit = %event.unit, status = %event.status,
                        detail = event.detail.as_deref().unwrap_or(""), "state"
                    ),
                    EventKind::Failure => tracing::warn!(
                        unit = %event.unit, failure = event.detail.as_deref().unwrap_or(""), "run failed"
                    ),
                    _ => {}
                }
                let _ = self.events.send(event);
                None
            }
            Effect::Warn { unit, text } => {
                tracing::warn!(unit = %self.units.unit(unit).name, "{text}");
                None
            }
            Effect::Reply { to, result } => {
                match (self.replies.remove(&to), result) {
                    (Some(Pending::Status(reply)), Ok(Answer::Status(status))) => {
                        let _ = reply.send(Ok(status));
                    }
                    (Some(Pending::Done(reply)), Ok(_)) => {
                        let _ = reply.send(Ok(()));
                    }
                    (Some(Pending::Status(reply)), Err(e)) => {
                        let _ = reply.send(Err(e));
                    }
                    (Some(Pending::Done(reply)), Err(e)) => {
                        let _ = reply.send(Err(e));
                    }
                    (Some(Pending::Status(reply)), Ok(Answer::Done)) => {
                        let _ = reply.send(Err(CommandError::Gone));
                    }
                    (None, _) => {}
                }
                None
            }
            Effect::EndContainer { why } => {
                super::end_container(&why, None);
                None
            }
            Effect::ShutdownDone { clean } => {
                if let Some(reply) = self.shutdown.take() {
                    let _ = reply.send(ShutdownReport { clean });
                }
                self.finished = true;
                None
            }
        }
    }
}

/// The unit an effect acts on, where it names one by id.
fn effect_unit(effect: &Effect) -> Option<UnitId> {
    match effect {
        Effect::CheckConditions { unit }
        | Effect::BeginRun { unit, .. }
        | Effect::Spawn { unit, .. }
        | Effect::Signal { target: Target::Unit(unit), .. }
        | Effect::ArmTimer { unit, .. }
        | Effect::Probe { unit, .. }
        | Effect::CheckDrained { unit }
        | Effect::ReadPidFile { unit }
        | Effect::GatherEvidence { unit }
        | Effect::FindPortHolder { unit, .. }
        | Effect::EndRun { unit }
        | Effect::Note { unit, .. }
        | Effect::WatchBus { unit, .. }
        | Effect::Warn { unit, .. } => Some(*unit),
        Effect::Signal { .. }
        | Effect::Emit(_)
        | Effect::Reply { .. }
        | Effect::ShutdownDone { .. }
        | Effect::EndContainer { .. } => None,
    }
}

/// The next spawn report; never, without a spawner.
async fn next_report(rx: &mut Option<mpsc::UnboundedReceiver<SpawnReport>>) -> Option<SpawnReport> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// A drain hint naming a unit once is enough per batch, and `Any` covers
/// every unit; notifications and OOM notices are all kept, in order, after them.
fn dedup_hints(hints: Vec<DrainHint>) -> Vec<DrainHint> {
    let (notices, drains): (Vec<DrainHint>, Vec<DrainHint>) =
        hints.into_iter().partition(|h| matches!(h, DrainHint::Notify { .. } | DrainHint::Oom(_)));
    let mut out = if drains.contains(&DrainHint::Any) {
        vec![DrainHint::Any]
    } else {
        let mut names: Vec<String> =
            drains.into_iter().filter_map(|h| if let DrainHint::Unit(n) = h { Some(n) } else { None }).collect();
        names.sort();
        names.dedup();
        names.into_iter().map(DrainHint::Unit).collect()
    };
    out.extend(notices);
    out
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
