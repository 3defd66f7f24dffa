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
//! table with the scalar one ([`tabnode_infer::quant::check::check`]);
//! `model_buffer(len)`, `model_load()` and `model_steps(n)` run the whole
//! CPU model (the tab's engine) on a GGUF file written into memory, so a
//! decode step can be timed and profiled (`node --cpu-prof`).

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

/// The model file's bytes, written by the caller before [`model_load`].
static FILE: Mutex<Vec<u8>> = Mutex::new(Vec::new());
thread_local! {
    /// The loaded model (leaked: it lives as long as the module). Thread
    /// local: in wasm the model is not `Sync` (its shard exchange runs on
    /// one thread), and the module has one thread.
    static MODEL: std::cell::Cell<Option<&'static tabnode_infer::cpu::CpuModel>> =
        const { std::cell::Cell::new(None) };
}

/// Makes room for a `len`-byte model file and returns where to write it in
/// the module's memory (0 on failure).
#[cfg_attr(target_arch = "wasm32", wasm_bindgen::prelude::wasm_bindgen)]
pub fn model_buffer(len: u32) -> usize {
    match FILE.lock() {
        Ok(mut f) => {
            *f = vec![0; len as usize];
            f.as_ptr() as usize
        }
        Err(_) => 0,
    }
}

/// Loads the model from the written bytes; 0 on success.
#[cfg_attr(target_arch = "wasm32", wasm_bindgen::prelude::wasm_bindgen)]
pub fn model_load() -> u32 {
    let Ok(mut f) = FILE.lock() else {
        return 1;
    };
    let Ok(model) = tabnode_infer::cpu::CpuModel::from_bytes(std::mem::take(&mut *f)) else {
        return 2;
    };
    MODEL.with(|m| m.set(Some(Box::leak(Box::new(model)))));
    0
}

/// Feeds a `prompt`-token prompt, then `steps` greedy decode steps (one
/// token each) in a fresh session; returns the last token (`u32::MAX` on
/// error).
#[cfg_attr(target_arch = "wasm32", wasm_bindgen::prelude::wasm_bindgen)]
pub fn model_steps(prompt: u32, steps: u32) -> u32 {
    let Some(model) = MODEL.with(std::cell::Cell::get) else {
        return u32::MAX;
    };
    let mut session = model.session();
    let tokens: Vec<u32> = (0..prompt).map(|i| 100 + i).collect();
    let Ok(mut logits) = session.prefill(&tokens) else {
        return u32::MAX;
    };
    let mut token = 0;
    for _ in 0..steps {
        token = tabnode_infer::reference::argmax(&logits);
        match session.step(token) {
            Ok(l) => logits = l,
            Err(_) => return u32::MAX,
        }
    }
    token
}
