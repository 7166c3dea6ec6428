//! Persistent mode: an instance whose UI lives in a virtual X display that
//! outlasts the user's browser tab. Its run is `blueprints/persistent-run.sh`
//! wrapped around the usual command: Xvnc on a leased display, websockify
//! serving noVNC on a leased loopback port (NGINX puts it at `/vnc/<name>/`),
//! the app with DISPLAY set and, for a web app, Firefox ESR in kiosk mode on
//! that display once the app answers. All of it is started by the unit's main
//! process, so it is born in the unit's cgroup (or carries its markers) and
//! the supervisor's stop takes it all down.
//!
//! Here: the display's bookkeeping (lease, X lock files, the run's
//! environment). The processes themselves are the script's.

use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use super::runtime::{port_is_free, InstanceContext};
use crate::store::DisplayLease;
use crate::units::Unit;

/// Display numbers persistent instances lease (`:10` up: low numbers are
/// where a host's own X server and SSH X forwarding live). Xvnc's VNC port
/// is `VNC_BASE + display`, on loopback only.
pub const DISPLAYS: RangeInclusive<u16> = 10..=99;
pub const VNC_BASE: u16 = 5900;

/// The wrapper script, in the stock blueprints dir (not a blueprint itself).
pub const WRAPPER: &str = "persistent-run.sh";

const X_SOCKET_DIR: &str = "/tmp/.X11-unix";

/// What one persistent run was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersistentRun {
    pub lease: DisplayLease,
    /// A web app gets Firefox on the display; a GUI app (its blueprint says
    /// `# aikore.persistent_mode = true`) draws there itself.
    pub browser: bool,
}

impl PersistentRun {
    pub fn vnc_port(&self) -> u16 {
        VNC_BASE + self.lease.display
    }

    /// Added to the run's environment (after the unit's own Environment=).
    pub fn env(&self) -> Vec<(String, String)> {
        let d = self.lease.display;
        vec![
            ("DISPLAY".into(), format!(":{d}")),
            ("PERSISTENT_DISPLAY".into(), d.to_string()),
            ("PERSISTENT_VNC_PORT".into(), self.vnc_port().to_string()),
            ("PERSISTENT_WS_PORT".into(), self.lease.ws_port.to_string()),
            ("PERSISTENT_BROWSER".into(), if self.browser { "yes" } else { "no" }.into()),
        ]
    }
}

/// `/vnc/<name>/...`: noVNC's page with the WebSocket path under the same
/// prefix (websockify answers the upgrade on any path) and remote resize, so
/// the display takes the size of the viewer's window.
pub fn vnc_url(name: &str) -> String {
    crate::urls::vnc_view(name)
}

/// Whether the instance's own script (else its blueprint) declares itself a
/// GUI app: `# aikore.persistent_mode = true` in the metadata block.
pub fn is_gui_app(unit: &Unit, ctx: &InstanceContext) -> bool {
    let text = ctx.read_launch_script(&unit.name).ok().or_else(|| {
        let id = &unit.instance.as_ref()?.blueprint;
        let bp = super::blueprints::find(&ctx.blueprints_dir, &ctx.data_dir.join("blueprints"), id)?;
        std::fs::read_to_string(bp.path).ok()
    });
    text.map(|t| super::blueprints::parse_metadata(&t))
        .and_then(|m| m.get("persistent_mode").cloned())
        .is_some_and(|v| matches!(v.as_str(), "true" | "yes" | "1"))
}

pub fn lock_path(display: u16) -> PathBuf {
    PathBuf::from(format!("/tmp/.X{display}-lock"))
}

pub fn socket_path(display: u16) -> PathBuf {
    Path::new(X_SOCKET_DIR).join(format!("X{display}"))
}

fn pid_alive(pid: i32) -> bool {
    // A zombie holds no display.
    crate::sys::proc::stat(pid).is_some_and(|s| !s.is_zombie())
}

/// The pid in an X lock file (`%10d\n`); None without a readable one.
fn lock_owner(display: u16) -> Option<Option<i32>> {
    // /tmp is everyone's: never through a symlink, and a planted FIFO must not block us.
    let tmp = crate::safefs::open_dir(std::path::Path::new("/tmp")).ok()?;
    let text = crate::safefs::read_text_at(&tmp, &format!(".X{display}-lock"), 64).ok()?;
    Some(text.trim().parse().ok())
}

/// Whether some process listens on the display's socket, by path or in the
/// abstract namespace (Xorg and Xvnc bind both on Linux).
fn socket_in_use(display: u16, proc_net_unix: &str) -> bool {
    let path = socket_path(display);
    let path = path.to_string_lossy();
    let abstract_name = format!("@{path}");
    proc_net_unix.lines().skip(1).any(|line| {
        let name = line.split_whitespace().nth(7);
        name == Some(path.as_ref()) || name == Some(abstract_name.as_str())
    })
}

fn proc_net_unix() -> String {
    std::fs::read_to_string("/proc/net/unix").unwrap_or_default()
}

/// Whether display `:N` can be used now: no live process owns its lock file,
/// nothing listens on its X socket, and its VNC port is free. A stale lock
/// (its owner is dead) does not count: `clean_stale` removes it.
pub fn display_free(display: u16) -> bool {
    if let Some(Some(pid)) = lock_owner(display) {
        if pid_alive(pid) {
            return false;
        }
    }
    !socket_in_use(display, &proc_net_unix()) && port_is_free(VNC_BASE + display)
}

/// Removes a dead display's lock file and socket (what an X server killed
/// with SIGKILL leaves); leaves a live one alone. Returns what it removed.
pub fn clean_stale(display: u16) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let lock = lock_path(display);
    let lock_live = matches!(lock_owner(display), Some(Some(pid)) if pid_alive(pid));
    if !lock_live && std::fs::symlink_metadata(&lock).is_ok() && std::fs::remove_file(&lock).is_ok() {
        removed.push(lock);
    }
    let socket = socket_path(display);
    // Relative to the socket dir opened without following a symlink: a
    // `/tmp/.X11-unix` planted as a link elsewhere is left alone.
    let socket_dir = crate::safefs::open_dir(std::path::Path::new(X_SOCKET_DIR));
    if !lock_live
        && std::fs::symlink_metadata(&socket).is_ok()
        && !socket_in_use(display, &proc_net_unix())
        && socket_dir.is_ok_and(|dir| crate::safefs::unlink_at(&dir, &format!("X{display}")).is_ok())
    {
        removed.push(socket);
    }
    removed
}

/// Leases the unit's display and websockify port (from the instance port
/// pool's top) and cleans the display's stale X files. Called from
/// `prepare()` on the supervisor task (short SQLite statements).
pub fn begin(unit: &Unit, ctx: &InstanceContext) -> Result<PersistentRun, String> {
    let name = unit.name.clone();
    let ports = ctx.port_range.clone();
    // The unit's own dead display from a crash must not look busy to it:
    // clean first (a live owner is left alone and stays busy).
    let previous = {
        let n = name.clone();
        ctx.store.call_blocking(move |s| s.display_lease(&n)).ok().and_then(|r| r.ok()).flatten()
    };
    if let Some((lease, _)) = previous {
        clean_stale(lease.display);
    }
    let lease = ctx
        .store
        .call_blocking(move |s| {
            s.lease_display(&name, DISPLAYS, ports, display_free, port_is_free, crate::clock::now_ms())
        })
        .map_err(|e| format!("display lease: {e}"))?
        .map_err(|e| format!("display lease: {e}"))?;
    for path in clean_stale(lease.display) {
        tracing::info!(unit = %unit.name, path = %path.display(), "removed a dead X server's leftover");
    }
    Ok(PersistentRun { lease, browser: !is_gui_app(unit, ctx) })
}

/// The run is over (every process of the unit gone): clean what a killed X
/// server left and release the display for others (kept as a preference).
pub fn end(unit: &str, ctx: &InstanceContext) {
    let n = unit.to_string();
    let lease = ctx.store.call_blocking(move |s| s.display_lease(&n)).ok().and_then(|r| r.ok()).flatten();
    if let Some((lease, _)) = lease {
        clean_stale(lease.display);
    }
    let n = unit.to_string();
    if let Ok(Err(e)) | Err(e) = ctx.store.call_blocking(move |s| s.release_display(&n, crate::clock::now_ms())) {
        tracing::warn!(unit, error = %e, "releasing the display lease failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_by_path_or_abstract_name() {
        let table = "Num       RefCount Protocol Flags    Type St Inode Path\n\
            0000000000000000: 00000002 00000000 00010000 0001 01 1234 @/tmp/.X11-unix/X42\n\
            0000000000000000: 00000002 00000000 00010000 0001 01 1235 /tmp/.X11-unix/X43\n\
            0000000000000000: 00000002 00000000 00010000 0001 01 1236 /tmp/.X11-unix/X440\n";
        assert!(socket_in_use(42, table));
        assert!(socket_in_use(43, table));
        assert!(!socket_in_use(44, table));
    }

    #[test]
    fn vnc_url_names_the_websocket_path_and_remote_resize() {
        let url = vnc_url("a-1");
        assert!(url.starts_with("/vnc/a-1/vnc.html?"), "{url}");
        assert!(url.contains("path=vnc/a-1/websockify"));
        assert!(url.contains("resize=remote"));
    }

    #[test]
    fn stale_locks_are_removed_live_ones_kept() {
        // A display number no test or desktop uses.
        let d = 987;
        let _ = std::fs::create_dir_all(X_SOCKET_DIR);
        // Dead owner: pid_max is at most 2^22, so this pid cannot exist.
        std::fs::write(lock_path(d), format!("{:>10}\n", 9_999_999)).unwrap();
        std::fs::write(socket_path(d), "").unwrap();
        assert!(display_free(d) || !port_is_free(VNC_BASE + d));
        let removed = clean_stale(d);
        assert_eq!(removed, vec![lock_path(d), socket_path(d)]);
        assert!(!lock_path(d).exists() && !socket_path(d).exists());
        // Live owner (this test process): kept, and the display is busy.
        std::fs::write(lock_path(d), format!("{:>10}\n", std::process::id())).unwrap();
        assert!(!display_free(d));
        assert!(clean_stale(d).is_empty());
        assert!(lock_path(d).exists());
        std::fs::remove_file(lock_path(d)).unwrap();
    }
}
