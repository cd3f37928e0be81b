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
        (
            "missing field",
            |v| {
                v["commands"][1].as_object_mut().unwrap().remove("pool");
            },
            "commands[1].pool: missing field",
        ),
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
        (
            "commands missing",
            |v| {
                v.as_object_mut().unwrap().remove("commands");
            },
            "commands: missing field",
        ),
        ("year 9999", |v| v["commands"][1]["at"] = json!("9999-12-31T23:59:59+08:00"), "commands[1].at"),
        ("until in year 9999", |v| v["until"] = json!("9999-01-01T00:00:00Z"), "until"),
        ("10^30 money", |v| v["commands"][0]["amount"] = json!("10^30"), "commands[0].amount"),
        ("money with a comma", |v| v["commands"][0]["amount"] = json!("1,000.00"), "commands[0].amount"),
        ("money with spaces", |v| v["commands"][0]["amount"] = json!(" 10.00"), "commands[0].amount"),
        ("empty money", |v| v["commands"][0]["amount"] = json!(""), "commands[0].amount"),
        ("balance as a number", |v| v["accounts"][0]["balance"] = json!(100), "accounts[0].balance"),
        ("a discount of 1", |v| v["accounts"][0]["discount"] = json!("1"), "accounts[0].discount"),
        ("2^64 nodes", |v| v["commands"][1]["nodes"] = json!(u64::MAX), "commands[1].nodes"),
        ("fractional nodes", |v| v["commands"][1]["nodes"] = json!(1.5), "commands[1].nodes"),
        ("nodes null", |v| v["commands"][1]["nodes"] = json!(null), "commands[1].nodes"),
        ("months on demand", |v| v["commands"][1]["months"] = json!(1), "commands[1].months"),
        ("a control character in an id", |v| v["commands"][1]["pool"] = json!("p\u{0007}"), "commands[1].pool"),
        ("a 300-character id", |v| v["commands"][1]["pool"] = json!("p".repeat(300)), "commands[1].pool"),
        ("a type that is a number", |v| v["commands"][0]["type"] = json!(7), "commands[0].type"),
        (
            "no at",
            |v| {
                v["commands"][0].as_object_mut().unwrap().remove("at");
            },
            "commands[0].at",
        ),
        ("a catalog entry without prices", |v| v["catalog"][0] = json!({"spec": "cpu"}), "catalog[0]"),
        ("a price of -1", |v| v["catalog"][0]["hourly"] = json!("-1"), "catalog[0].hourly"),
        ("a spec listed twice", |v| v["catalog"] = json!([{"spec": "cpu", "hourly": "1"}, {"spec": "cpu", "hourly": "2"}]), "catalog[1].spec"),
        (
            "grace days negative",
            |v| v["policy"] = json!({"levels": {"standard": {"grace_days": -1, "retention_days": 1}}}),
            "policy.levels.standard.grace_days",
        ),
        ("scale with nothing", |v| v["commands"][1] = json!({"at": "2023-04-18T09:30:00+08:00", "type": "scale", "pool": "p"}), "commands[1].nodes"),
        (
            "a notebook without a disk price",
            |v| v["commands"][1] = json!({"at": "2023-04-18T09:30:00+08:00", "type": "start_job", "account": "acct-1", "job": "nb", "kind": "notebook", "spec": "cpu", "nodes": 1}),
            "commands[1].disk_hourly",
        ),
        (
            "a service without a model",
            |v| v["commands"][1] = json!({"at": "2023-04-18T09:30:00+08:00", "type": "start_job", "account": "acct-1", "job": "s", "kind": "service", "spec": "cpu", "nodes": 1}),
            "commands[1].model",
        ),
        (
            "days_before 8",
            |v| {
                v["commands"][1] =
                    json!({"at": "2023-04-18T09:30:00+08:00", "type": "set_auto_renew", "pool": "p", "enabled": true, "months": 1, "days_before": 8})
            },
            "commands[1].days_before",
        ),
        (
            "align_day 29",
            |v| v["commands"][1] = json!({"at": "2023-04-18T09:30:00+08:00", "type": "renew", "pool": "p", "months": 1, "align_day": 29}),
            "commands[1].align_day",
        ),
        (
            "months and years",
            |v| v["commands"][1] = json!({"at": "2023-04-18T09:30:00+08:00", "type": "renew", "pool": "p", "months": 1, "years": 1}),
            "commands[1].years",
        ),
    ];
    // The same cases against an existing store: it must be left exactly as it was.
    let kept = tempfile::tempdir().unwrap();
    let kept_store = kept.path().join("store");
    let good = write(kept.path(), &valid().to_string());
    run_json(&["run", good.to_str().unwrap(), "--format", "json", "--store", kept_store.to_str().unwrap()]);
    let before = log_of(&kept_store);
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
        let bad = kept.path().join("bad.json");
        std::fs::write(&bad, scenario.to_string()).unwrap();
        let out = run(&["run", bad.to_str().unwrap(), "--store", kept_store.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{what}: against a kept store");
        assert_eq!(log_of(&kept_store), before, "{what}: the kept store is as it was");
    }
}

fn log_of(store: &std::path::Path) -> Vec<poolbill_store::Envelope> {
    let store = Store::open(store).unwrap();
    let log = store.read_all(1).collect::<Result<Vec<_>, _>>().unwrap();
    log
}

#[test]
fn unicode_ids_work_and_the_order_of_the_file_does_not_matter() {
    let dir = tempfile::tempdir().unwrap();
    let mut scenario = valid();
    scenario["accounts"][0]["id"] = json!("账户-α");
    scenario["commands"][0]["account"] = json!("账户-α");
    scenario["commands"][1]["account"] = json!("账户-α");
    scenario["commands"][1]["pool"] = json!("池-1 🚀");
    let path = write(dir.path(), &scenario.to_string());
    let doc = run_json(&["run", path.to_str().unwrap(), "--format", "json"]);
    assert_eq!(doc["resources"][0]["id"], "池-1 🚀");
    assert_eq!(doc["accounts"][0]["id"], "账户-α");
    // Commands run in order of `at`, wherever they stand in the file.
    scenario["commands"].as_array_mut().unwrap().reverse();
    let reversed = write(dir.path(), &scenario.to_string());
    let again = run_json(&["run", reversed.to_str().unwrap(), "--format", "json"]);
    assert_eq!(pick(&again["bills"], &BILL_FIELDS), pick(&doc["bills"], &BILL_FIELDS));
    assert_eq!(again["accounts"], doc["accounts"]);
}

#[test]
fn a_duplicated_purchase_is_refused_and_the_first_stands() {
    let dir = tempfile::tempdir().unwrap();
    let mut scenario = valid();
    let again = scenario["commands"][1].clone();
    scenario["commands"].as_array_mut().unwrap().push(again);
    let path = write(dir.path(), &scenario.to_string());
    let doc = run_json(&["run", path.to_str().unwrap(), "--format", "json"]);
    assert_eq!(pick(&doc["rejections"], &["index", "rule"]), vec![json!({"index": 2, "rule": "R17"})]);
    assert_eq!(doc["resources"].as_array().unwrap().len(), 1);
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
    assert_eq!(rejections, vec![json!({"index": 2, "type": "scale", "rule": "R17"}), json!({"index": 3, "type": "delete", "rule": "R16"})]);
    assert_eq!(doc["resources"][0]["state"], "deleted");
    // 09:30–10:00 and 10:00–10:30 at 3.50/h: 1.75 each.
    assert_eq!(doc["accounts"][0]["balance"], "106.50");
}
