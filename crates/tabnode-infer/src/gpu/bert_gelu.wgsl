// Exact GELU in place, x·Φ(x) = x/2·(1 + erf(x/√2)), erf by Abramowitz and
// Stegun's 7.1.26 (within 1.5·10⁻⁷ of it; the CPU encoder's formula), four
// values an invocation over the batch's tokens × `width4` vec4s.

struct Dims {
    width4: u32,
    _pad: u32,
    _a: u32,
    _b: u32,
}

@group(0) @binding(0) var<storage, read_write> x: array<vec4<f32>>;
@group(0) @binding(1) var<uniform> dims: Dims;
@group(0) @binding(2) var<uniform> batch: Batch;

const P: f32 = 0.3275911;
const A1: f32 = 0.2548296;
const A2: f32 = -0.28449674;
const A3: f32 = 1.4214137;
const A4: f32 = -1.4531521;
const A5: f32 = 1.0614054;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let i = id.x;
    if (i >= batch.tokens * dims.width4) {
        return;
    }
    let v = x[i];
    let z = abs(v) * 0.70710678;
    let t = 1.0 / (1.0 + P * z);
    let poly = t * (A1 + t * (A2 + t * (A3 + t * (A4 + t * A5))));
    let erf = sign(v) * (1.0 - poly * exp(-z * z));
    x[i] = 0.5 * v * (1.0 + erf);
}
