//! all-MiniLM-L6-v2 against sentence-transformers' own vectors
//! (`tests/fixtures/minilm.json`, from `scripts/fixtures/minilm_reference.py`):
//! the same token ids on every fixture text (accents, CJK, other scripts,
//! emoji, control characters, added tokens in the text, a word past 100
//! characters, a text past 256 tokens, empty ones), and vectors with a
//! cosine of at least 0.9999 to the reference's, one text at a time and as a
//! batch.

mod common;

use common::{ids, minilm_files};
use serde_json::Value as Json;
use tabnode_infer::bert::{BertError, BertModel};

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
