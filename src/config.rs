//! Resolved daemon settings: where data, units and the API live.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Default API address: loopback only; NGINX (or an SSH tunnel) is the way in.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9001";
/// The whole shutdown must fit in this unless AIKORE_SHUTDOWN_TIMEOUT says otherwise.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct Settings {
    pub data_dir: PathBuf,
    /// Stock units first, then the user's `<data>/units`, which override by name.
    pub units_dirs: Vec<PathBuf>,
    pub listen: SocketAddr,
    /// NGINX's public port (AIKORE_PORT).
    pub proxy_port: u16,
    /// The address NGINX listens on (AIKORE_BIND).
    pub proxy_bind: std::net::IpAddr,
    /// NGINX's apps origin port (AIKORE_APPS_PORT).
    pub apps_port: u16,
    pub shutdown_timeout: Duration,
    /// Stock blueprints (custom ones live in `<data>/blueprints`).
    pub blueprints_dir: PathBuf,
    /// The pool `Port=auto` leases from (AIKORE_PORT_RANGE).
    pub port_range: std::ops::RangeInclusive<u16>,
    /// The host user (PUID/PGID, linuxserver.io style): instances always run
    /// as it and their work dirs belong to it; aikore's own state does not
    /// (docs/security.md, "Privilege separation").
    pub owner: Option<(u32, u32)>,
    /// The knobs with no flag, read from the environment once (`Knobs::from_env`).
    pub knobs: Knobs,
}

/// The `AIKORE_*` variables `serve` has no flag for (README.md, "Settings"),
/// read once at start: nothing below the composition root reads the
/// environment for them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Knobs {
    /// AIKORE_CGROUP (default on): `off` forces process-group tracking.
    pub cgroups: bool,
    /// AIKORE_NVML (default on): `off` never loads NVIDIA's library.
    pub nvml: bool,
    /// AIKORE_MAX_BODY: NGINX's `client_max_body_size` for instances, as
    /// given (the proxy checks it and falls back to its default, loudly).
    pub max_body: Option<String>,
    /// AIKORE_NGINX_BIN: the binary that tests rendered configs (default /usr/sbin/nginx).
    pub nginx_bin: Option<PathBuf>,
    /// AIKORE_NGINX_USER: NGINX's workers' user when the daemon is root.
    pub nginx_user: Option<String>,
    /// AIKORE_PROXY_EXTRA_FILE: text appended to every candidate route config (tests).
    pub proxy_extra_file: Option<PathBuf>,
    /// AIKORE_TEST_PANIC_ENGINE, debug builds only: the engine panics once this file exists.
    pub test_panic_engine: Option<PathBuf>,
    /// AIKORE_TERMINAL_ROOT=1: instance terminals are root shells even with PUID set.
    pub terminal_root: bool,
    /// AIKORE_WEB_DIR: the dashboard's static files (else found next to the checkout or in the image).
    pub web_dir: Option<PathBuf>,
}

impl Default for Knobs {
    fn default() -> Knobs {
        Knobs {
            cgroups: true,
            nvml: true,
            max_body: None,
            nginx_bin: None,
            nginx_user: None,
            proxy_extra_file: None,
            test_panic_engine: None,
            terminal_root: false,
            web_dir: None,
        }
    }
}

impl Knobs {
    pub fn from_env() -> Knobs {
        Knobs::from_lookup(|key| std::env::var_os(key).filter(|v| !v.is_empty()))
    }

    /// From any lookup (the environment, or a test's map).
    pub fn from_lookup(get: impl Fn(&str) -> Option<std::ffi::OsString>) -> Knobs {
        let text = |key: &str| get(key).map(|v| v.to_string_lossy().into_owned());
        let path = |key: &str| get(key).map(PathBuf::from);
        Knobs {
            cgroups: text("AIKORE_CGROUP").is_none_or(|v| v != "off"),
            nvml: text("AIKORE_NVML").is_none_or(|v| v != "off"),
            max_body: text("AIKORE_MAX_BODY"),
            nginx_bin: path("AIKORE_NGINX_BIN"),
            nginx_user: text("AIKORE_NGINX_USER").map(|u| u.trim().to_string()),
            proxy_extra_file: path("AIKORE_PROXY_EXTRA_FILE"),
            // A release build never panics on purpose, whatever the environment says.
            test_panic_engine: if cfg!(debug_assertions) { path("AIKORE_TEST_PANIC_ENGINE") } else { None },
            terminal_root: text("AIKORE_TERMINAL_ROOT").is_some_and(|v| v == "1"),
            web_dir: path("AIKORE_WEB_DIR"),
        }
    }
}

impl Settings {
    pub fn user_units_dir(&self) -> PathBuf {
        self.data_dir.join("units")
    }

    pub fn logs_dir(&self) -> PathBuf {
        self.data_dir.join("logs")
    }

    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("aikore.db")
    }

    pub fn cli_token_path(&self) -> PathBuf {
        cli_token_path(&self.data_dir)
    }
}

/// The local operator's credential: `aikore serve` writes a fresh random
/// token here (mode 0600, the daemon's user) at every start, and the CLI with
/// no AIKORE_API_TOKEN reads it, so whoever may read the data dir's secrets
/// may drive the daemon, and nobody else.
pub const CLI_TOKEN_FILE: &str = "cli.token";

pub fn cli_token_path(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join(CLI_TOKEN_FILE)
}

/// Writes `token` to `path` with mode 0600 from the first byte (a temp file
/// created 0600, then renamed over the old one): never readable by others,
/// not even for a moment, and a leftover from an earlier start is replaced.
pub fn write_secret(path: &std::path::Path, token: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
    file.write_all(token.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// The stock units dir when none is given: the image's, else the repo's
/// `units/` (a newcomer running from a checkout).
pub fn default_stock_units_dir() -> PathBuf {
    let image = PathBuf::from("/etc/aikore/units");
    if image.is_dir() {
        image
    } else {
        PathBuf::from("units")
    }
}

/// The stock blueprints dir when none is given: the image's, else the repo's.
pub fn default_blueprints_dir() -> PathBuf {
    let image = PathBuf::from("/opt/aikore/blueprints");
    if image.is_dir() {
        image
    } else {
        PathBuf::from("blueprints")
    }
}

pub fn parse_shutdown_timeout(value: Option<&str>) -> Result<Duration, String> {
    match value {
        None => Ok(DEFAULT_SHUTDOWN_TIMEOUT),
        Some(text) => crate::units::parse_timespan(text)
            .map_err(|e| format!("AIKORE_SHUTDOWN_TIMEOUT={text}: {e}"))?
            .ok_or_else(|| format!("AIKORE_SHUTDOWN_TIMEOUT={text}: must be finite")),
    }
}

/// PUID/PGID when both are set and we run as root (only root can hand files
/// and processes to another user).
pub fn owner_from_env(puid: Option<&str>, pgid: Option<&str>) -> Result<Option<(u32, u32)>, String> {
    let (Some(puid), Some(pgid)) = (puid, pgid) else { return Ok(None) };
    let uid: u32 = puid.trim().parse().map_err(|_| format!("PUID={puid}: not a number"))?;
    let gid: u32 = pgid.trim().parse().map_err(|_| format!("PGID={pgid}: not a number"))?;
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    Ok(Some((uid, gid)))
}

/// Gives `path` (an instance's work dir, never aikore's own state) to the
/// instance user; best effort (a read-only bind mount is not fatal).
pub fn give(path: &std::path::Path, owner: Option<(u32, u32)>) {
    if let Some((uid, gid)) = owner {
        if let Err(e) = crate::ownership::hand_over(path, (uid, gid)) {
            tracing::debug!(path = %path.display(), error = %e, "chown to PUID/PGID failed");
        }
    }
}

/// Default public port of the dashboard and API (AIKORE_PORT).
pub const DEFAULT_PORT: u16 = 9000;
/// Default port of the apps origin (AIKORE_APPS_PORT): instances, the ComfyUI
/// slot and noVNC, on another origin than the dashboard (docs/security.md).
pub const DEFAULT_APPS_PORT: u16 = 9100;

/// Default address NGINX listens on (AIKORE_BIND): loopback, so a checkout run
/// is reachable from this machine only; the container image sets 0.0.0.0.
pub const DEFAULT_BIND: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// The default pool for `Port=auto` (AIKORE_PORT_RANGE).
pub const DEFAULT_PORT_RANGE: std::ops::RangeInclusive<u16> = 19001..=19999;

/// `FIRST-LAST` (AIKORE_PORT_RANGE) into the pool `Port=auto` leases from.
pub fn parse_port_range(text: &str) -> Result<std::ops::RangeInclusive<u16>, String> {
    let (a, b) = text.split_once('-').ok_or_else(|| format!("AIKORE_PORT_RANGE={text}: expected FIRST-LAST"))?;
    let a: u16 = a.trim().parse().map_err(|_| format!("AIKORE_PORT_RANGE={text}: bad first port"))?;
    let b: u16 = b.trim().parse().map_err(|_| format!("AIKORE_PORT_RANGE={text}: bad last port"))?;
    if a == 0 || a > b {
        return Err(format!("AIKORE_PORT_RANGE={text}: empty range"));
    }
    Ok(a..=b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knobs_default_on_and_read_off() {
        let none = Knobs::from_lookup(|_| None);
        assert_eq!(none, Knobs::default());
        let env: std::collections::HashMap<&str, &str> = [
            ("AIKORE_CGROUP", "off"),
            ("AIKORE_NVML", "off"),
            ("AIKORE_MAX_BODY", "1g"),
            ("AIKORE_NGINX_BIN", "/x/nginx"),
            ("AIKORE_NGINX_USER", " www "),
            ("AIKORE_PROXY_EXTRA_FILE", "/x/extra"),
            ("AIKORE_TERMINAL_ROOT", "1"),
            ("AIKORE_WEB_DIR", "/x/web"),
        ]
        .into();
        let knobs = Knobs::from_lookup(|k| env.get(k).map(Into::into));
        assert!(!knobs.cgroups && !knobs.nvml);
        assert_eq!(knobs.max_body.as_deref(), Some("1g"));
        assert_eq!(knobs.nginx_bin, Some(PathBuf::from("/x/nginx")));
        assert_eq!(knobs.nginx_user.as_deref(), Some("www"));
        assert_eq!(knobs.proxy_extra_file, Some(PathBuf::from("/x/extra")));
        assert!(knobs.terminal_root);
        assert_eq!(knobs.web_dir, Some(PathBuf::from("/x/web")));
        let on = Knobs::from_lookup(|k| (k == "AIKORE_CGROUP").then(|| "on".into()));
        assert!(on.cgroups);
    }
}
