//! The tamper-evident log: `digest` (the root of the log's Merkle tree, optionally signed),
//! `keygen`, `prove` (inclusion and consistency proofs), `check-proof`, and what `verify
//! --digest` and `explain --proof` add. A tree is read from a store's Merkle index (brought up
//! to date first) or computed from a log file's lines, each leaf the canonical text its line's
//! checksum is computed over: a store and its export give the same roots and proofs.

use crate::args::StoreAt;
use crate::args::{CheckProofArgs, DigestArgs, KeygenArgs, LogSource, ProveArgs};
use crate::failure::{damaged, input, runtime, Failure};
use crate::logs::{open_store, Origin};
use crate::{print_out, to_json};
use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use poolbill_ledger::merkle::{self as index, MerkleError};
use poolbill_merkle::{from_hex, to_hex, Hash, Leaves};
use poolbill_replay::jsonl::LogReader;
use poolbill_store::Envelope;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// What `digest` prints, and `verify --digest` reads.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Digest {
    pub size: u64,
    pub root: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leaves: Option<Vec<String>>,
}

/// An inclusion proof as `prove --position` prints it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InclusionProof {
    pub size: u64,
    pub position: u64,
    /// The event in its portable form: the fields of its log line but the checksum.
    pub envelope: serde_json::Value,
    pub path: Vec<String>,
}

/// A consistency proof as `prove --consistency` prints it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsistencyProof {
    pub old_size: u64,
    pub size: u64,
    pub old_root: String,
    pub root: String,
    pub path: Vec<String>,
}

/// What a signature covers: the digest's size and root, in a fixed text, so that a signature
/// is never taken for another kind of statement.
fn signed_message(size: u64, root: &Hash) -> Vec<u8> {
    format!("poolbill log digest v1\nsize {size}\nroot {}\n", to_hex(root)).into_bytes()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `N` bytes from hex digits, or what is wrong with them (`what` names the value).
fn bytes_of<const N: usize>(text: &str, what: &str) -> Result<[u8; N], String> {
    let text = text.trim();
    if text.len() != 2 * N || !text.is_ascii() {
        return Err(format!("{what}: expected {} hex digits, found {} characters", 2 * N, text.chars().count()));
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|_| format!("{what}: {:?} is not hex", &text[2 * i..2 * i + 2]))?;
    }
    Ok(out)
}

/// A log file's envelopes and leaf hashes, read and checked whole (its end line's root too).
pub fn log_leaves(path: &Path) -> Result<(Vec<Envelope>, Vec<Hash>), Failure> {
    let name = path.display();
    let file = std::fs::File::open(path).map_err(input(format!("cannot read {name}")))?;
    let mut reader = LogReader::new(std::io::BufReader::with_capacity(1 << 18, file));
    let (mut envelopes, mut leaves) = (Vec::new(), Vec::new());
    while let Some(next) = reader.next_with_leaf() {
        let (envelope, leaf) = next.map_err(input(format!("{name} is not a sound log")))?;
        envelopes.push(envelope);
        leaves.push(leaf);
    }
    Ok((envelopes, leaves))
}

/// A log file's leaf hashes, read and checked whole (its end line's root too), without
/// building its envelopes.
fn leaves_only(path: &Path) -> Result<Vec<Hash>, Failure> {
    leaves_keeping(path, 0).map(|(leaves, _)| leaves)
}

/// A log file's leaf hashes and the envelope at `position` (none for 0), read and checked whole
/// (its end line's root too), building no other envelope.
fn leaves_keeping(path: &Path, position: u64) -> Result<(Vec<Hash>, Option<Envelope>), Failure> {
    let name = path.display();
    let file = std::fs::File::open(path).map_err(input(format!("cannot read {name}")))?;
    let mut reader = LogReader::new(std::io::BufReader::with_capacity(1 << 18, file));
    let (mut leaves, mut kept) = (Vec::new(), None);
    while let Some(next) = reader.next_leaf_keeping(leaves.len() as u64 + 1 == position) {
        let (envelope, leaf) = next.map_err(input(format!("{name} is not a sound log")))?;
        kept = kept.or(envelope);
        leaves.push(leaf);
    }
    Ok((leaves, kept))
}

/// `size` (all when `None`) checked against a log file of `count` events.
fn size_within(size: Option<u64>, count: u64) -> Result<u64, Failure> {
    match size {
        None => Ok(count),
        Some(size) if size <= count => Ok(size),
        Some(size) => Err(Failure::Input(format!("--size {size}: the log holds {count} events").into())),
    }
}

fn memory_root(leaves: &[Hash], size: u64) -> Hash {
    poolbill_merkle::root(&mut Leaves(leaves), size).unwrap_or_else(|never| match never {})
}

/// A store's answer: a question outside the log is bad input, anything else damage.
fn from_index(at: &StoreAt) -> impl Fn(MerkleError) -> Failure + '_ {
    move |e| match e {
        MerkleError::Outside(message) => Failure::Input(message.into()),
        MerkleError::Fold(e) => damaged(format!("reading the Merkle index of {}", at.describe()))(e),
    }
}

/// The size and root of the tree of a source's first `size` events, and their leaf hashes when
/// `with_leaves`.
fn tree_root(source: &LogSource, size: Option<u64>, with_leaves: bool) -> Result<(u64, Hash, Option<Vec<Hash>>), Failure> {
    match source.origin()? {
        Origin::File(path) => {
            let mut leaves = leaves_only(path)?;
            let size = size_within(size, leaves.len() as u64)?;
            let root = memory_root(&leaves, size);
            leaves.truncate(size as usize);
            Ok((size, root, with_leaves.then_some(leaves)))
        }
        Origin::Store(at) => {
            let store = open_store(&at)?;
            let (size, root) = index::digest(store.as_ref(), size).map_err(from_index(&at))?;
            let leaves = if with_leaves {
                let unreadable = |e: Box<dyn std::error::Error + Send + Sync>| damaged(format!("reading {}", at.describe()))(e);
                let mut leaves = Vec::with_capacity(size as usize);
                for envelope in store.read_all(1).take(size as usize) {
                    let envelope = envelope.map_err(|e| unreadable(e.into()))?;
                    leaves.push(poolbill_projections::leaf_hash(&envelope).map_err(|e| unreadable(e.into()))?);
                }
                Some(leaves)
            } else {
                None
            };
            Ok((size, root, leaves))
        }
    }
}

pub fn digest(args: DigestArgs) -> Result<(), Failure> {
    // The key is read before the log, so that a bad key file costs nothing.
    let key = args.sign.as_deref().map(read_secret_key).transpose()?;
    let (size, root, leaves) = tree_root(&args.source, args.size, args.leaves)?;
    let mut digest =
        Digest { size, root: to_hex(&root), signature: None, public_key: None, leaves: leaves.map(|leaves| leaves.iter().map(to_hex).collect()) };
    if let Some(key) = key {
        digest.signature = Some(hex(&key.sign(&signed_message(size, &root)).to_bytes()));
        digest.public_key = Some(hex(key.verifying_key().as_bytes()));
    }
    print_out(&to_json(&digest)?)
}

/// A secret key file as `keygen` writes it: the 32-byte seed in hex.
fn read_secret_key(path: &Path) -> Result<SigningKey, Failure> {
    let name = path.display();
    let text = std::fs::read_to_string(path).map_err(input(format!("--sign {name}: cannot read the key file")))?;
    let seed =
        bytes_of::<32>(&text, &format!("--sign {name}")).map_err(|e| Failure::Input(format!("{e} (a key file from `poolbill keygen`)").into()))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// A new key pair from the OS's randomness: the secret key to `--out` (created with mode 0600,
/// never over an existing file), the public key beside it (`.pub`) and on stdout.
pub fn keygen(args: KeygenArgs) -> Result<(), Failure> {
    let out = &args.out;
    let public_path = out.with_extension(out.extension().map_or("pub".to_string(), |e| format!("{}.pub", e.to_string_lossy())));
    for path in [out, &public_path] {
        if std::fs::symlink_metadata(path).is_ok() {
            return Err(Failure::Input(format!("--out {}: {} exists (keys are never overwritten)", out.display(), path.display()).into()));
        }
    }
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| Failure::Runtime(format!("reading the OS's randomness: {e}").into()))?;
    let key = SigningKey::from_bytes(&seed);
    let public = hex(key.verifying_key().as_bytes());
    write_new(out, &format!("{}\n", hex(&seed)), 0o600)?;
    write_new(&public_path, &format!("{public}\n"), 0o644)?;
    print_out(&format!("{public}\n"))
}

/// Create `path` (never an existing file) with `mode`, holding `text`.
fn write_new(path: &Path, text: &str, mode: u32) -> Result<(), Failure> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let context = format!("writing {}", path.display());
    let mut file = options.open(path).map_err(input(context.clone()))?;
    file.write_all(text.as_bytes()).and_then(|()| file.sync_all()).map_err(runtime(context))
}

pub fn prove(args: ProveArgs) -> Result<(), Failure> {
    match (args.position, args.consistency) {
        (Some(position), _) => print_out(&to_json(&inclusion(&args.source, position, args.size)?)?),
        (None, Some(old_size)) => print_out(&to_json(&consistency(&args.source, old_size, args.size)?)?),
        (None, None) => Err(Failure::Input("prove needs --position P or --consistency OLD_SIZE".into())),
    }
}

/// The inclusion proof of the event at `position` in the tree of the first `size` events.
pub fn inclusion(source: &LogSource, position: u64, size: Option<u64>) -> Result<InclusionProof, Failure> {
    let (size, envelope, path) = match source.origin()? {
        Origin::File(path) => {
            let (leaves, envelope) = leaves_keeping(path, position)?;
            let size = size_within(size, leaves.len() as u64)?;
            let envelope = match envelope {
                Some(envelope) if position <= size => envelope,
                _ => return Err(Failure::Input(format!("--position {position}: the tree holds positions 1 to {size}").into())),
            };
            let proof =
                poolbill_merkle::inclusion_proof(&mut Leaves(&leaves), position - 1, size).map_err(|e| Failure::Input(e.to_string().into()))?;
            (size, envelope, proof)
        }
        Origin::Store(at) => {
            let store = open_store(&at)?;
            index::inclusion(store.as_ref(), position, size).map_err(from_index(&at))?
        }
    };
    let envelope = poolbill_projections::portable(&envelope)
        .map_err(|e| damaged(format!("the event at position {position} cannot be read"))(e))
        .and_then(|portable| to_value(&portable))?;
    Ok(InclusionProof { size, position, envelope, path: path.iter().map(to_hex).collect() })
}

fn to_value(envelope: &Envelope) -> Result<serde_json::Value, Failure> {
    serde_json::to_value(envelope).map_err(runtime("encoding the envelope as JSON"))
}

/// The consistency proof from the tree of the first `old_size` events to that of the first `size`.
fn consistency(source: &LogSource, old_size: u64, size: Option<u64>) -> Result<ConsistencyProof, Failure> {
    let (old_root, root, size, path) = match source.origin()? {
        Origin::File(path) => {
            let leaves = leaves_only(path)?;
            let size = size_within(size, leaves.len() as u64)?;
            if old_size > size {
                return Err(Failure::Input(format!("--consistency {old_size}: larger than the tree of {size} events").into()));
            }
            let proof = poolbill_merkle::consistency_proof(&mut Leaves(&leaves), old_size, size).map_err(|e| Failure::Input(e.to_string().into()))?;
            (memory_root(&leaves, old_size), memory_root(&leaves, size), size, proof)
        }
        Origin::Store(at) => {
            let store = open_store(&at)?;
            index::consistency(store.as_ref(), old_size, size).map_err(from_index(&at))?
        }
    };
    Ok(ConsistencyProof { old_size, size, old_root: to_hex(&old_root), root: to_hex(&root), path: path.iter().map(to_hex).collect() })
}

fn hashes(path: &[String], what: &str) -> Result<Vec<Hash>, Failure> {
    path.iter().enumerate().map(|(i, h)| from_hex(h).map_err(|e| Failure::Input(format!("{what}[{i}]: {e}").into()))).collect()
}

/// A root given as such, or read from a digest file whose size must be `size` and whose
/// signature, if it has one, must hold (`Failure::Differs` when it does not).
fn root_of(root: Option<Hash>, digest: Option<&Path>, size: u64, what: &str) -> Result<Option<Hash>, Failure> {
    let Some(path) = digest else { return Ok(root) };
    let name = path.display();
    let text = std::fs::read_to_string(path).map_err(input(format!("cannot read {name}")))?;
    let digest: Digest = serde_json::from_str(&text).map_err(input(format!("{name} is not a digest (`poolbill digest`)")))?;
    let root = from_hex(&digest.root).map_err(|e| Failure::Input(format!("{name}: root: {e}").into()))?;
    if digest.size != size {
        return Err(Failure::Input(format!("{what} {name} is of {} events, the proof's tree of {size}", digest.size).into()));
    }
    if let Err(e) = check_signature(&digest, &root, None) {
        if let Failure::Differs = e {
            print_out(&format!("does not verify: the signature on {name} does not hold\n"))?;
        }
        return Err(e);
    }
    Ok(Some(root))
}

/// `check-proof PROOF.json (--root HEX | --digest D.json) [--old-root HEX | --old-digest D.json]`:
/// 0 when the proof holds, 1 when it does not (said on stdout), 2 when the proof file is not one.
pub fn check_proof(args: CheckProofArgs) -> Result<(), Failure> {
    let name = args.proof.display();
    let text = std::fs::read_to_string(&args.proof).map_err(input(format!("cannot read {name}")))?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(input(format!("{name} is not JSON")))?;
    let root = |size: u64| {
        root_of(args.root, args.digest.as_deref(), size, "--digest")?.ok_or_else(|| Failure::Input("give --root HEX or --digest D.json".into()))
    };
    let holds = if value.get("old_size").is_some() {
        let proof: ConsistencyProof = serde_json::from_value(value).map_err(input(format!("{name} is not a consistency proof")))?;
        let root = root(proof.size)?;
        let old_root = root_of(args.old_root, args.old_digest.as_deref(), proof.old_size, "--old-digest")?
            .ok_or_else(|| Failure::Input("a consistency proof needs --old-root HEX or --old-digest D.json (the older digest)".into()))?;
        let path = hashes(&proof.path, "path")?;
        let holds = poolbill_merkle::verify_consistency(proof.old_size, proof.size, &old_root, &root, &path);
        let (size, old_size) = (proof.size, proof.old_size);
        (
            holds,
            format!("the tree of {size} events with root {} extends the tree of {old_size} events with root {}", to_hex(&root), to_hex(&old_root)),
        )
    } else {
        // An inclusion proof, as it stands or inside `explain --proof`'s output.
        let value = value.get("proof").cloned().unwrap_or(value);
        let proof: InclusionProof = serde_json::from_value(value).map_err(input(format!("{name} is not an inclusion or consistency proof")))?;
        let envelope: Envelope = serde_json::from_value(proof.envelope.clone()).map_err(input(format!("{name}: envelope")))?;
        // Fields an envelope does not have would not be hashed: refused rather than ignored.
        if to_value(&envelope)? != proof.envelope {
            return Err(Failure::Input(format!("{name}: envelope: fields that are not an envelope's, or values written another way").into()));
        }
        let leaf = poolbill_projections::leaf_hash(&envelope).map_err(input(format!("{name}: envelope")))?;
        let path = hashes(&proof.path, "path")?;
        let at = proof.position.checked_sub(1).ok_or_else(|| Failure::Input("position: positions start at 1".into()))?;
        let root = root(proof.size)?;
        let holds = poolbill_merkle::verify_inclusion(&leaf, at, proof.size, &path, &root);
        (holds, format!("the event at position {} is in the tree of {} events with root {}", proof.position, proof.size, to_hex(&root)))
    };
    match holds {
        (true, what) => print_out(&format!("ok: {what}\n")),
        (false, what) => {
            print_out(&format!("does not verify: it is not proven that {what}\n"))?;
            Err(Failure::Differs)
        }
    }
}

/// `verify LOG --digest D.json [--public-key HEX]`: the digest's signature when it has one (with
/// the given key, else its own), then the root of the log's first `size` events.
/// `log` names the log (a file, a store) in messages.
pub fn check_digest(log: &str, leaves: &[Hash], digest_path: &Path, public_key: Option<&str>) -> Result<String, Failure> {
    let name = digest_path.display();
    let text = std::fs::read_to_string(digest_path).map_err(input(format!("cannot read {name}")))?;
    let digest: Digest = serde_json::from_str(&text).map_err(input(format!("{name} is not a digest (`poolbill digest`)")))?;
    let root = from_hex(&digest.root).map_err(|e| Failure::Input(format!("{name}: root: {e}").into()))?;
    let signed = check_signature(&digest, &root, public_key).map_err(|e| match e {
        Failure::Differs => damaged(format!("{name}"))("the signature does not verify: the digest was changed, or signed with another key"),
        other => other,
    })?;
    let count = leaves.len() as u64;
    if digest.size > count {
        return Err(damaged(log.to_string())(format!(
            "the log has {count} events, fewer than the {} the digest commits to: events were removed",
            digest.size
        )));
    }
    if memory_root(leaves, digest.size) == root {
        let by = signed.map_or(String::new(), |key| format!(", signed by {key}"));
        return Ok(format!("the first {} events have the digest's root {}{by}", digest.size, digest.root));
    }
    let differs = match &digest.leaves {
        Some(kept) => {
            let kept = hashes(kept, "leaves")?;
            if kept.len() as u64 != digest.size || memory_root(&kept, digest.size) != root {
                return Err(Failure::Input(format!("{name}: its leaves do not make its root").into()));
            }
            match kept.iter().zip(leaves).position(|(a, b)| a != b) {
                Some(i) => format!("line {} (position {}) is not the event the digest committed to", i + 1, i + 1),
                None => "no line differs, yet the roots do".to_string(),
            }
        }
        None => format!(
            "an event before position {} was changed, added or removed (the digest lists no leaves to say which: `digest --leaves`)",
            digest.size + 1
        ),
    };
    Err(damaged(log.to_string())(format!("the log's first {} events do not have the digest's root {}: {differs}", digest.size, digest.root)))
}

/// The digest's signature checked with `public_key` (hex) or the digest's own: the key's hex
/// when it holds, `None` for an unsigned digest, `Failure::Differs` when it does not hold.
fn check_signature(digest: &Digest, root: &Hash, public_key: Option<&str>) -> Result<Option<String>, Failure> {
    let Some(signature) = &digest.signature else {
        return match public_key {
            Some(_) => Err(Failure::Input("--public-key: the digest is not signed".into())),
            None => Ok(None),
        };
    };
    let key_text = public_key
        .or(digest.public_key.as_deref())
        .ok_or_else(|| Failure::Input("the digest is signed but names no key: give --public-key HEX".into()))?;
    let key = bytes_of::<32>(key_text, "public key").map_err(|e| Failure::Input(e.into()))?;
    let key = VerifyingKey::from_bytes(&key).map_err(|e| Failure::Input(format!("public key: not an ed25519 key ({e})").into()))?;
    let signature = bytes_of::<64>(signature, "signature").map_err(|e| Failure::Input(e.into()))?;
    match key.verify(&signed_message(digest.size, root), &ed25519_dalek::Signature::from_bytes(&signature)) {
        Ok(()) => Ok(Some(hex(key.as_bytes()))),
        Err(_) => Err(Failure::Differs),
    }
}
