//! Inference requests and results as they cross the page ↔ worker boundary
//! and the network: plain data, no engine types.
//!
//! On the network a generation is a [`Request::Infer`](crate::Request::Infer)
//! from the relay to a node, answered with the prompt size, then a stream of
//! [`InferChunk`]s from the node, each acknowledged before the next is sent
//! ([`ChunkStreamer`] does the batching); the last, which carries the end,
//! needs no acknowledgement (over the link it goes as a notice). When a node disappears the relay
//! sends the same request to another node with the tokens delivered so far
//! in [`GenerateRequest::resume`]: the new node continues after them.

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
    /// Tokens already generated (and delivered) by another node: the model
    /// reads them after the prompt and continues; they count towards
    /// `max_tokens` and are not sent again.
    #[serde(default)]
    pub resume: Vec<u32>,
}

impl GenerateRequest {
    /// A request for `prompt` with the defaults (128 tokens, greedy).
    pub fn new(prompt: Prompt) -> Self {
        Self {
            prompt,
            max_tokens: default_max_tokens(),
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
            stop: Vec::new(),
            resume: Vec::new(),
        }
    }
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

/// Where a node's engine runs the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// The quantized CPU kernels (native SIMD, or wasm SIMD128 in a tab).
    Cpu,
    /// The browser's WebGPU (burn).
    Webgpu,
}

impl Backend {
    /// `cpu` or `webgpu`.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Cpu => "cpu",
            Backend::Webgpu => "webgpu",
        }
    }
}

impl std::str::FromStr for Backend {
    type Err = UnknownBackend;

    fn from_str(s: &str) -> Result<Self, UnknownBackend> {
        match s {
            "cpu" => Ok(Backend::Cpu),
            "webgpu" => Ok(Backend::Webgpu),
            other => Err(UnknownBackend(other.to_owned())),
        }
    }
}

/// Which WebGPU kernels run the model (`tabnode_infer::gpu::Variant`);
/// by default `rows` on a software adapter, `lanes` on a GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GpuKernels {
    /// An invocation per row (eight rows each where a format has such
    /// kernels), no barriers.
    Rows,
    /// 16 invocations per row and a workgroup reduction.
    Lanes,
}

impl std::str::FromStr for GpuKernels {
    type Err = UnknownKernels;

    fn from_str(s: &str) -> Result<Self, UnknownKernels> {
        match s {
            "rows" => Ok(GpuKernels::Rows),
            "lanes" => Ok(GpuKernels::Lanes),
            other => Err(UnknownKernels(other.to_owned())),
        }
    }
}

/// A kernel name other than `rows` or `lanes`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown WebGPU kernels {0:?}: expected rows or lanes")]
pub struct UnknownKernels(pub String);

/// A backend name other than `cpu` or `webgpu`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown backend {0:?}: expected cpu or webgpu")]
pub struct UnknownBackend(pub String);

/// One backend's measured decode speed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackendTiming {
    /// The backend.
    pub backend: Backend,
    /// Milliseconds per decode step, measured at load.
    pub ms_per_token: f64,
}

/// Which backend a node's engine runs on and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EngineChoice {
    /// The backend chosen.
    pub backend: Backend,
    /// The device results name (`cpu-quantized-simd128`, `webgpu`).
    pub device: String,
    /// Why: forced by the user, the only one available, or the faster.
    pub reason: String,
    /// The backends timed at load (fastest first is not implied).
    pub timings: Vec<BackendTiming>,
    /// Threads the engine computes on: a tab's CPU engine splits the
    /// model's rows over this many workers (1 where the page is not
    /// cross-origin isolated, or on WebGPU).
    #[serde(default = "one_thread")]
    pub threads: u32,
}

fn one_thread() -> u32 {
    1
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

/// The network id of a model: its name in lower case with runs of other
/// characters turned into `-` (`SmolLM2 135M Instruct` →
/// `smollm2-135m-instruct`). Requests may name a model either way.
pub fn model_id(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if c.is_ascii_alphanumeric() || c == '.' {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches('-').to_string()
}

/// Inputs one [`EmbedRequest`] may carry: a node answers a batch in one
/// message (64 vectors of 384 `f32`s: 98 KB), the relay splits larger jobs.
pub const MAX_EMBED_INPUTS: usize = 64;

/// The files of a sentence-embedding model, in the order the catalog
/// lists them and the encoder takes them (`scripts/fetch-model.py` puts
/// them in `<models dir>/<id>/`, the relay serves them under
/// `/models/<id>/`).
pub const EMBEDDER_FILES: [&str; 4] = [
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "sentence_bert_config.json",
];

/// One input of an [`EmbedRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EmbedInput {
    /// A text the node tokenizes (cut to the model's limit).
    Text(String),
    /// Token ids as the model's tokenizer gives them for a text, without
    /// `[CLS]`/`[SEP]` (the node adds them and cuts as for a text; OpenAI's
    /// token-array input).
    Tokens(Vec<u32>),
}

/// Relay → node: the embeddings of `inputs` with the sentence-embedding
/// model `model` (a catalog id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmbedRequest {
    /// The relay's id of the batch.
    pub request_id: u64,
    /// The catalog id.
    pub model: String,
    /// At most [`MAX_EMBED_INPUTS`].
    pub inputs: Vec<EmbedInput>,
}

/// Node → relay: the answer to an [`EmbedRequest`], in its order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbedResult {
    /// One unit-length vector per input.
    pub vectors: Vec<Vec<f32>>,
    /// Tokens each input took.
    pub tokens: Vec<u32>,
    /// Pieces each text lost to the model's limit.
    pub truncated: Vec<u32>,
}

/// Relay → node: generate `request` with `model`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InferRequest {
    /// Chosen by the relay, unique per requester request.
    pub request_id: u64,
    /// 0 for the first node, then one more per failover.
    pub attempt: u32,
    /// The model's id ([`model_id`]).
    pub model: String,
    /// What to generate.
    pub request: GenerateRequest,
}

/// How a node's part of a generation ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum InferEnd {
    /// Generation finished.
    Done(InferDone),
    /// The node could not go on (device lost, model error).
    Failed(String),
}

/// The node's figures for a finished generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InferDone {
    /// Why it ended.
    pub finish: FinishReason,
    /// Milliseconds to the first token's logits (prefill) on the node.
    pub prefill_ms: f64,
    /// Milliseconds of decoding after that.
    pub decode_ms: f64,
    /// Where it ran (`webgpu`, `flex`, `wgpu`).
    pub device: String,
}

/// Node → relay: tokens of a generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InferChunk {
    /// The [`InferRequest::request_id`].
    pub request_id: u64,
    /// The [`InferRequest::attempt`].
    pub attempt: u32,
    /// Tokens of the completion before this chunk (resumed ones included):
    /// lets the relay drop a duplicate and detect a gap.
    pub offset: u32,
    /// New token ids.
    pub tokens: Vec<u32>,
    /// Text that became final with them (may lag the tokens by a partial
    /// character or a possible stop-string prefix; the rest comes later).
    pub text: String,
    /// Set on the last chunk.
    pub end: Option<InferEnd>,
}

/// Batches a generation's output into [`InferChunk`]s with one in flight:
/// while a chunk waits for its acknowledgement, new tokens accumulate and go
/// out together in the next one. The same logic serves the tab and the
/// native node.
#[derive(Debug, Clone)]
pub struct ChunkStreamer {
    request_id: u64,
    attempt: u32,
    offset: u32,
    tokens: Vec<u32>,
    text: String,
    end: Option<InferEnd>,
    in_flight: bool,
    ended: bool,
}

impl ChunkStreamer {
    /// A streamer for `request`, whose completion starts after its
    /// [`GenerateRequest::resume`] tokens.
    pub fn new(request: &InferRequest) -> Self {
        Self {
            request_id: request.request_id,
            attempt: request.attempt,
            offset: u32::try_from(request.request.resume.len()).unwrap_or(u32::MAX),
            tokens: Vec::new(),
            text: String::new(),
            end: None,
            in_flight: false,
            ended: false,
        }
    }

    /// Adds generated tokens and the text that became final with them.
    pub fn push(&mut self, tokens: &[u32], text: &str) {
        self.tokens.extend_from_slice(tokens);
        self.text.push_str(text);
    }

    /// Marks the end; it goes out with (or after) the remaining tokens.
    pub fn end(&mut self, end: InferEnd) {
        if self.end.is_none() && !self.ended {
            self.end = Some(end);
        }
    }

    /// The next chunk to send, if none is in flight and there is something
    /// to say.
    pub fn next_chunk(&mut self) -> Option<InferChunk> {
        if self.in_flight || self.ended {
            return None;
        }
        if self.tokens.is_empty() && self.text.is_empty() && self.end.is_none() {
            return None;
        }
        let tokens = std::mem::take(&mut self.tokens);
        let chunk = InferChunk {
            request_id: self.request_id,
            attempt: self.attempt,
            offset: self.offset,
            text: std::mem::take(&mut self.text),
            end: self.end.take(),
            tokens,
        };
        self.offset = self
            .offset
            .saturating_add(u32::try_from(chunk.tokens.len()).unwrap_or(u32::MAX));
        self.ended = chunk.end.is_some();
        self.in_flight = true;
        Some(chunk)
    }

    /// The generation still runs: its end has not been marked. A node
    /// frees its slot as soon as this turns false, before the last chunk
    /// goes out: the relay counts the slot free when that chunk arrives, and
    /// a request it sends right after must not find the node busy.
    pub fn generating(&self) -> bool {
        self.end.is_none() && !self.ended
    }

    /// The chunk in flight was acknowledged.
    pub fn acked(&mut self) {
        self.in_flight = false;
    }

    /// The last chunk went out and was acknowledged (a sender that does not
    /// wait for the last chunk's acknowledgement marks it
    /// [`ChunkStreamer::acked`] when sent).
    pub fn finished(&self) -> bool {
        self.ended && !self.in_flight
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_names_parse_and_others_are_refused() {
        assert_eq!("rows".parse::<GpuKernels>(), Ok(GpuKernels::Rows));
        assert_eq!("lanes".parse::<GpuKernels>(), Ok(GpuKernels::Lanes));
        let err = "Rows".parse::<GpuKernels>().expect_err("case matters");
        assert_eq!(
            err.to_string(),
            "unknown WebGPU kernels \"Rows\": expected rows or lanes"
        );
        assert_eq!(
            serde_json::to_string(&GpuKernels::Lanes).expect("json"),
            "\"lanes\""
        );
    }

    fn request() -> InferRequest {
        let mut r = GenerateRequest::new(Prompt::Text("hi".into()));
        r.resume = vec![5, 6];
        InferRequest {
            request_id: 9,
            attempt: 1,
            model: "m".into(),
            request: r,
        }
    }

    #[test]
    fn model_ids_are_slugs() {
        assert_eq!(model_id("SmolLM2 135M Instruct"), "smollm2-135m-instruct");
        assert_eq!(model_id("smollm2-135m-instruct"), "smollm2-135m-instruct");
        assert_eq!(model_id("  Llama 3.2 (1B)  "), "llama-3.2-1b");
    }

    #[test]
    fn one_chunk_in_flight_and_the_rest_batched() {
        let mut s = ChunkStreamer::new(&request());
        assert_eq!(s.next_chunk(), None, "nothing to send yet");
        s.push(&[1], "a");
        let c = s.next_chunk().expect("first chunk");
        assert_eq!(
            (c.offset, c.tokens.as_slice(), c.text.as_str()),
            (2, &[1][..], "a")
        );
        s.push(&[2], "b");
        s.push(&[3], "");
        assert_eq!(s.next_chunk(), None, "one in flight");
        s.acked();
        assert!(s.generating());
        s.end(InferEnd::Failed("gone".into()));
        assert!(!s.generating(), "the slot is free once the end is known");
        let c = s.next_chunk().expect("second chunk");
        assert_eq!(
            (c.offset, c.tokens.as_slice(), c.text.as_str()),
            (3, &[2, 3][..], "b")
        );
        assert_eq!(c.end, Some(InferEnd::Failed("gone".into())));
        assert!(!s.finished());
        assert!(!s.generating());
        s.acked();
        assert!(s.finished());
        s.push(&[4], "late");
        assert_eq!(s.next_chunk(), None, "nothing after the end");
    }

    #[test]
    fn requests_survive_the_wire() {
        let r = crate::Request::Infer(Box::new(request()));
        let bytes = postcard::to_allocvec(&r).expect("encode");
        let back: crate::Request = postcard::from_bytes(&bytes).expect("decode");
        assert_eq!(back, r);
        let json: GenerateRequest =
            serde_json::from_str(r#"{"prompt":{"text":"x"}}"#).expect("defaults apply");
        assert_eq!(json, GenerateRequest::new(Prompt::Text("x".into())));
    }
}
