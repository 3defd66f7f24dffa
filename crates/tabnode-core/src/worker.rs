//! Typed messages between the page and its compute worker.
//!
//! Both sides are Rust compiled to wasm; the messages cross `postMessage` as
//! structured JS objects through `serde-wasm-bindgen` (with 64-bit integers
//! as `BigInt`s: Freivalds values exceed 2⁵³), never as ad-hoc JSON strings.

use serde::{Deserialize, Serialize};

use crate::caps::GpuInfo;
use crate::infer::{Backend, EngineChoice, GenerateRequest, GenerateResult, GpuKernels, ModelCard};
use crate::protocol::{Request, Response};

/// Page → worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToWorker {
    /// Open the GPU and report what it is.
    Init,
    /// Benchmark the WGSL matmul kernels at size `n`.
    Bench {
        /// Matrix size.
        n: u32,
        /// Timed repetitions per kernel.
        reps: u32,
    },
    /// Answer a request the network driver handed over (Proof-of-FLOPS).
    Handle {
        /// Pass back in [`FromWorker::Handled`].
        id: u64,
        /// The request.
        request: Request,
    },
    /// Load the model at `url`: from the browser's cache when it holds it,
    /// else downloaded (with progress) and cached.
    LoadModel {
        /// Where the GGUF file is served (the relay's `/models/`).
        url: String,
        /// The backend to run it on; `None`: time the available ones and
        /// take the faster.
        #[serde(default)]
        backend: Option<Backend>,
        /// Workers the CPU engine may split the model over; `None`: one
        /// per core (up to a limit) where the page is cross-origin
        /// isolated.
        #[serde(default)]
        threads: Option<u32>,
        /// The WebGPU kernels; `None`: those for the adapter's kind.
        #[serde(default)]
        kernels: Option<GpuKernels>,
        /// What the catalog pins of the file (size, SHA-256): a download
        /// that differs is refused. `None` for a file outside the catalog.
        #[serde(default)]
        check: Option<crate::download::FileCheck>,
    },
    /// Generate; tokens stream back as [`FromWorker::Token`].
    Generate {
        /// Pass back with every token and the result.
        id: u64,
        /// What to generate.
        request: GenerateRequest,
    },
    /// Stop generation `id` after the token in flight.
    Cancel {
        /// The generation.
        id: u64,
    },
    /// Load the sentence-embedding model `id` (a catalog id) besides the
    /// chat model, from the files under `base_url` (the relay's
    /// `/models/<id>/`): the browser's cached copies when they pass their
    /// checks, else downloaded, checked and cached. The network's `Embed`
    /// batches then arrive as [`ToWorker::Handle`].
    LoadEmbedder {
        /// The catalog id it registers.
        id: String,
        /// Where its files are served, ending in `/`.
        base_url: String,
        /// The catalog's files with their pins, in the order of
        /// `tabnode_infer::embedder::FILES`.
        files: Vec<EmbedderFile>,
        /// Where to run it; `None`: on WebGPU when the tab has it and it
        /// embeds a probe batch faster than the CPU, else the CPU.
        #[serde(default)]
        backend: Option<Backend>,
    },
}

/// One file of a sentence-embedding model, as the catalog pins it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmbedderFile {
    /// Its name under the model's directory.
    pub file: String,
    /// Size and SHA-256.
    pub check: crate::download::FileCheck,
}

/// Worker → page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FromWorker {
    /// The worker's wasm is loaded and listening.
    Loaded,
    /// WebGPU is open on this adapter.
    GpuReady {
        /// Adapter info and limits.
        gpu: GpuInfo,
    },
    /// WebGPU is not available; the node can still relay and chat.
    GpuUnavailable {
        /// Why.
        reason: String,
    },
    /// The answer to [`ToWorker::Handle`].
    Handled {
        /// The request's id.
        id: u64,
        /// The answer.
        response: Response,
        /// Milliseconds the worker spent on it.
        elapsed_ms: f64,
        /// Where it computed: `webgpu` or `cpu`.
        device: String,
    },
    /// Results of [`ToWorker::Bench`].
    Bench {
        /// Matrix size.
        n: u32,
        /// One entry per kernel.
        results: Vec<KernelResult>,
    },
    /// Model loading progress.
    ModelProgress {
        /// `download`, `cache` (reading the browser's copy) or `load`
        /// (weights onto the device).
        phase: String,
        /// Units done (bytes, or tensors for `load`).
        done: u64,
        /// Units in all (0 when unknown).
        total: u64,
    },
    /// The model is on the device and ready to generate.
    ModelReady {
        /// What it is.
        model: ModelCard,
        /// Loaded from the browser's cache, without a download.
        from_cache: bool,
        /// Bytes fetched from the network for this load.
        downloaded_bytes: u64,
        /// Milliseconds from the request to ready.
        load_ms: f64,
        /// The backend it runs on, and why.
        engine: EngineChoice,
    },
    /// Loading failed; the worker keeps running (a later `LoadModel` may
    /// succeed).
    ModelFailed {
        /// Why.
        message: String,
    },
    /// Output of generation `id`: a generated token with the text that
    /// became final with it (possibly empty), or at the end held-back text
    /// with no token.
    Token {
        /// The generation.
        id: u64,
        /// The new token ids (one, or none for the final text).
        tokens: Vec<u32>,
        /// The new text.
        text: String,
    },
    /// Generation `id` passed its checks (model loaded, prompt fits,
    /// sampling values valid) and starts.
    GenerateStarted {
        /// The generation.
        id: u64,
        /// Tokens in the prompt.
        prompt_tokens: u32,
    },
    /// Generation `id` was refused before it started.
    GenerateRejected {
        /// The generation.
        id: u64,
        /// Why, as a protocol error code.
        code: crate::ErrorCode,
        /// Why, in words.
        message: String,
    },
    /// Generation `id` finished.
    Generated {
        /// The generation.
        id: u64,
        /// Tokens, text, timings.
        result: GenerateResult,
    },
    /// Generation `id` could not run.
    GenerateFailed {
        /// The generation.
        id: u64,
        /// Why.
        message: String,
    },
    /// Loading the embedding model: bytes fetched (or read from the
    /// browser's cache) of all its files.
    EmbedderProgress {
        /// Bytes done.
        done: u64,
        /// Bytes in all.
        total: u64,
    },
    /// The embedding model is loaded and answers `Embed` batches.
    EmbedderReady {
        /// Its catalog id.
        id: String,
        /// Vector size.
        dimensions: u32,
        /// Every file came from the browser's cache.
        from_cache: bool,
        /// Bytes fetched from the network for this load.
        downloaded_bytes: u64,
        /// Milliseconds from the request to ready.
        load_ms: f64,
        /// Where it embeds.
        backend: Backend,
        /// Why there: asked for, the only one, or the faster on a probe
        /// batch (with both times).
        reason: String,
    },
    /// The embedding model could not be loaded (the worker keeps running).
    EmbedderFailed {
        /// Its catalog id.
        id: String,
        /// Why.
        message: String,
    },
    /// A message the worker could not understand.
    Error {
        /// What went wrong.
        message: String,
    },
}

/// One kernel's benchmark result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KernelResult {
    /// Kernel name (`blocked-4x4`, `naive`, `tiled-16`).
    pub kernel: String,
    /// Achieved rate, upload and readback included.
    pub gflops: f64,
    /// Whether its result matched the CPU reference bit for bit.
    pub exact: bool,
}
