//! Shared by the tests that need the real model.

use std::path::PathBuf;

/// The bytes of the default model: `TABNODE_MODEL`, else the file
/// `scripts/setup.sh` downloads into `~/.cache/tabnode/models`.
#[allow(dead_code)] // not every test file reads it
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

/// The bytes of Qwen2.5-Coder-0.5B-Instruct, which `scripts/setup.sh
/// --test` fetches into `TABNODE_MODELS_DIR` (`~/.cache/tabnode/models`).
#[allow(dead_code)] // not every test file reads it
pub fn qwen_bytes() -> Vec<u8> {
    let dir = match std::env::var_os("TABNODE_MODELS_DIR") {
        Some(p) => PathBuf::from(p),
        None => {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/tabnode/models")
        }
    };
    let path = dir.join("Qwen2.5-Coder-0.5B-Instruct.gguf");
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (scripts/setup.sh --test fetches it: scripts/fetch-model.py qwen2.5-coder-0.5b-instruct-awq)",
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
