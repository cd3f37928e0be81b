//! Reading a scenario (`scenario-format.md`) strictly: every problem is reported with the path
//! of the field at fault (`commands[3].nodes`), and nothing is run unless the whole file is valid.

use chrono::{DateTime, Datelike, Timelike};
use poolbill_domain::time::to_beijing;
use poolbill_domain::{BillingMode, Command, Instant, JobKind, Level, Policy, PoolType, Price, Term, DEFAULT_LEVEL};
use rust_decimal::Decimal;
use serde_json::{Map, Value};
use std::collections::BTreeSet;
use std::str::FromStr;

/// A valid scenario, commands in the order they run (by `at`, ties in file order).
///
/// The commands are kept as their place in the file's text, checked once when it was read and
/// read again as each runs ([`Scenario::steps`]): parsed, a command took about 400 bytes (a
/// 14 MB file of 127,000 commands held over 100 MB through the whole run), its place 40.
#[derive(Clone, Debug, PartialEq)]
pub struct Scenario {
    pub name: String,
    pub catalog: Vec<(String, Price)>,
    pub policy: Option<Policy>,
    pub accounts: Vec<AccountSpec>,
    pub until: Instant,
    text: std::sync::Arc<str>,
    order: Vec<Placed>,
}

/// Where a checked command is: its index in `commands`, its instant, its bytes in the text.
#[derive(Clone, Debug, PartialEq)]
struct Placed {
    index: usize,
    at: Instant,
    span: std::ops::Range<usize>,
}

impl Scenario {
    /// How many commands it has.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// The instant of its first command.
    pub fn first_at(&self) -> Option<Instant> {
        self.order.first().map(|p| p.at)
    }

    /// Its commands in the order they run, from the `from`th on, each read again from the text.
    pub fn steps_from(&self, from: usize) -> impl ExactSizeIterator<Item = Step> + '_ {
        self.order[from.min(self.order.len())..].iter().map(|placed| self.step(placed))
    }

    /// Its commands in the order they run.
    pub fn steps(&self) -> impl ExactSizeIterator<Item = Step> + '_ {
        self.steps_from(0)
    }

    fn step(&self, placed: &Placed) -> Step {
        // Checked when the scenario was read: reading it again gives the same command.
        let entry: Value = serde_json::from_str(&self.text[placed.span.clone()]).expect("a command checked when the scenario was read is JSON");
        let (at, command) = command(&entry, &format!("commands[{}]", placed.index)).expect("a command checked when the scenario was read is valid");
        debug_assert_eq!(at, placed.at);
        Step { index: placed.index, at, command }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct AccountSpec {
    pub id: String,
    pub balance: Decimal,
    pub level: String,
    pub discount: Decimal,
}

/// One command of the file: its index in `commands`, its instant, the command.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub index: usize,
    pub at: Instant,
    pub command: Command,
}

/// What is wrong with an input, and where (`commands[3].nodes`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ScenarioError {
    pub path: String,
    pub message: String,
}

type Result<T> = std::result::Result<T, ScenarioError>;

fn err<T>(path: impl Into<String>, message: impl Into<String>) -> Result<T> {
    Err(ScenarioError { path: path.into(), message: message.into() })
}

/// Largest amount accepted anywhere: far beyond any bill, far below where arithmetic overflows.
const MAX_MONEY: i64 = 1_000_000_000_000;
const MAX_NODES: u64 = 100_000;
const MAX_MONTHS: u64 = 1200;
const MAX_ID_LEN: usize = 256;
const MIN_YEAR: i32 = 1970;
const MAX_SPAN_DAYS: i64 = 3660;
const MAX_YEAR: i32 = 2999;
/// Fields any object may carry for people and that are otherwise ignored.
const REMARKS: [&str; 2] = ["note", "comment"];

pub fn parse(text: &str) -> Result<Scenario> {
    scenario_of(text, read_top(text)?)
}

fn scenario_of(text: &str, read: ReadTop) -> Result<Scenario> {
    let value = read.top;
    let top = object(&value, "(file)")?;
    allow_only(top, "", &["name", "catalog", "accounts", "commands", "until", "policy"])?;
    let name = match top.get("name") {
        None | Some(Value::Null) => "scenario".to_string(),
        Some(_) => id(top, "name", "")?,
    };
    let policy = match top.get("policy") {
        None | Some(Value::Null) => None,
        Some(v) => Some(policy(v, "policy")?),
    };
    let levels = policy.clone().unwrap_or_default();

    let mut catalog = Vec::new();
    let mut specs = BTreeSet::new();
    for (i, entry) in array_opt(top, "catalog", "")?.iter().enumerate() {
        let path = format!("catalog[{i}]");
        let obj = object(entry, &path)?;
        allow_only(obj, &path, &["spec", "hourly", "monthly", "yearly"])?;
        let spec = id(obj, "spec", &path)?;
        if !specs.insert(spec.clone()) {
            return err(format!("{path}.spec"), format!("spec {spec:?} is listed twice"));
        }
        let price = price_fields(obj, &path)?;
        catalog.push((spec, price));
    }

    let mut accounts = Vec::new();
    let mut ids = BTreeSet::new();
    for (i, entry) in array_opt(top, "accounts", "")?.iter().enumerate() {
        let path = format!("accounts[{i}]");
        let obj = object(entry, &path)?;
        allow_only(obj, &path, &["id", "balance", "level", "discount"])?;
        let account = id(obj, "id", &path)?;
        if !ids.insert(account.clone()) {
            return err(format!("{path}.id"), format!("account {account:?} is listed twice"));
        }
        let balance = match obj.get("balance") {
            None => Decimal::ZERO,
            Some(_) => money(obj, "balance", &path, Sign::Any, 2)?,
        };
        let level = opt_id(obj, "level", &path)?.unwrap_or_else(|| DEFAULT_LEVEL.to_string());
        if !levels.levels.contains_key(&level) {
            let known: Vec<&String> = levels.levels.keys().collect();
            return err(format!("{path}.level"), format!("unknown customer level {level:?} (the policy defines {known:?})"));
        }
        let discount = discount(obj, &path)?;
        accounts.push(AccountSpec { id: account, balance, level, discount });
    }

    let entries = array(top, "commands", "")?;
    let mut commands = match read.commands {
        Some(streamed) => streamed?,
        None => {
            // Read whole only when it could not be read as a stream: to name what is wrong.
            for (index, entry) in entries.iter().enumerate() {
                step_at(index, entry)?;
            }
            return err("commands", "could not be read one command at a time");
        }
    };
    // Commands run in order of `at`; a stable sort keeps ties in file order.
    commands.sort_by_key(|s| s.at);

    let until = match top.get("until") {
        None | Some(Value::Null) => commands.last().map(|s| s.at).unwrap_or_else(|| to_beijing(DateTime::UNIX_EPOCH.fixed_offset())),
        Some(_) => instant(top, "until", "")?,
    };
    if let Some(late) = commands.iter().find(|s| s.at > until) {
        return err(format!("commands[{}].at", late.index), format!("{} is after until {}", late.at.to_rfc3339(), until.to_rfc3339()));
    }
    // Every hour of a running pool is settled: a scenario spans at most ten years.
    if let Some(first) = commands.first() {
        if until - first.at > chrono::Duration::days(MAX_SPAN_DAYS) {
            return err(
                "until",
                format!("{} is more than {MAX_SPAN_DAYS} days after the first command ({})", until.to_rfc3339(), first.at.to_rfc3339()),
            );
        }
    }
    Ok(Scenario { name, catalog, policy, accounts, until, text: text.into(), order: commands })
}

/// A scenario's top level as read: `top` holds every field as JSON but an array `commands`
/// (there an empty array, so that the checks of the fields see it), whose elements were each
/// turned into a step as they were read: a year of a region's commands is never one JSON tree
/// (it took eight times the file's size).
struct ReadTop {
    top: Value,
    /// Where each command of `commands` is, when it was read as an array, or the first command
    /// at fault.
    commands: Option<Result<Vec<Placed>>>,
}

fn read_top(text: &str) -> Result<ReadTop> {
    let mut de = serde_json::Deserializer::from_str(text);
    let streamed = serde::Deserializer::deserialize_map(&mut de, TopVisitor { text }).and_then(|read| de.end().map(|()| read));
    match streamed {
        Ok(read) => Ok(read),
        // Not JSON, or not an object with an array of commands: read whole, as before, so that
        // the error is the same (named by serde, or by `parse`'s checks).
        Err(_) => read_whole(text),
    }
}

/// The file read as one JSON tree.
fn read_whole(text: &str) -> Result<ReadTop> {
    let top: Value = serde_json::from_str(text)
        .map_err(|e| ScenarioError { path: "(file)".into(), message: format!("not valid JSON at line {} column {}: {e}", e.line(), e.column()) })?;
    Ok(ReadTop { top, commands: None })
}

/// `commands[index]` as a step.
fn step_at(index: usize, entry: &Value) -> Result<Step> {
    let (at, command) = command(entry, &format!("commands[{index}]"))?;
    Ok(Step { index, at, command })
}

struct TopVisitor<'t> {
    text: &'t str,
}

impl<'de> serde::de::Visitor<'de> for TopVisitor<'de> {
    type Value = ReadTop;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a scenario object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> std::result::Result<ReadTop, A::Error> {
        let mut fields = Map::new();
        let mut commands = None;
        // A key given twice: the last one counts, as in a JSON object read whole.
        while let Some(key) = map.next_key::<String>()? {
            if key == "commands" {
                commands = Some(map.next_value_seed(CommandsSeed { text: self.text })?);
                fields.insert(key, Value::Array(Vec::new()));
            } else {
                fields.insert(key, map.next_value::<Value>()?);
            }
        }
        Ok(ReadTop { top: Value::Object(fields), commands })
    }
}

/// An array of commands read element by element (anything else fails, and the file is read
/// whole instead).
struct CommandsSeed<'t> {
    text: &'t str,
}

impl<'de> serde::de::DeserializeSeed<'de> for CommandsSeed<'de> {
    type Value = Result<Vec<Placed>>;
    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> std::result::Result<Self::Value, D::Error> {
        deserializer.deserialize_seq(CommandsVisitor { text: self.text })
    }
}

struct CommandsVisitor<'t> {
    text: &'t str,
}

impl<'de> serde::de::Visitor<'de> for CommandsVisitor<'de> {
    type Value = Result<Vec<Placed>>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an array of commands")
    }

    /// After a command at fault the rest are only read through: the whole file must still be
    /// JSON, and that is reported first, as when it was read whole.
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Self::Value, A::Error> {
        let mut steps = Vec::new();
        let mut fault = None;
        while let Some(raw) = seq.next_element::<&'de serde_json::value::RawValue>()? {
            if fault.is_some() {
                continue;
            }
            let checked = serde_json::from_str::<Value>(raw.get()).map_err(serde::de::Error::custom)?;
            match step_at(steps.len(), &checked) {
                Ok(step) => {
                    // The raw value borrows from the text: its place is where its bytes begin.
                    let start = raw.get().as_ptr() as usize - self.text.as_ptr() as usize;
                    steps.push(Placed { index: step.index, at: step.at, span: start..start + raw.get().len() });
                }
                Err(e) => fault = Some(e),
            }
        }
        Ok(match fault {
            Some(e) => Err(e),
            None => Ok(steps),
        })
    }
}

/// What a policy file sets: the policy (if `levels` is given) and prices by spec.
pub type PolicyFile = (Option<Policy>, Vec<(String, Price)>);

/// A policy file (scenario-format.md: the `policy` object saved alone, `{"levels": …}`), which
/// may also carry a `catalog` like a scenario's: the terms of a what-if replay.
pub fn parse_policy_file(text: &str) -> Result<PolicyFile> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| ScenarioError { path: "(file)".into(), message: format!("not valid JSON at line {} column {}: {e}", e.line(), e.column()) })?;
    let top = object(&value, "(file)")?;
    allow_only(top, "", &["levels", "catalog"])?;
    let policy = if top.contains_key("levels") { Some(policy(&value, "")?) } else { None };
    let mut catalog = Vec::new();
    for (i, entry) in array_opt(top, "catalog", "")?.iter().enumerate() {
        let path = format!("catalog[{i}]");
        let obj = object(entry, &path)?;
        allow_only(obj, &path, &["spec", "hourly", "monthly", "yearly"])?;
        catalog.push((id(obj, "spec", &path)?, price_fields(obj, &path)?));
    }
    if policy.is_none() && catalog.is_empty() {
        return err("(file)", "a policy file needs levels, a catalog, or both");
    }
    Ok((policy, catalog))
}

/// One command object, as in a scenario's `commands` (also one line of `poolbill serve`).
/// Besides the contract's types it reads `open_account` and `set_price`.
pub fn command(value: &Value, path: &str) -> Result<(Instant, Command)> {
    let obj = object(value, path)?;
    let kind = string(obj, "type", path)?;
    let at = instant(obj, "at", path)?;
    let p = path;
    let command = match kind.as_str() {
        "top_up" => {
            allow_only(obj, p, &["at", "type", "account", "amount"])?;
            Command::TopUp { account: id(obj, "account", p)?, amount: money(obj, "amount", p, Sign::Positive, 2)? }
        }
        "purchase" => {
            allow_only(obj, p, &["at", "type", "account", "pool", "spec", "nodes", "mode", "months", "years", "pool_type", "region", "ready"])?;
            let mode = match string(obj, "mode", p)?.as_str() {
                "on_demand" => BillingMode::OnDemand,
                "monthly" => BillingMode::Monthly,
                "yearly" => BillingMode::Yearly,
                other => return err(format!("{p}.mode"), format!("{other:?} is not on_demand, monthly or yearly")),
            };
            let term = if mode == BillingMode::OnDemand {
                if obj.contains_key("months") || obj.contains_key("years") {
                    return err(format!("{p}.months"), "an on_demand purchase takes no months or years");
                }
                None
            } else {
                Some(term_for(obj, p, mode)?)
            };
            let pool_type = match opt_string(obj, "pool_type", p)?.as_deref() {
                None | Some("dedicated") => PoolType::Dedicated,
                Some("public") => PoolType::Public,
                Some(other) => return err(format!("{p}.pool_type"), format!("{other:?} is not dedicated or public")),
            };
            Command::Purchase {
                account: id(obj, "account", p)?,
                pool: id(obj, "pool", p)?,
                spec: id(obj, "spec", p)?,
                nodes: nodes(obj, "nodes", p)?,
                mode,
                term,
                pool_type,
                region: opt_id(obj, "region", p)?,
                ready: opt_bool(obj, "ready", p)?.unwrap_or(false),
            }
        }
        "ready" | "delete" | "unsubscribe" => {
            allow_only(obj, p, &["at", "type", "pool"])?;
            let pool = id(obj, "pool", p)?;
            match kind.as_str() {
                "ready" => Command::Ready { pool },
                "delete" => Command::Delete { pool },
                _ => Command::Unsubscribe { pool },
            }
        }
        "renew" => {
            allow_only(obj, p, &["at", "type", "pool", "months", "years", "align_day"])?;
            let align_day = match obj.get("align_day") {
                None | Some(Value::Null) => None,
                Some(_) => Some(integer(obj, "align_day", p, 1, 28)? as u32),
            };
            Command::Renew { pool: id(obj, "pool", p)?, term: any_term(obj, p)?, align_day }
        }
        "set_auto_renew" => {
            allow_only(obj, p, &["at", "type", "pool", "enabled", "months", "years", "days_before", "count"])?;
            let enabled = bool_field(obj, "enabled", p)?;
            let term = if enabled || obj.contains_key("months") || obj.contains_key("years") { Some(any_term(obj, p)?) } else { None };
            let days_before = match obj.get("days_before") {
                None | Some(Value::Null) => 7,
                Some(_) => integer(obj, "days_before", p, 1, 7)? as u32,
            };
            let count = match obj.get("count") {
                None | Some(Value::Null) => None,
                Some(_) => Some(integer(obj, "count", p, 1, 1000)? as u32),
            };
            Command::SetAutoRenew { pool: id(obj, "pool", p)?, enabled, term, days_before, count }
        }
        "convert" => {
            allow_only(obj, p, &["at", "type", "pool", "mode", "months", "years"])?;
            let mode = match string(obj, "mode", p)?.as_str() {
                "monthly" => BillingMode::Monthly,
                "yearly" => BillingMode::Yearly,
                other => return err(format!("{p}.mode"), format!("{other:?} is not monthly or yearly")),
            };
            Command::Convert { pool: id(obj, "pool", p)?, term: term_for(obj, p, mode)? }
        }
        "scale" => {
            allow_only(obj, p, &["at", "type", "pool", "nodes", "spec"])?;
            let nodes = if obj.contains_key("nodes") { Some(nodes(obj, "nodes", p)?) } else { None };
            let spec = opt_id(obj, "spec", p)?;
            if nodes.is_none() && spec.is_none() {
                return err(format!("{p}.nodes"), "scale needs nodes, spec or both");
            }
            Command::Scale { pool: id(obj, "pool", p)?, nodes, spec }
        }
        "buy_package" => {
            allow_only(obj, p, &["at", "type", "account", "package", "spec", "quantity", "hours", "valid_days", "price", "region", "alert_below"])?;
            let alert_below = match obj.get("alert_below") {
                None | Some(Value::Null) => None,
                Some(Value::Number(_)) => Some(Decimal::from(integer(obj, "alert_below", p, 0, MAX_NODES * 100_000)?)),
                Some(_) => Some(money(obj, "alert_below", p, Sign::NonNegative, 8)?),
            };
            Command::BuyPackage {
                account: id(obj, "account", p)?,
                package: id(obj, "package", p)?,
                spec: id(obj, "spec", p)?,
                quantity: integer(obj, "quantity", p, 1, MAX_NODES)? as u32,
                hours: integer(obj, "hours", p, 1, 1_000_000)? as u32,
                valid_days: integer(obj, "valid_days", p, 1, 36_500)? as u32,
                price: money(obj, "price", p, Sign::NonNegative, 2)?,
                region: opt_id(obj, "region", p)?,
                alert_below,
            }
        }
        "start_job" => {
            allow_only(obj, p, &["at", "type", "account", "job", "kind", "spec", "nodes", "pool", "model", "disk_gb", "disk_hourly", "region"])?;
            let kind = match string(obj, "kind", p)?.as_str() {
                "training" => JobKind::Training,
                "notebook" => JobKind::Notebook,
                "service" => JobKind::Service,
                "workflow" => JobKind::Workflow,
                "auto_learning" => JobKind::AutoLearning,
                other => return err(format!("{p}.kind"), format!("{other:?} is not training, notebook, service, workflow or auto_learning")),
            };
            let model = opt_id(obj, "model", p)?;
            if kind == JobKind::Service && model.is_none() {
                return err(format!("{p}.model"), "a service needs the id of the model it serves (R5)");
            }
            if kind == JobKind::Notebook && !obj.contains_key("disk_hourly") {
                return err(format!("{p}.disk_hourly"), "a notebook needs its EVS disk's price per GB-hour (R14)");
            }
            Command::StartJob {
                account: id(obj, "account", p)?,
                job: id(obj, "job", p)?,
                kind,
                spec: id(obj, "spec", p)?,
                nodes: nodes(obj, "nodes", p)?,
                pool: opt_id(obj, "pool", p)?,
                model,
                disk_gb: match obj.get("disk_gb") {
                    None | Some(Value::Null) => None,
                    Some(_) => Some(integer(obj, "disk_gb", p, 1, 1_000_000)? as u32),
                },
                disk_hourly: match obj.get("disk_hourly") {
                    None | Some(Value::Null) => None,
                    Some(_) => Some(money(obj, "disk_hourly", p, Sign::NonNegative, 8)?),
                },
                region: opt_id(obj, "region", p)?,
            }
        }
        "stop_job" | "delete_job" => {
            allow_only(obj, p, &["at", "type", "job"])?;
            let job = id(obj, "job", p)?;
            if kind == "stop_job" {
                Command::StopJob { job }
            } else {
                Command::DeleteJob { job }
            }
        }
        "open_account" => {
            allow_only(obj, p, &["at", "type", "account", "balance", "level", "discount"])?;
            Command::OpenAccount {
                account: id(obj, "account", p)?,
                balance: money(obj, "balance", p, Sign::Any, 2)?,
                level: opt_id(obj, "level", p)?.unwrap_or_else(|| DEFAULT_LEVEL.to_string()),
                discount: discount(obj, p)?,
            }
        }
        "set_price" => {
            allow_only(obj, p, &["at", "type", "spec", "hourly", "monthly", "yearly"])?;
            Command::SetPrice { spec: id(obj, "spec", p)?, price: price_fields(obj, p)? }
        }
        other => return err(format!("{p}.type"), format!("unknown command type {other:?}")),
    };
    Ok((at, command))
}

fn policy(value: &Value, path: &str) -> Result<Policy> {
    let obj = object(value, path)?;
    if !path.is_empty() {
        allow_only(obj, path, &["levels"])?;
    }
    let levels_path = join(path, "levels");
    let levels = object(obj.get("levels").ok_or_else(|| missing(&levels_path))?, &levels_path)?;
    let mut policy = Policy { levels: Default::default() };
    for (name, level) in levels {
        let p = format!("{levels_path}.{name}");
        let obj = object(level, &p)?;
        allow_only(obj, &p, &["grace_days", "retention_days"])?;
        policy.levels.insert(
            name.clone(),
            Level {
                grace_days: integer(obj, "grace_days", &p, 0, 3650)? as u32,
                retention_days: integer(obj, "retention_days", &p, 0, 3650)? as u32,
            },
        );
    }
    if policy.levels.is_empty() {
        return err(levels_path, "at least one customer level is needed");
    }
    Ok(policy)
}

fn price_fields(obj: &Map<String, Value>, path: &str) -> Result<Price> {
    let opt = |key: &str| -> Result<Option<Decimal>> {
        match obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(_) => money(obj, key, path, Sign::NonNegative, 8).map(Some),
        }
    };
    let price = Price { hourly: opt("hourly")?, monthly: opt("monthly")?, yearly: opt("yearly")? };
    if price.hourly.is_none() && price.monthly.is_none() && price.yearly.is_none() {
        return err(format!("{path}.hourly"), "a catalog entry needs at least one of hourly, monthly, yearly");
    }
    Ok(price)
}

fn discount(obj: &Map<String, Value>, path: &str) -> Result<Decimal> {
    match obj.get("discount") {
        None | Some(Value::Null) => Ok(Decimal::ZERO),
        Some(_) => {
            let rate = money(obj, "discount", path, Sign::NonNegative, 8)?;
            if rate >= Decimal::ONE {
                return err(format!("{path}.discount"), format!("a discount rate is below 1 (R2), not {rate}"));
            }
            Ok(rate)
        }
    }
}

/// months for a monthly order, years for a yearly one.
fn term_for(obj: &Map<String, Value>, path: &str, mode: BillingMode) -> Result<Term> {
    let term = any_term(obj, path)?;
    match (mode, term) {
        (BillingMode::Monthly, Term::Years(_)) => err(format!("{path}.years"), "a monthly order takes months"),
        (BillingMode::Yearly, Term::Months(_)) => err(format!("{path}.months"), "a yearly order takes years"),
        _ => Ok(term),
    }
}

/// Exactly one of months or years.
fn any_term(obj: &Map<String, Value>, path: &str) -> Result<Term> {
    match (obj.contains_key("months"), obj.contains_key("years")) {
        (true, true) => err(format!("{path}.years"), "give months or years, not both"),
        (true, false) => Ok(Term::Months(integer(obj, "months", path, 1, MAX_MONTHS)? as u32)),
        (false, true) => Ok(Term::Years(integer(obj, "years", path, 1, MAX_MONTHS / 12)? as u32)),
        (false, false) => Err(missing(&format!("{path}.months"))),
    }
}

fn nodes(obj: &Map<String, Value>, key: &str, path: &str) -> Result<u32> {
    Ok(integer(obj, key, path, 1, MAX_NODES)? as u32)
}

#[derive(Clone, Copy, PartialEq)]
enum Sign {
    Any,
    NonNegative,
    Positive,
}

/// Money is a JSON string of a plain decimal (`"1750.00"`): not a number, no exponent, no
/// letters, at most `places` decimal places.
fn money(obj: &Map<String, Value>, key: &str, path: &str, sign: Sign, places: u32) -> Result<Decimal> {
    // The path is made only for an error: a valid file reads many fields.
    let at = || join(path, key);
    let text = match obj.get(key) {
        None => return Err(missing(&at())),
        Some(Value::String(s)) => s,
        Some(Value::Number(n)) => return err(at(), format!("money is written as a string (\"{n}\"), not a JSON number")),
        Some(other) => return err(at(), format!("expected a decimal string, found {}", kind_of(other))),
    };
    let digits = text.strip_prefix('-').unwrap_or(text);
    let plain = !digits.is_empty()
        && digits.split('.').count() <= 2
        && digits.split('.').all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()));
    if !plain {
        return err(at(), format!("{text:?} is not a decimal amount like \"1750.00\""));
    }
    let value = Decimal::from_str(text).map_err(|e| ScenarioError { path: at(), message: format!("{text:?}: {e}") })?;
    if value.abs() > Decimal::from(MAX_MONEY) {
        return err(at(), format!("{text} is out of range (at most {MAX_MONEY} in magnitude)"));
    }
    if value.normalize().scale() > places {
        return err(at(), format!("{text} has more than {places} decimal places"));
    }
    match sign {
        Sign::Positive if value <= Decimal::ZERO => err(at(), format!("must be positive, not {text}")),
        Sign::NonNegative if value < Decimal::ZERO => err(at(), format!("must not be negative, not {text}")),
        _ => Ok(value),
    }
}

/// An RFC 3339 instant with an offset, to the second (R1), kept in Beijing time.
fn instant(obj: &Map<String, Value>, key: &str, path: &str) -> Result<Instant> {
    // The path is made only for an error: a valid file reads many fields.
    let at = || join(path, key);
    let text = string(obj, key, path)?;
    let t = DateTime::parse_from_rfc3339(&text).map_err(|e| ScenarioError {
        path: at(),
        message: format!("{text:?} is not an RFC 3339 instant with an offset, like 2023-04-08T10:00:00+08:00 ({e})"),
    })?;
    if t.nanosecond() >= 1_000_000_000 {
        return err(at(), format!("{text:?} is a leap second; instants are whole seconds 00..59 (R1)"));
    }
    if t.nanosecond() != 0 {
        return err(at(), format!("{text:?} has a fraction of a second; instants are whole seconds (R1)"));
    }
    // Periods and retention run years past an instant: keep every date they reach printable.
    if !(MIN_YEAR..=MAX_YEAR).contains(&to_beijing(t).year()) {
        return err(at(), format!("{text:?} is outside the years {MIN_YEAR}..={MAX_YEAR} this billing engine accepts"));
    }
    Ok(to_beijing(t))
}

fn integer(obj: &Map<String, Value>, key: &str, path: &str, min: u64, max: u64) -> Result<u64> {
    // The path is made only for an error: a valid file reads many fields.
    let at = || join(path, key);
    match obj.get(key) {
        None => Err(missing(&at())),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(v) if (min..=max).contains(&v) => Ok(v),
            Some(v) => err(at(), format!("{v} is out of range {min}..={max}")),
            None if n.as_i64().is_some() => err(at(), format!("{n} is negative; expected {min}..={max}")),
            None => err(at(), format!("{n} is not a whole number")),
        },
        Some(other) => err(at(), format!("expected a whole number, found {}", kind_of(other))),
    }
}

fn string(obj: &Map<String, Value>, key: &str, path: &str) -> Result<String> {
    // The path is made only for an error: a valid file reads many fields.
    let at = || join(path, key);
    match obj.get(key) {
        None => Err(missing(&at())),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => err(at(), format!("expected a string, found {}", kind_of(other))),
    }
}

fn opt_string(obj: &Map<String, Value>, key: &str, path: &str) -> Result<Option<String>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(_) => string(obj, key, path).map(Some),
    }
}

/// An identifier: a non-empty string of printable characters.
fn id(obj: &Map<String, Value>, key: &str, path: &str) -> Result<String> {
    let text = string(obj, key, path)?;
    // The path is made only for an error: a valid file reads many fields.
    let at = || join(path, key);
    if text.trim().is_empty() {
        return err(at(), "must not be empty");
    }
    if text.chars().count() > MAX_ID_LEN {
        return err(at(), format!("longer than {MAX_ID_LEN} characters"));
    }
    if text.chars().any(char::is_control) {
        return err(at(), "contains a control character");
    }
    Ok(text)
}

fn opt_id(obj: &Map<String, Value>, key: &str, path: &str) -> Result<Option<String>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(_) => id(obj, key, path).map(Some),
    }
}

fn bool_field(obj: &Map<String, Value>, key: &str, path: &str) -> Result<bool> {
    match obj.get(key) {
        None => Err(missing(&join(path, key))),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => err(join(path, key), format!("expected true or false, found {}", kind_of(other))),
    }
}

fn opt_bool(obj: &Map<String, Value>, key: &str, path: &str) -> Result<Option<bool>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(_) => bool_field(obj, key, path).map(Some),
    }
}

fn object<'a>(value: &'a Value, path: &str) -> Result<&'a Map<String, Value>> {
    match value {
        Value::Object(map) => Ok(map),
        other => err(path, format!("expected an object, found {}", kind_of(other))),
    }
}

fn array<'a>(obj: &'a Map<String, Value>, key: &str, path: &str) -> Result<&'a Vec<Value>> {
    // The path is made only for an error: a valid file reads many fields.
    let at = || join(path, key);
    match obj.get(key) {
        None => Err(missing(&at())),
        Some(Value::Array(items)) => Ok(items),
        Some(other) => err(at(), format!("expected an array, found {}", kind_of(other))),
    }
}

fn array_opt<'a>(obj: &'a Map<String, Value>, key: &str, path: &str) -> Result<&'a [Value]> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(&[]),
        Some(_) => array(obj, key, path).map(|v| v.as_slice()),
    }
}

/// Unknown fields are refused: a misspelt optional field must not pass silently.
fn allow_only(obj: &Map<String, Value>, path: &str, known: &[&str]) -> Result<()> {
    for key in obj.keys() {
        if !known.contains(&key.as_str()) && !REMARKS.contains(&key.as_str()) {
            return err(join(path, key), format!("unknown field (expected one of {})", known.join(", ")));
        }
    }
    Ok(())
}

/// The path of `key` in `path`; a key that is not a plain name is quoted (`[""]`).
fn join(path: &str, key: &str) -> String {
    let plain = !key.is_empty() && key.chars().all(|c| c.is_alphanumeric() || c == '_' || c == '-');
    match (path.is_empty(), plain) {
        (true, true) => key.to_string(),
        (false, true) => format!("{path}.{key}"),
        (true, false) => format!("[{key:?}]"),
        (false, false) => format!("{path}[{key:?}]"),
    }
}

fn missing(path: &str) -> ScenarioError {
    ScenarioError { path: path.to_string(), message: "missing field".to_string() }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The file read as a stream gives what it gave read whole: the same scenario, or the same
    /// first error (JSON first, then the fields in their order, then the commands in theirs).
    #[test]
    fn a_scenario_read_as_a_stream_is_the_scenario_read_whole() {
        let account = r#"{"id": "a", "balance": "10"}"#;
        let buy = |at: &str, pool: &str| {
            format!(r#"{{"at": "{at}", "type": "purchase", "account": "a", "pool": "{pool}", "spec": "s", "nodes": 1, "mode": "on_demand"}}"#)
        };
        let catalog = r#"[{"spec": "s", "hourly": "1"}]"#;
        let good = [buy("2023-04-01T01:00:00+08:00", "p2"), buy("2023-04-01T00:00:00+08:00", "p1")].join(", ");
        let bad_command = buy("2023-04-01T00:00:00+08:00", "p1").replace(r#""nodes": 1"#, r#""nodes": -1"#);
        let texts = [
            format!(r#"{{"catalog": {catalog}, "accounts": [{account}], "commands": [{good}]}}"#),
            // Commands first, out of order: sorted by `at`, ties in file order.
            format!(r#"{{"commands": [{good}, {good}], "catalog": {catalog}, "accounts": [{account}], "until": "2023-04-02T00:00:00+08:00"}}"#),
            // A key given twice: the last counts.
            format!(r#"{{"commands": [{bad_command}], "catalog": {catalog}, "accounts": [{account}], "commands": [{good}]}}"#),
            format!(r#"{{"commands": [{good}], "catalog": {catalog}, "accounts": [{account}], "commands": [{bad_command}]}}"#),
            // A command at fault, and an account at fault after it in the file: the account is named.
            format!(r#"{{"commands": [{good}, {bad_command}], "catalog": {catalog}, "accounts": [{{"id": "a", "balance": "x"}}]}}"#),
            format!(r#"{{"commands": [{good}, {bad_command}, {bad_command}], "catalog": {catalog}, "accounts": [{account}]}}"#),
            // A command at fault, then the file stops being JSON: the JSON is named.
            format!(r#"{{"commands": [{bad_command}, {good}], "catalog": {catalog}, "accounts": [{account}] "#),
            format!(r#"{{"commands": [{good}]}} trailing"#),
            format!(r#"{{"commands": {{"at": 1}}, "catalog": {catalog}}}"#),
            r#"{"commands": "none"}"#.to_string(),
            r#"{"commands": null}"#.to_string(),
            r#"{"catalog": []}"#.to_string(),
            r#"{"commands": [], "colour": "red"}"#.to_string(),
            r#"{"commands": [1, [2], {"at": 3}]}"#.to_string(),
            r#"[{"commands": []}]"#.to_string(),
            "42".to_string(),
            String::new(),
        ];
        let mut valid = 0;
        for text in &texts {
            let streamed = parse(text);
            match read_whole(text).and_then(|read| scenario_of(text, read)) {
                // Valid: read whole, it is refused (it must be read as a stream), and its steps
                // are those of its JSON tree, in order of `at`, ties in file order.
                Err(e) if e.message == "could not be read one command at a time" => {
                    let tree: Value = serde_json::from_str(text).unwrap();
                    let mut expected: Vec<Step> =
                        tree["commands"].as_array().unwrap().iter().enumerate().map(|(i, e)| step_at(i, e).unwrap()).collect();
                    expected.sort_by_key(|s| s.at);
                    assert_eq!(streamed.unwrap().steps().collect::<Vec<_>>(), expected, "{text}");
                    valid += 1;
                }
                whole => assert_eq!(streamed.map(|_| ()), whole.map(|_| ()), "{text}"),
            }
        }
        assert_eq!(valid, 3);
        // The table covers both outcomes, and the fault of a command names its place.
        assert_eq!(parse(&texts[1]).unwrap().steps().map(|s| s.index).collect::<Vec<_>>(), [1, 3, 0, 2]);
        assert_eq!(parse(&texts[1]).unwrap().steps_from(3).map(|s| s.index).collect::<Vec<_>>(), [2]);
        assert!(parse(&texts[5]).unwrap_err().path.starts_with("commands[2]"), "{:?}", parse(&texts[5]));
        assert_eq!(parse(&texts[4]).unwrap_err().path, "accounts[0].balance");
    }
}
