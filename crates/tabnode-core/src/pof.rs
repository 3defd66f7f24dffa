//! The node's side of Proof-of-FLOPS, written once for tabs and native
//! nodes: size checks before any allocation, one commitment per round, the
//! answers in the protocol's shape. A backend supplies only the matmul
//! ([`Matmul`]: the worker's WebGPU kernel, a native GPU or CPU sgemm).
//!
//! Only the relay reaches this code: the driver refuses challenges and
//! openings from any other peer ([`crate::node::answer`]).

use std::future::Future;
use std::sync::{Mutex, MutexGuard};

use tabnode_pof::{expand, session::Commitments, PofError};

use crate::caps::GpuInfo;
use crate::protocol::{ErrorCode, PofChallenge, Request, Response};

/// The largest challenge a node accepts unless it says otherwise: three
/// 4096² f32 matrices and the committed rows take about 260 MB.
pub const DEFAULT_MAX_N: u32 = 4096;

/// The largest challenge a node with this GPU accepts: one matrix must fit
/// a storage binding, and never above [`DEFAULT_MAX_N`]. Tabs compute it on
/// both sides of the worker boundary from the same [`GpuInfo`].
pub fn max_n_for(gpu: Option<&GpuInfo>) -> u32 {
    let Some(gpu) = gpu else {
        return DEFAULT_MAX_N;
    };
    // As `GpuProver::max_n`: the kernel pads n to a multiple of 8.
    let by_binding = ((gpu.limits.max_storage_buffer_binding_size / 4) as f64).sqrt() as u64;
    (by_binding - by_binding % 8).min(u64::from(DEFAULT_MAX_N)) as u32
}

/// Computes `C = A·B` for a challenge (row-major `n × n`).
pub trait Matmul {
    /// Why the device failed.
    type Error: std::fmt::Display;
    /// `C = A·B`; must be exact (every order of summation is, see
    /// `tabnode-pof`).
    fn matmul(
        &self,
        a: &[f32],
        b: &[f32],
        n: u32,
    ) -> impl Future<Output = Result<Vec<f32>, Self::Error>>;
}

/// The prover state of one node.
#[derive(Debug)]
pub struct PofResponder {
    commitments: Mutex<Commitments>,
}

fn refuse(e: &PofError) -> Response {
    let code = match e {
        PofError::AboveAdvertised { .. } | PofError::TooLarge(_) => ErrorCode::TooLarge,
        _ => ErrorCode::Invalid,
    };
    Response::Error {
        code,
        message: e.to_string(),
    }
}

impl PofResponder {
    /// A prover that accepts challenges up to `max_n` (advertised in the
    /// node's capabilities as `max_pof_n`).
    pub fn new(max_n: u32) -> Self {
        Self {
            commitments: Mutex::new(Commitments::new(max_n)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Commitments> {
        self.commitments.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The largest challenge accepted.
    pub fn max_n(&self) -> u32 {
        self.lock().max_n()
    }

    /// Answers a [`Request::PofChallenge`] or [`Request::PofOpen`] (the
    /// caller has checked that the relay sent it); `None` for anything else.
    pub async fn answer<M: Matmul>(&self, backend: &M, request: &Request) -> Option<Response> {
        match request {
            Request::PofChallenge(c) => Some(self.commit(backend, c).await),
            Request::PofOpen { round, query } => Some(match self.lock().open(*round, query) {
                Ok(answer) => Response::PofOpening(Box::new(answer)),
                Err(e) => refuse(&e),
            }),
            _ => None,
        }
    }

    async fn commit<M: Matmul>(&self, backend: &M, c: &PofChallenge) -> Response {
        // Before anything is allocated: a size above what this node
        // advertised (or one that cannot be addressed) is refused.
        if let Err(e) = self.lock().admit(c.n) {
            return refuse(&e);
        }
        let (a, b) = match expand(&c.seed, c.n) {
            Ok(m) => m,
            Err(e) => return refuse(&e),
        };
        let product = match backend.matmul(&a, &b, c.n).await {
            Ok(p) => p,
            Err(e) => {
                return Response::Error {
                    code: ErrorCode::Invalid,
                    message: format!("the device failed: {e}"),
                }
            }
        };
        match self.lock().commit(c.round, c.n, &product) {
            Ok(root) => Response::PofCommit {
                round: c.round,
                root,
            },
            Err(e) => refuse(&e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;
    use tabnode_pof::{derive_seed, matmul_cpu, verify, Query};

    struct Cpu;

    impl Matmul for Cpu {
        type Error = std::convert::Infallible;
        async fn matmul(&self, a: &[f32], b: &[f32], n: u32) -> Result<Vec<f32>, Self::Error> {
            Ok(matmul_cpu(a, b, n as usize))
        }
    }

    fn challenge(round: u64, n: u32) -> PofChallenge {
        PofChallenge {
            round,
            n,
            seed: derive_seed(&[1; 32], b"me", round, n),
            deadline_ms: 1000,
        }
    }

    #[test]
    fn commits_and_opens_per_round() {
        let p = PofResponder::new(64);
        let c1 = challenge(1, 40);
        let Some(Response::PofCommit { round: 1, root }) =
            block_on(p.answer(&Cpu, &Request::PofChallenge(c1.clone())))
        else {
            panic!("no commitment");
        };
        // Another challenge before round 1 is opened does not clobber it.
        let second = block_on(p.answer(&Cpu, &Request::PofChallenge(challenge(2, 8))));
        assert!(matches!(second, Some(Response::PofCommit { round: 2, .. })));
        let query = Query {
            nonce: [4; 32],
            k: 16,
        };
        let open = Request::PofOpen {
            round: 1,
            query: query.clone(),
        };
        let Some(Response::PofOpening(answer)) = block_on(p.answer(&Cpu, &open)) else {
            panic!("no opening");
        };
        assert!(verify(&c1.seed, 40, &root, &query, &answer).is_ok());
        let missing = Request::PofOpen { round: 9, query };
        assert!(matches!(
            block_on(p.answer(&Cpu, &missing)),
            Some(Response::Error { code: ErrorCode::Invalid, message }) if message.contains("round 9")
        ));
        assert_eq!(block_on(p.answer(&Cpu, &Request::ListPeers)), None);
    }

    /// A backend that must never be reached.
    struct Unreachable;

    impl Matmul for Unreachable {
        type Error = std::convert::Infallible;
        async fn matmul(&self, _: &[f32], _: &[f32], n: u32) -> Result<Vec<f32>, Self::Error> {
            panic!("matmul of n = {n} was started");
        }
    }

    #[test]
    fn oversized_challenges_are_refused_before_any_work() {
        let p = PofResponder::new(DEFAULT_MAX_N);
        for n in [DEFAULT_MAX_N + 1, 65_536, tabnode_pof::MAX_N, u32::MAX] {
            let r = block_on(p.answer(&Unreachable, &Request::PofChallenge(challenge(1, n))));
            assert!(
                matches!(
                    r,
                    Some(Response::Error {
                        code: ErrorCode::TooLarge,
                        ..
                    })
                ),
                "n {n}: {r:?}"
            );
        }
        let zero = block_on(p.answer(&Unreachable, &Request::PofChallenge(challenge(1, 0))));
        assert!(matches!(zero, Some(Response::Error { .. })), "{zero:?}");
    }
}
