// The candidates of a draw (`sample::Top`): each invocation ranks one part
// of the `n` logits (every `parts`-th one: a vocabulary's likely tokens
// crowd its low ids, and neighbouring invocations read neighbouring words)
// and writes, at STRIDE words per part, its KEEP best ids
// (larger logit first, then the lower id), their logits, how many it kept,
// the largest logit it left out (-inf when none) and Σ exp((l − best) / T)
// over its part. Non-finite logits are skipped, as the CPU sampler does.

struct Dims {
    n: u32,
    parts: u32,
    temperature: f32,
    pad: u32,
}

@group(0) @binding(0) var<storage, read> v: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<u32>;
@group(0) @binding(2) var<uniform> dims: Dims;

const KEEP: u32 = 16u;
const STRIDE: u32 = 36u;
const NEG_INF_BITS: u32 = 0xff800000u;

fn finite(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u;
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let p = gid.x;
    if (p >= dims.parts) {
        return;
    }
    var ids: array<u32, KEEP>;
    var vals: array<f32, KEEP>;
    var count = 0u;
    // The largest value left out; `left` until there is one.
    var low = 0.0;
    var left = false;
    for (var i = p; i < dims.n; i += dims.parts) {
        let x = v[i];
        if (!finite(x)) {
            continue;
        }
        if (count == KEEP) {
            let last = vals[KEEP - 1u];
            if (x <= last) {
                if (!left || x > low) {
                    low = x;
                    left = true;
                }
                continue;
            }
            if (!left || last > low) {
                low = last;
                left = true;
            }
        } else {
            count += 1u;
        }
        // After every kept value ≥ x (ids ascend with i).
        var k = count - 1u;
        loop {
            if (k == 0u || vals[k - 1u] >= x) {
                break;
            }
            vals[k] = vals[k - 1u];
            ids[k] = ids[k - 1u];
            k -= 1u;
        }
        vals[k] = x;
        ids[k] = i;
    }
    var s = 0.0;
    if (count > 0u) {
        let best = vals[0];
        for (var i = p; i < dims.n; i += dims.parts) {
            let x = v[i];
            if (finite(x)) {
                s += exp((x - best) / dims.temperature);
            }
        }
    }
    let at = p * STRIDE;
    for (var k = 0u; k < KEEP; k++) {
        out[at + k] = ids[k];
        out[at + KEEP + k] = bitcast<u32>(vals[k]);
    }
    out[at + 2u * KEEP] = count;
    out[at + 2u * KEEP + 1u] = select(NEG_INF_BITS, bitcast<u32>(low), left);
    out[at + 2u * KEEP + 2u] = bitcast<u32>(s);
    out[at + 2u * KEEP + 3u] = 0u;
}
