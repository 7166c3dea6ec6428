//! Knowing that a draining unit's processes are all gone, without polling.
//!
//! With a cgroup the kernel says so: the unit's `cgroup.events` changes to
//! `populated 0`, which inotify reports to a thread that sleeps until then.
//!
//! Without one there is no such event, so the process side keeps what it
//! knows and lets the reaper wake it. A unit's processes are its main
//! process's group plus every process carrying its marker; "is anything
//! left" is one `kill(-pgid, 0)` for the group and a pidfd per marked process
//! outside it (found by a /proc sweep when the unit is signalled), instead of
//! a /proc scan. When the last of them dies its parent is aikore (it spawned
//! it, or the process was orphaned and re-parented to aikore as PID 1 or
//! sub-reaper), so the reaper sees it: routed exits reach the engine as they
//! always did, and every orphan reaped while such a unit drains becomes a
//! [`DrainHint::Any`]. Only when nothing known is left does one more sweep
//! confirm that no marked descendant the last sweep missed (one that called
//! setsid after it) remains: one sweep at the end of a drain, not one per
//! 25 ms. A sweep is shared by every unit handled in the same engine batch
//! (a shutdown of 100 units signals all of them from one sweep).

use std::collections::HashMap;
use std::fs;
use std::os::fd::{AsFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use tokio::sync::mpsc;

use super::members::process_group_of;
use super::DrainHint;

/// Watches the `cgroup.events` of every unit cgroup for `populated 0`, and
/// its `memory.events` for OOM kills ([`DrainHint::Oom`]).
pub struct CgroupWatcher {
    inotify: Arc<Inotify>,
    /// Which unit (and cgroup dir, or its `memory.events` file) each watch
    /// belongs to; shared with the thread that reads the events.
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
                if dir.file_name().is_some_and(|f| f == "memory.events") {
                    // Not a drain: an OOM kill (or another memory event) in the unit's cgroup.
                    if hints.send(DrainHint::Oom(unit.clone())).is_err() {
                        return;
                    }
                    continue;
                }
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
        // OOMPolicy=: memory.events changes when the OOM killer kills in the cgroup (no memory controller: no file).
        let events = dir.join("memory.events");
        if let Ok(wd) = self.inotify.add_watch(&events, AddWatchFlags::IN_MODIFY) {
            table.insert(wd, (unit.to_string(), events));
        }
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
    crate::sys::signal::group_alive(pgid)
}

/// A pidfd: names one process for good, so a pid reused by a stranger is
/// never taken for the unit's process. None when the process is already gone.
fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no memory involved.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    // SAFETY: a non-negative return is a fresh fd that nobody else owns.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// A pidfd turns readable once its process has exited (zombie or reaped).
fn exited(pidfd: &OwnedFd) -> bool {
    let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
    !matches!(poll(&mut fds, PollTimeout::ZERO), Ok(0))
}

/// What is known of one unit's processes without a cgroup: its main
/// process's group (killpg reaches every member, marked or not) and the
/// processes carrying its marker outside that group ("escapees": setsid'd or
/// left over by a pre-start command), each held by a pidfd.
#[derive(Debug, Default)]
struct Known {
    main_group: Option<i32>,
    escapees: HashMap<i32, OwnedFd>,
}

/// [`Known`] per unit without a cgroup.
#[derive(Debug, Default)]
pub struct UnitProcesses {
    units: HashMap<String, Known>,
}

impl UnitProcesses {
    pub fn set_main_group(&mut self, unit: &str, pgid: i32) {
        self.units.entry(unit.to_string()).or_default().main_group = Some(pgid);
    }

    /// A process of the unit found by a sweep (members of the main group need no pidfd).
    pub fn add(&mut self, unit: &str, pid: i32, pgid: i32) {
        let known = self.units.entry(unit.to_string()).or_default();
        if Some(pgid) == known.main_group || known.escapees.contains_key(&pid) {
            return;
        }
        if let Some(fd) = pidfd_open(pid) {
            known.escapees.insert(pid, fd);
        }
    }

    /// Nonzero while the main group has a member or an escapee has not
    /// exited. What is seen gone is forgotten: a group id, once empty, may be
    /// reused by an unrelated session.
    pub fn alive(&mut self, unit: &str) -> usize {
        let Some(known) = self.units.get_mut(unit) else { return 0 };
        if known.main_group.is_some_and(|g| !group_alive(g)) {
            known.main_group = None;
        }
        known.escapees.retain(|_, fd| !exited(fd));
        usize::from(known.main_group.is_some()) + known.escapees.len()
    }

    pub fn forget(&mut self, unit: &str) {
        self.units.remove(unit);
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
    fn a_unit_is_alive_while_its_main_group_or_an_escapee_is() {
        let main = sleeper(&[]);
        let escapee = sleeper(&[]);
        let (m, e) = (main.id() as i32, escapee.id() as i32);
        let mut known = UnitProcesses::default();
        known.set_main_group("u", m);
        known.add("u", e, e);
        // A member of the main group needs no pidfd of its own.
        known.add("u", m, m);
        assert_eq!(known.alive("u"), 2);
        finish(escapee);
        assert_eq!(known.alive("u"), 1);
        finish(main);
        assert_eq!(known.alive("u"), 0);
        assert_eq!(known.alive("never-seen"), 0);
    }

    #[test]
    fn an_escapee_that_exited_counts_as_gone_before_it_is_reaped() {
        let mut escapee = sleeper(&[]);
        let e = escapee.id() as i32;
        let mut known = UnitProcesses::default();
        known.add("u", e, e);
        assert_eq!(known.alive("u"), 1);
        escapee.kill().expect("kill");
        // The pidfd is readable from the exit on, zombie or not.
        let mut fds = [PollFd::new(known.units["u"].escapees[&e].as_fd(), PollFlags::POLLIN)];
        assert_eq!(poll(&mut fds, PollTimeout::from(60_000u16)).expect("poll"), 1);
        assert_eq!(known.alive("u"), 0);
        let _ = escapee.wait();
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
