//! Commands: what a caller asks for. Each is decided against state at an instant.

use crate::model::{BillingMode, Policy, PoolType, Price, Term};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// Kept in the log as it was given (`command_received`), so a log can be re-run (what-if).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Command {
    /// Put a spec's prices in the catalog (prices in force from this instant).
    SetPrice {
        spec: String,
        price: Price,
    },
    /// Set the customer levels (R6, R12).
    SetPolicy {
        policy: Policy,
    },
    OpenAccount {
        account: String,
        balance: Decimal,
        level: String,
        discount: Decimal,
    },
    TopUp {
        account: String,
        amount: Decimal,
    },
    Purchase {
        account: String,
        pool: String,
        spec: String,
        nodes: u32,
        mode: BillingMode,
        /// Required for subscriptions, absent for on-demand.
        term: Option<Term>,
        pool_type: PoolType,
        region: Option<String>,
        /// An on-demand pool that is ready at once (R4).
        ready: bool,
    },
    Ready {
        pool: String,
    },
    Delete {
        pool: String,
    },
    Renew {
        pool: String,
        term: Term,
        align_day: Option<u32>,
    },
    SetAutoRenew {
        pool: String,
        enabled: bool,
        term: Option<Term>,
        days_before: u32,
        count: Option<u32>,
    },
    Convert {
        pool: String,
        term: Term,
    },
    Scale {
        pool: String,
        nodes: Option<u32>,
        spec: Option<String>,
    },
    Unsubscribe {
        pool: String,
    },
    BuyPackage {
        account: String,
        package: String,
        spec: String,
        quantity: u32,
        hours: u32,
        valid_days: u32,
        price: Decimal,
        region: Option<String>,
        alert_below: Option<Decimal>,
    },
    StartJob {
        account: String,
        job: String,
        kind: JobKind,
        spec: String,
        nodes: u32,
        pool: Option<String>,
        model: Option<String>,
        disk_gb: Option<u32>,
        disk_hourly: Option<Decimal>,
        /// R13: where its public-pool usage runs; none is `default`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        region: Option<String>,
    },
    StopJob {
        job: String,
    },
    DeleteJob {
        job: String,
    },
}

/// R14: a notebook's EVS disk when the command gives no size.
pub const DEFAULT_DISK_GB: u32 = 5;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    Training,
    Notebook,
    Service,
    Workflow,
    AutoLearning,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Training => "training",
            JobKind::Notebook => "notebook",
            JobKind::Service => "service",
            JobKind::Workflow => "workflow",
            JobKind::AutoLearning => "auto_learning",
        }
    }
}

/// What a command acts on: whose consistency boundary decides it (an account, the owner of a
/// pool or job), or the whole platform (the catalog, the customer levels). Scopes (the HTTP
/// API's tokens) and routing (shards) read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subject<'a> {
    Platform,
    Account(&'a str),
    Pool(&'a str),
    Job(&'a str),
}

impl Command {
    /// What the command acts on.
    pub fn subject(&self) -> Subject<'_> {
        match self {
            Command::SetPrice { .. } | Command::SetPolicy { .. } => Subject::Platform,
            Command::OpenAccount { account, .. }
            | Command::TopUp { account, .. }
            | Command::Purchase { account, .. }
            | Command::BuyPackage { account, .. }
            | Command::StartJob { account, .. } => Subject::Account(account),
            Command::Ready { pool }
            | Command::Delete { pool }
            | Command::Renew { pool, .. }
            | Command::SetAutoRenew { pool, .. }
            | Command::Convert { pool, .. }
            | Command::Scale { pool, .. }
            | Command::Unsubscribe { pool } => Subject::Pool(pool),
            Command::StopJob { job } | Command::DeleteJob { job } => Subject::Job(job),
        }
    }

    /// The resource it is about, if it is about one: the pool, job or package it acts on or
    /// creates.
    pub fn resource(&self) -> Option<&str> {
        match self {
            Command::Purchase { pool, .. }
            | Command::Ready { pool }
            | Command::Delete { pool }
            | Command::Renew { pool, .. }
            | Command::SetAutoRenew { pool, .. }
            | Command::Convert { pool, .. }
            | Command::Scale { pool, .. }
            | Command::Unsubscribe { pool } => Some(pool),
            Command::BuyPackage { package, .. } => Some(package),
            Command::StartJob { job, .. } | Command::StopJob { job } | Command::DeleteJob { job } => Some(job),
            Command::SetPrice { .. } | Command::SetPolicy { .. } | Command::OpenAccount { .. } | Command::TopUp { .. } => None,
        }
    }

    /// The ids its decision looks up among pools, jobs, packages and bill ids: its
    /// [`resource`](Command::resource), and for a job its pool and the id its bills would carry
    /// (R5, R17). A live engine recalls the gone resources among them before deciding
    /// (`State::recall`).
    pub fn resource_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.resource().map(str::to_string).into_iter().collect();
        if let Command::StartJob { job, kind, pool, model, .. } = self {
            ids.extend(pool.iter().cloned());
            let billed_as = crate::state::billing_id(*kind, job, model.as_deref());
            if billed_as != *job {
                ids.push(billed_as);
            }
        }
        ids
    }

    /// The command's type as the scenario format names it.
    pub fn type_name(&self) -> &'static str {
        match self {
            Command::SetPrice { .. } => "set_price",
            Command::SetPolicy { .. } => "set_policy",
            Command::OpenAccount { .. } => "open_account",
            Command::TopUp { .. } => "top_up",
            Command::Purchase { .. } => "purchase",
            Command::Ready { .. } => "ready",
            Command::Delete { .. } => "delete",
            Command::Renew { .. } => "renew",
            Command::SetAutoRenew { .. } => "set_auto_renew",
            Command::Convert { .. } => "convert",
            Command::Scale { .. } => "scale",
            Command::Unsubscribe { .. } => "unsubscribe",
            Command::BuyPackage { .. } => "buy_package",
            Command::StartJob { .. } => "start_job",
            Command::StopJob { .. } => "stop_job",
            Command::DeleteJob { .. } => "delete_job",
        }
    }
}
