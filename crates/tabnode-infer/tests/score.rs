//! Spot-check scoring (issue #16) on the real model: the quantized CPU
//! engine reads a completion in one teacher-forced pass; an honest greedy
//! completion of the same engine scores every token as the first choice
//! (margin exactly 0, the same bits as decoding), a sampled one stays
//! plausible, and tampered tokens fail the judgement where they start.

mod common;

use common::model_bytes;
use tabnode_core::check::{judge, CheckPolicy, Verdict};
use tabnode_core::infer::{ChatMessage, GenerateRequest, Prompt};
use tabnode_infer::Engine;

fn request(temperature: f32) -> GenerateRequest {
    let mut r = GenerateRequest::new(Prompt::Chat(vec![ChatMessage {
        role: "user".into(),
        content: "Name three colours of the rainbow.".into(),
    }]));
    r.max_tokens = 24;
    r.temperature = temperature;
    r.seed = 7;
    r
}

#[test]
fn honest_completions_pass_and_tampered_ones_fail_where_they_start() {
    let engine = Engine::load_quantized(model_bytes()).expect("engine");
    let policy = CheckPolicy::default();
    // Greedy: every delivered token is the checker's first choice, exactly.
    let greedy = request(0.0);
    let tokens = engine
        .generate(&greedy, &|| false, &mut |_, _| {})
        .expect("generates")
        .tokens;
    assert!(tokens.len() > 4);
    let scores = engine.score(&greedy, &tokens).expect("scores");
    assert_eq!(scores.len(), tokens.len());
    for (t, s) in tokens.iter().zip(&scores) {
        assert_eq!((s.top_token, s.top_logit), (*t, s.logit), "{s:?}");
        assert!(s.logprob <= 0.0 && s.logprob.is_finite());
    }
    assert_eq!(judge(&greedy, &tokens, &scores, &policy), Verdict::Pass);
    // One token swapped for an unlikely one: the check fails there.
    let mut bad = tokens.clone();
    bad[3] = 12345;
    let bad_scores = engine.score(&greedy, &bad).expect("scores");
    assert_eq!(
        bad_scores[..3],
        scores[..3],
        "the tokens before are read alike"
    );
    match judge(&greedy, &bad, &bad_scores, &policy) {
        Verdict::Fail { position, .. } => assert_eq!(position, 3),
        Verdict::Pass => panic!("a swapped token passed: {:?}", bad_scores[3]),
    }
    // Sampled: plausible at the request's temperature; random tokens are
    // not.
    let sampled = request(0.9);
    let tokens = engine
        .generate(&sampled, &|| false, &mut |_, _| {})
        .expect("generates")
        .tokens;
    let scores = engine.score(&sampled, &tokens).expect("scores");
    assert_eq!(
        judge(&sampled, &tokens, &scores, &policy),
        Verdict::Pass,
        "{scores:?}"
    );
    let random: Vec<u32> = (0..tokens.len() as u32)
        .map(|i| 1000 + i * 977 % 40000)
        .collect();
    let scores = engine.score(&sampled, &random).expect("scores");
    assert!(matches!(
        judge(&sampled, &random, &scores, &policy),
        Verdict::Fail { .. }
    ));
    // Nothing to score, and more than the context, are answered plainly.
    assert!(engine.score(&greedy, &[]).expect("empty").is_empty());
    let long = vec![1u32; 9000];
    assert!(engine.score(&greedy, &long).is_err());
}
