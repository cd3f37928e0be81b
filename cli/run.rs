//! `poolbill run` and `poolbill serve`: the engine on a sled store.

use crate::args::{instant, RunArgs, ServeArgs, TableFormat};
use crate::failure::{input, one_line, runtime, Failure};
use crate::{print_out, progress, table};
use poolbill_engine::{Engine, Outcome};
use poolbill_replay::document::write_document;
use poolbill_replay::Upto;
use std::io::BufRead;
use std::path::Path;

pub async fn run(args: RunArgs) -> Result<(), Failure> {
    let path = args.scenario.display();
    let text = std::fs::read_to_string(&args.scenario).map_err(input(format!("cannot read {path}")))?;
    // The whole file is checked before anything is opened or written.
    let scenario = poolbill_scenario::parse(&text).map_err(input(format!("{path} is not a valid scenario")))?;
    let engine = match &args.store {
        Some(dir) => Engine::open(dir).await.map_err(runtime(format!("opening the store at {}", dir.display())))?,
        None => Engine::temporary().await.map_err(runtime("opening a temporary store"))?,
    };
    tracing::info!(commands = scenario.commands.len(), until = %scenario.until.to_rfc3339(), "scenario checked");
    poolbill_scenario::run(&engine, &scenario).await.map_err(runtime(format!("running {path}")))?;
    if let Some(out) = &args.export {
        export(&engine, out)?;
    }
    // The document is read from the log (time travel: the log as it stood then).
    let upto = args.at.map_or(Upto::All, Upto::Instant);
    match args.format {
        // Streamed: memory follows what is live, not the length of the history.
        TableFormat::Json => tokio::task::block_in_place(|| {
            let mut stdout = std::io::stdout().lock();
            let written = write_document(engine.store().read_all(1), upto, &mut stdout, |_| {}).map_err(runtime("writing the document"))?;
            tracing::info!(events = written.events, bills = written.bills, rejections = written.rejections, "done");
            Ok(())
        }),
        TableFormat::Table => {
            let document = engine.as_of(upto).await.map_err(runtime("reading the document"))?.document();
            tracing::info!(events = document.events, bills = document.bills.len(), rejections = document.rejections.len(), "done");
            print_out(&table::render(&document))
        }
    }
}

/// Write the log as JSON lines, whole or not at all (a temporary file renamed into place).
fn export(engine: &Engine, target: &Path) -> Result<(), Failure> {
    let partial = target.with_extension("jsonl.partial");
    let context = format!("exporting to {}", target.display());
    let mut file = std::io::BufWriter::new(std::fs::File::create(&partial).map_err(runtime(&context))?);
    let total = engine.store().last_position().map_err(runtime(&context))?;
    let bar = progress::bar(total, "exporting");
    let exported = poolbill_replay::jsonl::export_with(engine.store(), &mut file, |position| bar.set_position(position));
    bar.finish_and_clear();
    exported.map_err(runtime(&context))?;
    std::io::Write::flush(&mut file).map_err(runtime(&context))?;
    drop(file);
    std::fs::rename(&partial, target).map_err(runtime(&context))
}

/// One command per line: `{"id": "…", "at": "…", "type": "…", …fields}` (the scenario's command
/// fields, plus `open_account` and `set_price`), or `{"type": "advance", "at": "…"}`. Each line is
/// answered once what it did is on disk.
pub async fn serve(args: ServeArgs) -> Result<(), Failure> {
    let engine = Engine::open(&args.store).await.map_err(runtime(format!("opening the store at {}", args.store.display())))?;
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
        let at = match value.get("at").and_then(|v| v.as_str()).map(instant) {
            Some(Ok(at)) => at,
            _ => return json!({"line": number, "error": format!("{path}.at: an RFC 3339 instant is needed")}),
        };
        return match engine.advance_to(at).await {
            Ok(events) => json!({"line": number, "advanced_to": at.to_rfc3339(), "events": events}),
            Err(e) => json!({"line": number, "error": one_line(&e)}),
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
        Err(e) => json!({"line": number, "id": id, "error": one_line(&e)}),
    }
}
