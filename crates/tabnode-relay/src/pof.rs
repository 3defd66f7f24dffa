//! The relay's Proof-of-FLOPS challenger.
//!
//! A node is challenged when it registers and then every
//! [`PofConfig::interval`]. One challenge: derive the seed from the relay's
//! secret, the node's peer id and a fresh round number; send it; time the
//! commitment against the deadline; send a fresh query; verify the opening
//! off the async runtime; record the result (and the node's standing) in
//! [`RelayState`].

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use libp2p::PeerId;
use rand::RngCore;
use tabnode_core::{PofChallenge, PofRecord, Request, Response};
use tabnode_pof::{derive_seed, expand, flops, n_for_pledge, verify_with, Query, DEFAULT_K};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::{state::RelayState, swarm::RelayCommand};

/// Proof-of-FLOPS settings of the relay.
#[derive(Debug, Clone)]
pub struct PofConfig {
    /// Time between two challenges of one node.
    pub interval: Duration,
    /// Rows opened per challenge.
    pub k: u32,
    /// Smallest matrix (nodes that pledge nothing).
    pub min_n: u32,
    /// Largest matrix.
    pub max_n: u32,
    /// The slowest rate the deadline allows for, in GFLOP/s.
    pub min_gflops: f64,
    /// Added to every deadline (network, start-up, shader compilation).
    pub deadline_floor: Duration,
    /// Time allowed for the opening.
    pub open_timeout: Duration,
}

impl Default for PofConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(3600),
            k: DEFAULT_K,
            min_n: 256,
            max_n: 2048,
            min_gflops: 0.25,
            deadline_floor: Duration::from_secs(10),
            open_timeout: Duration::from_secs(60),
        }
    }
}

impl PofConfig {
    /// The commit deadline for size `n`.
    pub fn deadline(&self, n: u32) -> Duration {
        self.deadline_floor + Duration::from_secs_f64(flops(n) / (self.min_gflops * 1e9))
    }

    /// The matrix size for a node that pledges `pledge_mib` MiB of VRAM and
    /// binds at most `max_binding` bytes.
    pub fn size_for(&self, pledge_mib: u64, max_binding: u64) -> u32 {
        n_for_pledge(pledge_mib.saturating_mul(1 << 20), max_binding, self.max_n)
            .max(self.min_n)
            .min(self.max_n)
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

struct Challenger {
    config: PofConfig,
    state: Arc<RelayState>,
    commands: mpsc::Sender<RelayCommand>,
    secret: [u8; 32],
    round: AtomicU64,
    in_flight: Mutex<HashSet<PeerId>>,
}

impl Challenger {
    async fn request(
        &self,
        peer: PeerId,
        request: Request,
        timeout: Duration,
    ) -> Result<Response, String> {
        crate::swarm::request(&self.commands, peer, request, timeout).await
    }

    /// Runs one challenge against `peer` and records the result.
    async fn challenge(self: Arc<Self>, peer: PeerId) {
        let caps = self.state.capabilities(&peer);
        let pledge = caps.as_ref().map_or(0, |c| c.pledged_vram_mib);
        let binding = caps
            .as_ref()
            .and_then(|c| c.gpu.as_ref())
            .map_or(u64::MAX, |g| g.limits.max_storage_buffer_binding_size);
        let n = self.config.size_for(pledge, binding);
        let round = self.round.fetch_add(1, Ordering::Relaxed);
        let seed = derive_seed(&self.secret, &peer.to_bytes(), round, n);
        let deadline = self.config.deadline(n);
        let at_ms = now_ms();
        let started = Instant::now();
        tracing::info!(%peer, round, n, "Proof-of-FLOPS challenge");
        let commit = self
            .request(
                peer,
                Request::PofChallenge(PofChallenge {
                    round,
                    n,
                    seed,
                    deadline_ms: deadline.as_millis() as u64,
                }),
                // A little grace so a late commit is recorded as late.
                deadline + Duration::from_secs(5),
            )
            .await;
        let commit_time = started.elapsed();
        let mut record = PofRecord {
            at_ms,
            round,
            n,
            commit_ms: commit_time.as_millis() as u64,
            gflops: flops(n) / commit_time.as_secs_f64().max(1e-9) / 1e9,
            passed: false,
            reason: None,
        };
        let result = self
            .check(peer, round, n, seed, deadline, commit_time, commit)
            .await;
        match result {
            Ok(()) => {
                record.passed = true;
                tracing::info!(%peer, round, n, gflops = record.gflops, "proof passed");
            }
            Err(reason) => {
                tracing::warn!(%peer, round, n, "proof failed: {reason}");
                record.reason = Some(reason);
            }
        }
        self.state.record_pof(peer, record);
        self.in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&peer);
    }

    #[allow(clippy::too_many_arguments)]
    async fn check(
        &self,
        peer: PeerId,
        round: u64,
        n: u32,
        seed: [u8; 32],
        deadline: Duration,
        commit_time: Duration,
        commit: Result<Response, String>,
    ) -> Result<(), String> {
        let root = match commit? {
            Response::PofCommit { round: r, root } if r == round => root,
            Response::PofCommit { round: r, .. } => {
                return Err(format!("commitment for round {r}, expected round {round}"))
            }
            Response::Error { message, .. } => return Err(format!("node refused: {message}")),
            other => return Err(format!("unexpected answer to the challenge: {other:?}")),
        };
        if commit_time > deadline {
            return Err(format!(
                "committed after the deadline ({} ms > {} ms)",
                commit_time.as_millis(),
                deadline.as_millis()
            ));
        }
        let mut nonce = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut nonce);
        let query = Query {
            nonce,
            k: self.config.k,
        };
        let opening = self
            .request(
                peer,
                Request::PofOpen {
                    round,
                    query: query.clone(),
                },
                self.config.open_timeout,
            )
            .await?;
        let answer = match opening {
            Response::PofOpening(a) => a,
            Response::Error { message, .. } => return Err(format!("node refused: {message}")),
            other => return Err(format!("unexpected answer to the query: {other:?}")),
        };
        tokio::task::spawn_blocking(move || {
            let (a, b) = expand(&seed, n).map_err(|e| e.to_string())?;
            verify_with(&a, &b, n, &root, &query, &answer).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| format!("verifier crashed: {e}"))?
    }
}

/// Runs the challenger until the relay stops.
pub(crate) async fn run(
    config: PofConfig,
    state: Arc<RelayState>,
    commands: mpsc::Sender<RelayCommand>,
    mut joined: mpsc::Receiver<PeerId>,
) {
    let mut secret = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut secret);
    let tick = config.interval.min(Duration::from_secs(1));
    let ch = Arc::new(Challenger {
        config,
        state,
        commands,
        secret,
        round: AtomicU64::new(1),
        in_flight: Mutex::new(HashSet::new()),
    });
    let mut last: HashMap<PeerId, Instant> = HashMap::new();
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let due: Vec<PeerId> = tokio::select! {
            peer = joined.recv() => match peer {
                // A (re-)registration: challenge unless one is recent.
                Some(p) => vec![p],
                None => return,
            },
            _ = ticker.tick() => ch
                .state
                .summaries()
                .iter()
                .filter(|s| s.capabilities.is_some())
                .filter_map(|s| s.peer_id.parse().ok())
                .collect(),
        };
        for peer in due {
            if last
                .get(&peer)
                .is_some_and(|t| t.elapsed() < ch.config.interval)
            {
                continue;
            }
            if !ch
                .in_flight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(peer)
            {
                continue;
            }
            last.insert(peer, Instant::now());
            tokio::spawn(ch.clone().challenge(peer));
        }
        last.retain(|_, t| t.elapsed() < ch.config.interval);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_deadlines_follow_the_pledge() {
        let c = PofConfig::default();
        assert_eq!(c.size_for(0, u64::MAX), 256);
        assert_eq!(c.size_for(16, u64::MAX), 1182);
        assert_eq!(c.size_for(1 << 20, u64::MAX), 2048);
        assert_eq!(c.size_for(1 << 20, 1 << 20), 512);
        let d = c.deadline(1024);
        assert!(
            d > Duration::from_secs(18) && d < Duration::from_secs(19),
            "{d:?}"
        );
    }
}
