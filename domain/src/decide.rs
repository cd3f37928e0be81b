//! `decide(&State, &Command, now) -> Result<Vec<Event>, Rejection>`: the rules applied to a
//! command. Pure: no I/O, no clock but the `now` it is given.

use crate::command::Command;
use crate::command::JobKind;
use crate::event::Event;
use crate::model::{remaining_value, Alignment, Basis, BillLine, BillingMode, Item, Period, PoolType, Price, Rejection, Rule, Term, UnusedPart};
use crate::money::{remaining_factor, trunc2, Amounts};
use crate::state::{billing_id, Account, JobStatus, Pool, PoolStatus, State};
use crate::time::{align_to_day, days, period_end, Instant};
use rust_decimal::Decimal;

/// A command as the log keeps it: its input (`command_received`), then its events, or the
/// record of its refusal stamped no earlier than the log's last instant.
pub struct Handled {
    pub at: Instant,
    pub events: Vec<Event>,
    pub rejection: Option<Rejection>,
}

pub fn handle(state: &State, command: &Command, at: Instant, index: Option<u64>) -> Handled {
    let received = Event::CommandReceived { command: command.clone(), index, requested_at: Some(at) };
    match decide(state, command, at) {
        Ok(events) => Handled { at, events: std::iter::once(received).chain(events).collect(), rejection: None },
        Err(rejection) => {
            let stamp = state.clock.map_or(at, |clock| clock.max(at));
            let record =
                Event::CommandRejected { command: command.type_name().to_string(), rule: rejection.rule, reason: rejection.reason.clone(), index };
            Handled { at: stamp, events: vec![received, record], rejection: Some(rejection) }
        }
    }
}

pub fn decide(state: &State, command: &Command, now: Instant) -> Result<Vec<Event>, Rejection> {
    if let Some(clock) = state.clock {
        if now < clock {
            return Err(Rejection::new(Rule::R1, format!("instant {} is before the last recorded instant {}", now.to_rfc3339(), clock.to_rfc3339())));
        }
    }
    let mut events = decide_command(state, command, now)?;
    credits_end_arrears(state, &mut events);
    Ok(events)
}

/// R12: any credit that brings an account in arrears to 0 or more ends its arrears — a
/// top-up, and also a refund (unsubscribing, a downgrade). One rule for every command.
fn credits_end_arrears(state: &State, events: &mut Vec<Event>) {
    // Per account: its balance after these events, and whether any of them credited it.
    let mut after: Vec<(&str, Decimal, bool)> = Vec::new();
    for event in events.iter() {
        let (account, balance, credit) = match event {
            Event::ToppedUp { account, balance_after, .. } => (account.as_str(), *balance_after, true),
            Event::Charged { line } => (line.account.as_str(), line.balance, line.amounts.payable < Decimal::ZERO),
            _ => continue,
        };
        match after.iter_mut().find(|(a, _, _)| *a == account) {
            Some(entry) => *entry = (account, balance, entry.2 || credit),
            None => after.push((account, balance, credit)),
        }
    }
    let ended: Vec<Event> = after
        .into_iter()
        .filter(|(account, balance, credit)| {
            *credit && *balance >= Decimal::ZERO && state.accounts.get(*account).is_some_and(|a| a.arrears.is_some())
        })
        .map(|(account, _, _)| Event::ArrearsEnded { account: account.to_string() })
        .collect();
    events.extend(ended);
}

fn decide_command(state: &State, command: &Command, now: Instant) -> Result<Vec<Event>, Rejection> {
    match command {
        Command::SetPrice { spec, price } => {
            if state.catalog.get(spec) == Some(price) {
                return Err(Rejection::new(Rule::R17, format!("spec {spec:?} already has these prices")));
            }
            Ok(vec![Event::PriceSet { spec: spec.clone(), price: price.clone() }])
        }
        Command::SetPolicy { policy } => {
            if &state.policy == policy {
                return Err(Rejection::new(Rule::R17, "the policy is already in force"));
            }
            Ok(vec![Event::PolicySet { policy: policy.clone() }])
        }
        Command::OpenAccount { account, balance, level, discount } => {
            if state.accounts.contains_key(account) {
                return Err(Rejection::new(Rule::R17, format!("account {account:?} already exists")));
            }
            if !state.policy.levels.contains_key(level) {
                return Err(Rejection::new(Rule::R6, format!("unknown customer level {level:?}")));
            }
            if *discount < Decimal::ZERO || *discount >= Decimal::ONE {
                return Err(Rejection::new(Rule::R2, format!("discount rate {discount} is not in [0, 1)")));
            }
            Ok(vec![Event::AccountOpened { account: account.clone(), balance: *balance, level: level.clone(), discount: *discount }])
        }
        Command::TopUp { account, amount } => {
            let acct = find_account(state, account, Rule::R12)?;
            if *amount <= Decimal::ZERO {
                return Err(Rejection::new(Rule::R12, format!("a top-up must be positive, not {amount}")));
            }
            // R12: one that brings the balance to 0 or more ends the arrears (`credits_end_arrears`).
            Ok(vec![Event::ToppedUp { account: account.clone(), amount: *amount, balance_after: acct.balance + *amount }])
        }
        Command::Purchase { account, pool, spec, nodes, mode, term, pool_type, region, ready } => {
            purchase(state, now, account, pool, spec, *nodes, *mode, *term, *pool_type, region, *ready)
        }
        Command::Ready { pool } => ready(state, pool),
        Command::Delete { pool } => delete(state, pool),
        Command::Renew { pool, term, align_day } => renew(state, pool, *term, *align_day),
        Command::Convert { pool, term } => convert(state, now, pool, *term),
        Command::Scale { pool, nodes, spec } => scale(state, now, pool, *nodes, spec.as_deref()),
        Command::SetAutoRenew { pool, enabled, term, days_before, count } => set_auto_renew(state, pool, *enabled, *term, *days_before, *count),
        Command::Unsubscribe { pool } => unsubscribe(state, now, pool),
        Command::BuyPackage { account, package, spec, quantity, hours, valid_days, price, region, alert_below } => {
            buy_package(state, now, account, package, spec, (*quantity, *hours, *valid_days), *price, region, *alert_below)
        }
        Command::StartJob { account, job, kind, spec, nodes, pool, model, disk_gb, disk_hourly, region } => {
            let job_spec =
                JobSpec { account, job, kind: *kind, spec, nodes: *nodes, pool, model, disk_gb: *disk_gb, disk_hourly: *disk_hourly, region };
            start_job(state, job_spec)
        }
        Command::StopJob { job } => stop_job(state, job),
        Command::DeleteJob { job } => delete_job(state, job),
    }
}

/// R12: while an account is in arrears, these are refused (seed table 1-6) and nothing can be
/// paid for but by a top-up.
fn not_in_arrears(acct: &Account, what: &str) -> Result<(), Rejection> {
    match acct.arrears {
        Some(arrears) => Err(Rejection::new(
            Rule::R12,
            format!(
                "account {:?} is in arrears since {} (balance {}): {what} is refused until a top-up brings it to 0 or more",
                acct.id,
                arrears.since.to_rfc3339(),
                acct.balance
            ),
        )),
        None => Ok(()),
    }
}

/// Ids are unique across pools, jobs and packages: bills name resources by them (R5, R17).
fn id_is_free(state: &State, id: &str) -> Result<(), Rejection> {
    let kind = if state.pools.contains_key(id) {
        "pool"
    } else if state.jobs.contains_key(id) {
        "job"
    } else if state.packages.contains_key(id) {
        "package"
    } else if let Some(job) = state.bill_ids.get(id) {
        return Err(Rejection::new(Rule::R5, format!("{id:?} is the bill id of job {job:?}")));
    } else {
        return Ok(());
    };
    Err(Rejection::new(Rule::R17, format!("{kind} {id:?} already exists")))
}

#[allow(clippy::too_many_arguments)]
fn purchase(
    state: &State,
    now: Instant,
    account: &str,
    pool: &str,
    spec: &str,
    nodes: u32,
    mode: BillingMode,
    term: Option<Term>,
    pool_type: PoolType,
    region: &Option<String>,
    ready: bool,
) -> Result<Vec<Event>, Rejection> {
    let rule = if mode.is_subscription() { Rule::R3 } else { Rule::R4 };
    let acct = find_account(state, account, rule)?;
    id_is_free(state, pool)?;
    not_in_arrears(acct, "creating a pool")?;
    let price = find_price(state, spec, rule)?;
    let purchased = |period| Event::PoolPurchased {
        account: account.to_string(),
        pool: pool.to_string(),
        spec: spec.to_string(),
        nodes,
        mode,
        pool_type,
        region: region.clone(),
        period,
    };
    match mode {
        BillingMode::OnDemand => {
            let hourly = hourly(price, spec)?;
            let mut events = vec![purchased(None)];
            if ready {
                events.push(Event::PoolReady { account: account.to_string(), pool: pool.to_string(), hourly });
            }
            Ok(events)
        }
        BillingMode::Monthly | BillingMode::Yearly => {
            if pool_type == PoolType::Public {
                return Err(Rejection::new(Rule::R3, "subscriptions are sold for dedicated pools only (seed table 1-1)"));
            }
            let term = term.ok_or_else(|| Rejection::new(Rule::R3, "a subscription needs months or years"))?;
            if term.mode() != mode {
                return Err(Rejection::new(Rule::R3, format!("mode {} does not match a term of {term:?}", mode.as_str())));
            }
            let period = Period { start: now, end: period_end(now, term.months()) };
            let (unit_price, list) = term_fee(price, spec, term, nodes)?;
            let basis = Basis::Term { spec: spec.to_string(), nodes, term, unit_price, align: None };
            let charge = charge(acct, pool, mode, Item::Purchase, period, list, basis)?;
            Ok(vec![purchased(Some(period)), charge])
        }
        BillingMode::Package => Err(Rejection::new(Rule::R13, "packages are bought with buy_package, not purchase")),
    }
}

fn ready(state: &State, pool_id: &str) -> Result<Vec<Event>, Rejection> {
    let pool = find_pool(state, pool_id, Rule::R4)?;
    if pool.mode.is_subscription() {
        return Err(Rejection::new(Rule::R4, format!("pool {pool_id:?} is a subscription: it runs from its purchase, ready is for on-demand pools")));
    }
    match pool.status {
        PoolStatus::Creating => {
            let hourly = hourly(find_price(state, &pool.spec, Rule::R4)?, &pool.spec)?;
            Ok(vec![Event::PoolReady { account: pool.account.clone(), pool: pool_id.to_string(), hourly }])
        }
        PoolStatus::Running => Err(Rejection::new(Rule::R17, format!("pool {pool_id:?} is already running"))),
        other => Err(Rejection::new(Rule::R17, format!("pool {pool_id:?} is {}", other.as_str()))),
    }
}

fn delete(state: &State, pool_id: &str) -> Result<Vec<Event>, Rejection> {
    let pool = find_pool(state, pool_id, Rule::R16)?;
    if pool.status.is_gone() {
        return Err(Rejection::new(Rule::R17, format!("pool {pool_id:?} is already {}", pool.status.as_str())));
    }
    if pool.mode.is_subscription() {
        return Err(Rejection::new(Rule::R16, format!("pool {pool_id:?} is a subscription: unsubscribe it instead (R15)")));
    }
    not_in_arrears(find_account(state, &pool.account, Rule::R16)?, "deleting a pool")?;
    Ok(vec![Event::PoolDeleted { account: pool.account.clone(), pool: pool_id.to_string() }])
}

fn renew(state: &State, pool_id: &str, term: Term, align_day: Option<u32>) -> Result<Vec<Event>, Rejection> {
    let pool = find_pool(state, pool_id, Rule::R3)?;
    let period = match (pool.mode.is_subscription(), pool.period) {
        (true, Some(period)) => period,
        _ => return Err(Rejection::new(Rule::R3, format!("pool {pool_id:?} is on demand: only subscriptions are renewed"))),
    };
    if pool.status.is_gone() {
        return Err(Rejection::new(Rule::R6, format!("pool {pool_id:?} is {}: nothing can be renewed", pool.status.as_str())));
    }
    let acct = find_account(state, &pool.account, Rule::R3)?;
    not_in_arrears(acct, "paying for a renewal")?;
    renewal(state, acct, pool, period, term, align_day, false)
}

/// R3: the events of renewing `pool` by `term` (manual, or an R8 attempt), its fee charged.
pub(crate) fn renewal(
    state: &State,
    acct: &Account,
    pool: &Pool,
    period: Period,
    term: Term,
    align_day: Option<u32>,
    auto: bool,
) -> Result<Vec<Event>, Rejection> {
    let price = find_price(state, &pool.spec, Rule::R3)?;
    // R3: anchored on the old end, also when renewed after it.
    let months_end = period_end(period.end, term.months());
    let (unit_price, mut list) = term_fee(price, &pool.spec, term, pool.nodes)?;
    let mut end = months_end;
    let mut align = None;
    if let Some(day) = align_day {
        let aligned = align_to_day(months_end, day);
        if aligned > months_end {
            let factor = remaining_factor(months_end, aligned);
            let amount = trunc2(monthly(price, &pool.spec, Rule::R3)? * Decimal::from(pool.nodes) * factor);
            list += amount;
            end = aligned;
            align = Some(Alignment { day, from: months_end, to: aligned, factor, amount });
        }
    }
    let basis = Basis::Term { spec: pool.spec.clone(), nodes: pool.nodes, term, unit_price, align };
    let charge = charge(acct, &pool.id, term.mode(), Item::Renewal, Period { start: period.end, end }, list, basis)?;
    Ok(vec![Event::PoolRenewed { account: pool.account.clone(), pool: pool.id.clone(), months: term.months(), end, auto }, charge])
}

fn convert(state: &State, now: Instant, pool_id: &str, term: Term) -> Result<Vec<Event>, Rejection> {
    let pool = find_pool(state, pool_id, Rule::R11)?;
    if pool.mode != BillingMode::OnDemand {
        return Err(Rejection::new(Rule::R11, format!("pool {pool_id:?} is already a subscription")));
    }
    if pool.pool_type != PoolType::Dedicated {
        return Err(Rejection::new(Rule::R11, format!("pool {pool_id:?} is a public pool: only dedicated pools convert")));
    }
    if pool.status != PoolStatus::Running {
        return Err(Rejection::new(Rule::R11, format!("pool {pool_id:?} is {}: only a running pool converts", pool.status.as_str())));
    }
    let acct = find_account(state, &pool.account, Rule::R11)?;
    not_in_arrears(acct, "paying for a conversion")?;
    let price = find_price(state, &pool.spec, Rule::R11)?;
    let period = Period { start: now, end: period_end(now, term.months()) };
    // R11: the fee is for the pool's nodes at the moment of conversion.
    let (unit_price, list) = term_fee(price, &pool.spec, term, pool.nodes)?;
    let basis = Basis::Term { spec: pool.spec.clone(), nodes: pool.nodes, term, unit_price, align: None };
    let charge = charge(acct, pool_id, term.mode(), Item::Conversion, period, list, basis)?;
    Ok(vec![
        Event::PoolConverted { account: pool.account.clone(), pool: pool_id.to_string(), mode: term.mode(), months: term.months(), period },
        charge,
    ])
}

fn scale(state: &State, now: Instant, pool_id: &str, nodes: Option<u32>, spec: Option<&str>) -> Result<Vec<Event>, Rejection> {
    let probe_rule = match state.pools.get(pool_id) {
        Some(p) if p.mode.is_subscription() => Rule::R9,
        _ => Rule::R10,
    };
    let pool = find_pool(state, pool_id, probe_rule)?;
    let to_spec = spec.unwrap_or(&pool.spec).to_string();
    let to_nodes = nodes.unwrap_or(pool.nodes);
    if pool.status.is_gone() {
        return Err(Rejection::new(Rule::R17, format!("pool {pool_id:?} is already {}", pool.status.as_str())));
    }
    if to_spec == pool.spec && to_nodes == pool.nodes {
        return Err(Rejection::new(Rule::R17, format!("pool {pool_id:?} already has {to_nodes} nodes of {to_spec}")));
    }
    not_in_arrears(find_account(state, &pool.account, probe_rule)?, "scaling")?;
    let scaled =
        |hourly| Event::PoolScaled { account: pool.account.clone(), pool: pool_id.to_string(), spec: to_spec.clone(), nodes: to_nodes, hourly };
    if !pool.mode.is_subscription() {
        if pool.status == PoolStatus::Creating {
            return Err(Rejection::new(Rule::R4, format!("pool {pool_id:?} is creating: only ready and delete are accepted")));
        }
        let hourly = hourly(find_price(state, &to_spec, Rule::R10)?, &to_spec)?;
        return Ok(vec![scaled(Some(hourly))]);
    }
    // R6/R9: a subscription changes configuration only while running.
    if pool.status != PoolStatus::Running {
        return Err(Rejection::new(Rule::R9, format!("pool {pool_id:?} is {}: scaling is refused", pool.status.as_str())));
    }
    let period = pool.period.ok_or_else(|| Rejection::new(Rule::R9, format!("pool {pool_id:?} has no period")))?;
    let yearly = pool.mode == BillingMode::Yearly;
    let old_monthly = holder_rate(find_price(state, &pool.spec, Rule::R9)?, &pool.spec, pool.mode, Rule::R9)? * Decimal::from(pool.nodes);
    let new_monthly = holder_rate(find_price(state, &to_spec, Rule::R9)?, &to_spec, pool.mode, Rule::R9)? * Decimal::from(to_nodes);
    let factor = remaining_factor(now, period.end);
    let difference = remaining_value(new_monthly - old_monthly, 1, factor, yearly);
    let mut events = vec![scaled(None)];
    if !difference.is_zero() {
        let item = if difference > Decimal::ZERO { Item::Upgrade } else { Item::Downgrade };
        let basis = Basis::Change {
            from_spec: pool.spec.clone(),
            from_nodes: pool.nodes,
            to_spec: to_spec.clone(),
            to_nodes,
            old_monthly,
            new_monthly,
            factor,
            yearly,
        };
        let acct = find_account(state, &pool.account, Rule::R9)?;
        events.push(charge(acct, pool_id, pool.mode, item, Period { start: now, end: period.end }, difference, basis)?);
    }
    Ok(events)
}

/// One subscription charge or refund (R2, R5); refused when the balance cannot cover it (R12).
fn charge(acct: &Account, resource: &str, mode: BillingMode, item: Item, span: Period, list: Decimal, basis: Basis) -> Result<Event, Rejection> {
    let amounts = Amounts::of(list, acct.discount);
    if amounts.payable > Decimal::ZERO && acct.balance < amounts.payable {
        return Err(Rejection::new(
            Rule::R12,
            format!("balance {} of account {:?} does not cover the {} fee {}", acct.balance, acct.id, item.as_str(), amounts.payable),
        ));
    }
    Ok(Event::Charged {
        line: BillLine {
            resource: resource.to_string(),
            account: acct.id.clone(),
            mode,
            item,
            start: span.start,
            end: span.end,
            amounts,
            basis,
            balance: acct.balance - amounts.payable,
        },
    })
}

/// R3 fee: monthly price × nodes × months, or yearly price × nodes × years (12 × monthly where
/// the catalog has no yearly price). Returns the unit price and the exact list price.
fn term_fee(price: &Price, spec: &str, term: Term, nodes: u32) -> Result<(Decimal, Decimal), Rejection> {
    let monthly = monthly(price, spec, Rule::R3)?;
    let (unit, count) = match term {
        Term::Months(m) => (monthly, m),
        Term::Years(y) => (price.yearly.unwrap_or(monthly * Decimal::from(12)), y),
    };
    Ok((unit, unit * Decimal::from(nodes) * Decimal::from(count)))
}

/// R9, R15: the per-node price a subscription's holder pays, by its mode: the monthly price,
/// or for a yearly subscription the yearly price (12 × monthly where the catalog has none),
/// which [`remaining_value`] divides by 12, last.
fn holder_rate(price: &Price, spec: &str, mode: BillingMode, rule: Rule) -> Result<Decimal, Rejection> {
    let monthly = monthly(price, spec, rule)?;
    Ok(match mode {
        BillingMode::Yearly => price.yearly.unwrap_or(monthly * Decimal::from(12)),
        _ => monthly,
    })
}

fn hourly(price: &Price, spec: &str) -> Result<Decimal, Rejection> {
    price.hourly.ok_or_else(|| Rejection::new(Rule::R4, format!("spec {spec:?} has no hourly price")))
}

fn monthly(price: &Price, spec: &str, rule: Rule) -> Result<Decimal, Rejection> {
    price.monthly.ok_or_else(|| Rejection::new(rule, format!("spec {spec:?} has no monthly price")))
}

fn find_account<'a>(state: &'a State, id: &str, rule: Rule) -> Result<&'a Account, Rejection> {
    state.accounts.get(id).ok_or_else(|| Rejection::new(rule, format!("unknown account {id:?}")))
}

fn find_pool<'a>(state: &'a State, id: &str, rule: Rule) -> Result<&'a Pool, Rejection> {
    state.pools.get(id).ok_or_else(|| Rejection::new(rule, format!("unknown pool {id:?}")))
}

fn find_price<'a>(state: &'a State, spec: &str, rule: Rule) -> Result<&'a Price, Rejection> {
    state.catalog.get(spec).ok_or_else(|| Rejection::new(rule, format!("spec {spec:?} is not in the catalog")))
}

/// R8: turn auto-renewal on (or change it), or off.
fn set_auto_renew(
    state: &State,
    pool_id: &str,
    enabled: bool,
    term: Option<Term>,
    days_before: u32,
    count: Option<u32>,
) -> Result<Vec<Event>, Rejection> {
    let pool = find_pool(state, pool_id, Rule::R8)?;
    if !pool.mode.is_subscription() {
        return Err(Rejection::new(Rule::R8, format!("pool {pool_id:?} is on demand: only subscriptions renew")));
    }
    if pool.status.is_gone() {
        return Err(Rejection::new(Rule::R17, format!("pool {pool_id:?} is already {}", pool.status.as_str())));
    }
    if !(1..=7).contains(&days_before) {
        return Err(Rejection::new(Rule::R8, format!("days_before is 1..=7, not {days_before}")));
    }
    let event = |term| Event::AutoRenewSet { account: pool.account.clone(), pool: pool_id.to_string(), enabled, term, days_before, count };
    if !enabled {
        return match pool.auto_renew {
            None => Err(Rejection::new(Rule::R17, format!("auto-renewal of pool {pool_id:?} is already off"))),
            Some(_) => Ok(vec![event(None)]),
        };
    }
    // Seed §5.3: auto-renewal is opened before the pool expires.
    if pool.status != PoolStatus::Running {
        return Err(Rejection::new(Rule::R8, format!("pool {pool_id:?} is {}: auto-renewal is set before expiry", pool.status.as_str())));
    }
    let term = term.ok_or_else(|| Rejection::new(Rule::R8, "auto-renewal needs months or years"))?;
    if let Some(current) = &pool.auto_renew {
        if current.term == term && current.days_before == days_before && current.remaining == count {
            return Err(Rejection::new(Rule::R17, format!("auto-renewal of pool {pool_id:?} is already set so")));
        }
    }
    Ok(vec![event(Some(term))])
}

/// R15: refund what is unused (all of it within five days) and release the pool at once.
fn unsubscribe(state: &State, now: Instant, pool_id: &str) -> Result<Vec<Event>, Rejection> {
    let pool = find_pool(state, pool_id, Rule::R15)?;
    if pool.status.is_gone() {
        return Err(Rejection::new(Rule::R17, format!("pool {pool_id:?} is already {}", pool.status.as_str())));
    }
    let period = match (pool.mode.is_subscription(), pool.period) {
        (true, Some(period)) => period,
        _ => return Err(Rejection::new(Rule::R15, format!("pool {pool_id:?} is on demand: delete it instead (R16)"))),
    };
    // R6: during grace and retention, unsubscribing is refused.
    if pool.status != PoolStatus::Running {
        return Err(Rejection::new(Rule::R6, format!("pool {pool_id:?} is {}: unsubscribing is refused", pool.status.as_str())));
    }
    let acct = find_account(state, &pool.account, Rule::R15)?;
    let since = pool.subscribed_at.unwrap_or(period.start);
    let (amounts, basis) = if now - since <= days(5) {
        // Everything paid comes back, exactly: no discount is taken off again.
        (Amounts::of(-pool.paid, Decimal::ZERO), Basis::Refund { full: true, unused: None, unbegun: Decimal::ZERO })
    } else {
        let current_end = pool.terms.iter().find(|t| t.start <= now && now <= t.end).map_or(period.end, |t| t.end);
        let unbegun: Decimal = pool.terms.iter().filter(|t| t.start > now).map(|t| t.list).sum();
        let rate = holder_rate(find_price(state, &pool.spec, Rule::R15)?, &pool.spec, pool.mode, Rule::R15)?;
        let factor = remaining_factor(now, current_end);
        let yearly = pool.mode == BillingMode::Yearly;
        let amount = trunc2(remaining_value(rate, pool.nodes, factor, yearly));
        let unused = UnusedPart { monthly: rate, nodes: pool.nodes, factor, period_end: current_end, amount, yearly };
        (Amounts::of(-(amount + unbegun), acct.discount), Basis::Refund { full: false, unused: Some(unused), unbegun })
    };
    let line = BillLine {
        resource: pool_id.to_string(),
        account: acct.id.clone(),
        mode: pool.mode,
        item: Item::Refund,
        start: now,
        end: period.end,
        amounts,
        basis,
        balance: acct.balance - amounts.payable,
    };
    Ok(vec![Event::PoolUnsubscribed { account: acct.id.clone(), pool: pool_id.to_string() }, Event::Charged { line }])
}

/// R13: buy a package; its price is paid now and never refunded.
#[allow(clippy::too_many_arguments)]
fn buy_package(
    state: &State,
    now: Instant,
    account: &str,
    package: &str,
    spec: &str,
    (quantity, hours, valid_days): (u32, u32, u32),
    price: Decimal,
    region: &Option<String>,
    alert_below: Option<Decimal>,
) -> Result<Vec<Event>, Rejection> {
    let acct = find_account(state, account, Rule::R13)?;
    id_is_free(state, package)?;
    not_in_arrears(acct, "buying a package")?;
    find_price(state, spec, Rule::R13)?;
    let expires_at = now + days(valid_days);
    let amounts = Amounts::of(price, Decimal::ZERO);
    if acct.balance < amounts.payable {
        return Err(Rejection::new(Rule::R13, format!("balance {} of account {account:?} does not cover the package price {price}", acct.balance)));
    }
    let line = BillLine {
        resource: package.to_string(),
        account: account.to_string(),
        mode: BillingMode::Package,
        item: Item::Package,
        start: now,
        end: expires_at,
        amounts,
        basis: Basis::PackagePrice { spec: spec.to_string(), quantity, hours, price },
        balance: acct.balance - amounts.payable,
    };
    Ok(vec![
        Event::PackageBought {
            account: account.to_string(),
            package: package.to_string(),
            spec: spec.to_string(),
            region: region.clone(),
            quantity,
            hours,
            expires_at,
            price,
            alert_below,
        },
        Event::Charged { line },
    ])
}

struct JobSpec<'a> {
    account: &'a str,
    job: &'a str,
    kind: JobKind,
    spec: &'a str,
    nodes: u32,
    pool: &'a Option<String>,
    model: &'a Option<String>,
    disk_gb: Option<u32>,
    disk_hourly: Option<Decimal>,
    region: &'a Option<String>,
}

/// R14: start a job, or restart a stopped one; on the public pool its compute is billed (R4).
fn start_job(state: &State, job: JobSpec) -> Result<Vec<Event>, Rejection> {
    let acct = find_account(state, job.account, Rule::R14)?;
    match state.jobs.get(job.job) {
        None => id_is_free(state, job.job)?,
        Some(existing) => match existing.status {
            JobStatus::Running => return Err(Rejection::new(Rule::R17, format!("job {:?} is already running", job.job))),
            JobStatus::Deleted | JobStatus::Released => {
                return Err(Rejection::new(Rule::R17, format!("job {:?} is already {}", job.job, existing.status.as_str())))
            }
            JobStatus::Stopped if existing.account != job.account || existing.kind != job.kind => {
                return Err(Rejection::new(
                    Rule::R14,
                    format!("job {:?} is a {} job of account {:?}", job.job, existing.kind.as_str(), existing.account),
                ))
            }
            JobStatus::Stopped => {}
        },
    }
    not_in_arrears(acct, "starting a job")?;
    let restart = state.jobs.get(job.job);
    // A restart keeps the disk and the region it was created with (R13, R14).
    let (disk_gb, disk_hourly, region) = match restart {
        Some(j) => (j.disk_gb, j.disk_hourly, j.region.clone()),
        None => (job.disk_gb, job.disk_hourly, job.region.clone()),
    };
    let hourly = match job.pool {
        None => {
            let price = find_price(state, job.spec, Rule::R14)?;
            Some(price.hourly.ok_or_else(|| Rejection::new(Rule::R4, format!("spec {:?} has no hourly price", job.spec)))?)
        }
        Some(pool_id) => {
            let pool = find_pool(state, pool_id, Rule::R14)?;
            if pool.account != job.account {
                return Err(Rejection::new(Rule::R14, format!("pool {pool_id:?} belongs to account {:?}", pool.account)));
            }
            if pool.pool_type != PoolType::Dedicated {
                return Err(Rejection::new(Rule::R14, format!("pool {pool_id:?} is public: leave out pool to run on the public pool")));
            }
            // A pool runs in its grace period too (R6); frozen, creating or gone, it does not.
            if !matches!(pool.status, PoolStatus::Running | PoolStatus::Expired) || pool.hold == Some(crate::state::Hold::Frozen) {
                return Err(Rejection::new(Rule::R14, format!("pool {pool_id:?} is {}: jobs cannot run on it", pool.shown_state())));
            }
            None
        }
    };
    if job.kind == JobKind::Service && job.model.is_none() {
        return Err(Rejection::new(Rule::R5, "a service is billed as <service name>-<model id>: model is needed"));
    }
    // Ids a job bills under must not be another resource's (R5); a restart keeps its own.
    let billed_as = match restart {
        Some(j) => j.billed_as.clone(),
        None => billing_id(job.kind, job.job, job.model.as_deref()),
    };
    if billed_as != job.job && restart.is_none() {
        id_is_free(state, &billed_as)?;
    }
    Ok(vec![Event::JobStarted {
        account: job.account.to_string(),
        job: job.job.to_string(),
        kind: job.kind,
        spec: job.spec.to_string(),
        nodes: job.nodes,
        pool: job.pool.clone(),
        model: job.model.clone(),
        hourly,
        disk_gb: disk_hourly.map(|_| disk_gb.unwrap_or(crate::command::DEFAULT_DISK_GB)),
        disk_hourly,
        region,
        billed_as,
    }])
}

/// R16: stopping ends compute billing (a notebook's disk is still billed).
fn stop_job(state: &State, job_id: &str) -> Result<Vec<Event>, Rejection> {
    let job = state.jobs.get(job_id).ok_or_else(|| Rejection::new(Rule::R16, format!("unknown job {job_id:?}")))?;
    match job.status {
        JobStatus::Running => Ok(vec![Event::JobStopped { account: job.account.clone(), job: job_id.to_string() }]),
        other => Err(Rejection::new(Rule::R17, format!("job {job_id:?} is already {}", other.as_str()))),
    }
}

/// R16: deleting ends all billing, the disk's included.
fn delete_job(state: &State, job_id: &str) -> Result<Vec<Event>, Rejection> {
    let job = state.jobs.get(job_id).ok_or_else(|| Rejection::new(Rule::R16, format!("unknown job {job_id:?}")))?;
    match job.status {
        JobStatus::Running | JobStatus::Stopped => Ok(vec![Event::JobDeleted { account: job.account.clone(), job: job_id.to_string() }]),
        other => Err(Rejection::new(Rule::R17, format!("job {job_id:?} is already {}", other.as_str()))),
    }
}
