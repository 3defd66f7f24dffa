// RMSNorm of each query and key head in place (gemma3), before RoPE: a
// workgroup per head, the query heads with one weight and the key heads
// (after them in `qkv`) with another.

struct Dims {
    hd: u32,
    q_heads: u32,
    q_at: u32,
    k_at: u32,
    eps: f32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

@group(0) @binding(0) var<storage, read_write> qkv: array<f32>;
@group(0) @binding(1) var<storage, read> g: array<f32>;
@group(0) @binding(2) var<uniform> dims: Dims;

// Invocations per workgroup: 64 on a GPU; 4 (one SIMD group, so a
// barrier switches nothing) on a software adapter.
const WG: u32 = 64u;

var<workgroup> partial: array<f32, WG>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let base = wg.x * dims.hd;
    var s = 0.0;
    for (var i = li; i < dims.hd; i += WG) {
        let v = qkv[base + i];
        s += v * v;
    }
    partial[li] = s;
    workgroupBarrier();
    for (var step = WG / 2u; step > 0u; step >>= 1u) {
        if (li < step) {
            partial[li] += partial[li + step];
        }
        workgroupBarrier();
    }
    let scale = 1.0 / sqrt(partial[0] / f32(dims.hd) + dims.eps);
    let at = select(dims.k_at, dims.q_at, wg.x < dims.q_heads);
    for (var i = li; i < dims.hd; i += WG) {
        qkv[base + i] = qkv[base + i] * scale * g[at + i];
    }
}
