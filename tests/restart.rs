//! [Service] Restart=, RestartSec= backoff and the start limit, with real processes.

use crate::harness::Daemon;

fn kill_main(d: &Daemon, unit: &str) -> i64 {
    let pid = d.unit(unit)["pid"].as_i64().expect("a running main pid");
    // SAFETY: killing the unit's main process, as a crash would.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    pid
}

#[test]
fn sigkilled_main_process_is_restarted_with_growing_delays_until_the_start_limit() {
    let d = Daemon::start(&[(
        "crashy.service",
        "[Unit]\nStartLimitBurst=3\nStartLimitIntervalSec=1min\n\
         [Service]\nExecStart=/bin/sleep 1000\nRestart=on-failure\nRestartSec=200ms\n",
    )]);
    d.wait_status("crashy", "started");

    let first = kill_main(&d, "crashy");
    d.wait_until("first restart", |d| {
        let u = d.unit("crashy");
        u["status"] == "started" && u["restarts"] == 1 && u["pid"].as_i64() != Some(first)
    });
    let second = kill_main(&d, "crashy");
    d.wait_until("second restart", |d| {
        let u = d.unit("crashy");
        u["status"] == "started" && u["restarts"] == 2 && u["pid"].as_i64() != Some(second)
    });

    // The journal records each decision with its delay: doubling from RestartSec.
    let (_, journal) = d.get("/api/v1/journal?unit=crashy&limit=500");
    let details: Vec<String> =
        journal.as_array().unwrap().iter().map(|e| e["detail"].as_str().unwrap_or("").to_string()).collect();
    let delays: Vec<&String> = details.iter().filter(|d| d.contains("restarting in")).collect();
    assert!(delays[0].contains("restarting in 0.2s"), "{details:?}");
    assert!(delays[1].contains("restarting in 0.4s"), "{details:?}");
    assert!(delays[0].contains("killed by SIGKILL"), "{details:?}");

    let out = d.cli(&["status", "crashy"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("restarts:  2"), "{text}");

    // The third start used the burst: the next crash hits the limit.
    kill_main(&d, "crashy");
    let u = d.wait_status("crashy", "failed");
    assert!(u["detail"].as_str().unwrap().contains("start limit"), "{u}");
    let out = d.cli(&["status", "crashy"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("failed") && text.contains("start limit"), "{text}");
}

#[test]
fn restart_no_leaves_a_failing_unit_in_error_with_its_exit_code() {
    let d = Daemon::start(&[("once.service", "[Service]\nExecStart=/bin/sh -c 'exit 3'\n")]);
    let u = d.wait_status("once", "error");
    assert_eq!(u["detail"], "exited with code 3");
    assert_eq!(u["restarts"], 0);
}

#[test]
fn restart_on_failure_does_not_restart_a_clean_exit() {
    let d = Daemon::start(&[("clean.service", "[Service]\nExecStart=/bin/true\nRestart=on-failure\n")]);
    let u = d.wait_status("clean", "stopped");
    assert_eq!(u["restarts"], 0);
    std::thread::sleep(std::time::Duration::from_millis(400));
    assert_eq!(d.unit("clean")["restarts"], 0);
}

#[test]
fn restart_always_restarts_a_clean_exit() {
    let d = Daemon::start(&[(
        "loop.service",
        "[Unit]\nStartLimitBurst=0\n[Service]\nExecStart=/bin/sh -c 'sleep 0.1'\nRestart=always\nRestartSec=50ms\n",
    )]);
    d.wait_until("two restarts", |d| d.unit("loop")["restarts"].as_u64().unwrap_or(0) >= 2);
}

#[test]
fn a_user_start_after_failed_begins_a_new_attempt() {
    let d = Daemon::start(&[(
        "flaky.service",
        "[Unit]\nStartLimitBurst=2\n[Service]\nExecStart=/bin/sh -c 'exit 1'\nRestart=on-failure\nRestartSec=10ms\n",
    )]);
    d.wait_status("flaky", "failed");
    let (code, body) = d.post("/api/v1/units/flaky/start");
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["status"], "starting", "the start limit was reset by the user's start");
    d.wait_status("flaky", "failed");
}
