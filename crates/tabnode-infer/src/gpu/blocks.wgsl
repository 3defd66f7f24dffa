// The GGUF block formats as the file has them: `w` holds a tensor's rows,
// each padded to whole words, either one after the other (`STRIDE` 1) or
// with the words of eight consecutive rows interleaved (`STRIDE` 8: word
// `j` of row `8g + l` at `(g·row_words + j)·8 + l`, so that neighbouring
// invocations computing neighbouring rows read neighbouring words). Every
// block starts on an even byte of its row. `rbase` is the invocation's row
// (its first word); `x` holds the activation as vec4s. Each
// `dot_<format>(b, xb)` is the dot product of the block at byte `b` of the
// row with the activation's values from vec4 `xb` on, in f32 (ggml's
// dequantization, then multiply-add).

var<private> rbase: u32;

// Word `i` of the current row.
fn load(i: u32) -> u32 {
    return w[rbase + i * STRIDE];
}

// The four bytes at byte `at` (even) of the current row.
fn word(at: u32) -> u32 {
    let i = at >> 2u;
    let lo = load(i);
    if ((at & 2u) == 0u) {
        return lo;
    }
    return (lo >> 16u) | (load(i + 1u) << 16u);
}

// The f16 at byte `at` (even), as f32 (no `shader-f16` needed).
fn f16_at(at: u32) -> f32 {
    return unpack2x16float(load(at >> 2u) >> ((at & 2u) << 3u)).x;
}

fn xv(i: u32) -> vec4<f32> {
    return x[dims.x_at + i];
}

fn hsum(v: vec4<f32>) -> f32 {
    return (v.x + v.y) + (v.z + v.w);
}

// The four bytes of `q`, low byte first.
fn bytes4(q: u32) -> vec4<u32> {
    return (vec4<u32>(q) >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(255u);
}

// The low nibbles of `q`'s four bytes.
fn lo4(q: u32) -> vec4<u32> {
    return (vec4<u32>(q) >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(15u);
}

// The high nibbles of `q`'s four bytes.
fn hi4(q: u32) -> vec4<u32> {
    return (vec4<u32>(q) >> vec4<u32>(4u, 12u, 20u, 28u)) & vec4<u32>(15u);
}

// `q`'s four bytes as signed values.
fn sbytes4(q: u32) -> vec4<f32> {
    return vec4<f32>((vec4<i32>(bitcast<i32>(q)) << vec4<u32>(24u, 16u, 8u, 0u)) >> vec4<u32>(24u));
}

// Q4_0: f16 d, 16 bytes of nibbles (element j low, j + 16 high); (q - 8)·d.
fn dot_q4_0(b: u32, xb: u32) -> f32 {
    var s = vec4<f32>(0.0);
    for (var i = 0u; i < 4u; i++) {
        let q = word(b + 2u + 4u * i);
        s += (vec4<f32>(lo4(q)) - 8.0) * xv(xb + i) + (vec4<f32>(hi4(q)) - 8.0) * xv(xb + 4u + i);
    }
    return f16_at(b) * hsum(s);
}

// Q4_1: f16 d, f16 m, 16 bytes of nibbles; q·d + m.
fn dot_q4_1(b: u32, xb: u32) -> f32 {
    var s = vec4<f32>(0.0);
    var sx = vec4<f32>(0.0);
    for (var i = 0u; i < 4u; i++) {
        let q = word(b + 4u + 4u * i);
        let x0 = xv(xb + i);
        let x1 = xv(xb + 4u + i);
        s += vec4<f32>(lo4(q)) * x0 + vec4<f32>(hi4(q)) * x1;
        sx += x0 + x1;
    }
    return f16_at(b) * hsum(s) + f16_at(b + 2u) * hsum(sx);
}

// Q5_0: f16 d, 32 high bits, 16 bytes of nibbles; (q - 16)·d.
fn dot_q5_0(b: u32, xb: u32) -> f32 {
    let qh = word(b + 2u);
    var s = vec4<f32>(0.0);
    for (var i = 0u; i < 4u; i++) {
        let q = word(b + 6u + 4u * i);
        let j = vec4<u32>(4u * i) + vec4<u32>(0u, 1u, 2u, 3u);
        let h0 = ((vec4<u32>(qh) >> j) & vec4<u32>(1u)) << vec4<u32>(4u);
        let h1 = ((vec4<u32>(qh) >> (j + vec4<u32>(16u))) & vec4<u32>(1u)) << vec4<u32>(4u);
        s += (vec4<f32>(lo4(q) | h0) - 16.0) * xv(xb + i) + (vec4<f32>(hi4(q) | h1) - 16.0) * xv(xb + 4u + i);
    }
    return f16_at(b) * hsum(s);
}

// Q8_0: f16 d, 32 signed bytes; q·d.
fn dot_q8_0(b: u32, xb: u32) -> f32 {
    var s = vec4<f32>(0.0);
    for (var i = 0u; i < 8u; i++) {
        s += sbytes4(word(b + 2u + 4u * i)) * xv(xb + i);
    }
    return f16_at(b) * hsum(s);
}

// Byte `k` (0..4) of `v`, as f32.
fn byte_f(v: u32, k: u32) -> f32 {
    return f32((v >> (8u * k)) & 255u);
}

// The 6-bit scales and mins of a Q4_K / Q5_K super-block (12 bytes at
// `at`), as ggml's `get_scale_min_k4` packs them: sub-blocks 0..4 in
// `.x`, 4..8 in `.y` (scales) and `.z`, `.w` (mins), a byte each.
fn scales_mins_k4(at: u32) -> vec4<u32> {
    let s0 = word(at);
    let s1 = word(at + 4u);
    let s2 = word(at + 8u);
    let sc_hi = (s2 & 0x0f0f0f0fu) | (((s0 >> 6u) & 0x03030303u) << 4u);
    let m_hi = ((s2 >> 4u) & 0x0f0f0f0fu) | (((s1 >> 6u) & 0x03030303u) << 4u);
    return vec4<u32>(s0 & 0x3f3f3f3fu, sc_hi, s1 & 0x3f3f3f3fu, m_hi);
}

// Q4_K: f16 d, f16 dmin, 12 bytes of scales and mins, 128 bytes of
// nibbles (64 values per 32 bytes: low nibbles, then high); d·sc·q − dmin·m.
fn dot_q4_k(b: u32, xb: u32) -> f32 {
    let sm = scales_mins_k4(b + 4u);
    var total = 0.0;
    var mins = 0.0;
    for (var c = 0u; c < 4u; c++) {
        var s0 = vec4<f32>(0.0);
        var s1 = vec4<f32>(0.0);
        var x0 = vec4<f32>(0.0);
        var x1 = vec4<f32>(0.0);
        for (var i = 0u; i < 8u; i++) {
            let q = word(b + 16u + 32u * c + 4u * i);
            let a = xv(xb + 16u * c + i);
            let z = xv(xb + 16u * c + 8u + i);
            s0 += vec4<f32>(lo4(q)) * a;
            s1 += vec4<f32>(hi4(q)) * z;
            x0 += a;
            x1 += z;
        }
        let sc = select(sm.x, sm.y, c >= 2u);
        let m = select(sm.z, sm.w, c >= 2u);
        let k = (2u * c) & 3u;
        total += byte_f(sc, k) * hsum(s0) + byte_f(sc, k + 1u) * hsum(s1);
        mins += byte_f(m, k) * hsum(x0) + byte_f(m, k + 1u) * hsum(x1);
    }
    return f16_at(b) * total - f16_at(b + 2u) * mins;
}

// Q5_K: as Q4_K with a fifth bit per value in 32 bytes after the scales.
fn dot_q5_k(b: u32, xb: u32) -> f32 {
    let sm = scales_mins_k4(b + 4u);
    var total = 0.0;
    var mins = 0.0;
    for (var c = 0u; c < 4u; c++) {
        var s0 = vec4<f32>(0.0);
        var s1 = vec4<f32>(0.0);
        var x0 = vec4<f32>(0.0);
        var x1 = vec4<f32>(0.0);
        for (var i = 0u; i < 8u; i++) {
            let q = word(b + 48u + 32u * c + 4u * i);
            let h = bytes4(word(b + 16u + 4u * i));
            let h0 = ((h >> vec4<u32>(2u * c)) & vec4<u32>(1u)) << vec4<u32>(4u);
            let h1 = ((h >> vec4<u32>(2u * c + 1u)) & vec4<u32>(1u)) << vec4<u32>(4u);
            let a = xv(xb + 16u * c + i);
            let z = xv(xb + 16u * c + 8u + i);
            s0 += vec4<f32>(lo4(q) | h0) * a;
            s1 += vec4<f32>(hi4(q) | h1) * z;
            x0 += a;
            x1 += z;
        }
        let sc = select(sm.x, sm.y, c >= 2u);
        let m = select(sm.z, sm.w, c >= 2u);
        let k = (2u * c) & 3u;
        total += byte_f(sc, k) * hsum(s0) + byte_f(sc, k + 1u) * hsum(s1);
        mins += byte_f(m, k) * hsum(x0) + byte_f(m, k + 1u) * hsum(x1);
    }
    return f16_at(b) * total - f16_at(b + 2u) * mins;
}

// Q6_K: 128 bytes of low nibbles, 64 bytes of high bit pairs, 16 signed
// scales (one per 16 values), f16 d; d·sc·(q − 32).
fn dot_q6_k(b: u32, xb: u32) -> f32 {
    var total = 0.0;
    for (var n = 0u; n < 2u; n++) {
        for (var part = 0u; part < 2u; part++) {
            var s1 = vec4<f32>(0.0);
            var s2 = vec4<f32>(0.0);
            var s3 = vec4<f32>(0.0);
            var s4 = vec4<f32>(0.0);
            for (var k = 0u; k < 4u; k++) {
                let i = 4u * part + k;
                let l1 = word(b + 64u * n + 4u * i);
                let l2 = word(b + 64u * n + 32u + 4u * i);
                let h = bytes4(word(b + 128u + 32u * n + 4u * i));
                let o = xb + 32u * n + i;
                s1 += (vec4<f32>(lo4(l1) | ((h & vec4<u32>(3u)) << vec4<u32>(4u))) - 32.0) * xv(o);
                s2 += (vec4<f32>(lo4(l2) | (((h >> vec4<u32>(2u)) & vec4<u32>(3u)) << vec4<u32>(4u))) - 32.0) * xv(o + 8u);
                s3 += (vec4<f32>(hi4(l1) | (((h >> vec4<u32>(4u)) & vec4<u32>(3u)) << vec4<u32>(4u))) - 32.0) * xv(o + 16u);
                s4 += (vec4<f32>(hi4(l2) | (((h >> vec4<u32>(6u)) & vec4<u32>(3u)) << vec4<u32>(4u))) - 32.0) * xv(o + 24u);
            }
            // Scales 8n + part + {0, 2, 4, 6}: bytes of words at 192 + 8n.
            let sa = sbytes4(word(b + 192u + 8u * n));
            let sb = sbytes4(word(b + 196u + 8u * n));
            let sc = select(vec4<f32>(sa.x, sa.z, sb.x, sb.z), vec4<f32>(sa.y, sa.w, sb.y, sb.w), part == 1u);
            total += sc.x * hsum(s1) + sc.y * hsum(s2) + sc.z * hsum(s3) + sc.w * hsum(s4);
        }
    }
    return f16_at(b + 208u) * total;
}

// F32: four values (16 bytes) per "block".
fn dot_f32(b: u32, xb: u32) -> f32 {
    let v = vec4<f32>(bitcast<f32>(word(b)), bitcast<f32>(word(b + 4u)), bitcast<f32>(word(b + 8u)), bitcast<f32>(word(b + 12u)));
    return dot(v, xv(xb));
}

// F16: four values (8 bytes) per "block".
fn dot_f16(b: u32, xb: u32) -> f32 {
    let v = vec4<f32>(unpack2x16float(word(b)), unpack2x16float(word(b + 4u)));
    return dot(v, xv(xb));
}
