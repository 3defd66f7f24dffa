//! Proof-of-FLOPS between the relay and native nodes: an honest node passes,
//! every kind of cheat is rejected with its reason and lowers the standing.

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use libp2p::PeerId;
use tabnode_core::{Capabilities, NodeKind, PofRecord, Request, Response};
use tabnode_node::prover::{Backend, PofProver, RequestHandler};
use tabnode_node::{spawn, NodeConfig, NodeHandle};
use tabnode_pof::{expand, matmul_cpu, Prover};
use tabnode_relay::{PofConfig, RelayConfig, RelayHandle};

const WAIT: Duration = Duration::from_secs(60);

async fn relay(dir: &tempfile::TempDir, pof: PofConfig) -> RelayHandle {
    let mut cfg = RelayConfig::ephemeral(dir.path().join("relay"), PathBuf::from("."));
    cfg.pof = pof;
    tabnode_relay::start(cfg).await.expect("relay starts")
}

fn small() -> PofConfig {
    PofConfig {
        min_n: 96,
        max_n: 96,
        ..PofConfig::default()
    }
}

fn node(relay: &RelayHandle, handler: Arc<dyn RequestHandler>, pledge_mib: u64) -> NodeHandle {
    let mut caps = Capabilities::new(NodeKind::Native, "pof-test");
    caps.pledged_vram_mib = pledge_mib;
    spawn(NodeConfig {
        relay: relay.tcp_addr().expect("tcp"),
        key: None,
        capabilities: caps,
        max_backoff: Duration::from_millis(500),
        handler,
        server: None,
    })
    .expect("node starts")
}

fn honest() -> Arc<PofProver> {
    Arc::new(PofProver::new(Backend::Cpu))
}

/// Waits for the relay's first Proof-of-FLOPS record of `peer`.
async fn first_record(relay: &RelayHandle, peer: PeerId) -> PofRecord {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    loop {
        if let Some(h) = relay.state.pof_history(&peer) {
            if let Some(r) = h.records.front() {
                return r.clone();
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no proof recorded for {peer}"
        );
        tick.tick().await;
    }
}

async fn expect_rejection(relay: &RelayHandle, peer: PeerId, reason: &str) {
    let r = first_record(relay, peer).await;
    assert!(!r.passed, "a cheat passed: {r:?}");
    let got = r.reason.clone().unwrap_or_default();
    assert!(got.contains(reason), "reason {got:?} lacks {reason:?}");
    let h = relay.state.pof_history(&peer).expect("history");
    assert_eq!((h.standing.passed, h.standing.failed), (0, 1));
    assert!(h.standing.standing < 0, "standing must drop");
    assert_eq!(h.standing.verified_gflops, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_challenges_a_joining_node_and_verifies_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = relay(
        &dir,
        PofConfig {
            min_n: 200,
            max_n: 200,
            ..PofConfig::default()
        },
    )
    .await;
    let n = node(&relay, honest(), 0);
    let r = first_record(&relay, n.peer_id).await;
    assert!(r.passed, "honest proof failed: {r:?}");
    assert_eq!(r.n, 200);
    assert!(r.gflops > 0.0 && r.commit_ms < 60_000, "{r:?}");
    let summary = relay
        .state
        .summaries()
        .into_iter()
        .find(|s| s.peer_id == n.peer_id.to_string())
        .expect("listed");
    assert_eq!(summary.pof.verified_gflops, Some(r.gflops));
    assert_eq!(summary.pof.standing, 1);
    assert!(relay
        .state
        .render_metrics()
        .contains("tabnode_pof_total{outcome=\"passed\"} 1"));
}

/// Computes `C` for the challenge, lets `tamper` change it, then answers
/// consistently with the tampered matrix.
struct Tampered<F: Fn(&mut Vec<f32>, u32) + Send + Sync>(F, Mutex<Option<(u64, Prover)>>);

impl<F: Fn(&mut Vec<f32>, u32) + Send + Sync> RequestHandler for Tampered<F> {
    fn handle(&self, _: &str, request: Request) -> Response {
        match request {
            Request::PofChallenge(c) => {
                let (a, b) = expand(&c.seed, c.n).expect("expand");
                let mut m = matmul_cpu(&a, &b, c.n as usize);
                (self.0)(&mut m, c.n);
                let p = Prover::new(c.n, &m).expect("prover");
                let root = p.root();
                *self.1.lock().expect("lock") = Some((c.round, p));
                Response::PofCommit {
                    round: c.round,
                    root,
                }
            }
            Request::PofOpen { query, .. } => {
                let g = self.1.lock().expect("lock");
                let (_, p) = g.as_ref().expect("committed");
                Response::PofOpening(Box::new(p.answer(&query)))
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_value_in_c_is_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = relay(&dir, small()).await;
    let cheat = Tampered(
        |c: &mut Vec<f32>, n| c[(n as usize) * 3 + 1] += 1.0,
        Mutex::new(None),
    );
    let n = node(&relay, Arc::new(cheat), 0);
    expect_rejection(&relay, n.peer_id, "Freivalds").await;
}

/// Computes only 90% of the rows and borrows `y = C·r` from the full product
/// (which a cheater can get in O(n²) as A·(B·r)).
struct Lazy {
    honest: PofProver,
    lazy: Mutex<Option<Prover>>,
}

impl RequestHandler for Lazy {
    fn handle(&self, peer: &str, request: Request) -> Response {
        match request {
            Request::PofChallenge(c) => {
                let (a, b) = expand(&c.seed, c.n).expect("expand");
                let mut m = matmul_cpu(&a, &b, c.n as usize);
                let keep = (c.n as usize * 9 / 10) * c.n as usize;
                m[keep..].iter_mut().for_each(|v| *v = 0.0);
                let p = Prover::new(c.n, &m).expect("prover");
                let root = p.root();
                *self.lazy.lock().expect("lock") = Some(p);
                // Only to have the true y at hand for the opening.
                let _ = self.honest.handle(peer, Request::PofChallenge(c.clone()));
                Response::PofCommit {
                    round: c.round,
                    root,
                }
            }
            Request::PofOpen { round, query } => {
                let Response::PofOpening(true_answer) = self.honest.handle(
                    peer,
                    Request::PofOpen {
                        round,
                        query: query.clone(),
                    },
                ) else {
                    panic!("honest opening");
                };
                let g = self.lazy.lock().expect("lock");
                let mut answer = g.as_ref().expect("committed").answer(&query);
                answer.cr = true_answer.cr;
                Response::PofOpening(Box::new(answer))
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ninety_percent_of_the_rows_is_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Open every row, so the outcome does not depend on the random rows: with
    // the default k = 64 this cheat passes with probability 0.9^64 ≈ 0.1%.
    let relay = relay(&dir, PofConfig { k: 96, ..small() }).await;
    let cheat = Lazy {
        honest: PofProver::new(Backend::Cpu),
        lazy: Mutex::new(None),
    };
    let n = node(&relay, Arc::new(cheat), 0);
    expect_rejection(&relay, n.peer_id, "inconsistent with C·r").await;
}

/// Shares one computed result between colluding nodes.
#[derive(Default)]
struct Slot(Mutex<Option<Prover>>, Condvar);

/// The first colluder computes honestly and shares its result.
struct Donor(PofProver, Arc<Slot>);

impl RequestHandler for Donor {
    fn handle(&self, peer: &str, request: Request) -> Response {
        if let Request::PofChallenge(c) = &request {
            let (a, b) = expand(&c.seed, c.n).expect("expand");
            let p = Prover::new(c.n, &matmul_cpu(&a, &b, c.n as usize)).expect("prover");
            *self.1 .0.lock().expect("lock") = Some(p);
            self.1 .1.notify_all();
        }
        self.0.handle(peer, request)
    }
}

/// The second replays the first one's result for its own challenge.
struct Replayer(Arc<Slot>);

impl RequestHandler for Replayer {
    fn handle(&self, _: &str, request: Request) -> Response {
        let slot = &self.0;
        let guard = slot
            .1
            .wait_while(slot.0.lock().expect("lock"), |p| p.is_none())
            .expect("lock");
        let p = guard.as_ref().expect("shared");
        match request {
            Request::PofChallenge(c) => Response::PofCommit {
                round: c.round,
                root: p.root(),
            },
            Request::PofOpen { query, .. } => Response::PofOpening(Box::new(p.answer(&query))),
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_peers_answer_is_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = relay(&dir, small()).await;
    let slot = Arc::new(Slot::default());
    let donor = node(
        &relay,
        Arc::new(Donor(PofProver::new(Backend::Cpu), slot.clone())),
        0,
    );
    assert!(first_record(&relay, donor.peer_id).await.passed);
    let thief = node(&relay, Arc::new(Replayer(slot)), 0);
    expect_rejection(&relay, thief.peer_id, "Freivalds").await;
}

/// Answers every challenge with its first commitment (another round).
struct StaleRound(PofProver, Mutex<Option<u64>>);

impl RequestHandler for StaleRound {
    fn handle(&self, peer: &str, request: Request) -> Response {
        match self.0.handle(peer, request) {
            Response::PofCommit { round, root } => {
                let first = *self.1.lock().expect("lock").get_or_insert(round);
                // Pretend this round's commitment is the old one's.
                Response::PofCommit {
                    round: first.saturating_sub(1),
                    root,
                }
            }
            other => other,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commitment_for_another_round_is_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = relay(&dir, small()).await;
    let n = node(
        &relay,
        Arc::new(StaleRound(PofProver::new(Backend::Cpu), Mutex::new(None))),
        0,
    );
    expect_rejection(&relay, n.peer_id, "expected round").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commitment_after_the_deadline_is_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A node that claims a huge GPU gets a deadline it cannot meet with the
    // device it really has: here, a pace of 10^9 GFLOP/s.
    let pof = PofConfig {
        min_gflops: 1e9,
        deadline_floor: Duration::ZERO,
        ..small()
    };
    let relay = relay(&dir, pof).await;
    let n = node(&relay, honest(), 1 << 30);
    expect_rejection(&relay, n.peer_id, "after the deadline").await;
}

/// Proves a smaller matrix than asked (a lie about n).
struct SmallerN(PofProver);

impl RequestHandler for SmallerN {
    fn handle(&self, peer: &str, request: Request) -> Response {
        match request {
            Request::PofChallenge(mut c) => {
                c.n /= 2;
                self.0.handle(peer, Request::PofChallenge(c))
            }
            other => self.0.handle(peer, other),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proof_for_a_smaller_n_is_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = relay(&dir, small()).await;
    let n = node(&relay, Arc::new(SmallerN(PofProver::new(Backend::Cpu))), 0);
    expect_rejection(&relay, n.peer_id, "C·r has 48 elements, expected 96").await;
}

/// Answers with the wrong message, or a truncated opening.
struct Malformed(PofProver, bool);

impl RequestHandler for Malformed {
    fn handle(&self, peer: &str, request: Request) -> Response {
        match (self.0.handle(peer, request), self.1) {
            (Response::PofCommit { .. }, false) => Response::Echo(vec![1, 2, 3]),
            (Response::PofOpening(mut a), true) => {
                a.rows[0].values.truncate(10);
                Response::PofOpening(a)
            }
            (other, _) => other,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_truncated_answers_are_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = relay(&dir, small()).await;
    let wrong = node(
        &relay,
        Arc::new(Malformed(PofProver::new(Backend::Cpu), false)),
        0,
    );
    let cut = node(
        &relay,
        Arc::new(Malformed(PofProver::new(Backend::Cpu), true)),
        0,
    );
    expect_rejection(&relay, wrong.peer_id, "unexpected answer to the challenge").await;
    expect_rejection(&relay, cut.peer_id, "opened row has 10 elements").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_are_challenged_again_on_schedule() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = relay(
        &dir,
        PofConfig {
            interval: Duration::from_millis(300),
            ..small()
        },
    )
    .await;
    let n = node(&relay, honest(), 0);
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        let h = relay.state.pof_history(&n.peer_id);
        if h.as_ref().is_some_and(|h| h.records.len() >= 3) {
            let h = h.expect("history");
            assert!(h.records.iter().all(|r| r.passed));
            let rounds: Vec<u64> = h.records.iter().map(|r| r.round).collect();
            assert!(
                rounds.windows(2).all(|w| w[0] < w[1]),
                "fresh rounds: {rounds:?}"
            );
            assert_eq!(h.standing.passed as usize, h.records.len());
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not challenged again"
        );
        tick.tick().await;
    }
}
