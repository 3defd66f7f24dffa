// gu[i] = SiLU(gu[i]) · gu[n + i] for i < n: the gate and up projections
// side by side in one buffer (one matvec writes both).

struct Dims {
    n: u32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

@group(0) @binding(0) var<storage, read_write> gu: array<f32>;
@group(0) @binding(1) var<uniform> dims: Dims;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i >= dims.n) {
        return;
    }
    let v = gu[i];
    gu[i] = v / (1.0 + exp(-v)) * gu[dims.n + i];
}
