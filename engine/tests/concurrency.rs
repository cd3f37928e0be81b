//! Concurrent commands are serialised correctly: many tokio tasks issue conflicting commands on
//! the same pool and account; exactly the allowed ones succeed, the rest are refused with their
//! rule, and the balance equals the ledger. A conflict with another writer is retried.

use chrono::Duration;
use poolbill_domain::{BillingMode, Command, Event, Instant, Rule, Term};
use poolbill_engine::{Engine, EngineError, Outcome, Upto};
use poolbill_store::{AppendRequest, NewEvent};
use poolbill_testkit::{cmd, d, t};
use rust_decimal::Decimal;

async fn engine_with(balance: &str) -> Engine {
    let engine = Engine::temporary().await.unwrap();
    let at = t("2023-01-01T00:00:00+08:00");
    engine.execute("price", at, cmd::price("cpu", Some("3.50"), Some("1750.00"), None), None).await.unwrap();
    engine.execute("open", at, cmd::open_account("a", balance), None).await.unwrap();
    engine
}

/// A pool of spec `cpu`, ready at once: on demand, or a one-month subscription.
fn purchase(pool: &str, mode: BillingMode) -> Command {
    let on_demand = cmd::purchase("a", pool).spec("cpu");
    match mode {
        BillingMode::OnDemand => on_demand.build(),
        _ => on_demand.monthly(1).ready().build(),
    }
}

async fn assert_ledger(engine: &Engine, opening: Decimal) {
    let balance = engine.read(|p| p.state.accounts["a"].balance).await.unwrap();
    let charged: Decimal = engine.as_of(Upto::All).await.unwrap().bills.iter().map(|b| b.line.amounts.payable).sum();
    let top_ups: Decimal = engine
        .store()
        .read_all(1)
        .map(|e| e.unwrap())
        .filter(|e| e.event_type == "topped_up")
        .map(|e| match poolbill_projections::event_of(&e).unwrap() {
            Event::ToppedUp { amount, .. } => amount,
            other => panic!("a topped_up envelope holds {other:?}"),
        })
        .sum();
    assert_eq!(opening + top_ups - charged, balance, "the balance is the ledger");
    engine.store().verify().unwrap();
}

async fn race(engine: &Engine, commands: Vec<(String, Instant, Command)>) -> Vec<(String, Outcome)> {
    let tasks: Vec<_> = commands
        .into_iter()
        .map(|(id, at, command)| {
            let engine = engine.clone();
            tokio::spawn(async move { (id.clone(), engine.execute(id, at, command, None).await.unwrap().outcome) })
        })
        .collect();
    let mut out = Vec::new();
    for task in tasks {
        out.push(task.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_while_unsubscribing_one_pool() {
    let engine = engine_with("100000").await;
    let at = t("2023-04-08T10:00:00+08:00");
    engine.execute("buy", at, purchase("p", BillingMode::Monthly), None).await.unwrap();
    // Ten days later, racing: six scales to different sizes and three unsubscribes.
    let at = t("2023-04-18T10:00:00+08:00");
    let mut commands: Vec<(String, Instant, Command)> =
        (0..6).map(|i| (format!("scale-{i}"), at, Command::Scale { pool: "p".into(), nodes: Some(2 + i), spec: None })).collect();
    commands.extend((0..3).map(|i| (format!("unsub-{i}"), at, Command::Unsubscribe { pool: "p".into() })));
    let results = race(&engine, commands).await;
    let unsubscribed = results.iter().filter(|(id, o)| id.starts_with("unsub") && *o == Outcome::Accepted).count();
    assert_eq!(unsubscribed, 1, "exactly one unsubscribe: {results:?}");
    // Every refusal is for the released pool (R17), never an error.
    for (id, outcome) in &results {
        if let Outcome::Rejected { rule, .. } = outcome {
            assert_eq!(*rule, Rule::R17, "{id}: {outcome:?}");
        }
    }
    // The log's order decides: scales accepted before the unsubscribe, none after it.
    let order: Vec<String> = engine
        .store()
        .read_all(1)
        .map(|e| e.unwrap())
        .filter(|e| e.event_type == "pool_scaled" || e.event_type == "pool_unsubscribed")
        .map(|e| e.event_type)
        .collect();
    assert_eq!(order.last().map(String::as_str), Some("pool_unsubscribed"), "{order:?}");
    assert_eq!(engine.read(|p| p.state.pools["p"].status.as_str()).await.unwrap(), "released");
    assert_ledger(&engine, d("100000")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_renewals_race_for_one_fee() {
    // Enough for the purchase and exactly one renewal.
    let engine = engine_with("3600").await;
    engine.execute("buy", t("2023-04-08T10:00:00+08:00"), purchase("p", BillingMode::Monthly), None).await.unwrap();
    let at = t("2023-04-20T10:00:00+08:00");
    let renew = || Command::Renew { pool: "p".into(), term: Term::Months(1), align_day: None };
    let results = race(&engine, vec![("r1".into(), at, renew()), ("r2".into(), at, renew())]).await;
    let accepted = results.iter().filter(|(_, o)| *o == Outcome::Accepted).count();
    assert_eq!(accepted, 1, "{results:?}");
    assert!(results.iter().any(|(_, o)| matches!(o, Outcome::Rejected { rule: Rule::R12, .. })));
    assert_eq!(engine.read(|p| p.state.pools["p"].period.unwrap().end).await.unwrap(), t("2023-06-08T23:59:59+08:00"));
    assert_ledger(&engine, d("3600")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_ups_during_settlement() {
    let engine = engine_with("10").await;
    engine.execute("od", t("2023-04-18T09:00:00+08:00"), purchase("p", BillingMode::OnDemand), None).await.unwrap();
    // The clock advances hour by hour while top-ups arrive at the same instants.
    let mut tasks = Vec::new();
    for h in 1..=12 {
        let at = t("2023-04-18T09:00:00+08:00") + Duration::hours(h);
        let clock = engine.clone();
        tasks.push(tokio::spawn(async move { clock.advance_to(at).await.map(|_| ()) }));
        let payer = engine.clone();
        tasks.push(tokio::spawn(async move {
            payer.execute(format!("top-{h}"), at, Command::TopUp { account: "a".into(), amount: d("2.00") }, None).await.map(|_| ())
        }));
    }
    for task in tasks {
        // A top-up that lost the race to a later instant is refused (R1), not lost or doubled.
        let _ = task.await.unwrap();
    }
    engine.advance_to(t("2023-04-18T22:00:00+08:00")).await.unwrap();
    assert_ledger(&engine, d("10")).await;
    // Every hour billed once, at 3.50.
    let lines: Vec<Decimal> = engine.as_of(Upto::All).await.unwrap().bills.iter().map(|b| b.line.amounts.payable).collect();
    assert_eq!(lines, vec![d("3.50"); 13]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflict_with_another_writer_is_retried_on_fresh_state() {
    let engine = engine_with("100").await;
    let at = t("2023-04-18T09:00:00+08:00");
    engine.execute("od", at, purchase("p", BillingMode::OnDemand), None).await.unwrap();
    // Another writer appends to the account's stream behind the engine's back.
    let intruder = Event::ToppedUp { account: "a".into(), amount: d("1000"), balance_after: d("1100") };
    engine
        .store()
        .append(AppendRequest {
            command_id: Some("elsewhere".into()),
            expected: vec![],
            events: vec![poolbill_projections::new_event(&intruder, at)],
            outcome: serde_json::Value::Null,
            fingerprint: None,
        })
        .unwrap();
    // The engine's next write on that stream conflicts, reloads, decides again, succeeds.
    let done = engine.execute("scale", at, Command::Scale { pool: "p".into(), nodes: Some(2), spec: None }, None).await.unwrap();
    assert_eq!(done.outcome, Outcome::Accepted);
    assert_eq!(engine.read(|p| p.state.accounts["a"].balance).await.unwrap(), d("1100"), "the other writer's top-up is seen");
    assert_eq!(engine.read(|p| p.state.pools["p"].nodes).await.unwrap(), 2);
    engine.store().verify().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_that_cannot_rebuild_its_state_after_a_failed_write_stops_with_the_reason() {
    let engine = engine_with("100").await;
    let at = t("2023-04-18T09:00:00+08:00");
    engine.execute("od", at, purchase("p", BillingMode::OnDemand), None).await.unwrap();
    // Another writer appends to the account's stream an event this build cannot read: the
    // engine's next write conflicts, and rebuilding its state from the log fails.
    let stream = Event::ToppedUp { account: "a".into(), amount: d("1"), balance_after: d("101") }.stream();
    let position = engine
        .store()
        .append(AppendRequest {
            command_id: Some("elsewhere".into()),
            expected: vec![],
            events: vec![NewEvent { stream, event_type: "from_the_future".into(), schema_version: 1, at, payload: serde_json::json!({}).into() }],
            outcome: serde_json::Value::Null,
            fingerprint: None,
        })
        .map(|_| engine.store().last_position().unwrap())
        .unwrap();
    let failed = engine.execute("scale", at, Command::Scale { pool: "p".into(), nodes: Some(2), spec: None }, None).await.unwrap_err();
    let EngineError::Stopped(cause) = &failed else { panic!("expected the engine to stop: {failed:?}") };
    // The cause is the failed rebuild, down to the event that could not be read.
    let mut chain = vec![cause.to_string()];
    let mut next = std::error::Error::source(cause.as_ref());
    while let Some(e) = next {
        chain.push(e.to_string());
        next = e.source();
    }
    let chain = chain.join(" / ");
    assert!(chain.contains(&format!("event at position {position}")) && chain.contains("from_the_future"), "{chain}");
    // It stays stopped: no command is decided and nothing is read from its speculative state.
    let again = engine.execute("scale-again", at, Command::Scale { pool: "p".into(), nodes: Some(3), spec: None }, None).await.unwrap_err();
    assert!(matches!(again, EngineError::Stopped(_)), "{again:?}");
    assert!(matches!(engine.document().await, Err(EngineError::Stopped(_))));
    assert_eq!(engine.store().last_position().unwrap(), position, "nothing written after the failure");
}
