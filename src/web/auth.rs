//! Who may call what: the login password, browser sessions (an HttpOnly
//! SameSite=Strict cookie plus a CSRF token per session), the apps origin's
//! own cookie (given through a one-time handshake, docs/security.md), bearer
//! API tokens, and the one middleware that applies them to every route.
//!
//! Open without login: `/healthz`, the login and setup pages, the dashboard's
//! own static files, the apps origin's handshake (`/_aikore/*`), the
//! redirects of app paths to the apps origin, `/metrics` when scraped
//! directly on loopback (see [`MetricsAuth`]), and `/api/v1/auth/check`
//! (NGINX's auth_request target; it answers 204 or 401 itself).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path as FsPath, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use axum::body::Body;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{any, get};
use axum::{Extension, Json, Router};
use blake2::{Blake2s256, Digest};

use super::api::checked_name;
use super::error::{ApiError, ApiResult};
use super::limit::Limiter;
use super::origin::{client_ip, safe_next};
use super::AppState;
use crate::store::StoreHandle;

pub const SESSION_COOKIE: &str = "aikore_session";
/// The apps origin's own login cookie: never accepted by the dashboard.
pub const APP_COOKIE: &str = "aikore_app";
pub const CSRF_HEADER: &str = "x-csrf-token";
/// The hidden field plain HTML forms carry the CSRF token in.
pub const CSRF_FIELD: &str = "_csrf";
/// Store setting holding the argon2 PHC string of the login password.
const PASSWORD_SETTING: &str = "auth.password_hash";
/// A session lasts a working week without activity checks; logging out ends it at once.
const SESSION_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);
/// A handshake code is used by the redirect right after it is made.
const CODE_LIFETIME: Duration = Duration::from_secs(60);
/// A form body is read at most this far to find its CSRF field (scripts are
/// saved through the JSON API, so forms stay small).
const FORM_LIMIT: usize = 256 * 1024;
/// The setup code's file in the data dir (mode 0600), beside the log line.
pub const SETUP_CODE_FILE: &str = "setup.code";

struct Session {
    csrf: String,
    expires: Instant,
}

/// An apps-origin session lives as long as the dashboard session it came from.
struct AppSession {
    parent: String,
    expires: Instant,
    created: Instant,
}

/// Apps-origin sessions one dashboard session may hold (one per browser tab
/// or frame that went through the handshake); beyond it the oldest goes, so
/// a page looping through the handshake cannot grow memory.
const APP_SESSIONS_PER_SESSION: usize = 32;

/// Who may scrape `/metrics` (AIKORE_METRICS_AUTH).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsAuth {
    /// Default: open only to a direct loopback scrape of the API port (no
    /// X-Forwarded-For: not through NGINX); through NGINX a bearer or login.
    Loopback,
    /// `off`: open to anyone who reaches it.
    Open,
    /// `on`: always a bearer or login.
    Always,
}

/// The client's address as the gate worked it out (peer, or NGINX's last
/// X-Forwarded-For hop), and whether the request came straight to the API
/// port from loopback rather than through NGINX.
#[derive(Debug, Clone, Copy)]
pub struct Client {
    pub ip: Option<IpAddr>,
    pub direct_loopback: bool,
}

impl Client {
    pub fn is_loopback(&self) -> bool {
        self.ip.is_some_and(|ip| ip.is_loopback())
    }
}

pub struct Auth {
    /// Digests of the bearer tokens accepted everywhere (AIKORE_API_TOKEN).
    api_tokens: Vec<[u8; 32]>,
    /// Digests of tokens accepted only for GET /metrics (AIKORE_METRICS_TOKEN[_FILE]).
    metrics_tokens: Vec<[u8; 32]>,
    /// AIKORE_PASSWORD: when set it is the password, compared as digests
    /// (hashing a secret that already sits in the environment adds nothing);
    /// otherwise the argon2 hash in the store is.
    env_password: Option<[u8; 32]>,
    /// In memory: a daemon restart asks browsers to log in again.
    sessions: Mutex<HashMap<String, Session>>,
    app_sessions: Mutex<HashMap<String, AppSession>>,
    /// One-time handshake codes: code -> (dashboard session, expiry).
    codes: Mutex<HashMap<String, (String, Instant)>>,
    metrics_auth: MetricsAuth,
    pub limiter: Limiter,
    /// The first-run code and its file, until a password is set.
    setup_code: Mutex<Option<(String, Option<PathBuf>)>>,
    /// Serialises setup claims: exactly one wins.
    claim: tokio::sync::Mutex<()>,
    /// Signs the gate's fast-path cookies (super::gate); NGINX holds the same.
    gate_secret: String,
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

fn digest(bytes: &[u8]) -> [u8; 32] {
    Blake2s256::digest(bytes).into()
}

/// Compares without an early exit, so timing says nothing about a prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Compares the digests of two secrets: fixed-length work whatever either
/// length is, so neither the prefix nor the length leaks through timing.
pub fn secret_eq(expected_digest: &[u8; 32], sent: &[u8]) -> bool {
    constant_time_eq(expected_digest, &digest(sent))
}

fn read_token_file(path: &str) -> Option<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => Some(text.trim().to_string()).filter(|t| !t.is_empty()),
        Err(e) => {
            tracing::error!(%path, error = %e, "cannot read the token file");
            None
        }
    }
}

impl Auth {
    pub fn from_env() -> Auth {
        let non_empty = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let metrics_auth = match non_empty("AIKORE_METRICS_AUTH").as_deref() {
            None => MetricsAuth::Loopback,
            Some("0" | "no" | "off" | "false") => MetricsAuth::Open,
            Some(_) => MetricsAuth::Always,
        };
        let mut auth =
            Auth::new(non_empty("AIKORE_API_TOKEN").into_iter().collect(), non_empty("AIKORE_PASSWORD"), metrics_auth);
        let metrics_tokens = non_empty("AIKORE_METRICS_TOKEN")
            .into_iter()
            .chain(non_empty("AIKORE_METRICS_TOKEN_FILE").and_then(|p| read_token_file(&p)));
        auth.metrics_tokens = metrics_tokens.map(|t| digest(t.as_bytes())).collect();
        auth
    }

    pub fn new(api_tokens: Vec<String>, env_password: Option<String>, metrics_auth: MetricsAuth) -> Auth {
        Auth {
            api_tokens: api_tokens.iter().map(|t| digest(t.as_bytes())).collect(),
            metrics_tokens: Vec::new(),
            env_password: env_password.map(|p| digest(p.as_bytes())),
            sessions: Mutex::new(HashMap::new()),
            app_sessions: Mutex::new(HashMap::new()),
            codes: Mutex::new(HashMap::new()),
            metrics_auth,
            limiter: Limiter::default(),
            setup_code: Mutex::new(None),
            claim: tokio::sync::Mutex::new(()),
            gate_secret: random_token(),
        }
    }

    /// Signs fast-path cookies with `secret`: the one NGINX was given (`<data>/nginx/gate.conf`).
    pub fn with_gate_secret(mut self, secret: String) -> Auth {
        self.gate_secret = secret;
        self
    }

    /// Also accepts `token` as a bearer: the local CLI's, from `<data>/cli.token`.
    pub fn with_api_token(mut self, token: String) -> Auth {
        self.api_tokens.push(digest(token.as_bytes()));
        self
    }

    fn bearer_token(headers: &HeaderMap) -> Option<&str> {
        let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
        Some(value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer "))?.trim())
    }

    /// None: no bearer sent; Some(valid).
    pub fn bearer_ok(&self, headers: &HeaderMap) -> Option<bool> {
        let sent = digest(Self::bearer_token(headers)?.as_bytes());
        // Every token is compared, found or not: the work does not say which matched.
        Some(self.api_tokens.iter().fold(false, |found, t| constant_time_eq(t, &sent) | found))
    }

    fn metrics_bearer_ok(&self, headers: &HeaderMap) -> bool {
        let Some(token) = Self::bearer_token(headers) else { return false };
        let sent = digest(token.as_bytes());
        self.metrics_tokens.iter().fold(false, |found, t| constant_time_eq(t, &sent) | found)
    }

    /// The session's id and CSRF token, when the request's dashboard cookie names a live session.
    fn session(&self, headers: &HeaderMap) -> Option<(String, String)> {
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        // A hostile page on the apps origin can plant a cookie of the same
        // name (cookies ignore ports): any live one of those sent counts.
        cookie_values(headers, SESSION_COOKIE).into_iter().find_map(|id| {
            let session = sessions.get(&id)?;
            (session.expires > now).then(|| (id, session.csrf.clone()))
        })
    }

    /// The session's CSRF token, when the request's cookie names a live session.
    pub fn session_csrf(&self, headers: &HeaderMap) -> Option<String> {
        self.session(headers).map(|(_, csrf)| csrf)
    }

    /// Valid bearer or live dashboard session (never the apps origin's cookie).
    pub fn is_authenticated(&self, headers: &HeaderMap) -> bool {
        self.bearer_ok(headers) == Some(true) || self.session_csrf(headers).is_some()
    }

    /// A live apps-origin session: its cookie, and the dashboard session it came from still alive.
    pub fn app_session_ok(&self, headers: &HeaderMap) -> bool {
        let apps = self.app_sessions.lock().unwrap_or_else(|p| p.into_inner());
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        cookie_values(headers, APP_COOKIE).iter().any(|id| {
            apps.get(id)
                .is_some_and(|a| a.expires > now && sessions.get(&a.parent).is_some_and(|parent| parent.expires > now))
        })
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

    /// Ends the dashboard session and, with it, every apps-origin session it gave.
    pub fn logout(&self, headers: &HeaderMap) {
        let ids = cookie_values(headers, SESSION_COOKIE);
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let mut apps = self.app_sessions.lock().unwrap_or_else(|p| p.into_inner());
        for id in ids {
            if sessions.remove(&id).is_some() {
                apps.retain(|_, a| a.parent != id);
            }
        }
    }

    /// A one-time code for the apps origin, for the session in `headers`.
    pub fn handshake_code(&self, headers: &HeaderMap) -> Option<String> {
        let (session, _) = self.session(headers)?;
        let code = random_token();
        let now = Instant::now();
        let mut codes = self.codes.lock().unwrap_or_else(|p| p.into_inner());
        codes.retain(|_, (_, expires)| *expires > now);
        codes.insert(code.clone(), (session, now + CODE_LIFETIME));
        Some(code)
    }

    /// Spends a handshake code (once): the new apps-origin session id.
    pub fn redeem_code(&self, code: &str) -> Option<String> {
        let (parent, expires) = self.codes.lock().unwrap_or_else(|p| p.into_inner()).remove(code)?;
        let now = Instant::now();
        if expires <= now {
            return None;
        }
        let parent_expires = self.sessions.lock().unwrap_or_else(|p| p.into_inner()).get(&parent)?.expires;
        let id = random_token();
        let mut apps = self.app_sessions.lock().unwrap_or_else(|p| p.into_inner());
        apps.retain(|_, a| a.expires > now);
        let mut siblings: Vec<(Instant, String)> =
            apps.iter().filter(|(_, a)| a.parent == parent).map(|(k, a)| (a.created, k.clone())).collect();
        if siblings.len() >= APP_SESSIONS_PER_SESSION {
            siblings.sort();
            for (_, old) in &siblings[..=siblings.len() - APP_SESSIONS_PER_SESSION] {
                apps.remove(old);
            }
        }
        apps.insert(id.clone(), AppSession { parent, expires: parent_expires, created: now });
        Some(id)
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
            return secret_eq(expected, password.as_bytes());
        }
        let Ok(Ok(Some(stored))) = store.call(|s| s.setting(PASSWORD_SETTING)).await else {
            return false;
        };
        // argon2 is deliberately slow: keep it off the async workers, on the
        // bounded hashing threads (the caller holds an argon2 permit).
        super::limit::run_hash(move || {
            PasswordHash::new(&stored)
                .map(|hash| Argon2::default().verify_password(password.as_bytes(), &hash).is_ok())
                .unwrap_or(false)
        })
        .await
        .unwrap_or(false)
    }

    /// At start, with no password yet: a one-time code for claiming /setup
    /// from anywhere but loopback, printed in the log and written to
    /// `<data>/setup.code` (mode 0600).
    pub async fn prepare_setup(&self, data_dir: &FsPath, store: &StoreHandle) {
        let path = data_dir.join(SETUP_CODE_FILE);
        if self.password_configured(store).await {
            let _ = std::fs::remove_file(&path);
            return;
        }
        let code = random_token()[..20].to_string();
        let written = write_private(&path, &code);
        if let Err(e) = &written {
            tracing::error!(path = %path.display(), error = %e, "cannot write the setup code file");
        }
        tracing::warn!(
            setup_code = %code,
            file = %path.display(),
            "no password set yet: open /setup and enter this code to claim the dashboard (not needed from this machine's loopback)"
        );
        *self.setup_code.lock().unwrap_or_else(|p| p.into_inner()) = Some((code, written.ok().map(|_| path)));
    }

    /// Whether `sent` is the setup code (always false when there is none).
    fn setup_code_ok(&self, sent: &str) -> bool {
        let code = self.setup_code.lock().unwrap_or_else(|p| p.into_inner());
        code.as_ref().is_some_and(|(code, _)| secret_eq(&digest(code.as_bytes()), sent.trim().as_bytes()))
    }

    /// Claims the first run: stores the first password, exactly once however
    /// many claims race; then the setup code is spent.
    pub async fn claim_setup(
        &self,
        store: &StoreHandle,
        password: String,
        code: Option<&str>,
        client: Client,
    ) -> Result<(), SetupRefusal> {
        if !client.is_loopback() && !code.is_some_and(|c| self.setup_code_ok(c)) {
            return Err(SetupRefusal::Code);
        }
        let _one = self.claim.lock().await;
        self.set_initial_password(store, password).await.map_err(SetupRefusal::Taken)?;
        if let Some((_, Some(path))) = self.setup_code.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = std::fs::remove_file(path);
        }
        Ok(())
    }

    /// Stores the first password; refused once one exists.
    pub async fn set_initial_password(&self, store: &StoreHandle, password: String) -> Result<(), String> {
        if self.password_configured(store).await {
            return Err("a password is already set".into());
        }
        let hash = super::limit::run_hash(move || {
            let mut raw = [0u8; 16];
            os_random(&mut raw);
            let salt = SaltString::encode_b64(&raw)?;
            Argon2::default().hash_password(password.as_bytes(), &salt).map(|h| h.to_string())
        })
        .await
        .ok_or("the password hashing threads are gone")?
        .map_err(|e| e.to_string())?;
        store
            .call(move |s| s.set_setting(PASSWORD_SETTING, &hash))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }
}

#[derive(Debug)]
pub enum SetupRefusal {
    /// Not from loopback, and no (or a wrong) setup code.
    Code,
    /// Someone else claimed it first.
    Taken(String),
}

/// Creates `path` anew with mode 0600 (an old file, or a link planted
/// there, is removed first, never followed).
fn write_private(path: &FsPath, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    file.write_all(format!("{text}\n").as_bytes())
}

/// Every value of cookie `name` in the request, in order.
fn cookie_values(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
        .collect()
}

/// The request's Cookie header without any of aikore's cookies: what an app may see.
pub fn app_visible_cookies(headers: &HeaderMap) -> String {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .filter(|pair| !pair.split('=').next().unwrap_or("").trim().starts_with("aikore_"))
        .collect::<Vec<_>>()
        .join("; ")
}

fn secure_attr(headers: &HeaderMap) -> &'static str {
    if super::origin::scheme(headers) == "https" {
        "; Secure"
    } else {
        ""
    }
}

/// The dashboard's cookie; `Secure` when the client came over HTTPS (X-Forwarded-Proto).
pub fn session_cookie(id: &str, headers: &HeaderMap) -> String {
    format!(
        "{SESSION_COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        SESSION_LIFETIME.as_secs(),
        secure_attr(headers)
    )
}

pub fn expired_cookie(headers: &HeaderMap) -> String {
    format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}", secure_attr(headers))
}

/// The apps origin's cookie. Lax, not Strict: it is set at the end of a
/// redirect chain that starts on the dashboard, which may be another site.
pub fn app_cookie(id: &str, headers: &HeaderMap) -> String {
    format!(
        "{APP_COOKIE}={id}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}{}",
        SESSION_LIFETIME.as_secs(),
        secure_attr(headers)
    )
}

fn is_open(auth: &Auth, path: &str, client: Client) -> bool {
    matches!(path, "/healthz" | "/login" | "/setup" | "/api/v1/auth/check" | "/_aikore/handshake" | "/_aikore/denied")
        // The waking page checks the apps origin's credentials itself (wake.rs).
        || path.starts_with("/_aikore/wake/")
        || path.starts_with("/static/")
        || path.starts_with("/vendor/")
        || super::pages::is_app_path(path)
        || (path == "/metrics"
            && match auth.metrics_auth {
                MetricsAuth::Open => true,
                MetricsAuth::Loopback => client.direct_loopback,
                MetricsAuth::Always => false,
            })
}

fn unsafe_method(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The origin a browser says the request comes from: Origin, else Referer's.
fn claimed_origin(headers: &HeaderMap) -> Option<String> {
    if let Some(origin) = headers.get(header::ORIGIN) {
        return Some(origin.to_str().unwrap_or("null").to_string());
    }
    let referer = headers.get(header::REFERER)?.to_str().ok()?;
    let (scheme, rest) = referer.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    Some(format!("{scheme}://{authority}"))
}

fn refused(status: StatusCode, message: &str) -> Response {
    ApiError::new(status, message).into_response()
}

fn too_many(wait: Duration) -> Response {
    let mut response = refused(StatusCode::TOO_MANY_REQUESTS, "too many failed attempts: wait and try again");
    if let Ok(v) = HeaderValue::from_str(&wait.as_secs().max(1).to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, v);
    }
    response
}

/// Where a refused page request goes: the login (back to it afterwards), or setup.
async fn login_redirect(state: &AppState, method: Method, target: String) -> Response {
    if !state.auth.password_configured(&state.store).await {
        return Redirect::to("/setup").into_response();
    }
    let target = target.as_str();
    if method != Method::GET || target == "/" || safe_next(target).is_none() {
        return Redirect::to("/login").into_response();
    }
    let query = serde_urlencoded::to_string([("next", target)]).unwrap_or_default();
    Redirect::to(&format!("/login?{query}")).into_response()
}

/// The one gate in front of every route.
pub async fn require_auth(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let auth = &state.auth;
    let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
    let forwarded = request.headers().contains_key("x-forwarded-for");
    let client = Client {
        ip: client_ip(peer, request.headers()),
        direct_loopback: !forwarded && peer.is_some_and(|p| p.ip().is_loopback()),
    };
    request.extensions_mut().insert(client);
    let path = request.uri().path().to_string();
    // Cross-origin writes are refused whoever sends them: the apps origin
    // (same host, another port: SameSite does not tell them apart) included.
    if unsafe_method(request.method()) && !path.starts_with("/_aikore/") {
        if let Some(origin) = claimed_origin(request.headers()) {
            if !state.origins.is_dashboard(request.headers(), &origin) {
                return refused(StatusCode::FORBIDDEN, "cross-origin request refused");
            }
        }
    }
    if request.headers().contains_key(header::UPGRADE) {
        let origin = request.headers().get(header::ORIGIN).map(|o| o.to_str().unwrap_or("null").to_string());
        if origin.is_some_and(|o| !state.origins.is_dashboard(request.headers(), &o)) {
            return refused(StatusCode::FORBIDDEN, "cross-origin WebSocket refused");
        }
    }
    if is_open(auth, &path, client) {
        return next.run(request).await;
    }
    if path == "/metrics" && request.method() == Method::GET && auth.metrics_bearer_ok(request.headers()) {
        return next.run(request).await;
    }
    if Auth::bearer_token(request.headers()).is_some() {
        if let Err(wait) = auth.limiter.check(client.ip, !client.direct_loopback) {
            auth.limiter.refused(client.ip, wait);
            return too_many(wait);
        }
        if auth.bearer_ok(request.headers()) == Some(true) {
            return next.run(request).await;
        }
        auth.limiter.failure(client.ip, "bearer");
        return refused(StatusCode::UNAUTHORIZED, "invalid bearer token");
    }
    let Some(csrf) = auth.session_csrf(request.headers()) else {
        if path.starts_with("/api/") || path == "/metrics" {
            return refused(StatusCode::UNAUTHORIZED, "login required: a session cookie or a bearer token");
        }
        let target = request.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_default();
        return login_redirect(&state, request.method().clone(), target).await;
    };
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

/// Former store setting of the public flag (`public:<name>`), before it
/// moved into the instance's definition; only read to migrate it.
fn legacy_public_setting(name: &str) -> String {
    format!("public:{name}")
}

/// At start: every `public:<name>` setting becomes the instance's `Public=`
/// (an instance that no longer exists loses it), and the settings go.
pub async fn migrate_public_settings(state: &AppState) {
    let Ok(Ok(settings)) = state.store.call(|s| s.settings_with_prefix("public:")).await else {
        return;
    };
    for (key, value) in settings {
        let name = key.trim_start_matches("public:").to_string();
        if value == "yes" && state.instances.instance(&name).await.is_ok() {
            let changes = crate::instances::InstanceChanges { public: Some(true), ..Default::default() };
            match state.instances.update(&name, changes, false, &state.logs).await {
                Ok(_) => tracing::info!(instance = %name, "public flag moved into the instance's definition"),
                Err(e) => tracing::warn!(instance = %name, error = %e, "cannot migrate the public flag"),
            }
        }
        let key = legacy_public_setting(&name);
        let _ = state.store.call(move |s| s.delete_setting(&key)).await;
    }
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/auth/check", get(check))
        .route("/api/v1/instances/{name}/public", get(get_public).put(set_public))
        .route("/app-login", get(app_login))
        .route("/_aikore/handshake", get(handshake))
        .route("/_aikore/denied", any(denied))
}

/// Whether the instance's definition shares it without login.
async fn is_public(state: &AppState, name: &str) -> bool {
    state.instances.instance(name).await.ok().and_then(|u| u.unit.instance.as_ref().map(|i| i.public)) == Some(true)
}

/// NGINX `auth_request` target on the apps origin: 204 for the apps
/// origin's cookie or a valid bearer, or when `X-Original-URI` is under
/// `/app/<name>/` of a public instance; 401 otherwise. A 204 carries the
/// Cookie and Authorization headers the app may see (aikore's removed).
async fn check(State(state): State<AppState>, Extension(client): Extension<Client>, headers: HeaderMap) -> Response {
    let uri = headers.get("x-original-uri").and_then(|v| v.to_str().ok()).unwrap_or("");
    let (allowed, bearer) = app_request_allowed(&state, client, &headers, uri).await;
    if !allowed {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    note_request(&state, &headers);
    let gate = gate_cookie(&state, &headers).await;
    let mut response = StatusCode::NO_CONTENT.into_response();
    let h = response.headers_mut();
    // NGINX sets it on the app's answer (and never caches an answer carrying one).
    if let Some(v) = gate.and_then(|c| HeaderValue::from_str(&c).ok()) {
        h.insert("x-aikore-gate", v);
    }
    if let Ok(v) = HeaderValue::from_str(&app_visible_cookies(&headers)) {
        h.insert("x-aikore-cookie", v);
    }
    // The app's own Authorization passes; aikore's bearer does not.
    if bearer != Some(true) {
        if let Some(v) = headers.get(header::AUTHORIZATION) {
            h.insert("x-aikore-authorization", v.clone());
        }
    }
    response
}

/// The fast-path cookie for a request the gate let through (super::gate),
/// for the scope of the NGINX location it came through (`X-Aikore-Scope`,
/// which NGINX always sets itself). Only where NGINX could use it: no
/// Authorization header (an app's own, or aikore's bearer, must reach the
/// gate each time to be told apart) and no upgrade (a WebSocket must reach
/// aikore: the idle-stop rule counts it). Given for the apps origin's
/// cookie, or to anyone on a shared instance's own scope.
async fn gate_cookie(state: &AppState, headers: &HeaderMap) -> Option<String> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("");
    let scope = text("x-aikore-scope");
    if !super::gate::valid_scope(scope)
        || headers.contains_key(header::AUTHORIZATION)
        || !text("x-aikore-upgrade").is_empty()
    {
        return None;
    }
    let allowed = state.auth.app_session_ok(headers)
        || match scope.strip_prefix("app/") {
            Some(name) => is_public(state, name).await,
            None => false,
        };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
    let secure = !secure_attr(headers).is_empty();
    allowed.then(|| super::gate::set_cookie(&state.auth.gate_secret, now, scope, secure))
}

/// The apps origin's rule for a request to `uri` (its original target):
/// the apps origin's cookie, a valid bearer (failures rate-limited), or a
/// public instance's plain `/app/<name>/` path. Also says whether a bearer
/// was sent and valid (`Some(true)`: it must not reach the app).
pub(crate) async fn app_request_allowed(
    state: &AppState,
    client: Client,
    headers: &HeaderMap,
    uri: &str,
) -> (bool, Option<bool>) {
    let auth = &state.auth;
    let bearer = auth.bearer_ok(headers);
    let mut allowed = auth.app_session_ok(headers);
    if !allowed && bearer.is_some() {
        if auth.limiter.check(client.ip, true).is_err() {
            return (false, bearer);
        }
        match bearer {
            Some(true) => allowed = true,
            _ => auth.limiter.failure(client.ip, "bearer"),
        }
    }
    if !allowed {
        if let Some(name) = public_candidate(uri) {
            allowed = is_public(state, &name).await;
        }
    }
    (allowed, bearer)
}

/// A request the gate let through is the idle-stop rule's activity
/// (docs/operations.md): the instance's clock restarts, and an upgrade
/// (NGINX never caches those answers) is an open WebSocket until NGINX logs
/// its end. A map update: the gate answers as fast as before.
fn note_request(state: &AppState, headers: &HeaderMap) {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("");
    let upgrade = (!text("x-aikore-upgrade").is_empty()).then(|| text("x-aikore-request"));
    state.instances.ops.request_seen(text("x-original-uri"), upgrade);
}

/// The instance an original URI addresses, when it is plainly `/app/<name>/...`:
/// dot segments and percent-escapes could make NGINX route elsewhere than
/// the name read here, so such URIs are never public.
fn public_candidate(uri: &str) -> Option<String> {
    let name = crate::urls::app_name_in(uri)?;
    if uri.contains("..") || uri.contains('%') || uri.contains('\\') || uri.contains("//") {
        return None;
    }
    crate::units::is_valid_unit_name(name).then(|| name.to_string())
}

#[derive(serde::Deserialize)]
struct NextQuery {
    next: Option<String>,
    code: Option<String>,
}

/// Dashboard side of the handshake: a logged-in browser gets a one-time code
/// and goes to the apps origin with it (then on to `next` there). A `next`
/// that is a `port` instance's own origin (`http://<host>:<its public
/// port>/path`) takes the handshake there instead: NGINX on that port fronts
/// the app with the same gate. Any other absolute `next` is ignored, so a
/// code never travels to a host or port aikore does not serve.
async fn app_login(State(state): State<AppState>, headers: HeaderMap, Query(q): Query<NextQuery>) -> Response {
    let port_target = match q.next.as_deref() {
        Some(next) if next.contains("://") => port_origin_target(&state, &headers, next).await,
        _ => None,
    };
    let (origin, next) = match port_target {
        Some(target) => target,
        None => (state.origins.apps(&headers), q.next.as_deref().and_then(safe_next).unwrap_or("/").to_string()),
    };
    let Some(code) = state.auth.handshake_code(&headers) else {
        return Redirect::to("/login").into_response();
    };
    let query = serde_urlencoded::to_string([("code", code.as_str()), ("next", next.as_str())]).unwrap_or_default();
    Redirect::to(&format!("{origin}/_aikore/handshake?{query}")).into_response()
}

/// `http(s)://<host>:<port>/path` split into its origin and path when the
/// host is one the dashboard is reached by (the request's, or the host of
/// AIKORE_PUBLIC_URL / AIKORE_APPS_URL) and the port is a `port` instance's
/// public port (where NGINX serves it behind the login).
async fn port_origin_target(state: &AppState, headers: &HeaderMap, url: &str) -> Option<(String, String)> {
    let (scheme, rest) = url.split_once("://")?;
    if !matches!(scheme, "http" | "https") {
        return None;
    }
    let (authority, path) = match rest.find(['/', '?', '#']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let path = if path.starts_with('/') { path.to_string() } else { format!("/{path}") };
    safe_next(&path)?;
    let (host, port) = authority.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let host_of = |origin: &Option<String>| {
        origin.as_deref().and_then(|o| o.split_once("://")).map(|(_, a)| {
            if a.starts_with('[') {
                a.split_inclusive(']').next().unwrap_or("").to_ascii_lowercase()
            } else {
                a.split(':').next().unwrap_or("").to_ascii_lowercase()
            }
        })
    };
    let host = host.to_ascii_lowercase();
    let known = host == super::origin::hostname(headers)
        || host_of(&state.origins.dashboard_url).as_deref() == Some(host.as_str())
        || host_of(&state.origins.apps_url).as_deref() == Some(host.as_str());
    if !known {
        return None;
    }
    let instances = state.instances.instances().await.ok()?;
    let served = instances.iter().any(|unit| {
        let Some(instance) = unit.unit.instance.as_ref() else { return false };
        let mode = state.instances.proxy_mode(&unit.name, &instance.blueprint);
        mode == crate::proxy::ProxyMode::Port && crate::instances::direct_port_of(unit, mode) == Some(port)
    });
    served.then(|| (format!("{scheme}://{host}:{port}"), path))
}

/// Apps side of the handshake: the code becomes this origin's own cookie.
async fn handshake(State(state): State<AppState>, headers: HeaderMap, Query(q): Query<NextQuery>) -> Response {
    let next = q.next.as_deref().and_then(safe_next).unwrap_or("/");
    let Some(id) = q.code.as_deref().and_then(|c| state.auth.redeem_code(c)) else {
        return refused(StatusCode::FORBIDDEN, "this login link is unknown, used or expired: open the app again");
    };
    ([(header::SET_COOKIE, app_cookie(&id, &headers))], Redirect::to(next)).into_response()
}

/// A request the apps origin refused: a browser goes through the dashboard's
/// login (and back through the handshake), an API client gets 401.
async fn denied(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let html = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("text/html"));
    if !html {
        return refused(
            StatusCode::UNAUTHORIZED,
            "login required: open the app from the dashboard, or send a bearer token",
        );
    }
    let uri = headers.get("x-original-uri").and_then(|v| v.to_str().ok()).and_then(safe_next).unwrap_or("/");
    // A `port` instance's server says its public port: back there after the login.
    let port = headers.get("x-aikore-port").and_then(|v| v.to_str().ok()).and_then(|p| p.parse::<u16>().ok());
    let next = match port {
        Some(port) => {
            format!("{}://{}:{port}{uri}", super::origin::scheme(&headers), super::origin::hostname(&headers))
        }
        None => uri.to_string(),
    };
    let query = serde_urlencoded::to_string([("next", next.as_str())]).unwrap_or_default();
    Redirect::to(&format!("{}/app-login?{query}", state.origins.dashboard(&headers))).into_response()
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PublicInput {
    public: bool,
}

async fn get_public(State(state): State<AppState>, Path(name): Path<String>) -> ApiResult<Json<serde_json::Value>> {
    let name = checked_name(&name)?.to_string();
    state.instances.instance(&name).await?;
    let public = is_public(&state, &name).await;
    Ok(Json(serde_json::json!({ "instance": name, "public": public })))
}

async fn set_public(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Result<Json<PublicInput>, JsonRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let name = checked_name(&name)?.to_string();
    let public = body?.0.public;
    let changes = crate::instances::InstanceChanges { public: Some(public), ..Default::default() };
    state.instances.update(&name, changes, false, &state.logs).await?;
    Ok(Json(serde_json::json!({ "instance": name, "public": public })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_checked_exactly() {
        let auth = Auth::new(vec!["s3cret".into()], None, MetricsAuth::Loopback);
        let mut h = HeaderMap::new();
        assert_eq!(auth.bearer_ok(&h), None);
        h.insert(header::AUTHORIZATION, "Bearer s3cret".parse().unwrap());
        assert_eq!(auth.bearer_ok(&h), Some(true));
        for wrong in ["Bearer s3cre", "Bearer s3cret2", "Bearer ", "Bearer S3CRET"] {
            h.insert(header::AUTHORIZATION, wrong.parse().unwrap());
            assert_eq!(auth.bearer_ok(&h), Some(false), "{wrong}");
        }
    }

    #[test]
    fn secrets_are_compared_as_fixed_length_digests() {
        let expected = digest(b"correct horse");
        assert!(secret_eq(&expected, b"correct horse"));
        assert!(!secret_eq(&expected, b"correct hors"));
        assert!(!secret_eq(&expected, b""));
        assert!(!secret_eq(&expected, &[b'x'; 10_000]));
    }

    #[test]
    fn sessions_are_found_by_cookie_and_end_at_logout() {
        let auth = Auth::new(vec![], None, MetricsAuth::Loopback);
        let (id, csrf) = auth.login();
        let mut h = HeaderMap::new();
        // A planted cookie of the same name first (cookie tossing) does not hide the real one.
        h.insert(header::COOKIE, format!("aikore_session=planted; theme=dark; {SESSION_COOKIE}={id}").parse().unwrap());
        assert_eq!(auth.session_csrf(&h), Some(csrf));
        auth.logout(&h);
        assert_eq!(auth.session_csrf(&h), None);
    }

    #[test]
    fn the_app_cookie_is_not_a_dashboard_login_and_dies_with_its_session() {
        let auth = Auth::new(vec![], None, MetricsAuth::Loopback);
        let (id, _) = auth.login();
        let mut dash = HeaderMap::new();
        dash.insert(header::COOKIE, format!("{SESSION_COOKIE}={id}").parse().unwrap());
        let code = auth.handshake_code(&dash).unwrap();
        let app_id = auth.redeem_code(&code).unwrap();
        assert!(auth.redeem_code(&code).is_none(), "a code is spent once");
        let mut app = HeaderMap::new();
        app.insert(header::COOKIE, format!("{APP_COOKIE}={app_id}").parse().unwrap());
        assert!(auth.app_session_ok(&app));
        assert!(!auth.is_authenticated(&app));
        // The app cookie's value under the dashboard cookie's name is no login either.
        let mut forged = HeaderMap::new();
        forged.insert(header::COOKIE, format!("{SESSION_COOKIE}={app_id}").parse().unwrap());
        assert!(!auth.is_authenticated(&forged));
        // The dashboard cookie is no apps-origin login.
        assert!(!auth.app_session_ok(&dash));
        auth.logout(&dash);
        assert!(!auth.app_session_ok(&app), "logging out of the dashboard ends the app session");
        // A page looping through the handshake keeps a bounded number of sessions.
        let (id, _) = auth.login();
        dash.insert(header::COOKIE, format!("{SESSION_COOKIE}={id}").parse().unwrap());
        for _ in 0..(3 * APP_SESSIONS_PER_SESSION) {
            let code = auth.handshake_code(&dash).unwrap();
            auth.redeem_code(&code).unwrap();
        }
        assert_eq!(auth.app_sessions.lock().unwrap().len(), APP_SESSIONS_PER_SESSION);
        assert!(auth.handshake_code(&HeaderMap::new()).is_none());
    }

    #[test]
    fn apps_see_every_cookie_but_aikores() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, "a=1; aikore_session=s; b=2".parse().unwrap());
        h.append(header::COOKIE, "aikore_app=x;c=3; aikore_session=again".parse().unwrap());
        assert_eq!(app_visible_cookies(&h), "a=1; b=2; c=3");
        assert_eq!(app_visible_cookies(&HeaderMap::new()), "");
    }

    #[test]
    fn cookies_are_secure_behind_https() {
        let mut h = HeaderMap::new();
        assert!(!session_cookie("x", &h).contains("Secure"));
        h.insert("x-forwarded-proto", "https".parse().unwrap());
        assert!(session_cookie("x", &h).ends_with("; Secure"));
        assert!(app_cookie("x", &h).ends_with("; Secure"));
        assert!(expired_cookie(&h).ends_with("; Secure"));
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
    fn the_claimed_origin_comes_from_origin_or_referer() {
        let mut h = HeaderMap::new();
        assert_eq!(claimed_origin(&h), None);
        h.insert(header::REFERER, "http://gpu.lan:9100/app/x/evil.html?q".parse().unwrap());
        assert_eq!(claimed_origin(&h).as_deref(), Some("http://gpu.lan:9100"));
        h.insert(header::ORIGIN, "null".parse().unwrap());
        assert_eq!(claimed_origin(&h).as_deref(), Some("null"));
    }
}
