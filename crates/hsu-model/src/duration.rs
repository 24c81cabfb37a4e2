//! Durations as people write them in flags and specs: `500ms`, `30s`, `10m`, `24h`, `7d`, or a
//! sum such as `1h30m`. A bare number is refused: the unit is never guessed.

use std::time::Duration;

/// Parses a duration; the error says what was expected and what was found.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("expected a duration such as 500ms, 30s, 10m, 24h or 7d, found an empty string".into());
    }
    if s.starts_with('-') {
        return Err(format!("duration {text:?} is negative; expected zero or more, such as 500ms"));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!("expected a number at {rest:?} in duration {text:?}"));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("number {:?} in duration {text:?} is too large", &rest[..digits]))?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let part = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            "d" => Duration::from_secs(n.saturating_mul(86_400)),
            "" => return Err(format!("duration {text:?} has a number without a unit; expected one of ms, s, m, h, d")),
            other => {
                return Err(format!("unknown unit {other:?} in duration {text:?}; expected one of ms, s, m, h, d"))
            }
        };
        total = total.saturating_add(part);
    }
    Ok(total)
}

/// Writes a duration the way [`parse_duration`] reads it, in its largest exact unit: `500ms`,
/// `30s`, `10m`, `2h`, `1h30m` becomes `90m`.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    for (unit, size) in [("d", 86_400_000u128), ("h", 3_600_000), ("m", 60_000), ("s", 1000)] {
        if ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_units_and_sums() {
        let cases = [
            ("500ms", Duration::from_millis(500)),
            ("30s", Duration::from_secs(30)),
            ("10m", Duration::from_secs(600)),
            ("24h", Duration::from_secs(86_400)),
            ("7d", Duration::from_secs(7 * 86_400)),
            ("1h30m", Duration::from_secs(5400)),
            (" 2s ", Duration::from_secs(2)),
        ];
        for (text, want) in cases {
            assert_eq!(parse_duration(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn formats_what_it_parses() {
        for text in ["500ms", "30s", "10m", "2h", "7d", "1500ms", "0s"] {
            assert_eq!(format_duration(parse_duration(text).unwrap()), text);
        }
    }

    #[test]
    fn refuses_with_a_reason() {
        let cases = [
            ("", "found an empty string"),
            ("30", "without a unit"),
            ("5y", "unknown unit \"y\""),
            ("s", "expected a number at \"s\""),
            ("99999999999999999999s", "too large"),
            ("-5s", "is negative"),
        ];
        for (text, want) in cases {
            let err = parse_duration(text).unwrap_err();
            assert!(err.contains(want), "{text}: {err}");
        }
    }
}
