//! Port leases: each unit holds at most one port and keeps it across restarts
//! and reboots, so an instance's URL and bookmarks stay valid.

use std::collections::HashSet;
use std::ops::RangeInclusive;

use rusqlite::{params, OptionalExtension};

use super::{wall_ms, Result, Store, StoreError};

impl Store {
    /// The unit's port from the automatic pool `range`.
    ///
    /// An existing lease inside the range is returned as is, even if
    /// `is_free` would reject it: the unit's own previous process may still be
    /// letting go of it. A lease outside the range (the unit used an explicit
    /// port before, or the pool moved) is given up for a pool port. A new
    /// lease is the lowest port that nobody holds and `is_free` accepts.
    pub fn lease_port(
        &mut self,
        unit: &str,
        range: RangeInclusive<u16>,
        is_free: impl Fn(u16) -> bool,
        now_ms: i64,
    ) -> Result<u16> {
        let tx = self.conn.transaction()?;
        let current: Option<u16> =
            tx.query_row("SELECT port FROM port_leases WHERE unit = ?1", [unit], |r| r.get(0)).optional()?;
        if let Some(port) = current {
            if range.contains(&port) {
                return Ok(port);
            }
            tx.execute("DELETE FROM port_leases WHERE unit = ?1", [unit])?;
        }

        let taken: HashSet<u16> = {
            // Websockify ports of running persistent instances count as taken.
            let mut stmt = tx.prepare(
                "SELECT port FROM port_leases WHERE port BETWEEN ?1 AND ?2
                 UNION SELECT ws_port FROM display_leases WHERE released_ms IS NULL",
            )?;
            let ports =
                stmt.query_map(params![range.start(), range.end()], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
            ports
        };
        let port = range
            .clone()
            .find(|p| !taken.contains(p) && is_free(*p))
            .ok_or(StoreError::PortPoolExhausted { start: *range.start(), end: *range.end() })?;
        tx.execute("INSERT INTO port_leases (port, unit, leased_ms) VALUES (?1, ?2, ?3)", params![port, unit, now_ms])?;
        tx.commit()?;
        Ok(port)
    }

    /// Leases an explicitly configured port, replacing the unit's previous
    /// lease. Fails naming the holder when another unit has it, so two unit
    /// files asking for the same port get a clear error instead of a bind race.
    pub fn claim_port(&mut self, unit: &str, port: u16) -> Result<()> {
        let tx = self.conn.transaction()?;
        if let Some(holder) = port_holder_in(&tx, port)? {
            if holder == unit {
                return Ok(());
            }
            return Err(StoreError::PortTaken { port, holder });
        }
        tx.execute("DELETE FROM port_leases WHERE unit = ?1", [unit])?;
        tx.execute(
            "INSERT INTO port_leases (port, unit, leased_ms) VALUES (?1, ?2, ?3)",
            params![port, unit, wall_ms()],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Gives up the unit's lease (the unit was deleted); a no-op without one.
    pub fn release_port(&mut self, unit: &str) -> Result<()> {
        self.conn.execute("DELETE FROM port_leases WHERE unit = ?1", [unit])?;
        Ok(())
    }

    pub fn port_holder(&self, port: u16) -> Result<Option<String>> {
        port_holder_in(&self.conn, port)
    }

    /// The unit's current lease, if any.
    pub fn leased_port(&self, unit: &str) -> Result<Option<u16>> {
        Ok(self.conn.query_row("SELECT port FROM port_leases WHERE unit = ?1", [unit], |r| r.get(0)).optional()?)
    }
}

fn port_holder_in(conn: &rusqlite::Connection, port: u16) -> Result<Option<String>> {
    Ok(conn.query_row("SELECT unit FROM port_leases WHERE port = ?1", [port], |r| r.get(0)).optional()?)
}
