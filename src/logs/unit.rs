//! One unit's log: its file (with size rotation), the ring buffer of the live
//! tail, and the wake-up of followers — all updated together under one lock
//! so the three never disagree about order.
//!
//! Followers read the ring itself: an append costs the writer one wake-up
//! per pipe read whatever the number of followers and lines, and a follower
//! that falls further behind than the ring is told how many lines it missed.
//! Nothing is queued per follower, so a stalled one holds no memory.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

use super::retention::{self, Retention};
use super::{tailfile, LogLine};

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
    /// Shared with followers, who decode their lines outside the lock.
    blocks: VecDeque<Arc<Block>>,
    skip: usize,
    len: usize,
}

impl Ring {
    fn push(&mut self, block: Block, cap: usize) {
        if cap == 0 || block.ends.is_empty() {
            return;
        }
        self.len += block.ends.len();
        self.blocks.push_back(Arc::new(block));
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

    /// Up to `max` lines from `seq` on, as (block, first index, end index)
    /// runs to decode later; or, when the ring no longer holds `seq` (or
    /// never got the lines after it), `Err` with the first seq it does hold.
    fn runs_after(&self, seq: u64, max: usize) -> Result<Vec<(Arc<Block>, usize, usize)>, u64> {
        let mut runs = Vec::new();
        let mut next = seq;
        let mut left = max;
        for (index, b) in self.blocks.iter().enumerate() {
            let first = b.first_seq + if index == 0 { self.skip as u64 } else { 0 };
            let end_seq = b.first_seq + b.ends.len() as u64;
            if end_seq <= next {
                continue;
            }
            if first > next {
                // Lines between went to the file only (the ring dropped
                // them at once): whatever was read so far goes first.
                return if runs.is_empty() { Err(first) } else { Ok(runs) };
            }
            if left == 0 {
                break;
            }
            let from = (next - b.first_seq) as usize;
            let to = b.ends.len().min(from + left);
            runs.push((Arc::clone(b), from, to));
            left -= to - from;
            next = b.first_seq + to as u64;
        }
        Ok(runs)
    }
}

/// What a follower gets from one look at the ring.
pub(crate) enum Pull {
    /// Lines from the asked seq on, oldest first (none: nothing new yet).
    Lines(Vec<LogLine>),
    /// The ring starts after the asked seq: the follower missed the lines
    /// before this seq.
    Missed(u64),
    /// The log was removed.
    Closed,
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
    /// Wakes followers after an append; made by the first follower, so a
    /// unit nobody follows carries none (issue 15: memory per idle unit).
    wake: std::sync::OnceLock<watch::Sender<()>>,
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
            wake: std::sync::OnceLock::new(),
        }
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
            // Lines the ring would drop again at once are not even copied:
            // only the file gets them (followers read the ring, so a flood
            // tells them how many they missed).
            let keep = first.max(last.saturating_sub(ring_lines));
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

    /// Puts a written block in the ring and wakes followers, after the file
    /// write so a follower never sees a line the file (in order) doesn't have.
    fn publish(&self, st: &mut State, block: Block, ring_lines: usize) {
        st.ring.push(block, ring_lines);
        self.wake_followers();
    }

    fn wake_followers(&self) {
        if let Some(wake) = self.wake.get() {
            wake.send_replace(());
        }
    }

    /// Up to `max` lines from `seq` on, for a follower. Decoding happens
    /// after the lock is released: the writer never waits on a follower's
    /// UTF-8 work.
    pub(crate) fn pull(&self, seq: u64, max: usize) -> Pull {
        let runs = {
            let st = self.lock();
            if st.retired {
                return Pull::Closed;
            }
            if seq >= st.next_seq {
                return Pull::Lines(Vec::new());
            }
            match st.ring.runs_after(seq, max) {
                Ok(runs) if runs.is_empty() => return Pull::Missed(st.next_seq),
                Ok(runs) => runs,
                Err(first) => return Pull::Missed(first),
            }
        };
        Pull::Lines(runs.iter().flat_map(|(b, from, to)| (*from..*to).map(|i| b.log_line(i))).collect())
    }

    /// The last `n` lines: the ring, topped up from the files when it holds
    /// fewer. A follower needs the lines and the seq it continues from taken
    /// together, hence the optional subscription under the same lock: the
    /// seq of the next line, and a receiver of wake-ups.
    pub(crate) fn tail(&self, n: usize, subscribe: bool) -> (Vec<LogLine>, Option<(u64, watch::Receiver<()>)>) {
        let st = self.lock();
        let rx = subscribe.then(|| (st.next_seq, self.wake.get_or_init(|| watch::channel(()).0).subscribe()));
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
        // Followers see `retired` at their next look and end.
        self.wake_followers();
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
