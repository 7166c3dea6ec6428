//! Issue 14 through the real daemon and CLI: template instances, the
//! systemctl habits (`status`, `cat`, `show`, `list-dependencies`,
//! `is-active`, `is-failed`, `kill`, `reset-failed`, `daemon-reload`) and
//! `enable`/`disable` deciding what starts at boot.

use crate::harness::{Daemon, Options};

fn out(o: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

const ECHO: &str =
    "[Unit]\nDescription=Echo %i\n[Service]\nExecStart=/bin/sh -c 'echo \"i=%i I=%I n=%n p=%p\"; exec sleep 300'\n";

#[test]
fn template_instances_started_by_name_each_see_their_own_instance() {
    let d = Daemon::start(&[("echo@.service", ECHO)]);
    let (status, body) = d.get("/api/v1/units");
    assert_eq!(status, 200);
    assert!(body.as_array().unwrap().iter().all(|u| u["name"] != "echo@"), "a template runs nothing: {body}");

    // One through the CLI, one through the API.
    let started = d.cli(&["start", "echo@a", "--wait", "--timeout", "60"]);
    assert_eq!(started.status.code(), Some(0), "{}", out(&started));
    // `\` percent-encoded in the path, as the CLI does it.
    let (status, body) = d.post("/api/v1/units/echo@b%5Cx2dc/start");
    assert_eq!(status, 200, "{body}");
    d.wait_status("echo@b%5Cx2dc", "started");
    d.wait_until("both instances printed", |d| {
        d.unit_output("echo@a").contains("i=a") && d.unit_output("echo@b\\x2dc").contains("i=b")
    });
    assert_eq!(d.unit_output("echo@a").trim(), "i=a I=a n=echo@a.service p=echo");
    assert_eq!(d.unit_output("echo@b\\x2dc").trim(), "i=b\\x2dc I=b-c n=echo@b\\x2dc.service p=echo");
    assert_eq!(d.unit("echo@a")["description"], "Echo a");

    // The instances stay loaded across a reload (`daemon-reload` is its alias) and cat shows the template.
    let reloaded = d.cli(&["daemon-reload"]);
    assert_eq!(reloaded.status.code(), Some(0), "{}", out(&reloaded));
    assert_eq!(d.unit("echo@a")["status"], "started");
    let cat = d.cli(&["cat", "echo@a"]);
    assert!(out(&cat).starts_with("# ") && out(&cat).contains("echo@.service\n[Unit]"), "{}", out(&cat));
    // A template's instance that has no template is still 404.
    let missing = d.cli(&["start", "nope@x"]);
    assert_eq!(missing.status.code(), Some(4), "{}", out(&missing));
}

#[test]
fn systemctl_habits_in_the_cli() {
    let web = "[Unit]\nDescription=Web\nRequires=db.service\nWants=ghost.service\nAfter=db.service\n\
               [Service]\nExecStart=/bin/sh -c 'sleep 300 & exec sleep 301'\n";
    let db = "[Service]\nExecStart=/bin/sleep 302\n";
    let d = Daemon::start(&[("web.service", web), ("db.service", db)]);
    d.wait_status("web", "started");

    let status = d.cli(&["status", "web"]);
    let text = out(&status);
    assert_eq!(status.status.code(), Some(0), "{text}");
    assert!(text.contains("  tasks:     2\n"), "{text}");
    assert!(text.contains("  memory:    "), "{text}");
    assert!(text.contains("  cpu:       "), "{text}");
    assert!(text.contains("  processes:\n    └─") && text.contains(" sleep 301\n      └─"), "{text}");
    assert!(text.contains(" sleep 300"), "{text}");

    let active = d.cli(&["is-active", "web"]);
    assert_eq!((active.status.code(), out(&active).as_str()), (Some(0), "active\n"));
    let failed = d.cli(&["is-failed", "web"]);
    assert_eq!((failed.status.code(), out(&failed).as_str()), (Some(1), "active\n"));

    let show = d.cli(&["show", "web", "-p", "ActiveState,Requires", "-p", "Id"]);
    assert_eq!(out(&show), "Id=web.service\nActiveState=active\nRequires=db.service\n");
    let show_all = out(&d.cli(&["show", "web"]));
    for line in ["SubState=started\n", "Wants=ghost.service\n", "UnitFileState=static\n", "Type=simple\n"] {
        assert!(show_all.contains(line), "{line} missing in:\n{show_all}");
    }

    let deps = d.cli(&["list-dependencies", "web"]);
    assert_eq!(out(&deps), "web\n├─db (Requires)\n└─ghost (Wants, not loaded)\n");

    let cat = out(&d.cli(&["cat", "db"]));
    assert!(cat.starts_with("# /") && cat.ends_with(db), "{cat}");

    // kill -s KILL: the unit dies as if killed from outside (Restart=no: error).
    let killed = d.cli(&["kill", "db", "-s", "KILL"]);
    assert_eq!(killed.status.code(), Some(0), "{}", out(&killed));
    d.wait_status("db", "error");
    let failed = d.cli(&["is-failed", "db"]);
    assert_eq!((failed.status.code(), out(&failed).as_str()), (Some(0), "failed\n"));
    let reset = d.cli(&["reset-failed", "db"]);
    assert_eq!(reset.status.code(), Some(0), "{}", out(&reset));
    assert_eq!(d.unit("db")["status"], "stopped");
    let active = d.cli(&["is-active", "db"]);
    assert_eq!((active.status.code(), out(&active).as_str()), (Some(3), "inactive\n"));
    let status = out(&d.cli(&["status", "db"]));
    assert!(status.contains("status:    stopped") && !status.contains("tasks:"), "{status}");

    let bad = d.cli(&["kill", "web", "-s", "SIGNOPE"]);
    assert_eq!(bad.status.code(), Some(1), "{}", out(&bad));
    assert!(out(&bad).contains("unknown signal name"), "{}", out(&bad));
    let unknown = d.cli(&["show", "ghost"]);
    assert_eq!(unknown.status.code(), Some(4), "{}", out(&unknown));
}

#[test]
fn enable_and_disable_decide_what_starts_at_boot() {
    let boot = "[Service]\nExecStart=/bin/sleep 303\n[Install]\nWantedBy=multi-user.target\n";
    let plain = "[Service]\nExecStart=/bin/sleep 304\n";
    let mut d = Daemon::start(&[("boot.service", boot), ("plain.service", plain)]);
    d.wait_status("plain", "started");
    assert_eq!(d.unit("boot")["status"], "stopped", "WantedBy= waits for enable");

    let enabled = d.cli(&["enable", "boot"]);
    let text = out(&enabled);
    assert_eq!(enabled.status.code(), Some(0), "{text}");
    let link = d.data_dir.join("units/multi-user.target.wants/boot.service");
    assert!(text.starts_with(&format!("Created {}", link.display())), "{text}");
    assert!(link.symlink_metadata().is_ok());
    assert_eq!(out(&d.cli(&["show", "boot", "-p", "UnitFileState"])), "UnitFileState=enabled\n");
    assert_eq!(d.unit("boot")["status"], "stopped", "enable without --now starts nothing");

    d.terminate();
    d.spawn(Options::default());
    d.wait_status("boot", "started");

    let disabled = d.cli(&["disable", "boot"]);
    assert_eq!(disabled.status.code(), Some(0), "{}", out(&disabled));
    assert!(out(&disabled).starts_with("Removed "), "{}", out(&disabled));
    assert!(link.symlink_metadata().is_err());
    assert_eq!(out(&d.cli(&["show", "boot", "-p", "UnitFileState"])), "UnitFileState=disabled\n");
    let static_unit = d.cli(&["enable", "plain"]);
    assert_eq!(static_unit.status.code(), Some(1), "{}", out(&static_unit));
    assert!(out(&static_unit).contains("it is static"), "{}", out(&static_unit));

    d.terminate();
    d.spawn(Options::default());
    d.wait_status("plain", "started");
    assert_eq!(d.unit("boot")["status"], "stopped", "disabled: not started at boot");
}

#[test]
fn unit_relations_act_through_the_daemon() {
    // [Install] WantedBy= keeps a unit from starting at boot until enabled: only what a relation starts runs.
    let later = "[Install]\nWantedBy=multi-user.target\n";
    let job = "[Unit]\nOnFailure=alert.service\n[Service]\nExecStart=/bin/sh -c 'exit 3'\n".to_string();
    let alert = format!("[Service]\nExecStart=/bin/sleep 310\n{later}");
    let db = "[Service]\nExecStart=/bin/sleep 311\n";
    let app = "[Unit]\nBindsTo=db.service\nAfter=db.service\n[Service]\nExecStart=/bin/sleep 312\n";
    let side = "[Unit]\nPartOf=db.service\n[Service]\nExecStart=/bin/sleep 313\n";
    let solo = format!("[Unit]\nConflicts=db.service\n[Service]\nExecStart=/bin/sleep 314\n{later}");
    let keeper = "[Unit]\nUpholds=kept.service\n[Service]\nExecStart=/bin/sleep 315\n";
    let kept = format!("[Service]\nExecStart=/bin/sleep 316\n{later}");
    let d = Daemon::start(&[
        ("job.service", &job),
        ("alert.service", &alert),
        ("db.service", db),
        ("app.service", app),
        ("side.service", side),
        ("solo.service", &solo),
        ("keeper.service", keeper),
        ("kept.service", &kept),
    ]);
    // OnFailure=: job fails at boot, alert starts.
    d.wait_status("job", "error");
    d.wait_status("alert", "started");
    // Upholds=: keeper starts kept, and starts it again after a stop.
    let first = d.wait_status("kept", "started")["pid"].clone();
    let stopped = d.cli(&["stop", "kept"]);
    assert_eq!(stopped.status.code(), Some(0), "{}", out(&stopped));
    d.wait_until("kept started again by keeper", |d| {
        let u = d.unit("kept");
        u["status"] == "started" && u["pid"] != first
    });
    // BindsTo= and PartOf=: db going down takes app and side with it.
    d.wait_status("app", "started");
    d.wait_status("side", "started");
    let stopped = d.cli(&["stop", "db"]);
    assert_eq!(stopped.status.code(), Some(0), "{}", out(&stopped));
    d.wait_status("app", "stopped");
    d.wait_status("side", "stopped");
    // BindsTo= pulls db in when app starts; Conflicts= stops db when solo starts.
    let started = d.cli(&["start", "app", "--wait", "--timeout", "60"]);
    assert_eq!(started.status.code(), Some(0), "{}", out(&started));
    d.wait_status("db", "started");
    let started = d.cli(&["start", "solo", "--wait", "--timeout", "60"]);
    assert_eq!(started.status.code(), Some(0), "{}", out(&started));
    d.wait_status("db", "stopped");
    d.wait_status("app", "stopped");
}

#[test]
fn bad_requests_are_4xx_with_a_reason() {
    let guarded = "[Unit]\nRefuseManualStop=yes\n[Service]\nExecStart=/bin/sleep 320\n";
    let d = Daemon::start(&[("guarded.service", guarded)]);
    d.wait_status("guarded", "started");
    // RefuseManualStop=: a client's stop is refused, the unit keeps running.
    let (status, body) = d.post("/api/v1/units/guarded/stop");
    assert_eq!(status, 409, "{body}");
    assert!(body["error"].as_str().unwrap_or("").contains("RefuseManualStop=yes"), "{body}");
    assert_eq!(d.unit("guarded")["status"], "started");
    for (path, want) in [
        ("/api/v1/units/guarded/kill?signal=SIGBOGUS", 400),
        ("/api/v1/units/Bad%20Name/enable", 400),
        ("/api/v1/units/..%2Fx/disable", 400),
        ("/api/v1/units/ghost/enable", 404),
        ("/api/v1/units/guarded/enable", 400),
        ("/api/v1/units/ghost/reset-failed", 404),
    ] {
        let (status, body) = d.post(path);
        assert_eq!(status, want, "{path}: {body}");
        assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()), "{path}: {body}");
    }
    for (path, want) in [("/api/v1/units/ghost/file", 404), ("/api/v1/units/.hidden/properties", 400)] {
        let (status, body) = d.get(path);
        assert_eq!(status, want, "{path}: {body}");
    }
}

#[test]
fn success_action_exit_ends_the_container_in_order() {
    // A batch job whose end ends the container (systemd-exit.service's pattern).
    let batch = "[Unit]\nSuccessAction=exit\n[Service]\nExecStart=/bin/sh -c 'sleep 0.5; echo done'\n";
    let other = "[Service]\nExecStart=/bin/sleep 330\n";
    let mut d = Daemon::start(&[("batch.service", batch), ("other.service", other)]);
    let status = d.wait_exit(std::time::Duration::from_secs(60));
    assert_eq!(status.code(), Some(0), "{}", d.daemon_log());
    let log = d.daemon_log();
    assert!(log.contains("batch ended stopped: SuccessAction=exit"), "{log}");
    assert!(d.marked_processes().is_empty(), "every unit was stopped: {:?}", d.marked_processes());
}
