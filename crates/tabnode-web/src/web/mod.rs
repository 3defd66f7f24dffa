//! wasm-bindgen glue, by concern: the JavaScript API (`api`: the
//! `TabNode` and `Generation` classes), the compute worker bridge
//! (`worker`), the generations this tab serves for the network
//! (`serving`), and here the state they share and the one event type the
//! page receives.

mod api;
mod serving;
mod worker;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use futures::channel::{mpsc, oneshot};
use libp2p::{core::upgrade, identity::Keypair, noise, relay, yamux, Multiaddr, Transport};
use tabnode_core::{
    chunked::ChunkedWrites,
    driver::{self, Command, DriverConfig, NodeEvent, RequestError},
    infer::{GenerateRequest, GenerateResult, InferRequest},
    model_id,
    node::NodeBehaviour,
    worker::{FromWorker, ToWorker},
    Capabilities, ChunkStreamer, ErrorCode, InferDone, InferEnd, NodeKind, PythonJob,
    PythonOutcome, Request, Response, TabnodeCodec, MAX_FRAME,
};
use wasm_bindgen::{prelude::*, JsCast};
use wasm_bindgen_futures::{future_to_promise, spawn_local};
use web_sys::{MessageEvent, Worker, WorkerOptions, WorkerType};

use crate::{StartOptions, WebError};
use serving::{cancel_served, pump, run_python, serve, Served, ServingEvent};
use worker::{post, start_worker, HandledEvent};

/// Everything the page's `onEvent` callback receives, as a plain object
/// whose `type` field names the kind.
#[derive(serde::Serialize)]
#[serde(untagged)]
enum PageEvent<'a> {
    /// From the node's driver: connection, reservation, requests.
    Node(&'a NodeEvent),
    /// A worker message shown as it is: GPU, model progress, generations.
    Worker(&'a FromWorker),
    /// The worker answered a network request (a summary: the answer itself
    /// goes straight back to the network).
    Handled(HandledEvent),
    /// A generation this tab serves for the network.
    Serving(ServingEvent),
}

/// Installs the panic hook once, when the module loads.
#[wasm_bindgen(start)]
pub fn init() {
    console_error_panic_hook::set_once();
}

fn js_event(callback: &js_sys::Function, event: &PageEvent<'_>) {
    use serde::Serialize as _;
    let serializer = serde_wasm_bindgen::Serializer::json_compatible();
    match event.serialize(&serializer) {
        Ok(v) => {
            if let Err(e) = callback.call1(&JsValue::NULL, &v) {
                web_sys::console::error_2(&"tabnode: onEvent threw".into(), &e);
            }
        }
        Err(e) => web_sys::console::error_1(&format!("tabnode: event encode: {e}").into()),
    }
}

/// A generation the page waits for.
struct PendingGeneration {
    reply: oneshot::Sender<Result<GenerateResult, String>>,
    on_token: Option<js_sys::Function>,
}

/// What the page's parts share: the driver's command channel, the
/// capabilities it registers, the worker and the generations in flight.
/// Now, in milliseconds since the epoch (this page's clock).
fn epoch_ms() -> u64 {
    // A positive whole number of milliseconds, far below 2^53.
    js_sys::Date::now() as u64
}

struct Shared {
    commands: mpsc::Sender<Command>,
    capabilities: RefCell<Capabilities>,
    on_event: js_sys::Function,
    worker: RefCell<Option<Worker>>,
    /// Set when the worker has said `loaded`; until then messages wait in
    /// `queued` (a message posted while its wasm is still starting can be
    /// lost).
    worker_loaded: Cell<bool>,
    queued: RefCell<Vec<ToWorker>>,
    /// `loadModel` calls waiting for `model_ready` / `model_failed`.
    model_waiters: RefCell<Vec<oneshot::Sender<Result<JsValue, String>>>>,
    /// The catalog id of the embedding model the worker serves, once
    /// loaded: registered besides the chat model.
    embedder: RefCell<Option<String>>,
    /// `loadEmbedder` calls waiting for `embedder_ready` /
    /// `embedder_failed`.
    embedder_waiters: RefCell<Vec<oneshot::Sender<Result<JsValue, String>>>>,
    generations: RefCell<HashMap<u64, PendingGeneration>>,
    next_generation: Cell<u64>,
    /// Network generations by worker generation id.
    served: RefCell<HashMap<u64, Served>>,
    /// The page's Python runner, while its visitor lets this tab run
    /// flows' Python steps for others (`setPythonRunner`).
    python_runner: RefCell<Option<js_sys::Function>>,
    /// When the relay connection up now started (ms since the epoch, this
    /// page's clock): what a goodbye names.
    relay_connected_at: Cell<Option<u64>>,
}

impl Shared {
    /// Hands a request the driver could not answer to the worker, or refuses
    /// it when there is no worker.
    fn to_worker(&self, id: u64, request: Request) {
        if let Err(e) = self.post_worker(&ToWorker::Handle { id, request }) {
            let _ = self.command(Command::Respond {
                id,
                response: Response::Error {
                    code: tabnode_core::ErrorCode::Unsupported,
                    message: e.to_string(),
                },
            });
        }
    }

    fn post_worker(&self, msg: &ToWorker) -> Result<(), WebError> {
        match &*self.worker.borrow() {
            Some(_) if !self.worker_loaded.get() => {
                self.queued.borrow_mut().push(msg.clone());
                Ok(())
            }
            Some(w) => post(w, msg),
            None => Err(WebError::Worker("this tab runs no compute worker".into())),
        }
    }

    fn command(&self, command: Command) -> Result<(), WebError> {
        self.commands
            .clone()
            .try_send(command)
            .map_err(|_| WebError::Request(RequestError::Stopped))
    }

    async fn request(
        &self,
        peer: Option<libp2p::PeerId>,
        request: Request,
    ) -> Result<Response, WebError> {
        let (reply, rx) = oneshot::channel();
        self.command(Command::Request {
            peer,
            request,
            reply,
        })?;
        Ok(rx.await.map_err(|_| RequestError::Stopped)??)
    }
}
