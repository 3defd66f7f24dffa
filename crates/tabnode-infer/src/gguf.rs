//! GGUF v3 reader.
//!
//! [`Gguf::parse`] reads the header, the metadata and the tensor directory
//! from a byte slice (a file read natively, or a `fetch`ed buffer in the
//! browser) and checks every length and offset against the data before using
//! it, so a truncated or corrupted file is an error, never a panic or a huge
//! allocation. [`Gguf::dequantize`] turns a tensor into `f32`s.
//!
//! Layout facts this follows (ggml): `dims[0]` varies fastest (the row
//! length); quantized tensors are stored in blocks along rows. The formats
//! (F32, F16, Q4_0, Q4_1, Q5_0, Q8_0, Q4_K, Q5_K, Q6_K, and the activation
//! formats Q8_1, Q8_K) and their dequantization live in [`crate::quant`].

use std::collections::BTreeMap;

use crate::quant::{self, GgmlType};

/// `"GGUF"` little-endian.
pub const MAGIC: u32 = 0x4655_4747;

/// Why a GGUF file cannot be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GgufError {
    /// The file does not start with `GGUF`.
    #[error("not a GGUF file (magic {0:#010x})")]
    BadMagic(u32),
    /// A version this reader does not know.
    #[error("GGUF version {0} is not supported (only 2 and 3)")]
    Version(u32),
    /// The data ends before something it announces.
    #[error("truncated file: {what} needs {needed} bytes at offset {offset}, {available} left")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Where.
        offset: usize,
        /// Bytes it needs.
        needed: usize,
        /// Bytes there are.
        available: usize,
    },
    /// A metadata value type code this reader does not know.
    #[error("unknown metadata value type {0}")]
    ValueType(u32),
    /// A string that is not UTF-8.
    #[error("{0} is not valid UTF-8")]
    Utf8(&'static str),
    /// A tensor type this reader cannot dequantize.
    #[error("tensor {name}: type {ggml_type} ({type_name}) is not supported")]
    TensorType {
        /// Tensor name.
        name: String,
        /// ggml type code.
        ggml_type: u32,
        /// Its name, if known.
        type_name: &'static str,
    },
    /// A tensor's shape or placement is impossible.
    #[error("tensor {name}: {reason}")]
    BadTensor {
        /// Tensor name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// No tensor of that name.
    #[error("no tensor named {0}")]
    NoTensor(String),
    /// A required metadata key is missing or has the wrong type.
    #[error("metadata {key}: {reason}")]
    Metadata {
        /// The key.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

type Result<T> = std::result::Result<T, GgufError>;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `uint8`.
    U8(u8),
    /// `int8`.
    I8(i8),
    /// `uint16`.
    U16(u16),
    /// `int16`.
    I16(i16),
    /// `uint32`.
    U32(u32),
    /// `int32`.
    I32(i32),
    /// `float32`.
    F32(f32),
    /// `bool`.
    Bool(bool),
    /// `string`.
    String(String),
    /// `array` (of one type).
    Array(Vec<Value>),
    /// `uint64`.
    U64(u64),
    /// `int64`.
    I64(i64),
    /// `float64`.
    F64(f64),
}

impl Value {
    /// The value as an unsigned integer, if it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, if it is a number.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    /// The value as a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as an array.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(v) => Some(v),
            _ => None,
        }
    }
}

/// ggml tensor types this reader knows by name.
pub fn ggml_type_name(t: u32) -> &'static str {
    match t {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        6 => "Q5_0",
        7 => "Q5_1",
        8 => "Q8_0",
        9 => "Q8_1",
        10 => "Q2_K",
        11 => "Q3_K",
        12 => "Q4_K",
        13 => "Q5_K",
        14 => "Q6_K",
        15 => "Q8_K",
        30 => "BF16",
        _ => "unknown",
    }
}

/// `(values per block, bytes per block)` of the supported types.
fn block_layout(t: u32) -> Option<(usize, usize)> {
    GgmlType::from_u32(t).map(|ty| (ty.block_size(), ty.block_bytes()))
}

/// One entry of the tensor directory.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// Name (`blk.0.attn_q.weight`, ...).
    pub name: String,
    /// Dimensions, fastest-varying first.
    pub dims: Vec<u64>,
    /// ggml type code.
    pub ggml_type: u32,
    /// Offset of its data from the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    /// Number of values.
    pub fn len(&self) -> u64 {
        self.dims.iter().product()
    }

    /// True for a tensor with no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of its data, if the type is supported.
    pub fn byte_len(&self) -> Option<u64> {
        let (per, bytes) = block_layout(self.ggml_type)?;
        let n = self.len();
        n.is_multiple_of(per as u64)
            .then(|| n / per as u64 * bytes as u64)
    }
}

/// A parsed GGUF file borrowing its bytes.
#[derive(Debug)]
pub struct Gguf<'a> {
    /// Format version.
    pub version: u32,
    /// Metadata, by key.
    pub metadata: BTreeMap<String, Value>,
    /// Tensor directory, in file order.
    pub tensors: Vec<TensorInfo>,
    data: &'a [u8],
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8]> {
        let available = self.buf.len() - self.pos;
        if n > available {
            return Err(GgufError::Truncated {
                what,
                offset: self.pos,
                needed: n,
                available,
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N]> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A count that must be backed by at least `min_size` bytes per item.
    fn count(&mut self, what: &'static str, min_size: usize) -> Result<usize> {
        let at = self.pos;
        let n = self.u64(what)?;
        let available = self.buf.len() - self.pos;
        let needed = n.saturating_mul(min_size as u64);
        if needed > available as u64 {
            return Err(GgufError::Truncated {
                what,
                offset: at,
                needed: usize::try_from(needed).unwrap_or(usize::MAX),
                available,
            });
        }
        Ok(n as usize)
    }

    fn string(&mut self, what: &'static str) -> Result<String> {
        let n = self.count(what, 1)?;
        let bytes = self.take(n, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| GgufError::Utf8(what))
    }

    fn value(&mut self, t: u32, depth: u32) -> Result<Value> {
        Ok(match t {
            0 => Value::U8(self.array::<1>("u8")?[0]),
            1 => Value::I8(self.array::<1>("i8")?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array("u16")?)),
            3 => Value::I16(i16::from_le_bytes(self.array("i16")?)),
            4 => Value::U32(self.u32("u32")?),
            5 => Value::I32(i32::from_le_bytes(self.array("i32")?)),
            6 => Value::F32(f32::from_le_bytes(self.array("f32")?)),
            7 => Value::Bool(self.array::<1>("bool")?[0] != 0),
            8 => Value::String(self.string("string value")?),
            9 => {
                if depth > 4 {
                    return Err(GgufError::ValueType(t));
                }
                let inner = self.u32("array type")?;
                let min = match inner {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => 12,
                    other => return Err(GgufError::ValueType(other)),
                };
                let n = self.count("array", min)?;
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.value(inner, depth + 1)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(self.u64("u64")?),
            11 => Value::I64(i64::from_le_bytes(self.array("i64")?)),
            12 => Value::F64(f64::from_le_bytes(self.array("f64")?)),
            other => return Err(GgufError::ValueType(other)),
        })
    }
}

pub use crate::quant::f16_to_f32;

impl<'a> Gguf<'a> {
    /// Parses the header, metadata and tensor directory of `bytes`.
    ///
    /// # Errors
    /// A bad magic or version, truncation anywhere, unknown value types,
    /// invalid UTF-8, or tensors whose data lies outside the file.
    pub fn parse(bytes: &'a [u8]) -> Result<Self> {
        let mut r = Reader { buf: bytes, pos: 0 };
        let magic = r.u32("magic")?;
        if magic != MAGIC {
            return Err(GgufError::BadMagic(magic));
        }
        let version = r.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::Version(version));
        }
        // Each tensor entry and each metadata pair needs at least 24 / 12 bytes.
        let n_tensors = r.count("tensor count", 24)?;
        let n_kv = r.count("metadata count", 12)?;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = r.string("metadata key")?;
            let t = r.u32("metadata type")?;
            let v = r.value(t, 0)?;
            metadata.insert(key, v);
        }
        let mut tensors = Vec::with_capacity(n_tensors);
        for _ in 0..n_tensors {
            let name = r.string("tensor name")?;
            let n_dims = r.u32("tensor rank")? as usize;
            if n_dims > 8 {
                return Err(GgufError::BadTensor {
                    name,
                    reason: format!("rank {n_dims}"),
                });
            }
            let mut dims = Vec::with_capacity(n_dims);
            for _ in 0..n_dims {
                dims.push(r.u64("tensor dimension")?);
            }
            let ggml_type = r.u32("tensor type")?;
            let offset = r.u64("tensor offset")?;
            tensors.push(TensorInfo {
                name,
                dims,
                ggml_type,
                offset,
            });
        }
        let alignment = metadata
            .get("general.alignment")
            .and_then(Value::as_u64)
            .unwrap_or(32)
            .max(1) as usize;
        let start = r.pos.div_ceil(alignment) * alignment;
        let data = bytes.get(start..).unwrap_or(&[]);
        let g = Gguf {
            version,
            metadata,
            tensors,
            data,
        };
        for t in &g.tensors {
            if let Some(len) = t.byte_len() {
                let end = t.offset.checked_add(len);
                if end.is_none_or(|e| e > data.len() as u64) {
                    return Err(GgufError::Truncated {
                        what: "tensor data",
                        offset: start.saturating_add(t.offset as usize),
                        needed: len as usize,
                        available: data.len().saturating_sub(t.offset as usize),
                    });
                }
            }
        }
        Ok(g)
    }

    /// A metadata value.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// A required unsigned metadata value.
    ///
    /// # Errors
    /// [`GgufError::Metadata`] when missing or not an unsigned integer.
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        self.get(key)
            .and_then(Value::as_u64)
            .ok_or_else(|| GgufError::Metadata {
                key: key.into(),
                reason: "missing or not an unsigned integer".into(),
            })
    }

    /// A tensor's directory entry.
    ///
    /// # Errors
    /// [`GgufError::NoTensor`].
    pub fn tensor(&self, name: &str) -> Result<&TensorInfo> {
        self.tensors
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| GgufError::NoTensor(name.into()))
    }

    /// The raw bytes of a tensor.
    ///
    /// # Errors
    /// Unsupported types (their length is unknown to this reader).
    pub fn raw(&self, t: &TensorInfo) -> Result<&'a [u8]> {
        let len = t.byte_len().ok_or_else(|| unsupported(t))?;
        let start = t.offset as usize;
        // Bounds were checked in `parse`.
        self.data
            .get(start..start + len as usize)
            .ok_or_else(|| GgufError::BadTensor {
                name: t.name.clone(),
                reason: "data outside the file".into(),
            })
    }

    /// The tensor's values as `f32`, in storage order (`dims[0]` fastest).
    ///
    /// # Errors
    /// Unsupported types, a length that is not a whole number of blocks.
    pub fn dequantize(&self, name: &str) -> Result<Vec<f32>> {
        let t = self.tensor(name)?;
        let ty = GgmlType::from_u32(t.ggml_type).ok_or_else(|| unsupported(t))?;
        let raw = self.raw(t)?;
        let n = t.len() as usize;
        let mut out = vec![0.0; n];
        quant::dequantize_row(ty, raw, &mut out).map_err(|e| GgufError::BadTensor {
            name: t.name.clone(),
            reason: e.to_string(),
        })?;
        Ok(out)
    }
}

fn unsupported(t: &TensorInfo) -> GgufError {
    GgufError::TensorType {
        name: t.name.clone(),
        ggml_type: t.ggml_type,
        type_name: ggml_type_name(t.ggml_type),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes a small GGUF file: metadata of several kinds and one tensor of
    /// each supported type.
    pub(crate) fn sample() -> Vec<u8> {
        let mut b = Vec::new();
        let s = |b: &mut Vec<u8>, v: &str| {
            b.extend((v.len() as u64).to_le_bytes());
            b.extend(v.as_bytes());
        };
        b.extend(MAGIC.to_le_bytes());
        b.extend(3u32.to_le_bytes());
        b.extend(4u64.to_le_bytes()); // tensors
        b.extend(3u64.to_le_bytes()); // metadata
        s(&mut b, "general.architecture");
        b.extend(8u32.to_le_bytes());
        s(&mut b, "llama");
        s(&mut b, "llama.block_count");
        b.extend(4u32.to_le_bytes());
        b.extend(30u32.to_le_bytes());
        s(&mut b, "tokenizer.ggml.tokens");
        b.extend(9u32.to_le_bytes());
        b.extend(8u32.to_le_bytes());
        b.extend(2u64.to_le_bytes());
        s(&mut b, "<s>");
        s(&mut b, "hé");
        // Tensors: f32[4], f16[2], q8_0[32], q4_1[32].
        let mut offset = 0u64;
        for (name, t, n, bytes) in [
            ("a", 0u32, 4u64, 16u64),
            ("b", 1, 2, 4),
            ("c", 8, 32, 34),
            ("d", 3, 32, 20),
        ] {
            s(&mut b, name);
            b.extend(1u32.to_le_bytes());
            b.extend(n.to_le_bytes());
            b.extend(t.to_le_bytes());
            b.extend(offset.to_le_bytes());
            offset += bytes.div_ceil(32) * 32;
        }
        while !b.len().is_multiple_of(32) {
            b.push(0);
        }
        let pad = |b: &mut Vec<u8>| {
            while !b.len().is_multiple_of(32) {
                b.push(0);
            }
        };
        for v in [1.0f32, -2.5, 0.0, 1e-3] {
            b.extend(v.to_le_bytes());
        }
        pad(&mut b);
        b.extend(0x3c00u16.to_le_bytes()); // 1.0
        b.extend(0xc000u16.to_le_bytes()); // -2.0
        pad(&mut b);
        b.extend(0x3800u16.to_le_bytes()); // d = 0.5
        b.extend((0..32).map(|i| (i as i8 - 16) as u8));
        pad(&mut b);
        b.extend(0x3c00u16.to_le_bytes()); // d = 1
        b.extend(0xbc00u16.to_le_bytes()); // m = -1
        b.extend((0..16u8).map(|i| i | ((15 - i) << 4)));
        pad(&mut b);
        b
    }

    #[test]
    fn reads_metadata_and_every_supported_type() {
        let bytes = sample();
        let g = Gguf::parse(&bytes).expect("parse");
        assert_eq!(g.version, 3);
        assert_eq!(
            g.get("general.architecture").and_then(Value::as_str),
            Some("llama")
        );
        assert_eq!(g.get_u64("llama.block_count"), Ok(30));
        let toks = g
            .get("tokenizer.ggml.tokens")
            .and_then(Value::as_array)
            .expect("tokens");
        assert_eq!(toks[1], Value::String("hé".into()));
        assert_eq!(g.dequantize("a").expect("f32"), vec![1.0, -2.5, 0.0, 1e-3]);
        assert_eq!(g.dequantize("b").expect("f16"), vec![1.0, -2.0]);
        let c = g.dequantize("c").expect("q8_0");
        assert_eq!(c[0], -8.0);
        assert_eq!(c[31], 7.5);
        let d = g.dequantize("d").expect("q4_1");
        assert_eq!(d[0], -1.0); // q = 0 (low nibble of byte 0)
        assert_eq!(d[16], 14.0); // q = 15 (high nibble of byte 0)
        assert_eq!(d[15], 14.0); // q = 15 (low nibble of byte 15)
        assert_eq!(g.dequantize("zz"), Err(GgufError::NoTensor("zz".into())));
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let bytes = sample();
        for cut in 0..bytes.len() - 1 {
            // Cuts inside the trailing padding of the last tensor are fine.
            if cut >= bytes.len() - 12 {
                continue;
            }
            let r = Gguf::parse(&bytes[..cut]);
            assert!(r.is_err(), "cut at {cut} parsed");
        }
    }

    #[test]
    fn corruption_is_reported() {
        let mut bad = sample();
        bad[0] = b'X';
        assert!(matches!(Gguf::parse(&bad), Err(GgufError::BadMagic(_))));
        let mut bad = sample();
        bad[4] = 9;
        assert_eq!(Gguf::parse(&bad).err(), Some(GgufError::Version(9)));
        // A tensor count that the file cannot hold.
        let mut bad = sample();
        bad[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            Gguf::parse(&bad),
            Err(GgufError::Truncated { .. })
        ));
        // An unknown metadata type (the first value's type field).
        let mut bad = sample();
        let at = 24 + 8 + "general.architecture".len();
        bad[at..at + 4].copy_from_slice(&77u32.to_le_bytes());
        assert_eq!(Gguf::parse(&bad).err(), Some(GgufError::ValueType(77)));
    }

    /// A GGUF file with no metadata and the given one-row tensors
    /// `(name, type, values, data)`.
    fn file_with(tensors: &[(&str, u32, u64, &[u8])]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend(MAGIC.to_le_bytes());
        b.extend(3u32.to_le_bytes());
        b.extend((tensors.len() as u64).to_le_bytes());
        b.extend(0u64.to_le_bytes());
        let mut offset = 0u64;
        for (name, t, n, data) in tensors {
            b.extend((name.len() as u64).to_le_bytes());
            b.extend(name.as_bytes());
            b.extend(1u32.to_le_bytes());
            b.extend(n.to_le_bytes());
            b.extend(t.to_le_bytes());
            b.extend(offset.to_le_bytes());
            offset += (data.len() as u64).div_ceil(32) * 32;
        }
        for (_, _, _, data) in tensors {
            while !b.len().is_multiple_of(32) {
                b.push(0);
            }
            b.extend(*data);
        }
        b
    }

    #[test]
    fn reads_and_bounds_checks_q5_0_and_k_formats() {
        // Deterministic bytes with small finite f16 scales.
        let bytes = |ty: GgmlType, seed: u8| -> Vec<u8> {
            let mut v: Vec<u8> = (0..ty.block_bytes())
                .map(|i| (i as u8).wrapping_mul(37).wrapping_add(seed))
                .collect();
            let at: &[usize] = match ty {
                GgmlType::Q6_K => &[208],
                GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
                _ => &[0],
            };
            for &a in at {
                v[a..a + 2].copy_from_slice(&0x2e66u16.to_le_bytes()); // 0.1
            }
            v
        };
        let q5_0 = bytes(GgmlType::Q5_0, 1);
        let q4_k = bytes(GgmlType::Q4_K, 2);
        let q5_k = bytes(GgmlType::Q5_K, 3);
        let q6_k = bytes(GgmlType::Q6_K, 4);
        let file = file_with(&[
            ("q5_0", 6, 32, &q5_0),
            ("q4_k", 12, 256, &q4_k),
            ("q5_k", 13, 256, &q5_k),
            ("q6_k", 14, 256, &q6_k),
        ]);
        let g = Gguf::parse(&file).expect("parse");
        for (name, ty, data) in [
            ("q5_0", GgmlType::Q5_0, &q5_0),
            ("q4_k", GgmlType::Q4_K, &q4_k),
            ("q5_k", GgmlType::Q5_K, &q5_k),
            ("q6_k", GgmlType::Q6_K, &q6_k),
        ] {
            let t = g.tensor(name).expect("tensor");
            assert_eq!(t.byte_len(), Some(ty.block_bytes() as u64), "{name}");
            assert_eq!(g.raw(t).expect("raw"), &data[..], "{name}");
            let values = g.dequantize(name).expect("dequantize");
            assert_eq!(
                values,
                quant::dequantize(ty, data).expect("quant"),
                "{name}"
            );
            assert!(values.iter().any(|v| *v != 0.0), "{name}");
        }
        // Their data is now bounds-checked: a file cut inside the last
        // tensor is an error.
        assert!(matches!(
            Gguf::parse(&file[..file.len() - 1]),
            Err(GgufError::Truncated { .. })
        ));
        // A type the reader does not know still parses, but cannot be read.
        let file = file_with(&[("q5_1", 7, 32, &[0u8; 24])]);
        let g = Gguf::parse(&file).expect("parse");
        assert!(matches!(
            g.dequantize("q5_1"),
            Err(GgufError::TensorType { ggml_type: 7, .. })
        ));
    }

    #[test]
    fn half_floats_convert_exactly() {
        assert_eq!(f16_to_f32(0x0000), 0.0);
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x03ff), 1023.0 * 2f32.powi(-24));
        assert!(f16_to_f32(0x7c00).is_infinite());
        assert!(f16_to_f32(0x7e00).is_nan());
    }
}
