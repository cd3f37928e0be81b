//! The figures, in the order they are measured, each from a child process.

use crate::measure::{self, disk_usage, Output, Run};
use crate::report::{bytes, grouped, seconds, Check, Figure, Report};
use crate::workload::{self, Params};
use serde_json::{json, Value};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Every figure, in the order measured; `--only` takes a comma-separated subset.
pub const FIGURES: [&str; 21] = [
    "fsync",
    "run",
    "size",
    "export",
    "decode",
    "replay",
    "replay-store",
    "replay-store-cli",
    "at",
    "audit",
    "diff-at",
    "diff-policy",
    "explain",
    "explain-store",
    "explain-service",
    "reopen",
    "single",
    "group",
    "serve",
    "pg-single",
    "pg-group",
];

/// The issue's targets.
const MEMORY_LIMIT: f64 = 400e6;
const REPLAY_STORE_RATE: f64 = 1_000_000.0;
const REOPEN_LIMIT: f64 = 0.3;
const POINT_QUERY_LIMIT: f64 = 0.05;
const BYTES_PER_EVENT: f64 = 300.0;
const SINGLE_SHARE_OF_FSYNC: f64 = 0.4;
const GROUP_RATE: f64 = 100_000.0;
const GROUP_CLIENTS: usize = 64;
/// The `serve` figure: this many top-ups piped to `poolbill serve` in one write, over
/// `SERVE_ACCOUNTS` accounts opened first.
const SERVE_COMMANDS: usize = 5_000;
const SERVE_ACCOUNTS: usize = 4;

pub struct Options {
    pub params: Params,
    pub out: PathBuf,
    pub only: Vec<String>,
    /// The `poolbill` binary to measure (a release build).
    pub poolbill: PathBuf,
    /// This benchmark's own binary: the in-process steps run as its children.
    pub bench: PathBuf,
    /// How long each append figure and the fsync probe run.
    pub budget: Duration,
    /// Keep the big outputs (documents) instead of deleting them once read.
    pub keep: bool,
    /// A PostgreSQL database for the pg-single and pg-group figures (none: they are skipped).
    pub postgres: Option<String>,
    /// Print progress on standard error.
    pub verbose: bool,
}

struct Paths {
    scenario: PathBuf,
    store: PathBuf,
    log: PathBuf,
}

/// What the figures learn that later figures use.
#[derive(Default)]
struct Facts {
    events: Option<u64>,
    charged: Option<u64>,
    python: Option<Run>,
    rust_floor: Option<f64>,
    fsync: Option<f64>,
    /// The single-client engine rate, commands/s.
    single: Option<f64>,
    /// The 64-client engine rate on sled, commands/s.
    group: Option<f64>,
    run_document: Option<PathBuf>,
}

pub fn run(opts: &Options) -> Result<Report, String> {
    let p = &opts.params;
    std::fs::create_dir_all(&opts.out).map_err(|e| format!("{}: {e}", opts.out.display()))?;
    let paths = Paths { scenario: opts.out.join("workload.json"), store: opts.out.join("store"), log: opts.out.join("log.jsonl") };
    // Made by a child: a year's workload as one JSON tree takes hundreds of megabytes, and every
    // child's peak memory (`ru_maxrss`) starts from the peak of the process it was spawned from.
    let fresh = opts.out.join("workload.json.new");
    let params = serde_json::to_string(p).map_err(|e| e.to_string())?;
    let made = Command::new(&opts.bench)
        .arg("generate-params")
        .arg(&params)
        .stdout(std::fs::File::create(&fresh).map_err(|e| format!("{}: {e}", fresh.display()))?)
        .status()
        .map_err(|e| format!("{} generate-params: {e}", opts.bench.display()))?;
    if !made.success() {
        return Err(format!("{} generate-params failed ({made})", opts.bench.display()));
    }
    // A store or log left by another workload is not this one's.
    if !same_bytes(&paths.scenario, &fresh).unwrap_or(false) {
        let _ = std::fs::remove_dir_all(&paths.store);
        let _ = std::fs::remove_file(&paths.log);
    }
    std::fs::rename(&fresh, &paths.scenario).map_err(|e| format!("{}: {e}", paths.scenario.display()))?;
    let selected = |key: &str| opts.only.is_empty() || opts.only.iter().any(|k| k == key);
    let mut facts = Facts::default();
    let mut figures = Vec::new();
    let mut notes = Vec::new();
    let load_before = loadavg();
    let say = |what: &str| {
        if opts.verbose {
            eprintln!("poolbill-bench: {what}");
        }
    };

    if selected("fsync") || selected("single") {
        say("fsync ceiling");
        let rate = measure::fsync_ceiling(&opts.out, opts.budget).map_err(|e| format!("fsync probe: {e}"))?;
        facts.fsync = Some(rate);
        if selected("fsync") {
            figures.push(Figure {
                key: "fsync".into(),
                what: "fsync ceiling of the disk (baseline)".into(),
                command: format!("in process: write 128 B + fdatasync for {:.1} s beside the store", opts.budget.as_secs_f64()),
                value: format!("{} syncs/s", grouped(rate)),
                peak_rss: None,
                baseline: String::new(),
                checks: vec![],
                numbers: json!({"syncs_per_s": rate}),
            });
        }
    }

    // Every figure but the disk's and the appends' (which have stores of their own).
    let needs_store = FIGURES.iter().filter(|k| !["fsync", "single", "group", "pg-single", "pg-group"].contains(k)).any(|k| selected(k));
    // `run` and `replay` are compared with the parse of the log: they need it too.
    let needs_log = ["run", "export", "decode", "replay", "at", "explain", "audit", "diff-at", "diff-policy"].iter().any(|k| selected(k));
    let have_store = paths.store.join(poolbill_store_marker()).exists();
    if selected("run") || (needs_store && !have_store) {
        say(&format!("run (derive, durable); about {} events expected", grouped(p.expected_events() as f64)));
        let _ = std::fs::remove_dir_all(&paths.store);
        let _ = std::fs::remove_file(&paths.log);
        let doc = opts.out.join("run.json");
        let mut cmd = Command::new(&opts.poolbill);
        cmd.arg("run").arg(&paths.scenario).arg("--store").arg(&paths.store).args(["--format", "json"]);
        let r = child(&mut cmd, b"", Output::File(&doc), &opts.out, "run")?;
        let events = document_events(&doc)?;
        facts.events = Some(events);
        facts.run_document = Some(doc);
        figures.push(Figure {
            key: "run".into(),
            what: "derive from the commands, durable".into(),
            command: format!("poolbill run {} --store {} --format json > run.json", rel(&paths.scenario), rel(&paths.store)),
            value: format!("{} ({} events/s)", seconds(secs(&r)), grouped(events as f64 / secs(&r))),
            peak_rss: Some(r.peak_rss),
            baseline: String::new(),
            checks: vec![Check::at_most("memory", r.peak_rss as f64, MEMORY_LIMIT, "B")],
            numbers: numbers(&r, json!({"events": events})),
        });
    }
    let events = match facts.events {
        Some(n) => Some(n),
        None if needs_store => Some(store_events(opts, &paths)?),
        None => None,
    };
    facts.events = events;

    if selected("size") {
        let size = disk_usage(&paths.store).map_err(|e| e.to_string())?;
        let n = events.unwrap_or(1).max(1);
        let per_event = size as f64 / n as f64;
        figures.push(Figure {
            key: "size".into(),
            what: "store size".into(),
            command: format!("du -b {} (sled's files)", rel(&paths.store)),
            value: format!("{} for {} events, {:.0} B/event", bytes(size), grouped(n as f64), per_event),
            peak_rss: None,
            baseline: log_size_note(&paths.log, n),
            checks: vec![Check::at_most("size", per_event, BYTES_PER_EVENT, "B/event")],
            numbers: json!({"bytes": size, "events": n, "bytes_per_event": per_event}),
        });
    }

    if selected("export") || (needs_log && !paths.log.exists()) {
        say("export the log");
        let mut cmd = Command::new(&opts.poolbill);
        cmd.arg("run").arg(&paths.scenario).arg("--store").arg(&paths.store).arg("--export").arg(&paths.log).args(["--format", "json"]);
        let r = child(&mut cmd, b"", Output::Null, &opts.out, "export")?;
        let log_bytes = std::fs::metadata(&paths.log).map(|m| m.len()).unwrap_or(0);
        figures.push(Figure {
            key: "export".into(),
            what: "reopen, run the scenario again (all duplicates) and export the log".into(),
            command: format!("poolbill run {} --store {} --export {}", rel(&paths.scenario), rel(&paths.store), rel(&paths.log)),
            value: format!("{} ({} log)", seconds(secs(&r)), bytes(log_bytes)),
            peak_rss: Some(r.peak_rss),
            baseline: String::new(),
            checks: vec![],
            numbers: numbers(&r, json!({"log_bytes": log_bytes})),
        });
    }

    let python = Command::new("python3").arg("--version").output().map(|o| o.status.success()).unwrap_or(false);
    if selected("decode") || selected("replay") || selected("run") {
        say("decode floors");
        // Rust: serde_json::Value per line, in a child of this bench.
        let out = opts.out.join("decode.json");
        let mut cmd = Command::new(&opts.bench);
        cmd.arg("decode").arg(&paths.log);
        let r = child(&mut cmd, b"", Output::File(&out), &opts.out, "decode")?;
        let floor: Value = serde_json::from_str(&std::fs::read_to_string(&out).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
        let parse = floor["seconds"].as_f64().unwrap_or(f64::NAN);
        let lines = floor["events"].as_u64().unwrap_or(0);
        facts.rust_floor = Some(parse);
        facts.charged = floor["charged"].as_u64();
        figures.push(Figure {
            key: "decode".into(),
            what: "JSON decode floor, Rust (baseline)".into(),
            command: format!("poolbill-bench decode {} (serde_json::Value per line)", rel(&paths.log)),
            value: format!(
                "{} ({} events/s; {} charged lines)",
                seconds(parse),
                grouped(lines as f64 / parse),
                grouped(floor["charged"].as_f64().unwrap_or(0.0))
            ),
            peak_rss: Some(r.peak_rss),
            baseline: String::new(),
            checks: vec![],
            numbers: numbers(&r, floor.clone()),
        });
        if python {
            let script = "import json,sys\nn=0\nfor line in open(sys.argv[1]):\n    json.loads(line); n+=1\nprint(n)\n";
            let mut cmd = Command::new("python3");
            cmd.arg("-c").arg(script).arg(&paths.log);
            let r = child(&mut cmd, b"", Output::Null, &opts.out, "python")?;
            figures.push(Figure {
                key: "decode-python".into(),
                what: "JSON decode floor, Python `json` (baseline)".into(),
                command: format!("python3 -c 'for line in open(LOG): json.loads(line)' {}", rel(&paths.log)),
                value: format!("{} ({} events/s)", seconds(secs(&r)), grouped(lines as f64 / secs(&r))),
                peak_rss: Some(r.peak_rss),
                baseline: String::new(),
                checks: vec![],
                numbers: numbers(&r, json!({})),
            });
            facts.python = Some(r);
        } else {
            notes.push("python3 is not installed: no Python parse baseline".into());
        }
    }

    // Derive vs the Python parse of its log: at most 2×.
    if let (Some(run), Some(py)) = (figures.iter_mut().find(|f| f.key == "run"), facts.python.as_ref()) {
        let run_s = run.numbers["seconds"].as_f64().unwrap_or(f64::NAN);
        run.baseline = format!("Python parse of its log {}: {:.1}×", seconds(secs(py)), run_s / secs(py));
        run.checks.insert(0, Check::at_most("time", run_s, 2.0 * secs(py), "s"));
    }

    if selected("replay") {
        say("replay the log");
        let doc = opts.out.join("replay.json");
        let mut cmd = Command::new(&opts.poolbill);
        cmd.arg("replay").arg(&paths.log).args(["--format", "json"]);
        let r = child(&mut cmd, b"", Output::File(&doc), &opts.out, "replay")?;
        let n = document_events(&doc)?;
        let mut checks = Vec::new();
        let mut baseline = String::new();
        if let Some(py) = &facts.python {
            baseline = format!("Python parse {}: {:.1}× its time", seconds(secs(py)), secs(&r) / secs(py));
            checks.push(Check::at_most("time", secs(&r), secs(py) / 2.0, "s"));
        }
        if let Some(floor) = facts.rust_floor {
            baseline.push_str(&format!("{}Rust parse {}", if baseline.is_empty() { "" } else { "; " }, seconds(floor)));
        }
        checks.push(Check::at_most("memory", r.peak_rss as f64, MEMORY_LIMIT, "B"));
        compare_documents(&facts, &doc, "replay of the exported log", &mut notes, opts.keep);
        figures.push(Figure {
            key: "replay".into(),
            what: "replay an exported log (decode + fold + document)".into(),
            command: format!("poolbill replay {} --format json > replay.json", rel(&paths.log)),
            value: format!("{} ({} events/s)", seconds(secs(&r)), grouped(n as f64 / secs(&r))),
            peak_rss: Some(r.peak_rss),
            baseline,
            checks,
            numbers: numbers(&r, json!({"events": n, "events_per_s": n as f64 / secs(&r)})),
        });
    }

    // A store replayed to a document, in process and through the command line: one figure each.
    let replays = [
        ("replay-store", "replay the store", "replay from the store (decode + fold + document)", false),
        (
            "replay-store-cli",
            "replay the store through the command line",
            "replay a store through the command line (folded as it is read, document)",
            true,
        ),
    ];
    for (key, saying, what, cli) in replays {
        if !selected(key) {
            continue;
        }
        say(saying);
        let doc = opts.out.join(format!("{key}.json"));
        let (mut cmd, command) = if cli {
            let mut cmd = Command::new(&opts.poolbill);
            cmd.arg("replay").arg("--store").arg(&paths.store).args(["--format", "json"]);
            (cmd, format!("poolbill replay --store {} --format json > doc.json", rel(&paths.store)))
        } else {
            let mut cmd = Command::new(&opts.bench);
            cmd.arg("replay-store").arg(&paths.store);
            (cmd, format!("poolbill-bench replay-store {} > doc.json (poolbill_replay::replay, Upto::All)", rel(&paths.store)))
        };
        let r = child(&mut cmd, b"", Output::File(&doc), &opts.out, key)?;
        let n = document_events(&doc)?;
        let rate = n as f64 / secs(&r);
        compare_documents(&facts, &doc, if cli { "replay --store" } else { "replay of the store" }, &mut notes, opts.keep);
        figures.push(Figure {
            key: key.into(),
            what: what.into(),
            command,
            value: format!("{} ({} events/s)", seconds(secs(&r)), grouped(rate)),
            peak_rss: Some(r.peak_rss),
            baseline: facts.rust_floor.map(|f| format!("Rust parse of its log {}", seconds(f))).unwrap_or_default(),
            checks: vec![
                Check::at_least("rate", rate, REPLAY_STORE_RATE, "events/s"),
                Check::at_most("memory", r.peak_rss as f64, MEMORY_LIMIT, "B"),
            ],
            numbers: numbers(&r, json!({"events": n, "events_per_s": rate})),
        });
    }

    let mid = p.mid().to_rfc3339();
    if selected("at") {
        say("time travel");
        let doc = opts.out.join("at.json");
        let mut cmd = Command::new(&opts.poolbill);
        cmd.arg("replay").arg(&paths.log).args(["--at", &mid, "--format", "json"]);
        let r = child(&mut cmd, b"", Output::File(&doc), &opts.out, "at")?;
        let n = document_events(&doc)?;
        if !opts.keep {
            let _ = std::fs::remove_file(&doc);
        }
        figures.push(point_query(
            "at",
            "time travel: the whole document as of mid-history",
            format!("poolbill replay {} --at {mid} --format json", rel(&paths.log)),
            &r,
            json!({"events_by_then": n}),
            &facts,
        ));
    }

    // Audit and diff of the whole log, each next to a replay of the same log measured in this
    // run: their peak memory should follow what is live, as the replay's does, not the log.
    if ["audit", "diff-at", "diff-policy"].iter().any(|k| selected(k)) {
        say("replay the log (the baseline of audit and diff)");
        let mut cmd = Command::new(&opts.poolbill);
        cmd.arg("replay").arg(&paths.log).args(["--format", "json"]);
        let base = child(&mut cmd, b"", Output::Null, &opts.out, "audit-baseline")?;
        let baseline = format!("replay of the same log {}, peak {}", seconds(secs(&base)), bytes(base.peak_rss));
        let base_numbers = json!({"baseline_seconds": secs(&base), "baseline_peak_rss": base.peak_rss});
        if selected("audit") {
            figures.push(audit_figure(opts, &paths, &baseline, &base_numbers)?);
        }
        let day_before = (p.until() - chrono::Duration::days(1)).to_rfc3339();
        let policy = opts.out.join("what-if.json");
        std::fs::write(&policy, r#"{"levels": {"standard": {"grace_days": 5, "retention_days": 15}}}"#).map_err(|e| e.to_string())?;
        let diffs = [
            ("diff-at", "diff: the bills as known a day before the end against now", vec!["--at".to_string(), day_before]),
            (
                "diff-policy",
                "diff: the bills as charged against a what-if policy (grace 5 days), re-running every command",
                vec!["--policy".to_string(), policy.display().to_string()],
            ),
        ];
        for (key, what, args) in diffs {
            if !selected(key) {
                continue;
            }
            say(what);
            let out = opts.out.join(format!("{key}.json"));
            let mut cmd = Command::new(&opts.poolbill);
            cmd.arg("diff").arg(&paths.log).args(&args).args(["--format", "json"]);
            let r = child(&mut cmd, b"", Output::File(&out), &opts.out, key)?;
            let d = diff_counts(&out).map_err(|e| format!("{key}: {e}"))?;
            if !opts.keep {
                let _ = std::fs::remove_file(&out);
            }
            let (added, removed, changed, unchanged) = (d.added.len(), d.removed.len(), d.changed.len(), d.unchanged);
            figures.push(Figure {
                key: key.into(),
                what: what.into(),
                command: format!(
                    "poolbill diff {} {} --format json",
                    rel(&paths.log),
                    args.iter().map(|a| rel(Path::new(a))).collect::<Vec<_>>().join(" ")
                ),
                value: format!(
                    "{} ({} added, {} removed, {} changed, {} unchanged)",
                    seconds(secs(&r)),
                    grouped(added as f64),
                    grouped(removed as f64),
                    grouped(changed as f64),
                    grouped(unchanged as f64)
                ),
                peak_rss: Some(r.peak_rss),
                baseline: baseline.clone(),
                checks: vec![Check::at_most("memory", r.peak_rss as f64, MEMORY_LIMIT, "B")],
                numbers: numbers(
                    &r,
                    json!({"added": added, "removed": removed, "changed": changed, "unchanged": unchanged,
                           "baseline_seconds": base_numbers["baseline_seconds"], "baseline_peak_rss": base_numbers["baseline_peak_rss"]}),
                ),
            });
        }
    }

    if selected("explain") {
        say("explain");
        let resource = workload::pool_id(5.min(p.pools.saturating_sub(1)));
        let mut cmd = Command::new(&opts.poolbill);
        cmd.arg("explain").arg(&paths.log).args(["--resource", &resource, "--at", &mid]);
        let r = child(&mut cmd, b"", Output::Null, &opts.out, "explain")?;
        figures.push(point_query(
            "explain",
            "explain one resource at mid-history",
            format!("poolbill explain {} --resource {resource} --at {mid}", rel(&paths.log)),
            &r,
            json!({}),
            &facts,
        ));
    }

    if selected("explain-store") {
        say("explain from the store");
        let resource = workload::pool_id(5.min(p.pools.saturating_sub(1)));
        let mut cmd = Command::new(&opts.poolbill);
        cmd.arg("explain").arg("--store").arg(&paths.store).args(["--resource", &resource, "--at", &mid]);
        // Once to bring the tag index up to date (the engine leaves it up to 20,000 events
        // behind), then measured.
        child(&mut cmd, b"", Output::Null, &opts.out, "explain-store")?;
        let r = child(&mut cmd, b"", Output::Null, &opts.out, "explain-store")?;
        figures.push(point_query(
            "explain-store",
            "explain one resource at mid-history from the store (tag index), a process of its own",
            format!("poolbill explain --store {} --resource {resource} --at {mid}", rel(&paths.store)),
            &r,
            json!({}),
            &facts,
        ));
    }

    if selected("explain-service") {
        say("explain from a store opened once");
        let resources: Vec<String> = (0..20u32).map(|k| workload::pool_id(k * p.pools.max(1) / 20)).collect();
        let mut cmd = Command::new(&opts.bench);
        cmd.arg("explain-store").arg(&paths.store).args(["--at", &mid, "--resources", &resources.join(",")]);
        let out = opts.out.join("explain-service.json");
        let r = child(&mut cmd, b"", Output::File(&out), &opts.out, "explain-service")?;
        let numbers_in: Value = serde_json::from_str(&std::fs::read_to_string(&out).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
        let median = numbers_in["median_s"].as_f64().unwrap_or(f64::NAN);
        let max = numbers_in["max_s"].as_f64().unwrap_or(f64::NAN);
        figures.push(Figure {
            key: "explain-service".into(),
            what: "explain 20 resources at 20 instants from a store opened once (as a service would)".into(),
            command: format!("poolbill-bench explain-store {} --at {mid} --resources {}…", rel(&paths.store), resources[..3].join(",")),
            value: format!(
                "median {:.1} ms, slowest {:.1} ms a question (opening the store {:.2} s, first question {:.1} ms)",
                median * 1e3,
                max * 1e3,
                numbers_in["open_s"].as_f64().unwrap_or(f64::NAN),
                numbers_in["first_s"].as_f64().unwrap_or(f64::NAN) * 1e3
            ),
            peak_rss: Some(r.peak_rss),
            baseline: facts.rust_floor.map(|f| format!("Rust parse of the whole log {}", seconds(f))).unwrap_or_default(),
            checks: vec![Check::at_most("time", max, POINT_QUERY_LIMIT, "s"), Check::at_most("memory", r.peak_rss as f64, MEMORY_LIMIT, "B")],
            numbers: numbers(&r, numbers_in),
        });
    }

    if selected("reopen") {
        say("reopen and answer one command");
        // At `until`: nothing is due any more, so the answer is the command's own work.
        let id = format!("bench-reopen-{}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0));
        let line = json!({"id": id, "at": p.until().to_rfc3339(), "type": "top_up", "account": workload::account_id(0), "amount": "1.00"});
        let answer = opts.out.join("reopen.out");
        let mut cmd = Command::new(&opts.poolbill);
        cmd.arg("serve").arg("--store").arg(&paths.store);
        let r = child(&mut cmd, format!("{line}\n").as_bytes(), Output::File(&answer), &opts.out, "reopen")?;
        let reply = std::fs::read_to_string(&answer).unwrap_or_default();
        if !reply.contains("\"accepted\"") {
            return Err(format!("poolbill serve did not accept the top-up: {reply}"));
        }
        figures.push(Figure {
            key: "reopen".into(),
            what: "reopen the store and answer one command".into(),
            command: format!("echo '{{\"type\":\"top_up\",…}}' | poolbill serve --store {}", rel(&paths.store)),
            value: seconds(secs(&r)),
            peak_rss: Some(r.peak_rss),
            baseline: events.map(|n| format!("history of {} events", grouped(n as f64))).unwrap_or_default(),
            checks: vec![Check::at_most("time", secs(&r), REOPEN_LIMIT, "s"), Check::at_most("memory", r.peak_rss as f64, MEMORY_LIMIT, "B")],
            numbers: numbers(&r, json!({})),
        });
    }

    for (key, clients) in [("single", 1usize), ("group", GROUP_CLIENTS)] {
        if !selected(key) {
            continue;
        }
        say(&format!("durable appends, {clients} client(s)"));
        // The disk's fsync rate drifts with what else the machine does (281 to 9,083 syncs/s
        // across runs here): single appends are compared with a probe taken right before them.
        let ceiling_now =
            if clients == 1 { Some(measure::fsync_ceiling(&opts.out, opts.budget).map_err(|e| format!("fsync probe: {e}"))?) } else { None };
        let dir = opts.out.join(format!("appends-{key}"));
        let _ = std::fs::remove_dir_all(&dir);
        let out = opts.out.join(format!("{key}.json"));
        let mut cmd = Command::new(&opts.bench);
        cmd.arg("appends").arg(&dir).args(["--clients", &clients.to_string(), "--seconds", &opts.budget.as_secs_f64().to_string()]);
        let r = child(&mut cmd, b"", Output::File(&out), &opts.out, key)?;
        let _ = std::fs::remove_dir_all(&dir);
        let got: Value = serde_json::from_str(&std::fs::read_to_string(&out).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
        let s = got["seconds"].as_f64().unwrap_or(f64::NAN);
        let commands = got["commands"].as_f64().unwrap_or(0.0) / s;
        let events_rate = got["events"].as_f64().unwrap_or(0.0) / s;
        let (what, baseline, check) = if clients == 1 {
            facts.single = Some(commands);
            let fsync = ceiling_now.unwrap_or(f64::NAN);
            let at_start = facts.fsync.map(|f| format!("; {} at the run's start", grouped(f))).unwrap_or_default();
            (
                "durable single appends (1 client, engine `execute` of top-ups, each awaited)".to_string(),
                format!("fsync ceiling measured just before {} syncs/s: {:.0}% of it{at_start}", grouped(fsync), 100.0 * commands / fsync),
                Check::at_least("rate", commands, SINGLE_SHARE_OF_FSYNC * fsync, "commands/s"),
            )
        } else {
            facts.group = Some(commands);
            (
                format!("group commit ({clients} concurrent clients, engine `execute` of top-ups)"),
                facts.fsync.map(|f| format!("fsync ceiling {} syncs/s", grouped(f))).unwrap_or_default(),
                Check::at_least("rate", events_rate, GROUP_RATE, "events/s"),
            )
        };
        figures.push(Figure {
            key: key.into(),
            what,
            command: format!("poolbill-bench appends DIR --clients {clients} --seconds {}", opts.budget.as_secs_f64()),
            value: format!("{} commands/s, {} events/s", grouped(commands), grouped(events_rate)),
            peak_rss: Some(r.peak_rss),
            baseline,
            checks: vec![check],
            numbers: numbers(&r, got),
        });
    }

    // The same appends on PostgreSQL, beside sled's.
    for (key, clients) in [("pg-single", 1usize), ("pg-group", GROUP_CLIENTS)] {
        let Some(url) = opts.postgres.as_deref().filter(|_| selected(key)) else { continue };
        say(&format!("durable appends on PostgreSQL, {clients} client(s)"));
        let out = opts.out.join(format!("{key}.json"));
        let mut cmd = Command::new(&opts.bench);
        cmd.args(["appends", "--postgres", url, "--clients", &clients.to_string(), "--seconds", &opts.budget.as_secs_f64().to_string()]);
        let r = child(&mut cmd, b"", Output::File(&out), &opts.out, key)?;
        let got: Value = serde_json::from_str(&std::fs::read_to_string(&out).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
        let s = got["seconds"].as_f64().unwrap_or(f64::NAN);
        let commands = got["commands"].as_f64().unwrap_or(0.0) / s;
        let events_rate = got["events"].as_f64().unwrap_or(0.0) / s;
        let on_sled = if clients == 1 { facts.single } else { facts.group };
        figures.push(Figure {
            key: key.into(),
            what: format!("durable appends on PostgreSQL ({clients} client(s), engine `execute` of top-ups)"),
            command: format!("poolbill-bench appends --postgres URL --clients {clients} --seconds {}", opts.budget.as_secs_f64()),
            value: format!("{} commands/s, {} events/s", grouped(commands), grouped(events_rate)),
            peak_rss: Some(r.peak_rss),
            baseline: on_sled.map(|sled| format!("sled: {} commands/s ({:.2}×)", grouped(sled), commands / sled)).unwrap_or_default(),
            checks: Vec::new(),
            numbers: numbers(&r, got),
        });
    }

    if selected("serve") {
        say(&format!("serve, {SERVE_COMMANDS} piped commands"));
        let dir = opts.out.join("serve-store");
        let _ = std::fs::remove_dir_all(&dir);
        let answers = opts.out.join("serve.out");
        let mut cmd = Command::new(&opts.poolbill);
        cmd.arg("serve").arg("--store").arg(&dir);
        let r = child(&mut cmd, serve_input().as_bytes(), Output::File(&answers), &opts.out, "serve")?;
        let _ = std::fs::remove_dir_all(&dir);
        let text = std::fs::read_to_string(&answers).map_err(|e| format!("{}: {e}", answers.display()))?;
        let accepted = text.lines().filter(|l| l.contains("\"status\":\"accepted\"")).count();
        if accepted != SERVE_ACCOUNTS + SERVE_COMMANDS {
            let first: Vec<&str> = text.lines().take(3).collect();
            return Err(format!("poolbill serve accepted {accepted} of {} commands: {first:?}", SERVE_ACCOUNTS + SERVE_COMMANDS));
        }
        let rate = accepted as f64 / secs(&r);
        figures.push(Figure {
            key: "serve".into(),
            what: format!("serve, {} piped commands (top-ups in one write; a fresh store, start to exit)", grouped(accepted as f64)),
            command: format!("poolbill serve --store DIR < {} lines", grouped(accepted as f64)),
            value: format!("{} commands/s ({})", grouped(rate), seconds(secs(&r))),
            peak_rss: Some(r.peak_rss),
            baseline: facts
                .single
                .map(|single| format!("engine, 1 client: {} commands/s ({:.1}×)", grouped(single), rate / single))
                .unwrap_or_default(),
            checks: Vec::new(),
            numbers: numbers(&r, json!({"commands": accepted})),
        });
    }

    if let Some(doc) = facts.run_document.take() {
        if !opts.keep {
            let _ = std::fs::remove_file(doc);
        }
    }
    if let Some(charged) = facts.charged {
        notes.push(format!("the log holds {} flow-bill lines (`charged` events)", grouped(charged as f64)));
    }
    notes.push(format!("load average before {load_before}, after {}", loadavg()));
    // A child's peak memory cannot read lower than the bench's own peak when it was spawned.
    let own = measure::own_peak_rss();
    notes.push(format!("the bench's own peak memory: {} (a floor under every child's figure)", bytes(own)));
    Ok(Report {
        preset: p.name.clone(),
        seed: p.seed,
        workload: json!({
            "pools": p.pools, "accounts": p.accounts, "days": p.days, "subscription_every": p.subscription_every,
            "yearly_every": p.yearly_every, "auto_renew": p.auto_renew, "scale_every": p.scale_every, "jobs_per_day": p.jobs_per_day,
            "notebooks_per_account": p.notebooks_per_account, "package_every_days": p.package_every_days,
            "top_up_every_days": p.top_up_every_days, "start": p.start, "expected_events": p.expected_events(), "events": events,
        }),
        machine: machine(),
        figures,
        notes,
    })
}

/// The `serve` figure's input: accounts opened, then top-ups over them, one JSON line each.
fn serve_input() -> String {
    let at = "2023-01-01T00:00:00+08:00";
    let mut lines = String::new();
    for a in 0..SERVE_ACCOUNTS {
        lines += &format!(
            "{}\n",
            json!({"id": format!("serve-open-{a}"), "at": at, "type": "open_account", "account": format!("serve-{a}"), "balance": "0.00"})
        );
    }
    for k in 0..SERVE_COMMANDS {
        let account = format!("serve-{}", k % SERVE_ACCOUNTS);
        lines += &format!("{}\n", json!({"id": format!("serve-{k}"), "at": at, "type": "top_up", "account": account, "amount": "1.00"}));
    }
    lines
}

/// A time-travel or explain figure: a point query, ≤ 50 ms (the issue's target, set for a
/// 10M-event store) and ≤ 400 MB.
/// What a diff's JSON report counts.
#[derive(serde::Deserialize)]
struct DiffCounts {
    added: Vec<serde::de::IgnoredAny>,
    removed: Vec<serde::de::IgnoredAny>,
    changed: Vec<serde::de::IgnoredAny>,
    unchanged: u64,
}

/// The counts of a diff's JSON report, read without holding its lines: this process's own pages
/// are a floor under the peak memory of every child it starts after (see `measure`).
fn diff_counts(path: &Path) -> Result<DiffCounts, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_reader(std::io::BufReader::new(file)).map_err(|e| format!("{}: {e}", path.display()))
}

/// `audit` of the whole log against a CHARGED.json that plants a discrepancy in each of its
/// lines (two pools and the total charged at 0.00): the audit must find exactly those, and the
/// log's own lines sound (no integrity finding); it exits 1, as bills that differ make it.
fn audit_figure(opts: &Options, paths: &Paths, baseline: &str, base_numbers: &Value) -> Result<Figure, String> {
    let charged = opts.out.join("charged.json");
    let pools = [workload::pool_id(0), workload::pool_id(1)];
    let text = json!({"bills": pools.iter().map(|p| json!({"resource": p, "payable": "0.00"})).collect::<Vec<_>>(), "total": "0.00"});
    std::fs::write(&charged, text.to_string()).map_err(|e| e.to_string())?;
    let out = opts.out.join("audit.json");
    let mut cmd = Command::new(&opts.poolbill);
    cmd.arg("audit").arg(&paths.log).arg("--charged").arg(&charged).args(["--format", "json"]);
    let shown = format!("{cmd:?}");
    let err = opts.out.join("audit.stderr");
    let r = measure::run(&mut cmd, b"", Output::File(&out), &err).map_err(|e| format!("{shown}: {e}"))?;
    if r.code != Some(1) {
        let tail = std::fs::read_to_string(&err).unwrap_or_default();
        return Err(format!("{shown}: expected exit 1 (the planted discrepancies), got {:?}: {}", r.code, tail.trim()));
    }
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&out).map_err(|e| e.to_string())?).map_err(|e| format!("audit: {e}"))?;
    let found = report["discrepancies"].as_array().map_or(0, Vec::len);
    let integrity = report["integrity"].as_array().map_or(0, Vec::len);
    if found != pools.len() + 1 || integrity != 0 {
        return Err(format!(
            "audit: expected {} planted discrepancies and a sound log, got {found} and {integrity} integrity findings",
            pools.len() + 1
        ));
    }
    let total = report["discrepancies"].as_array().and_then(|d| d.last()).map(|d| d["computed"].clone()).unwrap_or(Value::Null);
    Ok(Figure {
        key: "audit".into(),
        what: "audit the whole log: re-run every command, match its lines with the log's, 3 planted discrepancies found".into(),
        command: format!("poolbill audit {} --charged charged.json --format json (exit 1)", rel(&paths.log)),
        value: format!("{} (total recomputed {})", seconds(secs(&r)), total.as_str().unwrap_or("?")),
        peak_rss: Some(r.peak_rss),
        baseline: baseline.to_string(),
        checks: vec![Check::at_most("memory", r.peak_rss as f64, MEMORY_LIMIT, "B")],
        numbers: numbers(
            &r,
            json!({"discrepancies": found, "total": total, "baseline_seconds": base_numbers["baseline_seconds"], "baseline_peak_rss": base_numbers["baseline_peak_rss"]}),
        ),
    })
}

fn point_query(key: &str, what: &str, command: String, r: &Run, extra: Value, facts: &Facts) -> Figure {
    Figure {
        key: key.into(),
        what: what.into(),
        command,
        value: seconds(secs(r)),
        peak_rss: Some(r.peak_rss),
        baseline: facts.rust_floor.map(|f| format!("Rust parse of the whole log {}", seconds(f))).unwrap_or_default(),
        checks: vec![Check::at_most("time", secs(r), POINT_QUERY_LIMIT, "s"), Check::at_most("memory", r.peak_rss as f64, MEMORY_LIMIT, "B")],
        numbers: numbers(r, extra),
    }
}

/// sled keeps its configuration in `conf`: a store directory has one.
fn poolbill_store_marker() -> &'static str {
    "conf"
}

/// How many events a store holds, by replaying it in a child (used when `run` was not measured now).
fn store_events(opts: &Options, paths: &Paths) -> Result<u64, String> {
    let doc = opts.out.join("count.json");
    let mut cmd = Command::new(&opts.bench);
    cmd.arg("replay-store").arg(&paths.store);
    child(&mut cmd, b"", Output::File(&doc), &opts.out, "count")?;
    let n = document_events(&doc)?;
    let _ = std::fs::remove_file(&doc);
    Ok(n)
}

fn log_size_note(log: &Path, events: u64) -> String {
    match std::fs::metadata(log) {
        Ok(m) => format!("exported JSON-lines log: {:.0} B/event", m.len() as f64 / events as f64),
        Err(_) => String::new(),
    }
}

/// The same document from another path as from `run`: byte for byte.
fn compare_documents(facts: &Facts, doc: &Path, what: &str, notes: &mut Vec<String>, keep: bool) {
    if let Some(run) = &facts.run_document {
        match same_bytes(run, doc) {
            Ok(true) => notes.push(format!("{what}: the same document as `run`, byte for byte")),
            Ok(false) => notes.push(format!("{what}: **a different document from `run`'s**")),
            Err(e) => notes.push(format!("{what}: not compared with `run`'s document ({e})")),
        }
    }
    if !keep {
        let _ = std::fs::remove_file(doc);
    }
}

/// Two files hold the same bytes; read in chunks, so that the bench stays small (a child's
/// `ru_maxrss` starts from the pages of the parent it was spawned from).
fn same_bytes(a: &Path, b: &Path) -> std::io::Result<bool> {
    use std::io::Read;
    if std::fs::metadata(a)?.len() != std::fs::metadata(b)?.len() {
        return Ok(false);
    }
    let (mut a, mut b) = (std::fs::File::open(a)?, std::fs::File::open(b)?);
    let (mut x, mut y) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    loop {
        let n = a.read(&mut x)?;
        if n == 0 {
            return Ok(true);
        }
        b.read_exact(&mut y[..n])?;
        if x[..n] != y[..n] {
            return Ok(false);
        }
    }
}

fn child(cmd: &mut Command, stdin: &[u8], out: Output<'_>, dir: &Path, name: &str) -> Result<Run, String> {
    let err = dir.join(format!("{name}.stderr"));
    let shown = format!("{cmd:?}");
    let r = measure::run(cmd, stdin, out, &err).map_err(|e| format!("{shown}: {e}"))?;
    if !r.ok() {
        let tail = std::fs::read_to_string(&err).unwrap_or_default();
        return Err(format!("{shown} failed ({:?}): {}", r.code, tail.trim()));
    }
    Ok(r)
}

fn secs(r: &Run) -> f64 {
    r.wall.as_secs_f64()
}

fn numbers(r: &Run, extra: Value) -> Value {
    let mut v = json!({
        "seconds": secs(r), "peak_rss": r.peak_rss, "user_seconds": r.user.as_secs_f64(), "system_seconds": r.system.as_secs_f64(),
    });
    if let (Some(obj), Value::Object(more)) = (v.as_object_mut(), extra) {
        for (k, x) in more {
            obj.entry(k).or_insert(x);
        }
    }
    v
}

/// The `events` field of a document written by `--format json` (pretty-printed: a top-level
/// field is indented by two spaces), read line by line without loading the document.
pub fn document_events(path: &Path) -> Result<u64, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    for line in std::io::BufReader::new(file).lines() {
        let line = line.map_err(|e| e.to_string())?;
        if let Some(rest) = line.strip_prefix("  \"events\": ") {
            return rest.trim_end_matches(',').parse().map_err(|e| format!("{}: events {rest:?}: {e}", path.display()));
        }
    }
    Err(format!("{}: no top-level \"events\" field", path.display()))
}

fn rel(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| path.display().to_string())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" ")).unwrap_or_else(|_| "?".into())
}

fn machine() -> Value {
    let rustc = Command::new("rustc").arg("--version").output().ok().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let memory =
        std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| m.lines().next().map(|l| l.split_whitespace().nth(1).unwrap_or("").to_string()));
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| c.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1)).map(|s| s.trim().to_string()));
    json!({
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu": cpu,
        "memory_kb": memory,
        "rustc": rustc,
        "commit": commit,
        "os": std::env::consts::OS,
    })
}
