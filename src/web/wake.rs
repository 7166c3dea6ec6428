//! The waking page (docs/operations.md, "Idle stop and wake"): NGINX sends
//! the requests of a stopped instance that has `IdleStopSec=` here (its
//! `/app/<name>/` location proxies to `/_aikore/wake/<name>/...` after the
//! login gate). An idle-stopped instance is started; a browser gets a small
//! "waking <name>…" page that reloads itself until the app answers, an API
//! client `503` with `Retry-After`. A user's stop is not undone by a visit.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::{Extension, Router};
use maud::{html, DOCTYPE};

use super::auth::Client;
use super::error::ApiError;
use super::AppState;

/// How soon a client should ask again while the instance wakes.
const RETRY_SEC: u64 = 2;

pub fn routes() -> Router<AppState> {
    Router::new().route("/_aikore/wake/{name}/", any(wake)).route("/_aikore/wake/{name}/{*rest}", any(wake_rest))
}

async fn wake_rest(
    state: State<AppState>,
    client: Extension<Client>,
    headers: HeaderMap,
    Path((name, _rest)): Path<(String, String)>,
) -> Response {
    wake(state, client, headers, Path(name)).await
}

fn wants_html(headers: &HeaderMap) -> bool {
    headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("text/html"))
}

fn page(title: &str, text: &str, refresh: bool) -> String {
    html! {
        (DOCTYPE)
        html {
            head {
                meta charset="utf-8";
                @if refresh { meta http-equiv="refresh" content=(RETRY_SEC); }
                title { (title) }
            }
            body style="font-family: sans-serif; margin: 3em" {
                h1 { (title) }
                p { (text) }
            }
        }
    }
    .into_string()
}

fn reply(status: StatusCode, html: bool, title: &str, text: &str, retry: bool) -> Response {
    let mut response = if html {
        (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], page(title, text, retry)).into_response()
    } else {
        ApiError::new(status, text).into_response()
    };
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if retry {
        h.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_SEC));
        h.insert("x-aikore-waking", HeaderValue::from_static("1"));
    }
    response
}

async fn wake(
    State(state): State<AppState>,
    Extension(client): Extension<Client>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    let html = wants_html(&headers);
    if !crate::units::is_valid_unit_name(&name) {
        return ApiError::not_found("no such instance").into_response();
    }
    // NGINX asked the gate already; a client that reached aikore's port directly has not.
    let uri = format!("{}/", crate::urls::app_base(&name));
    if !super::auth::app_request_allowed(&state, client, &headers, &uri).await.0 {
        return ApiError::new(StatusCode::UNAUTHORIZED, "login required").into_response();
    }
    if state.instances.instance(&name).await.is_err() {
        return ApiError::not_found(format!("no instance named {name:?}")).into_response();
    }
    match state.instances.ops.wake(&name).await {
        Ok(Some(status)) => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            html,
            &format!("Waking {name}…"),
            &format!("{name} was stopped for being idle and is starting again ({status}). This page turns into the app by itself."),
            true,
        ),
        Ok(None) => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            html,
            "Instance not running",
            &format!("Instance {name} is not running. Start it from the dashboard."),
            false,
        ),
        Err(e) => reply(StatusCode::SERVICE_UNAVAILABLE, html, "Cannot wake", &e.to_string(), false),
    }
}
