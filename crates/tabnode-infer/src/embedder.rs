//! A node's sentence-embedding model under its catalog id, answering the
//! relay's [`EmbedRequest`] batches: the same checks and rows natively
//! (the batch's inputs on all cores) and in a tab's worker (one input at a
//! time, yielding between them so a generation keeps its pace), or, with
//! `Embedder::use_gpu` (feature `gpu`), a whole batch in one GPU submission
//! (the WGSL encoder, `gpu::GpuBert`).

pub use tabnode_core::infer::EMBEDDER_FILES as FILES;
use tabnode_core::infer::{EmbedInput, EmbedRequest, EmbedResult, MAX_EMBED_INPUTS};
use tabnode_core::{ErrorCode, Response};

use std::sync::Arc;

use crate::bert::{BertError, BertModel};
use crate::wordpiece::Encoded;

/// One input's answer: its vector, the tokens it took, the pieces it lost
/// to the model's limit.
pub type Row = (Vec<f32>, u32, u32);

/// The model a node embeds with, under its catalog id.
#[derive(Debug)]
pub struct Embedder {
    id: String,
    model: Arc<BertModel>,
    #[cfg(feature = "gpu")]
    gpu: Option<crate::gpu::GpuBert>,
}

impl Embedder {
    /// Builds the encoder from the contents of [`FILES`], in that order.
    ///
    /// # Errors
    /// [`BertError`] for files the encoder refuses, or a
    /// `sentence_bert_config.json` without a `max_seq_length`.
    pub fn from_files(id: &str, files: [&[u8]; 4]) -> Result<Self, BertError> {
        let [config, weights, tokenizer, limits] = files;
        let limits: serde_json::Value = serde_json::from_slice(limits)
            .map_err(|e| BertError::Config(format!("sentence_bert_config.json: {e}")))?;
        let max_tokens = limits["max_seq_length"]
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| {
                BertError::Config("sentence_bert_config.json: no max_seq_length".into())
            })?;
        Ok(Self {
            id: id.to_owned(),
            model: Arc::new(BertModel::from_files(
                config, weights, tokenizer, max_tokens,
            )?),
            #[cfg(feature = "gpu")]
            gpu: None,
        })
    }

    /// Answers from now on with the encoder on `gpu` (its layers uploaded
    /// now; the CPU copy stays for the tokenizer and embedding tables).
    ///
    /// # Errors
    /// [`crate::gpu::GpuBertError`] for a model the GPU kernels do not
    /// take.
    #[cfg(feature = "gpu")]
    pub fn use_gpu(&mut self, gpu: crate::gpu::Gpu) -> Result<(), crate::gpu::GpuBertError> {
        self.gpu = Some(crate::gpu::GpuBert::new(gpu, Arc::clone(&self.model))?);
        Ok(())
    }

    /// Answers from now on on the CPU (the GPU's copy dropped).
    #[cfg(feature = "gpu")]
    pub fn use_cpu(&mut self) {
        self.gpu = None;
    }

    /// The encoder on the GPU, when [`Embedder::use_gpu`] put it there.
    #[cfg(feature = "gpu")]
    pub fn gpu(&self) -> Option<&crate::gpu::GpuBert> {
        self.gpu.as_ref()
    }

    /// Answers a batch with the GPU encoder in one go (of at most
    /// [`crate::gpu::BATCH_TOKENS`] tokens a submission); `None` when
    /// there is none. A device failure is answered `Busy` (the relay
    /// sends the batch elsewhere), bad input `Invalid`.
    #[cfg(feature = "gpu")]
    pub async fn answer_on_gpu(&self, request: &EmbedRequest) -> Option<Response> {
        let gpu = self.gpu.as_ref()?;
        if let Some(no) = self.refusal(request) {
            return Some(no);
        }
        let encoded: Vec<Encoded> = request.inputs.iter().map(|i| self.encode(i)).collect();
        let ids: Vec<&[u32]> = encoded.iter().map(|e| e.ids.as_slice()).collect();
        Some(match gpu.embed(&ids).await {
            Ok(vectors) => Self::respond(Ok(vectors
                .into_iter()
                .zip(&encoded)
                .map(|(v, e)| Self::row_of(v, e))
                .collect())),
            Err(crate::gpu::GpuBertError::Input(e)) => Self::respond(Err(e)),
            Err(e) => Response::Error {
                code: ErrorCode::Busy,
                message: format!("the GPU encoder failed: {e}"),
            },
        })
    }

    /// The catalog id it registers.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The encoder.
    pub fn model(&self) -> &BertModel {
        &self.model
    }

    /// Why this node cannot answer `request` (another model, no inputs or
    /// more than a batch holds), as the answer to send; `None` if it can.
    pub fn refusal(&self, request: &EmbedRequest) -> Option<Response> {
        let refuse = |code, message: String| Some(Response::Error { code, message });
        if request.model != self.id {
            return refuse(
                ErrorCode::UnknownModel,
                format!("this node embeds with {}, not {}", self.id, request.model),
            );
        }
        if request.inputs.is_empty() || request.inputs.len() > MAX_EMBED_INPUTS {
            return refuse(
                ErrorCode::TooLarge,
                format!(
                    "{} inputs; a batch holds 1 to {MAX_EMBED_INPUTS}",
                    request.inputs.len()
                ),
            );
        }
        None
    }

    /// One input's row: a text tokenized and cut to the model's limit, or
    /// token ids wrapped in `[CLS]`/`[SEP]` and cut the same way.
    ///
    /// # Errors
    /// [`BertError::Input`] for a token id outside the vocabulary.
    pub fn row(&self, input: &EmbedInput) -> Result<Row, BertError> {
        let e = self.encode(input);
        Ok(Self::row_of(self.model.embed_ids(&e.ids)?, &e))
    }

    /// An input's ids: a text tokenized and cut to the model's limit, or
    /// token ids wrapped in `[CLS]`/`[SEP]` and cut the same way.
    fn encode(&self, input: &EmbedInput) -> Encoded {
        match input {
            EmbedInput::Text(t) => self.model.tokenize(t),
            EmbedInput::Tokens(pieces) => self.model.tokenizer.wrap(pieces, self.model.max_tokens),
        }
    }

    fn row_of(v: Vec<f32>, e: &Encoded) -> Row {
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        (v, count(e.ids.len()), count(e.truncated))
    }

    /// The answer made of a batch's rows (in its order), or of the first
    /// input that failed.
    pub fn respond(rows: Result<Vec<Row>, BertError>) -> Response {
        match rows {
            Ok(rows) => {
                let mut r = EmbedResult {
                    vectors: Vec::with_capacity(rows.len()),
                    tokens: Vec::with_capacity(rows.len()),
                    truncated: Vec::with_capacity(rows.len()),
                };
                for (v, t, cut) in rows {
                    r.vectors.push(v);
                    r.tokens.push(t);
                    r.truncated.push(cut);
                }
                Response::Embedded(Box::new(r))
            }
            Err(e) => Response::Error {
                code: ErrorCode::Invalid,
                message: e.to_string(),
            },
        }
    }

    /// Answers one batch at once (blocking: natively, run it off the event
    /// loop; its inputs run on all cores).
    pub fn answer(&self, request: &EmbedRequest) -> Response {
        if let Some(no) = self.refusal(request) {
            return no;
        }
        #[cfg(not(target_arch = "wasm32"))]
        let rows = {
            use rayon::prelude::*;
            request.inputs.par_iter().map(|i| self.row(i)).collect()
        };
        #[cfg(target_arch = "wasm32")]
        let rows = request.inputs.iter().map(|i| self.row(i)).collect();
        Self::respond(rows)
    }
}
