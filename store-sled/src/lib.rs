//! `poolbill-store-sled`: poolbill's default event store, an [`EventStore`] on sled.
//!
//! This is the only crate that touches sled. It knows nothing about billing:
//! events are opaque payloads (binary or JSON) wrapped in [`Envelope`]s.
//!
//! # Tree layout
//!
//! | tree           | key                                         | value                                        |
//! |----------------|---------------------------------------------|----------------------------------------------|
//! | `events`       | global position, `u64` big-endian           | CRC32 (4 bytes BE), then the binary envelope (see `encode_event`), or the JSON of the [`Envelope`] in stores written before it |
//! | `streams`      | stream id bytes                             | current stream version, `u64` BE             |
//! | `stream_index` | stream id bytes, `0x00`, version `u64` BE   | global position, `u64` BE                    |
//! | `commands`     | command id bytes                            | JSON of the [`CommandRecord`]                |
//! | `meta`         | `last_position` / `last_instant`            | `u64` BE / RFC 3339 text                     |
//! | `tags`         | `p`, tag bytes, `0x00`, window `u32` BE     | the tag's positions in that window of 65,536: a varint count, then varint gaps |
//! | `tags`         | `tagged_through` / `version`                | `u64` BE: every event up to it is indexed / `u32` BE: the tagging's version |
//! | `merkle`       | `c`, chunk number `u64` BE                  | the root of that complete chunk of 256 leaves of the log's Merkle tree (32 bytes) |
//! | `merkle`       | `tail` / `through`                          | the leaf hashes after the last complete chunk (32 bytes each) / `u64` BE: every event up to it is in the tree |
//!
//! Big-endian keys make sled's byte order equal to numeric order, so range scans
//! return events by position and stream entries by version. Stream ids may
//! contain any byte: `stream_index` keys are matched on their exact length, so a
//! stream named `"a\0…"` can never be mistaken for stream `"a"`.
//!
//! Positions are 1-based and gapless across the whole log; versions are 1-based
//! and gapless within a stream; instants never decrease along the log. Every read
//! checks the CRC and the position, and reports [`StoreError::Corrupt`] naming
//! the position instead of skipping anything.
//!
//! # Durability contract
//!
//! A group commit ([`EventStore::append_batch`], [`EventStore::append_chain`]) is ONE sled
//! transaction spanning every tree its requests write, so it lands entirely or not at all
//! (idempotency checks, concurrency checks, events, indexes, meta and command records
//! together), then one call of sled's synchronous `Db::flush`, and only then does it return.
//! Inside the transaction each request is still atomic on its own: all its checks, reads and
//! encodings come before its first write, so one that fails (`Conflict`, `OutOfOrder`, …) has
//! written nothing, and the later ones see the earlier ones' writes (sled's transactional reads
//! see the transaction's own writes). A sled error fails the whole batch. Nothing is
//! acknowledged before it is on disk; if the transaction or the flush fails the whole batch is
//! unacknowledged. [`EventStore::append`] is a batch of one. `flush_async` is never used (it is
//! known to deadlock in this sled version).
//!
//! sled is pinned to `=0.34.7`, the last stable release: 1.0 is an alpha
//! without transactions, which this store depends on.

use poolbill_store::{
    merkle_chunk_root, one_line, AppendOutcome, AppendRequest, ChainOutcome, CommandRecord, Envelope, EventStore, Hash, Instant, Payload, StoreError,
    VerifyReport, MERKLE_CHUNK, SNAPSHOTS_KEPT,
};
use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional, TransactionalTree};

mod mark;
#[cfg(test)]
mod tests;
mod varint;

/// How often opening a locked store is tried again, 50 ms apart, before it is called in use.
const LOCK_RETRIES: u32 = 20;

/// sled locks its files, and says so only in the words of an `Other` I/O error (sled 0.34.7,
/// config.rs).
fn is_locked(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.to_string().starts_with("could not acquire lock"))
}

/// A full disk (or quota), which sled reports as an I/O error.
fn is_no_space(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.kind() == std::io::ErrorKind::StorageFull || io.kind() == std::io::ErrorKind::QuotaExceeded)
}

/// sled's page cache (its default is 1 GB): reads of a long log are sequential, so a small
/// cache costs little and keeps a reader's memory bounded.
const CACHE_BYTES: u64 = 64 * 1024 * 1024;

const META_LAST_POSITION: &[u8] = b"last_position";
const META_LAST_INSTANT: &[u8] = b"last_instant";
/// In the `tags` tree: every event up to this position has its tags recorded (absent: none).
const TAGGED_THROUGH: &[u8] = b"tagged_through";
/// In the `tags` tree: the version of the tagging the index holds.
const TAGS_VERSION: &[u8] = b"version";
/// Posting lists hold the positions of one window of the log, so that a list stays small and a
/// bulk update rewrites few of them.
const TAG_WINDOW: u64 = 1 << 16;
/// In the `merkle` tree: every event up to this position is in the tree (absent: none).
const MERKLE_THROUGH: &[u8] = b"through";
/// In the `merkle` tree: the leaf hashes after the last complete chunk.
const MERKLE_TAIL: &[u8] = b"tail";

/// The key of a complete chunk's root in the `merkle` tree.
fn chunk_key(chunk: u64) -> [u8; 9] {
    let mut key = [b'c'; 9];
    key[1..].copy_from_slice(&chunk.to_be_bytes());
    key
}

fn decode_hashes(bytes: &[u8], what: &str) -> Result<Vec<Hash>, StoreError> {
    if bytes.len() % 32 != 0 {
        return Err(corrupt(0, format!("the Merkle index's {what} is {} bytes, not whole 32-byte hashes", bytes.len())));
    }
    Ok(bytes.chunks_exact(32).map(|h| h.try_into().expect("32 bytes")).collect())
}

/// Handle on the event log. Cheap to clone (the clones share one open database).
///
/// # After a failed write
///
/// A sled error while appending (a full disk, most often) leaves sled 0.34.7 unusable: it keeps
/// the first I/O error and returns it from every later call, and its in-memory trees may hold
/// a batch, or part of one, that never reached the disk. So the store refuses every read and
/// write from then on ([`StoreError::Unavailable`]: nothing is read from, or decided on, what
/// may not be durable) until [`EventStore::recover`] succeeds: a flush that goes through now
/// (everything in memory is then on disk), or else the database reopened from its files
/// (what is on disk and nothing else), flushed, and checked against the high-water mark.
#[derive(Clone)]
pub struct SledStore {
    shared: std::sync::Arc<Shared>,
}

/// What the clones of a store share.
struct Shared {
    /// The store's directory (none for a temporary store, which cannot be reopened).
    path: Option<std::path::PathBuf>,
    /// The open database; none between a failed reopen and the next one.
    open: std::sync::RwLock<Option<std::sync::Arc<Opened>>>,
    /// Why the store refuses reads and writes (a write failed), until it recovers.
    failure: std::sync::Mutex<Option<String>>,
    /// Set with `failure`: the check on every call, without taking the lock.
    failed: std::sync::atomic::AtomicBool,
}

/// One opening of sled's files: the database, its trees, and what is kept beside it.
struct Opened {
    /// The high-water mark's writer (stores on disk only); its lock orders the marks. Shared by
    /// every opening of the same directory.
    mark: Option<std::sync::Arc<std::sync::Mutex<mark::Writer>>>,
    /// sled's database file: synced after each flush (see [`SledStore::flush`]).
    db_file: Option<std::sync::Arc<std::fs::File>>,
    db: sled::Db,
    events: sled::Tree,
    streams: sled::Tree,
    stream_index: sled::Tree,
    commands: sled::Tree,
    meta: sled::Tree,
    /// The tag index: posting lists and how far they reach, in one tree so that a bulk update
    /// is one atomic batch.
    tags: sled::Tree,
    /// The Merkle index: roots of complete chunks, the tail's leaf hashes, how far it reaches;
    /// one tree, so that an extension is one atomic batch.
    merkle: sled::Tree,
    /// Snapshots of projections by position (opaque bytes): an optimisation, outside the log.
    snapshots: sled::Tree,
    /// Serialises the index writers (tags, Merkle): each reads how far its index reaches, then
    /// writes past it, and two catch-ups at once (the engine's and a reader's) must not both
    /// add the same events.
    indexing: std::sync::Mutex<()>,
}

fn storage(context: impl fmt::Display) -> impl FnOnce(sled::Error) -> StoreError {
    move |source| StoreError::backend(context.to_string(), source)
}

/// The file beside sled's that holds the last acknowledged position and its checksum.
pub const WATERMARK_FILE: &str = "poolbill.watermark";

/// The last acknowledged position and its value's checksum, as the store at `dir` marked them
/// (`None`: nothing acknowledged yet). For tools and tests that inspect a store's files.
pub fn read_watermark(dir: &Path) -> Result<Option<(u64, u32)>, StoreError> {
    mark::read(&dir.join(WATERMARK_FILE))
}

fn corrupt(position: u64, detail: impl Into<String>) -> StoreError {
    StoreError::Corrupt { position, detail: detail.into() }
}

fn decode_u64(bytes: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(bytes).ok().map(u64::from_be_bytes)
}

fn index_prefix(stream: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(stream.len() + 9);
    key.extend_from_slice(stream.as_bytes());
    key.push(0);
    key
}

/// The key of a tag's posting list for one window of positions.
fn posting_key(tag: &str, window: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(tag.len() + 6);
    key.push(b'p');
    key.extend_from_slice(tag.as_bytes());
    key.push(0);
    key.extend_from_slice(&u32::try_from(window).unwrap_or(u32::MAX).to_be_bytes());
    key
}

/// The window of a posting-list key, if the key is `tag`'s.
fn window_of(key: &[u8], tag: &str) -> Option<u64> {
    (key.len() == tag.len() + 6).then(|| u64::from(u32::from_be_bytes(key[key.len() - 4..].try_into().expect("four bytes"))))
}

/// A posting list: how many positions, then each as its gap from the one before (the first
/// from the window's start), all varints: two or three bytes a posting.
fn encode_postings(window: u64, positions: &[u64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + positions.len() * 2);
    varint::put(&mut out, positions.len() as u64);
    let mut previous = window * TAG_WINDOW;
    for &p in positions {
        varint::put(&mut out, p - previous);
        previous = p;
    }
    out
}

fn decode_postings(window: u64, bytes: &[u8]) -> Result<Vec<u64>, String> {
    let mut r = varint::Reader::new(bytes);
    let count = r.u64()?;
    let mut positions = Vec::with_capacity(count.min(TAG_WINDOW) as usize);
    let mut previous = window * TAG_WINDOW;
    for _ in 0..count {
        previous = previous.checked_add(r.u64()?).ok_or("a position past the end of numbers")?;
        positions.push(previous);
    }
    if !r.rest().is_empty() {
        return Err("bytes after the last posting".into());
    }
    Ok(positions)
}

fn index_key(stream: &str, version: u64) -> Vec<u8> {
    let mut key = index_prefix(stream);
    key.extend_from_slice(&version.to_be_bytes());
    key
}

/// The byte after the checksum of an event stored by this build: its layout, the binary envelope
/// below. Events stored before it hold JSON there, which always begins with `{`.
const BINARY_ENVELOPE_V1: u8 = 1;

/// How a payload is kept inside a binary envelope.
const PAYLOAD_JSON: u8 = 0;
const PAYLOAD_BINARY: u8 = 1;

/// The stored value of an event: a CRC-32 (4 bytes BE) of its position (8 bytes BE) and of
/// everything after the checksum, then [`BINARY_ENVELOPE_V1`], the version, schema version,
/// instant (seconds, nanoseconds, UTC offset), stream, type, command id, and the payload, its
/// kind first. The position is the key, so it is not stored again, but the checksum covers it:
/// a value found under another key does not pass.
fn encode_event(env: &Envelope) -> Result<Vec<u8>, StoreError> {
    let mut value = Vec::with_capacity(64 + env.stream.len() + env.event_type.len());
    value.extend_from_slice(&[0; 4]);
    value.push(BINARY_ENVELOPE_V1);
    varint::put(&mut value, env.version);
    varint::put(&mut value, env.schema_version.into());
    varint::put_signed(&mut value, env.at.timestamp());
    varint::put(&mut value, env.at.timestamp_subsec_nanos().into());
    varint::put_signed(&mut value, env.at.offset().local_minus_utc().into());
    varint::put_bytes(&mut value, env.stream.as_bytes());
    varint::put_bytes(&mut value, env.event_type.as_bytes());
    match &env.command_id {
        None => varint::put(&mut value, 0),
        Some(id) => {
            varint::put(&mut value, id.len() as u64 + 1);
            value.extend_from_slice(id.as_bytes());
        }
    }
    match &env.payload {
        Payload::Json(json) => {
            value.push(PAYLOAD_JSON);
            serde_json::to_writer(&mut value, json)
                .map_err(|e| StoreError::Encode { context: format!("serializing the payload at position {}", env.position), source: e.into() })?;
        }
        Payload::Binary(bytes) => {
            value.push(PAYLOAD_BINARY);
            value.extend_from_slice(bytes);
        }
    }
    let crc = checksum(env.position, &value[4..]);
    value[..4].copy_from_slice(&crc.to_be_bytes());
    Ok(value)
}

fn checksum(position: u64, body: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&position.to_be_bytes());
    hasher.update(body);
    hasher.finalize()
}

/// Checks the CRC and that the envelope really is the one stored under `position`. Reads both
/// layouts: the binary envelope, and the JSON one of stores written before it (never
/// rewritten: they keep their JSON events, and later appends are binary).
fn decode_event(position: u64, value: &[u8]) -> Result<Envelope, StoreError> {
    if value.len() < 5 {
        return Err(corrupt(position, format!("value is only {} bytes, too short for a checksum and a layout", value.len())));
    }
    let (crc, body) = value.split_at(4);
    let stored = u32::from_be_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if body[0] == b'{' {
        return decode_json_event(position, stored, body);
    }
    let actual = checksum(position, body);
    if stored != actual {
        return Err(corrupt(position, format!("checksum mismatch: stored {stored:08x}, computed {actual:08x}")));
    }
    if body[0] != BINARY_ENVELOPE_V1 {
        return Err(corrupt(position, format!("unknown envelope layout {}", body[0])));
    }
    decode_binary_event(position, &body[1..]).map_err(|detail| corrupt(position, format!("undecodable binary envelope: {detail}")))
}

fn decode_binary_event(position: u64, bytes: &[u8]) -> Result<Envelope, String> {
    let mut r = varint::Reader::new(bytes);
    let version = r.u64()?;
    let schema_version = u32::try_from(r.u64()?).map_err(|_| "schema version out of range")?;
    let (seconds, nanos, offset) = (r.i64()?, r.u64()?, r.i64()?);
    let offset = i32::try_from(offset).ok().and_then(chrono::FixedOffset::east_opt).ok_or("UTC offset out of range")?;
    let nanos = u32::try_from(nanos).map_err(|_| "nanoseconds out of range")?;
    let at = chrono::DateTime::from_timestamp(seconds, nanos).ok_or("instant out of range")?.with_timezone(&offset);
    let stream = r.string()?;
    let event_type = r.string()?;
    let command_id = match r.u64()? {
        0 => None,
        len => Some(r.string_of(len - 1)?),
    };
    let payload = match r.byte()? {
        PAYLOAD_JSON => Payload::Json(serde_json::from_slice(r.rest()).map_err(|e| format!("payload JSON: {e}"))?),
        PAYLOAD_BINARY => Payload::Binary(r.rest().to_vec()),
        other => return Err(format!("unknown payload kind {other}")),
    };
    Ok(Envelope { position, stream, version, event_type, schema_version, at, command_id, payload })
}

/// An event stored before the binary envelope: the CRC is of the JSON alone, which names its
/// own position.
fn decode_json_event(position: u64, stored: u32, json: &[u8]) -> Result<Envelope, StoreError> {
    let actual = crc32fast::hash(json);
    if stored != actual {
        return Err(corrupt(position, format!("checksum mismatch: stored {stored:08x}, computed {actual:08x}")));
    }
    let env: Envelope = serde_json::from_slice(json).map_err(|e| corrupt(position, format!("undecodable event JSON: {e}")))?;
    if env.position != position {
        return Err(corrupt(position, format!("envelope claims position {}", env.position)));
    }
    Ok(env)
}

fn decode_event_entry(key: &[u8], value: &[u8], expected: u64) -> Result<Envelope, StoreError> {
    let position = decode_u64(key).ok_or_else(|| corrupt(expected, format!("events key of {} bytes is not a u64", key.len())))?;
    if position != expected {
        return Err(corrupt(expected, format!("gap: next stored event is at position {position}")));
    }
    decode_event(position, value)
}

fn decode_instant(bytes: &[u8]) -> Result<Instant, StoreError> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .ok_or_else(|| corrupt(0, "meta last_instant is not an RFC 3339 instant"))
}

fn decode_command(id: &[u8], bytes: &[u8]) -> Result<CommandRecord, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| corrupt(0, format!("command record {:?} undecodable: {e}", String::from_utf8_lossy(id))))
}

/// Inside an append transaction: `Abort` is the request's own failure (a check or an encoding:
/// it wrote nothing, and only it fails), the other errors are sled's (they fail the transaction).
type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

/// How the requests of one transaction relate.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Group {
    /// Each stands alone: one that fails does not stop the others.
    Independent,
    /// Each may depend on its predecessors: the first that fails stops the rest.
    Chain,
}

fn abort<T>(e: StoreError) -> TxResult<T> {
    Err(ConflictableTransactionError::Abort(e))
}

impl SledStore {
    /// Opens (or creates) the store at `path`, and checks that it still holds everything it
    /// ever acknowledged (its high-water mark): a damaged or truncated store is refused with
    /// the position it should reach, never silently used.
    pub fn open(path: impl AsRef<Path>) -> Result<SledStore, StoreError> {
        let path = path.as_ref();
        let mark = std::sync::Arc::new(std::sync::Mutex::new(mark::Writer::new(path.join(WATERMARK_FILE))));
        let open = Opened::open(path, mark)?;
        Ok(SledStore::wrap(open, Some(path.to_path_buf())))
    }

    /// A store that lives in a temporary directory and vanishes on drop.
    pub fn temporary() -> Result<SledStore, StoreError> {
        Ok(SledStore::wrap(Opened::temporary()?, None))
    }

    fn wrap(open: Opened, path: Option<std::path::PathBuf>) -> SledStore {
        SledStore {
            shared: std::sync::Arc::new(Shared {
                path,
                open: std::sync::RwLock::new(Some(std::sync::Arc::new(open))),
                failure: std::sync::Mutex::new(None),
                failed: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// The open database, unless the store refuses (see [`SledStore`]).
    fn sound(&self) -> Result<std::sync::Arc<Opened>, StoreError> {
        if self.shared.failed.load(std::sync::atomic::Ordering::Acquire) {
            let why = self.shared.failure.lock().unwrap_or_else(|e| e.into_inner()).clone().unwrap_or_default();
            return Err(StoreError::Unavailable { why });
        }
        self.current().ok_or(StoreError::Unavailable { why: "the database is not open".into() })
    }

    fn current(&self) -> Option<std::sync::Arc<Opened>> {
        self.shared.open.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A write failed: refuse everything until [`EventStore::recover`] succeeds. The first
    /// failure is the one kept (the later ones follow from it).
    fn fail(&self, error: &StoreError) {
        let mut failure = self.shared.failure.lock().unwrap_or_else(|e| e.into_inner());
        if failure.is_none() {
            *failure = Some(crate::one_line(error));
            tracing::warn!(error = failure.as_deref(), "a write failed: the store refuses reads and writes until it recovers");
        }
        self.shared.failed.store(true, std::sync::atomic::Ordering::Release);
    }

    /// Run a write, and refuse everything after it if it failed in the database or the disk.
    fn writing<T>(&self, write: impl FnOnce(&Opened) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let open = self.sound()?;
        let result = write(&open);
        if let Err(e) = &result {
            if e.is_outage() {
                self.fail(e);
            }
        }
        result
    }

    /// sled's synchronous flush, an `fsync` of its database file, then the high-water mark (see
    /// [`Opened::flush`]).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.writing(Opened::flush)
    }

    /// Each tree's name, entries, and bytes of keys and values (see [`Opened::tree_sizes`]).
    pub fn tree_sizes(&self) -> Result<Vec<(String, u64, u64, u64)>, StoreError> {
        self.sound()?.tree_sizes()
    }

    /// Test hook: raw access to the events tree, to plant corruption.
    #[cfg(test)]
    fn raw_events(&self) -> sled::Tree {
        self.opened().events.clone()
    }

    /// Test hook: the open database and its trees.
    #[cfg(test)]
    fn opened(&self) -> std::sync::Arc<Opened> {
        self.current().expect("open")
    }

    /// Test hook: fail as a write that failed in the database would.
    #[cfg(test)]
    fn fail_for_test(&self) {
        self.fail(&StoreError::Internal("injected failure"));
    }

    /// Recover by reopening the files: the old database is dropped first (sled locks its files
    /// per open file, so two openings in one process exclude each other).
    fn reopen(&self, path: &Path) -> Result<(), StoreError> {
        let mut slot = self.shared.open.write().unwrap_or_else(|e| e.into_inner());
        let mark = slot.as_ref().and_then(|open| open.mark.clone());
        if let Some(old) = slot.take() {
            // sled's drop flushes unless it holds an I/O error already, and panics if the
            // flush's fsync fails: a database that is being given up must not take us with it.
            let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(old)));
            if dropped.is_err() {
                tracing::warn!("closing the failed database panicked; reopening it anyway");
            }
        }
        let mark = mark.unwrap_or_else(|| std::sync::Arc::new(std::sync::Mutex::new(mark::Writer::new(path.join(WATERMARK_FILE)))));
        let open = Opened::open(path, mark).map_err(|e| match e {
            // Our own failed database, still held by a read in progress: tried again later.
            StoreError::InUse { path } => StoreError::Unavailable { why: format!("the failed database at {path} is still in use by a read") },
            e => e,
        })?;
        // What was read from the files is made durable before it is trusted.
        open.flush()?;
        *slot = Some(std::sync::Arc::new(open));
        Ok(())
    }
}

/// sled writes as it opens (it recovers its log), and when that write fails for want of space it
/// can leave its files unreadable for good (seen with sled 0.34.7 on a full tmpfs: about one
/// opening in ten). So a store is opened only with this much free space: four of sled's
/// 512 KiB segments.
const ROOM_TO_OPEN: u64 = 2 * 1024 * 1024;

/// Refuse to open the store at `path` on a filesystem without [`ROOM_TO_OPEN`] free.
fn ensure_room(path: &Path) -> Result<(), StoreError> {
    // A new store's directory does not exist yet: the filesystem it will be on.
    let Some(dir) = path.ancestors().find(|dir| dir.exists()) else { return Ok(()) };
    let free = fs2::available_space(dir).map_err(|e| StoreError::io(format!("reading the free space at {}", dir.display()), e))?;
    if free < ROOM_TO_OPEN {
        let context = format!(
            "opening the store at {}: only {free} bytes are free, {ROOM_TO_OPEN} are needed to open it safely (sled may damage its files when it cannot write while opening)",
            path.display()
        );
        return Err(StoreError::io(context, std::io::Error::from(std::io::ErrorKind::StorageFull)));
    }
    Ok(())
}

impl Opened {
    fn open(path: &Path, mark_writer: std::sync::Arc<std::sync::Mutex<mark::Writer>>) -> Result<Opened, StoreError> {
        ensure_room(path)?;
        let mark_path = path.join(WATERMARK_FILE);
        let mark = mark::read(&mark_path)?;
        // A store that acknowledged events and cannot be opened is damaged: the error says
        // which position it should reach.
        let damaged = |detail: String, position: u64| {
            corrupt(position, format!("the store at {} is damaged ({detail}); it had acknowledged events up to position {position}", path.display()))
        };
        // sled may panic rather than err on some damage: that is damage too.
        let open = || {
            std::panic::catch_unwind(|| sled::Config::new().path(path).cache_capacity(CACHE_BYTES).open()).map_err(|_| match mark {
                Some((position, _)) => damaged("sled panicked while recovering its files".to_string(), position),
                None => StoreError::Panicked { path: path.display().to_string() },
            })
        };
        // A store just closed (by this process or one that is exiting) keeps sled's lock until
        // sled's background work lets go of its files: wait a little before calling it in use.
        let mut opened = open()?;
        for _ in 0..LOCK_RETRIES {
            match &opened {
                Err(e) if is_locked(e) => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                    opened = open()?;
                }
                _ => break,
            }
        }
        let db = opened.map_err(|e| match mark {
            // A store in use is not a damaged one, nor is one on a full disk (sled writes as it
            // opens).
            _ if is_locked(&e) => StoreError::InUse { path: path.display().to_string() },
            _ if is_no_space(&e) => StoreError::backend(format!("opening the sled database at {}", path.display()), e),
            Some((position, _)) => damaged(format!("sled: {e}"), position),
            None => StoreError::backend(format!("opening the sled database at {}", path.display()), e),
        })?;
        let mut store = Opened::from_db(db)?;
        store.mark = Some(mark_writer);
        let db_file = std::fs::File::open(path.join("db")).map_err(|e| StoreError::io(format!("opening {}", path.join("db").display()), e))?;
        store.db_file = Some(std::sync::Arc::new(db_file));
        if let Some((position, crc)) = mark {
            let last = store.last_position()?;
            if last < position {
                return Err(corrupt(
                    last + 1,
                    format!(
                        "the log ends at position {last} but positions up to {position} had been acknowledged: the store was truncated or damaged"
                    ),
                ));
            }
            match store.events.get(position.to_be_bytes()).map_err(storage("reading the acknowledged position"))? {
                Some(value) if value.len() >= 4 && value[..4] == crc.to_be_bytes() => {}
                _ => return Err(corrupt(position, "the acknowledged event at this position is not the one that was acknowledged")),
            }
        }
        Ok(store)
    }

    fn temporary() -> Result<Opened, StoreError> {
        let db = sled::Config::new().temporary(true).cache_capacity(CACHE_BYTES).open().map_err(storage("opening temporary sled database"))?;
        Opened::from_db(db)
    }

    fn from_db(db: sled::Db) -> Result<Opened, StoreError> {
        let open = |name: &str| db.open_tree(name).map_err(storage(format_args!("opening tree {name}")));
        Ok(Opened {
            mark: None,
            db_file: None,
            events: open("events")?,
            streams: open("streams")?,
            stream_index: open("stream_index")?,
            commands: open("commands")?,
            meta: open("meta")?,
            tags: open("tags")?,
            merkle: open("merkle")?,
            snapshots: open("snapshots")?,
            indexing: std::sync::Mutex::new(()),
            db,
        })
    }

    /// Applies `reqs` in order in ONE sled transaction over the five log trees (a group commit
    /// costs one transaction, not one per request), without flushing. Each request is decided on
    /// the state the earlier ones leave: reads inside a sled 0.34.7 transaction see its own
    /// earlier writes (`TransactionalTree::get` looks in the transaction's write set before the
    /// tree). A request that fails its checks has written nothing (every check, read and
    /// encoding of a request comes before its first write) and answers `Err`; the others go on,
    /// unless this is a [`Group::Chain`], which stops at its first failure. The outer `Err` is
    /// sled's: then nothing of the batch was written.
    fn apply_all(&self, reqs: &[AppendRequest], group: Group) -> Result<Vec<Result<AppendOutcome, StoreError>>, StoreError> {
        if reqs.is_empty() {
            return Ok(Vec::new());
        }
        let trees = (&self.events, &self.streams, &self.stream_index, &self.commands, &self.meta);
        // Whether the last run of the closure decided the batch: a sled error after that came
        // from the commit, which may have applied part of the batch in memory.
        let decided = std::cell::Cell::new(false);
        // The closure may run several times: it only reads and writes through the
        // transactional views and reports through its return value.
        let result = trees.transaction(|(events, streams, index, commands, meta)| {
            decided.set(false);
            let mut results = Vec::with_capacity(reqs.len());
            for req in reqs {
                let result = match apply_in_tx(req, events, streams, index, commands, meta) {
                    Ok(outcome) => Ok(outcome),
                    // This request's own failure: it wrote nothing, the transaction goes on.
                    Err(ConflictableTransactionError::Abort(e)) => Err(e),
                    // sled's: the whole transaction fails (or is retried).
                    Err(other) => return Err(other),
                };
                let failed = result.is_err();
                results.push(result);
                if failed && group == Group::Chain {
                    break;
                }
            }
            decided.set(true);
            Ok(results)
        });
        match result {
            Ok(results) => Ok(results),
            // The closure never aborts the transaction as a whole.
            Err(TransactionError::Abort(e)) => Err(e),
            Err(TransactionError::Storage(source)) => {
                let failed = StoreError::backend(format!("append transaction ({} requests)", reqs.len()), source);
                if decided.get() {
                    Err(StoreError::OutcomeUnknown { context: "the append transaction failed while committing".into(), source: Box::new(failed) })
                } else {
                    // A read inside the transaction failed: nothing was applied.
                    Err(failed)
                }
            }
        }
    }

    /// [`Opened::flush`] after a batch was applied: a failure leaves its outcome unknown.
    fn flush_applied(&self, requests: usize) -> Result<(), StoreError> {
        self.flush().map_err(|e| StoreError::OutcomeUnknown {
            context: format!("{requests} requests were applied, then the flush failed"),
            source: Box::new(e),
        })
    }

    /// sled's synchronous flush of everything written so far, then an `fsync` of its database
    /// file; then the high-water mark moves to the last position, so that it never claims more
    /// than is on disk. sled 0.34.7 makes its writes durable with `sync_file_range` alone, which
    /// flushes neither the disk's write cache nor the file's size and extents (its own `fsync`
    /// comes only every 500 ms): the `fsync` here is what makes an acknowledgement survive a
    /// power loss.
    pub fn flush(&self) -> Result<(), StoreError> {
        // Only what was written before the flush began is known to be on disk after it.
        let durable = self.last_position()?;
        self.db.flush().map(|_| ()).map_err(storage("flushing sled database to disk"))?;
        if let Some(file) = &self.db_file {
            file.sync_all().map_err(|e| StoreError::io("syncing sled's database file", e))?;
        }
        self.write_watermark(durable)
    }

    /// Record the last position and its value's checksum in the mark's file, in place (see
    /// [`mark`]): it only moves forward.
    fn write_watermark(&self, last: u64) -> Result<(), StoreError> {
        let Some(mark) = &self.mark else { return Ok(()) };
        let mut writer = mark.lock().unwrap_or_else(|e| e.into_inner());
        if last == 0 || writer.position()? >= last {
            return Ok(());
        }
        let value = self.events.get(last.to_be_bytes()).map_err(storage("reading the last position"))?;
        let Some(value) = value.filter(|v| v.len() >= 4) else { return Err(corrupt(last, "the last position has no event")) };
        writer.write(last, u32::from_be_bytes([value[0], value[1], value[2], value[3]]))
    }

    /// The events from `from_position` on, read lazily; the iterator owns what it reads from, so
    /// it outlives this opening's handle.
    fn read_events(&self, from_position: u64) -> Box<dyn Iterator<Item = Result<Envelope, StoreError>> + Send + 'static> {
        let start = from_position.max(1);
        let mut inner = self.events.range(start.to_be_bytes()..);
        let mut expected = start;
        let mut failed = false;
        Box::new(std::iter::from_fn(move || {
            if failed {
                return None;
            }
            let item = match inner.next()? {
                Ok((key, value)) => decode_event_entry(&key, &value, expected),
                Err(source) => Err(StoreError::backend(format!("reading events at position {expected}"), source)),
            };
            match item {
                Ok(_) => expected += 1,
                Err(_) => failed = true,
            }
            Some(item)
        }))
    }

    /// Each tree's name, entries, and bytes of keys and values: what the store holds, before
    /// sled's own overhead (page headers, and space its log has not reclaimed yet).
    pub fn tree_sizes(&self) -> Result<Vec<(String, u64, u64, u64)>, StoreError> {
        let trees = [
            ("events", &self.events),
            ("streams", &self.streams),
            ("stream_index", &self.stream_index),
            ("commands", &self.commands),
            ("meta", &self.meta),
            ("tags", &self.tags),
            ("merkle", &self.merkle),
            ("snapshots", &self.snapshots),
        ];
        let mut sizes = Vec::new();
        for (name, tree) in trees {
            let (mut entries, mut keys, mut values) = (0u64, 0u64, 0u64);
            for entry in tree.iter() {
                let (k, v) = entry.map_err(storage(format_args!("scanning tree {name}")))?;
                entries += 1;
                keys += k.len() as u64;
                values += v.len() as u64;
            }
            sizes.push((name.to_string(), entries, keys, values));
        }
        Ok(sizes)
    }
}

impl EventStore for Opened {
    fn put_snapshot(&self, position: u64, bytes: &[u8]) -> Result<(), StoreError> {
        self.snapshots.insert(position.to_be_bytes(), bytes).map_err(storage(format_args!("writing the snapshot at position {position}")))?;
        // Only the newest are kept: older ones cost space and would rarely be read.
        let positions = self.snapshot_positions()?;
        for old in positions.iter().take(positions.len().saturating_sub(SNAPSHOTS_KEPT)) {
            self.snapshots.remove(old.to_be_bytes()).map_err(storage("dropping an old snapshot"))?;
        }
        // A snapshot is only an optimisation: it is not flushed on its own (a lost one costs a
        // longer replay), and it lands with the next group commit's flush.
        Ok(())
    }

    fn snapshot_at_or_before(&self, position: u64) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        let found = self.snapshots.range(..=position.to_be_bytes()).next_back().transpose().map_err(storage("reading snapshots"))?;
        Ok(found.and_then(|(key, value)| decode_u64(&key).map(|p| (p, value.to_vec()))))
    }

    fn snapshot_positions(&self) -> Result<Vec<u64>, StoreError> {
        self.snapshots.iter().keys().map(|k| k.map_err(storage("listing snapshots")).map(|k| decode_u64(&k).unwrap_or(0))).collect()
    }

    /// Group commit: one sled transaction applies the requests in order, each atomic on its
    /// own and independent of the others' failures (a later request sees the earlier ones, e.g.
    /// as a Duplicate); then one flush. The outer `Err` is a failed transaction or flush: then
    /// nothing in the batch may be considered acknowledged.
    fn append_batch(&self, reqs: Vec<AppendRequest>) -> Result<Vec<Result<AppendOutcome, StoreError>>, StoreError> {
        let results = self.apply_all(&reqs, Group::Independent)?;
        // Flush even for duplicates: the original may have been committed by
        // another thread that has not flushed yet.
        self.flush_applied(reqs.len())?;
        Ok(results)
    }

    /// Group commit of a chain: requests where each was decided on the state its predecessors
    /// leave. Applied in order, in one sled transaction, until the first one that fails; the
    /// rest are not applied, since they may depend on it. One flush either way, so the applied
    /// prefix is durable. Returns the outcomes of the applied prefix and, if one failed, its
    /// index and error.
    fn append_chain(&self, reqs: Vec<AppendRequest>) -> Result<ChainOutcome, StoreError> {
        let mut applied = Vec::with_capacity(reqs.len());
        let mut failed = None;
        for (i, result) in self.apply_all(&reqs, Group::Chain)?.into_iter().enumerate() {
            match result {
                Ok(outcome) => applied.push(outcome),
                Err(e) => {
                    failed = Some((i, e));
                    break;
                }
            }
        }
        self.flush_applied(reqs.len())?;
        tracing::debug!(requests = reqs.len(), applied = applied.len(), failed = ?failed.as_ref().map(|(i, e)| (i, e.to_string())), "chain appended and flushed");
        Ok((applied, failed))
    }

    /// All events from `from_position` on (0 and 1 both mean "from the start"),
    /// in position order, read lazily. After the first error (e.g. `Corrupt`)
    /// the iterator ends.
    fn read_all(&self, from_position: u64) -> Box<dyn Iterator<Item = Result<Envelope, StoreError>> + Send + '_> {
        self.read_events(from_position)
    }

    /// Events of `stream` with version >= `from_version` (0 and 1 both mean
    /// "from the start"), in version order.
    fn read_stream(&self, stream: &str, from_version: u64) -> Result<Vec<Envelope>, StoreError> {
        let start = from_version.max(1);
        let key_len = stream.len() + 9;
        let mut expected_version = start;
        let mut out = Vec::new();
        for entry in self.stream_index.range(index_key(stream, start)..=index_key(stream, u64::MAX)) {
            let (key, value) = entry.map_err(storage(format_args!("scanning index of stream {stream:?}")))?;
            // Longer keys in this range belong to streams whose id extends ours with a NUL.
            if key.len() != key_len {
                continue;
            }
            let version = decode_u64(&key[stream.len() + 1..]).unwrap_or(0);
            let position =
                decode_u64(&value).ok_or_else(|| corrupt(0, format!("stream {stream:?} index entry for version {version} is not a u64")))?;
            if version != expected_version {
                return Err(corrupt(position, format!("stream {stream:?} has a gap: expected version {expected_version}, found {version}")));
            }
            let value = self
                .events
                .get(position.to_be_bytes())
                .map_err(storage(format_args!("reading event at position {position}")))?
                .ok_or_else(|| corrupt(position, format!("indexed by stream {stream:?} version {version} but missing")))?;
            let env = decode_event(position, &value)?;
            if env.stream != stream || env.version != version {
                return Err(corrupt(
                    position,
                    format!("index says stream {stream:?} version {version}, event says stream {:?} version {}", env.stream, env.version),
                ));
            }
            out.push(env);
            expected_version += 1;
        }
        Ok(out)
    }

    fn tagged(&self, tag: &str, from: u64, limit: usize) -> Result<Vec<u64>, StoreError> {
        let mut positions = Vec::new();
        for entry in self.tags.range(posting_key(tag, from / TAG_WINDOW)..=posting_key(tag, u32::MAX.into())) {
            let (key, list) = entry.map_err(storage(format_args!("reading the index of tag {tag:?}")))?;
            // Longer keys in this range belong to tags that extend ours with a NUL.
            let Some(window) = window_of(&key, tag) else { continue };
            for position in decode_postings(window, &list).map_err(|e| corrupt(0, format!("the index of tag {tag:?}: {e}")))? {
                if positions.len() >= limit {
                    return Ok(positions);
                }
                if position >= from {
                    positions.push(position);
                }
            }
        }
        Ok(positions)
    }

    fn tag_counts(&self, prefix: &str) -> Result<Vec<(String, u64)>, StoreError> {
        let mut counts: Vec<(String, u64)> = Vec::new();
        let mut start = vec![b'p'];
        start.extend_from_slice(prefix.as_bytes());
        for entry in self.tags.scan_prefix(&start) {
            let (key, list) = entry.map_err(storage(format_args!("scanning tags starting with {prefix:?}")))?;
            if key.len() < 6 {
                return Err(corrupt(0, "a tag index key too short for its window"));
            }
            let tag = String::from_utf8_lossy(&key[1..key.len() - 5]).into_owned();
            let count = varint::Reader::new(&list).u64().map_err(|e| corrupt(0, format!("the index of tag {tag:?}: {e}")))?;
            match counts.last_mut() {
                Some((last, n)) if *last == tag => *n += count,
                _ => counts.push((tag, count)),
            }
        }
        Ok(counts)
    }

    fn tags_version(&self) -> Result<u32, StoreError> {
        match self.tags.get(TAGS_VERSION).map_err(storage("reading the tag index's version"))? {
            None => Ok(0),
            Some(v) => v.as_ref().try_into().map(u32::from_be_bytes).map_err(|_| corrupt(0, "the tag index's version is not a u32")),
        }
    }

    /// A crash halfway leaves an index without its version: rebuilt again, from scratch.
    fn reset_tags(&self, version: u32) -> Result<(), StoreError> {
        self.tags.clear().map_err(storage("dropping the tag index"))?;
        self.tags.insert(TAGS_VERSION, &version.to_be_bytes()[..]).map_err(storage("recording the tag index's version"))?;
        self.db.flush().map(|_| ()).map_err(storage("flushing the dropped tag index"))
    }

    fn tagged_through(&self) -> Result<u64, StoreError> {
        match self.tags.get(TAGGED_THROUGH).map_err(storage("reading how far tags reach"))? {
            None => Ok(0),
            Some(v) => decode_u64(&v).ok_or_else(|| corrupt(0, "tags' tagged_through is not a u64")),
        }
    }

    /// One atomic batch on the `tags` tree: each posting list it touches is read, extended and
    /// written whole, with how far the index reaches.
    fn tag_existing(&self, tagged: &[(u64, Vec<String>)]) -> Result<(), StoreError> {
        let _only_one = self.indexing.lock().unwrap_or_else(|e| e.into_inner());
        let mut through = self.tagged_through()?;
        let last = self.last_position()?;
        let mut additions: std::collections::BTreeMap<Vec<u8>, Vec<u64>> = std::collections::BTreeMap::new();
        // Events another catch-up indexed meanwhile are skipped (their tags are the same).
        let fresh = tagged.iter().position(|(p, _)| *p > through).unwrap_or(tagged.len());
        if fresh == tagged.len() {
            return Ok(());
        }
        for (position, tags) in &tagged[fresh..] {
            if *position != through + 1 || *position > last {
                return Err(StoreError::Internal("tags of existing events must continue the index, in order, within the log"));
            }
            for tag in tags {
                let list = additions.entry(posting_key(tag, position / TAG_WINDOW)).or_default();
                // A tag given twice for one event is one posting.
                if list.last() != Some(position) {
                    list.push(*position);
                }
            }
            through = *position;
        }
        let mut batch = sled::Batch::default();
        for (key, added) in additions {
            let window = u64::from(u32::from_be_bytes(key[key.len() - 4..].try_into().expect("four bytes")));
            let mut positions = match self.tags.get(&key).map_err(storage("reading a posting list"))? {
                Some(list) => decode_postings(window, &list).map_err(|e| corrupt(0, format!("a posting list of the tag index: {e}")))?,
                None => Vec::new(),
            };
            positions.extend(added);
            batch.insert(key, encode_postings(window, &positions));
        }
        batch.insert(TAGGED_THROUGH, &through.to_be_bytes()[..]);
        self.tags.apply_batch(batch).map_err(storage("writing the tag index"))?;
        self.db.flush().map(|_| ()).map_err(storage("flushing the tag index"))
    }

    fn merkle_through(&self) -> Result<u64, StoreError> {
        match self.merkle.get(MERKLE_THROUGH).map_err(storage("reading how far the Merkle index reaches"))? {
            None => Ok(0),
            Some(v) => decode_u64(&v).ok_or_else(|| corrupt(0, "the Merkle index's through is not a u64")),
        }
    }

    /// One atomic batch on the `merkle` tree: the roots of the chunks completed, the new tail,
    /// how far it reaches.
    fn merkle_extend(&self, leaves: &[(u64, Hash)]) -> Result<(), StoreError> {
        let _only_one = self.indexing.lock().unwrap_or_else(|e| e.into_inner());
        let through = self.merkle_through()?;
        // Leaves another catch-up added meanwhile are skipped (their hashes are the same).
        let leaves = &leaves[leaves.iter().position(|(p, _)| *p > through).unwrap_or(leaves.len())..];
        if leaves.is_empty() {
            return Ok(());
        }
        let last = self.last_position()?;
        for (k, (position, _)) in leaves.iter().enumerate() {
            if *position != through + 1 + k as u64 || *position > last {
                return Err(StoreError::Internal("Merkle leaves of existing events must continue the index, in order, within the log"));
            }
        }
        let mut tail = self.merkle_tail()?;
        if tail.len() as u64 != through % MERKLE_CHUNK {
            return Err(corrupt(0, format!("the Merkle index's tail holds {} leaves, but it reaches position {through}", tail.len())));
        }
        let mut batch = sled::Batch::default();
        let mut chunk = through / MERKLE_CHUNK;
        for (_, hash) in leaves {
            tail.push(*hash);
            if tail.len() as u64 == MERKLE_CHUNK {
                batch.insert(&chunk_key(chunk)[..], &merkle_chunk_root(&tail)[..]);
                tail.clear();
                chunk += 1;
            }
        }
        batch.insert(MERKLE_TAIL, tail.concat());
        batch.insert(MERKLE_THROUGH, &(through + leaves.len() as u64).to_be_bytes()[..]);
        self.merkle.apply_batch(batch).map_err(storage("writing the Merkle index"))?;
        self.db.flush().map(|_| ()).map_err(storage("flushing the Merkle index"))
    }

    fn merkle_chunk_roots(&self, from: u64, to: u64) -> Result<Vec<Hash>, StoreError> {
        let complete = self.merkle_through()? / MERKLE_CHUNK;
        if to > complete {
            return Err(StoreError::Internal("a Merkle chunk asked for is not complete in the index"));
        }
        if from >= to {
            return Ok(Vec::new());
        }
        let mut roots = Vec::with_capacity(to.saturating_sub(from) as usize);
        for entry in self.merkle.range(chunk_key(from)..chunk_key(to)) {
            let (key, value) = entry.map_err(storage("reading Merkle chunk roots"))?;
            let chunk = decode_u64(&key[1..]).unwrap_or(u64::MAX);
            if chunk != from + roots.len() as u64 || value.len() != 32 {
                return Err(corrupt(0, format!("the Merkle index's chunk roots have a gap or a bad value before chunk {chunk}")));
            }
            roots.push(value.as_ref().try_into().expect("32 bytes"));
        }
        if roots.len() as u64 != to.saturating_sub(from) {
            return Err(corrupt(0, format!("the Merkle index lacks chunk roots in {from}..{to}")));
        }
        Ok(roots)
    }

    fn merkle_tail(&self) -> Result<Vec<Hash>, StoreError> {
        match self.merkle.get(MERKLE_TAIL).map_err(storage("reading the Merkle index's tail"))? {
            None => Ok(Vec::new()),
            Some(bytes) => decode_hashes(&bytes, "tail"),
        }
    }

    /// Current version of `stream`, 0 when it has no events.
    fn stream_version(&self, stream: &str) -> Result<u64, StoreError> {
        let raw = self.streams.get(stream.as_bytes()).map_err(storage(format_args!("reading version of stream {stream:?}")))?;
        match raw {
            None => Ok(0),
            Some(v) => decode_u64(&v).ok_or_else(|| corrupt(0, format!("version of stream {stream:?} is not a u64"))),
        }
    }

    /// Position of the last event, 0 when the log is empty.
    fn last_position(&self) -> Result<u64, StoreError> {
        let raw = self.meta.get(META_LAST_POSITION).map_err(storage("reading meta last_position"))?;
        match raw {
            None => Ok(0),
            Some(v) => decode_u64(&v).ok_or_else(|| corrupt(0, "meta last_position is not a u64")),
        }
    }

    /// Instant of the last event, `None` when the log is empty.
    fn last_instant(&self) -> Result<Option<Instant>, StoreError> {
        let raw = self.meta.get(META_LAST_INSTANT).map_err(storage("reading meta last_instant"))?;
        raw.map(|v| decode_instant(&v)).transpose()
    }

    /// The record stored under `command_id`, if any.
    fn command(&self, command_id: &str) -> Result<Option<CommandRecord>, StoreError> {
        let raw = self.commands.get(command_id.as_bytes()).map_err(storage(format_args!("reading command {command_id:?}")))?;
        raw.map(|v| decode_command(command_id.as_bytes(), &v)).transpose()
    }

    /// Full scan of the log. Checks checksums, gapless positions, gapless
    /// per-stream versions matching `stream_index` and `streams`, non-decreasing
    /// instants, `meta`, and that command records decode and point inside the log.
    /// Fails with the first bad position.
    fn verify(&self) -> Result<VerifyReport, StoreError> {
        // stream -> (version, position of its last event)
        let mut streams: HashMap<String, (u64, u64)> = HashMap::new();
        let mut last_instant: Option<Instant> = None;
        let mut count = 0u64;
        for env in self.read_all(1) {
            let env = env?;
            let position = env.position;
            count = position;
            if let Some(last) = last_instant {
                if env.at < last {
                    return Err(corrupt(
                        position,
                        format!("instant {} is earlier than the previous event's {}", env.at.to_rfc3339(), last.to_rfc3339()),
                    ));
                }
            }
            last_instant = Some(env.at);
            let entry = streams.entry(env.stream.clone()).or_insert((0, 0));
            if env.version != entry.0 + 1 {
                return Err(corrupt(position, format!("stream {:?} version {} follows version {}", env.stream, env.version, entry.0)));
            }
            *entry = (env.version, position);
            let indexed = self
                .stream_index
                .get(index_key(&env.stream, env.version))
                .map_err(storage(format_args!("reading stream index for position {position}")))?;
            if indexed.as_deref().and_then(decode_u64) != Some(position) {
                return Err(corrupt(position, format!("stream_index entry for {:?} version {} does not point here", env.stream, env.version)));
            }
        }

        let index_entries = self.stream_index.len() as u64;
        if index_entries != count {
            return Err(corrupt(count, format!("stream_index has {index_entries} entries for {count} events")));
        }
        let mut stream_count = 0u64;
        for entry in self.streams.iter() {
            let (key, value) = entry.map_err(storage("scanning streams tree"))?;
            let name = String::from_utf8_lossy(&key).into_owned();
            let (version, at) = streams.get(&name).copied().unwrap_or((0, 0));
            if decode_u64(&value) != Some(version) {
                return Err(corrupt(at, format!("streams tree version of {name:?} disagrees with its {version} events")));
            }
            stream_count += 1;
        }
        if stream_count != streams.len() as u64 {
            return Err(corrupt(count, format!("streams tree lists {stream_count} streams, the log has {}", streams.len())));
        }
        let meta_position = self.last_position()?;
        if meta_position != count {
            return Err(corrupt(count, format!("meta last_position is {meta_position} but the log ends at {count}")));
        }
        if self.last_instant()? != last_instant {
            return Err(corrupt(count, "meta last_instant disagrees with the last event"));
        }

        let mut commands = 0u64;
        for entry in self.commands.iter() {
            let (key, value) = entry.map_err(storage("scanning commands tree"))?;
            let record = decode_command(&key, &value)?;
            for p in [record.first_position, record.last_position].into_iter().flatten() {
                if p == 0 || p > count {
                    return Err(corrupt(0, format!("command {:?} points at position {p}, outside the log", String::from_utf8_lossy(&key))));
                }
            }
            commands += 1;
        }
        Ok(VerifyReport { events: count, streams: stream_count, commands })
    }
}

fn tx_u64(tree: &TransactionalTree, key: &[u8], what: impl FnOnce() -> String) -> TxResult<u64> {
    match tree.get(key)? {
        None => Ok(0),
        Some(v) => match decode_u64(&v) {
            Some(n) => Ok(n),
            None => abort(corrupt(0, format!("{} is not a u64", what()))),
        },
    }
}

fn apply_in_tx(
    req: &AppendRequest,
    events: &TransactionalTree,
    streams: &TransactionalTree,
    index: &TransactionalTree,
    commands: &TransactionalTree,
    meta: &TransactionalTree,
) -> TxResult<AppendOutcome> {
    if let Some(id) = &req.command_id {
        if let Some(raw) = commands.get(id.as_bytes())? {
            return match decode_command(id.as_bytes(), &raw) {
                Ok(record) => Ok(AppendOutcome::Duplicate(record)),
                Err(e) => abort(e),
            };
        }
    }

    for (stream, expected) in &req.expected {
        let actual = tx_u64(streams, stream.as_bytes(), || format!("version of stream {stream:?}"))?;
        if !expected.accepts(actual) {
            return abort(StoreError::Conflict { stream: stream.clone(), expected: *expected, actual });
        }
    }

    let mut last_instant = match meta.get(META_LAST_INSTANT)? {
        None => None,
        Some(raw) => match decode_instant(&raw) {
            Ok(i) => Some(i),
            Err(e) => return abort(e),
        },
    };
    for event in &req.events {
        if let Some(last) = last_instant {
            if event.at < last {
                return abort(StoreError::OutOfOrder { at: event.at, last });
            }
        }
        last_instant = Some(event.at);
    }

    let last_position = tx_u64(meta, META_LAST_POSITION, || "meta last_position".to_string())?;
    // Everything this request writes is read, decided and encoded before its first write, so
    // that a request that fails (its transaction goes on with the others) has written nothing.
    let mut position = last_position;
    let mut versions: HashMap<&str, u64> = HashMap::new();
    let mut staged = Vec::with_capacity(req.events.len());
    for event in &req.events {
        let version = match versions.get(event.stream.as_str()) {
            Some(v) => *v,
            None => tx_u64(streams, event.stream.as_bytes(), || format!("version of stream {:?}", event.stream))?,
        } + 1;
        versions.insert(&event.stream, version);
        position += 1;
        let env = event.at_position(position, version, req.command_id.as_deref());
        match encode_event(&env) {
            Ok(value) => staged.push((position, value, index_key(&event.stream, version))),
            Err(e) => return abort(e),
        }
    }
    let record = if req.events.is_empty() {
        CommandRecord { first_position: None, last_position: None, outcome: req.outcome.clone(), fingerprint: req.fingerprint.clone() }
    } else {
        CommandRecord {
            first_position: Some(last_position + 1),
            last_position: Some(position),
            outcome: req.outcome.clone(),
            fingerprint: req.fingerprint.clone(),
        }
    };
    let record_json = match &req.command_id {
        None => None,
        Some(id) => match serde_json::to_vec(&record) {
            Ok(json) => Some((id, json)),
            Err(e) => return abort(StoreError::Encode { context: format!("serializing record of command {id:?}"), source: e.into() }),
        },
    };

    // Writes only from here on: no error below but sled's, which fails the whole transaction.
    for (position, value, key) in staged {
        events.insert(&position.to_be_bytes()[..], value)?;
        index.insert(key, &position.to_be_bytes()[..])?;
    }
    for (stream, version) in &versions {
        streams.insert(stream.as_bytes(), &version.to_be_bytes()[..])?;
    }
    if position != last_position {
        meta.insert(META_LAST_POSITION, &position.to_be_bytes()[..])?;
    }
    if let (Some(instant), false) = (last_instant, req.events.is_empty()) {
        meta.insert(META_LAST_INSTANT, instant.to_rfc3339().as_bytes())?;
    }
    if let Some((id, json)) = record_json {
        commands.insert(id.as_bytes(), json)?;
    }
    Ok(AppendOutcome::Appended(record))
}

/// Every call goes to the open database, unless the store refuses after a failed write (see
/// [`SledStore`]); writes that fail in the database or the disk make it refuse.
impl EventStore for SledStore {
    fn append_batch(&self, reqs: Vec<AppendRequest>) -> Result<Vec<Result<AppendOutcome, StoreError>>, StoreError> {
        self.writing(|open| open.append_batch(reqs))
    }

    fn append_chain(&self, reqs: Vec<AppendRequest>) -> Result<ChainOutcome, StoreError> {
        self.writing(|open| open.append_chain(reqs))
    }

    fn read_all(&self, from_position: u64) -> Box<dyn Iterator<Item = Result<Envelope, StoreError>> + Send + '_> {
        match self.sound() {
            Ok(open) => open.read_events(from_position),
            Err(e) => Box::new(std::iter::once(Err(e))),
        }
    }

    fn read_stream(&self, stream: &str, from_version: u64) -> Result<Vec<Envelope>, StoreError> {
        self.sound()?.read_stream(stream, from_version)
    }

    fn stream_version(&self, stream: &str) -> Result<u64, StoreError> {
        self.sound()?.stream_version(stream)
    }

    fn tagged(&self, tag: &str, from: u64, limit: usize) -> Result<Vec<u64>, StoreError> {
        self.sound()?.tagged(tag, from, limit)
    }

    fn tag_counts(&self, prefix: &str) -> Result<Vec<(String, u64)>, StoreError> {
        self.sound()?.tag_counts(prefix)
    }

    fn tagged_through(&self) -> Result<u64, StoreError> {
        self.sound()?.tagged_through()
    }

    fn tags_version(&self) -> Result<u32, StoreError> {
        self.sound()?.tags_version()
    }

    fn reset_tags(&self, version: u32) -> Result<(), StoreError> {
        self.writing(|open| open.reset_tags(version))
    }

    fn tag_existing(&self, tags: &[(u64, Vec<String>)]) -> Result<(), StoreError> {
        self.writing(|open| open.tag_existing(tags))
    }

    fn merkle_through(&self) -> Result<u64, StoreError> {
        self.sound()?.merkle_through()
    }

    fn merkle_extend(&self, leaves: &[(u64, Hash)]) -> Result<(), StoreError> {
        self.writing(|open| open.merkle_extend(leaves))
    }

    fn merkle_chunk_roots(&self, from: u64, to: u64) -> Result<Vec<Hash>, StoreError> {
        self.sound()?.merkle_chunk_roots(from, to)
    }

    fn merkle_tail(&self) -> Result<Vec<Hash>, StoreError> {
        self.sound()?.merkle_tail()
    }

    fn last_position(&self) -> Result<u64, StoreError> {
        self.sound()?.last_position()
    }

    fn last_instant(&self) -> Result<Option<Instant>, StoreError> {
        self.sound()?.last_instant()
    }

    fn command(&self, command_id: &str) -> Result<Option<CommandRecord>, StoreError> {
        self.sound()?.command(command_id)
    }

    fn put_snapshot(&self, position: u64, bytes: &[u8]) -> Result<(), StoreError> {
        self.writing(|open| open.put_snapshot(position, bytes))
    }

    fn snapshot_at_or_before(&self, position: u64) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        self.sound()?.snapshot_at_or_before(position)
    }

    fn snapshot_positions(&self) -> Result<Vec<u64>, StoreError> {
        self.sound()?.snapshot_positions()
    }

    fn verify(&self) -> Result<VerifyReport, StoreError> {
        self.sound()?.verify()
    }

    /// A store on disk is reopened from its files (sled keeps its first I/O error for good, and
    /// its memory may hold part of a batch that failed while committing), flushed and checked
    /// against the high-water mark. Err, and still refusing, while that fails (a disk still
    /// full); a temporary store, which has no files to reopen from, refuses for good.
    fn recover(&self) -> Result<(), StoreError> {
        if !self.shared.failed.load(std::sync::atomic::Ordering::Acquire) {
            return Ok(());
        }
        let recovered = match &self.shared.path {
            Some(path) => self.reopen(path),
            None => Err(StoreError::Unavailable { why: "a temporary store has no files to recover from".into() }),
        };
        if recovered.is_ok() {
            let why = self.shared.failure.lock().unwrap_or_else(|e| e.into_inner()).take();
            self.shared.failed.store(false, std::sync::atomic::Ordering::Release);
            tracing::info!(after = why.as_deref(), "the store recovered: it reads and writes again");
        }
        recovered
    }
}
