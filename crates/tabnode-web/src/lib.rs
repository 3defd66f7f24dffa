//! The page side of a tabnode tab.
//!
//! `RTCPeerConnection` exists only on `Window`, so the libp2p node runs here,
//! on the page's main thread: it dials the relay over `/webrtc-direct`,
//! reserves a `/p2p-circuit` slot and answers requests, with the shared
//! [`tabnode_core::driver`] event loop. The compute worker (`tabnode-worker`)
//! is started from here and reports its WebGPU adapter, which the node then
//! registers with the relay as its capabilities.
//!
//! The JavaScript API is the `TabNode` class (see `www/app.js` for its use).

#![deny(clippy::unwrap_used)]

#[cfg(target_arch = "wasm32")]
mod web;

use serde::Deserialize;

/// Errors of the page node, turned into `JsError` at the boundary.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    /// The options object passed to `TabNode.start` is invalid.
    #[error("invalid options: {0}")]
    BadOptions(String),
    /// The stored identity cannot be decoded.
    #[error("stored identity is corrupt: {0}")]
    Identity(String),
    /// libp2p refused to build the node.
    #[error("libp2p: {0}")]
    Libp2p(String),
    /// The compute worker could not be started.
    #[error("compute worker: {0}")]
    Worker(String),
    /// A request failed.
    #[error(transparent)]
    Request(#[from] tabnode_core::driver::RequestError),
}

/// Options of `TabNode.start` (camelCase on the JS side).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StartOptions {
    /// The relay's `/webrtc-direct/certhash/…/p2p/…` address.
    pub relay: String,
    /// A protobuf-encoded identity key from a previous visit.
    #[serde(default, with = "serde_bytes")]
    pub identity: Option<Vec<u8>>,
    /// URL of the worker entry script; no worker when absent.
    #[serde(default)]
    pub worker_url: Option<String>,
    /// VRAM pledged to the network, in MiB.
    #[serde(default)]
    pub pledge_mib: u64,
    /// Log libp2p and tabnode to the console at this level (`debug`, ...).
    #[serde(default)]
    pub log_level: Option<String>,
    /// Cap of the reconnect delay, in milliseconds.
    #[serde(default = "default_backoff_ms")]
    pub max_backoff_ms: u64,
}

fn default_backoff_ms() -> u64 {
    5_000
}
