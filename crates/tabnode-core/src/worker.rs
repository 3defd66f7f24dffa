//! Typed messages between the page and its compute worker.
//!
//! Both sides are Rust compiled to wasm; the messages cross `postMessage` as
//! structured JS objects through `serde-wasm-bindgen`, never as ad-hoc JSON
//! strings.

use serde::{Deserialize, Serialize};

use crate::caps::GpuInfo;

/// Page → worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToWorker {
    /// Open the GPU and report what it is.
    Init,
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
    /// A message the worker could not understand.
    Error {
        /// What went wrong.
        message: String,
    },
}
