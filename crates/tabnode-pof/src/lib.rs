//! Proof-of-FLOPS: a matrix-multiplication challenge that is exact on any
//! hardware, bound to the prover's identity and round, and verified in
//! O(k·n²) instead of O(n³).
//!
//! # The challenge
//!
//! 1. The verifier (the relay) derives a [`seed`](derive_seed) from its
//!    secret round value, the node's peer id, the round number and `n`, and
//!    sends it with `n` and a deadline. Nobody can prepare an answer before
//!    the seed is revealed, and an answer for one peer or round is useless
//!    for another.
//! 2. Both sides [`expand`] the seed into `A` and `B` (`n × n`, row-major,
//!    entries integers in `[-8, 7]` stored as `f32`) with the BLAKE3 XOF.
//!    Every partial sum of a row-times-column product is at most
//!    `64·n < 2²⁴` in magnitude (for `n ≤` [`MAX_N`]), so f32 represents every
//!    intermediate exactly: any summation order, on any GPU or CPU, gives the
//!    same `C = A·B` bit for bit, while the work is real f32 matmul.
//! 3. The prover computes `C`, hashes each row ([`row_hash`]), builds a
//!    [`MerkleTree`] over the row hashes and commits to its root before the
//!    deadline. The claimed rate is `2n³ / (time from challenge to commit)`,
//!    measured by the verifier.
//! 4. The verifier then sends a [`Query`]: a fresh 32-byte nonce from which
//!    the random vector `r` (entries mod the prime `P = 2⁶¹ − 1`) and `k`
//!    row indices are derived.
//! 5. The prover [`answers`](Prover::answer) with `y = C·r mod P` and the `k`
//!    rows with their Merkle paths.
//! 6. The verifier ([`verify`]) regenerates `A` and `B` and checks
//!    `A·(B·r) ≡ y (mod P)` (Freivalds), each opened row against the root,
//!    each opened row against `y` (`row·r ≡ yᵢ`), and each opened row against
//!    `Aᵢ·B`.
//!
//! # False-accept probability
//!
//! Say the committed matrix `C'` differs from `A·B` in a fraction `f` of its
//! rows. Either `y` agrees with `C'·r` on all those rows, and then `y ≠ A·B·r`
//! except with probability `1/P ≈ 4.3·10⁻¹⁹` (Freivalds over a prime field,
//! `r` chosen after the commitment), or it disagrees on some wrong row, which
//! is caught when one of the `k` uniformly drawn rows lands on it. So a
//! cheater is accepted with probability at most `(1 − f)ᵏ + 1/P`. With the
//! default `k =` [`DEFAULT_K`] = 64: a prover that skips 10% of the rows
//! passes with probability ≤ 0.9⁶⁴ ≈ 1.2·10⁻³ per challenge (and it saved only
//! 10% of the work); one that skips half passes with ≤ 5.4·10⁻²⁰; a forged or
//! random `C` (`f = 1`) is accepted with probability ≤ 4.3·10⁻¹⁹.
//!
//! # Costs
//!
//! Prover: `2n³` flops plus `n²` hashing. Verifier: expand `A`, `B` (`2n²`
//! XOF bytes ×½), `B·r` and `A·(B·r)` (`2n²` modular multiply-adds), and `k`
//! row checks of `n²` each, so `O(k·n²)`; the prover's answer is `8n` bytes of
//! `y` plus `k` rows of `4n` bytes with `⌈log₂ n⌉` hashes each.

mod field;
#[cfg(feature = "gpu")]
pub mod gpu;
mod merkle;
pub mod session;

use serde::{Deserialize, Serialize};

pub use field::P;
pub use merkle::{MerkleTree, HASH_LEN};

/// Largest `n` for which every partial sum stays below 2²⁴ (`64·n < 2²⁴`).
pub const MAX_N: u32 = (1 << 24) / 64 - 1;

/// The fewest rows a verifier may open: with fewer, a prover that skips
/// most of the work passes too often (and with none, a random root plus the
/// true `y = A·(B·r)` passes with no matmul at all).
pub const MIN_K: u32 = 32;

/// Rows opened per challenge by default.
pub const DEFAULT_K: u32 = 64;

/// The protocol version, part of every derivation context.
pub const VERSION: u32 = 1;

/// A 32-byte hash.
pub type Hash = [u8; HASH_LEN];

/// Why a challenge cannot be set up or an answer is rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PofError {
    /// `n` is zero or too large to stay exact.
    #[error("matrix size {0} is outside 1..={MAX_N}")]
    BadSize(u32),
    /// `n × n` elements do not fit this platform's address space (wasm32
    /// from `n = 65536` on).
    #[error("a {0}×{0} matrix does not fit this platform's address space")]
    TooLarge(u32),
    /// The challenge is larger than the node said it can hold.
    #[error("matrix size {n} is above the {max} this node advertised")]
    AboveAdvertised {
        /// Asked for.
        n: u32,
        /// Advertised.
        max: u32,
    },
    /// An opening for a round that has no commitment.
    #[error("nothing committed for round {0}")]
    NotCommitted(u64),
    /// A buffer has the wrong length.
    #[error("{what} has {got} elements, expected {expected}")]
    WrongLength {
        /// Which buffer.
        what: &'static str,
        /// Its length.
        got: usize,
        /// The length it must have.
        expected: usize,
    },
    /// `y = C·r` does not match `A·(B·r)`.
    #[error("Freivalds check failed at row {row}")]
    Freivalds {
        /// First row where they differ.
        row: u32,
    },
    /// The answer opens different rows than the query asked for.
    #[error("opened rows {got:?} differ from the queried rows {expected:?}")]
    WrongRows {
        /// Rows opened.
        got: Vec<u32>,
        /// Rows asked for.
        expected: Vec<u32>,
    },
    /// An opened row's Merkle path does not lead to the committed root.
    #[error("row {row} does not match the committed root")]
    MerklePath {
        /// The row.
        row: u32,
    },
    /// An opened row disagrees with `y`.
    #[error("row {row} is inconsistent with C·r")]
    RowInconsistent {
        /// The row.
        row: u32,
    },
    /// An opened row is not `Aᵢ·B`.
    #[error("row {row} is not A[{row}]·B")]
    RowWrong {
        /// The row.
        row: u32,
    },
    /// A value of `C` is not an integer within the exact range.
    #[error("C[{row}][{col}] = {value} is not an exact integer result")]
    NotExact {
        /// Row.
        row: u32,
        /// Column.
        col: u32,
        /// The value.
        value: f32,
    },
}

/// Derives the seed of a challenge.
///
/// `round_secret` stays with the verifier until the challenge is sent; the
/// seed binds the matrices to this `peer`, this `round` and this `n`.
pub fn derive_seed(round_secret: &[u8; 32], peer: &[u8], round: u64, n: u32) -> Hash {
    let mut h = blake3::Hasher::new_keyed(round_secret);
    h.update(b"tabnode-pof seed");
    h.update(&VERSION.to_le_bytes());
    h.update(&(peer.len() as u64).to_le_bytes());
    h.update(peer);
    h.update(&round.to_le_bytes());
    h.update(&n.to_le_bytes());
    *h.finalize().as_bytes()
}

/// Checks that `n` keeps every partial sum exact.
///
/// # Errors
/// [`PofError::BadSize`].
pub fn check_n(n: u32) -> Result<(), PofError> {
    if n == 0 || n > MAX_N {
        return Err(PofError::BadSize(n));
    }
    Ok(())
}

/// The number of elements of an `n × n` matrix, with checked arithmetic:
/// on wasm32 `n * n` overflows `usize` from `n = 65536` on.
///
/// # Errors
/// [`PofError::BadSize`] outside `1..=MAX_N`, [`PofError::TooLarge`] when
/// the product does not fit `usize`.
pub fn elements(n: u32) -> Result<usize, PofError> {
    check_n(n)?;
    (n as usize)
        .checked_mul(n as usize)
        .ok_or(PofError::TooLarge(n))
}

/// An upper bound of the encoded size of an [`Answer`] for size `n` with
/// `k` opened rows (postcard: varint `u64`s of at most 10 bytes, zig-zag
/// `i32`s of at most 5, 32-byte path hashes, length prefixes), so a
/// verifier can keep `n` below its message limit.
pub fn answer_size_bound(n: u32, k: u32) -> u64 {
    // Merkle path length: ⌈log₂ n⌉.
    let depth = u64::from(u32::BITS - n.saturating_sub(1).leading_zeros());
    let k = u64::from(k.min(n));
    let n = u64::from(n);
    let row = 5 + 5 + n * 5 + 5 + depth * HASH_LEN as u64;
    16 + 10 * n + k * row
}

/// The largest `n` whose [`Answer`] with `k` rows fits in `limit` bytes.
pub fn max_n_for_message(k: u32, limit: u64) -> u32 {
    // answer_size_bound grows with n: bisect.
    let (mut lo, mut hi) = (0u32, MAX_N);
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if answer_size_bound(mid, k) <= limit {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    lo
}

/// The largest `n` whose three `n × n` f32 matrices fit in `vram_bytes`, and
/// whose one matrix fits in a storage binding of `max_binding` bytes, capped
/// by `cap` (the network's own limit) and by [`MAX_N`].
pub fn n_for_pledge(vram_bytes: u64, max_binding: u64, cap: u32) -> u32 {
    let by_vram = ((vram_bytes / 12) as f64).sqrt() as u64;
    let by_binding = ((max_binding / 4) as f64).sqrt() as u64;
    let n = by_vram
        .min(by_binding)
        .min(u64::from(cap))
        .min(u64::from(MAX_N));
    n as u32
}

fn matrix_xof(seed: &Hash, which: &[u8]) -> blake3::OutputReader {
    let mut h = blake3::Hasher::new_keyed(seed);
    h.update(b"tabnode-pof matrix ");
    h.update(which);
    h.finalize_xof()
}

/// Fills `out` with entries in `[-8, 7]` (two per XOF byte).
fn fill_matrix(seed: &Hash, which: &[u8], out: &mut [f32]) {
    let mut xof = matrix_xof(seed, which);
    let mut buf = [0u8; 4096];
    for chunk in out.chunks_mut(buf.len() * 2) {
        let bytes = chunk.len().div_ceil(2);
        xof.fill(&mut buf[..bytes]);
        for (i, v) in chunk.iter_mut().enumerate() {
            let b = buf[i / 2];
            let nibble = if i.is_multiple_of(2) {
                b & 0x0f
            } else {
                b >> 4
            };
            *v = f32::from(nibble) - 8.0;
        }
    }
}

/// Expands a seed into `A` and `B` (row-major `n × n`).
///
/// # Errors
/// [`PofError::BadSize`].
pub fn expand(seed: &Hash, n: u32) -> Result<(Vec<f32>, Vec<f32>), PofError> {
    let len = elements(n)?;
    let mut a = vec![0f32; len];
    let mut b = vec![0f32; len];
    fill_matrix(seed, b"A", &mut a);
    fill_matrix(seed, b"B", &mut b);
    Ok((a, b))
}

/// The CPU reference: `C = A·B` (row-major, cache-friendly i-k-j order).
///
/// This is the oracle for the GPU kernels, not the fast path.
pub fn matmul_cpu(a: &[f32], b: &[f32], n: usize) -> Vec<f32> {
    let mut c = vec![0f32; n * n];
    for i in 0..n {
        let row = &mut c[i * n..(i + 1) * n];
        for k in 0..n {
            let aik = a[i * n + k];
            if aik == 0.0 {
                continue;
            }
            let brow = &b[k * n..(k + 1) * n];
            for (cj, bj) in row.iter_mut().zip(brow) {
                *cj += aik * bj;
            }
        }
    }
    c
}

/// `C = A·B` with an optimised, multi-threaded CPU sgemm
/// (`matrixmultiply`): the prover of native nodes without a GPU, and the
/// reference the GPU kernel is benchmarked against. Exact like every other
/// order of summation (see the crate docs).
#[cfg(feature = "sgemm")]
pub fn matmul_sgemm(a: &[f32], b: &[f32], n: usize) -> Vec<f32> {
    let mut c = vec![0f32; n * n];
    if a.len() < n * n || b.len() < n * n {
        return c;
    }
    let s = n as isize;
    // SAFETY: a and b hold at least n×n elements (checked above), c exactly
    // n×n; all are row-major with row stride n and column stride 1, outlive
    // the call, and c aliases neither input.
    #[allow(unsafe_code)]
    unsafe {
        matrixmultiply::sgemm(
            n,
            n,
            n,
            1.0,
            a.as_ptr(),
            s,
            1,
            b.as_ptr(),
            s,
            1,
            0.0,
            c.as_mut_ptr(),
            s,
            1,
        );
    }
    c
}

/// Converts one row of `C` to exact integers.
///
/// # Errors
/// [`PofError::NotExact`] for a value that is not an integer of magnitude
/// below 2²⁴ (a NaN, an infinity, a fraction: not a result of this challenge).
pub fn row_to_ints(row: &[f32], index: u32) -> Result<Vec<i32>, PofError> {
    row.iter()
        .enumerate()
        .map(|(j, &v)| {
            if v.is_finite() && v.fract() == 0.0 && v.abs() < 16_777_216.0 {
                Ok(v as i32)
            } else {
                Err(PofError::NotExact {
                    row: index,
                    col: j as u32,
                    value: v,
                })
            }
        })
        .collect()
}

/// The leaf hash of a row: BLAKE3 over its index and little-endian `i32`s.
pub fn row_hash(index: u32, row: &[i32]) -> Hash {
    let mut h = blake3::Hasher::new();
    h.update(b"tabnode-pof row");
    h.update(&index.to_le_bytes());
    for v in row {
        h.update(&v.to_le_bytes());
    }
    *h.finalize().as_bytes()
}

/// The verifier's second message: where to look.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Query {
    /// Fresh randomness, drawn after the commitment arrived.
    pub nonce: Hash,
    /// Rows to open.
    pub k: u32,
}

impl Query {
    /// The random vector `r` (entries in `[0, P)`).
    pub fn r(&self, n: u32) -> Vec<u64> {
        let mut h = blake3::Hasher::new_keyed(&self.nonce);
        h.update(b"tabnode-pof r");
        let mut xof = h.finalize_xof();
        let mut out = Vec::with_capacity(n as usize);
        let mut buf = [0u8; 8];
        while out.len() < n as usize {
            xof.fill(&mut buf);
            // 61 bits, rejection-sampled for uniformity mod P.
            let v = u64::from_le_bytes(buf) >> 3;
            if v < P {
                out.push(v);
            }
        }
        out
    }

    /// The `k` rows to open: distinct, sorted, uniform (all rows if `k ≥ n`).
    pub fn rows(&self, n: u32) -> Vec<u32> {
        if self.k >= n {
            return (0..n).collect();
        }
        let mut h = blake3::Hasher::new_keyed(&self.nonce);
        h.update(b"tabnode-pof rows");
        let mut xof = h.finalize_xof();
        let mut picked = std::collections::BTreeSet::new();
        let mut buf = [0u8; 8];
        while picked.len() < self.k as usize {
            xof.fill(&mut buf);
            // Rejection sampling for a uniform index.
            let v = u64::from_le_bytes(buf);
            let zone = u64::MAX - (u64::MAX % u64::from(n));
            if v < zone {
                picked.insert((v % u64::from(n)) as u32);
            }
        }
        picked.into_iter().collect()
    }
}

/// One opened row with its Merkle path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenedRow {
    /// Row index.
    pub index: u32,
    /// The row of `C` as exact integers.
    pub values: Vec<i32>,
    /// Sibling hashes from the leaf up to the root.
    pub path: Vec<Hash>,
}

/// The prover's answer to a [`Query`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    /// `y = C·r mod P`.
    pub cr: Vec<u64>,
    /// The queried rows.
    pub rows: Vec<OpenedRow>,
}

/// The prover's side, holding `C` between commitment and answer.
#[derive(Debug)]
pub struct Prover {
    n: u32,
    rows: Vec<Vec<i32>>,
    tree: MerkleTree,
}

impl Prover {
    /// Takes the computed `C` (row-major `n × n`) and builds the commitment.
    ///
    /// # Errors
    /// A wrong length, or values that are not exact integers.
    pub fn new(n: u32, c: &[f32]) -> Result<Self, PofError> {
        let len = elements(n)?;
        if c.len() != len {
            return Err(PofError::WrongLength {
                what: "C",
                got: c.len(),
                expected: len,
            });
        }
        let rows = c
            .chunks(n as usize)
            .enumerate()
            .map(|(i, row)| row_to_ints(row, i as u32))
            .collect::<Result<Vec<_>, _>>()?;
        let leaves = rows
            .iter()
            .enumerate()
            .map(|(i, r)| row_hash(i as u32, r))
            .collect();
        Ok(Self {
            n,
            rows,
            tree: MerkleTree::new(leaves),
        })
    }

    /// The Merkle root to commit to.
    pub fn root(&self) -> Hash {
        self.tree.root()
    }

    /// Answers a query.
    pub fn answer(&self, query: &Query) -> Answer {
        let r = query.r(self.n);
        let cr = self
            .rows
            .iter()
            .map(|row| field::dot_i32(row, &r))
            .collect();
        let rows = query
            .rows(self.n)
            .into_iter()
            .map(|i| OpenedRow {
                index: i,
                values: self.rows[i as usize].clone(),
                path: self.tree.proof(i as usize),
            })
            .collect();
        Answer { cr, rows }
    }
}

/// Verifies an answer against the challenge seed, the committed root and the
/// query. Returns `Ok(())` only if every check passes.
///
/// # Errors
/// The first failed check, as a [`PofError`].
pub fn verify(
    seed: &Hash,
    n: u32,
    root: &Hash,
    query: &Query,
    answer: &Answer,
) -> Result<(), PofError> {
    let (a, b) = expand(seed, n)?;
    verify_with(&a, &b, n, root, query, answer)
}

/// [`verify`] with `A` and `B` already expanded.
///
/// # Errors
/// The first failed check, as a [`PofError`].
pub fn verify_with(
    a: &[f32],
    b: &[f32],
    n: u32,
    root: &Hash,
    query: &Query,
    answer: &Answer,
) -> Result<(), PofError> {
    let len = elements(n)?;
    for (what, m) in [("A", a), ("B", b)] {
        if m.len() != len {
            return Err(PofError::WrongLength {
                what,
                got: m.len(),
                expected: len,
            });
        }
    }
    let nu = n as usize;
    if answer.cr.len() != nu {
        return Err(PofError::WrongLength {
            what: "C·r",
            got: answer.cr.len(),
            expected: nu,
        });
    }
    let r = query.r(n);
    // Freivalds: A·(B·r) ≡ y.
    let br: Vec<u64> = b.chunks(nu).map(|row| field::dot_f32(row, &r)).collect();
    for (i, row) in a.chunks(nu).enumerate() {
        let y = answer.cr[i];
        if y >= P || field::dot_f32(row, &br) != y {
            return Err(PofError::Freivalds { row: i as u32 });
        }
    }
    let expected = query.rows(n);
    let got: Vec<u32> = answer.rows.iter().map(|r| r.index).collect();
    if got != expected {
        return Err(PofError::WrongRows { got, expected });
    }
    for opened in &answer.rows {
        let i = opened.index;
        if opened.values.len() != nu {
            return Err(PofError::WrongLength {
                what: "opened row",
                got: opened.values.len(),
                expected: nu,
            });
        }
        let leaf = row_hash(i, &opened.values);
        if !merkle::verify(root, &leaf, i as usize, nu, &opened.path) {
            return Err(PofError::MerklePath { row: i });
        }
        if field::dot_i32(&opened.values, &r) != answer.cr[i as usize] {
            return Err(PofError::RowInconsistent { row: i });
        }
        // Aᵢ·B in f32: exact for the same reason the prover's matmul is
        // (every partial sum is an integer below 2²⁴), and it vectorises.
        let arow = &a[i as usize * nu..(i as usize + 1) * nu];
        let mut acc = vec![0f32; nu];
        for (k, &aik) in arow.iter().enumerate() {
            if aik == 0.0 {
                continue;
            }
            for (cj, &bkj) in acc.iter_mut().zip(&b[k * nu..(k + 1) * nu]) {
                *cj += aik * bkj;
            }
        }
        if acc
            .iter()
            .zip(&opened.values)
            .any(|(&e, &v)| e != v as f32 || v.unsigned_abs() >= 1 << 24)
        {
            return Err(PofError::RowWrong { row: i });
        }
    }
    Ok(())
}

/// Floating-point operations of one challenge (`2n³`).
pub fn flops(n: u32) -> f64 {
    2.0 * f64::from(n).powi(3)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: [u8; 32] = [7; 32];

    fn setup(n: u32, peer: &[u8], round: u64) -> (Hash, Vec<f32>, Vec<f32>, Vec<f32>) {
        let seed = derive_seed(&SECRET, peer, round, n);
        let (a, b) = expand(&seed, n).expect("expand");
        let c = matmul_cpu(&a, &b, n as usize);
        (seed, a, b, c)
    }

    fn query(tag: u8, k: u32) -> Query {
        Query {
            nonce: *blake3::hash(&[tag]).as_bytes(),
            k,
        }
    }

    #[test]
    fn entries_are_small_integers_and_deterministic() {
        let seed = derive_seed(&SECRET, b"peer", 1, 33);
        let (a, b) = expand(&seed, 33).expect("expand");
        assert_eq!((a.len(), b.len()), (33 * 33, 33 * 33));
        assert!(a
            .iter()
            .chain(&b)
            .all(|v| v.fract() == 0.0 && (-8.0..=7.0).contains(v)));
        assert_ne!(a, b);
        let distinct: std::collections::BTreeSet<i32> = a.iter().map(|&v| v as i32).collect();
        assert_eq!(distinct.len(), 16, "all 16 values occur");
        assert_eq!(expand(&seed, 33).expect("again"), (a, b));
        assert_eq!(expand(&seed, 0), Err(PofError::BadSize(0)));
        assert_eq!(expand(&seed, MAX_N + 1), Err(PofError::BadSize(MAX_N + 1)));
    }

    #[test]
    fn seeds_bind_peer_round_and_size() {
        let s = derive_seed(&SECRET, b"peer-a", 1, 64);
        assert_ne!(s, derive_seed(&SECRET, b"peer-b", 1, 64));
        assert_ne!(s, derive_seed(&SECRET, b"peer-a", 2, 64));
        assert_ne!(s, derive_seed(&SECRET, b"peer-a", 1, 65));
        assert_ne!(s, derive_seed(&[8; 32], b"peer-a", 1, 64));
    }

    #[test]
    fn the_cpu_reference_is_exact_in_any_order() {
        // Summing in reverse k order (another "device") gives the same bits.
        let n = 57;
        let (_, a, b, c) = setup(n, b"p", 1);
        let n = n as usize;
        for i in [0, 13, 56] {
            for j in [0, 31, 56] {
                let mut s = 0f32;
                for k in (0..n).rev() {
                    s += a[i * n + k] * b[k * n + j];
                }
                let exact: i64 = (0..n)
                    .map(|k| a[i * n + k] as i64 * b[k * n + j] as i64)
                    .sum();
                assert_eq!(s.to_bits(), c[i * n + j].to_bits());
                assert_eq!(s as i64, exact);
            }
        }
    }

    #[test]
    fn honest_proofs_verify_for_odd_sizes() {
        for n in [1, 2, 3, 17, 64, 97] {
            let (seed, _, _, c) = setup(n, b"peer", 5);
            let prover = Prover::new(n, &c).expect("prover");
            let q = query(n as u8, 8);
            let answer = prover.answer(&q);
            assert_eq!(answer.rows.len(), 8.min(n) as usize);
            verify(&seed, n, &prover.root(), &q, &answer).expect("honest proof verifies");
        }
    }

    #[test]
    fn a_wrong_value_in_c_is_rejected() {
        let n = 48;
        let (seed, _, _, mut c) = setup(n, b"peer", 1);
        c[5 * n as usize + 7] += 1.0;
        let prover = Prover::new(n, &c).expect("prover");
        let q = query(1, 8);
        // Consistent answer for the wrong C: Freivalds catches it.
        let err = verify(&seed, n, &prover.root(), &q, &prover.answer(&q)).expect_err("reject");
        assert!(matches!(err, PofError::Freivalds { .. }), "{err}");
    }

    #[test]
    fn ninety_percent_of_the_rows_is_rejected() {
        // Rows 90%..100% left at zero; y taken from the true product, so
        // Freivalds passes and only the openings can catch it.
        let n = 100u32;
        let (_, a, b, c) = setup(n, b"peer", 1);
        let mut lazy = c.clone();
        for v in &mut lazy[90 * n as usize..] {
            *v = 0.0;
        }
        let cheat = Prover::new(n, &lazy).expect("prover");
        let honest = Prover::new(n, &c).expect("prover");
        let q = query(2, DEFAULT_K);
        let mut answer = cheat.answer(&q);
        answer.cr = honest.answer(&q).cr;
        let err = verify_with(&a, &b, n, &cheat.root(), &q, &answer).expect_err("reject");
        assert!(
            matches!(err, PofError::RowInconsistent { row } if row >= 90),
            "{err}"
        );
    }

    /// The adaptive partial prover: `C` wrong in some rows, `y` the true
    /// `A·(B·r)` (cheap to get in O(n²)), rows opened from the wrong `C`.
    /// Freivalds then passes by construction; only the `k` opened rows can
    /// catch it, so it is accepted exactly when no wrong row is drawn.
    fn partial_prover_acceptances(wrong_rows: &[u32]) -> (usize, usize) {
        let n = 128u32;
        let (_, a, b, c) = setup(n, b"peer", 5);
        let mut cheat_c = c.clone();
        for &i in wrong_rows {
            cheat_c[i as usize * n as usize + 3] += 1.0;
        }
        let cheat = Prover::new(n, &cheat_c).expect("prover");
        let honest = Prover::new(n, &c).expect("prover");
        let (mut accepted, mut expected) = (0, 0);
        for i in 0..500u32 {
            let q = Query {
                nonce: *blake3::hash(&i.to_le_bytes()).as_bytes(),
                k: DEFAULT_K,
            };
            let mut answer = cheat.answer(&q);
            answer.cr = honest.answer(&q).cr;
            let caught = q.rows(n).iter().any(|r| wrong_rows.contains(r));
            match verify_with(&a, &b, n, &cheat.root(), &q, &answer) {
                Ok(()) => {
                    assert!(!caught, "nonce {i}: accepted with a wrong row drawn");
                    accepted += 1;
                }
                Err(PofError::RowInconsistent { row }) => {
                    assert!(wrong_rows.contains(&row), "nonce {i}: row {row}")
                }
                Err(e) => panic!("nonce {i}: unexpected rejection {e}"),
            }
            if !caught {
                expected += 1;
            }
        }
        (accepted, expected)
    }

    #[test]
    fn the_adaptive_partial_prover_passes_exactly_when_its_rows_are_not_drawn() {
        // One wrong row of 128 with k = 64: drawn half the time.
        let (accepted, expected) = partial_prover_acceptances(&[0]);
        assert_eq!(accepted, expected);
        assert!((200..300).contains(&accepted), "{accepted} of 500");
        // 1/8 of the rows wrong: P(none drawn) = C(112,64)/C(128,64) ≈ 1e-6.
        let eighth: Vec<u32> = (0..128).step_by(8).collect();
        assert_eq!(partial_prover_acceptances(&eighth), (0, 0));
    }

    #[test]
    fn sizes_use_checked_arithmetic_and_answers_fit_the_message_limit() {
        assert_eq!(elements(3), Ok(9));
        assert_eq!(elements(0), Err(PofError::BadSize(0)));
        // On a 64-bit host MAX_N² fits usize; on wasm32 65536² does not,
        // which `elements` reports instead of wrapping to 0.
        assert_eq!(
            elements(MAX_N),
            usize::try_from(u64::from(MAX_N) * u64::from(MAX_N))
                .map_err(|_| PofError::TooLarge(MAX_N))
        );
        // The bound really bounds the encoding.
        for (n, k) in [(1u32, 64u32), (7, 64), (96, 96), (300, 64)] {
            let (_, _, _, c) = setup(n, b"peer", 1);
            let answer = Prover::new(n, &c).expect("prover").answer(&query(1, k));
            let encoded = postcard::to_stdvec(&answer).expect("encode").len() as u64;
            assert!(encoded <= answer_size_bound(n, k), "n {n}: {encoded}");
        }
        let limit = 4 << 20;
        let max = max_n_for_message(DEFAULT_K, limit);
        assert!(answer_size_bound(max, DEFAULT_K) <= limit);
        assert!(answer_size_bound(max + 1, DEFAULT_K) > limit);
        assert!((10_000..16_000).contains(&max), "{max}");
    }

    #[test]
    fn replayed_answers_from_another_peer_or_round_are_rejected() {
        let n = 40;
        let (_, _, _, c_other_peer) = setup(n, b"other", 3);
        let (_, _, _, c_other_round) = setup(n, b"me", 2);
        let my_seed = derive_seed(&SECRET, b"me", 3, n);
        for c in [c_other_peer, c_other_round] {
            let p = Prover::new(n, &c).expect("prover");
            let q = query(3, 8);
            let err = verify(&my_seed, n, &p.root(), &q, &p.answer(&q)).expect_err("reject");
            assert!(matches!(err, PofError::Freivalds { .. }), "{err}");
        }
    }

    #[test]
    fn tampered_answers_are_rejected_with_the_reason() {
        let n = 32;
        let (_, a, b, c) = setup(n, b"peer", 9);
        let p = Prover::new(n, &c).expect("prover");
        let q = query(4, 4);
        let good = p.answer(&q);
        verify_with(&a, &b, n, &p.root(), &q, &good).expect("baseline");
        let check = |ans: &Answer| verify_with(&a, &b, n, &p.root(), &q, ans);

        let mut t = good.clone();
        t.cr.pop();
        assert!(matches!(
            check(&t),
            Err(PofError::WrongLength { what: "C·r", .. })
        ));
        let mut t = good.clone();
        t.cr[3] = (t.cr[3] + 1) % P;
        assert_eq!(check(&t), Err(PofError::Freivalds { row: 3 }));
        let mut t = good.clone();
        t.cr[0] = P; // not a field element
        assert_eq!(check(&t), Err(PofError::Freivalds { row: 0 }));
        let mut t = good.clone();
        t.rows.pop();
        assert!(matches!(check(&t), Err(PofError::WrongRows { .. })));
        let mut t = good.clone();
        t.rows[0].path[0][0] ^= 1;
        assert!(matches!(check(&t), Err(PofError::MerklePath { .. })));
        let mut t = good.clone();
        t.rows[1].values[2] += 1;
        assert!(matches!(check(&t), Err(PofError::MerklePath { .. })));
        let mut t = good.clone();
        t.rows[1].values.truncate(5);
        assert!(matches!(
            check(&t),
            Err(PofError::WrongLength {
                what: "opened row",
                ..
            })
        ));
        // A commitment to another root (e.g. sent for another challenge).
        let other = Prover::new(n, &vec![0.0; (n * n) as usize]).expect("zeros");
        assert!(matches!(
            verify_with(&a, &b, n, &other.root(), &q, &good),
            Err(PofError::MerklePath { .. })
        ));
        // Non-integer results are refused before committing.
        let mut frac = c.clone();
        frac[10] = 0.5;
        assert!(matches!(
            Prover::new(n, &frac),
            Err(PofError::NotExact { .. })
        ));
        let mut nan = c;
        nan[11] = f32::NAN;
        assert!(matches!(
            Prover::new(n, &nan),
            Err(PofError::NotExact { .. })
        ));
        assert!(matches!(
            Prover::new(n, &[1.0; 3]),
            Err(PofError::WrongLength { .. })
        ));
    }

    #[test]
    fn a_row_that_is_consistent_with_y_but_wrong_is_rejected() {
        // Commit a C' with one wrong row, send y = C'·r: Freivalds fails.
        // Send y = A·B·r instead: the opened wrong row is inconsistent.
        // Both paths end in a rejection; neither can pass.
        let n = 24;
        let (seed, _, _, c) = setup(n, b"peer", 4);
        let mut bad = c.clone();
        for v in &mut bad[..n as usize] {
            *v = 0.0;
        }
        let p = Prover::new(n, &bad).expect("prover");
        let q = query(5, n); // opens every row
        assert!(verify(&seed, n, &p.root(), &q, &p.answer(&q)).is_err());
        let mut a2 = p.answer(&q);
        a2.cr = Prover::new(n, &c).expect("honest").answer(&q).cr;
        assert_eq!(
            verify(&seed, n, &p.root(), &q, &a2),
            Err(PofError::RowInconsistent { row: 0 })
        );
    }

    #[test]
    fn many_forged_answers_are_all_rejected() {
        // 500 forgeries of several kinds against fresh queries: none passes.
        let n = 40;
        let (seed, a, b, c) = setup(n, b"peer", 11);
        let honest = Prover::new(n, &c).expect("honest");
        let mut rng = blake3::Hasher::new().update(b"forge").finalize_xof();
        let mut byte = || {
            let mut x = [0u8; 4];
            rng.fill(&mut x);
            u32::from_le_bytes(x)
        };
        let mut accepted = 0;
        for trial in 0..500u32 {
            let q = query((trial % 251) as u8, 16);
            let mut forged = c.clone();
            let (root, answer) = match trial % 5 {
                // Random matrix.
                0 => {
                    for v in &mut forged {
                        *v = (byte() % 1000) as f32 - 500.0;
                    }
                    let p = Prover::new(n, &forged).expect("p");
                    (p.root(), p.answer(&q))
                }
                // One wrong entry, consistent answer.
                1 => {
                    let i = (byte() % (n * n)) as usize;
                    forged[i] += 1.0 + (byte() % 5) as f32;
                    let p = Prover::new(n, &forged).expect("p");
                    (p.root(), p.answer(&q))
                }
                // Skip half the rows, borrow the true y.
                2 => {
                    for v in &mut forged[(n * n / 2) as usize..] {
                        *v = 0.0;
                    }
                    let p = Prover::new(n, &forged).expect("p");
                    let mut ans = p.answer(&q);
                    ans.cr = honest.answer(&q).cr;
                    (p.root(), ans)
                }
                // Honest rows, random y.
                3 => {
                    let mut ans = honest.answer(&q);
                    for y in &mut ans.cr {
                        *y = u64::from(byte()) % P;
                    }
                    (honest.root(), ans)
                }
                // Honest answer to a different query.
                _ => (
                    honest.root(),
                    honest.answer(&query(((trial + 1) % 251) as u8, 16)),
                ),
            };
            if verify_with(&a, &b, n, &root, &q, &answer).is_ok() {
                accepted += 1;
            }
        }
        assert_eq!(accepted, 0);
        // And the honest answer still passes.
        let q = query(9, 16);
        verify(&seed, n, &honest.root(), &q, &honest.answer(&q)).expect("honest");
    }

    #[test]
    fn queries_are_uniform_distinct_and_in_range() {
        let q = query(1, 10);
        let rows = q.rows(50);
        assert_eq!(rows.len(), 10);
        assert!(rows.windows(2).all(|w| w[0] < w[1]) && rows.iter().all(|&r| r < 50));
        assert_eq!(query(1, 99).rows(7), (0..7).collect::<Vec<_>>());
        let r = q.r(1000);
        assert!(r.iter().all(|&x| x < P));
        assert_ne!(query(1, 10).r(8), query(2, 10).r(8));
    }

    #[test]
    fn n_follows_the_pledge_and_the_device() {
        // 1 GiB pledge: 3·4·n² ≤ 2^30 → n = 9459.
        assert_eq!(n_for_pledge(1 << 30, 1 << 30, 16384), 9459);
        // A 128 MiB binding limit caps one matrix at 5792².
        assert_eq!(n_for_pledge(8 << 30, 128 << 20, 16384), 5792);
        assert_eq!(n_for_pledge(u64::MAX, u64::MAX, 4096), 4096);
        assert_eq!(n_for_pledge(0, 1 << 30, 4096), 0);
        assert!(n_for_pledge(u64::MAX, u64::MAX, u32::MAX) <= MAX_N);
    }
}
