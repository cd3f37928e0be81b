//! Replay: rebuild projections from a log — a store or a portable JSON-lines file — whole or as
//! of an instant or position (one sequential scan; instants never go backwards in a log, so "as
//! of T" is a prefix); and re-run a log's commands for audits and what-if questions.

pub mod audit;
pub mod bills;
pub mod diff;
pub mod explain;
pub mod jsonl;
pub mod rerun;
pub mod timeline;

use poolbill_domain::Instant;
use poolbill_projections::{ProjectionError, Projections};
use poolbill_store::{Envelope, Store, StoreError};

/// How much of the log to fold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Upto {
    All,
    /// Everything that had happened by this instant, inclusive (time travel).
    Instant(Instant),
    /// Everything up to and including this global position.
    Position(u64),
}

impl Upto {
    fn includes(&self, envelope: &Envelope) -> bool {
        match self {
            Upto::All => true,
            Upto::Instant(t) => envelope.at <= *t,
            Upto::Position(p) => envelope.position <= *p,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("reading the log")]
    Store(#[from] StoreError),
    #[error("replaying the log")]
    Projection(#[from] ProjectionError),
}

/// Fold envelopes in log order until the first one past `upto`, reporting progress as it goes.
pub fn fold_with<I>(envelopes: I, upto: Upto, mut progress: impl FnMut(u64)) -> Result<Projections, ReplayError>
where
    I: IntoIterator<Item = Result<Envelope, StoreError>>,
{
    let _span = tracing::info_span!("replay", upto = ?upto).entered();
    let mut projections = Projections::new();
    for envelope in envelopes {
        let envelope = envelope?;
        if !upto.includes(&envelope) {
            break;
        }
        projections.apply(&envelope)?;
        progress(envelope.position);
    }
    tracing::debug!(events = projections.events, bills = projections.bills.len(), "replayed");
    Ok(projections)
}

/// Fold envelopes in log order until the first one past `upto`.
pub fn fold<I>(envelopes: I, upto: Upto) -> Result<Projections, ReplayError>
where
    I: IntoIterator<Item = Result<Envelope, StoreError>>,
{
    fold_with(envelopes, upto, |_| {})
}

/// Projections of a store's log as of `upto`.
pub fn replay(store: &Store, upto: Upto) -> Result<Projections, ReplayError> {
    fold(store.read_all(1), upto)
}
