//! The real model served by native nodes on an in-process relay: one
//! engine shared by every node of a test binary, nodes with an honest
//! prover, and waiting until they serve and have proved.
#![allow(dead_code)] // each includer uses part of it

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tabnode_core::{Capabilities, NodeKind};
use tabnode_infer::Engine;
use tabnode_node::prover::RequestHandler;
use tabnode_node::serve::InferServer;
use tabnode_node::{spawn, NodeConfig, NodeHandle};
use tabnode_relay::{InferConfig, RelayConfig, RelayHandle};

use super::http_client::http;

pub const WAIT: Duration = Duration::from_secs(60);

/// The catalog id of a model the relay routes (what requests name).
pub fn catalog_id(name: &str) -> String {
    tabnode_relay::catalog::Catalog::builtin()
        .find(name)
        .unwrap_or_else(|| panic!("{name} in the relay's catalog"))
        .id
        .clone()
}

/// The default model's network id.
pub fn model() -> String {
    catalog_id(&engine().info.name)
}

pub fn model_path() -> PathBuf {
    match std::env::var_os("TABNODE_MODEL") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(std::env::var_os("HOME").expect("HOME"))
            .join(".cache/tabnode/models/SmolLM2-135M-Instruct.Q4_1.gguf"),
    }
}

/// One engine for every node of every test (the quantized CPU engine nodes
/// serve with by default).
pub fn engine() -> Arc<Engine> {
    static ENGINE: OnceLock<Arc<Engine>> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            let bytes = std::fs::read(model_path()).expect("the model (scripts/setup.sh)");
            Arc::new(Engine::load_quantized(bytes).expect("engine"))
        })
        .clone()
}

/// A file of the models directory on the quantized engine (fetched by
/// `scripts/setup.sh`).
pub fn models_dir_engine(file: &str) -> Arc<Engine> {
    let dir = match std::env::var_os("TABNODE_MODELS_DIR") {
        Some(p) => PathBuf::from(p),
        None => {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/tabnode/models")
        }
    };
    let bytes =
        std::fs::read(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e} (scripts/setup.sh)"));
    Arc::new(Engine::load_quantized(bytes).expect("engine"))
}

/// Qwen2.5-Coder-0.5B-Instruct on the quantized engine.
pub fn qwen() -> Arc<Engine> {
    static QWEN: OnceLock<Arc<Engine>> = OnceLock::new();
    QWEN.get_or_init(|| models_dir_engine("Qwen2.5-Coder-0.5B-Instruct.gguf"))
        .clone()
}

pub async fn relay_with(dir: &tempfile::TempDir, infer: InferConfig) -> RelayHandle {
    let mut cfg = RelayConfig::ephemeral(dir.path().join("relay"), PathBuf::from("."));
    cfg.infer = infer;
    tabnode_relay::start(cfg).await.expect("relay starts")
}

pub fn test_config() -> InferConfig {
    InferConfig {
        stall_timeout: Duration::from_secs(10),
        queue_timeout: Duration::from_secs(60),
        // One address sends them all: no anonymous allowance.
        anonymous_per_hour: 0,
        ..InferConfig::default()
    }
}

/// [`test_config`] with every request spot-checked, by nodes at the same
/// address (all nodes of a test share 127.0.0.1).
pub fn checking_config() -> InferConfig {
    let mut config = test_config();
    config.checks.rate = 1.0;
    config.checks.new_node_rate = 1.0;
    config.checks.same_address = true;
    config
}

/// `/api/checks` (all it keeps) once it lists at least `n` checks.
pub async fn checks_after(addr: std::net::SocketAddr, n: usize) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let c = http(addr, "GET", "/api/checks?limit=1000", None, &[])
            .await
            .json();
        if c["checks"].as_array().map_or(0, Vec::len) >= n {
            return c;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{n} checks never listed: {c}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn honest_prover() -> Arc<dyn RequestHandler> {
    Arc::new(tabnode_node::prover::PofProver::new(
        tabnode_node::prover::Backend::Cpu,
    ))
}

pub fn serving_node(relay: libp2p::Multiaddr, slots: usize) -> NodeHandle {
    serving_node_with(relay, slots, honest_prover(), engine())
}

pub fn serving_node_with(
    relay: libp2p::Multiaddr,
    slots: usize,
    handler: Arc<dyn RequestHandler>,
    model: Arc<dyn tabnode_node::serve::ServedModel>,
) -> NodeHandle {
    node_serving(relay, handler, Arc::new(InferServer::new(model, slots)))
}

pub fn node_serving(
    relay: libp2p::Multiaddr,
    handler: Arc<dyn RequestHandler>,
    server: Arc<InferServer>,
) -> NodeHandle {
    spawn(NodeConfig {
        handler,
        server: Some(server),
        ..node_config(relay)
    })
    .expect("node starts")
}

/// A native node's settings for the tests: a fresh identity, an honest
/// prover, nothing served.
pub fn node_config(relay: libp2p::Multiaddr) -> NodeConfig {
    NodeConfig {
        relay,
        key: None,
        capabilities: Capabilities::new(NodeKind::Native, "inference-test"),
        max_backoff: Duration::from_millis(500),
        handler: honest_prover(),
        server: None,
        embedder: None,
    }
}

/// A node that serves nothing (an account, a client).
pub fn node_serving_nothing(relay: libp2p::Multiaddr) -> NodeHandle {
    spawn(NodeConfig {
        capabilities: Capabilities::new(NodeKind::Native, "client-test"),
        ..node_config(relay)
    })
    .expect("node starts")
}

/// Waits until `nodes` nodes serve the model and have passed a proof (only
/// verified nodes earn points).
pub async fn wait_for_model(addr: std::net::SocketAddr, nodes: usize) {
    wait_for(addr, &model(), nodes).await;
}

/// [`wait_for_model`] for the model `id`.
pub async fn wait_for(addr: std::net::SocketAddr, id: &str, nodes: usize) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let v = http(addr, "GET", "/v1/models", None, &[]).await.json();
        let serving = v["data"]
            .as_array()
            .and_then(|d| d.iter().find(|m| m["id"] == id))
            .and_then(|m| m["tabnode"]["nodes"].as_u64())
            .unwrap_or(0);
        let net = http(addr, "GET", "/api/network", None, &[]).await.json();
        let verified = net["nodes"].as_array().map_or(0, |n| {
            n.iter()
                .filter(|n| n["pof"]["last"]["passed"] == true)
                .count()
        });
        if serving as usize >= nodes && verified >= nodes {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nodes never registered and proved: {v} {net}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
