//! HTTP: axum on hyper. The JSON API under /api/v1, /healthz, and the SSE
//! streams of events and logs.

mod api;
mod instances;
mod proxy;
pub mod openapi;
pub mod error;

use std::sync::Arc;

use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::daemon::Reloader;
use crate::logs::LogHub;
use crate::store::StoreHandle;
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
    /// The NGINX route sync: its status and a way to force a render.
    pub proxy: crate::proxy::ProxyHandle,
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
        AppState { supervisor, logs, store, reloader, tracking, instances, proxy }
    }
}

pub fn router(state: AppState) -> Router {
    api::routes()
        .merge(instances::routes())
        .merge(proxy::routes())
        .route("/api/v1/openapi.json", axum::routing::get(openapi::document))
        .fallback(api::not_found)
        .method_not_allowed_fallback(api::method_not_allowed)
        .with_state(state)
}

/// Serves until `stop` is cancelled; open SSE streams end with it.
pub async fn serve(listener: tokio::net::TcpListener, state: AppState, stop: CancellationToken) {
    let app = router(state);
    let shutdown = stop.clone();
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.cancelled().await }).await {
        tracing::error!(error = %e, "web server failed");
    }
}
