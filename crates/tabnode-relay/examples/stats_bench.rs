//! What the live figures cost the relay (issue #17): a relay state with
//! `N` registered nodes (tabs and native nodes, each with capabilities,
//! an engine, and points in a real ledger, as the registry holds them),
//! then per sample what the sampler task does (`stats::tick`: the
//! registry's summaries, the counters, both rings, the node roster with
//! its points read from the ledger and its delta), with a tenth of the
//! nodes serving a request each sample (their rows change), and what each
//! stream subscriber costs (the sample as JSON; the roster's delta is
//! serialised once for all); against the interval (2 s) as the share of
//! one core. The reference: the same relay answering `/api/network` once
//! (its JSON for the same nodes), which every open node page asks for.
//!
//! `cargo run -p tabnode-relay --example stats_bench -- [NODES] [SUBSCRIBERS]`
//! (`STATS_BENCH_PARTS=1` also prints what each part of a sample costs).

use std::time::Instant;

use libp2p::PeerId;
use tabnode_core::infer::{Backend, EngineChoice};
use tabnode_core::{Capabilities, NodeKind};
use tabnode_relay::ledger::{Credit, Ledger};
use tabnode_relay::roster::ServedRequest;
use tabnode_relay::RelayState;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let nodes: usize = args.next().map_or(Ok(1000), |s| s.parse())?;
    let subscribers: usize = args.next().map_or(Ok(10), |s| s.parse())?;
    let dir = tempfile::tempdir()?;
    let ledger = std::sync::Arc::new(Ledger::open(&dir.path().join("ledger.redb"))?);
    let state = RelayState::new(&ledger, tabnode_relay::catalog::Catalog::builtin());
    let mut peers = Vec::new();
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
        peers.push(peer);
    }
    // Every node has points on record.
    futures::executor::block_on(
        ledger.apply(
            peers
                .iter()
                .enumerate()
                .map(|(i, p)| Credit::tokens(format!("bench-{i}"), p.to_string(), 10 + i as u64))
                .collect(),
        ),
    )?;
    let state = std::sync::Arc::new(state);
    state.stats.start(&state.metrics);
    // Warm up, then time.
    for _ in 0..5 {
        tabnode_relay::stats::tick(&state);
    }
    let rounds: u32 = 200;
    let mut served = 0u64;
    let t0 = Instant::now();
    let mut bytes = 0;
    let mut delta_bytes = 0;
    let mut changed_rows = 0;
    for round in 0..rounds {
        // A tenth of the nodes serve a request in this sample.
        for p in peers.iter().skip(round as usize % 10).step_by(10) {
            served += 1;
            state.roster.served(
                &p.to_string(),
                ServedRequest {
                    at_ms: 0,
                    request_id: served,
                    model: "smollm2-135m-instruct".into(),
                    tokens: 8 + served % 7,
                    seconds: 0.5,
                    outcome: "completed",
                },
            );
        }
        let (s, delta) = tabnode_relay::stats::tick(&state);
        changed_rows += delta.rows.len();
        delta_bytes += serde_json::to_vec(&delta)?.len();
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
    let roster_bytes = serde_json::to_vec(&state.roster.full(0))?.len();
    if std::env::var_os("STATS_BENCH_PARTS").is_some() {
        let ids: Vec<String> = peers.iter().map(ToString::to_string).collect();
        let t = Instant::now();
        for _ in 0..20 {
            ledger.balances_of(&ids)?;
        }
        eprintln!(
            "ledger reads {:.2} ms",
            t.elapsed().as_secs_f64() * 1e3 / 20.0
        );
        let t = Instant::now();
        for _ in 0..20 {
            state.registry.views();
        }
        eprintln!("views {:.2} ms", t.elapsed().as_secs_f64() * 1e3 / 20.0);
        let sums = state.registry.views();
        let t = Instant::now();
        for _ in 0..20 {
            state.roster.tick(&state, &sums, 0);
        }
        eprintln!(
            "roster tick {:.2} ms",
            t.elapsed().as_secs_f64() * 1e3 / 20.0
        );
        let t = Instant::now();
        for _ in 0..20 {
            state.stats.sample(&state, &sums, 0);
        }
        eprintln!(
            "stats sample {:.2} ms",
            t.elapsed().as_secs_f64() * 1e3 / 20.0
        );
    }
    println!(
        "{}",
        serde_json::json!({
            "nodes": nodes,
            "subscribers": subscribers,
            "sample_and_send_ms": per_sample * 1e3,
            "share_of_a_core": per_sample / interval,
            "sample_json_bytes": bytes / (rounds as usize * subscribers.max(1)),
            "nodes_delta_rows": changed_rows / rounds as usize,
            "nodes_delta_bytes": delta_bytes / rounds as usize,
            "api_nodes_bytes": roster_bytes,
            "api_network_ms": per_network * 1e3,
            "api_network_bytes": network_bytes / rounds as usize,
            "sample_vs_api_network": per_sample / per_network,
            "history_json_bytes": history,
            "history_json_ms": history_s * 1e3,
        })
    );
    Ok(())
}
