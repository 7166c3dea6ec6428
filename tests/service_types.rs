//! [Service] Type=: oneshot (several ExecStart=, RemainAfterExit=), exec, and
//! notify (READY=1, STATUS=, WATCHDOG=1 on NOTIFY_SOCKET), with real processes.

use crate::harness::Daemon;

#[test]
fn a_oneshot_runs_its_commands_in_turn_and_what_requires_it_starts_after() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let setup = format!(
        "[Service]\nType=oneshot\nRemainAfterExit=yes\n\
         ExecStart=/bin/sh -c 'sleep 0.3; touch {d}/first'\n\
         ExecStart=/bin/sh -c 'test -f {d}/first && touch {d}/second'\n\
         ExecStop=/bin/sh -c 'touch {d}/undone'\n"
    );
    // The app checks at start that the oneshot has finished.
    let app = format!(
        "[Unit]\nRequires=setup.service\nAfter=setup.service\n\
         [Service]\nExecStart=/bin/sh -c 'test -f {d}/second && exec sleep 1000'\n"
    );
    let daemon = Daemon::start(&[("setup.service", &setup), ("app.service", &app)]);
    let u = daemon.wait_status("setup", "started");
    assert!(u["pid"].is_null(), "a remaining oneshot has no process: {u}");
    let a = daemon.wait_status("app", "started");
    assert!(a["pid"].as_i64().is_some(), "{a}");
    assert!(dir.path().join("second").exists());

    // Stopping it runs ExecStop= (no main process is left) and takes down what requires it.
    let (code, _) = daemon.post("/api/v1/units/setup/stop");
    assert_eq!(code, 200);
    daemon.wait_status("setup", "stopped");
    daemon.wait_status("app", "stopped");
    assert!(dir.path().join("undone").exists(), "ExecStop= of the remaining oneshot did not run");
}

#[test]
fn a_oneshot_without_remain_after_exit_ends_stopped_and_a_failing_one_fails_its_dependents() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let done = format!("[Service]\nType=oneshot\nExecStart=/bin/true\nExecStart=/bin/sh -c 'touch {d}/done'\n");
    let after_done = "[Unit]\nRequires=done.service\nAfter=done.service\n[Service]\nExecStart=/bin/sleep 1000\n";
    let broken = "[Service]\nType=oneshot\nExecStart=/bin/true\nExecStart=/bin/sh -c 'exit 4'\n";
    let after_broken = "[Unit]\nRequires=broken.service\nAfter=broken.service\n[Service]\nExecStart=/bin/sleep 1000\n";
    let daemon = Daemon::start(&[
        ("done.service", &done),
        ("needs-done.service", after_done),
        ("broken.service", broken),
        ("needs-broken.service", after_broken),
    ]);
    let u = daemon.wait_status("done", "stopped");
    assert_eq!(u["detail"], "exited with code 0", "{u}");
    assert!(dir.path().join("done").exists());
    daemon.wait_status("needs-done", "started");

    let b = daemon.wait_status("broken", "error");
    assert_eq!(b["detail"], "exited with code 4", "{b}");
    let n = daemon.wait_status("needs-broken", "failed");
    assert_eq!(n["detail"], "dependency broken failed", "{n}");
}

#[test]
fn several_exec_start_lines_are_refused_outside_a_oneshot() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("two.service");
    std::fs::write(&path, "[Service]\nExecStart=/bin/true\nExecStart=/bin/false\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_aikore")).arg("check").arg(&path).output().unwrap();
    assert!(!out.status.success());
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("only a Type=oneshot service runs several"), "{text}");
}

/// A raw sd_notify client: sends its arguments, one per line, to
/// `$NOTIFY_SOCKET` as one datagram (`@` standing for the abstract namespace).
fn notifier(dir: &std::path::Path) -> String {
    let path = dir.join("notify.py");
    std::fs::write(
        &path,
        "import os, socket, sys\n\
         a = os.environ['NOTIFY_SOCKET']\n\
         a = '\\0' + a[1:] if a[0] == '@' else a\n\
         socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto('\\n'.join(sys.argv[1:]).encode(), a)\n",
    )
    .unwrap();
    format!("python3 {}", path.display())
}

#[test]
fn a_notify_service_is_started_by_a_raw_ready_datagram_and_shows_its_status() {
    let dir = tempfile::tempdir().unwrap();
    let gate = dir.path().join("go");
    let notify = notifier(dir.path());
    let unit = format!(
        "[Service]\nType=notify\n\
         ExecStart=/bin/sh -c 'while [ ! -e {} ]; do sleep 0.05; done; {notify} READY=1 \"STATUS=serving 3 models\"; exec sleep 1000'\n",
        gate.display()
    );
    let d = Daemon::start(&[("d.service", &unit)]);
    // Running, but not ready until it says so.
    d.wait_until("the main process", |d| d.unit("d")["pid"].as_i64().is_some());
    std::thread::sleep(std::time::Duration::from_millis(300));
    let u = d.unit("d");
    assert_eq!((u["status"].as_str(), u["detail"].as_str()), (Some("starting"), Some("waiting for READY=1")), "{u}");
    std::fs::write(&gate, "").unwrap();
    let u = d.wait_status("d", "started");
    assert_eq!(u["detail"], "serving 3 models", "{u}");
    let out = d.cli(&["status", "d"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("serving 3 models"), "{text}");
}

#[test]
fn a_notify_service_that_stops_sending_watchdog_is_killed_and_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let env = dir.path().join("watchdog_usec");
    let notify = notifier(dir.path());
    // Ready, one ping, then silence.
    let unit = format!(
        "[Service]\nType=notify\nWatchdogSec=1s\nRestart=on-failure\nRestartSec=100ms\n\
         ExecStart=/bin/sh -c 'echo $WATCHDOG_USEC > {}; {notify} READY=1; {notify} WATCHDOG=1; exec sleep 1000'\n",
        env.display()
    );
    let d = Daemon::start(&[("dog.service", &unit)]);
    let first = d.wait_status("dog", "started")["pid"].as_i64();
    d.wait_until("a restart after the watchdog", |d| {
        let u = d.unit("dog");
        u["restarts"].as_u64() >= Some(1) && u["status"] == "started" && u["pid"].as_i64() != first
    });
    assert_eq!(std::fs::read_to_string(&env).unwrap().trim(), "1000000");
    let (_, journal) = d.get("/api/v1/journal?unit=dog&limit=500");
    let details: Vec<String> =
        journal.as_array().unwrap().iter().map(|e| e["detail"].as_str().unwrap_or("").to_string()).collect();
    assert!(details.iter().any(|t| t.contains("restarting: watchdog timeout")), "{details:?}");
    assert!(d.unit_log("dog").contains("no WATCHDOG=1 within WatchdogSec="), "{}", d.unit_log("dog"));
}
