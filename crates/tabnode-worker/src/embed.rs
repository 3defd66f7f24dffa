//! The sentence-embedding model in the worker, besides the chat model: its
//! files from the browser's cache when they pass the catalog's checks,
//! else downloaded (resumable, checked) and cached; the network's `Embed`
//! batches answered with the portable
//! [`tabnode_infer::embedder::Embedder`] (the native node's code): on
//! WebGPU a batch in one submission (the WGSL encoder, on the prover's
//! device), on the CPU one input at a time with a turn of the event loop
//! between inputs, so a generation sharing the worker keeps going. Which
//! one: as the page asks, else the faster on a probe batch.

use std::cell::RefCell;
use std::rc::Rc;

use js_sys::{Object, Uint8Array};
use tabnode_core::infer::{Backend, EmbedInput, EmbedRequest};
use tabnode_core::worker::{EmbedderFile, FromWorker};
use tabnode_core::{ErrorCode, Response};
use tabnode_infer::embedder::{Embedder, FILES};
use tabnode_infer::gpu::Gpu;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;

use crate::model::{cached, download, forget_parts, js_err, open_named, Progress, CACHE, LOADING};
use crate::web::{next_task, now_ms, post, scope};
use crate::WorkerError;

thread_local! {
    static EMBEDDER: RefCell<Option<Rc<Embedder>>> = const { RefCell::new(None) };
}

/// Loads embedding model `id` from `base_url`, places it on `backend` (or
/// the faster) and reports `EmbedderReady` or `EmbedderFailed`.
pub async fn load(
    id: String,
    base_url: String,
    files: Vec<EmbedderFile>,
    backend: Option<Backend>,
) {
    // One load at a time, the chat model's included (memory).
    let lock = LOADING.with(Rc::clone);
    let _one = lock.lock().await;
    let started = now_ms();
    let loaded = match load_inner(&id, &base_url, &files).await {
        Ok((mut embedder, from_cache, downloaded_bytes)) => place(&mut embedder, backend)
            .await
            .map(|(backend, reason)| (embedder, from_cache, downloaded_bytes, backend, reason)),
        Err(e) => Err(e),
    };
    match loaded {
        Ok((embedder, from_cache, downloaded_bytes, backend, reason)) => {
            let dimensions = u32::try_from(embedder.model().dimensions()).unwrap_or(u32::MAX);
            EMBEDDER.with(|e| *e.borrow_mut() = Some(Rc::new(embedder)));
            post(&FromWorker::EmbedderReady {
                id,
                dimensions,
                from_cache,
                downloaded_bytes,
                load_ms: now_ms() - started,
                backend,
                reason,
            });
        }
        Err(e) => post(&FromWorker::EmbedderFailed {
            id,
            message: e.to_string(),
        }),
    }
}

/// Texts the backends are timed on: short sentences, as most inputs are.
const PROBE: [&str; 8] = [
    "The quick brown fox jumps over the lazy dog.",
    "Paris is the capital and largest city of France.",
    "How do I reset my password?",
    "Embeddings map texts to vectors whose distances follow meaning.",
    "A cat sleeps on the warm windowsill all afternoon.",
    "The relay sends each batch to a node that serves the model.",
    "Rust compiles to WebAssembly for the browser.",
    "What is the weather like tomorrow in Berlin?",
];

/// Puts `embedder` on `pref`, or, without one, on WebGPU when the tab has
/// it and it embeds [`PROBE`] faster than the CPU (each timed once after a
/// first run that compiles the shaders). Returns the backend and why.
async fn place(
    embedder: &mut Embedder,
    pref: Option<Backend>,
) -> Result<(Backend, String), WorkerError> {
    if pref == Some(Backend::Cpu) {
        return Ok((Backend::Cpu, "asked for (embed_backend=cpu)".into()));
    }
    let Some(prover) = crate::web::gpu_settled().await else {
        return match pref {
            Some(_) => Err(WorkerError::NoWebGpu),
            None => Ok((Backend::Cpu, "no WebGPU adapter".into())),
        };
    };
    let gpu = Gpu::with_device(prover.device().clone(), prover.queue().clone());
    if let Err(e) = embedder.use_gpu(gpu) {
        return match pref {
            Some(_) => Err(WorkerError::EmbedderGpu(e)),
            None => Ok((
                Backend::Cpu,
                format!("the WebGPU encoder cannot run it ({e})"),
            )),
        };
    }
    let request = EmbedRequest {
        request_id: 0,
        model: embedder.id().to_owned(),
        inputs: PROBE
            .iter()
            .map(|t| EmbedInput::Text((*t).to_owned()))
            .collect(),
    };
    let answered = |r: &Option<Response>| matches!(r, Some(Response::Embedded(_)));
    let first = embedder.answer_on_gpu(&request).await;
    if !answered(&first) {
        embedder.use_cpu();
        let why = match first {
            Some(Response::Error { message, .. }) => message,
            other => format!("{other:?}"),
        };
        return match pref {
            Some(_) => Err(WorkerError::Model(why)),
            None => Ok((Backend::Cpu, format!("the WebGPU encoder failed ({why})"))),
        };
    }
    if pref == Some(Backend::Webgpu) {
        return Ok((Backend::Webgpu, "asked for (embed_backend=webgpu)".into()));
    }
    let t = now_ms();
    let again = embedder.answer_on_gpu(&request).await;
    let web_ms = now_ms() - t;
    let t = now_ms();
    for input in &request.inputs {
        embedder
            .row(input)
            .map_err(|e| WorkerError::Model(e.to_string()))?;
    }
    let cpu_ms = now_ms() - t;
    let n = PROBE.len() as f64;
    let times = format!(
        "webgpu {:.1} ms/text, cpu {:.1} ms/text",
        web_ms / n,
        cpu_ms / n
    );
    if answered(&again) && web_ms < cpu_ms {
        Ok((Backend::Webgpu, format!("faster on this machine: {times}")))
    } else {
        embedder.use_cpu();
        Ok((Backend::Cpu, format!("faster on this machine: {times}")))
    }
}

async fn load_inner(
    id: &str,
    base_url: &str,
    files: &[EmbedderFile],
) -> Result<(Embedder, bool, u64), WorkerError> {
    let names: Vec<&str> = files.iter().map(|f| f.file.as_str()).collect();
    if names != FILES {
        return Err(WorkerError::Model(format!(
            "{id}: files {names:?}; an embedding model is {FILES:?}"
        )));
    }
    let base = web_sys::Url::new_with_base(base_url, &scope().location().href())
        .map_err(js_err)?
        .href();
    let cache = open_named(CACHE).await?;
    let all: u64 = files.iter().map(|f| f.check.bytes).sum();
    let (mut before, mut downloaded) = (0, 0);
    let mut bytes = Vec::with_capacity(files.len());
    let mut fetched = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let url = format!("{base}{}", f.file);
        let progress = Progress::Embedder { before, all };
        let held = match cached(&cache, &url, progress).await? {
            Some(b) => match f.check.verify(&url, &b) {
                Ok(()) => Some(b),
                Err(e) => {
                    // A damaged copy is dropped and fetched again.
                    web_sys::console::warn_1(&format!("tabnode worker: {e}; downloading").into());
                    let _ = JsFuture::from(cache.delete_with_str(&url)).await;
                    None
                }
            },
            None => None,
        };
        let b = match held {
            Some(b) => b,
            None => {
                let b = download(&url, Some(f.check.clone()), progress).await?;
                downloaded += b.len() as u64;
                fetched.push((i, url));
                b
            }
        };
        before += f.check.bytes;
        bytes.push(b);
    }
    let embedder = Embedder::from_files(id, [&bytes[0], &bytes[1], &bytes[2], &bytes[3]])
        .map_err(|e| WorkerError::Model(format!("{id}: {e}")))?;
    // Only files that load are cached.
    for (i, url) in &fetched {
        let body = Uint8Array::from(bytes[*i].as_slice());
        let saved =
            web_sys::Response::new_with_opt_buffer_source(Some(body.unchecked_ref::<Object>()))
                .map_err(js_err)
                .map(|r| cache.put_with_str(url, &r));
        match saved {
            Ok(put) => {
                if let Err(e) = JsFuture::from(put).await {
                    web_sys::console::warn_1(
                        &format!("tabnode worker: could not cache {url}: {:?}", js_err(e)).into(),
                    );
                }
            }
            Err(e) => web_sys::console::warn_1(&format!("tabnode worker: {e}").into()),
        }
        forget_parts(url).await;
    }
    Ok((embedder, fetched.is_empty(), downloaded))
}

/// Where the loaded embedding model computes: `webgpu` or `cpu`.
pub fn device() -> &'static str {
    match EMBEDDER.with(|e| e.borrow().as_ref().map(|e| e.gpu().is_some())) {
        Some(true) => "webgpu",
        _ => "cpu",
    }
}

/// Answers an `Embed` batch with the loaded model (refused when there is
/// none, or it is another model).
pub async fn answer(request: &EmbedRequest) -> Response {
    let Some(embedder) = EMBEDDER.with(|e| e.borrow().clone()) else {
        return Response::Error {
            code: ErrorCode::UnknownModel,
            message: "this tab serves no embedding model".into(),
        };
    };
    if let Some(on_gpu) = embedder.answer_on_gpu(request).await {
        return on_gpu;
    }
    if let Some(no) = embedder.refusal(request) {
        return no;
    }
    let mut rows = Vec::with_capacity(request.inputs.len());
    for input in &request.inputs {
        match embedder.row(input) {
            Ok(r) => rows.push(r),
            Err(e) => return Embedder::respond(Err(e)),
        }
        next_task().await;
    }
    Embedder::respond(Ok(rows))
}
