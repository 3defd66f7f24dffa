//! Browser glue: the worker's message loop and WebGPU.

use js_sys::{Promise, Reflect};
use tabnode_core::worker::{FromWorker, ToWorker};
use tabnode_core::{GpuInfo, GpuLimits};
use wasm_bindgen::{prelude::*, JsCast};
use wasm_bindgen_futures::{spawn_local, JsFuture};
use web_sys::{DedicatedWorkerGlobalScope, MessageEvent};

use crate::WorkerError;

fn scope() -> DedicatedWorkerGlobalScope {
    js_sys::global().unchecked_into()
}

fn post(msg: &FromWorker) {
    match serde_wasm_bindgen::to_value(msg) {
        Ok(v) => {
            if let Err(e) = scope().post_message(&v) {
                web_sys::console::error_2(&"tabnode worker: postMessage failed".into(), &e);
            }
        }
        Err(e) => web_sys::console::error_1(&format!("tabnode worker: encode: {e}").into()),
    }
}

/// Entry point: installs the message handler and tells the page it is loaded.
#[wasm_bindgen(start)]
pub fn start() {
    console_error_panic_hook::set_once();
    let handler = Closure::<dyn FnMut(MessageEvent)>::new(|ev: MessageEvent| {
        match serde_wasm_bindgen::from_value::<ToWorker>(ev.data()) {
            Ok(ToWorker::Init) => spawn_local(async {
                match open_gpu().await {
                    Ok(gpu) => post(&FromWorker::GpuReady { gpu }),
                    Err(e) => post(&FromWorker::GpuUnavailable {
                        reason: e.to_string(),
                    }),
                }
            }),
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

/// `GPUAdapterInfo` strings that wgpu does not surface on the web.
async fn adapter_info_strings() -> Option<(String, String, String)> {
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
    Some((s("vendor"), s("architecture"), s("description")))
}

/// Opens a WebGPU device and describes it.
async fn open_gpu() -> Result<GpuInfo, WorkerError> {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: wgpu::Backends::BROWSER_WEBGPU,
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    let adapter = instance
        .request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            ..Default::default()
        })
        .await
        .map_err(|e| WorkerError::NoAdapter(e.to_string()))?;
    let adapter_limits = adapter.limits();
    // Ask for the adapter's own limits: big matmuls need the large buffers.
    let (_device, _queue) = adapter
        .request_device(&wgpu::DeviceDescriptor {
            label: Some("tabnode"),
            required_limits: adapter_limits.clone(),
            ..Default::default()
        })
        .await
        .map_err(|e| WorkerError::Device(e.to_string()))?;
    let info = adapter.get_info();
    let (vendor, architecture, description) = adapter_info_strings().await.unwrap_or_default();
    let features = adapter
        .features()
        .iter_names()
        .map(|(name, _)| name.to_lowercase().replace('_', "-"))
        .collect();
    Ok(GpuInfo {
        vendor,
        architecture,
        description: if description.is_empty() {
            info.name
        } else {
            description
        },
        backend: format!("{:?}", info.backend),
        is_fallback: info.device_type == wgpu::DeviceType::Cpu,
        features,
        limits: limits(&adapter_limits),
    })
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
