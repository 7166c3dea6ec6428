//! Schema versions, tracked in `PRAGMA user_version`: migration `i` takes the
//! database from version `i` to `i + 1`. Append new migrations; never edit one
//! that has shipped, since existing databases already ran it.

use rusqlite::Connection;

use super::{Result, StoreError};

pub(super) const MIGRATIONS: &[&str] = &[
    // v1: runtime state, journal, port leases, settings.
    "CREATE TABLE units (
        name TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        status TEXT NOT NULL,
        status_detail TEXT,
        pid INTEGER,
        pgid INTEGER,
        restarts INTEGER NOT NULL DEFAULT 0,
        last_exit TEXT,
        since_ms INTEGER,
        started_ms INTEGER,
        archived INTEGER NOT NULL DEFAULT 0,
        updated_ms INTEGER
    );
    -- AUTOINCREMENT so ids are never reused after pruning: followers resume
    -- with `after_id` and must not see an old id come back as a new event.
    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        ts_ms INTEGER NOT NULL,
        unit TEXT,
        kind TEXT NOT NULL,
        detail TEXT NOT NULL
    );
    CREATE INDEX events_unit_id ON events (unit, id);
    CREATE TABLE port_leases (
        port INTEGER PRIMARY KEY,
        unit TEXT NOT NULL UNIQUE,
        leased_ms INTEGER NOT NULL
    );
    CREATE TABLE settings (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );",
    // v2: persistent mode's X displays. A unit keeps its row while stopped
    // (released_ms set) so its next start gets the same display back if no
    // running instance took it meanwhile; `ws_port` is its websockify port.
    "CREATE TABLE display_leases (
        display INTEGER PRIMARY KEY,
        unit TEXT NOT NULL UNIQUE,
        ws_port INTEGER NOT NULL,
        leased_ms INTEGER NOT NULL,
        released_ms INTEGER
    );",
];

/// The schema version this build writes.
pub(super) fn supported_version() -> i64 {
    // A handful of migrations; the cast cannot truncate.
    MIGRATIONS.len() as i64
}

pub(super) fn user_version(conn: &Connection) -> Result<i64> {
    Ok(conn.pragma_query_value(None, "user_version", |r| r.get(0))?)
}

/// Brings the database up to `supported_version()`, one transaction per step
/// so a failed migration leaves the previous version intact.
pub(super) fn migrate(conn: &mut Connection) -> Result<()> {
    let found = user_version(conn)?;
    let supported = supported_version();
    if found > supported {
        // An older binary must not write into a schema it does not know.
        return Err(StoreError::SchemaTooNew { found, supported });
    }
    // A negative version was never written by aikore; treat it as empty.
    let start = usize::try_from(found).unwrap_or(0);
    for (from, sql) in (0_i64..).zip(MIGRATIONS).skip(start) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", from + 1)?;
        tx.commit()?;
        tracing::info!(version = from + 1, "store schema migrated");
    }
    Ok(())
}
