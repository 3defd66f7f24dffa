//! Embedding benchmark: all-MiniLM-L6-v2 on the CPU encoder
//! ([`tabnode_infer::bert`]) over a list of texts, all cores; prints one
//! JSON line (read by `scripts/bench/embed.py`, which runs
//! sentence-transformers on the same texts and cores and prints the ratio).
//! With `gpu` after the rounds, the GPU encoder ([`tabnode_infer::gpu::GpuBert`],
//! on the Vulkan adapter `VK_ICD_FILENAMES` names, or the first) on the
//! same texts, its rate and its ratio to the CPU's in the same line.
//!
//! `cargo run -p tabnode-infer --features gpu --example embed_bench -- MODEL_DIR TEXTS.json [ROUNDS] [gpu]`

use std::sync::Arc;
use std::time::Instant;

use tabnode_infer::bert::BertModel;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(dir), Some(texts)) = (args.get(1), args.get(2)) else {
        return Err("usage: embed_bench MODEL_DIR TEXTS.json [ROUNDS]".into());
    };
    let rounds: usize = args.get(3).map_or(Ok(3), |r| r.parse())?;
    let dir = std::path::Path::new(dir);
    let t0 = Instant::now();
    let model = BertModel::from_files(
        &std::fs::read(dir.join("config.json"))?,
        &std::fs::read(dir.join("model.safetensors"))?,
        &std::fs::read(dir.join("tokenizer.json"))?,
        256,
    )?;
    let load_s = t0.elapsed().as_secs_f64();
    let texts: Vec<String> = serde_json::from_slice(&std::fs::read(texts)?)?;
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let tokens: usize = texts.iter().map(|t| model.tokenize(t).ids.len()).sum();
    // One warm-up round, then the best of `rounds`.
    model.embed(&texts)?;
    let mut best = f64::INFINITY;
    for _ in 0..rounds {
        let t = Instant::now();
        model.embed(&texts)?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    if args.get(4).is_some_and(|a| a == "gpu") {
        return gpu(Arc::new(model), &texts, rounds, best);
    }
    println!(
        "{}",
        serde_json::json!({
            "engine": "tabnode (bert, f32, CPU)",
            "load_s": load_s,
            "texts": texts.len(),
            "tokens": tokens,
            "texts_per_s": texts.len() as f64 / best,
            "tokens_per_s": tokens as f64 / best,
            "threads": std::thread::available_parallelism().map_or(1, |n| n.get()),
        })
    );
    Ok(())
}

/// The GPU encoder on the same texts: the best of `rounds` after a warm-up,
/// against the CPU's best (`cpu_s`).
fn gpu(
    model: Arc<BertModel>,
    texts: &[&str],
    rounds: usize,
    cpu_s: f64,
) -> Result<(), Box<dyn std::error::Error>> {
    use futures::executor::block_on;
    use tabnode_infer::gpu::{self, Gpu, GpuBert};
    let adapter = block_on(gpu::adapter(wgpu::Backends::VULKAN))?;
    let info = adapter.get_info();
    let t0 = Instant::now();
    let enc = GpuBert::new(block_on(Gpu::new(&adapter))?, Arc::clone(&model))?;
    let ids: Vec<Vec<u32>> = texts.iter().map(|t| model.tokenize(t).ids).collect();
    let ids: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
    block_on(enc.embed(&ids))?;
    let first_s = t0.elapsed().as_secs_f64();
    let mut best = f64::INFINITY;
    for _ in 0..rounds {
        let t = Instant::now();
        block_on(enc.embed(&ids))?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    let tokens: usize = ids.iter().map(|i| i.len()).sum();
    println!(
        "{}",
        serde_json::json!({
            "engine": "tabnode (bert, f32, GPU: WGSL)",
            "adapter": format!("{} ({:?})", info.name, info.device_type),
            "texts": texts.len(),
            "tokens": tokens,
            "upload_and_first_batch_s": first_s,
            "gpu_texts_per_s": texts.len() as f64 / best,
            "gpu_tokens_per_s": tokens as f64 / best,
            "cpu_texts_per_s": texts.len() as f64 / cpu_s,
            "cpu_threads": std::thread::available_parallelism().map_or(1, |n| n.get()),
            "ratio_gpu_to_cpu": cpu_s / best,
        })
    );
    Ok(())
}
