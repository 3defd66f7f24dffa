//! A BERT sentence encoder (all-MiniLM-L6-v2: 6 layers, 384 wide, 12
//! heads): token, position and type embeddings, post-norm encoder layers
//! with exact (erf) GELU, mean pooling over the tokens, L2 normalisation;
//! the weights from a Hugging Face `model.safetensors` (f32) and the
//! architecture from its `config.json`. The same code natively and in the
//! tab (the f32 dot products of `quant::simd`: AVX2 natively, SIMD128 in
//! wasm); natively a batch's texts run on the cores in parallel.
//!
//! Checked against sentence-transformers' own vectors (`tests/minilm.rs`).
//! Each text runs alone (no padding), which is what a padded batch with its
//! attention mask computes.

use safetensors::SafeTensors;
use serde::Deserialize;

use crate::wordpiece::{Encoded, WordPiece, WordPieceError};

/// Why an encoder cannot be built or run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BertError {
    /// `config.json` is not a BERT configuration this encoder runs.
    #[error("config.json: {0}")]
    Config(String),
    /// The weights file cannot be read.
    #[error("model.safetensors: {0}")]
    Weights(String),
    /// A tensor is missing, or not f32 of the expected shape.
    #[error("model.safetensors: {name}: {reason}")]
    Tensor {
        /// The tensor.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The tokenizer cannot be read.
    #[error(transparent)]
    Tokenizer(#[from] WordPieceError),
    /// A token id outside the vocabulary, or too many tokens.
    #[error("input: {0}")]
    Input(String),
}

/// The architecture (`config.json`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct BertConfig {
    /// Width.
    pub hidden_size: usize,
    /// Layers.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// FFN width.
    pub intermediate_size: usize,
    /// Positions the embedding table has.
    pub max_position_embeddings: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Token types.
    #[serde(default = "two")]
    pub type_vocab_size: usize,
    /// `gelu` (erf) is the one this encoder runs.
    #[serde(default = "gelu_name")]
    pub hidden_act: String,
    /// LayerNorm's epsilon.
    #[serde(default = "eps")]
    pub layer_norm_eps: f64,
}

fn two() -> usize {
    2
}
fn gelu_name() -> String {
    "gelu".into()
}
fn eps() -> f64 {
    1e-12
}

/// Weight bytes a [`Linear`] block holds: half a typical 32 KiB L1.
const ROW_BLOCK_BYTES: usize = 16 << 10;

/// `y = W·x + b` for a `[out, in]` row-major weight.
#[derive(Debug, Clone)]
pub(crate) struct Linear {
    pub(crate) w: Vec<f32>,
    pub(crate) b: Vec<f32>,
    pub(crate) rows: usize,
    pub(crate) cols: usize,
}

impl Linear {
    /// `out` (tokens × rows) for `x` (tokens × cols): a block of weight
    /// rows at a time against every token, so the block stays in the L1
    /// cache while the tokens pass (the same dot products, in the same
    /// order, as row by row).
    fn forward(&self, x: &[f32], out: &mut [f32]) {
        let k = crate::quant::simd::best();
        let block = (ROW_BLOCK_BYTES / (4 * self.cols.max(1))).max(1);
        let mut at = 0;
        while at < self.rows {
            let n = block.min(self.rows - at);
            let w = &self.w[at * self.cols..(at + n) * self.cols];
            // Two tokens at a time: each row read once for both.
            let mut xs = x.chunks_exact(2 * self.cols);
            let mut outs = out.chunks_exact_mut(2 * self.rows);
            for (x, o) in (&mut xs).zip(&mut outs) {
                let (x0, x1) = x.split_at(self.cols);
                let (o0, o1) = o.split_at_mut(self.rows);
                (k.f32_dots2)(
                    [x0, x1],
                    w,
                    self.cols,
                    [&mut o0[at..at + n], &mut o1[at..at + n]],
                );
            }
            if let (Some(x), Some(o)) = (
                xs.remainder().get(..self.cols),
                outs.into_remainder().get_mut(at..at + n),
            ) {
                (k.f32_dots)(x, w, self.cols, o);
            }
            at += n;
        }
        for o in out.chunks_exact_mut(self.rows) {
            o.iter_mut().zip(&self.b).for_each(|(o, b)| *o += b);
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Norm {
    pub(crate) w: Vec<f32>,
    pub(crate) b: Vec<f32>,
}

impl Norm {
    /// LayerNorm of each row of `x`, in place.
    fn apply(&self, x: &mut [f32], eps: f32) {
        let n = self.w.len();
        for row in x.chunks_exact_mut(n) {
            let mean = row.iter().sum::<f32>() / n as f32;
            let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n as f32;
            let inv = 1.0 / (var + eps).sqrt();
            for ((v, w), b) in row.iter_mut().zip(&self.w).zip(&self.b) {
                *v = (*v - mean) * inv * w + b;
            }
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Layer {
    pub(crate) q: Linear,
    pub(crate) k: Linear,
    pub(crate) v: Linear,
    pub(crate) o: Linear,
    pub(crate) attn_norm: Norm,
    pub(crate) up: Linear,
    pub(crate) down: Linear,
    pub(crate) out_norm: Norm,
}

/// Exact GELU, `x·Φ(x) = x/2·(1 + erf(x/√2))`, on a whole vector: erf by
/// Abramowitz and Stegun's 7.1.26 (within 1.5·10⁻⁷ of it), its `exp(−z²)`
/// through the SIMD `exp` kernel (`e` is scratch of the same length).
fn gelu(x: &mut [f32], e: &mut [f32], exp: fn(&mut [f32], f32)) {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        0.254_829_6,
        -0.284_496_74,
        1.421_413_7,
        -1.453_152_1,
        1.061_405_4,
    ];
    let e = &mut e[..x.len()];
    for (e, &v) in e.iter_mut().zip(x.iter()) {
        let z = v * std::f32::consts::FRAC_1_SQRT_2;
        *e = -z * z;
    }
    exp(e, 0.0);
    for (v, &e) in x.iter_mut().zip(e.iter()) {
        let z = (*v * std::f32::consts::FRAC_1_SQRT_2).abs();
        let t = 1.0 / (1.0 + P * z);
        let poly = t * (A[0] + t * (A[1] + t * (A[2] + t * (A[3] + t * A[4]))));
        let erf = (1.0 - poly * e).copysign(*v);
        *v = 0.5 * *v * (1.0 + erf);
    }
}

/// The encoder with its tokenizer.
#[derive(Debug, Clone)]
pub struct BertModel {
    /// The architecture.
    pub config: BertConfig,
    /// The tokenizer.
    pub tokenizer: WordPiece,
    /// Tokens a text may take, `[CLS]` and `[SEP]` included (longer ones
    /// are cut, as sentence-transformers does): 256 for MiniLM.
    pub max_tokens: usize,
    word: Vec<f32>,
    position: Vec<f32>,
    token_type: Vec<f32>,
    pub(crate) embed_norm: Norm,
    pub(crate) layers: Vec<Layer>,
}

fn tensor(st: &SafeTensors<'_>, name: &str, shape: &[usize]) -> Result<Vec<f32>, BertError> {
    let bad = |reason: String| BertError::Tensor {
        name: name.to_owned(),
        reason,
    };
    let t = st.tensor(name).map_err(|e| bad(e.to_string()))?;
    if t.dtype() != safetensors::Dtype::F32 {
        return Err(bad(format!("{:?}, not F32", t.dtype())));
    }
    if t.shape() != shape {
        return Err(bad(format!("shape {:?}, not {shape:?}", t.shape())));
    }
    Ok(t.data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

impl BertModel {
    /// Builds the encoder from `config.json`, `model.safetensors` and
    /// `tokenizer.json`; `max_tokens` is the pipeline's limit (MiniLM's
    /// `sentence_bert_config.json`: 256).
    ///
    /// # Errors
    /// [`BertError`] for a configuration it does not run (another
    /// activation, a width the heads do not divide, more tokens than
    /// positions), a missing or misshapen tensor, or a bad tokenizer.
    pub fn from_files(
        config: &[u8],
        weights: &[u8],
        tokenizer: &[u8],
        max_tokens: usize,
    ) -> Result<Self, BertError> {
        let c: BertConfig =
            serde_json::from_slice(config).map_err(|e| BertError::Config(e.to_string()))?;
        if c.hidden_act != "gelu" {
            return Err(BertError::Config(format!(
                "activation {}, not gelu",
                c.hidden_act
            )));
        }
        if c.num_attention_heads == 0 || !c.hidden_size.is_multiple_of(c.num_attention_heads) {
            return Err(BertError::Config(format!(
                "{} heads do not divide width {}",
                c.num_attention_heads, c.hidden_size
            )));
        }
        if max_tokens < 2 || max_tokens > c.max_position_embeddings {
            return Err(BertError::Config(format!(
                "{max_tokens} tokens, the model has {} positions",
                c.max_position_embeddings
            )));
        }
        let tokenizer = WordPiece::from_json(tokenizer)?;
        let st =
            SafeTensors::deserialize(weights).map_err(|e| BertError::Weights(e.to_string()))?;
        let (h, f) = (c.hidden_size, c.intermediate_size);
        let linear = |name: &str, rows: usize, cols: usize| -> Result<Linear, BertError> {
            Ok(Linear {
                w: tensor(&st, &format!("{name}.weight"), &[rows, cols])?,
                b: tensor(&st, &format!("{name}.bias"), &[rows])?,
                rows,
                cols,
            })
        };
        let norm = |name: &str| -> Result<Norm, BertError> {
            Ok(Norm {
                w: tensor(&st, &format!("{name}.weight"), &[h])?,
                b: tensor(&st, &format!("{name}.bias"), &[h])?,
            })
        };
        let layers = (0..c.num_hidden_layers)
            .map(|l| {
                let p = format!("encoder.layer.{l}");
                Ok(Layer {
                    q: linear(&format!("{p}.attention.self.query"), h, h)?,
                    k: linear(&format!("{p}.attention.self.key"), h, h)?,
                    v: linear(&format!("{p}.attention.self.value"), h, h)?,
                    o: linear(&format!("{p}.attention.output.dense"), h, h)?,
                    attn_norm: norm(&format!("{p}.attention.output.LayerNorm"))?,
                    up: linear(&format!("{p}.intermediate.dense"), f, h)?,
                    down: linear(&format!("{p}.output.dense"), h, f)?,
                    out_norm: norm(&format!("{p}.output.LayerNorm"))?,
                })
            })
            .collect::<Result<_, BertError>>()?;
        Ok(Self {
            word: tensor(&st, "embeddings.word_embeddings.weight", &[c.vocab_size, h])?,
            position: tensor(
                &st,
                "embeddings.position_embeddings.weight",
                &[c.max_position_embeddings, h],
            )?,
            token_type: tensor(
                &st,
                "embeddings.token_type_embeddings.weight",
                &[c.type_vocab_size, h],
            )?,
            embed_norm: norm("embeddings.LayerNorm")?,
            layers,
            tokenizer,
            max_tokens,
            config: c,
        })
    }

    /// Output dimensions.
    pub fn dimensions(&self) -> usize {
        self.config.hidden_size
    }

    /// `text`'s ids, cut to [`BertModel::max_tokens`].
    pub fn tokenize(&self, text: &str) -> Encoded {
        self.tokenizer.encode(text, self.max_tokens)
    }

    /// Whether `ids` is one input the encoder takes.
    ///
    /// # Errors
    /// [`BertError::Input`] for no ids, more than `max_tokens`, or an id
    /// outside the vocabulary.
    pub fn check(&self, ids: &[u32]) -> Result<(), BertError> {
        let t = ids.len();
        if t == 0 || t > self.max_tokens {
            return Err(BertError::Input(format!(
                "{t} tokens; 1 to {} are taken",
                self.max_tokens
            )));
        }
        if let Some(bad) = ids
            .iter()
            .find(|&&id| id as usize >= self.config.vocab_size)
        {
            return Err(BertError::Input(format!(
                "token id {bad} is outside the vocabulary of {}",
                self.config.vocab_size
            )));
        }
        Ok(())
    }

    /// The rows of checked `ids` before the first LayerNorm: word,
    /// position and token-type (0) embeddings added, into `x` (a row per
    /// id).
    pub(crate) fn embeddings(&self, ids: &[u32], x: &mut [f32]) {
        let h = self.config.hidden_size;
        for (i, (row, &id)) in x.chunks_exact_mut(h).zip(ids).enumerate() {
            let (w, p, ty) = (
                &self.word[id as usize * h..][..h],
                &self.position[i * h..][..h],
                &self.token_type[..h],
            );
            for (j, v) in row.iter_mut().enumerate() {
                *v = w[j] + ty[j] + p[j];
            }
        }
    }

    /// The normalised embedding of one text's ids (`[CLS] … [SEP]`).
    ///
    /// # Errors
    /// [`BertError::Input`] for no ids, more than `max_tokens`, or an id
    /// outside the vocabulary.
    pub fn embed_ids(&self, ids: &[u32]) -> Result<Vec<f32>, BertError> {
        let c = &self.config;
        let (h, t) = (c.hidden_size, ids.len());
        self.check(ids)?;
        let eps = c.layer_norm_eps as f32;
        let mut x = vec![0f32; t * h];
        self.embeddings(ids, &mut x);
        self.embed_norm.apply(&mut x, eps);
        let heads = c.num_attention_heads;
        let hd = h / heads;
        let scale = 1.0 / (hd as f32).sqrt();
        let (mut q, mut k, mut v) = (vec![0f32; t * h], vec![0f32; t * h], vec![0f32; t * h]);
        let mut att = vec![0f32; t * h];
        let mut o = vec![0f32; t * h];
        let mut up = vec![0f32; t * c.intermediate_size];
        let mut scores = vec![0f32; t];
        let kernels = crate::quant::simd::best();
        let (k_dots, exp, weighted) = (kernels.f32_dots, kernels.f32_exp, kernels.f32_weighted_sum);
        let mut e = vec![0f32; t * c.intermediate_size];
        for layer in &self.layers {
            layer.q.forward(&x, &mut q);
            layer.k.forward(&x, &mut k);
            layer.v.forward(&x, &mut v);
            for head in 0..heads {
                let at = head * hd;
                for i in 0..t {
                    // Every token sees every token (an encoder).
                    k_dots(&q[i * h + at..][..hd], &k[at..], h, &mut scores);
                    scores.iter_mut().for_each(|s| *s *= scale);
                    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    exp(&mut scores, max);
                    let sum: f32 = scores.iter().sum();
                    scores.iter_mut().for_each(|s| *s /= sum);
                    let out = &mut att[i * h + at..][..hd];
                    out.fill(0.0);
                    weighted(&scores, &v[at..], h, out);
                }
            }
            layer.o.forward(&att, &mut o);
            x.iter_mut().zip(&o).for_each(|(x, o)| *x += o);
            layer.attn_norm.apply(&mut x, eps);
            layer.up.forward(&x, &mut up);
            gelu(&mut up, &mut e, exp);
            layer.down.forward(&up, &mut o);
            x.iter_mut().zip(&o).for_each(|(x, o)| *x += o);
            layer.out_norm.apply(&mut x, eps);
        }
        // Mean over the tokens, then unit length.
        let mut pooled = vec![0f32; h];
        for row in x.chunks_exact(h) {
            pooled.iter_mut().zip(row).for_each(|(p, v)| *p += v);
        }
        pooled.iter_mut().for_each(|p| *p /= t as f32);
        let norm = pooled.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
        pooled.iter_mut().for_each(|p| *p /= norm);
        Ok(pooled)
    }

    /// The normalised embeddings of `texts`, in order, with how many pieces
    /// each lost to the limit; natively the texts run on the cores at once.
    ///
    /// # Errors
    /// As [`BertModel::embed_ids`] (not for text input, whose ids always
    /// fit).
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<(Vec<f32>, Encoded)>, BertError> {
        let run = |text: &&str| {
            let enc = self.tokenize(text);
            self.embed_ids(&enc.ids).map(|v| (v, enc))
        };
        #[cfg(not(target_arch = "wasm32"))]
        {
            use rayon::prelude::*;
            texts.par_iter().map(run).collect()
        }
        #[cfg(target_arch = "wasm32")]
        {
            texts.iter().map(run).collect()
        }
    }
}
