//! Time-driven events: what falls due as the clock passes an instant — hourly settlement with
//! package use and arrears (R4, R12, R13), the expiry warning (R7), auto-renewal attempts (R8),
//! expiry, freezing and release (R6, R12), package expiry (R13).
//!
//! `next_due` and `due_events` agree by construction: whenever `next_due(s) <= now`,
//! `due_events(s, now)` returns at least one event, and applying them moves `next_due` on.
//! Settlements of all accounts due at an instant come in one batch (they are independent);
//! every other step comes alone, so that each is decided on the state the previous one left.

use crate::decide::renewal;
use crate::event::Event;
use crate::model::{Basis, BillLine, BillingMode, Item, Rejection, Rule};
use crate::money::Amounts;
use crate::state::{same_region, Account, Hold, Meter, Package, Pool, PoolStatus, State};
use crate::time::{after, at_three_am, beijing_date, days, next_hour, Instant};
use chrono::Duration;
use rust_decimal::Decimal;
use std::collections::BTreeMap;

/// The earliest instant at which something falls due, if anything does.
pub fn next_due(state: &State) -> Option<Instant> {
    // The next hour after the earliest unsettled instant: the earliest of the meters' next
    // hours (`next_hour` never goes back, and gives Beijing's offset whatever it is given), at
    // one calendar computation rather than one a meter — this runs before every command.
    let settlement = state.meters.values().filter_map(Meter::unsettled_since).min().map(next_hour);
    let step = next_step(state).map(|(at, _)| at);
    settlement.into_iter().chain(step).min()
}

/// The next batch of time-driven events due at or before `to`, and the instant it happens at
/// (never before the state's clock: a step made due in the past by a late command happens now).
pub fn tick(state: &State, to: Instant) -> Option<(Instant, Vec<Event>)> {
    let due = next_due(state)?;
    if due > to {
        return None;
    }
    let at = state.clock.map_or(due, |clock| clock.max(due));
    Some((at, due_events(state, at)))
}

/// What is due at or before `now`: every settlement due, or else the one earliest other step.
pub fn due_events(state: &State, now: Instant) -> Vec<Event> {
    let mut events = Vec::new();
    let mut by_account: BTreeMap<&str, Vec<&Meter>> = BTreeMap::new();
    for meter in state.meters.values() {
        by_account.entry(meter.account.as_str()).or_default().push(meter);
    }
    for (account, meters) in by_account {
        let Some(cycle_end) = meters.iter().filter_map(|m| settlement_due(m)).min() else { continue };
        if cycle_end <= now {
            settle_account(state, account, &meters, cycle_end, &mut events);
        }
    }
    if events.is_empty() {
        if let Some((at, step)) = next_step(state) {
            if at <= now {
                events = step.events(state);
            }
        }
    }
    events
}

/// R4: a cycle is settled at the hour boundary that ends it.
fn settlement_due(meter: &Meter) -> Option<Instant> {
    meter.unsettled_since().map(next_hour)
}

/// R4/R12/R13: bill every stretch of the account's cycle ending at `cycle_end`, one line per
/// stretch, taking node-seconds from packages first; deduct each payable (the balance may go
/// negative, which starts the arrears).
fn settle_account(state: &State, account: &str, meters: &[&Meter], cycle_end: Instant, events: &mut Vec<Event>) {
    let Some(acct) = state.accounts.get(account) else { return };
    let mut balance = acct.balance;
    // Package remainders as this settlement uses them, expiring first first (R13). A package
    // valid at a line's start covers it even if it expired since (before this settlement), so
    // every package not expired by the cycle's start is a candidate; `valid_at` decides per line.
    let cycle_start = cycle_end - Duration::hours(1);
    let mut packages: Vec<(&Package, i64)> =
        state.packages.values().filter(|p| p.account == account && p.expires_at > cycle_start).map(|p| (p, p.remaining_node_seconds())).collect();
    packages.sort_by(|a, b| (a.0.expires_at, &a.0.id).cmp(&(b.0.expires_at, &b.0.id)));

    // Lines take from packages in the order of resource id (byte order), then start (R13):
    // `meters` come in the key order of `State::meters`, and each meter's stretches by start.
    for meter in meters {
        let closed = meter.closed.iter().filter(|s| s.end <= cycle_end).map(|s| (s.start, s.end, &s.spec, s.nodes, s.hourly));
        let open = meter.open.iter().filter(|o| o.since < cycle_end).map(|o| (o.since, cycle_end, &o.spec, o.nodes, o.hourly));
        for (start, end, spec, nodes, hourly) in closed.chain(open) {
            let seconds = (end - start).num_seconds();
            let mut uncovered = i64::from(nodes) * seconds;
            let line = |mode, basis, amounts: Amounts, balance| BillLine {
                resource: meter.resource.clone(),
                account: account.to_string(),
                mode,
                item: meter.item,
                start,
                end,
                amounts,
                basis,
                balance,
            };
            if meter.public && meter.item == Item::Compute {
                for (package, remaining) in packages.iter_mut() {
                    let fits = &package.spec == spec && same_region(&package.region, &meter.region) && package.valid_at(start);
                    if uncovered == 0 || !fits || *remaining == 0 {
                        continue;
                    }
                    let taken = uncovered.min(*remaining);
                    *remaining -= taken;
                    uncovered -= taken;
                    let basis = Basis::Package { package: package.id.clone(), spec: spec.clone(), nodes, seconds, node_seconds: taken };
                    events.push(Event::Charged { line: line(BillingMode::Package, basis, Amounts::zero(), balance) });
                }
            }
            let covered = i64::from(nodes) * seconds - uncovered;
            if uncovered > 0 {
                let list = hourly * Decimal::from(uncovered) / Decimal::from(3600);
                let amounts = Amounts::of(list, acct.discount);
                balance -= amounts.payable;
                let basis = Basis::Usage { spec: spec.clone(), nodes, seconds, hourly, covered_node_seconds: covered };
                events.push(Event::Charged { line: line(BillingMode::OnDemand, basis, amounts, balance) });
            }
        }
    }
    events.push(Event::CycleSettled { account: account.to_string(), start: cycle_start, end: cycle_end });
    // R13: a remainder that this settlement took below its threshold is told, once.
    for (package, remaining) in &packages {
        let used_now = *remaining < package.remaining_node_seconds();
        let below = package.alert_below_node_seconds.is_some_and(|threshold| Decimal::from(*remaining) < threshold);
        if used_now && below && !package.alerted {
            events.push(Event::PackageAlerted {
                account: account.to_string(),
                package: package.id.clone(),
                remaining_node_hours: Decimal::from(*remaining) / Decimal::from(3600),
            });
        }
    }
    // R12: a negative balance after a settlement puts the account in arrears.
    if balance < Decimal::ZERO && acct.arrears.is_none() {
        events.push(Event::ArrearsStarted { account: account.to_string(), balance });
    }
}

/// One step that falls due at an instant of its own.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Step {
    ArrearsFreeze(String),
    ArrearsRelease(String),
    PackageExpire(String),
    Pool(String, PoolStep),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PoolStep {
    AutoRenew,
    Warn,
    Expire,
    Freeze,
    Release,
}

/// The earliest step due (ties: accounts, then packages, then pools, each by id). It runs
/// before every command: candidates are compared by reference, and only the step taken is made.
fn next_step(state: &State) -> Option<(Instant, Step)> {
    enum Due<'s> {
        Arrears(Step),
        Package(&'s str),
        Pool(&'s str, PoolStep),
    }
    let arrears = state.accounts.values().filter_map(|a| arrears_due(state, a)).map(|(at, step)| (at, Due::Arrears(step)));
    let packages = state.packages.values().filter(|p| !p.expired).map(|p| (p.expires_at, Due::Package(&p.id)));
    let pools = state.pools.values().filter_map(|p| pool_due(state, p).map(|(at, step)| (at, Due::Pool(&p.id, step))));
    let (at, due) = arrears.chain(packages).chain(pools).min_by_key(|(at, _)| *at)?;
    let step = match due {
        Due::Arrears(step) => step,
        Due::Package(id) => Step::PackageExpire(id.to_string()),
        Due::Pool(id, step) => Step::Pool(id.to_string(), step),
    };
    Some((at, step))
}

/// R12: grace lasts G days from the start of the arrears, retention R more.
fn arrears_due(state: &State, acct: &Account) -> Option<(Instant, Step)> {
    let arrears = acct.arrears?;
    let level = state.policy.level(&acct.level);
    match arrears.phase {
        Hold::Grace => Some((arrears.since + days(level.grace_days), Step::ArrearsFreeze(acct.id.clone()))),
        Hold::Frozen => Some((arrears.since + days(level.grace_days + level.retention_days), Step::ArrearsRelease(acct.id.clone()))),
        Hold::Released => None,
    }
}

/// The next step of a subscription and when it falls due. The period's last second is E, so it
/// expires at E + 1 s; grace lasts G days, retention R more (R6); the warning is at E − 7 days,
/// once per period (R7); auto-renewal attempts run at 03:00 up to E (R8).
fn pool_due(state: &State, pool: &Pool) -> Option<(Instant, PoolStep)> {
    if !pool.mode.is_subscription() {
        return None;
    }
    let end = pool.period?.end;
    let expiry = after(end);
    let level = state.policy.level(state.accounts.get(&pool.account).map_or("", |a| a.level.as_str()));
    match pool.status {
        PoolStatus::Running => {
            let clock = state.clock.unwrap_or(end);
            let warn_at = end - days(7);
            // A period renewed so late that it has already ended needs no warning.
            let warn = (pool.warned_for != Some(end) && clock.max(warn_at) < expiry).then_some((warn_at, PoolStep::Warn));
            let attempt = auto_renew_due(pool, end).filter(|at| *at < expiry).map(|at| (at, PoolStep::AutoRenew));
            let expire = Some((expiry, PoolStep::Expire));
            [attempt, warn, expire].into_iter().flatten().min_by_key(|(at, _)| *at)
        }
        PoolStatus::Expired => Some((expiry + days(level.grace_days), PoolStep::Freeze)),
        PoolStatus::Frozen => Some((expiry + days(level.grace_days + level.retention_days), PoolStep::Release)),
        _ => None,
    }
}

/// R8: the first attempt is at 03:00 on the date `days_before` days before E's date; set (or
/// renewed, or last tried) after that, the next 03:00 after that instant; never after E.
fn auto_renew_due(pool: &Pool, end: Instant) -> Option<Instant> {
    let auto = pool.auto_renew.as_ref()?;
    let first = at_three_am(beijing_date(end) - days(auto.days_before));
    let from = first.max(auto.not_before);
    let same_day = at_three_am(beijing_date(from));
    let next = if same_day >= from { same_day } else { at_three_am(beijing_date(from) + days(1)) };
    (next <= end).then_some(next)
}

impl Step {
    fn events(&self, state: &State) -> Vec<Event> {
        match self {
            Step::ArrearsFreeze(account) => vec![Event::ArrearsFrozen { account: account.clone() }],
            Step::ArrearsRelease(account) => vec![Event::ArrearsReleased { account: account.clone() }],
            Step::PackageExpire(package) => {
                let account = state.packages.get(package).map(|p| p.account.clone()).unwrap_or_default();
                vec![Event::PackageExpired { account, package: package.clone() }]
            }
            Step::Pool(id, step) => {
                let Some(pool) = state.pools.get(id) else { return Vec::new() };
                let (account, pool_id) = (pool.account.clone(), pool.id.clone());
                match step {
                    PoolStep::AutoRenew => auto_renew_attempt(state, pool),
                    PoolStep::Warn => vec![Event::ExpiryWarned {
                        account,
                        pool: pool_id,
                        expires_at: pool.period.map(|p| p.end).expect("only subscriptions are warned"),
                    }],
                    PoolStep::Expire => vec![Event::PoolExpired { account, pool: pool_id }],
                    PoolStep::Freeze => vec![Event::PoolFrozen { account, pool: pool_id }],
                    PoolStep::Release => vec![Event::PoolReleased { account, pool: pool_id }],
                }
            }
        }
    }
}

/// R8: one attempt: renew and charge if the balance covers the fee and the account is not in
/// arrears (R12); otherwise a failed attempt, with the reason.
fn auto_renew_attempt(state: &State, pool: &Pool) -> Vec<Event> {
    let attempted = |succeeded: bool, reason: Option<String>| Event::AutoRenewAttempted {
        account: pool.account.clone(),
        pool: pool.id.clone(),
        succeeded,
        reason,
    };
    let (Some(auto), Some(period), Some(acct)) = (&pool.auto_renew, pool.period, state.accounts.get(&pool.account)) else {
        return vec![attempted(false, Some("the pool has no auto-renewal or period".into()))];
    };
    let refused = |r: Rejection| vec![attempted(false, Some(format!("{}: {}", r.rule, r.reason)))];
    if let Some(arrears) = acct.arrears {
        return refused(Rejection::new(
            Rule::R12,
            format!("account {:?} is in arrears since {}: renewals cannot be paid", acct.id, arrears.since.to_rfc3339()),
        ));
    }
    // A balance that cannot cover the fee is refused by the charge, naming both amounts (R12).
    match renewal(state, acct, pool, period, auto.term, None, true) {
        Ok(events) => std::iter::once(attempted(true, None)).chain(events).collect(),
        Err(r) => refused(r),
    }
}
