//! `poolbill`: run scenarios and serve commands on an event log (sled, or PostgreSQL); replay, audit, explain,
//! diff, bill and draw what a log holds.
//!
//! Exit status: 0 done; 1 the store or engine failed (audit: bills differ); 2 the input or
//! arguments are invalid (then nothing was written).

// jemalloc, zeroing large blocks in place (why: the `alloc` crate).
#[global_allocator]
static ALLOCATOR: poolbill_alloc::Allocator = poolbill_alloc::Allocator;

mod args;
mod failure;
mod logs;
mod merkle;
mod progress;
mod run;
mod stores;
mod table;

use args::{Cli, CompletionsArgs, Tool};
use clap::{CommandFactory, Parser};
use failure::{report, Failure};
use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // `--help` and `--version` print on stdout and exit 0; usage errors on stderr, exit 2.
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(2) } else { ExitCode::SUCCESS };
        }
    };
    logging(cli.verbose, cli.quiet);
    let _span = tracing::info_span!("poolbill", command = cli.command.name()).entered();
    let result = match cli.command {
        Tool::Run(args) => async_runtime().and_then(|rt| rt.block_on(run::run(args))),
        Tool::Serve(args) => async_runtime().and_then(|rt| rt.block_on(run::serve(args))),
        Tool::Replay(args) => logs::replay(args),
        Tool::Audit(args) => logs::audit(args),
        Tool::Explain(args) => logs::explain(args),
        Tool::Diff(args) => logs::diff(args),
        Tool::Bills(args) => logs::bills(args),
        Tool::Timeline(args) => logs::timeline(args),
        Tool::Verify(args) => logs::verify(args),
        Tool::Export(args) => logs::export(args),
        Tool::Digest(args) => merkle::digest(args),
        Tool::Prove(args) => merkle::prove(args),
        Tool::CheckProof(args) => merkle::check_proof(args),
        Tool::Keygen(args) => merkle::keygen(args),
        Tool::Completions(args) => completions(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Differs) => ExitCode::from(1),
        Err(Failure::Input(e)) => {
            eprintln!("{}", report("", e.as_ref()));
            ExitCode::from(2)
        }
        Err(Failure::Runtime(e)) => {
            eprintln!("{}", report("", e.as_ref()));
            ExitCode::from(1)
        }
        Err(Failure::Damaged(e)) => {
            eprintln!("{}", report("DAMAGED: ", e.as_ref()));
            ExitCode::from(1)
        }
    }
}

/// Diagnostics go to stderr (stdout is for the document); RUST_LOG, when set, decides what is
/// shown, else `-q` errors only, none warnings, `-v` info, `-vv` debug, `-vvv` trace.
fn logging(verbose: u8, quiet: bool) {
    use tracing_subscriber::EnvFilter;
    let level = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "debug",
        _ => "trace",
    };
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => EnvFilter::try_new(&spec).unwrap_or_else(|e| {
            eprintln!("warning: RUST_LOG={spec:?} is not a filter ({e}); using {level}");
            EnvFilter::new(level)
        }),
        _ => EnvFilter::new(level),
    };
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(false).init();
}

fn async_runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().map_err(failure::runtime("starting the async runtime"))
}

fn completions(args: CompletionsArgs) -> Result<(), Failure> {
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut Cli::command(), "poolbill", &mut script);
    print_out(&String::from_utf8_lossy(&script))
}

pub fn print_out(text: &str) -> Result<(), Failure> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes()).and_then(|_| stdout.flush()).map_err(failure::runtime("writing the output"))
}

pub fn to_json(value: &impl serde::Serialize) -> Result<String, Failure> {
    serde_json::to_string_pretty(value).map(|s| s + "\n").map_err(failure::runtime("encoding the output as JSON"))
}
