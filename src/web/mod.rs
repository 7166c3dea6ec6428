//! HTTP: axum on hyper. The JSON API under /api/v1, /healthz, and the SSE
//! streams of events and logs.

mod api;
mod instances;
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
    /// /metrics and /api/v1/system; None answers them with 503 (routers built without it).
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
}

impl AppState {
    pub fn new(
        supervisor: SupervisorHandle,
        logs: Arc<LogHub>,
        store: StoreHandle,
        reloader: Arc<Reloader>,
        tracking: String,
        instances: Arc<crate::instances::InstanceManager>,
    ) -> Self {
        AppState { supervisor, logs, store, reloader, tracking, instances, metrics: None }
    }

    pub fn with_metrics(self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        AppState { metrics: Some(metrics), ..self }
    }
}

pub fn router(state: AppState) -> Router {
    api::routes()
        .merge(instances::routes())
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
