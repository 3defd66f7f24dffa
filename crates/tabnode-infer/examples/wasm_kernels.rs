//! The quantized kernels as a bare wasm module, for timing them in V8
//! without a browser (`node e2e/bench/wasm_kernels.mjs`, which builds this
//! with `cargo build --release --target wasm32-unknown-unknown -p
//! tabnode-infer --example wasm_kernels`). Natively it builds as an empty
//! library.
//!
//! Exports: `setup(format, rows, cols)` makes a random matrix of a weight
//! format (index into [`FORMATS`]) and activations; `run(table, reps)` runs
//! the matrix-vector product `reps` times with the scalar (0) or the best
//! (1) kernel table and returns a checksum; `check()` compares the best
//! table with the scalar one ([`tabnode_infer::quant::check::check`]).

use std::sync::Mutex;

use tabnode_infer::quant::check::{random_blocks, Rng, FORMATS};
use tabnode_infer::quant::{matvec_with, simd, QTensor, QuantizedActivation};

struct Case {
    ty: tabnode_infer::quant::GgmlType,
    rows: usize,
    cols: usize,
    data: Vec<u8>,
    act: QuantizedActivation,
    out: Vec<f32>,
}

static CASE: Mutex<Option<Case>> = Mutex::new(None);

/// Prepares a `rows × cols` matrix of `FORMATS[format]`; 0 on success.
#[cfg_attr(target_arch = "wasm32", wasm_bindgen::prelude::wasm_bindgen)]
pub fn setup(format: u32, rows: u32, cols: u32) -> u32 {
    let Some(&ty) = FORMATS.get(format as usize) else {
        return 1;
    };
    let (rows, cols) = (rows as usize, cols as usize);
    let mut rng = Rng(11);
    let data = random_blocks(&mut rng, ty, rows * cols / ty.block_size(), 0.05);
    let x: Vec<f32> = (0..cols).map(|_| rng.unit() * 2.0).collect();
    let Ok(act) = QuantizedActivation::for_weight(ty, &x) else {
        return 2;
    };
    if let Ok(mut c) = CASE.lock() {
        *c = Some(Case {
            ty,
            rows,
            cols,
            data,
            act,
            out: vec![0.0; rows],
        });
        0
    } else {
        3
    }
}

/// Runs the prepared product `reps` times with the scalar (`table` 0) or
/// best (1) kernels; returns the sum of the last outputs (NaN on error).
#[cfg_attr(target_arch = "wasm32", wasm_bindgen::prelude::wasm_bindgen)]
pub fn run(table: u32, reps: u32) -> f32 {
    let Ok(mut guard) = CASE.lock() else {
        return f32::NAN;
    };
    let Some(c) = guard.as_mut() else {
        return f32::NAN;
    };
    let k = if table == 0 {
        &simd::SCALAR
    } else {
        simd::best()
    };
    let Ok(w) = QTensor::new(c.ty, c.rows, c.cols, &c.data) else {
        return f32::NAN;
    };
    for _ in 0..reps {
        if matvec_with(k, &w, &c.act, &mut c.out).is_err() {
            return f32::NAN;
        }
    }
    c.out.iter().sum()
}

/// The results [`check`](tabnode_infer::quant::check::check) compared for
/// the best table (0 if it differs from the scalar one; the SIMD128 table
/// is then not what `best()` hands out either).
#[cfg_attr(target_arch = "wasm32", wasm_bindgen::prelude::wasm_bindgen)]
pub fn check() -> u32 {
    let kernels = simd::available();
    kernels
        .last()
        .and_then(|k| tabnode_infer::quant::check::check(k, 0x5eed).ok())
        .map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX))
}
