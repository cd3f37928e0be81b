//! One resource's history read from a store's tag index, not from the whole log: the events
//! about it (or about the job it bills for, or the id it bills under, R5), about the packages
//! its lines drew on (R13), its account's opening and arrears (R2, R12), and the catalog. What
//! explain and timeline need of a resource, at a cost that follows the resource's own history.

use poolbill_domain::{Basis, DecodeError, Event};
use poolbill_projections::{account_tag, event_of, resource_tag};
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

/// Bring the store's tag index up to date (`catch_up_tags`) before reading through it.
pub fn index_up_to_date(store: &dyn EventStore) -> Result<(), HistoryError> {
    poolbill_ledger::catch_up_tags(store).map(|_| ()).map_err(|e| match e {
        poolbill_ledger::FoldError::Projection(p) => HistoryError::Decode { position: p.position, source: p.source },
        poolbill_ledger::FoldError::Store(e) => HistoryError::Store(e),
    })
}

/// `resource`'s history, after bringing the tag index up to date.
pub fn of_resource(store: &dyn EventStore, resource: &str) -> Result<History, HistoryError> {
    index_up_to_date(store)?;
    let mut picked = History::new();
    // The resource, then the ids it bills under or for, and the packages its lines drew on.
    let mut ids = BTreeSet::from([resource.to_string()]);
    let mut done = BTreeSet::new();
    while let Some(id) = ids.iter().find(|id| !done.contains(*id)).cloned() {
        read_tagged(store, &resource_tag(&id), &mut picked)?;
        done.insert(id);
        for (_, event) in picked.values() {
            match event {
                Event::JobStarted { job, billed_as, .. } if done.contains(job) || done.contains(billed_as) => {
                    ids.extend([job.clone(), billed_as.clone()]);
                }
                Event::Charged { line } if done.contains(&line.resource) => {
                    if let Basis::Package { package, .. } = &line.basis {
                        ids.insert(package.clone());
                    }
                }
                _ => {}
            }
        }
    }
    // An account's stream is `account-<id>` (Event::stream).
    let accounts: BTreeSet<String> = picked.values().filter_map(|(e, _)| e.stream.strip_prefix("account-").map(str::to_string)).collect();
    for account in &accounts {
        read_tagged(store, &account_tag(account), &mut picked)?;
    }
    for envelope in store.read_stream("catalog", 1)? {
        let event = decode(&envelope)?;
        picked.insert(envelope.position, (envelope, event));
    }
    Ok(picked)
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

fn read_tagged(store: &dyn EventStore, tag: &str, picked: &mut History) -> Result<(), HistoryError> {
    for position in store.tagged(tag, 0, usize::MAX)? {
        if let std::collections::btree_map::Entry::Vacant(slot) = picked.entry(position) {
            slot.insert(read(store, position)?);
        }
    }
    Ok(())
}
