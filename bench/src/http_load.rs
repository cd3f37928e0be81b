//! The HTTP command API under load, on loopback: `clients` concurrent clients, each on one
//! keep-alive connection, send durable top-ups (`POST /v1/commands`) to the API served
//! in-process on a fresh store (sled, or a fresh PostgreSQL database), each waiting for its
//! answer before the next; bounded by a count and a time, it stops by itself. The baseline, in
//! the same run: the same commands through the engine API (`Engine::execute`) with the same
//! number of concurrent tasks, on a store of its own. Both report commands/s and latency
//! percentiles.

use crate::work::{open_engine, AppendsTo};
use poolbill_engine::Engine;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const TOKEN: &str = "bench-token-0123456789abcdef";
const AT: &str = "2024-01-01T00:00:00+08:00";

/// What one load run measured.
#[derive(Debug)]
pub struct Load {
    pub clients: usize,
    pub commands: u64,
    pub seconds: f64,
    pub latencies: Vec<Duration>,
}

impl Load {
    pub fn rate(&self) -> f64 {
        self.commands as f64 / self.seconds
    }

    /// The `p`-th percentile latency (0 < p ≤ 100), by nearest rank.
    pub fn percentile(&self, p: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
        sorted.get(rank.saturating_sub(1)).copied().unwrap_or_default()
    }

    pub fn to_json(&self) -> Value {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        json!({
            "clients": self.clients, "commands": self.commands, "seconds": self.seconds, "commands_per_s": self.rate(),
            "p50_ms": ms(self.percentile(50.0)), "p99_ms": ms(self.percentile(99.0)), "max_ms": ms(self.percentile(100.0)),
        })
    }
}

/// Both figures for each client count: HTTP and the in-process baseline, on fresh stores under
/// `dir`. Each run stops at `budget` or after `max_commands` commands, whichever comes first.
/// Where each run's fresh store is made.
#[derive(Clone, Debug)]
pub enum Stores {
    /// A sled store per run, in this directory.
    Sled(PathBuf),
    /// A new database per run on the PostgreSQL server of this URL (its user may create
    /// databases), named `poolbill_bench_<run>_<pid>`.
    Postgres(String),
}

impl Stores {
    fn fresh(&self, run: &str) -> Result<AppendsTo, String> {
        match self {
            Stores::Sled(dir) => Ok(AppendsTo::Dir(dir.join(run))),
            Stores::Postgres(url) => {
                let name = format!("poolbill_bench_{}_{}", run.replace('-', "_"), std::process::id());
                poolbill_store_postgres::cluster::execute(url, &format!("CREATE DATABASE {name}"))?;
                Ok(AppendsTo::Postgres(poolbill_store_postgres::cluster::with_database(url, &name)?))
            }
        }
    }
}

pub fn http_load(dir: &Path, client_counts: &[usize], budget: Duration, max_commands: u64) -> Result<Value, String> {
    http_load_on(&Stores::Sled(dir.to_path_buf()), client_counts, budget, max_commands)
}

pub fn http_load_on(stores: &Stores, client_counts: &[usize], budget: Duration, max_commands: u64) -> Result<Value, String> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().map_err(|e| e.to_string())?;
    let mut rows = Vec::new();
    for &clients in client_counts {
        let engine = runtime.block_on(engine_load(&stores.fresh(&format!("engine-{clients}"))?, clients, budget, max_commands))?;
        let http = runtime.block_on(http_run(&stores.fresh(&format!("http-{clients}"))?, clients, budget, max_commands))?;
        rows.push(json!({"clients": clients, "http": http.to_json(), "engine": engine.to_json()}));
    }
    let store = match stores {
        Stores::Sled(_) => "sled",
        Stores::Postgres(_) => "postgres",
    };
    Ok(json!({ "store": store, "runs": rows }))
}

async fn open(store: &AppendsTo) -> Result<Engine, String> {
    let engine = open_engine(store).await?;
    let at = poolbill_domain::time::to_beijing(chrono::DateTime::parse_from_rfc3339(AT).expect("a valid instant"));
    let open = poolbill_domain::Command::OpenAccount {
        account: "bench".into(),
        balance: rust_decimal::Decimal::ZERO,
        level: "standard".into(),
        discount: rust_decimal::Decimal::ZERO,
    };
    engine.execute("bench:open", at, open, None).await.map_err(|e| e.to_string())?;
    Ok(engine)
}

/// Share `max_commands` among `clients`: each client's own bound.
fn per_client(max_commands: u64, clients: usize) -> u64 {
    (max_commands / clients as u64).max(1)
}

async fn engine_load(store: &AppendsTo, clients: usize, budget: Duration, max_commands: u64) -> Result<Load, String> {
    let engine = open(store).await?;
    let at = poolbill_domain::time::to_beijing(chrono::DateTime::parse_from_rfc3339(AT).expect("a valid instant"));
    let (started, deadline, bound) = (Instant::now(), Instant::now() + budget, per_client(max_commands, clients));
    let mut tasks = Vec::new();
    for client in 0..clients {
        let engine = engine.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < deadline && (latencies.len() as u64) < bound {
                let command = poolbill_domain::Command::TopUp { account: "bench".into(), amount: rust_decimal::Decimal::ONE };
                let sent = Instant::now();
                let done = engine.execute(format!("e:{client}:{}", latencies.len()), at, command, None).await.map_err(|e| e.to_string())?;
                if done.outcome != poolbill_engine::Outcome::Accepted || done.duplicate {
                    return Err(format!("a top-up was not simply accepted: {done:?}"));
                }
                latencies.push(sent.elapsed());
            }
            Ok::<Vec<Duration>, String>(latencies)
        }));
    }
    gather(clients, started, tasks).await
}

async fn gather(clients: usize, started: Instant, tasks: Vec<tokio::task::JoinHandle<Result<Vec<Duration>, String>>>) -> Result<Load, String> {
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.map_err(|e| e.to_string())??);
    }
    Ok(Load { clients, commands: latencies.len() as u64, seconds: started.elapsed().as_secs_f64(), latencies })
}

async fn http_run(store: &AppendsTo, clients: usize, budget: Duration, max_commands: u64) -> Result<Load, String> {
    let engine = open(store).await?;
    let tokens = poolbill_http::auth::Tokens::parse(&json!({"tokens": [{"token": TOKEN, "accounts": "*", "access": "read-write"}]}).to_string())
        .map_err(|e| e.to_string())?;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(poolbill_http::serve(listener, poolbill_http::router(engine, tokens), async {
        let _ = stopped.await;
    }));
    let (started, deadline, bound) = (Instant::now(), Instant::now() + budget, per_client(max_commands, clients));
    let mut tasks = Vec::new();
    for client in 0..clients {
        tasks.push(tokio::spawn(http_client(addr, client, deadline, bound)));
    }
    let load = gather(clients, started, tasks).await;
    let _ = stop.send(());
    server.await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;
    load
}

/// One client on one keep-alive connection: a top-up at a time, each answer checked.
async fn http_client(addr: SocketAddr, client: usize, deadline: Instant, bound: u64) -> Result<Vec<Duration>, String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut stream = BufReader::new(stream);
    let body = json!({"type": "top_up", "at": AT, "account": "bench", "amount": "1.00"}).to_string();
    let mut latencies = Vec::new();
    while Instant::now() < deadline && (latencies.len() as u64) < bound {
        let request = format!(
            "POST /v1/commands HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\nIdempotency-Key: h:{client}:{}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            latencies.len(),
            body.len()
        );
        let sent = Instant::now();
        stream.get_mut().write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
        let (status, answer) = read_answer(&mut stream).await?;
        if status != 200 || !answer.contains("\"status\":\"accepted\"") || answer.contains("\"duplicate\":true") {
            return Err(format!("a top-up was not simply accepted: {status} {answer}"));
        }
        latencies.push(sent.elapsed());
    }
    Ok(latencies)
}

/// One response with a Content-Length body (what the API gives for a command).
async fn read_answer(stream: &mut BufReader<TcpStream>) -> Result<(u16, String), String> {
    let mut line = String::new();
    stream.read_line(&mut line).await.map_err(|e| e.to_string())?;
    let status = line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| format!("no status line: {line:?}"))?;
    let mut length = 0usize;
    loop {
        line.clear();
        stream.read_line(&mut line).await.map_err(|e| e.to_string())?;
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().map_err(|_| format!("bad content-length {value:?}"))?;
            }
        }
    }
    let mut body = vec![0; length];
    stream.read_exact(&mut body).await.map_err(|e| e.to_string())?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// The Markdown rows of a run: one per client count, HTTP beside the engine baseline.
pub fn table(result: &Value) -> String {
    let mut out = String::from(
        "| clients | HTTP commands/s | HTTP p50 / p99 / max | engine API commands/s (baseline) | engine p50 / p99 / max |\n| --- | --- | --- | --- | --- |\n",
    );
    for run in result["runs"].as_array().into_iter().flatten() {
        let cell = |side: &str| {
            let s = &run[side];
            (
                format!("{:.0} ({} commands)", s["commands_per_s"].as_f64().unwrap_or(0.0), s["commands"]),
                format!(
                    "{:.2} / {:.2} / {:.2} ms",
                    s["p50_ms"].as_f64().unwrap_or(0.0),
                    s["p99_ms"].as_f64().unwrap_or(0.0),
                    s["max_ms"].as_f64().unwrap_or(0.0)
                ),
            )
        };
        let ((hr, hl), (er, el)) = (cell("http"), cell("engine"));
        out.push_str(&format!("| {} | {hr} | {hl} | {er} | {el} |\n", run["clients"]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_load_run_counts_accepted_commands_over_http_and_in_process() {
        let dir = tempfile::tempdir().unwrap();
        let result = http_load(dir.path(), &[1, 4], Duration::from_millis(300), 40).unwrap();
        let runs = result["runs"].as_array().unwrap();
        assert_eq!(runs.len(), 2);
        for run in runs {
            for side in ["http", "engine"] {
                let commands = run[side]["commands"].as_u64().unwrap();
                // Bounded by the count: at most 40, shared among the clients.
                assert!((1..=40).contains(&commands), "{run}");
                assert!(run[side]["p50_ms"].as_f64().unwrap() <= run[side]["max_ms"].as_f64().unwrap(), "{run}");
            }
        }
        // Every answered command is on disk: each top-up appends its record and the top-up.
        let store = poolbill_store_sled::SledStore::open(dir.path().join("http-4")).unwrap();
        let http = runs[1]["http"]["commands"].as_u64().unwrap();
        assert_eq!(poolbill_store::EventStore::last_position(&store).unwrap(), 2 + 2 * http);
        assert!(table(&result).lines().count() == 4);
    }

    #[test]
    fn a_load_run_on_postgresql_uses_a_fresh_database_per_run_and_every_answer_is_in_it() {
        let server = poolbill_store_postgres::cluster::fresh_database();
        let result = http_load_on(&Stores::Postgres(server.clone()), &[2], Duration::from_millis(300), 20).unwrap();
        assert_eq!(result["store"], "postgres");
        let http = result["runs"][0]["http"]["commands"].as_u64().unwrap();
        assert!((1..=20).contains(&http), "{result}");
        let name = format!("poolbill_bench_http_2_{}", std::process::id());
        let url = poolbill_store_postgres::cluster::with_database(&server, &name).unwrap();
        let store = poolbill_store_postgres::PostgresStore::connect(&url).unwrap();
        assert_eq!(poolbill_store::EventStore::last_position(&store).unwrap(), 2 + 2 * http);
    }

    #[test]
    fn percentiles_are_by_nearest_rank() {
        let load = Load { clients: 1, commands: 4, seconds: 1.0, latencies: [4, 1, 3, 2].map(Duration::from_millis).to_vec() };
        assert_eq!(load.percentile(50.0), Duration::from_millis(2));
        assert_eq!(load.percentile(99.0), Duration::from_millis(4));
        assert_eq!(load.percentile(100.0), Duration::from_millis(4));
    }
}
