//! Diff: two derivations of a log's bills, line by line — as known at an instant against as
//! known now (what later events added or corrected), or the actual bills against a what-if.

use crate::pipeline::fold_pipelined;
use crate::rerun::{Recorded, Rerunner, WhatIf};
use crate::source::EventSource;
use poolbill_domain::money::fmt_cents;
use poolbill_domain::{Event, Instant};
use poolbill_ledger::{Step, Upto};
use poolbill_projections::{BillView, Projections};
use rust_decimal::Decimal;
use serde::Serialize;
use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
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

/// What identifies a line in both derivations: resource, item, mode, start and end as shown.
/// A repeated one (a stretch split between packages) is told apart by its place among its
/// equals in log order: the n-th of one side is paired with the n-th of the other.
type Base = (String, &'static str, &'static str, String, String);

fn base(b: &BillView) -> Base {
    (b.resource.clone(), b.item, b.mode, b.start.clone(), b.end.clone())
}

/// The two derivations, [`FIRST`] and [`SECOND`].
const FIRST: usize = 0;
const SECOND: usize = 1;

/// Lines of two derivations paired as they come, each side in its log order: a line waits only
/// until the other side gives its pair, so lines that both give are not kept (those of the
/// same amounts only counted); what is left at the end is what only one side has.
#[derive(Default)]
struct Pairing {
    /// By what identifies them, lines one side has given and the other not yet, and which side.
    waiting: HashMap<Base, (usize, VecDeque<BillView>)>,
    changed: Vec<[BillView; 2]>,
    unchanged: usize,
    totals: [Decimal; 2],
}

impl Pairing {
    fn take(&mut self, side: usize, view: BillView, payable: Decimal) {
        self.totals[side] += payable;
        match self.waiting.entry(base(&view)) {
            Entry::Occupied(mut entry) if entry.get().0 != side => {
                let other = entry.get_mut().1.pop_front().expect("a waiting queue is never empty");
                if entry.get().1.is_empty() {
                    entry.remove();
                }
                let [x, y] = if side == SECOND { [other, view] } else { [view, other] };
                let same = (&x.list_price, &x.discount, &x.round_off, &x.payable) == (&y.list_price, &y.discount, &y.round_off, &y.payable);
                if same {
                    self.unchanged += 1;
                } else {
                    self.changed.push([x, y]);
                }
            }
            Entry::Occupied(mut entry) => entry.get_mut().1.push_back(view),
            Entry::Vacant(entry) => {
                entry.insert((side, VecDeque::from([view])));
            }
        }
    }

    /// A line both sides have, the same: counted, not kept.
    fn same_in_both(&mut self, payable: Decimal) {
        self.totals[FIRST] += payable;
        self.totals[SECOND] += payable;
        self.unchanged += 1;
    }

    /// The lines only one side has, and those changed, each in the order of what identifies
    /// them (the first side's line, for a changed pair), equals in log order.
    fn finish(self) -> Diff {
        let key = |b: &BillView| (b.resource.clone(), b.item, b.mode, b.start.clone(), b.end.clone(), b.event);
        let (mut removed, mut added) = (Vec::new(), Vec::new());
        for (side, views) in self.waiting.into_values() {
            if side == FIRST { &mut removed } else { &mut added }.extend(views);
        }
        removed.sort_by_cached_key(key);
        added.sort_by_cached_key(key);
        let mut changed = self.changed;
        changed.sort_by_cached_key(|[x, _]| key(x));
        let [first, second] = self.totals;
        Diff {
            added,
            removed,
            changed,
            unchanged: self.unchanged,
            first_total: fmt_cents(first),
            second_total: fmt_cents(second),
            difference: fmt_cents(second - first),
        }
    }
}

/// Two derivations' bills compared, from their projections (each keeping every bill).
pub fn diff(first: &Projections, second: &Projections) -> Diff {
    let mut pairing = Pairing::default();
    for (side, p) in [(FIRST, first), (SECOND, second)] {
        for bill in &p.bills {
            pairing.take(side, BillView::of(bill), bill.line.amounts.payable);
        }
    }
    pairing.finish()
}

/// What a log's bills are compared with.
#[derive(Clone, Debug, PartialEq)]
pub enum Against {
    /// The bills as known at this instant (first) against as known now (second).
    Instant(Instant),
    /// The bills as charged (first) against a re-run of the log's commands under these terms
    /// (second).
    WhatIf(WhatIf),
}

/// [`diff`] of a log read as a stream, folded once (with a re-run of its commands as they
/// come, under a what-if): memory holds what is live, the lines one side has given and the
/// other not yet, and what the diff shows.
///
/// As known at T against now: what was known at T is a prefix of the log, so each of its lines
/// is the same line now (counted, not kept), and every later line is added.
pub fn diff_log<S: EventSource>(source: &S, against: &Against) -> Result<Diff, S::Error> {
    let pairing = match against {
        Against::Instant(t) => {
            let mut pairing = Pairing::default();
            let known = Upto::Instant(*t);
            let mut before = true;
            fold_pipelined(
                Upto::All,
                |push| source.read(push),
                |_, _, _| {},
                |_, at, event, _| {
                    // Instants never go back in a log: once one is past T, every later one is.
                    before = before && known.includes(at);
                    if let Event::Charged { line } = event {
                        if before {
                            pairing.same_in_both(line.amounts.payable);
                        } else {
                            pairing.take(SECOND, BillView::of_line(at.position, line), line.amounts.payable);
                        }
                    }
                },
            )?;
            pairing
        }
        Against::WhatIf(what_if) => match against_what_if(source, what_if, true)? {
            Some(pairing) => pairing,
            // A late command after a clock that moved by itself: at the commands' pace, as `rerun`.
            None => against_what_if(source, what_if, false)?.expect("a re-run at its commands' pace is always in step"),
        },
    };
    Ok(pairing.finish())
}

/// The log's lines paired with those of a re-run of its commands under `what_if`, the re-run
/// keeping pace with the log's instants or not (`audit`'s `walk` says why); none if it could not.
fn against_what_if<S: EventSource>(source: &S, what_if: &WhatIf, paced: bool) -> Result<Option<Pairing>, S::Error> {
    let mut pairing = Pairing::default();
    let mut rerunner = Rerunner::new(Projections::live(), what_if);
    // The re-run's positions: its events numbered from 1, as its log would be.
    let mut position = 0;
    let mut until = None;
    let mut in_step = true;
    fold_pipelined(
        Upto::All,
        |push| source.read(push),
        |_, _, _| {},
        |_, at, event, _| {
            if !in_step {
                return;
            }
            until = Some(at.at);
            match event {
                Event::Charged { line } => pairing.take(FIRST, BillView::of_line(at.position, line), line.amounts.payable),
                // The command's id is not part of any decision: it is left out.
                Event::CommandReceived { .. } => {
                    if let Some(command) = Recorded::of_event(None, at.at, event) {
                        in_step = rerunner.command_in_step(&command, |step| rerun_lines(step, &mut position, &mut pairing));
                    }
                }
                _ => {}
            }
            if paced && in_step {
                rerunner.keep_pace(at.at, |step| rerun_lines(step, &mut position, &mut pairing));
            }
        },
    )?;
    if !in_step {
        return Ok(None);
    }
    if let Some(until) = until {
        rerunner.finish(until, |step| rerun_lines(step, &mut position, &mut pairing));
    }
    Ok(Some(pairing))
}

/// A re-run's step: its events numbered on from `position`, its lines taken as the second side.
fn rerun_lines(step: Step, position: &mut u64, pairing: &mut Pairing) {
    for event in &step.events {
        *position += 1;
        if let Event::Charged { line } = event {
            pairing.take(SECOND, BillView::of_line(*position, line), line.amounts.payable);
        }
    }
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
