//! Re-running a log's commands in memory, with the same pure steps the engine takes: to
//! recompute bills for an audit, or to re-derive them under another policy or price list
//! (what-if).

use poolbill_domain::{latest_version, Command, Event, Instant, Policy, Price};
use poolbill_ledger::{Ledger, Step};
use poolbill_projections::Projections;
use poolbill_store::Envelope;
use std::collections::BTreeMap;

/// A command as the log recorded it.
#[derive(Clone, Debug, PartialEq)]
pub struct Recorded {
    pub id: Option<String>,
    pub at: Instant,
    pub index: Option<u64>,
    pub command: Command,
}

/// The commands a log recorded, in order.
pub fn commands(envelopes: &[Envelope]) -> Vec<Recorded> {
    envelopes
        .iter()
        .filter(|e| e.event_type == "command_received")
        .filter_map(|e| match poolbill_projections::event_of(e) {
            Ok(Event::CommandReceived { command, index, requested_at }) => {
                Some(Recorded { id: e.command_id.clone(), at: requested_at.unwrap_or(e.at), index, command })
            }
            _ => None,
        })
        .collect()
}

/// Another grace/retention table or price list to re-derive bills under.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WhatIf {
    pub policy: Option<Policy>,
    pub catalog: BTreeMap<String, Price>,
}

/// The log of a re-run: each command's records, with positions from 1.
pub struct Rerun {
    pub envelopes: Vec<(Instant, Option<String>, Event)>,
    pub projections: Projections,
}

/// Run `commands` from scratch, letting the clock pass `until` at the end; `what_if` replaces
/// the policy and the named prices from the first instant on. The steps are the engine's own
/// ([`Ledger`]): what is due at a command's instant, then the command.
pub fn rerun(commands: &[Recorded], until: Instant, what_if: &WhatIf) -> Rerun {
    let _span = tracing::info_span!("rerun", commands = commands.len(), until = %until.to_rfc3339()).entered();
    let mut ledger = Ledger::new();
    let mut log = Vec::new();
    let mut record = |step: Step| log.extend(step.events.into_iter().map(|event| (step.at, step.command_id.clone(), event)));
    let mut overridden = false;
    for recorded in commands {
        // What the what-if replaces is not set again.
        let replaced = match &recorded.command {
            Command::SetPolicy { .. } => what_if.policy.is_some(),
            Command::SetPrice { spec, .. } => what_if.catalog.contains_key(spec),
            _ => false,
        };
        ledger.advance(recorded.at, &mut record);
        if !overridden {
            // The what-if's terms are in force from the first instant, before any command.
            overridden = true;
            let mut set = Vec::new();
            if let Some(policy) = &what_if.policy {
                set.push(Command::SetPolicy { policy: policy.clone() });
            }
            for (spec, price) in &what_if.catalog {
                set.push(Command::SetPrice { spec: spec.clone(), price: price.clone() });
            }
            for command in set {
                // A what-if term that changes nothing (R17) leaves no trace.
                if let Some(step) = ledger.decide_if_accepted(Some("what-if".to_string()), recorded.at, &command) {
                    record(step);
                }
            }
        }
        if !replaced {
            ledger.execute(recorded.id.clone(), recorded.at, &recorded.command, recorded.index, &mut record);
        }
    }
    ledger.advance(until, &mut record);
    Rerun { envelopes: log, projections: ledger.into_projections() }
}

/// The re-run as envelopes (streams and versions as the engine would have written them).
pub fn to_envelopes(log: &[(Instant, Option<String>, Event)]) -> Vec<Envelope> {
    let mut versions: BTreeMap<String, u64> = BTreeMap::new();
    log.iter()
        .enumerate()
        .map(|(i, (at, id, event))| {
            let stream = event.stream();
            let version = versions.entry(stream.clone()).or_insert(0);
            *version += 1;
            let (event_type, payload) = event.encode();
            let schema_version = latest_version(&event_type);
            Envelope {
                position: i as u64 + 1,
                stream,
                version: *version,
                event_type,
                schema_version,
                at: *at,
                command_id: id.clone(),
                payload: payload.into(),
            }
        })
        .collect()
}
