//! The dashboard's HTML: pages rendered with maud (escaping by default), the
//! plain-form endpoints behind them (POST, then a redirect back), and the
//! static files they load. The JavaScript in web/static only makes these
//! pages live; every basic action works without it.
//!
//! Page routes stay out of /api/ and out of the OpenAPI document.

use std::collections::BTreeMap;
use std::path::PathBuf;

use axum::extract::{Form, Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{any, get, post};
use axum::{Extension, Router};
use maud::{html, Markup, DOCTYPE};
use serde::Deserialize;

use super::auth::{self, Client, SetupRefusal, CSRF_FIELD};
use super::instances::{view_for, InstanceInput};
use super::origin::safe_next;
use super::AppState;
use crate::api::InstanceView;

/// The only files served from node_modules: (URL name, path inside it).
const VENDOR: &[(&str, &str)] = &[
    ("xterm.js", "@xterm/xterm/lib/xterm.js"),
    ("xterm.css", "@xterm/xterm/css/xterm.css"),
    ("addon-fit.js", "@xterm/addon-fit/lib/addon-fit.js"),
];
/// Shortest password the setup page accepts.
const MIN_PASSWORD: usize = 8;
/// The states a badge can show, in the order the legend lists them.
pub const STATES: [&str; 8] =
    ["stopped", "starting", "stalled", "started", "stopping", "restarting", "error", "failed"];

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(dashboard))
        .route("/login", get(login_page).post(login))
        .route("/setup", get(setup_page).post(setup))
        .route("/logout", post(logout))
        .route("/instances", post(create))
        .route("/instances/{name}/{action}", post(action))
        .route("/trashcan/{id}/restore", post(restore))
        .route("/trashcan/{id}/purge", post(purge))
        .route("/partials/instances", get(partial_instances))
        .route("/partials/trash", get(partial_trash))
        .route("/static/{file}", get(static_file))
        .route("/vendor/{file}", get(vendor_file))
        // Apps live on the apps origin: their paths here send the browser there.
        .route("/app", any(to_apps))
        .route("/app/", any(to_apps))
        .route("/app/{*rest}", any(to_apps))
        .route("/vnc/", any(to_apps))
        .route("/vnc/{*rest}", any(to_apps))
        .route("/comfyui", any(to_apps))
        .route("/comfyui/", any(to_apps))
        .route("/comfyui/{*rest}", any(to_apps))
}

/// Paths that belong to the apps origin (answered here by [`to_apps`]).
pub fn is_app_path(path: &str) -> bool {
    ["/app", "/vnc", "/comfyui"].iter().any(|p| path == *p || path.starts_with(&format!("{p}/")))
}

/// An app path asked of the dashboard's origin: the same path on the apps origin.
async fn to_apps(State(state): State<AppState>, headers: HeaderMap, uri: axum::http::Uri) -> Response {
    let target = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    Redirect::to(&format!("{}{target}", state.origins.apps(&headers))).into_response()
}

/// Where web/ is: `explicit` (AIKORE_WEB_DIR), else `./web` (a checkout), else the
/// image's /opt/aikore/web, else next to the binary's target dir.
pub fn resolve_web_dir(explicit: Option<PathBuf>) -> PathBuf {
    if let Some(dir) = explicit {
        return dir;
    }
    let candidates = [
        Some(PathBuf::from("web")),
        Some(PathBuf::from("/opt/aikore/web")),
        std::env::current_exe().ok().and_then(|exe| Some(exe.parent()?.parent()?.parent()?.join("web"))),
    ];
    candidates.into_iter().flatten().find(|d| d.join("static").is_dir()).unwrap_or_else(|| PathBuf::from("web"))
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit('.').next() {
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        _ => "application/octet-stream",
    }
}

async fn send_file(path: PathBuf, name: &str) -> Response {
    match tokio::fs::read(&path).await {
        Ok(bytes) => {
            ([(header::CONTENT_TYPE, content_type(name)), (header::CACHE_CONTROL, "no-cache")], bytes).into_response()
        }
        Err(e) => {
            // The log may say where; a client is not told the server's paths.
            tracing::debug!(path = %path.display(), error = %e, "static file missing");
            (StatusCode::NOT_FOUND, format!("{name} not found")).into_response()
        }
    }
}

async fn static_file(State(state): State<AppState>, Path(file): Path<String>) -> Response {
    let plain =
        file.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) && !file.starts_with('.');
    if !plain {
        return StatusCode::NOT_FOUND.into_response();
    }
    send_file(state.web_dir.join("static").join(&file), &file).await
}

async fn vendor_file(State(state): State<AppState>, Path(file): Path<String>) -> Response {
    match VENDOR.iter().find(|(name, _)| *name == file) {
        Some((name, rel)) => send_file(state.web_dir.join("node_modules").join(rel), name).await,
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

fn page(title: &str, csrf: Option<&str>, head_extra: Markup, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if let Some(token) = csrf { meta name="csrf-token" content=(token); }
                title { (title) " · AiKore" }
                link rel="icon" href="/static/favicon.svg";
                link rel="stylesheet" href="/static/app.css";
                (head_extra)
            }
            body { (body) }
        }
    }
}

fn brand() -> Markup {
    html! { span.brand { span.logo { "Ai" } "Kore" } }
}

// ----- login and setup ---------------------------------------------------

#[derive(Deserialize)]
struct LoginForm {
    password: String,
    next: Option<String>,
}

#[derive(Deserialize)]
struct NextQuery {
    next: Option<String>,
}

fn login_markup(error: Option<&str>, next: Option<&str>) -> Markup {
    page(
        "Log in",
        None,
        html! {},
        html! {
            main.auth-card {
                (brand())
                h1 { "Log in" }
                @if let Some(e) = error { p.flash.error role="alert" { (e) } }
                form method="post" action="/login" {
                    @if let Some(next) = next { input type="hidden" name="next" value=(next); }
                    label { "Password" input type="password" name="password" autocomplete="current-password" autofocus required; }
                    button.btn.primary type="submit" { "Log in" }
                }
            }
        },
    )
}

async fn login_page(State(state): State<AppState>, Query(q): Query<NextQuery>) -> Response {
    if !state.auth.password_configured(&state.store).await {
        return Redirect::to("/setup").into_response();
    }
    login_markup(None, q.next.as_deref().and_then(safe_next)).into_response()
}

/// A new session, then `next` (a path on this origin, checked) or the dashboard.
fn start_session(state: &AppState, headers: &HeaderMap, next: Option<&str>) -> Response {
    let (id, _csrf) = state.auth.login();
    let to = next.and_then(safe_next).unwrap_or("/");
    ([(header::SET_COOKIE, auth::session_cookie(&id, headers))], Redirect::to(to)).into_response()
}

fn wait_page(markup: Markup, wait: std::time::Duration) -> Response {
    let mut response = (StatusCode::TOO_MANY_REQUESTS, markup).into_response();
    if let Ok(v) = header::HeaderValue::from_str(&wait.as_secs().max(1).to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, v);
    }
    response
}

async fn login(
    State(state): State<AppState>,
    Extension(client): Extension<Client>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let next = form.next.as_deref().and_then(safe_next);
    let limiter = &state.auth.limiter;
    if let Err(wait) = limiter.check(client.ip, !client.direct_loopback) {
        limiter.refused(client.ip, wait);
        let msg = format!("Too many failed attempts: wait {} s.", wait.as_secs().max(1));
        return wait_page(login_markup(Some(&msg), next), wait);
    }
    // At most a few argon2 runs at once; a flood beyond the short queue is refused.
    let Some(_permit) = limiter.argon2().await else {
        limiter.refused(client.ip, std::time::Duration::from_secs(1));
        return wait_page(login_markup(Some("Busy: try again in a moment."), next), std::time::Duration::from_secs(1));
    };
    if state.auth.verify_password(&state.store, form.password).await {
        limiter.success(client.ip);
        return start_session(&state, &headers, next);
    }
    limiter.failure(client.ip, "password");
    (StatusCode::UNAUTHORIZED, login_markup(Some("Wrong password."), next)).into_response()
}

#[derive(Deserialize)]
struct SetupForm {
    password: String,
    confirm: String,
    /// The one-time code from the daemon's log (not needed from loopback).
    code: Option<String>,
}

/// `ask_code`: the client is not on loopback, so the setup code is needed
/// (from this machine, or through `ssh -L`, it is not, and not asked for).
fn setup_markup(error: Option<&str>, ask_code: bool) -> Markup {
    page(
        "Set a password",
        None,
        html! {},
        html! {
            main.auth-card {
                (brand())
                h1 { "Welcome" }
                p.muted { "No password is set yet. Choose the one that will protect this dashboard and the apps behind it." }
                @if let Some(e) = error { p.flash.error role="alert" { (e) } }
                form method="post" action="/setup" {
                    @if ask_code {
                        label { "Setup code" input type="text" name="code" autocomplete="off" spellcheck="false"
                            placeholder="from aikore's log or <data>/setup.code"; }
                    }
                    label { "Password" input type="password" name="password" autocomplete="new-password" minlength=(MIN_PASSWORD)
                        placeholder={ "at least " (MIN_PASSWORD) " characters" } autofocus required; }
                    label { "Again" input type="password" name="confirm" autocomplete="new-password"
                        placeholder="the same password" required; }
                    button.btn.primary type="submit" { "Set password" }
                }
            }
        },
    )
}

async fn setup_page(State(state): State<AppState>, Extension(client): Extension<Client>) -> Response {
    if state.auth.password_configured(&state.store).await {
        return Redirect::to("/login").into_response();
    }
    setup_markup(None, !client.is_loopback()).into_response()
}

async fn setup(
    State(state): State<AppState>,
    Extension(client): Extension<Client>,
    headers: HeaderMap,
    Form(form): Form<SetupForm>,
) -> Response {
    let limiter = &state.auth.limiter;
    let ask_code = !client.is_loopback();
    if let Err(wait) = limiter.check(client.ip, !client.direct_loopback) {
        limiter.refused(client.ip, wait);
        return wait_page(setup_markup(Some("Too many wrong setup codes: wait and try again."), ask_code), wait);
    }
    if form.password.chars().count() < MIN_PASSWORD {
        let msg = format!("Use at least {MIN_PASSWORD} characters.");
        return (StatusCode::BAD_REQUEST, setup_markup(Some(&msg), ask_code)).into_response();
    }
    if form.password != form.confirm {
        return (StatusCode::BAD_REQUEST, setup_markup(Some("The two passwords differ."), ask_code)).into_response();
    }
    match state.auth.claim_setup(&state.store, form.password, form.code.as_deref(), client).await {
        Ok(()) => start_session(&state, &headers, None),
        Err(SetupRefusal::Code) => {
            limiter.failure(client.ip, "setup_code");
            let msg = "Wrong or missing setup code: it is in aikore's log and in <data>/setup.code.";
            (StatusCode::FORBIDDEN, setup_markup(Some(msg), ask_code)).into_response()
        }
        Err(SetupRefusal::Taken(e)) => (StatusCode::CONFLICT, setup_markup(Some(&e), ask_code)).into_response(),
    }
}

async fn logout(State(state): State<AppState>, headers: HeaderMap) -> Response {
    state.auth.logout(&headers);
    ([(header::SET_COOKIE, auth::expired_cookie(&headers))], Redirect::to("/login")).into_response()
}

// ----- the dashboard -------------------------------------------------------

struct Listing {
    instances: Vec<InstanceView>,
}

async fn listing(state: &AppState, headers: &HeaderMap) -> Result<Listing, String> {
    let units = state.instances.instances().await.map_err(|e| e.to_string())?;
    let instances: Vec<InstanceView> = units.iter().filter_map(|u| view_for(state, headers, u)).collect();
    Ok(Listing { instances })
}

fn csrf_field(csrf: &str) -> Markup {
    html! { input type="hidden" name=(CSRF_FIELD) value=(csrf); }
}

fn badge(status: &str) -> Markup {
    status_badge(status, None)
}

/// A status badge; its tooltip says why the last run ended badly (the class,
/// the log line that tells, the hint), as `failureTip` in app.js does live.
fn status_badge(status: &str, failure: Option<&crate::failure::Failure>) -> Markup {
    html! {
        span class={ "badge st-" (status) } data-role="badge"
            data-failure=[failure.map(|f| f.class.as_str())] title=[failure.map(failure_tip)] { (status) }
    }
}

pub fn failure_tip(f: &crate::failure::Failure) -> String {
    let mut tip = format!("failure: {}", f.class);
    for part in [&f.line, &f.hint].into_iter().flatten().filter(|p| !p.is_empty()) {
        tip.push('\n');
        tip.push_str(part);
    }
    tip
}

/// "GPU 0,2 · 3.1 GiB": where the current run is and what it uses (the
/// dashboard's script keeps it fresh from /api/v1/system).
fn vram_text(placed: Option<&[u32]>, vram: Option<u64>) -> String {
    let mut out = String::new();
    if let Some(list) = placed.filter(|l| !l.is_empty()) {
        out += "GPU ";
        out += &list.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    }
    if let Some(bytes) = vram.filter(|b| *b > 0) {
        if !out.is_empty() {
            out += " · ";
        }
        out += &format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64);
    }
    out
}

fn port_text(v: &InstanceView) -> String {
    v.port.to_string()
}

/// What the Slot column means, as its header's tooltip.
const SLOT_HELP: &str = "Slot: ComfyUI's fixed address. The instance holding the comfyui slot also answers at \
                         /comfyui/ (one instance at a time), for tools and links that expect ComfyUI there. \
                         — leaves it at its own address only.";

fn row(v: &InstanceView, csrf: &str) -> Markup {
    let public = v.public;
    let name = &v.name;
    let act = format!("act-{name}");
    let edit = format!("edit-{name}");
    let base = format!("/instances/{name}");
    let running = !matches!(v.status.as_str(), "stopped" | "error" | "failed" | "idle-stopped");
    html! {
        tr data-name=(name) data-status=(v.status.as_str()) data-url=(v.url) data-seq=(v.seq)
            data-port=(v.current_port.map(|p| p.to_string()).unwrap_or_default()) {
            td.name {
                strong title=(name) { (name) }
                @if !v.description.is_empty() { span.desc title=(v.description) { (v.description) } }
                form id=(act) method="post" action={ (base) "/start" } { (csrf_field(csrf)) }
                form id=(edit) method="post" action={ (base) "/edit" } { (csrf_field(csrf)) }
            }
            td.blueprint {
                code { (v.blueprint) }
                // The app version its install recorded (a release tag or a pinned ref).
                @if let Some(version) = &v.app_version { " " span.version title="installed version" { (version) } }
            }
            td.gpus {
                input.gpus-text type="text" name="gpus" form=(edit) value=(v.gpus) placeholder="CPU"
                    aria-label={ "GPUs of " (name) } size="6";
                span.current data-role="vram" title="GPUs of the current run and the VRAM its processes use" {
                    (vram_text(v.placed_gpus.as_deref(), v.vram_bytes))
                }
            }
            td.port {
                input type="text" name="port" form=(edit) value=(port_text(v)) aria-label={ "Port of " (name) } size="5";
                span.current data-role="port" title="port of the current run" {
                    @if let Some(p) = v.current_port { ":" (p) }
                }
            }
            td.autostart {
                input type="checkbox" name="autostart" value="yes" form=(edit) checked[v.autostart] aria-label={ "Autostart " (name) };
            }
            td.slot {
                select name="active_slot" form=(edit) aria-label={ "Active slot of " (name) } title=(SLOT_HELP) {
                    option value="" selected[v.active_slot.is_none()] { "—" }
                    option value="comfyui" selected[v.active_slot.as_deref() == Some("comfyui")] { "comfyui" }
                }
            }
            td.status {
                (status_badge(v.status.as_str(), v.failure.as_ref()))
                span.figures data-role="figures" {
                    @if let Some(pid) = v.pid { "pid " (pid) }
                    @if v.restarts > 0 { " · " (v.restarts) " restarts" }
                }
                @if let Some(d) = &v.detail { span.detail data-role="detail" title=(d) { (d) } }
                @else { span.detail data-role="detail" {} }
            }
            td.actions {
                input type="hidden" name="edit_marker" value="1" form=(edit);
                span.unsaved hidden title="unsaved changes" { "●" }
                button.btn.save form=(edit) type="submit" data-act="save" title="Save changes" { "Save" }
                button.btn.start form=(act) type="submit" formaction={ (base) "/start" } data-act="start"
                    disabled[running] hidden[running] { "Start" }
                button.btn.stop form=(act) type="submit" formaction={ (base) "/stop" } data-act="stop"
                    disabled[!running] hidden[!running] { "Stop" }
                button.btn form=(act) type="submit" formaction={ (base) "/restart" } data-act="restart" title="Restart" { "Restart" }
                a.btn href=(v.url) target="_blank" rel="noopener" data-act="open" title="Open the app in a new tab" { "Open" }
                button.btn type="button" data-act="view" title="Show the app below" { "View" }
                details.menu {
                    summary.btn aria-label={ "Tools for " (name) } title="More" { "⋯" }
                    div.menu-items role="menu" {
                        button type="button" data-act="logs" { "Logs" }
                        button type="button" data-act="terminal" { "Terminal" }
                        button type="button" data-act="script" { "Edit script" }
                        button type="button" data-act="settings" { "Settings: env, name, mode…" }
                        button type="button" data-act="blueprint" { "Save as blueprint" }
                        button form=(act) type="submit" formaction={ (base) "/reinstall" } data-act="reinstall"
                            title="Run the install phase again at the next start (now if stopped)" { "Reinstall" }
                        button form=(act) type="submit" formaction={ (base) "/update" } data-act="update"
                            title="Move to the app's newest release (blueprints that follow releases)" { "Update" }
                        label.menu-check {
                            input type="checkbox" name="public" value="yes" form=(edit) checked[public];
                            " Public (no login)"
                        }
                        button.danger form=(act) type="submit" formaction={ (base) "/delete" } data-act="delete" { "Delete to trash" }
                    }
                }
            }
        }
    }
}

fn rows(listing: &Listing, csrf: &str) -> Markup {
    html! {
        @for v in &listing.instances {
            (row(v, csrf))
        }
        @if listing.instances.is_empty() {
            tr.empty { td colspan="8" { "No instances yet: add one below." } }
        }
    }
}

fn trash_list(state: &AppState, csrf: &str) -> Markup {
    let entries = state.instances.trash();
    html! {
        @if entries.is_empty() { p.muted { "The trash can is empty." } }
        ul.trash-list {
            @for e in &entries {
                li data-id=(e.id) {
                    span { strong { (e.name) } " " span.muted.when data-ms=(e.deleted_ms) { "deleted " (e.deleted_ms) } }
                    form method="post" action={ "/trashcan/" (e.id) "/restore" } {
                        (csrf_field(csrf))
                        button.btn type="submit" data-act="restore" { "Restore" }
                        button.btn.danger type="submit" formaction={ "/trashcan/" (e.id) "/purge" } data-act="purge"
                            title="Delete its files for good" { "Delete forever" }
                    }
                }
            }
        }
    }
}

#[derive(Deserialize)]
struct Flash {
    error: Option<String>,
    notice: Option<String>,
}

async fn dashboard(State(state): State<AppState>, headers: HeaderMap, Query(flash): Query<Flash>) -> Response {
    let csrf = state.auth.session_csrf(&headers).unwrap_or_default();
    let listing = match listing(&state, &headers).await {
        Ok(l) => l,
        Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, e).into_response(),
    };
    let blueprints = state.instances.blueprints();
    let head = html! {
        link rel="stylesheet" href="/vendor/xterm.css";
        script src="/vendor/xterm.js" defer {}
        script src="/vendor/addon-fit.js" defer {}
        script src="/static/ansi.js" defer {}
        script src="/static/app.js" defer {}
    };
    let body = html! {
        header.topbar {
            (brand())
            span #live.live title="live updates" { "connecting…" }
            span.spacer {}
            form method="post" action="/logout" {
                (csrf_field(&csrf))
                button.btn.ghost type="submit" { "Log out" }
            }
        }
        div #layout.layout {
            main #main {
                section #instances-panel.panel data-pane="top" {
                    div.panel-head {
                        h2 { "Instances" }
                        span.muted #count { (listing.instances.len()) }
                        span.spacer {}
                        span.legend { @for s in STATES { (badge(s)) } }
                    }
                    @if let Some(e) = &flash.error { p.flash.error role="alert" { (e) } }
                    @if let Some(n) = &flash.notice { p.flash.notice { (n) } }
                    p #js-error.flash.error hidden role="alert" {}
                    p #js-notice.flash.notice hidden role="status" {}
                    div.table-wrap {
                        table #instances {
                            thead { tr {
                                th { "Name" } th { "Blueprint" } th { "GPUs" } th { "Port" }
                                th title="Autostart: start it when AiKore starts" { "Auto" }
                                th title=(SLOT_HELP) { span.help { "Slot" } }
                                th { "Status" } th.actions { "Actions" }
                            } }
                            tbody #instance-rows { (rows(&listing, &csrf)) }
                            tfoot { tr.add-row {
                                td {
                                    form #create-form method="post" action="/instances" { (csrf_field(&csrf)) }
                                    input type="text" name="name" form="create-form" placeholder="new-instance" required
                                        pattern="[a-z0-9][a-z0-9_\\-]{0,62}" title="lowercase letters, digits, - and _" aria-label="New instance name";
                                }
                                td {
                                    select name="blueprint" form="create-form" aria-label="Blueprint" required {
                                        @for b in &blueprints {
                                            option value=(b.id) { (b.name) @if b.custom { " (custom)" } }
                                        }
                                    }
                                }
                                td.gpus { input.gpus-text type="text" name="gpus" form="create-form" placeholder="CPU" aria-label="GPUs" size="6"; }
                                td.port { input type="text" name="port" form="create-form" value="auto" aria-label="Port" size="5"; }
                                td { input type="checkbox" name="autostart" value="yes" form="create-form" aria-label="Autostart"; }
                                td { }
                                td { label.inline { input type="checkbox" name="start" value="yes" form="create-form"; " start now" } }
                                td.actions { button.btn.primary type="submit" form="create-form" { "Add instance" } }
                            } }
                        }
                    }
                    details #trash.trash {
                        summary { "Trash can" }
                        div #trash-body { (trash_list(&state, &csrf)) }
                    }
                }
                div.splitter.horizontal data-split="workspace" role="separator" aria-orientation="horizontal" {}
                section #workspace.panel {
                    div.tabs role="tablist" {
                        button.tab.active type="button" data-tab="logs" { "Logs" }
                        button.tab type="button" data-tab="terminal" { "Terminal" }
                        button.tab type="button" data-tab="script" { "Script" }
                        button.tab type="button" data-tab="view" { "View" }
                        span.spacer {}
                        span.muted { "instance: " strong #selected { "none — pick one in the table" } }
                    }
                    div.tab-body #tab-logs {
                        (empty_pane("Pick an instance in the table (click its row) to follow its log here."))
                        div.toolbar {
                            span #log-state.muted { "" }
                            span.spacer {}
                            button.btn #log-bottom type="button" hidden { "↓ Follow" }
                            button.btn #log-clear type="button" { "Clear" }
                        }
                        div #log.log role="log" aria-live="off" {}
                    }
                    div.tab-body #tab-terminal hidden {
                        (empty_pane("Pick an instance in the table to open a shell in its directory, with its environment."))
                        div #term-msg.muted {}
                        div #term.term {}
                    }
                    div.tab-body #tab-script hidden {
                        (empty_pane("Pick an instance in the table to edit its launch.sh."))
                        div.toolbar {
                            span.muted { "launch.sh" }
                            span #script-state.muted {}
                            span.spacer {}
                            button.btn #script-save type="button" { "Save" }
                            button.btn #script-save-restart type="button" { "Save & restart" }
                            button.btn #script-blueprint type="button" { "Save as blueprint" }
                        }
                        textarea #script.editor spellcheck="false" aria-label="launch.sh" {}
                    }
                    div.tab-body #tab-view hidden {
                        (empty_pane("Pick an instance in the table to show its app here (it must be running)."))
                        p #view-msg.empty-note hidden {}
                        // Another origin (the apps'), and sandboxed to what web UIs need:
                        // no top navigation, so an app cannot replace the dashboard.
                        iframe #view.view title="instance view"
                            sandbox="allow-scripts allow-forms allow-same-origin allow-popups allow-popups-to-escape-sandbox allow-downloads allow-modals allow-pointer-lock" {}
                    }
                }
            }
            div.splitter.vertical data-split="side" role="separator" aria-orientation="vertical" {}
            aside #system.panel {
                div.panel-head { h2 { "System" } }
                div #system-body { p.muted { "loading…" } }
            }
        }
        noscript { p.flash.notice { "JavaScript is off: the forms work, live status, logs and the terminal need it." } }
        (settings_dialog())
    };
    page("Dashboard", Some(&csrf), head, body).into_response()
}

/// Variables the stock blueprints read (blueprints/*.sh), offered as the
/// environment editor's suggestions.
const ENV_SUGGESTIONS: &[&str] = &[
    "EXTRA_ARGS",
    "COMFYUI_REF",
    "COMFYUI_REPO",
    "FORGE_REF",
    "FLUXGYM_REF",
    "KOHYA_REF",
    "SD_SCRIPTS_REF",
    "TORCH_INDEX_URL",
    "TORCH_PACKAGES",
    "PERSISTENT_GEOMETRY",
    "TEST_DELAY_SEC",
    "TEST_EXIT_CODE",
];

/// What a workspace tab shows while no instance is selected.
fn empty_pane(text: &str) -> Markup {
    html! { div.empty-pane { p { (text) } } }
}

/// The per-instance settings the table has no room for: name, description,
/// mode and environment. app.js fills it from GET /api/v1/instances/{name}
/// and saves with one PATCH.
fn settings_dialog() -> Markup {
    html! {
        dialog #settings aria-labelledby="settings-title" {
            form #settings-form method="dialog" {
                h2 #settings-title { "Settings of " span #settings-of {} }
                label.field { span { "Name" }
                    input type="text" name="name" required pattern="[a-z0-9][a-z0-9_\\-]{0,62}"
                        title="lowercase letters, digits, - and _" autocomplete="off";
                    small.muted { "Renaming moves its directory and log; a running instance restarts." }
                }
                label.field { span { "Description" } input type="text" name="description" autocomplete="off"; }
                label.check {
                    input type="checkbox" name="persistent_mode";
                    span { strong { "Persistent mode" } " — the app runs inside a virtual desktop with a browser, reached through noVNC (Open shows the desktop), so a long job keeps its page open when you close yours." }
                }
                fieldset.env {
                    legend { "Environment" }
                    p.muted { "Variables for launch.sh, e.g. " code { "EXTRA_ARGS" } " (extra arguments for the app) or "
                        code { "COMFYUI_REF" } " (the ComfyUI version to check out). Applied at the next start." }
                    div #env-rows {}
                    button.btn #env-add type="button" { "+ Add variable" }
                }
                datalist #env-keys {
                    @for key in ENV_SUGGESTIONS { option value=(key) {} }
                }
                p #settings-error.flash.error hidden role="alert" {}
                div.dialog-buttons {
                    button.btn type="button" #settings-cancel { "Cancel" }
                    span.spacer {}
                    button.btn type="submit" value="save" { "Save" }
                    button.btn.primary type="submit" value="restart" { "Save & restart" }
                }
            }
        }
    }
}

async fn partial_instances(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let csrf = state.auth.session_csrf(&headers).unwrap_or_default();
    match listing(&state, &headers).await {
        Ok(l) => rows(&l, &csrf).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e).into_response(),
    }
}

async fn partial_trash(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let csrf = state.auth.session_csrf(&headers).unwrap_or_default();
    trash_list(&state, &csrf).into_response()
}

// ----- plain-form actions ----------------------------------------------------

fn back(result: Result<String, String>) -> Response {
    let query = match result {
        Ok(notice) if notice.is_empty() => String::new(),
        Ok(notice) => format!("?{}", serde_urlencoded::to_string([("notice", notice)]).unwrap_or_default()),
        Err(error) => format!("?{}", serde_urlencoded::to_string([("error", error)]).unwrap_or_default()),
    };
    Redirect::to(&format!("/{query}")).into_response()
}

/// Form fields as the JSON API's instance input, so both share validation.
fn input_from_form(form: &BTreeMap<String, String>, create: bool) -> Result<InstanceInput, String> {
    let mut body = serde_json::Map::new();
    for key in ["name", "blueprint", "gpus", "port"] {
        if let Some(v) = form.get(key) {
            if !(create && v.is_empty() && key != "gpus") {
                body.insert(key.into(), serde_json::Value::String(v.trim().to_string()));
            }
        }
    }
    body.insert("autostart".into(), serde_json::Value::Bool(form.get("autostart").is_some()));
    if create {
        body.insert("start".into(), serde_json::Value::Bool(form.get("start").is_some()));
    } else {
        if let Some(slot) = form.get("active_slot") {
            let slot = if slot.is_empty() { serde_json::Value::Null } else { serde_json::Value::String(slot.clone()) };
            body.insert("active_slot".into(), slot);
        }
        body.insert("public".into(), serde_json::Value::Bool(form.contains_key("public")));
    }
    serde_json::from_value(serde_json::Value::Object(body)).map_err(|e| e.to_string())
}

async fn create(State(state): State<AppState>, Form(form): Form<BTreeMap<String, String>>) -> Response {
    let result = async {
        let (changes, start) = input_from_form(&form, true)?.changes().map_err(|e| e.message)?;
        let unit = state.instances.create(changes, start).await.map_err(|e| e.to_string())?;
        Ok(format!("Created {}.", unit.name))
    }
    .await;
    back(result)
}

async fn action(
    State(state): State<AppState>,
    Path((name, action)): Path<(String, String)>,
    Form(form): Form<BTreeMap<String, String>>,
) -> Response {
    let result = async {
        let name = super::api::checked_name(&name).map_err(|e| e.message)?.to_string();
        state.instances.instance(&name).await.map_err(|e| e.to_string())?;
        let ops = &state.instances.ops;
        let draining = |o: crate::instances::quiesce::Outcome| match o {
            crate::instances::quiesce::Outcome::Draining(left) => {
                format!("{name} is draining ({left}); stop again to stop it at once.")
            }
            crate::instances::quiesce::Outcome::Now(_) => String::new(),
        };
        match action.as_str() {
            "start" => ops.start(&name).await.map(|_| String::new()).map_err(|e| e.to_string()),
            "stop" => ops.stop(&name).await.map(draining).map_err(|e| e.to_string()),
            "restart" => ops.restart(&name).await.map(draining).map_err(|e| e.to_string()),
            "reinstall" | "update" => state
                .instances
                .request_install(&name, action == "update")
                .await
                .map(|status| format!("{name}: {action} requested ({status})."))
                .map_err(|e| e.to_string()),
            "delete" => {
                state.instances.delete(&name, true).await.map_err(|e| e.to_string())?;
                Ok(format!("Moved {name} to the trash can."))
            }
            "edit" => {
                let (changes, _) = input_from_form(&form, false)?.changes().map_err(|e| e.message)?;
                let outcome =
                    state.instances.update(&name, changes, false, &state.logs).await.map_err(|e| e.to_string())?;
                Ok(if outcome.restart_pending {
                    format!("Saved {name}; restart it to apply.")
                } else {
                    format!("Saved {name}.")
                })
            }
            other => Err(format!("unknown action {other:?}")),
        }
    }
    .await;
    back(result)
}

async fn restore(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    back(state.instances.restore(&id).await.map(|u| format!("Restored {}.", u.name)).map_err(|e| e.to_string()))
}

async fn purge(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    back(state.instances.purge(&id).await.map(|()| "Deleted for good.".to_string()).map_err(|e| e.to_string()))
}

/// Security headers on every response: scripts only from our own files,
/// frames only from the apps origin (the View tab), and no page of another
/// origin (an app's included) may frame the dashboard. `form-action` names
/// the apps origin too: the login form's redirects end there (the
/// handshake), and browsers hold redirects after a form post to it. Both
/// also name the own origins of the running `port` instances (this host on
/// each one's public port, where NGINX serves it): their View, and the
/// handshake that lands there.
pub async fn security_headers(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let mut apps = state.origins.apps(request.headers());
    let (scheme, host) = (super::origin::scheme(request.headers()), super::origin::hostname(request.headers()));
    for route in state.proxy.status().routes.iter().filter(|r| r.action == "redirect") {
        if let Some(port) = route.port {
            apps.push_str(&format!(" {scheme}://{host}:{port}"));
        }
    }
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    // xterm.js injects <style> elements, hence 'unsafe-inline' for styles only.
    let csp = format!(
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; \
         connect-src 'self'; frame-src 'self' {apps}; frame-ancestors 'self'; base-uri 'none'; form-action 'self' {apps}; object-src 'none'"
    );
    if let Ok(v) = header::HeaderValue::from_str(&csp) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    h.insert(header::X_FRAME_OPTIONS, header::HeaderValue::from_static("SAMEORIGIN"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, header::HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, header::HeaderValue::from_static("same-origin"));
    response
}
