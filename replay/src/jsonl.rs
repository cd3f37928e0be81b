//! The portable log: one envelope per line, in global order, each with a CRC-32 of its own
//! canonical JSON so that a torn or edited line is caught and named, never silently used; and
//! an end line (`{"end": {"events": N, "last_checksum": …}}`), so that a log that lost its last
//! lines is caught too.

use poolbill_domain::Event;
use poolbill_store::{Envelope, Store, StoreError};
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

fn checksum(envelope: &Envelope) -> String {
    let canonical = serde_json::to_string(envelope).expect("envelopes serialise");
    format!("{:08x}", crc32fast::hash(canonical.as_bytes()))
}

/// One line of the log: the envelope's fields and its checksum.
pub fn to_line(envelope: &Envelope) -> String {
    let mut value = serde_json::to_value(envelope).expect("envelopes serialise");
    value["checksum"] = serde_json::Value::String(checksum(envelope));
    value.to_string()
}

/// The end line after `count` envelopes, the last of which is `last`.
pub fn end_line(count: u64, last: Option<&Envelope>) -> String {
    let mut end = serde_json::json!({"events": count});
    if let Some(last) = last {
        end["last_checksum"] = serde_json::Value::String(checksum(last));
    }
    serde_json::json!({ "end": end }).to_string()
}

/// A whole log as text: its lines and its end line.
pub fn to_text(envelopes: &[Envelope]) -> String {
    let mut text: String = envelopes.iter().map(|e| to_line(e) + "\n").collect();
    text.push_str(&end_line(envelopes.len() as u64, envelopes.last()));
    text.push('\n');
    text
}

/// Write a store's whole log; returns how many envelopes.
pub fn export(store: &Store, out: &mut impl Write) -> Result<u64, LogError> {
    export_with(store, out, |_| {})
}

/// [`export`], calling `progress` with each envelope's position once it is written.
pub fn export_with(store: &Store, out: &mut impl Write, mut progress: impl FnMut(u64)) -> Result<u64, LogError> {
    let mut count = 0;
    let mut last = None;
    for envelope in store.read_all(1) {
        let envelope = envelope.map_err(|e| LogError::caused_by(0, "reading the store", e))?;
        writeln!(out, "{}", to_line(&envelope)).map_err(|e| LogError::caused_by(count + 1, "writing", e))?;
        count += 1;
        progress(envelope.position);
        last = Some(envelope);
    }
    writeln!(out, "{}", end_line(count, last.as_ref())).map_err(|e| LogError::caused_by(count + 1, "writing", e))?;
    Ok(count)
}

/// Read a whole log, checking every line before anything is used: well-formed, its checksum,
/// a known event type and schema version, positions 1, 2, 3 … in order, per-stream versions
/// without gaps, instants that never go back.
pub fn import(reader: impl BufRead) -> Result<Vec<Envelope>, LogError> {
    let mut envelopes = Vec::new();
    let mut versions: HashMap<String, u64> = HashMap::new();
    let mut ended = false;
    let mut lines = 0;
    for (i, line) in reader.lines().enumerate() {
        let number = i as u64 + 1;
        lines = number;
        let fail = |message: String| LogError::new(number, message);
        let line = line.map_err(|e| LogError::caused_by(number, "cannot read", e))?;
        if line.trim().is_empty() {
            continue;
        }
        if ended {
            return Err(fail("a line after the end line".into()));
        }
        let mut value: serde_json::Value = serde_json::from_str(&line).map_err(|e| LogError::caused_by(number, "not valid JSON", e))?;
        if let Some(end) = value.get("end") {
            check_end(end, &envelopes).map_err(fail)?;
            ended = true;
            continue;
        }
        let stated = match value.as_object_mut().and_then(|o| o.remove("checksum")) {
            Some(serde_json::Value::String(s)) => s,
            _ => return Err(fail("no checksum".into())),
        };
        let envelope: Envelope = serde_json::from_value(value).map_err(|e| LogError::caused_by(number, "not an event envelope", e))?;
        let at = format!("(position {})", envelope.position);
        if checksum(&envelope) != stated {
            return Err(fail(format!("{at} checksum mismatch: the line was changed or torn")));
        }
        let expected_position = envelopes.len() as u64 + 1;
        if envelope.position != expected_position {
            return Err(fail(format!("{at} expected position {expected_position}: a line is missing or out of order")));
        }
        let version = versions.entry(envelope.stream.clone()).or_insert(0);
        if envelope.version != *version + 1 {
            return Err(fail(format!("{at} stream {:?} jumps from version {} to {}", envelope.stream, version, envelope.version)));
        }
        *version += 1;
        if let Some(last) = envelopes.last().map(|e: &Envelope| e.at) {
            if envelope.at < last {
                return Err(fail(format!("{at} instant {} is before the previous line's {}", envelope.at.to_rfc3339(), last.to_rfc3339())));
            }
        }
        Event::decode(&envelope.event_type, envelope.schema_version, &envelope.payload)
            .map_err(|e| LogError::caused_by(number, format!("{at} cannot be read"), e))?;
        envelopes.push(envelope);
    }
    if !ended {
        let after = envelopes.last().map_or("before its first event".to_string(), |e| format!("after position {}", e.position));
        return Err(LogError::new(lines + 1, format!("the log has no end line: it was cut short {after}")));
    }
    Ok(envelopes)
}

/// The end line agrees with what came before it: the count, and the last envelope's checksum.
fn check_end(end: &serde_json::Value, envelopes: &[Envelope]) -> Result<(), String> {
    let count = end.get("events").and_then(|c| c.as_u64()).ok_or("an end line without its count of events")?;
    if count != envelopes.len() as u64 {
        return Err(format!("the end line counts {count} events but {} came before it: lines are missing", envelopes.len()));
    }
    let stated = end.get("last_checksum").and_then(|c| c.as_str());
    if stated != envelopes.last().map(checksum).as_deref() {
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
