//! Explain: "why was I charged this?" — one flow-bill line (R5) derived step by step from its
//! basis, each step citing its rule. The figures are recomputed (never copied from the amounts
//! the line stored) and then checked against them: a difference is a final R2 step, never silent.

use crate::history::{self, HistoryError};
use chrono::{Datelike, Duration};
use poolbill_domain::money::{fmt_cents, fmt_exact, remaining_factor, trunc2, trunc8};
use poolbill_domain::time::{align_to_day, beijing_date, days_in_month, hour_floor, period_end, to_beijing};
use poolbill_domain::{remaining_value, Alignment, Amounts, Basis, BillLine, DecodeError, Event, Instant, Item, Rule, Term, UnusedPart};
use poolbill_ledger::{fold_visit, FoldError, Upto};
use poolbill_projections::{bill_hour_tag, bill_hours_of_month, event_of, month_of, BillView, FlowBill, BILL_MONTH};
use poolbill_store::{Envelope, EventStore, StoreError};
use rust_decimal::Decimal;
use serde::Serialize;
use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Explanation {
    pub bill: BillSummary,
    pub events: Vec<EventRef>,
    pub steps: Vec<Step>,
    pub balance_before: String,
    pub balance_after: String,
}

/// The line as the bills list shows it.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct BillSummary {
    /// 1-based place in the document's bills list.
    pub number: usize,
    /// Log position of its `charged` event.
    pub event: u64,
    pub resource: String,
    pub account: String,
    pub mode: String,
    pub item: String,
    pub start: String,
    pub end: String,
    pub list_price: String,
    pub discount: String,
    pub round_off: String,
    pub payable: String,
}

/// An event of the log that made the line, and the part it played.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct EventRef {
    pub position: u64,
    pub event_type: String,
    pub at: String,
    pub command_id: Option<String>,
    pub role: String,
}

/// One step of the derivation: the rule, a sentence, and the exact figure it gives.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Step {
    pub rule: String,
    pub what: String,
    pub value: String,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ExplainError {
    /// No bill answers the question (the text says which was asked for).
    #[error("no such bill: {0}")]
    NoSuchBill(String),
    /// The log is not consistent (the text says how).
    #[error("cannot explain from this log: {0}")]
    Log(String),
    /// An event of the log cannot be read.
    #[error("cannot explain from this log: event at position {position}")]
    Decode {
        position: u64,
        #[source]
        source: DecodeError,
    },
}

/// `--bill N`: the line at 1-based place N of the bills list.
pub fn explain_bill(envelopes: &[Envelope], number: usize) -> Result<Explanation, ExplainError> {
    let log = Log::load(envelopes)?;
    let count = log.numbers.count();
    if number == 0 || number > count {
        return Err(ExplainError::NoSuchBill(format!("bill {number}: the log has {count} bills, numbered from 1")));
    }
    let position = log.numbers.nth(number)?;
    let index = log.index_of(position).ok_or_else(|| ExplainError::Log(format!("bill {number} names position {position}, which the log lacks")))?;
    log.explain(index)
}

/// `--resource ID --at T`: every line of that resource in force at T, in bills-list order.
/// Metered stretches are half-open `[start, end)` (R1); subscription and package charges
/// cover `[start, end]`. A job id finds the lines its bills carry (`training_<id>`, R5).
pub fn explain_at(envelopes: &[Envelope], resource: &str, at: Instant) -> Result<Vec<Explanation>, ExplainError> {
    let log = Log::load(envelopes)?;
    log.explain_lines_at(resource, at)
}

/// [`explain_bill`] from a store, through its tag index (brought up to date first: see
/// `poolbill_ledger::catch_up_indexes`): the line is found by counting lines by the hour they
/// start in, and only the events about its resource are read, never the whole log.
pub fn explain_bill_in(store: &dyn EventStore, number: usize) -> Result<Explanation, ExplainError> {
    let ranks = BillRanks::new(store)?;
    let count = ranks.count();
    if number == 0 || number > count {
        return Err(ExplainError::NoSuchBill(format!("bill {number}: the log has {count} bills, numbered from 1")));
    }
    let position = ranks.nth(number)?;
    let charged = read(store, position)?;
    let Event::Charged { line } = &charged.1 else {
        return Err(ExplainError::Log(format!("bill {number} names position {position}, not a charged event")));
    };
    let log = Log::about(store, &line.resource, Target::Position(position), ranks)?;
    let index = log.index_of(position).ok_or_else(|| ExplainError::Log(format!("position {position} is not among its resource's events")))?;
    log.explain(index)
}

/// [`explain_at`] from a store, through its tag index: only the events about the resource
/// (and its account's standing, the catalog, the commands that charged it) are read.
pub fn explain_at_in(store: &dyn EventStore, resource: &str, at: Instant) -> Result<Vec<Explanation>, ExplainError> {
    let log = Log::about(store, resource, Target::InForce(at), BillRanks::new(store)?)?;
    log.explain_lines_at(resource, at)
}

fn covers(line: &BillLine, at: Instant) -> bool {
    if is_metered(&line.basis) {
        line.start <= at && at < line.end
    } else {
        line.start <= at && at <= line.end
    }
}

fn is_metered(basis: &Basis) -> bool {
    matches!(basis, Basis::Usage { .. } | Basis::Package { .. })
}

impl Explanation {
    /// Human text: a header, the events, the numbered steps, the payable and the balance.
    pub fn to_text(&self) -> String {
        let b = &self.bill;
        let mut out = format!(
            "Bill {} (event {}): {} of account {}, {} {}, {} → {}\n  list {}, discount {}, round-off {}, payable {}\n",
            b.number, b.event, b.resource, b.account, b.mode, b.item, b.start, b.end, b.list_price, b.discount, b.round_off, b.payable
        );
        out.push_str("Events:\n");
        for e in &self.events {
            let command = e.command_id.as_deref().map(|id| format!("  [command {id}]")).unwrap_or_default();
            out.push_str(&format!("  #{}  {}  {}  ({}){}\n", e.position, e.at, e.event_type, e.role, command));
        }
        out.push_str("Steps:\n");
        for (i, s) in self.steps.iter().enumerate() {
            out.push_str(&format!("  {}. {} {}: {}\n", i + 1, s.rule, s.what, s.value));
        }
        out.push_str(&format!("Payable {}; balance {} → {} (R12)\n", b.payable, self.balance_before, self.balance_after));
        out
    }
}

/// The events an explanation reads, decoded once: a whole log, or the part of a store's log
/// about one resource.
struct Log<'a> {
    entries: Vec<(Cow<'a, Envelope>, Event)>,
    /// Log position → index in `entries`.
    at_position: HashMap<u64, usize>,
    /// Each job's R5 id, the one its compute bills carry (from its last start).
    billed_as: HashMap<String, String>,
    /// Places in the bills list.
    numbers: Numbers<'a>,
}

/// Where lines stand in the bills list (ordered by start, resource, position).
enum Numbers<'a> {
    /// A whole log's list: the positions of its lines in order.
    Listed { order: Vec<u64>, place: HashMap<u64, usize> },
    /// A store's: counted from its index.
    Ranked(BillRanks<'a>),
}

impl Numbers<'_> {
    fn count(&self) -> usize {
        match self {
            Numbers::Listed { order, .. } => order.len(),
            Numbers::Ranked(ranks) => ranks.count(),
        }
    }

    /// The position of the line at place `number` (1-based, within the count).
    fn nth(&self, number: usize) -> Result<u64, ExplainError> {
        match self {
            Numbers::Listed { order, .. } => Ok(order[number - 1]),
            Numbers::Ranked(ranks) => ranks.nth(number),
        }
    }

    /// The place of `line`, charged at `position`.
    fn place(&self, position: u64, line: &BillLine) -> Result<usize, ExplainError> {
        match self {
            Numbers::Listed { place, .. } => {
                place.get(&position).copied().ok_or_else(|| ExplainError::Log(format!("position {position} is not a bill")))
            }
            Numbers::Ranked(ranks) => ranks.place(position, line),
        }
    }
}

/// Where a line sorts in the bills list: its start, resource and position.
type LineKey = (Instant, String, u64);

/// Lines counted by the month, then the hour, they start in (`bill-month:` and `bill-hour:`
/// tags): a line's place is the lines of earlier months, plus those of its month's earlier
/// hours, plus those of its own hour that sort before it. So a question reads a few dozen
/// months' counts, one month's hours' counts and one hour's lines, however long the log.
struct BillRanks<'a> {
    store: &'a dyn EventStore,
    /// Each month (`YYYY-MM`) and the lines of the months before it, in order.
    months: Vec<(String, usize)>,
    count: usize,
    /// An hour's lines in bills-list order (start, resource, position), read once.
    lines: RefCell<HashMap<String, Vec<LineKey>>>,
}

impl<'a> BillRanks<'a> {
    /// Brings the store's tag index up to date first (it trails the log by up to a few
    /// thousand events, or all of them in a store written before tags).
    fn new(store: &'a dyn EventStore) -> Result<BillRanks<'a>, ExplainError> {
        poolbill_ledger::catch_up_indexes(store).map_err(|e| match e {
            FoldError::Projection(p) => ExplainError::Decode { position: p.position, source: p.source },
            FoldError::Store(e) => store_error(e),
        })?;
        let mut months = Vec::new();
        let mut count = 0;
        for (tag, n) in store.tag_counts(BILL_MONTH).map_err(store_error)? {
            months.push((tag[BILL_MONTH.len()..].to_string(), count));
            count += n as usize;
        }
        Ok(BillRanks { store, months, count, lines: RefCell::new(HashMap::new()) })
    }

    /// The lines of the months before `month`.
    fn before_month(&self, month: &str) -> Result<usize, ExplainError> {
        self.months
            .iter()
            .find(|(m, _)| m == month)
            .map(|(_, before)| *before)
            .ok_or_else(|| ExplainError::Log(format!("no lines are counted for {BILL_MONTH}{month}")))
    }

    /// The hours of `month` that have lines, up to the hour tagged `until` (excluded) if
    /// given: each hour's tag with the lines of the month's hours before it, and their total.
    fn hours_of(&self, month: &str, until: Option<&str>) -> Result<(Vec<(String, usize)>, usize), ExplainError> {
        let (first, next) = bill_hours_of_month(month).ok_or_else(|| ExplainError::Log(format!("{BILL_MONTH}{month} is not a month")))?;
        let mut hours = Vec::new();
        let mut total = 0;
        for (tag, n) in self.store.tag_counts_between(&first, until.unwrap_or(&next)).map_err(store_error)? {
            hours.push((tag, total));
            total += n as usize;
        }
        Ok((hours, total))
    }

    fn count(&self) -> usize {
        self.count
    }

    /// The lines of the hour tagged `tag`, in bills-list order.
    fn lines_of(&self, tag: &str) -> Result<Vec<LineKey>, ExplainError> {
        if let Some(lines) = self.lines.borrow().get(tag) {
            return Ok(lines.clone());
        }
        let positions = self.store.tagged(tag, 0, usize::MAX).map_err(store_error)?;
        let mut lines = Vec::with_capacity(positions.len());
        let mut take = |position: u64, event: Event| match event {
            Event::Charged { line } => {
                lines.push((line.start, line.resource, position));
                Ok(())
            }
            _ => Err(ExplainError::Log(format!("position {position} is tagged {tag} but is not a charged event"))),
        };
        match (positions.first(), positions.last()) {
            // An hour's metered lines are charged together at its end: read that stretch of the
            // log in order rather than line by line.
            (Some(&first), Some(&last)) if last - first < 4 * positions.len() as u64 + 64 => {
                let mut wanted = positions.iter().peekable();
                for envelope in self.store.read_all(first).take((last - first + 1) as usize) {
                    let envelope = envelope.map_err(store_error)?;
                    if wanted.next_if_eq(&&envelope.position).is_some() {
                        let event = event_of(&envelope).map_err(|source| ExplainError::Decode { position: envelope.position, source })?;
                        take(envelope.position, event)?;
                    }
                }
                if wanted.next().is_some() {
                    return Err(ExplainError::Log(format!("the log ends before the lines tagged {tag}")));
                }
            }
            _ => {
                for position in positions {
                    take(position, read(self.store, position)?.1)?;
                }
            }
        }
        lines.sort();
        self.lines.borrow_mut().insert(tag.to_string(), lines.clone());
        Ok(lines)
    }

    fn nth(&self, number: usize) -> Result<u64, ExplainError> {
        let disagree = |what: &str| ExplainError::Log(format!("the count of {what} disagrees with its lines"));
        let (month, before_month) = &self.months[self.months.partition_point(|(_, before)| *before < number) - 1];
        let within = number - before_month;
        let (hours, total) = self.hours_of(month, None)?;
        let hour = hours.partition_point(|(_, before)| *before < within).checked_sub(1);
        let Some((tag, before_hour)) = hour.filter(|_| within <= total).map(|h| &hours[h]) else {
            return Err(disagree(&format!("{BILL_MONTH}{month}")));
        };
        let lines = self.lines_of(tag)?;
        lines.get(within - before_hour - 1).map(|(_, _, p)| *p).ok_or_else(|| disagree(tag))
    }

    fn place(&self, position: u64, line: &BillLine) -> Result<usize, ExplainError> {
        let month = month_of(line.start);
        let tag = bill_hour_tag(line.start);
        let (_, earlier_hours) = self.hours_of(&month, Some(&tag))?;
        let key = (line.start, line.resource.clone(), position);
        Ok(self.before_month(&month)? + earlier_hours + self.lines_of(&tag)?.partition_point(|l| *l < key) + 1)
    }
}

/// The lines an explanation from a store is about.
#[derive(Clone, Copy)]
enum Target {
    /// The line charged at this position.
    Position(u64),
    /// The lines in force at this instant.
    InForce(Instant),
}

impl Target {
    fn includes(self, position: u64, line: &BillLine) -> bool {
        match self {
            Target::Position(p) => p == position,
            Target::InForce(at) => covers(line, at),
        }
    }
}

fn store_error(e: StoreError) -> ExplainError {
    ExplainError::Log(format!("reading the store: {e}"))
}

fn history_error(e: HistoryError) -> ExplainError {
    match e {
        HistoryError::Store(e) => store_error(e),
        HistoryError::Decode { position, source } => ExplainError::Decode { position, source },
    }
}

/// The event at `position`, decoded.
fn read(store: &dyn EventStore, position: u64) -> Result<(Envelope, Event), ExplainError> {
    history::read(store, position).map_err(history_error)
}

/// The steps as they are written.
#[derive(Default)]
struct Steps(Vec<Step>);

impl Steps {
    fn push(&mut self, rule: Rule, what: impl Into<String>, value: impl Into<String>) {
        self.0.push(Step { rule: rule.to_string(), what: what.into(), value: value.into() });
    }
}

impl<'a> Log<'a> {
    fn load(envelopes: &'a [Envelope]) -> Result<Log<'a>, ExplainError> {
        let mut entries = Vec::with_capacity(envelopes.len());
        let projections =
            fold_visit(envelopes.iter().map(Ok), Upto::All, |_, envelope: &&Envelope, event| entries.push((Cow::Borrowed(*envelope), event)))
                .map_err(|e| match e {
                    FoldError::Projection(p) => ExplainError::Decode { position: p.position, source: p.source },
                    FoldError::Store(e) => ExplainError::Log(e.to_string()),
                })?;
        let order: Vec<u64> = projections.document().bills.iter().map(|b| b.event).collect();
        let place = order.iter().enumerate().map(|(i, p)| (*p, i + 1)).collect();
        Ok(Log::of(entries, Numbers::Listed { order, place }))
    }

    /// The part of a store's log an explanation of `resource`'s lines reads: its history
    /// ([`history::of_resource`]), the metered lines of the settlement the question is about,
    /// and for the lines explained the events of the commands that charged them and the
    /// settlement after a metered one.
    fn about(store: &'a dyn EventStore, resource: &str, target: Target, ranks: BillRanks<'a>) -> Result<Log<'a>, ExplainError> {
        let (mut picked, ids) = history::of_resource(store, resource).map_err(history_error)?;
        // The metered lines explained, with the rest of their settlement (package shares and
        // the on-demand rest of a stretch): a metered line is charged at its cycle's end.
        let settled_at = match target {
            Target::InForce(at) => hour_floor(at) + Duration::hours(1),
            Target::Position(position) => {
                let (envelope, event) = read(store, position)?;
                let at = envelope.at;
                picked.insert(position, (envelope, event));
                at
            }
        };
        history::usage_at(store, &ids, settled_at, &mut picked).map_err(history_error)?;
        // For the lines to explain: what their command recorded with them, and the settlement
        // after a metered one.
        let charges: Vec<(u64, Option<String>, BillLine)> = picked
            .iter()
            .filter_map(|(p, (e, ev))| match ev {
                Event::Charged { line } if target.includes(*p, line) => Some((*p, e.command_id.clone(), line.clone())),
                _ => None,
            })
            .collect();
        for (position, command_id, line) in charges {
            if let Some(id) = &command_id {
                let first = store.command(id).map_err(store_error)?.and_then(|r| r.first_position).unwrap_or(position);
                for p in first..position {
                    if let std::collections::btree_map::Entry::Vacant(slot) = picked.entry(p) {
                        slot.insert(read(store, p)?);
                    }
                }
            }
            if is_metered(&line.basis) {
                for envelope in store.read_all(position + 1) {
                    let envelope = envelope.map_err(store_error)?;
                    let event = event_of(&envelope).map_err(|source| ExplainError::Decode { position: envelope.position, source })?;
                    if matches!(&event, Event::CycleSettled { account, .. } if *account == line.account) {
                        picked.insert(envelope.position, (envelope, event));
                        break;
                    }
                }
            }
        }
        let entries = picked.into_values().map(|(envelope, event)| (Cow::Owned(envelope), event)).collect();
        Ok(Log::of(entries, Numbers::Ranked(ranks)))
    }

    fn of(entries: Vec<(Cow<'a, Envelope>, Event)>, numbers: Numbers<'a>) -> Log<'a> {
        let at_position = entries.iter().enumerate().map(|(i, (e, _))| (e.position, i)).collect();
        let mut billed_as = HashMap::new();
        for (_, event) in &entries {
            if let Event::JobStarted { job, billed_as: id, .. } = event {
                billed_as.insert(job.clone(), id.clone());
            }
        }
        Log { entries, at_position, billed_as, numbers }
    }

    /// Every line of `resource` (or of the id its job bills under) in force at `at`, in
    /// bills-list order.
    fn explain_lines_at(&self, resource: &str, at: Instant) -> Result<Vec<Explanation>, ExplainError> {
        let mut ids = BTreeSet::from([resource.to_string()]);
        if let Some(id) = self.billed_as.get(resource) {
            ids.insert(id.clone());
        }
        let mut lines: Vec<(Instant, &str, u64, usize)> = Vec::new();
        for (i, (e, ev)) in self.entries.iter().enumerate() {
            if let Event::Charged { line } = ev {
                if ids.contains(&line.resource) && covers(line, at) {
                    lines.push((line.start, &line.resource, e.position, i));
                }
            }
        }
        if lines.is_empty() {
            return Err(ExplainError::NoSuchBill(format!("resource {resource:?} has no bill line at {}", to_beijing(at).to_rfc3339())));
        }
        lines.sort();
        lines.into_iter().map(|(_, _, _, index)| self.explain(index)).collect()
    }

    /// The line charged at `entries[index]`.
    fn line_at(&self, index: usize) -> Result<&BillLine, ExplainError> {
        match &self.entries[index].1 {
            Event::Charged { line } => Ok(line),
            _ => Err(ExplainError::Log(format!("position {} is not a charged event", self.entries[index].0.position))),
        }
    }

    /// The bills-list number of the line charged at `position`.
    fn number_of(&self, position: u64) -> Option<usize> {
        let index = self.index_of(position)?;
        let line = self.line_at(index).ok()?;
        self.numbers.place(position, line).ok()
    }

    fn bill_name(&self, position: u64) -> String {
        self.number_of(position).map_or_else(|| format!("event {position}"), |n| format!("bill {n}"))
    }

    /// Explain the line charged at `entries[index]`.
    fn explain(&self, index: usize) -> Result<Explanation, ExplainError> {
        let line = self.line_at(index)?;
        let (envelope, _) = &self.entries[index];
        let number = self.numbers.place(envelope.position, line)?;
        let view = &BillView::of(&FlowBill { position: envelope.position, at: envelope.at, line: line.clone() });
        let bill = BillSummary {
            number,
            event: view.event,
            resource: view.resource.clone(),
            account: view.account.clone(),
            mode: view.mode.to_string(),
            item: view.item.to_string(),
            start: view.start.clone(),
            end: view.end.clone(),
            list_price: view.list_price.clone(),
            discount: view.discount.clone(),
            round_off: view.round_off.clone(),
            payable: view.payable.clone(),
        };
        let rate = self.discount_rate(&line.account, index)?;
        let mut steps = Steps::default();
        let derived = match &line.basis {
            Basis::Usage { spec, nodes, hourly, .. } => self.usage_steps(&mut steps, index, line, spec, *nodes, *hourly, rate),
            Basis::Package { package, nodes, node_seconds, .. } => {
                self.package_use_steps(&mut steps, index, line, package, (*nodes, *node_seconds), rate)
            }
            Basis::PackagePrice { spec, quantity, hours, price } => package_price_steps(&mut steps, spec, *quantity, *hours, *price),
            Basis::Term { spec, nodes, term, unit_price, align } => {
                self.term_steps(&mut steps, index, line, spec, *nodes, *term, *unit_price, align.as_ref(), rate)
            }
            Basis::Change { from_spec, from_nodes, to_spec, to_nodes, old_monthly, new_monthly, yearly, .. } => {
                let change = Change {
                    from_spec,
                    from_nodes: *from_nodes,
                    to_spec,
                    to_nodes: *to_nodes,
                    old: *old_monthly,
                    new: *new_monthly,
                    yearly: *yearly,
                };
                change_steps(&mut steps, line, &change, rate)
            }
            Basis::Refund { full: true, .. } => self.full_refund_steps(&mut steps, index, line),
            Basis::Refund { full: false, unused, .. } => self.partial_refund_steps(&mut steps, index, line, unused.as_ref(), rate),
        };
        check(&mut steps, &derived, &line.amounts);
        Ok(Explanation {
            bill,
            events: self.events_of(index, line),
            steps: steps.0,
            balance_before: fmt_cents(line.balance + line.amounts.payable),
            balance_after: fmt_cents(line.balance),
        })
    }

    /// R2: the account's commercial discount rate, from its `account_opened` event.
    fn discount_rate(&self, account: &str, before: usize) -> Result<Decimal, ExplainError> {
        self.entries[..before]
            .iter()
            .rev()
            .find_map(|(_, e)| match e {
                Event::AccountOpened { account: a, discount, .. } if a == account => Some(*discount),
                _ => None,
            })
            .ok_or_else(|| ExplainError::Log(format!("account {account:?} has no account_opened event before its bill")))
    }

    /// The catalog's monthly price of `spec` in force before `before` (R3 unified expiry).
    fn monthly_price(&self, spec: &str, before: usize) -> Option<Decimal> {
        self.entries[..before].iter().rev().find_map(|(_, e)| match e {
            Event::PriceSet { spec: s, price } if s == spec => price.monthly,
            _ => None,
        })
    }

    // ---- metered lines (R4, R13) ----

    /// R4: the cycle, the seconds and the node-seconds of a metered stretch.
    fn stretch_steps(&self, steps: &mut Steps, line: &BillLine, nodes: u32) -> i64 {
        let cycle_start = hour_floor(line.start);
        let cycle_end = cycle_start + Duration::hours(1);
        steps.push(
            Rule::R4,
            "The stretch lies in the Beijing settlement cycle, settled at its end",
            format!("[{}, {})", show(cycle_start), show(cycle_end)),
        );
        let seconds = (line.end - line.start).num_seconds();
        steps.push(Rule::R4, format!("Seconds from {} to {}", show(line.start), show(line.end)), seconds.to_string());
        let unit = if line.item == Item::Storage { "GB" } else { "nodes" };
        let node_seconds = i64::from(nodes) * seconds;
        steps.push(Rule::R4, format!("{nodes} {unit} × {seconds} s = node-seconds"), node_seconds.to_string());
        node_seconds
    }

    /// R4 with R13 and R2: a pay-per-use line billed on demand.
    #[allow(clippy::too_many_arguments)]
    fn usage_steps(&self, steps: &mut Steps, index: usize, line: &BillLine, spec: &str, nodes: u32, hourly: Decimal, rate: Decimal) -> Amounts {
        let node_seconds = self.stretch_steps(steps, line, nodes);
        let uses = self.package_uses(line);
        if uses.is_empty() {
            steps.push(Rule::R13, "Node-seconds taken from packages (none covered this stretch)", "0");
        }
        for (package, taken, _) in &uses {
            let paid = self.package_charge(package).map(|p| format!(", paid on {}", self.bill_name(p))).unwrap_or_default();
            steps.push(Rule::R13, format!("Taken first from package {package}: {} node-hours{paid}", hours(*taken)), taken.to_string());
        }
        let covered: i64 = uses.iter().map(|(_, n, _)| n).sum();
        let billable = node_seconds - covered;
        steps.push(Rule::R4, format!("Billable node-seconds: {node_seconds} − {covered}"), billable.to_string());
        let per = if line.item == Item::Storage { "GB-hour" } else { "node-hour" };
        steps.push(Rule::R4, format!("Unit price per {per} of {spec}{}", self.price_source(index, line)), fmt_exact(hourly));
        let exact = hourly * Decimal::from(billable) / Decimal::from(3600);
        steps.push(Rule::R4, format!("Exact list price: {} × {billable} / 3600", fmt_exact(hourly)), exact.normalize().to_string());
        money_steps(steps, exact, Some(rate))
    }

    /// Where the hourly price came from: the event that opened the stretch's meter.
    fn price_source(&self, index: usize, line: &BillLine) -> String {
        self.opener(index, line)
            .map(|(i, _)| format!(" (from {} at position {})", self.entries[i].0.event_type, self.entries[i].0.position))
            .unwrap_or_default()
    }

    /// R13: node-seconds of a stretch taken from a package; nothing is owed for them now.
    fn package_use_steps(
        &self,
        steps: &mut Steps,
        index: usize,
        line: &BillLine,
        package: &str,
        (nodes, taken): (u32, i64),
        rate: Decimal,
    ) -> Amounts {
        self.stretch_steps(steps, line, nodes);
        steps.push(
            Rule::R13,
            format!("Taken from package {package} (valid at the stretch's start; the one expiring first is used first): {} node-hours", hours(taken)),
            taken.to_string(),
        );
        let paid = match self.package_charge(package) {
            Some(p) => format!("package {package} was paid when bought ({}, payable {})", self.bill_name(p), self.payable_at(p)),
            None => format!("package {package} was paid when bought"),
        };
        steps.push(Rule::R13, format!("Nothing is owed for these node-seconds: {paid}"), "0");
        let rest = self.entries.iter().enumerate().find_map(|(i, (e, ev))| match ev {
            Event::Charged { line: l } if i != index && same_stretch(l, line) && matches!(l.basis, Basis::Usage { .. }) => Some(e.position),
            _ => None,
        });
        if let Some(p) = rest {
            steps.push(Rule::R4, format!("The rest of the stretch is billed on demand on {}", self.bill_name(p)), self.payable_at(p));
        }
        money_steps(steps, Decimal::ZERO, Some(rate))
    }

    /// R13: the package lines of the same stretch: (package, node-seconds, position).
    fn package_uses(&self, line: &BillLine) -> Vec<(String, i64, u64)> {
        self.entries
            .iter()
            .filter_map(|(e, ev)| match ev {
                Event::Charged { line: l } if same_stretch(l, line) => match &l.basis {
                    Basis::Package { package, node_seconds, .. } => Some((package.clone(), *node_seconds, e.position)),
                    _ => None,
                },
                _ => None,
            })
            .collect()
    }

    /// The position of a package's purchase charge.
    fn package_charge(&self, package: &str) -> Option<u64> {
        self.entries.iter().find_map(|(e, ev)| match ev {
            Event::Charged { line } if line.resource == package && matches!(line.basis, Basis::PackagePrice { .. }) => Some(e.position),
            _ => None,
        })
    }

    fn payable_at(&self, position: u64) -> String {
        match self.index_of(position).map(|i| &self.entries[i].1) {
            Some(Event::Charged { line }) => fmt_cents(line.amounts.payable),
            _ => String::new(),
        }
    }

    // ---- subscription lines (R3, R9, R11, R15) ----

    /// R3 (R11 for a conversion): the period and the fee, with a unified-expiry extension.
    #[allow(clippy::too_many_arguments)]
    fn term_steps(
        &self,
        steps: &mut Steps,
        index: usize,
        line: &BillLine,
        spec: &str,
        nodes: u32,
        term: Term,
        unit: Decimal,
        align: Option<&Alignment>,
        rate: Decimal,
    ) -> Amounts {
        let months = term.months();
        let n = if months == 1 { "1 month".to_string() } else { format!("{months} months") };
        let months_end = period_end(line.start, months);
        let (rule, from) = match line.item {
            Item::Renewal => (Rule::R3, format!("A renewal of {n}, anchored on the previous end {}, ends", show(line.start))),
            Item::Conversion => (Rule::R11, format!("Converted at {}: a subscription of {n} starts there (R3) and ends", show(line.start))),
            _ => (Rule::R3, format!("A purchase of {n} at {} ends", show(line.start))),
        };
        steps.push(rule, format!("{from} at 23:59:59 on the date {n} later (the day clamped to the month's end)"), show(months_end));
        let (count, what) = match term {
            Term::Months(m) => (m, format!("Fee: monthly price × nodes × months = {} × {nodes} × {m}", fmt_exact(unit))),
            Term::Years(y) => (y, format!("Fee: yearly price × nodes × years = {} × {nodes} × {y}", fmt_exact(unit))),
        };
        let fee = unit * Decimal::from(nodes) * Decimal::from(count);
        let nodes_note = if line.item == Item::Conversion { " (the pool's nodes at conversion)" } else { "" };
        steps.push(rule, format!("{what}{nodes_note} of {spec}"), fmt_exact(fee));
        let mut exact = fee;
        let mut end = months_end;
        if let Some(a) = align {
            end = align_to_day(months_end, a.day);
            steps.push(Rule::R3, format!("Unified expiry: moved on to the first date whose day is {}", a.day), show(end));
            let factor = remaining_factor(months_end, end);
            let parts = factor_parts(months_end, end);
            steps.push(Rule::R9, format!("Factor of the extra days by natural months: {parts} = {}", fmt_exact(factor)), fmt_exact(factor));
            let monthly = self.monthly_price(spec, index).unwrap_or(unit);
            let amount = trunc2(monthly * Decimal::from(nodes) * factor);
            steps.push(
                Rule::R3,
                format!(
                    "Extension: monthly price × nodes × factor = {} × {nodes} × {}, truncated to 2 places",
                    fmt_exact(monthly),
                    fmt_exact(factor)
                ),
                fmt_exact(amount),
            );
            exact += amount;
            steps.push(Rule::R3, format!("Fee with the extension: {} + {}", fmt_exact(fee), fmt_exact(amount)), fmt_exact(exact));
        }
        if end != line.end {
            steps.push(Rule::R3, format!("The line records another period end: {}", show(line.end)), show(end));
        }
        money_steps(steps, exact, Some(rate))
    }

    /// R15 within five days: everything paid for the subscription comes back, exactly.
    fn full_refund_steps(&self, steps: &mut Steps, index: usize, line: &BillLine) -> Amounts {
        let paid = self.paid_lines(index, &line.resource);
        let since = paid.iter().find(|(_, l)| matches!(l.item, Item::Purchase | Item::Conversion)).map(|(_, l)| l.start);
        if let Some(since) = since {
            let held = line.start - since;
            steps.push(
                Rule::R15,
                format!("Unsubscribed {} after the subscription began at {} (within 5 × 24 h)", duration_text(held), show(since)),
                "full refund",
            );
        }
        let mut total = Decimal::ZERO;
        for (position, l) in &paid {
            total += l.amounts.payable;
            steps.push(Rule::R15, format!("Paid for the {} ({})", l.item.as_str(), self.bill_name(*position)), fmt_cents(l.amounts.payable));
        }
        steps.push(Rule::R15, "Everything paid comes back (no discount is taken off again)", fmt_exact(-total));
        money_steps(steps, -total, None)
    }

    /// R15 after five days: the unused part of the current period plus unbegun renewals.
    fn partial_refund_steps(&self, steps: &mut Steps, index: usize, line: &BillLine, unused: Option<&UnusedPart>, rate: Decimal) -> Amounts {
        let t = line.start;
        let mut amount = Decimal::ZERO;
        if let Some(u) = unused {
            let factor = remaining_factor(t, u.period_end);
            steps.push(
                Rule::R9,
                format!(
                    "Remaining factor from {} to the current period's end {}: {} = {}",
                    show(t),
                    show(u.period_end),
                    factor_parts(t, u.period_end),
                    fmt_exact(factor)
                ),
                fmt_exact(factor),
            );
            amount = trunc2(remaining_value(u.monthly, u.nodes, factor, u.yearly));
            let how = if u.yearly {
                format!(
                    "yearly price × nodes × factor / 12 (R9: a year's monthly rate, dividing last) = {} × {} × {} / 12",
                    fmt_exact(u.monthly),
                    u.nodes,
                    fmt_exact(factor)
                )
            } else {
                format!("monthly price × nodes × factor = {} × {} × {}", fmt_exact(u.monthly), u.nodes, fmt_exact(factor))
            };
            steps.push(Rule::R15, format!("Unused part: {how}, truncated to 2 places"), fmt_exact(amount));
        }
        let mut unbegun = Decimal::ZERO;
        for (position, l) in self.paid_lines(index, &line.resource) {
            if l.item == Item::Renewal && l.start > t {
                unbegun += l.amounts.list_price;
                steps.push(
                    Rule::R15,
                    format!("Renewal period not yet begun, from {} ({})", show(l.start), self.bill_name(position)),
                    fmt_exact(l.amounts.list_price),
                );
            }
        }
        let exact = -(amount + unbegun);
        steps.push(Rule::R15, format!("Refund: −(unused part {} + unbegun renewals {})", fmt_exact(amount), fmt_exact(unbegun)), fmt_exact(exact));
        money_steps(steps, exact, Some(rate))
    }

    /// What was paid for the subscription `resource` before `index`, since its last purchase
    /// or conversion (R15).
    fn paid_lines(&self, index: usize, resource: &str) -> Vec<(u64, &BillLine)> {
        let mut paid = Vec::new();
        for (e, ev) in &self.entries[..index] {
            let Event::Charged { line } = ev else { continue };
            if line.resource != resource {
                continue;
            }
            match line.item {
                Item::Purchase | Item::Conversion => paid = vec![(e.position, line)],
                Item::Renewal | Item::Upgrade | Item::Downgrade => paid.push((e.position, line)),
                _ => {}
            }
        }
        paid
    }

    // ---- the events that made the line ----

    fn events_of(&self, index: usize, line: &BillLine) -> Vec<EventRef> {
        let mut picked: Vec<(usize, String)> = Vec::new();
        if is_metered(&line.basis) {
            if let Some((i, role)) = self.opener(index, line) {
                picked.push((i, role.to_string()));
            }
            if let Some(i) = self.closer(index, line) {
                picked.push((i, "metering ended".to_string()));
            }
            if let Basis::Package { package, .. } = &line.basis {
                if let Some(i) = self.package_charge(package).and_then(|p| self.index_of(p)) {
                    picked.push((i, "paid the package".to_string()));
                }
            }
            picked.push((index, "charged".to_string()));
            let settled =
                self.entries[index + 1..].iter().position(|(_, ev)| matches!(ev, Event::CycleSettled { account, .. } if *account == line.account));
            if let Some(offset) = settled {
                picked.push((index + 1 + offset, "settled the cycle".to_string()));
            }
        } else {
            picked.extend(self.made_with(index, line).into_iter().map(|i| (i, role_of(&self.entries[i].1).to_string())));
            picked.push((index, "charged".to_string()));
        }
        picked.sort_by_key(|(i, _)| *i);
        picked.dedup_by_key(|(i, _)| *i);
        picked
            .into_iter()
            .map(|(i, role)| {
                let e = &self.entries[i].0;
                EventRef { position: e.position, event_type: e.event_type.clone(), at: show(e.at), command_id: e.command_id.clone(), role }
            })
            .collect()
    }

    fn index_of(&self, position: u64) -> Option<usize> {
        self.at_position.get(&position).copied()
    }

    /// The latest event at or before the stretch's start that opened or changed its meter
    /// (R4, R10, R12, R14); a top-up only reopens what the arrears froze.
    fn opener(&self, index: usize, line: &BillLine) -> Option<(usize, &'static str)> {
        let (resource, compute) = (&line.resource, line.item == Item::Compute);
        let mut found = None;
        let mut frozen = false;
        let mut seen_jobs = BTreeSet::new();
        for (i, (e, ev)) in self.entries[..index].iter().enumerate() {
            if e.at > line.start {
                break;
            }
            let role = match ev {
                Event::PoolReady { pool, .. } if compute && pool == resource => Some("metering started"),
                Event::PoolScaled { pool, hourly: Some(_), .. } if compute && pool == resource => Some("configuration changed"),
                Event::JobStarted { job, hourly, disk_hourly, billed_as, .. } => {
                    let first = seen_jobs.insert(job.clone());
                    let opens = if compute {
                        hourly.is_some() && billed_as == resource
                    } else {
                        // R14: the disk is metered from the job's creation, not each restart.
                        first && disk_hourly.is_some() && job == resource
                    };
                    opens.then_some("metering started")
                }
                Event::ArrearsFrozen { account } if *account == line.account && found.is_some() => {
                    frozen = true;
                    None
                }
                Event::ArrearsEnded { account } if *account == line.account && frozen => Some("metering started"),
                _ => None,
            };
            if let Some(role) = role {
                found = Some((i, role));
                frozen = false;
            }
        }
        found
    }

    /// The event at the stretch's end that ended it (R10, R11, R12, R16), if one did: the
    /// rest end at the cycle's end.
    fn closer(&self, index: usize, line: &BillLine) -> Option<usize> {
        let (resource, compute) = (&line.resource, line.item == Item::Compute);
        let billed_as = |job: &str| self.billed_as.get(job).cloned();
        self.entries[..index].iter().position(|(e, ev)| {
            e.at == line.end
                && match ev {
                    Event::PoolScaled { pool, hourly: Some(_), .. } | Event::PoolConverted { pool, .. } => compute && pool == resource,
                    Event::PoolDeleted { pool, .. } => compute && pool == resource,
                    Event::JobStopped { job, .. } => compute && billed_as(job).as_ref() == Some(resource),
                    Event::JobDeleted { job, .. } => {
                        if compute {
                            billed_as(job).as_ref() == Some(resource)
                        } else {
                            job == resource
                        }
                    }
                    Event::ArrearsFrozen { account } => *account == line.account,
                    _ => false,
                }
        })
    }

    /// The events recorded with a command-made (or auto-renewal) line, from its
    /// `command_received` (or the same instant's events of the same pool) up to it.
    fn made_with(&self, index: usize, line: &BillLine) -> Vec<usize> {
        let (charged, _) = &self.entries[index];
        let mut made = Vec::new();
        for i in (0..index).rev() {
            let (e, ev) = &self.entries[i];
            if e.at != charged.at || e.command_id != charged.command_id || matches!(ev, Event::Charged { .. } | Event::CycleSettled { .. }) {
                break;
            }
            if charged.command_id.is_some() || concerns(ev, &line.resource) {
                made.push(i);
            }
            if matches!(ev, Event::CommandReceived { .. }) {
                break;
            }
        }
        made
    }
}

/// Whether an event (of a time-driven batch) is about `resource`.
fn concerns(event: &Event, resource: &str) -> bool {
    match event {
        Event::AutoRenewAttempted { pool, .. } | Event::PoolRenewed { pool, .. } => pool == resource,
        _ => false,
    }
}

fn role_of(event: &Event) -> &'static str {
    match event {
        Event::CommandReceived { .. } => "command",
        Event::PoolPurchased { .. } => "pool purchased",
        Event::PoolScaled { .. } => "configuration changed",
        Event::PoolRenewed { .. } => "period renewed",
        Event::PoolConverted { .. } => "converted to a subscription",
        Event::PoolUnsubscribed { .. } => "unsubscribed",
        Event::PackageBought { .. } => "package bought",
        Event::AutoRenewAttempted { .. } => "auto-renewal attempt",
        _ => "recorded with it",
    }
}

/// Two lines of one metered stretch (a package share and the on-demand rest).
fn same_stretch(a: &BillLine, b: &BillLine) -> bool {
    a.resource == b.resource && a.account == b.account && a.item == b.item && a.start == b.start && a.end == b.end
}

/// R9: the monthly difference of a configuration change times the remaining factor.
struct Change<'a> {
    from_spec: &'a str,
    from_nodes: u32,
    to_spec: &'a str,
    to_nodes: u32,
    old: Decimal,
    new: Decimal,
    /// The prices are yearly: the difference is divided by 12, last.
    yearly: bool,
}

fn change_steps(steps: &mut Steps, line: &BillLine, c: &Change, rate: Decimal) -> Amounts {
    let factor = remaining_factor(line.start, line.end);
    steps.push(
        Rule::R9,
        format!(
            "Remaining factor from {} to the period's end {} by natural months, rounded half-up to 4 places: {} = {}",
            show(line.start),
            show(line.end),
            factor_parts(line.start, line.end),
            fmt_exact(factor)
        ),
        fmt_exact(factor),
    );
    let unit = if c.yearly { "Yearly" } else { "Monthly" };
    steps.push(Rule::R9, format!("{unit} price before: {} × {}", c.from_nodes, c.from_spec), fmt_exact(c.old));
    steps.push(Rule::R9, format!("{unit} price after: {} × {}", c.to_nodes, c.to_spec), fmt_exact(c.new));
    let exact = remaining_value(c.new - c.old, 1, factor, c.yearly);
    let kind = if exact >= Decimal::ZERO { "charged (upgrade)" } else { "refunded (downgrade)" };
    let formula = if c.yearly { "(new − old) × factor / 12, a year's monthly rate, dividing last" } else { "(new − old) × factor" };
    let divide = if c.yearly { " / 12" } else { "" };
    steps.push(
        Rule::R9,
        format!("Difference {formula} = ({} − {}) × {}{divide}, {kind}", fmt_exact(c.new), fmt_exact(c.old), fmt_exact(factor)),
        fmt_exact(exact),
    );
    money_steps(steps, exact, Some(rate))
}

/// R13: a package's price, paid when bought, with no discount and no refund.
fn package_price_steps(steps: &mut Steps, spec: &str, quantity: u32, hours: u32, price: Decimal) -> Amounts {
    let quota = u64::from(quantity) * u64::from(hours);
    steps.push(Rule::R13, format!("Quota: {quantity} × {hours} h = node-hours of {spec}"), quota.to_string());
    steps.push(Rule::R13, "The package's price, paid at purchase (no discount, never refunded)", fmt_exact(price));
    money_steps(steps, price, None)
}

/// R2 on one line, step by step: truncate to 8 places, the discount, truncate to 2 places,
/// the round-off. Every explanation ends with these four, in this order. `rate` is the
/// account's discount rate, or none where no discount is taken (package prices, full refunds).
fn money_steps(steps: &mut Steps, exact: Decimal, rate: Option<Decimal>) -> Amounts {
    let list_price = trunc8(exact);
    steps.push(Rule::R2, "List price: the exact figure truncated toward zero to 8 places", fmt_exact(list_price));
    let discount = trunc8(list_price * rate.unwrap_or(Decimal::ZERO));
    let what = match rate {
        Some(rate) => format!("Discount: trunc8(list price × the account's rate {})", fmt_exact(rate)),
        None => "Discount: none is taken on this line".to_string(),
    };
    steps.push(Rule::R2, what, fmt_exact(discount));
    let net = list_price - discount;
    let payable = trunc2(net);
    steps.push(Rule::R2, format!("Payable: list price − discount = {}, truncated toward zero to 2 places", fmt_exact(net)), fmt_cents(payable));
    let round_off = net - payable;
    steps.push(Rule::R2, format!("Round-off: {} − {}", fmt_exact(net), fmt_cents(payable)), fmt_exact(round_off));
    Amounts { list_price, discount, round_off, payable }
}

/// The derivation must give what the line recorded; if not, say so (never silently).
fn check(steps: &mut Steps, derived: &Amounts, recorded: &Amounts) {
    if derived == recorded {
        return;
    }
    let four = |a: &Amounts| {
        format!(
            "list {}, discount {}, round-off {}, payable {}",
            fmt_exact(a.list_price),
            fmt_exact(a.discount),
            fmt_exact(a.round_off),
            fmt_cents(a.payable)
        )
    };
    steps.push(
        Rule::R2,
        format!("Recorded amounts differ from this derivation: the line records {}, the rules give {}", four(recorded), four(derived)),
        format!("recorded payable {} ≠ derived {}", fmt_cents(recorded.payable), fmt_cents(derived.payable)),
    );
}

/// R9's natural-month parts of the factor from t to E, as text ("12/30 + 8/31").
pub fn factor_parts(t: Instant, end: Instant) -> String {
    let (from, to) = (beijing_date(t), beijing_date(end));
    if to <= from {
        return "0 (the end's date is not after t's)".to_string();
    }
    let from_days = days_in_month(from.year(), from.month());
    if (from.year(), from.month()) == (to.year(), to.month()) {
        return format!("{}/{from_days}", to.day() - from.day());
    }
    let between = (to.year() * 12 + to.month0() as i32) - (from.year() * 12 + from.month0() as i32) - 1;
    let mut parts = vec![format!("{}/{from_days}", from_days - from.day())];
    if between > 0 {
        parts.push(between.to_string());
    }
    parts.push(format!("{}/{}", to.day(), days_in_month(to.year(), to.month())));
    parts.join(" + ")
}

fn hours(node_seconds: i64) -> String {
    fmt_exact((Decimal::from(node_seconds) / Decimal::from(3600)).round_dp(8))
}

fn duration_text(d: Duration) -> String {
    format!("{} d {} h {} min", d.num_days(), d.num_hours() % 24, d.num_minutes() % 60)
}

fn show(t: Instant) -> String {
    to_beijing(t).to_rfc3339()
}
