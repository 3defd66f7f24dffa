//! What a node tells the network about itself.

use serde::{Deserialize, Serialize};

/// Where a node runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    /// A browser tab (libp2p over WebRTC, compute in a Web Worker).
    Browser,
    /// The native `tabnode-node` binary.
    Native,
}

/// The WebGPU limits that matter for sizing work on a device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuLimits {
    /// `maxBufferSize` in bytes.
    pub max_buffer_size: u64,
    /// `maxStorageBufferBindingSize` in bytes.
    pub max_storage_buffer_binding_size: u64,
    /// `maxStorageBuffersPerShaderStage`.
    pub max_storage_buffers_per_shader_stage: u32,
    /// `maxComputeWorkgroupStorageSize` in bytes.
    pub max_compute_workgroup_storage_size: u32,
    /// `maxComputeInvocationsPerWorkgroup`.
    pub max_compute_invocations_per_workgroup: u32,
    /// `maxComputeWorkgroupSizeX`.
    pub max_compute_workgroup_size_x: u32,
}

/// A GPU adapter as the node's compute worker sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuInfo {
    /// Adapter vendor (`GPUAdapterInfo.vendor`), may be empty.
    pub vendor: String,
    /// Adapter architecture (`GPUAdapterInfo.architecture`), may be empty.
    pub architecture: String,
    /// Device name or description, may be empty.
    pub description: String,
    /// The graphics backend (`BrowserWebGpu`, `Vulkan`, ...).
    pub backend: String,
    /// True for software adapters such as SwiftShader or lavapipe.
    pub is_fallback: bool,
    /// Optional features the adapter supports (`shader-f16`, ...).
    pub features: Vec<String>,
    /// Device limits.
    pub limits: GpuLimits,
}

/// The kind of device a node says it proves on. Until a node has a proof
/// history, the relay sizes its challenges and deadlines from this claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceClass {
    /// No GPU: CPU sgemm (native) or the worker's CPU fallback (tab).
    Cpu,
    /// A software GPU adapter (SwiftShader, lavapipe).
    SoftwareGpu,
    /// A hardware GPU.
    Gpu,
}

/// Everything a node advertises to the relay when it joins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Capabilities {
    /// Browser tab or native process.
    pub kind: NodeKind,
    /// Free-form software identification (`tabnode-web/0.1.0 (Chrome ...)`).
    pub agent: String,
    /// The GPU the node computes on, if it has one.
    pub gpu: Option<GpuInfo>,
    /// The GPU error, when the node tried to open one and could not.
    pub gpu_error: Option<String>,
    /// VRAM the node pledges to the network, in MiB.
    pub pledged_vram_mib: u64,
    /// Models the node can serve (their names; see [`crate::model_id`]).
    pub models: Vec<String>,
    /// The backend its engine runs them on, and why (once a model loaded).
    #[serde(default)]
    pub engine: Option<crate::infer::EngineChoice>,
    /// Generations the node runs at once.
    pub slots: u32,
    /// The largest Proof-of-FLOPS `n` the node accepts (what its memory and
    /// device hold); the relay never challenges above it, the node refuses
    /// anything larger.
    pub max_pof_n: u32,
    /// Runs flows' Python steps for others ([`crate::Request::Python`]): a
    /// tab whose visitor opted in (Pyodide in an opaque-origin sandbox).
    #[serde(default)]
    pub python: bool,
    /// Scores delivered tokens for spot checks ([`crate::Request::Score`]):
    /// a node whose engine reads a completion in one pass.
    #[serde(default)]
    pub scores: bool,
}

impl Capabilities {
    /// The device class these capabilities claim.
    pub fn device_class(&self) -> DeviceClass {
        match &self.gpu {
            None => DeviceClass::Cpu,
            Some(g) if g.is_fallback => DeviceClass::SoftwareGpu,
            Some(_) => DeviceClass::Gpu,
        }
    }

    /// Capabilities with no GPU and no models.
    pub fn new(kind: NodeKind, agent: impl Into<String>) -> Self {
        Self {
            kind,
            agent: agent.into(),
            gpu: None,
            gpu_error: None,
            pledged_vram_mib: 0,
            models: Vec::new(),
            engine: None,
            slots: 1,
            max_pof_n: crate::pof::DEFAULT_MAX_N,
            python: false,
            scores: false,
        }
    }
}
