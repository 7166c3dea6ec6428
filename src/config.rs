//! Resolved daemon settings: where data, units and the API live.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Default API address: loopback only; NGINX (or an SSH tunnel) is the way in.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9001";
/// DESIGN.md: the whole shutdown must fit in this unless AIKORE_SHUTDOWN_TIMEOUT says otherwise.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct Settings {
    pub data_dir: PathBuf,
    /// Stock units first, then the user's `<data>/units`, which override by name.
    pub units_dirs: Vec<PathBuf>,
    pub listen: SocketAddr,
    /// NGINX's public port (AIKORE_PORT).
    pub proxy_port: u16,
    /// NGINX's apps origin port (AIKORE_APPS_PORT).
    pub apps_port: u16,
    pub shutdown_timeout: Duration,
    /// Stock blueprints (custom ones live in `<data>/blueprints`).
    pub blueprints_dir: PathBuf,
    /// The pool `Port=auto` leases from (AIKORE_PORT_RANGE).
    pub port_range: std::ops::RangeInclusive<u16>,
    /// The host user (PUID/PGID, linuxserver.io style): units without User=
    /// run as it and files aikore creates in the data dir belong to it.
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

/// Gives `path` to the owner; best effort (a read-only bind mount is not fatal).
pub fn give(path: &std::path::Path, owner: Option<(u32, u32)>) {
    if let Some((uid, gid)) = owner {
        if let Err(e) = std::os::unix::fs::lchown(path, Some(uid), Some(gid)) {
            tracing::debug!(path = %path.display(), error = %e, "chown to PUID/PGID failed");
        }
    }
}

/// Gives `path` and everything below it to the owner (new instance dirs: a handful of files).
pub fn give_tree(path: &std::path::Path, owner: Option<(u32, u32)>) {
    if owner.is_none() {
        return;
    }
    give(path, owner);
    if let Ok(entries) = std::fs::read_dir(path) {
        for entry in entries.flatten() {
            let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
            if is_dir {
                give_tree(&entry.path(), owner);
            } else {
                give(&entry.path(), owner);
            }
        }
    }
}
