// y[y_at + r] = W[r]·x (or += where `acc` is set: a residual) for the
// rows of one weight (or one part of it).
// The two entry points share the binding layout; `DOT`, `BYTES` (a
// block's bytes), `VEC4S` (its values / 4) and `STRIDE` (the rows'
// layout, see blocks.wgsl) are filled in per format and variant.

struct Dims {
    rows: u32,
    blocks: u32,
    row_words: u32,
    x_at: u32,
    y_at: u32,
    acc: u32,
    pad1: u32,
    pad2: u32,
}

@group(0) @binding(0) var<storage, read> w: array<u32>;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<uniform> dims: Dims;

// -- entry points --

// One invocation per row, rows interleaved by eight, no barriers (software
// adapters: an invocation is a SIMD lane of a CPU thread, neighbouring
// lanes then load neighbouring words in one vector load, and a barrier is
// a switch between them; on a GPU, the loads of a warp coalesce).
@compute @workgroup_size(64)
fn rows(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let r = g.x + g.y * nw.x * 64u;
    if (r >= dims.rows) {
        return;
    }
    rbase = (r / 8u) * dims.row_words * 8u + r % 8u;
    var s = 0.0;
    for (var k = 0u; k < dims.blocks; k++) {
        s += DOT(k * BYTES, k * VEC4S);
    }
    if (dims.acc != 0u) {
        s += y[dims.y_at + r];
    }
    y[dims.y_at + r] = s;
}

// 16 invocations per row, four rows per workgroup, the partial sums added
// in workgroup memory (hardware GPUs: neighbouring invocations read
// neighbouring blocks).
const LANES: u32 = 16u;
var<workgroup> partial: array<f32, 64>;

@compute @workgroup_size(64)
fn lanes(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32, @builtin(num_workgroups) nw: vec3<u32>) {
    let lane = li % LANES;
    let r = (wg.x + wg.y * nw.x) * 4u + li / LANES;
    var s = 0.0;
    if (r < dims.rows) {
        rbase = r * dims.row_words;
        for (var k = lane; k < dims.blocks; k += LANES) {
            s += DOT(k * BYTES, k * VEC4S);
        }
    }
    partial[li] = s;
    workgroupBarrier();
    for (var step = LANES / 2u; step > 0u; step >>= 1u) {
        if (lane < step) {
            partial[li] += partial[li + step];
        }
        workgroupBarrier();
    }
    if (lane == 0u && r < dims.rows) {
        var v = partial[li];
        if (dims.acc != 0u) {
            v += y[dims.y_at + r];
        }
        y[dims.y_at + r] = v;
    }
}
