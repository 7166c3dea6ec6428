//! Which processes belong to a unit, and signalling all of them.
//!
//! With a cgroup the answer is exact. Without one it is the unit's process
//! group plus every process carrying the unit's `AIKORE_UNIT` and
//! `AIKORE_DATA_DIR` markers in its environment: setsid() and double forks
//! leave the process group, but not the environment they were born with.

use std::fs;

use super::cgroup::UnitCgroup;

/// How a unit's processes are found.
#[derive(Debug, Clone)]
pub enum Membership {
    Cgroup(UnitCgroup),
    Marked { unit: String, data_dir: String, pgid: Option<i32> },
}

/// Reads field 5 (pgrp) of /proc/PID/stat; the comm field may contain spaces
/// and parentheses, so parse from the last ')'.
pub(super) fn process_group_of(pid: i32) -> Option<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?;
    if state == "Z" {
        // A zombie has no process left to signal; the reaper owns it.
        return None;
    }
    fields.next()?; // ppid
    fields.next()?.parse().ok()
}

fn carries_marker(pid: i32, unit_marker: &[u8], data_marker: &[u8]) -> bool {
    let Ok(environ) = fs::read(format!("/proc/{pid}/environ")) else { return false };
    let mut unit_ok = false;
    let mut data_ok = false;
    for var in environ.split(|b| *b == 0) {
        unit_ok |= var == unit_marker;
        data_ok |= var == data_marker;
    }
    unit_ok && data_ok
}

/// Every live (non-zombie) process in /proc carrying both markers or in `pgid`.
pub fn marked_processes(unit: &str, data_dir: &str, pgid: Option<i32>) -> Vec<i32> {
    let unit_marker = format!("AIKORE_UNIT={unit}").into_bytes();
    let data_marker = format!("AIKORE_DATA_DIR={data_dir}").into_bytes();
    let me = std::process::id() as i32;
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| match process_group_of(*pid) {
            None => false,
            Some(pg) => Some(pg) == pgid || carries_marker(*pid, &unit_marker, &data_marker),
        })
        .collect()
}

/// Our own pid and every ancestor's: a shell that exported AIKORE_DATA_DIR and
/// then ran `aikore serve` carries the marker but is not a leftover unit.
fn self_and_ancestors() -> Vec<i32> {
    let mut chain = vec![std::process::id() as i32];
    let mut pid = chain[0];
    while pid > 1 && chain.len() < 64 {
        let Some(parent) = parent_of(pid) else { break };
        chain.push(parent);
        pid = parent;
    }
    chain
}

fn parent_of(pid: i32) -> Option<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].split_whitespace().nth(1)?.parse().ok()
}

/// Every process in /proc that carries both `AIKORE_DATA_DIR=<data_dir>` and
/// an `AIKORE_UNIT=` marker: leftovers of a previous run of the daemon using
/// the same data dir. Never us or whoever started us.
pub fn processes_of_data_dir(data_dir: &str) -> Vec<i32> {
    let marker = format!("AIKORE_DATA_DIR={data_dir}").into_bytes();
    let spared = self_and_ancestors();
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| !spared.contains(pid) && process_group_of(*pid).is_some())
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/environ"))
                .map(|env| {
                    let mut vars = env.split(|b| *b == 0);
                    let (mut data, mut unit) = (false, false);
                    for var in &mut vars {
                        data |= var == marker.as_slice();
                        unit |= var.starts_with(b"AIKORE_UNIT=");
                    }
                    data && unit
                })
                .unwrap_or(false)
        })
        .collect()
}

impl Membership {
    pub fn pids(&self) -> Vec<i32> {
        match self {
            Membership::Cgroup(cg) => cg.pids(),
            Membership::Marked { unit, data_dir, pgid } => marked_processes(unit, data_dir, *pgid),
        }
    }

    pub fn signal_all(&self, signal: i32) {
        match self {
            Membership::Cgroup(cg) if signal == libc::SIGKILL => cg.kill_all(),
            Membership::Cgroup(cg) => cg.signal_all(signal),
            Membership::Marked { pgid, .. } => {
                if let Some(pgid) = pgid {
                    // SAFETY: killpg with a pgid we created through setsid; no memory involved.
                    unsafe { libc::killpg(*pgid, signal) };
                }
                for pid in self.pids() {
                    // SAFETY: as above, for a pid found through /proc.
                    unsafe { libc::kill(pid, signal) };
                }
            }
        }
    }

    pub fn signal_group(&self, pgid: i32, signal: i32) {
        // SAFETY: killpg on the unit's own process group.
        unsafe { libc::killpg(pgid, signal) };
    }
}
