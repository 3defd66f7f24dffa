//! Activation quantizers: an `f32` activation vector becomes Q8_0, Q8_1 or
//! Q8_K blocks once, before the integer dot products of [`super::scalar`].
//!
//! The rules are ggml's `quantize_row_q8_0_ref`, `_q8_1_ref` and `_q8_K_ref`
//! with one deliberate difference: values are rounded half to even
//! ([`f32::round_ties_even`]) everywhere. ggml's scalar Q8_0/Q8_1 code uses C
//! `roundf` (ties away from zero) while its x86 code rounds to even and its
//! wasm code truncates, so ggml itself is not consistent; ties to even is what
//! every SIMD instruction set does natively (`_mm256_round_ps` nearest, NEON
//! `vrndnq`, wasm `f32x4_nearest`), so one rule makes every kernel path
//! produce the same blocks. The results differ from ggml's scalar reference
//! only where `x/d` is exactly half way between two integers. Q8_K already
//! rounds to even in ggml (`nearest_int`), so it matches bit for bit.
//!
//! Non-finite inputs give blocks of no particular meaning, but never panic.

use super::{f16_to_f32, f32_to_f16, GgmlType, QuantError, QK, QK_K};

/// One Q8_0 block: 32 values `q·d`. ggml stores `d` as an f16; here it is
/// that f16's value as an `f32` (exactly, every f16 is an f32), so the
/// kernels load eight blocks' scales as floats instead of converting them
/// per row ([`QuantizedActivation::to_bytes`] writes ggml's layout).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockQ8_0 {
    /// Quantized values.
    pub qs: [i8; QK],
    /// Scale (an f16 value).
    pub d: f32,
}

/// One Q8_1 block: Q8_0 plus `s = d·Σq` (the activation format of Q4_1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockQ8_1 {
    /// Quantized values.
    pub qs: [i8; QK],
    /// Scale (an f16 value).
    pub d: f32,
    /// `d·Σqs` computed with the f32 scale, rounded to an f16 value.
    pub s: f32,
}

/// `x` rounded to the nearest f16 value (ties to even), as an f32.
fn f16_value(x: f32) -> f32 {
    f16_to_f32(f32_to_f16(x))
}

/// One Q8_K block: 256 values `q·d` with the sums of each 16 (the activation
/// format of the K formats).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockQ8K {
    /// Scale (may be negative, as in ggml).
    pub d: f32,
    /// Quantized values.
    pub qs: [i8; QK_K],
    /// `bsums[j] = Σ qs[16j..16j + 16]`.
    pub bsums: [i16; QK_K / 16],
}

/// What the four-token kernels read of an activation block besides its
/// values, eight blocks at a time ([`Tok`]).
pub trait BlockLanes {
    /// The scale.
    fn d(&self) -> f32;
    /// Q8_1's `s` (0 for the other formats).
    fn s(&self) -> f32 {
        0.0
    }
    /// `Σ qs` of a 32-value block (0 for Q8_K, whose kernels use `bsums`).
    fn sum(&self) -> i32 {
        0
    }
}

fn sum_qs(qs: &[i8]) -> i32 {
    qs.iter().map(|&q| i32::from(q)).sum()
}

impl BlockLanes for BlockQ8_0 {
    fn d(&self) -> f32 {
        self.d
    }
    fn sum(&self) -> i32 {
        sum_qs(&self.qs)
    }
}

impl BlockLanes for BlockQ8_1 {
    fn d(&self) -> f32 {
        self.d
    }
    fn s(&self) -> f32 {
        self.s
    }
    fn sum(&self) -> i32 {
        sum_qs(&self.qs)
    }
}

impl BlockLanes for BlockQ8K {
    fn d(&self) -> f32 {
        self.d
    }
}

/// One token's activation blocks as the four-token kernels take them: each
/// block's scale, `s` and value sum laid out in arrays (zero-padded to a
/// multiple of eight), so that a kernel loads eight blocks' worth with one
/// plain load. Built once per matrix product and token instead of gathered
/// again for every weight row.
#[derive(Debug, Clone)]
pub struct Tok<'a, Y> {
    /// The blocks.
    pub blocks: &'a [Y],
    /// `blocks[b].d()` at `b`, then zeros.
    pub d: Vec<f32>,
    /// `blocks[b].s()` at `b`, then zeros.
    pub s: Vec<f32>,
    /// `blocks[b].sum()` at `b`, then zeros.
    pub sum: Vec<i32>,
}

impl<'a, Y: BlockLanes> Tok<'a, Y> {
    /// The lanes of `blocks`.
    pub fn new(blocks: &'a [Y]) -> Self {
        let len = blocks.len().next_multiple_of(8);
        let lanes = |f: &dyn Fn(&Y) -> f32| -> Vec<f32> {
            let mut v: Vec<f32> = blocks.iter().map(f).collect();
            v.resize(len, 0.0);
            v
        };
        let mut sum: Vec<i32> = blocks.iter().map(Y::sum).collect();
        sum.resize(len, 0);
        Tok {
            blocks,
            d: lanes(&Y::d),
            s: lanes(&Y::s),
            sum,
        }
    }
}

/// `(d, 1/d or 0)` of a Q8_0/Q8_1 block: `d = max|x| / 127`.
fn q8_scale(x: &[f32; QK]) -> (f32, f32) {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    (d, id)
}

/// `round_ties_even(v)` as `i8` (saturating; in range for every finite
/// block because `|x·id| ≤ 127` up to rounding).
#[inline]
fn round_i8(v: f32) -> i8 {
    round_even(v) as i8
}

/// 1.5·2²³: adding it to an `f32` of magnitude below 2²² leaves no bits
/// below the units, so the addition rounds to an integer (ties to even, the
/// IEEE default) and the subtraction is exact.
const ROUNDER: f32 = 12_582_912.0;

/// [`f32::round_ties_even`] for `|v| < 2²²` without a library call
/// (`round_ties_even` compiles to a call to `rintf` on x86-64 without
/// SSE4.1, a tenth of the decode step's quantization time). Larger
/// magnitudes come out within 1 of it, which the saturating `as i8` of the
/// callers maps to the same ±127/−128; NaN stays NaN (→ 0), ±∞ stays ±∞.
#[inline]
fn round_even(v: f32) -> f32 {
    (v + ROUNDER) - ROUNDER
}

/// Quantizes 32 values to Q8_0: `d = max|x| / 127` (stored as f16),
/// `q = round(x · (1/d))` with the f32 `d`; an all-zero block gives `d = 0`.
pub fn quantize_q8_0(x: &[f32; QK]) -> BlockQ8_0 {
    let (d, id) = q8_scale(x);
    let mut qs = [0i8; QK];
    for (q, &v) in qs.iter_mut().zip(x) {
        *q = round_i8(v * id);
    }
    BlockQ8_0 {
        qs,
        d: f16_value(d),
    }
}

/// Quantizes 32 values to Q8_1: as [`quantize_q8_0`], plus
/// `s = f16(d · Σq)` with the f32 `d` (ggml's `quantize_row_q8_1_ref`).
pub fn quantize_q8_1(x: &[f32; QK]) -> BlockQ8_1 {
    let (d, id) = q8_scale(x);
    let mut qs = [0i8; QK];
    let mut sum = 0i32;
    for (q, &v) in qs.iter_mut().zip(x) {
        *q = round_i8(v * id);
        sum += i32::from(*q);
    }
    BlockQ8_1 {
        qs,
        d: f16_value(d),
        s: f16_value(sum as f32 * d),
    }
}

/// Quantizes 256 values to Q8_K (ggml's `quantize_row_q8_K_ref`): `max` is
/// the value of largest magnitude, `iscale = −127 / max`,
/// `q = min(127, round(iscale · x))`, `d = 1 / iscale` (so `d` has the
/// opposite sign of `max`), `bsums` the sums of each 16. An all-zero block
/// gives `d = 0`.
pub fn quantize_q8_k(x: &[f32; QK_K]) -> BlockQ8K {
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &v in x {
        let a = v.abs();
        if a > amax {
            amax = a;
            max = v;
        }
    }
    let mut block = BlockQ8K {
        d: 0.0,
        qs: [0; QK_K],
        bsums: [0; QK_K / 16],
    };
    if amax == 0.0 {
        return block;
    }
    let iscale = -127.0 / max;
    for (q, &v) in block.qs.iter_mut().zip(x) {
        *q = round_even(iscale * v).min(127.0) as i8;
    }
    for (sum, qs) in block.bsums.iter_mut().zip(block.qs.chunks_exact(16)) {
        // 16 values of at most 128 in magnitude: no overflow.
        *sum = qs.iter().map(|&q| i16::from(q)).sum();
    }
    block.d = 1.0 / iscale;
    block
}

/// An activation vector quantized once for the dot products of one weight
/// format (see [`GgmlType::vec_dot_type`]). The default is an empty Q8_0
/// vector.
// Variant names are ggml's type names.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, PartialEq)]
pub enum QuantizedActivation {
    /// For Q4_0, Q5_0 and Q8_0 weights.
    Q8_0(Vec<BlockQ8_0>),
    /// For Q4_1 weights.
    Q8_1(Vec<BlockQ8_1>),
    /// For Q4_K, Q5_K and Q6_K weights.
    Q8_K(Vec<BlockQ8K>),
}

impl Default for QuantizedActivation {
    fn default() -> Self {
        QuantizedActivation::Q8_0(Vec::new())
    }
}

impl QuantizedActivation {
    /// Quantizes `x` to `ty` (Q8_0, Q8_1 or Q8_K).
    ///
    /// # Errors
    /// [`QuantError::NotActivation`] for another type,
    /// [`QuantError::PartialBlock`] when `x` is not a whole number of blocks.
    pub fn quantize(ty: GgmlType, x: &[f32]) -> Result<Self, QuantError> {
        let mut q = QuantizedActivation::default();
        q.quantize_into(ty, x)?;
        Ok(q)
    }

    /// The activations for weights of type `weight`: `x` quantized to its
    /// [`GgmlType::vec_dot_type`].
    ///
    /// # Errors
    /// [`QuantError::NoVecDot`] when `weight` has no quantized dot product,
    /// [`QuantError::PartialBlock`] as [`QuantizedActivation::quantize`].
    pub fn for_weight(weight: GgmlType, x: &[f32]) -> Result<Self, QuantError> {
        let ty = weight.vec_dot_type().ok_or(QuantError::NoVecDot(weight))?;
        Self::quantize(ty, x)
    }

    /// Quantizes `x` to `ty` into this buffer, reusing its allocation when
    /// the format stays the same (a decode step quantizes every activation
    /// vector into one such buffer).
    ///
    /// # Errors
    /// [`QuantError::NotActivation`] for a type other than Q8_0, Q8_1, Q8_K
    /// (the buffer is unchanged), [`QuantError::PartialBlock`] when `x` is
    /// not a whole number of blocks (the buffer is then left empty).
    pub fn quantize_into(&mut self, ty: GgmlType, x: &[f32]) -> Result<(), QuantError> {
        if ty != self.ty() {
            *self = match ty {
                GgmlType::Q8_0 => QuantizedActivation::Q8_0(Vec::new()),
                GgmlType::Q8_1 => QuantizedActivation::Q8_1(Vec::new()),
                GgmlType::Q8_K => QuantizedActivation::Q8_K(Vec::new()),
                other => return Err(QuantError::NotActivation(other)),
            };
        }
        let block = ty.block_size();
        let bad = !x.len().is_multiple_of(block);
        match self {
            QuantizedActivation::Q8_0(v) => {
                v.clear();
                if !bad {
                    v.extend(x.as_chunks::<QK>().0.iter().map(quantize_q8_0));
                }
            }
            QuantizedActivation::Q8_1(v) => {
                v.clear();
                if !bad {
                    v.extend(x.as_chunks::<QK>().0.iter().map(quantize_q8_1));
                }
            }
            QuantizedActivation::Q8_K(v) => {
                v.clear();
                if !bad {
                    v.extend(x.as_chunks::<QK_K>().0.iter().map(quantize_q8_k));
                }
            }
        }
        if bad {
            return Err(QuantError::PartialBlock {
                ty,
                len: x.len(),
                block,
            });
        }
        Ok(())
    }

    /// The format.
    pub fn ty(&self) -> GgmlType {
        match self {
            QuantizedActivation::Q8_0(_) => GgmlType::Q8_0,
            QuantizedActivation::Q8_1(_) => GgmlType::Q8_1,
            QuantizedActivation::Q8_K(_) => GgmlType::Q8_K,
        }
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        match self {
            QuantizedActivation::Q8_0(v) => v.len() * QK,
            QuantizedActivation::Q8_1(v) => v.len() * QK,
            QuantizedActivation::Q8_K(v) => v.len() * QK_K,
        }
    }

    /// True when there are no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The blocks in ggml's byte layout (what [`super::dequantize_row`] and
    /// ggml read).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(self.len() / self.ty().block_size() * self.ty().block_bytes());
        let qs = |out: &mut Vec<u8>, qs: &[i8]| out.extend(qs.iter().map(|&q| q as u8));
        match self {
            QuantizedActivation::Q8_0(v) => {
                for b in v {
                    out.extend(f32_to_f16(b.d).to_le_bytes());
                    qs(&mut out, &b.qs);
                }
            }
            QuantizedActivation::Q8_1(v) => {
                for b in v {
                    out.extend(f32_to_f16(b.d).to_le_bytes());
                    out.extend(f32_to_f16(b.s).to_le_bytes());
                    qs(&mut out, &b.qs);
                }
            }
            QuantizedActivation::Q8_K(v) => {
                for b in v {
                    out.extend(b.d.to_le_bytes());
                    qs(&mut out, &b.qs);
                    out.extend(b.bsums.iter().flat_map(|s| s.to_le_bytes()));
                }
            }
        }
        out
    }

    /// The values the blocks stand for (`q·d`, with the f16 `d` of Q8_0/Q8_1).
    pub fn dequantize(&self) -> Vec<f32> {
        fn values(qs: &[i8], d: f32) -> impl Iterator<Item = f32> + '_ {
            qs.iter().map(move |&q| f32::from(q) * d)
        }
        match self {
            QuantizedActivation::Q8_0(v) => v.iter().flat_map(|b| values(&b.qs, b.d)).collect(),
            QuantizedActivation::Q8_1(v) => v.iter().flat_map(|b| values(&b.qs, b.d)).collect(),
            QuantizedActivation::Q8_K(v) => v.iter().flat_map(|b| values(&b.qs, b.d)).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::Rng;
    use super::*;

    /// A token's lanes: every block's scale, `s` and value sum in order,
    /// zeros up to the next multiple of eight.
    #[test]
    fn token_lanes_hold_each_blocks_scale_and_sum_then_zeros() {
        let mut rng = Rng(11);
        for n in [0usize, 1, 8, 9] {
            let x = activations(&mut rng, n * QK);
            let QuantizedActivation::Q8_1(blocks) =
                QuantizedActivation::quantize(GgmlType::Q8_1, &x).expect("q8_1")
            else {
                panic!("Q8_1")
            };
            let t = Tok::new(&blocks);
            let len = n.next_multiple_of(8);
            assert_eq!((t.d.len(), t.s.len(), t.sum.len()), (len, len, len));
            for (b, block) in blocks.iter().enumerate() {
                let sum: i32 = block.qs.iter().map(|&q| i32::from(q)).sum();
                assert_eq!((t.d[b], t.s[b], t.sum[b]), (block.d, block.s, sum));
            }
            assert!(t.d[n..].iter().chain(&t.s[n..]).all(|&v| v == 0.0));
            assert!(t.sum[n..].iter().all(|&v| v == 0));
        }
    }

    /// Activations of mixed scales, some blocks all zero.
    fn activations(rng: &mut Rng, n: usize) -> Vec<f32> {
        let mut x: Vec<f32> = (0..n).map(|_| rng.unit()).collect();
        for (i, c) in x.chunks_mut(32).enumerate() {
            let scale = [1.0, 1e-3, 0.0, 37.0, 1e-6][i % 5];
            c.iter_mut().for_each(|v| *v *= scale);
        }
        x
    }

    #[test]
    fn q8_0_and_q8_1_round_trip_within_half_a_step() {
        let mut rng = Rng(1);
        let x = activations(&mut rng, 32 * 40);
        for ty in [GgmlType::Q8_0, GgmlType::Q8_1] {
            let q = QuantizedActivation::quantize(ty, &x).expect("quantize");
            assert_eq!((q.ty(), q.len()), (ty, x.len()));
            let back = q.dequantize();
            let bytes = q.to_bytes();
            assert_eq!(super::super::dequantize(ty, &bytes).expect("bytes"), back);
            for (b, (xs, ys)) in x.chunks(32).zip(back.chunks(32)).enumerate() {
                // d is the f32 step; the stored step is f16(d), which moves a
                // value by at most 127·|d − f16(d)|.
                let amax = xs.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let d = amax / 127.0;
                let dh = f16_to_f32(f32_to_f16(d));
                let bound = d / 2.0 * (1.0 + 1e-6) + 127.0 * (d - dh).abs();
                for (i, (x, y)) in xs.iter().zip(ys).enumerate() {
                    assert!(
                        (x - y).abs() <= bound,
                        "{ty} block {b} value {i}: {x} vs {y}"
                    );
                }
            }
        }
    }

    #[test]
    fn q8_1_sum_is_the_f16_of_d_times_the_sum_of_qs() {
        let mut rng = Rng(2);
        let x = activations(&mut rng, 32 * 10);
        let QuantizedActivation::Q8_1(blocks) =
            QuantizedActivation::quantize(GgmlType::Q8_1, &x).expect("quantize")
        else {
            panic!("not Q8_1");
        };
        for (b, xs) in blocks.iter().zip(x.chunks(32)) {
            let d = xs.iter().fold(0.0f32, |m, v| m.max(v.abs())) / 127.0;
            let sum: i32 = b.qs.iter().map(|&q| i32::from(q)).sum();
            assert_eq!(b.s, f16_to_f32(f32_to_f16(sum as f32 * d)));
        }
    }

    #[test]
    fn q8_k_round_trip_and_block_sums() {
        let mut rng = Rng(3);
        let x = activations(&mut rng, 256 * 6);
        let q = QuantizedActivation::quantize(GgmlType::Q8_K, &x).expect("quantize");
        let QuantizedActivation::Q8_K(blocks) = &q else {
            panic!("not Q8_K");
        };
        let back = q.dequantize();
        for (blk, (xs, ys)) in blocks.iter().zip(x.chunks(256).zip(back.chunks(256))) {
            let amax = xs.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let bound = blk.d.abs() / 2.0 * (1.0 + 1e-5);
            assert!((blk.d.abs() - amax / 127.0).abs() <= amax / 127.0 * 1e-6);
            for (x, y) in xs.iter().zip(ys) {
                assert!((x - y).abs() <= bound, "{x} vs {y}, d {}", blk.d);
            }
            for (j, s) in blk.bsums.iter().enumerate() {
                let want: i32 = blk.qs[16 * j..16 * j + 16]
                    .iter()
                    .map(|&q| i32::from(q))
                    .sum();
                assert_eq!(i32::from(*s), want);
            }
            // The largest magnitude maps to −127 (ggml's sign convention).
            if amax > 0.0 {
                assert_eq!(blk.qs.iter().map(|q| q.unsigned_abs()).max(), Some(127));
            }
        }
        let bytes = q.to_bytes();
        assert_eq!(bytes.len(), 6 * 292);
        assert_eq!(
            super::super::dequantize(GgmlType::Q8_K, &bytes).expect("bytes"),
            back
        );
    }

    #[test]
    fn an_all_zero_block_has_scale_zero() {
        let z32 = [0.0f32; 32];
        assert_eq!(
            quantize_q8_0(&z32),
            BlockQ8_0 {
                d: 0.0,
                qs: [0; 32]
            }
        );
        assert_eq!(
            quantize_q8_1(&z32),
            BlockQ8_1 {
                d: 0.0,
                s: 0.0,
                qs: [0; 32]
            }
        );
        let k = quantize_q8_k(&[0.0; 256]);
        assert_eq!((k.d, k.qs, k.bsums), (0.0, [0; 256], [0; 16]));
    }

    #[test]
    fn the_rounding_trick_equals_round_ties_even_as_i8() {
        let mut rng = Rng(9);
        let special = [
            0.5,
            1.5,
            2.5,
            -0.5,
            -1.5,
            126.5,
            127.5,
            -127.5,
            -128.5,
            4194303.5,
            4194304.0,
            8388609.0,
            1e9,
            -1e9,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            -0.0,
        ];
        let random = (0..100_000).map(|_| rng.unit() * 140.0);
        for v in special.into_iter().chain(random) {
            assert_eq!(round_i8(v), v.round_ties_even() as i8, "{v}");
            let k = round_even(v).min(127.0) as i8;
            assert_eq!(k, v.round_ties_even().min(127.0) as i8, "{v}");
        }
    }

    #[test]
    fn ties_round_to_even() {
        // amax 127 gives d = 1 exactly, so x/d is x: 2.5 → 2, 3.5 → 4,
        // −0.5 → 0 (ggml's roundf would give 3, 4, −1).
        let mut x = [0.0f32; 32];
        x[..4].copy_from_slice(&[127.0, 2.5, 3.5, -0.5]);
        let b = quantize_q8_0(&x);
        assert_eq!(b.d, 1.0);
        assert_eq!(&b.qs[..4], &[127, 2, 4, 0]);
        let mut x = [0.0f32; 256];
        x[..4].copy_from_slice(&[-127.0, 2.5, 3.5, -0.5]);
        let k = quantize_q8_k(&x); // iscale = 1
        assert_eq!(k.d, 1.0);
        assert_eq!(&k.qs[..4], &[-127, 2, 4, 0]);
    }

    #[test]
    fn bad_lengths_and_types_are_errors() {
        assert_eq!(
            QuantizedActivation::quantize(GgmlType::Q8_K, &[0.0; 300]),
            Err(QuantError::PartialBlock {
                ty: GgmlType::Q8_K,
                len: 300,
                block: 256
            })
        );
        assert_eq!(
            QuantizedActivation::quantize(GgmlType::Q4_0, &[0.0; 32]),
            Err(QuantError::NotActivation(GgmlType::Q4_0))
        );
        assert_eq!(
            QuantizedActivation::for_weight(GgmlType::F16, &[0.0; 32]),
            Err(QuantError::NoVecDot(GgmlType::F16))
        );
        let mut q = QuantizedActivation::for_weight(GgmlType::Q4_1, &[1.0; 64]).expect("q8_1");
        assert_eq!((q.ty(), q.len()), (GgmlType::Q8_1, 64));
        assert!(q.quantize_into(GgmlType::Q8_1, &[1.0; 33]).is_err());
        assert!(q.is_empty());
        q.quantize_into(GgmlType::Q8_1, &[1.0; 96])
            .expect("same type");
        assert_eq!((q.ty(), q.len()), (GgmlType::Q8_1, 96));
        q.quantize_into(GgmlType::Q8_K, &[1.0; 256])
            .expect("new type");
        assert_eq!((q.ty(), q.len()), (GgmlType::Q8_K, 256));
        assert_eq!(
            q.quantize_into(GgmlType::F32, &[1.0; 256]),
            Err(QuantError::NotActivation(GgmlType::F32))
        );
        assert_eq!(q.ty(), GgmlType::Q8_K);
        // The reused buffer holds what a fresh quantization gives.
        let fresh = QuantizedActivation::quantize(GgmlType::Q8_K, &[1.0; 256]).expect("fresh");
        assert_eq!(q, fresh);
    }
}
