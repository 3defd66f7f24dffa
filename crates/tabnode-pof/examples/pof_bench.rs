//! Proof-of-FLOPS benchmarks (native):
//! 1. the WGSL kernel (through wgpu, Vulkan) against an optimised CPU sgemm
//!    (`matrixmultiply`, threaded) on the same machine;
//! 2. verifier time against prover time.
//!
//! `cargo run -p tabnode-pof --example pof_bench -- [KERNEL_SIZES] [VERIFY_SIZES]`
//! e.g. `-- 256,512,1024 1024,2048,4096` (run by `scripts/bench.sh`).

use std::time::Instant;

use futures::executor::block_on;
use tabnode_pof::gpu::Kernel;
use tabnode_pof::{
    derive_seed, expand, flops, gpu::GpuProver, verify_with, Prover, Query, DEFAULT_K,
};

fn sizes(arg: Option<String>, default: &[u32]) -> Vec<u32> {
    arg.map(|s| s.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_else(|| default.to_vec())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let kernel_sizes = sizes(args.next(), &[256, 512, 1024]);
    let verify_sizes = sizes(args.next(), &[1024, 2048, 4096]);
    let adapter = block_on(tabnode_pof::gpu::best_adapter(wgpu::Backends::all()))?;
    let info = adapter.get_info();
    println!(
        "adapter: {} ({:?}, {:?})",
        info.name, info.backend, info.device_type
    );
    let gpu = block_on(GpuProver::new(&adapter))?;

    println!("\n| n | WGSL 4x4 GFLOP/s | WGSL 4x8 GFLOP/s | CPU sgemm GFLOP/s | ratio best kernel/sgemm |");
    println!("|---|---|---|---|---|");
    let narrow = gpu.other_kernel(Kernel::Blocked4x4);
    for &n in &kernel_sizes {
        let seed = derive_seed(&[3; 32], b"bench", 0, n);
        let (a, b) = expand(&seed, n)?;
        let reps = (2e9 / flops(n)).clamp(1.0, 20.0) as u32;
        let c_cpu = tabnode_pof::matmul_sgemm(&a, &b, n as usize);
        let mut rates = Vec::new();
        for k in [&narrow, &gpu] {
            // Warm-up (shader compilation, allocation) and exactness.
            let c_gpu = block_on(k.matmul(&a, &b, n))?;
            assert!(c_gpu == c_cpu, "kernel and sgemm disagree at n={n}");
            let t = Instant::now();
            for _ in 0..reps {
                block_on(k.matmul(&a, &b, n))?;
            }
            rates.push(flops(n) * f64::from(reps) / t.elapsed().as_secs_f64() / 1e9);
        }
        let t = Instant::now();
        for _ in 0..reps {
            tabnode_pof::matmul_sgemm(&a, &b, n as usize);
        }
        let s = flops(n) * f64::from(reps) / t.elapsed().as_secs_f64() / 1e9;
        let best = rates[0].max(rates[1]);
        println!(
            "| {n} | {:.2} | {:.2} | {s:.2} | {:.2} |",
            rates[0],
            rates[1],
            best / s
        );
    }

    println!("\n| n | prover on the GPU kernel (matmul + commit + answer) | prover on CPU sgemm | verifier (expand + Freivalds + {DEFAULT_K} rows) | verifier/GPU prover | verifier/CPU prover |");
    println!("|---|---|---|---|---|---|");
    for &n in &verify_sizes {
        let seed = derive_seed(&[4; 32], b"bench", 1, n);
        let (a, b) = expand(&seed, n)?;
        let query = Query {
            nonce: [5; 32],
            k: DEFAULT_K,
        };
        let t = Instant::now();
        let c = block_on(gpu.matmul(&a, &b, n))?;
        let prover = Prover::new(n, &c)?;
        let root = prover.root();
        let answer = prover.answer(&query);
        let prove_s = t.elapsed().as_secs_f64();
        drop(c);
        let t = Instant::now();
        let c = tabnode_pof::matmul_sgemm(&a, &b, n as usize);
        let cpu_prover = Prover::new(n, &c)?;
        let _ = cpu_prover.answer(&query);
        let cpu_s = t.elapsed().as_secs_f64();
        drop((c, cpu_prover));
        let t = Instant::now();
        let (a2, b2) = expand(&seed, n)?;
        verify_with(&a2, &b2, n, &root, &query, &answer)?;
        let verify_s = t.elapsed().as_secs_f64();
        println!(
            "| {n} | {:.2} s ({:.2} GFLOP/s) | {:.2} s ({:.1} GFLOP/s) | {:.3} s | {:.3} | {:.3} |",
            prove_s,
            flops(n) / prove_s / 1e9,
            cpu_s,
            flops(n) / cpu_s / 1e9,
            verify_s,
            verify_s / prove_s,
            verify_s / cpu_s
        );
        drop((a, b));
    }
    Ok(())
}
