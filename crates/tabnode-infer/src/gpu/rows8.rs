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
        GgmlType::Q5_0 => Some(q5_0()),
        GgmlType::Q4_K => Some(q4_k()),
        GgmlType::Q6_K => Some(q6_k()),
        _ => None,
    }
}

/// Bytes a block of `ty` takes in the layout this file's kernel reads,
/// where that is not the file's: Q6_K's 210-byte blocks padded to 212, so
/// that every block starts on a word.
pub(super) fn padded_block(ty: GgmlType) -> Option<usize> {
    match ty {
        GgmlType::Q6_K => Some(212),
        _ => None,
    }
}

/// What every format's kernel shares: the group's rows, their sums, the
/// store (added to `y` where `acc` is set).
fn kernel(words_per_block: usize, block: &str) -> String {
    kernel_step(words_per_block, 1, block, "")
}

/// [`kernel`] for super-blocks of 256 values (64 vec4s).
fn kernel_k(words_per_block: usize, block: &str) -> String {
    kernel_step(words_per_block, 1, block, "").replace("k * 8u;", "k * 64u;")
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
                "            {{\n                let q = vec4<u32>(w[wb + {}u]);\n                s{r} += {};\n            }}\n",
                (1 + i) * ROWS + r,
                nibble_dots("q", "xls", "xhs")
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

/// The low and high nibbles of the four bytes of `word` (a `vec4<u32>`
/// of one word) dotted with `lo` (activations scaled by `SL`) and `hi`
/// (by `SH`): the nibbles masked in place, converted exactly.
fn nibble_dots(word: &str, lo: &str, hi: &str) -> String {
    format!(
        "dot(vec4<f32>(bitcast<vec4<i32>>({word} & LO)), {lo}) + dot(vec4<f32>({word} & HI), {hi})"
    )
}

/// `let x{i} = x[xb + from + i];` for `i` in `0..n`: a step's activations.
fn load_x(from: usize, n: usize) -> String {
    (0..n)
        .map(|i| format!("            let x{i} = x[xb + {}u];\n", from + i))
        .collect()
}

/// The sum of the activations `x{i}` for `i` in `range`, all four lanes.
fn sum_x(range: std::ops::Range<usize>) -> String {
    range
        .map(|i| format!("(x{i}.x + x{i}.y + x{i}.z + x{i}.w)"))
        .collect::<Vec<_>>()
        .join(" + ")
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
        b.push_str(&load_x(0, if with_b { 16 } else { 8 }));
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

/// Element `e` of the activations loaded as vec4s `x{base}`, `x{base+1}`….
fn el(base: usize, e: usize) -> String {
    format!("x{}.{}", base + e / 4, ["x", "y", "z", "w"][e % 4])
}

/// A vec4 of four `(element, power of two)` terms of block `base`'s
/// activations (`None`: zero), the activation scaled by 2^-power.
fn scaled(base: usize, terms: [Option<(usize, i32)>; 4]) -> String {
    let parts: Vec<String> = terms
        .iter()
        .map(|t| match t {
            Some((e, 0)) => el(base, *e),
            Some((e, p)) => format!("{} * {:e}", el(base, *e), 2f64.powi(-*p)),
            None => "0.0".into(),
        })
        .collect();
    format!("vec4<f32>({})", parts.join(", "))
}

/// `dot(convert(word & mask), xs)`, the conversion through i32 unless a
/// masked value may reach 2^31 (`unsigned`).
fn masked_dot(word: &str, mask: [u32; 4], xs: &str, unsigned: bool) -> String {
    let m = format!(
        "vec4<u32>({:#x}u, {:#x}u, {:#x}u, {:#x}u)",
        mask[0], mask[1], mask[2], mask[3]
    );
    if unsigned {
        format!("dot(vec4<f32>({word} & {m}), {xs})")
    } else {
        format!("dot(vec4<f32>(bitcast<vec4<i32>>({word} & {m})), {xs})")
    }
}

/// Q5_0 two blocks at a time (44 bytes, 11 words): block A from a word
/// boundary (f16 d and the low half of its 32 high bits in word 0, the
/// other half and two nibble bytes in word 1, nibbles in words 2..4, the
/// last two nibble bytes in the low half of word 5), block B from the high
/// half of word 5 (its d), its high bits in word 6 and nibbles in words
/// 7..10, aligned. `(q − 16)·d` with `q` = nibble + 16·bit: the nibbles
/// and bits dotted separately, `16·Σx` taken off. A high bit `j` is taken
/// with the bits `j + 8`, `j + 16`, `j + 24` by one mask (elements `j`,
/// `j+8`, `j+16`, `j+24`, each activation scaled by the bit's weight).
fn q5_0() -> String {
    let pair = |with_b: bool| {
        let mut b = String::new();
        b.push_str(&load_x(0, if with_b { 16 } else { 8 }));
        // Block A's nibble activations.
        let lo_head = scaled(0, [None, None, Some((0, 16)), Some((1, 24))]);
        let hi_head = scaled(0, [None, None, Some((16, 20)), Some((17, 28))]);
        let lo_tail = scaled(0, [Some((14, 0)), Some((15, 8)), None, None]);
        let hi_tail = scaled(0, [Some((30, 4)), Some((31, 12)), None, None]);
        b.push_str(&format!("            let alh = {lo_head};\n            let ahh = {hi_head};\n            let alt = {lo_tail};\n            let aht = {hi_tail};\n"));
        for m in 0..3 {
            let e = 2 + 4 * m;
            b.push_str(&format!(
                "            let al{m} = {};\n            let ah{m} = {};\n",
                scaled(
                    0,
                    [
                        Some((e, 0)),
                        Some((e + 1, 8)),
                        Some((e + 2, 16)),
                        Some((e + 3, 24))
                    ]
                ),
                scaled(
                    0,
                    [
                        Some((e + 16, 4)),
                        Some((e + 17, 12)),
                        Some((e + 18, 20)),
                        Some((e + 19, 28))
                    ]
                ),
            ));
        }
        // High bits: A's from words 0 (bits 16..32 = qh 0..16) and 1 (bits
        // 0..16 = qh 16..32); B's from word 6.
        for j in 0..8 {
            b.push_str(&format!(
                "            let aq{j} = {};\n",
                scaled(
                    0,
                    [
                        Some((j, j as i32 + 16)),
                        Some((j + 8, j as i32 + 24)),
                        Some((j + 16, j as i32)),
                        Some((j + 24, j as i32 + 8))
                    ]
                )
            ));
        }
        b.push_str(&format!("            let ca = 16.0 * ({});\n", sum_x(0..8)));
        if with_b {
            for m in 0..4 {
                b.push_str(&format!(
                    "            let bl{m} = x{} * SL;\n            let bh{m} = x{} * SH;\n",
                    8 + m,
                    12 + m
                ));
            }
            for j in 0..8 {
                b.push_str(&format!(
                    "            let bq{j} = {};\n",
                    scaled(
                        8,
                        [
                            Some((j, j as i32)),
                            Some((j + 8, j as i32 + 8)),
                            Some((j + 16, j as i32 + 16)),
                            Some((j + 24, j as i32 + 24))
                        ]
                    )
                ));
            }
            b.push_str(&format!(
                "            let cb = 16.0 * ({});\n",
                sum_x(8..16)
            ));
        }
        for r in 0..ROWS {
            let w = |j: usize| format!("w[wb + {}u]", j * ROWS + r);
            b.push_str("            {\n");
            for j in 0..if with_b { 11 } else { 6 } {
                b.push_str(&format!(
                    "                let w{j} = vec4<u32>({});\n",
                    w(j)
                ));
            }
            let mut na = vec![
                masked_dot("w1", [0, 0, 0x000f_0000, 0x0f00_0000], "alh", false),
                masked_dot("w1", [0, 0, 0x00f0_0000, 0xf000_0000], "ahh", true),
                masked_dot("w5", [0xf, 0xf00, 0, 0], "alt", false),
                masked_dot("w5", [0xf0, 0xf000, 0, 0], "aht", false),
            ];
            for m in 0..3 {
                na.push(nibble_dots(
                    &format!("w{}", 2 + m),
                    &format!("al{m}"),
                    &format!("ah{m}"),
                ));
            }
            let mut ba = Vec::new();
            for j in 0..8u32 {
                ba.push(masked_dot(
                    "vec4<u32>(w0.x, w0.x, w1.x, w1.x)",
                    [1 << (j + 16), 1 << (j + 24), 1 << j, 1 << (j + 8)],
                    &format!("aq{j}"),
                    j == 7,
                ));
            }
            b.push_str(&format!(
                "                acc{r} += unpack2x16float(w0.x).x * (({}) + 16.0 * ({}) - ca);\n",
                na.join(" + "),
                ba.join(" + ")
            ));
            if with_b {
                let mut nb = Vec::new();
                for m in 0..4 {
                    nb.push(nibble_dots(
                        &format!("w{}", 7 + m),
                        &format!("bl{m}"),
                        &format!("bh{m}"),
                    ));
                }
                let mut bb = Vec::new();
                for j in 0..8u32 {
                    bb.push(masked_dot(
                        "w6",
                        [1 << j, 1 << (j + 8), 1 << (j + 16), 1 << (j + 24)],
                        &format!("bq{j}"),
                        j == 7,
                    ));
                }
                b.push_str(&format!(
                    "                acc{r} += unpack2x16float(w5.x).y * (({}) + 16.0 * ({}) - cb);\n",
                    nb.join(" + "),
                    bb.join(" + ")
                ));
            }
            b.push_str("            }\n");
        }
        b
    };
    kernel_step(11, 2, &pair(true), &pair(false))
}

/// `vec4<f32>` of a word's four bytes masked by `mask` (one mask per byte
/// position), each scaled back by 2^-(8k + shift): the masked bits as
/// numbers, without a shift.
fn bytes_of(word: &str, mask: u32, shift: i32) -> String {
    let masks = [mask, mask << 8, mask << 16, mask << 24];
    let scales: Vec<String> = (0..4)
        .map(|k| format!("{:e}", 2f64.powi(-(8 * k + shift))))
        .collect();
    let m = format!(
        "vec4<u32>({:#x}u, {:#x}u, {:#x}u, {:#x}u)",
        masks[0], masks[1], masks[2], masks[3]
    );
    // The top byte's masked value reaches 2^31 when the mask's top bit is
    // set: convert unsigned then.
    let converted = if mask & 0x80 != 0 {
        format!("vec4<f32>({word} & {m})")
    } else {
        format!("vec4<f32>(bitcast<vec4<i32>>({word} & {m}))")
    };
    format!("({converted} * vec4<f32>({}))", scales.join(", "))
}

/// Q4_K, one super-block (144 bytes, 36 words) at a time: word 0 the f16
/// pair (d, dmin), words 1..4 the 6-bit scales and mins (ggml's
/// `get_scale_min_k4`, taken apart by masks), words 4..36 the nibbles (per
/// 64 values: 32 bytes, low nibbles then high). `d·sc·q − dmin·m`.
fn q4_k() -> String {
    let mut b = String::new();
    // Per 64 values (c): the activations, their two sub-block sums, and per
    // row the two nibble dots.
    for c in 0..4 {
        b.push_str("        {\n");
        b.push_str(&load_x(16 * c, 16));
        b.push_str(&format!("            sx{} = {};\n", 2 * c, sum_x(0..8)));
        b.push_str(&format!(
            "            sx{} = {};\n",
            2 * c + 1,
            sum_x(8..16)
        ));
        for i in 0..8 {
            b.push_str(&format!(
                "            let l{i} = x{i} * SL;\n            let h{i} = x{} * SH;\n",
                8 + i
            ));
        }
        for r in 0..ROWS {
            let mut lo = Vec::new();
            let mut hi = Vec::new();
            for i in 0..8 {
                let w = format!("vec4<u32>(w[wb + {}u])", (4 + 8 * c + i) * ROWS + r);
                b.push_str(&format!("            let q{r}_{i} = {w};\n"));
                lo.push(format!(
                    "dot(vec4<f32>(bitcast<vec4<i32>>(q{r}_{i} & LO)), l{i})"
                ));
                hi.push(format!("dot(vec4<f32>(q{r}_{i} & HI), h{i})"));
            }
            b.push_str(&format!(
                "            p{r}_{} = {};\n            p{r}_{} = {};\n",
                2 * c,
                lo.join(" + "),
                2 * c + 1,
                hi.join(" + ")
            ));
        }
        b.push_str("        }\n");
    }
    // Per row: scales and mins, then the super-block's sum.
    for r in 0..ROWS {
        let w = |j: usize| format!("vec4<u32>(w[wb + {}u])", j * ROWS + r);
        b.push_str(&format!(
            "        {{\n            let dm = unpack2x16float(w[wb + {r}u]);\n            let s0 = {};\n            let s1 = {};\n            let s2 = {};\n",
            w(1),
            w(2),
            w(3)
        ));
        b.push_str(&format!(
            "            let sc_lo = {};\n            let m_lo = {};\n",
            bytes_of("s0", 0x3f, 0),
            bytes_of("s1", 0x3f, 0)
        ));
        b.push_str(&format!(
            "            let sc_hi = {} + {};\n            let m_hi = {} + {};\n",
            bytes_of("s2", 0x0f, 0),
            bytes_of("s0", 0xc0, 2),
            bytes_of("s2", 0xf0, 4),
            bytes_of("s1", 0xc0, 2)
        ));
        let p = |j: usize| format!("p{r}_{j}");
        b.push_str(&format!(
            "            acc{r} += dm.x * (dot(sc_lo, vec4<f32>({}, {}, {}, {})) + dot(sc_hi, vec4<f32>({}, {}, {}, {})))\n                - dm.y * (dot(m_lo, vec4<f32>(sx0, sx1, sx2, sx3)) + dot(m_hi, vec4<f32>(sx4, sx5, sx6, sx7)));\n        }}\n",
            p(0), p(1), p(2), p(3), p(4), p(5), p(6), p(7)
        ));
    }
    let mut head = String::new();
    for j in 0..8 {
        head.push_str(&format!("        var sx{j} = 0.0;\n"));
        for r in 0..ROWS {
            head.push_str(&format!("        var p{r}_{j} = 0.0;\n"));
        }
    }
    kernel_k(36, &format!("{head}{b}"))
}

/// Q6_K, one super-block (padded to 212 bytes, 53 words) at a time: words
/// 0..32 the low nibbles (per 128 values: 64 bytes), 32..48 the high bit
/// pairs (per 128 values: 32 bytes), 48..52 the 16 signed scales (one per
/// 16 values), the low half of word 52 the f16 d. `d·sc·(q − 32)`.
fn q6_k() -> String {
    let mut b = String::new();
    // Per row: 16 partial sums (scale group g = 8n + 2j + h for value
    // quarter j and half h of each 128 values); per invocation the 16
    // groups' activation sums.
    for g in 0..16 {
        b.push_str(&format!("        var sx{g} = 0.0;\n"));
        for r in 0..ROWS {
            b.push_str(&format!("        var p{r}_{g} = 0.0;\n"));
        }
    }
    let m2 = |v: u32| {
        format!(
            "vec4<u32>({:#x}u, {:#x}u, {:#x}u, {:#x}u)",
            v,
            v << 8,
            v << 16,
            v << 24
        )
    };
    for n in 0..2 {
        for h in 0..2 {
            b.push_str("        {\n");
            // Values 128n + 32j + 16h + 4k.. for quarter j, k in 0..4.
            for j in 0..4 {
                for k in 0..4 {
                    let v4 = 32 * n + 8 * j + 4 * h + k;
                    b.push_str(&format!("            let x{j}_{k} = x[xb + {v4}u];\n"));
                }
                let g = 8 * n + 2 * j + h;
                let sum = (0..4)
                    .map(|k| format!("(x{j}_{k}.x + x{j}_{k}.y + x{j}_{k}.z + x{j}_{k}.w)"))
                    .collect::<Vec<_>>()
                    .join(" + ");
                b.push_str(&format!("            sx{g} = {sum};\n"));
                let scale = if j < 2 { "SL" } else { "SH" };
                for k in 0..4 {
                    b.push_str(&format!("            let y{j}_{k} = x{j}_{k} * {scale};\n"));
                }
            }
            for r in 0..ROWS {
                let w = |i: usize| format!("vec4<u32>(w[wb + {}u])", i * ROWS + r);
                let mut parts: [Vec<String>; 4] = Default::default();
                for k in 0..4 {
                    let i = 4 * h + k;
                    b.push_str(&format!(
                        "            let l1_{r}_{k} = {};\n            let l2_{r}_{k} = {};\n            let hb_{r}_{k} = {};\n",
                        w(16 * n + i),
                        w(16 * n + 8 + i),
                        w(32 + 8 * n + i)
                    ));
                    let (l1, l2, hb) = (
                        format!("l1_{r}_{k}"),
                        format!("l2_{r}_{k}"),
                        format!("hb_{r}_{k}"),
                    );
                    // q1: low nibble of l1 + 16 × bits 0..2 (masked in place:
                    // ×16); q2: low nibble of l2 + 16 × bits 2..4 (in place ×4,
                    // so ×4 more); against activations scaled by SL. q3, q4:
                    // the high nibbles (×16 in place) with bits 4..6 (in place
                    // ×16: ×16 more) and 6..8 (in place ×64: ×4 more), against
                    // activations scaled by SH.
                    parts[0].push(format!(
                        "dot(vec4<f32>(bitcast<vec4<i32>>({l1} & LO)) + 16.0 * vec4<f32>(bitcast<vec4<i32>>({hb} & {})), y0_{k})",
                        m2(0x3)
                    ));
                    parts[1].push(format!(
                        "dot(vec4<f32>(bitcast<vec4<i32>>({l2} & LO)) + 4.0 * vec4<f32>(bitcast<vec4<i32>>({hb} & {})), y1_{k})",
                        m2(0xc)
                    ));
                    parts[2].push(format!(
                        "dot(vec4<f32>({l1} & HI) + 16.0 * vec4<f32>(bitcast<vec4<i32>>({hb} & {})), y2_{k})",
                        m2(0x30)
                    ));
                    parts[3].push(format!(
                        "dot(vec4<f32>({l2} & HI) + 4.0 * vec4<f32>({hb} & {}), y3_{k})",
                        m2(0xc0)
                    ));
                }
                for (j, part) in parts.iter().enumerate() {
                    let g = 8 * n + 2 * j + h;
                    b.push_str(&format!("            p{r}_{g} = {};\n", part.join(" + ")));
                }
            }
            b.push_str("        }\n");
        }
    }
    // Per row: the signed scales (the low three bytes' sign bits flipped,
    // 128 taken off after; the top byte signed as an i32), d, the sum.
    for r in 0..ROWS {
        let w = |i: usize| format!("w[wb + {}u]", i * ROWS + r);
        b.push_str("        {\n");
        for q in 0..4 {
            b.push_str(&format!(
                "            let sc{q} = vec4<f32>(bitcast<vec4<i32>>(vec4<u32>({} ^ FLIP) & B8)) * SL - vec4<f32>(128.0, 128.0, 128.0, 0.0);\n",
                w(48 + q)
            ));
        }
        let dots = (0..4)
            .map(|q| {
                let g = |i: usize| format!("(p{r}_{0} - 32.0 * sx{0})", 4 * q + i);
                format!(
                    "dot(sc{q}, vec4<f32>({}, {}, {}, {}))",
                    g(0),
                    g(1),
                    g(2),
                    g(3)
                )
            })
            .collect::<Vec<_>>()
            .join(" + ");
        b.push_str(&format!(
            "            acc{r} += unpack2x16float({}).x * ({dots});\n        }}\n",
            w(52)
        ));
    }
    kernel_k(53, &b)
}
