//! The embedding model the node tests serve and compare against:
//! all-MiniLM-L6-v2 from the models directory (`scripts/setup.sh` fetches
//! it), loaded once per test binary, and a native node serving it.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tabnode_core::{Capabilities, NodeKind};
use tabnode_node::embed::Embedder;
use tabnode_node::{spawn, NodeConfig, NodeHandle};

/// Its catalog id.
pub const ID: &str = "all-minilm-l6-v2";

/// The model, shared by the test binary's nodes and checks.
pub fn embedder() -> Arc<Embedder> {
    static E: OnceLock<Arc<Embedder>> = OnceLock::new();
    E.get_or_init(|| {
        let dir = match std::env::var_os("TABNODE_MODELS_DIR") {
            Some(p) => PathBuf::from(p),
            None => {
                PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/tabnode/models")
            }
        };
        Arc::new(
            tabnode_node::embed::load(&dir.join(ID))
                .expect("scripts/fetch-model.py all-minilm-l6-v2"),
        )
    })
    .clone()
}

/// A native node at `relay` serving [`embedder`] (and proving on the CPU).
pub fn embedding_node(relay: libp2p::Multiaddr, name: &str) -> NodeHandle {
    spawn(NodeConfig {
        relay,
        key: None,
        capabilities: Capabilities::new(NodeKind::Native, name),
        max_backoff: Duration::from_millis(500),
        handler: Arc::new(tabnode_node::prover::PofProver::new(
            tabnode_node::prover::Backend::Cpu,
        )),
        server: None,
        embedder: Some(embedder()),
    })
    .expect("node starts")
}
