//! The tools that read a log: replay, audit, explain, diff, bills and timeline, from a portable
//! log (`run --export`, `export`) or straight from a store (`--store DIR`, `--postgres URL`, the
//! same output as for its exported log); `export` writes a store's portable log; `verify` checks
//! either. A log file is read and checked whole before anything is derived from it.

use crate::args::{
    store_at, AuditArgs, BillsArgs, BillsFormat, DiffArgs, ExplainArgs, ExportArgs, LogSource, ReplayArgs, StoreAt, TableFormat, TextFormat,
    TimelineArgs, VerifyArgs, POSTGRES_ENV,
};
use crate::failure::{damaged, input, runtime, Failure};
use crate::stores::leave_at_exit;
pub(crate) use crate::stores::open_existing as open_store;
use crate::{print_out, progress, table, to_json};
use poolbill_domain::Event;
use poolbill_ledger::Recorded;
use poolbill_projections::Projections;
use poolbill_replay::diff::{Against, DiffFormat};
use poolbill_replay::document::{write_document, write_log_document, DocumentError, LogDocumentError};
use poolbill_replay::jsonl::LogError;
use poolbill_replay::rerun::{commands, rerun, to_envelopes, WhatIf};
use poolbill_replay::source::{LogFile, StoreLog};
use poolbill_replay::{
    audit as audit_log, bills as month, diff as diff_logs, explain as explain_log, fold_with, jsonl, timeline as draw, ReplayError, Upto,
};
use poolbill_store::{Envelope, EventStore, StoreError};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Where a tool's log comes from.
pub(crate) enum Origin<'a> {
    File(&'a Path),
    Store(StoreAt),
}

impl LogSource {
    pub(crate) fn origin(&self) -> Result<Origin<'_>, Failure> {
        // clap lets through one of them at most; none: POOLBILL_POSTGRES, if it is set.
        match (&self.log, store_at(self.store.as_ref(), self.postgres.as_ref())) {
            (Some(log), _) if self.store.is_none() && self.postgres.is_none() => Ok(Origin::File(log)),
            (None, Some(at)) => Ok(Origin::Store(at)),
            (None, None) => {
                Err(Failure::Input(format!("give the log: a log file (LOG.jsonl), --store DIR or --postgres URL (or set {POSTGRES_ENV})").into()))
            }
            _ => Err(Failure::Input("give one log: a log file (LOG.jsonl), --store DIR or --postgres URL".into())),
        }
    }
}

/// A failure reading a store's log: damage (exit 1).
fn unreadable(at: &StoreAt) -> impl Fn(ReplayError) -> Failure + '_ {
    move |e| damaged(format!("reading {}", at.describe()))(e)
}

/// A document that could not be written: the store could not be read (damaged), or the output
/// could not be written.
fn document_failure(at: &StoreAt) -> impl Fn(DocumentError) -> Failure + '_ {
    move |e| match e {
        DocumentError::Fold(e) => unreadable(at)(e),
        DocumentError::Io(e) => runtime("writing the document")(e),
    }
}

/// A whole log in memory.
struct Log {
    envelopes: Vec<Envelope>,
}

/// The whole log in memory: a file read and checked whole, or every envelope of a store (the
/// tools that need all of it: explain, timeline, audit's re-run, diff, bills, a re-run).
fn load(source: &LogSource) -> Result<Log, Failure> {
    match source.origin()? {
        Origin::File(path) => {
            let envelopes = jsonl::read_file(path).map_err(input(format!("{} is not a sound log", path.display())))?;
            tracing::info!(events = envelopes.len(), log = %path.display(), "log read and checked");
            Ok(Log { envelopes })
        }
        Origin::Store(at) => {
            let store = open_store(&at)?;
            let total = store.last_position().map_err(|e| unreadable(&at)(e.into()))?;
            let bar = progress::bar(total, "reading");
            let read: Result<Vec<Envelope>, StoreError> = store
                .read_all(1)
                .inspect(|read| {
                    if let Ok(envelope) = read {
                        bar.set_position(envelope.position)
                    }
                })
                .collect();
            bar.finish_and_clear();
            let envelopes = read.map_err(|e| unreadable(&at)(e.into()))?;
            tracing::info!(events = envelopes.len(), store = %at.describe(), "store read");
            Ok(Log { envelopes })
        }
    }
}

/// Fold envelopes, showing progress on a terminal when there are many.
fn fold_envelopes(envelopes: &[Envelope], upto: Upto) -> Result<Projections, ReplayError> {
    let bar = progress::bar(envelopes.len() as u64, "replaying");
    let projections = fold_with(jsonl::as_results(envelopes), upto, |position| bar.set_position(position));
    bar.finish_and_clear();
    projections
}

/// Fold a log read from a file, or one derived from it: what cannot be read is bad input.
fn fold(envelopes: &[Envelope], upto: Upto) -> Result<Projections, Failure> {
    fold_envelopes(envelopes, upto).map_err(|e| Failure::Input(e.into()))
}

fn what_if(path: &Path) -> Result<WhatIf, Failure> {
    let name = path.display();
    let text = std::fs::read_to_string(path).map_err(input(format!("cannot read {name}")))?;
    let (policy, catalog) = poolbill_scenario::parse_policy_file(&text).map_err(input(format!("{name} is not a valid policy file")))?;
    Ok(WhatIf { policy, catalog: catalog.into_iter().collect() })
}

/// The log's commands re-run under `what_if`, as a log of its own.
fn rerun_under(envelopes: &[Envelope], what_if: &WhatIf) -> Vec<Envelope> {
    let Some(until) = envelopes.last().map(|e| e.at) else { return Vec::new() };
    to_envelopes(&rerun(&commands(envelopes), until, what_if).envelopes)
}

pub fn replay(args: ReplayArgs) -> Result<(), Failure> {
    let upto = match (args.at, args.upto) {
        (Some(at), _) => Upto::Instant(at),
        (None, Some(position)) => Upto::Position(position),
        (None, None) => Upto::All,
    };
    // A re-run needs every command of the log first: its document is made in memory.
    if let Some(policy) = &args.policy {
        let what_if = what_if(policy)?;
        let json = to_json(&fold(&rerun_under(&load(&args.source)?.envelopes, &what_if), upto)?.document())?;
        return match args.format {
            TableFormat::Json => print_out(&json),
            TableFormat::Table => table::write(std::io::Cursor::new(json), std::io::stdout().lock()).map_err(runtime("writing the table")),
        };
    }
    // The document is streamed (the contract's document, bills in order, written as the log is
    // folded): neither the log's envelopes nor its bills are all in memory at once. The table
    // is made from it on a temporary file: its columns are as wide as their widest cell.
    match args.format {
        TableFormat::Json => stream_document(&args.source, upto, &mut std::io::stdout().lock()),
        TableFormat::Table => {
            let mut json = tempfile::tempfile().map_err(runtime("creating a temporary file for the table"))?;
            stream_document(&args.source, upto, &mut json)?;
            table::write(json, std::io::stdout().lock()).map_err(runtime("writing the table"))
        }
    }
}

/// The document of the log as of `upto`, streamed to `out`.
fn stream_document(source: &LogSource, upto: Upto, out: &mut impl Write) -> Result<(), Failure> {
    match source.origin()? {
        Origin::Store(at) => {
            let store = open_store(&at)?;
            let total = store.last_position().map_err(|e| unreadable(&at)(e.into()))?;
            let bar = progress::bar(total, "replaying");
            let written = write_document(store.read_all(1), upto, out, |position| bar.set_position(position));
            bar.finish_and_clear();
            leave_at_exit(store, &at);
            written.map(|_| ()).map_err(document_failure(&at))
        }
        // Checked line by line as it is folded; nothing is shown unless the whole log is sound.
        Origin::File(path) => {
            let name = path.display();
            let file = std::fs::File::open(path).map_err(input(format!("cannot read {name}")))?;
            write_log_document(std::io::BufReader::with_capacity(1 << 18, file), upto, out).map(|_| ()).map_err(|e| match e {
                LogDocumentError::Log(e) => input(format!("{name} is not a sound log"))(e),
                LogDocumentError::Document(DocumentError::Fold(e)) => input(format!("{name} cannot be replayed"))(e),
                LogDocumentError::Document(DocumentError::Io(e)) => runtime("writing the document")(e),
            })
        }
    }
}

pub fn audit(args: AuditArgs) -> Result<(), Failure> {
    // What was charged is checked before the log is read (or a store opened), after its source.
    let origin = args.source.origin()?;
    let path = args.charged.display();
    let text = std::fs::read_to_string(&args.charged).map_err(input(format!("cannot read {path}")))?;
    let charged = audit_log::parse_charged(&text).map_err(input(format!("{path} is not a valid CHARGED.json")))?;
    // The log is read as a stream (twice if its lines and its commands' differ in log order).
    let report =
        streamed(&origin, "auditing", (), |source, ()| audit_log::audit_log(source, &charged), |source, ()| audit_log::audit_log(source, &charged))?;
    print_out(&match args.format {
        TableFormat::Json => to_json(&report)?,
        TableFormat::Table => report.to_text(),
    })?;
    if report.all_match() {
        Ok(())
    } else {
        Err(Failure::Differs)
    }
}

/// Run a tool on a log read as a stream, handing it `with`: a file (`from_file`; what is not
/// sound in it is bad input, exit 2) or a store (`from_store`, with progress on a terminal; what
/// cannot be read in it is damage, exit 1).
fn streamed<C, T>(
    origin: &Origin<'_>,
    doing: &'static str,
    with: C,
    from_file: impl FnOnce(&LogFile, C) -> Result<T, LogError>,
    from_store: impl FnOnce(&StoreLog<'_, &(dyn Fn(u64) + Sync)>, C) -> Result<T, ReplayError>,
) -> Result<T, Failure> {
    match origin {
        Origin::File(path) => from_file(&LogFile::new(path), with).map_err(input(format!("{} is not a sound log", path.display()))),
        Origin::Store(at) => {
            let store = open_store(at)?;
            let total = store.last_position().map_err(|e| unreadable(at)(e.into()))?;
            let bar = progress::bar(total, doing);
            let show = |position: u64| bar.set_position(position);
            let result = from_store(&StoreLog { store: store.as_ref(), progress: &show }, with);
            bar.finish_and_clear();
            result.map_err(unreadable(at))
        }
    }
}

pub fn explain(args: ExplainArgs) -> Result<(), Failure> {
    // clap lets through `--bill N` alone, or `--resource ID` with `--at INSTANT`.
    let explanations = match args.source.origin()? {
        // A store answers from its tag index: only the events about the resource are read.
        Origin::Store(store_at) => {
            let store = open_store(&store_at)?;
            let failed = |e: explain_log::ExplainError| match e {
                explain_log::ExplainError::NoSuchBill(_) => Failure::Input(e.into()),
                e => damaged(format!("explaining from {}", store_at.describe()))(e),
            };
            let explained = match (args.bill, args.resource, args.at) {
                (Some(n), _, _) => vec![explain_log::explain_bill_in(store.as_ref(), n).map_err(failed)?],
                (None, Some(resource), Some(at)) => explain_log::explain_at_in(store.as_ref(), &resource, at).map_err(failed)?,
                _ => return Err(Failure::Input("explain needs --bill N, or --resource ID with --at INSTANT".into())),
            };
            // A proof opens the store again (below): closed first, then.
            if args.proof {
                drop(store);
            } else {
                leave_at_exit(store, &store_at);
            }
            explained
        }
        Origin::File(_) => {
            let log = load(&args.source)?;
            let envelopes = &log.envelopes;
            match (args.bill, args.resource, args.at) {
                (Some(n), _, _) => vec![explain_log::explain_bill(envelopes, n).map_err(|e| Failure::Input(e.into()))?],
                (None, Some(resource), Some(at)) => explain_log::explain_at(envelopes, &resource, at).map_err(|e| Failure::Input(e.into()))?,
                _ => return Err(Failure::Input("explain needs --bill N, or --resource ID with --at INSTANT".into())),
            }
        }
    };
    // The bill's line event with its inclusion proof in the whole log's tree.
    let proof = match (args.proof, explanations.first()) {
        (true, Some(explanation)) => Some(crate::merkle::inclusion(&args.source, explanation.bill.event, None)?),
        _ => None,
    };
    print_out(&match (args.format, proof) {
        (TextFormat::Json, None) => to_json(&explanations)?,
        (TextFormat::Json, Some(proof)) => to_json(&serde_json::json!({ "explanation": explanations.first(), "proof": proof }))?,
        (TextFormat::Text, proof) => {
            let mut text = explanations.iter().map(|e| e.to_text()).collect::<Vec<_>>().join("\n");
            if let Some(proof) = proof {
                text.push_str(
                    "\nInclusion proof of the line's event (`check-proof` with a digest's root; `--format json` writes a file it reads):\n",
                );
                text.push_str(&to_json(&proof)?);
            }
            text
        }
    })
}

pub fn diff(args: DiffArgs) -> Result<(), Failure> {
    let what_if = args.policy.as_deref().map(what_if).transpose()?;
    let origin = args.source.origin()?;
    let (against, names) = match (args.at, &args.policy, what_if) {
        (Some(t), _, _) => (Against::Instant(t), (format!("as known at {}", t.to_rfc3339()), "as known now".to_string())),
        (None, Some(policy), Some(what_if)) => (Against::WhatIf(what_if), ("as charged".to_string(), format!("under {}", policy.display()))),
        _ => return Err(Failure::Input("diff needs --at INSTANT or --policy POLICY.json".into())),
    };
    let format = match args.format {
        TableFormat::Json => DiffFormat::Json,
        TableFormat::Table => DiffFormat::Text { first: &names.0, second: &names.1 },
    };
    // Written as the lists are merged back from their temporary files, never whole in memory.
    let mut stdout = std::io::stdout().lock();
    let written = streamed(
        &origin,
        "comparing",
        &mut stdout,
        |source, out| diff_logs::write_diff_log(source, &against, format, out),
        |source, out| diff_logs::write_diff_log(source, &against, format, out),
    )?;
    // The output, or a temporary file of the lists.
    written.map_err(runtime("writing the diff"))
}

pub fn bills(args: BillsArgs) -> Result<(), Failure> {
    // The month is checked before the log is read.
    let mut sums = month::MonthSums::new(&args.month).map_err(input("--month"))?;
    let bills = match args.source.origin()? {
        // A store reads the month's lines only, through its tag index.
        Origin::Store(at) => {
            let store = open_store(&at)?;
            let bills = month::month_in(store.as_ref(), &args.month).map_err(|e| match e {
                month::MonthInError::Month(e) => input("--month")(e),
                e => damaged(format!("reading {}", at.describe()))(e),
            })?;
            leave_at_exit(store, &at);
            bills
        }
        // A log is folded as it is read, keeping only the month's rows.
        Origin::File(path) => {
            let name = path.display();
            let file = std::fs::File::open(path).map_err(input(format!("cannot read {name}")))?;
            let add = |_: &Projections, _: &Recorded, event: &Event| {
                if let Event::Charged { line } = event {
                    sums.add(line);
                }
            };
            jsonl::fold_log(std::io::BufReader::new(file), Upto::All, add).map_err(|e| match e {
                jsonl::LogFoldError::Log(e) => input(format!("{name} is not a sound log"))(e),
                jsonl::LogFoldError::Fold(e) => input(format!("{name} cannot be replayed"))(e),
            })?;
            sums.finish()
        }
    };
    print_out(&match args.format {
        BillsFormat::Json => to_json(&bills.to_json())?,
        BillsFormat::Csv => bills.to_csv(),
        BillsFormat::Table => bills.to_table(),
    })
}

pub fn timeline(args: TimelineArgs) -> Result<(), Failure> {
    let picture = match args.source.origin()? {
        // A store answers from its tag index: only the resource's history is read.
        Origin::Store(at) => {
            let store = open_store(&at)?;
            let picture = draw::timeline_in(store.as_ref(), &args.resource).map_err(|e| match e {
                draw::TimelineError::NoSuchResource(_) => Failure::Input(e.into()),
                e => damaged(format!("reading {}", at.describe()))(e),
            })?;
            leave_at_exit(store, &at);
            picture
        }
        Origin::File(_) => {
            let log = load(&args.source)?;
            draw::timeline(&log.envelopes, &args.resource).map_err(|e| Failure::Input(e.into()))?
        }
    };
    std::fs::write(&args.svg, draw::render_svg(&picture)).map_err(runtime(format!("writing {}", args.svg.display())))
}

/// `export --store DIR|--postgres URL [--out LOG.jsonl]`: the store's log as a portable log, byte for byte what
/// `run --export` writes. To a file whole or not at all (written beside it, then renamed into
/// place), never over an existing file without `--force`; to stdout without `--out` or with
/// `--out -` (a log cut short there has no end line, and every reader refuses it).
pub fn export(args: ExportArgs) -> Result<(), Failure> {
    let target = args.out.filter(|out| out.as_os_str() != "-");
    if let Some(out) = &target {
        if !args.force && std::fs::symlink_metadata(out).is_ok() {
            return Err(Failure::Input(format!("--out {}: the file exists (--force replaces it)", out.display()).into()));
        }
    }
    if let Some(map) = &args.shards {
        return export_shards(map, target.as_deref());
    }
    let at = store_at(args.store.as_ref(), args.postgres.as_ref())
        .ok_or_else(|| Failure::Input(format!("export needs --store DIR or --postgres URL (or {POSTGRES_ENV})").into()))?;
    let store = open_store(&at)?;
    let Some(out) = target else {
        let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
        write_log(store.as_ref(), &mut stdout).map_err(runtime(format!("exporting {} to stdout", at.describe())))?;
        return stdout.flush().map_err(runtime("writing the output"));
    };
    let partial = partial_path(&out);
    let context = format!("exporting {} to {}", at.describe(), out.display());
    let file = std::fs::File::create(&partial).map_err(input(format!("--out {}: cannot create {}", out.display(), partial.display())))?;
    let mut file = std::io::BufWriter::new(file);
    let written =
        write_log(store.as_ref(), &mut file).and_then(|()| file.flush().map_err(Into::into)).and_then(|()| Ok(std::fs::rename(&partial, &out)?));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&partial);
        return Err(runtime(context)(e));
    }
    Ok(())
}

/// `export --shards MAP.json`: every shard's log (each must hold a store: nothing is created)
/// merged into one portable log, to `out` whole or not at all, or to stdout.
fn export_shards(map_path: &Path, out: Option<&Path>) -> Result<(), Failure> {
    let map = poolbill_shards::ShardMap::read(map_path).map_err(|e| Failure::Input(e.into()))?;
    let mut stores = Vec::with_capacity(map.shards.len());
    for spec in &map.shards {
        let options = poolbill_store_postgres::Options { pool_size: 2, schema: Some(spec.schema.clone()), shard: Some(spec.id.clone()) };
        match poolbill_store_postgres::PostgresStore::connect_existing_options(&spec.postgres, &options) {
            Ok(store) => stores.push(store),
            Err(e @ poolbill_store_postgres::OpenError::NotAStore(_)) => return Err(input(format!("shard {}", spec.id))(e)),
            Err(poolbill_store_postgres::OpenError::Store(e)) => return Err(runtime(format!("opening shard {}", spec.id))(e)),
        }
    }
    let shards: Vec<(&str, &dyn EventStore)> =
        map.shards.iter().zip(&stores).map(|(spec, store)| (spec.id.as_str(), store as &dyn EventStore)).collect();
    let merge = |writer: &mut dyn Write| -> Result<(), crate::failure::BoxError> {
        let mut buffered = std::io::BufWriter::new(writer);
        let events = poolbill_shards::export::write_merged(&shards, &mut buffered)?;
        buffered.flush()?;
        tracing::info!(events, shards = shards.len(), "merged export");
        Ok(())
    };
    let context = format!("exporting the shards of {}", map_path.display());
    let Some(out) = out else {
        let mut stdout = std::io::stdout().lock();
        return merge(&mut stdout).map_err(runtime(context));
    };
    let partial = partial_path(out);
    let mut file = std::fs::File::create(&partial).map_err(input(format!("--out {}: cannot create {}", out.display(), partial.display())))?;
    let written = merge(&mut file).and_then(|()| Ok(file.sync_all()?)).and_then(|()| Ok(std::fs::rename(&partial, out)?));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&partial);
        return Err(runtime(format!("{context} to {}", out.display()))(e));
    }
    Ok(())
}

/// Where a log is written before it is renamed into place (as `run --export` does).
fn partial_path(out: &Path) -> PathBuf {
    out.with_extension("jsonl.partial")
}

/// The portable log of `store` to `out`, with a progress bar on a terminal when it is long.
fn write_log(store: &dyn EventStore, out: &mut impl Write) -> Result<(), crate::failure::BoxError> {
    let total = store.last_position()?;
    let bar = progress::bar(total, "exporting");
    let exported = jsonl::export_with(store, out, |position| bar.set_position(position));
    bar.finish_and_clear();
    let events = exported?;
    tracing::info!(events, "exported");
    Ok(())
}

/// `verify --store DIR`, `verify --postgres URL` or `verify LOG.jsonl`: every event read back,
/// checksums, positions, stream versions, the high-water mark (sled), and a full replay of the
/// projections.
pub fn verify(args: VerifyArgs) -> Result<(), Failure> {
    let mut digest_said = None;
    let store = match &args.log {
        Some(_) => None,
        None => store_at(args.store.as_ref(), args.postgres.as_ref()),
    };
    let (events, last) = match (store, &args.log) {
        (Some(at), _) => {
            let name = match &at {
                StoreAt::Dir(dir) => dir.display().to_string(),
                StoreAt::Postgres(_) => at.describe(),
            };
            let store = open_store(&at)?;
            let report = store.verify().map_err(damaged(format!("verifying {name}")))?;
            // One replay of the log checks it folds, and every snapshot against its prefix.
            let checked = poolbill_ledger::check_snapshots(store.as_ref()).map_err(damaged(format!("replaying {name}")))?;
            if let Some((position, why)) = checked.unsound.first() {
                return Err(damaged(format!("checking the snapshots of {name}"))(format!("the snapshot at position {position} is unsound: {why}")));
            }
            // The Merkle index against the events it covers (not brought up to date: verify writes nothing).
            let hashed = poolbill_ledger::merkle::check_index(store.as_ref()).map_err(damaged(format!("checking the Merkle index of {name}")))?;
            // The tag index too: the questions about one resource or month read it alone.
            let tagged = poolbill_ledger::check_tags(store.as_ref()).map_err(damaged(format!("checking the tag index of {name}")))?;
            if let Some(digest) = &args.digest {
                // Every event's leaf from the events themselves, as for a log file.
                let leaves = store
                    .read_all(1)
                    .map(|envelope| {
                        let envelope = envelope.map_err(|e| damaged(format!("reading {name}"))(e))?;
                        poolbill_projections::leaf_hash(&envelope).map_err(|e| damaged(format!("reading {name}"))(e))
                    })
                    .collect::<Result<Vec<_>, Failure>>()?;
                digest_said = Some(crate::merkle::check_digest(&name, &leaves, digest, args.public_key.as_deref())?);
            }
            // An older build's snapshots are never used (the log is replayed instead): said, not damage.
            let older = match checked.other_format.as_slice() {
                [] => String::new(),
                others => format!(" ({} of a format this build does not read ignored: {others:?} as (position, format))", others.len()),
            };
            print_out(&format!(
                "{} streams, {} command records, {} snapshots checked{older}, the Merkle index checked through position {hashed}, the tag index through position {tagged}\n",
                report.streams,
                report.commands,
                checked.sound.len()
            ))?;
            (checked.projections.events, checked.projections.last_instant)
        }
        (None, Some(log)) => {
            let name = log.display();
            // Read and checked whole (checksums, order, the end line and its root).
            let (envelopes, leaves) = crate::merkle::log_leaves(log).map_err(|e| match e {
                Failure::Input(e) => Failure::Damaged(e),
                other => other,
            })?;
            let projections = fold(&envelopes, Upto::All).map_err(|e| match e {
                Failure::Input(e) => damaged(format!("{name}: cannot be replayed"))(e),
                other => other,
            })?;
            if let Some(digest) = &args.digest {
                digest_said = Some(crate::merkle::check_digest(&log.display().to_string(), &leaves, digest, args.public_key.as_deref())?);
            }
            (projections.events, projections.last_instant)
        }
        (None, None) => return Err(Failure::Input(format!("verify needs --store DIR, --postgres URL (or {POSTGRES_ENV}) or a log file").into())),
    };
    let said = digest_said.map_or(String::new(), |said| format!("; {said}"));
    print_out(&format!("ok: {events} events, the last at {}{said}\n", last.map_or("-".to_string(), |t| t.to_rfc3339())))
}
