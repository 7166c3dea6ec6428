//! Display leases for persistent mode: an instance that runs in a virtual X
//! display holds a display number (its VNC port is 5900 + that number) and a
//! websockify port while it runs. Stopping releases the lease (another
//! instance may take the number) but keeps the row as the unit's preference,
//! so a restart, or the next start when nobody took it, gets the same one.

use std::collections::HashSet;
use std::ops::RangeInclusive;

use rusqlite::{params, OptionalExtension, Transaction};

use super::{Result, Store, StoreError};

/// What a persistent run holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct DisplayLease {
    /// The X display number (`:N`).
    pub display: u16,
    /// websockify's loopback port (noVNC's WebSocket and static files).
    pub ws_port: u16,
}

impl Store {
    /// Leases a display and a websockify port for `unit`.
    ///
    /// The unit's previous display comes back when `display_free` accepts it
    /// (its own stale locks are the caller's to clean before asking). A new
    /// display is the lowest number of `displays` in no row at all, else the
    /// lowest one only a stopped unit remembers (that unit loses its
    /// preference). The websockify port is taken from the top of `ports`
    /// downwards (the instances' own ports are leased from the bottom), never
    /// one leased to an instance or remembered by another display row, and
    /// `port_free` must accept it.
    pub fn lease_display(
        &mut self,
        unit: &str,
        displays: RangeInclusive<u16>,
        ports: RangeInclusive<u16>,
        display_free: impl Fn(u16) -> bool,
        port_free: impl Fn(u16) -> bool,
        now_ms: i64,
    ) -> Result<DisplayLease> {
        let tx = self.conn.transaction()?;
        let current: Option<(u16, u16)> = tx
            .query_row("SELECT display, ws_port FROM display_leases WHERE unit = ?1", [unit], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        let rows = all_rows(&tx)?;
        let display = match current {
            Some((display, _)) if displays.contains(&display) && display_free(display) => display,
            _ => {
                if current.is_some() {
                    tx.execute("DELETE FROM display_leases WHERE unit = ?1", [unit])?;
                }
                let in_rows: HashSet<u16> = rows.iter().map(|r| r.display).collect();
                let never = displays.clone().find(|d| !in_rows.contains(d) && display_free(*d));
                let display = match never {
                    Some(d) => d,
                    None => {
                        let remembered = rows
                            .iter()
                            .filter(|r| r.unit != unit && r.released && displays.contains(&r.display))
                            .map(|r| r.display)
                            .filter(|d| display_free(*d))
                            .min()
                            .ok_or(StoreError::DisplayPoolExhausted {
                                start: *displays.start(),
                                end: *displays.end(),
                            })?;
                        tx.execute("DELETE FROM display_leases WHERE display = ?1", [remembered])?;
                        remembered
                    }
                };
                display
            }
        };
        let own_port = current.map(|(_, p)| p);
        let instance_ports: HashSet<u16> = {
            let mut stmt = tx.prepare("SELECT port FROM port_leases")?;
            let ports = stmt.query_map([], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
            ports
        };
        let other_ws: HashSet<u16> = rows.iter().filter(|r| r.unit != unit).map(|r| r.ws_port).collect();
        let usable = |p: u16| !instance_ports.contains(&p) && !other_ws.contains(&p) && port_free(p);
        let ws_port = match own_port {
            Some(p) if ports.contains(&p) && usable(p) => p,
            _ => ports
                .clone()
                .rev()
                .find(|p| usable(*p))
                .ok_or(StoreError::PortPoolExhausted { start: *ports.start(), end: *ports.end() })?,
        };
        tx.execute(
            "INSERT INTO display_leases (display, unit, ws_port, leased_ms, released_ms) VALUES (?1, ?2, ?3, ?4, NULL)
             ON CONFLICT(unit) DO UPDATE SET display = excluded.display, ws_port = excluded.ws_port,
                 leased_ms = excluded.leased_ms, released_ms = NULL",
            params![display, unit, ws_port, now_ms],
        )?;
        tx.commit()?;
        Ok(DisplayLease { display, ws_port })
    }

    /// The run ended: the display is free for others, the row stays as the
    /// unit's preference. A no-op for a unit without a row.
    pub fn release_display(&mut self, unit: &str, now_ms: i64) -> Result<()> {
        self.conn.execute(
            "UPDATE display_leases SET released_ms = ?2 WHERE unit = ?1 AND released_ms IS NULL",
            params![unit, now_ms],
        )?;
        Ok(())
    }

    /// The unit is gone (deleted): forget its row entirely.
    pub fn forget_display(&mut self, unit: &str) -> Result<()> {
        self.conn.execute("DELETE FROM display_leases WHERE unit = ?1", [unit])?;
        Ok(())
    }

    /// The unit's display row and whether a run holds it now.
    pub fn display_lease(&self, unit: &str) -> Result<Option<(DisplayLease, bool)>> {
        Ok(self
            .conn
            .query_row(
                "SELECT display, ws_port, released_ms IS NULL FROM display_leases WHERE unit = ?1",
                [unit],
                |r| Ok((DisplayLease { display: r.get(0)?, ws_port: r.get(1)? }, r.get(2)?)),
            )
            .optional()?)
    }

    /// Displays held by a run right now (not the remembered ones), by unit.
    pub fn held_displays(&self) -> Result<Vec<(String, DisplayLease)>> {
        let mut stmt = self
            .conn
            .prepare("SELECT unit, display, ws_port FROM display_leases WHERE released_ms IS NULL ORDER BY display")?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, DisplayLease { display: r.get(1)?, ws_port: r.get(2)? })))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// At daemon start no run exists: every lease becomes a preference.
    pub fn release_all_displays(&mut self, now_ms: i64) -> Result<()> {
        self.conn.execute("UPDATE display_leases SET released_ms = ?1 WHERE released_ms IS NULL", [now_ms])?;
        Ok(())
    }
}

struct Row {
    display: u16,
    unit: String,
    ws_port: u16,
    released: bool,
}

fn all_rows(tx: &Transaction<'_>) -> Result<Vec<Row>> {
    let mut stmt = tx.prepare("SELECT display, unit, ws_port, released_ms IS NOT NULL FROM display_leases")?;
    let rows = stmt
        .query_map([], |r| Ok(Row { display: r.get(0)?, unit: r.get(1)?, ws_port: r.get(2)?, released: r.get(3)? }))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(s: &mut Store, unit: &str) -> DisplayLease {
        s.lease_display(unit, 10..=12, 19001..=19010, |_| true, |_| true, 1).unwrap()
    }

    #[test]
    fn lowest_display_and_top_port_stable_across_restarts() {
        let mut s = Store::open_in_memory().unwrap();
        let a = lease(&mut s, "a");
        assert_eq!(a, DisplayLease { display: 10, ws_port: 19010 });
        let b = lease(&mut s, "b");
        assert_eq!(b, DisplayLease { display: 11, ws_port: 19009 });
        // A restart (release then lease) gives the same lease back.
        s.release_display("a", 2).unwrap();
        assert_eq!(s.display_lease("a").unwrap(), Some((a, false)));
        assert_eq!(lease(&mut s, "a"), a);
        assert_eq!(s.display_lease("a").unwrap(), Some((a, true)));
        // Leasing again while held is idempotent.
        assert_eq!(lease(&mut s, "a"), a);
    }

    #[test]
    fn a_stopped_units_display_goes_to_others_only_when_the_pool_is_otherwise_full() {
        let mut s = Store::open_in_memory().unwrap();
        let a = lease(&mut s, "a");
        s.release_display("a", 2).unwrap();
        // Free numbers first: a keeps its preference.
        assert_eq!(lease(&mut s, "b").display, 11);
        assert_eq!(lease(&mut s, "c").display, 12);
        // Now only a's remembered display is left: d takes it.
        let d = lease(&mut s, "d");
        assert_eq!(d.display, a.display);
        assert_ne!(d.ws_port, a.ws_port, "{d:?} {a:?}");
        assert!(s.display_lease("a").unwrap().is_none());
        // Everything held: a clear error.
        let err = s.lease_display("a", 10..=12, 19001..=19010, |_| true, |_| true, 3).unwrap_err();
        assert!(matches!(err, StoreError::DisplayPoolExhausted { start: 10, end: 12 }), "{err}");
    }

    #[test]
    fn busy_displays_and_ports_are_skipped() {
        let mut s = Store::open_in_memory().unwrap();
        s.claim_port("app", 19010).unwrap();
        let l = s.lease_display("a", 10..=12, 19001..=19010, |d| d != 10, |p| p != 19009, 1).unwrap();
        assert_eq!(l, DisplayLease { display: 11, ws_port: 19008 });
        // Its display taken by a foreign X server meanwhile: it moves.
        s.release_display("a", 2).unwrap();
        let l = s.lease_display("a", 10..=12, 19001..=19010, |d| d != 11 && d != 10, |_| true, 3).unwrap();
        assert_eq!(l.display, 12);
        assert_eq!(l.ws_port, 19008);
        // The instances' pool skips a held websockify port.
        let p = s.lease_port("b", 19008..=19009, |_| true, 4).unwrap();
        assert_eq!(p, 19009);
    }

    #[test]
    fn forget_and_release_all() {
        let mut s = Store::open_in_memory().unwrap();
        lease(&mut s, "a");
        lease(&mut s, "b");
        assert_eq!(s.held_displays().unwrap().len(), 2);
        s.release_all_displays(5).unwrap();
        assert!(s.held_displays().unwrap().is_empty());
        s.forget_display("a").unwrap();
        assert!(s.display_lease("a").unwrap().is_none());
        assert_eq!(s.display_lease("b").unwrap().map(|(l, held)| (l.display, held)), Some((11, false)));
    }

    #[test]
    fn a_version_1_database_gains_the_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        {
            let conn = rusqlite::Connection::open(&path).unwrap();
            conn.execute_batch(super::super::schema::MIGRATIONS[0]).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            conn.execute("INSERT INTO port_leases (port, unit, leased_ms) VALUES (19001, 'old', 1)", []).unwrap();
        }
        let mut s = Store::open(&path).unwrap();
        assert_eq!(s.leased_port("old").unwrap(), Some(19001));
        assert_eq!(lease(&mut s, "a").display, 10);
    }
}
