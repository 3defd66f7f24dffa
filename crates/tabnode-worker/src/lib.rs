//! The compute worker of a tabnode tab.
//!
//! It runs in a dedicated Web Worker (WebRTC is not available there, so the
//! network stays on the page; see `ARCHITECTURE.md`). It opens WebGPU with
//! `wgpu`, reports the adapter and its limits to the page, and is where the
//! model and the Proof-of-FLOPS prover run. Page and worker exchange the
//! typed messages of [`tabnode_core::worker`] through `serde-wasm-bindgen`.

#[cfg(target_arch = "wasm32")]
mod web;

use tabnode_core::GpuLimits;

/// Errors of the worker.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The browser exposes no WebGPU, or no adapter.
    #[error("no WebGPU adapter: {0}")]
    NoAdapter(String),
    /// The adapter refused a device.
    #[error("WebGPU device request failed: {0}")]
    Device(String),
    /// A message from the page could not be decoded.
    #[error("bad message from the page: {0}")]
    BadMessage(String),
}

/// The subset of limits the network cares about, in the protocol's shape.
#[cfg(target_arch = "wasm32")]
fn limits(l: &wgpu::Limits) -> GpuLimits {
    GpuLimits {
        max_buffer_size: l.max_buffer_size,
        max_storage_buffer_binding_size: u64::from(l.max_storage_buffer_binding_size),
        max_storage_buffers_per_shader_stage: l.max_storage_buffers_per_shader_stage,
        max_compute_workgroup_storage_size: l.max_compute_workgroup_storage_size,
        max_compute_invocations_per_workgroup: l.max_compute_invocations_per_workgroup,
        max_compute_workgroup_size_x: l.max_compute_workgroup_size_x,
    }
}

/// Keeps the type used on wasm visible to native builds and docs.
pub fn empty_limits() -> GpuLimits {
    GpuLimits::default()
}
