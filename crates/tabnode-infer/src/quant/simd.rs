//! SIMD dot products, chosen at run time, bit for bit equal to
//! [`scalar`].
//!
//! The one module of the crate with `unsafe` code: `std::arch`
//! intrinsics. A [`Kernels`] table holds one dot product per weight format;
//! [`best`] picks the fastest table this CPU runs (detected once), and
//! [`available`] lists every table it can run (the tests compare each with
//! the scalar one on random blocks, every format, odd sizes).
//!
//! Exactness: the integer sum of a block is exact in every kernel (no
//! saturation: `maddubs` pairs stay within ±3,810 for 4-bit weights,
//! ±7,874 for Q5_0's values taken unsigned (0..31, the four-token kernels
//! take `16·Σy` off afterwards) and ±32,512 for 8-bit ones with activations
//! in [−127, 127], which is what the quantizers in [`act`](super::act)
//! produce). The float part is the scalar
//! kernel's: eight consecutive blocks' terms are computed in the eight lanes
//! of one register with the same operations in the same order (no fused
//! multiply-add) and added to the same accumulator lanes (`b % 8`); a last,
//! partial group adds to its own lanes only. Hence the same bits on every
//! CPU, natively and in the tab.
//!
//! Tables: `avx2` (x86-64 with AVX2 and F16C; Q5_K uses the scalar
//! kernel there) and `simd128` (wasm, the tab). Formats without a SIMD
//! kernel use the scalar one. The activation blocks carry their scales as
//! `f32` and the single-token AVX2 kernels fetch eight blocks' scales with
//! one masked gather each (a last group of fewer than eight blocks reads
//! only its own blocks: no padding copies); the four-token kernels of a
//! prompt read them, and the blocks' value sums, with plain loads from
//! [`Tok`]'s arrays, built once per matrix product, and fetch the weight
//! scales once for the four tokens.
//!
//! The tables also hold the engine's two f32 vector kernels, the
//! attention's dot product and `out += s·x`, in [`scalar::f32_dot`]'s
//! fixed lane order, so they too give the same bits everywhere.
#![allow(unsafe_code)]

use std::sync::OnceLock;

use super::act::{BlockQ8K, BlockQ8_0, BlockQ8_1, Tok};
use super::scalar;
use super::{Q4_0_BYTES, Q4_1_BYTES, Q4_K_BYTES, Q5_0_BYTES, Q5_K_BYTES, Q6_K_BYTES, Q8_0_BYTES};

/// One weight row against four tokens' activations: each token's result
/// the bits of the single dot product, the row's blocks unpacked once.
pub type Dot4<const B: usize, Y> = fn(&[[u8; B]], [&Tok<'_, Y>; 4]) -> [f32; 4];

/// One dot product per weight format (weight row blocks, activation blocks;
/// pairs up to the shorter of the two).
#[derive(Debug)]
pub struct Kernels {
    /// What they run on (`scalar`, `avx2`).
    pub name: &'static str,
    /// Q4_0 · Q8_0.
    pub q4_0: fn(&[[u8; Q4_0_BYTES]], &[BlockQ8_0]) -> f32,
    /// Q4_1 · Q8_1.
    pub q4_1: fn(&[[u8; Q4_1_BYTES]], &[BlockQ8_1]) -> f32,
    /// Q5_0 · Q8_0.
    pub q5_0: fn(&[[u8; Q5_0_BYTES]], &[BlockQ8_0]) -> f32,
    /// Q8_0 · Q8_0.
    pub q8_0: fn(&[[u8; Q8_0_BYTES]], &[BlockQ8_0]) -> f32,
    /// Q4_K · Q8_K.
    pub q4_k: fn(&[[u8; Q4_K_BYTES]], &[BlockQ8K]) -> f32,
    /// Q5_K · Q8_K.
    pub q5_k: fn(&[[u8; Q5_K_BYTES]], &[BlockQ8K]) -> f32,
    /// Q6_K · Q8_K.
    pub q6_k: fn(&[[u8; Q6_K_BYTES]], &[BlockQ8K]) -> f32,
    /// Q4_0 against four tokens (a prompt); `None`: four single calls.
    pub q4_0x4: Option<Dot4<Q4_0_BYTES, BlockQ8_0>>,
    /// Q4_1 against four tokens.
    pub q4_1x4: Option<Dot4<Q4_1_BYTES, BlockQ8_1>>,
    /// Q5_0 against four tokens.
    pub q5_0x4: Option<Dot4<Q5_0_BYTES, BlockQ8_0>>,
    /// Q8_0 against four tokens.
    pub q8_0x4: Option<Dot4<Q8_0_BYTES, BlockQ8_0>>,
    /// Q4_K against four tokens.
    pub q4_kx4: Option<Dot4<Q4_K_BYTES, BlockQ8K>>,
    /// Q6_K against four tokens.
    pub q6_kx4: Option<Dot4<Q6_K_BYTES, BlockQ8K>>,
    /// `out[p] = a·row p` in [`scalar::f32_dot`]'s order
    /// ([`scalar::f32_dots`]).
    pub f32_dots: fn(&[f32], &[f32], usize, &mut [f32]),
    /// [`Kernels::f32_dots`] for two vectors at once, each with its own
    /// outputs (each row read once for both): `out[t][p] = a[t]·row p`,
    /// the same bits as two calls ([`scalar::f32_dots2`]).
    pub f32_dots2: F32Dots2,
    /// `out += Σₚ w[p]·row p` ([`scalar::f32_weighted_sum`]).
    pub f32_weighted_sum: fn(&[f32], &[f32], usize, &mut [f32]),
    /// `x = exp(x − sub)` ([`scalar::f32_exp`]).
    pub f32_exp: fn(&mut [f32], f32),
    /// `g = SiLU(g)·u` ([`scalar::f32_silu_mul`]).
    pub f32_silu_mul: fn(&mut [f32], &[f32]),
}

/// The shape of [`Kernels::f32_dots2`].
pub type F32Dots2 = fn([&[f32]; 2], &[f32], usize, [&mut [f32]; 2]);

/// The portable reference kernels.
pub static SCALAR: Kernels = Kernels {
    name: "scalar",
    q4_0: scalar::vec_dot_q4_0_q8_0,
    q4_1: scalar::vec_dot_q4_1_q8_1,
    q5_0: scalar::vec_dot_q5_0_q8_0,
    q8_0: scalar::vec_dot_q8_0_q8_0,
    q4_k: scalar::vec_dot_q4_k_q8_k,
    q5_k: scalar::vec_dot_q5_k_q8_k,
    q6_k: scalar::vec_dot_q6_k_q8_k,
    q4_0x4: None,
    q4_1x4: None,
    q5_0x4: None,
    q8_0x4: None,
    q4_kx4: None,
    q6_kx4: None,
    f32_dots: scalar::f32_dots,
    f32_dots2: scalar::f32_dots2,
    f32_weighted_sum: scalar::f32_weighted_sum,
    f32_exp: scalar::f32_exp,
    f32_silu_mul: scalar::f32_silu_mul,
};

/// Every kernel table this CPU can run, the scalar one first.
pub fn available() -> Vec<&'static Kernels> {
    #[cfg(target_arch = "x86_64")]
    let simd = x86::supported().then_some(&x86::AVX2);
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    let simd = Some(&wasm::SIMD128);
    #[cfg(not(any(
        target_arch = "x86_64",
        all(target_arch = "wasm32", target_feature = "simd128")
    )))]
    let simd: Option<&'static Kernels> = None;
    std::iter::once(&SCALAR).chain(simd).collect()
}

/// The fastest kernel table this CPU can run that agrees with the scalar
/// one on [`check`](super::check::check) (chosen once per process; a table
/// that disagrees is reported on stderr / the console and skipped).
pub fn best() -> &'static Kernels {
    static BEST: OnceLock<&'static Kernels> = OnceLock::new();
    BEST.get_or_init(|| {
        available()
            .into_iter()
            .rev()
            .find(|k| match super::check::check(k, 0x5eed_51d0) {
                Ok(_) => true,
                Err(e) => {
                    report(&e);
                    false
                }
            })
            .unwrap_or(&SCALAR)
    })
}

#[cfg(not(target_arch = "wasm32"))]
fn report(e: &super::check::KernelMismatch) {
    eprintln!("tabnode: {e}; using the next kernels");
}

#[cfg(target_arch = "wasm32")]
fn report(_: &super::check::KernelMismatch) {
    // No stderr in the browser; the engine's device name says which table
    // runs (`cpu-quantized-scalar` instead of `-simd128`).
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! AVX2 (+ F16C for the f16 scales). The safe wrappers in [`AVX2`] call
    //! `#[target_feature]` functions; that table is only handed out by
    //! [`super::available`] after [`supported`] confirmed both features, so
    //! the wrappers never run on a CPU without them.

    use std::arch::x86_64::*;

    use super::super::act::BlockQ8K;
    use super::super::act::{BlockQ8_0, BlockQ8_1, Tok};
    use super::super::{
        scalar, scales_mins_k4, Q4_0_BYTES, Q4_1_BYTES, Q4_K_BYTES, Q5_0_BYTES, Q6_K_BYTES,
        Q8_0_BYTES, QK,
    };
    use super::Kernels;

    /// Whether this CPU runs [`AVX2`].
    pub(super) fn supported() -> bool {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("f16c")
    }

    pub(super) static AVX2: Kernels = Kernels {
        name: "avx2",
        q4_0,
        q4_1,
        q5_0,
        q8_0,
        q4_k,
        q5_k: scalar::vec_dot_q5_k_q8_k,
        q6_k,
        q4_0x4: Some(q4_0x4),
        q4_1x4: Some(q4_1x4),
        q5_0x4: Some(q5_0x4),
        q8_0x4: Some(q8_0x4),
        q4_kx4: Some(q4_kx4),
        q6_kx4: Some(q6_kx4),
        f32_dots,
        f32_dots2,
        f32_weighted_sum,
        f32_exp,
        f32_silu_mul,
    };

    fn f32_exp(x: &mut [f32], sub: f32) {
        // SAFETY: as above.
        unsafe { f32_exp_avx2(x, sub) }
    }

    fn f32_silu_mul(g: &mut [f32], u: &[f32]) {
        // SAFETY: as above.
        unsafe { f32_silu_mul_avx2(g, u) }
    }

    /// [`scalar::exp`] in eight lanes, operation for operation.
    #[target_feature(enable = "avx2")]
    fn exp8(x: __m256) -> __m256 {
        let clamp = |x: __m256, bound: f32, above: bool| {
            let b = _mm256_set1_ps(bound);
            let past = if above {
                _mm256_cmp_ps::<_CMP_GT_OQ>(x, b)
            } else {
                _mm256_cmp_ps::<_CMP_LT_OQ>(x, b)
            };
            _mm256_blendv_ps(x, b, past)
        };
        let x = clamp(clamp(x, scalar::EXP_HI, true), scalar::EXP_LO, false);
        let c = &scalar::EXP_CONSTS;
        let rounder = _mm256_set1_ps(c.rounder);
        let t = _mm256_add_ps(_mm256_mul_ps(x, _mm256_set1_ps(c.log2e)), rounder);
        let n = _mm256_sub_ps(t, rounder);
        let r = _mm256_sub_ps(
            _mm256_sub_ps(x, _mm256_mul_ps(n, _mm256_set1_ps(c.ln2_hi))),
            _mm256_mul_ps(n, _mm256_set1_ps(c.ln2_lo)),
        );
        let mut p = _mm256_set1_ps(scalar::EXP_POLY[0]);
        for &c in &scalar::EXP_POLY[1..] {
            p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(c));
        }
        let e = _mm256_add_ps(
            _mm256_add_ps(_mm256_mul_ps(p, _mm256_mul_ps(r, r)), r),
            _mm256_set1_ps(1.0),
        );
        let k = _mm256_sub_epi32(_mm256_castps_si256(t), _mm256_castps_si256(rounder));
        _mm256_castsi256_ps(_mm256_add_epi32(
            _mm256_castps_si256(e),
            _mm256_slli_epi32(k, 23),
        ))
    }

    #[target_feature(enable = "avx2")]
    fn f32_exp_avx2(x: &mut [f32], sub: f32) {
        let (chunks, tail) = x.as_chunks_mut::<8>();
        let s = _mm256_set1_ps(sub);
        for c in chunks {
            let v = exp8(_mm256_sub_ps(load8(c), s));
            // SAFETY: `c` is eight writable `f32`s.
            unsafe { _mm256_storeu_ps(c.as_mut_ptr(), v) };
        }
        scalar::f32_exp(tail, sub);
    }

    #[target_feature(enable = "avx2")]
    fn f32_silu_mul_avx2(g: &mut [f32], u: &[f32]) {
        let n = g.len().min(u.len());
        let (gc, g_tail) = g[..n].as_chunks_mut::<8>();
        let (uc, u_tail) = u[..n].as_chunks::<8>();
        for (g, u) in gc.iter_mut().zip(uc) {
            let gv = load8(g);
            let e = exp8(_mm256_xor_ps(gv, _mm256_set1_ps(-0.0)));
            let v = _mm256_mul_ps(
                _mm256_div_ps(gv, _mm256_add_ps(_mm256_set1_ps(1.0), e)),
                load8(u),
            );
            // SAFETY: `g` is eight writable `f32`s.
            unsafe { _mm256_storeu_ps(g.as_mut_ptr(), v) };
        }
        scalar::f32_silu_mul(g_tail, u_tail);
    }

    fn f32_dots(a: &[f32], rows: &[f32], stride: usize, out: &mut [f32]) {
        // SAFETY: as above.
        unsafe { f32_dots_avx2(a, rows, stride, out) }
    }

    fn f32_dots2(a: [&[f32]; 2], rows: &[f32], stride: usize, out: [&mut [f32]; 2]) {
        // SAFETY: as above.
        unsafe { f32_dots2_avx2(a, rows, stride, out) }
    }

    fn f32_weighted_sum(w: &[f32], rows: &[f32], stride: usize, out: &mut [f32]) {
        // SAFETY: as above.
        unsafe { f32_weighted_sum_avx2(w, rows, stride, out) }
    }

    /// Eight `f32`s.
    #[target_feature(enable = "avx2")]
    fn load8(v: &[f32; 8]) -> __m256 {
        // SAFETY: `v` is eight readable `f32`s.
        unsafe { _mm256_loadu_ps(v.as_ptr()) }
    }

    /// Eight `f32`s at `v[at..]` (zeros if `v` is too short: the callers
    /// check the bounds first).
    #[target_feature(enable = "avx2")]
    fn load8_at(v: &[f32], at: usize) -> __m256 {
        v.get(at..at + 8)
            .and_then(|s| <&[f32; 8]>::try_from(s).ok())
            .map_or(_mm256_setzero_ps(), |s| load8(s))
    }

    /// [`scalar::f32_dots`], four rows at a time: four independent
    /// accumulator chains (one alone waits on each addition's latency), `a`
    /// loaded once for the four, each row's lanes summed as
    /// [`f32_dot_avx2`] sums them (the same bits). (Eight rows at once with
    /// a transpose for the lane sums measured slower on the attention's
    /// keys, which stream from the cache.)
    #[target_feature(enable = "avx2")]
    fn f32_dots_avx2(a: &[f32], rows: &[f32], stride: usize, out: &mut [f32]) {
        let n = a.len();
        let (ac, a_tail) = a.as_chunks::<8>();
        let mut p = 0;
        if scalar::whole_rows(rows, out.len(), stride, n) {
            while p + 4 <= out.len() {
                let row = |i: usize| &rows[(p + i) * stride..(p + i) * stride + n];
                let r = [row(0), row(1), row(2), row(3)];
                let [c0, c1, c2, c3] = r.map(|r| r.as_chunks::<8>().0);
                let mut acc = [_mm256_setzero_ps(); 4];
                for ((((a, w0), w1), w2), w3) in ac.iter().zip(c0).zip(c1).zip(c2).zip(c3) {
                    let av = load8(a);
                    for (acc, w) in acc.iter_mut().zip([w0, w1, w2, w3]) {
                        *acc = _mm256_add_ps(*acc, _mm256_mul_ps(av, load8(w)));
                    }
                }
                for (i, acc) in acc.into_iter().enumerate() {
                    let mut lanes = [0f32; 8];
                    // SAFETY: `lanes` is 32 writable bytes.
                    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc) };
                    out[p + i] = scalar::f32_dot_finish(lanes, a_tail, &r[i][8 * ac.len()..]);
                }
                p += 4;
            }
        }
        for (q, o) in out.iter_mut().enumerate().skip(p) {
            *o = f32_dot_avx2(a, scalar::row_at(rows, q, stride, n));
        }
    }

    /// [`scalar::f32_dots2`]: two vectors against four rows at a time,
    /// eight accumulator chains, each row loaded once for both vectors;
    /// each (vector, row) summed as [`f32_dot_avx2`] sums it. Vectors of
    /// different lengths, or rows past the end, go one vector at a time.
    #[target_feature(enable = "avx2")]
    fn f32_dots2_avx2(a: [&[f32]; 2], rows: &[f32], stride: usize, out: [&mut [f32]; 2]) {
        let [o0, o1] = out;
        let n = a[0].len();
        let count = o0.len().min(o1.len());
        if a[1].len() != n || o0.len() != o1.len() || !scalar::whole_rows(rows, count, stride, n) {
            f32_dots_avx2(a[0], rows, stride, o0);
            f32_dots_avx2(a[1], rows, stride, o1);
            return;
        }
        let (x0, tail0) = a[0].as_chunks::<8>();
        let (x1, tail1) = a[1].as_chunks::<8>();
        let mut p = 0;
        while p + 4 <= count {
            let row = |i: usize| &rows[(p + i) * stride..(p + i) * stride + n];
            let r = [row(0), row(1), row(2), row(3)];
            let [c0, c1, c2, c3] = r.map(|r| r.as_chunks::<8>().0);
            let mut acc = [[_mm256_setzero_ps(); 4]; 2];
            for (((((a0, a1), w0), w1), w2), w3) in
                x0.iter().zip(x1).zip(c0).zip(c1).zip(c2).zip(c3)
            {
                let (v0, v1) = (load8(a0), load8(a1));
                for (i, w) in [w0, w1, w2, w3].into_iter().enumerate() {
                    let wv = load8(w);
                    acc[0][i] = _mm256_add_ps(acc[0][i], _mm256_mul_ps(v0, wv));
                    acc[1][i] = _mm256_add_ps(acc[1][i], _mm256_mul_ps(v1, wv));
                }
            }
            for (t, (acc, tail)) in acc.into_iter().zip([tail0, tail1]).enumerate() {
                for (i, acc) in acc.into_iter().enumerate() {
                    let mut lanes = [0f32; 8];
                    // SAFETY: `lanes` is 32 writable bytes.
                    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc) };
                    let v = scalar::f32_dot_finish(lanes, tail, &r[i][8 * x0.len()..]);
                    if t == 0 {
                        o0[p + i] = v;
                    } else {
                        o1[p + i] = v;
                    }
                }
            }
            p += 4;
        }
        if p < count {
            let rest = &rows[p * stride..];
            f32_dots_avx2(a[0], rest, stride, &mut o0[p..]);
            f32_dots_avx2(a[1], rest, stride, &mut o1[p..]);
        }
    }

    /// [`scalar::f32_dot`] with the eight lanes in one register.
    #[target_feature(enable = "avx2")]
    fn f32_dot_avx2(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (ac, a_tail) = a[..n].as_chunks::<8>();
        let (bc, b_tail) = b[..n].as_chunks::<8>();
        let mut acc = _mm256_setzero_ps();
        for (a, b) in ac.iter().zip(bc) {
            acc = _mm256_add_ps(acc, _mm256_mul_ps(load8(a), load8(b)));
        }
        let mut lanes = [0f32; 8];
        // SAFETY: `lanes` is 32 writable bytes.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc) };
        scalar::f32_dot_finish(lanes, a_tail, b_tail)
    }

    /// [`scalar::f32_weighted_sum`] with `8·R` outputs kept in registers
    /// across all the rows (each output sees the rows' terms in order, as
    /// one `f32_axpy` per row would add them).
    #[target_feature(enable = "avx2")]
    fn f32_weighted_sum_avx2(w: &[f32], rows: &[f32], stride: usize, out: &mut [f32]) {
        let n = out.len();
        if !scalar::whole_rows(rows, w.len(), stride, n) {
            return scalar::f32_weighted_sum(w, rows, stride, out);
        }
        let mut col = 0;
        while col + 64 <= n {
            weighted_block::<8>(w, rows, stride, col, out);
            col += 64;
        }
        while col + 8 <= n {
            weighted_block::<1>(w, rows, stride, col, out);
            col += 8;
        }
        for (j, o) in out.iter_mut().enumerate().skip(col) {
            for (p, &s) in w.iter().enumerate() {
                *o += s * rows[p * stride + j];
            }
        }
    }

    /// Outputs `col..col + 8·R` of [`f32_weighted_sum_avx2`] (rows checked
    /// whole by the caller).
    #[target_feature(enable = "avx2")]
    fn weighted_block<const R: usize>(
        w: &[f32],
        rows: &[f32],
        stride: usize,
        col: usize,
        out: &mut [f32],
    ) {
        let mut acc: [__m256; R] = std::array::from_fn(|r| load8_at(out, col + 8 * r));
        let mut at = col;
        for &s in w {
            let sv = _mm256_set1_ps(s);
            let Some(block) = rows.get(at..at + 8 * R) else {
                break;
            };
            for (acc, v) in acc.iter_mut().zip(block.as_chunks::<8>().0) {
                *acc = _mm256_add_ps(*acc, _mm256_mul_ps(sv, load8(v)));
            }
            at += stride;
        }
        for (r, acc) in acc.iter().enumerate() {
            if let Some(o) = out.get_mut(col + 8 * r..col + 8 * r + 8) {
                // SAFETY: `o` is eight writable `f32`s.
                unsafe { _mm256_storeu_ps(o.as_mut_ptr(), *acc) };
            }
        }
    }

    fn q4_0(x: &[[u8; Q4_0_BYTES]], y: &[BlockQ8_0]) -> f32 {
        // SAFETY: `AVX2` is only reachable after `supported()` (module doc).
        unsafe { q4_0_avx2(x, y) }
    }

    fn q4_1(x: &[[u8; Q4_1_BYTES]], y: &[BlockQ8_1]) -> f32 {
        // SAFETY: as above.
        unsafe { q4_1_avx2(x, y) }
    }

    fn q8_0(x: &[[u8; Q8_0_BYTES]], y: &[BlockQ8_0]) -> f32 {
        // SAFETY: as above.
        unsafe { q8_0_avx2(x, y) }
    }

    fn q5_0(x: &[[u8; Q5_0_BYTES]], y: &[BlockQ8_0]) -> f32 {
        // SAFETY: as above.
        unsafe { q5_0_avx2(x, y) }
    }

    fn q4_0x4(x: &[[u8; Q4_0_BYTES]], y: [&Tok<'_, BlockQ8_0>; 4]) -> [f32; 4] {
        // SAFETY: as above.
        unsafe { q4_0x4_avx2(x, y) }
    }

    fn q4_1x4(x: &[[u8; Q4_1_BYTES]], y: [&Tok<'_, BlockQ8_1>; 4]) -> [f32; 4] {
        // SAFETY: as above.
        unsafe { q4_1x4_avx2(x, y) }
    }

    fn q5_0x4(x: &[[u8; Q5_0_BYTES]], y: [&Tok<'_, BlockQ8_0>; 4]) -> [f32; 4] {
        // SAFETY: as above.
        unsafe { q5_0x4_avx2(x, y) }
    }

    fn q8_0x4(x: &[[u8; Q8_0_BYTES]], y: [&Tok<'_, BlockQ8_0>; 4]) -> [f32; 4] {
        // SAFETY: as above.
        unsafe { q8_0x4_avx2(x, y) }
    }

    /// The K formats carry one float term per 256 values: the integer sums
    /// are vectorized, the term is the scalar kernel's expression.
    fn q4_k(x: &[[u8; Q4_K_BYTES]], y: &[BlockQ8K]) -> f32 {
        // SAFETY: as above.
        unsafe { q4_k_avx2(x, y) }
    }

    #[target_feature(enable = "avx2,f16c")]
    fn q4_k_avx2(x: &[[u8; Q4_K_BYTES]], y: &[BlockQ8K]) -> f32 {
        prefetch_after(x);
        scalar::accumulate(x.iter().zip(y).map(|(x, y)| {
            let (isum, msum) = isum_q4_k(x, y);
            let (d, dmin) = f16_pair(x);
            scalar::term_k_min_of(d, dmin, y.d, isum, msum)
        }))
    }

    /// The two f16 values at the start of `x` (F16C: exact, the scalar
    /// `f16_to_f32`'s bits).
    #[target_feature(enable = "avx2,f16c")]
    fn f16_pair(x: &[u8]) -> (f32, f32) {
        let w = u32::from_le_bytes([x[0], x[1], x[2], x[3]]);
        let f = _mm_cvtph_ps(_mm_cvtsi32_si128(w.cast_signed()));
        (_mm_cvtss_f32(f), _mm_cvtss_f32(_mm_movehdup_ps(f)))
    }

    fn q6_k(x: &[[u8; Q6_K_BYTES]], y: &[BlockQ8K]) -> f32 {
        // SAFETY: as above.
        unsafe { q6_k_avx2(x, y) }
    }

    #[target_feature(enable = "avx2,f16c")]
    fn q6_k_avx2(x: &[[u8; Q6_K_BYTES]], y: &[BlockQ8K]) -> f32 {
        prefetch_after(x);
        scalar::accumulate(x.iter().zip(y).map(|(x, y)| {
            // The block's `d` (its last two bytes) with F16C.
            let (d, _) = f16_pair(&[x[208], x[209], 0, 0]);
            scalar::term_q6_k_of(d, y.d, isum_q6_k(x, y))
        }))
    }

    /// Per token, [`scalar::accumulate`] over the terms `term(block)` of
    /// the first `n` blocks (lane `t`: token `t`'s term): accumulator `k`
    /// of the four tokens in the four lanes of `acc[k]`, the same additions
    /// in the same order as one token at a time; then the fixed reduction.
    /// (SSE2 only, x86-64's baseline, as the two helpers below: they
    /// inline into the safe wrappers.)
    #[target_feature(enable = "sse2")]
    fn accumulate4(n: usize, mut term: impl FnMut(usize) -> __m128) -> [f32; 4] {
        let mut acc = [_mm_setzero_ps(); 8];
        for b in 0..n {
            acc[b % 8] = _mm_add_ps(acc[b % 8], term(b));
        }
        let mut lanes = [[0f32; 8]; 4];
        for (k, a) in acc.iter().enumerate() {
            let mut v = [0f32; 4];
            // SAFETY: `v` is 16 writable bytes.
            unsafe { _mm_storeu_ps(v.as_mut_ptr(), *a) };
            for (lanes, v) in lanes.iter_mut().zip(v) {
                lanes[k] = v;
            }
        }
        lanes.map(scalar::reduce_lanes)
    }

    /// Four `i32`s as `f32` lanes.
    #[target_feature(enable = "sse2")]
    fn f32x4_of(v: [i32; 4]) -> __m128 {
        _mm_cvtepi32_ps(_mm_setr_epi32(v[0], v[1], v[2], v[3]))
    }

    /// The four tokens' scales of block `b` as lanes.
    #[target_feature(enable = "sse2")]
    fn yd4(y: [&[BlockQ8K]; 4], b: usize) -> __m128 {
        _mm_setr_ps(y[0][b].d, y[1][b].d, y[2][b].d, y[3][b].d)
    }

    fn q4_kx4(x: &[[u8; Q4_K_BYTES]], y: [&Tok<'_, BlockQ8K>; 4]) -> [f32; 4] {
        let y = y.map(|t| t.blocks);
        let n = y.iter().fold(x.len(), |n, y| n.min(y.len()));
        // SAFETY: as above.
        unsafe { prefetch_after(x) };
        // SAFETY: as above (AVX2 and F16C for `isum4_q4_k` and `f16_pair`);
        // the SSE2 ones are x86-64's baseline.
        unsafe {
            accumulate4(n, |b| {
                let x = &x[b];
                let sums = isum4_q4_k(x, y.map(|y| &y[b]));
                // `scalar::term_k_min_of` lane by lane, operation for
                // operation.
                let (xd, xdmin) = f16_pair(x);
                let yd = yd4(y, b);
                let d = _mm_mul_ps(_mm_set1_ps(xd), yd);
                let dmin = _mm_mul_ps(_mm_set1_ps(xdmin), yd);
                _mm_sub_ps(
                    _mm_mul_ps(d, f32x4_of(sums.map(|s| s.0))),
                    _mm_mul_ps(dmin, f32x4_of(sums.map(|s| s.1))),
                )
            })
        }
    }

    fn q6_kx4(x: &[[u8; Q6_K_BYTES]], y: [&Tok<'_, BlockQ8K>; 4]) -> [f32; 4] {
        let y = y.map(|t| t.blocks);
        let n = y.iter().fold(x.len(), |n, y| n.min(y.len()));
        // SAFETY: as above.
        unsafe { prefetch_after(x) };
        // SAFETY: as above; the SSE2 ones are x86-64's baseline.
        unsafe {
            accumulate4(n, |b| {
                let x = &x[b];
                let isums = isum4_q6_k(x, y.map(|y| &y[b]));
                // `scalar::term_q6_k_of` lane by lane.
                let (xd, _) = f16_pair(&[x[208], x[209], 0, 0]);
                let d = _mm_mul_ps(_mm_set1_ps(xd), yd4(y, b));
                _mm_mul_ps(d, f32x4_of(isums))
            })
        }
    }

    /// The eight `i32` lanes of `v` summed (exact).
    #[target_feature(enable = "avx2")]
    fn hsum_i32(v: __m256i) -> i32 {
        let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
        _mm_cvtsi128_si32(s)
    }

    /// 32 bytes at `b[at..]` (the caller's slices are long enough).
    #[target_feature(enable = "avx2")]
    fn load_at<T: Copy>(b: &[T], at: usize) -> __m256i {
        const { assert!(std::mem::size_of::<T>() == 1) };
        let s = &b[at..at + 32];
        // SAFETY: `s` is 32 one-byte values (the slice above checked it).
        unsafe { _mm256_loadu_si256(s.as_ptr().cast()) }
    }

    /// `(Σⱼ scⱼ·Σ q·y, Σⱼ mⱼ·Σ y)` of a Q4_K block, as the scalar
    /// `isum_q4_k` (every product and sum is an exact integer).
    #[target_feature(enable = "avx2")]
    fn isum_q4_k(x: &[u8; Q4_K_BYTES], y: &BlockQ8K) -> (i32, i32) {
        let (q, sc, mins) = unpack_q4_k(x);
        (isum_q4_k_of(&q, &sc, y), msum_q4_k(mins, y))
    }

    /// `Σⱼ mⱼ·Σ y` of a block from the token's `bsums`: lane pair
    /// (2j, 2j + 1) of `mins` holds sub-block j's min, against bsums 2j and
    /// 2j + 1 (its 32 values): the scalar `msum_k`'s products, exact.
    #[target_feature(enable = "avx2")]
    fn msum_q4_k(mins: __m256i, y: &BlockQ8K) -> i32 {
        // SAFETY: `bsums` is 16 `i16`s, 32 readable bytes.
        let b = unsafe { _mm256_loadu_si256(y.bsums.as_ptr().cast()) };
        hsum_i32(_mm256_madd_epi16(b, mins))
    }

    /// A Q4_K block's eight sub-blocks of 32 values (0..15), their scales
    /// (as `i16` lanes) and the mins for [`msum_q4_k`].
    #[target_feature(enable = "avx2")]
    fn unpack_q4_k(x: &[u8; Q4_K_BYTES]) -> ([__m256i; 8], [__m256i; 8], __m256i) {
        let packed: &[u8; 12] = x[4..16].try_into().unwrap_or(&[0; 12]);
        let (scales, mins) = scales_mins_k4(packed);
        let low = _mm256_set1_epi8(0x0F);
        let mut q = [_mm256_setzero_si256(); 8];
        let mut sc = [_mm256_setzero_si256(); 8];
        for c in 0..4 {
            let raw = load_at(x, 16 + 32 * c);
            q[2 * c] = _mm256_and_si256(raw, low);
            q[2 * c + 1] = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low);
        }
        for (sc, &s) in sc.iter_mut().zip(&scales) {
            *sc = _mm256_set1_epi16(i16::from(s));
        }
        let m: [i16; 16] = std::array::from_fn(|l| i16::from(mins[l / 2]));
        // SAFETY: `m` is 32 readable bytes.
        (q, sc, unsafe { _mm256_loadu_si256(m.as_ptr().cast()) })
    }

    /// `Σⱼ scⱼ·Σ q·y` of an unpacked Q4_K block (exact integers).
    #[target_feature(enable = "avx2")]
    fn isum_q4_k_of(q: &[__m256i; 8], sc: &[__m256i; 8], y: &BlockQ8K) -> i32 {
        let ys = y.qs.as_slice();
        let mut acc = _mm256_setzero_si256();
        for (j, (q, sc)) in q.iter().zip(sc).enumerate() {
            let p = _mm256_maddubs_epi16(*q, load_at(ys, 32 * j));
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p, *sc));
        }
        hsum_i32(acc)
    }

    /// [`isum_q4_k`] of one block for four tokens, unpacked once (the
    /// mins too: `Σⱼ mⱼ·Σ y` from the tokens' `bsums` with one `madd`).
    #[target_feature(enable = "avx2")]
    fn isum4_q4_k(x: &[u8; Q4_K_BYTES], y: [&BlockQ8K; 4]) -> [(i32, i32); 4] {
        let (q, sc, mins) = unpack_q4_k(x);
        y.map(|y| (isum_q4_k_of(&q, &sc, y), msum_q4_k(mins, y)))
    }

    /// `Σⱼ scⱼ·Σ (q − 32)·y` of a Q6_K block, as the scalar `isum_q6_k`.
    #[target_feature(enable = "avx2")]
    fn isum_q6_k(x: &[u8; Q6_K_BYTES], y: &BlockQ8K) -> i32 {
        let (q, sc) = unpack_q6_k(x);
        isum_q6_k_of(&q, &sc, scales16_q6_k(x), y)
    }

    /// A Q6_K block's 16 sub-block scales as `i16` lanes, in order.
    #[target_feature(enable = "avx2")]
    fn scales16_q6_k(x: &[u8; Q6_K_BYTES]) -> __m256i {
        let raw: &[u8; 16] = x[192..208].try_into().unwrap_or(&[0; 16]);
        // SAFETY: `raw` is 16 readable bytes.
        _mm256_cvtepi8_epi16(unsafe { _mm_loadu_si128(raw.as_ptr().cast()) })
    }

    /// A Q6_K block's eight runs of 32 values (0..63) and the scales of
    /// their two sub-blocks of 16 (as `i16` lanes, one per 128-bit half).
    #[target_feature(enable = "avx2")]
    fn unpack_q6_k(x: &[u8; Q6_K_BYTES]) -> ([__m256i; 8], [__m256i; 8]) {
        let low = _mm256_set1_epi8(0x0F);
        let two = _mm256_set1_epi8(0x03);
        let scales = &x[192..208];
        let mut qs = [_mm256_setzero_si256(); 8];
        let mut scs = [_mm256_setzero_si256(); 8];
        for n in 0..2 {
            let ql0 = load_at(x, 64 * n);
            let ql1 = load_at(x, 64 * n + 32);
            let qh = load_at(x, 128 + 32 * n);
            let bits = |shift: i32| -> __m256i {
                let h = match shift {
                    0 => qh,
                    2 => _mm256_srli_epi16(qh, 2),
                    4 => _mm256_srli_epi16(qh, 4),
                    _ => _mm256_srli_epi16(qh, 6),
                };
                _mm256_slli_epi16(_mm256_and_si256(h, two), 4)
            };
            // Values 0..32, 32..64, 64..96 and 96..128 of this half: two
            // sub-blocks of 16 each.
            let q = [
                _mm256_or_si256(_mm256_and_si256(ql0, low), bits(0)),
                _mm256_or_si256(_mm256_and_si256(ql1, low), bits(2)),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), low), bits(4)),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), low), bits(6)),
            ];
            for (k, q) in q.into_iter().enumerate() {
                let j = 8 * n + 2 * k;
                qs[4 * n + k] = q;
                scs[4 * n + k] = _mm256_set_m128i(
                    _mm_set1_epi16(i16::from(scales[j + 1].cast_signed())),
                    _mm_set1_epi16(i16::from(scales[j].cast_signed())),
                );
            }
        }
        (qs, scs)
    }

    /// `Σⱼ scⱼ·Σ (q − 32)·y` of an unpacked Q6_K block (exact integers):
    /// `Σⱼ scⱼ·Σ q·y` from the values (`maddubs` pairs within ±16,256),
    /// less `32·Σⱼ scⱼ·Σ y` from the token's `bsums` (`scales16`: the 16
    /// scales as `i16` lanes, one per `bsums` entry).
    #[target_feature(enable = "avx2")]
    fn isum_q6_k_of(q: &[__m256i; 8], sc: &[__m256i; 8], scales16: __m256i, y: &BlockQ8K) -> i32 {
        let ys = y.qs.as_slice();
        let mut acc = _mm256_setzero_si256();
        for (i, (q, sc)) in q.iter().zip(sc).enumerate() {
            let yk = load_at(ys, 32 * i);
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(*q, yk), *sc));
        }
        // SAFETY: `bsums` is 16 `i16`s, 32 readable bytes.
        let b = unsafe { _mm256_loadu_si256(y.bsums.as_ptr().cast()) };
        hsum_i32(acc) - 32 * hsum_i32(_mm256_madd_epi16(b, scales16))
    }

    /// [`isum_q6_k_of`] of one block for four tokens, unpacked once.
    #[target_feature(enable = "avx2")]
    fn isum4_q6_k(x: &[u8; Q6_K_BYTES], y: [&BlockQ8K; 4]) -> [i32; 4] {
        let (q, sc) = unpack_q6_k(x);
        let scales16 = scales16_q6_k(x);
        y.map(|y| isum_q6_k_of(&q, &sc, scales16, y))
    }

    /// The rest of the tree from its first level `h[j] = pair(p[2j],
    /// p[2j+1])`: lane `k` the total of block `k` (exact integer adds; the
    /// two 128-bit halves' partials of a block meet at the end). `NARROW`: the second level adds
    /// `i16`s too (each then the sum of 8 products), widened to `i32`
    /// after it.
    #[target_feature(enable = "avx2")]
    fn hsum4<const NARROW: bool>(h: &[__m256i; 4]) -> __m256i {
        let (h0123, h4567) = if NARROW {
            let one = _mm256_set1_epi16(1);
            (
                _mm256_madd_epi16(_mm256_hadd_epi16(h[0], h[1]), one),
                _mm256_madd_epi16(_mm256_hadd_epi16(h[2], h[3]), one),
            )
        } else {
            (_mm256_hadd_epi32(h[0], h[1]), _mm256_hadd_epi32(h[2], h[3]))
        };
        let lo = _mm256_permute2x128_si256(h0123, h4567, 0x20);
        let hi = _mm256_permute2x128_si256(h0123, h4567, 0x31);
        _mm256_add_epi32(lo, hi)
    }

    /// The 32 nibbles of 16 packed bytes at `p` as `u8` lanes: low nibbles
    /// (values 0..16) in the low half, high nibbles (16..32) in the high.
    #[target_feature(enable = "avx2")]
    fn nibbles(qs: &[u8; 16]) -> __m256i {
        // SAFETY: `qs` is 16 readable bytes.
        let raw = unsafe { _mm_loadu_si128(qs.as_ptr().cast()) };
        let both = _mm256_set_m128i(_mm_srli_epi16(raw, 4), raw);
        _mm256_and_si256(both, _mm256_set1_epi8(0x0F))
    }

    /// The 32 activation values of a block.
    #[target_feature(enable = "avx2")]
    fn load32(qs: &[i8; QK]) -> __m256i {
        // SAFETY: `qs` is 32 readable bytes.
        unsafe { _mm256_loadu_si256(qs.as_ptr().cast()) }
    }

    /// `Σ x·y` of 32 signed bytes each, as eight `i32` partial sums (`x`
    /// and `y` in [−128, 127] and [−127, 127]: `|x|·y` pairs fit `i16`).
    #[target_feature(enable = "avx2")]
    fn dot_i8(x: __m256i, y: __m256i) -> __m256i {
        let ax = _mm256_sign_epi8(x, x);
        let sy = _mm256_sign_epi8(y, x);
        _mm256_madd_epi16(_mm256_set1_epi16(1), _mm256_maddubs_epi16(ax, sy))
    }

    /// `acc + t` in the lanes of the group's `m` blocks, `acc` elsewhere:
    /// the blocks of a last, partial group add to their own lanes only (as
    /// the scalar `acc[b % 8] += t`), so a lane's `−0.0` stays as it is.
    #[target_feature(enable = "avx2")]
    fn add_lanes(acc: __m256, t: __m256, m: usize) -> __m256 {
        let sum = _mm256_add_ps(acc, t);
        if m >= 8 {
            return sum;
        }
        _mm256_blendv_ps(acc, sum, _mm256_castsi256_ps(first_lanes(m)))
    }

    /// All ones in lanes `0..m`, zero in the others.
    #[target_feature(enable = "avx2")]
    fn first_lanes(m: usize) -> __m256i {
        let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let m = _mm256_set1_epi32(i32::try_from(m.min(8)).unwrap_or(8));
        _mm256_cmpgt_epi32(m, lane)
    }

    /// The lanes of `acc` reduced in the fixed order.
    #[target_feature(enable = "avx2")]
    fn finish(acc: __m256) -> f32 {
        let mut lanes = [0f32; 8];
        // SAFETY: `lanes` is 32 writable bytes.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc) };
        scalar::reduce_lanes(lanes)
    }

    /// Lane `k`: the offsets of element `k` of an array of `stride`-byte
    /// values.
    #[target_feature(enable = "avx2")]
    fn strides(stride: usize) -> __m256i {
        let s = i32::try_from(stride).unwrap_or(0);
        _mm256_setr_epi32(0, s, 2 * s, 3 * s, 4 * s, 5 * s, 6 * s, 7 * s)
    }

    /// Lane `k` (`k < min(8, blocks.len())`): the four bytes at byte `AT` of
    /// `blocks[k]` as a little-endian `u32`; 0 in the other lanes. One
    /// gather instead of eight scalar loads and inserts.
    #[target_feature(enable = "avx2")]
    fn gather_u32<const N: usize, const AT: usize>(blocks: &[[u8; N]]) -> __m256i {
        const { assert!(AT + 4 <= N) };
        let base = blocks[..blocks.len().min(8)]
            .as_ptr()
            .cast::<u8>()
            .wrapping_add(AT);
        // SAFETY: the mask enables lanes `k < min(8, len)` only, and lane `k`
        // reads bytes `N·k + AT .. N·k + AT + 4` from `base` minus `AT`: within
        // block `k` (`AT + 4 ≤ N`), which is in the slice. Disabled lanes
        // read nothing. Unaligned 4-byte reads are what the gather does.
        unsafe {
            _mm256_mask_i32gather_epi32::<1>(
                _mm256_setzero_si256(),
                base.cast::<i32>(),
                strides(N),
                first_lanes(blocks.len()),
            )
        }
    }

    /// Lane `k` (`k < min(8, blocks.len())`): the `f32` at byte `at` of
    /// `blocks[k]` (an activation block's scale); 0.0 in the other lanes.
    #[target_feature(enable = "avx2")]
    fn gather_f32<T>(blocks: &[T], at: usize) -> __m256 {
        assert!(at + 4 <= std::mem::size_of::<T>() && at.is_multiple_of(4));
        let base = blocks[..blocks.len().min(8)]
            .as_ptr()
            .cast::<u8>()
            .wrapping_add(at);
        // SAFETY: lane `k < min(8, len)` reads the four bytes at `at` of
        // `blocks[k]` (checked above to lie inside a `T`, at an `f32` field's
        // offset: the callers pass `offset_of!` of one), other lanes are
        // masked off and read nothing.
        unsafe {
            _mm256_mask_i32gather_ps::<1>(
                _mm256_setzero_ps(),
                base.cast::<f32>(),
                strides(std::mem::size_of::<T>()),
                _mm256_castsi256_ps(first_lanes(blocks.len())),
            )
        }
    }

    /// The f16 values in the low and in the high 16 bits of each `u32`
    /// lane, as two vectors of f32 lanes (F16C: exact, the scalar bits).
    #[target_feature(enable = "avx2,f16c")]
    fn f16_halves(v: __m256i) -> (__m256, __m256) {
        let lo = _mm256_and_si256(v, _mm256_set1_epi32(0xffff));
        let hi = _mm256_srli_epi32(v, 16);
        // [lo0..4, hi0..4 | lo4..8, hi4..8] → [lo0..8 | hi0..8].
        let packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(lo, hi), 0b11_01_10_00);
        (
            _mm256_cvtph_ps(_mm256_castsi256_si128(packed)),
            _mm256_cvtph_ps(_mm256_extracti128_si256(packed, 1)),
        )
    }

    /// The scalar kernel's sum, eight blocks at a time: `part` gives a
    /// block's integer sum as eight `i32` partial sums, `term` the float
    /// terms of up to eight blocks from their integer sums (in f32 lanes,
    /// the scalar term's operations lane by lane). A last group of fewer
    /// than eight blocks runs `part` on its blocks only and adds to its own
    /// lanes; then the fixed reduction.
    /// (`NARROW` as in [`dot_groups4`].)
    #[target_feature(enable = "avx2,f16c")]
    fn dot_groups<const NARROW: bool, X, Y>(
        x: &[X],
        y: &[Y],
        part: impl Fn(&X, &Y) -> __m256i,
        term: impl Fn(&[X], &[Y], __m256) -> __m256,
    ) -> f32 {
        let n = x.len().min(y.len());
        prefetch_after(x);
        let (xs, x_tail) = x[..n].as_chunks::<8>();
        let (ys, y_tail) = y[..n].as_chunks::<8>();
        let mut acc = _mm256_setzero_ps();
        let sum = |p: &[__m256i; 8]| -> __m256 {
            let h: [__m256i; 4] = std::array::from_fn(|j| pair::<NARROW>(p[2 * j], p[2 * j + 1]));
            _mm256_cvtepi32_ps(hsum4::<NARROW>(&h))
        };
        for (xg, yg) in xs.iter().zip(ys) {
            let p: [__m256i; 8] = std::array::from_fn(|k| part(&xg[k], &yg[k]));
            acc = _mm256_add_ps(acc, term(xg, yg, sum(&p)));
        }
        if !x_tail.is_empty() {
            let mut p = [_mm256_setzero_si256(); 8];
            for (p, (x, y)) in p.iter_mut().zip(x_tail.iter().zip(y_tail)) {
                *p = part(x, y);
            }
            let isum = sum(&p);
            acc = add_lanes(acc, term(x_tail, y_tail, isum), x_tail.len());
        }
        finish(acc)
    }

    /// [`dot_groups`] for four tokens at once: each group of eight blocks
    /// is unpacked once (`unpack`, and `scales` for their scales), then
    /// dotted with each token's blocks (`part`, integer sums, exact in any
    /// form) and turned into the same eight float terms as [`dot_groups`]
    /// (`term`, from the lane sums and the token's lanes at the group's
    /// first block, [`Tok`]): the same bits. Pairs up to the shortest of
    /// `x` and the four.
    ///
    /// `NARROW`: `part` gives a block's sum as 16 `i16` pairs (`maddubs`
    /// alone, for unsigned weights below 32: every partial of the tree
    /// below stays within ±31,744, an `i16`) and the first two levels of
    /// the tree add `i16`s, two blocks per instruction at the next level;
    /// otherwise eight `i32`s.
    #[target_feature(enable = "avx2,f16c")]
    fn dot_groups4<const NARROW: bool, X, Y, S: Copy>(
        x: &[X],
        y: [&Tok<'_, Y>; 4],
        unpack: impl Fn(&X) -> __m256i,
        part: impl Fn(__m256i, &Y) -> __m256i,
        scales: impl Fn(&[X]) -> S,
        term: impl Fn(S, &Tok<'_, Y>, usize, __m256i) -> __m256,
    ) -> [f32; 4] {
        let n = y.iter().fold(x.len(), |n, y| n.min(y.blocks.len()));
        prefetch_after(x);
        let (xs, x_tail) = x[..n].as_chunks::<8>();
        let mut acc = [_mm256_setzero_ps(); 4];
        for (g, xg) in xs.iter().enumerate() {
            let q: [__m256i; 8] = std::array::from_fn(|k| unpack(&xg[k]));
            let sc = scales(xg);
            // Two tokens at a time, their sums interleaved step by step:
            // each token's chain (products, the lane sums' tree, the float
            // term) is long, two side by side keep the units busy.
            for t in [0, 2] {
                let (ta, tb) = (y[t], y[t + 1]);
                let (ya, yb) = (&ta.blocks[8 * g..8 * g + 8], &tb.blocks[8 * g..8 * g + 8]);
                let mut ha = [_mm256_setzero_si256(); 4];
                let mut hb = [_mm256_setzero_si256(); 4];
                for j in 0..4 {
                    ha[j] = pair::<NARROW>(
                        part(q[2 * j], &ya[2 * j]),
                        part(q[2 * j + 1], &ya[2 * j + 1]),
                    );
                    hb[j] = pair::<NARROW>(
                        part(q[2 * j], &yb[2 * j]),
                        part(q[2 * j + 1], &yb[2 * j + 1]),
                    );
                }
                let sa = hsum4::<NARROW>(&ha);
                let sb = hsum4::<NARROW>(&hb);
                let fa = term(sc, ta, 8 * g, sa);
                let fb = term(sc, tb, 8 * g, sb);
                acc[t] = _mm256_add_ps(acc[t], fa);
                acc[t + 1] = _mm256_add_ps(acc[t + 1], fb);
            }
        }
        if !x_tail.is_empty() {
            let at = n - x_tail.len();
            let mut q = [_mm256_setzero_si256(); 8];
            for (q, x) in q.iter_mut().zip(x_tail) {
                *q = unpack(x);
            }
            let sc = scales(x_tail);
            for (acc, tok) in acc.iter_mut().zip(y) {
                let mut p = [_mm256_setzero_si256(); 8];
                for (p, (q, y)) in p.iter_mut().zip(q.iter().zip(&tok.blocks[at..n])) {
                    *p = part(*q, y);
                }
                let h: [__m256i; 4] =
                    std::array::from_fn(|j| pair::<NARROW>(p[2 * j], p[2 * j + 1]));
                *acc = add_lanes(*acc, term(sc, tok, at, hsum4::<NARROW>(&h)), x_tail.len());
            }
        }
        acc.map(|a| finish(a))
    }

    /// The first level of the tree that sums eight blocks' partial sums
    /// into one lane each ([`hsum4`]): two blocks' partials pairwise added
    /// (`i16` pairs when `NARROW`, see [`dot_groups4`]).
    #[target_feature(enable = "avx2")]
    fn pair<const NARROW: bool>(a: __m256i, b: __m256i) -> __m256i {
        if NARROW {
            _mm256_hadd_epi16(a, b)
        } else {
            _mm256_hadd_epi32(a, b)
        }
    }

    /// Eight `i32`s at `v[at..]` (zeros if `v` is too short: [`Tok`]'s
    /// lanes are padded to a multiple of eight, so they never are).
    #[target_feature(enable = "avx2")]
    fn load8_i32_at(v: &[i32], at: usize) -> __m256i {
        match v.get(at..at + 8) {
            // SAFETY: `s` is eight readable `i32`s.
            Some(s) => unsafe { _mm256_loadu_si256(s.as_ptr().cast()) },
            None => _mm256_setzero_si256(),
        }
    }

    /// The scales of up to eight Q4_0, Q5_0 or Q8_0 blocks (zero past
    /// them), once for the four tokens.
    #[target_feature(enable = "avx2,f16c")]
    fn scales_d<const N: usize>(xs: &[[u8; N]]) -> __m256 {
        f16_halves(gather_u32::<N, 0>(xs)).0
    }

    /// [`term_d`] of eight blocks from their lane sums: `isum` is
    /// `Σ (q + 2^SHIFT)·y` of unsigned weights `q + 2^SHIFT` (or `Σ q·y`
    /// when `SHIFT` is 0), so `2^SHIFT·Σy` comes off first (exact integers).
    #[target_feature(enable = "avx2,f16c")]
    fn term4_d<const SHIFT: i32>(
        dx: __m256,
        tok: &Tok<'_, BlockQ8_0>,
        at: usize,
        isum: __m256i,
    ) -> __m256 {
        let isum = if SHIFT > 0 {
            _mm256_sub_epi32(isum, _mm256_slli_epi32::<SHIFT>(load8_i32_at(&tok.sum, at)))
        } else {
            isum
        };
        let dy = load8_at(&tok.d, at);
        _mm256_mul_ps(_mm256_mul_ps(dx, dy), _mm256_cvtepi32_ps(isum))
    }

    /// Asks the CPU to start loading the bytes that follow `x` (as many as
    /// `x` has, at most 2 KiB): the next row of a matrix, whose dot product
    /// comes next, so its first cache lines arrive while this one runs.
    #[target_feature(enable = "avx2")]
    fn prefetch_after<X>(x: &[X]) {
        let len = std::mem::size_of_val(x).min(2048);
        let end = x
            .as_ptr()
            .cast::<i8>()
            .wrapping_add(std::mem::size_of_val(x));
        for at in (0..len).step_by(64) {
            // A hint that never faults, whatever the address (the pointer
            // is not dereferenced).
            _mm_prefetch::<_MM_HINT_T0>(end.wrapping_add(at));
        }
    }

    /// `(dx·dy)·isum` of up to eight Q4_0, Q5_0 or Q8_0 blocks (`d` is
    /// each block's first two bytes).
    #[target_feature(enable = "avx2,f16c")]
    fn term_d<const N: usize>(xs: &[[u8; N]], ys: &[BlockQ8_0], isum: __m256) -> __m256 {
        let (dx, _) = f16_halves(gather_u32::<N, 0>(xs));
        let dy = gather_f32(ys, std::mem::offset_of!(BlockQ8_0, d));
        _mm256_mul_ps(_mm256_mul_ps(dx, dy), isum)
    }

    /// A block's 16 nibble bytes at byte `at`.
    fn qs16<const N: usize>(x: &[u8; N], at: usize) -> &[u8; 16] {
        x[at..at + 16].try_into().unwrap_or(&[0; 16])
    }

    /// A Q4_1 block's 32 values (0..15).
    #[target_feature(enable = "avx2")]
    fn unpack_q4_1(x: &[u8; Q4_1_BYTES]) -> __m256i {
        nibbles(qs16(x, 4))
    }

    /// `Σ q·y` of 32 unsigned values below 32 and a block's activations,
    /// as 16 `i16` partial sums (`maddubs` pairs within ±7,936; the
    /// `NARROW` tree of [`dot_groups4`]).
    #[target_feature(enable = "avx2")]
    fn part_u8(q: __m256i, y: &BlockQ8_0) -> __m256i {
        _mm256_maddubs_epi16(q, load32(&y.qs))
    }

    /// `Σ q·y` of a Q4_1 block (0..15) as 16 `i16` partial sums (for the
    /// `NARROW` trees).
    #[target_feature(enable = "avx2")]
    fn part_q4_1(q: __m256i, y: &BlockQ8_1) -> __m256i {
        _mm256_maddubs_epi16(q, load32(&y.qs))
    }

    /// `(dx·dy)·isum + mx·sy` of up to eight Q4_1 blocks.
    #[target_feature(enable = "avx2,f16c")]
    fn term_q4_1(xs: &[[u8; Q4_1_BYTES]], ys: &[BlockQ8_1], isum: __m256) -> __m256 {
        let (dx, mx) = f16_halves(gather_u32::<Q4_1_BYTES, 0>(xs));
        let dy = gather_f32(ys, std::mem::offset_of!(BlockQ8_1, d));
        let sy = gather_f32(ys, std::mem::offset_of!(BlockQ8_1, s));
        _mm256_add_ps(
            _mm256_mul_ps(_mm256_mul_ps(dx, dy), isum),
            _mm256_mul_ps(mx, sy),
        )
    }

    #[target_feature(enable = "avx2,f16c")]
    fn q4_1_avx2(x: &[[u8; Q4_1_BYTES]], y: &[BlockQ8_1]) -> f32 {
        dot_groups::<true, _, _>(
            x,
            y,
            |x, y| part_q4_1(unpack_q4_1(x), y),
            |xs, ys, isum| term_q4_1(xs, ys, isum),
        )
    }

    /// `(dx·dy)·isum + mx·sy` of eight Q4_1 blocks from their lane sums.
    #[target_feature(enable = "avx2,f16c")]
    fn term4_q4_1(
        (dx, mx): (__m256, __m256),
        tok: &Tok<'_, BlockQ8_1>,
        at: usize,
        isum: __m256i,
    ) -> __m256 {
        let dy = load8_at(&tok.d, at);
        let sy = load8_at(&tok.s, at);
        _mm256_add_ps(
            _mm256_mul_ps(_mm256_mul_ps(dx, dy), _mm256_cvtepi32_ps(isum)),
            _mm256_mul_ps(mx, sy),
        )
    }

    #[target_feature(enable = "avx2,f16c")]
    fn q4_1x4_avx2(x: &[[u8; Q4_1_BYTES]], y: [&Tok<'_, BlockQ8_1>; 4]) -> [f32; 4] {
        dot_groups4::<true, _, _, _>(
            x,
            y,
            |x| unpack_q4_1(x),
            |q, y| part_q4_1(q, y),
            |xs| f16_halves(gather_u32::<Q4_1_BYTES, 0>(xs)),
            |sc, tok, at, isum| term4_q4_1(sc, tok, at, isum),
        )
    }

    /// A Q4_0 block's 32 values (−8..7).
    #[target_feature(enable = "avx2")]
    fn unpack_q4_0(x: &[u8; Q4_0_BYTES]) -> __m256i {
        _mm256_sub_epi8(nibbles(qs16(x, 2)), _mm256_set1_epi8(8))
    }

    /// A signed block's dot product with a Q8_0 block's values.
    #[target_feature(enable = "avx2")]
    fn part_q8(q: __m256i, y: &BlockQ8_0) -> __m256i {
        dot_i8(q, load32(&y.qs))
    }

    /// [`part_q8`] of a block of values within ±16 (Q4_0, Q5_0) as 16
    /// `i16` pairs for the `NARROW` trees: `|x|·y` pairs within ±4,064,
    /// eight products within ±16,256.
    #[target_feature(enable = "avx2")]
    fn part_small(q: __m256i, y: &BlockQ8_0) -> __m256i {
        let y = load32(&y.qs);
        _mm256_maddubs_epi16(_mm256_sign_epi8(q, q), _mm256_sign_epi8(y, q))
    }

    #[target_feature(enable = "avx2,f16c")]
    fn q4_0_avx2(x: &[[u8; Q4_0_BYTES]], y: &[BlockQ8_0]) -> f32 {
        dot_groups::<true, _, _>(
            x,
            y,
            |x, y| part_small(unpack_q4_0(x), y),
            |xs, ys, isum| term_d(xs, ys, isum),
        )
    }

    #[target_feature(enable = "avx2,f16c")]
    fn q4_0x4_avx2(x: &[[u8; Q4_0_BYTES]], y: [&Tok<'_, BlockQ8_0>; 4]) -> [f32; 4] {
        dot_groups4::<true, _, _, _>(
            x,
            y,
            |x| nibbles(qs16(x, 2)),
            |q, y| part_u8(q, y),
            |xs| scales_d(xs),
            |dx, tok, at, isum| term4_d::<3>(dx, tok, at, isum),
        )
    }

    /// 0xFF in byte `k` where bit `k` of `bits` is set (ggml's
    /// `bytes_from_bits_32`).
    #[target_feature(enable = "avx2")]
    fn bytes_from_bits(bits: u32) -> __m256i {
        let spread = _mm256_shuffle_epi8(
            _mm256_set1_epi32(bits.cast_signed()),
            _mm256_set_epi64x(
                0x0303_0303_0303_0303,
                0x0202_0202_0202_0202,
                0x0101_0101_0101_0101,
                0,
            ),
        );
        let others = _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe);
        _mm256_cmpeq_epi8(_mm256_or_si256(spread, others), _mm256_set1_epi64x(-1))
    }

    /// A Q5_0 block's 32 values plus 16 (0..31).
    #[target_feature(enable = "avx2")]
    fn unpack_q5_0_plus16(x: &[u8; Q5_0_BYTES]) -> __m256i {
        let qh = u32::from_le_bytes([x[2], x[3], x[4], x[5]]);
        let high = _mm256_and_si256(bytes_from_bits(qh), _mm256_set1_epi8(16));
        _mm256_or_si256(nibbles(qs16(x, 6)), high)
    }

    /// A Q5_0 block's 32 values (−16..15).
    #[target_feature(enable = "avx2")]
    fn unpack_q5_0(x: &[u8; Q5_0_BYTES]) -> __m256i {
        _mm256_sub_epi8(unpack_q5_0_plus16(x), _mm256_set1_epi8(16))
    }

    #[target_feature(enable = "avx2,f16c")]
    fn q5_0_avx2(x: &[[u8; Q5_0_BYTES]], y: &[BlockQ8_0]) -> f32 {
        dot_groups::<true, _, _>(
            x,
            y,
            |x, y| part_small(unpack_q5_0(x), y),
            |xs, ys, isum| term_d(xs, ys, isum),
        )
    }

    #[target_feature(enable = "avx2,f16c")]
    fn q5_0x4_avx2(x: &[[u8; Q5_0_BYTES]], y: [&Tok<'_, BlockQ8_0>; 4]) -> [f32; 4] {
        dot_groups4::<true, _, _, _>(
            x,
            y,
            |x| unpack_q5_0_plus16(x),
            |q, y| part_u8(q, y),
            |xs| scales_d(xs),
            |dx, tok, at, isum| term4_d::<4>(dx, tok, at, isum),
        )
    }

    #[target_feature(enable = "avx2,f16c")]
    fn q8_0_avx2(x: &[[u8; Q8_0_BYTES]], y: &[BlockQ8_0]) -> f32 {
        dot_groups::<false, _, _>(
            x,
            y,
            |x, y| part_q8(load_at(x, 2), y),
            |xs, ys, isum| term_d(xs, ys, isum),
        )
    }

    #[target_feature(enable = "avx2,f16c")]
    fn q8_0x4_avx2(x: &[[u8; Q8_0_BYTES]], y: [&Tok<'_, BlockQ8_0>; 4]) -> [f32; 4] {
        dot_groups4::<false, _, _, _>(
            x,
            y,
            |x| load_at(x, 2),
            |q, y| part_q8(q, y),
            |xs| scales_d(xs),
            |dx, tok, at, isum| term4_d::<0>(dx, tok, at, isum),
        )
    }
}

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod wasm {
    //! wasm SIMD128, for the tab. wasm has no run-time feature detection: a
    //! module using SIMD instructions does not even compile on an engine
    //! without them (every browser since 2021 has them), so this table
    //! exists only in builds with `simd128` enabled (the worker's, see
    //! `.cargo/config.toml`), and [`super::best`] still checks it against
    //! the scalar table before using it.
    //!
    //! Each block's integer sum is vectorized (exact, in any order). The
    //! 32-value formats compute four blocks' float terms at once in f32
    //! lanes with the scalar term's operations and accumulate them into the
    //! scalar kernel's lanes ([`dot_quads`]); the K formats (one term per
    //! 256 values) use the scalar term functions and
    //! [`accumulate`](scalar::accumulate). Either way: the scalar bits.

    use core::arch::wasm32::*;

    use super::super::act::{BlockQ8K, BlockQ8_0, BlockQ8_1, Tok};
    use super::super::{
        scalar, scales_mins_k4, F16_RESCALE, Q4_0_BYTES, Q4_1_BYTES, Q4_K_BYTES, Q5_0_BYTES,
        Q5_K_BYTES, Q6_K_BYTES, Q8_0_BYTES,
    };
    use super::Kernels;

    pub(super) static SIMD128: Kernels = Kernels {
        name: "simd128",
        q4_0,
        q4_1,
        q5_0,
        q8_0,
        q4_k,
        q5_k,
        q6_k,
        q4_0x4: Some(q4_0x4),
        q4_1x4: Some(q4_1x4),
        q5_0x4: Some(q5_0x4),
        q8_0x4: Some(q8_0x4),
        q4_kx4: None,
        q6_kx4: None,
        f32_dots,
        f32_dots2,
        f32_weighted_sum,
        f32_exp,
        f32_silu_mul,
    };

    /// [`scalar::exp`] in four lanes, operation for operation.
    #[inline]
    fn exp4(x: v128) -> v128 {
        let hi = f32x4_splat(scalar::EXP_HI);
        let lo = f32x4_splat(scalar::EXP_LO);
        let x = v128_bitselect(hi, x, f32x4_gt(x, hi));
        let x = v128_bitselect(lo, x, f32x4_lt(x, lo));
        let c = &scalar::EXP_CONSTS;
        let rounder = f32x4_splat(c.rounder);
        let t = f32x4_add(f32x4_mul(x, f32x4_splat(c.log2e)), rounder);
        let n = f32x4_sub(t, rounder);
        let r = f32x4_sub(
            f32x4_sub(x, f32x4_mul(n, f32x4_splat(c.ln2_hi))),
            f32x4_mul(n, f32x4_splat(c.ln2_lo)),
        );
        let mut p = f32x4_splat(scalar::EXP_POLY[0]);
        for &k in &scalar::EXP_POLY[1..] {
            p = f32x4_add(f32x4_mul(p, r), f32x4_splat(k));
        }
        let e = f32x4_add(
            f32x4_add(f32x4_mul(p, f32x4_mul(r, r)), r),
            f32x4_splat(1.0),
        );
        let k = i32x4_sub(t, rounder);
        i32x4_add(e, i32x4_shl(k, 23))
    }

    /// Stores the four lanes of `v` into `o`.
    #[inline]
    fn store4(o: &mut [f32; 4], v: v128) {
        *o = [
            f32x4_extract_lane::<0>(v),
            f32x4_extract_lane::<1>(v),
            f32x4_extract_lane::<2>(v),
            f32x4_extract_lane::<3>(v),
        ];
    }

    fn f32_exp(x: &mut [f32], sub: f32) {
        let (chunks, tail) = x.as_chunks_mut::<4>();
        let s = f32x4_splat(sub);
        for c in chunks {
            let v = exp4(f32x4_sub(f32x4_at(c, 0), s));
            store4(c, v);
        }
        scalar::f32_exp(tail, sub);
    }

    fn f32_silu_mul(g: &mut [f32], u: &[f32]) {
        let n = g.len().min(u.len());
        let (gc, g_tail) = g[..n].as_chunks_mut::<4>();
        let (uc, u_tail) = u[..n].as_chunks::<4>();
        for (g, u) in gc.iter_mut().zip(uc) {
            let gv = f32x4_at(g, 0);
            let e = exp4(f32x4_neg(gv));
            let v = f32x4_mul(
                f32x4_div(gv, f32x4_add(f32x4_splat(1.0), e)),
                f32x4_at(u, 0),
            );
            store4(g, v);
        }
        scalar::f32_silu_mul(g_tail, u_tail);
    }

    /// [`scalar::f32_dots`], four rows at a time (eight accumulator chains
    /// instead of two, `a` loaded once for the four), each row's lanes
    /// summed as [`f32_dot`] sums them (the same bits).
    fn f32_dots(a: &[f32], rows: &[f32], stride: usize, out: &mut [f32]) {
        let n = a.len();
        let (ac, a_tail) = a.as_chunks::<8>();
        let mut p = 0;
        if scalar::whole_rows(rows, out.len(), stride, n) {
            while p + 4 <= out.len() {
                let row = |i: usize| &rows[(p + i) * stride..(p + i) * stride + n];
                let r = [row(0), row(1), row(2), row(3)];
                let [c0, c1, c2, c3] = r.map(|r| r.as_chunks::<8>().0);
                let mut lo = [f32x4_splat(0.0); 4];
                let mut hi = [f32x4_splat(0.0); 4];
                for ((((a, w0), w1), w2), w3) in ac.iter().zip(c0).zip(c1).zip(c2).zip(c3) {
                    let (alo, ahi) = (f32x4_at(a, 0), f32x4_at(a, 4));
                    for (i, w) in [w0, w1, w2, w3].into_iter().enumerate() {
                        lo[i] = f32x4_add(lo[i], f32x4_mul(alo, f32x4_at(w, 0)));
                        hi[i] = f32x4_add(hi[i], f32x4_mul(ahi, f32x4_at(w, 4)));
                    }
                }
                for i in 0..4 {
                    let lanes = [
                        f32x4_extract_lane::<0>(lo[i]),
                        f32x4_extract_lane::<1>(lo[i]),
                        f32x4_extract_lane::<2>(lo[i]),
                        f32x4_extract_lane::<3>(lo[i]),
                        f32x4_extract_lane::<0>(hi[i]),
                        f32x4_extract_lane::<1>(hi[i]),
                        f32x4_extract_lane::<2>(hi[i]),
                        f32x4_extract_lane::<3>(hi[i]),
                    ];
                    out[p + i] = scalar::f32_dot_finish(lanes, a_tail, &r[i][8 * ac.len()..]);
                }
                p += 4;
            }
        }
        for (q, o) in out.iter_mut().enumerate().skip(p) {
            *o = f32_dot(a, scalar::row_at(rows, q, stride, n));
        }
    }

    /// [`scalar::f32_dots2`] as two [`f32_dots`] (V8 has 16 vector
    /// registers on x86: sixteen accumulators and the loads would spill).
    fn f32_dots2(a: [&[f32]; 2], rows: &[f32], stride: usize, out: [&mut [f32]; 2]) {
        let [o0, o1] = out;
        f32_dots(a[0], rows, stride, o0);
        f32_dots(a[1], rows, stride, o1);
    }

    /// [`scalar::f32_dot`] with lanes 0..4 and 4..8 in two registers.
    fn f32_dot(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (ac, a_tail) = a[..n].as_chunks::<8>();
        let (bc, b_tail) = b[..n].as_chunks::<8>();
        let (mut lo, mut hi) = (f32x4_splat(0.0), f32x4_splat(0.0));
        for (a, b) in ac.iter().zip(bc) {
            lo = f32x4_add(lo, f32x4_mul(f32x4_at(a, 0), f32x4_at(b, 0)));
            hi = f32x4_add(hi, f32x4_mul(f32x4_at(a, 4), f32x4_at(b, 4)));
        }
        let lanes = [
            f32x4_extract_lane::<0>(lo),
            f32x4_extract_lane::<1>(lo),
            f32x4_extract_lane::<2>(lo),
            f32x4_extract_lane::<3>(lo),
            f32x4_extract_lane::<0>(hi),
            f32x4_extract_lane::<1>(hi),
            f32x4_extract_lane::<2>(hi),
            f32x4_extract_lane::<3>(hi),
        ];
        scalar::f32_dot_finish(lanes, a_tail, b_tail)
    }

    /// [`scalar::f32_weighted_sum`] with 32 outputs at a time kept in
    /// registers across all the rows, then four, then one by one (each
    /// output sees the rows' terms in order).
    fn f32_weighted_sum(w: &[f32], rows: &[f32], stride: usize, out: &mut [f32]) {
        let n = out.len();
        if w.iter()
            .enumerate()
            .any(|(p, _)| scalar::row_at(rows, p, stride, n).len() < n)
        {
            return scalar::f32_weighted_sum(w, rows, stride, out);
        }
        let mut col = 0;
        while col + 32 <= n {
            weighted_block::<8>(w, rows, stride, col, out);
            col += 32;
        }
        while col + 4 <= n {
            weighted_block::<1>(w, rows, stride, col, out);
            col += 4;
        }
        for (j, o) in out.iter_mut().enumerate().skip(col) {
            for (p, &s) in w.iter().enumerate() {
                *o += s * rows[p * stride + j];
            }
        }
    }

    /// Outputs `col..col + 4·R` of [`f32_weighted_sum`] (rows checked whole
    /// by the caller).
    #[inline]
    fn weighted_block<const R: usize>(
        w: &[f32],
        rows: &[f32],
        stride: usize,
        col: usize,
        out: &mut [f32],
    ) {
        let mut acc: [v128; R] = std::array::from_fn(|r| f32x4_at(out, col + 4 * r));
        for (p, &s) in w.iter().enumerate() {
            let sv = f32x4_splat(s);
            let row = scalar::row_at(rows, p, stride, col + 4 * R);
            for (r, acc) in acc.iter_mut().enumerate() {
                *acc = f32x4_add(*acc, f32x4_mul(sv, f32x4_at(row, col + 4 * r)));
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            let o = &mut out[col + 4 * r..col + 4 * r + 4];
            o[0] = f32x4_extract_lane::<0>(*acc);
            o[1] = f32x4_extract_lane::<1>(*acc);
            o[2] = f32x4_extract_lane::<2>(*acc);
            o[3] = f32x4_extract_lane::<3>(*acc);
        }
    }

    /// Four `f32`s at `v[at..]`.
    #[inline]
    fn f32x4_at(v: &[f32], at: usize) -> v128 {
        let s = &v[at..at + 4];
        // SAFETY: `s` is four readable `f32`s (16 bytes; the slice above
        // checked the bounds), `read_unaligned` needs no alignment.
        unsafe { s.as_ptr().cast::<v128>().read_unaligned() }
    }

    /// 16 bytes at `b[at..]`.
    #[inline]
    fn load<T: Copy>(b: &[T], at: usize) -> v128 {
        const { assert!(std::mem::size_of::<T>() == 1) };
        let s = &b[at..at + 16];
        // SAFETY: `s` is 16 readable one-byte values (the slice above
        // checked the bounds) and `read_unaligned` needs no alignment.
        unsafe { s.as_ptr().cast::<v128>().read_unaligned() }
    }

    /// `Σ x·y` of 16 signed bytes each, as four `i32` partial sums (each
    /// product is within ±128·127, an `i16`).
    #[inline]
    fn dot16(x: v128, y: v128) -> v128 {
        let lo = i16x8_extmul_low_i8x16(x, y);
        let hi = i16x8_extmul_high_i8x16(x, y);
        i32x4_add(
            i32x4_extadd_pairwise_i16x8(lo),
            i32x4_extadd_pairwise_i16x8(hi),
        )
    }

    /// The four lanes summed.
    #[inline]
    fn hsum(v: v128) -> i32 {
        (i32x4_extract_lane::<0>(v) + i32x4_extract_lane::<1>(v))
            + (i32x4_extract_lane::<2>(v) + i32x4_extract_lane::<3>(v))
    }

    /// The low and high nibbles of 16 bytes, as values 0..16.
    #[inline]
    fn nibbles(raw: v128) -> (v128, v128) {
        (v128_and(raw, u8x16_splat(0x0F)), u8x16_shr(raw, 4))
    }

    /// `0xFF` in lane `k` where bit `k` of `bits` is set (`k < 16`).
    #[inline]
    fn bit_lanes(bits: u32) -> v128 {
        let spread = i8x16_swizzle(
            u32x4_splat(bits),
            i8x16(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1),
        );
        let mask = u8x16(1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128);
        i8x16_eq(v128_and(spread, mask), mask)
    }

    fn blocks<X, Y>(x: &[X], y: &[Y], term: impl Fn(&X, &Y) -> f32) -> f32 {
        scalar::accumulate(x.iter().zip(y).map(|(x, y)| term(x, y)))
    }

    /// The f16 values in the four `u32` lanes of `h` as f32 lanes, with the
    /// bits of the scalar [`f16_to_f32`](super::super::f16_to_f32): the same
    /// rescaling multiplication per lane, the same NaN and infinity bits.
    /// Finite halves (every scale of a sane model) take the first branch:
    /// four operations fewer.
    #[inline]
    fn f16_lanes(h: v128) -> v128 {
        let sign = i32x4_shl(v128_and(h, u32x4_splat(0x8000)), 16);
        let em = v128_and(h, u32x4_splat(0x7fff));
        let finite = f32x4_mul(i32x4_shl(em, 13), f32x4_splat(F16_RESCALE));
        let is_special = u32x4_ge(em, u32x4_splat(0x7c00));
        if !v128_any_true(is_special) {
            return v128_or(sign, finite);
        }
        let man = v128_and(h, u32x4_splat(0x3ff));
        let quiet = v128_andnot(u32x4_splat(0x0040_0000), i32x4_eq(man, u32x4_splat(0)));
        let special = v128_or(u32x4_splat(0x7f80_0000), v128_or(quiet, i32x4_shl(man, 13)));
        v128_or(sign, v128_bitselect(special, finite, is_special))
    }

    /// `f(b[k])` (f16 bits) for the four blocks, as f32 lanes.
    #[inline]
    fn halves<T>(b: &[T; 4], f: impl Fn(&T) -> u16) -> v128 {
        let h = |k: usize| u32::from(f(&b[k]));
        f16_lanes(u32x4(h(0), h(1), h(2), h(3)))
    }

    /// `f(b[k])` for the four blocks, as f32 lanes.
    #[inline]
    fn f32x4_of<T>(b: &[T; 4], f: impl Fn(&T) -> f32) -> v128 {
        f32x4(f(&b[0]), f(&b[1]), f(&b[2]), f(&b[3]))
    }

    fn f16_le(b: &[u8], at: usize) -> u16 {
        u16::from_le_bytes([b[at], b[at + 1]])
    }

    /// The totals of four `i32x4` partial sums, in lane order (exact).
    #[inline]
    fn hsum4(v: [v128; 4]) -> v128 {
        let pair = |a: v128, b: v128| {
            i32x4_add(
                i32x4_shuffle::<0, 4, 1, 5>(a, b),
                i32x4_shuffle::<2, 6, 3, 7>(a, b),
            )
        };
        let (a, b) = (pair(v[0], v[1]), pair(v[2], v[3]));
        i32x4_add(
            i32x4_shuffle::<0, 1, 4, 5>(a, b),
            i32x4_shuffle::<2, 3, 6, 7>(a, b),
        )
    }

    /// The scalar kernel's sum, four blocks at a time: `quad` gives four
    /// consecutive blocks' terms in f32 lanes (the scalar term's operations,
    /// lane by lane, no fused multiply-add); blocks `8i..8i+4` add to lanes
    /// 0..4 and `8i+4..8i+8` to lanes 4..8 of the accumulators, the last
    /// blocks (fewer than four) to lane `b % 8` through `term`, then the
    /// fixed reduction: every lane sees the scalar kernel's additions in its
    /// order.
    fn dot_quads<X, Y>(
        x: &[X],
        y: &[Y],
        quad: impl Fn(&[X; 4], &[Y; 4]) -> v128,
        term: impl Fn(&X, &Y) -> f32,
    ) -> f32 {
        let n = x.len().min(y.len());
        let (xq, x_tail) = x[..n].as_chunks::<4>();
        let (yq, y_tail) = y[..n].as_chunks::<4>();
        let mut acc = [f32x4_splat(0.0); 2];
        for (i, (xq, yq)) in xq.iter().zip(yq).enumerate() {
            acc[i % 2] = f32x4_add(acc[i % 2], quad(xq, yq));
        }
        let tail = x_tail.iter().zip(y_tail).map(|(x, y)| term(x, y));
        finish_quads(acc, 4 * xq.len(), tail)
    }

    /// The end of [`dot_quads`]: the two accumulators as the scalar
    /// kernel's eight lanes, the last blocks' terms (`tail`, block
    /// `done + j` for the j-th) added to lane `b % 8`, the fixed reduction.
    fn finish_quads([lo, hi]: [v128; 2], done: usize, tail: impl Iterator<Item = f32>) -> f32 {
        let mut lanes = [
            f32x4_extract_lane::<0>(lo),
            f32x4_extract_lane::<1>(lo),
            f32x4_extract_lane::<2>(lo),
            f32x4_extract_lane::<3>(lo),
            f32x4_extract_lane::<0>(hi),
            f32x4_extract_lane::<1>(hi),
            f32x4_extract_lane::<2>(hi),
            f32x4_extract_lane::<3>(hi),
        ];
        for (j, t) in tail.enumerate() {
            lanes[(done + j) % 8] += t;
        }
        scalar::reduce_lanes(lanes)
    }

    /// Four blocks' `(dx·dy)·isum` (Q4_0, Q5_0, Q8_0; `x` starts with `d`).
    #[inline]
    fn quad_d<X: AsRef<[u8]>>(xs: &[X; 4], ys: &[BlockQ8_0; 4], isums: [v128; 4]) -> v128 {
        let d = f32x4_mul(halves(xs, |x| f16_le(x.as_ref(), 0)), f32x4_of(ys, |y| y.d));
        f32x4_mul(d, f32x4_convert_i32x4(hsum4(isums)))
    }

    /// The even and the odd bytes of 16 signed bytes, each sign-extended
    /// into the eight `i16` lanes (byte `2i` and byte `2i + 1` in lane `i`).
    #[inline]
    fn even_odd_i8(v: v128) -> (v128, v128) {
        (i16x8_shr(i16x8_shl(v, 8), 8), i16x8_shr(v, 8))
    }

    /// `Σ (q − sub)·y` of a block's 16 nibble bytes `raw` (low nibbles
    /// with `y0`, high nibbles with `y1`) as four `i32` partial sums. The
    /// nibbles are cut straight into `i16` lanes, even bytes and odd bytes
    /// apart, and the activations split the same way, so each product pair
    /// is one `i32x4_dot_i16x8` (what x86's `pmaddwd` does) with no
    /// widening of the weights: about two thirds of the instructions of
    /// the widening multiplies of [`dot16`].
    #[inline]
    fn dot_nibbles(raw: v128, y0: v128, y1: v128, sub: i16) -> v128 {
        dot_pairs(unpack_nibbles(raw, sub), y0, y1)
    }

    /// A block's 16 nibble bytes as the four `i16x8` vectors of
    /// [`dot_nibbles`]: low nibbles of the even and the odd bytes, then the
    /// high ones, each less `sub`.
    #[inline]
    fn unpack_nibbles(raw: v128, sub: i16) -> [v128; 4] {
        let m = u16x8_splat(0x000F);
        let s = i16x8_splat(sub);
        [
            v128_and(raw, m),
            v128_and(u16x8_shr(raw, 8), m),
            v128_and(u16x8_shr(raw, 4), m),
            u16x8_shr(raw, 12),
        ]
        .map(|q| i16x8_sub(q, s))
    }

    /// `Σ q·y` of a block's values as four `i16x8` vectors (even values of
    /// the first 16, odd ones, even of the last 16, odd ones) with its
    /// activations `y0`, `y1`, as four `i32` partial sums.
    #[inline]
    fn dot_pairs(q: [v128; 4], y0: v128, y1: v128) -> v128 {
        let (y0e, y0o) = even_odd_i8(y0);
        let (y1e, y1o) = even_odd_i8(y1);
        i32x4_add(
            i32x4_add(i32x4_dot_i16x8(q[0], y0e), i32x4_dot_i16x8(q[1], y0o)),
            i32x4_add(i32x4_dot_i16x8(q[2], y1e), i32x4_dot_i16x8(q[3], y1o)),
        )
    }

    /// [`dot_quads`] for four tokens: each quad of blocks is unpacked once
    /// (`unpack`, `scales` for its scales) and dotted with each token's
    /// blocks (`part`, exact integer sums); `quad` gives a token's four
    /// float terms from the four blocks' partial sums and the token's lanes
    /// at the quad's first block ([`Tok`]), with the operations of the
    /// single kernel's quad; the last blocks (fewer than four) go through
    /// `term` one by one. Per token the same lanes and order as
    /// [`dot_quads`]: the same bits. Pairs up to the shortest of `x` and
    /// the four.
    fn dot_quads4<X, Y, U: Copy, S: Copy>(
        x: &[X],
        y: [&Tok<'_, Y>; 4],
        unpack: impl Fn(&X) -> U,
        part: impl Fn(U, &Y) -> v128,
        scales: impl Fn(&[X; 4]) -> S,
        quad: impl Fn(S, &Tok<'_, Y>, usize, [v128; 4]) -> v128,
        term: impl Fn(&X, &Y) -> f32,
    ) -> [f32; 4] {
        let n = y.iter().fold(x.len(), |n, y| n.min(y.blocks.len()));
        let (xq, x_tail) = x[..n].as_chunks::<4>();
        let mut acc = [[f32x4_splat(0.0); 2]; 4];
        for (i, xq) in xq.iter().enumerate() {
            let u: [U; 4] = std::array::from_fn(|k| unpack(&xq[k]));
            let sc = scales(xq);
            for (acc, tok) in acc.iter_mut().zip(y) {
                let yq = &tok.blocks[4 * i..4 * i + 4];
                let parts = std::array::from_fn(|k| part(u[k], &yq[k]));
                acc[i % 2] = f32x4_add(acc[i % 2], quad(sc, tok, 4 * i, parts));
            }
        }
        let done = 4 * xq.len();
        std::array::from_fn(|t| {
            let tail = x_tail
                .iter()
                .zip(&y[t].blocks[done..n])
                .map(|(x, y)| term(x, y));
            finish_quads(acc[t], done, tail)
        })
    }

    /// [`quad_d`] from the four blocks' `dx` (converted once for four
    /// tokens) and the token's lanes.
    #[inline]
    fn quad4_d(dx: v128, tok: &Tok<'_, BlockQ8_0>, at: usize, isums: [v128; 4]) -> v128 {
        let d = f32x4_mul(dx, f32x4_at(&tok.d, at));
        f32x4_mul(d, f32x4_convert_i32x4(hsum4(isums)))
    }

    /// The `d` of four 32-value blocks (their first two bytes) as f32 lanes.
    #[inline]
    fn dx4<const N: usize>(xs: &[[u8; N]; 4]) -> v128 {
        halves(xs, |x| f16_le(x, 0))
    }

    fn q4_0x4(x: &[[u8; Q4_0_BYTES]], y: [&Tok<'_, BlockQ8_0>; 4]) -> [f32; 4] {
        dot_quads4(
            x,
            y,
            |x| unpack_nibbles(load(x, 2), 8),
            |q, y| dot_pairs(q, load(&y.qs, 0), load(&y.qs, 16)),
            dx4,
            quad4_d,
            |x, y| scalar::term_d(x, y.d, hsum(part_q4_0(x, y))),
        )
    }

    fn q4_1x4(x: &[[u8; Q4_1_BYTES]], y: [&Tok<'_, BlockQ8_1>; 4]) -> [f32; 4] {
        dot_quads4(
            x,
            y,
            |x| unpack_nibbles(load(x, 4), 0),
            |q, y| dot_pairs(q, load(&y.qs, 0), load(&y.qs, 16)),
            |xs| {
                let dm = |k: usize| u32::from_le_bytes([xs[k][0], xs[k][1], xs[k][2], xs[k][3]]);
                let dm = u32x4(dm(0), dm(1), dm(2), dm(3));
                (
                    f16_lanes(v128_and(dm, u32x4_splat(0xffff))),
                    f16_lanes(u32x4_shr(dm, 16)),
                )
            },
            |(dx, mx), tok, at, isums| {
                let d = f32x4_mul(dx, f32x4_at(&tok.d, at));
                let m = f32x4_mul(mx, f32x4_at(&tok.s, at));
                f32x4_add(f32x4_mul(d, f32x4_convert_i32x4(hsum4(isums))), m)
            },
            |x, y| scalar::term_q4_1(x, y, hsum(part_q4_1(x, y))),
        )
    }

    fn q5_0x4(x: &[[u8; Q5_0_BYTES]], y: [&Tok<'_, BlockQ8_0>; 4]) -> [f32; 4] {
        dot_quads4(
            x,
            y,
            unpack_q5_0,
            |(lo, hi), y| i32x4_add(dot16(lo, load(&y.qs, 0)), dot16(hi, load(&y.qs, 16))),
            dx4,
            quad4_d,
            |x, y| scalar::term_d(x, y.d, hsum(part_q5_0(x, y))),
        )
    }

    fn q8_0x4(x: &[[u8; Q8_0_BYTES]], y: [&Tok<'_, BlockQ8_0>; 4]) -> [f32; 4] {
        dot_quads4(
            x,
            y,
            |x| {
                let (lo_e, lo_o) = even_odd_i8(load(x, 2));
                let (hi_e, hi_o) = even_odd_i8(load(x, 18));
                [lo_e, lo_o, hi_e, hi_o]
            },
            |q, y| dot_pairs(q, load(&y.qs, 0), load(&y.qs, 16)),
            dx4,
            quad4_d,
            |x, y| scalar::term_d(x, y.d, hsum(part_q8_0(x, y))),
        )
    }

    /// `Σ x·y` of 16 signed bytes each, as four `i32` partial sums, by even
    /// and odd bytes (as [`dot_nibbles`]).
    #[inline]
    fn dot_i8_split(x: v128, y: v128) -> v128 {
        let (xe, xo) = even_odd_i8(x);
        let (ye, yo) = even_odd_i8(y);
        i32x4_add(i32x4_dot_i16x8(xe, ye), i32x4_dot_i16x8(xo, yo))
    }

    fn part_q4_0(x: &[u8; Q4_0_BYTES], y: &BlockQ8_0) -> v128 {
        dot_nibbles(load(x, 2), load(&y.qs, 0), load(&y.qs, 16), 8)
    }

    fn q4_0(x: &[[u8; Q4_0_BYTES]], y: &[BlockQ8_0]) -> f32 {
        dot_quads(
            x,
            y,
            |xs, ys| quad_d(xs, ys, std::array::from_fn(|k| part_q4_0(&xs[k], &ys[k]))),
            |x, y| scalar::term_d(x, y.d, hsum(part_q4_0(x, y))),
        )
    }

    fn part_q4_1(x: &[u8; Q4_1_BYTES], y: &BlockQ8_1) -> v128 {
        dot_nibbles(load(x, 4), load(&y.qs, 0), load(&y.qs, 16), 0)
    }

    fn q4_1(x: &[[u8; Q4_1_BYTES]], y: &[BlockQ8_1]) -> f32 {
        dot_quads(
            x,
            y,
            |xs, ys| {
                let isum = hsum4(std::array::from_fn(|k| part_q4_1(&xs[k], &ys[k])));
                // Each block's `d` and `m` in one `u32` load.
                let dm = |k: usize| u32::from_le_bytes([xs[k][0], xs[k][1], xs[k][2], xs[k][3]]);
                let dm = u32x4(dm(0), dm(1), dm(2), dm(3));
                let dx = f16_lanes(v128_and(dm, u32x4_splat(0xffff)));
                let mx = f16_lanes(u32x4_shr(dm, 16));
                let d = f32x4_mul(dx, f32x4_of(ys, |y| y.d));
                let m = f32x4_mul(mx, f32x4_of(ys, |y| y.s));
                f32x4_add(f32x4_mul(d, f32x4_convert_i32x4(isum)), m)
            },
            |x, y| scalar::term_q4_1(x, y, hsum(part_q4_1(x, y))),
        )
    }

    /// A Q5_0 block's 32 values (−16..15) as two `i8x16` vectors.
    #[inline]
    fn unpack_q5_0(x: &[u8; Q5_0_BYTES]) -> (v128, v128) {
        let qh = u32::from_le_bytes([x[2], x[3], x[4], x[5]]);
        let (lo, hi) = nibbles(load(x, 6));
        let sixteen = i8x16_splat(16);
        let value = |nib: v128, bits: u32| {
            let high = v128_and(bit_lanes(bits), sixteen);
            i8x16_sub(v128_or(nib, high), sixteen)
        };
        (value(lo, qh), value(hi, qh >> 16))
    }

    fn part_q5_0(x: &[u8; Q5_0_BYTES], y: &BlockQ8_0) -> v128 {
        let (lo, hi) = unpack_q5_0(x);
        i32x4_add(dot16(lo, load(&y.qs, 0)), dot16(hi, load(&y.qs, 16)))
    }

    fn q5_0(x: &[[u8; Q5_0_BYTES]], y: &[BlockQ8_0]) -> f32 {
        dot_quads(
            x,
            y,
            |xs, ys| quad_d(xs, ys, std::array::from_fn(|k| part_q5_0(&xs[k], &ys[k]))),
            |x, y| scalar::term_d(x, y.d, hsum(part_q5_0(x, y))),
        )
    }

    fn part_q8_0(x: &[u8; Q8_0_BYTES], y: &BlockQ8_0) -> v128 {
        i32x4_add(
            dot_i8_split(load(x, 2), load(&y.qs, 0)),
            dot_i8_split(load(x, 18), load(&y.qs, 16)),
        )
    }

    fn q8_0(x: &[[u8; Q8_0_BYTES]], y: &[BlockQ8_0]) -> f32 {
        dot_quads(
            x,
            y,
            |xs, ys| quad_d(xs, ys, std::array::from_fn(|k| part_q8_0(&xs[k], &ys[k]))),
            |x, y| scalar::term_d(x, y.d, hsum(part_q8_0(x, y))),
        )
    }

    /// `Σⱼ scⱼ·Σ q·y` of a Q4_K (`h = None`) or Q5_K block (`h` = its 32
    /// high-bit bytes), `qs` its 128 nibble bytes.
    #[inline]
    fn isum_k(scales: &[u8], qs: &[u8], h: Option<&[u8]>, y: &BlockQ8K) -> i32 {
        let one = u8x16_splat(1);
        let mut acc = i32x4_splat(0);
        let packed: &[u8; 12] = scales.try_into().unwrap_or(&[0; 12]);
        let (sc, _) = scales_mins_k4(packed);
        for c in 0..4 {
            let (sc1, sc2) = (sc[2 * c], sc[2 * c + 1]);
            let (mut s1, mut s2) = (i32x4_splat(0), i32x4_splat(0));
            for half in 0..2 {
                let (mut lo, mut hi) = nibbles(load(qs, 32 * c + 16 * half));
                if let Some(h) = h {
                    let qh = load(h, 16 * half);
                    let bit = |shift: u32| i8x16_shl(v128_and(u8x16_shr(qh, shift), one), 4);
                    lo = v128_or(lo, bit(2 * c as u32));
                    hi = v128_or(hi, bit(2 * c as u32 + 1));
                }
                s1 = i32x4_add(s1, dot16(lo, load(&y.qs, 64 * c + 16 * half)));
                s2 = i32x4_add(s2, dot16(hi, load(&y.qs, 64 * c + 32 + 16 * half)));
            }
            acc = i32x4_add(acc, i32x4_mul(s1, i32x4_splat(i32::from(sc1))));
            acc = i32x4_add(acc, i32x4_mul(s2, i32x4_splat(i32::from(sc2))));
        }
        hsum(acc)
    }

    fn q4_k(x: &[[u8; Q4_K_BYTES]], y: &[BlockQ8K]) -> f32 {
        blocks(x, y, |x, y| {
            let isum = isum_k(&x[4..16], &x[16..], None, y);
            scalar::term_k_min(x, y.d, isum, scalar::msum_k(&x[4..16], y))
        })
    }

    fn q5_k(x: &[[u8; Q5_K_BYTES]], y: &[BlockQ8K]) -> f32 {
        blocks(x, y, |x, y| {
            let isum = isum_k(&x[4..16], &x[48..], Some(&x[16..48]), y);
            scalar::term_k_min(x, y.d, isum, scalar::msum_k(&x[4..16], y))
        })
    }

    fn q6_k(x: &[[u8; Q6_K_BYTES]], y: &[BlockQ8K]) -> f32 {
        blocks(x, y, |x, y| {
            let three = u8x16_splat(3);
            let m32 = i8x16_splat(32);
            let scales = &x[192..208];
            let mut acc = i32x4_splat(0);
            for n in 0..2 {
                for half in 0..2 {
                    let qh = load(x, 128 + 32 * n + 16 * half);
                    let (lo0, hi0) = nibbles(load(x, 64 * n + 16 * half));
                    let (lo1, hi1) = nibbles(load(x, 64 * n + 32 + 16 * half));
                    // Values 32k + l of this half of `n`'s 128, k = 0..4.
                    for (k, nib) in [lo0, lo1, hi0, hi1].into_iter().enumerate() {
                        let high = i8x16_shl(v128_and(u8x16_shr(qh, 2 * k as u32), three), 4);
                        let q = i8x16_sub(v128_or(nib, high), m32);
                        let d = dot16(q, load(&y.qs, 128 * n + 32 * k + 16 * half));
                        let sc = scales[8 * n + 2 * k + half].cast_signed();
                        acc = i32x4_add(acc, i32x4_mul(d, i32x4_splat(i32::from(sc))));
                    }
                }
            }
            scalar::term_q6_k(x, y.d, hsum(acc))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{random_blocks, Rng};
    use super::super::{GgmlType, QTensor, QuantizedActivation};
    use super::*;

    /// Every table equals the scalar one bit for bit: every format, block
    /// counts around the groups of eight, weights and activations random.
    #[test]
    fn every_kernel_equals_the_scalar_one_bit_for_bit() {
        let tables = available();
        println!(
            "kernels here: {:?}",
            tables.iter().map(|k| k.name).collect::<Vec<_>>()
        );
        for k in &tables {
            for seed in [0x5eed_51d0, 7, 8] {
                let rows = super::super::check::check(k, seed).expect("equal to scalar");
                // 7 formats × (11 block counts × 3 rows + 3 rows × 24
                // tokens in four prompts); 12 lengths × (5 shapes × 4 row
                // kernel results (dots, dots2's two, weighted sum) + exp +
                // SiLU).
                assert_eq!(rows, 7 * (11 * 3 + 3 * (4 + 6 + 9 + 5)) + 12 * (5 * 4 + 2));
            }
        }
    }

    /// The check catches a kernel that is off in a single bit.
    #[test]
    fn the_check_catches_a_kernel_off_by_one_bit() {
        fn q8_0_off(x: &[[u8; Q8_0_BYTES]], y: &[super::super::act::BlockQ8_0]) -> f32 {
            let v = scalar::vec_dot_q8_0_q8_0(x, y);
            if x.len() == 9 {
                f32::from_bits(v.to_bits() ^ 1)
            } else {
                v
            }
        }
        let off = Kernels {
            name: "off",
            q8_0: q8_0_off,
            ..SCALAR
        };
        let e = super::super::check::check(&off, 1).expect_err("caught");
        assert!(
            matches!(
                e,
                super::super::check::KernelMismatch::Bits {
                    kernels: "off",
                    ty: GgmlType::Q8_0,
                    blocks: 9,
                    ..
                }
            ),
            "{e}"
        );
    }

    /// A four-token kernel off in one bit for its third token is caught.
    #[test]
    fn the_check_catches_a_four_token_kernel_off_by_one_bit() {
        fn q5_0x4_off(x: &[[u8; Q5_0_BYTES]], y: [&Tok<'_, BlockQ8_0>; 4]) -> [f32; 4] {
            let mut v = y.map(|y| scalar::vec_dot_q5_0_q8_0(x, y.blocks));
            if x.len() == 9 {
                v[2] = f32::from_bits(v[2].to_bits() ^ 1);
            }
            v
        }
        let off = Kernels {
            name: "off",
            q5_0x4: Some(q5_0x4_off),
            ..SCALAR
        };
        let e = super::super::check::check(&off, 1).expect_err("caught");
        assert!(
            matches!(
                e,
                super::super::check::KernelMismatch::Bits {
                    kernels: "off",
                    ty: GgmlType::Q5_0,
                    blocks: 9,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn the_check_catches_an_f32_dot_summed_in_another_order() {
        // Lanes summed from the last one: the same value up to rounding,
        // other bits for some inputs.
        fn reversed(a: &[f32], rows: &[f32], stride: usize, out: &mut [f32]) {
            for (p, o) in out.iter_mut().enumerate() {
                let b = scalar::row_at(rows, p, stride, a.len());
                let mut acc = [0f32; 8];
                let n = a.len().min(b.len()) / 8 * 8;
                for i in 0..n {
                    acc[i % 8] += a[i] * b[i];
                }
                acc.reverse();
                *o = scalar::f32_dot_finish(acc, &a[n..], &b[n..]);
            }
        }
        // Two vectors whose outputs come back swapped.
        let swapped = Kernels {
            name: "off",
            f32_dots2: |a, rows, stride, [o0, o1]| {
                scalar::f32_dots2([a[1], a[0]], rows, stride, [o0, o1])
            },
            ..SCALAR
        };
        let e = super::super::check::check(&swapped, 1).expect_err("caught");
        assert!(e.to_string().contains("f32_dots2"), "{e}");
        let off = Kernels {
            name: "off",
            f32_dots: reversed,
            ..SCALAR
        };
        let e = super::super::check::check(&off, 1).expect_err("caught");
        assert!(
            matches!(
                e,
                super::super::check::KernelMismatch::F32 {
                    kernels: "off",
                    op: "f32_dots",
                    ..
                }
            ),
            "{e}"
        );
    }

    /// A batch of activations gives, per token, the bits `matvec` gives;
    /// large enough to be split over threads, odd in rows and tokens.
    #[test]
    fn matmul_equals_matvec_per_token_bit_for_bit() {
        let mut rng = Rng(0x0ba7_c4ed);
        for (ty, rows, blocks) in [(GgmlType::Q4_1, 1031, 18), (GgmlType::Q6_K, 37, 3)] {
            let cols = blocks * ty.block_size();
            let w = random_blocks(&mut rng, ty, rows * blocks, 0.05);
            let w = QTensor::new(ty, rows, cols, &w).expect("weights");
            let act_ty = ty.vec_dot_type().expect("pairs");
            let xs: Vec<QuantizedActivation> = (0..5)
                .map(|_| {
                    let x: Vec<f32> = (0..cols).map(|_| rng.unit() * 4.0 - 2.0).collect();
                    QuantizedActivation::quantize(act_ty, &x).expect("activation")
                })
                .collect();
            let mut all = vec![0f32; rows * xs.len()];
            super::super::matmul(&w, &xs, &mut all).expect("matmul");
            for (t, x) in xs.iter().enumerate() {
                let mut one = vec![0f32; rows];
                super::super::matvec(&w, x, &mut one).expect("matvec");
                let got: Vec<u32> = all[t * rows..(t + 1) * rows]
                    .iter()
                    .map(|f| f.to_bits())
                    .collect();
                let want: Vec<u32> = one.iter().map(|f| f.to_bits()).collect();
                assert_eq!(got, want, "{ty:?} token {t}");
            }
            let mut short = vec![0f32; rows * xs.len() - 1];
            assert!(matches!(
                super::super::matmul(&w, &xs, &mut short),
                Err(super::super::QuantError::OutputLength { .. })
            ));
        }
    }

    #[test]
    fn the_best_table_is_one_this_cpu_runs() {
        assert!(available().iter().any(|k| std::ptr::eq(*k, best())));
    }
}
