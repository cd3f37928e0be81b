//! The output document (`scenario-format.md`) written as a stream, in memory bounded by what is
//! live rather than by history: the log is folded once with history-free projections, and
//! each flow-bill line is formatted as it is met and put in the contract's order (start, then
//! resource, then log position) by a small reordering buffer that spills to a temporary file.
//! The bytes are exactly those of `serde_json::to_string_pretty(&projections.document())`,
//! followed by a newline.
//!
//! Why a buffer is enough: a line is recorded at most about an hour after its start (a cycle is
//! settled at its end, R4), so a line whose start is more than an hour before the log's clock
//! can go out. Lines that start later than they are recorded (a renewal paid ahead, R3) wait
//! in the buffer until the clock reaches them — a few per live subscription. A line that starts
//! before lines already written (a renewal after expiry counts from the old end, R3) is rare;
//! it is kept aside and merged in at the end.

use crate::jsonl::{fold_log_prepared, LogError, LogFoldError};
use chrono::Duration;
use poolbill_domain::{BillLine, Event, Instant};
use poolbill_ledger::{FoldError, Recorded, Upto};
use poolbill_projections::{
    account_views, event_of, resource_views_by_id, BillJson, DetailBills, DetailView, ProjectionError, Projections, RejectionRecord, RejectionView,
};
use poolbill_store::{Envelope, StoreError};
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};

/// Why a document could not be written.
#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    #[error(transparent)]
    Fold(#[from] FoldError),
    #[error("writing the document")]
    Io(#[from] io::Error),
}

/// What a written document held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Written {
    pub events: u64,
    pub bills: u64,
    pub rejections: u64,
    /// Lines that came after lines sorting after them had been written out, merged in at the end.
    pub late: u64,
}

/// Fold `envelopes` as of `upto` and write the document to `out`, reporting each position
/// folded. Nothing is written to `out` unless the whole fold succeeded. The envelopes are read
/// and decoded on a thread of their own, which also formats half of the bill lines
/// (`pipeline`), while this one folds.
pub fn write_document<I>(envelopes: I, upto: Upto, out: &mut impl Write, mut progress: impl FnMut(u64)) -> Result<Written, DocumentError>
where
    I: IntoIterator<Item = Result<Envelope, StoreError>>,
    I::IntoIter: Send,
{
    let envelopes = envelopes.into_iter();
    let read = move |push: &mut dyn FnMut(Recorded, Event) -> bool| {
        for envelope in envelopes {
            let envelope = envelope?;
            let event = event_of(&envelope).map_err(|source| ProjectionError { position: envelope.position, source })?;
            if !push(Recorded::of(&envelope), event) {
                break;
            }
        }
        Ok::<(), FoldError>(())
    };
    let mut writer = DocumentWriter::new()?;
    let projections = crate::pipeline::fold_pipelined(upto, read, DocumentWriter::prepare, |p, recorded, event, prepared| {
        progress(recorded.position);
        writer.visit_prepared(p, recorded, event, prepared);
    })?;
    writer.finish(&projections, out)
}

/// The document being gathered during a fold: bill lines put in order, refusals on a temporary
/// file, monthly detail rows summed. `visit` each folded event, then `finish`.
pub struct DocumentWriter {
    bills: BillOrder,
    rejections: Spill,
    details: DetailBills,
    failed: Option<io::Error>,
}

impl DocumentWriter {
    pub fn new() -> io::Result<DocumentWriter> {
        Ok(DocumentWriter { bills: BillOrder::new()?, rejections: Spill::new()?, details: DetailBills::default(), failed: None })
    }

    /// One event, just folded into `p`, recorded as `e` says.
    pub fn visit(&mut self, p: &Projections, e: &Recorded, event: &Event) {
        self.visit_prepared(p, e, event, &[]);
    }

    /// What can be made of an event before it is folded, on another thread if need be: a flow-bill
    /// line's text in the document.
    pub fn prepare(e: &Recorded, event: &Event, out: &mut Vec<u8>) {
        if let Event::Charged { line } = event {
            // Writing to memory does not fail; if it did, the line is formatted when visited.
            let start = out.len();
            if pretty_into(out, &BillJson::line(e.position, line), 4).is_err() {
                out.truncate(start);
            }
        }
    }

    /// [`DocumentWriter::visit`] with what [`DocumentWriter::prepare`] made of the event (or
    /// nothing).
    pub fn visit_prepared(&mut self, p: &Projections, e: &Recorded, event: &Event, prepared: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        let result = match event {
            Event::Charged { line } => {
                self.details.add(line);
                let clock = p.last_instant.unwrap_or(e.at);
                self.bills.push(e.position, line, clock, prepared)
            }
            Event::CommandRejected { command, rule, reason, index } => {
                let record =
                    RejectionRecord { position: e.position, at: e.at, index: *index, command: command.clone(), rule: *rule, reason: reason.clone() };
                pretty(&RejectionView::of(&record), 4).and_then(|text| self.rejections.push(&text))
            }
            _ => Ok(()),
        };
        self.failed = result.err();
    }

    /// Write the document of the fold that ended in `projections`.
    pub fn finish(self, projections: &Projections, out: &mut impl Write) -> Result<Written, DocumentError> {
        if let Some(e) = self.failed {
            return Err(e.into());
        }
        let (bills, rejections) = (self.bills, self.rejections);
        let counts = Written { events: projections.events, bills: bills.count, rejections: rejections.count, late: bills.late.len() as u64 };
        let mut w = BufWriter::with_capacity(SPILL_BUFFER, out);
        w.write_all(b"{\n  \"bills\": ")?;
        bills.finish(&mut w)?;
        // Resources and detail rows grow with the resources a log has seen: written one at a
        // time, never held as one text.
        w.write_all(b",\n  \"resources\": ")?;
        pretty_seq(&mut w, resource_views_by_id(&projections.state), 2)?;
        write!(w, ",\n  \"accounts\": {}", pretty(&account_views(&projections.state), 2)?.trim_start())?;
        w.write_all(b",\n  \"rejections\": ")?;
        rejections.finish(&mut w)?;
        write!(w, ",\n  \"events\": {}", projections.events)?;
        w.write_all(b",\n  \"detail_bills\": ")?;
        pretty_seq(&mut w, self.details.into_rows().into_iter().map(DetailView::of), 2)?;
        w.write_all(b"\n}\n")?;
        w.flush()?;
        Ok(counts)
    }
}

/// Why the document of a portable log could not be written.
#[derive(Debug, thiserror::Error)]
pub enum LogDocumentError {
    /// The log is not sound (named by line); nothing was written.
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Document(#[from] DocumentError),
}

impl From<LogFoldError> for LogDocumentError {
    fn from(e: LogFoldError) -> Self {
        match e {
            LogFoldError::Log(e) => LogDocumentError::Log(e),
            LogFoldError::Fold(e) => LogDocumentError::Document(e.into()),
        }
    }
}

/// [`write_document`] for a portable log read as it is folded ([`fold_log_prepared`]: each line
/// checked, and the rest past `upto` too; each bill line's text made on the reader's thread),
/// written only once the whole log is found sound: the fold has read and checked all of it
/// before the first byte of the document is written. Memory holds what is live, never the log.
pub fn write_log_document(reader: impl BufRead + Send, upto: Upto, out: &mut impl Write) -> Result<Written, LogDocumentError> {
    let mut writer = DocumentWriter::new().map_err(DocumentError::from)?;
    let projections = fold_log_prepared(reader, upto, DocumentWriter::prepare, |p, e, event, prepared| writer.visit_prepared(p, e, event, prepared))?;
    Ok(writer.finish(&projections, out)?)
}

/// `value` as pretty JSON, every line indented by `indent` spaces (its place in the document).
fn pretty(value: &impl serde::Serialize, indent: usize) -> io::Result<String> {
    let mut out = Vec::new();
    pretty_into(&mut out, value, indent)?;
    String::from_utf8(out).map_err(io::Error::other)
}

/// The items as the pretty JSON array [`pretty`] makes of them, but for its first line's
/// indent (the array's place in the document is after its key), written as they come.
fn pretty_seq<T: serde::Serialize>(out: &mut impl Write, items: impl Iterator<Item = T>, indent: usize) -> io::Result<()> {
    let mut serializer = serde_json::Serializer::with_formatter(out, Indented { base: indent, depth: 0, has_value: false });
    serde::Serializer::collect_seq(&mut serializer, items).map_err(io::Error::other)
}

/// [`pretty`], appended to `out`.
pub(crate) fn pretty_into(out: &mut Vec<u8>, value: &impl serde::Serialize, indent: usize) -> io::Result<()> {
    out.resize(out.len() + indent, b' ');
    let mut serializer = serde_json::Serializer::with_formatter(out, Indented { base: indent, depth: 0, has_value: false });
    value.serialize(&mut serializer).map_err(io::Error::other)
}

/// `serde_json`'s pretty formatter (two spaces a level) with every line after the first
/// indented by `base` spaces more: the bytes of `to_vec_pretty` with `base` spaces after each
/// newline (a newline is only ever the formatter's: strings escape theirs).
struct Indented {
    base: usize,
    depth: usize,
    has_value: bool,
}

impl Indented {
    fn newline<W: ?Sized + Write>(&self, w: &mut W, depth: usize) -> io::Result<()> {
        const SPACES: &[u8; 64] = &[b' '; 64];
        w.write_all(b"\n")?;
        let mut n = self.base + 2 * depth;
        while n > 0 {
            let part = n.min(SPACES.len());
            w.write_all(&SPACES[..part])?;
            n -= part;
        }
        Ok(())
    }
}

impl serde_json::ser::Formatter for Indented {
    fn begin_array<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.depth += 1;
        self.has_value = false;
        w.write_all(b"[")
    }

    fn end_array<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.depth -= 1;
        if self.has_value {
            self.newline(w, self.depth)?;
        }
        w.write_all(b"]")
    }

    fn begin_array_value<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        if !first {
            w.write_all(b",")?;
        }
        self.newline(w, self.depth)
    }

    fn end_array_value<W: ?Sized + Write>(&mut self, _: &mut W) -> io::Result<()> {
        self.has_value = true;
        Ok(())
    }

    fn begin_object<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.depth += 1;
        self.has_value = false;
        w.write_all(b"{")
    }

    fn end_object<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.depth -= 1;
        if self.has_value {
            self.newline(w, self.depth)?;
        }
        w.write_all(b"}")
    }

    fn begin_object_key<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        if !first {
            w.write_all(b",")?;
        }
        self.newline(w, self.depth)
    }

    fn begin_object_value<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b": ")
    }

    fn end_object_value<W: ?Sized + Write>(&mut self, _: &mut W) -> io::Result<()> {
        self.has_value = true;
        Ok(())
    }
}

/// Array elements written to a temporary file as they come, then copied out as a JSON array.
struct Spill {
    file: BufWriter<File>,
    count: u64,
}

impl Spill {
    fn new() -> io::Result<Spill> {
        Ok(Spill { file: BufWriter::new(tempfile::tempfile()?), count: 0 })
    }

    /// One element, already formatted at its depth.
    fn push(&mut self, text: &str) -> io::Result<()> {
        if self.count > 0 {
            self.file.write_all(b",")?;
        }
        self.file.write_all(b"\n")?;
        self.file.write_all(text.as_bytes())?;
        self.count += 1;
        Ok(())
    }

    fn finish(self, out: &mut impl Write) -> io::Result<()> {
        if self.count == 0 {
            return out.write_all(b"[]");
        }
        let mut file = self.file.into_inner().map_err(|e| e.into_error())?;
        file.seek(SeekFrom::Start(0))?;
        out.write_all(b"[")?;
        io::copy(&mut BufReader::new(file), out)?;
        out.write_all(b"\n  ]")
    }
}

/// The buffer of the spill file of bill lines, writing and reading.
const SPILL_BUFFER: usize = 1 << 16;

/// A line's place in the contract's order, with its formatted text.
struct Pending {
    start: Instant,
    resource: String,
    position: u64,
    text: Vec<u8>,
}

impl Pending {
    fn key(&self) -> (Instant, &str, u64) {
        (self.start, &self.resource, self.position)
    }
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pending {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key().cmp(&other.key())
    }
}

/// Flow-bill lines put in the contract's order: a buffer of lines that may still be overtaken,
/// lines already in order on a temporary file, and the rare lines that came too late for it.
struct BillOrder {
    waiting: BinaryHeap<Reverse<Pending>>,
    spilled: BufWriter<File>,
    /// The key of the last line spilled: later lines sorting before it are late.
    last: Option<(Instant, String, u64)>,
    late: Vec<Pending>,
    count: u64,
}

impl BillOrder {
    fn new() -> io::Result<BillOrder> {
        Ok(BillOrder {
            waiting: BinaryHeap::new(),
            spilled: BufWriter::with_capacity(SPILL_BUFFER, tempfile::tempfile()?),
            last: None,
            late: Vec::new(),
            count: 0,
        })
    }

    /// Take a line recorded when the log's clock was at `clock`, its text in the document
    /// `prepared` already (or not yet: empty).
    fn push(&mut self, position: u64, line: &BillLine, clock: Instant, prepared: &[u8]) -> io::Result<()> {
        let text = if prepared.is_empty() {
            let mut text = Vec::with_capacity(512);
            pretty_into(&mut text, &BillJson::line(position, line), 4)?;
            text
        } else {
            prepared.to_vec()
        };
        let pending = Pending { start: line.start, resource: line.resource.clone(), position, text };
        self.count += 1;
        let overtaken = self.last.as_ref().is_some_and(|(s, r, p)| pending.key() < (*s, r.as_str(), *p));
        if overtaken {
            self.late.push(pending);
            return Ok(());
        }
        self.waiting.push(Reverse(pending));
        // Lines that start an hour or more before the clock can no longer be overtaken.
        let horizon = clock - Duration::hours(1);
        while self.waiting.peek().is_some_and(|Reverse(p)| p.start < horizon) {
            let Reverse(p) = self.waiting.pop().expect("peeked");
            write_record(&mut self.spilled, &p)?;
            self.last = Some((p.start, p.resource, p.position));
        }
        Ok(())
    }

    /// Write the lines as a JSON array: the spilled ones merged with the late ones, then those
    /// still waiting (which sort after everything spilled).
    fn finish(self, out: &mut impl Write) -> io::Result<()> {
        if self.count == 0 {
            return out.write_all(b"[]");
        }
        let mut late = self.late;
        late.sort();
        let mut late = late.into_iter().peekable();
        let mut waiting = self.waiting.into_sorted_vec();
        waiting.reverse(); // Reverse<_> sorts descending: the smallest key first now.
        let mut file = self.spilled.into_inner().map_err(|e| e.into_error())?;
        file.seek(SeekFrom::Start(0))?;
        let mut spilled = BufReader::with_capacity(SPILL_BUFFER, file);
        let mut first = true;
        let mut emit = |p: &Pending, out: &mut dyn Write| -> io::Result<()> {
            out.write_all(if first { b"[\n" } else { b",\n" })?;
            first = false;
            out.write_all(&p.text)
        };
        // One line at a time read back into the same buffers.
        let mut p = Pending { start: chrono::DateTime::UNIX_EPOCH.fixed_offset(), resource: String::new(), position: 0, text: Vec::new() };
        while read_record(&mut spilled, &mut p)? {
            while late.peek().is_some_and(|l| l < &p) {
                emit(&late.next().expect("peeked"), out)?;
            }
            emit(&p, out)?;
        }
        for Reverse(p) in waiting {
            while late.peek().is_some_and(|l| l < &p) {
                emit(&late.next().expect("peeked"), out)?;
            }
            emit(&p, out)?;
        }
        for p in late {
            emit(&p, out)?;
        }
        out.write_all(b"\n  ]")
    }
}

fn write_record(w: &mut impl Write, p: &Pending) -> io::Result<()> {
    w.write_all(&p.start.timestamp().to_le_bytes())?;
    w.write_all(&p.start.timestamp_subsec_nanos().to_le_bytes())?;
    w.write_all(&p.start.offset().local_minus_utc().to_le_bytes())?;
    w.write_all(&p.position.to_le_bytes())?;
    for text in [p.resource.as_bytes(), &p.text] {
        w.write_all(&(text.len() as u64).to_le_bytes())?;
        w.write_all(text)?;
    }
    Ok(())
}

/// The next record written by [`write_record`], into `p`; false at the end of the file.
fn read_record(r: &mut impl Read, p: &mut Pending) -> io::Result<bool> {
    let mut secs = [0u8; 8];
    match r.read_exact(&mut secs) {
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
        other => other?,
    }
    let mut four = [0u8; 4];
    r.read_exact(&mut four)?;
    let nanos = u32::from_le_bytes(four);
    r.read_exact(&mut four)?;
    let offset = chrono::FixedOffset::east_opt(i32::from_le_bytes(four)).ok_or_else(|| io::Error::other("a bad offset in the spill file"))?;
    let mut eight = [0u8; 8];
    r.read_exact(&mut eight)?;
    p.position = u64::from_le_bytes(eight);
    let mut text = |bytes: &mut Vec<u8>| -> io::Result<()> {
        r.read_exact(&mut eight)?;
        bytes.clear();
        bytes.resize(u64::from_le_bytes(eight) as usize, 0);
        r.read_exact(bytes)
    };
    let mut resource = std::mem::take(&mut p.resource).into_bytes();
    text(&mut resource)?;
    p.resource = String::from_utf8(resource).map_err(io::Error::other)?;
    text(&mut p.text)?;
    p.start = chrono::DateTime::from_timestamp(i64::from_le_bytes(secs), nanos)
        .ok_or_else(|| io::Error::other("a bad instant in the spill file"))?
        .with_timezone(&offset);
    Ok(true)
}
