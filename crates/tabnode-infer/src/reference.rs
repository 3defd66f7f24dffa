//! A plain-Rust, f32, single-threaded forward pass of the llama architecture,
//! straight from the GGUF tensors.
//!
//! This is the engine's oracle, not its fast path (that will be the burn
//! model): it pins down the layout of the GGUF tensors (ggml's `[in, out]`
//! weights, tied embeddings, and the rows of `attn_q`/`attn_k` permuted by
//! llama.cpp's converter so that RoPE rotates *adjacent* pairs) against
//! llama.cpp's own logits, so the fast path can be tested against it.

use crate::gguf::{Gguf, GgufError};

/// Model hyper-parameters from the GGUF metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Transformer blocks.
    pub layers: usize,
    /// Model width.
    pub dim: usize,
    /// FFN width.
    pub hidden: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// Context length the model was trained for.
    pub context: usize,
    /// RoPE base.
    pub rope_base: f32,
    /// RMSNorm epsilon.
    pub eps: f32,
}

impl Config {
    /// Reads the `llama.*` metadata.
    ///
    /// # Errors
    /// Missing keys, or an architecture other than llama.
    pub fn from_gguf(g: &Gguf<'_>) -> Result<Self, GgufError> {
        let arch = g
            .get("general.architecture")
            .and_then(|v| v.as_str())
            .unwrap_or("");
        if arch != "llama" {
            return Err(GgufError::Metadata {
                key: "general.architecture".into(),
                reason: format!("{arch:?} is not supported (only llama)"),
            });
        }
        let u = |k: &str| g.get_u64(k).map(|v| v as usize);
        let f = |k: &str, default: f64| g.get(k).and_then(|v| v.as_f64()).unwrap_or(default) as f32;
        let vocab = g
            .get("tokenizer.ggml.tokens")
            .and_then(|v| v.as_array())
            .map_or(0, <[_]>::len);
        Ok(Self {
            layers: u("llama.block_count")?,
            dim: u("llama.embedding_length")?,
            hidden: u("llama.feed_forward_length")?,
            heads: u("llama.attention.head_count")?,
            kv_heads: u("llama.attention.head_count_kv")?,
            vocab,
            context: u("llama.context_length")?,
            rope_base: f("llama.rope.freq_base", 10_000.0),
            eps: f("llama.attention.layer_norm_rms_epsilon", 1e-5),
        })
    }

    fn head_dim(&self) -> usize {
        self.dim / self.heads
    }
}

struct Layer {
    attn_norm: Vec<f32>,
    wq: Vec<f32>,
    wk: Vec<f32>,
    wv: Vec<f32>,
    wo: Vec<f32>,
    ffn_norm: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    down: Vec<f32>,
}

/// All weights dequantized to f32.
pub struct ReferenceModel {
    /// Hyper-parameters.
    pub config: Config,
    embed: Vec<f32>,
    output: Option<Vec<f32>>,
    norm: Vec<f32>,
    layers: Vec<Layer>,
}

impl std::fmt::Debug for ReferenceModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReferenceModel")
            .field("config", &self.config)
            .finish()
    }
}

/// `a·b` in eight lanes (the order every f32 dot here uses, with the
/// fastest kernels: the same bits everywhere).
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut out = 0.0;
    (crate::quant::simd::best().f32_dots)(a, b, 0, std::slice::from_mut(&mut out));
    out
}

/// `out[j] = W[j]·x` for a ggml `[in, out]` weight (row `j` contiguous).
fn matvec(w: &[f32], x: &[f32], out: &mut [f32]) {
    let n = x.len();
    for (j, o) in out.iter_mut().enumerate() {
        *o = dot(&w[j * n..(j + 1) * n], x);
    }
}

/// `out = x / rms(x) · w`.
pub(crate) fn rmsnorm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let s = 1.0 / (ms + eps).sqrt();
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(w) {
        *o = v * s * g;
    }
}

/// RoPE on adjacent pairs (ggml's "normal" mode) of every head.
fn rope(v: &mut [f32], head_dim: usize, pos: usize, base: f32) {
    for head in v.chunks_mut(head_dim) {
        for i in 0..head_dim / 2 {
            let theta = pos as f32 * base.powf(-2.0 * i as f32 / head_dim as f32);
            let (s, c) = theta.sin_cos();
            let (a, b) = (head[2 * i], head[2 * i + 1]);
            head[2 * i] = a * c - b * s;
            head[2 * i + 1] = a * s + b * c;
        }
    }
}

/// One key/value head in a layer's cache: position `p`'s vector starts at
/// `p·stride + at` in `keys` and `values`.
pub(crate) struct KvHead<'a> {
    pub keys: &'a [f32],
    pub values: &'a [f32],
    pub stride: usize,
    pub at: usize,
}

/// Causal attention of one query head `q` over the first `n` positions of
/// `cache`: softmax of the scaled scores, then the weighted sum of values
/// into `out` (`scores` is scratch).
pub(crate) fn attend(
    q: &[f32],
    cache: &KvHead<'_>,
    n: usize,
    scale: f32,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    let kernels = crate::quant::simd::best();
    let keys = cache.keys.get(cache.at..).unwrap_or(&[]);
    let values = cache.values.get(cache.at..).unwrap_or(&[]);
    scores.clear();
    scores.resize(n, 0.0);
    (kernels.f32_dots)(q, keys, cache.stride, scores);
    for s in scores.iter_mut() {
        *s *= scale;
    }
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    (kernels.f32_exp)(scores, max);
    let mut sum = 0.0;
    for s in scores.iter() {
        sum += *s;
    }
    for s in scores.iter_mut() {
        *s /= sum;
    }
    out.fill(0.0);
    (kernels.f32_weighted_sum)(scores, values, cache.stride, out);
}

impl ReferenceModel {
    /// Dequantizes every weight.
    ///
    /// # Errors
    /// Missing tensors or metadata, unsupported tensor types.
    pub fn from_gguf(g: &Gguf<'_>) -> Result<Self, GgufError> {
        let config = Config::from_gguf(g)?;
        let t = |name: String| g.dequantize(&name);
        let mut layers = Vec::with_capacity(config.layers);
        for l in 0..config.layers {
            let p = |s: &str| format!("blk.{l}.{s}.weight");
            layers.push(Layer {
                attn_norm: t(p("attn_norm"))?,
                wq: t(p("attn_q"))?,
                wk: t(p("attn_k"))?,
                wv: t(p("attn_v"))?,
                wo: t(p("attn_output"))?,
                ffn_norm: t(p("ffn_norm"))?,
                gate: t(p("ffn_gate"))?,
                up: t(p("ffn_up"))?,
                down: t(p("ffn_down"))?,
            });
        }
        let output = match g.tensor("output.weight") {
            Ok(_) => Some(t("output.weight".into())?),
            Err(_) => None,
        };
        Ok(Self {
            embed: t("token_embd.weight".into())?,
            output,
            norm: t("output_norm.weight".into())?,
            layers,
            config,
        })
    }

    /// A fresh decoding session (empty KV cache).
    pub fn session(&self) -> Session<'_> {
        Session {
            model: self,
            k: vec![Vec::new(); self.config.layers],
            v: vec![Vec::new(); self.config.layers],
            pos: 0,
        }
    }
}

/// A decoding session: the KV cache of one sequence.
pub struct Session<'m> {
    model: &'m ReferenceModel,
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    pos: usize,
}

impl Session<'_> {
    /// Longest sequence this session can hold (the model's context).
    pub fn context(&self) -> usize {
        self.model.config.context
    }

    /// Feeds one token and returns the logits for the next one.
    pub fn step(&mut self, token: u32) -> Vec<f32> {
        let m = self.model;
        let c = &m.config;
        let (dim, hd) = (c.dim, c.head_dim());
        let kv_dim = c.kv_heads * hd;
        let group = c.heads / c.kv_heads;
        let t = (token as usize).min(c.vocab.saturating_sub(1));
        let mut x = m.embed[t * dim..(t + 1) * dim].to_vec();
        let mut h = vec![0f32; dim];
        let mut q = vec![0f32; dim];
        let mut k = vec![0f32; kv_dim];
        let mut v = vec![0f32; kv_dim];
        let mut att = vec![0f32; dim];
        let mut o = vec![0f32; dim];
        let mut g = vec![0f32; c.hidden];
        let mut u = vec![0f32; c.hidden];
        let scale = 1.0 / (hd as f32).sqrt();
        for (l, layer) in m.layers.iter().enumerate() {
            rmsnorm(&x, &layer.attn_norm, c.eps, &mut h);
            matvec(&layer.wq, &h, &mut q);
            matvec(&layer.wk, &h, &mut k);
            matvec(&layer.wv, &h, &mut v);
            rope(&mut q, hd, self.pos, c.rope_base);
            rope(&mut k, hd, self.pos, c.rope_base);
            self.k[l].extend_from_slice(&k);
            self.v[l].extend_from_slice(&v);
            let n = self.pos + 1;
            let mut scores = Vec::new();
            for head in 0..c.heads {
                let (qh, out) = (
                    &q[head * hd..(head + 1) * hd],
                    &mut att[head * hd..(head + 1) * hd],
                );
                let cache = KvHead {
                    keys: &self.k[l],
                    values: &self.v[l],
                    stride: kv_dim,
                    at: (head / group) * hd,
                };
                attend(qh, &cache, n, scale, &mut scores, out);
            }
            matvec(&layer.wo, &att, &mut o);
            x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
            rmsnorm(&x, &layer.ffn_norm, c.eps, &mut h);
            matvec(&layer.gate, &h, &mut g);
            matvec(&layer.up, &h, &mut u);
            for (gi, ui) in g.iter_mut().zip(&u) {
                *gi = *gi / (1.0 + (-*gi).exp()) * ui;
            }
            matvec(&layer.down, &g, &mut o);
            x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
        }
        rmsnorm(&x.clone(), &m.norm, c.eps, &mut x);
        let mut logits = vec![0f32; c.vocab];
        matvec(m.output.as_deref().unwrap_or(&m.embed), &x, &mut logits);
        self.pos += 1;
        logits
    }
}

/// Index of the largest value (first one on ties).
pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}
