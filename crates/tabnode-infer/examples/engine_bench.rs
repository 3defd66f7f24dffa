//! Engine benchmark: model load time, prefill and decode tokens/s, peak
//! memory, and what drawing a sampled token costs (`sample_ms`: the
//! sampler at temperature 1 on each decode step's logits, outside the
//! decode time; `sort_ms`: the same draw by sorting the whole vocabulary,
//! what the sampler did before [`tabnode_infer::sample`]; and for the CPU
//! engine `outside_matmul_ms`: a decoded token's time less its matrix
//! products', in a decode of its own before the timed one). Prints one JSON line (read by `scripts/bench/engine.py`, which
//! runs llama.cpp on the same file and prints the ratios).
//!
//! `cargo run -p tabnode-infer --example engine_bench -- MODEL.gguf [PROMPT_TOKENS] [DECODE_TOKENS]`
//!
//! `TABNODE_WEIGHTS` picks the engine: unset or `quant` (the default engine:
//! the CPU model with the file's quantized blocks and integer kernels,
//! [`tabnode_infer::cpu`]), `f32` (burn, weights expanded to f32), `q8`
//! (burn's block-32 Q8).

use std::time::Instant;

use tabnode_infer::engine::Runner;
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
    let tokenizer =
        tabnode_infer::tokenizer::Tokenizer::from_gguf(&tabnode_infer::gguf::Gguf::parse(&bytes)?)?;
    let mut prompt = Vec::new();
    while prompt.len() < n_prompt {
        prompt.extend(tokenizer.encode(TEXT, false));
    }
    prompt.truncate(n_prompt);
    let burn_format = match std::env::var("TABNODE_WEIGHTS").as_deref() {
        Ok("f32") => Some(WeightFormat::F32),
        Ok("q8") => Some(WeightFormat::Q8Block32),
        Ok("quant") | Err(_) => None,
        Ok(other) => {
            return Err(format!("TABNODE_WEIGHTS={other}: expected quant, f32 or q8").into())
        }
    };
    let (engine, label) = match burn_format {
        // The file's bytes become the model's: no copy, no expansion.
        None => (Engine::load_quantized(bytes)?, String::new()),
        Some(format) => {
            let engine = Engine::load_as(&bytes, &Device::flex(), "flex", format, &mut |_, _| {})?;
            drop(bytes);
            (engine, format!("tabnode-flex-{format:?}"))
        }
    };
    let load_s = t0.elapsed().as_secs_f64();
    let mut outside_ms = None;
    let (label, threads, run) = match &engine.runner {
        Runner::Cpu(model) => {
            // The engine's own work per decoded token: a decode's time less
            // its matrix products'.
            let mut s = model.session();
            let mut logits = s.prefill(&prompt)?;
            let before = s.matmul_time();
            let t = Instant::now();
            for _ in 0..n_decode {
                logits = s.step(tabnode_infer::reference::argmax(&logits))?;
            }
            let products = (s.matmul_time() - before).as_secs_f64();
            outside_ms =
                Some((t.elapsed().as_secs_f64() - products) * 1e3 / n_decode.max(1) as f64);
            (
                format!("tabnode-{}", engine.device()),
                rayon::current_num_threads(),
                measure(|| model.session(), &prompt, n_decode)?,
            )
        }
        Runner::Burn(model) => (
            label,
            std::thread::available_parallelism().map_or(1, |n| n.get()),
            measure(|| model.session(), &prompt, n_decode)?,
        ),
        // Not loaded here: `examples/gpu_bench.rs` times the GPU engine.
        #[cfg(feature = "gpu")]
        Runner::Gpu(_) => return Err("engine_bench loads no GPU engine".into()),
    };
    let timings = (load_s, run);
    let (load_s, (prefill_s, decode_s, sample_s, sort_s)) = timings;
    println!(
        "{{\"engine\":\"{label}\",\"prompt_tokens\":{n_prompt},\"decode_tokens\":{n_decode},\"load_s\":{load_s:.3},\"prefill_tps\":{:.2},\"decode_tps\":{:.2},\"peak_rss\":{},\"file_bytes\":{file_bytes},\"threads\":{threads},\"sample_ms\":{:.3},\"sort_ms\":{:.3},\"outside_matmul_ms\":{}}}",
        n_prompt as f64 / prefill_s,
        n_decode as f64 / decode_s,
        peak_rss(),
        sample_s * 1e3,
        sort_s * 1e3,
        outside_ms.map_or("null".to_owned(), |ms| format!("{ms:.3}")),
    );
    Ok(())
}

/// Seconds to prefill `prompt` and then to decode `n_decode` greedy tokens,
/// after a one-token warm-up through a throw-away session.
fn measure<D: Decoder>(
    session: impl Fn() -> D,
    prompt: &[u32],
    n_decode: usize,
) -> Result<(f64, f64, f64, f64), Box<dyn std::error::Error>> {
    session().prefill(&prompt[..1])?;
    let mut s = session();
    let t1 = Instant::now();
    let mut logits = s.prefill(prompt)?;
    let prefill_s = t1.elapsed().as_secs_f64();
    let mut sampler = Sampler::new(Sampling::greedy())?;
    let mut drawer = Sampler::new(Sampling {
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
        seed: 1,
    })?;
    let t2 = Instant::now();
    for _ in 0..n_decode {
        let next = sampler.sample(&logits);
        logits = s.step(next)?;
    }
    let decode_s = t2.elapsed().as_secs_f64();
    // Sampling apart from the timed decode (its sorting would evict what
    // the decode keeps in cache): DRAWS more steps, each one's logits drawn
    // from both ways; per draw.
    const DRAWS: usize = 32;
    let (mut sample_s, mut sort_s) = (0.0, 0.0);
    let mut drawn = 0u64;
    for _ in 0..DRAWS {
        let t = Instant::now();
        drawn += u64::from(drawer.sample(&logits));
        sample_s += t.elapsed().as_secs_f64();
        let t = Instant::now();
        drawn += u64::from(sort_draw(&logits, 0.5));
        sort_s += t.elapsed().as_secs_f64();
        logits = s.step(sampler.sample(&logits))?;
    }
    std::hint::black_box(drawn);
    let (sample_s, sort_s) = (sample_s / DRAWS as f64, sort_s / DRAWS as f64);
    Ok((prefill_s, decode_s, sample_s, sort_s))
}

/// The draw `r` at temperature 1 by sorting every logit (the reference
/// `sample_ms` is compared with).
fn sort_draw(logits: &[f32], r: f32) -> u32 {
    let mut cand: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .filter(|(_, l)| l.is_finite())
        .map(|(i, &l)| (i as u32, l))
        .collect();
    cand.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let max = cand.first().map_or(0.0, |c| c.1);
    let total: f32 = cand.iter().map(|c| libm::expf(c.1 - max)).sum();
    let mut acc = 0.0;
    for c in &cand {
        acc += libm::expf(c.1 - max) / total;
        if r < acc {
            return c.0;
        }
    }
    cand.last().map_or(0, |c| c.0)
}
