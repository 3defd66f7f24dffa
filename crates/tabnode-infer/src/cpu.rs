//! The llama and qwen2 forward pass on the CPU with the weights kept as GGUF
//! blocks.
//!
//! Every matrix stays in the file's quantized format (Q4_0, Q4_1, Q5_0,
//! Q8_0, Q4_K, Q5_K, Q6_K) inside the model's byte buffer; a decode step
//! quantizes each activation vector once (Q8 blocks, the type the weight's
//! format pairs with) and runs integer dot products against the weight
//! blocks ([`crate::quant`]), as llama.cpp does. Norms, RoPE, attention over
//! the KV cache (the reference's own `attend`) and SiLU·mul run in f32.
//! One forward takes a batch of tokens: a prompt reads each weight row once,
//! a decode step is a batch of one. Memory is the file plus the KV cache
//! and a few vectors per forward.
//!
//! The kernels below [`crate::quant::matmul`] are chosen at run time (AVX2
//! natively, SIMD128 in the tab, scalar elsewhere) and give the same bits
//! everywhere; exp, sin/cos and pow come from `libm` (pure Rust) rather than
//! the platform's library; so the tab (wasm32) and native nodes compute the
//! same logits and generate the same tokens. Natively the rows of a matrix
//! are split over the cores.

use crate::generate::{Decoder, GenerateError};
use crate::gguf::{Gguf, GgufError, TensorInfo};
use crate::quant::{self, GgmlType, QTensor, QuantError, QuantizedActivation};
use crate::reference::{attend, rmsnorm, rotate, Config, KvHead, QkvBias};

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
    /// q, k and v biases (qwen2).
    bias: Option<QkvBias>,
    wo: Weight,
    ffn_norm: Vec<f32>,
    gate: Weight,
    up: Weight,
    down: Weight,
}

/// A llama or qwen2 model whose matrices stay quantized, with its bytes.
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
                    bias: QkvBias::from_gguf(&g, l, c.dim, kv_dim)?,
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
            .map(|i| libm::powf(config.rope_base, -2.0 * i as f32 / hd as f32))
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
        CpuSession {
            model: self,
            k: vec![Vec::new(); c.layers],
            v: vec![Vec::new(); c.layers],
            pos: 0,
        }
    }
}

/// A decoding session: the KV cache of one sequence.
pub struct CpuSession<'m> {
    model: &'m CpuModel,
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    pos: usize,
}

impl std::fmt::Debug for CpuSession<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuSession")
            .field("pos", &self.pos)
            .finish_non_exhaustive()
    }
}

/// RoPE on every head (adjacent pairs, or the two halves: see [`rotate`]).
fn rope(v: &mut [f32], head_dim: usize, cos: &[f32], sin: &[f32], halves: bool) {
    for head in v.chunks_exact_mut(head_dim) {
        rotate(head, cos, sin, halves);
    }
}

/// The activations of a batch of tokens, quantized once per activation
/// type the matrices reading them pair with (q/k/v share one input, gate/up
/// another).
struct Acts {
    tokens: usize,
    by_type: Vec<(GgmlType, Vec<QuantizedActivation>)>,
}

impl Acts {
    fn new(tokens: usize) -> Self {
        Self {
            tokens,
            by_type: Vec::new(),
        }
    }

    /// Quantizes `x` (token-major rows) for every matrix of `ws`.
    fn quantize(&mut self, x: &[f32], ws: &[&Weight]) -> Result<(), QuantError> {
        let cols = x.len() / self.tokens.max(1);
        self.by_type.clear();
        for w in ws {
            if self.by_type.iter().any(|(ty, _)| *ty == w.act) {
                continue;
            }
            let rows = x
                .chunks_exact(cols)
                .map(|row| QuantizedActivation::quantize(w.act, row))
                .collect::<Result<_, _>>()?;
            self.by_type.push((w.act, rows));
        }
        Ok(())
    }

    /// `out = W·x` for the activations last quantized for `w`.
    fn matmul(&self, model: &CpuModel, w: &Weight, out: &mut [f32]) -> Result<(), QuantError> {
        let rows = self
            .by_type
            .iter()
            .find(|(ty, _)| *ty == w.act)
            .map_or(&[][..], |(_, rows)| rows.as_slice());
        quant::matmul(&model.view(w)?, rows, out)
    }
}

/// Attention work (query values × cached positions) above which the heads
/// are spread over the cores natively: below it one core is done before the
/// pool would wake up (a decode step passes it from about 100 positions).
#[cfg(not(target_arch = "wasm32"))]
const PARALLEL_ATTENTION: usize = 64 << 10;

/// Runs `a` and `b` at once where there are threads (one wake-up of the
/// pool for both, instead of one per matrix), one after the other in wasm.
fn both<A: Send, B: Send>(a: impl FnOnce() -> A + Send, b: impl FnOnce() -> B + Send) -> (A, B) {
    #[cfg(not(target_arch = "wasm32"))]
    return rayon::join(a, b);
    #[cfg(target_arch = "wasm32")]
    return (a(), b());
}

/// Runs `f` on a thread of the pool natively, with the pool's other
/// threads kept awake for it: each polls for the forward's joins and
/// parallel loops (`rayon::yield_now`) instead of going to sleep between
/// them. A decode step has ~150 parallel regions a few tens of
/// microseconds apart; a thread that sleeps between them costs a futex
/// wake-up each time (measured ~55 context switches and ~15 % idle per
/// step before). The pollers end with `f`.
///
/// Cannot deadlock on its own pollers: they are pushed on this thread's
/// deque before any job of `f`, and other threads steal oldest first, so
/// by the time `f` waits for a stolen job every poller has been taken by
/// another thread; this thread never runs one.
fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    #[cfg(not(target_arch = "wasm32"))]
    {
        use std::sync::atomic::{AtomicBool, Ordering};
        let done = AtomicBool::new(false);
        rayon::scope(|s| {
            for _ in 1..rayon::current_num_threads() {
                s.spawn(|_| {
                    while !done.load(Ordering::Acquire) {
                        if rayon::yield_now() != Some(rayon::Yield::Executed) {
                            std::hint::spin_loop();
                        }
                    }
                });
            }
            let r = f();
            done.store(true, Ordering::Release);
            r
        })
    }
    #[cfg(target_arch = "wasm32")]
    return f();
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

    /// Feeds one token and returns the logits for the next one (a token
    /// outside the vocabulary is clamped, as in the reference).
    ///
    /// # Errors
    /// [`GenerateError::Device`] if a weight's blocks do not fit its shape
    /// (not for a model loaded by [`CpuModel::from_bytes`]).
    pub fn step(&mut self, token: u32) -> Result<Vec<f32>, GenerateError> {
        self.prefill(&[token])
    }

    /// Feeds `tokens` (a prompt) in one pass, each weight row read once
    /// for all of them, and returns the logits after the last; the same
    /// bits as feeding them one by one.
    ///
    /// # Errors
    /// As [`CpuSession::step`].
    pub fn prefill(&mut self, tokens: &[u32]) -> Result<Vec<f32>, GenerateError> {
        on_pool(|| self.forward(tokens))
            .map_err(|e| GenerateError::Device(format!("quantized CPU model: {e}")))
    }

    fn forward(&mut self, tokens: &[u32]) -> Result<Vec<f32>, QuantError> {
        let m = self.model;
        let c = &m.config;
        let t = tokens.len();
        if t == 0 {
            return Ok(Vec::new());
        }
        let (dim, hidden) = (c.dim, c.hidden);
        let hd = dim / c.heads.max(1);
        let kv_dim = c.kv_heads * hd;
        let group = (c.heads / c.kv_heads.max(1)).max(1);
        let mut x = vec![0f32; t * dim];
        let embed = m.view(&m.embed)?;
        for (row, &token) in x.chunks_exact_mut(dim).zip(tokens) {
            let id = (token as usize).min(c.vocab.saturating_sub(1));
            embed.dequantize_row(id, row)?;
        }
        // Rotation angles per token, shared by every layer and head.
        let half = m.inv_freq.len();
        let (mut cos, mut sin) = (vec![0f32; t * half], vec![0f32; t * half]);
        for i in 0..t {
            let pos = (self.pos + i) as f32;
            for (j, &f) in m.inv_freq.iter().enumerate() {
                (sin[i * half + j], cos[i * half + j]) = libm::sincosf(pos * f);
            }
        }
        let mut h = vec![0f32; t * dim];
        let mut q = vec![0f32; t * dim];
        let mut k = vec![0f32; t * kv_dim];
        let mut v = vec![0f32; t * kv_dim];
        let mut att = vec![0f32; t * dim];
        let mut o = vec![0f32; t * dim];
        let mut g = vec![0f32; t * hidden];
        let mut u = vec![0f32; t * hidden];
        let mut scores = Vec::new();
        let mut acts = Acts::new(t);
        let scale = 1.0 / (hd as f32).sqrt();
        for (l, layer) in m.layers.iter().enumerate() {
            for (x, h) in x.chunks_exact(dim).zip(h.chunks_exact_mut(dim)) {
                rmsnorm(x, &layer.attn_norm, c.eps, h);
            }
            acts.quantize(&h, &[&layer.wq, &layer.wk, &layer.wv])?;
            let (rq, (rk, rv)) = both(
                || acts.matmul(m, &layer.wq, &mut q),
                || {
                    both(
                        || acts.matmul(m, &layer.wk, &mut k),
                        || acts.matmul(m, &layer.wv, &mut v),
                    )
                },
            );
            rq.and(rk).and(rv)?;
            if let Some(b) = &layer.bias {
                b.add(&mut q, &mut k, &mut v);
            }
            let halves = c.arch.rope_halves();
            for i in 0..t {
                let (cs, sn) = (
                    &cos[i * half..(i + 1) * half],
                    &sin[i * half..(i + 1) * half],
                );
                rope(&mut q[i * dim..(i + 1) * dim], hd, cs, sn, halves);
                rope(&mut k[i * kv_dim..(i + 1) * kv_dim], hd, cs, sn, halves);
            }
            self.k[l].extend_from_slice(&k);
            self.v[l].extend_from_slice(&v);
            let (keys, values) = (&self.k[l], &self.v[l]);
            // One (token, head) pair per `hd` values of `q` and `att`.
            let pair = |idx: usize, out: &mut [f32], scores: &mut Vec<f32>| {
                let (i, head) = (idx / c.heads, idx % c.heads);
                // Causal: token i sees the cache up to its own position.
                let n = self.pos + i + 1;
                let cache = KvHead {
                    keys,
                    values,
                    stride: kv_dim,
                    at: (head / group) * hd,
                };
                attend(&q[idx * hd..(idx + 1) * hd], &cache, n, scale, scores, out);
            };
            #[cfg(not(target_arch = "wasm32"))]
            let parallel = t * c.heads * (self.pos + t) * hd >= PARALLEL_ATTENTION;
            #[cfg(target_arch = "wasm32")]
            let parallel = false;
            if parallel {
                #[cfg(not(target_arch = "wasm32"))]
                {
                    use rayon::prelude::*;
                    att.par_chunks_mut(hd)
                        .enumerate()
                        .for_each_init(Vec::new, |scores, (idx, out)| pair(idx, out, scores));
                }
            } else {
                for (idx, out) in att.chunks_exact_mut(hd).enumerate() {
                    pair(idx, out, &mut scores);
                }
            }
            acts.quantize(&att, &[&layer.wo])?;
            acts.matmul(m, &layer.wo, &mut o)?;
            x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
            for (x, h) in x.chunks_exact(dim).zip(h.chunks_exact_mut(dim)) {
                rmsnorm(x, &layer.ffn_norm, c.eps, h);
            }
            acts.quantize(&h, &[&layer.gate, &layer.up])?;
            let (rg, ru) = both(
                || acts.matmul(m, &layer.gate, &mut g),
                || acts.matmul(m, &layer.up, &mut u),
            );
            rg.and(ru)?;
            (quant::simd::best().f32_silu_mul)(&mut g, &u);
            acts.quantize(&g, &[&layer.down])?;
            acts.matmul(m, &layer.down, &mut o)?;
            x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
        }
        // Logits for the last token only.
        let last = &x[(t - 1) * dim..];
        let mut normed = vec![0f32; dim];
        rmsnorm(last, &m.norm, c.eps, &mut normed);
        let mut logits = vec![0f32; c.vocab];
        let head = m.output.as_ref().unwrap_or(&m.embed);
        let mut last_act = Acts::new(1);
        last_act.quantize(&normed, &[head])?;
        last_act.matmul(m, head, &mut logits)?;
        self.pos += t;
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

    fn prefill(&mut self, tokens: &[u32]) -> Result<Vec<f32>, GenerateError> {
        CpuSession::prefill(self, tokens)
    }
}
