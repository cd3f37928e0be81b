//! `poolbill-merkle`: the Merkle tree of RFC 6962 (Certificate Transparency) over a log, pure
//! and small: SHA-256 with leaf and node hashes domain-separated (`0x00 || data`,
//! `0x01 || left || right`), the tree hash of the first n leaves for any n (§2.1), inclusion
//! proofs (audit paths, §2.1.1) and consistency proofs (§2.1.2) with their verification (as
//! RFC 9162 §2.1.3.2 and §2.1.4.2 verify them), and an incremental builder that keeps only the
//! right frontier of the tree (O(log n) memory, each leaf hashed once).
//!
//! Where the hashes come from is the caller's: every algorithm reads the tree through
//! [`Subtrees`], the roots of complete, aligned subtrees, so that a store can answer from the
//! roots of the chunks it keeps and recompute leaves only where a proof goes down to them.
//! Leaves are numbered from 0.

use sha2::{Digest, Sha256};

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// The hash of a leaf: SHA-256(0x00 || data).
pub fn leaf_hash(data: &[u8]) -> Hash {
    Sha256::new().chain_update([0u8]).chain_update(data).finalize().into()
}

/// The hash of an inner node: SHA-256(0x01 || left || right).
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    Sha256::new().chain_update([1u8]).chain_update(left).chain_update(right).finalize().into()
}

/// The root of the empty tree: SHA-256 of nothing.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// The roots of complete subtrees of a tree: `size` leaves from leaf `start`, where `size` is a
/// power of two and `start` a multiple of it (a subtree of one leaf is that leaf's hash). Every
/// algorithm here asks only for such subtrees, and only within the tree it was given.
pub trait Subtrees {
    type Error;
    fn perfect(&mut self, start: u64, size: u64) -> Result<Hash, Self::Error>;
}

/// Leaf hashes in memory, as a [`Subtrees`]: each subtree is hashed from its leaves.
pub struct Leaves<'a>(pub &'a [Hash]);

impl Subtrees for Leaves<'_> {
    type Error = std::convert::Infallible;

    fn perfect(&mut self, start: u64, size: u64) -> Result<Hash, Self::Error> {
        let (start, size) = (start as usize, size as usize);
        Ok(perfect_root(&self.0[start..start + size]))
    }
}

/// The root of a complete tree over `leaves` (their count a power of two; one leaf is itself).
pub fn perfect_root(leaves: &[Hash]) -> Hash {
    debug_assert!(leaves.len().is_power_of_two(), "a complete subtree has a power of two leaves, not {}", leaves.len());
    match leaves.len() {
        1 => leaves[0],
        n => node_hash(&perfect_root(&leaves[..n / 2]), &perfect_root(&leaves[n / 2..])),
    }
}

/// The largest power of two smaller than `n` (n ≥ 2): where RFC 6962 splits a tree of n leaves.
fn split(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (63 - (n - 1).leading_zeros())
}

/// The tree hash of leaves `start..end` (RFC 6962 §2.1's MTH), from complete subtrees.
fn subtree_root<S: Subtrees + ?Sized>(tree: &mut S, start: u64, end: u64) -> Result<Hash, S::Error> {
    let n = end - start;
    if n == 0 {
        return Ok(empty_root());
    }
    if n.is_power_of_two() {
        return tree.perfect(start, n);
    }
    let k = split(n);
    Ok(node_hash(&subtree_root(tree, start, start + k)?, &subtree_root(tree, start + k, end)?))
}

/// The root of the first `size` leaves.
pub fn root<S: Subtrees + ?Sized>(tree: &mut S, size: u64) -> Result<Hash, S::Error> {
    subtree_root(tree, 0, size)
}

/// Why a proof cannot be made: the leaf or the old size is not in the tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProofError<E> {
    /// `index` is not below `size`.
    LeafOutside { index: u64, size: u64 },
    /// `old_size` is larger than `size`.
    OldSizeLarger { old_size: u64, size: u64 },
    /// Reading the tree failed.
    Tree(E),
}

impl<E: std::fmt::Display> std::fmt::Display for ProofError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProofError::LeafOutside { index, size } => write!(f, "leaf {index} is not in a tree of {size} leaves"),
            ProofError::OldSizeLarger { old_size, size } => write!(f, "an older tree of {old_size} leaves is larger than the tree of {size}"),
            ProofError::Tree(e) => e.fmt(f),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for ProofError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ProofError::Tree(e) => Some(e),
            _ => None,
        }
    }
}

/// The audit path of leaf `index` in the tree of the first `size` leaves (RFC 6962 §2.1.1's
/// PATH): the sibling hashes from the leaf up to the root.
pub fn inclusion_proof<S: Subtrees + ?Sized>(tree: &mut S, index: u64, size: u64) -> Result<Vec<Hash>, ProofError<S::Error>> {
    if index >= size {
        return Err(ProofError::LeafOutside { index, size });
    }
    let mut path = Vec::new();
    // Top down, then reversed: the RFC lists the deepest sibling first.
    let (mut start, mut end) = (0, size);
    while end - start > 1 {
        let k = split(end - start);
        if index < start + k {
            path.push(subtree_root(tree, start + k, end).map_err(ProofError::Tree)?);
            end = start + k;
        } else {
            path.push(subtree_root(tree, start, start + k).map_err(ProofError::Tree)?);
            start += k;
        }
    }
    path.reverse();
    Ok(path)
}

/// The consistency proof between the tree of the first `old_size` leaves and that of the first
/// `size` (RFC 6962 §2.1.2's PROOF). Empty when the sizes are equal or the old tree is empty
/// (every tree extends the empty one).
pub fn consistency_proof<S: Subtrees + ?Sized>(tree: &mut S, old_size: u64, size: u64) -> Result<Vec<Hash>, ProofError<S::Error>> {
    if old_size > size {
        return Err(ProofError::OldSizeLarger { old_size, size });
    }
    let mut proof = Vec::new();
    if old_size == 0 || old_size == size {
        return Ok(proof);
    }
    subproof(tree, old_size, 0, size, true, &mut proof).map_err(ProofError::Tree)?;
    Ok(proof)
}

/// SUBPROOF(m, D[start:end], whole): `m` counts leaves from `start`; `whole` says the old tree
/// is the whole of this subtree's left part so far (its root needs no proof).
fn subproof<S: Subtrees + ?Sized>(tree: &mut S, m: u64, start: u64, end: u64, whole: bool, proof: &mut Vec<Hash>) -> Result<(), S::Error> {
    let n = end - start;
    if m == n {
        if !whole {
            proof.push(subtree_root(tree, start, end)?);
        }
        return Ok(());
    }
    let k = split(n);
    if m <= k {
        subproof(tree, m, start, start + k, whole, proof)?;
        proof.push(subtree_root(tree, start + k, end)?);
    } else {
        subproof(tree, m - k, start + k, end, false, proof)?;
        proof.push(subtree_root(tree, start, start + k)?);
    }
    Ok(())
}

/// Whether `path` proves that the leaf hashed `leaf` is leaf `index` of the tree of `size`
/// leaves whose root is `root` (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(leaf: &Hash, index: u64, size: u64, path: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut f, mut s, mut r) = (index, size - 1, *leaf);
    for p in path {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    s == 0 && r == *root
}

/// Whether `path` proves that the tree of `size` leaves with root `root` extends the tree of
/// `old_size` leaves with root `old_root` (RFC 9162 §2.1.4.2).
pub fn verify_consistency(old_size: u64, size: u64, old_root: &Hash, root: &Hash, path: &[Hash]) -> bool {
    if old_size > size {
        return false;
    }
    if old_size == 0 {
        return path.is_empty() && *old_root == empty_root();
    }
    if old_size == size {
        return path.is_empty() && old_root == root;
    }
    if path.is_empty() {
        return false;
    }
    // An old tree that is a complete subtree is its own first node.
    let mut nodes = Vec::with_capacity(path.len() + 1);
    if old_size.is_power_of_two() {
        nodes.push(*old_root);
    }
    nodes.extend_from_slice(path);
    let (mut f, mut s) = (old_size - 1, size - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let (mut fr, mut sr) = (nodes[0], nodes[0]);
    for c in &nodes[1..] {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    fr == *old_root && sr == *root && s == 0
}

/// A tree built leaf by leaf, keeping only its right frontier: the roots of the complete
/// subtrees its leaves decompose into, largest first (one per bit of the count). A leaf costs
/// O(log n) hashes at worst and one on average; nothing is hashed twice.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    /// (leaves, root) of each complete subtree, sizes strictly decreasing.
    nodes: Vec<(u64, Hash)>,
}

impl Frontier {
    pub fn new() -> Frontier {
        Frontier::default()
    }

    /// How many leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Append a leaf by its hash.
    pub fn push(&mut self, leaf: Hash) {
        let mut node = (1, leaf);
        while let Some(&(size, left)) = self.nodes.last() {
            if size != node.0 {
                break;
            }
            self.nodes.pop();
            node = (size * 2, node_hash(&left, &node.1));
        }
        self.nodes.push(node);
        self.size += 1;
    }

    /// The root of the leaves so far (RFC 6962's MTH): the frontier folded from the right.
    pub fn root(&self) -> Hash {
        let mut nodes = self.nodes.iter().rev();
        let Some(&(_, last)) = nodes.next() else { return empty_root() };
        nodes.fold(last, |right, (_, left)| node_hash(left, &right))
    }
}

/// A hash as lower-case hex.
pub fn to_hex(hash: &Hash) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

/// A hash from 64 hex digits (either case), or what is wrong with the text.
pub fn from_hex(text: &str) -> Result<Hash, String> {
    if text.len() != 64 || !text.is_ascii() {
        return Err(format!("a hash is 64 hex digits, not {} characters", text.chars().count()));
    }
    let mut hash = [0u8; 32];
    for (i, byte) in hash.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|_| format!("{:?} is not hex", &text[2 * i..2 * i + 2]))?;
    }
    Ok(hash)
}

#[cfg(test)]
mod tests;
