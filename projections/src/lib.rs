//! Read models, each a fold over the event log: resource state, balances, flow bills, monthly
//! detail bills and rejections. Folding the same events one at a time or all at once gives the
//! same projections, so a live engine and a replay of its log always agree.

use chrono::Datelike;
use poolbill_domain::money::{fmt_cents, fmt_exact, Cents, Exact};
use poolbill_domain::state::{Job, Package, Pool};
use poolbill_domain::time::{beijing_date, to_beijing, BeijingText};
use poolbill_domain::{Amounts, Basis, BillLine, DecodeError, Event, Instant, Rule, State};
use poolbill_store::{Envelope, NewEvent, Payload};
use rust_decimal::Decimal;
use serde::Serialize;
use std::collections::BTreeMap;

mod sorted_json;
pub use sorted_json::write_sorted;

/// The event an envelope carries, however its payload is stored: the compact binary encoding
/// of events written since, or the JSON of older stores and of portable logs (older schema
/// versions upcast either way).
pub fn event_of(envelope: &Envelope) -> Result<Event, DecodeError> {
    match &envelope.payload {
        Payload::Binary(bytes) => Event::decode_binary(&envelope.event_type, envelope.schema_version, bytes),
        Payload::Json(value) => Event::decode(&envelope.event_type, envelope.schema_version, value),
    }
}

/// The envelope as a portable log carries it: its payload as JSON. A JSON payload is kept
/// as stored (an older schema version stays older: logs are never rewritten).
pub fn portable(envelope: &Envelope) -> Result<std::borrow::Cow<'_, Envelope>, DecodeError> {
    match &envelope.payload {
        Payload::Json(_) => Ok(std::borrow::Cow::Borrowed(envelope)),
        Payload::Binary(_) => {
            let (_, json) = event_of(envelope)?.encode();
            Ok(std::borrow::Cow::Owned(Envelope { payload: Payload::Json(json), ..envelope.clone() }))
        }
    }
}

/// The canonical text of an envelope: its portable form ([`portable`]) as `serde_json` writes
/// it (fields in declaration order, the payload's keys sorted). An exported line's checksum
/// is computed over exactly this text, and it is the data of the envelope's leaf in the log's
/// Merkle tree: so a log line and the store agree, whatever keeps the store.
pub fn canonical_text(envelope: &Envelope) -> Result<String, DecodeError> {
    let mut text = Vec::new();
    canonical_into(envelope, &mut text)?;
    Ok(String::from_utf8(text).expect("serde_json writes UTF-8"))
}

/// [`canonical_text`], appended to `out`; returns where in `out` the payload's text begins (it
/// ends before the last byte, the envelope's closing brace). A binary payload's event is
/// written as JSON straight from the event ([`write_sorted`]: the text its `serde_json::Value`
/// gives, without building it).
pub fn canonical_into(envelope: &Envelope, out: &mut Vec<u8>) -> Result<usize, DecodeError> {
    let event = match &envelope.payload {
        Payload::Binary(_) => Some(event_of(envelope)?),
        Payload::Json(_) => None,
    };
    let Envelope { position, stream, version, event_type, schema_version, at, command_id, payload } = envelope;
    // The envelope's fields in their declaration order, as its derived `Serialize` writes them.
    serde_json::to_writer(&mut *out, &EnvelopeFields { position, stream, version, event_type, schema_version, at, command_id })
        .expect("envelopes serialise");
    out.pop(); // its closing brace: the payload follows
    out.extend_from_slice(b",\"payload\":");
    let payload_at = out.len();
    match (event, payload) {
        (Some(event), _) => write_sorted(&event, out).expect("events serialise"),
        (None, Payload::Json(value)) => serde_json::to_writer(&mut *out, value).expect("JSON serialises"),
        (None, Payload::Binary(_)) => unreachable!("a binary payload is decoded above"),
    }
    out.push(b'}');
    Ok(payload_at)
}

/// An [`Envelope`]'s fields but its payload, in the same order under the same names.
#[derive(Serialize)]
struct EnvelopeFields<'a> {
    position: &'a u64,
    stream: &'a String,
    version: &'a u64,
    event_type: &'a String,
    schema_version: &'a u32,
    at: &'a Instant,
    command_id: &'a Option<String>,
}

/// The envelope's leaf hash in the log's Merkle tree (RFC 6962: SHA-256 of 0x00 and its
/// [`canonical_text`]).
pub fn leaf_hash(envelope: &Envelope) -> Result<poolbill_merkle::Hash, DecodeError> {
    let mut text = Vec::with_capacity(512);
    canonical_into(envelope, &mut text)?;
    Ok(poolbill_merkle::leaf_hash(&text))
}

/// An event to append at `at`, in the compact binary encoding of its type's latest schema.
pub fn new_event(event: &Event, at: Instant) -> NewEvent {
    let event_type = event.event_type_name();
    let mut bytes = Vec::with_capacity(64);
    event.encode_binary(&mut bytes);
    NewEvent {
        stream: event.stream(),
        event_type: event_type.to_string(),
        schema_version: poolbill_domain::latest_version(event_type),
        at,
        payload: Payload::Binary(bytes),
    }
}

/// The tag of the events about one resource (pool, job, package, or the id a job's bills carry).
pub fn resource_tag(id: &str) -> String {
    format!("resource:{id}")
}

/// The tag of a resource's metered lines (R4, R13: a line per cycle, thousands over a year),
/// apart from the rest of its history, which an explanation reads whole.
pub fn usage_tag(id: &str) -> String {
    format!("usage:{id}")
}

/// The tag of an account's own changes (opening, arrears), apart from its flood of charges.
pub fn account_tag(account: &str) -> String {
    format!("account:{account}")
}

/// The version of [`tags_of`]: a store's index built under another is rebuilt.
pub const TAGS_VERSION: u32 = 2;

/// The prefix of the tags of flow-bill lines by the Beijing month they start in (the month
/// their detail bill is in).
pub const BILL_MONTH: &str = "bill-month:";

/// The tag of the lines whose detail bill is the Beijing month `YYYY-MM`.
pub fn bill_month_tag(month: &str) -> String {
    format!("{BILL_MONTH}{month}")
}

/// The `bill-hour:` tags between which the lines of the Beijing month `YYYY-MM` fall: its
/// first hour's, and the next month's first hour's (excluded).
pub fn bill_hours_of_month(month: &str) -> Option<(String, String)> {
    let first = chrono::NaiveDate::parse_from_str(&format!("{month}-01"), "%Y-%m-%d").ok()?;
    let next = poolbill_domain::time::add_months_clamped(first, 1);
    let hour = |date| bill_hour_tag(poolbill_domain::time::beijing_at(date, 0, 0, 0));
    Some((hour(first), hour(next)))
}

/// The Beijing month (`YYYY-MM`) an instant falls in.
pub fn month_of(t: Instant) -> String {
    let date = beijing_date(t);
    format!("{:04}-{:02}", date.year(), date.month())
}

/// The prefix of the tags that count flow-bill lines by the hour they start in.
pub const BILL_HOUR: &str = "bill-hour:";

/// The tag of the flow-bill lines that start in the hour of `start` (hours since the epoch,
/// zero-padded so that tags sort as hours do): counting them places a line in the bills list
/// without reading every line before it.
pub fn bill_hour_tag(start: Instant) -> String {
    format!("{BILL_HOUR}{:012}", start.timestamp().div_euclid(3600))
}

/// The keys a store indexes an event by (its tags, recorded in bulk after the event: see
/// `poolbill_ledger::catch_up_indexes`), so that the questions asked of one resource (explain,
/// time travel) read its events, not the whole log: the resources it concerns, the account
/// whose standing it changes, and for a flow-bill line the hour and the month it starts in.
pub fn tags_of(event: &Event) -> Vec<String> {
    let resource = |id: &str| vec![resource_tag(id)];
    match event {
        Event::Charged { line } => {
            let own = match line.basis {
                Basis::Usage { .. } | Basis::Package { .. } => usage_tag(&line.resource),
                _ => resource_tag(&line.resource),
            };
            vec![own, bill_hour_tag(line.start), bill_month_tag(&month_of(line.start))]
        }
        Event::PoolPurchased { pool, .. }
        | Event::PoolReady { pool, .. }
        | Event::PoolScaled { pool, .. }
        | Event::PoolRenewed { pool, .. }
        | Event::PoolConverted { pool, .. }
        | Event::PoolDeleted { pool, .. }
        | Event::ExpiryWarned { pool, .. }
        | Event::PoolExpired { pool, .. }
        | Event::PoolFrozen { pool, .. }
        | Event::PoolReleased { pool, .. }
        | Event::PoolUnsubscribed { pool, .. }
        | Event::AutoRenewSet { pool, .. }
        | Event::AutoRenewAttempted { pool, .. } => resource(pool),
        Event::JobStarted { job, billed_as, .. } if billed_as != job => vec![resource_tag(job), resource_tag(billed_as)],
        Event::JobStarted { job, .. } | Event::JobStopped { job, .. } | Event::JobDeleted { job, .. } => resource(job),
        Event::PackageBought { package, .. } | Event::PackageAlerted { package, .. } | Event::PackageExpired { package, .. } => resource(package),
        Event::AccountOpened { account, .. }
        | Event::ArrearsStarted { account, .. }
        | Event::ArrearsFrozen { account }
        | Event::ArrearsReleased { account }
        | Event::ArrearsEnded { account } => vec![account_tag(account)],
        Event::CommandReceived { command, .. } => command.resource().map(resource).unwrap_or_default(),
        Event::PriceSet { .. } | Event::PolicySet { .. } | Event::ToppedUp { .. } | Event::CycleSettled { .. } | Event::CommandRejected { .. } => {
            Vec::new()
        }
    }
}

/// Everything derived from a log prefix.
#[derive(Clone, Debug)]
pub struct Projections {
    /// The domain state (resources, accounts, catalog), by the same `State::apply` that decisions use.
    pub state: State,
    /// Flow bills (R5) in log order — kept only when `keeps_history`.
    pub bills: Vec<FlowBill>,
    /// Refused commands in log order — kept only when `keeps_history`.
    pub rejections: Vec<RejectionRecord>,
    /// Events folded so far.
    pub events: u64,
    pub last_position: u64,
    pub last_instant: Option<Instant>,
    /// Whether bills and refusals, which grow with every event, are kept in memory. A live
    /// engine and a streamed document leave them to the log and keep only what is live.
    pub keeps_history: bool,
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

impl Default for Projections {
    /// [`Projections::new`]: history kept.
    fn default() -> Projections {
        Projections::new()
    }
}

impl Projections {
    /// Projections that keep every bill and refusal in memory (small logs, tests, the tools
    /// that need them all at once).
    pub fn new() -> Projections {
        Projections { keeps_history: true, ..Projections::live() }
    }

    /// Projections of what is live only: state and counters, bounded by live resources.
    pub fn live() -> Projections {
        Projections {
            state: State::default(),
            bills: Vec::new(),
            rejections: Vec::new(),
            events: 0,
            last_position: 0,
            last_instant: None,
            keeps_history: false,
        }
    }

    /// Fold one stored envelope: decode (upcasting older schema versions), then apply.
    pub fn apply(&mut self, envelope: &Envelope) -> Result<(), ProjectionError> {
        let event = event_of(envelope).map_err(|source| ProjectionError { position: envelope.position, source })?;
        self.apply_event(envelope.position, envelope.at, &event);
        Ok(())
    }

    /// Fold one decoded event recorded at `position` and instant `at`.
    pub fn apply_event(&mut self, position: u64, at: Instant, event: &Event) {
        self.state.apply(event, at);
        match event {
            _ if !self.keeps_history => {}
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
        let mut details = DetailBills::default();
        for bill in &self.bills {
            details.add(&bill.line);
        }
        details.into_rows()
    }

    /// The contract's output document (`scenario-format.md`).
    pub fn document(&self) -> Document {
        Document {
            bills: self.flow_bills().into_iter().map(BillView::of).collect(),
            resources: resource_views(&self.state),
            accounts: account_views(&self.state),
            rejections: self.rejections.iter().map(RejectionView::of).collect(),
            events: self.events,
            detail_bills: self.detail_bills().into_iter().map(DetailView::of).collect(),
        }
    }
}

/// R5 detail bills being summed: per Beijing calendar month (of the line's start), account,
/// resource and billing mode. Rows grow with resources × months, not with lines.
#[derive(Clone, Debug, Default)]
pub struct DetailBills {
    /// By month, account, resource and mode, nested so that a line finds its row by reference,
    /// without making a key of its own.
    groups: BTreeMap<String, Accounts>,
    /// The month of the last line added, and its year and month.
    month: String,
    month_of: Option<(i32, u32)>,
    /// The node-hours of the last usage line added, by its nodes, seconds and covered
    /// node-seconds.
    usage_hours: Option<((u32, i64, i64), Decimal)>,
}

/// A month's rows by account, then resource; a resource's rows (one a mode, nearly always one)
/// in a list made with room for one, put in the modes' order by [`DetailBills::into_rows`]: a map
/// of one row took a whole B-tree node, eleven rows' room (2 KB a resource and month).
type Accounts = BTreeMap<String, BTreeMap<String, Vec<DetailBill>>>;

/// The value under `key`, made (with `make`) if there is none yet.
fn slot<'m, V>(map: &'m mut BTreeMap<String, V>, key: &str, make: impl FnOnce() -> V) -> &'m mut V {
    if !map.contains_key(key) {
        map.insert(key.to_string(), make());
    }
    map.get_mut(key).expect("just made")
}

impl DetailBills {
    /// Add one flow-bill line to its month's row.
    pub fn add(&mut self, line: &BillLine) {
        use std::fmt::Write;
        let date = beijing_date(line.start);
        if self.month_of != Some((date.year(), date.month())) {
            self.month.clear();
            write!(self.month, "{:04}-{:02}", date.year(), date.month()).expect("a String takes what is written");
            self.month_of = Some((date.year(), date.month()));
        }
        let month = &self.month;
        let accounts = slot(&mut self.groups, month, BTreeMap::new);
        let resources = slot(accounts, &line.account, BTreeMap::new);
        let modes = slot(resources, &line.resource, || Vec::with_capacity(1));
        let mode = line.mode.as_str();
        let at = match modes.iter().position(|row| row.mode == mode) {
            Some(at) => at,
            None => {
                modes.push(DetailBill {
                    month: month.clone(),
                    account: line.account.clone(),
                    resource: line.resource.clone(),
                    mode,
                    usage_hours: Decimal::ZERO,
                    amounts: Amounts::zero(),
                    lines: 0,
                });
                modes.len() - 1
            }
        };
        let entry = &mut modes[at];
        match &line.basis {
            // Node-hours billed on demand, and those a package covered (mode `package`).
            Basis::Usage { nodes, seconds, covered_node_seconds, .. } => {
                // Most usage lines are an hour of the same nodes: the quotient is kept.
                let key = (*nodes, *seconds, *covered_node_seconds);
                let hours = match self.usage_hours {
                    Some((last, hours)) if last == key => hours,
                    _ => {
                        let hours = (Decimal::from(*nodes) * Decimal::from(*seconds) - Decimal::from(*covered_node_seconds)) / Decimal::from(3600);
                        self.usage_hours = Some((key, hours));
                        hours
                    }
                };
                entry.usage_hours += hours
            }
            Basis::Package { node_seconds, .. } => entry.usage_hours += Decimal::from(*node_seconds) / Decimal::from(3600),
            _ => {}
        }
        entry.amounts = entry.amounts + line.amounts;
        entry.lines += 1;
    }

    /// The rows, by month, account, resource and mode.
    pub fn into_rows(self) -> Vec<DetailBill> {
        let by_mode = |mut rows: Vec<DetailBill>| {
            rows.sort_unstable_by_key(|row| row.mode);
            rows
        };
        self.groups.into_values().flat_map(BTreeMap::into_values).flat_map(BTreeMap::into_values).flat_map(by_mode).collect()
    }
}

impl BillView {
    /// How the document shows a flow-bill line.
    pub fn of(b: &FlowBill) -> BillView {
        BillView::of_line(b.position, &b.line)
    }

    /// How the document shows `l`, recorded at log position `position`.
    pub fn of_line(position: u64, l: &BillLine) -> BillView {
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
            event: position,
        }
    }
}

impl RejectionView {
    /// How the document shows a refused command.
    pub fn of(r: &RejectionRecord) -> RejectionView {
        RejectionView {
            index: r.index,
            r#type: r.command.clone(),
            rule: r.rule.to_string(),
            reason: r.reason.clone(),
            at: to_beijing(r.at).to_rfc3339(),
        }
    }
}

impl DetailView {
    /// How the document shows a detail bill.
    pub fn of(d: DetailBill) -> DetailView {
        DetailView {
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
        }
    }
}

/// The document's `accounts`: each account's balance and whether it is in arrears.
pub fn account_views(state: &State) -> Vec<AccountView> {
    state.accounts.values().map(|a| AccountView { id: a.id.clone(), balance: fmt_cents(a.balance), in_arrears: a.arrears.is_some() }).collect()
}

/// The document's `resources`: pools, jobs and packages, by id.
pub fn resource_views(state: &State) -> Vec<ResourceView> {
    resource_views_by_id(state).collect()
}

/// [`resource_views`] one at a time, so that a document is written without holding them all
/// (with jobs started and deleted every day, a year's were 112 MB as one JSON text): the
/// state's three maps merged by id (an id in two of them, which R17 never lets happen, comes
/// pool first, then job, then package, as a stable sort would put them).
pub fn resource_views_by_id(state: &State) -> impl Iterator<Item = ResourceView> + '_ {
    let mut pools = state.pools.values().map(pool_view).peekable();
    let mut jobs = state.jobs.values().map(job_view).peekable();
    let mut packages = state.packages.values().map(package_view).peekable();
    std::iter::from_fn(move || {
        let next = [pools.peek().map(|v| &v.id), jobs.peek().map(|v| &v.id), packages.peek().map(|v| &v.id)]
            .into_iter()
            .enumerate()
            .filter_map(|(kind, id)| id.map(|id| (id, kind)))
            .min()
            .map(|(_, kind)| kind);
        match next? {
            0 => pools.next(),
            1 => jobs.next(),
            _ => packages.next(),
        }
    })
}

/// The view of the resource `id`, if the state has one (pool, job or package).
pub fn resource_view(state: &State, id: &str) -> Option<ResourceView> {
    state.pools.get(id).map(pool_view).or_else(|| state.jobs.get(id).map(job_view)).or_else(|| state.packages.get(id).map(package_view))
}

fn pool_view(p: &Pool) -> ResourceView {
    ResourceView {
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
    }
}

fn job_view(j: &Job) -> ResourceView {
    ResourceView {
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
    }
}

fn package_view(p: &Package) -> ResourceView {
    ResourceView {
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

/// A flow-bill line as the document shows it. Its JSON is [`BillJson`]'s.
#[derive(Clone, Debug, PartialEq)]
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

impl Serialize for BillView {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let text = Shown::Text;
        BillJson {
            resource: &self.resource,
            account: &self.account,
            mode: self.mode,
            item: self.item,
            start: text(&self.start),
            end: text(&self.end),
            list_price: text(&self.list_price),
            discount: text(&self.discount),
            round_off: text(&self.round_off),
            payable: text(&self.payable),
            event: self.event,
        }
        .serialize(serializer)
    }
}

/// The JSON of a flow-bill line in the document — [`BillView`]'s, which is written through it —
/// straight from the line: its text made as it is written, no String of each field first
/// (a streamed document writes one per line of the log).
#[derive(Serialize)]
pub struct BillJson<'a> {
    resource: &'a str,
    account: &'a str,
    mode: &'a str,
    item: &'a str,
    start: Shown<'a>,
    end: Shown<'a>,
    list_price: Shown<'a>,
    discount: Shown<'a>,
    round_off: Shown<'a>,
    payable: Shown<'a>,
    event: u64,
}

impl BillJson<'_> {
    /// A line's JSON, as [`BillView::of`] shows it.
    pub fn of(b: &FlowBill) -> BillJson<'_> {
        BillJson::line(b.position, &b.line)
    }

    /// [`BillJson::of`] a line recorded at `position`.
    pub fn line(position: u64, l: &BillLine) -> BillJson<'_> {
        BillJson {
            resource: &l.resource,
            account: &l.account,
            mode: l.mode.as_str(),
            item: l.item.as_str(),
            start: Shown::Beijing(l.start),
            end: Shown::Beijing(l.end),
            list_price: Shown::Exact(l.amounts.list_price),
            discount: Shown::Exact(l.amounts.discount),
            round_off: Shown::Exact(l.amounts.round_off),
            payable: Shown::Cents(l.amounts.payable),
            event: position,
        }
    }
}

/// A text field of [`BillJson`]: made already, or made as it is written.
enum Shown<'a> {
    Text(&'a str),
    /// `to_beijing(t).to_rfc3339()`.
    Beijing(Instant),
    /// `fmt_exact`.
    Exact(Decimal),
    /// `fmt_cents`.
    Cents(Decimal),
}

impl Serialize for Shown<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Shown::Text(text) => serializer.serialize_str(text),
            Shown::Beijing(at) => serializer.collect_str(&BeijingText(*at)),
            Shown::Exact(amount) => serializer.collect_str(&Exact(*amount)),
            Shown::Cents(amount) => serializer.collect_str(&Cents(*amount)),
        }
    }
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

#[cfg(test)]
mod detail_tests {
    use super::*;
    use poolbill_domain::time::parse_instant;
    use poolbill_domain::{BillingMode, Item};

    fn line(resource: &str, mode: BillingMode, start: &str, payable: i64) -> BillLine {
        let start = parse_instant(start).expect("an instant");
        let amount = Decimal::from(payable);
        BillLine {
            resource: resource.into(),
            account: "acct-1".into(),
            mode,
            item: Item::Package,
            start,
            end: start,
            amounts: Amounts { list_price: amount, discount: Decimal::ZERO, round_off: Decimal::ZERO, payable: amount },
            basis: Basis::PackagePrice { spec: "s".into(), quantity: 1, hours: 1, price: amount },
            balance: Decimal::ZERO,
        }
    }

    /// R5: one row per month, account, resource and mode, in that order whatever order the
    /// lines came in (a resource's modes are kept in a list, put in order at the end).
    #[test]
    fn detail_rows_are_summed_per_mode_and_ordered_by_month_account_resource_mode() {
        let mut details = DetailBills::default();
        for l in [
            line("pool-2", BillingMode::Package, "2023-04-02T00:00:00+08:00", 5),
            line("pool-2", BillingMode::OnDemand, "2023-04-02T01:00:00+08:00", 1),
            line("pool-1", BillingMode::Monthly, "2023-04-03T00:00:00+08:00", 30),
            line("pool-2", BillingMode::Package, "2023-04-04T00:00:00+08:00", 7),
            line("pool-2", BillingMode::Monthly, "2023-04-05T00:00:00+08:00", 2),
            line("pool-2", BillingMode::OnDemand, "2023-05-01T00:00:00+08:00", 3),
        ] {
            details.add(&l);
        }
        let rows: Vec<(String, String, &str, Decimal, u64)> =
            details.into_rows().into_iter().map(|d| (d.month, d.resource, d.mode, d.amounts.payable, d.lines)).collect();
        let expected = [
            ("2023-04", "pool-1", "monthly", 30, 1),
            ("2023-04", "pool-2", "monthly", 2, 1),
            ("2023-04", "pool-2", "on_demand", 1, 1),
            ("2023-04", "pool-2", "package", 12, 2),
            ("2023-05", "pool-2", "on_demand", 3, 1),
        ];
        let expected: Vec<(String, String, &str, Decimal, u64)> =
            expected.iter().map(|(m, r, mode, p, n)| (m.to_string(), r.to_string(), *mode, Decimal::from(*p), *n)).collect();
        assert_eq!(rows, expected);
    }
}

#[cfg(test)]
mod tag_tests {
    use super::*;

    /// A bill's number is found by counting the lines of its month, then of its hours: stores
    /// keep counts of exactly the tags under `COUNTED_TAGS`, so both must be among them, and no
    /// tag of a resource (thousands a year) may be.
    #[test]
    fn the_bill_tags_and_only_they_are_counted_tags() {
        use poolbill_store::COUNTED_TAGS;
        let at = poolbill_domain::time::parse_instant("2023-04-01T10:30:00+08:00").unwrap();
        assert!(bill_hour_tag(at).starts_with(COUNTED_TAGS) && BILL_HOUR.starts_with(COUNTED_TAGS));
        assert!(BILL_MONTH.starts_with(COUNTED_TAGS));
        for tag in [resource_tag("bill-1"), usage_tag("bill-1"), account_tag("bill-1")] {
            assert!(!tag.starts_with(COUNTED_TAGS), "{tag}");
        }
    }
}
