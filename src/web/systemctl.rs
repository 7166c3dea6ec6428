//! The API behind the CLI's systemctl habits (issue 14): a unit's file, its
//! properties, its dependency tree, its processes, kill, reset-failed,
//! enable/disable, and loading a template's instance on first start.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use super::api::checked_name;
use super::error::{ApiError, ApiResult};
use super::AppState;
use crate::api::{
    DependencyTree, InstallChanges, KillReply, ProcessInfo, ResetFailedReply, UnitFile, UnitProcesses, UnitProperties,
};
use crate::supervisor::UnitSnapshot;
use crate::units::{self, install, ExecCommand, Unit, UnitKind};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/units/{name}/file", get(unit_file))
        .route("/api/v1/units/{name}/properties", get(properties))
        .route("/api/v1/units/{name}/dependencies", get(dependencies))
        .route("/api/v1/units/{name}/processes", get(processes))
        .route("/api/v1/units/{name}/kill", post(kill))
        .route("/api/v1/units/{name}/reset-failed", post(reset_failed))
        .route("/api/v1/units/{name}/enable", post(enable))
        .route("/api/v1/units/{name}/disable", post(disable))
}

/// Before a client's start, stop or restart: a template's instance is
/// loaded, and RefuseManualStart=/RefuseManualStop= are honoured.
pub async fn before_action(state: &AppState, name: &str, action: &str) -> ApiResult<()> {
    if matches!(action, "start" | "restart") {
        ensure_instance(state, name).await?;
    }
    let snapshot = state.supervisor.snapshot().await?;
    let Some(unit) = snapshot.iter().find(|u| u.name == name) else { return Ok(()) };
    let rel = &unit.unit.relations;
    let refused = match action {
        "start" => rel.refuse_manual_start.then_some("RefuseManualStart=yes"),
        "stop" => rel.refuse_manual_stop.then_some("RefuseManualStop=yes"),
        "restart" => {
            (rel.refuse_manual_start || rel.refuse_manual_stop).then_some("RefuseManualStart=/RefuseManualStop=")
        }
        _ => None,
    };
    match refused {
        Some(key) => Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            format!("{name}: {key}: it is started and stopped only through its dependencies"),
        )),
        None => Ok(()),
    }
}

/// Before a start: `echo@a` that is not loaded yet but whose template
/// `echo@.service` is, is made now (as systemd loads it on demand).
async fn ensure_instance(state: &AppState, name: &str) -> ApiResult<()> {
    let Some(template) = units::template_of(name) else { return Ok(()) };
    // No template file, no reload: a start of `nope@x` stays a plain 404.
    let file = format!("{template}.service");
    if !state.reloader.units_dirs().iter().any(|d| d.join(&file).is_file()) {
        return Ok(());
    }
    let loaded = state.supervisor.snapshot().await?.iter().any(|u| u.name == name);
    if !loaded {
        let report = state.reloader.instantiate(name).await?;
        if report.diagnostics.iter().any(|d| d.contains(name) && !d.contains("warning:")) {
            tracing::warn!(unit = %name, "template instance has errors");
        }
    }
    Ok(())
}

/// `aikore cat`: the file a unit was read from (its template's for an instance of one).
async fn unit_file(State(state): State<AppState>, Path(name): Path<String>) -> ApiResult<Json<UnitFile>> {
    let snap = super::api::find_unit(&state, &name).await?;
    let path = snap.unit.path.clone();
    let text = tokio::task::spawn_blocking(move || std::fs::read_to_string(&path))
        .await
        .map_err(ApiError::internal)?
        .map_err(|e| ApiError::not_found(format!("cannot read {}: {e}", snap.unit.path.display())))?;
    Ok(Json(UnitFile { unit: snap.name, path: snap.unit.path.display().to_string(), text }))
}

fn words(cmd: &ExecCommand) -> String {
    let prefix = if cmd.ignore_failure { "-" } else { "" };
    format!("{prefix}{}", cmd.argv.join(" "))
}

fn with_suffix(names: &[String]) -> String {
    names
        .iter()
        .map(|n| if n.ends_with(".target") { n.clone() } else { format!("{n}.service") })
        .collect::<Vec<_>>()
        .join(" ")
}

fn usec(d: Option<std::time::Duration>) -> String {
    d.map_or_else(|| "infinity".to_string(), |d| d.as_micros().to_string())
}

/// `aikore show`: `Key=value` pairs, systemd's property names where they exist.
fn property_list(snap: &UnitSnapshot, unit: &Unit, file_state: &str) -> Vec<(String, String)> {
    let s = &unit.service;
    let suffix = if unit.kind == UnitKind::Instance { "instance" } else { "service" };
    let mut p: Vec<(&str, String)> = vec![
        ("Id", format!("{}.{suffix}", unit.name)),
        (
            "Names",
            std::iter::once(&unit.name)
                .chain(&unit.aliases)
                .map(|n| format!("{n}.{suffix}"))
                .collect::<Vec<_>>()
                .join(" "),
        ),
        ("OOMPolicy", s.oom_policy.as_str().into()),
        ("StopWhenUnneeded", if unit.relations.stop_when_unneeded { "yes" } else { "no" }.into()),
        ("Description", unit.description.clone()),
        ("LoadState", "loaded".into()),
        ("ActiveState", units::active_state_of(snap.status.as_str()).into()),
        ("SubState", snap.status.as_str().into()),
        ("StatusText", snap.detail.clone().unwrap_or_default()),
        ("MainPID", snap.pid.unwrap_or(0).to_string()),
        ("NRestarts", snap.restarts.to_string()),
        ("FragmentPath", unit.path.display().to_string()),
        ("UnitFileState", file_state.into()),
        ("Template", unit.template.clone().map(|t| format!("{t}.service")).unwrap_or_default()),
        ("Type", s.service_type.as_str().into()),
        (
            "Restart",
            serde_json::to_value(s.restart).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default(),
        ),
        ("RestartUSec", s.restart_sec.as_micros().to_string()),
        ("TimeoutStartUSec", usec(s.timeout_start)),
        ("TimeoutStopUSec", usec(s.timeout_stop)),
        ("KillMode", format!("{:?}", s.kill_mode).to_lowercase()),
        ("KillSignal", s.kill_signal.to_string()),
        ("RemainAfterExit", if s.remain_after_exit { "yes" } else { "no" }.into()),
        ("ExecStartPre", s.exec_start_pre.iter().map(words).collect::<Vec<_>>().join(" ; ")),
        ("ExecStart", s.exec_start.iter().chain(&s.exec_start_more).map(words).collect::<Vec<_>>().join(" ; ")),
        ("ExecReload", s.exec_reload.iter().map(words).collect::<Vec<_>>().join(" ; ")),
        ("ExecStop", s.exec_stop.iter().map(words).collect::<Vec<_>>().join(" ; ")),
        ("WorkingDirectory", s.working_directory.as_ref().map(|p| p.display().to_string()).unwrap_or_default()),
        ("User", s.user.clone().unwrap_or_default()),
        ("Group", s.group.clone().unwrap_or_default()),
        ("Environment", s.environment.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")),
        ("MemoryMax", s.memory_max.map_or_else(|| "infinity".into(), |b| b.to_string())),
        ("Requires", with_suffix(&unit.requires)),
        ("Wants", with_suffix(&unit.wants)),
        ("After", with_suffix(&unit.after)),
        ("Before", with_suffix(&unit.before)),
    ];
    for (key, list) in unit.relations.all() {
        p.push((key, with_suffix(list)));
    }
    p.push(("WantedBy", with_suffix(&unit.install.wanted_by)));
    p.push(("RequiredBy", with_suffix(&unit.install.required_by)));
    p.push(("Also", with_suffix(&unit.install.also)));
    p.push(("StartLimitBurst", unit.start_limit_burst.to_string()));
    p.push(("StartLimitIntervalUSec", unit.start_limit_interval.as_micros().to_string()));
    p.push((
        "Result",
        snap.failure.as_ref().map_or_else(|| "success".into(), |f| format!("{:?}", f.class).to_lowercase()),
    ));
    p.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

async fn properties(State(state): State<AppState>, Path(name): Path<String>) -> ApiResult<Json<UnitProperties>> {
    let snap = super::api::find_unit(&state, &name).await?;
    let unit = Arc::clone(&snap.unit);
    let dirs = state.reloader.units_dirs().to_vec();
    let file_state = if unit.kind == UnitKind::Instance {
        if unit.instance.as_ref().is_some_and(|i| i.autostart) {
            "enabled"
        } else {
            "disabled"
        }
    } else {
        let unit = Arc::clone(&unit);
        tokio::task::spawn_blocking(move || install::state(&unit, &dirs)).await.map_err(ApiError::internal)?
    };
    let properties = property_list(&snap, &unit, file_state);
    Ok(Json(UnitProperties { unit: snap.name, properties }))
}

async fn dependencies(State(state): State<AppState>, Path(name): Path<String>) -> ApiResult<Json<DependencyTree>> {
    let name = checked_name(&name)?.to_string();
    let units: Vec<Unit> = state.supervisor.snapshot().await?.iter().map(|s| (*s.unit).clone()).collect();
    units::dependency_tree(&units, &name)
        .map(|tree| Json(tree.into()))
        .ok_or_else(|| ApiError::not_found(format!("no unit named {name:?}")))
}

/// `/proc/<pid>/stat`'s ppid and the command line (comm when it has none: a kernel-side name).
fn process_view(pid: i32) -> Option<ProcessInfo> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let comm = stat.get(stat.find('(')? + 1..stat.rfind(')')?)?.to_string();
    let ppid = stat.get(stat.rfind(')')? + 1..)?.split_whitespace().nth(1)?.parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let words: Vec<String> =
        cmdline.split(|b| *b == 0).filter(|w| !w.is_empty()).map(|w| String::from_utf8_lossy(w).into_owned()).collect();
    let command = if words.is_empty() { format!("[{comm}]") } else { words.join(" ") };
    // A command line is app text: no control characters reach the operator's terminal.
    let command: String = command.chars().filter(|c| !c.is_control()).take(400).collect();
    Some(ProcessInfo { pid, ppid, command })
}

/// The unit's live processes, as the metrics sampler finds them (its cgroup,
/// else its main process's tree), or just the main pid without metrics.
fn unit_pids(state: &AppState, snap: &UnitSnapshot) -> (Vec<i32>, Option<(f64, u64)>) {
    match &state.metrics {
        Some(metrics) => {
            let usage = metrics.unit_usage(&snap.name, snap.pid);
            (usage.pids, Some((usage.cpu_seconds, usage.memory_bytes)))
        }
        None => (snap.pid.into_iter().collect(), None),
    }
}

async fn processes(State(state): State<AppState>, Path(name): Path<String>) -> ApiResult<Json<UnitProcesses>> {
    let snap = super::api::find_unit(&state, &name).await?;
    let (pids, usage, procs) = {
        let state = state.clone();
        let snap = snap.clone();
        tokio::task::spawn_blocking(move || {
            let (pids, usage) = unit_pids(&state, &snap);
            let procs: Vec<ProcessInfo> = pids.iter().filter_map(|p| process_view(*p)).collect();
            (pids, usage, procs)
        })
        .await
        .map_err(ApiError::internal)?
    };
    let ip = crate::supervisor::cgroup_bpf::ip_counters(&snap.name).map(|c| crate::api::IpTraffic {
        ingress_bytes: c.ingress.bytes,
        ingress_packets: c.ingress.packets,
        egress_bytes: c.egress.bytes,
        egress_packets: c.egress.packets,
    });
    Ok(Json(UnitProcesses {
        unit: snap.name,
        main_pid: snap.pid,
        tasks: pids.len(),
        cpu_seconds: usage.map(|u| u.0),
        memory_bytes: usage.map(|u| u.1),
        processes: procs,
        ip,
    }))
}

#[derive(Deserialize)]
struct KillQuery {
    signal: Option<String>,
}

/// `aikore kill`: a signal to every process of the unit; what follows (an
/// exit, a restart) is the engine's as for any exit.
async fn kill(
    State(state): State<AppState>,
    Path(name): Path<String>,
    query: Result<Query<KillQuery>, QueryRejection>,
) -> ApiResult<Json<KillReply>> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(format!("bad query: {}", e.body_text())))?;
    let signal = match q.signal.as_deref() {
        None => libc::SIGTERM,
        Some(s) => units::parse_signal(s).map_err(|e| ApiError::bad_request(format!("signal {s:?}: {e}")))?,
    };
    let snap = super::api::find_unit(&state, &name).await?;
    let signalled = {
        let state = state.clone();
        let snap = snap.clone();
        tokio::task::spawn_blocking(move || {
            let (pids, _) = unit_pids(&state, &snap);
            pids.into_iter()
                .filter(|pid| {
                    let sig = nix::sys::signal::Signal::try_from(signal).ok();
                    nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), sig).is_ok()
                })
                .collect::<Vec<i32>>()
        })
        .await
        .map_err(ApiError::internal)?
    };
    tracing::info!(unit = %snap.name, signal, pids = ?signalled, "kill requested");
    Ok(Json(KillReply { unit: snap.name, signal, pids: signalled }))
}

async fn reset_failed(State(state): State<AppState>, Path(name): Path<String>) -> ApiResult<Json<ResetFailedReply>> {
    let name = checked_name(&name)?;
    let status = state.supervisor.reset_failed(name).await?;
    Ok(Json(ResetFailedReply { unit: name.to_string(), status }))
}

/// enable/disable take a template name too (`getty@`: its DefaultInstance=).
fn install_name(name: &str) -> ApiResult<&str> {
    if units::name::is_template_name(name) {
        Ok(name)
    } else {
        checked_name(name)
    }
}

async fn enable(State(state): State<AppState>, Path(name): Path<String>) -> ApiResult<Json<InstallChanges>> {
    change_install(state, name, true).await
}

async fn disable(State(state): State<AppState>, Path(name): Path<String>) -> ApiResult<Json<InstallChanges>> {
    change_install(state, name, false).await
}

async fn change_install(state: AppState, name: String, on: bool) -> ApiResult<Json<InstallChanges>> {
    let name = install_name(&name)?.to_string();
    let snapshot = state.supervisor.snapshot().await?;
    if snapshot.iter().any(|u| u.name == name && u.kind == UnitKind::Instance) {
        return Err(ApiError::bad_request(format!(
            "{name} is an instance: it starts at boot with Autostart=yes (its settings), not with enable/disable"
        )));
    }
    let dirs = state.reloader.units_dirs().to_vec();
    let unit = name.clone();
    let changes =
        tokio::task::spawn_blocking(
            move || {
                if on {
                    install::enable(&dirs, &unit)
                } else {
                    install::disable(&dirs, &unit)
                }
            },
        )
        .await
        .map_err(ApiError::internal)?
        .map_err(|e| {
            if e.starts_with("no unit file") {
                ApiError::not_found(e)
            } else {
                ApiError::bad_request(e)
            }
        })?;
    state.reloader.reload().await?;
    Ok(Json(InstallChanges { unit: name, enabled: on, changes }))
}
