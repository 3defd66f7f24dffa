//! The llama model on burn: weights from the GGUF file, one forward pass for
//! any number of new tokens with a KV cache (prefill, then decode).
//!
//! Weights are dequantized to f32 for now (SmolLM2-135M: 540 MB); keeping
//! them quantized on the device is the next step. The layout facts are the
//! ones [`crate::reference`] established against llama.cpp: ggml weights are
//! `[out, in]` row-major (transposed once here), `attn_q`/`attn_k` rows are
//! permuted for RoPE on adjacent pairs, the output matrix is tied to the
//! token embedding.

use burn::tensor::quantization::{QuantScheme, QuantStore, QuantValue};
use burn::tensor::{activation, Bool, Device, Int, Tensor, TensorData};

use crate::gguf::{Gguf, GgufError};
use crate::reference::{Config, QkvBias};

struct Layer {
    attn_norm: Tensor<1>,
    wq: Tensor<2>,
    wk: Tensor<2>,
    wv: Tensor<2>,
    /// q, k and v biases (qwen2).
    bias: Option<[Tensor<1>; 3]>,
    wo: Tensor<2>,
    ffn_norm: Tensor<1>,
    gate: Tensor<2>,
    up: Tensor<2>,
    down: Tensor<2>,
}

/// How the matmul weights are held on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightFormat {
    /// Dequantized from the GGUF to f32 (4 bytes per weight).
    #[default]
    F32,
    /// Requantized with burn's symmetric 8-bit scheme, one f32 scale per
    /// block of 32, packed in u32 words (what WebGPU needs); dequantized
    /// inside burn's matmul.
    Q8Block32,
}

impl WeightFormat {
    fn apply(self, t: Tensor<2>) -> Tensor<2> {
        match self {
            WeightFormat::F32 => t,
            WeightFormat::Q8Block32 => t.quantize_dynamic(
                &QuantScheme::default()
                    .with_value(QuantValue::Q8S)
                    .with_store(QuantStore::PackedU32(0))
                    .per_block([32], burn::tensor::quantization::ScaleDtype::F32),
            ),
        }
    }
}

/// The model's weights on a burn device.
pub struct LlamaModel {
    /// Hyper-parameters.
    pub config: Config,
    device: Device,
    embed: Tensor<2>,
    output: Tensor<2>,
    norm: Tensor<1>,
    layers: Vec<Layer>,
    inv_freq: Vec<f32>,
}

impl std::fmt::Debug for LlamaModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlamaModel")
            .field("config", &self.config)
            .finish()
    }
}

/// The KV cache of one sequence.
#[derive(Default)]
pub struct Cache {
    k: Vec<Tensor<3>>,
    v: Vec<Tensor<3>>,
    len: usize,
}

impl Cache {
    /// Tokens already in the cache.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True before the first token.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// `(columns, rows)` of a 2-dimensional ggml tensor.
fn dims2(g: &Gguf<'_>, name: &str) -> Result<(usize, usize), GgufError> {
    let t = g.tensor(name)?;
    match t.dims.as_slice() {
        [c, r] => Ok((*c as usize, *r as usize)),
        _ => Err(GgufError::BadTensor {
            name: name.into(),
            reason: format!("expected 2 dimensions, got {:?}", t.dims),
        }),
    }
}

fn tensor2(g: &Gguf<'_>, name: &str, device: &Device) -> Result<Tensor<2>, GgufError> {
    let (cols, rows) = dims2(g, name)?;
    let data = g.dequantize(name)?;
    Ok(Tensor::from_data(
        TensorData::new(data, [rows, cols]),
        device,
    ))
}

/// A ggml `[out, in]` matrix as a row-major `[in, out]` tensor.
fn tensor2_transposed(g: &Gguf<'_>, name: &str, device: &Device) -> Result<Tensor<2>, GgufError> {
    let (cols, rows) = dims2(g, name)?;
    let data = g.dequantize(name)?;
    let mut out = vec![0f32; data.len()];
    for (r, row) in data.chunks_exact(cols).enumerate() {
        for (c, v) in row.iter().enumerate() {
            out[c * rows + r] = *v;
        }
    }
    Ok(Tensor::from_data(
        TensorData::new(out, [cols, rows]),
        device,
    ))
}

fn tensor1(g: &Gguf<'_>, name: &str, device: &Device) -> Result<Tensor<1>, GgufError> {
    let data = g.dequantize(name)?;
    let n = data.len();
    Ok(Tensor::from_data(TensorData::new(data, [n]), device))
}

fn rmsnorm(x: Tensor<2>, w: &Tensor<1>, eps: f32) -> Tensor<2> {
    let ms = x.clone().powf_scalar(2.0).mean_dim(1);
    x * (ms + eps).sqrt().recip() * w.clone().unsqueeze::<2>()
}

impl LlamaModel {
    /// Loads the weights of a llama-architecture GGUF onto `device`.
    ///
    /// # Errors
    /// Missing tensors or metadata, unsupported tensor types or shapes.
    pub fn from_gguf(g: &Gguf<'_>, device: &Device) -> Result<Self, GgufError> {
        Self::from_gguf_with_progress(g, device, &mut |_, _| {})
    }

    /// [`LlamaModel::from_gguf`], calling `progress(done, total)` as layers
    /// are loaded.
    ///
    /// # Errors
    /// Missing tensors or metadata, unsupported tensor types or shapes.
    pub fn from_gguf_with_progress(
        g: &Gguf<'_>,
        device: &Device,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self, GgufError> {
        Self::from_gguf_as(g, device, WeightFormat::F32, progress)
    }

    /// [`LlamaModel::from_gguf_with_progress`] with the matmul weights held
    /// as `format`.
    ///
    /// # Errors
    /// Missing tensors or metadata, unsupported tensor types or shapes.
    pub fn from_gguf_as(
        g: &Gguf<'_>,
        device: &Device,
        format: WeightFormat,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self, GgufError> {
        let config = Config::from_gguf(g)?;
        if config.arch == crate::reference::Arch::Gemma3 {
            return Err(GgufError::Metadata {
                key: "general.architecture".into(),
                reason: "gemma3 runs on the quantized CPU engine (--device cpu), not on burn"
                    .into(),
            });
        }
        // ggml stores [out, in]; x·Wᵀ needs [in, out].
        let w = |name: String| match format {
            WeightFormat::F32 => tensor2(g, &name, device).map(|t| t.transpose()),
            // Quantized blocks run along the innermost dimension of a
            // row-major tensor: transpose on the host first.
            _ => tensor2_transposed(g, &name, device).map(|t| format.apply(t)),
        };
        let kv_dim = config.kv_heads * (config.dim / config.heads);
        let mut layers = Vec::with_capacity(config.layers);
        for l in 0..config.layers {
            let p = |s: &str| format!("blk.{l}.{s}.weight");
            let vector = |v: Vec<f32>| {
                let n = v.len();
                Tensor::<1>::from_data(TensorData::new(v, [n]), device)
            };
            layers.push(Layer {
                attn_norm: tensor1(g, &p("attn_norm"), device)?,
                wq: w(p("attn_q"))?,
                wk: w(p("attn_k"))?,
                wv: w(p("attn_v"))?,
                bias: QkvBias::from_gguf(g, l, config.dim, kv_dim)?
                    .map(|b| [vector(b.q), vector(b.k), vector(b.v)]),
                wo: w(p("attn_output"))?,
                ffn_norm: tensor1(g, &p("ffn_norm"), device)?,
                gate: w(p("ffn_gate"))?,
                up: w(p("ffn_up"))?,
                down: w(p("ffn_down"))?,
            });
            progress(l + 1, config.layers + 1);
        }
        let embed = tensor2(g, "token_embd.weight", device)?;
        let output = match g.tensor("output.weight") {
            Ok(_) => w("output.weight".into())?,
            Err(_) => embed.clone().transpose(),
        };
        progress(config.layers + 1, config.layers + 1);
        let hd = config.dim / config.heads;
        let inv_freq = (0..hd / 2)
            .map(|i| config.rope_base.powf(-2.0 * i as f32 / hd as f32))
            .collect();
        Ok(Self {
            norm: tensor1(g, "output_norm.weight", device)?,
            device: device.clone(),
            embed,
            output,
            layers,
            inv_freq,
            config,
        })
    }

    /// `[T, hd/2]` cos and sin for positions `start..start + t`.
    fn rope_tables(&self, start: usize, t: usize) -> (Tensor<3>, Tensor<3>) {
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(t * half);
        let mut sin = Vec::with_capacity(t * half);
        for p in start..start + t {
            for f in &self.inv_freq {
                let (s, c) = (p as f32 * f).sin_cos();
                cos.push(c);
                sin.push(s);
            }
        }
        let mk = |v| Tensor::<3>::from_data(TensorData::new(v, [1, t, half]), &self.device);
        (mk(cos), mk(sin))
    }

    /// RoPE on `x` (`[heads, T, hd]`): adjacent pairs, or with `halves`
    /// element `i` with `i + hd/2` (see [`crate::reference::rotate`]).
    fn rope(x: Tensor<3>, cos: &Tensor<3>, sin: &Tensor<3>, halves: bool) -> Tensor<3> {
        let [h, t, hd] = x.dims();
        // The pair's two members along axis 3 (adjacent) or axis 2 (halves).
        let (shape, axis) = if halves {
            ([h, t, 2, hd / 2], 2)
        } else {
            ([h, t, hd / 2, 2], 3)
        };
        let pairs = x.reshape(shape);
        let x0 = pairs.clone().narrow(axis, 0, 1).reshape([h, t, hd / 2]);
        let x1 = pairs.narrow(axis, 1, 1).reshape([h, t, hd / 2]);
        let r0 = x0.clone() * cos.clone() - x1.clone() * sin.clone();
        let r1 = x0 * sin.clone() + x1 * cos.clone();
        let mut one = shape;
        one[axis] = 1;
        Tensor::cat(vec![r0.reshape(one), r1.reshape(one)], axis).reshape([h, t, hd])
    }

    /// Runs `tokens` (at positions `cache.len()..`) and returns their logits,
    /// `[tokens.len(), vocab]`.
    pub fn forward(&self, tokens: &[u32], cache: &mut Cache) -> Tensor<2> {
        let c = &self.config;
        let (t, dim) = (tokens.len(), c.dim);
        let hd = dim / c.heads;
        let group = c.heads / c.kv_heads;
        let start = cache.len;
        let ids: Vec<i32> = tokens
            .iter()
            .map(|&id| id.min(c.vocab.saturating_sub(1) as u32) as i32)
            .collect();
        let ids = Tensor::<1, Int>::from_data(TensorData::new(ids, [t]), &self.device);
        let mut x = self.embed.clone().select(0, ids);
        let (cos, sin) = self.rope_tables(start, t);
        let total = start + t;
        let mask =
            Tensor::<2, Bool>::tril_mask([t, total], start as i64, &self.device).unsqueeze::<3>();
        let scale = 1.0 / (hd as f32).sqrt();
        for (l, layer) in self.layers.iter().enumerate() {
            let h = rmsnorm(x.clone(), &layer.attn_norm, c.eps);
            let heads = |w: &Tensor<2>, bias: Option<&Tensor<1>>, n: usize| {
                let y = h.clone().matmul(w.clone());
                let y = match bias {
                    Some(b) => y + b.clone().unsqueeze::<2>(),
                    None => y,
                };
                y.reshape([t, n, hd]).swap_dims(0, 1)
            };
            let [bq, bk, bv] = match &layer.bias {
                Some([q, k, v]) => [Some(q), Some(k), Some(v)],
                None => [None; 3],
            };
            let halves = c.arch.rope_halves();
            let q = Self::rope(heads(&layer.wq, bq, c.heads), &cos, &sin, halves);
            let k = Self::rope(heads(&layer.wk, bk, c.kv_heads), &cos, &sin, halves);
            let v = heads(&layer.wv, bv, c.kv_heads);
            let (k, v) = if l < cache.k.len() {
                let k = Tensor::cat(vec![cache.k[l].clone(), k], 1);
                let v = Tensor::cat(vec![cache.v[l].clone(), v], 1);
                cache.k[l] = k.clone();
                cache.v[l] = v.clone();
                (k, v)
            } else {
                cache.k.push(k.clone());
                cache.v.push(v.clone());
                (k, v)
            };
            // Grouped-query attention: query head h reads kv head h / group.
            let expand = |x: Tensor<3>| {
                x.unsqueeze_dim::<4>(1)
                    .repeat_dim(1, group)
                    .reshape([c.heads, total, hd])
            };
            let (k, v) = (expand(k), expand(v));
            let scores = q.matmul(k.swap_dims(1, 2)) * scale;
            let probs = activation::softmax(scores.mask_fill(mask.clone(), f32::NEG_INFINITY), 2);
            let att = probs.matmul(v).swap_dims(0, 1).reshape([t, dim]);
            x = x + att.matmul(layer.wo.clone());
            let h = rmsnorm(x.clone(), &layer.ffn_norm, c.eps);
            let ff =
                activation::silu(h.clone().matmul(layer.gate.clone())) * h.matmul(layer.up.clone());
            x = x + ff.matmul(layer.down.clone());
        }
        cache.len = total;
        rmsnorm(x, &self.norm, c.eps).matmul(self.output.clone())
    }

    /// A decoding session for [`crate::generate`].
    pub fn session(&self) -> BurnSession<'_> {
        BurnSession {
            model: self,
            cache: Cache::default(),
        }
    }
}

/// A read back from the device failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("reading the logits from the device failed: {0}")]
pub struct ReadError(pub String);

/// One sequence on a [`LlamaModel`].
pub struct BurnSession<'m> {
    model: &'m LlamaModel,
    cache: Cache,
}

impl BurnSession<'_> {
    /// Tokens in the cache.
    pub fn len(&self) -> usize {
        self.cache.len
    }

    /// True before the first token.
    pub fn is_empty(&self) -> bool {
        self.cache.len == 0
    }

    /// Longest sequence the model takes.
    pub fn context_len(&self) -> usize {
        self.model.config.context
    }

    /// The logits after the last of `tokens`, still on the device.
    fn last_logits(&mut self, tokens: &[u32]) -> Tensor<1> {
        let logits = self.model.forward(tokens, &mut self.cache);
        let [t, vocab] = logits.dims();
        logits.narrow(0, t - 1, 1).reshape([vocab])
    }

    /// Runs several tokens at once (prefill, or one token to decode) and
    /// returns the logits after the last. Reads back synchronously, so not
    /// in a browser: use [`BurnSession::forward_async`] there.
    ///
    /// # Errors
    /// The device failed to run or read back.
    pub fn forward(&mut self, tokens: &[u32]) -> Result<Vec<f32>, ReadError> {
        if tokens.is_empty() {
            return Ok(Vec::new());
        }
        let data = self
            .last_logits(tokens)
            .try_into_data()
            .map_err(|e| ReadError(e.to_string()))?;
        data.try_into_vec::<f32>()
            .map_err(|e| ReadError(format!("{e:?}")))
    }

    /// [`BurnSession::forward`] with an asynchronous read back: the only
    /// kind WebGPU allows.
    ///
    /// # Errors
    /// The device failed to run or read back.
    pub async fn forward_async(&mut self, tokens: &[u32]) -> Result<Vec<f32>, ReadError> {
        if tokens.is_empty() {
            return Ok(Vec::new());
        }
        let data = self
            .last_logits(tokens)
            .into_data_async()
            .await
            .map_err(|e| ReadError(e.to_string()))?;
        data.try_into_vec::<f32>()
            .map_err(|e| ReadError(format!("{e:?}")))
    }
}

impl crate::generate::Decoder for BurnSession<'_> {
    fn context_len(&self) -> usize {
        self.model.config.context
    }
    fn step(&mut self, token: u32) -> Result<Vec<f32>, crate::generate::GenerateError> {
        self.prefill(&[token])
    }
    fn prefill(&mut self, tokens: &[u32]) -> Result<Vec<f32>, crate::generate::GenerateError> {
        self.forward(tokens)
            .map_err(|e| crate::generate::GenerateError::Device(e.0))
    }
}
