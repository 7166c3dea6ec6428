//! Who may call what: the login password, browser sessions (an HttpOnly
//! SameSite=Strict cookie plus a CSRF token per session), bearer API tokens,
//! and the one middleware that applies them to every route.
//!
//! Open without login: `/healthz`, the login and setup pages, the dashboard's
//! own static files, `/metrics` unless AIKORE_METRICS_AUTH is set, and
//! `/api/v1/auth/check` (NGINX's auth_request target; it answers 204 or 401
//! itself).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::Path;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router};

use super::api::checked_name;
use super::error::{ApiError, ApiResult};
use super::AppState;
use crate::store::StoreHandle;

pub const SESSION_COOKIE: &str = "aikore_session";
pub const CSRF_HEADER: &str = "x-csrf-token";
/// The hidden field plain HTML forms carry the CSRF token in.
pub const CSRF_FIELD: &str = "_csrf";
/// Store setting holding the argon2 PHC string of the login password.
const PASSWORD_SETTING: &str = "auth.password_hash";
/// A session lasts a working week without activity checks; logging out ends it at once.
const SESSION_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);
/// A form body is read at most this far to find its CSRF field (scripts are
/// saved through the JSON API, so forms stay small).
const FORM_LIMIT: usize = 256 * 1024;

struct Session {
    csrf: String,
    expires: Instant,
}

pub struct Auth {
    /// Bearer tokens accepted by the API (AIKORE_API_TOKEN): a request with
    /// one needs no cookie and no CSRF token.
    api_tokens: Vec<String>,
    /// AIKORE_PASSWORD: when set it is the password, compared in constant
    /// time (hashing a secret that already sits in the environment adds
    /// nothing); otherwise the argon2 hash in the store is.
    env_password: Option<String>,
    /// In memory: a daemon restart asks browsers to log in again.
    sessions: Mutex<HashMap<String, Session>>,
    /// AIKORE_METRICS_AUTH: /metrics requires login or a bearer too.
    metrics_auth: bool,
}

/// Bytes from the kernel's CSPRNG (getrandom(2); blocks only before the
/// pool is first seeded, early in boot).
fn os_random(buf: &mut [u8]) {
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: getrandom writes at most the given length into our buffer.
        let n = unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), buf.len() - filled, 0) };
        if n > 0 {
            filled += n as usize;
        } else if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            panic!("getrandom failed: {}", std::io::Error::last_os_error());
        }
    }
}

/// 32 random bytes from the OS, hex: session ids and CSRF tokens.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    os_random(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares without an early exit, so timing says nothing about a prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Auth {
    pub fn from_env() -> Auth {
        let non_empty = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Auth::new(
            non_empty("AIKORE_API_TOKEN").into_iter().collect(),
            non_empty("AIKORE_PASSWORD"),
            non_empty("AIKORE_METRICS_AUTH").is_some_and(|v| v != "0" && v != "no" && v != "off"),
        )
    }

    pub fn new(api_tokens: Vec<String>, env_password: Option<String>, metrics_auth: bool) -> Auth {
        Auth { api_tokens, env_password, sessions: Mutex::new(HashMap::new()), metrics_auth }
    }

    /// Also accepts `token` as a bearer: the local CLI's, from `<data>/cli.token`.
    pub fn with_api_token(mut self, token: String) -> Auth {
        self.api_tokens.push(token);
        self
    }

    pub fn bearer_ok(&self, headers: &HeaderMap) -> Option<bool> {
        let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
        let token = value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer "))?.trim();
        Some(self.api_tokens.iter().any(|t| constant_time_eq(t.as_bytes(), token.as_bytes())))
    }

    /// The session's CSRF token, when the request's cookie names a live session.
    pub fn session_csrf(&self, headers: &HeaderMap) -> Option<String> {
        let id = session_id(headers)?;
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let session = sessions.get(&id)?;
        (session.expires > Instant::now()).then(|| session.csrf.clone())
    }

    /// Valid bearer or live session.
    pub fn is_authenticated(&self, headers: &HeaderMap) -> bool {
        self.bearer_ok(headers) == Some(true) || self.session_csrf(headers).is_some()
    }

    /// A new session: (cookie value, CSRF token).
    pub fn login(&self) -> (String, String) {
        let id = random_token();
        let csrf = random_token();
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        sessions.retain(|_, s| s.expires > now);
        sessions.insert(id.clone(), Session { csrf: csrf.clone(), expires: now + SESSION_LIFETIME });
        (id, csrf)
    }

    pub fn logout(&self, headers: &HeaderMap) {
        if let Some(id) = session_id(headers) {
            self.sessions.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        }
    }

    /// Whether a password exists (environment or store); without one the
    /// setup page asks for it.
    pub async fn password_configured(&self, store: &StoreHandle) -> bool {
        if self.env_password.is_some() {
            return true;
        }
        matches!(store.call(|s| s.setting(PASSWORD_SETTING)).await, Ok(Ok(Some(_))))
    }

    pub async fn verify_password(&self, store: &StoreHandle, password: String) -> bool {
        if let Some(expected) = &self.env_password {
            return constant_time_eq(expected.as_bytes(), password.as_bytes());
        }
        let Ok(Ok(Some(stored))) = store.call(|s| s.setting(PASSWORD_SETTING)).await else {
            return false;
        };
        // argon2 is deliberately slow: keep it off the async workers.
        tokio::task::spawn_blocking(move || {
            PasswordHash::new(&stored)
                .map(|hash| Argon2::default().verify_password(password.as_bytes(), &hash).is_ok())
                .unwrap_or(false)
        })
        .await
        .unwrap_or(false)
    }

    /// Stores the first password; refused once one exists.
    pub async fn set_initial_password(&self, store: &StoreHandle, password: String) -> Result<(), String> {
        if self.password_configured(store).await {
            return Err("a password is already set".into());
        }
        let hash = tokio::task::spawn_blocking(move || {
            let mut raw = [0u8; 16];
            os_random(&mut raw);
            let salt = SaltString::encode_b64(&raw)?;
            Argon2::default().hash_password(password.as_bytes(), &salt).map(|h| h.to_string())
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        store
            .call(move |s| s.set_setting(PASSWORD_SETTING, &hash))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }
}

fn session_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == SESSION_COOKIE)
        .map(|(_, v)| v.to_string())
}

pub fn session_cookie(id: &str) -> String {
    format!("{SESSION_COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}", SESSION_LIFETIME.as_secs())
}

pub fn expired_cookie() -> String {
    format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

fn is_open(auth: &Auth, path: &str) -> bool {
    matches!(path, "/healthz" | "/login" | "/setup" | "/api/v1/auth/check")
        || path.starts_with("/static/")
        || path.starts_with("/vendor/")
        || (path == "/metrics" && !auth.metrics_auth)
}

fn unsafe_method(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// A browser's WebSocket carries cookies cross-site; SameSite=Strict already
/// stops that, and the Origin check makes it explicit.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
    origin.split_once("://").map(|(_, rest)| rest == host).unwrap_or(false)
}

fn refused(status: StatusCode, message: &str) -> Response {
    ApiError::new(status, message).into_response()
}

/// The one gate in front of every route.
pub async fn require_auth(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let auth = &state.auth;
    let path = request.uri().path().to_string();
    if is_open(auth, &path) {
        return next.run(request).await;
    }
    match auth.bearer_ok(request.headers()) {
        Some(true) => return next.run(request).await,
        Some(false) => return refused(StatusCode::UNAUTHORIZED, "invalid bearer token"),
        None => {}
    }
    let Some(csrf) = auth.session_csrf(request.headers()) else {
        if path.starts_with("/api/") {
            return refused(StatusCode::UNAUTHORIZED, "login required: a session cookie or a bearer token");
        }
        let to = if auth.password_configured(&state.store).await { "/login" } else { "/setup" };
        return Redirect::to(to).into_response();
    };
    if request.headers().contains_key(header::UPGRADE) && !same_origin(request.headers()) {
        return refused(StatusCode::FORBIDDEN, "cross-origin WebSocket refused");
    }
    if !unsafe_method(request.method()) {
        return next.run(request).await;
    }
    if let Some(sent) = request.headers().get(CSRF_HEADER) {
        if constant_time_eq(sent.as_bytes(), csrf.as_bytes()) {
            return next.run(request).await;
        }
        return refused(StatusCode::FORBIDDEN, "bad CSRF token");
    }
    let is_form = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !is_form {
        return refused(StatusCode::FORBIDDEN, "missing CSRF token (X-CSRF-Token header)");
    }
    // A plain HTML form: the token is a hidden field. Read the body, check,
    // and hand the same bytes on.
    let (parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, FORM_LIMIT).await else {
        return refused(StatusCode::PAYLOAD_TOO_LARGE, "form too large");
    };
    let sent = form_urlencoded_field(&bytes, CSRF_FIELD);
    if !sent.is_some_and(|s| constant_time_eq(s.as_bytes(), csrf.as_bytes())) {
        return refused(StatusCode::FORBIDDEN, "missing or bad CSRF token");
    }
    next.run(Request::from_parts(parts, Body::from(bytes))).await
}

fn form_urlencoded_field(body: &[u8], name: &str) -> Option<String> {
    serde_urlencoded::from_bytes::<Vec<(String, String)>>(body)
        .ok()?
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

/// Store setting marking an instance as deliberately shared: its app is
/// reachable through NGINX without login.
pub fn public_setting(name: &str) -> String {
    format!("public:{name}")
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/auth/check", get(check))
        .route("/api/v1/instances/{name}/public", get(get_public).put(set_public))
}

/// NGINX `auth_request` target: 204 for a valid session or bearer, or when
/// `X-Original-URI` is under `/app/<name>/` of a public instance; 401 otherwise.
async fn check(State(state): State<AppState>, headers: HeaderMap) -> StatusCode {
    if state.auth.is_authenticated(&headers) {
        return StatusCode::NO_CONTENT;
    }
    let uri = headers.get("x-original-uri").and_then(|v| v.to_str().ok()).unwrap_or("");
    if let Some(name) = public_candidate(uri) {
        let key = public_setting(&name);
        if let Ok(Ok(Some(v))) = state.store.call(move |s| s.setting(&key)).await {
            if v == "yes" {
                return StatusCode::NO_CONTENT;
            }
        }
    }
    StatusCode::UNAUTHORIZED
}

/// The instance an original URI addresses, when it is plainly `/app/<name>/...`:
/// dot segments and percent-escapes could make NGINX route elsewhere than
/// the name read here, so such URIs are never public.
fn public_candidate(uri: &str) -> Option<String> {
    let rest = uri.strip_prefix("/app/")?;
    if uri.contains("..") || uri.contains('%') || uri.contains('\\') || uri.contains("//") {
        return None;
    }
    let name = rest.split(['/', '?']).next()?;
    crate::units::is_valid_unit_name(name).then(|| name.to_string())
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PublicInput {
    public: bool,
}

async fn get_public(State(state): State<AppState>, Path(name): Path<String>) -> ApiResult<Json<serde_json::Value>> {
    let name = checked_name(&name)?.to_string();
    state.instances.instance(&name).await?;
    let key = public_setting(&name);
    let public = state.store.call(move |s| s.setting(&key)).await??.is_some_and(|v| v == "yes");
    Ok(Json(serde_json::json!({ "instance": name, "public": public })))
}

async fn set_public(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Result<Json<PublicInput>, JsonRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let name = checked_name(&name)?.to_string();
    let public = body?.0.public;
    state.instances.instance(&name).await?;
    let key = public_setting(&name);
    state.store.call(move |s| s.set_setting(&key, if public { "yes" } else { "no" })).await??;
    Ok(Json(serde_json::json!({ "instance": name, "public": public })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_checked_exactly() {
        let auth = Auth::new(vec!["s3cret".into()], None, false);
        let mut h = HeaderMap::new();
        assert_eq!(auth.bearer_ok(&h), None);
        h.insert(header::AUTHORIZATION, "Bearer s3cret".parse().unwrap());
        assert_eq!(auth.bearer_ok(&h), Some(true));
        h.insert(header::AUTHORIZATION, "Bearer s3cre".parse().unwrap());
        assert_eq!(auth.bearer_ok(&h), Some(false));
    }

    #[test]
    fn sessions_are_found_by_cookie_and_end_at_logout() {
        let auth = Auth::new(vec![], None, false);
        let (id, csrf) = auth.login();
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, format!("theme=dark; {SESSION_COOKIE}={id}").parse().unwrap());
        assert_eq!(auth.session_csrf(&h), Some(csrf));
        auth.logout(&h);
        assert_eq!(auth.session_csrf(&h), None);
    }

    #[test]
    fn csrf_field_is_read_from_a_form_body() {
        assert_eq!(form_urlencoded_field(b"a=1&_csrf=ab%20c", "_csrf").as_deref(), Some("ab c"));
        assert_eq!(form_urlencoded_field(b"a=1", "_csrf"), None);
    }

    #[test]
    fn only_plain_app_uris_can_be_public() {
        assert_eq!(public_candidate("/app/demo/x.js").as_deref(), Some("demo"));
        assert_eq!(public_candidate("/app/demo"), Some("demo".into()));
        assert_eq!(public_candidate("/app/demo/../secret/"), None);
        assert_eq!(public_candidate("/app/demo/%2e%2e/secret/"), None);
        assert_eq!(public_candidate("/"), None);
    }

    #[test]
    fn websocket_origin_must_match_host() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "127.0.0.1:9001".parse().unwrap());
        assert!(same_origin(&h));
        h.insert(header::ORIGIN, "http://127.0.0.1:9001".parse().unwrap());
        assert!(same_origin(&h));
        h.insert(header::ORIGIN, "http://evil.example".parse().unwrap());
        assert!(!same_origin(&h));
    }
}
