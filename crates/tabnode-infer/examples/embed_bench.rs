//! Embedding benchmark: all-MiniLM-L6-v2 on the CPU encoder
//! ([`tabnode_infer::bert`]) over a list of texts, all cores; prints one
//! JSON line (read by `scripts/bench/embed.py`, which runs
//! sentence-transformers on the same texts and cores and prints the ratio).
//!
//! `cargo run -p tabnode-infer --example embed_bench -- MODEL_DIR TEXTS.json [ROUNDS]`

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
