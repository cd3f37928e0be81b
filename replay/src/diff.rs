//! Diff: two derivations of a log's bills, line by line — as known at an instant against as
//! known now (what later events added or corrected), or the actual bills against a what-if.

use crate::document::pretty_into;
use crate::pipeline::fold_pipelined;
use crate::rerun::{rerun_beside, Beside, WhatIf};
use crate::sorted::{Sorted, Spill};
use crate::source::EventSource;
use poolbill_domain::money::fmt_cents;
use poolbill_domain::{Event, Instant};
use poolbill_ledger::{Step, Upto};
use poolbill_projections::{BillView, Projections};
use rust_decimal::Decimal;
use serde::Serialize;
use std::cmp::Ordering;
use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::io::{self, Write};
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

/// Where the lines a diff lists go as they are found: a line only one side has, or a line
/// both have with other amounts. The order they are listed in is restored at the end.
trait Lists {
    fn only(&mut self, side: usize, view: BillView);
    fn changed(&mut self, pair: [BillView; 2]);
}

/// Lines of two derivations paired as they come, each side in its log order: a line waits only
/// until the other side gives its pair, so lines that both give are not kept (those of the
/// same amounts only counted); what is left at the end is what only one side has.
struct Pairing<L> {
    /// By what identifies them, lines one side has given and the other not yet, and which side.
    waiting: HashMap<Base, (usize, VecDeque<BillView>)>,
    lists: L,
    unchanged: usize,
    totals: [Decimal; 2],
}

impl<L: Lists> Pairing<L> {
    fn new(lists: L) -> Pairing<L> {
        Pairing { waiting: HashMap::new(), lists, unchanged: 0, totals: [Decimal::ZERO; 2] }
    }

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
                    self.lists.changed([x, y]);
                }
            }
            Entry::Occupied(mut entry) => entry.get_mut().1.push_back(view),
            Entry::Vacant(entry) => {
                entry.insert((side, VecDeque::from([view])));
            }
        }
    }

    /// A line only `side` has, known to be so as it comes (it is listed at once, not kept).
    fn only(&mut self, side: usize, view: BillView, payable: Decimal) {
        self.totals[side] += payable;
        self.lists.only(side, view);
    }

    /// A line both sides have, the same: counted, not kept.
    fn same_in_both(&mut self, payable: Decimal) {
        self.totals[FIRST] += payable;
        self.totals[SECOND] += payable;
        self.unchanged += 1;
    }

    /// Every line left waiting is one only its side has.
    fn finish(mut self) -> (L, usize, [Decimal; 2]) {
        for (side, views) in self.waiting.into_values() {
            for view in views {
                self.lists.only(side, view);
            }
        }
        (self.lists, self.unchanged, self.totals)
    }
}

/// The order a diff lists lines in: what identifies them, then (equals) log order.
type ListKey = (String, &'static str, &'static str, String, String, u64);

fn list_key(b: &BillView) -> ListKey {
    (b.resource.clone(), b.item, b.mode, b.start.clone(), b.end.clone(), b.event)
}

/// The lists in memory, for a [`Diff`].
#[derive(Default)]
struct InMemory {
    removed: Vec<BillView>,
    added: Vec<BillView>,
    changed: Vec<[BillView; 2]>,
}

impl Lists for InMemory {
    fn only(&mut self, side: usize, view: BillView) {
        if side == FIRST { &mut self.removed } else { &mut self.added }.push(view);
    }

    fn changed(&mut self, pair: [BillView; 2]) {
        self.changed.push(pair);
    }
}

impl Pairing<InMemory> {
    /// The lines only one side has, and those changed, each in the order of what identifies
    /// them (the first side's line, for a changed pair), equals in log order.
    fn into_diff(self) -> Diff {
        let (lists, unchanged, [first, second]) = self.finish();
        let InMemory { mut removed, mut added, mut changed } = lists;
        removed.sort_by_cached_key(list_key);
        added.sort_by_cached_key(list_key);
        changed.sort_by_cached_key(|[x, _]| list_key(x));
        Diff {
            added,
            removed,
            changed,
            unchanged,
            first_total: fmt_cents(first),
            second_total: fmt_cents(second),
            difference: fmt_cents(second - first),
        }
    }
}

/// How a diff is written: its JSON (what `serde_json::to_string_pretty` makes of a [`Diff`],
/// then a newline), or its text ([`Diff::to_text`], naming the two derivations).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum DiffFormat<'a> {
    Json,
    Text { first: &'a str, second: &'a str },
}

/// A listed line on its way to the output: where it goes in its list, and its text there.
struct Listed {
    key: (String, String, String, String, String, u64),
    text: Vec<u8>,
}

impl Listed {
    fn of(b: &BillView, text: Vec<u8>) -> Listed {
        Listed { key: (b.resource.clone(), b.item.to_string(), b.mode.to_string(), b.start.clone(), b.end.clone(), b.event), text }
    }
}

/// On the temporary file: each field its length (4 bytes, little endian) and its bytes, the
/// event's position (8 bytes), then the text.
impl Spill for Listed {
    fn encode(&self, out: &mut Vec<u8>) -> io::Result<()> {
        let (resource, item, mode, start, end, event) = &self.key;
        for field in [resource, item, mode, start, end] {
            out.extend_from_slice(&(field.len() as u32).to_le_bytes());
            out.extend_from_slice(field.as_bytes());
        }
        out.extend_from_slice(&event.to_le_bytes());
        out.extend_from_slice(&self.text);
        Ok(())
    }

    fn decode(bytes: &[u8]) -> io::Result<Listed> {
        let short = || io::Error::new(io::ErrorKind::InvalidData, "a listed line cut short in the temporary file");
        let mut at = 0;
        let mut field = || -> io::Result<String> {
            let length = u32::from_le_bytes(bytes.get(at..at + 4).ok_or_else(short)?.try_into().expect("4 bytes")) as usize;
            let text = bytes.get(at + 4..at + 4 + length).ok_or_else(short)?;
            at += 4 + length;
            String::from_utf8(text.to_vec()).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
        };
        let (resource, item, mode, start, end) = (field()?, field()?, field()?, field()?, field()?);
        let event = u64::from_le_bytes(bytes.get(at..at + 8).ok_or_else(short)?.try_into().expect("8 bytes"));
        Ok(Listed { key: (resource, item, mode, start, end, event), text: bytes[at + 8..].to_vec() })
    }

    fn order(&self, other: &Self) -> Ordering {
        self.key.cmp(&other.key)
    }
}

/// Listed lines in memory before a sorted run of them is written out, for each of the three
/// lists: a line's written form is larger than a bill line.
const RUN: usize = 16_384;

/// The lists on temporary files, each line already in the form it is written in.
struct Spilled<'f> {
    format: DiffFormat<'f>,
    removed: Sorted<Listed>,
    added: Sorted<Listed>,
    changed: Sorted<Listed>,
    /// The first error writing a temporary file: the diff is not written then.
    failed: Option<io::Error>,
}

impl<'f> Spilled<'f> {
    fn new(format: DiffFormat<'f>) -> Spilled<'f> {
        Spilled::with_runs_of(format, RUN)
    }

    fn with_runs_of(format: DiffFormat<'f>, run: usize) -> Spilled<'f> {
        let list = || Sorted::with_runs_of(run);
        Spilled { format, removed: list(), added: list(), changed: list(), failed: None }
    }

    fn keep(&mut self, result: io::Result<()>) {
        if let (None, Err(e)) = (&self.failed, result) {
            self.failed = Some(e);
        }
    }

    /// An element of the report's top-level arrays: indented two levels.
    fn json_element(&mut self, value: &impl Serialize) -> Vec<u8> {
        let mut text = Vec::new();
        let result = pretty_into(&mut text, value, 4);
        self.keep(result);
        text
    }
}

impl Lists for Spilled<'_> {
    fn only(&mut self, side: usize, view: BillView) {
        let text = match self.format {
            DiffFormat::Json => self.json_element(&view),
            DiffFormat::Text { .. } => only_line(if side == FIRST { "-" } else { "+" }, &view).into_bytes(),
        };
        let list = if side == FIRST { &mut self.removed } else { &mut self.added };
        let result = list.push(Listed::of(&view, text));
        self.keep(result);
    }

    fn changed(&mut self, pair: [BillView; 2]) {
        let text = match self.format {
            DiffFormat::Json => self.json_element(&pair),
            DiffFormat::Text { .. } => changed_line(&pair[0], &pair[1]).into_bytes(),
        };
        let result = self.changed.push(Listed::of(&pair[0], text));
        self.keep(result);
    }
}

/// [`diff_log`] written to `out` as `format` says, byte for byte what [`Diff::to_text`] or the
/// JSON of the [`Diff`] would be, without holding the lines it lists: they go to temporary
/// files as they are found, each in its written form, and are merged back in their order as
/// they are written. Nothing is written unless the whole log was read. The outer error is the
/// log's; the inner one writing the output or a temporary file.
pub fn write_diff_log<S: EventSource>(
    source: &S,
    against: &Against,
    format: DiffFormat<'_>,
    out: &mut impl Write,
) -> Result<io::Result<()>, S::Error> {
    let pairing = pair_log(source, against, || Spilled::new(format))?;
    let (lists, unchanged, [first, second]) = pairing.finish();
    Ok(write_lists(lists, unchanged, [first, second], out))
}

fn write_lists(lists: Spilled<'_>, unchanged: usize, [first, second]: [Decimal; 2], out: &mut impl Write) -> io::Result<()> {
    if let Some(e) = lists.failed {
        return Err(e);
    }
    let counts = [lists.added.len(), lists.removed.len(), lists.changed.len()];
    let totals = [fmt_cents(first), fmt_cents(second), fmt_cents(second - first)];
    let mut w = io::BufWriter::with_capacity(1 << 16, out);
    match lists.format {
        DiffFormat::Json => {
            w.write_all(b"{\n  \"added\": ")?;
            write_array(lists.added, &mut w)?;
            w.write_all(b",\n  \"removed\": ")?;
            write_array(lists.removed, &mut w)?;
            w.write_all(b",\n  \"changed\": ")?;
            write_array(lists.changed, &mut w)?;
            write!(w, ",\n  \"unchanged\": {unchanged}")?;
            for (name, total) in ["first_total", "second_total", "difference"].into_iter().zip(&totals) {
                write!(w, ",\n  \"{name}\": {}", serde_json::to_string(total).map_err(io::Error::other)?)?;
            }
            w.write_all(b"\n}\n")?;
        }
        DiffFormat::Text { first, second } => {
            writeln!(w, "{first} → {second}")?;
            for list in [lists.removed, lists.added, lists.changed] {
                for listed in list.into_sorted()? {
                    w.write_all(&listed?.text)?;
                }
            }
            let [added, removed, changed] = counts;
            let [first, second, difference] = &totals;
            writeln!(w, "{added} added, {removed} removed, {changed} changed, {unchanged} unchanged; total {first} → {second} ({difference})")?;
        }
    }
    w.flush()
}

/// A list as a JSON array in the report: `[]`, or its elements one a line, closed at the
/// report's first level.
fn write_array(list: Sorted<Listed>, w: &mut impl Write) -> io::Result<()> {
    if list.len() == 0 {
        return w.write_all(b"[]");
    }
    let mut first = true;
    for listed in list.into_sorted()? {
        w.write_all(if first { b"[\n" } else { b",\n" })?;
        first = false;
        w.write_all(&listed?.text)?;
    }
    w.write_all(b"\n  ]")
}

/// Two derivations' bills compared, from their projections (each keeping every bill).
pub fn diff(first: &Projections, second: &Projections) -> Diff {
    let mut pairing = Pairing::new(InMemory::default());
    for (side, p) in [(FIRST, first), (SECOND, second)] {
        for bill in &p.bills {
            pairing.take(side, BillView::of(bill), bill.line.amounts.payable);
        }
    }
    pairing.into_diff()
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
/// other not yet, and what the diff shows ([`write_diff_log`] writes it without holding it).
///
/// As known at T against now: what was known at T is a prefix of the log, so each of its lines
/// is the same line now (counted, not kept), and every later one is added.
pub fn diff_log<S: EventSource>(source: &S, against: &Against) -> Result<Diff, S::Error> {
    Ok(pair_log(source, against, InMemory::default)?.into_diff())
}

/// The lines of a log paired as [`diff_log`] says, listed in what `lists` makes.
fn pair_log<S: EventSource, L: Lists>(source: &S, against: &Against, lists: impl Fn() -> L) -> Result<Pairing<L>, S::Error> {
    Ok(match against {
        Against::Instant(t) => {
            let mut pairing = Pairing::new(lists());
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
                            pairing.only(SECOND, BillView::of_line(at.position, line), line.amounts.payable);
                        }
                    }
                },
            )?;
            pairing
        }
        Against::WhatIf(what_if) => match against_what_if(source, what_if, true, lists())? {
            Some(pairing) => pairing,
            // A late command after a clock that moved by itself: at the commands' pace, as `rerun`.
            None => against_what_if(source, what_if, false, lists())?.expect("a re-run at its commands' pace is always in step"),
        },
    })
}

/// The log's lines paired with those of a re-run of its commands under `what_if`, the re-run
/// keeping pace with the log's instants or not (`audit`'s `walk` says why); none if it could not.
fn against_what_if<S: EventSource, L: Lists>(source: &S, what_if: &WhatIf, paced: bool, lists: L) -> Result<Option<Pairing<L>>, S::Error> {
    let mut pairing = Pairing::new(lists);
    // The re-run's positions: its events numbered from 1, as its log would be.
    let mut position = 0;
    let in_step = rerun_beside(source, what_if, paced, |seen| match seen {
        Beside::Recorded(at, line) => pairing.take(FIRST, BillView::of_line(at, line), line.amounts.payable),
        Beside::Rerun(step) => rerun_lines(step, &mut position, &mut pairing),
    })?;
    Ok(in_step.then_some(pairing))
}

/// A re-run's step: its events numbered on from `position`, its lines taken as the second side.
fn rerun_lines<L: Lists>(step: Step, position: &mut u64, pairing: &mut Pairing<L>) {
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
        for b in &self.removed {
            out.push_str(&only_line("-", b));
        }
        for b in &self.added {
            out.push_str(&only_line("+", b));
        }
        for [x, y] in &self.changed {
            out.push_str(&changed_line(x, y));
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

/// A line only one side has, as the text shows it (`-` the first, `+` the second).
fn only_line(sign: &str, b: &BillView) -> String {
    format!("{sign} {} {} {} {} .. {} payable {}\n", b.resource, b.mode, b.item, b.start, b.end, b.payable)
}

/// A line with other amounts, as the text shows it.
fn changed_line(x: &BillView, y: &BillView) -> String {
    let delta = Decimal::from_str(&y.payable).unwrap_or_default() - Decimal::from_str(&x.payable).unwrap_or_default();
    format!("~ {} {} {} {} .. {} payable {} → {} ({})\n", x.resource, x.mode, x.item, x.start, x.end, x.payable, y.payable, fmt_cents(delta))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn view(resource: u8, hour: u8, event: u64, payable: u8) -> BillView {
        let at = |h: u8| format!("2023-04-01T{h:02}:00:00+08:00");
        BillView {
            resource: format!("p{resource}"),
            account: "a".into(),
            mode: "on_demand",
            item: "compute",
            start: at(hour),
            end: at(hour + 1),
            list_price: payable.to_string(),
            discount: "0".into(),
            round_off: "0".into(),
            payable: format!("{payable}.00"),
            event,
        }
    }

    proptest! {
        /// The written diff, its lists on temporary files in runs of a few lines, is byte for
        /// byte the in-memory diff's JSON and text: lines on one side only, repeated ones (the
        /// n-th paired with the n-th), the same and changed amounts, the two sides interleaved.
        #[test]
        fn a_written_diff_is_the_in_memory_one(
            lines in prop::collection::vec((0usize..2, 0u8..3, 0u8..4, 0u8..3), 0..40),
            run in 1usize..6,
        ) {
            fn feed<L: Lists>(pairing: &mut Pairing<L>, lines: &[(usize, u8, u8, u8)]) {
                for (i, &(side, resource, hour, payable)) in lines.iter().enumerate() {
                    pairing.take(side, view(resource, hour, i as u64 + 1, payable), Decimal::from(payable));
                }
            }
            let mut in_memory = Pairing::new(InMemory::default());
            feed(&mut in_memory, &lines);
            let diff = in_memory.into_diff();
            for format in [DiffFormat::Json, DiffFormat::Text { first: "then", second: "now" }] {
                let mut spilled = Pairing::new(Spilled::with_runs_of(format, run));
                feed(&mut spilled, &lines);
                let (lists, unchanged, totals) = spilled.finish();
                let mut written = Vec::new();
                write_lists(lists, unchanged, totals, &mut written).unwrap();
                let expected = match format {
                    DiffFormat::Json => serde_json::to_string_pretty(&diff).unwrap() + "\n",
                    DiffFormat::Text { first, second } => diff.to_text(first, second),
                };
                prop_assert_eq!(String::from_utf8(written).unwrap(), expected);
            }
        }
    }
}
