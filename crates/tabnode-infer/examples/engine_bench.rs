//! Engine benchmark: model load time, prefill and decode tokens/s, peak
//! memory. Prints one JSON line (read by `scripts/bench/engine.py`, which
//! runs llama.cpp on the same file and prints the ratios).
//!
//! `cargo run -p tabnode-infer --example engine_bench -- MODEL.gguf [PROMPT_TOKENS] [DECODE_TOKENS]`

use std::time::Instant;

use tabnode_infer::generate::{Decoder, Sampler, Sampling};
use tabnode_infer::model::WeightFormat;
use tabnode_infer::{Device, Engine};

/// The prompt is this text repeated until it has enough tokens.
const TEXT: &str = "The quick brown fox jumps over the lazy dog. Machine learning models are trained on large amounts of text, and they learn to predict the next word in a sentence. ";

/// Peak resident memory of this process (Linux), in bytes.
fn peak_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let path = args
        .get(1)
        .ok_or("usage: engine_bench MODEL.gguf [PROMPT_TOKENS] [DECODE_TOKENS]")?;
    let n_prompt: usize = args.get(2).map_or(Ok(128), |s| s.parse())?;
    let n_decode: usize = args.get(3).map_or(Ok(128), |s| s.parse())?;
    let t0 = Instant::now();
    let bytes = std::fs::read(path)?;
    let file_bytes = bytes.len() as u64;
    // TABNODE_WEIGHTS=q8: burn's block-32 Q8 weights instead of f32.
    let format = match std::env::var("TABNODE_WEIGHTS").as_deref() {
        Ok("q8") => WeightFormat::Q8Block32,
        _ => WeightFormat::F32,
    };
    let engine = Engine::load_as(&bytes, &Device::flex(), "flex", format, &mut |_, _| {})?;
    drop(bytes);
    let load_s = t0.elapsed().as_secs_f64();
    let mut prompt = Vec::new();
    while prompt.len() < n_prompt {
        prompt.extend(engine.tokenizer.encode(TEXT, false));
    }
    prompt.truncate(n_prompt);
    let mut session = engine.model.session();
    // Warm-up: one token through a throw-away session.
    engine.model.session().prefill(&prompt[..1])?;
    let t1 = Instant::now();
    let mut logits = session.prefill(&prompt)?;
    let prefill_s = t1.elapsed().as_secs_f64();
    let mut sampler = Sampler::new(Sampling::greedy())?;
    let t2 = Instant::now();
    for _ in 0..n_decode {
        let next = sampler.sample(&logits);
        logits = session.step(next)?;
    }
    let decode_s = t2.elapsed().as_secs_f64();
    println!(
        "{{\"engine\":\"tabnode-flex-{format:?}\",\"prompt_tokens\":{n_prompt},\"decode_tokens\":{n_decode},\"load_s\":{load_s:.3},\"prefill_tps\":{:.2},\"decode_tps\":{:.2},\"peak_rss\":{},\"file_bytes\":{file_bytes},\"threads\":{}}}",
        n_prompt as f64 / prefill_s,
        n_decode as f64 / decode_s,
        peak_rss(),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    );
    Ok(())
}
