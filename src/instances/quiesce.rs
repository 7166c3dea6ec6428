//! Operations around an instance's stop that the supervisor does not know of
//! (docs/operations.md): drain before stop (`DrainCheck=`, `DrainTimeoutSec=`),
//! idle stop (`IdleStopSec=`) and wake on the next request. They talk to the
//! supervisor only through its handle (start, stop, restart, snapshots,
//! events); what they add to an instance's status (`draining`,
//! `idle-stopped`) is an overlay the API and the dashboard lay over the
//! engine's status, valid for the unit's `seq` it was made for.
//!
//! Not `supervisor::drain`, which waits for a stopping unit's processes to end.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::install::InstallView;
use super::runtime::InstanceContext;
use crate::logs::LogHub;
use crate::supervisor::{CommandError, Status, SupervisorHandle, UnitSnapshot};

/// How often a draining instance's check is asked again.
const DRAIN_POLL: Duration = Duration::from_secs(1);
/// One drain check may not hang on a stuck app.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// The most of a drain check's answer read (ComfyUI's /queue lists each prompt's graph).
const MAX_ANSWER: usize = 8 * 1024 * 1024;
/// NGINX keeps the login gate's answer for this long (nginx/nginx.conf,
/// `proxy_cache_valid 204 2s`): requests inside that window do not reach
/// aikore, so an instance counts as idle only this much later than its
/// last request aikore saw.
pub const GATE_CACHE_WINDOW: Duration = Duration::from_secs(2);
/// NGINX writes a line here (the request's `$request_id`) when an upgraded
/// (WebSocket) request ends; relative to the data dir (`websockets.log`
/// under NGINX's prefix, `<data>/nginx/`, in nginx/nginx.conf and routes.rs).
pub const WEBSOCKET_LOG: &str = "nginx/websockets.log";

/// What says an app has no work left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainCheck {
    /// Path (and query) on the app's own loopback port.
    pub path: String,
    /// JSON keys (a top-level name or a JSON pointer `/a/b`) whose values
    /// count the work left: an array or object by its length, a number as
    /// it is, `true` as 1. Drained when they add up to 0.
    pub keys: Vec<(String, &'static str)>,
}

impl DrainCheck {
    /// `comfyui` (its `/queue`: nothing running, nothing pending) or
    /// `<path> <key> [<key>...]`.
    pub fn parse(text: &str) -> Result<DrainCheck, String> {
        let text = text.trim();
        if text == "comfyui" {
            return Ok(DrainCheck {
                path: "/queue".into(),
                keys: vec![("queue_running".into(), "running"), ("queue_pending".into(), "queued")],
            });
        }
        let mut words = text.split_whitespace();
        let path = words.next().ok_or("DrainCheck= is empty")?;
        if !path.starts_with('/') || path.bytes().any(|b| b.is_ascii_control()) {
            return Err(format!("DrainCheck= path {path:?} must start with '/' (a path on the app's port)"));
        }
        let keys: Vec<(String, &'static str)> = words.map(|k| (k.to_string(), "")).collect();
        if keys.is_empty() {
            return Err("DrainCheck= needs at least one JSON key after the path".into());
        }
        Ok(DrainCheck { path: path.to_string(), keys })
    }

    /// The work left, per key, in the app's answer `json`.
    pub fn count(&self, json: &serde_json::Value) -> Vec<(String, u64)> {
        self.keys
            .iter()
            .map(|(key, label)| {
                let value = if key.starts_with('/') { json.pointer(key) } else { json.get(key) };
                let n = match value {
                    Some(serde_json::Value::Array(a)) => a.len() as u64,
                    Some(serde_json::Value::Object(o)) => o.len() as u64,
                    Some(serde_json::Value::Number(n)) => n.as_f64().map(|f| f.max(0.0).ceil() as u64).unwrap_or(0),
                    Some(serde_json::Value::Bool(b)) => u64::from(*b),
                    Some(serde_json::Value::String(s)) => u64::from(!s.is_empty()),
                    Some(serde_json::Value::Null) | None => 0,
                };
                (if label.is_empty() { key.clone() } else { label.to_string() }, n)
            })
            .collect()
    }
}

/// What the dashboard shows while an instance drains: "1 running, 2 queued".
pub fn describe(counts: &[(String, u64)]) -> String {
    let left: Vec<String> = counts.iter().filter(|(_, n)| *n > 0).map(|(k, n)| format!("{n} {k}")).collect();
    let total: u64 = counts.iter().map(|(_, n)| n).sum();
    match total {
        0 => "nothing left".into(),
        1 => format!("1 job left ({})", left.join(", ")),
        n => format!("{n} jobs left ({})", left.join(", ")),
    }
}

/// One answer of a drain check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pending {
    /// Work left: the total and its description.
    Busy(u64, String),
    /// Nothing left, or the app does not listen (nothing can be lost).
    Drained,
    /// The check itself failed (bad status, not JSON): the stop does not wait on it.
    Broken(String),
}

/// Asks the app on `port` once.
pub async fn ask(check: &DrainCheck, port: u16) -> Pending {
    match tokio::time::timeout(CHECK_TIMEOUT, get_json(port, &check.path)).await {
        Err(_) => Pending::Broken(format!("{} did not answer within {CHECK_TIMEOUT:?}", check.path)),
        Ok(Err(Fetch::Refused)) => Pending::Drained,
        Ok(Err(Fetch::Bad(e))) => Pending::Broken(e),
        Ok(Ok(json)) => {
            let counts = check.count(&json);
            let total: u64 = counts.iter().map(|(_, n)| n).sum();
            if total == 0 {
                Pending::Drained
            } else {
                Pending::Busy(total, describe(&counts))
            }
        }
    }
}

enum Fetch {
    Refused,
    Bad(String),
}

async fn get_json(port: u16, path: &str) -> Result<serde_json::Value, Fetch> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.map_err(|_| Fetch::Refused)?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: application/json\r\nConnection: close\r\nUser-Agent: aikore-drain\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.map_err(|e| Fetch::Bad(e.to_string()))?;
    let mut raw = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let n = stream.read(&mut chunk).await.map_err(|e| Fetch::Bad(e.to_string()))?;
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&chunk[..n]);
        if raw.len() > MAX_ANSWER {
            return Err(Fetch::Bad(format!("{path}: answer larger than {MAX_ANSWER} bytes")));
        }
    }
    let split =
        raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| Fetch::Bad(format!("{path}: no HTTP answer")))?;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status != "200" {
        return Err(Fetch::Bad(format!("{path} answered {status}")));
    }
    let mut body = raw[split + 4..].to_vec();
    if head.lines().any(|l| l.to_ascii_lowercase().starts_with("transfer-encoding:") && l.contains("chunked")) {
        body = dechunk(&body);
    }
    serde_json::from_slice(&body).map_err(|e| Fetch::Bad(format!("{path}: not JSON: {e}")))
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = body.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&body[..end])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok())
            .unwrap_or(0);
        body = &body[end + 2..];
        if size == 0 || size > body.len() {
            break;
        }
        out.extend_from_slice(&body[..size]);
        body = body.get(size + 2..).unwrap_or(&[]);
    }
    out
}

/// What the status overlay says of one unit, for the events stream.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Overlay {
    pub unit: String,
    /// `draining` or `idle-stopped`; None: the overlay is gone (show the engine's status).
    pub status: Option<&'static str>,
    pub detail: Option<String>,
    /// The `seq` of the engine state it lies over: it holds while that is the unit's latest.
    pub seq: u64,
}

/// What a stop waits to do after draining.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    Stop,
    Restart,
    /// Idle stop: the instance is then shown `idle-stopped` and woken by the next request.
    IdleStop,
}

struct Drain {
    /// Tells this drain from a later one of the same instance.
    id: u64,
    token: CancellationToken,
    detail: String,
    seq: u64,
}

#[derive(Default)]
struct Inner {
    draining: HashMap<String, Drain>,
    /// Stopped for being idle (until its next start): the next request wakes it.
    idle_stopped: HashSet<String>,
    /// The last request aikore's login gate saw per instance.
    seen: HashMap<String, Instant>,
    /// Open WebSockets: NGINX's `$request_id` -> instance.
    sockets: HashMap<String, String>,
    /// Who holds the ComfyUI slot (its paths count as that instance's requests).
    slot_holder: Option<String>,
    /// Bytes of [`WEBSOCKET_LOG`] already read.
    log_offset: u64,
    /// Each instance's latest event `seq` (overlays lie over it).
    seqs: HashMap<String, u64>,
    /// Install phase per instance, from its current or last run's log.
    installs: HashMap<String, InstallView>,
    /// The task reading a starting run's log, per instance.
    followers: HashMap<String, CancellationToken>,
}

/// Drain, idle stop and wake for every instance.
pub struct Ops {
    supervisor: SupervisorHandle,
    ctx: InstanceContext,
    inner: Mutex<Inner>,
    overlays: broadcast::Sender<Overlay>,
}

/// How a stop/restart request was answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Draining(String),
    Now(Status),
}

impl Outcome {
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Draining(_) => "draining",
            Outcome::Now(s) => s.as_str(),
        }
    }
}

fn is_running(status: Status) -> bool {
    matches!(status, Status::Started | Status::Stalled)
}

impl Ops {
    pub fn new(supervisor: SupervisorHandle, ctx: InstanceContext) -> Ops {
        let (overlays, _) = broadcast::channel(256);
        Ops { supervisor, ctx, inner: Mutex::new(Inner::default()), overlays }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Overlay> {
        self.overlays.subscribe()
    }

    fn publish(&self, unit: &str, status: Option<&'static str>, detail: Option<String>, seq: u64) {
        let _ = self.overlays.send(Overlay { unit: unit.to_string(), status, detail, seq });
    }

    /// The overlay for `unit` as the API shows it: (status, detail).
    pub fn overlay(&self, unit: &UnitSnapshot) -> Option<(&'static str, Option<String>)> {
        let inner = self.lock();
        if let Some(d) = inner.draining.get(&unit.name) {
            if is_running(unit.status) {
                return Some(("draining", Some(d.detail.clone())));
            }
        }
        if unit.status == Status::Stopped && inner.idle_stopped.contains(&unit.name) {
            return Some(("idle-stopped", Some("stopped for being idle: the next visit wakes it".into())));
        }
        let install = inner.installs.get(&unit.name)?;
        match (unit.status, install.state) {
            (Status::Starting | Status::Stalled, "installing") => Some(("installing", Some(install.describe()))),
            // The install job failed: the instance is failed, whatever the restart policy made of the exit.
            (Status::Error | Status::Failed, "failed") => {
                Some(("failed", Some(format!("install failed at {}", install.describe()))))
            }
            _ => None,
        }
    }

    pub fn is_idle_stopped(&self, unit: &str) -> bool {
        self.lock().idle_stopped.contains(unit)
    }

    /// The drain check of an instance: its `DrainCheck=`, else its
    /// launch.sh's / blueprint's `# aikore.drain`. None: stops at once.
    pub fn drain_check(&self, unit: &UnitSnapshot) -> Option<Result<DrainCheck, String>> {
        let inst = unit.unit.instance.as_ref()?;
        let text = match &inst.drain_check {
            Some(t) => t.clone(),
            None => super::runtime::drain_header(&self.ctx, &unit.name, &inst.blueprint)?,
        };
        Some(DrainCheck::parse(&text))
    }

    async fn snapshot(&self, name: &str) -> Result<UnitSnapshot, CommandError> {
        self.supervisor
            .snapshot()
            .await?
            .into_iter()
            .find(|u| u.name == name)
            .ok_or_else(|| CommandError::NoSuchUnit(name.to_string()))
    }

    /// A user's stop: drains first when the instance has a drain check and
    /// runs; a second stop while it drains stops at once.
    pub async fn stop(self: &Arc<Self>, name: &str) -> Result<Outcome, CommandError> {
        self.request(name, After::Stop).await
    }

    /// A restart (user, update, rebuild): drains first like a stop.
    pub async fn restart(self: &Arc<Self>, name: &str) -> Result<Outcome, CommandError> {
        self.request(name, After::Restart).await
    }

    /// A start: one of a draining instance cancels the pending stop.
    pub async fn start(&self, name: &str) -> Result<Status, CommandError> {
        let cancelled = self.lock().draining.remove(name);
        if let Some(drain) = cancelled {
            drain.token.cancel();
            tracing::info!(instance = %name, "a start cancelled the drain: the instance keeps running");
            self.publish(name, None, None, drain.seq);
            return Ok(self.snapshot(name).await?.status);
        }
        self.supervisor.start(name).await
    }

    async fn request(self: &Arc<Self>, name: &str, after: After) -> Result<Outcome, CommandError> {
        let forced = self.lock().draining.remove(name);
        if let Some(drain) = forced {
            // The second request: no more waiting.
            drain.token.cancel();
            tracing::info!(instance = %name, "a second stop request: stopping without waiting for the drain");
            return self.act(name, after).await.map(Outcome::Now);
        }
        let unit = self.snapshot(name).await?;
        let check = match self.drain_check(&unit) {
            Some(Ok(check)) if is_running(unit.status) => check,
            Some(Err(e)) => {
                tracing::warn!(instance = %name, error = %e, "ignoring the drain check");
                return self.act(name, after).await.map(Outcome::Now);
            }
            _ => return self.act(name, after).await.map(Outcome::Now),
        };
        let Some(port) = unit.app_port.or(unit.port) else {
            return self.act(name, after).await.map(Outcome::Now);
        };
        let detail = match ask(&check, port).await {
            Pending::Busy(_, detail) => detail,
            Pending::Drained => return self.act(name, after).await.map(Outcome::Now),
            Pending::Broken(e) => {
                tracing::warn!(instance = %name, error = %e, "drain check failed: stopping without waiting");
                return self.act(name, after).await.map(Outcome::Now);
            }
        };
        let timeout = unit.unit.instance.as_ref().map(|i| i.drain_timeout).unwrap_or(Duration::from_secs(600));
        self.begin_drain(name, check, port, timeout, after, detail.clone(), unit.seq);
        Ok(Outcome::Draining(detail))
    }

    #[allow(clippy::too_many_arguments)]
    fn begin_drain(
        self: &Arc<Self>,
        name: &str,
        check: DrainCheck,
        port: u16,
        timeout: Duration,
        after: After,
        detail: String,
        seq: u64,
    ) {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let token = CancellationToken::new();
        self.lock().draining.insert(name.to_string(), Drain { id, token: token.clone(), detail: detail.clone(), seq });
        tracing::info!(instance = %name, %detail, ?timeout, "draining before the stop");
        self.publish(name, Some("draining"), Some(detail), seq);
        let ops = Arc::clone(self);
        let name = name.to_string();
        tokio::spawn(async move {
            let began = Instant::now();
            let why = loop {
                tokio::select! {
                    () = token.cancelled() => return,
                    () = tokio::time::sleep(DRAIN_POLL) => {}
                }
                match ask(&check, port).await {
                    Pending::Drained => break "drained".to_string(),
                    Pending::Broken(e) => break format!("drain check failed ({e})"),
                    Pending::Busy(_, detail) => {
                        if began.elapsed() >= timeout {
                            break format!("DrainTimeoutSec={}s passed with {detail}", timeout.as_secs());
                        }
                        let seq = {
                            let mut inner = ops.lock();
                            match inner.draining.get_mut(&name) {
                                Some(d) if !token.is_cancelled() => {
                                    d.detail = detail.clone();
                                    d.seq
                                }
                                _ => return,
                            }
                        };
                        ops.publish(&name, Some("draining"), Some(detail), seq);
                    }
                }
            };
            // Ours to finish only if no second request took it over meanwhile.
            let ours = {
                let mut inner = ops.lock();
                let ours = inner.draining.get(&name).is_some_and(|d| d.id == id);
                if ours {
                    inner.draining.remove(&name);
                }
                ours
            };
            if ours {
                tracing::info!(instance = %name, %why, "drain over: {}", match after {
                    After::Restart => "restarting",
                    _ => "stopping",
                });
                if let Err(e) = ops.act(&name, after).await {
                    tracing::warn!(instance = %name, error = %e, "the stop after the drain failed");
                }
            }
        });
    }

    async fn act(&self, name: &str, after: After) -> Result<Status, CommandError> {
        match after {
            After::Stop => {
                self.lock().idle_stopped.remove(name);
                self.supervisor.stop(name).await
            }
            After::IdleStop => {
                self.lock().idle_stopped.insert(name.to_string());
                self.supervisor.stop(name).await
            }
            After::Restart => self.supervisor.restart(name).await,
        }
    }

    /// Shutdown of the whole box: every running instance with a drain check
    /// is waited on until its check passes or `budget` is spent (the global
    /// deadline's share for draining); then the ordered shutdown runs.
    pub async fn drain_all(&self, budget: Duration) {
        let Ok(units) = self.supervisor.snapshot().await else { return };
        let mut waiting: Vec<(String, DrainCheck, u16, u64)> = units
            .iter()
            .filter(|u| is_running(u.status))
            .filter_map(|u| {
                let check = self.drain_check(u)?.ok()?;
                Some((u.name.clone(), check, u.app_port.or(u.port)?, u.seq))
            })
            .collect();
        let began = Instant::now();
        while !waiting.is_empty() {
            let mut left = Vec::new();
            for (name, check, port, seq) in waiting {
                if let Pending::Busy(_, detail) = ask(&check, port).await {
                    self.publish(&name, Some("draining"), Some(detail.clone()), seq);
                    left.push((name, check, port, seq));
                }
            }
            waiting = left;
            if waiting.is_empty() {
                break;
            }
            if began.elapsed() + DRAIN_POLL >= budget {
                let names: Vec<&str> = waiting.iter().map(|w| w.0.as_str()).collect();
                tracing::warn!(instances = ?names, "shutdown: the drain's share of the deadline passed; stopping anyway");
                break;
            }
            tokio::time::sleep(DRAIN_POLL).await;
        }
    }

    // ---- idle stop and wake ------------------------------------------------

    /// The login gate let a request through to `uri` (its `X-Original-URI`);
    /// `upgrade` is NGINX's `$request_id` of a WebSocket upgrade.
    pub fn request_seen(&self, uri: &str, upgrade: Option<&str>) {
        let mut inner = self.lock();
        let vnc = uri.strip_prefix(crate::urls::VNC_PREFIX).and_then(|rest| rest.split(['/', '?']).next());
        let name = match crate::urls::app_name_in(uri).or(vnc) {
            Some(name) if crate::units::is_valid_unit_name(name) => name.to_string(),
            Some(_) => return,
            // The apps origin serves nothing else but the ComfyUI slot's paths.
            None => match &inner.slot_holder {
                Some(holder) if !uri.starts_with("/_aikore/") => holder.clone(),
                _ => return,
            },
        };
        if let Some(id) = upgrade.filter(|id| !id.is_empty() && id.len() <= 64) {
            inner.sockets.insert(id.to_string(), name.clone());
        }
        match inner.seen.get_mut(&name) {
            Some(at) => *at = Instant::now(),
            None => {
                inner.seen.insert(name, Instant::now());
            }
        }
    }

    /// Open WebSockets of `unit` as far as aikore knows.
    pub fn open_sockets(&self, unit: &str) -> usize {
        self.lock().sockets.values().filter(|u| *u == unit).count()
    }

    /// Reads what NGINX appended to [`WEBSOCKET_LOG`]: each line is a
    /// WebSocket that ended.
    fn read_socket_log(&self, path: &PathBuf) {
        use std::io::{Read, Seek, SeekFrom};
        let Ok(mut file) = std::fs::File::open(path) else { return };
        let Ok(len) = file.metadata().map(|m| m.len()) else { return };
        let mut inner = self.lock();
        if len < inner.log_offset {
            inner.log_offset = 0; // truncated or replaced
        }
        if len == inner.log_offset || file.seek(SeekFrom::Start(inner.log_offset)).is_err() {
            return;
        }
        let mut text = String::new();
        let Ok(n) = file.take(1 << 20).read_to_string(&mut text) else { return };
        // Only whole lines: a line NGINX is still writing is read next time.
        let whole = text.rfind('\n').map(|i| i + 1).unwrap_or(0);
        inner.log_offset += whole.min(n) as u64;
        for id in text[..whole].lines() {
            inner.sockets.remove(id.trim());
        }
    }

    /// One pass of the idle rule over the running instances.
    async fn idle_pass(self: &Arc<Self>, units: &[UnitSnapshot]) {
        let now = Instant::now();
        for unit in units {
            let Some(idle) = unit.unit.instance.as_ref().and_then(|i| i.idle_stop) else { continue };
            if unit.status != Status::Started {
                continue;
            }
            let quiet = {
                let mut inner = self.lock();
                if inner.draining.contains_key(&unit.name) {
                    continue;
                }
                let sockets = inner.sockets.values().any(|u| *u == unit.name);
                let seen = *inner.seen.entry(unit.name.clone()).or_insert(now);
                !sockets && now.duration_since(seen) >= idle + GATE_CACHE_WINDOW
            };
            if !quiet {
                continue;
            }
            // Never while a job runs: the drain check must pass now.
            if let (Some(Ok(check)), Some(port)) = (self.drain_check(unit), unit.app_port.or(unit.port)) {
                if let Pending::Busy(_, detail) = ask(&check, port).await {
                    tracing::debug!(instance = %unit.name, %detail, "idle but busy: not stopped");
                    continue;
                }
            }
            tracing::info!(instance = %unit.name, idle_stop = ?idle, "no request for IdleStopSec: stopping it until the next visit");
            if let Err(e) = self.act(&unit.name, After::IdleStop).await {
                tracing::warn!(instance = %unit.name, error = %e, "idle stop failed");
            }
        }
    }

    /// A request reached a stopped instance's route (the waking page): starts
    /// it when it was stopped for being idle. Returns its status then, or
    /// None when it stays down (a user stopped it).
    pub async fn wake(&self, name: &str) -> Result<Option<Status>, CommandError> {
        let unit = self.snapshot(name).await?;
        if !unit.status.is_inactive() {
            return Ok(Some(unit.status));
        }
        if !self.is_idle_stopped(name) {
            return Ok(None);
        }
        tracing::info!(instance = %name, "a request woke the idle-stopped instance");
        self.lock().seen.insert(name.to_string(), Instant::now());
        self.supervisor.start(name).await.map(Some)
    }

    /// Runs until `stop`: the idle rule every second, WebSocket ends from
    /// NGINX's log, the install phase of each run from its log, and the
    /// overlay bookkeeping on the engine's events.
    pub async fn run(self: Arc<Self>, data_dir: PathBuf, logs: Arc<LogHub>, stop: CancellationToken) {
        let log = data_dir.join(WEBSOCKET_LOG);
        let mut events = self.supervisor.subscribe();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                event = events.recv() => match event {
                    Ok(ev) if ev.kind == crate::units::UnitKind::Instance => self.on_event(&ev, &logs),
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                _ = tick.tick() => {
                    let Ok(units) = self.supervisor.snapshot().await else { continue };
                    let holder = units
                        .iter()
                        .find(|u| u.unit.instance.as_ref().is_some_and(|i| i.active_slot.as_deref() == Some(crate::urls::SLOT_COMFYUI)))
                        .map(|u| u.name.clone());
                    self.lock().slot_holder = holder;
                    if units.iter().any(|u| u.unit.instance.as_ref().is_some_and(|i| i.idle_stop.is_some())) {
                        self.read_socket_log(&log);
                        self.idle_pass(&units).await;
                    }
                }
            }
        }
        for (_, token) in self.lock().followers.drain() {
            token.cancel();
        }
    }

    fn on_event(self: &Arc<Self>, ev: &crate::supervisor::UnitEvent, logs: &Arc<LogHub>) {
        if ev.event != crate::supervisor::EventKind::State {
            return;
        }
        let mut overlay = None;
        {
            let mut inner = self.lock();
            inner.seqs.insert(ev.unit.clone(), ev.seq);
            if ev.status != Status::Starting && ev.status != Status::Stalled {
                // The install phase, if any, is over with the run's start or end.
                if let Some(token) = inner.followers.remove(&ev.unit) {
                    token.cancel();
                }
                if let Some(install) = inner.installs.get_mut(&ev.unit).filter(|i| i.state == "installing") {
                    install.state = if ev.status == Status::Stopped { "interrupted" } else { "failed" };
                }
            }
            match ev.status {
                Status::Starting => {
                    // A new run: its idle clock starts now, whoever started it.
                    inner.idle_stopped.remove(&ev.unit);
                    inner.seen.insert(ev.unit.clone(), Instant::now());
                    // The engine may say `starting` twice for one run (asked, then spawned): one reader per run.
                    if !inner.followers.contains_key(&ev.unit) {
                        // The last run's install state is history: this run says its own (the version stays).
                        if let Some(install) = inner.installs.get_mut(&ev.unit) {
                            install.state = "";
                        }
                        let token = CancellationToken::new();
                        inner.followers.insert(ev.unit.clone(), token.clone());
                        let ops = Arc::clone(self);
                        let (logs, unit, since) = (Arc::clone(logs), ev.unit.clone(), ev.ts_ms);
                        tokio::spawn(async move { ops.follow_install(logs, unit, since, token).await });
                    }
                }
                Status::Stopped if inner.idle_stopped.contains(&ev.unit) => {
                    overlay = Some(("idle-stopped", "stopped for being idle: the next visit wakes it".to_string()));
                }
                Status::Error | Status::Failed => {
                    inner.idle_stopped.remove(&ev.unit);
                    if let Some(install) = inner.installs.get(&ev.unit).filter(|i| i.state == "failed") {
                        overlay = Some(("failed", format!("install failed at {}", install.describe())));
                    }
                }
                _ => {}
            }
        }
        if let Some((status, detail)) = overlay {
            self.publish(&ev.unit, Some(status), Some(detail), ev.seq);
        }
    }

    /// Reads one run's log from its start until the install phase is over
    /// (or the run ends): `[aikore-install]` lines and pip's/git's progress.
    async fn follow_install(self: Arc<Self>, logs: Arc<LogHub>, unit: String, since_ms: i64, token: CancellationToken) {
        // The lines of this run written before we subscribed are in the backlog.
        let (backlog, mut rx) = logs.follow(&unit, 200);
        for line in backlog.iter().filter(|l| l.ts_ms >= since_ms) {
            if self.install_line(&unit, &line.text) {
                return;
            }
        }
        loop {
            tokio::select! {
                () = token.cancelled() => return,
                line = rx.recv() => match line {
                    Ok(line) => {
                        if self.install_line(&unit, &line.text) {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    }

    /// One log line of a starting run; true once its install phase is over.
    fn install_line(&self, unit: &str, text: &str) -> bool {
        let (changed, view, seq) = {
            let mut inner = self.lock();
            let seq = inner.seqs.get(unit).copied().unwrap_or(0);
            let view = inner.installs.entry(unit.to_string()).or_default();
            let changed = view.take(text);
            (changed, view.clone(), seq)
        };
        if changed {
            if view.state == "installing" {
                self.publish(unit, Some("installing"), Some(view.describe()), seq);
            } else if view.finished() {
                self.publish(unit, None, None, seq);
            }
        }
        changed && view.finished()
    }

    /// The install state of an instance's current or last run, if its blueprint has an install phase.
    pub fn install(&self, unit: &str) -> Option<InstallView> {
        self.lock().installs.get(unit).filter(|v| !v.state.is_empty()).cloned()
    }
}

/// The app version the last install recorded (`.aikore-version` in the
/// instance dir, the instance user's: read without following links, 200 bytes at most).
pub fn installed_version(ctx: &InstanceContext, name: &str) -> Option<String> {
    use std::io::Read;
    let dir = crate::safefs::open_dir(&ctx.instance_dir(name)).ok()?;
    let file = crate::safefs::open_regular_at(&dir, ".aikore-version").ok()?;
    let mut text = String::new();
    file.take(200).read_to_string(&mut text).ok()?;
    let version = text.lines().next()?.trim();
    (!version.is_empty() && !version.chars().any(char::is_control)).then(|| version.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comfyui_queue_counts_running_and_pending_prompts() {
        let check = DrainCheck::parse("comfyui").unwrap();
        let json = serde_json::json!({"queue_running": [[1, "a"]], "queue_pending": [[2, "b"], [3, "c"]]});
        let counts = check.count(&json);
        assert_eq!(counts, [("running".to_string(), 1), ("queued".to_string(), 2)]);
        assert_eq!(describe(&counts), "3 jobs left (1 running, 2 queued)");
        assert_eq!(
            check
                .count(&serde_json::json!({"queue_running": [], "queue_pending": []}))
                .iter()
                .map(|c| c.1)
                .sum::<u64>(),
            0
        );
    }

    #[test]
    fn generic_checks_take_a_path_and_keys_or_pointers() {
        let check = DrainCheck::parse("/api/status busy /jobs/active").unwrap();
        assert_eq!(check.path, "/api/status");
        let json = serde_json::json!({"busy": true, "jobs": {"active": 2}});
        assert_eq!(check.count(&json).iter().map(|c| c.1).sum::<u64>(), 3);
        assert!(DrainCheck::parse("queue x").is_err(), "a path starts with /");
        assert!(DrainCheck::parse("/queue").is_err(), "keys are required");
        assert!(DrainCheck::parse("").is_err());
    }

    #[test]
    fn chunked_answers_are_joined() {
        assert_eq!(dechunk(b"4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n"), b"{\"a\":1}");
    }
}
