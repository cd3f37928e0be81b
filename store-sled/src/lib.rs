//! `poolbill-store-sled`: poolbill's default event store, an [`EventStore`] on sled.
//!
//! This is the only crate that touches sled. It knows nothing about billing:
//! events are opaque payloads (binary or JSON) wrapped in [`Envelope`]s.
//!
//! # Tree layout
//!
//! | tree           | key                                         | value                                        |
//! |----------------|---------------------------------------------|----------------------------------------------|
//! | `events`       | global position, `u64` big-endian           | events before the log file (stores written before it): CRC32 (4 bytes BE), then the binary envelope (see `encode_event`), or the JSON of the [`Envelope`] |
//! | `offsets`      | `b`, block `u64` BE (positions 4,096 × block on) | where the entries of the log's first position and every 32nd in the block begin in `events.log`: a varint count, then each position and offset as varint gaps from the one before (the first from the block's start and from 0) |
//! | `offsets`      | global position, `u64` BE                   | the same, one entry per offset, as builds before the blocks recorded them (read as they are; new offsets go to blocks) |
//! | `streams`      | stream id bytes                             | current stream version, `u64` BE             |
//! | `stream_postings` | stream id bytes, `0x00`, block `u64` BE  | the positions of the stream's versions in that block of 256 (block 0 from version 1): a varint count, then varint gaps |
//! | `stream_index` | stream id bytes, `0x00`, version `u64` BE   | global position, `u64` BE: stores written before the postings; rewritten as postings at open, then emptied |
//! | `commands`     | command id bytes                            | where the [`CommandRecord`]'s JSON is in `events.log`: `0x01`, offset `u64` BE, length and CRC-32 `u32` BE; or the JSON itself (stores written before) |
//! | `meta`         | `last_position` / `last_instant`            | `u64` BE / RFC 3339 text                     |
//! | `meta`         | `log_first` / `log_end`                     | `u64` BE: the first position the log file holds / the end of its last frame indexed here |
//! | `tags`         | `p`, tag bytes, `0x00`, window `u32` BE     | the tag's positions in that window of 65,536: a varint count, then varint gaps |
//! | `tags`         | `n`, tag bytes                              | how many events carry the tag, `u64` BE, for the tags under `COUNTED_TAGS` (the bill lines' hours and months, counted to rank a bill: one entry read, not its postings); any other tag is counted from its postings when asked (a store written before keeps such counts, never read) |
//! | `tags`         | `tagged_through` / `version`                | `u64` BE: every event up to it is indexed / `u32` BE: the tagging's version |
//! | `tags`         | `counted_through`                           | `u64` BE: the counts hold every posting up to it; behind `tagged_through` (a store indexed before counts), they are counted again from the postings at open |
//! | `merkle`       | `c`, chunk number `u64` BE                  | the root of that complete chunk of 256 leaves of the log's Merkle tree (32 bytes) |
//! | `merkle`       | `tail` / `through`                          | the leaf hashes after the last complete chunk (32 bytes each) / `u64` BE: every event up to it is in the tree |
//!
//! Big-endian keys make sled's byte order equal to numeric order, so range scans
//! return events by position and stream entries by version. Stream ids may
//! contain any byte: `stream_postings` keys are matched on their exact length, so a
//! stream named `"a\0…"` can never be mistaken for stream `"a"`.
//!
//! Positions are 1-based and gapless across the whole log; versions are 1-based
//! and gapless within a stream; instants never decrease along the log. Every read
//! checks the CRC and the position, and reports [`StoreError::Corrupt`] naming
//! the position instead of skipping anything.
//!
//! # Durability contract
//!
//! Events live in an append-only file of our own beside sled's (`events.log`, see [`log`]);
//! sled keeps what is derived from it (stream versions and index, command records, offsets,
//! meta) and the tag and Merkle indexes; snapshots are files of their own (`snapshots/`, see
//! [`snapshots`]). A group commit ([`EventStore::append_batch`],
//! [`EventStore::append_chain`]) holds the store's one writer lock: it decides every request in
//! memory against sled's trees and the batch's own earlier requests (each request atomic on its
//! own: all its checks and encodings come before anything of it is kept, so one that fails —
//! `Conflict`, `OutOfOrder`, … — leaves nothing), writes the batch as ONE frame (its events and
//! command records, under one checksum) at the log's end, waits for `fdatasync`, applies the
//! derived writes to sled in one transaction, moves the high-water mark (synced by a thread of
//! its own within 100 ms, see [`mark`]), and only then returns.
//! sled is not flushed before an acknowledgement: its trees may trail the log after a crash, and
//! opening rolls them forward from the frames past the end they record (a frame cut short was
//! never acknowledged and is cut off). [`EventStore::append`] is a batch of one. `flush_async`
//! is never used (it is known to deadlock in this sled version).
//!
//! sled is pinned to `=0.34.7`, the last stable release: 1.0 is an alpha
//! without transactions, which this store depends on.

use poolbill_store::{
    merkle_chunk_root, one_line, AppendOutcome, AppendRequest, ChainOutcome, CommandRecord, Envelope, EventStore, Hash, Instant, Payload, StoreError,
    VerifyReport, COUNTED_TAGS, MERKLE_CHUNK,
};
use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional, TransactionalTree};

mod log;
mod mark;
mod snapshots;
#[cfg(test)]
mod tests;
mod varint;

pub use log::LOG_FILE;

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

/// sled's page cache (its default is 1 GB). Events are read from the log file, not sled, so a
/// small cache costs little: at 16 MB rather than 64, derive at ten million events peaked 54 MB
/// lower, and derive, group commit and explain took as long (A/B alternated, 2026-12-07).
const CACHE_BYTES: u64 = 16 * 1024 * 1024;

const META_LAST_POSITION: &[u8] = b"last_position";
const META_LAST_INSTANT: &[u8] = b"last_instant";
/// The first position the log file holds: 1 for a store created with it, the next position for
/// a store written before it (whose earlier events stay in sled's `events` tree, never moved).
const META_LOG_FIRST: &[u8] = b"log_first";
/// The layout of sled's trees, `u32` BE (none: 1, the layout before it was recorded). 2: new
/// offsets of the log in blocks, and each tag's count. 3: counts of the counted tags only
/// (`COUNTED_TAGS`; an earlier build would read the others' as none). A build refuses a store
/// of a later layout rather than misread it; an earlier one is brought up to this one at open.
const META_LAYOUT: &[u8] = b"layout";
const LAYOUT: u32 = 3;
/// The end of the log file's last frame that sled's trees reflect.
const META_LOG_END: &[u8] = b"log_end";
/// sled records where the log's first event and every this many positions' begin in the file;
/// an event between them is found by counting the entries after the one before it.
const OFFSET_EVERY: u64 = 32;
/// Offsets are kept a block of positions to a sled entry (128 of them): sled's leaves hold at
/// most 16 entries, and its page table, read whole at every open, grows with their number.
const OFFSET_BLOCK: u64 = OFFSET_EVERY * 128;
/// What a reader of one event asks of the file at a time: about 32 events.
const RANDOM_READ: usize = 8 << 10;
/// What a sequential reader asks of the file at a time.
const SEQUENTIAL_READ: usize = 1 << 20;
/// In the `tags` tree: every event up to this position has its tags recorded (absent: none).
const TAGGED_THROUGH: &[u8] = b"tagged_through";
/// In the `tags` tree: the version of the tagging the index holds.
const TAGS_VERSION: &[u8] = b"version";
/// How far the per-tag counts reach (`n` keys of the `tags` tree).
const COUNTED_THROUGH: &[u8] = b"counted_through";
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

/// One opening of a store's files: the event log, sled's database and its trees, and what is
/// kept beside them.
struct Opened {
    /// The high-water mark's writer (stores on disk only); its lock orders the marks. Shared by
    /// every opening of the same directory.
    mark: Option<std::sync::Arc<std::sync::Mutex<mark::Writer>>>,
    /// sled's database file: synced after each flush (see [`SledStore::flush`]).
    db_file: Option<std::sync::Arc<std::fs::File>>,
    /// The event log's file (see [`log`]): read positionally by any reader.
    log: std::sync::Arc<log::LogFile>,
    /// The one writer's lock, holding where the next frame goes; `None` once a write failed
    /// halfway (this opening then writes no more: the store recovers by reopening).
    writer: std::sync::Mutex<Option<u64>>,
    /// The first position the log file holds (earlier ones are in `events`).
    log_first: u64,
    db: sled::Db,
    /// Events of stores written before the log file, read as they are.
    events: sled::Tree,
    /// Where the log's first event and every [`OFFSET_EVERY`]th begin in the file.
    offsets: sled::Tree,
    streams: sled::Tree,
    /// Stores written before the postings: emptied once they are rewritten as postings.
    stream_index: sled::Tree,
    /// Each stream's positions, a block of [`STREAM_BLOCK`] versions a value: one write per
    /// stream a group commit touches, not one per event.
    stream_postings: sled::Tree,
    commands: sled::Tree,
    meta: sled::Tree,
    /// The tag index: posting lists and how far they reach, in one tree so that a bulk update
    /// is one atomic batch.
    tags: sled::Tree,
    /// The Merkle index: roots of complete chunks, the tail's leaf hashes, how far it reaches;
    /// one tree, so that an extension is one atomic batch.
    merkle: sled::Tree,
    /// Snapshots of projections by position (opaque bytes): an optimisation, outside the log,
    /// in files of their own (`snapshots`).
    snapshots: snapshots::SnapshotFiles,
    /// Serialises the index writers (tags, Merkle): each reads how far its index reaches, then
    /// writes past it, and two catch-ups at once (the engine's and a reader's) must not both
    /// add the same events.
    indexing: std::sync::Mutex<()>,
    /// How many times sled's derived trees were written (each group commit, each roll forward)
    /// and the command ids found absent since the last: a group commit does not look up again
    /// what the engine looked up just before it (a tenth of its time under load). An id found
    /// absent before a write may have been recorded by it, so a write makes the set stale.
    index_writes: std::sync::atomic::AtomicU64,
    absent: std::sync::Mutex<(u64, std::collections::HashSet<String>)>,
}

/// Command ids remembered absent at most (the set is emptied when full).
const ABSENT_KEPT: usize = 65_536;

/// What a group commit, or the frames rolled forward at open, change in sled's trees: all of it
/// derived from the log's frames, applied in one transaction.
#[derive(Default)]
struct IndexWrites {
    /// Streams' new versions.
    versions: HashMap<String, u64>,
    /// The events' streams, versions and positions, in log order.
    appended: Vec<(String, u64, u64)>,
    /// Positions and where their entries begin in the log.
    offsets: Vec<(u64, u64)>,
    /// Command ids and their records (JSON).
    commands: Vec<(String, Vec<u8>)>,
    /// The last event's position and instant, and its value's checksum, if there are events.
    last: Option<(u64, Instant, u32)>,
    /// The end of the last frame.
    log_end: u64,
}

/// A group commit as it is decided: the frame it writes, the derived writes, and the state the
/// batch's earlier requests leave for the later ones.
struct Pending<'a> {
    open: &'a Opened,
    frame: log::Frame,
    /// Where the frame will be written.
    frame_at: u64,
    writes: IndexWrites,
    records: HashMap<String, CommandRecord>,
    last_position: u64,
    last_instant: Option<Instant>,
}

impl<'a> Pending<'a> {
    /// `expected_bytes`: about how large the frame will be, so that it is allocated once.
    fn new(open: &'a Opened, frame_at: u64, expected_bytes: usize) -> Result<Pending<'a>, StoreError> {
        Ok(Pending {
            open,
            frame: log::Frame::with_capacity(expected_bytes),
            frame_at,
            writes: IndexWrites::default(),
            records: HashMap::new(),
            last_position: open.last_position()?,
            last_instant: open.last_instant()?,
        })
    }

    fn version(&self, stream: &str) -> Result<u64, StoreError> {
        match self.writes.versions.get(stream) {
            Some(v) => Ok(*v),
            None => self.open.stream_version(stream),
        }
    }

    /// Decides one request against the store and the batch so far. Every check and encoding
    /// comes before anything of it is kept, so one that fails leaves the batch as it was.
    fn decide(&mut self, req: &AppendRequest) -> Result<AppendOutcome, StoreError> {
        if let Some(id) = &req.command_id {
            if let Some(record) = self.records.get(id) {
                return Ok(AppendOutcome::Duplicate(record.clone()));
            }
            if !self.open.known_absent(id) {
                if let Some(record) = self.open.command(id)? {
                    return Ok(AppendOutcome::Duplicate(record));
                }
            }
        }
        for (stream, expected) in &req.expected {
            let actual = self.version(stream)?;
            if !expected.accepts(actual) {
                return Err(StoreError::Conflict { stream: stream.clone(), expected: *expected, actual });
            }
        }
        let mut last_instant = self.last_instant;
        for event in &req.events {
            if let Some(last) = last_instant {
                if event.at < last {
                    return Err(StoreError::OutOfOrder { at: event.at, last });
                }
            }
            last_instant = Some(event.at);
        }
        let mut position = self.last_position;
        let mut versions: HashMap<&str, u64> = HashMap::new();
        let mut staged = Vec::with_capacity(req.events.len());
        for event in &req.events {
            let version = match versions.get(event.stream.as_str()) {
                Some(v) => *v,
                None => self.version(&event.stream)?,
            } + 1;
            versions.insert(&event.stream, version);
            position += 1;
            let env = event.at_position(position, version, req.command_id.as_deref());
            staged.push((position, encode_event(&env)?, (event.stream.as_str(), version), event.at));
        }
        let (first_position, last_position) = if req.events.is_empty() { (None, None) } else { (Some(self.last_position + 1), Some(position)) };
        let record = CommandRecord { first_position, last_position, outcome: req.outcome.clone(), fingerprint: req.fingerprint.clone() };
        let record_json = match &req.command_id {
            None => None,
            Some(id) => Some((
                id,
                serde_json::to_vec(&record)
                    .map_err(|e| StoreError::Encode { context: format!("serializing record of command {id:?}"), source: e.into() })?,
            )),
        };

        // Kept from here on: nothing below fails.
        for (position, value, (stream, version), at) in staged {
            let offset = self.frame_at + self.frame.event(&value);
            if position == self.open.log_first || position % OFFSET_EVERY == 0 {
                self.writes.offsets.push((position, offset));
            }
            self.writes.appended.push((stream.to_string(), version, position));
            self.writes.last = Some((position, at, stored_crc(&value)));
        }
        for (stream, version) in versions {
            self.writes.versions.insert(stream.to_string(), version);
        }
        self.last_position = position;
        self.last_instant = last_instant;
        if let Some((id, json)) = record_json {
            let at = self.frame_at + self.frame.command(id.as_bytes(), &json);
            self.writes.commands.push((id.clone(), record_pointer(at, &json)));
            self.records.insert(id.clone(), record.clone());
        }
        Ok(AppendOutcome::Appended(record))
    }
}

/// The log's frames past what sled's trees reflect (see [`Opened::scan_tail`]).
struct Tail {
    writes: IndexWrites,
    /// Where a frame cut short or damaged begins, how many bytes are from there to the end, why.
    cut: Option<(u64, u64, String)>,
}

/// The checksum at the head of a stored value (which is at least that long).
fn stored_crc(value: &[u8]) -> u32 {
    u32::from_be_bytes([value[0], value[1], value[2], value[3]])
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

/// What a reader of the event log met, for the event at `position` it was looking for.
fn log_damage(position: u64, e: log::ReadError) -> StoreError {
    match e {
        log::ReadError::Io(e) => StoreError::io(format!("reading the event log for position {position}"), e),
        log::ReadError::Bad { offset, detail } => corrupt(position, format!("the event log at byte {offset}: {detail}")),
    }
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

/// The key of how many events carry `tag`.
fn count_key(tag: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(tag.len() + 1);
    key.push(b'n');
    key.extend_from_slice(tag);
    key
}

/// The window of a posting-list key, if the key is `tag`'s.
fn window_of(key: &[u8], tag: &str) -> Option<u64> {
    (key.len() == tag.len() + 6).then(|| u64::from(u32::from_be_bytes(key[key.len() - 4..].try_into().expect("four bytes"))))
}

/// A posting list: how many positions, then each as its gap from the one before (the first
/// from the window's start), all varints: two or three bytes a posting.
fn encode_postings(window: u64, positions: &[u64]) -> Vec<u8> {
    encode_gaps(window * TAG_WINDOW, positions)
}

fn decode_postings(window: u64, bytes: &[u8]) -> Result<Vec<u64>, String> {
    decode_gaps(window * TAG_WINDOW, bytes, TAG_WINDOW)
}

/// Ascending positions as a varint count, then each as a varint gap from the one before (the
/// first from `base`).
fn encode_gaps(base: u64, positions: &[u64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + positions.len() * 3);
    varint::put(&mut out, positions.len() as u64);
    let mut previous = base;
    for &p in positions {
        varint::put(&mut out, p - previous);
        previous = p;
    }
    out
}

/// What [`encode_gaps`] wrote, at most `most` positions, every byte used.
fn decode_gaps(base: u64, bytes: &[u8], most: u64) -> Result<Vec<u64>, String> {
    let mut r = varint::Reader::new(bytes);
    let count = r.u64()?;
    if count > most {
        return Err(format!("{count} positions where there is room for {most}"));
    }
    let mut positions = Vec::with_capacity(count as usize);
    let mut previous = base;
    for _ in 0..count {
        previous = previous.checked_add(r.u64()?).ok_or("a position past the end of numbers")?;
        positions.push(previous);
    }
    if !r.rest().is_empty() {
        return Err("bytes after the last position".into());
    }
    Ok(positions)
}

/// The key of the offsets of positions `block * OFFSET_BLOCK ..` (stores written before the
/// blocks keyed each position's offset by the position alone: 8 bytes, sorting before these).
fn offset_block_key(block: u64) -> [u8; 9] {
    let mut key = [b'b'; 9];
    key[1..].copy_from_slice(&block.to_be_bytes());
    key
}

fn encode_offsets(block: u64, entries: &[(u64, u64)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + entries.len() * 4);
    varint::put(&mut out, entries.len() as u64);
    let (mut position, mut offset) = (block * OFFSET_BLOCK, 0);
    for &(p, o) in entries {
        varint::put(&mut out, p - position);
        varint::put(&mut out, o - offset);
        (position, offset) = (p, o);
    }
    out
}

/// What [`encode_offsets`] wrote: positions within the block and offsets, both ascending.
fn decode_offsets(block: u64, bytes: &[u8]) -> Result<Vec<(u64, u64)>, String> {
    let mut r = varint::Reader::new(bytes);
    let count = r.u64()?;
    if count > OFFSET_BLOCK {
        return Err(format!("{count} offsets where a block has room for {OFFSET_BLOCK}"));
    }
    let mut entries = Vec::with_capacity(count as usize);
    let (mut position, mut offset) = (block * OFFSET_BLOCK, 0u64);
    for _ in 0..count {
        position = position.checked_add(r.u64()?).filter(|p| p / OFFSET_BLOCK == block).ok_or("a position outside its block")?;
        offset = offset.checked_add(r.u64()?).ok_or("an offset past the end of numbers")?;
        entries.push((position, offset));
    }
    if !r.rest().is_empty() {
        return Err("bytes after the last offset".into());
    }
    Ok(entries)
}

fn index_key(stream: &str, version: u64) -> Vec<u8> {
    let mut key = index_prefix(stream);
    key.extend_from_slice(&version.to_be_bytes());
    key
}

/// A stream's versions per posting list in `stream_postings`.
const STREAM_BLOCK: u64 = 256;

/// The first version a block of a stream's postings holds (versions begin at 1).
fn block_first(block: u64) -> u64 {
    (block * STREAM_BLOCK).max(1)
}

/// A block of a stream's positions (see [`encode_gaps`]).
fn encode_block(positions: &[u64]) -> Vec<u8> {
    encode_gaps(0, positions)
}

fn decode_block(bytes: &[u8]) -> Result<Vec<u64>, String> {
    decode_gaps(0, bytes, STREAM_BLOCK)
}

/// Adds a stream's new versions (in order, continuing it) to its posting lists, inside an append's
/// transaction: the last block is read, extended and written whole, later ones begun.
fn extend_postings(postings: &TransactionalTree, stream: &str, appended: &[(u64, u64)]) -> Result<(), ConflictableTransactionError<StoreError>> {
    let mut current: Option<(u64, Vec<u64>)> = None;
    for &(version, position) in appended {
        let block = version / STREAM_BLOCK;
        if current.as_ref().map(|(b, _)| *b) != Some(block) {
            if let Some((b, positions)) = current.take() {
                postings.insert(index_key(stream, b), encode_block(&positions))?;
            }
            let positions = match postings.get(index_key(stream, block))? {
                None => Vec::new(),
                Some(bytes) => decode_block(&bytes).map_err(|e| {
                    ConflictableTransactionError::Abort(corrupt(position, format!("the stream index of {stream:?}, block {block}: {e}")))
                })?,
            };
            current = Some((block, positions));
        }
        let (_, positions) = current.as_mut().expect("set above");
        if block_first(block) + positions.len() as u64 != version {
            let found = block_first(block) + positions.len() as u64;
            return Err(ConflictableTransactionError::Abort(corrupt(
                position,
                format!("the stream index of {stream:?} continues at version {found}, not at {version}"),
            )));
        }
        positions.push(position);
    }
    if let Some((b, positions)) = current {
        postings.insert(index_key(stream, b), encode_block(&positions))?;
    }
    Ok(())
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

/// A `commands` value that points at a record in the log (see the tree layout above): sled
/// keeps 17 bytes a command instead of its record's JSON, whose copies into sled's nodes (a
/// leaf holds 16 entries, copied on every insert) were a tenth of a group commit's time.
const RECORD_IN_LOG: u8 = 0x01;
const RECORD_POINTER: usize = 17;

fn record_pointer(offset: u64, record: &[u8]) -> Vec<u8> {
    let mut value = Vec::with_capacity(RECORD_POINTER);
    value.push(RECORD_IN_LOG);
    value.extend_from_slice(&offset.to_be_bytes());
    value.extend_from_slice(&u32::try_from(record.len()).expect("a record under 4 GiB").to_be_bytes());
    value.extend_from_slice(&crc32fast::hash(record).to_be_bytes());
    value
}

/// How the requests of one group commit relate.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Group {
    /// Each stands alone: one that fails does not stop the others.
    Independent,
    /// Each may depend on its predecessors: the first that fails stops the rest.
    Chain,
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

    /// Test hook: where the stored value of the event at `position` begins in the log file.
    #[cfg(test)]
    fn value_offset(&self, position: u64) -> u64 {
        let open = self.opened();
        let (mut at, offset) = open.offset_before(position).unwrap();
        let mut cursor = log::Cursor::new(open.log.clone(), offset, open.log_end().unwrap(), RANDOM_READ);
        loop {
            match cursor.next_entry().unwrap().expect("the position is in the log") {
                (offset, log::Entry::Event(_)) if at == position => return offset + 5,
                (_, log::Entry::Event(_)) => at += 1,
                _ => {}
            }
        }
    }

    /// Test hook: bytes written over the log file at `offset`, to plant damage.
    #[cfg(test)]
    fn overwrite_log(&self, offset: u64, bytes: &[u8]) {
        self.opened().log.write_frame(offset, bytes).unwrap();
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
        let log = log::LogFile::open(path).map_err(|e| StoreError::io(format!("opening {}", path.join(LOG_FILE).display()), e))?;
        let mut store = Opened::from_db(db, log, snapshots::SnapshotFiles::open(path))?;
        store.drop_snapshots_tree()?;
        store.mark = Some(mark_writer);
        let db_file = std::fs::File::open(path.join("db")).map_err(|e| StoreError::io(format!("opening {}", path.join("db").display()), e))?;
        store.db_file = Some(std::sync::Arc::new(db_file));
        let layout = match store.meta.get(META_LAYOUT).map_err(storage("reading the store's layout"))? {
            None => 1,
            Some(v) => v.as_ref().try_into().map(u32::from_be_bytes).map_err(|_| corrupt(0, "the store's layout is not a u32"))?,
        };
        if layout > LAYOUT {
            return Err(StoreError::Newer { path: path.display().to_string(), layout, known: LAYOUT });
        }
        store.migrate_stream_index()?;
        if layout < 3 {
            store.drop_uncounted_counts()?;
        }
        store.count_tags_if_behind()?;
        if layout < LAYOUT {
            store.meta.insert(META_LAYOUT, &LAYOUT.to_be_bytes()[..]).map_err(storage("recording the store's layout"))?;
            store.db.flush().map_err(storage("flushing the store's layout"))?;
        }
        // sled's trees may trail the log (they are not flushed before an acknowledgement).
        let tail = store.scan_tail()?;
        // The whole frames past sled's trees are indexed (derived from the log: never lost by
        // doing it), then the mark is checked against the log, and only then is a frame cut
        // short cut off: a store that lost acknowledged events keeps every byte it has.
        store.index_tail(&tail.writes)?;
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
            if store.value_at(position)?.map(|v| stored_crc(&v)) != Some(crc) {
                return Err(corrupt(position, "the acknowledged event at this position is not the one that was acknowledged"));
            }
        }
        store.cut_tail(&tail)?;
        Ok(store)
    }

    fn temporary() -> Result<Opened, StoreError> {
        let db = sled::Config::new().temporary(true).cache_capacity(CACHE_BYTES).open().map_err(storage("opening temporary sled database"))?;
        let log = log::LogFile::temporary().map_err(|e| StoreError::io("creating a temporary event log", e))?;
        let snapshots = snapshots::SnapshotFiles::temporary().map_err(|e| StoreError::io("creating a temporary store's snapshot directory", e))?;
        let store = Opened::from_db(db, log, snapshots)?;
        store.count_tags_if_behind()?;
        Ok(store)
    }

    fn from_db(db: sled::Db, log: log::LogFile, snapshots: snapshots::SnapshotFiles) -> Result<Opened, StoreError> {
        let open = |name: &str| db.open_tree(name).map_err(storage(format_args!("opening tree {name}")));
        let meta = open("meta")?;
        let meta_u64 = |key: &[u8]| -> Result<Option<u64>, StoreError> {
            match meta.get(key).map_err(storage("reading meta"))? {
                None => Ok(None),
                Some(v) => decode_u64(&v).map(Some).ok_or_else(|| corrupt(0, format!("meta {} is not a u64", String::from_utf8_lossy(key)))),
            }
        };
        let log_first = match meta_u64(META_LOG_FIRST)? {
            Some(first) => first,
            None => {
                // A new store, or one written before the log file: the log begins after its
                // last event (recorded before anything is appended, so sled keeps it first).
                let first = meta_u64(META_LAST_POSITION)?.unwrap_or(0) + 1;
                meta.insert(META_LOG_FIRST, &first.to_be_bytes()[..]).map_err(storage("recording where the event log begins"))?;
                // Flushed at once, as every write a reader makes is (see `leave_at_exit` in the CLI).
                db.flush().map_err(storage("flushing where the event log begins"))?;
                first
            }
        };
        let log_end = meta_u64(META_LOG_END)?.unwrap_or(0);
        Ok(Opened {
            mark: None,
            db_file: None,
            log: std::sync::Arc::new(log),
            writer: std::sync::Mutex::new(Some(log_end)),
            log_first,
            events: open("events")?,
            offsets: open("offsets")?,
            streams: open("streams")?,
            stream_index: open("stream_index")?,
            stream_postings: open("stream_postings")?,
            commands: open("commands")?,
            meta,
            tags: open("tags")?,
            merkle: open("merkle")?,
            snapshots,
            indexing: std::sync::Mutex::new(()),
            index_writes: std::sync::atomic::AtomicU64::new(0),
            absent: std::sync::Mutex::new((0, std::collections::HashSet::new())),
            db,
        })
    }

    /// Stores written before snapshots were files kept them in a sled tree. They are an
    /// optimisation made again from the log (and in an older format than this build reads):
    /// the tree is dropped, once, rather than left to take space unread.
    fn drop_snapshots_tree(&self) -> Result<(), StoreError> {
        const TREE: &[u8] = b"snapshots";
        if self.db.tree_names().iter().any(|name| name.as_ref() == TREE) {
            self.db.drop_tree(TREE).map_err(storage("dropping the snapshots of an older layout"))?;
            self.db.flush().map_err(storage("flushing the dropped snapshots"))?;
            tracing::info!("snapshots kept in sled by an older build were dropped: they are files now, made again from the log");
        }
        Ok(())
    }

    fn meta_u64(&self, key: &[u8]) -> Result<Option<u64>, StoreError> {
        match self.meta.get(key).map_err(storage("reading meta"))? {
            None => Ok(None),
            Some(v) => decode_u64(&v).map(Some).ok_or_else(|| corrupt(0, format!("meta {} is not a u64", String::from_utf8_lossy(key)))),
        }
    }

    /// The end of the log's frames that sled's trees reflect.
    fn log_end(&self) -> Result<u64, StoreError> {
        Ok(self.meta_u64(META_LOG_END)?.unwrap_or(0))
    }

    /// The frames past what sled's trees reflect, read and checked, and what they would add to
    /// those trees; and where the last whole frame ends if a cut or damaged one follows it.
    fn scan_tail(&self) -> Result<Tail, StoreError> {
        let log_end = self.log_end()?;
        let len = self.log.len().map_err(|e| StoreError::io("reading the event log's length", e))?;
        let mut position = self.last_position()?;
        if len < log_end {
            return Err(corrupt(
                position,
                format!(
                    "the event log is {len} bytes but its first {log_end} bytes had been written and indexed: the store was truncated or damaged"
                ),
            ));
        }
        let mut tail = Tail { writes: IndexWrites { log_end, ..IndexWrites::default() }, cut: None };
        let mut cursor = log::Cursor::new(self.log.clone(), log_end, len, SEQUENTIAL_READ);
        let mut versions: HashMap<String, u64> = HashMap::new();
        loop {
            let (offset, body) = match cursor.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(log::ReadError::Io(e)) => return Err(StoreError::io("reading the event log's last frames", e)),
                Err(log::ReadError::Bad { offset, detail }) => {
                    tail.cut = Some((offset, len - offset, detail));
                    break;
                }
            };
            let entries = match log::body_entries(&body) {
                Ok(entries) => entries,
                Err(detail) => {
                    tail.cut = Some((offset, len - offset, detail));
                    break;
                }
            };
            let mut at = offset + log::FRAME_HEADER as u64;
            for entry in entries {
                match entry {
                    log::Entry::Event(value) => {
                        position += 1;
                        // The frame's checksum matched: an event that does not read is damage.
                        let env = decode_event(position, value)?;
                        let current = match versions.get(&env.stream) {
                            Some(v) => *v,
                            None => self.stream_version(&env.stream)?,
                        };
                        if env.version != current + 1 {
                            return Err(corrupt(position, format!("stream {:?} version {} follows version {current}", env.stream, env.version)));
                        }
                        if position == self.log_first || position % OFFSET_EVERY == 0 {
                            tail.writes.offsets.push((position, at));
                        }
                        tail.writes.appended.push((env.stream.clone(), env.version, position));
                        tail.writes.last = Some((position, env.at, stored_crc(value)));
                        versions.insert(env.stream, env.version);
                        at += 5 + value.len() as u64;
                    }
                    log::Entry::Command { id, record } => {
                        decode_command(id, record)?;
                        let record_at = at + 9 + id.len() as u64;
                        let id = String::from_utf8(id.to_vec()).map_err(|_| corrupt(position, "a command id in the log is not UTF-8"))?;
                        tail.writes.commands.push((id, record_pointer(record_at, record)));
                        at = record_at + record.len() as u64;
                    }
                    log::Entry::Frame { .. } => unreachable!("body_entries refuses frame headers"),
                }
            }
            tail.writes.log_end = cursor.offset();
        }
        tail.writes.versions = versions;
        Ok(tail)
    }

    /// Brings sled's trees up to the log: the whole frames [`Opened::scan_tail`] found past them.
    fn index_tail(&self, writes: &IndexWrites) -> Result<(), StoreError> {
        if writes.log_end <= self.log_end()? {
            return Ok(());
        }
        tracing::info!(through = writes.last.map(|(p, _, _)| p), "the store's indexes trailed its event log: brought up to date from the log");
        self.apply_index(writes).map_err(|e| match e {
            StoreError::OutcomeUnknown { source, .. } => *source,
            e => e,
        })?;
        *self.writer.lock().unwrap_or_else(|e| e.into_inner()) = Some(writes.log_end);
        self.db.flush().map(|_| ()).map_err(storage("flushing the indexes brought up to date"))
    }

    /// Cuts off a frame cut short or damaged past the last whole one: it was never acknowledged
    /// (the mark, checked before, does not reach it).
    fn cut_tail(&self, tail: &Tail) -> Result<(), StoreError> {
        if let Some((offset, bytes, detail)) = &tail.cut {
            tracing::warn!(offset, bytes, detail, "the event log ends with a write that was never acknowledged: cut off");
            self.log.truncate(*offset).map_err(|e| StoreError::io("cutting an unacknowledged write off the event log", e))?;
        }
        Ok(())
    }

    /// Applies a group commit's derived writes to sled's trees, in one transaction.
    fn apply_index(&self, w: &IndexWrites) -> Result<(), StoreError> {
        // Each stream's new positions, in version order.
        let mut by_stream: std::collections::BTreeMap<&str, Vec<(u64, u64)>> = std::collections::BTreeMap::new();
        for (stream, version, position) in &w.appended {
            by_stream.entry(stream).or_default().push((*version, *position));
        }
        let trees = (&self.streams, &self.stream_postings, &self.commands, &self.meta, &self.offsets);
        let result: Result<(), TransactionError<StoreError>> = trees.transaction(|(streams, postings, commands, meta, offsets)| {
            for (stream, version) in &w.versions {
                streams.insert(stream.as_bytes(), &version.to_be_bytes()[..])?;
            }
            for (stream, appended) in &by_stream {
                extend_postings(postings, stream, appended)?;
            }
            for block in w.offsets.chunk_by(|a, b| a.0 / OFFSET_BLOCK == b.0 / OFFSET_BLOCK) {
                let number = block[0].0 / OFFSET_BLOCK;
                let key = offset_block_key(number);
                let mut entries = match offsets.get(key)? {
                    Some(kept) => decode_offsets(number, &kept)
                        .map_err(|e| ConflictableTransactionError::Abort(corrupt(block[0].0, format!("the offsets of block {number}: {e}"))))?,
                    None => Vec::new(),
                };
                // Positions are recorded once; a later one never precedes a kept one.
                entries.retain(|(position, _)| *position < block[0].0);
                entries.extend_from_slice(block);
                offsets.insert(&key[..], encode_offsets(number, &entries))?;
            }
            for (id, json) in &w.commands {
                commands.insert(id.as_bytes(), json.as_slice())?;
            }
            if let Some((position, at, _)) = w.last {
                meta.insert(META_LAST_POSITION, &position.to_be_bytes()[..])?;
                meta.insert(META_LAST_INSTANT, at.to_rfc3339().as_bytes())?;
            }
            meta.insert(META_LOG_END, &w.log_end.to_be_bytes()[..])?;
            Ok(())
        });
        // Done or failed, what was found absent before may be there now.
        self.index_writes.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        result.map_err(|e| {
            let source = match e {
                TransactionError::Abort(e) => e,
                TransactionError::Storage(source) => StoreError::backend("indexing a group commit", source),
            };
            StoreError::OutcomeUnknown { context: "the events were written to the log, then indexing them failed".into(), source: Box::new(source) }
        })
    }

    /// A group commit (see the durability contract above): `reqs` decided in order under the
    /// writer lock, each on the state the earlier ones leave; one that fails its checks keeps
    /// nothing and answers `Err`, and the others go on unless this is a [`Group::Chain`], which
    /// stops at its first failure. What they append is one frame of the log, synced, then
    /// indexed in sled, then marked. The outer `Err` is the store's: nothing of the batch is
    /// acknowledged, and past the decisions its outcome is unknown.
    fn append_group(&self, reqs: &[AppendRequest], group: Group) -> Result<Vec<Result<AppendOutcome, StoreError>>, StoreError> {
        let mut writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let Some(end) = *writer else {
            return Err(StoreError::Unavailable { why: "an earlier write to this store's files failed halfway".into() });
        };
        // A frame of a long chain runs to hundreds of KB: grown by doubling, it was copied again
        // at every step. An entry is its payload and about 64 bytes of envelope, a command's
        // record about 300.
        let payload = |e: &poolbill_store::NewEvent| match &e.payload {
            Payload::Binary(bytes) => bytes.len(),
            Payload::Json(_) => 256,
        };
        let expected: usize = reqs.iter().map(|r| 300 + r.events.iter().map(|e| 64 + payload(e)).sum::<usize>()).sum();
        let mut pending = Pending::new(self, end, expected)?;
        let mut results = Vec::with_capacity(reqs.len());
        for req in reqs {
            let result = match pending.decide(req) {
                // The store's own failure to read: the batch fails, nothing was written.
                Err(e) if e.is_outage() => return Err(e),
                result => result,
            };
            let failed = result.is_err();
            results.push(result);
            if failed && group == Group::Chain {
                break;
            }
        }
        if pending.frame.is_empty() {
            // Duplicates and refusals only: what they answer from was acknowledged, so it is on
            // disk already (every commit is, before the writer lock is let go).
            return Ok(results);
        }
        let Pending { frame, mut writes, .. } = pending;
        let frame = frame.finish();
        // Until the frame is indexed, a failure leaves this opening unable to tell where the log
        // ends: it writes no more (the store recovers by reopening, which reads the log).
        *writer = None;
        if let Err(e) = self.log.write_frame(end, &frame) {
            // Best effort: a frame never acknowledged is cut off again, so that recovery does not
            // roll it forward; if this fails too, recovery decides from what reached the disk.
            let _ = self.log.truncate(end);
            return Err(StoreError::OutcomeUnknown {
                context: format!("writing {} requests to the event log", reqs.len()),
                source: Box::new(StoreError::io("appending a frame to the event log", e)),
            });
        }
        writes.log_end = end + frame.len() as u64;
        self.apply_index(&writes)?;
        *writer = Some(writes.log_end);
        if let Some((position, _, crc)) = writes.last {
            self.write_watermark(position, crc).map_err(|e| StoreError::OutcomeUnknown {
                context: format!("{} requests were written, then moving the high-water mark failed", reqs.len()),
                source: Box::new(e),
            })?;
        }
        Ok(results)
    }

    /// Everything written so far made durable: the log synced (each commit syncs it already),
    /// sled's synchronous flush, then an `fsync` of its database file; then the high-water mark
    /// moves to the last position, so that it never claims more than is on disk, and is synced
    /// (commits leave that to its thread, see [`mark`]). sled 0.34.7
    /// makes its writes durable with `sync_file_range` alone, which flushes neither the disk's
    /// write cache nor the file's size and extents (its own `fsync` comes only every 500 ms).
    pub fn flush(&self) -> Result<(), StoreError> {
        // Only what was written before the flush began is known to be on disk after it.
        let durable = self.last_position()?;
        self.log.sync().map_err(|e| StoreError::io("syncing the event log", e))?;
        self.db.flush().map(|_| ()).map_err(storage("flushing sled database to disk"))?;
        if let Some(file) = &self.db_file {
            file.sync_all().map_err(|e| StoreError::io("syncing sled's database file", e))?;
        }
        if durable == 0 {
            return Ok(());
        }
        let value = self.value_at(durable)?.ok_or_else(|| corrupt(durable, "the last position has no event"))?;
        self.write_watermark(durable, stored_crc(&value))?;
        match &self.mark {
            Some(mark) => mark.lock().unwrap_or_else(|e| e.into_inner()).sync(),
            None => Ok(()),
        }
    }

    /// Remember that `id` was not recorded when sled's trees had been written `writes` times.
    fn found_absent(&self, writes: u64, id: &str) {
        let mut absent = self.absent.lock().unwrap_or_else(|e| e.into_inner());
        if absent.0 != writes || absent.1.len() >= ABSENT_KEPT {
            if absent.0 > writes {
                return;
            }
            *absent = (writes, std::collections::HashSet::new());
        }
        absent.1.insert(id.to_string());
    }

    /// Whether `id` was found absent since sled's trees were last written (so it still is).
    fn known_absent(&self, id: &str) -> bool {
        let writes = self.index_writes.load(std::sync::atomic::Ordering::Acquire);
        let absent = self.absent.lock().unwrap_or_else(|e| e.into_inner());
        absent.0 == writes && absent.1.contains(id)
    }

    /// The record a `commands` value holds or points at in the log, checked against its CRC.
    fn record(&self, id: &[u8], value: &[u8]) -> Result<CommandRecord, StoreError> {
        if value.len() != RECORD_POINTER || value[0] != RECORD_IN_LOG {
            return decode_command(id, value);
        }
        let field = |from: usize, to: usize| -> u64 { value[from..to].iter().fold(0, |n, b| n << 8 | u64::from(*b)) };
        let (offset, len, crc) = (field(1, 9), field(9, 13), field(13, 17) as u32);
        let named = || String::from_utf8_lossy(id).into_owned();
        let mut record = vec![0; len as usize];
        match self.log.read_at(&mut record, offset) {
            Ok(()) if crc32fast::hash(&record) == crc => decode_command(id, &record),
            Ok(()) => Err(corrupt(0, format!("command record {:?} at byte {offset} of the event log does not match its checksum", named()))),
            Err(e) => Err(corrupt(0, format!("command record {:?} at byte {offset} of the event log cannot be read: {e}", named()))),
        }
    }

    /// Record the last position and its value's checksum in the mark's file, in place, synced
    /// within [`mark::SYNC_EVERY`] (see [`mark`]): it only moves forward.
    fn write_watermark(&self, last: u64, crc: u32) -> Result<(), StoreError> {
        let Some(mark) = &self.mark else { return Ok(()) };
        let mut writer = mark.lock().unwrap_or_else(|e| e.into_inner());
        if last == 0 || writer.position()? >= last {
            return Ok(());
        }
        writer.write(last, crc)
    }

    /// Where the entry of the last position at or before `position` that has its offset
    /// recorded begins, and that position (`position` is in the log file).
    fn offset_before(&self, position: u64) -> Result<(u64, u64), StoreError> {
        let block = position / OFFSET_BLOCK;
        // The position's block, or (before its first entry) the nearest block before it.
        for entry in self.offsets.range(offset_block_key(0)..=offset_block_key(block)).rev() {
            let (key, value) = entry.map_err(storage("reading the event log's offsets"))?;
            let number = decode_u64(&key[1..]).ok_or_else(|| corrupt(position, "a block of offsets in the event log has a key of another form"))?;
            let entries = decode_offsets(number, &value).map_err(|e| corrupt(position, format!("the event log's offsets of block {number}: {e}")))?;
            if let Some(&(at, offset)) = entries.iter().rev().find(|(at, _)| *at <= position) {
                if at < self.log_first {
                    return Err(corrupt(position, format!("an offset is recorded for position {at}, before the event log begins")));
                }
                return Ok((at, offset));
            }
        }
        // Before any block: an offset an earlier build recorded in an entry of its own, keyed by
        // its position (kept as it is: rewriting them frees sled segments that sled then zeroes
        // at every open until new writes take them).
        let found = self.offsets.range(..=position.to_be_bytes()).next_back().transpose().map_err(storage("reading the event log's offsets"))?;
        let (key, value) = found.ok_or_else(|| corrupt(position, "no offset in the event log is recorded at or before this position"))?;
        match (decode_u64(&key), decode_u64(&value)) {
            (Some(at), Some(offset)) if at >= self.log_first => Ok((at, offset)),
            _ => Err(corrupt(position, "a recorded offset in the event log is not a position and a u64")),
        }
    }
    /// The stored value of the event at `position` (in sled's `events` tree before the log
    /// file, in the file from its first position), `None` past the last position.
    fn value_at(&self, position: u64) -> Result<Option<Vec<u8>>, StoreError> {
        if position == 0 {
            return Ok(None);
        }
        if position < self.log_first {
            return Ok(self
                .events
                .get(position.to_be_bytes())
                .map_err(storage(format_args!("reading the event at position {position}")))?
                .map(|v| v.to_vec()));
        }
        let last = self.last_position()?;
        if position > last {
            return Ok(None);
        }
        let limit = self.log_end()?;
        let (mut at, offset) = self.offset_before(position)?;
        let mut cursor = log::Cursor::new(self.log.clone(), offset, limit, RANDOM_READ);
        loop {
            match cursor.next_entry() {
                Ok(Some((_, log::Entry::Event(value)))) if at == position => return Ok(Some(value.to_vec())),
                Ok(Some((_, log::Entry::Event(_)))) => at += 1,
                Ok(Some(_)) => {}
                Ok(None) => return Err(corrupt(position, "the event log ends before this position")),
                Err(e) => return Err(log_damage(position, e)),
            }
        }
    }

    /// The events from `from_position` on, read lazily; the iterator owns what it reads from, so
    /// it outlives this opening's handle. It stops at the last position when it began.
    fn read_events(&self, from_position: u64) -> Box<dyn Iterator<Item = Result<Envelope, StoreError>> + Send + 'static> {
        let start = from_position.max(1);
        // The last position before the end: a commit indexes both at once, so the end read after
        // it reaches at least that far.
        let bounds = self.last_position().and_then(|last| Ok((last, self.log_end()?)));
        let (last, limit) = match bounds {
            Ok(bounds) => bounds,
            Err(e) => return Box::new(std::iter::once(Err(e))),
        };
        let mut expected = start;
        let mut failed = false;
        // Events of a store written before the log file, from sled's tree.
        let mut older = (start < self.log_first).then(|| self.events.range(start.to_be_bytes()..self.log_first.to_be_bytes()));
        let mut cursor: Option<(log::Cursor, u64)> = None;
        let log = self.log.clone();
        // Where the log file's part begins (none: the part in sled's tree reaches the end).
        let mut offsets = (start.max(self.log_first) <= last).then(|| self.offset_before(start.max(self.log_first)));
        Box::new(std::iter::from_fn(move || {
            if failed || expected > last {
                return None;
            }
            if let Some(range) = &mut older {
                match range.next() {
                    Some(entry) => {
                        let item = match entry {
                            Ok((key, value)) => decode_event_entry(&key, &value, expected),
                            Err(source) => Err(StoreError::backend(format!("reading events at position {expected}"), source)),
                        };
                        match item {
                            Ok(_) => expected += 1,
                            Err(_) => failed = true,
                        }
                        return Some(item);
                    }
                    None => older = None,
                }
            }
            if cursor.is_none() {
                match offsets.take() {
                    Some(Ok((at, offset))) => cursor = Some((log::Cursor::new(log.clone(), offset, limit, SEQUENTIAL_READ), at)),
                    Some(Err(e)) => {
                        failed = true;
                        return Some(Err(e));
                    }
                    None => {
                        failed = true;
                        return Some(Err(corrupt(expected, format!("gap: the events before the log file end at position {}", expected - 1))));
                    }
                }
            }
            let (reader, at) = cursor.as_mut().expect("opened above");
            loop {
                match reader.next_entry() {
                    Ok(Some((_, log::Entry::Event(value)))) => {
                        let position = *at;
                        *at += 1;
                        if position < expected {
                            continue;
                        }
                        let item = decode_event(position, value);
                        match item {
                            Ok(_) => expected += 1,
                            Err(_) => failed = true,
                        }
                        return Some(item);
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        failed = true;
                        return Some(Err(corrupt(expected, "the event log ends before this position")));
                    }
                    Err(e) => {
                        failed = true;
                        return Some(Err(log_damage(expected, e)));
                    }
                }
            }
        }))
    }

    /// Each tree's name, entries, and bytes of keys and values: what the store holds, before
    /// sled's own overhead (page headers, and space its log has not reclaimed yet).
    pub fn tree_sizes(&self) -> Result<Vec<(String, u64, u64, u64)>, StoreError> {
        let trees = [
            ("events", &self.events),
            ("offsets", &self.offsets),
            ("streams", &self.streams),
            ("stream_index", &self.stream_index),
            ("stream_postings", &self.stream_postings),
            ("commands", &self.commands),
            ("meta", &self.meta),
            ("tags", &self.tags),
            ("merkle", &self.merkle),
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
        let last = self.last_position()?;
        let log_bytes = self.log.len().map_err(|e| StoreError::io("reading the event log's length", e))?;
        sizes.push((LOG_FILE.to_string(), (last + 1).saturating_sub(self.log_first), 0, log_bytes));
        let (snapshot_bytes, snapshots) = self.snapshots.size()?;
        sizes.push((format!("{}/", snapshots::SNAPSHOTS_DIR), snapshots, 0, snapshot_bytes));
        Ok(sizes)
    }
}

impl EventStore for Opened {
    fn put_snapshot(&self, position: u64, bytes: &[u8]) -> Result<(), StoreError> {
        self.snapshots.put(position, bytes)
    }

    fn snapshot_at_or_before(&self, position: u64) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        self.snapshots.at_or_before(position)
    }

    fn snapshot_positions(&self) -> Result<Vec<u64>, StoreError> {
        self.snapshots.positions()
    }

    /// Group commit ([`Opened::append_group`]): the requests in order, each atomic on its own and
    /// independent of the others' failures (a later request sees the earlier ones, e.g. as a
    /// Duplicate), in one frame of the log. The outer `Err` is the store's: then nothing in the
    /// batch may be considered acknowledged.
    fn append_batch(&self, reqs: Vec<AppendRequest>) -> Result<Vec<Result<AppendOutcome, StoreError>>, StoreError> {
        self.append_group(&reqs, Group::Independent)
    }

    /// Group commit of a chain: requests where each was decided on the state its predecessors
    /// leave. Applied in order, in one frame of the log, until the first one that fails; the
    /// rest are not applied, since they may depend on it. The applied prefix is durable when
    /// this returns. Returns the outcomes of the applied prefix and, if one failed, its index
    /// and error.
    fn append_chain(&self, reqs: Vec<AppendRequest>) -> Result<ChainOutcome, StoreError> {
        let mut applied = Vec::with_capacity(reqs.len());
        let mut failed = None;
        for (i, result) in self.append_group(&reqs, Group::Chain)?.into_iter().enumerate() {
            match result {
                Ok(outcome) => applied.push(outcome),
                Err(e) => {
                    failed = Some((i, e));
                    break;
                }
            }
        }
        tracing::debug!(requests = reqs.len(), applied = applied.len(), failed = ?failed.as_ref().map(|(i, e)| (i, e.to_string())), "chain appended and flushed");
        Ok((applied, failed))
    }

    /// All events from `from_position` on (0 and 1 both mean "from the start"),
    /// in position order, read lazily. After the first error (e.g. `Corrupt`)
    /// the iterator ends.
    fn read_all(&self, from_position: u64) -> Box<dyn Iterator<Item = Result<Envelope, StoreError>> + Send + '_> {
        self.read_events(from_position)
    }

    /// One event, found from the nearest recorded offset before it.
    fn read_at(&self, position: u64) -> Result<Option<Envelope>, StoreError> {
        self.value_at(position)?.map(|value| decode_event(position, &value)).transpose()
    }

    /// Events of `stream` with version >= `from_version` (0 and 1 both mean
    /// "from the start"), in version order.
    fn read_stream(&self, stream: &str, from_version: u64) -> Result<Vec<Envelope>, StoreError> {
        let start = from_version.max(1);
        // A commit indexes its positions and the last position together: read first, this bounds
        // what the postings may name that a reader can be shown.
        let last = self.last_position()?;
        let key_len = stream.len() + 9;
        let mut expected_version = start;
        let mut out = Vec::new();
        for entry in self.stream_postings.range(index_key(stream, start / STREAM_BLOCK)..=index_key(stream, u64::MAX)) {
            let (key, value) = entry.map_err(storage(format_args!("scanning index of stream {stream:?}")))?;
            // Longer keys in this range belong to streams whose id extends ours with a NUL.
            if key.len() != key_len {
                continue;
            }
            let block = decode_u64(&key[stream.len() + 1..]).unwrap_or(0);
            let positions = decode_block(&value).map_err(|e| corrupt(0, format!("the stream index of {stream:?}, block {block}: {e}")))?;
            for (version, position) in (block_first(block)..).zip(positions) {
                if version < start {
                    continue;
                }
                if position > last {
                    return Ok(out);
                }
                if version != expected_version {
                    return Err(corrupt(position, format!("stream {stream:?} has a gap: expected version {expected_version}, found {version}")));
                }
                let value = self
                    .value_at(position)?
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
        // Counts are kept for the counted tags only (`COUNTED_TAGS`); the rest are added up.
        if !prefix.starts_with(COUNTED_TAGS) || !self.counts_current()? {
            return self.count_postings(prefix);
        }
        self.read_counts(self.tags.scan_prefix(count_key(prefix.as_bytes())))
    }

    fn tag_counts_between(&self, from: &str, to: &str) -> Result<Vec<(String, u64)>, StoreError> {
        if from >= to {
            return Ok(Vec::new());
        }
        if !(from.starts_with(COUNTED_TAGS) && to.starts_with(COUNTED_TAGS) && self.counts_current()?) {
            return poolbill_store::counts_between_by_prefix(from, to, |prefix| self.count_postings(prefix));
        }
        self.read_counts(self.tags.range(count_key(from.as_bytes())..count_key(to.as_bytes())))
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
        self.tags.insert(COUNTED_THROUGH, &0u64.to_be_bytes()[..]).map_err(storage("recording how far tags are counted"))?;
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
        let mut added: HashMap<&str, u64> = HashMap::new();
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
                    *added.entry(tag).or_default() += 1;
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
        // The counts move with the postings, in the same batch, where they are current (a store
        // indexed before them is counted at open).
        if self.counts_current()? {
            for (tag, n) in added.into_iter().filter(|(tag, _)| tag.starts_with(COUNTED_TAGS)) {
                let key = count_key(tag.as_bytes());
                let kept = match self.tags.get(&key).map_err(storage("reading a tag's count"))? {
                    Some(v) => decode_u64(&v).ok_or_else(|| corrupt(0, format!("the count of tag {tag:?} is not a u64")))?,
                    None => 0,
                };
                batch.insert(key, &(kept + n).to_be_bytes()[..]);
            }
            batch.insert(COUNTED_THROUGH, &through.to_be_bytes()[..]);
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
        // Read before the lookup: a write after it makes what is found absent stale.
        let writes = self.index_writes.load(std::sync::atomic::Ordering::Acquire);
        let raw = self.commands.get(command_id.as_bytes()).map_err(storage(format_args!("reading command {command_id:?}")))?;
        if raw.is_none() {
            self.found_absent(writes, command_id);
        }
        raw.map(|v| self.record(command_id.as_bytes(), &v)).transpose()
    }

    /// Full scan of the log. Checks checksums, gapless positions, gapless
    /// per-stream versions matching `stream_postings` and `streams`, non-decreasing
    /// instants, `meta`, and that command records decode and point inside the log.
    /// Fails with the first bad position.
    fn verify(&self) -> Result<VerifyReport, StoreError> {
        // stream -> (version, position of its last event)
        let mut streams: HashMap<String, (u64, u64)> = HashMap::new();
        // stream -> the positions of its versions in its last block so far
        let mut blocks: HashMap<String, Vec<u64>> = HashMap::new();
        let mut checked_blocks = 0u64;
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
            // The stream's postings, a block at a time, against what its events say.
            let block = blocks.entry(env.stream.clone()).or_default();
            if env.version % STREAM_BLOCK == 0 && env.version > 0 {
                self.verify_block(&env.stream, env.version / STREAM_BLOCK - 1, block, position)?;
                checked_blocks += 1;
                block.clear();
            }
            block.push(position);
        }
        for (stream, block) in &blocks {
            let (version, position) = streams.get(stream).copied().unwrap_or((0, 0));
            self.verify_block(stream, version / STREAM_BLOCK, block, position)?;
            checked_blocks += 1;
        }
        let stored_blocks = self.stream_postings.len() as u64;
        if stored_blocks != checked_blocks {
            return Err(corrupt(count, format!("the stream index has {stored_blocks} blocks, the log's events fill {checked_blocks}")));
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

        self.verify_log(count)?;

        let mut commands = 0u64;
        for entry in self.commands.iter() {
            let (key, value) = entry.map_err(storage("scanning commands tree"))?;
            let record = self.record(&key, &value)?;
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

impl Opened {
    /// One block of a stream's postings against the positions its events have.
    fn verify_block(&self, stream: &str, block: u64, positions: &[u64], at: u64) -> Result<(), StoreError> {
        let stored = self.stream_postings.get(index_key(stream, block)).map_err(storage(format_args!("reading the stream index of {stream:?}")))?;
        let stored = stored
            .map(|bytes| decode_block(&bytes))
            .transpose()
            .map_err(|e| corrupt(at, format!("the stream index of {stream:?}, block {block}: {e}")))?;
        if stored.as_deref() != Some(positions) {
            let first = positions.iter().zip(stored.iter().flatten()).find(|(a, b)| a != b).map_or(at, |(a, _)| *a);
            return Err(corrupt(first, format!("the stream index of {stream:?}, block {block}, does not match the stream's events")));
        }
        Ok(())
    }

    fn counted_through(&self) -> Result<Option<u64>, StoreError> {
        match self.tags.get(COUNTED_THROUGH).map_err(storage("reading how far tags are counted"))? {
            None => Ok(None),
            Some(v) => decode_u64(&v).map(Some).ok_or_else(|| corrupt(0, "tags' counted_through is not a u64")),
        }
    }

    /// Whether the per-tag counts hold every posting: not in a store indexed before them, nor
    /// in one a version without them indexed further.
    fn counts_current(&self) -> Result<bool, StoreError> {
        Ok(self.counted_through()? == Some(self.tagged_through()?))
    }

    /// The tags' counts a scan of `n` keys finds, in tag order.
    fn read_counts(&self, entries: sled::Iter) -> Result<Vec<(String, u64)>, StoreError> {
        let mut counts = Vec::new();
        for entry in entries {
            let (key, value) = entry.map_err(storage("reading the counts of tags"))?;
            let tag = String::from_utf8_lossy(&key[1..]).into_owned();
            let count = decode_u64(&value).ok_or_else(|| corrupt(0, format!("the count of tag {tag:?} is not a u64")))?;
            counts.push((tag, count));
        }
        Ok(counts)
    }

    /// Each tag starting with `prefix` and its events, added up from its posting lists (each
    /// begins with its count): what the counts say, read the long way.
    fn count_postings(&self, prefix: &str) -> Result<Vec<(String, u64)>, StoreError> {
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

    /// Counts every tag's events from its postings, once, where the counts are missing or
    /// behind (see [`Opened::counts_current`]); derived from the index, as the index is from
    /// the log, so rewriting them loses nothing.
    fn count_tags_if_behind(&self) -> Result<(), StoreError> {
        let _only_one = self.indexing.lock().unwrap_or_else(|e| e.into_inner());
        if self.counts_current()? {
            return Ok(());
        }
        let through = self.tagged_through()?;
        tracing::info!(through, "counting each tag's events from the tag index (once)");
        let mut batch = sled::Batch::default();
        for entry in self.tags.scan_prefix([b'n']) {
            let (key, _) = entry.map_err(storage("scanning the tags' counts"))?;
            batch.remove(key);
        }
        for (tag, count) in self.count_postings(COUNTED_TAGS)? {
            batch.insert(count_key(tag.as_bytes()), &count.to_be_bytes()[..]);
        }
        batch.insert(COUNTED_THROUGH, &through.to_be_bytes()[..]);
        self.tags.apply_batch(batch).map_err(storage("writing the tags' counts"))?;
        self.db.flush().map(|_| ()).map_err(storage("flushing the tags' counts"))
    }

    /// A layout 2 store counted every tag: the counts of tags outside `COUNTED_TAGS` are dropped
    /// (never read again: they are added up from the postings when asked), once.
    fn drop_uncounted_counts(&self) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        let mut dropped = 0;
        for key in self.tags.scan_prefix([b'n']).keys() {
            let key = key.map_err(storage("scanning the tags' counts"))?;
            if !key[1..].starts_with(COUNTED_TAGS.as_bytes()) {
                batch.remove(key);
                dropped += 1;
            }
        }
        if dropped > 0 {
            tracing::info!(dropped, "dropping the counts of tags that are counted from their postings (once)");
            self.tags.apply_batch(batch).map_err(storage("dropping the counts of uncounted tags"))?;
        }
        Ok(())
    }

    /// A store written before the postings keeps one `stream_index` entry per event: rewritten as
    /// postings once (they are derived from the log, as the entries were), then emptied. A crash
    /// halfway leaves the entries: the next opening begins again.
    fn migrate_stream_index(&self) -> Result<(), StoreError> {
        if self.stream_index.is_empty() {
            return Ok(());
        }
        tracing::info!(entries = self.stream_index.len(), "rewriting the stream index as posting lists (once)");
        self.stream_postings.clear().map_err(storage("clearing the stream postings"))?;
        for entry in self.streams.iter() {
            let (name, _) = entry.map_err(storage("scanning streams tree"))?;
            let stream = String::from_utf8(name.to_vec()).map_err(|_| corrupt(0, "a stream id is not UTF-8"))?;
            let mut batch = sled::Batch::default();
            let mut block: Vec<u64> = Vec::new();
            let mut expected = 1u64;
            for entry in self.stream_index.range(index_key(&stream, 1)..=index_key(&stream, u64::MAX)) {
                let (key, value) = entry.map_err(storage(format_args!("scanning index of stream {stream:?}")))?;
                // Longer keys in this range belong to streams whose id extends ours with a NUL.
                if key.len() != stream.len() + 9 {
                    continue;
                }
                let version = decode_u64(&key[stream.len() + 1..]).unwrap_or(0);
                let position =
                    decode_u64(&value).ok_or_else(|| corrupt(0, format!("stream {stream:?} index entry for version {version} is not a u64")))?;
                if version != expected {
                    return Err(corrupt(position, format!("stream {stream:?} has a gap: expected version {expected}, found {version}")));
                }
                block.push(position);
                if (version + 1) % STREAM_BLOCK == 0 {
                    batch.insert(index_key(&stream, version / STREAM_BLOCK), encode_block(&block));
                    block.clear();
                }
                expected += 1;
            }
            if !block.is_empty() {
                batch.insert(index_key(&stream, (expected - 1) / STREAM_BLOCK), encode_block(&block));
            }
            self.stream_postings.apply_batch(batch).map_err(storage("writing the stream postings"))?;
        }
        self.db.flush().map_err(storage("flushing the stream postings"))?;
        self.stream_index.clear().map_err(storage("emptying the rewritten stream index"))?;
        self.db.flush().map_err(storage("flushing the emptied stream index"))?;
        Ok(())
    }

    /// The log file read frame by frame: every frame whole with its checksum, every entry in it
    /// readable, as many events as the log should hold up to `last`, and nothing past the end of
    /// the frames sled reflects.
    fn verify_log(&self, last: u64) -> Result<(), StoreError> {
        let len = self.log.len().map_err(|e| StoreError::io("reading the event log's length", e))?;
        let log_end = self.log_end()?;
        let mut cursor = log::Cursor::new(self.log.clone(), 0, len, SEQUENTIAL_READ);
        let mut position = self.log_first - 1;
        loop {
            match cursor.next_frame() {
                Ok(None) => break,
                Ok(Some((offset, body))) => {
                    let entries = log::body_entries(&body)
                        .map_err(|detail| corrupt(position + 1, format!("the event log's frame at byte {offset}: {detail}")))?;
                    for entry in entries {
                        if let log::Entry::Command { id, record } = entry {
                            decode_command(id, record)?;
                        } else {
                            position += 1;
                        }
                    }
                }
                Err(e) => return Err(log_damage(position + 1, e)),
            }
        }
        if position != last.max(self.log_first - 1) {
            return Err(corrupt(
                last.min(position) + 1,
                format!("the event log's frames hold events up to position {position}, the log ends at {last}"),
            ));
        }
        if log_end != len {
            return Err(corrupt(last, format!("the event log is {len} bytes, its indexed frames end at byte {log_end}")));
        }
        Ok(())
    }
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

    fn read_at(&self, position: u64) -> Result<Option<Envelope>, StoreError> {
        self.sound()?.read_at(position)
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

    fn tag_counts_between(&self, from: &str, to: &str) -> Result<Vec<(String, u64)>, StoreError> {
        self.sound()?.tag_counts_between(from, to)
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
