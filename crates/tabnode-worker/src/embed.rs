//! The sentence-embedding model in the worker, besides the chat model: its
//! files from the browser's cache when they pass the catalog's checks,
//! else downloaded (resumable, checked) and cached; the network's `Embed`
//! batches answered on the CPU with the portable
//! [`tabnode_infer::embedder::Embedder`] (the native node's code), one
//! input at a time with a turn of the event loop between inputs, so a
//! generation sharing the worker keeps going.

use std::cell::RefCell;
use std::rc::Rc;

use js_sys::{Object, Uint8Array};
use tabnode_core::infer::EmbedRequest;
use tabnode_core::worker::{EmbedderFile, FromWorker};
use tabnode_core::{ErrorCode, Response};
use tabnode_infer::embedder::{Embedder, FILES};
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;

use crate::model::{cached, download, forget_parts, js_err, open_named, Progress, CACHE, LOADING};
use crate::web::{next_task, now_ms, post, scope};
use crate::WorkerError;

thread_local! {
    static EMBEDDER: RefCell<Option<Rc<Embedder>>> = const { RefCell::new(None) };
}

/// Loads embedding model `id` from `base_url` and reports `EmbedderReady`
/// or `EmbedderFailed`.
pub async fn load(id: String, base_url: String, files: Vec<EmbedderFile>) {
    // One load at a time, the chat model's included (memory).
    let lock = LOADING.with(Rc::clone);
    let _one = lock.lock().await;
    let started = now_ms();
    match load_inner(&id, &base_url, &files).await {
        Ok((embedder, from_cache, downloaded_bytes)) => {
            let dimensions = u32::try_from(embedder.model().dimensions()).unwrap_or(u32::MAX);
            EMBEDDER.with(|e| *e.borrow_mut() = Some(Rc::new(embedder)));
            post(&FromWorker::EmbedderReady {
                id,
                dimensions,
                from_cache,
                downloaded_bytes,
                load_ms: now_ms() - started,
            });
        }
        Err(e) => post(&FromWorker::EmbedderFailed {
            id,
            message: e.to_string(),
        }),
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

/// Answers an `Embed` batch with the loaded model (refused when there is
/// none, or it is another model).
pub async fn answer(request: &EmbedRequest) -> Response {
    let Some(embedder) = EMBEDDER.with(|e| e.borrow().clone()) else {
        return Response::Error {
            code: ErrorCode::UnknownModel,
            message: "this tab serves no embedding model".into(),
        };
    };
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
