//! The engine: runs commands and the clock against a sled-backed event log, for embedding in an
//! async (tokio) service.
//!
//! One actor task owns the state. It takes every request queued at the moment, decides them in
//! order against the state its predecessors leave (applying their events speculatively), and
//! writes the lot as one chain with one flush (group commit). Only then does it answer: an
//! acknowledged command is on disk. If the write fails, the state is rebuilt from the log.

mod clock;

pub use clock::{spawn_clock, Clock, ManualClock, SystemClock};
pub use poolbill_ledger::Upto;

use poolbill_domain::{Command, Event, Instant, Rejection, Rule};
use poolbill_ledger::snapshot::{self, Snapshot};
use poolbill_ledger::{replay, FoldError, Ledger, Step};
use poolbill_projections::Projections;
use poolbill_store::{AppendOutcome, AppendRequest, CommandRecord, EventStore, ExpectedVersion, StoreError};
use poolbill_store_sled::SledStore;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

/// How often a command whose write failed is tried again.
pub const RETRIES: u32 = 3;
/// How many queued requests one group commit takes at most.
const MAX_BATCH: usize = 256;
/// How many appends are written per flush at most (a long clock advance writes in parts).
const MAX_CHAIN: usize = 1024;

/// A handle on a running engine; clone it freely.
#[derive(Clone)]
pub struct Engine {
    tx: mpsc::Sender<Request>,
    store: Arc<dyn EventStore>,
    /// Why the actor stopped, once it has.
    stopped: Arc<OnceLock<Arc<EngineError>>>,
}

/// What became of a command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    Accepted,
    Rejected { rule: Rule, reason: String },
}

/// The acknowledged result of a command: on disk before it is returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Executed {
    pub outcome: Outcome,
    /// The log positions its events (or its rejection record) took.
    pub first_position: Option<u64>,
    pub last_position: Option<u64>,
    /// True when the command id had been seen before: this is the first result, and nothing
    /// was appended again.
    pub duplicate: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("event store")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Replay(#[from] FoldError),
    /// Not written because an earlier request in the same group commit failed; safe to retry.
    #[error("not written, retry: {0}")]
    Aborted(String),
    /// The engine task has stopped.
    #[error("the engine has stopped")]
    Closed,
    /// The command id was already used for another command (another body or instant): nothing
    /// was done. A retry must repeat its command exactly; a new command needs a new id.
    #[error("command id {id:?} was already used for another command: first {first}, now {now}; nothing was done (a new command needs a new id)")]
    IdReused { id: String, first: String, now: String },
    /// A write failed and rebuilding the state from the log failed too: the engine stopped
    /// rather than go on from state that is not the log's. Every later request gets this.
    #[error("the engine stopped: after a failed write, its state could not be rebuilt from the log")]
    Stopped(#[source] Arc<EngineError>),
}

type Reader = Box<dyn FnOnce(&Projections) + Send>;

enum Request {
    Execute { id: String, at: Instant, command: Box<Command>, index: Option<u64>, reply: oneshot::Sender<Result<Executed, EngineError>> },
    Advance { to: Instant, reply: oneshot::Sender<Result<u64, EngineError>> },
    Read(Reader),
}

impl Engine {
    /// Open (or create) the store at `path`, rebuild state from its log, start the engine.
    pub async fn open(path: impl AsRef<Path>) -> Result<Engine, EngineError> {
        let path = path.as_ref().to_path_buf();
        let store = blocking(move || SledStore::open(path).map_err(EngineError::from)).await?;
        Engine::start(store).await
    }

    /// An engine on a temporary store, gone when dropped.
    pub async fn temporary() -> Result<Engine, EngineError> {
        let store = blocking(|| SledStore::temporary().map_err(EngineError::from)).await?;
        Engine::start(store).await
    }

    /// Start an engine on an open store: its newest snapshot plus the log after it rebuild
    /// the live state; a snapshot is kept every [`snapshot::EVERY`] events.
    pub async fn start(store: impl EventStore + 'static) -> Result<Engine, EngineError> {
        Engine::start_with(store, snapshot::EVERY).await
    }

    /// [`Engine::start`], keeping a snapshot every `snapshot_every` events.
    pub async fn start_with(store: impl EventStore + 'static, snapshot_every: u64) -> Result<Engine, EngineError> {
        let store: Arc<dyn EventStore> = Arc::new(store);
        let scan = store.clone();
        let (ledger, versions) = blocking(move || {
            // A store written before tags gets its index before anything is appended to it.
            poolbill_ledger::catch_up_tags(scan.as_ref())?;
            load(scan.as_ref(), snapshot_every)
        })
        .await?;
        let (tx, rx) = mpsc::channel(1024);
        let stopped = Arc::new(OnceLock::new());
        let mut actor = Actor::new(store.clone(), ledger, versions, rx, stopped.clone());
        actor.snapshot_every = snapshot_every.max(1);
        catch_up_merkle_aside(&actor.store, &actor.hashing);
        tokio::spawn(actor.run());
        Ok(Engine { tx, store, stopped })
    }

    /// Decide `command` at instant `at` (the clock first passes `at`, so every time-driven event
    /// due by then happens before it). A repeated `id` returns the first result.
    /// `index` is the caller's own reference (e.g. a scenario's command index), kept with a
    /// rejection.
    ///
    /// A write that failed (an expected-version conflict with another writer, a failed flush) is
    /// retried, at most [`RETRIES`] times, on state rebuilt from the log; the id keeps a retry
    /// from ever applying twice.
    pub async fn execute(&self, id: impl Into<String>, at: Instant, command: Command, index: Option<u64>) -> Result<Executed, EngineError> {
        let id = id.into();
        let span = tracing::info_span!("command", id = %id, r#type = command.type_name(), at = %at.to_rfc3339());
        self.execute_in(id, at, command, index).instrument(span).await
    }

    async fn execute_in(&self, id: String, at: Instant, command: Command, index: Option<u64>) -> Result<Executed, EngineError> {
        let mut attempt = 0;
        loop {
            match self.submit(id.clone(), at, command.clone(), index).await?.answer().await {
                Err(EngineError::Aborted(why)) if attempt < RETRIES => {
                    attempt += 1;
                    tracing::debug!(attempt, %why, "not written; retried on state rebuilt from the log");
                }
                done => {
                    match &done {
                        Ok(executed) => tracing::debug!(outcome = ?executed.outcome, duplicate = executed.duplicate, "done"),
                        Err(e) => tracing::warn!(error = %e, "failed"),
                    }
                    return done;
                }
            }
        }
    }

    /// Let the clock pass `to`: every time-driven event due by then, in instant order. Returns
    /// how many events that appended.
    pub async fn advance_to(&self, to: Instant) -> Result<u64, EngineError> {
        self.submit_advance(to).await?.answer().await
    }

    /// Hand a command to the engine without waiting for its answer (a pipeline): returns once
    /// the command is queued, with a handle on the answer [`execute`](Engine::execute) would
    /// give, which comes once the command's events are on disk. The writer decides queued
    /// requests in the order they were queued, so one task submitting commands one after
    /// another has them decided in that order, and those in flight together share group
    /// commits. Waits only while the engine's queue is full.
    ///
    /// Unlike `execute`, a command not written because an earlier write in its group commit
    /// failed is not retried (a retry would be decided after requests queued behind it): its
    /// answer is then [`EngineError::Aborted`], and submitting it again with the same id is safe.
    pub async fn submit(&self, id: impl Into<String>, at: Instant, command: Command, index: Option<u64>) -> Result<Submitted<Executed>, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.send(Request::Execute { id: id.into(), at, command: Box::new(command), index, reply }).await?;
        Ok(Submitted { reply: rx, stopped: self.stopped.clone() })
    }

    /// [`advance_to`](Engine::advance_to) as a pipeline step, in order with
    /// [`submit`](Engine::submit): returns once queued; the answer is how many events the clock
    /// appended, once they are on disk.
    pub async fn submit_advance(&self, to: Instant) -> Result<Submitted<u64>, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.send(Request::Advance { to, reply }).await?;
        Ok(Submitted { reply: rx, stopped: self.stopped.clone() })
    }

    /// Read the current (acknowledged) live projections: state and counters. Bills and
    /// refusals are history, kept in the log: read them with [`Engine::as_of`].
    pub async fn read<T: Send + 'static>(&self, f: impl FnOnce(&Projections) -> T + Send + 'static) -> Result<T, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.send(Request::Read(Box::new(move |p| {
            let _ = reply.send(f(p));
        })))
        .await?;
        rx.await.map_err(|_| self.closed())
    }

    /// The contract's output document, as of now, read from the log and built in memory (for
    /// a long log, `poolbill_replay::document::write_document` streams it instead).
    pub async fn document(&self) -> Result<poolbill_projections::Document, EngineError> {
        Ok(self.as_of(Upto::All).await?.document())
    }

    /// When something next falls due, if anything does.
    pub async fn next_due(&self) -> Result<Option<Instant>, EngineError> {
        self.read(|p| poolbill_domain::next_due(&p.state)).await
    }

    /// Time travel: projections rebuilt from the log as it stood at `upto`.
    pub async fn as_of(&self, upto: Upto) -> Result<Projections, EngineError> {
        // A stopped engine answers every request with why it stopped, reads of its log too.
        if let Some(cause) = self.stopped.get() {
            return Err(EngineError::Stopped(cause.clone()));
        }
        let store = self.store.clone();
        blocking(move || replay(store.as_ref(), upto).map_err(EngineError::from)).await
    }

    /// The store underneath, for reading the log.
    pub fn store(&self) -> &dyn EventStore {
        self.store.as_ref()
    }

    async fn send(&self, request: Request) -> Result<(), EngineError> {
        self.tx.send(request).await.map_err(|_| self.closed())
    }

    fn closed(&self) -> EngineError {
        closed(&self.stopped)
    }
}

/// The error for a request the actor did not answer: why it stopped, if it did.
fn closed(stopped: &OnceLock<Arc<EngineError>>) -> EngineError {
    match stopped.get() {
        Some(cause) => EngineError::Stopped(cause.clone()),
        None => EngineError::Closed,
    }
}

/// A request queued by [`Engine::submit`] or [`Engine::submit_advance`]: its answer, to come
/// once what it wrote is on disk.
pub struct Submitted<T> {
    reply: oneshot::Receiver<Result<T, EngineError>>,
    stopped: Arc<OnceLock<Arc<EngineError>>>,
}

impl<T> Submitted<T> {
    /// Whether the answer has come (waiting for it would not wait).
    pub fn is_answered(&self) -> bool {
        !self.reply.is_empty()
    }

    /// Wait for the answer.
    pub async fn answer(self) -> Result<T, EngineError> {
        let Submitted { reply, stopped } = self;
        reply.await.map_err(|_| closed(&stopped))?
    }
}

/// Run blocking store work off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, EngineError> + Send + 'static) -> Result<T, EngineError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| EngineError::Aborted(format!("blocking task failed: {e}")))?
}

/// Extend the store's Merkle index from the log on a thread of its own, so that neither opening
/// nor deciding waits for the hashing (a few microseconds an event); skipped while an earlier
/// catch-up still runs (the next one, or any reader, takes what it leaves). A failure costs
/// only a later catch-up.
fn catch_up_merkle_aside(store: &Arc<dyn EventStore>, hashing: &Arc<std::sync::Mutex<()>>) {
    let (store, hashing) = (store.clone(), hashing.clone());
    std::thread::spawn(move || {
        let Ok(_only_one) = hashing.try_lock() else { return };
        if let Err(e) = poolbill_ledger::catch_up_merkle(store.as_ref()) {
            tracing::warn!(error = %e, "the Merkle index could not be brought up to date");
        }
    });
}

/// Rebuild the ledger and stream versions: the newest snapshot, then the log after it. What is
/// live only: bills and refusals stay in the log (read with `as_of`). A long replay is followed
/// by a snapshot, so that the next open is short.
fn load(store: &dyn EventStore, snapshot_every: u64) -> Result<(Ledger, HashMap<String, u64>), EngineError> {
    let loaded = poolbill_ledger::load_live(store)?;
    if loaded.folded >= snapshot_every.max(1) {
        save_snapshot(store, &loaded.projections, &loaded.versions);
    }
    Ok((Ledger::from_projections(loaded.projections), loaded.versions))
}

/// Keep a snapshot of acknowledged state. It is only an optimisation: a failure is logged, not
/// an error.
fn save_snapshot(store: &dyn EventStore, projections: &Projections, versions: &HashMap<String, u64>) {
    let position = projections.last_position;
    match store.put_snapshot(position, &Snapshot::of(projections, versions).encode()) {
        Ok(()) => tracing::debug!(position, "snapshot kept"),
        Err(e) => tracing::warn!(position, error = %e, "a snapshot could not be kept"),
    }
}

/// A request's answer, given once its chain is on disk.
enum Waiter {
    /// A new command: its answer is the append numbered `seq`.
    Execute {
        seq: u64,
        reply: oneshot::Sender<Result<Executed, EngineError>>,
    },
    /// Answered at once, before anything is written (an id reused for another command).
    Refused {
        error: EngineError,
        reply: oneshot::Sender<Result<Executed, EngineError>>,
    },
    /// A command id already recorded: in the log, or by the append `seq` of this batch.
    Known {
        record: Result<CommandRecord, u64>,
        reply: oneshot::Sender<Result<Executed, EngineError>>,
    },
    Advance {
        events: Result<u64, EngineError>,
        reply: oneshot::Sender<Result<u64, EngineError>>,
    },
}

struct Actor {
    store: Arc<dyn EventStore>,
    /// The pure core: state as the pending chain leaves it (speculative until written).
    ledger: Ledger,
    /// Each stream's version as the pending chain leaves it.
    versions: HashMap<String, u64>,
    rx: mpsc::Receiver<Request>,
    /// Appends decided but not yet written, numbered.
    pending: Vec<(u64, AppendRequest)>,
    /// The tags of each pending request's events, in order (`projections::tags_of`).
    pending_tags: Vec<Vec<Vec<String>>>,
    /// The tags of events written since the tag index was last brought up to date, by
    /// position (contiguous): recorded with the next snapshot, so the index never has to read
    /// back what the engine itself wrote.
    untagged: Vec<(u64, Vec<String>)>,
    next_seq: u64,
    /// What became of this batch's written appends, by number.
    written: HashMap<u64, Result<CommandRecord, EngineError>>,
    /// Set when a write failed: the rest of the batch is refused, to be retried.
    broken: Option<String>,
    /// Set when the state could not be rebuilt after a failed write: the actor stops.
    stopped: Arc<OnceLock<Arc<EngineError>>>,
    /// The position of the last snapshot kept (or of the state at open).
    snapshot_at: u64,
    /// How many events pass between snapshots.
    snapshot_every: u64,
    /// Held while the Merkle index is brought up to date aside (one catch-up at a time).
    hashing: Arc<std::sync::Mutex<()>>,
}

impl Actor {
    fn new(
        store: Arc<dyn EventStore>,
        ledger: Ledger,
        versions: HashMap<String, u64>,
        rx: mpsc::Receiver<Request>,
        stopped: Arc<OnceLock<Arc<EngineError>>>,
    ) -> Actor {
        let snapshot_at = ledger.projections().last_position;
        Actor {
            store,
            ledger,
            versions,
            rx,
            pending: Vec::new(),
            pending_tags: Vec::new(),
            untagged: Vec::new(),
            next_seq: 0,
            written: HashMap::new(),
            broken: None,
            stopped,
            snapshot_at,
            snapshot_every: snapshot::EVERY,
            hashing: Arc::new(std::sync::Mutex::new(())),
        }
    }

    async fn run(mut self) {
        while let Some(first) = self.rx.recv().await {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match self.rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            self.process(batch).await;
            if self.stopped.get().is_some() {
                // Dropping the queue answers every waiting request with the reason.
                return;
            }
        }
    }

    async fn process(&mut self, batch: Vec<Request>) {
        let mut writes = Vec::new();
        let mut reads = Vec::new();
        for request in batch {
            match request {
                Request::Read(f) => reads.push(f),
                other => writes.push(other),
            }
        }
        if !writes.is_empty() {
            self.write(writes).await;
        }
        // Reads come after the batch is on disk: they never see unacknowledged state, nor the
        // speculative state of an engine that could not rebuild it (they are dropped unanswered).
        if self.stopped.get().is_some() {
            return;
        }
        for read in reads {
            read(self.ledger.projections());
        }
    }

    async fn write(&mut self, writes: Vec<Request>) {
        let ids: Vec<String> = writes
            .iter()
            .filter_map(|w| match w {
                Request::Execute { id, .. } => Some(id.clone()),
                _ => None,
            })
            .collect();
        let store = self.store.clone();
        let known = blocking(move || {
            let mut known = HashMap::new();
            for id in ids {
                if let Some(record) = store.command(&id)? {
                    known.insert(id, record);
                }
            }
            Ok(known)
        })
        .await;
        let known = match known {
            Ok(k) => k,
            Err(e) => {
                self.broken = Some(e.to_string());
                HashMap::new()
            }
        };

        let mut waiters = Vec::new();
        // This batch's new command ids: their append and fingerprint.
        let mut seq_by_id: HashMap<String, (u64, String)> = HashMap::new();
        for write in writes {
            match write {
                Request::Execute { id, at, command, index, reply } => {
                    let now = fingerprint(at, &command);
                    let first = known.get(&id).and_then(|r| r.fingerprint.clone()).or_else(|| seq_by_id.get(&id).map(|(_, f)| f.clone()));
                    if let Some(first) = first.filter(|first| *first != now) {
                        waiters.push(Waiter::Refused { error: EngineError::IdReused { id, first, now }, reply });
                    } else if let Some(record) = known.get(&id) {
                        waiters.push(Waiter::Known { record: Ok(record.clone()), reply });
                    } else if let Some((seq, _)) = seq_by_id.get(&id) {
                        waiters.push(Waiter::Known { record: Err(*seq), reply });
                    } else if self.broken.is_none() {
                        // The ledger's order (R1): what is due by `at`, then the command.
                        let _ = self.advance(at).await;
                        let seq = self.decide(at, &command, index, id.clone(), now.clone());
                        seq_by_id.insert(id, (seq, now));
                        waiters.push(Waiter::Execute { seq, reply });
                    } else {
                        waiters.push(Waiter::Execute { seq: u64::MAX, reply });
                    }
                }
                Request::Advance { to, reply } => {
                    let events = self.advance(to).await;
                    waiters.push(Waiter::Advance { events, reply });
                }
                Request::Read(_) => unreachable!("reads are split off"),
            }
        }
        self.flush_pending().await;
        self.answer(waiters);
        self.written.clear();
        if self.broken.is_none() {
            self.maybe_snapshot().await;
        }
        self.broken = None;
    }

    /// Queue every time-driven event due by `to`, writing long runs as they grow; returns how
    /// many events that was.
    #[tracing::instrument(name = "settlement", level = "debug", skip(self), fields(to = %to.to_rfc3339()))]
    async fn advance(&mut self, to: Instant) -> Result<u64, EngineError> {
        let mut count = 0;
        while self.broken.is_none() {
            let Some(step) = self.ledger.tick(to) else { break };
            tracing::trace!(at = %step.at.to_rfc3339(), events = step.events.len(), "time-driven events");
            count += step.events.len() as u64;
            self.queue(step, serde_json::Value::Null, None);
            if self.pending.len() >= MAX_CHAIN {
                self.flush_pending().await;
            }
        }
        match &self.broken {
            None => Ok(count),
            Some(why) => Err(EngineError::Aborted(why.clone())),
        }
    }

    /// Decide one command and queue what it appends (its input, then its events or the record
    /// of its refusal). Returns its number.
    fn decide(&mut self, at: Instant, command: &Command, index: Option<u64>, id: String, fingerprint: String) -> u64 {
        let step = self.ledger.decide(Some(id), at, command, index);
        let outcome = match &step.rejection {
            None => Outcome::Accepted,
            Some(Rejection { rule, reason }) => Outcome::Rejected { rule: *rule, reason: reason.clone() },
        };
        self.queue(step, outcome_json(&outcome), Some(fingerprint))
    }

    /// Append a step the ledger has applied (speculatively: a failed write rebuilds the ledger
    /// from the log) to the pending chain, with the checks its streams' versions call for.
    fn queue(&mut self, step: Step, outcome: serde_json::Value, fingerprint: Option<String>) -> u64 {
        let Step { at, command_id, events, .. } = step;
        let mut expected: Vec<(String, ExpectedVersion)> = Vec::new();
        let mut new_events = Vec::with_capacity(events.len());
        let mut tags = Vec::with_capacity(events.len());
        for event in &events {
            let stream = event.stream();
            // Records of commands and refusals change no state: nothing to check them against.
            let record = matches!(event, Event::CommandReceived { .. } | Event::CommandRejected { .. });
            if !record && !expected.iter().any(|(s, _)| s == &stream) {
                let current = self.versions.get(&stream).copied().unwrap_or(0);
                expected.push((stream.clone(), if current == 0 { ExpectedVersion::NoStream } else { ExpectedVersion::Exactly(current) }));
            }
            *self.versions.entry(stream).or_insert(0) += 1;
            new_events.push(poolbill_projections::new_event(event, at));
            tags.push(poolbill_projections::tags_of(event));
        }
        self.pending_tags.push(tags);
        let seq = self.next_seq;
        self.next_seq += 1;
        self.pending.push((seq, AppendRequest { command_id, expected, events: new_events, outcome, fingerprint }));
        seq
    }

    /// Write the pending chain with one flush and note what became of each append. A failure
    /// rebuilds the state from the log and refuses the rest of the batch.
    async fn flush_pending(&mut self) {
        let chain = std::mem::take(&mut self.pending);
        let chain_tags = std::mem::take(&mut self.pending_tags);
        if chain.is_empty() {
            return;
        }
        let seqs: Vec<(u64, Option<String>, Option<String>)> =
            chain.iter().map(|(seq, r)| (*seq, r.command_id.clone(), r.fingerprint.clone())).collect();
        let requests: Vec<AppendRequest> = chain.into_iter().map(|(_, r)| r).collect();
        let store = self.store.clone();
        let result = blocking(move || store.append_chain(requests).map_err(EngineError::from)).await;
        // What failed, if anything: the store (at the chain's `at`-th append), or the blocking
        // task itself (then nothing is known to be written).
        let (outcomes, failure, task) = match result {
            Ok((outcomes, failure)) => (outcomes, failure, None),
            Err(EngineError::Store(e)) => (Vec::new(), Some((0, e)), None),
            Err(e) => (Vec::new(), None, Some(e.to_string())),
        };
        for (i, (seq, id, now)) in seqs.iter().enumerate() {
            let answer = match (outcomes.get(i), &failure) {
                // Recorded meanwhile by another writer of the store, for another command.
                (Some(AppendOutcome::Duplicate(CommandRecord { fingerprint: Some(first), .. })), _)
                    if now.as_ref().is_some_and(|now| now != first) =>
                {
                    Err(EngineError::IdReused { id: id.clone().unwrap_or_default(), first: first.clone(), now: now.clone().unwrap_or_default() })
                }
                (Some(AppendOutcome::Appended(r) | AppendOutcome::Duplicate(r)), _) => Ok(r.clone()),
                (None, Some((at, e))) if *at == i => Err(EngineError::Store(e.clone())),
                (None, Some((at, e))) => Err(EngineError::Aborted(format!("an earlier write in the same commit failed ({at}): {e}"))),
                (None, None) => Err(EngineError::Aborted(task.clone().unwrap_or_else(|| "not written".to_string()))),
            };
            self.written.insert(*seq, answer);
        }
        // The tags of what was appended, in position order (a duplicate appended nothing).
        for (outcome, tags) in outcomes.iter().zip(chain_tags) {
            if let AppendOutcome::Appended(CommandRecord { first_position: Some(first), .. }) = outcome {
                if self.untagged.last().is_some_and(|(last, _)| last + 1 != *first) {
                    // Not contiguous (another writer?): the index reads the log back instead.
                    self.untagged.clear();
                }
                self.untagged.extend(tags.into_iter().enumerate().map(|(k, t)| (first + k as u64, t)));
            }
        }
        if let Some(why) = failure.map(|(_, e)| e.to_string()).or(task) {
            self.broken = Some(why);
            tracing::warn!(why = self.broken.as_deref(), "a write failed; rebuilding the state from the log");
            if let Err(cause) = self.reload().await {
                // Going on would decide on speculative state that is not the log's.
                tracing::error!(error = %cause, "the state cannot be rebuilt from the log: the engine stops");
                let _ = self.stopped.set(Arc::new(cause));
            }
        }
    }

    fn answer(&mut self, waiters: Vec<Waiter>) {
        for waiter in waiters {
            match waiter {
                Waiter::Execute { seq, reply } => {
                    let _ = reply.send(self.record(seq).map(|r| executed(r, false)));
                }
                Waiter::Refused { error, reply } => {
                    let _ = reply.send(Err(error));
                }
                Waiter::Known { record, reply } => {
                    let record = record.or_else(|seq| self.record(seq));
                    let _ = reply.send(record.map(|r| executed(r, true)));
                }
                Waiter::Advance { events, reply } => {
                    let _ = reply.send(events);
                }
            }
        }
    }

    fn record(&self, seq: u64) -> Result<CommandRecord, EngineError> {
        match self.written.get(&seq) {
            Some(Ok(r)) => Ok(r.clone()),
            Some(Err(EngineError::IdReused { id, first, now })) => {
                Err(EngineError::IdReused { id: id.clone(), first: first.clone(), now: now.clone() })
            }
            Some(Err(e)) => Err(EngineError::Aborted(e.to_string())),
            None => Err(EngineError::Aborted(self.broken.clone().unwrap_or_else(|| "not written".to_string()))),
        }
    }

    /// Every `snapshot_every` events, a snapshot of the acknowledged state (nothing is
    /// pending after a group commit), so that opening the store replays only the tail.
    async fn maybe_snapshot(&mut self) {
        let projections = self.ledger.projections();
        if projections.last_position < self.snapshot_at + self.snapshot_every {
            return;
        }
        self.snapshot_at = projections.last_position;
        let (store, projections, versions) = (self.store.clone(), projections.clone(), self.versions.clone());
        let untagged = std::mem::take(&mut self.untagged);
        let _ = blocking(move || {
            save_snapshot(store.as_ref(), &projections, &versions);
            // The tag index follows the log in bulk, at the same pace: what this engine wrote
            // from the tags it computed then; anything else read back from the log (a failure
            // here costs only a later catch-up).
            let indexed = match (untagged.first(), store.tagged_through()) {
                (Some((first, _)), Ok(through)) if *first == through + 1 => store.tag_existing(&untagged).map_err(EngineError::from),
                _ => Ok(()),
            };
            if let Err(e) = indexed.and_then(|()| poolbill_ledger::catch_up_tags(store.as_ref()).map(|_| ()).map_err(EngineError::from)) {
                tracing::warn!(error = %e, "the tag index could not be brought up to date");
            }
            Ok(())
        })
        .await;
        catch_up_merkle_aside(&self.store, &self.hashing);
    }

    /// After a failed write: forget speculative state, rebuild from what is on disk.
    async fn reload(&mut self) -> Result<(), EngineError> {
        self.pending.clear();
        self.pending_tags.clear();
        // What was written is read back by the next catch-up instead.
        self.untagged.clear();
        let store = self.store.clone();
        let every = self.snapshot_every;
        let (ledger, versions) = blocking(move || load(store.as_ref(), every)).await?;
        self.ledger = ledger;
        self.versions = versions;
        Ok(())
    }
}

/// What a command id stands for: the command and the instant it was given for, as canonical
/// JSON (amounts keep their scale, instants their offset). A retry must repeat both.
pub fn fingerprint(at: Instant, command: &Command) -> String {
    serde_json::json!({ "at": at.to_rfc3339(), "command": command }).to_string()
}

fn outcome_json(outcome: &Outcome) -> serde_json::Value {
    serde_json::to_value(outcome).expect("outcomes serialise")
}

fn executed(record: CommandRecord, duplicate: bool) -> Executed {
    let outcome = serde_json::from_value(record.outcome.clone())
        .unwrap_or(Outcome::Rejected { rule: Rule::R17, reason: format!("unreadable recorded outcome {}", record.outcome) });
    Executed { outcome, first_position: record.first_position, last_position: record.last_position, duplicate }
}
