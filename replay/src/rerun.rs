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

impl Recorded {
    /// The command an event records, if it is a `command_received` (recorded at `at`, by the
    /// command `id`): decided at the instant it was requested for.
    pub fn of_event(id: Option<String>, at: Instant, event: &Event) -> Option<Recorded> {
        match event {
            Event::CommandReceived { command, index, requested_at } => {
                Some(Recorded { id, at: requested_at.unwrap_or(at), index: *index, command: command.clone() })
            }
            _ => None,
        }
    }
}

/// The commands a log recorded, in order.
pub fn commands(envelopes: &[Envelope]) -> Vec<Recorded> {
    envelopes
        .iter()
        .filter(|e| e.event_type == "command_received")
        .filter_map(|e| Recorded::of_event(e.command_id.clone(), e.at, &poolbill_projections::event_of(e).ok()?))
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
    let mut log = Vec::new();
    let mut record = |step: Step| log.extend(step.events.into_iter().map(|event| (step.at, step.command_id.clone(), event)));
    let mut rerunner = Rerunner::new(Projections::new(), what_if);
    for recorded in commands {
        rerunner.command(recorded, &mut record);
    }
    let projections = rerunner.finish(until, &mut record);
    Rerun { envelopes: log, projections }
}

/// A re-run fed one recorded command at a time as a log is read, in step with it: the same
/// steps as [`rerun`] takes for the whole list (it is made of this), each handed on as it is
/// taken. [`rerun`]'s clock moves only at commands and at the end; a re-run that keeps pace with
/// the log ([`Rerunner::keep_pace`]) takes the same steps in the same order, as long as no
/// command is for an instant before a step already taken.
pub struct Rerunner<'w> {
    ledger: Ledger,
    what_if: &'w WhatIf,
    /// Whether the first command has come (the what-if's terms are then in force).
    started: bool,
    /// The latest instant of a step [`Rerunner::keep_pace`] took since the last command.
    ahead: Option<Instant>,
    /// The latest instant [`Rerunner::keep_pace`] let the clock pass since the last command (a
    /// command may make something due at its own instant).
    paced_to: Option<Instant>,
}

impl<'w> Rerunner<'w> {
    /// A re-run from `projections` of an empty log: [`Projections::live`] to keep only what is
    /// live, [`Projections::new`] to keep every bill too.
    pub fn new(projections: Projections, what_if: &'w WhatIf) -> Rerunner<'w> {
        Rerunner { ledger: Ledger::from_projections(projections), what_if, started: false, ahead: None, paced_to: None }
    }

    /// Let the clock pass `to`, an instant the log has reached, so that the re-run keeps pace
    /// with a log read alongside it (its settlements come as the log's do, not all at the next
    /// command). What falls due depends on the state alone, so this takes the steps the next
    /// command's [`Rerunner::command`] would take first, sooner — unless that command is for an
    /// earlier instant than a step taken here (a late command, after a clock that moved by
    /// itself): [`Rerunner::command_in_step`] says so, and the re-run is then not [`rerun`]'s.
    pub fn keep_pace(&mut self, to: Instant, mut emit: impl FnMut(Step)) {
        // Finding what is due looks at every meter: once an instant (a log holds many events
        // at each), not once an event.
        if !self.started || self.paced_to.is_some_and(|paced| paced >= to) {
            return;
        }
        self.paced_to = Some(to);
        let ahead = &mut self.ahead;
        self.ledger.advance(to, |step| {
            *ahead = Some(ahead.map_or(step.at, |a| a.max(step.at)));
            emit(step);
        });
    }

    /// [`Rerunner::command`], if the steps [`Rerunner::keep_pace`] took since the last command
    /// are all at or before this one's instant; false (and nothing done) if not.
    pub fn command_in_step(&mut self, recorded: &Recorded, emit: impl FnMut(Step)) -> bool {
        if self.ahead.is_some_and(|ahead| ahead > recorded.at) {
            return false;
        }
        self.command(recorded, emit);
        true
    }

    /// What is due by the command's instant, then (the first time) the what-if's terms, then
    /// the command, unless it sets what the what-if replaces.
    pub fn command(&mut self, recorded: &Recorded, mut emit: impl FnMut(Step)) {
        // What keep_pace took before it is behind the re-run now.
        (self.ahead, self.paced_to) = (None, None);
        let replaced = match &recorded.command {
            Command::SetPolicy { .. } => self.what_if.policy.is_some(),
            Command::SetPrice { spec, .. } => self.what_if.catalog.contains_key(spec),
            _ => false,
        };
        self.ledger.advance(recorded.at, &mut emit);
        if !self.started {
            // The what-if's terms are in force from the first instant, before any command.
            self.started = true;
            let mut set = Vec::new();
            if let Some(policy) = &self.what_if.policy {
                set.push(Command::SetPolicy { policy: policy.clone() });
            }
            for (spec, price) in &self.what_if.catalog {
                set.push(Command::SetPrice { spec: spec.clone(), price: price.clone() });
            }
            for command in set {
                // A what-if term that changes nothing (R17) leaves no trace.
                if let Some(step) = self.ledger.decide_if_accepted(Some("what-if".to_string()), recorded.at, &command) {
                    emit(step);
                }
            }
        }
        if !replaced {
            self.ledger.execute(recorded.id.clone(), recorded.at, &recorded.command, recorded.index, &mut emit);
        }
    }

    /// Let the clock pass `until` (the log's last instant), and give the projections.
    pub fn finish(mut self, until: Instant, emit: impl FnMut(Step)) -> Projections {
        self.ledger.advance(until, emit);
        self.ledger.into_projections()
    }
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

/// What [`rerun_beside`] hands on: a line the log records (at its position), or a step of the
/// re-run.
pub enum Beside<'a> {
    Recorded(u64, &'a poolbill_domain::BillLine),
    Rerun(Step),
}

/// Read the log once, handing on each line it records, and re-run its commands under
/// `what_if` as they come (up to its last instant), handing on each step of the re-run (audit
/// and diff compare the two as both come). `paced`: the re-run's clock follows the log's
/// instants as they come ([`Rerunner::keep_pace`]), so that its settlements come with the log's
/// and lines wait for their pair only a step; false if a command then came for an instant the
/// re-run had passed (the rest of the log is read, and nothing more handed on).
pub fn rerun_beside<S: crate::source::EventSource>(
    source: &S,
    what_if: &WhatIf,
    paced: bool,
    mut take: impl FnMut(Beside),
) -> Result<bool, S::Error> {
    let mut rerunner = Rerunner::new(Projections::live(), what_if);
    let mut until = None;
    let mut in_step = true;
    crate::pipeline::fold_pipelined(
        poolbill_ledger::Upto::All,
        |push| source.read(push),
        |_, _, _| {},
        |_, at, event, _| {
            if !in_step {
                return;
            }
            until = Some(at.at);
            match event {
                Event::Charged { line } => take(Beside::Recorded(at.position, line)),
                // The command's id is not part of any decision: it is left out.
                Event::CommandReceived { .. } => {
                    if let Some(command) = Recorded::of_event(None, at.at, event) {
                        in_step = rerunner.command_in_step(&command, |step| take(Beside::Rerun(step)));
                    }
                }
                _ => {}
            }
            if paced && in_step {
                rerunner.keep_pace(at.at, |step| take(Beside::Rerun(step)));
            }
        },
    )?;
    if !in_step {
        return Ok(false);
    }
    if let Some(until) = until {
        rerunner.finish(until, |step| take(Beside::Rerun(step)));
    }
    Ok(true)
}
