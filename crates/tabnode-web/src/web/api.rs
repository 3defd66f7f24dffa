//! The JavaScript API: the `TabNode` and `Generation` classes.

use super::*;
use tabnode_core::download::FileCheck;
use tabnode_core::goodbye::Goodbye;
use tabnode_core::infer::{Backend, GpuKernels};
use tabnode_core::worker::EmbedderFile;
use tabnode_core::ApiKeyCommand;

/// What a load the worker reports on (`*_ready` / `*_failed`) resolves
/// to.
async fn loaded(rx: oneshot::Receiver<Result<JsValue, String>>) -> Result<JsValue, JsValue> {
    match rx.await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(message)) => Err(JsError::new(&message).into()),
        Err(_) => Err(JsError::new("the worker stopped").into()),
    }
}

/// A file of `/api/embedding-models`' list, as `loadEmbedder` takes it.
#[derive(serde::Deserialize)]
struct ListedFile {
    file: String,
    bytes: u64,
    sha256: String,
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
            embedder: RefCell::new(None),
            embedder_waiters: RefCell::new(Vec::new()),
            generations: RefCell::new(HashMap::new()),
            next_generation: Cell::new(1),
            served: RefCell::new(HashMap::new()),
            python_runner: RefCell::new(None),
            relay_connected_at: Cell::new(None),
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
                        request: Request::Python(job),
                        ..
                    } => run_python(&for_driver, *id, job),
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
                    NodeEvent::RelayConnected { .. } => {
                        for_driver.relay_connected_at.set(Some(epoch_ms()));
                    }
                    NodeEvent::RelayDisconnected { .. } => for_driver.relay_connected_at.set(None),
                    _ => {}
                }
                js_event(&on_event, &PageEvent::Node(&event));
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

    /// A goodbye for the relay, signed with this node's key (a plain object
    /// to post as JSON to the relay's `/api/goodbye`; `null` while not
    /// connected). The page sends it with `navigator.sendBeacon` as it is
    /// closed, so the relay drops this node at once.
    ///
    /// # Errors
    /// A corrupt identity (it decoded at start).
    pub fn goodbye(&self) -> Result<JsValue, JsError> {
        let Some(connected_at) = self.shared.relay_connected_at.get() else {
            return Ok(JsValue::NULL);
        };
        let key = Keypair::from_protobuf_encoding(&self.identity)
            .map_err(|e| WebError::Identity(e.to_string()))?;
        let goodbye = Goodbye::sign(&key, connected_at, epoch_ms().max(connected_at))?;
        let serializer = serde_wasm_bindgen::Serializer::json_compatible();
        Ok(serde::Serialize::serialize(&goodbye, &serializer)?)
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

    /// Lets this tab run flows' Python steps for others (the visitor opted
    /// in): `runner({ job, code, inputs, timeout_ms })` returns a promise of
    /// `{ text }` (what the code printed) or `{ error }`, and runs the code
    /// in a sandbox of its own (the page's `python.js`). The tab registers
    /// `python: true` and the relay sends it `python` steps; `null` stops
    /// that (registered again without it).
    #[wasm_bindgen(js_name = setPythonRunner)]
    pub fn set_python_runner(&self, runner: Option<js_sys::Function>) -> Result<(), JsError> {
        let on = runner.is_some();
        *self.shared.python_runner.borrow_mut() = runner;
        let caps = {
            let mut c = self.shared.capabilities.borrow_mut();
            c.python = on;
            c.clone()
        };
        self.shared
            .command(Command::SetCapabilities(caps))
            .map_err(JsError::from)
    }

    /// Manages this tab's account's API keys (the account is the tab's
    /// identity): `create` is a label (makes a key), else `revoke` a key id,
    /// else the keys are listed. Resolves to `{ created, keys: [{ id,
    /// label, created_ms, revoked }] }`, `created` the new key's secret
    /// (shown once) or null.
    ///
    /// # Errors
    /// The relay refused (a bad label, too many keys, an unknown id) or
    /// could not be reached (the promise rejects).
    #[wasm_bindgen(js_name = apiKeys)]
    pub fn api_keys(&self, create: Option<String>, revoke: Option<String>) -> js_sys::Promise {
        let shared = self.shared.clone();
        future_to_promise(async move {
            let command = match (create, revoke) {
                (Some(label), _) => ApiKeyCommand::Create { label },
                (None, Some(id)) => ApiKeyCommand::Revoke { id },
                (None, None) => ApiKeyCommand::List,
            };
            match shared.request(None, Request::ApiKeys(command)).await {
                Ok(Response::ApiKeys(list)) => {
                    let serializer = serde_wasm_bindgen::Serializer::json_compatible();
                    serde::Serialize::serialize(&list, &serializer)
                        .map_err(|e| JsError::from(e).into())
                }
                Ok(Response::Error { message, .. }) => Err(JsError::new(&message).into()),
                Ok(other) => Err(JsError::new(&format!("unexpected answer {other:?}")).into()),
                Err(e) => Err(JsError::from(e).into()),
            }
        })
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
    /// downloaded and cached. `backend` (`cpu` or `webgpu`) forces where it
    /// runs; without it the worker times both (when WebGPU is a hardware
    /// adapter) and keeps the faster. Progress arrives as `model_progress`
    /// events; resolves to `{ model, from_cache, downloaded_bytes, load_ms,
    /// engine: { backend, device, reason, timings, threads } }`. `threads`
    /// caps the workers the CPU engine splits the model over (default: one
    /// per core, up to 8, where the page is cross-origin isolated).
    /// `kernels` (`rows` or `lanes`) forces the WebGPU kernels (default:
    /// `rows` on a software adapter, `lanes` on a GPU). `check` (`{ bytes,
    /// sha256 }`, the catalog's pin of the file, as `/api/models` lists
    /// it) has the download verified: another size or hash fails the load
    /// and the file is not cached. A broken download resumes where it
    /// stopped (in the same load, or from the parts saved, on the next).
    ///
    /// # Errors
    /// A `backend` other than `cpu` or `webgpu`, `kernels` other than
    /// `rows` or `lanes`, a `check` that is not `{ bytes, sha256 }` with 64
    /// hex digits (the promise rejects).
    #[wasm_bindgen(js_name = loadModel)]
    pub fn load_model(
        &self,
        url: String,
        backend: Option<String>,
        threads: Option<u32>,
        kernels: Option<String>,
        check: JsValue,
    ) -> js_sys::Promise {
        let shared = self.shared.clone();
        future_to_promise(async move {
            let check = if check.is_undefined() || check.is_null() {
                None
            } else {
                let c: FileCheck = serde_wasm_bindgen::from_value(check)
                    .map_err(|e| JsError::new(&format!("check: {e}")))?;
                Some(
                    FileCheck::new(c.bytes, &c.sha256)
                        .map_err(|e| JsError::new(&format!("check: {e}")))?,
                )
            };
            let backend = backend
                .filter(|b| !b.is_empty())
                .map(|b| b.parse::<Backend>())
                .transpose()
                .map_err(|e| JsError::new(&e.to_string()))?;
            let kernels = kernels
                .filter(|k| !k.is_empty())
                .map(|k| k.parse::<GpuKernels>())
                .transpose()
                .map_err(|e| JsError::new(&e.to_string()))?;
            let (tx, rx) = oneshot::channel();
            shared.model_waiters.borrow_mut().push(tx);
            shared
                .post_worker(&ToWorker::LoadModel {
                    url,
                    backend,
                    threads,
                    kernels,
                    check,
                })
                .map_err(JsError::from)?;
            loaded(rx).await
        })
    }

    /// Has the worker load the sentence-embedding model `id` (a catalog id)
    /// besides the chat model, from `baseUrl` (the relay's
    /// `/models/<id>/`): `files` is the catalog's list, `[{ file, bytes,
    /// sha256 }]`, as `/api/embedding-models` gives it; every file is
    /// checked against its pin, from the browser's cache or downloaded.
    /// `backend` (`cpu` or `webgpu`; absent: the faster on a probe batch)
    /// is where it embeds. Progress arrives as `embedder_progress` events;
    /// resolves to `{ id, dimensions, from_cache, downloaded_bytes,
    /// load_ms, backend, reason }`, and from then the tab registers the
    /// model and answers the network's embedding batches (`handled` events
    /// with `answer: "embedded N"` and the `device`).
    ///
    /// # Errors
    /// `files` that are not that list, a `backend` other than `cpu` or
    /// `webgpu`, `webgpu` in a tab without it (the promise rejects).
    #[wasm_bindgen(js_name = loadEmbedder)]
    pub fn load_embedder(
        &self,
        id: String,
        base_url: String,
        files: JsValue,
        backend: Option<String>,
    ) -> js_sys::Promise {
        let shared = self.shared.clone();
        future_to_promise(async move {
            let backend = backend
                .filter(|b| !b.is_empty())
                .map(|b| b.parse::<Backend>())
                .transpose()
                .map_err(|e| JsError::new(&e.to_string()))?;
            let listed: Vec<ListedFile> = serde_wasm_bindgen::from_value(files)
                .map_err(|e| JsError::new(&format!("files: {e}")))?;
            let files = listed
                .into_iter()
                .map(|f| {
                    Ok(EmbedderFile {
                        check: FileCheck::new(f.bytes, &f.sha256)
                            .map_err(|e| JsError::new(&format!("files: {}: {e}", f.file)))?,
                        file: f.file,
                    })
                })
                .collect::<Result<Vec<_>, JsError>>()?;
            let (tx, rx) = oneshot::channel();
            shared.embedder_waiters.borrow_mut().push(tx);
            shared
                .post_worker(&ToWorker::LoadEmbedder {
                    id,
                    base_url,
                    files,
                    backend,
                })
                .map_err(JsError::from)?;
            loaded(rx).await
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
