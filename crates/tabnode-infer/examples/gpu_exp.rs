//! Scratch.
use std::time::Instant;
use futures::executor::block_on;
use tabnode_infer::gpu::{self, Gpu, Variant};
use tabnode_infer::quant::{GgmlType, QTensor};
use tabnode_infer::gguf::Gguf;

fn main() {
    let adapter = block_on(gpu::adapter(wgpu::Backends::all())).unwrap();
    let g = block_on(Gpu::new(&adapter)).unwrap();
    let path = std::env::args().nth(1).unwrap();
    let bytes = std::fs::read(path).unwrap();
    let gg = Gguf::parse(&bytes).unwrap();
    for name in ["blk.0.ffn_gate.weight", "token_embd.weight"] {
        let t = gg.tensor(name).unwrap();
        let ty = GgmlType::from_u32(t.ggml_type).unwrap();
        let (cols, rows) = (t.dims[0] as usize, t.dims[1] as usize);
        let q = QTensor::new(ty, rows, cols, gg.raw(t).unwrap()).unwrap();
        let x = g.vector(cols);
        g.write(&x, &vec![0.5; cols]);
        let y = g.vector(rows);
        for v in [Variant::Rows] {
            let m = g.upload(&q, v).unwrap();
            let op = g.matvec(&m, &x, 0, &y, 0).unwrap();
            let reps = 10;
            let ops: Vec<_> = (0..reps).map(|_| &op).collect();
            block_on(g.run_and_read(&ops, &y, 1)).unwrap();
            let t0 = Instant::now();
            block_on(g.run_and_read(&ops, &y, 1)).unwrap();
            let s = t0.elapsed().as_secs_f64() / reps as f64;
            println!("{name} {ty:?} {rows}x{cols} {v:?}: {:.2} ms, {:.2} GB/s", s * 1e3, q.data().len() as f64 / s / 1e9);
        }
    }
}
