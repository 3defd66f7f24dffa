//! The WGSL matvec kernels against the CPU's dequantization, every format,
//! both variants, on a native wgpu adapter (Mesa lavapipe here and on CI:
//! `scripts/setup.sh --test` installs it).

use futures::executor::block_on;
use tabnode_infer::gpu::{self, Gpu, Variant, FORMATS};
use tabnode_infer::quant::check::{random_blocks, Rng};
use tabnode_infer::quant::{dequantize, GgmlType, QTensor};

fn gpu() -> Gpu {
    let adapter = block_on(gpu::adapter(wgpu::Backends::VULKAN))
        .expect("a Vulkan adapter (install mesa-vulkan-drivers: scripts/setup.sh --test)");
    block_on(Gpu::new(&adapter)).expect("device")
}

/// Random bytes of a tensor of `ty` (finite f32/f16 values for those).
fn random_tensor(rng: &mut Rng, ty: GgmlType, rows: usize, cols: usize) -> Vec<u8> {
    match ty {
        GgmlType::F32 => (0..rows * cols)
            .flat_map(|_| (rng.unit() * 2.0 - 1.0).to_le_bytes())
            .collect(),
        GgmlType::F16 => (0..rows * cols)
            .flat_map(|_| half::f16::from_f32(rng.unit() * 2.0 - 1.0).to_le_bytes())
            .collect(),
        _ => random_blocks(rng, ty, rows * cols / ty.block_size(), 0.05),
    }
}

/// `|got − want| ≤ 1e-5·Σ|w·x| + 1e-6` per row.
fn assert_close(what: &str, got: &[f32], want: &[f64], scale: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (r, ((&g, &w), &s)) in got.iter().zip(want).zip(scale).enumerate() {
        let err = (f64::from(g) - w).abs();
        assert!(
            err <= 1e-5 * s + 1e-6,
            "{what} row {r}: got {g}, want {w} (scale {s})"
        );
    }
}

/// `W·x` in f64 from the dequantized weights, and `Σ|w·x|` per row.
fn reference(dense: &[f32], x: &[f32]) -> (Vec<f64>, Vec<f64>) {
    dense
        .chunks_exact(x.len())
        .map(|row| {
            row.iter().zip(x).fold((0.0, 0.0), |(s, a), (w, x)| {
                let p = f64::from(w * x);
                (s + p, a + p.abs())
            })
        })
        .unzip()
}

#[test]
fn every_format_and_variant_matches_the_dequantized_weights() {
    let gpu = gpu();
    let mut rng = Rng(0x6b0c_0de5);
    for ty in FORMATS {
        // Odd row counts (a partial workgroup), one block and several; the
        // input placed at an offset in a longer buffer.
        for (rows, blocks) in [(1usize, 1usize), (67, 3), (130, 7)] {
            let cols = blocks
                * if ty.block_size() == 1 {
                    4
                } else {
                    ty.block_size()
                };
            let data = random_tensor(&mut rng, ty, rows, cols);
            let w = QTensor::new(ty, rows, cols, &data).expect("tensor");
            let dense = dequantize(ty, &data).expect("dequantize");
            let x: Vec<f32> = (0..cols).map(|_| rng.unit() * 4.0 - 2.0).collect();
            let (want, scale) = reference(&dense, &x);
            let xb = gpu.vector(8 + cols);
            let mut padded = vec![9.0f32; 8];
            padded.extend_from_slice(&x);
            gpu.write(&xb, &padded);
            let y = gpu.vector(rows + 3);
            for variant in Variant::ALL {
                let m = gpu.upload(&w, variant).expect("upload");
                assert_eq!(m.parts(), 1);
                let op = gpu.matvec(&m, &xb, 8, &y, 3).expect("matvec");
                let got = block_on(gpu.run_and_read(&[&op], &y, rows + 3)).expect("run");
                assert_close(
                    &format!("{ty:?} {variant:?} {rows}x{cols}"),
                    &got[3..],
                    &want,
                    &scale,
                );
            }
        }
    }
}

#[test]
fn a_weight_larger_than_a_binding_is_split_by_rows_and_gives_the_same_values() {
    let mut gpu = gpu();
    let mut rng = Rng(0x5b11_7000);
    let (ty, rows, cols) = (GgmlType::Q6_K, 301usize, 512usize);
    let data = random_tensor(&mut rng, ty, rows, cols);
    let w = QTensor::new(ty, rows, cols, &data).expect("tensor");
    let x: Vec<f32> = (0..cols).map(|_| rng.unit() - 0.5).collect();
    let (want, scale) = reference(&dequantize(ty, &data).expect("dequantize"), &x);
    // Parts of 40 rows (420 bytes a row, 424 with the software kernel's
    // padded blocks, interleaved by 8 there): eight buffers, the last short
    // (and padded to 24 rows when interleaved).
    gpu.limit_bindings(424 * 40);
    let xb = gpu.vector(cols);
    gpu.write(&xb, &x);
    let y = gpu.vector(rows);
    for (variant, bytes) in [
        (Variant::Rows, 424 * (280 + 24)),
        (Variant::Lanes, 420 * 301),
    ] {
        let m = gpu.upload(&w, variant).expect("upload");
        assert_eq!(m.parts(), 8);
        assert_eq!(m.bytes(), bytes as u64);
        let op = gpu.matvec(&m, &xb, 0, &y, 0).expect("matvec");
        assert_eq!(op.dispatch_count(), 8);
        let got = block_on(gpu.run_and_read(&[&op], &y, rows)).expect("run");
        assert_close(&format!("split {variant:?}"), &got, &want, &scale);
    }
}

#[test]
fn bad_shapes_and_formats_are_refused_with_a_reason() {
    let mut gpu = gpu();
    let data = vec![0u8; 2 * 34];
    let w = QTensor::new(GgmlType::Q8_0, 2, 32, &data).expect("tensor");
    let m = gpu.upload(&w, Variant::Rows).expect("upload");
    // An input too short, an offset not on a vec4.
    let short = gpu.vector(16);
    let y = gpu.vector(2);
    assert!(matches!(
        gpu.matvec(&m, &short, 0, &y, 0),
        Err(gpu::GpuError::Length {
            what: "activation",
            ..
        })
    ));
    let x = gpu.vector(64);
    assert!(matches!(
        gpu.matvec(&m, &x, 2, &y, 0),
        Err(gpu::GpuError::Length {
            what: "activation offset",
            ..
        })
    ));
    assert!(matches!(
        gpu.matvec(&m, &x, 0, &gpu.vector(1), 3),
        Err(gpu::GpuError::Length { what: "output", .. })
    ));
    // A format without a kernel.
    let q8k = vec![0u8; GgmlType::Q8_K.block_bytes()];
    let w = QTensor::new(GgmlType::Q8_K, 1, 256, &q8k).expect("tensor");
    assert!(matches!(
        gpu.upload(&w, Variant::Rows),
        Err(gpu::GpuError::Format(GgmlType::Q8_K))
    ));
    // A row (34 bytes, 36 padded) larger than a binding; eight of them,
    // interleaved.
    gpu.limit_bindings(32);
    let w = QTensor::new(GgmlType::Q8_0, 2, 32, &data).expect("tensor");
    assert!(matches!(
        gpu.upload(&w, Variant::Lanes),
        Err(gpu::GpuError::RowTooLarge {
            bytes: 36,
            limit: 32
        })
    ));
    gpu.limit_bindings(36 * 7);
    assert!(matches!(
        gpu.upload(&w, Variant::Rows),
        Err(gpu::GpuError::RowTooLarge {
            bytes: 288,
            limit: 252
        })
    ));
    assert_eq!(gpu.upload(&w, Variant::Lanes).expect("fits").parts(), 1);
}
