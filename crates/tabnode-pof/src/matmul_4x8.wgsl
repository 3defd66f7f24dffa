// C = A·B, each invocation a 4×8 block of C (two vec4 columns) in
// registers: more reuse of each loaded A vector than 4×4. Requires the
// padded size to be a multiple of 8. No workgroup memory, no barriers.
struct Dims { w: u32, rows: u32, }

@group(0) @binding(0) var<storage, read> a: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> b: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> c: array<vec4<f32>>;
@group(0) @binding(3) var<uniform> dims: Dims;

@compute @workgroup_size(8, 8, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let w = dims.w;
    let col = gid.x * 2u;
    let row = gid.y * 4u;
    if (col >= w || row >= dims.rows) {
        return;
    }
    var c00 = vec4<f32>(0.0); var c01 = vec4<f32>(0.0);
    var c10 = vec4<f32>(0.0); var c11 = vec4<f32>(0.0);
    var c20 = vec4<f32>(0.0); var c21 = vec4<f32>(0.0);
    var c30 = vec4<f32>(0.0); var c31 = vec4<f32>(0.0);
    var ai = row * w;
    var bi = col;
    for (var k = 0u; k < w; k = k + 1u) {
        let a0 = a[ai];
        let a1 = a[ai + w];
        let a2 = a[ai + 2u * w];
        let a3 = a[ai + 3u * w];
        let b00 = b[bi];          let b01 = b[bi + 1u];
        let b10 = b[bi + w];      let b11 = b[bi + w + 1u];
        let b20 = b[bi + 2u * w]; let b21 = b[bi + 2u * w + 1u];
        let b30 = b[bi + 3u * w]; let b31 = b[bi + 3u * w + 1u];
        c00 = c00 + a0.x * b00 + a0.y * b10 + a0.z * b20 + a0.w * b30;
        c01 = c01 + a0.x * b01 + a0.y * b11 + a0.z * b21 + a0.w * b31;
        c10 = c10 + a1.x * b00 + a1.y * b10 + a1.z * b20 + a1.w * b30;
        c11 = c11 + a1.x * b01 + a1.y * b11 + a1.z * b21 + a1.w * b31;
        c20 = c20 + a2.x * b00 + a2.y * b10 + a2.z * b20 + a2.w * b30;
        c21 = c21 + a2.x * b01 + a2.y * b11 + a2.z * b21 + a2.w * b31;
        c30 = c30 + a3.x * b00 + a3.y * b10 + a3.z * b20 + a3.w * b30;
        c31 = c31 + a3.x * b01 + a3.y * b11 + a3.z * b21 + a3.w * b31;
        ai = ai + 1u;
        bi = bi + 4u * w;
    }
    let ci = row * w + col;
    c[ci] = c00;           c[ci + 1u] = c01;
    c[ci + w] = c10;       c[ci + w + 1u] = c11;
    c[ci + 2u * w] = c20;  c[ci + 2u * w + 1u] = c21;
    c[ci + 3u * w] = c30;  c[ci + 3u * w + 1u] = c31;
}
