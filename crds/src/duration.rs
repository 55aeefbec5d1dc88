//! Durations as edgefleet's flags and Helm values write them: `500ms`, `40s`, `2m`, `1h`,
//! or a plain number of seconds. Shared by the controller's and the agent's configuration.

use std::time::Duration;

/// Parses a positive duration; the error says what was wrong in words a user can act on.
pub fn parse(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, "s"), |i| s.split_at(i));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 500ms, 40s, 2m or 1h"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use ms, s, m or h)")),
    };
    if d.is_zero() {
        return Err(format!("{s:?} must be longer than zero"));
    }
    Ok(d)
}

/// Like [`parse`], for settings Kubernetes keeps in whole seconds (Lease durations).
pub fn parse_seconds(s: &str) -> Result<Duration, String> {
    let d = parse(s)?;
    if d.subsec_nanos() != 0 {
        return Err(format!("{s:?}: this setting takes whole seconds"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let ok = [
            ("500ms", Duration::from_millis(500)),
            ("40s", Duration::from_secs(40)),
            ("2m", Duration::from_secs(120)),
            ("1h", Duration::from_secs(3600)),
            ("90", Duration::from_secs(90)),
        ];
        for (s, d) in ok {
            assert_eq!(parse(s), Ok(d), "{s}");
        }
        for bad in ["0s", "0ms", "fast", "5d", "", "-1s"] {
            assert!(parse(bad).is_err(), "{bad:?} must be refused");
        }
        assert_eq!(parse_seconds("2000ms"), Ok(Duration::from_secs(2)));
        assert!(parse_seconds("1500ms").is_err());
    }
}
