//! Property tests: random command histories on a fake clock (each command's own instant), run
//! through the engine itself on a temporary store — the path production runs — and checked
//! against invariants of `billing-rules.md` (R1–R17). Check 4 compares the engine's log with
//! in-memory re-runs (`rerun`); both take the ledger's steps.
//!
//! A case is `(seed, length)`. A small deterministic generator of our own (SplitMix64) expands
//! the seed into a fixed setup and `length` steps; step i does not depend on `length`, so a
//! shorter length is a prefix of the same history (proptest shrinks the length to a minimal
//! prefix). Every failure names `seed=… length=…`; replay one case with
//!
//! ```sh
//! POOLBILL_PROP_SEED=… POOLBILL_PROP_LEN=… cargo test --test invariants one_case_from_env -- --nocapture
//! ```
//!
//! (`POOLBILL_PROP_VERBOSE=1` prints the log without settlement lines, `2` with them;
//! `POOLBILL_PROP_TIMING=1` times each check.) The number of cases is `PROPTEST_CASES` (64 when
//! unset; the long run is `PROPTEST_CASES=2000`). To look past a known failure for others, set
//! `POOLBILL_PROP_IGNORE` to `|`-separated texts of the failures to leave out (never in CI).
//!
//! The invariants, each a named check:
//! 1. `reconciliation` (R5, R12): opening + top-ups − Σ flow payable = closing, per account.
//! 2. `detail_equals_flow` (R5): the detail bills' payable equals the flow bills', per account
//!    and in total.
//! 3. `incremental_equals_replay`: the engine's own projections equal a fold of its log, the
//!    streamed document is byte for byte the in-memory one, and the
//!    log survives a JSON-lines round trip unchanged.
//! 4. `time_travel`: the log folded as of T equals a fresh rerun of the commands up to T.
//! 5. `allowed_transitions` (R4, R6, R12, R14–R17): every shown-state change is one the rules
//!    allow.
//! 6. `no_charge_when_not_running` (R4, R12, R14, R16): usage is billed only while the resource
//!    runs (compute) or exists undeleted and unfrozen (a notebook's disk), and never while its
//!    account's arrears are past grace.
//! 7. `no_second_billed_twice` (R2, R4, R13): a resource's usage stretches never overlap, stay
//!    within one hourly cycle, and packages plus on-demand cover each stretch exactly once; every
//!    line obeys R2's arithmetic.
//! 8. `negative_only_by_settlement` (R12): an order (subscription, package, upgrade…) never
//!    leaves a balance negative nor is paid during arrears; each line's balance is the running
//!    balance; a negative balance is in arrears, and a credit (top-up, refund) to ≥ 0 ends them.
//! 9. `transitions_on_time` (R4, R6–R8, R12, R13): expiry, freezing, release, warnings,
//!    auto-renewal attempts, arrears steps, settlements and package expiry come at their instants.
//! 10. `refund_within_paid` (R9, R15): a downgrade or unsubscribe never credits more than the
//!     subscription was paid since its purchase or conversion.
//! 11. `snapshot_plus_tail`: at random cut points, a snapshot of the prefix (written and read
//!     back) plus the rest of the log equals the full replay: state (less the gone resources a
//!     snapshot leaves out), counters, later bills.
//!
//! The engine forgets gone resources after every group commit (as it does every 20,000 events
//! in production), so every decision about one recalls it from the log, and check 4 holds its
//! refusals, word for word, to re-runs that forget nothing. Each run also checks that the
//! gone resources recalled from the log are the whole fold's records.

use chrono::Duration;
use poolbill_domain::money::trunc8;
use poolbill_domain::time::{at_three_am, beijing_at, beijing_date, hour_floor, next_hour, to_beijing};
use poolbill_domain::{Basis, BillLine, BillingMode, Command, Event, Hold, Instant, Item, JobKind, Level, Policy, PoolType, Price, State, Term};
use poolbill_engine::Engine;
use poolbill_ledger::fold_from;
use poolbill_ledger::snapshot::Snapshot;
use poolbill_projections::{Document, Projections};
use poolbill_replay::rerun::{self, Recorded, WhatIf};
use poolbill_replay::{fold, jsonl, Upto};
use poolbill_store::Envelope;
use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;
use rust_decimal::{Decimal, RoundingStrategy};
use std::collections::{BTreeMap, BTreeSet};

// ---------------------------------------------------------------------------------------------
// The generator
// ---------------------------------------------------------------------------------------------

/// SplitMix64: small, deterministic, good enough to spread a seed over a history.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// Inclusive.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
    fn decimal(&mut self, items: &[&str]) -> Decimal {
        let text: &&str = self.pick(items);
        dec(text)
    }
}

const ACCOUNTS: [&str; 2] = ["a", "b"];
const POOLS: [&str; 3] = ["p1", "p2", "p3"];
const JOBS: [&str; 3] = ["j1", "j2", "j3"];
const PACKAGES: [&str; 2] = ["k1", "k2"];
/// A second stream of the seed, for what must not depend on the history's length.
const TAIL_STREAM: u64 = 0xA5A5_5A5A_0BAD_F00D;
const CHECK_STREAM: u64 = 0x1234_5678_9ABC_DEF1;
const SNAPSHOT_STREAM: u64 = 0x0F0F_F0F0_5EED_CAFE;

use poolbill_testkit::{d as dec, t as instant};

fn start_instant() -> Instant {
    instant("2023-04-01T00:00:00+08:00")
}

fn bj(t: Instant) -> String {
    to_beijing(t).format("%Y-%m-%dT%H:%M:%S").to_string()
}

/// One generated history.
struct Case {
    seed: u64,
    commands: Vec<Recorded>,
    until: Instant,
}

fn generate(seed: u64, length: usize) -> Case {
    let mut rng = Rng::new(seed);
    let mut commands: Vec<Recorded> = Vec::new();
    let push = |commands: &mut Vec<Recorded>, at: Instant, command: Command| {
        let i = commands.len() as u64;
        commands.push(Recorded { id: Some(format!("prop:{i}")), at, index: Some(i), command });
    };
    let t0 = start_instant();
    push(
        &mut commands,
        t0,
        Command::SetPrice {
            spec: "cpu".into(),
            price: Price { hourly: Some(dec("3.50")), monthly: Some(dec("1750.00")), yearly: Some(dec("17500.00")) },
        },
    );
    push(&mut commands, t0, Command::SetPrice { spec: "pub".into(), price: Price { hourly: Some(dec("3.40")), monthly: None, yearly: None } });
    let mut levels = BTreeMap::new();
    levels.insert("standard".to_string(), Level { grace_days: 15, retention_days: 15 });
    levels.insert("short".to_string(), Level { grace_days: 1, retention_days: 2 });
    push(&mut commands, t0, Command::SetPolicy { policy: Policy { levels } });
    for account in ACCOUNTS {
        let balance = rng.decimal(&["0.00", "20.00", "500.00", "5000.00", "40000.00"]); // 40000: yearly subscriptions too
        let level = rng.pick(&["standard", "short"]).to_string();
        let discount = rng.decimal(&["0", "0.10"]);
        push(&mut commands, t0, Command::OpenAccount { account: account.into(), balance, level, discount });
    }
    let mut t = t0;
    for _ in 0..length {
        t = next_instant(&mut rng, t);
        let command = step(&mut rng);
        push(&mut commands, t, command);
    }
    let mut tail = Rng::new(seed ^ TAIL_STREAM);
    let until = t + Duration::days(tail.range(1, 4) as i64) + Duration::seconds(tail.below(86_400) as i64);
    Case { seed, commands, until }
}

/// A gap: sometimes none (equal instants), minutes, hours or days, or exactly the next hour
/// boundary (settlement), the next 03:00 (auto-renewal) or the next midnight (expiry).
fn next_instant(rng: &mut Rng, t: Instant) -> Instant {
    let r = rng.below(100);
    match r {
        0..=7 => t,
        8..=37 => t + Duration::minutes(rng.range(1, 120) as i64) + Duration::seconds(rng.below(60) as i64),
        38..=62 => t + Duration::hours(rng.range(1, 23) as i64) + Duration::seconds(rng.below(3600) as i64),
        63..=84 => t + Duration::days(rng.range(1, 7) as i64) + Duration::seconds(rng.below(86_400) as i64),
        85..=91 => next_hour(t),
        92..=96 => {
            let today = at_three_am(beijing_date(t));
            if today > t {
                today
            } else {
                at_three_am(beijing_date(t) + Duration::days(1))
            }
        }
        _ => beijing_at(beijing_date(t) + Duration::days(1), 0, 0, 0),
    }
}

fn months(rng: &mut Rng) -> Term {
    Term::Months(rng.range(1, 2) as u32)
}

fn step(rng: &mut Rng) -> Command {
    let account = rng.pick(&ACCOUNTS).to_string();
    let pool = rng.pick(&POOLS).to_string();
    let job = rng.pick(&JOBS).to_string();
    let weights: [(u64, &str); 13] = [
        (14, "purchase"),
        (6, "ready"),
        (5, "delete"),
        (6, "scale"),
        (6, "renew"),
        (4, "convert"),
        (7, "set_auto_renew"),
        (3, "unsubscribe"),
        (10, "top_up"),
        (5, "buy_package"),
        (16, "start_job"),
        (7, "stop_job"),
        (5, "delete_job"),
    ];
    let total: u64 = weights.iter().map(|(w, _)| w).sum();
    let mut r = rng.below(total);
    let mut kind = "top_up";
    for (w, name) in weights {
        if r < w {
            kind = name;
            break;
        }
        r -= w;
    }
    match kind {
        "purchase" => {
            let m = rng.below(10);
            let (mode, term) = match m {
                0..=4 => (BillingMode::OnDemand, None),
                5..=7 => (BillingMode::Monthly, Some(months(rng))),
                _ => (BillingMode::Yearly, Some(Term::Years(1))),
            };
            let pool_type = if rng.chance(20) { PoolType::Public } else { PoolType::Dedicated };
            let spec = match pool_type {
                PoolType::Public if rng.chance(70) => "pub",
                PoolType::Dedicated if rng.chance(15) => "pub",
                _ => "cpu",
            };
            let nodes = if mode == BillingMode::OnDemand { rng.range(1, 3) } else { rng.range(1, 2) } as u32;
            let ready = mode == BillingMode::OnDemand && rng.chance(60);
            Command::Purchase { account, pool, spec: spec.into(), nodes, mode, term, pool_type, region: None, ready }
        }
        "ready" => Command::Ready { pool },
        "delete" => Command::Delete { pool },
        "scale" => Command::Scale { pool, nodes: Some(rng.range(1, 4) as u32), spec: None },
        "renew" => {
            let term = months(rng);
            let align_day = if rng.chance(25) { Some(rng.range(1, 28) as u32) } else { None };
            Command::Renew { pool, term, align_day }
        }
        "convert" => {
            let term = if rng.chance(80) { months(rng) } else { Term::Years(1) };
            Command::Convert { pool, term }
        }
        "set_auto_renew" => {
            let enabled = rng.chance(80);
            let term = if enabled { Some(months(rng)) } else { None };
            let days_before = rng.range(1, 7) as u32;
            let count = *rng.pick(&[None, Some(1), Some(2)]);
            Command::SetAutoRenew { pool, enabled, term, days_before, count }
        }
        "unsubscribe" => Command::Unsubscribe { pool },
        "top_up" => {
            let amount = if rng.chance(50) {
                rng.decimal(&["1.00", "5.00", "20.00", "100.00", "500.00", "3000.00"])
            } else {
                Decimal::new(rng.range(100, 300_000) as i64, 2)
            };
            Command::TopUp { account, amount }
        }
        "buy_package" => Command::BuyPackage {
            account,
            package: rng.pick(&PACKAGES).to_string(),
            spec: "pub".into(),
            quantity: rng.range(1, 2) as u32,
            hours: rng.range(1, 6) as u32,
            valid_days: rng.range(1, 20) as u32,
            price: Decimal::new(rng.range(500, 5000) as i64, 2),
            region: None,
            alert_below: if rng.chance(50) { Some(Decimal::ONE) } else { None },
        },
        "start_job" => {
            let kind = *rng.pick(&[JobKind::Training, JobKind::Notebook, JobKind::Service]);
            let spec = if rng.chance(75) { "pub" } else { "cpu" };
            let nodes = rng.range(1, 2) as u32;
            let pool = if rng.chance(70) { None } else { Some(rng.pick(&POOLS).to_string()) };
            let model = (kind == JobKind::Service).then(|| "m1".to_string());
            let disk_hourly = (kind == JobKind::Notebook).then(|| dec("0.0014"));
            Command::StartJob { account, job, kind, spec: spec.into(), nodes, pool, model, disk_gb: None, disk_hourly, region: None }
        }
        "stop_job" => Command::StopJob { job },
        _ => Command::DeleteJob { job },
    }
}

// ---------------------------------------------------------------------------------------------
// Running a case
// ---------------------------------------------------------------------------------------------

struct Run {
    case: Case,
    log: Vec<(Instant, Option<String>, Event)>,
    projections: Projections,
    envelopes: Vec<Envelope>,
}

/// Run a case the way production does: through the engine (its writer, its group commits, a
/// store), then read the log back from the store. The engine and the re-runs of check 4 share
/// the ledger's steps, so check 4 also holds the engine to a re-run.
fn run(case: Case) -> Run {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    let (envelopes, projections) = runtime.block_on(async {
        // Indexes, forgets what is gone and keeps a snapshot after every group commit.
        let store = poolbill_store_sled::SledStore::temporary().expect("a temporary store");
        let engine = Engine::start_with(store, 1).await.expect("a temporary store");
        for c in &case.commands {
            let id = c.id.clone().expect("generated commands have ids");
            engine.execute(id, c.at, c.command.clone(), c.index).await.expect("the engine writes");
        }
        engine.advance_to(case.until).await.expect("the engine writes");
        // The engine keeps what is live; bills and refusals are read back from its log.
        let mut live = engine.read(|p| p.state.clone()).await.expect("the engine answers");
        let projections = engine.as_of(poolbill_engine::Upto::All).await.expect("the log reads back");
        let mut forgotten = projections.state.clone();
        forgotten.forget_gone();
        live.forget_gone();
        assert_eq!(live, forgotten, "the engine's live state is the fold of its log, less what is gone");
        // Every gone resource forgotten comes back from the log as the whole fold has it.
        poolbill_ledger::catch_up_tags(engine.store()).expect("the tag index catches up");
        let gone: Vec<String> =
            projections.state.pools.keys().chain(projections.state.jobs.keys()).filter(|id| !forgotten.knows(id)).cloned().collect();
        poolbill_ledger::recall::recall(engine.store(), &mut forgotten, &gone).expect("the gone are recalled");
        assert_eq!(forgotten, projections.state, "gone resources recalled from the log are the whole fold's");
        let envelopes: Vec<Envelope> = engine.store().read_all(1).map(|e| e.expect("the log reads back")).collect();
        (envelopes, projections)
    });
    let log = envelopes
        .iter()
        .map(|e| {
            let event = poolbill_projections::event_of(e).expect("the engine writes events it reads");
            (e.at, e.command_id.clone(), event)
        })
        .collect();
    Run { case, log, projections, envelopes }
}

/// `POOLBILL_PROP_IGNORE`: failures whose `[check] message` contains one of these `|`-separated
/// texts are not counted, to look past a known bug for others (never set it in CI).
fn ignored(check: &str, message: &str) -> bool {
    thread_local! {
        static PATTERNS: Vec<String> = std::env::var("POOLBILL_PROP_IGNORE")
            .map(|v| v.split('|').filter(|p| !p.is_empty()).map(str::to_string).collect())
            .unwrap_or_default();
    }
    PATTERNS.with(|patterns| {
        let text = format!("[{check}] {message}");
        patterns.iter().any(|p| text.contains(p.as_str()))
    })
}

/// Failures of one case, each tagged with its check and the case.
struct Failures {
    seed: u64,
    length: usize,
    list: Vec<String>,
    per_check: BTreeMap<&'static str, usize>,
}

impl Failures {
    fn new(seed: u64, length: usize) -> Failures {
        Failures { seed, length, list: Vec::new(), per_check: BTreeMap::new() }
    }
    fn fail(&mut self, check: &'static str, message: String) {
        if ignored(check, &message) {
            return;
        }
        let n = self.per_check.entry(check).or_insert(0);
        *n += 1;
        if *n <= 6 {
            self.list.push(format!("[{check}] seed={} length={}: {message}", self.seed, self.length));
        } else if *n == 7 {
            self.list.push(format!("[{check}] seed={} length={}: … (more of the same left out)", self.seed, self.length));
        }
    }
    fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
    fn report(&self) -> String {
        format!(
            "{} invariant failure(s) for seed={} length={}:\n  {}\nreplay: POOLBILL_PROP_SEED={} POOLBILL_PROP_LEN={} POOLBILL_PROP_VERBOSE=1 \
             cargo test --test invariants one_case_from_env -- --nocapture",
            self.per_check.values().sum::<usize>(),
            self.seed,
            self.length,
            self.list.join("\n  "),
            self.seed,
            self.length
        )
    }
}

/// Run every check on one case.
fn check_case(seed: u64, length: usize) -> (Run, Failures) {
    let timing = std::env::var("POOLBILL_PROP_TIMING").is_ok();
    let mut clock = std::time::Instant::now();
    let mut lap = |what: &str| {
        if timing {
            eprintln!("  {what}: {:?}", clock.elapsed());
        }
        clock = std::time::Instant::now();
    };
    let run = run(generate(seed, length));
    lap("rerun");
    let mut f = Failures::new(seed, length);
    check_reconciliation(&run, &mut f);
    check_detail_equals_flow(&run, &mut f);
    lap("checks 1-2");
    check_incremental_equals_replay(&run, &mut f);
    lap("check 3");
    check_time_travel(&run, &mut f);
    lap("check 4");
    // One envelope at a time: the state histories of checks 5–7, and check 9 on the way.
    let histories = histories(&run, &mut f);
    check_allowed_transitions(&run, &histories, &mut f);
    check_no_charge_when_not_running(&run, &histories, &mut f);
    lap("checks 5, 6, 9");
    check_no_second_billed_twice(&run, &histories, &mut f);
    check_negative_only_by_settlement(&run, &mut f);
    check_refund_within_paid(&run, &mut f);
    check_snapshot_plus_tail(&run, &mut f);
    lap("checks 7-8, 10-11");
    (run, f)
}

fn is_usage(line: &BillLine) -> bool {
    matches!(line.item, Item::Compute | Item::Storage) && matches!(line.mode, BillingMode::OnDemand | BillingMode::Package)
}

/// Where two JSON documents first differ.
fn first_difference(a: &serde_json::Value, b: &serde_json::Value, path: &str) -> Option<String> {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter()
                .find_map(|k| first_difference(x.get(k).unwrap_or(&Value::Null), y.get(k).unwrap_or(&Value::Null), &format!("{path}.{k}")))
        }
        (Value::Array(x), Value::Array(y)) => {
            for (i, (u, v)) in x.iter().zip(y).enumerate() {
                if let Some(d) = first_difference(u, v, &format!("{path}[{i}]")) {
                    return Some(d);
                }
            }
            (x.len() != y.len()).then(|| {
                let extra = if x.len() > y.len() { &x[y.len()] } else { &y[x.len()] };
                format!("{path}: lengths {} vs {}; first extra element {extra}", x.len(), y.len())
            })
        }
        _ => (a != b).then(|| format!("{path}: {a} vs {b}")),
    }
}

fn document_difference(a: &Document, b: &Document) -> Option<String> {
    if a == b {
        return None;
    }
    let (x, y) = (serde_json::to_value(a).unwrap(), serde_json::to_value(b).unwrap());
    first_difference(&x, &y, "document").or_else(|| (a != b).then(|| "documents differ (no JSON difference)".to_string()))
}

fn state_difference(a: &State, b: &State) -> Option<String> {
    if a == b {
        return None;
    }
    let (x, y) = (format!("{a:?}"), format!("{b:?}"));
    let at = x.chars().zip(y.chars()).take_while(|(p, q)| p == q).count();
    let from = at.saturating_sub(120);
    let snippet = |s: &str| s.chars().skip(from).take(300).collect::<String>();
    Some(format!("states differ at char {at}:\n    left:  …{}…\n    right: …{}…", snippet(&x), snippet(&y)))
}

// ---------------------------------------------------------------------------------------------
// 1, 2: money adds up
// ---------------------------------------------------------------------------------------------

/// Check 1 (R5, R12): opening balance + Σ top-ups − Σ payable of the account's flow bills =
/// its closing balance, exactly.
fn check_reconciliation(run: &Run, f: &mut Failures) {
    let mut opening: BTreeMap<&str, Decimal> = BTreeMap::new();
    let mut top_ups: BTreeMap<&str, Decimal> = BTreeMap::new();
    for (_, _, event) in &run.log {
        match event {
            Event::AccountOpened { account, balance, .. } => {
                opening.insert(account, *balance);
            }
            Event::ToppedUp { account, amount, .. } => *top_ups.entry(account).or_default() += *amount,
            _ => {}
        }
    }
    for (id, account) in &run.projections.state.accounts {
        let Some(open) = opening.get(id.as_str()) else {
            f.fail("reconciliation", format!("account {id} has no account_opened event"));
            continue;
        };
        let paid: Decimal = run.projections.bills.iter().filter(|b| &b.line.account == id).map(|b| b.line.amounts.payable).sum();
        let topped = top_ups.get(id.as_str()).copied().unwrap_or_default();
        if *open + topped - paid != account.balance {
            f.fail(
                "reconciliation",
                format!("account {id}: opening {open} + top-ups {topped} − payable {paid} = {} ≠ closing {}", *open + topped - paid, account.balance),
            );
        }
    }
}

/// Check 2 (R5): the detail bills' payable equals the flow bills', per account and in total.
fn check_detail_equals_flow(run: &Run, f: &mut Failures) {
    let details = run.projections.detail_bills();
    let mut flow: BTreeMap<&str, Decimal> = BTreeMap::new();
    let mut detail: BTreeMap<&str, Decimal> = BTreeMap::new();
    for b in &run.projections.bills {
        *flow.entry(&b.line.account).or_default() += b.line.amounts.payable;
    }
    for d in &details {
        *detail.entry(&d.account).or_default() += d.amounts.payable;
    }
    let accounts: BTreeSet<&str> = flow.keys().chain(detail.keys()).copied().collect();
    for account in accounts {
        let (x, y) = (flow.get(account).copied().unwrap_or_default(), detail.get(account).copied().unwrap_or_default());
        if x != y {
            f.fail("detail_equals_flow", format!("account {account}: flow payable {x} ≠ detail payable {y}"));
        }
    }
    let (x, y): (Decimal, Decimal) = (flow.values().copied().sum(), detail.values().copied().sum());
    if x != y {
        f.fail("detail_equals_flow", format!("total: flow payable {x} ≠ detail payable {y}"));
    }
    let lines: u64 = details.iter().map(|d| d.lines).sum();
    if lines != run.projections.bills.len() as u64 {
        f.fail("detail_equals_flow", format!("detail bills count {lines} lines, the flow has {}", run.projections.bills.len()));
    }
}

// ---------------------------------------------------------------------------------------------
// 3, 4: the log is the truth
// ---------------------------------------------------------------------------------------------

/// Check 3: the rerun's incremental projections equal a fold of its log, and the log survives
/// a JSON-lines round trip (`to_line` per envelope and the end line, checked `import`) unchanged.
fn check_incremental_equals_replay(run: &Run, f: &mut Failures) {
    const CHECK: &str = "incremental_equals_replay";
    match fold(jsonl::as_results(&run.envelopes), Upto::All) {
        Ok(folded) => {
            if let Some(d) = document_difference(&run.projections.document(), &folded.document()) {
                f.fail(CHECK, format!("rerun document vs fold of its log: {d}"));
            }
            if let Some(d) = state_difference(&run.projections.state, &folded.state) {
                f.fail(CHECK, format!("rerun state vs fold of its log: {d}"));
            }
            // The streamed document (history-free fold, reordered lines) is the same bytes.
            let mut streamed = Vec::new();
            match poolbill_replay::document::write_document(jsonl::as_results(&run.envelopes), Upto::All, &mut streamed, |_| {}) {
                Ok(_) => {
                    let in_memory = serde_json::to_string_pretty(&folded.document()).expect("documents serialise") + "\n";
                    if streamed != in_memory.as_bytes() {
                        f.fail(CHECK, "the streamed document differs from the in-memory one".to_string());
                    }
                }
                Err(e) => f.fail(CHECK, format!("the streamed document failed: {e}")),
            }
        }
        Err(e) => f.fail(CHECK, format!("the log does not fold: {e}")),
    }
    // One line per envelope, then the end line that says how many there were.
    let lines: Vec<String> = run.envelopes.iter().map(|e| jsonl::to_line(e).expect("a rerun's events encode")).collect();
    let mut text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    text.push_str(&jsonl::end_line_of(&run.envelopes).expect("a rerun's events encode"));
    text.push('\n');
    match jsonl::import(std::io::Cursor::new(text)) {
        Ok(imported) => {
            if imported.len() != run.envelopes.len() {
                f.fail(CHECK, format!("JSON lines: {} envelopes exported, {} imported", run.envelopes.len(), imported.len()));
            }
            for (i, (a, b)) in run.envelopes.iter().zip(&imported).enumerate() {
                // The store keeps payloads binary; the portable log carries them as JSON.
                let a = poolbill_projections::portable(a).expect("a rerun's events encode");
                if *a != *b || a.at.offset() != b.at.offset() {
                    f.fail(
                        CHECK,
                        format!(
                            "JSON lines: envelope {} changed in the round trip:\n    {}\n    {}",
                            a.position,
                            lines[i],
                            jsonl::to_line(b).unwrap_or_default()
                        ),
                    );
                }
            }
        }
        Err(e) => f.fail(CHECK, format!("JSON lines: the exported log does not import: {e}")),
    }
}

/// Check 4 (time travel): for transition instants of the log (and a second before them) and
/// random instants T, folding the log as of T gives what a fresh rerun of the commands recorded
/// at or before T, until T, gives.
fn check_time_travel(run: &Run, f: &mut Failures) {
    const CHECK: &str = "time_travel";
    const TRANSITIONS: [&str; 14] = [
        "arrears_started",
        "arrears_frozen",
        "arrears_released",
        "arrears_ended",
        "pool_expired",
        "pool_frozen",
        "pool_released",
        "pool_renewed",
        "pool_unsubscribed",
        "auto_renew_attempted",
        "expiry_warned",
        "package_expired",
        "package_alerted",
        "job_stopped",
    ];
    let mut rng = Rng::new(run.case.seed ^ CHECK_STREAM);
    let transitions: Vec<Instant> =
        run.envelopes.iter().filter(|e| TRANSITIONS.contains(&e.event_type.as_str())).map(|e| e.at).collect::<BTreeSet<_>>().into_iter().collect();
    let mut instants = BTreeSet::new();
    for _ in 0..3 {
        if transitions.is_empty() {
            break;
        }
        let t = *rng.pick(&transitions);
        instants.insert(t);
        instants.insert(t - Duration::seconds(1));
    }
    let (first, last) = (start_instant(), run.case.until);
    let span = (last - first).num_seconds().max(1) as u64;
    for _ in 0..2 {
        instants.insert(first + Duration::seconds(rng.below(span + 1) as i64));
    }
    for t in instants {
        let as_of = match fold(jsonl::as_results(&run.envelopes), Upto::Instant(t)) {
            Ok(p) => p,
            Err(e) => {
                f.fail(CHECK, format!("the log does not fold as of {}: {e}", bj(t)));
                continue;
            }
        };
        let prefix: Vec<Recorded> = run.case.commands.iter().filter(|c| c.at <= t).cloned().collect();
        let fresh = rerun::rerun(&prefix, t, &WhatIf::default()).projections;
        if let Some(d) = document_difference(&as_of.document(), &fresh.document()) {
            f.fail(CHECK, format!("as of {}: the log folded to T vs a rerun to T: {d}", bj(t)));
        } else if let Some(d) = state_difference(&as_of.state, &fresh.state) {
            f.fail(CHECK, format!("as of {}: the log folded to T vs a rerun to T: {d}", bj(t)));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 5, 6: states and what is billed in them
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Pool,
    Job,
}

/// What matters about a resource at one instant.
#[derive(Clone, Debug, PartialEq)]
struct Snap {
    shown: &'static str,
    status: &'static str,
    hold: Option<Hold>,
    /// Pools: a subscription (else on demand).
    subscription: bool,
    /// Pools: a public pool; jobs: on the public pool (compute billed).
    public: bool,
    /// Jobs: with an EVS disk.
    disk: bool,
}

/// One state after one envelope: (instant, log position, state).
type History<T> = Vec<(Instant, u64, T)>;

struct Histories {
    resources: BTreeMap<(Kind, String), History<Snap>>,
    /// Each account's arrears phase (none = not in arrears).
    accounts: BTreeMap<String, History<Option<Hold>>>,
    /// The final state, to map bill ids back to resources.
    state: State,
}

/// Fold the log one envelope at a time and keep every change of every pool's, job's and
/// account's state (checks 5–7); check 9 looks at each time-driven event on the way.
fn histories(run: &Run, f: &mut Failures) -> Histories {
    let mut p = Projections::new();
    let mut h = Histories { resources: BTreeMap::new(), accounts: BTreeMap::new(), state: State::default() };
    let mut on_time = OnTime::default();
    for e in &run.envelopes {
        if let Err(err) = p.apply(e) {
            f.fail("allowed_transitions", format!("the log does not fold at position {}: {err}", e.position));
            return h;
        }
        if !matches!(e.event_type.as_str(), "command_received" | "command_rejected" | "charged") {
            match poolbill_projections::event_of(e) {
                Ok(event) => on_time.check(e, &event, &p.state, f),
                Err(err) => f.fail("transitions_on_time", format!("position {}: {err}", e.position)),
            }
        }
        // These change no pool's, job's or account's state.
        if matches!(e.event_type.as_str(), "command_received" | "command_rejected" | "cycle_settled" | "charged") {
            continue;
        }
        for pool in p.state.pools.values() {
            let snap = Snap {
                shown: pool.shown_state(),
                status: pool.status.as_str(),
                hold: pool.hold,
                subscription: pool.mode.is_subscription(),
                public: pool.pool_type == PoolType::Public,
                disk: false,
            };
            record(h.resources.entry((Kind::Pool, pool.id.clone())).or_default(), e, snap);
        }
        for job in p.state.jobs.values() {
            let snap = Snap {
                shown: job.shown_state(),
                status: job.status.as_str(),
                hold: job.hold,
                subscription: false,
                public: job.pool.is_none(),
                disk: job.disk_hourly.is_some(),
            };
            record(h.resources.entry((Kind::Job, job.id.clone())).or_default(), e, snap);
        }
        for account in p.state.accounts.values() {
            record(h.accounts.entry(account.id.clone()).or_default(), e, account.arrears.map(|a| a.phase));
        }
    }
    h.state = p.state;
    h
}

/// Check 9 (R4, R6, R7, R8, R12, R13): time-driven events come at their instants. With E the
/// period's last second: expiry at E + 1 s (later only when a late renewal expires the pool
/// again at once), frozen G days after that, released R days later; the R7 warning for the
/// current E, once, within [E − 7 days, E + 1 s); auto-renewal attempts at 03:00 Beijing, not
/// before the first one (days_before days before E's date) and never after E; arrears frozen G
/// days after they started, released R days later; a cycle settled at the hour boundary that
/// ends it; a package expiring at its expiry. Judged on the state right after the event.
#[derive(Default)]
struct OnTime {
    renewed_at: BTreeMap<String, Instant>,
    warned: BTreeSet<(String, Instant)>,
}

impl OnTime {
    fn check(&mut self, e: &Envelope, event: &Event, state: &State, f: &mut Failures) {
        const CHECK: &str = "transitions_on_time";
        let t = e.at;
        let wrong = |f: &mut Failures, what: String| f.fail(CHECK, format!("{} at {} (position {}): {what}", e.event_type, bj(t), e.position));
        let level_of = |account: &str| state.policy.level(state.accounts.get(account).map_or("", |a| a.level.as_str()));
        let pool_end = |pool: &str| state.pools.get(pool).and_then(|p| p.period.map(|per| (per.end, level_of(&p.account))));
        let day = |n: u32| Duration::days(i64::from(n));
        match event {
            Event::PoolRenewed { pool, .. } => {
                self.renewed_at.insert(pool.clone(), t);
            }
            Event::PoolExpired { pool, .. } => match pool_end(pool) {
                Some((end, _)) => {
                    let expiry = end + Duration::seconds(1);
                    let late_renewal = self.renewed_at.get(pool) == Some(&t) && t > expiry;
                    if t != expiry && !late_renewal {
                        wrong(f, format!("pool {pool} ends {}: it expires at {}", bj(end), bj(expiry)));
                    }
                }
                None => wrong(f, format!("pool {pool} has no period")),
            },
            Event::PoolFrozen { pool, .. } => {
                if let Some((end, level)) = pool_end(pool) {
                    let due = end + Duration::seconds(1) + day(level.grace_days);
                    if t != due {
                        wrong(f, format!("pool {pool} ends {}: frozen after {} days of grace at {}", bj(end), level.grace_days, bj(due)));
                    }
                }
            }
            Event::PoolReleased { pool, .. } => {
                if let Some((end, level)) = pool_end(pool) {
                    let due = end + Duration::seconds(1) + day(level.grace_days + level.retention_days);
                    if t != due {
                        wrong(
                            f,
                            format!("pool {pool} ends {}: released after {}+{} days at {}", bj(end), level.grace_days, level.retention_days, bj(due)),
                        );
                    }
                }
            }
            Event::ExpiryWarned { pool, expires_at, .. } => {
                if let Some((end, _)) = pool_end(pool) {
                    if *expires_at != end || t < end - Duration::days(7) || t > end {
                        wrong(f, format!("pool {pool} ends {}: warned for {} (R7: at E − 7 days, before E)", bj(end), bj(*expires_at)));
                    }
                    if !self.warned.insert((pool.clone(), end)) {
                        wrong(f, format!("pool {pool}: a second warning for the period ending {} (R7: once)", bj(end)));
                    }
                }
            }
            Event::AutoRenewAttempted { pool, .. } => {
                if to_beijing(t).format("%H:%M:%S").to_string() != "03:00:00" {
                    wrong(f, format!("pool {pool}: an auto-renewal attempt not at 03:00 Beijing (R8)"));
                }
                // The attempt comes before its renewal: the period is still the one it renews.
                if let Some((end, _)) = pool_end(pool) {
                    if t > end {
                        wrong(f, format!("pool {pool}: an attempt after its period's end {} (R8)", bj(end)));
                    }
                    if let Some(auto) = state.pools.get(pool).and_then(|p| p.auto_renew.as_ref()) {
                        let first = at_three_am(beijing_date(end) - day(auto.days_before));
                        if t < first {
                            wrong(f, format!("pool {pool}: before the first attempt {} ({} days before {})", bj(first), auto.days_before, bj(end)));
                        }
                    }
                }
            }
            Event::ArrearsFrozen { account, .. } | Event::ArrearsReleased { account, .. } => {
                let level = level_of(account);
                let released = matches!(event, Event::ArrearsReleased { .. });
                match state.accounts.get(account).and_then(|a| a.arrears) {
                    Some(arrears) => {
                        let due = arrears.since + day(level.grace_days + if released { level.retention_days } else { 0 });
                        if t != due {
                            wrong(f, format!("account {account} in arrears since {}: due at {} (R12)", bj(arrears.since), bj(due)));
                        }
                    }
                    None => wrong(f, format!("account {account} is not in arrears")),
                }
            }
            Event::CycleSettled { account, start, end, .. } if *end != t || hour_floor(*end) != *end || *start != *end - Duration::hours(1) => {
                wrong(f, format!("account {account}: cycle [{}, {}) settled at {} (R4: at the hour that ends it)", bj(*start), bj(*end), bj(t)));
            }
            Event::PackageExpired { package, .. } => {
                if let Some(p) = state.packages.get(package) {
                    if p.expires_at != t {
                        wrong(f, format!("package {package} expires at {}", bj(p.expires_at)));
                    }
                }
            }
            _ => {}
        }
    }
}

fn record<T: PartialEq>(history: &mut History<T>, e: &Envelope, value: T) {
    if history.last().is_none_or(|(_, _, last)| *last != value) {
        history.push((e.at, e.position, value));
    }
}

/// The states in effect during `[start, end)` at one-second precision (R1): the state after
/// every event of the last instant ≤ start, then the state after every event of each instant
/// strictly inside. None if the resource did not exist at `start`.
fn in_effect<T>(history: &History<T>, start: Instant, end: Instant) -> Option<Vec<(Instant, &T)>> {
    let mut before: Option<(Instant, &T)> = None;
    let mut inside: Vec<(Instant, &T)> = Vec::new();
    for (at, _, value) in history {
        if *at <= start {
            before = Some((*at, value));
        } else if *at < end {
            match inside.last_mut() {
                Some((t, v)) if *t == *at => *v = value,
                _ => inside.push((*at, value)),
            }
        }
    }
    let first = before?;
    Some(std::iter::once(first).chain(inside).collect())
}

/// Pools (R4, R6, R11, R12, R15–R17). Subscriptions: running → expired (E + 1 s) → frozen
/// (G days later) → released (R more); renewal brings expired or frozen back to running;
/// unsubscribing releases a running one at once (refused while expired or frozen, R6);
/// deleting is refused (R16). On demand: creating → running (ready) or deleted; readied during
/// arrears it joins the account's phase (grace, frozen, or released once retention is over);
/// running → grace (arrears) → frozen →
/// released, a top-up bringing grace or frozen back to running; deleting is refused while in
/// arrears (R12). Released and deleted are terminal (R6, R17).
fn pool_transition_allowed(from: Option<&Snap>, to: &Snap) -> bool {
    let sub = to.subscription;
    match (from.map(|s| s.shown), to.shown) {
        (None, "creating") => !sub,
        (None, "running") => sub,
        // Readied during arrears it joins the account's phase, released once retention is over.
        (Some("creating"), "running" | "deleted" | "grace" | "frozen" | "released") => !sub,
        (Some("running"), "expired" | "released") => sub,
        (Some("running"), "deleted" | "grace") => !sub,
        (Some("expired"), "running" | "frozen") => sub,
        (Some("frozen"), "running" | "released") => true,
        (Some("grace"), "frozen" | "running") => !sub,
        _ => false,
    }
}

/// Jobs (R12, R14, R16, R17): started running; stop and start again (not in arrears); delete
/// from running or stopped. Arrears put a pay-per-use one (public compute, or a disk, also
/// while stopped) in grace, then frozen, then released; deleting or stopping stays allowed
/// during arrears, and a top-up brings it back to what it was (running or stopped).
/// Released and deleted are terminal (R17: starting or deleting them again is refused).
fn job_transition_allowed(from: Option<&Snap>, to: &Snap) -> bool {
    let pay_per_use = to.public || to.disk;
    match (from.map(|s| s.shown), to.shown) {
        (None, "running") => true,
        (Some("running"), "stopped" | "deleted") => true,
        (Some("running"), "grace") => pay_per_use,
        (Some("stopped"), "running" | "deleted") => true,
        (Some("stopped"), "grace") => to.disk,
        (Some("grace"), "frozen" | "running" | "stopped" | "deleted") => true,
        (Some("frozen"), "running" | "stopped" | "deleted" | "released") => true,
        _ => false,
    }
}

/// Check 5: every change of a pool's or job's shown state is one the rules allow.
fn check_allowed_transitions(run: &Run, h: &Histories, f: &mut Failures) {
    for ((kind, id), history) in &h.resources {
        let mut previous: Option<&Snap> = None;
        for (at, position, snap) in history {
            if previous.map(|p| p.shown) != Some(snap.shown) {
                let allowed = match kind {
                    Kind::Pool => pool_transition_allowed(previous, snap),
                    Kind::Job => job_transition_allowed(previous, snap),
                };
                if !allowed {
                    let cause = &run.envelopes[*position as usize - 1];
                    f.fail(
                        "allowed_transitions",
                        format!(
                            "{kind:?} {id}: {} → {} at {} (position {}, {} {})",
                            previous.map_or("(none)", |p| p.shown),
                            snap.shown,
                            bj(*at),
                            position,
                            cause.event_type,
                            poolbill_projections::event_of(cause).map(|e| e.encode().1.to_string()).unwrap_or_else(|e| e.to_string())
                        ),
                    );
                }
            }
            previous = Some(snap);
        }
    }
}

/// The pool or job a usage line bills: storage by the notebook's id, compute by a pool's id or
/// a job's R5 id (`training_<job>`, `<service>-<model>`, else the job's id).
fn resource_key(h: &Histories, line: &BillLine) -> Option<(Kind, String)> {
    if line.item == Item::Storage {
        h.state.jobs.contains_key(&line.resource).then(|| (Kind::Job, line.resource.clone()))
    } else if h.state.pools.contains_key(&line.resource) {
        Some((Kind::Pool, line.resource.clone()))
    } else {
        h.state.jobs.values().find(|j| j.billing_id() == line.resource).map(|j| (Kind::Job, j.id.clone()))
    }
}

/// Check 6 (R4, R12, R14, R16): every usage line (compute or storage, on demand or package) of a
/// resource falls where the resource is billable all along `[start, end)`: compute while it runs
/// (running, or grace) — for a pool, an on-demand one; for a job, one on the public pool — and
/// storage while the notebook exists (running, stopped or grace), never frozen, released or
/// deleted. Its account is never past grace in arrears (frozen or released) meanwhile.
fn check_no_charge_when_not_running(run: &Run, h: &Histories, f: &mut Failures) {
    const CHECK: &str = "no_charge_when_not_running";
    for bill in &run.projections.bills {
        let line = &bill.line;
        if !is_usage(line) {
            continue;
        }
        let key = resource_key(h, line);
        let what = format!(
            "{} {} {} line of {} [{}, {}) (position {}, payable {})",
            line.mode.as_str(),
            line.item.as_str(),
            line.account,
            line.resource,
            bj(line.start),
            bj(line.end),
            bill.position,
            line.amounts.payable
        );
        let Some(key) = key else {
            f.fail(CHECK, format!("{what}: no pool or job bills under this id"));
            continue;
        };
        let Some(states) = h.resources.get(&key).and_then(|hist| in_effect(hist, line.start, line.end)) else {
            f.fail(CHECK, format!("{what}: the resource did not exist at the line's start"));
            continue;
        };
        for (at, s) in states {
            let frozen = s.hold == Some(Hold::Frozen);
            let ok = match (key.0, line.item) {
                (Kind::Pool, Item::Compute) => s.status == "running" && !frozen && !s.subscription,
                (Kind::Job, Item::Compute) => s.status == "running" && !frozen && s.public,
                (Kind::Job, Item::Storage) => matches!(s.status, "running" | "stopped") && !frozen && s.disk,
                _ => false,
            };
            if !ok {
                f.fail(
                    CHECK,
                    format!(
                        "{what}: billed while {:?} {} is {} (status {}, hold {:?}, subscription {}, public {}) from {}",
                        key.0,
                        key.1,
                        s.shown,
                        s.status,
                        s.hold,
                        s.subscription,
                        s.public,
                        bj(at)
                    ),
                );
                break;
            }
        }
        if let Some(phases) = h.accounts.get(&line.account).and_then(|hist| in_effect(hist, line.start, line.end)) {
            if let Some((at, phase)) = phases.into_iter().find(|(_, p)| matches!(p, Some(Hold::Frozen | Hold::Released))) {
                f.fail(
                    CHECK,
                    format!(
                        "{what}: billed while account {} is in arrears past grace ({phase:?}) from {} (R12: frozen resources are not billed)",
                        line.account,
                        bj(at)
                    ),
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 7: each second once, each line by R2
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct StretchLines<'a> {
    on_demand: Vec<&'a BillLine>,
    package: Vec<&'a BillLine>,
}

/// Check 7 (R2, R4, R13): per (billed resource, item) the usage stretches never overlap and
/// each lies in one hourly cycle; packages plus the on-demand line cover each stretch's
/// node-seconds exactly once (`covered_node_seconds` = Σ package node-seconds ≤ nodes ×
/// seconds), packages only on the public pool, of their spec, valid at the stretch's start;
/// the on-demand list price is hourly × uncovered node-seconds / 3600 truncated to 8 places;
/// every line has list − discount − round-off = payable, payable in cents, |round-off| < 0.01,
/// and discount = trunc8(list × the account's rate) (packages and full refunds: no discount).
fn check_no_second_billed_twice(run: &Run, h: &Histories, f: &mut Failures) {
    const CHECK: &str = "no_second_billed_twice";
    let state = &run.projections.state;
    let cent = Decimal::new(1, 2);
    for bill in &run.projections.bills {
        let (l, a) = (&bill.line, &bill.line.amounts);
        let what = || format!("{} {} line of {} at position {} ({:?})", l.mode.as_str(), l.item.as_str(), l.resource, bill.position, a);
        if a.list_price - a.discount - a.round_off != a.payable {
            f.fail(CHECK, format!("{}: list − discount − round-off ≠ payable", what()));
        }
        if a.payable.round_dp_with_strategy(2, RoundingStrategy::ToZero) != a.payable || a.round_off.abs() >= cent {
            f.fail(CHECK, format!("{}: payable is not in cents or the round-off is a cent or more", what()));
        }
        if trunc8(a.list_price) != a.list_price {
            f.fail(CHECK, format!("{}: list price has more than 8 places", what()));
        }
        let rate = state.accounts.get(&l.account).map_or(Decimal::ZERO, |acc| acc.discount);
        let no_discount = matches!(l.item, Item::Package) || matches!(l.basis, Basis::Refund { full: true, .. }) || l.mode == BillingMode::Package;
        let expected = if no_discount { Decimal::ZERO } else { trunc8(a.list_price * rate) };
        if a.discount != expected {
            f.fail(CHECK, format!("{}: discount {} ≠ trunc8(list × {rate}) = {expected}", what(), a.discount));
        }
    }

    let mut stretches: BTreeMap<(String, Item), BTreeMap<(Instant, Instant), StretchLines>> = BTreeMap::new();
    for bill in &run.projections.bills {
        let line = &bill.line;
        if !is_usage(line) {
            continue;
        }
        let entry = stretches.entry((line.resource.clone(), line.item)).or_default().entry((line.start, line.end)).or_default();
        match line.mode {
            BillingMode::Package => entry.package.push(line),
            _ => entry.on_demand.push(line),
        }
    }
    for ((resource, item), by_span) in &stretches {
        let mut previous: Option<(Instant, Instant)> = None;
        for ((start, end), lines) in by_span {
            let span = format!("{resource} {} [{}, {})", item.as_str(), bj(*start), bj(*end));
            if let Some((ps, pe)) = previous {
                if pe > *start {
                    f.fail(CHECK, format!("{span} overlaps [{}, {}) of the same resource: seconds billed twice", bj(ps), bj(pe)));
                }
            }
            previous = Some((*start, *end));
            let seconds = (*end - *start).num_seconds();
            if seconds <= 0 || hour_floor(*start) != hour_floor(*end - Duration::seconds(1)) {
                f.fail(CHECK, format!("{span}: not a non-empty stretch of one hourly cycle (R4)"));
            }
            if lines.on_demand.len() > 1 {
                f.fail(CHECK, format!("{span}: {} on-demand lines for one stretch", lines.on_demand.len()));
            }
            let mut nodes_seen = BTreeSet::new();
            let mut packages_seen = BTreeSet::new();
            let mut covered_by_packages = 0i64;
            for line in &lines.package {
                match &line.basis {
                    Basis::Package { package, spec, nodes, seconds: s, node_seconds } => {
                        nodes_seen.insert(*nodes);
                        if *s != seconds {
                            f.fail(CHECK, format!("{span}: package line says {s} s"));
                        }
                        if !packages_seen.insert(package.clone()) {
                            f.fail(CHECK, format!("{span}: package {package} taken twice"));
                        }
                        if *node_seconds <= 0 {
                            f.fail(CHECK, format!("{span}: package {package} line of {node_seconds} node-seconds"));
                        }
                        covered_by_packages += node_seconds;
                        match state.packages.get(package) {
                            Some(p) => {
                                if !(p.bought_at <= *start && *start < p.expires_at) || &p.spec != spec || p.account != line.account {
                                    f.fail(
                                        CHECK,
                                        format!(
                                            "{span}: package {package} (spec {}, account {}, valid [{}, {})) does not cover a {spec} stretch of {} starting then (R13)",
                                            p.spec,
                                            p.account,
                                            bj(p.bought_at),
                                            bj(p.expires_at),
                                            line.account
                                        ),
                                    );
                                }
                            }
                            None => f.fail(CHECK, format!("{span}: unknown package {package}")),
                        }
                        // Public-pool compute at the stretch's start (a job may restart elsewhere later).
                        let public = resource_key(h, line)
                            .and_then(|key| h.resources.get(&key))
                            .and_then(|hist| in_effect(hist, *start, *end))
                            .is_some_and(|states| states.iter().all(|(_, s)| s.public));
                        if !public || *item != Item::Compute {
                            f.fail(CHECK, format!("{span}: a package covers usage that is not public-pool compute (R13)"));
                        }
                    }
                    other => f.fail(CHECK, format!("{span}: package line with basis {other:?}")),
                }
            }
            let mut total = None;
            for line in &lines.on_demand {
                match &line.basis {
                    Basis::Usage { nodes, seconds: s, hourly, covered_node_seconds, .. } => {
                        nodes_seen.insert(*nodes);
                        if *s != seconds {
                            f.fail(CHECK, format!("{span}: on-demand line says {s} s"));
                        }
                        if *covered_node_seconds != covered_by_packages {
                            f.fail(
                                CHECK,
                                format!("{span}: covered_node_seconds {covered_node_seconds} ≠ Σ package node-seconds {covered_by_packages}"),
                            );
                        }
                        let node_seconds = i64::from(*nodes) * seconds;
                        total = Some(node_seconds);
                        let uncovered = node_seconds - covered_node_seconds;
                        if uncovered <= 0 {
                            f.fail(CHECK, format!("{span}: an on-demand line with {uncovered} uncovered node-seconds"));
                        }
                        let list = trunc8(*hourly * Decimal::from(uncovered) / Decimal::from(3600));
                        if list != line.amounts.list_price {
                            f.fail(CHECK, format!("{span}: list {} ≠ trunc8({hourly} × {uncovered} / 3600) = {list} (R4)", line.amounts.list_price));
                        }
                    }
                    other => f.fail(CHECK, format!("{span}: on-demand usage line with basis {other:?}")),
                }
            }
            if nodes_seen.len() > 1 {
                f.fail(CHECK, format!("{span}: lines disagree on the nodes: {nodes_seen:?}"));
            }
            let node_seconds = total.unwrap_or_else(|| nodes_seen.iter().next().map_or(0, |n| i64::from(*n) * seconds));
            if covered_by_packages > node_seconds || (lines.on_demand.is_empty() && covered_by_packages != node_seconds) {
                f.fail(CHECK, format!("{span}: packages cover {covered_by_packages} of {node_seconds} node-seconds"));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 8: only a settlement makes a balance negative
// ---------------------------------------------------------------------------------------------

/// Check 8 (R12): after a charge that is not usage (subscription, package, upgrade…), the balance
/// is ≥ 0, and none is made while the account is in arrears (refunds, negative, may leave a
/// balance that settlements made negative still negative); usage lines are never negative.
/// Each line's (and top-up's) recorded balance is the running balance; at the end of each
/// instant, a negative balance means arrears, and a top-up to ≥ 0 has ended them.
fn check_negative_only_by_settlement(run: &Run, f: &mut Failures) {
    const CHECK: &str = "negative_only_by_settlement";
    #[derive(Default)]
    struct Acc {
        balance: Decimal,
        arrears: bool,
        topped_to_zero_in_arrears: bool,
    }
    let mut accounts: BTreeMap<String, Acc> = BTreeMap::new();
    let end_of_instant = |accounts: &BTreeMap<String, Acc>, at: Instant, f: &mut Failures| {
        for (id, a) in accounts {
            if a.balance < Decimal::ZERO && !a.arrears {
                f.fail(CHECK, format!("account {id}: balance {} at {} but not in arrears (R12)", a.balance, bj(at)));
            }
            if a.topped_to_zero_in_arrears {
                f.fail(CHECK, format!("account {id}: a credit brought the balance to {} at {} but the arrears did not end (R12)", a.balance, bj(at)));
            }
        }
    };
    for (i, (at, _, event)) in run.log.iter().enumerate() {
        match event {
            Event::AccountOpened { account, balance, .. } => {
                accounts.insert(account.clone(), Acc { balance: *balance, ..Acc::default() });
            }
            Event::ToppedUp { account, amount, .. } => {
                let a = accounts.entry(account.clone()).or_default();
                a.balance += *amount;
                // The balance after the top-up, as the event records it (by name, whatever
                // the field is called today).
                let payload = event.encode().1;
                let recorded = payload.get("balance_after").or_else(|| payload.get("balance")).and_then(|v| v.as_str()).map(dec);
                if let Some(balance) = recorded.filter(|b| *b != a.balance) {
                    f.fail(
                        CHECK,
                        format!("account {account}: top-up of {amount} at {} records balance {balance}, running balance {}", bj(*at), a.balance),
                    );
                }
                if a.arrears && a.balance >= Decimal::ZERO {
                    a.topped_to_zero_in_arrears = true;
                }
            }
            Event::ArrearsStarted { account, balance, .. } => {
                let a = accounts.entry(account.clone()).or_default();
                if a.arrears || a.balance >= Decimal::ZERO || *balance != a.balance {
                    f.fail(
                        CHECK,
                        format!(
                            "account {account}: arrears started at {} with balance {balance} (running {}, already in arrears {})",
                            bj(*at),
                            a.balance,
                            a.arrears
                        ),
                    );
                }
                a.arrears = true;
            }
            Event::ArrearsEnded { account, .. } => {
                let a = accounts.entry(account.clone()).or_default();
                if !a.arrears || a.balance < Decimal::ZERO {
                    f.fail(CHECK, format!("account {account}: arrears ended at {} with balance {} (in arrears {})", bj(*at), a.balance, a.arrears));
                }
                a.arrears = false;
                a.topped_to_zero_in_arrears = false;
            }
            Event::Charged { line } => {
                let a = accounts.entry(line.account.clone()).or_default();
                let before = a.balance;
                a.balance -= line.amounts.payable;
                let what = format!(
                    "{} {} line of {} at {} (payable {}, balance {} → {})",
                    line.mode.as_str(),
                    line.item.as_str(),
                    line.resource,
                    bj(*at),
                    line.amounts.payable,
                    before,
                    line.balance
                );
                if line.balance != a.balance {
                    f.fail(CHECK, format!("{what}: the line's balance is not the running balance {}", a.balance));
                }
                if !is_usage(line) {
                    if line.amounts.payable > Decimal::ZERO {
                        if a.balance < Decimal::ZERO {
                            f.fail(
                                CHECK,
                                format!("{what}: an order left the balance negative (R12: fees are refused when the balance cannot cover them)"),
                            );
                        }
                        if a.arrears {
                            f.fail(CHECK, format!("{what}: an order paid while the account is in arrears (R12)"));
                        }
                    }
                } else if line.amounts.payable < Decimal::ZERO {
                    f.fail(CHECK, format!("{what}: a usage line with a negative payable"));
                }
                // R12: a refund is a credit like a top-up: to ≥ 0, it ends the arrears.
                if line.amounts.payable < Decimal::ZERO && a.arrears && a.balance >= Decimal::ZERO {
                    a.topped_to_zero_in_arrears = true;
                }
            }
            _ => {}
        }
        let last_of_instant = run.log.get(i + 1).is_none_or(|(next, _, _)| next > at);
        if last_of_instant {
            end_of_instant(&accounts, *at, f);
        }
    }
}

/// Check 10 (R9, R15): a refund never exceeds what was paid for the periods it refunds: a
/// downgrade or unsubscribe credits at most what the subscription has been paid since its
/// purchase or conversion (purchase, renewals, upgrades, less earlier credits).
fn check_refund_within_paid(run: &Run, f: &mut Failures) {
    let mut paid: BTreeMap<&str, Decimal> = BTreeMap::new();
    for b in &run.projections.bills {
        let line = &b.line;
        if !line.mode.is_subscription() {
            continue;
        }
        let so_far = paid.entry(line.resource.as_str()).or_default();
        match line.item {
            Item::Purchase | Item::Conversion => *so_far = line.amounts.payable,
            Item::Refund | Item::Downgrade if -line.amounts.payable > *so_far => f.fail(
                "refund_within_paid",
                format!(
                    "{} {} of {} at {}: {} back, but only {} was paid for it",
                    line.mode.as_str(),
                    line.item.as_str(),
                    line.resource,
                    bj(b.at),
                    -line.amounts.payable,
                    so_far
                ),
            ),
            _ => *so_far += line.amounts.payable,
        }
    }
}

/// Check 11 (snapshots): at random cut points, a snapshot of the log's prefix, written and read
/// back, plus the rest of the log gives the full replay's state, counters and the bills after
/// the cut — as the engine's open does.
fn check_snapshot_plus_tail(run: &Run, f: &mut Failures) {
    const CHECK: &str = "snapshot_plus_tail";
    let envelopes = &run.envelopes;
    let mut rng = Rng::new(run.case.seed ^ SNAPSHOT_STREAM);
    let cuts: BTreeSet<usize> = (0..3).map(|_| rng.below(envelopes.len() as u64 + 1) as usize).collect();
    for cut in cuts {
        let mut versions = std::collections::HashMap::new();
        let prefix = fold_from(Projections::live(), jsonl::as_results(&envelopes[..cut]), Upto::All, |_, e: &Envelope, _| {
            versions.insert(e.stream.clone(), e.version);
        });
        let Ok(prefix) = prefix else {
            f.fail(CHECK, format!("the prefix up to {cut} does not fold"));
            continue;
        };
        let bytes = Snapshot::of(&prefix, &versions).encode();
        let (start, _) = match Snapshot::decode(cut as u64, &bytes) {
            Ok(snapshot) => snapshot.into_parts(),
            Err(e) => {
                f.fail(CHECK, format!("the snapshot at {cut} does not read back: {e}"));
                continue;
            }
        };
        let mut tail_bills = Vec::new();
        let resumed = fold_from(start, jsonl::as_results(&envelopes[cut..]), Upto::All, |_, e: &Envelope, event| {
            if let Event::Charged { line } = event {
                tail_bills.push((e.position, line));
            }
        });
        let Ok(resumed) = resumed else {
            f.fail(CHECK, format!("the tail after {cut} does not fold on the snapshot"));
            continue;
        };
        let full = &run.projections;
        let (mut resumed_state, mut full_state) = (resumed.state.clone(), full.state.clone());
        resumed_state.forget_gone();
        full_state.forget_gone();
        if let Some(d) = state_difference(&resumed_state, &full_state) {
            f.fail(CHECK, format!("snapshot at {cut} + tail vs the full replay: {d}"));
        }
        if (resumed.events, resumed.last_position, resumed.last_instant) != (full.events, full.last_position, full.last_instant) {
            f.fail(CHECK, format!("snapshot at {cut} + tail: counters differ from the full replay"));
        }
        let full_tail: Vec<(u64, BillLine)> = full.bills.iter().filter(|b| b.position > cut as u64).map(|b| (b.position, b.line.clone())).collect();
        if tail_bills != full_tail {
            f.fail(CHECK, format!("snapshot at {cut} + tail: {} bills after the cut, the full replay has {}", tail_bills.len(), full_tail.len()));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tracing a case
// ---------------------------------------------------------------------------------------------

/// The log of a case, one line per envelope (settlement lines only at verbosity 2).
fn trace(run: &Run, verbosity: u32) -> String {
    let mut out = String::new();
    for e in &run.envelopes {
        let event = poolbill_projections::event_of(e).expect("own log decodes");
        let text = match &event {
            Event::CycleSettled { .. } if verbosity < 2 => continue,
            Event::Charged { line } if is_usage(line) && verbosity < 2 => continue,
            Event::Charged { line } => format!(
                "{} {} {} {} [{}, {}) list {} payable {} → balance {}",
                line.account,
                line.resource,
                line.mode.as_str(),
                line.item.as_str(),
                bj(line.start),
                bj(line.end),
                line.amounts.list_price,
                line.amounts.payable,
                line.balance
            ),
            Event::CommandReceived { command, index, .. } => format!("#{} {}", index.unwrap_or_default(), serde_json::to_string(command).unwrap()),
            _ => {
                let mut v = event.encode().1;
                if let Some(o) = v.as_object_mut() {
                    o.remove("type");
                }
                v.to_string()
            }
        };
        out.push_str(&format!("{:>6} {} {:<22} {}\n", e.position, bj(e.at), e.event_type, text));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------------

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64);
    ProptestConfig {
        cases,
        // Nothing is written next to the sources: a failure prints seed and length instead.
        failure_persistence: None,
        // Only the length shrinks (to a shorter prefix of the same history): a few halvings.
        max_shrink_iters: 32,
        // The same cases on every run, so that CI is repeatable; POOLBILL_EXPLORE=1 draws new
        // ones (and PROPTEST_RNG_SEED=n replays a run).
        rng_seed: explore_or_fixed(),
        max_shrink_time: 30_000,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    /// Checks 1–8 on random histories.
    #[test]
    fn random_histories_keep_every_invariant(seed in any::<u64>().no_shrink(), length in 1usize..=60) {
        let (_run, failures) = check_case(seed, length);
        prop_assert!(failures.is_empty(), "{}", failures.report());
    }
}

/// Replays one case: `POOLBILL_PROP_SEED=… POOLBILL_PROP_LEN=…` (length 60 when unset); does
/// nothing without a seed. `POOLBILL_PROP_VERBOSE=1|2` prints its log.
#[test]
fn one_case_from_env() {
    let Some(seed) = std::env::var("POOLBILL_PROP_SEED").ok() else { return };
    let seed: u64 = seed.trim().parse().expect("POOLBILL_PROP_SEED is a u64");
    let length: usize = std::env::var("POOLBILL_PROP_LEN").ok().map_or(60, |v| v.trim().parse().expect("POOLBILL_PROP_LEN is a number"));
    let (run, failures) = check_case(seed, length);
    if let Some(verbosity) = std::env::var("POOLBILL_PROP_VERBOSE").ok().and_then(|v| v.parse::<u32>().ok()) {
        println!("seed={seed} length={length} until {}\n{}", bj(run.case.until), trace(&run, verbosity));
    }
    println!("seed={seed} length={length}: {} events, {} bills", run.envelopes.len(), run.projections.bills.len());
    assert!(failures.is_empty(), "{}", failures.report());
}

/// What a history exercised, by event type and a few finer marks.
fn features(run: &Run) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (_, _, event) in &run.log {
        let (name, _) = event.encode();
        out.insert(name);
        match event {
            Event::AutoRenewAttempted { succeeded: true, .. } => out.insert("auto_renew_succeeded".into()),
            Event::AutoRenewAttempted { succeeded: false, reason, .. } => {
                if reason.as_deref().is_some_and(|r| r.contains("arrears")) {
                    out.insert("auto_renew_refused_in_arrears".into());
                }
                out.insert("auto_renew_failed".into())
            }
            Event::Charged { line } if line.mode == BillingMode::Package && line.item == Item::Compute => out.insert("package_covered_usage".into()),
            Event::Charged { line } if line.item == Item::Storage => out.insert("storage_billed".into()),
            Event::Charged { line } => out.insert(format!("charged_{}", line.item.as_str())),
            _ => false,
        };
    }
    out
}

/// A history found by scanning seeds (`find_interesting_seeds`), always run so that its path is
/// always checked: account a (level short) pays an auto-renewal of subscription p2 (03:00,
/// 2023-06-07), falls into arrears by settlement the same day, goes through grace, frozen and
/// released (1 + 2 days) while p2 keeps running (R6), gets p2's R7 warning, and p2's next
/// auto-renewal attempts are refused for the arrears every day at 03:00 up to E (R8, R12);
/// with public-pool usage, a notebook's disk and account b in arrears too.
const REGRESSION_SEED: u64 = 299;
const REGRESSION_LEN: usize = 60;

#[test]
fn regression_arrears_and_auto_renew() {
    let (run, failures) = check_case(REGRESSION_SEED, REGRESSION_LEN);
    let seen = features(&run);
    for wanted in [
        "auto_renew_succeeded",
        "arrears_started",
        "arrears_frozen",
        "arrears_released",
        "expiry_warned",
        "auto_renew_refused_in_arrears",
        "storage_billed",
    ] {
        assert!(
            seen.contains(wanted),
            "seed={REGRESSION_SEED} length={REGRESSION_LEN} no longer exercises {wanted} (did the generator change?); seen {seen:?}"
        );
    }
    assert!(failures.is_empty(), "{}", failures.report());
}

/// Lists seeds whose histories exercise the most (for choosing a regression seed):
/// `cargo test --test invariants find_interesting_seeds -- --ignored --nocapture`.
#[test]
#[ignore]
fn find_interesting_seeds() {
    let wanted = [
        "arrears_started",
        "arrears_frozen",
        "arrears_released",
        "arrears_ended",
        "auto_renew_succeeded",
        "auto_renew_refused_in_arrears",
        "auto_renew_failed",
        "pool_expired",
        "pool_frozen",
        "pool_released",
        "package_covered_usage",
        "storage_billed",
        "charged_refund",
        "charged_upgrade",
        "charged_conversion",
    ];
    let scan: u64 = std::env::var("POOLBILL_PROP_SCAN").ok().and_then(|v| v.parse().ok()).unwrap_or(500);
    let mut best: Vec<(usize, u64, Vec<&str>, bool)> = Vec::new();
    let from: u64 = std::env::var("POOLBILL_PROP_SCAN_FROM").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    for seed in from..from + scan {
        let (run, failures) = check_case(seed, 60);
        let seen = features(&run);
        let hits: Vec<&str> = wanted.iter().copied().filter(|w| seen.contains(*w)).collect();
        best.push((hits.len(), seed, hits, failures.is_empty()));
    }
    // Arrears together with a successful auto-renewal first, then by how much is exercised.
    let key = |hits: &Vec<&str>| {
        ["auto_renew_succeeded", "auto_renew_refused_in_arrears", "arrears_started", "arrears_ended"].iter().filter(|w| hits.contains(w)).count()
    };
    best.sort_by(|a, b| key(&b.2).cmp(&key(&a.2)).then(b.0.cmp(&a.0)).then(a.1.cmp(&b.1)));
    for (n, seed, hits, ok) in best.iter().take(15) {
        println!("seed={seed} length=60 hits={n} passes={ok} {hits:?}");
    }
}

fn explore_or_fixed() -> proptest::test_runner::RngSeed {
    if std::env::var("POOLBILL_EXPLORE").is_ok() || std::env::var("PROPTEST_RNG_SEED").is_ok() {
        ProptestConfig::default().rng_seed
    } else {
        proptest::test_runner::RngSeed::Fixed(20261123)
    }
}
