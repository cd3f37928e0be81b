//! The in-process steps, each run by the bench as a child process of its own (so that its time
//! and peak memory are measured like the `poolbill` commands'): the JSON decode floor of a log,
//! replay straight from a store, and durable appends through the engine.

use chrono::DateTime;
use poolbill_domain::Command;
use poolbill_engine::{Engine, Outcome};
use poolbill_replay::Upto;
use poolbill_store::EventStore;
use poolbill_store_sled::SledStore;
use rust_decimal::Decimal;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::time::{Duration, Instant};

/// The floor: parse every line of a log into a `serde_json::Value` and do nothing with it.
/// Also counts envelopes and `charged` lines (the flow bills) on the way.
pub fn decode_floor(log: &Path) -> Result<Value, String> {
    let file = std::fs::File::open(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let started = Instant::now();
    let mut lines = 0u64;
    let mut charged = 0u64;
    let mut bytes = 0u64;
    for line in BufReader::with_capacity(1 << 20, file).lines() {
        let line = line.map_err(|e| e.to_string())?;
        bytes += line.len() as u64 + 1;
        let value: Value = serde_json::from_str(&line).map_err(|e| format!("line {}: {e}", lines + 1))?;
        lines += 1;
        if value.get("event_type").and_then(Value::as_str) == Some("charged") {
            charged += 1;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    // The end line is not an event.
    Ok(json!({"lines": lines, "events": lines.saturating_sub(1), "charged": charged, "bytes": bytes, "seconds": seconds}))
}

/// Replay a store whole (or as of `at`): open it, fold every event, build the document and
/// write it as JSON to `out`, as `poolbill replay --format json` does for a log.
pub fn replay_store(dir: &Path, at: Option<&str>, out: &mut impl Write) -> Result<Value, String> {
    let started = Instant::now();
    let upto = match at {
        None => Upto::All,
        Some(t) => Upto::Instant(DateTime::parse_from_rfc3339(t).map_err(|e| format!("--at {t}: {e}"))?),
    };
    let store = SledStore::open(dir).map_err(|e| e.to_string())?;
    // Streamed, as `poolbill run --format json` writes it.
    let written = poolbill_replay::document::write_document(store.read_all(1), upto, out, |_| {}).map_err(|e| e.to_string())?;
    out.flush().map_err(|e| e.to_string())?;
    Ok(json!({"events": written.events, "seconds": started.elapsed().as_secs_f64()}))
}

/// Explain from a store in one process, as a long-running service would: the store opened
/// once, then each resource asked about at an instant (the first question also brings the tag
/// index up to date). Returns the open time and each question's time.
pub fn explain_store(dir: &Path, at: &str, resources: &[String]) -> Result<Value, String> {
    let at = DateTime::parse_from_rfc3339(at).map_err(|e| format!("--at {at}: {e}"))?;
    let started = Instant::now();
    let store = SledStore::open(dir).map_err(|e| e.to_string())?;
    let open_s = started.elapsed().as_secs_f64();
    let mut times = Vec::with_capacity(resources.len());
    let mut lines = 0;
    for (k, resource) in resources.iter().enumerate() {
        // Each at its own instant, an hour apart: no question repeats another.
        let at = at + chrono::Duration::hours(k as i64);
        let asked = Instant::now();
        let explained = poolbill_replay::explain::explain_at_in(&store, resource, at).map_err(|e| format!("{resource} at {at}: {e}"))?;
        times.push(asked.elapsed().as_secs_f64());
        lines += explained.len();
    }
    let first = times.first().copied().unwrap_or(0.0);
    let mut rest = times[1.min(times.len())..].to_vec();
    rest.sort_by(f64::total_cmp);
    let median = rest.get(rest.len() / 2).copied().unwrap_or(first);
    let max = rest.last().copied().unwrap_or(first);
    Ok(json!({"open_s": open_s, "first_s": first, "median_s": median, "max_s": max, "questions": times.len(), "lines": lines}))
}

/// What a store holds, tree by tree, next to what its files take on disk.
pub fn store_stats(dir: &Path) -> Result<Value, String> {
    let store = SledStore::open(dir).map_err(|e| e.to_string())?;
    let events = store.last_position().map_err(|e| e.to_string())?.max(1);
    let trees: Vec<Value> = store
        .tree_sizes()
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|(name, entries, keys, values)| {
            json!({"tree": name, "entries": entries, "key_bytes": keys, "value_bytes": values, "bytes_per_event": (keys + values) as f64 / events as f64})
        })
        .collect();
    let held: u64 = trees.iter().map(|t| t["key_bytes"].as_u64().unwrap_or(0) + t["value_bytes"].as_u64().unwrap_or(0)).sum();
    drop(store);
    let on_disk = dir_bytes(dir);
    Ok(
        json!({"events": events, "trees": trees, "held_bytes": held, "on_disk_bytes": on_disk, "held_per_event": held as f64 / events as f64, "on_disk_per_event": on_disk as f64 / events as f64}),
    )
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

/// Where the appends figure keeps its log.
#[derive(Clone, Debug)]
pub enum AppendsTo {
    /// A fresh sled store in this directory.
    Dir(std::path::PathBuf),
    /// A PostgreSQL database (a URL); it may hold earlier runs' events.
    Postgres(String),
}

/// Durable appends through the engine on a fresh store at `dir` (or a PostgreSQL database):
/// `clients` tasks each run top-ups one after another (each answered once on disk) for
/// `budget`. Returns commands and events appended, and the seconds it took.
pub fn appends(to: &AppendsTo, clients: usize, budget: Duration) -> Result<Value, String> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().map_err(|e| e.to_string())?;
    runtime.block_on(appends_on(to, clients, budget))
}

/// An engine on the store `to` names (every figure that drives the engine opens it so).
pub async fn open_engine(to: &AppendsTo) -> Result<Engine, String> {
    match to {
        AppendsTo::Dir(dir) => Engine::open(dir).await.map_err(|e| e.to_string()),
        AppendsTo::Postgres(url) => {
            let url = url.clone();
            // Connecting blocks: off the async threads.
            let store = tokio::task::spawn_blocking(move || poolbill_store_postgres::PostgresStore::connect(&url))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            Engine::start(store).await.map_err(|e| e.to_string())
        }
    }
}

async fn appends_on(to: &AppendsTo, clients: usize, budget: Duration) -> Result<Value, String> {
    let engine = open_engine(to).await?;
    // A database may hold earlier runs: this run's account and command ids are its own.
    let run = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let account = format!("bench-{run}");
    let at = DateTime::parse_from_rfc3339("2024-01-01T00:00:00+08:00").expect("a valid instant");
    let open = Command::OpenAccount { account: account.clone(), balance: Decimal::ZERO, level: "standard".into(), discount: Decimal::ZERO };
    engine.execute(format!("bench:{run}:open"), at, open, None).await.map_err(|e| e.to_string())?;
    let before = engine.store().last_position().map_err(|e| e.to_string())?;
    let started = Instant::now();
    let deadline = started + budget;
    let mut tasks = Vec::with_capacity(clients);
    for client in 0..clients {
        let (engine, account) = (engine.clone(), account.clone());
        tasks.push(tokio::spawn(async move {
            let mut done = 0u64;
            while Instant::now() < deadline {
                let command = Command::TopUp { account: account.clone(), amount: Decimal::ONE };
                let executed = engine.execute(format!("bench:{run}:{client}:{done}"), at, command, None).await.map_err(|e| e.to_string())?;
                if executed.outcome != Outcome::Accepted || executed.duplicate {
                    return Err(format!("a top-up was not simply accepted: {executed:?}"));
                }
                done += 1;
            }
            Ok::<u64, String>(done)
        }));
    }
    let mut commands = 0;
    for task in tasks {
        commands += task.await.map_err(|e| e.to_string())??;
    }
    let seconds = started.elapsed().as_secs_f64();
    let events = engine.store().last_position().map_err(|e| e.to_string())? - before;
    Ok(json!({"clients": clients, "commands": commands, "events": events, "seconds": seconds}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_are_counted_from_the_log_and_a_store_replays() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("s");
        let result = appends(&AppendsTo::Dir(store.clone()), 4, Duration::from_millis(150)).unwrap();
        let commands = result["commands"].as_u64().unwrap();
        assert!(commands >= 4, "{result}");
        // Each top-up appends its command record and the top-up.
        assert_eq!(result["events"].as_u64().unwrap(), 2 * commands);
        let mut out = Vec::new();
        let replayed = replay_store(&store, None, &mut out).unwrap();
        assert_eq!(replayed["events"].as_u64().unwrap(), 2 * commands + 2);
        let document: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(document["accounts"][0]["balance"], json!(format!("{commands}.00")));
    }
}

#[cfg(test)]
mod postgres_tests {
    use super::*;
    use poolbill_store::EventStore;

    #[test]
    fn appends_on_postgres_are_counted_and_a_second_run_on_the_same_database_is_its_own() {
        let url = poolbill_store_postgres::cluster::fresh_database();
        let first = appends(&AppendsTo::Postgres(url.clone()), 4, Duration::from_millis(150)).unwrap();
        let second = appends(&AppendsTo::Postgres(url.clone()), 1, Duration::from_millis(100)).unwrap();
        let commands = first["commands"].as_u64().unwrap() + second["commands"].as_u64().unwrap();
        assert!(first["commands"].as_u64().unwrap() >= 4, "{first}");
        assert_eq!(first["events"].as_u64().unwrap(), 2 * first["commands"].as_u64().unwrap());
        let store = poolbill_store_postgres::PostgresStore::connect(&url).unwrap();
        // Each run opens its own account, and each command (opening or top-up) appends its event and a record.
        assert_eq!(store.last_position().unwrap(), 2 * commands + 4);
    }
}
