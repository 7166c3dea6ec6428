//! Capture of one pipe: the task that drains a child's stdout+stderr pipe into
//! its unit's log until every writer has closed it.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;

use super::split::LineSplitter;
use super::unit::UnitLog;
use super::LogConfig;

/// Bytes per read: a pipe holds 64 KiB by default on Linux, so one read can
/// empty a full pipe and the child's next write doesn't block on us.
const READ_BYTES: usize = 64 * 1024;
/// A child that fills the pipe (a read comes back full) gets a pipe of this
/// size and reads of [`BUSY_READ_BYTES`]: a flood then costs a wake-up per
/// 256 KiB, not per 64 KiB, on both sides. Only busy pipes grow, because a
/// non-root user's pipes all count against one per-user budget
/// (`/proc/sys/fs/pipe-user-pages-soft`).
const BUSY_PIPE_BYTES: libc::c_int = 1024 * 1024;
const BUSY_READ_BYTES: usize = 256 * 1024;

/// Reads `read_end` to EOF, appending every line to `log`. Never awaits
/// anything but the pipe, so followers can't slow the child down.
pub(crate) async fn drain(log: Arc<UnitLog>, read_end: OwnedFd, config: LogConfig) {
    // from_owned_fd sets O_NONBLOCK, which the reactor needs (a blocking read
    // would stall a runtime thread). The flag lives on our open file
    // description only; the child's write end is unaffected.
    let mut rx = match pipe::Receiver::from_owned_fd(read_end) {
        Ok(rx) => rx,
        Err(e) => {
            let msg = format!("{} cannot read output pipe: {e}", super::NOTE_PREFIX);
            tracing::warn!(error = %e, "registering unit output pipe");
            log.append([msg.as_bytes()], config.max_file_bytes, config.ring_lines);
            return;
        }
    };
    let mut grown = false;
    let mut splitter = LineSplitter::new(config.max_line_bytes);
    let mut buf = vec![0u8; READ_BYTES];
    let mut lines: Vec<Vec<u8>> = Vec::new();
    // One read's lines, each with its newline, back to back in one reused
    // buffer: exactly the bytes the file gets, and no allocation per line on
    // the hot path (a chatty app writes hundreds per read).
    let mut arena: Vec<u8> = Vec::with_capacity(READ_BYTES);
    let mut ends: Vec<usize> = Vec::new();
    loop {
        match rx.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                splitter.feed(&buf[..n], &mut |l| {
                    arena.extend_from_slice(l);
                    ends.push(arena.len());
                    arena.push(b'\n');
                });
                if !ends.is_empty() {
                    log.append_joined(&arena, &ends, config.max_file_bytes, config.ring_lines);
                    arena.clear();
                    ends.clear();
                }
                if n == buf.len() && !grown {
                    grown = true;
                    grow_pipe(&rx);
                    buf.resize(BUSY_READ_BYTES, 0);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                // Keep what was read; the pipe is unusable, so stop here.
                splitter.finish(&mut |l| lines.push(l.to_vec()));
                let msg = format!("{} reading output pipe failed: {e}", super::NOTE_PREFIX);
                lines.push(msg.into_bytes());
                log.append(lines.iter().map(Vec::as_slice), config.max_file_bytes, config.ring_lines);
                tracing::warn!(error = %e, "reading unit output pipe");
                return;
            }
        }
    }
    splitter.finish(&mut |l| lines.push(l.to_vec()));
    if !lines.is_empty() {
        log.append(lines.iter().map(Vec::as_slice), config.max_file_bytes, config.ring_lines);
    }
}

/// Asks for a bigger pipe; a refusal (the per-user budget is spent) keeps the
/// default one, which works, just with more wake-ups.
fn grow_pipe(rx: &pipe::Receiver) {
    use std::os::fd::AsRawFd;
    // SAFETY: F_SETPIPE_SZ takes an int and touches no memory of ours; the fd
    // is the receiver's, open for as long as `rx` is borrowed.
    let _ = unsafe { libc::fcntl(rx.as_raw_fd(), libc::F_SETPIPE_SZ, BUSY_PIPE_BYTES) };
}
