//! GPUs through NVML (nvml-wrapper), loaded once at start.
//!
//! `Nvml::init()` dlopens libnvidia-ml.so at run time. Without the library
//! (no driver, a CPU box, CI) or without a GPU there are simply no GPU
//! series, and one note says why — in the log and in /api/v1/system. A field
//! a GPU does not support (no fan, no ECC, no power reading on some boards)
//! omits that one series; it is never an error of the scrape.

use std::collections::HashMap;

use nvml_wrapper::enum_wrappers::device::{Clock, EccCounter, MemoryError, TemperatureSensor};
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::Nvml;

/// One GPU at one scrape. Every reading is optional: boards differ.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct GpuSample {
    pub index: u32,
    pub uuid: String,
    pub name: String,
    pub utilization_ratio: Option<f64>,
    pub memory_utilization_ratio: Option<f64>,
    pub memory_used_bytes: Option<u64>,
    pub memory_total_bytes: Option<u64>,
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
    /// pid -> GPU memory bytes, from the compute and graphics process lists.
    #[serde(skip)]
    pub processes: HashMap<u32, u64>,
}

/// NVML, or the reason there is none.
pub struct Gpus {
    nvml: Option<Nvml>,
    note: Option<String>,
}

/// NVML reports milliwatts, utilisation in percent and clocks in MHz; the
/// series are in base units (watts, ratio, hertz).
const MILLI: f64 = 1e-3;
const PERCENT: f64 = 1e-2;
const MEGA: f64 = 1e6;

impl Gpus {
    /// Loads NVML once; logs one info line when there is nothing to watch.
    pub fn init() -> Gpus {
        let (nvml, note) = match Nvml::init() {
            // The usual case on a box without the driver: say that, not the loader's words
            // (the log line below keeps the error for whoever needs it).
            Err(nvml_wrapper::error::NvmlError::LibloadingError(e)) => {
                tracing::debug!(error = %e, "loading libnvidia-ml");
                (None, Some("no NVIDIA driver found (libnvidia-ml.so.1 is not installed): no GPU figures".to_string()))
            }
            Err(e) => (None, Some(format!("no GPU metrics: NVML is not available ({e})"))),
            Ok(nvml) => match nvml.device_count() {
                Ok(0) => (None, Some("no GPU metrics: NVML found no GPU".to_string())),
                Ok(_) => (Some(nvml), None),
                Err(e) => (None, Some(format!("no GPU metrics: NVML cannot count GPUs ({e})"))),
            },
        };
        match (&nvml, &note) {
            (_, Some(note)) => tracing::info!(gpu_note = %note, "GPU metrics off"),
            (Some(nvml), None) => tracing::info!(gpus = nvml.device_count().unwrap_or(0), "GPU metrics through NVML"),
            (None, None) => {}
        }
        Gpus { nvml, note }
    }

    /// No NVML, for tests and for AIKORE_NVML=off.
    pub fn disabled(note: &str) -> Gpus {
        Gpus { nvml: None, note: Some(note.to_string()) }
    }

    pub fn note(&self) -> Option<&str> {
        self.note.as_deref()
    }

    /// (index, UUID) of every GPU NVML reports: what an instance's GPUs= may name.
    pub fn ids(&self) -> Vec<(u32, String)> {
        let Some(nvml) = &self.nvml else { return Vec::new() };
        (0..nvml.device_count().unwrap_or(0))
            .filter_map(|i| Some((i, nvml.device_by_index(i).ok()?.uuid().ok()?)))
            .collect()
    }

    /// Reads every GPU; a GPU that cannot even be opened is skipped.
    pub fn sample(&self) -> Vec<GpuSample> {
        let Some(nvml) = &self.nvml else { return Vec::new() };
        let count = nvml.device_count().unwrap_or(0);
        (0..count).filter_map(|index| sample_device(nvml, index)).collect()
    }
}

fn sample_device(nvml: &Nvml, index: u32) -> Option<GpuSample> {
    let device = match nvml.device_by_index(index) {
        Ok(d) => d,
        Err(e) => {
            tracing::debug!(gpu = index, error = %e, "cannot open GPU");
            return None;
        }
    };
    let utilization = device.utilization_rates().ok();
    let memory = device.memory_info().ok();
    let fans = (0..device.num_fans().unwrap_or(0))
        .filter_map(|fan| Some((fan, f64::from(device.fan_speed(fan).ok()?) * PERCENT)))
        .collect();
    let mut processes = HashMap::new();
    // A process with both a compute and a graphics context appears in both
    // lists with the same usage: keep one entry per pid.
    for list in [device.running_compute_processes(), device.running_graphics_processes()] {
        for p in list.unwrap_or_default() {
            if let UsedGpuMemory::Used(bytes) = p.used_gpu_memory {
                let entry = processes.entry(p.pid).or_insert(0);
                *entry = (*entry).max(bytes);
            }
        }
    }
    Some(GpuSample {
        index,
        uuid: device.uuid().unwrap_or_default(),
        name: device.name().unwrap_or_default(),
        utilization_ratio: utilization.as_ref().map(|u| f64::from(u.gpu) * PERCENT),
        memory_utilization_ratio: utilization.as_ref().map(|u| f64::from(u.memory) * PERCENT),
        memory_used_bytes: memory.as_ref().map(|m| m.used),
        memory_total_bytes: memory.as_ref().map(|m| m.total),
        temperature_celsius: device.temperature(TemperatureSensor::Gpu).ok().map(f64::from),
        power_draw_watts: device.power_usage().ok().map(|mw| f64::from(mw) * MILLI),
        power_limit_watts: device.enforced_power_limit().ok().map(|mw| f64::from(mw) * MILLI),
        sm_clock_hertz: device.clock_info(Clock::SM).ok().map(|mhz| f64::from(mhz) * MEGA),
        fans,
        // Aggregate counts persist across driver reloads, so the counter does not reset.
        ecc_corrected_total: device.total_ecc_errors(MemoryError::Corrected, EccCounter::Aggregate).ok(),
        ecc_uncorrected_total: device.total_ecc_errors(MemoryError::Uncorrected, EccCounter::Aggregate).ok(),
        processes,
    })
}
