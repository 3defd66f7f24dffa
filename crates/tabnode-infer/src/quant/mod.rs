//! Quantized GGUF weights: the block formats, row views over them,
//! dequantization, and (in [`act`] and [`scalar`]) the activation quantizers
//! and the reference integer dot products that the CPU kernels are built on.
//!
//! Formats follow ggml (`ggml-common.h`, `ggml-quants.c`) byte for byte. All
//! fields are little-endian; "f16" is an IEEE half stored as `u16`. Blocks run
//! along a row (GGUF `dims[0]`) and a row is a whole number of blocks.
//!
//! | type | values | bytes | layout (byte offsets) | value |
//! |---|---|---|---|---|
//! | Q4_0 | 32 | 18 | `d:f16 @0`, `qs[16] @2` | `x[j] = (qs[j] & 15 − 8)·d`, `x[j+16] = (qs[j] >> 4 − 8)·d` |
//! | Q4_1 | 32 | 20 | `d:f16 @0`, `m:f16 @2`, `qs[16] @4` | `x = q·d + m`, nibbles as Q4_0 |
//! | Q5_0 | 32 | 22 | `d:f16 @0`, `qh:u32 @2`, `qs[16] @6` | `q = nibble | (bit j of qh) << 4`, `x = (q − 16)·d` |
//! | Q8_0 | 32 | 34 | `d:f16 @0`, `qs:i8[32] @2` | `x = q·d` |
//! | Q8_1 | 32 | 36 | `d:f16 @0`, `s:f16 @2` (`d·Σq`), `qs:i8[32] @4` | `x = q·d` (activations) |
//! | Q4_K | 256 | 144 | `d @0`, `dmin @2`, `scales[12] @4`, `qs[128] @16` | 8 sub-blocks of 32: `x = (d·sc)·q − dmin·m` |
//! | Q5_K | 256 | 176 | `d @0`, `dmin @2`, `scales[12] @4`, `qh[32] @16`, `qs[128] @48` | as Q4_K, 5th bit from `qh` |
//! | Q6_K | 256 | 210 | `ql[128] @0`, `qh[64] @128`, `scales:i8[16] @192`, `d:f16 @208` | 16 sub-blocks of 16: `x = (d·sc)·(q − 32)` |
//! | Q8_K | 256 | 292 | `d:f32 @0`, `qs:i8[256] @4`, `bsums:i16[16] @260` | `x = q·d` (activations) |
//!
//! K-format element order: the 256 values are four chunks of 64; chunk `c`
//! takes the low nibbles of `qs[32c..32c+32]` (sub-block `2c`, scale and min
//! `get_scale_min_k4(2c)`) and then their high nibbles (sub-block `2c + 1`);
//! Q5_K adds 16 when bit `2c` (low half) or `2c + 1` (high half) of `qh[l]`
//! is set. Q6_K: each half `n` of 128 values uses `ql[64n..]`, `qh[32n..]`,
//! `scales[8n..]`; for `l < 32` the four values `l, l+32, l+64, l+96` are the
//! low nibble of `ql[l]`, the low nibble of `ql[l+32]`, the high nibble of
//! `ql[l]` and the high nibble of `ql[l+32]`, each with two more bits from
//! `qh[l]` (bits 0–1, 2–3, 4–5, 6–7), minus 32.
//!
//! The float expressions of [`dequantize_row`] are ggml's (and the PyPI
//! `gguf` package's) operation for operation, so the results are the same
//! bits (tested against fixtures made with that package).

pub mod act;
pub mod check;
pub mod scalar;
pub mod simd;

pub use act::{BlockQ8K, BlockQ8_0, BlockQ8_1, QuantizedActivation};
pub use simd::Kernels;

/// Values per block of the 32-value formats (Q4_0, Q4_1, Q5_0, Q8_0, Q8_1).
pub const QK: usize = 32;
/// Values per super-block of the K formats (Q4_K, Q5_K, Q6_K, Q8_K).
pub const QK_K: usize = 256;

/// Bytes of one Q4_0 block.
pub const Q4_0_BYTES: usize = 18;
/// Bytes of one Q4_1 block.
pub const Q4_1_BYTES: usize = 20;
/// Bytes of one Q5_0 block.
pub const Q5_0_BYTES: usize = 22;
/// Bytes of one Q8_0 block.
pub const Q8_0_BYTES: usize = 34;
/// Bytes of one Q8_1 block.
pub const Q8_1_BYTES: usize = 36;
/// Bytes of one Q4_K block.
pub const Q4_K_BYTES: usize = 144;
/// Bytes of one Q5_K block.
pub const Q5_K_BYTES: usize = 176;
/// Bytes of one Q6_K block.
pub const Q6_K_BYTES: usize = 210;
/// Bytes of one Q8_K block.
pub const Q8_K_BYTES: usize = 292;

/// A ggml tensor type this module reads.
///
/// Weight formats: Q4_0, Q4_1, Q5_0, Q8_0, Q4_K, Q5_K, Q6_K (and F32, F16,
/// which are dequantized but have no quantized dot product). Activation
/// formats: Q8_0, Q8_1, Q8_K (see [`GgmlType::vec_dot_type`]).
// The variant names are ggml's (`GGML_TYPE_Q4_K`), which readers look up.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum GgmlType {
    /// `f32` values (ggml type 0).
    F32,
    /// IEEE half values (1).
    F16,
    /// 4-bit, one f16 scale per 32 (2).
    Q4_0,
    /// 4-bit, f16 scale and min per 32 (3).
    Q4_1,
    /// 5-bit, one f16 scale per 32 (6).
    Q5_0,
    /// 8-bit, one f16 scale per 32 (8).
    Q8_0,
    /// 8-bit, f16 scale and `d·Σq` per 32; activations of Q4_1 (9).
    Q8_1,
    /// 4-bit K format: 6-bit scales and mins per 32, f16 `d`/`dmin` per 256 (12).
    Q4_K,
    /// 5-bit K format, scales as Q4_K (13).
    Q5_K,
    /// 6-bit K format: `i8` scales per 16, f16 `d` per 256 (14).
    Q6_K,
    /// 8-bit, f32 scale and 16-value sums per 256; activations of the K formats (15).
    Q8_K,
}

impl GgmlType {
    /// Every type, in ggml id order.
    pub const ALL: [GgmlType; 11] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q8_0,
        GgmlType::Q8_1,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::Q8_K,
    ];

    /// The type of a ggml type id, if this module reads it.
    pub const fn from_u32(id: u32) -> Option<Self> {
        Some(match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            6 => GgmlType::Q5_0,
            8 => GgmlType::Q8_0,
            9 => GgmlType::Q8_1,
            12 => GgmlType::Q4_K,
            13 => GgmlType::Q5_K,
            14 => GgmlType::Q6_K,
            15 => GgmlType::Q8_K,
            _ => return None,
        })
    }

    /// The ggml type id.
    pub const fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q5_0 => 6,
            GgmlType::Q8_0 => 8,
            GgmlType::Q8_1 => 9,
            GgmlType::Q4_K => 12,
            GgmlType::Q5_K => 13,
            GgmlType::Q6_K => 14,
            GgmlType::Q8_K => 15,
        }
    }

    /// ggml's name (`"Q4_K"`).
    pub const fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q4_1 => "Q4_1",
            GgmlType::Q5_0 => "Q5_0",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::Q8_1 => "Q8_1",
            GgmlType::Q4_K => "Q4_K",
            GgmlType::Q5_K => "Q5_K",
            GgmlType::Q6_K => "Q6_K",
            GgmlType::Q8_K => "Q8_K",
        }
    }

    /// Values per block (1 for F32 and F16).
    pub const fn block_size(self) -> usize {
        match self {
            GgmlType::F32 | GgmlType::F16 => 1,
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q8_0 | GgmlType::Q8_1 => {
                QK
            }
            GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K | GgmlType::Q8_K => QK_K,
        }
    }

    /// Bytes per block.
    pub const fn block_bytes(self) -> usize {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 => 2,
            GgmlType::Q4_0 => Q4_0_BYTES,
            GgmlType::Q4_1 => Q4_1_BYTES,
            GgmlType::Q5_0 => Q5_0_BYTES,
            GgmlType::Q8_0 => Q8_0_BYTES,
            GgmlType::Q8_1 => Q8_1_BYTES,
            GgmlType::Q4_K => Q4_K_BYTES,
            GgmlType::Q5_K => Q5_K_BYTES,
            GgmlType::Q6_K => Q6_K_BYTES,
            GgmlType::Q8_K => Q8_K_BYTES,
        }
    }

    /// The activation format a weight of this type is multiplied with
    /// (llama.cpp's `vec_dot_type`): Q8_0 for Q4_0, Q5_0 and Q8_0; Q8_1 for
    /// Q4_1; Q8_K for the K formats. `None` for F32, F16 and the
    /// activation-only formats Q8_1 and Q8_K.
    pub const fn vec_dot_type(self) -> Option<GgmlType> {
        match self {
            GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => Some(GgmlType::Q8_0),
            GgmlType::Q4_1 => Some(GgmlType::Q8_1),
            GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K => Some(GgmlType::Q8_K),
            GgmlType::F32 | GgmlType::F16 | GgmlType::Q8_1 | GgmlType::Q8_K => None,
        }
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why quantized data cannot be used as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantError {
    /// A ggml type id this module does not read.
    #[error("ggml type {0} is not supported")]
    UnknownType(u32),
    /// A row length that is not a whole number of blocks.
    #[error("{ty}: {len} values are not a whole number of {block}-value blocks")]
    PartialBlock {
        /// The format.
        ty: GgmlType,
        /// Values asked for.
        len: usize,
        /// Values per block.
        block: usize,
    },
    /// Data of the wrong size.
    #[error("{ty}: expected {expected} bytes, got {actual}")]
    ByteLength {
        /// The format.
        ty: GgmlType,
        /// Bytes the shape needs.
        expected: usize,
        /// Bytes given.
        actual: usize,
    },
    /// A shape whose byte size does not fit in `usize`.
    #[error("{ty}: {rows} × {cols} values do not fit in memory")]
    TooLarge {
        /// The format.
        ty: GgmlType,
        /// Rows.
        rows: usize,
        /// Values per row.
        cols: usize,
    },
    /// A row index past the last row.
    #[error("row {row} of a tensor with {rows} rows")]
    NoRow {
        /// The index asked for.
        row: usize,
        /// Rows there are.
        rows: usize,
    },
    /// An output buffer of the wrong length.
    #[error("expected room for {expected} values, got {actual}")]
    OutputLength {
        /// Values to be written.
        expected: usize,
        /// Room given.
        actual: usize,
    },
    /// A weight type without a quantized dot product (F32, F16, Q8_1, Q8_K).
    #[error("{0} weights have no quantized dot product")]
    NoVecDot(GgmlType),
    /// Activations quantized to another format than the weight pairs with.
    #[error("{weight} weights take {expected} activations, got {actual}")]
    ActivationType {
        /// The weight format.
        weight: GgmlType,
        /// The activation format it pairs with.
        expected: GgmlType,
        /// The activation format given.
        actual: GgmlType,
    },
    /// Activations of another length than a weight row.
    #[error("rows of {expected} values, activations of {actual}")]
    ActivationLength {
        /// Values per weight row.
        expected: usize,
        /// Activation values.
        actual: usize,
    },
    /// A format activations cannot be quantized to (only Q8_0, Q8_1, Q8_K).
    #[error("{0} is not an activation format")]
    NotActivation(GgmlType),
}

impl TryFrom<u32> for GgmlType {
    type Error = QuantError;

    fn try_from(id: u32) -> Result<Self, QuantError> {
        GgmlType::from_u32(id).ok_or(QuantError::UnknownType(id))
    }
}

/// 2¹¹²: rescales a half's exponent and mantissa bits, placed in a single's,
/// to the half's value.
pub(crate) const F16_RESCALE: f32 = f32::from_bits((127 + 112) << 23);

/// IEEE half (as its bits) → single precision, exactly, with the bits of
/// `half` and of F16C (NaNs quieted, payload kept). Branch-light: the
/// exponent and mantissa bits shifted into a single are the value times
/// 2⁻¹¹², subnormals included, and one exact multiplication rescales them
/// (`half`'s portable path branches per case and is several times slower;
/// the kernels convert a few scales per 32 values).
#[inline]
pub fn f16_to_f32(h: u16) -> f32 {
    let h = u32::from(h);
    let sign = (h & 0x8000) << 16;
    let em = h & 0x7fff;
    if em >= 0x7c00 {
        let man = em & 0x3ff;
        let quiet = if man == 0 { 0 } else { 0x0040_0000 };
        return f32::from_bits(sign | 0x7f80_0000 | quiet | (man << 13));
    }
    f32::from_bits(sign | (f32::from_bits(em << 13) * F16_RESCALE).to_bits())
}

/// Single precision → IEEE half bits, rounding to nearest, ties to even
/// (ggml's `GGML_FP32_TO_FP16`).
pub fn f32_to_f16(x: f32) -> u16 {
    half::f16::from_f32(x).to_bits()
}

/// The f16 at byte `at` of a block.
#[inline]
pub(crate) fn f16_at(b: &[u8], at: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[at], b[at + 1]]))
}

/// Number of whole blocks of `ty` in `bytes` bytes.
fn whole_blocks(ty: GgmlType, bytes: usize) -> Result<usize, QuantError> {
    let per = ty.block_bytes();
    if !bytes.is_multiple_of(per) {
        return Err(QuantError::ByteLength {
            ty,
            expected: bytes / per * per,
            actual: bytes,
        });
    }
    Ok(bytes / per)
}

/// A 2-D quantized tensor borrowing its blocks: `rows` rows of `cols` values,
/// each row `cols / block_size` consecutive blocks (a GGUF tensor with
/// `dims = [cols, rows]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QTensor<'a> {
    ty: GgmlType,
    rows: usize,
    cols: usize,
    data: &'a [u8],
}

impl<'a> QTensor<'a> {
    /// A view of `data` as `rows × cols` values of type `ty`.
    ///
    /// # Errors
    /// [`QuantError::PartialBlock`] when `cols` is not a multiple of the
    /// block size, [`QuantError::TooLarge`] when the size overflows,
    /// [`QuantError::ByteLength`] when `data` is not exactly
    /// `rows × cols / block_size × block_bytes` bytes.
    pub fn new(ty: GgmlType, rows: usize, cols: usize, data: &'a [u8]) -> Result<Self, QuantError> {
        let block = ty.block_size();
        if !cols.is_multiple_of(block) {
            return Err(QuantError::PartialBlock {
                ty,
                len: cols,
                block,
            });
        }
        let expected = (cols / block)
            .checked_mul(ty.block_bytes())
            .and_then(|row| row.checked_mul(rows))
            .ok_or(QuantError::TooLarge { ty, rows, cols })?;
        if data.len() != expected {
            return Err(QuantError::ByteLength {
                ty,
                expected,
                actual: data.len(),
            });
        }
        Ok(QTensor {
            ty,
            rows,
            cols,
            data,
        })
    }

    /// The format.
    pub fn ty(&self) -> GgmlType {
        self.ty
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Values per row.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// All the blocks, row after row.
    pub fn data(&self) -> &'a [u8] {
        self.data
    }

    /// Blocks per row.
    pub fn blocks_per_row(&self) -> usize {
        self.cols / self.ty.block_size()
    }

    /// Bytes per row.
    pub fn row_bytes(&self) -> usize {
        self.blocks_per_row() * self.ty.block_bytes()
    }

    /// The blocks of row `r`, if there is such a row.
    pub fn row(&self, r: usize) -> Option<&'a [u8]> {
        let n = self.row_bytes();
        if r >= self.rows {
            return None;
        }
        self.data.get(r * n..(r + 1) * n)
    }

    /// Dequantizes row `r` into `out` (`cols` values).
    ///
    /// # Errors
    /// [`QuantError::NoRow`] when `r` is not a row,
    /// [`QuantError::OutputLength`] when `out` is not `cols` long.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) -> Result<(), QuantError> {
        let row = self.row(r).ok_or(QuantError::NoRow {
            row: r,
            rows: self.rows,
        })?;
        dequantize_row(self.ty, row, out)
    }
}

/// Dequantizes consecutive blocks of type `ty` (a row, or several) into
/// `out`, exactly as ggml's `dequantize_row_*`.
///
/// # Errors
/// [`QuantError::ByteLength`] when `data` is not a whole number of blocks,
/// [`QuantError::OutputLength`] when `out` is not `blocks × block_size`
/// values long.
pub fn dequantize_row(ty: GgmlType, data: &[u8], out: &mut [f32]) -> Result<(), QuantError> {
    let blocks = whole_blocks(ty, data.len())?;
    let expected = blocks * ty.block_size();
    if out.len() != expected {
        return Err(QuantError::OutputLength {
            expected,
            actual: out.len(),
        });
    }
    match ty {
        GgmlType::F32 => each::<4, 1>(data, out, |b, y| y[0] = f32::from_le_bytes(*b)),
        GgmlType::F16 => each::<2, 1>(data, out, |b, y| y[0] = f16_at(b, 0)),
        GgmlType::Q4_0 => each(data, out, dequantize_q4_0),
        GgmlType::Q4_1 => each(data, out, dequantize_q4_1),
        GgmlType::Q5_0 => each(data, out, dequantize_q5_0),
        GgmlType::Q8_0 => each(data, out, dequantize_q8_0),
        GgmlType::Q8_1 => each(data, out, dequantize_q8_1),
        GgmlType::Q4_K => each(data, out, dequantize_q4_k),
        GgmlType::Q5_K => each(data, out, dequantize_q5_k),
        GgmlType::Q6_K => each(data, out, dequantize_q6_k),
        GgmlType::Q8_K => each(data, out, dequantize_q8_k),
    }
    Ok(())
}

/// [`dequantize_row`] into a new vector.
///
/// # Errors
/// [`QuantError::ByteLength`] when `data` is not a whole number of blocks.
pub fn dequantize(ty: GgmlType, data: &[u8]) -> Result<Vec<f32>, QuantError> {
    let blocks = whole_blocks(ty, data.len())?;
    let mut out = vec![0.0; blocks * ty.block_size()];
    dequantize_row(ty, data, &mut out)?;
    Ok(out)
}

/// Applies `f` to each block of `data` and its `N` outputs (lengths checked
/// by the caller).
fn each<const B: usize, const N: usize>(
    data: &[u8],
    out: &mut [f32],
    f: impl Fn(&[u8; B], &mut [f32; N]),
) {
    let (blocks, _) = data.as_chunks::<B>();
    let (outs, _) = out.as_chunks_mut::<N>();
    for (b, y) in blocks.iter().zip(outs) {
        f(b, y);
    }
}

fn dequantize_q4_0(b: &[u8; Q4_0_BYTES], y: &mut [f32; QK]) {
    let d = f16_at(b, 0);
    for (j, &q) in b[2..].iter().enumerate() {
        y[j] = (f32::from(q & 15) - 8.0) * d;
        y[j + 16] = (f32::from(q >> 4) - 8.0) * d;
    }
}

fn dequantize_q4_1(b: &[u8; Q4_1_BYTES], y: &mut [f32; QK]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    for (j, &q) in b[4..].iter().enumerate() {
        y[j] = f32::from(q & 15) * d + m;
        y[j + 16] = f32::from(q >> 4) * d + m;
    }
}

/// The 5-bit values (0..32) of a Q5_0 block, in element order.
pub(crate) fn q5_0_values(b: &[u8; Q5_0_BYTES]) -> [u8; QK] {
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    let mut q = [0u8; QK];
    for (j, &v) in b[6..].iter().enumerate() {
        let hi_lo = ((qh >> j) & 1) as u8;
        let hi_hi = ((qh >> (j + 16)) & 1) as u8;
        q[j] = (v & 15) | (hi_lo << 4);
        q[j + 16] = (v >> 4) | (hi_hi << 4);
    }
    q
}

fn dequantize_q5_0(b: &[u8; Q5_0_BYTES], y: &mut [f32; QK]) {
    let d = f16_at(b, 0);
    for (y, q) in y.iter_mut().zip(q5_0_values(b)) {
        *y = (f32::from(q) - 16.0) * d;
    }
}

fn dequantize_q8_0(b: &[u8; Q8_0_BYTES], y: &mut [f32; QK]) {
    let d = f16_at(b, 0);
    for (y, &q) in y.iter_mut().zip(&b[2..]) {
        *y = f32::from(q as i8) * d;
    }
}

fn dequantize_q8_1(b: &[u8; Q8_1_BYTES], y: &mut [f32; QK]) {
    let d = f16_at(b, 0);
    for (y, &q) in y.iter_mut().zip(&b[4..]) {
        *y = f32::from(q as i8) * d;
    }
}

/// ggml's `get_scale_min_k4`: the 6-bit scale and min of sub-block `j`
/// (0..8) from the 12 packed bytes of a Q4_K / Q5_K block.
#[inline]
pub(crate) fn scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// All eight `(scale, min)` pairs of [`scale_min_k4`] at once, with
/// word operations (ggml's `utmp` trick): `(scales, mins)`.
#[inline]
pub(crate) fn scales_mins_k4(s: &[u8; 12]) -> ([u8; 8], [u8; 8]) {
    const M1: u32 = 0x3f3f_3f3f;
    const M2: u32 = 0x0f0f_0f0f;
    const M3: u32 = 0x0303_0303;
    let w = |i: usize| u32::from_le_bytes([s[4 * i], s[4 * i + 1], s[4 * i + 2], s[4 * i + 3]]);
    let (w0, w1, w2) = (w(0), w(1), w(2));
    // Scales 0..4: the low 6 bits of bytes 0..4; 4..8: the low nibbles of
    // bytes 8..12 with the top 2 bits of bytes 0..4 above them. Mins: the
    // same from bytes 4..8 and the high nibbles of bytes 8..12.
    let sc_hi = (w2 & M2) | (((w0 >> 6) & M3) << 4);
    let m_hi = ((w2 >> 4) & M2) | (((w1 >> 6) & M3) << 4);
    let join = |lo: u32, hi: u32| {
        let mut out = [0u8; 8];
        out[..4].copy_from_slice(&lo.to_le_bytes());
        out[4..].copy_from_slice(&hi.to_le_bytes());
        out
    };
    (join(w0 & M1, sc_hi), join(w1 & M1, m_hi))
}

fn dequantize_q4_k(b: &[u8; Q4_K_BYTES], y: &mut [f32; QK_K]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let scales = &b[4..16];
    let qs = &b[16..];
    for c in 0..4 {
        let (sc1, m1) = scale_min_k4(2 * c, scales);
        let (sc2, m2) = scale_min_k4(2 * c + 1, scales);
        let (d1, m1) = (d * f32::from(sc1), dmin * f32::from(m1));
        let (d2, m2) = (d * f32::from(sc2), dmin * f32::from(m2));
        for (l, &q) in qs[32 * c..32 * c + 32].iter().enumerate() {
            y[64 * c + l] = d1 * f32::from(q & 15) - m1;
            y[64 * c + 32 + l] = d2 * f32::from(q >> 4) - m2;
        }
    }
}

fn dequantize_q5_k(b: &[u8; Q5_K_BYTES], y: &mut [f32; QK_K]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let scales = &b[4..16];
    let qh = &b[16..48];
    let qs = &b[48..];
    for c in 0..4 {
        let (sc1, m1) = scale_min_k4(2 * c, scales);
        let (sc2, m2) = scale_min_k4(2 * c + 1, scales);
        let (d1, m1) = (d * f32::from(sc1), dmin * f32::from(m1));
        let (d2, m2) = (d * f32::from(sc2), dmin * f32::from(m2));
        for (l, (&q, &h)) in qs[32 * c..32 * c + 32].iter().zip(qh).enumerate() {
            let lo = (q & 15) | (((h >> (2 * c)) & 1) << 4);
            let hi = (q >> 4) | (((h >> (2 * c + 1)) & 1) << 4);
            y[64 * c + l] = d1 * f32::from(lo) - m1;
            y[64 * c + 32 + l] = d2 * f32::from(hi) - m2;
        }
    }
}

/// The 6-bit values of a Q6_K block minus 32, in element order.
pub(crate) fn q6_k_values(b: &[u8; Q6_K_BYTES]) -> [i8; QK_K] {
    let mut q = [0i8; QK_K];
    for n in 0..2 {
        let ql = &b[64 * n..64 * n + 64];
        let qh = &b[128 + 32 * n..128 + 32 * n + 32];
        let q = &mut q[128 * n..128 * n + 128];
        for (l, &h) in qh.iter().enumerate() {
            q[l] = ((ql[l] & 15) | ((h & 3) << 4)) as i8 - 32;
            q[l + 32] = ((ql[l + 32] & 15) | (((h >> 2) & 3) << 4)) as i8 - 32;
            q[l + 64] = ((ql[l] >> 4) | (((h >> 4) & 3) << 4)) as i8 - 32;
            q[l + 96] = ((ql[l + 32] >> 4) | (((h >> 6) & 3) << 4)) as i8 - 32;
        }
    }
    q
}

fn dequantize_q6_k(b: &[u8; Q6_K_BYTES], y: &mut [f32; QK_K]) {
    let d = f16_at(b, 208);
    let scales = &b[192..208];
    for (i, (y, q)) in y.iter_mut().zip(q6_k_values(b)).enumerate() {
        *y = (d * f32::from(scales[i / 16] as i8)) * f32::from(q);
    }
}

fn dequantize_q8_k(b: &[u8; Q8_K_BYTES], y: &mut [f32; QK_K]) {
    let d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    for (y, &q) in y.iter_mut().zip(&b[4..260]) {
        *y = f32::from(q as i8) * d;
    }
}

/// `out[r] = w[r] · x` for every row `r` of `w`, with the fastest kernels
/// this CPU runs ([`simd::best`]; the same bits as the scalar ones). `x`
/// must be quantized to the activation type of `w`'s format
/// ([`GgmlType::vec_dot_type`], e.g. with
/// [`QuantizedActivation::for_weight`]). Natively, large matrices are split
/// by rows over the cores.
///
/// # Errors
/// [`QuantError::NoVecDot`] for F32/F16/Q8_1/Q8_K weights,
/// [`QuantError::ActivationType`] when `x` has another format,
/// [`QuantError::ActivationLength`] when `x` is not `w.cols()` long,
/// [`QuantError::OutputLength`] when `out` is not `w.rows()` long.
pub fn matvec(w: &QTensor<'_>, x: &QuantizedActivation, out: &mut [f32]) -> Result<(), QuantError> {
    matvec_with(simd::best(), w, x, out)
}

/// [`matvec`] with the kernels `k`.
///
/// # Errors
/// As [`matvec`].
pub fn matvec_with(
    k: &Kernels,
    w: &QTensor<'_>,
    x: &QuantizedActivation,
    out: &mut [f32],
) -> Result<(), QuantError> {
    matmul_with(k, w, std::slice::from_ref(x), out)
}

/// [`matvec`] for several activation vectors at once (a prompt's tokens):
/// `out[t·rows + r] = w[r] · xs[t]`, each weight row read once for all of
/// them. Every product is the one [`matvec`] computes, bit for bit.
///
/// # Errors
/// As [`matvec`], for every `xs[t]`; [`QuantError::OutputLength`] when
/// `out` is not `rows × xs.len()` long.
pub fn matmul(
    w: &QTensor<'_>,
    xs: &[QuantizedActivation],
    out: &mut [f32],
) -> Result<(), QuantError> {
    matmul_with(simd::best(), w, xs, out)
}

/// [`matmul`] with the kernels `k`.
///
/// # Errors
/// As [`matmul`].
pub fn matmul_with(
    k: &Kernels,
    w: &QTensor<'_>,
    xs: &[QuantizedActivation],
    out: &mut [f32],
) -> Result<(), QuantError> {
    let weight = w.ty();
    let expected = weight.vec_dot_type().ok_or(QuantError::NoVecDot(weight))?;
    for x in xs {
        if x.ty() != expected {
            return Err(QuantError::ActivationType {
                weight,
                expected,
                actual: x.ty(),
            });
        }
        if x.len() != w.cols() {
            return Err(QuantError::ActivationLength {
                expected: w.cols(),
                actual: x.len(),
            });
        }
    }
    if out.len() != w.rows() * xs.len() {
        return Err(QuantError::OutputLength {
            expected: w.rows() * xs.len(),
            actual: out.len(),
        });
    }
    use QuantizedActivation as A;
    let q8_0 = || -> Vec<&[BlockQ8_0]> {
        xs.iter()
            .filter_map(|x| match x {
                A::Q8_0(v) => Some(v.as_slice()),
                _ => None,
            })
            .collect()
    };
    let q8_1 = || -> Vec<&[BlockQ8_1]> {
        xs.iter()
            .filter_map(|x| match x {
                A::Q8_1(v) => Some(v.as_slice()),
                _ => None,
            })
            .collect()
    };
    let q8_k = || -> Vec<&[BlockQ8K]> {
        xs.iter()
            .filter_map(|x| match x {
                A::Q8_K(v) => Some(v.as_slice()),
                _ => None,
            })
            .collect()
    };
    // The types were checked above, so every vector is of the variant
    // matched here.
    match weight {
        GgmlType::Q4_0 => rows(w, &q8_0(), out, k.q4_0, k.q4_0x4),
        GgmlType::Q4_1 => rows(w, &q8_1(), out, k.q4_1, k.q4_1x4),
        GgmlType::Q5_0 => rows(w, &q8_0(), out, k.q5_0, k.q5_0x4),
        GgmlType::Q8_0 => rows(w, &q8_0(), out, k.q8_0, k.q8_0x4),
        GgmlType::Q4_K => rows(w, &q8_k(), out, k.q4_k, k.q4_kx4),
        GgmlType::Q5_K => rows(w, &q8_k(), out, k.q5_k, None),
        GgmlType::Q6_K => rows(w, &q8_k(), out, k.q6_k, k.q6_kx4),
        _ => return Err(QuantError::NoVecDot(weight)),
    }
    Ok(())
}

/// Weight bytes below which a matrix runs on the calling thread (splitting
/// costs a few microseconds; 64 KiB take about as long on one core).
#[cfg(not(target_arch = "wasm32"))]
const PARALLEL_BYTES: usize = 64 << 10;

/// Runs `dot` over the rows of `w` for each of `ys` into `out` (token-major;
/// shapes checked by [`matmul_with`]); `dot4`, where the kernels have it,
/// for four tokens at a time (each row unpacked once for them, the same
/// bits).
fn rows<const B: usize, Y: Sync + act::BlockLanes>(
    w: &QTensor<'_>,
    ys: &[&[Y]],
    out: &mut [f32],
    dot: fn(&[[u8; B]], &[Y]) -> f32,
    dot4: Option<simd::Dot4<B, Y>>,
) {
    let row_bytes = w.row_bytes();
    let t = ys.len();
    if row_bytes == 0 || t == 0 {
        out.fill(0.0);
        return;
    }
    // The four-token kernels' lanes of each token in whole groups of four
    // (built once here, read for every row).
    let toks: Vec<act::Tok<'_, Y>> = match dot4 {
        Some(_) => ys[..t - t % 4].iter().map(|y| act::Tok::new(y)).collect(),
        None => Vec::new(),
    };
    // Row-major, tokens inner: a row is read once for all the tokens.
    let run = |data: &[u8], out: &mut [f32]| {
        for (row, o) in data.chunks_exact(row_bytes).zip(out.chunks_exact_mut(t)) {
            let row = row.as_chunks::<B>().0;
            let (o4, o_rest) = o.split_at_mut(toks.len());
            if let Some(dot4) = dot4 {
                let t4 = toks.as_chunks::<4>().0;
                for (o, t4) in o4.as_chunks_mut::<4>().0.iter_mut().zip(t4) {
                    *o = dot4(row, t4.each_ref());
                }
            }
            for (o, y) in o_rest.iter_mut().zip(&ys[toks.len()..]) {
                *o = dot(row, y);
            }
        }
    };
    let mut by_row = if t == 1 {
        Vec::new()
    } else {
        vec![0f32; out.len()]
    };
    let target: &mut [f32] = if t == 1 { &mut *out } else { &mut by_row };
    #[cfg(not(target_arch = "wasm32"))]
    let parallel = w.data().len() >= PARALLEL_BYTES;
    #[cfg(target_arch = "wasm32")]
    let parallel = false;
    if parallel {
        #[cfg(not(target_arch = "wasm32"))]
        {
            use rayon::prelude::*;
            // Chunks of rows, a few per thread so uneven cores even out.
            let per = w.rows().div_ceil(rayon::current_num_threads() * 4).max(1);
            target
                .par_chunks_mut(per * t)
                .zip(w.data().par_chunks(per * row_bytes))
                .for_each(|(out, data)| run(data, out));
        }
    } else {
        run(w.data(), target);
    }
    if t > 1 {
        // Row-major to token-major in tiles of 64 rows (the tile's values
        // stay in the L1 cache; each token's 64 outputs are written in one
        // run).
        let rows = w.rows();
        for (tile, values) in by_row.chunks(64 * t).enumerate() {
            let r0 = 64 * tile;
            for (tok, out) in out.chunks_exact_mut(rows).enumerate() {
                for (o, v) in out[r0..].iter_mut().zip(values.iter().skip(tok).step_by(t)) {
                    *o = *v;
                }
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) use super::check::{random_blocks, Rng};

    fn block(ty: GgmlType, parts: &[&[u8]]) -> Vec<f32> {
        let data: Vec<u8> = parts.concat();
        assert_eq!(data.len(), ty.block_bytes(), "{ty} test block size");
        dequantize(ty, &data).expect("dequantize")
    }

    const ONE: [u8; 2] = 0x3c00u16.to_le_bytes();
    const HALF: [u8; 2] = 0x3800u16.to_le_bytes();
    const MINUS_ONE: [u8; 2] = 0xbc00u16.to_le_bytes();
    const TWO: [u8; 2] = 0x4000u16.to_le_bytes();

    #[test]
    fn the_word_scale_decoder_equals_the_per_sub_block_one() {
        let mut rng = Rng(3);
        for _ in 0..10_000 {
            let s: [u8; 12] = rng.bytes(12).try_into().expect("12 bytes");
            let (sc, m) = scales_mins_k4(&s);
            for j in 0..8 {
                assert_eq!((sc[j], m[j]), scale_min_k4(j, &s), "{s:?} sub-block {j}");
            }
        }
    }

    #[test]
    fn every_half_converts_to_the_bits_half_gives() {
        for h in 0..=u16::MAX {
            assert_eq!(
                f16_to_f32(h).to_bits(),
                half::f16::from_bits(h).to_f32().to_bits(),
                "{h:#06x}"
            );
        }
    }

    #[test]
    fn ids_sizes_and_pairings_are_ggmls() {
        for ty in GgmlType::ALL {
            assert_eq!(GgmlType::from_u32(ty.id()), Some(ty));
            assert_eq!(GgmlType::try_from(ty.id()), Ok(ty));
            assert_eq!(ty.to_string(), ty.name());
        }
        assert_eq!(GgmlType::try_from(7), Err(QuantError::UnknownType(7)));
        let sizes: Vec<_> = GgmlType::ALL
            .iter()
            .map(|t| (t.name(), t.block_size(), t.block_bytes()))
            .collect();
        assert_eq!(
            sizes,
            [
                ("F32", 1, 4),
                ("F16", 1, 2),
                ("Q4_0", 32, 18),
                ("Q4_1", 32, 20),
                ("Q5_0", 32, 22),
                ("Q8_0", 32, 34),
                ("Q8_1", 32, 36),
                ("Q4_K", 256, 144),
                ("Q5_K", 256, 176),
                ("Q6_K", 256, 210),
                ("Q8_K", 256, 292),
            ]
        );
        assert_eq!(GgmlType::Q4_1.vec_dot_type(), Some(GgmlType::Q8_1));
        assert_eq!(GgmlType::Q5_0.vec_dot_type(), Some(GgmlType::Q8_0));
        assert_eq!(GgmlType::Q6_K.vec_dot_type(), Some(GgmlType::Q8_K));
        assert_eq!(GgmlType::Q8_K.vec_dot_type(), None);
    }

    #[test]
    fn hand_built_32_value_blocks_decode_to_known_values() {
        // Byte j holds element j (low nibble) and j + 16 (high nibble).
        let nibbles: Vec<u8> = (0..16u8).map(|i| i | ((15 - i) << 4)).collect();
        let q4_0 = block(GgmlType::Q4_0, &[&HALF, &nibbles]);
        assert_eq!(q4_0[0], -4.0); // (0 − 8)·0.5
        assert_eq!(q4_0[15], 3.5); // (15 − 8)·0.5
        assert_eq!(q4_0[16], 3.5); // high nibble of byte 0 = 15
        assert_eq!(q4_0[31], -4.0);

        let q4_1 = block(GgmlType::Q4_1, &[&TWO, &MINUS_ONE, &nibbles]);
        assert_eq!(q4_1[0], -1.0); // 0·2 − 1
        assert_eq!(q4_1[5], 9.0); // 5·2 − 1
        assert_eq!(q4_1[16], 29.0); // 15·2 − 1

        // Q5_0: qh bit 1 and bit 17 set: elements 1 and 17 gain 16.
        let qh = ((1u32 << 1) | (1 << 17)).to_le_bytes();
        let q5_0 = block(GgmlType::Q5_0, &[&ONE, &qh, &nibbles]);
        assert_eq!(q5_0[0], -16.0); // 0 − 16
        assert_eq!(q5_0[1], 1.0); // (1 + 16) − 16
        assert_eq!(q5_0[2], -14.0); // 2 − 16
        assert_eq!(q5_0[16], -1.0); // 15 − 16
        assert_eq!(q5_0[17], 14.0); // (14 + 16) − 16

        let qs: Vec<u8> = (0..32).map(|i| (i as i8 - 16) as u8).collect();
        let q8_0 = block(GgmlType::Q8_0, &[&HALF, &qs]);
        assert_eq!(q8_0[0], -8.0);
        assert_eq!(q8_0[31], 7.5);

        let q8_1 = block(GgmlType::Q8_1, &[&TWO, &ONE, &qs]);
        assert_eq!(q8_1[0], -32.0);
        assert_eq!(q8_1[17], 2.0);

        let f16 = dequantize(GgmlType::F16, &[0x00, 0x3c, 0x00, 0xc0]).expect("f16");
        assert_eq!(f16, [1.0, -2.0]);
        let f32s: Vec<u8> = [1.5f32, -0.25]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(dequantize(GgmlType::F32, &f32s).expect("f32"), [1.5, -0.25]);
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    /// Random blocks (every byte random but the f16 scales, which are any
    /// finite half) decode to the bits PyPI's `gguf` package gives
    /// (scripts/fixtures/quant_blocks.py).
    #[test]
    fn random_blocks_decode_like_the_gguf_package() {
        let fixture: serde_json::Value =
            serde_json::from_str(include_str!("../../tests/fixtures/quant_blocks.json"))
                .expect("fixture parses");
        let cases = fixture["cases"].as_array().expect("cases");
        let mut seen = Vec::new();
        for case in cases {
            let id = case["id"].as_u64().expect("id") as u32;
            let ty = GgmlType::from_u32(id).expect("known type");
            assert_eq!(case["type"].as_str(), Some(ty.name()));
            let data = hex(case["data"].as_str().expect("data"));
            let want: Vec<u32> = hex(case["values"].as_str().expect("values"))
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            let blocks = case["blocks"].as_u64().expect("blocks") as usize;
            assert_eq!(data.len(), blocks * ty.block_bytes());
            assert_eq!(want.len(), blocks * ty.block_size());
            let got = dequantize(ty, &data).expect("dequantize");
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(
                    g.to_bits(),
                    *w,
                    "{ty} value {i}: {g} vs {}",
                    f32::from_bits(*w)
                );
            }
            // The same through a row view, one row per block.
            let t = QTensor::new(ty, blocks, ty.block_size(), &data).expect("view");
            let mut row = vec![0.0; ty.block_size()];
            t.dequantize_row(blocks - 1, &mut row).expect("last row");
            assert_eq!(row, got[(blocks - 1) * ty.block_size()..]);
            seen.push(ty);
        }
        use GgmlType::*;
        assert_eq!(seen, [Q4_0, Q4_1, Q5_0, Q8_0, Q4_K, Q5_K, Q6_K]);
    }

    #[test]
    fn shapes_and_lengths_are_checked() {
        let data = vec![0u8; 3 * 2 * 20];
        let t = QTensor::new(GgmlType::Q4_1, 3, 64, &data).expect("3 rows of 2 blocks");
        assert_eq!(
            (t.rows(), t.cols(), t.blocks_per_row(), t.row_bytes()),
            (3, 64, 2, 40)
        );
        assert_eq!(t.row(2).map(<[u8]>::len), Some(40));
        assert_eq!(t.row(3), None);
        assert_eq!(
            QTensor::new(GgmlType::Q4_1, 3, 48, &data),
            Err(QuantError::PartialBlock {
                ty: GgmlType::Q4_1,
                len: 48,
                block: 32
            })
        );
        assert_eq!(
            QTensor::new(GgmlType::Q4_1, 4, 64, &data),
            Err(QuantError::ByteLength {
                ty: GgmlType::Q4_1,
                expected: 160,
                actual: 120
            })
        );
        assert_eq!(
            QTensor::new(GgmlType::Q4_K, usize::MAX, 256, &data),
            Err(QuantError::TooLarge {
                ty: GgmlType::Q4_K,
                rows: usize::MAX,
                cols: 256
            })
        );
        let mut out = vec![0.0; 31];
        assert_eq!(
            dequantize_row(GgmlType::Q8_0, &data[..34], &mut out),
            Err(QuantError::OutputLength {
                expected: 32,
                actual: 31
            })
        );
        assert!(matches!(
            dequantize(GgmlType::Q8_0, &data[..35]),
            Err(QuantError::ByteLength { .. })
        ));
        assert_eq!(
            t.dequantize_row(3, &mut out),
            Err(QuantError::NoRow { row: 3, rows: 3 })
        );
        // A zero-width tensor is valid and empty.
        let empty = QTensor::new(GgmlType::Q6_K, 5, 0, &[]).expect("empty rows");
        assert_eq!(empty.row(4), Some(&[][..]));
    }

    /// The 12 scale bytes of a K block holding six-bit `sc[j]` and `m[j]`
    /// (the inverse of `get_scale_min_k4`).
    fn pack_k4_scales(sc: [u8; 8], m: [u8; 8]) -> [u8; 12] {
        let mut s = [0u8; 12];
        for j in 0..4 {
            s[j] = (sc[j] & 63) | ((sc[j + 4] >> 4) << 6);
            s[j + 4] = (m[j] & 63) | ((m[j + 4] >> 4) << 6);
            s[j + 8] = (sc[j + 4] & 15) | ((m[j + 4] & 15) << 4);
        }
        s
    }

    #[test]
    fn six_bit_scales_and_mins_unpack() {
        let sc = [1, 2, 3, 63, 17, 33, 48, 62];
        let m = [63, 0, 5, 7, 40, 1, 31, 32];
        let s = pack_k4_scales(sc, m);
        for j in 0..8 {
            assert_eq!(scale_min_k4(j, &s), (sc[j], m[j]), "sub-block {j}");
        }
    }

    #[test]
    fn hand_built_k_blocks_decode_to_known_values() {
        let sc = [1, 2, 3, 4, 5, 6, 7, 63];
        let m = [0, 1, 2, 3, 4, 5, 6, 63];
        let scales = pack_k4_scales(sc, m);
        // qs[32c + l]: low nibble l % 16, high nibble 15 − l % 16.
        let qs: Vec<u8> = (0..128u8)
            .map(|i| (i % 16) | ((15 - i % 16) << 4))
            .collect();
        // d = 1, dmin = 0.5: x = sc·q − 0.5·m.
        let q4k = block(GgmlType::Q4_K, &[&ONE, &HALF, &scales, &qs]);
        assert_eq!(q4k[0], 0.0); // sub-block 0: 1·0 − 0
        assert_eq!(q4k[3], 3.0); // 1·3
        assert_eq!(q4k[32], 2.0 * 15.0 - 0.5); // sub-block 1: high nibble 15
        assert_eq!(q4k[64 + 5], 3.0 * 5.0 - 1.0); // sub-block 2
        assert_eq!(q4k[255], 63.0 * 0.0 - 31.5); // sub-block 7: 15 − 15 = 0

        // Q5_K: qh[l] bit 2c / 2c+1 adds 16; set bit 0 of qh[3] and bit 7 of qh[31].
        let mut qh = [0u8; 32];
        qh[3] = 1;
        qh[31] = 0x80;
        let q5k = block(GgmlType::Q5_K, &[&ONE, &HALF, &scales, &qh, &qs]);
        assert_eq!(q5k[3], 1.0 * 19.0); // sub-block 0, q = 3 + 16
        assert_eq!(q5k[4], 4.0);
        assert_eq!(q5k[255], 63.0 * 16.0 - 31.5); // sub-block 7, q = 0 + 16
        assert_eq!(q5k[223], 7.0 * 15.0 - 3.0); // sub-block 6, bit 6 of qh[31] clear

        // Q6_K, d = 0.5, scales 1, −1, 2, −2, ...; qh[0] gives the four
        // values of l = 0 the high bits 0, 1, 2, 3.
        let ql: Vec<u8> = (0..128u8)
            .map(|i| (i % 16) | ((15 - i % 16) << 4))
            .collect();
        let mut qh = [0u8; 64];
        qh[0] = 0b11_10_01_00;
        let scales: Vec<u8> = (0..16i8)
            .map(|i| ((i / 2 + 1) * if i % 2 == 0 { 1 } else { -1 }) as u8)
            .collect();
        let q6k = block(GgmlType::Q6_K, &[&ql, &qh, &scales, &HALF]);
        assert_eq!(q6k[0], 0.5 * 1.0 * -32.0); // q = 0
        assert_eq!(q6k[32], 0.5 * 2.0 * -16.0); // q = 0 | 1 << 4, scale 2
        assert_eq!(q6k[64], 0.5 * 3.0 * 15.0); // q = 15 | 2 << 4, scale 4
        assert_eq!(q6k[96], 0.5 * 4.0 * 31.0); // q = 15 | 3 << 4, scale 6
        assert_eq!(q6k[128 + 17], 0.5 * -5.0 * -31.0); // second half, q = 1, scale 9
    }
}
