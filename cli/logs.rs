//! The tools that read a portable log (`run --export`): replay, audit, explain, diff, bills and
//! timeline. A log is read and checked whole before anything is derived from it.

use crate::args::Args;
use crate::{format, parse_instant, print_out, table, to_json, Failure, USAGE};
use poolbill_projections::Projections;
use poolbill_replay::rerun::{commands, rerun, to_envelopes, WhatIf};
use poolbill_replay::{audit as audit_log, bills as month, diff as diff_logs, explain as explain_log, fold_with, jsonl, timeline as draw, Upto};
use poolbill_store::Envelope;
use std::io::IsTerminal;

fn load(path: &str) -> Result<Vec<Envelope>, Failure> {
    jsonl::read_file(std::path::Path::new(path)).map_err(|e| Failure::Input(format!("{path}: {e}")))
}

/// Fold a log, showing progress on a terminal when it is long.
fn fold(envelopes: &[Envelope], upto: Upto) -> Result<Projections, Failure> {
    let total = envelopes.len() as u64;
    let show = std::io::stderr().is_terminal() && total >= 20_000;
    let step = (total / 100).max(1);
    let projections = fold_with(jsonl::as_results(envelopes), upto, |position| {
        if show && (position % step == 0 || position == total) {
            eprint!("\rreplaying {position}/{total} events ({}%)", position * 100 / total);
        }
    })
    .map_err(|e| Failure::Input(e.to_string()))?;
    if show {
        eprintln!();
    }
    Ok(projections)
}

fn what_if(path: &str) -> Result<WhatIf, Failure> {
    let text = std::fs::read_to_string(path).map_err(|e| Failure::Input(format!("cannot read {path}: {e}")))?;
    let (policy, catalog) = poolbill_scenario::parse_policy_file(&text).map_err(|e| Failure::Input(format!("{path}: {e}")))?;
    Ok(WhatIf { policy, catalog: catalog.into_iter().collect() })
}

/// The log's commands re-run under `what_if`, as a log of its own.
fn rerun_under(envelopes: &[Envelope], what_if: &WhatIf) -> Vec<Envelope> {
    let Some(until) = envelopes.last().map(|e| e.at) else { return Vec::new() };
    to_envelopes(&rerun(&commands(envelopes), until, what_if).envelopes)
}

fn upto(args: &Args) -> Result<Upto, Failure> {
    match (args.get("at"), args.get("upto")) {
        (Some(_), Some(_)) => Err(Failure::Input("give --at or --upto, not both".into())),
        (Some(at), None) => Ok(Upto::Instant(parse_instant("at", at)?)),
        (None, Some(seq)) => seq.parse().map(Upto::Position).map_err(|_| Failure::Input(format!("--upto: {seq:?} is not a log position"))),
        (None, None) => Ok(Upto::All),
    }
}

pub fn replay(args: &[String]) -> Result<(), Failure> {
    let args = Args::parse(args, &["at", "upto", "format", "policy"], USAGE)?;
    let envelopes = load(args.file("a log file", USAGE)?)?;
    let format = format(args.get("format"), &["table", "json"])?;
    let upto = upto(&args)?;
    let envelopes = match args.get("policy") {
        Some(policy) => rerun_under(&envelopes, &what_if(policy)?),
        None => envelopes,
    };
    let document = fold(&envelopes, upto)?.document();
    print_out(&match format {
        "json" => to_json(&document)?,
        _ => table::render(&document),
    })
}

pub fn audit(args: &[String]) -> Result<(), Failure> {
    let args = Args::parse(args, &["charged", "format"], USAGE)?;
    let envelopes = load(args.file("a log file", USAGE)?)?;
    let format = format(args.get("format"), &["table", "json"])?;
    let path = args.get("charged").ok_or_else(|| Failure::Input(format!("audit needs --charged CHARGED.json\n{USAGE}")))?;
    let text = std::fs::read_to_string(path).map_err(|e| Failure::Input(format!("cannot read {path}: {e}")))?;
    let charged = audit_log::parse_charged(&text).map_err(|e| Failure::Input(format!("{path}: {e}")))?;
    let report = audit_log::audit(&envelopes, &charged);
    print_out(&match format {
        "json" => to_json(&report)?,
        _ => report.to_text(),
    })?;
    if report.all_match() {
        Ok(())
    } else {
        Err(Failure::Differs)
    }
}

pub fn explain(args: &[String]) -> Result<(), Failure> {
    let args = Args::parse(args, &["resource", "at", "bill", "format"], USAGE)?;
    let envelopes = load(args.file("a log file", USAGE)?)?;
    let format = format(args.get("format"), &["text", "json"])?;
    let explanations = match (args.get("bill"), args.get("resource"), args.get("at")) {
        (Some(n), None, None) => {
            let n: usize = n.parse().map_err(|_| Failure::Input(format!("--bill: {n:?} is not a bill number (1, 2, …)")))?;
            vec![explain_log::explain_bill(&envelopes, n).map_err(|e| Failure::Input(e.to_string()))?]
        }
        (None, Some(resource), Some(at)) => {
            explain_log::explain_at(&envelopes, resource, parse_instant("at", at)?).map_err(|e| Failure::Input(e.to_string()))?
        }
        _ => return Err(Failure::Input(format!("explain needs --bill N, or --resource ID with --at INSTANT\n{USAGE}"))),
    };
    print_out(&match format {
        "json" => to_json(&explanations)?,
        _ => explanations.iter().map(|e| e.to_text()).collect::<Vec<_>>().join("\n"),
    })
}

pub fn diff(args: &[String]) -> Result<(), Failure> {
    let args = Args::parse(args, &["at", "policy", "format"], USAGE)?;
    let envelopes = load(args.file("a log file", USAGE)?)?;
    let format = format(args.get("format"), &["table", "json"])?;
    let (first, second, names) = match (args.get("at"), args.get("policy")) {
        (Some(at), None) => {
            let t = parse_instant("at", at)?;
            (fold(&envelopes, Upto::Instant(t))?, fold(&envelopes, Upto::All)?, (format!("as known at {}", t.to_rfc3339()), "as known now".to_string()))
        }
        (None, Some(policy)) => {
            let other = rerun_under(&envelopes, &what_if(policy)?);
            (fold(&envelopes, Upto::All)?, fold(&other, Upto::All)?, ("as charged".to_string(), format!("under {policy}")))
        }
        _ => return Err(Failure::Input(format!("diff needs --at INSTANT or --policy POLICY.json\n{USAGE}"))),
    };
    let d = diff_logs::diff(&first, &second);
    print_out(&match format {
        "json" => to_json(&d)?,
        _ => d.to_text(&names.0, &names.1),
    })
}

pub fn bills(args: &[String]) -> Result<(), Failure> {
    let args = Args::parse(args, &["month", "format"], USAGE)?;
    let envelopes = load(args.file("a log file", USAGE)?)?;
    let format = format(args.get("format"), &["table", "json", "csv"])?;
    let which = args.get("month").ok_or_else(|| Failure::Input(format!("bills needs --month YYYY-MM\n{USAGE}")))?;
    let bills = month::month_bills(&fold(&envelopes, Upto::All)?, which).map_err(|e| Failure::Input(format!("--month: {e}")))?;
    print_out(&match format {
        "json" => to_json(&bills.to_json())?,
        "csv" => bills.to_csv(),
        _ => bills.to_table(),
    })
}

pub fn timeline(args: &[String]) -> Result<(), Failure> {
    let args = Args::parse(args, &["resource", "svg"], USAGE)?;
    let envelopes = load(args.file("a log file", USAGE)?)?;
    let resource = args.get("resource").ok_or_else(|| Failure::Input(format!("timeline needs --resource ID\n{USAGE}")))?;
    let out = args.get("svg").ok_or_else(|| Failure::Input(format!("timeline needs --svg OUT.svg\n{USAGE}")))?;
    let picture = draw::timeline(&envelopes, resource).map_err(Failure::Input)?;
    std::fs::write(out, draw::render_svg(&picture)).map_err(|e| Failure::Runtime(format!("writing {out}: {e}")))
}

/// `verify --store DIR` or `verify LOG.jsonl`: every event read back, checksums, positions,
/// stream versions, the high-water mark, and a full replay of the projections.
pub fn verify(args: &[String]) -> Result<(), Failure> {
    let args = Args::parse(args, &["store"], USAGE)?;
    let damaged = |e: String| {
        eprintln!("poolbill: DAMAGED: {e}");
        Failure::Differs
    };
    let (events, last) = match (args.get("store"), args.positional.as_slice()) {
        (Some(dir), []) => {
            if !std::path::Path::new(dir).join("db").is_file() {
                return Err(Failure::Input(format!("{dir} is not a poolbill store")));
            }
            let store = poolbill_store::Store::open(dir).map_err(|e| damaged(e.to_string()))?;
            let report = store.verify().map_err(|e| damaged(e.to_string()))?;
            let projections = poolbill_replay::replay(&store, Upto::All).map_err(|e| damaged(e.to_string()))?;
            print_out(&format!("{} streams, {} command records\n", report.streams, report.commands))?;
            (projections.events, projections.last_instant)
        }
        (None, [log]) => {
            let envelopes = jsonl::read_file(std::path::Path::new(log)).map_err(|e| damaged(format!("{log}: {e}")))?;
            let projections = fold(&envelopes, Upto::All).map_err(|_| damaged(format!("{log}: cannot be replayed")))?;
            (projections.events, projections.last_instant)
        }
        _ => return Err(Failure::Input(format!("verify needs --store DIR or a log file\n{USAGE}"))),
    };
    print_out(&format!("ok: {events} events, the last at {}\n", last.map_or("-".to_string(), |t| t.to_rfc3339())))
}
