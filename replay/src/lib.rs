//! Replay: rebuild projections from a log — a store or a portable JSON-lines file — whole or as
//! of an instant or position (one sequential scan; instants never go backwards in a log, so "as
//! of T" is a prefix); and re-run a log's commands for audits and what-if questions.

pub mod audit;
pub mod bills;
mod canonical;
pub mod diff;
pub mod document;
pub mod explain;
pub mod history;
pub mod jsonl;
mod pipeline;
pub mod rerun;
mod sorted;
pub mod source;
pub mod timeline;

// Reading a log back is the ledger's one fold; these are re-exported for the tools' users.
pub use poolbill_ledger::{fold, fold_visit, fold_with, replay, FoldError as ReplayError, Upto};
