// After the q/k/v matvecs: the biases added (qwen2), RoPE on q and k
// (angles from a table made on the CPU), k and v written to the layer's
// cache at the step's position. An invocation per rotated pair.

struct Dims {
    heads: u32,
    kv_heads: u32,
    hd: u32,
    halves: u32,
    has_bias: u32,
    bias_at: u32,
    pad0: u32,
    pad1: u32,
}

struct Step {
    pos: u32,
    n: u32,
    pad0: u32,
    pad1: u32,
}

@group(0) @binding(0) var<storage, read_write> qkv: array<f32>;
@group(0) @binding(1) var<storage, read_write> k_cache: array<f32>;
@group(0) @binding(2) var<storage, read_write> v_cache: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read> table: array<vec2<f32>>;
@group(0) @binding(5) var<uniform> dims: Dims;
@group(0) @binding(6) var<uniform> step: Step;

fn value(i: u32) -> f32 {
    if (dims.has_bias != 0u) {
        return qkv[i] + bias[dims.bias_at + i];
    }
    return qkv[i];
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let half = dims.hd / 2u;
    let pairs = (dims.heads + dims.kv_heads) * half;
    let p = gid.x;
    if (p >= pairs) {
        return;
    }
    let head = p / half;
    let i = p % half;
    var ia = 2u * i;
    var ib = 2u * i + 1u;
    if (dims.halves != 0u) {
        ia = i;
        ib = i + half;
    }
    let base = head * dims.hd;
    let cs = table[step.pos * half + i];
    let a = value(base + ia);
    let b = value(base + ib);
    let ra = a * cs.x - b * cs.y;
    let rb = a * cs.y + b * cs.x;
    let dim = dims.heads * dims.hd;
    let kv_dim = dims.kv_heads * dims.hd;
    if (head < dims.heads) {
        qkv[base + ia] = ra;
        qkv[base + ib] = rb;
        return;
    }
    // A key pair: into the cache, with the value pair at the same place.
    let at = base - dim;
    let row = step.pos * kv_dim;
    k_cache[row + at + ia] = ra;
    k_cache[row + at + ib] = rb;
    v_cache[row + at + ia] = value(dim + kv_dim + at + ia);
    v_cache[row + at + ib] = value(dim + kv_dim + at + ib);
}
