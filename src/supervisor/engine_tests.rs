//! Unit tests of the supervisor engine against a recording fake of the OS.
//!
//! `FakeOs` implements [`ProcessControl`]: it hands out pids, records every
//! call with its (virtual) time, and keeps the set of live processes per unit.
//! The test plays the kernel: it decides when a process dies by removing it
//! from the live set and sending its status on the exits channel, exactly as
//! the reaper would. The fake models only what a test cannot do by hand: a
//! SIGKILL kills at once, and units marked `obeying` die of their KillSignal;
//! any other signal is just recorded, so a process "ignores" SIGTERM unless the
//! test ends it. Every test runs on paused tokio time, so RestartSec, backoff
//! and TimeoutStopSec are checked to the millisecond without waiting.
//!
//! The fake also tells the engine what the kernel would when a process the
//! engine did not spawn ends ([`DrainHint`]): by default as a cgroup does
//! (`populated 0` once a unit's last process is gone), or as the reaper does
//! without cgroups (an orphan was reaped), see [`Hints`].

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::Engine;
use crate::init::ExitStatus;
use crate::supervisor::{
    CommandError, DrainHint, ExitReport, Prepared, ProcessControl, ReadyTarget, Role, Status, SupervisorHandle,
    UnitEvent, UnitSnapshot, EVENT_CAPACITY,
};
use crate::units::{parse_unit_str, ExecCommand, Unit};

const TERM: i32 = libc::SIGTERM;
const KILL: i32 = libc::SIGKILL;
const CONT: i32 = libc::SIGCONT;

/// Longest a helper waits for a condition: far beyond every timer in these
/// tests (the longest is a 90 s default TimeoutStopSec), and free in virtual time.
const PATIENCE: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, PartialEq)]
enum Action {
    BeginRun { unit: String, fresh: bool },
    Spawn { unit: String, role: Role, pid: i32, argv: Vec<String>, env: Vec<(String, String)> },
    SignalProcess { pid: i32, signal: i32 },
    SignalGroup { pgid: i32, signal: i32 },
    SignalUnit { unit: String, signal: i32 },
    EndRun { unit: String },
    Note { unit: String, text: String },
}

/// Every call the engine made, with the virtual time it made it at.
type ActionLog = Arc<Mutex<Vec<(Instant, Action)>>>;

/// The fake kernel's state, shared between the fake and the test.
#[derive(Default)]
struct Kernel {
    next_pid: i32,
    /// unit -> pids still running (main, pre, stop, or leftovers the test adds).
    live: BTreeMap<String, BTreeSet<i32>>,
    /// Units whose runs need a readiness probe; the rest are ready once spawned.
    ready: HashMap<String, ReadyTarget>,
    /// Units whose processes die of any terminating signal sent to them.
    obeying: HashSet<String>,
    /// Pids the engine spawned (the rest are descendants the test added).
    spawned: HashSet<i32>,
    hints: Hints,
    hints_tx: Option<mpsc::UnboundedSender<DrainHint>>,
    /// Units the engine said it waits on (`watch_drain`), until their `end_run`.
    watched: HashSet<String>,
    /// How often the engine asked `live_processes`.
    live_checks: usize,
    /// The last lines of each unit's log, as `failure_evidence` reports them.
    log_tail: HashMap<String, Vec<String>>,
}

/// How the fake kernel tells the engine about processes it did not spawn.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Hints {
    /// As a unit cgroup: `Unit(name)` whenever the unit's last process is gone.
    #[default]
    Cgroup,
    /// As the reaper without cgroups: `Any` when a process the engine did not
    /// spawn ends while some unit is watched, nothing otherwise.
    Reaper,
}

impl Kernel {
    fn owner(&self, pid: i32) -> Option<String> {
        self.live.iter().find(|(_, pids)| pids.contains(&pid)).map(|(unit, _)| unit.clone())
    }

    /// Ends `pid` (if still live) and reports it to the engine, as the reaper would.
    fn kill(&mut self, pid: i32, signal: i32, exits: &mpsc::UnboundedSender<ExitReport>) {
        let Some(unit) = self.owner(pid) else { return };
        self.live.get_mut(&unit).expect("owner has a set").remove(&pid);
        let _ = exits.send((pid, ExitStatus::Signaled { signal, core_dumped: false }));
        self.ended(&unit, pid);
    }

    /// `pid` of `unit` is gone: the hint the kernel side would give.
    fn ended(&mut self, unit: &str, pid: i32) {
        let hint = match self.hints {
            Hints::Cgroup if self.live.get(unit).is_none_or(BTreeSet::is_empty) => DrainHint::Unit(unit.into()),
            Hints::Reaper if !self.spawned.contains(&pid) && !self.watched.is_empty() => DrainHint::Any,
            _ => return,
        };
        if let Some(tx) = &self.hints_tx {
            let _ = tx.send(hint);
        }
    }

    fn fatal(&self, unit: &str, signal: i32) -> bool {
        signal == KILL || (signal != CONT && self.obeying.contains(unit))
    }
}

struct FakeOs {
    actions: ActionLog,
    kernel: Arc<Mutex<Kernel>>,
    exits: mpsc::UnboundedSender<ExitReport>,
}

impl FakeOs {
    fn record(&self, action: Action) {
        self.actions.lock().unwrap().push((Instant::now(), action));
    }
}

impl ProcessControl for FakeOs {
    fn begin_run(&mut self, unit: &Unit, fresh: bool) -> Result<Prepared, String> {
        self.record(Action::BeginRun { unit: unit.name.clone(), fresh });
        let ready = self.kernel.lock().unwrap().ready.get(&unit.name).cloned();
        // An instance runs its launch.sh, as the real host prepares it.
        let default_exec_start =
            unit.instance.as_ref().map(|_| ExecCommand { argv: vec!["/bin/launch.sh".into()], ignore_failure: false });
        // A port per run, as an instance's lease would give, so events can be checked to carry it.
        let port = Some(FAKE_PORT);
        Ok(Prepared {
            ready,
            env: vec![("RUN_ENV".into(), unit.name.clone())],
            default_exec_start,
            port,
            ..Prepared::default()
        })
    }

    fn spawn(
        &mut self,
        unit: &Unit,
        role: Role,
        command: &ExecCommand,
        env: &[(String, String)],
    ) -> Result<i32, String> {
        let pid = {
            let mut kernel = self.kernel.lock().unwrap();
            kernel.next_pid += 1;
            // Start above 100 so a pid is never mistaken for a count or a signal in a failure message.
            let pid = 100 + kernel.next_pid;
            kernel.live.entry(unit.name.clone()).or_default().insert(pid);
            kernel.spawned.insert(pid);
            pid
        };
        self.record(Action::Spawn {
            unit: unit.name.clone(),
            role,
            pid,
            argv: command.argv.clone(),
            env: env.to_vec(),
        });
        Ok(pid)
    }

    fn signal_process(&mut self, pid: i32, signal: i32) {
        self.record(Action::SignalProcess { pid, signal });
        let mut kernel = self.kernel.lock().unwrap();
        if kernel.owner(pid).is_some_and(|unit| kernel.fatal(&unit, signal)) {
            kernel.kill(pid, signal, &self.exits);
        }
    }

    fn signal_group(&mut self, pgid: i32, signal: i32) {
        self.record(Action::SignalGroup { pgid, signal });
        // Every fake process leads its own group; leftovers the test adds are not in it.
        let mut kernel = self.kernel.lock().unwrap();
        if kernel.owner(pgid).is_some_and(|unit| kernel.fatal(&unit, signal)) {
            kernel.kill(pgid, signal, &self.exits);
        }
    }

    fn signal_unit(&mut self, unit: &str, signal: i32) {
        self.record(Action::SignalUnit { unit: unit.into(), signal });
        let mut kernel = self.kernel.lock().unwrap();
        if kernel.fatal(unit, signal) {
            let pids: Vec<i32> = kernel.live.get(unit).into_iter().flatten().copied().collect();
            for pid in pids {
                kernel.kill(pid, signal, &self.exits);
            }
        }
    }

    fn live_processes(&mut self, unit: &str) -> usize {
        let mut kernel = self.kernel.lock().unwrap();
        kernel.live_checks += 1;
        kernel.live.get(unit).map_or(0, BTreeSet::len)
    }

    fn watch_drain(&mut self, unit: &str) {
        self.kernel.lock().unwrap().watched.insert(unit.into());
    }

    fn end_run(&mut self, unit: &str) {
        self.kernel.lock().unwrap().watched.remove(unit);
        self.record(Action::EndRun { unit: unit.into() });
    }

    fn note(&mut self, unit: &str, text: &str) {
        self.record(Action::Note { unit: unit.into(), text: text.into() });
    }

    fn failure_evidence(&mut self, unit: &str) -> crate::failure::Evidence {
        let lines = self.kernel.lock().unwrap().log_tail.get(unit).cloned().unwrap_or_default();
        crate::failure::Evidence { lines, ..Default::default() }
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

/// A running engine with the fake behind it, driven the way the daemon drives it.
struct Harness {
    handle: SupervisorHandle,
    actions: ActionLog,
    kernel: Arc<Mutex<Kernel>>,
    exits: mpsc::UnboundedSender<ExitReport>,
    events: broadcast::Receiver<UnitEvent>,
    engine: JoinHandle<()>,
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

fn signaled(signal: i32) -> ExitStatus {
    ExitStatus::Signaled { signal, core_dumped: false }
}

fn code(code: i32) -> ExitStatus {
    ExitStatus::Exited { code }
}

impl Harness {
    fn new(units: Vec<Unit>) -> Harness {
        Harness::with_hints(units, Hints::Cgroup)
    }

    fn with_hints(units: Vec<Unit>, hints: Hints) -> Harness {
        let actions = ActionLog::default();
        let (hints_tx, hints_rx) = mpsc::unbounded_channel();
        let kernel = Arc::new(Mutex::new(Kernel { hints, hints_tx: Some(hints_tx), ..Kernel::default() }));
        let (exits_tx, exits_rx) = mpsc::unbounded_channel();
        let (events_tx, events) = broadcast::channel(EVENT_CAPACITY);
        let (commands_tx, commands_rx) = mpsc::channel(256);
        let fake = FakeOs { actions: Arc::clone(&actions), kernel: Arc::clone(&kernel), exits: exits_tx.clone() };
        let handle = SupervisorHandle::new(commands_tx, events_tx.clone());
        let engine = tokio::spawn(Engine::new(fake, units, events_tx).run(commands_rx, exits_rx, hints_rx));
        Harness { handle, actions, kernel, exits: exits_tx, events, engine }
    }

    fn obey(&self, unit: &str) {
        self.kernel.lock().unwrap().obeying.insert(unit.into());
    }

    /// The process ends: gone from its unit, and its status on the way to the engine.
    fn exit(&self, pid: i32, status: ExitStatus) {
        let mut kernel = self.kernel.lock().unwrap();
        let unit = kernel.owner(pid).unwrap_or_else(|| panic!("pid {pid} was not live"));
        kernel.live.get_mut(&unit).expect("owner has a set").remove(&pid);
        self.exits.send((pid, status)).expect("engine is running");
        kernel.ended(&unit, pid);
    }

    /// A process of `unit` that the engine did not spawn (a child of its main process).
    fn add_leftover(&self, unit: &str, pid: i32) {
        self.kernel.lock().unwrap().live.entry(unit.into()).or_default().insert(pid);
    }

    /// The leftover dies; no exit status reaches the engine (it is not one of
    /// its pids), only the kernel side's hint.
    fn remove_leftover(&self, unit: &str, pid: i32) {
        let mut kernel = self.kernel.lock().unwrap();
        assert!(kernel.live.get_mut(unit).is_some_and(|p| p.remove(&pid)));
        kernel.ended(unit, pid);
    }

    fn live_checks(&self) -> usize {
        self.kernel.lock().unwrap().live_checks
    }

    fn actions(&self) -> Vec<(Instant, Action)> {
        self.actions.lock().unwrap().clone()
    }

    fn spawns(&self, name: &str) -> Vec<Spawned> {
        self.actions()
            .into_iter()
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
        self.actions().iter().position(|(_, a)| pred(a))
    }

    /// Signals the engine sent to the unit as a whole (SIGCONT companions left out).
    fn unit_signals(&self, name: &str) -> Vec<(Instant, i32)> {
        self.actions()
            .into_iter()
            .filter_map(|(at, a)| match a {
                Action::SignalUnit { unit, signal } if unit == name && signal != CONT => Some((at, signal)),
                _ => None,
            })
            .collect()
    }

    fn events(&mut self) -> Vec<UnitEvent> {
        let mut out = Vec::new();
        while let Ok(event) = self.events.try_recv() {
            out.push(event);
        }
        out
    }

    async fn snapshot(&self, name: &str) -> UnitSnapshot {
        self.handle
            .snapshot()
            .await
            .expect("engine is running")
            .into_iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("{name} is not in the snapshot"))
    }

    async fn names(&self) -> Vec<String> {
        self.handle.snapshot().await.expect("engine is running").into_iter().map(|s| s.name).collect()
    }

    /// Polls until `name` has `status`, one virtual millisecond at a time.
    async fn wait_status(&self, name: &str, status: Status) -> UnitSnapshot {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let snap = self.snapshot(name).await;
            if snap.status == status {
                return snap;
            }
            assert!(
                Instant::now() < deadline,
                "{name} never became {status}; it is {} ({:?})",
                snap.status,
                snap.detail
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Polls the action log until `pred` holds, one virtual millisecond at a time.
    async fn wait_for(&self, what: &str, pred: impl Fn(&Harness) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        while !pred(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}; actions: {:#?}", self.actions());
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    async fn wait_spawns(&self, name: &str, mains: usize) {
        self.wait_for(&format!("{mains} spawns of {name}"), |h| h.mains(name).len() >= mains).await;
    }

    /// Lets the engine handle whatever is queued without moving virtual time.
    async fn settle(&self) {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }
}

// ---- start and stop ordering ------------------------------------------

fn a_and_b_requiring_a() -> Vec<Unit> {
    vec![
        service("a", ""),
        unit("b.service", "[Unit]\nAfter=a.service\nRequires=a.service\n[Service]\nExecStart=/bin/b\n"),
    ]
}

#[tokio::test(start_paused = true)]
async fn starting_a_unit_starts_what_it_requires_first() {
    let h = Harness::new(a_and_b_requiring_a());
    h.handle.start("b").await.unwrap();
    h.wait_status("b", Status::Started).await;
    assert_eq!(h.wait_status("a", Status::Started).await.status, Status::Started);
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

#[tokio::test(start_paused = true)]
async fn a_dependent_waits_until_its_dependency_is_ready() {
    // A port nothing listens on yet: the real probe keeps failing until the test binds it.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let h = Harness::new(a_and_b_requiring_a());
    h.kernel.lock().unwrap().ready.insert("a".into(), ReadyTarget::Tcp { host: "127.0.0.1".into(), port });
    h.handle.start("b").await.unwrap();
    h.wait_spawns("a", 1).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(h.snapshot("a").await.status, Status::Starting);
    assert_eq!(h.snapshot("b").await.status, Status::Starting);
    assert!(h.mains("b").is_empty(), "b spawned before a was ready");

    let _listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    h.wait_status("a", Status::Started).await;
    h.wait_status("b", Status::Started).await;
    assert_eq!(h.mains("b").len(), 1);
}

#[tokio::test(start_paused = true)]
async fn stopping_a_unit_stops_its_dependents_first() {
    let mut h = Harness::new(a_and_b_requiring_a());
    h.handle.start("b").await.unwrap();
    h.wait_status("b", Status::Started).await;
    let (a, b) = (h.main_pid("a"), h.main_pid("b"));
    h.events();

    h.handle.stop("a").await.unwrap();
    h.settle().await;
    assert_eq!(h.unit_signals("b").len(), 1, "b is signalled first");
    assert!(h.unit_signals("a").is_empty(), "a is signalled while b still runs");
    assert_eq!(h.snapshot("a").await.status, Status::Stopping);

    // b takes its time; a keeps waiting.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(h.unit_signals("a").is_empty(), "a is signalled while b still runs");

    h.exit(b, signaled(TERM));
    h.wait_status("b", Status::Stopped).await;
    h.wait_for("a's signal", |h| !h.unit_signals("a").is_empty()).await;
    h.exit(a, signaled(TERM));
    h.wait_status("a", Status::Stopped).await;

    let b_end = h.position(|x| matches!(x, Action::EndRun { unit } if unit == "b")).unwrap();
    let a_signal = h.position(|x| matches!(x, Action::SignalUnit { unit, signal: TERM } if unit == "a")).unwrap();
    assert!(b_end < a_signal, "a was signalled before b was gone: {:#?}", h.actions());
    // The journal sees b stopped before a is.
    let stopped: Vec<String> =
        h.events().into_iter().filter(|e| e.event == "state" && e.status == Status::Stopped).map(|e| e.unit).collect();
    assert_eq!(stopped, ["b", "a"]);
}

#[tokio::test(start_paused = true)]
async fn starting_a_dependent_while_its_requirement_stops_waits_and_brings_it_back() {
    let h = Harness::new(a_and_b_requiring_a());
    h.handle.start("b").await.unwrap();
    h.wait_status("b", Status::Started).await;
    let (a, b) = (h.main_pid("a"), h.main_pid("b"));
    h.handle.stop("a").await.unwrap();
    h.settle().await;
    h.exit(b, signaled(TERM));
    h.wait_for("a's signal", |h| !h.unit_signals("a").is_empty()).await;

    // a is still on its way down (it takes its time with SIGTERM) when b is asked for again.
    h.handle.start("b").await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(h.mains("b").len(), 1, "b started again while the unit it requires was stopping");

    h.exit(a, signaled(TERM));
    h.wait_status("b", Status::Started).await;
    assert_eq!(h.snapshot("a").await.status, Status::Started, "a must come back up for b");
    assert!(h.mains("a")[1].at <= h.mains("b")[1].at);
    let a_again = h.position(|x| matches!(x, Action::Spawn { pid, .. } if *pid == h.main_pid("a"))).unwrap();
    let b_again = h.position(|x| matches!(x, Action::Spawn { pid, .. } if *pid == h.main_pid("b"))).unwrap();
    assert!(a_again < b_again);
}

#[tokio::test(start_paused = true)]
async fn restarting_a_unit_restarts_the_units_that_require_it() {
    // systemd: when a Requires= target is explicitly restarted, its dependents are restarted too.
    let h = Harness::new(a_and_b_requiring_a());
    h.obey("a");
    h.obey("b");
    h.handle.start("b").await.unwrap();
    h.wait_status("b", Status::Started).await;

    h.handle.restart("a").await.unwrap();
    h.wait_spawns("a", 2).await;
    h.wait_status("a", Status::Started).await;
    h.wait_status("b", Status::Started).await;
    assert_eq!(h.mains("b").len(), 2);
    // Down in reverse order, up in order.
    let b_end = h.position(|x| matches!(x, Action::EndRun { unit } if unit == "b")).unwrap();
    let a_end = h.position(|x| matches!(x, Action::EndRun { unit } if unit == "a")).unwrap();
    let a_again = h.position(|x| matches!(x, Action::Spawn { pid, .. } if *pid == h.main_pid("a"))).unwrap();
    let b_again = h.position(|x| matches!(x, Action::Spawn { pid, .. } if *pid == h.main_pid("b"))).unwrap();
    assert!(b_end < a_end && a_end < a_again && a_again < b_again, "{:#?}", h.actions());
}

#[tokio::test(start_paused = true)]
async fn shutdown_stops_instances_before_services_and_reports_clean() {
    let inst = unit("comfy.instance", "[Instance]\nBlueprint=comfyui\n");
    // Named so that name order alone would stop the service first.
    let h = Harness::new(vec![inst, service("aaa-nginx", "")]);
    h.obey("comfy");
    h.obey("aaa-nginx");
    h.handle.start("comfy").await.unwrap();
    h.handle.start("aaa-nginx").await.unwrap();
    h.wait_status("comfy", Status::Started).await;
    h.wait_status("aaa-nginx", Status::Started).await;

    let report = h.handle.shutdown().await.unwrap();
    assert!(report.clean);
    let comfy = h.position(|x| matches!(x, Action::SignalUnit { unit, signal: TERM } if unit == "comfy")).unwrap();
    let comfy_end = h.position(|x| matches!(x, Action::EndRun { unit } if unit == "comfy")).unwrap();
    let nginx = h.position(|x| matches!(x, Action::SignalUnit { unit, signal: TERM } if unit == "aaa-nginx")).unwrap();
    assert!(
        comfy < comfy_end && comfy_end < nginx,
        "instance must be down before the service is signalled: {:#?}",
        h.actions()
    );
    assert!(!h.actions().iter().any(|(_, x)| matches!(x, Action::SignalUnit { signal: KILL, .. })));
    // The engine task ends once it has replied.
    tokio::time::timeout(Duration::from_secs(1), h.engine).await.expect("engine ended").unwrap();
}

#[tokio::test(start_paused = true)]
async fn commands_after_shutdown_began_are_refused() {
    let h = Harness::new(vec![service("s", "")]);
    h.handle.start("s").await.unwrap();
    h.wait_status("s", Status::Started).await;
    let handle = h.handle.clone();
    let shutdown = tokio::spawn(async move { handle.shutdown().await });
    h.settle().await;
    assert_eq!(h.handle.start("s").await, Err(CommandError::ShuttingDown));
    h.exit(h.main_pid("s"), signaled(TERM));
    assert!(shutdown.await.unwrap().unwrap().clean);
}

// ---- escalation ---------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_process_ignoring_sigterm_gets_sigkill_after_timeout_stop_sec() {
    let h = Harness::new(vec![service("stubborn", "TimeoutStopSec=5s\n")]);
    h.handle.start("stubborn").await.unwrap();
    h.wait_status("stubborn", Status::Started).await;

    h.handle.stop("stubborn").await.unwrap();
    h.wait_status("stubborn", Status::Stopped).await;
    let signals = h.unit_signals("stubborn");
    assert_eq!(signals.iter().map(|s| s.1).collect::<Vec<_>>(), [TERM, KILL]);
    assert_eq!(signals[1].0 - signals[0].0, Duration::from_secs(5));
    let snap = h.snapshot("stubborn").await;
    assert_eq!(snap.pid, None);
    assert_eq!(snap.last_exit.as_deref(), Some("stopped (SIGKILL) after TimeoutStopSec"));
}

#[tokio::test(start_paused = true)]
async fn a_shutdown_that_needed_sigkill_is_not_clean() {
    let h = Harness::new(vec![service("stubborn", "TimeoutStopSec=7s\n"), service("polite", "")]);
    h.obey("polite");
    h.handle.start("stubborn").await.unwrap();
    h.handle.start("polite").await.unwrap();
    h.wait_status("stubborn", Status::Started).await;
    let began = Instant::now();
    let report = h.handle.shutdown().await.unwrap();
    assert!(!report.clean);
    assert_eq!(began.elapsed(), Duration::from_secs(7));
}

#[tokio::test(start_paused = true)]
async fn an_earlier_sigkill_does_not_make_a_later_shutdown_unclean() {
    // needed_sigkill describes the stop it happened in; a unit killed an hour
    // ago by a user's stop must not turn a tidy shutdown into an unclean exit.
    let h = Harness::new(vec![service("stubborn", "TimeoutStopSec=5s\n")]);
    h.handle.start("stubborn").await.unwrap();
    h.wait_status("stubborn", Status::Started).await;
    h.handle.stop("stubborn").await.unwrap();
    h.wait_status("stubborn", Status::Stopped).await;
    assert!(h.handle.shutdown().await.unwrap().clean);
}

// ---- restart policies ---------------------------------------------------

#[tokio::test(start_paused = true)]
async fn crash_loop_backs_off_exponentially_then_hits_the_start_limit() {
    let h = Harness::new(vec![unit(
        "crashy.service",
        "[Unit]\nStartLimitBurst=5\nStartLimitIntervalSec=1min\n\
         [Service]\nExecStart=/bin/crashy\nRestart=on-failure\nRestartSec=100ms\n",
    )]);
    h.handle.start("crashy").await.unwrap();
    h.wait_status("crashy", Status::Started).await;

    let mut delays = Vec::new();
    for run in 1..=5 {
        let pid = h.main_pid("crashy");
        let died = Instant::now();
        h.exit(pid, signaled(KILL));
        if run == 1 {
            h.settle().await;
            let snap = h.snapshot("crashy").await;
            assert_eq!(snap.status, Status::Restarting);
            assert_eq!(snap.detail.as_deref(), Some("killed by SIGKILL; restarting in 0.1s"));
        }
        if run == 5 {
            break;
        }
        h.wait_spawns("crashy", run + 1).await;
        delays.push(h.mains("crashy")[run].at - died);
        let snap = h.wait_status("crashy", Status::Started).await;
        assert_eq!(snap.restarts, run as u32);
    }
    assert_eq!(delays, [100, 200, 400, 800].map(Duration::from_millis));

    // The sixth start within the minute is refused.
    let snap = h.wait_status("crashy", Status::Failed).await;
    assert!(snap.detail.as_deref().unwrap_or("").contains("start limit"), "{:?}", snap.detail);
    assert_eq!(snap.restarts, 5);
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(h.mains("crashy").len(), 5);
    // Restarts continue the run's log instead of rotating it.
    let fresh: Vec<bool> = h
        .actions()
        .into_iter()
        .filter_map(|(_, x)| if let Action::BeginRun { fresh, .. } = x { Some(fresh) } else { None })
        .collect();
    assert_eq!(fresh, [true, false, false, false, false]);
}

#[tokio::test(start_paused = true)]
async fn restart_no_leaves_an_error_with_the_exit_code() {
    let h = Harness::new(vec![service("once", "Restart=no\n")]);
    h.handle.start("once").await.unwrap();
    h.wait_status("once", Status::Started).await;
    h.exit(h.main_pid("once"), code(3));
    let snap = h.wait_status("once", Status::Error).await;
    assert_eq!(snap.detail.as_deref(), Some("exited with code 3"));
    assert_eq!(snap.last_exit.as_deref(), Some("exited with code 3"));
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(h.mains("once").len(), 1);
}

#[tokio::test(start_paused = true)]
async fn restart_on_failure_does_not_restart_a_clean_exit() {
    let h = Harness::new(vec![service("job", "Restart=on-failure\n")]);
    h.handle.start("job").await.unwrap();
    h.wait_status("job", Status::Started).await;
    h.exit(h.main_pid("job"), code(0));
    h.wait_status("job", Status::Stopped).await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(h.mains("job").len(), 1);
    assert_eq!(h.snapshot("job").await.status, Status::Stopped);
}

#[tokio::test(start_paused = true)]
async fn restart_always_restarts_a_clean_exit() {
    let h = Harness::new(vec![service("loop", "Restart=always\nRestartSec=2s\n")]);
    h.handle.start("loop").await.unwrap();
    h.wait_status("loop", Status::Started).await;
    let died = Instant::now();
    h.exit(h.main_pid("loop"), code(0));
    h.wait_spawns("loop", 2).await;
    assert_eq!(h.mains("loop")[1].at - died, Duration::from_secs(2));
    let snap = h.wait_status("loop", Status::Started).await;
    assert_eq!(snap.restarts, 1);
    assert_eq!(snap.last_exit.as_deref(), Some("exited with code 0"));
}

// ---- how a stop is delivered -------------------------------------------

#[tokio::test(start_paused = true)]
async fn exec_stop_runs_with_mainpid_before_the_kill_signal() {
    let h = Harness::new(vec![service("db", "ExecStop=/bin/db-stop --now\nKillSignal=SIGINT\n")]);
    h.handle.start("db").await.unwrap();
    h.wait_status("db", Status::Started).await;
    let main = h.main_pid("db");

    h.handle.stop("db").await.unwrap();
    h.settle().await;
    let stop = h.spawns("db").into_iter().find(|s| s.role == Role::Stop).expect("ExecStop spawned");
    assert_eq!(stop.argv, ["/bin/db-stop", "--now"]);
    assert!(stop.env.contains(&("MAINPID".to_string(), main.to_string())), "{:?}", stop.env);
    assert!(stop.env.contains(&("RUN_ENV".to_string(), "db".to_string())), "the run's environment is kept");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(h.unit_signals("db").is_empty(), "signalled while ExecStop still runs");

    h.exit(stop.pid, code(0));
    h.wait_for("the kill signal", |h| !h.unit_signals("db").is_empty()).await;
    assert_eq!(h.unit_signals("db").iter().map(|s| s.1).collect::<Vec<_>>(), [libc::SIGINT]);
    h.exit(main, signaled(libc::SIGINT));
    let snap = h.wait_status("db", Status::Stopped).await;
    assert_eq!(snap.detail, None);
}

#[tokio::test(start_paused = true)]
async fn kill_mode_chooses_whom_the_kill_signal_reaches() {
    let h = Harness::new(vec![
        service("mixed", "KillMode=mixed\n"),
        service("group", "KillMode=process-group\n"),
        service("cgroup", "KillMode=control-group\n"),
    ]);
    for name in ["mixed", "group", "cgroup"] {
        h.handle.start(name).await.unwrap();
        h.wait_status(name, Status::Started).await;
    }
    let (mixed, group) = (h.main_pid("mixed"), h.main_pid("group"));
    for name in ["mixed", "group", "cgroup"] {
        h.handle.stop(name).await.unwrap();
    }
    h.settle().await;
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

#[tokio::test(start_paused = true)]
async fn leftover_processes_are_killed_before_a_restart() {
    let h = Harness::new(vec![service("forker", "Restart=on-failure\nRestartSec=100ms\n")]);
    h.handle.start("forker").await.unwrap();
    h.wait_status("forker", Status::Started).await;
    h.add_leftover("forker", 9001);

    h.exit(h.main_pid("forker"), code(1));
    h.settle().await;
    assert_eq!(h.unit_signals("forker").iter().map(|s| s.1).collect::<Vec<_>>(), [TERM]);
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(h.mains("forker").len(), 1, "restarted while a process of the last run was alive");
    assert!(!h.actions().iter().any(|(_, a)| matches!(a, Action::EndRun { .. })));

    let gone = Instant::now();
    h.remove_leftover("forker", 9001);
    h.wait_spawns("forker", 2).await;
    let end = h.actions().into_iter().find(|(_, a)| matches!(a, Action::EndRun { .. })).unwrap().0;
    // Noticed at once (the cgroup emptied), then the normal backoff.
    assert_eq!(end, gone);
    assert_eq!(h.mains("forker")[1].at - end, Duration::from_millis(100));
    assert_eq!(h.snapshot("forker").await.last_exit.as_deref(), Some("exited with code 1"));
}

#[tokio::test(start_paused = true)]
async fn leftovers_ignoring_sigterm_are_killed_after_timeout_stop_sec() {
    let h = Harness::new(vec![service("forker", "Restart=no\nTimeoutStopSec=3s\n")]);
    h.handle.start("forker").await.unwrap();
    h.wait_status("forker", Status::Started).await;
    h.add_leftover("forker", 9001);
    h.exit(h.main_pid("forker"), code(2));
    let snap = h.wait_status("forker", Status::Error).await;
    assert_eq!(snap.detail.as_deref(), Some("exited with code 2"));
    let signals = h.unit_signals("forker");
    assert_eq!(signals.iter().map(|s| s.1).collect::<Vec<_>>(), [TERM, KILL]);
    assert_eq!(signals[1].0 - signals[0].0, Duration::from_secs(3));
}

/// Stops a unit whose main process leaves a descendant (9001) that ignores
/// SIGTERM; returns once the main process is gone and the unit drains.
async fn stop_leaving_a_descendant(h: &Harness) {
    h.handle.start("forker").await.unwrap();
    h.wait_status("forker", Status::Started).await;
    h.add_leftover("forker", 9001);
    h.handle.stop("forker").await.unwrap();
    h.settle().await;
    assert_eq!(h.unit_signals("forker").iter().map(|s| s.1).collect::<Vec<_>>(), [TERM]);
    h.exit(h.main_pid("forker"), signaled(TERM));
    h.settle().await;
    assert_eq!(h.snapshot("forker").await.status, Status::Stopping);
}

fn end_runs(h: &Harness) -> Vec<Instant> {
    h.actions().into_iter().filter(|(_, a)| matches!(a, Action::EndRun { .. })).map(|(at, _)| at).collect()
}

#[tokio::test(start_paused = true)]
async fn a_drain_ends_when_the_cgroup_says_it_emptied() {
    let h = Harness::with_hints(
        vec![service(
            "forker",
            "TimeoutStopSec=60s
",
        )],
        Hints::Cgroup,
    );
    stop_leaving_a_descendant(&h).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(h.snapshot("forker").await.status, Status::Stopping, "ended with a process left");

    let gone = Instant::now();
    h.remove_leftover("forker", 9001);
    h.wait_status("forker", Status::Stopped).await;
    assert_eq!(end_runs(&h), [gone], "not ended at the moment the cgroup emptied");
}

#[tokio::test(start_paused = true)]
async fn a_drain_without_cgroups_ends_when_the_reaper_reaps_the_last_orphan() {
    let h = Harness::with_hints(
        vec![service(
            "forker",
            "TimeoutStopSec=60s
",
        )],
        Hints::Reaper,
    );
    stop_leaving_a_descendant(&h).await;
    // Without watch_drain the fake (like the real reaper) would stay silent.
    assert!(h.kernel.lock().unwrap().watched.contains("forker"), "the engine did not ask to be woken");

    // An orphan of something else is reaped: the unit is checked, and stays.
    h.add_leftover("other", 7001);
    h.remove_leftover("other", 7001);
    h.settle().await;
    assert_eq!(h.snapshot("forker").await.status, Status::Stopping, "ended with a process left");

    let gone = Instant::now();
    h.remove_leftover("forker", 9001);
    h.wait_status("forker", Status::Stopped).await;
    assert_eq!(end_runs(&h), [gone], "not ended when its last orphan was reaped");
    assert!(!h.kernel.lock().unwrap().watched.contains("forker"), "still watched after end_run");
}

#[tokio::test(start_paused = true)]
async fn nothing_runs_on_a_timer_while_a_unit_drains() {
    let h = Harness::new(vec![service(
        "forker",
        "TimeoutStopSec=10s
",
    )]);
    let began = Instant::now();
    stop_leaving_a_descendant(&h).await;
    let checks = h.live_checks();
    // Nine virtual seconds of waiting: no check, no signal, no note.
    let actions = h.actions().len();
    tokio::time::sleep_until(began + Duration::from_secs(9)).await;
    assert_eq!(h.live_checks(), checks, "membership was polled while draining");
    assert_eq!(h.actions().len(), actions, "something ran during the wait: {:#?}", &h.actions()[actions..]);
    // The one timer: TimeoutStopSec, then SIGKILL ends it.
    h.wait_status("forker", Status::Stopped).await;
    let signals = h.unit_signals("forker");
    assert_eq!(signals.iter().map(|s| s.1).collect::<Vec<_>>(), [TERM, KILL]);
    assert_eq!(signals[1].0 - signals[0].0, Duration::from_secs(10));
}

#[tokio::test(start_paused = true)]
async fn restart_command_stops_then_starts_afresh() {
    let mut h = Harness::new(vec![service("web", "")]);
    h.obey("web");
    h.handle.start("web").await.unwrap();
    h.wait_status("web", Status::Started).await;
    let first = h.main_pid("web");
    h.events();

    h.handle.restart("web").await.unwrap();
    let snap = h.wait_status("web", Status::Started).await;
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
    let statuses: Vec<Status> = h.events().into_iter().filter(|e| e.event == "state").map(|e| e.status).collect();
    assert_eq!(statuses.first(), Some(&Status::Stopping));
    assert_eq!(statuses.last(), Some(&Status::Started));
    assert!(statuses.contains(&Status::Stopped));
}

// ---- refusals and failures ---------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_unit_on_an_ordering_cycle_is_refused_naming_the_cycle() {
    let h = Harness::new(vec![
        unit("a.service", "[Unit]\nAfter=b.service\n[Service]\nExecStart=/bin/a\n"),
        unit("b.service", "[Unit]\nAfter=a.service\n[Service]\nExecStart=/bin/b\n"),
        service("c", ""),
    ]);
    match h.handle.start("a").await {
        Err(CommandError::Refused { unit, action: "start", why }) => {
            assert_eq!(unit, "a");
            assert!(why.contains("ordering cycle") && why.contains("a -> b"), "{why}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(h.spawns("a").is_empty() && h.spawns("b").is_empty());
    // Units off the cycle are unaffected.
    h.handle.start("c").await.unwrap();
    h.wait_status("c", Status::Started).await;
}

#[tokio::test(start_paused = true)]
async fn a_dependent_fails_when_its_requirement_fails_to_start() {
    let h = Harness::new(vec![
        service("a", "ExecStartPre=/bin/check-config\n"),
        unit("b.service", "[Unit]\nAfter=a.service\nRequires=a.service\n[Service]\nExecStart=/bin/b\n"),
    ]);
    h.handle.start("b").await.unwrap();
    h.wait_for("a's pre-start", |h| !h.spawns("a").is_empty()).await;
    let pre = h.spawns("a")[0].clone();
    assert_eq!(pre.role, Role::Pre);
    h.exit(pre.pid, code(1));

    let a = h.wait_status("a", Status::Error).await;
    assert_eq!(a.detail.as_deref(), Some("ExecStartPre exited with code 1"));
    let b = h.wait_status("b", Status::Failed).await;
    assert_eq!(b.detail.as_deref(), Some("dependency a failed"));
    assert!(h.spawns("b").is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_failing_exec_start_pre_prevents_the_main_process() {
    let h = Harness::new(vec![service("strict", "ExecStartPre=/bin/false\nExecStartPre=/bin/never\n")]);
    h.handle.start("strict").await.unwrap();
    h.wait_for("the pre-start", |h| !h.spawns("strict").is_empty()).await;
    h.exit(h.spawns("strict")[0].pid, code(1));
    h.wait_status("strict", Status::Error).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let spawned: Vec<Vec<String>> = h.spawns("strict").into_iter().map(|s| s.argv).collect();
    assert_eq!(spawned, [["/bin/false"]], "nothing runs after a failed ExecStartPre");
}

#[tokio::test(start_paused = true)]
async fn a_dash_prefixed_exec_start_pre_may_fail() {
    let h = Harness::new(vec![service("lenient", "ExecStartPre=-/bin/false\n")]);
    h.handle.start("lenient").await.unwrap();
    h.wait_for("the pre-start", |h| !h.spawns("lenient").is_empty()).await;
    let pre = h.spawns("lenient")[0].clone();
    assert_eq!(pre.role, Role::Pre);
    assert_eq!(h.snapshot("lenient").await.status, Status::Starting);
    h.exit(pre.pid, code(1));
    h.wait_status("lenient", Status::Started).await;
    assert_eq!(h.mains("lenient").len(), 1);
}

// ---- timers that outlive their phase -------------------------------------

#[tokio::test(start_paused = true)]
async fn a_stop_during_backoff_cancels_the_pending_restart() {
    let h = Harness::new(vec![service("crashy", "Restart=on-failure\nRestartSec=1s\n")]);
    h.handle.start("crashy").await.unwrap();
    h.wait_status("crashy", Status::Started).await;
    h.exit(h.main_pid("crashy"), code(1));
    h.wait_status("crashy", Status::Restarting).await;

    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h.handle.stop("crashy").await, Ok(Status::Stopped));
    // Well past the moment the backoff timer fires.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(h.mains("crashy").len(), 1, "respawned after being stopped");
    assert_eq!(h.snapshot("crashy").await.status, Status::Stopped);
}

#[tokio::test(start_paused = true)]
async fn a_start_during_backoff_starts_once() {
    let h = Harness::new(vec![service("crashy", "Restart=on-failure\nRestartSec=1s\n")]);
    h.handle.start("crashy").await.unwrap();
    h.wait_status("crashy", Status::Started).await;
    h.exit(h.main_pid("crashy"), code(1));
    h.wait_status("crashy", Status::Restarting).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    h.handle.start("crashy").await.unwrap();
    h.wait_spawns("crashy", 2).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(h.mains("crashy").len(), 2, "the old backoff timer started it a second time");
    assert_eq!(h.snapshot("crashy").await.status, Status::Started);
}

// ---- new definitions -----------------------------------------------------

#[tokio::test(start_paused = true)]
async fn set_units_stops_removed_units_and_adds_new_ones_stopped() {
    let h = Harness::new(vec![service("old", ""), service("kept", "")]);
    h.handle.start("old").await.unwrap();
    h.wait_status("old", Status::Started).await;

    h.handle.set_units(vec![service("kept", ""), service("new", "")]).await.unwrap();
    h.settle().await;
    assert_eq!(h.unit_signals("old").iter().map(|s| s.1).collect::<Vec<_>>(), [TERM]);
    assert_eq!(h.snapshot("old").await.status, Status::Stopping, "stays visible while it stops");
    assert_eq!(h.snapshot("new").await.status, Status::Stopped);

    h.exit(h.main_pid("old"), signaled(TERM));
    let deadline = Instant::now() + PATIENCE;
    while h.names().await.contains(&"old".to_string()) {
        assert!(Instant::now() < deadline, "old never left the snapshot");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(h.names().await, ["kept", "new"]);
    assert_eq!(h.handle.start("old").await, Err(CommandError::NoSuchUnit("old".into())));
}

// ---- live state ordering -------------------------------------------------

/// Regression (issue 11): a page fetched a snapshot while an exit was being
/// handled and showed `starting` after the `error` event. Every event and
/// snapshot carries a seq so a reader can tell which state is newer.
#[tokio::test(start_paused = true)]
async fn every_event_has_a_higher_seq_and_a_snapshot_carries_the_latest() {
    let mut h = Harness::new(vec![service("quick", "Restart=no\n"), service("other", "")]);
    let added = h.snapshot("quick").await.seq;
    assert!(added > 0, "the `unit added` event has a seq");
    h.handle.start("quick").await.unwrap();
    h.handle.start("other").await.unwrap();
    h.wait_status("quick", Status::Started).await;
    h.exit(h.main_pid("quick"), code(1));
    let snap = h.wait_status("quick", Status::Error).await;
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

#[tokio::test(start_paused = true)]
async fn a_missing_module_fails_at_once_instead_of_burning_the_start_limit() {
    let h = Harness::new(vec![service("app", "Restart=on-failure\nRestartSec=1s\n")]);
    h.kernel
        .lock()
        .unwrap()
        .log_tail
        .insert("app".into(), vec!["ModuleNotFoundError: No module named 'xformers'".into()]);
    h.handle.start("app").await.unwrap();
    h.wait_status("app", Status::Started).await;
    h.exit(h.main_pid("app"), code(1));
    let snap = h.wait_status("app", Status::Failed).await;
    assert_eq!(snap.restarts, 0);
    let failure = snap.failure.expect("classified");
    assert_eq!(failure.class, crate::failure::FailureClass::MissingModule);
    assert_eq!(failure.hint.as_deref(), Some("pip install xformers into the instance's venv"));
    assert!(snap.detail.as_deref().unwrap().contains("missing-module"), "{:?}", snap.detail);
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(h.mains("app").len(), 1, "never restarted");
}

#[tokio::test(start_paused = true)]
async fn a_cuda_oom_restarts_with_backoff_and_a_user_start_forgets_it() {
    let h = Harness::new(vec![service("app", "Restart=on-failure\nRestartSec=1s\n")]);
    h.kernel
        .lock()
        .unwrap()
        .log_tail
        .insert("app".into(), vec!["torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB".into()]);
    h.handle.start("app").await.unwrap();
    h.wait_status("app", Status::Started).await;
    h.exit(h.main_pid("app"), code(1));
    let snap = h.wait_status("app", Status::Restarting).await;
    assert!(snap.detail.as_deref().unwrap().contains("cuda-oom"), "{:?}", snap.detail);
    assert_eq!(snap.failure.map(|f| f.class), Some(crate::failure::FailureClass::CudaOom));
    h.wait_status("app", Status::Started).await;
    assert_eq!(h.mains("app").len(), 2);
    h.handle.stop("app").await.unwrap();
    h.wait_status("app", Status::Stopped).await;
    h.handle.start("app").await.unwrap();
    assert_eq!(h.snapshot("app").await.failure, None);
}
