//! The burn model (CPU backend `flex`) against the f32 reference and
//! llama.cpp's fixtures.

mod common;

use burn::tensor::Device;
use common::{ids, model_bytes};
use serde_json::Value as Json;
use tabnode_infer::generate::{generate, Finish, GenerateOptions, Sampling};
use tabnode_infer::gguf::Gguf;
use tabnode_infer::model::{Cache, LlamaModel};
use tabnode_infer::reference::{argmax, ReferenceModel};
use tabnode_infer::tokenizer::Tokenizer;

#[test]
fn burn_matches_the_reference_and_llama_cpp() {
    let bytes = model_bytes();
    let g = Gguf::parse(&bytes).expect("parse");
    let device = Device::flex();
    let model = LlamaModel::from_gguf(&g, &device).expect("burn model");
    let reference = ReferenceModel::from_gguf(&g).expect("reference");
    let tok = Tokenizer::from_gguf(&g).expect("tokenizer");
    let f: Json =
        serde_json::from_str(include_str!("fixtures/smollm2_model.json")).expect("fixture");

    // Prefill logits against the reference, position by position.
    let (mut agree, mut total) = (0, 0);
    let mut worst = 0f32;
    for case in f["teacher_forced"].as_array().expect("cases") {
        let prompt = ids(&case["ids"]);
        let logits = model.forward(&prompt, &mut Cache::default());
        let [t, vocab] = logits.dims();
        let all = logits.into_data().try_into_vec::<f32>().expect("f32");
        let mut s = reference.session();
        for (i, &tok_id) in prompt.iter().enumerate().take(t) {
            let want = s.step(tok_id);
            let got = &all[i * vocab..(i + 1) * vocab];
            let diff = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            worst = worst.max(diff);
            total += 1;
            let llama_top1 = case["top5"][i][0][0].as_u64().expect("top1") as u32;
            agree += usize::from(argmax(got) == llama_top1);
        }
    }
    println!("burn vs reference: max |Δlogit| {worst}; top-1 vs llama.cpp {agree}/{total}");
    assert!(worst < 1e-2, "burn and the reference disagree by {worst}");
    assert!(agree as f64 >= 0.99 * total as f64, "top-1 {agree}/{total}");

    // Decoding one token at a time through the cache gives the same text as
    // llama.cpp's greedy continuation.
    let tf = &f["teacher_forced"][2];
    let want = ids(&f["greedy"][2]["ids"]);
    let out = generate(
        &mut model.session(),
        &tok,
        &ids(&tf["ids"]),
        &GenerateOptions {
            max_tokens: 16,
            stop: vec![],
            sampling: Sampling::greedy(),
        },
        &|| false,
        &mut |_| {},
    )
    .expect("generate");
    assert_eq!(out.finish, Finish::Length);
    assert_eq!(out.tokens, want[..16]);
}
