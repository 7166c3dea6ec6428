//! The HTTP face of the metrics: `GET /metrics` and `GET /api/v1/system`
//! (here, not in `metrics`, so the registry never imports the web layer).

use std::sync::Arc;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::error::{ApiError, ApiResult};
use super::AppState;
use crate::metrics::{Metrics, MetricsError, SystemView};

impl From<MetricsError> for ApiError {
    fn from(e: MetricsError) -> ApiError {
        match e {
            MetricsError::Supervisor(e) => e.into(),
            other => ApiError::internal(other),
        }
    }
}

fn metrics_of(state: &AppState) -> ApiResult<&Arc<Metrics>> {
    state
        .metrics
        .as_ref()
        .ok_or_else(|| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "metrics are not enabled in this server"))
}

/// Prometheus text exposition, collected now.
pub async fn scrape(State(state): State<AppState>) -> ApiResult<Response> {
    let text = metrics_of(&state)?.render().await?;
    Ok(([(CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response())
}

/// Host and GPUs for the dashboard.
pub async fn system(State(state): State<AppState>) -> ApiResult<Json<SystemView>> {
    Ok(Json(metrics_of(&state)?.system().await?))
}
