//! Deciding a group commit, without the database: given what the log holds now (its head, the
//! records of the batch's command ids, the versions of the batch's streams), each request is
//! checked and given its positions, versions and event ids in order, each seeing the earlier
//! ones. What comes out is written by one statement per table; a request that fails its checks
//! contributes nothing to it.

use poolbill_store::{AppendOutcome, AppendRequest, CommandRecord, Envelope, Instant, Payload, StoreError};
use std::collections::HashMap;
use uuid::Uuid;

/// How the requests of one group commit relate.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Group {
    /// Each stands alone: one that fails does not stop the others.
    Independent,
    /// Each may depend on its predecessors: the first that fails stops the rest.
    Chain,
}

/// The end of the log: its last position (0: empty) and the instant of its last event.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Head {
    pub last_position: u64,
    pub last_instant: Option<Instant>,
}

/// A payload as a column holds it: JSON as its text (kept verbatim by PostgreSQL's `json`
/// type, unlike `jsonb`, which reorders keys and refuses `\u0000`), binary as `bytea`.
#[derive(Clone, Debug, PartialEq)]
pub enum Stored {
    Json(String),
    Binary(Vec<u8>),
}

impl Stored {
    pub fn of(payload: &Payload, position: u64) -> Result<Stored, StoreError> {
        match payload {
            Payload::Json(value) => serde_json::to_string(value)
                .map(Stored::Json)
                .map_err(|e| StoreError::Encode { context: format!("serializing the payload at position {position}"), source: e.into() }),
            Payload::Binary(bytes) => Ok(Stored::Binary(bytes.clone())),
        }
    }
}

/// One event as it will be inserted.
#[derive(Clone, Debug)]
pub struct Row {
    pub envelope: Envelope,
    pub id: Uuid,
    pub payload: Stored,
    pub checksum: u32,
}

/// What a group commit writes, and each request's answer.
#[derive(Debug, Default)]
pub struct Plan {
    pub results: Vec<Result<AppendOutcome, StoreError>>,
    pub rows: Vec<Row>,
    pub commands: Vec<(String, CommandRecord)>,
}

/// The namespace of every event id (UUID v5): poolbill's own, fixed for good, so that ids
/// derived anywhere, on any shard, agree.
pub const EVENT_ID_NAMESPACE: Uuid = Uuid::from_u128(0x7f3c_9a52_1d4e_4b8a_9c61_2e0f_5a7b_3d18);

/// An event's globally unique id: UUID v5 (SHA-1, RFC 9562) in [`EVENT_ID_NAMESPACE`] of
/// `c`, the command id's length (8 bytes BE), the command id and the event's index in its
/// command (4 bytes BE); an event appended without a command id is named by `s`, its stream's
/// length, the stream and its version (8 bytes BE) instead. The same command gives the same ids
/// on every run and every store, and lengths keep two names from ever running together.
pub fn event_id(command_id: Option<&str>, index: u32, stream: &str, version: u64) -> Uuid {
    event_id_in(None, command_id, index, stream, version)
}

/// [`event_id`] of an event of shard `shard`: the name is prefixed with `h`, the shard id's
/// length (8 bytes BE) and the shard id, so that a platform-wide command applied on several
/// shards (one id, the same events) gives each shard's events ids of their own, and a merged log
/// of every shard keeps them unique. Without a shard, exactly [`event_id`]'s.
pub fn event_id_in(shard: Option<&str>, command_id: Option<&str>, index: u32, stream: &str, version: u64) -> Uuid {
    let mut name = Vec::with_capacity(40 + stream.len() + command_id.map_or(0, str::len) + shard.map_or(0, str::len));
    if let Some(shard) = shard {
        name.push(b'h');
        name.extend_from_slice(&(shard.len() as u64).to_be_bytes());
        name.extend_from_slice(shard.as_bytes());
    }
    match command_id {
        Some(id) => {
            name.push(b'c');
            name.extend_from_slice(&(id.len() as u64).to_be_bytes());
            name.extend_from_slice(id.as_bytes());
            name.extend_from_slice(&index.to_be_bytes());
        }
        None => {
            name.push(b's');
            name.extend_from_slice(&(stream.len() as u64).to_be_bytes());
            name.extend_from_slice(stream.as_bytes());
            name.extend_from_slice(&version.to_be_bytes());
        }
    }
    Uuid::new_v5(&EVENT_ID_NAMESPACE, &name)
}

/// CRC-32 of everything a row says, its position and id included: a row altered, or moved
/// under another position, no longer matches. Text is length-prefixed so that fields cannot
/// shift into one another.
pub fn checksum(envelope: &Envelope, id: &Uuid, payload: &Stored) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    let mut put = |bytes: &[u8]| {
        hasher.update(&(bytes.len() as u64).to_be_bytes());
        hasher.update(bytes);
    };
    put(&envelope.position.to_be_bytes());
    put(id.as_bytes());
    put(envelope.stream.as_bytes());
    put(&envelope.version.to_be_bytes());
    put(envelope.event_type.as_bytes());
    put(&envelope.schema_version.to_be_bytes());
    put(&envelope.at.timestamp().to_be_bytes());
    put(&envelope.at.timestamp_subsec_nanos().to_be_bytes());
    put(&envelope.at.offset().local_minus_utc().to_be_bytes());
    match &envelope.command_id {
        None => put(b"-"),
        Some(c) => {
            put(b"+");
            put(c.as_bytes());
        }
    }
    match payload {
        Stored::Json(text) => {
            put(b"json");
            put(text.as_bytes());
        }
        Stored::Binary(bytes) => {
            put(b"binary");
            put(bytes);
        }
    }
    hasher.finalize()
}

/// Decide `reqs` in order on the log as `head`, `known` (the records of command ids already
/// used) and `versions` (the current versions of the streams they name; absent: 0) describe it;
/// `shard` names the shard whose log this is, for the event ids ([`event_id_in`]).
pub fn plan(
    shard: Option<&str>,
    mut head: Head,
    mut known: HashMap<String, CommandRecord>,
    mut versions: HashMap<String, u64>,
    reqs: &[AppendRequest],
    group: Group,
) -> Plan {
    let mut plan = Plan::default();
    for req in reqs {
        let result = decide(shard, &head, &known, &versions, req);
        let result = result.map(|(rows, record)| {
            if let Some(last) = rows.last() {
                head = Head { last_position: last.envelope.position, last_instant: Some(last.envelope.at) };
            }
            for row in &rows {
                versions.insert(row.envelope.stream.clone(), row.envelope.version);
            }
            plan.rows.extend(rows);
            if let Some(id) = &req.command_id {
                known.insert(id.clone(), record.clone());
                plan.commands.push((id.clone(), record.clone()));
            }
            record
        });
        let outcome = match result {
            Ok(record) => Ok(AppendOutcome::Appended(record)),
            Err(Decided::Duplicate(record)) => Ok(AppendOutcome::Duplicate(record)),
            Err(Decided::Failed(e)) => Err(e),
        };
        let failed = outcome.is_err();
        plan.results.push(outcome);
        if failed && group == Group::Chain {
            break;
        }
    }
    plan
}

/// Why a request writes nothing.
enum Decided {
    Duplicate(CommandRecord),
    Failed(StoreError),
}

/// One request's rows and record, or why it writes nothing; the same checks in the same order
/// as the sled store: duplicate first (a failing check must not mask it), then the expected
/// versions, then the instants.
fn decide(
    shard: Option<&str>,
    head: &Head,
    known: &HashMap<String, CommandRecord>,
    versions: &HashMap<String, u64>,
    req: &AppendRequest,
) -> Result<(Vec<Row>, CommandRecord), Decided> {
    if let Some(record) = req.command_id.as_ref().and_then(|id| known.get(id)) {
        return Err(Decided::Duplicate(record.clone()));
    }
    let version_of = |stream: &str| versions.get(stream).copied().unwrap_or(0);
    for (stream, expected) in &req.expected {
        let actual = version_of(stream);
        if !expected.accepts(actual) {
            return Err(Decided::Failed(StoreError::Conflict { stream: stream.clone(), expected: *expected, actual }));
        }
    }
    let mut last = head.last_instant;
    for event in &req.events {
        if let Some(last) = last.filter(|last| event.at < *last) {
            return Err(Decided::Failed(StoreError::OutOfOrder { at: event.at, last }));
        }
        last = Some(event.at);
    }
    let mut rows = Vec::with_capacity(req.events.len());
    let mut own_versions: HashMap<&str, u64> = HashMap::new();
    for (index, event) in req.events.iter().enumerate() {
        let version = own_versions.get(event.stream.as_str()).copied().unwrap_or_else(|| version_of(&event.stream)) + 1;
        own_versions.insert(&event.stream, version);
        let position = head.last_position + 1 + index as u64;
        let envelope = event.at_position(position, version, req.command_id.as_deref());
        let index = u32::try_from(index).map_err(|_| Decided::Failed(StoreError::Internal("more than 2^32 events in one request")))?;
        let id = event_id_in(shard, req.command_id.as_deref(), index, &event.stream, version);
        let payload = Stored::of(&event.payload, position).map_err(Decided::Failed)?;
        let checksum = checksum(&envelope, &id, &payload);
        rows.push(Row { envelope, id, payload, checksum });
    }
    let (first_position, last_position) = match (rows.first(), rows.last()) {
        (Some(first), Some(last)) => (Some(first.envelope.position), Some(last.envelope.position)),
        _ => (None, None),
    };
    Ok((rows, CommandRecord { first_position, last_position, outcome: req.outcome.clone(), fingerprint: req.fingerprint.clone() }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use poolbill_store::conformance::{ev, req, ts, T0, T1};
    use poolbill_store::ExpectedVersion;
    use serde_json::json;

    #[test]
    fn event_ids_are_deterministic_and_distinct() {
        let a = event_id(Some("cmd-1"), 0, "s", 1);
        assert_eq!(a, event_id(Some("cmd-1"), 0, "other stream", 9), "a command's event is named by the command and its index alone");
        assert_eq!(a.get_version_num(), 5);
        assert_ne!(a, event_id(Some("cmd-1"), 1, "s", 1));
        assert_ne!(a, event_id(Some("cmd-10"), 0, "s", 1));
        // Lengths keep the command id and the index apart.
        assert_ne!(event_id(Some("x\0\0\0\0"), 0, "s", 1), event_id(Some("x"), 0, "s", 1));
        assert_eq!(event_id(None, 0, "s", 3), event_id(None, 7, "s", 3), "without a command: stream and version");
        assert_ne!(event_id(None, 0, "s", 3), event_id(None, 0, "s", 4));
        assert_ne!(event_id(None, 0, "c", 3), event_id(Some("c"), 3, "c", 3));
        // Pinned (computed independently, by Python's hashlib): a change of derivation would change every stored id.
        assert_eq!(event_id(Some("scenario:0"), 0, "s", 1).to_string(), "6e529579-547d-54e9-98ec-4b117c9aeafc");
    }

    #[test]
    fn shard_event_ids_differ_per_shard_and_leave_unsharded_ids_alone() {
        let plain = event_id(Some("price-1"), 0, "catalog", 1);
        assert_eq!(event_id_in(None, Some("price-1"), 0, "catalog", 1), plain);
        let s1 = event_id_in(Some("s1"), Some("price-1"), 0, "catalog", 1);
        let s2 = event_id_in(Some("s2"), Some("price-1"), 0, "catalog", 1);
        assert_ne!(s1, s2, "one platform command on two shards: two ids");
        assert_ne!(s1, plain);
        assert_eq!(s1, event_id_in(Some("s1"), Some("price-1"), 0, "catalog", 1));
        // The shard's length keeps it apart from the name after it.
        assert_ne!(event_id_in(Some("s1c"), None, 0, "x", 1), event_id_in(Some("s1"), None, 0, "cx", 1));
    }

    #[test]
    fn a_plan_gives_positions_versions_and_records_in_order() {
        let head = Head { last_position: 10, last_instant: Some(ts(T0)) };
        let versions = HashMap::from([("a".to_string(), 4)]);
        let mut conflicting = req(Some("c2"), vec![ev("a", "x", T1, json!(2))]);
        conflicting.expected = vec![("a".into(), ExpectedVersion::Exactly(4))];
        let reqs = vec![req(Some("c1"), vec![ev("a", "x", T1, json!(1)), ev("b", "x", T1, json!(1))]), conflicting, req(Some("c1"), vec![])];
        let plan = plan(None, head, HashMap::new(), versions, &reqs, Group::Independent);
        let summary: Vec<_> = plan.rows.iter().map(|r| (r.envelope.position, r.envelope.stream.as_str(), r.envelope.version)).collect();
        assert_eq!(summary, vec![(11, "a", 5), (12, "b", 1)]);
        assert!(matches!(plan.results[1], Err(StoreError::Conflict { actual: 5, .. })), "{:?}", plan.results[1]);
        assert!(matches!(&plan.results[2], Ok(AppendOutcome::Duplicate(r)) if r.first_position == Some(11)));
        assert_eq!(plan.commands.len(), 1);
        assert!(plan.rows.iter().all(|r| r.checksum == checksum(&r.envelope, &r.id, &r.payload)));
    }

    #[test]
    fn a_chain_plan_stops_at_its_first_failure() {
        let reqs = vec![
            req(None, vec![ev("a", "x", T1, json!(1))]),
            req(None, vec![ev("a", "x", T0, json!(2))]),
            req(None, vec![ev("a", "x", T1, json!(3))]),
        ];
        let plan = plan(None, Head::default(), HashMap::new(), HashMap::new(), &reqs, Group::Chain);
        assert_eq!(plan.results.len(), 2);
        assert_eq!(plan.rows.len(), 1);
    }

    #[test]
    fn the_checksum_covers_every_field() {
        let reqs = vec![req(Some("c"), vec![ev("a", "x", T0, json!({"k": 1}))])];
        let row = plan(None, Head::default(), HashMap::new(), HashMap::new(), &reqs, Group::Independent).rows.remove(0);
        let base = row.checksum;
        let mut moved = row.envelope.clone();
        moved.position += 1;
        assert_ne!(checksum(&moved, &row.id, &row.payload), base);
        let mut offset = row.envelope.clone();
        offset.at = ts("2024-03-01T09:00:00Z");
        assert_eq!(offset.at, row.envelope.at, "the same instant");
        assert_ne!(checksum(&offset, &row.id, &row.payload), base, "in another offset");
        assert_ne!(checksum(&row.envelope, &row.id, &Stored::Json("{\"k\":2}".into())), base);
        assert_ne!(checksum(&row.envelope, &Uuid::nil(), &row.payload), base);
    }
}
