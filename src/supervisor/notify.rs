//! sd_notify: a unit's `NOTIFY_SOCKET`. One datagram socket per run of a
//! `Type=notify` service, in the abstract namespace (no file to create,
//! own or clean up; the name carries the daemon's pid so two daemons never
//! collide). Each datagram (`READY=1\nSTATUS=...`) goes to the engine on the
//! OS side's channel as [`DrainHint::Notify`]; the machine decides what it
//! means. The socket has `SO_PASSCRED`, so each datagram comes with the
//! sender's pid from the kernel (`SCM_CREDENTIALS`, which a sender cannot
//! forge); the machine judges it by `NotifyAccess=`.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::SocketAddr;

use tokio::sync::mpsc;

use super::DrainHint;

/// The longest datagram read (systemd's limit for a notification is 4 KiB of text).
const MAX_MESSAGE: usize = 4096;

/// The socket's address as `NOTIFY_SOCKET` spells it (`@` for the abstract namespace).
pub fn socket_name(unit: &str) -> String {
    format!("@aikore/{}/notify/{unit}", std::process::id())
}

/// Binds the unit's socket and forwards its datagrams until aborted (at the run's end).
pub fn listen(unit: &str, to: mpsc::UnboundedSender<DrainHint>) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let name = socket_name(unit);
    let address = SocketAddr::from_abstract_name(&name.as_bytes()[1..])?;
    let socket = std::os::unix::net::UnixDatagram::bind_addr(&address)?;
    socket.set_nonblocking(true)?;
    nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::PassCred, &true)?;
    let socket = tokio::net::UnixDatagram::from_std(socket)?;
    let unit = unit.to_string();
    Ok(tokio::spawn(async move {
        let mut buf = vec![0u8; MAX_MESSAGE];
        loop {
            let got = socket.async_io(tokio::io::Interest::READABLE, || receive(&socket, &mut buf)).await;
            let Ok((n, pid)) = got else { return };
            let message = String::from_utf8_lossy(&buf[..n]).into_owned();
            if to.send(DrainHint::Notify { unit: unit.clone(), message, pid }).is_err() {
                return;
            }
        }
    }))
}

/// One datagram and the pid the kernel says sent it.
fn receive(socket: &tokio::net::UnixDatagram, buf: &mut [u8]) -> std::io::Result<(usize, Option<i32>)> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, UnixAddr, UnixCredentials};
    use std::os::fd::AsRawFd;
    let mut space = nix::cmsg_space!(UnixCredentials);
    let mut iov = [std::io::IoSliceMut::new(buf)];
    let msg = recvmsg::<UnixAddr>(socket.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
        .map_err(std::io::Error::from)?;
    let pid = msg.cmsgs().ok().into_iter().flatten().find_map(|c| match c {
        ControlMessageOwned::ScmCredentials(creds) => Some(creds.pid()),
        _ => None,
    });
    Ok((msg.bytes, pid))
}

/// What one datagram says, as far as aikore acts on it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Notice {
    pub ready: bool,
    pub stopping: bool,
    pub watchdog: bool,
    /// `WATCHDOG=trigger`: the service asks to be treated as hung.
    pub watchdog_trigger: bool,
    pub status: Option<String>,
    pub main_pid: Option<i32>,
    /// `RELOADING=1`: reloading its configuration, until the next `READY=1`.
    pub reloading: bool,
    /// `EXTEND_TIMEOUT_USEC=`: the current start or stop may take this much longer from now.
    pub extend_timeout: Option<std::time::Duration>,
}

/// Longest `STATUS=` text kept: it is shown in one line of `aikore status`.
const MAX_STATUS: usize = 200;

impl Notice {
    pub fn parse(message: &str) -> Notice {
        let mut notice = Notice::default();
        for line in message.lines() {
            let Some((key, value)) = line.split_once('=') else { continue };
            match key {
                "READY" => notice.ready |= value == "1",
                "STOPPING" => notice.stopping |= value == "1",
                "WATCHDOG" if value == "1" => notice.watchdog = true,
                "WATCHDOG" if value == "trigger" => notice.watchdog_trigger = true,
                "STATUS" => {
                    // Shown on terminals and pages: no control characters, one line.
                    let text: String =
                        value.chars().map(|c| if c.is_control() { ' ' } else { c }).take(MAX_STATUS).collect();
                    notice.status = Some(text);
                }
                "MAINPID" => notice.main_pid = value.parse().ok().filter(|pid| *pid > 1),
                "RELOADING" => notice.reloading |= value == "1",
                "EXTEND_TIMEOUT_USEC" => {
                    notice.extend_timeout = value.parse::<u64>().ok().map(std::time::Duration::from_micros)
                }
                _ => {}
            }
        }
        notice
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_datagram_reads_like_sd_notify_writes_it() {
        let n = Notice::parse("READY=1\nSTATUS=Loading \x1b[31mmodels\nMAINPID=4242\nX_OTHER=1\n");
        assert!(n.ready && !n.stopping && !n.watchdog);
        assert_eq!(n.status.as_deref(), Some("Loading  [31mmodels"));
        assert_eq!(n.main_pid, Some(4242));
        assert!(Notice::parse("WATCHDOG=1").watchdog);
        assert!(Notice::parse("WATCHDOG=trigger").watchdog_trigger);
        assert_eq!(Notice::parse("READY=0\nMAINPID=1"), Notice::default());
        let n = Notice::parse("RELOADING=1\nEXTEND_TIMEOUT_USEC=2500000");
        assert!(n.reloading);
        assert_eq!(n.extend_timeout, Some(std::time::Duration::from_millis(2500)));
    }

    #[tokio::test]
    async fn a_datagram_sent_to_the_socket_reaches_the_engine_channel() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let unit = format!("t{}", std::process::id());
        let task = listen(&unit, tx).unwrap();
        let client = std::os::unix::net::UnixDatagram::unbound().unwrap();
        let name = socket_name(&unit);
        let address = SocketAddr::from_abstract_name(&name.as_bytes()[1..]).unwrap();
        client.send_to_addr(b"READY=1", &address).unwrap();
        let got = tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv()).await.unwrap();
        // The kernel names the sender: this process.
        let pid = Some(std::process::id() as i32);
        assert_eq!(got, Some(DrainHint::Notify { unit, message: "READY=1".into(), pid }));
        task.abort();
    }
}
