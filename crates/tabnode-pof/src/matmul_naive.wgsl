// Reference kernel for benchmarks: one invocation per element of C, scalar
// loads straight from storage. Same buffers and padding as matmul.wgsl.
struct Dims { w: u32, rows: u32, }

@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> c: array<f32>;
@group(0) @binding(3) var<uniform> dims: Dims;

@compute @workgroup_size(8, 8, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let n = dims.rows;
    let j = gid.x;
    let i = gid.y;
    if (i >= n || j >= n) {
        return;
    }
    var acc = 0.0;
    for (var k = 0u; k < n; k = k + 1u) {
        acc = acc + a[i * n + k] * b[k * n + j];
    }
    c[i * n + j] = acc;
}
