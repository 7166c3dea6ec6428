//! Readiness probes: a TCP connect, or an HTTP response of any status.
//!
//! Probing starts fast, because the interesting moment is right after the app
//! opens its port (the dashboard should flip to `started` within tens of
//! milliseconds), and slows down for apps that take minutes to load models.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::ReadyTarget;

/// Retry interval while an app is most likely to come up: an app that opens
/// its port is noticed within ~20 ms. A refused loopback connect costs
/// microseconds, so 50 a second is nothing.
const FIRST_INTERVAL: Duration = Duration::from_millis(20);
/// How long to keep the fast interval: most web UIs without model loading
/// (and every test app) open their port within this.
const FAST_PHASE: Duration = Duration::from_secs(5);
/// Slowest retry interval, reached after about 10 s of waiting.
const MAX_INTERVAL: Duration = Duration::from_millis(500);
/// One attempt may not hang on a half-open app.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

/// Resolves once the target answers; never gives up (the caller's timers decide that).
pub async fn wait_ready(target: &ReadyTarget) {
    let began = tokio::time::Instant::now();
    let mut interval = FIRST_INTERVAL;
    loop {
        if matches!(tokio::time::timeout(ATTEMPT_TIMEOUT, probe_once(target)).await, Ok(true)) {
            return;
        }
        tokio::time::sleep(interval).await;
        if began.elapsed() >= FAST_PHASE {
            interval = (interval * 3 / 2).min(MAX_INTERVAL);
        }
    }
}

pub async fn probe_once(target: &ReadyTarget) -> bool {
    match target {
        ReadyTarget::Tcp { host, port } => TcpStream::connect((host.as_str(), *port)).await.is_ok(),
        ReadyTarget::Http { host, port, path } => {
            let Ok(mut stream) = TcpStream::connect((host.as_str(), *port)).await else { return false };
            let request = format!("GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\nUser-Agent: aikore-probe\r\n\r\n");
            if stream.write_all(request.as_bytes()).await.is_err() {
                return false;
            }
            // Any status counts: a 401 or 404 still proves the app is serving.
            let mut head = [0u8; 5];
            stream.read_exact(&mut head).await.is_ok() && &head == b"HTTP/"
        }
    }
}
