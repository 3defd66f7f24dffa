//! Reference dot products of quantized weight rows with quantized
//! activations (llama.cpp's `ggml_vec_dot_*` pairings), and a matrix–vector
//! product over them. Portable safe scalar code: the oracle the SIMD kernels
//! are tested against.
//!
//! | weight | activation | per-block term `t` |
//! |---|---|---|
//! | Q4_0 | Q8_0 | `(dx·dy)·Σ(q−8)·y` |
//! | Q4_1 | Q8_1 | `(dx·dy)·Σq·y + mx·sy` |
//! | Q5_0 | Q8_0 | `(dx·dy)·Σ(q−16)·y` |
//! | Q8_0 | Q8_0 | `(dx·dy)·Σq·y` |
//! | Q4_K, Q5_K | Q8_K | `(dx·dy)·Σⱼ scⱼ·Σq·y − (dminx·dy)·Σⱼ mⱼ·Σy` |
//! | Q6_K | Q8_K | `(dx·dy)·Σⱼ scⱼ·Σ(q−32)·y` |
//!
//! The integer sums of a block are exact `i32` (at most about 2²⁶ in
//! magnitude, for Q5_K). The float part is fixed so that every later kernel
//! (AVX2, VNNI, NEON, wasm SIMD128) can reproduce it bit for bit: each
//! product and sum above is one f32 operation in the order written (the
//! integers converted to f32 first, no fused multiply-add), block `b`'s term
//! is added to lane `b % 8` of eight f32 accumulators starting at zero, and
//! the lanes are reduced as `((a0+a4) + (a2+a6)) + ((a1+a5) + (a3+a7))`
//! (halves first, as an 8-lane register or two 4-lane ones reduce).
//! Q4_1 uses the f16 `s` of its Q8_1 block, as ggml does.

use super::{
    f16_at, q5_0_values, q6_k_values, scale_min_k4, BlockQ8K, BlockQ8_0, BlockQ8_1, QTensor,
    QuantError, QuantizedActivation, Q4_0_BYTES, Q4_1_BYTES, Q4_K_BYTES, Q5_0_BYTES, Q5_K_BYTES,
    Q6_K_BYTES, Q8_0_BYTES, QK,
};

/// The fixed reduction of the eight accumulator lanes.
#[inline]
pub fn reduce_lanes(a: [f32; 8]) -> f32 {
    ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]))
}

/// Sums per-block terms: term `b` into lane `b % 8`, then [`reduce_lanes`].
#[inline]
pub fn accumulate(terms: impl IntoIterator<Item = f32>) -> f32 {
    let mut acc = [0.0f32; 8];
    for (b, t) in terms.into_iter().enumerate() {
        acc[b % 8] += t;
    }
    reduce_lanes(acc)
}

/// `Σ (q − 8)·y` of a Q4_0 block.
#[inline]
pub(crate) fn isum_q4_0(x: &[u8; Q4_0_BYTES], y: &[i8; QK]) -> i32 {
    let mut sum = 0i32;
    for (j, &q) in x[2..].iter().enumerate() {
        sum += (i32::from(q & 15) - 8) * i32::from(y[j]);
        sum += (i32::from(q >> 4) - 8) * i32::from(y[j + 16]);
    }
    sum
}

/// `Σ q·y` of a Q4_1 block.
#[inline]
pub(crate) fn isum_q4_1(x: &[u8; Q4_1_BYTES], y: &[i8; QK]) -> i32 {
    let mut sum = 0i32;
    for (j, &q) in x[4..].iter().enumerate() {
        sum += i32::from(q & 15) * i32::from(y[j]);
        sum += i32::from(q >> 4) * i32::from(y[j + 16]);
    }
    sum
}

/// `Σ (q − 16)·y` of a Q5_0 block.
#[inline]
pub(crate) fn isum_q5_0(x: &[u8; Q5_0_BYTES], y: &[i8; QK]) -> i32 {
    q5_0_values(x)
        .iter()
        .zip(y)
        .map(|(&q, &y)| (i32::from(q) - 16) * i32::from(y))
        .sum()
}

/// `Σ q·y` of a Q8_0 block.
#[inline]
pub(crate) fn isum_q8_0(x: &[u8; Q8_0_BYTES], y: &[i8; QK]) -> i32 {
    x[2..]
        .iter()
        .zip(y)
        .map(|(&q, &y)| i32::from(q as i8) * i32::from(y))
        .sum()
}

/// `Σⱼ mⱼ·Σ y` of a Q4_K or Q5_K block (`scales` its 12 packed scale
/// bytes), from the Q8_K block sums (the SIMD kernels use it too).
#[inline]
pub(crate) fn msum_k(scales: &[u8], y: &BlockQ8K) -> i32 {
    let mut msum = 0i32;
    for c in 0..4 {
        let (_, m1) = scale_min_k4(2 * c, scales);
        let (_, m2) = scale_min_k4(2 * c + 1, scales);
        let b = &y.bsums[4 * c..4 * c + 4];
        msum += i32::from(m1) * (i32::from(b[0]) + i32::from(b[1]));
        msum += i32::from(m2) * (i32::from(b[2]) + i32::from(b[3]));
    }
    msum
}

/// `Σⱼ scⱼ·Σ q·y` of a Q4_K (`qh = None`) or Q5_K block (`qh` = its 32
/// high-bit bytes), `qs` its 128 nibble bytes.
#[inline]
fn isum_k(scales: &[u8], qs: &[u8], qh: Option<&[u8]>, y: &BlockQ8K) -> i32 {
    let mut isum = 0i32;
    for c in 0..4 {
        let (sc1, _) = scale_min_k4(2 * c, scales);
        let (sc2, _) = scale_min_k4(2 * c + 1, scales);
        let ys = &y.qs[64 * c..64 * c + 64];
        let (mut s1, mut s2) = (0i32, 0i32);
        for (l, &q) in qs[32 * c..32 * c + 32].iter().enumerate() {
            let h = qh.map_or(0, |qh| qh[l]);
            let lo = (q & 15) | (((h >> (2 * c)) & 1) << 4);
            let hi = (q >> 4) | (((h >> (2 * c + 1)) & 1) << 4);
            s1 += i32::from(lo) * i32::from(ys[l]);
            s2 += i32::from(hi) * i32::from(ys[l + 32]);
        }
        isum += i32::from(sc1) * s1 + i32::from(sc2) * s2;
    }
    isum
}

/// `(Σⱼ scⱼ·Σ q·y, Σⱼ mⱼ·Σ y)` of a Q4_K block (`Σ y` from the Q8_K block sums).
#[inline]
pub(crate) fn isum_q4_k(x: &[u8; Q4_K_BYTES], y: &BlockQ8K) -> (i32, i32) {
    (isum_k(&x[4..16], &x[16..], None, y), msum_k(&x[4..16], y))
}

/// `(Σⱼ scⱼ·Σ q·y, Σⱼ mⱼ·Σ y)` of a Q5_K block.
#[inline]
pub(crate) fn isum_q5_k(x: &[u8; Q5_K_BYTES], y: &BlockQ8K) -> (i32, i32) {
    (
        isum_k(&x[4..16], &x[48..], Some(&x[16..48]), y),
        msum_k(&x[4..16], y),
    )
}

/// `Σⱼ scⱼ·Σ (q − 32)·y` of a Q6_K block.
#[inline]
pub(crate) fn isum_q6_k(x: &[u8; Q6_K_BYTES], y: &BlockQ8K) -> i32 {
    let q = q6_k_values(x);
    let scales = &x[192..208];
    let mut isum = 0i32;
    for (j, &sc) in scales.iter().enumerate() {
        let s: i32 = q[16 * j..16 * j + 16]
            .iter()
            .zip(&y.qs[16 * j..16 * j + 16])
            .map(|(&q, &y)| i32::from(q) * i32::from(y))
            .sum();
        isum += i32::from(sc as i8) * s;
    }
    isum
}

/// The float part of a Q4_0, Q5_0 or Q8_0 block's term, `(dx·dy)·isum`
/// (`x` starts with the block's f16 `d`; `yd` is the activation block's).
#[inline]
pub(crate) fn term_d(x: &[u8], yd: f32, isum: i32) -> f32 {
    let d = f16_at(x, 0) * yd;
    d * isum as f32
}

/// The float part of a Q4_1 block's term.
#[inline]
pub(crate) fn term_q4_1(x: &[u8; Q4_1_BYTES], y: &BlockQ8_1, isum: i32) -> f32 {
    let d = f16_at(x, 0) * y.d;
    d * isum as f32 + f16_at(x, 2) * y.s
}

/// The float part of a Q4_K or Q5_K block's term (both start with the f16
/// `d` and `dmin`).
#[inline]
pub(crate) fn term_k_min(x: &[u8], yd: f32, isum: i32, msum: i32) -> f32 {
    term_k_min_of(f16_at(x, 0), f16_at(x, 2), yd, isum, msum)
}

/// [`term_k_min`] from the block's `d` and `dmin` as floats (converted
/// once for several tokens).
#[inline]
pub(crate) fn term_k_min_of(xd: f32, xdmin: f32, yd: f32, isum: i32, msum: i32) -> f32 {
    let d = xd * yd;
    let dmin = xdmin * yd;
    d * isum as f32 - dmin * msum as f32
}

/// The float part of a Q6_K block's term.
#[inline]
pub(crate) fn term_q6_k(x: &[u8; Q6_K_BYTES], yd: f32, isum: i32) -> f32 {
    term_q6_k_of(f16_at(x, 208), yd, isum)
}

/// [`term_q6_k`] from the block's `d` as a float.
#[inline]
pub(crate) fn term_q6_k_of(xd: f32, yd: f32, isum: i32) -> f32 {
    let d = xd * yd;
    d * isum as f32
}

/// Dot product of a Q4_0 row with Q8_0 activations (blocks paired in order,
/// up to the shorter of the two).
pub fn vec_dot_q4_0_q8_0(x: &[[u8; Q4_0_BYTES]], y: &[BlockQ8_0]) -> f32 {
    accumulate(
        x.iter()
            .zip(y)
            .map(|(x, y)| term_d(x, y.d, isum_q4_0(x, &y.qs))),
    )
}

/// Dot product of a Q4_1 row with Q8_1 activations.
pub fn vec_dot_q4_1_q8_1(x: &[[u8; Q4_1_BYTES]], y: &[BlockQ8_1]) -> f32 {
    accumulate(
        x.iter()
            .zip(y)
            .map(|(x, y)| term_q4_1(x, y, isum_q4_1(x, &y.qs))),
    )
}

/// Dot product of a Q5_0 row with Q8_0 activations.
pub fn vec_dot_q5_0_q8_0(x: &[[u8; Q5_0_BYTES]], y: &[BlockQ8_0]) -> f32 {
    accumulate(
        x.iter()
            .zip(y)
            .map(|(x, y)| term_d(x, y.d, isum_q5_0(x, &y.qs))),
    )
}

/// Dot product of a Q8_0 row with Q8_0 activations.
pub fn vec_dot_q8_0_q8_0(x: &[[u8; Q8_0_BYTES]], y: &[BlockQ8_0]) -> f32 {
    accumulate(
        x.iter()
            .zip(y)
            .map(|(x, y)| term_d(x, y.d, isum_q8_0(x, &y.qs))),
    )
}

/// Dot product of a Q4_K row with Q8_K activations.
pub fn vec_dot_q4_k_q8_k(x: &[[u8; Q4_K_BYTES]], y: &[BlockQ8K]) -> f32 {
    accumulate(x.iter().zip(y).map(|(x, y)| {
        let (isum, msum) = isum_q4_k(x, y);
        term_k_min(x, y.d, isum, msum)
    }))
}

/// Dot product of a Q5_K row with Q8_K activations.
pub fn vec_dot_q5_k_q8_k(x: &[[u8; Q5_K_BYTES]], y: &[BlockQ8K]) -> f32 {
    accumulate(x.iter().zip(y).map(|(x, y)| {
        let (isum, msum) = isum_q5_k(x, y);
        term_k_min(x, y.d, isum, msum)
    }))
}

/// Dot product of a Q6_K row with Q8_K activations.
pub fn vec_dot_q6_k_q8_k(x: &[[u8; Q6_K_BYTES]], y: &[BlockQ8K]) -> f32 {
    accumulate(
        x.iter()
            .zip(y)
            .map(|(x, y)| term_q6_k(x, y.d, isum_q6_k(x, y))),
    )
}

/// `a·b` of two `f32` vectors (up to the shorter one's length) in the
/// order every f32 dot of the engine uses (attention scores): element `i`
/// of each whole group of eight adds its product to lane `i % 8` (one
/// multiplication, one addition), the lanes are summed in order
/// ([`f32_dot_finish`]), then the remaining products one by one.
pub fn f32_dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (ac, a_tail) = a[..n].as_chunks::<8>();
    let (bc, b_tail) = b[..n].as_chunks::<8>();
    let mut acc = [0f32; 8];
    for (a, b) in ac.iter().zip(bc) {
        for l in 0..8 {
            acc[l] += a[l] * b[l];
        }
    }
    f32_dot_finish(acc, a_tail, b_tail)
}

/// The end of [`f32_dot`]: the lanes summed in order
/// (`((l0 + l1) + l2) + …`), then the tail's products one by one.
#[inline]
pub fn f32_dot_finish(acc: [f32; 8], a_tail: &[f32], b_tail: &[f32]) -> f32 {
    let mut s = acc[0];
    for &l in &acc[1..] {
        s += l;
    }
    for (a, b) in a_tail.iter().zip(b_tail) {
        s += a * b;
    }
    s
}

/// `out[i] += s·x[i]` (one multiplication, one addition per element; up to
/// the shorter length).
pub fn f32_axpy(s: f32, x: &[f32], out: &mut [f32]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o += s * v;
    }
}

/// Row `p` of a strided matrix as [`f32_dots`] and [`f32_weighted_sum`]
/// read it: `len` values from `p·stride`, fewer where `rows` ends.
#[inline]
pub fn row_at(rows: &[f32], p: usize, stride: usize, len: usize) -> &[f32] {
    let at = p.saturating_mul(stride).min(rows.len());
    &rows[at..at.saturating_add(len).min(rows.len())]
}

/// Whether rows `0..count` of `len` values at stride `stride` all lie
/// inside `rows` (the SIMD kernels then slice them whole).
pub fn whole_rows(rows: &[f32], count: usize, stride: usize, len: usize) -> bool {
    count == 0
        || (count - 1)
            .checked_mul(stride)
            .and_then(|s| s.checked_add(len))
            .is_some_and(|end| end <= rows.len())
}

/// `out[p] = a·row p` ([`f32_dot`]) for every `p < out.len()`, row `p`
/// being [`row_at`]`(rows, p, stride, a.len())`: the attention's scores of
/// one query against the cached keys.
pub fn f32_dots(a: &[f32], rows: &[f32], stride: usize, out: &mut [f32]) {
    for (p, o) in out.iter_mut().enumerate() {
        *o = f32_dot(a, row_at(rows, p, stride, a.len()));
    }
}

/// [`f32_dots`] for two vectors: `out[t][p] = a[t]·row p`, the same bits
/// as two calls (what the SIMD versions, which read each row once for both,
/// must give).
pub fn f32_dots2(a: [&[f32]; 2], rows: &[f32], stride: usize, out: [&mut [f32]; 2]) {
    let [o0, o1] = out;
    f32_dots(a[0], rows, stride, o0);
    f32_dots(a[1], rows, stride, o1);
}

/// `out += Σₚ w[p]·row p`, one [`f32_axpy`] per row in order (row `p` =
/// [`row_at`]`(rows, p, stride, out.len())`): the attention's weighted sum
/// of the cached values.
pub fn f32_weighted_sum(w: &[f32], rows: &[f32], stride: usize, out: &mut [f32]) {
    for (p, &s) in w.iter().enumerate() {
        f32_axpy(s, row_at(rows, p, stride, out.len()), out);
    }
}

/// `exp` clamps its input to `[EXP_LO, EXP_HI]` (results stay normal).
pub const EXP_HI: f32 = 88.0;
/// See [`EXP_HI`].
pub const EXP_LO: f32 = -86.0;
/// The other constants of [`exp`] (shared with the SIMD versions).
#[derive(Debug)]
pub struct ExpConsts {
    /// log₂ e.
    pub log2e: f32,
    /// ln 2 in two parts (Cody–Waite): `n·ln2_hi` is exact for `|n| < 2⁸`.
    pub ln2_hi: f32,
    /// The rest of ln 2.
    pub ln2_lo: f32,
    /// 1.5·2²³: `x + rounder − rounder` rounds `|x| < 2²²` to an integer
    /// (ties to even), and `n` is then in the low bits of `x + rounder`.
    pub rounder: f32,
}

/// See [`ExpConsts`].
pub const EXP_CONSTS: ExpConsts = ExpConsts {
    log2e: std::f32::consts::LOG2_E,
    ln2_hi: 0.693_359_4,
    ln2_lo: -2.121_944_4e-4,
    rounder: 12_582_912.0,
};
/// Cephes `expf` polynomial for `e^r` on `|r| ≤ ln2/2`, highest term first.
pub const EXP_POLY: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    0.5, // Cephes: 5.0000001201e-1, which rounds to 0.5 in f32
];

/// `e^x` in f32 operations only, each one rounding, in this order (so a
/// SIMD lane computing the same sequence gets the same bits): clamp to
/// `[EXP_LO, EXP_HI]`, `n = round(x·log2 e)`, `r = (x − n·ln2_hi) −
/// n·ln2_lo`, the Cephes polynomial `p(r)·r² + r + 1`, times `2ⁿ` by
/// adding `n` to the exponent bits. Within 2 ulp of `e^x` on the range;
/// the engine's softmax and SiLU use it where `libm::expf`'s table and
/// double-precision steps cannot be vectorized bit for bit. NaN inputs
/// give unspecified values.
#[inline]
pub fn exp(x: f32) -> f32 {
    let x = if x > EXP_HI { EXP_HI } else { x };
    let x = if x < EXP_LO { EXP_LO } else { x };
    let c = &EXP_CONSTS;
    let t = x * c.log2e + c.rounder;
    let n = t - c.rounder;
    let r = (x - n * c.ln2_hi) - n * c.ln2_lo;
    let mut p = EXP_POLY[0];
    for &c in &EXP_POLY[1..] {
        p = p * r + c;
    }
    let e = (p * (r * r) + r) + 1.0;
    let k = t.to_bits().wrapping_sub(c.rounder.to_bits());
    f32::from_bits(e.to_bits().wrapping_add(k << 23))
}

/// `x[i] = exp(x[i] − sub)` ([`exp`]): a softmax's exponentials.
pub fn f32_exp(x: &mut [f32], sub: f32) {
    for v in x {
        *v = exp(*v - sub);
    }
}

/// `g[i] = g[i] / (1 + exp(−g[i])) · u[i]` ([`exp`]): SiLU(gate) · up
/// (up to the shorter length).
pub fn f32_silu_mul(g: &mut [f32], u: &[f32]) {
    for (g, &u) in g.iter_mut().zip(u) {
        *g = *g / (1.0 + exp(-*g)) * u;
    }
}

/// [`super::matvec`] with these scalar kernels: the oracle of the SIMD ones.
///
/// # Errors
/// As [`super::matvec`].
pub fn matvec(w: &QTensor<'_>, x: &QuantizedActivation, out: &mut [f32]) -> Result<(), QuantError> {
    super::matvec_with(&super::simd::SCALAR, w, x, out)
}

#[cfg(test)]
mod tests {
    use super::super::tests::{random_blocks, Rng};
    use super::super::{dequantize, f32_to_f16, GgmlType, QK_K};
    use super::*;

    const WEIGHTS: [GgmlType; 7] = [
        GgmlType::Q8_0,
        GgmlType::Q4_1,
        GgmlType::Q4_0,
        GgmlType::Q5_0,
        GgmlType::Q4_K,
        GgmlType::Q6_K,
        GgmlType::Q5_K,
    ];

    /// Each weight value as `(sub-block scale, sub-block min, q)` integers
    /// in element order, unpacked straight from the layout table (bit
    /// planes, as the PyPI `gguf` package does), independently of the
    /// kernels' loops. `x = d·scale·q − dmin·min` (32-value formats: scale
    /// 1, min 0, q with its offset applied).
    fn unpack(ty: GgmlType, b: &[u8]) -> Vec<(i32, i32, i32)> {
        let nib =
            |qs: &[u8], e: usize, half: usize| i32::from((qs[e % half] >> (4 * (e / half))) & 15);
        match ty {
            GgmlType::Q4_0 => (0..32).map(|e| (1, 0, nib(&b[2..], e, 16) - 8)).collect(),
            GgmlType::Q4_1 => (0..32).map(|e| (1, 0, nib(&b[4..], e, 16))).collect(),
            GgmlType::Q5_0 => {
                let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
                (0..32)
                    .map(|e| (1, 0, nib(&b[6..], e, 16) + 16 * ((qh >> e) & 1) as i32 - 16))
                    .collect()
            }
            GgmlType::Q8_0 => b[2..].iter().map(|&q| (1, 0, i32::from(q as i8))).collect(),
            GgmlType::Q4_K | GgmlType::Q5_K => {
                let s = &b[4..16];
                let six = |j: usize| -> (i32, i32) {
                    // Bytes 0–3 scales, 4–7 mins (low 6 bits); bytes 8–11 the
                    // low 4 bits of scales/mins 4–7, whose top 2 bits are the
                    // top bits of bytes 0–3 / 4–7.
                    if j < 4 {
                        (i32::from(s[j] & 63), i32::from(s[4 + j] & 63))
                    } else {
                        let k = j - 4;
                        (
                            i32::from(s[8 + k] & 15) | (i32::from(s[k] >> 6) << 4),
                            i32::from(s[8 + k] >> 4) | (i32::from(s[4 + k] >> 6) << 4),
                        )
                    }
                };
                let (qh, qs) = if ty == GgmlType::Q5_K {
                    (Some(&b[16..48]), &b[48..])
                } else {
                    (None, &b[16..])
                };
                (0..256)
                    .map(|e| {
                        let (c, r) = (e / 64, e % 64);
                        let q = nib(&qs[32 * c..], r, 32);
                        let high = qh.map_or(0, |qh| i32::from((qh[e % 32] >> (e / 32)) & 1));
                        let (sc, m) = six(e / 32);
                        (sc, m, q + 16 * high)
                    })
                    .collect()
            }
            GgmlType::Q6_K => (0..256)
                .map(|e| {
                    let (h, r) = (e / 128, e % 128);
                    let (t, l) = (r / 32, r % 32);
                    let lo = (b[64 * h + 32 * (t % 2) + l] >> (4 * (t / 2))) & 15;
                    let hi = (b[128 + 32 * h + l] >> (2 * t)) & 3;
                    let sc = i32::from(b[192 + e / 16] as i8);
                    (sc, 0, i32::from(lo | (hi << 4)) - 32)
                })
                .collect(),
            other => panic!("{other} is not a weight format"),
        }
    }

    /// The exact integer parts of one block, from [`unpack`]:
    /// `(Σ scale·q·y, Σ min·y)` per sub-block.
    fn direct_isum(ty: GgmlType, b: &[u8], y: &[i8]) -> (i32, i32) {
        let v = unpack(ty, b);
        let isum = v
            .iter()
            .zip(y)
            .map(|(&(sc, _, q), &y)| sc * q * i32::from(y))
            .sum();
        let msum = v
            .iter()
            .zip(y)
            .map(|(&(_, m, _), &y)| m * i32::from(y))
            .sum();
        (isum, msum)
    }

    /// Activations of mixed scales, with all-zero blocks, for `cols` values.
    fn activations(rng: &mut Rng, cols: usize) -> Vec<f32> {
        let mut x: Vec<f32> = (0..cols).map(|_| rng.unit()).collect();
        for (i, c) in x.chunks_mut(32).enumerate() {
            let scale = [1.0, 0.25, 3.0, 0.0, 1e-2, 1.0, 1.0][i % 7];
            c.iter_mut().for_each(|v| *v *= scale);
        }
        x
    }

    /// One row's dot product through the public per-format functions.
    fn dot(ty: GgmlType, row: &[u8], x: &QuantizedActivation) -> f32 {
        use QuantizedActivation as A;
        match (ty, x) {
            (GgmlType::Q4_0, A::Q8_0(y)) => vec_dot_q4_0_q8_0(row.as_chunks().0, y),
            (GgmlType::Q4_1, A::Q8_1(y)) => vec_dot_q4_1_q8_1(row.as_chunks().0, y),
            (GgmlType::Q5_0, A::Q8_0(y)) => vec_dot_q5_0_q8_0(row.as_chunks().0, y),
            (GgmlType::Q8_0, A::Q8_0(y)) => vec_dot_q8_0_q8_0(row.as_chunks().0, y),
            (GgmlType::Q4_K, A::Q8_K(y)) => vec_dot_q4_k_q8_k(row.as_chunks().0, y),
            (GgmlType::Q5_K, A::Q8_K(y)) => vec_dot_q5_k_q8_k(row.as_chunks().0, y),
            (GgmlType::Q6_K, A::Q8_K(y)) => vec_dot_q6_k_q8_k(row.as_chunks().0, y),
            _ => panic!("no pairing"),
        }
    }

    /// The per-block integer parts computed by the kernels' helpers.
    fn kernel_isum(ty: GgmlType, b: &[u8], x: &QuantizedActivation, i: usize) -> (i32, i32) {
        use QuantizedActivation as A;
        let arr = |n: usize| &b[..n];
        match (ty, x) {
            (GgmlType::Q4_0, A::Q8_0(y)) => {
                (isum_q4_0(arr(18).try_into().expect("18"), &y[i].qs), 0)
            }
            (GgmlType::Q4_1, A::Q8_1(y)) => {
                (isum_q4_1(arr(20).try_into().expect("20"), &y[i].qs), 0)
            }
            (GgmlType::Q5_0, A::Q8_0(y)) => {
                (isum_q5_0(arr(22).try_into().expect("22"), &y[i].qs), 0)
            }
            (GgmlType::Q8_0, A::Q8_0(y)) => {
                (isum_q8_0(arr(34).try_into().expect("34"), &y[i].qs), 0)
            }
            (GgmlType::Q4_K, A::Q8_K(y)) => isum_q4_k(arr(144).try_into().expect("144"), &y[i]),
            (GgmlType::Q5_K, A::Q8_K(y)) => isum_q5_k(arr(176).try_into().expect("176"), &y[i]),
            (GgmlType::Q6_K, A::Q8_K(y)) => {
                (isum_q6_k(arr(210).try_into().expect("210"), &y[i]), 0)
            }
            _ => panic!("no pairing"),
        }
    }

    /// The quantized values of activation block `i`.
    fn act_qs(x: &QuantizedActivation, i: usize) -> Vec<i8> {
        match x {
            QuantizedActivation::Q8_0(y) => y[i].qs.to_vec(),
            QuantizedActivation::Q8_1(y) => y[i].qs.to_vec(),
            QuantizedActivation::Q8_K(y) => y[i].qs.to_vec(),
        }
    }

    #[test]
    fn integer_parts_equal_a_direct_recomputation() {
        let mut rng = Rng(11);
        for ty in WEIGHTS {
            let n = 24;
            let w = random_blocks(&mut rng, ty, n, 1.0);
            // Extreme activations too: every value ±127 somewhere.
            let mut xs = activations(&mut rng, n * ty.block_size());
            xs[0] = 1e9;
            let x = QuantizedActivation::for_weight(ty, &xs).expect("quantize");
            for (i, b) in w.chunks_exact(ty.block_bytes()).enumerate() {
                assert_eq!(
                    kernel_isum(ty, b, &x, i),
                    direct_isum(ty, b, &act_qs(&x, i)),
                    "{ty} block {i}"
                );
            }
        }
    }

    #[test]
    fn exp_is_within_two_ulp_of_libm_on_its_range() {
        let mut rng = Rng(21);
        let ulp = |v: f32| f32::from_bits(v.to_bits() + 1) - v;
        let points = (0..200_000)
            .map(|_| rng.unit() * 86.0)
            .chain([0.0, -0.0, 1.0, -1.0, EXP_LO, EXP_HI]);
        for x in points {
            let (got, want) = (exp(x), libm::expf(x));
            assert!(
                (got - want).abs() <= 2.0 * ulp(want),
                "exp({x}) = {got}, libm {want}"
            );
        }
        // Clamped outside it: finite and normal, monotone at the ends.
        assert_eq!(exp(-1000.0), exp(EXP_LO));
        assert_eq!(exp(1000.0), exp(EXP_HI));
        assert!(exp(EXP_LO).is_normal() && exp(EXP_HI).is_finite());
        let mut g = [-100.0f32, -1.0, 0.0, 1.0, 100.0];
        f32_silu_mul(&mut g, &[2.0; 5]);
        let want = [-100.0f32, -1.0, 0.0, 1.0, 100.0].map(|v| v / (1.0 + libm::expf(-v)) * 2.0);
        for (g, w) in g.iter().zip(want) {
            assert!((g - w).abs() <= 1e-6 * w.abs() + 1e-30, "{g} vs {w}");
        }
    }

    /// The per-block float terms as the module docs define them, summed in
    /// the documented lane order: the kernels must give the same bits.
    #[test]
    fn float_part_follows_the_documented_order_bit_for_bit() {
        let mut rng = Rng(12);
        for ty in WEIGHTS {
            let n = 19; // more than two rounds of the eight lanes, not a multiple
            let w = random_blocks(&mut rng, ty, n, 0.1);
            let xs = activations(&mut rng, n * ty.block_size());
            let x = QuantizedActivation::for_weight(ty, &xs).expect("quantize");
            let mut acc = [0.0f32; 8];
            for (i, b) in w.chunks_exact(ty.block_bytes()).enumerate() {
                let (isum, msum) = kernel_isum(ty, b, &x, i);
                let t = match &x {
                    QuantizedActivation::Q8_0(y) => (f16_at(b, 0) * y[i].d) * isum as f32,
                    QuantizedActivation::Q8_1(y) => {
                        (f16_at(b, 0) * y[i].d) * isum as f32 + f16_at(b, 2) * y[i].s
                    }
                    QuantizedActivation::Q8_K(y) if ty == GgmlType::Q6_K => {
                        (f16_at(b, 208) * y[i].d) * isum as f32
                    }
                    QuantizedActivation::Q8_K(y) => {
                        (f16_at(b, 0) * y[i].d) * isum as f32
                            - (f16_at(b, 2) * y[i].d) * msum as f32
                    }
                };
                acc[i % 8] += t;
            }
            let want =
                ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
            assert_eq!(dot(ty, &w, &x).to_bits(), want.to_bits(), "{ty}");
        }
    }

    /// The f64 dot of dequantized weights `wf` (blocks `w`) with the
    /// dequantized activations, and how far an f32 kernel may be from it:
    /// `1e-5 · Σ|w·x̂|`, plus for Q4_1 the f16 rounding in `s`
    /// (`m·s` uses `s = f16(d·Σq)` with the f32 step `d`; `x̂` uses `f16(d)`),
    /// at most `|m|·|Σq·f16(d)|·2⁻⁹`.
    fn f64_dot(w: &[u8], wf: &[f32], x: &QuantizedActivation) -> (f64, f64) {
        let xq = x.dequantize();
        let dot: f64 = wf
            .iter()
            .zip(&xq)
            .map(|(&w, &x)| f64::from(w) * f64::from(x))
            .sum();
        let mag: f64 = wf
            .iter()
            .zip(&xq)
            .map(|(&w, &x)| (f64::from(w) * f64::from(x)).abs())
            .sum();
        let mut allowance = 1e-5 * mag + 1e-30;
        if let QuantizedActivation::Q8_1(y) = x {
            for (b, y) in w.chunks_exact(20).zip(y) {
                let sum: i32 = y.qs.iter().map(|&q| i32::from(q)).sum();
                let s = f64::from(sum) * f64::from(y.d);
                allowance += f64::from(f16_at(b, 2)).abs() * s.abs() * 2f64.powi(-9);
            }
        }
        (dot, allowance)
    }

    /// Against f64 dot products of the dequantized weights with (a) the
    /// dequantized activations: only f32 rounding separates them, bounded by
    /// `1e-5 · Σ|w·x̂|` (plus, for Q4_1, the f16 rounding of `s`); and (b) the
    /// original activations: the Q8 error adds at most half a step (and the
    /// f16 rounding of the step) per value, times `Σ|w|` of the block.
    #[test]
    fn dot_products_agree_with_f64_dots_of_dequantized_values() {
        let mut rng = Rng(13);
        for ty in WEIGHTS {
            for n in [1, 3, 8, 17] {
                let w = random_blocks(&mut rng, ty, n, 0.05);
                let wf = dequantize(ty, &w).expect("weights");
                let xs = activations(&mut rng, n * ty.block_size());
                let x = QuantizedActivation::for_weight(ty, &xs).expect("quantize");
                let got = f64::from(dot(ty, &w, &x));

                let (tight, allowance) = f64_dot(&w, &wf, &x);
                assert!(
                    (got - tight).abs() <= allowance,
                    "{ty} × {n} blocks: {got} vs {tight} (allowed {allowance})"
                );

                let exact: f64 = wf
                    .iter()
                    .zip(&xs)
                    .map(|(&w, &x)| f64::from(w) * f64::from(x))
                    .sum();
                let mut loose = allowance;
                let bs = x.ty().block_size();
                for (wb, xb) in wf.chunks(bs).zip(xs.chunks(bs)) {
                    let amax = f64::from(xb.iter().fold(0.0f32, |m, v| m.max(v.abs())));
                    let step = amax / 127.0;
                    let err = if x.ty() == GgmlType::Q8_K {
                        step / 2.0 * (1.0 + 1e-5)
                    } else {
                        step / 2.0 + amax * 2f64.powi(-11)
                    };
                    loose += wb.iter().map(|&w| f64::from(w).abs()).sum::<f64>() * err;
                }
                assert!(
                    (got - exact).abs() <= loose,
                    "{ty} × {n} blocks vs f32 activations: {got} vs {exact} (allowed {loose})"
                );
            }
        }
    }

    #[test]
    fn matvec_fills_every_row_with_its_dot_product() {
        let mut rng = Rng(14);
        for ty in WEIGHTS {
            for (rows, blocks) in [(7, 5), (1, 1), (3, 3), (13, 2)] {
                let cols = blocks * ty.block_size();
                let data = random_blocks(&mut rng, ty, rows * blocks, 0.1);
                let w = QTensor::new(ty, rows, cols, &data).expect("view");
                let xs = activations(&mut rng, cols);
                let x = QuantizedActivation::for_weight(ty, &xs).expect("quantize");
                let mut out = vec![f32::NAN; rows];
                matvec(&w, &x, &mut out).expect("matvec");
                for (r, &o) in out.iter().enumerate() {
                    let row = w.row(r).expect("row");
                    assert_eq!(o.to_bits(), dot(ty, row, &x).to_bits(), "{ty} row {r}");
                    // And within tolerance of the f64 dot of the row.
                    let wf = dequantize(ty, row).expect("row");
                    let (want, allowance) = f64_dot(row, &wf, &x);
                    assert!((f64::from(o) - want).abs() <= allowance, "{ty} row {r}");
                }
            }
        }
    }

    #[test]
    fn matvec_rejects_mismatched_inputs() {
        let data = vec![0u8; 3 * 2 * 20];
        let w = QTensor::new(GgmlType::Q4_1, 3, 64, &data).expect("view");
        let x = QuantizedActivation::quantize(GgmlType::Q8_1, &[0.5; 64]).expect("x");
        let mut out = [0.0; 3];
        matvec(&w, &x, &mut out).expect("well-formed");

        let x0 = QuantizedActivation::quantize(GgmlType::Q8_0, &[0.5; 64]).expect("x");
        assert_eq!(
            matvec(&w, &x0, &mut out),
            Err(QuantError::ActivationType {
                weight: GgmlType::Q4_1,
                expected: GgmlType::Q8_1,
                actual: GgmlType::Q8_0
            })
        );
        let short = QuantizedActivation::quantize(GgmlType::Q8_1, &[0.5; 32]).expect("x");
        assert_eq!(
            matvec(&w, &short, &mut out),
            Err(QuantError::ActivationLength {
                expected: 64,
                actual: 32
            })
        );
        assert_eq!(
            matvec(&w, &x, &mut [0.0; 4]),
            Err(QuantError::OutputLength {
                expected: 3,
                actual: 4
            })
        );
        let f = [0u8; 2 * 4];
        let wf = QTensor::new(GgmlType::F16, 2, 2, &f).expect("f16 view");
        assert_eq!(
            matvec(&wf, &x, &mut [0.0; 2]),
            Err(QuantError::NoVecDot(GgmlType::F16))
        );
        // Zero-width rows give zeros.
        let e = QTensor::new(GgmlType::Q6_K, 2, 0, &[]).expect("empty");
        let ex = QuantizedActivation::quantize(GgmlType::Q8_K, &[]).expect("empty x");
        let mut out = [1.0; 2];
        matvec(&e, &ex, &mut out).expect("empty matvec");
        assert_eq!(out, [0.0; 2]);
    }

    #[test]
    fn known_small_dot_products() {
        // Q8_0 · Q8_0 with d = 1 on both sides: Σ q·y exactly.
        let mut row = vec![0u8; 34];
        row[..2].copy_from_slice(&f32_to_f16(1.0).to_le_bytes());
        for (j, q) in row[2..].iter_mut().enumerate() {
            *q = (j as i8 - 16) as u8;
        }
        let mut xs = [0.0f32; 32];
        xs[0] = 127.0; // d = 1
        xs[31] = 2.0;
        let x = QuantizedActivation::quantize(GgmlType::Q8_0, &xs).expect("x");
        let w = QTensor::new(GgmlType::Q8_0, 1, 32, &row).expect("w");
        let mut out = [0.0];
        matvec(&w, &x, &mut out).expect("matvec");
        assert_eq!(out[0], -16.0 * 127.0 + 15.0 * 2.0);

        // Q6_K with every q = 32 (value 0) and one q = 33 at element 5:
        // only that element counts: d·sc·1·y.
        let mut b = vec![0u8; 210];
        for h in &mut b[128..192] {
            *h = 0b10_10_10_10; // high bits 2 → q = 32
        }
        b[5] = 1; // element 5: low nibble 1 → q = 33
        for (j, s) in b[192..208].iter_mut().enumerate() {
            *s = (j as i8 + 1) as u8;
        }
        b[208..].copy_from_slice(&f32_to_f16(0.5).to_le_bytes());
        let mut xs = [0.0f32; QK_K];
        xs[5] = -127.0; // iscale = 1, d = 1
        xs[6] = 3.0;
        let x = QuantizedActivation::quantize(GgmlType::Q8_K, &xs).expect("x");
        let w = QTensor::new(GgmlType::Q6_K, 1, QK_K, &b).expect("w");
        matvec(&w, &x, &mut out).expect("matvec");
        assert_eq!(out[0], 0.5 * 1.0 * -127.0);
    }
}
