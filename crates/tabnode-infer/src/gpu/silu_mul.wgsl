// gu[i] = SiLU(gu[i]) · gu[n + i] for i < n: the gate and up projections
// side by side in one buffer (one matvec writes both); with `gelu`,
// GELU's tanh form (gemma3) instead of SiLU.

struct Dims {
    n: u32,
    gelu: u32,
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
    if (dims.gelu != 0u) {
        // tanh's argument bounded: some implementations compute tanh as
        // sinh / cosh, which gives NaN past about 89.
        let y = clamp(0.7978846 * v * (1.0 + 0.044715 * v * v), -15.0, 15.0);
        gu[i] = 0.5 * v * (1.0 + tanh(y)) * gu[dims.n + i];
    } else {
        gu[i] = v / (1.0 + exp(-v)) * gu[dims.n + i];
    }
}
