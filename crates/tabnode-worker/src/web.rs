//! Browser glue: the worker's message loop, WebGPU, and the prover.

use std::cell::RefCell;

use futures::channel::oneshot;
use std::rc::Rc;

use js_sys::{Promise, Reflect};
use serde::Serialize;
use tabnode_core::pof::{max_n_for, Matmul, PofResponder};
use tabnode_core::worker::{FromWorker, KernelResult, ToWorker};
use tabnode_core::{ErrorCode, GpuInfo, GpuLimits, Request, Response};
use tabnode_pof::gpu::{GpuError, GpuProver, Kernel};
use tabnode_pof::{expand, matmul_cpu};
use wasm_bindgen::{prelude::*, JsCast};
use wasm_bindgen_futures::{spawn_local, JsFuture};
use web_sys::{DedicatedWorkerGlobalScope, MessageEvent};

use crate::WorkerError;

pub(crate) fn scope() -> DedicatedWorkerGlobalScope {
    js_sys::global().unchecked_into()
}

pub(crate) fn now_ms() -> f64 {
    scope().performance().map_or(0.0, |p| p.now())
}

pub(crate) fn post(msg: &FromWorker) {
    // 64-bit values (Freivalds results) travel as BigInts.
    let serializer =
        serde_wasm_bindgen::Serializer::new().serialize_large_number_types_as_bigints(true);
    match msg.serialize(&serializer) {
        Ok(v) => {
            if let Err(e) = scope().post_message(&v) {
                web_sys::console::error_2(&"tabnode worker: postMessage failed".into(), &e);
            }
        }
        Err(e) => web_sys::console::error_1(&format!("tabnode worker: encode: {e}").into()),
    }
}

/// The worker's state: the GPU (once open) and the Proof-of-FLOPS prover.
#[derive(Default)]
struct State {
    gpu: Option<Rc<GpuProver>>,
    /// What the adapter is, once open.
    gpu_info: Option<GpuInfo>,
    /// Set once opening the GPU has finished, whether it worked or not.
    gpu_settled: bool,
    /// Requests waiting for the GPU to settle.
    waiting: Vec<oneshot::Sender<()>>,
    /// The prover logic shared with native nodes, made once the GPU has
    /// settled (its limits bound the challenge size, as the page
    /// advertises). An `Rc`, so no `RefCell` borrow is held across the
    /// matmul's await while an opening for another round comes in.
    responder: Option<Rc<PofResponder>>,
}

/// Waits until opening the GPU has finished (the page sends `Init` before
/// any request, so it has at least started).
pub(crate) async fn gpu_settled() -> Option<Rc<GpuProver>> {
    let rx = STATE.with(|s| {
        let mut s = s.borrow_mut();
        if s.gpu_settled {
            None
        } else {
            let (tx, rx) = oneshot::channel();
            s.waiting.push(tx);
            Some(rx)
        }
    });
    if let Some(rx) = rx {
        let _ = rx.await;
    }
    STATE.with(|s| s.borrow().gpu.clone())
}

/// Records how opening the GPU ended; `info` describes it when it worked.
fn settle_gpu(gpu: Option<(GpuProver, &GpuInfo)>) {
    let waiting = STATE.with(|s| {
        let mut s = s.borrow_mut();
        // The same bound the page computes from the same `GpuInfo`.
        let max_n = max_n_for(gpu.as_ref().map(|(_, info)| *info));
        s.responder = Some(Rc::new(PofResponder::new(max_n)));
        s.gpu_info = gpu.as_ref().map(|(_, info)| (*info).clone());
        s.gpu = gpu.map(|(g, _)| Rc::new(g));
        s.gpu_settled = true;
        std::mem::take(&mut s.waiting)
    });
    for w in waiting {
        let _ = w.send(());
    }
}

/// The adapter the prover opened, if any (after [`gpu_settled`]).
pub(crate) fn gpu_info() -> Option<GpuInfo> {
    STATE.with(|s| s.borrow().gpu_info.clone())
}

/// Resolves on a later task of the worker's event loop, so messages queued
/// meanwhile (a cancel) are handled: a `MessageChannel` round trip, which,
/// unlike a zero `setTimeout`, is not clamped to 4 ms.
pub(crate) fn next_task() -> futures::future::LocalBoxFuture<'static, ()> {
    let promise = Promise::new(&mut |resolve, _| match web_sys::MessageChannel::new() {
        Ok(channel) => {
            channel.port1().set_onmessage(Some(resolve.unchecked_ref()));
            if channel.port2().post_message(&JsValue::UNDEFINED).is_err() {
                let _ = resolve.call0(&JsValue::UNDEFINED);
            }
        }
        Err(_) => {
            let _ = resolve.call0(&JsValue::UNDEFINED);
        }
    });
    Box::pin(async move {
        let _ = JsFuture::from(promise).await;
    })
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
}

/// Entry point: installs the message handler and tells the page it is loaded.
#[wasm_bindgen(start)]
pub fn start() {
    console_error_panic_hook::set_once();
    if scope().name() == crate::shards::SHARD {
        // A shard: `worker/worker.js` calls `serveShard`.
        return;
    }
    let handler = Closure::<dyn FnMut(MessageEvent)>::new(|ev: MessageEvent| {
        match serde_wasm_bindgen::from_value::<ToWorker>(ev.data()) {
            Ok(ToWorker::Init) => spawn_local(async {
                match open_gpu().await {
                    Ok(gpu) => post(&FromWorker::GpuReady { gpu }),
                    Err(e) => {
                        settle_gpu(None);
                        post(&FromWorker::GpuUnavailable {
                            reason: e.to_string(),
                        })
                    }
                }
            }),
            Ok(ToWorker::Bench { n, reps }) => spawn_local(async move {
                match bench(n, reps).await {
                    Ok(results) => post(&FromWorker::Bench { n, results }),
                    Err(message) => post(&FromWorker::Error { message }),
                }
            }),
            Ok(ToWorker::Handle { id, request }) => spawn_local(async move {
                let started = now_ms();
                let (response, device) = handle(request).await;
                post(&FromWorker::Handled {
                    id,
                    response,
                    elapsed_ms: now_ms() - started,
                    device: device.into(),
                });
            }),
            Ok(ToWorker::LoadModel {
                url,
                backend,
                threads,
                kernels,
                check,
            }) => spawn_local(crate::model::load(url, backend, threads, kernels, check)),
            Ok(ToWorker::Generate { id, request }) => {
                spawn_local(crate::model::generate(id, request))
            }
            Ok(ToWorker::Cancel { id }) => crate::model::cancel(id),
            Ok(ToWorker::LoadEmbedder {
                id,
                base_url,
                files,
                backend,
            }) => spawn_local(crate::embed::load(id, base_url, files, backend)),
            Err(e) => post(&FromWorker::Error {
                message: WorkerError::BadMessage(e.to_string()).to_string(),
            }),
        }
    });
    scope().set_onmessage(Some(handler.as_ref().unchecked_ref()));
    // The handler lives as long as the worker.
    handler.forget();
    post(&FromWorker::Loaded);
}

fn refuse(message: String) -> Response {
    Response::Error {
        code: ErrorCode::Invalid,
        message,
    }
}

/// The challenge matmul: WebGPU, or the CPU in a tab without one.
struct ChallengeMatmul(Option<Rc<GpuProver>>);

impl Matmul for ChallengeMatmul {
    type Error = GpuError;

    async fn matmul(&self, a: &[f32], b: &[f32], n: u32) -> Result<Vec<f32>, GpuError> {
        match &self.0 {
            Some(g) => g.matmul(a, b, n).await,
            None => Ok(matmul_cpu(a, b, n as usize)),
        }
    }
}

/// Answers a request (the page's driver has checked that the relay sent
/// it) with the prover shared with native nodes; also says where it
/// computed.
async fn handle(request: Request) -> (Response, &'static str) {
    if let Request::Embed(batch) = &request {
        return (crate::embed::answer(batch).await, crate::embed::device());
    }
    let gpu = gpu_settled().await;
    let device = match (&request, &gpu) {
        (Request::PofChallenge(_), Some(_)) => "webgpu",
        _ => "cpu",
    };
    let Some(responder) = STATE.with(|s| s.borrow().responder.clone()) else {
        return (refuse("the prover is not ready".into()), "cpu");
    };
    match responder.answer(&ChallengeMatmul(gpu), &request).await {
        Some(response) => (response, device),
        None => (
            refuse(format!("the worker does not handle {}", request.name())),
            "cpu",
        ),
    }
}

/// Times every WGSL kernel at size `n` against the CPU reference.
async fn bench(n: u32, reps: u32) -> Result<Vec<KernelResult>, String> {
    let gpu = gpu_settled().await.ok_or("no WebGPU device")?;
    let seed = tabnode_pof::derive_seed(&[6; 32], b"bench", 0, n);
    let (a, b) = expand(&seed, n).map_err(|e| e.to_string())?;
    let want = matmul_cpu(&a, &b, n as usize);
    let mut out = Vec::new();
    for kernel in Kernel::ALL {
        let k = gpu.other_kernel(kernel);
        // Warm-up: pipeline compilation, first allocation.
        let got = k.matmul(&a, &b, n).await.map_err(|e| e.to_string())?;
        let started = now_ms();
        for _ in 0..reps.max(1) {
            k.matmul(&a, &b, n).await.map_err(|e| e.to_string())?;
        }
        let secs = (now_ms() - started) / 1000.0;
        out.push(KernelResult {
            kernel: kernel.name().into(),
            gflops: tabnode_pof::flops(n) * f64::from(reps.max(1)) / secs.max(1e-9) / 1e9,
            exact: got == want,
        });
    }
    Ok(out)
}

/// `GPUAdapterInfo` strings that wgpu does not surface on the web, and
/// whether the adapter is a fallback (software) one.
async fn adapter_info_strings() -> Option<(String, String, String, bool)> {
    let gpu = Reflect::get(&scope().navigator(), &"gpu".into()).ok()?;
    if gpu.is_undefined() {
        return None;
    }
    let request = Reflect::get(&gpu, &"requestAdapter".into()).ok()?;
    let promise: Promise = request
        .unchecked_ref::<js_sys::Function>()
        .call0(&gpu)
        .ok()?
        .dyn_into()
        .ok()?;
    let adapter = JsFuture::from(promise).await.ok()?;
    let info = Reflect::get(&adapter, &"info".into()).ok()?;
    let s = |k: &str| {
        Reflect::get(&info, &k.into())
            .ok()
            .and_then(|v| v.as_string())
            .unwrap_or_default()
    };
    // `info.isFallbackAdapter` (newer browsers) or the adapter's own flag.
    let fallback = [&info, &adapter].into_iter().any(|o| {
        Reflect::get(o, &"isFallbackAdapter".into())
            .ok()
            .and_then(|v| v.as_bool())
            .unwrap_or(false)
    });
    Some((s("vendor"), s("architecture"), s("description"), fallback))
}

/// Opens a WebGPU device, compiles the prover on it, and describes it.
async fn open_gpu() -> Result<GpuInfo, WorkerError> {
    let adapter = tabnode_pof::gpu::best_adapter(wgpu::Backends::BROWSER_WEBGPU)
        .await
        .map_err(|e| WorkerError::NoAdapter(e.to_string()))?;
    let adapter_limits = adapter.limits();
    // The adapter's own limits: big matmuls need the large buffers.
    let prover = GpuProver::new(&adapter)
        .await
        .map_err(|e| WorkerError::Device(e.to_string()))?;
    let info = adapter.get_info();
    let (vendor, architecture, description, fallback) =
        adapter_info_strings().await.unwrap_or_default();
    let features = adapter
        .features()
        .iter_names()
        .map(|(name, _)| name.to_lowercase().replace('_', "-"))
        .collect();
    let gpu = GpuInfo {
        vendor,
        architecture,
        description: if description.is_empty() {
            info.name
        } else {
            description
        },
        backend: format!("{:?}", info.backend),
        is_fallback: fallback || info.device_type == wgpu::DeviceType::Cpu,
        features,
        limits: limits(&adapter_limits),
    };
    settle_gpu(Some((prover, &gpu)));
    Ok(gpu)
}

/// The subset of limits the network cares about, in the protocol's shape.
fn limits(l: &wgpu::Limits) -> GpuLimits {
    GpuLimits {
        max_buffer_size: l.max_buffer_size,
        max_storage_buffer_binding_size: l.max_storage_buffer_binding_size,
        max_storage_buffers_per_shader_stage: l.max_storage_buffers_per_shader_stage,
        max_compute_workgroup_storage_size: l.max_compute_workgroup_storage_size,
        max_compute_invocations_per_workgroup: l.max_compute_invocations_per_workgroup,
        max_compute_workgroup_size_x: l.max_compute_workgroup_size_x,
    }
}
