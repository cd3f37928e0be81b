//! `poolbill`: run a scenario, or serve commands from standard input, on a sled event log.
//!
//! Exit status: 0 done; 1 the store or engine failed; 2 the input or arguments are invalid
//! (then nothing was written).

mod table;

use chrono::DateTime;
use poolbill_domain::time::to_beijing;
use poolbill_domain::Instant;
use poolbill_engine::{Engine, Outcome};
use poolbill_replay::Upto;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage:
  poolbill run SCENARIO.json [--at INSTANT] [--format json|table] [--store DIR]
  poolbill serve --store DIR      (JSON-line commands on stdin, one acknowledgement per line)";

enum Failure {
    /// Invalid input or arguments: nothing was written.
    Input(String),
    /// The store or engine failed.
    Runtime(String),
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("poolbill: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = match args.first().map(String::as_str) {
        Some("run") => runtime.block_on(run(&args[1..])),
        Some("serve") => runtime.block_on(serve(&args[1..])),
        Some("help" | "--help" | "-h") => {
            println!("{USAGE}");
            Ok(())
        }
        _ => Err(Failure::Input(USAGE.to_string())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Input(message)) => {
            eprintln!("poolbill: {message}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(message)) => {
            eprintln!("poolbill: {message}");
            ExitCode::from(1)
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Format {
    Json,
    Table,
}

struct RunArgs {
    scenario: PathBuf,
    at: Option<Instant>,
    format: Format,
    store: Option<PathBuf>,
}

fn parse_run_args(args: &[String]) -> Result<RunArgs, Failure> {
    let mut scenario = None;
    let mut at = None;
    let mut format = Format::Table;
    let mut store = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |flag: &str| it.next().cloned().ok_or_else(|| Failure::Input(format!("{flag} needs a value\n{USAGE}")));
        match arg.as_str() {
            "--at" => at = Some(parse_instant(&value("--at")?)?),
            "--format" => {
                format = match value("--format")?.as_str() {
                    "json" => Format::Json,
                    "table" => Format::Table,
                    other => return Err(Failure::Input(format!("--format: {other:?} is not json or table"))),
                }
            }
            "--store" => store = Some(PathBuf::from(value("--store")?)),
            flag if flag.starts_with("--") => return Err(Failure::Input(format!("unknown option {flag}\n{USAGE}"))),
            path if scenario.is_none() => scenario = Some(PathBuf::from(path)),
            extra => return Err(Failure::Input(format!("unexpected argument {extra:?}\n{USAGE}"))),
        }
    }
    let scenario = scenario.ok_or_else(|| Failure::Input(format!("run needs a scenario file\n{USAGE}")))?;
    Ok(RunArgs { scenario, at, format, store })
}

fn parse_instant(text: &str) -> Result<Instant, Failure> {
    DateTime::parse_from_rfc3339(text)
        .map(to_beijing)
        .map_err(|e| Failure::Input(format!("--at: {text:?} is not an RFC 3339 instant with an offset ({e})")))
}

async fn run(args: &[String]) -> Result<(), Failure> {
    let args = parse_run_args(args)?;
    let text = std::fs::read_to_string(&args.scenario)
        .map_err(|e| Failure::Input(format!("cannot read {}: {e}", args.scenario.display())))?;
    // The whole file is checked before anything is opened or written.
    let scenario = poolbill_scenario::parse(&text).map_err(|e| Failure::Input(format!("{}: {e}", args.scenario.display())))?;
    let engine = match &args.store {
        Some(dir) => Engine::open(dir).await,
        None => Engine::temporary().await,
    }
    .map_err(|e| Failure::Runtime(e.to_string()))?;
    poolbill_scenario::run(&engine, &scenario).await.map_err(|e| Failure::Runtime(e.to_string()))?;
    let document = match args.at {
        // Time travel reads the same log as it stood then.
        Some(at) => engine.as_of(Upto::Instant(at)).await.map(|p| p.document()),
        None => engine.document().await,
    }
    .map_err(|e| Failure::Runtime(e.to_string()))?;
    let out = match args.format {
        Format::Json => serde_json::to_string_pretty(&document).map_err(|e| Failure::Runtime(e.to_string()))? + "\n",
        Format::Table => table::render(&document),
    };
    print_out(&out)
}

fn print_out(text: &str) -> Result<(), Failure> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes()).and_then(|_| stdout.flush()).map_err(|e| Failure::Runtime(format!("writing output: {e}")))
}

/// One command per line: `{"id": "…", "at": "…", "type": "…", …fields}` (the scenario's command
/// fields, plus `open_account` and `set_price`), or `{"type": "advance", "at": "…"}`. Each line is
/// answered once what it did is on disk.
async fn serve(args: &[String]) -> Result<(), Failure> {
    let dir = match args {
        [flag, dir] if flag == "--store" => PathBuf::from(dir),
        _ => return Err(Failure::Input(USAGE.to_string())),
    };
    let engine = Engine::open(&dir).await.map_err(|e| Failure::Runtime(e.to_string()))?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(64);
    // Standard input is read on a thread of its own: it blocks.
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { return };
            if tx.blocking_send(line).is_err() {
                return;
            }
        }
    });
    let mut number = 0u64;
    while let Some(line) = rx.recv().await {
        number += 1;
        if line.trim().is_empty() {
            continue;
        }
        let answer = serve_line(&engine, &line, number).await;
        print_out(&(answer.to_string() + "\n"))?;
    }
    Ok(())
}

async fn serve_line(engine: &Engine, line: &str, number: u64) -> serde_json::Value {
    use serde_json::json;
    let value: serde_json::Value = match serde_json::from_str(line) {
        Ok(v) => v,
        Err(e) => return json!({"line": number, "error": format!("not valid JSON: {e}")}),
    };
    let path = format!("line {number}");
    if value.get("type").and_then(|t| t.as_str()) == Some("advance") {
        let at = match value.get("at").and_then(|v| v.as_str()).map(parse_instant) {
            Some(Ok(at)) => at,
            _ => return json!({"line": number, "error": format!("{path}.at: an RFC 3339 instant is needed")}),
        };
        return match engine.advance_to(at).await {
            Ok(events) => json!({"line": number, "advanced_to": at.to_rfc3339(), "events": events}),
            Err(e) => json!({"line": number, "error": e.to_string()}),
        };
    }
    let id = match value.get("id").and_then(|v| v.as_str()) {
        Some(id) if !id.is_empty() => id.to_string(),
        _ => return json!({"line": number, "error": format!("{path}.id: missing command id")}),
    };
    let mut fields = value.clone();
    if let Some(obj) = fields.as_object_mut() {
        obj.remove("id");
    }
    let (at, command) = match poolbill_scenario::command(&fields, &path) {
        Ok(parsed) => parsed,
        Err(e) => return json!({"line": number, "id": id, "error": e.to_string()}),
    };
    match engine.execute(id.clone(), at, command, None).await {
        Ok(done) => {
            let mut answer = json!({
                "line": number, "id": id, "duplicate": done.duplicate,
                "first_position": done.first_position, "last_position": done.last_position,
            });
            match done.outcome {
                Outcome::Accepted => answer["status"] = json!("accepted"),
                Outcome::Rejected { rule, reason } => {
                    answer["status"] = json!("rejected");
                    answer["rule"] = json!(rule.to_string());
                    answer["reason"] = json!(reason);
                }
            }
            answer
        }
        Err(e) => json!({"line": number, "id": id, "error": e.to_string()}),
    }
}
