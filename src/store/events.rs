//! The event journal: an append-only log of transitions, exits, restarts and
//! config changes, bounded by pruning the oldest entries.

use rusqlite::{params, Row};

use super::{sql_limit, EventRow, Result, Store};

/// Appends between automatic prunes: often enough that the journal overshoots
/// its retention by at most this many rows, rarely enough that the delete's
/// index scan costs nothing noticeable per append.
const PRUNE_EVERY: u32 = 1000;

fn event_from_row(r: &Row<'_>) -> rusqlite::Result<EventRow> {
    Ok(EventRow { id: r.get(0)?, ts_ms: r.get(1)?, unit: r.get(2)?, kind: r.get(3)?, detail: r.get(4)? })
}

impl Store {
    /// Appends an event and returns its id (ids only grow, even across
    /// pruning). `unit` is None for events about aikore itself.
    pub fn append_event(&mut self, ts_ms: i64, unit: Option<&str>, kind: &str, detail: &str) -> Result<i64> {
        self.conn.execute(
            "INSERT INTO events (ts_ms, unit, kind, detail) VALUES (?1, ?2, ?3, ?4)",
            params![ts_ms, unit, kind, detail],
        )?;
        let id = self.conn.last_insert_rowid();
        self.appends_since_prune += 1;
        if self.appends_since_prune >= PRUNE_EVERY {
            // The event is already stored; a failed prune only delays
            // retention until the next round, so it must not fail the append.
            if let Err(e) = self.prune_events(self.event_retention) {
                tracing::warn!(error = %e, "event journal prune failed");
            }
        }
        Ok(id)
    }

    /// Journal entries, oldest first, optionally only one unit's.
    ///
    /// With `after_id` this pages forward: the first `limit` events newer than
    /// that id (how a follower catches up). Without it, the newest `limit`
    /// events (how a view opens).
    pub fn events(&self, unit: Option<&str>, after_id: Option<i64>, limit: usize) -> Result<Vec<EventRow>> {
        let limit = sql_limit(limit);
        // Separate statements per filter rather than `?1 IS NULL OR unit = ?1`,
        // which would keep SQLite from using the (unit, id) index.
        let unit_filter = if unit.is_some() { "unit = ?1" } else { "?1 IS NULL" };
        let mut rows: Vec<EventRow> = match after_id {
            Some(after) => {
                let mut stmt = self.conn.prepare_cached(&format!(
                    "SELECT id, ts_ms, unit, kind, detail FROM events
                     WHERE {unit_filter} AND id > ?2 ORDER BY id ASC LIMIT ?3"
                ))?;
                let rows =
                    stmt.query_map(params![unit, after, limit], event_from_row)?.collect::<rusqlite::Result<_>>()?;
                rows
            }
            None => {
                let mut stmt = self.conn.prepare_cached(&format!(
                    "SELECT id, ts_ms, unit, kind, detail FROM events
                     WHERE {unit_filter} ORDER BY id DESC LIMIT ?2"
                ))?;
                let rows = stmt.query_map(params![unit, limit], event_from_row)?.collect::<rusqlite::Result<_>>()?;
                rows
            }
        };
        if after_id.is_none() {
            // Fetched newest first to apply the limit at the right end.
            rows.reverse();
        }
        Ok(rows)
    }

    /// Deletes all but the newest `keep` events; returns how many went.
    pub fn prune_events(&mut self, keep: usize) -> Result<usize> {
        self.appends_since_prune = 0;
        // The subquery finds the newest id that falls outside the window;
        // with fewer than `keep + 1` events it is NULL and nothing matches.
        let deleted = self.conn.execute(
            "DELETE FROM events WHERE id <= (
                SELECT id FROM events ORDER BY id DESC LIMIT 1 OFFSET ?1)",
            [sql_limit(keep)],
        )?;
        Ok(deleted)
    }
}
