//! PID-1 duties in a real PID namespace: reaping every orphan, and the
//! ordered, deadline-bound shutdown on SIGTERM.

use std::time::{Duration, Instant};

use crate::harness::{process_state, Daemon, Options};

fn in_pid_namespace() -> Options {
    Options {
        wrapper: ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child=SIGTERM"].map(String::from).to_vec(),
        ..Options::default()
    }
}

/// The host pid of the namespace's PID 1: the only child of `unshare`.
fn namespace_init(d: &Daemon) -> i32 {
    let unshare = d.pid();
    let children = std::fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children")).unwrap_or_default();
    children.split_whitespace().next().and_then(|p| p.parse().ok()).expect("unshare has forked aikore")
}

fn children_of(pid: i32) -> Vec<i32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks
                .flatten()
                .flat_map(|t| {
                    std::fs::read_to_string(t.path().join("children"))
                        .unwrap_or_default()
                        .split_whitespace()
                        .filter_map(|p| p.parse().ok())
                        .collect::<Vec<i32>>()
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn as_pid1_a_unit_orphaning_1000_grandchildren_leaves_zero_zombies() {
    let d = Daemon::start_with(
        &[(
            "orphaner.service",
            // Each subshell exits at once, so its short-lived sleep is re-parented to PID 1.
            "[Service]\nExecStart=/bin/sh -c 'i=0; while [ $i -lt 1000 ]; do (sleep 0.01 &); i=$((i+1)); done; echo spawned; exec sleep 1000'\n",
        )],
        in_pid_namespace(),
    );
    let (_, health) = d.get("/healthz");
    assert_eq!(health["pid1"], true, "aikore must be PID 1 in the namespace: {health}");
    d.wait_until("the orphans to be produced", |d| d.unit_log("orphaner").contains("\nspawned"));
    d.wait_until("1000 orphans reaped", |d| d.get("/healthz").1["orphans_reaped"].as_u64().unwrap_or(0) >= 1000);
    let init = namespace_init(&d);
    // Give any straggler a moment to die, then count zombies parented to PID 1.
    std::thread::sleep(Duration::from_millis(300));
    let zombies: Vec<i32> = children_of(init).into_iter().filter(|p| process_state(*p) == Some('Z')).collect();
    assert!(zombies.is_empty(), "zombies left under PID 1: {zombies:?}");
}

#[test]
fn as_pid1_sigterm_stops_a_term_ignoring_unit_with_sigkill_after_its_timeout_and_exits() {
    let mut d = Daemon::start_with(
        &[(
            "stubborn.service",
            "[Service]\nExecStart=/bin/sh -c 'trap \"\" TERM; echo trapped; while :; do sleep 0.05; done'\nTimeoutStopSec=1s\n",
        )],
        in_pid_namespace(),
    );
    d.wait_status("stubborn", "started");
    // `started` comes at exec: a TERM before the trap ends the shell at once.
    d.wait_until("the trap", |d| d.unit_log("stubborn").contains("\ntrapped"));
    let init = namespace_init(&d);
    let began = Instant::now();
    // SAFETY: signalling the namespace's init, which we started.
    unsafe { libc::kill(init, libc::SIGTERM) };
    let status = d.wait_exit(Duration::from_secs(20));
    let took = began.elapsed();
    assert!(took >= Duration::from_millis(950), "exited before TimeoutStopSec: {took:?}");
    assert!(took < Duration::from_secs(15), "took {took:?}");
    // Needing SIGKILL makes the shutdown unclean: the exit code says so.
    assert_eq!(status.code(), Some(2), "{}", d.daemon_log());
    assert!(d.unit_log("stubborn").contains("sending SIGKILL"));
}

#[test]
fn as_pid1_a_clean_shutdown_exits_0() {
    let mut d = Daemon::start_with(&[("calm.service", "[Service]\nExecStart=/bin/sleep 1000\n")], in_pid_namespace());
    d.wait_status("calm", "started");
    let init = namespace_init(&d);
    // SAFETY: as above.
    unsafe { libc::kill(init, libc::SIGTERM) };
    assert_eq!(d.wait_exit(Duration::from_secs(20)).code(), Some(0), "{}", d.daemon_log());
}
