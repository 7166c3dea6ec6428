//! The JSON API and the CLI around it: bad input gets a 4xx JSON error, never
//! a 500; the CLI says clearly when the daemon or the unit is missing.

use std::os::fd::FromRawFd;
use std::os::unix::process::ExitStatusExt;

use crate::harness::{free_port, Daemon, BIN};

#[test]
fn bad_requests_get_json_4xx() {
    let d = Daemon::start(&[("one.service", "[Service]\nExecStart=/bin/sleep 1000\n")]);
    for (method, path, want) in [
        ("GET", "/api/v1/units/nope", 404),
        ("GET", "/api/v1/units/..%2Fetc", 400),
        ("GET", "/api/v1/units/Bad%20Name", 400),
        ("POST", "/api/v1/units/one/explode", 404),
        ("POST", "/api/v1/units/nope/start", 404),
        ("GET", "/api/v1/units/one/logs?tail=lots", 400),
        ("GET", "/api/v1/units/one/start", 405),
        ("GET", "/api/v1/nothing-here", 404),
        ("POST", "/api/v1/units/one/reload", 409),
    ] {
        let (code, body) = if method == "GET" { d.get(path) } else { d.post(path) };
        assert_eq!(code, want, "{method} {path}: {body}");
        assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()), "{method} {path}: {body}");
    }
}

#[test]
fn units_list_has_the_documented_fields() {
    let d = Daemon::start(&[("one.service", "[Unit]\nDescription=the one\n[Service]\nExecStart=/bin/sleep 1000\n")]);
    d.wait_status("one", "started");
    let (code, body) = d.get("/api/v1/units");
    assert_eq!(code, 200);
    let one = &body.as_array().unwrap()[0];
    for field in ["name", "kind", "status", "pid", "restarts", "since"] {
        assert!(!one[field].is_null(), "{field} missing: {one}");
    }
    assert_eq!(one["kind"], "service");
    assert_eq!(one["description"], "the one");
}

#[test]
fn cli_reports_a_missing_daemon_and_a_missing_unit() {
    let out = std::process::Command::new(BIN)
        .args(["status"])
        .env("AIKORE_URL", format!("http://127.0.0.1:{}", free_port()))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach aikore"));

    let d = Daemon::start(&[("one.service", "[Service]\nExecStart=/bin/sleep 1000\n")]);
    let out = d.cli(&["start", "ghost"]);
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no unit named"), "{out:?}");
    let out = d.cli(&["stop", "one"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("one:"));
}

#[test]
fn cli_gives_up_on_a_daemon_that_takes_the_request_and_never_answers() {
    // A listener that accepts and then says nothing: a wedged daemon.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let held = std::thread::spawn(move || listener.accept().map(|(conn, _)| conn));
    let started = std::time::Instant::now();
    let out = std::process::Command::new(BIN)
        .args(["status"])
        .env("AIKORE_URL", &url)
        .env("AIKORE_API_TOKEN", "t")
        .env("AIKORE_CLIENT_TIMEOUT", "2")
        .output()
        .unwrap();
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(stderr.contains("gave no answer in 2 s"), "{stderr}");
    assert!(took >= std::time::Duration::from_secs(2) && took < std::time::Duration::from_secs(20), "{took:?}");
    drop(held.join().unwrap());
}

#[test]
fn cli_output_into_a_closed_pipe_ends_quietly() {
    // `aikore status | grep -q x` or `| head -1`: the reader leaves first.
    let d = Daemon::start(&[("one.service", "[Service]\nExecStart=/bin/sleep 1000\n")]);
    d.wait_status("one", "started");
    let mut fds = [0; 2];
    // SAFETY: pipe(2) fills the two descriptors it is given.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: fds[0] is ours and closed once; fds[1] is moved into an OwnedFd.
    let write_end = unsafe {
        libc::close(fds[0]);
        std::os::fd::OwnedFd::from_raw_fd(fds[1])
    };
    for args in [&["status"][..], &["status", "one"], &["logs", "one"]] {
        let out = std::process::Command::new(BIN)
            .args(args)
            .env("AIKORE_URL", &d.url)
            .env("AIKORE_API_TOKEN", &d.token)
            .stdout(write_end.try_clone().unwrap())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{args:?}: {out:?}");
    }
}

#[test]
fn reload_picks_up_added_changed_and_removed_unit_files() {
    let d = Daemon::start(&[("keep.service", "[Service]\nExecStart=/bin/sleep 1000\n")]);
    d.wait_status("keep", "started");
    let user_units = d.data_dir.join("units");
    std::fs::write(user_units.join("added.service"), "[Service]\nExecStart=/bin/sleep 1000\n").unwrap();
    std::fs::write(user_units.join("broken.service"), "[Service]\nExecStart=/bin/true\nBogus=1\n").unwrap();
    let out = d.cli(&["reload"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("broken.service:3:"), "{out:?}");
    assert_eq!(d.unit("added")["status"], "stopped");
    assert_eq!(d.get("/api/v1/units/broken").0, 404);

    // A hand edit that removes a running unit stops it.
    std::fs::remove_file(d.dir.path().join("stock/keep.service")).unwrap();
    d.post("/api/v1/reload");
    d.wait_until("keep to be gone", |d| d.get("/api/v1/units/keep").0 == 404);
    assert!(d.marked_processes().is_empty());
}

#[test]
fn sighup_rereads_unit_files() {
    let d = Daemon::start(&[]);
    std::fs::write(d.data_dir.join("units/late.service"), "[Service]\nExecStart=/bin/sleep 1000\n").unwrap();
    d.signal(libc::SIGHUP);
    d.wait_until("late to appear", |d| d.get("/api/v1/units/late").0 == 200);
}

#[test]
fn the_stock_nginx_unit_serves_the_api_on_the_public_port() {
    let port = crate::harness::free_port();
    let mut options = crate::harness::Options::default();
    options.env.push(("AIKORE_PORT".into(), port.to_string()));
    let stock =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("units/nginx.service")).unwrap();
    let d = Daemon::start_with(&[("nginx.service", &stock)], options);
    let u = d.wait_status("nginx", "started");
    assert!(u["detail"].is_null(), "NGINX must be installed for this test (.ci/run installs it): {u}");
    let agent = ureq::Agent::config_builder().http_status_as_error(false).build().new_agent();
    let mut answered = None;
    d.wait_until("NGINX to proxy /healthz", |_| {
        answered = agent
            .get(&format!("http://127.0.0.1:{port}/healthz"))
            .call()
            .ok()
            .and_then(|mut r| r.body_mut().read_to_string().ok());
        answered.is_some()
    });
    assert!(answered.unwrap().contains("\"status\":\"ok\""));
    // ExecReload goes to NGINX's master as SIGHUP and it keeps serving.
    let (code, body) = d.post("/api/v1/units/nginx/reload");
    assert_eq!(code, 200, "{body}");
    assert_eq!(d.unit("nginx")["status"], "started");
}
