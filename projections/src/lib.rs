//! Read models, each a fold over the event log: resource state, balances, flow bills, monthly
//! detail bills and rejections. Folding the same events one at a time or all at once gives the
//! same projections, so a live engine and a replay of its log always agree.

use chrono::Datelike;
use poolbill_domain::money::{fmt_cents, fmt_exact};
use poolbill_domain::time::{beijing_date, to_beijing};
use poolbill_domain::{Amounts, Basis, BillLine, DecodeError, Event, Instant, Rule, State};
use poolbill_store::Envelope;
use rust_decimal::Decimal;
use serde::Serialize;
use std::collections::BTreeMap;

/// Everything derived from a log prefix.
#[derive(Clone, Debug, Default)]
pub struct Projections {
    /// The domain state (resources, accounts, catalog), by the same `State::apply` that decisions use.
    pub state: State,
    /// Flow bills (R5) in log order.
    pub bills: Vec<FlowBill>,
    pub rejections: Vec<RejectionRecord>,
    /// Events folded so far.
    pub events: u64,
    pub last_position: u64,
    pub last_instant: Option<Instant>,
}

/// One flow-bill line and the event that recorded it.
#[derive(Clone, Debug, PartialEq)]
pub struct FlowBill {
    pub position: u64,
    pub at: Instant,
    pub line: BillLine,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RejectionRecord {
    pub position: u64,
    pub at: Instant,
    pub index: Option<u64>,
    pub command: String,
    pub rule: Rule,
    pub reason: String,
}

/// An envelope whose payload cannot be read: the log is not one this build understands.
#[derive(Debug, thiserror::Error)]
#[error("event at position {position}")]
pub struct ProjectionError {
    pub position: u64,
    pub source: DecodeError,
}

impl Projections {
    pub fn new() -> Projections {
        Projections::default()
    }

    /// Fold one stored envelope: decode (upcasting older schema versions), then apply.
    pub fn apply(&mut self, envelope: &Envelope) -> Result<(), ProjectionError> {
        let event = Event::decode(&envelope.event_type, envelope.schema_version, &envelope.payload)
            .map_err(|source| ProjectionError { position: envelope.position, source })?;
        self.apply_event(envelope.position, envelope.at, &event);
        Ok(())
    }

    /// Fold one decoded event recorded at `position` and instant `at`.
    pub fn apply_event(&mut self, position: u64, at: Instant, event: &Event) {
        self.state.apply(event, at);
        match event {
            Event::Charged { line } => self.bills.push(FlowBill { position, at, line: line.clone() }),
            Event::CommandRejected { command, rule, reason, index } => {
                self.rejections.push(RejectionRecord { position, at, index: *index, command: command.clone(), rule: *rule, reason: reason.clone() })
            }
            _ => {}
        }
        self.events += 1;
        self.last_position = position;
        self.last_instant = Some(at);
    }

    /// Flow bills ordered by start, then resource (then log order), as the contract asks.
    pub fn flow_bills(&self) -> Vec<&FlowBill> {
        let mut bills: Vec<&FlowBill> = self.bills.iter().collect();
        bills.sort_by(|a, b| (a.line.start, &a.line.resource, a.position).cmp(&(b.line.start, &b.line.resource, b.position)));
        bills
    }

    /// R5 detail bills: per Beijing calendar month (of the line's start), account, resource and
    /// billing mode, the sums of the flow bills' amounts. Their payable equals the flow bills'.
    pub fn detail_bills(&self) -> Vec<DetailBill> {
        let mut groups: BTreeMap<(String, String, String, &'static str), DetailBill> = BTreeMap::new();
        for bill in &self.bills {
            let line = &bill.line;
            let date = beijing_date(line.start);
            let month = format!("{:04}-{:02}", date.year(), date.month());
            let key = (month.clone(), line.account.clone(), line.resource.clone(), line.mode.as_str());
            let entry = groups.entry(key).or_insert_with(|| DetailBill {
                month,
                account: line.account.clone(),
                resource: line.resource.clone(),
                mode: line.mode.as_str(),
                usage_hours: Decimal::ZERO,
                amounts: Amounts::zero(),
                lines: 0,
            });
            match &line.basis {
                // Node-hours billed on demand, and those a package covered (mode `package`).
                Basis::Usage { nodes, seconds, covered_node_seconds, .. } => {
                    entry.usage_hours +=
                        (Decimal::from(*nodes) * Decimal::from(*seconds) - Decimal::from(*covered_node_seconds)) / Decimal::from(3600)
                }
                Basis::Package { node_seconds, .. } => entry.usage_hours += Decimal::from(*node_seconds) / Decimal::from(3600),
                _ => {}
            }
            entry.amounts = entry.amounts + line.amounts;
            entry.lines += 1;
        }
        groups.into_values().collect()
    }

    /// The contract's output document (`scenario-format.md`).
    pub fn document(&self) -> Document {
        let bills = self
            .flow_bills()
            .into_iter()
            .map(|b| {
                let l = &b.line;
                BillView {
                    resource: l.resource.clone(),
                    account: l.account.clone(),
                    mode: l.mode.as_str(),
                    item: l.item.as_str(),
                    start: to_beijing(l.start).to_rfc3339(),
                    end: to_beijing(l.end).to_rfc3339(),
                    list_price: fmt_exact(l.amounts.list_price),
                    discount: fmt_exact(l.amounts.discount),
                    round_off: fmt_exact(l.amounts.round_off),
                    payable: fmt_cents(l.amounts.payable),
                    event: b.position,
                }
            })
            .collect();
        let pools = self.state.pools.values().map(|p| ResourceView {
            id: p.id.clone(),
            state: p.shown_state(),
            nodes: p.nodes,
            expires_at: p.period.filter(|_| p.mode.is_subscription()).map(|per| to_beijing(per.end).to_rfc3339()),
            kind: "pool",
            account: p.account.clone(),
            mode: p.mode.as_str(),
            spec: p.spec.clone(),
            billed_as: p.id.clone(),
            pool: None,
        });
        let jobs = self.state.jobs.values().map(|j| ResourceView {
            id: j.id.clone(),
            state: j.shown_state(),
            nodes: j.nodes,
            expires_at: None,
            kind: j.kind.as_str(),
            account: j.account.clone(),
            mode: if j.pool.is_some() { "dedicated_pool" } else { "on_demand" },
            spec: j.spec.clone(),
            billed_as: j.billing_id(),
            pool: j.pool.clone(),
        });
        let packages = self.state.packages.values().map(|p| ResourceView {
            id: p.id.clone(),
            state: if p.expired { "expired" } else { "running" },
            nodes: p.quantity,
            expires_at: Some(to_beijing(p.expires_at).to_rfc3339()),
            kind: "package",
            account: p.account.clone(),
            mode: "package",
            spec: p.spec.clone(),
            billed_as: p.id.clone(),
            pool: None,
        });
        let mut resources: Vec<ResourceView> = pools.chain(jobs).chain(packages).collect();
        resources.sort_by(|a, b| a.id.cmp(&b.id));
        let accounts = self
            .state
            .accounts
            .values()
            .map(|a| AccountView { id: a.id.clone(), balance: fmt_cents(a.balance), in_arrears: a.arrears.is_some() })
            .collect();
        let rejections = self
            .rejections
            .iter()
            .map(|r| RejectionView {
                index: r.index,
                r#type: r.command.clone(),
                rule: r.rule.to_string(),
                reason: r.reason.clone(),
                at: to_beijing(r.at).to_rfc3339(),
            })
            .collect();
        let detail_bills = self
            .detail_bills()
            .into_iter()
            .map(|d| DetailView {
                month: d.month,
                account: d.account,
                resource: d.resource,
                mode: d.mode,
                usage_hours: fmt_exact(d.usage_hours.round_dp(8)),
                list_price: fmt_exact(d.amounts.list_price),
                discount: fmt_exact(d.amounts.discount),
                round_off: fmt_exact(d.amounts.round_off),
                payable: fmt_cents(d.amounts.payable),
                lines: d.lines,
            })
            .collect();
        Document { bills, resources, accounts, rejections, events: self.events, detail_bills }
    }
}

/// One month's sums for a resource and billing mode (R5).
#[derive(Clone, Debug, PartialEq)]
pub struct DetailBill {
    pub month: String,
    pub account: String,
    pub resource: String,
    pub mode: &'static str,
    /// Node-hours of metered usage (zero for subscription charges).
    pub usage_hours: Decimal,
    pub amounts: Amounts,
    pub lines: u64,
}

/// `poolbill run --format json`: the contract's fields first; later fields are additions.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Document {
    pub bills: Vec<BillView>,
    pub resources: Vec<ResourceView>,
    pub accounts: Vec<AccountView>,
    pub rejections: Vec<RejectionView>,
    pub events: u64,
    pub detail_bills: Vec<DetailView>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct BillView {
    pub resource: String,
    pub account: String,
    pub mode: &'static str,
    pub item: &'static str,
    pub start: String,
    pub end: String,
    pub list_price: String,
    pub discount: String,
    pub round_off: String,
    pub payable: String,
    /// The log position of the event that recorded this line.
    pub event: u64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ResourceView {
    pub id: String,
    pub state: &'static str,
    pub nodes: u32,
    pub expires_at: Option<String>,
    pub kind: &'static str,
    pub account: String,
    pub mode: &'static str,
    pub spec: String,
    /// The resource id its bills carry (R5): `training_<job>`, `<service>-<model>`, or the id.
    pub billed_as: String,
    /// The dedicated pool a job runs on.
    pub pool: Option<String>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct AccountView {
    pub id: String,
    pub balance: String,
    pub in_arrears: bool,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct RejectionView {
    pub index: Option<u64>,
    pub r#type: String,
    pub rule: String,
    pub reason: String,
    pub at: String,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct DetailView {
    pub month: String,
    pub account: String,
    pub resource: String,
    pub mode: &'static str,
    pub usage_hours: String,
    pub list_price: String,
    pub discount: String,
    pub round_off: String,
    pub payable: String,
    pub lines: u64,
}
