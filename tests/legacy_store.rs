//! A store written by an earlier build opens in this one: `tests/data/store-json-v1` was written
//! by the build that stored every event as JSON (commit d9e927e, the `refund-ends-arrears`
//! fixture), and `store-json-v1.jsonl` is what that build exported from it. This build reads
//! those events as they are, never rewrites them, and appends its own (binary) after them.

mod common;

use common::{copy_dir, fixtures_dir, poolbill, run};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
}

/// A copy of the stored store: opening a sled store may touch its files.
fn copy_of_legacy_store(dir: &Path) -> PathBuf {
    let to = dir.join("store");
    copy_dir(&data("store-json-v1"), &to);
    to
}

fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(out.status.success(), "poolbill {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn export(store: &Path, out: &Path) -> String {
    ok(&["export", "--store", store.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    std::fs::read_to_string(out).unwrap()
}

#[test]
fn a_store_of_json_events_reads_back_as_it_was_written_and_grows_with_binary_ones() {
    let dir = tempfile::tempdir().unwrap();
    let store = copy_of_legacy_store(dir.path());
    let store_arg = store.to_str().unwrap();

    // Read back exactly: the export is the one the earlier build made, byte for byte, but for
    // the Merkle root today's end line adds.
    let written_then = std::fs::read_to_string(data("store-json-v1.jsonl")).unwrap();
    let exported = export(&store, &dir.path().join("first.jsonl"));
    let (lines, end) = exported.trim_end().rsplit_once('\n').unwrap();
    let mut end: serde_json::Value = serde_json::from_str(end).unwrap();
    assert!(end["end"].as_object_mut().unwrap().remove("root").is_some(), "{end}");
    assert_eq!(format!("{lines}\n{end}\n"), written_then);
    ok(&["verify", "--store", store_arg]);

    // Replayed, it gives today's document of the same scenario.
    let scenario = fixtures_dir().join("refund-ends-arrears/scenario.json");
    let derived = ok(&["run", scenario.to_str().unwrap(), "--format", "json"]);
    assert_eq!(ok(&["replay", "--store", store_arg, "--format", "json"]), derived);

    // New commands land after the old events, which stay as they were.
    let mut child =
        poolbill().args(["serve", "--store", store_arg]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let lines = [
        r#"{"id": "later-1", "at": "2023-04-02T09:00:00+08:00", "type": "top_up", "account": "acct-1", "amount": "100.00"}"#,
        r#"{"id": "later-2", "at": "2023-04-02T10:00:00+08:00", "type": "purchase", "account": "acct-1", "pool": "pool-9", "spec": "modelarts.vm.cpu.8ud", "nodes": 1, "mode": "on_demand", "ready": true}"#,
        r#"{"type": "advance", "at": "2023-04-02T12:00:00+08:00"}"#,
    ];
    child.stdin.take().unwrap().write_all((lines.join("\n") + "\n").as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "serve: {}", String::from_utf8_lossy(&out.stderr));
    let answers = String::from_utf8(out.stdout).unwrap();
    assert_eq!(answers.matches("\"accepted\"").count(), 2, "{answers}");

    let grown = export(&store, &dir.path().join("grown.jsonl"));
    let old_events: Vec<&str> = written_then.lines().filter(|l| !l.starts_with("{\"end\"")).collect();
    let grown_lines: Vec<&str> = grown.lines().collect();
    assert_eq!(&grown_lines[..old_events.len()], &old_events[..], "the old events are never rewritten");
    let new_events = &grown_lines[old_events.len()..grown_lines.len() - 1];
    assert!(new_events.iter().any(|l| l.contains("\"command_id\":\"later-2\"") && l.contains("pool_purchased")), "{new_events:?}");
    assert!(new_events.iter().any(|l| l.contains("\"event_type\":\"charged\"")), "pool-9 was settled: {new_events:?}");
    ok(&["verify", "--store", store_arg]);

    // Its tag index was built from the old events when the engine opened it, and continues
    // in bulk (here: the catch-up every reader of the index makes first).
    {
        use poolbill_store::EventStore;
        let opened = poolbill_store_sled::SledStore::open(&store).unwrap();
        assert!(opened.tagged_through().unwrap() >= 30, "the old events were indexed when the engine opened the store");
        poolbill_ledger::catch_up_indexes(&opened).unwrap();
        assert_eq!(opened.tagged_through().unwrap(), opened.last_position().unwrap());
        let pool_1 = opened.tagged("resource:pool-1", 0, usize::MAX).unwrap();
        assert!(pool_1.len() >= 3 && pool_1.iter().all(|&p| p <= 30), "pool-1's old events are indexed: {pool_1:?}");
        let pool_9 = opened.tagged("resource:pool-9", 0, usize::MAX).unwrap();
        assert!(!pool_9.is_empty() && pool_9.iter().all(|&p| p > 30), "and the new pool's: {pool_9:?}");
    }

    // The grown store, its export and a fold of that export agree.
    let log = dir.path().join("grown.jsonl");
    assert_eq!(ok(&["replay", "--store", store_arg, "--format", "json"]), ok(&["replay", log.to_str().unwrap(), "--format", "json"]));
}
