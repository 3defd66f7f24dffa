//! The relay's Proof-of-FLOPS challenger.
//!
//! A node is challenged when it registers and then at random times, with
//! exponential gaps of mean [`PofConfig::interval`] (a Poisson process: no
//! fixed phase a node could prepare for, no thundering herd after a
//! restart), sooner after a failure. One challenge: size it from the
//! node's proven rate (or, before it has one, from the device class it
//! claims), never above what it advertised; measure the round trip; derive
//! the seed from the relay's secret, the node's peer id and a fresh round
//! number; send it; time the commitment against a deadline from the same
//! rate; send a fresh query; verify the opening on a bounded pool of
//! blocking threads (one per core); record the result (and the node's
//! standing) in [`RelayState`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use libp2p::PeerId;
use rand::{Rng, RngCore};
use tabnode_core::{Capabilities, DeviceClass, PofChallenge, PofRecord, Request, Response};
use tabnode_pof::{
    derive_seed, expand, flops, max_n_for_message, verify_with, Query, DEFAULT_K, MAX_N, MIN_K,
};
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;

use crate::client::{SendError, SwarmClient};
use crate::now_ms;
use crate::state::RelayState;

/// Why a proof failed: its record's `reason`.
#[derive(Debug, thiserror::Error)]
enum ProofFailure {
    /// The node could not be reached or did not answer in time.
    #[error(transparent)]
    Send(#[from] SendError),
    /// The node answered with something else than the step asks for.
    #[error("unexpected answer to the {step}: {answer}")]
    Unexpected { step: &'static str, answer: String },
    /// The node committed to another round.
    #[error("commitment for round {got}, expected round {want}")]
    WrongRound { got: u64, want: u64 },
    /// The node refused the challenge or the query.
    #[error("node refused: {0}")]
    Refused(String),
    /// The commitment came after the deadline.
    #[error("committed after the deadline ({took_ms} ms > {deadline_ms} ms)")]
    Late { took_ms: u128, deadline_ms: u128 },
    /// The opening does not verify.
    #[error(transparent)]
    Invalid(#[from] tabnode_pof::PofError),
    /// The verification task panicked.
    #[error("verifier crashed: {0}")]
    Crashed(#[from] tokio::task::JoinError),
}

impl ProofFailure {
    /// Whether the challenge never reached the node or its answer never
    /// came back because the way to it closed (its link broke, its
    /// connection closed): nothing about its compute.
    fn undelivered(&self) -> bool {
        use libp2p::request_response::OutboundFailure;
        matches!(
            self,
            Self::Send(
                SendError::LinkClosed
                    | SendError::Outbound(
                        OutboundFailure::ConnectionClosed | OutboundFailure::DialFailure
                    )
            )
        )
    }

    fn unexpected(step: &'static str, answer: &Response) -> Self {
        Self::Unexpected {
            step,
            answer: format!("{answer:?}"),
        }
    }
}

/// Proof-of-FLOPS settings of the relay.
#[derive(Debug, Clone)]
pub struct PofConfig {
    /// Mean time between two challenges of one node (exponential gaps).
    pub interval: Duration,
    /// Rows opened per challenge.
    pub k: u32,
    /// Smallest matrix.
    pub min_n: u32,
    /// Largest matrix.
    pub max_n: u32,
    /// The slowest rate any deadline allows for, in GFLOP/s (device classes
    /// and proven rates only ever make deadlines shorter).
    pub min_gflops: f64,
    /// Added to every deadline (network, start-up, shader compilation).
    pub deadline_floor: Duration,
    /// Time allowed for the opening.
    pub open_timeout: Duration,
    /// How long a challenge should compute at the node's proven rate: the
    /// size grows until compute dominates the round trip.
    pub target_compute: Duration,
    /// Verifications run at once (default: one per core); the rest queue.
    pub verifiers: usize,
    /// Challenges in flight at once; the rest wait for a slot.
    pub max_in_flight: usize,
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
            target_compute: Duration::from_secs(2),
            verifiers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            max_in_flight: 64,
        }
    }
}

/// A Proof-of-FLOPS setting the relay refuses to start with.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PofConfigError {
    /// Too few opened rows: a prover that skips most rows would pass (and
    /// with none, a random root plus the true `y` passes with no matmul).
    #[error("Proof-of-FLOPS must open at least {MIN_K} rows per challenge, not {0}")]
    TooFewRows(u32),
    /// The slowest allowed rate must be a positive number.
    #[error("the slowest Proof-of-FLOPS rate must be positive, not {0} GFLOP/s")]
    BadRate(f64),
    /// The size range is empty or zero.
    #[error("Proof-of-FLOPS sizes {min}..={max} are not a range of positive sizes")]
    BadSizes {
        /// Smallest.
        min: u32,
        /// Largest.
        max: u32,
    },
    /// No verifier or no challenge slot.
    #[error("Proof-of-FLOPS needs at least one verifier and one challenge in flight")]
    NoWorkers,
}

/// How a challenge was sized.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sizing {
    /// The matrix size.
    pub n: u32,
    /// The commit deadline.
    pub deadline: Duration,
    /// `history` or the device class it came from.
    pub sized_by: &'static str,
}

/// What the relay assumes of a device class before a node has a proven
/// rate: a typical rate (sizes the first challenge) and the slowest
/// plausible one (sets its deadline), in GFLOP/s. SwiftShader measured
/// ~3.4 GFLOP/s with our kernel, CPU sgemm 38–81 on 2 cores (BENCHMARKS.md);
/// any hardware GPU does far more than 20.
pub fn class_rates(class: DeviceClass) -> (f64, f64) {
    match class {
        DeviceClass::Cpu => (10.0, 0.5),
        DeviceClass::SoftwareGpu => (3.0, 0.5),
        DeviceClass::Gpu => (200.0, 20.0),
    }
}

impl PofConfig {
    /// Checks the settings and clamps the largest size to what stays exact
    /// ([`tabnode_pof::MAX_N`]) and to what an opening can carry in one
    /// message ([`tabnode_core::MAX_MESSAGE`]).
    ///
    /// # Errors
    /// [`PofConfigError`] for settings that would make proofs meaningless or
    /// crash the relay.
    pub fn validated(mut self) -> Result<Self, PofConfigError> {
        if self.k < MIN_K {
            return Err(PofConfigError::TooFewRows(self.k));
        }
        if !(self.min_gflops.is_finite() && self.min_gflops > 0.0) {
            return Err(PofConfigError::BadRate(self.min_gflops));
        }
        if self.verifiers == 0 || self.max_in_flight == 0 {
            return Err(PofConfigError::NoWorkers);
        }
        let by_message = max_n_for_message(self.k, tabnode_core::MAX_MESSAGE as u64);
        self.max_n = self.max_n.min(MAX_N).min(by_message);
        if self.min_n == 0 || self.min_n > self.max_n {
            return Err(PofConfigError::BadSizes {
                min: self.min_n,
                max: self.max_n,
            });
        }
        Ok(self)
    }

    /// The commit deadline for size `n` at `gflops` (saturating, never
    /// panics): the floor plus the compute time at that rate, never at a
    /// rate below [`PofConfig::min_gflops`].
    pub fn deadline_at(&self, n: u32, gflops: f64) -> Duration {
        let rate = gflops.max(self.min_gflops) * 1e9;
        let pace = Duration::try_from_secs_f64(flops(n) / rate).unwrap_or(Duration::MAX);
        self.deadline_floor.saturating_add(pace)
    }

    /// Sizes a challenge for a node that claims `caps` and last proved
    /// `proven` GFLOP/s (if it did): large enough to compute for about
    /// [`PofConfig::target_compute`] at that rate, within
    /// `min_n..=max_n`, and never above what the node advertised (a node
    /// that advertises less than `min_n` is asked `min_n` and refuses).
    /// The deadline allows a quarter of the proven rate, or the class's
    /// slowest plausible rate.
    pub fn size(&self, caps: Option<&Capabilities>, proven: Option<f64>) -> Sizing {
        let class = caps.map_or(DeviceClass::Cpu, Capabilities::device_class);
        let (typical, slowest) = class_rates(class);
        let (rate, allowed, sized_by) = match proven {
            Some(r) if r.is_finite() && r > 0.0 => (r, r / 4.0, "history"),
            _ => (typical, slowest, class_name(class)),
        };
        // 2n³ = rate · target.
        let ideal = (rate * 1e9 * self.target_compute.as_secs_f64() / 2.0).cbrt();
        let advertised = caps.map_or(self.max_n, |c| c.max_pof_n);
        // (max/min rather than clamp: never panics, even unvalidated.)
        let n = (ideal as u32)
            .min(self.max_n)
            .min(advertised)
            .max(self.min_n);
        Sizing {
            n,
            deadline: self.deadline_at(n, allowed),
            sized_by,
        }
    }

    /// The delay before a node's next challenge: exponential with mean
    /// `interval` (a tenth of it after a failure, so a node that failed
    /// once can win its standing back), clamped to 1/20..5× the mean.
    pub fn next_gap(&self, passed: bool, rng: &mut impl Rng) -> Duration {
        let mean = if passed {
            self.interval
        } else {
            self.interval / 10
        };
        let u: f64 = rng.gen_range(f64::EPSILON..1.0);
        let gap = mean.as_secs_f64() * -u.ln();
        Duration::from_secs_f64(gap.clamp(mean.as_secs_f64() / 20.0, mean.as_secs_f64() * 5.0))
    }

    /// The delay before the next challenge of a node whose last one ended
    /// as `result`.
    fn gap_after(&self, result: Challenged, rng: &mut impl Rng) -> Duration {
        let gap = self.next_gap(result == Challenged::Passed, rng);
        match result {
            Challenged::Undelivered => gap.min(UNDELIVERED_RETRY),
            Challenged::Passed | Challenged::Failed => gap,
        }
    }
}

fn class_name(class: DeviceClass) -> &'static str {
    match class {
        DeviceClass::Cpu => "cpu",
        DeviceClass::SoftwareGpu => "software_gpu",
        DeviceClass::Gpu => "gpu",
    }
}

struct Challenger {
    config: PofConfig,
    state: Arc<RelayState>,
    client: SwarmClient,
    secret: [u8; 32],
    round: AtomicU64,
    verifiers: Semaphore,
    in_flight: Semaphore,
}

/// A challenge's outcome, back to the scheduler.
struct Finished {
    peer: PeerId,
    result: Challenged,
}

/// How a challenge ended, for the scheduler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Challenged {
    Passed,
    Failed,
    /// Failed because the way to the node closed under it: recorded as a
    /// failure (a node cannot dodge proofs by dropping its link), and the
    /// next challenge comes after [`UNDELIVERED_RETRY`], not minutes later
    /// with the node out of matchmaking meanwhile.
    Undelivered,
}

/// The longest delay before challenging again a node whose last challenge
/// was [`Challenged::Undelivered`].
const UNDELIVERED_RETRY: Duration = Duration::from_secs(5);

impl Challenger {
    async fn request(
        &self,
        peer: PeerId,
        request: Request,
        timeout: Duration,
    ) -> Result<Response, SendError> {
        self.client.request(peer, request, timeout).await
    }

    /// Runs one challenge against `peer` and records the result.
    async fn challenge(self: Arc<Self>, peer: PeerId, done: mpsc::UnboundedSender<Finished>) {
        let result = match self.in_flight.acquire().await {
            Ok(_slot) => self.challenge_now(peer).await,
            Err(_) => Challenged::Failed,
        };
        let _ = done.send(Finished { peer, result });
    }

    async fn challenge_now(&self, peer: PeerId) -> Challenged {
        let caps = self.state.registry.capabilities(&peer);
        let proven = self.state.registry.proven_gflops(&peer);
        let sizing = self.config.size(caps.as_ref(), proven);
        let class = caps
            .as_ref()
            .map_or(DeviceClass::Cpu, Capabilities::device_class);
        let n = sizing.n;
        let round = self.round.fetch_add(1, Ordering::Relaxed);
        let at_ms = now_ms();
        let mut record = PofRecord {
            at_ms,
            round,
            n,
            sized_by: sizing.sized_by.into(),
            device_class: class,
            commit_ms: 0,
            rtt_ms: 0.0,
            deadline_ms: sizing.deadline.as_millis() as u64,
            matmul_gflops: 0.0,
            passed: false,
            reason: None,
        };
        let result = match self.run(peer, round, sizing, &mut record).await {
            Ok(()) => {
                record.passed = true;
                tracing::info!(%peer, round, n, gflops = record.matmul_gflops, "proof passed");
                Challenged::Passed
            }
            Err(reason) => {
                tracing::warn!(%peer, round, n, "proof failed: {reason}");
                record.reason = Some(reason.to_string());
                if reason.undelivered() {
                    Challenged::Undelivered
                } else {
                    Challenged::Failed
                }
            }
        };
        self.state.record_pof(peer, record);
        result
    }

    async fn run(
        &self,
        peer: PeerId,
        round: u64,
        sizing: Sizing,
        record: &mut PofRecord,
    ) -> Result<(), ProofFailure> {
        let Sizing { n, deadline, .. } = sizing;
        // The round trip, measured just before, is not compute.
        let ping = Instant::now();
        match self
            .request(
                peer,
                Request::Echo(round.to_le_bytes().to_vec()),
                self.config.open_timeout,
            )
            .await?
        {
            Response::Echo(_) => {}
            other => return Err(ProofFailure::unexpected("round-trip probe", &other)),
        }
        let rtt = ping.elapsed();
        record.rtt_ms = rtt.as_secs_f64() * 1e3;
        let seed = derive_seed(&self.secret, &peer.to_bytes(), round, n);
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
                deadline.saturating_add(Duration::from_secs(5)),
            )
            .await;
        let commit_time = started.elapsed();
        record.commit_ms = commit_time.as_millis() as u64;
        let compute = commit_time
            .saturating_sub(rtt)
            .max(Duration::from_micros(100));
        record.matmul_gflops = flops(n) / compute.as_secs_f64() / 1e9;
        let root = match commit? {
            Response::PofCommit { round: r, root } if r == round => root,
            Response::PofCommit { round: got, .. } => {
                return Err(ProofFailure::WrongRound { got, want: round })
            }
            Response::Error { message, .. } => return Err(ProofFailure::Refused(message)),
            other => return Err(ProofFailure::unexpected("challenge", &other)),
        };
        if commit_time > deadline {
            return Err(ProofFailure::Late {
                took_ms: commit_time.as_millis(),
                deadline_ms: deadline.as_millis(),
            });
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
            Response::Error { message, .. } => return Err(ProofFailure::Refused(message)),
            other => return Err(ProofFailure::unexpected("query", &other)),
        };
        // At most one verification per core; the rest wait here.
        let _permit = self
            .verifiers
            .acquire()
            .await
            .map_err(|_| ProofFailure::Send(SendError::Stopped))?;
        tokio::task::spawn_blocking(move || {
            let (a, b) = expand(&seed, n)?;
            verify_with(&a, &b, n, &root, &query, &answer)
        })
        .await??;
        Ok(())
    }
}

/// Runs the challenger until the relay stops.
pub(crate) async fn run(
    config: PofConfig,
    state: Arc<RelayState>,
    client: SwarmClient,
    mut joined: mpsc::Receiver<PeerId>,
) {
    let mut secret = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut secret);
    let tick = config.interval.min(Duration::from_secs(1));
    let ch = Arc::new(Challenger {
        verifiers: Semaphore::new(config.verifiers.max(1)),
        in_flight: Semaphore::new(config.max_in_flight.max(1)),
        config,
        state,
        client,
        secret,
        round: AtomicU64::new(1),
    });
    let (done_tx, mut done) = mpsc::unbounded_channel::<Finished>();
    // When each node is due next; a node with a challenge running is absent
    // and in `running`.
    let mut due: HashMap<PeerId, Instant> = HashMap::new();
    let mut running: std::collections::HashSet<PeerId> = std::collections::HashSet::new();
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let start: Vec<PeerId> = tokio::select! {
            peer = joined.recv() => match peer {
                // A (re-)registration: challenge now unless it is scheduled
                // (a node that re-registers, e.g. with a loaded model, is not
                // challenged again for it).
                Some(p) if !running.contains(&p) && !due.contains_key(&p) => vec![p],
                Some(_) => Vec::new(),
                None => return,
            },
            Some(f) = done.recv() => {
                running.remove(&f.peer);
                let gap = ch.config.gap_after(f.result, &mut rand::thread_rng());
                due.insert(f.peer, Instant::now() + gap);
                Vec::new()
            }
            _ = ticker.tick() => {
                let connected: std::collections::HashSet<PeerId> = ch
                    .state
                    .registry
                    .registered_peers()
                    .into_iter()
                    .collect();
                // Departed nodes leave the schedule; their history goes once
                // it is older than the interval.
                due.retain(|p, _| connected.contains(p));
                ch.state.registry.evict_departed(ch.config.interval);
                let now = Instant::now();
                due.iter().filter(|(_, t)| **t <= now).map(|(p, _)| *p).collect()
            }
        };
        for peer in start {
            due.remove(&peer);
            running.insert(peer);
            tokio::spawn(ch.clone().challenge(peer, done_tx.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn caps(gpu: Option<bool>, max_pof_n: u32) -> Capabilities {
        let mut c = Capabilities::new(tabnode_core::NodeKind::Browser, "t");
        c.gpu = gpu.map(|fallback| tabnode_core::GpuInfo {
            is_fallback: fallback,
            ..Default::default()
        });
        c.max_pof_n = max_pof_n;
        // A pledge no longer makes challenges smaller.
        c.pledged_vram_mib = 0;
        c
    }

    #[test]
    fn sizes_come_from_the_device_class_then_the_proven_rate() {
        let c = PofConfig::default();
        let cpu = c.size(Some(&caps(None, 4096)), None);
        let soft = c.size(Some(&caps(Some(true), 4096)), None);
        let gpu = c.size(Some(&caps(Some(false), 4096)), None);
        assert_eq!(
            (cpu.sized_by, soft.sized_by, gpu.sized_by),
            ("cpu", "software_gpu", "gpu")
        );
        // 2n³ ≈ rate · 2 s: 10 GFLOP/s → n ≈ 2154 → max_n; 3 → 1442.
        assert_eq!(cpu.n, 2048);
        assert_eq!(soft.n, 1442);
        assert_eq!(gpu.n, 2048);
        // Deadlines from the slowest plausible rate of the class.
        assert!(gpu.deadline < soft.deadline);
        assert_eq!(soft.deadline, c.deadline_at(1442, 0.5));
        // With a history: sized for ~2 s at the proven rate, deadline at a
        // quarter of it.
        let seen = c.size(Some(&caps(Some(true), 4096)), Some(0.5));
        assert_eq!(seen.sized_by, "history");
        assert_eq!(seen.n, 793);
        assert_eq!(seen.deadline, c.deadline_at(793, 0.125));
        // Never above what the node advertised; never below the minimum.
        assert_eq!(c.size(Some(&caps(Some(false), 512)), None).n, 512);
        assert_eq!(c.size(Some(&caps(Some(false), 16)), None).n, 256);
        assert_eq!(c.size(Some(&caps(None, 4096)), Some(1e-6)).n, 256);
    }

    #[test]
    fn challenge_gaps_are_exponential_with_the_configured_mean() {
        let c = PofConfig {
            interval: Duration::from_secs(100),
            ..PofConfig::default()
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let gaps: Vec<f64> = (0..4000)
            .map(|_| c.next_gap(true, &mut rng).as_secs_f64())
            .collect();
        let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
        assert!((90.0..110.0).contains(&mean), "mean {mean}");
        // Memoryless: about e⁻¹ of the gaps exceed the mean; no fixed phase.
        let over = gaps.iter().filter(|g| **g > 100.0).count() as f64 / 4000.0;
        assert!((0.33..0.41).contains(&over), "{over}");
        assert!(gaps.iter().all(|g| (5.0..=500.0).contains(g)));
        let after_failure = c.next_gap(false, &mut rng);
        assert!(after_failure <= Duration::from_secs(50));
    }

    #[test]
    fn a_challenge_the_way_to_the_node_lost_is_tried_again_within_seconds() {
        use libp2p::request_response::OutboundFailure;
        // What says nothing of the node's compute, and what does.
        let undelivered = [
            ProofFailure::Send(SendError::LinkClosed),
            ProofFailure::Send(SendError::Outbound(OutboundFailure::ConnectionClosed)),
            ProofFailure::Send(SendError::Outbound(OutboundFailure::DialFailure)),
        ];
        assert!(undelivered.iter().all(ProofFailure::undelivered));
        let failed = [
            ProofFailure::Send(SendError::Timeout(10_000)),
            ProofFailure::Late {
                took_ms: 11_000,
                deadline_ms: 10_000,
            },
            ProofFailure::Refused("busy".into()),
            ProofFailure::WrongRound { got: 1, want: 2 },
        ];
        assert!(!failed.iter().any(ProofFailure::undelivered));
        let c = PofConfig::default();
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for _ in 0..1000 {
            assert!(c.gap_after(Challenged::Undelivered, &mut rng) <= UNDELIVERED_RETRY);
        }
        // A real failure or a pass waits as before: minutes.
        let failed_gaps: Vec<Duration> = (0..1000)
            .map(|_| c.gap_after(Challenged::Failed, &mut rng))
            .collect();
        assert!(failed_gaps.iter().all(|g| *g >= c.interval / 200));
        assert!(failed_gaps.iter().any(|g| *g > Duration::from_secs(60)));
        assert!(c.gap_after(Challenged::Passed, &mut rng) >= c.interval / 20);
    }

    #[test]
    fn footgun_settings_are_refused_or_clamped() {
        let ok = PofConfig::default()
            .validated()
            .expect("defaults are valid");
        assert_eq!(ok.max_n, 2048);
        for k in [0, 1, MIN_K - 1] {
            let c = PofConfig {
                k,
                ..PofConfig::default()
            };
            assert_eq!(
                c.validated().expect_err("few rows"),
                PofConfigError::TooFewRows(k)
            );
        }
        for rate in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let c = PofConfig {
                min_gflops: rate,
                ..PofConfig::default()
            };
            assert!(
                matches!(c.clone().validated(), Err(PofConfigError::BadRate(_))),
                "{rate}"
            );
            // And the deadline itself never panics, whatever the rate.
            let _ = c.deadline_at(2048, rate);
        }
        let huge = PofConfig {
            max_n: u32::MAX,
            ..PofConfig::default()
        }
        .validated()
        .expect("clamped");
        assert!(huge.max_n <= MAX_N);
        assert!(
            tabnode_pof::answer_size_bound(huge.max_n, huge.k) <= tabnode_core::MAX_MESSAGE as u64
        );
        let empty = PofConfig {
            min_n: 0,
            ..PofConfig::default()
        };
        assert!(matches!(
            empty.validated(),
            Err(PofConfigError::BadSizes { .. })
        ));
    }
}
