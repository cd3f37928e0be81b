//! `month_bills`: R5 detail bills of one Beijing month, reconciled with the flow bills.

use poolbill_domain::{BillingMode, Command};
use poolbill_projections::Projections;
use poolbill_replay::bills::month_bills;
use poolbill_testkit::{cmd, Given, SPEC};
use rust_decimal::Decimal;
use std::str::FromStr;

/// Run the commands after prices and two accounts (acct-2 at a 0.10 discount, R2).
fn project(commands: Vec<(&str, Command)>, until: &str) -> Projections {
    let at = "2023-01-01T00:00:00+08:00";
    let setup = vec![
        (at, cmd::price(SPEC, Some("3.50"), Some("1750.00"), None)),
        (at, cmd::open_account("acct-1", "100000.00")),
        (at, cmd::open_account_discounted("acct-2", "100000.00", "0.10")),
    ];
    Given::commands(setup.into_iter().chain(commands)).projections(until)
}

fn pool(account: &str, id: &str, nodes: u32, mode: BillingMode) -> Command {
    let on_demand = cmd::purchase(account, id).nodes(nodes);
    match mode {
        BillingMode::Monthly => on_demand.monthly(1).build(),
        _ => on_demand.build(),
    }
}

/// The §1.2 upgrade in April, and two on-demand pools running over midnight into May.
fn two_months() -> Projections {
    project(
        vec![
            ("2023-04-08T10:00:00+08:00", pool("acct-1", "pool-1", 1, BillingMode::Monthly)),
            ("2023-04-18T10:00:00+08:00", Command::Scale { pool: "pool-1".into(), nodes: Some(2), spec: None }),
            ("2023-04-30T23:30:00+08:00", pool("acct-1", "pool-a", 1, BillingMode::OnDemand)),
            ("2023-04-30T23:47:08+08:00", pool("acct-2", "pool-b", 3, BillingMode::OnDemand)),
            ("2023-05-01T00:45:10+08:00", Command::Delete { pool: "pool-a".into() }),
            ("2023-05-01T01:10:00+08:00", Command::Delete { pool: "pool-b".into() }),
        ],
        "2023-05-01T03:00:00+08:00",
    )
}

/// The flow bills' payable of a month, summed here from the document's bills list.
fn flow_sum(p: &Projections, month: &str) -> Decimal {
    p.document().bills.iter().filter(|b| b.start.starts_with(month)).map(|b| Decimal::from_str(&b.payable).unwrap()).sum()
}

#[test]
fn totals_equal_the_flow_bills_to_the_cent_in_each_month() {
    let p = two_months();
    let april = month_bills(&p, "2023-04").unwrap();
    let may = month_bills(&p, "2023-05").unwrap();
    // April: 1750 + 1151.67 (pool-1), 1800 s × 3.50 = 1.75 (pool-a), 3 × 772 s × 3.50 =
    // 2.25166666 less 10 % → 2.02 (pool-b).
    assert_eq!(april.total_payable, "2905.44");
    // May: 2710 s → 2.63 (pool-a); 10.50 − 1.05 = 9.45 and 1.75 − 0.175 → 1.57 (pool-b).
    assert_eq!(may.total_payable, "13.65");
    for m in [&april, &may] {
        assert_eq!(m.flow_payable, m.total_payable, "{}", m.to_table());
        assert_eq!(Decimal::from_str(&m.total_payable).unwrap(), flow_sum(&p, &m.month));
        let rows: Decimal = m.rows.iter().map(|r| Decimal::from_str(&r.payable).unwrap()).sum();
        assert_eq!(rows, Decimal::from_str(&m.total_payable).unwrap());
    }
    let all: Decimal = p.bills.iter().map(|b| b.line.amounts.payable).sum();
    assert_eq!(Decimal::from_str(&april.total_payable).unwrap() + Decimal::from_str(&may.total_payable).unwrap(), all);
    // One row per account, resource and billing mode (R5).
    let keys: Vec<(&str, &str, &str)> = april.rows.iter().map(|r| (r.account.as_str(), r.resource.as_str(), r.mode)).collect();
    assert_eq!(keys, vec![("acct-1", "pool-1", "monthly"), ("acct-1", "pool-a", "on_demand"), ("acct-2", "pool-b", "on_demand")]);
    let pool_1 = &april.rows[0];
    assert_eq!((pool_1.list_price.as_str(), pool_1.round_off.as_str(), pool_1.lines), ("2901.675", "0.005", 2));
    assert_eq!((april.total_discount.as_str(), april.total_round_off.as_str()), ("0.22516666", "0.0115"));
    assert_eq!(may.rows.len(), 2);
    assert_eq!(may.rows[1].lines, 2);
}

#[test]
fn a_month_without_bills_has_no_rows_and_zero_totals() {
    let p = two_months();
    let june = month_bills(&p, "2023-06").unwrap();
    assert!(june.rows.is_empty());
    assert_eq!((june.total_payable.as_str(), june.flow_payable.as_str()), ("0.00", "0.00"));
    assert_eq!((june.total_list.as_str(), june.total_discount.as_str(), june.total_round_off.as_str()), ("0", "0", "0"));
    let csv = june.to_csv();
    assert_eq!(csv.lines().count(), 2, "{csv}");
    assert_eq!(csv.lines().last().unwrap(), "total,,,,0,0,0,0,0.00,0");
    assert_eq!(june.to_json()["rows"], serde_json::json!([]));
    assert_eq!(june.to_json()["total_payable"], "0.00");
}

#[test]
fn csv_quotes_a_resource_id_with_a_comma_and_quotes() {
    let id = "gpu,pool \"a\"";
    let p = project(
        vec![
            ("2023-04-30T23:30:00+08:00", pool("acct-1", id, 1, BillingMode::OnDemand)),
            ("2023-05-01T00:00:00+08:00", Command::Delete { pool: id.into() }),
        ],
        "2023-05-01T01:00:00+08:00",
    );
    let csv = month_bills(&p, "2023-04").unwrap().to_csv();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "month,account,resource,mode,usage_hours,list_price,discount,round_off,payable,lines");
    assert_eq!(lines[1], "2023-04,acct-1,\"gpu,pool \"\"a\"\"\",on_demand,0.5,1.75,0,0,1.75,1");
    assert_eq!(lines[2], "total,,,,0.5,1.75,0,0,1.75,1");
    assert_eq!(lines.len(), 3);
}

#[test]
fn table_and_json_show_the_rows_and_totals() {
    let p = two_months();
    let april = month_bills(&p, "2023-04").unwrap();
    let table = april.to_table();
    for needle in ["2023-04", "pool-1", "pool-b", "2901.67", "total", "2905.44", "agrees"] {
        assert!(table.contains(needle), "{needle:?} missing from\n{table}");
    }
    let json = april.to_json();
    assert_eq!(json["month"], "2023-04");
    assert_eq!(json["rows"].as_array().unwrap().len(), 3);
    assert_eq!(json["flow_payable"], "2905.44");
}

#[test]
fn a_malformed_month_is_an_error_naming_it() {
    let p = two_months();
    for bad in ["2023-4", "2023-13", "2023-00", "23-04", "2023/04", "2023-04-01", "", "abcd-ef"] {
        let err = month_bills(&p, bad).unwrap_err();
        assert_eq!(err.month, bad);
        assert!(err.to_string().contains(&format!("{bad:?}")), "{bad:?}: {err}");
    }
}
