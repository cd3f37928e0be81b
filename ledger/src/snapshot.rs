//! Snapshots of the live projections (state and counters) with the stream versions at a
//! position: an optimisation, never a source of truth. Each is versioned and checksummed; one
//! that cannot be read (another format, a flipped byte, another position) is ignored in favour
//! of replaying the log, and `poolbill verify` checks every kept snapshot against a replay of
//! its prefix.

use poolbill_domain::{Instant, State};
use poolbill_projections::Projections;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// The format this build writes. 2: the state keeps its jobs' bill ids by id. 3: gone
/// resources with nothing left to settle are left out (`State::forget_gone`).
pub const FORMAT: u32 = 3;

/// The formats this build reads: a format 2 snapshot is one whose state has not forgotten the
/// gone (the engine forgets them once it is loaded). Any other is ignored, not upcast: a
/// snapshot can always be made again from the log.
pub const READS: [u32; 2] = [2, FORMAT];

/// How many events the engine lets pass between snapshots, at least (see [`due`]).
pub const EVERY: u64 = 20_000;

/// Whether a snapshot is due `events_since` the last one, given at least `every` between two
/// and a state of `records` records. A snapshot costs in proportion to the state: at least as
/// many events as records pass between two, so that their cost per event stays bounded however
/// large the state (a state that kept every deleted job, 36,000 at 180 days of 200 a day, made
/// derive quadratic with a snapshot every 20,000 events).
pub fn due(events_since: u64, every: u64, records: usize) -> bool {
    events_since >= every.max(records as u64)
}

/// What a snapshot holds: everything a live engine needs to go on from `position`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub format: u32,
    pub position: u64,
    pub instant: Option<Instant>,
    pub events: u64,
    pub state: State,
    /// Each stream's version at `position` (the expected versions of the next appends).
    pub versions: BTreeMap<String, u64>,
}

/// Why a snapshot was not used.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("the snapshot's checksum does not match: it was damaged")]
    Checksum,
    #[error("the snapshot is too short to hold a checksum")]
    Short,
    #[error("the snapshot cannot be read")]
    Decode(#[from] serde_json::Error),
    #[error("the snapshot is in format {0}, this build reads formats {READS:?}")]
    Format(u32),
    #[error("the snapshot says position {found}, but it was kept under position {expected}")]
    Position { expected: u64, found: u64 },
}

impl Snapshot {
    /// The live part of `projections` and the versions: history is not kept in snapshots, nor
    /// are gone resources with nothing left to settle (`State::forget_gone`: a live engine
    /// recalls them from the log when a command names them).
    pub fn of(projections: &Projections, versions: &HashMap<String, u64>) -> Snapshot {
        Snapshot::in_format(projections, versions, FORMAT)
    }

    /// [`Snapshot::of`] as a build writing `format` wrote it (before 3, with the gone kept):
    /// what a kept snapshot of that format is checked against.
    pub fn in_format(projections: &Projections, versions: &HashMap<String, u64>, format: u32) -> Snapshot {
        let mut state = projections.state.clone();
        if format >= 3 {
            state.forget_gone();
        }
        Snapshot {
            format,
            position: projections.last_position,
            instant: projections.last_instant,
            events: projections.events,
            state,
            versions: versions.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        }
    }

    /// History-free projections to go on folding from `position + 1`, and the versions.
    pub fn into_parts(self) -> (Projections, HashMap<String, u64>) {
        let mut projections = Projections::live();
        projections.state = self.state;
        projections.events = self.events;
        projections.last_position = self.position;
        projections.last_instant = self.instant;
        (projections, self.versions.into_iter().collect())
    }

    /// CRC-32 of the JSON, then the JSON.
    pub fn encode(&self) -> Vec<u8> {
        framed(self)
    }

    /// The bytes [`Snapshot::of`]`(projections, versions).encode()` gives, made from the
    /// projections as they are, whose state has forgotten what is gone (the engine's does):
    /// the state is not copied, and the text is made once, in place.
    pub fn encode_live(projections: &Projections, versions: &HashMap<String, u64>) -> Vec<u8> {
        /// [`Snapshot`]'s fields, in its order, borrowed.
        #[derive(Serialize)]
        struct Live<'a> {
            format: u32,
            position: u64,
            instant: Option<Instant>,
            events: u64,
            state: &'a State,
            versions: BTreeMap<&'a str, u64>,
        }
        framed(&Live {
            format: FORMAT,
            position: projections.last_position,
            instant: projections.last_instant,
            events: projections.events,
            state: &projections.state,
            versions: versions.iter().map(|(k, v)| (k.as_str(), *v)).collect(),
        })
    }

    /// Read a snapshot kept under `position`, checking its checksum, format and position.
    pub fn decode(position: u64, bytes: &[u8]) -> Result<Snapshot, SnapshotError> {
        if bytes.len() < 4 {
            return Err(SnapshotError::Short);
        }
        let (crc, json) = bytes.split_at(4);
        if crc != crc32fast::hash(json).to_be_bytes() {
            return Err(SnapshotError::Checksum);
        }
        // The format first, so that another format is named rather than failing to decode.
        #[derive(Deserialize)]
        struct Format {
            format: u32,
        }
        let format: Format = serde_json::from_slice(json)?;
        if !READS.contains(&format.format) {
            return Err(SnapshotError::Format(format.format));
        }
        let snapshot: Snapshot = serde_json::from_slice(json)?;
        if snapshot.position != position {
            return Err(SnapshotError::Position { expected: position, found: snapshot.position });
        }
        Ok(snapshot)
    }
}

/// CRC-32 (BE) of `value`'s JSON, then the JSON, in one buffer.
fn framed(value: &impl Serialize) -> Vec<u8> {
    let mut bytes = vec![0; 4];
    serde_json::to_writer(&mut bytes, value).expect("snapshots serialise");
    let crc = crc32fast::hash(&bytes[4..]);
    bytes[..4].copy_from_slice(&crc.to_be_bytes());
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> Snapshot {
        let mut projections = Projections::live();
        projections.last_position = 7;
        projections.events = 7;
        let versions = HashMap::from([("account-a".to_string(), 3), ("commands".to_string(), 4)]);
        Snapshot::of(&projections, &versions)
    }

    #[test]
    fn snapshots_come_every_20000_events_or_as_many_as_the_state_has_records() {
        // (events since the last, records in the state, due?)
        let table = [
            (19_999, 10, false),
            (20_000, 10, true),
            (20_000, 20_000, true),
            (20_000, 36_000, false),
            (35_999, 36_000, false),
            (36_000, 36_000, true),
        ];
        for (since, records, expected) in table {
            assert_eq!(due(since, EVERY, records), expected, "{since} events since, {records} records");
        }
    }

    #[test]
    fn a_snapshot_of_the_live_projections_is_the_snapshot_of_their_copy() {
        let mut projections = Projections::live();
        let at = chrono::DateTime::parse_from_rfc3339("2023-04-01T00:00:00+08:00").unwrap();
        for (k, event) in [
            poolbill_domain::Event::AccountOpened {
                account: "a".into(),
                balance: rust_decimal::Decimal::new(1000, 2),
                level: "standard".into(),
                discount: rust_decimal::Decimal::ZERO,
            },
            poolbill_domain::Event::ToppedUp {
                account: "a".into(),
                amount: rust_decimal::Decimal::new(5, 0),
                balance_after: rust_decimal::Decimal::new(1500, 2),
            },
        ]
        .into_iter()
        .enumerate()
        {
            projections.apply_event(k as u64 + 1, at, &event);
        }
        let versions = HashMap::from([("account-a".to_string(), 2), ("commands".to_string(), 4), ("z".to_string(), 1)]);
        let live = Snapshot::encode_live(&projections, &versions);
        assert_eq!(live, Snapshot::of(&projections, &versions).encode());
        assert_eq!(Snapshot::decode(2, &live).unwrap().state, projections.state);
    }

    #[test]
    fn a_snapshot_reads_back_as_written() {
        let written = snapshot();
        assert_eq!(Snapshot::decode(7, &written.encode()).unwrap(), written);
    }

    #[test]
    fn a_damaged_or_foreign_snapshot_is_refused_never_trusted() {
        let bytes = snapshot().encode();
        let mut flipped = bytes.clone();
        let last = flipped.len() - 2;
        flipped[last] ^= 1;
        assert!(matches!(Snapshot::decode(7, &flipped), Err(SnapshotError::Checksum)));
        assert!(matches!(Snapshot::decode(7, &bytes[..3]), Err(SnapshotError::Short)));
        assert!(matches!(Snapshot::decode(8, &bytes), Err(SnapshotError::Position { expected: 8, found: 7 })));
        let mut future = snapshot();
        future.format = FORMAT + 1;
        assert!(matches!(Snapshot::decode(7, &future.encode()), Err(SnapshotError::Format(f)) if f == FORMAT + 1));
    }
}
