//! Benchmarks of network inference, one JSON line per measurement (read by
//! `scripts/bench.sh`):
//!
//! * `net_bench overhead [N]`: time to first token of a chat request
//!   through the relay's API (client-side, streaming) against the same
//!   generation run locally on the engine, alternating, N pairs; p50/p99 of
//!   both and of their difference (the network's overhead).
//! * `net_bench routing [NODES...]`: requests per second the relay routes
//!   to simulated native nodes (real libp2p nodes whose model answers at
//!   once with fixed tokens), for each node count, with 64 concurrent
//!   clients for 5 s each; p50/p99 latency.
//! * `net_bench flows [ROUNDS]`: a flow's orchestration overhead per node
//!   (chains of 1 and 64 no-op template nodes, `/v1/flows/run`, against
//!   the relay's plainest request, `GET /v1/flows/templates`, in the same
//!   run), and a `map` of 4 llm steps over two nodes serving the real
//!   model, in parallel against one after another (`max_parallel` 4
//!   against 1).
//! * `net_bench routing-apart [NODES...]`: the same routing measurement
//!   with the relay binary (`TABNODE_RELAY_BIN`, e.g. the release build of
//!   `scripts/install.sh`) and the simulated nodes (`net_bench nodes N
//!   ADDR`) each in a process of its own, and 64 clients on kept-alive
//!   connections (`ROUTING_CLIENTS` sets another number: a few measure the
//!   latency a request gets without queueing for the cores); also each
//!   process's share of the machine's cores.
//! * `net_bench dashboard [NODES] [SUBSCRIBERS] [SECONDS]`: what the live
//!   dashboard's stream costs a relay with NODES simulated nodes connected
//!   over libp2p: the relay binary runs in its own process, the nodes in
//!   this one, a light load of requests flows all along (so node rows
//!   change); the relay process's CPU time is read from `/proc` over
//!   windows of SECONDS without and with SUBSCRIBERS clients of
//!   `/api/stats/stream`, alternating (the difference: what subscribers
//!   cost, sending included), and the relay's own account of the time it
//!   spends sampling and writing events (`tabnode_stats_*_seconds` in
//!   `/metrics`): the sampler runs whether anyone watches or not.

#[path = "../tests/common/http.rs"]
mod http_client;
#[path = "../tests/common/process.rs"]
mod process;

use std::sync::Arc;
use std::time::{Duration, Instant};

use http_client::http;
use serde_json::json;
use tabnode_core::infer::{ChatMessage, FinishReason, GenerateRequest, GenerateResult, Prompt};
use tabnode_core::{Capabilities, NodeKind};
use tabnode_infer::{Engine, EngineError};
use tabnode_node::serve::{InferServer, ServedModel};
use tabnode_node::{spawn, NodeConfig, NodeHandle};
use tabnode_relay::catalog::CatalogModel;
use tabnode_relay::{InferConfig, PofConfig, RelayConfig, RelayHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The allocator of the `tabnode-node` binary, whose nodes this stands in for.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PROMPT: &str = "What is the capital of France?";

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

async fn relay(dir: &std::path::Path) -> RelayHandle {
    let mut cfg = RelayConfig::ephemeral(dir.join("relay"), ".".into());
    cfg.infer = InferConfig {
        rate_limit_per_minute: 0,
        queue_timeout: Duration::from_secs(30),
        // One address sends them all: no anonymous allowance.
        anonymous_per_hour: 0,
        ..InferConfig::default()
    };
    // One small proof per node, at registration: the bench measures
    // routing, not proving.
    cfg.pof = PofConfig {
        interval: Duration::from_secs(3600),
        max_n: 256,
        ..PofConfig::default()
    };
    // A thousand simulated nodes share this machine's address.
    cfg.limits.max_peers_per_ip = 100_000;
    cfg.catalog.models.push(simulated_entry());
    tabnode_relay::start(cfg).await.expect("relay starts")
}

/// The stand-in model's catalog entry (an instant "1T" model: no rate cap
/// applies at its size).
fn simulated_entry() -> CatalogModel {
    CatalogModel {
        id: tabnode_core::model_id(SIMULATED),
        name: SIMULATED.into(),
        title: "stand-in for routing benchmarks".into(),
        license: "none".into(),
        chat: true,
        // Never downloaded; a pinned source all the same, as a catalog
        // file must list one.
        source: vec![tabnode_relay::catalog::SourcePart {
            package: "simulated-1t==0.0.0".into(),
            member: "simulated-1t.gguf".into(),
        }],
        file: "simulated-1t.gguf".into(),
        bytes: 0,
        sha256: "0".repeat(64),
        context: 8192,
        params: 1,
        memory: tabnode_relay::catalog::Memory { cpu: 1, webgpu: 1 },
        price: tabnode_relay::catalog::Price::default(),
    }
}

fn node(relay: &RelayHandle, model: Arc<dyn ServedModel>, slots: usize) -> NodeHandle {
    node_at(relay.tcp_addr().expect("tcp"), model, slots)
}

fn node_at(relay: libp2p::Multiaddr, model: Arc<dyn ServedModel>, slots: usize) -> NodeHandle {
    spawn(NodeConfig {
        relay,
        key: None,
        capabilities: Capabilities::new(NodeKind::Native, "net-bench"),
        max_backoff: Duration::from_secs(2),
        handler: Arc::new(tabnode_node::prover::PofProver::new(
            tabnode_node::prover::Backend::Cpu,
        )),
        server: Some(Arc::new(InferServer::new(model, slots))),
        embedder: None,
    })
    .expect("node starts")
}

/// Polls `/path` of the relay every `every` until `done` says so (`Ok`),
/// at most `within`; the last `Err` names what was still missing.
async fn poll_relay(
    addr: std::net::SocketAddr,
    path: &str,
    within: Duration,
    every: Duration,
    done: impl Fn(&serde_json::Value) -> Result<(), String>,
) {
    let deadline = Instant::now() + within;
    loop {
        let v = http(addr, "GET", path, None, &[]).await.json();
        match done(&v) {
            Ok(()) => return,
            Err(missing) => assert!(Instant::now() < deadline, "{missing}"),
        }
        tokio::time::sleep(every).await;
    }
}

async fn wait_nodes(addr: std::net::SocketAddr, n: u64) {
    poll_relay(
        addr,
        "/v1/models",
        Duration::from_secs(600),
        Duration::from_millis(100),
        |v| {
            if v["data"][0]["tabnode"]["nodes"].as_u64().unwrap_or(0) >= n {
                Ok(())
            } else {
                Err(format!("only {v} registered"))
            }
        },
    )
    .await;
}

/// Milliseconds to the first token of a streamed request (the first event
/// after the role chunk), and the whole request.
async fn network_ttft(addr: std::net::SocketAddr, model: &str, max_tokens: u32) -> (f64, f64) {
    let body = json!({
        "model": model,
        "messages": [{ "role": "user", "content": PROMPT }],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": true,
    })
    .to_string();
    let t0 = Instant::now();
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.set_nodelay(true).expect("nodelay");
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    let mut first = None;
    loop {
        let n = s.read(&mut buf).await.expect("read");
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        if first.is_none() && String::from_utf8_lossy(&raw).matches("data: ").count() >= 2 {
            first = Some(t0.elapsed().as_secs_f64() * 1e3);
        }
    }
    let text = String::from_utf8_lossy(&raw);
    assert!(text.contains("[DONE]"), "incomplete stream: {text}");
    (first.expect("a token"), t0.elapsed().as_secs_f64() * 1e3)
}

fn local_ttft(engine: &Engine, max_tokens: u32) -> f64 {
    let mut r = GenerateRequest::new(Prompt::Chat(vec![ChatMessage {
        role: "user".into(),
        content: PROMPT.into(),
    }]));
    r.max_tokens = max_tokens;
    let t0 = Instant::now();
    let mut first = None;
    engine
        .generate(&r, &|| false, &mut |t, _| {
            if first.is_none() && !t.is_empty() {
                first = Some(t0.elapsed().as_secs_f64() * 1e3);
            }
        })
        .expect("local generation");
    first.expect("a token")
}

async fn overhead(n: usize) {
    let path = std::env::var_os("TABNODE_MODEL").expect("TABNODE_MODEL (scripts/env.sh)");
    let bytes = std::fs::read(path).expect("model file");
    let engine = Arc::new(Engine::load_quantized(bytes).expect("engine"));
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = relay(dir.path()).await;
    let _node = node(&relay, engine.clone(), 1);
    wait_nodes(relay.http_addr, 1).await;
    let model = tabnode_core::model_id(&engine.info.name);
    // Warm both paths once.
    local_ttft(&engine, 2);
    network_ttft(relay.http_addr, &model, 2).await;
    let (mut local, mut net, mut diff) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..n {
        let l = local_ttft(&engine, 2);
        let (t, _) = network_ttft(relay.http_addr, &model, 2).await;
        local.push(l);
        net.push(t);
        diff.push(t - l);
    }
    println!(
        "{}",
        json!({
            "bench": "overhead", "model": model, "n": n,
            "local_ttft_ms": { "p50": pct(&mut local, 0.5), "p99": pct(&mut local, 0.99) },
            "network_ttft_ms": { "p50": pct(&mut net, 0.5), "p99": pct(&mut net, 0.99) },
            "overhead_ms": { "p50": pct(&mut diff, 0.5), "p99": pct(&mut diff, 0.99) },
        })
    );
    // The same path with a model that answers at once: its local time to
    // first token is a function call, so the network's time is the
    // overhead alone, without the prefill's noise.
    let _sim = node(&relay, Arc::new(Simulated(None)), 1);
    wait_nodes_of(relay.http_addr, "simulated-1t", 1).await;
    network_ttft(relay.http_addr, "simulated-1t", 2).await;
    let mut sim = Vec::new();
    for _ in 0..n * 5 {
        sim.push(network_ttft(relay.http_addr, "simulated-1t", 2).await.0);
    }
    println!(
        "{}",
        json!({
            "bench": "overhead", "model": "simulated-1t", "n": n * 5,
            "local_ttft_ms": { "p50": 0.0, "p99": 0.0 },
            "network_ttft_ms": { "p50": pct(&mut sim.clone(), 0.5), "p99": pct(&mut sim.clone(), 0.99) },
            "overhead_ms": { "p50": pct(&mut sim.clone(), 0.5), "p99": pct(&mut sim, 0.99) },
        })
    );
}

async fn wait_nodes_of(addr: std::net::SocketAddr, model: &str, nodes: u64) {
    poll_relay(
        addr,
        "/v1/models",
        Duration::from_secs(60),
        Duration::from_millis(50),
        |v| {
            let serving = v["data"]
                .as_array()
                .and_then(|d| d.iter().find(|m| m["id"] == model))
                .and_then(|m| m["tabnode"]["nodes"].as_u64())
                .unwrap_or(0);
            if serving >= nodes {
                Ok(())
            } else {
                Err(format!("{model} never had {nodes} nodes: {v}"))
            }
        },
    )
    .await;
}

/// A stand-in model: answers with `max_tokens` fixed tokens, at once or
/// one per `.0` (a pace: a volunteer machine of its own, whose generation
/// takes time without taking this machine's cores).
struct Simulated(Option<Duration>);

/// Its name.
const SIMULATED: &str = "Simulated 1T";

impl ServedModel for Simulated {
    fn name(&self) -> &str {
        SIMULATED
    }
    fn check(&self, request: &GenerateRequest) -> Result<u32, EngineError> {
        Ok(match &request.prompt {
            Prompt::Text(t) => t.len() as u32 / 4 + 1,
            Prompt::Chat(m) => m.iter().map(|m| m.content.len() as u32 / 4 + 4).sum(),
        })
    }
    fn generate(
        &self,
        request: &GenerateRequest,
        _cancelled: &dyn Fn() -> bool,
        on_piece: &mut dyn FnMut(&[u32], &str),
    ) -> Result<GenerateResult, EngineError> {
        let n = request
            .max_tokens
            .saturating_sub(request.resume.len() as u32);
        for i in 0..n {
            if let Some(pace) = self.0 {
                std::thread::sleep(pace);
            }
            on_piece(&[100 + i], " x");
        }
        Ok(GenerateResult {
            tokens: (0..n).map(|i| 100 + i).collect(),
            text: " x".repeat(n as usize),
            finish: FinishReason::Length,
            prompt_tokens: 8,
            prefill_ms: 0.0,
            decode_ms: 0.0,
            device: "simulated".into(),
        })
    }
}

async fn routing(counts: &[usize]) {
    const CLIENTS: usize = 64;
    const SECONDS: f64 = 5.0;
    for &k in counts {
        let dir = tempfile::tempdir().expect("tempdir");
        let relay = relay(dir.path()).await;
        let t0 = Instant::now();
        let nodes: Vec<NodeHandle> = (0..k)
            .map(|_| node(&relay, Arc::new(Simulated(None)), 4))
            .collect();
        wait_nodes(relay.http_addr, k as u64).await;
        // Each node is challenged once when it registers: let the proofs
        // finish so that they do not compete with the measurement.
        let m = &relay.state.metrics;
        let deadline = Instant::now() + Duration::from_secs(900);
        let proofs = |o| {
            m.pof
                .get_or_create(&tabnode_relay::metrics::outcome(o))
                .get()
        };
        while proofs("passed") + proofs("failed") < k as u64 {
            assert!(Instant::now() < deadline, "proofs did not finish");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let joined_s = t0.elapsed().as_secs_f64();
        let addr = relay.http_addr;
        let body = json!({
            "model": "simulated-1t",
            "messages": [{ "role": "user", "content": "hello there" }],
            "max_tokens": 8,
        })
        .to_string();
        let stop = Instant::now() + Duration::from_secs_f64(SECONDS);
        let started = Instant::now();
        let clients: Vec<_> = (0..CLIENTS)
            .map(|_| {
                let body = body.clone();
                tokio::spawn(async move {
                    let mut lat = Vec::new();
                    let mut failed = 0usize;
                    while Instant::now() < stop {
                        let t = Instant::now();
                        let r = http(addr, "POST", "/v1/chat/completions", Some(&body), &[]).await;
                        if r.status == 200 {
                            lat.push(t.elapsed().as_secs_f64() * 1e3);
                        } else {
                            failed += 1;
                        }
                    }
                    (lat, failed)
                })
            })
            .collect();
        let mut lat = Vec::new();
        let mut failed = 0;
        for c in clients {
            let (l, f) = c.await.expect("client");
            lat.extend(l);
            failed += f;
        }
        let secs = started.elapsed().as_secs_f64();
        let done = lat.len();
        let ledger = http(addr, "GET", "/api/ledger", None, &[]).await.json();
        println!(
            "{}",
            json!({
                "bench": "routing", "nodes": k, "clients": CLIENTS, "seconds": secs,
                "requests": done, "failed": failed, "requests_per_s": done as f64 / secs,
                "latency_ms": { "p50": pct(&mut lat, 0.5), "p99": pct(&mut lat, 0.99) },
                "join_s": joined_s,
                "ledger_tokens": ledger["totals"]["tokens"],
            })
        );
        drop(nodes);
    }
}

/// A chain of `n` template nodes passing the input on.
fn chain(n: usize) -> serde_json::Value {
    let mut nodes = serde_json::Map::new();
    nodes.insert("in".into(), json!({"type": "input"}));
    let mut prev = ("in".to_owned(), "q".to_owned());
    for i in 0..n {
        let id = format!("t{i}");
        nodes.insert(
            id.clone(),
            json!({"type": "template", "params": {"text": "{{x}}"}, "inputs": {"x": [prev.0, prev.1]}}),
        );
        prev = (id, "text".into());
    }
    nodes.insert(
        "out".into(),
        json!({"type": "output", "inputs": {"x": [prev.0, prev.1]}}),
    );
    json!({"version": 1, "nodes": nodes})
}

/// Milliseconds of one whole (not streamed) flow run.
async fn run_ms(addr: std::net::SocketAddr, body: &serde_json::Value) -> f64 {
    let t0 = Instant::now();
    let r = http(addr, "POST", "/v1/flows/run", Some(&body.to_string()), &[]).await;
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["status"], "done", "{}", r.body);
    ms
}

async fn flows(rounds: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = relay(dir.path()).await;
    let addr = relay.http_addr;
    let (mut one, mut long, mut plain) = (Vec::new(), Vec::new(), Vec::new());
    let body = |n| json!({"flow": chain(n), "inputs": {"q": "x"}, "stream": false});
    run_ms(addr, &body(64)).await;
    for _ in 0..rounds {
        one.push(run_ms(addr, &body(1)).await);
        long.push(run_ms(addr, &body(64)).await);
        let t0 = Instant::now();
        let r = http(addr, "GET", "/v1/flows/templates", None, &[]).await;
        assert_eq!(r.status, 200);
        plain.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    let (one, long, plain) = (
        pct(&mut one, 0.5),
        pct(&mut long, 0.5),
        pct(&mut plain, 0.5),
    );
    let per_node = (long - one) / 63.0;
    println!(
        "{}",
        json!({
            "bench": "flow_overhead", "rounds": rounds,
            "chain_1_ms_p50": one, "chain_64_ms_p50": long,
            "per_node_ms": per_node,
            "plain_request_ms_p50": plain,
            "per_node_over_plain_request": per_node / plain,
        })
    );

    // A map of 4 llm steps over two nodes (one slot each) serving the real
    // model: all at once against one after another.
    let path = std::env::var_os("TABNODE_MODEL").expect("TABNODE_MODEL (scripts/env.sh)");
    let bytes = std::fs::read(path).expect("model");
    // An engine each: one engine runs one generation at a time.
    let engines = [0, 1].map(|_| Arc::new(Engine::load_quantized(bytes.clone()).expect("engine")));
    let model = tabnode_core::model_id(&engines[0].info.name);
    let _nodes = engines.map(|e| node(&relay, e, 1));
    wait_nodes(addr, 2).await;
    let text = [
        "Name three colours of the rainbow.",
        "Write one sentence about the sea.",
        "What do bees make from nectar?",
        "Give a synonym for happy.",
    ]
    .map(|s| format!("{s:<100}"))
    .join("");
    let map = |parallel: u32| {
        json!({
            "flow": {"version": 1, "nodes": {
                "in": {"type": "input"},
                "parts": {"type": "split", "params": {"chunk_chars": 100}, "inputs": {"text": ["in", "text"]}},
                "each": {"type": "map",
                         "params": {"step": {"type": "llm", "params": {"model": model, "max_tokens": 32}},
                                    "max_parallel": parallel},
                         "inputs": {"items": ["parts", "chunks"]}},
                "out": {"type": "output", "inputs": {"x": ["each", "texts"]}}
            }},
            "inputs": {"text": text},
            "stream": false,
        })
    };
    run_ms(addr, &map(4)).await;
    let (mut par, mut seq) = (Vec::new(), Vec::new());
    for _ in 0..rounds.clamp(1, 5) {
        par.push(run_ms(addr, &map(4)).await);
        seq.push(run_ms(addr, &map(1)).await);
    }
    let (par, seq) = (pct(&mut par, 0.5), pct(&mut seq, 0.5));
    println!(
        "{}",
        json!({
            "bench": "flow_map", "model": model, "items": 4, "nodes": 2, "max_tokens": 32,
            "parallel_ms_p50": par, "sequential_ms_p50": seq, "speedup": seq / par,
        })
    );
    // The same map over four stand-in nodes generating 100 tokens/s each
    // (machines of their own), so that the map's parallelism is not bound
    // by this machine's cores.
    let _paced: Vec<NodeHandle> = (0..4)
        .map(|_| {
            node(
                &relay,
                Arc::new(Simulated(Some(Duration::from_millis(10)))),
                1,
            )
        })
        .collect();
    wait_nodes_of(addr, "simulated-1t", 4).await;
    let sim = |parallel: u32| {
        let mut b = map(parallel);
        b["flow"]["nodes"]["each"]["params"]["step"]["params"]["model"] = json!("simulated-1t");
        b
    };
    run_ms(addr, &sim(4)).await;
    let (mut par, mut seq) = (Vec::new(), Vec::new());
    for _ in 0..rounds.clamp(1, 5) {
        par.push(run_ms(addr, &sim(4)).await);
        seq.push(run_ms(addr, &sim(1)).await);
    }
    let (par, seq) = (pct(&mut par, 0.5), pct(&mut seq, 0.5));
    println!(
        "{}",
        json!({
            "bench": "flow_map", "model": "simulated-1t (100 tokens/s a node)", "items": 4, "nodes": 4, "max_tokens": 32,
            "parallel_ms_p50": par, "sequential_ms_p50": seq, "speedup": seq / par,
        })
    );
}

/// Starts the relay binary in a process of its own with the stand-in
/// model in its catalog, room for a thousand nodes at one address and no
/// request limits.
async fn relay_process(dir: &std::path::Path) -> process::RelayProcess {
    let mut catalog = tabnode_relay::catalog::Catalog::builtin();
    catalog.models.push(simulated_entry());
    let catalog_file = dir.join("catalog.json");
    std::fs::write(&catalog_file, serde_json::to_vec(&catalog).expect("json")).expect("catalog");
    let catalog_file = catalog_file.display().to_string();
    process::start_relay_process(
        &dir.join("relay"),
        &[
            "--catalog",
            &catalog_file,
            "--max-peers-per-ip",
            "100000",
            "--anonymous-per-hour",
            "0",
            "--rate-limit",
            "0",
            "--pof-max-n",
            "256",
            "--pof-interval",
            "3600",
        ],
    )
    .await
}

/// CPU seconds the process `pid` has used (user + system, every thread).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc");
    // Fields after the command's closing parenthesis, from the state (the
    // line's 3rd): utime is the 12th of them, stime the 13th (the line's
    // 14th and 15th). Counted by position: the state is a letter.
    let rest = stat.rsplit_once(')').expect("stat").1;
    let field = |i: usize| -> f64 {
        rest.split_whitespace()
            .nth(i)
            .and_then(|x| x.parse().ok())
            .expect("a numeric /proc stat field")
    };
    (field(11) + field(12)) / clock_ticks()
}

/// The kernel's clock ticks a second (`getconf CLK_TCK`).
fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// A client of `/api/stats/stream` reading everything it sends (counted
/// into `bytes`) until it is aborted or the stream ends.
async fn subscriber(addr: std::net::SocketAddr, bytes: Arc<std::sync::atomic::AtomicU64>) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "GET /api/stats/stream HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                bytes.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
}

/// The value of the counter `name` in the relay's `/metrics`.
async fn metric(addr: std::net::SocketAddr, name: &str) -> f64 {
    let text = http(addr, "GET", "/metrics", None, &[]).await.body;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
}

async fn dashboard(nodes: usize, subscribers: usize, seconds: u64) {
    const LOAD_PER_S: f64 = 5.0;
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = relay_process(dir.path()).await;
    let pid = relay.child.id().expect("the relay runs");
    let addr = relay.http;
    let t0 = Instant::now();
    let _nodes: Vec<NodeHandle> = (0..nodes)
        .map(|_| node_at(relay.tcp.clone(), Arc::new(Simulated(None)), 4))
        .collect();
    wait_nodes(addr, nodes as u64).await;
    // Every node proved once at registration: wait until the proofs end.
    wait_proven(addr, nodes).await;
    let joined_s = t0.elapsed().as_secs_f64();
    // A light load all along: a request every 200 ms, so rows change.
    let served = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = served.clone();
    let load = tokio::spawn(async move {
        let body = json!({
            "model": "simulated-1t",
            "messages": [{ "role": "user", "content": "hello there" }],
            "max_tokens": 8,
        })
        .to_string();
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / LOAD_PER_S));
        loop {
            tick.tick().await;
            let r = http(addr, "POST", "/v1/chat/completions", Some(&body), &[]).await;
            assert_eq!(r.status, 200, "{}", r.body);
            counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    });
    let window = Duration::from_secs(seconds);
    let (mut without, mut with) = (Vec::new(), Vec::new());
    let mut stream_bytes = 0u64;
    const SAMPLE: &str = "tabnode_stats_sample_seconds_total";
    const STREAM: &str = "tabnode_stats_stream_seconds_total";
    let (sample0, started) = (metric(addr, SAMPLE).await, Instant::now());
    let mut stream_s = 0.0;
    for _ in 0..2 {
        let c0 = cpu_seconds(pid);
        tokio::time::sleep(window).await;
        without.push((cpu_seconds(pid) - c0) / window.as_secs_f64());
        let bytes = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let subs: Vec<_> = (0..subscribers)
            .map(|_| tokio::spawn(subscriber(addr, bytes.clone())))
            .collect();
        // The first events (the history and every row) are a connection's
        // start, not its running cost: let them pass.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let b0 = bytes.load(std::sync::atomic::Ordering::Relaxed);
        let c0 = cpu_seconds(pid);
        let w0 = metric(addr, STREAM).await;
        tokio::time::sleep(window).await;
        with.push((cpu_seconds(pid) - c0) / window.as_secs_f64());
        stream_s += metric(addr, STREAM).await - w0;
        stream_bytes += bytes.load(std::sync::atomic::Ordering::Relaxed) - b0;
        for s in subs {
            s.abort();
        }
    }
    let sampling = (metric(addr, SAMPLE).await - sample0) / started.elapsed().as_secs_f64();
    load.abort();
    let served = served.load(std::sync::atomic::Ordering::Relaxed);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    println!(
        "{}",
        json!({
            "bench": "dashboard", "nodes": nodes, "subscribers": subscribers,
            "window_s": seconds, "load_requests_per_s": LOAD_PER_S, "load_requests": served,
            "join_s": joined_s,
            "relay_core_share_without": without, "relay_core_share_with": with,
            "subscribers_core_share": mean(&with) - mean(&without),
            "sampler_core_share": sampling,
            "stream_events_core_share": stream_s / (2.0 * window.as_secs_f64()),
            "stream_bytes_per_subscriber_per_s":
                stream_bytes as f64 / (2.0 * window.as_secs_f64() * subscribers.max(1) as f64),
        })
    );
}

/// A client on one kept-alive HTTP/1.1 connection (what API clients and
/// proxies do), for bodies with a `Content-Length`.
struct KeptAlive {
    conn: tokio::io::BufReader<tokio::net::TcpStream>,
    host: std::net::SocketAddr,
}

impl KeptAlive {
    async fn connect(host: std::net::SocketAddr) -> Self {
        let stream = tokio::net::TcpStream::connect(host).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        Self {
            conn: tokio::io::BufReader::new(stream),
            host,
        }
    }

    /// POSTs `body` to `path`: the status.
    async fn post(&mut self, path: &str, body: &str) -> u16 {
        use tokio::io::AsyncBufReadExt;
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.host,
            body.len()
        );
        self.conn
            .get_mut()
            .write_all(req.as_bytes())
            .await
            .expect("write");
        let mut line = String::new();
        self.conn.read_line(&mut line).await.expect("status line");
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("a status");
        let mut length = 0usize;
        loop {
            line.clear();
            self.conn.read_line(&mut line).await.expect("header");
            let h = line.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().expect("length");
                }
            }
        }
        let mut answer = vec![0u8; length];
        self.conn.read_exact(&mut answer).await.expect("body");
        status
    }
}

/// `net_bench nodes N ADDR`: N simulated nodes joined to the relay at
/// ADDR, until this process is killed.
async fn nodes_forever(n: usize, relay: libp2p::Multiaddr) {
    let _nodes: Vec<NodeHandle> = (0..n)
        .map(|_| node_at(relay.clone(), Arc::new(Simulated(None)), 4))
        .collect();
    println!("{n} nodes started");
    futures::future::pending::<()>().await;
}

/// Waits until `nodes` nodes have a valid proof (each is proved once when
/// it registers; the measurements start after).
async fn wait_proven(addr: std::net::SocketAddr, nodes: usize) {
    poll_relay(
        addr,
        "/api/nodes",
        Duration::from_secs(900),
        Duration::from_millis(500),
        |v| {
            let proven = v["rows"]
                .as_array()
                .map_or(0, |r| r.iter().filter(|r| r["valid"] == true).count());
            if proven >= nodes {
                Ok(())
            } else {
                Err(format!("{proven} of {nodes} nodes proved"))
            }
        },
    )
    .await;
}

async fn routing_apart(counts: &[usize]) {
    let client_count: usize = std::env::var("ROUTING_CLIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    const SECONDS: f64 = 10.0;
    for &k in counts {
        let dir = tempfile::tempdir().expect("tempdir");
        let relay = relay_process(dir.path()).await;
        let relay_pid = relay.child.id().expect("the relay runs");
        let t0 = Instant::now();
        let mut nodes = tokio::process::Command::new(std::env::current_exe().expect("exe"))
            .args(["nodes", &k.to_string(), &relay.tcp.to_string()])
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("the nodes' process");
        let nodes_pid = nodes.id().expect("the nodes run");
        wait_nodes(relay.http, k as u64).await;
        wait_proven(relay.http, k).await;
        let joined_s = t0.elapsed().as_secs_f64();
        let addr = relay.http;
        let body = json!({
            "model": "simulated-1t",
            "messages": [{ "role": "user", "content": "hello there" }],
            "max_tokens": 8,
        })
        .to_string();
        let cpu0 = (
            cpu_seconds(relay_pid),
            cpu_seconds(nodes_pid),
            cpu_seconds(std::process::id()),
        );
        let stop = Instant::now() + Duration::from_secs_f64(SECONDS);
        let started = Instant::now();
        let clients: Vec<_> = (0..client_count)
            .map(|_| {
                let body = body.clone();
                tokio::spawn(async move {
                    let mut conn = KeptAlive::connect(addr).await;
                    let (mut lat, mut failed) = (Vec::new(), 0usize);
                    while Instant::now() < stop {
                        let t = Instant::now();
                        if conn.post("/v1/chat/completions", &body).await == 200 {
                            lat.push(t.elapsed().as_secs_f64() * 1e3);
                        } else {
                            failed += 1;
                        }
                    }
                    (lat, failed)
                })
            })
            .collect();
        let (mut lat, mut failed) = (Vec::new(), 0);
        for c in clients {
            let (l, f) = c.await.expect("client");
            lat.extend(l);
            failed += f;
        }
        let secs = started.elapsed().as_secs_f64();
        let share = |now: f64, before: f64| (now - before) / secs;
        let cores = json!({
            "relay": share(cpu_seconds(relay_pid), cpu0.0),
            "nodes": share(cpu_seconds(nodes_pid), cpu0.1),
            "clients": share(cpu_seconds(std::process::id()), cpu0.2),
        });
        let done = lat.len();
        // The relay's own view: time from taking a request to its answer,
        // and to its first token (the histograms' mean).
        let metrics_text = http(addr, "GET", "/metrics", None, &[]).await.body;
        let mean = |name: &str| {
            let text = &metrics_text;
            let get = |suffix: &str| {
                text.lines()
                    .find_map(|l| {
                        l.strip_prefix(&format!("{name}_{suffix} "))?
                            .parse::<f64>()
                            .ok()
                    })
                    .unwrap_or(0.0)
            };
            get("sum") / get("count").max(1.0) * 1e3
        };
        println!(
            "{}",
            json!({
                "relay_request_ms_mean": mean("tabnode_request_seconds"),
                "relay_ttft_ms_mean": mean("tabnode_request_ttft_seconds"),
                "bench": "routing-apart", "nodes": k, "clients": client_count, "seconds": secs,
                "requests": done, "failed": failed, "requests_per_s": done as f64 / secs,
                "latency_ms": { "p50": pct(&mut lat, 0.5), "p99": pct(&mut lat, 0.99) },
                "join_s": joined_s, "cores_used": cores,
                "relay": relay_binary_name(),
            })
        );
        let _ = nodes.kill().await;
    }
}

/// Which relay binary ran (the release build or the tests' dev build).
fn relay_binary_name() -> String {
    process::relay_binary().display().to_string()
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("overhead") => overhead(args.get(1).and_then(|a| a.parse().ok()).unwrap_or(40)).await,
        Some("routing") => {
            let counts: Vec<usize> = args[1..].iter().filter_map(|a| a.parse().ok()).collect();
            routing(if counts.is_empty() {
                &[10, 100, 1000]
            } else {
                &counts
            })
            .await;
        }
        Some("flows") => flows(args.get(1).and_then(|a| a.parse().ok()).unwrap_or(20)).await,
        Some("routing-apart") => {
            let counts: Vec<usize> = args[1..].iter().filter_map(|a| a.parse().ok()).collect();
            routing_apart(if counts.is_empty() {
                &[10, 100, 1000]
            } else {
                &counts
            })
            .await;
        }
        Some("nodes") => {
            let n = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10);
            let relay = args
                .get(2)
                .and_then(|a| a.parse().ok())
                .expect("the relay's TCP multiaddr");
            nodes_forever(n, relay).await;
        }
        Some("dashboard") => {
            let arg = |i: usize, d: usize| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(d);
            dashboard(arg(1, 1000), arg(2, 10), arg(3, 30) as u64).await;
        }
        _ => eprintln!(
            "usage: net_bench overhead [N] | routing [NODES...] | routing-apart [NODES...] | nodes N ADDR | flows [ROUNDS] | dashboard [NODES] [SUBSCRIBERS] [SECONDS]"
        ),
    }
}
