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
use crate::api::{Action, Health, ReloadReport, ShownStatus, UnitActionReply, UnitLogs, UnitVerb, UnitView};
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
async fn healthz(State(state): State<AppState>) -> Json<Health> {
    let reaper = crate::init::reaper();
    Json(Health {
        status: "ok".into(),
        pid1: crate::init::is_pid1(),
        tracking: state.tracking.clone(),
        children_reaped: reaper.children_reaped(),
        orphans_reaped: reaper.orphans_reaped(),
    })
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

pub(super) async fn find_unit(state: &AppState, name: &str) -> ApiResult<UnitSnapshot> {
    let name = checked_name(name)?;
    state
        .supervisor
        .snapshot()
        .await?
        .into_iter()
        .find(|u| u.answers_to(name))
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
    Path((name, verb)): Path<(String, String)>,
) -> ApiResult<Json<UnitActionReply>> {
    let name = checked_name(&name)?;
    // An alias (Alias=) acts on the unit itself, and the reply names it.
    let real = state.supervisor.snapshot().await?.into_iter().find(|u| u.answers_to(name)).map(|u| u.name);
    let name = real.as_deref().unwrap_or(name);
    super::systemctl::before_action(&state, name, &verb).await?;
    let action = UnitVerb::parse(&verb)
        .ok_or_else(|| ApiError::not_found(format!("unknown action {verb:?}: use start, stop, restart or reload")))?;
    let status = match action {
        // Through the instances' operations: an instance with a drain check drains first (`draining`).
        UnitVerb::Action(action) => shown(&state, action, name).await?,
        UnitVerb::Reload(_) => {
            state.supervisor.reload(name).await?;
            ShownStatus::Unit(find_unit(&state, name).await?.status)
        }
    };
    Ok(Json(UnitActionReply { unit: name.to_string(), action, status }))
}

/// Start, stop or restart through `instances::quiesce` (a plain unit goes
/// straight to the supervisor there); the reply's status, overlay included.
pub(super) async fn shown(state: &AppState, action: Action, name: &str) -> ApiResult<ShownStatus> {
    let ops = &state.instances.ops;
    let outcome = match action {
        Action::Start => crate::instances::quiesce::Outcome::Now(ops.start(name).await?),
        Action::Stop => ops.stop(name).await?,
        Action::Restart => ops.restart(name).await?,
    };
    Ok(match outcome {
        crate::instances::quiesce::Outcome::Now(status) => ShownStatus::Unit(status),
        draining => ShownStatus::Overlay(draining.as_str().to_string()),
    })
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
) -> ApiResult<Json<UnitLogs>> {
    let tail = tail_of(query)?;
    let unit = find_unit(&state, &name).await?;
    let logs = state.logs.clone();
    let unit_name = unit.name.clone();
    let lines = tokio::task::spawn_blocking(move || logs.tail(&unit_name, tail)).await.map_err(ApiError::internal)?;
    Ok(Json(UnitLogs { unit: unit.name, lines }))
}

async fn unit_logs_stream(
    State(state): State<AppState>,
    Path(name): Path<String>,
    query: Result<Query<TailQuery>, QueryRejection>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let tail = tail_of(query)?;
    let unit = find_unit(&state, &name).await?;
    let (backlog, follower) = state.logs.follow(&unit.name, tail);
    let backlog = stream::iter(backlog.into_iter().map(|line| Ok(line_event(&line))));
    // Every line ready at a wake-up goes out together, not one poll each.
    let live = stream::unfold(follower, |mut follower| async move {
        let events: Vec<Result<Event, Infallible>> = match follower.recv_many().await {
            Ok(lines) => lines.iter().map(|line| Ok(line_event(line))).collect(),
            // A follower that fell behind is told so, then carries on with new lines.
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                vec![Ok(Event::default().event("lagged").data(n.to_string()))]
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
        };
        Some((stream::iter(events), follower))
    })
    .flatten();
    Ok(Sse::new(backlog.chain(live)).keep_alive(KeepAlive::new().interval(SSE_KEEPALIVE)))
}

fn line_event(line: &crate::logs::LogLine) -> Event {
    Event::default().event("line").json_data(line).unwrap_or_else(|_| Event::default().data(line.text.clone()))
}

async fn events_stream(State(state): State<AppState>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let engine = BroadcastStream::new(state.supervisor.subscribe()).filter_map(|item| async move {
        match item {
            Ok(event) => Some(Ok(Event::default().event(event.event).json_data(&event).ok()?)),
            Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(n)) => {
                Some(Ok(Event::default().event("lagged").data(n.to_string())))
            }
        }
    });
    // `draining` / `idle-stopped` laid over a state (instances::quiesce::Overlay).
    let overlays = BroadcastStream::new(state.instances.ops.subscribe()).filter_map(|item| async move {
        match item {
            Ok(overlay) => Some(Ok(Event::default().event("overlay").json_data(&overlay).ok()?)),
            Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(n)) => {
                Some(Ok(Event::default().event("lagged").data(n.to_string())))
            }
        }
    });
    let live = futures_util::stream::select(engine, overlays);
    Sse::new(live).keep_alive(KeepAlive::new().interval(SSE_KEEPALIVE))
}

async fn reload(State(state): State<AppState>) -> ApiResult<Json<ReloadReport>> {
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
