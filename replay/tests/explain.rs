//! `explain`: each flow-bill line derived by rule number (R2, R3, R4, R9, R13, R15), recomputed
//! and checked against what the line recorded.

use poolbill_domain::{Command, JobKind, Term};
use poolbill_replay::explain::{explain_at, explain_bill, ExplainError, Explanation, Step};
use poolbill_store::Envelope;
use poolbill_testkit::{cmd, t, Given, PUBLIC_SPEC};
use rust_decimal::Decimal;
use rust_decimal_macros::dec;
use std::str::FromStr;

const PUBLIC: &str = PUBLIC_SPEC;

/// Prices and two accounts: acct-1 without a discount, acct-2 at rate 0.10 (R2).
fn setup() -> Vec<(&'static str, Command)> {
    let at = "2023-01-01T00:00:00+08:00";
    vec![
        (at, cmd::seed_price()),
        (at, cmd::price(PUBLIC, Some("3.40"), None, None)),
        (at, cmd::open_account("acct-1", "100000.00")),
        (at, cmd::open_account_discounted("acct-2", "100000.00", "0.10")),
    ]
}

/// A log made by running the commands through the domain, the clock passing `until` at the end.
fn log(commands: Vec<(&str, Command)>, until: &str) -> Vec<Envelope> {
    Given::commands(setup().into_iter().chain(commands)).log(until)
}

fn on_demand(account: &str, pool: &str, nodes: u32, ready: bool) -> Command {
    let p = cmd::purchase(account, pool).nodes(nodes);
    if ready {
        p.build()
    } else {
        p.not_ready().build()
    }
}

fn monthly(account: &str, pool: &str) -> Command {
    cmd::purchase(account, pool).monthly(1).build()
}

/// Seed §6: ready 16:47:08 at 3.50/h, deleted 18:09:06.
fn seed_6() -> Vec<Envelope> {
    log(
        vec![
            ("2023-07-10T16:37:15+08:00", on_demand("acct-1", "pool-62a1", 1, false)),
            ("2023-07-10T16:47:08+08:00", Command::Ready { pool: "pool-62a1".into() }),
            ("2023-07-10T18:09:06+08:00", Command::Delete { pool: "pool-62a1".into() }),
        ],
        "2023-07-10T20:00:00+08:00",
    )
}

/// On demand with a mid-hour scale, a job on the discount account partly covered by a package,
/// a notebook with a disk, a conversion, the §1.2 upgrade, a unified-expiry renewal, and a full
/// and a partial refund.
fn mixed() -> Vec<Envelope> {
    let start_job = |account: &str, job: &str, kind: JobKind, nodes: u32, disk_hourly: Option<Decimal>| Command::StartJob {
        account: account.into(),
        job: job.into(),
        kind,
        spec: PUBLIC.into(),
        nodes,
        pool: None,
        model: None,
        disk_gb: None,
        disk_hourly,
        region: None,
    };
    log(
        vec![
            (
                "2023-04-01T09:00:00+08:00",
                Command::BuyPackage {
                    account: "acct-2".into(),
                    package: "pkg-1".into(),
                    spec: PUBLIC.into(),
                    quantity: 1,
                    hours: 1,
                    valid_days: 30,
                    price: dec!(3.00),
                    region: None,
                    alert_below: None,
                },
            ),
            ("2023-04-01T09:00:00+08:00", on_demand("acct-1", "pool-od", 2, true)),
            ("2023-04-01T09:20:00+08:00", start_job("acct-2", "train-1", JobKind::Training, 2, None)),
            ("2023-04-01T09:30:00+08:00", Command::Scale { pool: "pool-od".into(), nodes: Some(4), spec: None }),
            ("2023-04-01T10:12:52+08:00", Command::Delete { pool: "pool-od".into() }),
            ("2023-04-01T10:45:00+08:00", Command::StopJob { job: "train-1".into() }),
            ("2023-04-02T10:00:00+08:00", on_demand("acct-1", "pool-c", 1, true)),
            ("2023-04-02T10:30:00+08:00", Command::Convert { pool: "pool-c".into(), term: Term::Months(1) }),
            ("2023-04-02T11:00:00+08:00", start_job("acct-1", "nb-1", JobKind::Notebook, 1, Some(dec!(0.0014)))),
            ("2023-04-02T11:30:00+08:00", Command::StopJob { job: "nb-1".into() }),
            ("2023-04-02T12:10:00+08:00", Command::DeleteJob { job: "nb-1".into() }),
            ("2023-04-08T10:00:00+08:00", monthly("acct-1", "pool-1")),
            ("2023-04-08T11:00:00+08:00", monthly("acct-2", "pool-s")),
            ("2023-04-10T10:00:00+08:00", monthly("acct-2", "pool-t")),
            ("2023-04-12T10:00:00+08:00", Command::Unsubscribe { pool: "pool-t".into() }),
            ("2023-04-18T10:00:00+08:00", Command::Scale { pool: "pool-1".into(), nodes: Some(2), spec: None }),
            ("2023-04-20T10:00:00+08:00", Command::Renew { pool: "pool-1".into(), term: Term::Months(1), align_day: Some(15) }),
            ("2023-04-20T11:00:00+08:00", Command::Unsubscribe { pool: "pool-s".into() }),
        ],
        "2023-04-25T00:00:00+08:00",
    )
}

/// How many bills the log's document lists.
fn bill_count(envelopes: &[Envelope]) -> usize {
    let mut n = 0;
    while explain_bill(envelopes, n + 1).is_ok() {
        n += 1;
    }
    n
}

/// The last step whose sentence starts with `prefix`.
fn step<'a>(e: &'a Explanation, prefix: &str) -> &'a Step {
    e.steps.iter().rev().find(|s| s.what.starts_with(prefix)).unwrap_or_else(|| panic!("no step {prefix:?} in {}", e.to_text()))
}

fn d(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap_or_else(|_| panic!("{s:?} is not a decimal"))
}

fn differs(e: &Explanation) -> bool {
    e.steps.iter().any(|s| s.what.starts_with("Recorded amounts differ"))
}

#[test]
fn seed_6_first_line_is_772_seconds_to_0_75() {
    let log = seed_6();
    let e = explain_bill(&log, 1).unwrap();
    assert_eq!((e.bill.resource.as_str(), e.bill.start.as_str()), ("pool-62a1", "2023-07-10T16:47:08+08:00"));
    assert_eq!(step(&e, "Seconds").value, "772");
    assert_eq!(step(&e, "Seconds").rule, "R4");
    assert_eq!(step(&e, "Exact list price").value, "0.7505555555555555555555555556");
    let list = step(&e, "List price");
    assert_eq!((list.rule.as_str(), list.value.as_str()), ("R2", "0.75055555"));
    assert_eq!(step(&e, "Payable").value, "0.75");
    assert_eq!(step(&e, "Round-off").value, "0.00055555");
    assert_eq!((e.bill.list_price.as_str(), e.bill.round_off.as_str(), e.bill.payable.as_str()), ("0.75055555", "0.00055555", "0.75"));
    assert!(!differs(&e));
    // R12: the balance pays the payable.
    assert_eq!((e.balance_before.as_str(), e.balance_after.as_str()), ("100000.00", "99999.25"));
    // Metering started at ready; the cycle ran to 17:00 and was settled then.
    let roles: Vec<(&str, &str)> = e.events.iter().map(|r| (r.event_type.as_str(), r.role.as_str())).collect();
    assert_eq!(roles, vec![("pool_ready", "metering started"), ("charged", "charged"), ("cycle_settled", "settled the cycle")]);
    let text = e.to_text();
    for needle in ["R4", "R2", "772", "0.75055555", "0.00055555", "100000.00 → 99999.25"] {
        assert!(text.contains(needle), "{needle:?} missing from\n{text}");
    }
}

#[test]
fn seed_6_last_line_names_the_deletion_that_ended_it() {
    let log = seed_6();
    let e = explain_bill(&log, 3).unwrap();
    assert_eq!(step(&e, "Seconds").value, "546");
    let ended: Vec<&str> = e.events.iter().filter(|r| r.role == "metering ended").map(|r| r.event_type.as_str()).collect();
    assert_eq!(ended, vec!["pool_deleted"]);
    // The line starts at 18:00, carried over from the ready at 16:47:08.
    assert_eq!(e.events[0].event_type, "pool_ready");
    assert_eq!(e.bill.payable, "0.53");
}

#[test]
fn every_line_of_a_mixed_log_is_derived_to_its_recorded_amounts() {
    let log = mixed();
    let count = bill_count(&log);
    assert!(count >= 15, "only {count} bills");
    let mut items = std::collections::BTreeSet::new();
    for n in 1..=count {
        let e = explain_bill(&log, n).unwrap();
        let text = e.to_text();
        assert!(!differs(&e), "bill {n} does not derive:\n{text}");
        let (list, discount, round_off, payable) = (step(&e, "List price"), step(&e, "Discount"), step(&e, "Round-off"), step(&e, "Payable"));
        assert_eq!(list.value, e.bill.list_price, "bill {n} list\n{text}");
        assert_eq!(discount.value, e.bill.discount, "bill {n} discount\n{text}");
        assert_eq!(round_off.value, e.bill.round_off, "bill {n} round-off\n{text}");
        assert_eq!(payable.value, e.bill.payable, "bill {n} payable\n{text}");
        assert_eq!(d(&list.value) - d(&discount.value) - d(&round_off.value), d(&payable.value), "bill {n}\n{text}");
        assert_eq!(d(&e.balance_before) - d(&e.bill.payable), d(&e.balance_after), "bill {n} balance\n{text}");
        assert!(e.steps.iter().all(|s| s.rule.starts_with('R')), "bill {n}\n{text}");
        assert!(e.events.iter().any(|r| r.role == "charged" && r.position == e.bill.event));
        items.insert(format!("{}/{}", e.bill.mode, e.bill.item));
    }
    // The log really holds every kind of line the test claims to cover.
    for kind in [
        "on_demand/compute",
        "package/compute",
        "on_demand/storage",
        "package/package",
        "monthly/purchase",
        "monthly/conversion",
        "monthly/upgrade",
        "monthly/renewal",
        "monthly/refund",
    ] {
        assert!(items.contains(kind), "no {kind} line among {items:?}");
    }
}

#[test]
fn a_package_covers_part_of_a_job_on_the_discount_account() {
    let log = mixed();
    // The job id finds the lines billed as training_train-1 (R5): 09:20–10:00, 2 nodes.
    let lines = explain_at(&log, "train-1", t("2023-04-01T09:20:00+08:00")).unwrap();
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(lines.iter().all(|e| e.bill.resource == "training_train-1"));
    let covered = lines.iter().find(|e| e.bill.mode == "package").unwrap();
    assert_eq!(step(covered, "Taken from package pkg-1").value, "3600");
    assert_eq!(step(covered, "Payable").value, "0.00");
    let usage = lines.iter().find(|e| e.bill.mode == "on_demand").unwrap();
    let taken = step(usage, "Taken first from package pkg-1");
    assert_eq!((taken.rule.as_str(), taken.value.as_str()), ("R13", "3600"));
    assert_eq!(step(usage, "Billable node-seconds").value, "1200");
    // 3.40 × 1200 / 3600 = 1.13333333; discount trunc8(× 0.10) = 0.11333333; payable 1.02.
    assert_eq!(step(usage, "List price").value, "1.13333333");
    assert_eq!(step(usage, "Discount").value, "0.11333333");
    assert_eq!(step(usage, "Payable").value, "1.02");
    assert_eq!(usage.events.iter().find(|r| r.role == "metering started").unwrap().event_type, "job_started");
}

#[test]
fn explain_at_the_instant_of_a_scale_finds_the_line_starting_there() {
    let log = mixed();
    let lines = explain_at(&log, "pool-od", t("2023-04-01T09:30:00+08:00")).unwrap();
    assert_eq!(lines.len(), 1, "{lines:#?}");
    let e = &lines[0];
    assert_eq!((e.bill.start.as_str(), e.bill.end.as_str()), ("2023-04-01T09:30:00+08:00", "2023-04-01T10:00:00+08:00"));
    assert_eq!(step(e, "4 nodes × 1800 s").value, "7200");
    let changed = e.events.iter().find(|r| r.role == "configuration changed").unwrap();
    assert_eq!((changed.event_type.as_str(), changed.at.as_str()), ("pool_scaled", "2023-04-01T09:30:00+08:00"));
    // The line before it ends at the scale (R10).
    let before = explain_at(&log, "pool-od", t("2023-04-01T09:29:59+08:00")).unwrap();
    assert_eq!(before[0].bill.end, "2023-04-01T09:30:00+08:00");
    assert!(before[0].events.iter().any(|r| r.role == "metering ended" && r.event_type == "pool_scaled"));
}

#[test]
fn unknown_resource_or_instant_or_number_is_no_such_bill() {
    let log = mixed();
    match explain_at(&log, "no-such-pool", t("2023-04-01T09:30:00+08:00")) {
        Err(ExplainError::NoSuchBill(msg)) => assert!(msg.contains("no-such-pool") && msg.contains("2023-04-01T09:30:00+08:00"), "{msg}"),
        other => panic!("{other:?}"),
    }
    match explain_at(&log, "pool-od", t("2023-04-01T08:00:00+08:00")) {
        Err(ExplainError::NoSuchBill(msg)) => assert!(msg.contains("pool-od") && msg.contains("08:00:00"), "{msg}"),
        other => panic!("{other:?}"),
    }
    let count = bill_count(&log);
    assert!(matches!(explain_bill(&log, 0), Err(ExplainError::NoSuchBill(_))));
    let err = explain_bill(&log, count + 1).unwrap_err();
    assert!(err.to_string().contains(&format!("bill {}", count + 1)), "{err}");
}

#[test]
fn the_upgrade_explains_its_r9_factor() {
    let log = mixed();
    let lines = explain_at(&log, "pool-1", t("2023-04-18T10:00:00+08:00")).unwrap();
    let e = lines.iter().find(|e| e.bill.item == "upgrade").unwrap();
    let text = e.to_text();
    for needle in ["R9", "12/30 + 8/31", "0.6581", "(3500 − 1750) × 0.6581", "1151.675", "1151.67"] {
        assert!(text.contains(needle), "{needle:?} missing from\n{text}");
    }
    assert_eq!(step(e, "Payable").value, "1151.67");
    assert_eq!(step(e, "Round-off").value, "0.005");
    let roles: Vec<&str> = e.events.iter().map(|r| r.role.as_str()).collect();
    assert_eq!(roles, vec!["command", "configuration changed", "charged"]);
}

#[test]
fn refunds_and_renewals_show_their_parts() {
    let log = mixed();
    // Within five days: everything paid for pool-t back (R15): 1750 less acct-2's 10 %.
    let full = explain_at(&log, "pool-t", t("2023-04-12T10:00:00+08:00")).unwrap();
    let refund = full.iter().find(|e| e.bill.item == "refund").unwrap();
    assert_eq!(step(refund, "Paid for the purchase").value, "1575.00");
    assert_eq!(step(refund, "Everything paid comes back").value, "-1575");
    assert_eq!(refund.bill.payable, "-1575.00");
    // After five days: 1750 × (10/30 + 8/31 = 0.5914) = 1034.95, less the 10 % discount.
    let partial = explain_at(&log, "pool-s", t("2023-04-20T11:00:00+08:00")).unwrap();
    let refund = partial.iter().find(|e| e.bill.item == "refund").unwrap();
    assert!(step(refund, "Remaining factor").what.contains("10/30 + 8/31 = 0.5914"), "{}", refund.to_text());
    assert_eq!(step(refund, "Unused part").value, "1034.95");
    assert_eq!(step(refund, "Payable").value, "-931.45");
    // Renewed 05-08 → 06-08, aligned to the 15th: 7/30 of a month more (R3).
    let renewal = explain_at(&log, "pool-1", t("2023-06-01T00:00:00+08:00")).unwrap();
    let e = renewal.iter().find(|e| e.bill.item == "renewal").unwrap();
    assert!(step(e, "Factor of the extra days").what.contains("7/30"), "{}", e.to_text());
    assert_eq!(step(e, "Unified expiry").value, "2023-06-15T23:59:59+08:00");
}

#[test]
fn a_line_that_disagrees_with_its_derivation_says_so() {
    let mut log = seed_6();
    let charged = log.iter_mut().find(|e| e.event_type == "charged").unwrap();
    *charged = poolbill_projections::portable(charged).unwrap().into_owned();
    let poolbill_store::Payload::Json(payload) = &mut charged.payload else { unreachable!("portable payloads are JSON") };
    payload["line"]["amounts"]["payable"] = serde_json::json!("0.76");
    let e = explain_bill(&log, 1).unwrap();
    let last = e.steps.last().unwrap();
    assert_eq!(last.rule, "R2");
    assert!(last.what.starts_with("Recorded amounts differ"), "{}", e.to_text());
    assert!(last.value.contains("0.76") && last.value.contains("0.75"), "{}", last.value);
}

#[test]
fn an_unreadable_log_is_a_log_error() {
    let mut log = seed_6();
    log[0].schema_version = 99;
    match explain_bill(&log, 1) {
        Err(ExplainError::Decode { position, source }) => {
            assert_eq!(position, 1);
            assert_eq!((source.event_type.as_str(), source.schema_version), ("command_received", 99), "{source}");
        }
        other => panic!("{other:?}"),
    }
}
