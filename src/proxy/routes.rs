//! The route table NGINX serves instances from, and its rendering into the
//! `routes/aikore.conf` snippet (included inside the base config's server
//! block). Pure: no files, no processes, so every rule is unit-tested.
//!
//! Precedence is designed, not hoped for: every generated location is an
//! exact (`=`) or `^~` prefix location, so no regex location (ours or a
//! hand-written snippet's) can take an instance's or the slot's paths.
//!
//! Prefixes are stripped from the RAW request target: `$aikore_app_rest` and
//! `$aikore_comfyui_rest` are maps over `$request_uri` in the base config, so
//! `%2F` reaches the app still encoded (a `proxy_pass` with a URI part or a
//! rewrite would forward the decoded, normalised `$uri` instead).

use std::fmt::Write as _;

pub use crate::urls::ProxyMode;

/// One instance as the proxy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEntry {
    pub name: String,
    pub mode: ProxyMode,
    /// The port the app listens on while its process runs; None when it does not run.
    pub port: Option<u16>,
    /// `port` mode: the public port NGINX listens on for it (known while
    /// stopped too, so the port answers "not running" rather than nothing).
    pub public_port: Option<u16>,
    /// Holds the ComfyUI slot (`/comfyui/` and ComfyUI's absolute paths).
    pub slot: bool,
    /// Persistent mode: its display is viewed at `/vnc/<name>/` (noVNC).
    pub persistent: bool,
    /// Its websockify port while its process runs.
    pub vnc_port: Option<u16>,
    /// `IdleStopSec=`: while it does not run, its requests go to aikore's
    /// waking page (`/_aikore/wake/<name>/`), which starts it if it was idle-stopped.
    pub wake: bool,
}

/// What the renderer produced for one instance, for `GET /api/v1/proxy`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RouteInfo {
    pub name: String,
    pub path: String,
    /// `proxy` (to 127.0.0.1:port), `redirect` (to the direct port), `down`
    /// (503 page) or `wake` (aikore's waking page: `IdleStopSec=`).
    pub action: &'static str,
    pub port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// `routes/aikore.conf`: locations, inside the server block.
    pub text: String,
    /// `upstreams/aikore.conf`: one upstream group per running instance, in
    /// the http block, so NGINX keeps idle connections to each app (a group
    /// is the only way to get upstream keepalive with a variable proxy_pass).
    pub upstreams: String,
    pub routes: Vec<RouteInfo>,
    /// Entries refused (unsafe names, two slot holders): reported, never rendered.
    pub refused: Vec<String>,
}

/// ComfyUI's absolute paths (its server.py routes, the `/api`-prefixed copies
/// of them, the user manager, internal routes, static extensions and
/// templates). Exact paths first, then `^~` prefixes. Checked against
/// comfyanonymous/ComfyUI server.py; see docs/proxy.md.
pub const COMFYUI_EXACT: &[&str] = &[
    "/ws",
    "/prompt",
    "/queue",
    "/history",
    "/interrupt",
    "/free",
    "/embeddings",
    "/extensions",
    "/system_stats",
    "/object_info",
    "/view",
    "/features",
    "/models",
    "/userdata",
    "/users",
    "/settings",
    "/workflow_templates",
];
pub const COMFYUI_PREFIX: &[&str] = &[
    "/api/",
    "/internal/",
    "/history/",
    "/object_info/",
    "/models/",
    "/view_metadata/",
    "/upload/",
    "/userdata/",
    "/v2/userdata",
    "/settings/",
    "/extensions/",
    "/templates/",
    "/i18n",
    "/docs/",
    "/experiment/",
    // The front end swaps the tab icon for a progress one while a prompt runs.
    "/assets/images/favicon_progress_16x16/",
];

/// A name is rendered only if it matches `[a-z0-9][a-z0-9_-]{0,62}` — checked
/// again here, whatever validated it before: it goes into config text.
pub fn is_safe_name(name: &str) -> bool {
    crate::units::is_valid_unit_name(name)
}

/// `client_max_body_size` values NGINX accepts: digits and an optional k/m/g.
pub fn is_valid_size(text: &str) -> bool {
    let digits = text.trim_end_matches(['k', 'K', 'm', 'M', 'g', 'G']);
    !digits.is_empty()
        && digits.len() + 1 >= text.len()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && digits.len() <= 12
}

/// Rendering settings.
#[derive(Debug, Clone)]
pub struct RenderOptions {
    /// `client_max_body_size` for instance routes (AIKORE_MAX_BODY).
    pub max_body: String,
    /// The address NGINX listens on (AIKORE_BIND): `port` instances' servers too.
    pub bind: std::net::IpAddr,
    /// aikore's API, which answers the login gate of `port` instances' servers.
    pub api: std::net::SocketAddr,
    /// NGINX's own ports (the dashboard's, the apps origin's): never an instance's server.
    pub reserved_ports: Vec<u16>,
}

impl Default for RenderOptions {
    fn default() -> Self {
        // Model uploads (checkpoints are 2-25 GB) go through instance UIs.
        RenderOptions {
            max_body: DEFAULT_MAX_BODY.into(),
            bind: super::DEFAULT_BIND,
            api: std::net::SocketAddr::from(([127, 0, 0, 1], 9001)),
            reserved_ports: vec![super::DEFAULT_PORT, super::DEFAULT_APPS_PORT],
        }
    }
}

pub const DEFAULT_MAX_BODY: &str = "50g";

/// Upgraded (WebSocket) and long-polling streams are idle for long stretches
/// (a ComfyUI tab open overnight): one day before NGINX cuts them.
const STREAM_TIMEOUT: &str = "24h";

/// How a proxied location meets the login gate (nginx/nginx.conf).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gate {
    /// The fast path: NGINX checked the signed cookie itself; the app gets
    /// the Cookie header without aikore's cookies (a map in the base config).
    Fast,
    /// The fast path's fallback: auth_request to aikore, whose answer may
    /// carry a fresh fast-path cookie for this scope.
    Slow,
    /// auth_request only (noVNC, `port` instances' own servers).
    Checked,
}

fn proxy_settings(out: &mut String, port: u16, prefix: &str, options: &RenderOptions, gate: Gate) {
    let _ = write!(
        out,
        "        proxy_http_version 1.1;
        proxy_set_header Host $http_host;
        proxy_set_header X-Forwarded-Host $http_host;
        proxy_set_header X-Forwarded-Proto $aikore_proto;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Real-IP $remote_addr;
"
    );
    if gate == Gate::Fast {
        // The cookies as a map over the request's strips them (nginx.conf).
        // No Authorization on this path: the check lets only an absent or
        // empty one take it (NGINX refuses a second), and none is passed on.
        out.push_str(
            "        proxy_set_header Cookie $aikore_app_cookies;\n        proxy_set_header Authorization \"\";\n",
        );
    } else {
        // The same login as the dashboard: NGINX asks aikore (nginx/nginx.conf).
        out.push_str("        auth_request /_aikore/auth;\n        error_page 401 = @aikore_login;\n");
        // aikore's cookies and bearer never reach an app: the auth check answers
        // with the Cookie and Authorization headers stripped of them.
        out.push_str(
            "        auth_request_set $aikore_cookie $upstream_http_x_aikore_cookie;\n        auth_request_set $aikore_authorization $upstream_http_x_aikore_authorization;\n        proxy_set_header Cookie $aikore_cookie;\n        proxy_set_header Authorization $aikore_authorization;\n",
        );
    }
    if gate == Gate::Slow {
        // The browser's next requests to this scope take the fast path.
        out.push_str(
            "        auth_request_set $aikore_gate_cookie $upstream_http_x_aikore_gate;\n        add_header Set-Cookie $aikore_gate_cookie always;\n",
        );
    }
    if !prefix.is_empty() {
        let _ = writeln!(out, "        proxy_set_header X-Forwarded-Prefix {prefix};");
        // An app that redirects to its own absolute address stays under the prefix.
        let _ = writeln!(out, "        proxy_redirect http://127.0.0.1:{port}/ {prefix}/;");
    }
    let _ = write!(
        out,
        "        proxy_set_header Upgrade $http_upgrade;
        proxy_set_header Connection $connection_upgrade;
        proxy_buffering off;
        proxy_request_buffering off;
        proxy_read_timeout {STREAM_TIMEOUT};
        proxy_send_timeout {STREAM_TIMEOUT};
        client_max_body_size {};
        error_page 502 504 =503 @aikore_unreachable;
",
        options.max_body
    );
}

/// What a gated route proxies to: its `proxy_pass` line, the app's port
/// and path prefix (for redirects), and its idle-stop waking page if any.
struct Upstream<'a> {
    pass: String,
    port: u16,
    prefix: &'a str,
    wake: Option<&'a str>,
}

impl Upstream<'_> {
    fn settings(&self, out: &mut String, options: &RenderOptions, gate: Gate) {
        let start = out.len();
        proxy_settings(out, self.port, self.prefix, options, gate);
        if let Some(name) = self.wake {
            // Just idle-stopped, before this route is swapped, or still
            // starting: the waking page, not "not answering".
            let settings = out.split_off(start).replace(
                "error_page 502 504 =503 @aikore_unreachable;",
                &format!("error_page 502 504 = @aikore_wake_{name};"),
            );
            out.push_str(&settings);
        }
    }
}

/// The body of a location behind the gate's fast path: a request with a
/// valid cookie for `scope` goes straight to the app; any other goes to the
/// named location `slow` (see [`slow_location`]), the same route behind
/// auth_request. (An `if` holding only `return` is safe in NGINX; 418 is
/// never an app's answer here: upstream errors are not intercepted.)
fn fast_body(out: &mut String, scope: &str, slow: &str, upstream: &Upstream, options: &RenderOptions) {
    let _ = write!(
        out,
        "        set $aikore_gate_scope {scope};
        recursive_error_pages on;
        error_page 418 = {slow};
        if ($aikore_gate_pass != 1) {{ return 418; }}
"
    );
    let _ = writeln!(out, "        {}", upstream.pass);
    upstream.settings(out, options, Gate::Fast);
}

/// The fast path's fallback for `scope` (a named location: no URI part in
/// its proxy_pass, which is why every route passes a variable or nothing).
fn slow_location(out: &mut String, scope: &str, slow: &str, upstream: &Upstream, options: &RenderOptions) {
    let _ = writeln!(out, "location {slow} {{\n        set $aikore_gate_scope {scope};\n        {}", upstream.pass);
    upstream.settings(out, options, Gate::Slow);
    out.push_str("}\n\n");
}

/// NGINX matched the location on the decoded `$uri`: `/app/comf%79/` and
/// `/app/a%2Fb/x` (decoded `/app/a/b/x`) land in `comfy`'s and `a`'s
/// locations. The name as written in the raw target must be this one exactly;
/// anything else (an escape, a dot segment reaching another name) is refused.
fn raw_name_check(out: &mut String, name: &str) {
    let _ = writeln!(out, "        if ($aikore_raw_name != \"{name}\") {{ return 400; }}");
}

fn html_page(title: &str, text: &str) -> String {
    // Only fixed text and validated names reach here: nothing to escape, and no
    // double quote or backslash that would end NGINX's string. The page
    // reloads itself: these are passing states (starting, stopped, no slot).
    format!("<!doctype html><html><head><meta charset=utf-8><meta http-equiv=refresh content=5><title>{title}</title></head><body><h1>{title}</h1><p>{text}</p><p><a href=/>AiKore dashboard</a></p></body></html>")
}

fn static_page(out: &mut String, code: u16, title: &str, text: &str) {
    let _ = write!(
        out,
        "        default_type text/html;
        add_header Cache-Control no-store always;
        add_header Retry-After 5 always;
        return {code} \"{}\";
",
        html_page(title, text)
    );
}

/// A stopped instance with `IdleStopSec=`: behind the same login, its
/// requests go to aikore's waking page, which starts it when it was stopped
/// for being idle (docs/operations.md). Cookies pass as sent: aikore checks
/// the apps origin's own.
fn wake_settings(out: &mut String, name: &str, options: &RenderOptions) {
    let _ = write!(
        out,
        "        auth_request /_aikore/auth;
        error_page 401 = @aikore_login;
        proxy_pass http://{}/_aikore/wake/{name}/;
        proxy_http_version 1.1;
        proxy_pass_request_body off;
        proxy_set_header Content-Length \"\";
        client_max_body_size 0;
        proxy_set_header Host $http_host;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto $aikore_proto;
",
        options.api
    );
}

/// The login gate of a `port` instance's server: the apps origin's, from
/// nginx/nginx.conf, for a server of its own. The public flag is asked about
/// `/app/<name>/...` (the instance's path on the apps origin), and a refused
/// browser is sent through the dashboard's login and back to this port
/// (`X-Aikore-Port`; the handshake lands here and sets the apps cookie,
/// which the browser sends to every port of the host).
fn port_gate(out: &mut String, name: &str, public: u16, api: std::net::SocketAddr) {
    let _ = write!(
        out,
        "    location = /_aikore/auth {{
        internal;
        proxy_pass http://{api}/api/v1/auth/check;
        proxy_pass_request_body off;
        proxy_set_header Content-Length \"\";
        client_max_body_size 0;
        proxy_set_header Host $http_host;
        proxy_set_header X-Original-URI /app/{name}$request_uri;
        proxy_set_header X-Aikore-Upgrade $http_upgrade;
        proxy_set_header X-Aikore-Request $request_id;
        proxy_set_header X-Aikore-Scope \"\";
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto $aikore_proto;
        # The apps origin's cache (nginx/nginx.conf), this server its own
        # scope: every request here reaches the one app.
        proxy_cache aikore_auth;
        proxy_cache_key \"port/{name}\\n$http_authorization\\n$http_cookie\";
        proxy_cache_valid 204 2s;
        proxy_cache_bypass $http_upgrade;
        proxy_no_cache $http_upgrade;
        proxy_ignore_headers X-Accel-Expires Expires Cache-Control Vary;
    }}
    location @aikore_login {{
        rewrite ^ /_aikore/denied last;
    }}
    location = /_aikore/denied {{
        internal;
        proxy_pass http://{api}/_aikore/denied;
        proxy_pass_request_body off;
        proxy_set_header Content-Length \"\";
        client_max_body_size 0;
        proxy_set_header Host $http_host;
        proxy_set_header X-Original-URI $request_uri;
        proxy_set_header X-Aikore-Port {public};
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto $aikore_proto;
    }}
    location = /_aikore/handshake {{
        proxy_pass http://{api};
        proxy_set_header Host $http_host;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto $aikore_proto;
    }}
"
    );
}

/// A `port` instance's own server on its public port (http context): the
/// app (on a loopback port) behind the apps origin's gate while it runs,
/// a "not running" page otherwise.
fn port_server(out: &mut String, name: &str, public: u16, app: Option<u16>, options: &RenderOptions) {
    let listen = std::net::SocketAddr::new(options.bind, public);
    let _ = writeln!(out, "\n# Instance {name} (`port`): NGINX on its public port, the app behind it.");
    let _ = writeln!(out, "server {{\n    listen {listen};\n    absolute_redirect off;");
    // An ended WebSocket's id, for the idle-stop rule (nginx/nginx.conf has the format).
    out.push_str("    access_log websockets.log aikore_ws if=$http_upgrade;\n");
    out.push_str("    location @aikore_unreachable {\n");
    static_page(
        out,
        503,
        "Instance not answering",
        "The instance is not answering on its port yet: it may still be starting. This page retries in a few seconds.",
    );
    out.push_str("    }\n");
    match app {
        Some(app) => {
            port_gate(out, name, public, options.api);
            // No URI part: the raw request target goes to the app as sent.
            let _ = writeln!(out, "    location / {{\n        proxy_pass http://{};", upstream_name(name));
            proxy_settings(out, app, "", options, Gate::Checked);
            out.push_str("    }\n");
        }
        None => {
            out.push_str("    location / {\n");
            static_page(
                out,
                503,
                "Instance not running",
                &format!("Instance {name} is not running. Start it from the dashboard."),
            );
            out.push_str("    }\n");
        }
    }
    out.push_str("}\n");
}

/// Renders the snippet. Entries with unsafe names are skipped and reported.
pub fn render(entries: &[RouteEntry], options: &RenderOptions) -> Rendered {
    let mut out = String::new();
    let mut routes = Vec::new();
    let mut refused = Vec::new();
    let mut upstreams =
        String::from("# Generated by aikore with routes/aikore.conf; rewritten on every change. Do not edit.\n\n");
    out.push_str("# Generated by aikore from the instances; rewritten on every change. Do not edit:\n# add hand-written locations in another routes/*.conf file.\n\n");

    // NGINX errors (the app not listening yet, or gone) as a clear page.
    out.push_str("location @aikore_unreachable {\n");
    static_page(
        &mut out,
        503,
        "Instance not answering",
        "The instance is not answering on its port yet: it may still be starting. This page retries in a few seconds.",
    );
    out.push_str("}\n\n");

    let mut entries: Vec<&RouteEntry> = entries.iter().collect();
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    let mut slot_holder: Option<&RouteEntry> = None;
    let mut vnc_entries: Vec<&RouteEntry> = Vec::new();
    // `port` instances' servers go with the upstreams (http context).
    let mut servers = String::new();
    let mut port_servers: Vec<u16> = Vec::new();
    for entry in entries {
        if !is_safe_name(&entry.name) {
            refused.push(format!("instance name {:?} is not safe to render; its route is skipped", entry.name));
            continue;
        }
        if entry.slot {
            match slot_holder {
                // Only one holder is possible through the API; a hand edit can give two.
                Some(first) => refused.push(format!(
                    "instances {} and {} both hold the comfyui slot; {} gets it",
                    first.name, entry.name, first.name
                )),
                None => slot_holder = Some(entry),
            }
        }
        if entry.persistent {
            vnc_entries.push(entry);
        }
        if let (ProxyMode::Port, Some(public)) = (entry.mode, entry.public_port) {
            if options.reserved_ports.contains(&public) || port_servers.contains(&public) {
                refused.push(format!(
                    "instance {} asks for port {public}, which NGINX already serves; it gets no server there",
                    entry.name
                ));
            } else {
                port_server(&mut servers, &entry.name, public, entry.port, options);
                port_servers.push(public);
            }
        }
        let name = &entry.name;
        let prefix = crate::urls::app_base(name);
        match (entry.port, entry.mode) {
            (Some(port), ProxyMode::Subpath) => {
                let _ = writeln!(out, "location = {prefix} {{\n        return 301 {prefix}/$is_args$args;\n}}");
                let _ = writeln!(out, "location ^~ {prefix}/ {{");
                // The raw target did not start with the decoded prefix (an encoded name): refuse, do not guess.
                out.push_str("        if ($aikore_app_rest = \"\") { return 400; }\n");
                raw_name_check(&mut out, name);
                upstream(&mut upstreams, name, port);
                let route = Upstream {
                    pass: format!("proxy_pass http://{}$aikore_app_rest;", upstream_name(name)),
                    port,
                    prefix: &prefix,
                    wake: entry.wake.then_some(name.as_str()),
                };
                let (scope, slow) = (format!("app/{name}"), format!("@aikore_gate_app_{name}"));
                fast_body(&mut out, &scope, &slow, &route, options);
                out.push_str("}\n");
                slow_location(&mut out, &scope, &slow, &route, options);
                if entry.wake {
                    let _ = write!(
                        out,
                        "location @aikore_wake_{name} {{\n        rewrite ^ /_aikore/wake/{name}/ break;\n        proxy_pass http://{};\n        proxy_pass_request_body off;\n        proxy_set_header Content-Length \"\";\n        proxy_set_header Host $http_host;\n        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n        proxy_set_header X-Forwarded-Proto $aikore_proto;\n}}\n\n",
                        options.api
                    );
                }
                routes.push(RouteInfo {
                    name: name.clone(),
                    path: format!("{prefix}/"),
                    action: "proxy",
                    port: Some(port),
                });
            }
            (Some(app), ProxyMode::Port) if entry.public_port.is_some() => {
                let public = entry.public_port.expect("matched");
                // The client's own host name: only NGINX knows it, the API does not.
                let _ = writeln!(
                    out,
                    "location = {prefix} {{\n        return 302 $scheme://$host:{public}/$is_args$args;\n}}"
                );
                let _ = writeln!(out, "location ^~ {prefix}/ {{");
                raw_name_check(&mut out, name);
                let _ = writeln!(out, "        return 302 $scheme://$host:{public}$aikore_app_rest;\n}}\n");
                upstream(&mut upstreams, name, app);
                routes.push(RouteInfo {
                    name: name.clone(),
                    path: format!("{prefix}/"),
                    action: "redirect",
                    port: Some(public),
                });
            }
            (None, ProxyMode::Subpath) if entry.wake => {
                let _ = writeln!(out, "location = {prefix} {{\n        return 301 {prefix}/$is_args$args;\n}}");
                let _ = writeln!(out, "location ^~ {prefix}/ {{");
                raw_name_check(&mut out, name);
                wake_settings(&mut out, name, options);
                out.push_str("}\n\n");
                routes.push(RouteInfo { name: name.clone(), path: format!("{prefix}/"), action: "wake", port: None });
            }
            _ => {
                // A running `port` instance without a server of its own (its
                // port refused) keeps its group: the ComfyUI slot may name it.
                if let Some(app) = entry.port {
                    upstream(&mut upstreams, name, app);
                }
                let _ = writeln!(out, "location = {prefix} {{\n        return 301 {prefix}/$is_args$args;\n}}");
                let _ = writeln!(out, "location ^~ {prefix}/ {{");
                static_page(
                    &mut out,
                    503,
                    "Instance not running",
                    &format!("Instance {name} is not running. Start it from the dashboard."),
                );
                out.push_str("}\n\n");
                routes.push(RouteInfo { name: name.clone(), path: format!("{prefix}/"), action: "down", port: None });
            }
        }
    }

    // Persistent instances' displays: noVNC (websockify's files and its
    // WebSocket) behind the same login. websockify is not path-sensitive, so
    // the prefix is simply replaced by `/` (the decoded URI is fine there).
    for entry in &vnc_entries {
        let name = &entry.name;
        let prefix = crate::urls::vnc_base(name);
        let _ = writeln!(out, "location = {prefix} {{\n        return 301 {prefix}/$is_args$args;\n}}");
        let _ = writeln!(out, "location ^~ {prefix}/ {{");
        raw_name_check(&mut out, name);
        match entry.vnc_port {
            Some(port) => {
                let _ = writeln!(out, "        proxy_pass http://127.0.0.1:{port}/;");
                proxy_settings(&mut out, port, "", options, Gate::Checked);
                routes.push(RouteInfo {
                    name: name.clone(),
                    path: format!("{prefix}/"),
                    action: "proxy",
                    port: Some(port),
                });
            }
            None => {
                static_page(
                    &mut out,
                    503,
                    "Instance not running",
                    &format!("Instance {name} is not running. Start it from the dashboard."),
                );
                routes.push(RouteInfo { name: name.clone(), path: format!("{prefix}/"), action: "down", port: None });
            }
        }
        out.push_str("}\n\n");
    }
    out.push_str("location ^~ /vnc/ {\n");
    static_page(&mut out, 404, "No such instance", "No persistent instance is served at this address.");
    out.push_str("}\n\n");

    // Any other /app/ path: no such instance (a fixed page, never the dashboard).
    out.push_str("location ^~ /app/ {\n");
    static_page(&mut out, 404, "No such instance", "No instance is served at this address.");
    out.push_str("}\n\n");

    out.push_str("# The ComfyUI slot: /comfyui/ and ComfyUI's absolute paths.\n");
    let holder_port = slot_holder.and_then(|h| h.port);
    // Every running instance has its group (a `port` one's is its loopback app port).
    let holder_group = slot_holder.filter(|h| h.port.is_some()).map(|h| upstream_name(&h.name));
    // The slot's two fast-path fallbacks: /comfyui/ (its prefix stripped) and
    // the absolute paths (passed as sent), one scope for all.
    let slot_slow = |rest: &str| if rest.is_empty() { "@aikore_gate_slot" } else { "@aikore_gate_comfyui" };
    let slot_upstream = |port: u16, rest: &str, prefix: &'static str| Upstream {
        pass: format!("proxy_pass http://{}{rest};", holder_group.as_deref().expect("a holder with a port")),
        port,
        prefix,
        wake: None,
    };
    let slot_location = |out: &mut String, modifier: &str, path: &str, rest: &str, prefix: &'static str| {
        let _ = writeln!(out, "location {modifier} {path} {{");
        match holder_port {
            Some(port) => {
                if !rest.is_empty() {
                    let _ = writeln!(out, "        if ({rest} = \"\") {{ return 400; }}");
                }
                fast_body(out, "slot", slot_slow(rest), &slot_upstream(port, rest, prefix), options);
            }
            None if slot_holder.is_some_and(|h| h.wake) => {
                wake_settings(out, &slot_holder.expect("matched").name, options);
            }
            None => {
                let text = match slot_holder {
                    Some(h) => format!(
                        "Instance {} holds the ComfyUI slot but is not running. Start it from the dashboard.",
                        h.name
                    ),
                    None => "No instance holds the ComfyUI slot. Give it to a ComfyUI instance from the dashboard."
                        .to_string(),
                };
                static_page(out, 503, "ComfyUI slot empty", &text);
            }
        }
        out.push_str("}\n");
    };
    let _ = writeln!(out, "location = /comfyui {{\n        return 301 /comfyui/$is_args$args;\n}}");
    slot_location(&mut out, "^~", "/comfyui/", "$aikore_comfyui_rest", "/comfyui");
    // Absolute paths: no URI part in proxy_pass, so the raw target passes as sent.
    for path in COMFYUI_EXACT {
        slot_location(&mut out, "=", path, "", "");
    }
    for path in COMFYUI_PREFIX {
        slot_location(&mut out, "^~", path, "", "");
    }
    if let Some(port) = holder_port {
        out.push('\n');
        for (rest, prefix) in [("$aikore_comfyui_rest", "/comfyui"), ("", "")] {
            slow_location(&mut out, "slot", slot_slow(rest), &slot_upstream(port, rest, prefix), options);
        }
    }
    if let Some(h) = slot_holder {
        routes.push(RouteInfo {
            name: h.name.clone(),
            path: crate::urls::COMFYUI_PATH.into(),
            action: match (holder_port, h.wake) {
                (Some(_), _) => "proxy",
                (None, true) => "wake",
                (None, false) => "down",
            },
            port: holder_port,
        });
    }
    upstreams.push_str(&servers);
    Rendered { text: out, upstreams, routes, refused }
}

fn upstream_name(name: &str) -> String {
    format!("aikore_app_{name}")
}

fn upstream(out: &mut String, name: &str, port: u16) {
    // max_fails=0: a refused connect (the app still starting) must not mark
    // the only server down for fail_timeout after the app is up.
    // keepalive 32: idle connections kept per worker; a UI page load fans out
    // to a few dozen asset requests, which then skip the TCP handshake.
    let _ = writeln!(
        out,
        "upstream {} {{\n    server 127.0.0.1:{port} max_fails=0;\n    keepalive 32;\n    keepalive_timeout 60s;\n}}",
        upstream_name(name)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The body of the location that starts with `head` (up to its closing brace).
    fn block<'a>(text: &'a str, head: &str) -> &'a str {
        let body = text.split(head).nth(1).unwrap_or_else(|| panic!("no {head}: {text}"));
        &body[..body.find("\n}\n").unwrap_or(body.len())]
    }

    /// Every line must be in the rendered text (shown whole when one is not).
    fn assert_has_lines(text: &str, lines: &[&str]) {
        for line in lines {
            assert!(text.contains(line), "{line}\n{text}");
        }
    }

    fn entry(name: &str, port: Option<u16>, slot: bool) -> RouteEntry {
        RouteEntry {
            name: name.into(),
            mode: ProxyMode::Subpath,
            port,
            public_port: None,
            slot,
            persistent: false,
            vnc_port: None,
            wake: false,
        }
    }

    #[test]
    fn a_running_instance_is_proxied_from_the_raw_target() {
        let r = render(&[entry("a", Some(19001), false)], &RenderOptions::default());
        assert!(r.text.contains("location ^~ /app/a/ {"), "{}", r.text);
        assert!(r.text.contains("proxy_pass http://aikore_app_a$aikore_app_rest;"));
        assert!(
            r.upstreams.contains("upstream aikore_app_a {\n    server 127.0.0.1:19001 max_fails=0;"),
            "{}",
            r.upstreams
        );
        assert!(r.text.contains("return 301 /app/a/$is_args$args;"));
        assert!(r.text.contains("X-Forwarded-Prefix /app/a;"));
        assert!(r.text.contains("client_max_body_size 50g;"));
        assert_eq!(
            r.routes,
            vec![RouteInfo { name: "a".into(), path: "/app/a/".into(), action: "proxy", port: Some(19001) }]
        );
    }

    #[test]
    fn app_and_slot_routes_take_the_fast_path_and_fall_back_to_auth_request() {
        let r = render(&[entry("a", Some(19001), true)], &RenderOptions::default());
        let fast = block(&r.text, "location ^~ /app/a/ {");
        assert_has_lines(
            fast,
            &[
                "set $aikore_gate_scope app/a;",
                "error_page 418 = @aikore_gate_app_a;",
                "recursive_error_pages on;",
                "if ($aikore_gate_pass != 1) { return 418; }",
                "proxy_pass http://aikore_app_a$aikore_app_rest;",
                "proxy_set_header Cookie $aikore_app_cookies;",
                "proxy_set_header Authorization \"\";",
            ],
        );
        assert!(!fast.contains("auth_request"), "{fast}");
        // The checks that refuse an encoded name come first, the gate's after.
        assert!(fast.find("return 400").unwrap() < fast.find("return 418").unwrap(), "{fast}");
        let slow = block(&r.text, "location @aikore_gate_app_a {");
        assert_has_lines(
            slow,
            &[
                "set $aikore_gate_scope app/a;",
                "proxy_pass http://aikore_app_a$aikore_app_rest;",
                "auth_request /_aikore/auth;",
                "proxy_set_header Cookie $aikore_cookie;",
                "add_header Set-Cookie $aikore_gate_cookie always;",
                "X-Forwarded-Prefix /app/a;",
            ],
        );
        // The slot: one scope, two fallbacks (/comfyui/ strips its prefix).
        let comfy = block(&r.text, "location ^~ /comfyui/ {");
        assert!(
            comfy.contains("error_page 418 = @aikore_gate_comfyui;") && comfy.contains("set $aikore_gate_scope slot;")
        );
        let prompt = block(&r.text, "location = /prompt {");
        assert!(prompt.contains("error_page 418 = @aikore_gate_slot;"), "{prompt}");
        assert!(block(&r.text, "location @aikore_gate_comfyui {")
            .contains("proxy_pass http://aikore_app_a$aikore_comfyui_rest;"));
        assert!(block(&r.text, "location @aikore_gate_slot {").contains("proxy_pass http://aikore_app_a;\n"));
        assert_eq!(r.text.matches("location @aikore_gate_slot {").count(), 1);
        // An idle-stop instance's fallback wakes it too.
        let w = render(&[RouteEntry { wake: true, ..entry("w", Some(19002), false) }], &RenderOptions::default());
        for head in ["location ^~ /app/w/ {", "location @aikore_gate_app_w {"] {
            assert!(block(&w.text, head).contains("error_page 502 504 = @aikore_wake_w;"), "{}", w.text);
        }
    }

    #[test]
    fn an_idle_stop_instance_wakes_through_aikore_when_down_or_unreachable() {
        let down = render(&[RouteEntry { wake: true, ..entry("w", None, false) }], &RenderOptions::default());
        assert!(down.text.contains("proxy_pass http://127.0.0.1:9001/_aikore/wake/w/;"), "{}", down.text);
        assert!(down.text.contains("auth_request /_aikore/auth;"), "behind the login: {}", down.text);
        assert_eq!(down.routes[0].action, "wake");
        let up = render(&[RouteEntry { wake: true, ..entry("w", Some(19001), false) }], &RenderOptions::default());
        assert!(up.text.contains("error_page 502 504 = @aikore_wake_w;"), "{}", up.text);
        assert!(up.text.contains("location @aikore_wake_w {"), "{}", up.text);
        let plain = render(&[entry("p", Some(19002), false)], &RenderOptions::default());
        assert!(!plain.text.contains("_aikore/wake"), "{}", plain.text);
        // The slot's paths wake their stopped holder too.
        let slot = render(&[RouteEntry { wake: true, ..entry("s", None, true) }], &RenderOptions::default());
        let comfy = slot.text.split("location ^~ /comfyui/ {").nth(1).unwrap_or("");
        assert!(comfy.trim_start().starts_with("auth_request /_aikore/auth;"), "{}", slot.text);
        assert!(comfy.contains("proxy_pass http://127.0.0.1:9001/_aikore/wake/s/;"), "{}", slot.text);
    }

    #[test]
    fn a_stopped_instance_gets_a_503_page_not_a_stale_route() {
        let r = render(&[entry("a", None, false)], &RenderOptions::default());
        assert!(!r.text.contains("proxy_pass"), "{}", r.text);
        assert!(!r.upstreams.contains("upstream"), "{}", r.upstreams);
        assert!(r.text.contains("return 503 \"<!doctype html>"));
        assert_eq!(r.routes[0].action, "down");
    }

    #[test]
    fn unsafe_names_are_refused_and_never_rendered() {
        let evil = "x; } location / { return 200 pwned; #";
        let r = render(
            &[entry(evil, Some(1), false), entry("UPPER", Some(2), false), entry("ok", Some(3), false)],
            &RenderOptions::default(),
        );
        assert!(!r.text.contains("pwned") && !r.text.contains("UPPER"));
        assert_eq!(r.refused.len(), 2);
        assert_eq!(r.routes.len(), 1);
    }

    #[test]
    fn the_slot_holder_gets_comfyui_and_its_absolute_paths() {
        let r = render(&[entry("c", Some(19005), true)], &RenderOptions::default());
        assert!(r.text.contains("        proxy_pass http://aikore_app_c$aikore_comfyui_rest;"), "{}", r.text);
        assert!(block(&r.text, "location = /prompt {").contains("\n        proxy_pass http://aikore_app_c;\n"));
        assert!(block(&r.text, "location ^~ /api/ {").contains("\n        proxy_pass http://aikore_app_c;\n"));
        assert!(r.text.contains("location = /ws {"));
        // Still at /app/c/ too.
        assert!(r.text.contains("location ^~ /app/c/ {"));
        assert_eq!(r.routes.iter().filter(|x| x.name == "c").count(), 2);
        // No regex location anywhere: precedence cannot be stolen by order.
        assert!(!r.text.lines().any(|l| l.trim_start().starts_with("location ~")));
    }

    #[test]
    fn without_a_slot_holder_comfyui_paths_answer_503() {
        let r = render(&[entry("a", Some(19001), false)], &RenderOptions::default());
        let prompt = r.text.split("location = /prompt {").nth(1).unwrap();
        let block = &prompt[..prompt.find("}\n").unwrap()];
        assert!(block.contains("return 503") && block.contains("No instance holds the ComfyUI slot"), "{block}");
    }

    #[test]
    fn two_slot_holders_first_by_name_wins_and_is_reported() {
        let r = render(&[entry("b", Some(2), true), entry("a", Some(1), true)], &RenderOptions::default());
        assert!(block(&r.text, "location = /prompt {").contains("\n        proxy_pass http://aikore_app_a;\n"));
        assert_eq!(r.refused.len(), 1);
    }

    fn port_entry(name: &str, app: Option<u16>, public: u16) -> RouteEntry {
        RouteEntry { mode: ProxyMode::Port, public_port: Some(public), ..entry(name, app, false) }
    }

    #[test]
    fn port_mode_redirects_to_the_public_port_where_nginx_fronts_the_app() {
        let r = render(&[port_entry("p", Some(41009), 19009)], &RenderOptions::default());
        assert!(r.text.contains("return 302 $scheme://$host:19009$aikore_app_rest;"), "{}", r.text);
        assert_eq!(r.routes[0].action, "redirect");
        assert_eq!(r.routes[0].port, Some(19009));
        // NGINX's own server on the public port (http context, with the
        // upstreams), the app on its loopback port behind the same gate.
        assert!(r.upstreams.contains("upstream aikore_app_p {\n    server 127.0.0.1:41009 max_fails=0;"));
        let server =
            r.upstreams.split("server {\n    listen 127.0.0.1:19009;").nth(1).expect("a server on the public port");
        assert_has_lines(
            server,
            &[
                "proxy_pass http://127.0.0.1:9001/api/v1/auth/check;",
                "proxy_set_header X-Original-URI /app/p$request_uri;",
                "proxy_set_header X-Aikore-Port 19009;",
                "proxy_cache_key \"port/p\\n$http_authorization\\n$http_cookie\";",
                "proxy_cache_bypass $http_upgrade;",
                "location = /_aikore/handshake {",
                "location / {\n        proxy_pass http://aikore_app_p;",
                "auth_request /_aikore/auth;",
                "error_page 401 = @aikore_login;",
                "proxy_set_header Cookie $aikore_cookie;",
                "proxy_set_header Authorization $aikore_authorization;",
                "proxy_set_header Upgrade $http_upgrade;",
                "location @aikore_unreachable {",
            ],
        );
        assert!(!r.text.contains("listen"), "no server inside the apps origin's: {}", r.text);
    }

    #[test]
    fn a_stopped_port_instance_keeps_its_port_with_a_not_running_page() {
        let r = render(&[port_entry("p", None, 19009)], &RenderOptions::default());
        let server = r.upstreams.split("listen 127.0.0.1:19009;").nth(1).expect("a server on the public port");
        assert!(server.contains("return 503") && server.contains("Instance p is not running"), "{server}");
        assert!(!server.contains("proxy_pass"), "{server}");
        assert!(!r.upstreams.contains("upstream aikore_app_p"), "{}", r.upstreams);
        assert_eq!(r.routes[0].action, "down");
    }

    #[test]
    fn nginxs_own_ports_and_a_taken_port_get_no_second_server() {
        let r = render(
            &[port_entry("a", Some(41001), 9100), port_entry("b", Some(41002), 19002), port_entry("c", None, 19002)],
            &RenderOptions::default(),
        );
        assert!(!r.upstreams.contains(":9100;"), "{}", r.upstreams);
        assert_eq!(r.upstreams.matches("listen 127.0.0.1:19002;").count(), 1, "{}", r.upstreams);
        assert_eq!(r.refused.len(), 2, "{:?}", r.refused);
    }

    #[test]
    fn a_persistent_instance_gets_its_display_behind_the_login() {
        let running = RouteEntry { persistent: true, vnc_port: Some(19999), ..entry("v", Some(19001), false) };
        let r = render(&[running, entry("plain", Some(19002), false)], &RenderOptions::default());
        let block = r.text.split("location ^~ /vnc/v/ {").nth(1).expect("a /vnc/v/ location");
        let block = &block[..block.find("\n}\n").unwrap()];
        assert!(block.contains("proxy_pass http://127.0.0.1:19999/;"), "{block}");
        assert!(block.contains("auth_request /_aikore/auth;"), "{block}");
        assert!(block.contains("proxy_set_header Cookie $aikore_cookie;"), "{block}");
        assert!(block.contains("proxy_set_header Upgrade $http_upgrade;"), "{block}");
        assert!(r.text.contains("return 301 /vnc/v/$is_args$args;"));
        assert!(!r.text.contains("/vnc/plain/"), "only persistent instances: {}", r.text);
        assert!(r.text.contains("location ^~ /vnc/ {"));
        assert!(r.routes.contains(&RouteInfo {
            name: "v".into(),
            path: "/vnc/v/".into(),
            action: "proxy",
            port: Some(19999)
        }));
        // The app itself keeps its /app/ route.
        assert!(r.text.contains("location ^~ /app/v/ {"));

        let stopped = RouteEntry { persistent: true, vnc_port: None, ..entry("v", None, false) };
        let r = render(&[stopped], &RenderOptions::default());
        let block = r.text.split("location ^~ /vnc/v/ {").nth(1).unwrap();
        assert!(block[..block.find("\n}\n").unwrap()].contains("return 503"), "{}", r.text);
    }

    #[test]
    fn instance_locations_refuse_an_encoded_name() {
        let port = port_entry("p", Some(41009), 19009);
        let vnc = RouteEntry { persistent: true, vnc_port: Some(19999), ..entry("v", Some(19001), false) };
        let r = render(&[entry("comfy", Some(19001), false), port, vnc], &RenderOptions::default());
        for (location, name) in [("/app/comfy/", "comfy"), ("/app/p/", "p"), ("/vnc/v/", "v")] {
            let block = r.text.split(&format!("location ^~ {location} {{")).nth(1).expect(location);
            let block = &block[..block.find("\n}\n").unwrap()];
            assert!(block.contains(&format!("if ($aikore_raw_name != \"{name}\") {{ return 400; }}")), "{block}");
        }
    }

    #[test]
    fn the_slot_serves_comfyuis_progress_favicon() {
        let r = render(&[entry("c", Some(19005), true)], &RenderOptions::default());
        let favicon = block(&r.text, "location ^~ /assets/images/favicon_progress_16x16/ {");
        assert!(favicon.contains("\n        proxy_pass http://aikore_app_c;\n"), "{favicon}");
    }

    #[test]
    fn sizes() {
        for ok in ["50g", "1024", "10M", "0"] {
            assert!(is_valid_size(ok), "{ok}");
        }
        for bad in ["", "g", "5gg", "1;", "1 g", "-1"] {
            assert!(!is_valid_size(bad), "{bad}");
        }
    }
}
