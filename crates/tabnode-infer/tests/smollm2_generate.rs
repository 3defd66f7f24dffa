//! The generation loop: on the real model (greedy continuations and EOS as
//! llama.cpp produced them) and on a scripted decoder (stop strings,
//! streaming, cancellation, limits).

mod common;

use std::cell::Cell;

use common::{ids, model_bytes};
use serde_json::Value as Json;
use tabnode_infer::generate::{
    generate, Decoder, Finish, GenerateError, GenerateOptions, Sampling,
};
use tabnode_infer::gguf::Gguf;
use tabnode_infer::reference::ReferenceModel;
use tabnode_infer::tokenizer::Tokenizer;

fn greedy(max_tokens: usize, stop: &[&str]) -> GenerateOptions {
    GenerateOptions {
        max_tokens,
        stop: stop.iter().map(|s| s.to_string()).collect(),
        sampling: Sampling::greedy(),
    }
}

#[test]
fn greedy_generation_on_the_model_matches_llama_cpp_and_stops_on_eos() {
    let bytes = model_bytes();
    let g = Gguf::parse(&bytes).expect("parse");
    let tok = Tokenizer::from_gguf(&g).expect("tokenizer");
    let model = ReferenceModel::from_gguf(&g).expect("model");
    let f: Json =
        serde_json::from_str(include_str!("fixtures/smollm2_model.json")).expect("fixture");
    let tf = f["teacher_forced"].as_array().expect("tf");
    let gr = f["greedy"].as_array().expect("greedy");

    // "Once upon a time": 16 tokens, identical to llama.cpp.
    let mut streamed = String::new();
    let out = generate(
        &mut model.session(),
        &tok,
        &ids(&tf[2]["ids"]),
        &greedy(16, &[]),
        &|| false,
        &mut |t| streamed.push_str(t),
    )
    .expect("generate");
    assert_eq!(out.tokens, ids(&gr[2]["ids"])[..16]);
    assert_eq!(out.finish, Finish::Length);
    assert_eq!(streamed, out.text);
    assert_eq!(out.text.as_bytes(), tok.decode(&out.tokens));

    // "What is 2+2?": llama.cpp ends the answer with EOS (<|im_end|>).
    let want = ids(&gr[3]["ids"]);
    let eos_at = want
        .iter()
        .position(|&t| t == tok.eos)
        .expect("reference has EOS");
    let out = generate(
        &mut model.session(),
        &tok,
        &ids(&tf[3]["ids"]),
        &greedy(64, &[]),
        &|| false,
        &mut |_| {},
    )
    .expect("generate");
    assert_eq!(out.finish, Finish::Eos);
    assert_eq!(out.tokens, want[..eos_at]);
    assert!(out.text.contains('4'), "{:?}", out.text);
}

/// A decoder that "predicts" a fixed script, one token per step.
struct Scripted {
    script: Vec<u32>,
    fed: usize,
    prompt: usize,
    vocab: usize,
    context: usize,
}

impl Decoder for Scripted {
    fn context_len(&self) -> usize {
        self.context
    }
    fn step(&mut self, _token: u32) -> Result<Vec<f32>, GenerateError> {
        self.fed += 1;
        let mut l = vec![0.0; self.vocab];
        let i = self.fed.saturating_sub(self.prompt);
        if let Some(&t) = self.script.get(i) {
            l[t as usize] = 10.0;
        }
        Ok(l)
    }
}

fn scripted(tok: &Tokenizer, text: &str, prompt: usize) -> Scripted {
    let mut script = tok.encode(text, false);
    script.push(tok.eos);
    Scripted {
        script,
        fed: 0,
        prompt,
        vocab: tok.vocab_size(),
        context: 8192,
    }
}

#[test]
fn stop_strings_streaming_cancellation_and_limits() {
    let bytes = model_bytes();
    let g = Gguf::parse(&bytes).expect("parse");
    let tok = Tokenizer::from_gguf(&g).expect("tokenizer");
    let prompt = tok.encode("Say:", false);
    let text = "Hello world. Then more text. 東京!";

    // No stop: everything up to EOS, streamed exactly once.
    let mut chunks = Vec::new();
    let out = generate(
        &mut scripted(&tok, text, prompt.len()),
        &tok,
        &prompt,
        &greedy(100, &[]),
        &|| false,
        &mut |t| chunks.push(t.to_string()),
    )
    .expect("generate");
    assert_eq!(out.finish, Finish::Eos);
    assert_eq!(out.text, text);
    assert_eq!(chunks.concat(), text);

    // A stop string spanning tokens: cut before it, never streamed.
    let mut streamed = String::new();
    let out = generate(
        &mut scripted(&tok, text, prompt.len()),
        &tok,
        &prompt,
        &greedy(100, &["d. Th", "never"]),
        &|| false,
        &mut |t| streamed.push_str(t),
    )
    .expect("generate");
    assert_eq!(out.finish, Finish::Stop);
    assert_eq!(out.text, "Hello worl");
    assert_eq!(streamed, "Hello worl");

    // The token limit.
    let out = generate(
        &mut scripted(&tok, text, prompt.len()),
        &tok,
        &prompt,
        &greedy(3, &[]),
        &|| false,
        &mut |_| {},
    )
    .expect("generate");
    assert_eq!((out.finish, out.tokens.len()), (Finish::Length, 3));

    // Cancellation, checked before every token.
    let polls = Cell::new(0);
    let out = generate(
        &mut scripted(&tok, text, prompt.len()),
        &tok,
        &prompt,
        &greedy(100, &[]),
        &|| {
            polls.set(polls.get() + 1);
            polls.get() > 2
        },
        &mut |_| {},
    )
    .expect("generate");
    assert_eq!((out.finish, out.tokens.len()), (Finish::Cancelled, 2));

    // Bad input.
    let mut small = scripted(&tok, text, prompt.len());
    small.context = prompt.len();
    assert_eq!(
        generate(
            &mut small,
            &tok,
            &prompt,
            &greedy(5, &[]),
            &|| false,
            &mut |_| {}
        ),
        Err(GenerateError::PromptTooLong {
            prompt: prompt.len(),
            context: prompt.len()
        })
    );
    assert_eq!(
        generate(
            &mut scripted(&tok, text, 0),
            &tok,
            &[],
            &greedy(5, &[]),
            &|| false,
            &mut |_| {}
        ),
        Err(GenerateError::EmptyPrompt)
    );
}
