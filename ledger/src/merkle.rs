//! The log's Merkle tree as a store keeps it (its index: the roots of complete chunks and the
//! tail's leaf hashes, see `poolbill_store::MERKLE_CHUNK`): roots and proofs for any size the
//! index reaches, each brought up to date first ([`crate::catch_up_indexes`]). A proof that goes
//! down into a complete chunk recomputes that chunk's leaves from its events and checks them
//! against the root the index kept, so a log changed under its index is caught, not proven.

use crate::{catch_up_indexes, FoldError};
use poolbill_merkle::{perfect_root, Hash, ProofError, Subtrees};
use poolbill_projections::ProjectionError;
use poolbill_store::{Envelope, EventStore, StoreError, MERKLE_CHUNK};

/// Why a root or a proof could not be given.
#[derive(Debug, thiserror::Error)]
pub enum MerkleError {
    /// The question is outside the log: a size, position or older size it does not have.
    #[error("{0}")]
    Outside(String),
    #[error(transparent)]
    Fold(#[from] FoldError),
}

impl From<StoreError> for MerkleError {
    fn from(e: StoreError) -> MerkleError {
        MerkleError::Fold(FoldError::Store(e))
    }
}

/// A store's Merkle index as [`Subtrees`], keeping the last chunk whose leaves it recomputed.
struct StoreTree<'a> {
    store: &'a dyn EventStore,
    through: u64,
    chunk: Option<(u64, Vec<Hash>)>,
}

impl StoreTree<'_> {
    /// The leaf hashes of chunk `chunk`: the index's tail, or recomputed from the chunk's events
    /// and checked against the root the index kept for them.
    fn leaves(&mut self, chunk: u64) -> Result<&[Hash], FoldError> {
        if self.chunk.as_ref().is_none_or(|(kept, _)| *kept != chunk) {
            let first = chunk * MERKLE_CHUNK + 1;
            let leaves = if (chunk + 1) * MERKLE_CHUNK > self.through {
                self.store.merkle_tail()?
            } else {
                let leaves = chunk_leaves(self.store, first)?;
                let kept = self.store.merkle_chunk_roots(chunk, chunk + 1)?;
                if kept.first() != Some(&perfect_root(&leaves)) {
                    let detail = format!(
                        "the events at positions {first}..={} do not hash to the root the Merkle index kept for them: the log or its index was changed",
                        first + MERKLE_CHUNK - 1
                    );
                    return Err(StoreError::Corrupt { position: first, detail }.into());
                }
                leaves
            };
            self.chunk = Some((chunk, leaves));
        }
        Ok(&self.chunk.as_ref().expect("kept just now").1)
    }
}

/// The leaf hashes of the [`MERKLE_CHUNK`] events from position `first`.
fn chunk_leaves(store: &dyn EventStore, first: u64) -> Result<Vec<Hash>, FoldError> {
    let mut leaves = Vec::with_capacity(MERKLE_CHUNK as usize);
    for envelope in store.read_all(first).take(MERKLE_CHUNK as usize) {
        let envelope = envelope?;
        let position = envelope.position;
        leaves.push(poolbill_projections::leaf_hash(&envelope).map_err(|source| ProjectionError { position, source })?);
    }
    if leaves.len() as u64 != MERKLE_CHUNK {
        return Err(StoreError::Corrupt { position: first + leaves.len() as u64, detail: "the Merkle index reaches past the log".into() }.into());
    }
    Ok(leaves)
}

impl Subtrees for StoreTree<'_> {
    type Error = FoldError;

    fn perfect(&mut self, start: u64, size: u64) -> Result<Hash, FoldError> {
        if size >= MERKLE_CHUNK {
            // Whole chunks, aligned: their kept roots make the subtree.
            let roots = self.store.merkle_chunk_roots(start / MERKLE_CHUNK, (start + size) / MERKLE_CHUNK)?;
            return Ok(perfect_root(&roots));
        }
        let offset = (start % MERKLE_CHUNK) as usize;
        let leaves = self.leaves(start / MERKLE_CHUNK)?;
        Ok(perfect_root(&leaves[offset..offset + size as usize]))
    }
}

/// The store's index brought up to date, and `size` (all of it when `None`) checked against it.
fn tree(store: &dyn EventStore, size: Option<u64>) -> Result<(StoreTree<'_>, u64), MerkleError> {
    catch_up_indexes(store)?;
    let through = store.merkle_through()?;
    let size = size.unwrap_or(through);
    if size > through {
        return Err(MerkleError::Outside(format!("--size {size}: the log holds {through} events")));
    }
    Ok((StoreTree { store, through, chunk: None }, size))
}

fn proof_error(e: ProofError<FoldError>) -> MerkleError {
    match e {
        ProofError::Tree(e) => MerkleError::Fold(e),
        other => MerkleError::Outside(other.to_string()),
    }
}

/// The size (all of the log when `None`) and root of the tree of the log's first `size` events.
pub fn digest(store: &dyn EventStore, size: Option<u64>) -> Result<(u64, Hash), MerkleError> {
    let (mut tree, size) = tree(store, size)?;
    Ok((size, poolbill_merkle::root(&mut tree, size)?))
}

/// The event at `position` (1-based) and its audit path in the tree of the first `size` events
/// (all when `None`), with that tree's size.
pub fn inclusion(store: &dyn EventStore, position: u64, size: Option<u64>) -> Result<(u64, Envelope, Vec<Hash>), MerkleError> {
    let (mut tree, size) = tree(store, size)?;
    if position == 0 || position > size {
        return Err(MerkleError::Outside(format!("--position {position}: the tree holds positions 1 to {size}")));
    }
    let path = poolbill_merkle::inclusion_proof(&mut tree, position - 1, size).map_err(proof_error)?;
    let envelope = store.read_at(position)?.ok_or_else(|| MerkleError::Outside(format!("--position {position}: no such event")))?;
    Ok((size, envelope, path))
}

/// The consistency proof from the tree of the first `old_size` events to that of the first
/// `size` (all when `None`): the two roots, the size and the path.
pub fn consistency(store: &dyn EventStore, old_size: u64, size: Option<u64>) -> Result<(Hash, Hash, u64, Vec<Hash>), MerkleError> {
    let (mut tree, size) = tree(store, size)?;
    if old_size > size {
        return Err(MerkleError::Outside(format!("--consistency {old_size}: larger than the tree of {size} events")));
    }
    let old_root = poolbill_merkle::root(&mut tree, old_size)?;
    let root = poolbill_merkle::root(&mut tree, size)?;
    let path = poolbill_merkle::consistency_proof(&mut tree, old_size, size).map_err(proof_error)?;
    Ok((old_root, root, size, path))
}

/// Check the store's Merkle index against its log without writing: every complete chunk's kept
/// root and the tail's leaf hashes recomputed from the events. Returns how many events the
/// index covers; a difference is `Corrupt` naming the chunk's first position.
pub fn check_index(store: &dyn EventStore) -> Result<u64, FoldError> {
    let through = store.merkle_through()?;
    let complete = through / MERKLE_CHUNK;
    let kept_roots = store.merkle_chunk_roots(0, complete)?;
    let kept_tail = store.merkle_tail()?;
    let mut leaves = Vec::with_capacity(MERKLE_CHUNK as usize);
    for envelope in store.read_all(1).take(through as usize) {
        let envelope = envelope?;
        let position = envelope.position;
        leaves.push(poolbill_projections::leaf_hash(&envelope).map_err(|source| ProjectionError { position, source })?);
        if leaves.len() as u64 == MERKLE_CHUNK {
            let chunk = (position - 1) / MERKLE_CHUNK;
            if kept_roots[chunk as usize] != perfect_root(&leaves) {
                let first = chunk * MERKLE_CHUNK + 1;
                let detail = format!(
                    "the Merkle index's root of positions {first}..={position} is not that of their events: the log or its index was changed"
                );
                return Err(StoreError::Corrupt { position: first, detail }.into());
            }
            leaves.clear();
        }
    }
    if leaves != kept_tail {
        let first = complete * MERKLE_CHUNK + 1;
        let detail = format!("the Merkle index's leaves from position {first} on are not those of their events: the log or its index was changed");
        return Err(StoreError::Corrupt { position: first, detail }.into());
    }
    Ok(through)
}

#[cfg(test)]
mod tests {
    use super::*;
    use poolbill_merkle::{verify_consistency, verify_inclusion, Leaves};
    use poolbill_store::conformance::{req, ts, T0};

    /// A top-up of `i` cents on account `a`, in the binary encoding the engine writes.
    fn top_up(account: &str, i: u64) -> poolbill_store::NewEvent {
        let amount = rust_decimal::Decimal::new(i as i64, 2);
        let event = poolbill_domain::Event::ToppedUp { account: account.to_string(), amount, balance_after: amount };
        poolbill_projections::new_event(&event, ts(T0))
    }

    /// A store of `n` events and their leaf hashes computed one by one.
    fn store_of(n: u64) -> (poolbill_store_sled::SledStore, Vec<Hash>) {
        let store = poolbill_store_sled::SledStore::temporary().unwrap();
        let events = (0..n).map(|i| top_up(if i % 3 == 0 { "a" } else { "b" }, i)).collect();
        store.append(req(Some("c"), events)).unwrap();
        let leaves = store.read_all(1).map(|e| poolbill_projections::leaf_hash(&e.unwrap()).unwrap()).collect();
        (store, leaves)
    }

    fn memory_root(leaves: &[Hash], size: u64) -> Hash {
        poolbill_merkle::root(&mut Leaves(leaves), size).unwrap()
    }

    #[test]
    fn roots_and_proofs_from_the_index_are_those_of_the_leaves() {
        let n = 3 * MERKLE_CHUNK + 17;
        let (store, leaves) = store_of(n);
        assert_eq!(store.merkle_through().unwrap(), 0, "nothing indexed before a reader asks");
        for size in [0, 1, 2, 255, 256, 257, 511, 512, 513, 768, n] {
            assert_eq!(digest(&store, Some(size)).unwrap(), (size, memory_root(&leaves, size)), "size {size}");
        }
        assert_eq!(store.merkle_through().unwrap(), n, "brought up to date by the first question");
        let root = memory_root(&leaves, n);
        for position in [1, 2, 256, 257, 300, 512, 513, 768, 769, n] {
            let (size, envelope, path) = inclusion(&store, position, None).unwrap();
            assert_eq!((size, envelope.position), (n, position));
            assert!(verify_inclusion(&poolbill_projections::leaf_hash(&envelope).unwrap(), position - 1, n, &path, &root), "position {position}");
        }
        for old in [1, 100, 256, 257, 600, n - 1, n] {
            let (old_root, new_root, size, path) = consistency(&store, old, None).unwrap();
            assert_eq!((old_root, new_root, size), (memory_root(&leaves, old), root, n));
            assert!(verify_consistency(old, n, &old_root, &root, &path), "{old} -> {n}");
        }
    }

    #[test]
    fn the_index_is_checked_against_the_events() {
        let (store, _) = store_of(2 * MERKLE_CHUNK + 5);
        assert_eq!(check_index(&store).unwrap(), 0, "nothing indexed yet is nothing to check");
        catch_up_indexes(&store).unwrap();
        assert_eq!(check_index(&store).unwrap(), 2 * MERKLE_CHUNK + 5);
    }

    #[test]
    fn a_tree_over_other_leaves_is_caught_where_a_proof_goes_down_to_them() {
        let (store, leaves) = store_of(MERKLE_CHUNK + 3);
        // An index built from other leaves than the events' (as if the log were rewritten
        // after it was indexed).
        let mut other: Vec<(u64, Hash)> = leaves.iter().enumerate().map(|(i, h)| (i as u64 + 1, *h)).collect();
        other[7].1[0] ^= 1;
        store.merkle_extend(&other).unwrap();
        match check_index(&store) {
            Err(FoldError::Store(StoreError::Corrupt { position: 1, detail })) => assert!(detail.contains("1..=256"), "{detail}"),
            other => panic!("{other:?}"),
        }
        match inclusion(&store, 8, None) {
            Err(MerkleError::Fold(FoldError::Store(StoreError::Corrupt { position: 1, detail }))) => assert!(detail.contains("1..=256"), "{detail}"),
            other => panic!("{other:?}"),
        }
        // Proofs that never go down into the chunk take the index's word for it.
        assert!(inclusion(&store, MERKLE_CHUNK + 2, None).is_ok());
    }

    #[test]
    fn questions_outside_the_log_are_refused_naming_them() {
        let (store, _) = store_of(10);
        let outside = |e: MerkleError| match e {
            MerkleError::Outside(message) => message,
            other => panic!("{other:?}"),
        };
        assert!(outside(digest(&store, Some(11)).unwrap_err()).contains("--size 11: the log holds 10 events"));
        assert!(outside(inclusion(&store, 0, None).unwrap_err()).contains("--position 0"));
        assert!(outside(inclusion(&store, 6, Some(5)).unwrap_err()).contains("positions 1 to 5"));
        assert!(outside(consistency(&store, 7, Some(6)).unwrap_err()).contains("--consistency 7"));
    }

    #[test]
    fn the_index_grows_with_the_log_and_old_roots_stay() {
        let (store, _) = store_of(300);
        let (_, at_300) = digest(&store, None).unwrap();
        let more = (0..400).map(|i| top_up("c", i)).collect();
        store.append(req(Some("d"), more)).unwrap();
        assert_eq!(digest(&store, Some(300)).unwrap(), (300, at_300));
        let (size, root) = digest(&store, None).unwrap();
        let (old_root, _, _, path) = consistency(&store, 300, None).unwrap();
        assert_eq!((size, old_root), (700, at_300));
        assert!(verify_consistency(300, 700, &at_300, &root, &path));
    }
}
