//! The merged export: every shard's log as one portable log, which `poolbill replay` and
//! `audit` read as any other.
//!
//! Events are merged in instant order (ties: the shards' order in the map, then position), and
//! positions are numbered again from 1. Account streams live on one shard each and keep their
//! names; each shard's copy of a platform-wide stream is renamed `stream@shard` (`catalog@s1`),
//! so that every stream's versions stay gapless in the merged log. The merge streams: one event
//! per shard is held at a time.

use poolbill_replay::jsonl::{end_line, line_and_leaf};
use poolbill_store::{Envelope, EventStore, StoreError};
use std::io::Write;

/// The streams every shard keeps a copy of (`Event::stream` of the platform-wide events).
pub const PLATFORM_STREAMS: [&str; 4] = ["catalog", "policy", "commands", "rejections"];

/// Why a merged export failed, naming the shard when it is about one.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("reading shard {shard}: {source}")]
    Read {
        shard: String,
        #[source]
        source: StoreError,
    },
    #[error("shard {shard}'s event at position {position} cannot be written: {message}")]
    Encode { shard: String, position: u64, message: String },
    #[error("writing the merged log: {0}")]
    Write(#[from] std::io::Error),
}

/// `stream` as the merged log names it: a platform-wide stream gets its shard's suffix.
pub fn merged_stream(stream: &str, shard: &str) -> String {
    if PLATFORM_STREAMS.contains(&stream) {
        format!("{stream}@{shard}")
    } else {
        stream.to_string()
    }
}

/// One shard's log, read in position order, its next event held.
struct Cursor<'a> {
    shard: &'a str,
    events: Box<dyn Iterator<Item = Result<Envelope, StoreError>> + Send + 'a>,
    next: Option<Envelope>,
}

impl Cursor<'_> {
    fn advance(&mut self) -> Result<(), ExportError> {
        self.next = self.events.next().transpose().map_err(|source| ExportError::Read { shard: self.shard.to_string(), source })?;
        Ok(())
    }
}

/// The index of the cursor whose next event comes first: the earliest instant, ties to the
/// earlier shard of the map (each shard's own events are already in position order).
fn earliest(cursors: &[Cursor<'_>]) -> Option<usize> {
    cursors.iter().enumerate().filter_map(|(i, c)| c.next.as_ref().map(|e| (e.at, i))).min().map(|(_, i)| i)
}

/// Write the merged log of `shards` (id and store, in the map's order) to `out`: its lines and
/// its end line (count, last checksum, Merkle root). Returns how many events.
pub fn write_merged(shards: &[(&str, &dyn EventStore)], out: &mut impl Write) -> Result<u64, ExportError> {
    let mut cursors = Vec::with_capacity(shards.len());
    for (shard, store) in shards {
        let mut cursor = Cursor { shard, events: store.read_all(1), next: None };
        cursor.advance()?;
        cursors.push(cursor);
    }
    let mut tree = poolbill_merkle::Frontier::new();
    let mut count = 0u64;
    let mut last: Option<Envelope> = None;
    while let Some(i) = earliest(&cursors) {
        let cursor = &mut cursors[i];
        let original = cursor.next.take().expect("the earliest cursor holds an event");
        let shard = cursor.shard;
        let encode =
            |e: poolbill_domain::DecodeError| ExportError::Encode { shard: shard.to_string(), position: original.position, message: e.to_string() };
        count += 1;
        let envelope = Envelope { position: count, stream: merged_stream(&original.stream, shard), ..original.clone() };
        let envelope = poolbill_projections::portable(&envelope).map_err(encode)?.into_owned();
        let (line, leaf) = line_and_leaf(&envelope).map_err(encode)?;
        writeln!(out, "{line}")?;
        tree.push(leaf);
        last = Some(envelope);
        cursor.advance()?;
    }
    let end = end_line(count, last.as_ref(), &tree.root()).map_err(|e| ExportError::Encode {
        shard: "(merged)".into(),
        position: count,
        message: e.to_string(),
    })?;
    writeln!(out, "{end}")?;
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_platform_streams_are_renamed() {
        assert_eq!(merged_stream("catalog", "s1"), "catalog@s1");
        assert_eq!(merged_stream("rejections", "s2"), "rejections@s2");
        assert_eq!(merged_stream("account:acct-1", "s1"), "account:acct-1");
    }
}
