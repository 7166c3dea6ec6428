//! `aikore serve`: wires init, store, logs, supervisor and web together, and
//! runs the ordered shutdown.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{broadcast, mpsc};

use crate::clock::now_ms;
use crate::config::Settings;
use crate::init;
use crate::logs::{LogConfig, LogHub};
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
    let first = if grace.is_zero() { libc::SIGKILL } else { libc::SIGTERM };
    for pid in &pids {
        // SAFETY: kill() on pids recorded with their start time, their
        // descendants, or carrying our data dir marker.
        unsafe { libc::kill(*pid, first) };
    }
    let deadline = std::time::Instant::now() + grace.max(Duration::from_millis(500));
    while std::time::Instant::now() < deadline && !find().is_empty() {
        std::thread::sleep(Duration::from_millis(20));
    }
    for pid in find() {
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// Debug builds only: resolves once the file named by
/// `AIKORE_TEST_PANIC_ENGINE` exists, and the engine task then panics, so a
/// test can see the daemon notice a dead engine. Pending forever otherwise,
/// and always in a release build (a user cannot trigger it).
async fn test_engine_panic() {
    #[cfg(debug_assertions)]
    if let Some(trigger) = std::env::var_os("AIKORE_TEST_PANIC_ENGINE") {
        let trigger = std::path::PathBuf::from(trigger);
        while !trigger.exists() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        return;
    }
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
            if event.event == "state" {
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
                Some(d) if event.event == "state" => format!("{}: {d}", event.status),
                Some(d) => d.clone(),
                None => event.status.to_string(),
            };
            s.append_event(event.ts_ms, Some(&event.unit), event.event, &detail)?;
            Ok(())
        })
        .await;
    if let Ok(Err(e)) | Err(e) = result {
        tracing::warn!(error = %e, "journal write failed");
    }
}

/// cgroup v2 per unit where a writable subtree exists, else process groups
/// and markers; the second value is what `/healthz` reports.
fn process_tracking(data_dir: &std::path::Path) -> (Option<CgroupRoot>, &'static str) {
    // AIKORE_CGROUP=off forces the process-group fallback (tests of that path,
    // or a host whose cgroup delegation misbehaves).
    let cgroups_wanted = std::env::var("AIKORE_CGROUP").map(|v| v != "off").unwrap_or(true);
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

/// NGINX's base config for these settings, and its workers' temp dirs given to them.
/// NGINX's base config and the dirs its workers write; returns the login
/// gate's cache dir (removed at shutdown).
fn write_nginx_base(
    settings: &Settings,
    nginx_worker: Option<&crate::proxy::WorkerUser>,
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
    };
    crate::proxy::write_base_config(&settings.data_dir, &base).context("writing the NGINX config")?;
    if let Some(w) = nginx_worker {
        // Only the workers' temp dirs are theirs; the config stays the daemon's.
        for dir in crate::proxy::NGINX_TEMP_DIRS {
            let path = settings.data_dir.join(crate::ownership::NGINX_TMP).join(dir);
            std::os::unix::fs::lchown(&path, Some(w.uid), Some(w.gid))
                .with_context(|| format!("giving {} to NGINX's worker user", path.display()))?;
        }
    }
    Ok(auth_cache)
}

/// The store opened and the unit files loaded, their state rows reconciled.
async fn open_state(settings: &Settings) -> anyhow::Result<(StoreHandle, LoadedUnits)> {
    let store =
        Store::open(&settings.db_path()).with_context(|| format!("opening {}", settings.db_path().display()))?;
    let store = StoreHandle::spawn(store);
    for suffix in ["", "-wal", "-shm"] {
        crate::ownership::private_file(&settings.data_dir.join(format!("aikore.db{suffix}")));
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
    Ok((store, loaded))
}

/// The engine died outside a shutdown: nothing supervises the units any
/// more, and PID 1 must not keep answering 503 with them orphaned. Kill
/// them and tell the caller to exit non-zero.
async fn kill_orphaned_units(
    ended: Result<(), tokio::task::JoinError>,
    data_dir: &std::path::Path,
    cgroups: Option<CgroupRoot>,
) -> anyhow::Result<i32> {
    match ended {
        Err(e) if e.is_panic() => {
            tracing::error!(error = %e, "the supervisor engine panicked; killing every unit and exiting")
        }
        other => {
            tracing::error!(?other, "the supervisor engine ended outside a shutdown; killing every unit and exiting")
        }
    }
    let data_dir = data_dir.to_path_buf();
    tokio::task::spawn_blocking(move || stop_leftovers(&data_dir, cgroups.as_ref(), Duration::ZERO)).await?;
    Ok(exit_code::ENGINE_DIED)
}

/// The ordered shutdown (instances, then services in reverse order) within
/// `timeout`, then KILL for what is left; the exit code says which.
async fn stop_units(supervisor: &SupervisorHandle, engine: tokio::task::JoinHandle<()>, timeout: Duration) -> i32 {
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

/// Runs the daemon until SIGTERM/SIGINT; returns the process exit code.
pub async fn serve(settings: Settings) -> anyhow::Result<i32> {
    std::fs::create_dir_all(&settings.data_dir)
        .with_context(|| format!("creating data dir {}", settings.data_dir.display()))?;
    let data_dir = std::fs::canonicalize(&settings.data_dir)?;
    let settings = Settings { data_dir: data_dir.clone(), ..settings };
    // aikore's own state is the daemon's, never the instance user's (older
    // versions gave the whole top level to PUID): fixed before anything in it
    // is read or written, so no planted symlink is ever followed.
    let nginx_worker = crate::proxy::worker_user();
    match crate::ownership::secure_data_dir(&data_dir) {
        Ok(secured) if secured.fixed > 0 || !secured.quarantined.is_empty() => tracing::warn!(
            fixed = secured.fixed,
            quarantined = secured.quarantined.len(),
            "gave aikore's own state in the data dir back to the daemon"
        ),
        Ok(_) => {}
        Err(e) if settings.owner.is_some() => {
            return Err(anyhow::anyhow!(e).context("securing aikore's state in the data dir from the instance user"))
        }
        Err(e) => tracing::warn!(error = %e, "cannot secure aikore's state in the data dir"),
    }
    crate::ownership::state_dir(&settings.user_units_dir())?;

    if init::is_pid1() {
        tracing::info!("running as PID 1");
    } else if let Err(e) = init::become_subreaper() {
        tracing::warn!(error = %e, "cannot become a child sub-reaper; orphans of units go to the real init");
    }
    let _ = init::reaper();

    let (cgroups, tracking) = process_tracking(&data_dir);
    {
        let (cgroups, data_dir) = (cgroups.clone(), data_dir.clone());
        // A previous run's app gets a short grace to flush, not a full TimeoutStopSec: it is already orphaned.
        tokio::task::spawn_blocking(move || stop_leftovers(&data_dir, cgroups.as_ref(), Duration::from_secs(3)))
            .await?;
    }

    let auth_cache = write_nginx_base(&settings, nginx_worker.as_ref())?;

    let (store, loaded) = open_state(&settings).await?;

    // Logs are the daemon's: rotation renames in a dir the instance user cannot write.
    // Retention: AIKORE_LOG_MAX_FILE_SIZE/_MAX_FILES/_COMPRESS (docs/operations.md).
    let retention = crate::logs::Retention::from_vars(|k| std::env::var(k).ok()).map_err(anyhow::Error::msg)?;
    let logs = LogHub::new(settings.logs_dir(), LogConfig { retention, ..LogConfig::default() })?;
    let instance_ctx = crate::instances::InstanceContext {
        data_dir: data_dir.clone(),
        blueprints_dir: settings.blueprints_dir.clone(),
        port_range: settings.port_range.clone(),
        store: store.clone(),
        owner: settings.owner,
        proxy_serves: crate::proxy::serves_port,
    };
    let (events_tx, _) = broadcast::channel(EVENT_CAPACITY);
    let (commands_tx, commands_rx) = mpsc::channel(256);
    let (exits_tx, exits_rx) = mpsc::unbounded_channel();
    let (hints_tx, hints_rx) = mpsc::unbounded_channel();
    let host = HostProcesses::new(
        HostConfig {
            data_dir: data_dir.clone(),
            cgroups: cgroups.clone(),
            base_env: crate::supervisor::host::inherited_env(),
            hooks: Some(Arc::new(instance_ctx.clone())),
            default_identity: settings.owner,
        },
        Arc::clone(&logs),
        exits_tx,
        hints_tx,
    );
    let supervisor = SupervisorHandle::new(commands_tx, events_tx.clone());
    // One shutdown tree: each task gets a child of `shutdown`, cancelled in
    // the order below; the root is cancelled last, so nothing outlives serve.
    let shutdown = tokio_util::sync::CancellationToken::new();
    let journal_stop = shutdown.child_token();
    let journal = tokio::spawn(journal_events(events_tx.subscribe(), store.clone(), journal_stop.clone()));
    let engine_run = Engine::new(host, loaded.units, events_tx).run(commands_rx, exits_rx, hints_rx);
    // Watched below: a panic or an early return makes the daemon exit non-zero.
    let mut engine = tokio::spawn(async move {
        tokio::select! {
            () = engine_run => {}
            () = test_engine_panic() => panic!("AIKORE_TEST_PANIC_ENGINE: the engine task panics on purpose"),
        }
    });

    let reloader = Arc::new(Reloader::new(settings.units_dirs.clone(), supervisor.clone(), store.clone()));
    let instances = Arc::new(crate::instances::InstanceManager::new(
        instance_ctx,
        settings.blueprints_dir.clone(),
        supervisor.clone(),
        Arc::clone(&reloader),
    ));
    // Subscribed before start_all so the first starts are counted. AIKORE_NVML=off skips loading the driver.
    let metrics = crate::metrics::Metrics::new(
        supervisor.clone(),
        Arc::clone(&logs),
        crate::metrics::MetricsConfig {
            cgroup_root: cgroups.as_ref().map(|root| root.path().to_path_buf()),
            data_dir: data_dir.clone(),
            nvml: std::env::var("AIKORE_NVML").map(|v| v != "off").unwrap_or(true),
        },
    )?;
    let metrics_events = metrics.track_events(supervisor.subscribe());
    let history_stop = shutdown.child_token();
    let metrics_history = metrics.run_history(history_stop.clone());
    let proxy_stop = shutdown.child_token();
    let (proxy, proxy_task) = crate::proxy::RouteSync {
        supervisor: supervisor.clone(),
        instances: Arc::clone(&instances),
        store: store.clone(),
        prefix: data_dir.join("nginx"),
        options: crate::proxy::routes::RenderOptions {
            bind: settings.proxy_bind,
            api: api_upstream(&settings),
            reserved_ports: vec![settings.proxy_port, settings.apps_port],
            ..crate::proxy::render_options_from_env()
        },
        tester: Arc::new(crate::proxy::swap::NginxTester::from_env()),
        extra_file: std::env::var_os("AIKORE_PROXY_EXTRA_FILE").map(Into::into),
    }
    .spawn(proxy_stop.clone());
    // The routes exist before NGINX first starts (and before the API answers, so
    // a client never sees the units waiting for it): ComfyUI's paths answer the
    // "no slot holder" page, never the dashboard, from the first request.
    proxy.render_now().await;
    // After the data dir's top level was handed to PUID above: this file stays the daemon's.
    let cli_token = crate::web::auth::random_token();
    crate::config::write_secret(&settings.cli_token_path(), &cli_token)
        .with_context(|| format!("writing {}", settings.cli_token_path().display()))?;
    let state = crate::web::AppState::new(
        supervisor.clone(),
        Arc::clone(&logs),
        store.clone(),
        Arc::clone(&reloader),
        tracking.to_string(),
        instances,
        proxy.clone(),
    )
    .with_metrics(metrics)
    .with_origins(crate::web::origin::Origins::from_env(settings.proxy_port, settings.apps_port));
    // xterm.js comes from npm (web/package-lock.json); without it the
    // dashboard works but its terminal cannot: say so once, with the fix.
    let xterm = state.web_dir.join("node_modules/@xterm/xterm/lib/xterm.js");
    if !xterm.is_file() {
        tracing::warn!(
            missing = %xterm.display(),
            "the dashboard's terminal needs xterm.js: run `npm ci --prefix web` in the checkout (the image has it)"
        );
    }
    // The environment's credentials plus the local CLI's token.
    let state = state.with_auth(crate::web::auth::Auth::from_env().with_api_token(cli_token));
    state.auth.prepare_setup(&data_dir, &state.store).await;
    crate::web::auth::migrate_public_settings(&state).await;
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("listening on {}", settings.listen))?;
    tracing::info!(listen = %settings.listen, data_dir = %data_dir.display(), "aikore is up");
    // Handlers before the API answers: a client that saw /healthz may signal
    // at once, and an early SIGHUP must reload, not be lost or kill us.
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let web_stop = shutdown.child_token();
    let web = tokio::spawn(crate::web::serve(listener, state, web_stop.clone()));

    // Only a dead engine refuses this, and the loop below sees that at once.
    if let Err(e) = supervisor.start_all().await {
        tracing::error!(error = %e, "starting the units failed");
    }

    let engine_ended = loop {
        tokio::select! {
            _ = sigterm.recv() => break None,
            _ = sigint.recv() => break None,
            _ = sighup.recv() => match reloader.reload().await {
                Ok(r) => tracing::info!(units = r.units, "reloaded unit files"),
                Err(e) => tracing::error!(error = %e, "reload failed"),
            },
            ended = &mut engine => break Some(ended),
        }
    };

    let code = match engine_ended {
        Some(ended) => kill_orphaned_units(ended, &data_dir, cgroups.clone()).await?,
        None => stop_units(&supervisor, engine, settings.shutdown_timeout).await,
    };
    web_stop.cancel();
    proxy_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(2), proxy_task).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), web).await;
    journal_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), journal).await;
    metrics_events.abort();
    history_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(2), metrics_history).await;
    shutdown.cancel();
    if init::is_pid1() {
        tokio::task::spawn_blocking(|| init::terminate_strays(Duration::from_secs(2))).await?;
    }
    // NGINX is gone with the units: its cached credentials go too.
    let _ = std::fs::remove_dir_all(&auth_cache);
    if let Some(root) = cgroups {
        root.remove();
    }
    tracing::info!(code, "aikore stopped");
    Ok(code)
}
