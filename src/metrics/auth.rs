//! `aikore_auth_failures_total{kind}`: refused credentials, counted where the
//! web layer refuses them (wrong passwords, bad bearer tokens, wrong setup
//! codes, attempts refused by the rate limiter). Process-wide atomics: the
//! gate needs no handle to the metrics, and a scrape reads them as they are.

use std::sync::atomic::{AtomicU64, Ordering};

use super::family::{Family, Written};

/// The kinds, in the order they are exposed (each always present, from 0).
pub const KINDS: [&str; 4] = ["password", "bearer", "setup_code", "rate_limited"];

static COUNTS: [AtomicU64; 4] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];

/// Counts one failure of `kind` (one of [`KINDS`]; anything else is ignored).
pub fn failed(kind: &str) {
    if let Some(i) = KINDS.iter().position(|k| *k == kind) {
        COUNTS[i].fetch_add(1, Ordering::Relaxed);
    }
}

pub fn count(kind: &str) -> u64 {
    KINDS.iter().position(|k| *k == kind).map(|i| COUNTS[i].load(Ordering::Relaxed)).unwrap_or(0)
}

pub(crate) fn families(out: &mut Vec<Written>) {
    let mut f = Family::counter(
        "aikore_auth_failures_total",
        "Refused credentials since aikore started: wrong passwords, bad bearer tokens, wrong setup codes, rate-limited attempts.",
    );
    for kind in KINDS {
        f.add(&[("kind", kind)], count(kind) as f64);
    }
    f.finish_into(out);
}
