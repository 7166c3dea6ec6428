//! Per-unit log capture: file with rotation, ring buffer of the tail, followers.
//!
//! Every unit's processes write stdout and stderr into one pipe (so lines keep
//! their order); [`LogHub::attach`] drains it into the unit's log. Each line
//! goes, in order and under one lock, to `<dir>/<unit>.log` (size-rotated to
//! `.log.1` and on, see [`retention`]) and to a ring of the last lines, which
//! followers read as it fills ([`Follower`]): nothing waits on a follower,
//! and one that falls further behind than the ring gets `Lagged`.

mod capture;
mod follow;
pub mod retention;
mod split;
mod tailfile;
mod unit;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;

use unit::UnitLog;

pub use follow::Follower;
pub use retention::{Retention, RetentionOverride};

/// Marks aikore's own lines in a unit's log, so they can't be mistaken for the
/// program's output.
pub const NOTE_PREFIX: &str = "[aikore]";

/// Limits for every unit's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Files' size, count and compression, for units without their own
    /// `LogMaxFileSize=`/`LogMaxFiles=`/`LogCompress=`.
    pub retention: Retention,
    /// Lines kept in memory per unit for tails and new followers.
    pub ring_lines: usize,
    /// A longer line is split, so one runaway line can't eat memory.
    pub max_line_bytes: usize,
    /// (uid, gid) new log files are given, if any. The daemon gives none:
    /// logs are aikore's own state, root's (docs/security.md).
    pub owner: Option<(u32, u32)>,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            retention: Retention::default(),
            // A screenful many times over; what a dashboard or `logs` shows
            // without touching disk.
            ring_lines: 1000,
            // Far beyond any human-readable line (stack traces, JSON blobs),
            // while 1000 ring lines stay bounded at ~16 MiB in the worst case.
            max_line_bytes: 16 * 1024,
            owner: None,
        }
    }
}

/// One line of a unit's output (or an aikore note).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct LogLine {
    /// Per unit, increasing by one per line since aikore started; lines read
    /// back from files get lower numbers, or 0.
    pub seq: u64,
    /// Milliseconds since the Unix epoch when aikore read the line; 0 for
    /// lines read back from files.
    pub ts_ms: i64,
    /// The line as UTF-8 (invalid bytes replaced), without its newline. The
    /// file keeps the original bytes.
    pub text: String,
}

/// All units' logs under one directory. Shared as `Arc<LogHub>`.
#[derive(Debug)]
pub struct LogHub {
    dir: PathBuf,
    config: LogConfig,
    units: Mutex<HashMap<String, Arc<UnitLog>>>,
}

impl LogHub {
    /// A hub writing under `dir` (created if missing). Existing files are
    /// picked up: appended to, and read back by `tail`.
    pub fn new(dir: PathBuf, config: LogConfig) -> io::Result<Arc<LogHub>> {
        std::fs::create_dir_all(&dir)?;
        // The daemon's alone: apps print tokens and URLs with secrets into
        // their logs, and an instance user must not read another's (or
        // NGINX's). The dashboard and the CLI serve them to whoever logs in.
        if std::fs::symlink_metadata(&dir)?.is_dir() {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        }
        retention::clean_leftovers(&dir);
        Ok(Arc::new(LogHub { dir, config, units: Mutex::new(HashMap::new()) }))
    }

    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    /// `<dir>/<unit>.log`: the current file of a unit's log (`.1` appended for
    /// the previous one).
    pub fn log_path(&self, unit: &str) -> io::Result<PathBuf> {
        check_name(unit)?;
        Ok(self.dir.join(format!("{unit}.log")))
    }

    fn units(&self) -> MutexGuard<'_, HashMap<String, Arc<UnitLog>>> {
        // The map stays consistent at every await-free step; ignore poison.
        self.units.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn unit(&self, unit: &str) -> io::Result<Arc<UnitLog>> {
        let path = self.log_path(unit)?;
        let mut units = self.units();
        Ok(Arc::clone(units.entry(unit.to_owned()).or_insert_with(|| self.new_unit_log(path))))
    }

    fn new_unit_log(&self, path: PathBuf) -> Arc<UnitLog> {
        Arc::new(UnitLog::new(path, self.config.owner, self.config.retention))
    }

    /// Applies `unit`'s own retention keys over the global setting, from its
    /// next rotation on (call before [`begin_run`](Self::begin_run) so a
    /// fresh run's rotation already keeps the unit's count).
    pub fn set_retention(&self, unit: &str, keys: &RetentionOverride) {
        if let Ok(log) = self.unit(unit) {
            log.set_retention(self.config.retention.with(keys));
        }
    }

    /// Starts a run of `unit`. `fresh` (a start by a user or at boot) keeps
    /// the previous run's log as `<unit>.log.1` and begins an empty file; an
    /// automatic restart (`fresh == false`) continues the same file. The ring
    /// is kept either way: it is the live tail.
    pub fn begin_run(&self, unit: &str, fresh: bool) -> io::Result<()> {
        self.unit(unit)?.begin_run(fresh)
    }

    /// Drains `read_end` (a pipe shared by a process's stdout and stderr) into
    /// `unit`'s log until every writer has closed it. Call from within a tokio
    /// runtime. Several pipes may feed one unit at once; their lines are
    /// written whole, never interleaved mid-line.
    pub fn attach(&self, unit: &str, read_end: OwnedFd) -> tokio::task::JoinHandle<()> {
        let config = self.config.clone();
        match self.unit(unit) {
            Ok(log) => tokio::spawn(capture::drain(log, read_end, config)),
            Err(e) => {
                tracing::warn!(unit, error = %e, "not capturing output of invalid unit name");
                // Dropping the read end makes the child's writes fail (EPIPE)
                // instead of blocking on a full pipe nobody reads.
                drop(read_end);
                tokio::spawn(async {})
            }
        }
    }

    /// Writes aikore's own `text` into `unit`'s log, like a captured line but
    /// prefixed with [`NOTE_PREFIX`]; one line per line of `text`.
    pub fn note(&self, unit: &str, text: &str) {
        match self.unit(unit) {
            Ok(log) => {
                let mut lines: Vec<String> = text.lines().map(|l| format!("{NOTE_PREFIX} {l}")).collect();
                if lines.is_empty() {
                    // Even an empty note marks the moment it was made.
                    lines.push(NOTE_PREFIX.to_owned());
                }
                log.append(lines.iter().map(|l| l.as_bytes()), self.config.ring_lines);
            }
            Err(e) => tracing::warn!(unit, error = %e, "note for invalid unit name dropped"),
        }
    }

    /// The last `n` lines of `unit`'s log, oldest first: from memory, topped
    /// up from `<unit>.log` and `.log.1` when the ring holds fewer (e.g. after
    /// aikore restarted). That top-up reads only the files' ends, but it is
    /// blocking file I/O under the unit's lock: callers asking for more than
    /// the ring holds should bound `n`.
    pub fn tail(&self, unit: &str, n: usize) -> Vec<LogLine> {
        match self.unit(unit) {
            Ok(log) => log.tail(n, false).0,
            Err(_) => Vec::new(),
        }
    }

    /// The last `tail` lines and a follower of every line after them, with
    /// no gap or duplicate between the two. A follower that falls further
    /// behind than the ring ([`LogConfig::ring_lines`]) gets
    /// `RecvError::Lagged` and carries on. An invalid unit name gives no
    /// lines and a closed follower.
    pub fn follow(&self, unit: &str, tail: usize) -> (Vec<LogLine>, Follower) {
        match self.unit(unit) {
            Ok(log) => match log.tail(tail, true) {
                (lines, Some((next_seq, wake))) => (lines, Follower::new(log, next_seq, wake)),
                // tail() always subscribes when asked to.
                (lines, None) => (lines, Follower::closed()),
            },
            Err(_) => (Vec::new(), Follower::closed()),
        }
    }

    /// Bytes written to `unit`'s log files since this hub was created.
    pub fn bytes_written(&self, unit: &str) -> u64 {
        let units = self.units();
        units.get(unit).map_or(0, |log| log.bytes_written())
    }

    /// Forgets `unit` and deletes its log files. A capture still draining a
    /// pipe for it writes nowhere from then on.
    pub fn remove(&self, unit: &str) -> io::Result<()> {
        let path = self.log_path(unit)?;
        let removed = self.units().remove(unit);
        match removed {
            Some(log) => log.retire(),
            None => {
                // Files of a unit this hub never touched (left by an earlier
                // run of aikore).
                self.new_unit_log(path).retire()
            }
        }
    }

    /// Moves `old`'s log (files, ring and followers) to `new`. Fails if `new`
    /// already has a log.
    pub fn rename(&self, old: &str, new: &str) -> io::Result<()> {
        let new_path = self.log_path(new)?;
        let old_path = self.log_path(old)?;
        if old == new {
            return Ok(());
        }
        // Held throughout, so no capture can create `new` in between.
        let mut units = self.units();
        if units.contains_key(new) || unit::has_files(&new_path) {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("unit {new} already has a log")));
        }
        let log = match units.remove(old) {
            Some(log) => log,
            None => self.new_unit_log(old_path),
        };
        match log.move_to(new_path) {
            Ok(()) => {
                units.insert(new.to_owned(), log);
                Ok(())
            }
            Err(e) => {
                // Files that did move stay readable by path; the live log
                // stays with the unit that still has its name.
                units.insert(old.to_owned(), log);
                Err(e)
            }
        }
    }
}

/// Unit names are validated upstream; this only guarantees a name can never
/// address a path outside the log directory.
fn check_name(unit: &str) -> io::Result<()> {
    if unit.is_empty() || unit == "." || unit == ".." || unit.contains('/') || unit.contains('\0') {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("invalid unit name for a log: {unit:?}")));
    }
    Ok(())
}
