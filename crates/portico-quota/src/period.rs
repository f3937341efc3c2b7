//! Quota periods on UTC calendar boundaries, with API Gateway's offsets.
//!
//! Periods are computed from the wall clock each time (never from "when the
//! counter was created"), so a restart or a clock jump lands in the right
//! period, and a counter belongs to exactly one period by its start time.

/// The length of a quota period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    Day,
    Week,
    Month,
}

impl Period {
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Day => "DAY",
            Period::Week => "WEEK",
            Period::Month => "MONTH",
        }
    }

    /// The largest offset the period allows: DAY none, WEEK 0–6 (0 = the week
    /// starts on Sunday), MONTH 0–27 (0 = it starts on the 1st).
    pub fn max_offset(self) -> u32 {
        match self {
            Period::Day => 0,
            Period::Week => 6,
            Period::Month => 27,
        }
    }
}

/// A quota: `limit` requests per period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaSpec {
    pub limit: u64,
    pub period: Period,
    pub offset: u32,
}

const DAY_MS: i64 = 86_400_000;

/// `[start, end)` in Unix milliseconds of the period containing `now_ms`.
pub fn bounds(period: Period, offset: u32, now_ms: i64) -> (i64, i64) {
    let day = now_ms.div_euclid(DAY_MS);
    let offset = i64::from(offset.min(period.max_offset()));
    let (start, end) = match period {
        Period::Day => (day, day + 1),
        Period::Week => {
            // 1970-01-01 was a Thursday: weekday 4 when Sunday is 0.
            let weekday = (day + 4).rem_euclid(7);
            let start = day - (weekday - offset).rem_euclid(7);
            (start, start + 7)
        }
        Period::Month => month_bounds(day, offset),
    };
    (start * DAY_MS, end * DAY_MS)
}

fn month_bounds(day: i64, offset: i64) -> (i64, i64) {
    let (y, m, d) = civil_from_days(day);
    let (y, m) = if d - 1 < offset {
        previous_month(y, m)
    } else {
        (y, m)
    };
    let start = days_from_civil(y, m, 1) + offset;
    let (ny, nm) = next_month(y, m);
    (start, days_from_civil(ny, nm, 1) + offset)
}

fn previous_month(y: i64, m: i64) -> (i64, i64) {
    if m == 1 { (y - 1, 12) } else { (y, m - 1) }
}

fn next_month(y: i64, m: i64) -> (i64, i64) {
    if m == 12 { (y + 1, 1) } else { (y, m + 1) }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day number (inverse of [`days_from_civil`]).
pub fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(y: i64, m: i64, d: i64, hour: i64) -> i64 {
        days_from_civil(y, m, d) * DAY_MS + hour * 3_600_000
    }

    fn date(ms: i64) -> (i64, i64, i64) {
        civil_from_days(ms.div_euclid(DAY_MS))
    }

    #[test]
    fn civil_round_trip() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(civil_from_days(days_from_civil(2024, 2, 29)), (2024, 2, 29));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        for day in (-1000..100_000).step_by(37) {
            let (y, m, d) = civil_from_days(day);
            assert_eq!(days_from_civil(y, m, d), day);
        }
    }

    #[test]
    fn days_start_at_utc_midnight() {
        let (s, e) = bounds(Period::Day, 0, at(2026, 11, 25, 23));
        assert_eq!((s, e), (at(2026, 11, 25, 0), at(2026, 11, 26, 0)));
    }

    #[test]
    fn weeks_start_on_sunday_plus_offset() {
        // 2026-11-25 is a Wednesday.
        let (s, e) = bounds(Period::Week, 0, at(2026, 11, 25, 12));
        assert_eq!((date(s), date(e)), ((2026, 11, 22), (2026, 11, 29)));
        let (s, _) = bounds(Period::Week, 1, at(2026, 11, 25, 12));
        assert_eq!(date(s), (2026, 11, 23));
        let (s, _) = bounds(Period::Week, 4, at(2026, 11, 25, 12));
        assert_eq!(
            date(s),
            (2026, 11, 19),
            "Thursday offset: the week began last Thursday"
        );
    }

    #[test]
    fn months_handle_offsets_year_ends_and_leap_years() {
        let (s, e) = bounds(Period::Month, 0, at(2024, 2, 29, 5));
        assert_eq!((date(s), date(e)), ((2024, 2, 1), (2024, 3, 1)));
        let (s, e) = bounds(Period::Month, 14, at(2026, 1, 3, 0));
        assert_eq!((date(s), date(e)), ((2025, 12, 15), (2026, 1, 15)));
        let (s, e) = bounds(Period::Month, 0, at(2026, 12, 31, 23));
        assert_eq!((date(s), date(e)), ((2026, 12, 1), (2027, 1, 1)));
    }

    #[test]
    fn every_instant_is_inside_its_period() {
        for period in [Period::Day, Period::Week, Period::Month] {
            for now in (0..400).map(|i| at(2026, 1, 1, 0) + i * 7_919_000_017 % (800 * DAY_MS)) {
                let (s, e) = bounds(period, period.max_offset() / 2, now);
                assert!(s <= now && now < e, "{period:?} {now}");
            }
        }
    }
}
