//! The streamed document is byte for byte the in-memory one, for every fixture's log, whole
//! and as of instants on both sides of its events (late renewals included: R3 counts a renewal
//! after expiry from the old end, so its line starts before lines already written).

use poolbill_replay::document::write_document;
use poolbill_replay::{fold, jsonl, Upto};
use poolbill_store::Envelope;
use std::path::PathBuf;

fn fixture_logs() -> Vec<(String, Vec<Envelope>)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures");
    let mut logs: Vec<(String, Vec<Envelope>)> = std::fs::read_dir(&root)
        .unwrap()
        .filter_map(|e| {
            let dir = e.unwrap().path();
            let log = dir.join("log.jsonl");
            log.is_file().then(|| (dir.file_name().unwrap().to_string_lossy().to_string(), jsonl::read_file(&log).unwrap()))
        })
        .collect();
    logs.sort_by(|a, b| a.0.cmp(&b.0));
    logs
}

fn in_memory(envelopes: &[Envelope], upto: Upto) -> String {
    let document = fold(jsonl::as_results(envelopes), upto).unwrap().document();
    serde_json::to_string_pretty(&document).unwrap() + "\n"
}

fn streamed(envelopes: &[Envelope], upto: Upto) -> String {
    let mut out = Vec::new();
    write_document(jsonl::as_results(envelopes), upto, &mut out, |_| {}).unwrap();
    String::from_utf8(out).unwrap()
}

#[test]
fn every_fixture_streams_the_same_document_whole_and_as_of_each_instant() {
    let logs = fixture_logs();
    assert!(logs.len() >= 26, "the fixtures' logs are found");
    let mut late_seen = false;
    for (name, envelopes) in &logs {
        assert_eq!(streamed(envelopes, Upto::All), in_memory(envelopes, Upto::All), "{name}: the whole log");
        let mut instants: Vec<_> = envelopes.iter().map(|e| e.at).collect();
        instants.dedup();
        for at in instants.iter().step_by(instants.len().div_ceil(12).max(1)) {
            assert_eq!(streamed(envelopes, Upto::Instant(*at)), in_memory(envelopes, Upto::Instant(*at)), "{name}: as of {at}");
        }
        // A line that starts before a line recorded earlier is the late case the merge handles.
        let starts: Vec<_> = fold(jsonl::as_results(envelopes), Upto::All).unwrap().bills.iter().map(|b| b.line.start).collect();
        late_seen |= starts.windows(2).any(|w| w[1] + chrono::Duration::hours(1) < w[0]);
    }
    assert!(late_seen, "some fixture has a line recorded after lines that start later than it (a late renewal)");
}

#[test]
fn an_empty_log_streams_an_empty_document() {
    assert_eq!(streamed(&[], Upto::All), in_memory(&[], Upto::All));
}

#[test]
fn a_renewal_after_expiry_is_merged_in_before_the_lines_written_since_its_start_r3() {
    // Given an on-demand pool billed every hour and a month's subscription that expires on
    // 2023-05-01 and is frozen a fortnight later: renewed on 2023-05-20, its line starts at the
    // old end (R3), weeks before hourly lines already written out.
    use poolbill_testkit::{cmd, Given};
    let given = Given::new()
        .at("2023-04-01T10:00:00+08:00", cmd::seed_price())
        .at("2023-04-01T10:00:00+08:00", cmd::open_account("acct-1", "100000.00"))
        .at("2023-04-01T10:00:00+08:00", cmd::purchase("acct-1", "sub").monthly(1).build())
        .at("2023-04-01T10:00:00+08:00", cmd::purchase("acct-1", "od").build())
        .at(
            "2023-05-20T10:00:00+08:00",
            poolbill_domain::Command::Renew { pool: "sub".into(), term: poolbill_domain::Term::Months(1), align_day: None },
        );
    let envelopes = given.log("2023-05-21T00:00:00+08:00");
    let mut out = Vec::new();
    let written = write_document(jsonl::as_results(&envelopes), Upto::All, &mut out, |_| {}).unwrap();
    assert_eq!(written.late, 1, "the renewal line is the late one");
    assert_eq!(String::from_utf8(out).unwrap(), in_memory(&envelopes, Upto::All));
}

#[test]
fn a_portable_log_streams_the_same_document_and_a_damaged_one_shows_nothing() {
    use poolbill_replay::document::{write_log_document, LogDocumentError};
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/subscription-lifecycle/log.jsonl");
    let text = std::fs::read_to_string(&root).unwrap();
    let envelopes = jsonl::read_file(&root).unwrap();
    for upto in [Upto::All, Upto::Instant(envelopes[envelopes.len() / 2].at)] {
        let mut out = Vec::new();
        write_log_document(text.as_bytes(), upto, &mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), in_memory(&envelopes, upto));
    }
    // A line changed after the instant asked for is still found: the whole log is checked
    // before anything is shown.
    let lines: Vec<&str> = text.lines().collect();
    let last_event = lines.len() - 2;
    let damaged: String = lines
        .iter()
        .enumerate()
        .map(|(i, l)| if i == last_event { l.replacen("\"version\":", "\"version\":9", 1) } else { l.to_string() } + "\n")
        .collect();
    let mut out = Vec::new();
    let early = Upto::Instant(envelopes[0].at);
    match write_log_document(damaged.as_bytes(), early, &mut out) {
        Err(LogDocumentError::Log(e)) => assert_eq!(e.line, last_event as u64 + 1, "{e}"),
        other => panic!("a damaged log is refused naming its line, not {other:?}"),
    }
    assert!(out.is_empty(), "nothing is shown of a damaged log");
    // A log cut short (no end line) is refused too.
    let cut: String = lines[..lines.len() - 1].iter().map(|l| format!("{l}\n")).collect();
    assert!(matches!(write_log_document(cut.as_bytes(), Upto::All, &mut Vec::new()), Err(LogDocumentError::Log(_))));
}

#[test]
fn every_fixture_log_read_as_it_is_folded_gives_the_same_document_whole_and_as_of_instants_and_positions() {
    use poolbill_replay::document::{write_log_document, LogDocumentError};
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures");
    let mut long = 0;
    for (name, envelopes) in fixture_logs() {
        let text = std::fs::read_to_string(root.join(&name).join("log.jsonl")).unwrap();
        let mut uptos = vec![Upto::All];
        let mut instants: Vec<_> = envelopes.iter().map(|e| e.at).collect();
        instants.dedup();
        uptos.extend(instants.iter().step_by(instants.len().div_ceil(6).max(1)).map(|at| Upto::Instant(*at)));
        // Positions on both sides of where the reader hands a batch of 1,024 events to the fold.
        uptos.extend([1, 1023, 1024, 1025, 2048].into_iter().filter(|p| *p <= envelopes.len() as u64).map(Upto::Position));
        long += usize::from(envelopes.len() > 1024);
        for upto in uptos {
            let mut out = Vec::new();
            write_log_document(text.as_bytes(), upto, &mut out).unwrap();
            assert_eq!(String::from_utf8(out).unwrap(), in_memory(&envelopes, upto), "{name}: as of {upto:?}");
        }
        // Damage near the end is found however early the document stops.
        let lines: Vec<&str> = text.lines().collect();
        let damaged_line = lines.len() - 3;
        let damaged: String = lines
            .iter()
            .enumerate()
            .map(|(i, l)| if i == damaged_line { l.replacen("\"at\":\"", "\"at\":\"x", 1) } else { l.to_string() } + "\n")
            .collect();
        let mut out = Vec::new();
        match write_log_document(damaged.as_bytes(), Upto::Position(1), &mut out) {
            Err(LogDocumentError::Log(e)) => assert_eq!(e.line, damaged_line as u64 + 1, "{name}: {e}"),
            other => panic!("{name}: a damaged log is refused naming its line, not {other:?}"),
        }
        assert!(out.is_empty(), "{name}: nothing is shown of a damaged log");
    }
    assert!(long >= 2, "some fixture logs are longer than a batch");
}
