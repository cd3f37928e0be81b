//! The binary event codec on real logs: every event of every seed fixture's log (as `poolbill
//! run` writes it today) comes back from its binary payload as the very JSON it was stored as,
//! and the binary payloads take fewer bytes than the JSON ones; and its canonical text (the
//! checksum's and the Merkle leaf's data), written straight from the event, is the text its
//! JSON envelope gives.

mod common;

use common::*;
use poolbill_domain::{latest_version, Event};
use poolbill_replay::jsonl;
use poolbill_store::{Envelope, Payload};

#[test]
fn every_fixture_event_round_trips_through_the_binary_codec_in_fewer_bytes() {
    let (mut events, mut json_bytes, mut binary_bytes) = (0usize, 0usize, 0usize);
    let mut binary = Vec::new();
    for dir in fixtures() {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let out = tempfile::tempdir().unwrap();
        let log = out.path().join("log.jsonl");
        run_json(&["run", dir.join("scenario.json").to_str().unwrap(), "--format", "json", "--export", log.to_str().unwrap()]);
        for envelope in jsonl::read_file(&log).unwrap() {
            let (event_type, version) = (envelope.event_type.as_str(), envelope.schema_version);
            let at = format!("{name} #{} {event_type}", envelope.position);
            assert_eq!(version, latest_version(event_type), "{at}: a run writes the latest version");
            let payload = envelope.payload.as_json().expect("portable logs carry JSON payloads");
            let event = Event::decode(event_type, version, payload).unwrap();
            assert_eq!(event.event_type_name(), event_type, "{at}");

            binary.clear();
            event.encode_binary(&mut binary);
            let back = Event::decode_binary(event_type, version, &binary).unwrap_or_else(|e| panic!("{at}: {e}"));
            // Text, not ==: Decimal's == ignores the scale and DateTime's the offset.
            assert_eq!(serde_json::to_string(&back).unwrap(), serde_json::to_string(&event).unwrap(), "{at}");
            assert_eq!(&serde_json::to_value(&back).unwrap(), payload, "{at}: the stored payload");

            // The canonical text of the stored (binary) envelope, written without a `Value`.
            let stored = Envelope { payload: Payload::Binary(binary.clone()), ..envelope.clone() };
            let canonical = poolbill_projections::canonical_text(&stored).unwrap();
            assert_eq!(canonical, serde_json::to_string(&envelope).unwrap(), "{at}: canonical text");
            assert_eq!(canonical, poolbill_projections::canonical_text(&envelope).unwrap(), "{at}: as from the portable envelope");
            // The exported line: the envelope's `Value` and its checksum, as `Value` writes it.
            let line = jsonl::to_line(&stored).unwrap();
            let mut parsed: serde_json::Value = serde_json::from_str(&line).unwrap();
            assert_eq!(parsed.to_string(), line, "{at}: the exported line, sorted and compact");
            assert_eq!(jsonl::to_line(&envelope).unwrap(), line, "{at}: the same from the portable envelope");
            parsed.as_object_mut().unwrap().remove("checksum").expect("a checksum");
            assert_eq!(parsed, serde_json::to_value(&envelope).unwrap(), "{at}: the exported line's fields");
            let mut sorted = Vec::new();
            poolbill_projections::write_sorted(&event, &mut sorted).unwrap();
            assert_eq!(String::from_utf8(sorted).unwrap(), payload.to_string(), "{at}: the payload's text");

            events += 1;
            json_bytes += serde_json::to_string(payload).unwrap().len();
            binary_bytes += binary.len();
        }
    }
    let report = format!(
        "{events} events: binary {binary_bytes} B ({:.1} B/event), JSON payloads {json_bytes} B ({:.1} B/event), {:.1} %",
        binary_bytes as f64 / events as f64,
        json_bytes as f64 / events as f64,
        100.0 * binary_bytes as f64 / json_bytes as f64
    );
    println!("{report}");
    assert!(events > 1000, "{report}");
    assert!(binary_bytes < json_bytes, "{report}");
}
