//! A follower of one unit's log: the lines after a snapshot, read from the
//! ring as they come, with a count of any it missed.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::watch;

use super::unit::{Pull, UnitLog};
use super::LogLine;

/// Lines taken from the ring per look: a follower's share of the lock, and
/// what it holds decoded at once.
const BATCH_LINES: usize = 256;

/// Every line after the snapshot [`LogHub::follow`](super::LogHub::follow)
/// returned, in order, without a gap or a duplicate; a follower that falls
/// further behind than the ring gets `Lagged(n)` (n lines it will never
/// see) and carries on from the oldest line the ring still has. The error
/// types are broadcast's, as the channel this replaced used them.
#[derive(Debug)]
pub struct Follower {
    log: Option<Arc<UnitLog>>,
    next_seq: u64,
    pending: VecDeque<LogLine>,
    wake: Option<watch::Receiver<()>>,
}

impl Follower {
    pub(crate) fn new(log: Arc<UnitLog>, next_seq: u64, wake: watch::Receiver<()>) -> Self {
        Self { log: Some(log), next_seq, pending: VecDeque::new(), wake: Some(wake) }
    }

    /// A follower of nothing: every receive says `Closed`.
    pub(crate) fn closed() -> Self {
        Self { log: None, next_seq: 0, pending: VecDeque::new(), wake: None }
    }

    /// The next line, waiting for one.
    pub async fn recv(&mut self) -> Result<LogLine, RecvError> {
        loop {
            match self.try_recv() {
                Ok(line) => return Ok(line),
                Err(TryRecvError::Lagged(n)) => return Err(RecvError::Lagged(n)),
                Err(TryRecvError::Closed) => return Err(RecvError::Closed),
                Err(TryRecvError::Empty) => {}
            }
            let Some(wake) = self.wake.as_mut() else { return Err(RecvError::Closed) };
            if wake.changed().await.is_err() {
                return Err(RecvError::Closed);
            }
        }
    }

    /// Every line ready now (at least one, waiting for it), up to a batch:
    /// a stream of events can write them together.
    pub async fn recv_many(&mut self) -> Result<Vec<LogLine>, RecvError> {
        let first = self.recv().await?;
        let mut out = Vec::with_capacity(1 + self.pending.len());
        out.push(first);
        out.extend(self.pending.drain(..));
        Ok(out)
    }

    /// The next line if there is one now.
    pub fn try_recv(&mut self) -> Result<LogLine, TryRecvError> {
        if let Some(line) = self.pending.pop_front() {
            return Ok(line);
        }
        let Some(log) = self.log.as_ref() else { return Err(TryRecvError::Closed) };
        if let Some(wake) = self.wake.as_mut() {
            // Seen before looking: an append after this look wakes `recv`.
            wake.borrow_and_update();
        }
        match log.pull(self.next_seq, BATCH_LINES) {
            Pull::Lines(lines) => {
                let Some(last) = lines.last() else { return Err(TryRecvError::Empty) };
                self.next_seq = last.seq + 1;
                self.pending.extend(lines);
                self.pending.pop_front().ok_or(TryRecvError::Empty)
            }
            Pull::Missed(first) => {
                let missed = first - self.next_seq;
                self.next_seq = first;
                Err(TryRecvError::Lagged(missed))
            }
            Pull::Closed => {
                self.log = None;
                Err(TryRecvError::Closed)
            }
        }
    }
}
