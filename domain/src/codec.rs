//! A compact binary encoding of event payloads, for stored events: decoding JSON payloads bounds
//! replay speed and store size. The portable exported log stays JSON lines (readable, diffable,
//! checksummed per line). Pure: bytes in, bytes out.
//!
//! A payload is one byte of variant tag, then the variant's fields in declaration order, and
//! nothing after them. Nested values are written the same way, field by field:
//!
//! - unsigned integers: LEB128 varints, in their shortest form; `i64`: zigzag, then a varint;
//! - `bool`: one byte, 0 or 1; `Option`: one byte 0 (none) or 1, then the value;
//! - `String`: a varint byte length, then the UTF-8 bytes;
//! - enums: a one-byte tag (tables below), then the variant's fields;
//! - `Policy`: a varint count, then each level's name, grace and retention days, names ascending;
//! - `Decimal`: one byte of sign (bit 7) and scale (0..=28), then the 96-bit unsigned mantissa
//!   as a varint: the scale is kept (`==` ignores it, but our documents print `1.00`, not `1`),
//!   and so is the sign of a zero;
//! - `Instant`: zigzag seconds since the epoch, a varint of nanoseconds, zigzag offset seconds
//!   east of UTC (`==` ignores the offset, but a document prints it).
//!
//! Decoding is strict and never panics: a wrong tag, a truncated or longer payload, a byte other
//! than 0 or 1 where a flag is, an over-long varint, invalid UTF-8 or an out-of-range value is
//! an error. So every payload it accepts is one `encode_binary` writes.
//!
//! Tags are stable: never renumber one; a new variant gets the next free number.
//!
//! | tag | event | tag | event | tag | event |
//! | --- | --- | --- | --- | --- | --- |
//! | 0 | `price_set` | 11 | `pool_expired` | 22 | `package_expired` |
//! | 1 | `policy_set` | 12 | `pool_frozen` | 23 | `arrears_started` |
//! | 2 | `account_opened` | 13 | `pool_released` | 24 | `arrears_frozen` |
//! | 3 | `topped_up` | 14 | `pool_unsubscribed` | 25 | `arrears_released` |
//! | 4 | `pool_purchased` | 15 | `auto_renew_set` | 26 | `arrears_ended` |
//! | 5 | `pool_ready` | 16 | `auto_renew_attempted` | 27 | `charged` |
//! | 6 | `pool_scaled` | 17 | `job_started` | 28 | `cycle_settled` |
//! | 7 | `pool_renewed` | 18 | `job_stopped` | 29 | `command_received` |
//! | 8 | `pool_converted` | 19 | `job_deleted` | 30 | `command_rejected` |
//! | 9 | `pool_deleted` | 20 | `package_bought` | | |
//! | 10 | `expiry_warned` | 21 | `package_alerted` | | |
//!
//! | enum | tags |
//! | --- | --- |
//! | `Command` | 0 set_price, 1 set_policy, 2 open_account, 3 top_up, 4 purchase, 5 ready, 6 delete, 7 renew, 8 set_auto_renew, 9 convert, 10 scale, 11 unsubscribe, 12 buy_package, 13 start_job, 14 stop_job, 15 delete_job |
//! | `Basis` | 0 usage, 1 package, 2 package_price, 3 refund, 4 term, 5 change |
//! | `Term` | 0 months, 1 years |
//! | `BillingMode` | 0 on_demand, 1 monthly, 2 yearly, 3 package |
//! | `Item` | 0 compute, 1 storage, 2 purchase, 3 renewal, 4 upgrade, 5 downgrade, 6 conversion, 7 refund, 8 package |
//! | `PoolType` | 0 dedicated, 1 public |
//! | `JobKind` | 0 training, 1 notebook, 2 service, 3 workflow, 4 auto_learning |
//! | `Rule` | 0 R1 … 16 R17 (tag = number − 1) |
//!
//! Only the latest schema version of each type ([`latest_version`]) has a layout. Any change to a
//! type's fields changes its layout, so it bumps the type's version, even a field JSON would read
//! by default. Then the old layout stays here as a decoder for that version, and what it reads is
//! upcast to today's shape, as JSON payloads are: logs are never rewritten. `decode_binary`
//! then chooses the decoder by tag and `schema_version`.

use crate::command::{Command, JobKind};
use crate::event::{latest_version, DecodeError, Event};
use crate::model::{Alignment, Basis, BillLine, BillingMode, Item, Level, Period, Policy, PoolType, Price, Rule, Term, UnusedPart};
use crate::money::Amounts;
use crate::time::Instant;
use chrono::{DateTime, FixedOffset};
use rust_decimal::Decimal;
use std::collections::BTreeMap;

/// Writes a variant: its tag, then each field in declaration order.
macro_rules! put {
    ($out:ident, $tag:literal; $($field:expr),*) => {{
        $out.push($tag);
        $($field.write($out);)*
    }};
}

/// Each event type's name, at its tag: the envelope's type is checked before any field is read.
const EVENT_TYPES: [&str; 31] = [
    "price_set",
    "policy_set",
    "account_opened",
    "topped_up",
    "pool_purchased",
    "pool_ready",
    "pool_scaled",
    "pool_renewed",
    "pool_converted",
    "pool_deleted",
    "expiry_warned",
    "pool_expired",
    "pool_frozen",
    "pool_released",
    "pool_unsubscribed",
    "auto_renew_set",
    "auto_renew_attempted",
    "job_started",
    "job_stopped",
    "job_deleted",
    "package_bought",
    "package_alerted",
    "package_expired",
    "arrears_started",
    "arrears_frozen",
    "arrears_released",
    "arrears_ended",
    "charged",
    "cycle_settled",
    "command_received",
    "command_rejected",
];

/// A `Decimal`'s mantissa is at most 2^96 − 1.
const MAX_MANTISSA_BITS: u32 = 96;

impl Event {
    /// Appends the compact binary payload of this event (the layout of its type's latest schema
    /// version) to `out`.
    pub fn encode_binary(&self, out: &mut Vec<u8>) {
        match self {
            Event::PriceSet { spec, price } => put!(out, 0; spec, price),
            Event::PolicySet { policy } => put!(out, 1; policy),
            Event::AccountOpened { account, balance, level, discount } => put!(out, 2; account, balance, level, discount),
            Event::ToppedUp { account, amount, balance_after } => put!(out, 3; account, amount, balance_after),
            Event::PoolPurchased { account, pool, spec, nodes, mode, pool_type, region, period } => {
                put!(out, 4; account, pool, spec, nodes, mode, pool_type, region, period)
            }
            Event::PoolReady { account, pool, hourly } => put!(out, 5; account, pool, hourly),
            Event::PoolScaled { account, pool, spec, nodes, hourly } => put!(out, 6; account, pool, spec, nodes, hourly),
            Event::PoolRenewed { account, pool, months, end, auto } => put!(out, 7; account, pool, months, end, auto),
            Event::PoolConverted { account, pool, mode, months, period } => put!(out, 8; account, pool, mode, months, period),
            Event::PoolDeleted { account, pool } => put!(out, 9; account, pool),
            Event::ExpiryWarned { account, pool, expires_at } => put!(out, 10; account, pool, expires_at),
            Event::PoolExpired { account, pool } => put!(out, 11; account, pool),
            Event::PoolFrozen { account, pool } => put!(out, 12; account, pool),
            Event::PoolReleased { account, pool } => put!(out, 13; account, pool),
            Event::PoolUnsubscribed { account, pool } => put!(out, 14; account, pool),
            Event::AutoRenewSet { account, pool, enabled, term, days_before, count } => {
                put!(out, 15; account, pool, enabled, term, days_before, count)
            }
            Event::AutoRenewAttempted { account, pool, succeeded, reason } => put!(out, 16; account, pool, succeeded, reason),
            Event::JobStarted { account, job, kind, spec, nodes, pool, model, hourly, disk_gb, disk_hourly, region, billed_as } => {
                put!(out, 17; account, job, kind, spec, nodes, pool, model, hourly, disk_gb, disk_hourly, region, billed_as)
            }
            Event::JobStopped { account, job } => put!(out, 18; account, job),
            Event::JobDeleted { account, job } => put!(out, 19; account, job),
            Event::PackageBought { account, package, spec, region, quantity, hours, expires_at, price, alert_below } => {
                put!(out, 20; account, package, spec, region, quantity, hours, expires_at, price, alert_below)
            }
            Event::PackageAlerted { account, package, remaining_node_hours } => put!(out, 21; account, package, remaining_node_hours),
            Event::PackageExpired { account, package } => put!(out, 22; account, package),
            Event::ArrearsStarted { account, balance } => put!(out, 23; account, balance),
            Event::ArrearsFrozen { account } => put!(out, 24; account),
            Event::ArrearsReleased { account } => put!(out, 25; account),
            Event::ArrearsEnded { account } => put!(out, 26; account),
            Event::Charged { line } => put!(out, 27; line),
            Event::CycleSettled { account, start, end } => put!(out, 28; account, start, end),
            Event::CommandReceived { command, index, requested_at } => put!(out, 29; command, index, requested_at),
            Event::CommandRejected { command, rule, reason, index } => put!(out, 30; command, rule, reason, index),
        }
    }

    /// Reads a binary payload written by `encode_binary` for `event_type` at `schema_version`.
    pub fn decode_binary(event_type: &str, schema_version: u32, bytes: &[u8]) -> Result<Event, DecodeError> {
        let fail = |detail: String| DecodeError { event_type: event_type.to_string(), schema_version, detail };
        let latest = latest_version(event_type);
        if schema_version != latest {
            return Err(fail(format!("there is no binary layout for version {schema_version} of {event_type} (only for its latest, v{latest})")));
        }
        let mut r = Reader { bytes, at: 0 };
        let tag = r.byte().map_err(fail)?;
        match EVENT_TYPES.get(usize::from(tag)) {
            Some(name) if *name == event_type => {}
            Some(name) => return Err(fail(format!("the payload's tag {tag} is {name}, not {event_type}"))),
            None => return Err(fail(format!("unknown event tag {tag}"))),
        }
        let event = read_event(tag, &mut r).map_err(fail)?;
        if r.at != bytes.len() {
            return Err(fail(format!("{} trailing bytes after the last field (at byte {})", bytes.len() - r.at, r.at)));
        }
        Ok(event)
    }
}

/// The fields of the event at `tag`, in declaration order (struct fields are evaluated in the
/// order written).
fn read_event(tag: u8, r: &mut Reader<'_>) -> Res<Event> {
    Ok(match tag {
        0 => Event::PriceSet { spec: r.read()?, price: r.read()? },
        1 => Event::PolicySet { policy: r.read()? },
        2 => Event::AccountOpened { account: r.read()?, balance: r.read()?, level: r.read()?, discount: r.read()? },
        3 => Event::ToppedUp { account: r.read()?, amount: r.read()?, balance_after: r.read()? },
        4 => Event::PoolPurchased {
            account: r.read()?,
            pool: r.read()?,
            spec: r.read()?,
            nodes: r.read()?,
            mode: r.read()?,
            pool_type: r.read()?,
            region: r.read()?,
            period: r.read()?,
        },
        5 => Event::PoolReady { account: r.read()?, pool: r.read()?, hourly: r.read()? },
        6 => Event::PoolScaled { account: r.read()?, pool: r.read()?, spec: r.read()?, nodes: r.read()?, hourly: r.read()? },
        7 => Event::PoolRenewed { account: r.read()?, pool: r.read()?, months: r.read()?, end: r.read()?, auto: r.read()? },
        8 => Event::PoolConverted { account: r.read()?, pool: r.read()?, mode: r.read()?, months: r.read()?, period: r.read()? },
        9 => Event::PoolDeleted { account: r.read()?, pool: r.read()? },
        10 => Event::ExpiryWarned { account: r.read()?, pool: r.read()?, expires_at: r.read()? },
        11 => Event::PoolExpired { account: r.read()?, pool: r.read()? },
        12 => Event::PoolFrozen { account: r.read()?, pool: r.read()? },
        13 => Event::PoolReleased { account: r.read()?, pool: r.read()? },
        14 => Event::PoolUnsubscribed { account: r.read()?, pool: r.read()? },
        15 => {
            Event::AutoRenewSet { account: r.read()?, pool: r.read()?, enabled: r.read()?, term: r.read()?, days_before: r.read()?, count: r.read()? }
        }
        16 => Event::AutoRenewAttempted { account: r.read()?, pool: r.read()?, succeeded: r.read()?, reason: r.read()? },
        17 => Event::JobStarted {
            account: r.read()?,
            job: r.read()?,
            kind: r.read()?,
            spec: r.read()?,
            nodes: r.read()?,
            pool: r.read()?,
            model: r.read()?,
            hourly: r.read()?,
            disk_gb: r.read()?,
            disk_hourly: r.read()?,
            region: r.read()?,
            billed_as: r.read()?,
        },
        18 => Event::JobStopped { account: r.read()?, job: r.read()? },
        19 => Event::JobDeleted { account: r.read()?, job: r.read()? },
        20 => Event::PackageBought {
            account: r.read()?,
            package: r.read()?,
            spec: r.read()?,
            region: r.read()?,
            quantity: r.read()?,
            hours: r.read()?,
            expires_at: r.read()?,
            price: r.read()?,
            alert_below: r.read()?,
        },
        21 => Event::PackageAlerted { account: r.read()?, package: r.read()?, remaining_node_hours: r.read()? },
        22 => Event::PackageExpired { account: r.read()?, package: r.read()? },
        23 => Event::ArrearsStarted { account: r.read()?, balance: r.read()? },
        24 => Event::ArrearsFrozen { account: r.read()? },
        25 => Event::ArrearsReleased { account: r.read()? },
        26 => Event::ArrearsEnded { account: r.read()? },
        27 => Event::Charged { line: r.read()? },
        28 => Event::CycleSettled { account: r.read()?, start: r.read()?, end: r.read()? },
        29 => Event::CommandReceived { command: r.read()?, index: r.read()?, requested_at: r.read()? },
        30 => Event::CommandRejected { command: r.read()?, rule: r.read()?, reason: r.read()?, index: r.read()? },
        _ => return Err(format!("unknown event tag {tag}")),
    })
}

/// What is wrong with a payload, saying where.
type Res<T> = Result<T, String>;

/// A value with a binary layout.
trait Binary: Sized {
    fn write(&self, out: &mut Vec<u8>);
    fn read(r: &mut Reader<'_>) -> Res<Self>;
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn read<T: Binary>(&mut self) -> Res<T> {
        T::read(self)
    }

    fn truncated(&self) -> String {
        format!("truncated: the payload ends at byte {} inside a field", self.bytes.len())
    }

    fn byte(&mut self) -> Res<u8> {
        let b = *self.bytes.get(self.at).ok_or_else(|| self.truncated())?;
        self.at += 1;
        Ok(b)
    }

    /// A one-byte enum tag that no variant of `what` has.
    fn unknown(&self, what: &str, tag: u8) -> String {
        format!("unknown {what} tag {tag} at byte {}", self.at - 1)
    }

    /// An unsigned varint of at most `bits` bits (32, 64 or 96), in its shortest form: each
    /// value has one encoding, so what decodes is what `encode_binary` wrote.
    fn varint(&mut self, bits: u32) -> Res<u128> {
        let start = self.at;
        let mut value = 0u128;
        let mut shift = 0;
        loop {
            let byte = self.byte()?;
            value |= u128::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                if byte == 0 && shift > 0 {
                    return Err(format!("over-long varint at byte {start}"));
                }
                if value >> bits != 0 {
                    return Err(format!("varint at byte {start} exceeds {bits} bits"));
                }
                return Ok(value);
            }
            shift += 7;
            if shift >= bits {
                return Err(format!("varint at byte {start} exceeds {bits} bits"));
            }
        }
    }

    fn zigzag(&mut self) -> Res<i64> {
        let n = self.varint(64)? as u64;
        Ok((n >> 1) as i64 ^ -((n & 1) as i64))
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u128) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_zigzag(out: &mut Vec<u8>, v: i64) {
    put_varint(out, u128::from(((v << 1) ^ (v >> 63)) as u64));
}

impl Binary for u32 {
    fn write(&self, out: &mut Vec<u8>) {
        put_varint(out, u128::from(*self));
    }
    fn read(r: &mut Reader<'_>) -> Res<u32> {
        Ok(r.varint(32)? as u32)
    }
}

impl Binary for u64 {
    fn write(&self, out: &mut Vec<u8>) {
        put_varint(out, u128::from(*self));
    }
    fn read(r: &mut Reader<'_>) -> Res<u64> {
        Ok(r.varint(64)? as u64)
    }
}

impl Binary for i64 {
    fn write(&self, out: &mut Vec<u8>) {
        put_zigzag(out, *self);
    }
    fn read(r: &mut Reader<'_>) -> Res<i64> {
        r.zigzag()
    }
}

impl Binary for bool {
    fn write(&self, out: &mut Vec<u8>) {
        out.push(u8::from(*self));
    }
    fn read(r: &mut Reader<'_>) -> Res<bool> {
        match r.byte()? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(format!("flag byte {b} at byte {} is neither 0 nor 1", r.at - 1)),
        }
    }
}

impl<T: Binary> Binary for Option<T> {
    fn write(&self, out: &mut Vec<u8>) {
        match self {
            None => out.push(0),
            Some(value) => {
                out.push(1);
                value.write(out);
            }
        }
    }
    fn read(r: &mut Reader<'_>) -> Res<Option<T>> {
        match r.byte()? {
            0 => Ok(None),
            1 => Ok(Some(T::read(r)?)),
            b => Err(format!("option byte {b} at byte {} is neither 0 nor 1", r.at - 1)),
        }
    }
}

impl Binary for String {
    fn write(&self, out: &mut Vec<u8>) {
        put_varint(out, self.len() as u128);
        out.extend_from_slice(self.as_bytes());
    }
    fn read(r: &mut Reader<'_>) -> Res<String> {
        let start = r.at;
        let len = r.varint(64)?;
        // Checked before anything is allocated: a corrupt length asks for no memory.
        let end = usize::try_from(len).ok().and_then(|len| r.at.checked_add(len)).filter(|end| *end <= r.bytes.len()).ok_or_else(|| r.truncated())?;
        let text = std::str::from_utf8(&r.bytes[r.at..end]).map_err(|e| format!("the string at byte {start} is not UTF-8: {e}"))?;
        r.at = end;
        Ok(text.to_owned())
    }
}

impl Binary for Decimal {
    fn write(&self, out: &mut Vec<u8>) {
        // The scale as it is (Decimal's == ignores it; our documents do not), and the sign
        // apart from the mantissa so that −0 stays −0.
        out.push(self.scale() as u8 | u8::from(self.is_sign_negative()) << 7);
        put_varint(out, self.mantissa().unsigned_abs());
    }
    fn read(r: &mut Reader<'_>) -> Res<Decimal> {
        let start = r.at;
        let head = r.byte()?;
        let scale = u32::from(head & 0x7f);
        if scale > Decimal::MAX_SCALE {
            return Err(format!("decimal at byte {start} has scale {scale} (at most {})", Decimal::MAX_SCALE));
        }
        let mantissa = r.varint(MAX_MANTISSA_BITS)?;
        // Below 2^96, so the i128 and the constructor's checks both pass; no panic either way.
        let mut d = Decimal::try_from_i128_with_scale(mantissa as i128, scale).map_err(|e| format!("decimal at byte {start}: {e}"))?;
        d.set_sign_negative(head & 0x80 != 0);
        Ok(d)
    }
}

impl Binary for Instant {
    fn write(&self, out: &mut Vec<u8>) {
        put_zigzag(out, self.timestamp());
        put_varint(out, u128::from(self.timestamp_subsec_nanos()));
        put_zigzag(out, i64::from(self.offset().local_minus_utc()));
    }
    fn read(r: &mut Reader<'_>) -> Res<Instant> {
        let start = r.at;
        let seconds = r.zigzag()?;
        let nanos = r.varint(32)? as u32;
        let east = r.zigzag()?;
        let offset = i32::try_from(east).ok().and_then(FixedOffset::east_opt);
        let offset = offset.ok_or_else(|| format!("instant at byte {start}: an offset of {east} s is not within a day"))?;
        let utc = DateTime::from_timestamp(seconds, nanos);
        let utc = utc.ok_or_else(|| format!("instant at byte {start}: {seconds} s and {nanos} ns is out of range"))?;
        Ok(utc.with_timezone(&offset))
    }
}

/// A fieldless enum as its one-byte tag (the tables of the module doc).
macro_rules! tags {
    ($ty:ident, $what:literal, { $($tag:literal => $variant:ident),+ $(,)? }) => {
        impl Binary for $ty {
            fn write(&self, out: &mut Vec<u8>) {
                out.push(match self {
                    $($ty::$variant => $tag,)+
                });
            }
            fn read(r: &mut Reader<'_>) -> Res<$ty> {
                match r.byte()? {
                    $($tag => Ok($ty::$variant),)+
                    tag => Err(r.unknown($what, tag)),
                }
            }
        }
    };
}

tags!(BillingMode, "billing mode", { 0 => OnDemand, 1 => Monthly, 2 => Yearly, 3 => Package });
tags!(Item, "item", { 0 => Compute, 1 => Storage, 2 => Purchase, 3 => Renewal, 4 => Upgrade, 5 => Downgrade, 6 => Conversion, 7 => Refund, 8 => Package });
tags!(PoolType, "pool type", { 0 => Dedicated, 1 => Public });
tags!(JobKind, "job kind", { 0 => Training, 1 => Notebook, 2 => Service, 3 => Workflow, 4 => AutoLearning });
tags!(Rule, "rule", {
    0 => R1, 1 => R2, 2 => R3, 3 => R4, 4 => R5, 5 => R6, 6 => R7, 7 => R8, 8 => R9,
    9 => R10, 10 => R11, 11 => R12, 12 => R13, 13 => R14, 14 => R15, 15 => R16, 16 => R17,
});

impl Binary for Term {
    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Term::Months(n) => put!(out, 0; n),
            Term::Years(n) => put!(out, 1; n),
        }
    }
    fn read(r: &mut Reader<'_>) -> Res<Term> {
        match r.byte()? {
            0 => Ok(Term::Months(r.read()?)),
            1 => Ok(Term::Years(r.read()?)),
            tag => Err(r.unknown("term", tag)),
        }
    }
}

impl Binary for Price {
    fn write(&self, out: &mut Vec<u8>) {
        self.hourly.write(out);
        self.monthly.write(out);
        self.yearly.write(out);
    }
    fn read(r: &mut Reader<'_>) -> Res<Price> {
        Ok(Price { hourly: r.read()?, monthly: r.read()?, yearly: r.read()? })
    }
}

impl Binary for Policy {
    fn write(&self, out: &mut Vec<u8>) {
        put_varint(out, self.levels.len() as u128);
        for (name, level) in &self.levels {
            name.write(out);
            level.grace_days.write(out);
            level.retention_days.write(out);
        }
    }
    fn read(r: &mut Reader<'_>) -> Res<Policy> {
        let count = r.varint(64)?;
        let mut levels: BTreeMap<String, Level> = BTreeMap::new();
        for _ in 0..count {
            let start = r.at;
            let name: String = r.read()?;
            // Ascending, as written: a repeated name would otherwise vanish into the map.
            if levels.last_key_value().is_some_and(|(last, _)| *last >= name) {
                return Err(format!("level {name:?} at byte {start} is out of order"));
            }
            levels.insert(name, Level { grace_days: r.read()?, retention_days: r.read()? });
        }
        Ok(Policy { levels })
    }
}

impl Binary for Period {
    fn write(&self, out: &mut Vec<u8>) {
        self.start.write(out);
        self.end.write(out);
    }
    fn read(r: &mut Reader<'_>) -> Res<Period> {
        Ok(Period { start: r.read()?, end: r.read()? })
    }
}

impl Binary for Amounts {
    fn write(&self, out: &mut Vec<u8>) {
        self.list_price.write(out);
        self.discount.write(out);
        self.round_off.write(out);
        self.payable.write(out);
    }
    fn read(r: &mut Reader<'_>) -> Res<Amounts> {
        Ok(Amounts { list_price: r.read()?, discount: r.read()?, round_off: r.read()?, payable: r.read()? })
    }
}

impl Binary for UnusedPart {
    fn write(&self, out: &mut Vec<u8>) {
        self.monthly.write(out);
        self.nodes.write(out);
        self.factor.write(out);
        self.period_end.write(out);
        self.amount.write(out);
        self.yearly.write(out);
    }
    fn read(r: &mut Reader<'_>) -> Res<UnusedPart> {
        Ok(UnusedPart { monthly: r.read()?, nodes: r.read()?, factor: r.read()?, period_end: r.read()?, amount: r.read()?, yearly: r.read()? })
    }
}

impl Binary for Alignment {
    fn write(&self, out: &mut Vec<u8>) {
        self.day.write(out);
        self.from.write(out);
        self.to.write(out);
        self.factor.write(out);
        self.amount.write(out);
    }
    fn read(r: &mut Reader<'_>) -> Res<Alignment> {
        Ok(Alignment { day: r.read()?, from: r.read()?, to: r.read()?, factor: r.read()?, amount: r.read()? })
    }
}

impl Binary for Basis {
    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Basis::Usage { spec, nodes, seconds, hourly, covered_node_seconds } => put!(out, 0; spec, nodes, seconds, hourly, covered_node_seconds),
            Basis::Package { package, spec, nodes, seconds, node_seconds } => put!(out, 1; package, spec, nodes, seconds, node_seconds),
            Basis::PackagePrice { spec, quantity, hours, price } => put!(out, 2; spec, quantity, hours, price),
            Basis::Refund { full, unused, unbegun } => put!(out, 3; full, unused, unbegun),
            Basis::Term { spec, nodes, term, unit_price, align } => put!(out, 4; spec, nodes, term, unit_price, align),
            Basis::Change { from_spec, from_nodes, to_spec, to_nodes, old_monthly, new_monthly, factor, yearly } => {
                put!(out, 5; from_spec, from_nodes, to_spec, to_nodes, old_monthly, new_monthly, factor, yearly)
            }
        }
    }
    fn read(r: &mut Reader<'_>) -> Res<Basis> {
        Ok(match r.byte()? {
            0 => Basis::Usage { spec: r.read()?, nodes: r.read()?, seconds: r.read()?, hourly: r.read()?, covered_node_seconds: r.read()? },
            1 => Basis::Package { package: r.read()?, spec: r.read()?, nodes: r.read()?, seconds: r.read()?, node_seconds: r.read()? },
            2 => Basis::PackagePrice { spec: r.read()?, quantity: r.read()?, hours: r.read()?, price: r.read()? },
            3 => Basis::Refund { full: r.read()?, unused: r.read()?, unbegun: r.read()? },
            4 => Basis::Term { spec: r.read()?, nodes: r.read()?, term: r.read()?, unit_price: r.read()?, align: r.read()? },
            5 => Basis::Change {
                from_spec: r.read()?,
                from_nodes: r.read()?,
                to_spec: r.read()?,
                to_nodes: r.read()?,
                old_monthly: r.read()?,
                new_monthly: r.read()?,
                factor: r.read()?,
                yearly: r.read()?,
            },
            tag => return Err(r.unknown("basis", tag)),
        })
    }
}

impl Binary for BillLine {
    fn write(&self, out: &mut Vec<u8>) {
        self.resource.write(out);
        self.account.write(out);
        self.mode.write(out);
        self.item.write(out);
        self.start.write(out);
        self.end.write(out);
        self.amounts.write(out);
        self.basis.write(out);
        self.balance.write(out);
    }
    fn read(r: &mut Reader<'_>) -> Res<BillLine> {
        Ok(BillLine {
            resource: r.read()?,
            account: r.read()?,
            mode: r.read()?,
            item: r.read()?,
            start: r.read()?,
            end: r.read()?,
            amounts: r.read()?,
            basis: r.read()?,
            balance: r.read()?,
        })
    }
}

impl Binary for Command {
    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Command::SetPrice { spec, price } => put!(out, 0; spec, price),
            Command::SetPolicy { policy } => put!(out, 1; policy),
            Command::OpenAccount { account, balance, level, discount } => put!(out, 2; account, balance, level, discount),
            Command::TopUp { account, amount } => put!(out, 3; account, amount),
            Command::Purchase { account, pool, spec, nodes, mode, term, pool_type, region, ready } => {
                put!(out, 4; account, pool, spec, nodes, mode, term, pool_type, region, ready)
            }
            Command::Ready { pool } => put!(out, 5; pool),
            Command::Delete { pool } => put!(out, 6; pool),
            Command::Renew { pool, term, align_day } => put!(out, 7; pool, term, align_day),
            Command::SetAutoRenew { pool, enabled, term, days_before, count } => put!(out, 8; pool, enabled, term, days_before, count),
            Command::Convert { pool, term } => put!(out, 9; pool, term),
            Command::Scale { pool, nodes, spec } => put!(out, 10; pool, nodes, spec),
            Command::Unsubscribe { pool } => put!(out, 11; pool),
            Command::BuyPackage { account, package, spec, quantity, hours, valid_days, price, region, alert_below } => {
                put!(out, 12; account, package, spec, quantity, hours, valid_days, price, region, alert_below)
            }
            Command::StartJob { account, job, kind, spec, nodes, pool, model, disk_gb, disk_hourly, region } => {
                put!(out, 13; account, job, kind, spec, nodes, pool, model, disk_gb, disk_hourly, region)
            }
            Command::StopJob { job } => put!(out, 14; job),
            Command::DeleteJob { job } => put!(out, 15; job),
        }
    }
    fn read(r: &mut Reader<'_>) -> Res<Command> {
        Ok(match r.byte()? {
            0 => Command::SetPrice { spec: r.read()?, price: r.read()? },
            1 => Command::SetPolicy { policy: r.read()? },
            2 => Command::OpenAccount { account: r.read()?, balance: r.read()?, level: r.read()?, discount: r.read()? },
            3 => Command::TopUp { account: r.read()?, amount: r.read()? },
            4 => Command::Purchase {
                account: r.read()?,
                pool: r.read()?,
                spec: r.read()?,
                nodes: r.read()?,
                mode: r.read()?,
                term: r.read()?,
                pool_type: r.read()?,
                region: r.read()?,
                ready: r.read()?,
            },
            5 => Command::Ready { pool: r.read()? },
            6 => Command::Delete { pool: r.read()? },
            7 => Command::Renew { pool: r.read()?, term: r.read()?, align_day: r.read()? },
            8 => Command::SetAutoRenew { pool: r.read()?, enabled: r.read()?, term: r.read()?, days_before: r.read()?, count: r.read()? },
            9 => Command::Convert { pool: r.read()?, term: r.read()? },
            10 => Command::Scale { pool: r.read()?, nodes: r.read()?, spec: r.read()? },
            11 => Command::Unsubscribe { pool: r.read()? },
            12 => Command::BuyPackage {
                account: r.read()?,
                package: r.read()?,
                spec: r.read()?,
                quantity: r.read()?,
                hours: r.read()?,
                valid_days: r.read()?,
                price: r.read()?,
                region: r.read()?,
                alert_below: r.read()?,
            },
            13 => Command::StartJob {
                account: r.read()?,
                job: r.read()?,
                kind: r.read()?,
                spec: r.read()?,
                nodes: r.read()?,
                pool: r.read()?,
                model: r.read()?,
                disk_gb: r.read()?,
                disk_hourly: r.read()?,
                region: r.read()?,
            },
            14 => Command::StopJob { job: r.read()? },
            15 => Command::DeleteJob { job: r.read()? },
            tag => return Err(r.unknown("command", tag)),
        })
    }
}

#[cfg(test)]
#[path = "codec_tests.rs"]
mod tests;
