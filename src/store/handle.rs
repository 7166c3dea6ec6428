//! The store's own thread. The SQLite connection is `!Sync` and its calls
//! block on disk, so one thread owns it and everyone else sends it closures:
//! async callers never stall a tokio worker, and there is no lock to hold.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;

use super::{Result, Store, StoreError};

type Job = Box<dyn FnOnce(&mut Store) + Send + 'static>;

/// A cheap, cloneable way to run closures against the `Store`, in order.
/// The store thread ends (closing the database) when the last handle drops.
#[derive(Clone)]
pub struct StoreHandle {
    jobs: mpsc::Sender<Job>,
}

impl StoreHandle {
    /// Moves `store` onto a new thread. If the OS cannot start a thread the
    /// returned handle answers every call with `StoreError::Closed`; use
    /// `try_spawn` to learn that up front.
    pub fn spawn(store: Store) -> StoreHandle {
        match Self::try_spawn(store) {
            Ok(handle) => handle,
            Err(e) => {
                tracing::error!(error = %e, "cannot start the store thread");
                // The receiver is dropped here, so every send fails: Closed.
                let (jobs, _) = mpsc::channel();
                StoreHandle { jobs }
            }
        }
    }

    pub fn try_spawn(mut store: Store) -> Result<StoreHandle> {
        let (jobs, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new().name("aikore-store".into()).spawn(move || {
            while let Ok(job) = rx.recv() {
                // A panicking closure must not take the database away from
                // every other caller. Its open transaction, if any, rolled
                // back when it unwound; its caller sees Closed.
                if catch_unwind(AssertUnwindSafe(|| job(&mut store))).is_err() {
                    tracing::error!("a store call panicked");
                }
            }
        })?;
        Ok(StoreHandle { jobs })
    }

    /// Runs `f` on the store thread and awaits its result.
    pub async fn call<R: Send + 'static>(&self, f: impl FnOnce(&mut Store) -> R + Send + 'static) -> Result<R> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Box::new(move |store: &mut Store| {
                // The caller may have stopped waiting; nothing to do then.
                let _ = tx.send(f(store));
            }))
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)
    }

    /// Runs `f` on the store thread and blocks until it is done. For threads
    /// outside the runtime; inside async code use `call`.
    pub fn call_blocking<R: Send + 'static>(&self, f: impl FnOnce(&mut Store) -> R + Send + 'static) -> Result<R> {
        // A std channel rather than a oneshot's blocking_recv, which panics
        // when called from within a runtime.
        let (tx, rx) = mpsc::sync_channel(1);
        self.jobs
            .send(Box::new(move |store: &mut Store| {
                let _ = tx.send(f(store));
            }))
            .map_err(|_| StoreError::Closed)?;
        rx.recv().map_err(|_| StoreError::Closed)
    }
}
