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
