use super::*;
use proptest::prelude::*;

/// RFC 6962's MTH written as the RFC writes it, on leaf data: the reference the fast paths are
/// checked against.
fn naive_root(leaves: &[Vec<u8>]) -> Hash {
    match leaves.len() {
        0 => Sha256::digest([]).into(),
        1 => {
            let mut data = vec![0u8];
            data.extend_from_slice(&leaves[0]);
            Sha256::digest(&data).into()
        }
        n => {
            let k = (1..n).map(|i| 1usize << i).take_while(|&p| p < n).last().unwrap_or(1);
            let mut data = vec![1u8];
            data.extend_from_slice(&naive_root(&leaves[..k]));
            data.extend_from_slice(&naive_root(&leaves[k..]));
            Sha256::digest(&data).into()
        }
    }
}

/// RFC 6962's PATH, as written.
fn naive_path(m: usize, leaves: &[Vec<u8>]) -> Vec<Hash> {
    let n = leaves.len();
    if n <= 1 {
        return vec![];
    }
    let k = (0..).map(|i| 1usize << i).take_while(|&p| p < n).last().unwrap();
    if m < k {
        let mut p = naive_path(m, &leaves[..k]);
        p.push(naive_root(&leaves[k..]));
        p
    } else {
        let mut p = naive_path(m - k, &leaves[k..]);
        p.push(naive_root(&leaves[..k]));
        p
    }
}

/// RFC 6962's SUBPROOF, as written.
fn naive_subproof(m: usize, leaves: &[Vec<u8>], b: bool) -> Vec<Hash> {
    let n = leaves.len();
    if m == n {
        return if b { vec![] } else { vec![naive_root(leaves)] };
    }
    let k = (0..).map(|i| 1usize << i).take_while(|&p| p < n).last().unwrap();
    if m <= k {
        let mut p = naive_subproof(m, &leaves[..k], b);
        p.push(naive_root(&leaves[k..]));
        p
    } else {
        let mut p = naive_subproof(m - k, &leaves[k..], false);
        p.push(naive_root(&leaves[..k]));
        p
    }
}

/// The eight leaves of the Certificate Transparency test tree.
fn ct_leaves() -> Vec<Vec<u8>> {
    ["", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f"]
        .iter()
        .map(|h| (0..h.len() / 2).map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).unwrap()).collect())
        .collect()
}

fn hashes(leaves: &[Vec<u8>]) -> Vec<Hash> {
    leaves.iter().map(|l| leaf_hash(l)).collect()
}

fn data(n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| format!("event {i}").into_bytes()).collect()
}

#[test]
fn the_empty_tree_is_the_hash_of_nothing() {
    assert_eq!(to_hex(&empty_root()), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    assert_eq!(root(&mut Leaves(&[]), 0).unwrap(), empty_root());
    assert_eq!(Frontier::new().root(), empty_root());
}

#[test]
fn leaves_and_nodes_are_domain_separated() {
    // SHA-256(0x00): the hash of an empty leaf.
    assert_eq!(to_hex(&leaf_hash(b"")), "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d");
    let (a, b) = (leaf_hash(b"a"), leaf_hash(b"b"));
    let mut concatenated = a.to_vec();
    concatenated.extend_from_slice(&b);
    assert_ne!(node_hash(&a, &b), leaf_hash(&concatenated), "a node is never a leaf over the same bytes");
}

/// The roots of the first 1..8 leaves of the CT test tree, as published with it; also checked
/// against the RFC's definition written out above.
#[test]
fn the_certificate_transparency_test_tree_has_its_published_roots() {
    let published = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];
    let leaves = ct_leaves();
    let hashed = hashes(&leaves);
    let mut frontier = Frontier::new();
    for (n, expected) in (1..=8).zip(published) {
        frontier.push(hashed[n - 1]);
        assert_eq!(to_hex(&naive_root(&leaves[..n])), expected, "the RFC's MTH of {n} leaves");
        assert_eq!(to_hex(&root(&mut Leaves(&hashed), n as u64).unwrap()), expected, "root of {n} leaves");
        assert_eq!(to_hex(&frontier.root()), expected, "frontier of {n} leaves");
    }
}

#[test]
fn proofs_of_the_test_tree_are_the_rfcs_and_verify() {
    let leaves = ct_leaves();
    let hashed = hashes(&leaves);
    for n in 1..=8u64 {
        let tree_root = naive_root(&leaves[..n as usize]);
        for m in 0..n {
            let path = inclusion_proof(&mut Leaves(&hashed), m, n).unwrap();
            assert_eq!(path, naive_path(m as usize, &leaves[..n as usize]), "PATH({m}, D[{n}])");
            assert!(verify_inclusion(&hashed[m as usize], m, n, &path, &tree_root), "leaf {m} of {n}");
        }
        for old in 1..=n {
            let proof = consistency_proof(&mut Leaves(&hashed), old, n).unwrap();
            assert_eq!(proof, naive_subproof(old as usize, &leaves[..n as usize], true), "PROOF({old}, D[{n}])");
            assert!(verify_consistency(old, n, &naive_root(&leaves[..old as usize]), &tree_root, &proof), "{old} -> {n}");
        }
    }
}

#[test]
fn proofs_outside_the_tree_are_refused() {
    let hashed = hashes(&data(5));
    assert_eq!(inclusion_proof(&mut Leaves(&hashed), 5, 5), Err(ProofError::LeafOutside { index: 5, size: 5 }));
    assert_eq!(consistency_proof(&mut Leaves(&hashed), 6, 5), Err(ProofError::OldSizeLarger { old_size: 6, size: 5 }));
    let r = root(&mut Leaves(&hashed), 5).unwrap();
    assert!(!verify_inclusion(&hashed[0], 5, 5, &[], &r));
    assert!(!verify_consistency(6, 5, &r, &r, &[]));
    assert!(!verify_consistency(3, 5, &r, &r, &[]), "growth needs a proof");
    assert!(verify_consistency(0, 5, &empty_root(), &r, &[]), "every tree extends the empty one");
    assert!(!verify_consistency(0, 5, &r, &r, &[]));
    assert!(verify_consistency(5, 5, &r, &r, &[]));
}

#[test]
fn hex_round_trips_and_names_what_is_wrong() {
    let h = leaf_hash(b"x");
    assert_eq!(from_hex(&to_hex(&h)), Ok(h));
    assert_eq!(from_hex(&to_hex(&h).to_uppercase()), Ok(h));
    assert!(from_hex("abc").unwrap_err().contains("64 hex digits"));
    assert!(from_hex(&"zz".repeat(32)).unwrap_err().contains("not hex"));
    assert!(from_hex(&"é".repeat(32)).is_err());
}

/// A byte of a proof's inputs flipped: `which` picks the leaf, a path node or the root.
fn flip(hash: &mut Hash, byte: usize, bit: u8) {
    hash[byte % 32] ^= 1 << (bit % 8);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn frontier_and_subtrees_agree_with_the_rfc(n in 0usize..300) {
        let leaves = data(n);
        let hashed = hashes(&leaves);
        let mut frontier = Frontier::new();
        hashed.iter().for_each(|h| frontier.push(*h));
        let expected = naive_root(&leaves);
        prop_assert_eq!(frontier.root(), expected);
        prop_assert_eq!(frontier.size(), n as u64);
        prop_assert_eq!(root(&mut Leaves(&hashed), n as u64).unwrap(), expected);
    }

    #[test]
    fn every_inclusion_proof_verifies_and_any_flipped_byte_fails(
        n in 1u64..600, m in any::<prop::sample::Index>(), which in any::<prop::sample::Index>(), byte in 0usize..32, bit in 0u8..8,
    ) {
        let hashed = hashes(&data(n as usize));
        let m = m.index(n as usize) as u64;
        let tree_root = root(&mut Leaves(&hashed), n).unwrap();
        let mut path = inclusion_proof(&mut Leaves(&hashed), m, n).unwrap();
        let mut leaf = hashed[m as usize];
        prop_assert!(verify_inclusion(&leaf, m, n, &path, &tree_root));
        if n > 1 {
            prop_assert!(!verify_inclusion(&leaf, (m + 1) % n, n, &path, &tree_root), "another index");
        }
        let mut r = tree_root;
        match which.index(path.len() + 2) {
            0 => flip(&mut leaf, byte, bit),
            1 => flip(&mut r, byte, bit),
            i => flip(&mut path[i - 2], byte, bit),
        }
        prop_assert!(!verify_inclusion(&leaf, m, n, &path, &r));
    }

    #[test]
    fn every_consistency_proof_verifies_and_any_flipped_byte_fails(
        n in 1u64..600, old in any::<prop::sample::Index>(), which in any::<prop::sample::Index>(), byte in 0usize..32, bit in 0u8..8,
    ) {
        let hashed = hashes(&data(n as usize));
        let old = old.index(n as usize) as u64 + 1;
        let (mut old_root, mut new_root) = (root(&mut Leaves(&hashed), old).unwrap(), root(&mut Leaves(&hashed), n).unwrap());
        let mut path = consistency_proof(&mut Leaves(&hashed), old, n).unwrap();
        prop_assert!(verify_consistency(old, n, &old_root, &new_root, &path));
        match which.index(path.len() + 2) {
            0 => flip(&mut old_root, byte, bit),
            1 => flip(&mut new_root, byte, bit),
            i => flip(&mut path[i - 2], byte, bit),
        }
        prop_assert!(!verify_consistency(old, n, &old_root, &new_root, &path));
    }

    /// An old tree whose leaves differ from the new tree's prefix has no consistency proof.
    #[test]
    fn a_rewritten_prefix_is_not_consistent(n in 2u64..300, old in any::<prop::sample::Index>(), changed in any::<prop::sample::Index>()) {
        let leaves = data(n as usize);
        let hashed = hashes(&leaves);
        let old = old.index(n as usize - 1) as u64 + 1;
        let mut rewritten = hashed.clone();
        rewritten[changed.index(old as usize)] = leaf_hash(b"rewritten");
        let old_root = root(&mut Leaves(&hashed), old).unwrap();
        let new_root = root(&mut Leaves(&rewritten), n).unwrap();
        let path = consistency_proof(&mut Leaves(&rewritten), old, n).unwrap();
        prop_assert!(!verify_consistency(old, n, &old_root, &new_root, &path));
    }
}
