//! Kernel benchmark: the quantized matrix-vector product of
//! each weight format at the shapes of SmolLM2-135M (576 → 1536 and back,
//! and the 49,152-row head), with the scalar reference kernels and with the
//! fastest table this CPU runs ([`simd::best`]), in the same run.
//!
//! `cargo run -p tabnode-infer --example kernel_bench [-- MILLISECONDS]`
//!
//! Prints, per format and shape: GB/s of weight blocks read and ns per
//! block for both tables, and the ratio best / scalar; then a prompt's
//! product per format (64 tokens, `matmul`: the four-token kernels), in ns
//! per block and token and multiply-adds per second. Natively the products
//! run on rayon's pool (`RAYON_NUM_THREADS=1` for one core).

use std::time::{Duration, Instant};

use tabnode_infer::quant::check::{random_blocks, Rng, FORMATS};
use tabnode_infer::quant::{matmul_with, matvec_with, simd, Kernels, QTensor, QuantizedActivation};

/// Runs `f` until `budget` has passed (at least 3 times) and returns the
/// fastest time of one run.
fn fastest(budget: Duration, mut f: impl FnMut()) -> Duration {
    let start = Instant::now();
    let mut best = Duration::MAX;
    let mut runs = 0;
    while runs < 3 || start.elapsed() < budget {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed());
        runs += 1;
    }
    best
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let ms: u64 = std::env::args().nth(1).map_or(Ok(300), |s| s.parse())?;
    let budget = Duration::from_millis(ms);
    let best = simd::best();
    println!(
        "kernels: scalar vs {} (one thread, {ms} ms per case)",
        best.name
    );
    println!(
        "{:6} {:>13} {:>10} {:>10} {:>10} {:>10} {:>7}",
        "format", "rows x cols", "scalar GB/s", "ns/block", "best GB/s", "ns/block", "ratio"
    );
    let mut rng = Rng(7);
    for ty in FORMATS {
        for (rows, cols) in [
            (1536usize, 576usize),
            (576, 1536),
            (49152, 512),
            (196608, 576),
        ] {
            if cols % ty.block_size() != 0 {
                continue;
            }
            let blocks = rows * cols / ty.block_size();
            let data = random_blocks(&mut rng, ty, blocks, 0.05);
            let w = QTensor::new(ty, rows, cols, &data)?;
            let x: Vec<f32> = (0..cols).map(|_| rng.unit() * 2.0).collect();
            let act = QuantizedActivation::for_weight(ty, &x)?;
            let mut out = vec![0f32; rows];
            let mut time = |k: &Kernels| -> Result<Duration, Box<dyn std::error::Error>> {
                matvec_with(k, &w, &act, &mut out)?;
                let mut err = None;
                let t = fastest(budget, || {
                    if let Err(e) = matvec_with(k, &w, &act, &mut out) {
                        err = Some(e);
                    }
                });
                err.map_or(Ok(t), |e| Err(e.into()))
            };
            let (s, b) = (time(&simd::SCALAR)?, time(best)?);
            let gbs = |t: Duration| data.len() as f64 / t.as_secs_f64() / 1e9;
            let ns = |t: Duration| t.as_secs_f64() * 1e9 / blocks as f64;
            println!(
                "{:6} {:>13} {:>10.2} {:>10.1} {:>10.2} {:>10.1} {:>7.2}",
                ty.name(),
                format!("{rows}x{cols}"),
                gbs(s),
                ns(s),
                gbs(b),
                ns(b),
                s.as_secs_f64() / b.as_secs_f64()
            );
        }
    }
    // A prompt's matrix product (`matmul`: the four-token kernels where the
    // table has them), 64 tokens against 1024 x 1024 weights: ns per
    // (row, token, block) and multiply-adds per second.
    let tokens = 64usize;
    let (rows, cols) = (1024usize, 1024usize);
    for ty in FORMATS {
        let blocks = rows * cols / ty.block_size();
        let data = random_blocks(&mut rng, ty, blocks, 0.05);
        let w = QTensor::new(ty, rows, cols, &data)?;
        let xs = (0..tokens)
            .map(|_| {
                let x: Vec<f32> = (0..cols).map(|_| rng.unit() * 2.0).collect();
                QuantizedActivation::for_weight(ty, &x)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut out = vec![0f32; rows * tokens];
        let mut time = |k: &Kernels| -> Result<Duration, Box<dyn std::error::Error>> {
            matmul_with(k, &w, &xs, &mut out)?;
            Ok(fastest(budget, || {
                let _ = matmul_with(k, &w, &xs, &mut out);
            }))
        };
        let (s, b) = (time(&simd::SCALAR)?, time(best)?);
        let ns = |t: Duration| t.as_secs_f64() * 1e9 / (blocks * tokens) as f64;
        let gmacs = |t: Duration| (rows * cols * tokens) as f64 / t.as_secs_f64() / 1e9;
        println!(
            "{:6} prompt of {tokens}, {rows}x{cols}: scalar {:.2} ns/block/token ({:.1} GMAC/s), {} {:.2} ({:.1} GMAC/s), ratio {:.2}",
            ty.name(),
            ns(s),
            gmacs(s),
            best.name,
            ns(b),
            gmacs(b),
            s.as_secs_f64() / b.as_secs_f64()
        );
    }
    // The attention's f32 kernels: one query head (64 values) against 256
    // cached positions of a layer's keys and values (stride 192 = 3 KV
    // heads), as in a decode step at position 256.
    let (hd, stride, n) = (64usize, 192usize, 256usize);
    let cache: Vec<f32> = (0..n * stride).map(|_| rng.unit()).collect();
    let q: Vec<f32> = (0..hd).map(|_| rng.unit()).collect();
    let w: Vec<f32> = (0..n).map(|_| rng.unit() / n as f32).collect();
    for (name, run) in [("f32_dots", 0usize), ("f32_weighted_sum", 1)] {
        let time = |k: &Kernels| {
            let mut out = vec![0f32; if run == 0 { n } else { hd }];
            fastest(budget, || {
                if run == 0 {
                    (k.f32_dots)(&q, &cache, stride, &mut out);
                } else {
                    (k.f32_weighted_sum)(&w, &cache, stride, &mut out);
                }
            })
        };
        let (s, b) = (time(&simd::SCALAR), time(best));
        println!(
            "{name:16} {hd} x {n} positions: scalar {:.2} us, {} {:.2} us, ratio {:.2}",
            s.as_secs_f64() * 1e6,
            best.name,
            b.as_secs_f64() * 1e6,
            s.as_secs_f64() / b.as_secs_f64()
        );
    }
    Ok(())
}
