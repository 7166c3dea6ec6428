//! /api/v1/instances, /api/v1/blueprints and /api/v1/trashcan.

use std::collections::BTreeMap;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Deserializer};

use super::api::checked_name;
use super::error::{ApiError, ApiResult};
use super::AppState;
use crate::api::{
    Action, AutoPort, EnvName, InstallPhase, InstanceActionReply, InstanceScript, InstanceUpdateReply, InstanceView,
    PortSetting, ScriptSaved, ShownStatus, Slot,
};
use crate::instances::{
    app_url_of, direct_port_of, url_of, vnc_url_of, InstanceChanges, InstanceManager, InstanceSpec,
};
use crate::proxy::ProxyMode;
use crate::supervisor::UnitSnapshot;
use crate::units::PortSpec;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/instances", get(list).post(create))
        .route("/api/v1/instances/{name}", get(show).patch(update).delete(delete))
        .route("/api/v1/instances/{name}/script", get(script).put(set_script))
        .route("/api/v1/instances/{name}/{action}", post(action))
        .route("/api/v1/blueprints", get(blueprints).post(save_blueprint))
        .route("/api/v1/trashcan", get(trash))
        .route("/api/v1/trashcan/{id}/restore", post(restore))
        .route("/api/v1/trashcan/{id}", axum::routing::delete(purge))
}

/// `Some(None)` for an explicit `null` (clear the field), `None` when absent.
fn explicit<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// `active_slot`: a slot's name, or `""` for none (what the dashboard's form sends).
#[derive(Deserialize)]
#[serde(try_from = "String")]
struct SlotInput(Option<Slot>);

impl TryFrom<String> for SlotInput {
    type Error = String;
    fn try_from(text: String) -> Result<SlotInput, String> {
        if text.is_empty() {
            Ok(SlotInput(None))
        } else {
            Slot::parse(&text).map(|s| SlotInput(Some(s)))
        }
    }
}

impl SlotInput {
    fn slot(self) -> Option<Slot> {
        self.0
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum GpuId {
    Index(u32),
    Text(String),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum GpusInput {
    Text(String),
    List(Vec<GpuId>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum PortInput {
    Number(i64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceInput {
    name: Option<String>,
    description: Option<String>,
    blueprint: Option<String>,
    gpus: Option<GpusInput>,
    port: Option<PortInput>,
    autostart: Option<bool>,
    #[serde(default, deserialize_with = "explicit")]
    active_slot: Option<Option<SlotInput>>,
    persistent_mode: Option<bool>,
    /// Served without login (shared deliberately).
    public: Option<bool>,
    stall_after_sec: Option<u64>,
    #[serde(default, deserialize_with = "explicit")]
    output_dir: Option<Option<String>>,
    /// Names checked as the body is read: a bad one is a 400 naming it.
    environment: Option<BTreeMap<EnvName, String>>,
    /// Create only: start it right away.
    start: Option<bool>,
}

impl InstanceInput {
    pub(crate) fn changes(self) -> ApiResult<(InstanceChanges, bool)> {
        let gpus = match self.gpus {
            None => None,
            Some(GpusInput::Text(text)) => {
                Some(text.split([',', ' ']).map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect())
            }
            Some(GpusInput::List(ids)) => Some(
                ids.into_iter()
                    .map(|g| match g {
                        GpuId::Index(n) => n.to_string(),
                        GpuId::Text(t) => t,
                    })
                    .collect(),
            ),
        };
        let port = match self.port {
            None => None,
            Some(PortInput::Text(t)) if t == "auto" => Some(PortSpec::Auto),
            Some(PortInput::Number(n)) if (1..=65535).contains(&n) => Some(PortSpec::Fixed(n as u16)),
            Some(PortInput::Text(t)) => match t.parse::<u16>() {
                Ok(n) if n > 0 => Some(PortSpec::Fixed(n)),
                _ => return Err(ApiError::bad_request(format!("port {t:?} is not 1-65535 or \"auto\""))),
            },
            Some(PortInput::Number(n)) => {
                return Err(ApiError::bad_request(format!("port {n} is out of range 1-65535")))
            }
        };
        let changes = InstanceChanges {
            name: self.name,
            description: self.description,
            blueprint: self.blueprint,
            gpus,
            port,
            autostart: self.autostart,
            active_slot: self.active_slot.map(|slot| slot.and_then(SlotInput::slot).map(|s| s.as_str().to_string())),
            persistent_mode: self.persistent_mode,
            public: self.public,
            stall_after_sec: self.stall_after_sec,
            output_dir: self.output_dir.map(|o| o.map(Into::into)),
            environment: self.environment.map(|env| env.into_iter().map(|(k, v)| (k.into(), v)).collect()),
        };
        Ok((changes, self.start.unwrap_or(false)))
    }
}

/// GPUs= entries that name no GPU NVML reports. Only a warning: the driver
/// may be missing in a dev box, and MIG or renumbering may explain it.
pub fn gpu_warnings(gpus: &[String], known: &[(u32, String)]) -> Vec<String> {
    if known.is_empty() {
        return Vec::new();
    }
    gpus.iter()
        .filter(|id| !id.starts_with("auto"))
        .filter(|id| !known.iter().any(|(index, uuid)| index.to_string() == **id || uuid == *id))
        .map(|id| {
            let listed: Vec<String> = known.iter().map(|(i, _)| i.to_string()).collect();
            format!("GPU {id} is not among the GPUs NVML reports ({})", listed.join(", "))
        })
        .collect()
}

impl InstanceView {
    /// The URL fields made absolute: on the apps origin, and for a `port`
    /// instance (not the ComfyUI slot's holder) its own port on the host
    /// the client used, where NGINX serves it behind the login.
    pub(crate) fn on_origin(mut self, apps: &str, port_origin: impl Fn(u16) -> String) -> InstanceView {
        let own_port =
            self.direct_port.filter(|_| self.proxy == ProxyMode::Port && !self.app_url.starts_with("/comfyui"));
        self.app_url = match own_port {
            Some(port) => format!("{}/", port_origin(port)),
            None => format!("{apps}{}", self.app_url),
        };
        self.vnc_url = self.vnc_url.map(|u| format!("{apps}{u}"));
        // A persistent instance opens on its display.
        self.url = self.vnc_url.clone().unwrap_or_else(|| self.app_url.clone());
        self
    }
}

/// An instance as the API shows it to the client that sent `headers`.
pub(crate) fn view_for(state: &AppState, headers: &HeaderMap, unit: &UnitSnapshot) -> Option<InstanceView> {
    let apps = state.origins.apps(headers);
    let port_origin =
        |port: u16| format!("{}://{}:{port}", super::origin::scheme(headers), super::origin::hostname(headers));
    view(unit, &state.instances, &known_gpus(state)).map(|v| v.on_origin(&apps, port_origin))
}

pub fn view(unit: &UnitSnapshot, manager: &InstanceManager, known_gpus: &[(u32, String)]) -> Option<InstanceView> {
    let spec = InstanceSpec::from_unit(&unit.unit)?;
    let warnings = gpu_warnings(&spec.gpus, known_gpus);
    let proxy = manager.proxy_mode(&unit.name, &spec.blueprint);
    // `draining` or `idle-stopped` over the engine's status (instances::quiesce).
    let overlay = manager.ops.overlay(unit);
    let install = manager.ops.install(&unit.name);
    let inst = unit.unit.instance.as_ref();
    let shared = manager.ctx.gpus.as_ref();
    Some(InstanceView {
        placed_gpus: shared.and_then(|g| g.placer.placed_of(&unit.name)),
        vram_bytes: shared.and_then(|g| g.placer.observed_total(&unit.name)),
        warnings,
        name: spec.name,
        kind: crate::units::UnitKind::Instance,
        description: spec.description,
        blueprint: spec.blueprint,
        gpus: spec.gpus.join(","),
        port: match spec.port {
            PortSpec::Auto => PortSetting::Auto(AutoPort::Auto),
            PortSpec::Fixed(p) => PortSetting::Fixed(p),
        },
        current_port: unit.port,
        autostart: spec.autostart,
        active_slot: spec.active_slot,
        persistent_mode: spec.persistent_mode,
        public: spec.public,
        stall_after_sec: spec.stall_after_sec,
        output_dir: spec.output_dir.map(|d| d.display().to_string()),
        environment: spec.environment,
        status: overlay.as_ref().map_or(ShownStatus::Unit(unit.status), |o| ShownStatus::Overlay(o.0.to_string())),
        detail: overlay.map_or_else(|| unit.detail.clone(), |o| o.1),
        idle_stop_sec: inst.and_then(|i| i.idle_stop).map(|d| d.as_secs()),
        app_version: install
            .as_ref()
            .and_then(|i| i.version.clone())
            .or_else(|| crate::instances::quiesce::installed_version(&manager.ctx, &unit.name)),
        install: install.map(install_phase),
        drain_check: inst.and_then(|i| i.drain_check.clone()),
        failure: unit.failure.clone(),
        pid: unit.pid,
        restarts: unit.restarts,
        since: unit.since_ms,
        seq: unit.seq,
        url: url_of(unit),
        app_url: app_url_of(unit),
        vnc_url: vnc_url_of(unit),
        proxy,
        direct_port: direct_port_of(unit, proxy),
    })
}

/// The install phase on the wire.
fn install_phase(v: crate::instances::install::InstallView) -> InstallPhase {
    InstallPhase {
        state: v.state.to_string(),
        step: v.step,
        steps: v.steps,
        name: v.name,
        activity: v.activity,
        version: v.version,
    }
}

pub(crate) fn known_gpus(state: &AppState) -> Vec<(u32, String)> {
    state.metrics.as_ref().map(|m| m.gpu_ids()).unwrap_or_default()
}

fn one(state: &AppState, headers: &HeaderMap, unit: &UnitSnapshot) -> ApiResult<Json<InstanceView>> {
    view_for(state, headers, unit)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("{} is not an instance", unit.name)))
}

async fn list(State(state): State<AppState>, headers: HeaderMap) -> ApiResult<Json<Vec<InstanceView>>> {
    Ok(Json(state.instances.instances().await?.iter().filter_map(|u| view_for(&state, &headers, u)).collect()))
}

async fn show(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Json<InstanceView>> {
    let name = checked_name(&name)?;
    one(&state, &headers, &state.instances.instance(name).await?)
}

async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<InstanceInput>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<InstanceView>)> {
    let (changes, start) = body?.0.changes()?;
    let unit = state.instances.create(changes, start).await?;
    Ok((StatusCode::CREATED, one(&state, &headers, &unit)?))
}

#[derive(Deserialize)]
struct RestartQuery {
    restart: Option<bool>,
}

#[derive(Deserialize)]
struct ForceQuery {
    force: Option<bool>,
}

async fn update(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    query: Result<Query<RestartQuery>, QueryRejection>,
    body: Result<Json<InstanceInput>, JsonRejection>,
) -> ApiResult<Json<InstanceUpdateReply>> {
    let name = checked_name(&name)?;
    let restart = query?.restart.unwrap_or(false);
    let (changes, _) = body?.0.changes()?;
    let outcome = state.instances.update(name, changes, restart, &state.logs).await?;
    let unit = state.instances.instance(&outcome.name).await?;
    Ok(Json(InstanceUpdateReply {
        instance: view_for(&state, &headers, &unit),
        restarted: outcome.restarted,
        restart_pending: outcome.restart_pending,
    }))
}

async fn delete(
    State(state): State<AppState>,
    Path(name): Path<String>,
    query: Result<Query<ForceQuery>, QueryRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let name = checked_name(&name)?;
    let force = query?.force.unwrap_or(false);
    let entry = state.instances.delete(name, force).await?;
    Ok(Json(serde_json::json!({ "trashed": entry })))
}

async fn action(
    State(state): State<AppState>,
    Path((name, action)): Path<(String, String)>,
) -> ApiResult<Json<InstanceActionReply>> {
    let name = checked_name(&name)?;
    state.instances.instance(name).await?;
    // A stop or restart of an instance with a drain check waits for it: `draining` (docs/operations.md).
    let status = match (Action::parse(&action), action.as_str()) {
        (Some(a), _) => super::api::shown(&state, a, name).await?,
        (None, "rebuild") => ShownStatus::Unit(state.instances.rebuild(name).await?),
        (None, "reinstall") => ShownStatus::Overlay(state.instances.request_install(name, false).await?.to_string()),
        (None, "update") => ShownStatus::Overlay(state.instances.request_install(name, true).await?.to_string()),
        (None, other) => {
            return Err(ApiError::not_found(format!(
                "unknown action {other:?}: use start, stop, restart, rebuild, reinstall or update"
            )))
        }
    };
    Ok(Json(InstanceActionReply { instance: name.to_string(), action, status }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScriptInput {
    content: String,
}

async fn script(State(state): State<AppState>, Path(name): Path<String>) -> ApiResult<Json<InstanceScript>> {
    let name = checked_name(&name)?;
    let content = state.instances.script(name).await?;
    Ok(Json(InstanceScript { instance: name.to_string(), content }))
}

async fn set_script(
    State(state): State<AppState>,
    Path(name): Path<String>,
    query: Result<Query<RestartQuery>, QueryRejection>,
    body: Result<Json<ScriptInput>, JsonRejection>,
) -> ApiResult<Json<ScriptSaved>> {
    let name = checked_name(&name)?;
    let restart = query?.restart.unwrap_or(false);
    let content = body?.0.content;
    let pending = state.instances.set_script(name, &content, restart).await?;
    Ok(Json(ScriptSaved { instance: name.to_string(), saved: true, restart_pending: pending }))
}

async fn blueprints(State(state): State<AppState>) -> Json<Vec<crate::instances::blueprints::Blueprint>> {
    Json(state.instances.blueprints())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SaveBlueprint {
    /// The instance whose launch.sh becomes the blueprint.
    instance: String,
    id: String,
}

async fn save_blueprint(
    State(state): State<AppState>,
    body: Result<Json<SaveBlueprint>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<crate::instances::blueprints::Blueprint>)> {
    let input = body?.0;
    checked_name(&input.instance)?;
    let blueprint = state.instances.save_blueprint(&input.instance, &input.id).await?;
    Ok((StatusCode::CREATED, Json(blueprint)))
}

async fn trash(State(state): State<AppState>) -> Json<Vec<crate::instances::TrashEntry>> {
    Json(state.instances.trash())
}

async fn restore(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<InstanceView>> {
    one(&state, &headers, &state.instances.restore(&id).await?)
}

async fn purge(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    state.instances.purge(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::gpu_warnings;

    #[test]
    fn unknown_gpu_ids_warn_only_when_nvml_reports_gpus() {
        let known = vec![(0, "GPU-aaa".to_string()), (1, "GPU-bbb".to_string())];
        assert!(gpu_warnings(&["0".into(), "GPU-bbb".into()], &known).is_empty());
        let w = gpu_warnings(&["3".into()], &known);
        assert_eq!(w, ["GPU 3 is not among the GPUs NVML reports (0, 1)"]);
        assert!(gpu_warnings(&["3".into()], &[]).is_empty(), "no NVML: nothing to check against");
    }
}
