//! Drain before stop, idle stop and wake (docs/operations.md), through the
//! real daemon, a ComfyUI-like queue app and, for idle stop, real NGINX.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{free_port, read_head, Daemon, Options};

fn repo(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// A custom blueprint running tests/fixtures/queue_app.py; `# aikore.drain =
/// comfyui` as the stock ComfyUI blueprint has it.
fn queue_blueprint(d: &Daemon) {
    let dir = d.data_dir.join("blueprints");
    std::fs::create_dir_all(&dir).unwrap();
    let script = format!(
        "#!/usr/bin/env bash\n### AIKORE-METADATA-START ###\n# aikore.name = Queue\n# aikore.proxy = subpath\n# aikore.drain = comfyui\n### AIKORE-METADATA-END ###\nexport PYTHONUNBUFFERED=1\nexec python3 {} \"$WEBUI_PORT\"\n",
        repo("tests/fixtures/queue_app.py").display()
    );
    std::fs::write(dir.join("queue.sh"), script).unwrap();
}

/// Creates `name` from the queue blueprint, adds `extra` lines to its
/// [Instance] section (hand edits: the keys the API does not set), reloads.
fn queue_instance(d: &Daemon, name: &str, env: Value, extra: &str) {
    let (code, body) =
        d.post_json("/api/v1/instances", json!({ "name": name, "blueprint": "queue", "environment": env }));
    assert_eq!(code, 201, "{body}");
    if !extra.is_empty() {
        let path = d.data_dir.join("units").join(format!("{name}.instance"));
        let text = std::fs::read_to_string(&path).unwrap();
        let text = text.replacen("[Instance]\n", &format!("[Instance]\n{extra}"), 1);
        std::fs::write(&path, text).unwrap();
        let (code, body) = d.post("/api/v1/reload");
        assert_eq!(code, 200, "{body}");
    }
}

fn instance(d: &Daemon, name: &str) -> Value {
    d.get(&format!("/api/v1/instances/{name}")).1
}

fn started(d: &Daemon, name: &str) {
    let (code, body) = d.post(&format!("/api/v1/instances/{name}/start"));
    assert_eq!(code, 200, "{body}");
    d.wait_until(&format!("{name} started"), |d| instance(d, name)["status"] == "started");
}

fn jobs_left_at_exit(d: &Daemon, name: &str) -> u64 {
    let out = d.unit_output(name);
    let line = out.lines().find(|l| l.contains("terminated with")).unwrap_or_else(|| panic!("no exit line: {out}"));
    line.split_whitespace().nth(3).and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{line}"))
}

#[test]
fn a_stop_drains_the_queue_first_a_second_stop_forces_it_and_the_timeout_holds() {
    let d = Daemon::start(&[]);
    queue_blueprint(&d);
    queue_instance(&d, "q1", json!({ "QUEUE_JOBS": "3", "JOB_SEC": "1.5" }), "");
    queue_instance(&d, "q2", json!({ "QUEUE_JOBS": "3", "JOB_SEC": "60" }), "");
    queue_instance(&d, "q3", json!({ "QUEUE_JOBS": "3", "JOB_SEC": "60" }), "DrainTimeoutSec=2s\n");
    for name in ["q1", "q2", "q3"] {
        started(&d, name);
    }

    // 3 slow jobs: the stop waits, the API says `draining` and what is left.
    let (code, body) = d.post("/api/v1/instances/q1/stop");
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["status"], "draining", "{body}");
    let q1 = instance(&d, "q1");
    assert_eq!(q1["status"], "draining", "{q1}");
    assert!(q1["detail"].as_str().unwrap_or("").contains("queued"), "{q1}");
    // The units API (the CLI's) agrees that it still runs.
    assert_eq!(d.unit("q1")["status"], "started");
    d.wait_until("q1 stopped after its queue emptied", |d| instance(d, "q1")["status"] == "stopped");
    assert_eq!(jobs_left_at_exit(&d, "q1"), 0, "{}", d.unit_output("q1"));
    assert_eq!(d.unit_output("q1").matches(" done").count(), 3, "{}", d.unit_output("q1"));

    // A second stop does not wait.
    let (_, body) = d.post("/api/v1/instances/q2/stop");
    assert_eq!(body["status"], "draining", "{body}");
    let (_, body) = d.post("/api/v1/instances/q2/stop");
    assert_ne!(body["status"], "draining", "{body}");
    d.wait_until("q2 stopped at once", |d| instance(d, "q2")["status"] == "stopped");
    assert_eq!(jobs_left_at_exit(&d, "q2"), 3, "{}", d.unit_output("q2"));

    // DrainTimeoutSec=2s: stopped with its jobs left, no second request needed.
    let (_, body) = d.post("/api/v1/instances/q3/stop");
    assert_eq!(body["status"], "draining", "{body}");
    d.wait_until("q3 stopped by its drain timeout", |d| instance(d, "q3")["status"] == "stopped");
    assert_eq!(jobs_left_at_exit(&d, "q3"), 3, "{}", d.unit_output("q3"));
    assert!(d.daemon_log().contains("DrainTimeoutSec=2s passed"), "the timeout is said in the daemon's log");
}

#[test]
fn a_start_during_the_drain_keeps_it_running_and_an_empty_queue_stops_at_once() {
    let d = Daemon::start(&[]);
    queue_blueprint(&d);
    queue_instance(&d, "busy", json!({ "QUEUE_JOBS": "2", "JOB_SEC": "60" }), "");
    queue_instance(&d, "calm", json!({ "QUEUE_JOBS": "0" }), "");
    started(&d, "busy");
    started(&d, "calm");
    let (_, body) = d.post("/api/v1/instances/calm/stop");
    assert_ne!(body["status"], "draining", "nothing queued: {body}");
    d.wait_until("calm stopped", |d| instance(d, "calm")["status"] == "stopped");
    let (_, body) = d.post("/api/v1/instances/busy/stop");
    assert_eq!(body["status"], "draining", "{body}");
    let (_, body) = d.post("/api/v1/instances/busy/start");
    assert_eq!(body["status"], "started", "{body}");
    assert_eq!(instance(&d, "busy")["status"], "started");
    assert!(!d.unit_output("busy").contains("terminated"), "{}", d.unit_output("busy"));
}

/// Regression: `restart --wait` of a draining instance returned at once,
/// since its old run still shows `started`, the restart's goal. It follows
/// the overlay (`draining`) and returns once a new run is up.
#[test]
fn restart_wait_waits_for_the_drain_and_the_new_run() {
    let d = Daemon::start(&[]);
    queue_blueprint(&d);
    queue_instance(&d, "rq", json!({ "QUEUE_JOBS": "2", "JOB_SEC": "1.5" }), "");
    started(&d, "rq");
    let old_pid = d.unit("rq")["pid"].as_i64().expect("a running pid");
    let restarted = d.cli(&["restart", "rq", "--wait", "--timeout", "120"]);
    let stdout = String::from_utf8_lossy(&restarted.stdout).to_string();
    assert_eq!(restarted.status.code(), Some(0), "{stdout}{}", String::from_utf8_lossy(&restarted.stderr));
    assert!(stdout.starts_with("rq: draining\n") && stdout.ends_with("rq: started\n"), "{stdout}");
    // When the CLI returns, the old run has drained and ended, and a new one runs.
    let unit = d.unit("rq");
    assert_eq!(unit["status"], "started", "{unit}");
    assert!(unit["pid"].as_i64().is_some_and(|p| p != old_pid), "still the old run {old_pid}: {unit}");
    // The old run's log (a restart begins a fresh file, the last one is `.log.1`): its queue ran out
    // first. (Its very last line may land in the new file: the old pipe is read out after the switch.)
    let old = std::fs::read_to_string(d.data_dir.join("logs/rq.log.1")).unwrap_or_default();
    assert_eq!(old.matches(" done").count(), 2, "{old}");
    assert_eq!(instance(&d, "rq")["status"], "started");
}

// ---- idle stop and wake, through NGINX ------------------------------------

fn with_nginx() -> Daemon {
    let mut options = Options::default();
    options.env.push(("AIKORE_PORT".into(), free_port().to_string()));
    let stock = std::fs::read_to_string(repo("units/nginx.service")).unwrap();
    let d = Daemon::start_with(&[("nginx.service", &stock)], options);
    let u = d.wait_status("nginx", "started");
    assert!(u["detail"].is_null(), "NGINX must be installed for this test (apt-get install nginx): {u}");
    d
}

/// One request to the apps origin with the daemon's bearer: status, headers, body.
fn app_get(d: &Daemon, target: &str, accept: &str) -> (u16, Vec<(String, String)>, String) {
    let mut s = TcpStream::connect(("127.0.0.1", d.apps_port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let head = format!(
        "GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nAccept: {accept}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        d.apps_port, d.token
    );
    s.write_all(head.as_bytes()).unwrap();
    let mut reader = BufReader::new(s);
    let (status, headers) = read_head(&mut reader).unwrap();
    let mut text = String::new();
    let _ = reader.read_to_string(&mut text);
    (status, headers, text)
}

/// A WebSocket through NGINX to the app, held open until dropped.
fn open_websocket(d: &Daemon, target: &str) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", d.apps_port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let head = format!(
        "GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nAuthorization: Bearer {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        d.apps_port, d.token
    );
    s.write_all(head.as_bytes()).unwrap();
    let mut reader = BufReader::new(s.try_clone().unwrap());
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    assert!(status.contains(" 101 "), "{status}");
    s
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

#[test]
fn idle_instances_stop_never_while_a_websocket_is_open_or_a_job_runs_and_wake_on_the_next_request() {
    let d = with_nginx();
    queue_blueprint(&d);
    queue_instance(&d, "idle", json!({ "QUEUE_JOBS": "1", "JOB_SEC": "6" }), "IdleStopSec=2\n");
    started(&d, "idle");
    assert_eq!(instance(&d, "idle")["idle_stop_sec"], 2);
    // `started` comes before NGINX has swapped in the new route (a reload under load may lag).
    d.wait_until("the app answering through NGINX", |d| app_get(d, "/app/idle/", "text/html").0 == 200);

    // A job runs for 6 s: no idle stop before it is done.
    d.wait_until("idle to be idle-stopped", |d| instance(d, "idle")["status"] == "idle-stopped");
    let out = d.unit_output("idle");
    assert!(out.contains("prompt-0 done"), "stopped while its job ran: {out}");
    assert_eq!(d.unit("idle")["status"], "stopped", "the engine says stopped, the overlay idle-stopped");

    // An API client: 503 with Retry-After while it wakes, then the app.
    let (code, headers, body) = app_get(&d, "/app/idle/", "application/json");
    assert_eq!(code, 503, "{body}");
    assert!(header(&headers, "retry-after").is_some(), "{headers:?}");
    d.wait_until("the app answers through NGINX again", |d| app_get(d, "/app/idle/", "application/json").0 == 200);

    // An open WebSocket is activity: no idle stop while it is open.
    let socket = open_websocket(&d, "/app/idle/ws");
    std::thread::sleep(Duration::from_secs(10));
    assert_eq!(instance(&d, "idle")["status"], "started", "stopped with a WebSocket open");
    drop(socket);
    d.wait_until("idle-stopped once the WebSocket closed", |d| instance(d, "idle")["status"] == "idle-stopped");

    // A user's stop is not undone by a visit.
    started(&d, "idle");
    let (_, body) = d.post("/api/v1/instances/idle/stop");
    if body["status"] == "draining" {
        // Its queued job runs again after the start: the second stop does not wait.
        d.post("/api/v1/instances/idle/stop");
    }
    d.wait_until("idle stopped by the user", |d| instance(d, "idle")["status"] == "stopped");
    // Once NGINX has the stopped route: a page saying so, and no start.
    d.wait_until("the not-running page", |d| app_get(d, "/app/idle/", "text/html").2.contains("is not running"));
    let (code, headers, _) = app_get(&d, "/app/idle/", "text/html");
    assert_eq!(code, 503);
    assert!(header(&headers, "x-aikore-waking").is_none(), "{headers:?}");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(instance(&d, "idle")["status"], "stopped");
}

#[test]
fn a_shutdown_of_the_box_lets_queued_jobs_finish_within_its_deadline() {
    // AIKORE_SHUTDOWN_TIMEOUT=15s (the harness's): two thirds of it for draining.
    let mut d = Daemon::start(&[]);
    queue_blueprint(&d);
    queue_instance(&d, "short", json!({ "QUEUE_JOBS": "2", "JOB_SEC": "1.5" }), "");
    queue_instance(&d, "long", json!({ "QUEUE_JOBS": "3", "JOB_SEC": "300" }), "");
    started(&d, "short");
    started(&d, "long");
    let status = d.terminate();
    assert!(status.code().is_some(), "{status:?}");
    assert_eq!(jobs_left_at_exit(&d, "short"), 0, "{}", d.unit_output("short"));
    // A job longer than the deadline does not hold the box: stopped with its work left.
    assert_eq!(jobs_left_at_exit(&d, "long"), 3, "{}", d.unit_output("long"));
    assert!(d.daemon_log().contains("the drain's share of the deadline passed"), "{}", d.daemon_log());
}

/// As deployed: PUID/PGID set (nobody's), the stock nginx.service, apps on
/// NGINX's apps port. The queue app runs as the instance user; its drain
/// check, its idle stop and the wake by a visit work the same.
#[test]
fn as_deployed_with_puid_the_drain_the_idle_stop_and_the_wake_work_through_nginx() {
    let mut options = Options::default();
    options.env.push(("AIKORE_PORT".into(), free_port().to_string()));
    options.env.push(("PUID".into(), "65534".into()));
    options.env.push(("PGID".into(), "65534".into()));
    options.env.push(("PATH".into(), "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()));
    let stock = std::fs::read_to_string(repo("units/nginx.service")).unwrap();
    let d = Daemon::start_with(&[("nginx.service", &stock)], options);
    d.wait_status("nginx", "started");
    // The temp dir above the data dir is root's 0700; a container's /config has no such parent.
    std::fs::set_permissions(d.dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    // The checkout may sit under a 0700 dir too: the app goes where the instance user can read it.
    let dir = d.data_dir.join("blueprints");
    std::fs::create_dir_all(&dir).unwrap();
    let app = dir.join("queue_app.py");
    std::fs::copy(repo("tests/fixtures/queue_app.py"), &app).unwrap();
    let script = format!(
        "#!/usr/bin/env bash\n### AIKORE-METADATA-START ###\n# aikore.name = Queue\n# aikore.proxy = subpath\n# aikore.drain = comfyui\n### AIKORE-METADATA-END ###\nexport PYTHONUNBUFFERED=1\nexec python3 {} \"$WEBUI_PORT\"\n",
        app.display()
    );
    std::fs::write(dir.join("queue.sh"), script).unwrap();

    queue_instance(&d, "deployed", json!({ "QUEUE_JOBS": "2", "JOB_SEC": "2" }), "IdleStopSec=2\n");
    started(&d, "deployed");
    let pid = d.unit("deployed")["pid"].as_i64().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(status.lines().any(|l| l.starts_with("Uid:\t65534")), "runs as the instance user: {status}");
    d.wait_until("the app answering through NGINX", |d| app_get(d, "/app/deployed/", "text/html").0 == 200);

    // A user's stop with jobs queued drains first, then stops.
    let (_, body) = d.post("/api/v1/instances/deployed/stop");
    assert_eq!(body["status"], "draining", "{body}");
    d.wait_until("stopped once its queue ran empty", |d| instance(d, "deployed")["status"] == "stopped");
    assert_eq!(jobs_left_at_exit(&d, "deployed"), 0, "{}", d.unit_output("deployed"));

    // Idle: no request for IdleStopSec (+ the gate's cache) and an empty queue.
    started(&d, "deployed");
    d.wait_until("the app answering through NGINX", |d| app_get(d, "/app/deployed/", "text/html").0 == 200);
    d.wait_until("deployed to be idle-stopped", |d| instance(d, "deployed")["status"] == "idle-stopped");
    // A browser's visit through NGINX: the waking page, then the app.
    d.wait_until("the waking page", |d| app_get(d, "/app/deployed/", "text/html").2.contains("Waking"));
    d.wait_until("the app again after the wake", |d| app_get(d, "/app/deployed/", "text/html").0 == 200);
    let pid = d.unit("deployed")["pid"].as_i64().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(status.lines().any(|l| l.starts_with("Uid:\t65534")), "woken as the instance user: {status}");
}
