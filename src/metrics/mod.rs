//! Observability: the Prometheus exposition at `/metrics` and the host/GPU
//! summary at `/api/v1/system`, both collected at request time.
//!
//! Static series (build info, aikore's own process, event-derived counters)
//! live in a `Registry`. Unit, host and GPU series are read fresh on each
//! scrape from a supervisor snapshot, the units' cgroup or `/proc` files,
//! sysinfo and NVML, and built as families by hand ([`family`]), so a unit
//! or GPU that is gone has no stale series.

pub mod auth;
mod events;
mod family;
pub mod host;
pub mod units;
pub mod watch;

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use prometheus::{Opts, Registry};
use tokio::sync::broadcast;

pub use crate::gpu::{GpuSample, Gpus};
pub use events::{exit_code_label, EventMetrics, READY_BUCKETS};
use family::{Family, Written};
pub use host::{HostCollector, HostSample};
use units::UnitSampler;

use crate::logs::LogHub;
use crate::supervisor::{CommandError, Status, SupervisorHandle, UnitEvent, UnitSnapshot};

/// Content-Type of the text exposition format, as Prometheus expects it.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Every status, so `aikore_unit_state` is one-hot over a fixed set: a
/// query for `state="failed"` finds 0 rather than no series.
const STATUSES: [Status; 8] = [
    Status::Stopped,
    Status::Starting,
    Status::Stalled,
    Status::Started,
    Status::Stopping,
    Status::Restarting,
    Status::Error,
    Status::Failed,
];

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot read the supervisor: {0}")]
    Supervisor(#[from] CommandError),
    #[error("cannot encode metrics: {0}")]
    Encode(#[from] prometheus::Error),
    #[error("the metrics collection task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Where the collectors look.
#[derive(Debug, Clone)]
pub struct MetricsConfig {
    /// aikore's cgroup subtree when units get cgroups.
    pub cgroup_root: Option<PathBuf>,
    /// Its filesystem is the one reported as disk.
    pub data_dir: PathBuf,
    /// False skips loading NVML (AIKORE_NVML=off, tests).
    pub nvml: bool,
    /// The GPUs the daemon shares with placement and the watch; None: load
    /// them here (`AIKORE_GPU_FAKE`, else NVML when `nvml`).
    pub gpus: Option<Arc<Gpus>>,
}

/// State a scrape reads and updates. Behind one mutex because scrapes must
/// be serialized: sysinfo measures CPU usage between two refreshes of the
/// same `System`, and unit CPU accounts compare with the previous scrape;
/// two interleaved scrapes would corrupt both. Scrapes are rare (seconds
/// apart) and short, so the lock is never contended for long.
struct Collectors {
    host: HostCollector,
    units: UnitSampler,
    gpus: Arc<Gpus>,
}

pub struct Metrics {
    supervisor: SupervisorHandle,
    logs: Arc<LogHub>,
    registry: Registry,
    events: EventMetrics,
    collectors: Mutex<Collectors>,
    gpu_note: Option<String>,
    gpu_detail: Option<String>,
    /// The same GPUs as the collectors', readable without their lock.
    gpus: Arc<Gpus>,
    /// The last few minutes of host and GPU figures, so a dashboard opened
    /// now draws its sparklines at once instead of after minutes of polling.
    history: Mutex<VecDeque<SystemPoint>>,
}

/// How often [`Metrics::run_history`] samples: a sparkline point per 5 s
/// shows a minute-scale trend, and one host + NVML read per 5 s is far
/// below 1 % of a core even on an idle box.
pub const HISTORY_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);
/// 60 points at 5 s: the last five minutes.
pub const HISTORY_POINTS: usize = 60;

/// One sample of the history ring: only what the sparklines draw.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SystemPoint {
    pub ts_ms: i64,
    pub cpu_ratio: f64,
    /// Used (total - available) over total, 0..1.
    pub memory_ratio: f64,
    pub disk_ratio: Option<f64>,
    pub gpus: Vec<GpuPoint>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct GpuPoint {
    pub index: u32,
    pub utilization_ratio: Option<f64>,
    pub memory_ratio: Option<f64>,
    pub temperature_celsius: Option<f64>,
    pub power_draw_watts: Option<f64>,
}

impl SystemPoint {
    fn of(ts_ms: i64, host: &HostSample, gpus: &[GpuSample]) -> SystemPoint {
        let used = |total: u64, available: u64| total.saturating_sub(available) as f64 / total as f64;
        SystemPoint {
            ts_ms,
            cpu_ratio: host.cpu_usage_ratio,
            memory_ratio: if host.memory_total_bytes > 0 {
                used(host.memory_total_bytes, host.memory_available_bytes)
            } else {
                0.0
            },
            disk_ratio: host
                .disk
                .as_ref()
                .filter(|d| d.total_bytes > 0)
                .map(|d| used(d.total_bytes, d.available_bytes)),
            gpus: gpus
                .iter()
                .map(|g| GpuPoint {
                    index: g.index,
                    utilization_ratio: g.utilization_ratio,
                    memory_ratio: match (g.memory_used_bytes, g.memory_total_bytes) {
                        (Some(u), Some(t)) if t > 0 => Some(u as f64 / t as f64),
                        _ => None,
                    },
                    temperature_celsius: g.temperature_celsius,
                    power_draw_watts: g.power_draw_watts,
                })
                .collect(),
        }
    }
}

/// `/api/v1/system`: the host and its GPUs for the dashboard.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SystemView {
    pub cpu: CpuView,
    pub memory: MemoryView,
    pub swap: SwapView,
    pub load: [f64; 3],
    pub disk: Option<host::DiskSample>,
    pub uptime_seconds: u64,
    pub gpus: Vec<GpuView>,
    /// Why there are no GPUs, in plain words ("no NVIDIA driver found").
    pub gpu_note: Option<String>,
    /// The raw error behind `gpu_note` (NVML's loader message), for diagnosis.
    pub gpu_detail: Option<String>,
    /// Set when GPU processes carry pids aikore cannot see (host pids from an
    /// old driver inside a container): per-instance VRAM is then incomplete.
    pub gpu_pid_note: Option<String>,
    /// Earlier samples, oldest first, one per [`HISTORY_INTERVAL`] (empty
    /// until the history task has run).
    pub history: Vec<SystemPoint>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct CpuView {
    pub usage_ratio: f64,
    pub per_core_ratio: Vec<f64>,
}

/// One GPU for the dashboard: its readings, its health and who uses it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GpuView {
    #[serde(flatten)]
    pub sample: GpuSample,
    /// False once it fell off the bus, raised a critical Xid, counted new
    /// uncorrected ECC errors or has a remap pending: nothing new is placed on it.
    pub healthy: bool,
    pub unhealthy_reason: Option<String>,
    /// Units whose current run was given this GPU (pinned or `GPUs=auto`).
    pub placed: Vec<String>,
    /// Units using VRAM here, most first: (unit, bytes).
    pub instances: Vec<UnitVram>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct UnitVram {
    pub unit: String,
    pub bytes: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct MemoryView {
    pub total_bytes: u64,
    pub available_bytes: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct SwapView {
    pub total_bytes: u64,
    pub free_bytes: u64,
}

impl Metrics {
    /// Builds the registry and loads NVML (once: it dlopens the driver).
    pub fn new(
        supervisor: SupervisorHandle,
        logs: Arc<LogHub>,
        config: MetricsConfig,
    ) -> prometheus::Result<Arc<Metrics>> {
        let registry = Registry::new();
        let build = prometheus::Gauge::with_opts(
            Opts::new("aikore_build_info", "Always 1; the version label says which aikore runs.")
                .const_label("version", env!("CARGO_PKG_VERSION")),
        )?;
        build.set(1.0);
        registry.register(Box::new(build))?;
        // process_cpu_seconds_total, process_resident_memory_bytes, open fds, ...
        registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))?;
        let events = EventMetrics::new(&registry)?;
        let gpus = config.gpus.clone().unwrap_or_else(|| Gpus::open(None, config.nvml));
        let gpu_note = gpus.note().map(String::from);
        let gpu_detail = gpus.detail().map(String::from);
        let collectors = Collectors {
            host: HostCollector::new(config.data_dir),
            units: UnitSampler::new(config.cgroup_root),
            gpus: Arc::clone(&gpus),
        };
        Ok(Arc::new(Metrics {
            supervisor,
            logs,
            registry,
            events,
            collectors: Mutex::new(collectors),
            gpu_note,
            gpu_detail,
            gpus,
            history: Mutex::new(VecDeque::with_capacity(HISTORY_POINTS)),
        }))
    }

    /// Feeds the event-derived counters; subscribe before units start so the
    /// first starts are counted.
    pub fn track_events(&self, events: broadcast::Receiver<UnitEvent>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(self.events.clone().run(events))
    }

    /// (index, UUID) of the GPUs NVML reports; empty without NVML.
    /// One unit's processes, CPU time and memory now (`aikore status NAME`).
    pub fn unit_usage(&self, unit: &str, main_pid: Option<i32>) -> units::UnitUsage {
        self.collectors.lock().unwrap_or_else(|p| p.into_inner()).units.sample(unit, main_pid)
    }

    pub fn gpu_ids(&self) -> Vec<(u32, String)> {
        self.gpus().ids()
    }

    /// The GPUs (source, health, placements) these metrics read.
    pub fn gpus(&self) -> Arc<Gpus> {
        Arc::clone(&self.gpus)
    }

    /// Samples the host and GPUs every [`HISTORY_INTERVAL`] into the
    /// history ring until `stop` is cancelled.
    pub fn run_history(self: &Arc<Self>, stop: tokio_util::sync::CancellationToken) -> tokio::task::JoinHandle<()> {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(HISTORY_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let sampler = Arc::clone(&this);
                if tokio::task::spawn_blocking(move || sampler.record_point()).await.is_err() {
                    break;
                }
            }
        })
    }

    /// Takes one sample into the history ring (the history task's step; tests call it directly).
    pub fn record_point(&self) {
        let point = {
            let mut collectors = self.collectors.lock().unwrap_or_else(|p| p.into_inner());
            let host = collectors.host.sample();
            let gpus = collectors.gpus.sample();
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64);
            SystemPoint::of(now.unwrap_or(0), &host, &gpus)
        };
        let mut history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        if history.len() == HISTORY_POINTS {
            history.pop_front();
        }
        history.push_back(point);
    }

    pub fn gpu_note(&self) -> Option<&str> {
        self.gpu_note.as_deref()
    }

    /// The text exposition of everything, read now.
    pub async fn render(self: &Arc<Self>) -> Result<String, MetricsError> {
        let units = self.supervisor.snapshot().await?;
        let this = Arc::clone(self);
        // File reads and NVML calls block: keep them off the async workers.
        tokio::task::spawn_blocking(move || this.render_blocking(&units)).await?
    }

    fn render_blocking(&self, units: &[UnitSnapshot]) -> Result<String, MetricsError> {
        let mut families = Vec::with_capacity(64);
        for family in self.registry.gather() {
            families.push(Written::encoded(&family)?);
        }
        {
            let mut collectors = self.collectors.lock().unwrap_or_else(|p| p.into_inner());
            let collectors = &mut *collectors;
            let gpus = collectors.gpus.sample();
            let host = collectors.host.sample();
            supervisor_families(&mut families);
            auth::families(&mut families);
            self.unit_families(&mut collectors.units, units, &gpus, &mut families);
            host_families(&host, &mut families);
            gpu_families(&gpus, &mut families);
            gpu_health_families(&collectors.gpus, &gpus, &mut families);
        }
        families.sort_by(|a, b| a.name().cmp(b.name()));
        let mut out = String::with_capacity(families.iter().map(|f| f.text.len()).sum());
        for family in &families {
            out.push_str(&family.text);
        }
        Ok(out)
    }

    fn unit_families(
        &self,
        sampler: &mut UnitSampler,
        units: &[UnitSnapshot],
        gpus: &[GpuSample],
        out: &mut Vec<Written>,
    ) {
        let mut state = Family::gauge("aikore_unit_state", "1 for the unit's current state, 0 for the others.");
        let mut restarts = Family::counter("aikore_unit_restarts_total", "Automatic restarts since aikore started.");
        let mut last_start = Family::gauge(
            "aikore_unit_last_start_timestamp_seconds",
            "When the unit's current or last run started (Unix time).",
        );
        let mut cpu = Family::counter("aikore_unit_cpu_seconds_total", "CPU time used by the unit's processes.");
        let mut memory = Family::gauge(
            "aikore_unit_memory_bytes",
            "Memory of the unit: cgroup memory.current, else the sum of RSS.",
        );
        let mut processes = Family::gauge("aikore_unit_processes", "Live processes of the unit.");
        let mut log_bytes = Family::counter("aikore_unit_log_bytes_total", "Bytes the unit wrote to its log.");
        let mut gpu_memory =
            Family::gauge("aikore_unit_gpu_memory_bytes", "GPU memory used by the unit's processes, per GPU.");
        let mut pinned = Family::gauge(
            "aikore_unit_gpu_pinned",
            "1 for each GPU the unit's current run was given (GPUs= pinned, or chosen by GPUs=auto).",
        );
        let mut leak_restarts = Family::counter(
            "aikore_unit_leak_restarts_total",
            "Restarts because MemoryRestartAbove= or GPUMemoryRestartAbove= stayed exceeded.",
        );
        let mut ip_bytes = Family::counter(
            "aikore_unit_ip_bytes_total",
            "IP bytes that passed the unit's cgroup in its current run (IPAccounting=), per direction.",
        );
        let mut ip_packets = Family::counter(
            "aikore_unit_ip_packets_total",
            "IP packets that passed the unit's cgroup in its current run (IPAccounting=), per direction.",
        );

        let names: HashSet<&str> = units.iter().map(|u| u.name.as_str()).collect();
        sampler.retain(&names);
        let mut pids: Vec<(String, Vec<u32>)> = Vec::with_capacity(units.len());
        for u in units {
            let labels = [("unit", u.name.as_str()), ("kind", u.kind.as_str())];
            for status in STATUSES {
                let one_hot = if status == u.status { 1.0 } else { 0.0 };
                state.add(&[labels[0], labels[1], ("state", status.as_str())], one_hot);
            }
            restarts.add(&labels, f64::from(u.restarts));
            last_start.add_some(&labels, u.started_ms.map(|ms| ms as f64 / 1000.0));
            let usage = sampler.sample(&u.name, u.pid);
            cpu.add(&labels, usage.cpu_seconds);
            memory.add(&labels, usage.memory_bytes as f64);
            processes.add(&labels, usage.pids.len() as f64);
            log_bytes.add(&labels, self.logs.bytes_written(&u.name) as f64);
            if let Some(ip) = crate::supervisor::cgroup_bpf::ip_counters(&u.name) {
                for (direction, c) in [("ingress", ip.ingress), ("egress", ip.egress)] {
                    ip_bytes.add(&[labels[0], labels[1], ("direction", direction)], c.bytes as f64);
                    ip_packets.add(&[labels[0], labels[1], ("direction", direction)], c.packets as f64);
                }
            }
            if !gpus.is_empty() {
                pids.push((u.name.clone(), usage.pids.iter().filter_map(|p| u32::try_from(*p).ok()).collect()));
            }
        }
        let attribution = crate::gpu::attribution::attribute(
            &pids,
            gpus,
            &crate::gpu::attribution::proc_status,
            &crate::gpu::attribution::pid_visible,
        );
        let kinds: HashMap<&str, &str> = units.iter().map(|u| (u.name.as_str(), u.kind.as_str())).collect();
        for (unit, per_gpu) in &attribution.by_unit {
            let kind = kinds.get(unit.as_str()).copied().unwrap_or("");
            for (gpu, bytes) in per_gpu {
                gpu_memory.add(&[("unit", unit), ("kind", kind), ("gpu", &gpu.to_string())], *bytes as f64);
            }
        }
        let attributed = attribution.attributed;
        let shared = &self.gpus;
        for (unit, list) in shared.placer.placed() {
            if names.contains(unit.as_str()) {
                for gpu in list {
                    pinned.add(&[("unit", &unit), ("gpu", &gpu.to_string())], 1.0);
                }
            }
        }
        for (unit, n) in shared.leak_restarts() {
            if names.contains(unit.as_str()) {
                leak_restarts.add(&[("unit", &unit)], n as f64);
            }
        }
        for family in [
            state,
            restarts,
            last_start,
            cpu,
            memory,
            processes,
            log_bytes,
            gpu_memory,
            pinned,
            leak_restarts,
            ip_bytes,
            ip_packets,
        ] {
            family.finish_into(out);
        }

        let mut unattributed = Family::gauge(
            "aikore_gpu_unattributed_memory_bytes",
            "GPU memory in use that no unit accounts for (other processes, driver, other containers).",
        );
        for gpu in gpus {
            let index = gpu.index.to_string();
            let used = gpu
                .memory_used_bytes
                .map(|used| used.saturating_sub(attributed.get(&gpu.index).copied().unwrap_or(0)) as f64);
            unattributed.add_some(&[("gpu", &index)], used);
        }
        unattributed.finish_into(out);
    }

    /// The dashboard's view of the host and GPUs.
    pub async fn system(self: &Arc<Self>) -> Result<SystemView, MetricsError> {
        let this = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let mut collectors = this.collectors.lock().unwrap_or_else(|p| p.into_inner());
            let host = collectors.host.sample();
            let gpus = collectors.gpus.sample();
            let gpus = gpu_views(&collectors.gpus, gpus);
            SystemView {
                cpu: CpuView { usage_ratio: host.cpu_usage_ratio, per_core_ratio: host.cpu_per_core_ratio },
                memory: MemoryView {
                    total_bytes: host.memory_total_bytes,
                    available_bytes: host.memory_available_bytes,
                },
                swap: SwapView { total_bytes: host.swap_total_bytes, free_bytes: host.swap_free_bytes },
                load: [host.load1, host.load5, host.load15],
                disk: host.disk,
                uptime_seconds: host.uptime_seconds,
                gpus,
                gpu_note: this.gpu_note.clone(),
                gpu_detail: this.gpu_detail.clone(),
                gpu_pid_note: collectors.gpus.pid_note(),
                history: this.history.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect(),
            }
        })
        .await
        .map_err(MetricsError::from)
    }
}

/// Readings plus health, placements and the per-unit VRAM the watch last saw.
fn gpu_views(shared: &Gpus, samples: Vec<GpuSample>) -> Vec<GpuView> {
    let placed = shared.placer.placed();
    let observed = shared.placer.observed();
    samples
        .into_iter()
        .map(|sample| {
            let health = shared.health.of(sample.index);
            let mut instances: Vec<UnitVram> = observed
                .iter()
                .filter_map(|(unit, per_gpu)| {
                    Some(UnitVram { unit: unit.clone(), bytes: *per_gpu.get(&sample.index)? })
                })
                .filter(|u| u.bytes > 0)
                .collect();
            instances.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.unit.cmp(&b.unit)));
            GpuView {
                placed: placed.iter().filter(|(_, g)| g.contains(&sample.index)).map(|(u, _)| u.clone()).collect(),
                healthy: health.healthy,
                unhealthy_reason: health.reason,
                instances,
                sample,
            }
        })
        .collect()
}

fn supervisor_families(out: &mut Vec<Written>) {
    let reaper = crate::init::reaper();
    let mut children = Family::counter(
        "aikore_reaped_children_total",
        "Exit statuses collected by aikore's reaper (units' processes and orphans).",
    );
    children.add(&[], reaper.children_reaped() as f64);
    children.finish_into(out);
    let mut orphans = Family::counter(
        "aikore_reaped_orphans_total",
        "Re-parented orphans reaped (processes no unit registered: double-forked descendants).",
    );
    orphans.add(&[], reaper.orphans_reaped() as f64);
    orphans.finish_into(out);
}

fn host_families(host: &HostSample, out: &mut Vec<Written>) {
    let single = |name: &str, help: &str, value: f64, out: &mut Vec<Written>| {
        let mut f = Family::gauge(name, help);
        f.add(&[], value);
        f.finish_into(out);
    };
    single(
        "aikore_host_cpu_usage_ratio",
        "Busy share of all CPUs since the previous scrape (0..1).",
        host.cpu_usage_ratio,
        out,
    );
    let mut per_core =
        Family::gauge("aikore_host_cpu_core_usage_ratio", "Busy share of each CPU since the previous scrape (0..1).");
    for (core, ratio) in host.cpu_per_core_ratio.iter().enumerate() {
        per_core.add(&[("cpu", &core.to_string())], *ratio);
    }
    per_core.finish_into(out);
    single("aikore_host_memory_total_bytes", "Physical memory.", host.memory_total_bytes as f64, out);
    single(
        "aikore_host_memory_available_bytes",
        "Memory available to new work without swapping.",
        host.memory_available_bytes as f64,
        out,
    );
    single("aikore_host_swap_total_bytes", "Swap space.", host.swap_total_bytes as f64, out);
    single("aikore_host_swap_free_bytes", "Unused swap space.", host.swap_free_bytes as f64, out);
    single("aikore_host_load1", "Load average over 1 minute.", host.load1, out);
    single("aikore_host_load5", "Load average over 5 minutes.", host.load5, out);
    single("aikore_host_load15", "Load average over 15 minutes.", host.load15, out);
    single("aikore_host_uptime_seconds", "Time since the machine booted.", host.uptime_seconds as f64, out);
    if let Some(disk) = &host.disk {
        let mut total = Family::gauge("aikore_host_disk_total_bytes", "Size of the data dir's filesystem.");
        total.add(&[("path", &disk.path)], disk.total_bytes as f64);
        total.finish_into(out);
        let mut available = Family::gauge(
            "aikore_host_disk_available_bytes",
            "Space on the data dir's filesystem available to unprivileged users.",
        );
        available.add(&[("path", &disk.path)], disk.available_bytes as f64);
        available.finish_into(out);
    }
}

/// `aikore_gpu_healthy{gpu}` and why not (`aikore_gpu_unhealthy_info{gpu,reason}`).
fn gpu_health_families(shared: &Gpus, gpus: &[GpuSample], out: &mut Vec<Written>) {
    let mut healthy = Family::gauge(
        "aikore_gpu_healthy",
        "1 while the GPU takes new work; 0 after it fell off the bus, a critical Xid, new uncorrected ECC errors or while a remap is pending.",
    );
    let mut reason = Family::gauge("aikore_gpu_unhealthy_info", "1 for an unhealthy GPU, with the reason as a label.");
    for g in gpus {
        let index = g.index.to_string();
        let verdict = shared.health.of(g.index);
        healthy.add(&[("gpu", &index)], if verdict.healthy { 1.0 } else { 0.0 });
        if let Some(why) = &verdict.reason {
            reason.add(&[("gpu", &index), ("reason", why)], 1.0);
        }
    }
    healthy.finish_into(out);
    reason.finish_into(out);
}

fn gpu_families(gpus: &[GpuSample], out: &mut Vec<Written>) {
    type Reading = fn(&GpuSample) -> Option<f64>;
    let simple: [(&str, &str, bool, Reading); 9] = [
        ("aikore_gpu_utilization_ratio", "Share of time the GPU was busy (0..1).", false, |g| g.utilization_ratio),
        ("aikore_gpu_memory_utilization_ratio", "Share of time GPU memory was read or written (0..1).", false, |g| {
            g.memory_utilization_ratio
        }),
        ("aikore_gpu_memory_used_bytes", "GPU memory in use.", false, |g| g.memory_used_bytes.map(|b| b as f64)),
        ("aikore_gpu_memory_total_bytes", "GPU memory installed.", false, |g| g.memory_total_bytes.map(|b| b as f64)),
        ("aikore_gpu_temperature_celsius", "GPU core temperature.", false, |g| g.temperature_celsius),
        ("aikore_gpu_power_draw_watts", "Power the GPU draws now.", false, |g| g.power_draw_watts),
        ("aikore_gpu_power_limit_watts", "Power limit the driver enforces.", false, |g| g.power_limit_watts),
        ("aikore_gpu_sm_clock_hertz", "Current SM clock.", false, |g| g.sm_clock_hertz),
        ("aikore_gpu_ecc_corrected_errors_total", "Corrected ECC memory errors (lifetime).", true, |g| {
            g.ecc_corrected_total.map(|n| n as f64)
        }),
    ];
    for (name, help, counter, read) in simple {
        let mut f = if counter { Family::counter(name, help) } else { Family::gauge(name, help) };
        for g in gpus {
            let index = g.index.to_string();
            f.add_some(&[("gpu", &index), ("uuid", &g.uuid), ("name", &g.name)], read(g));
        }
        f.finish_into(out);
    }
    let mut uncorrected =
        Family::counter("aikore_gpu_ecc_uncorrected_errors_total", "Uncorrected ECC memory errors (lifetime).");
    let mut fans = Family::gauge("aikore_gpu_fan_speed_ratio", "Fan speed as a share of its maximum (0..1).");
    for g in gpus {
        let index = g.index.to_string();
        let labels = [("gpu", index.as_str()), ("uuid", g.uuid.as_str()), ("name", g.name.as_str())];
        uncorrected.add_some(&labels, g.ecc_uncorrected_total.map(|n| n as f64));
        for (fan, ratio) in &g.fans {
            fans.add(&[labels[0], labels[1], labels[2], ("fan", &fan.to_string())], *ratio);
        }
    }
    uncorrected.finish_into(out);
    fans.finish_into(out);
}

#[cfg(test)]
mod tests;
