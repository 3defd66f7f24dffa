//! A native node's sentence-embedding model: the relay sends
//! [`Request::Embed`](tabnode_core::Request::Embed) batches, the node
//! answers them with the CPU encoder ([`tabnode_infer::bert`]), the texts
//! of a batch on all cores.

use std::path::Path;

use tabnode_core::infer::{EmbedInput, EmbedRequest, EmbedResult, MAX_EMBED_INPUTS};
use tabnode_core::{ErrorCode, Response};
use tabnode_infer::bert::{BertError, BertModel};

/// Why an embedding model cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum EmbedLoadError {
    /// A file of the model's directory cannot be read.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// `sentence_bert_config.json` has no `max_seq_length`.
    #[error("{0}: no max_seq_length")]
    Limit(String),
    /// The encoder refused the files.
    #[error(transparent)]
    Model(#[from] BertError),
}

/// The model a node embeds with, under its catalog id.
#[derive(Debug)]
pub struct Embedder {
    id: String,
    model: BertModel,
}

impl Embedder {
    /// Loads the model in `dir` (`scripts/fetch-model.py ID` puts it in
    /// `<models dir>/<id>/`; the directory's name is the id).
    ///
    /// # Errors
    /// [`EmbedLoadError`] for a missing or unreadable file.
    pub fn load(dir: &Path) -> Result<Self, EmbedLoadError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read(&path).map_err(|e| EmbedLoadError::File {
                path: path.display().to_string(),
                reason: e.to_string(),
            })
        };
        let limits: serde_json::Value = serde_json::from_slice(&read("sentence_bert_config.json")?)
            .map_err(|e| EmbedLoadError::File {
                path: dir.join("sentence_bert_config.json").display().to_string(),
                reason: e.to_string(),
            })?;
        let max_tokens = limits["max_seq_length"]
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| EmbedLoadError::Limit(dir.display().to_string()))?;
        let model = BertModel::from_files(
            &read("config.json")?,
            &read("model.safetensors")?,
            &read("tokenizer.json")?,
            max_tokens,
        )?;
        let id = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(Self { id, model })
    }

    /// The catalog id it registers.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The encoder.
    pub fn model(&self) -> &BertModel {
        &self.model
    }

    /// Answers one batch (blocking: run it off the event loop).
    pub fn answer(&self, request: &EmbedRequest) -> Response {
        let refuse = |code, message: String| Response::Error { code, message };
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
        let run = |input: &EmbedInput| -> Result<(Vec<f32>, u32, u32), BertError> {
            let (ids, truncated) = match input {
                EmbedInput::Text(t) => {
                    let e = self.model.tokenize(t);
                    (e.ids, e.truncated)
                }
                EmbedInput::Tokens(pieces) => {
                    let e = self.model.tokenizer.wrap(pieces, self.model.max_tokens);
                    (e.ids, e.truncated)
                }
            };
            let v = self.model.embed_ids(&ids)?;
            Ok((v, ids.len() as u32, truncated as u32))
        };
        use rayon::prelude::*;
        let out: Result<Vec<_>, BertError> = request.inputs.par_iter().map(run).collect();
        match out {
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
            Err(e) => refuse(ErrorCode::Invalid, e.to_string()),
        }
    }
}
