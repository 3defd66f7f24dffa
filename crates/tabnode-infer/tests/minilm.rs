//! all-MiniLM-L6-v2 against sentence-transformers' own vectors
//! (`tests/fixtures/minilm.json`, from `scripts/fixtures/minilm_reference.py`):
//! the same token ids on every fixture text (accents, CJK, other scripts,
//! emoji, control characters, added tokens in the text, a word past 100
//! characters, a text past 256 tokens, empty ones), and vectors with a
//! cosine of at least 0.9999 to the reference's, one text at a time and as a
//! batch, on the CPU and on a GPU (the WGSL encoder on Mesa lavapipe here
//! and on CI).

mod common;

use std::sync::Arc;

use common::{ids, minilm_files};
use futures::executor::block_on;
use serde_json::Value as Json;
use tabnode_core::infer::{EmbedInput, EmbedRequest};
use tabnode_core::{ErrorCode, Response};
use tabnode_infer::bert::{BertError, BertModel};
use tabnode_infer::embedder::Embedder;
use tabnode_infer::gpu::{GpuBert, GpuBertError, BATCH_TOKENS};

fn fixture() -> Json {
    serde_json::from_str(include_str!("fixtures/minilm.json")).expect("fixture")
}

fn model() -> BertModel {
    let [config, weights, tokenizer] = minilm_files();
    BertModel::from_files(&config, &weights, &tokenizer, 256).expect("model")
}

fn floats(v: &Json) -> Vec<f32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("float") as f32)
        .collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let n = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (n(a) * n(b))
}

#[test]
fn wordpiece_ids_match_the_reference_tokenizer() {
    let m = model();
    let f = fixture();
    let cases = f["cases"].as_array().expect("cases");
    assert!(cases.len() >= 20);
    for case in cases {
        let text = case["text"].as_str().expect("text");
        let enc = m.tokenize(text);
        assert_eq!(enc.ids, ids(&case["ids"]), "{text:?}");
    }
    // The long text is cut to 256 and says by how much.
    let long = cases.last().expect("long")["text"].as_str().expect("text");
    let enc = m.tokenize(long);
    assert_eq!(enc.ids.len(), 256);
    assert!(enc.truncated > 100, "{}", enc.truncated);
    assert_eq!(m.tokenize("Paris").truncated, 0);
}

#[test]
fn vectors_match_sentence_transformers() {
    let m = model();
    assert_eq!(m.dimensions(), 384);
    let f = fixture();
    let cases = f["cases"].as_array().expect("cases");
    let texts: Vec<&str> = cases
        .iter()
        .map(|c| c["text"].as_str().expect("text"))
        .collect();
    let got = m.embed(&texts).expect("embed");
    let mut worst = 1.0f64;
    for ((case, (v, _)), batch) in cases
        .iter()
        .zip(&got)
        .zip(f["batch"].as_array().expect("batch"))
    {
        let want = floats(&case["embedding"]);
        let c = cosine(v, &want).min(cosine(v, &floats(batch)));
        worst = worst.min(c);
        assert!(c >= 0.9999, "{:?}: cosine {c}", case["text"]);
        let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "unit length, {norm}");
    }
    println!(
        "minilm: worst cosine to sentence-transformers {worst:.7} over {} texts",
        cases.len()
    );
    // Different texts are different vectors; related ones are close.
    assert!(
        cosine(&got[0].0, &got[1].0) > 0.6,
        "two sentences about Paris"
    );
    assert!(cosine(&got[0].0, &got[2].0) < 0.3, "Paris against a cat");
}

#[test]
fn bad_ids_and_files_are_clear_errors() {
    let m = model();
    assert!(matches!(m.embed_ids(&[]), Err(BertError::Input(_))));
    let e = m.embed_ids(&[101, 40_000, 102]).expect_err("id");
    assert!(
        e.to_string().contains("outside the vocabulary of 30522"),
        "{e}"
    );
    let e = m.embed_ids(&vec![101; 257]).expect_err("length");
    assert!(e.to_string().contains("1 to 256"), "{e}");
    let [config, weights, tokenizer] = minilm_files();
    let e = BertModel::from_files(&config, &weights[..1000], &tokenizer, 256).expect_err("cut");
    assert!(matches!(e, BertError::Weights(_)), "{e}");
    let e = BertModel::from_files(b"{}", &weights, &tokenizer, 256).expect_err("config");
    assert!(matches!(e, BertError::Config(_)), "{e}");
    let e = BertModel::from_files(&config, &weights, b"[]", 256).expect_err("tokenizer");
    assert!(matches!(e, BertError::Tokenizer(_)), "{e}");
    let e = BertModel::from_files(&config, &weights, &tokenizer, 513).expect_err("positions");
    assert!(e.to_string().contains("512 positions"), "{e}");
}

fn gpu_encoder(m: BertModel) -> GpuBert {
    GpuBert::new(common::gpu(), Arc::new(m)).expect("encoder")
}

#[test]
fn gpu_vectors_match_sentence_transformers_and_the_cpu() {
    let enc = gpu_encoder(model());
    let m = Arc::clone(enc.model());
    let f = fixture();
    let cases = f["cases"].as_array().expect("cases");
    let all: Vec<Vec<u32>> = cases.iter().map(|c| ids(&c["ids"])).collect();
    let refs: Vec<&[u32]> = all.iter().map(Vec::as_slice).collect();
    // Every fixture text in one packed submission.
    let got = block_on(enc.embed(&refs)).expect("embed");
    assert_eq!(got.len(), cases.len());
    let mut worst = 1.0f64;
    for ((case, v), ids) in cases.iter().zip(&got).zip(&all) {
        let want = floats(&case["embedding"]);
        let c = cosine(v, &want);
        worst = worst.min(c);
        assert!(c >= 0.9999, "{:?}: cosine {c}", case["text"]);
        let cpu = m.embed_ids(ids).expect("cpu");
        let c = cosine(v, &cpu);
        assert!(c >= 0.99999, "{:?}: cosine to the CPU {c}", case["text"]);
    }
    println!(
        "minilm on the GPU ({} dispatches, {} MB of weights): worst cosine to \
         sentence-transformers {worst:.7} over {} texts",
        enc.dispatches(),
        enc.weight_bytes() >> 20,
        cases.len()
    );
    // A text alone computes exactly what it does packed with others (each
    // token attends to its own text only): bit-equal.
    for (i, ids) in refs.iter().enumerate().step_by(5) {
        let alone = block_on(enc.embed(&[ids])).expect("alone");
        assert_eq!(alone[0], got[i], "text {i} alone differs from packed");
    }
    // More tokens than one submission holds: several submissions of whole
    // texts, the same vectors in order.
    let long = refs.last().copied().expect("long");
    assert_eq!(long.len(), 256);
    let many: Vec<&[u32]> = (0..2 * (BATCH_TOKENS / 256) + 2)
        .map(|i| if i % 2 == 0 { long } else { refs[i % 20] })
        .collect();
    assert!(many.iter().map(|r| r.len()).sum::<usize>() > BATCH_TOKENS);
    let split = block_on(enc.embed(&many)).expect("split");
    for (i, (v, ids)) in split.iter().zip(&many).enumerate() {
        let alone = block_on(enc.embed(&[ids])).expect("alone");
        assert_eq!(v, &alone[0], "input {i} of a split batch");
    }
}

#[test]
fn gpu_encoder_refuses_bad_ids_before_running() {
    let enc = gpu_encoder(model());
    let good: &[u32] = &[101, 7592, 102];
    for (bad, says) in [
        (&[][..], "0 tokens"),
        (&[101, 40_000, 102][..], "outside the vocabulary of 30522"),
        (&[101; 257][..], "257 tokens"),
    ] {
        let e = block_on(enc.embed(&[good, bad])).expect_err("bad");
        assert!(matches!(e, GpuBertError::Input(_)), "{e}");
        assert!(e.to_string().contains(says), "{e}");
    }
    assert_eq!(block_on(enc.embed(&[good])).expect("good").len(), 1);
    assert!(block_on(enc.embed(&[])).expect("none").is_empty());
}

#[test]
fn an_embedder_on_the_gpu_answers_as_on_the_cpu() {
    let [config, weights, tokenizer] = minilm_files();
    let limits = br#"{"max_seq_length": 256, "do_lower_case": false}"#;
    let mut e =
        Embedder::from_files("minilm", [&config, &weights, &tokenizer, limits]).expect("embedder");
    let f = fixture();
    let cases = f["cases"].as_array().expect("cases");
    let mut inputs: Vec<EmbedInput> = cases
        .iter()
        .map(|c| EmbedInput::Text(c["text"].as_str().expect("text").to_owned()))
        .collect();
    // Token input (without [CLS]/[SEP]), and one cut to the limit.
    inputs.push(EmbedInput::Tokens(vec![7592, 2088]));
    inputs.push(EmbedInput::Tokens(vec![7592; 300]));
    let request = EmbedRequest {
        request_id: 1,
        model: "minilm".into(),
        inputs,
    };
    let Response::Embedded(cpu) = e.answer(&request) else {
        panic!("the CPU answers")
    };
    assert!(block_on(e.answer_on_gpu(&request)).is_none(), "no GPU yet");
    e.use_gpu(common::gpu()).expect("upload");
    let Some(Response::Embedded(gpu)) = block_on(e.answer_on_gpu(&request)) else {
        panic!("the GPU answers")
    };
    assert_eq!(gpu.tokens, cpu.tokens);
    assert_eq!(gpu.truncated, cpu.truncated);
    assert_eq!(*gpu.truncated.last().expect("cut"), 300 - 254);
    for (i, (g, c)) in gpu.vectors.iter().zip(&cpu.vectors).enumerate() {
        let cos = cosine(g, c);
        assert!(cos >= 0.99999, "input {i}: cosine {cos}");
    }
    // Refusals as on the CPU: another model; a token id outside the
    // vocabulary is the caller's fault (Invalid), not the node's.
    let other = EmbedRequest {
        model: "other".into(),
        ..request.clone()
    };
    assert!(matches!(
        block_on(e.answer_on_gpu(&other)),
        Some(Response::Error {
            code: ErrorCode::UnknownModel,
            ..
        })
    ));
    let bad = EmbedRequest {
        inputs: vec![
            EmbedInput::Text("fine".into()),
            EmbedInput::Tokens(vec![40_000]),
        ],
        ..request
    };
    let Some(Response::Error { code, message }) = block_on(e.answer_on_gpu(&bad)) else {
        panic!("refused")
    };
    assert_eq!(code, ErrorCode::Invalid);
    assert!(message.contains("outside the vocabulary"), "{message}");
}
