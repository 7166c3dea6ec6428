//! The command line: `aikore serve` runs the daemon; every other command is a
//! systemctl-like client of its API.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{self, Settings};

/// Exit codes of the client commands, after systemctl's where they overlap.
pub mod exit_code {
    pub const OK: i32 = 0;
    /// The daemon refused or the command failed (a check found errors).
    pub const FAILED: i32 = 1;
    /// The daemon is not reachable at AIKORE_URL.
    pub const NOT_RUNNING: i32 = 3;
    /// systemctl's "no such unit".
    pub const NO_SUCH_UNIT: i32 = 4;
}

#[derive(Parser, Debug)]
#[command(name = "aikore", version, about = "Supervisor, proxy and dashboard for AI web UIs on a GPU box")]
pub struct Cli {
    /// Where the daemon's API listens (client commands).
    #[arg(long, env = "AIKORE_URL", default_value = "http://127.0.0.1:9001", global = true)]
    pub url: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the daemon (PID 1 in the container).
    Serve(ServeArgs),
    /// Show every unit, or one in detail.
    Status { name: Option<String> },
    /// Start a unit (and what it requires).
    Start { name: String },
    /// Stop a unit (and what requires it).
    Stop { name: String },
    /// Stop then start a unit.
    Restart { name: String },
    /// Show a unit's log; -f follows it.
    Logs {
        name: String,
        #[arg(short = 'n', long = "lines", default_value_t = 50)]
        lines: usize,
        #[arg(short, long)]
        follow: bool,
    },
    /// Re-read unit files (like systemctl daemon-reload).
    Reload,
    /// Validate unit files like systemd-analyze verify; exit 1 on any error.
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Data dir: SQLite database, logs, user units, instances.
    #[arg(long, env = "AIKORE_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    /// Stock units dir (default: /etc/aikore/units in the image, ./units in a checkout).
    #[arg(long, env = "AIKORE_UNITS_DIR")]
    pub units_dir: Option<PathBuf>,
    /// API and dashboard address.
    #[arg(long, env = "AIKORE_LISTEN", default_value = config::DEFAULT_LISTEN)]
    pub listen: std::net::SocketAddr,
    /// NGINX's public port: the dashboard and every instance.
    #[arg(long, env = "AIKORE_PORT", default_value_t = crate::proxy::DEFAULT_PORT)]
    pub port: u16,
    /// NGINX's apps port: every instance, on another origin than the dashboard.
    #[arg(long, env = "AIKORE_APPS_PORT", default_value_t = crate::proxy::DEFAULT_APPS_PORT)]
    pub apps_port: u16,
    /// Stock blueprints dir (default: /opt/aikore/blueprints in the image, ./blueprints in a checkout).
    #[arg(long, env = "AIKORE_BLUEPRINTS_DIR")]
    pub blueprints_dir: Option<PathBuf>,
    /// The pool of ports `Port=auto` instances lease from.
    #[arg(long, env = "AIKORE_PORT_RANGE", default_value = "19001-19999")]
    pub port_range: String,
}

impl ServeArgs {
    pub fn settings(self) -> Result<Settings, String> {
        let shutdown_timeout =
            config::parse_shutdown_timeout(std::env::var("AIKORE_SHUTDOWN_TIMEOUT").ok().as_deref())?;
        let stock = self.units_dir.unwrap_or_else(config::default_stock_units_dir);
        let port_range = crate::instances::runtime::parse_port_range(&self.port_range)?;
        let blueprints_dir = self.blueprints_dir.unwrap_or_else(config::default_blueprints_dir);
        // Instances get this path to source functions.sh, from their own dir.
        let blueprints_dir = std::fs::canonicalize(&blueprints_dir).unwrap_or(blueprints_dir);
        let owner =
            config::owner_from_env(std::env::var("PUID").ok().as_deref(), std::env::var("PGID").ok().as_deref())?;
        let user = self.data_dir.join("units");
        Ok(Settings {
            units_dirs: vec![stock, user],
            data_dir: self.data_dir,
            listen: self.listen,
            proxy_port: self.port,
            apps_port: self.apps_port,
            shutdown_timeout,
            blueprints_dir,
            port_range,
            owner,
        })
    }
}

/// `aikore check FILE...`: prints every finding, exit 1 if any is an error.
pub fn check(files: &[PathBuf]) -> i32 {
    let diagnostics = crate::units::check_paths(files);
    let mut errors = 0;
    for d in &diagnostics {
        eprintln!("{d}");
        if d.severity == crate::units::Severity::Error {
            errors += 1;
        }
    }
    if errors > 0 {
        eprintln!("{errors} error(s) in {} file(s)", files.len());
        exit_code::FAILED
    } else {
        exit_code::OK
    }
}

struct Client {
    base: String,
    agent: ureq::Agent,
    token: Option<String>,
}

enum Failure {
    NotRunning(String),
    Api { status: u16, message: String },
}

impl Client {
    fn new(base: &str) -> Client {
        let agent = ureq::Agent::config_builder().http_status_as_error(false).build().new_agent();
        let token = std::env::var("AIKORE_API_TOKEN").ok().filter(|t| !t.is_empty());
        Client { base: base.trim_end_matches('/').to_string(), agent, token }
    }

    fn send(&self, method: &str, path: &str) -> Result<ureq::http::Response<ureq::Body>, Failure> {
        let url = format!("{}{}", self.base, path);
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let result = match method {
            "POST" => {
                let mut req = self.agent.post(&url);
                if let Some(a) = &auth {
                    req = req.header("Authorization", a);
                }
                req.send_empty()
            }
            _ => {
                let mut req = self.agent.get(&url);
                if let Some(a) = &auth {
                    req = req.header("Authorization", a);
                }
                req.call()
            }
        };
        let mut response = result.map_err(|e| {
            Failure::NotRunning(format!("cannot reach aikore at {} ({e}); is `aikore serve` running?", self.base))
        })?;
        let status = response.status().as_u16();
        if status >= 400 {
            let body = response.body_mut().read_to_string().unwrap_or_default();
            let message = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
                .unwrap_or(body);
            return Err(Failure::Api { status, message });
        }
        Ok(response)
    }

    fn json(&self, method: &str, path: &str) -> Result<serde_json::Value, Failure> {
        let mut response = self.send(method, path)?;
        let body =
            response.body_mut().read_to_string().map_err(|e| Failure::Api { status: 0, message: e.to_string() })?;
        serde_json::from_str(&body).map_err(|e| Failure::Api { status: 0, message: format!("bad response: {e}") })
    }
}

fn report(failure: Failure) -> i32 {
    match failure {
        Failure::NotRunning(message) => {
            eprintln!("aikore: {message}");
            exit_code::NOT_RUNNING
        }
        Failure::Api { status, message } => {
            eprintln!("aikore: {message}");
            if status == 404 {
                exit_code::NO_SUCH_UNIT
            } else {
                exit_code::FAILED
            }
        }
    }
}

fn ago(ms: i64) -> String {
    let now = crate::daemon::now_ms();
    let secs = ((now - ms).max(0) / 1000) as u64;
    match secs {
        0..=59 => format!("{secs}s ago"),
        60..=3599 => format!("{}m {}s ago", secs / 60, secs % 60),
        3600..=86_399 => format!("{}h {}m ago", secs / 3600, (secs % 3600) / 60),
        _ => format!("{}d {}h ago", secs / 86_400, (secs % 86_400) / 3600),
    }
}

fn text(v: &serde_json::Value, key: &str) -> String {
    match v.get(key) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Null) | None => "-".into(),
        Some(other) => other.to_string(),
    }
}

fn print_unit_table(units: &[serde_json::Value]) {
    println!("{:<24} {:<9} {:<11} {:>8} {:>8}  {:<12} DETAIL", "NAME", "KIND", "STATUS", "PID", "RESTARTS", "SINCE");
    for u in units {
        println!(
            "{:<24} {:<9} {:<11} {:>8} {:>8}  {:<12} {}",
            text(u, "name"),
            text(u, "kind"),
            text(u, "status"),
            text(u, "pid"),
            text(u, "restarts"),
            u.get("since").and_then(|s| s.as_i64()).map(ago).unwrap_or_default(),
            u.get("detail").and_then(|d| d.as_str()).unwrap_or(""),
        );
    }
}

fn print_unit(u: &serde_json::Value) {
    let description = u.get("description").and_then(|d| d.as_str()).unwrap_or("");
    println!(
        "{} ({}){}",
        text(u, "name"),
        text(u, "kind"),
        if description.is_empty() { String::new() } else { format!(" - {description}") }
    );
    let since = u.get("since").and_then(|s| s.as_i64()).map(ago).unwrap_or_default();
    println!("  status:    {} (since {since})", text(u, "status"));
    if let Some(detail) = u.get("detail").and_then(|d| d.as_str()) {
        println!("  why:       {detail}");
    }
    println!("  pid:       {}", text(u, "pid"));
    println!("  restarts:  {}", text(u, "restarts"));
    println!("  last exit: {}", text(u, "last_exit"));
    println!("  file:      {}", text(u, "path"));
}

fn follow_stream(client: &Client, path: &str) -> Result<(), Failure> {
    let response = client.send("GET", path)?;
    let reader = BufReader::new(response.into_body().into_reader());
    let stdout = std::io::stdout();
    let mut event = String::new();
    for line in reader.lines() {
        let line = line.map_err(|e| Failure::NotRunning(format!("stream ended: {e}")))?;
        if let Some(name) = line.strip_prefix("event:") {
            event = name.trim().to_string();
        } else if let Some(data) = line.strip_prefix("data:") {
            let data = data.strip_prefix(' ').unwrap_or(data);
            let mut out = stdout.lock();
            if event == "lagged" {
                let _ = writeln!(out, "-- {data} lines skipped (too slow) --");
            } else if let Ok(v) = serde_json::from_str::<serde_json::Value>(data) {
                let _ = writeln!(out, "{}", v.get("text").and_then(|t| t.as_str()).unwrap_or(data));
            }
            let _ = out.flush();
        }
    }
    Ok(())
}

/// Runs a client command against the daemon; returns the exit code.
pub fn run_client(url: &str, command: Command) -> i32 {
    let client = Client::new(url);
    let result = match command {
        Command::Status { name: None } => client.json("GET", "/api/v1/units").map(|v| {
            print_unit_table(v.as_array().map(Vec::as_slice).unwrap_or_default());
        }),
        Command::Status { name: Some(name) } => {
            client.json("GET", &format!("/api/v1/units/{}", encode(&name))).map(|v| print_unit(&v))
        }
        Command::Start { name } => action(&client, &name, "start"),
        Command::Stop { name } => action(&client, &name, "stop"),
        Command::Restart { name } => action(&client, &name, "restart"),
        Command::Logs { name, lines, follow: false } => {
            client.json("GET", &format!("/api/v1/units/{}/logs?tail={lines}", encode(&name))).map(|v| {
                for line in v.get("lines").and_then(|l| l.as_array()).into_iter().flatten() {
                    println!("{}", line.get("text").and_then(|t| t.as_str()).unwrap_or(""));
                }
            })
        }
        Command::Logs { name, lines, follow: true } => {
            follow_stream(&client, &format!("/api/v1/units/{}/logs/stream?tail={lines}", encode(&name)))
        }
        Command::Reload => client.json("POST", "/api/v1/reload").map(|v| {
            for d in v.get("diagnostics").and_then(|d| d.as_array()).into_iter().flatten() {
                eprintln!("{}", d.as_str().unwrap_or(""));
            }
            println!("reloaded: {} unit(s)", text(&v, "units"));
        }),
        Command::Serve(_) | Command::Check { .. } => unreachable!("handled by main"),
    };
    match result {
        Ok(()) => exit_code::OK,
        Err(failure) => report(failure),
    }
}

fn action(client: &Client, name: &str, verb: &str) -> Result<(), Failure> {
    let v = client.json("POST", &format!("/api/v1/units/{}/{verb}", encode(name)))?;
    println!("{name}: {}", text(&v, "status"));
    Ok(())
}

/// Unit names are validated by the daemon; this only keeps a hostile argument
/// from changing the request path.
fn encode(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
