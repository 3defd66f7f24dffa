//! The CPU engine on several workers: the tab's other cores.
//!
//! The worker's wasm has one thread (wasm threads need std rebuilt with
//! atomics, a nightly toolchain), so where the page is cross-origin
//! isolated the worker starts more workers of its own script (named
//! [`SHARD`]), hands each its rows of the model
//! ([`tabnode_infer::shard`]) and runs every forward with them. They swap
//! rows through a `SharedArrayBuffer`: per shard a round counter, two
//! slots (alternate rounds, so a fast shard's next round cannot overwrite
//! what a slow one still reads) and their lengths; a shard waiting for the
//! others spins on `Atomics.load` for a while (rounds are tens of
//! microseconds apart within a forward) and then sleeps in `Atomics.wait`.
//! Without isolation (the embed iframe on another site) there is no
//! shared memory and the worker computes alone.

use std::cell::{Cell, RefCell};

use js_sys::{
    Array, Atomics, Float32Array, Int32Array, Object, Promise, Reflect, SharedArrayBuffer,
    Uint8Array,
};
use tabnode_infer::cpu::{CpuModel, ShardSpec};
use tabnode_infer::shard::{Exchange, ExchangeError, Receive};
use wasm_bindgen::{prelude::*, JsCast};
use wasm_bindgen_futures::JsFuture;
use web_sys::{MessageEvent, Worker, WorkerOptions, WorkerType};

use crate::web::{now_ms, scope};
use crate::WorkerError;

/// The name of a shard worker (a worker of the same script, which starts
/// as a shard instead of answering the page).
pub const SHARD: &str = "tabnode-shard";
/// Most workers a model is split over by default (more cores give less
/// per worker than each round costs on small models).
pub const MAX_DEFAULT: u32 = 8;
/// Most workers `threads` may ask for.
pub const MAX_ASKED: u32 = 16;
/// `i32` words of control per shard: its round, its two slots' lengths,
/// padding to 64 bytes (shards write their own words only).
const CTRL: u32 = 16;
/// `Atomics.load`s a waiting shard spins for (about a millisecond) before
/// it sleeps.
const SPINS: u32 = 20_000;
/// How long a forward waits for another shard before giving up.
const FORWARD_MS: f64 = 60_000.0;
/// How long shard 0 waits for a new worker to start or load its rows.
const START_MS: i32 = 120_000;

fn transport(e: JsValue) -> ExchangeError {
    ExchangeError::Transport(format!("{e:?}"))
}

/// One shard's end of the shared buffer.
pub struct SabExchange {
    index: usize,
    count: usize,
    capacity: usize,
    ctrl: Int32Array,
    /// Per shard, its two slots.
    data: Vec<[Float32Array; 2]>,
    round: Cell<u32>,
    scratch: RefCell<Vec<f32>>,
    /// Shard 0: the other shards' workers, ended with it.
    workers: Vec<Worker>,
}

impl Drop for SabExchange {
    fn drop(&mut self) {
        for w in &self.workers {
            w.terminate();
        }
    }
}

fn buffer_bytes(count: usize, capacity: usize) -> Option<u32> {
    let ctrl = count.checked_mul(CTRL as usize * 4)?;
    let data = count
        .checked_mul(2)?
        .checked_mul(capacity)?
        .checked_mul(4)?;
    u32::try_from(ctrl.checked_add(data)?).ok()
}

impl SabExchange {
    /// Shard `index` of `count` over `sab` (made for `count` shards of
    /// `capacity` values).
    fn new(
        sab: &SharedArrayBuffer,
        index: usize,
        count: usize,
        capacity: usize,
    ) -> Result<Self, WorkerError> {
        let need =
            buffer_bytes(count, capacity).ok_or(WorkerError::Shards("buffer size overflows"))?;
        if sab.byte_length() < need || index >= count {
            return Err(WorkerError::Shards(
                "shared buffer smaller than its shards need",
            ));
        }
        let ctrl = Int32Array::new_with_byte_offset_and_length(sab, 0, count as u32 * CTRL);
        let base = count as u32 * CTRL * 4;
        let slot = capacity as u32;
        let data = (0..count as u32)
            .map(|s| {
                [0, 1].map(|p| {
                    Float32Array::new_with_byte_offset_and_length(
                        sab,
                        base + (2 * s + p) * slot * 4,
                        slot,
                    )
                })
            })
            .collect();
        Ok(Self {
            index,
            count,
            capacity,
            ctrl,
            data,
            round: Cell::new(0),
            scratch: RefCell::new(Vec::new()),
            workers: Vec::new(),
        })
    }

    /// Waits until shard `s` has published round `round`.
    fn wait_for(&self, s: usize, round: u32, idle: bool) -> Result<(), ExchangeError> {
        let at = s as u32 * CTRL;
        let started = now_ms();
        let mut spins = 0;
        loop {
            let seq = Atomics::load(&self.ctrl, at).map_err(transport)?;
            // Rounds wrap: compare by difference.
            if seq.wrapping_sub(round as i32) >= 0 {
                return Ok(());
            }
            spins += 1;
            if spins < SPINS {
                continue;
            }
            let waited = now_ms() - started;
            if !idle && waited >= FORWARD_MS {
                return Err(ExchangeError::Timeout {
                    shard: s,
                    ms: waited as u32,
                });
            }
            let limit = if idle { 1_000.0 } else { FORWARD_MS - waited };
            Atomics::wait_with_timeout(&self.ctrl, at, seq, limit).map_err(transport)?;
        }
    }
}

impl Exchange for SabExchange {
    fn index(&self) -> usize {
        self.index
    }

    fn count(&self) -> usize {
        self.count
    }

    fn capacity(&self) -> usize {
        self.capacity
    }

    fn all_gather(
        &self,
        mine: &[f32],
        idle: bool,
        theirs: &mut Receive<'_>,
    ) -> Result<(), ExchangeError> {
        if mine.len() > self.capacity {
            return Err(ExchangeError::TooLarge {
                len: mine.len(),
                capacity: self.capacity,
            });
        }
        let round = self.round.get().wrapping_add(1);
        let p = (round % 2) as usize;
        let at = self.index as u32 * CTRL;
        self.data[self.index][p]
            .subarray(0, mine.len() as u32)
            .copy_from(mine);
        Atomics::store(&self.ctrl, at + 1 + p as u32, mine.len() as i32).map_err(transport)?;
        Atomics::store(&self.ctrl, at, round as i32).map_err(transport)?;
        Atomics::notify(&self.ctrl, at).map_err(transport)?;
        for s in (0..self.count).filter(|&s| s != self.index) {
            self.wait_for(s, round, idle)?;
            let len =
                Atomics::load(&self.ctrl, s as u32 * CTRL + 1 + p as u32).map_err(transport)?;
            let len = usize::try_from(len)
                .ok()
                .filter(|&n| n <= self.capacity)
                .ok_or(ExchangeError::TooLarge {
                    len: len as usize,
                    capacity: self.capacity,
                })?;
            let mut buf = self.scratch.borrow_mut();
            buf.resize(len, 0.0);
            self.data[s][p].subarray(0, len as u32).copy_to(&mut buf);
            theirs(s, &buf)?;
        }
        self.round.set(round);
        Ok(())
    }
}

/// Whether this worker may share memory with others (the page was served
/// cross-origin isolated).
pub fn isolated() -> bool {
    Reflect::get(&js_sys::global(), &"crossOriginIsolated".into())
        .ok()
        .and_then(|v| v.as_bool())
        .unwrap_or(false)
}

/// Workers to split the model over: `asked` (capped), else one per core
/// up to [`MAX_DEFAULT`]; 1 without cross-origin isolation.
pub fn count(asked: Option<u32>) -> u32 {
    if !isolated() {
        return 1;
    }
    match asked {
        Some(n) => n.clamp(1, MAX_ASKED),
        None => {
            let cores = scope().navigator().hardware_concurrency();
            (cores as u32).clamp(1, MAX_DEFAULT)
        }
    }
}

/// The next message from `w` (its `data`), or why none came in time.
///
/// The listener is set when this is called, not when it is awaited: a
/// worker's message that arrives with no listener is lost, so the next one
/// is listened for before anything else is awaited.
fn next_message(
    w: &Worker,
    what: &'static str,
) -> impl std::future::Future<Output = Result<JsValue, WorkerError>> {
    let message = Promise::new(&mut |resolve, reject| {
        w.set_onmessage(Some(&resolve));
        w.set_onerror(Some(&reject));
    });
    let timeout = Promise::new(&mut |_, reject| {
        let _ = scope().set_timeout_with_callback_and_timeout_and_arguments_0(&reject, START_MS);
    });
    let raced = JsFuture::from(Promise::race(&Array::of2(&message, &timeout)));
    let w = w.clone();
    async move { answer(&w, what, raced.await) }
}

fn answer(
    w: &Worker,
    what: &'static str,
    raced: Result<JsValue, JsValue>,
) -> Result<JsValue, WorkerError> {
    w.set_onmessage(None);
    w.set_onerror(None);
    match raced {
        Ok(ev) => Ok(ev.unchecked_into::<MessageEvent>().data()),
        Err(e) if e.is_undefined() => Err(WorkerError::ShardStart(format!(
            "{what}: no answer within {} s",
            START_MS / 1000
        ))),
        Err(e) => {
            let message = Reflect::get(&e, &"message".into())
                .ok()
                .and_then(|m| m.as_string())
                .unwrap_or_else(|| format!("{e:?}"));
            Err(WorkerError::ShardStart(format!("{what}: {message}")))
        }
    }
}

/// Splits `model` over `count` workers: starts `count − 1` shard workers,
/// hands each its rows, and makes `model` shard 0.
///
/// # Errors
/// A worker that fails to start or to load its rows (the model is left
/// whole then).
pub async fn split(model: &mut CpuModel, count: usize) -> Result<(), WorkerError> {
    let capacity = model.exchange_capacity();
    let bytes =
        buffer_bytes(count, capacity).ok_or(WorkerError::Shards("buffer size overflows"))?;
    let sab = SharedArrayBuffer::new(bytes);
    let url = scope().location().href();
    // On an error, dropping `started` ends the workers started so far.
    struct Started(Vec<Worker>);
    impl Drop for Started {
        fn drop(&mut self) {
            for w in &self.0 {
                w.terminate();
            }
        }
    }
    let mut started = Started(Vec::new());
    let mut loaded = Vec::with_capacity(count - 1);
    for s in 1..count {
        let (spec, blob) = model
            .shard_spec(s, count)
            .map_err(|e| WorkerError::ShardStart(e.to_string()))?;
        let options = WorkerOptions::new();
        options.set_type(WorkerType::Module);
        options.set_name(SHARD);
        let w = Worker::new_with_options(&url, &options).map_err(crate::model::js_err)?;
        started.0.push(w.clone());
        next_message(&w, "shard worker start").await?;
        let msg = Object::new();
        let spec = serde_wasm_bindgen::to_value(&spec)
            .map_err(|e| WorkerError::ShardStart(e.to_string()))?;
        let blob = Uint8Array::from(blob.as_slice());
        for (k, v) in [
            ("module", wasm_bindgen::module()),
            ("sab", JsValue::from(&sab)),
            ("capacity", JsValue::from(capacity as f64)),
            ("spec", spec),
            ("bytes", blob.clone().into()),
        ] {
            Reflect::set(&msg, &k.into(), &v).map_err(crate::model::js_err)?;
        }
        // Listening for its answer before the next worker is awaited.
        loaded.push(next_message(&w, "shard worker load"));
        w.post_message_with_transfer(&msg, &Array::of1(&blob.buffer()))
            .map_err(crate::model::js_err)?;
    }
    for (s, load) in loaded.into_iter().enumerate() {
        let answer = load.await?;
        let error = answer
            .is_object()
            .then(|| Reflect::get(&answer, &"error".into()).ok())
            .flatten()
            .and_then(|e| e.as_string());
        if let Some(e) = error {
            return Err(WorkerError::ShardStart(format!("shard {}: {e}", s + 1)));
        }
    }
    let mut ex = SabExchange::new(&sab, 0, count, capacity)?;
    ex.workers = std::mem::take(&mut started.0);
    model
        .split(Box::new(ex))
        .map_err(|e| WorkerError::ShardStart(e.to_string()))
}

/// A shard worker's work (called by `worker/worker.js` with shard 0's
/// message once the module is instantiated): loads its rows, says it is
/// ready, then serves shard 0's forwards until told to stop (this worker's
/// thread stays in that loop: nothing else arrives by message).
#[wasm_bindgen(js_name = serveShard)]
pub fn serve_shard(msg: JsValue) {
    if let Err(e) = serve(&msg) {
        let answer = Object::new();
        let _ = Reflect::set(&answer, &"error".into(), &e.to_string().into());
        let _ = scope().post_message(&answer);
    }
    scope().close();
}

fn serve(msg: &JsValue) -> Result<(), WorkerError> {
    let get = |k: &str| Reflect::get(msg, &k.into()).map_err(crate::model::js_err);
    let sab: SharedArrayBuffer = get("sab")?
        .dyn_into()
        .map_err(|_| WorkerError::Shards("no shared buffer in the shard's message"))?;
    let capacity = get("capacity")?
        .as_f64()
        .filter(|c| *c >= 0.0 && *c < f64::from(u32::MAX))
        .ok_or(WorkerError::Shards("no capacity in the shard's message"))?
        as usize;
    let spec: ShardSpec = serde_wasm_bindgen::from_value(get("spec")?)
        .map_err(|e| WorkerError::BadMessage(e.to_string()))?;
    let bytes: Uint8Array = get("bytes")?
        .dyn_into()
        .map_err(|_| WorkerError::Shards("no rows in the shard's message"))?;
    let ex = SabExchange::new(&sab, spec.index(), spec.count(), capacity)?;
    let model = CpuModel::from_shard(spec, bytes.to_vec(), Box::new(ex))
        .map_err(|e| WorkerError::ShardStart(e.to_string()))?;
    drop(bytes);
    let _ = scope().post_message(&JsValue::from_str("ready"));
    model
        .serve()
        .map_err(|e| WorkerError::ShardStart(e.to_string()))
}
