//! The proxy against the real NGINX: instances at /app/<name>/ (GET, a 50 MB
//! upload, WebSocket, SSE, `%2F` kept encoded), the ComfyUI slot and its
//! absolute paths, routes following stops, a rejected render keeping the live
//! config, and `port` instances. The backend is tests/fixtures/echo_app.py,
//! which reports each request exactly as it arrived.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::{free_port, read_head, Daemon, Options};

/// A daemon running the stock nginx unit on its own public ports: the
/// dashboard's (`port`) and the apps origin's (`apps`).
pub(crate) struct Proxied {
    pub(crate) d: Daemon,
    pub(crate) port: u16,
    pub(crate) apps: u16,
}

pub(crate) fn start(extra_env: &[(&str, &str)]) -> Proxied {
    let port = free_port();
    let mut options = Options::default();
    options.env.push(("AIKORE_PORT".into(), port.to_string()));
    for (k, v) in extra_env {
        options.env.push((k.to_string(), v.to_string()));
    }
    let stock = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("units/nginx.service")).unwrap();
    let d = Daemon::start_with(&[("nginx.service", &stock)], options);
    let u = d.wait_status("nginx", "started");
    assert!(u["detail"].is_null(), "NGINX must be installed for this test: {u}");
    for (id, mode) in [("echo", "subpath"), ("echo-port", "port")] {
        write_echo_blueprint(&d, id, mode);
    }
    let apps = d.apps_port;
    let p = Proxied { d, port, apps };
    p.d.wait_until("NGINX to serve the dashboard", |_| p.try_get("/healthz").is_some_and(|r| r.status == 200));
    // The generated routes are live from NGINX's first start.
    assert!(p.get("/app/nobody/").text().contains("No such instance"));
    p
}

fn write_echo_blueprint(d: &Daemon, id: &str, mode: &str) {
    let app = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/echo_app.py");
    let dir = d.data_dir.join("blueprints");
    std::fs::create_dir_all(&dir).unwrap();
    let script = format!(
        "#!/usr/bin/env bash\n### AIKORE-METADATA-START ###\n# aikore.name = Echo ({mode})\n# aikore.category = Testing\n# aikore.proxy = {mode}\n### AIKORE-METADATA-END ###\necho \"env: WEBUI_HOST=$WEBUI_HOST INSTANCE_URL_PATH=[${{INSTANCE_URL_PATH-unset}}]\"\nexec python3 {} --host \"$WEBUI_HOST\" --port \"$WEBUI_PORT\"\n",
        app.display()
    );
    std::fs::write(dir.join(format!("{id}.sh")), script).unwrap();
}

pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl Response {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&self.body).into()))
    }
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into()
    }
}

fn connect(port: u16) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    Ok(s)
}

/// One HTTP/1.1 request, the target written byte for byte as given (no client
/// normalises it), `Connection: close`, the whole reply read to EOF.
pub(crate) fn raw(
    port: u16,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    let mut s = connect(port)?;
    let mut head = format!(
        "{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    for piece in body.chunks(1 << 20) {
        s.write_all(piece)?;
    }
    let mut reader = BufReader::new(s);
    let (status, headers) = read_head(&mut reader)?;
    let mut body = Vec::new();
    reader.read_to_end(&mut body)?;
    // Chunked replies (NGINX's own pages are not) are only checked for content.
    Ok(Response { status, headers, body })
}

impl Proxied {
    /// Apps sit behind aikore's login (NGINX auth_request): API clients pass with the bearer.
    pub(crate) fn bearer(&self) -> String {
        format!("Bearer {}", self.d.token)
    }
    /// The dashboard's paths go to its port, everything else (apps, the
    /// ComfyUI slot's absolute paths) to the apps origin.
    fn port_for(&self, target: &str) -> u16 {
        let dashboard = target == "/"
            || ["/healthz", "/api/v1/", "/metrics", "/login", "/setup", "/app-login", "/static/"]
                .iter()
                .any(|p| target.starts_with(p));
        if dashboard {
            self.port
        } else {
            self.apps
        }
    }
    pub(crate) fn try_get(&self, target: &str) -> Option<Response> {
        raw(self.port_for(target), "GET", target, &[("Authorization", &self.bearer())], b"").ok()
    }
    pub(crate) fn get(&self, target: &str) -> Response {
        raw(self.port_for(target), "GET", target, &[("Authorization", &self.bearer())], b"")
            .unwrap_or_else(|e| panic!("GET {target}: {e}\n{}", self.d.daemon_log()))
    }
    fn post(&self, target: &str, body: &[u8]) -> Response {
        raw(self.port_for(target), "POST", target, &[("Authorization", &self.bearer())], body)
            .unwrap_or_else(|e| panic!("POST {target}: {e}"))
    }

    /// Creates an instance from an echo blueprint, starts it and waits until NGINX serves `path`.
    pub(crate) fn echo_instance(&self, name: &str, blueprint: &str, extra: Value) -> Value {
        let mut body = json!({ "name": name, "blueprint": blueprint, "start": true });
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let (code, created) = self.d.post_json("/api/v1/instances", body);
        assert_eq!(code, 201, "{created}");
        self.d.wait_status(name, "started");
        created
    }

    pub(crate) fn wait_served(&self, target: &str) {
        let mut last = None;
        self.d.wait_until(&format!("NGINX to serve {target}"), |_| {
            last = self.try_get(target).map(|r| (r.status, r.text()));
            last.as_ref().is_some_and(|(s, _)| *s == 200)
        });
    }
}

/// RFC 6455 from a bare socket: handshake, one masked text frame, the echo.
fn websocket_echo(p: &Proxied, target: &str, text: &str) -> Result<String, String> {
    websocket_echo_on(p, p.apps, target, text)
}

/// The same on another of NGINX's ports (a `port` instance's own).
pub(crate) fn websocket_echo_on(p: &Proxied, port: u16, target: &str, text: &str) -> Result<String, String> {
    let mut s = connect(port).map_err(|e| e.to_string())?;
    let bearer = p.bearer();
    let request = format!(
        "GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nOrigin: http://127.0.0.1:{port}\r\nAuthorization: {bearer}\r\n\r\n"
    );
    s.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(s.try_clone().unwrap());
    let (status, headers) = read_head(&mut reader).map_err(|e| e.to_string())?;
    if status != 101 {
        return Err(format!("handshake answered {status}"));
    }
    let accept = headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("sec-websocket-accept")).map(|(_, v)| v.clone());
    // The RFC's own example key and accept value.
    if accept.as_deref() != Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=") {
        return Err(format!("bad accept {accept:?}"));
    }
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    let payload = text.as_bytes();
    assert!(payload.len() < 126);
    let mut frame = vec![0x81, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    s.write_all(&frame).map_err(|e| e.to_string())?;
    let mut head = [0u8; 2];
    reader.read_exact(&mut head).map_err(|e| e.to_string())?;
    if head[0] != 0x81 || head[1] & 0x80 != 0 {
        return Err(format!("unexpected frame header {head:?}"));
    }
    let mut data = vec![0u8; (head[1] & 0x7f) as usize];
    reader.read_exact(&mut data).map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&data).into())
}

#[test]
fn an_instance_under_its_subpath_passes_get_upload_websocket_sse_and_raw_paths() {
    let p = start(&[]);
    let created = p.echo_instance("e1", "echo", json!({}));
    assert_eq!(created["url"], format!("{}/app/e1/", p.d.apps_origin()));
    assert_eq!(created["proxy"], "subpath");
    p.wait_served("/app/e1/");

    // GET: prefix stripped, query kept, Host and Origin unchanged, X-Forwarded-* added.
    let r = raw(
        p.apps,
        "GET",
        "/app/e1/some/page?q=1&r=%2F",
        &[("Origin", "http://example.test:1234"), ("Authorization", &p.bearer())],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let echo = r.json();
    assert_eq!(echo["target"], "/some/page?q=1&r=%2F");
    assert_eq!(echo["headers"]["host"], format!("127.0.0.1:{}", p.apps));
    assert_eq!(echo["headers"]["origin"], "http://example.test:1234");
    assert_eq!(echo["headers"]["x-forwarded-prefix"], "/app/e1");
    assert_eq!(echo["headers"]["x-forwarded-host"], format!("127.0.0.1:{}", p.apps));
    assert_eq!(echo["headers"]["x-forwarded-proto"], "http");
    // No upgrade asked, none passed on.
    assert!(echo["headers"]["upgrade"].is_null(), "{echo}");

    // No trailing slash: a relative redirect that keeps the query.
    let r = p.get("/app/e1?x=1");
    assert_eq!(r.status, 301);
    assert_eq!(r.header("location"), Some("/app/e1/?x=1"));

    // %2F reaches the app still encoded.
    let r = p.post("/app/e1/api/userdata/workflows%2Ftest.json", b"{}");
    assert_eq!(r.json()["target"], "/api/userdata/workflows%2Ftest.json");

    // A 50 MB upload arrives whole.
    let big = vec![b'x'; 50 * 1024 * 1024];
    let r = p.post("/app/e1/upload", &big);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["bytes"], 50 * 1024 * 1024);

    // WebSocket upgrade and echo.
    assert_eq!(websocket_echo(&p, "/app/e1/ws?clientId=1", "hello aikore").unwrap(), "hello aikore");

    // SSE: the first event arrives while the app is still sending (no buffering).
    let mut s = connect(p.apps).unwrap();
    s.write_all(
        format!(
            "GET /app/e1/events/sse HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nAccept: text/event-stream\r\nAuthorization: {}\r\n\r\n",
            p.apps,
            p.bearer()
        )
        .as_bytes(),
    )
    .unwrap();
    let began = Instant::now();
    let mut reader = BufReader::new(s);
    let (status, headers) = read_head(&mut reader).unwrap();
    assert_eq!(status, 200);
    assert!(
        headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("content-type") && v.starts_with("text/event-stream")),
        "{headers:?}"
    );
    let mut seen = Vec::new();
    let mut line = String::new();
    while seen.len() < 3 {
        line.clear();
        if reader.read_line(&mut line).unwrap() == 0 {
            break;
        }
        if let Some(i) = line.find("data: event ") {
            seen.push((line[i..].trim().to_string(), began.elapsed()));
        }
    }
    assert_eq!(
        seen.iter().map(|s| s.0.as_str()).collect::<Vec<_>>(),
        ["data: event 0", "data: event 1", "data: event 2"]
    );
    // The app spaces them 0.5 s apart; buffered, all three would land together at the end.
    assert!(seen[2].1 - seen[0].1 >= Duration::from_millis(700), "{seen:?}");

    // The dashboard is still at / and the API says the route is live.
    let r = p.get("/healthz");
    assert!(r.text().contains("\"status\":\"ok\""), "{}", r.text());
    let (_, proxy) = p.d.get("/api/v1/proxy");
    assert_eq!(proxy["ok"], true, "{proxy}");
    assert!(proxy["routes"].as_array().unwrap().iter().any(|r| r["name"] == "e1" && r["action"] == "proxy"), "{proxy}");
    // Unknown instances get a 404 page, never the dashboard.
    let r = p.get("/app/nobody/");
    assert_eq!(r.status, 404);
    assert!(r.text().contains("No such instance"));
}

#[test]
fn the_comfyui_slot_takes_comfyuis_absolute_paths_and_keeps_the_dashboard() {
    let p = start(&[]);
    // Nobody holds the slot: a clear 503 page, not the dashboard.
    let r = p.post("/prompt", b"{}");
    assert_eq!(r.status, 503);
    assert!(r.header("content-type").is_some_and(|t| t.starts_with("text/html")));
    assert!(r.text().contains("No instance holds the ComfyUI slot"), "{}", r.text());
    assert_eq!(p.get("/comfyui/").status, 503);

    let created = p.echo_instance("comfy", "echo", json!({ "active_slot": "comfyui" }));
    assert_eq!(created["url"], format!("{}/comfyui/", p.d.apps_origin()));
    p.wait_served("/comfyui/");

    for (target, want) in [
        ("/comfyui/api/userdata/workflows%2Ftest.json", "/api/userdata/workflows%2Ftest.json"),
        ("/api/userdata/workflows%2Ftest.json", "/api/userdata/workflows%2Ftest.json"),
        ("/userdata/workflows%2Ftest.json", "/userdata/workflows%2Ftest.json"),
        ("/prompt", "/prompt"),
        ("/upload/image", "/upload/image"),
        ("/app/comfy/prompt", "/prompt"),
    ] {
        let r = p.post(target, b"{\"prompt\":{}}");
        assert_eq!(r.status, 200, "{target}: {}", r.text());
        assert_eq!(r.json()["target"], want, "{target}");
    }
    let r = p.get("/comfyui/x");
    assert_eq!(r.json()["headers"]["x-forwarded-prefix"], "/comfyui");
    assert_eq!(p.get("/comfyui").header("location"), Some("/comfyui/"));
    assert_eq!(websocket_echo(&p, "/ws?clientId=abc", "queue").unwrap(), "queue");

    // aikore's own API and dashboard still answer at / and /api/v1/.
    assert!(p.get("/healthz").text().contains("\"status\":\"ok\""));
    let r = p.get("/api/v1/instances/comfy");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["url"], format!("{}/comfyui/", p.d.apps_origin()));

    // The slot holder stops: the slot paths answer 503 again, naming it.
    // (NGINX's "not answering" page may show for the moment between the exit and the new routes.)
    p.d.post("/api/v1/instances/comfy/stop");
    p.d.wait_until("/prompt to say the holder is not running", |_| {
        p.try_get("/prompt")
            .is_some_and(|r| r.status == 503 && r.text().contains("comfy holds the ComfyUI slot but is not running"))
    });
}

#[test]
fn stopping_an_instance_takes_its_route_down_within_a_second_or_two() {
    let p = start(&[]);
    p.echo_instance("short", "echo", json!({}));
    p.wait_served("/app/short/");
    p.d.post("/api/v1/instances/short/stop");
    p.d.wait_status("short", "stopped");
    let stopped_at = Instant::now();
    let mut last = None;
    while stopped_at.elapsed() < Duration::from_secs(3) {
        last = p.try_get("/app/short/").map(|r| (r.status, r.text()));
        // The app is gone at once ("not answering" 503); the route follows within the debounce and a reload.
        if last.as_ref().is_some_and(|(s, t)| *s == 503 && t.contains("is not running")) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, text) = last.unwrap();
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("Instance short is not running"), "{text}");

    // Starting it again brings the route back.
    p.d.post("/api/v1/instances/short/start");
    p.wait_served("/app/short/");
}

#[test]
fn a_rejected_render_keeps_the_live_config_serving_and_reports_why() {
    let scratch = tempfile::tempdir().unwrap();
    let extra = scratch.path().join("extra.conf");
    let p = start(&[("AIKORE_PROXY_EXTRA_FILE", extra.to_str().unwrap())]);
    p.echo_instance("keep", "echo", json!({}));
    p.wait_served("/app/keep/");

    std::fs::write(&extra, "bogus_directive on;\n").unwrap();
    let (code, status) = p.d.post("/api/v1/proxy/render");
    assert_eq!(code, 200, "{status}");
    assert_eq!(status["ok"], false, "{status}");
    assert!(status["error"].as_str().unwrap().contains("bogus_directive"), "{status}");
    // The previous config still serves.
    assert_eq!(p.get("/app/keep/x").json()["target"], "/x");
    assert_eq!(p.d.unit("nginx")["status"], "started");
    // A new instance cannot go live while renders fail; the old routes stay.
    p.echo_instance("late", "echo", json!({}));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(p.get("/app/late/").status, 404);
    assert_eq!(p.get("/app/keep/").status, 200);
    let (_, journal) = p.d.get("/api/v1/journal?unit=nginx&limit=100");
    assert!(
        journal
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "error" && e["detail"].as_str().unwrap().contains("bogus_directive")),
        "{journal}"
    );

    std::fs::remove_file(&extra).unwrap();
    let (_, status) = p.d.post("/api/v1/proxy/render");
    assert_eq!(status["ok"], true, "{status}");
    assert!(status["error"].is_null());
    p.wait_served("/app/late/");
}

#[test]
fn a_port_instance_is_fronted_by_nginx_on_its_own_port() {
    let p = start(&[]);
    p.echo_instance("direct", "echo-port", json!({}));
    let (_, view) = p.d.get("/api/v1/instances/direct");
    assert_eq!(view["proxy"], "port");
    let port = view["current_port"].as_u64().unwrap() as u16;
    assert_eq!(view["direct_port"], port);
    // The API points at the instance's own port, on the host the client used.
    assert_eq!(view["url"], format!("http://127.0.0.1:{port}/"));
    assert_eq!(view["app_url"], format!("http://127.0.0.1:{port}/"));
    // NGINX's server there passes the raw target to the app, with the bearer.
    let bearer = p.bearer();
    let mut r = None;
    p.d.wait_until("NGINX to serve the instance's port", |_| {
        r = raw(port, "GET", "/x%2Fy", &[("Authorization", &bearer)], b"").ok();
        r.as_ref().is_some_and(|r| r.status == 200)
    });
    assert_eq!(r.unwrap().json()["target"], "/x%2Fy");
    // The apps origin's /app/<name>/ redirects there. (Its new server above
    // is only served by the new workers; on the apps port, workers of the
    // config before the reload may still answer for a moment under load.)
    let mut r = p.get("/app/direct/a?b=1");
    p.d.wait_until("the redirect route", |_| {
        r = p.get("/app/direct/a?b=1");
        r.status == 302
    });
    assert_eq!(r.header("location"), Some(format!("http://127.0.0.1:{port}/a?b=1").as_str()));
    // WebSocket upgrades pass.
    assert_eq!(websocket_echo_on(&p, port, "/ws", "hello").as_deref(), Ok("hello"));
    // Told to listen on loopback, served at the root of its port (no /app/<name> prefix).
    let log = p.d.unit_log("direct");
    assert!(log.contains("env: WEBUI_HOST=127.0.0.1 INSTANCE_URL_PATH=[]"), "{log}");
}

/// A `port` instance whose public port another process holds gets no server
/// there (NGINX's reload would fail, and every later route change with it):
/// the status says so, a start says why, and NGINX goes on taking changes.
#[test]
fn a_port_another_process_holds_gets_no_server_and_nginx_keeps_reloading() {
    let p = start(&[]);
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = squatter.local_addr().unwrap().port();
    let (code, body) =
        p.d.post_json("/api/v1/instances", json!({ "name": "squatted", "blueprint": "echo-port", "port": taken }));
    assert_eq!(code, 201, "{body}");
    let why = format!("port {taken} of instance squatted is in use by another process");
    let mut status = Value::Null;
    p.d.wait_until("the proxy to report the taken port", |d| {
        status = d.get("/api/v1/proxy").1;
        status["error"].as_str().is_some_and(|e| e.contains(&why))
    });
    assert_eq!(status["ok"], false, "{status}");
    let (code, _) = p.d.post("/api/v1/instances/squatted/start");
    assert!(code < 500, "{code}");
    let mut unit = Value::Null;
    p.d.wait_until("the start to be refused", |d| {
        unit = d.unit("squatted");
        unit["status"] == "failed" || unit["status"] == "error"
    });
    let detail = unit["detail"].as_str().unwrap_or("");
    assert!(detail.contains(&format!("port {taken} is already in use by another process")), "{unit}");
    // NGINX still takes route changes.
    p.echo_instance("after", "echo", json!({}));
    p.wait_served("/app/after/");
    // The port freed, the next render gives it its server (the "not running" page).
    drop(squatter);
    let (_, status) = p.d.post("/api/v1/proxy/render");
    assert_eq!(status["ok"], true, "{status}");
    p.d.wait_until("NGINX on the freed port", |_| {
        raw(taken, "GET", "/", &[], b"").is_ok_and(|r| r.status == 503 && r.text().contains("not running"))
    });
}

#[test]
fn apps_sit_behind_the_login_unless_shared() {
    let p = start(&[]);
    p.echo_instance("guarded", "echo", json!({}));
    p.wait_served("/app/guarded/");
    // No credentials: an API client gets 401, a browser is sent through the
    // dashboard's login (the handshake back to the apps origin).
    let r = raw(p.apps, "GET", "/app/guarded/x", &[], b"").unwrap();
    assert_eq!(r.status, 401);
    let r = raw(p.apps, "GET", "/app/guarded/x", &[("Accept", "text/html")], b"").unwrap();
    assert_eq!(r.status, 303);
    assert_eq!(
        r.header("location"),
        Some(format!("http://127.0.0.1:{}/app-login?next=%2Fapp%2Fguarded%2Fx", p.port).as_str())
    );
    let r = raw(p.apps, "GET", "/app/guarded/x", &[("Authorization", "Bearer wrong")], b"").unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(p.get("/app/guarded/x").status, 200);
    // A deliberate share opens it without login.
    let (code, body) = p.d.put_json("/api/v1/instances/guarded/public", json!({ "public": true }));
    assert_eq!(code, 200, "{body}");
    let r = raw(p.apps, "GET", "/app/guarded/x", &[], b"").unwrap();
    assert_eq!(r.status, 200);
}
