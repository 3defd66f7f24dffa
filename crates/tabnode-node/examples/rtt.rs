//! Round-trip latency benchmark, native ↔ native through a relay circuit on
//! loopback, against the direct round trip to the relay (the reference).
//!
//! `cargo run -p tabnode-node --example rtt -- [ROUNDS] [PAYLOAD_BYTES]`
//! (run by `scripts/bench.sh`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tabnode_core::{Capabilities, NodeKind, Request};
use tabnode_node::{spawn, NodeConfig, NodeHandle};
use tabnode_relay::RelayConfig;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn measure(
    from: &NodeHandle,
    to: Option<libp2p::PeerId>,
    rounds: usize,
    size: usize,
) -> Result<Vec<f64>, Box<dyn std::error::Error>> {
    let payload = vec![0xa5u8; size];
    // Warm-up: dial, circuit set-up, first streams.
    for _ in 0..20 {
        from.request(to, Request::Echo(payload.clone())).await?;
    }
    let mut ms = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        from.request(to, Request::Echo(payload.clone())).await?;
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    ms.sort_by(|a, b| a.total_cmp(b));
    Ok(ms)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(2000);
    let size: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(64);
    let dir = std::env::temp_dir().join(format!("tabnode-rtt-{}", std::process::id()));
    let relay =
        tabnode_relay::start(RelayConfig::ephemeral(dir.clone(), PathBuf::from("."))).await?;
    let tcp = relay.tcp_addr().ok_or("no tcp address")?;
    let node = |name: &str| {
        spawn(NodeConfig {
            relay: tcp.clone(),
            key: None,
            capabilities: Capabilities::new(NodeKind::Native, name),
            max_backoff: Duration::from_secs(1),
            handler: std::sync::Arc::new(tabnode_node::prover::PofProver::new(
                tabnode_node::prover::Backend::Cpu,
            )),
            server: None,
            embedder: None,
        })
    };
    let (a, b) = (node("a")?, node("b")?);
    a.wait_reachable(Duration::from_secs(30)).await?;
    b.wait_reachable(Duration::from_secs(30)).await?;

    let direct = measure(&a, None, rounds, size).await?;
    let circuit = measure(&a, Some(b.peer_id), rounds, size).await?;
    let (d50, d99) = (percentile(&direct, 0.5), percentile(&direct, 0.99));
    let (c50, c99) = (percentile(&circuit, 0.5), percentile(&circuit, 0.99));
    println!("rounds={rounds} payload={size}B transport=tcp");
    println!("reference node->relay (direct)      p50 {d50:.3} ms  p99 {d99:.3} ms");
    println!("node->relay->node (circuit)         p50 {c50:.3} ms  p99 {c99:.3} ms");
    println!(
        "ratio circuit/direct                p50 {:.2}x  p99 {:.2}x",
        c50 / d50,
        c99 / d99
    );
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}
