//! The runtime-state database: everything about units that changes while
//! aikore runs (status, pids, restart counts, port leases, the event journal,
//! settings) lives in one SQLite file, while what a unit *is* stays in its unit
//! file. This module owns that file, its schema and its migrations; nothing else
//! opens it.
//!
//! `Store` is the synchronous API over one connection. `StoreHandle` gives async
//! code access to it through a dedicated thread, so SQLite never blocks a tokio
//! worker and the `!Sync` connection never needs a lock.

mod displays;
mod events;
mod handle;
mod ports;
mod schema;
mod units;

#[cfg(test)]
mod tests;

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension};
use serde::Serialize;

pub use displays::DisplayLease;
pub use handle::StoreHandle;

/// How long a statement waits on a lock held by another connection (the CLI
/// or a backup tool reading the file) before failing: long enough to ride out
/// a checkpoint, short enough that a stuck reader shows up as an error.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Events kept by the automatic journal pruning: months of transitions for a
/// busy box, still only tens of megabytes on disk.
pub const DEFAULT_EVENT_RETENTION: usize = 100_000;

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("database schema version {found} is newer than this aikore supports ({supported})")]
    SchemaTooNew { found: i64, supported: i64 },
    #[error("port {port} is already leased to {holder}")]
    PortTaken { port: u16, holder: String },
    #[error("no free port left in {start}-{end}")]
    PortPoolExhausted { start: u16, end: u16 },
    #[error("no free X display left in :{start}-:{end}")]
    DisplayPoolExhausted { start: u16, end: u16 },
    #[error("the store thread has stopped")]
    Closed,
    #[error("store i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// One unit's runtime state as persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnitRow {
    pub name: String,
    pub kind: String,
    pub status: String,
    pub status_detail: Option<String>,
    pub pid: Option<i32>,
    pub pgid: Option<i32>,
    pub restarts: u32,
    pub last_exit: Option<String>,
    pub since_ms: Option<i64>,
    pub started_ms: Option<i64>,
    pub archived: bool,
}

/// One journal entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventRow {
    pub id: i64,
    pub ts_ms: i64,
    pub unit: Option<String>,
    pub kind: String,
    pub detail: String,
}

/// What `Store::reconcile` found and changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReconcileReport {
    /// Units whose file is gone, archived by this reconcile (sorted).
    pub archived: Vec<String>,
    /// Rows that still carried a pid from the previous run, as they were before
    /// the reset; the caller decides whether to hunt for stray processes.
    pub leftovers: Vec<UnitRow>,
    /// Units seen for the first time (in the order given).
    pub added: Vec<String>,
}

/// A unit's full runtime state as the supervisor knows it, written as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateUpdate {
    pub name: String,
    pub kind: String,
    pub status: String,
    pub status_detail: Option<String>,
    pub pid: Option<i32>,
    pub pgid: Option<i32>,
    pub restarts: u32,
    pub last_exit: Option<String>,
    pub since_ms: i64,
    pub started_ms: Option<i64>,
}

pub struct Store {
    conn: Connection,
    /// Appends since the journal was last pruned; pruning on every insert would
    /// turn each append into a scan.
    appends_since_prune: u32,
    event_retention: usize,
}

impl Store {
    /// Opens (creating if needed) the database at `path` and migrates it.
    pub fn open(path: &Path) -> Result<Store> {
        if let Some(parent) = path.parent() {
            if !parent.as_os_str().is_empty() {
                std::fs::create_dir_all(parent)?;
            }
        }
        let conn = Connection::open(path)?;
        // WAL lets readers (the CLI, a backup) proceed while the supervisor
        // writes; a filesystem without shared memory support falls back to
        // another mode, which is slower but still correct.
        let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(path = %path.display(), mode, "sqlite refused WAL journal mode");
        }
        Self::from_connection(conn)
    }

    /// A private in-memory database, for tests and dry runs.
    pub fn open_in_memory() -> Result<Store> {
        Self::from_connection(Connection::open_in_memory()?)
    }

    fn from_connection(mut conn: Connection) -> Result<Store> {
        // NORMAL is durable across process crashes in WAL mode; only a power
        // loss can drop the last transactions, and runtime state is rebuilt on
        // start anyway.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // SQLite's default page cache may grow to 2 MiB; the database is a few
        // hundred KiB of rows read at boot and appended to after, so 256 KiB
        // is plenty and caps what an idle daemon holds (issue 15).
        conn.pragma_update(None, "cache_size", -256)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        schema::migrate(&mut conn)?;
        Ok(Store { conn, appends_since_prune: 0, event_retention: DEFAULT_EVENT_RETENTION })
    }

    /// How many events the automatic pruning keeps.
    pub fn set_event_retention(&mut self, keep: usize) {
        self.event_retention = keep;
    }

    pub fn setting(&self, key: &str) -> Result<Option<String>> {
        Ok(self.conn.query_row("SELECT value FROM settings WHERE key = ?1", [key], |r| r.get(0)).optional()?)
    }

    pub fn set_setting(&mut self, key: &str, value: &str) -> Result<()> {
        self.conn.execute(
            "INSERT INTO settings (key, value) VALUES (?1, ?2)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [key, value],
        )?;
        Ok(())
    }

    pub fn delete_setting(&mut self, key: &str) -> Result<()> {
        self.conn.execute("DELETE FROM settings WHERE key = ?1", [key])?;
        Ok(())
    }

    /// Every (key, value) whose key starts with `prefix` (a literal, not a pattern).
    pub fn settings_with_prefix(&self, prefix: &str) -> Result<Vec<(String, String)>> {
        let mut stmt =
            self.conn.prepare("SELECT key, value FROM settings WHERE substr(key, 1, length(?1)) = ?1 ORDER BY key")?;
        let rows = stmt.query_map([prefix], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<std::result::Result<Vec<_>, _>>()?)
    }
}

/// Wall-clock milliseconds, for bookkeeping columns the callers do not supply.
/// A clock before 1970 is a broken clock; 0 keeps the row writable.
fn wall_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)).unwrap_or(0)
}

/// SQLite takes limits as i64; anything past i64::MAX means "no limit" anyway.
fn sql_limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
