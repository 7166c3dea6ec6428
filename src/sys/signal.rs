//! Sending signals, through nix: "no such process" (ESRCH) is the normal end
//! of a race with an exit, so it is handled here once and reported as
//! `Ok(false)`; any other error (EPERM) is returned.

use nix::errno::Errno;
pub use nix::sys::signal::Signal;
use nix::unistd::Pid;

/// `signal` to `pid`. Ok(true): sent; Ok(false): no such process.
pub fn to_process(pid: i32, signal: Signal) -> Result<bool, Errno> {
    gone_is_false(nix::sys::signal::kill(Pid::from_raw(pid), signal))
}

/// `signal` to every process of group `pgid`. Ok(false): the group is empty.
pub fn to_group(pgid: i32, signal: Signal) -> Result<bool, Errno> {
    gone_is_false(nix::sys::signal::killpg(Pid::from_raw(pgid), signal))
}

/// Whether a process group still has a member (signal 0 only checks).
pub fn group_alive(pgid: i32) -> bool {
    matches!(gone_is_false(nix::sys::signal::killpg(Pid::from_raw(pgid), None)), Ok(true) | Err(Errno::EPERM))
}

/// `signal` to every process we may signal but ourselves (`kill(-1, ...)`):
/// PID 1's last sweep. Ok(false): no other process is left.
pub fn to_everyone(signal: Option<Signal>) -> Result<bool, Errno> {
    gone_is_false(nix::sys::signal::kill(Pid::from_raw(-1), signal))
}

/// Best effort to many pids (a sweep of leftovers): errors are logged at debug.
pub fn to_each(pids: &[i32], signal: Signal) {
    for pid in pids {
        if let Err(e) = to_process(*pid, signal) {
            tracing::debug!(pid, signal = signal.as_str(), error = %e, "signal refused");
        }
    }
}

/// [`to_process`] with a raw number (the engine's `ProcessControl` speaks
/// them); best effort: a refusal or an unknown number is logged at debug.
pub fn process_raw(pid: i32, signal: i32) {
    match from_raw(signal) {
        Some(sig) => to_each(&[pid], sig),
        None => tracing::debug!(pid, signal, "not a signal number"),
    }
}

/// [`to_group`] with a raw number; best effort, as [`process_raw`].
pub fn group_raw(pgid: i32, signal: i32) {
    match from_raw(signal).map(|sig| to_group(pgid, sig)) {
        Some(Ok(_)) => {}
        Some(Err(e)) => tracing::debug!(pgid, signal, error = %e, "signal to group refused"),
        None => tracing::debug!(pgid, signal, "not a signal number"),
    }
}

/// A raw signal number from a unit file or the engine, as nix's type.
pub fn from_raw(signal: i32) -> Option<Signal> {
    Signal::try_from(signal).ok()
}

fn gone_is_false(result: nix::Result<()>) -> Result<bool, Errno> {
    match result {
        Ok(()) => Ok(true),
        Err(Errno::ESRCH) => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gone_process_is_false_not_an_error() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id() as i32;
        assert_eq!(to_process(pid, Signal::SIGKILL), Ok(true));
        child.wait().unwrap();
        assert_eq!(to_process(pid, Signal::SIGKILL), Ok(false));
        // A pid above the kernel's maximum names no process.
        assert_eq!(to_group(i32::MAX, Signal::SIGTERM), Ok(false));
        assert!(!group_alive(i32::MAX));
        assert_eq!(from_raw(libc::SIGTERM), Some(Signal::SIGTERM));
        assert_eq!(from_raw(0), None);
    }
}
