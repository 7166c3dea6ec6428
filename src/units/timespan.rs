//! systemd time spans (`90s`, `5min`, `1h 30s`, `1.5s`, `infinity`).

use std::time::Duration;

const NSEC_PER_SEC: u128 = 1_000_000_000;

/// The suffixes systemd's `parse_sec()` accepts, longest first so that `ms`
/// is not read as `m` followed by garbage.
const UNITS: &[(&str, u128)] = &[
    ("seconds", NSEC_PER_SEC),
    ("second", NSEC_PER_SEC),
    ("minutes", 60 * NSEC_PER_SEC),
    ("minute", 60 * NSEC_PER_SEC),
    ("months", 2_629_800 * NSEC_PER_SEC),
    ("month", 2_629_800 * NSEC_PER_SEC),
    ("hours", 3600 * NSEC_PER_SEC),
    ("hour", 3600 * NSEC_PER_SEC),
    ("weeks", 7 * 86_400 * NSEC_PER_SEC),
    ("week", 7 * 86_400 * NSEC_PER_SEC),
    ("years", 31_557_600 * NSEC_PER_SEC),
    ("year", 31_557_600 * NSEC_PER_SEC),
    ("days", 86_400 * NSEC_PER_SEC),
    ("day", 86_400 * NSEC_PER_SEC),
    ("usec", 1_000),
    ("msec", 1_000_000),
    ("nsec", 1),
    ("sec", NSEC_PER_SEC),
    ("min", 60 * NSEC_PER_SEC),
    ("hr", 3600 * NSEC_PER_SEC),
    ("us", 1_000),
    ("µs", 1_000),
    ("ms", 1_000_000),
    ("ns", 1),
    ("s", NSEC_PER_SEC),
    ("m", 60 * NSEC_PER_SEC),
    ("h", 3600 * NSEC_PER_SEC),
    ("d", 86_400 * NSEC_PER_SEC),
    ("w", 7 * 86_400 * NSEC_PER_SEC),
    ("M", 2_629_800 * NSEC_PER_SEC),
    ("y", 31_557_600 * NSEC_PER_SEC),
];

/// Parses a systemd time span. A bare number is seconds; `infinity` is
/// `Ok(None)`. Components add up: `1h 30s`, `2m30s`.
pub fn parse_timespan(s: &str) -> Result<Option<Duration>, String> {
    let s = s.trim();
    if s == "infinity" {
        return Ok(None);
    }
    if s.is_empty() {
        return Err("empty time span".to_string());
    }
    let mut rest = s;
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let (nanos, after) = parse_component(rest).map_err(|e| format!("invalid time span '{s}': {e}"))?;
        total = total.checked_add(nanos).ok_or_else(|| format!("time span '{s}' is too large"))?;
        rest = after.trim_start();
    }
    let secs = u64::try_from(total / NSEC_PER_SEC).map_err(|_| format!("time span '{s}' is too large"))?;
    // The remainder is below 10^9, so it always fits.
    let sub = (total % NSEC_PER_SEC) as u32;
    Ok(Some(Duration::new(secs, sub)))
}

/// Like [`parse_timespan`] for keys where "never" makes no sense (RestartSec=).
pub fn parse_finite_timespan(s: &str) -> Result<Duration, String> {
    parse_timespan(s)?.ok_or_else(|| "'infinity' is not allowed here".to_string())
}

/// One `NUMBER[.FRACTION] [UNIT]` component; returns nanoseconds and what follows.
fn parse_component(s: &str) -> Result<(u128, &str), String> {
    let int_len = s.bytes().take_while(u8::is_ascii_digit).count();
    let (int_part, after_int) = s.split_at(int_len);
    let (frac_part, after_num) = match after_int.strip_prefix('.') {
        Some(f) => {
            let n = f.bytes().take_while(u8::is_ascii_digit).count();
            f.split_at(n)
        }
        None => ("", after_int),
    };
    if int_part.is_empty() && frac_part.is_empty() {
        return Err("expected a number".to_string());
    }
    // systemd allows a space between the number and its unit: `5 min`.
    let after_ws = after_num.trim_start();
    let unit_len = after_ws.chars().take_while(|c| c.is_alphabetic()).map(char::len_utf8).sum::<usize>();
    let (unit, rest) = after_ws.split_at(unit_len);
    let multiplier = if unit.is_empty() {
        NSEC_PER_SEC
    } else {
        UNITS.iter().find(|(name, _)| *name == unit).map(|(_, m)| *m).ok_or_else(|| format!("unknown unit '{unit}'"))?
    };
    // A number without a unit must be the whole remainder, as in systemd:
    // otherwise `1..5s` would quietly read as `1s .5s`.
    if unit.is_empty() && !after_num.trim().is_empty() {
        return Err(format!("unexpected '{}'", after_num.trim()));
    }
    let int_value: u128 =
        if int_part.is_empty() { 0 } else { int_part.parse().map_err(|_| "number is too large".to_string())? };
    let mut nanos = int_value.checked_mul(multiplier).ok_or("number is too large")?;
    // Fractions are computed digit by digit so `1.5s` is exact, not float-rounded.
    let mut scale = multiplier;
    for digit in frac_part.bytes().take(30) {
        scale /= 10;
        nanos = nanos.checked_add(u128::from(digit - b'0') * scale).ok_or("number is too large")?;
    }
    Ok((nanos, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: &str) -> Duration {
        parse_timespan(s).expect("valid").expect("finite")
    }

    #[test]
    fn bare_number_is_seconds() {
        assert_eq!(secs("90"), Duration::from_secs(90));
        assert_eq!(secs("0"), Duration::ZERO);
        assert_eq!(secs(" 7 "), Duration::from_secs(7));
    }

    #[test]
    fn units() {
        assert_eq!(secs("5min"), Duration::from_secs(300));
        assert_eq!(secs("100ms"), Duration::from_millis(100));
        assert_eq!(secs("100msec"), Duration::from_millis(100));
        assert_eq!(secs("20us"), Duration::from_micros(20));
        assert_eq!(secs("20usec"), Duration::from_micros(20));
        assert_eq!(secs("3s"), Duration::from_secs(3));
        assert_eq!(secs("3sec"), Duration::from_secs(3));
        assert_eq!(secs("1second"), Duration::from_secs(1));
        assert_eq!(secs("2seconds"), Duration::from_secs(2));
        assert_eq!(secs("2m"), Duration::from_secs(120));
        assert_eq!(secs("2minutes"), Duration::from_secs(120));
        assert_eq!(secs("1h"), Duration::from_secs(3600));
        assert_eq!(secs("1hr"), Duration::from_secs(3600));
        assert_eq!(secs("2hours"), Duration::from_secs(7200));
        assert_eq!(secs("1d"), Duration::from_secs(86_400));
        assert_eq!(secs("2days"), Duration::from_secs(172_800));
        assert_eq!(secs("1w"), Duration::from_secs(604_800));
        assert_eq!(secs("1week"), Duration::from_secs(604_800));
    }

    #[test]
    fn combinations_and_fractions() {
        assert_eq!(secs("1h 30s"), Duration::from_secs(3630));
        assert_eq!(secs("2m30s"), Duration::from_secs(150));
        assert_eq!(secs("1min 2s 500ms"), Duration::from_millis(62_500));
        assert_eq!(secs("5 min"), Duration::from_secs(300));
        assert_eq!(secs("1.5s"), Duration::from_millis(1500));
        assert_eq!(secs("1.5"), Duration::from_millis(1500));
        assert_eq!(secs(".5s"), Duration::from_millis(500));
        assert_eq!(secs("0.25min"), Duration::from_secs(15));
    }

    #[test]
    fn infinity_is_none() {
        assert_eq!(parse_timespan("infinity"), Ok(None));
        assert!(parse_finite_timespan("infinity").is_err());
    }

    #[test]
    fn errors() {
        for bad in ["", "abc", "5x", "-5s", "5s-", "1..5s", "s", "5 5x", "99999999999999999999999999999999999999999y"] {
            assert!(parse_timespan(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]
        #[test]
        fn never_panics(s in "\\PC*") {
            let _ = parse_timespan(&s);
        }

        #[test]
        fn seconds_roundtrip(n in 0u64..1_000_000_000) {
            proptest::prop_assert_eq!(parse_timespan(&format!("{n}s")), Ok(Some(Duration::from_secs(n))));
        }
    }
}
