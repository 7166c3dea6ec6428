//! GPUs as aikore sees them: one [`GpuSource`] (NVML on a real box, a fake
//! fed from a JSON file in tests and with `AIKORE_GPU_FAKE=<file>`), the
//! health each GPU is judged to be in, where `GPUs=auto` instances go, and
//! which unit a GPU process belongs to.
//!
//! Everything above this module (metrics, placement in `instances`, the leak
//! watch) reads GPUs only through [`Gpus`], so the whole GPU logic runs and
//! is tested on a CPU box against recorded-shape readings, and the real
//! driver is checked by `tests/gpu/check.sh` on an NVIDIA machine.

pub mod attribution;
pub mod fake;
pub mod health;
pub mod nvml;
pub mod placement;

use std::collections::HashMap;
use std::sync::Arc;

pub use health::{GpuHealth, HealthBook};
pub use placement::{Placement, PlacementError, Placer};

/// One GPU at one read. Every reading is optional: boards differ (an H100
/// has no fan, a consumer card no ECC).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct GpuSample {
    pub index: u32,
    pub uuid: String,
    pub name: String,
    pub utilization_ratio: Option<f64>,
    pub memory_utilization_ratio: Option<f64>,
    /// NVML's v2 memory info, as nvidia-smi shows it: what processes use,
    /// without what the driver reserves (about 615 MiB on an H200).
    pub memory_used_bytes: Option<u64>,
    pub memory_total_bytes: Option<u64>,
    /// Free for allocations: total minus used minus the driver's reserve.
    #[serde(skip)]
    pub memory_free_bytes: Option<u64>,
    pub temperature_celsius: Option<f64>,
    pub power_draw_watts: Option<f64>,
    pub power_limit_watts: Option<f64>,
    #[serde(skip)]
    pub sm_clock_hertz: Option<f64>,
    /// (fan index, speed 0..1) for each fan that reports.
    #[serde(skip)]
    pub fans: Vec<(u32, f64)>,
    #[serde(skip)]
    pub ecc_corrected_total: Option<u64>,
    #[serde(skip)]
    pub ecc_uncorrected_total: Option<u64>,
    /// Pages waiting to be retired at the next reset (pre-Ampere boards).
    #[serde(skip)]
    pub retired_pages_pending: Option<bool>,
    /// Rows waiting to be remapped at the next reset (Ampere and later: A100, H100, H200).
    #[serde(skip)]
    pub remapped_rows_pending: Option<bool>,
    /// NVML answered GPU_IS_LOST: the GPU fell off the bus. The other readings are then absent.
    #[serde(skip)]
    pub lost: bool,
    /// pid (as NVML reports it) -> GPU memory bytes, from the compute and graphics process lists.
    #[serde(skip)]
    pub processes: HashMap<u32, u64>,
}

impl GpuSample {
    /// NVML's free memory; else total minus used. None when unknown.
    pub fn free_bytes(&self) -> Option<u64> {
        self.memory_free_bytes.or_else(|| Some(self.memory_total_bytes?.saturating_sub(self.memory_used_bytes?)))
    }
}

/// A critical Xid the driver reported (NVML's event set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XidEvent {
    pub gpu: u32,
    /// None when NVML reports an Xid without its number (`XidError::Unknown`).
    pub xid: Option<u64>,
}

/// What aikore needs from the GPU driver. `Send + Sync`: the metrics
/// scrape, the health watch and placement read it from different threads.
pub trait GpuSource: Send + Sync {
    /// Every GPU now; a GPU that cannot even be opened is skipped.
    fn sample(&self) -> Vec<GpuSample>;
    /// (index, UUID) of every GPU: what `GPUs=` may name.
    fn ids(&self) -> Vec<(u32, String)>;
    /// Critical Xid events since the last call (never blocks).
    fn take_xid_events(&self) -> Vec<XidEvent>;
}

/// The GPU source, or the reason there is none, plus the health book and
/// the placer every user of GPUs shares.
pub struct Gpus {
    source: Option<Box<dyn GpuSource>>,
    /// For people (dashboard, API): "no NVIDIA driver found", not a loader error.
    note: Option<String>,
    /// The raw error behind the note (logs, the API's `gpu_detail`).
    detail: Option<String>,
    pub health: HealthBook,
    pub placer: Placer,
    /// GPU processes the last watch could match to nobody aikore can see
    /// (host pids from an old driver, see `attribution`).
    foreign_pids: std::sync::atomic::AtomicUsize,
    /// unit -> restarts for a memory bound (`aikore_unit_leak_restarts_total`).
    leak_restarts: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
}

/// What the dashboard says when NVML cannot be loaded (CPU box, CI, a
/// container started without the NVIDIA runtime).
pub const NO_DRIVER: &str = "no NVIDIA driver found";

/// The environment variable that swaps NVML for a fake fed from a JSON file
/// (integration tests; a demo on a CPU box). See `fake`.
pub const FAKE_ENV: &str = "AIKORE_GPU_FAKE";

impl std::fmt::Debug for Gpus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpus").field("source", &self.source.is_some()).field("note", &self.note).finish_non_exhaustive()
    }
}

impl Gpus {
    /// `AIKORE_GPU_FAKE=<file>` if set, else NVML unless `nvml` is false
    /// (AIKORE_NVML=off). Loads the driver once; logs one line saying which.
    pub fn open(fake: Option<std::path::PathBuf>, nvml: bool) -> Arc<Gpus> {
        if let Some(path) = fake {
            tracing::warn!(file = %path.display(), "GPUs are FAKE: readings come from {FAKE_ENV}");
            return Arc::new(Gpus::with_source(Box::new(fake::FakeSource::new(path))));
        }
        if !nvml {
            return Arc::new(Gpus::disabled("no GPU metrics: NVML disabled"));
        }
        Arc::new(match nvml::NvmlSource::init() {
            Ok(source) => {
                tracing::info!(gpus = source.ids().len(), "GPU metrics through NVML");
                Gpus::with_source(Box::new(source))
            }
            Err((note, detail)) => {
                tracing::info!(gpu_note = %note, detail = detail.as_deref().unwrap_or(""), "GPU metrics off");
                Gpus { note: Some(note), detail, ..Gpus::disabled("") }
            }
        })
    }

    pub fn with_source(source: Box<dyn GpuSource>) -> Gpus {
        Gpus {
            source: Some(source),
            note: None,
            detail: None,
            health: HealthBook::default(),
            placer: Placer::default(),
            leak_restarts: Default::default(),
            foreign_pids: Default::default(),
        }
    }

    /// No GPUs, for tests and for AIKORE_NVML=off.
    pub fn disabled(note: &str) -> Gpus {
        Gpus {
            source: None,
            note: Some(note.to_string()).filter(|n| !n.is_empty()),
            detail: None,
            health: HealthBook::default(),
            placer: Placer::default(),
            leak_restarts: Default::default(),
            foreign_pids: Default::default(),
        }
    }

    pub fn detail(&self) -> Option<&str> {
        self.detail.as_deref()
    }

    pub fn note(&self) -> Option<&str> {
        self.note.as_deref()
    }

    pub fn ids(&self) -> Vec<(u32, String)> {
        self.source.as_ref().map(|s| s.ids()).unwrap_or_default()
    }

    pub fn set_foreign_pids(&self, n: usize) {
        self.foreign_pids.store(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// Why per-instance VRAM may read 0, when the driver's pids are not ours.
    pub fn pid_note(&self) -> Option<String> {
        let n = self.foreign_pids.load(std::sync::atomic::Ordering::Relaxed);
        (n > 0).then(|| {
            format!(
                "{n} GPU process(es) have pids from another PID namespace (a driver that reports host pids): \
                 their VRAM cannot be matched to instances; a current driver, or --pid=host, fixes it"
            )
        })
    }

    /// One more restart of `unit` for a memory bound.
    pub fn count_leak_restart(&self, unit: &str) {
        *self.leak_restarts.lock().unwrap_or_else(|p| p.into_inner()).entry(unit.to_string()).or_default() += 1;
    }

    pub fn leak_restarts(&self) -> std::collections::BTreeMap<String, u64> {
        self.leak_restarts.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reads every GPU and feeds the health book (a GPU that stopped
    /// answering, a new uncorrected ECC error, a pending remap and any Xid
    /// since the last read are judged here, so every reader sees one verdict).
    pub fn sample(&self) -> Vec<GpuSample> {
        let Some(source) = &self.source else { return Vec::new() };
        let samples = source.sample();
        let events = source.take_xid_events();
        self.health.observe(&samples, &events);
        samples
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_memory_needs_both_readings() {
        let g = GpuSample { memory_total_bytes: Some(10), memory_used_bytes: Some(3), ..Default::default() };
        assert_eq!(g.free_bytes(), Some(7));
        assert_eq!(GpuSample { memory_total_bytes: Some(10), ..Default::default() }.free_bytes(), None);
        let reserved = GpuSample { memory_free_bytes: Some(5), ..g };
        assert_eq!(reserved.free_bytes(), Some(5), "NVML's free excludes the driver's reserve");
    }
}
