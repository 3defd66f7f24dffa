//! The relay's catalog says how much memory each model needs per backend
//! (a KV cache of 2,048 positions); a tab chooses its model by it. Here the
//! figures are checked against what the engines hold for every catalog
//! model in the models directory: the CPU engine's file plus KV cache at
//! most the catalog's `cpu`, the GPU engine's weights plus KV cache (on
//! lavapipe) at most its `webgpu` and within a fifth of it.

use std::path::PathBuf;

use futures::executor::block_on;
use tabnode_infer::cpu::CpuModel;
use tabnode_infer::gpu::{self, Gpu, GpuModel, Variant, POSITIONS};

fn models_dir() -> PathBuf {
    match std::env::var_os("TABNODE_MODELS_DIR") {
        Some(p) => PathBuf::from(p),
        None => {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/tabnode/models")
        }
    }
}

#[test]
fn the_catalog_memory_covers_what_the_engines_hold() {
    let catalog: serde_json::Value =
        serde_json::from_str(include_str!("../../tabnode-relay/catalog.json")).expect("catalog");
    let adapter = block_on(gpu::adapter(wgpu::Backends::VULKAN)).expect("a Vulkan adapter");
    let mut checked = Vec::new();
    for m in catalog["models"].as_array().expect("models") {
        let id = m["id"].as_str().expect("id");
        let path = models_dir().join(m["file"].as_str().expect("file"));
        let Ok(bytes) = std::fs::read(&path) else {
            // The 1.5B is fetched by the bench command only.
            continue;
        };
        let (cpu, webgpu) = (
            m["memory"]["cpu"].as_u64().expect("cpu"),
            m["memory"]["webgpu"].as_u64().expect("webgpu"),
        );
        let model = CpuModel::from_bytes(bytes.clone()).expect("cpu model");
        let c = &model.config;
        let kv = (c.layers * 2 * c.kv_dim() * 4 * POSITIONS) as u64;
        let held = bytes.len() as u64 + kv;
        assert!(
            held <= cpu,
            "{id}: the CPU engine holds {held} bytes, the catalog says {cpu}"
        );
        drop(model);
        let gpu = block_on(Gpu::new(&adapter)).expect("device");
        let model = GpuModel::load(gpu, &bytes, POSITIONS, Variant::Rows).expect("gpu model");
        let on_device = model.weight_bytes() + model.cache_bytes();
        assert!(
            on_device <= webgpu && on_device * 5 >= webgpu * 4,
            "{id}: the GPU engine holds {on_device} bytes, the catalog says {webgpu}"
        );
        println!("{id}: cpu {held} of {cpu}, webgpu {on_device} of {webgpu}");
        checked.push(id.to_owned());
    }
    // What set-up fetches is always here.
    for id in [
        "smollm2-135m-instruct",
        "qwen2.5-coder-0.5b-instruct",
        "gemma-3-270m",
    ] {
        assert!(
            checked.iter().any(|c| c == id),
            "{id} not checked: {checked:?}"
        );
    }
}
