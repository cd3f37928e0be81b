//! `poolbill`: run scenarios and serve commands on a sled event log; replay, audit, explain,
//! diff, bill and draw what a log holds.
//!
//! Exit status: 0 done; 1 the store or engine failed (audit: bills differ); 2 the input or
//! arguments are invalid (then nothing was written).

mod args;
mod logs;
mod run;
mod table;

use chrono::DateTime;
use poolbill_domain::time::to_beijing;
use poolbill_domain::Instant;
use std::io::Write;
use std::process::ExitCode;

pub const USAGE: &str = "usage:
  poolbill run SCENARIO.json [--at INSTANT] [--format json|table] [--store DIR] [--export LOG.jsonl]
  poolbill serve --store DIR
  poolbill replay LOG.jsonl [--at INSTANT | --upto SEQ] [--format json|table] [--policy POLICY.json]
  poolbill audit LOG.jsonl --charged CHARGED.json [--format json|table]
  poolbill explain LOG.jsonl (--resource ID --at INSTANT | --bill N) [--format json|text]
  poolbill diff LOG.jsonl (--at INSTANT | --policy POLICY.json) [--format json|table]
  poolbill bills LOG.jsonl --month YYYY-MM [--format table|json|csv]
  poolbill timeline LOG.jsonl --resource ID --svg OUT.svg
  poolbill verify (--store DIR | LOG.jsonl)             (exit 0 sound, 1 damaged, 2 bad arguments)";

pub enum Failure {
    /// Invalid input or arguments: nothing was written.
    Input(String),
    /// The store or engine failed.
    Runtime(String),
    /// Done, but the answer is "no" (audit: the bills differ).
    Differs,
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
    let rest = args.get(1..).unwrap_or_default();
    let result = match args.first().map(String::as_str) {
        Some("run") => runtime.block_on(run::run(rest)),
        Some("serve") => runtime.block_on(run::serve(rest)),
        Some("replay") => logs::replay(rest),
        Some("audit") => logs::audit(rest),
        Some("explain") => logs::explain(rest),
        Some("diff") => logs::diff(rest),
        Some("bills") => logs::bills(rest),
        Some("timeline") => logs::timeline(rest),
        Some("verify") => logs::verify(rest),
        Some("help" | "--help" | "-h") => print_out(&format!("{USAGE}\n")),
        _ => Err(Failure::Input(USAGE.to_string())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Differs) => ExitCode::from(1),
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

pub fn parse_instant(flag: &str, text: &str) -> Result<Instant, Failure> {
    DateTime::parse_from_rfc3339(text)
        .map(to_beijing)
        .map_err(|e| Failure::Input(format!("--{flag}: {text:?} is not an RFC 3339 instant with an offset ({e})")))
}

/// `--format`, one of `allowed` (the first is the default).
pub fn format<'a>(value: Option<&'a str>, allowed: &[&'a str]) -> Result<&'a str, Failure> {
    match value {
        None => Ok(allowed[0]),
        Some(f) if allowed.contains(&f) => Ok(f),
        Some(f) => Err(Failure::Input(format!("--format: {f:?} is not one of {}", allowed.join(", ")))),
    }
}

pub fn print_out(text: &str) -> Result<(), Failure> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes()).and_then(|_| stdout.flush()).map_err(|e| Failure::Runtime(format!("writing output: {e}")))
}

pub fn to_json(value: &impl serde::Serialize) -> Result<String, Failure> {
    serde_json::to_string_pretty(value).map(|s| s + "\n").map_err(|e| Failure::Runtime(e.to_string()))
}
