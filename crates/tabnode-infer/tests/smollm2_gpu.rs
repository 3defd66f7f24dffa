//! SmolLM2 on the GPU kernels (Mesa lavapipe here and on CI) against the
//! f32 reference: the same logits up to float order, the same greedy
//! tokens, both kernel variants.

mod common;

use common::{gpu, model_bytes};
use futures::executor::block_on;
use tabnode_infer::generate::{Sampler, Sampling, Top};
use tabnode_infer::gguf::Gguf;
use tabnode_infer::gpu::{self, Gpu, GpuModel, Variant};
use tabnode_infer::reference::{argmax, ReferenceModel};

#[test]
fn logits_and_greedy_tokens_equal_the_f32_reference() {
    let bytes = model_bytes();
    let reference =
        ReferenceModel::from_gguf(&Gguf::parse(&bytes).expect("gguf")).expect("reference");
    // "<|im_start|>user\nWhat is the capital of France?" and greedy on.
    let prompt = [1u32, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47];
    let steps = 16;
    let mut want_logits = Vec::new();
    let mut want_tokens = Vec::new();
    let mut s = reference.session();
    let mut last = Vec::new();
    for &t in &prompt {
        last = s.step(t);
        want_logits.push(last.clone());
    }
    for _ in 0..steps {
        let t = argmax(&last);
        want_tokens.push(t);
        last = s.step(t);
    }
    for variant in Variant::ALL {
        let model = GpuModel::load(gpu(), &bytes, 64, variant).expect("gpu model");
        let mut m = model.session().expect("session");
        let mut worst = 0f32;
        let mut last = Vec::new();
        for (&t, want) in prompt.iter().zip(&want_logits) {
            let got = block_on(m.step(t)).expect("step");
            let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
            let diff = got
                .iter()
                .zip(want)
                .fold(0f32, |a, (g, w)| a.max((g - w).abs()));
            worst = worst.max(diff / scale);
            last = got;
        }
        let mut tokens = Vec::new();
        for _ in 0..steps {
            let t = argmax(&last);
            tokens.push(t);
            last = block_on(m.step(t)).expect("step");
        }
        println!(
            "{variant:?}: worst relative logit difference {worst:e}, {} dispatches a token",
            model.dispatches_per_token()
        );
        // The same tokens picked on the device (4 bytes read back a token).
        drop(m);
        let mut m = model.session().expect("session");
        let mut best = block_on(m.prefill_greedy(&prompt)).expect("prefill");
        let mut picked = Vec::new();
        for _ in 0..steps {
            picked.push(best);
            best = block_on(m.step_greedy(best)).expect("step");
        }
        assert_eq!(picked, want_tokens, "{variant:?}: greedy on the device");
        // Measured 4e-6 (the same math in another float order).
        assert!(
            worst < 1e-4,
            "{variant:?}: logits differ by {worst:e} of their scale"
        );
        assert_eq!(tokens, want_tokens, "{variant:?}");
        // 9 dispatches a layer (norm, q/k/v as one matvec, bias + RoPE +
        // KV write, attention, o, norm, gate/up as one matvec, SiLU·mul,
        // down: SmolLM2's q/k/v and gate/up share their formats), the
        // output norm and the head.
        let c = &model.config;
        assert_eq!(model.dispatches_per_token(), 9 * c.layers + 2);
        // The weights as the file has them: no copy expanded.
        assert!(
            model.weight_bytes() <= bytes.len() as u64,
            "{} bytes of weights",
            model.weight_bytes()
        );
    }
}

#[test]
fn a_prompt_fed_at_once_gives_the_logits_of_feeding_it_token_by_token() {
    let bytes = model_bytes();
    let model = GpuModel::load(gpu(), &bytes, 16, Variant::Rows).expect("gpu model");
    let prompt = [1u32, 4093, 198, 1780, 314];
    let mut one = model.session().expect("session");
    let mut stepped = Vec::new();
    for &t in &prompt {
        stepped = block_on(one.step(t)).expect("step");
    }
    // One session at a time: the cache is the model's.
    assert!(matches!(model.session(), Err(gpu::GpuError::Busy)));
    drop(one);
    let mut s = model.session().expect("session");
    let fed = block_on(s.prefill(&prompt)).expect("prefill");
    assert_eq!(s.position(), prompt.len());
    assert_eq!(fed, stepped);
}

#[test]
fn the_candidates_ranked_on_the_device_are_the_logits_best_and_their_mass() {
    let bytes = model_bytes();
    let model = GpuModel::load(gpu(), &bytes, 32, Variant::Rows).expect("gpu model");
    let mut s = model.session().expect("session");
    let prompt = [1u32, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47];
    let mut token = None;
    for t in [0.5f32, 1.0, 1.7] {
        let top = match token {
            None => block_on(s.prefill_top(&prompt, t)),
            Some(token) => block_on(s.step_top(token, t)),
        }
        .expect("candidates");
        let logits = block_on(s.logits()).expect("logits");
        let want = Top::of(&logits, t, logits.len(), true);
        // Everything above the parts' largest value left out, in rank
        // order: hundreds of tokens, not the 16 a part keeps.
        assert!(top.best.len() > 64, "{}", top.best.len());
        assert_eq!(top.best[..], want.best[..top.best.len()], "t {t}");
        assert!(!top.complete);
        let rel = (top.total - want.total).abs() / want.total;
        assert!(rel < 1e-4, "t {t}: {} vs {}", top.total, want.total);
        token = Some(top.best[0].0);
    }
    // A draw from them equals the draw from the logits, or says it
    // needs them.
    let params = Sampling {
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
        seed: 3,
    };
    let mut a = Sampler::new(params.clone()).expect("sampler");
    let mut b = Sampler::new(params).expect("sampler");
    for _ in 0..8 {
        let top = block_on(s.step_top(token.unwrap_or(0), 1.0)).expect("candidates");
        let logits = block_on(s.logits()).expect("logits");
        let picked = a.sample_top(&top).unwrap_or_else(|| a.sample(&logits));
        assert_eq!(picked, b.sample(&logits));
        token = Some(picked);
    }
}

#[test]
fn a_full_cache_is_an_error_and_a_new_session_starts_again() {
    let bytes = model_bytes();
    let model = GpuModel::load(gpu(), &bytes, 2, Variant::Rows).expect("gpu model");
    let mut m = model.session().expect("session");
    let first = block_on(m.step(1)).expect("step");
    block_on(m.step(2)).expect("step");
    assert!(matches!(
        block_on(m.step(3)),
        Err(gpu::GpuError::Length {
            what: "KV cache positions",
            ..
        })
    ));
    // A prompt that does not fit is refused whole.
    drop(m);
    let mut m = model.session().expect("session");
    assert!(matches!(
        block_on(m.prefill(&[1, 2, 3])),
        Err(gpu::GpuError::Length { .. })
    ));
    assert_eq!(m.position(), 0);
    assert_eq!(block_on(m.step(1)).expect("step"), first);
}

/// A device that cannot run a kernel (here: fewer storage buffers per
/// stage than attention binds) fails the checked load with the device's
/// reason, instead of a model whose skipped dispatches read as zeros.
#[test]
fn a_device_that_rejects_a_kernel_fails_the_load_with_its_reason() {
    let bytes = model_bytes();
    let adapter = block_on(gpu::adapter(wgpu::Backends::VULKAN)).expect("a Vulkan adapter");
    let (device, queue) = block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        required_limits: wgpu::Limits {
            max_storage_buffers_per_shader_stage: 4,
            ..adapter.limits()
        },
        ..Default::default()
    }))
    .expect("device");
    let small = Gpu::with_device(device, queue);
    let err =
        block_on(GpuModel::load_checked(small, &bytes, 8, Variant::Rows)).expect_err("rejected");
    assert!(
        matches!(err, gpu::GpuModelError::Gpu(gpu::GpuError::Rejected(_))),
        "{err}"
    );
    assert!(err.to_string().contains("rejected"), "{err}");
    // The same model on the adapter's own limits loads and runs.
    let m = block_on(GpuModel::load_checked(gpu(), &bytes, 8, Variant::Rows)).expect("loads");
    assert_eq!(m.session().expect("session").position(), 0);
}
