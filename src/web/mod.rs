//! HTTP: axum on hyper. The JSON API under /api/v1, /healthz, the SSE
//! streams of events and logs, the dashboard's pages and its terminal; all
//! behind one authentication gate (auth.rs).

mod api;
pub mod auth;
pub mod error;
pub mod gate;
mod instances;
pub mod limit;
mod metrics;
pub mod openapi;
pub mod origin;
mod pages;
mod proxy;
mod systemctl;
mod terminal;
mod wake;

use std::sync::Arc;

use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::logs::LogHub;
use crate::store::StoreHandle;
use crate::supervisor::reload::Reloader;
use crate::supervisor::SupervisorHandle;

#[derive(Clone)]
pub struct AppState {
    pub supervisor: SupervisorHandle,
    pub logs: Arc<LogHub>,
    pub store: StoreHandle,
    pub reloader: Arc<Reloader>,
    /// `cgroup` or `process-group`: how unit processes are tracked here.
    pub tracking: String,
    pub instances: Arc<crate::instances::InstanceManager>,
    /// /metrics and /api/v1/system; None answers them with 503 (routers built without it).
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
    /// Passwords, sessions and API tokens (from the environment by default).
    pub auth: Arc<auth::Auth>,
    /// web/: hand-written static files and the npm-installed libraries.
    pub web_dir: std::path::PathBuf,
    /// The NGINX route sync: its status and a way to force a render.
    pub proxy: crate::proxy::ProxyHandle,
    /// The dashboard's and the apps' origins.
    pub origins: Arc<origin::Origins>,
    /// AIKORE_TERMINAL_ROOT=1: the operator's explicit choice of root shells
    /// in instance terminals even with PUID set (docs/security.md).
    pub terminal_root: bool,
}

impl AppState {
    pub fn new(
        supervisor: SupervisorHandle,
        logs: Arc<LogHub>,
        store: StoreHandle,
        reloader: Arc<Reloader>,
        tracking: String,
        instances: Arc<crate::instances::InstanceManager>,
        proxy: crate::proxy::ProxyHandle,
    ) -> Self {
        AppState {
            supervisor,
            logs,
            store,
            reloader,
            tracking,
            instances,
            proxy,
            metrics: None,
            auth: Arc::new(auth::Auth::from_env()),
            web_dir: pages::resolve_web_dir(None),
            origins: Arc::new(origin::Origins::default()),
            terminal_root: false,
        }
    }

    /// The settings `web` takes from the daemon's `Knobs` (read once at start).
    pub fn with_knobs(self, knobs: &crate::config::Knobs) -> Self {
        AppState { web_dir: pages::resolve_web_dir(knobs.web_dir.clone()), terminal_root: knobs.terminal_root, ..self }
    }

    pub fn with_metrics(self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        AppState { metrics: Some(metrics), ..self }
    }

    pub fn with_origins(self, origins: origin::Origins) -> Self {
        AppState { origins: Arc::new(origins), ..self }
    }

    /// Replaces the environment's credentials (tests).
    pub fn with_auth(self, auth: auth::Auth) -> Self {
        AppState { auth: Arc::new(auth), ..self }
    }
}

pub fn router(state: AppState) -> Router {
    api::routes()
        .merge(instances::routes())
        .merge(auth::routes())
        .merge(terminal::routes())
        .merge(pages::routes())
        .merge(proxy::routes())
        .merge(wake::routes())
        .merge(systemctl::routes())
        .route("/api/v1/openapi.json", axum::routing::get(openapi::document))
        .fallback(api::not_found)
        .method_not_allowed_fallback(api::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth::require_auth))
        .layer(axum::middleware::from_fn_with_state(state.clone(), pages::security_headers))
        .with_state(state)
}

/// Serves until `stop` is cancelled; open SSE streams end with it.
pub async fn serve(listener: tokio::net::TcpListener, state: AppState, stop: CancellationToken) {
    let app = router(state);
    let shutdown = stop.clone();
    // The peer address: the rate limits key on it (and on NGINX's X-Forwarded-For behind loopback).
    let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.cancelled().await }).await {
        tracing::error!(error = %e, "web server failed");
    }
}
