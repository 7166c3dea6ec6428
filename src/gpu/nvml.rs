//! The real [`GpuSource`]: NVML through nvml-wrapper, loaded once.
//!
//! `Nvml::init()` dlopens libnvidia-ml.so at run time. Without the library
//! (no driver, a CPU box, CI) or without a GPU there is no source, and one
//! note says why. A field a GPU does not support (an H100 answers
//! `fan_speed` with InvalidArg: it has no fan; consumer boards have no ECC)
//! omits that one reading; it is never an error of the read.

use std::collections::HashMap;
use std::sync::Mutex;

use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::enum_wrappers::device::{Clock, EccCounter, MemoryError, TemperatureSensor};
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::enums::event::XidError;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{EventSet, Nvml};

use super::{GpuSample, GpuSource, XidEvent, NO_DRIVER};

pub struct NvmlSource {
    /// Leaked on purpose: NVML stays loaded for the life of the process
    /// (loaded once, never re-initialised), and the event set borrows it.
    nvml: &'static Nvml,
    /// Critical-Xid events of every GPU that supports them; None when no GPU does.
    events: Mutex<Option<EventSet<'static>>>,
}

/// The note for an NVML init error: the common cases in plain words.
pub fn init_note(e: &NvmlError) -> String {
    match e {
        NvmlError::LibloadingError(_) | NvmlError::LibraryNotFound | NvmlError::DriverNotLoaded => NO_DRIVER.into(),
        other => format!("no GPU metrics: NVML is not available ({other})"),
    }
}

/// NVML reports milliwatts, utilisation in percent and clocks in MHz; the
/// series are in base units (watts, ratio, hertz).
const MILLI: f64 = 1e-3;
const PERCENT: f64 = 1e-2;
const MEGA: f64 = 1e6;

impl NvmlSource {
    /// Loads NVML; Err((note for people, raw detail)) when there is nothing to watch.
    pub fn init() -> Result<NvmlSource, (String, Option<String>)> {
        let nvml = Nvml::init().map_err(|e| (init_note(&e), Some(format!("NVML: {e}"))))?;
        match nvml.device_count() {
            Ok(0) => return Err(("no GPU metrics: NVML found no GPU".to_string(), None)),
            Ok(_) => {}
            Err(e) => return Err((format!("no GPU metrics: NVML cannot count GPUs ({e})"), Some(e.to_string()))),
        }
        let nvml: &'static Nvml = Box::leak(Box::new(nvml));
        let events = register_xid_events(nvml);
        Ok(NvmlSource { nvml, events: Mutex::new(events) })
    }
}

/// One event set with CRITICAL_XID_ERROR registered on every GPU that
/// supports it (NVML: Fermi and newer, Linux only).
fn register_xid_events(nvml: &'static Nvml) -> Option<EventSet<'static>> {
    let mut set = nvml.create_event_set().ok()?;
    let mut any = false;
    for index in 0..nvml.device_count().unwrap_or(0) {
        let Ok(device) = nvml.device_by_index(index) else { continue };
        match device.register_events(EventTypes::CRITICAL_XID_ERROR, set) {
            Ok(s) => {
                set = s;
                any = true;
            }
            Err(e) => {
                tracing::debug!(gpu = index, error = %e.error, "no Xid events from this GPU");
                // NVML frees the set on an Unknown error: start a new one.
                set = nvml.create_event_set().ok()?;
            }
        }
    }
    any.then_some(set)
}

impl GpuSource for NvmlSource {
    fn ids(&self) -> Vec<(u32, String)> {
        (0..self.nvml.device_count().unwrap_or(0))
            .filter_map(|i| Some((i, self.nvml.device_by_index(i).ok()?.uuid().ok()?)))
            .collect()
    }

    fn sample(&self) -> Vec<GpuSample> {
        let count = self.nvml.device_count().unwrap_or(0);
        (0..count).filter_map(|index| sample_device(self.nvml, index)).collect()
    }

    fn take_xid_events(&self) -> Vec<XidEvent> {
        let guard = self.events.lock().unwrap_or_else(|p| p.into_inner());
        let Some(set) = guard.as_ref() else { return Vec::new() };
        // Built at the first event only: almost every call finds none.
        let mut uuids: Option<HashMap<String, u32>> = None;
        let mut out = Vec::new();
        // A timeout of 0 returns at once: Timeout when nothing is queued.
        // Bounded, so a storm of events cannot keep a scrape here.
        for _ in 0..64 {
            match set.wait(0) {
                Ok(data) => {
                    let uuids = uuids.get_or_insert_with(|| self.ids().into_iter().map(|(i, u)| (u, i)).collect());
                    let gpu = data.device.uuid().ok().and_then(|u| uuids.get(&u).copied());
                    let xid = match data.event_data {
                        Some(XidError::Value(x)) => Some(x),
                        _ => None,
                    };
                    if let Some(gpu) = gpu {
                        out.push(XidEvent { gpu, xid });
                    }
                }
                Err(NvmlError::Timeout) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "NVML event wait");
                    break;
                }
            }
        }
        out
    }
}

fn sample_device(nvml: &Nvml, index: u32) -> Option<GpuSample> {
    let device = match nvml.device_by_index(index) {
        Ok(d) => d,
        Err(NvmlError::GpuLost) => {
            return Some(GpuSample { index, lost: true, ..GpuSample::default() });
        }
        Err(e) => {
            tracing::debug!(gpu = index, error = %e, "cannot open GPU");
            return None;
        }
    };
    // nvml-wrapper reads nvmlDeviceGetMemoryInfo_v2: `used` as nvidia-smi shows it, the reserve apart.
    let memory = device.memory_info();
    if let Err(NvmlError::GpuLost) = memory {
        return Some(GpuSample { index, uuid: device.uuid().unwrap_or_default(), lost: true, ..GpuSample::default() });
    }
    let memory = memory.ok();
    let utilization = device.utilization_rates().ok();
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
        memory_free_bytes: memory.as_ref().map(|m| m.free),
        temperature_celsius: device.temperature(TemperatureSensor::Gpu).ok().map(f64::from),
        power_draw_watts: device.power_usage().ok().map(|mw| f64::from(mw) * MILLI),
        power_limit_watts: device.enforced_power_limit().ok().map(|mw| f64::from(mw) * MILLI),
        sm_clock_hertz: device.clock_info(Clock::SM).ok().map(|mhz| f64::from(mhz) * MEGA),
        fans,
        // Aggregate counts persist across driver reloads, so the counter does not reset.
        ecc_corrected_total: device.total_ecc_errors(MemoryError::Corrected, EccCounter::Aggregate).ok(),
        ecc_uncorrected_total: device.total_ecc_errors(MemoryError::Uncorrected, EccCounter::Aggregate).ok(),
        // NotSupported on Ampere and later, which remap rows instead.
        retired_pages_pending: device.are_pages_pending_retired().ok(),
        remapped_rows_pending: remapped_rows_pending(&device),
        lost: false,
        processes,
    })
}

/// nvmlDeviceGetRemappedRows's `isPending`: nvml-wrapper 0.11 has no
/// wrapper for it, so it is read through the sys bindings (the same
/// libnvidia-ml.so, already loaded: dlopen returns the same handle).
fn remapped_rows_pending(device: &nvml_wrapper::Device) -> Option<bool> {
    use std::sync::OnceLock;
    static LIB: OnceLock<Option<nvml_wrapper_sys::bindings::NvmlLib>> = OnceLock::new();
    // SAFETY: loading libnvidia-ml.so runs its initialisers; NVML itself was
    // already loaded and initialised by Nvml::init from the same file, so
    // this only takes another reference to the mapped library.
    let lib = LIB.get_or_init(|| unsafe { nvml_wrapper_sys::bindings::NvmlLib::new("libnvidia-ml.so.1").ok() });
    let sym = lib.as_ref()?.nvmlDeviceGetRemappedRows.as_ref().ok()?;
    let (mut corr, mut unc, mut pending, mut failure) = (0u32, 0u32, 0u32, 0u32);
    // SAFETY: the handle is a live device of the initialised NVML (the
    // wrapper's Device borrows it); the four out-pointers are valid u32s on
    // this stack frame for the duration of the call.
    let rc = unsafe { sym(device.handle(), &mut corr, &mut unc, &mut pending, &mut failure) };
    (rc == nvml_wrapper_sys::bindings::nvmlReturn_enum_NVML_SUCCESS).then_some(pending != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_driver_reads_plainly() {
        assert_eq!(init_note(&NvmlError::LibraryNotFound), NO_DRIVER);
        assert_eq!(init_note(&NvmlError::DriverNotLoaded), NO_DRIVER);
        assert!(init_note(&NvmlError::NoPermission).contains("NVML is not available"));
    }
}
