//! R1 time: every calendar rule runs on Beijing time (UTC+08:00, no daylight saving), with
//! one-second instants and half-open intervals. Nothing here reads the system clock.

use chrono::{DateTime, Datelike, Duration, FixedOffset, NaiveDate, NaiveTime, TimeZone, Timelike};

/// An instant, kept with its offset so that logs and bills read in Beijing time.
pub type Instant = DateTime<FixedOffset>;

const BEIJING_SECONDS_EAST: i32 = 8 * 3600;

/// An instant whose text is exactly what chrono writes for it — `YYYY-MM-DDTHH:MM:SS±HH:MM`
/// with a valid date and time, seconds below 60 and an offset other than zero (which chrono
/// writes `Z`) — read as chrono reads it, without its general parser. `None` for any other
/// text: chrono reads that (and writes it its own way).
pub fn instant_as_written(text: &str) -> Option<Instant> {
    let b = text.as_bytes();
    if b.len() != 25 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' || b[22] != b':' {
        return None;
    }
    let number = |from: usize, to: usize| b[from..to].iter().try_fold(0u32, |n, d| d.is_ascii_digit().then(|| n * 10 + u32::from(d - b'0')));
    let (year, month, day) = (number(0, 4)?, number(5, 7)?, number(8, 10)?);
    let (hour, minute, second) = (number(11, 13)?, number(14, 16)?, number(17, 19)?);
    let (offset_hours, offset_minutes) = (number(20, 22)?, number(23, 25)?);
    if second >= 60 || offset_hours > 23 || offset_minutes > 59 || offset_hours + offset_minutes == 0 {
        return None;
    }
    let offset = (offset_hours * 3600 + offset_minutes * 60) as i32;
    let offset = match b[19] {
        b'+' => FixedOffset::east_opt(offset)?,
        b'-' => FixedOffset::west_opt(offset)?,
        _ => return None,
    };
    let local = NaiveDate::from_ymd_opt(year as i32, month, day)?.and_hms_opt(hour, minute, second)?;
    offset.from_local_datetime(&local).single()
}

/// An instant read as chrono's `FromStr` (and so its serde) reads RFC 3339 text, the form
/// chrono writes read without its general parser ([`instant_as_written`]).
pub fn parse_instant(text: &str) -> Result<Instant, chrono::ParseError> {
    match instant_as_written(text) {
        Some(instant) => Ok(instant),
        None => text.parse(),
    }
}

/// `#[serde(deserialize_with = "crate::time::deserialize_instant")]`: an instant read exactly
/// as chrono's `Deserialize` reads it (the same visitor, the same errors), through
/// [`parse_instant`]. For the instants of flow-bill lines, which a log has by the million.
pub fn deserialize_instant<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Instant, D::Error> {
    struct Visitor;
    impl serde::de::Visitor<'_> for Visitor {
        type Value = Instant;

        fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
            // chrono's words, so that a wrong type is refused as it refuses it.
            formatter.write_str("an RFC 3339 formatted date and time string")
        }

        fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<Instant, E> {
            parse_instant(value).map_err(E::custom)
        }
    }
    deserializer.deserialize_str(Visitor)
}

pub fn beijing() -> FixedOffset {
    FixedOffset::east_opt(BEIJING_SECONDS_EAST).expect("+08:00 is a valid offset")
}

/// The same instant shown on Beijing's clock.
pub fn to_beijing(t: Instant) -> Instant {
    t.with_timezone(&beijing())
}

/// `to_beijing(t).to_rfc3339()` as a `Display`: the instant on Beijing's clock as chrono
/// writes RFC 3339 (fractions of a second only when there are some), written where it goes
/// without a String of its own. For the two instants of every bill line a document shows.
#[derive(Clone, Copy, Debug)]
pub struct BeijingText(pub Instant);

impl std::fmt::Display for BeijingText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let local = to_beijing(self.0).naive_local();
        let (year, time) = (local.year(), local.time());
        let (mut second, mut nano) = (time.second(), time.nanosecond());
        // A leap second is shown as :60, as chrono shows it.
        if nano >= 1_000_000_000 {
            second += 1;
            nano -= 1_000_000_000;
        }
        let mut text = *b"0000-00-00T00:00:00";
        let mut two = |at: usize, n: u32| {
            text[at] = b'0' + (n / 10 % 10) as u8;
            text[at + 1] = b'0' + (n % 10) as u8;
        };
        two(5, local.month());
        two(8, local.day());
        two(11, time.hour());
        two(14, time.minute());
        two(17, second);
        if (0..=9999).contains(&year) {
            two(0, year as u32 / 100);
            two(2, year as u32 % 100);
            f.write_str(std::str::from_utf8(&text).expect("ASCII digits"))?;
        } else {
            write!(f, "{year:+05}")?;
            f.write_str(std::str::from_utf8(&text[4..]).expect("ASCII digits"))?;
        }
        if nano != 0 {
            if nano % 1_000_000 == 0 {
                write!(f, ".{:03}", nano / 1_000_000)?;
            } else if nano % 1_000 == 0 {
                write!(f, ".{:06}", nano / 1_000)?;
            } else {
                write!(f, ".{nano:09}")?;
            }
        }
        f.write_str("+08:00")
    }
}

/// The Beijing calendar date of an instant (R1).
pub fn beijing_date(t: Instant) -> NaiveDate {
    to_beijing(t).date_naive()
}

/// `date` at `h:m:s` Beijing time.
pub fn beijing_at(date: NaiveDate, h: u32, m: u32, s: u32) -> Instant {
    let time = NaiveTime::from_hms_opt(h, m, s).expect("valid wall-clock time");
    beijing().from_local_datetime(&date.and_time(time)).single().expect("a fixed offset has exactly one local mapping")
}

/// 23:59:59 Beijing on `date`: the last second of a subscription period (R3).
pub fn end_of_day(date: NaiveDate) -> Instant {
    beijing_at(date, 23, 59, 59)
}

pub fn days_in_month(year: i32, month: u32) -> u32 {
    let first = NaiveDate::from_ymd_opt(year, month, 1).expect("valid month");
    let next = if month == 12 { NaiveDate::from_ymd_opt(year + 1, 1, 1) } else { NaiveDate::from_ymd_opt(year, month + 1, 1) }.expect("valid month");
    (next - first).num_days() as u32
}

/// `date` plus `months` calendar months, the day clamped to the target month's last day
/// (01-31 + 1 month → 02-28, or 02-29 in a leap year) (R3).
pub fn add_months_clamped(date: NaiveDate, months: u32) -> NaiveDate {
    let index = date.year() * 12 + date.month0() as i32 + months as i32;
    let (year, month) = (index.div_euclid(12), index.rem_euclid(12) as u32 + 1);
    let day = date.day().min(days_in_month(year, month));
    NaiveDate::from_ymd_opt(year, month, day).expect("clamped day exists")
}

/// R3: a period of `months` that starts (or, for a renewal, is anchored) at `from` ends at
/// 23:59:59 Beijing on `from`'s date plus `months`, clamped to the month's end.
/// Seed §1.2: 2023-03-08 15:50:04 + 1 month → 2023-04-08 23:59:59.
pub fn period_end(from: Instant, months: u32) -> Instant {
    end_of_day(add_months_clamped(beijing_date(from), months))
}

/// R3 unified expiry date: the first date on or after `end`'s date whose day of month is `day`
/// (1..=28), at 23:59:59.
pub fn align_to_day(end: Instant, day: u32) -> Instant {
    let date = beijing_date(end);
    let aligned = if date.day() <= day { date.with_day(day) } else { add_months_clamped(date.with_day(1).expect("day 1 exists"), 1).with_day(day) };
    end_of_day(aligned.expect("days 1..=28 exist in every month"))
}

/// The start of the Beijing hour containing `t` (Beijing's offset is whole hours, so this is
/// also the UTC hour).
pub fn hour_floor(t: Instant) -> Instant {
    let t = to_beijing(t);
    t - Duration::seconds(i64::from(t.minute() * 60 + t.second())) - Duration::nanoseconds(i64::from(t.nanosecond()))
}

/// The first hour boundary strictly after `t`: when the cycle containing `t` is settled (R4).
pub fn next_hour(t: Instant) -> Instant {
    hour_floor(t) + Duration::hours(1)
}

/// R4: cut `[start, end)` at every Beijing hour boundary into settlement cycles.
/// Seed §1.3: 9:59:30 → 10:45:46 gives 30 s in the 9:00 cycle and 2746 s in the 10:00 cycle.
pub fn split_into_cycles(start: Instant, end: Instant) -> Vec<(Instant, Instant)> {
    let mut pieces = Vec::new();
    let mut from = start;
    while from < end {
        let to = next_hour(from).min(end);
        pieces.push((from, to));
        from = to;
    }
    pieces
}

/// 03:00 Beijing on `date`: when auto-renewal attempts run (R8).
pub fn at_three_am(date: NaiveDate) -> Instant {
    beijing_at(date, 3, 0, 0)
}

/// The first instant after a subscription's last second: `end` is inclusive ([start, E] at
/// one-second precision), so the pool expires when the clock reaches E + 1 s.
pub fn after(end: Instant) -> Instant {
    end + Duration::seconds(1)
}

pub fn days(n: u32) -> Duration {
    Duration::days(i64::from(n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    use poolbill_testkit::t;
    fn d(y: i32, m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, day).unwrap()
    }

    #[test]
    fn period_end_table_r3() {
        // (start, months, expected end) — first rows from seed §1.2.
        let table = [
            ("2023-03-08T15:50:04+08:00", 1, "2023-04-08T23:59:59+08:00"),
            ("2023-04-08T23:59:59+08:00", 1, "2023-05-08T23:59:59+08:00"), // renewal anchored on E
            ("2023-03-20T10:30:00+08:00", 1, "2023-04-20T23:59:59+08:00"), // seed ch.3 scenario two
            ("2023-04-01T10:00:00+08:00", 2, "2023-06-01T23:59:59+08:00"), // seed §2.7, two months
            ("2023-01-31T10:00:00+08:00", 1, "2023-02-28T23:59:59+08:00"), // clamped
            ("2024-01-31T10:00:00+08:00", 1, "2024-02-29T23:59:59+08:00"), // leap year
            ("2023-03-31T12:00:00+08:00", 1, "2023-04-30T23:59:59+08:00"),
            ("2023-12-15T08:00:00+08:00", 1, "2024-01-15T23:59:59+08:00"),  // year wrap
            ("2023-04-08T10:00:00+08:00", 12, "2024-04-08T23:59:59+08:00"), // a year is 12 months
            // 20:00 UTC on 03-07 is already 03-08 in Beijing (R1).
            ("2023-03-07T20:00:00Z", 1, "2023-04-08T23:59:59+08:00"),
        ];
        for (start, months, end) in table {
            assert_eq!(period_end(t(start), months), t(end), "{start} + {months} months");
        }
    }

    #[test]
    fn add_months_clamps_to_month_end() {
        assert_eq!(add_months_clamped(d(2023, 1, 31), 1), d(2023, 2, 28));
        assert_eq!(add_months_clamped(d(2024, 1, 31), 1), d(2024, 2, 29));
        assert_eq!(add_months_clamped(d(2023, 2, 28), 1), d(2023, 3, 28)); // no drift back to 31
        assert_eq!(add_months_clamped(d(2023, 11, 30), 3), d(2024, 2, 29));
    }

    #[test]
    fn days_in_month_table() {
        for (y, m, n) in [(2023, 2, 28), (2024, 2, 29), (2023, 4, 30), (2023, 5, 31), (1900, 2, 28), (2000, 2, 29)] {
            assert_eq!(days_in_month(y, m), n, "{y}-{m}");
        }
    }

    #[test]
    fn align_to_day_r3() {
        assert_eq!(align_to_day(t("2023-05-08T23:59:59+08:00"), 15), t("2023-05-15T23:59:59+08:00"));
        assert_eq!(align_to_day(t("2023-05-08T23:59:59+08:00"), 8), t("2023-05-08T23:59:59+08:00"));
        assert_eq!(align_to_day(t("2023-05-20T23:59:59+08:00"), 1), t("2023-06-01T23:59:59+08:00"));
        assert_eq!(align_to_day(t("2023-12-20T23:59:59+08:00"), 5), t("2024-01-05T23:59:59+08:00"));
    }

    #[test]
    fn split_into_cycles_r4() {
        // Seed §1.3: 9:59:30 → 10:45:46: 30 s and 2746 s.
        let pieces = split_into_cycles(t("2023-04-18T09:59:30+08:00"), t("2023-04-18T10:45:46+08:00"));
        let secs: Vec<i64> = pieces.iter().map(|(a, b)| (*b - *a).num_seconds()).collect();
        assert_eq!(secs, vec![30, 2746]);
        assert_eq!(pieces[1].0, t("2023-04-18T10:00:00+08:00"));
        // Seed §1.3: 8:45:30 → 8:55:30 is 600 s in one cycle.
        let pieces = split_into_cycles(t("2023-04-18T08:45:30+08:00"), t("2023-04-18T08:55:30+08:00"));
        assert_eq!(pieces.len(), 1);
        assert_eq!((pieces[0].1 - pieces[0].0).num_seconds(), 600);
        // Seed §6: 16:47:08 → 18:09:06: 772 s, 3600 s, 546 s.
        let pieces = split_into_cycles(t("2023-07-10T16:47:08+08:00"), t("2023-07-10T18:09:06+08:00"));
        let secs: Vec<i64> = pieces.iter().map(|(a, b)| (*b - *a).num_seconds()).collect();
        assert_eq!(secs, vec![772, 3600, 546]);
        assert!(split_into_cycles(t("2023-07-10T16:00:00+08:00"), t("2023-07-10T16:00:00+08:00")).is_empty());
    }

    #[test]
    fn hour_boundaries_are_beijing_hours() {
        assert_eq!(hour_floor(t("2023-04-18T09:59:30+08:00")), t("2023-04-18T09:00:00+08:00"));
        assert_eq!(next_hour(t("2023-04-18T09:00:00+08:00")), t("2023-04-18T10:00:00+08:00"));
        assert_eq!(next_hour(t("2023-04-18T01:30:00Z")), t("2023-04-18T10:00:00+08:00"));
    }

    #[test]
    fn expiry_is_one_second_after_the_last() {
        assert_eq!(after(t("2023-04-08T23:59:59+08:00")), t("2023-04-09T00:00:00+08:00"));
        assert_eq!(at_three_am(d(2023, 4, 1)), t("2023-04-01T03:00:00+08:00"));
    }

    #[test]
    fn instants_as_written_read_as_chrono_reads_them() {
        for (i, text) in [
            "2023-04-01T00:00:39+08:00",
            "2023-12-31T23:59:59-05:30",
            "2024-02-29T12:00:00+01:00",
            "0001-01-01T00:00:00+23:59",
            "9999-12-31T23:59:59-23:59",
            "2023-02-29T00:00:00+08:00",
            "2023-04-31T00:00:00+08:00",
            "2023-13-01T00:00:00+08:00",
            "2023-00-01T00:00:00+08:00",
            "2023-04-01T24:00:00+08:00",
            "2023-04-01T23:60:00+08:00",
            "2023-04-01T23:59:60+08:00",
            "2023-04-01T00:00:39+00:00",
            "2023-04-01T00:00:39-00:00",
            "2023-04-01T00:00:39+24:00",
            "2023-04-01T00:00:39+08:60",
            "2023-04-01T00:00:39Z",
            "2023-04-01t00:00:39+08:00",
            "2023-04-01 00:00:39+08:00",
            "2023-04-01T00:00:39.5+08:00",
            "2023-04-01T00:00:39+0800",
            "2023-04-01T00:00:3a+08:00",
            "+2023-04-01T00:00:39+08:00",
        ]
        .iter()
        .enumerate()
        {
            // `None` is always right (chrono reads it then); the first five are read here.
            let chrono: Option<Instant> = text.parse().ok();
            match instant_as_written(text) {
                Some(at) => {
                    assert_eq!(Some(at), chrono, "{text}");
                    assert_eq!(serde_json::to_string(&at).unwrap(), format!("\"{text}\""), "{text}");
                }
                None => assert!(i >= 5, "{text}"),
            }
            // Read through serde, as chrono reads it: the same instant or the same error.
            let json = serde_json::Value::String(text.to_string());
            let ours = deserialize_instant(&json).map_err(|e| e.to_string());
            let theirs = Instant::deserialize(&json).map_err(|e| e.to_string());
            assert_eq!(ours, theirs, "{text}");
        }
        for other in [serde_json::json!(1), serde_json::json!(null), serde_json::json!(["2023-04-01T00:00:39+08:00"])] {
            let ours = deserialize_instant(&other).map_err(|e| e.to_string());
            let theirs = Instant::deserialize(&other).map_err(|e| e.to_string());
            assert_eq!(ours, theirs, "{other}");
        }
    }

    /// A fixed pseudo-random sequence: each call a number below its argument.
    fn xorshift(mut state: u64) -> impl FnMut(u64) -> u64 {
        move |below| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % below
        }
    }

    #[test]
    fn instants_in_the_written_form_read_as_chrono_reads_them_across_the_calendar() {
        // Fields a little past their ranges, from a fixed pseudo-random sequence.
        let mut next = xorshift(0x2545_f491_4f6c_dd1du64);
        let mut read = 0;
        for _ in 0..200_000 {
            let sign = if next(2) == 0 { '+' } else { '-' };
            let text = format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}{sign}{:02}:{:02}",
                next(10_000),
                next(14),
                next(33),
                next(26),
                next(62),
                next(62),
                next(26),
                next(62)
            );
            let chrono: Option<Instant> = text.parse().ok();
            match instant_as_written(&text) {
                Some(at) => {
                    read += 1;
                    assert_eq!(Some(at), chrono, "{text}");
                    assert_eq!(serde_json::to_string(&at).unwrap(), format!("\"{text}\""), "{text}");
                }
                // Left to chrono: what it cannot read, writes otherwise, or a leap second.
                None => {
                    assert!(chrono.is_none_or(|at| serde_json::to_string(&at).unwrap() != format!("\"{text}\"")) || &text[17..19] == "60", "{text}")
                }
            }
        }
        assert!(read > 50_000, "{read}");
    }

    #[test]
    fn beijing_text_is_chronos_rfc3339_on_beijing_clock() {
        let mut next = xorshift(0x9e37_79b9_7f4a_7c15u64);
        let mut instants = vec![
            t("2023-04-01T00:00:39+08:00"),
            t("2023-04-01T00:00:39Z"),
            t("0999-12-31T23:59:59-05:00"),
            t("0000-01-01T07:00:00+00:00"),
            t("9999-12-31T16:00:00Z"),
        ];
        for _ in 0..20_000 {
            let seconds = next(700_000_000_000) as i64 - 350_000_000_000;
            let nanos = match next(4) {
                0 => 0,
                1 => next(1000) as u32 * 1_000_000,
                2 => next(1_000_000) as u32 * 1000,
                _ => next(1_000_000_000) as u32,
            };
            let offset = FixedOffset::east_opt(next(2 * 86_399) as i32 - 86_399).unwrap();
            instants.push(DateTime::from_timestamp(seconds, nanos).unwrap().with_timezone(&offset));
        }
        // A leap second.
        let leap = NaiveDate::from_ymd_opt(2016, 12, 31).unwrap().and_hms_nano_opt(15, 59, 59, 1_500_000_000).unwrap();
        instants.push(DateTime::from_naive_utc_and_offset(leap, FixedOffset::east_opt(0).unwrap()));
        for at in instants {
            assert_eq!(BeijingText(at).to_string(), to_beijing(at).to_rfc3339(), "{at:?}");
        }
    }
}
