//! The tools that read a portable log (`run --export`): replay, audit, explain, diff, bills and
//! timeline. A log is read and checked whole before anything is derived from it.

use crate::args::{AuditArgs, BillsArgs, BillsFormat, DiffArgs, ExplainArgs, ReplayArgs, TableFormat, TextFormat, TimelineArgs, VerifyArgs};
use crate::failure::{damaged, input, runtime, Failure};
use crate::{print_out, progress, table, to_json};
use poolbill_projections::Projections;
use poolbill_replay::rerun::{commands, rerun, to_envelopes, WhatIf};
use poolbill_replay::{audit as audit_log, bills as month, diff as diff_logs, explain as explain_log, fold_with, jsonl, timeline as draw, Upto};
use poolbill_store::Envelope;
use std::path::Path;

fn load(path: &Path) -> Result<Vec<Envelope>, Failure> {
    let envelopes = jsonl::read_file(path).map_err(input(format!("{} is not a sound log", path.display())))?;
    tracing::info!(events = envelopes.len(), log = %path.display(), "log read and checked");
    Ok(envelopes)
}

/// Fold a log, showing progress on a terminal when it is long.
fn fold(envelopes: &[Envelope], upto: Upto) -> Result<Projections, Failure> {
    let bar = progress::bar(envelopes.len() as u64, "replaying");
    let projections = fold_with(jsonl::as_results(envelopes), upto, |position| bar.set_position(position));
    bar.finish_and_clear();
    projections.map_err(|e| Failure::Input(e.into()))
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
    let envelopes = load(&args.log)?;
    let upto = match (args.at, args.upto) {
        (Some(at), _) => Upto::Instant(at),
        (None, Some(position)) => Upto::Position(position),
        (None, None) => Upto::All,
    };
    let envelopes = match &args.policy {
        Some(policy) => rerun_under(&envelopes, &what_if(policy)?),
        None => envelopes,
    };
    let document = fold(&envelopes, upto)?.document();
    print_out(&match args.format {
        TableFormat::Json => to_json(&document)?,
        TableFormat::Table => table::render(&document),
    })
}

pub fn audit(args: AuditArgs) -> Result<(), Failure> {
    let envelopes = load(&args.log)?;
    let path = args.charged.display();
    let text = std::fs::read_to_string(&args.charged).map_err(input(format!("cannot read {path}")))?;
    let charged = audit_log::parse_charged(&text).map_err(input(format!("{path} is not a valid CHARGED.json")))?;
    let report = audit_log::audit(&envelopes, &charged);
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

pub fn explain(args: ExplainArgs) -> Result<(), Failure> {
    let envelopes = load(&args.log)?;
    // clap lets through `--bill N` alone, or `--resource ID` with `--at INSTANT`.
    let explanations = match (args.bill, args.resource, args.at) {
        (Some(n), _, _) => vec![explain_log::explain_bill(&envelopes, n).map_err(|e| Failure::Input(e.into()))?],
        (None, Some(resource), Some(at)) => explain_log::explain_at(&envelopes, &resource, at).map_err(|e| Failure::Input(e.into()))?,
        _ => return Err(Failure::Input("explain needs --bill N, or --resource ID with --at INSTANT".into())),
    };
    print_out(&match args.format {
        TextFormat::Json => to_json(&explanations)?,
        TextFormat::Text => explanations.iter().map(|e| e.to_text()).collect::<Vec<_>>().join("\n"),
    })
}

pub fn diff(args: DiffArgs) -> Result<(), Failure> {
    let envelopes = load(&args.log)?;
    let (first, second, names) = match (args.at, &args.policy) {
        (Some(t), _) => (
            fold(&envelopes, Upto::Instant(t))?,
            fold(&envelopes, Upto::All)?,
            (format!("as known at {}", t.to_rfc3339()), "as known now".to_string()),
        ),
        (None, Some(policy)) => {
            let other = rerun_under(&envelopes, &what_if(policy)?);
            (fold(&envelopes, Upto::All)?, fold(&other, Upto::All)?, ("as charged".to_string(), format!("under {}", policy.display())))
        }
        (None, None) => return Err(Failure::Input("diff needs --at INSTANT or --policy POLICY.json".into())),
    };
    let d = diff_logs::diff(&first, &second);
    print_out(&match args.format {
        TableFormat::Json => to_json(&d)?,
        TableFormat::Table => d.to_text(&names.0, &names.1),
    })
}

pub fn bills(args: BillsArgs) -> Result<(), Failure> {
    let envelopes = load(&args.log)?;
    let bills = month::month_bills(&fold(&envelopes, Upto::All)?, &args.month).map_err(input("--month"))?;
    print_out(&match args.format {
        BillsFormat::Json => to_json(&bills.to_json())?,
        BillsFormat::Csv => bills.to_csv(),
        BillsFormat::Table => bills.to_table(),
    })
}

pub fn timeline(args: TimelineArgs) -> Result<(), Failure> {
    let envelopes = load(&args.log)?;
    let picture = draw::timeline(&envelopes, &args.resource).map_err(|e| Failure::Input(e.into()))?;
    std::fs::write(&args.svg, draw::render_svg(&picture)).map_err(runtime(format!("writing {}", args.svg.display())))
}

/// `verify --store DIR` or `verify LOG.jsonl`: every event read back, checksums, positions,
/// stream versions, the high-water mark, and a full replay of the projections.
pub fn verify(args: VerifyArgs) -> Result<(), Failure> {
    let (events, last) = match (&args.store, &args.log) {
        (Some(dir), _) => {
            if !dir.join("db").is_file() {
                return Err(Failure::Input(format!("{} is not a poolbill store", dir.display()).into()));
            }
            let name = dir.display();
            let store = poolbill_store::Store::open(dir).map_err(damaged(format!("opening {name}")))?;
            let report = store.verify().map_err(damaged(format!("verifying {name}")))?;
            let projections = poolbill_replay::replay(&store, Upto::All).map_err(damaged(format!("replaying {name}")))?;
            print_out(&format!("{} streams, {} command records\n", report.streams, report.commands))?;
            (projections.events, projections.last_instant)
        }
        (None, Some(log)) => {
            let name = log.display();
            let envelopes = jsonl::read_file(log).map_err(damaged(format!("{name} is not a sound log")))?;
            let projections = fold(&envelopes, Upto::All).map_err(|e| match e {
                Failure::Input(e) => damaged(format!("{name}: cannot be replayed"))(e),
                other => other,
            })?;
            (projections.events, projections.last_instant)
        }
        (None, None) => return Err(Failure::Input("verify needs --store DIR or a log file".into())),
    };
    print_out(&format!("ok: {events} events, the last at {}\n", last.map_or("-".to_string(), |t| t.to_rfc3339())))
}
