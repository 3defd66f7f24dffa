//! Proof-of-FLOPS between the relay and native nodes: an honest node passes,
//! every kind of cheat is rejected with its reason and lowers the standing.

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use libp2p::PeerId;
use tabnode_core::{Capabilities, ErrorCode, NodeKind, PofChallenge, PofRecord, Request, Response};
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
        embedder: None,
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
    assert_eq!(h.standing.matmul_gflops, None);
    assert!(!h.standing.valid);
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
    assert!(r.matmul_gflops > 0.0 && r.commit_ms < 60_000, "{r:?}");
    // The round trip is a ping of its own: under load (a cold CI build)
    // it can outlast a 3 ms commit by a few milliseconds.
    assert!(
        r.rtt_ms > 0.0 && r.rtt_ms < r.commit_ms as f64 + 100.0,
        "{r:?}"
    );
    let summary = relay
        .state
        .summaries()
        .into_iter()
        .find(|s| s.peer_id == n.peer_id.to_string())
        .expect("listed");
    assert_eq!(summary.pof.matmul_gflops, Some(r.matmul_gflops));
    assert!(summary.pof.valid);
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

// ---- Only the relay commands a node (issue #10, attack 1) ----

/// The honest prover, recording who it answered.
struct Witness(PofProver, Mutex<Vec<String>>);

impl RequestHandler for Witness {
    fn handle(&self, peer: &str, request: Request) -> Response {
        self.1.lock().expect("lock").push(peer.to_string());
        self.0.handle(peer, request)
    }

    fn max_pof_n(&self) -> Option<u32> {
        self.0.max_pof_n()
    }
}

fn forbidden(r: &Response) -> bool {
    matches!(r, Response::Error { code: ErrorCode::Forbidden, message }
        if message.contains("only from this node's relay"))
}

fn challenge(round: u64, n: u32) -> Request {
    Request::PofChallenge(PofChallenge {
        round,
        n,
        seed: [7; 32],
        deadline_ms: 60_000,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_from_other_peers_are_refused_and_echo_still_works() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = relay(&dir, small()).await;
    let witness = Arc::new(Witness(
        PofProver::new(Backend::Cpu),
        Mutex::new(Vec::new()),
    ));
    let victim = node(&relay, witness.clone(), 0);
    let attacker = node(&relay, honest(), 0);
    victim.wait_reachable(WAIT).await.expect("victim reachable");
    attacker
        .wait_reachable(WAIT)
        .await
        .expect("attacker reachable");
    assert!(first_record(&relay, victim.peer_id).await.passed);

    let to_victim = |request: Request| attacker.request(Some(victim.peer_id), request);
    // Peer-to-peer messages meant for peers stay allowed.
    assert_eq!(
        to_victim(Request::Echo(vec![1, 2, 3])).await.expect("echo"),
        Response::Echo(vec![1, 2, 3])
    );
    // A tiny challenge first (on a node that obeys anyone, it is computed),
    // then the crash: n = MAX_N would allocate ~550 GB.
    let infer = tabnode_core::InferRequest {
        request_id: 1,
        attempt: 0,
        model: "smollm2".into(),
        request: tabnode_core::infer::GenerateRequest::new(tabnode_core::infer::Prompt::Text(
            "hi".into(),
        )),
    };
    let commands = [
        challenge(1, 8),
        challenge(2, tabnode_pof::MAX_N),
        challenge(3, 65_536),
        Request::PofOpen {
            round: 1,
            query: tabnode_pof::Query {
                nonce: [1; 32],
                k: 64,
            },
        },
        Request::Infer(Box::new(infer)),
        Request::InferCancel { request_id: 1 },
    ];
    for request in commands {
        let name = request.name();
        let answer = to_victim(request).await.expect("an answer");
        assert!(forbidden(&answer), "{name}: {answer:?}");
    }
    // The victim's prover only ever saw its relay.
    let seen = witness.1.lock().expect("lock").clone();
    assert!(!seen.is_empty());
    assert!(
        seen.iter().all(|p| *p == relay.peer_id.to_string()),
        "{seen:?}"
    );
    // And it still proves.
    let h = relay.state.pof_history(&victim.peer_id).expect("history");
    assert_eq!(h.standing.failed, 0);
}

/// A node with no hardware of its own: it forwards its relay's challenge
/// and opening to a fast honest node and relays the answers back.
struct Outsourcer {
    victim: PeerId,
    me: Arc<std::sync::OnceLock<std::sync::Weak<NodeHandle>>>,
    rt: tokio::runtime::Handle,
}

impl RequestHandler for Outsourcer {
    fn handle(&self, _: &str, request: Request) -> Response {
        let me = loop {
            if let Some(me) = self.me.get().and_then(std::sync::Weak::upgrade) {
                break me;
            }
            std::thread::yield_now();
        };
        self.rt
            .block_on(me.request(Some(self.victim), request))
            .unwrap_or_else(|e| Response::Error {
                code: ErrorCode::Invalid,
                message: e.to_string(),
            })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outsourcing_a_challenge_to_an_honest_node_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = relay(&dir, small()).await;
    let victim = node(&relay, honest(), 0);
    victim.wait_reachable(WAIT).await.expect("victim reachable");
    assert!(first_record(&relay, victim.peer_id).await.passed);
    let me = Arc::new(std::sync::OnceLock::new());
    let outsourcer = Arc::new(node(
        &relay,
        Arc::new(Outsourcer {
            victim: victim.peer_id,
            me: me.clone(),
            rt: tokio::runtime::Handle::current(),
        }),
        0,
    ));
    me.set(Arc::downgrade(&outsourcer)).expect("set once");
    expect_rejection(&relay, outsourcer.peer_id, "only from this node's relay").await;
    let h = relay.state.pof_history(&victim.peer_id).expect("history");
    assert_eq!((h.standing.passed, h.standing.failed), (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn challenges_spammed_between_commit_and_open_do_not_fail_an_honest_node() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The victim is challenged every 300 ms while the attacker sends tiny
    // challenges as fast as it can; on a node with one commitment slot that
    // obeys anyone, one lands between a commit and its opening.
    let relay = relay(
        &dir,
        PofConfig {
            interval: Duration::from_millis(300),
            min_n: 256,
            max_n: 256,
            ..PofConfig::default()
        },
    )
    .await;
    let victim = node(&relay, honest(), 0);
    let attacker = Arc::new(node(&relay, honest(), 0));
    victim.wait_reachable(WAIT).await.expect("victim reachable");
    attacker
        .wait_reachable(WAIT)
        .await
        .expect("attacker reachable");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let spammers: Vec<_> = (0..4u64)
        .map(|lane| {
            let (attacker, stop, target) = (attacker.clone(), stop.clone(), victim.peer_id);
            tokio::spawn(async move {
                let mut answers = Vec::new();
                let mut round = lane << 32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && answers.len() < 2000 {
                    round += 1;
                    answers.push(attacker.request(Some(target), challenge(round, 8)).await);
                }
                answers
            })
        })
        .collect();
    let deadline = tokio::time::Instant::now() + WAIT;
    let records = loop {
        let h = relay.state.pof_history(&victim.peer_id);
        if let Some(h) = h.filter(|h| h.records.len() >= 4) {
            break h.records;
        }
        assert!(tokio::time::Instant::now() < deadline, "not challenged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut spam = 0;
    for s in spammers {
        for answer in s.await.expect("spammer") {
            let answer = answer.expect("an answer");
            assert!(forbidden(&answer), "{answer:?}");
            spam += 1;
        }
    }
    assert!(spam > 0, "the attacker sent nothing");
    assert!(
        records.iter().all(|r| r.passed),
        "honest proofs failed under spam: {records:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_never_challenges_above_what_a_node_advertised() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = relay(
        &dir,
        PofConfig {
            min_n: 32,
            max_n: 128,
            ..PofConfig::default()
        },
    )
    .await;
    // The network would size this node's challenge at 128 (big pledge); it
    // says it holds 64.
    let small_node = node(
        &relay,
        Arc::new(PofProver::with_max_n(Backend::Cpu, 64)),
        1 << 20,
    );
    let r = first_record(&relay, small_node.peer_id).await;
    assert!(r.passed, "{r:?}");
    assert_eq!(r.n, 64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_refuses_challenges_above_what_it_advertised() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The network's minimum is above what this node says it holds: it is
    // challenged at the minimum, refuses before allocating, and stays
    // unverified.
    let relay = relay(&dir, small()).await;
    let tiny = node(&relay, Arc::new(PofProver::with_max_n(Backend::Cpu, 64)), 0);
    expect_rejection(&relay, tiny.peer_id, "above the 64 this node advertised").await;
}
