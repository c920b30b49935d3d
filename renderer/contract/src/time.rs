//! Time, one way everywhere: RFC 3339 instants (UTC civil dates without a calendar library),
//! ISO 8601 durations (the kars API's TTLs) and short durations (`30s`, `5m`, `1h`, `500ms`:
//! command-line flags and AGT rate-limit windows).

/// Parses an RFC 3339 date-time (`2026-01-02T15:04:05Z`, fractional seconds and numeric
/// offsets allowed) into seconds since the Unix epoch.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        if part.bytes().all(|c| c.is_ascii_digit()) {
            part.parse().ok()
        } else {
            None
        }
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ => {
            let rb = rest.as_bytes();
            if rb.len() != 6 || !matches!(rb[0], b'+' | b'-') || rb[3] != b':' {
                return None;
            }
            let oh: i64 = rest.get(1..3)?.parse().ok()?;
            let om: i64 = rest.get(4..6)?.parse().ok()?;
            if oh > 23 || om > 59 {
                return None;
            }
            let o = oh * 3600 + om * 60;
            if rb[0] == b'+' { o } else { -o }
        }
    };
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset)
}

/// Formats seconds since the Unix epoch as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn format_rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if is_leap(y) => 29,
        _ => 28,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01.
pub fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Why an ISO 8601 duration was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Not of the form `P[nD][T[nH][nM][nS]]`.
    #[error("{0:?} is not an ISO 8601 duration such as PT15M, PT4H or P1D")]
    Syntax(String),
    /// Years, months and weeks have no fixed length and are refused.
    #[error("{0:?} uses years, months or weeks; use days (D) and hours/minutes/seconds (T…H…M…S)")]
    CalendarUnit(String),
    /// The duration is zero.
    #[error("{0:?} is zero; a TTL must be positive")]
    Zero(String),
}

/// Parses the ISO 8601 durations upstream kars accepts for a TTL: days, hours, minutes and
/// seconds (`P1D`, `PT4H`, `P1DT30M`). Returns seconds.
pub fn parse_iso8601_duration(s: &str) -> Result<u64, DurationError> {
    let syntax = || DurationError::Syntax(s.to_string());
    let body = s.strip_prefix('P').ok_or_else(syntax)?;
    if body.is_empty() {
        return Err(syntax());
    }
    let (date, time) = match body.split_once('T') {
        Some((d, t)) if !t.is_empty() => (d, Some(t)),
        Some(_) => return Err(syntax()),
        None => (body, None),
    };
    let mut total: u64 = 0;
    let mut calendar = false;
    let mut parse_part =
        |part: &str, units: &[(char, u64)], total: &mut u64| -> Result<(), DurationError> {
            let mut digits = String::new();
            let mut last_unit = 0usize;
            for c in part.chars() {
                if c.is_ascii_digit() {
                    digits.push(c);
                    continue;
                }
                let idx = units.iter().position(|(u, _)| *u == c).ok_or_else(syntax)?;
                if digits.is_empty() || idx < last_unit {
                    return Err(syntax());
                }
                last_unit = idx + 1;
                let n: u64 = digits.parse().map_err(|_| syntax())?;
                digits.clear();
                let secs = units[idx].1;
                if secs == 0 {
                    calendar = true;
                }
                *total = total
                    .checked_add(n.checked_mul(secs).ok_or_else(syntax)?)
                    .ok_or_else(syntax)?;
            }
            if digits.is_empty() {
                Ok(())
            } else {
                Err(syntax())
            }
        };
    parse_part(
        date,
        &[('Y', 0), ('M', 0), ('W', 0), ('D', 86_400)],
        &mut total,
    )?;
    if let Some(t) = time {
        parse_part(t, &[('H', 3600), ('M', 60), ('S', 1)], &mut total)?;
    }
    if calendar {
        return Err(DurationError::CalendarUnit(s.to_string()));
    }
    if total == 0 {
        return Err(DurationError::Zero(s.to_string()));
    }
    Ok(total)
}

/// Why a short duration (`30s`, `5m`, `1h`, `500ms`) was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?}: expected a whole number with a unit, e.g. 500ms, 30s, 5m or 1h")]
pub struct ShortDurationError(pub String);

/// Parses a short duration: a whole number followed by `ms`, `s`, `m` or `h` (a bare number is
/// seconds). Zero is allowed; callers that need a positive duration check.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, ShortDurationError> {
    use std::time::Duration;
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let err = || ShortDurationError(s.to_string());
    let n: u64 = num.parse().map_err(|_| err())?;
    let secs = |mul: u64| n.checked_mul(mul).map(Duration::from_secs).ok_or_else(err);
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "" | "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        _ => Err(err()),
    }
}

/// `(YYYY-MM-DD, YYYY-MM)` of a Unix time, UTC.
pub fn utc_day_and_month(unix: i64) -> (String, String) {
    let (y, m, d) = civil_from_days(unix.div_euclid(86_400));
    (format!("{y:04}-{m:02}-{d:02}"), format!("{y:04}-{m:02}"))
}

/// Seconds since the Unix epoch, now: the one clock read of this crate (the renderer never
/// calls it; the agent and the router do, at their edges).
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The current UTC time, RFC 3339 with seconds.
pub fn now_rfc3339() -> String {
    format_rfc3339(unix_now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trip() {
        let t = parse_rfc3339("2026-11-24T15:04:05Z").expect("valid");
        assert_eq!(format_rfc3339(t), "2026-11-24T15:04:05Z");
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("1970-01-01T01:00:00+01:00"), Some(0));
        assert_eq!(
            parse_rfc3339("2024-02-29T00:00:00.5Z")
                .map(format_rfc3339)
                .as_deref(),
            Some("2024-02-29T00:00:00Z")
        );
        for bad in [
            "2023-02-29T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-01-01 00:00:00Z",
            "2026-01-01T00:00:00",
            "yesterday",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_iso8601_duration("PT15M"), Ok(900));
        assert_eq!(parse_iso8601_duration("P1DT1H"), Ok(90_000));
        assert_eq!(parse_iso8601_duration("PT1H30M10S"), Ok(5410));
        assert!(matches!(
            parse_iso8601_duration("P1W"),
            Err(DurationError::CalendarUnit(_))
        ));
        assert!(matches!(
            parse_iso8601_duration("P1Y"),
            Err(DurationError::CalendarUnit(_))
        ));
        assert!(matches!(
            parse_iso8601_duration("PT0S"),
            Err(DurationError::Zero(_))
        ));
        for bad in ["", "P", "PT", "15M", "PT15", "PTM", "PT1M1H", "P1H", "PT1D"] {
            assert!(
                matches!(parse_iso8601_duration(bad), Err(DurationError::Syntax(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn short_durations() {
        use std::time::Duration;
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        for bad in ["", "s", "5d", "1.5s", "-1s", "5 m", "99999999999999999999h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn civil_dates_round_trip() {
        for days in [-719_468, -1, 0, 1, 10_957, 19_000, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(
            utc_day_and_month(1_764_633_600),
            ("2025-12-02".to_string(), "2025-12".to_string())
        );
    }
}
