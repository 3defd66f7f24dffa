//! `POST /v1/embeddings` through a real relay and native nodes running
//! all-MiniLM-L6-v2 (`scripts/setup.sh` fetches it): a request larger than a
//! batch is spread over the nodes and comes back in order, equal to the
//! local encoder's vectors, as floats and as base64; token-array inputs
//! give a text's vector; the ledger credits exactly the tokens embedded;
//! bad requests are clear 4xx errors in OpenAI's format; with an API key the
//! account pays the model's price per embedded token, until it is refused at
//! zero points.

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};
use tabnode_node::NodeHandle;
use tabnode_relay::{InferConfig, RelayConfig, RelayHandle};

#[path = "common/http.rs"]
mod http_client;
use http_client::{http, json_call, requests_of, tokens_of};

#[path = "common/minilm.rs"]
mod minilm;
use minilm::{embedder, embedding_node, ID};
const WAIT: Duration = Duration::from_secs(60);

/// One test at a time: the points a batch earns are capped by the rate its
/// node proved, and nodes of other tests proving and embedding on the same
/// two cores would make the proofs, and so the caps, a matter of chance.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn relay(dir: &tempfile::TempDir) -> RelayHandle {
    let mut cfg = RelayConfig::ephemeral(dir.path().join("relay"), PathBuf::from("."));
    cfg.infer = InferConfig {
        stall_timeout: Duration::from_secs(30),
        queue_timeout: Duration::from_secs(60),
        // One address sends them all: no anonymous allowance.
        anonymous_per_hour: 0,
        ..InferConfig::default()
    };
    // Proofs at the size the relay picks for the device (not the small
    // ones of the browser tests): the credit cap follows the proven rate.
    tabnode_relay::start(cfg).await.expect("relay starts")
}

fn node(relay: &RelayHandle) -> NodeHandle {
    embedding_node(relay.tcp_addr().expect("tcp"), "embeddings-test")
}

/// Waits until `nodes` serve the model and passed a proof (to earn).
async fn wait_serving(relay: &RelayHandle, nodes: &[&NodeHandle]) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let serving = relay.state.registry.serving(ID);
        if nodes
            .iter()
            .all(|n| serving.contains(&n.peer_id) && relay.state.proof_valid(&n.peer_id))
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nodes never served and proved"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn post(relay: &RelayHandle, body: &Value) -> http_client::HttpResponse {
    http(
        relay.http_addr,
        "POST",
        "/v1/embeddings",
        Some(&body.to_string()),
        &[("content-type", "application/json")],
    )
    .await
}

fn vector(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("float") as f32)
        .collect()
}

fn texts(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            format!(
                "Text number {i}: {}",
                "the network of tabs embeds it. ".repeat(i % 7)
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_large_request_is_spread_over_the_nodes_and_returned_in_order() {
    let _one = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = relay(&dir).await;
    let (a, b) = (node(&relay), node(&relay));
    wait_serving(&relay, &[&a, &b]).await;
    let inputs = texts(150);
    let r = post(&relay, &json!({"model": ID, "input": inputs})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["object"], "list");
    assert_eq!(v["model"], ID);
    let data = v["data"].as_array().expect("data");
    assert_eq!(data.len(), 150);
    let model = embedder();
    let mut tokens = 0;
    for (i, (d, text)) in data.iter().zip(&inputs).enumerate() {
        assert_eq!(d["index"], i);
        assert_eq!(d["object"], "embedding");
        let enc = model.model().tokenize(text);
        tokens += enc.ids.len() as u64;
        let want = model.model().embed_ids(&enc.ids).expect("local");
        assert_eq!(
            vector(&d["embedding"]),
            want,
            "input {i}: the local encoder's bits"
        );
    }
    assert_eq!(v["usage"]["prompt_tokens"], tokens);
    assert_eq!(v["usage"]["total_tokens"], tokens);
    let nodes = v["tabnode"]["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 2, "three batches over two nodes: {nodes:?}");
    // Each batch credited once, to the node that embedded it, never for
    // more than its tokens. (A batch's credit is also capped at 4x the rate
    // its node's proof makes plausible, which a proof slowed by a loaded
    // machine can bind: the catalog's unit tests check that cap.)
    let ledger = http(relay.http_addr, "GET", "/api/ledger", None, &[])
        .await
        .json();
    let peers = [a.peer_id.to_string(), b.peer_id.to_string()];
    let credited: u64 = peers.iter().map(|p| tokens_of(&ledger, p)).sum();
    let batches: u64 = peers.iter().map(|p| requests_of(&ledger, p)).sum();
    assert_eq!(batches, 3, "each batch once: {ledger}");
    assert!(
        credited > 0 && credited <= tokens,
        "{credited} of {tokens}: {ledger}"
    );

    // base64: the same floats, little-endian.
    let r = post(
        &relay,
        &json!({"model": ID, "input": inputs[..3], "encoding_format": "base64"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    for (d, f) in r.json()["data"].as_array().expect("data").iter().zip(data) {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(d["embedding"].as_str().expect("base64"))
            .expect("decodes");
        let got: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        assert_eq!(got, vector(&f["embedding"]));
    }

    // A text's pieces as token ids give the text's vector.
    let enc = model.model().tokenize("Paris is the capital of France.");
    let pieces = &enc.ids[1..enc.ids.len() - 1];
    let r = post(&relay, &json!({"model": ID, "input": pieces})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let want = model.model().embed_ids(&enc.ids).expect("local");
    assert_eq!(vector(&r.json()["data"][0]["embedding"]), want);
    // Texts and token arrays do not mix in one input (as in OpenAI's API).
    let r = post(&relay, &json!({"model": ID, "input": [pieces, "Paris"]})).await;
    assert_eq!(r.status, 400, "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_embedding_requests_are_clear_errors() {
    let _one = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = relay(&dir).await;
    // No node yet: the model is the catalog's but nobody serves it.
    let r = post(&relay, &json!({"model": ID, "input": "x"})).await;
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "model_not_found");
    let n = node(&relay);
    wait_serving(&relay, &[&n]).await;
    for (body, status, param) in [
        (
            json!({"model": ID, "input": "x", "dimensions": 64}),
            400,
            "dimensions",
        ),
        (json!({"model": "gpt-4", "input": "x"}), 404, "model"),
        (json!({"model": ID, "input": []}), 400, "input"),
        (json!({"model": ID, "input": [[101, 40000]]}), 400, "input"),
    ] {
        let r = post(&relay, &body).await;
        assert_eq!(r.status, status, "{body}: {}", r.body);
        let e = r.json();
        assert_eq!(e["error"]["param"], param, "{e}");
        assert_eq!(e["error"]["type"], "invalid_request_error", "{e}");
    }
    let r = post(&relay, &json!({"model": ID, "input": [[101, 40000]]})).await;
    assert!(
        r.body.contains("outside the vocabulary of 30522"),
        "{}",
        r.body
    );
    // The node still serves.
    let r = post(&relay, &json!({"model": ID, "input": "still here"})).await;
    assert_eq!(r.status, 200, "{}", r.body);
}

/// A 2,000-text job over three nodes, one of them gone in the middle of
/// its batch: every vector comes back, in order, equal to the local
/// encoder's, and every batch is credited exactly once, never past its tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_survives_a_node_that_leaves_mid_batch() {
    let _one = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = relay(&dir).await;
    let (a, b) = (node(&relay), node(&relay));
    let c = node(&relay);
    wait_serving(&relay, &[&a, &b, &c]).await;
    let inputs: Vec<String> = (0..2000)
        .map(|i| {
            format!(
                "item {i}: {}",
                ["tabs", "vectors", "relays", "proofs"][i % 4]
            )
        })
        .collect();
    let body = json!({"model": ID, "input": inputs});
    let addr = relay.http_addr;
    let job = tokio::spawn(async move {
        http(
            addr,
            "POST",
            "/v1/embeddings",
            Some(&body.to_string()),
            &[("content-type", "application/json")],
        )
        .await
    });
    // Once `c` holds a batch, it leaves.
    let deadline = tokio::time::Instant::now() + WAIT;
    while relay.state.load_of(&c.peer_id).0 == 0 {
        assert!(
            !job.is_finished(),
            "the job ended before the node took a batch"
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "c never took a batch"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let gone = c.peer_id.to_string();
    drop(c);
    let r = job.await.expect("job");
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    let data = v["data"].as_array().expect("data");
    assert_eq!(data.len(), 2000);
    let model = embedder();
    let mut tokens = 0;
    for (i, (d, text)) in data.iter().zip(&inputs).enumerate() {
        assert_eq!(d["index"], i);
        let enc = model.model().tokenize(text);
        tokens += enc.ids.len() as u64;
        // Every seventh checked bit for bit against the local encoder.
        if i % 7 == 0 {
            let want = model.model().embed_ids(&enc.ids).expect("local");
            assert_eq!(vector(&d["embedding"]), want, "input {i}");
        }
    }
    assert_eq!(v["usage"]["prompt_tokens"], tokens);
    let ledger = http(relay.http_addr, "GET", "/api/ledger", None, &[])
        .await
        .json();
    let peers = [a.peer_id.to_string(), b.peer_id.to_string(), gone.clone()];
    let credited: u64 = peers.iter().map(|p| tokens_of(&ledger, p)).sum();
    let batches: u64 = peers.iter().map(|p| requests_of(&ledger, p)).sum();
    // Each of the 32 batches credited once (the one the leaving node held
    // is credited to whoever finished it), never past the tokens embedded
    // (the proven-rate cap may take some: see above).
    assert_eq!(batches, 2000u64.div_ceil(64), "each batch once: {ledger}");
    assert!(
        credited > 0 && credited <= tokens,
        "{credited} of {tokens}: {ledger}"
    );
    // The two that stayed took the rest.
    let nodes = v["tabnode"]["nodes"].as_array().expect("nodes");
    for n in [&a, &b] {
        assert!(
            nodes.iter().any(|x| *x == n.peer_id.to_string().as_str()),
            "{nodes:?}"
        );
    }
}

async fn job(relay: &RelayHandle, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    json_call(relay.http_addr, method, path, body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_reports_its_progress_and_pages_its_vectors() {
    let _one = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = relay(&dir).await;
    let (a, b) = (node(&relay), node(&relay));
    wait_serving(&relay, &[&a, &b]).await;
    let inputs = texts(3000);
    let (s, v) = job(
        &relay,
        "POST",
        "/v1/embeddings/jobs",
        Some(&json!({"model": ID, "input": inputs})),
    )
    .await;
    assert_eq!(s, 202, "{v}");
    assert_eq!(v["object"], "embedding.job");
    assert_eq!(v["total"], 3000);
    let id = v["id"].as_str().expect("id").to_owned();
    // Progress only grows, by whole batches, up to the total.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    let mut seen = vec![0u64];
    let done = loop {
        let (s, v) = job(&relay, "GET", &format!("/v1/embeddings/jobs/{id}"), None).await;
        assert_eq!(s, 200, "{v}");
        let d = v["done"].as_u64().expect("done");
        assert!(
            d >= *seen.last().expect("seen") && d <= 3000,
            "{seen:?} then {d}"
        );
        if d != *seen.last().expect("seen") {
            seen.push(d);
        }
        match v["status"].as_str() {
            Some("running") => assert!(v.get("data").is_none(), "no vectors before the end"),
            Some("completed") => break v,
            other => panic!("status {other:?}: {v}"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the job never ended: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(done["done"], 3000);
    // Whole batches of 64, the last (56 inputs) done in any order.
    assert!(
        seen.iter().all(|d| d % 64 == 0 || d % 64 == 3000 % 64),
        "{seen:?}"
    );
    // Two pages: 2,048 then the rest, indices the inputs' own.
    let first = &done;
    assert_eq!(first["data"].as_array().map(Vec::len), Some(2048));
    assert_eq!(first["next_offset"], 2048);
    let (s, second) = job(
        &relay,
        "GET",
        &format!("/v1/embeddings/jobs/{id}?offset=2048"),
        None,
    )
    .await;
    assert_eq!(s, 200, "{second}");
    assert_eq!(second["data"].as_array().map(Vec::len), Some(952));
    assert_eq!(second["data"][0]["index"], 2048);
    assert_eq!(second["next_offset"], Value::Null);
    let model = embedder();
    let tokens: u64 = inputs
        .iter()
        .map(|t| model.model().tokenize(t).ids.len() as u64)
        .sum();
    assert_eq!(first["usage"]["prompt_tokens"], tokens);
    for i in (0..3000).step_by(173) {
        let page = if i < 2048 { first } else { &second };
        let d = &page["data"][i % 2048];
        assert_eq!(d["index"], i);
        let enc = model.model().tokenize(&inputs[i]);
        assert_eq!(
            vector(&d["embedding"]),
            model.model().embed_ids(&enc.ids).expect("local"),
            "input {i}"
        );
    }
    // Bad requests, and a cancelled job.
    for (method, path, body, status, says) in [
        (
            "GET",
            "/v1/embeddings/jobs/nope".to_owned(),
            None,
            404,
            "no embedding job",
        ),
        (
            "GET",
            format!("/v1/embeddings/jobs/{id}?limit=0"),
            None,
            400,
            "limit must be from 1 to 2048",
        ),
        (
            "GET",
            format!("/v1/embeddings/jobs/{id}?offset=3001"),
            None,
            400,
            "past the job's 3000 inputs",
        ),
        (
            "POST",
            "/v1/embeddings/jobs".to_owned(),
            Some(json!({"model": ID, "input": vec!["x"; 50_001]})),
            400,
            "at most 50000",
        ),
        (
            "POST",
            "/v1/embeddings/jobs".to_owned(),
            Some(json!({"model": ID})),
            400,
            "provide an input",
        ),
    ] {
        let (s, v) = job(&relay, method, &path, body.as_ref()).await;
        assert_eq!(s, status, "{method} {path}: {v}");
        let m = v["error"]["message"].as_str().unwrap_or_default();
        assert!(m.contains(says), "{method} {path}: {m}");
    }
    let (s, v) = job(
        &relay,
        "POST",
        "/v1/embeddings/jobs",
        Some(&json!({"model": ID, "input": inputs})),
    )
    .await;
    assert_eq!(s, 202, "{v}");
    let other = v["id"].as_str().expect("id").to_owned();
    let (s, v) = job(
        &relay,
        "DELETE",
        &format!("/v1/embeddings/jobs/{other}"),
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["status"], "cancelled");
    assert_eq!(v["deleted"], true);
    let (s, _) = job(&relay, "GET", &format!("/v1/embeddings/jobs/{other}"), None).await;
    assert_eq!(s, 404);
    let (s, _) = job(&relay, "DELETE", &format!("/v1/embeddings/jobs/{id}"), None).await;
    assert_eq!(s, 200, "a finished job is forgotten on request");
}

/// A keyed request: status and body.
async fn keyed(relay: &RelayHandle, path: &str, key: &str, body: &Value) -> (u16, Value) {
    let auth = format!("Bearer {key}");
    let r = http(
        relay.http_addr,
        "POST",
        path,
        Some(&body.to_string()),
        &[
            ("content-type", "application/json"),
            ("authorization", &auth),
        ],
    )
    .await;
    (r.status, r.json())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embeddings_with_a_key_are_charged_at_the_models_price() {
    use tabnode_core::{ApiKeyCommand, Request, Response};
    let _one = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = RelayConfig::ephemeral(dir.path().join("relay"), PathBuf::from("."));
    cfg.infer = InferConfig {
        anonymous_per_hour: 0,
        ..InferConfig::default()
    };
    for m in cfg.catalog.embeddings.iter_mut() {
        m.price = 2;
    }
    let relay = tabnode_relay::start(cfg).await.expect("relay");
    let a = node(&relay);
    wait_serving(&relay, &[&a]).await;
    // The node's own account (its proof earned it points) makes a key.
    let key = match a
        .request(
            None,
            Request::ApiKeys(ApiKeyCommand::Create {
                label: "embedder".into(),
            }),
        )
        .await
    {
        Ok(Response::ApiKeys(list)) => list.created.expect("the secret"),
        other => panic!("{other:?}"),
    };
    let peer = a.peer_id.to_string();
    let spent = |b: &Value| {
        (
            b["spent_tokens"].as_u64().unwrap_or(0),
            b["spent_points"].as_u64().unwrap_or(0),
        )
    };
    let ledger = || async {
        json_call(relay.http_addr, "GET", &format!("/api/ledger/{peer}"), None)
            .await
            .1
    };
    assert_eq!(spent(&ledger().await), (0, 0));
    // It earns with anonymous requests (free within the allowance).
    let (s, _) = json_call(
        relay.http_addr,
        "POST",
        "/v1/embeddings",
        Some(&json!({"model": ID, "input": texts(64)})),
    )
    .await;
    assert_eq!(s, 200);
    assert!(ledger().await["points"].as_u64() > Some(100));

    let (s, v) = keyed(
        &relay,
        "/v1/embeddings",
        &key,
        &json!({"model": ID, "input": texts(3)}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let t = v["usage"]["total_tokens"].as_u64().expect("tokens");
    assert!(t > 0);
    assert_eq!(spent(&ledger().await), (t, 2 * t), "2 points a token");

    // A job is charged when it ends, the same way.
    let (s, v) = keyed(
        &relay,
        "/v1/embeddings/jobs",
        &key,
        &json!({"model": ID, "input": texts(5)}),
    )
    .await;
    assert_eq!(s, 202, "{v}");
    let id = v["id"].as_str().expect("id").to_owned();
    let deadline = tokio::time::Instant::now() + WAIT;
    let job_tokens = loop {
        let (_, v) = job(&relay, "GET", &format!("/v1/embeddings/jobs/{id}"), None).await;
        if v["status"] == "completed" {
            break v["usage"]["total_tokens"].as_u64().expect("tokens");
        }
        assert_eq!(v["status"], "running", "{v}");
        assert!(tokio::time::Instant::now() < deadline, "{v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        spent(&ledger().await),
        (t + job_tokens, 2 * (t + job_tokens))
    );
    // Spent down (its own tokens earn it less than they cost), the
    // account is refused with OpenAI's quota error, charged nothing more.
    let mut refused = None;
    for _ in 0..100 {
        let (s, v) = keyed(
            &relay,
            "/v1/embeddings",
            &key,
            &json!({"model": ID, "input": texts(16)}),
        )
        .await;
        if s == 402 {
            refused = Some(v);
            break;
        }
        assert_eq!(s, 200, "{v}");
    }
    let v = refused.expect("refused at zero points");
    assert_eq!(v["error"]["code"], "insufficient_points", "{v}");
    let b = ledger().await;
    assert_eq!(b["points"], 0, "{b}");
    let (s, _) = keyed(
        &relay,
        "/v1/embeddings",
        &key,
        &json!({"model": ID, "input": texts(1)}),
    )
    .await;
    assert_eq!(s, 402);
    assert_eq!(spent(&ledger().await), spent(&b));
}
