// best[0] = the index of the first largest of the `n` logits (as the CPU's
// greedy sampler picks it): each invocation scans a stride, then a tree
// keeps the larger value, the lower index on ties.

struct Dims {
    n: u32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

@group(0) @binding(0) var<storage, read> v: array<f32>;
@group(0) @binding(1) var<storage, read_write> best: array<u32>;
@group(0) @binding(2) var<uniform> dims: Dims;

// Invocations: 64 on a GPU, 4 (one SIMD group) on a software adapter.
const WG: u32 = 64u;

var<workgroup> bv: array<f32, WG>;
var<workgroup> bi: array<u32, WG>;

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) li: u32) {
    // `at` is unset until the first value: `m` starts as anything finite
    // (WGSL rejects a constant infinity).
    var m = 0.0;
    var at = 0xffffffffu;
    for (var i = li; i < dims.n; i += WG) {
        let x = v[i];
        if (x > m || at == 0xffffffffu) {
            m = x;
            at = i;
        }
    }
    bv[li] = m;
    bi[li] = at;
    workgroupBarrier();
    for (var step = WG / 2u; step > 0u; step >>= 1u) {
        if (li < step) {
            let om = bv[li + step];
            let oi = bi[li + step];
            if (oi != 0xffffffffu && (bi[li] == 0xffffffffu || om > bv[li] || (om == bv[li] && oi < bi[li]))) {
                bv[li] = om;
                bi[li] = oi;
            }
        }
        workgroupBarrier();
    }
    if (li == 0u) {
        best[0] = bi[0];
    }
}
