//! Brute-force brakes on every credential a client can guess: passwords,
//! bearer tokens and the setup code. Per client (its address, see
//! `origin::client_ip`) a few free failures, then a wait that doubles with
//! each further failure; across all clients a cap on failures per minute (a
//! guesser with many addresses). Refused attempts never reach argon2, and
//! argon2 itself runs at most [`ARGON2_PERMITS`] at a time with a short
//! queue, so a flood of logins can neither grow memory nor starve the API.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures a client may make before it has to wait (typos happen).
pub const FREE_FAILURES: u32 = 5;
/// The first wait after the free failures; it doubles with each failure after.
pub const BASE_DELAY: Duration = Duration::from_secs(1);
pub const MAX_DELAY: Duration = Duration::from_secs(300);
/// A client's record is forgotten after this long without a failure.
const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
/// All clients together: at most this many failures per window.
pub const GLOBAL_MAX: usize = 300;
const GLOBAL_WINDOW: Duration = Duration::from_secs(60);
/// Password hashes computed at once (each argon2 run holds ~19 MiB).
pub const ARGON2_PERMITS: usize = 2;
/// Logins waiting for a permit; more are refused at once (429).
pub const ARGON2_QUEUE: usize = 16;

#[derive(Debug)]
struct Client {
    failures: u32,
    blocked_until: Instant,
    last: Instant,
}

#[derive(Default)]
struct State {
    clients: HashMap<Option<IpAddr>, Client>,
    global: VecDeque<Instant>,
}

pub struct Limiter {
    state: Mutex<State>,
    argon2: tokio::sync::Semaphore,
    queued: AtomicUsize,
}

impl Default for Limiter {
    fn default() -> Self {
        Limiter {
            state: Mutex::default(),
            argon2: tokio::sync::Semaphore::new(ARGON2_PERMITS),
            queued: AtomicUsize::new(0),
        }
    }
}

/// A held argon2 permit (dropped when the hash is done).
pub struct Argon2Permit<'a> {
    _permit: tokio::sync::SemaphorePermit<'a>,
}

impl Limiter {
    /// `Err(wait)` when this client (or everyone) must wait before another try.
    /// `global`: whether the all-clients cap applies (not to a direct loopback
    /// caller, the CLI: a flood from outside must not lock the operator out).
    pub fn check(&self, client: Option<IpAddr>, global: bool) -> Result<(), Duration> {
        let now = Instant::now();
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        while state.global.front().is_some_and(|t| now.duration_since(*t) > GLOBAL_WINDOW) {
            state.global.pop_front();
        }
        if global && state.global.len() >= GLOBAL_MAX {
            let oldest = state.global.front().copied().unwrap_or(now);
            return Err(GLOBAL_WINDOW.saturating_sub(now.duration_since(oldest)).max(Duration::from_secs(1)));
        }
        match state.clients.get(&client) {
            Some(c) if c.blocked_until > now => Err(c.blocked_until - now),
            _ => Ok(()),
        }
    }

    /// Records a failure; `kind` is the metric label, logged with the client.
    pub fn failure(&self, client: Option<IpAddr>, kind: &str) {
        let now = Instant::now();
        let failures = {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            state.global.push_back(now);
            state.clients.retain(|_, c| now.duration_since(c.last) < FORGET_AFTER);
            let c = state.clients.entry(client).or_insert(Client { failures: 0, blocked_until: now, last: now });
            c.failures += 1;
            c.last = now;
            if c.failures > FREE_FAILURES {
                c.blocked_until = now + delay_after(c.failures);
            }
            c.failures
        };
        crate::metrics::auth::failed(kind);
        let client = client.map(|ip| ip.to_string()).unwrap_or_else(|| "unknown".into());
        tracing::warn!(%client, kind, failures, "authentication failed");
    }

    /// A refused attempt (the client was told to wait): counted and logged.
    pub fn refused(&self, client: Option<IpAddr>, wait: Duration) {
        crate::metrics::auth::failed("rate_limited");
        let client = client.map(|ip| ip.to_string()).unwrap_or_else(|| "unknown".into());
        tracing::warn!(%client, wait_ms = wait.as_millis() as u64, "authentication attempt refused: too many failures");
    }

    /// A good credential ends the client's record.
    pub fn success(&self, client: Option<IpAddr>) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clients.remove(&client);
    }

    /// A permit to run argon2, waiting in a short queue; None when the queue
    /// is full (the caller answers 429).
    pub async fn argon2(&self) -> Option<Argon2Permit<'_>> {
        if let Ok(permit) = self.argon2.try_acquire() {
            return Some(Argon2Permit { _permit: permit });
        }
        if self.queued.fetch_add(1, Ordering::SeqCst) >= ARGON2_QUEUE {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        let permit = self.argon2.acquire().await.ok();
        self.queued.fetch_sub(1, Ordering::SeqCst);
        permit.map(|p| Argon2Permit { _permit: p })
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// Runs `work` (an argon2 hash) on one of [`ARGON2_PERMITS`] dedicated
/// threads. Not tokio's blocking pool: that one grows threads on demand and
/// each keeps its own malloc arena, so freed 19 MiB hash buffers would stay
/// resident once per thread; two long-lived threads keep at most two.
pub async fn run_hash<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    static POOL: std::sync::OnceLock<Mutex<std::sync::mpsc::Sender<Job>>> = std::sync::OnceLock::new();
    let pool = POOL.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let rx = std::sync::Arc::new(Mutex::new(rx));
        for i in 0..ARGON2_PERMITS {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new().name(format!("aikore-argon2-{i}")).spawn(move || loop {
                let job = match rx.lock().unwrap_or_else(|p| p.into_inner()).recv() {
                    Ok(job) => job,
                    Err(_) => return,
                };
                job();
                // The hash's 19 MiB buffer is freed but glibc keeps it in this
                // thread's arena; hand it back so idle RSS stays where it was.
                #[cfg(target_env = "gnu")]
                // SAFETY: malloc_trim only releases free memory of the allocator's own arenas.
                unsafe {
                    libc::malloc_trim(0);
                }
            });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a password hashing thread");
            }
        }
        Mutex::new(tx)
    });
    let (done, result) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let _ = done.send(work());
    });
    pool.lock().unwrap_or_else(|p| p.into_inner()).send(job).ok()?;
    result.await.ok()
}

/// The wait after a client's `failures`-th failure.
pub fn delay_after(failures: u32) -> Duration {
    let over = failures.saturating_sub(FREE_FAILURES + 1).min(16);
    (BASE_DELAY * 2u32.pow(over)).min(MAX_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_gets_free_failures_then_a_doubling_wait() {
        let l = Limiter::default();
        let a: Option<IpAddr> = Some("10.0.0.1".parse().unwrap());
        let b: Option<IpAddr> = Some("10.0.0.2".parse().unwrap());
        for _ in 0..FREE_FAILURES {
            assert!(l.check(a, true).is_ok());
            l.failure(a, "password");
        }
        assert!(l.check(a, true).is_ok(), "the free failures do not block");
        l.failure(a, "password");
        let wait = l.check(a, true).unwrap_err();
        assert!(wait <= BASE_DELAY && wait > Duration::ZERO, "{wait:?}");
        assert!(l.check(b, true).is_ok(), "another client is not blocked");
        l.success(a);
        assert!(l.check(a, true).is_ok());
        assert_eq!(delay_after(FREE_FAILURES + 2), BASE_DELAY * 2);
        assert_eq!(delay_after(1000), MAX_DELAY);
    }

    #[test]
    fn many_clients_together_hit_the_global_cap() {
        let l = Limiter::default();
        for i in 0..GLOBAL_MAX {
            let ip: IpAddr = format!("10.1.{}.{}", i / 250, i % 250).parse().unwrap();
            l.failure(Some(ip), "bearer");
        }
        assert!(l.check(Some("10.9.9.9".parse().unwrap()), true).is_err());
        assert!(l.check(Some("127.0.0.1".parse().unwrap()), false).is_ok(), "the loopback operator is not locked out");
    }

    #[tokio::test]
    async fn argon2_permits_are_bounded_and_the_queue_is_short() {
        let l = std::sync::Arc::new(Limiter::default());
        let held: Vec<_> = futures_util::future::join_all((0..ARGON2_PERMITS).map(|_| l.argon2())).await;
        assert!(held.iter().all(Option::is_some));
        let mut waiting = Vec::new();
        for _ in 0..ARGON2_QUEUE {
            let l = l.clone();
            waiting.push(tokio::spawn(async move { l.argon2().await.is_some() }));
        }
        // Let the waiters queue up.
        while l.queued.load(Ordering::SeqCst) < ARGON2_QUEUE {
            tokio::task::yield_now().await;
        }
        assert!(l.argon2().await.is_none(), "a full queue refuses at once");
        drop(held);
        for w in waiting {
            assert!(w.await.unwrap(), "queued logins get their turn");
        }
    }
}
