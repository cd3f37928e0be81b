//! `decide(&State, &Command, now) -> Result<Vec<Event>, Rejection>`: the rules applied to a
//! command. Pure: no I/O, no clock but the `now` it is given.

use crate::command::Command;
use crate::event::Event;
use crate::model::{Alignment, Basis, BillLine, BillingMode, Item, Period, PoolType, Price, Rejection, Rule, Term};
use crate::money::{remaining_factor, trunc2, Amounts};
use crate::state::{Account, Pool, PoolStatus, State};
use crate::time::{align_to_day, period_end, Instant};
use rust_decimal::Decimal;

pub fn decide(state: &State, command: &Command, now: Instant) -> Result<Vec<Event>, Rejection> {
    if let Some(clock) = state.clock {
        if now < clock {
            return Err(Rejection::new(
                Rule::R1,
                format!("instant {} is before the last recorded instant {}", now.to_rfc3339(), clock.to_rfc3339()),
            ));
        }
    }
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
            Ok(vec![Event::ToppedUp { account: account.clone(), amount: *amount, balance: acct.balance + *amount }])
        }
        Command::Purchase { account, pool, spec, nodes, mode, term, pool_type, region, ready } => {
            purchase(state, now, account, pool, spec, *nodes, *mode, *term, *pool_type, region, *ready)
        }
        Command::Ready { pool } => ready(state, pool),
        Command::Delete { pool } => delete(state, pool),
        Command::Renew { pool, term, align_day } => renew(state, pool, *term, *align_day),
        Command::Convert { pool, term } => convert(state, now, pool, *term),
        Command::Scale { pool, nodes, spec } => scale(state, now, pool, *nodes, spec.as_deref()),
        Command::SetAutoRenew { .. } => Err(not_yet(Rule::R8, "auto-renewal")),
        Command::Unsubscribe { .. } => Err(not_yet(Rule::R15, "unsubscribing")),
        Command::BuyPackage { .. } => Err(not_yet(Rule::R13, "packages")),
        Command::StartJob { .. } | Command::StopJob { .. } | Command::DeleteJob { .. } => Err(not_yet(Rule::R14, "workloads")),
    }
}

fn not_yet(rule: Rule, what: &str) -> Rejection {
    Rejection::new(rule, format!("{what} is not supported yet"))
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
    if state.pools.contains_key(pool) {
        return Err(Rejection::new(Rule::R17, format!("pool {pool:?} already exists")));
    }
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
    let charge = charge(acct, pool_id, term.mode(), Item::Renewal, Period { start: period.end, end }, list, basis)?;
    Ok(vec![
        Event::PoolRenewed { account: pool.account.clone(), pool: pool_id.to_string(), months: term.months(), end, auto: false },
        charge,
    ])
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
    let scaled = |hourly| Event::PoolScaled {
        account: pool.account.clone(),
        pool: pool_id.to_string(),
        spec: to_spec.clone(),
        nodes: to_nodes,
        hourly,
    };
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
    let old_monthly = monthly(find_price(state, &pool.spec, Rule::R9)?, &pool.spec, Rule::R9)? * Decimal::from(pool.nodes);
    let new_monthly = monthly(find_price(state, &to_spec, Rule::R9)?, &to_spec, Rule::R9)? * Decimal::from(to_nodes);
    let factor = remaining_factor(now, period.end);
    let difference = (new_monthly - old_monthly) * factor;
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
