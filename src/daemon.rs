//! `aikore serve`, the composition root: [`Daemon::boot`] resolves the data
//! dir, opens the state and wires init, store, logs, supervisor, instances,
//! proxy, metrics and web together; [`Daemon::run`] serves until a shutdown
//! future resolves (or the engine dies), then runs the ordered shutdown.
//! One root cancellation token with a child per stage, and a task tracker
//! that is waited for (with a cap) before the process exits.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::now_ms;
use crate::config::Settings;
use crate::init;
use crate::logs::{LogConfig, LogHub};
use crate::ownership::DataDir;
use crate::store::{StateUpdate, Store, StoreHandle};
use crate::supervisor::cgroup::CgroupRoot;
use crate::supervisor::reload::{report_diagnostics, Reloader};
use crate::supervisor::{members, Engine, HostConfig, HostProcesses, SupervisorHandle, UnitEvent, EVENT_CAPACITY};
use crate::units::{load_dirs, LoadedUnits};

/// Exit codes of `aikore serve`.
pub mod exit_code {
    /// Every unit stopped within its timeout.
    pub const CLEAN: i32 = 0;
    /// Startup failed (bad settings, unusable data dir, port taken).
    pub const STARTUP: i32 = 1;
    /// Some unit needed SIGKILL or the global deadline passed.
    pub const UNCLEAN_SHUTDOWN: i32 = 2;
    /// The supervisor engine panicked or returned outside a shutdown: every
    /// unit process was killed and the daemon exited at once (a container
    /// runtime restarts it).
    pub const ENGINE_DIED: i32 = 3;
}

/// A short stable tag for the data dir, so two daemons on one machine (tests,
/// a dev checkout beside the container) never share cgroups.
fn data_dir_tag(data_dir: &std::path::Path) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    data_dir.hash(&mut hasher);
    format!("{:08x}", hasher.finish() as u32)
}

/// Processes left by a previous daemon on the same data dir would hold ports
/// and GPUs: stop them (TERM, `grace`, then KILL) before anything starts.
/// Found by the pids (and start times) it recorded, with their process groups
/// and descendants, and by the environment markers (a double-forked process
/// the record cannot reach). Also how a daemon whose engine died kills the
/// units it can no longer supervise (`grace` zero: KILL at once).
fn stop_leftovers(data_dir: &std::path::Path, cgroups: Option<&CgroupRoot>, grace: Duration) {
    if let Some(root) = cgroups {
        for unit in root.clear_leftovers() {
            tracing::warn!(unit = %unit, "stopped processes left by a previous run (cgroup)");
        }
    }
    let marker = data_dir.display().to_string();
    let recorded = members::PidRecord::leftovers(data_dir);
    for (unit, t) in &recorded {
        tracing::warn!(unit = %unit, pid = t.pid, "a process of the previous run is still alive");
    }
    let roots: Vec<members::Tracked> = recorded.iter().map(|(_, t)| *t).collect();
    let find = || {
        let mut pids = members::process_trees(&roots);
        for pid in members::processes_of_data_dir(&marker) {
            if !pids.contains(&pid) {
                pids.push(pid);
            }
        }
        pids
    };
    let pids = find();
    if pids.is_empty() {
        return;
    }
    tracing::warn!(count = pids.len(), "stopping processes left by a previous run");
    // Pids recorded with their start time, their descendants, or carrying our data dir marker.
    use crate::sys::signal::{to_each, Signal};
    to_each(&pids, if grace.is_zero() { Signal::SIGKILL } else { Signal::SIGTERM });
    let deadline = std::time::Instant::now() + grace.max(Duration::from_millis(500));
    while std::time::Instant::now() < deadline && !find().is_empty() {
        std::thread::sleep(Duration::from_millis(20));
    }
    to_each(&find(), Signal::SIGKILL);
}

/// What only the boot used (its code pages, its free heap) is given back
/// once the starts settled: no unit event for [`BOOT_QUIET`], or
/// [`BOOT_SETTLE_CAP`] after the boot whatever happens (a crash-looping
/// unit never goes quiet). Issue 15: an idle daemon's memory was mostly
/// code that only the boot ran (`sys::memory`).
async fn give_back_boot_pages(mut events: tokio::sync::broadcast::Receiver<crate::supervisor::UnitEvent>) {
    const BOOT_QUIET: Duration = Duration::from_secs(2);
    const BOOT_SETTLE_CAP: Duration = Duration::from_secs(60);
    let cap = tokio::time::Instant::now() + BOOT_SETTLE_CAP;
    loop {
        let quiet = (tokio::time::Instant::now() + BOOT_QUIET).min(cap);
        match tokio::time::timeout_at(quiet, events.recv()).await {
            Ok(Ok(_)) | Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
            // Quiet long enough, past the cap, or the engine is gone.
            Err(_) | Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) => break,
        }
        if tokio::time::Instant::now() >= cap {
            break;
        }
    }
    drop(events);
    let _ = tokio::task::spawn_blocking(crate::sys::memory::release_boot_pages).await;
}

/// Debug builds only: resolves once the file named by
/// `AIKORE_TEST_PANIC_ENGINE` exists, and the engine task then panics, so a
/// test can see the daemon notice a dead engine. Pending forever otherwise,
/// and always in a release build (a user cannot trigger it: `Knobs` never
/// reads the variable there, and this code is compiled out).
async fn test_engine_panic(trigger: Option<PathBuf>) {
    #[cfg(debug_assertions)]
    if let Some(trigger) = trigger {
        while !trigger.exists() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        return;
    }
    let _ = trigger;
    std::future::pending::<()>().await
}

/// Mirrors every supervisor event into SQLite: state rows and the journal.
/// On `stop` it writes what the supervisor already sent (the final
/// `stopped` transitions of a shutdown), then returns.
async fn journal_events(
    mut events: broadcast::Receiver<UnitEvent>,
    store: StoreHandle,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        let received = tokio::select! {
            biased;
            received = events.recv() => received,
            _ = stop.cancelled() => break,
        };
        match received {
            Ok(event) => record_event(&store, event).await,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(missed = n, "journal fell behind the supervisor")
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
    loop {
        match events.try_recv() {
            Ok(event) => record_event(&store, event).await,
            Err(broadcast::error::TryRecvError::Lagged(_)) => continue,
            Err(_) => return,
        }
    }
}

async fn record_event(store: &StoreHandle, event: UnitEvent) {
    let result = store
        .call(move |s| -> crate::store::Result<()> {
            if event.event == crate::supervisor::EventKind::State {
                s.record_state(&StateUpdate {
                    name: event.unit.clone(),
                    kind: event.kind.as_str().to_string(),
                    status: event.status.as_str().to_string(),
                    status_detail: event.detail.clone(),
                    pid: event.pid,
                    pgid: event.pid,
                    restarts: event.restarts,
                    last_exit: event.last_exit.clone(),
                    since_ms: event.since_ms,
                    started_ms: event.started_ms,
                })?;
            }
            let detail = match &event.detail {
                Some(d) if event.event == crate::supervisor::EventKind::State => format!("{}: {d}", event.status),
                Some(d) => d.clone(),
                None => event.status.to_string(),
            };
            s.append_event(event.ts_ms, Some(&event.unit), event.event.as_str(), &detail)?;
            Ok(())
        })
        .await;
    if let Ok(Err(e)) | Err(e) = result {
        tracing::warn!(error = %e, "journal write failed");
    }
}

/// cgroup v2 per unit where a writable subtree exists, else process groups
/// and markers; the second value is what `/healthz` reports.
fn process_tracking(data_dir: &std::path::Path, cgroups_wanted: bool) -> (Option<CgroupRoot>, &'static str) {
    // AIKORE_CGROUP=off forces the process-group fallback (tests of that path,
    // or a host whose cgroup delegation misbehaves).
    let probed = if cgroups_wanted {
        CgroupRoot::probe(&data_dir_tag(data_dir))
    } else {
        Err("disabled by AIKORE_CGROUP=off".into())
    };
    match probed {
        Ok(root) => {
            tracing::info!(path = %root.path().display(), "process tracking: cgroup v2 per unit");
            (Some(root), "cgroup")
        }
        Err(why) => {
            tracing::info!(reason = %why, "process tracking: process groups and AIKORE_UNIT markers (no writable cgroup v2)");
            (None, "process-group")
        }
    }
}

/// Where NGINX reaches the API: its listen address, loopback for a wildcard.
fn api_upstream(settings: &Settings) -> std::net::SocketAddr {
    match settings.listen {
        addr if addr.ip().is_unspecified() => std::net::SocketAddr::from(([127, 0, 0, 1], addr.port())),
        addr => addr,
    }
}

/// NGINX's base config and the dirs its workers write; returns the login
/// gate's cache dir (removed at shutdown).
fn write_nginx_base(
    settings: &Settings,
    data: &DataDir,
    nginx_worker: Option<&crate::proxy::WorkerUser>,
    gate_secret: &str,
) -> anyhow::Result<std::path::PathBuf> {
    let auth_cache = crate::proxy::make_auth_cache_dir(
        &settings.data_dir,
        nginx_worker.map(|w| (w.uid, w.gid)),
        &crate::web::auth::random_token()[..16],
    )
    .context("making the login gate's cache dir")?;
    let base = crate::proxy::BaseConfig {
        listen_addr: settings.proxy_bind,
        listen_port: settings.proxy_port,
        apps_port: settings.apps_port,
        upstream: api_upstream(settings),
        worker_user: nginx_worker.cloned(),
        auth_cache: auth_cache.clone(),
        gate_secret: gate_secret.to_string(),
    };
    crate::proxy::write_base_config(&settings.data_dir, &base).context("writing the NGINX config")?;
    if let Some(w) = nginx_worker {
        // Only the workers' temp dirs are theirs; the config stays the daemon's.
        for dir in crate::proxy::NGINX_TEMP_DIRS {
            let rel = format!("{}/{dir}", crate::ownership::NGINX_TMP);
            data.hand_over(&rel, (w.uid, w.gid)).with_context(|| format!("giving {rel} to NGINX's worker user"))?;
        }
    }
    Ok(auth_cache)
}

/// The store opened and the unit files loaded, their state rows reconciled.
async fn open_state(settings: &Settings, data: &DataDir) -> anyhow::Result<(StoreHandle, LoadedUnits)> {
    let store =
        Store::open(&settings.db_path()).with_context(|| format!("opening {}", settings.db_path().display()))?;
    let store = StoreHandle::spawn(store);
    for suffix in ["", "-wal", "-shm"] {
        data.private_file(&format!("aikore.db{suffix}"));
    }

    let dirs = settings.units_dirs.clone();
    let loaded = tokio::task::spawn_blocking(move || load_dirs(&dirs)).await?;
    report_diagnostics(&loaded.diagnostics);
    let names: Vec<(String, String)> =
        loaded.units.iter().map(|u| (u.name.clone(), u.kind.as_str().to_string())).collect();
    let reconciled = store.call(move |s| s.reconcile(&names, now_ms())).await??;
    // No run exists yet: display leases from a previous life are only preferences now.
    store.call(|s| s.release_all_displays(now_ms())).await??;
    for name in &reconciled.archived {
        tracing::info!(unit = %name, "unit file gone; its state row is archived");
    }
    journal_cut_off_units(&store, reconciled.leftovers).await?;
    Ok((store, loaded))
}

/// What the state rows say of the previous daemon's end: a clean shutdown
/// records every unit stopped with no pid, so a row that still has one was
/// running when that daemon died (killed, OOM, power). Told in the log and,
/// per unit, in the journal (`GET /api/v1/journal`), where the operator
/// looks for why a unit restarted.
async fn journal_cut_off_units(store: &StoreHandle, rows: Vec<crate::store::UnitRow>) -> anyhow::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let notes: Vec<(String, String)> = rows
        .into_iter()
        .map(|row| {
            let pid = row.pid.map(|p| format!(" (pid {p})")).unwrap_or_default();
            tracing::warn!(unit = %row.name, status = %row.status, "the previous aikore ended while this unit ran");
            let note = format!(
                "the previous aikore ended without a clean shutdown while this unit was {}{pid}; \
                 what it left running was stopped",
                row.status
            );
            (row.name, note)
        })
        .collect();
    store
        .call(move |s| -> crate::store::Result<()> {
            let now = now_ms();
            for (unit, note) in &notes {
                s.append_event(now, Some(unit), "info", note)?;
            }
            Ok(())
        })
        .await??;
    Ok(())
}

/// The engine died outside a shutdown: nothing supervises the units any
/// more, and PID 1 must not keep answering 503 with them orphaned. Kill
/// them and tell the caller to exit non-zero.
async fn kill_orphaned_units(
    ended: Result<(), tokio::task::JoinError>,
    data_dir: &std::path::Path,
    cgroups: Option<CgroupRoot>,
) -> i32 {
    match ended {
        Err(e) if e.is_panic() => {
            tracing::error!(error = %e, "the supervisor engine panicked; killing every unit and exiting")
        }
        other => {
            tracing::error!(?other, "the supervisor engine ended outside a shutdown; killing every unit and exiting")
        }
    }
    let data_dir = data_dir.to_path_buf();
    if let Err(e) =
        tokio::task::spawn_blocking(move || stop_leftovers(&data_dir, cgroups.as_ref(), Duration::ZERO)).await
    {
        tracing::error!(error = %e, "killing the orphaned units failed");
    }
    exit_code::ENGINE_DIED
}

/// The ordered shutdown (instances, then services in reverse order) within
/// `timeout`, then KILL for what is left; the exit code says which.
async fn stop_units(supervisor: &SupervisorHandle, engine: JoinHandle<()>, timeout: Duration) -> i32 {
    tracing::info!(timeout = ?timeout, "shutting down: instances first, then services in reverse order");
    let mut code = match tokio::time::timeout(timeout, supervisor.shutdown()).await {
        Ok(Ok(report)) if report.clean => exit_code::CLEAN,
        Ok(_) => exit_code::UNCLEAN_SHUTDOWN,
        Err(_) => {
            tracing::error!("shutdown deadline passed; killing what is left");
            supervisor.kill_all().await;
            exit_code::UNCLEAN_SHUTDOWN
        }
    };
    // After a KillAll the engine still finishes once processes are gone; give it a moment.
    if tokio::time::timeout(Duration::from_secs(5), engine).await.is_err() {
        code = exit_code::UNCLEAN_SHUTDOWN;
    }
    code
}

/// The supervisor engine on its task, with what the rest of the daemon holds of it.
struct EngineParts {
    supervisor: SupervisorHandle,
    events: broadcast::Sender<UnitEvent>,
    /// Watched by `run`: a panic or an early return makes the daemon exit non-zero.
    task: JoinHandle<()>,
    instance_ctx: crate::instances::InstanceContext,
}

/// Builds the host side (spawner, cgroups, instances' hooks) and starts the engine task.
fn start_engine(
    settings: &Settings,
    cgroups: Option<CgroupRoot>,
    store: &StoreHandle,
    logs: &Arc<LogHub>,
    loaded: LoadedUnits,
    gpus: &Arc<crate::gpu::Gpus>,
) -> EngineParts {
    let instance_ctx = crate::instances::InstanceContext {
        gpus: Some(Arc::clone(gpus)),
        data_dir: settings.data_dir.clone(),
        blueprints_dir: settings.blueprints_dir.clone(),
        port_range: settings.port_range.clone(),
        store: store.clone(),
        owner: settings.owner,
        proxy_serves: crate::proxy::serves_port,
    };
    let (events, _) = broadcast::channel(EVENT_CAPACITY);
    let (commands_tx, commands_rx) = mpsc::channel(256);
    let (exits_tx, exits_rx) = mpsc::unbounded_channel();
    let (hints_tx, hints_rx) = mpsc::unbounded_channel();
    let host = HostProcesses::new(
        HostConfig {
            data_dir: settings.data_dir.clone(),
            cgroups,
            base_env: crate::supervisor::host::inherited_env(),
            hooks: Some(Arc::new(instance_ctx.clone())),
            default_identity: settings.owner,
        },
        Arc::clone(logs),
        exits_tx,
        hints_tx,
    );
    let supervisor = SupervisorHandle::new(commands_tx, events.clone());
    let engine_run = Engine::new(host, loaded.units, events.clone()).run(commands_rx, exits_rx, hints_rx);
    let trigger = settings.knobs.test_panic_engine.clone();
    let task = tokio::spawn(async move {
        tokio::select! {
            () = engine_run => {}
            () = test_engine_panic(trigger) => panic!("AIKORE_TEST_PANIC_ENGINE: the engine task panics on purpose"),
        }
    });
    EngineParts { supervisor, events, task, instance_ctx }
}

/// The shutdown tree: one root token and a child per stage, cancelled by
/// `run` in this order (what serves first, then what records, then what
/// measures), and one tracker for every task spawned here.
struct Stages {
    root: CancellationToken,
    web: CancellationToken,
    /// Drain, idle stop and wake (instances::quiesce): ends after the units are stopped.
    ops: CancellationToken,
    /// The NGINX route sync: nothing to route to once the units are stopped.
    proxy: CancellationToken,
    /// Stopped after the units, so the final `stopped` transitions are written.
    journal: CancellationToken,
    metrics: CancellationToken,
    /// Waited for (with a cap) before the process exits.
    tasks: TaskTracker,
}

impl Stages {
    fn new() -> Stages {
        let root = CancellationToken::new();
        Stages {
            web: root.child_token(),
            ops: root.child_token(),
            proxy: root.child_token(),
            journal: root.child_token(),
            metrics: root.child_token(),
            root,
            tasks: TaskTracker::new(),
        }
    }

    /// Tracks a task some other module spawned (its JoinHandle), so `wait` covers it.
    fn track(&self, task: JoinHandle<()>) -> JoinHandle<()> {
        self.tasks.spawn(async move {
            let _ = task.await;
        })
    }

    /// Cancels `stage`, then waits up to `cap` for its tasks.
    async fn stop(stage: &CancellationToken, tasks: Vec<JoinHandle<()>>, cap: Duration) {
        stage.cancel();
        for task in tasks {
            let _ = tokio::time::timeout(cap, task).await;
        }
    }
}

/// The background tasks beside the engine, by the stage that stops them.
struct Background {
    web: Option<JoinHandle<()>>,
    ops: JoinHandle<()>,
    proxy: JoinHandle<()>,
    journal: JoinHandle<()>,
    metrics: MetricsTasks,
}

struct MetricsTasks {
    events: tokio::task::AbortHandle,
    /// OnFailure=, BindsTo=, Conflicts=, ...: follows the events like the counter, aborted with it.
    relations: tokio::task::AbortHandle,
    history: JoinHandle<()>,
}

/// Prometheus metrics: subscribed before `start_all` so the first starts are
/// counted; AIKORE_NVML=off never loads the driver.
fn start_metrics(
    settings: &Settings,
    supervisor: &SupervisorHandle,
    logs: &Arc<LogHub>,
    cgroups: Option<&CgroupRoot>,
    gpus: &Arc<crate::gpu::Gpus>,
    stages: &Stages,
) -> anyhow::Result<(Arc<crate::metrics::Metrics>, MetricsTasks)> {
    let metrics = crate::metrics::Metrics::new(
        supervisor.clone(),
        Arc::clone(logs),
        crate::metrics::MetricsConfig {
            cgroup_root: cgroups.map(|root| root.path().to_path_buf()),
            data_dir: settings.data_dir.clone(),
            nvml: settings.knobs.nvml,
            gpus: Some(Arc::clone(gpus)),
        },
    )?;
    // Placement's view of what instances use, GPU health between scrapes, leak restarts.
    stages.track(crate::metrics::watch::spawn(
        supervisor.clone(),
        Arc::clone(logs),
        Arc::clone(gpus),
        cgroups.map(|root| root.path().to_path_buf()),
        stages.metrics.clone(),
    ));
    // The event counter runs as long as the supervisor's channel: aborted at shutdown.
    let events = metrics.track_events(supervisor.subscribe());
    let events_abort = events.abort_handle();
    stages.track(events);
    let relations = crate::supervisor::relations::spawn(supervisor.clone(), supervisor.subscribe());
    let relations_abort = relations.abort_handle();
    stages.track(relations);
    let history = stages.track(metrics.run_history(stages.metrics.clone()));
    Ok((metrics, MetricsTasks { events: events_abort, relations: relations_abort, history }))
}

/// The NGINX route sync, with the routes rendered once before it returns:
/// they exist before NGINX first starts (and before the API answers, so a
/// client never sees the units waiting for it), and ComfyUI's paths answer
/// the "no slot holder" page, never the dashboard, from the first request.
async fn start_proxy(
    settings: &Settings,
    supervisor: &SupervisorHandle,
    instances: &Arc<crate::instances::InstanceManager>,
    store: &StoreHandle,
    stages: &Stages,
) -> (crate::proxy::ProxyHandle, JoinHandle<()>) {
    let (proxy, task) = crate::proxy::RouteSync {
        supervisor: supervisor.clone(),
        instances: Arc::clone(instances),
        store: store.clone(),
        prefix: settings.data_dir.join("nginx"),
        options: crate::proxy::routes::RenderOptions {
            bind: settings.proxy_bind,
            api: api_upstream(settings),
            reserved_ports: vec![settings.proxy_port, settings.apps_port],
            ..crate::proxy::render_options(settings.knobs.max_body.as_deref())
        },
        tester: Arc::new(crate::proxy::swap::NginxTester::new(settings.knobs.nginx_bin.clone())),
        extra_file: settings.knobs.proxy_extra_file.clone(),
    }
    .spawn(stages.proxy.clone());
    proxy.render_now().await;
    (proxy, stages.track(task))
}

/// A running daemon between [`Daemon::boot`] and [`Daemon::run`]: the units
/// are loaded and the engine runs, the API is bound but does not answer yet
/// and no unit has been started.
pub struct Daemon {
    settings: Settings,
    cgroups: Option<CgroupRoot>,
    supervisor: SupervisorHandle,
    /// Watched by `run`: a panic or an early return makes the daemon exit non-zero.
    engine: JoinHandle<()>,
    reloader: Arc<Reloader>,
    web: crate::web::AppState,
    listener: tokio::net::TcpListener,
    /// SIGHUP, installed before the API answers (an early one reloads, it is not lost).
    hangups: init::signals::Hangups,
    stages: Stages,
    /// Running jobs finish before the units stop (docs/operations.md).
    ops: Arc<crate::instances::quiesce::Ops>,
    background: Background,
    /// The login gate's credential cache: removed at exit (NGINX is gone with the units).
    auth_cache: PathBuf,
}

impl Daemon {
    /// Everything up to a bound API listener; fails (exit 1) on settings or a
    /// data dir that cannot be used, or a port that is taken.
    pub async fn boot(settings: Settings) -> anyhow::Result<Daemon> {
        // aikore's own state is the daemon's, never the instance user's (older
        // versions gave the whole top level to PUID): fixed before anything in it
        // is read or written, so no planted symlink is ever followed.
        let data = DataDir::open(&settings.data_dir, settings.owner.is_some())?;
        let settings = Settings { data_dir: data.path().to_path_buf(), ..settings };
        data.state_dir("units")?;
        become_init();
        let (cgroups, tracking) = process_tracking(data.path(), settings.knobs.cgroups);
        let (leftover_cgroups, data_dir) = (cgroups.clone(), settings.data_dir.clone());
        // A previous run's app gets a short grace to flush, not a full TimeoutStopSec: it is already orphaned.
        tokio::task::spawn_blocking(move || {
            stop_leftovers(&data_dir, leftover_cgroups.as_ref(), Duration::from_secs(3))
        })
        .await?;
        let nginx_worker = crate::proxy::worker_user(settings.knobs.nginx_user.as_deref());
        // The login gate's fast-path cookies: NGINX checks what aikore signs (web::gate).
        let gate_secret = crate::web::auth::random_token();
        let auth_cache = write_nginx_base(&settings, &data, nginx_worker.as_ref(), &gate_secret)?;

        let (store, loaded) = open_state(&settings, &data).await?;
        // Logs are the daemon's: rotation renames in a dir the instance user cannot write.
        // Retention: AIKORE_LOG_MAX_FILE_SIZE/_MAX_FILES/_COMPRESS (docs/operations.md).
        let retention = crate::logs::Retention::from_vars(|k| std::env::var(k).ok()).map_err(anyhow::Error::msg)?;
        let logs = LogHub::new(settings.logs_dir(), LogConfig { retention, ..LogConfig::default() })?;
        // Shared by placement, the watch and metrics; AIKORE_NVML=off never loads the driver.
        let gpus = crate::gpu::Gpus::open(settings.knobs.gpu_fake.clone(), settings.knobs.nvml);
        let engine = start_engine(&settings, cgroups.clone(), &store, &logs, loaded, &gpus);
        let supervisor = engine.supervisor.clone();
        let stages = Stages::new();
        let journal =
            stages.tasks.spawn(journal_events(engine.events.subscribe(), store.clone(), stages.journal.clone()));
        let reloader = Arc::new(Reloader::new(settings.units_dirs.clone(), supervisor.clone(), store.clone()));
        let instances = Arc::new(crate::instances::InstanceManager::new(
            engine.instance_ctx,
            settings.blueprints_dir.clone(),
            supervisor.clone(),
            Arc::clone(&reloader),
        ));
        let ops = Arc::clone(&instances.ops);
        let ops_task =
            stages.tasks.spawn(Arc::clone(&ops).run(settings.data_dir.clone(), Arc::clone(&logs), stages.ops.clone()));
        let (metrics, metrics_tasks) = start_metrics(&settings, &supervisor, &logs, cgroups.as_ref(), &gpus, &stages)?;
        let (proxy, proxy_task) = start_proxy(&settings, &supervisor, &instances, &store, &stages).await;
        let origins = crate::web::origin::Origins::from_env(settings.proxy_port, settings.apps_port);
        let web = crate::web::AppState::new(
            supervisor.clone(),
            logs,
            store,
            Arc::clone(&reloader),
            tracking.to_string(),
            instances,
            proxy,
        )
        .with_metrics(metrics)
        .with_origins(origins)
        .with_knobs(&settings.knobs);
        let web = with_local_credentials(web, &settings, gate_secret).await?;
        let listener = tokio::net::TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("listening on {}", settings.listen))?;
        Ok(Daemon {
            hangups: init::signals::Hangups::install()?,
            settings,
            cgroups,
            supervisor,
            engine: engine.task,
            reloader,
            web,
            listener,
            stages,
            ops,
            background: Background { web: None, ops: ops_task, proxy: proxy_task, journal, metrics: metrics_tasks },
            auth_cache,
        })
    }

    /// The API's address (port 0 in the settings: the one the system chose).
    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// The web router on this daemon's state, for in-process requests (tests).
    pub fn router(&self) -> axum::Router {
        crate::web::router(self.web.clone())
    }

    /// Serves, starts every unit, and waits for `shutdown`, a dead engine or
    /// SIGHUP (reload); then stops everything in order. Returns the exit code.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> i32 {
        tracing::info!(listen = %self.settings.listen, data_dir = %self.settings.data_dir.display(), "aikore is up");
        let serving = crate::web::serve(self.listener, self.web, self.stages.web.clone());
        self.background.web = Some(self.stages.tasks.spawn(serving));
        let boot_events = self.supervisor.subscribe();
        // Only a dead engine refuses this, and the loop below sees that at once.
        if let Err(e) = self.supervisor.start_all().await {
            tracing::error!(error = %e, "starting the units failed");
        }
        tokio::spawn(give_back_boot_pages(boot_events));
        tokio::pin!(shutdown);
        let engine_ended = loop {
            tokio::select! {
                () = &mut shutdown => break None,
                () = self.hangups.recv() => match self.reloader.reload().await {
                    Ok(r) => tracing::info!(units = r.units, "reloaded unit files"),
                    Err(e) => tracing::error!(error = %e, "reload failed"),
                },
                ended = &mut self.engine => break Some(ended),
            }
        };
        let code = match engine_ended {
            Some(ended) => kill_orphaned_units(ended, &self.settings.data_dir, self.cgroups.clone()).await,
            None => {
                // Running jobs finish first, within two thirds of the global deadline (docs/operations.md).
                let (began, deadline) = (std::time::Instant::now(), self.settings.shutdown_timeout);
                self.ops.drain_all(deadline * 2 / 3).await;
                self.stages.ops.cancel();
                stop_units(&self.supervisor, self.engine, deadline.saturating_sub(began.elapsed()).max(secs(1))).await
            }
        };
        let (stages, background) = (self.stages, self.background);
        Stages::stop(&stages.ops, vec![background.ops], secs(2)).await;
        stages.web.cancel();
        Stages::stop(&stages.proxy, [Some(background.proxy), background.web].into_iter().flatten().collect(), secs(2))
            .await;
        Stages::stop(&stages.journal, vec![background.journal], secs(5)).await;
        background.metrics.events.abort();
        background.metrics.relations.abort();
        Stages::stop(&stages.metrics, vec![background.metrics.history], secs(2)).await;
        stages.root.cancel();
        stages.tasks.close();
        if tokio::time::timeout(secs(2), stages.tasks.wait()).await.is_err() {
            tracing::warn!("a background task did not end within 2 s of the shutdown");
        }
        if init::is_pid1() {
            let _ = tokio::task::spawn_blocking(|| init::terminate_strays(secs(2))).await;
        }
        // NGINX is gone with the units: its cached credentials go too.
        let _ = std::fs::remove_dir_all(&self.auth_cache);
        if let Some(root) = self.cgroups {
            root.remove();
        }
        // SuccessActionExitStatus=/FailureActionExitStatus=: the exit status a unit asked for.
        let code = crate::supervisor::requested_exit_status().unwrap_or(code);
        tracing::info!(code, "aikore stopped");
        code
    }
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// PID 1, or a sub-reaper so orphans of units still come to us; and the
/// reaper thread, which owns every exit status from here on.
fn become_init() {
    if init::is_pid1() {
        tracing::info!("running as PID 1");
    } else if let Err(e) = init::become_subreaper() {
        tracing::warn!(error = %e, "cannot become a child sub-reaper; orphans of units go to the real init");
    }
    let _ = init::reaper();
}

/// The web state with its credentials: the environment's plus a fresh local
/// CLI token, written to `<data>/cli.token` (the daemon's, 0600).
async fn with_local_credentials(
    state: crate::web::AppState,
    settings: &Settings,
    gate_secret: String,
) -> anyhow::Result<crate::web::AppState> {
    // xterm.js comes from npm (web/package-lock.json); without it the
    // dashboard works but its terminal cannot: say so once, with the fix.
    let xterm = state.web_dir.join("node_modules/@xterm/xterm/lib/xterm.js");
    if !xterm.is_file() {
        tracing::warn!(
            missing = %xterm.display(),
            "the dashboard's terminal needs xterm.js: run `npm ci --prefix web` in the checkout (the image has it)"
        );
    }
    let cli_token = crate::web::auth::random_token();
    crate::config::write_secret(&settings.cli_token_path(), &cli_token)
        .with_context(|| format!("writing {}", settings.cli_token_path().display()))?;
    let state =
        state.with_auth(crate::web::auth::Auth::from_env().with_api_token(cli_token).with_gate_secret(gate_secret));
    state.auth.prepare_setup(&settings.data_dir, &state.store).await;
    crate::web::auth::migrate_public_settings(&state).await;
    Ok(state)
}

/// `aikore serve`: boots, then runs until SIGTERM or SIGINT; returns the process exit code.
pub async fn serve(settings: Settings) -> anyhow::Result<i32> {
    // Installed first: a signal during boot is kept for `run`, not fatal.
    let shutdown = init::signals::ShutdownSignal::install()?;
    let daemon = Daemon::boot(settings).await?;
    Ok(daemon.run(shutdown.recv()).await)
}
