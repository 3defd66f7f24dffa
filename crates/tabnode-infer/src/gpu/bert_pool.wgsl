// Sentence vectors: the mean of each text's token rows (`seqs[s]`: its
// first and one past its last token), an invocation per (text, value);
// `unit` then scales each text's vector to unit length, an invocation per
// text. (One invocation per text summing all its values gave wrong
// vectors on lavapipe past ~167 tokens × 384 values; these loops stay
// short.)

struct Dims {
    width: u32,
    _a: u32,
    _b: u32,
    _c: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> seqs: array<vec2<u32>>;
@group(0) @binding(3) var<uniform> dims: Dims;
@group(0) @binding(4) var<uniform> batch: Batch;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let n = dims.width;
    let s = id.x / n;
    let d = id.x % n;
    if (s >= batch.seqs) {
        return;
    }
    let span = seqs[s];
    var sum = 0.0;
    for (var t = span.x; t < span.y; t++) {
        sum += x[t * n + d];
    }
    out[s * n + d] = sum / f32(span.y - span.x);
}
