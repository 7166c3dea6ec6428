//! Counters that only the supervisor's event stream can give: starts, exits
//! by code, failures by class, and how long starts take to become `started`.
//!
//! A snapshot shows where a unit is, not what happened between two scrapes
//! (a crash loop faster than the scrape interval), so these come from a task
//! subscribed to the supervisor's broadcast.

use std::collections::HashMap;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use tokio::sync::broadcast;

use crate::supervisor::{Status, UnitEvent};

/// Ready-time buckets from 10 ms (a static file server) to 10 min (a UI
/// that downloads or compiles models on first start); beyond that lands in +Inf.
pub const READY_BUCKETS: &[f64] =
    &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0];

#[derive(Clone)]
pub struct EventMetrics {
    starts: IntCounterVec,
    exits: IntCounterVec,
    failures: IntCounterVec,
    ready: HistogramVec,
}

/// What the event task remembers per unit between events.
#[derive(Debug, Default)]
pub struct Tracker {
    /// Last status seen and, while starting, when the start began (Unix ms).
    units: HashMap<String, (Status, Option<i64>)>,
}

impl EventMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<EventMetrics> {
        let labels = &["unit", "kind"];
        let starts = IntCounterVec::new(
            Opts::new("aikore_unit_starts_total", "Starts of the unit (first starts and restarts)."),
            labels,
        )?;
        let exits = IntCounterVec::new(
            Opts::new("aikore_unit_exits_total", "Runs of the unit that ended by themselves, by exit code or signal."),
            &["unit", "kind", "code"],
        )?;
        let failures = IntCounterVec::new(
            Opts::new("aikore_unit_failures_total", "Runs of the unit that ended badly, by failure class."),
            &["unit", "class"],
        )?;
        let ready = HistogramVec::new(
            HistogramOpts::new("aikore_unit_ready_seconds", "Time from a start to the unit being started (ready).")
                .buckets(READY_BUCKETS.to_vec()),
            labels,
        )?;
        registry.register(Box::new(starts.clone()))?;
        registry.register(Box::new(exits.clone()))?;
        registry.register(Box::new(failures.clone()))?;
        registry.register(Box::new(ready.clone()))?;
        Ok(EventMetrics { starts, exits, failures, ready })
    }

    pub fn observe(&self, tracker: &mut Tracker, event: &UnitEvent) {
        let kind = event.kind.as_str();
        let labels = [event.unit.as_str(), kind];
        match event.event.as_str() {
            "state" => {
                let entry = tracker.units.entry(event.unit.clone()).or_insert((Status::Stopped, None));
                let was_starting = matches!(entry.0, Status::Starting | Status::Stalled);
                match event.status {
                    // Starting is re-announced as each phase changes its detail: count the first.
                    Status::Starting if !was_starting => {
                        self.starts.with_label_values(&labels).inc();
                        entry.1 = Some(event.ts_ms);
                    }
                    Status::Started if was_starting => {
                        if let Some(began) = entry.1.take() {
                            let seconds = (event.ts_ms - began).max(0) as f64 / 1000.0;
                            self.ready.with_label_values(&labels).observe(seconds);
                        }
                    }
                    Status::Starting | Status::Stalled => {}
                    _ => entry.1 = None,
                }
                entry.0 = event.status;
            }
            "exit" => {
                let code = exit_code_label(event.detail.as_deref().or(event.last_exit.as_deref()).unwrap_or(""));
                self.exits.with_label_values(&[event.unit.as_str(), kind, &code]).inc();
            }
            "failure" => {
                if let Some(failure) = &event.failure {
                    self.failures.with_label_values(&[event.unit.as_str(), failure.class.as_str()]).inc();
                }
            }
            _ => {}
        }
    }

    /// Runs until the supervisor's channel closes.
    pub async fn run(self, mut events: broadcast::Receiver<UnitEvent>) {
        let mut tracker = Tracker::default();
        loop {
            match events.recv().await {
                Ok(event) => self.observe(&mut tracker, &event),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "metrics fell behind the supervisor's events; counters undercount");
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}

/// The `code` label from the supervisor's description of a run's end
/// (`RunEnd::describe`): the exit code, the signal name, or what happened
/// instead, so a dashboard can tell a crash (SIGSEGV) from an error exit (1).
pub fn exit_code_label(described: &str) -> String {
    if let Some(code) = described.strip_prefix("exited with code ") {
        return code.trim().to_string();
    }
    if let Some(signal) = described.strip_prefix("killed by ") {
        let signal = signal.trim_end_matches(" (core dumped)");
        return match signal.strip_prefix("signal ") {
            Some(number) => format!("signal_{number}"),
            None => signal.to_string(),
        };
    }
    if let Some(inner) = described.strip_prefix("ExecStartPre ") {
        return format!("pre:{}", exit_code_label(inner));
    }
    if described.starts_with("did not become ready") {
        return "start_timeout".into();
    }
    if described.starts_with("could not start") {
        return "spawn_failed".into();
    }
    "other".into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::UnitKind;

    fn event(unit: &str, event: &'static str, status: Status, ts_ms: i64, detail: Option<&str>) -> UnitEvent {
        use crate::supervisor::EventKind;
        let event = match event {
            "state" => EventKind::State,
            "exit" => EventKind::Exit,
            "failure" => EventKind::Failure,
            "error" => EventKind::Error,
            "config" => EventKind::Config,
            _ => EventKind::Info,
        };
        UnitEvent {
            ts_ms,
            unit: unit.into(),
            kind: UnitKind::Instance,
            event,
            status,
            detail: detail.map(String::from),
            pid: None,
            restarts: 0,
            since_ms: ts_ms,
            started_ms: None,
            last_exit: None,
            failure: None,
            seq: 0,
            port: None,
        }
    }

    #[test]
    fn labels_exit_codes_and_signals() {
        assert_eq!(exit_code_label("exited with code 3"), "3");
        assert_eq!(exit_code_label("killed by SIGSEGV (core dumped)"), "SIGSEGV");
        assert_eq!(exit_code_label("killed by signal 40"), "signal_40");
        assert_eq!(exit_code_label("ExecStartPre exited with code 1"), "pre:1");
        assert_eq!(exit_code_label("did not become ready within TimeoutStartSec"), "start_timeout");
        assert_eq!(exit_code_label("could not start: No such file"), "spawn_failed");
    }

    #[test]
    fn counts_starts_once_and_times_readiness() {
        let registry = Registry::new();
        let m = EventMetrics::new(&registry).unwrap();
        let mut t = Tracker::default();
        m.observe(&mut t, &event("a", "state", Status::Starting, 1_000, Some("waiting for dependencies")));
        m.observe(&mut t, &event("a", "state", Status::Starting, 1_100, Some("waiting for readiness")));
        m.observe(&mut t, &event("a", "state", Status::Stalled, 2_000, None));
        m.observe(&mut t, &event("a", "state", Status::Started, 3_500, None));
        m.observe(&mut t, &event("a", "exit", Status::Started, 4_000, Some("killed by SIGKILL")));
        m.observe(&mut t, &event("a", "state", Status::Restarting, 4_000, None));
        m.observe(&mut t, &event("a", "state", Status::Starting, 5_000, Some("restarting")));
        assert_eq!(m.starts.with_label_values(&["a", "instance"]).get(), 2);
        assert_eq!(m.exits.with_label_values(&["a", "instance", "SIGKILL"]).get(), 1);
        let ready = m.ready.with_label_values(&["a", "instance"]);
        assert_eq!(ready.get_sample_count(), 1);
        assert_eq!(ready.get_sample_sum(), 2.5);
    }

    #[test]
    fn counts_failures_by_class() {
        let registry = Registry::new();
        let m = EventMetrics::new(&registry).unwrap();
        let mut t = Tracker::default();
        let mut e = event("a", "failure", Status::Started, 1_000, Some("cuda-oom: torch.OutOfMemoryError"));
        e.failure = Some(crate::failure::Failure {
            class: crate::failure::FailureClass::CudaOom,
            line: Some("torch.OutOfMemoryError".into()),
            hint: None,
            port: None,
        });
        m.observe(&mut t, &e);
        m.observe(&mut t, &e);
        assert_eq!(m.failures.with_label_values(&["a", "cuda-oom"]).get(), 2);
        assert_eq!(m.failures.with_label_values(&["a", "unknown"]).get(), 0);
    }
}
