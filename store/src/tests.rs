use super::*;
use serde_json::json;
use std::collections::HashSet;

use poolbill_testkit::t as ts;

fn ev(stream: &str, event_type: &str, at: &str, payload: serde_json::Value) -> NewEvent {
    NewEvent { stream: stream.to_string(), event_type: event_type.to_string(), schema_version: 1, at: ts(at), payload }
}

fn req(command_id: Option<&str>, events: Vec<NewEvent>) -> AppendRequest {
    AppendRequest { command_id: command_id.map(str::to_string), expected: vec![], events, outcome: json!({"ok": command_id}) }
}

fn all(store: &Store) -> Vec<Envelope> {
    store.read_all(0).collect::<Result<Vec<_>, _>>().expect("read_all")
}

fn appended(outcome: AppendOutcome) -> CommandRecord {
    match outcome {
        AppendOutcome::Appended(r) => r,
        other => panic!("expected Appended, got {other:?}"),
    }
}

const T0: &str = "2024-03-01T10:00:00+01:00";
const T1: &str = "2024-03-01T11:00:00+01:00";
const T2: &str = "2024-03-01T12:00:00+01:00";

#[test]
fn positions_are_gapless_across_streams_and_batches() {
    let store = Store::temporary().unwrap();
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

    let events = all(&store);
    let positions: Vec<u64> = events.iter().map(|e| e.position).collect();
    assert_eq!(positions, vec![1, 2, 3, 4, 5]);
    let payloads: Vec<_> = events.iter().map(|e| e.payload.clone()).collect();
    assert_eq!(payloads, vec![json!(1), json!(2), json!(3), json!(4), json!(5)]);
    assert_eq!(events[0].command_id.as_deref(), Some("c1"));
    assert_eq!(events[3].command_id, None);
    assert_eq!(store.last_position().unwrap(), 5);
    assert_eq!(store.last_instant().unwrap(), Some(ts(T2)));
    // read_all from the middle
    let tail: Vec<u64> = store.read_all(4).map(|e| e.unwrap().position).collect();
    assert_eq!(tail, vec![4, 5]);
    assert_eq!(store.read_all(6).count(), 0);
}

#[test]
fn per_stream_versions_and_read_stream_from_version() {
    let store = Store::temporary().unwrap();
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
    assert_eq!(from2.iter().map(|e| e.payload.clone()).collect::<Vec<_>>(), vec![json!("a2"), json!("a3")]);
    assert!(store.read_stream("a", 4).unwrap().is_empty());
    assert!(store.read_stream("nope", 1).unwrap().is_empty());
}

#[test]
fn stream_ids_that_extend_another_with_nul_do_not_mix() {
    let store = Store::temporary().unwrap();
    let tricky = "a\0\0\0\0\0\0\0\0\u{1}";
    store.append(req(None, vec![ev("a", "x", T0, json!(1)), ev(tricky, "x", T0, json!(2))])).unwrap();
    assert_eq!(store.read_stream("a", 1).unwrap().len(), 1);
    assert_eq!(store.read_stream(tricky, 1).unwrap().len(), 1);
    assert_eq!(store.verify().unwrap().streams, 2);
}

#[test]
fn exactly_and_no_stream_conflicts_write_nothing() {
    let store = Store::temporary().unwrap();
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

#[test]
fn duplicate_command_returns_first_record_and_appends_nothing() {
    let store = Store::temporary().unwrap();
    let mut first = req(Some("pay-1"), vec![ev("a", "x", T0, json!(1))]);
    first.outcome = json!({"charged": 10});
    let record = appended(store.append(first).unwrap());

    let mut retry = req(Some("pay-1"), vec![ev("a", "x", T1, json!(2)), ev("b", "x", T1, json!(3))]);
    retry.outcome = json!({"charged": 99});
    // Even a failing concurrency check must not mask the duplicate.
    retry.expected = vec![("a".into(), ExpectedVersion::NoStream)];
    assert_eq!(store.append(retry), Ok(AppendOutcome::Duplicate(record.clone())));
    assert_eq!(store.last_position().unwrap(), 1);
    assert_eq!(store.command("pay-1").unwrap(), Some(record));

    // Within one batch: the second request with the same id sees the first.
    let results =
        store.append_batch(vec![req(Some("pay-2"), vec![ev("a", "x", T1, json!(4))]), req(Some("pay-2"), vec![ev("a", "x", T1, json!(5))])]).unwrap();
    let first = appended(results[0].clone().unwrap());
    assert_eq!(results[1], Ok(AppendOutcome::Duplicate(first)));
    assert_eq!(store.last_position().unwrap(), 2);
    assert_eq!(all(&store).len(), 2);
}

#[test]
fn out_of_order_is_rejected_and_writes_nothing() {
    let store = Store::temporary().unwrap();
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

#[test]
fn empty_request_with_command_id_records_outcome() {
    let store = Store::temporary().unwrap();
    let mut r = req(Some("noop"), vec![]);
    r.outcome = json!({"rejected": "insufficient funds"});
    let record = appended(store.append(r).unwrap());
    assert_eq!(record, CommandRecord { first_position: None, last_position: None, outcome: json!({"rejected": "insufficient funds"}) });
    assert_eq!(store.command("noop").unwrap(), Some(record.clone()));
    assert_eq!(store.last_position().unwrap(), 0);
    assert_eq!(store.append(req(Some("noop"), vec![])), Ok(AppendOutcome::Duplicate(record)));

    // Without a command id nothing is recorded.
    appended(store.append(req(None, vec![])).unwrap());
    assert_eq!(store.verify().unwrap(), VerifyReport { events: 0, streams: 0, commands: 1 });
}

#[test]
fn reopen_reads_everything_back_identically() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let (before, records) = {
        let store = Store::open(&path).unwrap();
        let r1 = appended(store.append(req(Some("c1"), vec![ev("a", "x", "2024-03-01T10:00:00.123456789+05:30", json!({"n": 1}))])).unwrap());
        let r2 = appended(store.append(req(Some("c2"), vec![ev("b", "y", T2, json!([1, 2]))])).unwrap());
        (all(&store), vec![r1, r2])
    };

    let store = Store::open(&path).unwrap();
    let after = all(&store);
    assert_eq!(after, before);
    // DateTime equality ignores the offset, so check it was kept explicitly.
    assert_eq!(after[0].at.offset().local_minus_utc(), 5 * 3600 + 1800);
    assert_eq!(after[0].at.to_rfc3339(), "2024-03-01T10:00:00.123456789+05:30");
    assert_eq!(store.command("c1").unwrap(), Some(records[0].clone()));
    assert_eq!(store.command("c2").unwrap(), Some(records[1].clone()));
    assert_eq!(store.last_position().unwrap(), 2);
    assert_eq!(store.last_instant().unwrap().map(|i| i.to_rfc3339()), Some(ts(T2).to_rfc3339()));
    assert_eq!(store.stream_version("a").unwrap(), 1);
    assert_eq!(store.verify().unwrap(), VerifyReport { events: 2, streams: 2, commands: 2 });

    // Appending after reopen continues the sequence.
    let r3 = appended(store.append(req(None, vec![ev("a", "x", T2, json!(3))])).unwrap());
    assert_eq!(r3.first_position, Some(3));
    assert_eq!(store.read_stream("a", 1).unwrap().last().map(|e| e.version), Some(2));
}

#[test]
fn envelope_json_keeps_the_offset() {
    let env = Envelope {
        position: 1,
        stream: "s".into(),
        version: 1,
        event_type: "t".into(),
        schema_version: 2,
        at: ts("2024-03-01T10:00:00-04:00"),
        command_id: None,
        payload: json!(null),
    };
    let text = serde_json::to_string(&env).unwrap();
    assert!(text.contains("\"2024-03-01T10:00:00-04:00\""), "{text}");
    let back: Envelope = serde_json::from_str(&text).unwrap();
    assert_eq!(back.at.offset(), env.at.offset());
}

fn three_events() -> Store {
    let store = Store::temporary().unwrap();
    store.append(req(Some("c1"), vec![ev("a", "x", T0, json!(1)), ev("a", "x", T1, json!(2)), ev("b", "x", T2, json!(3))])).unwrap();
    store
}

fn assert_corrupt_at(store: &Store, position: u64) {
    let items: Vec<_> = store.read_all(1).collect();
    let first_err = items.iter().position(|r| r.is_err()).expect("read_all reports an error");
    assert_eq!(first_err as u64, position - 1, "events before the bad one read fine");
    assert_eq!(items.len() as u64, position, "iteration stops at the error");
    match &items[first_err] {
        Err(StoreError::Corrupt { position: p, .. }) => assert_eq!(*p, position),
        other => panic!("expected Corrupt from read_all, got {other:?}"),
    }
    match store.verify() {
        Err(StoreError::Corrupt { position: p, .. }) => assert_eq!(p, position),
        other => panic!("expected Corrupt from verify, got {other:?}"),
    }
}

#[test]
fn verify_good_store() {
    let store = three_events();
    assert_eq!(store.verify().unwrap(), VerifyReport { events: 3, streams: 2, commands: 1 });
}

#[test]
fn garbage_value_is_reported_as_corrupt_at_its_position() {
    let store = three_events();
    store.raw_events().insert(2u64.to_be_bytes(), &b"\x00\x01garbage"[..]).unwrap();
    assert_corrupt_at(&store, 2);
    match store.read_stream("a", 1) {
        Err(StoreError::Corrupt { position, .. }) => assert_eq!(position, 2),
        other => panic!("expected Corrupt from read_stream, got {other:?}"),
    }
}

#[test]
fn flipped_payload_byte_fails_the_checksum() {
    let store = three_events();
    let mut value = store.raw_events().get(3u64.to_be_bytes()).unwrap().unwrap().to_vec();
    let last = value.len() - 2;
    value[last] ^= 0x01;
    store.raw_events().insert(3u64.to_be_bytes(), value).unwrap();
    assert_corrupt_at(&store, 3);
    let err = store.verify().unwrap_err();
    assert!(err.to_string().contains("checksum"), "{err}");
}

#[test]
fn missing_event_is_a_gap() {
    let store = three_events();
    store.raw_events().remove(2u64.to_be_bytes()).unwrap();
    assert_corrupt_at(&store, 2);
}

#[test]
fn corruption_written_through_raw_sled_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    {
        let store = Store::open(&path).unwrap();
        store.append(req(None, vec![ev("a", "x", T0, json!(1)), ev("a", "x", T1, json!(2))])).unwrap();
    }
    {
        let db = sled::open(&path).unwrap();
        let events = db.open_tree("events").unwrap();
        events.insert(1u64.to_be_bytes(), &b"not a checksum nor json"[..]).unwrap();
        db.flush().unwrap();
    }
    let store = Store::open(&path).unwrap();
    assert_corrupt_at(&store, 1);
}

#[test]
fn concurrent_appends_are_gapless_and_lose_nothing() {
    const THREADS: usize = 8;
    const PER_THREAD: usize = 25;
    let store = Store::temporary().unwrap();
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let store = store.clone();
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

    let events = all(&store);
    let total = (THREADS * PER_THREAD * 2) as u64;
    assert_eq!(events.len() as u64, total);
    assert!(events.iter().zip(1..).all(|(e, p)| e.position == p));
    // Each request's two events are adjacent: requests do not interleave.
    for pair in events.chunks(2) {
        assert_eq!(pair[0].payload, pair[1].payload);
    }
    let seen: HashSet<String> = events.iter().filter(|e| e.stream == "shared").map(|e| e.payload.to_string()).collect();
    assert_eq!(seen.len(), THREADS * PER_THREAD);
    assert_eq!(store.stream_version("shared").unwrap(), (THREADS * PER_THREAD) as u64);
    for t in 0..THREADS {
        assert_eq!(store.stream_version(&format!("own-{t}")).unwrap(), PER_THREAD as u64);
    }
    assert_eq!(store.verify().unwrap(), VerifyReport { events: total, streams: THREADS as u64 + 1, commands: (THREADS * PER_THREAD) as u64 });
}

#[test]
fn a_chain_stops_at_its_first_failure_and_keeps_the_prefix() {
    let store = Store::temporary().unwrap();
    let mut conflicting = req(Some("c2"), vec![ev("a", "x", T1, json!(2))]);
    conflicting.expected = vec![("a".to_string(), ExpectedVersion::Exactly(7))];
    let (applied, failed) = store
        .append_chain(vec![req(Some("c1"), vec![ev("a", "x", T0, json!(1))]), conflicting, req(Some("c3"), vec![ev("b", "x", T2, json!(3))])])
        .unwrap();
    assert_eq!(applied.len(), 1);
    let (index, error) = failed.expect("the second request conflicts");
    assert_eq!(index, 1);
    assert!(matches!(error, StoreError::Conflict { actual: 1, .. }), "{error}");
    // The third was never applied: it may have depended on the second.
    assert_eq!(all(&store).len(), 1);
    assert_eq!(store.command("c3").unwrap(), None);
}
