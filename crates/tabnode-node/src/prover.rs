//! How a native node answers the requests the driver hands over: the
//! Proof-of-FLOPS prover, on a GPU through wgpu or on the CPU.

use futures::executor::block_on;
use tabnode_core::pof::{Matmul, PofResponder};
use tabnode_core::{ErrorCode, Request, Response};
use tabnode_pof::gpu::{GpuError, GpuProver};

/// Answers one request the driver could not answer itself. Runs on a
/// blocking thread; may take as long as the computation needs.
pub trait RequestHandler: Send + Sync {
    /// The answer to `request` from `peer` (always the node's relay: the
    /// driver refuses commands from anyone else).
    fn handle(&self, peer: &str, request: Request) -> Response;

    /// The largest Proof-of-FLOPS challenge this handler accepts, advertised
    /// in the capabilities (`None`: keep what they say).
    fn max_pof_n(&self) -> Option<u32> {
        None
    }
}

/// Where the matmul runs.
#[derive(Debug)]
pub enum Backend {
    /// Multi-threaded CPU sgemm.
    Cpu,
    /// A wgpu device.
    Gpu(GpuProver),
}

impl Backend {
    /// A hardware GPU if wgpu finds one (any native backend), else the CPU.
    /// Software adapters (lavapipe, SwiftShader) are slower than the CPU
    /// sgemm, so they are not picked unless `allow_software`.
    pub fn detect(allow_software: bool) -> Self {
        let adapter = block_on(tabnode_pof::gpu::best_adapter(wgpu::Backends::all()));
        match adapter {
            Ok(a) if allow_software || a.get_info().device_type != wgpu::DeviceType::Cpu => {
                match block_on(GpuProver::new(&a)) {
                    Ok(p) => {
                        tracing::info!("Proof-of-FLOPS on {}", a.get_info().name);
                        Backend::Gpu(p)
                    }
                    Err(e) => {
                        tracing::warn!("GPU unusable ({e}); proving on the CPU");
                        Backend::Cpu
                    }
                }
            }
            _ => Backend::Cpu,
        }
    }

    /// The largest challenge this backend takes: a GPU's storage binding
    /// must hold one matrix; never above the network default.
    pub fn max_n(&self) -> u32 {
        match self {
            Backend::Cpu => tabnode_core::pof::DEFAULT_MAX_N,
            Backend::Gpu(g) => g.max_n().min(tabnode_core::pof::DEFAULT_MAX_N),
        }
    }
}

impl Matmul for Backend {
    type Error = GpuError;

    async fn matmul(&self, a: &[f32], b: &[f32], n: u32) -> Result<Vec<f32>, GpuError> {
        match self {
            Backend::Cpu => Ok(tabnode_pof::matmul_sgemm(a, b, n as usize)),
            Backend::Gpu(g) => g.matmul(a, b, n).await,
        }
    }
}

/// The honest Proof-of-FLOPS prover: [`PofResponder`] (size checks, one
/// commitment per round) over a [`Backend`].
#[derive(Debug)]
pub struct PofProver {
    backend: Backend,
    responder: PofResponder,
}

impl PofProver {
    /// A prover on `backend` that accepts what the backend holds.
    pub fn new(backend: Backend) -> Self {
        let max_n = backend.max_n();
        Self::with_max_n(backend, max_n)
    }

    /// A prover on `backend` that accepts challenges up to `max_n`.
    pub fn with_max_n(backend: Backend, max_n: u32) -> Self {
        Self {
            backend,
            responder: PofResponder::new(max_n),
        }
    }
}

impl RequestHandler for PofProver {
    fn handle(&self, _peer: &str, request: Request) -> Response {
        block_on(self.responder.answer(&self.backend, &request)).unwrap_or_else(|| {
            Response::Error {
                code: ErrorCode::Invalid,
                message: format!("the prover does not handle {}", request.name()),
            }
        })
    }

    fn max_pof_n(&self) -> Option<u32> {
        Some(self.responder.max_n())
    }
}
