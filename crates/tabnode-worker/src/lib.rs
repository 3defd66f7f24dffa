//! The compute worker of a tabnode tab.
//!
//! It runs in a dedicated Web Worker (WebRTC is not available there, so the
//! network stays on the page; see `ARCHITECTURE.md`). It opens WebGPU with
//! `wgpu`, reports the adapter and its limits to the page, and is where the
//! model, the sentence-embedding model and the Proof-of-FLOPS prover run. Page and worker exchange the
//! typed messages of [`tabnode_core::worker`] through `serde-wasm-bindgen`.

#[cfg(target_arch = "wasm32")]
mod embed;
#[cfg(target_arch = "wasm32")]
mod model;
#[cfg(target_arch = "wasm32")]
mod shards;
#[cfg(target_arch = "wasm32")]
mod web;

/// Errors of the worker.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The browser exposes no WebGPU, or no adapter.
    #[error("no WebGPU adapter: {0}")]
    NoAdapter(String),
    /// The adapter refused a device.
    #[error("WebGPU device request failed: {0}")]
    Device(String),
    /// Loading or running the model failed.
    #[error("model: {0}")]
    Model(String),
    /// The engine refused the model file.
    #[cfg(target_arch = "wasm32")]
    #[error("model: {0}")]
    Engine(#[from] tabnode_infer::EngineError),
    /// The model's download failed its checks.
    #[error("model: {0}")]
    Download(#[from] tabnode_core::download::DownloadError),
    /// `?backend=webgpu` in a browser without a WebGPU adapter.
    #[error("the webgpu backend was asked for, but this browser has no WebGPU adapter")]
    NoWebGpu,
    /// The embedding model's layers could not go onto WebGPU.
    #[cfg(target_arch = "wasm32")]
    #[error("the embedding model on WebGPU: {0}")]
    EmbedderGpu(#[from] tabnode_infer::gpu::GpuBertError),
    /// A message from the page could not be decoded.
    #[error("bad message from the page: {0}")]
    BadMessage(String),
    /// The shared buffer of the model's shards cannot be made or read.
    #[error("shards: {0}")]
    Shards(&'static str),
    /// A shard worker did not start or load its rows.
    #[error("shard worker: {0}")]
    ShardStart(String),
}
