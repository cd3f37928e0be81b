//! A malformed scenario exits non-zero with a message naming the command index and field, and
//! writes nothing: no store is created, and an existing one is left as it was.

mod common;

use common::*;
use poolbill_store::Store;
use serde_json::{json, Value};

fn valid() -> Value {
    json!({
        "name": "bad-input",
        "catalog": [{"spec": "cpu", "hourly": "3.50", "monthly": "1750.00"}],
        "accounts": [{"id": "acct-1", "balance": "100.00"}],
        "commands": [
            {"at": "2023-04-18T09:00:00+08:00", "type": "top_up", "account": "acct-1", "amount": "10.00"},
            {"at": "2023-04-18T09:30:00+08:00", "type": "purchase", "account": "acct-1", "pool": "p",
             "spec": "cpu", "nodes": 1, "mode": "on_demand", "ready": true}
        ],
        "until": "2023-04-18T12:00:00+08:00"
    })
}

fn write(dir: &std::path::Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("scenario.json");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn each_malformed_scenario_is_refused_with_its_place_and_writes_nothing() {
    type Mutation = fn(&mut Value);
    let cases: Vec<(&str, Mutation, &str)> = vec![
        ("unknown type", |v| v["commands"][1]["type"] = json!("buy_everything"), "commands[1].type"),
        ("missing field", |v| { v["commands"][1].as_object_mut().unwrap().remove("pool"); }, "commands[1].pool: missing field"),
        ("money as a number", |v| v["commands"][0]["amount"] = json!(10.5), "commands[0].amount"),
        ("money with letters", |v| v["commands"][0]["amount"] = json!("10.5O"), "commands[0].amount"),
        ("money with an exponent", |v| v["commands"][0]["amount"] = json!("1e3"), "commands[0].amount"),
        ("money past cents", |v| v["commands"][0]["amount"] = json!("10.005"), "commands[0].amount"),
        ("negative top-up", |v| v["commands"][0]["amount"] = json!("-5.00"), "commands[0].amount"),
        ("huge money", |v| v["commands"][0]["amount"] = json!("1000000000000000000000000000000"), "commands[0].amount"),
        ("time without offset", |v| v["commands"][1]["at"] = json!("2023-04-18T09:30:00"), "commands[1].at"),
        ("a fraction of a second", |v| v["commands"][1]["at"] = json!("2023-04-18T09:30:00.5+08:00"), "commands[1].at"),
        ("negative nodes", |v| v["commands"][1]["nodes"] = json!(-2), "commands[1].nodes"),
        ("zero nodes", |v| v["commands"][1]["nodes"] = json!(0), "commands[1].nodes"),
        ("2^40 nodes", |v| v["commands"][1]["nodes"] = json!(1u64 << 40), "commands[1].nodes"),
        ("nodes as text", |v| v["commands"][1]["nodes"] = json!("2"), "commands[1].nodes"),
        ("unknown mode", |v| v["commands"][1]["mode"] = json!("weekly"), "commands[1].mode"),
        ("misspelt field", |v| v["commands"][1]["redy"] = json!(true), "commands[1].redy"),
        ("after until", |v| v["until"] = json!("2023-04-18T09:10:00+08:00"), "commands[1].at"),
        ("duplicated account", |v| v["accounts"] = json!([{"id": "a"}, {"id": "a"}]), "accounts[1].id"),
        ("unknown level", |v| v["accounts"][0]["level"] = json!("gold"), "accounts[0].level"),
        ("empty id", |v| v["commands"][1]["pool"] = json!(""), "commands[1].pool"),
        ("not an object", |v| v["commands"][0] = json!(42), "commands[0]"),
        ("commands missing", |v| { v.as_object_mut().unwrap().remove("commands"); }, "commands: missing field"),
    ];
    for (what, mutate, place) in cases {
        let dir = tempfile::tempdir().unwrap();
        let mut scenario = valid();
        mutate(&mut scenario);
        let path = write(dir.path(), &scenario.to_string());
        let store = dir.path().join("store");
        let out = run(&["run", path.to_str().unwrap(), "--format", "json", "--store", store.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{what}: exit status; stderr: {stderr}");
        assert!(stderr.contains(place), "{what}: the message names {place:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{what}: no output document");
        assert!(!store.exists(), "{what}: no store was created");
    }
}

#[test]
fn bad_json_names_the_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "{\"commands\": [\n  {\"at\": }\n]}");
    let out = run(&["run", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("line 2"), "{stderr}");
}

#[test]
fn a_malformed_scenario_leaves_an_existing_store_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let store_path = dir.path().join("store");
    let good = write(dir.path(), &valid().to_string());
    run_json(&["run", good.to_str().unwrap(), "--format", "json", "--store", store_path.to_str().unwrap()]);
    let before = {
        let store = Store::open(&store_path).unwrap();
        (store.last_position().unwrap(), store.read_all(1).collect::<Result<Vec<_>, _>>().unwrap())
    };
    let mut bad = valid();
    bad["name"] = json!("second");
    bad["commands"][1]["nodes"] = json!(-1);
    let bad_path = dir.path().join("bad.json");
    std::fs::write(&bad_path, bad.to_string()).unwrap();
    let out = run(&["run", bad_path.to_str().unwrap(), "--store", store_path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let store = Store::open(&store_path).unwrap();
    assert_eq!(store.last_position().unwrap(), before.0);
    assert_eq!(store.read_all(1).collect::<Result<Vec<_>, _>>().unwrap(), before.1);
}

#[test]
fn refused_commands_are_reported_and_the_rest_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut scenario = valid();
    scenario["commands"].as_array_mut().unwrap().extend([
        json!({"at": "2023-04-18T10:00:00+08:00", "type": "scale", "pool": "p", "nodes": 1}),
        json!({"at": "2023-04-18T10:00:00+08:00", "type": "delete", "pool": "nope"}),
        json!({"at": "2023-04-18T10:30:00+08:00", "type": "delete", "pool": "p"}),
    ]);
    let path = write(dir.path(), &scenario.to_string());
    let doc = run_json(&["run", path.to_str().unwrap(), "--format", "json"]);
    let rejections = pick(&doc["rejections"], &["index", "type", "rule"]);
    assert_eq!(
        rejections,
        vec![json!({"index": 2, "type": "scale", "rule": "R17"}), json!({"index": 3, "type": "delete", "rule": "R16"})]
    );
    assert_eq!(doc["resources"][0]["state"], "deleted");
    // 09:30–10:00 and 10:00–10:30 at 3.50/h: 1.75 each.
    assert_eq!(doc["accounts"][0]["balance"], "106.50");
}
