//! SQLite state: rows and journal follow the supervisor; a new daemon on the
//! same data dir reconciles and stops what a crashed one left running.

use crate::harness::{Daemon, Options};

fn db(d: &Daemon) -> rusqlite::Connection {
    rusqlite::Connection::open(d.data_dir.join("aikore.db")).unwrap()
}

#[test]
fn state_rows_and_journal_follow_the_units() {
    let d = Daemon::start(&[("svc.service", "[Service]\nExecStart=/bin/sleep 1000\n")]);
    let pid = d.wait_status("svc", "started")["pid"].as_i64().unwrap();
    d.wait_until("the row to say started", |d| {
        db(d)
            .query_row("SELECT status, pid FROM units WHERE name='svc'", [], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, Option<i64>>(1)?))
            })
            .map(|(s, p)| s == "started" && p == Some(pid))
            .unwrap_or(false)
    });
    let mode: String = db(&d).query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
    assert_eq!(mode, "wal");
    let version: i64 = db(&d).query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert!(version >= 1);
    let transitions: i64 =
        db(&d).query_row("SELECT count(*) FROM events WHERE unit='svc' AND kind='state'", [], |r| r.get(0)).unwrap();
    assert!(transitions >= 2, "starting and started are journaled");
}

#[test]
fn a_restarted_daemon_stops_leftovers_resets_state_and_archives_gone_units() {
    for tracking in ["cgroup", "off"] {
        let mut options = Options::default();
        if tracking == "off" {
            options.env.push(("AIKORE_CGROUP".into(), "off".into()));
        }
        let mut d = Daemon::start_with(
            &[
                ("svc.service", "[Service]\nExecStart=/bin/sh -c '(setsid sleep 1001 &); exec sleep 1000'\n"),
                ("gone.service", "[Service]\nExecStart=/bin/sleep 1000\n"),
            ],
            options,
        );
        let old_pid = d.wait_status("svc", "started")["pid"].as_i64().unwrap() as i32;
        d.wait_until("the grandchild", |d| d.marked_processes().len() >= 3);
        // The journal task writes the state row after the API shows `started`: a crash
        // before that write leaves nothing to read back (seen under load).
        d.wait_until("svc's state row with its pid", |d| {
            db(d).query_row("SELECT pid FROM units WHERE name='svc'", [], |r| r.get::<_, Option<i64>>(0)).ok().flatten()
                == Some(i64::from(old_pid))
        });
        // A crash: the daemon dies, its units do not.
        d.signal(libc::SIGKILL);
        d.wait_exit(std::time::Duration::from_secs(5));
        assert!(d.marked_processes().contains(&old_pid), "the orphaned unit survives the crash");
        std::fs::remove_file(d.dir.path().join("stock/gone.service")).unwrap();

        let mut options = Options::default();
        if tracking == "off" {
            options.env.push(("AIKORE_CGROUP".into(), "off".into()));
        }
        d.spawn(options);
        let new_pid = d.wait_status("svc", "started")["pid"].as_i64().unwrap() as i32;
        assert_ne!(new_pid, old_pid);
        // The new run's grandchild appears a moment after its main process.
        d.wait_until("the new run's two processes", |d| d.marked_processes().len() >= 2);
        std::thread::sleep(std::time::Duration::from_millis(100));
        let live = d.marked_processes();
        assert!(!live.contains(&old_pid), "[{tracking}] the previous run's process was stopped: {live:?}");
        assert_eq!(live.len(), 2, "[{tracking}] only the new run's processes: {live:?}");
        let archived: i64 = db(&d).query_row("SELECT archived FROM units WHERE name='gone'", [], |r| r.get(0)).unwrap();
        assert_eq!(archived, 1);
        // The state rows of the crashed daemon are read back: the journal says
        // which units it cut off, and in which state.
        let (code, journal) = d.get("/api/v1/journal?unit=svc");
        assert_eq!(code, 200, "{journal}");
        let cut_off = journal.as_array().unwrap().iter().filter_map(|e| e["detail"].as_str()).find(|t| {
            t.starts_with("the previous aikore ended without a clean shutdown while this unit was started (pid ")
        });
        assert!(cut_off.is_some_and(|t| t.contains(&old_pid.to_string())), "[{tracking}] {journal}");
    }
}

#[test]
fn the_journal_records_the_final_stops_of_a_shutdown() {
    let mut d = Daemon::start(&[("svc.service", "[Service]\nExecStart=/bin/sleep 1000\n")]);
    d.wait_status("svc", "started");
    assert_eq!(d.terminate().code(), Some(0));
    let last: String = db(&d)
        .query_row("SELECT detail FROM events WHERE unit='svc' AND kind='state' ORDER BY id DESC LIMIT 1", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(last.starts_with("stopped"), "{last}");
    let status: String = db(&d).query_row("SELECT status FROM units WHERE name='svc'", [], |r| r.get(0)).unwrap();
    assert_eq!(status, "stopped");
    // After a clean shutdown the next daemon has nothing cut off to report.
    d.spawn(crate::harness::Options::default());
    d.wait_status("svc", "started");
    let cut_off: i64 = db(&d)
        .query_row("SELECT count(*) FROM events WHERE detail LIKE 'the previous aikore ended%'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(cut_off, 0);
}

#[test]
fn a_parent_that_exported_the_data_dir_is_not_taken_for_a_leftover() {
    // `AIKORE_DATA_DIR=... aikore serve` from a wrapper: the wrapper carries
    // the marker too, and must survive the daemon's leftover sweep.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let data = std::fs::canonicalize(&data).unwrap();
    let port = crate::harness::free_port();
    let mut wrapper = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{} serve --units-dir /nonexistent --listen 127.0.0.1:{port} & wait", crate::harness::BIN))
        .env("AIKORE_DATA_DIR", &data)
        .env("AIKORE_PORT", crate::harness::free_port().to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let url = format!("http://127.0.0.1:{port}/healthz");
    while std::time::Instant::now() < deadline && ureq::get(&url).call().is_err() {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(ureq::get(&url).call().is_ok(), "the daemon came up");
    assert!(wrapper.try_wait().unwrap().is_none(), "the wrapper shell is alive");
    for pid in crate::harness::processes_with_env(&format!("AIKORE_DATA_DIR={}", data.display())) {
        // SAFETY: the daemon and the wrapper of this test.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let _ = wrapper.wait();
}
