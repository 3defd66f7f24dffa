// Each text's sentence vector scaled to unit length, an invocation per
// text (after `bert_pool.wgsl`).

struct Dims {
    width: u32,
    _a: u32,
    _b: u32,
    _c: u32,
}

@group(0) @binding(0) var<storage, read_write> out: array<f32>;
@group(0) @binding(1) var<uniform> dims: Dims;
@group(0) @binding(2) var<uniform> batch: Batch;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let s = id.x;
    if (s >= batch.seqs) {
        return;
    }
    let n = dims.width;
    var norm = 0.0;
    for (var d = 0u; d < n; d++) {
        norm += out[s * n + d] * out[s * n + d];
    }
    let inv = 1.0 / max(sqrt(norm), 1e-12);
    for (var d = 0u; d < n; d++) {
        out[s * n + d] *= inv;
    }
}
