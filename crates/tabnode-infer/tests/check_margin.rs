//! The greedy margin of spot checks, measured (issue #16): completions of
//! the GPU engine (the tab's WebGPU kernels, run natively on lavapipe, both
//! kernel variants) scored by the CPU engine, which checks for the
//! network. Where the two backends rank a near tie differently, the GPU's
//! token trails the CPU's first choice by a margin; the check allows
//! `CheckPolicy::greedy_margin` (1 logit). The test prints the largest
//! margin seen and fails if an honest GPU completion would be struck.

mod common;

use common::{gpu, model_bytes};
use futures::executor::block_on;
use tabnode_core::check::{judge, CheckPolicy, Verdict};
use tabnode_core::infer::{ChatMessage, GenerateRequest, Prompt};
use tabnode_infer::gpu::Variant;
use tabnode_infer::Engine;

const PROMPTS: [&str; 8] = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three prime numbers.",
    "Explain photosynthesis in one sentence.",
    "Translate 'good morning' into Spanish.",
    "What is 12 times 12?",
    "Name a famous painter.",
    "Give me a tip for learning to code.",
];

#[test]
fn honest_gpu_completions_pass_the_cpu_checkers_greedy_margin() {
    let bytes = model_bytes();
    let cpu = Engine::load_quantized(bytes.clone()).expect("cpu engine");
    let policy = CheckPolicy::default();
    for variant in Variant::ALL {
        let engine = block_on(Engine::load_gpu(&bytes, gpu(), variant, 256, "lavapipe"))
            .expect("gpu engine");
        let (mut worst, mut differing, mut tokens) = (0f32, 0, 0);
        for prompt in PROMPTS {
            let mut request = GenerateRequest::new(Prompt::Chat(vec![ChatMessage {
                role: "user".into(),
                content: prompt.into(),
            }]));
            request.max_tokens = 24;
            let out = engine
                .generate(&request, &|| false, &mut |_, _| {})
                .expect("gpu generates");
            let scores = cpu.score(&request, &out.tokens).expect("cpu scores");
            for (t, s) in out.tokens.iter().zip(&scores) {
                if *t != s.top_token {
                    differing += 1;
                    worst = worst.max(s.top_logit - s.logit);
                }
            }
            tokens += out.tokens.len();
            assert_eq!(
                judge(&request, &out.tokens, &scores, &policy),
                Verdict::Pass,
                "{variant:?} on {prompt:?}: {scores:?}"
            );
        }
        println!(
            "{variant:?}: {tokens} GPU tokens checked on the CPU engine, {differing} not its first choice, largest margin {worst:.4} logits (allowed {})",
            policy.greedy_margin
        );
    }
}
