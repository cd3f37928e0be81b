//! The timeline of chapter 3, scenario two's pool: on demand from 2023-03-18 15:30, scaled to
//! two nodes 03-20 09:00, converted to a one-month subscription 10:30 (period end 2023-04-20
//! 23:59:59), then expired, frozen and released (standard level: 15 + 15 days).

use poolbill_domain::{Command, Instant, JobKind, Price, Term};
use poolbill_replay::timeline::{render_svg, timeline, Timeline};
use poolbill_store::Envelope;
use poolbill_testkit::{cmd, t as at, Given, SPEC};
use rust_decimal_macros::dec;

fn log(commands: Vec<(&str, Command)>, until: &str) -> Vec<Envelope> {
    Given::commands(commands).log(until)
}

fn price(spec: &str, hourly: rust_decimal::Decimal) -> Command {
    Command::SetPrice { spec: spec.into(), price: Price { hourly: Some(hourly), monthly: Some(dec!(1750)), yearly: None } }
}

fn account(balance: rust_decimal::Decimal) -> Command {
    Command::OpenAccount { account: "acct-1".into(), balance, level: "standard".into(), discount: dec!(0) }
}

fn on_demand(pool: &str) -> Command {
    cmd::purchase("acct-1", pool).build()
}

/// A training job on the public pool for 43 hours: its lines carry `training_job-1` (R5).
fn public_training() -> Vec<Envelope> {
    let spec = "modelarts.vm.cpu.8u.public";
    let start = Command::StartJob {
        account: "acct-1".into(),
        job: "job-1".into(),
        kind: JobKind::Training,
        spec: spec.into(),
        nodes: 1,
        pool: None,
        model: None,
        disk_gb: None,
        disk_hourly: None,
    };
    log(
        vec![
            ("2023-03-18T15:30:00+08:00", price(spec, dec!(3.40))),
            ("2023-03-18T15:30:00+08:00", account(dec!(100000))),
            ("2023-03-18T15:30:00+08:00", start),
            ("2023-03-20T10:30:00+08:00", Command::StopJob { job: "job-1".into() }),
        ],
        "2023-03-20T12:00:00+08:00",
    )
}

/// fixtures/arrears-grace-frozen-recovery: 5.00 runs out, grace, frozen, a top-up, deleted.
fn arrears() -> Vec<Envelope> {
    log(
        vec![
            ("2023-04-18T09:00:00+08:00", price("modelarts.vm.cpu.8ud", dec!(3.50))),
            ("2023-04-18T09:00:00+08:00", account(dec!(5.00))),
            ("2023-04-18T09:00:00+08:00", on_demand("pool-1")),
            ("2023-04-20T10:00:00+08:00", on_demand("pool-2")),
            ("2023-05-05T12:00:00+08:00", Command::TopUp { account: "acct-1".into(), amount: dec!(1300.00) }),
            ("2023-05-05T14:00:00+08:00", Command::Delete { pool: "pool-1".into() }),
        ],
        "2023-05-05T16:00:00+08:00",
    )
}

fn ch3_scenario_two() -> Vec<Envelope> {
    let at = "2023-03-18T15:30:00+08:00";
    Given::new()
        .at(at, cmd::price(SPEC, Some("3.50"), Some("1750"), None))
        .at(at, cmd::open_account("acct-1", "100000"))
        .at(at, cmd::purchase("acct-1", "pool-1"))
        .at("2023-03-20T09:00:00+08:00", cmd::scale("pool-1", 2))
        .at("2023-03-20T10:30:00+08:00", Command::Convert { pool: "pool-1".into(), term: Term::Months(1) })
        .log("2023-05-25T00:00:00+08:00")
}

fn pool() -> Timeline {
    timeline(&ch3_scenario_two(), "pool-1").expect("pool-1 is in the log")
}

#[test]
fn bands_follow_the_pool_from_on_demand_to_released() {
    let t = pool();
    let bands: Vec<(&str, &str, Instant)> = t.bands.iter().map(|b| (b.state.as_str(), b.mode.as_str(), b.from)).collect();
    assert_eq!(
        bands,
        vec![
            ("running", "on_demand", at("2023-03-18T15:30:00+08:00")),
            ("running", "monthly", at("2023-03-20T10:30:00+08:00")),
            // R3: the period's last second is 04-20 23:59:59; expiry is a second later.
            ("expired", "monthly", at("2023-04-21T00:00:00+08:00")),
            // Standard level: frozen 15 days after expiry, released 15 days after that.
            ("frozen", "monthly", at("2023-05-06T00:00:00+08:00")),
            ("released", "monthly", at("2023-05-21T00:00:00+08:00")),
        ]
    );
    // Consecutive and covering the whole timeline.
    assert_eq!(t.start, at("2023-03-18T15:30:00+08:00"));
    for pair in t.bands.windows(2) {
        assert_eq!(pair[0].to, pair[1].from);
    }
    assert_eq!(t.bands.last().unwrap().to, t.end);
    assert!(t.end >= at("2023-05-21T00:00:00+08:00"));
}

#[test]
fn nodes_step_from_one_to_two_at_the_scale() {
    let t = pool();
    assert_eq!(t.nodes, vec![(at("2023-03-18T15:30:00+08:00"), 1), (at("2023-03-20T09:00:00+08:00"), 2)]);
}

#[test]
fn charges_hold_the_conversion_and_the_hourly_usage() {
    let t = pool();
    let conversion: Vec<_> = t.charges.iter().filter(|c| c.item == "conversion").collect();
    assert_eq!(conversion.len(), 1);
    assert_eq!(conversion[0].payable, dec!(3500.00)); // R11: two nodes × 1750
    assert_eq!(conversion[0].mode, "monthly");
    assert_eq!(conversion[0].at, at("2023-03-20T10:30:00+08:00"));
    let usage: Vec<_> = t.charges.iter().filter(|c| c.item == "compute").collect();
    assert!(usage.len() > 10, "hourly on-demand lines: {}", usage.len());
    assert!(usage.iter().all(|c| c.mode == "on_demand" && c.end <= at("2023-03-20T10:30:00+08:00")));
    let total: rust_decimal::Decimal = t.charges.iter().map(|c| c.payable).sum();
    assert_eq!(total, dec!(3655.75)); // fixtures/ch3-scale-then-convert
}

#[test]
fn the_svg_names_the_pool_its_states_and_the_conversion() {
    let svg = render_svg(&pool());
    assert!(svg.starts_with("<svg"), "{}", &svg[..60.min(svg.len())]);
    assert!(svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains("pool-1"));
    assert!(svg.contains("3500.00"));
    let legend = &svg[svg.find(r#"class="legend""#).expect("a legend")..];
    let legend = &legend[..legend.find("</g>").expect("the legend ends")];
    for state in ["running", "expired", "frozen", "released"] {
        assert!(legend.contains(state), "the legend lacks {state}");
    }
    // Well-formed enough for a parser: every tag it opens it closes.
    let mut open: Vec<String> = Vec::new();
    for event in svg::read(&svg).expect("parses") {
        match event {
            svg::parser::Event::Error(e) => panic!("not an SVG: {e:?}"),
            svg::parser::Event::Tag(name, svg::node::element::tag::Type::Start, _) => open.push(name.to_string()),
            svg::parser::Event::Tag(name, svg::node::element::tag::Type::End, _) => assert_eq!(open.pop().as_deref(), Some(name)),
            _ => {}
        }
    }
    assert!(open.is_empty(), "left open: {open:?}");
}

#[test]
fn an_unknown_resource_is_an_error_naming_it() {
    let err = timeline(&ch3_scenario_two(), "pool-9").unwrap_err();
    assert!(matches!(&err, poolbill_replay::timeline::TimelineError::NoSuchResource(id) if id == "pool-9"), "{err:?}");
    assert!(err.to_string().contains("pool-9"), "{err}");
}

#[test]
fn a_job_is_charged_under_its_billed_id() {
    let t = timeline(&public_training(), "job-1").expect("job-1 is in the log");
    let bands: Vec<(&str, Instant)> = t.bands.iter().map(|b| (b.state.as_str(), b.from)).collect();
    assert_eq!(bands, vec![("running", at("2023-03-18T15:30:00+08:00")), ("stopped", at("2023-03-20T10:30:00+08:00"))]);
    assert!(!t.charges.is_empty());
    let total: rust_decimal::Decimal = t.charges.iter().map(|c| c.payable).sum();
    assert_eq!(total, dec!(146.20)); // fixtures/ch3-public-training: 43 h × 3.40
    assert!(render_svg(&t).contains("job-1"));
}

#[test]
fn arrears_show_as_grace_then_frozen_then_running_again() {
    let t = timeline(&arrears(), "pool-1").expect("pool-1 is in the log");
    let states: Vec<&str> = t.bands.iter().map(|b| b.state.as_str()).collect();
    assert_eq!(states, vec!["running", "grace", "frozen", "running", "deleted"]);
    let svg = render_svg(&t);
    for state in ["running", "grace", "frozen", "deleted"] {
        assert!(svg.contains(state), "{state}");
    }
}

/// Writes the three pictures to files and reads them back: each a whole SVG document naming
/// its resource. `TIMELINE_SVG=/tmp/timeline.svg cargo test …` keeps them for a person to look
/// at (chapter 3's pool there, the job and the arrears beside it: `-job`, `-arrears`).
#[test]
fn writes_the_svg_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = std::env::var("TIMELINE_SVG").unwrap_or_else(|_| dir.path().join("timeline.svg").display().to_string());
    let stem = path.trim_end_matches(".svg").to_string();
    let pictures = [
        (path, pool(), "pool-1"),
        (format!("{stem}-job.svg"), timeline(&public_training(), "job-1").expect("job-1"), "job-1"),
        (format!("{stem}-arrears.svg"), timeline(&arrears(), "pool-1").expect("pool-1"), "pool-1"),
    ];
    for (file, picture, id) in pictures {
        std::fs::write(&file, render_svg(&picture)).expect("writes the SVG");
        let text = std::fs::read_to_string(&file).expect("reads the SVG back");
        assert!(text.starts_with("<svg") || text.starts_with("<?xml"), "{file}: an SVG document");
        assert!(text.trim_end().ends_with("</svg>"), "{file}: a whole one");
        assert!(text.contains(id), "{file}: names {id}");
    }
}
