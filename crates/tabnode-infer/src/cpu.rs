//! The llama, qwen2 and gemma3 forward pass on the CPU with the weights
//! kept as GGUF blocks.
//!
//! Every matrix stays in the file's quantized format (Q4_0, Q4_1, Q5_0,
//! Q8_0, Q4_K, Q5_K, Q6_K) inside the model's byte buffer; a decode step
//! quantizes each activation vector once (Q8 blocks, the type the weight's
//! format pairs with) and runs integer dot products against the weight
//! blocks ([`crate::quant`]), as llama.cpp does. Norms, RoPE, attention over
//! the KV cache (the reference's own `attend`) and SiLU·mul (GELU·mul)
//! run in f32.
//! One forward takes a batch of tokens: a prompt reads each weight row once,
//! a decode step is a batch of one. Memory is the file plus the KV cache
//! and a few vectors per forward.
//!
//! The kernels below [`crate::quant::matmul`] are chosen at run time (AVX2
//! natively, SIMD128 in the tab, scalar elsewhere) and give the same bits
//! everywhere; exp, sin/cos and pow come from `libm` (pure Rust) rather than
//! the platform's library; so the tab (wasm32) and native nodes compute the
//! same logits and generate the same tokens. Natively the rows of a matrix
//! are split over the cores; in a tab, over several workers, each holding
//! its rows ([`crate::shard`]).

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use web_time::Instant;

use crate::generate::{Decoder, GenerateError};
use crate::gguf::{Gguf, GgufError, TensorInfo};
use crate::quant::{self, GgmlType, QTensor, QuantError, QuantizedActivation};
use crate::reference::{
    attend, gelu_mul, rmsnorm, rmsnorm_in_place, rotate, Arch, Config, ExtraNorms, KvHead, QkvBias,
};
use crate::shard::{part, Command, Exchange, ExchangeError, CHUNK};

/// Why a forward of the quantized CPU model failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CpuError {
    /// Blocks that do not fit their shape (not for a model loaded by
    /// [`CpuModel::from_bytes`]).
    #[error(transparent)]
    Quant(#[from] QuantError),
    /// The shards of a split model ([`crate::shard`]).
    #[error(transparent)]
    Exchange(#[from] ExchangeError),
    /// A shard description that does not fit the model it describes.
    #[error("shard {index} of {count}: {what} does not fit the model")]
    Shard {
        /// The shard.
        index: usize,
        /// Shards in all.
        count: usize,
        /// The part that does not fit (`blk.3.ffn_up`, `norm`).
        what: String,
    },
}

/// Where a weight matrix lives in the model's bytes: rows `lo..lo + held`
/// of its `rows` (all of them unless the model is split).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Weight {
    ty: GgmlType,
    /// The activation type its kernel pairs with.
    act: GgmlType,
    rows: usize,
    cols: usize,
    lo: usize,
    held: usize,
    start: usize,
    len: usize,
}

impl Weight {
    fn row_bytes(&self) -> usize {
        self.cols / self.ty.block_size() * self.ty.block_bytes()
    }

    /// The same matrix held from row `r.start` to `r.end` (a part of what
    /// it holds now).
    fn part(&self, r: Range<usize>) -> Weight {
        let rb = self.row_bytes();
        Weight {
            lo: r.start,
            held: r.len(),
            start: self.start + r.start.saturating_sub(self.lo) * rb,
            len: r.len() * rb,
            ..self.clone()
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
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
    /// The norms gemma3 adds.
    extra: Option<ExtraNorms>,
}

impl Layer {
    fn weights_mut(&mut self) -> [&mut Weight; 7] {
        [
            &mut self.wq,
            &mut self.wk,
            &mut self.wv,
            &mut self.wo,
            &mut self.gate,
            &mut self.up,
            &mut self.down,
        ]
    }
}

/// A split model's link to its other shards.
struct Shards {
    ex: Box<dyn Exchange>,
    /// Ids of sessions (shard 0): the shards hold one KV cache, that of
    /// the session that ran last.
    next_session: AtomicU64,
    active: AtomicU64,
    /// Set when an exchange failed mid-forward: the shards are out of step.
    broken: AtomicBool,
}

impl Shards {
    fn new(ex: Box<dyn Exchange>) -> Self {
        Self {
            ex,
            next_session: AtomicU64::new(1),
            active: AtomicU64::new(0),
            broken: AtomicBool::new(false),
        }
    }
}

/// What a worker needs to be shard `index` of `count` of a model: its rows
/// of every matrix (the bytes travel separately, see
/// [`CpuModel::shard_spec`]) and the small tensors every shard holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShardSpec {
    index: usize,
    count: usize,
    config: Config,
    norm: Vec<f32>,
    layers: Vec<Layer>,
    head: Weight,
}

impl ShardSpec {
    /// The shard's place.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Shards in all.
    pub fn count(&self) -> usize {
        self.count
    }
}

/// A llama, qwen2 or gemma3 model whose matrices stay quantized, with its
/// bytes.
pub struct CpuModel {
    /// Hyper-parameters.
    pub config: Config,
    bytes: Vec<u8>,
    /// The token embeddings (shard 0 only when split).
    embed: Option<Weight>,
    /// The output matrix (the embeddings when tied); a split model holds
    /// its part of the rows.
    head: Weight,
    norm: Vec<f32>,
    layers: Vec<Layer>,
    /// `base^(−2i/head_dim)` for each rotated pair, with the file's base
    /// and (gemma3) the windowed layers' base.
    inv_freq: Vec<f32>,
    inv_freq_local: Vec<f32>,
    shards: Option<Shards>,
}

impl std::fmt::Debug for CpuModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuModel")
            .field("config", &self.config)
            .field("bytes", &self.bytes.len())
            .field("shards", &self.shard_count())
            .finish_non_exhaustive()
    }
}

fn capacity_for(c: &Config) -> usize {
    (CHUNK * (c.q_dim() + 2 * c.kv_dim()).max(2 * c.hidden)).max(c.vocab)
}

impl Drop for CpuModel {
    /// Shard 0 tells the others to stop serving (unless they are out of
    /// step anyway).
    fn drop(&mut self) {
        if let Some(sh) = &self.shards {
            if sh.ex.index() == 0 && !sh.broken.load(Ordering::Acquire) {
                let _ = sh
                    .ex
                    .all_gather(&Command::Stop.encode(), false, &mut |_, _| Ok(()));
            }
        }
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
        lo: 0,
        held: rows,
        start: (raw.as_ptr() as usize).wrapping_sub(base),
        len: raw.len(),
    })
}

fn inv_freq(c: &Config, base: f32) -> Vec<f32> {
    let hd = c.head_dim;
    (0..hd / 2)
        .map(|i| libm::powf(base, -2.0 * i as f32 / hd as f32))
        .collect()
}

/// [`inv_freq`] for the windowed layers (empty without).
fn inv_freq_local(c: &Config) -> Vec<f32> {
    c.sliding
        .as_ref()
        .map_or_else(Vec::new, |s| inv_freq(c, s.rope_base))
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
            let (q_dim, kv_dim) = (c.q_dim(), c.kv_dim());
            let w = |name: String, rows, cols| weight(&g, base, &name, rows, cols);
            let f = |name: String| g.dequantize(&name);
            let mut layers = Vec::with_capacity(c.layers);
            for l in 0..c.layers {
                let p = |s: &str| format!("blk.{l}.{s}.weight");
                layers.push(Layer {
                    attn_norm: f(p("attn_norm"))?,
                    wq: w(p("attn_q"), q_dim, c.dim)?,
                    wk: w(p("attn_k"), kv_dim, c.dim)?,
                    wv: w(p("attn_v"), kv_dim, c.dim)?,
                    bias: QkvBias::from_gguf(&g, l, q_dim, kv_dim)?,
                    wo: w(p("attn_output"), c.dim, q_dim)?,
                    ffn_norm: f(p("ffn_norm"))?,
                    gate: w(p("ffn_gate"), c.hidden, c.dim)?,
                    up: w(p("ffn_up"), c.hidden, c.dim)?,
                    down: w(p("ffn_down"), c.dim, c.hidden)?,
                    extra: ExtraNorms::from_gguf(&g, &c, l)?,
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
        Ok(Self {
            inv_freq: inv_freq(&config, config.rope_base),
            inv_freq_local: inv_freq_local(&config),
            config,
            bytes,
            head: output.unwrap_or_else(|| embed.clone()),
            embed: Some(embed),
            norm,
            layers,
            shards: None,
        })
    }

    /// Values one shard sends in a round at most (the exchange must hold
    /// as many): a chunk of embedded tokens, of q/k/v or gate/up rows, or
    /// the logits.
    pub fn exchange_capacity(&self) -> usize {
        capacity_for(&self.config)
    }

    /// Shard `index` of `count` (1 ≤ `index` < `count`) of this whole
    /// model: its description and its rows' bytes, to hand to the worker
    /// that will be [`CpuModel::from_shard`]. Shard 0 is this model after
    /// [`CpuModel::split`].
    ///
    /// # Errors
    /// [`CpuError::Shard`] for a model already split or a bad index.
    pub fn shard_spec(&self, index: usize, count: usize) -> Result<(ShardSpec, Vec<u8>), CpuError> {
        if self.shards.is_some() || index == 0 || index >= count {
            return Err(CpuError::Shard {
                index,
                count,
                what: "the model (split already, or no such shard)".into(),
            });
        }
        let mut blob = Vec::new();
        let mut take = |w: &Weight| -> Result<Weight, CpuError> {
            let p = w.part(part(w.rows, count, index));
            let bytes = self.bytes_of(&p)?;
            let start = blob.len();
            blob.extend_from_slice(bytes);
            Ok(Weight { start, ..p })
        };
        let mut layers = self.layers.clone();
        for layer in &mut layers {
            for w in layer.weights_mut() {
                *w = take(w)?;
            }
        }
        let head = take(&self.head)?;
        let spec = ShardSpec {
            index,
            count,
            config: self.config.clone(),
            norm: self.norm.clone(),
            layers,
            head,
        };
        Ok((spec, blob))
    }

    /// Makes this whole model shard 0 of `ex.count()`: it keeps its rows
    /// of every matrix (and the file's bytes) and runs the sessions; the
    /// other shards must be [`CpuModel::from_shard`] with
    /// [`CpuModel::shard_spec`]'s parts, serving.
    ///
    /// # Errors
    /// [`CpuError::Shard`] if the model is split already, `ex` is not
    /// shard 0 of at least two, or its capacity is below
    /// [`CpuModel::exchange_capacity`].
    pub fn split(&mut self, ex: Box<dyn Exchange>) -> Result<(), CpuError> {
        let (index, count) = (ex.index(), ex.count());
        if self.shards.is_some() || index != 0 || count < 2 {
            return Err(CpuError::Shard {
                index,
                count,
                what: "the model (split already, or not shard 0 of two or more)".into(),
            });
        }
        if ex.capacity() < self.exchange_capacity() {
            return Err(ExchangeError::TooLarge {
                len: self.exchange_capacity(),
                capacity: ex.capacity(),
            }
            .into());
        }
        for layer in &mut self.layers {
            for w in layer.weights_mut() {
                *w = w.part(part(w.rows, count, 0));
            }
        }
        self.head = self.head.part(part(self.head.rows, count, 0));
        self.shards = Some(Shards::new(ex));
        Ok(())
    }

    /// Shard `spec.index()` of a split model from [`CpuModel::shard_spec`]'s
    /// parts, every shape checked against the configuration; it runs
    /// forwards when shard 0 says, in [`CpuModel::serve`].
    ///
    /// # Errors
    /// [`CpuError::Shard`] for a part that does not fit the model, or a
    /// spec for another place than `ex`'s; [`CpuError::Quant`] for bytes
    /// that do not fit a matrix.
    pub fn from_shard(
        spec: ShardSpec,
        bytes: Vec<u8>,
        ex: Box<dyn Exchange>,
    ) -> Result<Self, CpuError> {
        let (index, count) = (spec.index, spec.count);
        let bad = |what: &str| CpuError::Shard {
            index,
            count,
            what: what.to_string(),
        };
        if ex.index() != index || ex.count() != count || index == 0 || index >= count {
            return Err(bad("the exchange's place"));
        }
        let c = &spec.config;
        if c.heads == 0
            || c.kv_heads == 0
            || c.head_dim == 0
            || !c.head_dim.is_multiple_of(2)
            || !c.heads.is_multiple_of(c.kv_heads)
        {
            return Err(bad("config"));
        }
        let (q_dim, kv_dim) = (c.q_dim(), c.kv_dim());
        let check = |w: &Weight, rows: usize, cols: usize, what: &str| -> Result<(), CpuError> {
            let p = part(rows, count, index);
            if w.rows != rows || w.cols != cols || w.lo != p.start || w.held != p.len() {
                return Err(bad(what));
            }
            let raw = bytes
                .get(w.start..w.start.saturating_add(w.len))
                .ok_or_else(|| bad(what))?;
            if w.ty.vec_dot_type() != Some(w.act) {
                return Err(bad(what));
            }
            QTensor::new(w.ty, w.held, w.cols, raw)?;
            Ok(())
        };
        if spec.layers.len() != c.layers || spec.norm.len() != c.dim {
            return Err(bad("layers"));
        }
        for (l, layer) in spec.layers.iter().enumerate() {
            let name = |t: &str| format!("blk.{l}.{t}");
            check(&layer.wq, q_dim, c.dim, &name("attn_q"))?;
            check(&layer.wk, kv_dim, c.dim, &name("attn_k"))?;
            check(&layer.wv, kv_dim, c.dim, &name("attn_v"))?;
            check(&layer.wo, c.dim, q_dim, &name("attn_output"))?;
            check(&layer.gate, c.hidden, c.dim, &name("ffn_gate"))?;
            check(&layer.up, c.hidden, c.dim, &name("ffn_up"))?;
            check(&layer.down, c.dim, c.hidden, &name("ffn_down"))?;
            if layer.attn_norm.len() != c.dim || layer.ffn_norm.len() != c.dim {
                return Err(bad(&name("norm")));
            }
            if let Some(b) = &layer.bias {
                if b.q.len() != q_dim || b.k.len() != kv_dim || b.v.len() != kv_dim {
                    return Err(bad(&name("bias")));
                }
            }
            let extra_fits = match &layer.extra {
                Some(e) => {
                    e.q.len() == c.head_dim
                        && e.k.len() == c.head_dim
                        && e.attn_out.len() == c.dim
                        && e.ffn_out.len() == c.dim
                }
                None => c.arch != Arch::Gemma3,
            };
            if !extra_fits {
                return Err(bad(&name("extra norms")));
            }
        }
        check(&spec.head, c.vocab, c.dim, "output")?;
        if ex.capacity() < capacity_for(c) {
            return Err(ExchangeError::TooLarge {
                len: capacity_for(c),
                capacity: ex.capacity(),
            }
            .into());
        }
        Ok(Self {
            inv_freq: inv_freq(c, c.rope_base),
            inv_freq_local: inv_freq_local(c),
            config: spec.config,
            bytes,
            embed: None,
            head: spec.head,
            norm: spec.norm,
            layers: spec.layers,
            shards: Some(Shards::new(ex)),
        })
    }

    /// Shards the model runs on (1 unless split).
    pub fn shard_count(&self) -> usize {
        self.shards.as_ref().map_or(1, |s| s.ex.count())
    }

    /// What a shard other than 0 does: runs the forwards shard 0 asks for
    /// until it says stop (or its model is dropped).
    ///
    /// # Errors
    /// A failing exchange, or commands this shard cannot follow.
    pub fn serve(&self) -> Result<(), CpuError> {
        let Some(sh) = &self.shards else {
            return Err(CpuError::Shard {
                index: 0,
                count: 1,
                what: "serve on a model that is not split".into(),
            });
        };
        let mut session = self.session();
        loop {
            let mut command = None;
            sh.ex.all_gather(&[], true, &mut |s, v| {
                if s == 0 {
                    command = Some(Command::decode(v)?);
                }
                Ok(())
            })?;
            match command {
                Some(Command::Stop) => return Ok(()),
                Some(Command::Forward { pos, tokens }) => {
                    if pos == 0 {
                        session = self.session();
                    } else if pos != session.pos {
                        return Err(ExchangeError::OutOfStep {
                            have: session.pos,
                            asked: pos,
                        }
                        .into());
                    }
                    session.forward(&[], tokens)?;
                }
                None => return Err(ExchangeError::Command(Vec::new()).into()),
            }
        }
    }

    /// `outs[i] = ws[i]·x` for the tokens of `acts` (token-major, `t ×
    /// rows`). Whole: on the pool. Split: this shard's rows of each matrix,
    /// and the others' through the exchange, in one round.
    fn project(
        &self,
        acts: &Acts,
        ws: &[&Weight],
        outs: &mut [&mut [f32]],
    ) -> Result<(), CpuError> {
        let Some(sh) = &self.shards else {
            return match (ws, &mut *outs) {
                ([a], [oa]) => acts.matmul(self, a, oa),
                ([a, b], [oa, ob]) => {
                    let (ra, rb) = both(|| acts.matmul(self, a, oa), || acts.matmul(self, b, ob));
                    ra.and(rb)
                }
                ([a, b, c], [oa, ob, oc]) => {
                    let (ra, (rb, rc)) = both(
                        || acts.matmul(self, a, oa),
                        || both(|| acts.matmul(self, b, ob), || acts.matmul(self, c, oc)),
                    );
                    ra.and(rb).and(rc)
                }
                _ => Err(QuantError::OutputLength {
                    expected: ws.len(),
                    actual: outs.len(),
                }),
            }
            .map_err(CpuError::from);
        };
        let t = acts.tokens;
        let (me, count) = (sh.ex.index(), sh.ex.count());
        let mut locals = Vec::with_capacity(ws.len());
        for w in ws {
            let mut o = vec![0f32; t * w.held];
            acts.matmul(self, w, &mut o)?;
            locals.push(o);
        }
        // Token-major: each token's rows of each matrix in turn.
        let mut mine = Vec::with_capacity(locals.iter().map(Vec::len).sum());
        for tok in 0..t {
            for (w, l) in ws.iter().zip(&locals) {
                mine.extend_from_slice(&l[tok * w.held..(tok + 1) * w.held]);
            }
        }
        let place = |s: usize, v: &[f32], outs: &mut [&mut [f32]]| -> Result<(), ExchangeError> {
            let parts: Vec<Range<usize>> = ws.iter().map(|w| part(w.rows, count, s)).collect();
            let expected = t * parts.iter().map(Range::len).sum::<usize>();
            if v.len() != expected {
                return Err(ExchangeError::Length {
                    shard: s,
                    expected,
                    actual: v.len(),
                });
            }
            let mut at = 0;
            for tok in 0..t {
                for ((w, p), out) in ws.iter().zip(&parts).zip(outs.iter_mut()) {
                    let row = tok * w.rows;
                    out[row + p.start..row + p.end].copy_from_slice(&v[at..at + p.len()]);
                    at += p.len();
                }
            }
            Ok(())
        };
        place(me, &mine, outs)?;
        sh.ex
            .all_gather(&mine, false, &mut |s, v| place(s, v, outs))
            .map_err(CpuError::from)
    }

    /// Shard 0's `x` to every shard (split; nothing to do whole).
    fn broadcast(&self, x: &mut [f32]) -> Result<(), CpuError> {
        let Some(sh) = &self.shards else {
            return Ok(());
        };
        let expected = x.len();
        let check = |s: usize, v: &[f32], want: usize| {
            if v.len() == want {
                Ok(())
            } else {
                Err(ExchangeError::Length {
                    shard: s,
                    expected: want,
                    actual: v.len(),
                })
            }
        };
        if sh.ex.index() == 0 {
            sh.ex.all_gather(x, false, &mut |s, v| check(s, v, 0))?;
        } else {
            sh.ex.all_gather(&[], false, &mut |s, v| {
                if s == 0 {
                    check(s, v, expected)?;
                    x.copy_from_slice(v);
                    Ok(())
                } else {
                    check(s, v, 0)
                }
            })?;
        }
        Ok(())
    }

    /// The matrix `w` as blocks (checked at load, so this does not fail
    /// unless the model was built wrong).
    fn view(&self, w: &Weight) -> Result<QTensor<'_>, QuantError> {
        QTensor::new(w.ty, w.held, w.cols, self.bytes_of(w)?)
    }

    /// The bytes of the rows `w` holds.
    fn bytes_of(&self, w: &Weight) -> Result<&[u8], QuantError> {
        self.bytes
            .get(w.start..w.start + w.len)
            .ok_or(QuantError::ByteLength {
                ty: w.ty,
                expected: w.start + w.len,
                actual: self.bytes.len(),
            })
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
            k: vec![vec![Vec::new(); c.kv_heads]; c.layers],
            v: vec![vec![Vec::new(); c.kv_heads]; c.layers],
            pos: 0,
            matmul: Duration::ZERO,
            id: self
                .shards
                .as_ref()
                .map_or(0, |s| s.next_session.fetch_add(1, Ordering::Relaxed)),
        }
    }
}

/// A decoding session: the KV cache of one sequence.
pub struct CpuSession<'m> {
    model: &'m CpuModel,
    /// Keys and values by layer and KV head, each head's positions one
    /// after another (a head's attention streams one contiguous run:
    /// position-major rows made it twice as slow).
    k: Vec<Vec<Vec<f32>>>,
    v: Vec<Vec<Vec<f32>>>,
    pos: usize,
    /// Time spent in the matrix products (the rest of a forward is what
    /// the engine adds around them).
    matmul: Duration,
    /// Which session this is (split models: the shards follow one).
    id: u64,
}

impl std::fmt::Debug for CpuSession<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuSession")
            .field("pos", &self.pos)
            .finish_non_exhaustive()
    }
}

/// Head `kv`'s cached values from `at` on (empty when out of range).
fn head_at(cache: &[Vec<f32>], kv: usize, at: usize) -> &[f32] {
    cache.get(kv).and_then(|c| c.get(at..)).unwrap_or(&[])
}

/// RoPE on every head (adjacent pairs, or the two halves: see [`rotate`]).
fn rope(v: &mut [f32], head_dim: usize, cos: &[f32], sin: &[f32], halves: bool) {
    for head in v.chunks_exact_mut(head_dim) {
        rotate(head, cos, sin, halves);
    }
}

/// How far below a token's largest logit the head's rows get the residual
/// pass ([`Acts::refine`]): one pass leaves Gemma's logits within 0.4 of
/// the two-pass ones (measured on the fixtures), so every row that could be
/// the top one, or near it, is refined.
const REFINE_MARGIN: f32 = 2.0;

/// Tokens whose logits one pass of the head computes when a forward keeps
/// several (a spot check's scoring): a batch's logits are held at once.
const HEAD_BATCH: usize = 16;

/// The activations of a batch of tokens, quantized once per activation
/// type the matrices reading them pair with (q/k/v share one input, gate/up
/// another). With `residual` ([`Arch::residual_activations`]), each
/// token's vector is quantized twice: the vector, then what its first
/// quantization left out (rows `tokens..2·tokens`); a product runs over
/// both in one batch and adds them up. With `refine` as well, the residual
/// goes only to the output rows within the margin of each token's largest
/// (the head: its 262,144 rows are most of a token's weights, and only the
/// top of the distribution needs the precision).
struct Acts {
    tokens: usize,
    residual: bool,
    refine: Option<f32>,
    by_type: Vec<(GgmlType, Vec<QuantizedActivation>)>,
}

impl Acts {
    fn new(tokens: usize, residual: bool) -> Self {
        Self {
            tokens,
            residual,
            refine: None,
            by_type: Vec::new(),
        }
    }

    /// Residual passes only for the rows within `margin` of the largest
    /// output ([`REFINE_MARGIN`]).
    fn refined(mut self, margin: f32) -> Self {
        self.refine = Some(margin);
        self
    }

    /// Quantizes `x` (token-major rows) for every matrix of `ws`.
    fn quantize(&mut self, x: &[f32], ws: &[&Weight]) -> Result<(), QuantError> {
        let cols = x.len() / self.tokens.max(1);
        self.by_type.clear();
        for w in ws {
            if self.by_type.iter().any(|(ty, _)| *ty == w.act) {
                continue;
            }
            let mut rows = x
                .chunks_exact(cols)
                .map(|row| QuantizedActivation::quantize(w.act, row))
                .collect::<Result<Vec<_>, _>>()?;
            if self.residual {
                let mut rest = Vec::with_capacity(rows.len());
                for (row, q) in x.chunks_exact(cols).zip(&rows) {
                    let left: Vec<f32> =
                        row.iter().zip(q.dequantize()).map(|(a, b)| a - b).collect();
                    rest.push(QuantizedActivation::quantize(w.act, &left)?);
                }
                rows.append(&mut rest);
            }
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
        let view = model.view(w)?;
        if !self.residual {
            return quant::matmul(&view, rows, out);
        }
        let (first, rest) = rows.split_at(rows.len() / 2);
        if let Some(margin) = self.refine {
            quant::matmul(&view, first, out)?;
            // Token-major outputs: each token's rows near its top get the
            // residual's share.
            for (out, rest) in out.chunks_exact_mut(view.rows()).zip(rest) {
                let top = out.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                for (r, o) in out.iter_mut().enumerate() {
                    if *o >= top - margin {
                        let row =
                            QTensor::new(view.ty(), 1, view.cols(), view.row(r).unwrap_or(&[]))?;
                        let mut add = 0.0;
                        quant::matmul(
                            &row,
                            std::slice::from_ref(rest),
                            std::slice::from_mut(&mut add),
                        )?;
                        *o += add;
                    }
                }
            }
            return Ok(());
        }
        let mut both = vec![0f32; 2 * out.len()];
        quant::matmul(&view, rows, &mut both)?;
        let (a, b) = both.split_at(out.len());
        for ((o, a), b) in out.iter_mut().zip(a).zip(b) {
            *o = a + b;
        }
        Ok(())
    }
}

/// Attention work (query values × cached positions) above which the heads
/// are spread over the cores natively: below it one core is done before the
/// pool would wake up (a decode step passes it from about 100 positions).
#[cfg(not(target_arch = "wasm32"))]
const PARALLEL_ATTENTION: usize = 64 << 10;

/// A clock read for [`CpuSession::matmul_time`], natively only: in wasm
/// reading the clock is a call into JavaScript (and the raw module the
/// kernel bench loads has none), so the tab times nothing there.
fn clock() -> Option<Instant> {
    cfg!(not(target_arch = "wasm32")).then(Instant::now)
}

/// Time since [`clock`]'s read (zero where it did not read).
fn since(t: Option<Instant>) -> Duration {
    t.map_or(Duration::ZERO, |t| t.elapsed())
}

/// Runs `a` and `b` at once where there are threads (one wake-up of the
/// pool for both, instead of one per matrix), one after the other in wasm.
#[cfg(not(target_arch = "wasm32"))]
fn both<A: Send, B: Send>(a: impl FnOnce() -> A + Send, b: impl FnOnce() -> B + Send) -> (A, B) {
    rayon::join(a, b)
}
#[cfg(target_arch = "wasm32")]
fn both<A, B>(a: impl FnOnce() -> A, b: impl FnOnce() -> B) -> (A, B) {
    (a(), b())
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
#[cfg(not(target_arch = "wasm32"))]
fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
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
fn on_pool<R>(f: impl FnOnce() -> R) -> R {
    f()
}

impl CpuSession<'_> {
    /// Longest sequence this session can hold (the model's context).
    pub fn context(&self) -> usize {
        self.model.config.context
    }

    /// Time this session's forwards spent in matrix products (with the
    /// threads' hand-offs), for benchmarks: a forward's time less this is
    /// the engine's own work per token.
    ///
    /// Natively only: zero in wasm (a clock read there is a call into
    /// JavaScript).
    pub fn matmul_time(&self) -> Duration {
        self.matmul
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
        let m = self.model;
        let result = match &m.shards {
            // The pool's pollers wait for this forward only: a split model
            // (whose forwards wait for other shards) runs without them.
            None => on_pool(|| self.forward(tokens, tokens.len())),
            Some(sh) => self.lead(sh, tokens),
        };
        result.map_err(|e| GenerateError::Device(format!("quantized CPU model: {e}")))
    }

    /// Shard 0 of a split model: tells the others what to run and runs it
    /// with them, a prompt in chunks of [`CHUNK`] tokens.
    fn lead(&mut self, sh: &Shards, tokens: &[u32]) -> Result<Vec<f32>, CpuError> {
        if sh.broken.load(Ordering::Acquire) {
            return Err(ExchangeError::Broken.into());
        }
        if self.pos > 0 && sh.active.load(Ordering::Acquire) != self.id {
            return Err(ExchangeError::Superseded.into());
        }
        sh.active.store(self.id, Ordering::Release);
        let mut logits = Vec::new();
        for chunk in tokens.chunks(CHUNK) {
            let command = Command::Forward {
                pos: self.pos,
                tokens: chunk.len(),
            };
            let step = sh
                .ex
                .all_gather(&command.encode(), false, &mut |_, _| Ok(()))
                .map_err(CpuError::from)
                .and_then(|()| self.forward(chunk, chunk.len()));
            match step {
                Ok(l) => logits = l,
                Err(e) => {
                    sh.broken.store(true, Ordering::Release);
                    return Err(e);
                }
            }
        }
        Ok(logits)
    }

    /// Reads `context` (a prompt and all but the last of a completion's
    /// tokens) in one pass and scores each of `delivered` (the completion)
    /// at its position: what a spot check reads. The same bits as stepping
    /// through the tokens one by one, so an honest completion of this
    /// engine scores every token as the first choice.
    ///
    /// # Errors
    /// [`GenerateError::Device`] for a split model (its forwards run with
    /// other workers) or `delivered` longer than `context` allows.
    pub fn score(
        &mut self,
        context: &[u32],
        delivered: &[u32],
        sampling: tabnode_core::check::Sampling,
    ) -> Result<Vec<tabnode_core::check::TokenScore>, GenerateError> {
        if self.model.shards.is_some() {
            return Err(GenerateError::Device(
                "a model split over workers does not score".into(),
            ));
        }
        let keep = delivered.len();
        if keep > context.len() {
            return Err(GenerateError::Device(format!(
                "{keep} tokens to score after {} of context",
                context.len()
            )));
        }
        on_pool(|| {
            let mut out = Vec::with_capacity(keep);
            self.forward_keep(context, context.len(), keep, &mut |logits| {
                let token = delivered.get(out.len()).copied().unwrap_or(0);
                out.push(tabnode_core::check::TokenScore::of(
                    &logits, token, sampling,
                ));
            })
            .map(|()| out)
        })
        .map_err(|e| GenerateError::Device(format!("quantized CPU model: {e}")))
    }

    /// One forward of `t` tokens: `tokens` on shard 0 (or a whole model),
    /// empty on the other shards, which get the embedded tokens from it.
    fn forward(&mut self, tokens: &[u32], t: usize) -> Result<Vec<f32>, CpuError> {
        let mut last = Vec::new();
        self.forward_keep(tokens, t, 1, &mut |logits| last = logits)?;
        Ok(last)
    }

    /// [`Self::forward`], handing `each` the logits after each of the last
    /// `keep` tokens, in order.
    fn forward_keep(
        &mut self,
        tokens: &[u32],
        t: usize,
        keep: usize,
        each: &mut dyn FnMut(Vec<f32>),
    ) -> Result<(), CpuError> {
        let m = self.model;
        let c = &m.config;
        if t == 0 {
            each(Vec::new());
            return Ok(());
        }
        let (dim, hidden) = (c.dim, c.hidden);
        let hd = c.head_dim;
        let (q_dim, kv_dim) = (c.q_dim(), c.kv_dim());
        let group = (c.heads / c.kv_heads.max(1)).max(1);
        let mut x = vec![0f32; t * dim];
        if let Some(embed) = &m.embed {
            let embed = m.view(embed)?;
            for (row, &token) in x.chunks_exact_mut(dim).zip(tokens) {
                let id = (token as usize).min(c.vocab.saturating_sub(1));
                embed.dequantize_row(id, row)?;
            }
            if let Some(s) = c.embed_scale() {
                x.iter_mut().for_each(|v| *v *= s);
            }
        }
        m.broadcast(&mut x)?;
        // Rotation angles per token, shared by every layer and head (and,
        // for gemma3, those of the windowed layers' base).
        let half = m.inv_freq.len();
        let angles = |inv_freq: &[f32]| {
            let (mut cos, mut sin) = (vec![0f32; t * half], vec![0f32; t * half]);
            for i in 0..t {
                let pos = (self.pos + i) as f32;
                for (j, &f) in inv_freq.iter().enumerate().take(half) {
                    (sin[i * half + j], cos[i * half + j]) = libm::sincosf(pos * f);
                }
            }
            (cos, sin)
        };
        let global = angles(&m.inv_freq);
        let local = (!m.inv_freq_local.is_empty()).then(|| angles(&m.inv_freq_local));
        let mut h = vec![0f32; t * dim];
        let mut q = vec![0f32; t * q_dim];
        let mut k = vec![0f32; t * kv_dim];
        let mut v = vec![0f32; t * kv_dim];
        let mut att = vec![0f32; t * q_dim];
        let mut o = vec![0f32; t * dim];
        let mut g = vec![0f32; t * hidden];
        let mut u = vec![0f32; t * hidden];
        let mut scores = Vec::new();
        let mut acts = Acts::new(t, c.arch.residual_activations());
        let scale = 1.0 / (hd as f32).sqrt();
        let mut matmul = Duration::ZERO;
        for (l, layer) in m.layers.iter().enumerate() {
            for (x, h) in x.chunks_exact(dim).zip(h.chunks_exact_mut(dim)) {
                rmsnorm(x, &layer.attn_norm, c.eps, h);
            }
            acts.quantize(&h, &[&layer.wq, &layer.wk, &layer.wv])?;
            let t0 = clock();
            m.project(
                &acts,
                &[&layer.wq, &layer.wk, &layer.wv],
                &mut [&mut q, &mut k, &mut v],
            )?;
            matmul += since(t0);
            if let Some(b) = &layer.bias {
                b.add(&mut q, &mut k, &mut v);
            }
            if let Some(e) = &layer.extra {
                e.heads(&mut q, &mut k, c.eps);
            }
            let halves = c.arch.rope_halves();
            let window = c.window(l);
            let (cos, sin) = match (window, &local) {
                (Some(_), Some(local)) => local,
                _ => &global,
            };
            for i in 0..t {
                let (cs, sn) = (
                    &cos[i * half..(i + 1) * half],
                    &sin[i * half..(i + 1) * half],
                );
                rope(&mut q[i * q_dim..(i + 1) * q_dim], hd, cs, sn, halves);
                rope(&mut k[i * kv_dim..(i + 1) * kv_dim], hd, cs, sn, halves);
            }
            for (cache, new) in [(&mut self.k[l], &k), (&mut self.v[l], &v)] {
                for row in new.chunks_exact(kv_dim) {
                    for (head, vals) in cache.iter_mut().zip(row.chunks_exact(hd)) {
                        head.extend_from_slice(vals);
                    }
                }
            }
            let (keys, values) = (&self.k[l], &self.v[l]);
            // One (token, head) pair per `hd` values of `q` and `att`.
            let pair = |idx: usize, out: &mut [f32], scores: &mut Vec<f32>| {
                let (i, head) = (idx / c.heads, idx % c.heads);
                // Causal: token i sees the cache up to its own position
                // (from the window's first on a windowed layer).
                let n = self.pos + i + 1;
                let from = window.map_or(0, |w| n.saturating_sub(w));
                let kv = head / group;
                let cache = KvHead {
                    keys: head_at(keys, kv, from * hd),
                    values: head_at(values, kv, from * hd),
                    stride: hd,
                    at: 0,
                };
                attend(
                    &q[idx * hd..(idx + 1) * hd],
                    &cache,
                    n - from,
                    scale,
                    scores,
                    out,
                );
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
            let t0 = clock();
            m.project(&acts, &[&layer.wo], &mut [&mut o])?;
            matmul += since(t0);
            if let Some(e) = &layer.extra {
                o.chunks_exact_mut(dim)
                    .for_each(|o| rmsnorm_in_place(o, &e.attn_out, c.eps));
            }
            x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
            for (x, h) in x.chunks_exact(dim).zip(h.chunks_exact_mut(dim)) {
                rmsnorm(x, &layer.ffn_norm, c.eps, h);
            }
            acts.quantize(&h, &[&layer.gate, &layer.up])?;
            let t0 = clock();
            m.project(&acts, &[&layer.gate, &layer.up], &mut [&mut g, &mut u])?;
            matmul += since(t0);
            // On whole vectors: the SIMD kernel's tail differs from its
            // lanes, so a split would change bits.
            if c.arch.gelu() {
                gelu_mul(&mut g, &u);
            } else {
                (quant::simd::best().f32_silu_mul)(&mut g, &u);
            }
            acts.quantize(&g, &[&layer.down])?;
            let t0 = clock();
            m.project(&acts, &[&layer.down], &mut [&mut o])?;
            matmul += since(t0);
            if let Some(e) = &layer.extra {
                o.chunks_exact_mut(dim)
                    .for_each(|o| rmsnorm_in_place(o, &e.ffn_out, c.eps));
            }
            x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
        }
        // Logits for the last `keep` tokens, as a decode step makes them
        // (the head's rows read once for up to `HEAD_BATCH` tokens: the
        // batched kernels give each token the single kernel's bits).
        let rows: Vec<usize> = (t - keep.clamp(1, t)..t).collect();
        for batch in rows.chunks(HEAD_BATCH) {
            let mut normed = vec![0f32; batch.len() * dim];
            for (&i, out) in batch.iter().zip(normed.chunks_exact_mut(dim)) {
                rmsnorm(&x[i * dim..(i + 1) * dim], &m.norm, c.eps, out);
            }
            let mut logits = vec![0f32; batch.len() * c.vocab];
            let mut acts =
                Acts::new(batch.len(), c.arch.residual_activations()).refined(REFINE_MARGIN);
            acts.quantize(&normed, &[&m.head])?;
            let t0 = clock();
            m.project(&acts, &[&m.head], &mut [&mut logits])?;
            matmul += since(t0);
            for row in logits.chunks_exact(c.vocab) {
                each(row.to_vec());
            }
        }
        self.matmul += matmul;
        self.pos += t;
        Ok(())
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
