//! Whether each GPU is fit for new work, judged from what the source says.
//!
//! A GPU turns unhealthy, with a reason people can act on, when:
//! - it fell off the bus (NVML answers GPU_IS_LOST; Xid 79);
//! - a critical Xid that means broken hardware or a reset is needed arrives
//!   (ECC, row remapping, NVLink, GSP: [`UNHEALTHY_XIDS`]); Xids an
//!   application causes (13, 31, 43: its own faults) are logged, not held against the GPU;
//! - its uncorrected ECC count grows past what it was when aikore first saw it
//!   (the lifetime count may be non-zero from long ago: only new errors count);
//! - rows are pending remapping or pages pending retirement: the GPU needs a reset.
//!
//! A lost GPU, an Xid and new ECC errors stay held against the GPU until aikore
//! restarts (the GPU needs a reset or a look by the operator anyway); a pending
//! remap clears itself when the driver no longer reports it.

use std::collections::HashMap;
use std::sync::Mutex;

use super::{GpuSample, XidEvent};

/// Xids that make a GPU unfit for new work (NVIDIA's Xid catalogue: 48 DBE
/// ECC, 61/62 internal micro-controller halt, 63/64 row remap event/failure,
/// 74 NVLink error, 79 fallen off the bus, 92 high single-bit ECC rate,
/// 94/95 contained/uncontained ECC, 119/120 GSP timeout/error).
pub const UNHEALTHY_XIDS: &[u64] = &[48, 61, 62, 63, 64, 74, 79, 92, 94, 95, 119, 120];

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GpuHealth {
    pub healthy: bool,
    /// Why not, in words (None while healthy).
    pub reason: Option<String>,
}

impl GpuHealth {
    const OK: GpuHealth = GpuHealth { healthy: true, reason: None };
}

#[derive(Debug, Default)]
struct Book {
    /// Reasons that stay (lost, Xid, new ECC errors), per GPU index.
    sticky: HashMap<u32, String>,
    /// Reasons that last while the driver says so (pending remap/retirement).
    pending: HashMap<u32, String>,
    /// Uncorrected ECC count when first seen, per GPU index.
    ecc_base: HashMap<u32, u64>,
    /// GPUs seen at least once (a GPU never seen has no verdict).
    seen: std::collections::BTreeSet<u32>,
}

#[derive(Debug, Default)]
pub struct HealthBook {
    book: Mutex<Book>,
}

impl HealthBook {
    /// Folds one read (and the Xids since the last one) into the verdicts.
    pub fn observe(&self, samples: &[GpuSample], events: &[XidEvent]) {
        let mut book = self.book.lock().unwrap_or_else(|p| p.into_inner());
        for g in samples {
            book.seen.insert(g.index);
            if g.lost {
                hold(&mut book, g.index, "fell off the bus: NVML answers GPU_IS_LOST".to_string());
                continue;
            }
            if let Some(count) = g.ecc_uncorrected_total {
                let base = *book.ecc_base.entry(g.index).or_insert(count);
                if count > base {
                    hold(&mut book, g.index, format!("{} new uncorrected ECC error(s)", count - base));
                }
            }
            let pending = match (g.remapped_rows_pending, g.retired_pages_pending) {
                (Some(true), _) => Some("rows pending remapping: reset the GPU"),
                (_, Some(true)) => Some("pages pending retirement: reset the GPU"),
                _ => None,
            };
            match pending {
                Some(why) => book.pending.insert(g.index, why.to_string()),
                None => book.pending.remove(&g.index),
            };
        }
        for e in events {
            book.seen.insert(e.gpu);
            match e.xid {
                Some(79) => hold(&mut book, e.gpu, "Xid 79: fell off the bus".to_string()),
                Some(x) if UNHEALTHY_XIDS.contains(&x) => hold(&mut book, e.gpu, format!("critical Xid {x}")),
                other => {
                    tracing::info!(gpu = e.gpu, xid = ?other, "critical Xid (an application's fault; GPU kept healthy)")
                }
            }
        }
    }

    /// The verdict on one GPU (healthy when nothing is known against it).
    pub fn of(&self, gpu: u32) -> GpuHealth {
        let book = self.book.lock().unwrap_or_else(|p| p.into_inner());
        match book.sticky.get(&gpu).or_else(|| book.pending.get(&gpu)) {
            Some(reason) => GpuHealth { healthy: false, reason: Some(reason.clone()) },
            None => GpuHealth::OK,
        }
    }

    pub fn is_healthy(&self, gpu: u32) -> bool {
        self.of(gpu).healthy
    }

    /// Every GPU seen, with its verdict, by index.
    pub fn all(&self) -> Vec<(u32, GpuHealth)> {
        let seen: Vec<u32> = self.book.lock().unwrap_or_else(|p| p.into_inner()).seen.iter().copied().collect();
        seen.into_iter().map(|g| (g, self.of(g))).collect()
    }
}

/// Keeps the first reason: it is the cause, later ones are its echoes.
fn hold(book: &mut Book, gpu: u32, reason: String) {
    if let std::collections::hash_map::Entry::Vacant(slot) = book.sticky.entry(gpu) {
        tracing::warn!(gpu, reason = %reason, "GPU unhealthy: nothing new is placed on it");
        slot.insert(reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(index: u32, ecc: u64) -> GpuSample {
        GpuSample { index, ecc_uncorrected_total: Some(ecc), remapped_rows_pending: Some(false), ..Default::default() }
    }

    #[test]
    fn xid_79_and_a_lost_gpu_are_held() {
        let book = HealthBook::default();
        book.observe(&[gpu(0, 0), gpu(1, 0)], &[]);
        assert!(book.is_healthy(0) && book.is_healthy(1));
        book.observe(&[gpu(0, 0), gpu(1, 0)], &[XidEvent { gpu: 1, xid: Some(79) }]);
        assert_eq!(book.of(1).reason.as_deref(), Some("Xid 79: fell off the bus"));
        assert!(book.is_healthy(0));
        book.observe(&[gpu(0, 0), gpu(1, 0)], &[]);
        assert!(!book.is_healthy(1), "held until aikore restarts");
        let lost = GpuSample { index: 0, lost: true, ..Default::default() };
        book.observe(&[lost], &[]);
        assert!(book.of(0).reason.unwrap().contains("GPU_IS_LOST"));
    }

    #[test]
    fn only_new_uncorrected_ecc_errors_count() {
        let book = HealthBook::default();
        book.observe(&[gpu(0, 5)], &[]);
        assert!(book.is_healthy(0), "5 errors from long ago: not ours to judge");
        book.observe(&[gpu(0, 5)], &[]);
        assert!(book.is_healthy(0));
        book.observe(&[gpu(0, 7)], &[]);
        assert_eq!(book.of(0).reason.as_deref(), Some("2 new uncorrected ECC error(s)"));
    }

    #[test]
    fn app_xids_do_not_count_and_pending_remaps_clear() {
        let book = HealthBook::default();
        book.observe(&[gpu(0, 0)], &[XidEvent { gpu: 0, xid: Some(13) }, XidEvent { gpu: 0, xid: Some(43) }]);
        assert!(book.is_healthy(0));
        let pending = GpuSample { remapped_rows_pending: Some(true), ..gpu(0, 0) };
        book.observe(&[pending], &[]);
        assert!(book.of(0).reason.unwrap().contains("remapping"));
        book.observe(&[gpu(0, 0)], &[]);
        assert!(book.is_healthy(0), "the reset happened");
        assert_eq!(book.all().len(), 1);
    }
}
