//! [Service] Type=: oneshot (several ExecStart=, RemainAfterExit=), exec,
//! notify (READY=1, STATUS=, WATCHDOG=1 on NOTIFY_SOCKET) and forking
//! (PIDFile=), exit-status lists and Requisite=, with real processes; and
//! real Debian daemons run from their own shipped unit files.

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

/// A raw sd_notify client (a child of the unit's shell, so its units say
/// `NotifyAccess=all`: systemd's default `main` ignores it): sends its arguments, one per line, to
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
        "[Service]\nType=notify\nNotifyAccess=all\n\
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
        "[Service]\nType=notify\nNotifyAccess=all\nWatchdogSec=1s\nRestart=on-failure\nRestartSec=100ms\n\
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

/// A shipped unit file, read as it is: the tests must not adapt it.
fn shipped(name: &str) -> String {
    let path = format!("/lib/systemd/system/{name}");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e} (.ci/run installs the package)"))
}

fn tool(name: &str) -> String {
    let out = std::process::Command::new("sh").arg("-c").arg(format!("command -v {name}")).output().unwrap();
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(out.status.success() && !path.is_empty(), "{name} is missing (.ci/run installs it)");
    path
}

/// Debian's redis-server.service (Type=notify, User=redis, RuntimeDirectory=,
/// ProtectSystem=strict, ...) unchanged: redis tells READY=1 itself.
#[test]
fn debian_redis_server_runs_from_its_own_notify_unit_file_requiring_a_remaining_oneshot() {
    let redis_cli = tool("redis-cli");
    let unit = shipped("redis-server.service");
    assert!(unit.contains("Type=notify"), "{unit}");
    // A oneshot with RemainAfterExit=yes that redis Requires=, added as systemd would without
    // editing the unit: a link in `redis-server.service.requires/`.
    let dir = tempfile::tempdir().unwrap();
    let setup = format!(
        "[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/sh -c 'touch {}/set-up'\n",
        dir.path().display()
    );
    let d = Daemon::start(&[("redis-server.service", &unit), ("redis-setup.service", &setup)]);
    let stock = d.dir.path().join("stock");
    std::fs::create_dir_all(stock.join("redis-server.service.requires")).unwrap();
    std::os::unix::fs::symlink(
        "../redis-setup.service",
        stock.join("redis-server.service.requires/redis-setup.service"),
    )
    .unwrap();
    assert_eq!(d.post("/api/v1/reload").0, 200);
    let (code, body) = d.post("/api/v1/units/redis-server/start");
    assert_eq!(code, 200, "{body}");
    let u = d.wait_status("redis-server", "started");
    let s = d.wait_status("redis-setup", "started");
    assert!(s["pid"].is_null() && dir.path().join("set-up").exists(), "the oneshot ran and remains: {s}");
    let pid = u["pid"].as_i64().expect("a main pid");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap().split_whitespace().nth(1).unwrap().to_string();
    let redis_uid =
        String::from_utf8(std::process::Command::new("id").args(["-u", "redis"]).output().unwrap().stdout).unwrap();
    assert_eq!(uid, redis_uid.trim(), "User=redis");
    // Its SystemCallFilter=@system-service less @privileged @resources, as a seccomp filter.
    assert!(unit.contains("SystemCallFilter=@system-service"), "{unit}");
    assert!(status.lines().any(|l| l.split_whitespace().eq(["Seccomp:", "2"])), "{status}");
    let out = std::process::Command::new(&redis_cli).arg("ping").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "PONG");
    // Its namespace keys are applied, not ignored (tests/namespaces.rs checks each).
    let log = d.unit_log("redis-server");
    assert!(!log.contains("not applied"), "{log}");
    let uid_map = std::fs::read_to_string(format!("/proc/{pid}/uid_map")).unwrap();
    assert_eq!(uid_map.lines().count(), 2, "PrivateUsers=: root and redis: {uid_map}");
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let top = |point: &str| mountinfo.lines().rfind(|l| l.split_whitespace().nth(4) == Some(point)).unwrap_or("");
    assert!(top("/dev").contains(" - tmpfs "), "PrivateDevices=: {mountinfo}");
    assert!(top("/proc").contains("hidepid=invisible"), "ProtectProc=invisible: {mountinfo}");
    let usr_lib = top("/usr/lib");
    assert!(top("/").contains("noexec") && usr_lib.contains(" - ") && !usr_lib.contains("noexec"), "{mountinfo}");
    // ProtectKernelTunables=, ProtectControlGroups=, ProtectHostname= (tests/protect.rs checks each key).
    let ro = |point: &str| top(point).split_whitespace().nth(5).is_some_and(|o| o.split(',').any(|o| o == "ro"));
    assert!(ro("/sys") && ro("/proc/sys") && ro("/sys/fs/cgroup"), "{mountinfo}");
    let uts = |pid: &dyn std::fmt::Display| std::fs::read_link(format!("/proc/{pid}/ns/uts")).unwrap();
    assert_ne!(uts(&pid), uts(&"self"), "ProtectHostname=: its own UTS namespace");
    // Stopping what it requires takes redis down with it.
    d.post("/api/v1/units/redis-setup/stop");
    d.wait_status("redis-setup", "stopped");
    let u = d.wait_status("redis-server", "stopped");
    assert!(u["pid"].is_null(), "{u}");
    assert!(std::fs::metadata(format!("/proc/{pid}")).is_err(), "redis-server is still running");
}

/// Debian's nginx.service (Type=forking, PIDFile=/run/nginx.pid,
/// ExecStartPre=, ExecStop=-start-stop-daemon, KillMode=mixed) unchanged.
#[test]
fn debian_nginx_runs_from_its_own_forking_unit_file_with_its_pid_file() {
    let unit = shipped("nginx.service");
    assert!(unit.contains("Type=forking") && unit.contains("PIDFile=/run/nginx.pid"), "{unit}");
    let d = Daemon::start(&[("nginx.service", &unit)]);
    let (code, body) = d.post("/api/v1/units/nginx/start");
    assert_eq!(code, 200, "{body}");
    let u = d.wait_status("nginx", "started");
    let pid = u["pid"].as_i64().expect("the main pid");
    // The main pid is the master the starter forked, as its PID file says, not the starter.
    let file = std::fs::read_to_string("/run/nginx.pid").unwrap();
    assert_eq!(file.trim(), pid.to_string());
    let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(cmdline.starts_with("nginx: master process"), "{cmdline}");
    assert!(d.unit_log("nginx").contains(&format!("main pid {pid} (forked)")), "{}", d.unit_log("nginx"));
    // It serves (the Debian default site on port 80).
    let mut stream = std::net::TcpStream::connect("127.0.0.1:80").expect("nginx listens on 80");
    use std::io::{Read, Write};
    stream.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // The master dying by itself ends the run like a main process's exit.
    d.post("/api/v1/units/nginx/stop");
    let u = d.wait_status("nginx", "stopped");
    assert_eq!(u["last_exit"], "exited with code 0", "{u}");
    assert!(std::fs::metadata(format!("/proc/{pid}")).is_err(), "the nginx master is still running");
    assert!(!std::path::Path::new("/run/nginx.pid").exists(), "the PID file is removed once the unit is down");
}

/// systemd's rule: a PID file not owned by root naming a process outside the unit is not believed.
#[test]
fn a_pid_file_owned_by_another_user_naming_a_foreign_process_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut foreign = std::process::Command::new("sleep").arg("1000").spawn().unwrap();
    let pid_file = dir.path().join("evil.pid");
    let unit = format!(
        "[Service]\nType=forking\nPIDFile={f}\n\
         ExecStart=/bin/sh -c 'echo {pid} > {f}; chown nobody {f}'\n",
        f = pid_file.display(),
        pid = foreign.id()
    );
    // The same, with a daemon of its own: believed, though the file is not root's.
    let good_file = dir.path().join("good.pid");
    let good = format!(
        "[Service]\nType=forking\nPIDFile={f}\n\
         ExecStart=/bin/sh -c 'sleep 1000 & echo $! > {f}; chown nobody {f}'\n",
        f = good_file.display()
    );
    let d = Daemon::start(&[("evil.service", &unit), ("good.service", &good)]);
    let u = d.wait_status("evil", "error");
    let detail = u["detail"].as_str().unwrap_or("");
    assert!(detail.contains("not a process of this unit: refused"), "{u}");
    assert!(std::fs::metadata(format!("/proc/{}", foreign.id())).is_ok(), "the foreign process was touched");
    let _ = foreign.kill();
    let _ = foreign.wait();
    let g = d.wait_status("good", "started");
    assert_eq!(
        g["pid"].as_i64().map(|p| p.to_string()),
        Some(std::fs::read_to_string(&good_file).unwrap().trim().into())
    );
}

#[test]
fn exit_status_lists_decide_clean_ends_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let count = dir.path().join("count");
    let c = count.display();
    let ok3 = "[Service]\nRestart=on-failure\nSuccessExitStatus=3\nExecStart=/bin/sh -c 'exit 3'\n";
    // Restart=no, yet exit 7 is restarted (RestartForceExitStatus=): twice, then it exits 4.
    let forced = format!(
        "[Service]\nRestart=no\nRestartSec=100ms\nRestartForceExitStatus=7\n\
         ExecStart=/bin/sh -c 'echo x >> {c}; [ $(wc -l < {c}) -ge 3 ] && exit 4; exit 7'\n"
    );
    let d = Daemon::start(&[("ok3.service", ok3), ("forced.service", &forced)]);
    let u = d.wait_status("ok3", "stopped");
    assert_eq!((u["restarts"].as_u64(), u["detail"].as_str()), (Some(0), Some("exited with code 3")), "{u}");
    let f = d.wait_status("forced", "error");
    assert_eq!((f["restarts"].as_u64(), f["detail"].as_str()), (Some(2), Some("exited with code 4")), "{f}");
}

#[test]
fn requisite_fails_a_start_at_once_when_the_other_unit_is_not_active() {
    let app = "[Unit]\nRequisite=db.service\n[Service]\nExecStart=/bin/sleep 1000\n";
    let db = "[Service]\nExecStart=/bin/sleep 1000\n[Install]\nWantedBy=multi-user.target\n";
    let d = Daemon::start(&[("app.service", app), ("db.service", db)]);
    let (code, _) = d.post("/api/v1/units/app/start");
    assert_eq!(code, 200);
    let u = d.wait_status("app", "failed");
    assert_eq!(u["detail"], "requisite db is not active", "{u}");
    assert_eq!(d.unit("db")["status"], "stopped", "Requisite= does not start it");
    d.post("/api/v1/units/db/start");
    d.wait_status("db", "started");
    d.post("/api/v1/units/app/start");
    d.wait_status("app", "started");
}

#[test]
fn systemd_notify_ready_makes_a_notify_unit_started() {
    let systemd_notify = tool("systemd-notify");
    let unit = format!(
        "[Service]\nType=notify\nNotifyAccess=all\n\
         ExecStart=/bin/sh -c '{systemd_notify} --ready --status=\"warmed up\"; exec sleep 1000'\n"
    );
    let d = Daemon::start(&[("sn.service", &unit)]);
    let u = d.wait_status("sn", "started");
    assert_eq!(u["detail"], "warmed up", "{u}");
}

#[test]
fn notify_access_main_ignores_a_child_and_all_takes_it() {
    let dir = tempfile::tempdir().unwrap();
    let notify = notifier(dir.path());
    let from_child = |access: &str| {
        format!("[Service]\nType=notify\n{access}ExecStart=/bin/sh -c '{notify} READY=1; exec sleep 1000'\n")
    };
    let d =
        Daemon::start(&[("child.service", &from_child("")), ("childall.service", &from_child("NotifyAccess=all\n"))]);
    d.wait_status("childall", "started");
    // (The main process's own READY=1 under the default: redis-server's test.)
    d.wait_until("the refusal in the daemon's log", |d| d.daemon_log().contains("NotifyAccess=main allows it not"));
    assert_eq!(d.unit("child")["status"], "starting", "{}", d.unit("child"));
}

#[test]
fn exec_condition_exec_start_post_and_exec_stop_post_run_in_systemd_order() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let unit = format!(
        "[Service]\nExecCondition=/bin/sh -c 'echo condition >> {d}/order'\n\
         ExecStartPre=/bin/sh -c 'echo pre >> {d}/order'\n\
         ExecStart=/bin/sh -c 'echo main >> {d}/order; exec sleep 1000'\n\
         ExecStartPost=/bin/sh -c 'echo post $MAINPID >> {d}/order'\n\
         ExecStopPost=/bin/sh -c 'echo stop-post $SERVICE_RESULT >> {d}/order'\n"
    );
    let skipped = format!("[Service]\nExecCondition=/bin/sh -c 'exit 1'\nExecStart=/bin/sh -c 'touch {d}/ran'\n");
    let daemon = Daemon::start(&[("ordered.service", &unit), ("skipped.service", &skipped)]);
    let u = daemon.wait_status("ordered", "started");
    let pid = u["pid"].as_i64().unwrap();
    let order = std::fs::read_to_string(dir.path().join("order")).unwrap();
    assert_eq!(order, format!("condition\npre\nmain\npost {pid}\n"));
    daemon.post("/api/v1/units/ordered/stop");
    daemon.wait_status("ordered", "stopped");
    let order = std::fs::read_to_string(dir.path().join("order")).unwrap();
    assert!(order.ends_with("stop-post success\n"), "{order}");
    let s = daemon.wait_status("skipped", "stopped");
    assert_eq!(s["detail"], "skipped: ExecCondition 1 exited with code 1", "{s}");
    assert!(!dir.path().join("ran").exists());
}

#[test]
fn command_prefixes_set_argv0_keep_variables_and_lift_the_user() {
    let dir = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let d = dir.path().display().to_string();
    let unit = format!(
        "[Service]\nUser=nobody\n\
         ExecStartPre=+/bin/sh -c 'id -u > {d}/plus'\n\
         ExecStartPre=!/bin/sh -c 'id -u > {d}/bang'\n\
         ExecStartPre=/bin/sh -c 'id -u > {d}/plain'\n\
         ExecStartPre=:/bin/sh -c 'printf %%s \"$1\" > {d}/literal' x $HOME\n\
         ExecStart=@/bin/sleep my-sleeper 1000\n"
    );
    let daemon = Daemon::start(&[("prefixed.service", &unit)]);
    let u = daemon.wait_status("prefixed", "started");
    let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap().trim().to_string();
    let nobody =
        String::from_utf8(std::process::Command::new("id").args(["-u", "nobody"]).output().unwrap().stdout).unwrap();
    assert_eq!((read("plus"), read("bang"), read("plain")), ("0".into(), "0".into(), nobody.trim().to_string()));
    assert_eq!(read("literal"), "$HOME", "the ':' prefix leaves $HOME to the command");
    let pid = u["pid"].as_i64().unwrap();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(cmdline.starts_with(b"my-sleeper\0"), "{:?}", String::from_utf8_lossy(&cmdline));
}
