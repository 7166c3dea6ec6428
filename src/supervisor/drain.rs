//! Knowing that a draining unit's processes are all gone, without polling.
//!
//! With a cgroup the kernel says so: the unit's `cgroup.events` changes to
//! `populated 0`, which inotify reports to a thread that sleeps until then.
//!
//! Without one, there is no such event, so the process side keeps what it
//! knows and lets the reaper wake it. A unit's processes live in process
//! groups: each command aikore spawns leads its own (setsid), and a /proc
//! sweep, taken when the unit is signalled, adds the groups of setsid'd
//! descendants carrying the unit's marker. `kill(-pgid, 0)` says whether a
//! group still has a member in one system call, so "is anything left" costs
//! one call per group instead of a /proc scan. When the last member of a unit
//! dies, its parent is aikore (it was spawned by aikore, or orphaned and
//! re-parented to aikore as PID 1 or sub-reaper), so the reaper sees it:
//! routed exits reach the engine as they always did, and every orphan reaped
//! while a unit drains becomes a [`DrainHint::Any`]. Only when the groups are
//! empty does one more sweep confirm that no descendant the last sweep missed
//! (one that called setsid after it) is left: one sweep per drain, not one per
//! 25 ms. A sweep is shared by every unit handled in the same engine batch
//! (a shutdown of 100 units signals all of them from one sweep).

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use tokio::sync::mpsc;

use super::members::process_group_of;
use super::DrainHint;

/// Watches the `cgroup.events` of every unit cgroup for `populated 0`.
pub struct CgroupWatcher {
    inotify: Arc<Inotify>,
    /// Which unit (and cgroup dir) each watch belongs to; shared with the
    /// thread that reads the events.
    watches: Arc<Mutex<HashMap<WatchDescriptor, (String, PathBuf)>>>,
}

/// True when the cgroup at `dir` has no process left (in it or below it).
pub fn cgroup_is_empty(dir: &Path) -> bool {
    fs::read_to_string(dir.join("cgroup.events"))
        .map(|events| events.lines().any(|l| l.trim() == "populated 0"))
        // A removed cgroup is empty too.
        .unwrap_or(true)
}

impl CgroupWatcher {
    /// Starts the thread that turns `populated 0` into [`DrainHint::Unit`] on `hints`.
    pub fn start(hints: mpsc::UnboundedSender<DrainHint>) -> std::io::Result<CgroupWatcher> {
        // Blocking reads: the thread sleeps in read() until the kernel has news.
        let inotify = Arc::new(Inotify::init(InitFlags::IN_CLOEXEC)?);
        let watches: Arc<Mutex<HashMap<WatchDescriptor, (String, PathBuf)>>> = Arc::default();
        let (reader, table) = (Arc::clone(&inotify), Arc::clone(&watches));
        std::thread::Builder::new().name("aikore-cgwatch".into()).spawn(move || loop {
            let events = match reader.read_events() {
                Ok(events) => events,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "reading cgroup events failed; stops now wait for TimeoutStopSec");
                    return;
                }
            };
            for event in events {
                let mut table = table.lock().unwrap_or_else(|p| p.into_inner());
                if event.mask.contains(AddWatchFlags::IN_IGNORED) {
                    // The cgroup was removed (end of the run): the kernel dropped the watch.
                    table.remove(&event.wd);
                    continue;
                }
                let Some((unit, dir)) = table.get(&event.wd) else { continue };
                if cgroup_is_empty(dir) && hints.send(DrainHint::Unit(unit.clone())).is_err() {
                    // The engine is gone; nobody is left to tell.
                    return;
                }
            }
        })?;
        Ok(CgroupWatcher { inotify, watches })
    }

    /// Watches the unit's cgroup from now on: every change of its `populated`
    /// state to 0 becomes a hint. Watching the same cgroup again is harmless.
    pub fn watch(&self, unit: &str, dir: &Path) -> std::io::Result<()> {
        // Taken before add_watch so the reader cannot see an event of this watch before the entry exists.
        let mut table = self.watches.lock().unwrap_or_else(|p| p.into_inner());
        let wd = self.inotify.add_watch(&dir.join("cgroup.events"), AddWatchFlags::IN_MODIFY)?;
        table.insert(wd, (unit.to_string(), dir.to_path_buf()));
        Ok(())
    }
}

/// One live (non-zombie) process as a sweep of /proc found it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    pid: i32,
    pgid: i32,
    /// `AIKORE_UNIT` when the process also carries this daemon's `AIKORE_DATA_DIR`.
    unit: Option<String>,
}

/// One pass over /proc: every process's group and, for those carrying this
/// data dir's marker, its unit. One pass answers for every unit.
#[derive(Debug, Default)]
pub struct ProcSweep {
    seen: Vec<Seen>,
}

impl ProcSweep {
    pub fn take(data_dir: &str) -> ProcSweep {
        let data_marker = format!("AIKORE_DATA_DIR={data_dir}").into_bytes();
        let me = std::process::id() as i32;
        let Ok(entries) = fs::read_dir("/proc") else { return ProcSweep::default() };
        let seen = entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| *pid != me)
            .filter_map(|pid| {
                let pgid = process_group_of(pid)?;
                Some(Seen { pid, pgid, unit: unit_marker(pid, &data_marker) })
            })
            .collect();
        ProcSweep { seen }
    }

    /// The unit's processes as (pid, pgid): those in `pgid` (its main
    /// process's group) and those carrying its marker.
    pub fn members<'a>(&'a self, unit: &'a str, pgid: Option<i32>) -> impl Iterator<Item = (i32, i32)> + 'a {
        self.seen
            .iter()
            .filter(move |s| Some(s.pgid) == pgid || s.unit.as_deref() == Some(unit))
            .map(|s| (s.pid, s.pgid))
    }
}

fn unit_marker(pid: i32, data_marker: &[u8]) -> Option<String> {
    let environ = fs::read(format!("/proc/{pid}/environ")).ok()?;
    let mut unit = None;
    let mut ours = false;
    for var in environ.split(|b| *b == 0) {
        ours |= var == data_marker;
        if let Some(name) = var.strip_prefix(b"AIKORE_UNIT=") {
            unit = Some(String::from_utf8_lossy(name).into_owned());
        }
    }
    unit.filter(|_| ours)
}

/// True while the process group has a member (a zombie not yet reaped counts:
/// its reaping is what wakes the engine next).
pub fn group_alive(pgid: i32) -> bool {
    // SAFETY: signal 0 checks existence and permission only; no memory involved.
    let rc = unsafe { libc::kill(-pgid, 0) };
    // EPERM: the group exists; we may just not signal it.
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// The process groups each unit without a cgroup is known to have.
#[derive(Debug, Default)]
pub struct UnitGroups {
    groups: HashMap<String, BTreeSet<i32>>,
}

impl UnitGroups {
    pub fn add(&mut self, unit: &str, pgid: i32) {
        self.groups.entry(unit.to_string()).or_default().insert(pgid);
    }

    /// How many of the unit's known groups still have a member. Empty groups
    /// are forgotten, so a group id reused later by an unrelated session is
    /// never taken for the unit's.
    pub fn alive(&mut self, unit: &str) -> usize {
        let Some(groups) = self.groups.get_mut(unit) else { return 0 };
        groups.retain(|g| group_alive(*g));
        groups.len()
    }

    pub fn forget(&mut self, unit: &str) {
        self.groups.remove(unit);
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::CommandExt;

    use super::*;

    /// A `sleep` in its own process group. Other tests in this binary may run
    /// the reaper, which can reap it before we do: `finish` accepts either.
    fn sleeper(env: &[(&str, &str)]) -> std::process::Child {
        let mut command = std::process::Command::new("sleep");
        command.arg("1000").process_group(0);
        for (k, v) in env {
            command.env(k, v);
        }
        command.spawn().expect("spawning sleep")
    }

    fn finish(mut child: std::process::Child) {
        let _ = child.kill();
        // ECHILD means the reaper got it first: reaped either way once this returns.
        let _ = child.wait();
    }

    #[test]
    fn a_group_is_alive_until_its_last_member_is_reaped() {
        let child = sleeper(&[]);
        let pgid = child.id() as i32;
        let mut groups = UnitGroups::default();
        groups.add("u", pgid);
        assert_eq!(groups.alive("u"), 1);
        finish(child);
        assert_eq!(groups.alive("u"), 0);
        assert_eq!(groups.alive("never-seen"), 0);
    }

    #[test]
    fn a_sweep_finds_processes_by_marker_and_by_group() {
        let data_dir = format!("/tmp/aikore-sweep-test-{}", std::process::id());
        let marked = sleeper(&[("AIKORE_UNIT", "web"), ("AIKORE_DATA_DIR", &data_dir)]);
        let other_dir = sleeper(&[("AIKORE_UNIT", "web"), ("AIKORE_DATA_DIR", "/elsewhere")]);
        let sweep = ProcSweep::take(&data_dir);
        let (m, o) = (marked.id() as i32, other_dir.id() as i32);
        let by_marker: Vec<(i32, i32)> = sweep.members("web", None).collect();
        assert_eq!(by_marker, vec![(m, m)]);
        assert!(sweep.members("api", None).next().is_none());
        let by_group: Vec<(i32, i32)> = sweep.members("api", Some(o)).collect();
        assert_eq!(by_group, vec![(o, o)]);
        finish(marked);
        finish(other_dir);
    }

    #[tokio::test]
    async fn a_cgroup_that_empties_becomes_a_hint_naming_its_unit() {
        let tag = format!("test-watch-{}", std::process::id());
        let root = crate::supervisor::cgroup::CgroupRoot::probe(&tag)
            .expect("a writable cgroup v2 (the integration tests of cgroup tracking need one too)");
        let cg = root.unit("web").expect("creating the unit cgroup");
        let (tx, mut rx) = mpsc::unbounded_channel();
        let watcher = CgroupWatcher::start(tx).expect("starting the watcher");
        watcher.watch("web", cg.path()).expect("watching cgroup.events");
        assert!(cgroup_is_empty(cg.path()));

        let child = sleeper(&[]);
        fs::write(cg.path().join("cgroup.procs"), child.id().to_string()).expect("moving sleep into the cgroup");
        assert!(!cgroup_is_empty(cg.path()));
        // Becoming populated is no hint; only emptying is.
        assert!(rx.try_recv().is_err());
        finish(child);
        // A cap for a broken watcher, not a measurement.
        let hint = tokio::time::timeout(std::time::Duration::from_secs(60), rx.recv()).await;
        assert_eq!(hint.expect("no hint after the cgroup emptied"), Some(DrainHint::Unit("web".into())));
        assert!(cgroup_is_empty(cg.path()));
        cg.remove();
        root.remove();
    }
}
