//! Relay-side Proof-of-FLOPS capacity: how many challenges one relay can
//! verify per second per core at the sizes it now chooses, against the
//! honest prover's time on the same machine (CPU sgemm: the reference), and
//! how many nodes one relay can therefore challenge per hour at the mean
//! interval.
//!
//! `cargo run -p tabnode-node --example verify_bench -- [REPS]` (run by
//! `scripts/bench.sh`).

use std::time::Instant;

use tabnode_core::{Capabilities, GpuInfo, NodeKind};
use tabnode_pof::{derive_seed, expand, flops, verify_with, Prover, Query, DEFAULT_K};
use tabnode_relay::PofConfig;

struct Fixture {
    seed: [u8; 32],
    n: u32,
    root: [u8; 32],
    query: Query,
    answer: tabnode_pof::Answer,
    prove_s: f64,
}

fn fixture(n: u32) -> Result<Fixture, Box<dyn std::error::Error>> {
    let seed = derive_seed(&[9; 32], b"bench", 1, n);
    let (a, b) = expand(&seed, n)?;
    let query = Query {
        nonce: [5; 32],
        k: DEFAULT_K,
    };
    let t = Instant::now();
    let c = tabnode_pof::matmul_sgemm(&a, &b, n as usize);
    let prover = Prover::new(n, &c)?;
    let answer = prover.answer(&query);
    Ok(Fixture {
        seed,
        n,
        root: prover.root(),
        query,
        answer,
        prove_s: t.elapsed().as_secs_f64(),
    })
}

fn verify(f: &Fixture) -> Result<(), tabnode_pof::PofError> {
    let (a, b) = expand(&f.seed, f.n)?;
    verify_with(&a, &b, f.n, &f.root, &f.query, &f.answer)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let reps: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    let config = PofConfig::default().validated()?;
    let cores = config.verifiers;
    let class = |gpu: Option<bool>| {
        let mut c = Capabilities::new(NodeKind::Browser, "bench");
        c.gpu = gpu.map(|is_fallback| GpuInfo {
            is_fallback,
            ..GpuInfo::default()
        });
        c
    };
    // The sizes the relay chooses: by class for a first proof, and from a
    // proven rate (a slow SwiftShader tab at 0.5 GFLOP/s).
    let cases = [
        (
            "software_gpu, first proof",
            config.size(Some(&class(Some(true))), None),
        ),
        (
            "cpu or gpu, first proof",
            config.size(Some(&class(None)), None),
        ),
        (
            "history: 0.5 GFLOP/s",
            config.size(Some(&class(Some(true))), Some(0.5)),
        ),
        ("minimum", config.size(Some(&class(None)), Some(1e-9))),
    ];
    println!("{cores} verifier thread(s) (one per core); k = {DEFAULT_K}; {reps} verifications per size and thread");
    println!("\n| sized by | n | prover (CPU sgemm) | verifier, 1 thread | verifications/s/core | with {cores} threads: verifications/s | nodes per relay at a 1 h mean interval | verifier/prover |");
    println!("|---|---|---|---|---|---|---|---|");
    for (label, sizing) in cases {
        let f = fixture(sizing.n)?;
        verify(&f)?;
        let t = Instant::now();
        for _ in 0..reps {
            verify(&f)?;
        }
        let one = t.elapsed().as_secs_f64() / reps as f64;
        let t = Instant::now();
        let outcomes: Vec<Result<(), String>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..cores)
                .map(|_| {
                    s.spawn(|| -> Result<(), String> {
                        for _ in 0..reps {
                            verify(&f).map_err(|e| e.to_string())?;
                        }
                        Ok(())
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err("a verifier panicked".into()))
                })
                .collect()
        });
        outcomes.into_iter().collect::<Result<Vec<()>, String>>()?;
        let pool_rate = (cores * reps) as f64 / t.elapsed().as_secs_f64();
        println!(
            "| {label} | {} | {:.3} s ({:.1} GFLOP/s) | {:.1} ms | {:.1} | {:.1} | {:.0} | {:.3} |",
            f.n,
            f.prove_s,
            flops(f.n) / f.prove_s / 1e9,
            one * 1e3,
            1.0 / one,
            pool_rate,
            // Each node costs one verification per mean interval.
            pool_rate * config.interval.as_secs_f64(),
            one / f.prove_s,
        );
    }
    Ok(())
}
