//! Durations written as Nomad (Go's `time.ParseDuration`) writes them:
//! `"30s"`, `"5m"`, `"1h30m"`, `"1.5h"`, `"250ms"`.

use std::time::Duration;

/// Longest duration string accepted; anything longer is a typo or an attack.
const DURATION_TEXT_LEN_MAX: usize = 64;

/// Parse a Go-style duration. Negative durations are refused: no agent
/// setting means anything by one.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration".to_owned());
    }
    if text.len() > DURATION_TEXT_LEN_MAX {
        return Err(format!("duration longer than {DURATION_TEXT_LEN_MAX} characters"));
    }
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    if text.starts_with('-') {
        return Err("negative duration".to_owned());
    }
    let text = text.strip_prefix('+').unwrap_or(text);
    let mut total_ns: f64 = 0.0;
    let mut rest = text;
    while !rest.is_empty() {
        let number_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        if number_len == 0 {
            return Err(format!("expected a number at {rest:?}"));
        }
        let number: f64 =
            rest[..number_len].parse().map_err(|_| format!("invalid number {:?}", &rest[..number_len]))?;
        rest = &rest[number_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let unit_ns: f64 = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "" => return Err("missing unit (ns, us, ms, s, m, h)".to_owned()),
            unit => return Err(format!("unknown unit {unit:?} (ns, us, ms, s, m, h)")),
        };
        rest = &rest[unit_len..];
        total_ns += number * unit_ns;
    }
    // u64 nanoseconds hold 584 years; a larger value is a mistake.
    if !total_ns.is_finite() || total_ns > u64::MAX as f64 {
        return Err("duration too large".to_owned());
    }
    Ok(Duration::from_nanos(total_ns.round() as u64))
}

/// The shortest Go-style spelling of a duration, for messages and snapshots.
pub(crate) fn format_duration(duration: Duration) -> String {
    let ns = duration.as_nanos();
    if ns == 0 {
        return "0s".to_owned();
    }
    for (unit, unit_ns) in
        [("h", 3_600_000_000_000u128), ("m", 60_000_000_000), ("s", 1_000_000_000), ("ms", 1_000_000)]
    {
        if ns.is_multiple_of(unit_ns) {
            return format!("{}{unit}", ns / unit_ns);
        }
    }
    format!("{ns}ns")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("10"), Err("missing unit (ns, us, ms, s, m, h)".to_owned()));
        assert_eq!(parse_duration("3 days"), Err("unknown unit \" days\" (ns, us, ms, s, m, h)".to_owned()));
        assert_eq!(parse_duration("-5s"), Err("negative duration".to_owned()));
        assert_eq!(parse_duration(""), Err("empty duration".to_owned()));
    }

    #[test]
    fn formats_shortest() {
        assert_eq!(format_duration(Duration::from_secs(7200)), "2h");
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
    }
}
