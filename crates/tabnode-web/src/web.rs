//! wasm-bindgen glue: the `TabNode` class.

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
    Capabilities, ChunkStreamer, ErrorCode, InferDone, InferEnd, NodeKind, Request, Response,
    TabnodeCodec, MAX_FRAME,
};
use wasm_bindgen::{prelude::*, JsCast};
use wasm_bindgen_futures::{future_to_promise, spawn_local};
use web_sys::{MessageEvent, Worker, WorkerOptions, WorkerType};

use crate::{StartOptions, WebError};

/// What the page is told when the worker answered a request.
#[derive(serde::Serialize)]
struct HandledEvent {
    #[serde(rename = "type")]
    kind: &'static str,
    id: u64,
    elapsed_ms: f64,
    device: String,
    answer: String,
}

/// Installs the panic hook once, when the module loads.
#[wasm_bindgen(start)]
pub fn init() {
    console_error_panic_hook::set_once();
}

fn js_event<T: serde::Serialize>(callback: &js_sys::Function, event: &T) {
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

/// A generation this tab runs for the network (the relay asked).
struct Served {
    request_id: u64,
    /// The driver's id of the `Infer` request, until it is answered.
    answer: Option<u64>,
    streamer: ChunkStreamer,
    tokens: u64,
}

/// What the page is told about generations it serves.
#[derive(serde::Serialize)]
struct ServingEvent {
    #[serde(rename = "type")]
    kind: &'static str,
    request_id: u64,
    state: &'static str,
    tokens: u64,
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
    generations: RefCell<HashMap<u64, PendingGeneration>>,
    next_generation: Cell<u64>,
    /// Network generations by worker generation id.
    served: RefCell<HashMap<u64, Served>>,
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

/// A browser tab's node.
#[wasm_bindgen]
pub struct TabNode {
    shared: Rc<Shared>,
    peer_id: String,
    identity: Vec<u8>,
}

fn tracing_subscriber_for(
    config: tracing_wasm::WASMLayerConfig,
) -> impl tracing::Subscriber + Send + Sync {
    use tracing_wasm::WASMLayer;
    tracing_subscriber::layer::SubscriberExt::with(
        tracing_subscriber::Registry::default(),
        WASMLayer::new(config),
    )
}

fn agent() -> String {
    let ua = web_sys::window()
        .and_then(|w| w.navigator().user_agent().ok())
        .unwrap_or_default();
    format!("tabnode-web/{} ({ua})", env!("CARGO_PKG_VERSION"))
}

#[wasm_bindgen]
impl TabNode {
    /// Starts the node: `{ relay, identity?, workerUrl?, pledgeMib?,
    /// maxBackoffMs? }`; `onEvent` receives every event as a plain object
    /// with a `type` field.
    ///
    /// # Errors
    /// Bad options, a corrupt identity, or a worker that cannot start.
    pub fn start(options: JsValue, on_event: js_sys::Function) -> Result<TabNode, JsError> {
        let opts: StartOptions = serde_wasm_bindgen::from_value(options)
            .map_err(|e| WebError::BadOptions(e.to_string()))?;
        if let Some(level) = &opts.log_level {
            let level = level
                .parse::<tracing::Level>()
                .map_err(|e| WebError::BadOptions(format!("logLevel: {e}")))?;
            let config = tracing_wasm::WASMLayerConfigBuilder::new()
                .set_max_level(level)
                .build();
            // A second node on the same page keeps the first subscriber.
            let _ = tracing::subscriber::set_global_default(tracing_subscriber_for(config));
        }
        let relay: Multiaddr = opts
            .relay
            .parse()
            .map_err(|e| WebError::BadOptions(format!("relay address: {e}")))?;
        let key = match &opts.identity {
            Some(bytes) => Keypair::from_protobuf_encoding(bytes)
                .map_err(|e| WebError::Identity(e.to_string()))?,
            None => Keypair::generate_ed25519(),
        };
        let identity = key
            .to_protobuf_encoding()
            .map_err(|e| WebError::Identity(e.to_string()))?;
        let agent = agent();
        let mut caps = Capabilities::new(NodeKind::Browser, agent.clone());
        caps.pledged_vram_mib = opts.pledge_mib;
        let lp = |e: &dyn std::fmt::Display| WebError::Libp2p(e.to_string());
        // The relay-client transport is assembled by hand (instead of
        // `with_relay_client`) to cap each write on the circuit's WebRTC
        // stream: see `ChunkedWrites`. It goes first: the WebRTC transport
        // would otherwise take a `/p2p-circuit` address for its own.
        let (relay_transport, relay_client) = relay::client::new(key.public().to_peer_id());
        let swarm = libp2p::SwarmBuilder::with_existing_identity(key)
            .with_wasm_bindgen()
            .with_other_transport(
                |key| -> Result<_, Box<dyn std::error::Error + Send + Sync>> {
                    Ok(relay_transport
                        .map(|conn, _| ChunkedWrites::new(conn, MAX_FRAME))
                        .upgrade(upgrade::Version::V1)
                        .authenticate(noise::Config::new(key)?)
                        .multiplex(yamux::Config::default()))
                },
            )
            .map_err(|e| lp(&e))?
            .with_other_transport(|key| {
                libp2p_webrtc_websys::Transport::new(libp2p_webrtc_websys::Config::new(key))
            })
            .map_err(|e| lp(&e))?
            .with_behaviour(|key| {
                NodeBehaviour::new(key, relay_client, agent, TabnodeCodec::default())
            })
            .map_err(|e| lp(&e))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
            .build();
        let peer_id = swarm.local_peer_id().to_string();
        let (commands, rx) = mpsc::channel(64);
        let shared = Rc::new(Shared {
            commands,
            capabilities: RefCell::new(caps.clone()),
            on_event: on_event.clone(),
            worker: RefCell::new(None),
            worker_loaded: Cell::new(false),
            queued: RefCell::new(Vec::new()),
            model_waiters: RefCell::new(Vec::new()),
            generations: RefCell::new(HashMap::new()),
            next_generation: Cell::new(1),
            served: RefCell::new(HashMap::new()),
        });
        let config = DriverConfig {
            relay,
            capabilities: caps,
            max_backoff: Duration::from_millis(opts.max_backoff_ms),
        };
        let for_driver = shared.clone();
        spawn_local(async move {
            let emit = |event: NodeEvent| {
                match &event {
                    NodeEvent::Request {
                        id,
                        request: Request::Infer(infer),
                        ..
                    } => serve(&for_driver, *id, infer),
                    NodeEvent::Request {
                        id,
                        request: Request::InferCancel { request_id },
                        ..
                    } => {
                        cancel_served(&for_driver, *request_id);
                        let _ = for_driver.command(Command::Respond {
                            id: *id,
                            response: Response::Ack,
                        });
                    }
                    NodeEvent::Request { id, request, .. } => {
                        for_driver.to_worker(*id, request.clone());
                    }
                    _ => {}
                }
                js_event(&on_event, &event);
            };
            if let Err(e) = driver::run(swarm, config, rx, emit).await {
                web_sys::console::error_1(&format!("tabnode: node stopped: {e}").into());
            }
        });
        if let Some(url) = &opts.worker_url {
            start_worker(&shared, url)?;
        }
        Ok(TabNode {
            shared,
            peer_id,
            identity,
        })
    }

    /// This node's peer id.
    #[wasm_bindgen(getter, js_name = peerId)]
    pub fn peer_id(&self) -> String {
        self.peer_id.clone()
    }

    /// The protobuf-encoded identity key, to store and pass back next time.
    #[wasm_bindgen(getter)]
    pub fn identity(&self) -> Vec<u8> {
        self.identity.clone()
    }

    /// The capabilities registered with the relay (plain object).
    #[wasm_bindgen(getter)]
    pub fn capabilities(&self) -> Result<JsValue, JsError> {
        let serializer = serde_wasm_bindgen::Serializer::json_compatible();
        Ok(serde::Serialize::serialize(
            &*self.shared.capabilities.borrow(),
            &serializer,
        )?)
    }

    /// Sends `data` to `peer` (`null`: the relay) and resolves to the echoed
    /// bytes.
    pub fn echo(&self, peer: Option<String>, data: Vec<u8>) -> js_sys::Promise {
        let shared = self.shared.clone();
        future_to_promise(async move {
            let peer = match peer {
                Some(p) => Some(p.parse().map_err(|e| {
                    JsError::from(WebError::BadOptions(format!("peer id {p}: {e}")))
                })?),
                None => None,
            };
            match shared.request(peer, Request::Echo(data)).await {
                Ok(Response::Echo(back)) => Ok(js_sys::Uint8Array::from(back.as_slice()).into()),
                Ok(other) => Err(JsError::new(&format!("unexpected answer {other:?}")).into()),
                Err(e) => Err(JsError::from(e).into()),
            }
        })
    }

    /// Resolves to the list of nodes the relay knows.
    #[wasm_bindgen(js_name = listPeers)]
    pub fn list_peers(&self) -> js_sys::Promise {
        let shared = self.shared.clone();
        future_to_promise(async move {
            match shared.request(None, Request::ListPeers).await {
                Ok(Response::Peers(peers)) => {
                    let serializer = serde_wasm_bindgen::Serializer::json_compatible();
                    serde::Serialize::serialize(&peers, &serializer)
                        .map_err(|e| JsError::from(e).into())
                }
                Ok(other) => Err(JsError::new(&format!("unexpected answer {other:?}")).into()),
                Err(e) => Err(JsError::from(e).into()),
            }
        })
    }

    /// Asks the worker to benchmark its WGSL kernels at size `n`; the
    /// result arrives as an event of type `bench`.
    ///
    /// # Errors
    /// No worker, or the message could not be sent.
    #[wasm_bindgen(js_name = benchKernels)]
    pub fn bench_kernels(&self, n: u32, reps: u32) -> Result<(), JsError> {
        match &*self.shared.worker.borrow() {
            Some(w) => Ok(post(w, &ToWorker::Bench { n, reps })?),
            None => Err(WebError::Worker("this tab runs no compute worker".into()).into()),
        }
    }

    /// Has the worker load the model at `url` (the relay serves
    /// `/models/<file>`): from the browser's cache when it holds it, else
    /// downloaded and cached. Progress arrives as `model_progress` events;
    /// resolves to `{ model, from_cache, downloaded_bytes, load_ms, device }`.
    #[wasm_bindgen(js_name = loadModel)]
    pub fn load_model(&self, url: String) -> js_sys::Promise {
        let shared = self.shared.clone();
        future_to_promise(async move {
            let (tx, rx) = oneshot::channel();
            shared.model_waiters.borrow_mut().push(tx);
            shared
                .post_worker(&ToWorker::LoadModel { url })
                .map_err(JsError::from)?;
            match rx.await {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(message)) => Err(JsError::new(&message).into()),
                Err(_) => Err(JsError::new("the worker stopped").into()),
            }
        })
    }

    /// Generates on the loaded model: `request` is `{ prompt: { text } |
    /// { chat: [{ role, content }] }, max_tokens?, temperature?, top_k?,
    /// top_p?, seed?, stop? }`; `onToken(text)` receives the text as it is
    /// produced. Returns a handle with `id`, `done` (a promise of `{ tokens,
    /// text, finish, prompt_tokens, prefill_ms, decode_ms, device }`) and
    /// `cancel()`.
    ///
    /// # Errors
    /// A malformed request or no worker.
    pub fn generate(
        &self,
        request: JsValue,
        on_token: Option<js_sys::Function>,
    ) -> Result<Generation, JsError> {
        let request: GenerateRequest = serde_wasm_bindgen::from_value(request)
            .map_err(|e| WebError::BadOptions(format!("generate request: {e}")))?;
        let id = self.shared.next_generation.get();
        self.shared.next_generation.set(id + 1);
        let (reply, rx) = oneshot::channel();
        self.shared
            .generations
            .borrow_mut()
            .insert(id, PendingGeneration { reply, on_token });
        if let Err(e) = self.shared.post_worker(&ToWorker::Generate { id, request }) {
            self.shared.generations.borrow_mut().remove(&id);
            return Err(e.into());
        }
        let done = future_to_promise(async move {
            match rx.await {
                Ok(Ok(result)) => serde::Serialize::serialize(
                    &result,
                    &serde_wasm_bindgen::Serializer::json_compatible(),
                )
                .map_err(|e| JsError::from(e).into()),
                Ok(Err(message)) => Err(JsError::new(&message).into()),
                Err(_) => Err(JsError::new("the worker stopped").into()),
            }
        });
        Ok(Generation {
            id,
            done,
            shared: self.shared.clone(),
        })
    }

    /// Stops the node and its worker.
    pub fn stop(&self) {
        let _ = self.shared.command(Command::Shutdown);
        if let Some(w) = self.shared.worker.borrow_mut().take() {
            w.terminate();
        }
    }
}

/// A running generation (see `TabNode.generate`).
#[wasm_bindgen]
pub struct Generation {
    id: u64,
    done: js_sys::Promise,
    shared: Rc<Shared>,
}

#[wasm_bindgen]
impl Generation {
    /// Its id.
    #[wasm_bindgen(getter)]
    pub fn id(&self) -> f64 {
        self.id as f64
    }

    /// Resolves to the result (a cancelled generation resolves too, with
    /// `finish: "cancelled"` and the text so far).
    #[wasm_bindgen(getter)]
    pub fn done(&self) -> js_sys::Promise {
        self.done.clone()
    }

    /// Stops after the token in flight.
    ///
    /// # Errors
    /// The worker is gone.
    pub fn cancel(&self) -> Result<(), JsError> {
        Ok(self.shared.post_worker(&ToWorker::Cancel { id: self.id })?)
    }
}

fn post(worker: &Worker, msg: &ToWorker) -> Result<(), WebError> {
    // 64-bit values travel as BigInts (see `tabnode_core::worker`).
    let serializer =
        serde_wasm_bindgen::Serializer::new().serialize_large_number_types_as_bigints(true);
    let v = serde::Serialize::serialize(msg, &serializer)
        .map_err(|e| WebError::Worker(e.to_string()))?;
    worker
        .post_message(&v)
        .map_err(|e| WebError::Worker(format!("{e:?}")))
}

fn start_worker(shared: &Rc<Shared>, url: &str) -> Result<(), WebError> {
    let opts = WorkerOptions::new();
    opts.set_type(WorkerType::Module);
    let worker =
        Worker::new_with_options(url, &opts).map_err(|e| WebError::Worker(format!("{e:?}")))?;
    let weak = Rc::downgrade(shared);
    let w = worker.clone();
    let on_message = Closure::<dyn FnMut(MessageEvent)>::new(move |ev: MessageEvent| {
        let Some(shared) = weak.upgrade() else { return };
        let msg = match serde_wasm_bindgen::from_value::<FromWorker>(ev.data()) {
            Ok(m) => m,
            Err(e) => {
                web_sys::console::error_1(&format!("tabnode: bad worker message: {e}").into());
                return;
            }
        };
        match &msg {
            FromWorker::Loaded => {
                shared.worker_loaded.set(true);
                let queued = std::mem::take(&mut *shared.queued.borrow_mut());
                for m in std::iter::once(ToWorker::Init).chain(queued) {
                    if let Err(e) = post(&w, &m) {
                        web_sys::console::error_1(&e.to_string().into());
                    }
                }
            }
            FromWorker::GpuReady { gpu } => {
                let caps = {
                    let mut c = shared.capabilities.borrow_mut();
                    c.gpu = Some(gpu.clone());
                    c.gpu_error = None;
                    // The worker's prover accepts the same size.
                    c.max_pof_n = tabnode_core::pof::max_n_for(Some(gpu));
                    c.clone()
                };
                let _ = shared.command(Command::SetCapabilities(caps));
            }
            FromWorker::GpuUnavailable { reason } => {
                let caps = {
                    let mut c = shared.capabilities.borrow_mut();
                    c.gpu = None;
                    c.gpu_error = Some(reason.clone());
                    c.max_pof_n = tabnode_core::pof::max_n_for(None);
                    c.clone()
                };
                let _ = shared.command(Command::SetCapabilities(caps));
            }
            FromWorker::Error { message } => {
                web_sys::console::error_1(&format!("tabnode worker: {message}").into());
            }
            FromWorker::Bench { .. } | FromWorker::ModelProgress { .. } => {}
            FromWorker::ModelReady { model, .. } => {
                let caps = {
                    let mut c = shared.capabilities.borrow_mut();
                    c.models = vec![model.name.clone()];
                    c.clone()
                };
                let _ = shared.command(Command::SetCapabilities(caps));
                let v = serde::Serialize::serialize(
                    &msg,
                    &serde_wasm_bindgen::Serializer::json_compatible(),
                )
                .unwrap_or(JsValue::NULL);
                let waiters = std::mem::take(&mut *shared.model_waiters.borrow_mut());
                for w in waiters {
                    let _ = w.send(Ok(v.clone()));
                }
            }
            FromWorker::ModelFailed { message } => {
                let waiters = std::mem::take(&mut *shared.model_waiters.borrow_mut());
                for w in waiters {
                    let _ = w.send(Err(message.clone()));
                }
            }
            FromWorker::GenerateStarted { id, prompt_tokens } => {
                let answer = shared
                    .served
                    .borrow_mut()
                    .get_mut(id)
                    .and_then(|s| s.answer.take());
                if let Some(answer) = answer {
                    let _ = shared.command(Command::Respond {
                        id: answer,
                        response: Response::InferAccepted {
                            prompt_tokens: *prompt_tokens,
                        },
                    });
                }
                return;
            }
            FromWorker::GenerateRejected { id, code, message } => {
                if let Some(s) = shared.served.borrow_mut().remove(id) {
                    if let Some(answer) = s.answer {
                        let _ = shared.command(Command::Respond {
                            id: answer,
                            response: Response::Error {
                                code: *code,
                                message: message.clone(),
                            },
                        });
                    }
                } else if let Some(g) = shared.generations.borrow_mut().remove(id) {
                    let _ = g.reply.send(Err(message.clone()));
                }
                return;
            }
            FromWorker::Token { id, tokens, text } if shared.served.borrow().contains_key(id) => {
                if let Some(s) = shared.served.borrow_mut().get_mut(id) {
                    s.streamer.push(tokens, text);
                    s.tokens += tokens.len() as u64;
                }
                pump(&shared, *id);
                return;
            }
            FromWorker::Generated { id, result } if shared.served.borrow().contains_key(id) => {
                if let Some(s) = shared.served.borrow_mut().get_mut(id) {
                    s.streamer.end(InferEnd::Done(InferDone {
                        finish: result.finish,
                        prefill_ms: result.prefill_ms,
                        decode_ms: result.decode_ms,
                        device: result.device.clone(),
                    }));
                }
                pump(&shared, *id);
                return;
            }
            FromWorker::GenerateFailed { id, message }
                if shared.served.borrow().contains_key(id) =>
            {
                if let Some(s) = shared.served.borrow_mut().get_mut(id) {
                    s.streamer.end(InferEnd::Failed(message.clone()));
                }
                pump(&shared, *id);
                return;
            }
            FromWorker::Token { id, text, .. } => {
                // Cloned out first: the callback may start another generation.
                let f = shared
                    .generations
                    .borrow()
                    .get(id)
                    .and_then(|g| g.on_token.clone());
                if let (Some(f), false) = (f, text.is_empty()) {
                    if let Err(e) = f.call1(&JsValue::NULL, &JsValue::from_str(text)) {
                        web_sys::console::error_2(&"tabnode: onToken threw".into(), &e);
                    }
                }
                return;
            }
            FromWorker::Generated { id, result } => {
                if let Some(g) = shared.generations.borrow_mut().remove(id) {
                    let _ = g.reply.send(Ok(result.clone()));
                }
                return;
            }
            FromWorker::GenerateFailed { id, message } => {
                if let Some(g) = shared.generations.borrow_mut().remove(id) {
                    let _ = g.reply.send(Err(message.clone()));
                }
                return;
            }
            FromWorker::Handled {
                id,
                response,
                elapsed_ms,
                device,
            } => {
                // The page sees a summary: the answer itself (2⁶¹-sized
                // numbers) goes straight back to the network.
                let summary = HandledEvent {
                    kind: "handled",
                    id: *id,
                    elapsed_ms: *elapsed_ms,
                    device: device.clone(),
                    answer: match response {
                        Response::PofCommit { .. } => "pof_commit".into(),
                        Response::PofOpening(_) => "pof_opening".into(),
                        Response::Error { message, .. } => format!("error: {message}"),
                        other => format!("{other:?}"),
                    },
                };
                let _ = shared.command(Command::Respond {
                    id: *id,
                    response: response.clone(),
                });
                js_event(&shared.on_event, &summary);
                return;
            }
        }
        js_event(&shared.on_event, &msg);
    });
    worker.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
    on_message.forget();
    let on_error = Closure::<dyn FnMut(JsValue)>::new(move |e: JsValue| {
        web_sys::console::error_2(&"tabnode: worker error".into(), &e);
    });
    worker.set_onerror(Some(on_error.as_ref().unchecked_ref()));
    on_error.forget();
    *shared.worker.borrow_mut() = Some(worker);
    Ok(())
}

/// Takes a network request: refuses it at once (no model, another model,
/// busy) or hands it to the worker, which answers through
/// `GenerateStarted` / `GenerateRejected`.
fn serve(shared: &Rc<Shared>, answer: u64, infer: &InferRequest) {
    let refuse = |code, message: String| {
        let _ = shared.command(Command::Respond {
            id: answer,
            response: Response::Error { code, message },
        });
    };
    let models = shared.capabilities.borrow().models.clone();
    if !models.iter().any(|m| model_id(m) == model_id(&infer.model)) {
        return refuse(
            ErrorCode::UnknownModel,
            format!("this tab serves {models:?}, not {}", infer.model),
        );
    }
    let slots = shared.capabilities.borrow().slots as usize;
    // A generation whose end is marked holds no slot any more, even while
    // its last chunk waits for the relay's acknowledgement.
    let generating = shared
        .served
        .borrow()
        .values()
        .filter(|s| s.streamer.generating())
        .count();
    if generating >= slots.max(1) {
        return refuse(ErrorCode::Busy, "this tab is generating already".into());
    }
    let id = shared.next_generation.get();
    shared.next_generation.set(id + 1);
    shared.served.borrow_mut().insert(
        id,
        Served {
            request_id: infer.request_id,
            answer: Some(answer),
            streamer: ChunkStreamer::new(infer),
            tokens: 0,
        },
    );
    let request = infer.request.clone();
    if let Err(e) = shared.post_worker(&ToWorker::Generate { id, request }) {
        shared.served.borrow_mut().remove(&id);
        return refuse(ErrorCode::Unsupported, e.to_string());
    }
    js_event(
        &shared.on_event,
        &ServingEvent {
            kind: "serving",
            request_id: infer.request_id,
            state: "started",
            tokens: 0,
        },
    );
}

/// Stops the network generation of `request_id` (the relay asked).
fn cancel_served(shared: &Rc<Shared>, request_id: u64) {
    let id = shared
        .served
        .borrow()
        .iter()
        .find(|(_, s)| s.request_id == request_id)
        .map(|(id, _)| *id);
    if let Some(id) = id {
        let _ = shared.post_worker(&ToWorker::Cancel { id });
    }
}

/// Sends the next chunk of network generation `id` if none is in flight;
/// forgets the generation once its last chunk is acknowledged, or cancels
/// it when the relay says stop.
fn pump(shared: &Rc<Shared>, id: u64) {
    let chunk = match shared.served.borrow_mut().get_mut(&id) {
        Some(s) => s.streamer.next_chunk(),
        None => return,
    };
    let Some(chunk) = chunk else { return };
    let shared = shared.clone();
    spawn_local(async move {
        let reply = shared
            .request(None, Request::InferChunk(Box::new(chunk)))
            .await;
        let ok = matches!(reply, Ok(Response::Ack));
        let done = {
            let mut served = shared.served.borrow_mut();
            match served.get_mut(&id) {
                Some(s) if ok => {
                    s.streamer.acked();
                    s.streamer.finished().then_some((s.request_id, s.tokens))
                }
                Some(s) => Some((s.request_id, s.tokens)),
                None => None,
            }
        };
        if !ok {
            let _ = shared.post_worker(&ToWorker::Cancel { id });
        }
        match done {
            Some((request_id, tokens)) => {
                shared.served.borrow_mut().remove(&id);
                js_event(
                    &shared.on_event,
                    &ServingEvent {
                        kind: "serving",
                        request_id,
                        state: if ok { "done" } else { "stopped" },
                        tokens,
                    },
                );
            }
            None => pump(&shared, id),
        }
    });
}
