//! The llama / qwen2 / gemma3 decode step on the GPU: every weight as the file's
//! blocks, every op a WGSL dispatch recorded at load, a token in one
//! submission (the embedding row is looked up on the CPU and written with
//! the step's position before it; the logits are read back after).

use wgpu::util::DeviceExt;

use super::{Gpu, GpuError, GpuMatrix, Matvec, Variant};
use crate::gguf::{Gguf, GgufError};
use crate::quant::{GgmlType, QTensor};
use crate::reference::{Config, ExtraNorms, QkvBias};
use crate::sample::{Part, Top};

/// One recorded dispatch.
#[derive(Debug)]
enum Op {
    Matvec(Matvec),
    Kernel {
        pipeline: wgpu::ComputePipeline,
        bind: wgpu::BindGroup,
        groups: u32,
    },
}

/// A model on the GPU with its KV cache (one sequence at a time).
#[derive(Debug)]
pub struct GpuModel {
    /// Hyper-parameters.
    pub config: Config,
    gpu: Gpu,
    embed: (GgmlType, Vec<u8>),
    positions: usize,
    /// Held by the one session the KV cache serves.
    busy: std::sync::Mutex<()>,
    /// Dispatches before the output norm and head (a prompt's tokens but
    /// the last skip those).
    body: usize,
    x: wgpu::Buffer,
    step: wgpu::Buffer,
    logits: wgpu::Buffer,
    ops: Vec<Op>,
    /// The greedy token from the logits, into `best`.
    argmax: Op,
    best: wgpu::Buffer,
    /// A draw's candidates from the logits ([`TOP_PARTS`] parts), into
    /// `top`, with the temperature in `top_dims`.
    ranks: Op,
    top: wgpu::Buffer,
    top_dims: wgpu::Buffer,
    weight_bytes: u64,
    cache_bytes: u64,
}

/// Parts the logits are split into to rank a draw's candidates (one
/// invocation each), and the candidates each keeps (`top.wgsl`).
pub const TOP_PARTS: usize = 64;
/// See [`TOP_PARTS`].
pub const TOP_KEEP: usize = 16;
/// Words a part writes.
const TOP_STRIDE: usize = 2 * TOP_KEEP + 4;

/// A GGUF tensor as a [`QTensor`] of `rows` × `cols`.
fn tensor<'a>(
    g: &Gguf<'a>,
    name: &str,
    rows: usize,
    cols: usize,
) -> Result<QTensor<'a>, GgufError> {
    let t = g.tensor(name)?;
    let bad = |reason: String| GgufError::BadTensor {
        name: name.to_string(),
        reason,
    };
    if t.dims.len() != 2 || t.dims[0] as usize != cols || t.dims[1] as usize != rows {
        return Err(bad(format!(
            "shape {:?}, expected [{cols}, {rows}]",
            t.dims
        )));
    }
    let ty = GgmlType::from_u32(t.ggml_type).ok_or_else(|| GgufError::TensorType {
        name: name.to_string(),
        ggml_type: t.ggml_type,
        type_name: crate::gguf::ggml_type_name(t.ggml_type),
    })?;
    QTensor::new(ty, rows, cols, g.raw(t)?).map_err(|e| bad(e.to_string()))
}

/// The matrices `parts` (name, rows; `cols` values a row) uploaded as one
/// matrix of all their rows when they share a format, else one by one;
/// each with the row its outputs start at.
fn joined(
    g: &Gguf<'_>,
    parts: &[(String, usize)],
    cols: usize,
    upload: &mut dyn FnMut(QTensor<'_>) -> Result<GpuMatrix, GpuError>,
) -> Result<Vec<(GpuMatrix, usize)>, GpuModelError> {
    let tensors = parts
        .iter()
        .map(|(name, rows)| tensor(g, name, *rows, cols))
        .collect::<Result<Vec<_>, _>>()?;
    let mut at = 0;
    let mut starts = Vec::new();
    for t in &tensors {
        starts.push(at);
        at += t.rows();
    }
    let ty = tensors.first().map(QTensor::ty);
    if let Some(ty) = ty.filter(|ty| tensors.iter().all(|t| t.ty() == *ty)) {
        let bytes: Vec<u8> = tensors
            .iter()
            .flat_map(|t| t.data().iter().copied())
            .collect();
        let all = QTensor::new(ty, at, cols, &bytes).map_err(|e| GgufError::BadTensor {
            name: parts
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join("+"),
            reason: e.to_string(),
        })?;
        return Ok(vec![(upload(all)?, 0)]);
    }
    tensors
        .into_iter()
        .zip(starts)
        .map(|(t, at)| Ok((upload(t)?, at)))
        .collect()
}

/// Why a model could not be put on the GPU.
#[derive(Debug, thiserror::Error)]
pub enum GpuModelError {
    /// The file.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// The device.
    #[error(transparent)]
    Gpu(#[from] GpuError),
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn u32_bytes(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

impl GpuModel {
    /// Uploads the model in `bytes` with room for `positions` tokens
    /// (at most the model's context) and records its decode step.
    ///
    /// # Errors
    /// Missing or malformed tensors, formats without a GPU kernel.
    pub fn load(
        gpu: Gpu,
        bytes: &[u8],
        positions: usize,
        variant: Variant,
    ) -> Result<Self, GpuModelError> {
        let g = Gguf::parse(bytes)?;
        let c = Config::from_gguf(&g)?;
        Self::load_config(gpu, &g, c, positions, variant)
    }

    /// [`GpuModel::load`] with the file's configuration changed by `edit`
    /// first (tests shorten gemma3's window so a short prompt crosses it).
    ///
    /// # Errors
    /// As [`GpuModel::load`].
    pub fn load_edited(
        gpu: Gpu,
        bytes: &[u8],
        positions: usize,
        variant: Variant,
        edit: impl FnOnce(&mut Config),
    ) -> Result<Self, GpuModelError> {
        let g = Gguf::parse(bytes)?;
        let mut c = Config::from_gguf(&g)?;
        edit(&mut c);
        Self::load_config(gpu, &g, c, positions, variant)
    }

    fn load_config(
        gpu: Gpu,
        g: &Gguf<'_>,
        c: Config,
        positions: usize,
        variant: Variant,
    ) -> Result<Self, GpuModelError> {
        let positions = positions.clamp(1, c.context.max(1));
        let hd = c.head_dim;
        let half = hd / 2;
        let (q_dim, kv_dim) = (c.q_dim(), c.kv_dim());
        let qkv_len = q_dim + 2 * kv_dim;
        let dev = gpu.device().clone();
        let storage = |label, contents: &[u8]| {
            dev.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents,
                usage: wgpu::BufferUsages::STORAGE,
            })
        };
        let uniform = |contents: &[u8]| {
            dev.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("dims"),
                contents,
                usage: wgpu::BufferUsages::UNIFORM,
            })
        };
        let embed = tensor(g, "token_embd.weight", c.vocab, c.dim)?;
        let head = match g.tensor("output.weight") {
            Ok(_) => tensor(g, "output.weight", c.vocab, c.dim)?,
            Err(_) => embed,
        };
        // Norm weights (2 per layer, then the output norm; gemma3's 2 more
        // per layer after them, then its q and k head norms) and biases in
        // one buffer each.
        let mut norms = Vec::with_capacity((2 * c.layers + 1) * c.dim);
        let mut extras = Vec::new();
        let mut biases = Vec::new();
        let mut has_bias = false;
        for l in 0..c.layers {
            norms.extend(g.dequantize(&format!("blk.{l}.attn_norm.weight"))?);
            norms.extend(g.dequantize(&format!("blk.{l}.ffn_norm.weight"))?);
            extras.push(ExtraNorms::from_gguf(g, &c, l)?);
            match QkvBias::from_gguf(g, l, q_dim, kv_dim)? {
                Some(b) => {
                    has_bias = true;
                    biases.extend(b.q);
                    biases.extend(b.k);
                    biases.extend(b.v);
                }
                None => biases.extend(std::iter::repeat_n(0.0, qkv_len)),
            }
        }
        norms.extend(g.dequantize("output_norm.weight")?);
        if norms.len() != (2 * c.layers + 1) * c.dim {
            return Err(GgufError::BadTensor {
                name: "norms".into(),
                reason: format!(
                    "{} values, expected {}",
                    norms.len(),
                    (2 * c.layers + 1) * c.dim
                ),
            }
            .into());
        }
        // Where gemma3's norms start: its output norms by layer, then its
        // head norms by layer.
        let post_at = norms.len();
        let heads_at = post_at + 2 * c.layers * c.dim;
        for e in extras.iter().flatten() {
            norms.extend(&e.attn_out);
            norms.extend(&e.ffn_out);
        }
        for e in extras.iter().flatten() {
            norms.extend(&e.q);
            norms.extend(&e.k);
        }
        let norms = storage("norms", &f32_bytes(&norms));
        let biases = storage("biases", &f32_bytes(&biases));
        // RoPE's (cos, sin) per position and pair, as the CPU engine
        // computes them: with the file's base, and (gemma3) the windowed
        // layers' own.
        let table_for = |base: f32| {
            let inv: Vec<f32> = (0..half)
                .map(|i| libm::powf(base, -2.0 * i as f32 / hd as f32))
                .collect();
            let mut table = Vec::with_capacity(positions * half * 2);
            for p in 0..positions {
                for &f in &inv {
                    let (s, co) = libm::sincosf(p as f32 * f);
                    table.extend([co, s]);
                }
            }
            storage("rope", &f32_bytes(&table))
        };
        let table = table_for(c.rope_base);
        let local_table = c.sliding.as_ref().map(|s| table_for(s.rope_base));
        let x = gpu.vector(c.dim);
        let h = gpu.vector(c.dim);
        let qkv = gpu.vector(qkv_len);
        let att = gpu.vector(q_dim);
        // gemma3: the attention's and the FFN's outputs, normed before
        // they join the residual.
        let o = gpu.vector(c.dim);
        let gu = gpu.vector(2 * c.hidden);
        let logits = gpu.vector(c.vocab);
        let scores = gpu.vector(c.heads * positions);
        let step = dev.create_buffer(&wgpu::BufferDescriptor {
            label: Some("step"),
            size: 16,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let module = |src: &str| super::compute_pipeline(&dev, src);
        // The reductions' workgroup: one SIMD group on a software adapter
        // (a barrier between the invocations of one CPU thread's lanes
        // switches nothing), 64 invocations on a GPU.
        let wg = |src: &str| match variant {
            Variant::Rows => src.replace("const WG: u32 = 64u;", "const WG: u32 = 4u;"),
            Variant::Lanes => src.to_owned(),
        };
        let norm_p = module(&wg(include_str!("rmsnorm.wgsl")));
        let rope_p = module(include_str!("rope_kv.wgsl"));
        let att_p = module(&wg(include_str!("attention.wgsl")));
        let silu_p = module(include_str!("silu_mul.wgsl"));
        let head_norm_p = module(&wg(include_str!("head_norm.wgsl")));
        let argmax_p = module(&wg(include_str!("argmax.wgsl")));
        let top_p = module(include_str!("top.wgsl"));
        let kernel =
            |pipeline: &wgpu::ComputePipeline, buffers: &[&wgpu::Buffer], groups: u32| Op::Kernel {
                bind: super::bind_buffers(&dev, pipeline, buffers),
                pipeline: pipeline.clone(),
                groups,
            };
        // RMSNorm of `input` with the weights at `at` into `out`, or added
        // to it (`acc`).
        let norm_at = |input: &wgpu::Buffer, out: &wgpu::Buffer, at: usize, acc: bool| {
            let mut d = u32_bytes(&[c.dim as u32, at as u32]);
            d.extend(c.eps.to_le_bytes());
            d.extend(u32::from(acc).to_le_bytes());
            kernel(&norm_p, &[input, out, &norms, &uniform(&d)], 1)
        };
        let norm = |input: &wgpu::Buffer, out: &wgpu::Buffer, which: usize| {
            norm_at(input, out, which * c.dim, false)
        };
        let rope_dims = |l: usize| {
            uniform(&u32_bytes(&[
                c.heads as u32,
                c.kv_heads as u32,
                hd as u32,
                u32::from(c.arch.rope_halves()),
                u32::from(has_bias),
                (l * qkv_len) as u32,
                0,
                0,
            ]))
        };
        let att_dims_for = |window: usize| {
            let mut d = u32_bytes(&[
                c.heads as u32,
                c.kv_heads as u32,
                hd as u32,
                positions as u32,
            ]);
            d.extend((1.0 / (hd as f32).sqrt()).to_le_bytes());
            d.extend(u32_bytes(&[window as u32, 0, 0]));
            uniform(&d)
        };
        let att_dims = att_dims_for(0);
        let local_att_dims = c.sliding.as_ref().map(|s| att_dims_for(s.window));
        let ffn_dims = uniform(&u32_bytes(&[
            c.hidden as u32,
            u32::from(c.arch.gelu()),
            0,
            0,
        ]));
        let mut ops = Vec::new();
        let mut weight_bytes = 0;
        let mut cache_bytes = 0;
        let mut up_load = |t: QTensor<'_>| -> Result<GpuMatrix, GpuError> {
            let m = gpu.upload(&t, variant)?;
            weight_bytes += m.bytes();
            Ok(m)
        };
        for l in 0..c.layers {
            let p = |s: &str| format!("blk.{l}.{s}.weight");
            // q/k/v, and gate/up, as one matrix each where their formats
            // agree (one dispatch, more rows for it); their outputs side by
            // side either way.
            let qkv_ms = joined(
                g,
                &[
                    (p("attn_q"), q_dim),
                    (p("attn_k"), kv_dim),
                    (p("attn_v"), kv_dim),
                ],
                c.dim,
                &mut up_load,
            )?;
            let wo = up_load(tensor(g, &p("attn_output"), c.dim, q_dim)?)?;
            let gu_ms = joined(
                g,
                &[(p("ffn_gate"), c.hidden), (p("ffn_up"), c.hidden)],
                c.dim,
                &mut up_load,
            )?;
            let wd = up_load(tensor(g, &p("ffn_down"), c.dim, c.hidden)?)?;
            let k_cache = gpu.vector(positions * kv_dim);
            let v_cache = gpu.vector(positions * kv_dim);
            cache_bytes += k_cache.size() + v_cache.size();
            ops.push(norm(&x, &h, 2 * l));
            for (m, at) in &qkv_ms {
                ops.push(Op::Matvec(gpu.matvec(m, &h, 0, &qkv, *at)?));
            }
            let extra = extras.get(l).is_some_and(Option::is_some);
            if extra {
                let mut d = u32_bytes(&[
                    hd as u32,
                    c.heads as u32,
                    (heads_at + 2 * l * hd) as u32,
                    (heads_at + (2 * l + 1) * hd) as u32,
                ]);
                d.extend(c.eps.to_le_bytes());
                d.extend(u32_bytes(&[0, 0, 0]));
                ops.push(kernel(
                    &head_norm_p,
                    &[&qkv, &norms, &uniform(&d)],
                    (c.heads + c.kv_heads) as u32,
                ));
            }
            let windowed = c.window(l).is_some();
            let pairs = ((c.heads + c.kv_heads) * half) as u32;
            ops.push(kernel(
                &rope_p,
                &[
                    &qkv,
                    &k_cache,
                    &v_cache,
                    &biases,
                    match (&local_table, windowed) {
                        (Some(t), true) => t,
                        _ => &table,
                    },
                    &rope_dims(l),
                    &step,
                ],
                pairs.div_ceil(64),
            ));
            let dims = match (&local_att_dims, windowed) {
                (Some(d), true) => d,
                _ => &att_dims,
            };
            ops.push(kernel(
                &att_p,
                &[&qkv, &k_cache, &v_cache, &scores, &att, dims, &step],
                c.heads as u32,
            ));
            if extra {
                ops.push(Op::Matvec(gpu.matvec(&wo, &att, 0, &o, 0)?));
                ops.push(norm_at(&o, &x, post_at + 2 * l * c.dim, true));
            } else {
                ops.push(Op::Matvec(gpu.matvec_acc(&wo, &att, &x)?));
            }
            ops.push(norm(&x, &h, 2 * l + 1));
            for (m, at) in &gu_ms {
                ops.push(Op::Matvec(gpu.matvec(m, &h, 0, &gu, *at)?));
            }
            ops.push(kernel(
                &silu_p,
                &[&gu, &ffn_dims],
                (c.hidden as u32).div_ceil(64),
            ));
            if extra {
                ops.push(Op::Matvec(gpu.matvec(&wd, &gu, 0, &o, 0)?));
                ops.push(norm_at(&o, &x, post_at + (2 * l + 1) * c.dim, true));
            } else {
                ops.push(Op::Matvec(gpu.matvec_acc(&wd, &gu, &x)?));
            }
        }
        let body = ops.len();
        ops.push(norm(&x, &h, 2 * c.layers));
        let head_m = up_load(head)?;
        ops.push(Op::Matvec(gpu.matvec(&head_m, &h, 0, &logits, 0)?));
        let best = gpu.vector(1);
        let argmax = kernel(
            &argmax_p,
            &[
                &logits,
                &best,
                &uniform(&u32_bytes(&[c.vocab as u32, 0, 0, 0])),
            ],
            1,
        );
        let top = gpu.vector(TOP_PARTS * TOP_STRIDE);
        let top_dims = dev.create_buffer(&wgpu::BufferDescriptor {
            label: Some("top dims"),
            size: 16,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let ranks = kernel(&top_p, &[&logits, &top, &top_dims], 1);
        Ok(Self {
            embed: (embed.ty(), embed.data().to_vec()),
            config: c,
            gpu,
            positions,
            busy: std::sync::Mutex::new(()),
            body,
            x,
            step,
            logits,
            ops,
            argmax,
            best,
            ranks,
            top,
            top_dims,
            weight_bytes,
            cache_bytes,
        })
    }

    /// [`GpuModel::load`], then one greedy step, with the device's
    /// validation errors captured: a shader or command the device rejects
    /// fails the load here instead of computing nothing later (a rejected
    /// pipeline's dispatches are skipped, and their outputs read as zeros).
    /// The step also compiles what the device compiles lazily.
    ///
    /// # Errors
    /// As [`GpuModel::load`]; [`GpuError::Rejected`].
    pub async fn load_checked(
        gpu: Gpu,
        bytes: &[u8],
        positions: usize,
        variant: Variant,
    ) -> Result<Self, GpuModelError> {
        let device = gpu.device().clone();
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let loaded = Self::load(gpu, bytes, positions, variant);
        let stepped = match &loaded {
            Ok(m) => match m.session() {
                Ok(mut s) => s.step_greedy(0).await.map(drop),
                Err(e) => Err(e),
            },
            Err(_) => Ok(()),
        };
        if let Some(e) = scope.pop().await {
            return Err(GpuError::Rejected(e).into());
        }
        stepped?;
        loaded
    }

    /// Dispatches one token records (the same for every token).
    pub fn dispatches_per_token(&self) -> usize {
        self.ops
            .iter()
            .map(|op| match op {
                Op::Matvec(m) => m.dispatch_count(),
                Op::Kernel { .. } => 1,
            })
            .sum()
    }

    /// Bytes of weights on the device.
    pub fn weight_bytes(&self) -> u64 {
        self.weight_bytes
    }

    /// Bytes of KV cache on the device.
    pub fn cache_bytes(&self) -> u64 {
        self.cache_bytes
    }

    /// Tokens the cache holds at most.
    pub fn positions(&self) -> usize {
        self.positions
    }

    /// A decoding session over the model's KV cache, which serves one
    /// session at a time.
    ///
    /// # Errors
    /// [`GpuError::Busy`] while another session is alive.
    pub fn session(&self) -> Result<GpuSession<'_>, GpuError> {
        let guard = match self.busy.try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return Err(GpuError::Busy),
        };
        Ok(GpuSession {
            model: self,
            pos: 0,
            _guard: guard,
        })
    }

    /// Writes token `token`'s embedding and position `pos` for the next
    /// submission.
    fn stage(&self, token: u32, pos: usize) -> Result<(), GpuError> {
        let c = &self.config;
        let id = (token as usize).min(c.vocab.saturating_sub(1));
        let mut row = vec![0f32; c.dim];
        let (ty, data) = &self.embed;
        QTensor::new(*ty, c.vocab, c.dim, data)
            .and_then(|t| t.dequantize_row(id, &mut row))
            .map_err(GpuError::Embedding)?;
        if let Some(s) = c.embed_scale() {
            row.iter_mut().for_each(|v| *v *= s);
        }
        self.gpu.write(&self.x, &row);
        let pos = pos as u32;
        self.gpu
            .queue()
            .write_buffer(&self.step, 0, &u32_bytes(&[pos, pos + 1, 0, 0]));
        Ok(())
    }
}

/// A decoding session: the position in the model's KV cache.
#[derive(Debug)]
pub struct GpuSession<'m> {
    model: &'m GpuModel,
    pos: usize,
    _guard: std::sync::MutexGuard<'m, ()>,
}

impl GpuSession<'_> {
    /// Tokens fed so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    fn room(&self, tokens: usize) -> Result<(), GpuError> {
        if self.pos + tokens > self.model.positions {
            return Err(GpuError::Length {
                what: "KV cache positions",
                actual: self.pos + tokens,
                expected: self.model.positions,
            });
        }
        Ok(())
    }

    /// Feeds one token and returns the logits for the next one (a token
    /// outside the vocabulary is clamped, as on the CPU): one submission.
    ///
    /// # Errors
    /// [`GpuError::Length`] when the cache is full; read-back failures.
    pub async fn step(&mut self, token: u32) -> Result<Vec<f32>, GpuError> {
        self.prefill(&[token]).await
    }

    /// Feeds `tokens` (a prompt) and returns the logits after the last:
    /// a submission per token, without the output layer or a read back
    /// but for the last.
    ///
    /// # Errors
    /// As [`GpuSession::step`]; nothing is fed when they do not fit.
    pub async fn prefill(&mut self, tokens: &[u32]) -> Result<Vec<f32>, GpuError> {
        self.feed(tokens, Out::Logits).await
    }

    /// [`GpuSession::step`] returning only the most likely next token
    /// (the first of the largest logits), picked on the device: 4 bytes
    /// read back instead of the logits.
    ///
    /// # Errors
    /// As [`GpuSession::step`].
    pub async fn step_greedy(&mut self, token: u32) -> Result<u32, GpuError> {
        self.prefill_greedy(&[token]).await
    }

    /// [`GpuSession::prefill`] returning only the most likely next token.
    ///
    /// # Errors
    /// As [`GpuSession::prefill`]; an empty prompt.
    pub async fn prefill_greedy(&mut self, tokens: &[u32]) -> Result<u32, GpuError> {
        let best = self.feed(tokens, Out::Best).await?;
        best.first().map(|b| b.to_bits()).ok_or(GpuError::Length {
            what: "prompt tokens",
            actual: 0,
            expected: 1,
        })
    }

    /// [`GpuSession::step`] returning a draw's candidates ranked on the
    /// device with `temperature` (> 0): `TOP_PARTS` × `TOP_KEEP` of
    /// them, 9 KB read back instead of the logits. A draw they do not
    /// decide needs [`GpuSession::logits`].
    ///
    /// # Errors
    /// As [`GpuSession::step`].
    pub async fn step_top(&mut self, token: u32, temperature: f32) -> Result<Top, GpuError> {
        self.prefill_top(&[token], temperature).await
    }

    /// [`GpuSession::prefill`] returning a draw's candidates
    /// ([`GpuSession::step_top`]).
    ///
    /// # Errors
    /// As [`GpuSession::prefill`].
    pub async fn prefill_top(&mut self, tokens: &[u32], temperature: f32) -> Result<Top, GpuError> {
        let m = self.model;
        let mut dims = u32_bytes(&[m.config.vocab as u32, TOP_PARTS as u32]);
        dims.extend(temperature.to_le_bytes());
        dims.extend(0u32.to_le_bytes());
        m.gpu.queue().write_buffer(&m.top_dims, 0, &dims);
        let words = self.feed(tokens, Out::Top).await?;
        let parts: Vec<_> = words
            .chunks_exact(TOP_STRIDE)
            .map(|w| {
                let bits = |x: f32| x.to_bits();
                let count = (bits(w[2 * TOP_KEEP]) as usize).min(TOP_KEEP);
                let best = (0..count)
                    .map(|k| (bits(w[k]), w[TOP_KEEP + k] / temperature))
                    .collect();
                Part {
                    best,
                    floor: w[2 * TOP_KEEP + 1] / temperature,
                    total: w[2 * TOP_KEEP + 2],
                }
            })
            .collect();
        Ok(Top::merge(&parts))
    }

    /// The logits after the last token fed (read back again).
    ///
    /// # Errors
    /// Read-back failures.
    pub async fn logits(&self) -> Result<Vec<f32>, GpuError> {
        let m = self.model;
        m.gpu
            .submit_and_read(|_| {}, &m.logits, m.config.vocab)
            .await
    }

    /// Feeds `tokens`; after the last, reads `out` back.
    async fn feed(&mut self, tokens: &[u32], out: Out) -> Result<Vec<f32>, GpuError> {
        let m = self.model;
        self.room(tokens.len())?;
        let Some((&last, first)) = tokens.split_last() else {
            return Ok(Vec::new());
        };
        for &t in first {
            m.stage(t, self.pos)?;
            m.gpu
                .submit(|pass| m.ops[..m.body].iter().for_each(|op| op.record(pass)));
            self.pos += 1;
        }
        m.stage(last, self.pos)?;
        let (buffer, len, last) = match out {
            Out::Logits => (&m.logits, m.config.vocab, None),
            Out::Best => (&m.best, 1, Some(&m.argmax)),
            Out::Top => (&m.top, TOP_PARTS * TOP_STRIDE, Some(&m.ranks)),
        };
        let values = m
            .gpu
            .submit_and_read(
                |pass| {
                    m.ops.iter().chain(last).for_each(|op| op.record(pass));
                },
                buffer,
                len,
            )
            .await?;
        self.pos += 1;
        Ok(values)
    }
}

/// What a token's submission reads back.
#[derive(Debug, Clone, Copy)]
enum Out {
    /// The logits.
    Logits,
    /// The greedy token.
    Best,
    /// A draw's candidates, as words.
    Top,
}

impl Op {
    fn record(&self, pass: &mut wgpu::ComputePass<'_>) {
        match self {
            Op::Matvec(m) => m.record(pass),
            Op::Kernel {
                pipeline,
                bind,
                groups,
            } => {
                pass.set_pipeline(pipeline);
                pass.set_bind_group(0, bind, &[]);
                pass.dispatch_workgroups(*groups, 1, 1);
            }
        }
    }
}
