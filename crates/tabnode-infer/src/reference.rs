//! A plain-Rust, f32, single-threaded forward pass of the llama, qwen2 and
//! gemma3 architectures, straight from the GGUF tensors.
//!
//! This is the engine's oracle, not its fast path (that will be the burn
//! model): it pins down the layout of the GGUF tensors (ggml's `[in, out]`
//! weights, tied embeddings, and the rows of `attn_q`/`attn_k` permuted by
//! llama.cpp's converter so that RoPE rotates *adjacent* pairs; qwen2's are
//! not, and its RoPE rotates the two halves of a head) against llama.cpp's
//! own logits, so the fast path can be tested against it.

use crate::gguf::{Gguf, GgufError};

/// The transformer families the engine runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Arch {
    /// llama (SmolLM2): RoPE on adjacent pairs (llama.cpp's converter
    /// permutes the rows of `attn_q`/`attn_k` for it), no biases.
    Llama,
    /// qwen2 (Qwen2.5): biases on q, k and v, RoPE on the two halves of
    /// each head (ggml's NEOX mode), a separate output matrix.
    Qwen2,
    /// gemma3 (Gemma 3), as llama.cpp runs it: the embedding scaled by
    /// √width, heads wider than width / heads (`attention.key_length`),
    /// RMSNorm on each q and k head, RMSNorm on the attention's and the
    /// FFN's outputs before they join the residual, GELU (tanh) · up,
    /// RoPE on halves; five layers in six attend to the last
    /// `attention.sliding_window` positions only with RoPE base 10,000,
    /// every sixth to all of them with the file's base. Norm weights in
    /// the GGUF already hold Gemma's `1 + w`.
    Gemma3,
}

impl Arch {
    /// The GGUF `general.architecture` value and metadata key prefix.
    pub fn name(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Qwen2 => "qwen2",
            Self::Gemma3 => "gemma3",
        }
    }

    /// Whether RoPE rotates element `i` with `i + head_dim/2` (NEOX)
    /// rather than `2i` with `2i + 1`.
    pub fn rope_halves(self) -> bool {
        matches!(self, Self::Qwen2 | Self::Gemma3)
    }

    /// The FFN's activation is GELU (tanh form) rather than SiLU.
    pub fn gelu(self) -> bool {
        matches!(self, Self::Gemma3)
    }

    /// Whether the quantized engine takes each activation vector in two
    /// 8-bit passes (the vector, then what its first quantization left
    /// out) rather than one. Gemma's activations carry outliers (norm
    /// weights up to 62, FFN products with heavy tails) that one 8-bit
    /// scale per block rounds coarsely: one pass moves its logits by 1.1 on
    /// average from the f32 model's (llama.cpp's too), enough to swap near
    /// ties; the second pass leaves about 8 bits' less error.
    pub fn residual_activations(self) -> bool {
        matches!(self, Self::Gemma3)
    }
}

/// Layers that attend to a window of the latest positions (gemma3).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Sliding {
    /// Positions such a layer sees, its own included.
    pub window: usize,
    /// Every `pattern`-th layer (the last of each group) sees everything.
    pub pattern: usize,
    /// RoPE base of the windowed layers.
    pub rope_base: f32,
}

/// Model hyper-parameters from the GGUF metadata.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Config {
    /// The family.
    pub arch: Arch,
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
    /// Values per attention head (`width / heads` unless the file says).
    pub head_dim: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// Context length the model was trained for.
    pub context: usize,
    /// RoPE base.
    pub rope_base: f32,
    /// RMSNorm epsilon.
    pub eps: f32,
    /// Windowed layers (gemma3).
    pub sliding: Option<Sliding>,
}

impl Config {
    /// Reads the `<arch>.*` metadata.
    ///
    /// # Errors
    /// Missing keys, or an architecture the engine does not run.
    pub fn from_gguf(g: &Gguf<'_>) -> Result<Self, GgufError> {
        let name = g
            .get("general.architecture")
            .and_then(|v| v.as_str())
            .unwrap_or("");
        let arch = match name {
            "llama" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            "gemma3" => Arch::Gemma3,
            other => {
                return Err(GgufError::Metadata {
                    key: "general.architecture".into(),
                    reason: format!("{other:?} is not supported (llama, qwen2, gemma3)"),
                })
            }
        };
        let key = |k: &str| format!("{name}.{k}");
        let u = |k: &str| g.get_u64(&key(k)).map(|v| v as usize);
        let f = |k: &str, default: f64| {
            g.get(&key(k)).and_then(|v| v.as_f64()).unwrap_or(default) as f32
        };
        let vocab = g
            .get("tokenizer.ggml.tokens")
            .and_then(|v| v.as_array())
            .map_or(0, <[_]>::len);
        let dim = u("embedding_length")?;
        let heads = u("attention.head_count")?;
        // gemma3's windowed layers: the pattern and base llama.cpp sets for
        // the architecture (the file holds only the window).
        let sliding = match arch {
            Arch::Gemma3 => Some(Sliding {
                window: u("attention.sliding_window")?,
                pattern: 6,
                rope_base: 10_000.0,
            }),
            _ => None,
        };
        let config = Self {
            arch,
            layers: u("block_count")?,
            dim,
            hidden: u("feed_forward_length")?,
            heads,
            kv_heads: u("attention.head_count_kv")?,
            head_dim: match g.get(&key("attention.key_length")) {
                Some(_) => u("attention.key_length")?,
                None => dim / heads.max(1),
            },
            vocab,
            context: u("context_length")?,
            rope_base: f("rope.freq_base", 10_000.0),
            eps: f("attention.layer_norm_rms_epsilon", 1e-5),
            sliding,
        };
        if g.get(&key("attention.value_length")).is_some()
            && u("attention.value_length")? != config.head_dim
        {
            return Err(GgufError::Metadata {
                key: key("attention.value_length"),
                reason: "value heads narrower or wider than key heads are not supported".into(),
            });
        }
        // Shapes every forward divides by or groups with.
        let fits = config.heads > 0
            && config.kv_heads > 0
            && config.heads.is_multiple_of(config.kv_heads)
            && config.head_dim > 0
            && config.head_dim.is_multiple_of(2)
            && config.sliding.as_ref().is_none_or(|s| s.window > 0);
        if !fits {
            return Err(GgufError::Metadata {
                key: key("attention.head_count"),
                reason: format!(
                    "{} heads, {} key/value heads and width {} do not fit together",
                    config.heads, config.kv_heads, config.dim
                ),
            });
        }
        Ok(config)
    }

    /// Width of all query heads together.
    pub fn q_dim(&self) -> usize {
        self.heads * self.head_dim
    }

    /// Width of all key (or value) heads together.
    pub fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim
    }

    /// The positions before its own that layer `l` attends to at most
    /// (`None`: all of them).
    pub fn window(&self, l: usize) -> Option<usize> {
        self.sliding
            .as_ref()
            .filter(|s| s.pattern == 0 || l % s.pattern < s.pattern - 1)
            .map(|s| s.window)
    }

    /// Layer `l`'s RoPE base.
    pub fn rope_base_of(&self, l: usize) -> f32 {
        match (self.window(l), &self.sliding) {
            (Some(_), Some(s)) => s.rope_base,
            _ => self.rope_base,
        }
    }

    /// What the embedding row is multiplied by (gemma3: √width).
    pub fn embed_scale(&self) -> Option<f32> {
        matches!(self.arch, Arch::Gemma3).then(|| (self.dim as f32).sqrt())
    }
}

/// `g = GELU(g)·u` with GELU's tanh form, as ggml computes it
/// (`0.5·x·(1 + tanh(√(2/π)·x·(1 + 0.044715·x²)))`), written as
/// `x·e/(1 + e)` with `e = exp(2·√(2/π)·x·(1 + 0.044715·x²))` and the
/// crate's `exp` kernel (the same bits on every CPU).
pub(crate) fn gelu_mul(g: &mut [f32], u: &[f32]) {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    const A: f32 = 0.044_715;
    let kernels = crate::quant::simd::best();
    let mut buf = [0f32; 256];
    for (g, u) in g.chunks_mut(buf.len()).zip(u.chunks(buf.len())) {
        let e = &mut buf[..g.len()];
        for (e, &x) in e.iter_mut().zip(g.iter()) {
            *e = 2.0 * SQRT_2_OVER_PI * x * (1.0 + A * x * x);
        }
        (kernels.f32_exp)(e, 0.0);
        for ((g, &e), &u) in g.iter_mut().zip(e.iter()).zip(u) {
            *g = *g * (e / (1.0 + e)) * u;
        }
    }
}

struct Layer {
    attn_norm: Vec<f32>,
    wq: Vec<f32>,
    wk: Vec<f32>,
    wv: Vec<f32>,
    /// q, k and v biases (qwen2).
    bias: Option<QkvBias>,
    wo: Vec<f32>,
    ffn_norm: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    down: Vec<f32>,
    /// gemma3's extra norms.
    extra: Option<ExtraNorms>,
}

/// gemma3's norms beyond llama's: on each q and k head, and on the
/// attention's and the FFN's outputs.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct ExtraNorms {
    pub q: Vec<f32>,
    pub k: Vec<f32>,
    pub attn_out: Vec<f32>,
    pub ffn_out: Vec<f32>,
}

impl ExtraNorms {
    /// Layer `l`'s extra norms, which gemma3 has and the others do not.
    ///
    /// # Errors
    /// A missing one, or one of the wrong length.
    pub(crate) fn from_gguf(g: &Gguf<'_>, c: &Config, l: usize) -> Result<Option<Self>, GgufError> {
        if c.arch != Arch::Gemma3 {
            return Ok(None);
        }
        let read = |t: &str, len: usize| {
            let name = format!("blk.{l}.{t}.weight");
            let w = g.dequantize(&name)?;
            if w.len() == len {
                Ok(w)
            } else {
                Err(GgufError::BadTensor {
                    name,
                    reason: format!("{} values, expected {len}", w.len()),
                })
            }
        };
        Ok(Some(Self {
            q: read("attn_q_norm", c.head_dim)?,
            k: read("attn_k_norm", c.head_dim)?,
            attn_out: read("post_attention_norm", c.dim)?,
            ffn_out: read("post_ffw_norm", c.dim)?,
        }))
    }

    /// RMSNorm on every head of `q` and of `k` (rows of `head_dim`).
    pub(crate) fn heads(&self, q: &mut [f32], k: &mut [f32], eps: f32) {
        for (x, w) in [(q, &self.q), (k, &self.k)] {
            for head in x.chunks_exact_mut(w.len()) {
                rmsnorm_in_place(head, w, eps);
            }
        }
    }
}

/// [`rmsnorm`] of `x` into itself.
pub(crate) fn rmsnorm_in_place(x: &mut [f32], w: &[f32], eps: f32) {
    let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let s = 1.0 / (ms + eps).sqrt();
    for (v, &g) in x.iter_mut().zip(w) {
        *v = *v * s * g;
    }
}

/// The biases added to q, k and v (qwen2).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct QkvBias {
    pub q: Vec<f32>,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
}

impl QkvBias {
    /// Layer `l`'s biases: all three or none.
    ///
    /// # Errors
    /// Some but not all of them, or one of the wrong length.
    pub(crate) fn from_gguf(
        g: &Gguf<'_>,
        l: usize,
        dim: usize,
        kv_dim: usize,
    ) -> Result<Option<Self>, GgufError> {
        let names = ["attn_q", "attn_k", "attn_v"].map(|t| format!("blk.{l}.{t}.bias"));
        let present = names.iter().filter(|n| g.tensor(n).is_ok()).count();
        if present == 0 {
            return Ok(None);
        }
        let [q, k, v] = names;
        let read = |name: &str, len: usize| {
            let b = g.dequantize(name)?;
            if b.len() == len {
                Ok(b)
            } else {
                Err(GgufError::BadTensor {
                    name: name.to_string(),
                    reason: format!("{} values, expected {len}", b.len()),
                })
            }
        };
        Ok(Some(Self {
            q: read(&q, dim)?,
            k: read(&k, kv_dim)?,
            v: read(&v, kv_dim)?,
        }))
    }

    /// Adds the biases to each token's q, k and v rows.
    pub(crate) fn add(&self, q: &mut [f32], k: &mut [f32], v: &mut [f32]) {
        for (x, b) in [(q, &self.q), (k, &self.k), (v, &self.v)] {
            for row in x.chunks_exact_mut(b.len()) {
                row.iter_mut().zip(b).for_each(|(a, b)| *a += b);
            }
        }
    }
}

/// Rotates one head's `(a, b)` pairs by the angles whose cosines and sines
/// are `cos` and `sin`: adjacent pairs `(2i, 2i+1)` (ggml's normal mode),
/// or with `halves` the pairs `(i, i + head_dim/2)` (NEOX mode).
pub(crate) fn rotate(head: &mut [f32], cos: &[f32], sin: &[f32], halves: bool) {
    let half = head.len() / 2;
    for (i, (&c, &s)) in cos.iter().zip(sin).enumerate().take(half) {
        let (ia, ib) = if halves {
            (i, i + half)
        } else {
            (2 * i, 2 * i + 1)
        };
        let (a, b) = (head[ia], head[ib]);
        head[ia] = a * c - b * s;
        head[ib] = a * s + b * c;
    }
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
    let n = x.len().min(out.len());
    out[..n].copy_from_slice(&x[..n]);
    rmsnorm_in_place(&mut out[..n], w, eps);
}

/// RoPE on every head (the layout `halves` says, see [`rotate`]).
fn rope(v: &mut [f32], head_dim: usize, pos: usize, base: f32, halves: bool) {
    let (sin, cos): (Vec<f32>, Vec<f32>) = (0..head_dim / 2)
        .map(|i| (pos as f32 * base.powf(-2.0 * i as f32 / head_dim as f32)).sin_cos())
        .unzip();
    for head in v.chunks_mut(head_dim) {
        rotate(head, &cos, &sin, halves);
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
        let kv_dim = config.kv_dim();
        let t = |name: String| g.dequantize(&name);
        let mut layers = Vec::with_capacity(config.layers);
        for l in 0..config.layers {
            let p = |s: &str| format!("blk.{l}.{s}.weight");
            layers.push(Layer {
                attn_norm: t(p("attn_norm"))?,
                wq: t(p("attn_q"))?,
                wk: t(p("attn_k"))?,
                wv: t(p("attn_v"))?,
                bias: QkvBias::from_gguf(g, l, config.q_dim(), kv_dim)?,
                wo: t(p("attn_output"))?,
                ffn_norm: t(p("ffn_norm"))?,
                gate: t(p("ffn_gate"))?,
                up: t(p("ffn_up"))?,
                down: t(p("ffn_down"))?,
                extra: ExtraNorms::from_gguf(g, &config, l)?,
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
        let (dim, hd) = (c.dim, c.head_dim);
        let kv_dim = c.kv_dim();
        let group = c.heads / c.kv_heads;
        let t = (token as usize).min(c.vocab.saturating_sub(1));
        let mut x = m.embed[t * dim..(t + 1) * dim].to_vec();
        if let Some(s) = c.embed_scale() {
            x.iter_mut().for_each(|v| *v *= s);
        }
        let mut h = vec![0f32; dim];
        let mut q = vec![0f32; c.q_dim()];
        let mut k = vec![0f32; kv_dim];
        let mut v = vec![0f32; kv_dim];
        let mut att = vec![0f32; c.q_dim()];
        let mut o = vec![0f32; dim];
        let mut g = vec![0f32; c.hidden];
        let mut u = vec![0f32; c.hidden];
        let scale = 1.0 / (hd as f32).sqrt();
        for (l, layer) in m.layers.iter().enumerate() {
            rmsnorm(&x, &layer.attn_norm, c.eps, &mut h);
            matvec(&layer.wq, &h, &mut q);
            matvec(&layer.wk, &h, &mut k);
            matvec(&layer.wv, &h, &mut v);
            if let Some(b) = &layer.bias {
                b.add(&mut q, &mut k, &mut v);
            }
            if let Some(e) = &layer.extra {
                e.heads(&mut q, &mut k, c.eps);
            }
            let halves = c.arch.rope_halves();
            rope(&mut q, hd, self.pos, c.rope_base_of(l), halves);
            rope(&mut k, hd, self.pos, c.rope_base_of(l), halves);
            self.k[l].extend_from_slice(&k);
            self.v[l].extend_from_slice(&v);
            // The positions this layer sees: all, or the window's.
            let n = self.pos + 1;
            let from = c.window(l).map_or(0, |w| n.saturating_sub(w));
            let mut scores = Vec::new();
            for head in 0..c.heads {
                let (qh, out) = (
                    &q[head * hd..(head + 1) * hd],
                    &mut att[head * hd..(head + 1) * hd],
                );
                let cache = KvHead {
                    keys: &self.k[l][from * kv_dim..],
                    values: &self.v[l][from * kv_dim..],
                    stride: kv_dim,
                    at: (head / group) * hd,
                };
                attend(qh, &cache, n - from, scale, &mut scores, out);
            }
            matvec(&layer.wo, &att, &mut o);
            if let Some(e) = &layer.extra {
                rmsnorm_in_place(&mut o, &e.attn_out, c.eps);
            }
            x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
            rmsnorm(&x, &layer.ffn_norm, c.eps, &mut h);
            matvec(&layer.gate, &h, &mut g);
            matvec(&layer.up, &h, &mut u);
            if c.arch.gelu() {
                gelu_mul(&mut g, &u);
            } else {
                for (gi, ui) in g.iter_mut().zip(&u) {
                    *gi = *gi / (1.0 + (-*gi).exp()) * ui;
                }
            }
            matvec(&layer.down, &g, &mut o);
            if let Some(e) = &layer.extra {
                rmsnorm_in_place(&mut o, &e.ffn_out, c.eps);
            }
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
