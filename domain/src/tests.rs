//! Given/when/then tests of the state machine: given events, when a command (or the clock
//! passing an instant), then events or a rejection naming its rule.

use crate::*;
use rust_decimal::Decimal;
use rust_decimal_macros::dec;

const SPEC: &str = "modelarts.vm.cpu.8ud";
const BIG: &str = "modelarts.vm.cpu.16ud";

use poolbill_testkit::t;

/// A world with the seed's prices and one account.
struct World {
    state: State,
}

impl World {
    fn new(balance: Decimal) -> World {
        let mut w = World { state: State::default() };
        let at = t("2023-01-01T00:00:00+08:00");
        w.ok(at, Command::SetPrice { spec: SPEC.into(), price: price("3.50", "1750.00", Some("17500.00")) });
        w.ok(at, Command::SetPrice { spec: BIG.into(), price: price("7.00", "3500.00", None) });
        w.ok(at, Command::OpenAccount { account: "acct-1".into(), balance, level: "standard".into(), discount: dec!(0) });
        w
    }

    /// When `command` at `at` (after the clock has passed `at`), then accepted: apply and
    /// return its events.
    fn ok(&mut self, at: Instant, command: Command) -> Vec<Event> {
        self.advance(at);
        let events = decide(&self.state, &command, at).unwrap_or_else(|r| panic!("{command:?} refused: {r}"));
        for e in &events {
            self.state.apply(e, at);
        }
        events
    }

    /// When `command` at `at`, then refused under `rule`, and nothing changes.
    /// The refusal's records (`command_received`, `command_rejected`) are applied as the engine
    /// applies them, and must change nothing but the clock.
    fn refused(&mut self, at: Instant, command: Command, rule: Rule) -> Rejection {
        self.advance(at);
        let handled = handle(&self.state, &command, at, None);
        let rejection = handled.rejection.clone().expect("should be refused");
        assert_eq!(rejection.rule, rule, "{command:?}: {rejection}");
        let mut after = self.state.clone();
        for e in &handled.events {
            after.apply(e, handled.at);
        }
        let mut before = self.state.clone();
        before.clock = after.clock;
        assert_eq!(after, before, "{command:?}: its refusal changed the state");
        rejection
    }

    /// The clock passes `to`: every time-driven event due by then, in instant order.
    fn advance(&mut self, to: Instant) -> Vec<(Instant, Event)> {
        let mut out = Vec::new();
        while let Some((at, events)) = tick(&self.state, to) {
            assert!(!events.is_empty(), "a due instant must produce events");
            for e in events {
                self.state.apply(&e, at);
                out.push((at, e));
            }
        }
        out
    }

    fn pool(&self, id: &str) -> &state::Pool {
        &self.state.pools[id]
    }
    fn balance(&self) -> Decimal {
        self.state.accounts["acct-1"].balance
    }
}

fn price(hourly: &str, monthly: &str, yearly: Option<&str>) -> Price {
    Price { hourly: Some(hourly.parse().unwrap()), monthly: Some(monthly.parse().unwrap()), yearly: yearly.map(|y| y.parse().unwrap()) }
}

fn buy(pool: &str, mode: BillingMode, term: Option<Term>, nodes: u32, ready: bool) -> Command {
    Command::Purchase {
        account: "acct-1".into(),
        pool: pool.into(),
        spec: SPEC.into(),
        nodes,
        mode,
        term,
        pool_type: PoolType::Dedicated,
        region: None,
        ready,
    }
}

fn monthly(pool: &str, months: u32) -> Command {
    buy(pool, BillingMode::Monthly, Some(Term::Months(months)), 1, false)
}

fn on_demand(pool: &str, nodes: u32, ready: bool) -> Command {
    buy(pool, BillingMode::OnDemand, None, nodes, ready)
}

fn lines(events: &[(Instant, Event)]) -> Vec<BillLine> {
    events
        .iter()
        .filter_map(|(_, e)| match e {
            Event::Charged { line } => Some(line.clone()),
            _ => None,
        })
        .collect()
}

fn charged(events: &[Event]) -> Vec<BillLine> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Charged { line } => Some(line.clone()),
            _ => None,
        })
        .collect()
}

// --- R3 subscriptions -------------------------------------------------------------------

#[test]
fn purchase_and_renewal_seed_1_2() {
    let mut w = World::new(dec!(10000));
    let events = w.ok(t("2023-03-08T15:50:04+08:00"), monthly("pool-1", 1));
    let line = &charged(&events)[0];
    assert_eq!((line.item, line.amounts.payable), (Item::Purchase, dec!(1750)));
    assert_eq!(w.pool("pool-1").period.unwrap().end, t("2023-04-08T23:59:59+08:00"));
    assert_eq!(w.pool("pool-1").status, PoolStatus::Running);

    let events = w.ok(t("2023-03-20T10:00:00+08:00"), Command::Renew { pool: "pool-1".into(), term: Term::Months(1), align_day: None });
    let line = &charged(&events)[0];
    assert_eq!((line.item, line.start, line.end), (Item::Renewal, t("2023-04-08T23:59:59+08:00"), t("2023-05-08T23:59:59+08:00")));
    // Seed §1.2: 1,750 × 1 × 2 = 3,500 in all.
    assert_eq!(w.balance(), dec!(10000) - dec!(3500));
}

#[test]
fn purchase_refusals() {
    let mut w = World::new(dec!(1000));
    let at = t("2023-03-08T15:50:04+08:00");
    // R12: the fee is refused when the balance does not cover it.
    let r = w.refused(at, monthly("pool-1", 1), Rule::R12);
    assert!(r.reason.contains("1750"), "{r}");
    w.ok(at, Command::TopUp { account: "acct-1".into(), amount: dec!(750) });
    w.ok(at, monthly("pool-1", 1));
    assert_eq!(w.balance(), dec!(0));
    // R17: an id that exists.
    w.refused(at, on_demand("pool-1", 1, true), Rule::R17);
    // Unknown account and spec, refused by the purchase's own rule.
    let mut c = on_demand("pool-2", 1, true);
    if let Command::Purchase { account, .. } = &mut c {
        *account = "nobody".into();
    }
    w.refused(at, c, Rule::R4);
    let mut c = monthly("pool-2", 1);
    if let Command::Purchase { spec, .. } = &mut c {
        *spec = "no.such.spec".into();
    }
    w.refused(at, c, Rule::R3);
    // Subscriptions are for dedicated pools (seed table 1-1).
    let mut c = monthly("pool-2", 1);
    if let Command::Purchase { pool_type, .. } = &mut c {
        *pool_type = PoolType::Public;
    }
    w.refused(at, c, Rule::R3);
    // R1: nothing before the last recorded instant.
    w.refused(t("2023-03-01T00:00:00+08:00"), on_demand("pool-3", 1, true), Rule::R1);
}

#[test]
fn yearly_uses_the_yearly_price_else_twelve_months() {
    let mut w = World::new(dec!(100000));
    let at = t("2023-04-08T10:00:00+08:00");
    let events = w.ok(at, buy("y1", BillingMode::Yearly, Some(Term::Years(1)), 2, false));
    assert_eq!(charged(&events)[0].amounts.payable, dec!(35000)); // 17500 × 2 nodes
    assert_eq!(w.pool("y1").period.unwrap().end, t("2024-04-08T23:59:59+08:00"));
    let mut c = buy("y2", BillingMode::Yearly, Some(Term::Years(1)), 1, false);
    if let Command::Purchase { spec, .. } = &mut c {
        *spec = BIG.into(); // no yearly price: 12 × 3500
    }
    assert_eq!(charged(&w.ok(at, c))[0].amounts.payable, dec!(42000));
}

#[test]
fn renewal_unified_expiry_r3() {
    let mut w = World::new(dec!(10000));
    w.ok(t("2023-04-08T10:00:00+08:00"), monthly("pool-1", 1));
    let events = w.ok(t("2023-04-20T10:00:00+08:00"), Command::Renew { pool: "pool-1".into(), term: Term::Months(1), align_day: Some(15) });
    // 05-08 + 1 month = 06-08, aligned to 06-15: 7/30 = 0.2333 → 1750 × 0.2333 = 408.27.
    let line = &charged(&events)[0];
    assert_eq!(line.end, t("2023-06-15T23:59:59+08:00"));
    assert_eq!(line.amounts.payable, dec!(1750) + dec!(408.27));
}

// --- R6/R7 lifecycle ------------------------------------------------------------------------

#[test]
fn lifecycle_warn_expire_freeze_release_r6_r7() {
    let mut w = World::new(dec!(10000));
    w.ok(t("2023-03-08T15:50:04+08:00"), monthly("pool-1", 1));
    let happened = w.advance(t("2023-06-01T00:00:00+08:00"));
    let steps: Vec<(Instant, &str)> = happened
        .iter()
        .map(|(at, e)| {
            let name = match e {
                Event::ExpiryWarned { .. } => "warned",
                Event::PoolExpired { .. } => "expired",
                Event::PoolFrozen { .. } => "frozen",
                Event::PoolReleased { .. } => "released",
                other => panic!("unexpected {other:?}"),
            };
            (*at, name)
        })
        .collect();
    assert_eq!(
        steps,
        vec![
            (t("2023-04-01T23:59:59+08:00"), "warned"),   // E − 7 days
            (t("2023-04-09T00:00:00+08:00"), "expired"),  // E + 1 s
            (t("2023-04-24T00:00:00+08:00"), "frozen"),   // + 15 days grace
            (t("2023-05-09T00:00:00+08:00"), "released"), // + 15 days retention
        ]
    );
    // Released is terminal: every command refused.
    let at = t("2023-06-01T00:00:00+08:00");
    w.refused(at, Command::Renew { pool: "pool-1".into(), term: Term::Months(1), align_day: None }, Rule::R6);
    w.refused(at, Command::Scale { pool: "pool-1".into(), nodes: Some(2), spec: None }, Rule::R17);
    w.refused(at, Command::Delete { pool: "pool-1".into() }, Rule::R17);
    w.refused(at, Command::Ready { pool: "pool-1".into() }, Rule::R4);
}

#[test]
fn expired_pool_refuses_scaling_and_renews_anchored_on_old_end() {
    let mut w = World::new(dec!(10000));
    w.ok(t("2023-03-08T15:50:04+08:00"), monthly("pool-1", 1));
    let at = t("2023-04-12T09:00:00+08:00");
    w.advance(at);
    assert_eq!(w.pool("pool-1").status, PoolStatus::Expired);
    w.refused(at, Command::Scale { pool: "pool-1".into(), nodes: Some(2), spec: None }, Rule::R9);
    w.refused(at, Command::Delete { pool: "pool-1".into() }, Rule::R16);
    let events = w.ok(at, Command::Renew { pool: "pool-1".into(), term: Term::Months(1), align_day: None });
    assert_eq!(charged(&events)[0].start, t("2023-04-08T23:59:59+08:00"));
    assert_eq!(w.pool("pool-1").status, PoolStatus::Running);
    assert_eq!(w.pool("pool-1").period.unwrap().end, t("2023-05-08T23:59:59+08:00"));
}

#[test]
fn frozen_pool_renews_back_to_running_even_when_the_new_end_has_passed() {
    let mut w = World::new(dec!(10000));
    // E = 2023-02-28 23:59:59; frozen from 03-16; renewed 03-10 + ... choose a date after freezing.
    w.ok(t("2023-01-31T10:00:00+08:00"), monthly("pool-1", 1));
    let at = t("2023-03-29T12:00:00+08:00");
    w.advance(at);
    assert_eq!(w.pool("pool-1").status, PoolStatus::Frozen);
    w.ok(at, Command::Renew { pool: "pool-1".into(), term: Term::Months(1), align_day: None });
    // Anchored on 02-28: new end 03-28 23:59:59, already past, so it expires again at once,
    // with a fresh grace period counted from the new end.
    assert_eq!(w.pool("pool-1").period.unwrap().end, t("2023-03-28T23:59:59+08:00"));
    let after = w.advance(at);
    assert!(matches!(after.as_slice(), [(when, Event::PoolExpired { .. })] if *when == at), "{after:?}");
    w.advance(t("2023-04-12T23:59:59+08:00"));
    assert_eq!(w.pool("pool-1").status, PoolStatus::Expired);
    w.advance(t("2023-04-13T00:00:00+08:00"));
    assert_eq!(w.pool("pool-1").status, PoolStatus::Frozen);
}

#[test]
fn policy_levels_set_grace_and_retention() {
    let mut w = World::new(dec!(10000));
    let mut policy = Policy::default();
    policy.levels.insert("gold".into(), Level { grace_days: 30, retention_days: 60 });
    let at = t("2023-03-01T00:00:00+08:00");
    w.ok(at, Command::SetPolicy { policy: policy.clone() });
    w.refused(at, Command::SetPolicy { policy }, Rule::R17);
    w.ok(at, Command::OpenAccount { account: "gold-1".into(), balance: dec!(5000), level: "gold".into(), discount: dec!(0) });
    w.refused(at, Command::OpenAccount { account: "x".into(), balance: dec!(0), level: "platinum".into(), discount: dec!(0) }, Rule::R6);
    let mut c = monthly("g", 1);
    if let Command::Purchase { account, .. } = &mut c {
        *account = "gold-1".into();
    }
    w.ok(t("2023-03-08T15:50:04+08:00"), c);
    w.advance(t("2023-05-08T23:59:59+08:00")); // 04-09 + 30 days = 05-09
    assert_eq!(w.pool("g").status, PoolStatus::Expired);
    w.advance(t("2023-05-09T00:00:00+08:00"));
    assert_eq!(w.pool("g").status, PoolStatus::Frozen);
}

// --- R9 subscription scaling ------------------------------------------------------------------

#[test]
fn upgrade_and_downgrade_seed_1_2() {
    let mut w = World::new(dec!(10000));
    w.ok(t("2023-04-08T10:00:00+08:00"), monthly("pool-1", 1));
    let events = w.ok(t("2023-04-18T00:00:00+08:00"), Command::Scale { pool: "pool-1".into(), nodes: Some(2), spec: None });
    let line = &charged(&events)[0];
    assert_eq!((line.item, line.amounts.payable), (Item::Upgrade, dec!(1151.67)));
    assert!(matches!(&line.basis, Basis::Change { factor, .. } if *factor == dec!(0.6581)));
    assert_eq!(w.balance(), dec!(10000) - dec!(1750) - dec!(1151.67));
    // Back to one node the same day: the same difference is refunded.
    let events = w.ok(t("2023-04-18T00:00:00+08:00"), Command::Scale { pool: "pool-1".into(), nodes: Some(1), spec: None });
    let line = &charged(&events)[0];
    assert_eq!((line.item, line.amounts.payable), (Item::Downgrade, dec!(-1151.67)));
    assert_eq!(w.balance(), dec!(10000) - dec!(1750));
    // A spec change prices the new spec: 3500 − 1750 again.
    let events = w.ok(t("2023-04-18T00:00:00+08:00"), Command::Scale { pool: "pool-1".into(), nodes: None, spec: Some(BIG.into()) });
    assert_eq!(charged(&events)[0].amounts.payable, dec!(1151.67));
    // R17: the current size.
    w.refused(t("2023-04-19T00:00:00+08:00"), Command::Scale { pool: "pool-1".into(), nodes: Some(1), spec: None }, Rule::R17);
}

#[test]
fn upgrade_refused_without_balance_r12() {
    let mut w = World::new(dec!(2000));
    w.ok(t("2023-04-08T10:00:00+08:00"), monthly("pool-1", 1));
    w.refused(t("2023-04-18T00:00:00+08:00"), Command::Scale { pool: "pool-1".into(), nodes: Some(2), spec: None }, Rule::R12);
    assert_eq!(w.pool("pool-1").nodes, 1);
}

// --- R4, R10, R16 pay-per-use ---------------------------------------------------------------

#[test]
fn on_demand_two_cycles_seed_1_3() {
    let mut w = World::new(dec!(100));
    w.ok(t("2023-04-18T09:59:30+08:00"), on_demand("pool-1", 1, true));
    let mut happened = w.advance(t("2023-04-18T10:45:46+08:00"));
    w.ok(t("2023-04-18T10:45:46+08:00"), Command::Delete { pool: "pool-1".into() });
    happened.extend(w.advance(t("2023-04-18T12:00:00+08:00")));
    let got: Vec<(Instant, Decimal)> = lines(&happened).iter().map(|l| (l.start, l.amounts.payable)).collect();
    assert_eq!(got, vec![(t("2023-04-18T09:59:30+08:00"), dec!(0.02)), (t("2023-04-18T10:00:00+08:00"), dec!(2.66))]);
    // Settled at each cycle's end, even after deletion (R16).
    assert_eq!(
        happened.iter().filter(|(_, e)| matches!(e, Event::Charged { .. })).map(|(at, _)| *at).collect::<Vec<_>>(),
        vec![t("2023-04-18T10:00:00+08:00"), t("2023-04-18T11:00:00+08:00")]
    );
    assert_eq!(w.balance(), dec!(97.32));
    assert!(w.state.meters.is_empty(), "nothing left to bill");
    w.refused(t("2023-04-18T12:00:00+08:00"), Command::Delete { pool: "pool-1".into() }, Rule::R17);
}

#[test]
fn creating_pool_costs_nothing_and_accepts_only_ready_and_delete_r4() {
    let mut w = World::new(dec!(100));
    w.ok(t("2023-07-10T16:37:15+08:00"), on_demand("pool-1", 1, false));
    assert_eq!(w.pool("pool-1").status, PoolStatus::Creating);
    let at = t("2023-07-10T16:40:00+08:00");
    w.refused(at, Command::Scale { pool: "pool-1".into(), nodes: Some(2), spec: None }, Rule::R4);
    w.refused(at, Command::Convert { pool: "pool-1".into(), term: Term::Months(1) }, Rule::R11);
    w.refused(at, Command::Renew { pool: "pool-1".into(), term: Term::Months(1), align_day: None }, Rule::R3);
    // Seed §6: ready at 16:47:08, so the first line is 772 s.
    w.ok(t("2023-07-10T16:47:08+08:00"), Command::Ready { pool: "pool-1".into() });
    w.refused(t("2023-07-10T16:50:00+08:00"), Command::Ready { pool: "pool-1".into() }, Rule::R17);
    let happened = w.advance(t("2023-07-10T17:00:00+08:00"));
    let line = &lines(&happened)[0];
    assert_eq!(line.amounts, Amounts { list_price: dec!(0.75055555), discount: dec!(0), round_off: dec!(0.00055555), payable: dec!(0.75) });
    assert!(matches!(line.basis, Basis::Usage { seconds: 772, .. }));
}

#[test]
fn deleting_a_creating_pool_bills_nothing() {
    let mut w = World::new(dec!(100));
    w.ok(t("2023-04-18T08:45:30+08:00"), on_demand("pool-1", 1, false));
    w.ok(t("2023-04-18T08:55:30+08:00"), Command::Delete { pool: "pool-1".into() });
    assert!(w.advance(t("2023-04-18T12:00:00+08:00")).is_empty());
    assert_eq!(w.balance(), dec!(100));
}

#[test]
fn subscription_pool_refuses_ready_and_delete() {
    let mut w = World::new(dec!(10000));
    w.ok(t("2023-04-08T10:00:00+08:00"), monthly("pool-1", 1));
    w.refused(t("2023-04-08T10:00:00+08:00"), Command::Ready { pool: "pool-1".into() }, Rule::R4);
    w.refused(t("2023-04-08T10:00:00+08:00"), Command::Delete { pool: "pool-1".into() }, Rule::R16);
    w.refused(t("2023-04-08T10:00:00+08:00"), Command::Convert { pool: "pool-1".into(), term: Term::Months(1) }, Rule::R11);
    w.refused(t("2023-04-08T10:00:00+08:00"), Command::Ready { pool: "nope".into() }, Rule::R4);
}

#[test]
fn scaling_mid_cycle_makes_two_lines_seed_1_3() {
    let mut w = World::new(dec!(100));
    w.ok(t("2023-04-18T09:00:00+08:00"), on_demand("pool-1", 2, true));
    w.ok(t("2023-04-18T09:30:00+08:00"), Command::Scale { pool: "pool-1".into(), nodes: Some(4), spec: None });
    let happened = w.advance(t("2023-04-18T10:00:00+08:00"));
    let got: Vec<(Instant, Instant, u32, Decimal)> = lines(&happened)
        .iter()
        .map(|l| match &l.basis {
            Basis::Usage { nodes, .. } => (l.start, l.end, *nodes, l.amounts.payable),
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (t("2023-04-18T09:00:00+08:00"), t("2023-04-18T09:30:00+08:00"), 2, dec!(3.50)),
            (t("2023-04-18T09:30:00+08:00"), t("2023-04-18T10:00:00+08:00"), 4, dec!(7.00)),
        ]
    );
    // The next cycle bills four nodes for the whole hour.
    let happened = w.advance(t("2023-04-18T11:00:00+08:00"));
    assert_eq!(lines(&happened)[0].amounts.payable, dec!(14.00));
}

#[test]
fn settlement_may_overdraw_the_balance_r12() {
    let mut w = World::new(dec!(1));
    w.ok(t("2023-04-18T09:00:00+08:00"), on_demand("pool-1", 1, true));
    w.advance(t("2023-04-18T10:00:00+08:00"));
    assert_eq!(w.balance(), dec!(-2.50));
}

#[test]
fn discount_applies_to_every_line_r2() {
    let mut w = World::new(dec!(10000));
    let at = t("2023-07-10T16:00:00+08:00");
    w.ok(at, Command::OpenAccount { account: "vip".into(), balance: dec!(10000), level: "standard".into(), discount: dec!(0.10) });
    w.refused(at, Command::OpenAccount { account: "bad".into(), balance: dec!(0), level: "standard".into(), discount: dec!(1) }, Rule::R2);
    let mut c = on_demand("p", 1, true);
    if let Command::Purchase { account, .. } = &mut c {
        *account = "vip".into();
    }
    w.ok(t("2023-07-10T16:47:08+08:00"), c);
    let happened = w.advance(t("2023-07-10T17:00:00+08:00"));
    assert_eq!(lines(&happened)[0].amounts.payable, dec!(0.67));
    let mut c = monthly("m", 1);
    if let Command::Purchase { account, .. } = &mut c {
        *account = "vip".into();
    }
    let events = w.ok(t("2023-07-10T17:00:00+08:00"), c);
    assert_eq!(charged(&events)[0].amounts.discount, dec!(175));
    assert_eq!(charged(&events)[0].amounts.payable, dec!(1575));
}

// --- R11 conversion ---------------------------------------------------------------------------

#[test]
fn conversion_bills_the_partial_cycle_and_charges_for_current_nodes_r11() {
    let mut w = World::new(dec!(10000));
    w.ok(t("2023-03-18T15:30:00+08:00"), on_demand("pool-1", 1, true));
    w.ok(t("2023-03-20T09:00:00+08:00"), Command::Scale { pool: "pool-1".into(), nodes: Some(2), spec: None });
    let events = w.ok(t("2023-03-20T10:30:00+08:00"), Command::Convert { pool: "pool-1".into(), term: Term::Months(1) });
    let fee = &charged(&events)[0];
    assert_eq!((fee.item, fee.mode, fee.amounts.payable), (Item::Conversion, BillingMode::Monthly, dec!(3500)));
    assert_eq!(fee.end, t("2023-04-20T23:59:59+08:00"));
    let happened = w.advance(t("2023-03-20T12:00:00+08:00"));
    let last = lines(&happened);
    assert_eq!(last.len(), 1, "only the partial 10:00–10:30 line remains: {last:?}");
    assert_eq!((last[0].end, last[0].amounts.payable), (t("2023-03-20T10:30:00+08:00"), dec!(3.50)));
    assert_eq!(w.pool("pool-1").mode, BillingMode::Monthly);
    // Public pools do not convert.
    let mut c = on_demand("pub", 1, true);
    if let Command::Purchase { pool_type, .. } = &mut c {
        *pool_type = PoolType::Public;
    }
    w.ok(t("2023-03-20T12:00:00+08:00"), c);
    w.refused(t("2023-03-20T12:00:00+08:00"), Command::Convert { pool: "pub".into(), term: Term::Months(1) }, Rule::R11);
}

#[test]
fn events_round_trip_through_their_stored_form() {
    let mut w = World::new(dec!(10000));
    let mut all = w.ok(t("2023-04-08T10:00:00+08:00"), monthly("pool-1", 1));
    all.extend(w.ok(t("2023-04-18T00:00:00+08:00"), Command::Scale { pool: "pool-1".into(), nodes: Some(2), spec: None }));
    all.extend(w.ok(t("2023-04-18T09:00:00+08:00"), on_demand("od", 1, true)));
    all.extend(w.advance(t("2023-04-18T11:00:00+08:00")).into_iter().map(|(_, e)| e));
    for event in all {
        let (name, payload) = event.encode();
        let version = event.schema_version();
        assert_eq!(Event::decode(&name, version, &payload).unwrap(), event);
        assert!(Event::decode(&name, version + 1, &payload).is_err(), "a version from the future is refused");
        assert!(Event::decode("pool_deleted", version, &payload).is_err() || name == "pool_deleted");
    }
}

// --- R12 arrears ----------------------------------------------------------------------------

fn events_named(happened: &[(Instant, Event)]) -> Vec<(Instant, String)> {
    happened.iter().map(|(at, e)| (*at, e.encode().0)).collect()
}

#[test]
fn arrears_grace_frozen_and_recovery_r12() {
    let mut w = World::new(dec!(5));
    w.ok(t("2023-04-18T09:00:00+08:00"), on_demand("p", 1, true));
    // 10:00 settles 3.50 (balance 1.50), 11:00 another 3.50: −2.00, in arrears from 11:00.
    let happened = w.advance(t("2023-04-18T11:00:00+08:00"));
    assert!(events_named(&happened).contains(&(t("2023-04-18T11:00:00+08:00"), "arrears_started".into())));
    assert_eq!(w.balance(), dec!(-2.00));
    assert_eq!(w.pool("p").shown_state(), "grace");
    // Seed table 1-6: refused while in arrears, each naming R12.
    let at = t("2023-04-18T11:30:00+08:00");
    w.refused(at, on_demand("q", 1, true), Rule::R12);
    w.refused(at, Command::Scale { pool: "p".into(), nodes: Some(2), spec: None }, Rule::R12);
    w.refused(at, Command::Delete { pool: "p".into() }, Rule::R12);
    w.refused(at, training("job-1", None), Rule::R12);
    // Grace is still billed; frozen 15 days after the arrears began, billing stops there.
    let happened = w.advance(t("2023-05-03T11:00:00+08:00"));
    let billed = lines(&happened);
    assert_eq!(billed.last().unwrap().end, t("2023-05-03T11:00:00+08:00"));
    assert_eq!(w.pool("p").shown_state(), "frozen");
    assert!(w.advance(t("2023-05-05T12:00:00+08:00")).is_empty(), "a frozen pool is not billed");
    // A top-up that leaves the balance negative does not end the arrears.
    let owed = -w.balance();
    w.ok(t("2023-05-05T12:00:00+08:00"), Command::TopUp { account: "acct-1".into(), amount: dec!(1) });
    assert_eq!(w.pool("p").shown_state(), "frozen");
    let events = w.ok(t("2023-05-05T12:00:00+08:00"), Command::TopUp { account: "acct-1".into(), amount: owed });
    assert!(matches!(events.last(), Some(Event::ArrearsEnded { .. })));
    assert_eq!(w.pool("p").shown_state(), "running");
    // Billing resumes at the top-up instant.
    let happened = w.advance(t("2023-05-05T13:00:00+08:00"));
    assert_eq!((lines(&happened)[0].start, lines(&happened)[0].amounts.payable), (t("2023-05-05T12:00:00+08:00"), dec!(3.50)));
}

#[test]
fn arrears_release_after_retention_and_subscriptions_keep_running_r12() {
    let mut w = World::new(dec!(1760));
    w.ok(t("2023-04-01T10:00:00+08:00"), monthly("sub", 1));
    w.ok(t("2023-04-01T10:00:00+08:00"), on_demand("p", 1, true));
    w.advance(t("2023-04-01T14:00:00+08:00"));
    assert!(w.state.accounts["acct-1"].arrears.is_some());
    assert_eq!(w.pool("sub").shown_state(), "running", "subscriptions keep running in arrears");
    w.refused(t("2023-04-01T14:00:00+08:00"), Command::Renew { pool: "sub".into(), term: Term::Months(1), align_day: None }, Rule::R12);
    let since = w.state.accounts["acct-1"].arrears.unwrap().since;
    w.advance(since + chrono::Duration::days(30) - chrono::Duration::seconds(1));
    assert_eq!(w.pool("p").shown_state(), "frozen");
    w.advance(since + chrono::Duration::days(30));
    assert_eq!(w.pool("p").shown_state(), "released");
    w.refused(since + chrono::Duration::days(30), Command::Delete { pool: "p".into() }, Rule::R17);
}

// --- R8 auto-renewal ------------------------------------------------------------------------

fn auto(pool: &str, months: u32, days_before: u32, count: Option<u32>) -> Command {
    Command::SetAutoRenew { pool: pool.into(), enabled: true, term: Some(Term::Months(months)), days_before, count }
}

#[test]
fn auto_renewal_fails_twice_then_succeeds_after_a_top_up_r8() {
    let mut w = World::new(dec!(1800));
    w.ok(t("2023-04-08T10:00:00+08:00"), monthly("p", 1)); // E = 2023-05-08 23:59:59
    w.ok(t("2023-04-08T10:00:00+08:00"), auto("p", 1, 3, None));
    let happened = w.advance(t("2023-05-06T12:00:00+08:00"));
    let attempts: Vec<(Instant, bool)> = happened
        .iter()
        .filter_map(|(at, e)| match e {
            Event::AutoRenewAttempted { succeeded, reason, .. } => {
                assert!(*succeeded || reason.as_deref().unwrap().contains("R12"), "{reason:?}");
                Some((*at, *succeeded))
            }
            _ => None,
        })
        .collect();
    assert_eq!(attempts, vec![(t("2023-05-05T03:00:00+08:00"), false), (t("2023-05-06T03:00:00+08:00"), false)]);
    w.ok(t("2023-05-06T12:00:00+08:00"), Command::TopUp { account: "acct-1".into(), amount: dec!(2000) });
    let happened = w.advance(t("2023-05-07T03:00:00+08:00"));
    assert!(matches!(happened.first(), Some((_, Event::AutoRenewAttempted { succeeded: true, .. }))), "{happened:?}");
    let renewal = &lines(&happened)[0];
    assert_eq!((renewal.item, renewal.start, renewal.end), (Item::Renewal, t("2023-05-08T23:59:59+08:00"), t("2023-06-08T23:59:59+08:00")));
    // Aimed at the new end: next attempt 2023-06-05 03:00.
    let happened = w.advance(t("2023-06-05T03:00:00+08:00"));
    assert_eq!(happened.iter().filter(|(_, e)| matches!(e, Event::AutoRenewAttempted { .. })).count(), 1);
}

#[test]
fn auto_renewal_count_runs_down_and_manual_renewal_keeps_it_r8() {
    let mut w = World::new(dec!(100000));
    w.ok(t("2023-04-08T10:00:00+08:00"), monthly("p", 1));
    // Set after 7 days before E: the next 03:00 is the first attempt.
    w.ok(t("2023-05-02T10:00:00+08:00"), auto("p", 1, 7, Some(1)));
    let happened = w.advance(t("2023-05-03T03:00:00+08:00"));
    assert!(matches!(happened.as_slice(), [(at, Event::AutoRenewAttempted { succeeded: true, .. }), ..] if *at == t("2023-05-03T03:00:00+08:00")));
    assert!(w.pool("p").auto_renew.is_none(), "a count of one is used up");
    w.ok(t("2023-05-10T00:00:00+08:00"), auto("p", 2, 1, None));
    w.ok(t("2023-05-10T00:00:00+08:00"), Command::Renew { pool: "p".into(), term: Term::Months(1), align_day: None });
    // E is now 2023-07-08: the first attempt is 2023-07-07 03:00, renewing two months.
    let happened = w.advance(t("2023-07-07T03:00:00+08:00"));
    let renewal = lines(&happened);
    assert_eq!(renewal.len(), 1);
    assert_eq!(renewal[0].end, t("2023-09-08T23:59:59+08:00"));
}

#[test]
fn auto_renewal_refusals_r8() {
    let mut w = World::new(dec!(100000));
    let at = t("2023-04-08T10:00:00+08:00");
    w.ok(at, monthly("p", 1));
    w.ok(at, on_demand("od", 1, true));
    w.refused(at, auto("od", 1, 7, None), Rule::R8);
    w.refused(at, Command::SetAutoRenew { pool: "p".into(), enabled: false, term: None, days_before: 7, count: None }, Rule::R17);
    w.ok(at, auto("p", 1, 7, None));
    w.refused(at, auto("p", 1, 7, None), Rule::R17);
    w.refused(at, auto("p", 1, 9, None), Rule::R8);
    w.refused(at, auto("nope", 1, 7, None), Rule::R8);
}

// --- R13 packages ---------------------------------------------------------------------------

fn package(id: &str, quantity: u32, hours: u32, valid_days: u32, alert_below: Option<Decimal>) -> Command {
    priced_package(id, quantity, hours, valid_days, alert_below, dec!(20))
}

fn priced_package(id: &str, quantity: u32, hours: u32, valid_days: u32, alert_below: Option<Decimal>, price: Decimal) -> Command {
    Command::BuyPackage {
        account: "acct-1".into(),
        package: id.into(),
        spec: SPEC.into(),
        quantity,
        hours,
        valid_days,
        price,
        region: None,
        alert_below,
    }
}

fn training(job: &str, pool: Option<&str>) -> Command {
    Command::StartJob {
        account: "acct-1".into(),
        job: job.into(),
        kind: JobKind::Training,
        spec: SPEC.into(),
        nodes: 2,
        pool: pool.map(str::to_string),
        model: None,
        disk_gb: None,
        disk_hourly: None,
        region: None,
    }
}

#[test]
fn packages_are_used_first_expiring_first_then_pay_per_use_r13() {
    let mut w = World::new(dec!(100));
    let at = t("2023-04-01T10:00:00+08:00");
    let events = w.ok(at, package("long", 1, 10, 30, Some(dec!(5))));
    assert_eq!(charged(&events)[0].amounts.payable, dec!(20));
    w.ok(at, package("short", 1, 1, 7, None));
    w.ok(at, training("job-1", None)); // 2 nodes: 2 node-hours an hour
    let happened = w.advance(t("2023-04-01T11:00:00+08:00"));
    let got: Vec<(BillingMode, String)> = lines(&happened).iter().map(|l| (l.mode, format!("{:?}", l.basis))).collect();
    // The short-lived package first (1 node-hour), then the long one (1 node-hour).
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got[0].1.contains("\"short\""), "{got:?}");
    assert!(got[1].1.contains("\"long\""), "{got:?}");
    assert!(lines(&happened).iter().all(|l| l.resource == "training_job-1" && l.amounts.payable.is_zero()));
    // The long one's 9 node-hours left: 7, 5, then 3 < 5 at 14:00 — the alert, once.
    let happened = w.advance(t("2023-04-01T15:00:00+08:00"));
    let alerts = happened.iter().filter(|(_, e)| matches!(e, Event::PackageAlerted { .. })).count();
    assert_eq!(alerts, 1);
    // 10 node-hours in all; the fifth and sixth hours: 1 node-hour covered, 1 billed at 3.50.
    let happened = w.advance(t("2023-04-01T16:00:00+08:00"));
    let billed: Vec<(BillingMode, Decimal)> = lines(&happened).iter().map(|l| (l.mode, l.amounts.payable)).collect();
    assert_eq!(billed, vec![(BillingMode::Package, dec!(0)), (BillingMode::OnDemand, dec!(3.50))]);
    let happened = w.advance(t("2023-04-01T17:00:00+08:00"));
    assert_eq!(lines(&happened).iter().map(|l| l.amounts.payable).collect::<Vec<_>>(), vec![dec!(7.00)]);
    // Refused: not enough balance (R13); an id in use (R17).
    let at = t("2023-04-01T17:00:00+08:00");
    w.refused(at, priced_package("big", 1, 1, 1, None, dec!(1000)), Rule::R13);
    w.refused(at, package("job-1", 1, 1, 1, None), Rule::R17);
}

#[test]
fn packages_cover_only_the_public_pool_of_their_spec_and_region_r13() {
    let mut w = World::new(dec!(1000));
    let at = t("2023-04-01T10:00:00+08:00");
    w.ok(at, package("pk", 10, 10, 30, None));
    w.ok(at, on_demand("dedicated", 1, true)); // a dedicated pool: not covered
    let mut public = on_demand("public", 1, true);
    if let Command::Purchase { pool_type, region, .. } = &mut public {
        *pool_type = PoolType::Public;
        *region = Some("cn-north-4".into()); // another region than the package's
    }
    w.ok(at, public);
    let happened = w.advance(t("2023-04-01T11:00:00+08:00"));
    assert!(lines(&happened).iter().all(|l| l.mode == BillingMode::OnDemand && l.amounts.payable == dec!(3.50)));
    // Expired packages are not used.
    w.advance(t("2023-05-01T10:00:00+08:00"));
    assert!(w.state.packages["pk"].expired);
}

// --- R14 workloads --------------------------------------------------------------------------

fn notebook(job: &str, pool: Option<&str>) -> Command {
    Command::StartJob {
        account: "acct-1".into(),
        job: job.into(),
        kind: JobKind::Notebook,
        spec: SPEC.into(),
        nodes: 1,
        pool: pool.map(str::to_string),
        model: None,
        disk_gb: None,
        disk_hourly: Some(dec!(0.0014)),
        region: None,
    }
}

#[test]
fn workloads_bill_compute_on_the_public_pool_and_disks_until_deleted_r14() {
    let mut w = World::new(dec!(10000));
    let at = t("2023-04-01T10:00:00+08:00");
    w.ok(at, notebook("nb", None));
    w.refused(at, notebook("nb", None), Rule::R17);
    let mut happened = w.advance(t("2023-04-01T11:00:00+08:00"));
    w.ok(t("2023-04-01T11:00:00+08:00"), Command::StopJob { job: "nb".into() });
    w.refused(t("2023-04-01T11:00:00+08:00"), Command::StopJob { job: "nb".into() }, Rule::R17);
    happened.extend(w.advance(t("2023-04-01T12:00:00+08:00")));
    // 10–11: compute 3.50 and disk 5 GB × 0.0014 = 0.007 (all round-off); 11–12: the disk only.
    let got: Vec<(Item, Instant, Decimal, Decimal)> =
        lines(&happened).iter().map(|l| (l.item, l.start, l.amounts.list_price, l.amounts.payable)).collect();
    assert_eq!(
        got,
        vec![
            (Item::Compute, t("2023-04-01T10:00:00+08:00"), dec!(3.5), dec!(3.50)),
            (Item::Storage, t("2023-04-01T10:00:00+08:00"), dec!(0.007), dec!(0)),
            (Item::Storage, t("2023-04-01T11:00:00+08:00"), dec!(0.007), dec!(0)),
        ]
    );
    // Restarting resumes compute; deleting ends everything.
    w.ok(t("2023-04-01T12:30:00+08:00"), notebook("nb", None));
    let mut happened = w.advance(t("2023-04-01T13:00:00+08:00"));
    w.ok(t("2023-04-01T13:00:00+08:00"), Command::DeleteJob { job: "nb".into() });
    w.refused(t("2023-04-01T13:00:00+08:00"), Command::DeleteJob { job: "nb".into() }, Rule::R17);
    w.refused(t("2023-04-01T13:00:00+08:00"), notebook("nb", None), Rule::R17);
    happened.extend(w.advance(t("2023-04-01T15:00:00+08:00")));
    let compute: Vec<Decimal> = lines(&happened).iter().filter(|l| l.item == Item::Compute).map(|l| l.amounts.payable).collect();
    assert_eq!(compute, vec![dec!(1.75)], "12:30–13:00 after the restart");
    assert!(lines(&happened).iter().all(|l| l.end <= t("2023-04-01T13:00:00+08:00")));
    assert!(w.state.meters.is_empty());
}

#[test]
fn jobs_on_a_dedicated_pool_cost_nothing_and_bill_under_r5_ids_r14() {
    let mut w = World::new(dec!(10000));
    let at = t("2023-04-01T10:00:00+08:00");
    w.ok(at, monthly("pool-1", 1));
    w.ok(at, training("t1", Some("pool-1")));
    w.ok(at, training("t2", None));
    let mut service = training("svc", None);
    if let Command::StartJob { kind, model, .. } = &mut service {
        *kind = JobKind::Service;
        *model = Some("b9c9".into());
    }
    w.ok(at, service);
    let happened = w.advance(t("2023-04-01T11:00:00+08:00"));
    let resources: Vec<String> = lines(&happened).iter().map(|l| l.resource.clone()).collect();
    assert_eq!(resources, vec!["svc-b9c9".to_string(), "training_t2".to_string()]);
    // Refused: a pool that is not there, or another account's, or on demand and creating.
    let at = t("2023-04-01T11:00:00+08:00");
    w.refused(at, training("t3", Some("nope")), Rule::R14);
    w.ok(at, Command::OpenAccount { account: "other".into(), balance: dec!(0), level: "standard".into(), discount: dec!(0) });
    let mut theirs = training("t4", Some("pool-1"));
    if let Command::StartJob { account, .. } = &mut theirs {
        *account = "other".into();
    }
    w.refused(t("2023-04-01T11:00:00+08:00"), theirs, Rule::R14);
    w.ok(t("2023-04-01T11:00:00+08:00"), on_demand("creating", 1, false));
    w.refused(t("2023-04-01T11:00:00+08:00"), training("t5", Some("creating")), Rule::R14);
}

// --- R15 unsubscribing ----------------------------------------------------------------------

#[test]
fn unsubscribe_within_five_days_refunds_everything_r15() {
    let mut w = World::new(dec!(10000));
    w.ok(t("2023-04-08T10:00:00+08:00"), monthly("p", 1));
    w.ok(t("2023-04-09T10:00:00+08:00"), Command::Scale { pool: "p".into(), nodes: Some(2), spec: None });
    let paid = dec!(10000) - w.balance();
    let events = w.ok(t("2023-04-13T10:00:00+08:00"), Command::Unsubscribe { pool: "p".into() });
    let refund = &charged(&events)[0];
    assert_eq!((refund.item, refund.amounts.payable), (Item::Refund, -paid));
    assert_eq!(w.balance(), dec!(10000));
    assert_eq!(w.pool("p").status, PoolStatus::Released);
    w.refused(t("2023-04-13T10:00:00+08:00"), Command::Unsubscribe { pool: "p".into() }, Rule::R17);
}

#[test]
fn unsubscribe_later_refunds_the_unused_part_and_unbegun_renewals_r15() {
    let mut w = World::new(dec!(10000));
    w.ok(t("2023-04-08T10:00:00+08:00"), monthly("p", 1));
    w.ok(t("2023-04-10T10:00:00+08:00"), Command::Renew { pool: "p".into(), term: Term::Months(1), align_day: None });
    let events = w.ok(t("2023-04-18T10:00:00+08:00"), Command::Unsubscribe { pool: "p".into() });
    // 1750 × (12/30 + 8/31 = 0.6581) = 1151.67, plus the unbegun renewal 1750.
    assert_eq!(charged(&events)[0].amounts.payable, dec!(-2901.67));
    // Refused: on demand (delete it), expired (R6).
    w.ok(t("2023-04-18T10:00:00+08:00"), on_demand("od", 1, true));
    w.refused(t("2023-04-18T10:00:00+08:00"), Command::Unsubscribe { pool: "od".into() }, Rule::R15);
    w.ok(t("2023-04-18T10:00:00+08:00"), monthly("q", 1));
    w.advance(t("2023-05-19T00:00:00+08:00"));
    w.refused(t("2023-05-19T00:00:00+08:00"), Command::Unsubscribe { pool: "q".into() }, Rule::R6);
}

#[test]
fn a_v1_top_up_is_upcast_to_v2() {
    let v1 = serde_json::json!({"type": "topped_up", "account": "a", "amount": "10.00", "balance": "25.00"});
    let event = Event::decode("topped_up", 1, &v1).unwrap();
    assert_eq!(event, Event::ToppedUp { account: "a".into(), amount: dec!(10.00), balance_after: dec!(25.00) });
    assert_eq!(event.schema_version(), 2);
    // A v2 payload read as v1 has no `balance`: refused, not guessed.
    let (_, v2) = event.encode();
    assert!(Event::decode("topped_up", 1, &v2).is_err());
    assert!(Event::decode("topped_up", 3, &v2).is_err());
}

#[test]
fn a_released_notebook_stays_released_when_its_account_falls_into_arrears_again_r12() {
    // Found by the invariants property test: a released disk counted as pay-per-use.
    let mut w = World::new(dec!(4));
    let mut policy = Policy::default();
    policy.levels.insert("short".into(), Level { grace_days: 1, retention_days: 1 });
    let at = t("2023-04-01T10:00:00+08:00");
    w.ok(at, Command::SetPolicy { policy });
    w.ok(at, Command::OpenAccount { account: "s".into(), balance: dec!(4), level: "short".into(), discount: dec!(0) });
    let mut nb = notebook("nb", None);
    if let Command::StartJob { account, .. } = &mut nb {
        *account = "s".into();
    }
    w.ok(at, nb);
    w.advance(t("2023-04-04T12:00:00+08:00")); // arrears at 12:00, frozen a day later, released a day after
    assert_eq!(w.state.jobs["nb"].shown_state(), "released");
    w.ok(t("2023-04-04T12:00:00+08:00"), Command::TopUp { account: "s".into(), amount: dec!(100) });
    let mut od = on_demand("p", 4, true);
    if let Command::Purchase { account, .. } = &mut od {
        *account = "s".into();
    }
    w.ok(t("2023-04-04T12:00:00+08:00"), od);
    w.advance(t("2023-04-05T12:00:00+08:00")); // 14.00 an hour: in arrears again
    assert!(w.state.accounts["s"].arrears.is_some());
    assert_eq!(w.state.jobs["nb"].shown_state(), "released");
}

#[test]
fn a_pool_readied_during_arrears_joins_its_account_s_phase_r12() {
    // Found by the invariants property test: readied after retention, it was billed.
    let mut w = World::new(dec!(4));
    let at = t("2023-04-01T10:00:00+08:00");
    w.ok(at, on_demand("billed", 1, true));
    w.ok(at, on_demand("grace", 1, false));
    w.ok(at, on_demand("frozen", 1, false));
    w.ok(at, on_demand("late", 1, false));
    w.advance(t("2023-04-01T12:00:00+08:00")); // in arrears from 12:00
    w.ok(t("2023-04-01T12:30:00+08:00"), Command::Ready { pool: "grace".into() });
    assert_eq!(w.pool("grace").shown_state(), "grace", "billed like the others");
    w.ok(t("2023-04-20T00:00:00+08:00"), Command::Ready { pool: "frozen".into() });
    assert_eq!(w.pool("frozen").shown_state(), "frozen");
    w.ok(t("2023-05-20T00:00:00+08:00"), Command::Ready { pool: "late".into() });
    assert_eq!(w.pool("late").shown_state(), "released");
    let happened = w.advance(t("2023-05-21T00:00:00+08:00"));
    assert!(lines(&happened).is_empty(), "nothing is billed after retention: {:?}", lines(&happened));
    assert!(!w.state.meters.keys().any(|(r, _)| r == "frozen" || r == "late"));
}

// --- Amended rules (R5, R9, R12, R13, R15) ---------------------------------------------------

fn yearly(pool: &str, years: u32) -> Command {
    buy(pool, BillingMode::Yearly, Some(Term::Years(years)), 1, false)
}

fn scale_to(pool: &str, nodes: u32) -> Command {
    Command::Scale { pool: pool.into(), nodes: Some(nodes), spec: None }
}

#[test]
fn r9_r15_a_yearly_subscription_is_changed_and_refunded_at_the_yearly_rate() {
    // Given a year bought 2023-03-01 10:00 at 17,500 (E = 2024-03-01 23:59:59).
    let mut w = World::new(dec!(100000));
    w.ok(t("2023-03-01T10:00:00+08:00"), yearly("y", 1));
    // When two nodes from 2023-03-20 09:00: factor 11/31 + 11 + 1/31 = 11.3871;
    // then 17,500 × 11.3871 / 12 = 16,606.1875 → 16,606.18 (not 1,750 × 11.3871 = 19,927.42).
    let upgrade = charged(&w.ok(t("2023-03-20T09:00:00+08:00"), scale_to("y", 2)))[0].clone();
    assert_eq!((upgrade.item, upgrade.amounts.list_price, upgrade.amounts.payable), (Item::Upgrade, dec!(16606.1875), dec!(16606.18)));
    assert!(matches!(upgrade.basis, Basis::Change { factor, yearly: true, .. } if factor == dec!(11.3871)));
    // When unsubscribed 2023-04-10 09:00: factor 20/30 + 10 + 1/31 = 10.6989;
    // then 17,500 × 2 × 10.6989 / 12 = 31,205.125 → −31,205.12.
    let refund = charged(&w.ok(t("2023-04-10T09:00:00+08:00"), Command::Unsubscribe { pool: "y".into() }))[0].clone();
    assert_eq!((refund.item, refund.amounts.payable), (Item::Refund, dec!(-31205.12)));
    match &refund.basis {
        Basis::Refund { full: false, unused: Some(u), .. } => assert_eq!((u.factor, u.yearly, u.amount), (dec!(10.6989), true, dec!(31205.12))),
        other => panic!("a partial refund, not {other:?}"),
    }
    // Never more than was paid: 17,500 + 16,606.18 = 34,106.18 ≥ 31,205.12.
    assert!(-refund.amounts.payable <= dec!(17500) + dec!(16606.18));
    assert_eq!(w.balance(), dec!(100000) - dec!(17500) - dec!(16606.18) + dec!(31205.12));
}

#[test]
fn r9_the_monthly_rate_of_a_year_divides_last() {
    // R9's own example: 17,500/year, one node added with factor 11.7742 → 17,170.70.
    assert_eq!(trunc2_of(remaining_value(dec!(17500), 1, dec!(11.7742), true)), dec!(17170.70));
    // Dividing last: 17,500 / 12 first would give 1,458.333… × 11.3871 = 16,606.187499…, a
    // figure that a price ending in a whole cent can lose a cent by.
    let table = [
        (dec!(17500), 1, dec!(11.3871), true, dec!(16606.18)),
        (dec!(17500), 2, dec!(10.6989), true, dec!(31205.12)),
        (dec!(1750), 1, dec!(0.6581), false, dec!(1151.67)), // seed §1.2, monthly: unchanged
        (dec!(12000.12), 1, dec!(1), true, dec!(1000.01)),
    ];
    for (price, nodes, factor, yearly, expected) in table {
        assert_eq!(trunc2_of(remaining_value(price, nodes, factor, yearly)), expected, "{price} × {nodes} × {factor} yearly={yearly}");
    }
}

fn trunc2_of(d: Decimal) -> Decimal {
    money::trunc2(d)
}

/// 2,194.74 to start; from 2023-04-01 10:00 a month of pool "sub" (1,750.00) and an on-demand
/// pool "od" at 7.00/h, which overdraws the rest at 2023-04-04 02:00 (R12).
fn a_subscription_and_an_on_demand_pool_outrunning_the_balance() -> World {
    let mut w = World::new(dec!(2194.74));
    let at = t("2023-04-01T10:00:00+08:00");
    w.ok(at, monthly("sub", 1));
    let mut od = on_demand("od", 1, true);
    if let Command::Purchase { spec, .. } = &mut od {
        *spec = BIG.into();
    }
    w.ok(at, od);
    w
}

#[test]
fn r12_a_refund_that_brings_the_balance_to_zero_or_more_ends_the_arrears() {
    // Given 2,194.74: a month of pool "sub" (1,750.00) and an on-demand pool at 7.00/h from
    // 2023-04-01 10:00: 444.74 left runs out at 2023-04-04 02:00 (−3.26): arrears, "od" in grace.
    let mut w = a_subscription_and_an_on_demand_pool_outrunning_the_balance();
    w.advance(t("2023-04-04T02:00:00+08:00"));
    assert_eq!(w.state.accounts["acct-1"].arrears.map(|a| a.since), Some(t("2023-04-04T02:00:00+08:00")));
    assert_eq!(w.pool("od").shown_state(), "grace");
    // When "sub" is unsubscribed 2023-04-10 10:00 (216 h billed: −1,067.26): the refund
    // 1,750 × (20/30 + 1/31 = 0.6989) = 1,223.07 leaves +155.81.
    let events = w.ok(t("2023-04-10T10:00:00+08:00"), Command::Unsubscribe { pool: "sub".into() });
    assert_eq!(charged(&events)[0].amounts.payable, dec!(-1223.07));
    assert_eq!(w.balance(), dec!(155.81));
    // Then the arrears are over: the pool runs and is billed as before; purchases are allowed.
    assert!(matches!(events.last(), Some(Event::ArrearsEnded { account }) if account == "acct-1"));
    assert_eq!(w.state.accounts["acct-1"].arrears, None);
    assert_eq!(w.pool("od").shown_state(), "running");
    let next = lines(&w.advance(t("2023-04-10T11:00:00+08:00")));
    assert_eq!((next[0].resource.as_str(), next[0].start, next[0].amounts.payable), ("od", t("2023-04-10T10:00:00+08:00"), dec!(7.00)));
    w.ok(t("2023-04-10T11:00:00+08:00"), package("pk", 1, 1, 1, None));
}

#[test]
fn r12_a_refund_that_leaves_the_balance_negative_does_not_end_the_arrears() {
    let mut w = a_subscription_and_an_on_demand_pool_outrunning_the_balance();
    // 2023-04-12 10:00: 264 h billed (−1,403.26); the refund 1,750 × (18/30 + 1/31 = 0.6323)
    // = 1,106.52 leaves −296.74: still in arrears, buying packages refused (R12).
    let events = w.ok(t("2023-04-12T10:00:00+08:00"), Command::Unsubscribe { pool: "sub".into() });
    assert_eq!(w.balance(), dec!(-296.74));
    assert!(!events.iter().any(|e| matches!(e, Event::ArrearsEnded { .. })));
    assert_eq!(w.pool("od").shown_state(), "grace");
    w.refused(t("2023-04-12T10:00:00+08:00"), package("pk", 1, 1, 1, None), Rule::R12);
}

#[test]
fn r12_a_stopped_notebook_s_disk_enters_the_phases_and_a_job_stopped_in_grace_stays_in_them() {
    // Given a notebook stopped at 10:30 (its 5 GB disk still billed) and a public training job
    // from 10:30 at 2 × 3.50/h: 7.50 − 5.25 at 11:00 = 2.25, − 7.00 at 12:00 = −4.75: arrears.
    let mut w = World::new(dec!(7.5));
    w.ok(t("2023-04-01T10:00:00+08:00"), notebook("nb", None));
    w.ok(t("2023-04-01T10:30:00+08:00"), Command::StopJob { job: "nb".into() });
    w.ok(t("2023-04-01T10:30:00+08:00"), training("tr", None));
    w.advance(t("2023-04-01T12:00:00+08:00"));
    assert_eq!(w.balance(), dec!(-4.75));
    // The stopped notebook is billing (its disk): it enters grace with the running job.
    assert_eq!((w.state.jobs["nb"].shown_state(), w.state.jobs["tr"].shown_state()), ("grace", "grace"));
    // When the job is stopped in grace, it stays in the phases: grace, then frozen.
    w.ok(t("2023-04-01T12:30:00+08:00"), Command::StopJob { job: "tr".into() });
    assert_eq!(w.state.jobs["tr"].shown_state(), "grace");
    w.advance(t("2023-04-16T12:00:00+08:00"));
    assert_eq!((w.state.jobs["nb"].shown_state(), w.state.jobs["tr"].shown_state()), ("frozen", "frozen"));
    assert!(lines(&w.advance(t("2023-04-17T10:00:00+08:00"))).is_empty(), "frozen: nothing is billed");
    // Then a top-up ends the arrears: both return to what they were (stopped); the disk is
    // billed again from that instant, the stopped job's compute is not.
    w.ok(t("2023-04-17T10:00:00+08:00"), Command::TopUp { account: "acct-1".into(), amount: dec!(100) });
    assert_eq!((w.state.jobs["nb"].shown_state(), w.state.jobs["tr"].shown_state()), ("stopped", "stopped"));
    let billed = lines(&w.advance(t("2023-04-17T11:00:00+08:00")));
    let got: Vec<(&str, Item, Instant)> = billed.iter().map(|l| (l.resource.as_str(), l.item, l.start)).collect();
    assert_eq!(got, vec![("nb", Item::Storage, t("2023-04-17T10:00:00+08:00"))]);
}

fn in_region(mut command: Command, name: &str) -> Command {
    match &mut command {
        Command::StartJob { region, .. } | Command::BuyPackage { region, .. } | Command::Purchase { region, .. } => *region = Some(name.into()),
        _ => unreachable!("only these carry a region"),
    }
    command
}

fn covered_by(billed: &[BillLine]) -> Vec<(String, String, i64)> {
    billed
        .iter()
        .map(|l| match &l.basis {
            Basis::Package { package, node_seconds, .. } => (l.resource.clone(), package.clone(), *node_seconds),
            Basis::Usage { seconds, nodes, covered_node_seconds, .. } => {
                (l.resource.clone(), "on_demand".to_string(), i64::from(*nodes) * seconds - covered_node_seconds)
            }
            other => panic!("a usage line, not {other:?}"),
        })
        .collect()
}

#[test]
fn r13_a_package_valid_at_a_line_s_start_covers_it_though_it_expires_before_the_settlement() {
    // Given a package bought 2023-04-01 06:37 for one day: it expires 2023-04-02 06:37.
    let mut w = World::new(dec!(1000));
    w.ok(t("2023-04-01T06:37:00+08:00"), package("pk", 1, 10, 1, None));
    // When a 2-node job runs from 06:00 on 04-02.
    w.ok(t("2023-04-02T06:00:00+08:00"), training("job-1", None));
    let happened = w.advance(t("2023-04-02T07:00:00+08:00"));
    // Then the package expires at 06:37, before the 07:00 settlement, and still covers the line.
    let names = events_named(&happened);
    let expired = names.iter().position(|(_, n)| n == "package_expired").expect("expired at 06:37");
    let settled = names.iter().position(|(_, n)| n == "cycle_settled").expect("settled at 07:00");
    assert!(expired < settled, "{names:?}");
    assert_eq!(covered_by(&lines(&happened)), vec![("training_job-1".to_string(), "pk".to_string(), 7200)]);
    // A line that starts after the expiry is not covered.
    let next = lines(&w.advance(t("2023-04-02T08:00:00+08:00")));
    assert_eq!(covered_by(&next), vec![("training_job-1".to_string(), "on_demand".to_string(), 7200)]);
}

#[test]
fn r13_within_a_settlement_lines_take_from_packages_by_resource_id_then_start() {
    // Given one node-hour of package and, in one cycle, job "b" from 06:00 and job "a" from
    // 06:30 (2 nodes each), and a public pool "p" scaled from 1 to 2 nodes at 06:30.
    let mut w = World::new(dec!(1000));
    w.ok(t("2023-04-02T05:00:00+08:00"), package("pk", 1, 1, 30, None));
    w.ok(t("2023-04-02T06:00:00+08:00"), training("b", None));
    w.ok(t("2023-04-02T06:30:00+08:00"), training("a", None));
    let happened = w.advance(t("2023-04-02T07:00:00+08:00"));
    // Then "training_a" (byte order before "training_b") takes the package though it started later.
    assert_eq!(
        covered_by(&lines(&happened)),
        vec![("training_a".to_string(), "pk".to_string(), 3600), ("training_b".to_string(), "on_demand".to_string(), 7200),]
    );
    // And one resource's stretches take in order of start: 06:00–06:30 before 06:30–07:00.
    let mut w = World::new(dec!(1000));
    w.ok(t("2023-04-02T05:00:00+08:00"), package("pk", 1, 1, 30, None));
    let mut public = on_demand("p", 1, true);
    if let Command::Purchase { pool_type, .. } = &mut public {
        *pool_type = PoolType::Public;
    }
    w.ok(t("2023-04-02T06:00:00+08:00"), public);
    w.ok(t("2023-04-02T06:30:00+08:00"), scale_to("p", 2));
    let happened = w.advance(t("2023-04-02T07:00:00+08:00"));
    assert_eq!(
        covered_by(&lines(&happened)),
        vec![("p".to_string(), "pk".to_string(), 1800), ("p".to_string(), "pk".to_string(), 1800), ("p".to_string(), "on_demand".to_string(), 1800),]
    );
}

#[test]
fn r13_a_package_covers_only_usage_in_its_own_region_none_being_default() {
    let mut w = World::new(dec!(1000));
    let at = t("2023-04-02T06:00:00+08:00");
    w.ok(at, in_region(package("north", 1, 10, 30, None), "cn-north-4"));
    w.ok(at, in_region(package("plain", 1, 10, 30, None), "default"));
    // A job in cn-north-4 takes from "north"; a job given no region is in `default`: "plain".
    w.ok(at, in_region(training("far", None), "cn-north-4"));
    w.ok(at, training("near", None));
    // A job in a third region has no package.
    w.ok(at, in_region(training("east", None), "cn-east-3"));
    let happened = w.advance(t("2023-04-02T07:00:00+08:00"));
    assert_eq!(
        covered_by(&lines(&happened)),
        vec![
            ("training_east".to_string(), "on_demand".to_string(), 7200),
            ("training_far".to_string(), "north".to_string(), 7200),
            ("training_near".to_string(), "plain".to_string(), 7200),
        ]
    );
    // A restart keeps the region the job was created in.
    w.ok(t("2023-04-02T07:00:00+08:00"), Command::StopJob { job: "far".into() });
    w.ok(t("2023-04-02T07:00:00+08:00"), training("far", None));
    assert_eq!(w.state.jobs["far"].region.as_deref(), Some("cn-north-4"));
}

#[test]
fn r5_workflows_and_auto_learning_jobs_bill_as_their_training_jobs() {
    let mut w = World::new(dec!(1000));
    let at = t("2023-04-01T10:00:00+08:00");
    for (job, kind) in [("wf-1", JobKind::Workflow), ("al-1", JobKind::AutoLearning)] {
        let mut command = training(job, None);
        if let Command::StartJob { kind: k, .. } = &mut command {
            *k = kind;
        }
        w.ok(at, command);
    }
    let billed: Vec<String> = lines(&w.advance(t("2023-04-01T11:00:00+08:00"))).into_iter().map(|l| l.resource).collect();
    assert_eq!(billed, vec!["training_al-1", "training_wf-1"]);
    // Their bill ids are taken: no other resource may carry them.
    w.refused(t("2023-04-01T11:00:00+08:00"), notebook("training_wf-1", None), Rule::R5);
}

#[test]
fn a_v1_job_start_is_upcast_with_the_bill_id_it_was_billed_under() {
    // v1 logs billed a workflow under its own id: replaying one must not rename its bills.
    let v1 = serde_json::json!({"type": "job_started", "account": "a", "job": "wf", "kind": "workflow", "spec": "s", "nodes": 1, "hourly": "3.40"});
    match Event::decode("job_started", 1, &v1).unwrap() {
        Event::JobStarted { billed_as, region, .. } => assert_eq!((billed_as.as_str(), region), ("wf", None)),
        other => panic!("{other:?}"),
    }
    let v1 = serde_json::json!({"type": "job_started", "account": "a", "job": "j", "kind": "training", "spec": "s", "nodes": 1});
    assert!(matches!(Event::decode("job_started", 1, &v1).unwrap(), Event::JobStarted { billed_as, .. } if billed_as == "training_j"));
    let v1 = serde_json::json!({"type": "job_started", "account": "a", "job": "svc", "kind": "service", "model": "m", "spec": "s", "nodes": 1});
    assert!(matches!(Event::decode("job_started", 1, &v1).unwrap(), Event::JobStarted { billed_as, .. } if billed_as == "svc-m"));
}

#[test]
fn an_id_that_is_a_jobs_bill_id_is_refused_for_good_r5() {
    let mut w = World::new(dec!(10000));
    let at = t("2023-04-01T10:00:00+08:00");
    // Given training job t1, billed as training_t1 (R5), and a service billed as svc-b9c9.
    w.ok(at, training("t1", None));
    let mut service = training("svc", None);
    if let Command::StartJob { kind, model, .. } = &mut service {
        *kind = JobKind::Service;
        *model = Some("b9c9".into());
    }
    w.ok(at, service);
    assert_eq!(w.state.bill_ids.get("training_t1").map(String::as_str), Some("t1"));
    assert_eq!(w.state.bill_ids.get("svc-b9c9").map(String::as_str), Some("svc"));
    // When a pool or a job takes one of those ids, then it is refused, naming the job.
    let refused = w.refused(at, on_demand("training_t1", 1, true), Rule::R5);
    assert_eq!(refused.reason, "\"training_t1\" is the bill id of job \"t1\"");
    w.refused(at, training("svc-b9c9", None), Rule::R5);
    // A training job whose own bill id is taken is refused too: t0's would be training_t0.
    w.ok(at, on_demand("training_t0", 1, true));
    w.refused(at, training("t0", None), Rule::R17);
    // Deleted, the job keeps its bill id (R17: ids are unique for good).
    w.ok(t("2023-04-01T12:00:00+08:00"), Command::DeleteJob { job: "t1".into() });
    w.refused(t("2023-04-01T12:00:00+08:00"), on_demand("training_t1", 1, true), Rule::R5);
    // An id that is no job's bill id is free.
    w.ok(t("2023-04-01T12:00:00+08:00"), on_demand("training_t2", 1, true));
}

#[test]
fn a_state_leaves_absent_fields_out_of_its_json_and_reads_them_back_written_either_way() {
    let mut w = World::new(dec!(10000));
    let at = t("2023-04-01T10:00:00+08:00");
    w.ok(at, on_demand("pool-1", 1, true));
    w.ok(at, training("t1", None));
    let json = serde_json::to_value(&w.state).unwrap();
    assert_eq!(json["jobs"]["t1"].get("pool"), None, "an absent field is left out");
    assert_eq!(json["pools"]["pool-1"].get("period"), None);
    // As snapshots written before it hold them: every absent field as null.
    let mut with_nulls = json.clone();
    for field in ["pool", "model", "disk_gb", "disk_hourly", "region", "hold"] {
        with_nulls["jobs"]["t1"][field] = serde_json::Value::Null;
    }
    for field in ["region", "hold", "period", "subscribed_at", "warned_for", "auto_renew"] {
        with_nulls["pools"]["pool-1"][field] = serde_json::Value::Null;
    }
    assert_eq!(serde_json::from_value::<State>(json).unwrap(), w.state);
    assert_eq!(serde_json::from_value::<State>(with_nulls).unwrap(), w.state);
}

#[test]
fn gone_resources_are_forgotten_once_settled_and_recalled_as_they_were_r16_r17() {
    let mut w = World::new(dec!(10000));
    let at = t("2023-04-01T10:00:00+08:00");
    // Given an on-demand pool, a training job (billed as training_t1, R5) and a notebook whose
    // disk is billed until it is deleted (R14), all running; and a monthly subscription.
    w.ok(at, on_demand("p", 1, true));
    w.ok(at, training("t1", None));
    let mut notebook = training("nb", None);
    if let Command::StartJob { kind, disk_hourly, .. } = &mut notebook {
        *kind = JobKind::Notebook;
        *disk_hourly = Some(dec!(0.0014));
    }
    w.ok(at, notebook);
    w.ok(at, monthly("sub", 1));
    assert_eq!(w.state.forget_gone(), 0, "nothing is gone");
    // When they are deleted (R16) and the subscription unsubscribed (R15) at 10:30,
    let gone_at = t("2023-04-01T10:30:00+08:00");
    for command in [
        Command::Delete { pool: "p".into() },
        Command::DeleteJob { job: "t1".into() },
        Command::DeleteJob { job: "nb".into() },
        Command::Unsubscribe { pool: "sub".into() },
    ] {
        w.ok(gone_at, command);
    }
    // then until their last cycle is settled at 11:00 only the subscription, which has no
    // usage left to bill, is forgotten;
    assert_eq!(w.state.forget_gone(), 1);
    assert!(!w.state.pools.contains_key("sub"));
    assert!(w.state.pools.contains_key("p") && w.state.jobs.contains_key("t1") && w.state.jobs.contains_key("nb"));
    let before_settlement = w.state.clone();
    w.advance(t("2023-04-01T11:00:00+08:00"));
    let mut whole = w.state.clone();
    whole.recall(before_settlement.clone());
    // after it, the rest, and the job's bill id with it.
    assert_eq!(w.state.forget_gone(), 3);
    assert!(w.state.pools.is_empty() && w.state.jobs.is_empty() && w.state.bill_ids.is_empty());
    assert_eq!(w.state.forget_gone(), 0, "forgetting twice forgets nothing more");
    // Recalled from a state that has them, they come back as they were, and live records are
    // never replaced.
    let mut live = w.state.clone();
    w.state.recall(whole.clone());
    assert_eq!(w.state.pools, whole.pools.iter().filter(|(id, _)| *id != "sub").map(|(k, v)| (k.clone(), v.clone())).collect());
    assert_eq!((&w.state.jobs, &w.state.bill_ids), (&whole.jobs, &whole.bill_ids));
    // Refusals read them as before: R17 for the ids, R5 for the bill id.
    let refused = w.refused(gone_at + chrono::Duration::hours(1), Command::Delete { pool: "p".into() }, Rule::R17);
    assert_eq!(refused.reason, "pool \"p\" is already deleted");
    w.refused(gone_at + chrono::Duration::hours(1), on_demand("training_t1", 1, true), Rule::R5);
    // A live record of the same id stays as it is.
    w.ok(gone_at + chrono::Duration::hours(1), on_demand("q", 1, true));
    live.pools.insert("p".into(), w.state.pools["q"].clone());
    let kept = live.pools["p"].clone();
    live.recall(whole);
    assert_eq!(live.pools["p"], kept);
}

#[test]
fn released_by_arrears_resources_are_gone_too_r12() {
    let mut w = World::new(dec!(10));
    w.ok(t("2023-04-01T10:00:00+08:00"), on_demand("p", 1, true));
    w.ok(t("2023-04-01T10:00:00+08:00"), training("t1", None));
    w.advance(t("2023-04-01T14:00:00+08:00"));
    let since = w.state.accounts["acct-1"].arrears.expect("in arrears").since;
    w.advance(since + chrono::Duration::days(30));
    assert_eq!((w.pool("p").shown_state(), w.state.jobs["t1"].shown_state()), ("released", "released"));
    assert_eq!(w.state.forget_gone(), 2, "released (R12), with nothing left to settle");
}

#[test]
fn a_command_names_the_ids_its_decision_looks_up() {
    let service = Command::StartJob {
        account: "a".into(),
        job: "svc".into(),
        kind: JobKind::Service,
        spec: SPEC.into(),
        nodes: 1,
        pool: Some("p".into()),
        model: Some("m".into()),
        disk_gb: None,
        disk_hourly: None,
        region: None,
    };
    let table: [(Command, &[&str]); 6] = [
        (service, &["svc", "p", "svc-m"]),
        (training("t1", None), &["t1", "training_t1"]),
        (Command::DeleteJob { job: "t1".into() }, &["t1"]),
        (on_demand("p", 1, true), &["p"]),
        (Command::Unsubscribe { pool: "p".into() }, &["p"]),
        (Command::TopUp { account: "a".into(), amount: dec!(1) }, &[]),
    ];
    for (command, ids) in table {
        assert_eq!(command.resource_ids(), ids, "{command:?}");
    }
}

#[test]
fn the_next_settlement_is_the_earliest_of_every_meters_next_hour_r4() {
    // (when each job starts, as written; the settlement due, in Beijing time)
    let table: [(&[&str], &str); 3] = [
        (&["2023-04-01T10:20:00+08:00", "2023-04-01T10:59:59+08:00"], "2023-04-01T11:00:00+08:00"),
        // Given in UTC and in India's half-hour offset: Beijing's hours all the same (R4).
        (&["2023-04-01T02:10:00+00:00", "2023-04-01T10:45:00+08:00"], "2023-04-01T11:00:00+08:00"),
        (&["2023-04-01T11:00:00+08:00", "2023-04-01T08:59:00+05:30"], "2023-04-01T12:00:00+08:00"),
    ];
    for (starts, due) in table {
        let mut w = World::new(dec!(10000));
        for (k, start) in starts.iter().enumerate() {
            w.ok(t(start), training(&format!("j{k}"), None));
        }
        let each: Vec<Instant> = w.state.meters.values().filter_map(|m| m.unsettled_since()).map(time::next_hour).collect();
        let expected = t(due);
        assert_eq!(each.iter().min(), Some(&expected), "{starts:?}");
        let next = next_due(&w.state).expect("a settlement is due");
        assert_eq!((next, next.offset().local_minus_utc()), (expected, 8 * 3600), "{starts:?}");
    }
}
