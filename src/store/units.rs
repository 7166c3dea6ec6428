//! Per-unit state rows: reconciling them with the unit files on start, and
//! recording what the supervisor reports.

use std::collections::HashSet;

use rusqlite::{params, OptionalExtension, Row};

use super::{wall_ms, ReconcileReport, Result, StateUpdate, Store, UnitRow};

const UNIT_COLUMNS: &str = "name, kind, status, status_detail, pid, pgid, restarts, \
     last_exit, since_ms, started_ms, archived";

/// The status every unit has before the supervisor has done anything with it.
const STOPPED: &str = "stopped";

fn unit_from_row(r: &Row<'_>) -> rusqlite::Result<UnitRow> {
    Ok(UnitRow {
        name: r.get(0)?,
        kind: r.get(1)?,
        status: r.get(2)?,
        status_detail: r.get(3)?,
        pid: r.get(4)?,
        pgid: r.get(5)?,
        restarts: r.get(6)?,
        last_exit: r.get(7)?,
        since_ms: r.get(8)?,
        started_ms: r.get(9)?,
        archived: r.get(10)?,
    })
}

impl Store {
    /// `aikore reload`: rows follow the unit files (added, archived) while the
    /// statuses of running units are left alone. Returns the archived names.
    pub fn reconcile_definitions(&mut self, units: &[(String, String)], now_ms: i64) -> Result<Vec<String>> {
        let tx = self.conn.transaction()?;
        let mut report = ReconcileReport::default();
        sync_definitions(&tx, units, now_ms, &mut report)?;
        tx.commit()?;
        Ok(report.archived)
    }

    /// Makes the state rows match the unit files found on start: `units` is
    /// every defined unit as `(name, kind)`. Runs as one transaction, so a
    /// crash halfway leaves the previous state rather than a mix.
    pub fn reconcile(&mut self, units: &[(String, String)], now_ms: i64) -> Result<ReconcileReport> {
        let tx = self.conn.transaction()?;
        let mut report = ReconcileReport::default();

        // Read before the reset below wipes the pids: these are the only trace
        // of processes a previous aikore may have left running.
        {
            let mut stmt =
                tx.prepare(&format!("SELECT {UNIT_COLUMNS} FROM units WHERE pid IS NOT NULL ORDER BY name"))?;
            report.leftovers = stmt.query_map([], unit_from_row)?.collect::<rusqlite::Result<_>>()?;
        }

        sync_definitions(&tx, units, now_ms, &mut report)?;

        // Processes of a previous container life do not exist any more, so
        // whatever the rows said about them is stale. Detail goes with the
        // status it explained; last_exit and restarts stay as history.
        tx.execute(
            "UPDATE units SET status = ?1, status_detail = NULL, pid = NULL, pgid = NULL,
                              since_ms = ?2, updated_ms = ?2",
            params![STOPPED, now_ms],
        )?;
        tx.commit()?;
        Ok(report)
    }

    /// Writes a unit's whole runtime state. A unit the supervisor runs is
    /// defined by a file, so recording it also un-archives it.
    pub fn record_state(&mut self, s: &StateUpdate) -> Result<()> {
        self.conn.execute(
            "INSERT INTO units (name, kind, status, status_detail, pid, pgid, restarts,
                                last_exit, since_ms, started_ms, archived, updated_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 0, ?11)
             ON CONFLICT(name) DO UPDATE SET
                kind = excluded.kind, status = excluded.status,
                status_detail = excluded.status_detail, pid = excluded.pid,
                pgid = excluded.pgid, restarts = excluded.restarts,
                last_exit = excluded.last_exit, since_ms = excluded.since_ms,
                started_ms = excluded.started_ms, archived = 0,
                updated_ms = excluded.updated_ms",
            params![
                s.name,
                s.kind,
                s.status,
                s.status_detail,
                s.pid,
                s.pgid,
                s.restarts,
                s.last_exit,
                s.since_ms,
                s.started_ms,
                wall_ms()
            ],
        )?;
        Ok(())
    }

    pub fn unit(&self, name: &str) -> Result<Option<UnitRow>> {
        Ok(self
            .conn
            .query_row(&format!("SELECT {UNIT_COLUMNS} FROM units WHERE name = ?1"), [name], unit_from_row)
            .optional()?)
    }

    /// All units by name; archived ones only when asked (history views).
    pub fn units(&self, include_archived: bool) -> Result<Vec<UnitRow>> {
        let mut stmt =
            self.conn.prepare(&format!("SELECT {UNIT_COLUMNS} FROM units WHERE archived = 0 OR ?1 ORDER BY name"))?;
        let rows = stmt.query_map([include_archived], unit_from_row)?.collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Renames a unit's state row and moves its port lease with it, so a
    /// renamed instance keeps its URL port. The journal keeps the old name:
    /// it records what happened under that name.
    ///
    /// An archived row already named `new` is stale history of a unit that no
    /// longer exists and is replaced; a live one makes the rename fail.
    pub fn rename_unit(&mut self, old: &str, new: &str) -> Result<()> {
        if old == new {
            return Ok(());
        }
        let tx = self.conn.transaction()?;
        tx.execute("DELETE FROM units WHERE name = ?1 AND archived = 1", [new])?;
        tx.execute("UPDATE units SET name = ?2, updated_ms = ?3 WHERE name = ?1", params![old, new, wall_ms()])?;
        // Any lease under the new name belonged to the replaced row.
        tx.execute("DELETE FROM port_leases WHERE unit = ?1", [new])?;
        tx.execute("UPDATE port_leases SET unit = ?2 WHERE unit = ?1", [old, new])?;
        tx.execute("DELETE FROM display_leases WHERE unit = ?1", [new])?;
        tx.execute("UPDATE display_leases SET unit = ?2 WHERE unit = ?1", [old, new])?;
        tx.commit()?;
        Ok(())
    }
}

/// Every defined unit gets a live row (added or un-archived); rows whose file
/// is gone are archived. Shared by the start-up reconcile and `aikore reload`.
fn sync_definitions(
    tx: &rusqlite::Transaction<'_>,
    units: &[(String, String)],
    now_ms: i64,
    report: &mut ReconcileReport,
) -> Result<()> {
    {
        let mut existing = tx.prepare("SELECT 1 FROM units WHERE name = ?1")?;
        let mut insert = tx.prepare(
            "INSERT INTO units (name, kind, status, since_ms, updated_ms)
             VALUES (?1, ?2, ?3, ?4, ?4)",
        )?;
        // The file may have changed kind (rare, but the file wins).
        let mut refresh = tx.prepare("UPDATE units SET kind = ?2, archived = 0, updated_ms = ?3 WHERE name = ?1")?;
        for (name, kind) in units {
            let known = existing.query_row([name], |r| r.get::<_, i64>(0)).optional()?.is_some();
            if known {
                refresh.execute(params![name, kind, now_ms])?;
            } else {
                insert.execute(params![name, kind, STOPPED, now_ms])?;
                report.added.push(name.clone());
            }
        }
    }

    {
        let defined: HashSet<&str> = units.iter().map(|(n, _)| n.as_str()).collect();
        let live: Vec<String> = {
            let mut stmt = tx.prepare("SELECT name FROM units WHERE archived = 0 ORDER BY name")?;
            let names = stmt.query_map([], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
            names
        };
        let mut archive = tx.prepare("UPDATE units SET archived = 1, updated_ms = ?2 WHERE name = ?1")?;
        for name in live {
            if !defined.contains(name.as_str()) {
                archive.execute(params![name, now_ms])?;
                report.archived.push(name);
            }
        }
    }

    Ok(())
}
