// g = SiLU(g) · u.

@group(0) @binding(0) var<storage, read_write> g: array<f32>;
@group(0) @binding(1) var<storage, read> u: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i >= arrayLength(&u)) {
        return;
    }
    let v = g[i];
    g[i] = v / (1.0 + exp(-v)) * u[i];
}
