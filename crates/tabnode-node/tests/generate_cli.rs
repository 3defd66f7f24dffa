//! `tabnode-node generate` end to end on the real model (downloaded by
//! scripts/setup.sh), and its errors on bad input.

use std::path::PathBuf;
use std::process::Command;

fn model() -> PathBuf {
    match std::env::var_os("TABNODE_MODEL") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(std::env::var_os("HOME").expect("HOME"))
            .join(".cache/tabnode/models/SmolLM2-135M-Instruct.Q4_1.gguf"),
    }
}

fn generate(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tabnode-node"))
        .arg("generate")
        .args(args)
        .env_remove("TABNODE_MODEL")
        .output()
        .expect("run tabnode-node")
}

/// `tabnode-node --model MODEL ARGS…` (serving), which is expected to
/// refuse before going near the network: its stderr.
fn refused_to_serve(args: &[&str]) -> String {
    let m = model();
    let out = Command::new(env!("CARGO_BIN_EXE_tabnode-node"))
        .args(["--model", m.to_str().expect("utf-8 path")])
        .args(args)
        .env_remove("TABNODE_SERVE_MODEL")
        .output()
        .expect("run tabnode-node");
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// burn's f32 model is the tests' reference, not something a node serves.
#[test]
fn a_node_refuses_to_serve_on_the_f32_reference() {
    let err = refused_to_serve(&["--device", "flex"]);
    assert!(
        err.contains("--device flex") && err.contains("--device cpu"),
        "{err}"
    );
}

/// The GPU engine's KV cache is the device's: one generation at a time.
#[test]
fn a_node_refuses_more_slots_than_the_gpu_engine_has() {
    let err = refused_to_serve(&["--device", "gpu", "--slots", "2"]);
    assert!(
        err.contains("--device gpu serves one generation at a time"),
        "{err}"
    );
}

#[test]
fn answers_a_chat_prompt_greedily() {
    let m = model();
    let out = generate(&[
        "--model",
        m.to_str().expect("utf-8 path"),
        // A prompt whose greedy answer leads by more than a logit at every
        // token. "What is the capital of France?" starts with a near tie
        // ("The" 24.94 / "L" 24.94): any change in the float order of the
        // kernels (a faster exp, say) flips it, and the small model then
        // drifts off into French words.
        "--prompt",
        "Name the capital of France.",
        "--chat",
        "--max-tokens",
        "24",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("Paris"), "{stdout}");
    assert!(stderr.contains("finish: Eos"), "{stderr}");
}

#[test]
fn bad_model_files_are_clear_errors() {
    let missing = generate(&["--model", "/nonexistent/model.gguf", "--prompt", "hi"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot read the model"));

    let dir = std::env::temp_dir().join(format!("tabnode-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    let bytes = std::fs::read(model()).expect("model");
    let cut = dir.join("truncated.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() / 3]).expect("write");
    let out = generate(&["--model", cut.to_str().expect("utf-8"), "--prompt", "hi"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("truncated"), "{stderr}");
    let junk = dir.join("junk.gguf");
    std::fs::write(&junk, b"not a model at all").expect("write");
    let out = generate(&["--model", junk.to_str().expect("utf-8"), "--prompt", "hi"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a GGUF file"));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn wgpu_gpu_and_flex_give_the_same_greedy_tokens_and_cpu_runs_quantized() {
    // The wgpu backend runs on any Vulkan adapter; scripts/setup.sh installs
    // Mesa's software one (lavapipe), so this runs everywhere the tests do.
    let m = model();
    let run_with = |device: &str, sampling: &[&str]| {
        let mut args = vec![
            "--model",
            m.to_str().expect("utf-8 path"),
            "--prompt",
            "The three primary colors are",
            "--max-tokens",
            "6",
            "--json",
            "--device",
            device,
        ];
        args.extend(sampling);
        let out = generate(&args);
        assert!(
            out.status.success(),
            "{device}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("one JSON object on stdout");
        (
            v["device"].as_str().unwrap_or_default().to_owned(),
            v["tokens"].clone(),
        )
    };
    let run = |device: &str| run_with(device, &[]);
    // burn's f32 model on its CPU and GPU backends: the same tokens.
    let (device, flex) = run("flex");
    assert_eq!(device, "flex");
    assert_eq!(flex.as_array().map(Vec::len), Some(6));
    assert_eq!(run("wgpu"), ("wgpu".to_owned(), flex.clone()));
    // The file's blocks with the WGSL kernels (the tab's WebGPU engine) on
    // the same adapter: the reference's tokens too.
    assert_eq!(run("gpu"), ("gpu-quantized-rows".to_owned(), flex));
    // Sampled: the GPU ranks the candidates and reads back a few KB (the
    // tail from the logits); the same seed draws the reference's tokens
    // (their logits agree to 1e-4, far from the draws' boundaries).
    let sampled = ["--temperature", "0.9", "--top-p", "0.95", "--seed", "5"];
    let (_, want) = run_with("flex", &sampled);
    assert_eq!(run_with("gpu", &sampled).1, want);
    let (_, other) = run_with("flex", &["--temperature", "0.9", "--seed", "6"]);
    assert_ne!(other, want, "another seed, other tokens");
    // The default: the file's quantized blocks on this CPU's best kernels.
    let (device, cpu) = run("cpu");
    assert!(device.starts_with("cpu-quantized-"), "{device}");
    assert_eq!(cpu.as_array().map(Vec::len), Some(6));
}
