//! poolbill on PostgreSQL end to end: every fixture gives the same document as on sled, the log
//! tools read a PostgreSQL store as they read a sled one, and `serve` answers on it.

mod common;

use common::*;
use poolbill_store_postgres::cluster::fresh_database;
use serde_json::Value;
use std::io::Write;
use std::process::Stdio;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `poolbill ARGS` must succeed; its stdout.
fn stdout_of(args: &[&str]) -> String {
    let out = run(args);
    assert!(out.status.success(), "poolbill {args:?} failed: {}", text(&out.stderr));
    text(&out.stdout)
}

/// Every fixture's scenario, and the scenarios of the end-to-end tests.
fn every_scenario() -> Vec<(String, std::path::PathBuf)> {
    let mut all: Vec<_> =
        fixtures().into_iter().map(|dir| (dir.file_name().unwrap().to_string_lossy().to_string(), dir.join("scenario.json"))).collect();
    let tests = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    for path in [tests.join("scenarios/mixed-two-accounts.json"), tests.join("data/v1-arrears.scenario.json")] {
        all.push((path.file_name().unwrap().to_string_lossy().to_string(), path));
    }
    all
}

#[test]
fn every_fixture_and_scenario_gives_the_same_document_on_postgres_as_on_sled() {
    for (name, scenario) in every_scenario() {
        let scenario = scenario.to_str().unwrap();
        let sled_dir = tempfile::tempdir().unwrap();
        let sled = sled_dir.path().join("store");
        let sled = sled.to_str().unwrap();
        let url = fresh_database();

        let on_sled = run_json(&["run", scenario, "--format", "json", "--store", sled]);
        let on_postgres = run_json(&["run", scenario, "--format", "json", "--postgres", &url]);
        assert_eq!(on_postgres, on_sled, "{name}: run");
        // Run again on its store: command ids make it append nothing twice.
        assert_eq!(run_json(&["run", scenario, "--format", "json", "--postgres", &url]), on_sled, "{name}: run again");

        // The log tools read it as they read sled's, and its portable log is the same, byte for byte.
        assert_eq!(run_json(&["replay", "--postgres", &url, "--format", "json"]), on_sled, "{name}: replay");
        assert_eq!(stdout_of(&["export", "--postgres", &url]), stdout_of(&["export", "--store", sled]), "{name}: export");
        assert!(stdout_of(&["verify", "--postgres", &url]).contains(&format!("ok: {} events", on_sled["events"])), "{name}: verify");
        if let Some(resource) = on_sled["resources"].get(0).and_then(|r| r["id"].as_str()) {
            let svg = |flag: &str, value: &str| {
                let out = tempfile::NamedTempFile::new().unwrap();
                stdout_of(&["timeline", flag, value, "--resource", resource, "--svg", out.path().to_str().unwrap()]);
                std::fs::read_to_string(out.path()).unwrap()
            };
            assert_eq!(svg("--postgres", &url), svg("--store", sled), "{name}: timeline");
        }
        if !on_sled["bills"].as_array().unwrap().is_empty() {
            let explain = |flag: &str, value: &str| stdout_of(&["explain", flag, value, "--bill", "1", "--format", "json"]);
            assert_eq!(explain("--postgres", &url), explain("--store", sled), "{name}: explain");
        }
        // audit and diff read it as a stream, as they read sled's: the same report and status.
        let files = tempfile::tempdir().unwrap();
        let charged = std::path::Path::new(scenario).with_file_name("CHARGED.json");
        let charged = if charged.is_file() { charged } else { files.path().join("CHARGED.json") };
        if !charged.is_file() {
            std::fs::write(&charged, r#"{"bills": [], "total": "0.00"}"#).unwrap();
        }
        let policy = files.path().join("policy.json");
        std::fs::write(&policy, r#"{"levels": {"standard": {"grace_days": 2, "retention_days": 3}}}"#).unwrap();
        // As known when the first line ended, against now.
        let known_at =
            on_sled["bills"].as_array().unwrap().first().and_then(|b| b["end"].as_str()).unwrap_or("2023-04-20T00:00:00+08:00").to_string();
        let tools: [Vec<&str>; 3] = [
            vec!["audit", "--charged", charged.to_str().unwrap(), "--format", "json"],
            vec!["diff", "--at", &known_at, "--format", "json"],
            vec!["diff", "--policy", policy.to_str().unwrap()],
        ];
        for args in tools {
            let on = |flag: &str, value: &str| {
                let out = run(&[args.as_slice(), &[flag, value]].concat());
                (out.status.code(), text(&out.stdout), text(&out.stderr))
            };
            let (from_postgres, from_sled) = (on("--postgres", &url), on("--store", sled));
            assert!(matches!(from_sled.0, Some(0 | 1)) && !from_sled.1.is_empty(), "{name}: {args:?} on sled: {}", from_sled.2);
            assert_eq!((from_postgres.0, &from_postgres.1), (from_sled.0, &from_sled.1), "{name}: {args:?}: {}", from_postgres.2);
        }
    }
}

#[test]
fn poolbill_postgres_in_the_environment_names_the_store() {
    let dir = fixtures_dir().join("subscription-upgrade");
    let scenario = dir.join("scenario.json");
    let url = fresh_database();
    let expected = run_json(&["run", scenario.to_str().unwrap(), "--format", "json"]);
    let out = poolbill().args(["run", scenario.to_str().unwrap(), "--format", "json"]).env("POOLBILL_POSTGRES", &url).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(serde_json::from_slice::<Value>(&out.stdout).unwrap(), expected);
    // What it wrote is there for the tools, named the same way.
    let replayed = poolbill().args(["replay", "--format", "json"]).env("POOLBILL_POSTGRES", &url).output().unwrap();
    assert_eq!(serde_json::from_slice::<Value>(&replayed.stdout).unwrap(), expected, "{}", text(&replayed.stderr));
    // The table too (read through the engine, off its async threads).
    let table = stdout_of(&["run", scenario.to_str().unwrap(), "--postgres", &url]);
    assert_eq!(table, stdout_of(&["run", scenario.to_str().unwrap()]));
    // `run --export` reads the store from the engine's async side: the same log as `export`.
    let exported = tempfile::tempdir().unwrap();
    let exported = exported.path().join("log.jsonl");
    stdout_of(&["run", scenario.to_str().unwrap(), "--postgres", &url, "--export", exported.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(&exported).unwrap(), stdout_of(&["export", "--postgres", &url]));
    // An explicit log file wins over the environment.
    let log = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(log.path(), stdout_of(&["export", "--postgres", &url])).unwrap();
    let from_file = poolbill()
        .args(["replay", log.path().to_str().unwrap(), "--format", "json"])
        .env("POOLBILL_POSTGRES", "postgres://u@127.0.0.1:1/none")
        .output()
        .unwrap();
    assert_eq!(serde_json::from_slice::<Value>(&from_file.stdout).unwrap(), expected, "{}", text(&from_file.stderr));
}

#[test]
fn serve_answers_on_postgres_and_a_tool_refuses_a_database_without_a_store() {
    let url = fresh_database();
    let mut child =
        poolbill().args(["serve", "--postgres", &url]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let lines = [
        r#"{"id": "a1", "type": "open_account", "at": "2023-04-01T00:00:00+08:00", "account": "acct-1", "balance": "100"}"#,
        r#"{"id": "a1", "type": "open_account", "at": "2023-04-01T00:00:00+08:00", "account": "acct-1", "balance": "100"}"#,
        r#"{"type": "advance", "at": "2023-04-02T00:00:00+08:00"}"#,
    ];
    child.stdin.take().unwrap().write_all((lines.join("\n") + "\n").as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let answers: Vec<Value> = text(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(answers.len(), 3, "{answers:?}");
    assert_eq!((answers[0]["status"].as_str(), answers[0]["duplicate"].as_bool()), (Some("accepted"), Some(false)), "{answers:?}");
    assert_eq!(answers[1]["duplicate"], Value::Bool(true), "{answers:?}");
    assert_eq!(answers[1]["first_position"], answers[0]["first_position"]);

    // A database without poolbill's schema is bad input to a tool, and is left as it was.
    let empty = fresh_database();
    let out = run(&["replay", "--postgres", &empty]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("not a poolbill store"), "{}", text(&out.stderr));
    assert_eq!(run(&["replay", "--postgres", &empty]).status.code(), Some(2), "still no store in it");
}
