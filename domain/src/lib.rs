//! poolbill's domain: the billing rules of `billing-rules.md` (R1…R17) as pure functions.
//!
//! - [`decide`]: a command against state at an instant → events, or a rejection naming its rule.
//! - [`State::apply`]: state + one event (at its instant) → the next state.
//! - [`agenda`]: what the clock's passing makes due (settlement, expiry, freezing, release).
//!
//! No I/O and no system clock here: every instant is given, so a log replays the same forever.

pub mod agenda;
pub mod codec;
pub mod command;
pub mod decide;
pub mod event;
pub mod model;
pub mod money;
pub mod state;
pub mod time;

pub use agenda::{due_events, next_due, tick};
pub use command::{Command, JobKind, Subject};
pub use decide::{decide, handle, Handled};
pub use event::{latest_version, DecodeError, Event};
pub use model::*;
pub use money::Amounts;
pub use state::{Hold, JobStatus, PoolStatus, State};
pub use time::Instant;

#[cfg(test)]
mod tests;
