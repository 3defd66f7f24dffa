//! The live figures (issue #17): `/api/stats` counts the nodes online by
//! kind and backend and the unique nodes of the day, turns a served
//! request into requests, tokens and latency in its samples, and
//! `/api/stats/stream` sends the history then a sample each interval;
//! neither names a node's address.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[path = "common/http.rs"]
mod http_client;
use http_client::json_call;
#[path = "common/serving.rs"]
mod serving;
use serving::*;

async fn stats(addr: std::net::SocketAddr) -> Value {
    let (s, v) = json_call(addr, "GET", "/api/stats", None).await;
    assert_eq!(s, 200, "{v}");
    v
}

/// Waits until `/api/stats` satisfies `ok`.
async fn stats_until(addr: std::net::SocketAddr, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let v = stats(addr).await;
        if ok(&v) {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The sum over the fine samples of `rate × seconds`.
fn total(v: &Value, rate: &str) -> f64 {
    v["fine"].as_array().map_or(0.0, |s| {
        s.iter()
            .map(|x| x[rate].as_f64().unwrap_or(0.0) * x["seconds"].as_f64().unwrap_or(0.0))
            .sum()
    })
}

/// The server-sent events of `/api/stats/stream` until `events` of them
/// came: (event name, data) each.
async fn stream(addr: std::net::SocketAddr, events: usize) -> Vec<(String, Value)> {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "GET /api/stats/stream HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut text = String::new();
    let mut buf = vec![0u8; 1 << 16];
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let parsed: Vec<(String, Value)> = text
            .split("\n\n")
            .filter_map(|block| {
                let name = block.lines().find_map(|l| l.strip_prefix("event: "))?;
                let data = block.lines().find_map(|l| l.strip_prefix("data: "))?;
                Some((name.to_owned(), serde_json::from_str(data).ok()?))
            })
            .collect();
        if parsed.len() >= events {
            return parsed;
        }
        let n = tokio::time::timeout_at(deadline, s.read(&mut buf))
            .await
            .expect("events in time")
            .expect("read");
        assert!(n > 0, "the stream ended: {text}");
        // Chunked framing lines are not `event:`/`data:` lines: harmless.
        text.push_str(&String::from_utf8_lossy(&buf[..n]).replace("\r\n", "\n"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stats_count_nodes_and_requests_and_name_no_address() {
    let dir = tempfile::tempdir().expect("dir");
    let mut cfg =
        tabnode_relay::RelayConfig::ephemeral(dir.path().join("relay"), PathBuf::from("."));
    cfg.infer = test_config();
    cfg.stats_interval = Duration::from_millis(200);
    let relay = tabnode_relay::start(cfg).await.expect("relay");
    let addr = relay.http_addr;
    let node = serving_node(relay.tcp_addr().expect("tcp"), 1);
    wait_for_model(addr, 1).await;

    let v = stats_until(addr, "the node in a sample", |v| {
        v["latest"]["nodes"]["online"] == 1
    })
    .await;
    let nodes = &v["latest"]["nodes"];
    assert_eq!(nodes["by_kind"], json!({"native": 1}), "{v}");
    assert_eq!(nodes["unique_24h"], 1, "{v}");
    let backends: u64 = nodes["by_backend"]
        .as_object()
        .map_or(0, |o| o.values().filter_map(Value::as_u64).sum());
    assert_eq!(backends, 1, "{v}");
    let model_row = v["latest"]["models"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["id"] == model()).cloned())
        .expect("the model's row");
    assert_eq!(model_row["nodes"], 1);
    assert_eq!(
        v["interval_s"], 2.0,
        "the default interval is documented, not the test's"
    );

    // A served request shows in the samples: one request, its tokens, its
    // latency.
    let (s, answer) = json_call(
        addr,
        "POST",
        "/v1/chat/completions",
        Some(&json!({
            "model": model(),
            "messages": [{"role": "user", "content": "Name a colour."}],
            "max_tokens": 8,
            "temperature": 0,
        })),
    )
    .await;
    assert_eq!(s, 200, "{answer}");
    let tokens = answer["usage"]["completion_tokens"]
        .as_f64()
        .expect("tokens");
    let v = stats_until(addr, "the request in the samples", |v| {
        (total(v, "requests_per_s") - 1.0).abs() < 1e-6
    })
    .await;
    assert!((total(&v, "tokens_per_s") - tokens).abs() < 1e-6, "{v}");
    let with = v["fine"]
        .as_array()
        .and_then(|s| s.iter().find(|x| x["latency_ms"]["n"] == 1).cloned())
        .expect("the sample that saw it");
    let (ttft, whole) = (
        with["ttft_ms"]["p50"].as_f64().expect("ttft"),
        with["latency_ms"]["p95"].as_f64().expect("latency"),
    );
    assert!(ttft > 0.0 && ttft <= whole, "{with}");
    let m = with["models"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["id"] == model()).cloned())
        .expect("model");
    assert!(m["tokens_per_s"].as_f64() > Some(0.0), "{with}");
    // Samples are a fine ring, oldest first, at the interval.
    let times: Vec<u64> = v["fine"]
        .as_array()
        .expect("fine")
        .iter()
        .filter_map(|x| x["at_ms"].as_u64())
        .collect();
    assert!(
        times.len() >= 2 && times.windows(2).all(|w| w[0] <= w[1]),
        "{times:?}"
    );

    // The same figures in /metrics, from prometheus-client's registry.
    let metrics = http_client::http(addr, "GET", "/metrics", None, &[])
        .await
        .body;
    for line in [
        "tabnode_request_seconds_count 1".to_owned(),
        "tabnode_request_ttft_seconds_count 1".to_owned(),
        "tabnode_unique_nodes_24h 1".to_owned(),
        format!("tabnode_model_nodes{{model=\"{}\"}} 1", model()),
        format!(
            "tabnode_model_tokens_total{{model=\"{}\"}} {tokens}",
            model()
        ),
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} not in {metrics}"
        );
    }

    // The node's row: its measured speed and credited tokens; its detail
    // lists the request.
    let peer = node.peer_id.to_string();
    let deadline = tokio::time::Instant::now() + WAIT;
    let row = loop {
        let (s, v) = json_call(addr, "GET", "/api/nodes", None).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["full"], true);
        let row = v["rows"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["peer_id"] == peer).cloned());
        if let Some(row) = row.filter(|r| r["tokens"].as_f64() == Some(tokens)) {
            break row;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the credited row: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(row["kind"], "native", "{row}");
    assert_eq!(row["backend"], "cpu", "{row}");
    assert!(row["tok_s"].as_f64() > Some(0.0), "{row}");
    assert!(row["points"].as_u64() >= Some(tokens as u64), "{row}");
    assert_eq!(row["models"][0], model(), "{row}");
    let (s, detail) = json_call(addr, "GET", &format!("/api/nodes/{peer}"), None).await;
    assert_eq!(s, 200, "{detail}");
    let recent = &detail["recent"][0];
    assert_eq!(recent["outcome"], "completed", "{detail}");
    assert_eq!(recent["tokens"].as_f64(), Some(tokens), "{detail}");
    assert_eq!(recent["model"], model(), "{detail}");
    assert_eq!(
        json_call(addr, "GET", "/api/nodes/nobody", None).await.0,
        400
    );
    let stranger = libp2p::PeerId::random();
    assert_eq!(
        json_call(addr, "GET", &format!("/api/nodes/{stranger}"), None)
            .await
            .0,
        404
    );

    // The stream: the history and every node's row, then samples as they
    // close (and the rows that changed, when any did).
    let events = stream(addr, 4).await;
    assert_eq!(events[0].0, "history");
    assert!(events[0].1["fine"]
        .as_array()
        .is_some_and(|f| !f.is_empty()));
    assert_eq!(events[1].0, "nodes");
    assert_eq!(events[1].1["full"], true);
    assert_eq!(events[1].1["rows"][0]["peer_id"], peer);
    let samples: Vec<&Value> = events[2..]
        .iter()
        .filter(|(name, _)| name == "sample")
        .map(|(_, v)| v)
        .collect();
    assert!(samples.len() >= 2, "{events:?}");
    assert!(samples[1]["at_ms"].as_u64() > samples[0]["at_ms"].as_u64());
    assert_eq!(samples[1]["nodes"]["online"], 1);

    // No address of anyone anywhere (the nodes here are all at 127.0.0.1);
    // the samples count nodes without naming them (only the roster does).
    let (_, listed) = json_call(addr, "GET", "/api/nodes", None).await;
    for text in [
        stats(addr).await.to_string(),
        json!(samples).to_string(),
        json!(events.iter().map(|e| &e.1).collect::<Vec<_>>()).to_string(),
        listed.to_string(),
        detail.to_string(),
    ] {
        assert!(!text.contains("127.0.0.1"), "an address leaked: {text}");
    }
    for text in [stats(addr).await.to_string(), json!(samples).to_string()] {
        assert!(!text.contains(&peer), "a node is named: {text}");
    }
    // Bad input is a clear error.
    let (s, _) = json_call(addr, "GET", "/api/stats?history=maybe", None).await;
    assert_eq!(s, 400);
    // Gone from the next sample (and the roster) once it leaves.
    drop(node);
    stats_until(addr, "the node gone", |v| {
        v["latest"]["nodes"]["online"] == 0
    })
    .await;
    assert_eq!(
        json_call(addr, "GET", "/api/nodes", None).await.1["rows"],
        json!([])
    );
    assert_eq!(
        stats(addr).await["latest"]["nodes"]["unique_24h"],
        1,
        "seen today still"
    );
}

/// When `peer`'s connection started, as `/api/network` says (None: not
/// connected).
async fn connected_since(addr: std::net::SocketAddr, peer: &libp2p::PeerId) -> Option<u64> {
    let (s, v) = json_call(addr, "GET", "/api/network", None).await;
    assert_eq!(s, 200, "{v}");
    v["nodes"].as_array()?.iter().find_map(|n| {
        (n["peer_id"] == peer.to_string())
            .then(|| n["connected_since_ms"].as_u64())
            .flatten()
    })
}

/// Posts `body` to `/api/goodbye`: the status and the error's code.
async fn goodbye(addr: std::net::SocketAddr, body: &str) -> (u16, Value) {
    let r = http_client::http(addr, "POST", "/api/goodbye", Some(body), &[]).await;
    let v = serde_json::from_str(&r.body).unwrap_or(Value::Null);
    (r.status, v["code"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_goodbye_closes_the_connection_now_and_forged_stale_or_replayed_ones_do_not() {
    use tabnode_core::goodbye::{Goodbye, MAX_SKEW_MS};
    let dir = tempfile::tempdir().expect("dir");
    let cfg = tabnode_relay::RelayConfig::ephemeral(dir.path().join("relay"), PathBuf::from("."));
    let relay = tabnode_relay::start(cfg).await.expect("relay");
    let addr = relay.http_addr;
    let key = libp2p::identity::Keypair::generate_ed25519();
    let node = tabnode_node::spawn(tabnode_node::NodeConfig {
        key: Some(key.clone()),
        ..node_config(relay.tcp_addr().expect("tcp"))
    })
    .expect("node");
    let peer = node.peer_id;
    let deadline = tokio::time::Instant::now() + WAIT;
    let since = loop {
        if let Some(t) = connected_since(addr, &peer).await {
            break t;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the node never connected"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis() as u64
    };
    // The node's clock runs three minutes ahead of the relay's.
    let skew = 3 * 60_000;
    let signed = |key: &libp2p::identity::Keypair, connected_at: u64| {
        Goodbye::sign(key, connected_at + skew, now() + skew).expect("sign")
    };
    let json = |g: &Goodbye| serde_json::to_string(g).expect("json");

    // Refused, and the connection stays: garbage, someone else's signature,
    // a stale goodbye, another connection's start, a node not connected.
    let stranger = libp2p::identity::Keypair::generate_ed25519();
    let forged = Goodbye {
        signature: signed(&stranger, since).signature,
        ..signed(&key, since)
    };
    let stale = Goodbye::sign(
        &key,
        since - MAX_SKEW_MS - 2_000,
        now() - MAX_SKEW_MS - 1_000,
    )
    .expect("sign");
    for (body, status, code) in [
        ("{\"peer\": 1}".to_owned(), 400, "invalid_goodbye"),
        (json(&forged), 401, "bad_signature"),
        (json(&stale), 400, "invalid_goodbye"),
        (json(&signed(&key, since - 30_000)), 409, "other_connection"),
        (json(&signed(&stranger, since)), 404, "not_connected"),
    ] {
        assert_eq!(goodbye(addr, &body).await, (status, json!(code)), "{body}");
    }
    assert_eq!(
        connected_since(addr, &peer).await,
        Some(since),
        "still the same connection"
    );

    // The node's own goodbye closes its connection at once (the test's
    // node then connects again, as a reloaded tab would).
    let farewell = json(&signed(&key, since));
    let t0 = std::time::Instant::now();
    assert_eq!(goodbye(addr, &farewell).await.0, 204);
    let deadline = tokio::time::Instant::now() + WAIT;
    let again = loop {
        match connected_since(addr, &peer).await {
            Some(t) if t != since => break t,
            _ => {}
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the connection was not closed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!("dropped and back in {} ms", t0.elapsed().as_millis());
    // Replayed on the new connection, the same goodbye is refused (the
    // two connections started within the tolerance: it is refused as used).
    assert_eq!(goodbye(addr, &farewell).await, (409, json!("already_used")));
    assert_eq!(connected_since(addr, &peer).await, Some(again));
}
