//! The one owner of every exit status.
//!
//! A single thread waits for SIGCHLD and runs `waitpid(-1, WNOHANG)` until no
//! child is left to reap. Each status goes to whoever registered the pid; pids
//! nobody registered are orphans (double-forked grandchildren re-parented to
//! us): they are counted, and orphan listeners hear of them (a unit without a
//! cgroup may have just lost its last process). Registration happens under the
//! same lock the reaper takes to look a pid up, and the spawner holds that lock
//! across fork(), so a child that exits at once is never reaped before its
//! route exists.
//!
//! This is why units are never spawned with `std::process::Child` or
//! `tokio::process`: their waits would race this reaper for the same statuses.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ExitStatus {
    Exited { code: i32 },
    Signaled { signal: i32, core_dumped: bool },
}

impl ExitStatus {
    pub fn success(self) -> bool {
        matches!(self, ExitStatus::Exited { code: 0 })
    }

    /// The exit code of a process that exited.
    pub fn code(self) -> Option<i32> {
        match self {
            ExitStatus::Exited { code } => Some(code),
            ExitStatus::Signaled { .. } => None,
        }
    }

    /// The signal that killed it.
    pub fn signal(self) -> Option<i32> {
        match self {
            ExitStatus::Signaled { signal, .. } => Some(signal),
            ExitStatus::Exited { .. } => None,
        }
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            ExitStatus::Exited { code } => write!(f, "exited with code {code}"),
            ExitStatus::Signaled { signal, core_dumped } => {
                let name = nix::sys::signal::Signal::try_from(signal)
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_else(|_| format!("signal {signal}"));
                write!(f, "killed by {name}{}", if core_dumped { " (core dumped)" } else { "" })
            }
        }
    }
}

/// Where a reaped status goes: called once, on the reaper thread, so it must
/// only hand the status on (e.g. an unbounded channel send), never block.
pub type Route = Box<dyn FnOnce(i32, ExitStatus) + Send>;

/// Told of every orphan reaped, after it is gone from the process table, on
/// the reaper thread (so, like a [`Route`], it must not block). Returns false
/// once it wants no more calls (its receiver is gone).
pub type OrphanListener = Box<dyn FnMut(i32) -> bool + Send>;

pub struct Reaper {
    routes: Mutex<HashMap<i32, Route>>,
    /// Who must know that a descendant of a unit ended without its parent
    /// reaping it: the supervisor, draining a unit without a cgroup.
    orphan_listeners: Mutex<Vec<OrphanListener>>,
    orphans_reaped: AtomicU64,
    children_reaped: AtomicU64,
}

/// The process-wide reaper, started on first use. There can be only one: two
/// `waitpid(-1)` loops would steal each other's statuses.
pub fn reaper() -> &'static Arc<Reaper> {
    static REAPER: OnceLock<Arc<Reaper>> = OnceLock::new();
    REAPER.get_or_init(|| {
        let reaper = Arc::new(Reaper {
            routes: Mutex::new(HashMap::new()),
            orphan_listeners: Mutex::new(Vec::new()),
            orphans_reaped: AtomicU64::new(0),
            children_reaped: AtomicU64::new(0),
        });
        let mut signals = signal_hook::iterator::Signals::new([libc::SIGCHLD])
            .expect("installing the SIGCHLD handler cannot fail for a valid signal");
        let worker = Arc::clone(&reaper);
        std::thread::Builder::new()
            .name("aikore-reaper".into())
            .spawn(move || {
                // Children may have exited before the handler existed.
                worker.reap_all();
                for _ in signals.forever() {
                    worker.reap_all();
                }
            })
            .expect("spawning the reaper thread");
        reaper
    })
}

impl Reaper {
    /// Locks the route table for a fork: call `register` with the new pid before
    /// dropping the guard.
    pub fn lock(&self) -> RouteGuard<'_> {
        RouteGuard { routes: self.routes.lock().unwrap_or_else(|p| p.into_inner()) }
    }

    pub fn on_orphan(&self, listener: OrphanListener) {
        self.orphan_listeners.lock().unwrap_or_else(|p| p.into_inner()).push(listener);
    }

    pub fn orphans_reaped(&self) -> u64 {
        self.orphans_reaped.load(Ordering::Relaxed)
    }

    pub fn children_reaped(&self) -> u64 {
        self.children_reaped.load(Ordering::Relaxed)
    }

    fn reap_all(&self) {
        loop {
            let (pid, status) = match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, ExitStatus::Exited { code }),
                Ok(WaitStatus::Signaled(pid, sig, core)) => {
                    (pid, ExitStatus::Signaled { signal: sig as i32, core_dumped: core })
                }
                Ok(WaitStatus::StillAlive) => return,
                // Stop/continue reports only come with WUNTRACED/WCONTINUED, which we do not ask for.
                Ok(_) => continue,
                Err(Errno::EINTR) => continue,
                // ECHILD: nothing left to reap.
                Err(_) => return,
            };
            self.children_reaped.fetch_add(1, Ordering::Relaxed);
            let route = self.routes.lock().unwrap_or_else(|p| p.into_inner()).remove(&pid.as_raw());
            match route {
                Some(route) => route(pid.as_raw(), status),
                None => {
                    self.orphans_reaped.fetch_add(1, Ordering::Relaxed);
                    let mut listeners = self.orphan_listeners.lock().unwrap_or_else(|p| p.into_inner());
                    listeners.retain_mut(|listener| listener(pid.as_raw()));
                }
            }
        }
    }
}

pub struct RouteGuard<'a> {
    routes: MutexGuard<'a, HashMap<i32, Route>>,
}

impl RouteGuard<'_> {
    pub fn register(&mut self, pid: i32, route: Route) {
        self.routes.insert(pid, route);
    }
}
