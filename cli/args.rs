//! The command line, declared with clap: one subcommand per tool, each with its own `--help`.
//!
//! Parsing checks what can be checked without reading a file (formats, instants, which options
//! go together); a usage error exits 2 before anything is opened or written.

use chrono::DateTime;
use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};
use poolbill_domain::time::to_beijing;
use poolbill_domain::Instant;
use std::path::PathBuf;

/// Event-sourced billing of compute pools and workloads: run scenarios and serve commands on an
/// event log (sled, or PostgreSQL); replay, audit, explain, diff, bill and draw what a log holds.
#[derive(Debug, Parser)]
#[command(
    name = "poolbill",
    version,
    propagate_version = true,
    arg_required_else_help = true,
    after_help = "Exit status: 0 done; 1 the store or engine failed (audit: bills differ; verify: damaged or not the digest's log; \
                  check-proof: does not verify); 2 invalid input or arguments (then nothing was written)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Tool,
    /// More diagnostics on stderr: -v info, -vv debug, -vvv trace (RUST_LOG, when set, decides).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Only errors on stderr, no warnings.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
}

impl Tool {
    /// The subcommand's name, as typed.
    pub fn name(&self) -> &'static str {
        match self {
            Tool::Run(_) => "run",
            Tool::Serve(_) => "serve",
            Tool::Replay(_) => "replay",
            Tool::Audit(_) => "audit",
            Tool::Explain(_) => "explain",
            Tool::Diff(_) => "diff",
            Tool::Bills(_) => "bills",
            Tool::Timeline(_) => "timeline",
            Tool::Verify(_) => "verify",
            Tool::Export(_) => "export",
            Tool::Digest(_) => "digest",
            Tool::Prove(_) => "prove",
            Tool::CheckProof(_) => "check-proof",
            Tool::Keygen(_) => "keygen",
            Tool::Completions(_) => "completions",
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Tool {
    Run(RunArgs),
    Serve(ServeArgs),
    Replay(ReplayArgs),
    Audit(AuditArgs),
    Explain(ExplainArgs),
    Diff(DiffArgs),
    Bills(BillsArgs),
    Timeline(TimelineArgs),
    Verify(VerifyArgs),
    Export(ExportArgs),
    Digest(DigestArgs),
    Prove(ProveArgs),
    CheckProof(CheckProofArgs),
    Keygen(KeygenArgs),
    Completions(CompletionsArgs),
}

/// `json` or `table`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TableFormat {
    Table,
    Json,
}

/// `json` or `text`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TextFormat {
    Text,
    Json,
}

/// `table`, `json` or `csv`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BillsFormat {
    Table,
    Json,
    Csv,
}

/// An RFC 3339 instant with an offset, as Beijing time (R1).
pub fn instant(text: &str) -> Result<Instant, String> {
    DateTime::parse_from_rfc3339(text).map(to_beijing).map_err(|e| format!("not an RFC 3339 instant with an offset ({e})"))
}

/// A SHA-256 hash as 64 hex digits.
pub fn hash(text: &str) -> Result<poolbill_merkle::Hash, String> {
    poolbill_merkle::from_hex(text.trim())
}

/// Names the PostgreSQL store (a URL) wherever neither `--store DIR`, `--postgres URL` nor a
/// log file is given.
pub const POSTGRES_ENV: &str = "POOLBILL_POSTGRES";

/// Where a store keeps its log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreAt {
    /// A sled store in this directory.
    Dir(PathBuf),
    /// A PostgreSQL database, by URL.
    Postgres(String),
}

/// The store the options name: `--store DIR` or `--postgres URL` (clap lets through one at
/// most), else the URL in `POOLBILL_POSTGRES` when it is set.
pub fn store_at(store: Option<&PathBuf>, postgres: Option<&String>) -> Option<StoreAt> {
    match (store, postgres) {
        (Some(dir), _) => Some(StoreAt::Dir(dir.clone())),
        (None, Some(url)) => Some(StoreAt::Postgres(url.clone())),
        (None, None) => std::env::var(POSTGRES_ENV).ok().filter(|url| !url.trim().is_empty()).map(StoreAt::Postgres),
    }
}

/// A bill's place in the list: 1, 2, …
fn bill_number(text: &str) -> Result<usize, String> {
    text.parse().ok().filter(|n| *n >= 1).ok_or_else(|| "not a bill number (1, 2, …)".to_string())
}

/// Run a scenario on a fresh (or kept) store and print the bills, resources and accounts.
#[derive(Debug, Args)]
#[command(after_help = "Example:\n  poolbill run fixtures/subscription-upgrade/scenario.json --format json --at 2023-04-12T00:00:00+08:00")]
pub struct RunArgs {
    /// The scenario file (../shared/scenario-format.md).
    #[arg(value_name = "SCENARIO.json")]
    pub scenario: PathBuf,
    /// Answer as of this instant, from the same log (time travel).
    #[arg(long, value_name = "INSTANT", value_parser = instant)]
    pub at: Option<Instant>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = TableFormat::Table)]
    pub format: TableFormat,
    /// Keep the log in this directory (created if absent, continued if present) instead of a
    /// temporary store.
    #[arg(long, value_name = "DIR")]
    pub store: Option<PathBuf>,
    /// Keep the log in this PostgreSQL database instead (postgres://user:password@host:port/database;
    /// its schema is created if absent; also POOLBILL_POSTGRES when neither option is given).
    #[arg(long, value_name = "URL", conflicts_with = "store")]
    pub postgres: Option<String>,
    /// Also write the log as JSON lines to this file (whole or not at all).
    #[arg(long, value_name = "LOG.jsonl")]
    pub export: Option<PathBuf>,
}

/// Read one JSON command per line on stdin, or serve them over HTTP (--http); answer each once its events are on disk.
#[derive(Debug, Args)]
#[command(after_help = "Example:\n  echo '{\"type\": \"advance\", \"at\": \"2023-04-01T00:00:00+08:00\"}' | poolbill serve --store store/\n  \
                  poolbill serve --store store/ --http 127.0.0.1:8080 --tokens tokens.json\n  \
                  poolbill serve --shards shards.json --owns s1,s2 --owner engine-a")]
pub struct ServeArgs {
    /// The store directory (created if absent, continued if present).
    #[arg(long, value_name = "DIR")]
    pub store: Option<PathBuf>,
    /// The PostgreSQL database instead (postgres://user:password@host:port/database; its schema is
    /// created if absent; also POOLBILL_POSTGRES when neither option is given).
    #[arg(long, value_name = "URL", conflicts_with = "store")]
    pub postgres: Option<String>,
    /// Serve the command API over HTTP on this address instead of stdin (a port alone listens
    /// on 127.0.0.1; port 0 picks a free one). The bound address is printed on stderr.
    #[arg(long, value_name = "ADDR", value_parser = listen_address, requires = "tokens")]
    pub http: Option<std::net::SocketAddr>,
    /// The bearer tokens of the HTTP API (`{"tokens": [{"token", "accounts", "access"}]}`).
    #[arg(long, value_name = "FILE", requires = "http")]
    pub tokens: Option<PathBuf>,
    /// Serve as one engine of a sharded deployment on PostgreSQL: the shard map
    /// (`{"shards": [{"id", "postgres", "schema"}], "accounts": {…}}`; stdin only, not --http).
    #[arg(long, value_name = "MAP.json", conflicts_with_all = ["store", "postgres", "http"], requires_all = ["owns", "owner"])]
    pub shards: Option<PathBuf>,
    /// The shards of the map this engine owns, comma-separated (each one's lease is taken at start).
    #[arg(long, value_name = "IDS", value_delimiter = ',', requires = "shards")]
    pub owns: Vec<String>,
    /// This engine's name: recorded in the leases it takes, named in other engines' refusals.
    #[arg(long, value_name = "NAME", requires = "shards")]
    pub owner: Option<String>,
    /// Take the shards from their running owners too: their lease sessions are ended and the
    /// epochs bumped, so they can write nothing more there (needs a superuser or pg_signal_backend).
    #[arg(long, requires = "shards")]
    pub take_over: bool,
}

/// `HOST:PORT`, or a port alone on the loopback address (never every interface by default).
fn listen_address(text: &str) -> Result<std::net::SocketAddr, String> {
    if let Ok(port) = text.parse::<u16>() {
        return Ok(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    }
    text.parse().map_err(|e| format!("not HOST:PORT or a port ({e})"))
}

/// Where a tool reads its log: a portable log file, a store directory or a PostgreSQL store
/// (exactly one; `POOLBILL_POSTGRES` when none is given).
#[derive(Debug, Args)]
#[group(multiple = false)]
pub struct LogSource {
    /// The portable log (`run --export`, `export`).
    #[arg(value_name = "LOG.jsonl")]
    pub log: Option<PathBuf>,
    /// Read the log of this store directory instead (not while `serve` has it open); the same
    /// output as for its exported log.
    #[arg(long, value_name = "DIR")]
    pub store: Option<PathBuf>,
    /// Read the log of this PostgreSQL store instead (postgres://user:password@host:port/database;
    /// also POOLBILL_POSTGRES when no log or store is given); the same output.
    #[arg(long, value_name = "URL")]
    pub postgres: Option<String>,
}

/// Write a store's log as a portable log (JSON lines, what `run --export` writes).
#[derive(Debug, Args)]
#[command(after_help = "Example:\n  poolbill export --store store/ --out log.jsonl\n  poolbill export --shards shards.json --out merged.jsonl")]
pub struct ExportArgs {
    /// The store directory (not while `serve` has it open).
    #[arg(long, value_name = "DIR")]
    pub store: Option<PathBuf>,
    /// The PostgreSQL store instead (postgres://user:password@host:port/database; also
    /// POOLBILL_POSTGRES when neither option is given).
    #[arg(long, value_name = "URL", conflicts_with = "store")]
    pub postgres: Option<String>,
    /// Every shard of this shard map instead, merged into one portable log (instant order;
    /// platform-wide streams renamed `stream@shard`).
    #[arg(long, value_name = "MAP.json", conflicts_with_all = ["store", "postgres"])]
    pub shards: Option<PathBuf>,
    /// Write the log to this file, whole or not at all; `-` or none: to stdout (a log cut
    /// short there lacks its end line, and every reader refuses it).
    #[arg(long, value_name = "LOG.jsonl")]
    pub out: Option<PathBuf>,
    /// Replace the file if it exists.
    #[arg(long, requires = "out")]
    pub force: bool,
}

/// Rebuild the document from a portable log, whole or as of an instant or a position.
#[derive(Debug, Args)]
#[command(
    after_help = "Example:\n  poolbill replay fixtures/subscription-upgrade/log.jsonl --upto 7 --format json\n  poolbill replay --store store/ --at 2023-04-12T00:00:00+08:00"
)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub source: LogSource,
    /// Everything that had happened by this instant.
    #[arg(long, value_name = "INSTANT", value_parser = instant, conflicts_with = "upto")]
    pub at: Option<Instant>,
    /// Everything up to and including this log position.
    #[arg(long, value_name = "SEQ")]
    pub upto: Option<u64>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = TableFormat::Table)]
    pub format: TableFormat,
    /// Re-run the log's commands under this grace/retention table and/or price list
    /// (`{"levels": …, "catalog": […]}`).
    #[arg(long, value_name = "POLICY.json")]
    pub policy: Option<PathBuf>,
}

/// Recompute a log's bills and match what was charged against them (exit 1 if any differ).
#[derive(Debug, Args)]
#[command(after_help = "Example:\n  poolbill audit fixtures/on-demand-two-cycles/log.jsonl --charged fixtures/on-demand-two-cycles/CHARGED.json")]
pub struct AuditArgs {
    #[command(flatten)]
    pub source: LogSource,
    /// What was charged (`{"bills": […], "total": …}`).
    #[arg(long, value_name = "CHARGED.json")]
    pub charged: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = TableFormat::Table)]
    pub format: TableFormat,
}

/// Derive a bill line step by step, each step with its rule.
#[derive(Debug, Args)]
#[command(
    group(ArgGroup::new("which").required(true).args(["bill", "resource"])),
    after_help = "Example:\n  poolbill explain fixtures/subscription-upgrade/log.jsonl --bill 2"
)]
pub struct ExplainArgs {
    #[command(flatten)]
    pub source: LogSource,
    /// The bill's number: the `#` column of `run`'s table (1, 2, …).
    #[arg(long, value_name = "N", value_parser = bill_number)]
    pub bill: Option<usize>,
    /// The resource whose lines at `--at` to explain.
    #[arg(long, value_name = "ID", requires = "at")]
    pub resource: Option<String>,
    /// The instant of the resource's lines.
    #[arg(long, value_name = "INSTANT", value_parser = instant, requires = "resource", conflicts_with = "bill")]
    pub at: Option<Instant>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = TextFormat::Text)]
    pub format: TextFormat,
    /// Attach the inclusion proof of the bill's line event in the whole log's Merkle tree (as
    /// `prove --position` gives it), for `check-proof` against a digest of the log.
    #[arg(long, requires = "bill")]
    pub proof: bool,
}

/// Compare the bills as known at an instant with now, or as charged with another policy.
#[derive(Debug, Args)]
#[command(
    group(ArgGroup::new("against").required(true).args(["at", "policy"])),
    after_help = "Example:\n  poolbill diff fixtures/arrears-grace-frozen-recovery/log.jsonl --at 2023-04-18T20:00:00+08:00"
)]
pub struct DiffArgs {
    #[command(flatten)]
    pub source: LogSource,
    /// The bills as known at this instant, against the bills as known now.
    #[arg(long, value_name = "INSTANT", value_parser = instant)]
    pub at: Option<Instant>,
    /// The bills as charged, against the log's commands re-run under this policy.
    #[arg(long, value_name = "POLICY.json")]
    pub policy: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = TableFormat::Table)]
    pub format: TableFormat,
}

/// One detail bill per account, resource and billing mode of a month (R5).
#[derive(Debug, Args)]
#[command(after_help = "Example:\n  poolbill bills fixtures/subscription-upgrade/log.jsonl --month 2023-04 --format csv")]
pub struct BillsArgs {
    #[command(flatten)]
    pub source: LogSource,
    /// The Beijing month.
    #[arg(long, value_name = "YYYY-MM")]
    pub month: String,
    /// Output format.
    #[arg(long, value_enum, default_value_t = BillsFormat::Table)]
    pub format: BillsFormat,
}

/// Draw a resource's life (states, charges, balance) as an SVG picture.
#[derive(Debug, Args)]
#[command(after_help = "Example:\n  poolbill timeline fixtures/ch3-scale-then-convert/log.jsonl --resource pool-1 --svg pool.svg")]
pub struct TimelineArgs {
    #[command(flatten)]
    pub source: LogSource,
    /// The pool, job or package to draw.
    #[arg(long, value_name = "ID")]
    pub resource: String,
    /// Where to write the picture.
    #[arg(long, value_name = "OUT.svg")]
    pub svg: PathBuf,
}

/// Check a store or a portable log (and a digest of it): exit 0 sound, 1 damaged or not the digest's log, 2 bad arguments.
#[derive(Debug, Args)]
#[command(
    group(ArgGroup::new("what").args(["store", "postgres", "log"])),
    after_help = "Example:\n  poolbill verify --store store/\n  poolbill verify log.jsonl --digest march.digest.json --public-key \"$(cat provider.key.pub)\""
)]
pub struct VerifyArgs {
    /// A store directory: every event read back, checksums, positions, stream versions, the
    /// high-water mark, the Merkle index and the tag index against the events, and a full replay.
    #[arg(long, value_name = "DIR")]
    pub store: Option<PathBuf>,
    /// A PostgreSQL store (postgres://user:password@host:port/database; also POOLBILL_POSTGRES
    /// when nothing else is given): every event read back and checked the same way, and a full
    /// replay.
    #[arg(long, value_name = "URL")]
    pub postgres: Option<String>,
    /// A portable log: read and checked whole, then replayed.
    #[arg(value_name = "LOG.jsonl")]
    pub log: Option<PathBuf>,
    /// Also check that the log's (or the store's) first `size` events have this digest's root
    /// (exit 1 if not, naming the first line that differs when the digest lists its leaves), and its signature
    /// when it is signed.
    #[arg(long, value_name = "DIGEST.json")]
    pub digest: Option<PathBuf>,
    /// The signer's public key (hex) the digest's signature must be made with; without it, the
    /// key the digest names is used (which proves the digest is intact, not who signed it).
    #[arg(long, value_name = "HEX", requires = "digest")]
    pub public_key: Option<String>,
}

/// Print the root of the log's Merkle tree (RFC 6962) over its first N events, optionally signed.
#[derive(Debug, Args)]
#[command(after_help = "Output: {\"size\": N, \"root\": HEX} (with --sign also \"signature\" and \"public_key\"; with --leaves \"leaves\").\n\
                  A digest handed to someone else binds the log's first N events: `verify LOG --digest` and `prove --consistency` check a later log against it.\n\n\
                  Example:\n  poolbill digest --store store/ --sign provider.key > digest.json")]
pub struct DigestArgs {
    #[command(flatten)]
    pub source: LogSource,
    /// The tree of the first N events (default: all of them).
    #[arg(long, value_name = "N")]
    pub size: Option<u64>,
    /// Sign the digest with this ed25519 secret key (`poolbill keygen`).
    #[arg(long, value_name = "KEYFILE")]
    pub sign: Option<PathBuf>,
    /// Also list each event's leaf hash, so that `verify --digest` can name the first line that
    /// differs (64 hex digits an event).
    #[arg(long)]
    pub leaves: bool,
}

/// Print an inclusion proof of one event, or a consistency proof that the log extends an older digest.
#[derive(Debug, Args)]
#[command(
    group(ArgGroup::new("proof").required(true).args(["position", "consistency"])),
    after_help = "Output: {\"size\", \"position\", \"envelope\", \"path\"} (--position), or {\"old_size\", \"size\", \"old_root\", \"root\", \"path\"} (--consistency).\n\n\
                  Example:\n  poolbill prove fixtures/subscription-upgrade/log.jsonl --position 7 > proof.json\n  poolbill prove --store store/ --consistency 1200"
)]
pub struct ProveArgs {
    #[command(flatten)]
    pub source: LogSource,
    /// Prove that the event at this log position (1, 2, …) is in the tree.
    #[arg(long, value_name = "P")]
    pub position: Option<u64>,
    /// Prove that the tree extends the tree of the first OLD_SIZE events (an older digest's size).
    #[arg(long, value_name = "OLD_SIZE")]
    pub consistency: Option<u64>,
    /// The tree of the first N events (default: all of them).
    #[arg(long, value_name = "N")]
    pub size: Option<u64>,
}

/// Check a proof from `prove` against roots you trust: exit 0 it holds, 1 it does not, 2 bad input.
#[derive(Debug, Args)]
#[command(
    group(ArgGroup::new("tree").required(true).args(["root", "digest"])),
    after_help = "Exit status: 0 the proof holds; 1 it does not (a changed byte in the envelope, the path, a root, or a signed digest); 2 bad input.\n\n\
                  Example:\n  poolbill check-proof proof.json --root ffd5af914038958f015ba18417ade68e47f9975382f8fda33f582db76b624179\n  \
                  poolbill check-proof grown.json --old-digest march.digest.json --digest april.digest.json"
)]
pub struct CheckProofArgs {
    /// The proof (`prove`, or `explain --proof`'s `proof`).
    #[arg(value_name = "PROOF.json")]
    pub proof: PathBuf,
    /// The root of the tree the proof is about (a digest's `root`).
    #[arg(long, value_name = "HEX", value_parser = hash)]
    pub root: Option<poolbill_merkle::Hash>,
    /// The digest of the tree the proof is about, in place of --root: its size must be the
    /// proof's, and a signature on it must hold (with the key it names).
    #[arg(long, value_name = "DIGEST.json", conflicts_with = "root")]
    pub digest: Option<PathBuf>,
    /// A consistency proof's older root (the older digest's `root`).
    #[arg(long, value_name = "HEX", value_parser = hash)]
    pub old_root: Option<poolbill_merkle::Hash>,
    /// The older digest, in place of --old-root (as --digest).
    #[arg(long, value_name = "DIGEST.json", conflicts_with = "old_root")]
    pub old_digest: Option<PathBuf>,
}

/// Make an ed25519 key pair for signing digests: the secret key to KEYFILE (mode 0600), the public key to KEYFILE.pub and stdout.
#[derive(Debug, Args)]
#[command(after_help = "Example:\n  poolbill keygen --out provider.key")]
pub struct KeygenArgs {
    /// Where to write the secret key (never over an existing file).
    #[arg(long, value_name = "KEYFILE")]
    pub out: PathBuf,
}

/// Print a shell completion script on stdout.
#[derive(Debug, Args)]
#[command(after_help = "Example:\n  poolbill completions bash > /etc/bash_completion.d/poolbill")]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;
    use clap::CommandFactory;
    use proptest::prelude::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn a_port_alone_listens_on_the_loopback_address() {
        assert_eq!(listen_address("8080"), Ok(std::net::SocketAddr::from(([127, 0, 0, 1], 8080))));
        assert_eq!(listen_address("0.0.0.0:80"), Ok(std::net::SocketAddr::from(([0, 0, 0, 0], 80))));
        assert!(listen_address("localhost").unwrap_err().starts_with("not HOST:PORT"));
    }

    /// A log source names one log at most (none: `POOLBILL_POSTGRES`, or a usage error).
    fn at_most_one(source: &LogSource) -> bool {
        [source.log.is_some(), source.store.is_some(), source.postgres.is_some()].iter().filter(|given| **given).count() <= 1
    }

    /// Words an argument list is made of: every subcommand and option, values good and bad,
    /// `--flag=value` forms, and noise.
    fn word() -> impl Strategy<Value = String> {
        let known = [
            "run",
            "serve",
            "replay",
            "audit",
            "explain",
            "diff",
            "bills",
            "timeline",
            "verify",
            "export",
            "digest",
            "prove",
            "check-proof",
            "keygen",
            "completions",
            "help",
            "--at",
            "--upto",
            "--format",
            "--store",
            "--postgres",
            "postgres://u@127.0.0.1:1/db",
            "--export",
            "--policy",
            "--charged",
            "--bill",
            "--resource",
            "--month",
            "--svg",
            "--out",
            "--force",
            "--http",
            "--tokens",
            "--shards",
            "--owns",
            "--owner",
            "--take-over",
            "s1,s2",
            "127.0.0.1:0",
            "--size",
            "--position",
            "--consistency",
            "--sign",
            "--leaves",
            "--proof",
            "--digest",
            "--public-key",
            "--root",
            "--old-root",
            "--old-digest",
            "--help",
            "-h",
            "--version",
            "-V",
            "json",
            "table",
            "text",
            "csv",
            "bash",
            "2023-04-12T00:00:00+08:00",
            "2023-04-12",
            "2023-04",
            "0",
            "1",
            "-1",
            "x.json",
            "--",
            "-",
            "-v",
            "-vv",
            "-q",
            "--verbose",
            "--quiet",
            "--format=json",
            "--at=2023-04-12T00:00:00+08:00",
            "--upto=3",
            "--bill=2",
            "--format=",
        ];
        prop_oneof![
            4 => proptest::sample::select(known.to_vec()).prop_map(String::from),
            1 => "[-=a-z0-9:.+]{0,12}",
            1 => any::<String>(),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

        /// Any argument list is parsed or refused, never a panic; a refusal is a usage error
        /// (exit 2, on stderr) unless it is a request for help or the version (exit 0, stdout).
        #[test]
        fn any_argument_list_parses_or_is_a_usage_error(words in proptest::collection::vec(word(), 0..7)) {
            let argv = std::iter::once("poolbill".to_string()).chain(words.iter().cloned());
            match Cli::try_parse_from(argv) {
                Ok(cli) => {
                    // What parsed is consistent with the groups the tools rely on.
                    match cli.command {
                        Tool::Explain(a) => {
                            prop_assert!(a.bill.is_some() != (a.resource.is_some() && a.at.is_some()));
                            prop_assert!(at_most_one(&a.source));
                        }
                        Tool::Diff(a) => {
                            prop_assert!(a.at.is_some() != a.policy.is_some());
                            prop_assert!(at_most_one(&a.source));
                        }
                        Tool::Verify(a) => prop_assert!([a.store.is_some(), a.postgres.is_some(), a.log.is_some()].iter().filter(|g| **g).count() <= 1),
                        Tool::Replay(a) => {
                            prop_assert!(!(a.at.is_some() && a.upto.is_some()));
                            prop_assert!(at_most_one(&a.source));
                        }
                        Tool::Audit(a) => prop_assert!(at_most_one(&a.source)),
                        Tool::Bills(a) => prop_assert!(at_most_one(&a.source)),
                        Tool::Timeline(a) => prop_assert!(at_most_one(&a.source)),
                        Tool::Run(a) => prop_assert!(!(a.store.is_some() && a.postgres.is_some())),
                        Tool::Serve(a) => {
                            prop_assert!(!(a.store.is_some() && a.postgres.is_some()));
                            prop_assert!(a.shards.is_none() || (a.store.is_none() && a.postgres.is_none() && a.http.is_none() && a.owner.is_some()));
                        }
                        Tool::Export(a) => {
                            prop_assert!(!a.force || a.out.is_some());
                            prop_assert!(!(a.store.is_some() && a.postgres.is_some()));
                            prop_assert!(a.shards.is_none() || (a.store.is_none() && a.postgres.is_none()));
                        }
                        Tool::Prove(a) => prop_assert!(a.position.is_some() != a.consistency.is_some()),
                        Tool::Digest(a) => prop_assert!(at_most_one(&a.source)),
                        _ => {}
                    }
                }
                Err(e) => {
                    let informational = matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion);
                    prop_assert_eq!(e.use_stderr(), !informational, "{:?}: {}", e.kind(), e);
                    prop_assert_eq!(e.exit_code(), if informational { 0 } else { 2 }, "{:?}: {}", e.kind(), e);
                    prop_assert!(!e.to_string().trim().is_empty());
                }
            }
        }
    }
}
