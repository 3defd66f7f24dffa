// The encoder's self-attention over a packed batch: every token sees every
// token of its own text (`spans[t]`: the first and one past the last token
// of t's text) and none of the others', which is what a padded batch with
// its attention mask computes, without the padding's work. An invocation
// per (token, head): one pass over the keys with a running maximum
// (online softmax), its head's HD4 vec4s of output in registers.

struct Dims {
    heads: u32,
    // Width of a token row (heads × head size).
    width: u32,
    scale: f32,
    _a: u32,
}

@group(0) @binding(0) var<storage, read> q: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> k: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> v: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> out: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> spans: array<vec2<u32>>;
@group(0) @binding(5) var<uniform> dims: Dims;
@group(0) @binding(6) var<uniform> batch: Batch;

// Head size / 4 (set when the pipeline is made).
const HD4: u32 = 8u;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let t = id.x / dims.heads;
    let h = id.x % dims.heads;
    if (t >= batch.tokens) {
        return;
    }
    let w4 = dims.width / 4u;
    let at = t * w4 + h * HD4;
    var qv: array<vec4<f32>, HD4>;
    var acc: array<vec4<f32>, HD4>;
    for (var d = 0u; d < HD4; d++) {
        qv[d] = q[at + d] * dims.scale;
        acc[d] = vec4<f32>(0.0);
    }
    var m = -3.0e38;
    var l = 0.0;
    let span = spans[t];
    for (var j = span.x; j < span.y; j++) {
        let ka = j * w4 + h * HD4;
        var s = 0.0;
        for (var d = 0u; d < HD4; d++) {
            s += dot(qv[d], k[ka + d]);
        }
        let top = max(m, s);
        let fade = exp(m - top);
        let p = exp(s - top);
        l = l * fade + p;
        for (var d = 0u; d < HD4; d++) {
            acc[d] = acc[d] * fade + p * v[ka + d];
        }
        m = top;
    }
    for (var d = 0u; d < HD4; d++) {
        out[at + d] = acc[d] / l;
    }
}
