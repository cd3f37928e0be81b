//! The values that commands, events and state share.

use crate::money::Amounts;
use crate::time::Instant;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// A rule of `billing-rules.md`, cited by every rejection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Rule {
    R1,
    R2,
    R3,
    R4,
    R5,
    R6,
    R7,
    R8,
    R9,
    R10,
    R11,
    R12,
    R13,
    R14,
    R15,
    R16,
    R17,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Why a command was refused: the rule that refuses it and a sentence a person can act on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    pub rule: Rule,
    pub reason: String,
}

impl Rejection {
    pub fn new(rule: Rule, reason: impl Into<String>) -> Rejection {
        Rejection { rule, reason: reason.into() }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.rule, self.reason)
    }
}

/// Catalog prices of one spec (R2): per node-hour, per node-month, per node-year.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Price {
    pub hourly: Option<Decimal>,
    pub monthly: Option<Decimal>,
    pub yearly: Option<Decimal>,
}

/// Grace and retention of one customer level (R6, R12).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Level {
    pub grace_days: u32,
    pub retention_days: u32,
}

/// The customer levels in force; without one, `standard` alone exists with 15 and 15 days.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub levels: BTreeMap<String, Level>,
}

pub const DEFAULT_LEVEL: &str = "standard";

impl Default for Policy {
    fn default() -> Policy {
        let mut levels = BTreeMap::new();
        levels.insert(DEFAULT_LEVEL.to_string(), Level { grace_days: 15, retention_days: 15 });
        Policy { levels }
    }
}

impl Policy {
    /// The level of `name`, or the default one if the name has since been removed.
    pub fn level(&self, name: &str) -> Level {
        self.levels.get(name).or_else(|| self.levels.get(DEFAULT_LEVEL)).copied().unwrap_or(Level { grace_days: 15, retention_days: 15 })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BillingMode {
    OnDemand,
    Monthly,
    Yearly,
    Package,
}

impl BillingMode {
    pub fn as_str(self) -> &'static str {
        match self {
            BillingMode::OnDemand => "on_demand",
            BillingMode::Monthly => "monthly",
            BillingMode::Yearly => "yearly",
            BillingMode::Package => "package",
        }
    }
    pub fn is_subscription(self) -> bool {
        matches!(self, BillingMode::Monthly | BillingMode::Yearly)
    }
}

/// What a flow-bill line is for (R5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Item {
    Compute,
    Storage,
    Purchase,
    Renewal,
    Upgrade,
    Downgrade,
    Conversion,
    Refund,
    Package,
}

impl Item {
    pub fn as_str(self) -> &'static str {
        match self {
            Item::Compute => "compute",
            Item::Storage => "storage",
            Item::Purchase => "purchase",
            Item::Renewal => "renewal",
            Item::Upgrade => "upgrade",
            Item::Downgrade => "downgrade",
            Item::Conversion => "conversion",
            Item::Refund => "refund",
            Item::Package => "package",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolType {
    Dedicated,
    Public,
}

/// The length of a subscription order: months, or years (R3: a year is 12 months).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Term {
    Months(u32),
    Years(u32),
}

impl Term {
    pub fn months(self) -> u32 {
        match self {
            Term::Months(m) => m,
            Term::Years(y) => y * 12,
        }
    }
    /// The billing mode an order of this term is charged under.
    pub fn mode(self) -> BillingMode {
        match self {
            Term::Months(_) => BillingMode::Monthly,
            Term::Years(_) => BillingMode::Yearly,
        }
    }
}

/// A subscription period `[start, end]`, `end` at 23:59:59 Beijing (R3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Period {
    pub start: Instant,
    pub end: Instant,
}

/// How a line's list price was derived, so that an auditor can recompute it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Basis {
    /// R4: hourly price × (nodes × seconds − node-seconds a package covered) / 3600.
    Usage {
        spec: String,
        nodes: u32,
        seconds: i64,
        hourly: Decimal,
        #[serde(default, skip_serializing_if = "is_zero")]
        covered_node_seconds: i64,
    },
    /// R13: node-seconds of a usage stretch taken from a package (paid for when it was bought).
    Package { package: String, spec: String, nodes: u32, seconds: i64, node_seconds: i64 },
    /// R13: a package's price, paid when it is bought.
    PackagePrice { spec: String, quantity: u32, hours: u32, price: Decimal },
    /// R15: a refund of what a subscription has not used.
    Refund {
        /// Within five days of the first purchase: everything paid back.
        full: bool,
        /// Otherwise: monthly price × nodes × factor to the current period's end…
        #[serde(default, skip_serializing_if = "Option::is_none")]
        unused: Option<UnusedPart>,
        /// …plus the list price of each renewal period not yet begun.
        #[serde(default)]
        unbegun: Decimal,
    },
    /// R3: unit price × nodes × units (months or years), plus a unified-expiry extension.
    Term {
        spec: String,
        nodes: u32,
        term: Term,
        unit_price: Decimal,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        align: Option<Alignment>,
    },
    /// R9: (new − old monthly price of the pool) × remaining factor. For a yearly subscription
    /// (`yearly`), the two prices are yearly prices × nodes and the product is divided by 12,
    /// last: the monthly rate of a year is yearly / 12.
    Change {
        from_spec: String,
        from_nodes: u32,
        to_spec: String,
        to_nodes: u32,
        old_monthly: Decimal,
        new_monthly: Decimal,
        factor: Decimal,
        #[serde(default, skip_serializing_if = "is_false")]
        yearly: bool,
    },
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// R9, R15: what `nodes` nodes cost over `factor` remaining months at the rate their holder
/// pays: `price` is the monthly price, or with `yearly` the yearly price, and then the product
/// is divided by 12 last, so that no change or refund is priced above what the year cost.
/// E.g. 17500/year × 1 node × 11.7742 / 12 = 17170.70 (exactly 17170.7041…).
pub fn remaining_value(price: Decimal, nodes: u32, factor: Decimal, yearly: bool) -> Decimal {
    let value = price * Decimal::from(nodes) * factor;
    if yearly {
        value / Decimal::from(12)
    } else {
        value
    }
}

/// R15: the unused part of the current period, by the R9 factor. With `yearly`, `monthly`
/// holds the yearly price and the product is divided by 12, last (R9).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnusedPart {
    pub monthly: Decimal,
    pub nodes: u32,
    pub factor: Decimal,
    pub period_end: Instant,
    pub amount: Decimal,
    #[serde(default, skip_serializing_if = "is_false")]
    pub yearly: bool,
}

/// R3 unified expiry: the days from the N-month end to the aligned end.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alignment {
    pub day: u32,
    pub from: Instant,
    pub to: Instant,
    pub factor: Decimal,
    pub amount: Decimal,
}

/// One flow-bill line (R5): a metered stretch of a cycle, or a subscription charge or refund.
/// `balance` is the account's balance right after it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BillLine {
    pub resource: String,
    pub account: String,
    pub mode: BillingMode,
    pub item: Item,
    #[serde(deserialize_with = "crate::time::deserialize_instant")]
    pub start: Instant,
    #[serde(deserialize_with = "crate::time::deserialize_instant")]
    pub end: Instant,
    pub amounts: Amounts,
    pub basis: Basis,
    pub balance: Decimal,
}
