//! One resource's history read from a store's tag index, not from the whole log: the events
//! about it (or about the job it bills for, or the id it bills under, R5), its account's opening
//! and arrears (R2, R12), and the catalog; its metered lines by the settlement that charged
//! them, with the packages they drew on (R13). What explain and timeline need of a resource, at
//! a cost that follows the resource's own history, not the log's.

use poolbill_domain::{Basis, DecodeError, Event, Instant};
use poolbill_projections::{account_tag, event_of, resource_tag, usage_tag};
use poolbill_store::{Envelope, EventStore, StoreError};
use std::collections::{BTreeMap, BTreeSet};

/// The events read, by position, decoded.
pub type History = BTreeMap<u64, (Envelope, Event)>;

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("reading the store: {0}")]
    Store(#[from] StoreError),
    #[error("the event at position {position} cannot be read")]
    Decode {
        position: u64,
        #[source]
        source: DecodeError,
    },
}

/// Bring the store's tag index up to date (`catch_up_indexes`) before reading through it.
pub fn index_up_to_date(store: &dyn EventStore) -> Result<(), HistoryError> {
    poolbill_ledger::catch_up_indexes(store).map(|_| ()).map_err(|e| match e {
        poolbill_ledger::FoldError::Projection(p) => HistoryError::Decode { position: p.position, source: p.source },
        poolbill_ledger::FoldError::Store(e) => HistoryError::Store(e),
    })
}

/// `resource`'s history, after bringing the tag index up to date, without its metered lines
/// (those are read by cycle: [`usage_at`], or all of them: [`all_usage`]); with the ids it is
/// known by (itself, the job it bills for, the id it bills under).
pub fn of_resource(store: &dyn EventStore, resource: &str) -> Result<(History, BTreeSet<String>), HistoryError> {
    index_up_to_date(store)?;
    let mut picked = History::new();
    // The resource, then the ids it bills under or for (R5).
    let mut ids = BTreeSet::from([resource.to_string()]);
    let mut done = BTreeSet::new();
    while let Some(id) = ids.iter().find(|id| !done.contains(*id)).cloned() {
        read_tagged(store, &resource_tag(&id), 0, usize::MAX, &mut picked)?;
        done.insert(id);
        for (_, event) in picked.values() {
            if let Event::JobStarted { job, billed_as, .. } = event {
                if done.contains(job) || done.contains(billed_as) {
                    ids.extend([job.clone(), billed_as.clone()]);
                }
            }
        }
    }
    // An account's stream is `account-<id>` (Event::stream).
    let accounts: BTreeSet<String> = picked.values().filter_map(|(e, _)| e.stream.strip_prefix("account-").map(str::to_string)).collect();
    for account in &accounts {
        read_tagged(store, &account_tag(account), 0, usize::MAX, &mut picked)?;
    }
    for envelope in store.read_stream("catalog", 1)? {
        let event = decode(&envelope)?;
        picked.insert(envelope.position, (envelope, event));
    }
    Ok((picked, ids))
}

/// Every metered line of `ids` (a timeline draws them all).
pub fn all_usage(store: &dyn EventStore, ids: &BTreeSet<String>, picked: &mut History) -> Result<(), HistoryError> {
    for id in ids {
        read_tagged(store, &usage_tag(id), 0, usize::MAX, picked)?;
    }
    Ok(())
}

/// The metered lines of `ids` charged at `at` (one settlement: a cycle's lines are charged
/// together at its end), and the history of the packages they drew on (R13).
pub fn usage_at(store: &dyn EventStore, ids: &BTreeSet<String>, at: Instant, picked: &mut History) -> Result<(), HistoryError> {
    let from = first_at_or_after(store, at)?;
    let mut packages = BTreeSet::new();
    for id in ids {
        // A settlement charges each resource a few lines at most (package shares and the rest).
        for position in store.tagged(&usage_tag(id), from, 64)? {
            let (envelope, event) = read(store, position)?;
            if envelope.at != at {
                break;
            }
            if let Event::Charged { line } = &event {
                if let Basis::Package { package, .. } = &line.basis {
                    packages.insert(package.clone());
                }
            }
            picked.insert(position, (envelope, event));
        }
    }
    for package in packages {
        read_tagged(store, &resource_tag(&package), 0, usize::MAX, picked)?;
    }
    Ok(())
}

/// The first position whose instant is `at` or later (instants never decrease along the log):
/// a binary search, some twenty reads for millions of events. Past the end when none is.
pub fn first_at_or_after(store: &dyn EventStore, at: Instant) -> Result<u64, HistoryError> {
    let (mut low, mut high) = (1, store.last_position()? + 1);
    while low < high {
        let middle = low + (high - low) / 2;
        let envelope = store.read_at(middle)?.ok_or_else(|| StoreError::Corrupt { position: middle, detail: "missing within the log".into() })?;
        if envelope.at < at {
            low = middle + 1;
        } else {
            high = middle;
        }
    }
    Ok(low)
}

/// The event at `position`, decoded.
pub fn read(store: &dyn EventStore, position: u64) -> Result<(Envelope, Event), HistoryError> {
    let envelope = store
        .read_at(position)?
        .ok_or_else(|| StoreError::Corrupt { position, detail: "the tag index names a position the log does not reach".into() })?;
    let event = decode(&envelope)?;
    Ok((envelope, event))
}

fn decode(envelope: &Envelope) -> Result<Event, HistoryError> {
    event_of(envelope).map_err(|source| HistoryError::Decode { position: envelope.position, source })
}

fn read_tagged(store: &dyn EventStore, tag: &str, from: u64, limit: usize, picked: &mut History) -> Result<(), HistoryError> {
    for position in store.tagged(tag, from, limit)? {
        if let std::collections::btree_map::Entry::Vacant(slot) = picked.entry(position) {
            slot.insert(read(store, position)?);
        }
    }
    Ok(())
}
