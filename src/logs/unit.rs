//! One unit's log: its file (with size rotation), the ring buffer of the live
//! tail, and the broadcast channel to followers — all updated together under
//! one lock so the three never disagree about order.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::broadcast;

use super::retention::{self, Retention};
use super::{tailfile, LogLine};

/// Followers' channel capacity. Roughly one ring's worth: a follower that falls
/// further behind than the whole live tail gets `Lagged` and should re-sync
/// with a fresh `follow`; holding more would only grow memory for a client that
/// isn't keeping up anyway (each slot can hold a line of up to max_line_bytes).
pub const FOLLOW_CAPACITY: usize = 1024;

/// One append's lines (one pipe read, or a note) as raw bytes: exactly what
/// went to the file, each line followed by its `\n`. Lines become text
/// (UTF-8, lossy) only when someone reads them, so the capture path does no
/// per-line allocation or decoding.
#[derive(Debug)]
struct Block {
    bytes: Vec<u8>,
    /// Where each line's `\n` sits in `bytes`.
    ends: Vec<usize>,
    first_seq: u64,
    /// When aikore read the lines: one clock read per append, not per line.
    ts_ms: i64,
    /// Whether the lines reached the file: `tail` lines up the ring against
    /// the file's end, and lines lost to a write error aren't there.
    in_file: bool,
}

impl Block {
    fn line(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] + 1 };
        &self.bytes[start..self.ends[i]]
    }

    fn log_line(&self, i: usize) -> LogLine {
        LogLine {
            seq: self.first_seq + i as u64,
            ts_ms: self.ts_ms,
            text: String::from_utf8_lossy(self.line(i)).into_owned(),
        }
    }
}

/// The live tail: the last `ring_lines` lines, kept as the blocks they came
/// in. The first `skip` lines of the front block have already left it.
#[derive(Debug, Default)]
struct Ring {
    blocks: VecDeque<Block>,
    skip: usize,
    len: usize,
}

impl Ring {
    fn push(&mut self, block: Block, cap: usize) {
        if cap == 0 || block.ends.is_empty() {
            return;
        }
        self.len += block.ends.len();
        self.blocks.push_back(block);
        while self.len > cap {
            let Some(front) = self.blocks.front() else { break };
            let live = front.ends.len() - self.skip;
            let excess = self.len - cap;
            if excess >= live {
                self.blocks.pop_front();
                self.skip = 0;
                self.len -= live;
            } else {
                self.skip += excess;
                self.len -= excess;
            }
        }
    }

    fn clear(&mut self) {
        *self = Ring::default();
    }

    fn first_seq(&self) -> Option<u64> {
        self.blocks.front().map(|b| b.first_seq + self.skip as u64)
    }

    /// Lines of the ring that reached the file.
    fn in_file(&self) -> usize {
        let mut skip = self.skip;
        let mut count = 0;
        for b in &self.blocks {
            if b.in_file {
                count += b.ends.len() - skip;
            }
            skip = 0;
        }
        count
    }

    /// The last `n` lines (at most the ring's), oldest first, decoded.
    fn last(&self, n: usize) -> Vec<LogLine> {
        let mut want = n.min(self.len);
        let mut parts: Vec<(&Block, usize)> = Vec::new();
        for (index, b) in self.blocks.iter().enumerate().rev() {
            if want == 0 {
                break;
            }
            let live = b.ends.len() - if index == 0 { self.skip } else { 0 };
            let take = want.min(live);
            parts.push((b, b.ends.len() - take));
            want -= take;
        }
        let mut out = Vec::with_capacity(n.min(self.len));
        for (b, from) in parts.into_iter().rev() {
            out.extend((from..b.ends.len()).map(|i| b.log_line(i)));
        }
        out
    }
}

#[derive(Debug)]
struct State {
    path: PathBuf,
    file: Option<File>,
    file_len: u64,
    ring: Ring,
    next_seq: u64,
    bytes_written: u64,
    /// Set by `LogHub::remove`: later lines (from a task still draining a pipe)
    /// must not recreate the file.
    retired: bool,
    /// Only the first write error of a streak is reported, so a full disk
    /// doesn't turn every child line into a warning.
    write_failing: bool,
    /// Given to files this module creates (LogConfig::owner).
    owner: Option<(u32, u32)>,
    /// The global retention with this unit's keys applied.
    retention: Retention,
    /// The last rotation's slow part (deleting, compressing), on a helper
    /// thread; waited for before the file set is renamed again.
    rotation_job: Option<std::thread::JoinHandle<()>>,
}

#[derive(Debug)]
pub(crate) struct UnitLog {
    state: Mutex<State>,
    /// Made by the first follower: a channel preallocates its
    /// [`FOLLOW_CAPACITY`] slots (~80 KiB), which most units, never
    /// followed, don't need (issue 15: memory per idle unit).
    tx: std::sync::OnceLock<broadcast::Sender<LogLine>>,
}

impl UnitLog {
    pub(crate) fn new(path: PathBuf, owner: Option<(u32, u32)>, retention: Retention) -> Self {
        Self {
            state: Mutex::new(State {
                path,
                file: None,
                file_len: 0,
                ring: Ring::default(),
                // 0 is left for lines read back from files with no known seq.
                next_seq: 1,
                bytes_written: 0,
                retired: false,
                write_failing: false,
                owner,
                retention,
                rotation_job: None,
            }),
            tx: std::sync::OnceLock::new(),
        }
    }

    fn followers(&self) -> usize {
        self.tx.get().map_or(0, broadcast::Sender::receiver_count)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves at worst a half-written batch;
        // the log is still usable, so don't propagate the poison.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets this unit's retention (the global one with its keys applied);
    /// it applies from the next rotation.
    pub(crate) fn set_retention(&self, retention: Retention) {
        self.lock().retention = retention;
    }

    /// Starts a run: `fresh` rotates the previous log (to `.1`, within the
    /// retention) and begins an empty file; otherwise the current file continues.
    pub(crate) fn begin_run(&self, fresh: bool) -> io::Result<()> {
        let mut st = self.lock();
        st.retired = false;
        // A new run starts with the last run's rotations finished.
        st.wait_rotation();
        if fresh {
            st.file = None;
            st.file_len = 0;
            let job = retention::rotate(&st.path, &st.retention)?;
            st.rotation_job = job.spawn();
        }
        st.open()
    }

    /// Appends a batch of lines (from one read of one pipe) as a unit, so
    /// lines from concurrent sources are never interleaved mid-line.
    pub(crate) fn append<'a>(&self, lines: impl IntoIterator<Item = &'a [u8]>, ring_lines: usize) {
        let mut bytes = Vec::new();
        let mut ends = Vec::new();
        for line in lines {
            bytes.extend_from_slice(line);
            ends.push(bytes.len());
            bytes.push(b'\n');
        }
        self.append_joined(&bytes, &ends, ring_lines);
    }

    /// [`append`](Self::append) for lines already joined: `bytes` holds each
    /// line followed by `\n`, `ends` where each `\n` sits. One write per
    /// batch (or per rotation) and one ring entry per batch: a chatty child
    /// costs a syscall and a copy per pipe read, no allocation per line.
    pub(crate) fn append_joined(&self, bytes: &[u8], ends: &[usize], ring_lines: usize) {
        if ends.is_empty() {
            return;
        }
        let ts_ms = now_ms();
        let mut st = self.lock();
        if st.retired {
            return;
        }
        // The size check needs the length of a file left by an earlier run;
        // an open error here resurfaces (and is reported) at the write.
        let _ = st.open();
        let max_file_bytes = st.retention.max_file_bytes;
        let mut first = 0;
        let mut start = 0;
        while first < ends.len() {
            // Rotate before the line that would cross the limit, so it goes
            // whole into the new file. An empty file takes any line, so an
            // oversized line can't rotate forever.
            let room = max_file_bytes.saturating_sub(st.file_len);
            let mut last = first + ends[first..].partition_point(|&e| (e + 1 - start) as u64 <= room);
            if last == first {
                if st.file_len > 0 {
                    st.rotate();
                    continue;
                }
                last = first + 1;
            }
            let end = ends[last - 1] + 1;
            let ok = st.write_out(&bytes[start..end]);
            // Lines the ring would drop again at once, with nobody following,
            // are not even copied: only the file gets them.
            let keep = if self.followers() > 0 { first } else { first.max(last.saturating_sub(ring_lines)) };
            let from = if keep == 0 { 0 } else { ends[keep - 1] + 1 }.max(start);
            let block = Block {
                bytes: bytes[from..end].to_vec(),
                ends: ends[keep..last].iter().map(|&e| e - from).collect(),
                first_seq: st.next_seq + (keep - first) as u64,
                ts_ms,
                in_file: ok,
            };
            st.next_seq += (last - first) as u64;
            self.publish(&mut st, block, ring_lines);
            if last < ends.len() {
                st.rotate();
            }
            first = last;
            start = end;
        }
    }

    /// Hands a written block to followers and the ring, after the file write
    /// so a follower never sees a line the file (in order) doesn't have.
    fn publish(&self, st: &mut State, block: Block, ring_lines: usize) {
        if let Some(tx) = self.tx.get().filter(|tx| tx.receiver_count() > 0) {
            for i in 0..block.ends.len() {
                // Err only means the last follower left meanwhile.
                let _ = tx.send(block.log_line(i));
            }
        }
        st.ring.push(block, ring_lines);
    }

    /// The last `n` lines: the ring, topped up from the files when it holds
    /// fewer. Followers need the ring and the subscription taken together,
    /// hence the optional subscribe under the same lock.
    pub(crate) fn tail(&self, n: usize, subscribe: bool) -> (Vec<LogLine>, Option<broadcast::Receiver<LogLine>>) {
        let st = self.lock();
        let rx = subscribe.then(|| self.tx.get_or_init(|| broadcast::channel(FOLLOW_CAPACITY).0).subscribe());
        let ring_part = st.ring.last(n);
        let from_ring = ring_part.len();
        if from_ring == n {
            return (ring_part, rx);
        }
        // The ring's lines that reached the file are the file's last lines
        // (both are suffixes of everything written), so skip that many from
        // the file's end to find what precedes the ring.
        let in_file = st.ring.in_file();
        // Saturating: a caller may ask for "everything" with usize::MAX.
        let want = (n - from_ring).saturating_add(in_file);
        let mut older = match st.file_lines(want) {
            Ok(lines) => lines,
            Err(e) => {
                tracing::warn!(path = %st.path.display(), error = %e, "reading log tail from file");
                Vec::new()
            }
        };
        older.truncate(older.len().saturating_sub(in_file));
        // File lines get seqs just below the ring's first, so a client sorting
        // or de-duplicating by seq keeps them in order; 0 where that runs out.
        let first_seq = st.ring.first_seq().unwrap_or(st.next_seq);
        let count = older.len() as u64;
        let mut out: Vec<LogLine> = older
            .into_iter()
            .enumerate()
            .map(|(i, raw)| LogLine {
                seq: (first_seq + i as u64).saturating_sub(count),
                ts_ms: 0,
                text: String::from_utf8_lossy(&raw).into_owned(),
            })
            .collect();
        out.extend(ring_part);
        (out, rx)
    }

    pub(crate) fn bytes_written(&self) -> u64 {
        self.lock().bytes_written
    }

    /// Stops writing and deletes the files.
    pub(crate) fn retire(&self) -> io::Result<()> {
        let mut st = self.lock();
        st.retired = true;
        st.file = None;
        st.ring.clear();
        st.wait_rotation();
        for path in retention::all_files(&st.path)? {
            remove_if_exists(&path)?;
        }
        Ok(())
    }

    /// Moves the files to `new_path` (and its rotated ones); an open handle
    /// keeps appending to the same, now renamed, file.
    pub(crate) fn move_to(&self, new_path: PathBuf) -> io::Result<()> {
        let mut st = self.lock();
        st.wait_rotation();
        retention::move_all(&st.path, &new_path)?;
        st.path = new_path;
        Ok(())
    }
}

impl State {
    fn open(&mut self) -> io::Result<()> {
        if self.file.is_none() {
            // Never through a symlink, should one ever get into the logs dir.
            let file = {
                use std::os::unix::fs::OpenOptionsExt;
                OpenOptions::new().create(true).append(true).custom_flags(libc::O_NOFOLLOW).open(&self.path)?
            };
            self.file_len = file.metadata()?.len();
            if let (Some((uid, gid)), 0) = (self.owner, self.file_len) {
                // Best effort: a failed chown must not cost the log.
                let _ = std::os::unix::fs::fchown(&file, Some(uid), Some(gid));
            }
            self.file = Some(file);
        }
        Ok(())
    }

    fn write_out(&mut self, buf: &[u8]) -> bool {
        if buf.is_empty() {
            return true;
        }
        let result = self.open().and_then(|()| match self.file.as_mut() {
            Some(f) => f.write_all(buf),
            None => Err(io::Error::other("log file not open")),
        });
        match result {
            Ok(()) => {
                self.file_len += buf.len() as u64;
                self.bytes_written += buf.len() as u64;
                self.write_failing = false;
                true
            }
            Err(e) => {
                if !self.write_failing {
                    tracing::warn!(path = %self.path.display(), error = %e, "writing unit log; lines kept in memory only");
                }
                self.write_failing = true;
                // Reopen next time: the file may have been removed or the
                // handle broken.
                self.file = None;
                false
            }
        }
    }

    fn rotate(&mut self) {
        self.wait_rotation();
        match retention::rotate(&self.path, &self.retention) {
            Ok(job) => {
                self.file = None;
                self.rotation_job = job.spawn();
            }
            Err(e) => {
                // Keep appending to the same file rather than lose lines;
                // counting from zero again means the next attempt comes a
                // whole file later, not on every line.
                tracing::warn!(path = %self.path.display(), error = %e, "rotating unit log");
            }
        }
        self.file_len = 0;
    }

    /// Waits for the previous rotation's helper thread: it may still be
    /// compressing `.1`, which the next rotation renames.
    fn wait_rotation(&mut self) {
        if let Some(job) = self.rotation_job.take() {
            if job.join().is_err() {
                tracing::warn!(path = %self.path.display(), "log rotation helper panicked");
            }
        }
    }

    /// The last `n` lines of the files: the newest rotated one (inflated
    /// whole if compressed: one file's worth at most) and the current one.
    fn file_lines(&self, n: usize) -> io::Result<Vec<Vec<u8>>> {
        match retention::newest_rotated(&self.path) {
            Some((gz_path, true)) => {
                let mut lines = tailfile::last_lines(&[&self.path], n)?;
                if lines.len() < n {
                    let bytes =
                        retention::read_gz(&gz_path, self.retention.max_file_bytes.saturating_mul(2).max(64 << 20))?;
                    let mut older = tailfile::last_lines_of_bytes(&bytes, n - lines.len());
                    older.append(&mut lines);
                    lines = older;
                }
                Ok(lines)
            }
            Some((plain, false)) => tailfile::last_lines(&[&plain, &self.path], n),
            None => tailfile::last_lines(&[&self.path], n),
        }
    }
}

/// Whether the log at `path` has any file: the current one or a rotated one.
pub(crate) fn has_files(path: &Path) -> bool {
    path.exists() || retention::list_rotated(path).is_ok_and(|r| !r.is_empty())
}

fn remove_if_exists(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
