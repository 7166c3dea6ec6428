//! The daemon's signals as futures: the shutdown request (SIGTERM or SIGINT)
//! and the reload requests (SIGHUP). Installed before the API answers, so a
//! client that saw `/healthz` may signal at once: an early SIGHUP reloads
//! and an early SIGTERM stops, neither is lost nor kills the process.

use tokio::signal::unix::{signal, Signal, SignalKind};

/// SIGTERM or SIGINT, whichever comes first.
pub struct ShutdownSignal {
    term: Signal,
    int: Signal,
}

impl ShutdownSignal {
    pub fn install() -> std::io::Result<ShutdownSignal> {
        Ok(ShutdownSignal { term: signal(SignalKind::terminate())?, int: signal(SignalKind::interrupt())? })
    }

    /// Resolves on the first SIGTERM or SIGINT.
    pub async fn recv(mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// SIGHUP: re-read the unit files (like `systemctl daemon-reload`).
pub struct Hangups(Signal);

impl Hangups {
    pub fn install() -> std::io::Result<Hangups> {
        Ok(Hangups(signal(SignalKind::hangup())?))
    }

    /// The next SIGHUP.
    pub async fn recv(&mut self) {
        self.0.recv().await;
    }
}
