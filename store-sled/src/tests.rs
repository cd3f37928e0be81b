use super::*;
use poolbill_store::conformance::{self, all, appended, ev, req, ts, T0, T1, T2};
use poolbill_store::{ExpectedVersion, NewEvent};
use serde_json::json;

#[test]
fn the_conformance_suite_passes() {
    conformance::run_all(&|| Box::new(SledStore::temporary().expect("a temporary store")));
}

fn three_events() -> SledStore {
    let store = SledStore::temporary().unwrap();
    store.append(req(Some("c1"), vec![ev("a", "x", T0, json!(1)), ev("a", "x", T1, json!(2)), ev("b", "x", T2, json!(3))])).unwrap();
    store
}

fn assert_corrupt_at(store: &SledStore, position: u64) {
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
fn reopen_reads_everything_back_identically() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let (before, records) = {
        let store = SledStore::open(&path).unwrap();
        let r1 = appended(store.append(req(Some("c1"), vec![ev("a", "x", "2024-03-01T10:00:00.123456789+05:30", json!({"n": 1}))])).unwrap());
        let r2 = appended(store.append(req(Some("c2"), vec![ev("b", "y", T2, json!([1, 2]))])).unwrap());
        (all(&store), vec![r1, r2])
    };

    let store = SledStore::open(&path).unwrap();
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
fn a_value_under_another_position_fails_the_checksum() {
    let store = three_events();
    let first = store.raw_events().get(1u64.to_be_bytes()).unwrap().unwrap();
    store.raw_events().insert(2u64.to_be_bytes(), first).unwrap();
    assert_corrupt_at(&store, 2);
}

#[test]
fn events_stored_as_json_by_earlier_builds_read_back_beside_binary_ones() {
    let store = three_events();
    let before = all(&store);
    // The layout of builds before the binary envelope: CRC-32 of the JSON, then the JSON.
    let json = serde_json::to_vec(&before[1]).unwrap();
    let mut legacy = crc32fast::hash(&json).to_be_bytes().to_vec();
    legacy.extend_from_slice(&json);
    store.raw_events().insert(2u64.to_be_bytes(), legacy.clone()).unwrap();
    assert_eq!(all(&store), before);
    assert_eq!(store.verify().unwrap().events, 3);
    // Its checksum and its position are still checked.
    let mut flipped = legacy.clone();
    *flipped.last_mut().unwrap() ^= 1;
    store.raw_events().insert(2u64.to_be_bytes(), flipped).unwrap();
    assert_corrupt_at(&store, 2);
    store.raw_events().insert(2u64.to_be_bytes(), legacy.clone()).unwrap();
    store.raw_events().insert(3u64.to_be_bytes(), legacy).unwrap();
    assert_corrupt_at(&store, 3);
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
        let store = SledStore::open(&path).unwrap();
        store.append(req(None, vec![ev("a", "x", T0, json!(1)), ev("a", "x", T1, json!(2))])).unwrap();
    }
    {
        let db = sled::open(&path).unwrap();
        let events = db.open_tree("events").unwrap();
        events.insert(1u64.to_be_bytes(), &b"not a checksum nor json"[..]).unwrap();
        db.flush().unwrap();
    }
    let store = SledStore::open(&path).unwrap();
    assert_corrupt_at(&store, 1);
}

#[test]
fn a_store_open_elsewhere_is_in_use_not_damaged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let first = SledStore::open(&path).unwrap();
    first.append(req(Some("c1"), vec![ev("a", "x", T0, json!(1))])).unwrap();
    match SledStore::open(&path) {
        Err(StoreError::InUse { path: named }) => assert!(named.ends_with("log"), "{named}"),
        Err(other) => panic!("a store in use is not damaged: {other}"),
        Ok(_) => panic!("sled's lock lets one process in"),
    }
    drop(first);
    assert!(SledStore::open(&path).is_ok(), "free again once closed");
}

#[test]
fn posting_lists_round_trip_across_windows_and_refuse_damage() {
    for (window, positions) in [(0u64, vec![1u64, 2, 300, 65_535]), (1, vec![65_536, 65_537, 131_071]), (7, vec![]), (2, vec![131_072 + 99])] {
        let bytes = encode_postings(window, &positions);
        assert_eq!(decode_postings(window, &bytes).unwrap(), positions);
        if !positions.is_empty() {
            assert!(decode_postings(window, &bytes[..bytes.len() - 1]).is_err(), "cut short");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode_postings(window, &longer).is_err(), "trailing bytes");
    }
    assert_eq!(window_of(&posting_key("t", 3), "t"), Some(3));
    assert_eq!(window_of(&posting_key("t\0u", 3), "t"), None, "another tag's key");
}

/// A store's tag index can be rebuilt from scratch (as for a store written before tags), and a
/// damaged posting list is reported, never read as fewer events.
#[test]
fn a_cleared_index_is_rebuilt_and_a_damaged_one_is_refused() {
    let store = three_events();
    store.tag_existing(&[(1, vec!["t".into()]), (2, vec![]), (3, vec!["t".into(), "u".into()])]).unwrap();
    assert_eq!(store.tagged("t", 0, 10).unwrap(), vec![1, 3]);
    store.opened().tags.clear().unwrap();
    assert_eq!(store.tagged_through().unwrap(), 0);
    assert!(store.tagged("t", 0, 10).unwrap().is_empty());
    store.tag_existing(&[(1, vec!["t".into()]), (2, vec!["t".into()])]).unwrap();
    store.tag_existing(&[(3, vec!["u".into()])]).unwrap();
    assert_eq!(store.tagged("t", 0, 10).unwrap(), vec![1, 2]);
    assert_eq!(store.tag_counts("").unwrap(), vec![("t".to_string(), 2), ("u".to_string(), 1)]);
    store.opened().tags.insert(posting_key("t", 0), &[9u8, 1][..]).unwrap();
    assert!(matches!(store.tagged("t", 0, 10), Err(StoreError::Corrupt { .. })));
}

/// Copies a store's directory as it stands, the store still open: what a crash would leave
/// on disk (at least; what sled has only in memory is not there).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn a_chain_stops_at_its_first_failure_and_its_prefix_is_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let store = SledStore::open(&path).unwrap();
    // The conformance check, on a store on disk: c0, then a chain that stops at c3.
    poolbill_store::conformance::a_chain_stops_at_its_first_failure_and_keeps_the_prefix(&store);

    // On disk by the time the chain returned: a copy taken now, the store still open, has it.
    let copy = dir.path().join("copy");
    copy_dir(&path, &copy);
    let before = all(&store);
    drop(store);
    for path in [copy, path] {
        let store = SledStore::open(&path).unwrap();
        assert_eq!(all(&store), before, "{}", path.display());
        assert_eq!(before.iter().map(|e| e.payload.clone()).collect::<Vec<_>>(), [0, 1, 2, 3].map(|n| Payload::Json(json!(n))));
        assert!(store.command("c2").unwrap().is_some());
        assert_eq!((store.command("c3").unwrap(), store.command("c4").unwrap()), (None, None));
        assert_eq!(store.verify().unwrap(), VerifyReport { events: 4, streams: 2, commands: 3 });
        assert_eq!(read_watermark(&path).unwrap().map(|(p, _)| p), Some(4), "the mark covers the prefix");
    }
}

#[test]
fn a_long_chain_of_large_events_is_one_transaction_that_lands_whole() {
    // Several of sled's 512 KiB segments in one transaction.
    const REQUESTS: usize = 1024;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let store = SledStore::open(&path).unwrap();
    let payload = Payload::Binary(vec![7; 2000]);
    let chain: Vec<_> = (0..REQUESTS)
        .map(|i| {
            let events = (0..3).map(|s| NewEvent { payload: payload.clone(), ..ev(&format!("s{s}"), "x", T0, json!(null)) }).collect();
            req(Some(&format!("c{i}")), events)
        })
        .collect();
    let (applied, failed) = store.append_chain(chain).unwrap();
    assert_eq!((applied.len(), failed), (REQUESTS, None));
    let copy = dir.path().join("copy");
    copy_dir(&path, &copy);
    let reopened = SledStore::open(&copy).unwrap();
    assert_eq!(reopened.verify().unwrap(), VerifyReport { events: 3 * REQUESTS as u64, streams: 3, commands: REQUESTS as u64 });
}

#[test]
fn a_request_that_fails_after_its_checks_passed_writes_nothing_either() {
    let store = SledStore::temporary().unwrap();
    // A damaged stream version, of a stream no request checks: found only when the request's
    // third event is given its version, after its first two were staged (not written: c3 would
    // take the first's position, not the second's).
    store.opened().streams.insert("bad", &b"not a u64"[..]).unwrap();
    let results = store
        .append_batch(vec![
            req(Some("c1"), vec![ev("a", "x", T0, json!(1))]),
            req(Some("c2"), vec![ev("a", "x", T0, json!(2)), ev("a", "x", T0, json!(3)), ev("bad", "x", T0, json!(4))]),
            req(Some("c3"), vec![ev("a", "x", T1, json!(5))]),
        ])
        .unwrap();
    assert!(matches!(&results[1], Err(StoreError::Corrupt { detail, .. }) if detail.contains("\"bad\"")), "{:?}", results[1]);
    assert_eq!(appended(results[2].clone().unwrap()).first_position, Some(2));
    assert_eq!(all(&store).iter().map(|e| e.payload.clone()).collect::<Vec<_>>(), [json!(1), json!(5)].map(Payload::Json));
    assert_eq!(store.stream_version("a").unwrap(), 2);
    assert_eq!(store.command("c2").unwrap(), None);
    assert_eq!(store.last_position().unwrap(), 2);
}

#[test]
fn a_store_whose_write_failed_refuses_everything_until_it_recovers() {
    // Given a store on disk holding an acknowledged command, and a clone of its handle
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path().join("log")).unwrap();
    let record = appended(store.append(req(Some("c1"), vec![ev("a", "x", T0, json!(1))])).unwrap());
    let clone = store.clone();
    // When a write fails in the database
    store.fail_for_test();
    // Then every read and write is refused, through every handle, and nothing is written
    let unavailable = |r: Result<(), StoreError>| matches!(r, Err(StoreError::Unavailable { .. }));
    assert!(unavailable(clone.command("c1").map(|_| ())), "no answer from what may not be durable");
    assert!(unavailable(store.last_position().map(|_| ())));
    assert!(unavailable(store.read_all(1).next().unwrap().map(|_| ())));
    assert!(unavailable(store.append(req(Some("c2"), vec![ev("a", "x", T1, json!(2))])).map(|_| ())));
    // When it recovers (reopened from its files)
    clone.recover().unwrap();
    // Then it holds what it acknowledged, nothing of the refused write, and writes again
    assert_eq!(store.command("c1").unwrap(), Some(record));
    assert_eq!(store.command("c2").unwrap(), None, "the refused write left nothing");
    let next = appended(store.append(req(Some("c2"), vec![ev("a", "x", T1, json!(2))])).unwrap());
    assert_eq!(next.first_position, Some(2));
    assert_eq!(read_watermark(&dir.path().join("log")).unwrap().map(|(p, _)| p), Some(2), "the mark follows the reopened store");
    assert_eq!(store.verify().unwrap().events, 2);
    // And a sound store has nothing to recover from
    store.recover().unwrap();
}

#[test]
fn a_temporary_store_has_nothing_to_recover_from_and_keeps_refusing() {
    let store = three_events();
    store.fail_for_test();
    assert!(matches!(store.recover(), Err(StoreError::Unavailable { .. })));
    assert!(matches!(store.verify(), Err(StoreError::Unavailable { .. })), "its memory may hold part of a failed batch");
}

#[test]
fn only_failures_of_the_store_itself_are_outages() {
    let io = StoreError::io("writing", std::io::Error::from(std::io::ErrorKind::StorageFull));
    assert!(io.is_outage());
    assert!(StoreError::OutcomeUnknown { context: "flush".into(), source: Box::new(io) }.is_outage());
    assert!(StoreError::Unavailable { why: "full".into() }.is_outage());
    assert!(!StoreError::Conflict { stream: "s".into(), expected: ExpectedVersion::NoStream, actual: 1 }.is_outage());
    assert!(!StoreError::Corrupt { position: 3, detail: "flipped".into() }.is_outage());
}
