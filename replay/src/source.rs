//! A log to be read from its start as a stream, as many times as a tool needs (an audit that
//! finds the log's lines out of order reads it twice): a store's `read_all`, a portable log file
//! (each line checked as it is read, the end line and its root too), or envelopes in memory.
//! Each read hands the events, decoded, to the shared fold's pipeline (`pipeline`).

use crate::jsonl::{LogError, LogReader};
use poolbill_domain::Event;
use poolbill_ledger::{FoldError, Recorded};
use poolbill_projections::{event_of, ProjectionError};
use poolbill_store::{Envelope, EventStore, StoreError};
use std::path::{Path, PathBuf};

/// Events of a log in order, read afresh by each call of `read`.
pub trait EventSource: Sync {
    type Error: Send;

    /// Hand every event in log order to `push`, until it returns false (nothing more is
    /// wanted); an error ends the read after the events before it.
    fn read(&self, push: &mut dyn FnMut(Recorded, Event) -> bool) -> Result<(), Self::Error>;
}

/// Decode envelopes and push them: what a store's or a slice's read does.
fn push_envelopes<E: std::borrow::Borrow<Envelope>>(
    envelopes: impl Iterator<Item = Result<E, StoreError>>,
    push: &mut dyn FnMut(Recorded, Event) -> bool,
    mut progress: impl FnMut(u64),
) -> Result<(), FoldError> {
    for envelope in envelopes {
        let envelope = envelope?;
        let envelope = envelope.borrow();
        let event = event_of(envelope).map_err(|source| ProjectionError { position: envelope.position, source })?;
        progress(envelope.position);
        if !push(Recorded::of(envelope), event) {
            break;
        }
    }
    Ok(())
}

/// Envelopes already in memory (tests, the tools' library callers), checked by whoever read
/// them: one whose event does not decode is passed over, as `audit` of a slice always did.
pub struct Envelopes<'a>(pub &'a [Envelope]);

impl EventSource for Envelopes<'_> {
    type Error = std::convert::Infallible;

    fn read(&self, push: &mut dyn FnMut(Recorded, Event) -> bool) -> Result<(), Self::Error> {
        for envelope in self.0 {
            let Ok(event) = event_of(envelope) else { continue };
            if !push(Recorded::of(envelope), event) {
                break;
            }
        }
        Ok(())
    }
}

/// A store's whole log, through `read_all`, each position read shown to `progress`.
pub struct StoreLog<'a, P> {
    pub store: &'a dyn EventStore,
    pub progress: P,
}

impl<P: Fn(u64) + Sync> EventSource for StoreLog<'_, P> {
    type Error = FoldError;

    fn read(&self, push: &mut dyn FnMut(Recorded, Event) -> bool) -> Result<(), FoldError> {
        push_envelopes(self.store.read_all(1), push, &self.progress)
    }
}

/// A portable log file, each line checked as it is read as `jsonl::import` checks it (the end
/// line's count, checksum and Merkle root included): a log that is not sound whole is an error,
/// even when what was wanted came before the damage.
pub struct LogFile(pub PathBuf);

impl LogFile {
    pub fn new(path: &Path) -> LogFile {
        LogFile(path.to_path_buf())
    }
}

impl EventSource for LogFile {
    type Error = LogError;

    fn read(&self, push: &mut dyn FnMut(Recorded, Event) -> bool) -> Result<(), LogError> {
        let file = std::fs::File::open(&self.0).map_err(|e| LogError::caused_by(0, format!("cannot open {}", self.0.display()), e))?;
        let mut lines = LogReader::new(std::io::BufReader::with_capacity(1 << 18, file));
        let mut wanted = true;
        while let Some(read) = lines.next_recorded() {
            let (recorded, event) = read?;
            // The rest is still read and checked once nothing more is wanted.
            wanted = wanted && push(recorded, event);
        }
        Ok(())
    }
}
