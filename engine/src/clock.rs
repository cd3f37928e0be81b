//! Clocks for live use. The domain never reads a clock: the engine is told instants, by a
//! scenario, a test, or this live driver that turns the passing of real time into `advance_to`.

use crate::{Engine, EngineError};
use chrono::{SubsecRound, Utc};
use poolbill_domain::time::beijing;
use poolbill_domain::Instant;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Instant;
}

/// The machine's clock, to the second (R1), shown in Beijing time.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Utc::now().trunc_subsecs(0).with_timezone(&beijing())
    }
}

/// A clock that moves only when told: for tests and simulations.
pub struct ManualClock(Mutex<Instant>);

impl ManualClock {
    pub fn new(at: Instant) -> ManualClock {
        ManualClock(Mutex::new(at))
    }
    pub fn set(&self, at: Instant) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = at;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Live use: a tokio task that lets the engine's clock follow `clock`, waking when the next
/// event falls due (and at least every `poll`, so a clock that jumps is followed). It runs the
/// same `advance_to` path a scenario does, and ends when the engine stops.
pub fn spawn_clock(engine: Engine, clock: Arc<dyn Clock>, poll: Duration) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let now = clock.now();
            match engine.advance_to(now).await {
                Err(EngineError::Closed) => return,
                // A failed write: try again after a pause rather than spin.
                Err(_) => {
                    tokio::time::sleep(poll).await;
                    continue;
                }
                Ok(_) => {}
            }
            let wait = match engine.next_due().await {
                Err(_) => return,
                Ok(Some(due)) => (due - now).to_std().unwrap_or(Duration::ZERO).min(poll),
                Ok(None) => poll,
            };
            tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
        }
    })
}
