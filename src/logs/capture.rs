//! Capture of one pipe: the task that drains a child's stdout+stderr pipe into
//! its unit's log until every writer has closed it.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;

use super::split::LineSplitter;
use super::unit::UnitLog;
use super::LogConfig;

/// Bytes of the first reads: most units print a line now and then, and a
/// buffer per unit is memory held as long as it runs (100 idle units with
/// 80 KiB zeroed buffers each were 8 of aikore's 19 MiB). A read that comes
/// back full doubles it, up to [`READ_BYTES`].
const FIRST_READ_BYTES: usize = 4 * 1024;
/// A pipe holds 64 KiB by default on Linux, so one read this size can empty
/// a full pipe and the child's next write doesn't block on us.
const READ_BYTES: usize = 64 * 1024;
/// A child that fills the pipe (a read comes back full) gets a pipe of this
/// size and reads of [`BUSY_READ_BYTES`]: a flood then costs a wake-up, a
/// read and a file write per 1 MiB, not per 64 KiB (measured: 1 GiB of
/// 128-byte lines at `cat > file`'s pace, benches/log-throughput.sh). Only
/// busy pipes grow, because a non-root user's pipes all count against one
/// per-user budget (`/proc/sys/fs/pipe-user-pages-soft`), and the buffer is
/// memory held for as long as the unit runs.
const BUSY_PIPE_BYTES: libc::c_int = 1024 * 1024;
const BUSY_READ_BYTES: usize = 1024 * 1024;

/// Reads `read_end` to EOF, appending every line to `log`. Never awaits
/// anything but the pipe, so followers can't slow the child down.
///
/// The common case (no CR, no line over `max_line_bytes`) goes to the file
/// straight from the read buffer: one `memchr` pass to find the line ends,
/// no copy, no per-line call. An unfinished last line stays at the front of
/// the buffer and the next read lands right after it, so a line cut by a
/// read boundary costs a move of itself only. Anything else (CRLF, runaway
/// lines) goes through [`LineSplitter`].
pub(crate) async fn drain(log: Arc<UnitLog>, read_end: OwnedFd, config: LogConfig) {
    // from_owned_fd sets O_NONBLOCK, which the reactor needs (a blocking read
    // would stall a runtime thread). The flag lives on our open file
    // description only; the child's write end is unaffected.
    let mut rx = match pipe::Receiver::from_owned_fd(read_end) {
        Ok(rx) => rx,
        Err(e) => {
            let msg = format!("{} cannot read output pipe: {e}", super::NOTE_PREFIX);
            tracing::warn!(error = %e, "registering unit output pipe");
            log.append([msg.as_bytes()], config.ring_lines);
            return;
        }
    };
    let max_line = config.max_line_bytes.max(1);
    let mut read_bytes = FIRST_READ_BYTES;
    let mut splitter = LineSplitter::new(max_line);
    // `held` bytes of an unfinished line at the front (at most max_line + 1:
    // the splitter's bound), then room for one read; grown when that room
    // is missing.
    let mut buf = vec![0u8; read_bytes];
    let mut held = 0;
    let mut lines: Vec<Vec<u8>> = Vec::new();
    // The slow path's lines, each with its newline, back to back in one
    // reused buffer: exactly the bytes the file gets.
    let mut arena: Vec<u8> = Vec::new();
    let mut ends: Vec<usize> = Vec::new();
    loop {
        if buf.len() < held + read_bytes {
            buf.resize(held + read_bytes, 0);
        }
        match rx.read(&mut buf[held..held + read_bytes]).await {
            Ok(0) => break,
            Ok(n) => {
                let len = held + n;
                ends.clear();
                let fast = line_ends(&buf[..len], max_line, &mut ends);
                if fast {
                    let done = ends.last().map_or(0, |&e| e + 1);
                    if done > 0 {
                        log.append_joined(&buf[..done], &ends, config.ring_lines);
                    }
                    buf.copy_within(done..len, 0);
                    held = len - done;
                } else {
                    // line_ends may have stopped halfway.
                    ends.clear();
                    splitter.feed(&buf[..len], &mut |l| {
                        arena.extend_from_slice(l);
                        ends.push(arena.len());
                        arena.push(b'\n');
                    });
                    if !ends.is_empty() {
                        log.append_joined(&arena, &ends, config.ring_lines);
                        arena.clear();
                    }
                    // Back to the buffer's front, so the next read is fast again.
                    let rest = splitter.take_pending();
                    buf[..rest.len()].copy_from_slice(&rest);
                    held = rest.len();
                    splitter.give_back(rest);
                }
                if n == read_bytes && read_bytes < BUSY_READ_BYTES {
                    if read_bytes >= READ_BYTES {
                        // A full default pipe's worth: a flood, not a burst.
                        grow_pipe(&rx);
                        read_bytes = BUSY_READ_BYTES;
                    } else {
                        read_bytes *= 2;
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                // Keep what was read; the pipe is unusable, so stop here.
                splitter.feed(&buf[..held], &mut |l| lines.push(l.to_vec()));
                splitter.finish(&mut |l| lines.push(l.to_vec()));
                let msg = format!("{} reading output pipe failed: {e}", super::NOTE_PREFIX);
                lines.push(msg.into_bytes());
                log.append(lines.iter().map(Vec::as_slice), config.ring_lines);
                tracing::warn!(error = %e, "reading unit output pipe");
                return;
            }
        }
    }
    splitter.feed(&buf[..held], &mut |l| lines.push(l.to_vec()));
    splitter.finish(&mut |l| lines.push(l.to_vec()));
    if !lines.is_empty() {
        log.append(lines.iter().map(Vec::as_slice), config.ring_lines);
    }
}

/// Pushes the position of every `\n` in `data` to `ends`; false (and `ends`
/// is to be ignored) if there is a CR (CRLF endings are stripped) or a line,
/// or the unfinished rest, is longer than `max` (cut in pieces): the
/// splitter does those. One pass for both bytes.
fn line_ends(data: &[u8], max: usize, ends: &mut Vec<usize>) -> bool {
    let mut start = 0;
    for pos in memchr::memchr2_iter(b'\n', b'\r', data) {
        if data[pos] == b'\r' || pos - start > max {
            return false;
        }
        ends.push(pos);
        start = pos + 1;
    }
    data.len() - start <= max
}

/// Asks for a bigger pipe; a refusal (the per-user budget is spent) keeps the
/// default one, which works, just with more wake-ups.
fn grow_pipe(rx: &pipe::Receiver) {
    use std::os::fd::AsRawFd;
    // SAFETY: F_SETPIPE_SZ takes an int and touches no memory of ours; the fd
    // is the receiver's, open for as long as `rx` is borrowed.
    let _ = unsafe { libc::fcntl(rx.as_raw_fd(), libc::F_SETPIPE_SZ, BUSY_PIPE_BYTES) };
}
