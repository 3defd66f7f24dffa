//! The embedding model the node tests serve and compare against:
//! all-MiniLM-L6-v2 from the models directory (`scripts/setup.sh` fetches
//! it), loaded once per test binary.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use tabnode_node::embed::Embedder;

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
