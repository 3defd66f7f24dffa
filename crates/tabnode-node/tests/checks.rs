//! Spot-checked inference (issue #16): with every (greedy) request
//! checked, a node that returns random tokens for half of its requests is
//! caught by the
//! honest nodes' checks, its credits for the bad requests are taken back
//! (once each), each failure confirmed by a second checker, and after
//! three strikes it gets no more work, also after a relay restart; the
//! honest nodes are never struck and earn points for the checks they run.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde_json::{json, Value};
use tabnode_core::infer::{GenerateRequest, GenerateResult};
use tabnode_infer::EngineError;
use tabnode_node::serve::ServedModel;

#[path = "common/http.rs"]
mod http_client;
use http_client::json_call;
#[path = "common/serving.rs"]
mod serving;
use serving::*;

/// `n` tokens from the generator state `x` (a linear congruential step
/// each), in the middle of the vocabulary.
fn random_tokens(x: &mut u64, n: usize) -> Vec<u32> {
    (0..n)
        .map(|_| {
            *x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            1000 + (*x >> 33) as u32 % 40_000
        })
        .collect()
}

/// Serves the real model honestly for odd requests and random tokens (with
/// the honest text, so only the tokens lie) for even ones.
struct Cheater {
    inner: Arc<tabnode_infer::Engine>,
    served: AtomicU64,
}

impl ServedModel for Cheater {
    fn name(&self) -> &str {
        &self.inner.info.name
    }
    fn check(&self, request: &GenerateRequest) -> Result<u32, EngineError> {
        self.inner.check(request)
    }
    fn generate(
        &self,
        request: &GenerateRequest,
        cancelled: &dyn Fn() -> bool,
        on_piece: &mut dyn FnMut(&[u32], &str),
    ) -> Result<GenerateResult, EngineError> {
        let n = self.served.fetch_add(1, Ordering::Relaxed);
        if n % 2 == 1 {
            return self.inner.generate(request, cancelled, on_piece);
        }
        let mut x = n.wrapping_mul(2_654_435_761).wrapping_add(1);
        let mut lie =
            |tokens: &[u32], text: &str| on_piece(&random_tokens(&mut x, tokens.len()), text);
        self.inner.generate(request, cancelled, &mut lie)
    }
}

/// Delivers two pieces of random tokens, then reports a failure: its
/// requests move to another node, which continues after its tokens.
struct LiarThenFail {
    inner: Arc<tabnode_infer::Engine>,
}

impl ServedModel for LiarThenFail {
    fn name(&self) -> &str {
        &self.inner.info.name
    }
    fn check(&self, request: &GenerateRequest) -> Result<u32, EngineError> {
        self.inner.check(request)
    }
    fn generate(
        &self,
        request: &GenerateRequest,
        _cancelled: &dyn Fn() -> bool,
        on_piece: &mut dyn FnMut(&[u32], &str),
    ) -> Result<GenerateResult, EngineError> {
        let pieces = std::cell::Cell::new(0);
        let mut x = 0x9e37_79b9_u64;
        let mut lie = |tokens: &[u32], text: &str| {
            on_piece(&random_tokens(&mut x, tokens.len()), text);
            pieces.set(pieces.get() + 1);
        };
        let _ = self
            .inner
            .generate(request, &|| pieces.get() >= 2, &mut lie);
        Err(tabnode_infer::generate::GenerateError::Device("failed on purpose".into()).into())
    }
}

/// One test at a time: each wants every node of its relay to itself.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn checks(addr: std::net::SocketAddr) -> Value {
    json_call(addr, "GET", "/api/checks", None).await.1
}

async fn chat(addr: std::net::SocketAddr, i: usize) -> Value {
    let (s, v) = json_call(
        addr,
        "POST",
        "/v1/chat/completions",
        Some(&json!({
            "model": model(),
            "messages": [{"role": "user", "content": format!("Count to {}.", i + 3)}],
            "max_tokens": 8,
            "temperature": 0,
        })),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cheating_node_is_caught_clawed_back_and_excluded() {
    let _one = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("dir");
    let relay = relay_with(&dir, checking_config()).await;
    let addr = relay.http_addr;
    let tcp = relay.tcp_addr().expect("tcp");
    let honest = [serving_node(tcp.clone(), 2), serving_node(tcp.clone(), 2)];
    let cheater = serving_node_with(
        tcp,
        2,
        honest_prover(),
        Arc::new(Cheater {
            inner: engine(),
            served: AtomicU64::new(0),
        }),
    );
    wait_for_model(addr, 3).await;
    let cheat = cheater.peer_id.to_string();
    let honest_ids: Vec<String> = honest.iter().map(|n| n.peer_id.to_string()).collect();

    // Three requests at once (one for each node: matchmaking spreads them
    // by load), each batch checked before the next, until the cheater is
    // excluded (three strikes: six of its requests at most).
    let mut sent = 0;
    loop {
        assert!(
            sent < 60,
            "the cheater was never excluded: {}",
            checks(addr).await
        );
        futures::future::join_all((0..3).map(|i| chat(addr, sent + i))).await;
        sent += 3;
        let c = checks_after(addr, sent).await;
        if c["nodes"][&cheat]["excluded"] == true {
            break;
        }
    }
    let c = checks(addr).await;
    let list = c["checks"].as_array().expect("checks").clone();
    let of = |peer: &str, outcome: &str| {
        list.iter()
            .filter(|r| r["served_by"] == peer && r["outcome"] == outcome)
            .cloned()
            .collect::<Vec<Value>>()
    };
    let failed = of(&cheat, "failed");
    assert_eq!(failed.len(), 3, "{c}");
    assert_eq!(c["nodes"][&cheat]["failed"], 3);
    for r in &failed {
        assert_ne!(r["checker"], cheat, "a node never checks itself");
        // Confirmed by the other honest node before it counted.
        let (first, second) = (r["checker"].clone(), r["confirmed_by"].clone());
        assert!(
            honest_ids.iter().any(|h| *h == second) && second != first,
            "{r}"
        );
        assert!(
            r["reason"]
                .as_str()
                .is_some_and(|w| w.contains("trails the checker's")),
            "{r}"
        );
    }
    for h in &honest_ids {
        assert_eq!(c["nodes"][h]["failed"], 0, "an honest node was struck: {c}");
        assert!(of(h, "failed").is_empty());
        assert_eq!(c["nodes"][h]["excluded"], false);
    }
    assert!(list.iter().all(|r| r["outcome"] != "inconclusive"), "{c}");

    // The cheater's credits for the failed requests are taken back, once
    // each; the checkers earned points for their checks.
    let ledger = |peer: String| async move {
        json_call(addr, "GET", &format!("/api/ledger/{peer}"), None)
            .await
            .1
    };
    let b = ledger(cheat.clone()).await;
    let failed_tokens: u64 = failed.iter().filter_map(|r| r["tokens"].as_u64()).sum();
    assert_eq!(b["clawed_back_requests"], 3, "{b}");
    // What was credited (at most the delivered tokens: the relay caps a
    // batch at the rate the node's proof makes plausible) is what is taken.
    let clawed = b["clawed_back_tokens"].as_u64().unwrap_or(0);
    assert!(clawed > 0 && clawed <= failed_tokens, "{b}");
    assert_eq!(b["clawed_back_points"], clawed, "{b}");
    // The account's view lists its strikes and its record; what it
    // earned serving is kept apart from what was taken back.
    assert_eq!(b["standing"]["failed"], 3, "{b}");
    assert_eq!(b["standing"]["excluded"], true, "{b}");
    let strikes = b["strikes"].as_array().expect("strikes");
    assert_eq!(strikes.len(), 3, "{b}");
    assert!(strikes
        .iter()
        .all(|r| r["served_by"] == cheat.as_str() && r["outcome"] == "failed"));
    assert!(b["earned"]["tokens"].as_u64() >= Some(clawed), "{b}");
    let checks_run: u64 = {
        let mut n = 0;
        for h in &honest_ids {
            let hb = ledger(h.clone()).await;
            assert_eq!(hb["clawed_back_requests"], 0, "{hb}");
            assert_eq!(hb["strikes"], json!([]), "{hb}");
            assert!(hb["earned"]["checks"].as_u64() > Some(0), "{hb}");
            n += hb["checks"].as_u64().unwrap_or(0);
        }
        n
    };
    assert_eq!(checks_run, list.len() as u64, "every check credited once");

    // Excluded: no more work, and the model lists two nodes.
    for i in 0..4 {
        let v = chat(addr, 100 + i).await;
        let nodes = v["tabnode"]["nodes"].as_array().expect("nodes").clone();
        assert!(!nodes.contains(&json!(cheat)), "{v}");
    }
    let (_, models) = json_call(addr, "GET", "/v1/models", None).await;
    let serving = models["data"]
        .as_array()
        .and_then(|d| d.iter().find(|m| m["id"] == model()))
        .map(|m| m["tabnode"]["nodes"].clone());
    assert_eq!(serving, Some(json!(2)), "{models}");

    // A restarted relay (same data directory) still counts the strikes,
    // from the ledger's clawbacks, and still excludes the cheater.
    drop(relay);
    let relay = relay_with(&dir, test_config()).await;
    let c = checks(relay.http_addr).await;
    assert_eq!(c["nodes"][&cheat]["failed"], 3, "{c}");
    assert_eq!(c["nodes"][&cheat]["excluded"], true, "{c}");
    for h in &honest_ids {
        assert!(c["nodes"].get(h).is_none(), "no strike to restore: {c}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_that_lies_then_fails_is_blamed_after_the_failover() {
    let _one = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("dir");
    let relay = relay_with(&dir, checking_config()).await;
    let addr = relay.http_addr;
    let tcp = relay.tcp_addr().expect("tcp");
    let honest = [serving_node(tcp.clone(), 1), serving_node(tcp.clone(), 1)];
    let liar = serving_node_with(
        tcp,
        1,
        honest_prover(),
        Arc::new(LiarThenFail { inner: engine() }),
    );
    wait_for_model(addr, 3).await;
    let liar_id = liar.peer_id.to_string();
    let honest_ids: Vec<String> = honest.iter().map(|n| n.peer_id.to_string()).collect();

    // Rounds of three until the liar has started one (its part then moves
    // to an honest node) and that request's check is in.
    let mut sent = 0;
    let failed = loop {
        assert!(sent < 30, "the liar never served: {}", checks(addr).await);
        let answers = futures::future::join_all((0..3).map(|i| chat(addr, sent + i))).await;
        sent += 3;
        let moved: Vec<u64> = answers
            .iter()
            .filter(|v| v["tabnode"]["nodes"][0] == liar_id.as_str())
            // The answer's id is `chatcmpl-<request id in hex>`.
            .filter_map(|v| v["id"].as_str()?.rsplit('-').next())
            .filter_map(|hex| u64::from_str_radix(hex, 16).ok())
            .collect();
        let c = checks_after(addr, sent).await;
        if let Some(r) = c["checks"].as_array().and_then(|l| {
            l.iter()
                .find(|r| moved.iter().any(|id| r["request_id"] == *id))
        }) {
            break r.clone();
        }
    };
    // Checked whole, with the honest node's continuation; the strike is
    // the liar's alone, found in its part, by a node that served neither.
    assert_eq!(failed["outcome"], "failed", "{failed}");
    assert_eq!(failed["served_by"], liar_id.as_str(), "{failed}");
    let nodes = failed["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 2, "{failed}");
    assert_eq!(nodes[0], liar_id.as_str());
    assert!(
        honest_ids.iter().any(|h| nodes[1] == h.as_str()),
        "{failed}"
    );
    assert!(!nodes.contains(&failed["checker"]), "{failed}");
    assert!(failed["position"].as_u64().is_some(), "{failed}");
    let c = checks(addr).await;
    assert!(c["nodes"][&liar_id]["failed"].as_u64() >= Some(1), "{c}");
    for h in &honest_ids {
        assert_eq!(c["nodes"][h]["failed"], 0, "an honest node was struck: {c}");
    }
    // Its part earned nothing (a reported failure), so the clawback is of
    // nothing; it still counts as a strike in the ledger.
    let b = json_call(addr, "GET", &format!("/api/ledger/{liar_id}"), None)
        .await
        .1;
    assert!(b["clawed_back_requests"].as_u64() >= Some(1), "{b}");
}
