//! The cost of a spot check (issue #16): the serving node's time for a
//! request (prefill and decode) against a checker's time to score the
//! completion in one teacher-forced pass ([`Engine::score`]), on the same
//! quantized CPU engine and the same request, as time per token and as the
//! share of serving that checking a fraction `rate` of requests costs.
//!
//! `cargo run -p tabnode-infer --example check_bench -- MODEL.gguf [PROMPT_TOKENS] [DECODE_TOKENS] [ROUNDS]`

use std::time::Instant;

use tabnode_core::check::{judge, CheckPolicy, Verdict};
use tabnode_core::infer::{GenerateRequest, Prompt};
use tabnode_infer::Engine;

/// The prompt is this text repeated until it has enough tokens.
const TEXT: &str = "The quick brown fox jumps over the lazy dog. Machine learning models are trained on large amounts of text, and they learn to predict the next word in a sentence. ";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let path = args
        .get(1)
        .ok_or("usage: check_bench MODEL.gguf [PROMPT_TOKENS] [DECODE_TOKENS] [ROUNDS]")?;
    let n_prompt: usize = args.get(2).map_or(Ok(128), |s| s.parse())?;
    let n_decode: u32 = args.get(3).map_or(Ok(128), |s| s.parse())?;
    let rounds: usize = args.get(4).map_or(Ok(3), |s| s.parse())?;
    let engine = Engine::load_quantized(std::fs::read(path)?)?;
    let mut text = String::new();
    while engine.tokenizer.encode(&text, false).len() < n_prompt {
        text.push_str(TEXT);
    }
    let mut request = GenerateRequest::new(Prompt::Text(text));
    request.max_tokens = n_decode;
    // Completion to the last token: no early end-of-text.
    request.stop.clear();
    let (mut serve_ms, mut score_ms, mut tokens) = (f64::MAX, f64::MAX, 0);
    for _ in 0..rounds.max(1) {
        let t = Instant::now();
        let out = engine.generate(&request, &|| false, &mut |_, _| {})?;
        serve_ms = serve_ms.min(t.elapsed().as_secs_f64() * 1e3);
        tokens = out.tokens.len();
        let t = Instant::now();
        let scores = engine.score(&request, &out.tokens)?;
        score_ms = score_ms.min(t.elapsed().as_secs_f64() * 1e3);
        if judge(&request, &out.tokens, &scores, &CheckPolicy::default()) != Verdict::Pass {
            return Err("the engine's own completion failed its check".into());
        }
    }
    let prompt = engine.prompt_ids(&request.prompt)?.len();
    let ratio = score_ms / serve_ms;
    println!(
        "{}: {prompt} prompt + {tokens} completion tokens, best of {rounds}: serving {serve_ms:.0} ms ({:.2} ms/token), checking {score_ms:.0} ms ({:.2} ms/checked token); a check costs {ratio:.3} of serving; at the default rate 0.03: {:.4} of serving, at the new-node rate 0.25: {:.3}",
        engine.info.name,
        serve_ms / tokens.max(1) as f64,
        score_ms / tokens.max(1) as f64,
        0.03 * ratio,
        0.25 * ratio,
    );
    Ok(())
}
