//! Inference requests and results as they cross the page ↔ worker boundary
//! (and, with issue #5, the network): plain data, no engine types.

use serde::{Deserialize, Serialize};

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

/// What to continue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Prompt {
    /// Raw text, tokenized as is (no special tokens parsed).
    Text(String),
    /// Messages rendered with the model's chat template, ending with the
    /// assistant's turn.
    Chat(Vec<ChatMessage>),
}

fn default_max_tokens() -> u32 {
    128
}

fn one() -> f32 {
    1.0
}

/// A generation request. Everything but the prompt has a default: 128
/// tokens, greedy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateRequest {
    /// The prompt.
    pub prompt: Prompt,
    /// Most tokens to generate.
    #[serde(default = "default_max_tokens")]
    pub max_tokens: u32,
    /// Sampling temperature; 0 is greedy.
    #[serde(default)]
    pub temperature: f32,
    /// Keep the k most likely tokens (0: all).
    #[serde(default)]
    pub top_k: u32,
    /// Nucleus threshold (1: off).
    #[serde(default = "one")]
    pub top_p: f32,
    /// Seed of the sampler.
    #[serde(default)]
    pub seed: u64,
    /// Generation ends before any of these strings.
    #[serde(default)]
    pub stop: Vec<String>,
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The token limit or the context.
    Length,
    /// The model's end-of-sequence token.
    Eos,
    /// A stop string.
    Stop,
    /// The caller cancelled.
    Cancelled,
}

/// A finished generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateResult {
    /// Generated token ids (EOS excluded).
    pub tokens: Vec<u32>,
    /// Their text, cut before a stop string.
    pub text: String,
    /// Why it ended.
    pub finish: FinishReason,
    /// Tokens in the prompt.
    pub prompt_tokens: u32,
    /// Milliseconds to the first token's logits (prefill).
    pub prefill_ms: f64,
    /// Milliseconds spent decoding after that.
    pub decode_ms: f64,
    /// Where it ran (`webgpu`, `flex`, `wgpu`).
    pub device: String,
}

/// What a node says about the model it serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelCard {
    /// Model name (`SmolLM2 135M Instruct`).
    pub name: String,
    /// Architecture (`llama`).
    pub architecture: String,
    /// Number of weights.
    pub parameters: u64,
    /// Tensor type of most weights in the file (`Q4_1`).
    pub quantization: String,
    /// Longest sequence.
    pub context: u32,
    /// Vocabulary size.
    pub vocab: u32,
    /// Transformer blocks.
    pub layers: u32,
    /// Size of the model file.
    pub file_bytes: u64,
}
