//! systemd's relations between units beyond ordering and pulling in,
//! acted on outside the engine: a task watches state events and asks the
//! supervisor, through its handle, to start or stop units, as systemd queues
//! jobs for them. [`decide`] is the pure rule; [`spawn`] runs it.
//!
//! - `OnFailure=`: the unit ends `failed` or `error` -> each listed unit starts.
//! - `OnSuccess=`: the unit ends `stopped` after it ran -> each listed unit starts.
//! - `BindsTo=`: starting the unit starts those it binds to; one of them going
//!   down stops the unit.
//! - `PartOf=`: the unit it is part of going down stops it.
//! - `Conflicts=` (either side): starting the unit stops the other.
//! - `Upholds=`: while the unit is up, each listed unit found `stopped` is
//!   started again (not one that ended in `error`/`failed`: each start through
//!   the handle is a user's start and would reset the start limit, turning a
//!   crash loop into an endless one).
//!
//! - `SuccessAction=`/`FailureAction=` (any value but `none`): the unit ending
//!   `stopped` after a run / `failed` or `error` ends the container: aikore
//!   sends itself SIGTERM, its ordered shutdown.
//!
//! `Requisite=`, `StopWhenUnneeded=`, `PropagatesReloadTo=`/`PropagatesStopTo=`
//! and `StartLimitAction=` are the machine's (`machine.rs`): they act inside a
//! start, a stop or a reload job, not after the events.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::broadcast;

use super::{EventKind, Status, SupervisorHandle, UnitEvent};
use crate::units::Unit;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Start(String),
    Stop(String),
    /// SuccessAction=/FailureAction=: aikore's ordered shutdown (the reason, and
    /// the exit status `*ActionExitStatus=` asks for with `exit`/`exit-force`).
    Exit(String, Option<u8>),
}

fn up(status: Option<&Status>) -> bool {
    status.is_some_and(|s| !s.is_inactive() && *s != Status::Stopping)
}

/// What `unit` moving from `prev` to `now` asks of the others. `defs` are
/// the loaded definitions, `statuses` every unit's status after the move.
pub fn decide(
    defs: &HashMap<String, Arc<Unit>>,
    statuses: &HashMap<String, Status>,
    unit: &str,
    prev: Option<Status>,
    now: Status,
) -> Vec<Action> {
    let mut actions = Vec::new();
    let Some(def) = defs.get(unit) else { return actions };
    let rel = &def.relations;
    let was_up = prev.is_some_and(|p| !p.is_inactive());
    match now {
        Status::Starting if !was_up => {
            let others = defs.values().filter(|u| u.relations.conflicts.iter().any(|c| c == unit));
            let conflicting = rel.conflicts.iter().cloned().chain(others.map(|u| u.name.clone()));
            for name in conflicting {
                if name != unit && up(statuses.get(&name)) {
                    actions.push(Action::Stop(name));
                }
            }
            for name in &rel.binds_to {
                if defs.contains_key(name) && !up(statuses.get(name)) {
                    actions.push(Action::Start(name.clone()));
                }
            }
        }
        Status::Started => {
            for name in &rel.upholds {
                if statuses.get(name) == Some(&Status::Stopped) {
                    actions.push(Action::Start(name.clone()));
                }
            }
        }
        Status::Stopped | Status::Error | Status::Failed if was_up => {
            let list = if now == Status::Stopped { &rel.on_success } else { &rel.on_failure };
            actions.extend(list.iter().filter(|n| defs.contains_key(*n)).map(|n| Action::Start(n.clone())));
            let (key, action, status) = if now == Status::Stopped {
                ("SuccessAction", &rel.success_action, rel.success_action_exit_status)
            } else {
                ("FailureAction", &rel.failure_action, rel.failure_action_exit_status)
            };
            if let Some(action) = action {
                // systemd propagates an exit status only with exit and exit-force.
                let status = status.filter(|_| action.starts_with("exit"));
                actions.push(Action::Exit(format!("{unit} ended {}: {key}={action}", now.as_str()), status));
            }
            for other in defs.values() {
                let r = &other.relations;
                let bound = r.binds_to.iter().chain(&r.part_of).any(|b| b == unit);
                if bound && up(statuses.get(&other.name)) {
                    actions.push(Action::Stop(other.name.clone()));
                }
                let upholder = r.upholds.iter().any(|u| u == unit) && up(statuses.get(&other.name));
                if upholder && now == Status::Stopped {
                    actions.push(Action::Start(unit.to_string()));
                }
            }
        }
        _ => {}
    }
    actions.dedup();
    actions
}

/// Runs the relations until the events channel closes (the engine is gone).
pub fn spawn(handle: SupervisorHandle, events: broadcast::Receiver<UnitEvent>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(handle, events))
}

async fn run(handle: SupervisorHandle, mut events: broadcast::Receiver<UnitEvent>) {
    let mut defs: HashMap<String, Arc<Unit>> = HashMap::new();
    let mut statuses: HashMap<String, Status> = HashMap::new();
    let mut refresh = true;
    // Asked for the shutdown once; the stops it brings must not ask again.
    let mut exiting = false;
    loop {
        let event = match events.recv().await {
            Ok(event) => event,
            // Missed events: statuses are re-read from a snapshot below.
            Err(broadcast::error::RecvError::Lagged(_)) => {
                refresh = true;
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        if refresh || event.event == EventKind::Config || !defs.contains_key(&event.unit) {
            let Ok(snapshot) = handle.snapshot().await else { return };
            defs = snapshot.iter().map(|s| (s.name.clone(), Arc::clone(&s.unit))).collect();
            statuses = snapshot.iter().map(|s| (s.name.clone(), s.status)).collect();
            refresh = false;
        }
        if event.event != EventKind::State {
            continue;
        }
        let prev = statuses.insert(event.unit.clone(), event.status);
        for action in decide(&defs, &statuses, &event.unit, prev, event.status) {
            let (verb, name, result) = match &action {
                Action::Start(name) => ("start", name, handle.start(name).await),
                Action::Stop(name) => ("stop", name, handle.stop(name).await),
                Action::Exit(why, status) => {
                    if !exiting {
                        exiting = true;
                        // The daemon's own SIGTERM path: stop every unit in order, then exit.
                        super::end_container(why, *status);
                    }
                    continue;
                }
            };
            match result {
                Ok(_) => tracing::info!(unit = %name, because = %event.unit, "{verb} by a unit relation"),
                // Units going down at shutdown trigger relations the engine no longer takes.
                Err(super::CommandError::ShuttingDown) => {}
                Err(e) => {
                    tracing::warn!(unit = %name, because = %event.unit, error = %e, "{verb} by a unit relation refused")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::parse_unit_str;

    fn defs(units: &[(&str, &str)]) -> HashMap<String, Arc<Unit>> {
        units
            .iter()
            .map(|(name, extra)| {
                let text = format!("[Unit]\n{extra}\n[Service]\nExecStart=/bin/true\n");
                let (unit, _) = parse_unit_str(std::path::Path::new(&format!("/u/{name}.service")), &text).expect(name);
                (name.to_string(), Arc::new(unit))
            })
            .collect()
    }

    fn statuses(list: &[(&str, Status)]) -> HashMap<String, Status> {
        list.iter().map(|(n, s)| (n.to_string(), *s)).collect()
    }

    fn start(n: &str) -> Action {
        Action::Start(n.into())
    }
    fn stop(n: &str) -> Action {
        Action::Stop(n.into())
    }

    #[test]
    fn success_and_failure_actions_end_the_container() {
        let d = defs(&[(
            "batch",
            "SuccessAction=exit\nFailureAction=poweroff\nSuccessActionExitStatus=7\nFailureActionExitStatus=9",
        )]);
        let s = statuses(&[("batch", Status::Stopped)]);
        assert_eq!(
            decide(&d, &s, "batch", Some(Status::Started), Status::Stopped),
            [Action::Exit("batch ended stopped: SuccessAction=exit".into(), Some(7))]
        );
        // An exit status goes with exit and exit-force only.
        assert_eq!(
            decide(&d, &s, "batch", Some(Status::Started), Status::Failed),
            [Action::Exit("batch ended failed: FailureAction=poweroff".into(), None)]
        );
        let d = defs(&[("quiet", "SuccessAction=none")]);
        assert!(decide(&d, &s, "quiet", Some(Status::Started), Status::Stopped).is_empty());
    }

    #[test]
    fn on_failure_and_on_success() {
        let d = defs(&[("job", "OnFailure=alert.service\nOnSuccess=next.service"), ("alert", ""), ("next", "")]);
        let s = statuses(&[("job", Status::Error), ("alert", Status::Stopped), ("next", Status::Stopped)]);
        assert_eq!(decide(&d, &s, "job", Some(Status::Started), Status::Error), [start("alert")]);
        assert_eq!(decide(&d, &s, "job", Some(Status::Started), Status::Stopped), [start("next")]);
        // Never ran: nothing to react to.
        assert!(decide(&d, &s, "job", Some(Status::Stopped), Status::Failed).is_empty());
    }

    #[test]
    fn binds_to_and_part_of_stop_with_the_other_unit() {
        let d = defs(&[("app", "BindsTo=db.service"), ("side", "PartOf=db.service"), ("db", "")]);
        let s = statuses(&[("app", Status::Started), ("side", Status::Started), ("db", Status::Error)]);
        let mut got = decide(&d, &s, "db", Some(Status::Started), Status::Error);
        got.sort_by_key(|a| format!("{a:?}"));
        assert_eq!(got, [stop("app"), stop("side")]);
        // Starting app starts what it binds to.
        let s = statuses(&[("app", Status::Starting), ("db", Status::Stopped)]);
        assert_eq!(decide(&d, &s, "app", Some(Status::Stopped), Status::Starting), [start("db")]);
    }

    #[test]
    fn conflicts_stop_the_other_side_either_way() {
        let d = defs(&[("a", "Conflicts=b.service"), ("b", ""), ("c", "Conflicts=a.service")]);
        let s = statuses(&[("a", Status::Starting), ("b", Status::Started), ("c", Status::Started)]);
        let mut got = decide(&d, &s, "a", Some(Status::Stopped), Status::Starting);
        got.sort_by_key(|a| format!("{a:?}"));
        assert_eq!(got, [stop("b"), stop("c")]);
    }

    #[test]
    fn upholds_restarts_a_stopped_unit_but_not_a_crashing_one() {
        let d = defs(&[("keeper", "Upholds=kept.service"), ("kept", "")]);
        let s = statuses(&[("keeper", Status::Started), ("kept", Status::Stopped)]);
        assert_eq!(decide(&d, &s, "keeper", Some(Status::Starting), Status::Started), [start("kept")]);
        assert_eq!(decide(&d, &s, "kept", Some(Status::Started), Status::Stopped), [start("kept")]);
        let s = statuses(&[("keeper", Status::Started), ("kept", Status::Error)]);
        assert!(decide(&d, &s, "kept", Some(Status::Started), Status::Error).is_empty());
        let s = statuses(&[("keeper", Status::Stopped), ("kept", Status::Stopped)]);
        assert!(decide(&d, &s, "kept", Some(Status::Started), Status::Stopped).is_empty());
    }
}
