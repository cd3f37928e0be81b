//! The event log: an append-only file of frames beside sled's files (`events.log`).
//!
//! ```text
//! frame := 'F' body_len:u32 LE  crc32(body):u32 LE  body
//! body  := entry+
//! entry := 'E' len:u32 LE  value                          an event: its stored value (see `encode_event`)
//!        | 'C' id_len:u32 LE  id  record_len:u32 LE  record   a command's record (JSON)
//! ```
//!
//! A group commit is one frame, written and synced before sled hears of it: the file is what
//! was acknowledged, and sled's trees (stream versions and index, command records, the sparse
//! offsets of positions, meta) are derived from it. They may trail the file after a crash (sled
//! is not flushed before an acknowledgement), so opening a store rolls them forward from the
//! frames past the end they record; a frame cut short by the crash was never acknowledged and is
//! cut off. Positions are consecutive along the file, so an event's position is counted from
//! the nearest recorded offset before it; its value's checksum covers the position, so a
//! miscount cannot go unnoticed.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// The log's file in a store's directory.
pub const LOG_FILE: &str = "events.log";

const FRAME: u8 = b'F';
const EVENT: u8 = b'E';
const COMMAND: u8 = b'C';
/// A frame's header: its kind, its body's length and checksum.
pub const FRAME_HEADER: usize = 9;

/// The open log file. Reads are positional (`pread`), so readers share it with the one writer.
pub struct LogFile {
    file: File,
}

impl LogFile {
    /// Opens (or creates) the log in `dir`.
    pub fn open(dir: &Path) -> io::Result<LogFile> {
        let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(dir.join(LOG_FILE))?;
        Ok(LogFile { file })
    }

    /// A log that vanishes with its handle, for a temporary store.
    pub fn temporary() -> io::Result<LogFile> {
        Ok(LogFile { file: tempfile::tempfile()? })
    }

    pub fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    /// Writes a frame at `at` (the log's end) and waits until it is on disk.
    pub fn write_frame(&self, at: u64, frame: &[u8]) -> io::Result<()> {
        self.file.write_all_at(frame, at)?;
        self.file.sync_data()
    }

    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Cuts the file at `len` (a frame that was never acknowledged) and waits until that is on disk.
    pub fn truncate(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)?;
        self.file.sync_all()
    }

    pub fn read_at(&self, buf: &mut [u8], at: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, at)
    }
}

/// A group commit's frame as it is built: entries after a header filled in by [`Frame::finish`].
pub struct Frame {
    bytes: Vec<u8>,
}

impl Default for Frame {
    fn default() -> Frame {
        Frame { bytes: vec![0; FRAME_HEADER] }
    }
}

impl Frame {
    /// A frame whose entries will take about `bytes`.
    pub fn with_capacity(bytes: usize) -> Frame {
        let mut frame = Vec::with_capacity(FRAME_HEADER + bytes);
        frame.resize(FRAME_HEADER, 0);
        Frame { bytes: frame }
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.len() == FRAME_HEADER
    }

    /// Adds an event's stored value; returns the entry's offset within the frame.
    pub fn event(&mut self, value: &[u8]) -> u64 {
        let offset = self.bytes.len() as u64;
        self.bytes.push(EVENT);
        self.bytes.extend_from_slice(&len32(value.len()).to_le_bytes());
        self.bytes.extend_from_slice(value);
        offset
    }

    /// Adds a command's record; returns the record's offset within the frame.
    pub fn command(&mut self, id: &[u8], record: &[u8]) -> u64 {
        self.bytes.push(COMMAND);
        self.bytes.extend_from_slice(&len32(id.len()).to_le_bytes());
        self.bytes.extend_from_slice(id);
        self.bytes.extend_from_slice(&len32(record.len()).to_le_bytes());
        let offset = self.bytes.len() as u64;
        self.bytes.extend_from_slice(record);
        offset
    }

    /// The frame's bytes, header included.
    pub fn finish(mut self) -> Vec<u8> {
        let body_len = len32(self.bytes.len() - FRAME_HEADER);
        let crc = crc32fast::hash(&self.bytes[FRAME_HEADER..]);
        self.bytes[0] = FRAME;
        self.bytes[1..5].copy_from_slice(&body_len.to_le_bytes());
        self.bytes[5..9].copy_from_slice(&crc.to_le_bytes());
        self.bytes
    }
}

/// Entries are far below 4 GiB (an event is a few hundred bytes; a command id a few dozen).
fn len32(n: usize) -> u32 {
    u32::try_from(n).expect("a log entry under 4 GiB")
}

/// One entry of the log, borrowed from a reader's buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Entry<'a> {
    /// A frame's header: its body's length and checksum.
    Frame {
        len: u32,
        crc: u32,
    },
    Event(&'a [u8]),
    Command {
        id: &'a [u8],
        record: &'a [u8],
    },
}

/// How long the entry at the start of `b` is, if `b` holds enough of it to tell; else how many
/// bytes to look at next.
enum Needed {
    Total(usize),
    AtLeast(usize),
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("four bytes"))
}

fn entry_len(b: &[u8]) -> Result<Needed, String> {
    let Some(&kind) = b.first() else { return Ok(Needed::AtLeast(1)) };
    match kind {
        FRAME => Ok(Needed::Total(FRAME_HEADER)),
        EVENT if b.len() < 5 => Ok(Needed::AtLeast(5)),
        EVENT => Ok(Needed::Total(5 + u32_at(b, 1) as usize)),
        COMMAND if b.len() < 5 => Ok(Needed::AtLeast(5)),
        COMMAND => {
            let id = u32_at(b, 1) as usize;
            if b.len() < 9 + id {
                Ok(Needed::AtLeast(9 + id))
            } else {
                Ok(Needed::Total(9 + id + u32_at(b, 5 + id) as usize))
            }
        }
        other => Err(format!("an entry of unknown kind {other:#04x}")),
    }
}

/// The entry that `b` holds exactly (its length from [`entry_len`]).
fn entry_at(b: &[u8]) -> Entry<'_> {
    match b[0] {
        FRAME => Entry::Frame { len: u32_at(b, 1), crc: u32_at(b, 5) },
        EVENT => Entry::Event(&b[5..]),
        _ => {
            let id = u32_at(b, 1) as usize;
            Entry::Command { id: &b[5..5 + id], record: &b[9 + id..] }
        }
    }
}

/// The entries of a frame's body, which must hold whole entries and no frame header.
pub fn body_entries(body: &[u8]) -> Result<Vec<Entry<'_>>, String> {
    let mut entries = Vec::new();
    let mut at = 0;
    while at < body.len() {
        let len = match entry_len(&body[at..])? {
            Needed::Total(len) if at + len <= body.len() => len,
            _ => return Err(format!("an entry at body byte {at} runs past the frame's end")),
        };
        let entry = entry_at(&body[at..at + len]);
        if matches!(entry, Entry::Frame { .. }) {
            return Err(format!("a frame header inside a frame, at body byte {at}"));
        }
        entries.push(entry);
        at += len;
    }
    Ok(entries)
}

/// What a reader met where it expected an entry or a frame.
#[derive(Debug)]
pub enum ReadError {
    Io(io::Error),
    /// Bytes that are no entry, or an entry cut short by the end it may read to.
    Bad {
        offset: u64,
        detail: String,
    },
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> ReadError {
        ReadError::Io(e)
    }
}

/// A buffered reader of the log from a byte offset up to a limit (the end of what sled has
/// indexed when it began: never a frame still being written).
pub struct Cursor {
    log: std::sync::Arc<LogFile>,
    buf: Vec<u8>,
    /// The file offset of `buf[0]`.
    start: u64,
    /// What of `buf` has been consumed.
    at: usize,
    limit: u64,
    /// How much it asks of the file at a time: a little for one event, a lot for a scan.
    read_ahead: usize,
}

impl Cursor {
    pub fn new(log: std::sync::Arc<LogFile>, offset: u64, limit: u64, read_ahead: usize) -> Cursor {
        Cursor { log, buf: Vec::new(), start: offset, at: 0, limit, read_ahead }
    }

    /// The file offset of the next entry.
    pub fn offset(&self) -> u64 {
        self.start + self.at as u64
    }

    fn buffered(&self) -> usize {
        self.buf.len() - self.at
    }

    /// Makes `n` bytes available after the consumed ones, unless the limit comes first.
    fn ensure(&mut self, n: usize) -> io::Result<bool> {
        if self.buffered() >= n {
            return Ok(true);
        }
        let end = self.start + self.buf.len() as u64;
        let left = self.limit.saturating_sub(end);
        if (self.buffered() as u64) + left < n as u64 {
            return Ok(false);
        }
        self.buf.drain(..self.at);
        self.start += self.at as u64;
        self.at = 0;
        let more = (n - self.buf.len()).max(self.read_ahead).min(usize::try_from(left).unwrap_or(usize::MAX));
        let have = self.buf.len();
        self.buf.resize(have + more, 0);
        self.log.read_at(&mut self.buf[have..], end)?;
        Ok(true)
    }

    /// The next entry and its offset; `None` at the limit.
    pub fn next_entry(&mut self) -> Result<Option<(u64, Entry<'_>)>, ReadError> {
        let offset = self.offset();
        let mut need = 1;
        let len = loop {
            if !self.ensure(need)? {
                if need == 1 {
                    return Ok(None);
                }
                return Err(ReadError::Bad { offset, detail: format!("an entry of at least {need} bytes runs past the end of the log") });
            }
            match entry_len(&self.buf[self.at..]).map_err(|detail| ReadError::Bad { offset, detail })? {
                Needed::Total(len) if len <= self.buffered() => break len,
                Needed::Total(len) | Needed::AtLeast(len) => need = len,
            }
        };
        let at = self.at;
        self.at += len;
        Ok(Some((offset, entry_at(&self.buf[at..at + len]))))
    }

    /// The next frame's offset and body, its checksum checked; `None` at the limit. `Bad` for a
    /// frame cut short, a checksum that does not match, or anything but a frame header here.
    pub fn next_frame(&mut self) -> Result<Option<(u64, Vec<u8>)>, ReadError> {
        let (offset, len, crc) = match self.next_entry()? {
            None => return Ok(None),
            Some((offset, Entry::Frame { len, crc })) => (offset, len as usize, crc),
            Some((offset, _)) => return Err(ReadError::Bad { offset, detail: "an entry where a frame should begin".into() }),
        };
        if !self.ensure(len)? {
            return Err(ReadError::Bad { offset, detail: format!("a frame of {len} bytes runs past the end of the log") });
        }
        let body = self.buf[self.at..self.at + len].to_vec();
        self.at += len;
        let actual = crc32fast::hash(&body);
        if actual != crc {
            return Err(ReadError::Bad { offset, detail: format!("frame checksum mismatch: stored {crc:08x}, computed {actual:08x}") });
        }
        Ok(Some((offset, body)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const AHEAD: usize = 4096;

    fn log_with(frames: &[Vec<u8>]) -> (Arc<LogFile>, u64) {
        let log = LogFile::temporary().unwrap();
        let mut end = 0;
        for f in frames {
            log.write_frame(end, f).unwrap();
            end += f.len() as u64;
        }
        (Arc::new(log), end)
    }

    fn frame(events: &[&[u8]], command: Option<(&[u8], &[u8])>) -> Vec<u8> {
        let mut f = Frame::default();
        for e in events {
            f.event(e);
        }
        if let Some((id, record)) = command {
            f.command(id, record);
        }
        f.finish()
    }

    #[test]
    fn entries_read_back_in_order_across_frames() {
        let (log, end) = log_with(&[frame(&[b"one", b"two"], Some((b"c1", b"{}"))), frame(&[b"three"], None)]);
        let mut cursor = Cursor::new(log, 0, end, AHEAD);
        let mut seen = Vec::new();
        while let Some((_, entry)) = cursor.next_entry().unwrap() {
            seen.push(format!("{entry:?}"));
        }
        assert_eq!(seen.len(), 6, "{seen:?}");
        assert!(seen[1].contains("Event") && seen[3].starts_with("Command") && seen[4].starts_with("Frame"), "{seen:?}");
    }

    #[test]
    fn an_event_is_found_from_its_offset() {
        let mut f = Frame::default();
        f.event(b"first");
        let second = f.event(b"second");
        let (log, end) = log_with(&[f.finish()]);
        let mut cursor = Cursor::new(log, second, end, AHEAD);
        assert_eq!(cursor.next_entry().unwrap().map(|(o, e)| (o, format!("{e:?}"))), Some((second, format!("{:?}", Entry::Event(b"second")))));
    }

    #[test]
    fn frames_are_checked_and_a_cut_one_is_bad() {
        let frames = [frame(&[b"a"], Some((b"id", b"rec"))), frame(&[b"bb", b"cc"], None)];
        let (log, end) = log_with(&frames);
        let mut cursor = Cursor::new(log.clone(), 0, end, AHEAD);
        let (_, body) = cursor.next_frame().unwrap().unwrap();
        assert_eq!(body_entries(&body).unwrap(), vec![Entry::Event(b"a"), Entry::Command { id: b"id", record: b"rec" }]);
        assert_eq!(body_entries(&cursor.next_frame().unwrap().unwrap().1).unwrap().len(), 2);
        assert!(cursor.next_frame().unwrap().is_none());
        // Cut anywhere inside the second frame: the first reads, the second is bad.
        for cut in frames[0].len() as u64 + 1..end {
            let mut cursor = Cursor::new(log.clone(), 0, cut, AHEAD);
            assert!(cursor.next_frame().unwrap().is_some());
            assert!(matches!(cursor.next_frame(), Err(ReadError::Bad { .. })), "cut at {cut}");
        }
        // A flipped byte in a body fails its checksum.
        let mut damaged = frames[1].clone();
        damaged[12] ^= 4;
        let (log, end) = log_with(&[damaged]);
        assert!(matches!(Cursor::new(log, 0, end, AHEAD).next_frame(), Err(ReadError::Bad { .. })));
    }

    #[test]
    fn a_large_entry_grows_the_buffer() {
        let big = vec![7u8; AHEAD * 2 + 3];
        let (log, end) = log_with(&[frame(&[b"x", &big, b"y"], None)]);
        let mut cursor = Cursor::new(log, 0, end, AHEAD);
        let (_, body) = cursor.next_frame().unwrap().unwrap();
        assert_eq!(body_entries(&body).unwrap()[1], Entry::Event(&big));
    }

    #[test]
    fn unknown_bytes_are_bad_not_a_panic() {
        assert!(entry_len(b"Zxxxx").is_err());
        assert!(body_entries(b"E\x09\x00\x00\x00ab").is_err());
        assert!(body_entries(b"F\x00\x00\x00\x00\x00\x00\x00\x00").is_err());
    }
}
