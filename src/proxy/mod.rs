//! NGINX in front of everything: its base config, rendered into the data dir
//! so NGINX runs with `<data>/nginx/` as its prefix, and the instance routes
//! kept in step with the supervisor (`routes` renders, `swap` tests and puts
//! live, `sync` decides when). docs/proxy.md is the user-facing story.

pub mod routes;
pub mod swap;
pub mod sync;

pub use routes::ProxyMode;
pub use sync::{ProxyHandle, ProxyStatus, RouteSync};

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The template, compiled in so a bare binary has it (the repo's `nginx/nginx.conf`).
const BASE_TEMPLATE: &str = include_str!("../../nginx/nginx.conf");

/// Default public port of the dashboard and API (AIKORE_PORT).
pub const DEFAULT_PORT: u16 = 9000;
/// Default port of the apps origin (AIKORE_APPS_PORT): instances, the ComfyUI
/// slot and noVNC, on another origin than the dashboard (docs/security.md).
pub const DEFAULT_APPS_PORT: u16 = 9100;

pub struct BaseConfig {
    pub listen_port: u16,
    /// The apps origin's port (AIKORE_APPS_PORT).
    pub apps_port: u16,
    /// Where aikore's own API listens (NGINX's upstream for `/`).
    pub upstream: SocketAddr,
    /// Workers run as this user: the data dir's owner, so files NGINX
    /// writes (temp bodies) belong to the same host user as the rest.
    pub worker_user: Option<String>,
}

impl BaseConfig {
    pub fn render(&self) -> String {
        let user = match &self.worker_user {
            Some(name) => format!("user {name};"),
            None => String::new(),
        };
        BASE_TEMPLATE
            .replace("{{USER_DIRECTIVE}}", &user)
            .replace("{{LISTEN}}", &self.listen_port.to_string())
            .replace("{{APPS_LISTEN}}", &self.apps_port.to_string())
            .replace("{{UPSTREAM}}", &self.upstream.to_string())
    }
}

/// AIKORE_MAX_BODY: `client_max_body_size` of instance routes (NGINX syntax:
/// digits and an optional k/m/g). An invalid value falls back to the default, loudly.
pub fn render_options_from_env() -> routes::RenderOptions {
    match std::env::var("AIKORE_MAX_BODY") {
        Ok(v) if routes::is_valid_size(v.trim()) => routes::RenderOptions { max_body: v.trim().to_string() },
        Ok(v) => {
            tracing::error!(value = %v, default = routes::DEFAULT_MAX_BODY, "AIKORE_MAX_BODY is not a size like 50g or 512m; using the default");
            routes::RenderOptions::default()
        }
        Err(_) => routes::RenderOptions::default(),
    }
}

/// The user owning `dir`, by name (NGINX's `user` takes names).
pub fn owner_name(dir: &Path) -> Option<String> {
    let uid = std::fs::metadata(dir).ok()?.uid();
    nix::unistd::User::from_uid(uid.into()).ok()?.map(|u| u.name)
}

/// Writes `<data>/nginx/nginx.conf` (atomically: temp, fsync, rename) and the
/// dirs NGINX expects under its prefix.
pub fn write_base_config(data_dir: &Path, config: &BaseConfig) -> std::io::Result<PathBuf> {
    let prefix = data_dir.join("nginx");
    for dir in ["routes", "upstreams", "tmp"] {
        std::fs::create_dir_all(prefix.join(dir))?;
    }
    let path = prefix.join("nginx.conf");
    write_atomically(&path, config.render().as_bytes())?;
    Ok(path)
}

pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_placeholder() {
        let config = BaseConfig {
            listen_port: 9123,
            apps_port: 9124,
            upstream: "127.0.0.1:9001".parse().unwrap(),
            worker_user: Some("abc".into()),
        };
        let text = config.render();
        assert!(!text.contains("{{"), "{text}");
        assert!(text.contains("listen 9123;"));
        assert!(text.contains("listen 9124;"));
        assert!(text.contains("proxy_pass http://127.0.0.1:9001;"));
        assert!(text.contains("user abc;"));
    }

    /// Every kind of route the renderer makes, through the real `nginx -t`
    /// against the real base config. NGINX is a test dependency (.ci/run installs it).
    #[test]
    fn every_rendered_route_passes_the_real_nginx_test() {
        // Through the reaper, as the daemon runs it: other tests in this
        // process start the global reaper, which would steal a plain wait's status.
        let tester = swap::NginxTester::from_env();
        assert!(swap::ConfigTester::available(&tester), "NGINX is needed for this test: apt-get install nginx");
        let data = tempfile::tempdir().unwrap();
        let config = BaseConfig {
            listen_port: 9123,
            apps_port: 9124,
            upstream: "127.0.0.1:9001".parse().unwrap(),
            worker_user: None,
        };
        write_base_config(data.path(), &config).unwrap();
        let entries = [
            routes::RouteEntry {
                name: "a".into(),
                mode: ProxyMode::Subpath,
                port: Some(19001),
                slot: true,
                persistent: true,
                vnc_port: Some(19999),
            },
            routes::RouteEntry {
                name: "b-2_x".into(),
                mode: ProxyMode::Port,
                port: Some(19002),
                slot: false,
                persistent: false,
                vnc_port: None,
            },
            routes::RouteEntry {
                name: "c".into(),
                mode: ProxyMode::Subpath,
                port: None,
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
    }
}
