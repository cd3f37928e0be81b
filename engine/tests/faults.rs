//! A store that fails its writes (a full disk, injected): what the engine answers, what it keeps
//! and how it comes back. The faults are a wrapper around a real store that fails as
//! `SledStore` does: a write fails before its commit (nothing written) or after it (written or
//! not, unknown), then every call is refused until `recover` succeeds, which it does only once
//! "space returns".

use poolbill_domain::Command;
use poolbill_engine::{Engine, EngineError, Executed, Outcome};
use poolbill_store::{
    AppendOutcome, AppendRequest, ChainOutcome, CommandRecord, Envelope, EventStore, Hash, Instant as At, StoreError, VerifyReport,
};
use poolbill_store_sled::SledStore;
use poolbill_testkit::{cmd, d, t};
use rust_decimal::Decimal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How the next write fails.
#[derive(Clone, Copy, Debug)]
enum Fail {
    /// Before its commit: nothing of it is written.
    BeforeCommit,
    /// After its commit, and it did reach the disk.
    AfterCommitWritten,
    /// After its commit, and it did not reach the disk.
    AfterCommitLost,
}

#[derive(Default)]
struct Faults {
    next: Mutex<Option<Fail>>,
    /// Appends to let through before `next` applies.
    skip: AtomicU64,
    /// While set, `recover` fails: the disk is still full.
    full: AtomicBool,
    /// Set by a failed write, cleared by `recover`: every call is refused meanwhile.
    failed: AtomicBool,
    /// Appends that reached the store, recovery attempts, reads of a snapshot (a reload starts
    /// with one), and events read from the log.
    appends: AtomicU64,
    recovers: AtomicU64,
    snapshot_reads: AtomicU64,
    events_read: Arc<AtomicU64>,
}

#[derive(Clone)]
struct Faulty {
    inner: SledStore,
    faults: Arc<Faults>,
}

fn full_disk() -> StoreError {
    StoreError::io("writing the log", std::io::Error::from(std::io::ErrorKind::StorageFull))
}

impl Faulty {
    fn new() -> Faulty {
        Faulty { inner: SledStore::temporary().unwrap(), faults: Arc::default() }
    }

    /// The next write fails as `fail`, and the disk stays full until [`Faulty::free_space`].
    fn fill_disk(&self, fail: Fail) {
        *self.faults.next.lock().unwrap() = Some(fail);
        self.faults.full.store(true, Ordering::SeqCst);
    }

    fn free_space(&self) {
        self.faults.full.store(false, Ordering::SeqCst);
    }

    fn refused(&self) -> Result<(), StoreError> {
        match self.faults.failed.load(Ordering::SeqCst) {
            true => Err(StoreError::Unavailable { why: "a write failed: no space left".into() }),
            false => Ok(()),
        }
    }

    fn count(&self, counter: &AtomicU64) -> u64 {
        let _ = self;
        counter.load(Ordering::SeqCst)
    }
}

impl EventStore for Faulty {
    fn append_batch(&self, reqs: Vec<AppendRequest>) -> Result<Vec<Result<AppendOutcome, StoreError>>, StoreError> {
        self.refused()?;
        self.inner.append_batch(reqs)
    }

    fn append_chain(&self, reqs: Vec<AppendRequest>) -> Result<ChainOutcome, StoreError> {
        self.refused()?;
        self.faults.appends.fetch_add(1, Ordering::SeqCst);
        let skip = self.faults.skip.load(Ordering::SeqCst);
        if skip > 0 {
            self.faults.skip.store(skip - 1, Ordering::SeqCst);
            return self.inner.append_chain(reqs);
        }
        let Some(fail) = self.faults.next.lock().unwrap().take() else { return self.inner.append_chain(reqs) };
        self.faults.failed.store(true, Ordering::SeqCst);
        let unknown = || StoreError::OutcomeUnknown { context: "the flush failed".into(), source: Box::new(full_disk()) };
        match fail {
            Fail::BeforeCommit => Err(full_disk()),
            Fail::AfterCommitWritten => {
                self.inner.append_chain(reqs).unwrap();
                Err(unknown())
            }
            Fail::AfterCommitLost => Err(unknown()),
        }
    }

    fn recover(&self) -> Result<(), StoreError> {
        self.faults.recovers.fetch_add(1, Ordering::SeqCst);
        if self.faults.full.load(Ordering::SeqCst) {
            return Err(full_disk());
        }
        self.faults.failed.store(false, Ordering::SeqCst);
        Ok(())
    }

    fn read_all(&self, from_position: u64) -> Box<dyn Iterator<Item = Result<Envelope, StoreError>> + Send + '_> {
        if let Err(e) = self.refused() {
            return Box::new(std::iter::once(Err(e)));
        }
        let read = self.faults.events_read.clone();
        Box::new(self.inner.read_all(from_position).inspect(move |_| {
            read.fetch_add(1, Ordering::SeqCst);
        }))
    }

    fn read_stream(&self, stream: &str, from_version: u64) -> Result<Vec<Envelope>, StoreError> {
        self.refused()?;
        self.inner.read_stream(stream, from_version)
    }

    fn stream_version(&self, stream: &str) -> Result<u64, StoreError> {
        self.refused()?;
        self.inner.stream_version(stream)
    }

    fn tagged(&self, tag: &str, from: u64, limit: usize) -> Result<Vec<u64>, StoreError> {
        self.refused()?;
        self.inner.tagged(tag, from, limit)
    }

    fn tag_counts(&self, prefix: &str) -> Result<Vec<(String, u64)>, StoreError> {
        self.refused()?;
        self.inner.tag_counts(prefix)
    }

    fn tagged_through(&self) -> Result<u64, StoreError> {
        self.refused()?;
        self.inner.tagged_through()
    }

    fn tags_version(&self) -> Result<u32, StoreError> {
        self.refused()?;
        self.inner.tags_version()
    }

    fn reset_tags(&self, version: u32) -> Result<(), StoreError> {
        self.refused()?;
        self.inner.reset_tags(version)
    }

    fn tag_existing(&self, tags: &[(u64, Vec<String>)]) -> Result<(), StoreError> {
        self.refused()?;
        self.inner.tag_existing(tags)
    }

    fn merkle_through(&self) -> Result<u64, StoreError> {
        self.refused()?;
        self.inner.merkle_through()
    }

    fn merkle_extend(&self, leaves: &[(u64, Hash)]) -> Result<(), StoreError> {
        self.refused()?;
        self.inner.merkle_extend(leaves)
    }

    fn merkle_chunk_roots(&self, from: u64, to: u64) -> Result<Vec<Hash>, StoreError> {
        self.refused()?;
        self.inner.merkle_chunk_roots(from, to)
    }

    fn merkle_tail(&self) -> Result<Vec<Hash>, StoreError> {
        self.refused()?;
        self.inner.merkle_tail()
    }

    fn last_position(&self) -> Result<u64, StoreError> {
        self.refused()?;
        self.inner.last_position()
    }

    fn last_instant(&self) -> Result<Option<At>, StoreError> {
        self.refused()?;
        self.inner.last_instant()
    }

    fn command(&self, command_id: &str) -> Result<Option<CommandRecord>, StoreError> {
        self.refused()?;
        self.inner.command(command_id)
    }

    fn put_snapshot(&self, position: u64, bytes: &[u8]) -> Result<(), StoreError> {
        self.refused()?;
        self.inner.put_snapshot(position, bytes)
    }

    fn snapshot_at_or_before(&self, position: u64) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        self.refused()?;
        self.faults.snapshot_reads.fetch_add(1, Ordering::SeqCst);
        self.inner.snapshot_at_or_before(position)
    }

    fn snapshot_positions(&self) -> Result<Vec<u64>, StoreError> {
        self.refused()?;
        self.inner.snapshot_positions()
    }

    fn verify(&self) -> Result<VerifyReport, StoreError> {
        self.refused()?;
        self.inner.verify()
    }
}

const AT: &str = "2023-04-01T00:00:00+08:00";

/// An engine on a faulty store with account `a` (balance 0.00) and three top-ups of 1.00.
async fn given_three_top_ups() -> (Engine, Faulty) {
    let store = Faulty::new();
    let engine = Engine::start(store.clone()).await.unwrap();
    engine.execute("price", t(AT), cmd::price("cpu", Some("3.60"), Some("1750.00"), None), None).await.unwrap();
    engine.execute("open", t(AT), cmd::open_account("a", "0.00"), None).await.unwrap();
    for k in 0..3 {
        let done = engine.execute(format!("t{k}"), t(AT), top_up(), None).await.unwrap();
        assert_eq!(done.outcome, Outcome::Accepted);
    }
    (engine, store)
}

fn top_up() -> Command {
    cmd::top_up("a", "1.00")
}

async fn submit(engine: &Engine, id: &str) -> Result<Executed, EngineError> {
    engine.submit(id, t(AT), top_up(), None).await.unwrap().answer().await
}

async fn balance(engine: &Engine) -> Decimal {
    engine.read(|p| p.state.accounts["a"].balance).await.unwrap()
}

/// Submit `id` until it is written (the engine probes the store with a backoff), at most 5 s.
async fn until_written(engine: &Engine, id: &str) -> Executed {
    let started = Instant::now();
    loop {
        match submit(engine, id).await {
            Ok(done) => return done,
            Err(e) => assert!(started.elapsed() < Duration::from_secs(5), "{id} still not written after space returned: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_fails_before_its_commit_is_not_written_and_refused_fast_until_space_returns() {
    let (engine, store) = given_three_top_ups().await;
    let reloads = store.count(&store.faults.snapshot_reads);
    // Given a full disk, when a top-up's write fails before its commit
    store.fill_disk(Fail::BeforeCommit);
    let failed = submit(&engine, "x").await.unwrap_err();
    // Then it is answered not written, and the state is the acknowledged one
    assert!(matches!(failed, EngineError::Aborted(_)), "{failed:?}");
    assert_eq!(balance(&engine).await, d("3.00"), "the speculative top-up is dropped");
    // And while the disk is full, requests are refused at once without reaching the store, and
    // the store is asked to recover only now and then (not once a request)
    let appends = store.count(&store.faults.appends);
    let started = Instant::now();
    for k in 0..500 {
        let refused = submit(&engine, &format!("y{k}")).await.unwrap_err();
        assert!(matches!(refused, EngineError::Aborted(_)), "{refused:?}");
    }
    let took = started.elapsed();
    assert_eq!(store.count(&store.faults.appends), appends, "nothing reached the store");
    assert!(took < Duration::from_secs(2), "500 refusals took {took:?}");
    let recovers = store.count(&store.faults.recovers);
    assert!(recovers <= 2 + (took.as_millis() / 50) as u64, "{recovers} recovery attempts in {took:?}");
    // When space returns, the same id is done (it had not been written), without a full reload
    store.free_space();
    let done = until_written(&engine, "x").await;
    assert_eq!((done.outcome, done.duplicate), (Outcome::Accepted, false));
    assert_eq!(balance(&engine).await, d("4.00"));
    assert_eq!(store.count(&store.faults.snapshot_reads), reloads, "no reload: back to the checkpoint, then the log after it");
    engine.store().verify().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_flush_failed_is_unknown_until_a_retry_finds_it_written() {
    let (engine, store) = given_three_top_ups().await;
    let reloads = store.count(&store.faults.snapshot_reads);
    // Given a disk that fills while a top-up is being flushed (it did reach the disk)
    store.fill_disk(Fail::AfterCommitWritten);
    // When it fails, then its outcome is unknown, never "not written"
    let failed = submit(&engine, "x").await.unwrap_err();
    assert!(matches!(failed, EngineError::OutcomeUnknown(_)), "{failed:?}");
    assert_eq!(balance(&engine).await, d("3.00"), "only acknowledged state is shown");
    // And while the disk is full a retry of it stays unknown, another command is not written
    assert!(matches!(submit(&engine, "x").await, Err(EngineError::OutcomeUnknown(_))));
    assert!(matches!(submit(&engine, "z").await, Err(EngineError::Aborted(_))));
    // When space returns, the retry is answered as the duplicate it is, with its positions
    store.free_space();
    let done = until_written(&engine, "x").await;
    assert!(done.duplicate, "it had been written: {done:?}");
    let record = engine.store().command("x").unwrap().expect("x is in the log");
    assert_eq!((done.first_position, done.last_position), (record.first_position, record.last_position));
    // And the engine folded it from the log's tail, without a full reload
    assert_eq!(balance(&engine).await, d("4.00"));
    let next = until_written(&engine, "w").await;
    assert_eq!(next.first_position, record.last_position.map(|p| p + 1), "the log goes on right after it");
    assert_eq!(balance(&engine).await, d("5.00"));
    assert_eq!(store.count(&store.faults.snapshot_reads), reloads, "no reload");
    engine.store().verify().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_outcome_was_unknown_and_was_lost_is_done_by_the_retry() {
    let (engine, store) = given_three_top_ups().await;
    store.fill_disk(Fail::AfterCommitLost);
    assert!(matches!(submit(&engine, "x").await, Err(EngineError::OutcomeUnknown(_))));
    store.free_space();
    let done = until_written(&engine, "x").await;
    assert_eq!((done.outcome, done.duplicate), (Outcome::Accepted, false), "not in the log: done now, once");
    assert_eq!(balance(&engine).await, d("4.00"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execute_never_turns_an_unknown_outcome_into_not_written() {
    let (engine, store) = given_three_top_ups().await;
    // Given a disk that stays full after a flush failed, when `execute` retries and is refused
    store.fill_disk(Fail::AfterCommitLost);
    let failed = engine.execute("x", t(AT), top_up(), None).await.unwrap_err();
    // Then the answer is still unknown (its first attempt may be on disk)
    assert!(matches!(failed, EngineError::OutcomeUnknown(_)), "{failed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_advance_whose_write_failed_is_not_acknowledged() {
    let (engine, store) = given_three_top_ups().await;
    engine.execute("pool", t(AT), cmd::purchase("a", "p").spec("cpu").ready().build(), None).await.unwrap();
    // Given a full disk, when the clock passes three settlements
    store.fill_disk(Fail::BeforeCommit);
    let later = t("2023-04-01T03:00:00+08:00");
    // Then the advance is not answered as done
    assert!(matches!(engine.advance_to(later).await, Err(EngineError::Aborted(_))));
    assert_eq!(balance(&engine).await, d("3.00"), "nothing charged");
    // And once space returns the same advance charges each hour once
    store.free_space();
    let started = Instant::now();
    let events = loop {
        match engine.advance_to(later).await {
            Ok(events) => break events,
            Err(e) => assert!(started.elapsed() < Duration::from_secs(5), "{e}"),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(events > 0);
    assert_eq!(balance(&engine).await, d("3.00") - d("3.60") * Decimal::from(3), "three hours at 3.60");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_failed_write_only_the_log_past_the_last_checkpoint_is_folded_again() {
    // Given a log of 2,500 acknowledged top-ups (5,000 events and more)
    let (engine, store) = given_three_top_ups().await;
    let mut answers = Vec::new();
    for k in 0..2500 {
        answers.push(engine.submit(format!("many-{k}"), t(AT), top_up(), None).await.unwrap());
    }
    for answer in answers {
        answer.answer().await.unwrap();
    }
    let log = engine.store().last_position().unwrap();
    let (snapshots, read) = (store.count(&store.faults.snapshot_reads), store.count(&store.faults.events_read));
    // When a write fails and the store recovers
    store.fill_disk(Fail::AfterCommitWritten);
    assert!(matches!(submit(&engine, "x").await, Err(EngineError::OutcomeUnknown(_))));
    // Then the acknowledged state is there at once, rebuilt in memory (checkpoint and the steps
    // written since), without reading the store
    assert_eq!(balance(&engine).await, d("2503.00"));
    store.free_space();
    let done = until_written(&engine, "x").await;
    // And once the store recovers, only what the log holds past it is read: the failed write's
    // own two events; no snapshot, not the log
    let folded = store.count(&store.faults.events_read) - read;
    assert!(done.duplicate);
    assert_eq!(folded, 2, "{folded} events read again of a log of {log}");
    assert_eq!(store.count(&store.faults.snapshot_reads), snapshots);
    assert_eq!(balance(&engine).await, d("2504.00"), "3 + 2,500 + x");
    println!("after a failed write: {folded} events folded again, of a log of {log}");
}

/// A pipeline's commands after one that failed are never decided, even once the store is back:
/// a caller that stops at the first error finds nothing later done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_decides_nothing_after_a_command_that_failed() {
    let (engine, store) = given_three_top_ups().await;
    // Given a full disk, when a pipeline of top-ups is submitted
    store.fill_disk(Fail::BeforeCommit);
    let pipeline = poolbill_engine::Pipeline::new();
    let mut answers = Vec::new();
    for k in 0..20 {
        answers.push(engine.submit_in(&pipeline, format!("p{k}"), t(AT), top_up(), None).await.unwrap());
    }
    // Then every one fails (the first's write, the others refused)
    for answer in answers {
        assert!(answer.answer().await.is_err());
    }
    // And once space returns and the engine writes again, the pipeline still refuses
    store.free_space();
    until_written(&engine, "probe").await;
    let refused = engine.submit_in(&pipeline, "p20", t(AT), top_up(), None).await.unwrap().answer().await.unwrap_err();
    assert!(matches!(&refused, EngineError::Aborted(why) if why.contains("pipeline")), "{refused:?}");
    for k in 0..=20 {
        assert_eq!(engine.store().command(&format!("p{k}")).unwrap(), None, "p{k} was not done");
    }
    assert_eq!(balance(&engine).await, d("4.00"), "the three top-ups and the probe");
    // While a new pipeline is decided as usual
    let fresh = poolbill_engine::Pipeline::new();
    let done = engine.submit_in(&fresh, "q0", t(AT), top_up(), None).await.unwrap().answer().await.unwrap();
    assert_eq!(done.outcome, Outcome::Accepted);
}

/// A refusal decided in the same group commit as later commands of its pipeline (an id reused
/// for another command) fences them at once: they are not decided in that commit either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_fenced_by_a_reused_id_decides_none_of_the_commands_queued_behind_it() {
    let (engine, _store) = given_three_top_ups().await;
    let pipeline = poolbill_engine::Pipeline::new();
    let mut answers = Vec::new();
    answers.push(engine.submit_in(&pipeline, "n0", t(AT), top_up(), None).await.unwrap());
    // "t1" was a top-up of 1.00: reused for 2.00 it is refused.
    answers.push(engine.submit_in(&pipeline, "t1", t(AT), cmd::top_up("a", "2.00"), None).await.unwrap());
    for k in 2..40 {
        answers.push(engine.submit_in(&pipeline, format!("n{k}"), t(AT), top_up(), None).await.unwrap());
    }
    let mut answers = answers.into_iter();
    assert_eq!(answers.next().unwrap().answer().await.unwrap().outcome, Outcome::Accepted);
    let reused = answers.next().unwrap().answer().await.unwrap_err();
    assert!(matches!(reused, EngineError::IdReused { .. }), "{reused:?}");
    for answer in answers {
        assert!(matches!(answer.answer().await, Err(EngineError::Aborted(_))));
    }
    assert!((2..40).all(|k| engine.store().command(&format!("n{k}")).unwrap().is_none()), "none decided after the refusal");
    assert_eq!(balance(&engine).await, d("4.00"));
}

/// A scenario's run submits its commands ahead in a pipeline. When a write fails mid-run the
/// run stops with the error (`execute`'s retries are refused while the store is failing), having
/// done no command after the one that failed; run again once the store is back, it ends with
/// the document of a run that never failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scenario_run_whose_write_fails_midway_ends_as_a_run_that_never_failed_when_run_again() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/scenarios/mixed-two-accounts.json");
    let scenario = poolbill_scenario::parse(&std::fs::read_to_string(path).unwrap()).unwrap();
    let counted = Faulty::new();
    let clean = Engine::start(counted.clone()).await.unwrap();
    let expected = poolbill_scenario::run(&clean, &scenario).await.unwrap();
    let expected_document = clean.document().await.unwrap();
    let appends = counted.count(&counted.faults.appends);
    let outcomes = |r: &[(usize, Executed)]| r.iter().map(|(i, e)| (*i, e.outcome.clone())).collect::<Vec<_>>();
    let mut stopped = 0;
    // Each of the run's appends fails in turn.
    for skip in 0..appends {
        let fail = [Fail::BeforeCommit, Fail::AfterCommitWritten, Fail::AfterCommitLost][skip as usize % 3];
        let store = Faulty::new();
        let engine = Engine::start(store.clone()).await.unwrap();
        store.faults.skip.store(skip, Ordering::SeqCst);
        *store.faults.next.lock().unwrap() = Some(fail);
        // A failure in the setup (one command at a time) may be retried through; one in the
        // pipeline stops the run.
        if let Err(failed) = poolbill_scenario::run(&engine, &scenario).await {
            assert!(matches!(failed, EngineError::Aborted(_) | EngineError::OutcomeUnknown(_)), "{fail:?} after {skip}: {failed:?}");
            stopped += 1;
        }
        let started = Instant::now();
        let results = loop {
            match poolbill_scenario::run(&engine, &scenario).await {
                Ok(results) => break results,
                Err(e) => assert!(started.elapsed() < Duration::from_secs(5), "{fail:?} after {skip}: still failing: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        // How many appends a run takes depends on how commands fall into group commits: a late
        // `skip` may find none left to fail.
        if store.faults.next.lock().unwrap().is_none() {
            assert!(store.count(&store.faults.recovers) > 0, "{fail:?} after {skip}: the write failed, the store recovered");
        }
        assert_eq!(outcomes(&results), outcomes(&expected), "{fail:?} after {skip}");
        assert_eq!(engine.document().await.unwrap(), expected_document, "{fail:?} after {skip}");
        engine.store().verify().unwrap();
    }
    assert!(stopped > 0, "some failures hit the pipeline and stopped the run");
}
