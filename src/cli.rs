//! The command line: `aikore serve` runs the daemon; every other command is a
//! systemctl-like client of its API.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::api::{
    Action, ErrorBody, InstanceView, LogLine, ReloadReport, ShownStatus, Status, UnitActionReply, UnitKind, UnitLogs,
    UnitView,
};
use crate::config::{self, Settings};

mod systemctl;

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

/// Told by `--help`: how the client authenticates.
const CLIENT_HELP: &str = "\
Client commands talk to the daemon's API at --url. Next to a local daemon they
need no setup: `aikore serve` writes a fresh token to <data-dir>/cli.token
(mode 0600) at every start, and the client reads it from the same data dir
(--data-dir / AIKORE_DATA_DIR, default `data`, as for serve). So run the
client as the daemon's user, from the same directory or with the same
AIKORE_DATA_DIR. For a remote daemon, set AIKORE_API_TOKEN (sent as a bearer;
it wins over the file) and AIKORE_URL. A daemon that takes a request and gives
no answer in 30 s (AIKORE_CLIENT_TIMEOUT) ends the command with exit code 1.";

#[derive(Parser, Debug)]
#[command(
    name = "aikore",
    version,
    about = "Supervisor, proxy and dashboard for AI web UIs on a GPU box",
    after_help = CLIENT_HELP
)]
pub struct Cli {
    /// Where the daemon's API listens (client commands).
    #[arg(long, env = "AIKORE_URL", default_value = "http://127.0.0.1:9001", global = true)]
    pub url: String,
    /// Data dir: SQLite database, logs, user units, instances; the client
    /// reads the daemon's local token (cli.token) from it.
    #[arg(long, env = "AIKORE_DATA_DIR", default_value = "data", global = true)]
    pub data_dir: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

/// `--wait` for start, stop and restart.
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct WaitArgs {
    /// Wait until the unit is started (start, restart) or stopped (stop);
    /// exit 1 with the reason if it ends in error or failed instead.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up (exit 1) after this many seconds; 0 waits forever.
    #[arg(long, default_value_t = 0, requires = "wait")]
    pub timeout: u64,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the daemon (PID 1 in the container).
    Serve(ServeArgs),
    /// Show every unit, or one in detail.
    Status { name: Option<String> },
    /// Start a unit (and what it requires).
    Start {
        name: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Stop a unit (and what requires it).
    Stop {
        name: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Stop then start a unit.
    Restart {
        name: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Show a unit's log; -f follows it.
    Logs {
        name: String,
        #[arg(short = 'n', long = "lines", default_value_t = 50)]
        lines: usize,
        #[arg(short, long)]
        follow: bool,
    },
    /// Re-read unit files (like systemctl daemon-reload).
    #[command(alias = "daemon-reload")]
    Reload,
    /// Validate unit files like systemd-analyze verify; exit 1 on any error.
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print a unit's file (its template's for an instance of one).
    Cat { name: String },
    /// Print a unit's properties as Key=value (systemd's names where they exist).
    Show {
        name: String,
        /// Only these properties (repeat, or separate with commas).
        #[arg(short = 'p', long = "property", value_delimiter = ',')]
        property: Vec<String>,
    },
    /// Print the tree of units a unit pulls in (Requires=, Requisite=, Wants=, BindsTo=, Upholds=).
    ListDependencies { name: String },
    /// Print whether a unit is active; exit 0 if it is, 3 if not.
    IsActive { name: String },
    /// Print whether a unit is failed; exit 0 if it is, 1 if not.
    IsFailed { name: String },
    /// Send a signal to every process of a unit.
    Kill {
        name: String,
        /// The signal: a name (SIGHUP, HUP) or a number.
        #[arg(short = 's', long = "signal", default_value = "SIGTERM")]
        signal: String,
    },
    /// Forget a unit's failed state (every failed unit without a name).
    ResetFailed { name: Option<String> },
    /// Make a unit start at boot as its [Install] says (WantedBy=, RequiredBy=, Also=).
    Enable { name: String },
    /// Undo enable.
    Disable { name: String },
}

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Stock units dir (default: /etc/aikore/units in the image, ./units in a checkout).
    #[arg(long, env = "AIKORE_UNITS_DIR")]
    pub units_dir: Option<PathBuf>,
    /// API and dashboard address.
    #[arg(long, env = "AIKORE_LISTEN", default_value = config::DEFAULT_LISTEN)]
    pub listen: std::net::SocketAddr,
    /// NGINX's public port: the dashboard and every instance.
    #[arg(long, env = "AIKORE_PORT", default_value_t = crate::config::DEFAULT_PORT)]
    pub port: u16,
    /// The address NGINX listens on: loopback by default (this machine only);
    /// the container image sets 0.0.0.0.
    #[arg(long, env = "AIKORE_BIND", default_value_t = crate::config::DEFAULT_BIND)]
    pub bind: std::net::IpAddr,
    /// NGINX's apps port: every instance, on another origin than the dashboard.
    #[arg(long, env = "AIKORE_APPS_PORT", default_value_t = crate::config::DEFAULT_APPS_PORT)]
    pub apps_port: u16,
    /// Stock blueprints dir (default: /opt/aikore/blueprints in the image, ./blueprints in a checkout).
    #[arg(long, env = "AIKORE_BLUEPRINTS_DIR")]
    pub blueprints_dir: Option<PathBuf>,
    /// The pool of ports `Port=auto` instances lease from.
    #[arg(long, env = "AIKORE_PORT_RANGE", default_value = "19001-19999")]
    pub port_range: String,
}

impl ServeArgs {
    pub fn settings(self, data_dir: PathBuf) -> Result<Settings, String> {
        let shutdown_timeout =
            config::parse_shutdown_timeout(std::env::var("AIKORE_SHUTDOWN_TIMEOUT").ok().as_deref())?;
        let stock = self.units_dir.unwrap_or_else(config::default_stock_units_dir);
        let port_range = crate::config::parse_port_range(&self.port_range)?;
        let blueprints_dir = self.blueprints_dir.unwrap_or_else(config::default_blueprints_dir);
        // Instances get this path to source functions.sh, from their own dir.
        let blueprints_dir = std::fs::canonicalize(&blueprints_dir).unwrap_or(blueprints_dir);
        let owner =
            config::owner_from_env(std::env::var("PUID").ok().as_deref(), std::env::var("PGID").ok().as_deref())?;
        let user = data_dir.join("units");
        Ok(Settings {
            units_dirs: vec![stock, user],
            data_dir,
            listen: self.listen,
            proxy_port: self.port,
            proxy_bind: self.bind,
            apps_port: self.apps_port,
            shutdown_timeout,
            blueprints_dir,
            port_range,
            owner,
            knobs: config::Knobs::from_env(),
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

/// A daemon that accepts but never answers (wedged, or its host swapping)
/// must not hang a script's `aikore status` forever; systemctl gives up on
/// a D-Bus call after 25 s. Every API answer is quick (`--wait` polls and
/// `logs -f` streams, and neither limit applies to a body), so 30 s only ever
/// ends a hang. AIKORE_CLIENT_TIMEOUT (seconds) changes it.
fn answer_timeout() -> std::time::Duration {
    let secs = std::env::var("AIKORE_CLIENT_TIMEOUT").ok().and_then(|v| v.trim().parse::<u64>().ok());
    std::time::Duration::from_secs(secs.filter(|s| *s > 0).unwrap_or(30))
}
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

struct Client {
    base: String,
    agent: ureq::Agent,
    /// How long the agent waits for an answer (said in its timeout error).
    answer_timeout: std::time::Duration,
    token: Option<String>,
    /// Where the token came from (or was looked for), for the hint on a 401.
    token_source: TokenSource,
}

enum TokenSource {
    Env,
    File(PathBuf),
    /// No AIKORE_API_TOKEN and the file could not be read (why).
    Missing(PathBuf, String),
}

enum Failure {
    NotRunning(String),
    Api { status: u16, message: String },
}

/// The bearer the client sends: AIKORE_API_TOKEN (remote use) if set, else
/// the local daemon's `<data_dir>/cli.token`.
fn find_token(data_dir: &std::path::Path) -> (Option<String>, TokenSource) {
    if let Some(token) = std::env::var("AIKORE_API_TOKEN").ok().filter(|t| !t.is_empty()) {
        return (Some(token), TokenSource::Env);
    }
    let path = config::cli_token_path(data_dir);
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => (Some(text.trim().to_string()), TokenSource::File(path)),
        Ok(_) => (None, TokenSource::Missing(path, "empty".into())),
        Err(e) => (None, TokenSource::Missing(path, e.to_string())),
    }
}

impl Client {
    fn new(base: &str, data_dir: &std::path::Path) -> Client {
        let answer_timeout = answer_timeout();
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_recv_response(Some(answer_timeout))
            .build()
            .new_agent();
        let (token, token_source) = find_token(data_dir);
        Client { base: base.trim_end_matches('/').to_string(), agent, answer_timeout, token, token_source }
    }

    /// What to do about a 401, given where the token came from.
    fn unauthorized_hint(&self) -> String {
        match &self.token_source {
            TokenSource::Env => "AIKORE_API_TOKEN is not accepted by this daemon (it must equal the daemon's \
                                 AIKORE_API_TOKEN); unset it to use the local token file"
                .to_string(),
            TokenSource::File(path) => format!(
                "the token in {} is not this daemon's: is the daemon at {} using that data dir? \
                 (set --data-dir/AIKORE_DATA_DIR as for `aikore serve`, or AIKORE_API_TOKEN)",
                path.display(),
                self.base
            ),
            TokenSource::Missing(path, why) => format!(
                "no credential: cannot read {} ({why}). Run the client as the daemon's user with the \
                 daemon's data dir (--data-dir/AIKORE_DATA_DIR, default `data`), or set AIKORE_API_TOKEN",
                path.display()
            ),
        }
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
        let mut response = result.map_err(|e| match e {
            ureq::Error::Timeout(ureq::Timeout::RecvResponse) => Failure::Api {
                status: 0,
                message: format!(
                    "aikore at {} took the request ({method} {path}) but gave no answer in {} s; the daemon \
                     is stuck: its own log may say why",
                    self.base,
                    self.answer_timeout.as_secs()
                ),
            },
            e => Failure::NotRunning(format!("cannot reach aikore at {} ({e}); is `aikore serve` running?", self.base)),
        })?;
        let status = response.status().as_u16();
        if status >= 400 {
            let body = response.body_mut().read_to_string().unwrap_or_default();
            let message = serde_json::from_str::<ErrorBody>(&body).map(|b| b.error).unwrap_or(body);
            let message =
                if status == 401 { format!("{message}\nhint: {}", self.unauthorized_hint()) } else { message };
            return Err(Failure::Api { status, message });
        }
        Ok(response)
    }

    /// The answer as the API type the server serialized it from.
    fn json<T: serde::de::DeserializeOwned>(&self, method: &str, path: &str) -> Result<T, Failure> {
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
    let now = crate::clock::now_ms();
    let secs = ((now - ms).max(0) / 1000) as u64;
    match secs {
        0..=59 => format!("{secs}s ago"),
        60..=3599 => format!("{}m {}s ago", secs / 60, secs % 60),
        3600..=86_399 => format!("{}h {}m ago", secs / 3600, (secs % 3600) / 60),
        _ => format!("{}d {}h ago", secs / 86_400, (secs % 86_400) / 3600),
    }
}

fn or_dash<T: std::fmt::Display>(value: Option<T>) -> String {
    value.map_or_else(|| "-".into(), |v| v.to_string())
}

fn print_unit_table(units: &[UnitView]) {
    println!("{:<24} {:<9} {:<11} {:>8} {:>8}  {:<12} DETAIL", "NAME", "KIND", "STATUS", "PID", "RESTARTS", "SINCE");
    for u in units {
        println!(
            "{:<24} {:<9} {:<11} {:>8} {:>8}  {:<12} {}",
            u.name,
            u.kind.as_str(),
            u.status.as_str(),
            or_dash(u.pid),
            u.restarts,
            ago(u.since),
            u.detail.as_deref().unwrap_or(""),
        );
    }
}

fn print_unit(u: &UnitView) {
    println!(
        "{} ({}){}",
        u.name,
        u.kind.as_str(),
        if u.description.is_empty() { String::new() } else { format!(" - {}", u.description) }
    );
    println!("  status:    {} (since {})", u.status, ago(u.since));
    if let Some(detail) = &u.detail {
        println!("  why:       {detail}");
    }
    println!("  pid:       {}", or_dash(u.pid));
    println!("  restarts:  {}", u.restarts);
    println!("  last exit: {}", or_dash(u.last_exit.as_deref()));
    if let Some(failure) = &u.failure {
        println!("  failure:   {}", failure.class);
        if let Some(line) = &failure.line {
            println!("  log line:  {line}");
        }
        if let Some(hint) = failure.hint.as_deref().filter(|h| !h.is_empty()) {
            println!("  hint:      {hint}");
        }
    }
    println!("  file:      {}", u.path);
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
            } else if let Ok(line) = serde_json::from_str::<LogLine>(data) {
                let _ = writeln!(out, "{}", line.text);
            }
            let _ = out.flush();
        }
    }
    Ok(())
}

/// Runs a client command against the daemon; returns the exit code.
pub fn run_client(url: &str, data_dir: &std::path::Path, command: Command) -> i32 {
    let client = Client::new(url, data_dir);
    if let Some(code) = systemctl::run(&client, &command) {
        return code;
    }
    let result = match command {
        Command::Status { name: None } => {
            client.json::<Vec<UnitView>>("GET", "/api/v1/units").map(|units| print_unit_table(&units))
        }
        Command::Status { name: Some(name) } => client
            .json::<UnitView>("GET", &format!("/api/v1/units/{}", encode(&name)))
            .map(|u| print_unit(&u))
            .and_then(|()| systemctl::print_processes(&client, &name)),
        Command::Start { name, wait } => action(&client, &name, Action::Start, wait),
        Command::Stop { name, wait } => action(&client, &name, Action::Stop, wait),
        Command::Restart { name, wait } => action(&client, &name, Action::Restart, wait),
        Command::Logs { name, lines, follow: false } => {
            client.json::<UnitLogs>("GET", &format!("/api/v1/units/{}/logs?tail={lines}", encode(&name))).map(|logs| {
                for line in logs.lines {
                    println!("{}", line.text);
                }
            })
        }
        Command::Logs { name, lines, follow: true } => {
            follow_stream(&client, &format!("/api/v1/units/{}/logs/stream?tail={lines}", encode(&name)))
        }
        Command::Reload => client.json::<ReloadReport>("POST", "/api/v1/reload").map(|report| {
            for d in &report.diagnostics {
                eprintln!("{d}");
            }
            println!("reloaded: {} unit(s)", report.units);
        }),
        // Serve and Check: main; the systemctl habits: systemctl::run above.
        _ => unreachable!("handled before"),
    };
    match result {
        Ok(()) => exit_code::OK,
        Err(failure) => report(failure),
    }
}

/// How often `--wait` looks at the unit: a person waits on it, and one GET
/// a few times a second costs the daemon nothing.
const WAIT_POLL: std::time::Duration = std::time::Duration::from_millis(200);

fn action(client: &Client, name: &str, action: Action, wait: WaitArgs) -> Result<(), Failure> {
    // A restart is over only once a new run is up: the run before the request
    // is told apart by its pid and start time (a draining instance keeps it
    // running, `started`, until its queue is empty).
    let before = match (wait.wait, action) {
        (true, Action::Restart) => Some(Run::of(&client.json::<UnitView>("GET", &unit_api(name))?)),
        _ => None,
    };
    let reply: UnitActionReply = client.json("POST", &format!("/api/v1/units/{}/{action}", encode(name)))?;
    if wait.wait {
        if reply.status.is_in_progress() {
            println!("{name}: {}", reply.status);
        }
        return wait_for(client, name, action, wait.timeout, before);
    }
    // The status right after the request: a restart is "stopping" at that
    // moment, which reads like the opposite of what was asked.
    match action {
        Action::Restart => println!("{name}: restarting"),
        _ => println!("{name}: {}", reply.status),
    }
    Ok(())
}

fn unit_api(name: &str) -> String {
    format!("/api/v1/units/{}", encode(name))
}

/// Which run of a unit a view shows: a restart is done when it is another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    pid: Option<i32>,
    started: Option<i64>,
}

impl Run {
    fn of(u: &UnitView) -> Run {
        Run { pid: u.pid, started: u.started }
    }
}

/// What `--wait` makes of a status: keep waiting, done, or failed.
#[derive(Debug, PartialEq, Eq)]
enum WaitOutcome {
    Pending,
    Done,
    Failed,
}

/// `status` is the engine's; `overlay` what an instance's operations lay
/// over it (`draining`, `installing`, an install's `failed`); `old_run`:
/// the unit still shows the run from before a restart.
fn wait_outcome(action: Action, status: Status, overlay: Option<&ShownStatus>, old_run: bool) -> WaitOutcome {
    if overlay.is_some_and(|o| o.as_str() == Status::Failed.as_str()) {
        return WaitOutcome::Failed;
    }
    match status {
        Status::Error | Status::Failed => WaitOutcome::Failed,
        // A drain still holds the stop or restart, or the install runs: not there yet.
        _ if overlay.is_some_and(ShownStatus::is_in_progress) => WaitOutcome::Pending,
        s if s == action.goal() && !old_run => WaitOutcome::Done,
        // Asked to start and it ended by itself with no error: not running.
        Status::Stopped if action != Action::Stop => WaitOutcome::Failed,
        _ => WaitOutcome::Pending,
    }
}

/// Polls the unit (and, for an instance, its overlay) until `--wait`'s goal
/// (the request was already accepted: the status it had before the request
/// is gone by the first poll, as the daemon answers after changing it; a
/// restart's old run is told apart by `before`).
fn wait_for(
    client: &Client,
    name: &str,
    action: Action,
    timeout_secs: u64,
    before: Option<Run>,
) -> Result<(), Failure> {
    let deadline = (timeout_secs > 0).then(|| std::time::Instant::now() + std::time::Duration::from_secs(timeout_secs));
    loop {
        let u: UnitView = client.json("GET", &unit_api(name))?;
        let instance = match u.kind {
            UnitKind::Instance => {
                Some(client.json::<InstanceView>("GET", &format!("/api/v1/instances/{}", encode(name)))?)
            }
            UnitKind::Service => None,
        };
        let overlay = instance.as_ref().map(|i| &i.status).filter(|s| matches!(s, ShownStatus::Overlay(_)));
        let status = u.status;
        let old_run = before.is_some_and(|b| b == Run::of(&u));
        let shown = overlay.map_or_else(|| status.to_string(), ShownStatus::to_string);
        match wait_outcome(action, status, overlay, old_run) {
            WaitOutcome::Done => {
                println!("{name}: {status}");
                return Ok(());
            }
            WaitOutcome::Failed => {
                let detail = overlay.and(instance.as_ref()).and_then(|i| i.detail.clone());
                let why = detail.or(u.detail).or(u.last_exit).unwrap_or_else(|| "no reason given".into());
                return Err(Failure::Api { status: 0, message: format!("{name}: {shown}: {why}") });
            }
            WaitOutcome::Pending => {}
        }
        if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
            return Err(Failure::Api {
                status: 0,
                message: format!("{name}: still {shown} after {timeout_secs}s; giving up waiting"),
            });
        }
        std::thread::sleep(WAIT_POLL);
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_ends_on_the_goal_or_a_failure() {
        use Action::*;
        let plain = |action, status| wait_outcome(action, status, None, false);
        assert_eq!(plain(Start, Status::Starting), WaitOutcome::Pending);
        assert_eq!(plain(Start, Status::Restarting), WaitOutcome::Pending);
        assert_eq!(plain(Start, Status::Started), WaitOutcome::Done);
        assert_eq!(plain(Start, Status::Error), WaitOutcome::Failed);
        assert_eq!(plain(Start, Status::Stopped), WaitOutcome::Failed);
        assert_eq!(plain(Restart, Status::Stopping), WaitOutcome::Pending);
        assert_eq!(plain(Restart, Status::Failed), WaitOutcome::Failed);
        assert_eq!(plain(Stop, Status::Stopping), WaitOutcome::Pending);
        assert_eq!(plain(Stop, Status::Stopped), WaitOutcome::Done);
        assert_eq!(plain(Stop, Status::Error), WaitOutcome::Failed);
    }

    /// `restart --wait` of a draining instance: `started` is the goal, but
    /// the run that shows it is the old one until the queue is empty.
    #[test]
    fn wait_follows_an_instances_drain_and_a_restarts_new_run() {
        use Action::*;
        let draining = ShownStatus::Overlay("draining".into());
        assert_eq!(wait_outcome(Restart, Status::Started, Some(&draining), true), WaitOutcome::Pending);
        // The drain is over, the engine has not taken the restart yet: still the old run.
        assert_eq!(wait_outcome(Restart, Status::Started, None, true), WaitOutcome::Pending);
        assert_eq!(wait_outcome(Restart, Status::Started, None, false), WaitOutcome::Done);
        assert_eq!(wait_outcome(Stop, Status::Started, Some(&draining), false), WaitOutcome::Pending);
        let installing = ShownStatus::Overlay("installing".into());
        assert_eq!(wait_outcome(Start, Status::Starting, Some(&installing), false), WaitOutcome::Pending);
        let install_failed = ShownStatus::Overlay("failed".into());
        assert_eq!(wait_outcome(Start, Status::Starting, Some(&install_failed), false), WaitOutcome::Failed);
        let idle = ShownStatus::Overlay("idle-stopped".into());
        assert_eq!(wait_outcome(Stop, Status::Stopped, Some(&idle), false), WaitOutcome::Done);
    }

    #[test]
    fn the_client_finds_the_local_token_in_the_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        // Only when AIKORE_API_TOKEN is unset (the test process does not set it).
        if std::env::var_os("AIKORE_API_TOKEN").is_some() {
            return;
        }
        let (token, source) = find_token(dir.path());
        assert!(token.is_none() && matches!(source, TokenSource::Missing(..)));
        config::write_secret(&config::cli_token_path(dir.path()), "abc").unwrap();
        let (token, source) = find_token(dir.path());
        assert_eq!(token.as_deref(), Some("abc"));
        assert!(matches!(source, TokenSource::File(_)));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(config::cli_token_path(dir.path())).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
