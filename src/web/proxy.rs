//! /api/v1/proxy: what NGINX serves now and whether the last render made it.

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};

use super::error::{ApiError, ApiResult};
use super::AppState;
use crate::proxy::ProxyStatus;

pub fn routes() -> Router<AppState> {
    Router::new().route("/api/v1/proxy", get(status)).route("/api/v1/proxy/render", post(render))
}

async fn status(State(state): State<AppState>) -> Json<ProxyStatus> {
    Json(state.proxy.status())
}

/// Renders, tests and swaps now, even when nothing changed (a diagnostic).
async fn render(State(state): State<AppState>) -> ApiResult<Json<ProxyStatus>> {
    state.proxy.render_now().await.map(Json).ok_or_else(|| ApiError::internal("the proxy task is not running"))
}
