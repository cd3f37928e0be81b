//! State: what decisions need to know, built by `State::apply` from events alone.

use crate::command::JobKind;
use crate::event::Event;
use crate::model::{Basis, BillingMode, Item, Period, Policy, PoolType, Price, Term};
use crate::time::{after, Instant};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// The instant of the last event applied.
    pub clock: Option<Instant>,
    pub catalog: BTreeMap<String, Price>,
    pub policy: Policy,
    pub accounts: BTreeMap<String, Account>,
    pub pools: BTreeMap<String, Pool>,
    pub jobs: BTreeMap<String, Job>,
    pub packages: BTreeMap<String, Package>,
    /// Pay-per-use usage not yet settled, by (billed resource id, item) (R4).
    #[serde(with = "meters_as_list")]
    pub meters: BTreeMap<(String, Item), Meter>,
    /// The jobs billed under another id than their own (R5: `training_<job>`,
    /// `<service>-<model>`), by that id: a new id is checked against them in one lookup, not a
    /// pass over every job ever started.
    pub bill_ids: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Account {
    pub id: String,
    pub balance: Decimal,
    pub level: String,
    pub discount: Decimal,
    /// R12: set from the settlement that left the balance negative until a top-up ends it.
    pub arrears: Option<Arrears>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Arrears {
    pub since: Instant,
    pub phase: Hold,
}

/// R12: where an account's pay-per-use resources are in arrears.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Hold {
    /// Still running and billed.
    Grace,
    /// Stopped, not billed.
    Frozen,
    /// Retention is over (resources are released).
    Released,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
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

/// Absent optional fields are left out of snapshots (a state of a year of deleted jobs is most of
/// a store's snapshots: 28% smaller), and read back as absent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pool {
    pub id: String,
    pub account: String,
    pub spec: String,
    pub nodes: u32,
    pub mode: BillingMode,
    pub pool_type: PoolType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    pub status: PoolStatus,
    /// R12: an on-demand pool of an account in arrears.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<Hold>,
    /// The current subscription period (subscriptions only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<Period>,
    /// When the subscription began (purchase or conversion), for R15's five days.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscribed_at: Option<Instant>,
    /// Every subscription period paid for, with its list price (R15 refunds unbegun ones).
    pub terms: Vec<PaidTerm>,
    /// All that was paid for the subscription (R15 full refund).
    pub paid: Decimal,
    /// The period end for which the R7 warning was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warned_for: Option<Instant>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_renew: Option<AutoRenew>,
}

impl Pool {
    /// The state a person sees: an arrears hold shows over the pool's own status.
    pub fn shown_state(&self) -> &'static str {
        match self.hold {
            Some(Hold::Grace) => "grace",
            Some(Hold::Frozen) => "frozen",
            _ => self.status.as_str(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PaidTerm {
    pub start: Instant,
    pub end: Instant,
    pub list: Decimal,
}

/// R8: auto-renewal settings, and the instant from which the next attempt may be made.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AutoRenew {
    pub term: Term,
    pub days_before: u32,
    /// Successes left; none = unlimited.
    pub remaining: Option<u32>,
    pub not_before: Instant,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobStatus {
    Running,
    Stopped,
    Deleted,
    Released,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Running => "running",
            JobStatus::Stopped => "stopped",
            JobStatus::Deleted => "deleted",
            JobStatus::Released => "released",
        }
    }
}

/// R14: a training job, notebook, service, workflow or auto-learning job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: String,
    pub account: String,
    pub kind: JobKind,
    pub spec: String,
    pub nodes: u32,
    /// The dedicated pool it runs on; none = the public pool (billed by R4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_gb: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_hourly: Option<Decimal>,
    /// R13: the region its public-pool usage is in; none is `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// R5: the resource id its compute bills carry, as recorded when it started.
    pub billed_as: String,
    pub status: JobStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<Hold>,
}

impl Job {
    /// R5: the resource id its compute bills carry.
    pub fn billing_id(&self) -> String {
        self.billed_as.clone()
    }

    /// Whether it costs anything by the hour: compute on the public pool while it runs, or a
    /// disk until it is gone (deleted or released).
    pub fn is_pay_per_use(&self) -> bool {
        match self.status {
            JobStatus::Running => self.pool.is_none() || self.disk_hourly.is_some(),
            JobStatus::Stopped => self.disk_hourly.is_some(),
            JobStatus::Deleted | JobStatus::Released => false,
        }
    }

    pub fn shown_state(&self) -> &'static str {
        match self.hold {
            Some(Hold::Grace) => "grace",
            Some(Hold::Frozen) => "frozen",
            _ => self.status.as_str(),
        }
    }

    /// Deleted (R16) or released (R12): nothing more happens to it.
    pub fn is_gone(&self) -> bool {
        matches!(self.status, JobStatus::Deleted | JobStatus::Released)
    }
}

/// R5 resource ids: `training_<job id>` for training jobs, and for workflows and auto-learning
/// jobs, which are billed through the training jobs they run (seed §6);
/// `<service name>-<model id>` for services; otherwise the id.
pub fn billing_id(kind: JobKind, job: &str, model: Option<&str>) -> String {
    match (kind, model) {
        (JobKind::Training | JobKind::Workflow | JobKind::AutoLearning, _) => format!("training_{job}"),
        (JobKind::Service, Some(model)) => format!("{job}-{model}"),
        _ => job.to_string(),
    }
}

/// R13: the region of a resource or package given none.
pub const DEFAULT_REGION: &str = "default";

/// R13: whether two regions are the same, none meaning `default`.
pub fn same_region(a: &Option<String>, b: &Option<String>) -> bool {
    a.as_deref().unwrap_or(DEFAULT_REGION) == b.as_deref().unwrap_or(DEFAULT_REGION)
}

/// R13: node-hours of one spec (and region), valid for a while, used before pay-per-use.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Package {
    pub id: String,
    pub account: String,
    pub spec: String,
    pub region: Option<String>,
    pub quantity: u32,
    pub bought_at: Instant,
    pub expires_at: Instant,
    pub quota_node_seconds: i64,
    pub used_node_seconds: i64,
    pub alert_below_node_seconds: Option<Decimal>,
    pub alerted: bool,
    pub expired: bool,
}

impl Package {
    pub fn remaining_node_seconds(&self) -> i64 {
        self.quota_node_seconds - self.used_node_seconds
    }
    /// Usable for a line that starts at `t`: bought by then and not yet expired.
    pub fn valid_at(&self, t: Instant) -> bool {
        self.bought_at <= t && t < self.expires_at
    }
}

/// One configuration's usage within a settlement cycle.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stretch {
    pub start: Instant,
    pub end: Instant,
    pub spec: String,
    pub nodes: u32,
    pub hourly: Decimal,
}

/// A metered resource's unsettled usage: closed stretches, and the open one if it is running.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Meter {
    pub account: String,
    /// The id its bills carry (R5).
    pub resource: String,
    pub item: Item,
    /// On the public pool, where packages apply (R13).
    pub public: bool,
    pub region: Option<String>,
    pub closed: Vec<Stretch>,
    pub open: Option<OpenStretch>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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

/// What a new meter is for.
struct MeterFor<'a> {
    account: &'a str,
    resource: String,
    item: Item,
    public: bool,
    region: Option<String>,
}

impl State {
    /// How many records the state holds (accounts, pools, jobs, packages, meters): what a copy
    /// or a snapshot of it costs in proportion to.
    pub fn records(&self) -> usize {
        self.accounts.len() + self.pools.len() + self.jobs.len() + self.packages.len() + self.meters.len()
    }

    /// Forget the pools and jobs that are gone — deleted (R16) or released (R6, R12, R15) —
    /// with nothing left to settle. No event changes them again: every command about them is
    /// refused and the clock has no step for them. A live engine keeps what is live only and
    /// recalls one of these from the log when a command names it again (R17's refusals word
    /// for word: see [`State::recall`]). Returns how many records were forgotten.
    pub fn forget_gone(&mut self) -> usize {
        let before = self.pools.len() + self.jobs.len();
        let metered: std::collections::BTreeSet<&str> = self.meters.keys().map(|(resource, _)| resource.as_str()).collect();
        self.pools.retain(|id, p| !p.status.is_gone() || metered.contains(id.as_str()));
        let mut forgotten_bill_ids = Vec::new();
        self.jobs.retain(|id, j| {
            let keep = !j.is_gone() || metered.contains(id.as_str()) || metered.contains(j.billed_as.as_str());
            if !keep && j.billed_as != *id {
                forgotten_bill_ids.push(j.billed_as.clone());
            }
            keep
        });
        for bill_id in forgotten_bill_ids {
            // Only the job it names goes with it (R5: one job per bill id).
            if self.bill_ids.get(&bill_id).is_some_and(|job| !self.jobs.contains_key(job)) {
                self.bill_ids.remove(&bill_id);
            }
        }
        before - self.pools.len() - self.jobs.len()
    }

    /// Take back from `recalled` — a fold of a forgotten resource's own history (its events
    /// and its account's) — the gone pools and jobs this state does not hold, with their bill
    /// ids: a fold of its own history gives a gone resource's record as the whole log's fold
    /// does. Live records are never taken: this state has them. Returns how many were taken.
    pub fn recall(&mut self, recalled: State) -> usize {
        let mut taken = 0;
        for (id, pool) in recalled.pools {
            if pool.status.is_gone() && !self.pools.contains_key(&id) {
                self.pools.insert(id, pool);
                taken += 1;
            }
        }
        for (id, job) in recalled.jobs {
            if job.is_gone() && !self.jobs.contains_key(&id) {
                if job.billed_as != id {
                    self.bill_ids.entry(job.billed_as.clone()).or_insert_with(|| id.clone());
                }
                self.jobs.insert(id, job);
                taken += 1;
            }
        }
        taken
    }

    /// Whether the state holds a pool, job or package of this id, or a job billed under it.
    pub fn knows(&self, id: &str) -> bool {
        self.pools.contains_key(id) || self.jobs.contains_key(id) || self.packages.contains_key(id) || self.bill_ids.contains_key(id)
    }

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
                    Account { id: account.clone(), balance: *balance, level: level.clone(), discount: *discount, arrears: None },
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
                        hold: None,
                        period: *period,
                        subscribed_at: None,
                        terms: Vec::new(),
                        paid: Decimal::ZERO,
                        warned_for: None,
                        auto_renew: None,
                    },
                );
            }
            Event::PoolReady { account, pool, hourly } => {
                let phase = self.accounts.get(account).and_then(|a| a.arrears).map(|a| a.phase);
                let Some(p) = self.pools.get_mut(pool) else { return };
                // Readied during arrears, it joins its account's phase (R12): billed in grace,
                // not billed once frozen, released at once after retention.
                p.status = if phase == Some(Hold::Released) { PoolStatus::Released } else { PoolStatus::Running };
                p.hold = phase.filter(|h| *h != Hold::Released);
                let (spec, nodes, public, region) = (p.spec.clone(), p.nodes, p.pool_type == PoolType::Public, p.region.clone());
                if phase.is_none() || phase == Some(Hold::Grace) {
                    let meter = MeterFor { account, resource: pool.clone(), item: Item::Compute, public, region };
                    self.open_meter(meter, at, spec, nodes, *hourly);
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
                    // R8: auto-renewal stays on, aimed at the new end.
                    if let Some(auto) = &mut p.auto_renew {
                        auto.not_before = auto.not_before.max(at);
                    }
                }
            }
            Event::PoolConverted { pool, mode, period, .. } => {
                // R11: pay-per-use usage ends here; the partial cycle is still settled at its end.
                self.close_meter(pool, Item::Compute, at);
                if let Some(p) = self.pools.get_mut(pool) {
                    p.mode = *mode;
                    p.period = Some(*period);
                    p.status = PoolStatus::Running;
                    p.hold = None;
                    p.warned_for = None;
                }
            }
            Event::PoolDeleted { pool, .. } => {
                // R16: billing ends at deletion; the last partial cycle is settled at its end.
                self.close_meter(pool, Item::Compute, at);
                if let Some(p) = self.pools.get_mut(pool) {
                    p.status = PoolStatus::Deleted;
                    p.hold = None;
                }
            }
            Event::PoolUnsubscribed { pool, .. } => {
                if let Some(p) = self.pools.get_mut(pool) {
                    p.status = PoolStatus::Released;
                    p.auto_renew = None;
                }
            }
            Event::ExpiryWarned { pool, expires_at, .. } => {
                if let Some(p) = self.pools.get_mut(pool) {
                    p.warned_for = Some(*expires_at);
                }
            }
            Event::PoolExpired { pool, .. } => self.set_pool_status(pool, PoolStatus::Expired),
            Event::PoolFrozen { pool, .. } => self.set_pool_status(pool, PoolStatus::Frozen),
            Event::PoolReleased { pool, .. } => {
                self.set_pool_status(pool, PoolStatus::Released);
                if let Some(p) = self.pools.get_mut(pool) {
                    p.auto_renew = None;
                }
            }
            Event::AutoRenewSet { pool, enabled, term, days_before, count, .. } => {
                if let Some(p) = self.pools.get_mut(pool) {
                    p.auto_renew = match (enabled, term) {
                        (true, Some(term)) => Some(AutoRenew { term: *term, days_before: *days_before, remaining: *count, not_before: at }),
                        _ => None,
                    };
                }
            }
            Event::AutoRenewAttempted { pool, succeeded, .. } => {
                if let Some(p) = self.pools.get_mut(pool) {
                    if let Some(auto) = &mut p.auto_renew {
                        auto.not_before = after(at);
                        if *succeeded {
                            auto.remaining = auto.remaining.map(|n| n.saturating_sub(1));
                        }
                    }
                    // R8: at zero, auto-renewal turns off.
                    if p.auto_renew.as_ref().is_some_and(|a| a.remaining == Some(0)) {
                        p.auto_renew = None;
                    }
                }
            }
            Event::JobStarted { account, job, kind, spec, nodes, pool, model, hourly, disk_gb, disk_hourly, region, billed_as } => {
                let first = !self.jobs.contains_key(job);
                let j = Job {
                    id: job.clone(),
                    account: account.clone(),
                    kind: *kind,
                    spec: spec.clone(),
                    nodes: *nodes,
                    pool: pool.clone(),
                    model: model.clone(),
                    disk_gb: *disk_gb,
                    disk_hourly: *disk_hourly,
                    region: region.clone(),
                    billed_as: billed_as.clone(),
                    status: JobStatus::Running,
                    hold: None,
                };
                self.jobs.insert(job.clone(), j);
                if billed_as != job {
                    // Of two jobs under one bill id (never decided so), the first by id answers.
                    let owner = self.bill_ids.entry(billed_as.clone()).or_insert_with(|| job.clone());
                    if *job < *owner {
                        owner.clone_from(job);
                    }
                }
                if let Some(hourly) = hourly {
                    let meter = MeterFor { account, resource: billed_as.clone(), item: Item::Compute, public: true, region: region.clone() };
                    self.open_meter(meter, at, spec.clone(), *nodes, *hourly);
                }
                // R14: the disk is billed from creation to deletion, also while stopped.
                if let (true, Some(price)) = (first, disk_hourly) {
                    let gb = disk_gb.unwrap_or(crate::command::DEFAULT_DISK_GB);
                    let meter = MeterFor { account, resource: job.clone(), item: Item::Storage, public: false, region: None };
                    self.open_meter(meter, at, EVS_SPEC.to_string(), gb, *price);
                }
            }
            Event::JobStopped { job, .. } => {
                if let Some(j) = self.jobs.get_mut(job) {
                    j.status = JobStatus::Stopped;
                    let resource = j.billing_id();
                    self.close_meter(&resource, Item::Compute, at);
                }
            }
            Event::JobDeleted { job, .. } => {
                if let Some(j) = self.jobs.get_mut(job) {
                    j.status = JobStatus::Deleted;
                    j.hold = None;
                    let resource = j.billing_id();
                    self.close_meter(&resource, Item::Compute, at);
                    self.close_meter(job, Item::Storage, at);
                }
            }
            Event::PackageBought { account, package, spec, region, quantity, hours, expires_at, alert_below, .. } => {
                self.packages.insert(
                    package.clone(),
                    Package {
                        id: package.clone(),
                        account: account.clone(),
                        spec: spec.clone(),
                        region: region.clone(),
                        quantity: *quantity,
                        bought_at: at,
                        expires_at: *expires_at,
                        quota_node_seconds: i64::from(*quantity) * i64::from(*hours) * 3600,
                        used_node_seconds: 0,
                        alert_below_node_seconds: alert_below.map(|h| h * Decimal::from(3600)),
                        alerted: false,
                        expired: false,
                    },
                );
            }
            Event::PackageAlerted { package, .. } => {
                if let Some(p) = self.packages.get_mut(package) {
                    p.alerted = true;
                }
            }
            Event::PackageExpired { package, .. } => {
                if let Some(p) = self.packages.get_mut(package) {
                    p.expired = true;
                }
            }
            Event::ArrearsStarted { account, .. } => self.arrears_started(account, at),
            Event::ArrearsFrozen { account } => self.arrears_frozen(account, at),
            Event::ArrearsReleased { account } => self.arrears_released(account),
            Event::ArrearsEnded { account } => self.arrears_ended(account, at),
            Event::Charged { line } => {
                if let Some(a) = self.accounts.get_mut(&line.account) {
                    a.balance -= line.amounts.payable;
                }
                if let Basis::Package { package, node_seconds, .. } = &line.basis {
                    if let Some(p) = self.packages.get_mut(package) {
                        p.used_node_seconds += node_seconds;
                    }
                }
                // What a subscription has been paid, for R15 refunds (the pool is looked up for
                // those lines only: nearly every line is metered usage).
                let paid = matches!(line.item, Item::Purchase | Item::Conversion | Item::Renewal | Item::Upgrade | Item::Downgrade);
                if let Some(p) = if paid { self.pools.get_mut(&line.resource) } else { None } {
                    match line.item {
                        Item::Purchase | Item::Conversion => {
                            p.subscribed_at = Some(line.start);
                            p.terms = vec![PaidTerm { start: line.start, end: line.end, list: line.amounts.list_price }];
                            p.paid = line.amounts.payable;
                        }
                        Item::Renewal => {
                            p.terms.push(PaidTerm { start: line.start, end: line.end, list: line.amounts.list_price });
                            p.paid += line.amounts.payable;
                        }
                        _ => p.paid += line.amounts.payable,
                    }
                }
            }
            Event::CycleSettled { account, end, .. } => {
                // The account's meters settle; a meter with nothing left to bill is forgotten,
                // so state stays small (one pass over the meters).
                self.meters.retain(|_, m| {
                    if m.account == *account {
                        m.settle(*end);
                    }
                    !m.is_idle()
                });
            }
            Event::CommandRejected { .. } | Event::CommandReceived { .. } => {}
        }
    }

    fn set_pool_status(&mut self, pool: &str, status: PoolStatus) {
        if let Some(p) = self.pools.get_mut(pool) {
            p.status = status;
        }
    }

    fn open_meter(&mut self, what: MeterFor, at: Instant, spec: String, nodes: u32, hourly: Decimal) {
        let meter = self.meters.entry((what.resource.clone(), what.item)).or_insert_with(|| Meter {
            account: what.account.to_string(),
            resource: what.resource,
            item: what.item,
            public: what.public,
            region: what.region,
            closed: Vec::new(),
            open: None,
        });
        meter.close(at);
        meter.open = Some(OpenStretch { since: at, spec, nodes, hourly });
    }

    fn close_meter(&mut self, resource: &str, item: Item, at: Instant) {
        let key = (resource.to_string(), item);
        if let Some(meter) = self.meters.get_mut(&key) {
            meter.close(at);
            if meter.is_idle() {
                self.meters.remove(&key);
            }
        }
    }

    /// R12: the account's pay-per-use resources enter grace: they run and are billed.
    fn arrears_started(&mut self, account: &str, at: Instant) {
        if let Some(a) = self.accounts.get_mut(account) {
            a.arrears = Some(Arrears { since: at, phase: Hold::Grace });
        }
        for p in self.pools.values_mut().filter(|p| p.account == account) {
            if p.mode == BillingMode::OnDemand && p.status == PoolStatus::Running {
                p.hold = Some(Hold::Grace);
            }
        }
        for j in self.jobs.values_mut().filter(|j| j.account == account) {
            if j.is_pay_per_use() {
                j.hold = Some(Hold::Grace);
            }
        }
    }

    /// R12: grace is over: held resources stop, and their billing with them.
    fn arrears_frozen(&mut self, account: &str, at: Instant) {
        if let Some(arrears) = self.accounts.get_mut(account).and_then(|a| a.arrears.as_mut()) {
            arrears.phase = Hold::Frozen;
        }
        let mut stop = Vec::new();
        for p in self.pools.values_mut().filter(|p| p.account == account && p.hold == Some(Hold::Grace)) {
            p.hold = Some(Hold::Frozen);
            stop.push((p.id.clone(), Item::Compute));
        }
        for j in self.jobs.values_mut().filter(|j| j.account == account && j.hold == Some(Hold::Grace)) {
            j.hold = Some(Hold::Frozen);
            stop.push((j.billing_id(), Item::Compute));
            stop.push((j.id.clone(), Item::Storage));
        }
        for (resource, item) in stop {
            self.close_meter(&resource, item, at);
        }
    }

    /// R12: retention is over: frozen resources are released.
    fn arrears_released(&mut self, account: &str) {
        if let Some(arrears) = self.accounts.get_mut(account).and_then(|a| a.arrears.as_mut()) {
            arrears.phase = Hold::Released;
        }
        for p in self.pools.values_mut().filter(|p| p.account == account && p.hold == Some(Hold::Frozen)) {
            p.hold = None;
            p.status = PoolStatus::Released;
        }
        for j in self.jobs.values_mut().filter(|j| j.account == account && j.hold == Some(Hold::Frozen)) {
            j.hold = None;
            j.status = JobStatus::Released;
        }
    }

    /// R12: the arrears end; frozen resources run again and are billed from this instant.
    fn arrears_ended(&mut self, account: &str, at: Instant) {
        if let Some(a) = self.accounts.get_mut(account) {
            a.arrears = None;
        }
        let mut reopen: Vec<(MeterFor, String, u32, Decimal)> = Vec::new();
        let hourly = |catalog: &BTreeMap<String, Price>, spec: &str| catalog.get(spec).and_then(|p| p.hourly);
        for p in self.pools.values_mut().filter(|p| p.account == account && p.hold.is_some()) {
            if p.hold == Some(Hold::Frozen) {
                if let Some(price) = hourly(&self.catalog, &p.spec) {
                    let meter = MeterFor {
                        account,
                        resource: p.id.clone(),
                        item: Item::Compute,
                        public: p.pool_type == PoolType::Public,
                        region: p.region.clone(),
                    };
                    reopen.push((meter, p.spec.clone(), p.nodes, price));
                }
            }
            p.hold = None;
        }
        for j in self.jobs.values_mut().filter(|j| j.account == account && j.hold.is_some()) {
            if j.hold == Some(Hold::Frozen) {
                if j.status == JobStatus::Running && j.pool.is_none() {
                    if let Some(price) = hourly(&self.catalog, &j.spec) {
                        let meter = MeterFor { account, resource: j.billing_id(), item: Item::Compute, public: true, region: j.region.clone() };
                        reopen.push((meter, j.spec.clone(), j.nodes, price));
                    }
                }
                if let Some(price) = j.disk_hourly {
                    let gb = j.disk_gb.unwrap_or(crate::command::DEFAULT_DISK_GB);
                    let meter = MeterFor { account, resource: j.id.clone(), item: Item::Storage, public: false, region: None };
                    reopen.push((meter, EVS_SPEC.to_string(), gb, price));
                }
            }
            j.hold = None;
        }
        for (meter, spec, nodes, price) in reopen {
            self.open_meter(meter, at, spec, nodes, price);
        }
    }
}

/// The spec name a notebook's EVS disk is metered under: its "nodes" are gigabytes.
pub const EVS_SPEC: &str = "evs";

/// JSON objects have string keys only: the meters are written as a list of their values (each
/// meter names its own resource and item).
mod meters_as_list {
    use super::{Item, Meter};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::collections::BTreeMap;

    pub fn serialize<S: Serializer>(meters: &BTreeMap<(String, Item), Meter>, s: S) -> Result<S::Ok, S::Error> {
        meters.values().collect::<Vec<_>>().serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<(String, Item), Meter>, D::Error> {
        Ok(Vec::<Meter>::deserialize(d)?.into_iter().map(|m| ((m.resource.clone(), m.item), m)).collect())
    }
}
