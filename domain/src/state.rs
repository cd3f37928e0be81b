//! State: what decisions need to know, built by `evolve` from events alone.

use crate::event::Event;
use crate::model::{BillingMode, Item, Period, Policy, PoolType, Price};
use crate::time::Instant;
use rust_decimal::Decimal;
use std::collections::BTreeMap;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct State {
    /// The instant of the last event applied.
    pub clock: Option<Instant>,
    pub catalog: BTreeMap<String, Price>,
    pub policy: Policy,
    pub accounts: BTreeMap<String, Account>,
    pub pools: BTreeMap<String, Pool>,
    /// Pay-per-use usage not yet settled, by (resource, item) (R4).
    pub meters: BTreeMap<(String, Item), Meter>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Account {
    pub id: String,
    pub balance: Decimal,
    pub level: String,
    pub discount: Decimal,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolStatus {
    Creating,
    Running,
    Expired,
    Frozen,
    Released,
    Deleted,
}

impl PoolStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PoolStatus::Creating => "creating",
            PoolStatus::Running => "running",
            PoolStatus::Expired => "expired",
            PoolStatus::Frozen => "frozen",
            PoolStatus::Released => "released",
            PoolStatus::Deleted => "deleted",
        }
    }
    /// Released and deleted pools are gone: nothing more happens to them.
    pub fn is_gone(self) -> bool {
        matches!(self, PoolStatus::Released | PoolStatus::Deleted)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Pool {
    pub id: String,
    pub account: String,
    pub spec: String,
    pub nodes: u32,
    pub mode: BillingMode,
    pub pool_type: PoolType,
    pub region: Option<String>,
    pub status: PoolStatus,
    /// The current subscription period (subscriptions only).
    pub period: Option<Period>,
    /// The period end for which the R7 warning was given.
    pub warned_for: Option<Instant>,
}

/// One configuration's usage within a settlement cycle.
#[derive(Clone, Debug, PartialEq)]
pub struct Stretch {
    pub start: Instant,
    pub end: Instant,
    pub spec: String,
    pub nodes: u32,
    pub hourly: Decimal,
}

/// A metered resource's unsettled usage: closed stretches, and the open one if it is running.
#[derive(Clone, Debug, PartialEq)]
pub struct Meter {
    pub account: String,
    pub resource: String,
    pub item: Item,
    pub closed: Vec<Stretch>,
    pub open: Option<OpenStretch>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct OpenStretch {
    pub since: Instant,
    pub spec: String,
    pub nodes: u32,
    pub hourly: Decimal,
}

impl Meter {
    /// The earliest instant not yet settled, if any usage is pending.
    pub fn unsettled_since(&self) -> Option<Instant> {
        self.closed.first().map(|s| s.start).or_else(|| self.open.as_ref().map(|o| o.since))
    }

    /// End the open stretch at `at`; an empty stretch leaves no line.
    fn close(&mut self, at: Instant) {
        if let Some(open) = self.open.take() {
            if at > open.since {
                self.closed.push(Stretch { start: open.since, end: at, spec: open.spec, nodes: open.nodes, hourly: open.hourly });
            }
        }
    }

    /// Usage in `[.., cycle_end)` is billed: forget it, and carry the open stretch over.
    fn settle(&mut self, cycle_end: Instant) {
        self.closed.retain(|s| s.end > cycle_end);
        if let Some(open) = &mut self.open {
            if open.since < cycle_end {
                open.since = cycle_end;
            }
        }
    }

    fn is_idle(&self) -> bool {
        self.closed.is_empty() && self.open.is_none()
    }
}

/// `evolve(State, &Event) -> State`, with the instant the event happened at.
pub fn evolve(mut state: State, event: &Event, at: Instant) -> State {
    state.apply(event, at);
    state
}

impl State {
    pub fn apply(&mut self, event: &Event, at: Instant) {
        self.clock = Some(self.clock.map_or(at, |c| c.max(at)));
        match event {
            Event::PriceSet { spec, price } => {
                self.catalog.insert(spec.clone(), price.clone());
            }
            Event::PolicySet { policy } => self.policy = policy.clone(),
            Event::AccountOpened { account, balance, level, discount } => {
                self.accounts.insert(
                    account.clone(),
                    Account { id: account.clone(), balance: *balance, level: level.clone(), discount: *discount },
                );
            }
            Event::ToppedUp { account, amount, .. } => {
                if let Some(a) = self.accounts.get_mut(account) {
                    a.balance += *amount;
                }
            }
            Event::PoolPurchased { account, pool, spec, nodes, mode, pool_type, region, period } => {
                let status = if mode.is_subscription() { PoolStatus::Running } else { PoolStatus::Creating };
                self.pools.insert(
                    pool.clone(),
                    Pool {
                        id: pool.clone(),
                        account: account.clone(),
                        spec: spec.clone(),
                        nodes: *nodes,
                        mode: *mode,
                        pool_type: *pool_type,
                        region: region.clone(),
                        status,
                        period: *period,
                        warned_for: None,
                    },
                );
            }
            Event::PoolReady { account, pool, hourly } => {
                if let Some(p) = self.pools.get_mut(pool) {
                    p.status = PoolStatus::Running;
                    let open = OpenStretch { since: at, spec: p.spec.clone(), nodes: p.nodes, hourly: *hourly };
                    let meter = self.meters.entry((pool.clone(), Item::Compute)).or_insert_with(|| Meter {
                        account: account.clone(),
                        resource: pool.clone(),
                        item: Item::Compute,
                        closed: Vec::new(),
                        open: None,
                    });
                    meter.open = Some(open);
                }
            }
            Event::PoolScaled { pool, spec, nodes, hourly, .. } => {
                if let Some(p) = self.pools.get_mut(pool) {
                    p.spec = spec.clone();
                    p.nodes = *nodes;
                }
                // R10: the current line ends here and a new one starts.
                if let (Some(hourly), Some(meter)) = (hourly, self.meters.get_mut(&(pool.clone(), Item::Compute))) {
                    if meter.open.is_some() {
                        meter.close(at);
                        meter.open = Some(OpenStretch { since: at, spec: spec.clone(), nodes: *nodes, hourly: *hourly });
                    }
                }
            }
            Event::PoolRenewed { pool, end, .. } => {
                if let Some(p) = self.pools.get_mut(pool) {
                    if let Some(period) = &mut p.period {
                        period.end = *end;
                    }
                    // R6: renewal brings an expired or frozen pool back to running.
                    p.status = PoolStatus::Running;
                }
            }
            Event::PoolConverted { pool, mode, period, .. } => {
                // R11: pay-per-use usage ends here; the partial cycle is still settled at its end.
                self.close_meter(pool, Item::Compute, at);
                if let Some(p) = self.pools.get_mut(pool) {
                    p.mode = *mode;
                    p.period = Some(*period);
                    p.status = PoolStatus::Running;
                    p.warned_for = None;
                }
            }
            Event::PoolDeleted { pool, .. } => {
                // R16: billing ends at deletion; the last partial cycle is settled at its end.
                self.close_meter(pool, Item::Compute, at);
                if let Some(p) = self.pools.get_mut(pool) {
                    p.status = PoolStatus::Deleted;
                }
            }
            Event::ExpiryWarned { pool, expires_at, .. } => {
                if let Some(p) = self.pools.get_mut(pool) {
                    p.warned_for = Some(*expires_at);
                }
            }
            Event::PoolExpired { pool, .. } => self.set_status(pool, PoolStatus::Expired),
            Event::PoolFrozen { pool, .. } => self.set_status(pool, PoolStatus::Frozen),
            Event::PoolReleased { pool, .. } => self.set_status(pool, PoolStatus::Released),
            Event::Charged { line } => {
                if let Some(a) = self.accounts.get_mut(&line.account) {
                    a.balance -= line.amounts.payable;
                }
            }
            Event::CycleSettled { account, end, .. } => {
                for meter in self.meters.values_mut().filter(|m| &m.account == account) {
                    meter.settle(*end);
                }
                // A meter with nothing left to bill is forgotten, so state stays small.
                self.meters.retain(|_, m| !m.is_idle());
            }
            Event::CommandRejected { .. } => {}
        }
    }

    fn set_status(&mut self, pool: &str, status: PoolStatus) {
        if let Some(p) = self.pools.get_mut(pool) {
            p.status = status;
        }
    }

    fn close_meter(&mut self, resource: &str, item: Item, at: Instant) {
        if let Some(meter) = self.meters.get_mut(&(resource.to_string(), item)) {
            meter.close(at);
            if meter.is_idle() {
                self.meters.remove(&(resource.to_string(), item));
            }
        }
    }
}
