//! An instance's terminal: a WebSocket bridged to a shell on a PTY, in the
//! instance's directory with its environment.
//!
//! Protocol: the browser sends keystrokes as binary frames and control
//! messages as JSON text frames (`{"type":"resize","cols":C,"rows":R}`); the
//! server sends the PTY's output as binary frames. When the socket closes,
//! the shell's whole session is killed.

use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use serde::Deserialize;
use tokio::io::unix::AsyncFd;

use super::api::checked_name;
use super::error::ApiResult;
use super::AppState;
use crate::supervisor::spawn::{set_window_size, spawn_pty, ProcessSpec};
use crate::units::PortSpec;

/// What the browser's first fit usually gives; replaced by its resize at once.
const DEFAULT_SIZE: (u16, u16) = (80, 24);
/// One read of PTY output: a screenful of a busy program fits in a few.
const READ_CHUNK: usize = 16 * 1024;
/// After SIGHUP, what the session's processes get to exit before SIGKILL.
const HANGUP_GRACE: Duration = Duration::from_millis(500);

pub fn routes() -> Router<AppState> {
    Router::new().route("/api/v1/instances/{name}/terminal", get(terminal))
}

#[derive(Deserialize)]
struct SizeQuery {
    cols: Option<u16>,
    rows: Option<u16>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Control {
    Resize { cols: u16, rows: u16 },
    Input { data: String },
}

/// Later assignments win; one entry per name.
fn dedup_env(env: Vec<(String, String)>) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::with_capacity(env.len());
    for (k, v) in env {
        match out.iter_mut().find(|(name, _)| *name == k) {
            Some(slot) => slot.1 = v,
            None => out.push((k, v)),
        }
    }
    out
}

async fn terminal(
    State(state): State<AppState>,
    Path(name): Path<String>,
    query: Result<Query<SizeQuery>, QueryRejection>,
    ws: WebSocketUpgrade,
) -> ApiResult<Response> {
    let name = checked_name(&name)?.to_string();
    let Query(size) = query?;
    let snapshot = state.instances.instance(&name).await?;
    let ctx = &state.instances.ctx;
    let unit = &snapshot.unit;
    // The app's own port (behind NGINX for a `port` instance), as its run got it.
    let port = snapshot.app_port.or(snapshot.port).or(match unit.instance.as_ref().map(|i| &i.port) {
        Some(PortSpec::Fixed(p)) => Some(*p),
        _ => None,
    });
    // Not AIKORE_UNIT / AIKORE_DATA_DIR: those markers make a process a member
    // of the unit (process-group tracking), and stopping the instance must not
    // wait for, or kill, a shell someone has open.
    let mut env = crate::supervisor::host::inherited_env();
    env.extend(unit.service.environment.iter().cloned());
    env.extend(crate::instances::runtime::instance_env(unit, ctx, port));
    env.push(("AIKORE_TERMINAL".into(), name.clone()));
    env.push(("TERM".into(), "xterm-256color".into()));
    env.push(("COLORTERM".into(), "truecolor".into()));
    let shell = if std::path::Path::new("/bin/bash").exists() { "/bin/bash" } else { "/bin/sh" };
    let dir = ctx.instance_dir(&name);
    // The instance's user, like the instance itself: a shell here is as
    // hostile as the instance's code. Root only when the operator says so.
    let (uid, gid, groups) = match ctx.owner {
        Some((uid, gid)) if !state.terminal_root => {
            let identity = crate::supervisor::host::instance_identity(uid, gid, &dir);
            env.extend(identity.env);
            (identity.uid, identity.gid, identity.groups)
        }
        _ => (None, None, Vec::new()),
    };
    let spec = ProcessSpec {
        argv: vec![shell.to_string()],
        argv0: None,
        env: dedup_env(env),
        cwd: dir.is_dir().then_some(dir),
        umask: None,
        nice: None,
        uid,
        gid,
        groups,
    };
    let size = (size.cols.unwrap_or(DEFAULT_SIZE.0), size.rows.unwrap_or(DEFAULT_SIZE.1));
    Ok(ws.on_upgrade(move |socket| session(socket, spec, size, name)))
}

async fn session(mut socket: WebSocket, spec: ProcessSpec, size: (u16, u16), name: String) {
    let (exit_tx, mut exited) = tokio::sync::oneshot::channel();
    let route = Box::new(move |_pid: i32, status| {
        let _ = exit_tx.send(status);
    });
    let spawned = match spawn_pty(&spec, size, route) {
        Ok(s) => s,
        Err(e) => {
            let _ = socket.send(Message::Text(format!("\r\ncannot start a shell: {e}\r\n").into())).await;
            return;
        }
    };
    let pid = spawned.pid;
    tracing::info!(instance = %name, pid, "terminal opened");
    if let Err(e) = bridge(&mut socket, spawned.output, &mut exited).await {
        tracing::debug!(instance = %name, error = %e, "terminal ended");
    }
    let _ = socket.send(Message::Close(None)).await;
    tokio::spawn(end_session(pid));
    tracing::info!(instance = %name, pid, "terminal closed");
}

/// Copies between the socket and the PTY until either side ends.
async fn bridge(
    socket: &mut WebSocket,
    master: OwnedFd,
    exited: &mut tokio::sync::oneshot::Receiver<crate::init::reaper::ExitStatus>,
) -> std::io::Result<()> {
    nix::fcntl::fcntl(&master, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK))
        .map_err(std::io::Error::from)?;
    // SAFETY: the fd is ours alone and stays open as long as the AsyncFd.
    let master = unsafe { AsyncFd::register(master) }.map_err(|e| e.into_parts().1)?;
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        tokio::select! {
            ready = master.readable() => {
                let mut guard = ready?;
                match guard.try_io(|fd| read_fd(fd.get_ref().as_raw_fd(), &mut buf)) {
                    Ok(Ok(0)) => return Ok(()),
                    Ok(Ok(n)) => {
                        if socket.send(Message::Binary(buf[..n].to_vec().into())).await.is_err() {
                            return Ok(());
                        }
                    }
                    // EIO: every slave fd is closed (the shell and its children are gone).
                    Ok(Err(e)) => return Err(e),
                    Err(_would_block) => continue,
                }
            }
            message = socket.recv() => match message {
                Some(Ok(Message::Binary(bytes))) => write_all(&master, &bytes).await?,
                Some(Ok(Message::Text(text))) => match serde_json::from_str::<Control>(&text) {
                    Ok(Control::Resize { cols, rows }) => set_window_size(master.get_ref().as_raw_fd(), cols, rows)?,
                    Ok(Control::Input { data }) => write_all(&master, data.as_bytes()).await?,
                    Err(_) => {}
                },
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return Ok(()),
                Some(Ok(_)) => {}
            },
            _ = &mut *exited => {
                // The shell is gone; output still buffered in the PTY comes
                // through the read branch until EIO, unless a background job
                // keeps the terminal open: then the socket ends here.
                tokio::time::sleep(Duration::from_millis(100)).await;
                let mut guard = master.readable().await?;
                if let Ok(Ok(n)) = guard.try_io(|fd| read_fd(fd.get_ref().as_raw_fd(), &mut buf)) {
                    if n > 0 {
                        let _ = socket.send(Message::Binary(buf[..n].to_vec().into())).await;
                    }
                }
                return Ok(());
            }
        }
    }
}

fn read_fd(fd: i32, buf: &mut [u8]) -> std::io::Result<usize> {
    // SAFETY: reading into our own buffer from an fd we own.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

async fn write_all(master: &AsyncFd<OwnedFd>, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        let mut guard = master.writable().await?;
        // SAFETY: writing from our own buffer to an fd we own.
        match guard.try_io(|fd| {
            let n = unsafe { libc::write(fd.get_ref().as_raw_fd(), data.as_ptr().cast(), data.len()) };
            if n < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        }) {
            Ok(Ok(n)) => data = &data[n..],
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => continue,
        }
    }
    Ok(())
}

/// The session's process ids: every process whose session id is `sid`
/// (job control puts background jobs in their own process groups, so the
/// shell's group alone is not enough).
fn session_members(sid: i32) -> Vec<i32> {
    crate::sys::proc::pids()
        .into_iter()
        .filter(|pid| crate::sys::proc::stat(*pid).is_some_and(|s| s.session == sid))
        .collect()
}

/// SIGHUP to the session (what a closed terminal means), then SIGKILL to
/// whatever of it is left after a short grace.
async fn end_session(sid: i32) {
    use crate::sys::signal::{to_each, Signal};
    // Processes of the session this terminal started.
    let members = session_members(sid);
    to_each(&members, Signal::SIGHUP);
    to_each(&members, Signal::SIGCONT);
    tokio::time::sleep(HANGUP_GRACE).await;
    to_each(&session_members(sid), Signal::SIGKILL);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_messages_parse() {
        assert!(matches!(
            serde_json::from_str::<Control>(r#"{"type":"resize","cols":120,"rows":40}"#),
            Ok(Control::Resize { cols: 120, rows: 40 })
        ));
        assert!(matches!(
            serde_json::from_str::<Control>(r#"{"type":"input","data":"ls\r"}"#),
            Ok(Control::Input { .. })
        ));
    }

    #[test]
    fn later_environment_wins() {
        let env = dedup_env(vec![("A".into(), "1".into()), ("B".into(), "2".into()), ("A".into(), "3".into())]);
        assert_eq!(env, vec![("A".into(), "3".into()), ("B".into(), "2".into())]);
    }
}
