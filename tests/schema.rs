//! Event schemas evolve safely: a log written before `topped_up` changed shape (schema v1,
//! kept in tests/data and never regenerated) is read by today's build through its upcaster,
//! and gives exactly the bills its scenario gives today.

mod common;

use common::*;
use poolbill_domain::Event;
use poolbill_replay::jsonl;
use std::path::Path;

fn data(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name).to_str().unwrap().to_string()
}

#[test]
fn a_v1_log_is_read_after_the_shape_changed() {
    let log = data("v1-arrears.jsonl");
    let envelopes = jsonl::read_file(Path::new(&log)).unwrap();
    let top_ups: Vec<_> = envelopes.iter().filter(|e| e.event_type == "topped_up").collect();
    assert!(!top_ups.is_empty());
    for e in &top_ups {
        assert_eq!(e.schema_version, 1, "the kept log is v1");
        let payload = e.payload.as_json().expect("portable logs carry JSON payloads");
        assert!(payload.get("balance").is_some() && payload.get("balance_after").is_none(), "in the v1 shape");
        let event = poolbill_projections::event_of(e).unwrap();
        assert!(matches!(event, Event::ToppedUp { .. }));
        assert_eq!(event.schema_version(), 2, "read as today's shape");
    }
    // The same document as the scenario gives today (written in v2).
    let from_v1 = run_json(&["replay", &log, "--format", "json"]);
    let today = run_json(&["run", &data("v1-arrears.scenario.json"), "--format", "json"]);
    assert_eq!(from_v1, today);
    // And it audits clean: its commands still give the very lines it recorded.
    let charged = fixtures_dir().join("arrears-grace-frozen-recovery").join("CHARGED.json");
    let audit = run(&["audit", &log, "--charged", charged.to_str().unwrap(), "--format", "json"]);
    let report: serde_json::Value = serde_json::from_slice(&audit.stdout).unwrap();
    assert_eq!(report["integrity"], serde_json::json!([]));
}

#[test]
fn a_version_from_the_future_is_refused_naming_the_line() {
    let text = std::fs::read_to_string(data("v1-arrears.jsonl")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let future = dir.path().join("future.jsonl");
    // Re-sign the line so that only the version is wrong, not the checksum.
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let index = lines.iter().position(|l| l.contains("\"topped_up\"")).unwrap();
    let mut envelope: poolbill_store::Envelope = {
        let mut v: serde_json::Value = serde_json::from_str(&lines[index]).unwrap();
        v.as_object_mut().unwrap().remove("checksum");
        serde_json::from_value(v).unwrap()
    };
    envelope.schema_version = 9;
    lines[index] = jsonl::to_line(&envelope).unwrap();
    std::fs::write(&future, lines.join("\n") + "\n").unwrap();
    let r = run(&["replay", future.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&format!("line {}", index + 1)) && stderr.contains("schema version 9"), "{stderr}");
}
