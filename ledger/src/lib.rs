//! The ledger: poolbill's one pure core. It holds the projections of a log and moves them on
//! the only two ways a log grows — the clock passing an instant (what falls due: settlements,
//! expiry, arrears steps; R4–R8, R12, R13) and a command decided at its instant, after what is
//! due by then (R1) — and the one way a log is read back: folding a recorded event.
//!
//! The live engine, re-runs (audit, what-if, the property tests), replay, explain and timeline
//! all go through it, so that what is decided live and what an auditor recomputes are the same
//! steps by construction. No clock: every instant is given. The steps and the fold are pure;
//! the few functions that take a store (`replay`, `load_live`, `check_snapshots`, `recall`) read it only
//! through the `EventStore` trait.

pub mod merkle;
pub mod recall;
pub mod snapshot;

use poolbill_domain::{handle, tick, Command, Event, Instant, Rejection};
use poolbill_projections::{ProjectionError, Projections};
use poolbill_store::{Envelope, EventStore, StoreError};
use snapshot::{Snapshot, SnapshotError};
use std::borrow::Borrow;
use std::collections::HashMap;

/// How much of a log to fold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Upto {
    All,
    /// Everything that had happened by this instant, inclusive (time travel).
    Instant(Instant),
    /// Everything up to and including this global position.
    Position(u64),
}

impl Upto {
    /// Whether an event recorded as `recorded` is folded (instants never go back and positions
    /// only grow in a log: once one is not, no later one is).
    pub fn includes(&self, recorded: &Recorded) -> bool {
        match self {
            Upto::All => true,
            Upto::Instant(t) => recorded.at <= *t,
            Upto::Position(p) => recorded.position <= *p,
        }
    }
}

/// Where and when an event was recorded: all the fold needs of its envelope besides the event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recorded {
    pub position: u64,
    pub at: Instant,
}

impl Recorded {
    pub fn of(envelope: &Envelope) -> Recorded {
        Recorded { position: envelope.position, at: envelope.at }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FoldError {
    #[error("reading the log")]
    Store(#[from] StoreError),
    #[error("replaying the log")]
    Projection(#[from] ProjectionError),
}

/// The one fold: envelopes in log order, until the first one past `upto`, each decoded
/// (upcast) and applied; `visit` then sees the projections, the envelope and its event. Every
/// reader of a log — the engine's open, replay, explain, timeline — folds with it. Instants
/// never go back in a log, so "as of T" is a prefix.
pub fn fold_visit<E, I>(envelopes: I, upto: Upto, visit: impl FnMut(&Projections, &E, Event)) -> Result<Projections, FoldError>
where
    E: Borrow<Envelope>,
    I: IntoIterator<Item = Result<E, StoreError>>,
{
    fold_from(Projections::new(), envelopes, upto, visit)
}

/// [`fold_visit`] from projections already folded (a snapshot, or history-free
/// [`Projections::live`]): the envelopes must continue where they end.
pub fn fold_from<E, I>(
    mut projections: Projections,
    envelopes: I,
    upto: Upto,
    visit: impl FnMut(&Projections, &E, Event),
) -> Result<Projections, FoldError>
where
    E: Borrow<Envelope>,
    I: IntoIterator<Item = Result<E, StoreError>>,
{
    let _span = tracing::info_span!("replay", upto = ?upto).entered();
    let event = |item: &mut E| {
        let envelope: &Envelope = (*item).borrow();
        poolbill_projections::event_of(envelope).map_err(|source| ProjectionError { position: envelope.position, source })
    };
    fold_items(&mut projections, envelopes, upto, |item: &E| Recorded::of(item.borrow()), event, visit)?;
    tracing::debug!(events = projections.events, bills = projections.bills.len(), "replayed");
    Ok(projections)
}

/// [`fold_from`] for events already read (decoded, upcast) by whoever read their envelopes —
/// a portable log's reader, which reads every event to check it — each with where and when it
/// was recorded: the same fold, without reading any event twice. The events are lent, and
/// folded into `projections` where they are, so that a long log can be folded a batch at a
/// time: false once an event past `upto` was met (it and the rest of the batch are not
/// folded, and no later event should be).
pub fn fold_events<'e, I>(projections: &mut Projections, events: I, upto: Upto, mut visit: impl FnMut(&Projections, &Recorded, &Event)) -> bool
where
    I: IntoIterator<Item = &'e (Recorded, Event)>,
{
    let items = events.into_iter().map(Ok);
    let event = |item: &mut &'e (Recorded, Event)| Ok(&item.1);
    match fold_items(projections, items, upto, |item| item.0, event, |p, item, e| visit(p, &item.0, e)) {
        Ok(all) => all,
        Err(_) => unreachable!("events already read fold without error"),
    }
}

/// The fold itself: items in log order until the first one past `upto`, each one's event read
/// (`event`) only then, applied, and shown to `visit`. True if no item was past `upto`.
fn fold_items<T, V, I>(
    projections: &mut Projections,
    items: I,
    upto: Upto,
    recorded: impl Fn(&T) -> Recorded,
    mut event: impl FnMut(&mut T) -> Result<V, ProjectionError>,
    mut visit: impl FnMut(&Projections, &T, V),
) -> Result<bool, FoldError>
where
    V: Borrow<Event>,
    I: IntoIterator<Item = Result<T, StoreError>>,
{
    for item in items {
        let mut item = item?;
        let at = recorded(&item);
        if !upto.includes(&at) {
            return Ok(false);
        }
        let event = event(&mut item)?;
        projections.apply_event(at.position, at.at, event.borrow());
        visit(projections, &item, event);
    }
    Ok(true)
}

/// The live projections (state and counters) and stream versions of a store's whole log, as a
/// live engine needs them: from the newest snapshot that reads back, then the events after it.
pub struct Loaded {
    pub projections: Projections,
    pub versions: HashMap<String, u64>,
    /// The position of the snapshot it started from, if one was used.
    pub snapshot: Option<u64>,
    /// A snapshot that could not be used, and why (the log was replayed instead).
    pub ignored: Option<(u64, SnapshotError)>,
    /// Events folded after the snapshot (all of them without one).
    pub folded: u64,
}

/// How many events one catch-up transaction indexes.
const TAG_BATCH: usize = 20_000;

/// Bring the indexes a store keeps beside its log up to date, in one pass over the events
/// beyond either: the tags ([`poolbill_projections::tags_of`]) and the Merkle tree (each
/// event's [`poolbill_projections::leaf_hash`]), in order, in batches. A store written before
/// an index was kept gets it once; the events themselves are not touched. Returns how many
/// events were read.
pub fn catch_up_indexes(store: &dyn EventStore) -> Result<u64, FoldError> {
    catch_up(store, true, true)
}

/// [`catch_up_indexes`] for the tags alone.
pub fn catch_up_tags(store: &dyn EventStore) -> Result<u64, FoldError> {
    catch_up(store, true, false)
}

/// [`catch_up_indexes`] for the Merkle index alone (the engine runs it off its own thread:
/// hashing is a few microseconds an event).
pub fn catch_up_merkle(store: &dyn EventStore) -> Result<u64, FoldError> {
    catch_up(store, false, true)
}

fn catch_up(store: &dyn EventStore, with_tags: bool, with_merkle: bool) -> Result<u64, FoldError> {
    // An index built under another tagging is rebuilt whole.
    if with_tags && store.tags_version()? != poolbill_projections::TAGS_VERSION {
        tracing::info!(from = store.tags_version()?, to = poolbill_projections::TAGS_VERSION, "the tag index is rebuilt under a new tagging");
        store.reset_tags(poolbill_projections::TAGS_VERSION)?;
    }
    // An index not asked for counts as up to date.
    let tagged = if with_tags { store.tagged_through()? } else { u64::MAX };
    let hashed = if with_merkle { store.merkle_through()? } else { u64::MAX };
    let last = store.last_position()?;
    let from = tagged.min(hashed);
    if from >= last {
        return Ok(0);
    }
    let _span = tracing::info_span!("indexing", from = from + 1, to = last).entered();
    let (mut tags, mut leaves) = (Vec::new(), Vec::new());
    let mut read = 0;
    for envelope in store.read_all(from + 1) {
        let envelope = envelope?;
        let position = envelope.position;
        let unreadable = |source| ProjectionError { position, source };
        if position > tagged {
            let event = poolbill_projections::event_of(&envelope).map_err(unreadable)?;
            tags.push((position, poolbill_projections::tags_of(&event)));
        }
        if position > hashed {
            leaves.push((position, poolbill_projections::leaf_hash(&envelope).map_err(unreadable)?));
        }
        if tags.len() == TAG_BATCH {
            store.tag_existing(&std::mem::take(&mut tags))?;
        }
        if leaves.len() == TAG_BATCH {
            store.merkle_extend(&std::mem::take(&mut leaves))?;
        }
        read += 1;
    }
    if !tags.is_empty() {
        store.tag_existing(&tags)?;
    }
    if !leaves.is_empty() {
        store.merkle_extend(&leaves)?;
    }
    tracing::info!(read, "tags and Merkle leaves of older events recorded");
    Ok(read)
}

/// How many positions [`check_tags`] compares at a time (its memory is one block's postings).
const TAG_CHECK_BLOCK: u64 = 1 << 16;

/// Check the store's tag index against its log without writing: the tags of every event it
/// covers computed again ([`poolbill_projections::tags_of`]) and compared with the posting lists,
/// a block of positions at a time, then each tag's count, so that a posting missing, moved or
/// added is found. Returns how many events the index covers; a difference is `Corrupt` naming
/// the tag and the first position that differs. An index under another tagging version is not
/// compared (readers rebuild it before use) and counts as covering nothing.
pub fn check_tags(store: &dyn EventStore) -> Result<u64, FoldError> {
    if store.tags_version()? != poolbill_projections::TAGS_VERSION {
        return Ok(0);
    }
    let through = store.tagged_through()?;
    let differs = |tag: &str, position: u64, what: String| -> FoldError {
        let detail = format!("the tag index's {tag:?} {what}: the log or its index was changed");
        StoreError::Corrupt { position, detail }.into()
    };
    let mut totals: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    let mut block: std::collections::BTreeMap<String, Vec<u64>> = std::collections::BTreeMap::new();
    let mut block_start = 1;
    let mut compare = |block: &mut std::collections::BTreeMap<String, Vec<u64>>, start: u64, end: u64| -> Result<(), FoldError> {
        for (tag, computed) in std::mem::take(block) {
            let kept = store.tagged(&tag, start, computed.len() + 1)?;
            if let Some(k) = computed.iter().zip(&kept).position(|(c, k)| c != k) {
                return Err(differs(&tag, computed[k].min(kept[k]), format!("lists position {} where its events give {}", kept[k], computed[k])));
            }
            if kept.len() < computed.len() {
                return Err(differs(&tag, computed[kept.len()], format!("lacks position {}", computed[kept.len()])));
            }
            if let Some(&extra) = kept.get(computed.len()).filter(|&&p| p < end) {
                return Err(differs(&tag, extra, format!("lists position {extra}, whose event does not carry it")));
            }
            *totals.entry(tag).or_default() += computed.len() as u64;
        }
        Ok(())
    };
    for envelope in store.read_all(1).take(through as usize) {
        let envelope = envelope?;
        let position = envelope.position;
        if position >= block_start + TAG_CHECK_BLOCK {
            compare(&mut block, block_start, position)?;
            block_start = position;
        }
        let event = poolbill_projections::event_of(&envelope).map_err(|source| ProjectionError { position, source })?;
        for tag in poolbill_projections::tags_of(&event) {
            let list = block.entry(tag).or_default();
            // A tag given twice for one event is one posting.
            if list.last() != Some(&position) {
                list.push(position);
            }
        }
    }
    compare(&mut block, block_start, through + 1)?;
    // Postings under tags no event of their block carries.
    for (tag, kept) in store.tag_counts("")? {
        let computed = totals.get(&tag).copied().unwrap_or(0);
        if kept != computed {
            let first = store.tagged(&tag, 0, 1)?.first().copied().unwrap_or(0);
            return Err(differs(&tag, first, format!("holds {kept} postings where its events give {computed}")));
        }
    }
    Ok(through)
}

/// Load a store's live projections from its newest readable snapshot plus the tail of its log.
pub fn load_live(store: &dyn EventStore) -> Result<Loaded, FoldError> {
    let last = store.last_position()?;
    let (start, versions, snapshot, ignored) = match store.snapshot_at_or_before(last)? {
        Some((position, bytes)) => match Snapshot::decode(position, &bytes) {
            Ok(snapshot) => {
                let (projections, versions) = snapshot.into_parts();
                (projections, versions, Some(position), None)
            }
            Err(why) => {
                tracing::warn!(position, error = %why, "a snapshot cannot be used: the log is replayed instead");
                (Projections::live(), HashMap::new(), None, Some((position, why)))
            }
        },
        None => (Projections::live(), HashMap::new(), None, None),
    };
    let from = start.last_position + 1;
    let mut versions = versions;
    let mut folded = 0;
    let projections = fold_from(start, store.read_all(from), Upto::All, |_, envelope: &Envelope, _| {
        versions.insert(envelope.stream.clone(), envelope.version);
        folded += 1;
    })?;
    tracing::debug!(snapshot = ?snapshot, folded, "loaded");
    Ok(Loaded { projections, versions, snapshot, ignored, folded })
}

/// What `verify` found of a store's snapshots: each kept one checked against a replay of the
/// log up to its position.
#[derive(Debug, Default)]
pub struct SnapshotsChecked {
    /// Snapshots equal to the replay of their prefix.
    pub sound: Vec<u64>,
    /// Snapshots that cannot be read or disagree with the replay, and how.
    pub unsound: Vec<(u64, String)>,
    /// Snapshots of a format this build does not read (an older build's): never used, so
    /// neither sound nor damaged.
    pub other_format: Vec<(u64, u32)>,
    /// The live projections of the whole log (a by-product of the one pass).
    pub projections: Projections,
}

/// Check every kept snapshot against a replay of its prefix, in one pass over the log.
pub fn check_snapshots(store: &dyn EventStore) -> Result<SnapshotsChecked, FoldError> {
    let mut checked = SnapshotsChecked::default();
    let mut kept = Vec::new();
    for position in store.snapshot_positions()? {
        match store.snapshot_at_or_before(position)?.map(|(p, bytes)| Snapshot::decode(p, &bytes)) {
            Some(Ok(snapshot)) => kept.push(snapshot),
            Some(Err(SnapshotError::Format(format))) => checked.other_format.push((position, format)),
            Some(Err(why)) => checked.unsound.push((position, why.to_string())),
            None => checked.unsound.push((position, "listed but not found".into())),
        }
    }
    if kept.first().is_some_and(|s| s.position == 0) {
        let empty = kept.remove(0);
        compare(&empty, &Projections::live(), &HashMap::new(), &mut checked);
    }
    let mut versions = HashMap::new();
    let mut next = kept.into_iter().peekable();
    let mut results = Vec::new();
    let projections = fold_from(Projections::live(), store.read_all(1), Upto::All, |p: &Projections, envelope: &Envelope, _| {
        versions.insert(envelope.stream.clone(), envelope.version);
        while next.peek().is_some_and(|s| s.position == envelope.position) {
            let snapshot = next.next().expect("peeked");
            let replayed = Snapshot::in_format(p, &versions, snapshot.format);
            results.push((snapshot, replayed));
        }
    })?;
    for (kept, replayed) in results {
        match kept == replayed {
            true => checked.sound.push(kept.position),
            false => checked.unsound.push((kept.position, "it disagrees with a replay of the log up to its position".into())),
        }
    }
    for beyond in next {
        checked.unsound.push((beyond.position, format!("it is past the end of the log ({})", projections.last_position)));
    }
    checked.projections = projections;
    Ok(checked)
}

fn compare(kept: &Snapshot, projections: &Projections, versions: &HashMap<String, u64>, checked: &mut SnapshotsChecked) {
    if *kept == Snapshot::in_format(projections, versions, kept.format) {
        checked.sound.push(kept.position);
    } else {
        checked.unsound.push((kept.position, "it disagrees with a replay of the log up to its position".into()));
    }
}

/// [`fold_visit`], reporting each position folded.
pub fn fold_with<I>(envelopes: I, upto: Upto, mut progress: impl FnMut(u64)) -> Result<Projections, FoldError>
where
    I: IntoIterator<Item = Result<Envelope, StoreError>>,
{
    fold_visit(envelopes, upto, |_, envelope: &Envelope, _| progress(envelope.position))
}

/// [`fold_with`] without progress.
pub fn fold<I>(envelopes: I, upto: Upto) -> Result<Projections, FoldError>
where
    I: IntoIterator<Item = Result<Envelope, StoreError>>,
{
    fold_with(envelopes, upto, |_| {})
}

/// Projections of a store's log as of `upto`.
pub fn replay(store: &dyn EventStore, upto: Upto) -> Result<Projections, FoldError> {
    fold(store.read_all(1), upto)
}

/// What one step appends to the log: events that happened at one instant, caused by a command
/// (its id and its input first, `command_received`) or by the clock passing (no id).
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub at: Instant,
    pub command_id: Option<String>,
    pub events: Vec<Event>,
    /// For a command: its refusal, when refused (the events then record it).
    pub rejection: Option<Rejection>,
}

/// The projections of a log, and the steps that extend it.
#[derive(Clone, Debug)]
pub struct Ledger {
    projections: Projections,
}

impl Default for Ledger {
    fn default() -> Ledger {
        Ledger::new()
    }
}

impl Ledger {
    /// A ledger of an empty log, keeping every bill and refusal ([`Projections::new`]).
    pub fn new() -> Ledger {
        Ledger { projections: Projections::new() }
    }

    /// Continue from projections already folded (e.g. a snapshot, or a replay).
    pub fn from_projections(projections: Projections) -> Ledger {
        Ledger { projections }
    }

    pub fn projections(&self) -> &Projections {
        &self.projections
    }

    pub fn into_projections(self) -> Projections {
        self.projections
    }

    /// Forget the gone resources with nothing left to settle (`State::forget_gone`), for a
    /// live engine whose memory follows what is live. Returns how many records went.
    pub fn forget_gone(&mut self) -> usize {
        self.projections.state.forget_gone()
    }

    /// Bring back from `store` the gone resources among `ids` that were forgotten
    /// ([`recall::recall`]), before a decision that looks them up. Returns how many came back.
    pub fn recall(&mut self, store: &dyn EventStore, ids: &[String]) -> Result<usize, FoldError> {
        recall::recall(store, &mut self.projections.state, ids)
    }

    /// Fold one event the log recorded at `position` and instant `at` (reading a log back).
    pub fn apply(&mut self, position: u64, at: Instant, event: &Event) {
        self.projections.apply_event(position, at, event);
    }

    /// The next time-driven step due by `to`, applied; none when nothing is due by then.
    pub fn tick(&mut self, to: Instant) -> Option<Step> {
        let (at, events) = tick(&self.projections.state, to)?;
        let step = Step { at, command_id: None, events, rejection: None };
        self.record(&step);
        Some(step)
    }

    /// Let the clock pass `to`: every step due by then, in instant order, each applied before
    /// the next is decided and handed to `emit`.
    pub fn advance(&mut self, to: Instant, mut emit: impl FnMut(Step)) {
        while let Some(step) = self.tick(to) {
            emit(step);
        }
    }

    /// Decide `command` at `at` against the current state and apply what it appends (its
    /// input, then its events or the record of its refusal). The clock must already have passed
    /// `at` ([`Ledger::advance`]); [`Ledger::execute`] does both.
    pub fn decide(&mut self, command_id: Option<String>, at: Instant, command: &Command, index: Option<u64>) -> Step {
        let handled = handle(&self.projections.state, command, at, index);
        let step = Step { at: handled.at, command_id, events: handled.events, rejection: handled.rejection };
        self.record(&step);
        step
    }

    /// Decide `command` at `at` and apply it only if it is accepted: a refusal leaves no trace
    /// (for terms a what-if puts in force, which need no record when they change nothing).
    pub fn decide_if_accepted(&mut self, command_id: Option<String>, at: Instant, command: &Command) -> Option<Step> {
        let handled = handle(&self.projections.state, command, at, None);
        if handled.rejection.is_some() {
            return None;
        }
        let step = Step { at: handled.at, command_id, events: handled.events, rejection: None };
        self.record(&step);
        Some(step)
    }

    /// Run what is due by `at`, then decide `command` at `at` (R1: time-driven events at `at`
    /// come before it). Every step, the command's last, is applied and handed to `emit`.
    pub fn execute(&mut self, command_id: Option<String>, at: Instant, command: &Command, index: Option<u64>, mut emit: impl FnMut(Step)) {
        self.advance(at, &mut emit);
        emit(self.decide(command_id, at, command, index));
    }

    fn record(&mut self, step: &Step) {
        for event in &step.events {
            let position = self.projections.last_position + 1;
            self.projections.apply_event(position, step.at, event);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::DateTime;
    use poolbill_domain::{BillingMode, PoolType, Price};
    use rust_decimal::Decimal;

    fn t(s: &str) -> Instant {
        DateTime::parse_from_rfc3339(s).unwrap()
    }

    fn buy(pool: &str) -> Command {
        Command::Purchase {
            account: "a".into(),
            pool: pool.into(),
            spec: "s".into(),
            nodes: 1,
            mode: BillingMode::OnDemand,
            term: None,
            pool_type: PoolType::Dedicated,
            region: None,
            ready: true,
        }
    }

    /// A small history: prices, an account, an on-demand pool from 10:00 (3.50/h).
    fn history(steps: &mut Vec<Step>) -> Ledger {
        let mut ledger = Ledger::new();
        let at = t("2023-04-01T10:00:00+08:00");
        let price = Price { hourly: Some(Decimal::new(350, 2)), monthly: Some(Decimal::new(175000, 2)), yearly: None };
        let open = Command::OpenAccount { account: "a".into(), balance: Decimal::new(1000, 0), level: "standard".into(), discount: Decimal::ZERO };
        for (id, command) in [("price", Command::SetPrice { spec: "s".into(), price }), ("open", open), ("buy", buy("p"))] {
            ledger.execute(Some(id.into()), at, &command, None, |s| steps.push(s));
        }
        ledger
    }

    #[test]
    fn a_command_comes_after_what_is_due_at_its_instant_r1() {
        // Given a pool billed from 10:00, when a command comes at 12:00, then the 11:00 and
        // 12:00 settlements come first, each its own step, then the command.
        let mut ledger = history(&mut Vec::new());
        let mut steps = Vec::new();
        let top_up = Command::TopUp { account: "a".into(), amount: Decimal::ONE };
        ledger.execute(Some("top".into()), t("2023-04-01T12:00:00+08:00"), &top_up, None, |s| steps.push(s));
        let shape: Vec<(Instant, Option<&str>)> = steps.iter().map(|s| (s.at, s.command_id.as_deref())).collect();
        assert_eq!(
            shape,
            vec![(t("2023-04-01T11:00:00+08:00"), None), (t("2023-04-01T12:00:00+08:00"), None), (t("2023-04-01T12:00:00+08:00"), Some("top"))]
        );
        assert_eq!(ledger.projections().state.accounts["a"].balance, Decimal::new(1000 - 7 + 1, 0));
    }

    #[test]
    fn folding_the_steps_gives_what_running_them_gave() {
        // The one fold: a log read back (apply) equals the ledger that wrote it.
        let mut steps = Vec::new();
        let mut live = history(&mut steps);
        let refused = Command::Delete { pool: "nowhere".into() };
        live.execute(Some("bad".into()), t("2023-04-01T13:30:00+08:00"), &refused, None, |s| steps.push(s));
        live.advance(t("2023-04-01T15:00:00+08:00"), |s| steps.push(s));
        assert!(steps.iter().any(|s| s.rejection.is_some()), "the refusal is a step too");
        let mut read = Ledger::new();
        let mut position = 0;
        for step in &steps {
            for event in &step.events {
                position += 1;
                read.apply(position, step.at, event);
            }
        }
        let (a, b) = (live.projections(), read.projections());
        assert_eq!(a.state, b.state);
        assert_eq!(a.bills, b.bills);
        assert_eq!((a.events, a.last_position), (b.events, b.last_position));
        assert_eq!(a.bills.len(), 5, "10:00 to 15:00, one line an hour");
    }
}

#[cfg(test)]
mod tag_check_tests {
    use super::*;
    use poolbill_store::conformance::{req, ts, T0};
    use poolbill_store_sled::SledStore;

    /// `n` events alternating between pools `a` and `b`, in the engine's encoding, indexed.
    fn indexed_store(n: u64) -> SledStore {
        let store = SledStore::temporary().unwrap();
        let events = (0..n)
            .map(|i| {
                let pool = if i % 2 == 0 { "a" } else { "b" };
                poolbill_projections::new_event(&Event::PoolDeleted { account: "acct".into(), pool: pool.into() }, ts(T0))
            })
            .collect();
        store.append(req(Some("c"), events)).unwrap();
        catch_up_tags(&store).unwrap();
        store
    }

    /// The index rebuilt with position 1 tagged `first` in place of its own tags.
    fn with_first_tagged(store: &SledStore, first: &[&str]) {
        store.reset_tags(poolbill_projections::TAGS_VERSION).unwrap();
        store.tag_existing(&[(1, first.iter().map(|t| t.to_string()).collect())]).unwrap();
        catch_up_tags(store).unwrap();
    }

    fn corrupt_at(result: Result<u64, FoldError>) -> (u64, String) {
        match result {
            Err(FoldError::Store(StoreError::Corrupt { position, detail })) => (position, detail),
            other => panic!("expected damage, got {other:?}"),
        }
    }

    #[test]
    fn an_index_rebuilt_from_its_log_checks_whole_across_blocks() {
        let n = TAG_CHECK_BLOCK + 300;
        let store = indexed_store(n);
        assert_eq!(check_tags(&store).unwrap(), n);
        assert_eq!(store.tag_counts("resource:").unwrap(), vec![("resource:a".to_string(), n / 2), ("resource:b".to_string(), n / 2)]);
    }

    #[test]
    fn a_posting_missing_moved_or_added_is_named() {
        let store = indexed_store(40);
        // Moved: position 1 (pool a's) listed under b.
        with_first_tagged(&store, &["resource:b"]);
        let (position, detail) = corrupt_at(check_tags(&store));
        assert_eq!(position, 1, "{detail}");
        assert!(detail.contains("resource:"), "{detail}");
        // Missing: position 1 under no tag.
        with_first_tagged(&store, &[]);
        let (position, detail) = corrupt_at(check_tags(&store));
        assert_eq!(position, 1, "{detail}");
        assert!(detail.contains("\"resource:a\" lists position 3 where its events give 1"), "{detail}");
        // Added: a tag no event carries.
        with_first_tagged(&store, &["resource:a", "resource:ghost"]);
        let (position, detail) = corrupt_at(check_tags(&store));
        assert_eq!(position, 1, "{detail}");
        assert!(detail.contains("\"resource:ghost\" holds 1 postings where its events give 0"), "{detail}");
        // Rebuilt from the log: sound again.
        store.reset_tags(poolbill_projections::TAGS_VERSION).unwrap();
        catch_up_tags(&store).unwrap();
        assert_eq!(check_tags(&store).unwrap(), 40);
    }
}
