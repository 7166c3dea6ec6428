//! Tests of the supervisor's decisions: the pure machine ([`Units`]) stepped
//! synchronously, with a fake kernel applying its effects.
//!
//! [`Sim`] plays the driver and the kernel at once: it applies every
//! [`Effect`] the machine returns, answers the ones that ask (begin-run,
//! spawn, membership, evidence) by feeding the answer straight back as the
//! driver does, records what the OS was told with the virtual time it was
//! told at, and keeps the set of live processes per unit. Time is a number
//! the test moves: timers fire when it passes them, so RestartSec, backoff and
//! TimeoutStopSec are checked to the millisecond, with no runtime and no wait.
//! The test decides when a process dies (`exit`), exactly as the reaper would
//! report it. The fake models only what a test cannot do by hand: a SIGKILL
//! kills at once, and units marked `obeying` die of their KillSignal; any
//! other signal is just recorded, so a process "ignores" SIGTERM unless the
//! test ends it. Readiness probes are effects too: the test says when one
//! succeeds (`probe_succeeds`), so no test binds a port.
//!
//! The fake also tells the machine what the kernel would when a process it
//! did not spawn ends ([`DrainHint`]): by default as a cgroup does
//! (`populated 0` once a unit's last process is gone), or as the reaper does
//! without cgroups (an orphan was reaped), see [`Hints`].
//!
//! The last section has the single transitions as tables of
//! (state, input) -> (state, effects).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::time::Instant;

use super::dedup_hints;
use crate::init::ExitStatus;
use crate::supervisor::dbus::BusEvent;
use crate::supervisor::machine::{
    Answer, Cmd, Effect, Epoch, Input, Now, Outcome, PidFileError, Readiness, ReplyTo, Sender, StopStage, Target, Then,
    TimerKind, UnitId, UnitState, Units,
};
use crate::supervisor::state::RunEnd;
use crate::supervisor::{
    CommandError, DrainHint, EventKind, ExitReport, OsError, Prepared, ReadyTarget, Role, Status, UnitEvent,
    UnitSnapshot,
};
use crate::units::{parse_unit_str, ExecCommand, Unit};

const TERM: Signal = Signal::SIGTERM;
const KILL: Signal = Signal::SIGKILL;
const CONT: Signal = Signal::SIGCONT;

/// Longest a helper waits for a condition: far beyond every timer in these
/// tests (the longest is a 90 s default TimeoutStopSec), and free in virtual time.
const PATIENCE: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, PartialEq)]
enum Action {
    BeginRun { unit: String, fresh: bool },
    Spawn { unit: String, role: Role, pid: i32, argv: Vec<String>, env: Vec<(String, String)> },
    SignalProcess { pid: i32, signal: Signal },
    SignalGroup { pgid: i32, signal: Signal },
    SignalUnit { unit: String, signal: Signal },
    EndRun { unit: String },
    Note { unit: String, text: String },
}

/// The fake kernel's state.
#[derive(Default)]
struct Kernel {
    next_pid: i32,
    /// unit -> pids still running (main, pre, stop, or leftovers the test adds).
    live: BTreeMap<String, BTreeSet<i32>>,
    /// Units whose runs need a readiness probe; the rest are ready once spawned.
    ready: HashMap<String, ReadyTarget>,
    /// Units whose processes die of any terminating signal sent to them.
    obeying: HashSet<String>,
    /// Pids the machine spawned (the rest are descendants the test added).
    spawned: HashSet<i32>,
    hints: Hints,
    /// Units the machine said it waits on (`CheckDrained`), until their `EndRun`.
    watched: HashSet<String>,
    /// How often the machine asked for a unit's processes.
    live_checks: usize,
    /// The last lines of each unit's log, as `GatherEvidence` reports them.
    log_tail: HashMap<String, Vec<String>>,
    /// What the reaper has seen and not yet delivered.
    exits: Vec<ExitReport>,
    drain_hints: Vec<DrainHint>,
    /// What a forking unit's PID file read answers: the daemon's pid after this many `NotYet`s,
    /// or a refusal. A forked daemon is a process of its unit the machine did not spawn.
    pid_files: HashMap<String, (usize, Result<i32, PidFileError>)>,
    pid_file_reads: usize,
    /// RuntimeRandomizedExtraSec=: the share each unit's begin-run draws.
    runtime_extra: HashMap<String, Duration>,
}

/// How the fake kernel tells the machine about processes it did not spawn.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Hints {
    /// As a unit cgroup: `Unit(name)` whenever the unit's last process is gone.
    #[default]
    Cgroup,
    /// As the reaper without cgroups: `Any` when a process the machine did not
    /// spawn ends while some unit is watched, nothing otherwise.
    Reaper,
}

impl Kernel {
    fn owner(&self, pid: i32) -> Option<String> {
        self.live.iter().find(|(_, pids)| pids.contains(&pid)).map(|(unit, _)| unit.clone())
    }

    /// Ends `pid` (if still live) and queues its status, as the reaper would.
    fn kill(&mut self, pid: i32, signal: Signal) {
        let Some(unit) = self.owner(pid) else { return };
        self.live.get_mut(&unit).expect("owner has a set").remove(&pid);
        self.exits.push((pid, signaled(signal)));
        self.ended(&unit, pid);
    }

    /// `pid` of `unit` is gone: the hint the kernel side would give.
    fn ended(&mut self, unit: &str, pid: i32) {
        let hint = match self.hints {
            Hints::Cgroup if self.live.get(unit).is_none_or(BTreeSet::is_empty) => DrainHint::Unit(unit.into()),
            Hints::Reaper if !self.spawned.contains(&pid) && !self.watched.is_empty() => DrainHint::Any,
            _ => return,
        };
        self.drain_hints.push(hint);
    }

    fn fatal(&self, unit: &str, signal: Signal) -> bool {
        signal == KILL || (signal != CONT && self.obeying.contains(unit))
    }
}

/// One spawned process, as the fake saw it.
#[derive(Debug, Clone)]
struct Spawned {
    at: Instant,
    role: Role,
    pid: i32,
    argv: Vec<String>,
    env: Vec<(String, String)>,
}

/// The machine with a fake driver and kernel around it.
struct Sim {
    units: Units,
    kernel: Kernel,
    start: Instant,
    now: Instant,
    /// Every effect the OS side carried out, with the virtual time.
    actions: Vec<(Instant, Action)>,
    /// Events not yet taken by `events()`.
    events: Vec<UnitEvent>,
    timers: BTreeMap<(Instant, u64), (UnitId, Epoch, TimerKind)>,
    timer_seq: u64,
    /// The running probe per unit (its epoch).
    probes: HashMap<UnitId, Epoch>,
    replies: HashMap<ReplyTo, Result<Answer, CommandError>>,
    last_reply: u64,
    shutdown: Option<bool>,
}

/// Parses a unit file from text; the test's own unit files must be free of diagnostics.
fn unit(file: &str, text: &str) -> Unit {
    match parse_unit_str(Path::new(file), text) {
        Ok((unit, warnings)) => {
            assert!(warnings.is_empty(), "{file}: {warnings:?}");
            unit
        }
        Err(errors) => panic!("{file}: {errors:?}"),
    }
}

/// The port every fake run is given.
const FAKE_PORT: u16 = 4242;

fn service(name: &str, extra: &str) -> Unit {
    unit(&format!("{name}.service"), &format!("[Service]\nExecStart=/bin/{name}\n{extra}"))
}

fn signaled(signal: Signal) -> ExitStatus {
    ExitStatus::Signaled { signal: signal as i32, core_dumped: false }
}

fn code(code: i32) -> ExitStatus {
    ExitStatus::Exited { code }
}

/// Virtual wall clock: a fixed epoch plus the virtual time passed.
const WALL_BASE_MS: i64 = 1_700_000_000_000;

impl Sim {
    fn new(units: Vec<Unit>) -> Sim {
        Sim::with_hints(units, Hints::Cgroup)
    }

    fn with_hints(units: Vec<Unit>, hints: Hints) -> Sim {
        let now = Instant::now();
        let (machine, effects) = Units::new(units, Now { at: now, wall_ms: WALL_BASE_MS });
        let mut sim = Sim {
            units: machine,
            kernel: Kernel { hints, ..Kernel::default() },
            start: now,
            now,
            actions: Vec::new(),
            events: Vec::new(),
            timers: BTreeMap::new(),
            timer_seq: 0,
            probes: HashMap::new(),
            replies: HashMap::new(),
            last_reply: 0,
            shutdown: None,
        };
        sim.apply(effects);
        sim
    }

    fn clock(&self) -> Now {
        Now { at: self.now, wall_ms: WALL_BASE_MS + self.elapsed_ms() }
    }

    fn elapsed_ms(&self) -> i64 {
        self.now.duration_since(self.start).as_millis() as i64
    }

    fn now(&self) -> Instant {
        self.now
    }

    fn id(&self, name: &str) -> UnitId {
        self.units.id(name).unwrap_or_else(|| panic!("no unit {name}"))
    }

    fn name(&self, id: UnitId) -> String {
        self.units.unit(id).name.clone()
    }

    fn record(&mut self, action: Action) {
        self.actions.push((self.now, action));
    }

    /// One input, its effects applied (answers fed back at once), then
    /// whatever the kernel has to tell, until nothing is left: one batch.
    fn input(&mut self, input: Input) {
        self.feed(input);
        self.settle();
    }

    fn feed(&mut self, input: Input) {
        let effects = self.units.step(input, self.clock());
        self.apply(effects);
    }

    /// Delivers the exits and hints the kernel queued, as the driver's next batches would.
    fn settle(&mut self) {
        loop {
            let exits = std::mem::take(&mut self.kernel.exits);
            let hints = std::mem::take(&mut self.kernel.drain_hints);
            if exits.is_empty() && hints.is_empty() {
                return;
            }
            for (pid, status) in exits {
                self.feed(Input::Exit { pid, status });
            }
            for hint in dedup_hints(hints) {
                self.feed(Input::Hint(hint));
            }
        }
    }

    fn apply(&mut self, effects: Vec<Effect>) {
        for effect in effects {
            if let Some(answer) = self.apply_one(effect) {
                self.feed(answer);
            }
        }
    }

    fn apply_one(&mut self, effect: Effect) -> Option<Input> {
        match effect {
            Effect::CheckConditions { unit } => Some(Input::Conditions { unit, unmet: None }),
            Effect::BeginRun { unit, fresh } => {
                let u = self.units.unit(unit).clone();
                self.record(Action::BeginRun { unit: u.name.clone(), fresh });
                let ready = self.kernel.ready.get(&u.name).cloned();
                // An instance runs its launch.sh, as the real host prepares it.
                let default_exec_start = u
                    .instance
                    .as_ref()
                    .map(|_| ExecCommand { argv: vec!["/bin/launch.sh".into()], ..Default::default() });
                // A port per run, as an instance's lease would give, so events can be checked to carry it.
                let prepared = Prepared {
                    ready,
                    env: vec![("RUN_ENV".into(), u.name.clone())],
                    default_exec_start,
                    port: Some(FAKE_PORT),
                    runtime_extra: self.kernel.runtime_extra.get(&u.name).copied().unwrap_or_default(),
                    ..Prepared::default()
                };
                Some(Input::RunBegun { unit, result: Ok(prepared) })
            }
            Effect::Spawn { unit, role, command, env } => {
                let name = self.name(unit);
                self.kernel.next_pid += 1;
                // Start above 100 so a pid is never mistaken for a count or a signal in a failure message.
                let pid = 100 + self.kernel.next_pid;
                self.kernel.live.entry(name.clone()).or_default().insert(pid);
                self.kernel.spawned.insert(pid);
                self.record(Action::Spawn { unit: name, role, pid, argv: command.argv, env });
                Some(Input::Spawned { unit, role, result: Ok(pid) })
            }
            Effect::Signal { target, signal } => {
                match target {
                    Target::Process(pid) => {
                        self.record(Action::SignalProcess { pid, signal });
                        self.kill_if_fatal(pid, signal);
                    }
                    Target::Group(pgid) => {
                        // Every fake process leads its own group; leftovers the test adds are not in it.
                        self.record(Action::SignalGroup { pgid, signal });
                        self.kill_if_fatal(pgid, signal);
                    }
                    Target::Unit(unit) => {
                        let name = self.name(unit);
                        self.record(Action::SignalUnit { unit: name.clone(), signal });
                        if self.kernel.fatal(&name, signal) {
                            let pids: Vec<i32> = self.kernel.live.get(&name).into_iter().flatten().copied().collect();
                            for pid in pids {
                                self.kernel.kill(pid, signal);
                            }
                        }
                    }
                }
                None
            }
            Effect::ArmTimer { unit, kind, at, epoch } => {
                self.timers.retain(|_, (u, e, k)| *u != unit || (*e == epoch && *k != kind));
                self.timer_seq += 1;
                self.timers.insert((at, self.timer_seq), (unit, epoch, kind));
                None
            }
            Effect::Probe { unit, epoch, .. } => {
                self.probes.insert(unit, epoch);
                None
            }
            Effect::WatchBus { unit, name, epoch } => {
                self.record(Action::Note { unit: self.name(unit), text: format!("watch-bus {name}") });
                self.probes.insert(unit, epoch);
                None
            }
            Effect::CheckDrained { unit } => {
                let name = self.name(unit);
                self.kernel.watched.insert(name.clone());
                self.kernel.live_checks += 1;
                let live = self.kernel.live.get(&name).map_or(0, BTreeSet::len);
                Some(Input::Members { unit, live })
            }
            Effect::ReadPidFile { unit } => {
                let name = self.name(unit);
                self.kernel.pid_file_reads += 1;
                let (not_yet, result) =
                    self.kernel.pid_files.get_mut(&name).expect("the test says what the PID file holds");
                if *not_yet > 0 {
                    *not_yet -= 1;
                    return Some(Input::PidFile { unit, result: Err(PidFileError::NotYet) });
                }
                let result = result.clone();
                if let Ok(pid) = result {
                    self.kernel.live.entry(name).or_default().insert(pid);
                }
                Some(Input::PidFile { unit, result })
            }
            Effect::GatherEvidence { unit } => {
                let lines = self.kernel.log_tail.get(&self.name(unit)).cloned().unwrap_or_default();
                Some(Input::Evidence { unit, evidence: crate::failure::Evidence { lines, ..Default::default() } })
            }
            Effect::FindPortHolder { unit, .. } => Some(Input::PortHolder { unit, holder: None }),
            Effect::EndRun { unit } => {
                let name = self.name(unit);
                self.probes.remove(&unit);
                self.kernel.watched.remove(&name);
                self.record(Action::EndRun { unit: name });
                None
            }
            Effect::Note { unit, text } => {
                let unit = self.name(unit);
                self.record(Action::Note { unit, text });
                None
            }
            Effect::Emit(event) => {
                self.events.push(event);
                None
            }
            Effect::Warn { .. } => None,
            Effect::Reply { to, result } => {
                self.replies.insert(to, result);
                None
            }
            Effect::ShutdownDone { clean } => {
                self.shutdown = Some(clean);
                None
            }
            Effect::EndContainer { why } => {
                self.record(Action::Note { unit: "(container)".into(), text: why });
                None
            }
        }
    }

    fn kill_if_fatal(&mut self, pid: i32, signal: Signal) {
        if self.kernel.owner(pid).is_some_and(|unit| self.kernel.fatal(&unit, signal)) {
            self.kernel.kill(pid, signal);
        }
    }

    // ---- commands ---------------------------------------------------------

    fn command(&mut self, cmd: Cmd) -> Result<Answer, CommandError> {
        self.last_reply += 1;
        let to = ReplyTo(self.last_reply);
        self.input(Input::Command { cmd, reply: Some(to) });
        self.replies.remove(&to).expect("every command with a reply is answered at once")
    }

    fn status_reply(&mut self, cmd: Cmd) -> Result<Status, CommandError> {
        self.command(cmd).map(|answer| match answer {
            Answer::Status(status) => status,
            Answer::Done => panic!("a status was due"),
        })
    }

    fn start(&mut self, name: &str) -> Result<Status, CommandError> {
        self.status_reply(Cmd::Start(name.into()))
    }

    fn stop(&mut self, name: &str) -> Result<Status, CommandError> {
        self.status_reply(Cmd::Stop(name.into()))
    }

    fn restart(&mut self, name: &str) -> Result<Status, CommandError> {
        self.status_reply(Cmd::Restart(name.into()))
    }

    fn set_units(&mut self, units: Vec<Unit>) {
        assert_eq!(self.command(Cmd::SetUnits(units)), Ok(Answer::Done));
    }

    fn begin_shutdown(&mut self) {
        self.input(Input::Command { cmd: Cmd::Shutdown, reply: None });
    }

    /// Shuts down and lets time run until every unit is down; whether it was clean.
    fn shutdown(&mut self) -> bool {
        self.begin_shutdown();
        self.wait_for("the shutdown", |h| h.shutdown.is_some());
        self.shutdown.expect("waited for it")
    }

    // ---- the kernel, played by the test ----------------------------------

    fn obey(&mut self, unit: &str) {
        self.kernel.obeying.insert(unit.into());
    }

    /// The process ends: gone from its unit, and its status delivered.
    fn exit(&mut self, pid: i32, status: ExitStatus) {
        let unit = self.kernel.owner(pid).unwrap_or_else(|| panic!("pid {pid} was not live"));
        self.kernel.live.get_mut(&unit).expect("owner has a set").remove(&pid);
        self.kernel.exits.push((pid, status));
        self.kernel.ended(&unit, pid);
        self.settle();
    }

    /// A process of `unit` that the machine did not spawn (a child of its main process).
    fn add_leftover(&mut self, unit: &str, pid: i32) {
        self.kernel.live.entry(unit.into()).or_default().insert(pid);
    }

    /// The leftover dies; no exit status reaches the machine (it is not one of
    /// its pids), only the kernel side's hint.
    fn remove_leftover(&mut self, unit: &str, pid: i32) {
        assert!(self.kernel.live.get_mut(unit).is_some_and(|p| p.remove(&pid)));
        self.kernel.ended(unit, pid);
        self.settle();
    }

    /// A datagram on the unit's NOTIFY_SOCKET, sent by its main process.
    fn notify(&mut self, name: &str, message: &str) {
        let unit = self.id(name);
        let pid = self.units.state(unit).main_pid();
        self.notify_from(name, message, Sender { pid, member: true });
    }

    fn notify_from(&mut self, name: &str, message: &str, sender: Sender) {
        let unit = self.id(name);
        self.input(Input::Notify { unit, message: message.into(), sender });
    }

    /// The unit's readiness probe gets its answer.
    fn probe_succeeds(&mut self, name: &str) {
        let id = self.id(name);
        let epoch = self.probes.remove(&id).unwrap_or_else(|| panic!("{name} has no probe running"));
        self.input(Input::Ready { unit: id, epoch });
    }

    /// The unit's bus watch reports (the watch goes on, as the real one does).
    fn bus(&mut self, name: &str, event: BusEvent) {
        let id = self.id(name);
        let epoch = *self.probes.get(&id).unwrap_or_else(|| panic!("{name} has no bus watch running"));
        self.input(Input::Bus { unit: id, epoch, event });
    }

    fn notes(&self, name: &str) -> Vec<String> {
        let notes = self.actions().into_iter().filter_map(|(_, a)| match a {
            Action::Note { unit, text } if unit == name => Some(text),
            _ => None,
        });
        notes.collect()
    }

    // ---- time ----------------------------------------------------------------

    /// Fires the next timer (moving time to it); false when none is armed.
    fn fire_next_timer(&mut self, limit: Instant) -> bool {
        let Some(entry) = self.timers.first_entry() else { return false };
        if entry.key().0 > limit {
            return false;
        }
        let at = entry.key().0;
        let (unit, epoch, kind) = entry.remove();
        self.now = self.now.max(at);
        self.input(Input::Timer { unit, epoch, kind });
        true
    }

    fn sleep(&mut self, duration: Duration) {
        let until = self.now + duration;
        self.sleep_until(until);
    }

    fn sleep_until(&mut self, until: Instant) {
        while self.fire_next_timer(until) {}
        self.now = self.now.max(until);
    }

    /// Lets time run, timer by timer, until `pred` holds.
    fn wait_for(&mut self, what: &str, pred: impl Fn(&Sim) -> bool) {
        let deadline = self.now + PATIENCE;
        while !pred(self) {
            assert!(self.fire_next_timer(deadline), "{what} never happened; actions: {:#?}", self.actions);
        }
    }

    fn wait_status(&mut self, name: &str, status: Status) -> UnitSnapshot {
        let deadline = self.now + PATIENCE;
        loop {
            let snap = self.snapshot(name);
            if snap.status == status {
                return snap;
            }
            assert!(
                self.fire_next_timer(deadline),
                "{name} never became {status}; it is {} ({:?})",
                snap.status,
                snap.detail
            );
        }
    }

    fn wait_spawns(&mut self, name: &str, mains: usize) {
        self.wait_for(&format!("{mains} spawns of {name}"), |h| h.mains(name).len() >= mains);
    }

    // ---- what happened ---------------------------------------------------------

    fn live_checks(&self) -> usize {
        self.kernel.live_checks
    }

    fn actions(&self) -> Vec<(Instant, Action)> {
        self.actions.clone()
    }

    fn spawns(&self, name: &str) -> Vec<Spawned> {
        self.actions
            .iter()
            .cloned()
            .filter_map(|(at, action)| match action {
                Action::Spawn { unit, role, pid, argv, env } if unit == name => {
                    Some(Spawned { at, role, pid, argv, env })
                }
                _ => None,
            })
            .collect()
    }

    fn mains(&self, name: &str) -> Vec<Spawned> {
        self.spawns(name).into_iter().filter(|s| s.role == Role::Main).collect()
    }

    fn main_pid(&self, name: &str) -> i32 {
        self.mains(name).last().unwrap_or_else(|| panic!("{name} was never spawned")).pid
    }

    /// Index in the action log of the first action matching `pred`.
    fn position(&self, pred: impl Fn(&Action) -> bool) -> Option<usize> {
        self.actions.iter().position(|(_, a)| pred(a))
    }

    /// Signals sent to the unit as a whole (SIGCONT companions left out).
    fn unit_signals(&self, name: &str) -> Vec<(Instant, Signal)> {
        self.actions
            .iter()
            .filter_map(|(at, a)| match a {
                Action::SignalUnit { unit, signal } if unit == name && *signal != CONT => Some((*at, *signal)),
                _ => None,
            })
            .collect()
    }

    fn events(&mut self) -> Vec<UnitEvent> {
        std::mem::take(&mut self.events)
    }

    fn snapshot(&self, name: &str) -> UnitSnapshot {
        self.units
            .snapshot()
            .into_iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("{name} is not in the snapshot"))
    }

    fn names(&self) -> Vec<String> {
        self.units.snapshot().into_iter().map(|s| s.name).collect()
    }
}

// ---- start and stop ordering ------------------------------------------

fn a_and_b_requiring_a() -> Vec<Unit> {
    vec![
        service("a", ""),
        unit("b.service", "[Unit]\nAfter=a.service\nRequires=a.service\n[Service]\nExecStart=/bin/b\n"),
    ]
}

#[test]
fn starting_a_unit_starts_what_it_requires_first() {
    let mut h = Sim::new(a_and_b_requiring_a());
    h.start("b").unwrap();
    h.wait_status("b", Status::Started);
    assert_eq!(h.wait_status("a", Status::Started).status, Status::Started);
    let a = h.position(|x| matches!(x, Action::Spawn { unit, .. } if unit == "a")).unwrap();
    let b = h.position(|x| matches!(x, Action::Spawn { unit, .. } if unit == "b")).unwrap();
    assert!(a < b, "a must be spawned before b: {:#?}", h.actions());
    // A user's start rotates the log (fresh), for the pulled-in dependency too.
    let fresh: Vec<_> = h
        .actions()
        .into_iter()
        .filter_map(|(_, x)| match x {
            Action::BeginRun { unit, fresh } => Some((unit, fresh)),
            _ => None,
        })
        .collect();
    assert_eq!(fresh, [("a".to_string(), true), ("b".to_string(), true)]);
}

#[test]
fn a_dependent_waits_until_its_dependency_is_ready() {
    // The probe keeps failing until the test says it answered.
    let mut h = Sim::new(a_and_b_requiring_a());
    h.kernel.ready.insert("a".into(), ReadyTarget::Tcp { host: "127.0.0.1".into(), port: 8188 });
    h.start("b").unwrap();
    h.wait_spawns("a", 1);
    h.sleep(Duration::from_secs(5));
    assert_eq!(h.snapshot("a").status, Status::Starting);
    assert_eq!(h.snapshot("b").status, Status::Starting);
    assert!(h.mains("b").is_empty(), "b spawned before a was ready");

    h.probe_succeeds("a");
    h.wait_status("a", Status::Started);
    h.wait_status("b", Status::Started);
    assert_eq!(h.mains("b").len(), 1);
}

#[test]
fn stopping_a_unit_stops_its_dependents_first() {
    let mut h = Sim::new(a_and_b_requiring_a());
    h.start("b").unwrap();
    h.wait_status("b", Status::Started);
    let (a, b) = (h.main_pid("a"), h.main_pid("b"));
    h.events();

    h.stop("a").unwrap();
    assert_eq!(h.unit_signals("b").len(), 1, "b is signalled first");
    assert!(h.unit_signals("a").is_empty(), "a is signalled while b still runs");
    assert_eq!(h.snapshot("a").status, Status::Stopping);

    // b takes its time; a keeps waiting.
    h.sleep(Duration::from_secs(3));
    assert!(h.unit_signals("a").is_empty(), "a is signalled while b still runs");

    h.exit(b, signaled(TERM));
    h.wait_status("b", Status::Stopped);
    h.wait_for("a's signal", |h| !h.unit_signals("a").is_empty());
    h.exit(a, signaled(TERM));
    h.wait_status("a", Status::Stopped);

    let b_end = h.position(|x| matches!(x, Action::EndRun { unit } if unit == "b")).unwrap();
    let a_signal = h.position(|x| matches!(x, Action::SignalUnit { unit, signal: TERM } if unit == "a")).unwrap();
    assert!(b_end < a_signal, "a was signalled before b was gone: {:#?}", h.actions());
    // The journal sees b stopped before a is.
    let stopped: Vec<String> = h
        .events()
        .into_iter()
        .filter(|e| e.event == EventKind::State && e.status == Status::Stopped)
        .map(|e| e.unit)
        .collect();
    assert_eq!(stopped, ["b", "a"]);
}

#[test]
fn starting_a_dependent_while_its_requirement_stops_waits_and_brings_it_back() {
    let mut h = Sim::new(a_and_b_requiring_a());
    h.start("b").unwrap();
    h.wait_status("b", Status::Started);
    let (a, b) = (h.main_pid("a"), h.main_pid("b"));
    h.stop("a").unwrap();
    h.exit(b, signaled(TERM));
    h.wait_for("a's signal", |h| !h.unit_signals("a").is_empty());

    // a is still on its way down (it takes its time with SIGTERM) when b is asked for again.
    h.start("b").unwrap();
    h.sleep(Duration::from_secs(1));
    assert_eq!(h.mains("b").len(), 1, "b started again while the unit it requires was stopping");

    h.exit(a, signaled(TERM));
    h.wait_status("b", Status::Started);
    assert_eq!(h.snapshot("a").status, Status::Started, "a must come back up for b");
    assert!(h.mains("a")[1].at <= h.mains("b")[1].at);
    let a_again = h.position(|x| matches!(x, Action::Spawn { pid, .. } if *pid == h.main_pid("a"))).unwrap();
    let b_again = h.position(|x| matches!(x, Action::Spawn { pid, .. } if *pid == h.main_pid("b"))).unwrap();
    assert!(a_again < b_again);
}

#[test]
fn restarting_a_unit_restarts_the_units_that_require_it() {
    // systemd: when a Requires= target is explicitly restarted, its dependents are restarted too.
    let mut h = Sim::new(a_and_b_requiring_a());
    h.obey("a");
    h.obey("b");
    h.start("b").unwrap();
    h.wait_status("b", Status::Started);

    h.restart("a").unwrap();
    h.wait_spawns("a", 2);
    h.wait_status("a", Status::Started);
    h.wait_status("b", Status::Started);
    assert_eq!(h.mains("b").len(), 2);
    // Down in reverse order, up in order.
    let b_end = h.position(|x| matches!(x, Action::EndRun { unit } if unit == "b")).unwrap();
    let a_end = h.position(|x| matches!(x, Action::EndRun { unit } if unit == "a")).unwrap();
    let a_again = h.position(|x| matches!(x, Action::Spawn { pid, .. } if *pid == h.main_pid("a"))).unwrap();
    let b_again = h.position(|x| matches!(x, Action::Spawn { pid, .. } if *pid == h.main_pid("b"))).unwrap();
    assert!(b_end < a_end && a_end < a_again && a_again < b_again, "{:#?}", h.actions());
}

#[test]
fn shutdown_stops_instances_before_services_and_reports_clean() {
    let inst = unit("comfy.instance", "[Instance]\nBlueprint=comfyui\n");
    // Named so that name order alone would stop the service first.
    let mut h = Sim::new(vec![inst, service("aaa-nginx", "")]);
    h.obey("comfy");
    h.obey("aaa-nginx");
    h.start("comfy").unwrap();
    h.start("aaa-nginx").unwrap();
    h.wait_status("comfy", Status::Started);
    h.wait_status("aaa-nginx", Status::Started);

    assert!(h.shutdown(), "clean");
    let comfy = h.position(|x| matches!(x, Action::SignalUnit { unit, signal: TERM } if unit == "comfy")).unwrap();
    let comfy_end = h.position(|x| matches!(x, Action::EndRun { unit } if unit == "comfy")).unwrap();
    let nginx = h.position(|x| matches!(x, Action::SignalUnit { unit, signal: TERM } if unit == "aaa-nginx")).unwrap();
    assert!(
        comfy < comfy_end && comfy_end < nginx,
        "instance must be down before the service is signalled: {:#?}",
        h.actions()
    );
    assert!(!h.actions().iter().any(|(_, x)| matches!(x, Action::SignalUnit { signal: KILL, .. })));
}

#[test]
fn commands_after_shutdown_began_are_refused() {
    let mut h = Sim::new(vec![service("s", "")]);
    h.start("s").unwrap();
    h.wait_status("s", Status::Started);
    h.begin_shutdown();
    assert_eq!(h.start("s"), Err(CommandError::ShuttingDown));
    h.exit(h.main_pid("s"), signaled(TERM));
    assert_eq!(h.shutdown, Some(true));
}

// ---- escalation ---------------------------------------------------------

#[test]
fn a_process_ignoring_sigterm_gets_sigkill_after_timeout_stop_sec() {
    let mut h = Sim::new(vec![service("stubborn", "TimeoutStopSec=5s\n")]);
    h.start("stubborn").unwrap();
    h.wait_status("stubborn", Status::Started);

    h.stop("stubborn").unwrap();
    h.wait_status("stubborn", Status::Stopped);
    let signals = h.unit_signals("stubborn");
    assert_eq!(signals.iter().map(|s| s.1).collect::<Vec<_>>(), [TERM, KILL]);
    assert_eq!(signals[1].0 - signals[0].0, Duration::from_secs(5));
    let snap = h.snapshot("stubborn");
    assert_eq!(snap.pid, None);
    assert_eq!(snap.last_exit.as_deref(), Some("stopped (SIGKILL) after TimeoutStopSec"));
}

#[test]
fn a_shutdown_that_needed_sigkill_is_not_clean() {
    let mut h = Sim::new(vec![service("stubborn", "TimeoutStopSec=7s\n"), service("polite", "")]);
    h.obey("polite");
    h.start("stubborn").unwrap();
    h.start("polite").unwrap();
    h.wait_status("stubborn", Status::Started);
    let began = h.now();
    assert!(!h.shutdown(), "not clean");
    assert_eq!(h.now() - began, Duration::from_secs(7));
}

#[test]
fn an_earlier_sigkill_does_not_make_a_later_shutdown_unclean() {
    // needed_sigkill describes the stop it happened in; a unit killed an hour
    // ago by a user's stop must not turn a tidy shutdown into an unclean exit.
    let mut h = Sim::new(vec![service("stubborn", "TimeoutStopSec=5s\n")]);
    h.start("stubborn").unwrap();
    h.wait_status("stubborn", Status::Started);
    h.stop("stubborn").unwrap();
    h.wait_status("stubborn", Status::Stopped);
    assert!(h.shutdown(), "clean");
}

// ---- restart policies ---------------------------------------------------

#[test]
fn crash_loop_backs_off_exponentially_then_hits_the_start_limit() {
    let mut h = Sim::new(vec![unit(
        "crashy.service",
        "[Unit]\nStartLimitBurst=5\nStartLimitIntervalSec=1min\n\
         [Service]\nExecStart=/bin/crashy\nRestart=on-failure\nRestartSec=100ms\n",
    )]);
    h.start("crashy").unwrap();
    h.wait_status("crashy", Status::Started);

    let mut delays = Vec::new();
    for run in 1..=5 {
        let pid = h.main_pid("crashy");
        let died = h.now();
        h.exit(pid, signaled(KILL));
        if run == 1 {
            let snap = h.snapshot("crashy");
            assert_eq!(snap.status, Status::Restarting);
            assert_eq!(snap.detail.as_deref(), Some("killed by SIGKILL; restarting in 0.1s"));
        }
        if run == 5 {
            break;
        }
        h.wait_spawns("crashy", run + 1);
        delays.push(h.mains("crashy")[run].at - died);
        let snap = h.wait_status("crashy", Status::Started);
        assert_eq!(snap.restarts, run as u32);
    }
    assert_eq!(delays, [100, 200, 400, 800].map(Duration::from_millis));

    // The sixth start within the minute is refused.
    let snap = h.wait_status("crashy", Status::Failed);
    assert!(snap.detail.as_deref().unwrap_or("").contains("start limit"), "{:?}", snap.detail);
    assert_eq!(snap.restarts, 5);
    h.sleep(Duration::from_secs(120));
    assert_eq!(h.mains("crashy").len(), 5);
    // Restarts continue the run's log instead of rotating it.
    let fresh: Vec<bool> = h
        .actions()
        .into_iter()
        .filter_map(|(_, x)| if let Action::BeginRun { fresh, .. } = x { Some(fresh) } else { None })
        .collect();
    assert_eq!(fresh, [true, false, false, false, false]);
}

#[test]
fn restart_no_leaves_an_error_with_the_exit_code() {
    let mut h = Sim::new(vec![service("once", "Restart=no\n")]);
    h.start("once").unwrap();
    h.wait_status("once", Status::Started);
    h.exit(h.main_pid("once"), code(3));
    let snap = h.wait_status("once", Status::Error);
    assert_eq!(snap.detail.as_deref(), Some("exited with code 3"));
    assert_eq!(snap.last_exit.as_deref(), Some("exited with code 3"));
    h.sleep(Duration::from_secs(60));
    assert_eq!(h.mains("once").len(), 1);
}

#[test]
fn restart_on_failure_does_not_restart_a_clean_exit() {
    let mut h = Sim::new(vec![service("job", "Restart=on-failure\n")]);
    h.start("job").unwrap();
    h.wait_status("job", Status::Started);
    h.exit(h.main_pid("job"), code(0));
    h.wait_status("job", Status::Stopped);
    h.sleep(Duration::from_secs(60));
    assert_eq!(h.mains("job").len(), 1);
    assert_eq!(h.snapshot("job").status, Status::Stopped);
}

#[test]
fn restart_always_restarts_a_clean_exit() {
    let mut h = Sim::new(vec![service("loop", "Restart=always\nRestartSec=2s\n")]);
    h.start("loop").unwrap();
    h.wait_status("loop", Status::Started);
    let died = h.now();
    h.exit(h.main_pid("loop"), code(0));
    h.wait_spawns("loop", 2);
    assert_eq!(h.mains("loop")[1].at - died, Duration::from_secs(2));
    let snap = h.wait_status("loop", Status::Started);
    assert_eq!(snap.restarts, 1);
    assert_eq!(snap.last_exit.as_deref(), Some("exited with code 0"));
}

// ---- how a stop is delivered -------------------------------------------

#[test]
fn exec_stop_runs_with_mainpid_before_the_kill_signal() {
    let mut h = Sim::new(vec![service("db", "ExecStop=/bin/db-stop --now\nKillSignal=SIGINT\n")]);
    h.start("db").unwrap();
    h.wait_status("db", Status::Started);
    let main = h.main_pid("db");

    h.stop("db").unwrap();
    let stop = h.spawns("db").into_iter().find(|s| s.role == Role::Stop).expect("ExecStop spawned");
    assert_eq!(stop.argv, ["/bin/db-stop", "--now"]);
    assert!(stop.env.contains(&("MAINPID".to_string(), main.to_string())), "{:?}", stop.env);
    assert!(stop.env.contains(&("RUN_ENV".to_string(), "db".to_string())), "the run's environment is kept");
    h.sleep(Duration::from_secs(1));
    assert!(h.unit_signals("db").is_empty(), "signalled while ExecStop still runs");

    h.exit(stop.pid, code(0));
    h.wait_for("the kill signal", |h| !h.unit_signals("db").is_empty());
    assert_eq!(h.unit_signals("db").iter().map(|s| s.1).collect::<Vec<_>>(), [Signal::SIGINT]);
    h.exit(main, signaled(Signal::SIGINT));
    let snap = h.wait_status("db", Status::Stopped);
    assert_eq!(snap.detail, None);
}

#[test]
fn kill_mode_chooses_whom_the_kill_signal_reaches() {
    let mut h = Sim::new(vec![
        service("mixed", "KillMode=mixed\n"),
        service("group", "KillMode=process-group\n"),
        service("cgroup", "KillMode=control-group\n"),
    ]);
    for name in ["mixed", "group", "cgroup"] {
        h.start(name).unwrap();
        h.wait_status(name, Status::Started);
    }
    let (mixed, group) = (h.main_pid("mixed"), h.main_pid("group"));
    for name in ["mixed", "group", "cgroup"] {
        h.stop(name).unwrap();
    }
    let signals: Vec<Action> = h
        .actions()
        .into_iter()
        .map(|(_, a)| a)
        .filter(|a| matches!(a, Action::SignalProcess { .. } | Action::SignalGroup { .. } | Action::SignalUnit { .. }))
        .filter(|a| !matches!(a, Action::SignalUnit { signal: CONT, .. }))
        .collect();
    assert_eq!(
        signals,
        [
            Action::SignalProcess { pid: mixed, signal: TERM },
            Action::SignalGroup { pgid: group, signal: TERM },
            Action::SignalUnit { unit: "cgroup".into(), signal: TERM },
        ]
    );
}

#[test]
fn kill_mode_process_signals_the_main_process_alone_and_leaves_the_rest_running() {
    // As sshd's unit: a restart must not take the sessions it started with it.
    let text = "[Service]\nExecStart=/bin/sshd\nKillMode=process\nTimeoutStopSec=5s\n";
    let (sshd, warnings) = parse_unit_str(Path::new("sshd.service"), text).expect("parses");
    assert!(warnings[0].message.contains("what it started keeps running"), "{warnings:?}");
    let mut h = Sim::new(vec![sshd]);
    h.start("sshd").unwrap();
    h.wait_status("sshd", Status::Started);
    let first = h.main_pid("sshd");
    h.add_leftover("sshd", 9001);
    h.restart("sshd").unwrap();
    h.exit(first, signaled(TERM));
    h.wait_status("sshd", Status::Started);
    assert_ne!(h.main_pid("sshd"), first, "a new run");
    assert!(h.unit_signals("sshd").is_empty(), "nothing but the main process was signalled");
    assert!(h.kernel.live["sshd"].contains(&9001), "the session survives");
    assert!(h.notes("sshd").iter().any(|n| n.contains("1 other process(es) of the unit left running")));
    // A main process that ignores TERM gets the final SIGKILL alone.
    let second = h.main_pid("sshd");
    h.stop("sshd").unwrap();
    h.sleep(Duration::from_secs(6));
    assert!(h.actions().iter().any(|(_, a)| *a == Action::SignalProcess { pid: second, signal: KILL }));
    h.wait_status("sshd", Status::Stopped);
    assert!(h.unit_signals("sshd").is_empty());
    assert!(h.kernel.live["sshd"].contains(&9001));
    // And a main process that ends by itself leaves the rest too.
    h.start("sshd").unwrap();
    h.wait_status("sshd", Status::Started);
    h.exit(h.main_pid("sshd"), code(0));
    h.wait_status("sshd", Status::Stopped);
    assert!(h.unit_signals("sshd").is_empty() && h.kernel.live["sshd"].contains(&9001));
}

#[test]
fn leftover_processes_are_killed_before_a_restart() {
    let mut h = Sim::new(vec![service("forker", "Restart=on-failure\nRestartSec=100ms\n")]);
    h.start("forker").unwrap();
    h.wait_status("forker", Status::Started);
    h.add_leftover("forker", 9001);

    h.exit(h.main_pid("forker"), code(1));
    assert_eq!(h.unit_signals("forker").iter().map(|s| s.1).collect::<Vec<_>>(), [TERM]);
    h.sleep(Duration::from_secs(10));
    assert_eq!(h.mains("forker").len(), 1, "restarted while a process of the last run was alive");
    assert!(!h.actions().iter().any(|(_, a)| matches!(a, Action::EndRun { .. })));

    let gone = h.now();
    h.remove_leftover("forker", 9001);
    h.wait_spawns("forker", 2);
    let end = h.actions().into_iter().find(|(_, a)| matches!(a, Action::EndRun { .. })).unwrap().0;
    // Noticed at once (the cgroup emptied), then the normal backoff.
    assert_eq!(end, gone);
    assert_eq!(h.mains("forker")[1].at - end, Duration::from_millis(100));
    assert_eq!(h.snapshot("forker").last_exit.as_deref(), Some("exited with code 1"));
}

#[test]
fn leftovers_ignoring_sigterm_are_killed_after_timeout_stop_sec() {
    let mut h = Sim::new(vec![service("forker", "Restart=no\nTimeoutStopSec=3s\n")]);
    h.start("forker").unwrap();
    h.wait_status("forker", Status::Started);
    h.add_leftover("forker", 9001);
    h.exit(h.main_pid("forker"), code(2));
    let snap = h.wait_status("forker", Status::Error);
    assert_eq!(snap.detail.as_deref(), Some("exited with code 2"));
    let signals = h.unit_signals("forker");
    assert_eq!(signals.iter().map(|s| s.1).collect::<Vec<_>>(), [TERM, KILL]);
    assert_eq!(signals[1].0 - signals[0].0, Duration::from_secs(3));
}

/// Stops a unit whose main process leaves a descendant (9001) that ignores
/// SIGTERM; returns once the main process is gone and the unit drains.
fn stop_leaving_a_descendant(h: &mut Sim) {
    h.start("forker").unwrap();
    h.wait_status("forker", Status::Started);
    h.add_leftover("forker", 9001);
    h.stop("forker").unwrap();
    assert_eq!(h.unit_signals("forker").iter().map(|s| s.1).collect::<Vec<_>>(), [TERM]);
    h.exit(h.main_pid("forker"), signaled(TERM));
    assert_eq!(h.snapshot("forker").status, Status::Stopping);
}

fn end_runs(h: &Sim) -> Vec<Instant> {
    h.actions().into_iter().filter(|(_, a)| matches!(a, Action::EndRun { .. })).map(|(at, _)| at).collect()
}

#[test]
fn a_drain_ends_when_the_cgroup_says_it_emptied() {
    let mut h = Sim::with_hints(
        vec![service(
            "forker",
            "TimeoutStopSec=60s
",
        )],
        Hints::Cgroup,
    );
    stop_leaving_a_descendant(&mut h);
    h.sleep(Duration::from_secs(5));
    assert_eq!(h.snapshot("forker").status, Status::Stopping, "ended with a process left");

    let gone = h.now();
    h.remove_leftover("forker", 9001);
    h.wait_status("forker", Status::Stopped);
    assert_eq!(end_runs(&h), [gone], "not ended at the moment the cgroup emptied");
}

#[test]
fn a_drain_without_cgroups_ends_when_the_reaper_reaps_the_last_orphan() {
    let mut h = Sim::with_hints(
        vec![service(
            "forker",
            "TimeoutStopSec=60s
",
        )],
        Hints::Reaper,
    );
    stop_leaving_a_descendant(&mut h);
    // Without watch_drain the fake (like the real reaper) would stay silent.
    assert!(h.kernel.watched.contains("forker"), "the engine did not ask to be woken");

    // An orphan of something else is reaped: the unit is checked, and stays.
    h.add_leftover("other", 7001);
    h.remove_leftover("other", 7001);
    assert_eq!(h.snapshot("forker").status, Status::Stopping, "ended with a process left");

    let gone = h.now();
    h.remove_leftover("forker", 9001);
    h.wait_status("forker", Status::Stopped);
    assert_eq!(end_runs(&h), [gone], "not ended when its last orphan was reaped");
    assert!(!h.kernel.watched.contains("forker"), "still watched after end_run");
}

#[test]
fn nothing_runs_on_a_timer_while_a_unit_drains() {
    let mut h = Sim::new(vec![service(
        "forker",
        "TimeoutStopSec=10s
",
    )]);
    let began = h.now();
    stop_leaving_a_descendant(&mut h);
    let checks = h.live_checks();
    // Nine virtual seconds of waiting: no check, no signal, no note.
    let actions = h.actions().len();
    h.sleep_until(began + Duration::from_secs(9));
    assert_eq!(h.live_checks(), checks, "membership was polled while draining");
    assert_eq!(h.actions().len(), actions, "something ran during the wait: {:#?}", &h.actions()[actions..]);
    // The one timer: TimeoutStopSec, then SIGKILL ends it.
    h.wait_status("forker", Status::Stopped);
    let signals = h.unit_signals("forker");
    assert_eq!(signals.iter().map(|s| s.1).collect::<Vec<_>>(), [TERM, KILL]);
    assert_eq!(signals[1].0 - signals[0].0, Duration::from_secs(10));
}

#[test]
fn restart_command_stops_then_starts_afresh() {
    let mut h = Sim::new(vec![service("web", "")]);
    h.obey("web");
    h.start("web").unwrap();
    h.wait_status("web", Status::Started);
    let first = h.main_pid("web");
    h.events();

    h.restart("web").unwrap();
    let snap = h.wait_status("web", Status::Started);
    let mains = h.mains("web");
    assert_eq!(mains.len(), 2);
    assert_ne!(mains[1].pid, first);
    assert_eq!(snap.pid, Some(mains[1].pid));
    assert_eq!(snap.restarts, 0, "a requested restart is not a crash");
    let fresh: Vec<bool> = h
        .actions()
        .into_iter()
        .filter_map(|(_, x)| if let Action::BeginRun { fresh, .. } = x { Some(fresh) } else { None })
        .collect();
    assert_eq!(fresh, [true, true]);
    // The old run was fully over (signalled, ended) before the new one began.
    let end = h.position(|x| matches!(x, Action::EndRun { .. })).unwrap();
    let second = h.position(|x| matches!(x, Action::Spawn { pid, .. } if *pid == mains[1].pid)).unwrap();
    assert!(end < second);
    let statuses: Vec<Status> =
        h.events().into_iter().filter(|e| e.event == EventKind::State).map(|e| e.status).collect();
    assert_eq!(statuses.first(), Some(&Status::Stopping));
    assert_eq!(statuses.last(), Some(&Status::Started));
    assert!(statuses.contains(&Status::Stopped));
}

// ---- refusals and failures ---------------------------------------------

#[test]
fn a_unit_on_an_ordering_cycle_is_refused_naming_the_cycle() {
    let mut h = Sim::new(vec![
        unit("a.service", "[Unit]\nAfter=b.service\n[Service]\nExecStart=/bin/a\n"),
        unit("b.service", "[Unit]\nAfter=a.service\n[Service]\nExecStart=/bin/b\n"),
        service("c", ""),
    ]);
    match h.start("a") {
        Err(CommandError::Refused { unit, action: "start", why }) => {
            assert_eq!(unit, "a");
            assert!(why.contains("ordering cycle") && why.contains("a -> b"), "{why}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(h.spawns("a").is_empty() && h.spawns("b").is_empty());
    // Units off the cycle are unaffected.
    h.start("c").unwrap();
    h.wait_status("c", Status::Started);
}

#[test]
fn a_dependent_fails_when_its_requirement_fails_to_start() {
    let mut h = Sim::new(vec![
        service("a", "ExecStartPre=/bin/check-config\n"),
        unit("b.service", "[Unit]\nAfter=a.service\nRequires=a.service\n[Service]\nExecStart=/bin/b\n"),
    ]);
    h.start("b").unwrap();
    h.wait_for("a's pre-start", |h| !h.spawns("a").is_empty());
    let pre = h.spawns("a")[0].clone();
    assert_eq!(pre.role, Role::Pre);
    h.exit(pre.pid, code(1));

    let a = h.wait_status("a", Status::Error);
    assert_eq!(a.detail.as_deref(), Some("ExecStartPre exited with code 1"));
    let b = h.wait_status("b", Status::Failed);
    assert_eq!(b.detail.as_deref(), Some("dependency a failed"));
    assert!(h.spawns("b").is_empty());
}

#[test]
fn a_failing_exec_start_pre_prevents_the_main_process() {
    let mut h = Sim::new(vec![service("strict", "ExecStartPre=/bin/false\nExecStartPre=/bin/never\n")]);
    h.start("strict").unwrap();
    h.wait_for("the pre-start", |h| !h.spawns("strict").is_empty());
    h.exit(h.spawns("strict")[0].pid, code(1));
    h.wait_status("strict", Status::Error);
    h.sleep(Duration::from_secs(10));
    let spawned: Vec<Vec<String>> = h.spawns("strict").into_iter().map(|s| s.argv).collect();
    assert_eq!(spawned, [["/bin/false"]], "nothing runs after a failed ExecStartPre");
}

#[test]
fn a_dash_prefixed_exec_start_pre_may_fail() {
    let mut h = Sim::new(vec![service("lenient", "ExecStartPre=-/bin/false\n")]);
    h.start("lenient").unwrap();
    h.wait_for("the pre-start", |h| !h.spawns("lenient").is_empty());
    let pre = h.spawns("lenient")[0].clone();
    assert_eq!(pre.role, Role::Pre);
    assert_eq!(h.snapshot("lenient").status, Status::Starting);
    h.exit(pre.pid, code(1));
    h.wait_status("lenient", Status::Started);
    assert_eq!(h.mains("lenient").len(), 1);
}

// ---- timers that outlive their phase -------------------------------------

#[test]
fn a_stop_during_backoff_cancels_the_pending_restart() {
    let mut h = Sim::new(vec![service("crashy", "Restart=on-failure\nRestartSec=1s\n")]);
    h.start("crashy").unwrap();
    h.wait_status("crashy", Status::Started);
    h.exit(h.main_pid("crashy"), code(1));
    h.wait_status("crashy", Status::Restarting);

    h.sleep(Duration::from_millis(300));
    assert_eq!(h.stop("crashy"), Ok(Status::Stopped));
    // Well past the moment the backoff timer fires.
    h.sleep(Duration::from_secs(5));
    assert_eq!(h.mains("crashy").len(), 1, "respawned after being stopped");
    assert_eq!(h.snapshot("crashy").status, Status::Stopped);
}

#[test]
fn a_start_during_backoff_starts_once() {
    let mut h = Sim::new(vec![service("crashy", "Restart=on-failure\nRestartSec=1s\n")]);
    h.start("crashy").unwrap();
    h.wait_status("crashy", Status::Started);
    h.exit(h.main_pid("crashy"), code(1));
    h.wait_status("crashy", Status::Restarting);
    h.sleep(Duration::from_millis(300));
    h.start("crashy").unwrap();
    h.wait_spawns("crashy", 2);
    h.sleep(Duration::from_secs(5));
    assert_eq!(h.mains("crashy").len(), 2, "the old backoff timer started it a second time");
    assert_eq!(h.snapshot("crashy").status, Status::Started);
}

// ---- new definitions -----------------------------------------------------

#[test]
fn set_units_stops_removed_units_and_adds_new_ones_stopped() {
    let mut h = Sim::new(vec![service("old", ""), service("kept", "")]);
    h.start("old").unwrap();
    h.wait_status("old", Status::Started);

    h.set_units(vec![service("kept", ""), service("new", "")]);
    assert_eq!(h.unit_signals("old").iter().map(|s| s.1).collect::<Vec<_>>(), [TERM]);
    assert_eq!(h.snapshot("old").status, Status::Stopping, "stays visible while it stops");
    assert_eq!(h.snapshot("new").status, Status::Stopped);

    h.exit(h.main_pid("old"), signaled(TERM));
    let deadline = h.now() + PATIENCE;
    while h.names().contains(&"old".to_string()) {
        assert!(h.now() < deadline, "old never left the snapshot");
        h.sleep(Duration::from_millis(1));
    }
    assert_eq!(h.names(), ["kept", "new"]);
    assert_eq!(h.start("old"), Err(CommandError::NoSuchUnit("old".into())));
}

// ---- live state ordering -------------------------------------------------

/// Regression (issue 11): a page fetched a snapshot while an exit was being
/// handled and showed `starting` after the `error` event. Every event and
/// snapshot carries a seq so a reader can tell which state is newer.
#[test]
fn every_event_has_a_higher_seq_and_a_snapshot_carries_the_latest() {
    let mut h = Sim::new(vec![service("quick", "Restart=no\n"), service("other", "")]);
    let added = h.snapshot("quick").seq;
    assert!(added > 0, "the `unit added` event has a seq");
    h.start("quick").unwrap();
    h.start("other").unwrap();
    h.wait_status("quick", Status::Started);
    h.exit(h.main_pid("quick"), code(1));
    let snap = h.wait_status("quick", Status::Error);
    let events: Vec<UnitEvent> = h.events().into_iter().filter(|e| e.unit == "quick").collect();
    assert!(events.len() >= 4, "added, starting, started, exit, error: {events:#?}");
    assert_eq!(events[0].seq, added);
    assert!(events.windows(2).all(|w| w[0].seq < w[1].seq), "seq rises with every event: {events:#?}");
    let last = events.last().expect("events");
    assert!(events.iter().filter(|e| e.status == Status::Started).all(|e| e.port == Some(FAKE_PORT)), "{events:#?}");
    assert_eq!(snap.seq, last.seq, "the snapshot reflects the latest event");
    assert_eq!(last.status, Status::Error);
    let older: Vec<&UnitEvent> = events.iter().filter(|e| e.status == Status::Starting).collect();
    assert!(older.iter().all(|e| e.seq < snap.seq), "a stale `starting` is recognisably older");
}

#[test]
fn a_missing_module_fails_at_once_instead_of_burning_the_start_limit() {
    let mut h = Sim::new(vec![service("app", "Restart=on-failure\nRestartSec=1s\n")]);
    h.kernel.log_tail.insert("app".into(), vec!["ModuleNotFoundError: No module named 'xformers'".into()]);
    h.start("app").unwrap();
    h.wait_status("app", Status::Started);
    h.exit(h.main_pid("app"), code(1));
    let snap = h.wait_status("app", Status::Failed);
    assert_eq!(snap.restarts, 0);
    let failure = snap.failure.expect("classified");
    assert_eq!(failure.class, crate::failure::FailureClass::MissingModule);
    assert_eq!(failure.hint.as_deref(), Some("pip install xformers into the instance's venv"));
    assert!(snap.detail.as_deref().unwrap().contains("missing-module"), "{:?}", snap.detail);
    h.sleep(Duration::from_secs(60));
    assert_eq!(h.mains("app").len(), 1, "never restarted");
}

#[test]
fn a_cuda_oom_restarts_with_backoff_and_a_user_start_forgets_it() {
    let mut h = Sim::new(vec![service("app", "Restart=on-failure\nRestartSec=1s\n")]);
    h.kernel
        .log_tail
        .insert("app".into(), vec!["torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB".into()]);
    h.start("app").unwrap();
    h.wait_status("app", Status::Started);
    h.exit(h.main_pid("app"), code(1));
    let snap = h.wait_status("app", Status::Restarting);
    assert!(snap.detail.as_deref().unwrap().contains("cuda-oom"), "{:?}", snap.detail);
    assert_eq!(snap.failure.map(|f| f.class), Some(crate::failure::FailureClass::CudaOom));
    h.wait_status("app", Status::Started);
    assert_eq!(h.mains("app").len(), 2);
    h.stop("app").unwrap();
    h.wait_status("app", Status::Stopped);
    h.start("app").unwrap();
    assert_eq!(h.snapshot("app").failure, None);
}

// ---- single transitions: (state, input) -> (state, effects) ---------------

/// An effect in a word or two, so a table row reads like what happened.
fn said(h: &Sim, effect: &Effect) -> String {
    let name = |id: &UnitId| h.name(*id);
    match effect {
        Effect::CheckConditions { unit } => format!("check-conditions {}", name(unit)),
        Effect::BeginRun { unit, fresh } => format!("begin-run {} fresh={fresh}", name(unit)),
        Effect::Spawn { unit, role, command, .. } => {
            format!("spawn {} {role:?} {}", name(unit), command.argv.join(" "))
        }
        Effect::Signal { target: Target::Unit(unit), signal } => format!("signal {} {signal}", name(unit)),
        Effect::Signal { target: Target::Process(pid), signal } => format!("signal pid {pid} {signal}"),
        Effect::Signal { target: Target::Group(pgid), signal } => format!("signal group {pgid} {signal}"),
        Effect::ArmTimer { unit, kind, at, .. } => {
            format!("arm {kind:?} {} +{}ms", name(unit), at.duration_since(h.now).as_millis())
        }
        Effect::Probe { unit, .. } => format!("probe {}", name(unit)),
        Effect::WatchBus { unit, name: bus, .. } => format!("watch-bus {} {bus}", name(unit)),
        Effect::CheckDrained { unit } => format!("check-drained {}", name(unit)),
        Effect::GatherEvidence { unit } => format!("gather-evidence {}", name(unit)),
        Effect::ReadPidFile { unit } => format!("read-pid-file {}", name(unit)),
        Effect::FindPortHolder { port, .. } => format!("find-port-holder {port}"),
        Effect::EndRun { unit } => format!("end-run {}", name(unit)),
        Effect::Note { text, .. } => format!("note {text}"),
        Effect::Emit(e) => format!("emit {} {} {}", e.event, e.status, e.detail.as_deref().unwrap_or("-")),
        Effect::Warn { text, .. } => format!("warn {text}"),
        Effect::Reply { result, .. } => format!("reply {result:?}"),
        Effect::ShutdownDone { clean } => format!("shutdown-done clean={clean}"),
        Effect::EndContainer { why } => format!("end-container {why}"),
    }
}

/// Steps `inputs` into the machine itself (no answers fed back, no kernel):
/// the state after the last, and what it asked for.
fn step_raw(h: &mut Sim, inputs: Vec<Input>) -> (UnitState, Vec<String>) {
    let mut effects = Vec::new();
    let mut unit = None;
    for input in inputs {
        if let Input::Command { cmd: Cmd::Start(name) | Cmd::Stop(name), .. } = &input {
            unit = Some(h.id(name));
        }
        effects = h.units.step(input, h.clock());
    }
    let id = unit.unwrap_or_else(|| h.id("a"));
    let said = effects.iter().map(|e| said(h, e)).collect();
    (h.units.state(id).clone(), said)
}

fn running(extra: &str) -> (Sim, i32) {
    let mut h = Sim::new(vec![service("a", extra)]);
    h.start("a").unwrap();
    let pid = h.main_pid("a");
    (h, pid)
}

fn start_cmd(name: &str) -> Input {
    Input::Command { cmd: Cmd::Start(name.into()), reply: None }
}

fn stop_cmd(name: &str) -> Input {
    Input::Command { cmd: Cmd::Stop(name.into()), reply: None }
}

fn exited(stage: StopStage, ending: RunEnd) -> UnitState {
    UnitState::Stopping(crate::supervisor::machine::Stop {
        stage,
        main: None,
        ending,
        then: Then::Policy,
        escalated: false,
        remained: false,
        post: None,
    })
}

#[test]
fn a_start_queues_a_job_and_asks_for_the_conditions() {
    let mut h = Sim::new(vec![service("a", "")]);
    let a = h.id("a");
    let (state, effects) = step_raw(&mut h, vec![start_cmd("a")]);
    assert_eq!(state, UnitState::Starting(crate::supervisor::machine::StartStep::Conditions { fresh: true }));
    assert_eq!(effects, ["emit state starting waiting for dependencies", "check-conditions a"]);
    // An unmet condition skips the start: stopped, not failed.
    let (state, effects) =
        step_raw(&mut h, vec![Input::Conditions { unit: a, unmet: Some("ConditionPathExists=/x not met".into()) }]);
    assert_eq!(state, UnitState::Inactive(Outcome::Stopped));
    assert_eq!(effects, ["emit state stopped skipped: ConditionPathExists=/x not met"]);
}

#[test]
fn a_refused_begin_run_fails_the_start_with_the_os_reason() {
    let mut h = Sim::new(vec![service("a", "")]);
    let a = h.id("a");
    step_raw(&mut h, vec![start_cmd("a"), Input::Conditions { unit: a, unmet: None }]);
    let refused = Err(OsError::Refused("instances are not configured".into()));
    let (state, effects) = step_raw(&mut h, vec![Input::RunBegun { unit: a, result: refused }]);
    assert_eq!(state, UnitState::Inactive(Outcome::Failed));
    assert_eq!(effects, ["emit state failed instances are not configured"]);
}

#[test]
fn transitions_of_a_run_that_ends_by_itself() {
    let rows: Vec<(&str, i32, usize, Vec<&str>)> = vec![
        // (unit file extra, exit code, live processes left, effects of the membership answer)
        ("Restart=no\n", 0, 0, vec!["end-run a", "emit state stopped exited with code 0"]),
        (
            "Restart=no\nTimeoutStopSec=4s\n",
            3,
            1,
            vec![
                "emit state stopping main process exited; stopping what it left",
                "signal a SIGTERM",
                "signal a SIGCONT",
                "arm StopTimeout a +4000ms",
                "check-drained a",
            ],
        ),
        // A bad exit is classified first: its log is asked for before the run ends.
        ("Restart=on-failure\n", 3, 0, vec!["gather-evidence a"]),
    ];
    for (extra, exit, live, expected) in rows {
        let (mut h, pid) = running(extra);
        let a = h.id("a");
        let (state, effects) = step_raw(&mut h, vec![Input::Exit { pid, status: code(exit) }]);
        assert_eq!(state, exited(StopStage::Exited, RunEnd::Exited(code(exit))), "{extra}");
        let said = format!("exited with code {exit}");
        assert_eq!(
            effects,
            [format!("note [aikore] {said}"), format!("emit exit started {said}"), "check-drained a".into()]
        );
        let (_, effects) = step_raw(&mut h, vec![Input::Members { unit: a, live }]);
        assert_eq!(effects, expected, "{extra} with {live} left");
    }
}

#[test]
fn transitions_of_a_stop() {
    let (mut h, pid) = running("TimeoutStopSec=5s\n");
    let (state, effects) = step_raw(&mut h, vec![stop_cmd("a")]);
    let UnitState::Stopping(stop) = &state else { panic!("{state:?}") };
    assert_eq!(
        (stop.main, &stop.stage, stop.then),
        (Some(pid), &StopStage::Draining { sigkill_sent: false }, Then::Down)
    );
    assert_eq!(
        effects,
        [
            "emit state stopping -",
            "arm StopTimeout a +5000ms",
            "signal a SIGTERM",
            "signal a SIGCONT",
            "check-drained a"
        ]
    );
    // TimeoutStopSec passes: SIGKILL, and a grace period before giving up.
    let a = h.id("a");
    let epoch = h.units.epoch(a);
    h.now += Duration::from_secs(5);
    let (state, effects) = step_raw(&mut h, vec![Input::Timer { unit: a, epoch, kind: TimerKind::StopTimeout }]);
    let UnitState::Stopping(stop) = &state else { panic!("{state:?}") };
    assert_eq!((&stop.stage, stop.escalated), (&StopStage::Draining { sigkill_sent: true }, true));
    assert_eq!(
        effects,
        [
            "note [aikore] still running after TimeoutStopSec; sending SIGKILL",
            "signal a SIGKILL",
            "arm StopTimeout a +5000ms",
            "check-drained a"
        ]
    );
}

#[test]
fn late_timers_and_probe_answers_change_nothing() {
    let mut h = Sim::new(vec![service("a", "Restart=always\nRestartSec=1s\n")]);
    h.kernel.ready.insert("a".into(), ReadyTarget::Tcp { host: "127.0.0.1".into(), port: 8188 });
    h.start("a").unwrap();
    let a = h.id("a");
    let stale = h.probes[&a];
    h.exit(h.main_pid("a"), code(1));
    assert_eq!(h.units.state(a), &UnitState::Backoff);
    for input in [
        Input::Ready { unit: a, epoch: stale },
        Input::Timer { unit: a, epoch: stale, kind: TimerKind::RestartDue },
        Input::Timer { unit: a, epoch: stale, kind: TimerKind::StopTimeout },
    ] {
        let (state, effects) = step_raw(&mut h, vec![input.clone()]);
        assert_eq!((state, effects), (UnitState::Backoff, Vec::<String>::new()), "{input:?}");
    }
}

#[test]
fn guards_say_what_a_command_means_in_each_state() {
    use crate::supervisor::machine::StartMove;
    let stop = exited(StopStage::Draining { sigkill_sent: false }, RunEnd::Requested);
    let rows: Vec<(UnitState, StartMove, bool, Option<i32>, Status)> = vec![
        (UnitState::Inactive(Outcome::Stopped), StartMove::Begin, false, None, Status::Stopped),
        (UnitState::Inactive(Outcome::Failed), StartMove::Begin, false, None, Status::Failed),
        (UnitState::Backoff, StartMove::Begin, true, None, Status::Restarting),
        (UnitState::WaitDeps { fresh: true }, StartMove::Nothing, true, None, Status::Starting),
        (UnitState::Running { pid: 7, ready: Readiness::Waiting }, StartMove::Nothing, true, Some(7), Status::Starting),
        (UnitState::Running { pid: 7, ready: Readiness::Stalled }, StartMove::Nothing, true, Some(7), Status::Stalled),
        (UnitState::Running { pid: 7, ready: Readiness::Ready }, StartMove::Nothing, true, Some(7), Status::Started),
        (stop, StartMove::AfterStop, true, None, Status::Stopping),
    ];
    for (state, start, stop, reload, status) in rows {
        assert_eq!(state.status(), status, "{state:?}");
        assert_eq!(state.can_start(), start, "{state:?}");
        assert_eq!(state.can_stop().is_ok(), stop, "{state:?}");
        assert_eq!(state.can_reload().ok(), reload, "{state:?}");
        if let Err(e) = state.can_reload() {
            assert_eq!(e.to_string(), format!("it is {status}"));
        }
    }
}

#[test]
fn a_reload_is_refused_naming_the_state() {
    let mut h = Sim::new(vec![service("a", "ExecReload=/bin/kill -HUP $MAINPID\n")]);
    let refused = h.command(Cmd::Reload("a".into()));
    assert_eq!(refused, Err(CommandError::Refused { unit: "a".into(), action: "reload", why: "it is stopped".into() }));
    h.start("a").unwrap();
    // Answered once the ExecReload= commands finished.
    h.last_reply += 1;
    let to = ReplyTo(h.last_reply);
    h.input(Input::Command { cmd: Cmd::Reload("a".into()), reply: Some(to) });
    assert!(!h.replies.contains_key(&to));
    let reload = h.spawns("a").into_iter().find(|s| s.role == Role::Reload).expect("spawned");
    assert!(reload.env.contains(&("MAINPID".to_string(), h.main_pid("a").to_string())));
    h.exit(reload.pid, code(0));
    assert_eq!(h.replies.remove(&to), Some(Ok(Answer::Done)));
}

#[test]
fn a_oneshot_runs_each_exec_start_then_remains_and_its_stop_runs_exec_stop() {
    let mut h = Sim::new(vec![
        service("setup", "Type=oneshot\nRemainAfterExit=yes\nExecStart=/bin/setup2\nExecStop=/bin/undo\n"),
        unit("app.service", "[Unit]\nRequires=setup.service\nAfter=setup.service\n[Service]\nExecStart=/bin/app\n"),
    ]);
    h.start("app").unwrap();
    let first = h.mains("setup");
    assert_eq!(first.len(), 1);
    assert!(h.mains("app").is_empty(), "app started before the oneshot finished");
    assert_eq!(h.snapshot("setup").status, Status::Starting);
    h.exit(first[0].pid, code(0));
    let second = h.mains("setup")[1].clone();
    assert_eq!(second.argv, ["/bin/setup2"]);
    h.exit(second.pid, code(0));
    let setup = h.snapshot("setup");
    assert_eq!((setup.status, setup.pid), (Status::Started, None));
    assert_eq!(h.units.state(h.id("setup")), &UnitState::Remaining);
    h.wait_status("app", Status::Started);

    h.stop("setup").unwrap();
    h.exit(h.main_pid("app"), signaled(TERM));
    let undo = h.spawns("setup").into_iter().find(|s| s.role == Role::Stop).expect("ExecStop ran");
    h.exit(undo.pid, code(0));
    h.wait_status("setup", Status::Stopped);
}

#[test]
fn a_oneshot_that_finished_satisfies_what_requires_it_and_a_failed_one_does_not() {
    for (exit, app) in [(0, Status::Started), (1, Status::Failed)] {
        let mut h = Sim::new(vec![
            service("setup", "Type=oneshot\n"),
            unit("app.service", "[Unit]\nRequires=setup.service\nAfter=setup.service\n[Service]\nExecStart=/bin/app\n"),
        ]);
        h.start("app").unwrap();
        h.exit(h.main_pid("setup"), code(exit));
        assert_eq!(h.snapshot("app").status, app, "oneshot exited with {exit}");
    }
}

#[test]
fn a_notify_service_is_started_at_ready_and_killed_when_its_watchdog_goes_quiet() {
    let mut h = Sim::new(vec![service("d", "Type=notify\nWatchdogSec=2s\nRestart=on-failure\nRestartSec=1s\n")]);
    h.start("d").unwrap();
    let snap = h.snapshot("d");
    assert_eq!((snap.status, snap.detail.as_deref()), (Status::Starting, Some("waiting for READY=1")));
    h.notify("d", "STATUS=loading\n");
    assert_eq!(h.snapshot("d").detail.as_deref(), Some("loading"));
    h.notify("d", "READY=1\nSTATUS=serving\n");
    let snap = h.snapshot("d");
    assert_eq!((snap.status, snap.detail.as_deref()), (Status::Started, Some("serving")));
    // Pings keep it alive past WatchdogSec.
    for _ in 0..3 {
        h.sleep(Duration::from_millis(1500));
        h.notify("d", "WATCHDOG=1");
    }
    assert_eq!(h.mains("d").len(), 1);
    let quiet = h.now();
    h.wait_for("the watchdog", |h| !h.unit_signals("d").is_empty());
    assert_eq!(h.unit_signals("d"), [(quiet + Duration::from_secs(2), Signal::SIGABRT)]);
    h.exit(h.main_pid("d"), ExitStatus::Signaled { signal: libc::SIGABRT, core_dumped: true });
    let snap = h.wait_status("d", Status::Restarting);
    assert!(snap.detail.as_deref().unwrap_or("").starts_with("watchdog timeout"), "{:?}", snap.detail);
    h.wait_spawns("d", 2);
}

// ---- exit statuses, restart curves, kill signals (issue 14) -------------------

#[test]
fn success_exit_status_is_clean_and_the_restart_lists_override_restart() {
    let mut h = Sim::new(vec![
        service("ok3", "Restart=on-failure\nSuccessExitStatus=3 SIGUSR1\n"),
        service("prevent", "Restart=always\nRestartPreventExitStatus=4\n"),
        service("force", "Restart=no\nRestartForceExitStatus=5\nRestartSec=1s\n"),
    ]);
    for name in ["ok3", "prevent", "force"] {
        h.start(name).unwrap();
        h.wait_status(name, Status::Started);
    }
    h.exit(h.main_pid("ok3"), code(3));
    assert_eq!(h.wait_status("ok3", Status::Stopped).detail.as_deref(), Some("exited with code 3"));
    h.exit(h.main_pid("prevent"), code(4));
    h.wait_status("prevent", Status::Error);
    h.exit(h.main_pid("force"), code(5));
    h.wait_status("force", Status::Restarting);
    h.wait_spawns("force", 2);
    h.sleep(Duration::from_secs(60));
    assert_eq!((h.mains("ok3").len(), h.mains("prevent").len()), (1, 1));
}

#[test]
fn restart_steps_climb_from_restart_sec_to_restart_max_delay_sec() {
    let mut h = Sim::new(vec![service("c", "Restart=always\nRestartSec=1s\nRestartSteps=2\nRestartMaxDelaySec=4s\n")]);
    h.start("c").unwrap();
    let mut gaps = Vec::new();
    for n in 1..=4 {
        h.wait_status("c", Status::Started);
        let died = h.now();
        h.exit(h.main_pid("c"), code(1));
        h.wait_spawns("c", n + 1);
        gaps.push((h.mains("c")[n].at - died).as_millis());
    }
    assert_eq!(gaps, [1000, 2000, 4000, 4000]);
}

#[test]
fn final_kill_signal_send_sighup_and_restart_kill_signal_are_the_signals_sent() {
    let mut h = Sim::new(vec![service(
        "s",
        "SendSIGHUP=yes\nFinalKillSignal=SIGQUIT\nRestartKillSignal=SIGUSR2\nTimeoutStopSec=2s\n",
    )]);
    h.start("s").unwrap();
    h.wait_status("s", Status::Started);
    let stopped = h.now();
    h.stop("s").unwrap();
    h.wait_for("the final kill signal", |h| h.unit_signals("s").len() >= 3);
    let signals = h.unit_signals("s");
    assert_eq!(
        signals,
        [(stopped, TERM), (stopped, Signal::SIGHUP), (stopped + Duration::from_secs(2), Signal::SIGQUIT)]
    );
    h.exit(h.main_pid("s"), signaled(Signal::SIGQUIT));
    h.wait_status("s", Status::Stopped);
    h.start("s").unwrap();
    h.wait_status("s", Status::Started);
    h.restart("s").unwrap();
    assert_eq!(h.unit_signals("s")[3].1, Signal::SIGUSR2, "a restart's stop uses RestartKillSignal=");
}

#[test]
fn send_sigkill_no_leaves_what_ignores_the_kill_signal_running() {
    let mut h = Sim::new(vec![service("stubborn", "SendSIGKILL=no\nTimeoutStopSec=3s\n")]);
    h.start("stubborn").unwrap();
    h.wait_status("stubborn", Status::Started);
    h.stop("stubborn").unwrap();
    let snap = h.wait_status("stubborn", Status::Stopped);
    assert_eq!(snap.status, Status::Stopped);
    assert!(!h.unit_signals("stubborn").iter().any(|(_, s)| *s == KILL), "{:?}", h.unit_signals("stubborn"));
}

#[test]
fn watchdog_signal_replaces_sigabrt() {
    let mut h = Sim::new(vec![service(
        "w",
        "Type=notify\nWatchdogSec=1s\nWatchdogSignal=SIGUSR1\nTimeoutAbortSec=3s\nTimeoutStopSec=60s\n",
    )]);
    h.start("w").unwrap();
    h.notify("w", "READY=1");
    let quiet = h.now();
    h.wait_for("the watchdog", |h| !h.unit_signals("w").is_empty());
    assert_eq!(h.unit_signals("w")[0], (quiet + Duration::from_secs(1), Signal::SIGUSR1));
    // TimeoutAbortSec=3s, not TimeoutStopSec=, until SIGKILL.
    h.wait_for("SIGKILL", |h| h.unit_signals("w").len() >= 2);
    assert_eq!(h.unit_signals("w")[1], (quiet + Duration::from_secs(4), KILL));
}

#[test]
fn requisite_fails_at_once_when_the_other_unit_is_not_active_and_never_starts_it() {
    let mut h = Sim::new(vec![
        service("db", ""),
        unit("app.service", "[Unit]\nRequisite=db.service\nAfter=db.service\n[Service]\nExecStart=/bin/app\n"),
    ]);
    h.start("app").unwrap();
    let snap = h.wait_status("app", Status::Failed);
    assert_eq!(snap.detail.as_deref(), Some("requisite db is not active"));
    assert_eq!(h.snapshot("db").status, Status::Stopped, "Requisite= never starts the other unit");
    h.start("db").unwrap();
    h.wait_status("db", Status::Started);
    h.start("app").unwrap();
    h.wait_status("app", Status::Started);
    // And it goes down with it.
    h.obey("app");
    h.obey("db");
    h.stop("db").unwrap();
    h.wait_status("app", Status::Stopped);
}

#[test]
fn a_oneshot_that_outlives_timeout_start_sec_is_killed_and_fails() {
    let mut h = Sim::new(vec![service("slow", "Type=oneshot\nTimeoutStartSec=5s\nExecStart=/bin/more\n")]);
    h.obey("slow");
    h.start("slow").unwrap();
    let started = h.now();
    // The first command succeeds; the timeout covers both.
    h.sleep(Duration::from_secs(3));
    h.exit(h.main_pid("slow"), code(0));
    let snap = h.wait_status("slow", Status::Error);
    assert_eq!(snap.detail.as_deref(), Some("did not become ready within TimeoutStartSec"));
    assert_eq!(
        h.actions().iter().find(|(_, a)| matches!(a, Action::SignalGroup { .. })).map(|(t, _)| *t - started),
        Some(Duration::from_secs(5))
    );
}

#[test]
fn a_forking_service_is_started_with_the_pid_from_its_pid_file_and_ends_with_it() {
    let mut h = Sim::new(vec![service("fork", "Type=forking\nPIDFile=/run/fork.pid\nRestart=no\n")]);
    h.kernel.pid_files.insert("fork".into(), (3, Ok(777)));
    h.start("fork").unwrap();
    let starter = h.main_pid("fork");
    assert_eq!(h.snapshot("fork").status, Status::Starting);
    h.exit(starter, code(0));
    // Not written yet three times, read again every PID_FILE_RETRY.
    let snap = h.wait_status("fork", Status::Started);
    assert_eq!(snap.pid, Some(777));
    assert_eq!(h.kernel.pid_file_reads, 4);
    h.exit(777, code(2));
    let snap = h.wait_status("fork", Status::Error);
    assert_eq!(snap.detail.as_deref(), Some("exited with code 2"));
}

#[test]
fn a_forking_service_with_an_untrusted_pid_file_or_a_failing_starter_fails() {
    let mut h = Sim::new(vec![
        service("evil", "Type=forking\nPIDFile=/run/evil.pid\n"),
        service("broken", "Type=forking\nPIDFile=/run/broken.pid\n"),
    ]);
    h.kernel.pid_files.insert("evil".into(), (0, Err(PidFileError::Refused("owned by uid 1000".into()))));
    h.start("evil").unwrap();
    h.exit(h.main_pid("evil"), code(0));
    let snap = h.wait_status("evil", Status::Error);
    assert!(snap.detail.as_deref().unwrap_or("").contains("owned by uid 1000"), "{:?}", snap.detail);
    h.start("broken").unwrap();
    h.exit(h.main_pid("broken"), code(1));
    assert_eq!(h.wait_status("broken", Status::Error).detail.as_deref(), Some("exited with code 1"));
    assert_eq!(h.kernel.pid_file_reads, 1, "a failed starter's PID file is not read");
}

#[test]
fn notify_access_decides_whose_datagrams_count() {
    let mut h = Sim::new(vec![
        service("main", "Type=notify\n"),
        service("none", "Type=notify\nNotifyAccess=none\nTimeoutStartSec=0\n"),
        service("all", "Type=notify\nNotifyAccess=all\n"),
    ]);
    for name in ["main", "none", "all"] {
        h.start(name).unwrap();
    }
    // A child of the main process, in the unit: not the main process.
    let child = Sender { pid: Some(9999), member: true };
    h.notify_from("main", "READY=1", child);
    assert_eq!(h.snapshot("main").status, Status::Starting, "NotifyAccess=main (the default) ignores a child");
    h.notify("main", "READY=1");
    assert_eq!(h.snapshot("main").status, Status::Started);
    h.notify("none", "READY=1");
    assert_eq!(h.snapshot("none").status, Status::Starting, "NotifyAccess=none ignores everyone");
    h.notify_from("all", "READY=1", Sender { pid: Some(9998), member: false });
    assert_eq!(h.snapshot("all").status, Status::Starting, "a process outside the unit is ignored under all");
    h.notify_from("all", "READY=1", child);
    assert_eq!(h.snapshot("all").status, Status::Started);
}

#[test]
fn extend_timeout_usec_pushes_the_start_timeout_and_reloading_shows_until_ready() {
    let mut h = Sim::new(vec![service("slow", "Type=notify\nTimeoutStartSec=2s\n")]);
    h.obey("slow");
    h.start("slow").unwrap();
    let started = h.now();
    h.sleep(Duration::from_secs(1));
    h.notify("slow", "EXTEND_TIMEOUT_USEC=5000000");
    h.sleep(Duration::from_secs(4));
    assert_eq!(h.snapshot("slow").status, Status::Starting, "still within the extension");
    h.wait_for("the start timeout", |h| !h.unit_signals("slow").is_empty());
    assert_eq!(h.unit_signals("slow")[0].0 - started, Duration::from_secs(6));

    let mut h = Sim::new(vec![service("r", "Type=notify-reload\n")]);
    h.start("r").unwrap();
    h.notify("r", "READY=1");
    h.notify("r", "RELOADING=1");
    let snap = h.snapshot("r");
    assert_eq!((snap.status, snap.detail.as_deref()), (Status::Started, Some("reloading (RELOADING=1)")));
    h.events();
    h.notify("r", "READY=1");
    assert_eq!(h.snapshot("r").detail, None);
    assert!(h.events().iter().any(|e| e.detail.as_deref() == Some("reloaded (READY=1 after RELOADING=1)")));
}

// ---- ExecCondition=, ExecStartPost=, ExecStopPost= ---------------------------

#[test]
fn exec_condition_skips_on_1_to_254_and_fails_on_255() {
    let mut h = Sim::new(vec![
        service("skip", "ExecCondition=/bin/check\nExecStartPre=/bin/pre\n"),
        service("bad", "ExecCondition=/bin/check\n"),
        service("go", "ExecCondition=/bin/check\nExecStartPre=/bin/pre\n"),
    ]);
    for (name, status) in [("skip", code(1)), ("bad", code(255)), ("go", code(0))] {
        h.start(name).unwrap();
        let check = h.spawns(name)[0].clone();
        assert_eq!(check.argv, ["/bin/check"]);
        h.exit(check.pid, status);
    }
    let snap = h.wait_status("skip", Status::Stopped);
    assert_eq!(snap.detail.as_deref(), Some("skipped: ExecCondition 1 exited with code 1"));
    assert_eq!(h.spawns("skip").len(), 1, "nothing after a condition that says no");
    assert_eq!(h.wait_status("bad", Status::Error).detail.as_deref(), Some("ExecStartPre exited with code 255"));
    // The condition held: ExecStartPre= runs next.
    let pre = h.spawns("go")[1].clone();
    assert_eq!(pre.argv, ["/bin/pre"]);
    h.exit(pre.pid, code(0));
    h.wait_status("go", Status::Started);
}

#[test]
fn exec_start_post_runs_before_the_unit_counts_as_started_and_its_failure_stops_it() {
    let mut h = Sim::new(vec![
        service("web", "ExecStartPost=/bin/post one\nExecStartPost=-/bin/post two\n"),
        service("broken", "ExecStartPost=/bin/post\n"),
    ]);
    h.obey("broken");
    h.start("web").unwrap();
    let snap = h.snapshot("web");
    assert_eq!((snap.status, snap.detail.as_deref()), (Status::Starting, Some("ExecStartPost 1/2")));
    let posts: Vec<Spawned> = h.spawns("web").into_iter().filter(|s| s.role == Role::Post).collect();
    assert_eq!(posts[0].argv, ["/bin/post", "one"]);
    assert!(posts[0].env.contains(&("MAINPID".to_string(), h.main_pid("web").to_string())));
    h.exit(posts[0].pid, code(0));
    let second = h.spawns("web").into_iter().filter(|s| s.role == Role::Post).nth(1).unwrap();
    h.exit(second.pid, code(1));
    assert_eq!(h.snapshot("web").status, Status::Started, "the '-' prefix: its failure does not count");

    h.start("broken").unwrap();
    let post = h.spawns("broken").into_iter().find(|s| s.role == Role::Post).unwrap();
    h.exit(post.pid, code(2));
    let snap = h.wait_status("broken", Status::Error);
    assert_eq!(snap.detail.as_deref(), Some("ExecStartPost exited with code 2"));
}

#[test]
fn exec_stop_post_runs_after_every_process_is_gone_with_the_result_in_its_environment() {
    let mut h = Sim::new(vec![service("db", "ExecStopPost=/bin/cleanup\n")]);
    h.start("db").unwrap();
    h.wait_status("db", Status::Started);
    h.add_leftover("db", 9001);
    h.exit(h.main_pid("db"), code(3));
    assert!(h.spawns("db").iter().all(|s| s.role != Role::StopPost), "not while a leftover lives");
    h.remove_leftover("db", 9001);
    let post = h.spawns("db").into_iter().find(|s| s.role == Role::StopPost).expect("ExecStopPost spawned");
    assert_eq!(post.argv, ["/bin/cleanup"]);
    for var in [("SERVICE_RESULT", "exit-code"), ("EXIT_CODE", "exited"), ("EXIT_STATUS", "3")] {
        assert!(post.env.contains(&(var.0.to_string(), var.1.to_string())), "{var:?} in {:?}", post.env);
    }
    assert_eq!(h.snapshot("db").status, Status::Stopping);
    h.exit(post.pid, code(0));
    assert_eq!(h.wait_status("db", Status::Error).detail.as_deref(), Some("exited with code 3"));
}

#[test]
fn runtime_max_sec_stops_a_running_service_as_a_timeout_and_restart_on_failure_brings_it_back() {
    let mut h = Sim::new(vec![service("job", "RuntimeMaxSec=10s\nRestart=on-failure\nRestartSec=1s\n")]);
    h.obey("job");
    h.start("job").unwrap();
    let started = h.now();
    h.wait_status("job", Status::Started);
    h.wait_for("the runtime limit", |h| !h.unit_signals("job").is_empty());
    assert_eq!(h.unit_signals("job")[0], (started + Duration::from_secs(10), TERM));
    let snap = h.wait_status("job", Status::Restarting);
    assert!(snap.detail.as_deref().unwrap_or("").starts_with("ran longer than RuntimeMaxSec"), "{:?}", snap.detail);
    h.wait_spawns("job", 2);
}

#[test]
fn a_notify_reload_service_is_reloaded_with_its_reload_signal() {
    let mut h = Sim::new(vec![service("r", "Type=notify-reload\nReloadSignal=SIGUSR1\n")]);
    h.start("r").unwrap();
    h.notify("r", "READY=1");
    assert_eq!(h.command(Cmd::Reload("r".into())), Ok(Answer::Done));
    let main = h.main_pid("r");
    assert!(h.actions().iter().any(|(_, a)| *a == Action::SignalProcess { pid: main, signal: Signal::SIGUSR1 }));
}

#[test]
fn a_oneshot_runs_its_exec_start_post_after_its_commands_before_it_remains() {
    let mut h = Sim::new(vec![unit(
        "setup.service",
        "[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/one\nExecStartPost=/bin/after\n",
    )]);
    h.start("setup").unwrap();
    h.exit(h.main_pid("setup"), code(0));
    let snap = h.snapshot("setup");
    assert_eq!((snap.status, snap.detail.as_deref()), (Status::Starting, Some("ExecStartPost 1/1")));
    let post = h.mains("setup")[1].clone();
    assert_eq!(post.argv, ["/bin/after"]);
    h.exit(post.pid, code(0));
    h.wait_status("setup", Status::Started);
}

// ---- issue 14: aliases, GuessMainPID=, ExitType=, OOMPolicy=, StopWhenUnneeded=, propagation ----

/// One input into the machine itself (no answers fed back): `name`'s state after it, and what it asked for.
fn step_unit(h: &mut Sim, name: &str, input: Input) -> (UnitState, Vec<String>) {
    let effects = h.units.step(input, h.clock());
    let said = effects.iter().map(|e| said(h, e)).collect();
    (h.units.state(h.id(name)).clone(), said)
}

/// Units through `units::resolve_aliases`, as the loader hands them over.
fn loaded(mut units: Vec<Unit>) -> Vec<Unit> {
    let diagnostics = crate::units::resolve_aliases(&mut units, &[]);
    assert!(diagnostics.is_empty(), "{diagnostics:?}");
    units
}

#[test]
fn an_alias_addresses_the_unit_in_commands_and_dependencies() {
    let mut h = Sim::new(loaded(vec![
        service("ssh", "[Install]\nAlias=sshd.service\n"),
        unit("web.service", "[Unit]\nRequires=sshd.service\nAfter=sshd.service\n[Service]\nExecStart=/bin/web\n"),
    ]));
    assert_eq!(h.names(), ["ssh", "web"], "an alias is not a second unit");
    h.start("web").unwrap();
    h.wait_status("web", Status::Started);
    assert_eq!(h.snapshot("ssh").status, Status::Started, "Requires=sshd.service pulled in ssh");
    h.obey("ssh");
    h.obey("web");
    assert_eq!(h.stop("sshd"), Ok(Status::Stopping));
    h.wait_status("ssh", Status::Stopped);
    assert_eq!(h.wait_status("web", Status::Stopped).status, Status::Stopped, "web requires ssh by its alias");
    assert_eq!(h.start("sshd"), Ok(Status::Starting));
    h.wait_status("ssh", Status::Started);
    assert_eq!(h.start("nope"), Err(CommandError::NoSuchUnit("nope".into())));
}

#[test]
fn transitions_of_a_forking_service_without_a_main_pid() {
    // GuessMainPID=no: the starter's clean exit makes it active with no main pid at once.
    let mut h = Sim::new(vec![service("fork", "Type=forking\nGuessMainPID=no\n")]);
    h.start("fork").unwrap();
    let fork = h.id("fork");
    let starter = h.main_pid("fork");
    h.add_leftover("fork", 777);
    // The starter is gone, as the reaper saw it (fed to the machine by hand below).
    h.kernel.live.get_mut("fork").expect("spawned").remove(&starter);
    let (state, effects) = step_unit(&mut h, "fork", Input::Exit { pid: starter, status: code(0) });
    assert_eq!(state, UnitState::Cgroup { exited: None, ready: true });
    assert_eq!(
        effects,
        [
            "note [aikore] GuessMainPID=no and no PIDFile=: no main process; active while any of its processes is left",
            "emit state started GuessMainPID=no and no PIDFile=: no main process: active while its processes last",
            "check-drained fork",
        ]
    );
    assert_eq!(h.kernel.pid_file_reads, 0, "nothing to guess");
    let (state, effects) = step_unit(&mut h, "fork", Input::Members { unit: fork, live: 1 });
    assert_eq!((state, effects), (UnitState::Cgroup { exited: None, ready: true }, vec![]), "waits for the next hint");
    h.settle();
    assert_eq!(h.snapshot("fork").pid, None);
    // The daemon's last process ends: the run ends clean, as systemd's "service is gone".
    h.remove_leftover("fork", 777);
    assert_eq!(h.wait_status("fork", Status::Stopped).detail.as_deref(), Some("exited with code 0"));

    // GuessMainPID=yes (the default) with several processes left: no main pid either.
    let mut h = Sim::new(vec![service("many", "Type=forking\n")]);
    h.kernel.pid_files.insert("many".into(), (0, Err(PidFileError::NoMain("2 processes are left".into()))));
    h.start("many").unwrap();
    h.add_leftover("many", 801);
    h.add_leftover("many", 802);
    h.exit(h.main_pid("many"), code(0));
    assert_eq!(h.snapshot("many").status, Status::Started);
    h.obey("many");
    h.stop("many").unwrap();
    h.wait_status("many", Status::Stopped);
    assert!(h.unit_signals("many").iter().any(|(_, s)| *s == TERM), "no main pid: the whole unit is signalled");
}

#[test]
fn exit_type_cgroup_keeps_the_unit_up_until_its_last_process_ends() {
    let mut h = Sim::new(vec![service("cg", "ExitType=cgroup\nRestart=no\n"), service("main", "Restart=no\n")]);
    for name in ["cg", "main"] {
        h.start(name).unwrap();
        h.add_leftover(name, if name == "cg" { 901 } else { 902 });
        h.exit(h.main_pid(name), code(0));
    }
    assert_eq!(h.snapshot("cg").status, Status::Started, "ExitType=cgroup: a child is left");
    assert_eq!(h.snapshot("cg").pid, None);
    assert_ne!(h.snapshot("main").status, Status::Started, "ExitType=main: its leftovers are stopped");
    h.remove_leftover("cg", 901);
    assert_eq!(h.wait_status("cg", Status::Stopped).detail.as_deref(), Some("exited with code 0"));
    // A failing main process ends the run at once, as with ExitType=main.
    h.start("cg").unwrap();
    h.add_leftover("cg", 903);
    h.obey("cg");
    h.exit(h.main_pid("cg"), code(4));
    assert_eq!(h.wait_status("cg", Status::Error).detail.as_deref(), Some("exited with code 4"));
}

#[test]
fn transitions_of_an_oom_kill_per_oom_policy() {
    let rows: Vec<(&str, Vec<&str>)> = vec![
        (
            "OOMPolicy=continue\n",
            vec!["note [aikore] the kernel's OOM killer killed 1 process(es) of this unit; OOMPolicy=continue"],
        ),
        (
            "OOMPolicy=kill\n",
            vec![
                "note [aikore] the kernel's OOM killer killed 1 process(es) of this unit; OOMPolicy=kill",
                "signal a SIGKILL",
            ],
        ),
        // The default is stop, as in systemd.
        (
            "TimeoutStopSec=5s\n",
            vec![
                "note [aikore] the kernel's OOM killer killed 1 process(es) of this unit; OOMPolicy=stop",
                "emit state stopping -",
                "arm StopTimeout a +5000ms",
                "signal pid 101 SIGTERM",
                "signal a SIGCONT",
                "check-drained a",
            ],
        ),
    ];
    for (extra, expected) in rows {
        let (mut h, pid) = running(&format!("KillMode=mixed\n{extra}"));
        assert_eq!(pid, 101);
        let a = h.id("a");
        let (state, effects) = step_raw(&mut h, vec![Input::OomKills { unit: a, kills: 1 }]);
        assert_eq!(effects, expected, "{extra}");
        if extra.starts_with("TimeoutStopSec") {
            let UnitState::Stopping(stop) = state else { panic!("{state:?}") };
            assert_eq!((stop.ending, stop.then), (RunEnd::OomKill, Then::Policy));
        }
        // The same count again (another memory event) is not another kill.
        let (_, effects) = step_raw(&mut h, vec![Input::OomKills { unit: a, kills: 1 }]);
        assert!(effects.is_empty(), "{effects:?}");
    }
    // Through to the end: the run ends with the oom-kill result.
    let (mut h, pid) = running("Restart=no\n");
    let a = h.id("a");
    h.input(Input::OomKills { unit: a, kills: 1 });
    h.exit(pid, signaled(TERM));
    let snap = h.wait_status("a", Status::Error);
    assert!(snap.detail.as_deref().is_some_and(|d| d.contains("OOM killer")), "{:?}", snap.detail);
}

#[test]
fn stop_when_unneeded_stops_a_unit_once_its_last_dependent_is_down() {
    let mut h = Sim::new(vec![
        service("helper", "[Unit]\nStopWhenUnneeded=yes\n"),
        unit("app.service", "[Unit]\nWants=helper.service\nAfter=helper.service\n[Service]\nExecStart=/bin/app\n"),
        unit("other.service", "[Unit]\nRequires=helper.service\n[Service]\nExecStart=/bin/other\n"),
    ]);
    h.obey("helper");
    h.obey("app");
    h.obey("other");
    h.start("app").unwrap();
    h.start("other").unwrap();
    h.wait_status("app", Status::Started);
    assert_eq!(h.snapshot("helper").status, Status::Started);
    h.stop("app").unwrap();
    h.wait_status("app", Status::Stopped);
    assert_eq!(h.snapshot("helper").status, Status::Started, "other still requires it");
    h.stop("other").unwrap();
    h.wait_status("other", Status::Stopped);
    h.wait_status("helper", Status::Stopped);
    // Started on its own, nothing needs it: stopped at once, as systemd does.
    h.start("helper").unwrap();
    h.wait_status("helper", Status::Stopped);
    assert_eq!(h.mains("helper").len(), 2);
}

#[test]
fn reloads_and_stops_propagate() {
    let mut h = Sim::new(loaded(vec![
        service("a", "ExecReload=/bin/reload-a\n[Unit]\nPropagatesStopTo=c.service\n"),
        service("b", "ExecReload=/bin/reload-b\n[Unit]\nReloadPropagatedFrom=a.service\n"),
        service("c", ""),
    ]));
    for name in ["a", "b", "c"] {
        h.start(name).unwrap();
        h.obey(name);
    }
    h.input(Input::Command { cmd: Cmd::Reload("a".into()), reply: None });
    let reloads: Vec<String> = ["a", "b"]
        .iter()
        .flat_map(|n| h.spawns(n))
        .filter(|s| s.role == Role::Reload)
        .map(|s| s.argv.join(" "))
        .collect();
    assert_eq!(reloads, ["/bin/reload-a", "/bin/reload-b"]);
    assert!(h.spawns("c").iter().all(|s| s.role != Role::Reload));
    h.stop("a").unwrap();
    h.wait_status("a", Status::Stopped);
    assert_eq!(h.wait_status("c", Status::Stopped).status, Status::Stopped, "PropagatesStopTo=c");
    assert_eq!(h.snapshot("b").status, Status::Started, "a reload is not a stop");
}

#[test]
fn timeout_failure_modes_choose_what_a_timed_out_start_or_stop_sends() {
    let abrt = Signal::SIGABRT;
    // (unit file extra, what the unit is sent after the start, seconds from the start).
    let rows: Vec<(&str, Vec<(u64, Signal)>)> = vec![
        ("TimeoutStartFailureMode=kill\n", vec![(2, KILL)]),
        ("TimeoutStartFailureMode=abort\nTimeoutAbortSec=3s\n", vec![(2, abrt), (5, KILL)]),
        ("TimeoutStartFailureMode=terminate\n", vec![(2, TERM), (12, KILL)]),
    ];
    for (extra, expected) in rows {
        let mut h =
            Sim::new(vec![service("n", &format!("Type=notify\nTimeoutStartSec=2s\nTimeoutStopSec=10s\n{extra}"))]);
        h.start("n").unwrap();
        let started = h.now();
        h.wait_status("n", Status::Error);
        let sent: Vec<(u64, Signal)> =
            h.unit_signals("n").into_iter().map(|(at, s)| ((at - started).as_secs(), s)).collect();
        assert_eq!(sent, expected, "{extra}");
    }

    // TimeoutStopFailureMode=abort: SIGABRT after TimeoutStopSec, SIGKILL after TimeoutAbortSec.
    let mut h = Sim::new(vec![service("s", "TimeoutStopSec=4s\nTimeoutAbortSec=2s\nTimeoutStopFailureMode=abort\n")]);
    h.start("s").unwrap();
    let stop_at = h.now();
    h.stop("s").unwrap();
    h.wait_status("s", Status::Stopped);
    let sent: Vec<(u64, Signal)> =
        h.unit_signals("s").into_iter().map(|(at, s)| ((at - stop_at).as_secs(), s)).collect();
    assert_eq!(sent, [(0, TERM), (4, abrt), (6, KILL)]);

    // A hanging ExecStop=: terminate sends KillSignal= and waits again; kill sends SIGKILL at once.
    for (mode, expected) in [("terminate", vec![(3, TERM), (6, KILL)]), ("kill", vec![(3, KILL)])] {
        let extra = format!("ExecStop=/bin/hang\nTimeoutStopSec=3s\nTimeoutStopFailureMode={mode}\n");
        let mut h = Sim::new(vec![service("x", &extra)]);
        h.start("x").unwrap();
        let stop_at = h.now();
        h.stop("x").unwrap();
        h.wait_status("x", Status::Stopped);
        let sent: Vec<(u64, Signal)> =
            h.unit_signals("x").into_iter().map(|(at, s)| ((at - stop_at).as_secs(), s)).collect();
        assert_eq!(sent, expected, "{mode}");
    }
}

#[test]
fn start_limit_action_ends_the_container_once_the_limit_is_hit() {
    let mut h = Sim::new(vec![
        unit(
            "crashy.service",
            "[Unit]\nStartLimitBurst=2\nStartLimitIntervalSec=1min\nStartLimitAction=exit\n\
             [Service]\nExecStart=/bin/crashy\nRestart=on-failure\nRestartSec=100ms\n",
        ),
        service("calm", "StartLimitBurst=2\nRestart=on-failure\nRestartSec=100ms\n"),
    ]);
    for name in ["crashy", "calm"] {
        h.start(name).unwrap();
        for run in 1..=2 {
            h.wait_spawns(name, run);
            h.exit(h.main_pid(name), code(1));
        }
        h.wait_status(name, Status::Failed);
    }
    let ends: Vec<String> = h
        .actions()
        .into_iter()
        .filter_map(|(_, a)| match a {
            Action::Note { unit, text } if unit == "(container)" => Some(text),
            _ => None,
        })
        .collect();
    assert_eq!(ends, ["crashy hit its start limit: StartLimitAction=exit"], "calm has no StartLimitAction=");
}

#[test]
fn restart_mode_normal_passes_through_error_before_restarting() {
    for (extra, expected) in [
        ("RestartMode=normal\n", vec![Status::Error, Status::Restarting, Status::Starting, Status::Started]),
        ("", vec![Status::Restarting, Status::Starting, Status::Started]),
    ] {
        let mut h = Sim::new(vec![service("a", &format!("Restart=on-failure\nRestartSec=1s\n{extra}"))]);
        h.start("a").unwrap();
        h.events();
        h.exit(h.main_pid("a"), code(3));
        h.wait_spawns("a", 2);
        let statuses: Vec<Status> =
            h.events().into_iter().filter(|e| e.event == EventKind::State).map(|e| e.status).collect();
        let mut seen = statuses.clone();
        seen.dedup();
        assert_eq!(seen, expected, "{extra:?}: {statuses:?}");
    }
}

#[test]
fn runtime_randomized_extra_sec_lengthens_runtime_max_by_the_runs_draw() {
    let mut h = Sim::new(vec![service("job", "RuntimeMaxSec=10s\nRuntimeRandomizedExtraSec=5s\nRestart=no\n")]);
    h.kernel.runtime_extra.insert("job".into(), Duration::from_millis(3250));
    h.obey("job");
    h.start("job").unwrap();
    let started = h.now();
    h.wait_status("job", Status::Error);
    let stopped = h.unit_signals("job").first().map(|(at, _)| *at - started);
    assert_eq!(stopped, Some(Duration::from_millis(13_250)));
}

#[test]
fn a_forking_service_without_a_main_pid_runs_its_exec_start_post_first() {
    let mut h = Sim::new(vec![service("fork", "Type=forking\nGuessMainPID=no\nExecStartPost=/bin/post\n")]);
    h.start("fork").unwrap();
    h.add_leftover("fork", 777);
    h.exit(h.main_pid("fork"), code(0));
    let post = h.spawns("fork").into_iter().find(|s| s.role == Role::Post).expect("ExecStartPost= ran");
    assert_eq!(h.snapshot("fork").status, Status::Starting, "not started before its ExecStartPost= ends");
    h.exit(post.pid, code(0));
    assert_eq!(h.snapshot("fork").status, Status::Started);
    assert_eq!(h.units.state(h.id("fork")), &UnitState::Cgroup { exited: None, ready: true });
}

#[test]
fn a_dbus_service_is_started_once_its_name_is_owned_and_stopped_when_it_is_released() {
    let mut h = Sim::new(vec![service("av", "Type=dbus\nBusName=org.example.Av\nRestart=on-failure\n")]);
    h.obey("av");
    h.start("av").unwrap();
    let snap = h.snapshot("av");
    assert_eq!(
        (snap.status, snap.detail.as_deref()),
        (Status::Starting, Some("waiting for org.example.Av on the system bus"))
    );
    assert!(h.notes("av").contains(&"watch-bus org.example.Av".to_string()), "{:?}", h.notes("av"));
    // Not there yet, and the bus not reachable for a while: still starting, and the log says why.
    h.bus("av", BusEvent::Released);
    h.bus("av", BusEvent::Unreachable("cannot connect to the system bus /x: No such file".into()));
    assert_eq!(h.snapshot("av").status, Status::Starting);
    assert!(
        h.notes("av").iter().any(|n| n.contains("waiting for org.example.Av: cannot connect")),
        "{:?}",
        h.notes("av")
    );
    h.bus("av", BusEvent::Owned);
    let snap = h.wait_status("av", Status::Started);
    assert_eq!(snap.detail, None);
    // Released while running: stopped as a clean end, so Restart=on-failure leaves it down.
    h.bus("av", BusEvent::Released);
    let snap = h.wait_status("av", Status::Stopped);
    assert!(snap.pid.is_none(), "{snap:?}");
    assert!(h.notes("av").iter().any(|n| n.contains("org.example.Av was released")), "{:?}", h.notes("av"));
    assert_eq!(h.mains("av").len(), 1, "not restarted");
    assert_eq!(h.unit_signals("av").first().map(|(_, s)| *s), Some(Signal::SIGTERM));
}

#[test]
fn a_dbus_service_whose_name_never_appears_fails_at_timeout_start_sec() {
    let mut h = Sim::new(vec![service("quiet", "Type=dbus\nBusName=org.example.Quiet\nTimeoutStartSec=4s\n")]);
    h.obey("quiet");
    h.start("quiet").unwrap();
    let started = h.now();
    h.bus("quiet", BusEvent::Released);
    let snap = h.wait_status("quiet", Status::Error);
    assert_eq!(snap.detail.as_deref(), Some("did not become ready within TimeoutStartSec"));
    assert_eq!(h.unit_signals("quiet").first().map(|(t, _)| *t - started), Some(Duration::from_secs(4)));
}

#[test]
fn timeout_start_sec_covers_exec_start_pre_and_the_main_start_as_one_deadline() {
    // A hanging ExecStartPre= fails the start at TimeoutStartSec=.
    let mut h = Sim::new(vec![service("pre", "ExecStartPre=/bin/hang\nTimeoutStartSec=3s\n")]);
    h.obey("pre");
    h.start("pre").unwrap();
    let started = h.now();
    let pre = h.spawns("pre").into_iter().find(|s| s.role == Role::Pre).expect("ExecStartPre= ran");
    let snap = h.wait_status("pre", Status::Error);
    assert_eq!(snap.detail.as_deref(), Some("did not become ready within TimeoutStartSec"));
    let signalled = h.actions().into_iter().find_map(|(t, a)| match a {
        Action::SignalGroup { pgid, .. } if pgid == pre.pid => Some(t - started),
        _ => None,
    });
    assert_eq!(signalled, Some(Duration::from_secs(3)));
    assert!(h.mains("pre").is_empty(), "the main process never started");

    // 2 s of ExecStartPre= leave a notify service 1 s of its 3 s for READY=1.
    let mut h = Sim::new(vec![service("late", "Type=notify\nExecStartPre=/bin/prep\nTimeoutStartSec=3s\n")]);
    h.obey("late");
    h.start("late").unwrap();
    let started = h.now();
    let pre = h.spawns("late").into_iter().find(|s| s.role == Role::Pre).expect("ExecStartPre= ran");
    h.sleep(Duration::from_secs(2));
    h.exit(pre.pid, code(0));
    assert_eq!(h.mains("late").len(), 1);
    h.wait_status("late", Status::Error);
    let stopped = h.unit_signals("late").first().map(|(t, _)| *t - started);
    assert_eq!(stopped, Some(Duration::from_secs(3)), "one deadline for the whole start");
}
