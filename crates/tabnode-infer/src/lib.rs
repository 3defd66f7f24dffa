//! The tabnode inference engine (in progress, issue #4).
//!
//! [`model`] is the llama model on burn (CPU backend `flex` so far; WebGPU
//! next), loaded from GGUF, with a KV cache. Around it: [`gguf`], a reader for GGUF v3 model files (metadata, tensor
//! directory, and dequantization of F32, F16, Q4_0, Q4_1, Q5_0, Q8_0, Q4_K,
//! Q5_K and Q6_K tensors), portable to `wasm32` so the browser worker can
//! read a model it fetched; [`quant`], the quantized block formats, the Q8
//! activation quantizers and the scalar reference dot products and matvec;
//! [`cpu`], the llama forward pass with the weights kept as GGUF blocks
//! (integer dot products against Q8 activations, as llama.cpp);
//! and [`tokenizer`], the byte-level BPE tokenizer from the GGUF metadata,
//! with the ChatML chat template and streaming UTF-8 decoding; [`shard`],
//! the rows of the CPU model split between workers (a tab's cores); and
//! [`reference`](mod@reference), a plain f32 forward pass that is the oracle for the burn
//! model to come; and [`generate`], the generation loop (sampling, stop
//! strings, streaming, cancellation) over any one-token-at-a-time decoder.

pub mod bert;
pub mod cpu;
pub mod embedder;
pub mod engine;
pub mod generate;
pub mod gguf;
#[cfg(feature = "gpu")]
pub mod gpu;
pub mod info;
pub mod model;
pub mod quant;
pub mod reference;
pub mod sample;
pub mod shard;
pub mod tokenizer;
pub mod wordpiece;

pub use burn::tensor::Device;
pub use engine::{Engine, EngineError};
