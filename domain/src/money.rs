//! R2 money and R9 factors: exact decimals, 8-place pricing, 2-place charging, round-off.

use crate::time::{beijing_date, days_in_month, Instant};
use chrono::Datelike;
use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};

/// Truncate toward zero to 8 places: the pricing precision (R2).
pub fn trunc8(d: Decimal) -> Decimal {
    d.round_dp_with_strategy(8, RoundingStrategy::ToZero)
}

/// Truncate toward zero to 2 places: what is actually charged (R2).
pub fn trunc2(d: Decimal) -> Decimal {
    d.round_dp_with_strategy(2, RoundingStrategy::ToZero)
}

/// The four amounts of one flow-bill line (R2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Amounts {
    pub list_price: Decimal,
    pub discount: Decimal,
    pub round_off: Decimal,
    pub payable: Decimal,
}

impl Amounts {
    /// R2 on one line: the list price truncated to 8 places, the account's discount
    /// `trunc8(list × rate)`, the payable `trunc2(list − discount)` and the dropped part as
    /// round-off. Negative lines (refunds, downgrades) truncate toward zero the same way.
    /// Seed §6: list 0.75055555 → payable 0.75, round-off 0.00055555.
    pub fn of(list_exact: Decimal, discount_rate: Decimal) -> Amounts {
        let list_price = trunc8(list_exact);
        let discount = trunc8(list_price * discount_rate);
        let net = list_price - discount;
        let payable = trunc2(net);
        Amounts { list_price, discount, round_off: net - payable, payable }
    }

    pub fn zero() -> Amounts {
        Amounts { list_price: Decimal::ZERO, discount: Decimal::ZERO, round_off: Decimal::ZERO, payable: Decimal::ZERO }
    }
}

/// Sums of lines' amounts, each figure summed as is (R2 truncates lines, never their sum).
impl std::ops::Add for Amounts {
    type Output = Amounts;

    fn add(self, other: Amounts) -> Amounts {
        Amounts {
            list_price: self.list_price + other.list_price,
            discount: self.discount + other.discount,
            round_off: self.round_off + other.round_off,
            payable: self.payable + other.payable,
        }
    }
}

/// R4: the exact list price of `seconds` of `nodes` nodes at `hourly` per node-hour.
pub fn usage_list_price(hourly: Decimal, nodes: u32, seconds: i64) -> Decimal {
    hourly * Decimal::from(nodes) * Decimal::from(seconds) / Decimal::from(3600)
}

/// R9: the remaining factor of a period from `t` to `end`, by natural months: t's month counts
/// (days in month − day(t)) / days in month, the end's month day(E) / days in month, the months
/// between 1 each; in one month, (day(E) − day(t)) / days in month. Rounded half-up to 4 places.
/// Seed §1.2: 2023-04-18 → 2023-05-08 gives 12/30 + 8/31 = 0.6581.
pub fn remaining_factor(t: Instant, end: Instant) -> Decimal {
    let (from, to) = (beijing_date(t), beijing_date(end));
    if to <= from {
        return Decimal::ZERO;
    }
    let dim = |y: i32, m: u32| Decimal::from(days_in_month(y, m));
    let exact = if (from.year(), from.month()) == (to.year(), to.month()) {
        Decimal::from(to.day() - from.day()) / dim(from.year(), from.month())
    } else {
        let first = Decimal::from(days_in_month(from.year(), from.month()) - from.day()) / dim(from.year(), from.month());
        let last = Decimal::from(to.day()) / dim(to.year(), to.month());
        let months_between = (to.year() * 12 + to.month0() as i32) - (from.year() * 12 + from.month0() as i32) - 1;
        first + Decimal::from(months_between) + last
    };
    exact.round_dp_with_strategy(4, RoundingStrategy::MidpointAwayFromZero)
}

/// Normalised text of an 8-place amount: no trailing zeros ("0", "0.75055555", "1750").
pub fn fmt_exact(d: Decimal) -> String {
    Exact(d).to_string()
}

/// Text of a charged amount or balance: exactly two places ("0.75", "1750.00").
pub fn fmt_cents(d: Decimal) -> String {
    Cents(d).to_string()
}

/// [`fmt_exact`]'s text as a `Display`: written where it goes, without a String of its own.
#[derive(Clone, Copy, Debug)]
pub struct Exact(pub Decimal);

impl std::fmt::Display for Exact {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.normalize();
        if n.is_zero() {
            f.write_str("0")
        } else {
            write!(f, "{n}")
        }
    }
}

/// [`fmt_cents`]'s text as a `Display`.
#[derive(Clone, Copy, Debug)]
pub struct Cents(pub Decimal);

impl std::fmt::Display for Cents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut r = self.0.round_dp_with_strategy(2, RoundingStrategy::ToZero);
        r.rescale(2);
        if r.is_zero() {
            r = Decimal::new(0, 2);
        }
        write!(f, "{r}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal_macros::dec;

    use poolbill_testkit::t;

    #[test]
    fn r2_line_amounts_from_the_seeds() {
        // (hourly, nodes, seconds, rate, list, discount, round_off, payable)
        let table = [
            // Seed §6: 772 s at 3.50/h.
            (dec!(3.50), 1, 772, dec!(0), dec!(0.75055555), dec!(0), dec!(0.00055555), dec!(0.75)),
            // Seed §1.3: 30 s and 2746 s at 3.50/h.
            (dec!(3.50), 1, 30, dec!(0), dec!(0.02916666), dec!(0), dec!(0.00916666), dec!(0.02)),
            (dec!(3.50), 1, 2746, dec!(0), dec!(2.66972222), dec!(0), dec!(0.00972222), dec!(2.66)),
            // Seed §1.3: 9:00–9:30 two nodes, 9:30–10:00 four nodes.
            (dec!(3.50), 2, 1800, dec!(0), dec!(3.5), dec!(0), dec!(0), dec!(3.50)),
            (dec!(3.50), 4, 1800, dec!(0), dec!(7), dec!(0), dec!(0), dec!(7.00)),
            // Seed §2.4: a whole hour at 3.40.
            (dec!(3.40), 1, 3600, dec!(0), dec!(3.4), dec!(0), dec!(0), dec!(3.40)),
            // Seed §2.3: an hour of EVS at 0.007/h is below a cent: all of it is round-off.
            (dec!(0.007), 1, 3600, dec!(0), dec!(0.007), dec!(0), dec!(0.007), dec!(0)),
            // A 10 % commercial discount on the 772 s line.
            (dec!(3.50), 1, 772, dec!(0.10), dec!(0.75055555), dec!(0.07505555), dec!(0.0055), dec!(0.67)),
        ];
        for (hourly, nodes, secs, rate, list, discount, round_off, payable) in table {
            let a = Amounts::of(usage_list_price(hourly, nodes, secs), rate);
            assert_eq!(a, Amounts { list_price: list, discount, round_off, payable }, "{hourly} × {nodes} × {secs}s @ {rate}");
        }
    }

    #[test]
    fn r2_negative_lines_truncate_toward_zero() {
        let a = Amounts::of(dec!(-1151.675), dec!(0));
        assert_eq!(a.payable, dec!(-1151.67));
        assert_eq!(a.round_off, dec!(-0.005));
    }

    #[test]
    fn r9_remaining_factor_table() {
        let table = [
            // Seed §1.2: 12/30 + 8/31 = 0.6581.
            ("2023-04-18T00:00:00+08:00", "2023-05-08T23:59:59+08:00", dec!(0.6581)),
            ("2023-04-08T10:00:00+08:00", "2023-04-18T23:59:59+08:00", dec!(0.3333)), // same month: 10/30
            ("2023-01-31T10:00:00+08:00", "2023-03-15T23:59:59+08:00", dec!(1.4839)), // 0/31 + 1 + 15/31
            ("2023-05-08T23:59:59+08:00", "2023-05-15T23:59:59+08:00", dec!(0.2258)), // 7/31
            ("2023-05-08T10:00:00+08:00", "2023-05-08T23:59:59+08:00", dec!(0)),
            ("2023-06-08T10:00:00+08:00", "2023-05-08T23:59:59+08:00", dec!(0)), // past E
        ];
        for (from, to, factor) in table {
            assert_eq!(remaining_factor(t(from), t(to)), factor, "{from} → {to}");
        }
        // Seed §1.2: the upgrade of 1750 → 3500 at that factor costs 1151.67.
        let a = Amounts::of((dec!(3500) - dec!(1750)) * remaining_factor(t(table[0].0), t(table[0].1)), dec!(0));
        assert_eq!(a.payable, dec!(1151.67));
    }

    #[test]
    fn amounts_print_as_the_contract_shows() {
        assert_eq!(fmt_exact(dec!(0.75055555)), "0.75055555");
        assert_eq!(fmt_exact(dec!(0.00000000)), "0");
        assert_eq!(fmt_exact(dec!(1750.00)), "1750");
        assert_eq!(fmt_cents(dec!(0.75)), "0.75");
        assert_eq!(fmt_cents(dec!(1750)), "1750.00");
        assert_eq!(fmt_cents(dec!(-0.00)), "0.00");
        assert_eq!(fmt_cents(dec!(-1151.67)), "-1151.67");
    }
}
