//! How a native node answers the requests the driver hands over: the
//! Proof-of-FLOPS prover, on a GPU through wgpu or on the CPU.

use std::sync::Mutex;

use futures::executor::block_on;
use tabnode_core::{ErrorCode, PofChallenge, Request, Response};
use tabnode_pof::{expand, gpu::GpuProver, Prover};

/// Answers one request the driver could not answer itself. Runs on a
/// blocking thread; may take as long as the computation needs.
pub trait RequestHandler: Send + Sync {
    /// The answer to `request` from `peer`.
    fn handle(&self, peer: &str, request: Request) -> Response;
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

    fn matmul(&self, a: &[f32], b: &[f32], n: u32) -> Result<Vec<f32>, String> {
        match self {
            Backend::Cpu => Ok(tabnode_pof::matmul_sgemm(a, b, n as usize)),
            Backend::Gpu(g) => block_on(g.matmul(a, b, n)).map_err(|e| e.to_string()),
        }
    }
}

/// The honest Proof-of-FLOPS prover: computes, commits, opens.
#[derive(Debug)]
pub struct PofProver {
    backend: Backend,
    /// The last commitment, kept until it is opened or replaced.
    current: Mutex<Option<(u64, Prover)>>,
}

fn refuse(message: impl Into<String>) -> Response {
    Response::Error {
        code: ErrorCode::Invalid,
        message: message.into(),
    }
}

impl PofProver {
    /// A prover on `backend`.
    pub fn new(backend: Backend) -> Self {
        Self {
            backend,
            current: Mutex::new(None),
        }
    }

    /// Computes `C` for a challenge and returns the commitment.
    pub fn commit(&self, c: &PofChallenge) -> Response {
        let (a, b) = match expand(&c.seed, c.n) {
            Ok(m) => m,
            Err(e) => return refuse(e.to_string()),
        };
        let product = match self.backend.matmul(&a, &b, c.n) {
            Ok(p) => p,
            Err(e) => return refuse(e),
        };
        match Prover::new(c.n, &product) {
            Ok(p) => {
                let root = p.root();
                *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some((c.round, p));
                Response::PofCommit {
                    round: c.round,
                    root,
                }
            }
            Err(e) => refuse(e.to_string()),
        }
    }

    /// Opens the committed result of `round`.
    pub fn open(&self, round: u64, query: &tabnode_pof::Query) -> Response {
        let guard = self.current.lock().unwrap_or_else(|p| p.into_inner());
        match &*guard {
            Some((r, p)) if *r == round => Response::PofOpening(Box::new(p.answer(query))),
            _ => refuse(format!("nothing committed for round {round}")),
        }
    }
}

impl RequestHandler for PofProver {
    fn handle(&self, _peer: &str, request: Request) -> Response {
        match request {
            Request::PofChallenge(c) => self.commit(&c),
            Request::PofOpen { round, query } => self.open(round, &query),
            other => refuse(format!("unexpected request {other:?}")),
        }
    }
}
