//! What only the PostgreSQL store does: its schema's versions, concurrent appenders on one
//! database (several stores, several processes' worth of pools), readers that never see the
//! log out of order, deterministic event ids, and damage planted with SQL.

use poolbill_store::conformance::{all, appended, ev, req, T0, T1, T2};
use poolbill_store::{EventStore, StoreError, VerifyReport};
use poolbill_store_postgres::cluster::fresh_database;
use poolbill_store_postgres::{event_id, schema, PostgresStore};
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};

fn three_events() -> PostgresStore {
    let store = PostgresStore::connect(&fresh_database()).unwrap();
    store.append(req(Some("c1"), vec![ev("a", "x", T0, json!(1)), ev("a", "x", T1, json!(2)), ev("b", "x", T2, json!(3))])).unwrap();
    store
}

/// `read_all` and `verify` both stop at `position`, naming it, with the events before it read.
fn assert_corrupt_at(store: &PostgresStore, position: u64, detail: &str) {
    let items: Vec<_> = store.read_all(1).collect();
    assert_eq!(items.len() as u64, position, "iteration stops at the error: {items:?}");
    assert!(items[..items.len() - 1].iter().all(Result::is_ok), "events before the bad one read fine");
    match items.last() {
        Some(Err(StoreError::Corrupt { position: p, detail: d })) => assert!(*p == position && d.contains(detail), "{p}: {d}"),
        other => panic!("expected Corrupt from read_all, got {other:?}"),
    }
    match store.verify() {
        Err(StoreError::Corrupt { position: p, .. }) => assert_eq!(p, position),
        other => panic!("expected Corrupt from verify, got {other:?}"),
    }
}

#[test]
fn a_new_database_is_migrated_once_and_a_newer_schema_is_refused() {
    let url = fresh_database();
    let store = PostgresStore::connect(&url).unwrap();
    assert_eq!(store.schema_version().unwrap(), schema::latest());
    store.append(req(Some("c1"), vec![ev("a", "x", T0, json!(1))])).unwrap();
    // Opened again (as another engine would): nothing is migrated twice, nothing is lost.
    let again = PostgresStore::connect(&url).unwrap();
    assert_eq!(again.schema_version().unwrap(), schema::latest());
    assert_eq!(all(&again).len(), 1);

    // A database migrated by a newer poolbill is refused, and left as it is.
    let newer = schema::latest() + 1;
    store.execute_unchecked(&format!("INSERT INTO schema_version (version) VALUES ({newer})")).unwrap();
    let refused = match PostgresStore::connect(&url) {
        Err(e) => e,
        Ok(_) => panic!("a newer schema must be refused"),
    };
    let chain = std::iter::successors(Some(&refused as &dyn std::error::Error), |e| e.source()).map(|e| e.to_string()).collect::<Vec<_>>().join(": ");
    assert!(chain.contains(&format!("schema version {newer}, newer than this poolbill knows ({})", schema::latest())), "{chain}");
    assert_eq!(store.schema_version().unwrap(), newer);
    assert_eq!(all(&store).len(), 1);
}

#[test]
fn two_stores_opening_a_new_database_at_once_migrate_it_once() {
    let url = fresh_database();
    let stores: Vec<PostgresStore> = std::thread::scope(|s| {
        (0..4).map(|_| s.spawn(|| PostgresStore::connect(&url).unwrap())).collect::<Vec<_>>().into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(stores.iter().all(|s| s.schema_version().unwrap() == schema::latest()));
}

/// Several stores (each its own pool, as several engines would be) append at once while a
/// reader polls the log: the reader never sees a position before the ones below it, and at the
/// end the log is gapless and whole.
#[test]
fn concurrent_appenders_on_one_database_never_show_a_reader_a_gap() {
    const WRITERS: usize = 4;
    const PER_WRITER: usize = 40;
    let url = fresh_database();
    let reader = PostgresStore::connect(&url).unwrap();
    let writers: Vec<PostgresStore> = (0..WRITERS).map(|_| PostgresStore::connect_with(&url, 2).unwrap()).collect();
    let done = AtomicBool::new(false);
    let polls = std::thread::scope(|s| {
        let poller = s.spawn(|| {
            let mut polls = 0u64;
            let mut seen = 0u64;
            while !done.load(Ordering::Acquire) {
                // Each poll continues from what it saw: the next event must be the next position.
                for item in reader.read_all(seen + 1) {
                    let envelope = item.unwrap_or_else(|e| panic!("a reader saw the log out of order after position {seen}: {e}"));
                    assert_eq!(envelope.position, seen + 1);
                    seen = envelope.position;
                }
                // And a full read is gapless from the start.
                let whole: Vec<u64> = reader.read_all(1).map(|e| e.unwrap().position).collect();
                assert!(whole.iter().zip(1..).all(|(p, n)| *p == n), "gapless from the start");
                polls += 1;
            }
            polls
        });
        for (w, store) in writers.iter().enumerate() {
            s.spawn(move || {
                for i in 0..PER_WRITER {
                    // Batches of two requests, to mix group commits with single ones.
                    let requests = vec![
                        req(
                            Some(&format!("w{w}-{i}-a")),
                            vec![ev("shared", "x", T0, json!([w, i, 0])), ev(&format!("own-{w}"), "x", T0, json!([w, i]))],
                        ),
                        req(Some(&format!("w{w}-{i}-b")), vec![ev("shared", "x", T0, json!([w, i, 1]))]),
                    ];
                    for result in store.append_batch(requests).unwrap() {
                        appended(result.unwrap());
                    }
                }
            });
        }
        // The scope joins the writers before the poller is told to stop.
        std::thread::sleep(std::time::Duration::from_millis(10));
        let writers_done = std::time::Instant::now();
        while reader.last_position().unwrap() < (WRITERS * PER_WRITER * 3) as u64 {
            assert!(writers_done.elapsed().as_secs() < 120, "the writers finish");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        done.store(true, Ordering::Release);
        poller.join().unwrap()
    });
    assert!(polls > 0);
    let total = (WRITERS * PER_WRITER * 3) as u64;
    assert_eq!(reader.verify().unwrap(), VerifyReport { events: total, streams: WRITERS as u64 + 1, commands: (WRITERS * PER_WRITER * 2) as u64 });
    assert_eq!(reader.stream_version("shared").unwrap(), (WRITERS * PER_WRITER * 2) as u64);
}

#[test]
fn event_ids_are_derived_from_the_command_and_are_the_same_on_every_run() {
    let run = || {
        let store = PostgresStore::connect(&fresh_database()).unwrap();
        store.append(req(Some("cmd-1"), vec![ev("a", "x", T0, json!(1)), ev("b", "x", T0, json!(2))])).unwrap();
        store.append(req(None, vec![ev("a", "x", T1, json!(3))])).unwrap();
        // A repeated command appends nothing, so takes no id.
        store.append(req(Some("cmd-1"), vec![ev("a", "x", T1, json!(4))])).unwrap();
        (1..=4).map(|p| store.event_id_at(p).unwrap()).collect::<Vec<_>>()
    };
    let first = run();
    assert_eq!(first, run(), "another log, the same ids");
    assert_eq!(
        first,
        vec![Some(event_id(Some("cmd-1"), 0, "a", 1)), Some(event_id(Some("cmd-1"), 1, "b", 1)), Some(event_id(None, 0, "a", 2)), None]
    );
}

#[test]
fn a_changed_payload_fails_the_checksum() {
    let store = three_events();
    store.execute_unchecked(r#"UPDATE events SET payload_json = '{"forged": true}' WHERE position = 2"#).unwrap();
    assert_corrupt_at(&store, 2, "checksum");
    assert!(matches!(store.read_stream("a", 1), Err(StoreError::Corrupt { position: 2, .. })));
}

#[test]
fn a_row_moved_under_another_position_fails_the_checksum() {
    let store = three_events();
    store.execute_unchecked("DELETE FROM events WHERE position = 3; UPDATE events SET position = 3 WHERE position = 2").unwrap();
    // Position 2 is now missing: a gap, found first.
    assert_corrupt_at(&store, 2, "gap");
    store
        .execute_unchecked("UPDATE events SET position = 2 WHERE position = 3; UPDATE events SET checksum = checksum + 1 WHERE position = 1")
        .unwrap();
    assert_corrupt_at(&store, 1, "checksum");
}

#[test]
fn a_changed_offset_or_id_fails_the_checksum() {
    let store = three_events();
    // The same instant in another offset is still another event than the one written.
    store.execute_unchecked("UPDATE events SET at_offset = 0 WHERE position = 3").unwrap();
    assert_corrupt_at(&store, 3, "checksum");
    let store = three_events();
    store.execute_unchecked("UPDATE events SET id = '00000000-0000-5000-8000-000000000000' WHERE position = 1").unwrap();
    assert_corrupt_at(&store, 1, "checksum");
}

#[test]
fn a_command_record_outside_the_log_fails_verify() {
    let store = three_events();
    assert_eq!(store.verify().unwrap(), VerifyReport { events: 3, streams: 2, commands: 1 });
    store.execute_unchecked("UPDATE commands SET last_position = 9").unwrap();
    let err = store.verify().unwrap_err();
    assert!(err.to_string().contains("points at position 9, outside the log"), "{err}");
}

#[test]
fn a_store_is_used_from_async_code_and_dropped_there() {
    let url = fresh_database();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    runtime.block_on(async move {
        let store = tokio::task::spawn_blocking(move || PostgresStore::connect(&url).unwrap()).await.unwrap();
        let writer = store.clone();
        let record =
            tokio::task::spawn_blocking(move || appended(writer.append(req(Some("c1"), vec![ev("a", "x", T0, json!(1))])).unwrap())).await.unwrap();
        assert_eq!(record.first_position, Some(1));
        // Called on an async thread itself (it blocks there, as sled does, but works).
        assert_eq!(store.last_position().unwrap(), 1);
        assert_eq!(store.read_all(1).count(), 1);
        // Dropped on an async thread: its runtime is shut down without waiting there.
        drop(store);
    });
}

#[test]
fn a_bad_url_or_an_absent_server_is_a_clear_error() {
    let err = PostgresStore::connect("not a url").err().expect("refused");
    assert!(err.to_string().contains("PostgreSQL URL"), "{err}");
    // A port nothing listens on (bound, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let err = PostgresStore::connect(&format!("postgres://poolbill@127.0.0.1:{port}/nothing")).err().expect("refused");
    assert!(err.to_string().contains(&format!("127.0.0.1:{port}/nothing")), "names the server: {err}");
}

#[test]
fn a_commit_is_durable_whatever_the_database_default() {
    let url = fresh_database();
    let database = url.rsplit('/').next().unwrap().to_string();
    poolbill_store_postgres::cluster::execute(&url, &format!("ALTER DATABASE {database} SET synchronous_commit = off")).unwrap();
    let store = PostgresStore::connect(&url).unwrap();
    // Raises unless the store's sessions commit synchronously.
    let check = "DO $$ BEGIN IF current_setting('synchronous_commit') <> 'on' THEN RAISE EXCEPTION 'synchronous_commit is %', current_setting('synchronous_commit'); END IF; END $$";
    store.execute_unchecked(check).unwrap();
    // And the check itself can fail: a plain session of that database has it off.
    assert!(poolbill_store_postgres::cluster::execute(&url, check).unwrap_err().contains("synchronous_commit is off"));
}
