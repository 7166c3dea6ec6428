//! Issue 14's last keys through the real daemon and CLI: `Alias=`,
//! `GuessMainPID=` (a forking daemon without `PIDFile=`), `StopWhenUnneeded=`,
//! reload propagation, and the conditions on the machine
//! (`ConditionFirstBoot=`, `ConditionNeedsUpdate=`, `ConditionCredential=`).

use std::process::Command;

use crate::harness::{Daemon, Options, BIN};

fn out(o: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn an_alias_addresses_the_unit_in_the_cli_the_api_and_dependencies() {
    let ssh = "[Service]\nExecStart=/bin/sleep 320\n[Install]\nAlias=sshd.service\n";
    let web = "[Unit]\nRequires=sshd.service\nAfter=sshd.service\n[Service]\nExecStart=/bin/sleep 321\n";
    let d = Daemon::start(&[("ssh.service", ssh), ("web.service", web)]);
    d.wait_status("web", "started");
    // The API answers for the alias with the unit itself; the list shows the real name only.
    let by_alias = d.unit("sshd");
    assert_eq!(by_alias["name"], "ssh", "{by_alias}");
    assert_eq!(by_alias["status"], "started");
    let (_, list) = d.get("/api/v1/units");
    let names: Vec<&str> = list.as_array().unwrap().iter().filter_map(|u| u["name"].as_str()).collect();
    assert_eq!(names, ["ssh", "web"]);

    let status = d.cli(&["status", "sshd"]);
    assert_eq!(status.status.code(), Some(0), "{}", out(&status));
    assert!(out(&status).contains("ssh"), "{}", out(&status));
    let cat = d.cli(&["cat", "sshd"]);
    assert!(out(&cat).contains("ssh.service\n[Service]"), "{}", out(&cat));
    let show = d.cli(&["show", "sshd", "-p", "Names"]);
    assert_eq!(out(&show).trim(), "Names=ssh.service sshd.service");

    // Stopping the alias stops the unit, and web, which requires it under the alias.
    let stopped = d.cli(&["stop", "sshd"]);
    assert_eq!(stopped.status.code(), Some(0), "{}", out(&stopped));
    d.wait_status("ssh", "stopped");
    d.wait_status("web", "stopped");
    let started = d.cli(&["start", "sshd", "--wait", "--timeout", "60"]);
    assert_eq!(started.status.code(), Some(0), "{}", out(&started));
    assert_eq!(d.unit("ssh")["status"], "started");

    // An alias taken by another unit is an error of `aikore check`, at the Alias= line.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ssh.service"), ssh).unwrap();
    std::fs::write(dir.path().join("web.service"), web).unwrap();
    std::fs::write(dir.path().join("zz.service"), "[Service]\nExecStart=/bin/true\n[Install]\nAlias=sshd.service\n")
        .unwrap();
    let check = Command::new(BIN)
        .arg("check")
        .args(["ssh.service", "web.service", "zz.service"].map(|f| dir.path().join(f)))
        .output()
        .unwrap();
    assert_ne!(check.status.code(), Some(0), "{}", out(&check));
    assert!(
        out(&check).contains("zz.service:4: Alias=sshd.service: 'sshd' is already an alias of 'ssh'"),
        "{}",
        out(&check)
    );
}

#[test]
fn a_forking_daemon_without_a_pid_file_gets_its_main_pid_guessed_or_none() {
    // One process left: that is the main one (GuessMainPID=yes, the default).
    let one = "[Service]\nType=forking\nExecStart=/bin/sh -c 'sleep 322 & exit 0'\n";
    // Two left: no main pid; active while they last, as systemd runs it.
    let two = "[Service]\nType=forking\nExecStart=/bin/sh -c 'sleep 323 & sleep 324 & exit 0'\n";
    // GuessMainPID=no: no main pid even with one process.
    let unguessed = "[Service]\nType=forking\nGuessMainPID=no\nExecStart=/bin/sh -c 'sleep 325 & exit 0'\n";
    // A daemon with a worker of its own: the worker's parent is the daemon, not aikore, so the daemon is guessed.
    let workers = "[Service]\nType=forking\nExecStart=/bin/sh -c 'sh -c \"sleep 333 & exec sleep 334\" & exit 0'\n";
    let d = Daemon::start(&[
        ("one.service", one),
        ("two.service", two),
        ("unguessed.service", unguessed),
        ("workers.service", workers),
    ]);
    let one = d.wait_status("one", "started");
    let pid = one["pid"].as_i64().expect("a guessed main pid") as i32;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    assert_eq!(String::from_utf8_lossy(&cmdline), "sleep\x00322\x00", "the daemon the starter left");
    let workers = d.wait_status("workers", "started");
    let pid = workers["pid"].as_i64().expect("a guessed main pid") as i32;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    assert_eq!(String::from_utf8_lossy(&cmdline), "sleep\x00334\x00", "the daemon, not its worker");
    let two = d.wait_status("two", "started");
    assert!(two["pid"].is_null(), "{two}");
    let unguessed = d.wait_status("unguessed", "started");
    assert!(unguessed["pid"].is_null(), "{unguessed}");
    assert!(d.unit_log("unguessed").contains("GuessMainPID=no"), "{}", d.unit_log("unguessed"));

    // Its last process gone, a unit without a main pid is down (cleanly).
    let killed = d.cli(&["kill", "unguessed", "-s", "KILL"]);
    assert_eq!(killed.status.code(), Some(0), "{}", out(&killed));
    d.wait_status("unguessed", "stopped");
    // A stop reaches every process of one without a main pid.
    let stopped = d.cli(&["stop", "two"]);
    assert_eq!(stopped.status.code(), Some(0), "{}", out(&stopped));
    d.wait_status("two", "stopped");
}

#[test]
fn stop_when_unneeded_and_reload_propagation_act_through_the_daemon() {
    // Not enabled, so it runs only while something needs it.
    let helper = "[Unit]\nStopWhenUnneeded=yes\n[Service]\nExecStart=/bin/sleep 326\n\
                  [Install]\nWantedBy=multi-user.target\n";
    let app = "[Unit]\nWants=helper.service\nAfter=helper.service\n[Service]\nExecStart=/bin/sleep 327\n";
    let a = "[Service]\nExecStart=/bin/sleep 328\nExecReload=/bin/echo reloaded-a\n";
    let b = "[Unit]\nReloadPropagatedFrom=a.service\n[Service]\nExecStart=/bin/sleep 329\n\
             ExecReload=/bin/echo reloaded-b\n";
    let d = Daemon::start(&[("helper.service", helper), ("app.service", app), ("a.service", a), ("b.service", b)]);
    d.wait_status("app", "started");
    d.wait_status("helper", "started");
    let stopped = d.cli(&["stop", "app"]);
    assert_eq!(stopped.status.code(), Some(0), "{}", out(&stopped));
    d.wait_status("helper", "stopped");
    assert!(d.unit_log("helper").contains("StopWhenUnneeded=yes"), "{}", d.unit_log("helper"));

    d.wait_status("a", "started");
    d.wait_status("b", "started");
    let (status, body) = d.post("/api/v1/units/a/reload");
    assert_eq!(status, 200, "{body}");
    d.wait_until("b reloaded with a", |d| d.unit_output("b").contains("reloaded-b"));
    // Each log is captured by its own task: a's line may land after b's.
    d.wait_until("a's own reload line", |d| d.unit_output("a").contains("reloaded-a"));
    // Not the other way round.
    let (status, body) = d.post("/api/v1/units/b/reload");
    assert_eq!(status, 200, "{body}");
    d.wait_until("b reloaded twice", |d| d.unit_output("b").matches("reloaded-b").count() == 2);
    assert_eq!(d.unit_output("a").matches("reloaded-a").count(), 1);
}

#[test]
fn first_boot_needs_update_and_credential_conditions_decide_from_files() {
    let dir = tempfile::tempdir().unwrap();
    let (pending, updated) = (dir.path().join("pending"), dir.path().join("updated"));
    std::fs::create_dir(&pending).unwrap();
    std::fs::create_dir(&updated).unwrap();
    // Newer than /usr: nothing to update there. No .updated at all: an update is pending.
    let stamp = updated.join(".updated");
    std::fs::write(&stamp, "").unwrap();
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(24 * 3600);
    std::fs::File::options().write(true).open(&stamp).unwrap().set_modified(later).unwrap();
    let creds = dir.path().join("creds");
    std::fs::create_dir(&creds).unwrap();
    std::fs::write(creds.join("db-password"), "s3cret").unwrap();

    let oneshot = |condition: String| {
        format!("[Unit]\n{condition}\n[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/true\n")
    };
    let units = [
        ("update-pending.service", oneshot(format!("ConditionNeedsUpdate={}", pending.display()))),
        ("update-done.service", oneshot(format!("ConditionNeedsUpdate={}", updated.display()))),
        ("cred-given.service", oneshot("ConditionCredential=db-password".into())),
        ("cred-missing.service", oneshot("ConditionCredential=api-key".into())),
        ("cred-asserted.service", oneshot("AssertCredential=api-key".into())),
        ("first-yes.service", oneshot("ConditionFirstBoot=yes".into())),
        ("first-no.service", oneshot("ConditionFirstBoot=no".into())),
    ];
    let units: Vec<(&str, &str)> = units.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let mut options = Options::default();
    // The manager's credentials, as a container runtime passes them to PID 1.
    options.env.push(("CREDENTIALS_DIRECTORY".into(), creds.display().to_string()));
    let d = Daemon::start_with(&units, options);

    d.wait_status("update-pending", "started");
    let skipped = d.wait_status("update-done", "stopped");
    assert!(skipped["detail"].as_str().is_some_and(|s| s.starts_with("skipped: ConditionNeedsUpdate=")), "{skipped}");
    d.wait_status("cred-given", "started");
    let skipped = d.wait_status("cred-missing", "stopped");
    assert_eq!(skipped["detail"], "skipped: ConditionCredential=api-key not met");
    let failed = d.wait_status("cred-asserted", "failed");
    assert!(
        failed["detail"].as_str().is_some_and(|s| s.contains("assertion failed: AssertCredential=api-key")),
        "{failed}"
    );

    // systemd's rule, read here as the daemon reads it: an uninitialized machine ID (or systemd's marker).
    let machine_id = std::fs::read_to_string("/etc/machine-id").unwrap_or_default();
    let first = std::path::Path::new("/run/systemd/first-boot").exists()
        || machine_id.trim().is_empty()
        || machine_id.trim() == "uninitialized";
    let (runs, skips) = if first { ("first-yes", "first-no") } else { ("first-no", "first-yes") };
    d.wait_status(runs, "started");
    let skipped = d.wait_status(skips, "stopped");
    assert!(skipped["detail"].as_str().is_some_and(|s| s.contains("ConditionFirstBoot=")), "{skipped}");
}

#[test]
fn success_action_exit_status_is_the_daemons_exit_status() {
    let batch = "[Unit]\nSuccessAction=exit\nSuccessActionExitStatus=7\n[Service]\nExecStart=/bin/sh -c 'sleep 0.5'\n";
    let other = "[Service]\nExecStart=/bin/sleep 331\n";
    let mut d = Daemon::start(&[("batch.service", batch), ("other.service", other)]);
    let status = d.wait_exit(std::time::Duration::from_secs(60));
    assert_eq!(status.code(), Some(7), "{}", d.daemon_log());
    assert!(d.marked_processes().is_empty(), "every unit was stopped: {:?}", d.marked_processes());
}

#[test]
fn start_limit_action_ends_the_container() {
    let crashy = "[Unit]\nStartLimitBurst=2\nStartLimitIntervalSec=1min\nStartLimitAction=exit\n\
                  [Service]\nExecStart=/bin/sh -c 'exit 1'\nRestart=on-failure\nRestartSec=100ms\n";
    let mut d = Daemon::start(&[("crashy.service", crashy)]);
    let status = d.wait_exit(std::time::Duration::from_secs(60));
    assert!(status.code().is_some(), "the daemon ended by its own shutdown, not a signal");
    assert!(d.daemon_log().contains("crashy hit its start limit: StartLimitAction=exit"), "{}", d.daemon_log());
}

#[test]
fn restart_mode_normal_lets_on_failure_see_each_crash() {
    // RestartMode=normal: every crash passes through error, so OnFailure= runs though the unit restarts.
    let crashy = "[Unit]\nOnFailure=alert.service\n[Service]\nExecStart=/bin/sh -c 'sleep 0.3; exit 3'\n\
                  Restart=on-failure\nRestartSec=5s\nRestartMode=normal\n";
    // The default (direct, as systemd 252): a restart is no failure for OnFailure=.
    let direct = "[Unit]\nOnFailure=alert2.service\n[Service]\nExecStart=/bin/sh -c 'sleep 0.3; exit 3'\n\
                  Restart=on-failure\nRestartSec=5s\n";
    let alert = "[Service]\nExecStart=/bin/sleep 332\n[Install]\nWantedBy=multi-user.target\n";
    let d = Daemon::start(&[
        ("crashy.service", crashy),
        ("direct.service", direct),
        ("alert.service", alert),
        ("alert2.service", alert),
    ]);
    d.wait_status("alert", "started");
    d.wait_until("direct restarting", |d| d.unit("direct")["restarts"].as_u64() >= Some(1));
    assert_eq!(d.unit("alert2")["status"], "stopped", "no OnFailure= for a restart in direct mode");
}

/// The pids of live processes whose command line is exactly `argv`.
fn processes(argv: &[&str]) -> Vec<i32> {
    let want = argv.join("\0") + "\0";
    let entries = std::fs::read_dir("/proc").unwrap().flatten();
    let pids = entries.filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok());
    pids.filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == want.as_bytes())).collect()
}

#[test]
fn kill_mode_process_leaves_what_the_main_process_started_running_across_a_restart() {
    // sshd's and cron's habit: a restart must not end the sessions or jobs they started.
    let unit = "[Service]\nKillMode=process\nExecStart=/bin/sh -c 'sleep 31337 & exec sleep 31338'\n";
    let d = Daemon::start(&[("sessions.service", unit)]);
    d.wait_status("sessions", "started");
    d.wait_until("the session process", |_| processes(&["sleep", "31337"]).len() == 1);
    let session = processes(&["sleep", "31337"]);
    let first = d.unit("sessions")["pid"].as_i64().unwrap();
    let restarted = d.cli(&["restart", "sessions", "--wait", "--timeout", "60"]);
    assert_eq!(restarted.status.code(), Some(0), "{}", out(&restarted));
    let second = d.unit("sessions")["pid"].as_i64().unwrap();
    assert_ne!(first, second, "a new main process");
    assert!(!std::path::Path::new(&format!("/proc/{first}")).exists(), "the old main process is gone");
    assert!(session.iter().all(|p| std::path::Path::new(&format!("/proc/{p}")).exists()), "the session was killed");
    // The new run started one of its own; both stay after a stop.
    let stopped = d.cli(&["stop", "sessions", "--wait", "--timeout", "60"]);
    assert_eq!(stopped.status.code(), Some(0), "{}", out(&stopped));
    assert_eq!(d.unit("sessions")["status"], "stopped");
    let left = processes(&["sleep", "31337"]);
    assert_eq!(left.len(), 2, "{left:?}");
    for pid in left {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
}
