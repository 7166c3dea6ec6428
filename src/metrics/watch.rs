//! The memory watch: every few seconds, what each running unit uses (the
//! same readings a scrape makes: cgroup `memory.current` or the process
//! tree's RSS, and its VRAM matched through `gpu::attribution`), fed to
//! placement (what each instance now really uses on its GPUs) and checked
//! against `MemoryRestartAbove=` / `GPUMemoryRestartAbove=`: a bound
//! exceeded for all of `RestartAboveSec=` restarts the instance, counted as
//! `aikore_unit_leak_restarts_total` and noted in its log.
//!
//! Reading GPUs here also keeps GPU health current between scrapes (an
//! Xid 79 is judged within one interval even if nobody scrapes /metrics).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::gpu::Gpus;
use crate::logs::LogHub;
use crate::supervisor::{Status, SupervisorHandle, UnitSnapshot};

use super::units::UnitSampler;

/// How often the watch reads: 5 s keeps a placement's view of "free" fresh
/// and costs one NVML read plus one cgroup file per unit.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);

/// Which bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Bound {
    Memory,
    GpuMemory,
}

impl Bound {
    fn key(self) -> &'static str {
        match self {
            Bound::Memory => "MemoryRestartAbove",
            Bound::GpuMemory => "GPUMemoryRestartAbove",
        }
    }
}

/// Since when each (unit, bound) has been above its bound without a break.
#[derive(Debug, Default)]
pub struct LeakTracker {
    over_since: HashMap<(String, Bound), Instant>,
}

impl LeakTracker {
    /// Some(reason) when `value` has stayed above `limit` for `window` up to `now`.
    pub fn check(
        &mut self,
        unit: &str,
        bound: Bound,
        value: u64,
        limit: Option<u64>,
        window: Duration,
        now: Instant,
    ) -> Option<String> {
        let key = (unit.to_string(), bound);
        let Some(limit) = limit.filter(|l| value > *l) else {
            self.over_since.remove(&key);
            return None;
        };
        let since = *self.over_since.entry(key).or_insert(now);
        let held = now.duration_since(since);
        (held >= window).then(|| {
            format!(
                "{} above {}={} for {}s ({}): restarting",
                match bound {
                    Bound::Memory => "memory",
                    Bound::GpuMemory => "GPU memory",
                },
                bound.key(),
                gib(limit),
                held.as_secs(),
                gib(value)
            )
        })
    }

    /// A restarted unit starts its windows afresh.
    pub fn forget(&mut self, unit: &str) {
        self.over_since.retain(|(u, _), _| u != unit);
    }
}

/// GiB with two decimals, MiB below one GiB (a RAM bound may be small).
fn gib(bytes: u64) -> String {
    if bytes < 1 << 30 {
        format!("{:.0}MiB", bytes as f64 / (1u64 << 20) as f64)
    } else {
        format!("{:.2}GiB", bytes as f64 / (1u64 << 30) as f64)
    }
}

struct WatchState {
    sampler: UnitSampler,
    leaks: LeakTracker,
}

/// Whether a run may hold GPU reservations (anything between a start and its end).
fn is_running(status: Status) -> bool {
    matches!(status, Status::Starting | Status::Stalled | Status::Started | Status::Stopping | Status::Restarting)
}

/// One pass: returns (unit, reason) for each instance to restart.
fn step(state: &mut WatchState, gpus: &Gpus, units: &[UnitSnapshot], listed_at: Instant) -> Vec<(String, String)> {
    let samples = gpus.sample();
    let now = Instant::now();
    let names: HashSet<&str> = units.iter().map(|u| u.name.as_str()).collect();
    state.sampler.retain(&names);
    let mut pids = Vec::new();
    let mut memory = HashMap::new();
    // Only what this pass uses is read (issue 15: a box of plain services
    // pays nothing here): the pids of every running unit where there are
    // GPUs to attribute, the memory of instances with a memory bound.
    let needs = |u: &UnitSnapshot| {
        !samples.is_empty() || u.unit.instance.as_ref().is_some_and(|i| i.limits.memory_restart_above.is_some())
    };
    for u in units.iter().filter(|u| is_running(u.status) && needs(u)) {
        let usage = state.sampler.sample(&u.name, u.pid);
        pids.push((u.name.clone(), usage.pids.iter().filter_map(|p| u32::try_from(*p).ok()).collect::<Vec<u32>>()));
        memory.insert(u.name.as_str(), usage.memory_bytes);
    }
    let attribution = crate::gpu::attribution::attribute(
        &pids,
        &samples,
        &crate::gpu::attribution::proc_status,
        &crate::gpu::attribution::pid_visible,
    );
    let running: HashSet<String> = units.iter().filter(|u| is_running(u.status)).map(|u| u.name.clone()).collect();
    gpus.placer.retain_running(&running, listed_at);
    let mut restarts = Vec::new();
    for u in units.iter().filter(|u| matches!(u.status, Status::Started | Status::Stalled)) {
        let Some(limits) = u.unit.instance.as_ref().map(|i| &i.limits) else { continue };
        let window = limits.restart_above_window;
        let vram: u64 = attribution.by_unit.get(&u.name).map(|m| m.values().sum()).unwrap_or(0);
        let mem = memory.get(u.name.as_str()).copied().unwrap_or(0);
        let reason =
            state.leaks.check(&u.name, Bound::Memory, mem, limits.memory_restart_above, window, now).or_else(|| {
                state.leaks.check(&u.name, Bound::GpuMemory, vram, limits.gpu_memory_restart_above, window, now)
            });
        if let Some(reason) = reason {
            state.leaks.forget(&u.name);
            restarts.push((u.name.clone(), reason));
        }
    }
    gpus.set_foreign_pids(attribution.foreign_pids);
    gpus.placer.observe(attribution.by_unit);
    restarts
}

/// The restart for a memory bound. Issue 16's drain (stop taking requests,
/// let the running job finish) belongs here, before the restart, once the
/// instances layer has it; until then this is a plain supervisor restart.
async fn restart_for_leak(supervisor: &SupervisorHandle, logs: &LogHub, gpus: &Gpus, unit: &str, reason: &str) {
    tracing::warn!(unit, reason, "memory bound exceeded");
    logs.note(unit, reason);
    gpus.count_leak_restart(unit);
    if let Err(e) = supervisor.restart(unit).await {
        tracing::warn!(unit, error = %e, "leak restart refused");
    }
}

/// Runs the watch until `stop`. `AIKORE_WATCH_INTERVAL_MS` overrides the
/// interval (tests; a box that wants faster reaction).
pub fn spawn(
    supervisor: SupervisorHandle,
    logs: Arc<LogHub>,
    gpus: Arc<Gpus>,
    cgroup_root: Option<PathBuf>,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let interval = std::env::var("AIKORE_WATCH_INTERVAL_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|ms| *ms >= 50)
        .map(Duration::from_millis)
        .unwrap_or(DEFAULT_INTERVAL);
    let state =
        Arc::new(Mutex::new(WatchState { sampler: UnitSampler::new(cgroup_root), leaks: LeakTracker::default() }));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            let listed_at = Instant::now();
            let Ok(units) = supervisor.snapshot().await else { break };
            let (state, shared) = (Arc::clone(&state), Arc::clone(&gpus));
            let restarts = tokio::task::spawn_blocking(move || {
                let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
                step(&mut state, &shared, &units, listed_at)
            })
            .await;
            let Ok(restarts) = restarts else { break };
            for (unit, reason) in restarts {
                restart_for_leak(&supervisor, &logs, &gpus, &unit, &reason).await;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn a_bound_must_hold_for_the_whole_window() {
        let mut t = LeakTracker::default();
        let t0 = Instant::now();
        let w = Duration::from_secs(60);
        let at = |s: u64| t0 + Duration::from_secs(s);
        let limit = Some(10 * GIB);
        assert_eq!(t.check("a", Bound::GpuMemory, 11 * GIB, limit, w, at(0)), None);
        assert_eq!(t.check("a", Bound::GpuMemory, 12 * GIB, limit, w, at(30)), None);
        // A dip below resets the window: a spike that comes back is not a leak yet.
        assert_eq!(t.check("a", Bound::GpuMemory, 9 * GIB, limit, w, at(45)), None);
        assert_eq!(t.check("a", Bound::GpuMemory, 12 * GIB, limit, w, at(50)), None);
        assert_eq!(t.check("a", Bound::GpuMemory, 13 * GIB, limit, w, at(100)), None);
        let reason = t.check("a", Bound::GpuMemory, 14 * GIB, limit, w, at(110)).unwrap();
        assert!(reason.contains("GPUMemoryRestartAbove=10.00GiB for 60s (14.00GiB)"), "{reason}");
        // No bound, no restart; the memory bound is tracked apart.
        assert_eq!(t.check("a", Bound::Memory, 100 * GIB, None, w, at(200)), None);
        t.forget("a");
        assert_eq!(t.check("a", Bound::GpuMemory, 14 * GIB, limit, w, at(111)), None, "forgotten after the restart");
    }
}
