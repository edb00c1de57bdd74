//! Go duration strings (`time.ParseDuration`): "300ms", "1.5h", "1h30m", "-2s", "0".

/// Longest duration string accepted; Go has no limit, but nothing sensible in a jobspec
/// comes near this and the bound keeps hostile input cheap.
const DURATION_LEN_MAX: usize = 64;

/// Parses a Go duration string into nanoseconds. `None` when Go would reject it or the
/// value does not fit an `i64` (Go's limit too: about 292 years).
pub fn parse_duration_ns(text: &str) -> Option<i64> {
    if text.is_empty() || text.len() > DURATION_LEN_MAX {
        return None;
    }
    let (negative, mut rest) = match text.as_bytes()[0] {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    if rest == "0" {
        return Some(0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total_ns: u128 = 0;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let int_part = &rest[..int_len];
        rest = &rest[int_len..];
        let mut frac_part = "";
        if let Some(after_dot) = rest.strip_prefix('.') {
            let frac_len = after_dot.bytes().take_while(u8::is_ascii_digit).count();
            frac_part = &after_dot[..frac_len];
            rest = &after_dot[frac_len..];
        }
        if int_part.is_empty() && frac_part.is_empty() {
            return None;
        }
        let unit_len = rest.bytes().take_while(|b| !b.is_ascii_digit() && *b != b'.').count();
        let unit_ns: u128 = match &rest[..unit_len] {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3_600 * 1_000_000_000,
            _ => return None,
        };
        rest = &rest[unit_len..];
        // Digits are bounded by DURATION_LEN_MAX, so at most 64 digits: parse into u128
        // only what fits and reject the rest as overflow.
        let int_value: u128 = if int_part.is_empty() { 0 } else { int_part.parse().ok()? };
        let mut part_ns = int_value.checked_mul(unit_ns)?;
        let frac_digits = frac_part.len().min(30);
        if frac_digits > 0 {
            let frac_value: u128 = frac_part[..frac_digits].parse().ok()?;
            let scale = 10u128.checked_pow(u32::try_from(frac_digits).ok()?)?;
            part_ns = part_ns.checked_add(frac_value.checked_mul(unit_ns)? / scale)?;
        }
        total_ns = total_ns.checked_add(part_ns)?;
        if total_ns > i64::MAX as u128 {
            return None;
        }
    }
    let total = i64::try_from(total_ns).ok()?;
    Some(if negative { -total } else { total })
}

#[cfg(test)]
mod tests {
    use super::parse_duration_ns;

    #[test]
    fn go_durations() {
        assert_eq!(parse_duration_ns("30s"), Some(30_000_000_000));
        assert_eq!(parse_duration_ns("5m"), Some(300_000_000_000));
        assert_eq!(parse_duration_ns("1h30m"), Some(5_400_000_000_000));
        assert_eq!(parse_duration_ns("1.5h"), Some(5_400_000_000_000));
        assert_eq!(parse_duration_ns("300ms"), Some(300_000_000));
        assert_eq!(parse_duration_ns("-2s"), Some(-2_000_000_000));
        assert_eq!(parse_duration_ns("0"), Some(0));
        assert_eq!(parse_duration_ns("5 minutes"), None);
        assert_eq!(parse_duration_ns("5"), None);
        assert_eq!(parse_duration_ns(""), None);
        assert_eq!(parse_duration_ns("."), None);
        assert_eq!(parse_duration_ns("s"), None);
        assert_eq!(parse_duration_ns("99999999999999999999h"), None);
    }
}
