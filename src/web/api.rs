//! /api/v1: units, their logs, reload, and the events stream.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::{self, Stream, StreamExt};
use serde::Deserialize;
use tokio_stream::wrappers::BroadcastStream;

use super::error::{ApiError, ApiResult};
use super::AppState;
use crate::supervisor::UnitSnapshot;
use crate::units::{is_valid_service_name, is_valid_unit_name};

/// SSE comments keep idle connections open through proxies that cut silent ones.
const SSE_KEEPALIVE: Duration = Duration::from_secs(15);
/// Default and largest `tail=`: the ring holds 1000 lines, files hold more, and
/// 10,000 lines is as much as a browser pane wants in one response.
const DEFAULT_TAIL: usize = 100;
const MAX_TAIL: usize = 10_000;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/api/v1/units", get(list_units))
        .route("/api/v1/units/{name}", get(get_unit))
        .route("/api/v1/units/{name}/logs", get(unit_logs))
        .route("/api/v1/units/{name}/logs/stream", get(unit_logs_stream))
        .route("/api/v1/units/{name}/{action}", post(unit_action))
        .route("/api/v1/reload", post(reload))
        .route("/api/v1/events", get(events_stream))
        .route("/api/v1/journal", get(journal))
        .route("/metrics", get(super::metrics::scrape))
        .route("/api/v1/system", get(super::metrics::system))
}

pub async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint")
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed on this endpoint")
}

/// Liveness plus the init facts worth checking from outside (tests, HEALTHCHECK).
async fn healthz(State(state): State<AppState>) -> Json<serde_json::Value> {
    let reaper = crate::init::reaper();
    Json(serde_json::json!({
        "status": "ok",
        "pid1": crate::init::is_pid1(),
        "tracking": state.tracking,
        "children_reaped": reaper.children_reaped(),
        "orphans_reaped": reaper.orphans_reaped(),
    }))
}

#[derive(serde::Serialize)]
struct UnitView {
    name: String,
    kind: &'static str,
    description: String,
    status: &'static str,
    detail: Option<String>,
    pid: Option<i32>,
    restarts: u32,
    /// When the unit entered its current status (Unix ms).
    since: i64,
    started: Option<i64>,
    last_exit: Option<String>,
    /// Why the last run ended badly: `{class, line, hint}` (docs/operations.md).
    failure: Option<crate::failure::Failure>,
    path: String,
    /// The seq of the unit's latest event: a reader drops any state with a seq <= the one it shows.
    seq: u64,
    /// The port of the current (or last) run.
    port: Option<u16>,
}

impl From<UnitSnapshot> for UnitView {
    fn from(s: UnitSnapshot) -> UnitView {
        UnitView {
            name: s.name,
            kind: s.kind.as_str(),
            description: s.description,
            status: s.status.as_str(),
            detail: s.detail,
            pid: s.pid,
            restarts: s.restarts,
            since: s.since_ms,
            started: s.started_ms,
            last_exit: s.last_exit,
            failure: s.failure,
            path: s.path,
            seq: s.seq,
            port: s.port,
        }
    }
}

/// A unit name as the API accepts it: an instance's (strict) or a service's (systemd's grammar).
pub fn checked_name(name: &str) -> ApiResult<&str> {
    if is_valid_unit_name(name) || is_valid_service_name(name) {
        Ok(name)
    } else {
        Err(ApiError::bad_request(format!(
            "invalid unit name {name:?}: use letters, digits, ':', '-', '_', '.' and '\\' (not first: '.'), with \
             at most one '@' before an instance"
        )))
    }
}

async fn find_unit(state: &AppState, name: &str) -> ApiResult<UnitSnapshot> {
    let name = checked_name(name)?;
    state
        .supervisor
        .snapshot()
        .await?
        .into_iter()
        .find(|u| u.name == name)
        .ok_or_else(|| ApiError::not_found(format!("no unit named {name:?}")))
}

async fn list_units(State(state): State<AppState>) -> ApiResult<Json<Vec<UnitView>>> {
    Ok(Json(state.supervisor.snapshot().await?.into_iter().map(UnitView::from).collect()))
}

async fn get_unit(State(state): State<AppState>, Path(name): Path<String>) -> ApiResult<Json<UnitView>> {
    Ok(Json(find_unit(&state, &name).await?.into()))
}

async fn unit_action(
    State(state): State<AppState>,
    Path((name, action)): Path<(String, String)>,
) -> ApiResult<Json<serde_json::Value>> {
    let name = checked_name(&name)?;
    super::systemctl::before_action(&state, name, &action).await?;
    let sup = &state.supervisor;
    let status = match action.as_str() {
        "start" => sup.start(name).await?,
        "stop" => sup.stop(name).await?,
        "restart" => sup.restart(name).await?,
        "reload" => {
            sup.reload(name).await?;
            find_unit(&state, name).await?.status
        }
        other => {
            return Err(ApiError::not_found(format!("unknown action {other:?}: use start, stop, restart or reload")))
        }
    };
    Ok(Json(serde_json::json!({ "unit": name, "action": action, "status": status })))
}

#[derive(Deserialize)]
struct TailQuery {
    tail: Option<usize>,
}

fn tail_of(query: Result<Query<TailQuery>, QueryRejection>) -> ApiResult<usize> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(format!("bad query: {}", e.body_text())))?;
    Ok(q.tail.unwrap_or(DEFAULT_TAIL).min(MAX_TAIL))
}

async fn unit_logs(
    State(state): State<AppState>,
    Path(name): Path<String>,
    query: Result<Query<TailQuery>, QueryRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let tail = tail_of(query)?;
    let unit = find_unit(&state, &name).await?;
    let logs = state.logs.clone();
    let unit_name = unit.name.clone();
    let lines = tokio::task::spawn_blocking(move || logs.tail(&unit_name, tail)).await.map_err(ApiError::internal)?;
    Ok(Json(serde_json::json!({ "unit": unit.name, "lines": lines })))
}

async fn unit_logs_stream(
    State(state): State<AppState>,
    Path(name): Path<String>,
    query: Result<Query<TailQuery>, QueryRejection>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let tail = tail_of(query)?;
    let unit = find_unit(&state, &name).await?;
    let (backlog, receiver) = state.logs.follow(&unit.name, tail);
    let backlog = stream::iter(backlog.into_iter().map(|line| Ok(line_event(&line))));
    let live = BroadcastStream::new(receiver).map(|item| match item {
        Ok(line) => Ok(line_event(&line)),
        // A follower that fell behind is told so, then carries on with new lines.
        Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(n)) => {
            Ok(Event::default().event("lagged").data(n.to_string()))
        }
    });
    Ok(Sse::new(backlog.chain(live)).keep_alive(KeepAlive::new().interval(SSE_KEEPALIVE)))
}

fn line_event(line: &crate::logs::LogLine) -> Event {
    Event::default().event("line").json_data(line).unwrap_or_else(|_| Event::default().data(line.text.clone()))
}

async fn events_stream(State(state): State<AppState>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let live = BroadcastStream::new(state.supervisor.subscribe()).filter_map(|item| async move {
        match item {
            Ok(event) => Some(Ok(Event::default().event(event.event).json_data(&event).ok()?)),
            Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(n)) => {
                Some(Ok(Event::default().event("lagged").data(n.to_string())))
            }
        }
    });
    Sse::new(live).keep_alive(KeepAlive::new().interval(SSE_KEEPALIVE))
}

async fn reload(State(state): State<AppState>) -> ApiResult<impl IntoResponse> {
    let report = state.reloader.reload().await?;
    Ok(Json(report))
}

#[derive(Deserialize)]
struct JournalQuery {
    unit: Option<String>,
    after: Option<i64>,
    limit: Option<usize>,
}

/// The event journal from SQLite: what happened, including before this run.
async fn journal(
    State(state): State<AppState>,
    query: Result<Query<JournalQuery>, QueryRejection>,
) -> ApiResult<impl IntoResponse> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(format!("bad query: {}", e.body_text())))?;
    if let Some(unit) = &q.unit {
        checked_name(unit)?;
    }
    let limit = q.limit.unwrap_or(200).min(MAX_TAIL);
    let rows = state.store.call(move |s| s.events(q.unit.as_deref(), q.after, limit)).await??;
    Ok(Json(rows))
}
