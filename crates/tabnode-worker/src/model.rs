//! The model in the worker: download with progress into the Cache API (so
//! the next visit loads without downloading), load on the CPU (the file's
//! quantized blocks, wasm SIMD128 kernels) or on WebGPU (the same blocks,
//! WGSL kernels: `tabnode_infer::gpu`), whichever decodes faster here or
//! the page asks for, generate with streamed tokens and cancellation.

use std::cell::RefCell;
use std::collections::HashSet;
use std::rc::Rc;

use futures::lock::Mutex;
use js_sys::{Object, Reflect, Uint8Array};
use tabnode_core::download::{Download, FileCheck, Head, Start, Validator};
use tabnode_core::infer::{Backend, BackendTiming, EngineChoice, GenerateRequest, GpuKernels};
use tabnode_core::worker::FromWorker;
use tabnode_core::{ErrorCode, GpuInfo};
use tabnode_infer::engine::Runner;
use tabnode_infer::gpu::{Gpu, Variant};
use tabnode_infer::{generate::GenerateError, Engine, EngineError};
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;
use web_sys::{
    Cache, Headers, ReadableStreamDefaultReader, Request, RequestInit, Response, ResponseInit,
};

use crate::web::{now_ms, post, scope};
use crate::WorkerError;

/// The Cache API bucket holding model files.
pub(crate) const CACHE: &str = "tabnode-models-v1";

/// Progress messages at most every this many bytes.
const PROGRESS_STEP: u64 = 1 << 20;

/// Where a download's progress goes: the chat model's `ModelProgress`, or
/// the embedding model's `EmbedderProgress` (its files' bytes together:
/// `before` are the bytes of the files ahead of this one).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Progress {
    Model,
    Embedder { before: u64, all: u64 },
}

impl Progress {
    fn report(self, phase: &str, done: u64, total: u64) {
        post(&match self {
            Progress::Model => FromWorker::ModelProgress {
                phase: phase.into(),
                done,
                total,
            },
            Progress::Embedder { before, all } => FromWorker::EmbedderProgress {
                done: before + done,
                total: all,
            },
        });
    }
}

#[derive(Default)]
struct ModelState {
    engine: Option<Rc<Engine>>,
    cancelled: HashSet<u64>,
}

thread_local! {
    static MODEL: RefCell<ModelState> = RefCell::new(ModelState::default());
    /// One load at a time.
    pub(crate) static LOADING: Rc<Mutex<()>> = Rc::new(Mutex::new(()));
    /// One generation at a time: they share the device.
    static GENERATING: Rc<Mutex<()>> = Rc::new(Mutex::new(()));
}

pub(crate) fn js_err(e: wasm_bindgen::JsValue) -> WorkerError {
    WorkerError::Model(
        e.as_string()
            .or_else(|| {
                e.dyn_ref::<js_sys::Error>()
                    .map(|e| String::from(e.message()))
            })
            .unwrap_or_else(|| format!("{e:?}")),
    )
}

pub(crate) async fn open_named(name: &str) -> Result<Cache, WorkerError> {
    let storage = scope().caches().map_err(js_err)?;
    let cache = JsFuture::from(storage.open(name)).await.map_err(js_err)?;
    cache.dyn_into::<Cache>().map_err(js_err)
}

/// The cached copy of `url`, if the browser holds one.
pub(crate) async fn cached(
    cache: &Cache,
    url: &str,
    progress: Progress,
) -> Result<Option<Vec<u8>>, WorkerError> {
    let hit = JsFuture::from(cache.match_with_str(url))
        .await
        .map_err(js_err)?;
    if hit.is_undefined() {
        return Ok(None);
    }
    let response: Response = hit.dyn_into().map_err(js_err)?;
    progress.report("cache", 0, 0);
    let buf = JsFuture::from(response.array_buffer().map_err(js_err)?)
        .await
        .map_err(js_err)?;
    Ok(Some(Uint8Array::new(&buf).to_vec()))
}

/// The Cache API bucket holding the saved parts of unfinished downloads
/// ([`tabnode_core::download::PART`] bytes each).
const PARTIAL: &str = "tabnode-partial-v1";

/// Times one load takes up a broken download again before it gives up (the
/// saved parts stay for the next load).
const RESUMES: u32 = 5;

/// Times one load starts over because the server's file changed under it.
const RESTARTS: u32 = 2;

/// The headers a saved part keeps its file's [`Validator`] in.
const TOTAL: &str = "x-tabnode-total";
const LAST_MODIFIED: &str = "x-tabnode-last-modified";
const ETAG: &str = "x-tabnode-etag";

/// The cache key of part `i` of `url`'s download.
fn part_key(url: &str, i: usize) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}tabnode-part={i}")
}

/// The parts a former load saved of `url`, in order, up to the first gap.
async fn saved_parts(cache: &Cache, url: &str) -> Result<Vec<(Validator, Vec<u8>)>, WorkerError> {
    let mut out = Vec::new();
    loop {
        let hit = JsFuture::from(cache.match_with_str(&part_key(url, out.len())))
            .await
            .map_err(js_err)?;
        if hit.is_undefined() {
            return Ok(out);
        }
        let response: Response = hit.dyn_into().map_err(js_err)?;
        let h = response.headers();
        let header = |name: &str| h.get(name).ok().flatten();
        let Some(total) = header(TOTAL).and_then(|t| t.parse().ok()) else {
            return Ok(out);
        };
        let v = Validator {
            total,
            last_modified: header(LAST_MODIFIED),
            etag: header(ETAG),
        };
        let buf = JsFuture::from(response.array_buffer().map_err(js_err)?)
            .await
            .map_err(js_err)?;
        out.push((v, Uint8Array::new(&buf).to_vec()));
    }
}

/// Drops the saved parts of `url` from part `from` on.
async fn drop_parts(cache: &Cache, url: &str, from: usize) {
    for i in from.. {
        match JsFuture::from(cache.delete_with_str(&part_key(url, i))).await {
            Ok(v) if v.as_bool() == Some(true) => {}
            _ => return,
        }
    }
}

/// Saves part `i` of `url` under the file's validator.
async fn save_part(
    cache: &Cache,
    url: &str,
    i: usize,
    v: &Validator,
    bytes: &[u8],
) -> Result<(), WorkerError> {
    let headers = Headers::new().map_err(js_err)?;
    headers.set(TOTAL, &v.total.to_string()).map_err(js_err)?;
    for (name, value) in [(LAST_MODIFIED, &v.last_modified), (ETAG, &v.etag)] {
        if let Some(value) = value {
            headers.set(name, value).map_err(js_err)?;
        }
    }
    let init = ResponseInit::new();
    init.set_headers(&headers);
    let body = Uint8Array::from(bytes);
    let response =
        Response::new_with_opt_buffer_source_and_init(Some(body.unchecked_ref::<Object>()), &init)
            .map_err(js_err)?;
    JsFuture::from(cache.put_with_str(&part_key(url, i), &response))
        .await
        .map_err(js_err)?;
    Ok(())
}

/// How one request of a download ended.
enum Fetched {
    /// The file is whole.
    Done,
    /// The server's file changed: ask again from the start.
    Again,
    /// The connection broke (or the server is briefly away): take it up
    /// again from what is held.
    Broken(String),
}

/// One request of `url`'s download, from what `d` holds: the body appended
/// to it, each whole part saved as it completes.
async fn fetch_into(
    parts: &Cache,
    url: &str,
    d: &mut Download,
    progress: Progress,
) -> Result<Fetched, WorkerError> {
    let headers = Headers::new().map_err(js_err)?;
    if let Some(range) = d.range() {
        headers.set("range", &range).map_err(js_err)?;
    }
    let init = RequestInit::new();
    init.set_headers(&headers);
    let request = Request::new_with_str_and_init(url, &init).map_err(js_err)?;
    let response: Response = match JsFuture::from(scope().fetch_with_request(&request)).await {
        Ok(r) => r.dyn_into().map_err(js_err)?,
        Err(e) => return Ok(Fetched::Broken(js_err(e).to_string())),
    };
    if matches!(response.status(), 502..=504) {
        return Ok(Fetched::Broken(format!("HTTP {}", response.status())));
    }
    let h = response.headers();
    let header = |name: &str| h.get(name).ok().flatten();
    let head = Head {
        status: response.status(),
        content_length: header("content-length").and_then(|s| s.parse().ok()),
        content_range: header("content-range"),
        last_modified: header("last-modified"),
        etag: header("etag"),
    };
    match d.start(&head)? {
        Start::Continue => {}
        Start::Restarted => drop_parts(parts, url, 0).await,
        Start::Again => {
            drop_parts(parts, url, 0).await;
            return Ok(Fetched::Again);
        }
    }
    let total = d.total().unwrap_or(0);
    let body = response
        .body()
        .ok_or_else(|| WorkerError::Model(format!("{url}: empty body")))?;
    let reader: ReadableStreamDefaultReader = body.get_reader().unchecked_into();
    let mut reported = d.have();
    progress.report("download", reported, total);
    loop {
        let chunk = match JsFuture::from(reader.read()).await {
            Ok(c) => c,
            Err(e) => return Ok(Fetched::Broken(js_err(e).to_string())),
        };
        let done = Reflect::get(&chunk, &"done".into())
            .map_err(js_err)?
            .as_bool()
            .unwrap_or(true);
        if done {
            return Ok(Fetched::Done);
        }
        let value: Uint8Array = Reflect::get(&chunk, &"value".into())
            .map_err(js_err)?
            .dyn_into()
            .map_err(js_err)?;
        let whole = d.push(&value.to_vec());
        if let Some(v) = d.validator().cloned() {
            for i in whole {
                let Some(bytes) = d.part(i) else { continue };
                if let Err(e) = save_part(parts, url, i, &v, bytes).await {
                    // Still downloading; a broken download restarts further
                    // back on the next visit.
                    web_sys::console::warn_1(
                        &format!("tabnode worker: could not save part {i} of {url}: {e}").into(),
                    );
                }
            }
        }
        let have = d.have();
        if have - reported >= PROGRESS_STEP {
            reported = have;
            progress.report("download", have, total);
        }
    }
}

/// Downloads `url`, posting progress: from the parts a former load saved,
/// taken up again where the connection breaks (a few times, waiting longer
/// each), and checked against the catalog's size and hash where `check`
/// gives them. Its saved parts stay until the whole file is cached
/// ([`forget_parts`]); a file that fails its check drops them.
pub(crate) async fn download(
    url: &str,
    check: Option<FileCheck>,
    progress: Progress,
) -> Result<Vec<u8>, WorkerError> {
    let parts = open_named(PARTIAL).await?;
    let mut d = Download::new(url, check);
    let saved = saved_parts(&parts, url).await?;
    let found = saved.len();
    let taken = d.resume(saved);
    if taken < found {
        drop_parts(&parts, url, taken).await;
    }
    if taken > 0 {
        trace(&format!("resuming {url} at byte {}", d.have()));
    }
    let (mut resumes, mut restarts) = (0, 0);
    loop {
        match fetch_into(&parts, url, &mut d, progress).await? {
            Fetched::Done => break,
            Fetched::Again if restarts < RESTARTS => restarts += 1,
            Fetched::Again => {
                return Err(WorkerError::Model(format!(
                    "{url}: the file changed on the server {restarts} times during the download"
                )))
            }
            Fetched::Broken(why) if resumes < RESUMES => {
                resumes += 1;
                web_sys::console::warn_1(
                    &format!(
                        "tabnode worker: {url}: the download broke at byte {} ({why}); resuming",
                        d.have()
                    )
                    .into(),
                );
                progress.report("resume", d.have(), d.total().unwrap_or(0));
                gloo_timers::future::TimeoutFuture::new(250 << resumes).await;
            }
            Fetched::Broken(why) => {
                return Err(WorkerError::Model(format!(
                    "{url}: the download broke at byte {} of {} ({why}) {resumes} times; \
                     loading again resumes from the parts saved",
                    d.have(),
                    d.total().unwrap_or(0)
                )))
            }
        }
    }
    let bytes = match d.finish() {
        Ok(b) => b,
        Err(e) => {
            drop_parts(&parts, url, 0).await;
            return Err(e.into());
        }
    };
    progress.report("download", bytes.len() as u64, bytes.len() as u64);
    Ok(bytes)
}

/// Drops `url`'s saved parts (the whole file is cached, or cannot be).
pub(crate) async fn forget_parts(url: &str) {
    if let Ok(parts) = open_named(PARTIAL).await {
        drop_parts(&parts, url, 0).await;
    }
}

/// The model on WebGPU: the file's blocks on the prover's device, the
/// barrier-free matvecs on a software adapter, the workgroup ones on a
/// hardware GPU (or the `kernels` asked for).
async fn load_webgpu(
    bytes: &[u8],
    software: bool,
    kernels: Option<GpuKernels>,
) -> Result<Engine, WorkerError> {
    let prover = crate::web::gpu_settled()
        .await
        .ok_or(WorkerError::NoWebGpu)?;
    let gpu = Gpu::with_device(prover.device().clone(), prover.queue().clone());
    let variant = match kernels {
        Some(GpuKernels::Rows) => Variant::Rows,
        Some(GpuKernels::Lanes) => Variant::Lanes,
        None => Variant::for_adapter(software),
    };
    let name = format!("webgpu-quantized-{}", variant.name());
    post(&FromWorker::ModelProgress {
        phase: "load".into(),
        done: 0,
        total: 1,
    });
    let engine =
        Engine::load_gpu(bytes, gpu, variant, tabnode_infer::gpu::POSITIONS, &name).await?;
    post(&FromWorker::ModelProgress {
        phase: "load".into(),
        done: 1,
        total: 1,
    });
    Ok(engine)
}

/// The model on the CPU with the file's quantized blocks (wasm SIMD128),
/// its rows split over `threads` workers where the page allows shared
/// memory ([`crate::shards`]); the workers it runs on, and why not more.
async fn load_cpu(
    bytes: Vec<u8>,
    threads: Option<u32>,
) -> Result<(Engine, u32, String), WorkerError> {
    let mut engine = Engine::load_quantized(bytes)?;
    let want = crate::shards::count(threads);
    let mut note = if crate::shards::isolated() {
        String::new()
    } else {
        "; 1 worker: the page is not cross-origin isolated (no shared memory)".into()
    };
    let mut workers = 1;
    if want > 1 {
        if let Runner::Cpu(model) = &mut engine.runner {
            trace(&format!("splitting the model over {want} workers"));
            match crate::shards::split(model, want as usize).await {
                Ok(()) => {
                    workers = want;
                    note = format!("; rows split over {want} workers");
                }
                Err(e) => {
                    web_sys::console::warn_1(
                        &format!("tabnode worker: {e}; computing alone").into(),
                    );
                    note = format!("; 1 worker ({e})");
                }
            }
        }
    }
    post(&FromWorker::ModelProgress {
        phase: "load".into(),
        done: 1,
        total: 1,
    });
    Ok((engine, workers, note))
}

/// Decode steps timed per backend at load when choosing between two.
const CHOICE_STEPS: usize = 4;
/// Decode steps timed when there is no choice (for the report only).
const REPORT_STEPS: usize = 2;

async fn timed(
    engine: &Engine,
    backend: Backend,
    steps: usize,
) -> Result<BackendTiming, WorkerError> {
    Ok(BackendTiming {
        backend,
        ms_per_token: engine.decode_ms(steps).await?,
    })
}

/// A software WebGPU adapter (SwiftShader, lavapipe): shaders run on the
/// CPU, so the engine takes the barrier-free kernels.
fn is_software(g: &GpuInfo) -> bool {
    g.is_fallback
        || [&g.vendor, &g.architecture, &g.description]
            .iter()
            .any(|s| {
                let s = s.to_lowercase();
                ["swiftshader", "llvmpipe", "lavapipe"]
                    .iter()
                    .any(|n| s.contains(n))
            })
}

fn only(
    engine: Engine,
    timing: BackendTiming,
    reason: String,
    threads: u32,
) -> (Engine, EngineChoice) {
    let choice = EngineChoice {
        backend: timing.backend,
        device: engine.device().to_owned(),
        reason,
        timings: vec![timing],
        threads,
    };
    (engine, choice)
}

/// The CPU engine, timed for the report, with `reason` for it.
async fn cpu_only(
    bytes: Vec<u8>,
    threads: Option<u32>,
    reason: String,
) -> Result<(Engine, EngineChoice), WorkerError> {
    let (engine, workers, note) = load_cpu(bytes, threads).await?;
    let t = timed(&engine, Backend::Cpu, REPORT_STEPS).await?;
    Ok(only(engine, t, format!("{reason}{note}"), workers))
}

/// Loads the model on the backend `pref` names, or else on the faster of
/// those available (timed), and says which and why.
async fn choose(
    bytes: Vec<u8>,
    pref: Option<Backend>,
    threads: Option<u32>,
    kernels: Option<GpuKernels>,
    gpu: Option<&GpuInfo>,
) -> Result<(Engine, EngineChoice), WorkerError> {
    let gpu = match (pref, gpu) {
        (Some(Backend::Cpu), _) => {
            return cpu_only(bytes, threads, "asked for (backend=cpu)".into()).await
        }
        (Some(Backend::Webgpu), None) => return Err(WorkerError::NoWebGpu),
        (Some(Backend::Webgpu), Some(g)) => {
            let engine = load_webgpu(&bytes, is_software(g), kernels).await?;
            drop(bytes);
            let t = timed(&engine, Backend::Webgpu, REPORT_STEPS).await?;
            return Ok(only(engine, t, "asked for (backend=webgpu)".into(), 1));
        }
        (None, None) => return cpu_only(bytes, threads, "no WebGPU adapter".into()).await,
        (None, Some(g)) => g,
    };
    // Time both, keep the faster. The WebGPU engine holds the file's
    // blocks, so loading it costs an upload, not an expansion. A model it
    // cannot run (an architecture it lacks, a kernel the browser rejects)
    // runs on the CPU, with the reason.
    let software = is_software(gpu);
    let web = match load_webgpu(&bytes, software, kernels).await {
        Ok(web) => web,
        Err(e) => {
            return cpu_only(
                bytes,
                threads,
                format!("the WebGPU engine cannot run it ({e})"),
            )
            .await
        }
    };
    let web_t = timed(&web, Backend::Webgpu, CHOICE_STEPS).await?;
    let (cpu, workers, note) = load_cpu(bytes, threads).await?;
    let cpu_t = timed(&cpu, Backend::Cpu, CHOICE_STEPS).await?;
    let (engine, fast, slow, threads) = if web_t.ms_per_token < cpu_t.ms_per_token {
        drop(cpu);
        (web, &web_t, &cpu_t, 1)
    } else {
        drop(web);
        (cpu, &cpu_t, &web_t, workers)
    };
    let kind = if software {
        "a software adapter"
    } else {
        "hardware"
    };
    let name = [&gpu.description, &gpu.architecture, &gpu.vendor]
        .into_iter()
        .find(|s| !s.is_empty())
        .cloned()
        .unwrap_or_else(|| "WebGPU".into());
    let reason = format!(
        "faster on this machine: {} {:.1} ms/token, {} {:.1} ms/token ({name}, {kind}){note}",
        fast.backend.name(),
        fast.ms_per_token,
        slow.backend.name(),
        slow.ms_per_token,
    );
    let choice = EngineChoice {
        backend: fast.backend,
        device: engine.device().to_owned(),
        reason,
        timings: vec![web_t.clone(), cpu_t.clone()],
        threads,
    };
    Ok((engine, choice))
}

/// Loads the model at `url` (cache first) on `backend` (or the faster one)
/// and reports `ModelReady` or `ModelFailed`.
pub async fn load(
    url: String,
    backend: Option<Backend>,
    threads: Option<u32>,
    kernels: Option<GpuKernels>,
    check: Option<FileCheck>,
) {
    let lock = LOADING.with(Rc::clone);
    let _one = lock.lock().await;
    let started = now_ms();
    match load_inner(&url, backend, threads, kernels, check).await {
        Ok((engine, choice, from_cache, downloaded)) => {
            let model = engine.card();
            MODEL.with(|m| m.borrow_mut().engine = Some(Rc::new(engine)));
            post(&FromWorker::ModelReady {
                model,
                from_cache,
                downloaded_bytes: downloaded,
                load_ms: now_ms() - started,
                engine: choice,
            });
        }
        Err(e) => post(&FromWorker::ModelFailed {
            message: e.to_string(),
        }),
    }
}

async fn load_inner(
    url: &str,
    backend: Option<Backend>,
    threads: Option<u32>,
    kernels: Option<GpuKernels>,
    check: Option<FileCheck>,
) -> Result<(Engine, EngineChoice, bool, u64), WorkerError> {
    // Resolve relative URLs against the worker's location, so the cache key
    // is the absolute address.
    let url = web_sys::Url::new_with_base(url, &scope().location().href())
        .map_err(js_err)?
        .href();
    // One device request at a time: the prover's opens first, and says
    // what the adapter is.
    let _ = crate::web::gpu_settled().await;
    let gpu = crate::web::gpu_info();
    let cache = open_named(CACHE).await?;
    trace("cache open");
    if let Some(bytes) = cached(&cache, &url, Progress::Model).await? {
        match choose(bytes, backend, threads, kernels, gpu.as_ref()).await {
            Ok((engine, choice)) => return Ok((engine, choice, true, 0)),
            Err(e @ WorkerError::NoWebGpu) => return Err(e),
            Err(e) => {
                // A damaged copy is dropped and fetched again.
                web_sys::console::warn_1(
                    &format!("tabnode worker: cached model unusable ({e}); downloading").into(),
                );
                let _ = JsFuture::from(cache.delete_with_str(&url)).await;
            }
        }
    }
    let bytes = download(&url, check, Progress::Model).await?;
    let downloaded = bytes.len() as u64;
    // The cache's copy, taken before the CPU engine takes the bytes.
    let body = Uint8Array::from(bytes.as_slice());
    let (engine, choice) = choose(bytes, backend, threads, kernels, gpu.as_ref()).await?;
    // Only a file that loads is cached.
    let response = Response::new_with_opt_buffer_source(Some(body.unchecked_ref::<Object>()))
        .map_err(js_err)?;
    if let Err(e) = JsFuture::from(cache.put_with_str(&url, &response)).await {
        // Still usable now; the next visit downloads again.
        web_sys::console::warn_1(
            &format!("tabnode worker: could not cache the model: {:?}", js_err(e)).into(),
        );
    }
    forget_parts(&url).await;
    Ok((engine, choice, false, downloaded))
}

fn trace(msg: &str) {
    web_sys::console::debug_1(&format!("tabnode worker: {msg}").into());
}

/// Marks generation `id` cancelled.
pub fn cancel(id: u64) {
    MODEL.with(|m| m.borrow_mut().cancelled.insert(id));
}

/// Runs generation `id`, streaming `Token`s, then `Generated` or
/// `GenerateFailed`.
pub async fn generate(id: u64, request: GenerateRequest) {
    let lock = GENERATING.with(Rc::clone);
    let _one = lock.lock().await;
    let Some(engine) = MODEL.with(|m| m.borrow().engine.clone()) else {
        MODEL.with(|m| m.borrow_mut().cancelled.remove(&id));
        post(&FromWorker::GenerateRejected {
            id,
            code: ErrorCode::UnknownModel,
            message: "no model is loaded".into(),
        });
        return;
    };
    match engine.check(&request) {
        Ok(prompt_tokens) => post(&FromWorker::GenerateStarted { id, prompt_tokens }),
        Err(e) => {
            MODEL.with(|m| m.borrow_mut().cancelled.remove(&id));
            let code = match e {
                EngineError::Generate(GenerateError::PromptTooLong { .. }) => ErrorCode::TooLarge,
                _ => ErrorCode::Invalid,
            };
            post(&FromWorker::GenerateRejected {
                id,
                code,
                message: e.to_string(),
            });
            return;
        }
    }
    let is_cancelled = || MODEL.with(|m| m.borrow().cancelled.contains(&id));
    let result = engine
        .generate_async(
            &request,
            &is_cancelled,
            &mut |tokens, text| {
                post(&FromWorker::Token {
                    id,
                    tokens: tokens.to_vec(),
                    text: text.into(),
                })
            },
            &crate::web::next_task,
        )
        .await;
    MODEL.with(|m| m.borrow_mut().cancelled.remove(&id));
    match result {
        Ok(result) => post(&FromWorker::Generated { id, result }),
        Err(e) => post(&FromWorker::GenerateFailed {
            id,
            message: e.to_string(),
        }),
    }
}
