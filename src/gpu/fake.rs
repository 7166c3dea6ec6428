//! A [`GpuSource`] fed from a JSON file, re-read at every call, so a test
//! (or a demo on a CPU box) changes what "the driver" says by rewriting the
//! file: VRAM that grows, an uncorrected ECC error, an Xid 79.
//!
//! The file's shape follows NVML's answers field by field (see
//! `src/gpu/fixtures/README.md` for where the modelled values come from):
//! readings NVML fails are written as the error's name (`"InvalidArg"`,
//! `"NotSupported"`, `"NotFound"`), and the whole GPU as `"lost": true` once
//! it answers GPU_IS_LOST. Xid events are a list per GPU that only grows;
//! each is delivered once, like NVML's event set.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use super::{GpuSample, GpuSource, XidEvent};

/// The file: what a driver would say about every GPU.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FakeMachine {
    /// Where the readings were modelled from (ignored; for people).
    #[serde(default, rename = "_about")]
    pub about: Option<serde_json::Value>,
    /// e.g. "580.65.06": only for people and logs.
    #[serde(default)]
    pub driver_version: Option<String>,
    pub gpus: Vec<FakeGpu>,
}

/// A reading that may be an NVML error instead of a value.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(untagged)]
pub enum Reading<T> {
    Value(T),
    /// NVML's error name: the reading is absent.
    Error(String),
}

impl<T: Copy> Reading<T> {
    fn ok(r: &Option<Reading<T>>) -> Option<T> {
        match r {
            Some(Reading::Value(v)) => Some(*v),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FakeGpu {
    pub index: u32,
    pub uuid: String,
    #[serde(default)]
    pub name: String,
    pub memory_total_bytes: u64,
    /// Used memory as NVML's v2 memory info (and nvidia-smi) says; when absent, the sum of the processes.
    #[serde(default)]
    pub memory_used_bytes: Option<u64>,
    /// What the driver reserves: neither used nor free (v2's `reserved`; 615 MiB on an H200, driver 580).
    #[serde(default)]
    pub reserved_bytes: u64,
    #[serde(default)]
    pub utilization_gpu_percent: Option<Reading<u32>>,
    #[serde(default)]
    pub utilization_memory_percent: Option<Reading<u32>>,
    #[serde(default)]
    pub temperature_celsius: Option<Reading<u32>>,
    #[serde(default)]
    pub power_draw_milliwatts: Option<Reading<u32>>,
    #[serde(default)]
    pub power_limit_milliwatts: Option<Reading<u32>>,
    #[serde(default)]
    pub sm_clock_mhz: Option<Reading<u32>>,
    /// Percent per fan, or NVML's error for fan 0 (an H200 on driver 580 answers NotSupported: no fan).
    #[serde(default)]
    pub fan_speed_percent: Option<Reading<u32>>,
    #[serde(default)]
    pub ecc_corrected_total: Option<Reading<u64>>,
    #[serde(default)]
    pub ecc_uncorrected_total: Option<Reading<u64>>,
    #[serde(default)]
    pub retired_pages_pending: Option<Reading<bool>>,
    #[serde(default)]
    pub remapped_rows_pending: Option<Reading<bool>>,
    /// The GPU answers GPU_IS_LOST to everything.
    #[serde(default)]
    pub lost: bool,
    /// Critical Xids in the order the driver raised them (only grows).
    #[serde(default)]
    pub xid_events: Vec<u64>,
    /// nvmlDeviceGetProcessUtilization: NotFound when no sample is recent (an idle GPU). Not read by aikore.
    #[serde(default)]
    pub process_utilization: Option<serde_json::Value>,
    #[serde(default)]
    pub processes: Vec<FakeProcess>,
}

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FakeProcess {
    /// As NVML reports it: the caller's pid namespace on current drivers, the host's on old ones.
    pub pid: u32,
    pub used_bytes: u64,
}

pub struct FakeSource {
    path: PathBuf,
    /// Xids already delivered, per GPU index.
    delivered: Mutex<HashMap<u32, usize>>,
}

impl FakeSource {
    pub fn new(path: PathBuf) -> FakeSource {
        FakeSource { path, delivered: Mutex::new(HashMap::new()) }
    }

    /// The file now; an unreadable or bad file is no GPUs (and a warning), as a missing driver would be.
    fn read(&self) -> FakeMachine {
        let parsed = std::fs::read_to_string(&self.path)
            .map_err(|e| e.to_string())
            .and_then(|text| serde_json::from_str::<FakeMachine>(&text).map_err(|e| e.to_string()));
        match parsed {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(file = %self.path.display(), error = %e, "fake GPU file unreadable");
                FakeMachine::default()
            }
        }
    }
}

pub fn sample_of(g: &FakeGpu) -> GpuSample {
    if g.lost {
        return GpuSample { index: g.index, uuid: g.uuid.clone(), lost: true, ..GpuSample::default() };
    }
    let processes: HashMap<u32, u64> = g.processes.iter().map(|p| (p.pid, p.used_bytes)).collect();
    let used = g.memory_used_bytes.unwrap_or_else(|| processes.values().sum::<u64>()).min(g.memory_total_bytes);
    let free = g.memory_total_bytes.saturating_sub(used).saturating_sub(g.reserved_bytes);
    let ratio = |r: &Option<Reading<u32>>| Reading::ok(r).map(|p| f64::from(p) * 1e-2);
    GpuSample {
        index: g.index,
        uuid: g.uuid.clone(),
        name: g.name.clone(),
        utilization_ratio: ratio(&g.utilization_gpu_percent),
        memory_utilization_ratio: ratio(&g.utilization_memory_percent),
        memory_used_bytes: Some(used),
        memory_total_bytes: Some(g.memory_total_bytes),
        memory_free_bytes: Some(free),
        temperature_celsius: Reading::ok(&g.temperature_celsius).map(f64::from),
        power_draw_watts: Reading::ok(&g.power_draw_milliwatts).map(|mw| f64::from(mw) * 1e-3),
        power_limit_watts: Reading::ok(&g.power_limit_milliwatts).map(|mw| f64::from(mw) * 1e-3),
        sm_clock_hertz: Reading::ok(&g.sm_clock_mhz).map(|mhz| f64::from(mhz) * 1e6),
        fans: Reading::ok(&g.fan_speed_percent).map(|p| vec![(0, f64::from(p) * 1e-2)]).unwrap_or_default(),
        ecc_corrected_total: Reading::ok(&g.ecc_corrected_total),
        ecc_uncorrected_total: Reading::ok(&g.ecc_uncorrected_total),
        retired_pages_pending: Reading::ok(&g.retired_pages_pending),
        remapped_rows_pending: Reading::ok(&g.remapped_rows_pending),
        lost: false,
        processes,
    }
}

impl GpuSource for FakeSource {
    fn sample(&self) -> Vec<GpuSample> {
        self.read().gpus.iter().map(sample_of).collect()
    }

    fn ids(&self) -> Vec<(u32, String)> {
        self.read().gpus.into_iter().map(|g| (g.index, g.uuid)).collect()
    }

    fn take_xid_events(&self) -> Vec<XidEvent> {
        let machine = self.read();
        let mut delivered = self.delivered.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        for g in &machine.gpus {
            let seen = delivered.entry(g.index).or_insert(0);
            out.extend(g.xid_events.iter().skip(*seen).map(|&x| XidEvent { gpu: g.index, xid: Some(x) }));
            *seen = (*seen).max(g.xid_events.len());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/gpu/fixtures").join(name)
    }

    #[test]
    fn the_h100_fixture_reads_like_nvml_on_an_h100() {
        let source = FakeSource::new(fixture("h100x4-driver580.json"));
        let gpus = source.sample();
        assert_eq!(gpus.len(), 4);
        let g = &gpus[0];
        // 81559 MiB: what nvidia-smi prints as total for an H100 80GB HBM3.
        assert_eq!(g.memory_total_bytes, Some(81559 << 20));
        assert!(g.fans.is_empty(), "an error for fan 0 means no fan series");
        assert_eq!(g.ecc_uncorrected_total, Some(0));
        assert_eq!(g.retired_pages_pending, None, "NotSupported on Hopper");
        assert_eq!(g.remapped_rows_pending, Some(false));
        assert!(gpus.iter().all(|g| !g.lost));
        assert_eq!(source.ids()[3].0, 3);
    }

    #[test]
    fn the_h200_fixture_reads_as_recorded_on_an_h200() {
        let gpus = FakeSource::new(fixture("h200x8-driver580.json")).sample();
        assert_eq!(gpus.len(), 8);
        // Recorded: 150754820096 bytes total, 644939776 reserved, 0 used while idle.
        assert!(gpus.iter().all(|g| g.memory_total_bytes == Some(143771 << 20)));
        assert_eq!(gpus[0].memory_used_bytes, Some(0));
        assert_eq!(gpus[0].free_bytes(), Some(150754820096 - 644939776));
    }

    #[test]
    fn xids_are_delivered_once_and_a_lost_gpu_reads_as_lost() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gpus.json");
        let write = |xids: &str, lost: bool| {
            std::fs::write(
                &path,
                format!(r#"{{"gpus":[{{"index":0,"uuid":"GPU-a","memory_total_bytes":100,"xid_events":[{xids}],"lost":{lost}}}]}}"#),
            )
            .unwrap()
        };
        write("", false);
        let source = FakeSource::new(path.clone());
        assert!(source.take_xid_events().is_empty());
        write("79", true);
        assert_eq!(source.take_xid_events(), [XidEvent { gpu: 0, xid: Some(79) }]);
        assert!(source.take_xid_events().is_empty(), "delivered once");
        assert!(source.sample()[0].lost);
        std::fs::write(&path, "not json").unwrap();
        assert!(source.sample().is_empty(), "a bad file is no GPUs, not a panic");
    }
}
