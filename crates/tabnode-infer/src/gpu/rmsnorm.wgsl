// out = x · g / sqrt(mean(x²) + eps): one workgroup, a tree of partial sums.

struct Dims {
    n: u32,
    g_at: u32,
    eps: f32,
    pad: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> g: array<f32>;
@group(0) @binding(3) var<uniform> dims: Dims;

// Invocations per workgroup: 64 on a GPU; 4 (one SIMD group, so a
// barrier switches nothing) on a software adapter.
const WG: u32 = 64u;

var<workgroup> partial: array<f32, WG>;

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) li: u32) {
    var s = 0.0;
    for (var i = li; i < dims.n; i += WG) {
        s += x[i] * x[i];
    }
    partial[li] = s;
    workgroupBarrier();
    for (var step = WG / 2u; step > 0u; step >>= 1u) {
        if (li < step) {
            partial[li] += partial[li + step];
        }
        workgroupBarrier();
    }
    let scale = 1.0 / sqrt(partial[0] / f32(dims.n) + dims.eps);
    for (var i = li; i < dims.n; i += WG) {
        out[i] = x[i] * scale * g[dims.g_at + i];
    }
}
