//! Which processes belong to a unit, and signalling all of them.
//!
//! With a cgroup the answer is exact. Without one it is the unit's process
//! group plus every process carrying the unit's `AIKORE_UNIT` and
//! `AIKORE_DATA_DIR` markers in its environment: setsid() and double forks
//! leave the process group, but not the environment they were born with.
//!
//! Markers can be lost (NGINX's setproctitle overwrites its environment; an
//! app may set AIKORE_DATA_DIR itself), so every spawned pid is also recorded
//! with its start time in `<data>/aikore.pids` (`PidRecord`): a daemon started
//! after a kill -9 stops those, their process groups and their descendants.

use std::fs;

use super::cgroup::UnitCgroup;

/// How a unit's processes are found.
#[derive(Debug, Clone)]
pub enum Membership {
    Cgroup(UnitCgroup),
    Marked { unit: String, data_dir: String, pgid: Option<i32> },
}

/// The process group of `pid`; None for a zombie (no process left to
/// signal; the reaper owns it) or a process that is gone.
pub(super) fn process_group_of(pid: i32) -> Option<i32> {
    crate::sys::proc::stat(pid).filter(|s| !s.is_zombie()).map(|s| s.pgrp)
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
    crate::sys::proc::stat(pid).map(|s| s.ppid)
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
                    crate::sys::signal::group_raw(*pgid, signal);
                }
                for pid in self.pids() {
                    crate::sys::signal::process_raw(pid, signal);
                }
            }
        }
    }

    pub fn signal_group(&self, pgid: i32, signal: i32) {
        crate::sys::signal::group_raw(pgid, signal);
    }
}

/// The daemon's record of the pids it spawned, by unit, in the data dir.
pub const PID_FILE: &str = "aikore.pids";

/// When the process started, in clock ticks since boot (`sys::proc::Stat::start_ticks`).
pub fn start_time(pid: i32) -> Option<u64> {
    crate::sys::proc::stat(pid).map(|s| s.start_ticks)
}

/// One spawned process: still the same one when its start time matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tracked {
    pub pid: i32,
    pub start: u64,
}

impl Tracked {
    pub fn of(pid: i32) -> Option<Tracked> {
        Some(Tracked { pid, start: start_time(pid)? })
    }
    pub fn alive(&self) -> bool {
        start_time(self.pid) == Some(self.start)
    }
}

/// `unit pid starttime` lines: written by the running daemon (root-owned,
/// 0600: the instance user can neither add a pid for us to kill nor hide one).
pub struct PidRecord {
    path: std::path::PathBuf,
    units: std::collections::BTreeMap<String, Vec<Tracked>>,
    /// Changed since the last write. The file is written once per engine
    /// batch ([`PidRecord::flush`]), not per spawn: 100 units started
    /// together cost one write and one liveness pass, not 100 of each.
    dirty: bool,
}

impl PidRecord {
    pub fn new(data_dir: &std::path::Path) -> PidRecord {
        PidRecord { path: data_dir.join(PID_FILE), units: Default::default(), dirty: false }
    }

    /// What a previous daemon recorded, still alive (same pid, same start time).
    pub fn leftovers(data_dir: &std::path::Path) -> Vec<(String, Tracked)> {
        let Ok(text) = fs::read_to_string(data_dir.join(PID_FILE)) else { return Vec::new() };
        text.lines()
            .filter_map(|line| {
                let mut words = line.split_whitespace();
                let unit = words.next()?.to_string();
                let t = Tracked { pid: words.next()?.parse().ok()?, start: words.next()?.parse().ok()? };
                (t.pid > 1 && t.alive()).then_some((unit, t))
            })
            .collect()
    }

    pub fn add(&mut self, unit: &str, pid: i32) {
        if let Some(t) = Tracked::of(pid) {
            let list = self.units.entry(unit.to_string()).or_default();
            // Only this unit's earlier pids (an ExecStartPre= that exited) are
            // checked: re-checking every unit's pids on each spawn made
            // starting N units cost N² /proc reads (issue 15, start 100).
            // Other units' dead pids go when their run ends (`end`).
            list.retain(Tracked::alive);
            list.push(t);
            self.dirty = true;
        }
    }

    pub fn end(&mut self, unit: &str) {
        if self.units.remove(unit).is_some() {
            self.dirty = true;
        }
    }

    /// Writes the record if it changed.
    pub fn flush(&mut self) {
        if std::mem::take(&mut self.dirty) {
            self.save();
        }
    }

    fn save(&mut self) {
        self.units.retain(|_, list| !list.is_empty());
        let mut text = String::new();
        for (unit, list) in &self.units {
            for t in list {
                text.push_str(&format!("{unit} {} {}\n", t.pid, t.start));
            }
        }
        if let Err(e) = write_private(&self.path, text.as_bytes()) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot record unit pids");
        }
    }
}

/// Atomic 0600 write in a dir only the daemon writes.
fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("pids-tmp");
    let _ = fs::remove_file(&tmp);
    let mut file =
        fs::OpenOptions::new().write(true).create_new(true).mode(0o600).custom_flags(libc::O_NOFOLLOW).open(&tmp)?;
    file.write_all(bytes)?;
    fs::rename(&tmp, path)
}

/// Every live process that is one of `roots`, in the process group one of
/// them leads, or descends from one of them: what a unit left behind.
pub fn process_trees(roots: &[Tracked]) -> Vec<i32> {
    let me = std::process::id() as i32;
    // (pid, ppid, pgrp, start) of every live process.
    let table: Vec<(i32, i32, i32, u64)> = crate::sys::proc::pids()
        .into_iter()
        .filter_map(crate::sys::proc::stat)
        .filter(|s| !s.is_zombie())
        .map(|s| (s.pid, s.ppid, s.pgrp, s.start_ticks))
        .collect();
    let live_roots: Vec<&Tracked> =
        roots.iter().filter(|r| table.iter().any(|(pid, _, _, s)| *pid == r.pid && *s == r.start)).collect();
    let mut found: Vec<i32> = live_roots.iter().map(|r| r.pid).collect();
    // A process group outlives its leader only as long as a member does, and
    // its id is not reused meanwhile; members born after the leader are ours.
    for r in &live_roots {
        for (pid, _, pgrp, start) in &table {
            if *pgrp == r.pid && *start >= r.start && !found.contains(pid) {
                found.push(*pid);
            }
        }
    }
    loop {
        let before = found.len();
        for (pid, ppid, _, _) in &table {
            if found.contains(ppid) && !found.contains(pid) {
                found.push(*pid);
            }
        }
        if found.len() == before {
            break;
        }
    }
    let spared = self_and_ancestors();
    found.retain(|p| *p != me && *p > 1 && !spared.contains(p));
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A recorded pid is found again with its descendants, and not once its
    /// start time no longer matches (a reused pid is someone else).
    #[test]
    fn recorded_pids_find_their_trees_by_start_time() {
        let dir = tempfile::tempdir().unwrap();
        let mut child =
            std::process::Command::new("/bin/sh").args(["-c", "sleep 100 & sleep 100 & wait"]).spawn().unwrap();
        let pid = child.id() as i32;
        let mut record = PidRecord::new(dir.path());
        record.add("app", pid);
        assert!(PidRecord::leftovers(dir.path()).is_empty(), "written per batch, not per spawn");
        record.flush();
        let leftovers = PidRecord::leftovers(dir.path());
        assert_eq!(leftovers.len(), 1);
        assert_eq!(leftovers[0].0, "app");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut tree = Vec::new();
        while std::time::Instant::now() < deadline && tree.len() < 3 {
            tree = process_trees(&[leftovers[0].1]);
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(tree.len(), 3, "the shell and its two sleeps: {tree:?}");
        let stale = Tracked { pid, start: leftovers[0].1.start + 1 };
        assert!(!stale.alive());
        assert!(process_trees(&[stale]).is_empty());
        for p in tree {
            // SAFETY: our own test children.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
        let _ = child.wait();
        record.end("app");
        assert!(PidRecord::leftovers(dir.path()).is_empty());
    }
}
