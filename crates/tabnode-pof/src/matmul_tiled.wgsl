// Reference kernel for benchmarks: the classic 16×16 shared-memory tiled
// matmul with workgroup barriers. Same buffers and padding as matmul.wgsl.
struct Dims { w: u32, rows: u32, }

@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> c: array<f32>;
@group(0) @binding(3) var<uniform> dims: Dims;

var<workgroup> ta: array<array<f32, 16>, 16>;
var<workgroup> tb: array<array<f32, 16>, 16>;

@compute @workgroup_size(16, 16, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>,
        @builtin(local_invocation_id) lid: vec3<u32>) {
    let n = dims.rows;
    let j = gid.x;
    let i = gid.y;
    var acc = 0.0;
    let tiles = (n + 15u) / 16u;
    for (var t = 0u; t < tiles; t = t + 1u) {
        let ka = t * 16u + lid.x;
        let kb = t * 16u + lid.y;
        ta[lid.y][lid.x] = select(0.0, a[i * n + ka], i < n && ka < n);
        tb[lid.y][lid.x] = select(0.0, b[kb * n + j], kb < n && j < n);
        workgroupBarrier();
        for (var k = 0u; k < 16u; k = k + 1u) {
            acc = acc + ta[lid.y][k] * tb[k][lid.x];
        }
        workgroupBarrier();
    }
    if (i < n && j < n) {
        c[i * n + j] = acc;
    }
}
