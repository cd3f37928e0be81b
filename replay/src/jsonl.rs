//! The portable log: one envelope per line, in global order, each with a CRC-32 of its own
//! canonical JSON so that a torn or edited line is caught and named, never silently used; and
//! an end line (`{"end": {"events": N, "last_checksum": …}}`), so that a log that lost its last
//! lines is caught too.

use poolbill_domain::{DecodeError, Event};
use poolbill_ledger::{fold_from, FoldError, Upto};
use poolbill_projections::{event_of, portable, Projections};
use poolbill_store::{Envelope, EventStore, StoreError};
use std::collections::HashMap;
use std::io::{BufRead, Write};

/// What is wrong with a log, and on which line (1-based; 0 when it is not about a line).
#[derive(Debug, thiserror::Error)]
#[error("{}{message}", if *line == 0 { String::new() } else { format!("line {line}: ") })]
pub struct LogError {
    pub line: u64,
    pub message: String,
    /// The error underneath (I/O, JSON, the store, an event's payload), when there is one.
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl LogError {
    fn new(line: u64, message: impl Into<String>) -> LogError {
        LogError { line, message: message.into(), source: None }
    }

    fn caused_by(line: u64, message: impl Into<String>, source: impl std::error::Error + Send + Sync + 'static) -> LogError {
        LogError { line, message: message.into(), source: Some(Box::new(source)) }
    }
}

/// The checksum of an envelope in its portable form (JSON payload).
fn checksum(envelope: &Envelope) -> String {
    let canonical = serde_json::to_string(envelope).expect("portable envelopes serialise");
    format!("{:08x}", crc32fast::hash(canonical.as_bytes()))
}

/// One line of the log: the envelope's fields, its payload as JSON, and its checksum.
pub fn to_line(envelope: &Envelope) -> Result<String, DecodeError> {
    let envelope = portable(envelope)?;
    let mut value = serde_json::to_value(&*envelope).expect("portable envelopes serialise");
    value["checksum"] = serde_json::Value::String(checksum(&envelope));
    Ok(value.to_string())
}

/// The end line after `count` envelopes, the last of which is `last`.
pub fn end_line(count: u64, last: Option<&Envelope>) -> Result<String, DecodeError> {
    let mut end = serde_json::json!({"events": count});
    if let Some(last) = last {
        end["last_checksum"] = serde_json::Value::String(checksum(&*portable(last)?));
    }
    Ok(serde_json::json!({ "end": end }).to_string())
}

/// A whole log as text: its lines and its end line.
pub fn to_text(envelopes: &[Envelope]) -> Result<String, DecodeError> {
    let mut text = String::new();
    for envelope in envelopes {
        text.push_str(&to_line(envelope)?);
        text.push('\n');
    }
    text.push_str(&end_line(envelopes.len() as u64, envelopes.last())?);
    text.push('\n');
    Ok(text)
}

/// Write a store's whole log; returns how many envelopes.
pub fn export(store: &dyn EventStore, out: &mut impl Write) -> Result<u64, LogError> {
    export_with(store, out, |_| {})
}

/// [`export`], calling `progress` with each envelope's position once it is written.
pub fn export_with(store: &dyn EventStore, out: &mut impl Write, mut progress: impl FnMut(u64)) -> Result<u64, LogError> {
    let mut count = 0;
    let mut last = None;
    for envelope in store.read_all(1) {
        let envelope = envelope.map_err(|e| LogError::caused_by(0, "reading the store", e))?;
        let unreadable = |e| LogError::caused_by(0, format!("the store's event at position {} cannot be read", envelope.position), e);
        let line = to_line(&envelope).map_err(unreadable)?;
        writeln!(out, "{line}").map_err(|e| LogError::caused_by(count + 1, "writing", e))?;
        count += 1;
        progress(envelope.position);
        last = Some(portable(&envelope).map_err(unreadable)?.into_owned());
    }
    let end = end_line(count, last.as_ref()).map_err(|e| LogError::caused_by(0, "the store's last event cannot be read", e))?;
    writeln!(out, "{end}").map_err(|e| LogError::caused_by(count + 1, "writing", e))?;
    Ok(count)
}

/// Read a whole log, checking every line before anything is used: well-formed, its checksum,
/// a known event type and schema version, positions 1, 2, 3 … in order, per-stream versions
/// without gaps, instants that never go back.
pub fn import(reader: impl BufRead) -> Result<Vec<Envelope>, LogError> {
    LogReader::new(reader).collect()
}

/// A log read line by line, each line checked as it is read (as [`import`] checks them), the
/// end line last: for folding a long log without holding it. Whoever folds it must show
/// nothing until the reader has ended without an error (`document::write_document` does so).
pub struct LogReader<R> {
    lines: std::io::Lines<R>,
    number: u64,
    versions: HashMap<String, u64>,
    count: u64,
    last: Option<(poolbill_domain::Instant, String)>,
    ended: bool,
    failed: bool,
}

impl<R: BufRead> LogReader<R> {
    pub fn new(reader: R) -> LogReader<R> {
        LogReader { lines: reader.lines(), number: 0, versions: HashMap::new(), count: 0, last: None, ended: false, failed: false }
    }

    /// The next envelope, or what is wrong with the line (or with the log's end).
    fn next_envelope(&mut self) -> Option<Result<Envelope, LogError>> {
        loop {
            let Some(line) = self.lines.next() else {
                if self.ended {
                    return None;
                }
                let after = self.last.as_ref().map_or("before its first event".to_string(), |_| format!("after position {}", self.count));
                return Some(Err(LogError::new(self.number + 1, format!("the log has no end line: it was cut short {after}"))));
            };
            self.number += 1;
            let number = self.number;
            let fail = |message: String| Some(Err(LogError::new(number, message)));
            let line = match line {
                Ok(line) => line,
                Err(e) => return Some(Err(LogError::caused_by(number, "cannot read", e))),
            };
            if line.trim().is_empty() {
                continue;
            }
            if self.ended {
                return fail("a line after the end line".into());
            }
            let mut value: serde_json::Value = match serde_json::from_str(&line) {
                Ok(v) => v,
                Err(e) => return Some(Err(LogError::caused_by(number, "not valid JSON", e))),
            };
            if let Some(end) = value.get("end") {
                if let Err(message) = check_end(end, self.count, self.last.as_ref().map(|(_, c)| c.as_str())) {
                    return fail(message);
                }
                self.ended = true;
                continue;
            }
            let stated = match value.as_object_mut().and_then(|o| o.remove("checksum")) {
                Some(serde_json::Value::String(s)) => s,
                _ => return fail("no checksum".into()),
            };
            let envelope: Envelope = match serde_json::from_value(value) {
                Ok(e) => e,
                Err(e) => return Some(Err(LogError::caused_by(number, "not an event envelope", e))),
            };
            let at = format!("(position {})", envelope.position);
            let sum = checksum(&envelope);
            if sum != stated {
                return fail(format!("{at} checksum mismatch: the line was changed or torn"));
            }
            let expected_position = self.count + 1;
            if envelope.position != expected_position {
                return fail(format!("{at} expected position {expected_position}: a line is missing or out of order"));
            }
            let version = self.versions.entry(envelope.stream.clone()).or_insert(0);
            if envelope.version != *version + 1 {
                return fail(format!("{at} stream {:?} jumps from version {} to {}", envelope.stream, version, envelope.version));
            }
            *version += 1;
            if let Some((last, _)) = &self.last {
                if envelope.at < *last {
                    return fail(format!("{at} instant {} is before the previous line's {}", envelope.at.to_rfc3339(), last.to_rfc3339()));
                }
            }
            if let Err(e) = event_of(&envelope) {
                return Some(Err(LogError::caused_by(number, format!("{at} cannot be read"), e)));
            }
            self.count += 1;
            self.last = Some((envelope.at, sum));
            return Some(Ok(envelope));
        }
    }
}

impl<R: BufRead> Iterator for LogReader<R> {
    type Item = Result<Envelope, LogError>;

    /// Ends after the first error: nothing after a damaged line is read.
    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let next = self.next_envelope();
        self.failed = matches!(next, Some(Err(_)));
        next
    }
}

/// Why a portable log could not be folded as it was read.
#[derive(Debug, thiserror::Error)]
pub enum LogFoldError {
    /// The log is not sound (named by line).
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Fold(#[from] FoldError),
}

/// Fold a portable log as it is read, each line checked ([`LogReader`]), with history-free
/// projections (`visit` sees each event, to keep what it needs); past `upto` the rest of the
/// log is still read and checked, so that a log that is not sound whole is an error, never half
/// an answer.
pub fn fold_log(reader: impl BufRead, upto: Upto, visit: impl FnMut(&Projections, &Envelope, Event)) -> Result<Projections, LogFoldError> {
    let mut lines = LogReader::new(reader);
    let mut damage: Option<LogError> = None;
    let envelopes = lines.by_ref().map_while(|read| match read {
        Ok(envelope) => Some(Ok::<_, StoreError>(envelope)),
        Err(e) => {
            damage = Some(e);
            None
        }
    });
    let folded = fold_from(Projections::live(), envelopes, upto, visit);
    if let Some(e) = damage {
        return Err(e.into());
    }
    let projections = folded?;
    if let Some(Err(e)) = lines.find(Result::is_err) {
        return Err(e.into());
    }
    Ok(projections)
}

/// The end line agrees with what came before it: the count, and the last envelope's checksum.
fn check_end(end: &serde_json::Value, count: u64, last_checksum: Option<&str>) -> Result<(), String> {
    let stated_count = end.get("events").and_then(|c| c.as_u64()).ok_or("an end line without its count of events")?;
    if stated_count != count {
        return Err(format!("the end line counts {stated_count} events but {count} came before it: lines are missing"));
    }
    let stated = end.get("last_checksum").and_then(|c| c.as_str());
    if stated != last_checksum {
        return Err("the end line's checksum is not the last event's: the log was changed".into());
    }
    Ok(())
}

/// Read a log file.
pub fn read_file(path: &std::path::Path) -> Result<Vec<Envelope>, LogError> {
    let file = std::fs::File::open(path).map_err(|e| LogError::caused_by(0, format!("cannot open {}", path.display()), e))?;
    import(std::io::BufReader::new(file))
}

/// Envelopes as a fold input.
pub fn as_results(envelopes: &[Envelope]) -> impl Iterator<Item = Result<Envelope, StoreError>> + '_ {
    envelopes.iter().cloned().map(Ok)
}
