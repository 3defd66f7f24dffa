//! The llama forward pass on the CPU with the weights kept as GGUF blocks.
//!
//! Every matrix stays in the file's quantized format (Q4_0, Q4_1, Q5_0,
//! Q8_0, Q4_K, Q5_K, Q6_K) inside the model's byte buffer; a decode step
//! quantizes each activation vector once (Q8 blocks, the type the weight's
//! format pairs with) and runs integer dot products against the weight
//! blocks ([`crate::quant`]), as llama.cpp does. Norms, RoPE, attention over
//! the KV cache and SiLU·mul run in f32 on scratch buffers reused across
//! steps. Memory is the file plus the KV cache and a few vectors.
//!
//! This is the portable, single-threaded path: the kernels are the scalar
//! reference ones, so the tab (wasm32) and native nodes compute the same
//! logits bit for bit. SIMD kernels and threads plug in below
//! [`crate::quant::matvec`] without changing this module.

use crate::generate::{Decoder, GenerateError};
use crate::gguf::{Gguf, GgufError, TensorInfo};
use crate::quant::{self, GgmlType, QTensor, QuantError, QuantizedActivation};
use crate::reference::{dot, rmsnorm, Config};

/// Where a weight matrix lives in the model's bytes.
#[derive(Debug, Clone)]
struct Weight {
    ty: GgmlType,
    /// The activation type its kernel pairs with.
    act: GgmlType,
    rows: usize,
    cols: usize,
    start: usize,
    len: usize,
}

#[derive(Debug)]
struct Layer {
    attn_norm: Vec<f32>,
    wq: Weight,
    wk: Weight,
    wv: Weight,
    wo: Weight,
    ffn_norm: Vec<f32>,
    gate: Weight,
    up: Weight,
    down: Weight,
}

/// A llama model whose matrices stay quantized, with its bytes.
pub struct CpuModel {
    /// Hyper-parameters.
    pub config: Config,
    bytes: Vec<u8>,
    embed: Weight,
    output: Option<Weight>,
    norm: Vec<f32>,
    layers: Vec<Layer>,
    /// `base^(−2i/head_dim)` for each rotated pair.
    inv_freq: Vec<f32>,
}

impl std::fmt::Debug for CpuModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuModel")
            .field("config", &self.config)
            .field("bytes", &self.bytes.len())
            .finish_non_exhaustive()
    }
}

fn bad(name: &str, reason: String) -> GgufError {
    GgufError::BadTensor {
        name: name.to_string(),
        reason,
    }
}

/// Locates the matrix `name` (`rows` × `cols`, ggml's `[cols, rows]`) and
/// checks that its format has a kernel and its bytes are all there.
fn weight(
    g: &Gguf<'_>,
    base: usize,
    name: &str,
    rows: usize,
    cols: usize,
) -> Result<Weight, GgufError> {
    let t: &TensorInfo = g.tensor(name)?;
    if t.dims.len() != 2 || t.dims[0] as usize != cols || t.dims[1] as usize != rows {
        return Err(bad(
            name,
            format!("shape {:?}, expected [{cols}, {rows}]", t.dims),
        ));
    }
    let (ty, act) = GgmlType::from_u32(t.ggml_type)
        .and_then(|ty| Some((ty, ty.vec_dot_type()?)))
        .ok_or_else(|| GgufError::TensorType {
            name: name.to_string(),
            ggml_type: t.ggml_type,
            type_name: crate::gguf::ggml_type_name(t.ggml_type),
        })?;
    let raw = g.raw(t)?;
    // The view checks rows × blocks × block bytes against the slice.
    QTensor::new(ty, rows, cols, raw).map_err(|e| bad(name, e.to_string()))?;
    Ok(Weight {
        ty,
        act,
        rows,
        cols,
        // `raw` borrows from the buffer that starts at `base`: its address
        // less the buffer's is its offset (plain integers, no pointer use).
        start: (raw.as_ptr() as usize).wrapping_sub(base),
        len: raw.len(),
    })
}

impl CpuModel {
    /// Takes the model file's bytes and locates every tensor in them; norms
    /// are read as f32, matrices stay as they are.
    ///
    /// # Errors
    /// Missing tensors or metadata, wrong shapes, formats without a kernel.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, GgufError> {
        let (config, embed, output, norm, layers) = {
            let g = Gguf::parse(&bytes)?;
            let base = bytes.as_ptr() as usize;
            let c = Config::from_gguf(&g)?;
            let hd = c.dim / c.heads.max(1);
            let kv_dim = c.kv_heads * hd;
            let w = |name: String, rows, cols| weight(&g, base, &name, rows, cols);
            let f = |name: String| g.dequantize(&name);
            let mut layers = Vec::with_capacity(c.layers);
            for l in 0..c.layers {
                let p = |s: &str| format!("blk.{l}.{s}.weight");
                layers.push(Layer {
                    attn_norm: f(p("attn_norm"))?,
                    wq: w(p("attn_q"), c.dim, c.dim)?,
                    wk: w(p("attn_k"), kv_dim, c.dim)?,
                    wv: w(p("attn_v"), kv_dim, c.dim)?,
                    wo: w(p("attn_output"), c.dim, c.dim)?,
                    ffn_norm: f(p("ffn_norm"))?,
                    gate: w(p("ffn_gate"), c.hidden, c.dim)?,
                    up: w(p("ffn_up"), c.hidden, c.dim)?,
                    down: w(p("ffn_down"), c.dim, c.hidden)?,
                });
            }
            let output = match g.tensor("output.weight") {
                Ok(_) => Some(w("output.weight".into(), c.vocab, c.dim)?),
                Err(_) => None,
            };
            let embed = w("token_embd.weight".into(), c.vocab, c.dim)?;
            let norm = f("output_norm.weight".into())?;
            (c, embed, output, norm, layers)
        };
        let hd = config.dim / config.heads.max(1);
        let inv_freq = (0..hd / 2)
            .map(|i| config.rope_base.powf(-2.0 * i as f32 / hd as f32))
            .collect();
        Ok(Self {
            config,
            bytes,
            embed,
            output,
            norm,
            layers,
            inv_freq,
        })
    }

    /// The matrix `w` as blocks (checked at load, so this does not fail
    /// unless the model was built wrong).
    fn view(&self, w: &Weight) -> Result<QTensor<'_>, QuantError> {
        let bytes = self
            .bytes
            .get(w.start..w.start + w.len)
            .ok_or(QuantError::ByteLength {
                ty: w.ty,
                expected: w.start + w.len,
                actual: self.bytes.len(),
            })?;
        QTensor::new(w.ty, w.rows, w.cols, bytes)
    }

    /// Bytes held (the file).
    pub fn bytes_len(&self) -> usize {
        self.bytes.len()
    }

    /// A fresh decoding session (empty KV cache).
    pub fn session(&self) -> CpuSession<'_> {
        let c = &self.config;
        let hd = c.dim / c.heads.max(1);
        CpuSession {
            model: self,
            k: vec![Vec::new(); c.layers],
            v: vec![Vec::new(); c.layers],
            pos: 0,
            s: Scratch {
                x: vec![0.0; c.dim],
                h: vec![0.0; c.dim],
                q: vec![0.0; c.dim],
                k: vec![0.0; c.kv_heads * hd],
                v: vec![0.0; c.kv_heads * hd],
                att: vec![0.0; c.dim],
                o: vec![0.0; c.dim],
                g: vec![0.0; c.hidden],
                u: vec![0.0; c.hidden],
                scores: Vec::new(),
                cos: vec![0.0; hd / 2],
                sin: vec![0.0; hd / 2],
                act: QuantizedActivation::default(),
            },
        }
    }
}

/// Vectors a step writes, allocated once per session.
struct Scratch {
    x: Vec<f32>,
    h: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    att: Vec<f32>,
    o: Vec<f32>,
    g: Vec<f32>,
    u: Vec<f32>,
    scores: Vec<f32>,
    cos: Vec<f32>,
    sin: Vec<f32>,
    act: QuantizedActivation,
}

/// A decoding session: the KV cache of one sequence.
pub struct CpuSession<'m> {
    model: &'m CpuModel,
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    pos: usize,
    s: Scratch,
}

impl std::fmt::Debug for CpuSession<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuSession")
            .field("pos", &self.pos)
            .finish_non_exhaustive()
    }
}

/// RoPE on adjacent pairs (ggml's "normal" mode) of every head.
fn rope(v: &mut [f32], head_dim: usize, cos: &[f32], sin: &[f32]) {
    for head in v.chunks_exact_mut(head_dim) {
        for (pair, (&c, &s)) in head.chunks_exact_mut(2).zip(cos.iter().zip(sin)) {
            let (a, b) = (pair[0], pair[1]);
            pair[0] = a * c - b * s;
            pair[1] = a * s + b * c;
        }
    }
}

impl CpuSession<'_> {
    /// Longest sequence this session can hold (the model's context).
    pub fn context(&self) -> usize {
        self.model.config.context
    }

    /// Tokens fed so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// `out = W·x`; `x` is quantized into `act` unless `act` already
    /// holds it in the type `W` pairs with (`fresh` false: q/k/v share one
    /// quantization of the normed input, and so do gate/up).
    fn matvec(
        model: &CpuModel,
        w: &Weight,
        x: &[f32],
        fresh: bool,
        act: &mut QuantizedActivation,
        out: &mut [f32],
    ) -> Result<(), QuantError> {
        if fresh || act.ty() != w.act || act.len() != x.len() {
            act.quantize_into(w.act, x)?;
        }
        quant::matvec(&model.view(w)?, act, out)
    }

    /// Feeds one token and returns the logits for the next one (a token
    /// outside the vocabulary is clamped, as in the reference).
    ///
    /// # Errors
    /// [`GenerateError::Device`] if a weight's blocks do not fit its shape
    /// (not for a model loaded by [`CpuModel::from_bytes`]).
    pub fn step(&mut self, token: u32) -> Result<Vec<f32>, GenerateError> {
        self.forward(token)
            .map_err(|e| GenerateError::Device(format!("quantized CPU model: {e}")))
    }

    fn forward(&mut self, token: u32) -> Result<Vec<f32>, QuantError> {
        let m = self.model;
        let c = &m.config;
        let hd = c.dim / c.heads.max(1);
        let kv_dim = c.kv_heads * hd;
        let group = (c.heads / c.kv_heads.max(1)).max(1);
        let s = &mut self.s;
        let t = (token as usize).min(c.vocab.saturating_sub(1));
        m.view(&m.embed)?.dequantize_row(t, &mut s.x)?;
        for (i, &f) in m.inv_freq.iter().enumerate() {
            let (sn, cs) = (self.pos as f32 * f).sin_cos();
            s.sin[i] = sn;
            s.cos[i] = cs;
        }
        let scale = 1.0 / (hd as f32).sqrt();
        for (l, layer) in m.layers.iter().enumerate() {
            rmsnorm(&s.x, &layer.attn_norm, c.eps, &mut s.h);
            Self::matvec(m, &layer.wq, &s.h, true, &mut s.act, &mut s.q)?;
            Self::matvec(m, &layer.wk, &s.h, false, &mut s.act, &mut s.k)?;
            Self::matvec(m, &layer.wv, &s.h, false, &mut s.act, &mut s.v)?;
            rope(&mut s.q, hd, &s.cos, &s.sin);
            rope(&mut s.k, hd, &s.cos, &s.sin);
            self.k[l].extend_from_slice(&s.k);
            self.v[l].extend_from_slice(&s.v);
            let n = self.pos + 1;
            let (keys, values) = (&self.k[l], &self.v[l]);
            for head in 0..c.heads {
                let kvh = head / group;
                let qh = &s.q[head * hd..(head + 1) * hd];
                s.scores.clear();
                s.scores.extend((0..n).map(|p| {
                    let at = p * kv_dim + kvh * hd;
                    dot(qh, &keys[at..at + hd]) * scale
                }));
                let max = s.scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0.0;
                for v in &mut s.scores {
                    *v = (*v - max).exp();
                    sum += *v;
                }
                let out = &mut s.att[head * hd..(head + 1) * hd];
                out.fill(0.0);
                for (p, w) in s.scores.iter().enumerate() {
                    let at = p * kv_dim + kvh * hd;
                    let w = w / sum;
                    for (a, &vv) in out.iter_mut().zip(&values[at..at + hd]) {
                        *a += w * vv;
                    }
                }
            }
            Self::matvec(m, &layer.wo, &s.att, true, &mut s.act, &mut s.o)?;
            s.x.iter_mut().zip(&s.o).for_each(|(a, b)| *a += b);
            rmsnorm(&s.x, &layer.ffn_norm, c.eps, &mut s.h);
            Self::matvec(m, &layer.gate, &s.h, true, &mut s.act, &mut s.g)?;
            Self::matvec(m, &layer.up, &s.h, false, &mut s.act, &mut s.u)?;
            for (gi, ui) in s.g.iter_mut().zip(&s.u) {
                *gi = *gi / (1.0 + (-*gi).exp()) * ui;
            }
            Self::matvec(m, &layer.down, &s.g, true, &mut s.act, &mut s.o)?;
            s.x.iter_mut().zip(&s.o).for_each(|(a, b)| *a += b);
        }
        rmsnorm(&s.x, &m.norm, c.eps, &mut s.h);
        let mut logits = vec![0f32; c.vocab];
        let head = m.output.as_ref().unwrap_or(&m.embed);
        Self::matvec(m, head, &s.h, true, &mut s.act, &mut logits)?;
        self.pos += 1;
        Ok(logits)
    }
}

impl Decoder for CpuSession<'_> {
    fn context_len(&self) -> usize {
        self.context()
    }

    fn step(&mut self, token: u32) -> Result<Vec<f32>, GenerateError> {
        CpuSession::step(self, token)
    }
}
