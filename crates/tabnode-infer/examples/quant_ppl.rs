//! Perplexity and teacher-forced top-1 agreement of the engine's weight
//! formats against llama.cpp's fixtures (same GGUF, same text).
//!
//! `cargo run -p tabnode-infer --example quant_ppl -- MODEL.gguf`

use burn::tensor::activation::log_softmax;
use tabnode_infer::gguf::Gguf;
use tabnode_infer::model::{Cache, LlamaModel, WeightFormat};
use tabnode_infer::Device;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .ok_or("usage: quant_ppl MODEL.gguf")?;
    let bytes = std::fs::read(path)?;
    let g = Gguf::parse(&bytes)?;
    let f: serde_json::Value =
        serde_json::from_str(include_str!("../tests/fixtures/smollm2_model.json"))?;
    let ids: Vec<u32> = f["perplexity"]["ids"]
        .as_array()
        .ok_or("fixture")?
        .iter()
        .filter_map(|v| v.as_u64().map(|x| x as u32))
        .collect();
    let llama_ppl = f["perplexity"]["ppl"].as_f64().ok_or("fixture")?;
    println!(
        "llama.cpp perplexity (Q4_1 weights, its own kernels): {llama_ppl:.3} over {} tokens",
        ids.len()
    );
    for format in [WeightFormat::F32, WeightFormat::Q8Block32] {
        let model = LlamaModel::from_gguf_as(&g, &Device::flex(), format, &mut |_, _| {})?;
        let logits = model.forward(&ids, &mut Cache::default());
        let [t, vocab] = logits.dims();
        let lp = log_softmax(logits, 1)
            .into_data()
            .try_to_vec::<f32>()
            .map_err(|e| format!("{e:?}"))?;
        let nll: f64 = (0..t - 1)
            .map(|i| -f64::from(lp[i * vocab + ids[i + 1] as usize]))
            .sum::<f64>()
            / (t - 1) as f64;
        // Top-1 agreement with llama.cpp on the teacher-forced prompts.
        let (mut agree, mut total) = (0, 0);
        for case in f["teacher_forced"].as_array().ok_or("fixture")? {
            let p: Vec<u32> = case["ids"]
                .as_array()
                .ok_or("fixture")?
                .iter()
                .filter_map(|v| v.as_u64().map(|x| x as u32))
                .collect();
            let l = model.forward(&p, &mut Cache::default());
            let top1 = l
                .argmax(1)
                .into_data()
                .try_to_vec::<i32>()
                .map_err(|e| format!("{e:?}"))?;
            for (i, got) in top1.iter().enumerate() {
                total += 1;
                agree += usize::from(case["top5"][i][0][0].as_i64() == Some(i64::from(*got)));
            }
        }
        println!(
            "{format:?}: perplexity {:.3} (ratio to llama.cpp {:.4}); teacher-forced top-1 vs llama.cpp {agree}/{total}",
            nll.exp(),
            nll.exp() / llama_ppl
        );
    }
    Ok(())
}
