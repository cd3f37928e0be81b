//! `poolbill-store`: what poolbill needs of an event log, whatever keeps it — the stored
//! [`Envelope`], append requests with their expected versions and idempotent command ids, and
//! the [`EventStore`] trait every backend implements (`poolbill-store-sled` is the default;
//! PostgreSQL is to come), with one [`conformance`] suite they all pass. No database here:
//! projections and the ledger read envelopes without compiling a backend.
//!
//! Positions are 1-based and gapless across the whole log; versions are 1-based and gapless
//! within a stream; instants never decrease along the log. Each append request lands entirely
//! or not at all, and nothing is acknowledged before it is durable.

use std::fmt;

pub mod conformance;

/// A point in time with its original UTC offset.
pub type Instant = chrono::DateTime<chrono::FixedOffset>;

/// One stored event. `at` serializes as RFC 3339 keeping its offset.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Envelope {
    /// Global position, 1-based, gapless, strictly increasing.
    pub position: u64,
    /// Stream id, e.g. `"account-acct-1"`.
    pub stream: String,
    /// Per-stream version, 1-based, gapless within the stream.
    pub version: u64,
    pub event_type: String,
    pub schema_version: u32,
    /// When it happened.
    pub at: Instant,
    pub command_id: Option<String>,
    pub payload: Payload,
}

/// An event to append; the store assigns position and version.
#[derive(Clone, Debug)]
pub struct NewEvent {
    pub stream: String,
    pub event_type: String,
    pub schema_version: u32,
    pub at: Instant,
    pub payload: Payload,
}

impl NewEvent {
    /// The envelope this event becomes at `position`, as `version` of its stream, written for
    /// `command_id`: what every backend stores.
    pub fn at_position(&self, position: u64, version: u64, command_id: Option<&str>) -> Envelope {
        Envelope {
            position,
            stream: self.stream.clone(),
            version,
            event_type: self.event_type.clone(),
            schema_version: self.schema_version,
            at: self.at,
            command_id: command_id.map(str::to_string),
            payload: self.payload.clone(),
        }
    }
}

/// An event's payload as stored. Stores keep it as given and never look inside.
///
/// `Json` is the portable form (exported logs, and every event stored before the binary
/// encoding); `Binary` is a compact encoding defined by whoever writes the events (poolbill's
/// domain: `Event::encode_binary`), read back by the same. A binary payload has no JSON form
/// here: serializing an envelope that carries one is an error, so convert it first (the
/// projections' `portable`).
#[derive(Clone, Debug, PartialEq)]
pub enum Payload {
    Json(serde_json::Value),
    Binary(Vec<u8>),
}

impl Payload {
    /// The JSON payload, if that is how it is stored.
    pub fn as_json(&self) -> Option<&serde_json::Value> {
        match self {
            Payload::Json(value) => Some(value),
            Payload::Binary(_) => None,
        }
    }
}

impl From<serde_json::Value> for Payload {
    fn from(value: serde_json::Value) -> Payload {
        Payload::Json(value)
    }
}

impl serde::Serialize for Payload {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Payload::Json(value) => value.serialize(serializer),
            Payload::Binary(_) => {
                Err(serde::ser::Error::custom("a binary payload has no JSON form here: convert the envelope to its portable form first"))
            }
        }
    }
}

impl<'de> serde::Deserialize<'de> for Payload {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Payload, D::Error> {
        serde_json::Value::deserialize(deserializer).map(Payload::Json)
    }
}

/// Optimistic concurrency check on one stream. `NoStream` means version 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpectedVersion {
    Any,
    NoStream,
    Exactly(u64),
}

impl ExpectedVersion {
    /// Whether a stream at version `actual` passes this check.
    pub fn accepts(self, actual: u64) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => actual == 0,
            ExpectedVersion::Exactly(v) => actual == v,
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Any => write!(f, "any version"),
            ExpectedVersion::NoStream => write!(f, "no stream (version 0)"),
            ExpectedVersion::Exactly(v) => write!(f, "version {v}"),
        }
    }
}

/// One atomic unit of work.
#[derive(Clone, Debug)]
pub struct AppendRequest {
    /// Idempotency key: a request whose id is already recorded is a no-op.
    pub command_id: Option<String>,
    /// Optimistic concurrency checks; streams not listed are unchecked.
    pub expected: Vec<(String, ExpectedVersion)>,
    /// May be empty (e.g. only an outcome is recorded).
    pub events: Vec<NewEvent>,
    /// Caller's result, stored under `command_id`.
    pub outcome: serde_json::Value,
    /// What the command id stands for, in a canonical text (the command and its instant),
    /// stored with the outcome so that a later use of the id can be compared with it in full:
    /// the same id for another command is refused, never answered as a duplicate.
    pub fingerprint: Option<String>,
}

/// What was recorded for a command id.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CommandRecord {
    /// `None` when the command appended no events.
    pub first_position: Option<u64>,
    pub last_position: Option<u64>,
    pub outcome: serde_json::Value,
    /// The request's fingerprint (see [`AppendRequest::fingerprint`]); none in records written
    /// before fingerprints were kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum AppendOutcome {
    /// The request was applied now.
    Appended(CommandRecord),
    /// The command id was already recorded; nothing was written. Carries the
    /// original record.
    Duplicate(CommandRecord),
}

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum StoreError {
    /// An `expected` check failed; nothing was written.
    #[error("concurrency conflict on stream {stream:?}: expected {expected}, but it is at version {actual}")]
    Conflict { stream: String, expected: ExpectedVersion, actual: u64 },
    /// An event is earlier than the log's last event (or an earlier event of the
    /// same request); nothing was written.
    #[error("event at {} is earlier than the preceding event at {}", at.to_rfc3339(), last.to_rfc3339())]
    OutOfOrder { at: Instant, last: Instant },
    /// Checksum mismatch, undecodable bytes or a gap. `position` is the first
    /// bad global position, or 0 when the damage is not in the `events` tree
    /// (e.g. an undecodable command record).
    #[error("event log corrupt at position {position}: {detail}")]
    Corrupt { position: u64, detail: String },
    /// The backend's database failed; `context` says doing what.
    #[error("storage error: {context}")]
    Backend {
        context: String,
        #[source]
        source: Shared<BackendError>,
    },
    /// A file beside sled's (the high-water mark) could not be read or written.
    #[error("storage error: {context}")]
    Io {
        context: String,
        #[source]
        source: Shared<std::io::Error>,
    },
    /// A value could not be encoded as JSON.
    #[error("storage error: {context}")]
    Encode {
        context: String,
        #[source]
        source: Shared<serde_json::Error>,
    },
    /// The backend's database panicked while opening a store that had acknowledged nothing yet.
    #[error("storage error: opening the database at {path}: it panicked while recovering its files")]
    Panicked { path: String },
    /// Another process has the store open (backends that lock their files, as sled does):
    /// nothing is wrong with it.
    #[error("the store at {path} is in use by another process")]
    InUse { path: String },
    /// The writer no longer holds the store (a shard whose lease another engine took: its
    /// fencing token is stale). Nothing was written; this writer must stop writing here.
    #[error("the store refuses this writer: {detail}; nothing was written")]
    Fenced { detail: String },
    /// The store was written by a newer build, in a layout this one does not know: nothing
    /// was read or changed.
    #[error(
        "the store at {path} was written by a newer poolbill (layout {layout}; this build reads layouts up to {known}): open it with that version"
    )]
    Newer { path: String, layout: u32, known: u32 },
    /// What cannot happen did: a bug in the store.
    #[error("internal error in the store: {0}")]
    Internal(&'static str),
    /// An earlier write failed and the store has not recovered yet ([`EventStore::recover`]):
    /// it refuses every read and write meanwhile, so that nothing is decided or answered from
    /// what may not be on disk. Nothing was done.
    #[error("the store cannot be used until it recovers from a failed write ({why}); nothing was done")]
    Unavailable { why: String },
    /// A write failed at or after its commit (the batch was applied, its flush failed): it may
    /// or may not be on disk, and a crash may still lose it. The store refuses everything until
    /// it recovers; then its log says which.
    #[error("the outcome of the write is unknown: {context}")]
    OutcomeUnknown {
        context: String,
        #[source]
        source: Box<StoreError>,
    },
}

impl StoreError {
    /// Whether this is the store failing (its disk or database), as opposed to a request it
    /// refused (a conflict, an instant out of order) or damage it found.
    pub fn is_outage(&self) -> bool {
        matches!(
            self,
            StoreError::Backend { .. }
                | StoreError::Io { .. }
                | StoreError::Unavailable { .. }
                | StoreError::OutcomeUnknown { .. }
                | StoreError::Panicked { .. }
        )
    }
}

/// The tags whose counts answer rank questions — a bill's number, from the lines of each hour
/// and month (`explain`) — and are kept as events are indexed. Any other tag's count a backend
/// may add up from its posting lists when asked: `tag_counts` answers for every tag either way,
/// and a store does not keep a count for each of the thousands of resources a year brings.
pub const COUNTED_TAGS: &str = "bill-";

/// The counts of the tags from `from` (included) to `to` (excluded), taken from `counts_of`
/// the prefix the two share (cut back to a character's boundary).
pub fn counts_between_by_prefix(
    from: &str,
    to: &str,
    counts_of: impl FnOnce(&str) -> Result<Vec<(String, u64)>, StoreError>,
) -> Result<Vec<(String, u64)>, StoreError> {
    let mut shared = from.bytes().zip(to.bytes()).take_while(|(a, b)| a == b).count();
    while !from.is_char_boundary(shared) {
        shared -= 1;
    }
    Ok(counts_of(&from[..shared])?.into_iter().filter(|(tag, _)| from <= tag.as_str() && tag.as_str() < to).collect())
}

/// A cause kept inside a [`StoreError`]: shared, so that the error stays `Clone` (a failed
/// write answers every request of its batch), and compared by kind of error and message.
#[derive(Debug)]
pub struct Shared<E: ?Sized>(pub std::sync::Arc<E>);

impl<E: ?Sized> Clone for Shared<E> {
    fn clone(&self) -> Self {
        Shared(self.0.clone())
    }
}

impl<E: fmt::Display + ?Sized> PartialEq for Shared<E> {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_string() == other.0.to_string()
    }
}

impl<E: fmt::Display + ?Sized> fmt::Display for Shared<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<E: std::error::Error + ?Sized> std::error::Error for Shared<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl<E> From<E> for Shared<E> {
    fn from(e: E) -> Self {
        Shared(std::sync::Arc::new(e))
    }
}

/// Any backend's own error type.
pub type BackendError = dyn std::error::Error + Send + Sync + 'static;

impl StoreError {
    /// The backend's database failed doing `context`.
    pub fn backend(context: impl Into<String>, source: impl std::error::Error + Send + Sync + 'static) -> StoreError {
        StoreError::Backend { context: context.into(), source: Shared(std::sync::Arc::new(source) as std::sync::Arc<BackendError>) }
    }

    /// A file the backend keeps failed doing `context`.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> StoreError {
        StoreError::Io { context: context.into(), source: source.into() }
    }
}

/// An error and its causes on one line (`a: b: c`): how every layer (the store's outage
/// reasons, the engine's answers, `serve` and the HTTP API) words a failure in one line.
pub fn one_line(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        out.push_str(&format!(": {e}"));
        cause = e.source();
    }
    out
}

/// Summary of a successful [`EventStore::verify`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    pub events: u64,
    pub streams: u64,
    pub commands: u64,
}

/// How many leaves of the log's Merkle tree one chunk of the index holds. A store keeps the
/// root of each complete chunk (the complete subtree over its leaves) and the leaf hashes of the
/// last, incomplete one; a proof that goes down into a complete chunk recomputes its leaves
/// from the chunk's events (and checks them against the kept root).
pub const MERKLE_CHUNK: u64 = 256;

/// A SHA-256 hash of the Merkle index (RFC 6962 leaf or node hash).
pub type Hash = [u8; 32];

/// The root of a complete chunk of [`MERKLE_CHUNK`] leaf hashes, as every backend keeps it.
pub fn merkle_chunk_root(leaves: &[Hash]) -> Hash {
    poolbill_merkle::perfect_root(leaves)
}

/// How many snapshots a store keeps (the newest).
pub const SNAPSHOTS_KEPT: usize = 8;

/// What [`EventStore::append_chain`] did: the outcomes of the applied prefix and, if a request
/// failed, its index in the chain and its error.
pub type ChainOutcome = (Vec<AppendOutcome>, Option<(usize, StoreError)>);

/// An append-only event log. Implementations are cheap to clone and shared across threads;
/// every call may block (the engine makes them off its async threads).
pub trait EventStore: Send + Sync {
    /// Group commit of independent requests: each its own atomic transaction, applied in order
    /// (a later one sees the earlier ones, e.g. as a duplicate), then one flush. The outer
    /// `Err` is a failed transaction or flush: then nothing in the batch may be considered
    /// acknowledged, and [`StoreError::OutcomeUnknown`] says it may be on disk all the same
    /// (any other error: nothing of it was written).
    fn append_batch(&self, reqs: Vec<AppendRequest>) -> Result<Vec<Result<AppendOutcome, StoreError>>, StoreError>;

    /// Group commit of a chain, each request decided on the state its predecessors leave:
    /// applied in order until the first that fails (the rest may depend on it), then one flush
    /// either way. Returns the outcomes of the applied prefix and, if one failed, its index and
    /// error. The outer `Err` is as for [`append_batch`](EventStore::append_batch).
    fn append_chain(&self, reqs: Vec<AppendRequest>) -> Result<ChainOutcome, StoreError>;

    /// One request, flushed.
    fn append(&self, req: AppendRequest) -> Result<AppendOutcome, StoreError> {
        self.append_batch(vec![req])?.pop().unwrap_or(Err(StoreError::Internal("append_batch returned no result")))
    }

    /// Every event from `from_position` on (0 and 1 both mean the start), in position order,
    /// read lazily (on any thread); the iterator ends after its first error.
    fn read_all(&self, from_position: u64) -> Box<dyn Iterator<Item = Result<Envelope, StoreError>> + Send + '_>;

    /// The events of `stream` from version `from_version` on (0 and 1: the start), in order.
    fn read_stream(&self, stream: &str, from_version: u64) -> Result<Vec<Envelope>, StoreError>;

    /// The stream's current version (0: no such stream).
    fn stream_version(&self, stream: &str) -> Result<u64, StoreError>;

    /// The event at `position`, if the log reaches it.
    fn read_at(&self, position: u64) -> Result<Option<Envelope>, StoreError> {
        if position == 0 {
            return Ok(None);
        }
        self.read_all(position).next().transpose().map(|e| e.filter(|e| e.position == position))
    }

    /// The positions of the events tagged `tag`, in log order, from position `from` on, at
    /// most `limit` of them.
    ///
    /// Tags are a secondary index of the log (e.g. the resources an event concerns), kept
    /// beside it: written in bulk by [`tag_existing`](EventStore::tag_existing) after the
    /// events, not by appends (whose transactions they would slow), and rebuilt from the log
    /// whenever they trail it. Readers bring the index up to date before they use it.
    fn tagged(&self, tag: &str, from: u64, limit: usize) -> Result<Vec<u64>, StoreError>;

    /// How many events carry each tag that starts with `prefix`, in tag order.
    fn tag_counts(&self, prefix: &str) -> Result<Vec<(String, u64)>, StoreError>;

    /// How many events carry each tag from `from` (included) to `to` (excluded), in tag order:
    /// a stretch of tags that share no prefix of their own (the hours of a month). This default
    /// filters the counts of the prefix `from` and `to` share; a store that keeps its counts in
    /// tag order reads the stretch alone.
    fn tag_counts_between(&self, from: &str, to: &str) -> Result<Vec<(String, u64)>, StoreError> {
        counts_between_by_prefix(from, to, |prefix| self.tag_counts(prefix))
    }

    /// The last position whose tags are recorded: every event up to it is indexed.
    fn tagged_through(&self) -> Result<u64, StoreError>;

    /// The version of the tagging the index was built with (0: none recorded). Whoever tags
    /// events bumps its version when what it tags changes, and rebuilds the index.
    fn tags_version(&self) -> Result<u32, StoreError>;

    /// Drop the whole tag index, to be rebuilt from the log under `version`.
    fn reset_tags(&self, version: u32) -> Result<(), StoreError>;

    /// Record the tags of events already in the log, which must continue right after
    /// [`tagged_through`](EventStore::tagged_through), in order, within the log; all or
    /// nothing, flushed before it returns. The events themselves are not touched. Entries at or
    /// before `tagged_through` are skipped: another catch-up (the engine's, a reader's) may
    /// have indexed them meanwhile, and index writers are serialised by the store.
    fn tag_existing(&self, tags: &[(u64, Vec<String>)]) -> Result<(), StoreError>;

    /// The last position whose leaf hash is in the Merkle index: every event up to it is.
    ///
    /// The Merkle index is the log's RFC 6962 tree (poolbill-merkle), kept beside it like the
    /// tags: extended in bulk by [`merkle_extend`](EventStore::merkle_extend) after the events
    /// (whoever extends it computes the leaf hashes from the events), and brought up to date
    /// by its readers. It keeps the roots of complete chunks of [`MERKLE_CHUNK`] leaves and the
    /// leaf hashes after the last complete chunk, never one entry per leaf.
    fn merkle_through(&self) -> Result<u64, StoreError>;

    /// Add the leaf hashes of events already in the log, which must continue right after
    /// [`merkle_through`](EventStore::merkle_through), in order, within the log; each chunk
    /// they complete is kept as its root ([`merkle_chunk_root`]). All or nothing, flushed
    /// before it returns. Leaves at or before `merkle_through` are skipped, as for
    /// [`tag_existing`](EventStore::tag_existing).
    fn merkle_extend(&self, leaves: &[(u64, Hash)]) -> Result<(), StoreError>;

    /// The roots of the complete chunks `from..to` (chunk `i` holds the leaves of positions
    /// `i * MERKLE_CHUNK + 1 ..= (i + 1) * MERKLE_CHUNK`). Asking for a chunk the index has not
    /// completed is an error.
    fn merkle_chunk_roots(&self, from: u64, to: u64) -> Result<Vec<Hash>, StoreError>;

    /// The leaf hashes after the last complete chunk, in order (fewer than [`MERKLE_CHUNK`]).
    fn merkle_tail(&self) -> Result<Vec<Hash>, StoreError>;

    /// The last position written (0: an empty log).
    fn last_position(&self) -> Result<u64, StoreError>;

    /// The instant of the last event, if any.
    fn last_instant(&self) -> Result<Option<Instant>, StoreError>;

    /// What was recorded for a command id, if it was seen.
    fn command(&self, command_id: &str) -> Result<Option<CommandRecord>, StoreError>;

    /// What was recorded for each of `ids` that was seen: a group commit's lookups in one go
    /// (one round trip on a remote database; by default one [`command`](EventStore::command)
    /// call each).
    fn commands(&self, ids: &[String]) -> Result<std::collections::HashMap<String, CommandRecord>, StoreError> {
        let mut known = std::collections::HashMap::new();
        for id in ids {
            if let Some(record) = self.command(id)? {
                known.insert(id.clone(), record);
            }
        }
        Ok(known)
    }

    /// Keep a snapshot of the projections as they stood after `position` (opaque bytes, checked
    /// by whoever reads them back). Snapshots are an optimisation, never the source of truth:
    /// only the newest [`SNAPSHOTS_KEPT`] are kept.
    fn put_snapshot(&self, position: u64, bytes: &[u8]) -> Result<(), StoreError>;

    /// The newest snapshot taken at or before `position`, with its position.
    fn snapshot_at_or_before(&self, position: u64) -> Result<Option<(u64, Vec<u8>)>, StoreError>;

    /// The positions of the snapshots kept, oldest first.
    fn snapshot_positions(&self) -> Result<Vec<u64>, StoreError>;

    /// After a write failed (an outage, [`StoreError::is_outage`]): bring the store back to
    /// what is on disk, durably (e.g. flush again, or reopen its files), and use it again. Err
    /// while it still cannot; a store that never refuses after a failure has nothing to do.
    fn recover(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Read everything back and check it (checksums, gapless positions and versions, indexes,
    /// instants in order), naming the first damage found.
    fn verify(&self) -> Result<VerifyReport, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use conformance::ts;
    use serde_json::json;

    #[test]
    fn envelope_json_keeps_the_offset() {
        let env = Envelope {
            position: 1,
            stream: "s".into(),
            version: 1,
            event_type: "t".into(),
            schema_version: 2,
            at: ts("2024-03-01T10:00:00-04:00"),
            command_id: None,
            payload: json!(null).into(),
        };
        let text = serde_json::to_string(&env).unwrap();
        assert!(text.contains("\"2024-03-01T10:00:00-04:00\""), "{text}");
        let back: Envelope = serde_json::from_str(&text).unwrap();
        assert_eq!(back.at.offset(), env.at.offset());
    }
}
