//! The conformance suite: what every [`EventStore`] backend must do, run by each backend's
//! own tests against a fresh, empty store (`conformance::run_all`). Corruption detection is
//! each backend's own (what it can detect depends on how it stores bytes).

use crate::*;
use serde_json::json;

/// An instant of the suite's events.
pub fn ts(s: &str) -> Instant {
    chrono::DateTime::parse_from_rfc3339(s).expect("test instant")
}

/// An event of `event_type` on `stream` at `at`.
pub fn ev(stream: &str, event_type: &str, at: &str, payload: impl Into<Payload>) -> NewEvent {
    NewEvent { stream: stream.to_string(), event_type: event_type.to_string(), schema_version: 1, at: ts(at), payload: payload.into() }
}

/// A request without version checks; its outcome names its command id.
pub fn req(command_id: Option<&str>, events: Vec<NewEvent>) -> AppendRequest {
    AppendRequest {
        command_id: command_id.map(str::to_string),
        expected: vec![],
        events,
        outcome: json!({"ok": command_id}),
        fingerprint: command_id.map(|id| format!("request {id}")),
    }
}

/// Every event of the log.
pub fn all(store: &dyn EventStore) -> Vec<Envelope> {
    store.read_all(0).collect::<Result<Vec<_>, _>>().expect("read_all")
}

/// The record of a request that was applied now.
pub fn appended(outcome: AppendOutcome) -> CommandRecord {
    match outcome {
        AppendOutcome::Appended(r) => r,
        other => panic!("expected Appended, got {other:?}"),
    }
}

pub const T0: &str = "2024-03-01T10:00:00+01:00";
pub const T1: &str = "2024-03-01T11:00:00+01:00";
pub const T2: &str = "2024-03-01T12:00:00+01:00";

/// Run every check, each on a fresh empty store from `fresh`; a failure names its check.
pub fn run_all(fresh: &dyn Fn() -> Box<dyn EventStore>) {
    type Check = fn(&dyn EventStore);
    let checks: &[(&str, Check)] = &[
        ("positions_are_gapless_across_streams_and_batches", positions_are_gapless_across_streams_and_batches),
        ("per_stream_versions_and_read_stream_from_version", per_stream_versions_and_read_stream_from_version),
        ("stream_ids_that_extend_another_with_nul_do_not_mix", stream_ids_that_extend_another_with_nul_do_not_mix),
        ("exactly_and_no_stream_conflicts_write_nothing", exactly_and_no_stream_conflicts_write_nothing),
        ("duplicate_command_returns_first_record_and_appends_nothing", duplicate_command_returns_first_record_and_appends_nothing),
        ("out_of_order_is_rejected_and_writes_nothing", out_of_order_is_rejected_and_writes_nothing),
        ("empty_request_with_command_id_records_outcome", empty_request_with_command_id_records_outcome),
        ("binary_and_json_payloads_come_back_as_given", binary_and_json_payloads_come_back_as_given),
        ("tags_list_their_events_in_log_order", tags_list_their_events_in_log_order),
        ("merkle_index_keeps_chunk_roots_and_the_tail", merkle_index_keeps_chunk_roots_and_the_tail),
        (
            "snapshots_are_found_at_or_before_a_position_and_only_the_newest_are_kept",
            snapshots_are_found_at_or_before_a_position_and_only_the_newest_are_kept,
        ),
        ("instants_keep_their_offset_and_nanoseconds", instants_keep_their_offset_and_nanoseconds),
        ("json_comes_back_as_the_same_value", json_comes_back_as_the_same_value),
        ("a_batch_whose_middle_requests_fail_applies_the_others_gaplessly", a_batch_whose_middle_requests_fail_applies_the_others_gaplessly),
        (
            "a_batch_that_repeats_a_command_id_answers_the_second_as_a_duplicate_of_the_first",
            a_batch_that_repeats_a_command_id_answers_the_second_as_a_duplicate_of_the_first,
        ),
        ("a_chain_stops_at_its_first_failure_and_keeps_the_prefix", a_chain_stops_at_its_first_failure_and_keeps_the_prefix),
        ("a_long_chain_lands_whole", a_long_chain_lands_whole),
        ("concurrent_appends_are_gapless_and_lose_nothing", concurrent_appends_are_gapless_and_lose_nothing),
    ];
    for &(name, check) in checks {
        let store = fresh();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(store.as_ref())));
        if let Err(panic) = outcome {
            let why = panic.downcast_ref::<String>().cloned().or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
            panic!("conformance check {name} failed: {why}");
        }
    }
}

pub fn positions_are_gapless_across_streams_and_batches(store: &dyn EventStore) {
    assert_eq!(store.last_position().unwrap(), 0);
    assert_eq!(store.last_instant().unwrap(), None);

    let r1 = appended(store.append(req(Some("c1"), vec![ev("a", "x", T0, json!(1)), ev("b", "x", T0, json!(2))])).unwrap());
    assert_eq!((r1.first_position, r1.last_position), (Some(1), Some(2)));

    let results = store
        .append_batch(vec![
            req(Some("c2"), vec![ev("b", "y", T1, json!(3))]),
            req(None, vec![ev("c", "z", T1, json!(4)), ev("a", "z", T2, json!(5))]),
        ])
        .unwrap();
    assert_eq!(results.len(), 2);
    let r2 = appended(results[0].clone().unwrap());
    let r3 = appended(results[1].clone().unwrap());
    assert_eq!((r2.first_position, r2.last_position), (Some(3), Some(3)));
    assert_eq!((r3.first_position, r3.last_position), (Some(4), Some(5)));

    let events = all(store);
    let positions: Vec<u64> = events.iter().map(|e| e.position).collect();
    assert_eq!(positions, vec![1, 2, 3, 4, 5]);
    let payloads: Vec<_> = events.iter().map(|e| e.payload.clone()).collect();
    assert_eq!(payloads, [1, 2, 3, 4, 5].map(|n| Payload::Json(json!(n))));
    assert_eq!(events[0].command_id.as_deref(), Some("c1"));
    assert_eq!(events[3].command_id, None);
    assert_eq!(store.last_position().unwrap(), 5);
    assert_eq!(store.last_instant().unwrap(), Some(ts(T2)));
    // read_all from the middle
    let tail: Vec<u64> = store.read_all(4).map(|e| e.unwrap().position).collect();
    assert_eq!(tail, vec![4, 5]);
    assert_eq!(store.read_all(6).count(), 0);
}

pub fn per_stream_versions_and_read_stream_from_version(store: &dyn EventStore) {
    store.append(req(None, vec![ev("a", "x", T0, json!("a1")), ev("b", "x", T0, json!("b1")), ev("a", "x", T0, json!("a2"))])).unwrap();
    store.append(req(None, vec![ev("a", "x", T1, json!("a3"))])).unwrap();

    assert_eq!(store.stream_version("a").unwrap(), 3);
    assert_eq!(store.stream_version("b").unwrap(), 1);
    assert_eq!(store.stream_version("nope").unwrap(), 0);

    let a = store.read_stream("a", 0).unwrap();
    assert_eq!(a.iter().map(|e| e.version).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_eq!(a.iter().map(|e| e.position).collect::<Vec<_>>(), vec![1, 3, 4]);
    assert!(a.iter().all(|e| e.stream == "a"));

    let from2 = store.read_stream("a", 2).unwrap();
    assert_eq!(from2.iter().map(|e| e.payload.clone()).collect::<Vec<_>>(), [json!("a2"), json!("a3")].map(Payload::Json));
    assert!(store.read_stream("a", 4).unwrap().is_empty());
    assert!(store.read_stream("nope", 1).unwrap().is_empty());
}

pub fn stream_ids_that_extend_another_with_nul_do_not_mix(store: &dyn EventStore) {
    let tricky = "a\0\0\0\0\0\0\0\0\u{1}";
    store.append(req(None, vec![ev("a", "x", T0, json!(1)), ev(tricky, "x", T0, json!(2))])).unwrap();
    assert_eq!(store.read_stream("a", 1).unwrap().len(), 1);
    assert_eq!(store.read_stream(tricky, 1).unwrap().len(), 1);
    assert_eq!(store.verify().unwrap().streams, 2);
}

pub fn exactly_and_no_stream_conflicts_write_nothing(store: &dyn EventStore) {
    let mut first = req(Some("c1"), vec![ev("a", "x", T0, json!(1))]);
    first.expected = vec![("a".into(), ExpectedVersion::NoStream)];
    appended(store.append(first).unwrap());

    let mut again = req(Some("c2"), vec![ev("a", "x", T1, json!(2)), ev("b", "x", T1, json!(3))]);
    again.expected = vec![("a".into(), ExpectedVersion::NoStream)];
    assert_eq!(store.append(again), Err(StoreError::Conflict { stream: "a".into(), expected: ExpectedVersion::NoStream, actual: 1 }));

    let mut stale = req(Some("c3"), vec![ev("b", "x", T1, json!(4))]);
    stale.expected = vec![("b".into(), ExpectedVersion::Any), ("a".into(), ExpectedVersion::Exactly(0))];
    let err = store.append(stale).unwrap_err();
    assert_eq!(err, StoreError::Conflict { stream: "a".into(), expected: ExpectedVersion::Exactly(0), actual: 1 });
    assert!(err.to_string().contains("\"a\""), "message names the stream: {err}");

    // Nothing from the rejected requests is visible anywhere.
    assert_eq!(store.last_position().unwrap(), 1);
    assert_eq!(store.stream_version("b").unwrap(), 0);
    assert_eq!(store.command("c2").unwrap(), None);
    assert_eq!(store.command("c3").unwrap(), None);
    assert_eq!(store.last_instant().unwrap(), Some(ts(T0)));

    let mut right = req(Some("c4"), vec![ev("a", "x", T1, json!(5))]);
    right.expected = vec![("a".into(), ExpectedVersion::Exactly(1))];
    let r = appended(store.append(right).unwrap());
    assert_eq!(r.first_position, Some(2));
    assert_eq!(store.stream_version("a").unwrap(), 2);
    assert_eq!(store.verify().unwrap(), VerifyReport { events: 2, streams: 1, commands: 2 });
}

pub fn duplicate_command_returns_first_record_and_appends_nothing(store: &dyn EventStore) {
    let mut first = req(Some("pay-1"), vec![ev("a", "x", T0, json!(1))]);
    first.outcome = json!({"charged": 10});
    let record = appended(store.append(first).unwrap());
    assert_eq!(record.fingerprint.as_deref(), Some("request pay-1"), "the fingerprint is kept with the record");

    // The store answers with the first record, its fingerprint included, whatever the retry's
    // (whoever appends compares them).
    let mut retry = req(Some("pay-1"), vec![ev("a", "x", T1, json!(2)), ev("b", "x", T1, json!(3))]);
    retry.outcome = json!({"charged": 99});
    retry.fingerprint = Some("another request".into());
    // Even a failing concurrency check must not mask the duplicate.
    retry.expected = vec![("a".into(), ExpectedVersion::NoStream)];
    assert_eq!(store.append(retry), Ok(AppendOutcome::Duplicate(record.clone())));
    assert_eq!(store.last_position().unwrap(), 1);
    assert_eq!(store.command("pay-1").unwrap(), Some(record));

    // Within one batch: the second request with the same id sees the first.
    let results =
        store.append_batch(vec![req(Some("pay-2"), vec![ev("a", "x", T1, json!(4))]), req(Some("pay-2"), vec![ev("a", "x", T1, json!(5))])]).unwrap();
    let first = appended(results[0].clone().unwrap());
    assert_eq!(results[1], Ok(AppendOutcome::Duplicate(first.clone())));
    assert_eq!(store.last_position().unwrap(), 2);
    assert_eq!(all(store).len(), 2);
    // A batch's lookups at once: the records of the ids seen, none for the others.
    let ids = ["pay-2", "never", "pay-1"].map(String::from);
    let known = store.commands(&ids).unwrap();
    assert_eq!(known.len(), 2, "{known:?}");
    assert_eq!(known.get("pay-2"), Some(&first));
    assert_eq!(known.get("pay-1").cloned(), store.command("pay-1").unwrap());
    assert!(store.commands(&[]).unwrap().is_empty());
}

pub fn out_of_order_is_rejected_and_writes_nothing(store: &dyn EventStore) {
    store.append(req(None, vec![ev("a", "x", T1, json!(1))])).unwrap();

    // Earlier than the log's last event.
    assert_eq!(store.append(req(Some("late"), vec![ev("b", "x", T0, json!(2))])), Err(StoreError::OutOfOrder { at: ts(T0), last: ts(T1) }));
    // Earlier than a previous event of the same request: the first one must not land either.
    assert_eq!(
        store.append(req(Some("swap"), vec![ev("b", "x", T2, json!(3)), ev("b", "x", T1, json!(4))])),
        Err(StoreError::OutOfOrder { at: ts(T1), last: ts(T2) })
    );
    // The same instant expressed in another offset is not earlier.
    store.append(req(None, vec![ev("c", "x", "2024-03-01T10:00:00Z", json!(5))])).unwrap();

    assert_eq!(store.last_position().unwrap(), 2);
    assert_eq!(store.stream_version("b").unwrap(), 0);
    assert_eq!(store.command("late").unwrap(), None);
    assert_eq!(store.command("swap").unwrap(), None);
    assert_eq!(store.verify().unwrap().events, 2);
}

pub fn empty_request_with_command_id_records_outcome(store: &dyn EventStore) {
    let mut r = req(Some("noop"), vec![]);
    r.outcome = json!({"rejected": "insufficient funds"});
    let record = appended(store.append(r).unwrap());
    assert_eq!(
        record,
        CommandRecord {
            first_position: None,
            last_position: None,
            outcome: json!({"rejected": "insufficient funds"}),
            fingerprint: Some("request noop".into())
        }
    );
    assert_eq!(store.command("noop").unwrap(), Some(record.clone()));
    assert_eq!(store.last_position().unwrap(), 0);
    assert_eq!(store.append(req(Some("noop"), vec![])), Ok(AppendOutcome::Duplicate(record)));

    // Without a command id nothing is recorded.
    appended(store.append(req(None, vec![])).unwrap());
    assert_eq!(store.verify().unwrap(), VerifyReport { events: 0, streams: 0, commands: 1 });
}

/// A store keeps payloads opaque: binary ones come back byte for byte (even bytes that look
/// like JSON, or none at all), JSON ones as the same value, side by side in one request.
pub fn binary_and_json_payloads_come_back_as_given(store: &dyn EventStore) {
    let binaries: [Vec<u8>; 4] = [vec![], vec![0, 255, 0x7b], b"{\"looks\": \"like JSON\"}".to_vec(), (0..=255).collect()];
    let mut events: Vec<NewEvent> = binaries.iter().map(|b| ev("a", "bin", T0, Payload::Binary(b.clone()))).collect();
    events.insert(2, ev("b", "json", T0, json!({"amount": "1.00", "nested": [1, null]})));
    let given: Vec<Payload> = events.iter().map(|e| e.payload.clone()).collect();
    store.append(req(Some("mixed"), events)).unwrap();
    let read: Vec<Payload> = all(store).into_iter().map(|e| e.payload).collect();
    assert_eq!(read, given);
    let stream: Vec<Payload> = store.read_stream("a", 1).unwrap().into_iter().map(|e| e.payload).collect();
    assert_eq!(stream, binaries.map(Payload::Binary));
    assert_eq!(store.verify().unwrap().events, 5);
}

/// Tags index events by key, in log order, with counts; the index only continues (in order,
/// within the log; what it holds already is skipped), all or nothing.
pub fn tags_list_their_events_in_log_order(store: &dyn EventStore) {
    assert_eq!(store.tagged_through().unwrap(), 0);
    let (p1, nul) = ("resource:p1", "resource:p1\0x");
    let events: Vec<NewEvent> = (0..5).map(|i| ev(if i % 2 == 0 { "a" } else { "b" }, "x", T0, json!(i))).collect();
    store.append(req(Some("c1"), events)).unwrap();
    let tags = |list: &[&str]| list.iter().map(|t| t.to_string()).collect::<Vec<String>>();
    store.tag_existing(&[(1, tags(&[p1, "hour:07"])), (2, tags(&[p1]))]).unwrap();
    assert_eq!(store.tagged_through().unwrap(), 2);
    // What is indexed already is skipped (another catch-up got there first), never added twice.
    store.tag_existing(&[(2, tags(&["again"]))]).unwrap();
    assert!(store.tagged("again", 0, 10).unwrap().is_empty());
    // Refused whole: not continuing the index, or past the log's end.
    assert!(store.tag_existing(&[(4, tags(&["gap"]))]).is_err());
    assert!(store.tag_existing(&[(1, tags(&["old"])), (4, tags(&["gap"]))]).is_err(), "a gap after what is skipped");
    assert!(store.tag_existing(&[(3, tags(&["ok"])), (4, tags(&["ok"])), (5, tags(&["ok"])), (6, tags(&["ahead"]))]).is_err());
    assert_eq!(store.tagged_through().unwrap(), 2, "a refused batch records nothing");
    assert!(store.tagged("ok", 0, 10).unwrap().is_empty());
    store.tag_existing(&[(3, tags(&[nul, "hour:08", "hour:08"])), (4, vec![]), (5, tags(&[p1]))]).unwrap();

    assert_eq!(store.tagged(p1, 0, 100).unwrap(), vec![1, 2, 5]);
    assert_eq!(store.tagged(p1, 2, 100).unwrap(), vec![2, 5], "from a position on");
    assert_eq!(store.tagged(p1, 0, 2).unwrap(), vec![1, 2], "at most the limit");
    assert_eq!(store.tagged(nul, 0, 100).unwrap(), vec![3], "a tag extending another with NUL is its own");
    assert!(store.tagged("resource:p", 0, 100).unwrap().is_empty());
    assert_eq!(store.tag_counts("hour:").unwrap(), vec![("hour:07".to_string(), 1), ("hour:08".to_string(), 1)], "a tag given twice counts once");
    assert_eq!(store.tag_counts("resource:").unwrap(), vec![(p1.to_string(), 3), (nul.to_string(), 1)]);
    assert_eq!(store.tag_counts_between("hour:07", "hour:08").unwrap(), vec![("hour:07".to_string(), 1)], "to is left out");
    assert_eq!(store.tag_counts_between("hour:", "resource:p1\0").unwrap().len(), 3, "tags of different prefixes");
    assert_eq!(store.tag_counts_between("hour:07", "resource:p1\0x").unwrap(), store.tag_counts("").unwrap()[..3].to_vec());
    assert!(store.tag_counts_between("hour:08", "hour:08").unwrap().is_empty() && store.tag_counts_between("z", "a").unwrap().is_empty());
    assert_eq!(store.tagged_through().unwrap(), 5);
    assert_eq!(store.read_at(2).unwrap().map(|e| e.payload), Some(Payload::Json(json!(1))));
    assert_eq!(store.read_at(0).unwrap(), None);
    assert_eq!(store.read_at(6).unwrap(), None);
    // A new tagging drops the index whole, to be rebuilt from the start.
    assert_eq!(store.tags_version().unwrap(), 0);
    store.reset_tags(3).unwrap();
    assert_eq!((store.tags_version().unwrap(), store.tagged_through().unwrap()), (3, 0));
    assert!(store.tagged(p1, 0, 100).unwrap().is_empty() && store.tag_counts("").unwrap().is_empty());
    store.tag_existing(&[(1, tags(&["again"]))]).unwrap();
    assert_eq!(store.tagged("again", 0, 10).unwrap(), vec![1]);
    assert_eq!(store.tags_version().unwrap(), 3);
}

/// A leaf hash for the suite: any 32 bytes do, the store never looks inside.
pub fn leaf(position: u64) -> Hash {
    let mut hash = [0u8; 32];
    hash[..8].copy_from_slice(&position.to_be_bytes());
    hash[8..16].copy_from_slice(&(position * 7919).to_le_bytes());
    hash
}

/// The Merkle index only continues (in order, within the log; what it holds already is skipped),
/// all or nothing; each chunk it
/// completes is kept as its root, the rest as leaf hashes.
pub fn merkle_index_keeps_chunk_roots_and_the_tail(store: &dyn EventStore) {
    let n = 2 * MERKLE_CHUNK + 40;
    let events: Vec<NewEvent> = (0..n).map(|i| ev("a", "x", T0, json!(i))).collect();
    store.append(req(None, events)).unwrap();
    assert_eq!(store.merkle_through().unwrap(), 0);
    assert!(store.merkle_tail().unwrap().is_empty());
    assert!(store.merkle_chunk_roots(0, 0).unwrap().is_empty());
    assert!(store.merkle_chunk_roots(0, 1).is_err(), "no chunk is complete yet");
    let leaves = |from: u64, to: u64| (from..=to).map(|p| (p, leaf(p))).collect::<Vec<_>>();
    let hashes = |from: u64, to: u64| (from..=to).map(leaf).collect::<Vec<_>>();

    store.merkle_extend(&leaves(1, 10)).unwrap();
    assert_eq!((store.merkle_through().unwrap(), store.merkle_tail().unwrap()), (10, hashes(1, 10)));
    // What is in the index already is skipped (another catch-up got there first).
    store.merkle_extend(&[(9, [0xee; 32]), (10, [0xee; 32])]).unwrap();
    assert_eq!((store.merkle_through().unwrap(), store.merkle_tail().unwrap()), (10, hashes(1, 10)), "nothing added twice");
    // Refused whole: not continuing the index, or past the log's end.
    assert!(store.merkle_extend(&leaves(12, 12)).is_err(), "a gap");
    assert!(store.merkle_extend(&[(10, leaf(10)), (12, leaf(12))]).is_err(), "a gap after what is skipped");
    assert!(store.merkle_extend(&[(11, leaf(11)), (13, leaf(13))]).is_err(), "a gap inside");
    assert!(store.merkle_extend(&leaves(11, n + 1)).is_err(), "past the log");
    assert_eq!((store.merkle_through().unwrap(), store.merkle_tail().unwrap()), (10, hashes(1, 10)), "a refused batch records nothing");

    store.merkle_extend(&leaves(11, MERKLE_CHUNK + 3)).unwrap();
    assert_eq!(store.merkle_through().unwrap(), MERKLE_CHUNK + 3);
    assert_eq!(store.merkle_chunk_roots(0, 1).unwrap(), vec![merkle_chunk_root(&hashes(1, MERKLE_CHUNK))]);
    assert_eq!(store.merkle_tail().unwrap(), hashes(MERKLE_CHUNK + 1, MERKLE_CHUNK + 3));
    store.merkle_extend(&leaves(MERKLE_CHUNK + 4, n)).unwrap();
    assert_eq!(store.merkle_through().unwrap(), n);
    let roots = store.merkle_chunk_roots(0, 2).unwrap();
    assert_eq!(roots, vec![merkle_chunk_root(&hashes(1, MERKLE_CHUNK)), merkle_chunk_root(&hashes(MERKLE_CHUNK + 1, 2 * MERKLE_CHUNK))]);
    assert_eq!(store.merkle_chunk_roots(1, 2).unwrap(), roots[1..].to_vec(), "from a chunk on");
    assert_eq!(store.merkle_tail().unwrap(), hashes(2 * MERKLE_CHUNK + 1, n));
    assert!(store.merkle_chunk_roots(1, 3).is_err());
    store.merkle_extend(&[]).unwrap();
    assert_eq!(store.merkle_through().unwrap(), n, "nothing to add is no change");
}

pub fn snapshots_are_found_at_or_before_a_position_and_only_the_newest_are_kept(store: &dyn EventStore) {
    assert_eq!(store.snapshot_at_or_before(u64::MAX).unwrap(), None, "a new store has none");
    for position in [10u64, 20, 30] {
        store.put_snapshot(position, format!("at {position}").as_bytes()).unwrap();
    }
    assert_eq!(store.snapshot_at_or_before(9).unwrap(), None);
    assert_eq!(store.snapshot_at_or_before(10).unwrap(), Some((10, b"at 10".to_vec())));
    assert_eq!(store.snapshot_at_or_before(29).unwrap(), Some((20, b"at 20".to_vec())));
    assert_eq!(store.snapshot_at_or_before(u64::MAX).unwrap(), Some((30, b"at 30".to_vec())));
    // Taken again at a position, the newer bytes replace the older.
    store.put_snapshot(30, b"again").unwrap();
    assert_eq!(store.snapshot_at_or_before(30).unwrap(), Some((30, b"again".to_vec())));
    for position in 4..=(SNAPSHOTS_KEPT as u64 + 3) {
        store.put_snapshot(position * 10, b"x").unwrap();
    }
    let kept = store.snapshot_positions().unwrap();
    assert_eq!(kept.len(), SNAPSHOTS_KEPT, "only the newest are kept: {kept:?}");
    assert_eq!(kept.last(), Some(&((SNAPSHOTS_KEPT as u64 + 3) * 10)));
    assert!(kept.windows(2).all(|w| w[0] < w[1]), "oldest first: {kept:?}");
}

/// An instant comes back with its own UTC offset and to the nanosecond (`DateTime` equality
/// ignores the offset, so it is compared as text too).
pub fn instants_keep_their_offset_and_nanoseconds(store: &dyn EventStore) {
    let given = ["2024-03-01T10:00:00.123456789+05:30", "2024-03-01T04:30:00.123456789Z", "2024-03-01T01:00:01-03:45", "1969-12-31T23:59:59.5+00:00"];
    // The first three in log order (the first two are one instant in two offsets); the last,
    // before 1970, is earlier than all of them.
    store.append(req(Some("c1"), given[..3].iter().map(|at| ev("a", "x", at, json!(null))).collect())).unwrap();
    let read: Vec<String> = all(store).iter().map(|e| e.at.to_rfc3339()).collect();
    assert_eq!(read, given[..3].iter().map(|at| ts(at).to_rfc3339()).collect::<Vec<_>>());
    assert_eq!(read[0], "2024-03-01T10:00:00.123456789+05:30");
    assert_eq!(store.last_instant().unwrap().map(|i| i.to_rfc3339()), Some(ts(given[2]).to_rfc3339()));
    assert_eq!(store.read_stream("a", 2).unwrap()[0].at.offset().local_minus_utc(), 0);
    assert!(matches!(store.append(req(None, vec![ev("b", "x", given[3], json!(null))])), Err(StoreError::OutOfOrder { .. })));
}

/// JSON payloads and outcomes come back as the same value, whatever their keys, strings and
/// numbers (a store must not normalise them into something else).
pub fn json_comes_back_as_the_same_value(store: &dyn EventStore) {
    let value = json!({
        "z": 1, "a": [true, null, -0.0, 0.1, 1e300, u64::MAX, i64::MIN],
        "nul \u{0} key": "a \u{0} in a string", "unicode": "账单 \u{1F600}", "empty": {}, "decimal": "1151.675"
    });
    let mut r = req(Some("c1"), vec![ev("a", "x", T0, value.clone())]);
    r.outcome = value.clone();
    let record = appended(store.append(r).unwrap());
    assert_eq!(record.outcome, value);
    assert_eq!(all(store)[0].payload, Payload::Json(value.clone()));
    assert_eq!(store.command("c1").unwrap().map(|r| r.outcome), Some(value));
}

/// A request that checks `stream` is at `expected`.
fn expecting(mut r: AppendRequest, stream: &str, expected: ExpectedVersion) -> AppendRequest {
    r.expected.push((stream.to_string(), expected));
    r
}

pub fn a_batch_whose_middle_requests_fail_applies_the_others_gaplessly(store: &dyn EventStore) {
    let results = store
        .append_batch(vec![
            req(Some("c1"), vec![ev("a", "x", T0, json!(1))]),
            // Fails its check after c1: none of its events (the first would pass) may land.
            expecting(req(Some("c2"), vec![ev("b", "x", T1, json!(2)), ev("a", "x", T1, json!(3))]), "a", ExpectedVersion::NoStream),
            // Passes only if it sees c1's write, made in the same batch.
            expecting(req(Some("c3"), vec![ev("a", "x", T1, json!(4)), ev("b", "x", T1, json!(5))]), "a", ExpectedVersion::Exactly(1)),
            // Its second event is earlier than its first: it fails, having written nothing.
            req(Some("c4"), vec![ev("b", "x", T2, json!(6)), ev("b", "x", T0, json!(7))]),
            // After c3 (not c2): stream b is at version 1, the log at position 3.
            expecting(req(Some("c5"), vec![ev("b", "x", T2, json!(8))]), "b", ExpectedVersion::Exactly(1)),
        ])
        .unwrap();
    assert_eq!(results.len(), 5);
    let record = |first, last, id: &str| CommandRecord {
        first_position: Some(first),
        last_position: Some(last),
        outcome: json!({"ok": id}),
        fingerprint: Some(format!("request {id}")),
    };
    assert_eq!(results[0], Ok(AppendOutcome::Appended(record(1, 1, "c1"))));
    assert_eq!(results[1], Err(StoreError::Conflict { stream: "a".into(), expected: ExpectedVersion::NoStream, actual: 1 }));
    assert_eq!(results[2], Ok(AppendOutcome::Appended(record(2, 3, "c3"))));
    assert_eq!(results[3], Err(StoreError::OutOfOrder { at: ts(T0), last: ts(T2) }));
    assert_eq!(results[4], Ok(AppendOutcome::Appended(record(4, 4, "c5"))));

    let events = all(store);
    let summary: Vec<_> = events.iter().map(|e| (e.position, e.stream.as_str(), e.version, e.payload.clone())).collect();
    let json = |n: i32| Payload::Json(json!(n));
    assert_eq!(summary, vec![(1, "a", 1, json(1)), (2, "a", 2, json(4)), (3, "b", 1, json(5)), (4, "b", 2, json(8))]);
    assert_eq!(store.command("c2").unwrap(), None);
    assert_eq!(store.command("c4").unwrap(), None);
    assert_eq!((store.stream_version("a").unwrap(), store.stream_version("b").unwrap()), (2, 2));
    assert_eq!(store.last_instant().unwrap(), Some(ts(T2)));
    assert_eq!(store.verify().unwrap(), VerifyReport { events: 4, streams: 2, commands: 3 });
}

pub fn a_batch_that_repeats_a_command_id_answers_the_second_as_a_duplicate_of_the_first(store: &dyn EventStore) {
    let mut again = req(Some("c1"), vec![ev("a", "x", T1, json!(2)), ev("b", "x", T1, json!(3))]);
    again.outcome = json!("the second's own outcome, never recorded");
    // A check that would fail does not mask the duplicate.
    again.expected = vec![("a".into(), ExpectedVersion::NoStream)];
    let results = store
        .append_batch(vec![req(Some("c1"), vec![ev("a", "x", T0, json!(1))]), again, req(Some("c2"), vec![ev("a", "x", T2, json!(4))])])
        .unwrap();
    let first = appended(results[0].clone().unwrap());
    assert_eq!(
        first,
        CommandRecord { first_position: Some(1), last_position: Some(1), outcome: json!({"ok": "c1"}), fingerprint: Some("request c1".into()) }
    );
    assert_eq!(results[1], Ok(AppendOutcome::Duplicate(first.clone())));
    assert_eq!(appended(results[2].clone().unwrap()).first_position, Some(2), "the duplicate took no position");
    assert_eq!(all(store).iter().map(|e| e.payload.clone()).collect::<Vec<_>>(), [json!(1), json!(4)].map(Payload::Json));
    assert_eq!(store.command("c1").unwrap(), Some(first));
    assert_eq!(store.stream_version("b").unwrap(), 0);
}

pub fn a_chain_stops_at_its_first_failure_and_keeps_the_prefix(store: &dyn EventStore) {
    appended(store.append(req(Some("c0"), vec![ev("a", "x", T0, json!(0))])).unwrap());
    let (applied, failed) = store
        .append_chain(vec![
            expecting(req(Some("c1"), vec![ev("a", "x", T0, json!(1)), ev("b", "x", T0, json!(2))]), "a", ExpectedVersion::Exactly(1)),
            // A duplicate is no failure: the chain goes on.
            req(Some("c0"), vec![ev("a", "x", T1, json!(99))]),
            expecting(req(Some("c2"), vec![ev("a", "x", T1, json!(3))]), "a", ExpectedVersion::Exactly(2)),
            expecting(req(Some("c3"), vec![ev("b", "x", T1, json!(4))]), "a", ExpectedVersion::Exactly(2)),
            // Would pass on its own, but follows the failure: it may have depended on it.
            req(Some("c4"), vec![ev("b", "x", T2, json!(5))]),
        ])
        .unwrap();
    let (index, error) = failed.expect("c3 conflicts");
    assert_eq!(index, 3);
    assert_eq!(error, StoreError::Conflict { stream: "a".into(), expected: ExpectedVersion::Exactly(2), actual: 3 });
    assert_eq!(applied.len(), 3);
    assert_eq!(appended(applied[0].clone()).first_position, Some(2));
    assert!(matches!(&applied[1], AppendOutcome::Duplicate(r) if r.first_position == Some(1)), "{:?}", applied[1]);
    assert_eq!(appended(applied[2].clone()).first_position, Some(4));
    assert_eq!(all(store).iter().map(|e| e.payload.clone()).collect::<Vec<_>>(), [0, 1, 2, 3].map(|n| Payload::Json(json!(n))));
    assert!(store.command("c2").unwrap().is_some());
    assert_eq!((store.command("c3").unwrap(), store.command("c4").unwrap()), (None, None));
    assert_eq!(store.verify().unwrap(), VerifyReport { events: 4, streams: 2, commands: 3 });
}

/// A long chain of large events is one unit: it lands whole.
pub fn a_long_chain_lands_whole(store: &dyn EventStore) {
    const REQUESTS: usize = 1024;
    let payload = Payload::Binary(vec![7; 2000]);
    let chain: Vec<_> = (0..REQUESTS)
        .map(|i| {
            let events = (0..3).map(|s| NewEvent { payload: payload.clone(), ..ev(&format!("s{s}"), "x", T0, json!(null)) }).collect();
            req(Some(&format!("c{i}")), events)
        })
        .collect();
    let (applied, failed) = store.append_chain(chain).unwrap();
    assert_eq!((applied.len(), failed), (REQUESTS, None));
    assert_eq!(store.verify().unwrap(), VerifyReport { events: 3 * REQUESTS as u64, streams: 3, commands: REQUESTS as u64 });
}

/// Appends from several threads at once: every one lands, positions stay gapless, and the
/// events of one request stay together.
pub fn concurrent_appends_are_gapless_and_lose_nothing(store: &dyn EventStore) {
    const THREADS: usize = 8;
    const PER_THREAD: usize = 25;
    std::thread::scope(|s| {
        for t in 0..THREADS {
            s.spawn(move || {
                for i in 0..PER_THREAD {
                    let mut r =
                        req(Some(&format!("t{t}-{i}")), vec![ev("shared", "x", T0, json!([t, i])), ev(&format!("own-{t}"), "x", T0, json!([t, i]))]);
                    r.expected = vec![("shared".into(), ExpectedVersion::Any)];
                    appended(store.append(r).unwrap());
                }
            });
        }
    });

    let events = all(store);
    let total = (THREADS * PER_THREAD * 2) as u64;
    assert_eq!(events.len() as u64, total);
    assert!(events.iter().zip(1..).all(|(e, p)| e.position == p));
    // Each request's two events are adjacent: requests do not interleave.
    for pair in events.chunks(2) {
        assert_eq!(pair[0].payload, pair[1].payload);
    }
    let seen: std::collections::HashSet<String> = events.iter().filter(|e| e.stream == "shared").map(|e| format!("{:?}", e.payload)).collect();
    assert_eq!(seen.len(), THREADS * PER_THREAD);
    assert_eq!(store.stream_version("shared").unwrap(), (THREADS * PER_THREAD) as u64);
    for t in 0..THREADS {
        assert_eq!(store.stream_version(&format!("own-{t}")).unwrap(), PER_THREAD as u64);
    }
    assert_eq!(store.verify().unwrap(), VerifyReport { events: total, streams: THREADS as u64 + 1, commands: (THREADS * PER_THREAD) as u64 });
}
