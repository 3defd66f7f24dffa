//! The GPU engine against the CPU engine, same file, same run: decode and
//! prefill tokens per second of each kernel variant on the first wgpu
//! adapter (Vulkan natively: lavapipe where there is no GPU), the CPU
//! engine's on the same tokens, dispatches per token, GPU memory. Prints
//! one JSON line.
//!
//! `cargo run -p tabnode-infer --features gpu --example gpu_bench -- MODEL.gguf [TOKENS]`

use std::time::Instant;

use futures::executor::block_on;
use tabnode_infer::cpu::CpuModel;
use tabnode_infer::gpu::{self, Gpu, GpuModel, Variant};
use tabnode_infer::reference::argmax;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let path = args.get(1).ok_or("usage: gpu_bench MODEL.gguf [TOKENS]")?;
    let tokens: usize = args.get(2).map_or(Ok(32), |s| s.parse())?;
    let bytes = std::fs::read(path)?;
    let adapter = block_on(gpu::adapter(wgpu::Backends::all()))?;
    let info = adapter.get_info();
    let mut out = serde_json::json!({
        "adapter": format!("{} ({:?})", info.name, info.backend),
        "tokens": tokens,
        "file_bytes": bytes.len(),
    });
    // Greedy from token 1, the token picked on the device as a greedy
    // generation does; then the decoded tokens fed again as a prompt
    // (prefill). Every engine runs the same tokens.
    let mut seq = Vec::new();
    for variant in Variant::ALL {
        let t0 = Instant::now();
        let model = GpuModel::load(block_on(Gpu::new(&adapter))?, &bytes, tokens + 1, variant)?;
        let load = t0.elapsed().as_secs_f64();
        let mut m = model.session()?;
        // The first step compiles nothing (pipelines are made at load) but
        // warms the caches: timed apart.
        let t1 = Instant::now();
        let mut t = block_on(m.step_greedy(1))?;
        let first = t1.elapsed().as_secs_f64();
        let mut decoded = vec![1];
        let t2 = Instant::now();
        for _ in 1..tokens {
            decoded.push(t);
            t = block_on(m.step_greedy(t))?;
        }
        let tps = (tokens - 1) as f64 / t2.elapsed().as_secs_f64();
        drop(m);
        let mut m = model.session()?;
        let t3 = Instant::now();
        block_on(m.prefill_greedy(&decoded))?;
        let prefill = decoded.len() as f64 / t3.elapsed().as_secs_f64();
        seq = decoded;
        out[variant.name()] = serde_json::json!({
            "load_s": load,
            "first_token_s": first,
            "decode_tps": tps,
            "prefill_tps": prefill,
            "dispatches_per_token": model.dispatches_per_token(),
            "weight_bytes": model.weight_bytes(),
            "cache_bytes": model.cache_bytes(),
        });
    }
    let cpu = CpuModel::from_bytes(bytes)?;
    let mut s = cpu.session();
    let mut t = argmax(&s.step(1)?);
    let t2 = Instant::now();
    for _ in 1..tokens {
        t = argmax(&s.step(t)?);
    }
    out["cpu_decode_tps"] = ((tokens - 1) as f64 / t2.elapsed().as_secs_f64()).into();
    let mut s = cpu.session();
    let t3 = Instant::now();
    s.prefill(&seq)?;
    out["cpu_prefill_tps"] = (seq.len() as f64 / t3.elapsed().as_secs_f64()).into();
    println!("{out}");
    Ok(())
}
