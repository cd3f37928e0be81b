//! The replay toolkit end to end: `run --export` then `replay`, `audit`, `explain`, `diff`,
//! `bills` and `timeline` on the exported log of every fixture.

mod common;

use common::*;
use poolbill_replay::{fold, jsonl, Upto};
use poolbill_store::EventStore;
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
        let store = poolbill_store_sled::SledStore::open(&store).unwrap();
        let stored: Vec<_> = store.read_all(1).map(|e| poolbill_projections::portable(&e.unwrap()).unwrap().into_owned()).collect();
        assert!(stored == envelopes, "{name}: the exported log is the store's log");
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

/// `poolbill ARGS` with the log given as `source` (`LOG.jsonl`, or `--store DIR`): its exit
/// status, stdout and stderr.
fn tool(args: &[&str], source: &[&str]) -> (Option<i32>, Vec<u8>, String) {
    let mut all = args.to_vec();
    all.extend_from_slice(source);
    let out = run(&all);
    (out.status.code(), out.stdout, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn every_tool_gives_the_same_from_a_store_as_from_its_exported_log() {
    for dir in fixtures() {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let out = tempfile::tempdir().unwrap();
        let store = out.path().join("store");
        let log = out.path().join("run-export.jsonl");
        let (scenario, store_arg, log_arg) = (dir.join("scenario.json"), store.to_str().unwrap(), log.to_str().unwrap());
        run_json(&["run", scenario.to_str().unwrap(), "--format", "json", "--store", store_arg, "--export", log_arg]);
        let exported = std::fs::read(&log).unwrap();

        // export --store writes exactly what run --export wrote, to a file or to stdout.
        let file = out.path().join("export.jsonl");
        let (code, stdout, stderr) = tool(&["export", "--store", store_arg, "--out", file.to_str().unwrap()], &[]);
        assert_eq!(code, Some(0), "{name}: export: {stderr}");
        assert!(stdout.is_empty(), "{name}: export --out prints nothing");
        assert!(std::fs::read(&file).unwrap() == exported, "{name}: export --store = run --export, byte for byte");
        let (code, stdout, stderr) = tool(&["export", "--store", store_arg], &[]);
        assert_eq!(code, Some(0), "{name}: export to stdout: {stderr}");
        assert!(stdout == exported, "{name}: export --store to stdout = run --export");
        assert!(!out.path().join("export.jsonl.partial").exists(), "{name}: no partial file is left");

        let envelopes = jsonl::read_file(&log).unwrap();
        let doc: Value = serde_json::from_slice(&run(&["replay", log_arg, "--format", "json"]).stdout).unwrap();
        let mid = envelopes[envelopes.len() / 2].at.to_rfc3339();
        let bills = doc["bills"].as_array().unwrap();
        let month = bills.first().map_or("2023-04".to_string(), |b| b["start"].as_str().unwrap()[..7].to_string());
        let resource = doc["resources"][0]["id"].as_str().unwrap_or("nothing").to_string();
        let upto = (envelopes.len() / 3).max(1).to_string();
        let last_bill = bills.len().max(1).to_string();
        let charged = dir.join("CHARGED.json");
        let policy = out.path().join("policy.json");
        std::fs::write(
            &policy,
            r#"{"levels": {"standard": {"grace_days": 2, "retention_days": 3}}, "catalog": [{"spec": "modelarts.vm.cpu.8ud", "hourly": "7.00"}]}"#,
        )
        .unwrap();
        let svg_of = |source: &[&str], file: &str| {
            let svg = out.path().join(file);
            let (code, stdout, stderr) = tool(&["timeline", "--resource", &resource, "--svg", svg.to_str().unwrap()], source);
            (code, stdout, stderr, std::fs::read(&svg).ok())
        };
        let cases: Vec<Vec<&str>> = vec![
            vec!["replay", "--format", "json"],
            vec!["replay"],
            vec!["replay", "--format", "json", "--at", &mid],
            vec!["replay", "--format", "json", "--upto", &upto],
            vec!["explain", "--bill", &last_bill],
            vec!["explain", "--bill", &last_bill, "--format", "json"],
            vec!["diff", "--at", &mid, "--format", "json"],
            vec!["diff", "--at", &mid],
            vec!["diff", "--policy", policy.to_str().unwrap(), "--format", "json"],
            vec!["diff", "--policy", policy.to_str().unwrap()],
            vec!["bills", "--month", &month, "--format", "json"],
            vec!["bills", "--month", &month, "--format", "csv"],
            vec!["audit", "--charged", charged.to_str().unwrap(), "--format", "json"],
            vec!["audit", "--charged", charged.to_str().unwrap()],
        ];
        for args in cases {
            let from_log = tool(&args, &[log_arg]);
            let from_store = tool(&args, &["--store", store_arg]);
            assert!(
                from_log.0 == Some(0) || (args[0] == "audit" && from_log.0 == Some(1)) || (args[0] == "explain" && bills.is_empty()),
                "{name}: {args:?} on the log: {}",
                from_log.2
            );
            assert_eq!(from_store.0, from_log.0, "{name}: {args:?}: exit status; {}", from_store.2);
            assert!(
                from_store.1 == from_log.1,
                "{name}: {args:?}: the same output\n--- store\n{}\n--- log\n{}",
                String::from_utf8_lossy(&from_store.1),
                String::from_utf8_lossy(&from_log.1)
            );
            assert!(!from_log.1.is_empty() || from_log.0 != Some(0), "{name}: {args:?}: some output");
        }
        let (from_log, from_store) = (svg_of(&[log_arg], "log.svg"), svg_of(&["--store", store_arg], "store.svg"));
        assert_eq!(from_store.0, from_log.0, "{name}: timeline exit status: {}", from_store.2);
        assert!(from_log.3.is_some() == (from_log.0 == Some(0)), "{name}: timeline: {}", from_log.2);
        assert!(from_store.3 == from_log.3, "{name}: the same SVG, byte for byte");
        // Reading changed nothing: the store still exports what it did.
        assert!(tool(&["export", "--store", store_arg], &[]).1 == exported, "{name}: the tools leave the store as it was");
    }
}

/// Each tool's arguments before its log, on a store of `subscription-upgrade`.
fn store_tools(out: &Path) -> Vec<Vec<String>> {
    let charged = fixtures_dir().join("subscription-upgrade/CHARGED.json").to_str().unwrap().to_string();
    let svg = out.join("pool.svg").to_str().unwrap().to_string();
    let export = out.join("export.jsonl").to_str().unwrap().to_string();
    [
        vec!["replay"],
        vec!["audit", "--charged", &charged],
        vec!["explain", "--bill", "1"],
        vec!["diff", "--at", "2023-04-12T00:00:00+08:00"],
        vec!["bills", "--month", "2023-04"],
        vec!["timeline", "--resource", "pool-1", "--svg", &svg],
        vec!["export", "--out", &export],
        vec!["verify"],
    ]
    .iter()
    .map(|args| args.iter().map(|a| a.to_string()).collect())
    .collect()
}

fn run_owned(args: &[String], store: &Path) -> (Option<i32>, String, String) {
    let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
    all.extend(["--store", store.to_str().unwrap()]);
    let out = run(&all);
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn a_store_that_is_not_there_is_refused_and_never_created() {
    let out = tempfile::tempdir().unwrap();
    let missing = out.path().join("no-such-store");
    let empty = out.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    for args in store_tools(out.path()) {
        let (code, stdout, stderr) = run_owned(&args, &missing);
        assert_eq!(code, Some(2), "{args:?} on a missing store: {stderr}");
        assert!(stderr.contains(missing.to_str().unwrap()) && stderr.contains("no such directory"), "{args:?}: names it: {stderr}");
        assert!(stdout.is_empty(), "{args:?}: {stdout}");
        assert!(!missing.exists(), "{args:?}: the store was not created");
        let (code, _, stderr) = run_owned(&args, &empty);
        assert_eq!(code, Some(2), "{args:?} on an empty directory: {stderr}");
        assert!(stderr.contains(empty.to_str().unwrap()) && stderr.contains("not a poolbill store"), "{args:?}: names it: {stderr}");
        assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0, "{args:?}: nothing was written into the directory");
        assert!(!out.path().join("pool.svg").exists() && !out.path().join("export.jsonl").exists(), "{args:?}: no output file");
    }
}

/// `subscription-upgrade` run on a kept store in `dir`.
fn kept_store(dir: &Path) -> PathBuf {
    let store = dir.join("store");
    let scenario = fixtures_dir().join("subscription-upgrade/scenario.json");
    run_json(&["run", scenario.to_str().unwrap(), "--format", "json", "--store", store.to_str().unwrap()]);
    store
}

#[test]
fn a_damaged_store_is_refused_naming_the_position() {
    let out = tempfile::tempdir().unwrap();
    let store = kept_store(out.path());
    // As if sled had recovered only a prefix: the high-water mark remembers more than the log.
    let mark = store.join(poolbill_store_sled::WATERMARK_FILE);
    // The mark as it stands (kept in two binary slots), overwritten below in the text form of
    // older stores, which is still read.
    let (position, crc) = poolbill_store_sled::read_watermark(&store).unwrap().unwrap();
    let crc = format!("{crc:08x}");
    std::fs::write(&mark, format!("{} {crc}", position + 5)).unwrap();
    for args in store_tools(out.path()) {
        let (code, stdout, stderr) = run_owned(&args, &store);
        assert_eq!(code, Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains("DAMAGED") && stderr.contains(&format!("position {}", position + 1)), "{args:?}: {stderr}");
        assert!(stdout.is_empty(), "{args:?}: nothing half-read is shown: {stdout}");
        assert!(!out.path().join("export.jsonl").exists(), "{args:?}: no log exported");
    }
}

#[test]
fn a_store_in_use_by_serve_is_refused_saying_so() {
    use std::io::{BufRead, Write};
    let out = tempfile::tempdir().unwrap();
    let store = kept_store(out.path());
    let mut serve = poolbill()
        .args(["serve", "--store", store.to_str().unwrap()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = serve.stdin.take().unwrap();
    let mut answers = std::io::BufReader::new(serve.stdout.take().unwrap());
    // An answer means the store is open (serve opens it before it reads a line); this one
    // writes nothing.
    writeln!(stdin, "not a command").unwrap();
    let mut answer = String::new();
    answers.read_line(&mut answer).unwrap();
    assert!(answer.contains("not valid JSON"), "{answer}");
    for args in store_tools(out.path()) {
        let (code, stdout, stderr) = run_owned(&args, &store);
        assert_eq!(code, Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(store.to_str().unwrap()) && stderr.contains("in use"), "{args:?}: names the store and says why: {stderr}");
        assert!(!stderr.contains("DAMAGED"), "{args:?}: a store in use is not damaged: {stderr}");
        assert!(stdout.is_empty(), "{args:?}: {stdout}");
        assert!(!out.path().join("export.jsonl").exists(), "{args:?}: no log exported");
    }
    drop(stdin);
    assert!(serve.wait().unwrap().success());
    // Once serve is gone the store reads again.
    assert_eq!(run_owned(&store_tools(out.path())[0], &store).0, Some(0));
}

#[test]
fn export_never_replaces_a_file_unless_forced() {
    let out = tempfile::tempdir().unwrap();
    let store = kept_store(out.path());
    let target = out.path().join("log.jsonl");
    std::fs::write(&target, "precious\n").unwrap();
    let export = |force: bool| {
        let mut args = vec!["export", "--store", store.to_str().unwrap(), "--out", target.to_str().unwrap()];
        if force {
            args.push("--force");
        }
        run(&args)
    };
    let refused = export(false);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(target.to_str().unwrap()) && stderr.contains("--force"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious\n", "the file is untouched");
    let forced = export(true);
    assert!(forced.status.success(), "{}", String::from_utf8_lossy(&forced.stderr));
    // What `run --export` writes for the same store (a re-run on it appends nothing).
    let by_run = out.path().join("by-run.jsonl");
    let scenario = fixtures_dir().join("subscription-upgrade/scenario.json");
    run_json(&["run", scenario.to_str().unwrap(), "--format", "json", "--store", store.to_str().unwrap(), "--export", by_run.to_str().unwrap()]);
    assert!(std::fs::read(&target).unwrap() == std::fs::read(&by_run).unwrap(), "--force wrote the store's log");
    // Into a directory that does not exist: bad input, nothing written.
    let nowhere = out.path().join("nowhere/log.jsonl");
    let r = run(&["export", "--store", store.to_str().unwrap(), "--out", nowhere.to_str().unwrap()]);
    assert_eq!(r.status.code(), Some(2), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(String::from_utf8_lossy(&r.stderr).contains(nowhere.to_str().unwrap()));
}
