//! A binary Merkle tree over row hashes (BLAKE3).
//!
//! Leaves are hashed pairwise level by level; a level with an odd count
//! carries its last node up unchanged. A proof lists the sibling of each
//! level where one exists, from the leaf upward.

/// Hash length in bytes.
pub const HASH_LEN: usize = 32;

type Hash = [u8; HASH_LEN];

fn node(left: &Hash, right: &Hash) -> Hash {
    let mut h = blake3::Hasher::new();
    h.update(b"tabnode-pof node");
    h.update(left);
    h.update(right);
    *h.finalize().as_bytes()
}

/// All levels of the tree, leaves first.
#[derive(Debug, Clone)]
pub struct MerkleTree {
    levels: Vec<Vec<Hash>>,
}

impl MerkleTree {
    /// Builds the tree over `leaves` (at least one).
    pub fn new(leaves: Vec<Hash>) -> Self {
        let mut levels = vec![leaves];
        while levels.last().map_or(0, Vec::len) > 1 {
            let prev = levels.last().map(Vec::as_slice).unwrap_or(&[]);
            let next = prev
                .chunks(2)
                .map(|p| {
                    if p.len() == 2 {
                        node(&p[0], &p[1])
                    } else {
                        p[0]
                    }
                })
                .collect();
            levels.push(next);
        }
        Self { levels }
    }

    /// The root (all zeros for an empty tree).
    pub fn root(&self) -> Hash {
        self.levels
            .last()
            .and_then(|l| l.first())
            .copied()
            .unwrap_or([0; HASH_LEN])
    }

    /// The proof for leaf `index`.
    pub fn proof(&self, mut index: usize) -> Vec<Hash> {
        let mut path = Vec::new();
        for level in &self.levels[..self.levels.len().saturating_sub(1)] {
            let sibling = index ^ 1;
            if sibling < level.len() {
                path.push(level[sibling]);
            }
            index /= 2;
        }
        path
    }
}

/// Checks that `leaf` is leaf `index` of a tree of `n_leaves` with `root`.
pub fn verify(root: &Hash, leaf: &Hash, mut index: usize, n_leaves: usize, path: &[Hash]) -> bool {
    if index >= n_leaves {
        return false;
    }
    let mut acc = *leaf;
    let mut width = n_leaves;
    let mut siblings = path.iter();
    while width > 1 {
        let sibling = index ^ 1;
        if sibling < width {
            let Some(s) = siblings.next() else {
                return false;
            };
            acc = if index.is_multiple_of(2) {
                node(&acc, s)
            } else {
                node(s, &acc)
            };
        }
        index /= 2;
        width = width.div_ceil(2);
    }
    siblings.next().is_none() && &acc == root
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n)
            .map(|i| *blake3::hash(&(i as u64).to_le_bytes()).as_bytes())
            .collect()
    }

    #[test]
    fn every_leaf_proves_for_many_sizes() {
        for n in [1, 2, 3, 5, 7, 8, 13, 64, 100] {
            let l = leaves(n);
            let t = MerkleTree::new(l.clone());
            for (i, leaf) in l.iter().enumerate() {
                let p = t.proof(i);
                assert!(verify(&t.root(), leaf, i, n, &p), "n={n} i={i}");
            }
        }
    }

    #[test]
    fn tampering_fails() {
        let l = leaves(13);
        let t = MerkleTree::new(l.clone());
        let root = t.root();
        let p = t.proof(6);
        // Wrong leaf, wrong index, wrong width, flipped sibling, extra or
        // missing sibling, index out of range.
        assert!(!verify(&root, &l[5], 6, 13, &p));
        assert!(!verify(&root, &l[6], 7, 13, &p));
        // The last leaf of 13 is carried up; a 14-wide reading needs a sibling.
        assert!(!verify(&root, &l[12], 12, 14, &t.proof(12)));
        let mut bad = p.clone();
        bad[1][0] ^= 1;
        assert!(!verify(&root, &l[6], 6, 13, &bad));
        let mut long = p.clone();
        long.push([0; HASH_LEN]);
        assert!(!verify(&root, &l[6], 6, 13, &long));
        assert!(!verify(&root, &l[6], 6, 13, &p[..p.len() - 1]));
        assert!(!verify(&root, &l[6], 13, 13, &p));
    }
}
