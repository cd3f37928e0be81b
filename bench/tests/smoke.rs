//! The bench on its `small` preset, fast and in a debug build: the workload runs through the
//! engine, and each measuring step works on it. No figure is asserted: only that each step
//! measures what it says it does.

use poolbill_bench::suite::document_events;
use poolbill_bench::{work, workload};
use poolbill_engine::Engine;
use std::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_small_workload_runs_clean_and_every_in_process_step_reads_it() {
    let params = workload::Params::preset("small", 3).unwrap();
    let scenario = poolbill_scenario::parse(&workload::to_text(&workload::generate(&params))).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let engine = Engine::open(&store).await.unwrap();
    poolbill_scenario::run(&engine, &scenario).await.unwrap();
    let document = engine.document().await.unwrap();
    // Nothing refused, nobody in arrears: the workload is what it says it is.
    assert!(document.rejections.is_empty(), "{:?}", document.rejections);
    assert!(document.accounts.iter().all(|a| !a.in_arrears));
    let modes: std::collections::BTreeSet<&str> = document.bills.iter().map(|b| b.mode).collect();
    assert_eq!(modes, ["monthly", "on_demand", "package", "yearly"].into_iter().collect());
    let log = dir.path().join("log.jsonl");
    let mut file = std::fs::File::create(&log).unwrap();
    poolbill_replay::jsonl::export(engine.store(), &mut file).unwrap();
    drop(file);
    drop(engine);

    let floor = work::decode_floor(&log).unwrap();
    assert_eq!(floor["events"].as_u64().unwrap(), document.events);
    assert_eq!(floor["charged"].as_u64().unwrap(), document.bills.len() as u64);

    // The store replays to the same document, written as `poolbill --format json` writes it.
    let mut out = Vec::new();
    work::replay_store(&store, None, &mut out).unwrap();
    let expected = serde_json::to_string_pretty(&document).unwrap() + "\n";
    assert_eq!(String::from_utf8(out).unwrap(), expected);
    let written = dir.path().join("doc.json");
    std::fs::write(&written, &expected).unwrap();
    assert_eq!(document_events(&written).unwrap(), document.events);
}

#[test]
fn the_bench_binary_generates_and_measures_appends() {
    let bench = env!("CARGO_BIN_EXE_poolbill-bench");
    let generated = Command::new(bench).args(["generate", "--preset", "small", "--seed", "3"]).output().unwrap();
    assert!(generated.status.success());
    let params = workload::Params::preset("small", 3).unwrap();
    assert_eq!(String::from_utf8(generated.stdout).unwrap(), workload::to_text(&workload::generate(&params)));

    // The append figures and the fsync probe need no `poolbill` binary.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let run = Command::new(bench)
        .args(["--preset", "small", "--only", "fsync,single,group", "--seconds", "0.2", "--poolbill", "/nonexistent"])
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let keys: Vec<&str> = report["figures"].as_array().unwrap().iter().map(|f| f["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["fsync", "single", "group"]);
    for figure in &report["figures"].as_array().unwrap()[1..] {
        assert!(figure["numbers"]["commands"].as_u64().unwrap() > 0, "{figure}");
        assert_eq!(figure["numbers"]["events"], serde_json::json!(2 * figure["numbers"]["commands"].as_u64().unwrap()));
    }
    assert!(std::fs::read_to_string(out.join("report.md")).unwrap().contains("| group commit (64 concurrent clients"));
}
