//! `audit` and `diff` read the log as a stream (issue 8). Each is checked here against a
//! reference model that holds the whole log, as both did before: the re-run's bills and the
//! log's sorted and compared whole (audit), and two folds keeping every bill, keyed and compared
//! (diff). On every fixture, from the exported log and from its envelopes (and diff as written,
//! its lists on temporary files, byte for byte the in-memory diff's), and with differences
//! planted in the log: a line's amount changed, a line dropped or doubled, lines of one instant
//! reordered (as a merged log of shards records them).

mod common;

use common::*;
use poolbill_domain::{BillLine, Event, Policy};
use poolbill_projections::{BillView, Projections};
use poolbill_replay::audit::{audit, audit_log, parse_charged, Charged};
use poolbill_replay::diff::{diff_log, write_diff_log, Against, Diff, DiffFormat};
use poolbill_replay::rerun::{commands, rerun, to_envelopes, WhatIf};
use poolbill_replay::source::{Envelopes, LogFile};
use poolbill_replay::{fold, jsonl, Upto};
use poolbill_store::Envelope;
use rust_decimal::Decimal;
use std::collections::BTreeMap;

/// The integrity finding of the reference audit: the re-run's lines and the log's, each sorted
/// by start and resource (stably), compared whole.
fn reference_integrity(envelopes: &[Envelope]) -> Vec<String> {
    let mut recorded: Vec<BillLine> = envelopes
        .iter()
        .filter_map(|e| match poolbill_projections::event_of(e) {
            Ok(Event::Charged { line }) => Some(line),
            _ => None,
        })
        .collect();
    let mut computed: Vec<BillLine> = match envelopes.last() {
        Some(last) => rerun(&commands(envelopes), last.at, &WhatIf::default()).projections.bills.into_iter().map(|b| b.line).collect(),
        None => Vec::new(),
    };
    for lines in [&mut recorded, &mut computed] {
        lines.sort_by(|a, b| (a.start, &a.resource).cmp(&(b.start, &b.resource)));
    }
    if recorded == computed {
        return Vec::new();
    }
    let differing = recorded.iter().zip(&computed).position(|(a, b)| a != b).unwrap_or(recorded.len().min(computed.len()));
    let line = recorded
        .get(differing)
        .or(computed.get(differing))
        .map_or("-".to_string(), |l| format!("{} {}", l.resource, poolbill_domain::time::to_beijing(l.start).to_rfc3339()));
    vec![format!(
        "the log records {} bill lines and its commands give {}; they first differ at line {} ({line})",
        recorded.len(),
        computed.len(),
        differing + 1
    )]
}

/// The reference diff: both derivations' bills kept, keyed by resource, item, mode, start, end
/// and place among equals (in the document's order), compared key by key.
fn reference_diff(first: &Projections, second: &Projections) -> Diff {
    type Key = (String, &'static str, &'static str, String, String, usize);
    let keyed = |p: &Projections| {
        let mut seen: BTreeMap<(String, &'static str, &'static str, String, String), usize> = BTreeMap::new();
        let mut out: BTreeMap<Key, BillView> = BTreeMap::new();
        for bill in p.document().bills {
            let n = seen.entry((bill.resource.clone(), bill.item, bill.mode, bill.start.clone(), bill.end.clone())).or_insert(0);
            out.insert((bill.resource.clone(), bill.item, bill.mode, bill.start.clone(), bill.end.clone(), *n), bill);
            *n += 1;
        }
        out
    };
    let total = |p: &Projections| p.bills.iter().map(|b| b.line.amounts.payable).sum::<Decimal>();
    let (a, b) = (keyed(first), keyed(second));
    let same =
        |x: &BillView, y: &BillView| (&x.list_price, &x.discount, &x.round_off, &x.payable) == (&y.list_price, &y.discount, &y.round_off, &y.payable);
    let fmt = poolbill_domain::money::fmt_cents;
    let mut d = Diff {
        added: b.iter().filter(|(k, _)| !a.contains_key(*k)).map(|(_, v)| v.clone()).collect(),
        removed: Vec::new(),
        changed: Vec::new(),
        unchanged: 0,
        first_total: fmt(total(first)),
        second_total: fmt(total(second)),
        difference: fmt(total(second) - total(first)),
    };
    for (key, line) in &a {
        match b.get(key) {
            None => d.removed.push(line.clone()),
            Some(other) if same(line, other) => d.unchanged += 1,
            Some(other) => d.changed.push([line.clone(), other.clone()]),
        }
    }
    d
}

fn reference_diff_against(envelopes: &[Envelope], against: &Against) -> Diff {
    let all = fold(jsonl::as_results(envelopes), Upto::All).unwrap();
    match against {
        Against::Instant(t) => reference_diff(&fold(jsonl::as_results(envelopes), Upto::Instant(*t)).unwrap(), &all),
        Against::WhatIf(what_if) => {
            let other = match envelopes.last() {
                Some(last) => to_envelopes(&rerun(&commands(envelopes), last.at, what_if).envelopes),
                None => Vec::new(),
            };
            reference_diff(&all, &fold(jsonl::as_results(&other), Upto::All).unwrap())
        }
    }
}

/// What-ifs of the kinds `diff --policy` takes: a shorter grace, a dearer hour, both.
fn what_ifs() -> Vec<WhatIf> {
    let policy = |text: &str| {
        let (policy, catalog) = poolbill_scenario::parse_policy_file(text).unwrap();
        WhatIf { policy, catalog: catalog.into_iter().collect() }
    };
    vec![
        WhatIf::default(),
        policy(r#"{"levels": {"standard": {"grace_days": 5, "retention_days": 15}}}"#),
        policy(r#"{"catalog": [{"spec": "modelarts.vm.cpu.8ud", "hourly": "7.00", "monthly": "1750.00"}]}"#),
        policy(
            r#"{"levels": {"standard": {"grace_days": 1, "retention_days": 2}, "gold": {"grace_days": 3, "retention_days": 3}},
                "catalog": [{"spec": "modelarts.vm.cpu.8u.public", "hourly": "1.11"}]}"#,
        ),
    ]
}

#[test]
fn audit_and_diff_of_the_streamed_log_equal_the_whole_log_reference_on_every_fixture() {
    let mut instants_tried = 0;
    for dir in fixtures() {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let log = dir.join("log.jsonl");
        let envelopes = jsonl::read_file(&log).unwrap();
        let charged = parse_charged(&std::fs::read_to_string(dir.join("CHARGED.json")).unwrap()).unwrap();
        let report = audit_log(&LogFile::new(&log), &charged).unwrap();
        assert_eq!(report, audit(&envelopes, &charged), "{name}: the same report from the file and from the envelopes");
        assert_eq!(report.integrity, reference_integrity(&envelopes), "{name}");
        assert!(report.integrity.is_empty(), "{name}: a fixture's log is what its commands give");

        // As known at instants the log records (about 30 of them, spread over it; and before
        // it, and after it), against now.
        let mut instants: Vec<_> = envelopes.iter().map(|e| e.at).collect();
        instants.dedup();
        let step = instants.len().div_ceil(30);
        let mut instants: Vec<_> = instants.into_iter().step_by(step).collect();
        let (first, last) = (envelopes[0].at, envelopes[envelopes.len() - 1].at);
        instants.extend([first - chrono::Duration::seconds(1), last + chrono::Duration::days(1)]);
        let mut against: Vec<Against> = instants.into_iter().map(Against::Instant).collect();
        against.extend(what_ifs().into_iter().map(Against::WhatIf));
        for against in &against {
            instants_tried += usize::from(matches!(against, Against::Instant(_)));
            let streamed = diff_log(&LogFile::new(&log), against).unwrap();
            assert_eq!(streamed, reference_diff_against(&envelopes, against), "{name}: {against:?}");
            let from_envelopes = diff_log(&Envelopes(&envelopes), against).unwrap_or_else(|never| match never {});
            assert_eq!(from_envelopes, streamed, "{name}: {against:?}");
            // Written with its lists on temporary files: the very bytes of the in-memory diff.
            for format in [DiffFormat::Json, DiffFormat::Text { first: "then", second: "now" }] {
                let mut written = Vec::new();
                write_diff_log(&LogFile::new(&log), against, format, &mut written).unwrap().unwrap();
                let expected = match format {
                    DiffFormat::Json => serde_json::to_string_pretty(&streamed).unwrap() + "\n",
                    DiffFormat::Text { first, second } => streamed.to_text(first, second),
                };
                assert!(written == expected.as_bytes(), "{name}: {against:?}: written as {format:?}");
            }
        }
    }
    assert!(instants_tried > 100, "the instants of every fixture's log were tried ({instants_tried})");
}

/// `envelopes` with the `k`-th charged line changed by `change` (its payload encoded again).
fn with_line(envelopes: &[Envelope], k: usize, change: impl Fn(&mut BillLine)) -> Vec<Envelope> {
    let mut seen = 0;
    envelopes
        .iter()
        .map(|e| match poolbill_projections::event_of(e) {
            Ok(Event::Charged { mut line }) => {
                seen += 1;
                if seen - 1 != k {
                    return e.clone();
                }
                change(&mut line);
                let (_, payload) = Event::Charged { line }.encode();
                Envelope { payload: payload.into(), ..e.clone() }
            }
            _ => e.clone(),
        })
        .collect()
}

/// The positions (indexes into the log) of the charged lines.
fn charged_at(envelopes: &[Envelope]) -> Vec<usize> {
    envelopes.iter().enumerate().filter(|(_, e)| e.event_type == "charged").map(|(i, _)| i).collect()
}

#[test]
fn a_planted_difference_is_found_where_the_sorted_lines_first_differ() {
    let none = Charged { bills: Vec::new(), total: None };
    let mut planted = 0;
    let mut reordered_clean = 0;
    for name in ["arrears-grace-frozen-recovery", "package-consumed-first", "subscription-renewal", "ch3-scale-then-convert", "bill-check-ch6"] {
        let envelopes = jsonl::read_file(&fixtures_dir().join(name).join("log.jsonl")).unwrap();
        let lines = charged_at(&envelopes);
        assert!(lines.len() >= 2, "{name}: the fixture charges lines");
        let mut cases: Vec<(String, Vec<Envelope>, bool)> = Vec::new();
        for k in [0, lines.len() / 2, lines.len() - 1] {
            let cent = Decimal::new(1, 2);
            cases.push((format!("line {k} a cent dearer"), with_line(&envelopes, k, |l| l.amounts.payable += cent), true));
            cases.push((format!("line {k} moved an hour"), with_line(&envelopes, k, |l| l.start -= chrono::Duration::hours(1)), true));
            let mut dropped = envelopes.clone();
            dropped.remove(lines[k]);
            cases.push((format!("line {k} dropped"), dropped, true));
            let mut doubled = envelopes.clone();
            doubled.insert(lines[k], envelopes[lines[k]].clone());
            cases.push((format!("line {k} doubled"), doubled, true));
        }
        // Two neighbouring lines swapped: a difference in log order; in the contract's order
        // only if they share start and resource (a merged log of shards swaps the others).
        for pair in lines.windows(2) {
            let mut swapped = envelopes.clone();
            swapped.swap(pair[0], pair[1]);
            cases.push((format!("lines at {} and {} swapped", pair[0], pair[1]), swapped, false));
        }
        for (what, log, differs) in cases {
            let report = audit(&log, &none);
            let expected = reference_integrity(&log);
            assert_eq!(report.integrity, expected, "{name}: {what}");
            if differs {
                assert_eq!(report.integrity.len(), 1, "{name}: {what}: found");
                planted += 1;
            } else if expected.is_empty() {
                reordered_clean += 1;
            }
        }
    }
    assert!(planted >= 60 && reordered_clean > 0, "{planted} planted differences, {reordered_clean} reorderings that sort the same");
}

#[test]
fn diff_against_a_plain_rerun_shows_exactly_the_planted_line() {
    let envelopes = jsonl::read_file(&fixtures_dir().join("package-consumed-first").join("log.jsonl")).unwrap();
    let lines = charged_at(&envelopes);
    let plain = Against::WhatIf(WhatIf::default());
    assert!(diff_log(&Envelopes(&envelopes), &plain).unwrap_or_else(|never| match never {}).is_empty(), "a log is its commands' re-run");
    for k in [0, lines.len() - 1] {
        let dearer = with_line(&envelopes, k, |l| l.amounts.payable += Decimal::ONE);
        let d = diff_log(&Envelopes(&dearer), &plain).unwrap_or_else(|never| match never {});
        assert_eq!((d.added.len(), d.removed.len(), d.changed.len()), (0, 0, 1), "line {k}: {d:?}");
        let [charged, rerun] = &d.changed[0];
        assert_eq!(charged.event, lines[k] as u64 + 1, "the changed line is the planted one");
        assert_eq!(charged.payable.parse::<Decimal>().unwrap() - rerun.payable.parse::<Decimal>().unwrap(), Decimal::ONE);
        assert_eq!(d.difference, "-1.00");
        assert_eq!(d, reference_diff_against(&dearer, &plain));

        let mut dropped = envelopes.clone();
        dropped.remove(lines[k]);
        let d = diff_log(&Envelopes(&dropped), &plain).unwrap_or_else(|never| match never {});
        assert_eq!((d.added.len(), d.removed.len(), d.changed.len()), (1, 0, 0), "line {k} dropped: {d:?}");
        assert_eq!(d, reference_diff_against(&dropped, &plain));
    }
    // The policy already in force, as a what-if, changes nothing (R17: it leaves no trace).
    let same = Policy::default();
    assert!(diff_log(&Envelopes(&envelopes), &Against::WhatIf(WhatIf { policy: Some(same), ..WhatIf::default() }))
        .unwrap_or_else(|never| match never {})
        .is_empty());
}

/// A log whose clock moved by itself (a live clock's settlements) past the instant of a command
/// that came after: the command is refused in the log (R1, too late), but a re-run, whose clock
/// moves only at commands, accepts it. audit and diff must report that as the whole-log re-run
/// does, though they let their re-run keep pace with the log (they notice it ran ahead of the
/// command, and run again at the commands' pace).
#[test]
fn a_late_command_after_a_clock_that_moved_by_itself_is_audited_as_the_whole_log_re_run_does() {
    use poolbill_ledger::{Ledger, Step};
    use poolbill_testkit::{cmd, t};
    let mut log = Vec::new();
    let mut record = |step: Step| log.extend(step.events.into_iter().map(|e| (step.at, step.command_id.clone(), e)));
    let mut ledger = Ledger::new();
    let id = |s: &str| Some(s.to_string());
    ledger.execute(id("price"), t("2023-04-01T08:00:00+08:00"), &cmd::seed_price(), None, &mut record);
    ledger.execute(id("open"), t("2023-04-01T08:00:00+08:00"), &cmd::open_account("a", "100.00"), None, &mut record);
    ledger.execute(id("buy"), t("2023-04-01T08:00:00+08:00"), &cmd::purchase("a", "p1").build(), None, &mut record);
    ledger.advance(t("2023-04-01T14:00:00+08:00"), &mut record);
    ledger.execute(id("late"), t("2023-04-01T10:30:00+08:00"), &cmd::top_up("a", "5.00"), None, &mut record);
    ledger.execute(id("after"), t("2023-04-01T15:00:00+08:00"), &cmd::top_up("a", "1.00"), None, &mut record);
    ledger.advance(t("2023-04-01T18:00:00+08:00"), &mut record);
    let envelopes = to_envelopes(&log);
    assert!(envelopes.iter().any(|e| e.event_type == "command_rejected"), "the late top-up is refused in the log");

    let none = Charged { bills: Vec::new(), total: None };
    let report = audit(&envelopes, &none);
    assert_eq!(report.integrity, reference_integrity(&envelopes));
    assert_eq!(report.integrity.len(), 1, "the re-run accepts the late top-up: every later line's balance differs");
    for what_if in what_ifs() {
        let against = Against::WhatIf(what_if);
        let d = diff_log(&Envelopes(&envelopes), &against).unwrap_or_else(|never| match never {});
        assert_eq!(d, reference_diff_against(&envelopes, &against), "{against:?}");
    }
}

/// A re-run kept in pace with its log, command by command and instant by instant, takes the
/// steps `rerun` takes for the whole list, in the same order — and is never behind the log: by
/// each event it has given at least as many events as the log holds up to it (so the log's
/// lines never wait long for their pair).
#[test]
fn a_re_run_kept_in_pace_with_its_log_takes_rerun_s_steps_and_is_never_behind() {
    use poolbill_ledger::Step;
    use poolbill_replay::rerun::{Recorded, Rerunner};
    for dir in fixtures() {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let envelopes = jsonl::read_file(&dir.join("log.jsonl")).unwrap();
        let until = envelopes.last().unwrap().at;
        let expected = rerun(&commands(&envelopes), until, &WhatIf::default()).envelopes;
        let what_if = WhatIf::default();
        let mut paced = Rerunner::new(Projections::live(), &what_if);
        let mut taken = Vec::new();
        let record = |taken: &mut Vec<_>, step: Step| taken.extend(step.events.into_iter().map(|e| (step.at, step.command_id.clone(), e)));
        for envelope in &envelopes {
            let event = poolbill_projections::event_of(envelope).unwrap();
            if let Some(command) = Recorded::of_event(envelope.command_id.clone(), envelope.at, &event) {
                assert!(paced.command_in_step(&command, |step| record(&mut taken, step)), "{name}: position {}", envelope.position);
            }
            paced.keep_pace(envelope.at, |step| record(&mut taken, step));
            let given = taken.len();
            assert!(given as u64 >= envelope.position, "{name}: at position {} the re-run has given {given} events", envelope.position);
        }
        paced.finish(until, |step| record(&mut taken, step));
        assert!(taken == expected, "{name}: the paced re-run's steps are rerun's");
    }
}
