//! Stopping: KillSignal, TimeoutStopSec escalation, ExecStop, and that no
//! process of a unit survives, double-forked ones included, in both tracking modes.

use std::time::{Duration, Instant};

use crate::harness::{Daemon, Options};

/// A unit whose script leaves a double-forked, setsid'd grandchild behind.
const DOUBLE_FORK: &str =
    "[Service]\nExecStart=/bin/sh -c '(setsid sleep 1001 &) ; (sleep 1002 &) ; exec sleep 1000'\n";

fn stop_leaves_nothing(options: Options, mode: &str) {
    let d = Daemon::start_with(&[("forky.service", DOUBLE_FORK)], options);
    let (_, health) = d.get("/healthz");
    assert_eq!(health["tracking"], mode);
    d.wait_status("forky", "started");
    d.wait_until("the three processes", |d| d.marked_processes().len() >= 3);
    let (code, _) = d.post("/api/v1/units/forky/stop");
    assert_eq!(code, 200);
    d.wait_status("forky", "stopped");
    assert_eq!(d.marked_processes(), Vec::<i32>::new(), "stop left processes of the unit");
}

#[test]
fn stop_kills_double_forked_descendants_with_cgroups() {
    stop_leaves_nothing(Options::default(), "cgroup");
}

#[test]
fn stop_kills_double_forked_descendants_without_cgroups() {
    let mut options = Options::default();
    options.env.push(("AIKORE_CGROUP".into(), "off".into()));
    stop_leaves_nothing(options, "process-group");
}

/// A setsid'd descendant that takes a moment to exit after SIGTERM, so it is
/// the last process of the unit, and its parent is long gone (it is an orphan
/// of aikore). TimeoutStopSec is far beyond the test's patience: the stop
/// must end when that orphan is reaped (cgroup: when the cgroup empties),
/// not on a timer.
const SLOW_ESCAPEE: &str = "[Service]\nExecStart=/bin/sh -c '(setsid sh -c \"f() { sleep 0.5; exit 0; }; trap f TERM; \
     while :; do sleep 0.1; done\" &) ; exec sleep 1000'\nTimeoutStopSec=300s\n";

fn a_slow_escapee_ends_the_stop_when_it_exits(options: Options, mode: &str) {
    let d = Daemon::start_with(&[("slow.service", SLOW_ESCAPEE)], options);
    let (_, health) = d.get("/healthz");
    assert_eq!(health["tracking"], mode);
    d.wait_status("slow", "started");
    d.wait_until("the escapee", |d| d.marked_processes().len() >= 2);
    let (code, _) = d.post("/api/v1/units/slow/stop");
    assert_eq!(code, 200);
    d.wait_status("slow", "stopped");
    assert_eq!(d.marked_processes(), Vec::<i32>::new(), "stop left processes of the unit");
    assert!(!d.unit_log("slow").contains("SIGKILL"), "{}", d.unit_log("slow"));
}

#[test]
fn a_stop_ends_when_the_last_orphan_exits_with_cgroups() {
    a_slow_escapee_ends_the_stop_when_it_exits(Options::default(), "cgroup");
}

#[test]
fn a_stop_ends_when_the_last_orphan_exits_without_cgroups() {
    let mut options = Options::default();
    options.env.push(("AIKORE_CGROUP".into(), "off".into()));
    a_slow_escapee_ends_the_stop_when_it_exits(options, "process-group");
}

/// Many units ending at once reach the engine in batches that share one
/// /proc sweep; no unit's end may be lost in one (it would then wait for
/// TimeoutStopSec, far beyond the daemon's shutdown deadline, and the exit
/// would be unclean).
fn a_shutdown_sees_every_one_of_many_units_gone(options: Options) {
    let files: Vec<(String, String)> = (0..60)
        .map(|i| (format!("s{i}.service"), "[Service]\nExecStart=/bin/sleep 1000\nTimeoutStopSec=300s\n".to_string()))
        .collect();
    let units: Vec<(&str, &str)> = files.iter().map(|(n, t)| (n.as_str(), t.as_str())).collect();
    let mut d = Daemon::start_with(&units, options);
    d.wait_until("60 started units", |d| {
        let (_, list) = d.get("/api/v1/units");
        list.as_array().is_some_and(|l| l.iter().filter(|u| u["status"] == "started").count() == 60)
    });
    let status = d.terminate();
    assert_eq!(status.code(), Some(0), "{}", d.daemon_log());
    assert!(d.marked_processes().is_empty());
}

#[test]
fn a_shutdown_sees_every_one_of_many_units_gone_with_cgroups() {
    a_shutdown_sees_every_one_of_many_units_gone(Options::default());
}

#[test]
fn a_shutdown_sees_every_one_of_many_units_gone_without_cgroups() {
    let mut options = Options::default();
    options.env.push(("AIKORE_CGROUP".into(), "off".into()));
    a_shutdown_sees_every_one_of_many_units_gone(options);
}

#[test]
fn a_unit_ignoring_sigterm_is_sigkilled_after_timeout_stop_sec() {
    let d = Daemon::start(&[(
        "stubborn.service",
        "[Service]\nExecStart=/bin/sh -c 'trap \"\" TERM; echo trapped; while :; do sleep 0.05; done'\nTimeoutStopSec=1s\n",
    )]);
    d.wait_status("stubborn", "started");
    // `started` comes at exec; the shell ignores TERM only from its trap on (a stop before it ends the run at once).
    d.wait_until("the TERM trap", |d| d.unit_log("stubborn").contains("\ntrapped"));
    let began = Instant::now();
    d.post("/api/v1/units/stubborn/stop");
    d.wait_status("stubborn", "stopped");
    let took = began.elapsed();
    assert!(took >= Duration::from_millis(950), "SIGKILL came before TimeoutStopSec: {took:?}");
    assert!(d.unit_log("stubborn").contains("sending SIGKILL"), "{}", d.unit_log("stubborn"));
    assert!(d.marked_processes().is_empty());
}

#[test]
fn exec_stop_runs_first_with_mainpid() {
    // Both commands append to one file: its order is the order they ran in
    // (the log interleaves two pipes read by two tasks, so it is not).
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("order");
    let unit = format!(
        "[Service]\nExecStart=/bin/sh -c 'trap \"echo got TERM >> {r}; exit 0\" TERM; echo trapped; while :; do sleep 0.05; done'\n\
         ExecStop=/bin/sh -c 'echo stopping $MAINPID >> {r}'\n",
        r = record.display()
    );
    let d = Daemon::start(&[("polite.service", &unit)]);
    let pid = d.wait_status("polite", "started")["pid"].as_i64().unwrap();
    // A TERM before the trap would end the shell without its line.
    d.wait_until("the trap", |d| d.unit_log("polite").contains("\ntrapped"));
    d.post("/api/v1/units/polite/stop");
    d.wait_status("polite", "stopped");
    let order = std::fs::read_to_string(&record).unwrap();
    assert_eq!(
        order,
        format!("stopping {pid}\ngot TERM\n"),
        "ExecStop runs first, with $MAINPID, then the kill signal"
    );
}

#[test]
fn kill_signal_is_honoured() {
    let d = Daemon::start(&[(
        "hup.service",
        "[Service]\nExecStart=/bin/sh -c 'trap \"echo got HUP; exit 0\" HUP; echo trapped; while :; do sleep 0.05; done'\nKillSignal=SIGHUP\n",
    )]);
    d.wait_status("hup", "started");
    d.wait_until("the trap", |d| d.unit_log("hup").contains("\ntrapped"));
    d.post("/api/v1/units/hup/stop");
    d.wait_status("hup", "stopped");
    assert!(d.unit_output("hup").contains("got HUP"), "{}", d.unit_log("hup"));
}

#[test]
fn stopping_a_required_unit_stops_its_dependents_first() {
    let d = Daemon::start(&[
        (
            "base.service",
            "[Service]\nExecStart=/bin/sh -c 'trap \"echo base down; exit 0\" TERM; while :; do sleep 0.05; done'\n",
        ),
        (
            "app.service",
            "[Unit]\nRequires=base.service\nAfter=base.service\n\
             [Service]\nExecStart=/bin/sh -c 'trap \"echo app down; exit 0\" TERM; while :; do sleep 0.05; done'\n",
        ),
    ]);
    d.wait_status("app", "started");
    d.post("/api/v1/units/base/stop");
    d.wait_status("base", "stopped");
    d.wait_status("app", "stopped");
    let (_, journal) = d.get("/api/v1/journal?limit=500");
    let stopped: Vec<String> = journal
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "state" && e["detail"].as_str().unwrap_or("").starts_with("stopped"))
        .map(|e| e["unit"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(stopped, ["app", "base"], "dependents go down first");
}

#[test]
fn sigterm_to_the_daemon_stops_everything_in_reverse_order_and_exits_0() {
    let mut d = Daemon::start(&[
        ("first.service", "[Service]\nExecStart=/bin/sleep 1000\n"),
        ("second.service", "[Unit]\nAfter=first.service\n[Service]\nExecStart=/bin/sleep 1000\n"),
    ]);
    d.wait_status("second", "started");
    let (code, body) = d
        .post_json("/api/v1/instances", serde_json::json!({ "name": "inst", "blueprint": "test-http", "start": true }));
    assert_eq!(code, 201, "{body}");
    d.wait_status("inst", "started");
    let status = d.terminate();
    assert_eq!(status.code(), Some(0), "{}", d.daemon_log());
    assert!(d.marked_processes().is_empty());
    let log = d.daemon_log();
    let positions: Vec<usize> = ["unit=inst status=stopped", "unit=second status=stopped", "unit=first status=stopped"]
        .into_iter()
        .map(|needle| log.find(needle).unwrap_or_else(|| panic!("{needle} missing in {log}")))
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "instances, then services in reverse order: {log}");
}

/// The supervisor engine dying outside a shutdown (here a debug build's
/// test-only panic, `AIKORE_TEST_PANIC_ENGINE`) must not leave PID 1 up
/// with its units orphaned: the daemon kills them and exits with 3.
fn a_dead_engine_ends_the_daemon(mut options: Options, mode: &str) {
    let trigger_dir = tempfile::tempdir().unwrap();
    let trigger = trigger_dir.path().join("panic-now");
    options.env.push(("AIKORE_TEST_PANIC_ENGINE".into(), trigger.display().to_string()));
    let mut d = Daemon::start_with(&[("sleeper.service", "[Service]\nExecStart=/bin/sleep 1000\n")], options);
    let (_, health) = d.get("/healthz");
    assert_eq!(health["tracking"], mode);
    d.wait_status("sleeper", "started");
    d.wait_until("the unit's process", |d| !d.marked_processes().is_empty());
    std::fs::write(&trigger, "").unwrap();
    // A generous cap for a busy CI box; the daemon itself does not wait on anything.
    let pulled = Instant::now();
    let status = d.wait_exit(Duration::from_secs(20));
    eprintln!("daemon exited {:?} after the trigger", pulled.elapsed());
    let log = d.daemon_log();
    assert_eq!(status.code(), Some(3), "exit status {status:?}\n{log}");
    assert!(log.contains("the supervisor engine panicked"), "{log}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !d.marked_processes().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(d.marked_processes(), Vec::<i32>::new(), "the units' processes outlived the daemon\n{log}");
}

#[test]
fn a_panicked_engine_makes_the_daemon_exit_non_zero_with_cgroups() {
    a_dead_engine_ends_the_daemon(Options::default(), "cgroup");
}

#[test]
fn a_panicked_engine_makes_the_daemon_exit_non_zero_without_cgroups() {
    let mut options = Options::default();
    options.env.push(("AIKORE_CGROUP".into(), "off".into()));
    a_dead_engine_ends_the_daemon(options, "process-group");
}
