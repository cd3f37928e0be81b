//! Gone resources brought back from the log. A live engine forgets the pools and jobs that are
//! gone (`State::forget_gone`): its memory follows what is live, not every id a store has seen.
//! A command that names one again must still be refused word for word as if it had been kept
//! (R5, R17: ids are unique for good), so its record is rebuilt before the decision from the
//! only events that shape it: those tagged with its id (its lifecycle, its subscription's
//! charges, a job billed under the id) and its account's standing (the arrears that hold and
//! release it), read through the tag index, folded in log order.

use crate::FoldError;
use poolbill_domain::{Event, State};
use poolbill_projections::{account_tag, event_of, resource_tag, ProjectionError};
use poolbill_store::{Envelope, EventStore};
use std::collections::{BTreeMap, BTreeSet};

/// Bring back into `state` the gone pools and jobs among `ids` that it does not hold, from
/// `store`'s log. The tag index must cover every event of a forgotten resource: the engine
/// forgets only what it has indexed. Returns how many records came back.
pub fn recall(store: &dyn EventStore, state: &mut State, ids: &[String]) -> Result<usize, FoldError> {
    let mut history: BTreeMap<u64, Envelope> = BTreeMap::new();
    // The ids, then the job and bill id of every job started under one of them (R5: a bill id
    // leads to its job's own events, its deletion among them).
    let mut wanted: Vec<String> = ids.iter().filter(|id| !state.knows(id)).cloned().collect();
    let mut read = BTreeSet::new();
    while let Some(id) = wanted.pop() {
        if !read.insert(id.clone()) {
            continue;
        }
        for position in read_tagged(store, &resource_tag(&id), &mut history)? {
            if let Event::JobStarted { job, billed_as, .. } = event_of(&history[&position]).map_err(|source| ProjectionError { position, source })? {
                wanted.extend([job, billed_as].into_iter().filter(|other| !read.contains(other)));
            }
        }
    }
    if history.is_empty() {
        return Ok(0);
    }
    // An account's stream is `account-<id>` (Event::stream).
    let accounts: BTreeSet<String> = history.values().filter_map(|e| e.stream.strip_prefix("account-").map(str::to_string)).collect();
    for account in accounts {
        read_tagged(store, &account_tag(&account), &mut history)?;
    }
    let mut own = State::default();
    for (position, envelope) in history {
        let event = event_of(&envelope).map_err(|source| ProjectionError { position, source })?;
        own.apply(&event, envelope.at);
    }
    Ok(state.recall(own))
}

/// Read the events tagged `tag` into `into`; returns the positions of those not read before.
fn read_tagged(store: &dyn EventStore, tag: &str, into: &mut BTreeMap<u64, Envelope>) -> Result<Vec<u64>, FoldError> {
    let mut new = Vec::new();
    for position in store.tagged(tag, 0, usize::MAX)? {
        if let std::collections::btree_map::Entry::Vacant(slot) = into.entry(position) {
            let envelope = store.read_at(position)?.ok_or_else(|| poolbill_store::StoreError::Corrupt {
                position,
                detail: format!("the tag index lists position {position} under {tag:?}, past the end of the log"),
            })?;
            slot.insert(envelope);
            new.push(position);
        }
    }
    Ok(new)
}
