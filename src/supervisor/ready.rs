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
        ReadyTarget::Http { host, port, path } => http_probe(host, *port, path).await,
    }
}

/// The most of a response drained before closing anyway: a directory listing
/// or a web UI's index page is well below it, and probing stops once ready,
/// so reading it on loopback costs nothing worth counting.
const MAX_DRAIN: usize = 4 * 1024 * 1024;
/// After the status line, how long one read of the rest may wait: a reply
/// on loopback arrives in microseconds; an app that ignores
/// `Connection: close` is not waited on.
const DRAIN_WAIT: Duration = Duration::from_millis(200);

/// A polite HTTP probe: a complete HTTP/1.1 request with `Connection: close`,
/// the status line read, then the app's reply drained until it closes (or
/// MAX_DRAIN) before we close. Closing with unread data in the receive
/// buffer makes the kernel send RST, and Python's http.server logged a
/// 20-line "Connection reset by peer" traceback into the instance's log for
/// every probe (issue 11).
async fn http_probe(host: &str, port: u16, path: &str) -> bool {
    let Ok(mut stream) = TcpStream::connect((host, port)).await else { return false };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: aikore-probe\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut buf = vec![0u8; 4096];
    let mut head = Vec::with_capacity(16);
    let mut total = 0;
    // Any status counts: a 401 or 404 still proves the app is serving.
    let answered = loop {
        // Once the status line is in, an app that keeps the connection open
        // anyway (or streams) must not hold the probe: a short wait per read.
        let read = if head.starts_with(b"HTTP/") {
            match tokio::time::timeout(DRAIN_WAIT, stream.read(&mut buf)).await {
                Ok(read) => read,
                Err(_) => break true,
            }
        } else {
            stream.read(&mut buf).await
        };
        match read {
            Ok(0) | Err(_) => break head.starts_with(b"HTTP/"),
            Ok(n) => {
                total += n;
                if head.len() < 5 {
                    head.extend_from_slice(&buf[..n.min(5 - head.len())]);
                }
                if head.len() >= 5 && !head.starts_with(b"HTTP/") {
                    break false;
                }
                if total >= MAX_DRAIN {
                    break head.starts_with(b"HTTP/");
                }
            }
        }
    };
    // Our side is done: a FIN, not a RST (the app closed first, or we read what it sent).
    let _ = stream.shutdown().await;
    answered
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// The probe sends a complete HTTP/1.1 request, and the app sees an
    /// orderly close after its whole reply (no reset while it writes).
    #[tokio::test]
    async fn the_probe_sends_a_whole_request_and_closes_cleanly() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = conn.read(&mut buf).await.unwrap();
                assert!(n > 0, "the probe closed before finishing its request");
                request.extend_from_slice(&buf[..n]);
            }
            // A reply bigger than one read, as a directory listing is.
            let body = vec![b'x'; 20_000];
            let head = format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
            conn.write_all(head.as_bytes()).await.unwrap();
            conn.write_all(&body).await.unwrap();
            conn.shutdown().await.unwrap();
            // The probe's FIN: a read of 0, not ECONNRESET.
            let n = conn.read(&mut buf).await;
            (String::from_utf8(request).unwrap(), n.map_err(|e| e.kind()))
        });
        let target = ReadyTarget::Http { host: "127.0.0.1".into(), port, path: "/x?y=1".into() };
        assert!(probe_once(&target).await);
        let (request, end) = server.await.unwrap();
        assert!(request.starts_with("GET /x?y=1 HTTP/1.1\r\n"), "{request}");
        assert!(request.contains(&format!("\r\nHost: 127.0.0.1:{port}\r\n")), "{request}");
        assert!(request.contains("\r\nConnection: close\r\n"), "{request}");
        assert_eq!(end, Ok(0));
    }

    #[tokio::test]
    async fn a_non_http_answer_is_not_ready() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            conn.write_all(b"SSH-2.0-hello\r\n").await.unwrap();
        });
        let target = ReadyTarget::Http { host: "127.0.0.1".into(), port, path: "/".into() };
        assert!(!probe_once(&target).await);
    }
}
