//! The f32 reference forward pass against llama.cpp on the same GGUF
//! (scripts/fixtures/llama_reference.py --model): teacher-forced top-1
//! agreement and greedy continuations.

mod common;

use common::{ids, model_bytes};
use serde_json::Value as Json;
use tabnode_infer::gguf::Gguf;
use tabnode_infer::reference::{argmax, ReferenceModel};

#[test]
fn teacher_forced_top1_and_greedy_match_llama_cpp() {
    let bytes = model_bytes();
    let g = Gguf::parse(&bytes).expect("parse");
    let model = ReferenceModel::from_gguf(&g).expect("model");
    let f: Json =
        serde_json::from_str(include_str!("fixtures/smollm2_model.json")).expect("fixture");

    let (mut agree, mut total) = (0usize, 0usize);
    for case in f["teacher_forced"].as_array().expect("cases") {
        let prompt = ids(&case["ids"]);
        let mut s = model.session();
        for (i, &t) in prompt.iter().enumerate() {
            let logits = s.step(t);
            let want = case["top5"][i][0][0].as_u64().expect("top1") as u32;
            total += 1;
            agree += usize::from(argmax(&logits) == want);
        }
    }
    let rate = agree as f64 / total as f64;
    println!("teacher-forced top-1 agreement: {agree}/{total} = {rate:.3}");
    assert!(rate >= 0.99, "top-1 agreement {agree}/{total}");

    let mut exact16 = 0;
    let cases = f["greedy"].as_array().expect("greedy");
    for (case, tf) in cases
        .iter()
        .zip(f["teacher_forced"].as_array().expect("tf"))
    {
        let want = ids(&case["ids"]);
        let mut s = model.session();
        let mut logits = Vec::new();
        for &t in &ids(&tf["ids"]) {
            logits = s.step(t);
        }
        let mut got = Vec::new();
        for _ in 0..16 {
            let next = argmax(&logits);
            got.push(next);
            logits = s.step(next);
        }
        println!("greedy: got {got:?}\n      want {:?}", &want[..16]);
        exact16 += usize::from(got[..] == want[..16]);
    }
    assert!(
        exact16 * 2 > cases.len(),
        "greedy first 16 tokens identical on {exact16}/{}",
        cases.len()
    );
}
