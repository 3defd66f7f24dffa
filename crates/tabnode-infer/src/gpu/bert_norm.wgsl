// LayerNorm of each of the batch's token rows, in place:
// x = (x - mean) / sqrt(var + eps) · g + b. An invocation per token (the
// rows are short: no reduction across invocations, no barrier).

struct Dims {
    width: u32,
    eps: f32,
    _a: u32,
    _b: u32,
}

@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@group(0) @binding(1) var<storage, read> g: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<uniform> dims: Dims;
@group(0) @binding(4) var<uniform> batch: Batch;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let t = id.x;
    if (t >= batch.tokens) {
        return;
    }
    let n = dims.width;
    let at = t * n;
    var sum = 0.0;
    for (var i = 0u; i < n; i++) {
        sum += x[at + i];
    }
    let mean = sum / f32(n);
    var sq = 0.0;
    for (var i = 0u; i < n; i++) {
        let d = x[at + i] - mean;
        sq += d * d;
    }
    let inv = 1.0 / sqrt(sq / f32(n) + dims.eps);
    for (var i = 0u; i < n; i++) {
        x[at + i] = (x[at + i] - mean) * inv * g[i] + b[i];
    }
}
