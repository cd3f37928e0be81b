//! `poolbill run` and `poolbill serve`: the engine on a sled or PostgreSQL store.

use crate::args::{instant, store_at, RunArgs, ServeArgs, TableFormat, POSTGRES_ENV};
use crate::failure::{input, one_line, runtime, Failure};
use crate::{progress, table};
use poolbill_domain::{Command, Instant};
use poolbill_engine::{Engine, EngineError, Executed, Submitted};
use poolbill_replay::document::write_document;
use poolbill_replay::Upto;
use std::io::BufRead;
use std::path::Path;

pub async fn run(args: RunArgs) -> Result<(), Failure> {
    let path = args.scenario.display();
    let text = std::fs::read_to_string(&args.scenario).map_err(input(format!("cannot read {path}")))?;
    // The whole file is checked before anything is opened or written.
    let scenario = poolbill_scenario::parse(&text).map_err(input(format!("{path} is not a valid scenario")))?;
    // The scenario keeps its own copy of the text.
    drop(text);
    let engine = crate::stores::open_engine(store_at(args.store.as_ref(), args.postgres.as_ref()).as_ref()).await?;
    tracing::info!(commands = scenario.len(), until = %scenario.until.to_rfc3339(), "scenario checked");
    // Each command's result is in the log (and its document): none is kept here.
    poolbill_scenario::run_with(&engine, &scenario, |_, _| {}).await.map_err(runtime(format!("running {path}")))?;
    // Its text is not needed for the document (a year's commands: 38 MB at 27 MB of text).
    drop(scenario);
    if let Some(out) = &args.export {
        export(&engine, out)?;
    }
    // The document is read from the log (time travel: the log as it stood then): the engine's
    // state is let go first, as the fold builds its own.
    let store = engine.into_store();
    let upto = args.at.map_or(Upto::All, Upto::Instant);
    // Streamed: memory follows what is live, not the length of the history. The table is made
    // from the JSON document on a temporary file: its columns are as wide as their widest cell.
    tokio::task::block_in_place(|| {
        let mut stdout = std::io::stdout().lock();
        let written = match args.format {
            TableFormat::Json => write_document(store.read_all(1), upto, &mut stdout, |_| {}).map_err(runtime("writing the document"))?,
            TableFormat::Table => {
                let mut json = tempfile::tempfile().map_err(runtime("creating a temporary file for the table"))?;
                let written = write_document(store.read_all(1), upto, &mut json, |_| {}).map_err(runtime("writing the document"))?;
                table::write(json, &mut stdout).map_err(runtime("writing the table"))?;
                written
            }
        };
        tracing::info!(events = written.events, bills = written.bills, rejections = written.rejections, "done");
        Ok(())
    })
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

/// How many lines may be in flight at once (read and handed to the engine, not yet answered):
/// a producer faster than the disk waits, so memory stays bounded.
const IN_FLIGHT: usize = 1024;

/// One command per line: `{"id": "…", "at": "…", "type": "…", …fields}` (the scenario's command
/// fields, plus `open_account` and `set_price`), or `{"type": "advance", "at": "…"}`. Each line is
/// answered once what it did is on disk, in input order (blank lines are skipped).
///
/// A pipeline: lines are read and handed to the engine, in input order, while earlier ones are
/// still in flight, so the single writer decides them in the order given and those in flight
/// together share a group commit (one flush). At most [`IN_FLIGHT`] lines wait for their answer;
/// when stdin closes, everything in flight is answered, then serve ends.
pub async fn serve(args: ServeArgs) -> Result<(), Failure> {
    // The tokens are checked before the store is opened: a bad file changes nothing.
    let tokens = match &args.tokens {
        Some(path) => {
            Some(poolbill_http::auth::Tokens::load(path).map_err(input(format!("--tokens {} is not a valid tokens file", path.display())))?)
        }
        None => None,
    };
    if let (Some(map), Some(owner)) = (&args.shards, &args.owner) {
        let how = if args.take_over { poolbill_shards::Take::Over } else { poolbill_shards::Take::IfFree };
        return serve_sharded(map, &args.owns, owner, how).await;
    }
    let at = store_at(args.store.as_ref(), args.postgres.as_ref())
        .ok_or_else(|| Failure::Input(format!("serve needs --store DIR or --postgres URL (or {POSTGRES_ENV})").into()))?;
    let engine = crate::stores::open_engine(Some(&at)).await?;
    if let (Some(address), Some(tokens)) = (args.http, tokens) {
        return serve_http(engine, address, tokens).await;
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Read>(64);
    // Standard input is read on a thread of its own: it blocks.
    std::thread::spawn(move || read_lines(std::io::stdin().lock(), tx));
    let (answers, in_flight) = tokio::sync::mpsc::channel::<Pending>(IN_FLIGHT);
    let printer = tokio::spawn(print_answers(in_flight));
    let mut number = 0u64;
    let mut failed = None;
    loop {
        // A printer that stopped (stdout failed) ends serve without waiting for more input.
        let read = tokio::select! {
            read = rx.recv() => read,
            _ = answers.closed() => None,
        };
        let pending = match read {
            None => break,
            Some(Read::Failed(e)) => {
                failed = Some(e);
                break;
            }
            Some(Read::Line(line)) if line.trim().is_empty() => {
                number += 1;
                continue;
            }
            Some(Read::Line(line)) => {
                number += 1;
                submit_line(&engine, &line, number).await
            }
            Some(Read::NotUtf8(e)) => {
                number += 1;
                Pending::Now(serde_json::json!({"line": number, "error": format!("line {number}: not valid UTF-8: {e}")}))
            }
        };
        if answers.send(pending).await.is_err() {
            break; // the printer stopped: its error is below
        }
    }
    // Everything in flight is answered before serve ends, also after a read error.
    drop(answers);
    printer.await.map_err(runtime("writing the answers"))??;
    match failed {
        Some(e) => Err(runtime(format!("reading line {} of standard input", number + 1))(e)),
        None => Ok(()),
    }
}

/// What the reading thread got: a line (without its line ending), a line that is not UTF-8
/// (answered with an error in its place), or a read error (serve stops reading).
enum Read {
    Line(String),
    NotUtf8(std::str::Utf8Error),
    Failed(std::io::Error),
}

fn read_lines(mut input: impl BufRead, tx: tokio::sync::mpsc::Sender<Read>) {
    loop {
        let mut bytes = Vec::new();
        let read = match input.read_until(b'\n', &mut bytes) {
            Ok(0) => return,
            Ok(_) => {
                let end = bytes.strip_suffix(b"\n").map_or(bytes.len(), |b| b.strip_suffix(b"\r").unwrap_or(b).len());
                bytes.truncate(end);
                String::from_utf8(bytes).map_or_else(|e| Read::NotUtf8(e.utf8_error()), Read::Line)
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => Read::Failed(e),
        };
        let last = matches!(read, Read::Failed(_));
        if tx.blocking_send(read).is_err() || last {
            return;
        }
    }
}

/// A line's answer: known at once (bad input, or the engine refused to take it), or to come
/// from the engine once what the line did is on disk.
enum Pending {
    Now(serde_json::Value),
    Command { number: u64, id: String, answer: Submitted<Executed> },
    Advance { number: u64, at: Instant, answer: Submitted<u64> },
}

impl Pending {
    fn is_answered(&self) -> bool {
        match self {
            Pending::Now(_) => true,
            Pending::Command { answer, .. } => answer.is_answered(),
            Pending::Advance { answer, .. } => answer.is_answered(),
        }
    }

    async fn answer(self) -> serde_json::Value {
        use serde_json::json;
        match self {
            Pending::Now(answer) => answer,
            Pending::Command { number, id, answer } => match answer.answer().await {
                Ok(done) => {
                    // The HTTP API answers with the same fields, less the line.
                    let mut answer = poolbill_http::command_answer(&id, &done);
                    answer.insert("line".into(), json!(number));
                    serde_json::Value::Object(answer)
                }
                Err(e) => failed(json!({"line": number, "id": id}), &e),
            },
            Pending::Advance { number, at, answer } => match answer.answer().await {
                Ok(events) => json!({"line": number, "advanced_to": at.to_rfc3339(), "events": events}),
                Err(e) => failed(json!({"line": number}), &e),
            },
        }
    }
}

/// A line that failed: its error, and `"outcome": "unknown"` when the engine cannot tell whether
/// it was written (a retry with the same id tells); every other error is a promise that nothing
/// of the line was written.
fn failed(mut answer: serde_json::Value, error: &EngineError) -> serde_json::Value {
    answer["error"] = serde_json::json!(one_line(error));
    if matches!(error, EngineError::OutcomeUnknown(_)) {
        answer["outcome"] = serde_json::json!("unknown");
    }
    answer
}

/// Write each answer, in input order, as it comes; stdout is flushed whenever the next answer
/// is not there yet, so that nothing answered waits behind something still in flight.
async fn print_answers(mut in_flight: tokio::sync::mpsc::Receiver<Pending>) -> Result<(), Failure> {
    use std::io::Write;
    use tokio::sync::mpsc::error::TryRecvError;
    let mut out = std::io::BufWriter::new(std::io::stdout());
    let written = |e: std::io::Error| runtime("writing the output")(e);
    loop {
        let pending = match in_flight.try_recv() {
            Ok(pending) => pending,
            Err(TryRecvError::Empty) => {
                out.flush().map_err(written)?;
                match in_flight.recv().await {
                    Some(pending) => pending,
                    None => break,
                }
            }
            Err(TryRecvError::Disconnected) => break,
        };
        if !pending.is_answered() {
            out.flush().map_err(written)?;
        }
        let answer = pending.answer().await;
        writeln!(out, "{answer}").map_err(written)?;
    }
    out.flush().map_err(written)
}

/// What a line of `serve` asks for.
enum Line {
    Advance(Instant),
    Command { id: String, at: Instant, command: Box<Command> },
}

/// Parse one line of `serve`; bad input is its answer (naming the line and field).
fn parse_line(line: &str, number: u64) -> Result<Line, serde_json::Value> {
    use serde_json::json;
    let value: serde_json::Value = serde_json::from_str(line).map_err(|e| json!({"line": number, "error": format!("not valid JSON: {e}")}))?;
    let path = format!("line {number}");
    if value.get("type").and_then(|t| t.as_str()) == Some("advance") {
        return match value.get("at").and_then(|v| v.as_str()).map(instant) {
            Some(Ok(at)) => Ok(Line::Advance(at)),
            _ => Err(json!({"line": number, "error": format!("{path}.at: an RFC 3339 instant is needed")})),
        };
    }
    let id = match value.get("id").and_then(|v| v.as_str()) {
        Some(id) if !id.is_empty() => id.to_string(),
        _ => return Err(json!({"line": number, "error": format!("{path}.id: missing command id")})),
    };
    let mut fields = value;
    if let Some(obj) = fields.as_object_mut() {
        obj.remove("id");
    }
    match poolbill_scenario::command(&fields, &path) {
        Ok((at, command)) => Ok(Line::Command { id, at, command: Box::new(command) }),
        Err(e) => Err(json!({"line": number, "id": id, "error": e.to_string()})),
    }
}

/// Read one line and hand it to the engine (in input order); bad input is answered at once and
/// changes nothing.
async fn submit_line(engine: &Engine, line: &str, number: u64) -> Pending {
    use serde_json::json;
    match parse_line(line, number) {
        Err(answer) => Pending::Now(answer),
        Ok(Line::Advance(at)) => match engine.submit_advance(at).await {
            Ok(answer) => Pending::Advance { number, at, answer },
            Err(e) => Pending::Now(json!({"line": number, "error": one_line(&e)})),
        },
        Ok(Line::Command { id, at, command }) => match engine.submit(id.clone(), at, *command, None).await {
            Ok(answer) => Pending::Command { number, id, answer },
            Err(e) => Pending::Now(json!({"line": number, "id": id, "error": one_line(&e)})),
        },
    }
}

/// `serve --shards MAP.json --owns IDS --owner NAME`: one engine of a sharded deployment, on
/// stdin. Each line is routed (its account's shard; a pool's or job's; every owned shard for a
/// platform-wide command and `advance`) and answered before the next is read: no pipeline, so
/// that lines for different shards keep their input order simply.
pub async fn serve_sharded(map: &std::path::Path, owns: &[String], owner: &str, how: poolbill_shards::Take) -> Result<(), Failure> {
    use std::io::Write;
    let map = poolbill_shards::ShardMap::read(map).map_err(|e| Failure::Input(e.into()))?;
    let engine = poolbill_shards::ShardedEngine::start_with(map, owns, owner, how).await.map_err(|e| match e {
        e @ (poolbill_shards::ShardError::UnknownShard(_) | poolbill_shards::ShardError::OwnsNothing) => Failure::Input(e.into()),
        e => runtime(format!("starting engine {owner}"))(e),
    })?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Read>(64);
    std::thread::spawn(move || read_lines(std::io::stdin().lock(), tx));
    let mut out = std::io::BufWriter::new(std::io::stdout());
    let mut number = 0u64;
    while let Some(read) = rx.recv().await {
        number += 1;
        let answer = match read {
            Read::Failed(e) => return Err(runtime(format!("reading line {number} of standard input"))(e)),
            Read::Line(line) if line.trim().is_empty() => continue,
            Read::NotUtf8(e) => serde_json::json!({"line": number, "error": format!("line {number}: not valid UTF-8: {e}")}),
            Read::Line(line) => match parse_line(&line, number) {
                Err(answer) => answer,
                Ok(Line::Advance(at)) => sharded_advance(&engine, at, number).await,
                Ok(Line::Command { id, at, command }) => sharded_command(&engine, id, at, *command, number).await,
            },
        };
        writeln!(out, "{answer}").and_then(|()| out.flush()).map_err(runtime("writing the output"))?;
    }
    Ok(())
}

/// A sharded engine's answer to an error: `"outcome": "unknown"` as [`failed`] says.
fn shard_failed(answer: serde_json::Value, error: &poolbill_shards::ShardError) -> serde_json::Value {
    match error {
        poolbill_shards::ShardError::Engine { shard, source } => {
            let mut answer = failed(answer, source);
            answer["shard"] = serde_json::json!(shard);
            answer
        }
        other => {
            let mut answer = answer;
            answer["error"] = serde_json::json!(one_line(other));
            answer
        }
    }
}

async fn sharded_advance(engine: &poolbill_shards::ShardedEngine, at: Instant, number: u64) -> serde_json::Value {
    use serde_json::json;
    match engine.advance_to(at).await {
        Ok(per_shard) => {
            let events: u64 = per_shard.iter().map(|(_, n)| n).sum();
            let shards: serde_json::Map<String, serde_json::Value> = per_shard.into_iter().map(|(s, n)| (s, json!(n))).collect();
            json!({"line": number, "advanced_to": at.to_rfc3339(), "events": events, "shards": shards})
        }
        Err(e) => shard_failed(json!({"line": number}), &e),
    }
}

/// One shard's answer: the unsharded answer's fields and the shard; several shards (a
/// platform-wide command): a list of those under `shards`.
async fn sharded_command(engine: &poolbill_shards::ShardedEngine, id: String, at: Instant, command: Command, number: u64) -> serde_json::Value {
    use serde_json::json;
    match engine.execute(&id, at, command, None).await {
        Ok(results) => {
            let mut answers: Vec<serde_json::Value> = results
                .iter()
                .map(|(shard, done)| {
                    let mut answer = poolbill_http::command_answer(&id, done);
                    answer.insert("shard".into(), json!(shard));
                    serde_json::Value::Object(answer)
                })
                .collect();
            match answers.len() {
                1 => {
                    let mut answer = answers.remove(0);
                    answer["line"] = json!(number);
                    answer
                }
                _ => json!({"line": number, "id": id, "shards": answers}),
            }
        }
        Err(e) => shard_failed(json!({"line": number, "id": id}), &e),
    }
}

/// The HTTP command API on `address` until ctrl-c or SIGTERM; then the requests in flight are
/// finished and the engine drained before serve ends.
async fn serve_http(engine: Engine, address: std::net::SocketAddr, tokens: poolbill_http::auth::Tokens) -> Result<(), Failure> {
    let listener = tokio::net::TcpListener::bind(address).await.map_err(runtime(format!("listening on {address}")))?;
    let bound = listener.local_addr().map_err(runtime("reading the bound address"))?;
    // On stderr whatever the verbosity: scripts and tests read the port from it.
    eprintln!("poolbill: listening on http://{bound}");
    poolbill_http::serve(listener, poolbill_http::router(engine.clone(), tokens), poolbill_http::shutdown_signal())
        .await
        .map_err(runtime("serving HTTP"))?;
    // A command whose client went away is still queued: a read is answered after it.
    engine.read(|_| ()).await.map_err(runtime("draining the engine"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_an_unknown_outcome_is_answered_as_unknown() {
        let unknown = failed(json!({"line": 3, "id": "x"}), &EngineError::OutcomeUnknown("the flush failed".into()));
        assert_eq!(unknown["outcome"], "unknown");
        assert_eq!((unknown["line"].clone(), unknown["id"].clone()), (json!(3), json!("x")));
        assert!(unknown["error"].as_str().unwrap().contains("the flush failed"), "{unknown}");
        // Every other error keeps the answer's shape: a promise that nothing was written.
        let not_written = failed(json!({"line": 4, "id": "y"}), &EngineError::Aborted("the store is failing".into()));
        assert_eq!(not_written, json!({"line": 4, "id": "y", "error": "not written, retry: the store is failing"}));
    }
}
