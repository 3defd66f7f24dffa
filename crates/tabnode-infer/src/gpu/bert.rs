//! The BERT sentence encoder ([`crate::bert`]) on the GPU: its layers' f32
//! weights uploaded once, a batch of texts packed token after token (no
//! padding: the attention kernel keeps each token to its own text) and run
//! in one submission of WGSL dispatches (`bert_*.wgsl`), the sentence
//! vectors read back. The dense layers' weights go up transposed (see
//! `bert_linear.wgsl`). No `shader-f16`, no workgroup memory, no barriers:
//! the same kernels on a GPU and on a software adapter (SwiftShader in
//! headless Chromium, lavapipe natively).
//!
//! The word, position and type embeddings stay on the CPU (the
//! [`BertModel`] it shares): a text's rows are looked up and added there
//! and written with the batch, so the 47 MB word table is never uploaded.
//!
//! Checked against sentence-transformers' vectors and the CPU encoder
//! (`tests/minilm.rs`).

use std::sync::{Arc, Mutex, PoisonError};

use wgpu::util::DeviceExt;

use super::{bind_buffers, compute_pipeline, Gpu, GpuError};
use crate::bert::{BertError, BertModel, Linear, Norm};

/// Why the GPU encoder cannot be built or cannot answer.
#[derive(Debug, thiserror::Error)]
pub enum GpuBertError {
    /// An input the encoder refuses (no tokens, too many, an id outside
    /// the vocabulary).
    #[error(transparent)]
    Input(#[from] BertError),
    /// The device failed.
    #[error(transparent)]
    Gpu(#[from] GpuError),
    /// A model whose widths the kernels do not take (they read vec4s).
    #[error("the GPU encoder needs widths that are multiples of 4: {0}")]
    Shape(String),
}

/// Tokens one submission holds (the scratch buffers' size): a batch with
/// more is run in several submissions, each of whole texts.
pub const BATCH_TOKENS: usize = 2048;

/// How many workgroups a dispatch takes for a batch.
#[derive(Debug, Clone, Copy)]
enum Grid {
    /// `bert_linear.wgsl`: 256 rows by 4 tokens a workgroup.
    Linear { rows: u32 },
    /// `per` invocations per token, 64 a workgroup.
    Tokens { per: u32 },
    /// `bert_gelu.wgsl`: `width4` invocations per token, 256 a workgroup.
    Gelu { width4: u32 },
    /// `per` invocations per text, 64 a workgroup.
    Texts { per: u32 },
}

impl Grid {
    fn groups(self, tokens: u32, texts: u32) -> (u32, u32) {
        match self {
            Grid::Linear { rows } => (rows.div_ceil(256), tokens.div_ceil(4)),
            Grid::Tokens { per } => ((tokens * per).div_ceil(64), 1),
            Grid::Gelu { width4 } => ((tokens * width4).div_ceil(256), 1),
            Grid::Texts { per } => ((texts * per).div_ceil(64), 1),
        }
    }
}

/// One dispatch, its bind group made at load.
#[derive(Debug)]
struct Op {
    pipeline: wgpu::ComputePipeline,
    bind: wgpu::BindGroup,
    grid: Grid,
}

/// The encoder on a GPU.
#[derive(Debug)]
pub struct GpuBert {
    model: Arc<BertModel>,
    gpu: Gpu,
    /// Token rows before the first norm, and the residual stream.
    x: wgpu::Buffer,
    /// Per token: its text's first token and one past its last.
    spans: wgpu::Buffer,
    /// Per text: its first token and one past its last.
    texts: wgpu::Buffer,
    /// `Batch` of the kernels: tokens, texts.
    batch: wgpu::Buffer,
    /// The sentence vectors.
    out: wgpu::Buffer,
    ops: Vec<Op>,
    /// Held from a batch's first write to its submission (the scratch
    /// buffers are shared).
    staging: Mutex<()>,
    weight_bytes: u64,
}

fn words(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|w| w.to_le_bytes()).collect()
}

impl GpuBert {
    /// Uploads `model`'s layers to `gpu` and makes the kernels' pipelines
    /// and bind groups.
    ///
    /// # Errors
    /// [`GpuBertError::Shape`] for a width or head size that is not a
    /// multiple of 4, or a text limit above [`BATCH_TOKENS`].
    pub fn new(gpu: Gpu, model: Arc<BertModel>) -> Result<Self, GpuBertError> {
        let c = &model.config;
        let (h, f) = (c.hidden_size, c.intermediate_size);
        let heads = c.num_attention_heads;
        let hd = h / heads;
        if !h.is_multiple_of(4) || !f.is_multiple_of(4) || !hd.is_multiple_of(4) {
            return Err(GpuBertError::Shape(format!(
                "width {h}, FFN width {f}, head size {hd}"
            )));
        }
        // One dimension of workgroups holds a full batch's GELU (65,535
        // of 256 invocations: an FFN up to 32,764 wide).
        if (BATCH_TOKENS * f / 4).div_ceil(256) > 65_535 {
            return Err(GpuBertError::Shape(format!("FFN width {f}")));
        }
        if model.max_tokens > BATCH_TOKENS {
            return Err(GpuBertError::Shape(format!(
                "texts of {} tokens; a submission holds {BATCH_TOKENS}",
                model.max_tokens
            )));
        }
        let dev = gpu.device();
        let weight_bytes = std::cell::Cell::new(0u64);
        let upload = |values: &[f32]| {
            let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            weight_bytes.set(weight_bytes.get() + bytes.len() as u64);
            dev.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("bert weight"),
                contents: &bytes,
                usage: wgpu::BufferUsages::STORAGE,
            })
        };
        let uniform = |bytes: &[u8]| {
            dev.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("bert dims"),
                contents: bytes,
                usage: wgpu::BufferUsages::UNIFORM,
            })
        };
        let pipeline =
            |src: &str| compute_pipeline(dev, &format!("{}{src}", include_str!("bert_batch.wgsl")));
        let linear_p = pipeline(include_str!("bert_linear.wgsl"));
        let norm_p = pipeline(include_str!("bert_norm.wgsl"));
        let gelu_p = pipeline(include_str!("bert_gelu.wgsl"));
        let attention_p = pipeline(&include_str!("bert_attention.wgsl").replace(
            "const HD4: u32 = 8u;",
            &format!("const HD4: u32 = {}u;", hd / 4),
        ));
        let pool_p = pipeline(include_str!("bert_pool.wgsl"));
        let unit_p = pipeline(include_str!("bert_unit.wgsl"));

        let x = gpu.vector(BATCH_TOKENS * h);
        let (q, k, v, att) = (
            gpu.vector(BATCH_TOKENS * h),
            gpu.vector(BATCH_TOKENS * h),
            gpu.vector(BATCH_TOKENS * h),
            gpu.vector(BATCH_TOKENS * h),
        );
        let up = gpu.vector(BATCH_TOKENS * f);
        let spans = gpu.vector(BATCH_TOKENS * 2);
        let texts = gpu.vector(BATCH_TOKENS * 2);
        let out = gpu.vector(BATCH_TOKENS * h);
        let batch = dev.create_buffer(&wgpu::BufferDescriptor {
            label: Some("bert batch"),
            size: 16,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });

        let op = |pipeline: &wgpu::ComputePipeline, buffers: &[&wgpu::Buffer], grid| Op {
            bind: bind_buffers(dev, pipeline, buffers),
            pipeline: pipeline.clone(),
            grid,
        };
        let eps = c.layer_norm_eps as f32;
        let norm_dims = {
            let mut d = words(&[h as u32]);
            d.extend(eps.to_le_bytes());
            d.extend([0; 8]);
            uniform(&d)
        };
        let mut ops = Vec::new();
        let add_norm = |ops: &mut Vec<Op>, n: &Norm| {
            let (g, b) = (upload(&n.w), upload(&n.b));
            ops.push(op(
                &norm_p,
                &[&x, &g, &b, &norm_dims, &batch],
                Grid::Tokens { per: 1 },
            ));
        };
        add_norm(&mut ops, &model.embed_norm);
        let attention_dims = {
            let mut d = words(&[heads as u32, h as u32]);
            d.extend((1.0 / (hd as f32).sqrt()).to_le_bytes());
            d.extend([0; 4]);
            uniform(&d)
        };
        let gelu_dims = uniform(&words(&[(f / 4) as u32, 0, 0, 0]));
        for layer in &model.layers {
            let linear = |ops: &mut Vec<Op>,
                          l: &Linear,
                          input: &wgpu::Buffer,
                          output: &wgpu::Buffer,
                          acc: bool| {
                // Transposed: column k's values of every row together.
                let mut wt = vec![0f32; l.w.len()];
                for (r, row) in l.w.chunks_exact(l.cols).enumerate() {
                    for (k, v) in row.iter().enumerate() {
                        wt[k * l.rows + r] = *v;
                    }
                }
                let (w, b) = (upload(&wt), upload(&l.b));
                let dims = uniform(&words(&[
                    (l.rows / 4) as u32,
                    (l.cols / 4) as u32,
                    u32::from(acc),
                    0,
                ]));
                ops.push(op(
                    &linear_p,
                    &[input, &w, &b, output, &dims, &batch],
                    Grid::Linear {
                        rows: l.rows as u32,
                    },
                ));
            };
            linear(&mut ops, &layer.q, &x, &q, false);
            linear(&mut ops, &layer.k, &x, &k, false);
            linear(&mut ops, &layer.v, &x, &v, false);
            ops.push(op(
                &attention_p,
                &[&q, &k, &v, &att, &spans, &attention_dims, &batch],
                Grid::Tokens { per: heads as u32 },
            ));
            linear(&mut ops, &layer.o, &att, &x, true);
            add_norm(&mut ops, &layer.attn_norm);
            linear(&mut ops, &layer.up, &x, &up, false);
            ops.push(op(
                &gelu_p,
                &[&up, &gelu_dims, &batch],
                Grid::Gelu {
                    width4: (f / 4) as u32,
                },
            ));
            linear(&mut ops, &layer.down, &up, &x, true);
            add_norm(&mut ops, &layer.out_norm);
        }
        let pool_dims = uniform(&words(&[h as u32, 0, 0, 0]));
        ops.push(op(
            &pool_p,
            &[&x, &out, &texts, &pool_dims, &batch],
            Grid::Texts { per: h as u32 },
        ));
        ops.push(op(
            &unit_p,
            &[&out, &pool_dims, &batch],
            Grid::Texts { per: 1 },
        ));
        Ok(Self {
            model,
            gpu,
            x,
            spans,
            texts,
            batch,
            out,
            ops,
            staging: Mutex::new(()),
            weight_bytes: weight_bytes.get(),
        })
    }

    /// The model whose layers it runs (and whose tables and tokenizer it
    /// uses).
    pub fn model(&self) -> &Arc<BertModel> {
        &self.model
    }

    /// Bytes of weights on the device.
    pub fn weight_bytes(&self) -> u64 {
        self.weight_bytes
    }

    /// Dispatches a submission records.
    pub fn dispatches(&self) -> usize {
        self.ops.len()
    }

    /// The normalised embeddings of `inputs` (each a text's ids,
    /// `[CLS] … [SEP]`), in order: packed into submissions of at most
    /// [`BATCH_TOKENS`] tokens, whole texts each.
    ///
    /// # Errors
    /// [`GpuBertError::Input`] (before anything runs) for an input
    /// [`BertModel::check`] refuses; [`GpuBertError::Gpu`] when the device
    /// fails.
    pub async fn embed(&self, inputs: &[&[u32]]) -> Result<Vec<Vec<f32>>, GpuBertError> {
        for ids in inputs {
            self.model.check(ids)?;
        }
        let mut vectors = Vec::with_capacity(inputs.len());
        let mut at = 0;
        while at < inputs.len() {
            // Whole texts while they fit (a checked text alone always
            // does: `new` refused a longer limit).
            let (mut end, mut tokens) = (at, 0);
            while end < inputs.len() && tokens + inputs[end].len() <= BATCH_TOKENS {
                tokens += inputs[end].len();
                end += 1;
            }
            vectors.extend(self.run(&inputs[at..end], tokens).await?);
            at = end;
        }
        Ok(vectors)
    }

    /// One submission: `inputs` (checked, `tokens` in all) packed, run,
    /// read back.
    async fn run(&self, inputs: &[&[u32]], tokens: usize) -> Result<Vec<Vec<f32>>, GpuError> {
        let h = self.model.config.hidden_size;
        let mut x = vec![0f32; tokens * h];
        let mut spans = Vec::with_capacity(2 * tokens);
        let mut texts = Vec::with_capacity(2 * inputs.len());
        let mut first = 0;
        for ids in inputs {
            let end = first + ids.len();
            self.model.embeddings(ids, &mut x[first * h..end * h]);
            for _ in 0..ids.len() {
                spans.extend([first as u32, end as u32]);
            }
            texts.extend([first as u32, end as u32]);
            first = end;
        }
        let (t, n) = (tokens as u32, inputs.len() as u32);
        let read = {
            let _one = self.staging.lock().unwrap_or_else(PoisonError::into_inner);
            let q = self.gpu.queue();
            self.gpu.write(&self.x, &x);
            q.write_buffer(&self.spans, 0, &words(&spans));
            q.write_buffer(&self.texts, 0, &words(&texts));
            q.write_buffer(&self.batch, 0, &words(&[t, n, 0, 0]));
            self.gpu.submit_copying(
                |pass| {
                    for op in &self.ops {
                        let (gx, gy) = op.grid.groups(t, n);
                        pass.set_pipeline(&op.pipeline);
                        pass.set_bind_group(0, &op.bind, &[]);
                        pass.dispatch_workgroups(gx, gy, 1);
                    }
                },
                &self.out,
                inputs.len() * h,
            )
        };
        let values = self.gpu.read_back(read, inputs.len() * h).await?;
        Ok(values.chunks_exact(h).map(<[f32]>::to_vec).collect())
    }
}
