//! Network inference with native nodes serving the real model: the
//! OpenAI-compatible API on the relay (streamed and whole, and its errors),
//! matchmaking across several nodes, failover mid-stream, and the ledger
//! (exact token credits; it survives `kill -9` of the relay process).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tabnode_core::infer::{ChatMessage, GenerateRequest, Prompt};
use tabnode_core::{ErrorCode, Request, Response};
use tabnode_infer::Engine;
use tabnode_node::prover::RequestHandler;
use tabnode_node::serve::InferServer;
use tabnode_node::NodeHandle;
use tabnode_relay::{InferConfig, RelayConfig, RelayHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[path = "common/http.rs"]
mod http_client;
use http_client::{dechunk, http, tokens_of, HttpResponse};
#[path = "common/process.rs"]
mod process;
#[path = "common/serving.rs"]
mod serving;
use process::start_relay_process;
use serving::*;

/// What the model says to `prompt` locally, greedy.
fn local_answer(prompt: &str, max_tokens: u32) -> (String, usize) {
    let mut r = GenerateRequest::new(chat(prompt));
    r.max_tokens = max_tokens;
    let out = engine()
        .generate(&r, &|| false, &mut |_, _| {})
        .expect("local generation");
    (out.text, out.tokens.len())
}

fn chat(prompt: &str) -> Prompt {
    Prompt::Chat(vec![ChatMessage {
        role: "user".into(),
        content: prompt.into(),
    }])
}

/// A prover that never answers: its node stays unverified.
struct Silent(Mutex<std::sync::mpsc::Receiver<()>>);

impl RequestHandler for Silent {
    fn handle(&self, _: &str, _: Request) -> Response {
        // Held until the test ends (the sender is dropped with it).
        let _ = self.0.lock().map(|rx| rx.recv());
        Response::Error {
            code: ErrorCode::Invalid,
            message: "never proved".into(),
        }
    }
}

/// POSTs `body` to the relay's chat completions endpoint.
async fn post_chat(addr: std::net::SocketAddr, body: &str) -> HttpResponse {
    http(addr, "POST", "/v1/chat/completions", Some(body), &[]).await
}

fn chat_body(prompt: &str, max_tokens: u32, stream: bool) -> String {
    json!({
        "model": model(),
        "messages": [{ "role": "user", "content": prompt }],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": stream,
        "stream_options": { "include_usage": true },
    })
    .to_string()
}

/// An answer read back from either mode.
#[derive(Debug)]
struct Answer {
    text: String,
    completion_tokens: u64,
    nodes: Vec<String>,
    failovers: u64,
    /// For streams: the node named by each content chunk, in order.
    chunk_nodes: Vec<String>,
}

fn read_answer(r: &HttpResponse, stream: bool) -> Answer {
    assert_eq!(r.status, 200, "{}", r.body);
    if !stream {
        let v = r.json();
        assert_eq!(v["object"], "chat.completion");
        let names = v["tabnode"]["nodes"].as_array().expect("nodes");
        return Answer {
            text: v["choices"][0]["message"]["content"]
                .as_str()
                .expect("content")
                .to_string(),
            completion_tokens: v["usage"]["completion_tokens"].as_u64().expect("usage"),
            nodes: names
                .iter()
                .map(|n| n.as_str().expect("id").to_string())
                .collect(),
            failovers: v["tabnode"]["failovers"].as_u64().expect("failovers"),
            chunk_nodes: Vec::new(),
        };
    }
    assert!(
        r.headers
            .get("content-type")
            .is_some_and(|c| c.starts_with("text/event-stream")),
        "{:?}",
        r.headers
    );
    let events = r.events();
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{}",
        r.body
    );
    let mut a = Answer {
        text: String::new(),
        completion_tokens: 0,
        nodes: Vec::new(),
        failovers: 0,
        chunk_nodes: Vec::new(),
    };
    let mut finished = false;
    for e in &events[..events.len() - 1] {
        let v: Value = serde_json::from_str(e).expect("chunk JSON");
        assert!(v.get("error").is_none(), "error in stream: {e}");
        assert_eq!(v["object"], "chat.completion.chunk");
        if let Some(choice) = v["choices"].get(0) {
            if let Some(t) = choice["delta"]["content"].as_str() {
                a.text.push_str(t);
                if !t.is_empty() {
                    a.chunk_nodes
                        .push(v["tabnode"]["node"].as_str().expect("node").to_string());
                }
            }
            if choice["finish_reason"].is_string() {
                finished = true;
                a.nodes = v["tabnode"]["nodes"]
                    .as_array()
                    .expect("nodes")
                    .iter()
                    .map(|n| n.as_str().expect("id").to_string())
                    .collect();
                a.failovers = v["tabnode"]["failovers"].as_u64().expect("failovers");
            }
        } else {
            a.completion_tokens = v["usage"]["completion_tokens"].as_u64().expect("usage");
        }
    }
    assert!(finished, "no finish_reason: {}", r.body);
    a
}

async fn ledger(addr: std::net::SocketAddr) -> Value {
    let r = http(addr, "GET", "/api/ledger", None, &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

/// One node serving two models: the relay lists both with that node and
/// routes each request to the model it names; each answer is that model's
/// own greedy text.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_node_serves_two_models_and_each_request_gets_its_model() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = relay_with(&dir, test_config()).await;
    let addr = relay.http_addr;
    let models: Vec<Arc<dyn tabnode_node::serve::ServedModel>> = vec![engine(), qwen()];
    let server = InferServer::serving(models, 2).expect("two models");
    let _node = node_serving(
        relay.tcp_addr().expect("tcp"),
        honest_prover(),
        Arc::new(server),
    );
    wait_for_model(addr, 1).await;
    let qwen_id = catalog_id(&qwen().info.name);
    assert_eq!(
        (model().as_str(), qwen_id.as_str()),
        ("smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct")
    );
    assert_ne!(qwen_id, model());
    let listed = http(addr, "GET", "/v1/models", None, &[]).await.json();
    for id in [model(), qwen_id.clone()] {
        let m = listed["data"]
            .as_array()
            .and_then(|d| d.iter().find(|m| m["id"] == id.as_str()))
            .unwrap_or_else(|| panic!("{id} listed: {listed}"));
        assert_eq!(m["tabnode"]["nodes"].as_u64(), Some(1), "{m}");
    }
    let prompt = "What is the capital of France?";
    for (id, engine) in [(model(), engine()), (qwen_id, qwen())] {
        let mut r = GenerateRequest::new(chat(prompt));
        r.max_tokens = 6;
        let want = engine
            .generate(&r, &|| false, &mut |_, _| {})
            .expect("local generation");
        let body = json!({
            "model": id, "messages": [{ "role": "user", "content": prompt }],
            "max_tokens": 6, "temperature": 0,
        })
        .to_string();
        let a = read_answer(&post_chat(addr, &body).await, false);
        assert_eq!(a.text, want.text, "{id}");
        assert_eq!(a.completion_tokens as usize, want.tokens.len(), "{id}");
    }
}

/// Gemma 3 270M, a base model (no chat template): `/v1/models` says so,
/// `/v1/completions` continues a prompt with the engine's own greedy text
/// (BOS first, as the model expects), and a chat request is refused with
/// the reason before it reaches a node.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_base_model_continues_text_and_refuses_chat() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = relay_with(&dir, test_config()).await;
    let addr = relay.http_addr;
    let gemma = models_dir_engine("gemma-3-270m-q4_k_m.gguf");
    let server = InferServer::serving(
        vec![gemma.clone() as Arc<dyn tabnode_node::serve::ServedModel>],
        1,
    )
    .expect("gemma");
    let _node = node_serving(
        relay.tcp_addr().expect("tcp"),
        honest_prover(),
        Arc::new(server),
    );
    wait_for(addr, "gemma-3-270m", 1).await;
    let listed = http(addr, "GET", "/v1/models", None, &[]).await.json();
    let m = listed["data"]
        .as_array()
        .and_then(|d| d.iter().find(|m| m["id"] == "gemma-3-270m"))
        .unwrap_or_else(|| panic!("gemma listed: {listed}"));
    assert_eq!(m["tabnode"]["chat"], false, "{m}");
    assert_eq!(m["tabnode"]["context_length"].as_u64(), Some(32_768), "{m}");

    let prompt = "The three primary colors are";
    let mut r = GenerateRequest::new(Prompt::Text(prompt.into()));
    r.max_tokens = 8;
    let want = gemma
        .generate(&r, &|| false, &mut |_, _| {})
        .expect("local generation");
    assert!(want.text.contains("red"), "{:?}", want.text);
    let body = json!({
        "model": "gemma-3-270m", "prompt": prompt, "max_tokens": 8, "temperature": 0,
    })
    .to_string();
    let whole = http(addr, "POST", "/v1/completions", Some(&body), &[]).await;
    assert_eq!(whole.status, 200, "{}", whole.body);
    let v = whole.json();
    assert_eq!(v["choices"][0]["text"], want.text.as_str(), "{v}");
    assert_eq!(v["model"], "gemma-3-270m");

    let chat = json!({
        "model": "gemma-3-270m", "messages": [{ "role": "user", "content": "hi" }],
    })
    .to_string();
    let refused = post_chat(addr, &chat).await;
    assert_eq!(refused.status, 400, "{}", refused.body);
    let e = refused.json();
    assert_eq!(e["error"]["code"], "model_not_chat", "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("/v1/completions")),
        "{e}"
    );
}

/// `/v1/completions` continues the prompt as it is (no chat template):
/// whole, streamed and echoed, the engine's own greedy text and count.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn text_completions_continue_the_prompt_as_the_engine_does() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = relay_with(&dir, test_config()).await;
    let addr = relay.http_addr;
    let _node = serving_node(relay.tcp_addr().expect("tcp"), 1);
    wait_for_model(addr, 1).await;

    let prompt = "One, two, three, four,";
    let mut r = GenerateRequest::new(Prompt::Text(prompt.into()));
    r.max_tokens = 6;
    let want = engine()
        .generate(&r, &|| false, &mut |_, _| {})
        .expect("local generation");
    assert!(!want.text.is_empty());
    let body = |stream: bool, echo: bool| {
        json!({
            "model": model(), "prompt": prompt, "max_tokens": 6, "temperature": 0,
            "stream": stream, "echo": echo, "stream_options": { "include_usage": true },
        })
        .to_string()
    };
    for echo in [false, true] {
        let expected = if echo {
            format!("{prompt}{}", want.text)
        } else {
            want.text.clone()
        };
        let whole = http(
            addr,
            "POST",
            "/v1/completions",
            Some(&body(false, echo)),
            &[],
        )
        .await;
        assert_eq!(whole.status, 200, "{}", whole.body);
        let v = whole.json();
        assert_eq!(v["object"], "text_completion");
        assert!(
            v["id"].as_str().is_some_and(|id| id.starts_with("cmpl-")),
            "{v}"
        );
        assert_eq!(v["choices"][0]["text"], expected.as_str(), "{v}");
        assert_eq!(v["choices"][0]["finish_reason"], "length");
        assert_eq!(v["usage"]["completion_tokens"].as_u64(), Some(6));

        let streamed = http(
            addr,
            "POST",
            "/v1/completions",
            Some(&body(true, echo)),
            &[],
        )
        .await;
        assert_eq!(streamed.status, 200, "{}", streamed.body);
        let events = streamed.events();
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
        let (mut text, mut usage, mut finish) = (String::new(), None, None);
        for e in &events[..events.len() - 1] {
            let v: Value = serde_json::from_str(e).expect("chunk JSON");
            assert_eq!(v["object"], "text_completion", "{e}");
            match v["choices"].get(0) {
                Some(c) => {
                    text.push_str(c["text"].as_str().expect("text"));
                    if let Some(f) = c["finish_reason"].as_str() {
                        finish = Some(f.to_string());
                    }
                }
                None => usage = v["usage"]["completion_tokens"].as_u64(),
            }
        }
        assert_eq!(text, expected);
        assert_eq!((finish.as_deref(), usage), (Some("length"), Some(6)));
    }
    // Errors in OpenAI's format, naming the parameter.
    let bad = http(
        addr,
        "POST",
        "/v1/completions",
        Some(&json!({ "model": model(), "prompt": [1, 2] }).to_string()),
        &[],
    )
    .await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["error"]["param"], "prompt");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_spread_over_nodes_and_the_ledger_matches_exactly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = relay_with(&dir, test_config()).await;
    let addr = relay.http_addr;
    let nodes: Vec<NodeHandle> = (0..3)
        .map(|_| serving_node(relay.tcp_addr().expect("tcp"), 1))
        .collect();
    wait_for_model(addr, nodes.len()).await;

    let prompts = [
        "Say hello.",
        "Name a colour.",
        "What is two plus two?",
        "Name a fruit.",
    ];
    let expected: Vec<(String, usize)> = prompts.iter().map(|p| local_answer(p, 6)).collect();
    let requests: Vec<_> = (0..12)
        .map(|i| {
            let p = prompts[i % prompts.len()];
            let stream = i % 2 == 0;
            tokio::spawn(async move {
                let r = post_chat(addr, &chat_body(p, 6, stream)).await;
                (i % prompts.len(), stream, r)
            })
        })
        .collect();
    let mut served: HashMap<String, u64> = HashMap::new();
    let mut delivered = 0;
    for t in requests {
        let (p, stream, r) = t.await.expect("request task");
        let a = read_answer(&r, stream);
        assert_eq!(a.text, expected[p].0, "prompt {p}, stream {stream}");
        assert_eq!(a.completion_tokens as usize, expected[p].1);
        assert_eq!((a.failovers, a.nodes.len()), (0, 1), "{a:?}");
        *served.entry(a.nodes[0].clone()).or_default() += a.completion_tokens;
        delivered += a.completion_tokens;
    }
    assert!(served.len() >= 2, "load spread over nodes: {served:?}");
    // Credits are durable before the requester is told "done".
    let l = ledger(addr).await;
    assert_eq!(l["totals"]["tokens"].as_u64(), Some(delivered), "{l}");
    for (peer, tokens) in &served {
        assert_eq!(tokens_of(&l, peer), *tokens, "{peer}");
        let one = http(addr, "GET", &format!("/api/ledger/{peer}"), None, &[])
            .await
            .json();
        assert_eq!(one["tokens"].as_u64(), Some(*tokens));
        assert!(one["points"].as_u64() >= Some(*tokens), "{one}");
    }
    let m = http(addr, "GET", "/metrics", None, &[]).await;
    assert!(
        m.body
            .contains("tabnode_inference_requests_total{outcome=\"completed\"} 12"),
        "{}",
        m.body
    );
}

/// A node frees its slot when its generation ends, not when the relay's
/// acknowledgement of the last chunk comes back: the relay counts the slot
/// free as soon as that chunk arrives and hands it to the next queued
/// request at once. (Before, that request found the node "busy", excluded
/// it, and with no other node waited out the queue timeout.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queued_requests_take_a_freed_slot_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = relay_with(&dir, test_config()).await;
    let addr = relay.http_addr;
    let _node = serving_node(relay.tcp_addr().expect("tcp"), 1);
    wait_for_model(addr, 1).await;
    let (text, tokens) = local_answer("Say hello.", 3);
    let requests: Vec<_> = (0..6)
        .map(|i| {
            tokio::spawn(async move {
                let stream = i % 2 == 0;
                (
                    stream,
                    post_chat(addr, &chat_body("Say hello.", 3, stream)).await,
                )
            })
        })
        .collect();
    for t in requests {
        let (stream, r) = t.await.expect("request task");
        let a = read_answer(&r, stream);
        assert_eq!(
            (a.text.as_str(), a.completion_tokens as usize),
            (text.as_str(), tokens)
        );
        assert_eq!((a.failovers, a.nodes.len()), (0, 1), "{a:?}");
    }
    let m = http(addr, "GET", "/metrics", None, &[]).await;
    assert!(
        m.body
            .contains("tabnode_inference_requests_total{outcome=\"completed\"} 6"),
        "{}",
        m.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_without_a_valid_proof_serves_but_earns_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = relay_with(&dir, test_config()).await;
    let addr = relay.http_addr;
    let (_never, rx) = std::sync::mpsc::channel();
    let node = serving_node_with(
        relay.tcp_addr().expect("tcp"),
        1,
        Arc::new(Silent(Mutex::new(rx))),
        engine(),
    );
    node.wait_reachable(WAIT).await.expect("reachable");
    let deadline = tokio::time::Instant::now() + WAIT;
    while relay.state.serving(&model()).is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "never registered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (want, tokens) = local_answer("Say hello.", 6);
    let r = post_chat(addr, &chat_body("Say hello.", 6, false)).await;
    let a = read_answer(&r, false);
    // The requester is served...
    assert_eq!((a.text, a.completion_tokens as usize), (want, tokens));
    assert_eq!(a.nodes, vec![node.peer_id.to_string()]);
    // ...but the node, never verified, earns nothing for it.
    assert!(!relay.state.proof_valid(&node.peer_id));
    let l = ledger(addr).await;
    assert_eq!(tokens_of(&l, &node.peer_id.to_string()), 0, "{l}");
    assert_eq!(l["totals"]["tokens"].as_u64().unwrap_or(0), 0, "{l}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_that_dies_mid_stream_is_replaced_without_lost_or_repeated_tokens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = relay_with(&dir, test_config()).await;
    let addr = relay.http_addr;
    let mut nodes: HashMap<String, NodeHandle> = (0..2)
        .map(|_| {
            let n = serving_node(relay.tcp_addr().expect("tcp"), 1);
            (n.peer_id.to_string(), n)
        })
        .collect();
    wait_for_model(addr, 2).await;
    let prompt = "Write a short poem about the sea.";
    let (want, want_tokens) = local_answer(prompt, 48);

    // Stream by hand, so that the first node can be killed once it has
    // delivered some tokens.
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let body = chat_body(prompt, 48, true);
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let mut killed = None;
    loop {
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .expect("stream goes on")
            .expect("read");
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&raw);
        if killed.is_none() && text.matches("\"content\":\"").count() >= 4 {
            // The node named in the stream so far serves it: kill it.
            let first = nodes
                .keys()
                .find(|k| text.contains(k.as_str()))
                .cloned()
                .expect("a node is named");
            drop(nodes.remove(&first));
            killed = Some(first);
        }
    }
    let killed = killed.expect("the stream outlived a few chunks");
    let raw = String::from_utf8(raw).expect("utf-8");
    let (head, rest) = raw.split_once("\r\n\r\n").expect("headers");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let r = HttpResponse {
        status: 200,
        headers: HashMap::from([("content-type".into(), "text/event-stream".into())]),
        body: dechunk(rest),
    };
    let a = read_answer(&r, true);
    assert_eq!(a.text, want, "the requester sees one uninterrupted answer");
    assert_eq!(a.completion_tokens as usize, want_tokens);
    let survivor = nodes.keys().next().expect("one left").clone();
    assert_eq!(a.nodes, vec![killed.clone(), survivor.clone()], "{a:?}");
    assert_eq!(a.failovers, 1);
    assert_eq!(a.chunk_nodes.first(), Some(&killed));
    assert_eq!(a.chunk_nodes.last(), Some(&survivor));
    let l = ledger(addr).await;
    let (k, s) = (tokens_of(&l, &killed), tokens_of(&l, &survivor));
    assert!(k > 0 && s > 0, "both credited: {l}");
    assert_eq!(
        k + s,
        a.completion_tokens,
        "credited exactly the delivered tokens"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn api_errors_follow_openai() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = relay_with(
        &dir,
        InferConfig {
            queue_timeout: Duration::from_millis(300),
            rate_limit_per_minute: 8,
            max_body_bytes: 64 << 10,
            ..test_config()
        },
    )
    .await;
    let addr = relay.http_addr;
    let post = |body: String| async move { post_chat(addr, &body).await };
    let check = |r: &HttpResponse, status: u16, code: Option<&str>| {
        assert_eq!(r.status, status, "{}", r.body);
        let e = &r.json()["error"];
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
        assert!(e["type"].is_string(), "{e}");
        if let Some(code) = code {
            assert_eq!(e["code"], code, "{e}");
        }
    };
    // No node at all: the model is unknown.
    check(
        &post(chat_body("hi", 4, false)).await,
        404,
        Some("model_not_found"),
    );
    let _node = serving_node(relay.tcp_addr().expect("tcp"), 1);
    wait_for_model(addr, 1).await;
    check(&post("{not json".into()).await, 400, None);
    let mut other = serde_json::from_str::<Value>(&chat_body("hi", 4, false)).expect("json");
    other["model"] = json!("gpt-4o");
    check(&post(other.to_string()).await, 404, Some("model_not_found"));
    // More tokens than the context holds (8192), under the body limit.
    let long = "hello ".repeat(9000);
    check(
        &post(chat_body(&long, 4, false)).await,
        400,
        Some("context_length_exceeded"),
    );
    check(
        &post(chat_body(&"x".repeat(70 << 10), 4, false)).await,
        413,
        Some("request_too_large"),
    );
    // The only slot is taken: the next request waits, then gets a 503.
    let busy = tokio::spawn(post(chat_body("Count from one to a hundred.", 60, false)));
    let deadline = tokio::time::Instant::now() + WAIT;
    while relay.state.load_of(&_node.peer_id).0 == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the long request never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check(
        &post(chat_body("hi", 4, true)).await,
        503,
        Some("no_node_available"),
    );
    let busy = busy.await.expect("task");
    assert_eq!(busy.status, 200, "{}", busy.body);
    let busy_tokens = busy.json()["usage"]["completion_tokens"].as_u64();
    // The models list and CORS for third-party pages.
    let models = http(
        addr,
        "GET",
        "/v1/models",
        None,
        &[("Origin", "http://example.test")],
    )
    .await;
    assert_eq!(
        models
            .headers
            .get("access-control-allow-origin")
            .map(String::as_str),
        Some("*")
    );
    assert_eq!(models.json()["data"][0]["id"], model().as_str());
    let pre = http(
        addr,
        "OPTIONS",
        "/v1/chat/completions",
        None,
        &[
            ("Origin", "http://example.test"),
            ("Access-Control-Request-Method", "POST"),
            (
                "Access-Control-Request-Headers",
                "authorization,content-type",
            ),
        ],
    )
    .await;
    assert!(pre.status < 300, "preflight: {}", pre.status);
    assert!(
        pre.headers.contains_key("access-control-allow-methods"),
        "{:?}",
        pre.headers
    );
    check(
        &http(addr, "GET", "/v1/models/nope", None, &[]).await,
        404,
        Some("model_not_found"),
    );
    check(
        &http(addr, "GET", "/v1/images/generations", None, &[]).await,
        404,
        Some("unknown_url"),
    );
    check(
        &http(addr, "GET", "/v1/embeddings", None, &[]).await,
        405,
        Some("method_not_allowed"),
    );
    // 8 a minute from one address: the rest are refused with Retry-After.
    let mut limited = None;
    for _ in 0..10 {
        let r = post("{}".into()).await;
        if r.status == 429 {
            limited = Some(r);
            break;
        }
    }
    let limited = limited.expect("rate limited");
    check(&limited, 429, Some("rate_limit_exceeded"));
    assert!(
        limited.headers.contains_key("retry-after"),
        "{:?}",
        limited.headers
    );
    // Refused requests credit nothing: only the one real answer counts.
    let l = ledger(addr).await;
    assert_eq!(l["totals"]["tokens"].as_u64(), busy_tokens, "{l}");
    assert_eq!(Some(tokens_of(&l, &_node.peer_id.to_string())), busy_tokens);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_ledger_survives_kill_9_of_the_relay() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("relay");
    std::fs::create_dir_all(&data).expect("data dir");
    let mut relay = start_relay_process(&data, &[]).await;
    let node = serving_node(relay.tcp.clone(), 1);
    wait_for_model(relay.http, 1).await;
    let mut delivered = 0;
    for (i, p) in ["Say hello.", "Name a colour.", "Name a fruit."]
        .iter()
        .enumerate()
    {
        let r = post_chat(relay.http, &chat_body(p, 5, i % 2 == 0)).await;
        delivered += read_answer(&r, i % 2 == 0).completion_tokens;
    }
    let before = ledger(relay.http).await;
    assert_eq!(before["totals"]["tokens"].as_u64(), Some(delivered));
    assert_eq!(tokens_of(&before, &node.peer_id.to_string()), delivered);

    relay.child.start_kill().expect("SIGKILL");
    let status = relay.child.wait().await.expect("exit status");
    assert!(!status.success(), "killed, not exited: {status:?}");
    let mut relay = start_relay_process(&data, &[]).await;
    let after = ledger(relay.http).await;
    assert_eq!(
        after["totals"]["tokens"], before["totals"]["tokens"],
        "{after}"
    );
    assert_eq!(after["balances"], before["balances"]);

    // Killed again, now in the middle of a stream: the interrupted request
    // credits nothing.
    let node = serving_node(relay.tcp.clone(), 1);
    wait_for_model(relay.http, 1).await;
    let _open = stream_until(
        relay.http,
        &chat_body("Write a short poem about the sea.", 48, true),
        1,
    )
    .await;
    relay.child.start_kill().expect("SIGKILL");
    relay.child.wait().await.expect("exit status");
    drop(node);
    let mut relay = start_relay_process(&data, &[]).await;
    // (The new node's proof may have been credited meanwhile: tokens only.)
    let after_stream = ledger(relay.http).await;
    assert_eq!(
        after_stream["totals"]["tokens"], before["totals"]["tokens"],
        "{after_stream}"
    );
    relay.child.start_kill().expect("SIGKILL");
    relay.child.wait().await.expect("exit status");

    // Every credit applied again, after reopening: nothing changes.
    let l = tabnode_relay::ledger::Ledger::open(&data.join("ledger.redb")).expect("reopen");
    let credits = l.credits().expect("credits");
    assert!(credits.len() >= 3, "{credits:?}");
    let (balances, totals) = l.balances().expect("balances");
    l.apply(credits).await.expect("re-apply");
    assert_eq!(l.balances().expect("balances"), (balances, totals));
}

/// Sends a streamed chat request by hand and reads until `chunks` content
/// chunks arrived; returns the open connection (drop it to leave).
async fn stream_until(
    addr: std::net::SocketAddr,
    body: &str,
    chunks: usize,
) -> tokio::net::TcpStream {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    while String::from_utf8_lossy(&raw)
        .matches("\"content\":\"")
        .count()
        < chunks
    {
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .expect("tokens arrive")
            .expect("read");
        assert!(n > 0, "stream ended early");
        raw.extend_from_slice(&buf[..n]);
    }
    s
}

// ---- Misbehaving nodes (issue #10: failure paths) ----

#[derive(Debug, Clone, Copy)]
enum Misbehaviour {
    /// Goes silent (until the relay cancels).
    Stall,
    /// Reports a failure.
    Fail,
    /// Sends more tokens than the request allows.
    Overflow,
}

/// The real engine for the first `after` tokens, then `mode` once `go`
/// says so (the test first makes sure a replacement node is verified).
struct Scripted {
    engine: Arc<Engine>,
    mode: Misbehaviour,
    after: usize,
    go: Mutex<std::sync::mpsc::Receiver<()>>,
}

impl tabnode_node::serve::ServedModel for Scripted {
    fn name(&self) -> &str {
        &self.engine.info.name
    }

    fn check(&self, request: &GenerateRequest) -> Result<u32, tabnode_infer::EngineError> {
        self.engine.check(request)
    }

    fn generate(
        &self,
        request: &GenerateRequest,
        cancelled: &dyn Fn() -> bool,
        on_piece: &mut dyn FnMut(&[u32], &str),
    ) -> Result<tabnode_core::infer::GenerateResult, tabnode_infer::EngineError> {
        let sent = std::cell::Cell::new(0usize);
        let result = self.engine.generate(
            request,
            &|| cancelled() || sent.get() >= self.after,
            &mut |t, s| {
                if sent.get() < self.after {
                    on_piece(t, s);
                    sent.set(sent.get() + t.len());
                }
            },
        )?;
        // Wait for the go (or the relay's cancel).
        loop {
            if cancelled() {
                return Ok(result);
            }
            let go = self
                .go
                .lock()
                .map(|rx| rx.recv_timeout(Duration::from_millis(20)));
            match go {
                Ok(Ok(())) | Ok(Err(std::sync::mpsc::RecvTimeoutError::Disconnected)) | Err(_) => {
                    break
                }
                Ok(Err(std::sync::mpsc::RecvTimeoutError::Timeout)) => {}
            }
        }
        match self.mode {
            Misbehaviour::Stall => {
                while !cancelled() {
                    std::thread::park_timeout(Duration::from_millis(20));
                }
                Ok(result)
            }
            Misbehaviour::Fail => Err(tabnode_infer::EngineError::Generate(
                tabnode_infer::generate::GenerateError::Device("scripted failure".into()),
            )),
            Misbehaviour::Overflow => {
                let junk = vec![42u32; request.max_tokens as usize + 5];
                on_piece(&junk, "overflow");
                Ok(result)
            }
        }
    }
}

fn scripted_node(
    relay: libp2p::Multiaddr,
    mode: Misbehaviour,
) -> (NodeHandle, std::sync::mpsc::Sender<()>) {
    scripted_node_after(relay, mode, 3)
}

/// A node that generates `after` tokens, then misbehaves as `mode`.
fn scripted_node_after(
    relay: libp2p::Multiaddr,
    mode: Misbehaviour,
    after: usize,
) -> (NodeHandle, std::sync::mpsc::Sender<()>) {
    let (go, rx) = std::sync::mpsc::channel();
    let model = Scripted {
        engine: engine(),
        mode,
        after,
        go: Mutex::new(rx),
    };
    (
        serving_node_with(relay, 1, honest_prover(), Arc::new(model)),
        go,
    )
}

/// Small proofs, short stalls: these tests are about what happens after.
async fn quick_relay(dir: &tempfile::TempDir) -> RelayHandle {
    let mut cfg = RelayConfig::ephemeral(dir.path().join("relay"), PathBuf::from("."));
    cfg.infer = InferConfig {
        // Long enough for the replacement node to join and prove first.
        stall_timeout: Duration::from_secs(5),
        queue_timeout: Duration::from_secs(60),
        // One address sends them all: no anonymous allowance.
        anonymous_per_hour: 0,
        ..InferConfig::default()
    };
    cfg.pof.max_n = 256;
    tabnode_relay::start(cfg).await.expect("relay starts")
}

async fn wait_valid(relay: &RelayHandle, peer: libp2p::PeerId) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !relay.state.proof_valid(&peer) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{peer} never proved"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_misbehaving_node_is_replaced_and_earns_nothing_for_its_attempt() {
    for mode in [
        Misbehaviour::Stall,
        Misbehaviour::Fail,
        Misbehaviour::Overflow,
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let relay = quick_relay(&dir).await;
        let addr = relay.http_addr;
        let (bad, go) = scripted_node(relay.tcp_addr().expect("tcp"), mode);
        wait_valid(&relay, bad.peer_id).await;
        let prompt = "Name three colours.";
        let (want, want_tokens) = local_answer(prompt, 12);
        let request =
            tokio::spawn(async move { post_chat(addr, &chat_body(prompt, 12, false)).await });
        // The bad node has the request; a good one joins and proves; then
        // the bad one misbehaves.
        let deadline = tokio::time::Instant::now() + WAIT;
        while relay.state.load_of(&bad.peer_id).0 == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{mode:?}: never sent"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let good = serving_node(relay.tcp_addr().expect("tcp"), 1);
        wait_valid(&relay, good.peer_id).await;
        go.send(()).expect("go");
        let a = read_answer(&request.await.expect("request task"), false);
        assert_eq!(a.text, want, "{mode:?}");
        assert_eq!(a.completion_tokens as usize, want_tokens, "{mode:?}");
        assert_eq!(
            a.nodes,
            vec![bad.peer_id.to_string(), good.peer_id.to_string()],
            "{mode:?}"
        );
        assert_eq!(a.failovers, 1);
        // The bad node earns nothing for its attempt; the good one exactly
        // the part it generated (the bad one delivered at least 3 tokens).
        let l = ledger(addr).await;
        assert_eq!(tokens_of(&l, &bad.peer_id.to_string()), 0, "{mode:?}: {l}");
        let earned = tokens_of(&l, &good.peer_id.to_string());
        assert!(
            earned > 0 && earned <= want_tokens as u64 - 3,
            "{mode:?}: {l}"
        );
        assert_eq!(l["totals"]["tokens"].as_u64(), Some(earned), "{l}");
    }
}

/// Failover where the first node's last token ends inside a multi-byte
/// character (Japanese here: SmolLM2 spells it in byte tokens), greedy and
/// with seeded sampling: the requester gets exactly the local answer, no
/// byte lost, repeated or replaced, and the character that was split comes
/// whole from the second node.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failover_inside_a_multi_byte_character_loses_no_bytes() {
    let prompt = "Translate hello to Japanese.";
    for (temperature, seed) in [(0.0f32, 0u64), (0.7, 11)] {
        let mut local = GenerateRequest::new(chat(prompt));
        local.max_tokens = 16;
        local.temperature = temperature;
        local.seed = seed;
        let want = engine()
            .generate(&local, &|| false, &mut |_, _| {})
            .expect("local generation");
        // The first cut that ends inside a character.
        let tok = &engine().tokenizer;
        let split = (1..want.tokens.len())
            .find(|&k| {
                std::str::from_utf8(&tok.decode(&want.tokens[..k]))
                    .is_err_and(|e| e.error_len().is_none())
            })
            .unwrap_or_else(|| panic!("no split inside a character in {:?}", want.text));
        assert!(!want.text.is_ascii(), "{:?}", want.text);

        let dir = tempfile::tempdir().expect("tempdir");
        let relay = quick_relay(&dir).await;
        let addr = relay.http_addr;
        let (bad, go) =
            scripted_node_after(relay.tcp_addr().expect("tcp"), Misbehaviour::Fail, split);
        wait_valid(&relay, bad.peer_id).await;
        let body = json!({
            "model": model(),
            "messages": [{ "role": "user", "content": prompt }],
            "max_tokens": 16,
            "temperature": temperature,
            "seed": seed,
            "stream": true,
            "stream_options": { "include_usage": true },
        })
        .to_string();
        let request = tokio::spawn(async move { post_chat(addr, &body).await });
        let deadline = tokio::time::Instant::now() + WAIT;
        while relay.state.load_of(&bad.peer_id).0 == 0 {
            assert!(tokio::time::Instant::now() < deadline, "never sent");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let good = serving_node(relay.tcp_addr().expect("tcp"), 1);
        wait_valid(&relay, good.peer_id).await;
        go.send(()).expect("go");
        let a = read_answer(&request.await.expect("request task"), true);
        let case = format!("temperature {temperature}, seed {seed}, split after {split}");
        // Equal to the uninterrupted generation, where the split character
        // is whole (a lost or doubled byte would show as U+FFFD or garble).
        assert_eq!(a.text, want.text, "{case}");
        assert_eq!(a.completion_tokens as usize, want.tokens.len(), "{case}");
        assert_eq!(
            a.nodes,
            vec![bad.peer_id.to_string(), good.peer_id.to_string()],
            "{case}"
        );
        assert_eq!(
            a.chunk_nodes.last(),
            Some(&good.peer_id.to_string()),
            "{case}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_failed_attempts_end_in_an_error_event() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = quick_relay(&dir).await;
    let addr = relay.http_addr;
    let nodes: Vec<_> = (0..3)
        .map(|_| scripted_node(relay.tcp_addr().expect("tcp"), Misbehaviour::Fail))
        .collect();
    for (n, go) in &nodes {
        wait_valid(&relay, n.peer_id).await;
        // No waiting: each fails after its 3 tokens.
        go.send(()).expect("go");
    }
    wait_for_model(addr, 3).await;
    let r = post_chat(addr, &chat_body("Name three colours.", 12, true)).await;
    assert_eq!(r.status, 200, "the stream had started");
    let events = r.events();
    let last: Value = serde_json::from_str(events.last().expect("events")).expect("JSON");
    assert_eq!(last["error"]["code"], "no_node_available", "{events:?}");
    // The error says what happened, not just that no node was found.
    assert!(
        last["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("failed after") && m.contains("tokens:")),
        "{last}"
    );
    assert!(!events.iter().any(|e| e == "[DONE]"), "{events:?}");
    let l = ledger(addr).await;
    assert_eq!(l["totals"]["tokens"].as_u64().unwrap_or(0), 0, "{l}");
}

/// A relay and one node with one slot, its model on the network.
async fn one_slot(dir: &tempfile::TempDir) -> (RelayHandle, Arc<InferServer>, NodeHandle) {
    let relay = quick_relay(dir).await;
    let server = Arc::new(InferServer::new(engine(), 1));
    let node = node_serving(
        relay.tcp_addr().expect("tcp"),
        honest_prover(),
        server.clone(),
    );
    wait_for_model(relay.http_addr, 1).await;
    (relay, server, node)
}

/// Waits (10 s at most) until `node`'s slot is free on the relay and on
/// the node: long before a long generation would be done.
async fn slot_freed(relay: &RelayHandle, server: &InferServer, node: &NodeHandle) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while relay.state.load_of(&node.peer_id).0 > 0 || server.active() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "slot still taken: relay {:?}, node {}",
            relay.state.load_of(&node.peer_id),
            server.active()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_requester_that_leaves_frees_the_node_and_credits_only_what_it_got() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (relay, server, node) = one_slot(&dir).await;
    let addr = relay.http_addr;
    let s = stream_until(
        addr,
        &chat_body("Write a long story about a dragon.", 200, true),
        2,
    )
    .await;
    drop(s);
    // The node is told, its slot frees, and it takes the next request.
    slot_freed(&relay, &server, &node).await;
    let next = post_chat(addr, &chat_body("Say hello.", 4, false)).await;
    let next = read_answer(&next, false);
    // Only what reached the requester of the abandoned stream is credited:
    // far less than the 200 asked for.
    let l = ledger(addr).await;
    let abandoned = tokens_of(&l, &node.peer_id.to_string()) - next.completion_tokens;
    assert!(
        (2..100).contains(&abandoned),
        "{abandoned} tokens credited: {l}"
    );
    assert!(
        relay
            .state
            .render_metrics()
            .contains("tabnode_inference_requests_total{outcome=\"failed\"} 1"),
        "the abandoned request counts as failed"
    );
}

#[tokio::test]
async fn a_requester_of_a_whole_answer_that_leaves_frees_the_node() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (relay, server, node) = one_slot(&dir).await;
    let addr = relay.http_addr;
    let body = chat_body("Write a long story about a dragon.", 200, false);
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("write");
    // Gone once the node works on it, long before its 200 tokens are done.
    let deadline = tokio::time::Instant::now() + WAIT;
    while server.active() == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no node took it");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(s);
    slot_freed(&relay, &server, &node).await;
    let metrics = relay.state.render_metrics();
    assert!(
        metrics.contains("tabnode_inference_requests_total{outcome=\"failed\"} 1")
            && metrics.contains("tabnode_inference_requests_total{outcome=\"completed\"} 0"),
        "the abandoned request counts as failed, not completed: {}",
        metrics
            .lines()
            .filter(|l| l.starts_with("tabnode_inference_requests_total"))
            .collect::<Vec<_>>()
            .join("; ")
    );
    // The node takes the next request.
    let next = post_chat(addr, &chat_body("Say hello.", 4, false)).await;
    assert!(read_answer(&next, false).completion_tokens > 0);
}

// ---- Self-dealt tokens (issue #10, attack 2) ----

/// A model that answers at once with `max_tokens` made-up tokens, under a
/// name of its choosing.
struct Junk(String);

impl tabnode_node::serve::ServedModel for Junk {
    fn name(&self) -> &str {
        &self.0
    }

    fn check(&self, _: &GenerateRequest) -> Result<u32, tabnode_infer::EngineError> {
        Ok(8)
    }

    fn generate(
        &self,
        request: &GenerateRequest,
        _: &dyn Fn() -> bool,
        on_piece: &mut dyn FnMut(&[u32], &str),
    ) -> Result<tabnode_core::infer::GenerateResult, tabnode_infer::EngineError> {
        let n = request.max_tokens;
        let tokens: Vec<u32> = (0..n).map(|i| 1000 + i).collect();
        let text = " x".repeat(n as usize);
        on_piece(&tokens, &text);
        Ok(tabnode_core::infer::GenerateResult {
            tokens,
            text,
            finish: tabnode_core::infer::FinishReason::Length,
            prompt_tokens: 8,
            prefill_ms: 0.0,
            decode_ms: 0.0,
            device: "junk".into(),
        })
    }
}

/// A node with a valid proof whose model, named `name`, "serves" requests
/// by returning made-up tokens at once.
async fn junk_node(relay: &RelayHandle, name: &str) -> NodeHandle {
    let node = serving_node_with(
        relay.tcp_addr().expect("tcp"),
        1,
        honest_prover(),
        Arc::new(Junk(name.into())),
    );
    wait_valid(relay, node.peer_id).await;
    node
}

fn junk_body(model: &str, max_tokens: u32) -> String {
    json!({
        "model": model,
        "messages": [{ "role": "user", "content": "hi" }],
        "max_tokens": max_tokens,
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_model_outside_the_catalog_is_neither_routed_nor_credited() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = quick_relay(&dir).await;
    let addr = relay.http_addr;
    let node = junk_node(&relay, "My Own Model").await;
    let models = http(addr, "GET", "/v1/models", None, &[]).await.json();
    assert_eq!(models["data"].as_array().map(Vec::len), Some(0), "{models}");
    let r = post_chat(addr, &junk_body("my-own-model", 4096)).await;
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "model_not_found");
    let l = ledger(addr).await;
    assert_eq!(tokens_of(&l, &node.peer_id.to_string()), 0, "{l}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_faster_than_the_proven_rate_allows_earn_only_up_to_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = quick_relay(&dir).await;
    let addr = relay.http_addr;
    // A verified node that "serves" the catalog's model by returning 2000
    // made-up tokens at once.
    let node = junk_node(&relay, &engine().info.name).await;
    let r = post_chat(addr, &junk_body(&model(), 2000)).await;
    // The requester gets what the node sent...
    assert_eq!(read_answer(&r, false).completion_tokens, 2000);
    // ...but points only for what the node's proven speed makes plausible.
    let h = relay.state.pof_history(&node.peer_id).expect("history");
    let gflops = h.standing.matmul_gflops.expect("proven");
    let l = ledger(addr).await;
    let earned = tokens_of(&l, &node.peer_id.to_string());
    let entry = relay.state.catalog.find(&model()).expect("catalog");
    assert!(earned >= tabnode_relay::catalog::RATE_BURST, "{l}");
    assert!(
        earned < 2000 && (earned as f64) < 32.0 + entry.max_tokens_per_s(gflops) * 10.0,
        "{earned} credited at {gflops} GFLOP/s: {l}"
    );
}

/// Over the link a routed request costs the relay's `Infer`, the node's
/// acceptance and its chunks; every chunk is acknowledged but the last,
/// which carries the end and goes as a notice (one frame fewer a request).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_last_chunk_of_a_routed_request_is_not_acknowledged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = quick_relay(&dir).await;
    let addr = relay.http_addr;
    let _node = junk_node(&relay, &engine().info.name).await;
    let metrics = &relay.state.metrics;
    let deadline = tokio::time::Instant::now() + WAIT;
    while metrics.links.get() != 1 {
        assert!(tokio::time::Instant::now() < deadline, "no link opened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let frames = |direction| {
        metrics
            .link_frames
            .get_or_create(&tabnode_relay::metrics::Direction { direction })
            .get()
    };
    for i in 0..3 {
        let (was_in, was_out) = (frames("in"), frames("out"));
        let r = post_chat(addr, &junk_body(&model(), 5)).await;
        assert_eq!(read_answer(&r, false).completion_tokens, 5, "{}", r.body);
        let (got, sent) = (frames("in") - was_in, frames("out") - was_out);
        // In: the acceptance and each chunk; out: the `Infer` and an
        // acknowledgement for each chunk but the last.
        assert!(got >= 2, "request {i}: {got} frames in");
        assert_eq!(got - sent, 1, "request {i}: {got} frames in, {sent} out");
    }
}
