//! The engine: runs commands and the clock against a sled-backed event log, for embedding in an
//! async (tokio) service.
//!
//! One actor task owns the state. It takes every request queued at the moment and hands the
//! batch, with its state, to a blocking thread, which decides them in order against the state
//! their predecessors leave (applying their events speculatively), writes the lot as one chain
//! with one flush (group commit), and gives the state back. Only then does it answer: an
//! acknowledged command is on disk. The store is called directly on that thread, so a batch
//! costs one hand-off there and back rather than one per store call (the command ids' lookup,
//! the append): each is a wake-up of an idle CPU, slow on a virtual machine.
//!
//! If a write fails, the speculative state is dropped: the actor goes back to its checkpoint (a
//! copy of acknowledged state, taken again every [`CHECKPOINT_EVERY`] events, or as many as the
//! state has records once it has more) and, once the
//! store can be read, folds only what the log holds beyond it. A failure of the store itself
//! (a full disk) starts an outage: requests are refused at once, without touching the store,
//! and the store is asked to recover now and then (a backoff that grows with the failures and
//! with what a recovery attempt costs), so the engine resumes by itself when space returns.
//! Answers keep their promises: "not written" ([`EngineError::Aborted`]) only for what never
//! reached the store, [`EngineError::OutcomeUnknown`] for what failed at or after its commit.
//!
//! Memory follows what is live: once the tag index covers the log (every snapshot interval),
//! the pools and jobs that are gone with nothing left to settle are forgotten
//! (`State::forget_gone`). A command, or a read ([`Engine::read_about`]), that names one again
//! recalls it from the log through the index first (`poolbill_ledger::recall`), so that it is
//! refused word for word as if it had been kept (R5, R17).

mod clock;

pub use clock::{spawn_clock, Clock, ManualClock, SystemClock};
pub use poolbill_ledger::Upto;

use poolbill_domain::{Command, Event, Instant, Rejection, Rule};
use poolbill_ledger::snapshot::{self, Snapshot};
use poolbill_ledger::{replay, FoldError, Ledger, Step};
use poolbill_projections::Projections;
use poolbill_store::{one_line, AppendOutcome, AppendRequest, CommandRecord, EventStore, ExpectedVersion, StoreError};
use poolbill_store_sled::SledStore;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

/// How often a command whose write failed is tried again.
pub const RETRIES: u32 = 3;
/// How many queued requests one group commit takes at most.
const MAX_BATCH: usize = 256;
/// How many appends are written per flush at most (a long clock advance writes in parts).
const MAX_CHAIN: usize = 1024;
/// How many events a chain gathers before it is written, at most: what a batch holds in memory
/// (each event encoded, with its tags and its step) stays bounded however many commands are in
/// flight, and a batch of commands that each settle many hours is written in parts.
const MAX_CHAIN_EVENTS: usize = 16_384;

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
    /// Not written: the command never reached the store (an earlier request in the same group
    /// commit failed, or the store is failing and the engine refused it at once). A promise:
    /// nothing of it is in the log; safe to retry with the same id.
    #[error("not written, retry: {0}")]
    Aborted(String),
    /// The write failed at or after its commit (a flush that failed): the command may or may
    /// not be in the log. Never answered as "not written". Retry with the same id once the
    /// store writes again: a duplicate answer means it had been written (its first result), any
    /// other answer that it had not and has now been done.
    #[error("outcome unknown, retry with the same id to learn it: {0}")]
    OutcomeUnknown(String),
    /// The engine task has stopped.
    #[error("the engine has stopped")]
    Closed,
    /// The command id was already used for another command (another body or instant): nothing
    /// was done. A retry must repeat its command exactly; a new command needs a new id.
    #[error("command id {id:?} was already used for another command: first {first}, now {now}; nothing was done (a new command needs a new id)")]
    IdReused { id: String, first: String, now: String },
    /// A write failed and the state could not be brought back to the log's (the log's tail
    /// could not be folded, or the store found itself damaged as it recovered): the engine
    /// stopped rather than go on from state that is not the log's. Every later request gets this.
    #[error("the engine stopped: after a failed write, its state could not be rebuilt from the log")]
    Stopped(#[source] Arc<EngineError>),
}

type Reader = Box<dyn FnOnce(&Projections) + Send>;

enum Request {
    Execute {
        id: String,
        at: Instant,
        command: Box<Command>,
        index: Option<u64>,
        reply: Reply,
    },
    Advance {
        to: Instant,
        reply: oneshot::Sender<Result<u64, EngineError>>,
    },
    /// A read, after the resources of these ids that are gone have been recalled.
    Read(Vec<String>, Reader),
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
        let mut actor = Actor::new(store.clone(), ledger, versions, stopped.clone());
        actor.snapshot_every = snapshot_every.max(1);
        catch_up_merkle_aside(&actor.store, &actor.hashing);
        tokio::spawn(actor.run(rx));
        Ok(Engine { tx, store, stopped })
    }

    /// Decide `command` at instant `at` (the clock first passes `at`, so every time-driven event
    /// due by then happens before it). A repeated `id` returns the first result.
    /// `index` is the caller's own reference (e.g. a scenario's command index), kept with a
    /// rejection.
    ///
    /// A write that failed (an expected-version conflict with another writer, a failed flush) is
    /// retried, at most [`RETRIES`] times, on the acknowledged state and what the log holds
    /// beyond it; the id keeps a retry from ever applying twice. While the store is failing the
    /// retries are refused at once; an outcome that was unknown stays
    /// [`EngineError::OutcomeUnknown`] unless a retry settles it.
    pub async fn execute(&self, id: impl Into<String>, at: Instant, command: Command, index: Option<u64>) -> Result<Executed, EngineError> {
        let id = id.into();
        let span = command_span(&id, at, &command);
        self.execute_in(id, at, command, index).instrument(span).await
    }

    async fn execute_in(&self, id: String, at: Instant, command: Command, index: Option<u64>) -> Result<Executed, EngineError> {
        let mut attempt = 0;
        // Once an attempt's outcome is unknown, a later "not written" is only that attempt's:
        // the answer stays unknown.
        let mut unknown = None;
        loop {
            match self.submit(id.clone(), at, command.clone(), index).await?.answer().await {
                Err(EngineError::Aborted(why)) if attempt < RETRIES => {
                    attempt += 1;
                    tracing::debug!(attempt, %why, "not written; retried on the acknowledged state");
                }
                Err(EngineError::Aborted(why)) if unknown.is_some() => {
                    let first: String = unknown.unwrap_or_default();
                    return Err(EngineError::OutcomeUnknown(format!("{first}; a retry was not written: {why}")));
                }
                Err(EngineError::OutcomeUnknown(why)) if attempt < RETRIES => {
                    attempt += 1;
                    tracing::debug!(attempt, %why, "outcome unknown; retried with the same id");
                    unknown = Some(why);
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
    /// answer is then [`EngineError::Aborted`], and submitting it again with the same id is safe;
    /// one whose write failed at or after its commit is answered
    /// [`EngineError::OutcomeUnknown`], and submitting it again with the same id settles it.
    pub async fn submit(&self, id: impl Into<String>, at: Instant, command: Command, index: Option<u64>) -> Result<Submitted<Executed>, EngineError> {
        self.submit_fenced(None, id.into(), at, command, index).await
    }

    /// [`submit`](Engine::submit) as part of a [`Pipeline`]: once one of the pipeline's commands
    /// is answered with an error, every later one is refused without being decided.
    pub async fn submit_in(
        &self,
        pipeline: &Pipeline,
        id: impl Into<String>,
        at: Instant,
        command: Command,
        index: Option<u64>,
    ) -> Result<Submitted<Executed>, EngineError> {
        let id = id.into();
        // Its answer is logged in a span per command, as `execute`'s is.
        let span = command_span(&id, at, &command);
        let mut submitted = self.submit_fenced(Some(pipeline.fence.clone()), id, at, command, index).await?;
        submitted.span = span;
        Ok(submitted)
    }

    async fn submit_fenced(
        &self,
        fence: Option<Arc<AtomicBool>>,
        id: String,
        at: Instant,
        command: Command,
        index: Option<u64>,
    ) -> Result<Submitted<Executed>, EngineError> {
        let (tx, rx) = oneshot::channel();
        self.send(Request::Execute { id, at, command: Box::new(command), index, reply: Reply { tx, fence } }).await?;
        Ok(Submitted { reply: rx, stopped: self.stopped.clone(), span: tracing::Span::none() })
    }

    /// [`advance_to`](Engine::advance_to) as a pipeline step, in order with
    /// [`submit`](Engine::submit): returns once queued; the answer is how many events the clock
    /// appended, once they are on disk.
    pub async fn submit_advance(&self, to: Instant) -> Result<Submitted<u64>, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.send(Request::Advance { to, reply }).await?;
        Ok(Submitted { reply: rx, stopped: self.stopped.clone(), span: tracing::Span::none() })
    }

    /// Read the current (acknowledged) live projections: state and counters. Bills and
    /// refusals are history, kept in the log: read them with [`Engine::as_of`]. What is live
    /// only: gone pools and jobs with nothing left to settle may have been forgotten (read
    /// them with [`Engine::read_about`]).
    pub async fn read<T: Send + 'static>(&self, f: impl FnOnce(&Projections) -> T + Send + 'static) -> Result<T, EngineError> {
        self.read_about(Vec::new(), f).await
    }

    /// [`Engine::read`], with the pools and jobs of `ids` in the state even if they are gone
    /// and were forgotten: recalled from the log first, as a decision recalls them.
    pub async fn read_about<T: Send + 'static>(
        &self,
        ids: Vec<String>,
        f: impl FnOnce(&Projections) -> T + Send + 'static,
    ) -> Result<T, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.send(Request::Read(
            ids,
            Box::new(move |p| {
                let _ = reply.send(f(p));
            }),
        ))
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

    /// Hand back the store and let the engine go: its actor ends once every request sent
    /// before is answered, and drops its state (all live resources, the copy it can go back to)
    /// with it. For a caller that only reads the log from here on, as `poolbill run` does to
    /// write its document, so that two states are not held at once.
    pub fn into_store(self) -> Arc<dyn EventStore> {
        self.store
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
    /// Where its answer is logged (none: not logged).
    span: tracing::Span,
}

impl<T> Submitted<T> {
    /// Whether the answer has come (waiting for it would not wait).
    pub fn is_answered(&self) -> bool {
        !self.reply.is_empty()
    }

    /// Wait for the answer.
    pub async fn answer(self) -> Result<T, EngineError>
    where
        T: std::fmt::Debug,
    {
        let Submitted { reply, stopped, span } = self;
        let answer = reply.await.map_err(|_| closed(&stopped)).and_then(|answer| answer);
        span.in_scope(|| match &answer {
            Ok(done) => tracing::debug!(answer = ?done, "done"),
            Err(e) => tracing::debug!(error = %e, "not done"),
        });
        answer
    }
}

/// Run a store call on the batch's thread; a panic in it becomes an error, as it did from a
/// blocking task of its own, so that the actor goes on.
fn guarded<T>(f: impl FnOnce() -> Result<T, EngineError>) -> Result<T, EngineError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let what = panic.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| panic.downcast_ref::<String>().cloned()).unwrap_or_default();
        Err(EngineError::Aborted(format!("a store call panicked: {what}")))
    })
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
    let spawned = std::thread::Builder::new().name("poolbill-merkle".into()).spawn(move || {
        let Ok(_only_one) = hashing.try_lock() else { return };
        if let Err(e) = poolbill_ledger::catch_up_merkle(store.as_ref()) {
            tracing::warn!(error = %e, "the Merkle index could not be brought up to date");
        }
    });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "the Merkle index's catch-up could not start");
    }
}

/// Rebuild the ledger and stream versions: the newest snapshot, then the log after it. What is
/// live only: bills and refusals stay in the log (read with `as_of`). A long replay is followed
/// by a snapshot, so that the next open is short.
fn load(store: &dyn EventStore, snapshot_every: u64) -> Result<(Ledger, HashMap<String, u64>), EngineError> {
    let loaded = poolbill_ledger::load_live(store)?;
    let mut ledger = Ledger::from_projections(loaded.projections);
    // The tag index covers the log (caught up before loading): what is gone can be recalled.
    ledger.forget_gone();
    if loaded.folded >= snapshot_every.max(1) {
        save_snapshot(store, ledger.projections(), &loaded.versions);
    }
    Ok((ledger, loaded.versions))
}

/// Keep a snapshot of acknowledged state, whose state has forgotten what is gone
/// (`Ledger::forget_gone`). It is only an optimisation: a failure is logged, not an error.
fn save_snapshot(store: &dyn EventStore, projections: &Projections, versions: &HashMap<String, u64>) {
    keep_snapshot(store, projections.last_position, Snapshot::encode_live(projections, versions));
}

fn keep_snapshot(store: &dyn EventStore, position: u64, bytes: Vec<u8>) {
    match store.put_snapshot(position, &bytes) {
        Ok(()) => tracing::debug!(position, "snapshot kept"),
        Err(e) => tracing::warn!(position, error = %e, "a snapshot could not be kept"),
    }
}

/// Fold the log from position `from` on into `ledger` and `versions` (the tail past the state
/// they hold): how many events.
fn fold_tail(store: &dyn EventStore, from: u64, ledger: &mut Ledger, versions: &mut HashMap<String, u64>) -> Result<u64, EngineError> {
    let last = store.last_position()?;
    if last + 1 < from {
        return Err(EngineError::Store(StoreError::Corrupt {
            position: last + 1,
            detail: format!("the log ends at position {last}, before the acknowledged position {}", from - 1),
        }));
    }
    let mut folded = 0;
    for envelope in store.read_all(from) {
        let envelope = envelope?;
        let event = poolbill_projections::event_of(&envelope)
            .map_err(|source| FoldError::Projection(poolbill_projections::ProjectionError { position: envelope.position, source }))?;
        ledger.apply(envelope.position, envelope.at, &event);
        versions.insert(envelope.stream.clone(), envelope.version);
        folded += 1;
    }
    Ok(folded)
}

/// The span a command's work and answer are logged in.
fn command_span(id: &str, at: Instant, command: &Command) -> tracing::Span {
    tracing::info_span!("command", id = %id, r#type = command.type_name(), at = %at.to_rfc3339())
}

/// Where a command's answer goes, and the fence of the pipeline it was submitted in (if any):
/// an error answered to one of a pipeline's commands closes the fence.
struct Reply {
    tx: oneshot::Sender<Result<Executed, EngineError>>,
    fence: Option<Arc<AtomicBool>>,
}

impl Reply {
    fn send(self, result: Result<Executed, EngineError>) -> Result<(), Result<Executed, EngineError>> {
        if result.is_err() {
            self.fence();
        }
        self.tx.send(result)
    }

    fn fence(&self) {
        if let Some(fence) = &self.fence {
            fence.store(true, Ordering::Release);
        }
    }

    fn fenced(&self) -> bool {
        self.fence.as_ref().is_some_and(|fence| fence.load(Ordering::Acquire))
    }
}

/// Commands submitted in order by one caller that stops at the first error
/// ([`Engine::submit_in`]): the engine decides them in order, many to a group commit, and once
/// one of them is answered with an error it decides none of the later ones (they are answered
/// [`EngineError::Aborted`]), so that no command after the first failure is ever done.
#[derive(Clone, Default)]
pub struct Pipeline {
    fence: Arc<AtomicBool>,
}

impl Pipeline {
    pub fn new() -> Pipeline {
        Pipeline::default()
    }
}

/// A request's answer, given once its chain is on disk.
enum Waiter {
    /// A new command: its answer is the append numbered `seq`.
    Execute { seq: u64, reply: Reply },
    /// Answered at once, before anything is written (an id reused for another command).
    Refused { error: EngineError, reply: Reply },
    /// A command id already recorded: in the log, or by the append `seq` of this batch.
    Known { record: Result<CommandRecord, u64>, reply: Reply },
    /// The clock's steps: answered with how many events, once the last append it queued (if
    /// any) is written.
    Advance { events: Result<u64, EngineError>, last: Option<u64>, reply: oneshot::Sender<Result<u64, EngineError>> },
}

/// The store is failing: requests are refused at once until `retry_at`, then the store is asked
/// to recover.
struct Outage {
    why: String,
    since: std::time::Instant,
    retry_at: std::time::Instant,
    backoff: std::time::Duration,
    /// Command ids whose outcome is unknown: until the store recovers, a refusal of one of them
    /// is not "not written" (an earlier attempt may be in the log).
    unknown: std::collections::HashSet<String>,
}

/// The first wait before the store is asked to recover, and the longest.
const FIRST_BACKOFF: std::time::Duration = std::time::Duration::from_millis(50);
const MAX_BACKOFF: std::time::Duration = std::time::Duration::from_secs(1);
/// A recovery attempt may take at most this share of the time (one in ten) while it fails,
/// but the engine never waits longer than `LONGEST_WAIT` before the next.
const PROBE_SHARE: u32 = 10;
const LONGEST_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

impl Outage {
    fn new(why: String) -> Outage {
        let now = std::time::Instant::now();
        Outage { why, since: now, retry_at: now + FIRST_BACKOFF, backoff: FIRST_BACKOFF, unknown: Default::default() }
    }

    /// A recovery attempt that took `took` failed with `why`: wait longer before the next.
    fn failed_again(&mut self, why: String, took: std::time::Duration) {
        self.why = why;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF).max((took * PROBE_SHARE).min(LONGEST_WAIT));
        self.retry_at = std::time::Instant::now() + self.backoff;
    }

    /// The answer to a command refused during the outage.
    fn refusal(&self, id: &str) -> EngineError {
        let why = format!(
            "the store is failing ({}), since {} ms; it is tried again in {} ms",
            self.why,
            self.since.elapsed().as_millis(),
            self.retry_at.saturating_duration_since(std::time::Instant::now()).as_millis()
        );
        if self.unknown.contains(id) {
            EngineError::OutcomeUnknown(format!("an earlier attempt's write failed after its commit; {why}"))
        } else {
            EngineError::Aborted(why)
        }
    }
}

/// How many events pass between copies of the acknowledged state, at least. A copy costs 0.34
/// ms for 1,000 pools over 20 accounts (release build): taken once a group commit, it added that
/// much to a single client's commit of about 0.72 ms. Between copies the steps written are
/// kept, and a failed write goes back to the copy and applies them again (from memory), then
/// folds what the log holds past them. A copy costs in proportion to the state's records, so at
/// least as many events as records pass between two (`checkpoint_due`): the state keeps every
/// resource ever seen, and copies every 1,000 events of a state of tens of thousands of deleted
/// jobs made the engine quadratic.
pub const CHECKPOINT_EVERY: u64 = 1_000;

/// Whether a copy of the acknowledged state is due `events_since` the last, for a state of
/// `records` records: its cost per event stays bounded.
fn checkpoint_due(events_since: u64, records: usize) -> bool {
    events_since >= CHECKPOINT_EVERY.max(records as u64)
}

/// A copy of the state as of an acknowledged write: what a failed write goes back to, before
/// the log after it is folded again.
struct Checkpoint {
    ledger: Ledger,
    versions: HashMap<String, u64>,
}

struct Actor {
    store: Arc<dyn EventStore>,
    /// The pure core: state as the pending chain leaves it (speculative until written).
    ledger: Ledger,
    /// Each stream's version as the pending chain leaves it.
    versions: HashMap<String, u64>,
    /// Appends decided but not yet written, numbered.
    pending: Vec<(u64, AppendRequest)>,
    /// How many events those appends hold.
    pending_events: usize,
    /// The tags of each pending request's events, in order (`projections::tags_of`).
    pending_tags: Vec<Vec<Vec<String>>>,
    /// The steps of the pending requests, in order: those that get written join `redo`.
    pending_steps: Vec<(Instant, Vec<Event>)>,
    /// The steps written since the checkpoint, in order, and how many events they hold: the
    /// checkpoint plus these is the acknowledged state.
    redo: Vec<(Instant, Vec<Event>)>,
    redo_events: u64,
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
    /// The acknowledged state, while the ledger holds speculative steps past it.
    checkpoint: Checkpoint,
    /// Set when a write failed: the log may hold events past the ledger (another writer's, an
    /// applied prefix, a write whose outcome was unknown), folded in before the next decision.
    behind: bool,
    /// Set while the store is failing.
    outage: Option<Outage>,
    /// The position where the tag index last followed the log in bulk (or of the state at open).
    snapshot_at: u64,
    /// The position of the last snapshot kept (or of the state at open).
    kept_at: u64,
    /// How many events pass between snapshots.
    snapshot_every: u64,
    /// Held while the Merkle index is brought up to date aside (one catch-up at a time).
    hashing: Arc<std::sync::Mutex<()>>,
}

impl Actor {
    fn new(store: Arc<dyn EventStore>, ledger: Ledger, versions: HashMap<String, u64>, stopped: Arc<OnceLock<Arc<EngineError>>>) -> Actor {
        let snapshot_at = ledger.projections().last_position;
        let checkpoint = Checkpoint { ledger: ledger.clone(), versions: versions.clone() };
        Actor {
            store,
            ledger,
            versions,
            pending: Vec::new(),
            pending_events: 0,
            pending_tags: Vec::new(),
            pending_steps: Vec::new(),
            redo: Vec::new(),
            redo_events: 0,
            untagged: Vec::new(),
            next_seq: 0,
            written: HashMap::new(),
            broken: None,
            stopped,
            checkpoint,
            behind: false,
            outage: None,
            snapshot_at,
            kept_at: snapshot_at,
            snapshot_every: snapshot::EVERY,
            hashing: Arc::new(std::sync::Mutex::new(())),
        }
    }

    /// Take every request queued at the moment and process them on a blocking thread, the
    /// actor's state moved there and back: one hand-off a batch, the store called directly.
    async fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            self = match tokio::task::spawn_blocking(move || {
                self.process(batch);
                self
            })
            .await
            {
                Ok(actor) => actor,
                // A panic outside the store's calls: the waiting requests are answered as closed.
                Err(e) => {
                    tracing::error!(error = %e, "the engine's batch panicked: the engine stops");
                    return;
                }
            };
            if self.stopped.get().is_some() {
                // Dropping the queue answers every waiting request with the reason.
                return;
            }
        }
    }

    fn process(&mut self, batch: Vec<Request>) {
        let mut writes = Vec::new();
        let mut reads = Vec::new();
        for request in batch {
            match request {
                Request::Read(ids, f) => reads.push((ids, f)),
                other => writes.push(other),
            }
        }
        if !writes.is_empty() {
            self.write(writes);
        }
        // Reads come after the batch is on disk: they never see unacknowledged state, nor the
        // speculative state of an engine that could not rebuild it (they are dropped unanswered).
        if self.stopped.get().is_some() {
            return;
        }
        for (ids, read) in reads {
            // A recall that fails leaves the gone out: the reader sees the live state.
            if let Err(e) = self.recall(&ids) {
                tracing::warn!(error = %e, "gone resources could not be recalled for a read");
            }
            read(self.ledger.projections());
        }
    }

    fn write(&mut self, writes: Vec<Request>) {
        if let Err(refusal) = self.ready() {
            self.refuse(writes, refusal);
            return;
        }
        let ids: Vec<String> = writes
            .iter()
            .filter_map(|w| match w {
                Request::Execute { id, .. } => Some(id.clone()),
                _ => None,
            })
            .collect();
        let known = guarded(|| Ok(self.store.commands(&ids)?));
        let known = match known {
            Ok(k) => k,
            Err(e) => {
                if let EngineError::Store(store) = &e {
                    if store.is_outage() && self.outage.is_none() {
                        self.outage = Some(Outage::new(one_line(store)));
                    }
                }
                self.broken = Some(one_line(&e));
                HashMap::new()
            }
        };

        let mut waiters = Vec::new();
        // This batch's new command ids: their append and fingerprint.
        let mut seq_by_id: HashMap<String, (u64, String)> = HashMap::new();
        for write in writes {
            match write {
                Request::Execute { id, at, command, index, reply } => {
                    // A pipeline that had a command fail decides none of its later ones.
                    if reply.fenced() {
                        let error = EngineError::Aborted("an earlier command of its pipeline was not done".into());
                        waiters.push(Waiter::Refused { error, reply });
                        continue;
                    }
                    let now = fingerprint(at, &command);
                    let first = known.get(&id).and_then(|r| r.fingerprint.clone()).or_else(|| seq_by_id.get(&id).map(|(_, f)| f.clone()));
                    if let Some(first) = first.filter(|first| *first != now) {
                        // Fenced now: the pipeline's later commands in this batch are not decided.
                        reply.fence();
                        waiters.push(Waiter::Refused { error: EngineError::IdReused { id, first, now }, reply });
                    } else if let Some(record) = known.get(&id) {
                        waiters.push(Waiter::Known { record: Ok(record.clone()), reply });
                    } else if let Some((seq, _)) = seq_by_id.get(&id) {
                        waiters.push(Waiter::Known { record: Err(*seq), reply });
                    } else if self.broken.is_none() {
                        // The ledger's order (R1): what is due by `at`, then the command, on
                        // the records of what it names (gone ones recalled: R17's refusals).
                        let _ = self.advance(at);
                        let recalled = if self.broken.is_none() { self.recall(&command.resource_ids()) } else { Ok(()) };
                        if let Err(e) = recalled {
                            self.broken = Some(one_line(&e));
                            waiters.push(Waiter::Execute { seq: u64::MAX, reply });
                            continue;
                        }
                        let seq = self.decide(at, &command, index, id.clone(), now.clone());
                        seq_by_id.insert(id, (seq, now));
                        waiters.push(Waiter::Execute { seq, reply });
                        self.flush_if_full();
                    } else {
                        waiters.push(Waiter::Execute { seq: u64::MAX, reply });
                    }
                }
                Request::Advance { to, reply } => {
                    let queued = self.next_seq;
                    let events = self.advance(to);
                    let last = (self.next_seq > queued).then(|| self.next_seq - 1);
                    waiters.push(Waiter::Advance { events, last, reply });
                }
                Request::Read(..) => unreachable!("reads are split off"),
            }
        }
        self.flush_pending();
        self.answer(waiters);
        self.written.clear();
        if self.broken.is_none() {
            self.maybe_snapshot();
        }
        self.broken = None;
    }

    /// Queue every time-driven event due by `to`, writing long runs as they grow; returns how
    /// many events that was.
    #[tracing::instrument(name = "settlement", level = "debug", skip(self), fields(to = %to.to_rfc3339()))]
    fn advance(&mut self, to: Instant) -> Result<u64, EngineError> {
        let mut count = 0;
        while self.broken.is_none() {
            let Some(step) = self.ledger.tick(to) else { break };
            tracing::trace!(at = %step.at.to_rfc3339(), events = step.events.len(), "time-driven events");
            count += step.events.len() as u64;
            self.queue(step, serde_json::Value::Null, None);
            self.flush_if_full();
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

    /// Bring back the gone pools and jobs among `ids` that were forgotten, from the log.
    fn recall(&mut self, ids: &[String]) -> Result<(), EngineError> {
        if ids.iter().all(|id| self.ledger.projections().state.knows(id)) {
            return Ok(());
        }
        let store = self.store.clone();
        let recalled = guarded(|| self.ledger.recall(store.as_ref(), ids).map_err(EngineError::from));
        if let Err(EngineError::Store(e)) = &recalled {
            if e.is_outage() && self.outage.is_none() {
                self.outage = Some(Outage::new(one_line(e)));
            }
        }
        let recalled = recalled?;
        if recalled > 0 {
            tracing::debug!(recalled, "gone resources recalled from the log");
        }
        Ok(())
    }

    /// Where the ledger holds acknowledged state only (after a write went through): copy it
    /// once [`CHECKPOINT_EVERY`] events were written since the last copy.
    fn refresh_checkpoint(&mut self) {
        if checkpoint_due(self.redo_events, self.ledger.projections().state.records()) {
            self.take_checkpoint();
        }
    }

    fn take_checkpoint(&mut self) {
        self.checkpoint = Checkpoint { ledger: self.ledger.clone(), versions: self.versions.clone() };
        self.redo.clear();
        self.redo_events = 0;
    }

    /// Whether requests can be decided and written: not while the store is failing (until
    /// the next recovery attempt is due, and then only if it recovers), and only once the
    /// ledger has caught up with the log after a failed write. Err: why the batch is refused.
    fn ready(&mut self) -> Result<(), Option<String>> {
        if let Some(outage) = &self.outage {
            if std::time::Instant::now() < outage.retry_at {
                return Err(None);
            }
            let started = std::time::Instant::now();
            let recovered = guarded(|| self.store.recover().map_err(EngineError::from));
            let took = started.elapsed();
            match recovered {
                Ok(()) => {
                    let outage = self.outage.take().expect("an outage");
                    // The store's log is durable truth again: an id whose outcome was unknown
                    // is now answered from it (a duplicate) or done.
                    tracing::info!(after_ms = outage.since.elapsed().as_millis() as u64, probe_ms = took.as_millis() as u64, "the store recovered");
                }
                Err(EngineError::Store(e)) if !e.is_outage() => {
                    self.stop(EngineError::Store(e));
                    return Err(Some("the store is damaged".into()));
                }
                Err(e) => {
                    let outage = self.outage.as_mut().expect("an outage");
                    outage.failed_again(one_line(&e), took);
                    tracing::debug!(error = %outage.why, backoff_ms = outage.backoff.as_millis() as u64, "the store has not recovered yet");
                    return Err(None);
                }
            }
        }
        if self.behind {
            match self.catch_up() {
                Ok(folded) => {
                    self.behind = false;
                    // What was folded is not among the steps written since the checkpoint.
                    self.take_checkpoint();
                    tracing::debug!(folded, "the ledger caught up with the log after a failed write");
                }
                Err(EngineError::Store(e)) if e.is_outage() => {
                    self.outage = Some(Outage::new(one_line(&e)));
                    return Err(None);
                }
                Err(e) => {
                    let why = one_line(&e);
                    self.stop(e);
                    return Err(Some(why));
                }
            }
        }
        Ok(())
    }

    /// Answer a batch the engine cannot write now, without touching the store.
    fn refuse(&mut self, writes: Vec<Request>, why: Option<String>) {
        let refusal = |id: Option<&str>| {
            let unknown = id.is_some_and(|id| self.outage.as_ref().is_some_and(|outage| outage.unknown.contains(id)));
            match (&self.outage, &why) {
                (Some(outage), None) => outage.refusal(id.unwrap_or_default()),
                // Stopping keeps the promise too: an earlier attempt may be in the log.
                (_, Some(why)) if unknown => EngineError::OutcomeUnknown(why.clone()),
                (_, why) => EngineError::Aborted(why.clone().unwrap_or_else(|| "the store is failing".into())),
            }
        };
        for write in writes {
            match write {
                Request::Execute { id, reply, .. } => {
                    let _ = reply.send(Err(refusal(Some(&id))));
                }
                Request::Advance { reply, .. } => {
                    let _ = reply.send(Err(refusal(None)));
                }
                Request::Read(..) => unreachable!("reads are split off"),
            }
        }
    }

    /// Stop the actor: going on would decide on state that is not the log's.
    fn stop(&mut self, cause: EngineError) {
        tracing::error!(error = %cause, "the state cannot be brought back to the log's: the engine stops");
        let _ = self.stopped.set(Arc::new(cause));
    }

    /// Fold what the log holds past the ledger (read from the store): returns how many events.
    fn catch_up(&mut self) -> Result<u64, EngineError> {
        let from = self.ledger.projections().last_position + 1;
        guarded(|| fold_tail(self.store.as_ref(), from, &mut self.ledger, &mut self.versions))
    }

    /// Append a step the ledger has applied (speculatively: a failed write goes back to the
    /// checkpoint) to the pending chain, with the checks its streams' versions call for.
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
        self.pending_events += events.len();
        self.pending_steps.push((at, events));
        let seq = self.next_seq;
        self.next_seq += 1;
        self.pending.push((seq, AppendRequest { command_id, expected, events: new_events, outcome, fingerprint }));
        seq
    }

    /// Write the pending chain once it is as long as one is let grow ([`MAX_CHAIN`] appends or
    /// [`MAX_CHAIN_EVENTS`] events); the batch goes on deciding after it.
    fn flush_if_full(&mut self) {
        if self.pending.len() >= MAX_CHAIN || self.pending_events >= MAX_CHAIN_EVENTS {
            self.flush_pending();
        }
    }

    /// Write the pending chain with one flush and note what became of each append. A failure
    /// rebuilds the state from the log and refuses the rest of the batch.
    fn flush_pending(&mut self) {
        let chain = std::mem::take(&mut self.pending);
        self.pending_events = 0;
        let chain_tags = std::mem::take(&mut self.pending_tags);
        let chain_steps = std::mem::take(&mut self.pending_steps);
        if chain.is_empty() {
            return;
        }
        let seqs: Vec<(u64, Option<String>, Option<String>)> =
            chain.iter().map(|(seq, r)| (*seq, r.command_id.clone(), r.fingerprint.clone())).collect();
        let requests: Vec<AppendRequest> = chain.into_iter().map(|(_, r)| r).collect();
        let result = guarded(|| self.store.append_chain(requests).map_err(EngineError::from));
        // What failed, if anything: the store (at the chain's `at`-th append), or the blocking
        // task itself (then nothing is known to be written).
        let (outcomes, failure, task) = match result {
            Ok((outcomes, failure)) => (outcomes, failure, None),
            // The whole chain failed: each request's answer is below.
            Err(EngineError::Store(e)) => (Vec::new(), None, Some(e)),
            // The blocking task itself failed (it panicked): nothing is known of the write.
            Err(e) => {
                tracing::error!(error = %e, "the write's task failed");
                let source = Box::new(StoreError::Internal("the append's task panicked"));
                (Vec::new(), None, Some(StoreError::OutcomeUnknown { context: "the write's task failed".into(), source }))
            }
        };
        let unknown = matches!(task, Some(StoreError::OutcomeUnknown { .. }));
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
                (None, None) => match &task {
                    Some(e) if unknown => Err(EngineError::OutcomeUnknown(one_line(e))),
                    Some(e) => Err(EngineError::Aborted(one_line(e))),
                    None => Err(EngineError::Aborted("not written".to_string())),
                },
            };
            if let (true, Some(id), Some(e)) = (unknown, id, &task) {
                self.outage.get_or_insert_with(|| Outage::new(one_line(e))).unknown.insert(id.clone());
            }
            self.written.insert(*seq, answer);
        }
        // The applied prefix is acknowledged: what the state goes back to after a failure.
        for step in chain_steps.into_iter().take(outcomes.len()) {
            self.redo_events += step.1.len() as u64;
            self.redo.push(step);
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
        match failure.map(|(_, e)| e).or(task) {
            None => self.refresh_checkpoint(),
            Some(e) => {
                self.broken = Some(one_line(&e));
                if e.is_outage() && self.outage.is_none() {
                    self.outage = Some(Outage::new(one_line(&e)));
                }
                tracing::warn!(why = self.broken.as_deref(), outage = e.is_outage(), "a write failed; back to the acknowledged state");
                self.drop_speculation();
            }
        }
    }

    /// After a failed write: back to the checkpoint, and catch up with the log before the next
    /// decision (it may hold more than was acknowledged).
    fn drop_speculation(&mut self) {
        self.pending.clear();
        self.pending_events = 0;
        self.pending_tags.clear();
        self.pending_steps.clear();
        // What was written is read back by the next catch-up of the tag index instead.
        self.untagged.clear();
        // The checkpoint, then the steps written since: the acknowledged state, read from memory.
        self.ledger = self.checkpoint.ledger.clone();
        self.versions = self.checkpoint.versions.clone();
        for (at, events) in &self.redo {
            for event in events {
                let position = self.ledger.projections().last_position + 1;
                self.ledger.apply(position, *at, event);
                *self.versions.entry(event.stream()).or_insert(0) += 1;
            }
        }
        self.behind = true;
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
                Waiter::Advance { events, last, reply } => {
                    // Its steps are acknowledged only once the last of them is written.
                    let events = match last.map(|seq| self.record_of(seq)) {
                        None | Some(Ok(())) => events,
                        Some(Err(e)) => Err(e),
                    };
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
            Some(Err(EngineError::OutcomeUnknown(why))) => Err(EngineError::OutcomeUnknown(why.clone())),
            Some(Err(EngineError::Aborted(why))) => Err(EngineError::Aborted(why.clone())),
            Some(Err(e)) => Err(EngineError::Aborted(one_line(e))),
            None => Err(EngineError::Aborted(self.broken.clone().unwrap_or_else(|| "not written".to_string()))),
        }
    }

    /// Whether the append `seq` was written (its error if not), for answers that carry no record.
    fn record_of(&self, seq: u64) -> Result<(), EngineError> {
        self.record(seq).map(|_| ()).or_else(|e| match e {
            // Another command's id reused: the append itself is not this answer's concern.
            EngineError::IdReused { .. } => Ok(()),
            e => Err(e),
        })
    }

    /// Every `snapshot_every` events: the tag index brought up to date; once it covers the
    /// whole log, the gone resources with nothing left to settle forgotten (a command that
    /// names one again recalls it through the index), so that memory follows what is live;
    /// and when one is due (`snapshot::due`: at least as many events as the state has
    /// records), a snapshot of the acknowledged state (nothing is pending after a group
    /// commit), so that opening the store replays only the tail.
    fn maybe_snapshot(&mut self) {
        let last = self.ledger.projections().last_position;
        if last < self.snapshot_at + self.snapshot_every {
            return;
        }
        self.snapshot_at = last;
        let store = self.store.as_ref();
        let untagged = std::mem::take(&mut self.untagged);
        let indexed = guarded(|| {
            // What this engine wrote, from the tags it computed then; anything else read back
            // from the log (a failure here costs only a later catch-up).
            if let (Some((first, _)), Ok(through)) = (untagged.first(), store.tagged_through()) {
                if *first == through + 1 {
                    store.tag_existing(&untagged)?;
                }
            }
            poolbill_ledger::catch_up_tags(store)?;
            Ok(store.tagged_through()? >= last)
        });
        let indexed = indexed.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "the tag index could not be brought up to date");
            false
        });
        if indexed {
            let forgotten = self.ledger.forget_gone();
            if forgotten > 0 {
                tracing::debug!(forgotten, "gone resources forgotten");
                // The copy to go back to after a failed write forgets them too.
                self.take_checkpoint();
            }
        }
        let projections = self.ledger.projections();
        if snapshot::due(last - self.kept_at, self.snapshot_every, projections.state.records()) {
            self.kept_at = last;
            let (store, versions) = (self.store.as_ref(), &self.versions);
            let _ = guarded(|| {
                match indexed {
                    true => save_snapshot(store, projections, versions),
                    // Not forgotten here: the snapshot forgets them in a copy.
                    false => keep_snapshot(store, last, Snapshot::of(projections, versions).encode()),
                }
                Ok(())
            });
        }
        catch_up_merkle_aside(&self.store, &self.hashing);
    }
}

/// What a command id stands for: the command and the instant it was given for, as canonical
/// JSON (amounts keep their scale, instants their offset). A retry must repeat both.
pub fn fingerprint(at: Instant, command: &Command) -> String {
    /// `{"at": …, "command": …}` with every object's keys sorted (as a `serde_json::Value`
    /// writes it, which is how fingerprints were always made: records keep them).
    #[derive(Serialize)]
    struct Fingerprinted<'a> {
        at: String,
        command: &'a Command,
    }
    let mut text = Vec::with_capacity(256);
    poolbill_projections::write_sorted(&Fingerprinted { at: at.to_rfc3339(), command }, &mut text).expect("commands serialise");
    String::from_utf8(text).expect("serde_json writes UTF-8")
}

fn outcome_json(outcome: &Outcome) -> serde_json::Value {
    serde_json::to_value(outcome).expect("outcomes serialise")
}

fn executed(record: CommandRecord, duplicate: bool) -> Executed {
    let outcome = serde_json::from_value(record.outcome.clone())
        .unwrap_or(Outcome::Rejected { rule: Rule::R17, reason: format!("unreadable recorded outcome {}", record.outcome) });
    Executed { outcome, first_position: record.first_position, last_position: record.last_position, duplicate }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_is_copied_every_1000_events_or_as_many_as_it_has_records() {
        // (events since the last copy, records in the state, due?)
        let table =
            [(999, 50, false), (1_000, 50, true), (1_000, 1_000, true), (1_000, 72_000, false), (71_999, 72_000, false), (72_000, 72_000, true)];
        for (since, records, expected) in table {
            assert_eq!(checkpoint_due(since, records), expected, "{since} events since, {records} records");
        }
    }
}
