//! The replay toolkit end to end: `run --export` then `replay`, `audit`, `explain`, `diff`,
//! `bills` and `timeline` on the exported log of every fixture.

mod common;

use common::*;
use poolbill_replay::{fold, jsonl, Upto};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Run a fixture, exporting its log; the document and the log's path.
fn export(dir: &Path, out: &Path) -> (Value, PathBuf) {
    let log = out.join("log.jsonl");
    let doc = run_json(&["run", dir.join("scenario.json").to_str().unwrap(), "--format", "json", "--export", log.to_str().unwrap()]);
    (doc, log)
}

/// A small deterministic generator: a failing case prints its seed.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n.max(1)
    }
}

#[test]
fn replay_of_the_exported_log_equals_run_at_every_transition_and_random_instants() {
    let seed = 7;
    let mut rng = Lcg(seed);
    for dir in fixtures() {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let out = tempfile::tempdir().unwrap();
        let store = out.path().join("store");
        let log = out.path().join("log.jsonl");
        let doc = run_json(&[
            "run",
            dir.join("scenario.json").to_str().unwrap(),
            "--format",
            "json",
            "--store",
            store.to_str().unwrap(),
            "--export",
            log.to_str().unwrap(),
        ]);
        let replayed = run_json(&["replay", log.to_str().unwrap(), "--format", "json"]);
        assert_eq!(replayed, doc, "{name}: replay of the exported log");

        // The file holds exactly the store's envelopes, in order: so every prefix of one (as of
        // any instant) is the same prefix of the other.
        let envelopes = jsonl::read_file(&log).unwrap();
        let store = poolbill_store::Store::open(&store).unwrap();
        let stored: Vec<_> = store.read_all(1).collect::<Result<_, _>>().unwrap();
        assert_eq!(stored, envelopes, "{name}: the exported log is the store's log");
        // Fold both at each transition instant and one second before it (at most 40 of them,
        // spread over the log, for the long fixtures), and at random instants.
        let (first, last) = (envelopes[0].at, envelopes.last().unwrap().at);
        let span = (last - first).num_seconds() as u64 + 7200;
        let mut transitions: Vec<_> = envelopes.iter().map(|e| e.at).collect();
        transitions.dedup();
        let every = transitions.len() / 40 + 1;
        let mut instants: Vec<_> =
            transitions.iter().step_by(every).chain(transitions.last()).flat_map(|t| [*t, *t - chrono::Duration::seconds(1)]).collect();
        instants.extend((0..20).map(|_| first + chrono::Duration::seconds(rng.below(span) as i64 - 3600)));
        for t in &instants {
            // `run --at` folds the store; `replay --at` folds the exported file.
            let from_store = poolbill_replay::replay(&store, Upto::Instant(*t)).unwrap().document();
            let from_file = fold(jsonl::as_results(&envelopes), Upto::Instant(*t)).unwrap().document();
            assert_eq!(from_store, from_file, "{name}: as of {t} (seed {seed})");
        }
        // Through the binaries too, at a few of them.
        drop(store);
        for t in instants.iter().step_by(instants.len() / 3 + 1) {
            let t = t.to_rfc3339();
            let by_run = run_json(&[
                "run",
                dir.join("scenario.json").to_str().unwrap(),
                "--format",
                "json",
                "--store",
                out.path().join("store").to_str().unwrap(),
                "--at",
                &t,
            ]);
            let by_replay = run_json(&["replay", log.to_str().unwrap(), "--format", "json", "--at", &t]);
            assert_eq!(by_run, by_replay, "{name}: run --at {t} = replay --at {t}");
        }
    }
}

#[test]
fn each_fixture_keeps_its_log_and_the_log_gives_the_scenario_s_bills() {
    for dir in fixtures() {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let log = dir.join("log.jsonl");
        assert!(log.is_file(), "{name}: fixtures/{name}/log.jsonl is kept (poolbill run … --export)");
        let from_log = run_json(&["replay", log.to_str().unwrap(), "--format", "json"]);
        let from_scenario = run_json(&["run", dir.join("scenario.json").to_str().unwrap(), "--format", "json"]);
        assert_eq!(from_log, from_scenario, "{name}: the kept log is the scenario's (regenerate it with run --export if the rules changed)");
    }
}

#[test]
fn a_broken_log_is_refused_naming_its_line_and_nothing_is_printed() {
    let out = tempfile::tempdir().unwrap();
    let (_, log) = export(&fixtures_dir().join("subscription-upgrade"), out.path());
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let broken = out.path().join("broken.jsonl");
    let last_line = format!("line {}", lines.len());
    let cases: Vec<(&str, String, &str)> = vec![
        ("a flipped digit", text.replacen("1151.675", "1151.775", 1), "checksum mismatch"),
        ("a torn last line", text[..text.len() - 20].to_string(), &last_line),
        ("a missing line", lines.iter().enumerate().filter(|(i, _)| *i != 2).map(|(_, l)| format!("{l}\n")).collect(), "line 3"),
        ("not JSON", format!("{}\n{{oops\n", lines[0]), "line 2"),
    ];
    for (what, content, named) in cases {
        std::fs::write(&broken, content).unwrap();
        let result = run(&["replay", broken.to_str().unwrap(), "--format", "json"]);
        let stderr = String::from_utf8_lossy(&result.stderr);
        assert_eq!(result.status.code(), Some(2), "{what}: {stderr}");
        assert!(stderr.contains(named), "{what}: names {named:?}: {stderr}");
        assert!(result.stdout.is_empty(), "{what}: nothing half-loaded is printed");
    }
}

#[test]
fn audit_passes_where_the_seed_agrees_and_reports_exactly_its_errata() {
    for dir in fixtures() {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let charged_path = dir.join("CHARGED.json");
        let charged = read_json(&charged_path);
        let log = dir.join("log.jsonl");
        let result = run(&["audit", log.to_str().unwrap(), "--charged", charged_path.to_str().unwrap(), "--format", "json"]);
        let report: Value =
            serde_json::from_slice(&result.stdout).unwrap_or_else(|e| panic!("{name}: {e}: {}", String::from_utf8_lossy(&result.stderr)));
        let errata: Vec<&Value> = charged["bills"].as_array().unwrap().iter().filter(|b| b.get("erratum").is_some()).collect();
        let reported = report["discrepancies"].as_array().unwrap();
        assert_eq!(report["integrity"], Value::Array(vec![]), "{name}: the log's lines are its commands' lines");
        assert_eq!(reported.len(), errata.len(), "{name}: discrepancies {reported:?}");
        for d in reported {
            assert!(d["erratum"].is_string(), "{name}: an unexpected discrepancy {d}");
            assert!(d["rule"].as_str().unwrap().starts_with('R'), "{name}: the deciding rule is named");
        }
        let entries = charged["bills"].as_array().unwrap().len() + usize::from(charged.get("total").is_some());
        assert_eq!(report["matched"].as_u64().unwrap() as usize, entries - errata.len(), "{name}: matched");
        assert_eq!(result.status.code(), Some(if errata.is_empty() { 0 } else { 1 }), "{name}: exit status");
    }
}

#[test]
fn audit_names_the_rule_of_a_per_line_truncation_and_refuses_bad_input() {
    let out = tempfile::tempdir().unwrap();
    let (_, log) = export(&fixtures_dir().join("on-demand-two-cycles"), out.path());
    let charged = out.path().join("charged.json");
    std::fs::write(&charged, r#"{"bills": [{"resource": "pool-1", "payable": "2.70"}]}"#).unwrap();
    let result = run(&["audit", log.to_str().unwrap(), "--charged", charged.to_str().unwrap(), "--format", "json"]);
    assert_eq!(result.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&result.stdout).unwrap();
    let d = &report["discrepancies"][0];
    assert_eq!((d["charged"].as_str(), d["computed"].as_str(), d["difference"].as_str()), (Some("2.70"), Some("2.68"), Some("0.02")));
    assert_eq!(d["rule"], "R2");
    std::fs::write(&charged, r#"{"bills": [{"resource": "pool-1", "payable": 2.70}]}"#).unwrap();
    let result = run(&["audit", log.to_str().unwrap(), "--charged", charged.to_str().unwrap()]);
    assert_eq!(result.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&result.stderr).contains("bills[0].payable"));
}

#[test]
fn explain_accounts_for_the_whole_payable() {
    let out = tempfile::tempdir().unwrap();
    let (doc, log) = export(&fixtures_dir().join("bill-check-ch6"), out.path());
    // Seed §6: the first line, 772 s at 3.50/h.
    let text = run(&["explain", log.to_str().unwrap(), "--bill", "1"]);
    let text = String::from_utf8_lossy(&text.stdout);
    for needle in ["772", "0.75055555", "0.00055555", "0.75", "R4", "R2"] {
        assert!(text.contains(needle), "explain --bill 1 shows {needle}: {text}");
    }
    let json = run_json(&["explain", log.to_str().unwrap(), "--resource", "pool-62a1", "--at", "2023-07-10T17:30:00+08:00", "--format", "json"]);
    let e = &json[0];
    assert_eq!(e["bill"]["start"], "2023-07-10T17:00:00+08:00");
    assert_eq!(e["bill"]["payable"], doc["bills"][1]["payable"]);
    let steps = e["steps"].as_array().unwrap();
    assert!(steps.iter().any(|s| s["rule"] == "R4") && steps.iter().any(|s| s["rule"] == "R2"));
    let unknown = run(&["explain", log.to_str().unwrap(), "--resource", "nope", "--at", "2023-07-10T17:30:00+08:00"]);
    assert_eq!(unknown.status.code(), Some(2));
}

#[test]
fn monthly_bills_total_the_flow_bills() {
    let out = tempfile::tempdir().unwrap();
    let (doc, log) = export(&fixtures_dir().join("ch3-scale-then-convert"), out.path());
    let march: Value = run_json(&["bills", log.to_str().unwrap(), "--month", "2023-03", "--format", "json"]);
    let flow: rust_decimal::Decimal = doc["bills"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["start"].as_str().unwrap().starts_with("2023-03"))
        .map(|b| b["payable"].as_str().unwrap().parse::<rust_decimal::Decimal>().unwrap())
        .sum();
    assert_eq!(march["total_payable"].as_str().unwrap().parse::<rust_decimal::Decimal>().unwrap(), flow);
    let csv = run(&["bills", log.to_str().unwrap(), "--month", "2023-03", "--format", "csv"]);
    let csv = String::from_utf8_lossy(&csv.stdout);
    assert!(csv.lines().next().unwrap().starts_with("month,account,resource,mode"), "{csv}");
    assert_eq!(run(&["bills", log.to_str().unwrap(), "--month", "2023-3"]).status.code(), Some(2));
}

#[test]
fn timeline_draws_the_seed_scenario_two_pool() {
    let out = tempfile::tempdir().unwrap();
    let (_, log) = export(&fixtures_dir().join("ch3-scale-then-convert"), out.path());
    let svg = out.path().join("pool.svg");
    let result = run(&["timeline", log.to_str().unwrap(), "--resource", "pool-1", "--svg", svg.to_str().unwrap()]);
    assert!(result.status.success(), "{}", String::from_utf8_lossy(&result.stderr));
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.starts_with("<svg") || text.starts_with("<?xml"), "an SVG document");
    assert!(text.contains("pool-1") && text.contains("3500.00") && text.contains("running"));
}

#[test]
fn diff_shows_what_came_later_and_what_a_policy_would_change() {
    let out = tempfile::tempdir().unwrap();
    let (_, log) = export(&fixtures_dir().join("arrears-grace-frozen-recovery"), out.path());
    // As known on the first evening, against now: every later line is added, none changed.
    let d = run_json(&["diff", log.to_str().unwrap(), "--at", "2023-04-18T20:00:00+08:00", "--format", "json"]);
    assert!(!d["added"].as_array().unwrap().is_empty());
    assert_eq!((d["removed"].as_array().unwrap().len(), d["changed"].as_array().unwrap().len()), (0, 0));
    // Under five days of grace the pool freezes ten days earlier: fewer lines are billed.
    let policy = out.path().join("policy.json");
    std::fs::write(&policy, r#"{"levels": {"standard": {"grace_days": 5, "retention_days": 15}}}"#).unwrap();
    let d = run_json(&["diff", log.to_str().unwrap(), "--policy", policy.to_str().unwrap(), "--format", "json"]);
    assert!(!d["removed"].as_array().unwrap().is_empty(), "{d}");
    let what_if = run_json(&["replay", log.to_str().unwrap(), "--policy", policy.to_str().unwrap(), "--format", "json"]);
    assert_eq!(
        what_if["bills"].as_array().unwrap().len() + d["removed"].as_array().unwrap().len() - d["added"].as_array().unwrap().len(),
        run_json(&["replay", log.to_str().unwrap(), "--format", "json"])["bills"].as_array().unwrap().len()
    );
    // A price list too: at 7.00/h every on-demand hour costs twice as much.
    std::fs::write(&policy, r#"{"catalog": [{"spec": "modelarts.vm.cpu.8ud", "hourly": "7.00", "monthly": "1750.00"}]}"#).unwrap();
    let d = run_json(&["diff", log.to_str().unwrap(), "--policy", policy.to_str().unwrap(), "--format", "json"]);
    assert!(!d["changed"].as_array().unwrap().is_empty(), "{d}");
    std::fs::write(&policy, r#"{"levels": {"standard": {"grace_days": -5}}}"#).unwrap();
    assert_eq!(run(&["diff", log.to_str().unwrap(), "--policy", policy.to_str().unwrap()]).status.code(), Some(2));
}

#[test]
fn every_tool_works_on_every_fixture() {
    use poolbill_replay::{bills, explain, timeline};
    use rust_decimal::Decimal;
    let dec = |v: &Value| v.as_str().unwrap().parse::<Decimal>().unwrap();
    for dir in fixtures() {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let log = dir.join("log.jsonl");
        let envelopes = jsonl::read_file(&log).unwrap();
        let projections = fold(jsonl::as_results(&envelopes), Upto::All).unwrap();
        let doc = serde_json::to_value(projections.document()).unwrap();
        // explain: every line (a spread of them in the two month-long fixtures, each explanation
        // folding the whole log), and its steps account for the whole payable.
        let all = doc["bills"].as_array().unwrap();
        let every = if all.len() > 200 { 17 } else { 1 };
        for (i, bill) in all.iter().enumerate().filter(|(i, _)| i % every == 0 || *i == all.len() - 1) {
            let e = serde_json::to_value(explain::explain_bill(&envelopes, i + 1).unwrap()).unwrap();
            assert_eq!(e["bill"]["payable"], bill["payable"], "{name}: bill {}", i + 1);
            let (list, discount, round_off, payable) =
                (dec(&e["bill"]["list_price"]), dec(&e["bill"]["discount"]), dec(&e["bill"]["round_off"]), dec(&e["bill"]["payable"]));
            assert_eq!(list - discount - round_off, payable, "{name}: bill {} adds up", i + 1);
            let steps = e["steps"].as_array().unwrap();
            assert!(steps.iter().all(|s| s["rule"].as_str().unwrap().starts_with('R')), "{name}: every step cites its rule");
            assert!(
                !steps.iter().any(|s| s["what"].as_str().unwrap().starts_with("Recorded amounts differ")),
                "{name}: bill {} recomputes to itself",
                i + 1
            );
        }
        // bills: every month that has lines totals its flow bills.
        let mut months: Vec<String> = doc["bills"].as_array().unwrap().iter().map(|b| b["start"].as_str().unwrap()[..7].to_string()).collect();
        months.dedup();
        for month in months {
            let m = bills::month_bills(&projections, &month).unwrap();
            assert_eq!(m.total_payable, m.flow_payable, "{name}: {month}");
        }
        // timeline: every resource draws.
        for r in doc["resources"].as_array().unwrap() {
            let t = timeline::timeline(&envelopes, r["id"].as_str().unwrap()).unwrap();
            assert!(timeline::render_svg(&t).contains(r["id"].as_str().unwrap()), "{name}: {}", r["id"]);
        }
        // diff: halfway through, nothing known then is changed later.
        let mid = envelopes[envelopes.len() / 2].at.to_rfc3339();
        let d = run_json(&["diff", log.to_str().unwrap(), "--at", &mid, "--format", "json"]);
        assert_eq!(
            (d["removed"].as_array().unwrap().len(), d["changed"].as_array().unwrap().len()),
            (0, 0),
            "{name}: an append-only log corrects nothing"
        );
    }
}
