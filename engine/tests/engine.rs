//! The engine end to end on a real sled store: acknowledgement, idempotency, group commit,
//! restart, time travel and the live clock.

use poolbill_domain::{Command, PoolStatus, Rule};
use poolbill_engine::{spawn_clock, Engine, EngineError, ManualClock, Outcome, Upto};
use poolbill_testkit::{cmd, d, t};
use rust_decimal::Decimal;
use std::sync::Arc;
use std::time::Duration;

async fn setup(engine: &Engine, balance: &str) {
    let at = t("2023-01-01T00:00:00+08:00");
    engine.execute("price", at, cmd::price("cpu", Some("3.50"), Some("1750.00"), None), None).await.unwrap();
    engine.execute("open", at, cmd::open_account("a", balance), None).await.unwrap();
}

fn on_demand(pool: &str) -> Command {
    cmd::purchase("a", pool).spec("cpu").build()
}

fn monthly(pool: &str) -> Command {
    cmd::purchase("a", pool).spec("cpu").monthly(1).build()
}

async fn balance(engine: &Engine) -> Decimal {
    engine.read(|p| p.state.accounts["a"].balance).await.unwrap()
}

#[tokio::test]
async fn a_repeated_command_id_returns_the_first_result_and_appends_nothing() {
    let engine = Engine::temporary().await.unwrap();
    setup(&engine, "5000").await;
    let at = t("2023-04-08T10:00:00+08:00");
    let first = engine.execute("buy-1", at, monthly("p"), None).await.unwrap();
    assert_eq!(first.outcome, Outcome::Accepted);
    assert!(!first.duplicate);
    let events = engine.store().last_position().unwrap();
    // The retry, the very same command, is the first result.
    let again = engine.execute("buy-1", at, monthly("p"), None).await.unwrap();
    assert!(again.duplicate);
    assert_eq!((again.outcome, again.first_position), (first.outcome, first.first_position));
    assert_eq!(engine.store().last_position().unwrap(), events);
    assert_eq!(balance(&engine).await, d("3250"));
    // A rejection is a result too: retried, it is the same rejection.
    let refused = engine.execute("buy-2", at, monthly("p"), Some(7)).await.unwrap();
    assert!(matches!(refused.outcome, Outcome::Rejected { rule: Rule::R17, .. }));
    let again = engine.execute("buy-2", at, monthly("p"), Some(7)).await.unwrap();
    assert_eq!((again.outcome, again.duplicate), (refused.outcome, true));
    let rejections = engine.as_of(Upto::All).await.unwrap().rejections;
    assert_eq!(rejections.len(), 1);
    assert_eq!(rejections[0].index, Some(7));
}

#[tokio::test]
async fn an_id_used_again_for_another_command_is_refused_naming_both_and_changes_nothing() {
    let engine = Engine::temporary().await.unwrap();
    setup(&engine, "5000").await;
    let at = t("2023-04-08T10:00:00+08:00");
    let top_up = |amount: &str| Command::TopUp { account: "a".into(), amount: d(amount) };
    engine.execute("t1", at, top_up("1.00"), None).await.unwrap();
    let events = engine.store().last_position().unwrap();
    // Another amount, another instant, or another kind of command under the same id: refused.
    let later = t("2023-04-08T11:00:00+08:00");
    for (when, command) in [(at, top_up("999.00")), (later, top_up("1.00")), (at, monthly("p"))] {
        match engine.execute("t1", when, command, None).await {
            Err(e @ EngineError::IdReused { .. }) => {
                let message = e.to_string();
                assert!(message.contains("\"t1\"") && message.contains("\"1.00\""), "names the id and the first command: {message}");
            }
            other => panic!("expected IdReused, got {other:?}"),
        }
    }
    let e = engine.execute("t1", at, top_up("999.00"), None).await.unwrap_err().to_string();
    assert!(e.contains("999.00") && e.contains("first") && e.contains("now"), "names both: {e}");
    assert_eq!(engine.store().last_position().unwrap(), events, "nothing appended");
    assert_eq!(balance(&engine).await, d("5001.00"));
    // Within one group commit: the second use of a new id for another command is refused too.
    let first = engine.submit("t2", at, top_up("2.00"), None).await.unwrap();
    let second = engine.submit("t2", at, top_up("3.00"), None).await.unwrap();
    let same = engine.submit("t2", at, top_up("2.00"), None).await.unwrap();
    assert!(!first.answer().await.unwrap().duplicate);
    assert!(matches!(second.answer().await, Err(EngineError::IdReused { .. })));
    assert!(same.answer().await.unwrap().duplicate);
    assert_eq!(balance(&engine).await, d("5003.00"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commands_are_serialised_and_each_acknowledged_once() {
    let engine = Engine::temporary().await.unwrap();
    setup(&engine, "10000").await;
    let at = t("2023-04-08T10:00:00+08:00");
    // 20 tasks race to buy 1750 subscriptions with 10000: exactly 5 can be paid for (R12).
    let mut tasks = Vec::new();
    for i in 0..20 {
        let engine = engine.clone();
        tasks.push(tokio::spawn(async move { engine.execute(format!("buy-{i}"), at, monthly(&format!("p{i}")), None).await.unwrap() }));
    }
    let mut accepted = 0;
    for task in tasks {
        match task.await.unwrap().outcome {
            Outcome::Accepted => accepted += 1,
            Outcome::Rejected { rule, .. } => assert_eq!(rule, Rule::R12),
        }
    }
    assert_eq!(accepted, 5);
    assert_eq!(balance(&engine).await, d("1250"));
    // The same id sent concurrently is appended once.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let engine = engine.clone();
        tasks.push(tokio::spawn(async move { engine.execute("same", at, on_demand("od"), None).await.unwrap() }));
    }
    let results: Vec<_> = futures_join(tasks).await;
    assert_eq!(results.iter().filter(|r| !r.duplicate).count(), 1);
    assert!(results.iter().all(|r| r.first_position == results[0].first_position));
    assert_eq!(engine.read(|p| p.state.pools.len()).await.unwrap(), 6);
    engine.store().verify().unwrap();
}

async fn futures_join<T>(tasks: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submitted_commands_are_decided_in_submission_order_and_answered_once_on_disk() {
    let engine = Engine::temporary().await.unwrap();
    let at = t("2023-01-01T00:00:00+08:00");
    // Queued without waiting: each depends on its predecessors (a price before a purchase, an
    // account before its top-ups and its purchase), so any other order would refuse some.
    let mut pending = vec![
        engine.submit("price", at, cmd::price("cpu", Some("3.50"), Some("1750.00"), None), None).await.unwrap(),
        engine.submit("open", at, cmd::open_account("a", "0"), None).await.unwrap(),
    ];
    for k in 0..200 {
        pending.push(engine.submit(format!("top-up-{k}"), at, cmd::top_up("a", "10"), None).await.unwrap());
    }
    // 2000 paid by 200 top-ups of 10 just before: accepted only in this order (R12).
    pending.push(engine.submit("buy", at, monthly("p"), None).await.unwrap());
    pending.push(engine.submit("buy", at, monthly("p"), None).await.unwrap());
    let advanced = engine.submit_advance(t("2023-01-01T01:00:00+08:00")).await.unwrap();
    let retry = pending.pop().unwrap();
    let mut last = 0;
    let mut bought = None;
    for (i, answer) in pending.into_iter().enumerate() {
        let done = answer.answer().await.unwrap();
        assert_eq!(done.outcome, Outcome::Accepted, "request {i}");
        let (first, end) = (done.first_position.unwrap(), done.last_position.unwrap());
        assert!(!done.duplicate && last < first && first <= end, "request {i}: {first}..{end} after {last}");
        last = end;
        bought = Some(done);
    }
    // The same id again, queued right behind: the purchase's first result, nothing appended.
    let again = retry.answer().await.unwrap();
    let bought = bought.unwrap();
    assert!(again.duplicate);
    assert_eq!((again.outcome, again.first_position, again.last_position), (bought.outcome, bought.first_position, bought.last_position));
    advanced.answer().await.unwrap();
    assert_eq!(balance(&engine).await, d("250"));
    assert_eq!(engine.read(|p| p.state.pools.len()).await.unwrap(), 1);
}

#[tokio::test]
async fn a_reopened_store_continues_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    {
        let engine = Engine::open(dir.path()).await.unwrap();
        setup(&engine, "100").await;
        engine.execute("od", t("2023-04-18T09:59:30+08:00"), on_demand("p"), None).await.unwrap();
        engine.advance_to(t("2023-04-18T10:30:00+08:00")).await.unwrap();
    }
    // sled releases its lock when the last handle goes: wait for the engine task to end.
    let engine = loop {
        match Engine::open(dir.path()).await {
            Ok(e) => break e,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    assert_eq!(balance(&engine).await, d("99.98")); // the 30 s line, 0.02
    engine.execute("del", t("2023-04-18T10:45:46+08:00"), Command::Delete { pool: "p".into() }, None).await.unwrap();
    engine.advance_to(t("2023-04-18T12:00:00+08:00")).await.unwrap();
    assert_eq!(balance(&engine).await, d("97.32"));
    // The ids recorded before the restart are still known.
    assert!(engine.execute("od", t("2023-04-18T09:59:30+08:00"), on_demand("p"), None).await.unwrap().duplicate);
}

#[tokio::test]
async fn time_travel_reads_the_log_as_it_stood() {
    let engine = Engine::temporary().await.unwrap();
    setup(&engine, "10000").await;
    engine.execute("buy", t("2023-03-08T15:50:04+08:00"), monthly("p"), None).await.unwrap();
    engine.advance_to(t("2023-05-20T00:00:00+08:00")).await.unwrap();
    let status = |p: &poolbill_projections::Projections| p.state.pools["p"].status;
    for (at, expected) in [
        ("2023-04-08T23:59:59+08:00", PoolStatus::Running),
        ("2023-04-09T00:00:00+08:00", PoolStatus::Expired),
        ("2023-04-23T23:59:59+08:00", PoolStatus::Expired),
        ("2023-04-24T00:00:00+08:00", PoolStatus::Frozen),
        ("2023-05-09T00:00:00+08:00", PoolStatus::Released),
    ] {
        let then = engine.as_of(Upto::Instant(t(at))).await.unwrap();
        assert_eq!(status(&then), expected, "at {at}");
    }
    // The whole log replayed equals the live projections.
    let replayed = engine.as_of(Upto::All).await.unwrap().document();
    assert_eq!(replayed, engine.document().await.unwrap());
}

#[tokio::test]
async fn the_live_clock_drives_the_same_path() {
    let engine = Engine::temporary().await.unwrap();
    setup(&engine, "100").await;
    engine.execute("od", t("2023-04-18T09:00:00+08:00"), on_demand("p"), None).await.unwrap();
    let clock = Arc::new(ManualClock::new(t("2023-04-18T09:30:00+08:00")));
    let driver = spawn_clock(engine.clone(), clock.clone(), Duration::from_millis(10));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(balance(&engine).await, d("100"), "nothing due before 10:00");
    clock.set(t("2023-04-18T12:00:00+08:00"));
    let mut waited = 0;
    while balance(&engine).await != d("89.50") && waited < 200 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        waited += 1;
    }
    assert_eq!(balance(&engine).await, d("89.50"), "three hours settled by the clock");
    driver.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_opens_from_its_snapshot_and_the_tail_of_its_log_and_ignores_a_damaged_snapshot() {
    use poolbill_store::EventStore;
    use poolbill_store_sled::SledStore;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let hourly = |hours: i64| t("2023-04-18T10:00:00+08:00") + chrono::Duration::hours(hours);
    // Given an engine that keeps a snapshot every 40 events, and a day of hourly settlements.
    let state = {
        let engine = Engine::start_with(SledStore::open(&path).unwrap(), 40).await.unwrap();
        setup(&engine, "1000").await;
        engine.execute("buy", hourly(0), on_demand("p"), None).await.unwrap();
        engine.advance_to(hourly(24)).await.unwrap();
        // A few events after the snapshot the day's commit left: the tail to replay.
        for i in 0..3 {
            engine.execute(format!("top-{i}"), hourly(24), Command::TopUp { account: "a".into(), amount: d("1") }, None).await.unwrap();
        }
        engine.read(|p| (p.state.clone(), p.last_position)).await.unwrap()
    };
    // sled releases its lock when the engine task has ended.
    let store = loop {
        match SledStore::open(&path) {
            Ok(store) => break store,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let kept = store.snapshot_positions().unwrap();
    assert!(!kept.is_empty() && kept.iter().all(|p| *p < state.1), "snapshots before the end: {kept:?} (end {})", state.1);
    let newest = *kept.last().unwrap();
    // When it is opened again: the same state as the full replay, from the snapshot plus tail.
    let loaded = poolbill_ledger::load_live(&store).unwrap();
    assert_eq!((loaded.snapshot, loaded.folded), (Some(newest), state.1 - newest));
    assert_eq!((loaded.projections.state, loaded.projections.last_position), state.clone());
    // And a damaged snapshot is ignored in favour of the log, with the same state.
    store.put_snapshot(newest, b"garbage").unwrap();
    let loaded = poolbill_ledger::load_live(&store).unwrap();
    assert!(loaded.ignored.is_some(), "the damaged snapshot is said to be ignored");
    assert_eq!((loaded.projections.state, loaded.projections.last_position), state.clone());
    drop(store);
    let engine = Engine::open(&path).await.unwrap();
    assert_eq!(engine.read(|p| (p.state.clone(), p.last_position)).await.unwrap(), state);
    // It goes on deciding from there: the next hour is billed once more.
    engine.advance_to(hourly(25)).await.unwrap();
    assert_eq!(balance(&engine).await, d("1003") - d("3.50") * Decimal::from(25));
}

/// The tag index the engine keeps from the tags it computed when it wrote (at each snapshot) is
/// the one rebuilt from the log: the same tags, the same events under each.
#[tokio::test]
async fn the_tag_index_kept_while_writing_is_the_one_rebuilt_from_the_log() {
    use poolbill_store::EventStore;
    let store = poolbill_store_sled::SledStore::temporary().unwrap();
    let engine = Engine::start_with(store.clone(), 7).await.unwrap();
    setup(&engine, "100000").await;
    for (k, pool) in ["p1", "p2", "p3"].iter().enumerate() {
        let at = t("2023-01-02T10:00:00+08:00") + chrono::Duration::minutes(k as i64 * 7);
        engine.execute(format!("buy-{pool}"), at, on_demand(pool), None).await.unwrap();
        engine.execute(format!("ready-{pool}"), at, Command::Ready { pool: pool.to_string() }, None).await.unwrap();
    }
    engine.execute("sub", t("2023-01-02T11:00:00+08:00"), monthly("m1"), None).await.unwrap();
    engine.advance_to(t("2023-01-03T10:00:00+08:00")).await.unwrap();
    // One more snapshot's worth, so that what was written last is indexed too.
    engine.execute("del", t("2023-01-03T10:30:00+08:00"), Command::Delete { pool: "p1".into() }, None).await.unwrap();
    engine.advance_to(t("2023-01-03T12:00:00+08:00")).await.unwrap();
    assert!(store.tagged_through().unwrap() > 100, "the engine kept the index up as it wrote");
    poolbill_ledger::catch_up_indexes(&store).unwrap();
    let kept = store.tag_counts("").unwrap();
    let lists: Vec<Vec<u64>> = kept.iter().map(|(tag, _)| store.tagged(tag, 0, usize::MAX).unwrap()).collect();
    assert!(kept.iter().any(|(tag, n)| tag == "usage:p2" && *n > 20), "{kept:?}");
    store.reset_tags(poolbill_projections::TAGS_VERSION).unwrap();
    poolbill_ledger::catch_up_indexes(&store).unwrap();
    assert_eq!(store.tag_counts("").unwrap(), kept);
    let rebuilt: Vec<Vec<u64>> = kept.iter().map(|(tag, _)| store.tagged(tag, 0, usize::MAX).unwrap()).collect();
    assert_eq!(rebuilt, lists);
}

/// The Merkle index follows the log off the engine's thread, at each snapshot: it reaches the
/// last snapshot's position without any reader asking, and its root is the one computed from
/// the events.
#[tokio::test]
async fn the_merkle_index_follows_the_log_aside() {
    use poolbill_store::EventStore;
    let store = poolbill_store_sled::SledStore::temporary().unwrap();
    let engine = Engine::start_with(store.clone(), 7).await.unwrap();
    setup(&engine, "100000").await;
    engine.execute("buy", t("2023-01-02T10:00:00+08:00"), on_demand("p1"), None).await.unwrap();
    engine.execute("ready", t("2023-01-02T10:00:00+08:00"), Command::Ready { pool: "p1".into() }, None).await.unwrap();
    engine.advance_to(t("2023-01-03T12:00:00+08:00")).await.unwrap();
    // The snapshot after the advance is taken once its answer is sent, and the index follows it
    // on a thread of its own: wait (bounded) for both.
    let newest = || *store.snapshot_positions().unwrap().last().unwrap_or(&0);
    let mut waited = Duration::ZERO;
    while (newest() <= 20 || store.merkle_through().unwrap() < newest()) && waited < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(10)).await;
        waited += Duration::from_millis(10);
    }
    let snapshot = newest();
    let through = store.merkle_through().unwrap();
    assert!(through >= snapshot && snapshot > 20, "the index reaches {through}, the last snapshot is at {snapshot}");
    let leaves: Vec<[u8; 32]> = store.read_all(1).take(through as usize).map(|e| poolbill_projections::leaf_hash(&e.unwrap()).unwrap()).collect();
    let expected = poolbill_merkle::root(&mut poolbill_merkle::Leaves(&leaves), through).unwrap();
    assert_eq!(poolbill_ledger::merkle::digest(&store, Some(through)).unwrap(), (through, expected));
}

/// Fingerprints are kept in command records: the sorted-key JSON written straight from the
/// command must be the text a `serde_json::Value` of it gave, for every command of every seed
/// fixture.
#[test]
fn fingerprints_are_the_text_a_json_value_of_the_command_gives() {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures");
    let mut checked = 0;
    for dir in std::fs::read_dir(&fixtures).unwrap() {
        let scenario = dir.unwrap().path().join("scenario.json");
        let Ok(text) = std::fs::read_to_string(&scenario) else { continue };
        for step in poolbill_scenario::parse(&text).unwrap().steps() {
            let through_value = serde_json::json!({ "at": step.at.to_rfc3339(), "command": step.command }).to_string();
            assert_eq!(poolbill_engine::fingerprint(step.at, &step.command), through_value, "{}", scenario.display());
            checked += 1;
        }
    }
    assert!(checked > 50, "{checked} commands");
}

fn training(job: &str) -> Command {
    Command::StartJob {
        account: "a".into(),
        job: job.into(),
        kind: poolbill_domain::JobKind::Training,
        spec: "cpu".into(),
        nodes: 1,
        pool: None,
        model: None,
        disk_gb: None,
        disk_hourly: None,
        region: None,
    }
}

/// What a command's outcome was, as its rule and words.
async fn refusal(engine: &Engine, id: &str, at: poolbill_domain::Instant, command: Command) -> (Rule, String) {
    match engine.execute(id, at, command, None).await.unwrap().outcome {
        Outcome::Rejected { rule, reason } => (rule, reason),
        Outcome::Accepted => panic!("{id} was accepted"),
    }
}

/// Memory follows what is live: a deleted pool and job are forgotten once their last cycle is
/// settled, and a command that names one again is refused as if it had been kept (R5, R17),
/// before and after the store is opened again (its snapshot leaves them out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_resources_are_forgotten_and_recalled_for_the_commands_that_name_them_r5_r17() {
    use poolbill_store_sled::SledStore;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let at = |minutes: i64| t("2023-04-18T10:00:00+08:00") + chrono::Duration::minutes(minutes);
    // Given an engine that indexes, forgets and keeps a snapshot after every group commit, a
    // pool and a training job (billed as training_t1) deleted at 10:30,
    let engine = Engine::start_with(SledStore::open(&path).unwrap(), 1).await.unwrap();
    setup(&engine, "1000").await;
    engine.execute("buy", at(0), on_demand("p"), None).await.unwrap();
    engine.execute("start", at(0), training("t1"), None).await.unwrap();
    engine.execute("delete", at(30), Command::Delete { pool: "p".into() }, None).await.unwrap();
    engine.execute("delete-job", at(30), Command::DeleteJob { job: "t1".into() }, None).await.unwrap();
    let kept = engine.read(|p| p.state.pools.contains_key("p") && p.state.jobs.contains_key("t1")).await.unwrap();
    assert!(kept, "kept until their last cycle is settled");
    // when their cycle is settled at 11:00, they are forgotten, bill id and all;
    engine.advance_to(at(60)).await.unwrap();
    let live = engine.read(|p| (p.state.pools.len(), p.state.jobs.len(), p.state.bill_ids.len())).await.unwrap();
    assert_eq!(live, (0, 0, 0));
    // then commands that name them are refused in the words a state that kept them gives,
    let words = [
        (Command::Delete { pool: "p".into() }, Rule::R17, "pool \"p\" is already deleted"),
        (on_demand("p"), Rule::R17, "pool \"p\" already exists"),
        (Command::StopJob { job: "t1".into() }, Rule::R17, "job \"t1\" is already deleted"),
        (training("t1"), Rule::R17, "job \"t1\" is already deleted"),
        (on_demand("training_t1"), Rule::R5, "\"training_t1\" is the bill id of job \"t1\""),
        (
            Command::BuyPackage {
                account: "a".into(),
                package: "t1".into(),
                spec: "cpu".into(),
                quantity: 1,
                hours: 10,
                valid_days: 30,
                price: d("10"),
                region: None,
                alert_below: None,
            },
            Rule::R17,
            "job \"t1\" already exists",
        ),
    ];
    for (k, (command, rule, reason)) in words.iter().enumerate() {
        assert_eq!(refusal(&engine, &format!("again-{k}"), at(61), command.clone()).await, (*rule, reason.to_string()));
    }
    // a read about one shows it, and a new id is still free.
    let shown = engine.read_about(vec!["p".into()], |p| p.state.pools.get("p").map(|p| p.status)).await.unwrap();
    assert_eq!(shown, Some(PoolStatus::Deleted));
    assert_eq!(engine.execute("new", at(61), on_demand("q"), None).await.unwrap().outcome, Outcome::Accepted);
    drop(engine);
    // Opened again, from a snapshot without them: the same words.
    let store = loop {
        match SledStore::open(&path) {
            Ok(store) => break store,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let engine = Engine::start(store).await.unwrap();
    assert_eq!(engine.read(|p| p.state.pools.keys().cloned().collect::<Vec<_>>()).await.unwrap(), ["q"]);
    for (k, (command, rule, reason)) in words.iter().enumerate() {
        assert_eq!(refusal(&engine, &format!("reopened-{k}"), at(62), command.clone()).await, (*rule, reason.to_string()));
    }
}

/// A batch of commands whose settlements together pass the chain's bound (16,384 events) is
/// written in parts within the batch: the log is event for event the one commands decided one
/// at a time write, and each answer names its own positions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_longer_than_a_chain_is_written_in_parts_as_one_at_a_time_would_write_it() {
    let hour = |h: i64| t("2023-04-01T00:30:00+08:00") + chrono::Duration::hours(h);
    let mut commands = vec![
        ("price".to_string(), hour(0), cmd::price("cpu", Some("3.50"), Some("1750.00"), None)),
        ("open".to_string(), hour(0), cmd::open_account("a", "100000000")),
    ];
    // 80 pools billed every hour, then 240 top-ups an hour apart: each settles one hour.
    commands.extend((0..80).map(|k| (format!("buy-{k}"), hour(0), on_demand(&format!("p{k}")))));
    commands.extend((1..=240).map(|h| (format!("top-up-{h}"), hour(h), cmd::top_up("a", "1"))));
    let one_at_a_time = Engine::temporary().await.unwrap();
    for (id, at, command) in &commands {
        one_at_a_time.execute(id.clone(), *at, command.clone(), None).await.unwrap();
    }
    let pipelined = Engine::temporary().await.unwrap();
    let mut answers = Vec::new();
    for (id, at, command) in &commands {
        answers.push((id.clone(), pipelined.submit(id.clone(), *at, command.clone(), None).await.unwrap()));
    }
    for (id, answer) in answers {
        let done = answer.answer().await.unwrap();
        let first = pipelined.store().read_at(done.first_position.unwrap()).unwrap().unwrap();
        assert_eq!(first.command_id.as_deref(), Some(id.as_str()), "{id}'s answer names its own first position");
    }
    let log = |engine: &Engine| -> Vec<(String, u64, String)> {
        engine.store().read_all(1).map(|e| e.unwrap()).map(|e| (e.event_type, e.position, e.stream)).collect()
    };
    let (written, expected) = (log(&pipelined), log(&one_at_a_time));
    assert!(written.len() > 20_000, "the settlements pass the chain's bound: {} events", written.len());
    assert_eq!(written, expected);
    assert_eq!(balance(&pipelined).await, balance(&one_at_a_time).await);
}
