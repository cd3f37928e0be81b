//! Issue 3's mixed scenario (tests/scenarios/mixed-two-accounts.json): two accounts, arrears and
//! recovery, an auto-renewal that fails twice and succeeds after a top-up, a package that runs
//! out mid-job, a refund. Its bills reconcile to the cent, and time travel answers correctly on
//! both sides of every transition instant in its log.

mod common;

use chrono::{DateTime, Duration, FixedOffset};
use common::*;
use poolbill_replay::{replay, Upto};
use poolbill_store::EventStore;
use poolbill_store_sled::SledStore;
use rust_decimal::Decimal;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

fn dec(v: &Value) -> Decimal {
    v.as_str().unwrap_or_else(|| panic!("decimal string, got {v}")).parse().unwrap()
}

fn scenario_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios/mixed-two-accounts.json")
}

fn run_to_store() -> (tempfile::TempDir, PathBuf, Value) {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let doc = run_json(&["run", scenario_path().to_str().unwrap(), "--format", "json", "--store", store.to_str().unwrap()]);
    (dir, store, doc)
}

#[test]
fn every_account_reconciles_to_the_cent() {
    let (_dir, _store, doc) = run_to_store();
    let scenario = read_json(&scenario_path());
    for account in scenario["accounts"].as_array().unwrap() {
        let id = account["id"].as_str().unwrap();
        let opening = dec(&account["balance"]);
        let top_ups: Decimal =
            scenario["commands"].as_array().unwrap().iter().filter(|c| c["type"] == "top_up" && c["account"] == id).map(|c| dec(&c["amount"])).sum();
        let payable: Decimal = doc["bills"].as_array().unwrap().iter().filter(|b| b["account"] == id).map(|b| dec(&b["payable"])).sum();
        let detail: Decimal = doc["detail_bills"].as_array().unwrap().iter().filter(|b| b["account"] == id).map(|b| dec(&b["payable"])).sum();
        let closing = dec(&doc["accounts"].as_array().unwrap().iter().find(|a| a["account"] == id || a["id"] == id).unwrap()["balance"]);
        assert_eq!(opening + top_ups - payable, closing, "{id}: opening + top-ups − payable = closing");
        assert_eq!(detail, payable, "{id}: detail bills = flow bills");
    }
    // The story as it should come out.
    let balance = |id: &str| doc["accounts"].as_array().unwrap().iter().find(|a| a["id"] == id).unwrap()["balance"].clone();
    assert_eq!(balance("acct-a"), "90.50");
    assert_eq!(balance("acct-b"), "23.50");
    let refused = pick(&doc["rejections"], &["index", "type", "rule"]);
    assert_eq!(
        refused,
        vec![
            serde_json::json!({"index": 10, "type": "purchase", "rule": "R12"}),
            serde_json::json!({"index": 11, "type": "start_job", "rule": "R12"})
        ]
    );
}

/// Documents as of instants, from the written log (the path `--at` takes), cached.
struct AsOf {
    store: SledStore,
    cache: HashMap<DateTime<FixedOffset>, Value>,
}

impl AsOf {
    fn at(&mut self, t: DateTime<FixedOffset>) -> &Value {
        let store = &self.store;
        self.cache.entry(t).or_insert_with(|| serde_json::to_value(replay(store, Upto::Instant(t)).unwrap().document()).unwrap())
    }
}

fn resource<'a>(doc: &'a Value, id: &str) -> Option<&'a Value> {
    doc["resources"].as_array().unwrap().iter().find(|r| r["id"] == id)
}

fn state(doc: &Value, id: &str) -> String {
    resource(doc, id).map_or("absent".to_string(), |r| r["state"].as_str().unwrap().to_string())
}

fn in_arrears(doc: &Value, account: &str) -> bool {
    doc["accounts"].as_array().unwrap().iter().find(|a| a["id"] == account).is_some_and(|a| a["in_arrears"] == true)
}

/// An event's payload as JSON (stores keep it binary).
fn json_payload(envelope: &poolbill_store::Envelope) -> Value {
    poolbill_projections::portable(envelope).unwrap().payload.as_json().cloned().unwrap()
}

#[test]
fn time_travel_is_right_on_both_sides_of_every_transition() {
    let (_dir, store_path, full) = run_to_store();
    let store = SledStore::open(&store_path).unwrap();
    let envelopes: Vec<_> = store.read_all(1).collect::<Result<_, _>>().unwrap();
    let mut as_of = AsOf { store, cache: HashMap::new() };
    let mut checked: BTreeMap<String, usize> = BTreeMap::new();
    for envelope in &envelopes {
        let t = envelope.at;
        let p = json_payload(envelope);
        let name = |key: &str| p[key].as_str().unwrap_or_default().to_string();
        let before = as_of.at(t - Duration::seconds(1)).clone();
        let after = as_of.at(t).clone();
        let at = t.to_rfc3339();
        match envelope.event_type.as_str() {
            "pool_purchased" | "package_bought" => {
                let id = name(if envelope.event_type == "pool_purchased" { "pool" } else { "package" });
                assert_eq!(state(&before, &id), "absent", "{id} before {at}");
                assert_ne!(state(&after, &id), "absent", "{id} at {at}");
            }
            "job_started" => {
                assert!(["absent", "stopped"].contains(&state(&before, &name("job")).as_str()), "before {at}");
                assert_eq!(state(&after, &name("job")), "running", "at {at}");
            }
            "job_stopped" => assert_eq!((state(&before, &name("job")), state(&after, &name("job"))), ("running".into(), "stopped".into()), "{at}"),
            "job_deleted" | "pool_deleted" => {
                let id = name(if envelope.event_type == "job_deleted" { "job" } else { "pool" });
                assert_ne!(state(&before, &id), "deleted", "{id} before {at}");
                assert_eq!(state(&after, &id), "deleted", "{id} at {at}");
            }
            "pool_unsubscribed" => {
                assert_eq!((state(&before, &name("pool")), state(&after, &name("pool"))), ("running".into(), "released".into()), "{at}")
            }
            "pool_renewed" => {
                let pool = name("pool");
                let end = DateTime::parse_from_rfc3339(&name("end")).unwrap().to_rfc3339();
                assert_ne!(resource(&before, &pool).unwrap()["expires_at"], Value::String(end.clone()), "before {at}");
                assert_eq!(resource(&after, &pool).unwrap()["expires_at"], Value::String(end), "at {at}");
            }
            "arrears_started" => {
                let account = name("account");
                assert!(!in_arrears(&before, &account) && in_arrears(&after, &account), "{account} at {at}");
                assert_eq!((state(&before, "od-b"), state(&after, "od-b")), ("running".into(), "grace".into()), "{at}");
            }
            "arrears_frozen" => assert_eq!((state(&before, "od-b"), state(&after, "od-b")), ("grace".into(), "frozen".into()), "{at}"),
            "arrears_ended" => {
                let account = name("account");
                assert!(in_arrears(&before, &account) && !in_arrears(&after, &account), "{account} at {at}");
                assert_eq!((state(&before, "od-b"), state(&after, "od-b")), ("frozen".into(), "running".into()), "{at}");
            }
            "charged" => {
                let line = &p["line"];
                let same = |b: &&Value| b["event"] == envelope.position;
                assert!(!before["bills"].as_array().unwrap().iter().any(|b| same(&b)), "bill {} before {at}", envelope.position);
                assert!(after["bills"].as_array().unwrap().iter().any(|b| same(&b) && b["resource"] == line["resource"]), "bill at {at}");
            }
            "auto_renew_attempted" | "command_rejected" | "package_alerted" => {
                assert!(after["events"].as_u64().unwrap() > before["events"].as_u64().unwrap(), "{} at {at}", envelope.event_type);
            }
            _ => continue,
        }
        *checked.entry(envelope.event_type.clone()).or_default() += 1;
    }
    for kind in
        ["arrears_started", "arrears_frozen", "arrears_ended", "pool_unsubscribed", "pool_renewed", "job_stopped", "charged", "auto_renew_attempted"]
    {
        assert!(checked.contains_key(kind), "the scenario has a {kind} transition: {checked:?}");
    }
    // Both failed attempts and the success after the top-up.
    let attempts: Vec<(String, bool)> = envelopes
        .iter()
        .filter(|e| e.event_type == "auto_renew_attempted")
        .map(|e| (e.at.to_rfc3339(), json_payload(e)["succeeded"].as_bool().unwrap()))
        .collect();
    assert_eq!(
        attempts,
        vec![
            ("2023-05-05T03:00:00+08:00".to_string(), false),
            ("2023-05-06T03:00:00+08:00".to_string(), false),
            ("2023-05-07T03:00:00+08:00".to_string(), true)
        ]
    );
    // The whole log as of `until` is the run's own document.
    let until = poolbill_testkit::t("2023-05-10T00:00:00+08:00");
    assert_eq!(as_of.at(until), &full);
}

#[test]
fn the_cli_time_travels_the_same_way() {
    let (_dir, store, _) = run_to_store();
    let path = scenario_path();
    let at = |t: &str| run_json(&["run", path.to_str().unwrap(), "--format", "json", "--store", store.to_str().unwrap(), "--at", t]);
    // acct-b: arrears from the 14:00 settlement of 04-21; frozen two days later (gold).
    assert!(!in_arrears(&at("2023-04-21T13:59:59+08:00"), "acct-b"));
    assert!(in_arrears(&at("2023-04-21T14:00:00+08:00"), "acct-b"));
    assert_eq!(state(&at("2023-04-23T13:59:59+08:00"), "od-b"), "grace");
    assert_eq!(state(&at("2023-04-23T14:00:00+08:00"), "od-b"), "frozen");
    assert_eq!(state(&at("2023-04-24T10:00:00+08:00"), "od-b"), "running");
    // The package runs out at noon on 04-10: the 12:00–13:00 hour is billed.
    let noon = at("2023-04-10T13:00:00+08:00");
    let billed: Vec<&Value> = noon["bills"].as_array().unwrap().iter().filter(|b| b["resource"] == "training_train-a").collect();
    assert_eq!(billed.iter().map(|b| b["mode"].as_str().unwrap()).collect::<Vec<_>>(), vec!["package", "package", "on_demand"]);
}
