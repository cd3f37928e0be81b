//! The tamper-evident log through the binary: digests of a store and of its export agree,
//! inclusion and consistency proofs round-trip through `check-proof` and fail on any changed
//! byte, a log rewritten consistently (checksums and end line recomputed) passes `audit` but not
//! `verify --digest`, signed digests verify with the signer's key only, and `explain --proof`
//! hands out a line's proof.

mod common;

use common::*;
use poolbill_replay::jsonl;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn stdout(args: &[&str]) -> String {
    let out = run(args);
    assert!(out.status.success(), "poolbill {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn json(args: &[&str]) -> Value {
    serde_json::from_str(&stdout(args)).unwrap()
}

/// The exit status and both outputs of a command.
fn status(args: &[&str]) -> (Option<i32>, String, String) {
    let out = run(args);
    (out.status.code(), String::from_utf8_lossy(&out.stdout).to_string(), String::from_utf8_lossy(&out.stderr).to_string())
}

fn write(dir: &Path, name: &str, value: &Value) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_string_pretty(value).unwrap()).unwrap();
    path
}

/// A fixture's scenario run into a store, and the store's export.
fn store_and_log(dir: &Path, fixture: &str) -> (PathBuf, PathBuf) {
    let store = dir.join("store");
    let log = dir.join("log.jsonl");
    let scenario = fixtures_dir().join(fixture).join("scenario.json");
    stdout(&["run", scenario.to_str().unwrap(), "--store", store.to_str().unwrap(), "--export", log.to_str().unwrap()]);
    (store, log)
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// The log with the event at `position` changed by `edit` and everything a forger would
/// recompute recomputed: each line's checksum and the end line (its count, last checksum, root).
fn rewritten(log: &Path, position: usize, edit: impl FnOnce(&mut poolbill_store::Envelope)) -> String {
    let mut envelopes = jsonl::read_file(log).unwrap();
    edit(&mut envelopes[position - 1]);
    jsonl::to_text(&envelopes).unwrap()
}

#[test]
fn the_digest_of_a_store_is_the_digest_of_its_export() {
    let dir = tempfile::tempdir().unwrap();
    let (store, log) = store_and_log(dir.path(), "auto-renew-fails-then-succeeds");
    let of_store = json(&["digest", "--store", s(&store)]);
    let of_log = json(&["digest", s(&log)]);
    assert_eq!(of_store, of_log);
    let events = of_log["size"].as_u64().unwrap();
    assert!(events > 10, "{of_log}");
    // The end line carries the same root.
    let text = std::fs::read_to_string(&log).unwrap();
    let end: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(end["end"]["root"], of_log["root"]);
    for size in [0, 1, events / 2, events - 1] {
        let size = size.to_string();
        let a = json(&["digest", "--store", s(&store), "--size", &size]);
        assert_eq!(a, json(&["digest", s(&log), "--size", &size]), "size {size}");
        assert_ne!(a["root"], of_log["root"]);
    }
    let (code, _, err) = status(&["digest", s(&log), "--size", &(events + 1).to_string()]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains(&format!("--size {}: the log holds {events} events", events + 1)), "{err}");
    assert_eq!(status(&["digest", "--store", s(&store), "--size", &(events + 1).to_string()]).0, Some(2));
}

#[test]
fn inclusion_proofs_round_trip_and_any_changed_byte_fails() {
    let dir = tempfile::tempdir().unwrap();
    let (store, log) = store_and_log(dir.path(), "subscription-lifecycle");
    let digest = json(&["digest", s(&log)]);
    let (root, size) = (digest["root"].as_str().unwrap().to_string(), digest["size"].as_u64().unwrap());
    for position in [1, 2, size / 2, size - 1, size] {
        let p = position.to_string();
        let proof = json(&["prove", "--store", s(&store), "--position", &p]);
        assert_eq!(proof, json(&["prove", s(&log), "--position", &p]), "store and log give the same proof");
        assert_eq!((proof["size"].as_u64(), proof["position"].as_u64()), (Some(size), Some(position)));
        let file = write(dir.path(), "proof.json", &proof);
        let (code, out, err) = status(&["check-proof", s(&file), "--root", &root]);
        assert_eq!(code, Some(0), "position {position}: {out}{err}");
        assert!(out.starts_with("ok: "), "{out}");

        // A changed byte in the envelope or in the path is refused; so is another root.
        let text = serde_json::to_string(&proof).unwrap();
        let envelope_at = text.find("\"stream\":\"").unwrap() + "\"stream\":\"".len();
        let path_at = text.rfind("\"path\":[\"").unwrap() + "\"path\":[\"".len();
        for at in [envelope_at, path_at] {
            let mut bytes = text.clone().into_bytes();
            bytes[at] = if bytes[at] == b'a' { b'b' } else { b'a' };
            std::fs::write(&file, &bytes).unwrap();
            let (code, out, err) = status(&["check-proof", s(&file), "--root", &root]);
            assert_eq!(code, Some(1), "byte {at} of {text}: {out}{err}");
            assert!(out.starts_with("does not verify"), "{out}");
        }
        write(dir.path(), "proof.json", &proof);
        let mut other = root.clone().into_bytes();
        other[0] = if other[0] == b'0' { b'1' } else { b'0' };
        assert_eq!(status(&["check-proof", s(&file), "--root", std::str::from_utf8(&other).unwrap()]).0, Some(1));
    }
    // A proof in an older, smaller tree verifies against that tree's digest.
    let old = json(&["digest", "--store", s(&store), "--size", "5"]);
    let file = write(dir.path(), "old.json", &json(&["prove", "--store", s(&store), "--position", "3", "--size", "5"]));
    assert_eq!(status(&["check-proof", s(&file), "--root", old["root"].as_str().unwrap()]).0, Some(0));
    assert_eq!(status(&["check-proof", s(&file), "--root", &root]).0, Some(1));
    // Questions outside the log, and files that are not proofs, are bad input.
    assert_eq!(status(&["prove", s(&log), "--position", "0"]).0, Some(2));
    assert_eq!(status(&["prove", "--store", s(&store), "--position", &(size + 1).to_string()]).0, Some(2));
    let junk = write(dir.path(), "junk.json", &serde_json::json!({"size": 1}));
    assert_eq!(status(&["check-proof", s(&junk), "--root", &root]).0, Some(2));
    let (code, _, err) = status(&["check-proof", s(&file), "--root", "abc"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("64 hex digits"), "{err}");
}

#[test]
fn a_consistently_rewritten_log_passes_audit_but_not_verify_digest() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = fixtures_dir().join("subscription-upgrade");
    let log = fixture.join("log.jsonl");
    let charged = fixture.join("CHARGED.json");
    let digest = write(dir.path(), "digest.json", &json(&["digest", s(&log)]));
    let with_leaves = write(dir.path(), "leaves.json", &json(&["digest", s(&log), "--leaves"]));
    let (code, out, err) = status(&["verify", s(&log), "--digest", s(&digest)]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("have the digest's root"), "{out}");

    // Event 4 gets another command id: checksums and end line recomputed, the log reads as sound.
    let forged = dir.path().join("forged.jsonl");
    std::fs::write(&forged, rewritten(&log, 4, |e| e.command_id = Some("forged".into()))).unwrap();
    assert_eq!(status(&["verify", s(&forged)]).0, Some(0), "a consistent rewrite passes the checksums");
    let (code, out, err) = status(&["audit", s(&forged), "--charged", s(&charged)]);
    assert_eq!(code, Some(0), "it passes audit too: {out}{err}");

    let (code, _, err) = status(&["verify", s(&forged), "--digest", s(&digest)]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("do not have the digest's root") && err.contains("digest --leaves"), "{err}");
    let (code, _, err) = status(&["verify", s(&forged), "--digest", s(&with_leaves)]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("line 4 (position 4) is not the event the digest committed to"), "{err}");

    // A log cut short of the digest's size fails; a grown log whose prefix is the digest's passes.
    let events = jsonl::read_file(&log).unwrap();
    let short = dir.path().join("short.jsonl");
    std::fs::write(&short, jsonl::to_text(&events[..events.len() - 1]).unwrap()).unwrap();
    let (code, _, err) = status(&["verify", s(&short), "--digest", s(&digest)]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("fewer than the"), "{err}");
    let old = write(dir.path(), "old.json", &json(&["digest", s(&short)]));
    assert_eq!(status(&["verify", s(&log), "--digest", s(&old)]).0, Some(0), "the log extends the older digest");
}

#[test]
fn an_end_line_whose_root_is_not_its_lines_is_refused_and_one_without_a_root_still_reads() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(fixtures_dir().join("subscription-upgrade").join("log.jsonl")).unwrap();
    let (lines, end) = text.trim_end().rsplit_once('\n').unwrap();
    let mut end: Value = serde_json::from_str(end).unwrap();
    let root = end["end"]["root"].as_str().unwrap().to_string();
    end["end"]["root"] = Value::String(root.replacen(&root[..1], if &root[..1] == "0" { "1" } else { "0" }, 1));
    let wrong = dir.path().join("wrong.jsonl");
    std::fs::write(&wrong, format!("{lines}\n{end}\n")).unwrap();
    let (code, _, err) = status(&["verify", s(&wrong)]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("the end line's root") && err.contains("is not the root of the log's"), "{err}");
    assert_eq!(status(&["explain", s(&wrong), "--bill", "1"]).0, Some(2), "a tool that imports the log refuses it");
    end["end"].as_object_mut().unwrap().remove("root");
    let old = dir.path().join("old.jsonl");
    std::fs::write(&old, format!("{lines}\n{end}\n")).unwrap();
    assert_eq!(status(&["verify", s(&old)]).0, Some(0), "an end line written before roots reads");
    assert_eq!(json(&["digest", s(&old)])["root"].as_str(), Some(root.as_str()));
}

#[test]
fn a_consistency_proof_links_an_old_digest_to_the_grown_store_and_fails_for_a_rewritten_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    // The first command of the scenario, then the whole of it (the first is not appended twice).
    let full: Value = read_json(&fixtures_dir().join("subscription-upgrade").join("scenario.json"));
    let mut first = full.clone();
    first["commands"] = Value::Array(vec![full["commands"][0].clone()]);
    first["until"] = full["commands"][0]["at"].clone();
    let first = write(dir.path(), "first.json", &first);
    stdout(&["run", s(&first), "--store", s(&store)]);
    let old = json(&["digest", "--store", s(&store)]);
    let old_size = old["size"].as_u64().unwrap();
    let full_path = fixtures_dir().join("subscription-upgrade").join("scenario.json");
    let log = dir.path().join("log.jsonl");
    stdout(&["run", s(&full_path), "--store", s(&store), "--export", s(&log)]);
    let new = json(&["digest", "--store", s(&store)]);
    assert!(new["size"].as_u64().unwrap() > old_size, "{old} {new}");

    let proof = json(&["prove", "--store", s(&store), "--consistency", &old_size.to_string()]);
    assert_eq!(proof, json(&["prove", s(&log), "--consistency", &old_size.to_string()]));
    assert_eq!((&proof["old_root"], &proof["root"]), (&old["root"], &new["root"]));
    let file = write(dir.path(), "consistency.json", &proof);
    let (old_root, new_root) = (old["root"].as_str().unwrap(), new["root"].as_str().unwrap());
    let (code, out, err) = status(&["check-proof", s(&file), "--old-root", old_root, "--root", new_root]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("extends the tree of"), "{out}");
    assert_eq!(status(&["check-proof", s(&file), "--root", new_root]).0, Some(2), "--old-root is needed");
    assert_eq!(status(&["check-proof", s(&file), "--old-root", new_root, "--root", new_root]).0, Some(1));

    // Today's log with an event of the old prefix rewritten: its proof does not link to the old digest.
    let forged = dir.path().join("forged.jsonl");
    std::fs::write(&forged, rewritten(&log, 2, |e| e.command_id = Some("forged".into()))).unwrap();
    let forged_proof = json(&["prove", s(&forged), "--consistency", &old_size.to_string()]);
    let forged_root = forged_proof["root"].as_str().unwrap().to_string();
    let file = write(dir.path(), "forged-consistency.json", &forged_proof);
    let (code, out, _) = status(&["check-proof", s(&file), "--old-root", old_root, "--root", &forged_root]);
    assert_eq!(code, Some(1), "{out}");
}

#[test]
fn a_signed_digest_verifies_with_its_key_and_fails_with_another() {
    let dir = tempfile::tempdir().unwrap();
    let log = fixtures_dir().join("subscription-upgrade").join("log.jsonl");
    let (key, other) = (dir.path().join("provider.key"), dir.path().join("other.key"));
    let public = stdout(&["keygen", "--out", s(&key)]).trim().to_string();
    let other_public = stdout(&["keygen", "--out", s(&other)]).trim().to_string();
    assert_eq!(public.len(), 64);
    assert_ne!(public, other_public);
    assert_eq!(std::fs::read_to_string(dir.path().join("provider.key.pub")).unwrap().trim(), public);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600, "the secret key is the owner's only");
    }
    let (code, _, err) = status(&["keygen", "--out", s(&key)]);
    assert_eq!(code, Some(2), "a key is never overwritten: {err}");

    let signed = json(&["digest", s(&log), "--sign", s(&key)]);
    assert_eq!(signed["public_key"].as_str(), Some(public.as_str()));
    assert_eq!(signed["signature"].as_str().map(str::len), Some(128));
    let file = write(dir.path(), "signed.json", &signed);
    let (code, out, err) = status(&["verify", s(&log), "--digest", s(&file), "--public-key", &public]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains(&format!("signed by {public}")), "{out}");
    assert_eq!(status(&["verify", s(&log), "--digest", s(&file)]).0, Some(0), "with the key it names");
    let (code, _, err) = status(&["verify", s(&log), "--digest", s(&file), "--public-key", &other_public]);
    assert_eq!(code, Some(1), "another key: {err}");
    assert!(err.contains("signature does not verify"), "{err}");

    // A digest whose size, root or signature was changed no longer verifies with the key.
    let mut changed = signed.clone();
    changed["size"] = Value::from(signed["size"].as_u64().unwrap() - 1);
    let file = write(dir.path(), "changed.json", &changed);
    assert_eq!(status(&["verify", s(&log), "--digest", s(&file), "--public-key", &public]).0, Some(1));
    let mut changed = signed.clone();
    let signature = signed["signature"].as_str().unwrap();
    changed["signature"] = Value::String(format!("{}{}", if signature.starts_with('0') { "1" } else { "0" }, &signature[1..]));
    let file = write(dir.path(), "changed.json", &changed);
    assert_eq!(status(&["verify", s(&log), "--digest", s(&file)]).0, Some(1));
    // An unsigned digest with a key asked for, and a bad key file, are bad input.
    let unsigned = write(dir.path(), "unsigned.json", &json(&["digest", s(&log)]));
    assert_eq!(status(&["verify", s(&log), "--digest", s(&unsigned), "--public-key", &public]).0, Some(2));
    let bad = dir.path().join("bad.key");
    std::fs::write(&bad, "not a key").unwrap();
    let (code, _, err) = status(&["digest", s(&log), "--sign", s(&bad)]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--sign") && err.contains("64 hex digits"), "{err}");
}

#[test]
fn explain_hands_out_a_line_with_its_derivation_and_its_proof() {
    let dir = tempfile::tempdir().unwrap();
    let (store, log) = store_and_log(dir.path(), "subscription-upgrade");
    let root = json(&["digest", s(&log)])["root"].as_str().unwrap().to_string();
    for source in [vec![s(&log)], vec!["--store", s(&store)]] {
        let mut args = vec!["explain"];
        args.extend(&source);
        args.extend(["--bill", "2", "--proof", "--format", "json"]);
        let answer = json(&args);
        assert_eq!(answer["proof"]["position"], answer["explanation"]["bill"]["event"], "{answer}");
        assert_eq!(answer["proof"]["envelope"]["event_type"], "charged");
        let file = write(dir.path(), "answer.json", &answer);
        let (code, out, err) = status(&["check-proof", s(&file), "--root", &root]);
        assert_eq!(code, Some(0), "{out}{err}");
        let text_args: Vec<&str> = args[..args.len() - 2].to_vec();
        let text = stdout(&text_args);
        assert!(text.contains("Inclusion proof") && text.contains(answer["proof"]["path"][0].as_str().unwrap()), "{text}");
    }
}

#[test]
fn check_proof_and_verify_take_digest_files_in_place_of_roots() {
    let dir = tempfile::tempdir().unwrap();
    let (store, log) = store_and_log(dir.path(), "subscription-upgrade");
    let key = dir.path().join("provider.key");
    stdout(&["keygen", "--out", s(&key)]);
    let signed = write(dir.path(), "signed.json", &json(&["digest", "--store", s(&store), "--sign", s(&key)]));
    let old = write(dir.path(), "old.json", &json(&["digest", s(&log), "--size", "4"]));
    let proof = write(dir.path(), "proof.json", &json(&["prove", s(&log), "--position", "7"]));
    let (code, out, err) = status(&["check-proof", s(&proof), "--digest", s(&signed)]);
    assert_eq!(code, Some(0), "{out}{err}");
    // The digest of another size is not the proof's tree: bad input, not a verdict.
    let (code, _, err) = status(&["check-proof", s(&proof), "--digest", s(&old)]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("is of 4 events, the proof's tree of"), "{err}");
    // A signed digest whose root was changed fails on its signature.
    let mut forged: Value = read_json(&signed);
    let root = forged["root"].as_str().unwrap().to_string();
    forged["root"] = Value::String(format!("{}{}", if root.starts_with('0') { "1" } else { "0" }, &root[1..]));
    let forged = write(dir.path(), "forged.json", &forged);
    let (code, out, _) = status(&["check-proof", s(&proof), "--digest", s(&forged)]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("the signature on"), "{out}");
    // A consistency proof between two digest files.
    let grown = write(dir.path(), "grown.json", &json(&["prove", "--store", s(&store), "--consistency", "4"]));
    let (code, out, err) = status(&["check-proof", s(&grown), "--old-digest", s(&old), "--digest", s(&signed)]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(status(&["check-proof", s(&grown), "--old-digest", s(&signed), "--digest", s(&signed)]).0, Some(2), "sizes differ");

    // `verify --store` against a digest: the store's own passes, a forged log's fails.
    let (code, out, err) = status(&["verify", "--store", s(&store), "--digest", s(&signed)]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("have the digest's root") && out.contains("signed by"), "{out}");
    let rewritten_log = dir.path().join("rewritten.jsonl");
    std::fs::write(&rewritten_log, rewritten(&log, 3, |e| e.command_id = Some("forged".into()))).unwrap();
    let other = write(dir.path(), "other.json", &json(&["digest", s(&rewritten_log), "--leaves"]));
    let (code, _, err) = status(&["verify", "--store", s(&store), "--digest", s(&other)]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("line 3 (position 3)"), "{err}");
}
