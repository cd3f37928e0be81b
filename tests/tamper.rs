//! A torn or corrupted log is detected, never silently used: bytes truncated or flipped in the
//! store's files, events lost from its end, or an edited exported log give a clear error
//! naming the position, from `poolbill verify` and from every command that opens the store.

mod common;

use common::*;
use std::path::{Path, PathBuf};

fn stored(dir: &Path) -> PathBuf {
    let store = dir.join("store");
    let scenario = fixtures_dir().join("subscription-lifecycle").join("scenario.json");
    run_json(&["run", scenario.to_str().unwrap(), "--format", "json", "--store", store.to_str().unwrap()]);
    store
}

/// The whole log of a store, through the command line (`run` re-runs nothing: every command
/// id is known), or the error it gives.
fn export(store: &Path, out: &Path) -> Result<String, String> {
    let scenario = fixtures_dir().join("subscription-lifecycle").join("scenario.json");
    let log = out.join("export.jsonl");
    let r = run(&["run", scenario.to_str().unwrap(), "--store", store.to_str().unwrap(), "--export", log.to_str().unwrap()]);
    if r.status.success() {
        Ok(std::fs::read_to_string(log).unwrap())
    } else {
        Err(String::from_utf8_lossy(&r.stderr).to_string())
    }
}

#[test]
fn verify_passes_a_sound_store_and_log() {
    let dir = tempfile::tempdir().unwrap();
    let store = stored(dir.path());
    let r = run(&["verify", "--store", store.to_str().unwrap()]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(String::from_utf8_lossy(&r.stdout).contains("ok: "));
    let r = run(&["verify", fixtures_dir().join("subscription-lifecycle").join("log.jsonl").to_str().unwrap()]);
    assert!(r.status.success());
    assert_eq!(run(&["verify", "--store", dir.path().join("nothing").to_str().unwrap()]).status.code(), Some(2));
}

#[test]
fn truncated_or_flipped_store_files_are_never_silently_used() {
    let dir = tempfile::tempdir().unwrap();
    let pristine = stored(dir.path());
    let original = export(&pristine, dir.path()).unwrap();
    let mut detected = 0;
    let mut cases = 0;
    let mut seed: u64 = 42;
    let mut next = |n: u64| {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (seed >> 33) % n
    };
    for round in 0..24 {
        let copy = dir.path().join(format!("copy{round}"));
        copy_dir(&pristine, &copy);
        // The event log (where the events are) three rounds in four, sled's file (the indexes
        // derived from it) the rest.
        let name = if round % 4 == 3 { "db" } else { poolbill_store_sled::LOG_FILE };
        let db = copy.join(name);
        let db_len = std::fs::metadata(&db).unwrap().len();
        let what = if round % 3 == 0 {
            let cut = 1 + next(db_len - 1);
            let file = std::fs::OpenOptions::new().write(true).open(&db).unwrap();
            file.set_len(db_len - cut).unwrap();
            format!("{name} truncated by {cut} bytes")
        } else {
            let mut bytes = std::fs::read(&db).unwrap();
            // Every other flip lands inside a stored event (its type name, then its payload),
            // the rest anywhere.
            let envelopes: Vec<usize> = bytes.windows(7).enumerate().filter(|(_, w)| w == b"charged").map(|(i, _)| i).collect();
            let at = if round % 2 == 0 && !envelopes.is_empty() {
                envelopes[next(envelopes.len() as u64) as usize] + next(40) as usize
            } else {
                next(db_len) as usize
            };
            bytes[at] ^= 1 << next(8);
            std::fs::write(&db, bytes).unwrap();
            format!("{name}: a bit flipped at byte {at}")
        };
        cases += 1;
        let verified = run(&["verify", "--store", copy.to_str().unwrap()]);
        match export(&copy, &copy) {
            // Used at all only if every acknowledged event is there, as it was.
            Ok(log) => {
                assert_eq!(log, original, "{what}: a damaged store was used with other contents");
                // verify reads more than a run does (every frame of the log, command records
                // included): it may find damage that a run never meets, and names it.
                if !verified.status.success() {
                    let stderr = String::from_utf8_lossy(&verified.stderr);
                    assert!(
                        name != "db" && stderr.contains("DAMAGED") && stderr.contains("position"),
                        "{what}: verify refuses what run accepts: {stderr}"
                    );
                }
            }
            Err(message) => {
                detected += 1;
                assert_eq!(verified.status.code(), Some(1), "{what}: verify exit status");
                let stderr = String::from_utf8_lossy(&verified.stderr);
                assert!(stderr.contains("DAMAGED") && stderr.contains("position"), "{what}: verify names the position: {stderr}");
                assert!(message.contains("position") || message.contains("damaged"), "{what}: run says why: {message}");
            }
        }
    }
    // Flips that land in space sled no longer uses change nothing (proved above); some damage
    // must have been met for the refusal path to be exercised.
    assert!(detected > 0, "some damage is detected: {detected} of {cases}");
    println!("tamper test: {detected} of {cases} damaged stores refused, the rest provably intact");
}

#[test]
fn a_store_that_lost_acknowledged_events_is_refused_naming_the_position() {
    let dir = tempfile::tempdir().unwrap();
    let store = stored(dir.path());
    let mark = store.join(poolbill_store_sled::WATERMARK_FILE);
    // The mark as it stands (kept in two binary slots), overwritten below in the text form of
    // older stores, which is still read.
    let (position, crc) = poolbill_store_sled::read_watermark(&store).unwrap().unwrap();
    let crc = format!("{crc:08x}");
    // As if sled had recovered only a prefix: the mark remembers more than the log holds.
    std::fs::write(&mark, format!("{} {crc}", position + 5)).unwrap();
    let r = run(&["verify", "--store", store.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("position {}", position + 1)), "{stderr}");
    // The last acknowledged event replaced by another: its checksum no longer matches.
    std::fs::write(&mark, format!("{position} 00000000")).unwrap();
    let r = run(&["verify", "--store", store.to_str().unwrap()]);
    assert_eq!(r.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&r.stderr).contains(&format!("position {position}")));
    // An edited exported log: verify names the line.
    let log = dir.path().join("edited.jsonl");
    let original = std::fs::read_to_string(fixtures_dir().join("subscription-lifecycle").join("log.jsonl")).unwrap();
    let edited: Vec<String> =
        original.lines().enumerate().map(|(i, l)| if i == 4 { l.replacen("acct-1", "acct-9", 1) } else { l.to_string() }).collect();
    assert_ne!(edited.join("\n") + "\n", original, "the edit changes the log");
    std::fs::write(&log, edited.join("\n") + "\n").unwrap();
    let r = run(&["verify", log.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("line 5"), "{stderr}");
}

#[test]
fn verify_checks_every_snapshot_against_a_replay_of_its_prefix_and_an_engine_ignores_a_bad_one() {
    use poolbill_ledger::snapshot::Snapshot;
    use poolbill_store::EventStore;
    use poolbill_store_sled::SledStore;
    let dir = tempfile::tempdir().unwrap();
    let store_path = stored(dir.path());
    let path = store_path.to_str().unwrap();
    // The live projections of a store's first `n` events, and the streams' versions then.
    let prefix = |store: &SledStore, n: usize| {
        let mut versions = std::collections::HashMap::new();
        let prefix = poolbill_ledger::fold_from(
            poolbill_projections::Projections::live(),
            store.read_all(1).take(n),
            poolbill_ledger::Upto::All,
            |_, e: &poolbill_store::Envelope, _| {
                versions.insert(e.stream.clone(), e.version);
            },
        )
        .unwrap();
        (prefix, versions)
    };
    // A sound snapshot (the live projections of the first 12 events) is checked and passes.
    {
        let store = SledStore::open(&store_path).unwrap();
        let (projections, versions) = prefix(&store, 12);
        store.put_snapshot(12, &Snapshot::of(&projections, &versions).encode()).unwrap();
        store.flush().unwrap();
    }
    let r = run(&["verify", "--store", path]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(String::from_utf8_lossy(&r.stdout).contains("1 snapshots checked"), "{}", String::from_utf8_lossy(&r.stdout));
    // An older build's snapshots: format 2 (the gone kept) is read and checked as such; one of
    // a format this build does not read is never used, so it is said, not damage.
    {
        let store = SledStore::open(&store_path).unwrap();
        let (projections, versions) = prefix(&store, 10);
        store.put_snapshot(10, &Snapshot::in_format(&projections, &versions, 2).encode()).unwrap();
        store.put_snapshot(8, &Snapshot::in_format(&projections, &versions, 1).encode()).unwrap();
        store.flush().unwrap();
    }
    let r = run(&["verify", "--store", path]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let said = String::from_utf8_lossy(&r.stdout);
    assert!(said.contains("2 snapshots checked (1 of a format this build does not read ignored: [(8, 1)]"), "{said}");
    // A snapshot that reads back but disagrees with the log (a balance changed) is named.
    {
        let store = SledStore::open(&store_path).unwrap();
        let (position, bytes) = store.snapshot_at_or_before(12).unwrap().unwrap();
        let mut wrong = Snapshot::decode(position, &bytes).unwrap();
        for account in wrong.state.accounts.values_mut() {
            account.balance += rust_decimal::Decimal::ONE;
        }
        store.put_snapshot(12, &wrong.encode()).unwrap();
        store.flush().unwrap();
    }
    let r = run(&["verify", "--store", path]);
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("snapshot at position 12"), "{stderr}");
    // The log itself is sound: the tools, which read the log and not snapshots, still work.
    let r = run(&["replay", "--store", path, "--format", "json"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
}
