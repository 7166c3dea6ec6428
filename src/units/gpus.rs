//! GPU ids and the `GPUs=` value: the one rule every reader of a GPU id uses
//! (unit files here, the instances API through `instances::validate_gpus`).
//!
//! A GPU is named by its NVML index (`0`, as nvidia-smi and
//! `CUDA_DEVICE_ORDER=PCI_BUS_ID` number them) or by its UUID (`GPU-…`, or
//! `MIG-…` for a MIG slice). `GPUs=auto` / `GPUs=auto:N` leave the choice to
//! placement at each start (see `gpu::placement`).

use std::fmt;
use std::time::Duration;

/// One GPU as a unit file or the API names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GpuId {
    Index(u32),
    /// `GPU-<uuid>` or `MIG-<uuid>`, as NVML spells it.
    Uuid(String),
}

/// Indices above this are a typo, not a machine: NVML numbers at most a few
/// dozen devices, and 4 digits keeps the old rule's bound.
const MAX_INDEX_DIGITS: usize = 4;
/// NVML's UUID buffer is 80 bytes (NVML_DEVICE_UUID_V2_BUFFER_SIZE).
const MAX_UUID_LEN: usize = 80;

impl GpuId {
    pub fn parse(id: &str) -> Result<GpuId, String> {
        if !id.is_empty() && id.len() <= MAX_INDEX_DIGITS && id.bytes().all(|b| b.is_ascii_digit()) {
            return id.parse().map(GpuId::Index).map_err(|e| format!("'{id}': {e}"));
        }
        let uuid = id.len() <= MAX_UUID_LEN
            && ["GPU-", "MIG-"].iter().any(|p| {
                id.strip_prefix(p).is_some_and(|rest| {
                    !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'/')
                })
            });
        if uuid {
            Ok(GpuId::Uuid(id.to_string()))
        } else {
            Err(format!("'{id}' is neither a GPU index nor a GPU-/MIG- UUID"))
        }
    }

    /// Whether this id names the GPU with this NVML index and UUID.
    pub fn names(&self, index: u32, uuid: &str) -> bool {
        match self {
            GpuId::Index(i) => *i == index,
            GpuId::Uuid(u) => u == uuid,
        }
    }
}

impl fmt::Display for GpuId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GpuId::Index(i) => write!(f, "{i}"),
            GpuId::Uuid(u) => f.write_str(u),
        }
    }
}

/// What `GPUs=` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuSpec {
    /// These GPUs, in this order (empty: CPU only).
    Pinned(Vec<GpuId>),
    /// The N healthy GPUs with the most free memory, chosen at each start.
    Auto(u32),
}

impl Default for GpuSpec {
    fn default() -> Self {
        GpuSpec::Pinned(Vec::new())
    }
}

/// `auto:N` asks for at most this many: more is a typo on any box we run on.
const MAX_AUTO: u32 = 64;

impl GpuSpec {
    /// `0,1`, `GPU-…`, `auto`, `auto:2`; commas or spaces between ids; empty for CPU only.
    pub fn parse(v: &str) -> Result<GpuSpec, String> {
        let v = v.trim();
        if let Some(rest) = v.strip_prefix("auto") {
            let count = match rest.strip_prefix(':') {
                None if rest.is_empty() => 1,
                Some(n) => n
                    .trim()
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=MAX_AUTO).contains(n))
                    .ok_or_else(|| format!("'{v}': auto:N takes a GPU count from 1 to {MAX_AUTO}"))?,
                None => return Err(format!("'{v}' is neither a GPU list nor auto / auto:N")),
            };
            return Ok(GpuSpec::Auto(count));
        }
        let mut ids: Vec<GpuId> = Vec::new();
        for word in v.split(|c: char| c == ',' || c.is_whitespace()).filter(|s| !s.is_empty()) {
            let id = GpuId::parse(word)?;
            if ids.contains(&id) {
                return Err(format!("GPU '{word}' is listed twice"));
            }
            ids.push(id);
        }
        Ok(GpuSpec::Pinned(ids))
    }

    /// The words as the API and the unit file write them.
    pub fn words(&self) -> Vec<String> {
        match self {
            GpuSpec::Pinned(ids) => ids.iter().map(GpuId::to_string).collect(),
            GpuSpec::Auto(1) => vec!["auto".to_string()],
            GpuSpec::Auto(n) => vec![format!("auto:{n}")],
        }
    }

    pub fn is_cpu_only(&self) -> bool {
        matches!(self, GpuSpec::Pinned(ids) if ids.is_empty())
    }
}

impl fmt::Display for GpuSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.words().join(","))
    }
}

/// An instance's memory bounds (`[Instance]` keys).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceLimits {
    /// `GPUMemoryMin=`: a start needs a GPU with this much free memory
    /// (after what other instances pinned there are expected to use);
    /// also what placement reserves for this instance until its own use is seen.
    pub gpu_memory_min: Option<u64>,
    /// `MemoryRestartAbove=`: restart when the unit's memory stays above this.
    pub memory_restart_above: Option<u64>,
    /// `GPUMemoryRestartAbove=`: restart when the unit's VRAM (all its GPUs) stays above this.
    pub gpu_memory_restart_above: Option<u64>,
    /// `RestartAboveSec=`: how long a reading must stay above a bound before
    /// the restart, so a spike during a model load is not a leak.
    pub restart_above_window: Duration,
}

impl Default for InstanceLimits {
    fn default() -> Self {
        InstanceLimits {
            gpu_memory_min: None,
            memory_restart_above: None,
            gpu_memory_restart_above: None,
            // Five minutes: longer than a model load or a big batch's peak, short next to a leak's hours.
            restart_above_window: Duration::from_secs(300),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_rule_for_ids() {
        assert_eq!(GpuId::parse("0"), Ok(GpuId::Index(0)));
        assert_eq!(GpuId::parse("12"), Ok(GpuId::Index(12)));
        assert!(GpuId::parse("GPU-8f3c2a10-aaaa").is_ok());
        assert!(GpuId::parse("MIG-GPU-8f3c/1/0").is_ok());
        for bad in ["", "-1", "12345", "gpu0", "GPU-", "GPU-a b", "0x1", "GPU-\u{e9}"] {
            assert!(GpuId::parse(bad).is_err(), "{bad:?}");
        }
        assert!(GpuId::parse(&format!("GPU-{}", "a".repeat(80))).is_err(), "longer than NVML's buffer");
    }

    #[test]
    fn specs_parse_and_print_back() {
        assert_eq!(GpuSpec::parse(""), Ok(GpuSpec::Pinned(vec![])));
        assert_eq!(GpuSpec::parse("auto"), Ok(GpuSpec::Auto(1)));
        assert_eq!(GpuSpec::parse("auto:3"), Ok(GpuSpec::Auto(3)));
        assert_eq!(GpuSpec::parse("0, 1 GPU-x").unwrap().to_string(), "0,1,GPU-x");
        assert_eq!(GpuSpec::parse("auto:2").unwrap().to_string(), "auto:2");
        assert_eq!(GpuSpec::parse("auto").unwrap().to_string(), "auto");
        assert!(GpuSpec::parse("0,0").unwrap_err().contains("listed twice"));
        for bad in ["auto:0", "auto:", "auto:65", "autox", "auto:x", "0,auto"] {
            assert!(GpuSpec::parse(bad).is_err(), "{bad:?}");
        }
        assert!(GpuSpec::parse("").unwrap().is_cpu_only() && !GpuSpec::parse("auto").unwrap().is_cpu_only());
    }
}
