// The BERT encoder's dense layers: y[t][r] = x[t]·w[r] + b[r] for the
// batch's tokens, or y[t][r] += that (`acc`: a residual connection). `w` is
// the f32 weight, [rows][cols] row-major. Each invocation computes a block
// of 4 tokens by 4 rows from vec4 loads along the rows: no workgroup
// memory and no barrier, so a software adapter (a CPU) runs it at the
// speed of its caches and a GPU at the speed of its L1/L2.

struct Dims {
    rows: u32,
    // Values per row / 4.
    cols4: u32,
    acc: u32,
    _pad: u32,
}

struct Batch {
    tokens: u32,
    seqs: u32,
    _a: u32,
    _b: u32,
}

@group(0) @binding(0) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> w: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<uniform> dims: Dims;
@group(0) @binding(5) var<uniform> batch: Batch;

@compute @workgroup_size(8, 8)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let r0 = id.x * 4u;
    let t0 = id.y * 4u;
    if (r0 >= dims.rows || t0 >= batch.tokens) {
        return;
    }
    let n = dims.cols4;
    // Past the last token or row, the last one is read again (and not
    // written): no branch in the loop.
    let lt = batch.tokens - 1u;
    let lr = dims.rows - 1u;
    let xa = vec4<u32>(t0, min(t0 + 1u, lt), min(t0 + 2u, lt), min(t0 + 3u, lt)) * n;
    let wa = vec4<u32>(r0, min(r0 + 1u, lr), min(r0 + 2u, lr), min(r0 + 3u, lr)) * n;
    var a0 = vec4<f32>(0.0);
    var a1 = vec4<f32>(0.0);
    var a2 = vec4<f32>(0.0);
    var a3 = vec4<f32>(0.0);
    for (var k = 0u; k < n; k++) {
        let w0 = w[wa.x + k];
        let w1 = w[wa.y + k];
        let w2 = w[wa.z + k];
        let w3 = w[wa.w + k];
        let x0 = x[xa.x + k];
        let x1 = x[xa.y + k];
        let x2 = x[xa.z + k];
        let x3 = x[xa.w + k];
        a0 += vec4<f32>(dot(x0, w0), dot(x0, w1), dot(x0, w2), dot(x0, w3));
        a1 += vec4<f32>(dot(x1, w0), dot(x1, w1), dot(x1, w2), dot(x1, w3));
        a2 += vec4<f32>(dot(x2, w0), dot(x2, w1), dot(x2, w2), dot(x2, w3));
        a3 += vec4<f32>(dot(x3, w0), dot(x3, w1), dot(x3, w2), dot(x3, w3));
    }
    let rows = array<vec4<f32>, 4>(a0, a1, a2, a3);
    for (var i = 0u; i < 4u; i++) {
        let t = t0 + i;
        if (t >= batch.tokens) {
            break;
        }
        let row = rows[i];
        for (var j = 0u; j < 4u; j++) {
            let r = r0 + j;
            if (r >= dims.rows) {
                break;
            }
            let v = row[j] + b[r];
            let at = t * dims.rows + r;
            if (dims.acc != 0u) {
                y[at] += v;
            } else {
                y[at] = v;
            }
        }
    }
}
