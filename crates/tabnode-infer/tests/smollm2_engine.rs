//! The engine's network-facing behaviour on the real model: a generation
//! resumed after any number of delivered tokens continues exactly where the
//! interrupted one was (no token or character lost or repeated), and bad
//! resume tokens are refused before the model runs.

mod common;

use common::model_bytes;
use tabnode_core::infer::{ChatMessage, GenerateRequest, Prompt};
use tabnode_infer::{Device, Engine, EngineError};

fn engine() -> Engine {
    Engine::load(&model_bytes(), &Device::flex(), "flex", &mut |_, _| {}).expect("engine loads")
}

/// Runs `request`, returning the pieces `(tokens, text)` in order.
fn pieces(engine: &Engine, request: &GenerateRequest) -> Vec<(Vec<u32>, String)> {
    let mut out = Vec::new();
    let result = engine
        .generate(request, &|| false, &mut |t, s| {
            out.push((t.to_vec(), s.to_string()))
        })
        .expect("generates");
    let tokens: Vec<u32> = out.iter().flat_map(|(t, _)| t.clone()).collect();
    let text: String = out.iter().map(|(_, s)| s.as_str()).collect();
    assert_eq!(tokens[..], result.tokens[request.resume.len()..]);
    assert!(result.text.ends_with(&text), "{:?} / {text:?}", result.text);
    out
}

/// What a requester saw when the node died after `k` tokens: the pieces
/// carrying the first `k` tokens.
fn delivered(all: &[(Vec<u32>, String)], k: usize) -> (Vec<u32>, String) {
    let mut tokens = Vec::new();
    let mut text = String::new();
    for (t, s) in all {
        if tokens.len() + t.len() > k || t.is_empty() {
            break;
        }
        tokens.extend_from_slice(t);
        text.push_str(s);
    }
    (tokens, text)
}

fn check_resume_everywhere(engine: &Engine, request: GenerateRequest, splits: &[usize]) {
    let full = pieces(engine, &request);
    let full_tokens: Vec<u32> = full.iter().flat_map(|(t, _)| t.clone()).collect();
    let full_text: String = full.iter().map(|(_, s)| s.as_str()).collect();
    assert!(full_tokens.len() >= 8, "too short to split: {full_text:?}");
    for &k in splits {
        let (tokens, text) = delivered(&full, k);
        assert_eq!(tokens.len(), k);
        let mut resumed = request.clone();
        resumed.resume = tokens.clone();
        let rest = pieces(engine, &resumed);
        let rest_tokens: Vec<u32> = rest.iter().flat_map(|(t, _)| t.clone()).collect();
        let rest_text: String = rest.iter().map(|(_, s)| s.as_str()).collect();
        assert_eq!(
            [tokens, rest_tokens].concat(),
            full_tokens,
            "tokens, split at {k}"
        );
        assert_eq!(
            format!("{text}{rest_text}"),
            full_text,
            "text, split at {k}"
        );
    }
}

#[test]
fn resumed_generations_continue_without_loss_or_repetition() {
    let engine = engine();
    let chat = Prompt::Chat(vec![ChatMessage {
        role: "user".into(),
        content: "Name three colours of the rainbow.".into(),
    }]);
    // Greedy.
    let mut r = GenerateRequest::new(chat.clone());
    r.max_tokens = 14;
    check_resume_everywhere(&engine, r.clone(), &[1, 5, 13]);
    // Seeded sampling: the sampler's stream is advanced past the resumed
    // tokens, so the continuation is the one the first node would have drawn.
    let mut s = r.clone();
    s.temperature = 0.9;
    s.top_k = 40;
    s.seed = 7;
    check_resume_everywhere(&engine, s, &[3, 9]);
    // A stop string holds text back; the resumed node must deliver it.
    let mut t = GenerateRequest::new(Prompt::Text("One, two, three, four, five,".into()));
    t.max_tokens = 16;
    t.stop = vec!["ten, eleven".into()];
    check_resume_everywhere(&engine, t, &[2, 7]);
    // Resuming after the last token only flushes the held-back text.
    let mut all = r.clone();
    let full = pieces(&engine, &r);
    all.resume = full.iter().flat_map(|(t, _)| t.clone()).collect();
    let rest = pieces(&engine, &all);
    assert!(rest.iter().all(|(t, _)| t.is_empty()), "{rest:?}");
}

#[test]
fn bad_resume_tokens_are_refused_before_the_model_runs() {
    let engine = engine();
    let mut r = GenerateRequest::new(Prompt::Text("Hello".into()));
    r.resume = vec![1, u32::MAX];
    let err = engine.check(&r).expect_err("out of vocabulary");
    assert!(matches!(err, EngineError::Generate(_)), "{err}");
    assert!(err.to_string().contains("outside the vocabulary"), "{err}");
    r.resume = vec![engine.tokenizer.eos];
    assert!(engine.check(&r).is_err(), "EOS cannot be resumed after");
    r.resume = vec![];
    assert_eq!(engine.check(&r).expect("valid"), 1);
    r.prompt = Prompt::Text(String::new());
    assert!(engine.check(&r).is_err(), "empty prompt");
}
