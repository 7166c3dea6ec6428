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
    // Allocated when the pipe first has something to read, and given back
    // whenever a quiet pipe was emptied: an idle unit holds no buffer (issue
    // 15: 100 idle units held 400 KiB of them).
    let mut buf: Vec<u8> = Vec::new();
    let mut held = 0;
    let mut lines: Vec<Vec<u8>> = Vec::new();
    // The slow path's lines, each with its newline, back to back in one
    // reused buffer: exactly the bytes the file gets.
    let mut arena: Vec<u8> = Vec::new();
    let mut ends: Vec<usize> = Vec::new();
    loop {
        if held == 0 && buf.is_empty() {
            if let Err(e) = rx.readable().await {
                tracing::warn!(error = %e, "waiting on unit output pipe");
                break;
            }
        }
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
                if held == 0 && n < read_bytes && read_bytes < BUSY_READ_BYTES {
                    // Emptied, and not a flood: nothing is held while it is quiet.
                    buf = Vec::new();
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
/// splitter does those.
///
/// One pass, 64 bytes at a time: a mask of the chunk's `\n` (and whether
/// it has a `\r`), whose bits are then walked. Lines of ~100 bytes put a
/// match in almost every chunk, where a `memchr` call per line spent more
/// on starting each search than on searching (11 % of a flood's CPU).
fn line_ends(data: &[u8], max: usize, ends: &mut Vec<usize>) -> bool {
    const CHUNK: usize = 64;
    let mut start = 0;
    let mut base = 0;
    let mut chunks = data.chunks_exact(CHUNK);
    for chunk in &mut chunks {
        let (newlines, returns) = masks(chunk);
        if returns != 0 {
            return false;
        }
        let mut bits = newlines;
        while bits != 0 {
            let pos = base + bits.trailing_zeros() as usize;
            if pos - start > max {
                return false;
            }
            ends.push(pos);
            start = pos + 1;
            bits &= bits - 1;
        }
        base += CHUNK;
    }
    for (i, &b) in chunks.remainder().iter().enumerate() {
        match b {
            b'\r' => return false,
            b'\n' => {
                let pos = base + i;
                if pos - start > max {
                    return false;
                }
                ends.push(pos);
                start = pos + 1;
            }
            _ => {}
        }
    }
    data.len() - start <= max
}

/// Bit i set where `chunk[i]` (64 bytes) is `\n`, and a nonzero second mask
/// if there is a `\r` anywhere. SSE2 compares on x86-64 (20 GB/s measured,
/// against 1.1 GB/s for the plain loop, which the compiler does not turn into
/// a movemask); the plain loop elsewhere.
#[inline]
fn masks(chunk: &[u8]) -> (u64, u64) {
    debug_assert_eq!(chunk.len(), 64);
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{__m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_set1_epi8};
        let mut newlines = 0u64;
        let mut returns = 0u64;
        for (k, part) in chunk.chunks_exact(16).enumerate() {
            // SAFETY: SSE2 is part of the x86-64 baseline, so these
            // intrinsics exist on every CPU this code runs on; the load reads
            // exactly the 16 bytes of `part` (loadu: no alignment needed).
            let (n, r) = unsafe {
                let v = _mm_loadu_si128(part.as_ptr().cast::<__m128i>());
                (
                    _mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_set1_epi8(b'\n' as i8))),
                    _mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_set1_epi8(b'\r' as i8))),
                )
            };
            // movemask sets only the low 16 bits.
            newlines |= u64::from(n as u32) << (16 * k);
            returns |= u64::from(r as u32) << (16 * k);
        }
        (newlines, returns)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let mut newlines = 0u64;
        let mut returns = 0u64;
        for (i, &b) in chunk.iter().enumerate() {
            newlines |= u64::from(b == b'\n') << i;
            returns |= u64::from(b == b'\r') << i;
        }
        (newlines, returns)
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

#[cfg(test)]
mod tests {
    use super::line_ends;

    /// Against the obvious definition, on lengths around the 64-byte chunks.
    #[test]
    fn line_ends_matches_a_plain_scan() {
        let mut seed = 7u64;
        for len in [0, 1, 63, 64, 65, 127, 128, 129, 1000, 4099] {
            for round in 0..50 {
                let data: Vec<u8> = (0..len)
                    .map(|_| {
                        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                        match (seed >> 33) % 23 {
                            0 => b'\n',
                            1 if round % 5 == 0 => b'\r',
                            _ => b'a',
                        }
                    })
                    .collect();
                for max in [3, 30, 10_000] {
                    let mut got = Vec::new();
                    let ok = line_ends(&data, max, &mut got);
                    let want: Vec<usize> =
                        data.iter().enumerate().filter(|(_, &b)| b == b'\n').map(|(i, _)| i).collect();
                    let mut prev = 0;
                    let mut fits = true;
                    for &e in &want {
                        fits &= e - prev <= max;
                        prev = e + 1;
                    }
                    fits &= data.len() - prev <= max;
                    let expect_ok = !data.contains(&b'\r') && fits;
                    assert_eq!(ok, expect_ok, "len {len} round {round} max {max}");
                    if ok {
                        assert_eq!(got, want, "len {len} round {round} max {max}");
                    }
                }
            }
        }
    }
}
