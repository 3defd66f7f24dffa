//! The native tabnode node.
//!
//! It joins a relay over TCP or QUIC, reserves a `/p2p-circuit` slot so that
//! tabs and other nodes can dial it, registers its capabilities and answers
//! the `/tabnode/1.0.0` protocol. The event loop is
//! [`tabnode_core::driver::run`], the same one the browser tab runs; this
//! crate adds the tokio transports and a [`NodeHandle`] to talk to it.

pub mod embed;
pub mod prover;
pub mod serve;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::channel::{mpsc, oneshot};
use futures::SinkExt;
use libp2p::{identity, noise, tcp, yamux, Multiaddr, PeerId};
use tabnode_core::{
    driver::{self, Command, DriverConfig, NodeEvent, RequestError},
    node::NodeBehaviour,
    Capabilities, Request, Response,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Errors of the native node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// libp2p refused to build the swarm.
    #[error("libp2p: {0}")]
    Libp2p(String),
    /// The key file cannot be read, written or decoded.
    #[error("key file {path}: {reason}")]
    Key {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// The relay address is unusable.
    #[error("relay address {0} must end in /p2p/<peer id>")]
    RelayAddress(Multiaddr),
    /// A request failed.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// Waiting for a condition took too long.
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, &'static str),
}

/// What the node's owner can observe.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    /// Connected to the relay.
    pub relay_connected: bool,
    /// Holding a circuit reservation (dialable by peers).
    pub reachable: bool,
    /// Times the relay connection was (re-)established.
    pub connects: u64,
}

/// Counters of a running node.
#[derive(Debug, Default)]
pub struct Counters {
    /// Requests answered.
    pub served: AtomicU64,
    /// Inbound requests that failed after being read.
    pub failed: AtomicU64,
    /// Inbound messages the codec refused.
    pub codec: Arc<tabnode_core::CodecStats>,
}

impl Counters {
    /// Inbound protocol streams closed for any error.
    pub fn protocol_errors(&self) -> u64 {
        self.failed.load(Ordering::Relaxed) + self.codec.rejected()
    }
}

/// A running node. Dropping it stops the node.
#[derive(Debug)]
pub struct NodeHandle {
    /// The node's peer id.
    pub peer_id: PeerId,
    /// Counters.
    pub counters: Arc<Counters>,
    commands: mpsc::Sender<Command>,
    status: watch::Receiver<Status>,
    task: JoinHandle<()>,
}

impl Drop for NodeHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl NodeHandle {
    /// Sends `request` to `peer` (`None`: the relay) and waits for the answer.
    ///
    /// # Errors
    /// [`RequestError`] when the node is offline or the request fails.
    pub async fn request(
        &self,
        peer: Option<PeerId>,
        request: Request,
    ) -> Result<Response, NodeError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .clone()
            .send(Command::Request {
                peer,
                request,
                reply,
            })
            .await
            .map_err(|_| RequestError::Stopped)?;
        Ok(rx.await.map_err(|_| RequestError::Stopped)??)
    }

    /// Replaces the capabilities the node registers with the relay.
    ///
    /// # Errors
    /// [`RequestError::Stopped`] if the node has stopped.
    pub async fn set_capabilities(&self, caps: Capabilities) -> Result<(), NodeError> {
        self.commands
            .clone()
            .send(Command::SetCapabilities(caps))
            .await
            .map_err(|_| RequestError::Stopped.into())
    }

    /// The current status.
    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    /// Waits until `pred` holds for the status, at most `timeout`.
    ///
    /// # Errors
    /// [`NodeError::Timeout`].
    pub async fn wait_for(
        &self,
        what: &'static str,
        timeout: Duration,
        pred: impl Fn(&Status) -> bool,
    ) -> Result<Status, NodeError> {
        let mut rx = self.status.clone();
        let got = tokio::time::timeout(timeout, rx.wait_for(|s| pred(s)))
            .await
            .map_err(|_| NodeError::Timeout(timeout, what))?
            .map_err(|_| RequestError::Stopped)?;
        Ok(got.clone())
    }

    /// Waits until the node holds a circuit reservation.
    ///
    /// # Errors
    /// [`NodeError::Timeout`].
    pub async fn wait_reachable(&self, timeout: Duration) -> Result<(), NodeError> {
        self.wait_for("a circuit reservation", timeout, |s| s.reachable)
            .await
            .map(|_| ())
    }

    /// Waits until the driver loop has ended.
    pub async fn join(mut self) {
        let _ = (&mut self.task).await;
    }
}

/// Settings of a native node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The relay (TCP or QUIC multiaddr ending in `/p2p/<id>`).
    pub relay: Multiaddr,
    /// The node identity; a fresh one if `None`.
    pub key: Option<identity::Keypair>,
    /// What to register.
    pub capabilities: Capabilities,
    /// Cap of the reconnect delay.
    pub max_backoff: Duration,
    /// Answers what the driver hands over (Proof-of-FLOPS challenges).
    pub handler: Arc<dyn prover::RequestHandler>,
    /// The model this node serves, if any (its name and slots are added to
    /// the capabilities).
    pub server: Option<Arc<serve::InferServer>>,
    /// The sentence-embedding model this node serves, if any (its catalog
    /// id is added to the capabilities' models).
    pub embedder: Option<Arc<embed::Embedder>>,
}

impl std::fmt::Debug for dyn prover::RequestHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RequestHandler")
    }
}

/// Answers request `id` with `work` run on a blocking thread, or, with no
/// work (nothing here to do it), refuses it as `missing`.
fn answer_off_thread<F>(
    respond: &mpsc::Sender<Command>,
    id: u64,
    task: &'static str,
    work: Option<F>,
    missing: &'static str,
) where
    F: FnOnce() -> Response + Send + 'static,
{
    let mut respond = respond.clone();
    tokio::spawn(async move {
        let response = match work {
            Some(f) => tokio::task::spawn_blocking(f)
                .await
                .unwrap_or_else(|e| Response::Error {
                    code: tabnode_core::ErrorCode::Invalid,
                    message: format!("the {task} task failed: {e}"),
                }),
            None => Response::Error {
                code: tabnode_core::ErrorCode::UnknownModel,
                message: missing.into(),
            },
        };
        let _ = respond.send(Command::Respond { id, response }).await;
    });
}

/// Loads an identity from `path`, creating it if missing.
///
/// # Errors
/// [`NodeError::Key`] if the file cannot be read, written or decoded.
pub fn load_or_create_key(path: &Path) -> Result<identity::Keypair, NodeError> {
    let err = |reason: String| NodeError::Key {
        path: path.display().to_string(),
        reason,
    };
    match std::fs::read(path) {
        Ok(bytes) => {
            identity::Keypair::from_protobuf_encoding(&bytes).map_err(|e| err(e.to_string()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = identity::Keypair::generate_ed25519();
            let bytes = key.to_protobuf_encoding().map_err(|e| err(e.to_string()))?;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
            }
            std::fs::write(path, bytes).map_err(|e| err(e.to_string()))?;
            Ok(key)
        }
        Err(e) => Err(err(e.to_string())),
    }
}

/// Starts a node on the current tokio runtime.
///
/// # Errors
/// [`NodeError::RelayAddress`] and swarm construction failures.
pub fn spawn(config: NodeConfig) -> Result<NodeHandle, NodeError> {
    if driver::peer_of(&config.relay).is_none() {
        return Err(NodeError::RelayAddress(config.relay));
    }
    let key = config
        .key
        .unwrap_or_else(identity::Keypair::generate_ed25519);
    let agent = format!("tabnode-node/{}", env!("CARGO_PKG_VERSION"));
    let lp = |e: &dyn std::fmt::Display| NodeError::Libp2p(e.to_string());
    let counters = Arc::new(Counters::default());
    let codec = tabnode_core::TabnodeCodec::new(tabnode_core::MAX_MESSAGE, counters.codec.clone());
    let swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| lp(&e))?
        .with_quic()
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .map_err(|e| lp(&e))?
        .with_behaviour(|key, relay_client| NodeBehaviour::new(key, relay_client, agent, codec))
        .map_err(|e| lp(&e))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
        .build();
    let peer_id = *swarm.local_peer_id();
    let (commands, rx) = mpsc::channel(64);
    let (status_tx, status) = watch::channel(Status::default());
    let c = counters.clone();
    let handler = config.handler;
    let respond = commands.clone();
    let server = config.server;
    let mut capabilities = config.capabilities;
    if let Some(max_n) = handler.max_pof_n() {
        capabilities.max_pof_n = max_n;
    }
    if let Some(s) = &server {
        capabilities.models = s.model_names();
        capabilities.engine = s.engine();
        capabilities.slots = u32::try_from(s.slots()).unwrap_or(u32::MAX);
        capabilities.scores = s.scores();
    }
    let embedder = config.embedder;
    if let Some(e) = &embedder {
        capabilities.models.push(e.id().to_owned());
        capabilities.slots = capabilities.slots.max(1);
    }
    let driver_config = DriverConfig {
        relay: config.relay,
        capabilities,
        max_backoff: config.max_backoff,
    };
    let task = tokio::spawn(async move {
        let emit = move |event: NodeEvent| {
            tracing::debug!(?event, "node event");
            match event {
                NodeEvent::RelayConnected { .. } => status_tx.send_modify(|s| {
                    s.relay_connected = true;
                    s.connects += 1;
                }),
                NodeEvent::Reachable { .. } => status_tx.send_modify(|s| s.reachable = true),
                NodeEvent::RelayDisconnected { .. } => status_tx.send_modify(|s| {
                    s.relay_connected = false;
                    s.reachable = false;
                }),
                NodeEvent::Served { .. } => {
                    c.served.fetch_add(1, Ordering::Relaxed);
                }
                NodeEvent::ProtocolError { .. } => {
                    c.failed.fetch_add(1, Ordering::Relaxed);
                }
                NodeEvent::Request {
                    id,
                    request: Request::Infer(infer),
                    ..
                } => {
                    let response = match &server {
                        Some(s) => s.accept(&infer),
                        None => Response::Error {
                            code: tabnode_core::ErrorCode::UnknownModel,
                            message: "this node serves no model".into(),
                        },
                    };
                    let run = match (&server, &response) {
                        (Some(s), Response::InferAccepted { .. }) => Some(s.clone()),
                        _ => None,
                    };
                    let mut respond = respond.clone();
                    tokio::spawn(async move {
                        let _ = respond.send(Command::Respond { id, response }).await;
                        if let Some(s) = run {
                            s.run(*infer, respond).await;
                        }
                    });
                }
                NodeEvent::Request {
                    id,
                    request: Request::Embed(batch),
                    ..
                } => answer_off_thread(
                    &respond,
                    id,
                    "embedding",
                    embedder.clone().map(|e| move || e.answer(&batch)),
                    "this node serves no embedding model",
                ),
                NodeEvent::Request {
                    id,
                    request: Request::Score(job),
                    ..
                } => answer_off_thread(
                    &respond,
                    id,
                    "scoring",
                    server.clone().map(|s| move || s.score(&job)),
                    "this node serves no model",
                ),
                NodeEvent::Request {
                    id,
                    request: Request::InferCancel { request_id },
                    ..
                } => {
                    if let Some(s) = &server {
                        s.cancel(request_id);
                    }
                    let mut respond = respond.clone();
                    tokio::spawn(async move {
                        let response = Response::Ack;
                        let _ = respond.send(Command::Respond { id, response }).await;
                    });
                }
                NodeEvent::Request { id, peer, request } => {
                    let handler = handler.clone();
                    let mut respond = respond.clone();
                    tokio::spawn(async move {
                        let response =
                            tokio::task::spawn_blocking(move || handler.handle(&peer, request))
                                .await
                                .unwrap_or_else(|e| Response::Error {
                                    code: tabnode_core::ErrorCode::Invalid,
                                    message: format!("handler failed: {e}"),
                                });
                        let _ = respond.send(Command::Respond { id, response }).await;
                    });
                }
            }
        };
        if let Err(e) = driver::run(swarm, driver_config, rx, emit).await {
            tracing::error!("node stopped: {e}");
        }
    });
    Ok(NodeHandle {
        peer_id,
        counters,
        commands,
        status,
        task,
    })
}
