// The BERT encoder's dense layers: y[t][r] = x[t]·w[r] + b[r] for the
// batch's tokens, or y[t][r] += that (`acc`: a residual connection). The
// weight is uploaded transposed, as vec4s of four rows' values at one
// column (`wt[k][r4]`), so neighbouring invocations (neighbouring groups
// of four rows) read neighbouring memory: coalesced on a GPU, whole
// vector loads on a software adapter's SIMD lanes. Each invocation
// computes 4 tokens by 4 rows; no workgroup memory, no barrier.

struct Dims {
    // Rows / 4.
    rows4: u32,
    // Values per row / 4.
    cols4: u32,
    acc: u32,
    _pad: u32,
}

@group(0) @binding(0) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> wt: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> b: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> y: array<vec4<f32>>;
@group(0) @binding(4) var<uniform> dims: Dims;
@group(0) @binding(5) var<uniform> batch: Batch;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let r4 = id.x;
    let t0 = id.y * 4u;
    if (r4 >= dims.rows4 || t0 >= batch.tokens) {
        return;
    }
    let n = dims.cols4;
    let m = dims.rows4;
    // Past the last token, the last one is read again (and not written):
    // no branch in the loop.
    let lt = batch.tokens - 1u;
    let xa = vec4<u32>(t0, min(t0 + 1u, lt), min(t0 + 2u, lt), min(t0 + 3u, lt)) * n;
    var a0 = vec4<f32>(0.0);
    var a1 = vec4<f32>(0.0);
    var a2 = vec4<f32>(0.0);
    var a3 = vec4<f32>(0.0);
    for (var k = 0u; k < n; k++) {
        let at = 4u * k * m + r4;
        let w0 = wt[at];
        let w1 = wt[at + m];
        let w2 = wt[at + 2u * m];
        let w3 = wt[at + 3u * m];
        let x0 = x[xa.x + k];
        let x1 = x[xa.y + k];
        let x2 = x[xa.z + k];
        let x3 = x[xa.w + k];
        a0 += x0.x * w0 + x0.y * w1 + x0.z * w2 + x0.w * w3;
        a1 += x1.x * w0 + x1.y * w1 + x1.z * w2 + x1.w * w3;
        a2 += x2.x * w0 + x2.y * w1 + x2.z * w2 + x2.w * w3;
        a3 += x3.x * w0 + x3.y * w1 + x3.z * w2 + x3.w * w3;
    }
    let out = array<vec4<f32>, 4>(a0, a1, a2, a3);
    let bias = b[r4];
    for (var i = 0u; i < 4u; i++) {
        let t = t0 + i;
        if (t >= batch.tokens) {
            break;
        }
        let at = t * m + r4;
        if (dims.acc != 0u) {
            y[at] += out[i] + bias;
        } else {
            y[at] = out[i] + bias;
        }
    }
}
