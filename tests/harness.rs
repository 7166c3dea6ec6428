//! A running `aikore serve` for a test: temp data dir, unit files, a free port,
//! a deadline that kills a hung daemon, and cleanup of every process it left.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_aikore");

/// Generous: CI machines have 2 cores shared with the build.
pub const PATIENCE: Duration = Duration::from_secs(20);

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// 20 ports of our own per daemon, below the kernel's ephemeral range
/// (32768 and up, where `free_port` and every client socket land), handed
/// out in order: parallel daemons in this test process never share a port
/// with each other or with a `free_port`. A slice from the ephemeral range
/// once let another test's listener take an instance's leased port between
/// the lease and the app's bind (its route then reached the wrong app).
fn port_slice() -> String {
    use std::sync::atomic::{AtomicU16, Ordering};
    const FIRST: u16 = 20_000;
    const SLICES: u16 = 600;
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let first = FIRST + (NEXT.fetch_add(1, Ordering::Relaxed) % SLICES) * 20;
    format!("{first}-{}", first + 19)
}

pub struct Daemon {
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub url: String,
    /// The canonical data dir (the marker units carry).
    pub data_dir: PathBuf,
    /// The daemon's AIKORE_API_TOKEN: every request and CLI call sends it,
    /// as a bearer, so tests talk to the API past the login gate.
    pub token: String,
    /// NGINX's apps origin port (AIKORE_APPS_PORT): a free one per daemon
    /// unless the test's options give one.
    pub apps_port: u16,
    agent: ureq::Agent,
}

/// A token unique to one daemon (no randomness needed: uniqueness is enough
/// for a test on loopback).
fn test_token() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("test-{}-{}-{nanos}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

#[derive(Clone)]
pub struct Options {
    pub env: Vec<(String, String)>,
    /// Wrap the daemon, e.g. `unshare --pid --fork --mount-proc`.
    pub wrapper: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        let blueprints = Path::new(env!("CARGO_MANIFEST_DIR")).join("blueprints");
        Options {
            env: vec![
                ("AIKORE_SHUTDOWN_TIMEOUT".into(), "15s".into()),
                ("AIKORE_BLUEPRINTS_DIR".into(), blueprints.display().to_string()),
                // Tests run in parallel: give each daemon its own slice of ports.
                ("AIKORE_PORT_RANGE".into(), port_slice()),
            ],
            wrapper: Vec::new(),
        }
    }
}

pub fn write_units(dir: &Path, units: &[(&str, &str)]) {
    std::fs::create_dir_all(dir).expect("units dir");
    for (file, text) in units {
        std::fs::write(dir.join(file), text).expect("unit file");
    }
}

impl Daemon {
    pub fn start(units: &[(&str, &str)]) -> Daemon {
        Daemon::start_with(units, Options::default())
    }

    pub fn start_with(units: &[(&str, &str)], options: Options) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let data_dir = dir.path().join("data");
        std::fs::create_dir_all(&data_dir).expect("data dir");
        let data_dir = std::fs::canonicalize(&data_dir).expect("canonical");
        write_units(&dir.path().join("stock"), units);
        let mut daemon = Daemon {
            child: None,
            url: String::new(),
            data_dir,
            dir,
            token: test_token(),
            apps_port: 0,
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(30)))
                .build()
                .new_agent(),
        };
        daemon.spawn(options);
        daemon
    }

    /// Starts (again) on the same data dir.
    pub fn spawn(&mut self, options: Options) {
        let port = free_port();
        self.url = format!("http://127.0.0.1:{port}");
        let mut argv: Vec<String> = options.wrapper.clone();
        argv.push(BIN.into());
        argv.extend(
            [
                "serve",
                "--data-dir",
                self.data_dir.to_str().unwrap(),
                "--units-dir",
                self.dir.path().join("stock").to_str().unwrap(),
                "--listen",
                &format!("127.0.0.1:{port}"),
            ]
            .map(String::from),
        );
        let log = std::fs::File::create(self.dir.path().join(format!("daemon-{port}.log"))).expect("daemon log");
        if let Some((_, token)) = options.env.iter().find(|(k, _)| k == "AIKORE_API_TOKEN") {
            self.token = token.clone();
        }
        self.apps_port = match options.env.iter().find(|(k, _)| k == "AIKORE_APPS_PORT") {
            Some((_, port)) => port.parse().expect("AIKORE_APPS_PORT"),
            None if self.apps_port != 0 => self.apps_port,
            None => free_port(),
        };
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .env("AIKORE_API_TOKEN", &self.token)
            .env_remove("AIKORE_PASSWORD")
            .env_remove("AIKORE_METRICS_AUTH")
            .env_remove("AIKORE_APPS_URL")
            .env_remove("AIKORE_PUBLIC_URL")
            .env("AIKORE_APPS_PORT", self.apps_port.to_string())
            .envs(options.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("AIKORE_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        self.child = Some(cmd.spawn().expect("spawn aikore"));
        self.wait_until("the daemon answers /healthz", |d| d.get("/healthz").0 == 200);
    }

    /// The apps origin as the API reports it to a client of `self.url`.
    pub fn apps_origin(&self) -> String {
        format!("http://127.0.0.1:{}", self.apps_port)
    }

    pub fn daemon_log(&self) -> String {
        let mut out = String::new();
        for entry in std::fs::read_dir(self.dir.path()).unwrap().flatten() {
            if entry.file_name().to_string_lossy().starts_with("daemon-") {
                out.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
            }
        }
        out
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    fn request(&self, method: &str, path: &str) -> (u16, Value) {
        self.request_body(method, path, None)
    }

    fn request_body(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let url = format!("{}{}", self.url, path);
        let text = body.map(|b| b.to_string());
        let bearer = format!("Bearer {}", self.token);
        let result = match (method, text) {
            ("POST", None) => self.agent.post(&url).header("Authorization", &bearer).send_empty(),
            ("POST", Some(t)) => {
                self.agent.post(&url).header("Authorization", &bearer).content_type("application/json").send(t)
            }
            ("PATCH", Some(t)) => {
                self.agent.patch(&url).header("Authorization", &bearer).content_type("application/json").send(t)
            }
            ("PUT", Some(t)) => {
                self.agent.put(&url).header("Authorization", &bearer).content_type("application/json").send(t)
            }
            ("DELETE", _) => self.agent.delete(&url).header("Authorization", &bearer).call(),
            _ => self.agent.get(&url).header("Authorization", &bearer).call(),
        };
        match result {
            Ok(mut response) => {
                let status = response.status().as_u16();
                let body = response.body_mut().read_to_string().unwrap_or_default();
                (status, serde_json::from_str(&body).unwrap_or(Value::String(body)))
            }
            Err(_) => (0, Value::Null),
        }
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        self.request("GET", path)
    }

    pub fn post(&self, path: &str) -> (u16, Value) {
        self.request("POST", path)
    }

    pub fn post_json(&self, path: &str, body: Value) -> (u16, Value) {
        self.request_body("POST", path, Some(&body))
    }

    pub fn patch_json(&self, path: &str, body: Value) -> (u16, Value) {
        self.request_body("PATCH", path, Some(&body))
    }

    pub fn put_json(&self, path: &str, body: Value) -> (u16, Value) {
        self.request_body("PUT", path, Some(&body))
    }

    pub fn delete(&self, path: &str) -> (u16, Value) {
        self.request("DELETE", path)
    }

    pub fn unit(&self, name: &str) -> Value {
        let (status, body) = self.get(&format!("/api/v1/units/{name}"));
        assert_eq!(status, 200, "GET unit {name}: {body}");
        body
    }

    /// Polls until `check` holds; panics with the daemon's log after PATIENCE.
    pub fn wait_until(&self, what: &str, mut check: impl FnMut(&Daemon) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            if check(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("timed out waiting for {what}\n--- daemon log ---\n{}", self.daemon_log());
    }

    pub fn wait_status(&self, unit: &str, status: &str) -> Value {
        let mut last = Value::Null;
        self.wait_until(&format!("{unit} to be {status}"), |d| {
            last = d.unit(unit);
            last["status"] == status
        });
        last
    }

    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(BIN)
            .args(args)
            .env("AIKORE_URL", &self.url)
            .env("AIKORE_API_TOKEN", &self.token)
            .output()
            .expect("run the CLI")
    }

    pub fn unit_log(&self, unit: &str) -> String {
        std::fs::read_to_string(self.data_dir.join("logs").join(format!("{unit}.log"))).unwrap_or_default()
    }

    /// What the unit's processes printed: its log without aikore's own
    /// `[aikore] ...` lines (which quote the command line).
    pub fn unit_output(&self, unit: &str) -> String {
        self.unit_log(unit).lines().filter(|l| !l.starts_with("[aikore]")).map(|l| format!("{l}\n")).collect()
    }

    /// Every live process carrying this daemon's data-dir marker.
    pub fn marked_processes(&self) -> Vec<i32> {
        processes_with_env(&format!("AIKORE_DATA_DIR={}", self.data_dir.display()))
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.pid() as i32, signal) };
    }

    /// SIGTERM, then waits (bounded) for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait_exit(PATIENCE * 2)
    }

    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("running");
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                self.child = None;
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                self.child = None;
                panic!("daemon did not exit in {limit:?}\n{}", self.daemon_log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

pub fn process_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..].chars().next()
}

/// Live (non-zombie) pids whose environment contains `needle` exactly.
pub fn processes_with_env(needle: &str) -> Vec<i32> {
    let needle = needle.as_bytes();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| process_state(*pid).is_some_and(|s| s != 'Z'))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .map(|env| env.split(|b| *b == 0).any(|v| v == needle))
                .unwrap_or(false)
        })
        .collect()
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // Whatever a failed test left behind must not outlive it.
        for pid in self.marked_processes() {
            // SAFETY: killing processes that carry this test's unique data dir marker.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// The status and headers of a raw HTTP/1.1 response (tests that speak HTTP by hand).
pub fn read_head(reader: &mut impl std::io::BufRead) -> std::io::Result<(u16, Vec<(String, String)>)> {
    let mut line = String::new();
    std::io::BufRead::read_line(reader, &mut line)?;
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        std::io::BufRead::read_line(reader, &mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    Ok((status, headers))
}
