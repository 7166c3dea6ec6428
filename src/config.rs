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
        if let Err(e) = std::os::unix::fs::lchown(path, Some(uid), Some(gid)) {
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
