// Causal attention of one query head per workgroup over the cache's first
// `step.n` positions (the last `window` of them on a windowed layer, when
// `window` is not 0): scaled scores, softmax, the weighted sum of values.

struct Dims {
    heads: u32,
    kv_heads: u32,
    hd: u32,
    context: u32,
    scale: f32,
    window: u32,
    pad1: u32,
    pad2: u32,
}

struct Step {
    pos: u32,
    n: u32,
    pad0: u32,
    pad1: u32,
}

@group(0) @binding(0) var<storage, read> qkv: array<f32>;
@group(0) @binding(1) var<storage, read> k_cache: array<f32>;
@group(0) @binding(2) var<storage, read> v_cache: array<f32>;
@group(0) @binding(3) var<storage, read_write> scores: array<f32>;
@group(0) @binding(4) var<storage, read_write> att: array<f32>;
@group(0) @binding(5) var<uniform> dims: Dims;
@group(0) @binding(6) var<uniform> step: Step;

// Invocations per workgroup: 64 on a GPU; 4 (one SIMD group, so a
// barrier switches nothing) on a software adapter.
const WG: u32 = 64u;

var<workgroup> partial: array<f32, WG>;

fn reduce_max(li: u32, v: f32) -> f32 {
    partial[li] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (li < s) {
            partial[li] = max(partial[li], partial[li + s]);
        }
        workgroupBarrier();
    }
    let r = partial[0];
    workgroupBarrier();
    return r;
}

fn reduce_sum(li: u32, v: f32) -> f32 {
    partial[li] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (li < s) {
            partial[li] += partial[li + s];
        }
        workgroupBarrier();
    }
    let r = partial[0];
    workgroupBarrier();
    return r;
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let h = wg.x;
    let hd = dims.hd;
    let kv_dim = dims.kv_heads * hd;
    let kv = (h / (dims.heads / dims.kv_heads)) * hd;
    let q = h * hd;
    let srow = h * dims.context;
    let first = select(0u, step.n - dims.window, dims.window != 0u && step.n > dims.window);
    var m = -3.0e38;
    for (var p = first + li; p < step.n; p += WG) {
        var s = 0.0;
        let k = p * kv_dim + kv;
        for (var d = 0u; d < hd; d++) {
            s += qkv[q + d] * k_cache[k + d];
        }
        s *= dims.scale;
        scores[srow + p] = s;
        m = max(m, s);
    }
    m = reduce_max(li, m);
    var sum = 0.0;
    for (var p = first + li; p < step.n; p += WG) {
        let e = exp(scores[srow + p] - m);
        scores[srow + p] = e;
        sum += e;
    }
    sum = reduce_sum(li, sum);
    storageBarrier();
    workgroupBarrier();
    for (var d = li; d < hd; d += WG) {
        var o = 0.0;
        for (var p = first; p < step.n; p++) {
            o += scores[srow + p] * v_cache[p * kv_dim + kv + d];
        }
        att[q + d] = o / sum;
    }
}
