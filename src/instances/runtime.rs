//! What a run of an instance needs from the machine: its port (leased or
//! claimed, and free), its environment (GPU pinning included), its default
//! launch command and its readiness probe.

use std::net::TcpListener;
use std::ops::RangeInclusive;
use std::path::PathBuf;

use crate::store::{StoreError, StoreHandle};
use crate::supervisor::{Prepared, ReadyTarget, RunHooks};
use crate::units::{ExecCommand, PortSpec, ReadyCheck, Unit};

pub use crate::config::{parse_port_range, DEFAULT_PORT_RANGE};

#[derive(Clone)]
pub struct InstanceContext {
    pub data_dir: PathBuf,
    /// Where `functions.sh` lives, for blueprints to source.
    pub blueprints_dir: PathBuf,
    pub port_range: RangeInclusive<u16>,
    pub store: StoreHandle,
    /// PUID/PGID: what this module creates on disk is given to them.
    pub owner: Option<(u32, u32)>,
    /// Whether NGINX's live config already serves `port` under this data dir
    /// (`proxy::serves_port`): handed in by the daemon, so `instances` never
    /// imports `proxy` (the proxy renders from the instances, not back).
    pub proxy_serves: fn(&std::path::Path, u16) -> bool,
    /// The GPUs (source, health, placer) shared with metrics; None without a GPU source.
    pub gpus: Option<std::sync::Arc<crate::gpu::Gpus>>,
}

impl InstanceContext {
    pub fn instance_dir(&self, name: &str) -> PathBuf {
        self.data_dir.join("instances").join(name)
    }

    /// The instance's launch.sh, read without following a symlink (the dir is
    /// the instance user's; a link to /etc/shadow must not be read as root).
    pub fn read_launch_script(&self, name: &str) -> std::io::Result<String> {
        let dir = crate::safefs::open_dir(&self.instance_dir(name))?;
        crate::safefs::read_text_at(&dir, "launch.sh", MAX_SCRIPT_BYTES)
    }
}

/// The supervisor's way into an instance's run (handed to it at boot).
impl RunHooks for InstanceContext {
    fn prepare(&self, unit: &Unit) -> Result<Prepared, String> {
        prepare(unit, self)
    }

    fn work_dir(&self, unit: &str) -> PathBuf {
        self.instance_dir(unit)
    }

    fn end(&self, unit: &str) {
        super::persistent::end(unit, self);
    }
}

/// launch.sh is read up to this size (a script, not a model: 16 MiB is generous).
pub const MAX_SCRIPT_BYTES: u64 = 16 << 20;

/// Whether nothing listens on `port` on loopback right now.
pub fn port_is_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// How the instance is reached: `# aikore.proxy` in its own launch.sh (what
/// actually runs, possibly edited), else in its blueprint (custom, then
/// stock), else subpath.
pub fn proxy_mode(ctx: &InstanceContext, name: &str, blueprint: &str) -> crate::urls::ProxyMode {
    header_proxy_mode(&metadata_headers(ctx, name, blueprint))
}

/// `# aikore.drain` (a `DrainCheck=` value) of the instance's launch.sh,
/// else of its blueprint: the stock ComfyUI blueprint says `comfyui`.
pub fn drain_header(ctx: &InstanceContext, name: &str, blueprint: &str) -> Option<String> {
    metadata_value(&metadata_headers(ctx, name, blueprint), "drain")
}

fn header_proxy_mode(headers: &[String]) -> crate::urls::ProxyMode {
    metadata_value(headers, "proxy")
        .map(|m| crate::urls::ProxyMode::parse(&m))
        .unwrap_or(crate::urls::ProxyMode::Subpath)
}

/// A loopback port for a `port` instance's app, behind NGINX's server on the
/// public (pool) port: one the kernel hands out now, outside the pool and
/// nobody's lease. Not leased itself: nothing but NGINX's upstream, rewritten
/// at every start, ever names it.
pub fn internal_port(ctx: &InstanceContext) -> Result<u16, String> {
    for _ in 0..32 {
        let port = TcpListener::bind(("127.0.0.1", 0))
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .map_err(|e| format!("no loopback port for the app: {e}"))?;
        if ctx.port_range.contains(&port) {
            continue;
        }
        let leased = ctx.store.call_blocking(move |s| s.port_holder(port));
        if matches!(leased, Ok(Ok(None))) {
            return Ok(port);
        }
    }
    Err("no loopback port for the app outside the instance pool".into())
}

/// The port an instance serves on: its stable lease for `auto`, or its
/// claimed fixed port. Called from the supervisor task, so it blocks on the
/// store thread briefly (one indexed SQLite statement).
pub fn port_for(unit: &Unit, ctx: &InstanceContext) -> Result<u16, String> {
    let instance = unit.instance.as_ref().ok_or("not an instance")?;
    let name = unit.name.clone();
    let result = match instance.port {
        PortSpec::Auto => {
            let range = ctx.port_range.clone();
            ctx.store.call_blocking(move |s| s.lease_port(&name, range, port_is_free, crate::clock::now_ms()))
        }
        PortSpec::Fixed(port) => ctx.store.call_blocking(move |s| s.claim_port(&name, port).map(|_| port)),
    };
    match result {
        Ok(Ok(port)) => Ok(port),
        Ok(Err(StoreError::PortTaken { port, holder })) => Err(format!("port {port} is held by instance {holder}")),
        Ok(Err(e)) | Err(e) => Err(format!("port lease: {e}")),
    }
}

pub fn output_dir(unit: &Unit, ctx: &InstanceContext) -> PathBuf {
    unit.instance
        .as_ref()
        .and_then(|i| i.output_dir.clone())
        .unwrap_or_else(|| ctx.instance_dir(&unit.name).join("outputs"))
}

/// The variables a run of this instance gets (README.md, "Instances"), also
/// given to its terminal; `port` is `None` when no run has leased one yet.
pub fn instance_env(unit: &Unit, ctx: &InstanceContext, port: Option<u16>) -> Vec<(String, String)> {
    env_of(unit, ctx, port, &unit_headers(unit, ctx))
}

/// `instance_env` with the metadata headers already read (a start reads them once).
fn env_of(unit: &Unit, ctx: &InstanceContext, port: Option<u16>, headers: &[String]) -> Vec<(String, String)> {
    let Some(instance) = unit.instance.as_ref() else { return Vec::new() };
    // A `port` instance is served at the root of its own port, not under /app/<name>.
    let root = match header_proxy_mode(headers) {
        crate::urls::ProxyMode::Port => String::new(),
        crate::urls::ProxyMode::Subpath => url_path(&unit.name),
    };
    let dir = ctx.instance_dir(&unit.name);
    let outputs = output_dir(unit, ctx);
    let port = port.map(|p| p.to_string()).unwrap_or_default();
    let mut env = vec![
        ("INSTANCE_NAME".to_string(), unit.name.clone()),
        ("INSTANCE_CONF_DIR".to_string(), dir.display().to_string()),
        ("INSTANCE_OUTPUT_DIR".to_string(), outputs.display().to_string()),
        ("WEBUI_PORT".to_string(), port),
        // Where the app listens: loopback only, NGINX is the way in.
        ("WEBUI_HOST".to_string(), "127.0.0.1".to_string()),
        ("BLUEPRINT_ID".to_string(), instance.blueprint.clone()),
        // Empty means CPU only: no GPU is visible to CUDA.
        ("CUDA_VISIBLE_DEVICES".to_string(), super::gpus::visible_devices(unit, ctx)),
        // CUDA's default order is fastest-first; PCI order matches NVML and nvidia-smi indices.
        ("CUDA_DEVICE_ORDER".to_string(), "PCI_BUS_ID".to_string()),
        ("AIKORE_BLUEPRINTS_DIR".to_string(), ctx.blueprints_dir.display().to_string()),
        // Where NGINX serves it, with the prefix stripped: an app that must
        // know its public root (Gradio's root_path, --subpath flags) reads it here.
        ("INSTANCE_URL_PATH".to_string(), root.clone()),
    ];
    if metadata_value(headers, "framework").is_some_and(|f| f.eq_ignore_ascii_case("gradio")) {
        // Gradio reads its root path from here when launch() is given none.
        env.push(("GRADIO_ROOT_PATH".to_string(), root));
    }
    env
}

/// `/app/<name>`: the instance's public path (no trailing slash, as Gradio's root_path wants).
pub fn url_path(name: &str) -> String {
    crate::urls::app_base(name)
}

/// The metadata headers that describe an instance's run, most specific
/// first: its own launch.sh (what runs; a copy of the blueprint's block),
/// then its blueprint (custom, then stock). launch.sh lives in the instance
/// user's dir, so it is read like every file there: no symlink, FIFO or
/// device, and only its first [`HEADER_BYTES`] (a link to /dev/zero once
/// made root read without end).
fn metadata_headers(ctx: &InstanceContext, name: &str, blueprint: &str) -> Vec<String> {
    let mut headers: Vec<String> = crate::safefs::open_dir(&ctx.instance_dir(name))
        .and_then(|dir| crate::safefs::open_regular_at(&dir, "launch.sh"))
        .ok()
        .and_then(|file| read_head(file).ok())
        .into_iter()
        .collect();
    if crate::units::is_valid_unit_name(blueprint) {
        let file = format!("{blueprint}.sh");
        for dir in [ctx.data_dir.join("blueprints"), ctx.blueprints_dir.clone()] {
            // Root-owned dirs (custom blueprints are written by the API).
            if let Some(text) = std::fs::File::open(dir.join(&file)).ok().and_then(|f| read_head(f).ok()) {
                headers.push(text);
            }
        }
    }
    headers
}

/// The metadata block sits at the top of a script: this much is plenty.
const HEADER_BYTES: u64 = 64 << 10;

fn read_head(file: std::fs::File) -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = Vec::new();
    file.take(HEADER_BYTES).read_to_end(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// `# aikore.KEY = value` from the most specific header that has the key.
fn metadata_value(headers: &[String], key: &str) -> Option<String> {
    headers.iter().find_map(|text| super::blueprints::parse_metadata(text).remove(key))
}

/// The headers of a unit that is an instance (none otherwise).
fn unit_headers(unit: &Unit, ctx: &InstanceContext) -> Vec<String> {
    unit.instance.as_ref().map(|i| metadata_headers(ctx, &unit.name, &i.blueprint)).unwrap_or_default()
}

/// `# aikore.failure = class: regex` lines of the most specific header that
/// has any. A bad line is logged and skipped: the built-in classes still apply.
fn failure_patterns(unit: &Unit, headers: &[String]) -> Vec<crate::failure::Pattern> {
    let specs = headers
        .iter()
        .map(|text| super::blueprints::failure_specs(text))
        .find(|specs| !specs.is_empty())
        .unwrap_or_default();
    specs
        .iter()
        .filter_map(|spec| match crate::failure::Pattern::parse(spec) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!(unit = %unit.name, error = %e, "ignoring an aikore.failure line");
                None
            }
        })
        .collect()
}

/// Everything a run of this instance is given (README.md, "Instances").
pub fn prepare(unit: &Unit, ctx: &InstanceContext) -> Result<Prepared, String> {
    let instance = unit.instance.as_ref().ok_or("not an instance")?;
    // First: a start GPUMemoryMin= refuses leases nothing.
    super::gpus::place(unit, ctx)?;
    let port = port_for(unit, ctx)?;
    // Read once for the whole start: the proxy mode, the environment and the failure patterns.
    let headers = metadata_headers(ctx, &unit.name, &instance.blueprint);
    // A `port` instance's public port is NGINX's (the same login as the apps
    // origin in front); the app itself gets a loopback port behind it.
    let app_port = match header_proxy_mode(&headers) {
        crate::urls::ProxyMode::Port => {
            if !port_is_free(port) && !(ctx.proxy_serves)(&ctx.data_dir, port) {
                return Err(format!("port {port} is already in use by another process"));
            }
            internal_port(ctx)?
        }
        crate::urls::ProxyMode::Subpath => {
            if !port_is_free(port) {
                return Err(format!("port {port} is already in use by another process"));
            }
            port
        }
    };
    let dir = ctx.instance_dir(&unit.name);
    let outputs = output_dir(unit, ctx);
    let instances = ctx.data_dir.join("instances");
    match outputs.strip_prefix(&instances) {
        // In an instance user's dir: made there without following a planted
        // symlink anywhere on the way, and given to the instance user.
        Ok(rel) => crate::safefs::ensure_dirs_beneath(&instances, rel, ctx.owner)
            .map_err(|e| format!("{}: {e}", outputs.display()))?,
        // The operator's own path (OutputDir= elsewhere): theirs to lay out.
        Err(_) => std::fs::create_dir_all(&outputs).map_err(|e| format!("{}: {e}", outputs.display()))?,
    }
    let mut env = env_of(unit, ctx, Some(app_port), &headers);
    let launch = dir.join("launch.sh");
    let default_exec_start =
        Some(ExecCommand { argv: vec!["/bin/bash".into(), launch.display().to_string()], ..Default::default() });
    // Persistent mode: leased last, so nothing after it can fail and leave
    // a lease no run holds (end_run releases it only for runs that began).
    let persistent = if unit.instance.as_ref().is_some_and(|i| i.persistent_mode) {
        let wrapper = ctx.blueprints_dir.join(super::persistent::WRAPPER);
        if !wrapper.is_file() {
            return Err(format!("persistent mode needs {}", wrapper.display()));
        }
        let run = super::persistent::begin(unit, ctx)?;
        env.extend(run.env());
        Some((run, wrapper))
    } else {
        None
    };
    let ready = match &unit.service.ready_check {
        // A GUI app serves no page: it is up when its display can be viewed.
        ReadyCheck::Default if persistent.as_ref().is_some_and(|(run, _)| !run.browser) => {
            persistent.as_ref().map(|(run, _)| ReadyTarget::Tcp { host: "127.0.0.1".into(), port: run.lease.ws_port })
        }
        ReadyCheck::Default => Some(ReadyTarget::Http { host: "127.0.0.1".into(), port: app_port, path: "/".into() }),
        ReadyCheck::None => None,
        ReadyCheck::Tcp(p) => Some(ReadyTarget::Tcp { host: "127.0.0.1".into(), port: *p }),
        ReadyCheck::Http { host, port, path } => {
            Some(ReadyTarget::Http { host: host.clone(), port: *port, path: path.clone() })
        }
    };
    let (main_wrapper, vnc_port) = match persistent {
        Some((run, wrapper)) => (vec!["/bin/bash".to_string(), wrapper.display().to_string()], Some(run.lease.ws_port)),
        None => (Vec::new(), None),
    };
    Ok(Prepared {
        ready,
        env,
        default_exec_start,
        port: Some(port),
        app_port: Some(app_port),
        main_wrapper,
        vnc_port,
        failure_patterns: failure_patterns(unit, &headers),
        // The supervisor draws RuntimeRandomizedExtraSec='s share itself.
        runtime_extra: Default::default(),
    })
}
