//! Audit: recompute the bills of a log and compare them with what was charged.
//!
//! The recomputation re-runs the log's own commands from scratch (so it does not trust the
//! amounts the log recorded), checks that it gives the very lines the log holds, then matches
//! each charged line to the recomputed ones by the fields it gives: the resource, and the item,
//! start and end where given (the lines of that resource and item lying within [start, end]).

use crate::rerun::{rerun_beside, Beside, WhatIf};
use crate::sorted::{Sorted, Spill};
use crate::source::{Envelopes, EventSource};
use chrono::DateTime;
use poolbill_domain::money::{fmt_cents, trunc2};
use poolbill_domain::time::to_beijing;
use poolbill_domain::{BillLine, Event, Instant, Item};
use poolbill_ledger::Step;
use poolbill_store::Envelope;
use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::Value;
use std::cmp::Ordering;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::io;
use std::str::FromStr;

/// CHARGED.json: `{"bills": [{"resource", "item"?, "start"?, "end"?, "payable"}], "total"?}`.
/// A line may carry `"erratum"`: why a known source (a seed example) differs; it is echoed.
#[derive(Clone, Debug, PartialEq)]
pub struct Charged {
    pub bills: Vec<ChargedLine>,
    pub total: Option<Decimal>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ChargedLine {
    pub resource: String,
    pub item: Option<String>,
    pub start: Option<Instant>,
    pub end: Option<Instant>,
    pub payable: Decimal,
    pub erratum: Option<String>,
}

/// What is wrong with a CHARGED.json, and where (`bills[2].payable`; empty for the whole file).
#[derive(Debug, thiserror::Error)]
#[error("{}{message}", if path.is_empty() { String::new() } else { format!("{path}: ") })]
pub struct ChargedError {
    pub path: String,
    pub message: String,
    /// The error underneath (JSON syntax, a decimal), when there is one.
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

fn refuse<T>(path: impl Into<String>, message: impl Into<String>) -> Result<T, ChargedError> {
    Err(ChargedError { path: path.into(), message: message.into(), source: None })
}

/// Read CHARGED.json strictly; errors name the field (`bills[2].payable`).
pub fn parse_charged(text: &str) -> Result<Charged, ChargedError> {
    let value: Value = serde_json::from_str(text).map_err(|e| ChargedError {
        path: String::new(),
        message: format!("not valid JSON at line {} column {}", e.line(), e.column()),
        source: Some(Box::new(e)),
    })?;
    let Some(obj) = value.as_object() else { return refuse("", "expected an object with bills (and total)") };
    for key in obj.keys() {
        if !["bills", "total", "note", "source"].contains(&key.as_str()) {
            return refuse(field(key), "unknown field (expected bills, total)");
        }
    }
    let Some(items) = obj.get("bills").and_then(Value::as_array) else { return refuse("bills", "missing, or not an array") };
    let mut bills = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let path = format!("bills[{i}]");
        let Some(line) = item.as_object() else { return refuse(path, "expected an object") };
        for key in line.keys() {
            if !["resource", "item", "start", "end", "payable", "erratum", "note"].contains(&key.as_str()) {
                return refuse(format!("{path}.{}", field(key)), "unknown field (expected resource, item, start, end, payable)");
            }
        }
        let text = |key: &str| -> Result<Option<String>, ChargedError> {
            match line.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => refuse(format!("{path}.{key}"), "expected a string"),
            }
        };
        let instant = |key: &str| -> Result<Option<Instant>, ChargedError> {
            text(key)?
                .map(|s| {
                    DateTime::parse_from_rfc3339(&s).map(to_beijing).map_err(|e| ChargedError {
                        path: format!("{path}.{key}"),
                        message: format!("{s:?} is not an RFC 3339 instant"),
                        source: Some(Box::new(e)),
                    })
                })
                .transpose()
        };
        let Some(resource) = text("resource")? else { return refuse(format!("{path}.resource"), "missing field") };
        let Some(payable) = text("payable")? else { return refuse(format!("{path}.payable"), "missing field") };
        let payable = money(&payable, &format!("{path}.payable"))?;
        bills.push(ChargedLine { resource, item: text("item")?, start: instant("start")?, end: instant("end")?, payable, erratum: text("erratum")? });
    }
    let total = match obj.get("total") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(money(s, "total")?),
        Some(_) => return refuse("total", "money is a decimal string"),
    };
    Ok(Charged { bills, total })
}

/// A field name as a path names it: quoted when it is not a plain name (`[""]`).
fn field(key: &str) -> String {
    if !key.is_empty() && key.chars().all(|c| c.is_alphanumeric() || c == '_') {
        key.to_string()
    } else {
        format!("[{key:?}]")
    }
}

fn money(text: &str, path: &str) -> Result<Decimal, ChargedError> {
    let plain = text.strip_prefix('-').unwrap_or(text);
    if plain.is_empty() || !plain.chars().all(|c| c.is_ascii_digit() || c == '.') || plain.matches('.').count() > 1 {
        return refuse(path, format!("{text:?} is not a decimal amount"));
    }
    Decimal::from_str(text).map_err(|e| ChargedError {
        path: path.into(),
        message: format!("{text:?} is not a decimal amount"),
        source: Some(Box::new(e)),
    })
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Report {
    pub matched: usize,
    pub discrepancies: Vec<Discrepancy>,
    pub matches: Vec<Match>,
    /// Lines the log recorded that its own commands do not give again (or the other way).
    pub integrity: Vec<String>,
}

impl Report {
    pub fn all_match(&self) -> bool {
        self.discrepancies.is_empty() && self.integrity.is_empty()
    }
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Match {
    pub resource: String,
    pub item: Option<String>,
    pub start: Option<String>,
    pub end: Option<String>,
    pub payable: String,
    pub lines: usize,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Discrepancy {
    pub resource: String,
    pub item: Option<String>,
    pub start: Option<String>,
    pub end: Option<String>,
    pub charged: String,
    pub computed: String,
    /// charged − computed.
    pub difference: String,
    /// The rule that decides the computed figure.
    pub rule: String,
    pub reason: String,
    pub lines: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub erratum: Option<String>,
}

/// Recompute the bills of a log in memory and compare them with `charged` ([`audit_log`]).
pub fn audit(envelopes: &[Envelope], charged: &Charged) -> Report {
    match audit_log(&Envelopes(envelopes), charged) {
        Ok(report) => report,
        Err(never) => match never {},
    }
}

/// Recompute the log's bills and compare them with `charged`, reading the log as a stream: its
/// commands are re-run as they are read, in step with the lines the log recorded, so memory
/// holds what is live (the log's state and the re-run's), one total per charged line, and the
/// lines one side has given and the other not yet (about a step's: [`walk`]).
///
/// The re-run must give the very lines the log holds, compared in the order of start and
/// resource (each side's own order within those: a merged log of shards records one instant's
/// lines shard by shard, a re-run in its own order). When the two agree line by line in log
/// order, they agree in that order too, and one read is enough; when they do not (a merged
/// log, or a log that differs from its commands), the log is read a second time and each
/// side's lines sorted on a temporary file, to tell whether and where they differ.
pub fn audit_log<S: EventSource>(source: &S, charged: &Charged) -> Result<Report, S::Error> {
    match audit_paced(source, charged, true)? {
        Some(report) => Ok(report),
        // A late command after a clock that moved by itself: at the commands' pace, as `rerun`.
        None => Ok(audit_paced(source, charged, false)?.expect("a re-run at its commands' pace is always in step")),
    }
}

/// [`audit_log`] with the re-run keeping pace with the log or not ([`walk`]); none if it could
/// not keep pace.
fn audit_paced<S: EventSource>(source: &S, charged: &Charged, paced: bool) -> Result<Option<Report>, S::Error> {
    let mut tallies = Tallies::new(charged);
    let mut lockstep = Lockstep::new();
    let in_step = walk(source, paced, |side, line| {
        if side == COMPUTED {
            tallies.add(line);
        }
        lockstep.take(side, line);
    })?;
    if !in_step {
        return Ok(None);
    }
    let mut integrity = Vec::new();
    if !lockstep.same() {
        let mut sorted = [Sorted::new(), Sorted::new()];
        let mut failed = None;
        // The same read and re-run again, so in step again.
        walk(source, paced, |side, line| {
            if failed.is_none() {
                failed = sorted[side].push(line.clone()).err();
            }
        })?;
        let [recorded, computed] = sorted;
        let first = match failed {
            None => first_difference(recorded, computed),
            Some(e) => Err(e),
        };
        let [recorded, computed] = lockstep.counts;
        match first {
            Ok(None) => {}
            Ok(Some((differing, line))) => integrity.push(format!(
                "the log records {recorded} bill lines and its commands give {computed}; they first differ at line {} ({})",
                differing + 1,
                line.map_or("-".to_string(), |l| format!("{} {}", l.resource, to_beijing(l.start).to_rfc3339()))
            )),
            // The temporary file failed: the lines are known to differ, not where.
            Err(e) => integrity.push(format!(
                "the log records {recorded} bill lines and its commands give {computed}; they differ in log order, and sorting them to find where failed: {e}"
            )),
        }
    }
    Ok(Some(tallies.report(charged, integrity)))
}

/// The two sides of an audit: the lines the log recorded, and those its commands give again.
const RECORDED: usize = 0;
const COMPUTED: usize = 1;

/// Read the log once, handing each line it records to `take` as [`RECORDED`], and each line a
/// re-run of its commands charges as [`COMPUTED`] ([`rerun_beside`]); false if the re-run could
/// not keep pace with the log.
fn walk<S: EventSource>(source: &S, paced: bool, mut take: impl FnMut(usize, &BillLine)) -> Result<bool, S::Error> {
    rerun_beside(source, &WhatIf::default(), paced, |seen| match seen {
        Beside::Recorded(_, line) => take(RECORDED, line),
        Beside::Rerun(step) => charged_lines(step, &mut take),
    })
}

fn charged_lines(step: Step, take: &mut impl FnMut(usize, &BillLine)) {
    for event in &step.events {
        if let Event::Charged { line } = event {
            take(COMPUTED, line);
        }
    }
}

/// The log's lines and the re-run's compared in log order as both come: each side's lines wait
/// only until the other gives its own.
struct Lockstep {
    /// Lines given by one side and not yet by the other, by side.
    waiting: [VecDeque<BillLine>; 2],
    /// Lines given, by side.
    counts: [usize; 2],
    /// No two lines have differed yet.
    alike: bool,
}

impl Lockstep {
    fn new() -> Lockstep {
        Lockstep { waiting: [VecDeque::new(), VecDeque::new()], counts: [0, 0], alike: true }
    }

    fn take(&mut self, side: usize, line: &BillLine) {
        self.counts[side] += 1;
        if !self.alike {
            return;
        }
        match self.waiting[1 - side].pop_front() {
            Some(waiting) if waiting == *line => {}
            Some(_) => {
                // Where they differ in the order compared is found by sorting: nothing more is kept.
                self.alike = false;
                self.waiting = [VecDeque::new(), VecDeque::new()];
            }
            None => self.waiting[side].push_back(line.clone()),
        }
    }

    /// Both sides gave the same lines in the same order.
    fn same(&self) -> bool {
        self.alike && self.waiting.iter().all(VecDeque::is_empty)
    }
}

/// What a charged line (or the total) adds up to over the re-run's lines it selects.
#[derive(Clone, Default)]
struct Tally {
    lines: usize,
    payable: Decimal,
    /// List price less discount: what the lines come to before R2 truncates each.
    net: Decimal,
    /// The kinds of line met, each decided by its own rule.
    items: BTreeSet<&'static str>,
}

impl Tally {
    fn add(&mut self, line: &BillLine) {
        self.lines += 1;
        self.payable += line.amounts.payable;
        self.net += line.amounts.list_price - line.amounts.discount;
        self.items.insert(rule_of(line.item));
    }
}

/// A tally per charged line, found by resource, and one of every line for the total.
struct Tallies<'c> {
    by_resource: HashMap<&'c str, Vec<usize>>,
    lines: Vec<Tally>,
    total: Tally,
    charged: &'c [ChargedLine],
}

impl<'c> Tallies<'c> {
    fn new(charged: &'c Charged) -> Tallies<'c> {
        let mut by_resource: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, line) in charged.bills.iter().enumerate() {
            by_resource.entry(line.resource.as_str()).or_default().push(i);
        }
        Tallies { by_resource, lines: vec![Tally::default(); charged.bills.len()], total: Tally::default(), charged: &charged.bills }
    }

    fn add(&mut self, line: &BillLine) {
        self.total.lines += 1;
        self.total.payable += line.amounts.payable;
        for &i in self.by_resource.get(line.resource.as_str()).into_iter().flatten() {
            if selects(&self.charged[i], line) {
                self.lines[i].add(line);
            }
        }
    }

    fn report(self, charged: &Charged, integrity: Vec<String>) -> Report {
        let mut report = Report { matched: 0, discrepancies: Vec::new(), matches: Vec::new(), integrity };
        for (line, tally) in charged.bills.iter().zip(&self.lines) {
            let show = |t: Option<Instant>| t.map(|t| to_beijing(t).to_rfc3339());
            if tally.payable == line.payable && tally.lines > 0 {
                report.matched += 1;
                report.matches.push(Match {
                    resource: line.resource.clone(),
                    item: line.item.clone(),
                    start: show(line.start),
                    end: show(line.end),
                    payable: fmt_cents(tally.payable),
                    lines: tally.lines,
                });
            } else {
                let (rule, reason) = why(tally, line.payable);
                report.discrepancies.push(Discrepancy {
                    resource: line.resource.clone(),
                    item: line.item.clone(),
                    start: show(line.start),
                    end: show(line.end),
                    charged: fmt_cents(line.payable),
                    computed: fmt_cents(tally.payable),
                    difference: fmt_cents(line.payable - tally.payable),
                    rule,
                    reason,
                    lines: tally.lines,
                    erratum: line.erratum.clone(),
                });
            }
        }
        if let Some(total) = charged.total {
            let sum = self.total.payable;
            if sum == total {
                report.matched += 1;
            } else {
                report.discrepancies.push(Discrepancy {
                    resource: "(total)".into(),
                    item: None,
                    start: None,
                    end: None,
                    charged: fmt_cents(total),
                    computed: fmt_cents(sum),
                    difference: fmt_cents(total - sum),
                    rule: "R5".into(),
                    reason: "the total is the sum of every flow-bill line's payable".into(),
                    lines: self.total.lines,
                    erratum: None,
                });
            }
        }
        report
    }
}

/// The lines a charged line stands for: its resource, its item if given, within [start, end].
fn selects(charged: &ChargedLine, line: &BillLine) -> bool {
    line.resource == charged.resource
        && charged.item.as_deref().is_none_or(|item| item == line.item.as_str())
        && charged.start.is_none_or(|s| line.start >= s)
        && charged.end.is_none_or(|e| line.end <= e)
}

/// The rule that decides a kind of line.
fn rule_of(item: Item) -> &'static str {
    match item {
        Item::Compute => "R4",
        Item::Storage => "R14",
        Item::Purchase | Item::Renewal => "R3",
        Item::Upgrade | Item::Downgrade => "R9",
        Item::Conversion => "R11",
        Item::Refund => "R15",
        Item::Package => "R13",
    }
}

/// The rule that decides the computed figure, and what most likely explains the difference.
fn why(lines: &Tally, charged: Decimal) -> (String, String) {
    if lines.lines == 0 {
        return ("R5".into(), "no line of the log matches: nothing of this was charged under the rules".into());
    }
    // Each kind of line is decided by its own rule; a selection of several kinds cites each.
    let mut rules: Vec<&str> = lines.items.iter().copied().collect();
    rules.sort_by_key(|r| r[1..].parse::<u32>().unwrap_or(0));
    let rule = rules.join(", ");
    let (net, computed) = (lines.net, lines.payable);
    let rounded = net.round_dp(2);
    if lines.lines > 1 && (charged == trunc2(net) || charged == rounded) {
        return (
            "R2".into(),
            format!("the charged figure prices the {} lines' sum ({}) at once; R2 truncates each line to 2 places", lines.lines, net.normalize()),
        );
    }
    let diff = (charged - computed).abs();
    if diff < Decimal::new(1, 2) * Decimal::from(lines.lines as u64) && lines.lines > 1 {
        return ("R2".into(), "within the round-off of the lines: R2 truncates each line to 2 places".into());
    }
    (rule, format!("the rules give {} over {} line(s)", fmt_cents(computed), lines.lines))
}

/// Where two sides' lines, each in the order of start and resource (then its own order), first
/// differ: the index and the recorded side's line there (the computed side's, past its end);
/// none if they are the same lines.
fn first_difference(recorded: Sorted<BillLine>, computed: Sorted<BillLine>) -> io::Result<Option<(usize, Option<BillLine>)>> {
    let (mut recorded, mut computed) = (recorded.into_sorted()?, computed.into_sorted()?);
    let mut index = 0;
    loop {
        match (recorded.next().transpose()?, computed.next().transpose()?) {
            (None, None) => return Ok(None),
            (Some(a), Some(b)) if a == b => index += 1,
            (a, b) => return Ok(Some((index, a.or(b)))),
        }
    }
}

/// A bill line on the temporary file: its JSON; in the order of start and resource.
impl Spill for BillLine {
    fn encode(&self, out: &mut Vec<u8>) -> io::Result<()> {
        serde_json::to_writer(out, self).map_err(io::Error::other)
    }

    fn decode(bytes: &[u8]) -> io::Result<BillLine> {
        serde_json::from_slice(bytes).map_err(io::Error::other)
    }

    fn order(&self, other: &Self) -> Ordering {
        (self.start, &self.resource).cmp(&(other.start, &other.resource))
    }
}

impl Report {
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for m in &self.matches {
            out.push_str(&format!(
                "match        {} {}{} payable {} ({} line(s))\n",
                m.resource,
                m.item.as_deref().map(|i| format!("{i} ")).unwrap_or_default(),
                span(&m.start, &m.end),
                m.payable,
                m.lines
            ));
        }
        for d in &self.discrepancies {
            out.push_str(&format!(
                "DISCREPANCY  {} {}{} charged {} computed {} difference {} [{}] {}\n",
                d.resource,
                d.item.as_deref().map(|i| format!("{i} ")).unwrap_or_default(),
                span(&d.start, &d.end),
                d.charged,
                d.computed,
                d.difference,
                d.rule,
                d.reason
            ));
            if let Some(e) = &d.erratum {
                out.push_str(&format!("             known erratum: {e}\n"));
            }
        }
        for i in &self.integrity {
            out.push_str(&format!("INTEGRITY    {i}\n"));
        }
        out.push_str(&format!("{} matched, {} discrepancies\n", self.matched, self.discrepancies.len() + self.integrity.len()));
        out
    }
}

fn span(start: &Option<String>, end: &Option<String>) -> String {
    match (start, end) {
        (None, None) => String::new(),
        (s, e) => format!("[{} .. {}] ", s.as_deref().unwrap_or("…"), e.as_deref().unwrap_or("…")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use poolbill_domain::{Amounts, Basis, BillingMode};
    use proptest::prelude::*;

    fn line(start: i64, resource: u8, payable: i64) -> BillLine {
        let start = chrono::DateTime::from_timestamp(1_680_000_000 + start * 3600, 0).unwrap().fixed_offset();
        BillLine {
            resource: format!("r{resource}"),
            account: "a".into(),
            mode: BillingMode::OnDemand,
            item: Item::Compute,
            start,
            end: start + chrono::Duration::hours(1),
            amounts: Amounts {
                list_price: Decimal::new(payable, 2),
                discount: Decimal::ZERO,
                round_off: Decimal::ZERO,
                payable: Decimal::new(payable, 2),
            },
            basis: Basis::Usage { spec: "s".into(), nodes: 1, seconds: 3600, hourly: Decimal::new(payable, 2), covered_node_seconds: 0 },
            balance: Decimal::ZERO,
        }
    }

    proptest! {
        /// Lines written to the file as runs and merged come back whole, in a stable sort by
        /// start and resource: equals (told apart here by their amount) in the order pushed.
        #[test]
        fn sorted_lines_are_a_stable_sort(lines in prop::collection::vec((0i64..6, 0u8..3, 0i64..1000), 0..60), run in 1usize..8) {
            let lines: Vec<BillLine> = lines.into_iter().map(|(s, r, p)| line(s, r, p)).collect();
            let mut sorted = Sorted::with_runs_of(run);
            for l in &lines {
                sorted.push(l.clone()).unwrap();
            }
            let merged: Vec<BillLine> = sorted.into_sorted().unwrap().collect::<io::Result<_>>().unwrap();
            let mut expected = lines.clone();
            expected.sort_by(BillLine::order);
            prop_assert_eq!(merged, expected);
        }
    }
}
