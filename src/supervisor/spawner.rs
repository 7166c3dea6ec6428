//! Fork and exec off the engine's thread (issue 15: start 100 services as
//! fast as s6).
//!
//! A spawn's parent side waits until the child has exec'd (the error pipe
//! closes), so 100 units started one after the other cost 100 of those
//! waits on the engine's thread. Here a small pool of threads does the
//! fork, the wait and the exec report, while the engine prepares the next
//! unit; the answer comes back on a channel as a [`SpawnReport`], which the
//! engine turns into the machine's `Spawned` input. The machine stays pure:
//! it asked with an effect and is told with an input, as before.
//!
//! Ordering: a child may exit before the engine heard that it was spawned.
//! Its reaper route parks such an exit until the spawn's report is sent,
//! then sends it on the same channel right after it, so the machine never
//! sees the exit of a pid it does not know yet.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

use super::exec::ExecContext;
use super::spawn::{spawn_in, ProcessSpec, SpawnError, Spawned};
use super::{ExitReport, OsError, Role};

/// What [`super::ProcessControl::start_spawn`] did.
pub enum Spawning {
    /// Done on the caller's thread: the answer.
    Now(Result<i32, OsError>),
    /// Handed to the pool: a [`SpawnReport::Done`] with the caller's ticket follows.
    Later,
}

/// A message from the pool to the engine.
pub enum SpawnReport {
    Done(SpawnDone),
    /// The exit of a process whose `Done` was sent just before (it ended
    /// before its spawn was reported).
    Exit(ExitReport),
}

/// One spawn the pool finished; `ProcessControl::finish_spawn` turns it into the answer.
pub struct SpawnDone {
    pub ticket: u64,
    pub unit: String,
    pub role: Role,
    /// The unit tracks its processes by process group (no cgroup).
    pub marked: bool,
    pub result: Result<Spawned, SpawnError>,
}

/// Everything a fork needs, prepared on the engine's thread.
pub struct SpawnJob {
    pub ticket: u64,
    pub unit: String,
    pub role: Role,
    pub marked: bool,
    pub spec: ProcessSpec,
    pub context: ExecContext,
    pub procs_fd: Option<OwnedFd>,
    /// Where the process's exit goes once its spawn was reported (the engine's exits channel).
    pub exits: mpsc::UnboundedSender<ExitReport>,
}

/// At most this many forks wait for their exec at once: enough to hide the
/// wait on a few cores, few enough that a burst does not start a thread per unit.
const MAX_THREADS: usize = 4;
/// An idle pool thread ends after this long: at rest the daemon keeps none.
const IDLE_EXIT: Duration = Duration::from_secs(2);
/// The child runs on a copy of this stack until exec (sandbox steps,
/// seccomp install): small, since only the pages touched count.
const STACK_BYTES: usize = 256 * 1024;

#[derive(Default)]
struct Queue {
    jobs: VecDeque<SpawnJob>,
    idle: usize,
    threads: usize,
}

struct Shared {
    queue: Mutex<Queue>,
    ready: Condvar,
    reports: mpsc::UnboundedSender<SpawnReport>,
}

/// The pool. Threads start with work and end when idle.
pub struct Spawner {
    shared: Arc<Shared>,
}

impl Spawner {
    /// The pool and the channel its reports arrive on.
    pub fn new() -> (Spawner, mpsc::UnboundedReceiver<SpawnReport>) {
        let (reports, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared { queue: Mutex::new(Queue::default()), ready: Condvar::new(), reports });
        (Spawner { shared }, rx)
    }

    pub fn submit(&self, job: SpawnJob) {
        let mut queue = self.shared.queue.lock().unwrap_or_else(|p| p.into_inner());
        queue.jobs.push_back(job);
        if queue.idle > 0 || queue.threads >= MAX_THREADS {
            self.shared.ready.notify_one();
            return;
        }
        queue.threads += 1;
        let shared = Arc::clone(&self.shared);
        let started = std::thread::Builder::new()
            .name("aikore-spawn".into())
            .stack_size(STACK_BYTES)
            .spawn(move || work(&shared));
        if started.is_err() {
            queue.threads -= 1;
            if queue.threads == 0 {
                // No thread at all (out of threads): do the work here rather than never.
                let jobs: Vec<SpawnJob> = queue.jobs.drain(..).collect();
                drop(queue);
                for job in jobs {
                    run(job, &self.shared.reports);
                }
            }
        }
    }
}

fn work(shared: &Shared) {
    loop {
        let mut queue = shared.queue.lock().unwrap_or_else(|p| p.into_inner());
        let job = loop {
            if let Some(job) = queue.jobs.pop_front() {
                break job;
            }
            queue.idle += 1;
            let (guard, waited) = shared.ready.wait_timeout(queue, IDLE_EXIT).unwrap_or_else(|p| p.into_inner());
            queue = guard;
            queue.idle -= 1;
            if waited.timed_out() && queue.jobs.is_empty() {
                queue.threads -= 1;
                return;
            }
        };
        drop(queue);
        run(job, &shared.reports);
    }
}

/// Whether the spawn was reported yet, and an exit that came before that.
#[derive(Default)]
struct Slot {
    reported: bool,
    early: Option<ExitReport>,
}

fn run(job: SpawnJob, reports: &mpsc::UnboundedSender<SpawnReport>) {
    let SpawnJob { ticket, unit, role, marked, spec, context, procs_fd, exits } = job;
    let slot = Arc::new(Mutex::new(Slot::default()));
    let parked = Arc::clone(&slot);
    // Called on the reaper thread: only a send or a store, never a wait.
    let route = Box::new(move |pid: i32, status| {
        let mut slot = parked.lock().unwrap_or_else(|p| p.into_inner());
        if slot.reported {
            let _ = exits.send((pid, status));
        } else {
            slot.early = Some((pid, status));
        }
    });
    // A panic here would leave the engine waiting for this report forever
    // (it holds commands back while a spawn is out): it becomes a failed spawn.
    let result =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| spawn_in(&spec, &context, procs_fd.as_ref(), route)))
            .unwrap_or_else(|_| Err(SpawnError::Io(std::io::Error::other("the spawn panicked"))));
    // Child-side fds and the plan are dropped here, off the engine's thread.
    drop((spec, context, procs_fd));
    let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
    let _ = reports.send(SpawnReport::Done(SpawnDone { ticket, unit, role, marked, result }));
    slot.reported = true;
    if let Some(exit) = slot.early.take() {
        let _ = reports.send(SpawnReport::Exit(exit));
    }
}
