//! `RouteSync`: keeps NGINX's instance routes in step with the supervisor.
//! Every instance event (and NGINX coming up) opens a short window; at its
//! end the routes are rendered from one snapshot, tested, swapped in and
//! NGINX reloaded once through its unit's ExecReload.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::routes::{self, ProxyMode, RenderOptions, RouteEntry, RouteInfo};
use super::swap::{stage_and_swap, ConfigTester};
use crate::instances::{InstanceManager, SLOT_COMFYUI};
use crate::store::StoreHandle;
use crate::supervisor::{CommandError, Status, SupervisorHandle, UnitEvent};
use crate::units::UnitKind;

/// How long the first change waits for the ones that come with it. A slot
/// switch rewrites two unit files and restarts one instance; a boot starts
/// every autostart instance: each is a burst of events within milliseconds,
/// and one reload per burst keeps NGINX from spawning a worker generation
/// per event. 100 ms is below what a person clicking notices.
pub const DEBOUNCE: Duration = Duration::from_millis(100);

/// The unit whose ExecReload makes NGINX re-read its config.
pub const NGINX_UNIT: &str = "nginx";

/// `pid nginx.pid;` in nginx/nginx.conf, relative to the prefix.
const NGINX_PID_FILE: &str = "nginx.pid";
/// NGINX writes its pid file within milliseconds of starting; 3 s covers a
/// loaded CI machine, after which a reload is sent anyway.
const NGINX_READY_WAIT: Duration = Duration::from_secs(3);

/// What the proxy looks like now, for `GET /api/v1/proxy`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ProxyStatus {
    /// The live routes match the instances (last render tested and swapped in).
    pub ok: bool,
    /// Why not: NGINX's test output, a refused name, a failed reload.
    pub error: Option<String>,
    /// The routes NGINX serves now (the last good render).
    pub routes: Vec<RouteInfo>,
    /// How long the last render, test and swap took.
    pub rendered_ms: Option<u64>,
    /// When the live routes last changed (ms since the epoch).
    pub updated_ms: Option<i64>,
    /// Reloads sent to NGINX by this daemon.
    pub reloads: u64,
    /// Whether `nginx -t` ran (false where NGINX is not installed).
    pub tested: bool,
}

type RenderReply = oneshot::Sender<ProxyStatus>;

/// The cheap, cloneable way the API reads and pokes the proxy.
#[derive(Clone)]
pub struct ProxyHandle {
    status: Arc<Mutex<ProxyStatus>>,
    requests: mpsc::Sender<RenderReply>,
}

impl ProxyHandle {
    pub fn status(&self) -> ProxyStatus {
        self.status.lock().expect("proxy status lock").clone()
    }

    /// Renders, tests and swaps now (even if nothing changed); answers the result.
    pub async fn render_now(&self) -> Option<ProxyStatus> {
        let (tx, rx) = oneshot::channel();
        self.requests.send(tx).await.ok()?;
        rx.await.ok()
    }

    /// A handle on nothing, for a router built without a daemon.
    pub fn detached() -> ProxyHandle {
        let (requests, _) = mpsc::channel(1);
        ProxyHandle { status: Arc::default(), requests }
    }
}

pub struct RouteSync {
    pub supervisor: SupervisorHandle,
    pub instances: Arc<InstanceManager>,
    pub store: StoreHandle,
    /// NGINX's prefix, `<data>/nginx`.
    pub prefix: PathBuf,
    pub options: RenderOptions,
    pub tester: Arc<dyn ConfigTester>,
    /// AIKORE_PROXY_EXTRA_FILE: a test and diagnostic knob. Its text, when the
    /// file exists, is appended to every candidate (a broken line there makes
    /// the test fail, which is how the integration tests force a bad render).
    pub extra_file: Option<PathBuf>,
}

struct Loop {
    sync: RouteSync,
    status: Arc<Mutex<ProxyStatus>>,
    /// The text now live in routes/aikore.conf; an equal render needs no swap or reload.
    live: Option<String>,
    /// The last error written to the journal, so a persisting one is journaled once.
    journaled: Option<String>,
    /// Public ports of the `port` instances' servers now live (NGINX holds them).
    live_ports: Vec<u16>,
}

impl RouteSync {
    pub fn spawn(self, stop: CancellationToken) -> (ProxyHandle, tokio::task::JoinHandle<()>) {
        let status = Arc::new(Mutex::new(ProxyStatus::default()));
        let (requests_tx, requests) = mpsc::channel(8);
        let events = self.supervisor.subscribe();
        let lp = Loop { sync: self, status: Arc::clone(&status), live: None, journaled: None, live_ports: Vec::new() };
        let task = tokio::spawn(lp.run(events, requests, stop));
        (ProxyHandle { status, requests: requests_tx }, task)
    }
}

/// What an event means to the routes.
#[derive(Debug, PartialEq, Eq)]
enum Relevance {
    None,
    /// An instance changed: render (a reload only if the text changed).
    Render,
    /// NGINX itself came up: it read whatever was live then, so reload even
    /// when the routes are unchanged (a swap may have raced its start).
    NginxUp,
}

/// Whether an event can change the routes or needs them re-read. For NGINX
/// only a `state` transition into `started` counts: the `info` "reloaded"
/// event our own reload causes also carries status `started`, and treating it
/// as a restart made every reload schedule the next one (issue 11: ~9
/// reloads a second, forever). `was_started` is NGINX's status before this
/// event, so a detail-only `state` event while started is no transition.
fn relevance(kind: UnitKind, unit: &str, event: &str, status: Status, was_started: bool) -> Relevance {
    if kind == UnitKind::Instance {
        Relevance::Render
    } else if unit == NGINX_UNIT && event == "state" && status == Status::Started && !was_started {
        Relevance::NginxUp
    } else {
        Relevance::None
    }
}

impl Loop {
    async fn run(
        mut self,
        mut events: broadcast::Receiver<UnitEvent>,
        mut requests: mpsc::Receiver<RenderReply>,
        stop: CancellationToken,
    ) {
        // The first render comes from the daemon's render_now() before it starts units.
        let mut due: Option<tokio::time::Instant> = None;
        let mut reload_anyway = false;
        let mut requests_open = true;
        // NGINX's status as last seen, so only a transition into `started` counts.
        let mut nginx_started = false;
        loop {
            let sleep = async {
                match due {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                event = events.recv() => match event {
                    Ok(event) => {
                        let relevance =
                            relevance(event.kind, &event.unit, event.event.as_str(), event.status, nginx_started);
                        if event.unit == NGINX_UNIT && event.event == crate::supervisor::EventKind::State {
                            nginx_started = event.status == Status::Started;
                        }
                        match relevance {
                            Relevance::None => {}
                            Relevance::Render => {
                                due.get_or_insert_with(|| tokio::time::Instant::now() + DEBOUNCE);
                            }
                            Relevance::NginxUp => {
                                reload_anyway = true;
                                due.get_or_insert_with(|| tokio::time::Instant::now() + DEBOUNCE);
                            }
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        due.get_or_insert_with(|| tokio::time::Instant::now() + DEBOUNCE);
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                request = requests.recv(), if requests_open => {
                    let Some(reply) = request else {
                        requests_open = false;
                        continue;
                    };
                    self.render(true).await;
                    let _ = reply.send(self.status.lock().expect("proxy status lock").clone());
                }
                _ = sleep => {
                    due = None;
                    let changed = self.render(false).await;
                    if reload_anyway && !changed {
                        self.reload().await;
                    }
                    reload_anyway = false;
                }
            }
        }
    }

    fn set<R>(&self, f: impl FnOnce(&mut ProxyStatus) -> R) -> R {
        f(&mut self.status.lock().expect("proxy status lock"))
    }

    async fn entries(&self) -> Result<Vec<RouteEntry>, CommandError> {
        let snapshot = self.sync.supervisor.snapshot().await?;
        let mut out = Vec::new();
        for unit in snapshot.into_iter().filter(|u| u.kind == UnitKind::Instance) {
            let Some(instance) = unit.unit.instance.as_ref() else { continue };
            // Starting and stalled count as running: the process lives and its
            // port is leased, so the route exists the moment the app listens
            // (NGINX shows "not answering" until then), and the start -> started
            // step needs no reload.
            let running = matches!(unit.status, Status::Starting | Status::Stalled | Status::Started);
            let mode = self.sync.instances.proxy_mode(&unit.name, &instance.blueprint);
            // A `port` instance: NGINX holds its public port (the fixed one, or
            // its lease) whether or not it runs; the app is on `app_port`.
            let public_port = crate::instances::direct_port_of(&unit, mode);
            let port = match mode {
                ProxyMode::Port => unit.app_port.filter(|_| public_port.is_some()),
                ProxyMode::Subpath => unit.port,
            };
            out.push(RouteEntry {
                mode,
                port: port.filter(|_| running),
                public_port,
                slot: instance.active_slot.as_deref() == Some(SLOT_COMFYUI),
                persistent: instance.persistent_mode,
                vnc_port: unit.vnc_port.filter(|_| running),
                wake: instance.idle_stop.is_some(),
                name: unit.name,
            });
        }
        Ok(out)
    }

    /// Renders and, when the text changed (or `force`), tests, swaps and
    /// reloads. Returns whether NGINX was reloaded.
    async fn render(&mut self, force: bool) -> bool {
        let started = Instant::now();
        let mut entries = match self.entries().await {
            Ok(entries) => entries,
            Err(e) => {
                tracing::debug!(error = %e, "proxy: no snapshot (shutting down?)");
                return false;
            }
        };
        // A new server on a port another process listens on would make
        // NGINX's reload fail (and every later route change with it): such a
        // port gets no server, and the status says why.
        let mut taken = Vec::new();
        for entry in entries.iter_mut().filter(|e| e.mode == ProxyMode::Port) {
            let Some(port) = entry.public_port else { continue };
            if !self.live_ports.contains(&port) && !super::port_free_on(self.sync.options.bind, port) {
                taken.push(format!(
                    "port {port} of instance {} is in use by another process: NGINX does not serve it there",
                    entry.name
                ));
                entry.public_port = None;
            }
        }
        let new_ports: Vec<u16> =
            entries.iter().filter(|e| e.mode == ProxyMode::Port).filter_map(|e| e.public_port).collect();
        let mut rendered = routes::render(&entries, &self.sync.options);
        rendered.refused.extend(taken);
        let mut text = rendered.text;
        if let Some(extra) = self.sync.extra_file.as_ref().and_then(|p| std::fs::read_to_string(p).ok()) {
            text.push_str("\n# AIKORE_PROXY_EXTRA_FILE\n");
            text.push_str(&extra);
            text.push('\n');
        }
        let refused = (!rendered.refused.is_empty()).then(|| rendered.refused.join("; "));
        // Compared as one text: either file changing means a swap.
        let both = format!("{}\n{text}", rendered.upstreams);
        if !force && self.live.as_deref() == Some(both.as_str()) {
            return false;
        }
        let prefix = self.sync.prefix.clone();
        let tester = Arc::clone(&self.sync.tester);
        let upstreams = rendered.upstreams;
        // The files stay the daemon's: the instance user must not edit NGINX's config.
        let swapped = tokio::task::spawn_blocking(move || stage_and_swap(&prefix, &upstreams, &text, tester.as_ref()))
            .await
            .unwrap_or_else(|e| Err(super::swap::SwapError::Io(std::io::Error::other(e.to_string()))));
        let elapsed = started.elapsed().as_millis() as u64;
        let tested = self.sync.tester.available();
        match swapped {
            Ok(()) => {
                self.live = Some(both);
                self.live_ports = new_ports;
                let routes = rendered.routes;
                tracing::info!(routes = routes.len(), ms = elapsed, tested, "proxy: routes updated");
                self.set(|s| {
                    s.routes = routes;
                    s.rendered_ms = Some(elapsed);
                    s.updated_ms = Some(crate::clock::now_ms());
                    s.tested = tested;
                    s.ok = refused.is_none();
                    s.error = refused.clone();
                });
                match refused {
                    Some(why) => self.journal_error(why).await,
                    // Recovered: a recurrence of the same error is news again.
                    None => self.journaled = None,
                }
                self.reload().await
            }
            Err(e) => {
                let why = format!("{e}");
                tracing::error!(error = %why, "proxy: candidate routes refused; the live config stays");
                self.set(|s| {
                    s.ok = false;
                    s.error = Some(why.clone());
                    s.rendered_ms = Some(elapsed);
                    s.tested = tested;
                });
                self.journal_error(why).await;
                false
            }
        }
    }

    /// Waits (bounded) until NGINX's master can take a SIGHUP. The unit is
    /// "started" as soon as it is exec'd, and a HUP before NGINX installs its
    /// handlers kills it; NGINX writes its pid file after installing them, so
    /// a pid file naming the unit's main pid means a HUP is safe.
    async fn nginx_ready(&self) {
        let pid_file = self.sync.prefix.join(NGINX_PID_FILE);
        let deadline = Instant::now() + NGINX_READY_WAIT;
        while Instant::now() < deadline {
            let Ok(snapshot) = self.sync.supervisor.snapshot().await else { return };
            let Some(nginx) = snapshot.into_iter().find(|u| u.name == NGINX_UNIT) else { return };
            let Some(pid) = nginx.pid.filter(|_| nginx.status == Status::Started) else { return };
            let written = std::fs::read_to_string(&pid_file).ok().and_then(|t| t.trim().parse::<i32>().ok());
            if written == Some(pid) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracing::warn!(pid_file = %pid_file.display(), "NGINX's pid file does not name its master; reloading anyway");
    }

    /// NGINX re-reads its config through its unit's ExecReload.
    async fn reload(&mut self) -> bool {
        self.nginx_ready().await;
        match self.sync.supervisor.reload(NGINX_UNIT).await {
            Ok(()) => {
                self.set(|s| s.reloads += 1);
                true
            }
            // No NGINX unit (a bare checkout, most tests), or it is not up:
            // it reads the live files when it starts, and we reload again then.
            Err(CommandError::NoSuchUnit(_)) | Err(CommandError::Refused { .. }) => false,
            Err(e) => {
                let why = format!("reloading NGINX failed: {e}");
                self.set(|s| {
                    s.ok = false;
                    s.error = Some(why.clone());
                });
                self.journal_error(why).await;
                false
            }
        }
    }

    async fn journal_error(&mut self, why: String) {
        if self.journaled.as_deref() == Some(why.as_str()) {
            return;
        }
        self.journaled = Some(why.clone());
        let detail = format!("proxy: {why}");
        let result = self
            .sync
            .store
            .call(move |s| s.append_event(crate::clock::now_ms(), Some(NGINX_UNIT), "error", &detail))
            .await;
        if let Ok(Err(e)) = result {
            tracing::warn!(error = %e, "journal write failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (issue 11): the "reloaded" info event our reload causes
    /// carries status `started`; it must not count as NGINX (re)starting.
    #[test]
    fn nginx_reloaded_event_is_not_a_restart() {
        let r = relevance(UnitKind::Service, NGINX_UNIT, "info", Status::Started, true);
        assert_eq!(r, Relevance::None);
        // Even if we somehow missed the transition, an info event is never one.
        assert_eq!(relevance(UnitKind::Service, NGINX_UNIT, "info", Status::Started, false), Relevance::None);
    }

    #[test]
    fn only_a_transition_of_nginx_into_started_reloads() {
        assert_eq!(relevance(UnitKind::Service, NGINX_UNIT, "state", Status::Started, false), Relevance::NginxUp);
        // A detail change while already started is no restart.
        assert_eq!(relevance(UnitKind::Service, NGINX_UNIT, "state", Status::Started, true), Relevance::None);
        assert_eq!(relevance(UnitKind::Service, NGINX_UNIT, "state", Status::Starting, false), Relevance::None);
        assert_eq!(relevance(UnitKind::Service, "other", "state", Status::Started, false), Relevance::None);
    }

    #[test]
    fn every_instance_event_renders() {
        for event in ["state", "exit", "config", "info"] {
            assert_eq!(relevance(UnitKind::Instance, "a", event, Status::Started, false), Relevance::Render);
        }
    }
}
