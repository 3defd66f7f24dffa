// C = A·B for row-major f32 matrices padded to a multiple of 4 in both
// dimensions. Each invocation computes a 4×4 block of C in registers from
// vec4 loads: no workgroup memory and no barriers (on SwiftShader a classic
// shared-memory tiled kernel is about 10× slower than this shape).
//
// The challenge's entries are small integers, so every partial sum is exact
// in f32 and the result does not depend on the order of accumulation.

struct Dims {
    // Padded size / 4: vec4s per row.
    w: u32,
    // Padded size: rows.
    rows: u32,
}

@group(0) @binding(0) var<storage, read> a: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> b: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> c: array<vec4<f32>>;
@group(0) @binding(3) var<uniform> dims: Dims;

@compute @workgroup_size(8, 8, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let w = dims.w;
    let col = gid.x;          // vec4 column of C
    let row = gid.y * 4u;     // first of four rows of C
    if (col >= w || row >= dims.rows) {
        return;
    }
    var c0 = vec4<f32>(0.0);
    var c1 = vec4<f32>(0.0);
    var c2 = vec4<f32>(0.0);
    var c3 = vec4<f32>(0.0);
    var ai = row * w;         // index of A[row][0..4]
    var bi = col;             // index of B[0][col*4..col*4+4]
    for (var k = 0u; k < w; k = k + 1u) {
        let a0 = a[ai];
        let a1 = a[ai + w];
        let a2 = a[ai + 2u * w];
        let a3 = a[ai + 3u * w];
        let b0 = b[bi];
        let b1 = b[bi + w];
        let b2 = b[bi + 2u * w];
        let b3 = b[bi + 3u * w];
        c0 = c0 + a0.x * b0 + a0.y * b1 + a0.z * b2 + a0.w * b3;
        c1 = c1 + a1.x * b0 + a1.y * b1 + a1.z * b2 + a1.w * b3;
        c2 = c2 + a2.x * b0 + a2.y * b1 + a2.z * b2 + a2.w * b3;
        c3 = c3 + a3.x * b0 + a3.y * b1 + a3.z * b2 + a3.w * b3;
        ai = ai + 1u;
        bi = bi + 4u * w;
    }
    let ci = row * w + col;
    c[ci] = c0;
    c[ci + w] = c1;
    c[ci + 2u * w] = c2;
    c[ci + 3u * w] = c3;
}
