//! Every seed fixture through `poolbill run`: the rules' figures come out, and the same bills
//! come out again from a replay of the log it wrote (R2–R11, R16).

mod common;

use common::*;
use poolbill_replay::{replay, Upto};
use poolbill_store::EventStore;
use poolbill_store_sled::SledStore;
use rust_decimal::Decimal;
use serde_json::Value;
use std::str::FromStr;

fn dec(v: &Value) -> Decimal {
    Decimal::from_str(v.as_str().unwrap_or_else(|| panic!("decimal string, got {v}"))).unwrap()
}

#[test]
fn every_seed_fixture_gives_the_rules_figures_and_replays_the_same() {
    let fixtures = fixtures();
    assert!(fixtures.len() >= 14, "the seed's worked examples are fixtures");
    for dir in fixtures {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let expected = read_json(&dir.join("expected.json"));
        let store_dir = tempfile::tempdir().unwrap();
        let store_path = store_dir.path().join("store");
        let scenario = dir.join("scenario.json");
        let doc = run_json(&["run", scenario.to_str().unwrap(), "--format", "json", "--store", store_path.to_str().unwrap()]);

        assert_eq!(pick(&doc["bills"], &BILL_FIELDS), pick(&expected["bills"], &BILL_FIELDS), "{name}: bills");
        assert_eq!(pick(&doc["resources"], &RESOURCE_FIELDS), pick(&expected["resources"], &RESOURCE_FIELDS), "{name}: resources");
        assert_eq!(doc["accounts"], expected["accounts"], "{name}: accounts");
        let refused = pick(&doc["rejections"], &["index", "type", "rule"]);
        let expected_refused = if expected["rejections"].is_array() { pick(&expected["rejections"], &["index", "type", "rule"]) } else { vec![] };
        assert_eq!(refused, expected_refused, "{name}: refused commands");

        // Flow bills add up to the expected total; detail bills (R5) to the same, to the cent.
        let flow: Decimal = doc["bills"].as_array().unwrap().iter().map(|b| dec(&b["payable"])).sum();
        let detail: Decimal = doc["detail_bills"].as_array().unwrap().iter().map(|b| dec(&b["payable"])).sum();
        assert_eq!(flow, dec(&expected["total_payable"]), "{name}: total payable");
        assert_eq!(detail, flow, "{name}: detail bills equal flow bills");

        // The log alone gives the same document (the process has exited: the store is free).
        let store = SledStore::open(&store_path).unwrap();
        store.verify().unwrap();
        let replayed = serde_json::to_value(replay(&store, Upto::All).unwrap().document()).unwrap();
        assert_eq!(replayed, doc, "{name}: a replay of the written log");
    }
}

#[test]
fn running_a_scenario_again_on_its_store_charges_nothing_twice() {
    let dir = fixtures_dir().join("subscription-upgrade");
    let store_dir = tempfile::tempdir().unwrap();
    let store = store_dir.path().join("store");
    let args = ["run", dir.join("scenario.json").to_str().unwrap().to_string().leak(), "--format", "json", "--store", store.to_str().unwrap()];
    let first = run_json(&args);
    let second = run_json(&args);
    assert_eq!(first, second, "command ids make the rerun idempotent");
}

#[test]
fn time_travel_answers_on_both_sides_of_each_transition() {
    // subscription-lifecycle: bought 2023-01-31 10:00 for a month (E = 02-28 23:59:59), expired
    // 03-01, frozen 03-16, renewed while frozen (anchored on 02-28 → 03-28, R3).
    let dir = fixtures_dir().join("subscription-lifecycle");
    let scenario = read_json(&dir.join("scenario.json"));
    let renew_at = scenario["commands"].as_array().unwrap().iter().find(|c| c["type"] == "renew").unwrap()["at"].as_str().unwrap().to_string();
    let store_dir = tempfile::tempdir().unwrap();
    let store = store_dir.path().join("store");
    let path = dir.join("scenario.json");
    let full = run_json(&["run", path.to_str().unwrap(), "--format", "json", "--store", store.to_str().unwrap()]);
    let at = |instant: &str| -> Value {
        let doc = run_json(&["run", path.to_str().unwrap(), "--format", "json", "--store", store.to_str().unwrap(), "--at", instant]);
        doc
    };
    let state = |doc: &Value| doc["resources"][0]["state"].as_str().unwrap().to_string();
    for (instant, expected) in [
        ("2023-01-31T09:59:59+08:00", None),
        ("2023-01-31T10:00:00+08:00", Some("running")),
        ("2023-02-28T23:59:59+08:00", Some("running")),
        ("2023-03-01T00:00:00+08:00", Some("expired")),
        ("2023-03-15T23:59:59+08:00", Some("expired")),
        ("2023-03-16T00:00:00+08:00", Some("frozen")),
    ] {
        let doc = at(instant);
        match expected {
            None => assert_eq!(doc["resources"], Value::Array(vec![]), "nothing exists at {instant}"),
            Some(s) => assert_eq!(state(&doc), s, "at {instant}"),
        }
    }
    let doc = at(&renew_at);
    assert_eq!(state(&doc), "running", "renewed at {renew_at}");
    // Bills as of an instant are a prefix of the full run's bills; events too.
    let before = at("2023-02-01T00:00:00+08:00");
    assert_eq!(before["bills"].as_array().unwrap().len(), 1);
    assert!(before["events"].as_u64().unwrap() < full["events"].as_u64().unwrap());
}
