//! Explain, timeline and a month's bills from a store's tag index give exactly what they give
//! from the whole log: every bill of every fixture by number, every resource at the start and
//! the last second of each of its lines, every resource's timeline, every month's bills — while
//! reading only the events about that resource, or that month's lines.

mod common;

use common::{fixtures, run};
use poolbill_replay::explain::{explain_at, explain_at_in, explain_bill, explain_bill_in};
use poolbill_replay::timeline::{timeline, timeline_in};
use poolbill_store::EventStore;
use poolbill_store_sled::SledStore;
use std::collections::BTreeSet;

#[test]
fn explain_timeline_and_month_bills_from_the_tag_index_equal_them_from_the_whole_log() {
    let mut bills_checked = 0;
    let mut timelines = 0;
    let mut month_bills = 0;
    let mut questions = 0;
    for dir in fixtures() {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let tmp = tempfile::tempdir().unwrap();
        let store_dir = tmp.path().join("store");
        let out = run(&["run", dir.join("scenario.json").to_str().unwrap(), "--store", store_dir.to_str().unwrap(), "--format", "json"]);
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        let store = SledStore::open(&store_dir).unwrap();
        let envelopes: Vec<_> = store.read_all(1).collect::<Result<_, _>>().unwrap();

        // Every bill of the smaller fixtures, some 40 spread over the longer ones (the whole-log
        // side reads the whole log for each question).
        let count = poolbill_replay::fold(envelopes.iter().cloned().map(Ok), poolbill_replay::Upto::All).unwrap().document().bills.len();
        let numbers: BTreeSet<usize> = (1..=count).step_by(count.div_ceil(40).max(1)).chain([count]).collect();
        let mut asked = BTreeSet::new();
        for &n in &numbers {
            let whole = explain_bill(&envelopes, n).unwrap_or_else(|e| panic!("{name} bill {n}: {e}"));
            let indexed = explain_bill_in(&store, n).unwrap_or_else(|e| panic!("{name} bill {n}: {e}"));
            assert_eq!(indexed, whole, "{name} bill {n}");
            asked.insert((whole.bill.resource.clone(), whole.bill.start.clone()));
            asked.insert((whole.bill.resource.clone(), whole.bill.end.clone()));
        }
        assert!(explain_bill_in(&store, count + 1).is_err() && explain_bill_in(&store, 0).is_err(), "{name}: no bill 0 or {}", count + 1);
        bills_checked += numbers.len();
        // Every resource's timeline, and one that is not there.
        let projections = poolbill_replay::fold(envelopes.iter().cloned().map(Ok), poolbill_replay::Upto::All).unwrap();
        let document = projections.document();
        for resource in document.resources.iter().map(|r| r.id.as_str()).chain(["nobody"]) {
            let whole = timeline(&envelopes, resource).map_err(|e| e.to_string());
            let indexed = timeline_in(&store, resource).map_err(|e| e.to_string());
            assert_eq!(indexed, whole, "{name}: the timeline of {resource}");
            timelines += usize::from(whole.is_ok());
        }
        // Every month's bills, and a month without any.
        let months: BTreeSet<String> = document.detail_bills.iter().map(|d| d.month.clone()).chain(["1999-01".to_string()]).collect();
        for month in months {
            let whole = poolbill_replay::bills::month_bills(&projections, &month).unwrap();
            assert_eq!(poolbill_replay::bills::month_in(&store, &month).unwrap(), whole, "{name}: the bills of {month}");
            month_bills += 1;
        }
        for (resource, instant) in asked {
            let at = chrono::DateTime::parse_from_rfc3339(&instant).unwrap();
            for at in [at, at - chrono::Duration::seconds(1)] {
                let whole = explain_at(&envelopes, &resource, at).map_err(|e| e.to_string());
                let indexed = explain_at_in(&store, &resource, at).map_err(|e| e.to_string());
                assert_eq!(indexed, whole, "{name}: {resource} at {at}");
                questions += 1;
            }
        }
    }
    println!(
        "{bills_checked} bills, {questions} questions by resource and instant, {timelines} timelines, {month_bills} months' bills answered alike"
    );
    assert!(timelines > 30, "{timelines} timelines");
    assert!(bills_checked > 200 && questions > 600, "{bills_checked} bills, {questions} questions");
}

/// Through the binary: `explain --store` and `timeline --store` (the tag index) give what they
/// give from the exported log.
#[test]
fn the_command_line_explains_and_draws_a_store_as_it_does_its_exported_log() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, log) = (tmp.path().join("store"), tmp.path().join("log.jsonl"));
    let scenario = common::fixtures_dir().join("package-consumed-first/scenario.json");
    let out = run(&["run", scenario.to_str().unwrap(), "--store", store.to_str().unwrap(), "--export", log.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let questions: [&[&str]; 5] = [
        &["--bill", "1"],
        &["--bill", "3", "--format", "json"],
        &["--resource", "train-1", "--at", "2023-04-01T11:30:00+08:00"],
        &["--bill", "999"],
        &["--resource", "nobody", "--at", "2023-04-01T11:30:00+08:00"],
    ];
    let mut answered = 0;
    for question in questions {
        let by_store = run(&[&["explain", "--store", store.to_str().unwrap()][..], question].concat());
        let by_log = run(&[&["explain", log.to_str().unwrap()][..], question].concat());
        assert_eq!(by_store.status.code(), by_log.status.code(), "{question:?}: {}", String::from_utf8_lossy(&by_store.stderr));
        assert_eq!(String::from_utf8_lossy(&by_store.stdout), String::from_utf8_lossy(&by_log.stdout), "{question:?}");
        answered += usize::from(by_log.status.success() && by_log.stdout.len() > 100);
        if !by_log.status.success() {
            assert_eq!(String::from_utf8_lossy(&by_store.stderr), String::from_utf8_lossy(&by_log.stderr), "{question:?}");
        }
    }
    assert_eq!(answered, 3, "three questions have answers");
    // The same picture of a resource's history.
    let (from_store, from_log) = (tmp.path().join("store.svg"), tmp.path().join("log.svg"));
    for (source, svg) in [(vec!["--store", store.to_str().unwrap()], &from_store), (vec![log.to_str().unwrap()], &from_log)] {
        let out = run(&[&["timeline"][..], &source, &["--resource", "train-1", "--svg", svg.to_str().unwrap()]].concat());
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let picture = std::fs::read_to_string(&from_store).unwrap();
    assert!(picture.starts_with("<svg") && picture.contains("train-1"));
    assert_eq!(picture, std::fs::read_to_string(&from_log).unwrap());
}

/// `verify --store` checks the tag index against the log: a posting moved to another resource
/// is named, and the index rebuilt from the log passes again.
#[test]
fn verify_names_a_tag_index_that_is_not_its_logs() {
    let tmp = tempfile::tempdir().unwrap();
    let store_dir = tmp.path().join("store");
    let scenario = common::fixtures_dir().join("ch3-scale-then-convert/scenario.json");
    let out = run(&["run", scenario.to_str().unwrap(), "--store", store_dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let verify = || run(&["verify", "--store", store_dir.to_str().unwrap()]);
    let sound = verify();
    assert!(sound.status.success(), "{}", String::from_utf8_lossy(&sound.stderr));
    assert!(String::from_utf8_lossy(&sound.stdout).contains("the tag index through position"), "{}", String::from_utf8_lossy(&sound.stdout));

    // The first event about a resource, listed under another one.
    {
        let store = SledStore::open(&store_dir).unwrap();
        // A short run may end before the engine's next catch-up: as a reader would, first.
        poolbill_ledger::catch_up_tags(&store).unwrap();
        let first = store.tag_counts("resource:").unwrap();
        let (tag, _) = &first[0];
        let position = store.tagged(tag, 0, 1).unwrap()[0];
        store.reset_tags(poolbill_projections::TAGS_VERSION).unwrap();
        let mut tags: Vec<(u64, Vec<String>)> = Vec::new();
        for envelope in store.read_all(1).take(position as usize) {
            let envelope = envelope.unwrap();
            let mut own = poolbill_projections::tags_of(&poolbill_projections::event_of(&envelope).unwrap());
            if envelope.position == position {
                own = own.into_iter().map(|t| if &t == tag { "resource:someone-else".to_string() } else { t }).collect();
            }
            tags.push((envelope.position, own));
        }
        store.tag_existing(&tags).unwrap();
        poolbill_ledger::catch_up_tags(&store).unwrap();
    }
    let damaged = verify();
    let stderr = String::from_utf8_lossy(&damaged.stderr);
    assert_eq!(damaged.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("checking the tag index") && stderr.contains("resource:"), "{stderr}");

    // Rebuilt from the log, it is sound again.
    {
        let store = SledStore::open(&store_dir).unwrap();
        store.reset_tags(poolbill_projections::TAGS_VERSION).unwrap();
        poolbill_ledger::catch_up_tags(&store).unwrap();
    }
    assert!(verify().status.success());
}
