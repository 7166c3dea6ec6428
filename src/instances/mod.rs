//! Instances: AI web UIs created from blueprints. An instance is a
//! `<data>/units/<name>.instance` unit file plus its dir
//! `<data>/instances/<name>/` (launch.sh, outputs). This module owns their
//! lifecycle on disk: create, update, rename, trash, restore, purge, scripts.
//! Running them is the supervisor's job, like any unit.

pub mod blueprints;
pub mod gpus;
pub mod install;
pub mod persistent;
pub mod quiesce;
pub mod runtime;
pub mod unitfile;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use runtime::{InstanceContext, DEFAULT_PORT_RANGE};
pub use unitfile::InstanceSpec;

use crate::clock::now_ms;
use crate::supervisor::reload::Reloader;
use crate::supervisor::{Status, SupervisorHandle, UnitSnapshot};
use crate::units::{is_valid_unit_name, PortSpec, UnitKind};

/// What went wrong, by who can fix it: the caller (4xx) or us (5xx).
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Internal(String),
}

impl From<std::io::Error> for InstanceError {
    fn from(e: std::io::Error) -> Self {
        InstanceError::Internal(e.to_string())
    }
}

/// An error from a file operation in an instance dir (the instance user's):
/// a planted symlink, FIFO or directory is the caller's problem to look at
/// (409 with what was refused), not ours (500).
fn instance_file_error(e: std::io::Error, what: &str) -> InstanceError {
    match e.kind() {
        std::io::ErrorKind::NotFound => InstanceError::NotFound(format!("{what}: not found")),
        std::io::ErrorKind::InvalidData | std::io::ErrorKind::IsADirectory | std::io::ErrorKind::NotADirectory => {
            InstanceError::Conflict(format!("{what}: refused: {e}"))
        }
        _ if e.raw_os_error() == Some(libc::ELOOP) => {
            InstanceError::Conflict(format!("{what} is a symlink: refused (never followed)"))
        }
        _ => InstanceError::Internal(format!("{what}: {e}")),
    }
}

impl From<crate::supervisor::CommandError> for InstanceError {
    fn from(e: crate::supervisor::CommandError) -> Self {
        use crate::supervisor::CommandError::*;
        match e {
            NoSuchUnit(_) => InstanceError::NotFound(e.to_string()),
            Refused { .. } => InstanceError::Conflict(e.to_string()),
            ShuttingDown | Gone => InstanceError::Internal(e.to_string()),
        }
    }
}

pub type Result<T> = std::result::Result<T, InstanceError>;

pub use crate::urls::SLOT_COMFYUI;

/// A stop requested by delete/rename waits at most this long for the unit to
/// go down (its own TimeoutStopSec escalates to SIGKILL well before).
const STOP_WAIT: Duration = Duration::from_secs(120);

/// Fields a create or update may set; `None` leaves a field as it is.
#[derive(Debug, Default, Clone)]
pub struct InstanceChanges {
    pub name: Option<String>,
    pub description: Option<String>,
    pub blueprint: Option<String>,
    pub gpus: Option<Vec<String>>,
    pub port: Option<PortSpec>,
    pub autostart: Option<bool>,
    pub active_slot: Option<Option<String>>,
    pub persistent_mode: Option<bool>,
    pub public: Option<bool>,
    pub stall_after_sec: Option<u64>,
    pub output_dir: Option<Option<PathBuf>>,
    pub environment: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct TrashEntry {
    /// The entry's id in the trash can: `<name>-<deleted_ms>`.
    pub id: String,
    pub name: String,
    pub deleted_ms: i64,
}

pub struct InstanceManager {
    pub ctx: InstanceContext,
    pub stock_blueprints: PathBuf,
    supervisor: SupervisorHandle,
    reloader: Arc<Reloader>,
    /// Drain before stop, idle stop and wake (docs/operations.md).
    pub ops: Arc<quiesce::Ops>,
    /// Serializes every change on disk: two requests creating the same name,
    /// or renaming onto each other, must not interleave.
    lock: tokio::sync::Mutex<()>,
}

/// The API's GPU words, by the unit files' rule (`units::GpuSpec::parse`).
pub fn validate_gpus(gpus: &[String]) -> Result<()> {
    crate::units::GpuSpec::parse(&gpus.join(",")).map(|_| ()).map_err(InstanceError::Invalid)
}

fn validate_environment(env: &BTreeMap<String, String>) -> Result<()> {
    for (k, v) in env {
        crate::units::EnvName::parse(k).map_err(InstanceError::Invalid)?;
        if v.contains(['\n', '\r', '\0']) {
            return Err(InstanceError::Invalid(format!("environment value of {k} contains a line break or NUL")));
        }
    }
    Ok(())
}

fn validate_spec(spec: &InstanceSpec) -> Result<()> {
    if !is_valid_unit_name(&spec.name) {
        return Err(InstanceError::Invalid(format!(
            "invalid instance name {:?}: use 1-63 lowercase letters, digits, '-' or '_', starting with a letter or digit",
            spec.name
        )));
    }
    validate_gpus(&spec.gpus)?;
    validate_environment(&spec.environment)?;
    if let PortSpec::Fixed(0) = spec.port {
        return Err(InstanceError::Invalid("port must be 1-65535 or \"auto\"".into()));
    }
    if let Some(slot) = &spec.active_slot {
        crate::urls::Slot::parse(slot).map_err(InstanceError::Invalid)?;
    }
    if spec.description.contains(['\n', '\r', '\0']) {
        return Err(InstanceError::Invalid("description must be one line".into()));
    }
    if let Some(dir) = &spec.output_dir {
        if !dir.is_absolute() || dir.to_str().is_none_or(|s| s.contains(['\n', '\0'])) {
            return Err(InstanceError::Invalid("output_dir must be an absolute path".into()));
        }
    }
    if spec.stall_after_sec == 0 || spec.stall_after_sec > 7 * 24 * 3600 {
        return Err(InstanceError::Invalid("stall_after_sec must be between 1 and 604800".into()));
    }
    Ok(())
}

impl InstanceChanges {
    fn apply(&self, spec: &mut InstanceSpec) {
        if let Some(v) = &self.name {
            spec.name = v.clone();
        }
        if let Some(v) = &self.description {
            spec.description = v.clone();
        }
        if let Some(v) = &self.blueprint {
            spec.blueprint = v.clone();
        }
        if let Some(v) = &self.gpus {
            spec.gpus = v.clone();
        }
        if let Some(v) = self.port {
            spec.port = v;
        }
        if let Some(v) = self.autostart {
            spec.autostart = v;
        }
        if let Some(v) = &self.active_slot {
            spec.active_slot = v.clone().filter(|s| !s.is_empty());
        }
        if let Some(v) = self.persistent_mode {
            spec.persistent_mode = v;
        }
        if let Some(v) = self.public {
            spec.public = v;
        }
        if let Some(v) = self.stall_after_sec {
            spec.stall_after_sec = v;
        }
        if let Some(v) = &self.output_dir {
            spec.output_dir = v.clone();
        }
        if let Some(v) = &self.environment {
            spec.environment = v.clone();
        }
    }
}

/// The result of an update: whether the running instance must be restarted
/// for the change to take effect.
#[derive(Debug, Clone, serde::Serialize)]
pub struct UpdateOutcome {
    pub name: String,
    pub restarted: bool,
    pub restart_pending: bool,
}

impl InstanceManager {
    pub fn new(
        ctx: InstanceContext,
        stock_blueprints: PathBuf,
        supervisor: SupervisorHandle,
        reloader: Arc<Reloader>,
    ) -> Self {
        let ops = Arc::new(quiesce::Ops::new(supervisor.clone(), ctx.clone()));
        InstanceManager { ctx, stock_blueprints, supervisor, reloader, ops, lock: tokio::sync::Mutex::new(()) }
    }

    pub fn units_dir(&self) -> PathBuf {
        self.ctx.data_dir.join("units")
    }
    pub fn custom_blueprints(&self) -> PathBuf {
        self.ctx.data_dir.join("blueprints")
    }
    fn trash_dir(&self) -> PathBuf {
        self.ctx.data_dir.join("trashcan")
    }
    fn unit_path(&self, name: &str) -> PathBuf {
        self.units_dir().join(format!("{name}.instance"))
    }

    pub fn blueprints(&self) -> Vec<blueprints::Blueprint> {
        blueprints::list(&self.stock_blueprints, &self.custom_blueprints())
    }

    pub fn blueprint(&self, id: &str) -> Option<blueprints::Blueprint> {
        blueprints::find(&self.stock_blueprints, &self.custom_blueprints(), id)
    }

    pub async fn instances(&self) -> Result<Vec<UnitSnapshot>> {
        Ok(self.supervisor.snapshot().await?.into_iter().filter(|u| u.kind == UnitKind::Instance).collect())
    }

    pub async fn instance(&self, name: &str) -> Result<UnitSnapshot> {
        self.supervisor
            .snapshot()
            .await?
            .into_iter()
            .find(|u| u.name == name && u.kind == UnitKind::Instance)
            .ok_or_else(|| InstanceError::NotFound(format!("no instance named {name:?}")))
    }

    async fn name_taken(&self, name: &str) -> Result<bool> {
        let known = self.supervisor.snapshot().await?.iter().any(|u| u.name == name);
        let on_disk = ["service", "instance"].iter().any(|ext| self.units_dir().join(format!("{name}.{ext}")).exists());
        Ok(known || on_disk || self.ctx.instance_dir(name).exists())
    }

    /// The port is free for `name`: not held by another instance.
    async fn check_port(&self, name: &str, port: PortSpec) -> Result<()> {
        if let PortSpec::Fixed(p) = port {
            let holder = self
                .ctx
                .store
                .call(move |s| s.port_holder(p))
                .await
                .map_err(|e| InstanceError::Internal(e.to_string()))?;
            match holder {
                Ok(Some(holder)) if holder != name => {
                    return Err(InstanceError::Conflict(format!("port {p} is held by instance {holder}")));
                }
                Err(e) => return Err(InstanceError::Internal(e.to_string())),
                _ => {}
            }
        }
        Ok(())
    }

    /// Takes the slot from every other instance holding it (their files are rewritten).
    async fn release_slot(&self, slot: &str, keep: &str) -> Result<()> {
        for other in self.instances().await? {
            if other.name == keep {
                continue;
            }
            let Some(mut spec) = InstanceSpec::from_unit(&other.unit) else { continue };
            if spec.active_slot.as_deref() == Some(slot) {
                spec.active_slot = None;
                self.write_unit(&spec).await?;
            }
        }
        Ok(())
    }

    async fn write_unit(&self, spec: &InstanceSpec) -> Result<()> {
        let path = self.unit_path(&spec.name);
        let existing = std::fs::read_to_string(&path).ok();
        let text = spec.render(existing.as_deref());
        // The parser must accept what we write; a bug here must not leave a broken file behind.
        if let Err(diagnostics) = crate::units::parse_unit_str(&path, &text) {
            let why: Vec<String> = diagnostics.iter().map(|d| d.to_string()).collect();
            return Err(InstanceError::Internal(format!("rendered unit does not parse: {}", why.join("; "))));
        }
        crate::ownership::state_dir(&self.units_dir())?;
        // The units dir is the daemon's (docs/security.md): the file stays root's.
        crate::safefs::write_atomically(&path, text.as_bytes())?;
        Ok(())
    }

    async fn reload(&self) -> Result<()> {
        self.reloader.reload().await.map_err(|e| InstanceError::Internal(format!("{e:#}")))?;
        Ok(())
    }

    /// Creates an instance from a blueprint; nothing is written unless every check passes.
    pub async fn create(&self, changes: InstanceChanges, start: bool) -> Result<UnitSnapshot> {
        let _guard = self.lock.lock().await;
        let name = changes.name.clone().ok_or_else(|| InstanceError::Invalid("name is required".into()))?;
        let blueprint_id =
            changes.blueprint.clone().ok_or_else(|| InstanceError::Invalid("blueprint is required".into()))?;
        let mut spec = InstanceSpec {
            name: name.clone(),
            description: String::new(),
            blueprint: blueprint_id.clone(),
            gpus: Vec::new(),
            port: PortSpec::Auto,
            autostart: false,
            active_slot: None,
            persistent_mode: false,
            public: false,
            stall_after_sec: 180,
            output_dir: None,
            environment: BTreeMap::new(),
            limits: Default::default(),
        };
        changes.apply(&mut spec);
        validate_spec(&spec)?;
        let blueprint = self
            .blueprint(&blueprint_id)
            .ok_or_else(|| InstanceError::Invalid(format!("unknown blueprint {blueprint_id:?}")))?;
        if changes.persistent_mode.is_none() {
            spec.persistent_mode = blueprint.persistent_mode;
        }
        if self.name_taken(&name).await? {
            return Err(InstanceError::Conflict(format!("the name {name:?} is already in use")));
        }
        self.check_port(&name, spec.port).await?;

        let dir = self.ctx.instance_dir(&name);
        let created = async {
            // instances/ is the daemon's; the instance dir in it is the instance user's.
            crate::ownership::state_dir(&self.ctx.data_dir.join("instances"))?;
            std::fs::create_dir(&dir)?;
            crate::config::give(&dir, self.ctx.owner);
            let fd = crate::safefs::open_dir(&dir)?;
            crate::safefs::ensure_dir_at(&fd, "outputs", self.ctx.owner)?;
            let script = std::fs::read(&blueprint.path)?;
            crate::safefs::write_at(&fd, "launch.sh", &script, 0o755, self.ctx.owner)?;
            if let PortSpec::Fixed(p) = spec.port {
                let n = name.clone();
                self.ctx
                    .store
                    .call(move |s| s.claim_port(&n, p))
                    .await
                    .map_err(|e| InstanceError::Internal(e.to_string()))?
                    .map_err(|e| match e {
                        crate::store::StoreError::PortTaken { port, holder } => {
                            InstanceError::Conflict(format!("port {port} is held by instance {holder}"))
                        }
                        e => InstanceError::Internal(e.to_string()),
                    })?;
            }
            if let Some(slot) = &spec.active_slot {
                self.release_slot(slot, &name).await?;
            }
            self.write_unit(&spec).await
        }
        .await;
        if let Err(e) = created {
            let _ = std::fs::remove_dir_all(&dir);
            let _ = std::fs::remove_file(self.unit_path(&name));
            let n = name.clone();
            let _ = self.ctx.store.call(move |s| s.release_port(&n)).await;
            return Err(e);
        }
        self.reload().await?;
        if start {
            self.supervisor.start(&name).await?;
        }
        self.instance(&name).await
    }

    /// Applies changes; renames move the dir, unit file, logs and lease together.
    pub async fn update(
        &self,
        name: &str,
        changes: InstanceChanges,
        restart: bool,
        logs: &crate::logs::LogHub,
    ) -> Result<UpdateOutcome> {
        let _guard = self.lock.lock().await;
        let current = self.instance(name).await?;
        let mut spec = InstanceSpec::from_unit(&current.unit)
            .ok_or_else(|| InstanceError::NotFound(format!("no instance named {name:?}")))?;
        let before = spec.clone();
        changes.apply(&mut spec);
        validate_spec(&spec)?;
        if spec.blueprint != before.blueprint && self.blueprint(&spec.blueprint).is_none() {
            return Err(InstanceError::Invalid(format!("unknown blueprint {:?}", spec.blueprint)));
        }
        let renaming = spec.name != before.name;
        if renaming && self.name_taken(&spec.name).await? {
            return Err(InstanceError::Conflict(format!("the name {:?} is already in use", spec.name)));
        }
        self.check_port(&before.name, spec.port).await?;
        if spec == before {
            return Ok(UpdateOutcome { name: name.to_string(), restarted: false, restart_pending: false });
        }
        let running = !current.status.is_inactive();
        if renaming && running && !restart {
            return Err(InstanceError::Conflict(format!(
                "instance {name} is {}: stop it first or pass restart=true to rename it",
                current.status
            )));
        }
        if renaming && running {
            self.stop_and_wait(name).await?;
        }
        if let Some(slot) = &spec.active_slot {
            if before.active_slot.as_ref() != Some(slot) {
                self.release_slot(slot, name).await?;
            }
        }
        if let PortSpec::Fixed(p) = spec.port {
            if before.port != spec.port {
                let n = before.name.clone();
                self.ctx
                    .store
                    .call(move |s| s.claim_port(&n, p))
                    .await
                    .map_err(|e| InstanceError::Internal(e.to_string()))?
                    .map_err(|e| InstanceError::Conflict(e.to_string()))?;
            }
        } else if before.port != spec.port {
            let n = before.name.clone();
            let _ = self.ctx.store.call(move |s| s.release_port(&n)).await;
        }
        if renaming {
            std::fs::rename(self.ctx.instance_dir(name), self.ctx.instance_dir(&spec.name))?;
            std::fs::rename(self.unit_path(name), self.unit_path(&spec.name))?;
            let _ = logs.rename(name, &spec.name);
            let (old, new) = (name.to_string(), spec.name.clone());
            self.ctx
                .store
                .call(move |s| s.rename_unit(&old, &new))
                .await
                .map_err(|e| InstanceError::Internal(e.to_string()))?
                .map_err(|e| InstanceError::Internal(e.to_string()))?;
        }
        self.write_unit(&spec).await?;
        self.reload().await?;
        let mut outcome = UpdateOutcome { name: spec.name.clone(), restarted: false, restart_pending: false };
        // The public flag is read by the auth check on each request: no restart for it.
        let only_public = InstanceSpec { public: spec.public, ..before.clone() } == spec;
        if running && !only_public {
            if restart {
                if renaming {
                    self.supervisor.start(&spec.name).await?;
                } else {
                    // Drains first, like a user's restart (docs/operations.md).
                    self.ops.restart(&spec.name).await?;
                }
                outcome.restarted = true;
            } else {
                outcome.restart_pending = needs_restart(&before, &spec);
            }
        }
        Ok(outcome)
    }

    async fn stop_and_wait(&self, name: &str) -> Result<()> {
        self.supervisor.stop(name).await?;
        let deadline = tokio::time::Instant::now() + STOP_WAIT;
        let mut events = self.supervisor.subscribe();
        loop {
            if self.instance(name).await.map(|u| u.status.is_inactive()).unwrap_or(true) {
                return Ok(());
            }
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            if remaining.is_zero() {
                return Err(InstanceError::Internal(format!("instance {name} did not stop in {STOP_WAIT:?}")));
            }
            let _ = tokio::time::timeout(remaining.min(Duration::from_millis(200)), events.recv()).await;
        }
    }

    /// Moves the unit file and the instance dir to the trash can.
    pub async fn delete(&self, name: &str, force: bool) -> Result<TrashEntry> {
        let _guard = self.lock.lock().await;
        let current = self.instance(name).await?;
        if !current.status.is_inactive() {
            if !force {
                return Err(InstanceError::Conflict(format!(
                    "instance {name} is {}: stop it first or pass force=true",
                    current.status
                )));
            }
            self.stop_and_wait(name).await?;
        }
        let deleted_ms = now_ms();
        let id = format!("{name}-{deleted_ms}");
        let entry = self.trash_dir().join(&id);
        crate::ownership::state_dir(&self.trash_dir())?;
        std::fs::create_dir(&entry)?;
        std::fs::rename(self.unit_path(name), entry.join(format!("{name}.instance")))?;
        if self.ctx.instance_dir(name).exists() {
            std::fs::rename(self.ctx.instance_dir(name), entry.join("instance"))?;
        }
        let meta = serde_json::json!({ "name": name, "deleted_ms": deleted_ms });
        // The trash can is the daemon's: the instance user can neither edit this nor plant another.
        std::fs::write(entry.join("trash.json"), meta.to_string())?;
        self.reload().await?;
        Ok(TrashEntry { id, name: name.to_string(), deleted_ms })
    }

    pub fn trash(&self) -> Vec<TrashEntry> {
        let Ok(entries) = std::fs::read_dir(self.trash_dir()) else { return Vec::new() };
        let mut out: Vec<TrashEntry> = entries
            .flatten()
            .filter_map(|e| {
                let meta: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(e.path().join("trash.json")).ok()?).ok()?;
                let entry = TrashEntry {
                    id: e.file_name().to_str()?.to_string(),
                    name: meta["name"].as_str()?.to_string(),
                    deleted_ms: meta["deleted_ms"].as_i64()?,
                };
                // The name becomes a path on restore: only what delete itself writes is trusted.
                if !is_valid_unit_name(&entry.name) || entry.id != format!("{}-{}", entry.name, entry.deleted_ms) {
                    tracing::warn!(entry = %entry.id, name = ?entry.name, "trash entry with an invalid name ignored");
                    return None;
                }
                Some(entry)
            })
            .collect();
        out.sort_by_key(|e| std::cmp::Reverse(e.deleted_ms));
        out
    }

    fn trash_entry(&self, id: &str) -> Result<(TrashEntry, PathBuf)> {
        if !is_valid_unit_name(id) {
            return Err(InstanceError::Invalid(format!("invalid trash entry id {id:?}")));
        }
        let entry = self
            .trash()
            .into_iter()
            .find(|e| e.id == id)
            .ok_or_else(|| InstanceError::NotFound(format!("no trash entry {id:?}")))?;
        let path = self.trash_dir().join(id);
        Ok((entry, path))
    }

    pub async fn restore(&self, id: &str) -> Result<UnitSnapshot> {
        let _guard = self.lock.lock().await;
        let (entry, path) = self.trash_entry(id)?;
        if self.name_taken(&entry.name).await? {
            return Err(InstanceError::Conflict(format!(
                "the name {:?} is in use again; rename that one first",
                entry.name
            )));
        }
        crate::ownership::state_dir(&self.units_dir())?;
        let unit_file = path.join(format!("{}.instance", entry.name));
        if !std::fs::symlink_metadata(&unit_file).is_ok_and(|m| m.is_file()) {
            return Err(InstanceError::Invalid(format!("trash entry {id:?} has no unit file to restore")));
        }
        match std::fs::symlink_metadata(path.join("instance")) {
            Ok(m) if m.is_dir() => {
                crate::ownership::state_dir(&self.ctx.data_dir.join("instances"))?;
                std::fs::rename(path.join("instance"), self.ctx.instance_dir(&entry.name))?;
            }
            Ok(_) => return Err(InstanceError::Invalid(format!("trash entry {id:?}: its instance dir is not a dir"))),
            Err(_) => {}
        }
        std::fs::rename(unit_file, self.unit_path(&entry.name))?;
        std::fs::remove_dir_all(&path)?;
        self.reload().await?;
        self.instance(&entry.name).await
    }

    pub async fn purge(&self, id: &str) -> Result<()> {
        let _guard = self.lock.lock().await;
        let (entry, path) = self.trash_entry(id)?;
        std::fs::remove_dir_all(&path)?;
        // The lease is kept while trashed (a restore gets its port back); purge frees it.
        if !self.name_taken(&entry.name).await? {
            let n = entry.name.clone();
            let _ = self.ctx.store.call(move |s| s.release_port(&n).and_then(|()| s.forget_display(&n))).await;
        }
        Ok(())
    }

    pub async fn script(&self, name: &str) -> Result<String> {
        self.instance(name).await?;
        self.ctx.read_launch_script(name).map_err(|e| instance_file_error(e, "launch.sh"))
    }

    pub async fn set_script(&self, name: &str, content: &str, restart: bool) -> Result<bool> {
        let _guard = self.lock.lock().await;
        let current = self.instance(name).await?;
        if content.contains('\0') {
            return Err(InstanceError::Invalid("the script contains a NUL byte".into()));
        }
        // The instance dir is the instance user's: no symlink or planted temp name is followed.
        let dir = crate::safefs::open_dir(&self.ctx.instance_dir(name))
            .map_err(|e| instance_file_error(e, "the instance dir"))?;
        crate::safefs::write_at(&dir, "launch.sh", content.as_bytes(), 0o755, self.ctx.owner)
            .map_err(|e| instance_file_error(e, "launch.sh"))?;
        let running = !current.status.is_inactive();
        if running && restart {
            self.ops.restart(name).await?;
        }
        Ok(running && !restart)
    }

    /// Saves an instance's launch.sh as a custom blueprint.
    pub async fn save_blueprint(&self, instance: &str, id: &str) -> Result<blueprints::Blueprint> {
        let _guard = self.lock.lock().await;
        if !is_valid_unit_name(id) || id == "functions" {
            return Err(InstanceError::Invalid(format!("invalid blueprint id {id:?}")));
        }
        self.instance(instance).await?;
        let target = self.custom_blueprints().join(format!("{id}.sh"));
        if target.exists() || self.stock_blueprints.join(format!("{id}.sh")).exists() {
            return Err(InstanceError::Conflict(format!("a blueprint {id:?} already exists")));
        }
        crate::ownership::state_dir(&self.custom_blueprints())?;
        let script = self.ctx.read_launch_script(instance).map_err(|e| instance_file_error(e, "launch.sh"))?;
        // Custom blueprints are the daemon's: an instance must not edit what others are created from.
        crate::safefs::write_atomically(&target, script.as_bytes())?;
        self.blueprint(id).ok_or_else(|| InstanceError::Internal("saved blueprint cannot be read back".into()))
    }

    /// Sets the `.rebuild-env` trigger the blueprints' functions.sh honours, then restarts.
    /// "Reinstall" (`.aikore-reinstall`: the install phase runs again) or
    /// "Update" (`.aikore-update`: the newest release, then the install):
    /// a flag for the blueprint's `run_install`, then a (re)start; a running
    /// instance drains first.
    pub async fn request_install(&self, name: &str, update: bool) -> Result<&'static str> {
        let unit = self.instance(name).await?;
        let flag = if update { ".aikore-update" } else { ".aikore-reinstall" };
        let dir = crate::safefs::open_dir(&self.ctx.instance_dir(name))
            .map_err(|e| instance_file_error(e, "the instance dir"))?;
        crate::safefs::write_at(&dir, flag, b"", 0o644, self.ctx.owner).map_err(|e| instance_file_error(e, flag))?;
        if unit.status.is_inactive() {
            Ok(self.ops.start(name).await?.as_str())
        } else {
            Ok(self.ops.restart(name).await?.as_str())
        }
    }

    pub async fn rebuild(&self, name: &str) -> Result<Status> {
        self.instance(name).await?;
        let dir = crate::safefs::open_dir(&self.ctx.instance_dir(name))
            .map_err(|e| instance_file_error(e, "the instance dir"))?;
        crate::safefs::write_at(&dir, ".rebuild-env", b"", 0o644, self.ctx.owner)
            .map_err(|e| instance_file_error(e, ".rebuild-env"))?;
        Ok(self.supervisor.restart(name).await?)
    }

    pub fn instance_dir(&self, name: &str) -> PathBuf {
        self.ctx.instance_dir(name)
    }

    /// How the instance is reached: `# aikore.proxy` in its own launch.sh
    /// (what actually runs, possibly edited), else in its blueprint, else subpath.
    pub fn proxy_mode(&self, name: &str, blueprint: &str) -> crate::urls::ProxyMode {
        runtime::proxy_mode(&self.ctx, name, blueprint)
    }
}

/// Whether a running instance must restart for a change to apply. The
/// description and autostart are not part of a run, and the ComfyUI slot is
/// NGINX's routing (re-rendered on the reload that follows the change): those
/// go live without a restart.
fn needs_restart(before: &InstanceSpec, after: &InstanceSpec) -> bool {
    let mut run_fields = after.clone();
    run_fields.description.clone_from(&before.description);
    run_fields.autostart = before.autostart;
    run_fields.active_slot.clone_from(&before.active_slot);
    run_fields != *before
}

/// Where a browser reaches the instance, relative to aikore's public origin:
/// `/comfyui/` for the slot holder, else `/app/<name>/`. For a `port`
/// instance `/app/<name>/` redirects to `http://<the same host>:<port>/`
/// (only NGINX knows the host the client used), so the URL is always a
/// working link; `direct_port` in the API gives the port itself.
///
/// A persistent instance is viewed through its display (`vnc_url_of`): that
/// is what keeps its state across closed tabs, so View and Open go there,
/// always (stopped or starting, NGINX's page there says so and retries);
/// `app_url_of` still gives the app itself.
pub fn url_of(unit: &UnitSnapshot) -> String {
    vnc_url_of(unit).unwrap_or_else(|| app_url_of(unit))
}

/// noVNC on a persistent instance's display (`/vnc/<name>/vnc.html?...`).
pub fn vnc_url_of(unit: &UnitSnapshot) -> Option<String> {
    let instance = unit.unit.instance.as_ref()?;
    instance.persistent_mode.then(|| persistent::vnc_url(&unit.name))
}

/// The app's own address behind NGINX.
pub fn app_url_of(unit: &UnitSnapshot) -> String {
    match unit.unit.instance.as_ref().and_then(|i| i.active_slot.as_deref()) {
        Some(SLOT_COMFYUI) => crate::urls::COMFYUI_PATH.into(),
        _ => crate::urls::app_path(&unit.name),
    }
}

/// The port a `port` instance is reached on directly: its current run's,
/// else its fixed port (an `auto` lease is only known once it runs).
pub fn direct_port_of(unit: &UnitSnapshot, mode: crate::urls::ProxyMode) -> Option<u16> {
    if mode != crate::urls::ProxyMode::Port {
        return None;
    }
    let running = !unit.status.is_inactive();
    match unit.unit.instance.as_ref()?.port {
        _ if running && unit.port.is_some() => unit.port,
        PortSpec::Fixed(p) => Some(p),
        PortSpec::Auto => unit.port,
    }
}
