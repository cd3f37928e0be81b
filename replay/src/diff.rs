//! Diff: two derivations of a log's bills, line by line — as known at an instant against as
//! known now (what later events added or corrected), or the actual bills against a what-if.

use poolbill_domain::money::fmt_cents;
use poolbill_projections::{BillView, Projections};
use rust_decimal::Decimal;
use serde::Serialize;
use std::collections::BTreeMap;
use std::str::FromStr;

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Diff {
    /// Lines only the second derivation has.
    pub added: Vec<BillView>,
    /// Lines only the first has.
    pub removed: Vec<BillView>,
    /// The same line (resource, item, mode, start, end) with other amounts: [first, second].
    pub changed: Vec<[BillView; 2]>,
    pub unchanged: usize,
    pub first_total: String,
    pub second_total: String,
    /// second − first.
    pub difference: String,
}

type Key = (String, &'static str, &'static str, String, String, usize);

/// Lines keyed by what identifies them; a repeated key (a stretch split between packages)
/// is told apart by its place among its equals.
fn keyed(p: &Projections) -> BTreeMap<Key, BillView> {
    let mut seen: BTreeMap<(String, &'static str, &'static str, String, String), usize> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for bill in p.document().bills {
        let base = (bill.resource.clone(), bill.item, bill.mode, bill.start.clone(), bill.end.clone());
        let n = seen.entry(base.clone()).or_insert(0);
        out.insert((base.0, base.1, base.2, base.3, base.4, *n), bill);
        *n += 1;
    }
    out
}

fn total(p: &Projections) -> Decimal {
    p.bills.iter().map(|b| b.line.amounts.payable).sum()
}

pub fn diff(first: &Projections, second: &Projections) -> Diff {
    let (a, b) = (keyed(first), keyed(second));
    let mut d = Diff {
        added: Vec::new(),
        removed: Vec::new(),
        changed: Vec::new(),
        unchanged: 0,
        first_total: fmt_cents(total(first)),
        second_total: fmt_cents(total(second)),
        difference: fmt_cents(total(second) - total(first)),
    };
    let same =
        |x: &BillView, y: &BillView| (&x.list_price, &x.discount, &x.round_off, &x.payable) == (&y.list_price, &y.discount, &y.round_off, &y.payable);
    for (key, line) in &a {
        match b.get(key) {
            None => d.removed.push(line.clone()),
            Some(other) if same(line, other) => d.unchanged += 1,
            Some(other) => d.changed.push([line.clone(), other.clone()]),
        }
    }
    d.added = b.iter().filter(|(k, _)| !a.contains_key(*k)).map(|(_, v)| v.clone()).collect();
    d
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }

    pub fn to_text(&self, first: &str, second: &str) -> String {
        let mut out = format!("{first} → {second}\n");
        let line = |sign: &str, b: &BillView| format!("{sign} {} {} {} {} .. {} payable {}\n", b.resource, b.mode, b.item, b.start, b.end, b.payable);
        for b in &self.removed {
            out.push_str(&line("-", b));
        }
        for b in &self.added {
            out.push_str(&line("+", b));
        }
        for [x, y] in &self.changed {
            let delta = Decimal::from_str(&y.payable).unwrap_or_default() - Decimal::from_str(&x.payable).unwrap_or_default();
            out.push_str(&format!(
                "~ {} {} {} {} .. {} payable {} → {} ({})\n",
                x.resource,
                x.mode,
                x.item,
                x.start,
                x.end,
                x.payable,
                y.payable,
                fmt_cents(delta)
            ));
        }
        out.push_str(&format!(
            "{} added, {} removed, {} changed, {} unchanged; total {} → {} ({})\n",
            self.added.len(),
            self.removed.len(),
            self.changed.len(),
            self.unchanged,
            self.first_total,
            self.second_total,
            self.difference
        ));
        out
    }
}
