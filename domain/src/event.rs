//! Events: immutable facts. Each names the stream (consistency boundary) it belongs to and
//! carries a schema version; older versions are upcast on read, never rewritten.

use crate::command::{Command, JobKind};
use crate::model::{BillLine, BillingMode, Period, Policy, PoolType, Price, Rule, Term};
use crate::time::Instant;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    PriceSet {
        spec: String,
        price: Price,
    },
    PolicySet {
        policy: Policy,
    },
    AccountOpened {
        account: String,
        balance: Decimal,
        level: String,
        discount: Decimal,
    },
    /// Schema v2: `balance_after` (v1 called it `balance`).
    ToppedUp {
        account: String,
        amount: Decimal,
        balance_after: Decimal,
    },
    PoolPurchased {
        account: String,
        pool: String,
        spec: String,
        nodes: u32,
        mode: BillingMode,
        pool_type: PoolType,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        region: Option<String>,
        /// The subscription period; none for on-demand pools.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        period: Option<Period>,
    },
    /// Creation succeeded: on-demand metering starts at `hourly` (R4).
    PoolReady {
        account: String,
        pool: String,
        hourly: Decimal,
    },
    /// A new configuration from this instant; `hourly` is set for on-demand pools (R10).
    PoolScaled {
        account: String,
        pool: String,
        spec: String,
        nodes: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hourly: Option<Decimal>,
    },
    PoolRenewed {
        account: String,
        pool: String,
        months: u32,
        end: Instant,
        auto: bool,
    },
    PoolConverted {
        account: String,
        pool: String,
        mode: BillingMode,
        months: u32,
        period: Period,
    },
    PoolDeleted {
        account: String,
        pool: String,
    },
    ExpiryWarned {
        account: String,
        pool: String,
        expires_at: Instant,
    },
    PoolExpired {
        account: String,
        pool: String,
    },
    PoolFrozen {
        account: String,
        pool: String,
    },
    PoolReleased {
        account: String,
        pool: String,
    },
    /// R15: unsubscribed; released at once (its refund is the `charged` line beside it).
    PoolUnsubscribed {
        account: String,
        pool: String,
    },
    /// R8: auto-renewal set (or turned off with `enabled: false`).
    AutoRenewSet {
        account: String,
        pool: String,
        enabled: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        term: Option<Term>,
        days_before: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        count: Option<u32>,
    },
    /// R8: one 03:00 attempt; a success is followed by `pool_renewed` and its `charged` line.
    AutoRenewAttempted {
        account: String,
        pool: String,
        succeeded: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// R14: a job started, or a stopped one restarted. `hourly` is set when its compute is billed
    /// (public pool); `disk_hourly` per GB-hour when it has an EVS disk (notebooks).
    /// Schema v2: `billed_as` (the R5 id its compute bills carry, recorded so that a change of
    /// R5 never renames the bills of an old log) and `region` (R13; none is `default`).
    JobStarted {
        account: String,
        job: String,
        kind: JobKind,
        spec: String,
        nodes: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pool: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        model: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hourly: Option<Decimal>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        disk_gb: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        disk_hourly: Option<Decimal>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        region: Option<String>,
        billed_as: String,
    },
    JobStopped {
        account: String,
        job: String,
    },
    JobDeleted {
        account: String,
        job: String,
    },
    /// R13: a package of `quantity × hours` node-hours for one spec (and region).
    PackageBought {
        account: String,
        package: String,
        spec: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        region: Option<String>,
        quantity: u32,
        hours: u32,
        expires_at: Instant,
        price: Decimal,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        alert_below: Option<Decimal>,
    },
    /// R13: the package's remainder fell below its threshold (once).
    PackageAlerted {
        account: String,
        package: String,
        remaining_node_hours: Decimal,
    },
    PackageExpired {
        account: String,
        package: String,
    },
    /// R12: a settlement left the balance negative: pay-per-use resources enter grace.
    ArrearsStarted {
        account: String,
        balance: Decimal,
    },
    /// R12: grace is over: pay-per-use resources are frozen and stop billing.
    ArrearsFrozen {
        account: String,
    },
    /// R12: retention is over: frozen resources are released.
    ArrearsReleased {
        account: String,
    },
    /// R12: a top-up brought the balance to zero or more: resources run, billing resumes.
    ArrearsEnded {
        account: String,
    },
    /// One flow-bill line: a charge (positive payable) or refund (negative) (R5).
    Charged {
        line: BillLine,
    },
    /// The account's metered usage in `[start, end)` has been billed (R4, R12).
    CycleSettled {
        account: String,
        start: Instant,
        end: Instant,
    },
    /// A command as it was given, first of what it appended (its id is the envelope's).
    CommandReceived {
        command: Command,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        index: Option<u64>,
        /// The instant the command asked for: a refusal is stamped no earlier than the log's
        /// last instant, and a re-run must decide the command at its own instant again.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        requested_at: Option<Instant>,
    },
    /// A refused command, kept so that a log tells why nothing happened (R17 retries included).
    CommandRejected {
        command: String,
        rule: Rule,
        reason: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        index: Option<u64>,
    },
}

impl Event {
    /// The stream this event is appended to. An account's stream holds everything its balance
    /// depends on, so that one expected-version check covers a whole decision.
    pub fn stream(&self) -> String {
        match self {
            Event::PriceSet { .. } => "catalog".to_string(),
            Event::PolicySet { .. } => "policy".to_string(),
            Event::CommandRejected { .. } => "rejections".to_string(),
            Event::CommandReceived { .. } => "commands".to_string(),
            Event::Charged { line } => account_stream(&line.account),
            Event::AccountOpened { account, .. }
            | Event::ToppedUp { account, .. }
            | Event::PoolPurchased { account, .. }
            | Event::PoolReady { account, .. }
            | Event::PoolScaled { account, .. }
            | Event::PoolRenewed { account, .. }
            | Event::PoolConverted { account, .. }
            | Event::PoolDeleted { account, .. }
            | Event::ExpiryWarned { account, .. }
            | Event::PoolExpired { account, .. }
            | Event::PoolFrozen { account, .. }
            | Event::PoolReleased { account, .. }
            | Event::CycleSettled { account, .. }
            | Event::PoolUnsubscribed { account, .. }
            | Event::AutoRenewSet { account, .. }
            | Event::AutoRenewAttempted { account, .. }
            | Event::JobStarted { account, .. }
            | Event::JobStopped { account, .. }
            | Event::JobDeleted { account, .. }
            | Event::PackageBought { account, .. }
            | Event::PackageAlerted { account, .. }
            | Event::PackageExpired { account, .. }
            | Event::ArrearsStarted { account, .. }
            | Event::ArrearsFrozen { account }
            | Event::ArrearsReleased { account }
            | Event::ArrearsEnded { account } => account_stream(account),
        }
    }

    /// The type tag stored beside the payload (serde's `type`, snake_case), without serialising.
    pub fn event_type_name(&self) -> &'static str {
        match self {
            Event::PriceSet { .. } => "price_set",
            Event::PolicySet { .. } => "policy_set",
            Event::AccountOpened { .. } => "account_opened",
            Event::ToppedUp { .. } => "topped_up",
            Event::PoolPurchased { .. } => "pool_purchased",
            Event::PoolReady { .. } => "pool_ready",
            Event::PoolScaled { .. } => "pool_scaled",
            Event::PoolRenewed { .. } => "pool_renewed",
            Event::PoolConverted { .. } => "pool_converted",
            Event::PoolDeleted { .. } => "pool_deleted",
            Event::ExpiryWarned { .. } => "expiry_warned",
            Event::PoolExpired { .. } => "pool_expired",
            Event::PoolFrozen { .. } => "pool_frozen",
            Event::PoolReleased { .. } => "pool_released",
            Event::PoolUnsubscribed { .. } => "pool_unsubscribed",
            Event::AutoRenewSet { .. } => "auto_renew_set",
            Event::AutoRenewAttempted { .. } => "auto_renew_attempted",
            Event::JobStarted { .. } => "job_started",
            Event::JobStopped { .. } => "job_stopped",
            Event::JobDeleted { .. } => "job_deleted",
            Event::PackageBought { .. } => "package_bought",
            Event::PackageAlerted { .. } => "package_alerted",
            Event::PackageExpired { .. } => "package_expired",
            Event::ArrearsStarted { .. } => "arrears_started",
            Event::ArrearsFrozen { .. } => "arrears_frozen",
            Event::ArrearsReleased { .. } => "arrears_released",
            Event::ArrearsEnded { .. } => "arrears_ended",
            Event::Charged { .. } => "charged",
            Event::CycleSettled { .. } => "cycle_settled",
            Event::CommandReceived { .. } => "command_received",
            Event::CommandRejected { .. } => "command_rejected",
        }
    }

    /// The schema version this build writes for the event's type. Each type has its own: a
    /// shape change bumps only its type and adds a step to [`upcast`].
    pub fn schema_version(&self) -> u32 {
        latest_version(self.event_type_name())
    }

    /// The payload and type tag to store.
    pub fn encode(&self) -> (String, serde_json::Value) {
        let value = serde_json::to_value(self).expect("events always serialise");
        (self.event_type_name().to_string(), value)
    }

    /// Read a stored payload of any known schema version, upcasting it to today's shape.
    pub fn decode(event_type: &str, schema_version: u32, payload: &serde_json::Value) -> Result<Event, DecodeError> {
        // Today's shape under its own type (nearly every read): no copy, no upcast.
        if schema_version == latest_version(event_type) && payload.get("type").and_then(|t| t.as_str()) == Some(event_type) {
            return Event::deserialize(payload).map_err(|e| DecodeError {
                event_type: event_type.to_string(),
                schema_version,
                detail: e.to_string(),
            });
        }
        let upcast = upcast(event_type, schema_version, payload.clone())?;
        serde_json::from_value(upcast).map_err(|e| DecodeError { event_type: event_type.to_string(), schema_version, detail: e.to_string() })
    }
}

impl Event {
    /// An event of type `event_type` in today's shape, read from its payload's JSON text whose
    /// `type` is `event_type` — as [`Event::decode`] reads the parsed payload of its latest
    /// schema version, without the buffering serde does for an internally tagged enum where
    /// it can: a flow-bill line (nearly every event of a log) is read straight into its
    /// fields. An error only says to take the general way, [`Event::decode`], which reads the
    /// same and words its errors as always.
    pub fn decode_latest_text(event_type: &str, text: &str) -> Result<Event, serde_json::Error> {
        /// The fields of `Event::Charged`, as its variant reads them (the `type` is ignored).
        #[derive(Deserialize)]
        struct Charged {
            line: BillLine,
        }
        match event_type {
            "charged" => serde_json::from_str::<Charged>(text).map(|c| Event::Charged { line: c.line }),
            _ => serde_json::from_str(text),
        }
    }
}

pub fn account_stream(account: &str) -> String {
    format!("account-{account}")
}

/// The version this build writes for an event type.
pub fn latest_version(event_type: &str) -> u32 {
    match event_type {
        "topped_up" | "job_started" => 2,
        _ => 1,
    }
}

/// Bring a payload written under an older schema version of its type up to the latest, one
/// step at a time. Logs are never rewritten: this runs on every read.
fn upcast(event_type: &str, schema_version: u32, mut payload: serde_json::Value) -> Result<serde_json::Value, DecodeError> {
    let latest = latest_version(event_type);
    let fail = |detail: String| DecodeError { event_type: event_type.to_string(), schema_version, detail };
    if schema_version == 0 || schema_version > latest {
        return Err(fail(format!("schema version {schema_version} is not one this build reads (1..={latest})")));
    }
    let serde_json::Value::Object(map) = &mut payload else { return Err(fail("the payload is not an object".into())) };
    // The envelope's type is authoritative: a payload that disagrees is not this event.
    match map.get("type") {
        Some(serde_json::Value::String(t)) if t != event_type => return Err(fail(format!("payload says type {t:?}"))),
        Some(_) => {}
        None => {
            map.insert("type".to_string(), serde_json::Value::String(event_type.to_string()));
        }
    }
    let mut version = schema_version;
    while version < latest {
        match (event_type, version) {
            // v1 → v2: `balance` was renamed `balance_after`, saying which balance it is.
            ("topped_up", 1) => {
                let balance = map.remove("balance").ok_or_else(|| fail("a v1 top-up without its balance".into()))?;
                map.insert("balance_after".to_string(), balance);
            }
            // v1 → v2: the R5 id is recorded (`billed_as`), by the rule v1 logs were billed
            // under: workflows and auto-learning jobs then billed under their own id.
            ("job_started", 1) => {
                let text = |key: &str| map.get(key).and_then(|v| v.as_str()).map(str::to_string);
                let job = text("job").ok_or_else(|| fail("a v1 job start without its job".into()))?;
                let billed_as = match (text("kind").as_deref(), text("model")) {
                    (Some("training"), _) => format!("training_{job}"),
                    (Some("service"), Some(model)) => format!("{job}-{model}"),
                    _ => job,
                };
                map.insert("billed_as".to_string(), serde_json::Value::String(billed_as));
            }
            _ => return Err(fail(format!("no upcast from version {version}"))),
        }
        version += 1;
    }
    Ok(payload)
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cannot read event {event_type:?} (schema v{schema_version}): {detail}")]
pub struct DecodeError {
    pub event_type: String,
    pub schema_version: u32,
    pub detail: String,
}
