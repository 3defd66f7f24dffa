//! What the live figures cost the relay (issue #17): a relay state with
//! `N` registered nodes (tabs and native nodes, each with capabilities,
//! an engine and a proof on record, as the registry holds them), then
//! per sample what the sampler task does (`Stats::sample`: the registry's
//! summaries, the counters, both rings) and what each stream subscriber
//! costs (one sample as JSON); against the interval (2 s) as the share of
//! one core. The reference: the same relay answering `/api/network` once
//! (its JSON for the same nodes), which every open node page asks for.
//!
//! `cargo run -p tabnode-relay --example stats_bench -- [NODES] [SUBSCRIBERS]`

use std::time::Instant;

use libp2p::PeerId;
use tabnode_core::infer::{Backend, EngineChoice};
use tabnode_core::{Capabilities, NodeKind};
use tabnode_relay::RelayState;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let nodes: usize = args.next().map_or(Ok(1000), |s| s.parse())?;
    let subscribers: usize = args.next().map_or(Ok(10), |s| s.parse())?;
    let state = RelayState::default();
    let model = "SmolLM2 135M".to_owned();
    for i in 0..nodes {
        let peer = PeerId::random();
        let ip = std::net::IpAddr::from([10, 0, (i / 250) as u8, (i % 250) as u8]);
        state
            .registry
            .connected(peer, "webrtc-direct", Some(ip), usize::MAX, 0);
        let kind = if i % 3 == 0 {
            NodeKind::Native
        } else {
            NodeKind::Browser
        };
        let mut caps = Capabilities::new(kind, "bench");
        caps.models = vec![model.clone()];
        caps.engine = Some(EngineChoice {
            backend: if i % 2 == 0 {
                Backend::Cpu
            } else {
                Backend::Webgpu
            },
            device: "bench".into(),
            reason: "bench".into(),
            timings: Vec::new(),
            threads: 1,
        });
        state
            .registry
            .register(peer, caps, vec![tabnode_core::model_id(&model)]);
    }
    let state = std::sync::Arc::new(state);
    state.stats.start(&state.metrics);
    // Warm up, then time.
    for _ in 0..5 {
        state.stats.sample(&state);
    }
    let rounds = 200;
    let t0 = Instant::now();
    let mut bytes = 0;
    for _ in 0..rounds {
        let s = state.stats.sample(&state);
        for _ in 0..subscribers {
            bytes += serde_json::to_vec(&*s)?.len();
        }
    }
    let per_sample = t0.elapsed().as_secs_f64() / f64::from(rounds);
    let t1 = Instant::now();
    let mut network_bytes = 0;
    for _ in 0..rounds {
        network_bytes += serde_json::to_vec(&state.summaries())?.len();
    }
    let per_network = t1.elapsed().as_secs_f64() / f64::from(rounds);
    let interval = tabnode_relay::stats::INTERVAL.as_secs_f64();
    let t2 = Instant::now();
    let history = serde_json::to_vec(&state.stats.history(true))?.len();
    let history_s = t2.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "nodes": nodes,
            "subscribers": subscribers,
            "sample_and_send_ms": per_sample * 1e3,
            "share_of_a_core": per_sample / interval,
            "sample_json_bytes": bytes / (rounds as usize * subscribers.max(1)),
            "api_network_ms": per_network * 1e3,
            "api_network_bytes": network_bytes / rounds as usize,
            "sample_vs_api_network": per_sample / per_network,
            "history_json_bytes": history,
            "history_json_ms": history_s * 1e3,
        })
    );
    Ok(())
}
