//! NGINX in front of everything: its base config, rendered into the data dir
//! so NGINX runs with `<data>/nginx/` as its prefix, and the instance routes
//! kept in step with the supervisor (`routes` renders, `swap` tests and puts
//! live, `sync` decides when). docs/proxy.md is the user-facing story.

pub mod routes;
pub mod swap;
pub mod sync;

pub use routes::ProxyMode;
pub use sync::{ProxyHandle, ProxyStatus, RouteSync};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The template, compiled in so a bare binary has it (the repo's `nginx/nginx.conf`).
const BASE_TEMPLATE: &str = include_str!("../../nginx/nginx.conf");

/// NGINX's temp paths under `<prefix>/tmp/` (nginx/nginx.conf's `*_temp_path`).
pub const NGINX_TEMP_DIRS: [&str; 5] = ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"];

pub use crate::config::{DEFAULT_APPS_PORT, DEFAULT_BIND, DEFAULT_PORT};

pub struct BaseConfig {
    /// The address NGINX listens on (AIKORE_BIND).
    pub listen_addr: std::net::IpAddr,
    pub listen_port: u16,
    /// The apps origin's port (AIKORE_APPS_PORT).
    pub apps_port: u16,
    /// Where aikore's own API listens (NGINX's upstream for `/`).
    pub upstream: SocketAddr,
    /// Workers run as this user and group (`user NAME GROUP;`), never the
    /// instance user: see `worker_user`. None when the daemon is not root.
    pub worker_user: Option<WorkerUser>,
    /// The login gate's answer cache (`proxy_cache_path`): see [`make_auth_cache_dir`].
    pub auth_cache: PathBuf,
    /// The login gate's signing secret: written to
    /// `<prefix>/gate.conf`, mode 0600, which the base config includes.
    pub gate_secret: String,
}

/// NGINX's worker identity, by name (the `user` directive takes names) and by id.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerUser {
    pub user: String,
    /// The real name of the user's primary group: `nobody`'s is `nogroup` on
    /// Debian, and `user nobody;` alone would look up a group `nobody`.
    pub group: String,
    pub uid: u32,
    pub gid: u32,
}

impl WorkerUser {
    pub fn lookup(name: &str) -> Option<WorkerUser> {
        let user = nix::unistd::User::from_name(name).ok()??;
        let group = nix::unistd::Group::from_gid(user.gid).ok()??;
        Some(WorkerUser { user: user.name, group: group.name, uid: user.uid.as_raw(), gid: user.gid.as_raw() })
    }
}

/// Who NGINX's workers run as when the daemon is root: AIKORE_NGINX_USER when
/// set, else `www-data` where the system has it, else `nobody`. Not the
/// instance user (PUID) where avoidable, so instance code cannot signal or
/// ptrace the processes that carry the dashboard's traffic.
pub fn worker_user(named: Option<&str>) -> Option<WorkerUser> {
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    if let Some(name) = named {
        match WorkerUser::lookup(name) {
            Some(user) => return Some(user),
            None => {
                tracing::error!(user = %name, "AIKORE_NGINX_USER: no such user (or its group has no name); using the default")
            }
        }
    }
    ["www-data", "nobody"].iter().find_map(|name| WorkerUser::lookup(name))
}

impl BaseConfig {
    pub fn render(&self) -> String {
        let user = match &self.worker_user {
            Some(w) => format!("user {} {};", w.user, w.group),
            None => String::new(),
        };
        BASE_TEMPLATE
            .replace("{{USER_DIRECTIVE}}", &user)
            .replace("{{LISTEN}}", &std::net::SocketAddr::new(self.listen_addr, self.listen_port).to_string())
            .replace("{{APPS_LISTEN}}", &std::net::SocketAddr::new(self.listen_addr, self.apps_port).to_string())
            .replace("{{UPSTREAM}}", &self.upstream.to_string())
            .replace("{{AUTH_CACHE}}", &self.auth_cache.display().to_string())
    }
}

/// The login gate's signing secret (crate::web::gate): its file under NGINX's prefix (`<data>/nginx/`), included by
/// the base config; mode 0600, the daemon's.
pub const GATE_SECRET_FILE: &str = "gate.conf";

/// What `<data>/nginx/gate.conf` holds: the secret as an NGINX variable
/// (hex only, so nothing in it can end the quoted string).
pub fn gate_secret_conf(secret: &str) -> String {
    let hex: String = secret.chars().filter(char::is_ascii_hexdigit).collect();
    format!("# The login gate's signing secret (random at every start). Do not share.\nmap $host $aikore_gate_secret {{ default \"{hex}\"; }}")
}

/// AIKORE_MAX_BODY: `client_max_body_size` of instance routes (NGINX syntax:
/// digits and an optional k/m/g). An invalid value falls back to the default, loudly.
pub fn render_options(max_body: Option<&str>) -> routes::RenderOptions {
    match max_body {
        Some(v) if routes::is_valid_size(v.trim()) => {
            routes::RenderOptions { max_body: v.trim().to_string(), ..Default::default() }
        }
        Some(v) => {
            tracing::error!(value = %v, default = routes::DEFAULT_MAX_BODY, "AIKORE_MAX_BODY is not a size like 50g or 512m; using the default");
            routes::RenderOptions::default()
        }
        None => routes::RenderOptions::default(),
    }
}

/// Writes `<data>/nginx/nginx.conf` (atomically: temp, fsync, rename) and the
/// dirs NGINX expects under its prefix.
pub fn write_base_config(data_dir: &Path, config: &BaseConfig) -> std::io::Result<PathBuf> {
    let prefix = data_dir.join("nginx");
    for dir in ["routes", "upstreams", "tmp"] {
        std::fs::create_dir_all(prefix.join(dir))?;
    }
    // Each temp path exists before NGINX starts: its master (root) chowns them
    // to the worker user, and `tmp/` itself stays the daemon's, so the worker
    // user can never swap one for a symlink that chown would follow.
    for dir in NGINX_TEMP_DIRS {
        std::fs::create_dir_all(prefix.join("tmp").join(dir))?;
    }
    // Only NGINX's master (root, or the daemon's user) reads the secret: never
    // its workers' user, the instance user, or an app.
    crate::config::write_secret(&prefix.join(GATE_SECRET_FILE), &gate_secret_conf(&config.gate_secret))?;
    let path = prefix.join("nginx.conf");
    write_atomically(&path, config.render().as_bytes())?;
    Ok(path)
}

/// Whether the live generated config gives a `port` instance a server on
/// `port`: NGINX holds it (or takes it at its next reload), so a start must
/// not count it as taken by another process.
pub fn serves_port(data_dir: &Path, port: u16) -> bool {
    let file = data_dir.join("nginx").join("upstreams").join(swap::ROUTES_FILE);
    let Ok(text) = std::fs::read_to_string(file) else { return false };
    let suffix = format!(":{port};");
    text.lines().map(str::trim).any(|l| l.starts_with("listen ") && l.ends_with(&suffix))
}

/// Where the previous run's gate cache dir is written down, to be removed.
const AUTH_CACHE_RECORD: &str = "nginx/auth_cache.path";
const AUTH_CACHE_PREFIX: &str = "aikore-auth-";

/// A fresh dir for the login gate's answer cache: `<temp dir>/aikore-auth-<name>`,
/// 0700, given to `owner` (NGINX's workers). Not in the data dir: the workers
/// must reach it, and a data dir may sit inside a private (0700) parent; and
/// its keys hold credentials, which belong in a temp dir that a reboot
/// clears, not in persistent state. The previous run's dir goes first.
pub fn make_auth_cache_dir(data_dir: &Path, owner: Option<(u32, u32)>, name: &str) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let record = data_dir.join(AUTH_CACHE_RECORD);
    // The path goes into the config: a TMPDIR with anything but plain path
    // characters is not used.
    let temp = Some(std::env::temp_dir())
        .filter(|t| t.to_str().is_some_and(|t| t.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._-".contains(&b))))
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    if let Ok(old) = std::fs::read_to_string(&record) {
        let old = PathBuf::from(old.trim());
        // Only ever a dir this function made: the record could be stale or edited.
        let ours = old.parent() == Some(temp.as_path())
            && old.file_name().is_some_and(|n| n.to_string_lossy().starts_with(AUTH_CACHE_PREFIX));
        if ours {
            // Does not follow symlinks, at the top or inside.
            let _ = std::fs::remove_dir_all(&old);
        }
    }
    let dir = temp.join(format!("{AUTH_CACHE_PREFIX}{name}"));
    // Fails if the name exists: never a dir or link someone else made.
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    if let Some((uid, gid)) = owner {
        crate::ownership::hand_over(&dir, (uid, gid))?;
    }
    std::fs::create_dir_all(data_dir.join("nginx"))?;
    crate::safefs::write_atomically(&record, dir.display().to_string().as_bytes())?;
    Ok(dir)
}

/// Whether NGINX could listen on `addr:port` now (nobody else does).
pub fn port_free_on(addr: std::net::IpAddr, port: u16) -> bool {
    std::net::TcpListener::bind((addr, port)).is_ok()
}

pub use crate::safefs::write_atomically;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_secret_file_holds_hex_only() {
        let conf = gate_secret_conf("ab12\"; } evil {");
        assert!(conf.contains("default \"ab12e\";"), "{conf}");
    }

    #[test]
    fn listens_where_aikore_bind_says() {
        let config = |addr: &str| BaseConfig {
            listen_addr: addr.parse().unwrap(),
            listen_port: 9000,
            apps_port: 9100,
            upstream: "127.0.0.1:9001".parse().unwrap(),
            worker_user: None,
            auth_cache: "/tmp/aikore-auth-test".into(),
            gate_secret: "ab".repeat(32),
        };
        assert!(config("0.0.0.0").render().contains("listen 0.0.0.0:9000;"));
        assert!(config("0.0.0.0").render().contains("listen 0.0.0.0:9100;"));
        assert!(config("::").render().contains("listen [::]:9000;"));
        let text = config("127.0.0.1").render();
        // One listen line per origin, never a bare port (which means every interface).
        let listens: Vec<&str> = text.lines().map(str::trim).filter(|l| l.starts_with("listen ")).collect();
        assert_eq!(listens, ["listen 127.0.0.1:9000;", "listen 127.0.0.1:9100;"]);
    }

    #[test]
    fn renders_every_placeholder() {
        let config = BaseConfig {
            listen_addr: DEFAULT_BIND,
            listen_port: 9123,
            apps_port: 9124,
            upstream: "127.0.0.1:9001".parse().unwrap(),
            worker_user: Some(WorkerUser { user: "abc".into(), group: "def".into(), uid: 1, gid: 2 }),
            auth_cache: "/tmp/aikore-auth-test".into(),
            gate_secret: "ab".repeat(32),
        };
        let text = config.render();
        assert!(!text.contains("{{"), "{text}");
        assert!(text.contains("listen 127.0.0.1:9123;"), "{text}");
        assert!(text.contains("listen 127.0.0.1:9124;"), "{text}");
        assert!(text.contains("proxy_pass http://127.0.0.1:9001;"));
        assert!(text.contains("user abc def;"));
    }

    /// Issue 12 item 8: `nobody`'s group is `nogroup` on Debian; the directive names it.
    #[test]
    fn worker_user_names_the_real_group() {
        let nobody = WorkerUser::lookup("nobody").expect("the system has a nobody user");
        let group = nix::unistd::Group::from_gid(nobody.gid.into()).unwrap().unwrap().name;
        assert_eq!(nobody.group, group);
        let config = BaseConfig {
            listen_addr: DEFAULT_BIND,
            listen_port: 1,
            apps_port: 2,
            upstream: "127.0.0.1:9001".parse().unwrap(),
            worker_user: Some(nobody.clone()),
            auth_cache: "/tmp/aikore-auth-test".into(),
            gate_secret: "ab".repeat(32),
        };
        assert!(config.render().contains(&format!("user nobody {group};")));
    }

    /// Every kind of route the renderer makes, through the real `nginx -t`
    /// against the real base config. NGINX is a test dependency (.ci/run installs it).
    #[test]
    fn every_rendered_route_passes_the_real_nginx_test() {
        // Through the reaper, as the daemon runs it: other tests in this
        // process start the global reaper, which would steal a plain wait's status.
        let tester = swap::NginxTester::new(None);
        assert!(swap::ConfigTester::available(&tester), "NGINX is needed for this test: apt-get install nginx");
        let data = tempfile::tempdir().unwrap();
        let config = BaseConfig {
            listen_addr: "0.0.0.0".parse().unwrap(),
            listen_port: 9123,
            apps_port: 9124,
            upstream: "127.0.0.1:9001".parse().unwrap(),
            worker_user: None,
            auth_cache: make_auth_cache_dir(data.path(), None, &format!("test-{}", std::process::id())).unwrap(),
            gate_secret: "ab".repeat(32),
        };
        write_base_config(data.path(), &config).unwrap();
        let entries = [
            routes::RouteEntry {
                wake: false,
                name: "a".into(),
                mode: ProxyMode::Subpath,
                port: Some(19001),
                public_port: None,
                slot: true,
                persistent: true,
                vnc_port: Some(19999),
            },
            routes::RouteEntry {
                wake: false,
                name: "b-2_x".into(),
                mode: ProxyMode::Port,
                port: Some(41002),
                public_port: Some(19002),
                slot: false,
                persistent: false,
                vnc_port: None,
            },
            // A stopped `port` instance keeps its server (a "not running" page).
            routes::RouteEntry {
                wake: false,
                name: "d".into(),
                mode: ProxyMode::Port,
                port: None,
                public_port: Some(19003),
                slot: false,
                persistent: false,
                vnc_port: None,
            },
            routes::RouteEntry {
                wake: false,
                name: "c".into(),
                mode: ProxyMode::Subpath,
                port: None,
                public_port: None,
                slot: false,
                persistent: true,
                vnc_port: None,
            },
        ];
        let prefix = data.path().join("nginx");
        let rendered = routes::render(&entries, &routes::RenderOptions::default());
        swap::stage_and_swap(&prefix, &rendered.upstreams, &rendered.text, &tester).unwrap();
        let empty = routes::render(&entries[1..], &routes::RenderOptions::default());
        swap::stage_and_swap(&prefix, &empty.upstreams, &empty.text, &tester).unwrap();
        let broken = format!("{}\nproxy_pass_bogus on;\n", rendered.text);
        let err = swap::stage_and_swap(&prefix, &rendered.upstreams, &broken, &tester).unwrap_err();
        assert!(err.to_string().contains("proxy_pass_bogus"), "{err}");
        assert_eq!(std::fs::read_to_string(prefix.join("routes/aikore.conf")).unwrap(), empty.text);
        std::fs::remove_dir_all(&config.auth_cache).unwrap();
    }

    #[test]
    fn the_gate_cache_dir_is_private_fresh_and_replaces_the_last_one() {
        use std::os::unix::fs::PermissionsExt;
        let data = tempfile::tempdir().unwrap();
        let tag = format!("t{}", std::process::id());
        let first = make_auth_cache_dir(data.path(), None, &format!("{tag}-a")).unwrap();
        assert_eq!(first.parent(), Some(std::env::temp_dir().as_path()));
        assert_eq!(std::fs::metadata(&first).unwrap().permissions().mode() & 0o777, 0o700);
        std::fs::write(first.join("entry"), "x").unwrap();
        // A dir of that name made by someone else is refused, never reused;
        // the previous run's (recorded) is removed either way.
        let foreign = std::env::temp_dir().join(format!("{AUTH_CACHE_PREFIX}{tag}-x"));
        std::fs::create_dir(&foreign).unwrap();
        assert!(make_auth_cache_dir(data.path(), None, &format!("{tag}-x")).is_err());
        assert!(foreign.exists());
        assert!(!first.exists(), "the previous run's cache is removed");
        let second = make_auth_cache_dir(data.path(), None, &format!("{tag}-b")).unwrap();
        // A record naming anything but one of these dirs removes nothing.
        let outside = data.path().join("keep");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(data.path().join(AUTH_CACHE_RECORD), outside.display().to_string()).unwrap();
        let third = make_auth_cache_dir(data.path(), None, &format!("{tag}-c")).unwrap();
        assert!(outside.exists() && second.exists());
        for dir in [foreign, second, third] {
            std::fs::remove_dir_all(dir).unwrap();
        }
    }
}
