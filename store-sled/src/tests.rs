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

/// The stored value of the event at `position`, from the log file.
fn value_of(store: &SledStore, position: u64) -> Vec<u8> {
    store.opened().value_at(position).unwrap().expect("the event is stored")
}

#[test]
fn garbage_value_is_reported_as_corrupt_at_its_position() {
    let store = three_events();
    let garbage: Vec<u8> = b"\x00\x01garbage".iter().copied().cycle().take(value_of(&store, 2).len()).collect();
    store.overwrite_log(store.value_offset(2), &garbage);
    assert_corrupt_at(&store, 2);
    match store.read_stream("a", 1) {
        Err(StoreError::Corrupt { position, .. }) => assert_eq!(position, 2),
        other => panic!("expected Corrupt from read_stream, got {other:?}"),
    }
    assert!(matches!(store.read_at(2), Err(StoreError::Corrupt { position: 2, .. })));
}

#[test]
fn flipped_payload_byte_fails_the_checksum() {
    let store = three_events();
    let mut value = value_of(&store, 3);
    let last = value.len() - 2;
    value[last] ^= 0x01;
    store.overwrite_log(store.value_offset(3), &value);
    assert_corrupt_at(&store, 3);
    let err = store.verify().unwrap_err();
    assert!(err.to_string().contains("checksum"), "{err}");
}

#[test]
fn a_value_under_another_position_fails_the_checksum() {
    let store = three_events();
    let first = value_of(&store, 1);
    assert_eq!(first.len(), value_of(&store, 2).len(), "the two events are stored in as many bytes");
    store.overwrite_log(store.value_offset(2), &first);
    assert_corrupt_at(&store, 2);
}

#[test]
fn a_damaged_frame_header_is_refused_by_verify_and_reads_stop_at_it() {
    let store = three_events();
    store.append(req(Some("c2"), vec![ev("a", "x", T2, json!(4))])).unwrap();
    // The second frame's kind byte: reads of position 4 meet no entry there.
    let second = store.value_offset(4) - 5 - log::FRAME_HEADER as u64;
    store.overwrite_log(second, b"Z");
    assert_corrupt_at(&store, 4);
}

/// A store in the layout of builds before the event log: every event in sled's `events` tree
/// (values as `encode`, by position), the other trees as they still are.
fn old_layout(path: &Path, envelopes: &[Envelope], encode: impl Fn(&Envelope) -> Vec<u8>) {
    let db = sled::open(path).unwrap();
    let events = db.open_tree("events").unwrap();
    let (streams, index, meta) = (db.open_tree("streams").unwrap(), db.open_tree("stream_index").unwrap(), db.open_tree("meta").unwrap());
    for env in envelopes {
        events.insert(env.position.to_be_bytes(), encode(env)).unwrap();
        streams.insert(env.stream.as_bytes(), &env.version.to_be_bytes()[..]).unwrap();
        index.insert(index_key(&env.stream, env.version), &env.position.to_be_bytes()[..]).unwrap();
    }
    let last = envelopes.last().unwrap();
    meta.insert(META_LAST_POSITION, &last.position.to_be_bytes()[..]).unwrap();
    meta.insert(META_LAST_INSTANT, last.at.to_rfc3339().as_bytes()).unwrap();
    db.flush().unwrap();
}

/// The layout of builds before the binary envelope: CRC-32 of the JSON, then the JSON.
fn json_value(env: &Envelope) -> Vec<u8> {
    let json = serde_json::to_vec(env).unwrap();
    let mut value = crc32fast::hash(&json).to_be_bytes().to_vec();
    value.extend_from_slice(&json);
    value
}

#[test]
fn a_store_written_before_the_event_log_reads_as_it_is_and_appends_to_a_log_after_it() {
    let before = all(&three_events());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old");
    // Binary and JSON values side by side, as in a JSON store appended to by the binary build.
    old_layout(&path, &before, |env| if env.position == 2 { json_value(env) } else { encode_event(env).unwrap() });
    let store = SledStore::open(&path).unwrap();
    assert_eq!(all(&store), before);
    assert_eq!(store.verify().unwrap().events, 3);
    let next = appended(store.append(req(Some("c9"), vec![ev("a", "x", T2, json!(4))])).unwrap());
    assert_eq!(next.first_position, Some(4));
    assert_eq!(store.read_stream("a", 1).unwrap().iter().map(|e| e.position).collect::<Vec<_>>(), vec![1, 2, 4]);
    assert_eq!(store.read_all(3).map(|e| e.unwrap().position).collect::<Vec<_>>(), vec![3, 4]);
    assert_eq!(store.read_at(2).unwrap().as_ref(), Some(&before[1]));
    drop(store);
    // Nothing of the old events moved: they are still in sled's tree, the new one in the log.
    let store = SledStore::open(&path).unwrap();
    assert_eq!(store.opened().events.len(), 3);
    assert_eq!(store.opened().log_first, 4);
    assert_eq!(store.verify().unwrap().events, 4);
}

#[test]
fn damage_to_events_kept_in_sled_is_still_found() {
    let before = all(&three_events());
    let dir = tempfile::tempdir().unwrap();
    // A flipped byte in a JSON value.
    let path = dir.path().join("flipped");
    old_layout(&path, &before, |env| {
        let mut value = json_value(env);
        if env.position == 2 {
            *value.last_mut().unwrap() ^= 1;
        }
        value
    });
    assert_corrupt_at(&SledStore::open(&path).unwrap(), 2);
    // Another position's value.
    let path = dir.path().join("moved");
    old_layout(&path, &before, |env| json_value(if env.position == 3 { &before[1] } else { env }));
    assert_corrupt_at(&SledStore::open(&path).unwrap(), 3);
    // A missing event is a gap.
    let path = dir.path().join("gap");
    old_layout(&path, &before, json_value);
    sled::open(&path).unwrap().open_tree("events").unwrap().remove(2u64.to_be_bytes()).unwrap();
    assert_corrupt_at(&SledStore::open(&path).unwrap(), 2);
}

#[test]
fn damage_written_to_the_log_file_after_it_closed_is_found_on_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let offset = {
        let store = SledStore::open(&path).unwrap();
        store.append(req(None, vec![ev("a", "x", T0, json!(1)), ev("a", "x", T1, json!(2))])).unwrap();
        store.value_offset(1)
    };
    let mut bytes = std::fs::read(path.join(LOG_FILE)).unwrap();
    bytes[offset as usize + 6] ^= 0x10;
    std::fs::write(path.join(LOG_FILE), bytes).unwrap();
    let store = SledStore::open(&path).unwrap();
    assert_corrupt_at(&store, 1);
}

/// A crash after the log's frame was synced, before sled wrote its trees: they trail the log,
/// and opening brings them up to it from the frames.
#[test]
fn indexes_that_trail_the_log_are_rolled_forward_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let early = dir.path().join("early");
    let store = SledStore::open(&path).unwrap();
    store.append(req(Some("c1"), vec![ev("a", "x", T0, json!(1))])).unwrap();
    store.flush().unwrap();
    copy_dir(&path, &early);
    store.append(req(Some("c2"), vec![ev("a", "x", T1, json!(2)), ev("b", "x", T1, json!(3))])).unwrap();
    store.append(req(Some("c3"), vec![])).unwrap();
    store.append(req(Some("c4"), vec![ev("b", "x", T2, json!(4))])).unwrap();
    let (before, records) = (all(&store), ["c2", "c3", "c4"].map(|id| store.command(id).unwrap()));
    drop(store);
    // sled's files as they were after c1, beside the log and the mark as they are now.
    for entry in std::fs::read_dir(&early).unwrap() {
        let name = entry.unwrap().file_name();
        if name != LOG_FILE && name != WATERMARK_FILE {
            let _ = std::fs::remove_dir_all(path.join(&name));
            let _ = std::fs::remove_file(path.join(&name));
        }
    }
    for entry in std::fs::read_dir(&early).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if name != LOG_FILE && name != WATERMARK_FILE {
            if entry.file_type().unwrap().is_dir() {
                copy_dir(&entry.path(), &path.join(&name));
            } else {
                std::fs::copy(entry.path(), path.join(&name)).unwrap();
            }
        }
    }
    let store = SledStore::open(&path).unwrap();
    assert_eq!(all(&store), before);
    assert_eq!(["c2", "c3", "c4"].map(|id| store.command(id).unwrap()), records);
    assert_eq!((store.stream_version("a").unwrap(), store.stream_version("b").unwrap()), (2, 2));
    assert_eq!(store.read_stream("b", 1).unwrap().len(), 2);
    assert_eq!(store.verify().unwrap(), VerifyReport { events: 4, streams: 2, commands: 4 });
    let next = appended(store.append(req(Some("c5"), vec![ev("a", "x", T2, json!(5))])).unwrap());
    assert_eq!(next.first_position, Some(5));
}

/// A crash while a frame was being written: it was never acknowledged, and is cut off.
#[test]
fn a_frame_cut_short_at_the_end_of_the_log_is_cut_off_and_the_rest_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let (before, frame) = {
        let store = SledStore::open(&path).unwrap();
        store.append(req(Some("c1"), vec![ev("a", "x", T0, json!(1))])).unwrap();
        let start = std::fs::metadata(path.join(LOG_FILE)).unwrap().len();
        store.append(req(Some("c2"), vec![ev("a", "x", T1, json!(2))])).unwrap();
        let bytes = std::fs::read(path.join(LOG_FILE)).unwrap();
        (all(&store), bytes[start as usize..].to_vec())
    };
    let log_len = std::fs::metadata(path.join(LOG_FILE)).unwrap().len();
    for cut in [1, 5, log::FRAME_HEADER, frame.len() - 1] {
        let copy = dir.path().join(format!("cut{cut}"));
        copy_dir(&path, &copy);
        let mut file = std::fs::OpenOptions::new().append(true).open(copy.join(LOG_FILE)).unwrap();
        std::io::Write::write_all(&mut file, &frame[..cut]).unwrap();
        drop(file);
        let store = SledStore::open(&copy).unwrap();
        assert_eq!(all(&store), before, "cut at {cut}");
        assert_eq!(std::fs::metadata(copy.join(LOG_FILE)).unwrap().len(), log_len, "cut at {cut}: the partial frame is gone");
        assert_eq!(store.verify().unwrap().events, 2);
        assert_eq!(appended(store.append(req(Some("c3"), vec![ev("a", "x", T2, json!(3))])).unwrap()).first_position, Some(3));
    }
    // Acknowledged events cut off the log: refused, naming the first position missing.
    let copy = dir.path().join("lost");
    copy_dir(&path, &copy);
    std::fs::OpenOptions::new().write(true).open(copy.join(LOG_FILE)).unwrap().set_len(log_len - 3).unwrap();
    match SledStore::open(&copy) {
        Err(StoreError::Corrupt { position, detail }) => assert_eq!(position, 2, "{detail}"),
        Err(other) => panic!("a store that lost acknowledged events is damaged, not {other}"),
        Ok(_) => panic!("a store that lost acknowledged events is refused"),
    }
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

#[test]
fn offset_blocks_round_trip_and_refuse_damage() {
    for (block, entries) in
        [(0u64, vec![(1u64, 0u64), (32, 4_000), (4_064, 900_000)]), (3, vec![(12_288, 1 << 40), (12_320, (1 << 40) + 7)]), (5, vec![])]
    {
        let bytes = encode_offsets(block, &entries);
        assert_eq!(decode_offsets(block, &bytes).unwrap(), entries);
        if !entries.is_empty() {
            assert!(decode_offsets(block, &bytes[..bytes.len() - 1]).is_err(), "cut short");
        }

        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode_offsets(block, &longer).is_err(), "trailing bytes");
    }
    assert!(decode_offsets(0, &encode_offsets(0, &[(4_095, 1), (4_096, 2)])).is_err(), "a position of the next block");
}

/// A store records its layout; a build refuses one of a later layout, unchanged, saying so.
#[test]
fn a_store_of_a_later_layout_is_refused_not_misread() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    {
        let store = SledStore::open(&path).unwrap();
        store.append(req(Some("c1"), vec![ev("a", "x", T0, json!(1))])).unwrap();
        assert_eq!(store.opened().meta.get(META_LAYOUT).unwrap().as_deref(), Some(&LAYOUT.to_be_bytes()[..]));
        store.opened().meta.insert(META_LAYOUT, &(LAYOUT + 1).to_be_bytes()[..]).unwrap();
        store.flush().unwrap();
    }
    match SledStore::open(&path) {
        Err(e @ StoreError::Newer { .. }) => {
            assert!(e.to_string().contains("newer poolbill") && e.to_string().contains(&format!("layout {}", LAYOUT + 1)), "{e}")
        }
        other => panic!("expected Newer, got {:?}", other.map(|_| ())),
    }
}

/// A store written before offsets were kept in blocks (one sled entry per recorded offset,
/// keyed by its position) reads every event as before, and the offsets appended after it go to
/// blocks beside those entries.
#[test]
fn offsets_kept_one_per_entry_still_read_and_new_ones_go_to_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let append = |store: &SledStore, from: u64| {
        for i in from..from + 20 {
            store.append(req(None, (0..250).map(|k| ev("a", "x", T0, json!({"i": i, "k": k}))).collect())).unwrap();
        }
    };
    {
        let store = SledStore::open(&path).unwrap();
        append(&store, 0);
        let opened = store.opened();
        let blocks: Vec<_> = opened.offsets.iter().map(|e| e.unwrap()).collect();
        assert_eq!(blocks.len(), 2, "5,000 events, 4,096 positions a block");
        // As an earlier build kept them.
        for (key, value) in blocks {
            let number = decode_u64(&key[1..]).unwrap();
            for (position, offset) in decode_offsets(number, &value).unwrap() {
                opened.offsets.insert(position.to_be_bytes(), &offset.to_be_bytes()[..]).unwrap();
            }
            opened.offsets.remove(key).unwrap();
        }
        assert_eq!(opened.offsets.len(), 1 + 5_000 / 32);
    }
    let store = SledStore::open(&path).unwrap();
    let before = all(&store);
    assert_eq!(before.len(), 5_000);
    append(&store, 20);
    let opened = store.opened();
    assert_eq!(opened.offsets.len(), 1 + 5_000 / 32 + 2, "the entries kept, and blocks 1 and 2 for what followed");
    let after = all(&store);
    assert_eq!(after[..5_000], before[..]);
    for position in [1, 31, 32, 33, 4_095, 4_096, 4_097, 4_999, 5_000, 5_001, 8_191, 8_192, 9_999, 10_000] {
        assert_eq!(store.read_at(position).unwrap().as_ref(), after.get(position as usize - 1), "position {position}");
    }
    store.verify().unwrap();
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

/// A counted tag's count (`COUNTED_TAGS`: the bill lines' hours and months) is kept beside its
/// postings and answers as they do; any other tag is counted from its postings, and has no
/// count of its own; a store indexed before counts (or further by a build without them) is
/// answered from its postings and counted again when it opens.
#[test]
fn tag_counts_follow_the_postings_and_a_store_indexed_without_them_is_counted_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let (t, tu, u, v) = ("bill-t", "bill-t\0u", "bill-u", "bill-v");
    let counted = vec![(t.to_string(), 3), (tu.to_string(), 1), (u.to_string(), 2)];
    let tags = |list: &[&str]| list.iter().map(|t| t.to_string()).collect::<Vec<String>>();
    {
        let store = SledStore::open(&path).unwrap();
        store.append(req(Some("c1"), (0..5).map(|i| ev("a", "x", T0, json!(i))).collect())).unwrap();
        store.tag_existing(&[(1, tags(&[t, u, "r"])), (2, tags(&[tu, t]))]).unwrap();
        store.tag_existing(&[(3, tags(&[u, u, "r"])), (4, vec![]), (5, tags(&[t]))]).unwrap();
        assert_eq!(store.tag_counts("bill-").unwrap(), counted);
        assert_eq!(store.opened().count_postings("bill-").unwrap(), counted, "the counts say what the postings do");
        assert_eq!(store.tag_counts(t).unwrap(), counted[..2].to_vec());
        assert_eq!(store.opened().counted_through().unwrap(), Some(5));
        // Another tag: no count of its own, answered from its postings, in every listing.
        assert_eq!(store.opened().tags.scan_prefix([b'n']).count(), 3);
        assert_eq!(store.tag_counts("r").unwrap(), vec![("r".to_string(), 2)]);
        let mut all = counted.clone();
        all.push(("r".to_string(), 2));
        assert_eq!(store.tag_counts("").unwrap(), all);
        assert_eq!(store.tag_counts_between("bill-u", "s").unwrap(), vec![(u.to_string(), 2), ("r".to_string(), 2)]);
        // As a build before counts leaves a store: no counts at all.
        let opened = store.opened();
        for key in opened.tags.scan_prefix([b'n']).keys() {
            opened.tags.remove(key.unwrap()).unwrap();
        }
        opened.tags.remove(COUNTED_THROUGH).unwrap();
        assert_eq!(store.tag_counts("bill-").unwrap(), counted, "read from the postings meanwhile");
        assert_eq!(store.tag_counts_between(t, u).unwrap(), counted[..2].to_vec());
    }
    {
        let store = SledStore::open(&path).unwrap();
        assert_eq!(store.opened().counted_through().unwrap(), Some(5), "counted at open");
        assert_eq!(store.opened().tags.scan_prefix([b'n']).count(), 3);
        assert_eq!(store.tag_counts("bill-").unwrap(), counted);
        // Counts left behind the postings (a build without them indexed further): not trusted.
        store.opened().tags.insert(COUNTED_THROUGH, &3u64.to_be_bytes()[..]).unwrap();
        store.opened().tags.insert(count_key(t.as_bytes()), &99u64.to_be_bytes()[..]).unwrap();
        assert_eq!(store.tag_counts("bill-").unwrap(), counted);
    }
    let store = SledStore::open(&path).unwrap();
    assert_eq!(store.tag_counts("bill-").unwrap(), counted, "counted again at open");
    store.append(req(Some("c2"), vec![ev("a", "x", T1, json!(5))])).unwrap();
    store.tag_existing(&[(6, tags(&[u, v, "r"]))]).unwrap();
    assert_eq!(store.tag_counts(u).unwrap(), vec![(u.to_string(), 3)]);
    assert_eq!(store.tag_counts(v).unwrap(), vec![(v.to_string(), 1)]);
    assert_eq!(store.tag_counts("r").unwrap(), vec![("r".to_string(), 3)]);
    assert_eq!(store.opened().counted_through().unwrap(), Some(6));
    // A layout 2 store counted every tag: the counts of the others are dropped at open, once.
    store.opened().tags.insert(count_key(b"r"), &3u64.to_be_bytes()[..]).unwrap();
    store.opened().meta.insert(META_LAYOUT, &2u32.to_be_bytes()[..]).unwrap();
    store.flush().unwrap();
    drop(store);
    let store = SledStore::open(&path).unwrap();
    assert_eq!(store.opened().meta.get(META_LAYOUT).unwrap().as_deref(), Some(&LAYOUT.to_be_bytes()[..]));
    assert!(store.opened().tags.get(count_key(b"r")).unwrap().is_none());
    assert_eq!(store.opened().tags.scan_prefix([b'n']).count(), 4, "the bill tags' counts stay");
    assert_eq!(store.tag_counts("r").unwrap(), vec![("r".to_string(), 3)]);
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

/// A stream's positions are kept a block of 256 versions a value, extended by each commit.
#[test]
fn streams_across_posting_blocks_read_from_any_version_and_damage_is_found() {
    let store = SledStore::temporary().unwrap();
    // Commits of 1, 7 and 100 events, two streams interleaved: 600 versions of "a".
    let mut n = 0;
    while store.stream_version("a").unwrap() < 600 {
        let size = [1, 7, 100][n % 3];
        let events = (0..size).flat_map(|i| [ev("a", "x", T0, json!(i)), ev("b", "y", T0, json!(i))]).collect();
        store.append(req(None, events)).unwrap();
        n += 1;
    }
    let a = store.stream_version("a").unwrap();
    for from in [0, 1, 2, 255, 256, 257, 511, 512, a, a + 1] {
        let read = store.read_stream("a", from).unwrap();
        assert_eq!(read.len() as u64, (a + 1).saturating_sub(from.max(1)), "from {from}");
        assert!(read.iter().zip(from.max(1)..).all(|(e, v)| e.version == v && e.stream == "a"), "from {from}");
    }
    assert_eq!(store.verify().unwrap().events, store.last_position().unwrap());
    // A block rewritten with one position moved: verify and readers name it.
    let key = index_key("a", 1);
    let mut positions = decode_block(&store.opened().stream_postings.get(&key).unwrap().unwrap()).unwrap();
    positions[3] += 1;
    store.opened().stream_postings.insert(&key, encode_block(&positions)).unwrap();
    assert!(matches!(store.verify(), Err(StoreError::Corrupt { detail, .. }) if detail.contains("stream index")));
    assert!(matches!(store.read_stream("a", 1), Err(StoreError::Corrupt { .. })));
}

#[test]
fn a_stream_index_of_an_earlier_build_is_rewritten_as_postings_once() {
    let store = SledStore::temporary().unwrap();
    let events: Vec<_> = (0..300).map(|i| ev(if i % 3 == 0 { "b" } else { "a" }, "x", T0, json!(i))).collect();
    store.append(req(None, events)).unwrap();
    let before = all(&store);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old");
    old_layout(&path, &before, |env| encode_event(env).unwrap());
    let store = SledStore::open(&path).unwrap();
    assert!(store.opened().stream_index.is_empty(), "the per-event entries are gone");
    assert_eq!(store.opened().stream_postings.len(), 2, "a: 200 versions in block 0; b: 100");
    assert_eq!(store.read_stream("a", 150).unwrap().len(), 51);
    assert_eq!(store.verify().unwrap().events, 300);
    store.append(req(None, (0..60).map(|i| ev("a", "x", T0, json!(i))).collect())).unwrap();
    assert_eq!(store.opened().stream_postings.len(), 3, "a's versions 256.. begin block 1");
    assert_eq!(store.read_stream("a", 1).unwrap().len(), 260);
    assert_eq!(store.verify().unwrap().events, 360);
}

/// Seeded crash states: sled's files as of some commit, the log synced through a later commit
/// and part of the next frame, the mark at some commit. Opening keeps exactly the commits the
/// log holds whole (indexing them again where sled trails), cuts the partial frame, and refuses
/// as damaged, naming the first missing position, a store whose mark reaches past its log.
#[test]
fn seeded_crash_states_keep_every_whole_commit_and_refuse_a_lost_acknowledged_one() {
    const COMMITS: usize = 24;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let mut seed: u64 = 20261207;
    let mut next = move |n: u64| {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (seed >> 33) % n.max(1)
    };
    let store = SledStore::open(&path).unwrap();
    // Per commit (0: none yet): sled's files, the log's length, the last position, its checksum.
    let copy_sled = |n: usize| {
        let copy = dir.path().join(format!("sled{n}"));
        copy_dir(&path, &copy);
        for own in [LOG_FILE, WATERMARK_FILE] {
            let _ = std::fs::remove_file(copy.join(own));
        }
        copy
    };
    store.flush().unwrap();
    let mut sled_at = vec![copy_sled(0)];
    let mut ends = vec![0u64];
    let mut lasts = vec![(0u64, 0u32)];
    let mut ids: Vec<Vec<String>> = vec![Vec::new()];
    for c in 1..=COMMITS {
        let mut requests = Vec::new();
        let mut made = Vec::new();
        for r in 0..1 + next(3) {
            let id = format!("c{c}-{r}");
            let events = (0..next(4)).map(|e| ev(["a", "b", "c"][next(3) as usize], "x", T0, json!([c, r, e]))).collect();
            requests.push(req(Some(&id), events));
            made.push(id);
        }
        store.append_batch(requests).unwrap();
        store.flush().unwrap();
        sled_at.push(copy_sled(c));
        ends.push(std::fs::metadata(path.join(LOG_FILE)).unwrap().len());
        let last = store.last_position().unwrap();
        lasts.push((last, if last == 0 { 0 } else { stored_crc(&value_of(&store, last)) }));
        ids.push(made);
    }
    let reference = all(&store);
    let records: Vec<Vec<Option<CommandRecord>>> = ids.iter().map(|made| made.iter().map(|id| store.command(id).unwrap()).collect()).collect();
    drop(store);
    let log = std::fs::read(path.join(LOG_FILE)).unwrap();

    let (mut kept, mut refused) = (0, 0);
    for trial in 0..40 {
        // The log whole through commit `k`, and `cut` bytes of the next frame; sled as of `j`.
        let k = next(COMMITS as u64 + 1) as usize;
        let j = next(k as u64 + 1) as usize;
        let cut = if k < COMMITS { next(ends[k + 1] - ends[k]) } else { 0 };
        // The mark at a commit the log holds, or now and then one past it.
        let m = if k < COMMITS && next(4) == 0 { k + 1 + next((COMMITS - k) as u64) as usize } else { next(k as u64 + 1) as usize };
        let what = format!("trial {trial}: log through commit {k} and {cut} bytes, sled as of {j}, mark at {m}");
        let crashed = dir.path().join(format!("crash{trial}"));
        copy_dir(&sled_at[j], &crashed);
        std::fs::write(crashed.join(LOG_FILE), &log[..(ends[k] + cut) as usize]).unwrap();
        let (position, crc) = lasts[m];
        if position > 0 {
            mark::Writer::new(crashed.join(WATERMARK_FILE)).write(position, crc).unwrap();
        }
        let durable = lasts[k].0;
        match SledStore::open(&crashed) {
            Ok(store) => {
                assert!(position <= durable, "{what}: a mark past the log is damage");
                assert_eq!(all(&store), reference[..durable as usize], "{what}");
                for (c, made) in ids.iter().enumerate() {
                    for (id, record) in made.iter().zip(&records[c]) {
                        let expected = if c <= k { record.clone() } else { None };
                        assert_eq!(store.command(id).unwrap(), expected, "{what}: {id}");
                    }
                }
                assert_eq!(store.verify().unwrap().events, durable, "{what}");
                assert_eq!(std::fs::metadata(crashed.join(LOG_FILE)).unwrap().len(), ends[k], "{what}: the partial frame is cut off");
                let next_one = appended(store.append(req(Some("after"), vec![ev("a", "x", T1, json!("after"))])).unwrap());
                assert_eq!(next_one.first_position, Some(durable + 1), "{what}");
                kept += 1;
            }
            Err(StoreError::Corrupt { position: first_missing, .. }) => {
                assert!(position > durable, "{what}: refused a sound store");
                assert_eq!(first_missing, durable + 1, "{what}");
                assert_eq!(std::fs::read(crashed.join(LOG_FILE)).unwrap().len() as u64, ends[k] + cut, "{what}: nothing cut from a damaged store");
                refused += 1;
            }
            Err(other) => panic!("{what}: {other}"),
        }
    }
    assert!(kept > 0 && refused > 0, "both kinds of crash state met: {kept} kept, {refused} refused");
}

#[test]
fn command_records_are_kept_in_the_log_and_older_stores_json_records_still_read() {
    let store = three_events();
    let open = store.opened();
    let pointer = open.commands.get(b"c1").unwrap().expect("c1 is recorded");
    assert_eq!((pointer.len(), pointer[0]), (RECORD_POINTER, RECORD_IN_LOG), "sled keeps where the record is, not the record");
    let record = store.command("c1").unwrap().expect("c1 reads back");
    assert_eq!((record.first_position, record.last_position), (Some(1), Some(3)));

    // A store written before keeps each record's JSON in sled: read as it is, and verified.
    open.commands.insert(b"c0", serde_json::to_vec(&CommandRecord { last_position: Some(2), ..record.clone() }).unwrap()).unwrap();
    assert_eq!(store.command("c0").unwrap().unwrap().last_position, Some(2));
    assert_eq!(store.verify().unwrap().commands, 2);

    // A record damaged in the log is refused, naming the command and where it is.
    let offset = u64::from_be_bytes(pointer[1..9].try_into().unwrap());
    store.overwrite_log(offset + 2, b"#");
    let err = store.command("c1").unwrap_err();
    assert!(
        matches!(err, StoreError::Corrupt { .. }) && err.to_string().contains("\"c1\"") && err.to_string().contains(&offset.to_string()),
        "{err}"
    );
    assert!(store.verify().is_err());
}

#[test]
fn an_id_looked_up_as_absent_is_still_a_duplicate_once_written() {
    let store = SledStore::temporary().unwrap();
    // Looked up (absent, as the engine does before it decides), then written, then sent again:
    // the write makes the lookup stale, and the resend is a duplicate.
    assert_eq!(store.command("c1").unwrap(), None);
    appended(store.append(req(Some("c1"), vec![ev("a", "x", T0, json!(1))])).unwrap());
    assert!(matches!(store.append(req(Some("c1"), vec![ev("a", "x", T1, json!(2))])).unwrap(), AppendOutcome::Duplicate(_)));
    // The same within one group commit, and after a lookup of the whole batch.
    assert_eq!(store.commands(&["c2".to_string()]).unwrap().len(), 0);
    let outcomes =
        store.append_batch(vec![req(Some("c2"), vec![ev("b", "x", T1, json!(3))]), req(Some("c2"), vec![ev("b", "x", T2, json!(4))])]).unwrap();
    assert!(matches!(outcomes[0], Ok(AppendOutcome::Appended(_))) && matches!(outcomes[1], Ok(AppendOutcome::Duplicate(_))), "{outcomes:?}");
    assert_eq!(store.last_position().unwrap(), 2);
}

#[test]
fn snapshots_are_files_and_an_older_builds_snapshot_tree_is_dropped_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    {
        let store = SledStore::open(&path).unwrap();
        store.append(req(Some("c1"), vec![ev("a", "x", T1, json!(1))])).unwrap();
        store.put_snapshot(1, b"state at 1").unwrap();
    }
    assert!(path.join("snapshots").join("00000000000000000001.snap").exists());
    // An older build kept its snapshots in a sled tree.
    {
        let db = sled::open(&path).unwrap();
        db.open_tree("snapshots").unwrap().insert(7u64.to_be_bytes(), &b"an older build's"[..]).unwrap();
        db.flush().unwrap();
    }
    let store = SledStore::open(&path).unwrap();
    assert_eq!(store.snapshot_positions().unwrap(), vec![1]);
    assert_eq!(store.snapshot_at_or_before(9).unwrap(), Some((1, b"state at 1".to_vec())));
    drop(store);
    let db = sled::open(&path).unwrap();
    assert!(!db.tree_names().iter().any(|name| name.as_ref() == b"snapshots"), "the tree is dropped");
}
