//! Shared by the tests that need the real model.

use std::path::PathBuf;

/// The bytes of the default model: `TABNODE_MODEL`, else the file
/// `scripts/setup.sh` downloads into `~/.cache/tabnode/models`.
pub fn model_bytes() -> Vec<u8> {
    let path = match std::env::var_os("TABNODE_MODEL") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(std::env::var_os("HOME").expect("HOME"))
            .join(".cache/tabnode/models/SmolLM2-135M-Instruct.Q4_1.gguf"),
    };
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (scripts/setup.sh downloads the model)",
            path.display()
        )
    })
}

/// A JSON array of token ids from a fixture.
#[allow(dead_code)] // not every test file reads ids
pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("ids")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}
