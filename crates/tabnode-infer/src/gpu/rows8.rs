//! The barrier-free matvec for software adapters, eight rows per
//! invocation, generated per format. On SwiftShader every storage load is
//! a per-lane gather decided when the shader is compiled (no run-time fast
//! path for neighbouring addresses), and every shift is split into scalar
//! shifts by its JIT; so each activation vec4 loaded serves eight rows, and
//! nibbles are taken with masks alone: `q & 0xF00` is nibble·2⁸, converted
//! exactly and multiplied by the activation scaled by 2⁻⁸ (exact too). The
//! eight rows are one group of the interleaved layout (`blocks.wgsl`):
//! word `j` of row `r` of the group at `base + 8j + r`.

use crate::quant::GgmlType;

/// Rows per invocation (= the layout's interleave).
pub(super) const ROWS: usize = 8;

/// The entry point `rows` for `ty`, if this file has one for it.
pub(super) fn source(ty: GgmlType) -> Option<String> {
    match ty {
        GgmlType::Q4_1 => Some(q4_1()),
        GgmlType::Q8_0 => Some(q8_0()),
        _ => None,
    }
}

/// What every format's kernel shares: the group's rows, their sums, the
/// store (added to `y` where `acc` is set).
fn kernel(words_per_block: usize, block: &str) -> String {
    kernel_step(words_per_block, 1, block, "")
}

/// [`kernel`] reading `blocks_per_step` blocks (`words_per_step` words of
/// a row) per step, then `tail` for the blocks left over (outside the
/// loop: SwiftShader runs both sides of every `if`).
fn kernel_step(words_per_step: usize, blocks_per_step: usize, block: &str, tail: &str) -> String {
    let mut acc = String::new();
    let mut store = String::new();
    for r in 0..ROWS {
        acc.push_str(&format!("    var acc{r} = 0.0;\n"));
        store.push_str(&format!(
            "    if (r0 + {r}u < dims.rows) {{\n        var v = acc{r};\n        if (dims.acc != 0u) {{\n            v += y[dims.y_at + r0 + {r}u];\n        }}\n        y[dims.y_at + r0 + {r}u] = v;\n    }}\n"
        ));
    }
    format!(
        r#"
const LO = vec4<u32>(0xFu, 0xF00u, 0xF0000u, 0xF000000u);
const HI = vec4<u32>(0xF0u, 0xF000u, 0xF00000u, 0xF0000000u);
const SL = vec4<f32>(1.0, 1.0 / 256.0, 1.0 / 65536.0, 1.0 / 16777216.0);
const SH = SL * 0.0625;
// Q8_0: the low three bytes' sign bits flipped (value + 128, positive) and
// the bytes masked in place; the top byte keeps its sign as an i32.
const FLIP = 0x00808080u;
const B8 = vec4<u32>(0xFFu, 0xFF00u, 0xFF0000u, 0xFF000000u);

@compute @workgroup_size(8)
fn rows(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {{
    let grp = g.x + g.y * nw.x * 8u;
    let r0 = grp * {ROWS}u;
    if (r0 >= dims.rows) {{
        return;
    }}
    let base = grp * dims.row_words * {ROWS}u;
{acc}    var k = 0u;
    loop {{
        if (k + {last}u >= dims.blocks) {{
            break;
        }}
        let wb = base + (k / {bps}u) * {wps}u;
        let xb = dims.x_at + k * 8u;
{block}
        continuing {{
            k += {bps}u;
        }}
    }}
    if (k < dims.blocks) {{
        let wb = base + (k / {bps}u) * {wps}u;
        let xb = dims.x_at + k * 8u;
{tail}    }}
{store}}}
"#,
        last = blocks_per_step - 1,
        bps = blocks_per_step,
        wps = words_per_step * ROWS,
    )
}

/// Q4_1: word 0 the f16 pair (d, m), words 1..5 the nibbles (element j
/// low, j + 16 high).
fn q4_1() -> String {
    let mut b = String::from("        var sx = vec4<f32>(0.0);\n");
    for r in 0..ROWS {
        b.push_str(&format!("        var s{r} = 0.0;\n"));
    }
    for i in 0..4 {
        b.push_str(&format!(
            "        {{\n            let xl = x[xb + {i}u];\n            let xh = x[xb + {}u];\n            sx += xl + xh;\n            let xls = xl * SL;\n            let xhs = xh * SH;\n",
            4 + i
        ));
        for r in 0..ROWS {
            b.push_str(&format!(
                "            {{\n                let q = vec4<u32>(w[wb + {}u]);\n                s{r} += dot(vec4<f32>(bitcast<vec4<i32>>(q & LO)), xls) + dot(vec4<f32>(q & HI), xhs);\n            }}\n",
                (1 + i) * ROWS + r
            ));
        }
        b.push_str("        }\n");
    }
    b.push_str("        let sxs = (sx.x + sx.y) + (sx.z + sx.w);\n");
    for r in 0..ROWS {
        b.push_str(&format!(
            "        {{\n            let dm = unpack2x16float(w[wb + {r}u]);\n            acc{r} += dm.x * s{r} + dm.y * sxs;\n        }}\n"
        ));
    }
    kernel(5, &b)
}

/// The i32-exact values of a Q8_0 word's bytes in place (the low three
/// plus 128), dotted with activations scaled by `SL`.
fn q8_word(word: &str, xs: &str) -> String {
    format!("dot(vec4<f32>(bitcast<vec4<i32>>(vec4<u32>({word} ^ FLIP) & B8)), {xs})")
}

/// Q8_0 two blocks at a time (68 bytes, 17 words): block A from a word
/// boundary (f16 d and elements 0, 1 in word 0, elements 2..30 across
/// words 1..8, 30 and 31 in the low half of word 8), block B from the
/// high half of word 8 (its d), its 32 values in words 9..17 aligned. A
/// trailing odd block is block A alone.
fn q8_0() -> String {
    // Block A's and B's dot products per row, given `wb` (the pair's first
    // word, row 0) and the activations X0..X15.
    let pair = |with_b: bool| {
        let mut b = String::new();
        let n = if with_b { 16 } else { 8 };
        for i in 0..n {
            b.push_str(&format!("            let x{i} = x[xb + {i}u];\n"));
        }
        // Shifted activations for A's words 1..8: elements 2+4i..6+4i.
        for i in 0..7 {
            b.push_str(&format!(
                "            let a{i} = vec4<f32>(x{i}.zw, x{}.xy) * SL;\n",
                i + 1
            ));
        }
        b.push_str("            let a_head = vec4<f32>(0.0, 0.0, x0.x * SL.z, x0.y * SL.w);\n");
        b.push_str("            let a_tail = vec4<f32>(x7.z, x7.w * SL.y, 0.0, 0.0);\n");
        // 128 × the flipped activations' sum.
        let mut ca = String::from("x0.x + (x7.z + x7.w)");
        for i in 0..7 {
            ca.push_str(&format!(" + (x{i}.z + x{i}.w + x{}.x)", i + 1));
        }
        b.push_str(&format!("            let ca = 128.0 * ({ca});\n"));
        if with_b {
            let mut cb = String::from("0.0");
            for i in 8..16 {
                b.push_str(&format!("            let b{i} = x{i} * SL;\n"));
                cb.push_str(&format!(" + (x{i}.x + x{i}.y + x{i}.z)"));
            }
            b.push_str(&format!("            let cb = 128.0 * ({cb});\n"));
        }
        for r in 0..ROWS {
            let w = |j: usize| format!("w[wb + {}u]", j * ROWS + r);
            b.push_str(&format!(
                "            {{\n                let w0 = {};\n                let w8 = {};\n",
                w(0),
                w(8)
            ));
            let mut sa = format!(
                "{} + {}",
                q8_word("w0", "a_head"),
                "dot(vec4<f32>(bitcast<vec4<i32>>(vec4<u32>(w8 ^ 0x8080u) & B8)), a_tail)"
            );
            for i in 0..7 {
                sa.push_str(&format!(" + {}", q8_word(&w(1 + i), &format!("a{i}"))));
            }
            b.push_str(&format!(
                "                acc{r} += unpack2x16float(w0).x * (({sa}) - ca);\n"
            ));
            if with_b {
                let mut sb = String::from("0.0");
                for i in 0..8 {
                    sb.push_str(&format!(
                        " + {}",
                        q8_word(&w(9 + i), &format!("b{}", 8 + i))
                    ));
                }
                b.push_str(&format!(
                    "                acc{r} += unpack2x16float(w8).y * (({sb}) - cb);\n"
                ));
            }
            b.push_str("            }\n");
        }
        b
    };
    kernel_step(17, 2, &pair(true), &pair(false))
}
