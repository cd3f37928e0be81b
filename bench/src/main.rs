//! `poolbill-bench`: generate a seeded workload, measure the release `poolbill` binary on it
//! figure by figure (each a child process: wall time and peak memory), each next to a baseline
//! measured in the same run, and print the report (Markdown; JSON in `--out`).
//!
//! The subcommands `decode`, `replay-store` and `appends` are the in-process steps the bench runs
//! as children of its own; `generate` only writes a workload.

// The allocator `poolbill` uses, so that the in-process figures are the binary's.
#[global_allocator]
static ALLOCATOR: poolbill_alloc::Allocator = poolbill_alloc::Allocator;

use poolbill_bench::suite::{self, Options, FIGURES};
use poolbill_bench::workload::{self, Params};
use poolbill_bench::{report, work};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

const USAGE: &str = "usage:
  poolbill-bench [--preset small|region|mix|10m] [--seed N] [--out DIR] [--only FIG,FIG…]
                 [--pools N] [--accounts N] [--days N] [--seconds S] [--poolbill PATH] [--keep]
                 [--postgres URL|throwaway]   (adds pg-single and pg-group: the append figures on PostgreSQL;
                                               `throwaway`: a cluster of the machine's PostgreSQL 15, fsync on)
  poolbill-bench generate [--preset …] [--seed N] [--pools N] [--accounts N] [--days N] > W.json
  poolbill-bench decode LOG.jsonl                       (the JSON decode floor of a log)
  poolbill-bench replay-store DIR [--at INSTANT]        (replay a store; the document on stdout)
  poolbill-bench explain-store DIR --at INSTANT --resources ID,ID…  (explain from a store opened once)
  poolbill-bench store-stats DIR                         (entries and bytes of each of the store's trees)
  poolbill-bench appends DIR|--postgres URL [--clients N] [--seconds S] (durable top-ups through the engine)
  poolbill-bench http DIR [--clients 1,16,64] [--seconds S] [--commands N] [--postgres URL|throwaway]
                 (durable top-ups over the HTTP API on loopback, beside the engine API; Markdown on stdout, JSON in DIR/http.json;
                  --postgres: a new database per run on that server, `throwaway`: a cluster of the machine's PostgreSQL 15, fsync on)

Figures (--only): fsync, run, size, export, decode, replay, replay-store, replay-store-cli, at,
audit, diff-at, diff-policy, explain, explain-store, explain-service, reopen, single, group, serve, pg-single, pg-group. Without --poolbill, `cargo build --release --bin poolbill` is run first and
target/release/poolbill measured. The default --out is target/bench/PRESET-SEED.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("decode") => one_path(&args[1..]).and_then(|p| work::decode_floor(&p)).map(|v| println!("{v}")),
        Some("replay-store") => replay_store(&args[1..]),
        Some("explain-store") => explain_store(&args[1..]),
        Some("store-stats") => one_path(&args[1..]).and_then(|p| work::store_stats(&p)).map(|v| println!("{v}")),
        Some("appends") => appends(&args[1..]),
        Some("http") => http(&args[1..]),
        Some("generate") => parse(&args[1..]).map(|(p, _)| print!("{}", workload::to_text(&workload::generate(&p.params)))),
        // The bench's own step: the workload of parameters given as JSON, made in a process of
        // its own so that the bench stays small (a child's peak memory starts from the bench's).
        Some("generate-params") => match args.get(1).map(|json| serde_json::from_str::<workload::Params>(json)) {
            Some(Ok(params)) => {
                print!("{}", workload::to_text(&workload::generate(&params)));
                Ok(())
            }
            Some(Err(e)) => Err(format!("generate-params: {e}")),
            None => Err("generate-params needs the parameters as JSON".to_string()),
        },
        Some("help" | "--help" | "-h") => {
            println!("{USAGE}");
            Ok(())
        }
        _ => bench(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("poolbill-bench: {e}");
            ExitCode::from(2)
        }
    }
}

struct Parsed {
    params: Params,
    out: Option<PathBuf>,
    only: Vec<String>,
    poolbill: Option<PathBuf>,
    seconds: f64,
    keep: bool,
    postgres: Option<String>,
}

fn parse(args: &[String]) -> Result<(Parsed, Vec<String>), String> {
    let mut preset = "region".to_string();
    let mut seed = 20261123u64;
    let mut sizes: Vec<(String, u32)> = Vec::new();
    let mut parsed = Parsed {
        params: Params::preset("small", 0).expect("a preset"),
        out: None,
        only: Vec::new(),
        poolbill: None,
        seconds: 2.0,
        keep: false,
        postgres: None,
    };
    let mut rest = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().cloned().ok_or_else(|| format!("{name} needs a value\n{USAGE}"));
        match arg.as_str() {
            "--preset" => preset = value("--preset")?,
            "--seed" => seed = value("--seed")?.parse().map_err(|e| format!("--seed: {e}"))?,
            "--out" => parsed.out = Some(PathBuf::from(value("--out")?)),
            "--poolbill" => parsed.poolbill = Some(PathBuf::from(value("--poolbill")?)),
            "--seconds" => parsed.seconds = value("--seconds")?.parse().map_err(|e| format!("--seconds: {e}"))?,
            "--keep" => parsed.keep = true,
            "--postgres" => parsed.postgres = Some(value("--postgres")?),
            "--only" => {
                parsed.only = value("--only")?.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
                if let Some(bad) = parsed.only.iter().find(|k| !FIGURES.contains(&k.as_str())) {
                    return Err(format!("--only: unknown figure {bad:?} (one of {})", FIGURES.join(", ")));
                }
            }
            flag @ ("--pools" | "--accounts" | "--days") => {
                let n: u32 = value(flag)?.parse().map_err(|e| format!("{flag}: {e}"))?;
                if n == 0 {
                    return Err(format!("{flag} must be at least 1"));
                }
                sizes.push((flag.to_string(), n));
            }
            other if other.starts_with("--") => return Err(format!("unknown option {other}\n{USAGE}")),
            other => rest.push(other.to_string()),
        }
    }
    let mut params = Params::preset(&preset, seed).ok_or_else(|| format!("--preset: {preset:?} is not small, region, mix or 10m"))?;
    let resized = !sizes.is_empty();
    for (flag, n) in sizes {
        match flag.as_str() {
            "--pools" => params.pools = n,
            "--accounts" => params.accounts = n,
            _ => params.days = n,
        }
    }
    if resized {
        // Another workload: its own name, so its results land in a directory of their own.
        params.name = format!("{preset}-{}p-{}a-{}d", params.pools, params.accounts, params.days);
    }
    parsed.params = params;
    Ok((parsed, rest))
}

fn bench(args: &[String]) -> Result<(), String> {
    let (parsed, rest) = parse(args)?;
    if !rest.is_empty() {
        return Err(format!("unexpected argument {:?}\n{USAGE}", rest[0]));
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the bench crate is in the workspace").to_path_buf();
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
    let poolbill = match parsed.poolbill {
        Some(p) => p,
        None => {
            eprintln!("poolbill-bench: cargo build --release --bin poolbill");
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let status = Command::new(cargo)
                .current_dir(&root)
                .args(["build", "--release", "--bin", "poolbill"])
                .status()
                .map_err(|e| format!("cargo: {e}"))?;
            if !status.success() {
                return Err("building poolbill failed".into());
            }
            target.join("release").join("poolbill")
        }
    };
    let p = &parsed.params;
    let out = parsed.out.unwrap_or_else(|| target.join("bench").join(format!("{}-{}", p.name, p.seed)));
    eprintln!(
        "poolbill-bench: preset {}, seed {}: {} pools, {} accounts, {} days; about {} events expected; results in {}",
        p.name,
        p.seed,
        p.pools,
        p.accounts,
        p.days,
        report::grouped(p.expected_events() as f64),
        out.display()
    );
    if cfg!(debug_assertions) {
        eprintln!("poolbill-bench: warning: this is a debug build of the bench; its in-process figures need --release");
    }
    // Kept until the figures are measured: dropping it stops the cluster.
    let (_cluster, postgres) = match parsed.postgres.as_deref() {
        Some("throwaway") => {
            use poolbill_store_postgres::cluster::{execute, Cluster, Durability};
            let cluster = Cluster::start(Durability::Fsync)?;
            execute(&cluster.url("postgres"), "CREATE DATABASE bench")?;
            let url = cluster.url("bench");
            eprintln!("poolbill-bench: a throwaway PostgreSQL 15 cluster (fsync on) at {url}");
            (Some(cluster), Some(url))
        }
        other => (None, other.map(str::to_string)),
    };
    let options = Options {
        params: parsed.params.clone(),
        out: out.clone(),
        only: parsed.only,
        poolbill,
        bench: std::env::current_exe().map_err(|e| e.to_string())?,
        budget: Duration::from_secs_f64(parsed.seconds.max(0.1)),
        keep: parsed.keep,
        verbose: true,
        postgres,
    };
    let report = suite::run(&options)?;
    let markdown = report.markdown();
    let mut text =
        format!("preset {}, seed {}, {} events; machine: {}\n\n{markdown}\n", report.preset, report.seed, report.workload["events"], report.machine);
    for note in &report.notes {
        text.push_str(&format!("- {note}\n"));
    }
    print!("{text}");
    let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    std::fs::write(out.join("report.json"), json + "\n").map_err(|e| e.to_string())?;
    std::fs::write(out.join("report.md"), text).map_err(|e| e.to_string())?;
    eprintln!("poolbill-bench: wrote {} and report.md", out.join("report.json").display());
    Ok(())
}

fn one_path(args: &[String]) -> Result<PathBuf, String> {
    match args {
        [one] => Ok(PathBuf::from(one)),
        _ => Err(format!("one path is needed\n{USAGE}")),
    }
}

fn replay_store(args: &[String]) -> Result<(), String> {
    let (dir, at) = match args {
        [dir] => (dir, None),
        [dir, flag, at] if flag == "--at" => (dir, Some(at.as_str())),
        _ => return Err(format!("replay-store DIR [--at INSTANT]\n{USAGE}")),
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
    let done = work::replay_store(Path::new(dir), at, &mut out)?;
    eprintln!("{done}");
    Ok(())
}

fn explain_store(args: &[String]) -> Result<(), String> {
    match args {
        [dir, at_flag, at, resources_flag, resources] if at_flag == "--at" && resources_flag == "--resources" => {
            let resources: Vec<String> = resources.split(',').map(str::to_string).collect();
            println!("{}", work::explain_store(Path::new(dir), at, &resources)?);
            Ok(())
        }
        _ => Err(format!("explain-store DIR --at INSTANT --resources ID,ID…\n{USAGE}")),
    }
}

fn appends(args: &[String]) -> Result<(), String> {
    let mut dir = None;
    let mut postgres = None;
    let mut clients = 1usize;
    let mut seconds = 2.0f64;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--clients" => clients = it.next().and_then(|v| v.parse().ok()).filter(|&n| n > 0).ok_or("--clients needs a number ≥ 1")?,
            "--seconds" => seconds = it.next().and_then(|v| v.parse().ok()).filter(|&s: &f64| s > 0.0).ok_or("--seconds needs a positive number")?,
            "--postgres" => postgres = Some(it.next().ok_or("--postgres needs a URL")?.clone()),
            other if dir.is_none() && !other.starts_with("--") => dir = Some(PathBuf::from(other)),
            other => return Err(format!("unexpected argument {other:?}\n{USAGE}")),
        }
    }
    let to = match (dir, postgres) {
        (Some(dir), None) => work::AppendsTo::Dir(dir),
        (None, Some(url)) => work::AppendsTo::Postgres(url),
        _ => return Err(format!("appends needs a store directory or --postgres URL (one of them)\n{USAGE}")),
    };
    let result = work::appends(&to, clients, Duration::from_secs_f64(seconds))?;
    println!("{result}");
    Ok(())
}

fn http(args: &[String]) -> Result<(), String> {
    let mut dir = None;
    let mut clients = vec![1usize, 16, 64];
    let mut seconds = 3.0f64;
    let mut commands = 20_000u64;
    let mut postgres = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--clients" => {
                clients = it
                    .next()
                    .map(|v| v.split(',').map(|n| n.trim().parse::<usize>().ok().filter(|&n| n > 0)).collect::<Option<Vec<_>>>())
                    .and_then(|c| c.filter(|c| !c.is_empty()))
                    .ok_or("--clients needs numbers ≥ 1, comma-separated")?
            }
            "--seconds" => seconds = it.next().and_then(|v| v.parse().ok()).filter(|&s: &f64| s > 0.0).ok_or("--seconds needs a positive number")?,
            "--commands" => commands = it.next().and_then(|v| v.parse().ok()).filter(|&n| n > 0).ok_or("--commands needs a number ≥ 1")?,
            "--postgres" => postgres = Some(it.next().ok_or("--postgres needs a URL or `throwaway`")?.clone()),
            other if dir.is_none() && !other.starts_with("--") => dir = Some(PathBuf::from(other)),
            other => return Err(format!("unexpected argument {other:?}\n{USAGE}")),
        }
    }
    let dir = dir.ok_or_else(|| format!("http needs a directory for its stores (it must not exist)\n{USAGE}"))?;
    if dir.exists() {
        return Err(format!("{}: already exists; the load runs on fresh stores", dir.display()));
    }
    // Kept until the figures are measured: dropping it stops the cluster.
    let (_cluster, stores) = match postgres.as_deref() {
        None => (None, poolbill_bench::http_load::Stores::Sled(dir.clone())),
        Some("throwaway") => {
            let cluster = poolbill_store_postgres::cluster::Cluster::start(poolbill_store_postgres::cluster::Durability::Fsync)?;
            let url = cluster.url("postgres");
            eprintln!("poolbill-bench: a throwaway PostgreSQL 15 cluster (fsync on) at {url}");
            (Some(cluster), poolbill_bench::http_load::Stores::Postgres(url))
        }
        Some(url) => (None, poolbill_bench::http_load::Stores::Postgres(url.to_string())),
    };
    let result = poolbill_bench::http_load::http_load_on(&stores, &clients, Duration::from_secs_f64(seconds), commands)?;
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("http.json"), format!("{result:#}\n")).map_err(|e| e.to_string())?;
    print!("{}", poolbill_bench::http_load::table(&result));
    Ok(())
}
