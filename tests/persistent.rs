//! Persistent mode end to end, with the real parts: Debian's Xvnc,
//! websockify, noVNC and Firefox ESR inside the instance's unit, NGINX in
//! front with the dashboard's login, xdotool reading what the display shows.
//! The app is the `test-http` blueprint serving an index.html with a known
//! title from the instance dir.

use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::{free_port, processes_with_env, read_head, Daemon, Options};

/// Display numbers are leased per daemon: two test daemons starting X
/// servers at the same moment could pick the same free number.
static DISPLAYS: Mutex<()> = Mutex::new(());

/// Firefox's first start on a busy 2-core CI machine takes a while.
const BROWSER_PATIENCE: Duration = Duration::from_secs(90);

const TITLE: &str = "AiKore persistent page 7f3a";

fn need_tools() {
    for (tool, package) in [
        ("Xvnc", "tigervnc-standalone-server"),
        ("websockify", "websockify"),
        ("firefox-esr", "firefox-esr"),
        ("xdotool", "xdotool"),
        ("matchbox-window-manager", "matchbox-window-manager"),
    ] {
        let found = Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output().map(|o| o.status.success());
        assert!(
            found.unwrap_or(false),
            "{tool} must be installed for this test (Debian package {package}; .ci/run installs it)"
        );
    }
    assert!(Path::new("/usr/share/novnc/vnc.html").exists(), "noVNC must be installed (Debian package novnc)");
}

struct Proxied {
    d: Daemon,
    port: u16,
    /// The apps origin's port: /vnc/ is served there.
    apps: u16,
}

fn start() -> Proxied {
    need_tools();
    let port = free_port();
    let mut options = Options::default();
    options.env.push(("AIKORE_PORT".into(), port.to_string()));
    let stock = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("units/nginx.service")).unwrap();
    let d = Daemon::start_with(&[("nginx.service", &stock)], options);
    let u = d.wait_status("nginx", "started");
    assert!(u["detail"].is_null(), "NGINX must be installed for this test: {u}");
    let apps = d.apps_port;
    let p = Proxied { d, port, apps };
    p.d.wait_until("NGINX to serve the dashboard", |_| get(p.port, "/healthz", &[]).is_ok_and(|r| r.0 == 200));
    p
}

/// (status, headers, body) of one response.
type Reply = (u16, Vec<(String, String)>, String);

/// (status, headers, body) of one GET through NGINX.
fn get(port: u16, target: &str, headers: &[(&str, &str)]) -> std::io::Result<Reply> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut head = format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    let mut reader = BufReader::new(s);
    let (status, headers) = read_head(&mut reader)?;
    let mut body = Vec::new();
    reader.read_to_end(&mut body)?;
    Ok((status, headers, String::from_utf8_lossy(&body).into()))
}

/// A viewer: opens noVNC's WebSocket through NGINX, reads the VNC server's
/// greeting (the RFB version, in websockify's first binary frame), closes.
fn vnc_greeting(p: &Proxied, name: &str) -> Result<String, String> {
    let mut s = TcpStream::connect(("127.0.0.1", p.apps)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let req = format!(
        "GET /vnc/{name}/websockify HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: binary\r\nOrigin: http://127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n\r\n",
        port = p.apps,
        token = p.d.token
    );
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(s);
    let (status, _) = read_head(&mut reader).map_err(|e| e.to_string())?;
    if status != 101 {
        return Err(format!("upgrade answered {status}"));
    }
    let mut head = [0u8; 2];
    reader.read_exact(&mut head).map_err(|e| e.to_string())?;
    let len = usize::from(head[1] & 0x7f);
    if len >= 126 {
        return Err(format!("unexpected frame header {head:?}"));
    }
    let mut payload = vec![0u8; len];
    reader.read_exact(&mut payload).map_err(|e| e.to_string())?;
    // A masked close frame (opcode 8, empty), then the connection drops.
    let mut s = reader.into_inner();
    let _ = s.write_all(&[0x88, 0x80, 1, 2, 3, 4]);
    drop(s);
    Ok(String::from_utf8_lossy(&payload).into())
}

fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

fn environ_has(pid: i32, entry: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/environ"))
        .map(|env| env.split(|b| *b == 0).any(|v| v == entry.as_bytes()))
        .unwrap_or(false)
}

/// The unit's live processes: both markers, this daemon's and the unit's.
fn unit_processes(d: &Daemon, unit: &str) -> Vec<(i32, String)> {
    let mine = d.marked_processes();
    processes_with_env(&format!("AIKORE_UNIT={unit}"))
        .into_iter()
        .filter(|pid| mine.contains(pid))
        .map(|pid| (pid, cmdline(pid)))
        .collect()
}

fn program(cmd: &str) -> String {
    let first = cmd.split(' ').next().unwrap_or("");
    first.rsplit('/').next().unwrap_or(first).to_string()
}

/// The first process running `prog`, directly or as an interpreter's script
/// (Debian's websockify is a Python script); Firefox's content processes
/// (`-contentproc`) are not Firefox's main process.
fn find(procs: &[(i32, String)], prog: &str) -> Option<i32> {
    procs
        .iter()
        .find(|(_, c)| {
            let script = c.split(' ').nth(1).map(|a| a.rsplit('/').next().unwrap_or(a)) == Some(prog);
            (program(c) == prog || script) && !c.contains("-contentproc")
        })
        .map(|(p, _)| *p)
}

/// The display number the unit's Xvnc serves.
fn display_of(procs: &[(i32, String)]) -> u16 {
    let xvnc = procs.iter().find(|(_, c)| program(c) == "Xvnc").expect("an Xvnc process").1.clone();
    xvnc.split(' ')
        .nth(1)
        .and_then(|a| a.strip_prefix(':'))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("display in {xvnc:?}"))
}

/// Window names on the display that contain `needle`.
fn windows_named(display: u16, needle: &str) -> Vec<String> {
    let out = Command::new("xdotool")
        .args(["search", "--name", needle])
        .env("DISPLAY", format!(":{display}"))
        .output()
        .expect("xdotool");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|id| {
            let o = Command::new("xdotool")
                .args(["getwindowname", id.trim()])
                .env("DISPLAY", format!(":{display}"))
                .output()
                .ok()?;
            Some(String::from_utf8_lossy(&o.stdout).trim().to_string())
        })
        .filter(|n| n.contains(needle))
        .collect()
}

fn wait_for<T>(d: &Daemon, what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check() {
            return v;
        }
        if Instant::now() > deadline {
            panic!(
                "timed out waiting for {what}\n--- unit log ---\n{}\n--- daemon log ---\n{}",
                d.unit_log("pv"),
                d.daemon_log()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn cgroup_of(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default()
}

#[test]
fn a_persistent_instance_runs_display_vnc_and_browser_in_its_unit() {
    let _one = DISPLAYS.lock().unwrap_or_else(|e| e.into_inner());
    let p = start();
    let d = &p.d;
    let (code, body) =
        d.post_json("/api/v1/instances", json!({ "name": "pv", "blueprint": "test-http", "persistent_mode": true }));
    assert_eq!(code, 201, "{body}");
    let dir = d.data_dir.join("instances/pv");
    std::fs::write(
        dir.join("index.html"),
        format!("<!doctype html><html><head><title>{TITLE}</title></head><body><h1>{TITLE}</h1></body></html>"),
    )
    .unwrap();
    assert!(std::fs::read_to_string(d.data_dir.join("units/pv.instance")).unwrap().contains("PersistentMode=yes"));

    // The API points View/Open at noVNC on the display.
    let (_, view) = d.get("/api/v1/instances/pv");
    let vnc_full = view["vnc_url"].as_str().expect("vnc_url").to_string();
    assert_eq!(view["url"], vnc_full, "{view}");
    // A full URL on the apps origin; the path is what NGINX serves there.
    let vnc_url = vnc_full.strip_prefix(&d.apps_origin()).expect("on the apps origin").to_string();
    assert!(
        vnc_url.starts_with("/vnc/pv/vnc.html?")
            && vnc_url.contains("path=vnc/pv/websockify")
            && vnc_url.contains("resize=remote"),
        "{vnc_url}"
    );
    assert_eq!(view["app_url"], format!("{}/app/pv/", d.apps_origin()));

    // Stopped: the viewer's address answers a "not running" page.
    wait_for(d, "the /vnc/pv/ route", Duration::from_secs(20), || {
        get(p.apps, "/vnc/pv/vnc.html", &[("Authorization", &format!("Bearer {}", d.token))])
            .ok()
            .filter(|r| r.0 == 503)
    });

    let (code, body) = d.post("/api/v1/instances/pv/start");
    assert_eq!(code, 200, "{body}");
    // Started means the app answers (readiness is its port, not the display's).
    let unit = d.wait_status("pv", "started");
    let main_pid = unit["pid"].as_i64().unwrap() as i32;

    // Xvnc, websockify, the app and (once the app answered) Firefox: all in the unit.
    let procs = wait_for(d, "Firefox in the unit", BROWSER_PATIENCE, || {
        let procs = unit_processes(d, "pv");
        find(&procs, "firefox-esr").map(|_| procs)
    });
    let display = display_of(&procs);
    assert!(find(&procs, "websockify").is_some(), "{procs:?}");
    assert!(procs.iter().any(|(_, c)| c.contains("http.server")), "the app: {procs:?}");
    let firefox = find(&procs, "firefox-esr").unwrap();
    assert!(cmdline(firefox).contains("--kiosk"), "{}", cmdline(firefox));
    assert!(cmdline(firefox).contains(&format!("{}/.firefox-profile", dir.display())), "{}", cmdline(firefox));
    for (pid, _) in &procs {
        // A short-lived helper (Firefox forks a few) may be gone, or a zombie
        // with no environ, by now: only the living are checked.
        let has = environ_has(*pid, &format!("DISPLAY=:{display}"));
        if !has && cmdline(*pid).is_empty() {
            continue;
        }
        assert!(has, "pid {pid} ({}) lacks DISPLAY", cmdline(*pid));
    }
    let (_, health) = d.get("/healthz");
    if health["tracking"] == "cgroup" {
        let cg = cgroup_of(main_pid);
        for (pid, c) in &procs {
            assert_eq!(cgroup_of(*pid), cg, "{pid} {c} is outside the unit's cgroup");
        }
    }
    assert!(Path::new(&format!("/tmp/.X{display}-lock")).exists());

    // The display shows the app's page: Firefox's window is titled by it.
    wait_for(d, "Firefox to show the app's page", BROWSER_PATIENCE, || {
        let names = windows_named(display, TITLE);
        (!names.is_empty()).then_some(names)
    });

    // noVNC through NGINX, behind the login.
    let (code, headers, _) = get(p.apps, "/vnc/pv/vnc.html", &[]).unwrap();
    assert_eq!(code, 401, "no credentials");
    let (code, headers2, _) = get(p.apps, "/vnc/pv/vnc.html", &[("Accept", "text/html")]).unwrap();
    assert_eq!(code, 303, "a browser without a session goes through the dashboard's login: {headers:?}");
    assert!(
        headers2.iter().any(|(k, v)| k.eq_ignore_ascii_case("location") && v.contains("/app-login?next=")),
        "{headers2:?}"
    );
    let bearer = format!("Bearer {}", d.token);
    let (code, _, page) = get(p.apps, &vnc_url, &[("Authorization", &bearer)]).unwrap();
    assert_eq!(code, 200, "{page}");
    assert!(page.contains("noVNC"), "{page}");
    let (code, _, _) = get(p.apps, "/vnc/pv/app/ui.js", &[("Authorization", &bearer)]).unwrap();
    assert_eq!(code, 200, "noVNC's scripts load relative to the page");
    // A wrong token is refused like none.
    let (code, _, _) = get(p.apps, "/vnc/pv/vnc.html", &[("Authorization", "Bearer wrong")]).unwrap();
    assert_eq!(code, 401);

    // Viewers come and go; Firefox stays, on the same page.
    for _ in 0..2 {
        let greeting =
            vnc_greeting(&p, "pv").unwrap_or_else(|e| panic!("VNC through NGINX: {e}\n{}", d.unit_log("pv")));
        assert!(greeting.starts_with("RFB 003."), "{greeting:?}");
    }
    std::thread::sleep(Duration::from_secs(1));
    let after = unit_processes(d, "pv");
    assert_eq!(find(&after, "firefox-esr"), Some(firefox), "Firefox must survive viewer disconnects: {after:?}");
    assert!(!windows_named(display, TITLE).is_empty(), "the page is still shown after the viewers left");

    // Stop: no X, VNC, websockify or Firefox process, no lock or socket.
    let (code, body) = d.post("/api/v1/instances/pv/stop");
    assert_eq!(code, 200, "{body}");
    d.wait_status("pv", "stopped");
    let left = unit_processes(d, "pv");
    assert!(left.is_empty(), "left behind: {left:?}");
    assert!(!Path::new(&format!("/tmp/.X{display}-lock")).exists(), "lock file left");
    assert!(!Path::new(&format!("/tmp/.X11-unix/X{display}")).exists(), "X socket left");

    // A dead X server's leftovers on its display are cleaned before reuse,
    // and the restart gets the same display back.
    std::fs::write(format!("/tmp/.X{display}-lock"), format!("{:>10}\n", 9_999_999)).unwrap();
    let _ = std::fs::create_dir_all("/tmp/.X11-unix");
    std::fs::write(format!("/tmp/.X11-unix/X{display}"), "").unwrap();
    let (code, body) = d.post("/api/v1/instances/pv/start");
    assert_eq!(code, 200, "{body}");
    d.wait_status("pv", "started");
    let procs = unit_processes(d, "pv");
    assert_eq!(display_of(&procs), display, "the display is stable across restarts");
    let lock = std::fs::read_to_string(format!("/tmp/.X{display}-lock")).unwrap_or_default();
    let xvnc = procs.iter().find(|(_, c)| program(c) == "Xvnc").unwrap().0;
    assert_eq!(lock.trim(), xvnc.to_string(), "the new Xvnc owns the lock");

    // The daemon's own shutdown takes it all down too.
    let mut p = p;
    p.d.terminate();
    let left: Vec<i32> = processes_with_env(&format!("AIKORE_DATA_DIR={}", p.d.data_dir.display()));
    assert!(left.is_empty(), "left behind after shutdown: {:?}", left.iter().map(|p| cmdline(*p)).collect::<Vec<_>>());
    assert!(!Path::new(&format!("/tmp/.X{display}-lock")).exists(), "lock file left after shutdown");
}

#[test]
fn a_gui_blueprint_draws_on_the_display_without_a_browser() {
    let _one = DISPLAYS.lock().unwrap_or_else(|e| e.into_inner());
    need_tools();
    let d = Daemon::start(&[]);
    let dir = d.data_dir.join("blueprints");
    std::fs::create_dir_all(&dir).unwrap();
    // A GUI app: xmessage (x11-utils) opens a window on $DISPLAY.
    std::fs::write(
        dir.join("gui.sh"),
        "#!/usr/bin/env bash\n### AIKORE-METADATA-START ###\n# aikore.name = GUI\n# aikore.category = Testing\n# aikore.description = x\n# aikore.venv_type = none\n# aikore.proxy = subpath\n# aikore.persistent_mode = true\n### AIKORE-METADATA-END ###\necho \"gui on $DISPLAY\"\nexec xmessage -name aikore-gui-test 'hello from the GUI app'\n",
    )
    .unwrap();
    let (code, body) = d.post_json("/api/v1/instances", json!({ "name": "gui", "blueprint": "gui", "start": true }));
    assert_eq!(code, 201, "{body}");
    assert_eq!(body["persistent_mode"], true, "the blueprint's metadata turns persistent mode on: {body}");
    // Ready once its display can be viewed (it serves no page).
    d.wait_status("gui", "started");
    let procs = wait_for(&d, "xmessage on the display", Duration::from_secs(30), || {
        let procs = unit_processes(&d, "gui");
        procs.iter().any(|(_, c)| program(c) == "xmessage").then_some(procs)
    });
    let display = display_of(&procs);
    assert!(d.unit_output("gui").contains(&format!("gui on :{display}")), "{}", d.unit_output("gui"));
    assert!(find(&procs, "firefox-esr").is_none(), "no browser for a GUI app: {procs:?}");
    wait_for(&d, "the GUI window", Duration::from_secs(20), || {
        let out = Command::new("xdotool")
            .args(["search", "--classname", "aikore-gui-test"])
            .env("DISPLAY", format!(":{display}"))
            .output()
            .ok()?;
        (!out.stdout.is_empty()).then_some(())
    });
    let (code, _) = d.post("/api/v1/instances/gui/stop");
    assert_eq!(code, 200);
    d.wait_status("gui", "stopped");
    assert!(unit_processes(&d, "gui").is_empty());
    assert!(!Path::new(&format!("/tmp/.X{display}-lock")).exists());
}

#[test]
fn two_persistent_instances_get_distinct_displays_and_a_plain_one_none() {
    let _one = DISPLAYS.lock().unwrap_or_else(|e| e.into_inner());
    need_tools();
    let d = Daemon::start(&[]);
    for (name, persistent) in [("a", true), ("b", true), ("plain", false)] {
        let (code, body) = d.post_json(
            "/api/v1/instances",
            json!({ "name": name, "blueprint": "test-http", "persistent_mode": persistent }),
        );
        assert_eq!(code, 201, "{body}");
    }
    for name in ["a", "b", "plain"] {
        assert_eq!(d.post(&format!("/api/v1/instances/{name}/start")).0, 200);
    }
    for name in ["a", "b", "plain"] {
        d.wait_status(name, "started");
    }
    let da = display_of(&unit_processes(&d, "a"));
    let db = display_of(&unit_processes(&d, "b"));
    assert_ne!(da, db);
    assert!(unit_processes(&d, "plain").iter().all(|(_, c)| program(c) != "Xvnc"));
    let (_, plain) = d.get("/api/v1/instances/plain");
    assert!(plain["vnc_url"].is_null() && plain["url"] == format!("{}/app/plain/", d.apps_origin()), "{plain}");
    for name in ["a", "b"] {
        assert_eq!(d.post(&format!("/api/v1/instances/{name}/stop")).0, 200);
        d.wait_status(name, "stopped");
    }
    for disp in [da, db] {
        assert!(!Path::new(&format!("/tmp/.X{disp}-lock")).exists());
    }
}
