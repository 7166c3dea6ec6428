//! Where an instance's GPUs are: `GPUs=auto[:N]` chosen at each start, and
//! what every running instance is expected to use where it is.
//!
//! A GPU's free memory for placement is what NVML says is free minus what
//! the other instances placed or pinned there are still expected to take:
//! - an instance with `GPUMemoryMin=` is expected to use that much; what it
//!   already uses there (as attributed to it) is in NVML's "used" already,
//!   so only the rest counts;
//! - an instance without it, until its own use is seen on that GPU, is
//!   expected to take what was free there when it was placed, for at most
//!   [`SETTLE`]: a model still loading must not make its GPU look empty to
//!   the next start. After that NVML's figures speak for it.
//!
//! Choices and reservations are made under one lock, so two instances
//! started together never both count the same memory as free.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::GpuSample;

/// How long an undeclared instance's reservation lasts without its own use
/// seen: two minutes covers loading a multi-GB checkpoint from local disk.
pub const SETTLE: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error("no GPU is known (no NVIDIA driver or no GPU): GPUs=auto needs one")]
    NoGpus,
    #[error("GPUs=auto:{wanted} but only {healthy} healthy GPU(s){unhealthy}")]
    TooFew { wanted: u32, healthy: usize, unhealthy: String },
    #[error("GPUMemoryMin={} GiB: no {which} has that much free ({best})", gib_number(*min))]
    NotEnoughMemory { min: u64, which: &'static str, best: String },
    #[error("GPU {0} is unhealthy ({1}): nothing new is started on it")]
    Unhealthy(String, String),
    #[error("GPU {0} is not among the GPUs the driver reports")]
    Unknown(String),
}

/// What a start asked for.
#[derive(Debug, Clone)]
pub enum Want {
    /// GPUs=auto:N.
    Auto(u32),
    /// GPUs= naming these indices (already resolved from ids).
    Pinned(Vec<u32>),
}

/// The GPUs a run got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub gpus: Vec<u32>,
}

#[derive(Debug, Clone)]
struct Reservation {
    gpus: Vec<u32>,
    /// GPUMemoryMin= (declared); None: unknown, see the module doc.
    expected: Option<u64>,
    /// Free memory of each GPU when placed (what an undeclared one holds back).
    free_at_placement: HashMap<u32, u64>,
    placed_at: Instant,
}

#[derive(Debug, Default)]
struct State {
    reservations: BTreeMap<String, Reservation>,
    /// unit -> gpu -> bytes the unit's processes use there (latest watch).
    observed: HashMap<String, HashMap<u32, u64>>,
}

#[derive(Debug, Default)]
pub struct Placer {
    state: Mutex<State>,
}

impl Placer {
    /// Chooses (auto) or checks (pinned) the GPUs of `unit`'s next run and
    /// reserves them, replacing its previous reservation.
    pub fn place(
        &self,
        unit: &str,
        want: &Want,
        min: Option<u64>,
        gpus: &[GpuSample],
        healthy: &dyn Fn(u32) -> Result<(), String>,
        now: Instant,
    ) -> Result<Placement, PlacementError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.reservations.remove(unit);
        let free = effective_free(&state, gpus, now);
        let chosen = match want {
            Want::Auto(n) => choose(&free, *n, min, healthy)?,
            Want::Pinned(list) => check_pinned(&free, list, min, healthy)?,
        };
        let free_at_placement = chosen.iter().filter_map(|g| Some((*g, *free.get(g)?))).collect();
        state.reservations.insert(
            unit.to_string(),
            Reservation { gpus: chosen.clone(), expected: min, free_at_placement, placed_at: now },
        );
        Ok(Placement { gpus: chosen })
    }

    /// The latest per-unit VRAM (unit -> gpu -> bytes), from the watch.
    pub fn observe(&self, observed: HashMap<String, HashMap<u32, u64>>) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).observed = observed;
    }

    /// Drops the reservations of units not running, except ones made after
    /// `listed_at` (placed while the list was being taken).
    pub fn retain_running(&self, running: &HashSet<String>, listed_at: Instant) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.reservations.retain(|unit, r| running.contains(unit) || r.placed_at > listed_at);
    }

    pub fn release(&self, unit: &str) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).reservations.remove(unit);
    }

    /// unit -> the GPUs its current run was given.
    pub fn placed(&self) -> BTreeMap<String, Vec<u32>> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.reservations.iter().map(|(u, r)| (u.clone(), r.gpus.clone())).collect()
    }

    /// unit -> gpu -> bytes, as the watch last saw it.
    pub fn observed(&self) -> HashMap<String, HashMap<u32, u64>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).observed.clone()
    }

    /// The VRAM the watch last saw `unit` use, over all GPUs.
    pub fn observed_total(&self, unit: &str) -> Option<u64> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.observed.get(unit).map(|m| m.values().sum())
    }

    pub fn placed_of(&self, unit: &str) -> Option<Vec<u32>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).reservations.get(unit).map(|r| r.gpus.clone())
    }
}

/// gpu index -> bytes free for a new placement (see the module doc).
fn effective_free(state: &State, gpus: &[GpuSample], now: Instant) -> BTreeMap<u32, u64> {
    let mut free: BTreeMap<u32, u64> =
        gpus.iter().filter(|g| !g.lost).filter_map(|g| Some((g.index, g.free_bytes()?))).collect();
    for (unit, r) in &state.reservations {
        let seen = state.observed.get(unit);
        for gpu in &r.gpus {
            let used = seen.and_then(|s| s.get(gpu)).copied().unwrap_or(0);
            let outstanding = match r.expected {
                Some(expected) => expected.saturating_sub(used),
                None if used == 0 && now.duration_since(r.placed_at) < SETTLE => {
                    r.free_at_placement.get(gpu).copied().unwrap_or(0)
                }
                None => 0,
            };
            if let Some(f) = free.get_mut(gpu) {
                *f = f.saturating_sub(outstanding);
            }
        }
    }
    free
}

fn gib_number(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1u64 << 30) as f64)
}

fn gib(bytes: u64) -> String {
    format!("{} GiB", gib_number(bytes))
}

fn choose(
    free: &BTreeMap<u32, u64>,
    n: u32,
    min: Option<u64>,
    healthy: &dyn Fn(u32) -> Result<(), String>,
) -> Result<Vec<u32>, PlacementError> {
    if free.is_empty() {
        return Err(PlacementError::NoGpus);
    }
    let mut sick = Vec::new();
    let mut candidates: Vec<(u32, u64)> = Vec::new();
    for (&gpu, &bytes) in free {
        match healthy(gpu) {
            Ok(()) => candidates.push((gpu, bytes)),
            Err(why) => sick.push(format!("GPU {gpu}: {why}")),
        }
    }
    if candidates.len() < n as usize {
        let unhealthy = if sick.is_empty() { String::new() } else { format!("; unhealthy: {}", sick.join("; ")) };
        return Err(PlacementError::TooFew { wanted: n, healthy: candidates.len(), unhealthy });
    }
    // Most free first; the lower index on a tie, so a choice is reproducible.
    candidates.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let chosen = &candidates[..n as usize];
    if let Some(min) = min {
        if chosen.iter().any(|(_, f)| *f < min) {
            let best: Vec<String> = candidates.iter().map(|(g, f)| format!("GPU {g}: {} free", gib(*f))).collect();
            let which = if n == 1 { "healthy GPU" } else { "set of healthy GPUs" };
            return Err(PlacementError::NotEnoughMemory { min, which, best: best.join(", ") });
        }
    }
    let mut out: Vec<u32> = chosen.iter().map(|(g, _)| *g).collect();
    // CUDA numbers the visible devices in the order given: keep PCI order.
    out.sort_unstable();
    Ok(out)
}

fn check_pinned(
    free: &BTreeMap<u32, u64>,
    list: &[u32],
    min: Option<u64>,
    healthy: &dyn Fn(u32) -> Result<(), String>,
) -> Result<Vec<u32>, PlacementError> {
    for &gpu in list {
        if let Err(why) = healthy(gpu) {
            return Err(PlacementError::Unhealthy(gpu.to_string(), why));
        }
        if let (Some(min), Some(&f)) = (min, free.get(&gpu)) {
            if f < min {
                return Err(PlacementError::NotEnoughMemory {
                    min,
                    which: "pinned GPU",
                    best: format!("GPU {gpu}: {} free", gib(f)),
                });
            }
        }
    }
    Ok(list.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    /// Four 80 GiB GPUs with 10, 60, 30 and 50 GiB in use.
    fn four() -> Vec<GpuSample> {
        [10, 60, 30, 50]
            .iter()
            .enumerate()
            .map(|(i, used)| GpuSample {
                index: i as u32,
                memory_total_bytes: Some(80 * GIB),
                memory_used_bytes: Some(used * GIB),
                ..Default::default()
            })
            .collect()
    }

    fn all_ok(_: u32) -> Result<(), String> {
        Ok(())
    }

    #[test]
    fn auto_takes_the_most_free_and_auto_n_keeps_pci_order() {
        let p = Placer::default();
        let now = Instant::now();
        assert_eq!(p.place("a", &Want::Auto(1), None, &four(), &all_ok, now).unwrap().gpus, [0]);
        let p = Placer::default();
        assert_eq!(p.place("a", &Want::Auto(2), None, &four(), &all_ok, now).unwrap().gpus, [0, 2]);
    }

    #[test]
    fn a_second_start_does_not_count_the_first_ones_memory() {
        let p = Placer::default();
        let now = Instant::now();
        // GPU 0 has 70 GiB free; the first declares 45 GiB: 25 GiB left, less than GPU 2's 50.
        assert_eq!(p.place("a", &Want::Auto(1), Some(45 * GIB), &four(), &all_ok, now).unwrap().gpus, [0]);
        assert_eq!(p.place("b", &Want::Auto(1), None, &four(), &all_ok, now).unwrap().gpus, [2]);
        // Undeclared: b holds GPU 2's free memory back until its use is seen.
        assert_eq!(p.place("c", &Want::Auto(1), None, &four(), &all_ok, now).unwrap().gpus, [3]);
        // Once b's own use is seen (in "used" already), its hold ends.
        p.observe([("b".to_string(), [(2, GIB)].into())].into());
        assert_eq!(p.place("d", &Want::Auto(1), None, &four(), &all_ok, now).unwrap().gpus, [2]);
        // After SETTLE undeclared holds end (NVML's figures speak for them);
        // a's declared 45 GiB still counts: GPU 0 has 25 left, GPU 2 50.
        let later = now + SETTLE + Duration::from_secs(1);
        p.observe(HashMap::new());
        assert_eq!(p.place("e", &Want::Auto(1), None, &four(), &all_ok, later).unwrap().gpus, [2]);
    }

    #[test]
    fn gpu_memory_min_refuses_with_the_figures() {
        let p = Placer::default();
        let err = p.place("a", &Want::Auto(1), Some(75 * GIB), &four(), &all_ok, Instant::now()).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("no healthy GPU has that much free") && text.contains("GPU 0: 70.0 GiB free"), "{text}");
        assert!(p.placed().is_empty(), "a refused start reserves nothing");
        let err = p.place("a", &Want::Pinned(vec![1]), Some(25 * GIB), &four(), &all_ok, Instant::now());
        assert!(err.unwrap_err().to_string().contains("pinned GPU"));
    }

    #[test]
    fn unhealthy_gpus_get_nothing_new() {
        let p = Placer::default();
        let sick = |g: u32| if g == 0 { Err("Xid 79: fell off the bus".to_string()) } else { Ok(()) };
        assert_eq!(p.place("a", &Want::Auto(1), None, &four(), &sick, Instant::now()).unwrap().gpus, [2]);
        let err = p.place("b", &Want::Pinned(vec![0]), None, &four(), &sick, Instant::now()).unwrap_err();
        assert!(err.to_string().contains("unhealthy (Xid 79"));
        let err = p.place("c", &Want::Auto(4), None, &four(), &sick, Instant::now()).unwrap_err();
        assert!(err.to_string().contains("only 3 healthy") && err.to_string().contains("GPU 0: Xid 79"));
        assert_eq!(
            Placer::default().place("x", &Want::Auto(1), None, &[], &all_ok, Instant::now()),
            Err(PlacementError::NoGpus)
        );
    }

    #[test]
    fn concurrent_starts_never_share_the_free_gpu() {
        let p = std::sync::Arc::new(Placer::default());
        let gpus = four();
        let now = Instant::now();
        let picks: Vec<Vec<u32>> = std::thread::scope(|s| {
            let handles: Vec<_> = ["a", "b"]
                .iter()
                .map(|u| {
                    let (p, gpus) = (p.clone(), gpus.clone());
                    s.spawn(move || p.place(u, &Want::Auto(1), None, &gpus, &all_ok, now).unwrap().gpus)
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_ne!(picks[0], picks[1], "{picks:?}");
        let mut all: Vec<u32> = picks.concat();
        all.sort();
        assert_eq!(all, [0, 2], "the two with the most free memory");
    }

    #[test]
    fn reservations_of_stopped_units_go() {
        let p = Placer::default();
        let t0 = Instant::now();
        p.place("a", &Want::Auto(1), None, &four(), &all_ok, t0).unwrap();
        p.place("b", &Want::Auto(1), None, &four(), &all_ok, t0 + Duration::from_secs(2)).unwrap();
        p.retain_running(&HashSet::new(), t0 + Duration::from_secs(1));
        assert_eq!(p.placed().keys().collect::<Vec<_>>(), ["b"], "b was placed after the list was taken");
    }
}
