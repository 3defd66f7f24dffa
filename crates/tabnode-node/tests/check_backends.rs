//! Spot checks never strike an honest node on another backend (issue #16):
//! two native nodes on the quantized CPU engine and one on the GPU engine
//! (the tab's WGSL kernels through wgpu: Vulkan, lavapipe where there is
//! no GPU) serve a real relay with every request checked; over 200
//! checked requests, greedy and sampled, every check passes, a third of
//! them GPU completions judged by a CPU checker.

use serde_json::{json, Value};
use std::sync::Arc;
use tabnode_infer::gpu::{self, Gpu, Variant};
use tabnode_infer::Engine;

#[path = "common/http.rs"]
mod http_client;
use http_client::json_call;
#[path = "common/serving.rs"]
mod serving;
use serving::*;

/// Requests sent: 70 rounds of three at once (one for each node).
const REQUESTS: usize = 210;

const PROMPTS: [&str; 10] = [
    "The capital of France is",
    "Once upon a time",
    "The best way to learn",
    "def add(a, b):",
    "Water boils at",
    "My favourite colour is",
    "In 1969, the first",
    "A haiku about rain:",
    "The opposite of hot is",
    "Three prime numbers:",
];

/// The GPU engine as `tabnode-node --device gpu` loads it: the kernels for
/// the first Vulkan adapter's kind.
fn gpu_engine() -> Arc<Engine> {
    let bytes = std::fs::read(model_path()).expect("the model (scripts/setup.sh)");
    let adapter = futures::executor::block_on(gpu::adapter(wgpu::Backends::VULKAN))
        .expect("a Vulkan adapter (scripts/setup.sh --test installs lavapipe)");
    let variant = Variant::for_adapter(adapter.get_info().device_type == wgpu::DeviceType::Cpu);
    let device = futures::executor::block_on(Gpu::new(&adapter)).expect("device");
    let name = format!("gpu-quantized-{}", variant.name());
    Arc::new(
        futures::executor::block_on(Engine::load_gpu(
            &bytes,
            device,
            variant,
            gpu::POSITIONS,
            &name,
        ))
        .expect("gpu engine"),
    )
}

async fn complete(addr: std::net::SocketAddr, i: usize) -> Value {
    // Every other round sampled (seeded: a failure can be replayed).
    let sampled = (i / 3) % 2 == 1;
    let mut body = json!({
        "model": model(),
        "prompt": PROMPTS[i % PROMPTS.len()],
        "max_tokens": 6,
        "temperature": 0,
    });
    if sampled {
        body["temperature"] = json!(0.8);
        body["top_p"] = json!(0.95);
        body["seed"] = json!(i);
    }
    let (s, v) = json_call(addr, "POST", "/v1/completions", Some(&body)).await;
    assert_eq!(s, 200, "{v}");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn honest_cpu_and_gpu_nodes_are_never_struck() {
    let dir = tempfile::tempdir().expect("dir");
    let relay = relay_with(&dir, checking_config()).await;
    let addr = relay.http_addr;
    let tcp = relay.tcp_addr().expect("tcp");
    let cpu = [serving_node(tcp.clone(), 1), serving_node(tcp.clone(), 1)];
    let gpu = serving_node_with(tcp, 1, honest_prover(), gpu_engine());
    wait_for_model(addr, 3).await;
    let gpu_id = gpu.peer_id.to_string();
    let cpu_ids: Vec<String> = cpu.iter().map(|n| n.peer_id.to_string()).collect();

    let mut sent = 0;
    while sent < REQUESTS {
        futures::future::join_all((0..3).map(|i| complete(addr, sent + i))).await;
        sent += 3;
        // Each round's checks end before the next round (a node's one slot
        // either serves or checks).
        checks_after(addr, sent).await;
    }

    let c = json_call(addr, "GET", "/api/checks?limit=1000", None)
        .await
        .1;
    let list = c["checks"].as_array().expect("checks").clone();
    assert!(list.len() >= 200, "{} checks", list.len());
    let not_passed: Vec<&Value> = list.iter().filter(|r| r["outcome"] != "passed").collect();
    assert!(
        not_passed.is_empty(),
        "honest completions not passed: {not_passed:?}"
    );
    let served_by = |peer: &str| list.iter().filter(|r| r["served_by"] == peer).count();
    let on_gpu = served_by(&gpu_id);
    // Matchmaking gives each of the three one request a round.
    assert!(
        on_gpu >= 50,
        "the GPU node served {on_gpu} of {}",
        list.len()
    );
    for r in list.iter().filter(|r| r["served_by"] == gpu_id.as_str()) {
        assert!(cpu_ids.iter().any(|p| *p == r["checker"]), "{r}");
        assert!(r["tokens"].as_u64().unwrap_or(0) > 0, "{r}");
    }
    for peer in cpu_ids.iter().chain([&gpu_id]) {
        let standing = &c["nodes"][peer];
        assert_eq!(standing["failed"], 0, "{peer} struck: {standing}");
        assert_eq!(standing["excluded"], false, "{standing}");
        let ledger = json_call(addr, "GET", &format!("/api/ledger/{peer}"), None)
            .await
            .1;
        assert_eq!(ledger["clawed_back_requests"], 0, "{ledger}");
    }
    // A bad limit is a clear error, not the default list.
    let (status, _) = json_call(addr, "GET", "/api/checks?limit=many", None).await;
    assert_eq!(status, 400);
    // The margins on live traffic: the GPU's greedy tokens within the
    // allowed gap of the CPU checker's first choice, its sampled tokens
    // far from the tail limit; a CPU node's greedy tokens are the CPU
    // checker's own (the same engine: no gap at all).
    let figures = |peer: &str, key: &str| -> Vec<f64> {
        list.iter()
            .filter(|r| r["served_by"] == peer)
            .filter_map(|r| r["closeness"][key].as_f64())
            .collect()
    };
    let gpu_gaps = figures(&gpu_id, "greedy_gap");
    let gpu_tails = figures(&gpu_id, "smallest_tail");
    assert!(
        gpu_gaps.len() >= 25 && gpu_tails.len() >= 25,
        "{gpu_gaps:?} {gpu_tails:?}"
    );
    let worst_gap = gpu_gaps.iter().copied().fold(0.0, f64::max);
    let smallest_tail = gpu_tails.iter().copied().fold(1.0, f64::min);
    assert!(worst_gap <= 1.0, "{worst_gap}");
    for cpu in &cpu_ids {
        assert!(
            figures(cpu, "greedy_gap").iter().all(|g| *g == 0.0),
            "{cpu}"
        );
    }
    let gpu_not_first: u64 = list
        .iter()
        .filter(|r| r["served_by"] == gpu_id.as_str() && r["closeness"]["greedy_gap"].is_number())
        .filter_map(|r| r["closeness"]["not_first"].as_u64())
        .sum();
    println!(
        "{} checked requests: {} served on the GPU engine, {} and {} on the CPU engines, all passed; \
         GPU greedy tokens not the CPU checker's first choice: {gpu_not_first}, largest gap {worst_gap:.4} logits; \
         smallest tail of a GPU sampled token {smallest_tail:.3e}",
        list.len(),
        on_gpu,
        served_by(&cpu_ids[0]),
        served_by(&cpu_ids[1])
    );
}

#[path = "common/process.rs"]
mod process;

#[test]
fn bad_check_settings_are_refused_at_start_up() {
    for (flag, value, want) in [
        ("--check-rate", "1.5", "not a share from 0 to 1"),
        ("--check-new-node-rate", "-0.1", "not a share from 0 to 1"),
        ("--check-rate", "often", "not a share from 0 to 1"),
        ("--strikes-to-exclude", "0", "--strikes-to-exclude"),
        (
            "--trusted-proxy",
            "the-proxy",
            "not an IP address or network",
        ),
    ] {
        let out = std::process::Command::new(process::relay_binary())
            .args([format!("{flag}={value}").as_str(), "--http", "127.0.0.1:0"])
            .output()
            .expect("the relay runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flag} {value} accepted");
        assert!(err.contains(want), "{flag} {value}: {err}");
    }
}
