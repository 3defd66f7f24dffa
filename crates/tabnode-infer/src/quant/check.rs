//! Checking a kernel table against the scalar one on random blocks, where
//! it runs: the tests do it natively, and [`super::simd::best`] does it once
//! per process before handing a SIMD table out (a few milliseconds), so a
//! miscompiled or mis-detected kernel falls back to the scalar one instead
//! of serving wrong tokens, natively and in the tab's wasm alike.

use super::{
    f32_to_f16, matmul_with, matvec_with, GgmlType, Kernels, QTensor, QuantError,
    QuantizedActivation,
};

/// A kernel that disagreed with the scalar reference.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum KernelMismatch {
    /// Different bits for one row.
    #[error("{kernels} {ty} kernel differs from the scalar one ({blocks} blocks, row {row}: {got:e} vs {want:e})")]
    Bits {
        /// The table's name.
        kernels: &'static str,
        /// The weight format.
        ty: GgmlType,
        /// Blocks per row.
        blocks: usize,
        /// The row.
        row: usize,
        /// What the table gave.
        got: f32,
        /// What the scalar kernel gave.
        want: f32,
    },
    /// Different bits from an f32 kernel (`f32_dots`, `f32_weighted_sum`).
    #[error("{kernels} {op} differs from the scalar one ({len} values: {got:e} vs {want:e})")]
    F32 {
        /// The table's name.
        kernels: &'static str,
        /// The kernel.
        op: &'static str,
        /// Vector length.
        len: usize,
        /// What the table gave (the first differing value).
        got: f32,
        /// What the scalar kernel gave.
        want: f32,
    },
    /// The check's own inputs were refused (a bug in the check).
    #[error("kernel check: {0}")]
    Quant(#[from] QuantError),
}

/// splitmix64: a small deterministic generator for random blocks.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// `n` random bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }

    /// Uniform in [-1, 1).
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// Offsets of the f16 scale fields of each weight format.
fn f16_fields(ty: GgmlType) -> &'static [usize] {
    match ty {
        GgmlType::Q4_1 | GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
        GgmlType::Q6_K => &[208],
        _ => &[0],
    }
}

/// `n` random blocks of `ty` whose f16 scales are `scale` times a random
/// value in [-1, 1) (finite, well scaled, so dot products stay readable);
/// every other byte is random, so every quant value and scale bit occurs.
pub fn random_blocks(rng: &mut Rng, ty: GgmlType, n: usize, scale: f32) -> Vec<u8> {
    let bytes = ty.block_bytes();
    let mut data = rng.bytes(n * bytes);
    for b in data.chunks_exact_mut(bytes) {
        for &at in f16_fields(ty) {
            let h = f32_to_f16(rng.unit() * scale);
            b[at..at + 2].copy_from_slice(&h.to_le_bytes());
        }
    }
    data
}

/// The weight formats with kernels.
pub const FORMATS: [GgmlType; 7] = [
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q8_0,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];

/// [`KernelMismatch::Bits`] for the first output whose bits differ.
fn same_bits(
    kernels: &'static str,
    ty: GgmlType,
    blocks: usize,
    got: &[f32],
    want: &[f32],
) -> Result<(), KernelMismatch> {
    match got
        .iter()
        .zip(want)
        .enumerate()
        .find(|(_, (g, w))| g.to_bits() != w.to_bits())
    {
        Some((row, (&got, &want))) => Err(KernelMismatch::Bits {
            kernels,
            ty,
            blocks,
            row,
            got,
            want,
        }),
        None => Ok(()),
    }
}

/// Compares `kernels` with the scalar table bit for bit on random weights
/// and activations: every format, block counts around the SIMD groups of
/// eight (0 to 33), three rows each, against one token and against
/// prompts of 4 to 9 (the four-token kernels and the rest); and the f32
/// kernels on random
/// vectors of 0 to 65 values against 1 to 19 rows. Returns the number of results compared.
///
/// # Errors
/// The first row whose bits differ.
pub fn check(kernels: &Kernels, seed: u64) -> Result<usize, KernelMismatch> {
    let mut rng = Rng(seed);
    let mut compared = 0;
    for ty in FORMATS {
        for blocks in [0usize, 1, 3, 7, 8, 9, 15, 16, 17, 24, 33] {
            let cols = blocks * ty.block_size();
            let rows = 3;
            let w = random_blocks(&mut rng, ty, rows * blocks, 0.05);
            let w = QTensor::new(ty, rows, cols, &w)?;
            let x: Vec<f32> = (0..cols).map(|_| rng.unit() * 4.0 - 2.0).collect();
            let act_ty = ty.vec_dot_type().ok_or(QuantError::NoVecDot(ty))?;
            let act = QuantizedActivation::quantize(act_ty, &x)?;
            let mut want = vec![0f32; rows];
            matvec_with(&super::simd::SCALAR, &w, &act, &mut want)?;
            let mut got = vec![0f32; rows];
            matvec_with(kernels, &w, &act, &mut got)?;
            same_bits(kernels.name, ty, blocks, &got, &want)?;
            compared += rows;
        }
        // Several tokens (a prompt): the four-token kernels and the rest.
        for (blocks, tokens) in [(1usize, 4usize), (7, 6), (9, 9), (17, 5)] {
            let cols = blocks * ty.block_size();
            let rows = 3;
            let w = random_blocks(&mut rng, ty, rows * blocks, 0.05);
            let w = QTensor::new(ty, rows, cols, &w)?;
            let act_ty = ty.vec_dot_type().ok_or(QuantError::NoVecDot(ty))?;
            let xs = (0..tokens)
                .map(|_| {
                    let x: Vec<f32> = (0..cols).map(|_| rng.unit() * 4.0 - 2.0).collect();
                    QuantizedActivation::quantize(act_ty, &x)
                })
                .collect::<Result<Vec<_>, _>>()?;
            let mut want = vec![0f32; rows * tokens];
            matmul_with(&super::simd::SCALAR, &w, &xs, &mut want)?;
            let mut got = vec![0f32; rows * tokens];
            matmul_with(kernels, &w, &xs, &mut got)?;
            same_bits(kernels.name, ty, blocks, &got, &want)?;
            compared += rows * tokens;
        }
    }
    // Vectors of 0..65 values against 0..19 rows, rows packed and strided,
    // and matrices cut short (a last row with fewer values).
    for len in [0usize, 1, 4, 7, 8, 9, 15, 16, 17, 63, 64, 65] {
        for (count, pad, cut) in [
            (1usize, 0usize, 0usize),
            (5, 3, 0),
            (8, 0, 0),
            (17, 5, 0),
            (19, 1, 1),
        ] {
            let stride = len + pad;
            let rows: Vec<f32> = (0..(count * stride).saturating_sub(cut))
                .map(|_| rng.unit() * 3.0)
                .collect();
            let a: Vec<f32> = (0..len).map(|_| rng.unit() * 3.0).collect();
            let w: Vec<f32> = (0..count).map(|_| rng.unit()).collect();
            let init: Vec<f32> = (0..len).map(|_| rng.unit()).collect();
            let b: Vec<f32> = (0..len).map(|_| rng.unit() * 3.0).collect();
            let scalar = &super::simd::SCALAR;
            let (mut dots, mut want_a) = (vec![0f32; count], vec![0f32; count]);
            (kernels.f32_dots)(&a, &rows, stride, &mut dots);
            (scalar.f32_dots)(&a, &rows, stride, &mut want_a);
            // Two vectors at once: each the bits of one alone.
            let (mut first, mut second, mut want_b) =
                (vec![0f32; count], vec![0f32; count], vec![0f32; count]);
            (kernels.f32_dots2)([&a, &b], &rows, stride, [&mut first, &mut second]);
            (scalar.f32_dots)(&b, &rows, stride, &mut want_b);
            let (mut sum, mut want_sum) = (init.clone(), init);
            (kernels.f32_weighted_sum)(&w, &rows, stride, &mut sum);
            (scalar.f32_weighted_sum)(&w, &rows, stride, &mut want_sum);
            for (op, got, want) in [
                ("f32_dots", &dots, &want_a),
                ("f32_dots2", &first, &want_a),
                ("f32_dots2", &second, &want_b),
                ("f32_weighted_sum", &sum, &want_sum),
            ] {
                if let Some((&got, &want)) = got
                    .iter()
                    .zip(want)
                    .find(|(g, w)| g.to_bits() != w.to_bits())
                {
                    return Err(KernelMismatch::F32 {
                        kernels: kernels.name,
                        op,
                        len,
                        got,
                        want,
                    });
                }
            }
            compared += 4;
        }
        // exp and SiLU·mul over the whole clamped range and past it.
        let x: Vec<f32> = (0..len).map(|_| rng.unit() * 120.0).collect();
        let u: Vec<f32> = (0..len).map(|_| rng.unit() * 3.0).collect();
        let sub = rng.unit() * 10.0;
        let scalar = &super::simd::SCALAR;
        let mut results = [x.clone(), x.clone(), x.clone(), x];
        (kernels.f32_exp)(&mut results[0], sub);
        (scalar.f32_exp)(&mut results[1], sub);
        (kernels.f32_silu_mul)(&mut results[2], &u);
        (scalar.f32_silu_mul)(&mut results[3], &u);
        for (op, got, want) in [
            ("f32_exp", &results[0], &results[1]),
            ("f32_silu_mul", &results[2], &results[3]),
        ] {
            if let Some((&got, &want)) = got
                .iter()
                .zip(want)
                .find(|(g, w)| g.to_bits() != w.to_bits())
            {
                return Err(KernelMismatch::F32 {
                    kernels: kernels.name,
                    op,
                    len,
                    got,
                    want,
                });
            }
        }
        compared += 2;
    }
    Ok(compared)
}
