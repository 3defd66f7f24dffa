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

/// The bytes of `file` in `TABNODE_MODELS_DIR` (`~/.cache/tabnode/models`),
/// which `scripts/setup.sh --test` fills with the catalog's `id`.
fn models_dir_bytes(file: &str, id: &str) -> Vec<u8> {
    let dir = match std::env::var_os("TABNODE_MODELS_DIR") {
        Some(p) => PathBuf::from(p),
        None => {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/tabnode/models")
        }
    };
    let path = dir.join(file);
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (scripts/setup.sh --test fetches it: scripts/fetch-model.py {id})",
            path.display()
        )
    })
}

/// The bytes of Qwen2.5-Coder-0.5B-Instruct.
#[allow(dead_code)] // not every test file reads it
pub fn qwen_bytes() -> Vec<u8> {
    models_dir_bytes(
        "Qwen2.5-Coder-0.5B-Instruct.gguf",
        "qwen2.5-coder-0.5b-instruct",
    )
}

/// all-MiniLM-L6-v2's `config.json`, `model.safetensors` and
/// `tokenizer.json`.
#[allow(dead_code)] // not every test file reads it
pub fn minilm_files() -> [Vec<u8>; 3] {
    ["config.json", "model.safetensors", "tokenizer.json"]
        .map(|f| models_dir_bytes(&format!("all-minilm-l6-v2/{f}"), "all-minilm-l6-v2"))
}

/// The bytes of Gemma 3 270M (base).
#[allow(dead_code)] // not every test file reads it
pub fn gemma_bytes() -> Vec<u8> {
    models_dir_bytes("gemma-3-270m-q4_k_m.gguf", "gemma-3-270m")
}

/// Steps the quantized `model` and the f32 `reference` through `prompt`:
/// at every position the logits stay within a tenth of their spread, and
/// the quantized top-1 is at most `near_tie` below the reference's.
#[allow(dead_code)] // not every test file compares with the reference
pub fn stays_close_to_the_reference(
    model: &tabnode_infer::cpu::CpuModel,
    reference: &tabnode_infer::reference::ReferenceModel,
    prompt: &[u32],
    near_tie: f32,
) {
    use tabnode_infer::reference::argmax;
    let (mut a, mut b) = (model.session(), reference.session());
    for &id in prompt {
        let got = a.step(id).expect("step");
        let want = b.step(id);
        let rel = relative_diff(&got, &want);
        assert!(rel < 0.1, "relative difference {rel}");
        let short = want[argmax(&want) as usize] - want[argmax(&got) as usize];
        assert!(
            short < near_tie,
            "top-1 {} is {short} below the reference's",
            argmax(&got)
        );
    }
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

/// Teacher-forced against llama.cpp's fixture: how often the quantized
/// model's top-1 equals llama.cpp's, and the largest logit difference on
/// llama.cpp's top-5 ids.
#[allow(dead_code)] // not every test file runs the CPU model
pub struct TeacherForced {
    pub agree: usize,
    pub total: usize,
    pub worst: f64,
}

/// Feeds each `teacher_forced` case of `fixture` token by token; a top-1
/// miss fails at once unless llama.cpp's own top two are closer than
/// `near_tie`.
#[allow(dead_code)] // not every test file runs the CPU model
pub fn teacher_forced(
    model: &tabnode_infer::cpu::CpuModel,
    fixture: &serde_json::Value,
    near_tie: f32,
) -> TeacherForced {
    use tabnode_infer::reference::argmax;
    let mut r = TeacherForced {
        agree: 0,
        total: 0,
        worst: 0.0,
    };
    for case in fixture["teacher_forced"].as_array().expect("cases") {
        let mut s = model.session();
        for (i, &id) in ids(&case["ids"]).iter().enumerate() {
            let logits = s.step(id).expect("step");
            let top5 = case["top5"][i].as_array().expect("top5");
            let logit = |k: usize| top5[k][1].as_f64().expect("logit") as f32;
            let llama_top1 = top5[0][0].as_u64().expect("id") as u32;
            if argmax(&logits) == llama_top1 {
                r.agree += 1;
            } else {
                assert!(
                    logit(0) - logit(1) < near_tie,
                    "{:?} position {i}: top-1 {} where llama.cpp is sure of {llama_top1}",
                    case["prompt"],
                    argmax(&logits)
                );
            }
            r.total += 1;
            for pair in top5 {
                let id = pair[0].as_u64().expect("id") as usize;
                let want = pair[1].as_f64().expect("logit");
                r.worst = r.worst.max((f64::from(logits[id]) - want).abs());
            }
        }
    }
    r
}

/// The largest difference between two logit vectors, relative to the
/// spread (largest magnitude) of `want`.
#[allow(dead_code)] // not every test file compares logits
pub fn relative_diff(got: &[f32], want: &[f32]) -> f32 {
    let spread = want.iter().copied().fold(0f32, |m, v| m.max(v.abs()));
    let diff = got
        .iter()
        .zip(want)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    diff / spread
}

/// A device on the first Vulkan adapter (Mesa lavapipe here and on CI).
#[allow(dead_code)] // not every test file uses the GPU
pub fn gpu() -> tabnode_infer::gpu::Gpu {
    use futures::executor::block_on;
    let adapter = block_on(tabnode_infer::gpu::adapter(wgpu::Backends::VULKAN))
        .expect("a Vulkan adapter (install mesa-vulkan-drivers: scripts/setup.sh --test)");
    block_on(tabnode_infer::gpu::Gpu::new(&adapter)).expect("device")
}
