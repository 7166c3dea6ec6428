//! The JSON API in process, axum's way: a real daemon booted by
//! `Daemon::boot` in this test binary (real units, store, supervisor; no
//! NGINX unit), and requests sent through `router().oneshot(...)` with no
//! socket, beside the over-TCP tests of `tests/api.rs`.
//!
//! Every endpoint the CLI reads (`src/cli.rs`, `src/cli/systemctl.rs`) is deserialized into the very `aikore::api`
//! type the CLI uses, then serialized back and compared with what the server
//! sent: a field renamed, retyped or dropped on either side fails here.

use std::path::Path;
use std::time::Duration;

use aikore::api::{
    DependencyTree, ErrorBody, Health, InstallChanges, InstanceScript, InstanceUpdateReply, InstanceView, KillReply,
    LogLine, PortSetting, ReloadReport, ResetFailedReply, ScriptSaved, ShownStatus, Status, UnitActionReply, UnitFile,
    UnitLogs, UnitProcesses, UnitProperties, UnitVerb, UnitView,
};
use aikore::config::{Knobs, Settings};
use aikore::daemon::Daemon;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tower::ServiceExt;

/// Generous: CI is a busy 2-core box.
const CAP: Duration = Duration::from_secs(30);

fn settings(dir: &Path) -> Settings {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    Settings {
        data_dir: dir.join("data"),
        units_dirs: vec![dir.join("units"), dir.join("data/units")],
        listen: "127.0.0.1:0".parse().unwrap(),
        proxy_port: 1,
        proxy_bind: "127.0.0.1".parse().unwrap(),
        apps_port: 2,
        shutdown_timeout: Duration::from_secs(10),
        blueprints_dir: repo.join("blueprints"),
        port_range: 29001..=29099,
        owner: None,
        knobs: Knobs { cgroups: false, nvml: false, ..Knobs::default() },
    }
}

struct InProcess {
    router: axum::Router,
    token: String,
    stop: tokio::sync::oneshot::Sender<()>,
    run: tokio::task::JoinHandle<i32>,
    _dir: tempfile::TempDir,
}

async fn boot(units: &[(&str, &str)]) -> InProcess {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("units")).unwrap();
    for (file, text) in units {
        std::fs::write(dir.path().join("units").join(file), text).unwrap();
    }
    let daemon = Daemon::boot(settings(dir.path())).await.expect("boot");
    let router = daemon.router();
    let token = std::fs::read_to_string(dir.path().join("data/cli.token")).unwrap().trim().to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(daemon.run(async move {
        let _ = stopped.await;
    }));
    InProcess { router, token, stop, run, _dir: dir }
}

impl InProcess {
    async fn call(&self, method: Method, path: &str) -> (StatusCode, serde_json::Value) {
        self.call_with(method, path, None).await
    }

    /// A request with a JSON body (`None`: no body).
    async fn call_with(
        &self,
        method: Method,
        path: &str,
        json: Option<serde_json::Value>,
    ) -> (StatusCode, serde_json::Value) {
        let builder =
            Request::builder().method(method).uri(path).header("authorization", format!("Bearer {}", self.token));
        let request = match json {
            Some(json) => builder.header("content-type", "application/json").body(Body::from(json.to_string())),
            None => builder.body(Body::empty()),
        }
        .unwrap();
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {}", String::from_utf8_lossy(&bytes)));
        (status, body)
    }

    /// The body as the CLI's type, checked to serialize back to exactly what the server sent.
    async fn typed<T: DeserializeOwned + Serialize>(&self, method: Method, path: &str) -> T {
        let (status, body) = self.call(method, path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        round_trip(path, body)
    }

    /// The first `line` event of an SSE stream, as the CLI's `LogLine` (round-tripped).
    async fn first_sse_line(&self, path: &str) -> LogLine {
        use futures_util::StreamExt;
        let request = Request::builder()
            .uri(path)
            .header("authorization", format!("Bearer {}", self.token))
            .body(Body::empty())
            .unwrap();
        let response = self.router.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let mut stream = response.into_body().into_data_stream();
        let mut text = String::new();
        let read = async {
            while let Some(chunk) = stream.next().await {
                text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
                // One event: `event: line` then `data: {...}`, ended by a blank line.
                if let Some(at) = text.find("event: line\ndata: ") {
                    let rest = &text[at + "event: line\ndata: ".len()..];
                    if let Some(end) = rest.find('\n') {
                        return rest[..end].to_string();
                    }
                }
            }
            panic!("{path}: the stream ended before a line event: {text:?}");
        };
        let data = tokio::time::timeout(CAP, read).await.expect("a line event");
        round_trip(path, serde_json::from_str(&data).unwrap())
    }

    async fn wait_status(&self, unit: &str, want: Status) -> UnitView {
        let deadline = tokio::time::Instant::now() + CAP;
        loop {
            let u: UnitView = self.typed(Method::GET, &format!("/api/v1/units/{unit}")).await;
            if u.status == want {
                return u;
            }
            assert!(tokio::time::Instant::now() < deadline, "{unit} never became {want}: {u:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(self) -> i32 {
        let _ = self.stop.send(());
        tokio::time::timeout(CAP, self.run).await.expect("daemon stops").expect("run task")
    }
}

fn round_trip<T: DeserializeOwned + Serialize>(what: &str, body: serde_json::Value) -> T {
    let typed: T = serde_json::from_value(body.clone()).unwrap_or_else(|e| panic!("{what}: {e}: {body}"));
    assert_eq!(serde_json::to_value(&typed).unwrap(), body, "{what}: the type loses or changes a field");
    typed
}

const HELLO: &str =
    "[Unit]\nDescription=says hello\n[Service]\nExecStart=/bin/sh -c 'echo hello-from-unit; exec sleep 600'\n";

/// Pulls in `hello` (loaded) and `ghost` (not): `list-dependencies`' tree.
const WEB: &str = "[Unit]\nRequires=hello.service\nWants=ghost.service\nAfter=hello.service\n\
                   [Service]\nExecStart=/bin/sleep 601\n";
/// Started only once enabled: `enable`/`disable`'s links.
const BOOT: &str = "[Service]\nExecStart=/bin/sleep 602\n[Install]\nWantedBy=multi-user.target\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_the_cli_reads_round_trips_through_the_api_types() {
    let d = boot(&[("hello.service", HELLO), ("web.service", WEB), ("boot.service", BOOT)]).await;
    let health: Health = d.typed(Method::GET, "/healthz").await;
    assert_eq!((health.status.as_str(), health.tracking.as_str()), ("ok", "process-group"));

    let started = d.wait_status("hello", Status::Started).await;
    assert_eq!(started.description, "says hello");
    assert!(started.pid.is_some_and(|p| p > 0), "{started:?}");

    let units: Vec<UnitView> = d.typed(Method::GET, "/api/v1/units").await;
    let mut names: Vec<&str> = units.iter().map(|u| u.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["boot", "hello", "web"]);

    // The log endpoint: the line the unit printed, as the CLI prints it.
    let deadline = tokio::time::Instant::now() + CAP;
    let logs = loop {
        let logs: UnitLogs = d.typed(Method::GET, "/api/v1/units/hello/logs?tail=10").await;
        if logs.lines.iter().any(|l| l.text == "hello-from-unit") {
            assert_eq!(logs.unit, "hello");
            break logs;
        }
        assert!(tokio::time::Instant::now() < deadline, "no log line: {logs:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    // `aikore logs -f`: the SSE stream's `line` events carry one LogLine each,
    // the backlog first (the same lines as the tail: the unit prints no more).
    let line = d.first_sse_line("/api/v1/units/hello/logs/stream?tail=10").await;
    assert_eq!(line, logs.lines[0]);

    let stopped: UnitActionReply = d.typed(Method::POST, "/api/v1/units/hello/stop").await;
    assert_eq!(stopped.unit, "hello");
    assert_eq!(stopped.action, UnitVerb::parse("stop").unwrap());
    d.wait_status("hello", Status::Stopped).await;
    let restarted: UnitActionReply = d.typed(Method::POST, "/api/v1/units/hello/restart").await;
    assert_eq!(restarted.action, UnitVerb::parse("restart").unwrap());
    d.wait_status("hello", Status::Started).await;

    let report: ReloadReport = d.typed(Method::POST, "/api/v1/reload").await;
    assert_eq!(report.units, 3, "{report:?}");

    // The systemctl habits (src/cli/systemctl.rs): cat, show, list-dependencies, status's processes.
    let file: UnitFile = d.typed(Method::GET, "/api/v1/units/hello/file").await;
    assert_eq!((file.unit.as_str(), file.text.as_str()), ("hello", HELLO));
    assert!(file.path.ends_with("/units/hello.service"), "{file:?}");
    let props: UnitProperties = d.typed(Method::GET, "/api/v1/units/web/properties").await;
    for pair in [("Id", "web.service"), ("Requires", "hello.service"), ("UnitFileState", "static")] {
        assert!(props.properties.contains(&(pair.0.into(), pair.1.into())), "{pair:?} in {props:?}");
    }
    let tree: DependencyTree = d.typed(Method::GET, "/api/v1/units/web/dependencies").await;
    let children: Vec<(&str, &str, bool)> =
        tree.children.iter().map(|c| (c.name.as_str(), c.via.as_str(), c.loaded)).collect();
    assert_eq!((tree.name.as_str(), children), ("web", vec![("hello", "Requires", true), ("ghost", "Wants", false)]));
    // Stopping `hello` stopped `web` (Requires=): started again by hand.
    let start: UnitActionReply = d.typed(Method::POST, "/api/v1/units/web/start").await;
    assert_eq!(start.action, UnitVerb::parse("start").unwrap());
    let web = d.wait_status("web", Status::Started).await;
    let procs: UnitProcesses = d.typed(Method::GET, "/api/v1/units/web/processes").await;
    assert_eq!(procs.main_pid, web.pid);
    assert!(procs.tasks >= 1, "{procs:?}");
    assert!(procs.processes.iter().any(|p| Some(p.pid) == web.pid && p.command == "/bin/sleep 601"), "{procs:?}");

    // kill -s KILL, then reset-failed: the unit's error is forgotten.
    let killed: KillReply = d.typed(Method::POST, "/api/v1/units/web/kill?signal=KILL").await;
    assert_eq!((killed.unit.as_str(), killed.signal, killed.pids.clone()), ("web", 9, web.pid.into_iter().collect()));
    d.wait_status("web", Status::Error).await;
    let reset: ResetFailedReply = d.typed(Method::POST, "/api/v1/units/web/reset-failed").await;
    assert_eq!((reset.unit.as_str(), reset.status), ("web", Status::Stopped));
    let idle: UnitProcesses = d.typed(Method::GET, "/api/v1/units/web/processes").await;
    assert_eq!((idle.tasks, idle.main_pid), (0, None), "{idle:?}");

    // enable/disable: the links' lines as the CLI prints them.
    let enabled: InstallChanges = d.typed(Method::POST, "/api/v1/units/boot/enable").await;
    assert!(enabled.enabled && enabled.changes.iter().any(|c| c.starts_with("Created ")), "{enabled:?}");
    let props: UnitProperties = d.typed(Method::GET, "/api/v1/units/boot/properties").await;
    assert!(props.properties.contains(&("UnitFileState".into(), "enabled".into())), "{props:?}");
    let disabled: InstallChanges = d.typed(Method::POST, "/api/v1/units/boot/disable").await;
    assert!(!disabled.enabled && disabled.changes.iter().any(|c| c.starts_with("Removed ")), "{disabled:?}");

    // `--wait` on an instance follows its overlay through the instance view.
    let (status, body) = d
        .call_with(
            Method::POST,
            "/api/v1/instances",
            Some(serde_json::json!({ "name": "inst", "blueprint": "test-http", "port": 29050 })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let created: InstanceView = round_trip("POST /api/v1/instances", body);
    let inst: InstanceView = d.typed(Method::GET, "/api/v1/instances/inst").await;
    assert_eq!(inst, created);
    assert_eq!((inst.port, inst.status), (PortSetting::Fixed(29050), ShownStatus::Unit(Status::Stopped)));
    let all: Vec<InstanceView> = d.typed(Method::GET, "/api/v1/instances").await;
    assert_eq!(all.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(), ["inst"]);
    // The dashboard's other instance bodies share the model.
    let (status, body) =
        d.call_with(Method::PATCH, "/api/v1/instances/inst", Some(serde_json::json!({ "description": "typed" }))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let changed: InstanceUpdateReply = round_trip("PATCH /api/v1/instances/inst", body);
    assert_eq!(changed.instance.map(|i| i.description), Some("typed".to_string()));
    assert!(!changed.restarted && !changed.restart_pending, "stopped: nothing to restart");
    let script: InstanceScript = d.typed(Method::GET, "/api/v1/instances/inst/script").await;
    assert!(script.content.starts_with("#!"), "{script:?}");
    let content = format!("{}\n# edited\n", script.content);
    let (status, body) = d
        .call_with(Method::PUT, "/api/v1/instances/inst/script", Some(serde_json::json!({ "content": content })))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let saved: ScriptSaved = round_trip("PUT /api/v1/instances/inst/script", body);
    assert!(saved.saved && !saved.restart_pending, "{saved:?}");
    let script: InstanceScript = d.typed(Method::GET, "/api/v1/instances/inst/script").await;
    assert_eq!(script.content, content);

    assert_eq!(d.stop().await, aikore::daemon::exit_code::CLEAN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_a_json_4xx_the_cli_can_read() {
    let d = boot(&[("hello.service", HELLO)]).await;
    for (method, path, want) in [
        (Method::GET, "/api/v1/units/nope", StatusCode::NOT_FOUND),
        (Method::GET, "/api/v1/units/Bad%20Name", StatusCode::BAD_REQUEST),
        (Method::POST, "/api/v1/units/hello/explode", StatusCode::NOT_FOUND),
        (Method::POST, "/api/v1/units/nope/start", StatusCode::NOT_FOUND),
        (Method::GET, "/api/v1/units/hello/logs?tail=lots", StatusCode::BAD_REQUEST),
        (Method::GET, "/api/v1/units/hello/start", StatusCode::METHOD_NOT_ALLOWED),
        (Method::GET, "/api/v1/nothing-here", StatusCode::NOT_FOUND),
        (Method::GET, "/api/v1/journal?unit=..", StatusCode::BAD_REQUEST),
        (Method::POST, "/api/v1/instances/nope/start", StatusCode::NOT_FOUND),
        // The systemctl habits' endpoints.
        (Method::GET, "/api/v1/units/nope/file", StatusCode::NOT_FOUND),
        (Method::GET, "/api/v1/units/.hidden/properties", StatusCode::BAD_REQUEST),
        (Method::GET, "/api/v1/units/nope/properties", StatusCode::NOT_FOUND),
        (Method::GET, "/api/v1/units/nope/dependencies", StatusCode::NOT_FOUND),
        (Method::GET, "/api/v1/units/Bad%20Name/dependencies", StatusCode::BAD_REQUEST),
        (Method::GET, "/api/v1/units/nope/processes", StatusCode::NOT_FOUND),
        (Method::POST, "/api/v1/units/hello/kill?signal=SIGBOGUS", StatusCode::BAD_REQUEST),
        (Method::POST, "/api/v1/units/hello/kill?signal=", StatusCode::BAD_REQUEST),
        (Method::POST, "/api/v1/units/nope/kill", StatusCode::NOT_FOUND),
        (Method::POST, "/api/v1/units/nope/reset-failed", StatusCode::NOT_FOUND),
        (Method::POST, "/api/v1/units/nope/enable", StatusCode::NOT_FOUND),
        (Method::POST, "/api/v1/units/hello/enable", StatusCode::BAD_REQUEST),
        (Method::POST, "/api/v1/units/..%2Fx/disable", StatusCode::BAD_REQUEST),
        (Method::GET, "/api/v1/units/hello/kill", StatusCode::METHOD_NOT_ALLOWED),
        (Method::GET, "/api/v1/instances/nope", StatusCode::NOT_FOUND),
        (Method::GET, "/api/v1/instances/hello", StatusCode::NOT_FOUND),
        (Method::GET, "/api/v1/instances/Bad%20Name", StatusCode::BAD_REQUEST),
    ] {
        let (status, body) = d.call(method.clone(), path).await;
        assert_eq!(status, want, "{method} {path}: {body}");
        let error: ErrorBody = round_trip(path, body);
        assert!(!error.error.is_empty(), "{method} {path}");
    }
    // Without the bearer: 401, JSON too.
    let request = Request::builder().uri("/api/v1/units").body(Body::empty()).unwrap();
    let response = d.router.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 16).await.unwrap();
    let error: ErrorBody = serde_json::from_slice(&bytes).unwrap();
    assert!(error.error.contains("login required"), "{}", error.error);
    assert_eq!(d.stop().await, aikore::daemon::exit_code::CLEAN);
}
