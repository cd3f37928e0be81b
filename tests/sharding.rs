//! Sharding by account on PostgreSQL (issue 11): two engines with split ownership under
//! concurrent load, on two databases and on one; ownership refused while held; fencing.
//!
//! "Two databases" are two databases of the one throwaway cluster this test process starts (a
//! second cluster would cost seconds and show nothing more: shards never talk to each other's
//! database, and each store connects by its own URL).

use poolbill_domain::{Command, Instant};
use poolbill_engine::Outcome;
use poolbill_ledger::Upto;
use poolbill_projections::{BillView, Document};
use poolbill_replay::jsonl;
use poolbill_shards::export::write_merged;
use poolbill_shards::{ShardError, ShardMap, ShardedEngine};
use poolbill_store::EventStore;
use poolbill_store_postgres::cluster::{execute, fresh_database};
use poolbill_testkit::{cmd, d, t};
use rust_decimal::Decimal;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

const OPENING: &str = "1000";
const ROUNDS: u32 = 8;

fn map_of(s1: &str, s2: &str) -> ShardMap {
    let text = format!(
        r#"{{"shards": [{{"id": "s1", "postgres": "{s1}", "schema": "shard_s1"}}, {{"id": "s2", "postgres": "{s2}", "schema": "shard_s2"}}]}}"#
    );
    ShardMap::parse(&text).unwrap()
}

fn at_hour(hour: u32) -> Instant {
    t("2024-03-01T00:00:00+08:00") + chrono::Duration::hours(i64::from(hour))
}

/// Accounts until each shard has `per_shard` of them, by the map's placement.
fn accounts_on_both(map: &ShardMap, per_shard: usize) -> Vec<String> {
    let mut picked: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for n in 0.. {
        let account = format!("acct-{n}");
        let list = picked.entry(map.shard_of(&account).id.clone()).or_default();
        if list.len() < per_shard {
            list.push(account);
        }
        if picked.len() == 2 && picked.values().all(|l| l.len() == per_shard) {
            break;
        }
    }
    picked.into_values().flatten().collect()
}

/// What the load recorded: each acknowledged command id by shard, and accepted top-ups.
#[derive(Default)]
struct Acknowledged {
    by_shard: HashMap<String, Vec<String>>,
    top_ups: BTreeMap<String, Decimal>,
}

/// The engine of `account`'s shard among `engines`.
fn owner_of<'a>(engines: &'a [Arc<ShardedEngine>], map: &ShardMap, account: &str) -> &'a Arc<ShardedEngine> {
    let shard = &map.shard_of(account).id;
    engines.iter().find(|e| e.owned().iter().any(|s| &s.spec.id == shard)).expect("every shard is owned")
}

/// Run `command` on `engine`, which must own it; record what was acknowledged.
async fn run_recorded(engine: &ShardedEngine, acked: &Mutex<Acknowledged>, id: String, at: Instant, command: Command) {
    let top_up = match &command {
        Command::TopUp { account, amount } => Some((account.clone(), *amount)),
        _ => None,
    };
    let results = engine.execute(&id, at, command, None).await.unwrap_or_else(|e| panic!("{id}: {e}"));
    let mut acked = acked.lock().unwrap();
    for (shard, executed) in results {
        assert!(!executed.duplicate, "{id}: a fresh id answered as a duplicate");
        if let (Some((account, amount)), Outcome::Accepted) = (&top_up, &executed.outcome) {
            *acked.top_ups.entry(account.clone()).or_default() += *amount;
        }
        acked.by_shard.entry(shard).or_default().push(id.clone());
    }
}

/// Prices and accounts, then rounds of concurrent load: a task per account (top-ups, a purchase,
/// a scale) and a task per engine advancing its clock, all at the round's instant.
async fn load(engines: &[Arc<ShardedEngine>], map: &ShardMap, accounts: &[String]) -> Acknowledged {
    let acked = Arc::new(Mutex::new(Acknowledged::default()));
    for engine in engines {
        // Platform-wide: sent to every engine, applied on each of its shards.
        run_recorded(engine, &acked, "price-1".into(), at_hour(0), cmd::seed_price()).await;
    }
    for account in accounts {
        run_recorded(owner_of(engines, map, account), &acked, format!("open-{account}"), at_hour(0), cmd::open_account(account, OPENING)).await;
    }
    for round in 1..=ROUNDS {
        let at = at_hour(round);
        let mut tasks = Vec::new();
        for account in accounts {
            let (engine, acked, account) = (owner_of(engines, map, account).clone(), acked.clone(), account.clone());
            tasks.push(tokio::spawn(async move {
                run_recorded(&engine, &acked, format!("top-up-{account}-{round}"), at, cmd::top_up(&account, "10")).await;
                let pool = format!("pool-{account}");
                match round {
                    1 => run_recorded(&engine, &acked, format!("buy-{pool}"), at, cmd::purchase(&account, &pool).build()).await,
                    3 => run_recorded(&engine, &acked, format!("scale-{pool}"), at, cmd::scale(&pool, 2)).await,
                    _ => {}
                }
            }));
        }
        for engine in engines {
            let engine = engine.clone();
            tasks.push(tokio::spawn(async move {
                engine.advance_to(at).await.unwrap();
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
    }
    for engine in engines {
        engine.advance_to(at_hour(ROUNDS + 1)).await.unwrap();
    }
    Arc::try_unwrap(acked).ok().unwrap().into_inner().unwrap()
}

fn read_log(store: &dyn EventStore) -> Vec<poolbill_store::Envelope> {
    store.read_all(1).collect::<Result<_, _>>().unwrap()
}

/// Every acknowledged command is recorded and received exactly once on its shard, and on no
/// other shard.
fn each_acknowledged_command_is_present_once(engines: &[Arc<ShardedEngine>], acked: &Acknowledged) {
    for engine in engines {
        for shard in engine.owned() {
            let log = read_log(&shard.store);
            let mut received: HashMap<&str, usize> = HashMap::new();
            for envelope in log.iter().filter(|e| e.event_type == "command_received") {
                *received.entry(envelope.command_id.as_deref().expect("a received command has its id")).or_default() += 1;
            }
            let ids = &acked.by_shard[&shard.spec.id];
            for id in ids {
                assert!(shard.store.command(id).unwrap().is_some(), "{id}: no command record on {}", shard.spec.id);
                assert_eq!(received.get(id.as_str()), Some(&1), "{id}: received on {} not exactly once", shard.spec.id);
            }
            assert_eq!(received.len(), ids.len(), "{}: the log receives exactly the acknowledged commands", shard.spec.id);
            assert!(received.values().all(|&n| n == 1));
            shard.store.verify().unwrap_or_else(|e| panic!("{} does not verify: {e}", shard.spec.id));
        }
    }
}

fn dec(text: &str) -> Decimal {
    text.parse().unwrap_or_else(|e| panic!("{text:?}: {e}"))
}

/// Opening balance + accepted top-ups − payable bills = balance, for every account shown.
fn every_ledger_reconciles(document: &Document, accounts: &[String], acked: &Acknowledged) {
    for account in &document.accounts {
        assert!(accounts.contains(&account.id), "{} was never opened here", account.id);
        let payable: Decimal = document.bills.iter().filter(|b| b.account == account.id).map(|b| dec(&b.payable)).sum();
        let top_ups = acked.top_ups.get(&account.id).copied().unwrap_or_default();
        assert!(payable > Decimal::ZERO, "{}: the load billed nothing", account.id);
        assert_eq!(d(OPENING) + top_ups - payable, dec(&account.balance), "{} does not reconcile", account.id);
    }
}

/// Bill lines without the log position that recorded them (a merged log numbers positions anew).
fn bill_lines(bills: &[BillView]) -> Vec<BillView> {
    let mut lines: Vec<BillView> = bills.iter().cloned().map(|b| BillView { event: 0, ..b }).collect();
    lines.sort_by(|a, b| (&a.account, &a.resource, &a.start, &a.item).cmp(&(&b.account, &b.resource, &b.start, &b.item)));
    lines
}

/// The whole check of a split-ownership run on `map`.
async fn split_ownership_under_load(map: ShardMap) {
    let a = Arc::new(ShardedEngine::start(map.clone(), &["s1".into()], "engine-a").await.unwrap());
    let b = Arc::new(ShardedEngine::start(map.clone(), &["s2".into()], "engine-b").await.unwrap());
    let engines = [a.clone(), b.clone()];
    let accounts = accounts_on_both(&map, 5);
    let acked = load(&engines, &map, &accounts).await;

    // A command for the other engine's account: refused naming the owner, nothing written.
    let foreign = accounts.iter().find(|acct| map.shard_of(acct).id == "s2").unwrap();
    let sizes = |e: &ShardedEngine| e.owned().iter().map(|s| s.store.last_position().unwrap()).collect::<Vec<_>>();
    let (before_a, before_b) = (sizes(&a), sizes(&b));
    let refused = a.execute("foreign-1", at_hour(ROUNDS + 1), cmd::top_up(foreign, "5"), None).await.unwrap_err();
    assert_eq!(refused.to_string(), format!("account {foreign} is on shard s2, owned by engine-b"));
    let refused_pool = a.execute("foreign-2", at_hour(ROUNDS + 1), cmd::scale(&format!("pool-{foreign}"), 3), None).await.unwrap_err();
    assert!(matches!(&refused_pool, ShardError::NotOwned { shard, .. } if shard == "s2"), "{refused_pool}");
    assert_eq!((sizes(&a), sizes(&b)), (before_a, before_b), "a refusal writes nothing");
    for shard in a.owned().iter().chain(b.owned()) {
        assert!(shard.store.command("foreign-1").unwrap().is_none());
    }

    // A retry of an acknowledged command is a duplicate, and appends nothing.
    let account = &accounts[0];
    let again =
        owner_of(&engines, &map, account).execute(&format!("top-up-{account}-1"), at_hour(1), cmd::top_up(account, "10"), None).await.unwrap();
    assert!(again.iter().all(|(_, e)| e.duplicate), "{again:?}");

    each_acknowledged_command_is_present_once(&engines, &acked);

    // Every shard's ledger reconciles; together they show every account once.
    let mut shard_bills = Vec::new();
    let mut shown = Vec::new();
    for engine in &engines {
        for shard in engine.owned() {
            let document = shard.engine.document().await.unwrap();
            every_ledger_reconciles(&document, &accounts, &acked);
            shown.extend(document.accounts.iter().map(|a| a.id.clone()));
            shard_bills.extend(document.bills);
        }
    }
    shown.sort();
    let mut expected = accounts.clone();
    expected.sort();
    assert_eq!(shown, expected);

    // The merged export imports as a valid portable log and replays to the shards' bills.
    let stores: Vec<(&str, &dyn EventStore)> = map.shards.iter().map(|s| (s.id.as_str(), a.store(&s.id).unwrap())).collect();
    let mut merged = Vec::new();
    let count = write_merged(&stores, &mut merged).unwrap();
    let total: u64 = stores.iter().map(|(_, s)| s.last_position().unwrap()).sum();
    assert_eq!(count, total, "every shard's every event, once");
    let imported = jsonl::import(&merged[..]).unwrap_or_else(|e| panic!("the merged log does not import: {e}"));
    assert!(imported.iter().any(|e| e.stream == "catalog@s1") && imported.iter().any(|e| e.stream == "catalog@s2"));
    let replayed = poolbill_ledger::fold(jsonl::as_results(&imported), Upto::All).unwrap().document();
    assert_eq!(bill_lines(&replayed.bills), bill_lines(&shard_bills), "the merged log's bills are the shards' bills");
    every_ledger_reconciles(&replayed, &accounts, &acked);
    let report = poolbill_replay::audit::audit(&imported, &poolbill_replay::audit::Charged { bills: Vec::new(), total: None });
    assert!(report.integrity.is_empty(), "re-running the merged log's commands gives other bills: {:?}", report.integrity);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_engines_on_two_databases_split_ownership_under_load() {
    split_ownership_under_load(map_of(&fresh_database(), &fresh_database())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_engines_on_one_database_split_ownership_under_load() {
    let url = fresh_database();
    split_ownership_under_load(map_of(&url, &url)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_engine_cannot_take_an_owned_shard_and_is_told_who_owns_it() {
    let url = fresh_database();
    let map = map_of(&url, &url);
    let first = ShardedEngine::start(map.clone(), &["s1".into()], "engine-a").await.unwrap();
    let refused = ShardedEngine::start(map.clone(), &["s1".into(), "s2".into()], "engine-b").await.err().expect("s1 is owned");
    assert_eq!(refused.to_string(), "shard s1 is owned by engine-a (epoch 1), which is running: it cannot be taken while its owner holds it");
    // Once its owner stops, the shard can be taken, at the next epoch.
    drop(first);
    let second = ShardedEngine::start(map, &["s1".into()], "engine-b").await.unwrap();
    assert_eq!(second.owned()[0].epoch(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_whose_lease_was_taken_over_cannot_append() {
    let url = fresh_database();
    let map = map_of(&url, &url);
    let engine = ShardedEngine::start(map.clone(), &["s1".into(), "s2".into()], "engine-a").await.unwrap();
    engine.execute("price-1", at_hour(0), cmd::seed_price(), None).await.unwrap();
    let s1 = &engine.owned()[0];
    let before = s1.store.last_position().unwrap();
    // Taken over behind its back: the fencing token moves on.
    execute(&url, "UPDATE shard_s1.shard_lease SET owner = 'intruder', epoch = epoch + 1").unwrap();
    let account = accounts_on_both(&map, 1).into_iter().find(|a| map.shard_of(a).id == "s1").unwrap();
    let refused = engine.execute("open-1", at_hour(1), cmd::open_account(&account, OPENING), None).await.unwrap_err();
    let chain = std::iter::successors(Some(&refused as &dyn std::error::Error), |e| e.source()).map(|e| e.to_string()).collect::<Vec<_>>().join(": ");
    assert!(chain.contains("shard s1 was taken by intruder at epoch 2, and this engine's lease is epoch 1"), "{chain}");
    assert_eq!(s1.store.last_position().unwrap(), before, "a fenced engine writes nothing");
    assert!(s1.store.command("open-1").unwrap().is_none());
    // Its other shard is still its own.
    let on_s2 = accounts_on_both(&map, 1).into_iter().find(|a| map.shard_of(a).id == "s2").unwrap();
    engine.execute("open-2", at_hour(1), cmd::open_account(&on_s2, OPENING), None).await.unwrap();
}

/// `poolbill serve --shards` answers routed lines (a platform command on its shard, its own
/// account, a refusal naming the other engine), and `poolbill export --shards` writes a merged
/// log that `poolbill replay` and `audit` read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_and_export_with_a_shard_map() {
    use serde_json::{json, Value};
    use std::io::Write;
    let url = fresh_database();
    let map = map_of(&url, &url);
    let dir = tempfile::tempdir().unwrap();
    let map_path = dir.path().join("shards.json");
    std::fs::write(
        &map_path,
        format!(
            r#"{{"shards": [{{"id": "s1", "postgres": "{url}", "schema": "shard_s1"}}, {{"id": "s2", "postgres": "{url}", "schema": "shard_s2"}}]}}"#
        ),
    )
    .unwrap();
    let b = ShardedEngine::start(map.clone(), &["s2".into()], "engine-b").await.unwrap();
    let on = |shard: &str| accounts_on_both(&map, 1).into_iter().find(|a| map.shard_of(a).id == shard).unwrap();
    let (mine, theirs) = (on("s1"), on("s2"));
    b.execute("price-1", at_hour(0), cmd::seed_price(), None).await.unwrap();
    b.execute("open-b", at_hour(0), cmd::open_account(&theirs, "50"), None).await.unwrap();

    let poolbill = env!("CARGO_BIN_EXE_poolbill");
    let lines = [
        json!({"id": "price-1", "at": at_hour(0).to_rfc3339(), "type": "set_price", "spec": poolbill_testkit::SPEC, "hourly": "3.50"}),
        json!({"id": "open-a", "at": at_hour(0).to_rfc3339(), "type": "open_account", "account": mine, "balance": "50"}),
        json!({"id": "open-x", "at": at_hour(0).to_rfc3339(), "type": "open_account", "account": theirs, "balance": "50"}),
        json!({"id": "buy-a", "at": at_hour(0).to_rfc3339(), "type": "purchase", "account": mine, "pool": "pool-a", "spec": poolbill_testkit::SPEC,
               "nodes": 1, "mode": "on_demand", "ready": true}),
        json!({"type": "advance", "at": at_hour(2).to_rfc3339()}),
    ];
    let mut child = std::process::Command::new(poolbill)
        .args(["serve", "--shards", map_path.to_str().unwrap(), "--owns", "s1", "--owner", "engine-a"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output()).await.unwrap().unwrap();
    assert!(out.status.success(), "serve failed: {}", String::from_utf8_lossy(&out.stderr));
    let answers: Vec<Value> = String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(answers.len(), 5, "{answers:?}");
    assert_eq!((answers[0]["status"].as_str(), answers[0]["shard"].as_str()), (Some("accepted"), Some("s1")), "{}", answers[0]);
    assert_eq!((answers[1]["status"].as_str(), answers[1]["shard"].as_str()), (Some("accepted"), Some("s1")), "{}", answers[1]);
    assert_eq!(answers[2]["error"], json!(format!("account {theirs} is on shard s2, owned by engine-b")), "{}", answers[2]);
    assert_eq!((answers[3]["status"].as_str(), answers[3]["shard"].as_str()), (Some("accepted"), Some("s1")), "{}", answers[3]);
    assert_eq!(answers[4]["shards"]["s1"], json!(answers[4]["events"]), "{}", answers[4]);
    assert!(answers[4]["events"].as_u64() > Some(0), "the pool's hours are billed as the clock passes: {}", answers[4]);

    let log = dir.path().join("merged.jsonl");
    let export = std::process::Command::new(poolbill)
        .args(["export", "--shards", map_path.to_str().unwrap(), "--out", log.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(export.status.success(), "export failed: {}", String::from_utf8_lossy(&export.stderr));
    let replay = std::process::Command::new(poolbill).args(["replay", log.to_str().unwrap(), "--format", "json"]).output().unwrap();
    assert!(replay.status.success(), "replay failed: {}", String::from_utf8_lossy(&replay.stderr));
    let document: Value = serde_json::from_slice(&replay.stdout).unwrap();
    let mut shown: Vec<&str> = document["accounts"].as_array().unwrap().iter().map(|a| a["id"].as_str().unwrap()).collect();
    shown.sort();
    let mut expected = vec![mine.as_str(), theirs.as_str()];
    expected.sort();
    assert_eq!(shown, expected);
    assert!(document["bills"].as_array().unwrap().iter().any(|b| b["resource"] == "pool-a"), "{document}");
    // Nothing charged to compare with: what is audited is the log's own integrity (its commands
    // re-run give the bill lines it records).
    let charged = dir.path().join("charged.json");
    std::fs::write(&charged, r#"{"bills": []}"#).unwrap();
    let audit = std::process::Command::new(poolbill)
        .args(["audit", log.to_str().unwrap(), "--charged", charged.to_str().unwrap(), "--format", "json"])
        .output()
        .unwrap();
    assert!(audit.status.success(), "audit failed: {}{}", String::from_utf8_lossy(&audit.stdout), String::from_utf8_lossy(&audit.stderr));
}

/// `--take-over`: a second engine takes a shard from its running owner, which from then on can
/// append nothing there (its lease session ended, its epoch stale).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_take_over_fences_the_running_owner() {
    let url = fresh_database();
    let map = map_of(&url, &url);
    let old = ShardedEngine::start(map.clone(), &["s1".into()], "engine-a").await.unwrap();
    old.execute("price-1", at_hour(0), cmd::seed_price(), None).await.unwrap();
    let new = ShardedEngine::start_with(map.clone(), &["s1".into()], "engine-b", poolbill_shards::Take::Over).await.unwrap();
    assert_eq!(new.owned()[0].epoch(), 2);
    let holder = new.owned()[0].store.lease_holder().unwrap().unwrap();
    assert_eq!((holder.owner.as_str(), holder.epoch, holder.live), ("engine-b", 2, true));

    let account = accounts_on_both(&map, 1).into_iter().find(|a| map.shard_of(a).id == "s1").unwrap();
    let refused = old.execute("open-old", at_hour(1), cmd::open_account(&account, OPENING), None).await.unwrap_err();
    let chain = std::iter::successors(Some(&refused as &dyn std::error::Error), |e| e.source()).map(|e| e.to_string()).collect::<Vec<_>>().join(": ");
    assert!(chain.contains("shard s1 was taken by engine-b at epoch 2, and this engine's lease is epoch 1"), "{chain}");
    assert!(new.owned()[0].store.command("open-old").unwrap().is_none());
    let done = new.execute("open-new", at_hour(1), cmd::open_account(&account, OPENING), None).await.unwrap();
    assert_eq!(done[0].1.outcome, Outcome::Accepted);
}

/// Bad input to `serve --shards` and `export --shards` is refused (exit 2), naming what is
/// wrong and where, and creates nothing.
#[test]
fn bad_shard_maps_and_owns_are_refused_and_create_nothing() {
    let url = fresh_database();
    let dir = tempfile::tempdir().unwrap();
    let poolbill = env!("CARGO_BIN_EXE_poolbill");
    let write_map = |name: &str, text: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_string()
    };
    let duplicate = write_map(
        "duplicate.json",
        format!(
            r#"{{"shards": [{{"id": "s1", "postgres": "{url}", "schema": "shard_s1"}}, {{"id": "s1", "postgres": "{url}", "schema": "shard_s2"}}]}}"#
        ),
    );
    let good = write_map(
        "good.json",
        format!(
            r#"{{"shards": [{{"id": "s1", "postgres": "{url}", "schema": "shard_s1"}}, {{"id": "s2", "postgres": "{url}", "schema": "shard_s2"}}]}}"#
        ),
    );
    let refused = |args: &[&str], expected: &str| {
        let out = std::process::Command::new(poolbill).args(args).stdin(std::process::Stdio::null()).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr:?} lacks {expected:?}");
    };
    refused(&["serve", "--shards", &duplicate, "--owns", "s1", "--owner", "a"], "shards[1] (shard s1): duplicate shard id \"s1\"");
    refused(&["serve", "--shards", &good, "--owns", "s9", "--owner", "a"], "--owns names shard \"s9\", which the shard map does not have");
    refused(&["export", "--shards", &good], "is not a poolbill store");
    // Nothing was created: no shard schema exists.
    execute(&url, "DO $$ BEGIN IF EXISTS (SELECT 1 FROM pg_namespace WHERE nspname LIKE 'shard_%') THEN RAISE EXCEPTION 'a shard schema was created'; END IF; END $$")
        .unwrap();
}

/// An engine forgets a gone resource (at its open at the latest): routing still finds it on its
/// shard, recalled from that shard's log, and the command is refused there by the rules (R17),
/// not sent to the first shard as an unknown id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gone_pool_forgotten_by_its_shards_engine_is_still_routed_to_its_shard() {
    let url = fresh_database();
    let map = map_of(&url, &url);
    let both = ["s1".to_string(), "s2".to_string()];
    let account = accounts_on_both(&map, 1).into_iter().find(|a| map.shard_of(a).id == "s2").unwrap();
    {
        let engine = ShardedEngine::start(map.clone(), &both, "engine-a").await.unwrap();
        engine.execute("price", at_hour(0), cmd::price("cpu", Some("3.50"), Some("1750.00"), None), None).await.unwrap();
        engine.execute("open", at_hour(0), cmd::open_account(&account, OPENING), None).await.unwrap();
        engine.execute("buy", at_hour(0), cmd::purchase(&account, "gone-pool").spec("cpu").build(), None).await.unwrap();
        engine.execute("delete", at_hour(1), Command::Delete { pool: "gone-pool".into() }, None).await.unwrap();
        engine.advance_to(at_hour(3)).await.unwrap();
    }
    // Opened again (taken over: the first engine's lease sessions may still be closing), each
    // shard's engine forgets what is gone as it loads.
    let engine = ShardedEngine::start_with(map.clone(), &both, "engine-b", poolbill_shards::Take::Over).await.unwrap();
    let s2 = &engine.owned().iter().find(|s| s.spec.id == "s2").unwrap().engine;
    assert!(!s2.read(|p| p.state.pools.contains_key("gone-pool")).await.unwrap(), "forgotten at open");
    let results = engine.execute("delete-again", at_hour(4), Command::Delete { pool: "gone-pool".into() }, None).await.unwrap();
    let outcomes: Vec<(String, Outcome)> = results.into_iter().map(|(shard, e)| (shard, e.outcome)).collect();
    let refusal = Outcome::Rejected { rule: poolbill_domain::Rule::R17, reason: "pool \"gone-pool\" is already deleted".into() };
    assert_eq!(outcomes, [("s2".to_string(), refusal)]);
}
