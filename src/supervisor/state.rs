//! The unit state machine's vocabulary and its pure rules: the public
//! statuses, how an exit is judged, restart backoff and the start limit.
//! The states themselves and their guards are in `machine.rs`.

use std::collections::VecDeque;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::time::Instant;

use crate::init::ExitStatus;
use crate::units::{ExitSet, RestartPolicy, ServiceConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Stopped,
    /// Waiting for dependencies, running ExecStartPre, or waiting to be ready.
    Starting,
    /// An instance that has not answered within StallAfterSec; it may still get there.
    Stalled,
    Started,
    Stopping,
    /// Waiting out the restart backoff after an exit.
    Restarting,
    /// Exited abnormally and the policy does not restart it.
    Error,
    /// Gave up: start limit hit, a dependency failed, or the unit cannot run.
    Failed,
}

impl Status {
    /// Every status, in the order a unit usually goes through them (the
    /// dashboard's list is checked against it: `api::tests`).
    pub const ALL: [Status; 8] = [
        Status::Stopped,
        Status::Starting,
        Status::Stalled,
        Status::Started,
        Status::Stopping,
        Status::Restarting,
        Status::Error,
        Status::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Stopped => "stopped",
            Status::Starting => "starting",
            Status::Stalled => "stalled",
            Status::Started => "started",
            Status::Stopping => "stopping",
            Status::Restarting => "restarting",
            Status::Error => "error",
            Status::Failed => "failed",
        }
    }

    /// No process of the unit runs and none is about to.
    pub fn is_inactive(self) -> bool {
        matches!(self, Status::Stopped | Status::Error | Status::Failed)
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a run of a unit ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunEnd {
    /// Stopped on request (user, dependency, shutdown).
    Requested,
    Exited(ExitStatus),
    StartTimeout,
    PreFailed(ExitStatus),
    /// An ExecStartPost= command failed: the started run is stopped.
    PostFailed(ExitStatus),
    SpawnFailed(String),
    /// WatchdogSec= passed without `WATCHDOG=1` (or the service sent `WATCHDOG=trigger`).
    Watchdog,
    /// RuntimeMaxSec= passed.
    RuntimeMax,
    /// The kernel's OOM killer killed a process of the unit and OOMPolicy=stop stopped it.
    OomKill,
}

impl RunEnd {
    /// systemd's notion of a clean exit: code 0, or one of the signals a
    /// service is expected to die from when asked to stop.
    pub fn is_clean(&self) -> bool {
        self.is_clean_with(&ExitSet::default())
    }

    /// [`RunEnd::is_clean`], with the unit's SuccessExitStatus= counted as clean too.
    pub fn is_clean_with(&self, success: &ExitSet) -> bool {
        if let RunEnd::Exited(status) = self {
            if success.contains(status.code(), status.signal()) {
                return true;
            }
        }
        match self {
            RunEnd::Requested => true,
            RunEnd::Exited(ExitStatus::Exited { code }) => *code == 0,
            RunEnd::Exited(ExitStatus::Signaled { signal, .. }) => {
                matches!(*signal, libc::SIGHUP | libc::SIGINT | libc::SIGTERM | libc::SIGPIPE)
            }
            _ => false,
        }
    }

    /// Abnormal in systemd's sense: killed by an unclean signal or timed out,
    /// as opposed to exiting with a code.
    fn is_abnormal(&self) -> bool {
        match self {
            RunEnd::StartTimeout | RunEnd::Watchdog | RunEnd::RuntimeMax | RunEnd::OomKill => true,
            RunEnd::Exited(ExitStatus::Signaled { .. }) => !self.is_clean(),
            _ => false,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            RunEnd::Requested => "stopped".into(),
            RunEnd::Exited(status) => status.to_string(),
            RunEnd::StartTimeout => "did not become ready within TimeoutStartSec".into(),
            RunEnd::PreFailed(status) => format!("ExecStartPre {status}"),
            RunEnd::PostFailed(status) => format!("ExecStartPost {status}"),
            RunEnd::SpawnFailed(why) => format!("could not start: {why}"),
            RunEnd::Watchdog => "watchdog timeout (no WATCHDOG=1 within WatchdogSec)".into(),
            RunEnd::RuntimeMax => "ran longer than RuntimeMaxSec".into(),
            RunEnd::OomKill => "stopped: the OOM killer killed one of its processes (OOMPolicy=stop)".into(),
        }
    }
}

/// systemd's `$SERVICE_RESULT`, `$EXIT_CODE` and `$EXIT_STATUS` for ExecStopPost=.
pub fn result_env(end: &RunEnd) -> Vec<(String, String)> {
    let result = match end {
        RunEnd::Requested => "success",
        RunEnd::Exited(ExitStatus::Exited { code: 0 }) => "success",
        RunEnd::Exited(ExitStatus::Exited { .. }) | RunEnd::PreFailed(_) | RunEnd::PostFailed(_) => "exit-code",
        RunEnd::Exited(ExitStatus::Signaled { core_dumped: true, .. }) => "core-dump",
        RunEnd::Exited(ExitStatus::Signaled { .. }) => "signal",
        RunEnd::StartTimeout | RunEnd::RuntimeMax => "timeout",
        RunEnd::Watchdog => "watchdog",
        RunEnd::OomKill => "oom-kill",
        RunEnd::SpawnFailed(_) => "resources",
    };
    let mut env = vec![("SERVICE_RESULT".to_string(), result.to_string())];
    if let RunEnd::Exited(status) | RunEnd::PreFailed(status) | RunEnd::PostFailed(status) = end {
        let (code, value) = match *status {
            ExitStatus::Exited { code } => ("exited", code.to_string()),
            ExitStatus::Signaled { signal, core_dumped } => {
                let name = Signal::try_from(signal)
                    .map_or(signal.to_string(), |s| s.as_str().trim_start_matches("SIG").to_string());
                (if core_dumped { "dumped" } else { "killed" }, name)
            }
        };
        env.push(("EXIT_CODE".to_string(), code.to_string()));
        env.push(("EXIT_STATUS".to_string(), value));
    }
    env
}

/// How the main process's end reads when we asked it to stop: a signal we
/// sent is a normal stop ("stopped (SIGTERM)"), not a crash; a signal we did
/// not send keeps the crash wording ("killed by SIGSEGV"), and an exit code
/// is reported as it is.
pub fn describe_stop_exit(status: ExitStatus, sent: &[Signal]) -> String {
    match status {
        ExitStatus::Signaled { signal, core_dumped: false } => match Signal::try_from(signal) {
            Ok(signal) if sent.contains(&signal) => format!("stopped ({})", signal.as_str()),
            _ => status.to_string(),
        },
        other => other.to_string(),
    }
}

/// Whether a run that ended by itself comes back: RestartPreventExitStatus=
/// and RestartForceExitStatus= first (whatever Restart= says, as systemd),
/// then the policy, with SuccessExitStatus= counted as clean.
pub fn should_restart(service: &ServiceConfig, end: &RunEnd) -> bool {
    if *end == RunEnd::Requested {
        return false;
    }
    if let RunEnd::Exited(status) = end {
        let (code, signal) = (status.code(), status.signal());
        if service.restart_prevent.contains(code, signal) {
            return false;
        }
        if service.restart_force.contains(code, signal) {
            return true;
        }
    }
    let clean = end.is_clean_with(&service.success_exit);
    match service.restart {
        RestartPolicy::No => false,
        RestartPolicy::Always => true,
        RestartPolicy::OnFailure => !clean,
        RestartPolicy::OnAbnormal => end.is_abnormal(),
        RestartPolicy::OnSuccess => clean,
        RestartPolicy::OnAbort => matches!(end, RunEnd::Exited(ExitStatus::Signaled { .. })) && !clean,
        RestartPolicy::OnWatchdog => *end == RunEnd::Watchdog,
    }
}

/// Backoff never waits longer than this: a GPU box owner fixing a broken
/// model path should see the next attempt within a minute.
pub const BACKOFF_CAP: Duration = Duration::from_secs(60);

/// A run that lasted this long was not part of a crash loop, so the next
/// failure starts the backoff from RestartSec again.
pub const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(30);

/// RestartSec doubled for each consecutive failed run, capped (but never below RestartSec itself).
pub fn backoff_delay(restart_sec: Duration, consecutive_failures: u32) -> Duration {
    let factor = 1u32.checked_shl(consecutive_failures.min(16)).unwrap_or(u32::MAX);
    restart_sec.saturating_mul(factor).min(BACKOFF_CAP.max(restart_sec))
}

/// The delay before restart number `consecutive_failures` + 1: with
/// RestartSteps= and RestartMaxDelaySec= both set, systemd's curve (from
/// RestartSec to the max in that many exponential steps, then the max);
/// otherwise aikore's doubling with [`BACKOFF_CAP`].
pub fn restart_delay(service: &ServiceConfig, consecutive_failures: u32) -> Duration {
    let base = service.restart_sec;
    match (service.restart_steps, service.restart_max_delay) {
        (steps @ 1.., Some(max)) if max > base && !base.is_zero() => {
            let step = consecutive_failures.min(steps);
            let ratio = max.as_secs_f64() / base.as_secs_f64();
            let delay = base.as_secs_f64() * ratio.powf(f64::from(step) / f64::from(steps));
            Duration::from_secs_f64(delay).min(max)
        }
        (_, Some(max)) if max > Duration::ZERO => backoff_delay(base, consecutive_failures).min(max.max(base)),
        _ => backoff_delay(base, consecutive_failures),
    }
}

/// StartLimitBurst starts within StartLimitIntervalSec; one more is refused.
#[derive(Debug, Default, Clone)]
pub struct StartLimit {
    starts: VecDeque<Instant>,
}

impl StartLimit {
    /// Records a start at `now`; false when it exceeds the limit (the start must not happen).
    pub fn try_start(&mut self, now: Instant, interval: Duration, burst: u32) -> bool {
        if interval.is_zero() || burst == 0 {
            // systemd: either set to 0 disables rate limiting.
            return true;
        }
        while self.starts.front().is_some_and(|t| now.duration_since(*t) >= interval) {
            self.starts.pop_front();
        }
        if self.starts.len() >= burst as usize {
            return false;
        }
        self.starts.push_back(now);
        true
    }

    pub fn reset(&mut self) {
        self.starts.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signal_we_sent_is_a_stop_not_a_crash() {
        let term = ExitStatus::Signaled { signal: libc::SIGTERM, core_dumped: false };
        assert_eq!(describe_stop_exit(term, &[Signal::SIGTERM]), "stopped (SIGTERM)");
        let quit = ExitStatus::Signaled { signal: libc::SIGQUIT, core_dumped: false };
        assert_eq!(describe_stop_exit(quit, &[Signal::SIGQUIT]), "stopped (SIGQUIT)");
        // Not ours: the crash wording stays.
        let segv = ExitStatus::Signaled { signal: libc::SIGSEGV, core_dumped: true };
        assert_eq!(describe_stop_exit(segv, &[Signal::SIGTERM]), "killed by SIGSEGV (core dumped)");
        assert_eq!(describe_stop_exit(term, &[]), "killed by SIGTERM");
        assert_eq!(describe_stop_exit(ExitStatus::Exited { code: 0 }, &[Signal::SIGTERM]), "exited with code 0");
    }

    #[test]
    fn exit_status_lists_override_the_policy() {
        let code3 = RunEnd::Exited(ExitStatus::Exited { code: 3 });
        let code4 = RunEnd::Exited(ExitStatus::Exited { code: 4 });
        let usr1 = RunEnd::Exited(ExitStatus::Signaled { signal: libc::SIGUSR1, core_dumped: false });
        let svc = ServiceConfig {
            restart: RestartPolicy::OnFailure,
            success_exit: ExitSet { codes: vec![3], signals: vec![libc::SIGUSR1] },
            restart_prevent: ExitSet { codes: vec![4], signals: vec![] },
            ..Default::default()
        };
        // SuccessExitStatus=3 SIGUSR1: clean, so on-failure does not restart.
        assert!(code3.is_clean_with(&svc.success_exit) && usr1.is_clean_with(&svc.success_exit));
        assert!(!should_restart(&svc, &code3));
        assert!(!should_restart(&svc, &usr1));
        // RestartPreventExitStatus=4 wins over on-failure, and over always.
        assert!(!should_restart(&svc, &code4));
        assert!(!should_restart(&ServiceConfig { restart: RestartPolicy::Always, ..svc.clone() }, &code4));
        // RestartForceExitStatus=3 restarts even with Restart=no.
        let forced = ServiceConfig {
            restart: RestartPolicy::No,
            restart_force: ExitSet { codes: vec![3], signals: vec![] },
            ..Default::default()
        };
        assert!(should_restart(&forced, &code3));
        assert!(!should_restart(&forced, &RunEnd::Requested));
    }

    #[test]
    fn restart_steps_climb_to_the_max_delay() {
        let svc = ServiceConfig {
            restart_sec: Duration::from_millis(100),
            restart_steps: 2,
            restart_max_delay: Some(Duration::from_secs(10)),
            ..Default::default()
        };
        let delays: Vec<u128> = (0..4).map(|n| restart_delay(&svc, n).as_millis()).collect();
        // 100 ms, then x10 per step (100^(1/2)), then the max for good.
        assert_eq!(delays.iter().map(|d| (d + 5) / 10 * 10).collect::<Vec<_>>(), [100, 1000, 10000, 10000]);
        // Without RestartSteps=, RestartMaxDelaySec= caps aikore's doubling.
        let capped = ServiceConfig { restart_steps: 0, restart_max_delay: Some(Duration::from_millis(300)), ..svc };
        assert_eq!(restart_delay(&capped, 5), Duration::from_millis(300));
    }

    #[test]
    fn backoff_doubles_then_caps() {
        let base = Duration::from_millis(100);
        let delays: Vec<_> = (0..4).map(|n| backoff_delay(base, n)).collect();
        assert_eq!(delays, [100, 200, 400, 800].map(Duration::from_millis));
        assert_eq!(backoff_delay(base, 30), BACKOFF_CAP);
        // A RestartSec above the cap is honoured as is.
        assert_eq!(backoff_delay(Duration::from_secs(120), 3), Duration::from_secs(120));
    }

    #[test]
    fn start_limit_refuses_the_burst_plus_one_start_and_forgets_old_ones() {
        let mut limit = StartLimit::default();
        let t0 = Instant::now();
        let interval = Duration::from_secs(10);
        for i in 0..5 {
            assert!(limit.try_start(t0 + Duration::from_secs(i), interval, 5));
        }
        assert!(!limit.try_start(t0 + Duration::from_secs(5), interval, 5));
        // Once the first start is older than the interval, there is room again.
        assert!(limit.try_start(t0 + Duration::from_secs(10), interval, 5));
        assert!(limit.try_start(t0, Duration::ZERO, 5), "interval 0 disables the limit");
    }

    #[test]
    fn restart_policies_follow_systemd() {
        let code1 = RunEnd::Exited(ExitStatus::Exited { code: 1 });
        let code0 = RunEnd::Exited(ExitStatus::Exited { code: 0 });
        let killed = RunEnd::Exited(ExitStatus::Signaled { signal: libc::SIGKILL, core_dumped: false });
        let termed = RunEnd::Exited(ExitStatus::Signaled { signal: libc::SIGTERM, core_dumped: false });
        use RestartPolicy::*;
        let should_restart =
            |restart, end: &RunEnd| should_restart(&ServiceConfig { restart, ..Default::default() }, end);
        assert!(should_restart(OnFailure, &code1));
        assert!(!should_restart(OnFailure, &code0));
        assert!(should_restart(OnFailure, &killed));
        assert!(!should_restart(OnFailure, &termed));
        assert!(should_restart(OnAbnormal, &killed));
        assert!(!should_restart(OnAbnormal, &code1));
        assert!(should_restart(OnAbnormal, &RunEnd::StartTimeout));
        assert!(should_restart(Always, &code0));
        assert!(!should_restart(Always, &RunEnd::Requested));
        assert!(!should_restart(No, &killed));
    }
}
