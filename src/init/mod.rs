//! Init duties: being PID 1 (or a sub-reaper), owning every exit status, and
//! turning signals into daemon commands.

pub mod reaper;
pub mod signals;

pub use reaper::{reaper, ExitStatus, Reaper};

/// True when this process is PID 1 of its PID namespace: then every orphan in
/// the namespace is ours to reap and, at shutdown, ours to kill.
pub fn is_pid1() -> bool {
    std::process::id() == 1
}

/// Outside PID 1 (development, tests), orphans of our units must still come to
/// us rather than to the real init, or double-forked daemons escape both the
/// reaper and the unit's accounting.
pub fn become_subreaper() -> std::io::Result<()> {
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) takes plain integers and touches no memory of ours.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// As PID 1, the last step before exit: every process still in the namespace
/// (units are already stopped; these are strays) gets SIGTERM, a short grace,
/// then SIGKILL, and is reaped, so the container ends with nothing half-written.
pub fn terminate_strays(grace: std::time::Duration) {
    // SAFETY: kill(-1, sig) signals every process we may signal except ourselves; no memory involved.
    unsafe { libc::kill(-1, libc::SIGTERM) };
    let deadline = std::time::Instant::now() + grace;
    while std::time::Instant::now() < deadline {
        // kill(-1, 0) fails with ESRCH once no other process is left.
        // SAFETY: as above, signal 0 only checks.
        if unsafe { libc::kill(-1, 0) } != 0 {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // SAFETY: as above.
    unsafe { libc::kill(-1, libc::SIGKILL) };
    std::thread::sleep(std::time::Duration::from_millis(50));
}
