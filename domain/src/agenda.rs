//! Time-driven events: what falls due as the clock passes an instant — hourly settlement (R4,
//! R12), the expiry warning (R7), expiry, freezing and release (R6).
//!
//! `next_due` and `due_events` agree by construction: whenever `next_due(s) <= now`,
//! `due_events(s, now)` returns at least one event, and applying them moves `next_due` on.

use crate::event::Event;
use crate::model::{Basis, BillLine, BillingMode};
use crate::money::{usage_list_price, Amounts};
use crate::state::{Meter, Pool, PoolStatus, State};
use crate::time::{after, days, next_hour, Instant};
use chrono::Duration;
use std::collections::BTreeMap;

/// The earliest instant at which something falls due, if anything does.
pub fn next_due(state: &State) -> Option<Instant> {
    let settlement = state.meters.values().filter_map(settlement_due).min();
    let lifecycle = state.pools.values().filter_map(|p| lifecycle_due(state, p)).map(|(at, _)| at).min();
    settlement.into_iter().chain(lifecycle).min()
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

/// Every event due at or before `now`, stamped `now`: settlements first (by account), then one
/// lifecycle step per pool (by pool id). Call again while `next_due` is still due.
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
    for pool in state.pools.values() {
        if let Some((at, step)) = lifecycle_due(state, pool) {
            if at <= now {
                events.push(step.event(pool));
            }
        }
    }
    events
}

/// R4: a cycle is settled at the hour boundary that ends it.
fn settlement_due(meter: &Meter) -> Option<Instant> {
    meter.unsettled_since().map(next_hour)
}

/// R4/R12: bill every stretch of the account's cycle ending at `cycle_end`, one line per
/// stretch, and deduct each payable (the balance may go negative).
fn settle_account(state: &State, account: &str, meters: &[&Meter], cycle_end: Instant, events: &mut Vec<Event>) {
    let Some(acct) = state.accounts.get(account) else { return };
    let mut balance = acct.balance;
    for meter in meters {
        let closed = meter.closed.iter().filter(|s| s.end <= cycle_end).map(|s| (s.start, s.end, &s.spec, s.nodes, s.hourly));
        let open = meter
            .open
            .iter()
            .filter(|o| o.since < cycle_end)
            .map(|o| (o.since, cycle_end, &o.spec, o.nodes, o.hourly));
        for (start, end, spec, nodes, hourly) in closed.chain(open) {
            let seconds = (end - start).num_seconds();
            let amounts = Amounts::of(usage_list_price(hourly, nodes, seconds), acct.discount);
            balance -= amounts.payable;
            events.push(Event::Charged {
                line: BillLine {
                    resource: meter.resource.clone(),
                    account: account.to_string(),
                    mode: BillingMode::OnDemand,
                    item: meter.item,
                    start,
                    end,
                    amounts,
                    basis: Basis::Usage { spec: spec.clone(), nodes, seconds, hourly },
                    balance,
                },
            });
        }
    }
    events.push(Event::CycleSettled { account: account.to_string(), start: cycle_end - Duration::hours(1), end: cycle_end });
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Warn,
    Expire,
    Freeze,
    Release,
}

impl Step {
    fn event(self, pool: &Pool) -> Event {
        let (account, id) = (pool.account.clone(), pool.id.clone());
        match self {
            Step::Warn => Event::ExpiryWarned {
                account,
                pool: id,
                expires_at: pool.period.map(|p| p.end).expect("only subscriptions are warned"),
            },
            Step::Expire => Event::PoolExpired { account, pool: id },
            Step::Freeze => Event::PoolFrozen { account, pool: id },
            Step::Release => Event::PoolReleased { account, pool: id },
        }
    }
}

/// The next lifecycle step of a subscription and when it falls due. The period's last second is
/// E, so it expires at E + 1 s; grace lasts G days, retention R more (R6); the warning is at
/// E − 7 days, once per period (R7).
fn lifecycle_due(state: &State, pool: &Pool) -> Option<(Instant, Step)> {
    if !pool.mode.is_subscription() {
        return None;
    }
    let end = pool.period?.end;
    let expiry = after(end);
    let level = state.policy.level(state.accounts.get(&pool.account).map_or("", |a| a.level.as_str()));
    match pool.status {
        PoolStatus::Running => {
            let warn_at = end - days(7);
            let clock = state.clock.unwrap_or(warn_at);
            // A period renewed so late that it has already ended needs no warning.
            if pool.warned_for != Some(end) && clock.max(warn_at) < expiry {
                Some((warn_at, Step::Warn))
            } else {
                Some((expiry, Step::Expire))
            }
        }
        PoolStatus::Expired => Some((expiry + days(level.grace_days), Step::Freeze)),
        PoolStatus::Frozen => Some((expiry + days(level.grace_days + level.retention_days), Step::Release)),
        _ => None,
    }
}
