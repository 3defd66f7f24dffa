//! The WGSL kernel against the CPU reference, on a native wgpu adapter
//! (Mesa lavapipe here: `scripts/setup.sh` installs it).

use futures::executor::block_on;
use tabnode_pof::gpu::{GpuProver, Kernel};
use tabnode_pof::{derive_seed, expand, matmul_cpu, Prover, Query};

fn prover() -> GpuProver {
    let adapter = block_on(tabnode_pof::gpu::best_adapter(wgpu::Backends::VULKAN))
        .expect("a Vulkan adapter (install mesa-vulkan-drivers: scripts/setup.sh --test)");
    block_on(GpuProver::new(&adapter)).expect("device")
}

#[test]
fn kernel_is_exact_for_odd_and_tile_sizes() {
    let gpu = prover();
    for n in [1u32, 3, 5, 17, 32, 33, 64, 130] {
        let seed = derive_seed(&[1; 32], b"gpu-test", u64::from(n), n);
        let (a, b) = expand(&seed, n).expect("expand");
        let want = matmul_cpu(&a, &b, n as usize);
        let got = block_on(gpu.matmul(&a, &b, n)).expect("gpu matmul");
        assert_eq!(got.len(), want.len());
        let bad = got
            .iter()
            .zip(&want)
            .position(|(g, w)| g.to_bits() != w.to_bits());
        assert_eq!(bad, None, "n={n}: first mismatch at {bad:?}");
    }
}

#[test]
fn the_reference_kernels_are_exact_too() {
    let gpu = prover();
    for kernel in [Kernel::Blocked4x4, Kernel::Naive, Kernel::Tiled16] {
        let k = gpu.other_kernel(kernel);
        for n in [3u32, 17, 40, 70] {
            let seed = derive_seed(&[5; 32], b"ref", 0, n);
            let (a, b) = expand(&seed, n).expect("expand");
            let got = block_on(k.matmul(&a, &b, n)).expect("matmul");
            assert!(got == matmul_cpu(&a, &b, n as usize), "{kernel:?} n={n}");
        }
    }
}

#[test]
fn a_gpu_proof_verifies() {
    let gpu = prover();
    let n = 96;
    let seed = derive_seed(&[2; 32], b"peer", 1, n);
    let (a, b) = expand(&seed, n).expect("expand");
    let c = block_on(gpu.matmul(&a, &b, n)).expect("gpu");
    let p = Prover::new(n, &c).expect("commit");
    let q = Query {
        nonce: [9; 32],
        k: 16,
    };
    tabnode_pof::verify(&seed, n, &p.root(), &q, &p.answer(&q)).expect("verifies");
}

#[test]
fn bad_inputs_are_errors() {
    let gpu = prover();
    let err = block_on(gpu.matmul(&[1.0; 4], &[1.0; 3], 2)).expect_err("lengths");
    assert!(matches!(
        err,
        tabnode_pof::gpu::GpuError::WrongLength { .. }
    ));
    // The size is checked first, so no n² input is needed to see it.
    let err = block_on(gpu.matmul(&[], &[], gpu.max_n() + 4)).expect_err("too large");
    assert!(
        matches!(err, tabnode_pof::gpu::GpuError::TooLarge { .. }),
        "{err}"
    );
}
