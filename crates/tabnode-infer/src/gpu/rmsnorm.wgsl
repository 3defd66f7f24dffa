// out = x · g / sqrt(mean(x²) + eps), or with `acc` out += that (gemma3's
// norms of the attention's and the FFN's outputs, added to the residual):
// one workgroup, a tree of partial sums.

struct Dims {
    n: u32,
    g_at: u32,
    eps: f32,
    acc: u32,
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
        let v = x[i] * scale * g[dims.g_at + i];
        if (dims.acc != 0u) {
            out[i] += v;
        } else {
            out[i] = v;
        }
    }
}
