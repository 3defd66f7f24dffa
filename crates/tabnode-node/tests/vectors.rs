//! The relay's vector store (`/v1/vectors`) with real nodes embedding the
//! texts (all-MiniLM-L6-v2, which `scripts/setup.sh` fetches): 10,000
//! texts upserted by text over two nodes, a fixed query answered with the
//! expected neighbours and the local encoder's scores, an HNSW graph
//! answering as the exact scan does, everything kept across `kill -9` of
//! the relay process; bad input refused with clear 4xx errors that change
//! nothing.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};
use tabnode_node::NodeHandle;
use tabnode_relay::RelayConfig;

#[path = "common/http.rs"]
mod http_client;
use http_client::json_call;
#[path = "common/process.rs"]
mod process;
use process::start_relay_process;

#[path = "common/minilm.rs"]
mod minilm;
use minilm::{embedder, embedding_node, ID};
const WAIT: Duration = Duration::from_secs(120);

fn node(relay: libp2p::Multiaddr) -> NodeHandle {
    embedding_node(relay, "vectors-test")
}

async fn call(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    json_call(addr, method, path, body.as_ref()).await
}

/// Waits until `n` nodes serve the embedding model.
async fn wait_for_nodes(addr: std::net::SocketAddr, n: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, v) = call(addr, "GET", "/v1/models", None).await;
        let serving = v["data"]
            .as_array()
            .and_then(|d| d.iter().find(|m| m["id"] == ID))
            .and_then(|m| m["tabnode"]["nodes"].as_u64())
            .unwrap_or(0);
        if serving >= n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{n} nodes never served {ID}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the collection's graph holds every point.
async fn wait_indexed(addr: std::net::SocketAddr, name: &str) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (s, v) = call(addr, "GET", &format!("/v1/vectors/{name}"), None).await;
        assert_eq!(s, 200, "{v}");
        if v["index"] == "hnsw" && v["unindexed"] == 0 {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "never indexed: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The ten planted texts the fixed query must find among the filler.
const CATS: [&str; 10] = [
    "The lighthouse keeper's cat sleeps on the lamp room floor.",
    "A ginger cat lives in the old lighthouse by the cliffs.",
    "Every night the cat climbs the lighthouse stairs to watch the beam.",
    "The lighthouse cat catches mice in the oil store.",
    "Sailors say the cat of the lighthouse brings good luck.",
    "Our cat moved into the lighthouse with the new keeper.",
    "A black cat waits at the lighthouse door for the fishermen.",
    "The lighthouse on the island is home to a very old cat.",
    "Tourists photograph the cat sitting on the lighthouse railing.",
    "The keeper feeds the lighthouse cat fish every morning.",
];

fn filler(i: usize) -> String {
    const COLOURS: [&str; 7] = ["red", "blue", "green", "yellow", "white", "grey", "orange"];
    const ITEMS: [&str; 9] = [
        "umbrellas",
        "bicycle tyres",
        "notebooks",
        "ceramic mugs",
        "winter boots",
        "garden hoses",
        "desk lamps",
        "printer cables",
        "wool scarves",
    ];
    const CITIES: [&str; 8] = [
        "Lyon", "Porto", "Krakow", "Osaka", "Denver", "Nairobi", "Perth", "Oslo",
    ];
    format!(
        "Order {i}: {} {} {} shipped to {}.",
        i % 50 + 1,
        COLOURS[i % 7],
        ITEMS[(i / 7) % 9],
        CITIES[(i / 63) % 8]
    )
}

fn ids_of(v: &Value) -> Vec<Value> {
    v["points"]
        .as_array()
        .expect("points")
        .iter()
        .map(|p| p["id"].clone())
        .collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_texts_are_embedded_found_and_kept_across_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("relay");
    std::fs::create_dir_all(&data).expect("data dir");
    // A graph from 5,000 points, so that this collection gets one.
    let flags = ["--hnsw-threshold", "5000"];
    let mut relay = start_relay_process(&data, &flags).await;
    let (_a, _b) = (node(relay.tcp.clone()), node(relay.tcp.clone()));
    wait_for_nodes(relay.http, 2).await;
    let addr = relay.http;

    let (s, v) = call(addr, "PUT", "/v1/vectors/docs", None).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["model"], ID);
    assert_eq!(v["dimensions"], 384);
    let (s, _) = call(addr, "PUT", "/v1/vectors/docs", Some(json!({"model": ID}))).await;
    assert_eq!(s, 200, "the same model again: left as it is");

    // 9,990 filler texts and the ten planted ones, by text, 2,000 a request.
    let mut points: Vec<Value> = (0..9990)
        .map(|i| json!({"id": i, "text": filler(i), "payload": {"kind": "order", "n": i}}))
        .collect();
    for (i, t) in CATS.iter().enumerate() {
        points.insert(
            i * 997,
            json!({"id": format!("cat-{i}"), "text": t, "payload": {"kind": "cat", "n": i}}),
        );
    }
    assert_eq!(points.len(), 10_000);
    let mut tokens = 0;
    for chunk in points.chunks(2000) {
        let (s, v) = call(
            addr,
            "POST",
            "/v1/vectors/docs/points",
            Some(json!({"points": chunk})),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["upserted"], 2000);
        tokens += v["usage"]["prompt_tokens"].as_u64().expect("tokens");
        assert_eq!(v["tabnode"]["truncated"], json!([]));
    }
    assert!(tokens > 10_000 * 10, "{tokens} tokens");
    let info = wait_indexed(addr, "docs").await;
    assert_eq!(info["points"], 10_000);

    // The fixed case: the planted texts, nearest first, with the scores the
    // local encoder gives.
    let question = "Which cat lives at the lighthouse?";
    let (s, found) = call(
        addr,
        "POST",
        "/v1/vectors/docs/query",
        Some(json!({"text": question, "limit": 10})),
    )
    .await;
    assert_eq!(s, 200, "{found}");
    let mut got: Vec<String> = ids_of(&found)
        .iter()
        .map(|i| i.as_str().unwrap_or("filler").to_owned())
        .collect();
    got.sort();
    let want: Vec<String> = (0..10).map(|i| format!("cat-{i}")).collect();
    assert_eq!(got, want, "{found}");
    let model = embedder();
    let q = model.model().embed(&[question]).expect("local")[0]
        .0
        .clone();
    for p in found["points"].as_array().expect("points") {
        let i: usize = p["id"]
            .as_str()
            .and_then(|s| s.strip_prefix("cat-"))
            .and_then(|n| n.parse().ok())
            .expect("cat id");
        let local = model.model().embed(&[CATS[i]]).expect("local")[0].0.clone();
        let score = p["score"].as_f64().expect("score") as f32;
        assert!((score - cosine(&q, &local)).abs() < 1e-5, "{p}");
        assert_eq!(p["text"], CATS[i]);
        assert_eq!(p["payload"]["kind"], "cat");
    }
    // The graph answers as the exact scan does; a filter is honoured.
    let by_vector = json!({"vector": q, "limit": 20});
    let (_, graph) = call(
        addr,
        "POST",
        "/v1/vectors/docs/query",
        Some(by_vector.clone()),
    )
    .await;
    let (_, exact) = call(
        addr,
        "POST",
        "/v1/vectors/docs/query",
        Some(json!({"vector": q, "limit": 20, "params": {"exact": true}})),
    )
    .await;
    let overlap = ids_of(&graph)
        .iter()
        .filter(|i| ids_of(&exact).contains(i))
        .count();
    assert!(overlap >= 18, "recall@20 {overlap}/20: {graph} vs {exact}");
    assert_eq!(ids_of(&graph)[..10].len(), 10);
    let orders = json!({"vector": q, "limit": 5, "filter": {"must": [{"key": "kind", "match": {"value": "order"}}, {"key": "n", "range": {"lt": 100}}]}});
    let (s, f) = call(addr, "POST", "/v1/vectors/docs/query", Some(orders.clone())).await;
    assert_eq!(s, 200, "{f}");
    assert_eq!(ids_of(&f).len(), 5);
    assert!(
        ids_of(&f)
            .iter()
            .all(|i| i.as_u64().is_some_and(|n| n < 100)),
        "{f}"
    );
    // A point fetched is its text's vector.
    let (s, p) = call(addr, "GET", "/v1/vectors/docs/points/cat-3", None).await;
    assert_eq!(s, 200, "{p}");
    let local = model.model().embed(&[CATS[3]]).expect("local")[0].0.clone();
    let stored: Vec<f32> = p["vector"]
        .as_array()
        .expect("vector")
        .iter()
        .map(|x| x.as_f64().expect("f") as f32)
        .collect();
    assert!(cosine(&stored, &local) > 0.99999, "{p}");

    // Deleted before the kill: stays deleted.
    let (s, v) = call(
        addr,
        "POST",
        "/v1/vectors/docs/points/delete",
        Some(json!({"points": ["cat-9", 5, 123456]})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["deleted"], 2);
    let (_, before) = call(
        addr,
        "POST",
        "/v1/vectors/docs/query",
        Some(json!({"vector": q, "limit": 12, "params": {"exact": true}})),
    )
    .await;

    relay.child.start_kill().expect("SIGKILL");
    let status = relay.child.wait().await.expect("exit status");
    assert!(!status.success(), "killed, not exited: {status:?}");
    let relay = start_relay_process(&data, &flags).await;
    let addr = relay.http;
    let (s, info) = call(addr, "GET", "/v1/vectors/docs", None).await;
    assert_eq!(s, 200, "{info}");
    assert_eq!(info["points"], 9_998);
    // Answered at once (by the exact scan while the graph is rebuilt), the
    // same points with the same scores.
    let (s, after) = call(
        addr,
        "POST",
        "/v1/vectors/docs/query",
        Some(json!({"vector": q, "limit": 12, "params": {"exact": true}})),
    )
    .await;
    assert_eq!(s, 200, "{after}");
    assert_eq!(after["points"], before["points"]);
    assert!(!ids_of(&after).contains(&json!("cat-9")));
    wait_indexed(addr, "docs").await;
    let (_, graph) = call(
        addr,
        "POST",
        "/v1/vectors/docs/query",
        Some(json!({"vector": q, "limit": 9})),
    )
    .await;
    let mut got: Vec<Value> = ids_of(&graph);
    got.sort_by_key(Value::to_string);
    let want: Vec<Value> = (0..9).map(|i| json!(format!("cat-{i}"))).collect();
    assert_eq!(got, want, "{graph}\nexact: {before}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_vector_requests_are_clear_4xx_and_change_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = tabnode_relay::start(RelayConfig::ephemeral(
        dir.path().join("relay"),
        PathBuf::from("."),
    ))
    .await
    .expect("relay starts");
    let addr = relay.http_addr;
    let (s, _) = call(addr, "PUT", "/v1/vectors/c", Some(json!({}))).await;
    assert_eq!(s, 201);
    let unit =
        |i: usize| -> Vec<f32> { (0..384).map(|j| if j == i { 1.0 } else { 0.0 }).collect() };
    let (s, v) = call(
        addr,
        "POST",
        "/v1/vectors/c/points",
        Some(json!({"points": [{"id": 1, "vector": unit(0), "payload": {"a": 1}}]})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let too_many: Vec<Value> = (0..2049)
        .map(|i| json!({"id": i, "vector": unit(i % 384)}))
        .collect();
    let cases: Vec<(&str, &str, Option<Value>, u16, &str)> = vec![
        (
            "POST",
            "/v1/vectors/c/points",
            Some(
                json!({"points": [{"id": 2, "vector": unit(1)}, {"id": 3, "vector": [1.0, 2.0, 3.0]}]}),
            ),
            400,
            "point 3: a vector of 3 dimensions; the collection's model makes 384",
        ),
        (
            "POST",
            "/v1/vectors/c/points",
            Some(json!({"points": too_many})),
            400,
            "2049 points in one request; at most 2048",
        ),
        (
            "POST",
            "/v1/vectors/c/points",
            Some(json!({"points": [{"id": 2}]})),
            400,
            "points[0] needs a text (to embed) or a vector",
        ),
        (
            "POST",
            "/v1/vectors/c/points",
            Some(json!({"points": [{"id": -2, "vector": unit(1)}]})),
            400,
            "points[0].id: point ids are unsigned integers or strings",
        ),
        (
            "POST",
            "/v1/vectors/c/points",
            Some(json!({"points": [{"id": 2, "vectors": unit(1)}]})),
            400,
            "unknown field \"vectors\"",
        ),
        (
            "POST",
            "/v1/vectors/c/points",
            Some(json!({"points": [{"id": 2, "vector": vec![0.0; 384]}]})),
            400,
            "zero vector",
        ),
        (
            "POST",
            "/v1/vectors/c/points",
            Some(json!({"points": [{"id": 2, "text": "no node embeds this"}]})),
            404,
            "not served by any node",
        ),
        (
            "POST",
            "/v1/vectors/c/points",
            Some(json!({"id": 2})),
            400,
            "points must be a list",
        ),
        (
            "POST",
            "/v1/vectors/nope/points",
            Some(json!({"points": []})),
            404,
            "no collection named \"nope\"",
        ),
        (
            "POST",
            "/v1/vectors/nope/query",
            Some(json!({"vector": unit(0)})),
            404,
            "no collection named \"nope\"",
        ),
        (
            "PUT",
            "/v1/vectors/bad%20name",
            None,
            400,
            "collection names are 1 to 64",
        ),
        (
            "PUT",
            "/v1/vectors/d",
            Some(json!({"model": "gpt-4"})),
            404,
            "not an embedding model of this network",
        ),
        (
            "PUT",
            "/v1/vectors/d",
            Some(json!({"model": 7})),
            400,
            "model is a string",
        ),
        (
            "POST",
            "/v1/vectors/c/query",
            Some(json!({"vector": [1.0, 0.0]})),
            400,
            "query: a vector of 2 dimensions",
        ),
        (
            "POST",
            "/v1/vectors/c/query",
            Some(json!({"vector": unit(0), "limit": 0})),
            400,
            "limit must be from 1 to 1000",
        ),
        (
            "POST",
            "/v1/vectors/c/query",
            Some(json!({"vector": unit(0), "filter": {"must": [{"key": "a"}]}})),
            400,
            "needs match or range",
        ),
        (
            "POST",
            "/v1/vectors/c/query",
            Some(json!({"vector": unit(0), "text": "x"})),
            400,
            "not both",
        ),
        (
            "POST",
            "/v1/vectors/c/query",
            Some(json!({"limit": 3})),
            400,
            "give a text (to embed) or a vector",
        ),
        (
            "POST",
            "/v1/vectors/c/query",
            None,
            400,
            "the body is not JSON",
        ),
        (
            "GET",
            "/v1/vectors/c/points/99",
            None,
            404,
            "holds no point 99",
        ),
        (
            "DELETE",
            "/v1/vectors/nope",
            None,
            404,
            "no collection named",
        ),
        (
            "PATCH",
            "/v1/vectors/c",
            None,
            405,
            "is not served with PATCH",
        ),
    ];
    for (method, path, body, status, says) in cases {
        let (s, v) = call(addr, method, path, body.clone()).await;
        assert_eq!(s, status, "{method} {path} {body:?}: {v}");
        let message = v["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{method} {path}: {message}");
    }
    // A body over the limit (32 MiB) is refused, in OpenAI's format.
    let (s, v) = call(
        addr,
        "POST",
        "/v1/vectors/c/points",
        Some(json!({"points": "x".repeat(33 << 20)})),
    )
    .await;
    assert_eq!(s, 413, "{v}");
    assert_eq!(v["error"]["code"], "request_too_large");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("larger than 33554432 bytes")),
        "{v}"
    );
    // Nothing of the refused requests was written.
    let (s, info) = call(addr, "GET", "/v1/vectors/c", None).await;
    assert_eq!(s, 200);
    assert_eq!(info["points"], 1, "{info}");
    let (_, found) = call(
        addr,
        "POST",
        "/v1/vectors/c/query",
        Some(json!({"vector": unit(1), "limit": 5})),
    )
    .await;
    assert_eq!(ids_of(&found), [json!(1)]);
    assert_eq!(found["points"][0]["payload"], json!({"a": 1}));
    let (s, list) = call(addr, "GET", "/v1/vectors", None).await;
    assert_eq!(s, 200);
    assert_eq!(
        list["collections"].as_array().map(Vec::len),
        Some(1),
        "{list}"
    );
    let (s, _) = call(addr, "DELETE", "/v1/vectors/c", None).await;
    assert_eq!(s, 200);
    let (s, _) = call(addr, "GET", "/v1/vectors/c", None).await;
    assert_eq!(s, 404);
}
