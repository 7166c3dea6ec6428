//! The wall clock in the one unit every layer records: milliseconds since the
//! Unix epoch (state rows, the event journal, leases, log lines). Layer 0, so
//! nothing has to import the daemon or the supervisor to read the time.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch; 0 on a clock before 1970, saturating far in the future.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    #[test]
    fn now_is_after_2020_and_monotone_enough() {
        let a = super::now_ms();
        let b = super::now_ms();
        assert!(a > 1_577_836_800_000, "{a} is before 2020");
        assert!(b >= a);
    }
}
