//! What a node advertises about the model it serves.

use std::collections::BTreeMap;

use crate::gguf::{ggml_type_name, Gguf, GgufError};
use crate::reference::Config;

/// Model metadata for the network: read from the GGUF header, no weights
/// touched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    /// `general.name` (or the architecture when the file has none).
    pub name: String,
    /// `general.architecture` (`llama`).
    pub architecture: String,
    /// Number of weights.
    pub parameters: u64,
    /// The tensor type holding most weights (`Q4_1`).
    pub quantization: String,
    /// Longest sequence.
    pub context: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// Transformer blocks.
    pub layers: usize,
    /// Size of the model file in bytes.
    pub file_bytes: u64,
}

impl ModelInfo {
    /// Reads the metadata of a parsed file of `file_bytes` bytes.
    ///
    /// # Errors
    /// Missing or malformed hyper-parameters.
    pub fn from_gguf(g: &Gguf<'_>, file_bytes: u64) -> Result<Self, GgufError> {
        let config = Config::from_gguf(g)?;
        let architecture = g
            .get("general.architecture")
            .and_then(|v| v.as_str())
            .unwrap_or("unknown")
            .to_string();
        let name = g
            .get("general.name")
            .and_then(|v| v.as_str())
            .map_or_else(|| architecture.clone(), str::to_string);
        let mut by_type: BTreeMap<u32, u64> = BTreeMap::new();
        for t in &g.tensors {
            *by_type.entry(t.ggml_type).or_default() += t.len();
        }
        let quantization = by_type
            .iter()
            .max_by_key(|(_, n)| **n)
            .map_or("none", |(t, _)| ggml_type_name(*t))
            .to_string();
        Ok(Self {
            name,
            architecture,
            parameters: by_type.values().sum(),
            quantization,
            context: config.context,
            vocab: config.vocab,
            layers: config.layers,
            file_bytes,
        })
    }
}
