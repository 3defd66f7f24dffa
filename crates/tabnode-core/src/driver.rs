//! The event loop of a node, shared by the browser tab and the native node.
//!
//! [`run`] owns the [`Swarm`] and drives it: it dials the relay, reserves a
//! circuit slot, registers the node's capabilities, answers requests, runs
//! requests for its caller and reconnects with [`backoff`] when the relay goes
//! away. It is executor-agnostic (timers from `futures-timer`), so the same
//! code runs under tokio and under `wasm-bindgen-futures`.

use std::collections::HashMap;
use std::time::Duration;

use futures::{
    channel::mpsc, channel::oneshot, future::BoxFuture, future::Fuse, FutureExt, StreamExt,
};
use libp2p::{
    core::ConnectedPoint,
    multiaddr::Protocol,
    ping, relay,
    request_response::{self, OutboundRequestId},
    swarm::{dial_opts::DialOpts, SwarmEvent},
    Multiaddr, PeerId, Swarm,
};

use crate::{
    caps::Capabilities,
    link::{Frame, Outbox, Refused, SendError, LINK_PROTOCOL},
    node::{answer, backoff, NodeBehaviour, NodeBehaviourEvent},
    protocol::{Request, Response},
    MAX_MESSAGE,
};

/// Why a request made through the driver failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The node is not connected to its relay.
    #[error("not connected to the relay")]
    NotConnected,
    /// The request failed on the network (dial, timeout, stream closed...).
    #[error("request to {peer} failed: {reason}")]
    Failed {
        /// Target peer.
        peer: String,
        /// libp2p's description of the failure.
        reason: String,
    },
    /// The driver has stopped.
    #[error("the node has stopped")]
    Stopped,
}

/// Where the outcome of a request goes.
pub type Reply = oneshot::Sender<Result<Response, RequestError>>;

/// What the caller asks the driver to do.
#[derive(Debug)]
pub enum Command {
    /// Send `request` to `peer` (dialled through the relay circuit when not
    /// connected) and deliver the response on `reply`.
    Request {
        /// Target; `None` means the relay itself.
        peer: Option<PeerId>,
        /// The request.
        request: Request,
        /// Where the outcome goes.
        reply: Reply,
    },
    /// Send `request` to the relay without wanting an answer: as a notice
    /// over the link, or over request-response (whose answer is dropped)
    /// while there is none.
    Notify(Request),
    /// Answer the inbound request handed over as [`NodeEvent::Request`].
    Respond {
        /// The `id` of that event.
        id: u64,
        /// The answer.
        response: Response,
    },
    /// Replace the capabilities and register them again with the relay.
    SetCapabilities(Capabilities),
    /// Stop the driver.
    Shutdown,
}

/// What the driver tells its caller.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum NodeEvent {
    /// A relay connection is up (over `transport`).
    RelayConnected {
        /// `tcp`, `quic`, `webrtc-direct`...
        transport: String,
    },
    /// The relay accepted our reservation: other peers can dial us at `addr`.
    Reachable {
        /// Our `/p2p-circuit` address.
        addr: String,
    },
    /// The relay connection is gone; a reconnect follows after `retry_in`.
    RelayDisconnected {
        /// Why, as libp2p reports it.
        reason: String,
        /// Delay before the next attempt, in milliseconds.
        retry_in_ms: u64,
    },
    /// A peer was served a request.
    Served {
        /// The requester.
        peer: String,
        /// Encoded size of the request payload (Echo only), for metrics.
        bytes: usize,
    },
    /// A request the driver cannot answer by itself (a Proof-of-FLOPS
    /// challenge): the owner answers with [`Command::Respond`].
    Request {
        /// Pass back in [`Command::Respond`].
        id: u64,
        /// The requester.
        peer: String,
        /// The request.
        request: Request,
    },
    /// A peer sent something we could not read; its stream was closed.
    ProtocolError {
        /// The offending peer.
        peer: String,
        /// What went wrong.
        error: String,
    },
}

/// Static settings of a driver.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// The relay to join, with its `/p2p/<id>` suffix.
    pub relay: Multiaddr,
    /// What we register with the relay.
    pub capabilities: Capabilities,
    /// Upper bound of the reconnect delay.
    pub max_backoff: Duration,
}

/// The name of the transport an address uses, for display and the registry.
pub fn transport_name(addr: &Multiaddr) -> &'static str {
    let mut name = "unknown";
    for p in addr.iter() {
        name = match p {
            Protocol::P2pCircuit => return "p2p-circuit",
            Protocol::WebRTCDirect => return "webrtc-direct",
            Protocol::WebRTC => return "webrtc",
            Protocol::QuicV1 | Protocol::Quic => return "quic",
            Protocol::Ws(_) | Protocol::Wss(_) => return "websocket",
            Protocol::Tcp(_) => "tcp",
            _ => name,
        };
    }
    name
}

/// The peer id at the end of an address (`…/p2p/<id>`).
pub fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    addr.iter().last().and_then(|p| match p {
        Protocol::P2p(id) => Some(id),
        _ => None,
    })
}

/// Where the answer to an inbound request goes.
enum Responder {
    /// Its request-response stream.
    Rpc(request_response::ResponseChannel<Response>),
    /// The link it came on (`link`: which one), as a frame of this `id`.
    Link { link: u64, id: u64 },
    /// Nobody: it came as a notice.
    Nobody,
}

/// What a link's task reports, in order.
enum LinkEvent {
    /// A frame read.
    Frame(Frame),
    /// The link ended (after its last frame).
    Ended(std::io::Result<()>),
}

/// Keeps a node's registrations in the order it made them. One sent over
/// request-response travels on a stream of its own, which can take longer
/// to reach the relay than a later one over the link (the link the first
/// registration asked for can arrive right after it): the relay would then
/// keep the older capabilities. So while one is in flight there, a newer
/// registration waits for its answer and then goes with the capabilities
/// of that moment (several asked meanwhile make one).
#[derive(Debug)]
struct Registering<I> {
    /// The registration in flight over request-response.
    in_flight: Option<I>,
    /// Another was asked for meanwhile.
    again: bool,
}

impl<I> Default for Registering<I> {
    fn default() -> Self {
        Self {
            in_flight: None,
            again: false,
        }
    }
}

impl<I: PartialEq> Registering<I> {
    /// Whether to send a registration now; if not, it goes when the one in
    /// flight is answered.
    fn ask(&mut self) -> bool {
        if self.in_flight.is_some() {
            self.again = true;
            return false;
        }
        true
    }

    /// The registration just asked for went over request-response as `id`.
    fn sent_over_rpc(&mut self, id: I) {
        self.in_flight = Some(id);
    }

    /// Request `id` was answered (or failed); whether a registration is
    /// due now.
    fn answered(&mut self, id: I) -> bool {
        if self.in_flight.as_ref() != Some(&id) {
            return false;
        }
        self.in_flight = None;
        std::mem::take(&mut self.again)
    }
}

/// A link lasting this long is worth asking for again when it ends while
/// the relay is still connected (a register over request-response makes
/// the relay open a new one); one that breaks sooner is left broken, and
/// request-response serves until the next connection.
const LINK_WORTH_REOPENING: Duration = Duration::from_secs(5);

/// The relay's link ([`crate::link`]) while it is up.
struct Link {
    /// Numbers the links; frames and answers of an earlier one are dropped.
    number: u64,
    /// When it came up.
    since: web_time::Instant,
    /// Frames to send.
    out: Outbox,
    /// Our requests sent over it, by frame id.
    pending: HashMap<u64, Reply>,
    next_id: u64,
}

struct Driver {
    relay_addr: Multiaddr,
    relay_peer: PeerId,
    /// `relay_peer` in base58, for the events of its requests (encoding it
    /// for each was 2 % of a busy node's time).
    relay_text: String,
    capabilities: Capabilities,
    max_backoff: Duration,
    relay_connected: bool,
    circuit_listening: bool,
    attempt: u32,
    pending: HashMap<OutboundRequestId, Reply>,
    inbound: HashMap<u64, Responder>,
    next_inbound: u64,
    link: Option<Link>,
    links_opened: u64,
    /// Registrations kept in order.
    registering: Registering<OutboundRequestId>,
    /// What the links' tasks report, with the link's number.
    link_frames: mpsc::UnboundedSender<(u64, LinkEvent)>,
}

type Emit<'a> = dyn FnMut(NodeEvent) + 'a;

/// Runs the node until [`Command::Shutdown`] or until `commands` closes.
///
/// `emit` receives every [`NodeEvent`]. The swarm must have been built with
/// a transport that can reach `config.relay` and with the relay client
/// transport (for `/p2p-circuit`).
///
/// # Errors
/// Returns an error only when the relay address has no `/p2p/<id>` suffix.
pub async fn run(
    mut swarm: Swarm<NodeBehaviour>,
    config: DriverConfig,
    mut commands: mpsc::Receiver<Command>,
    mut emit: impl FnMut(NodeEvent),
) -> Result<(), RequestError> {
    let relay_peer = peer_of(&config.relay).ok_or_else(|| RequestError::Failed {
        peer: config.relay.to_string(),
        reason: "the relay address must end in /p2p/<peer id>".into(),
    })?;
    let (frames_tx, mut link_frames) = mpsc::unbounded();
    let mut d = Driver {
        relay_addr: config.relay,
        relay_peer,
        relay_text: relay_peer.to_string(),
        capabilities: config.capabilities,
        max_backoff: config.max_backoff,
        relay_connected: false,
        circuit_listening: false,
        attempt: 0,
        pending: HashMap::new(),
        inbound: HashMap::new(),
        next_inbound: 0,
        link: None,
        links_opened: 0,
        registering: Registering::default(),
        link_frames: frames_tx,
    };
    // Links the relay opens; registered once, before any connection.
    let mut incoming_links = match swarm.behaviour().link.new_control().accept(LINK_PROTOCOL) {
        Ok(incoming) => incoming.fuse(),
        Err(e) => {
            return Err(RequestError::Failed {
                peer: relay_peer.to_string(),
                reason: format!("cannot accept {LINK_PROTOCOL}: {e}"),
            })
        }
    };
    // The running link (reads and writes its stream); ends when it breaks.
    let mut link_task: Fuse<BoxFuture<'static, ()>> = Fuse::terminated();
    d.dial_relay(&mut swarm);
    // Fires when a redial (or a retried circuit listen) is due.
    let mut timer = futures_timer::Delay::new(Duration::from_secs(3600)).fuse();
    let mut timer_armed = false;
    loop {
        futures::select! {
            event = swarm.select_next_some() => {
                if let Some(delay) = d.on_event(&mut swarm, event, &mut emit) {
                    timer = futures_timer::Delay::new(delay).fuse();
                    timer_armed = true;
                }
            }
            command = commands.next() => match command {
                Some(Command::Shutdown) | None => break,
                Some(command) => d.on_command(&mut swarm, command),
            },
            opened = incoming_links.next() => {
                if let Some((peer, stream)) = opened {
                    if let Some(task) = d.link_opened(peer, stream) {
                        link_task = task.fuse();
                    }
                }
            }
            event = link_frames.next() => match event {
                Some((number, LinkEvent::Frame(frame))) => {
                    d.on_frame(&mut swarm, number, frame, &mut emit);
                }
                Some((number, LinkEvent::Ended(end))) => d.link_ended(&mut swarm, number, end),
                None => {}
            },
            () = link_task => {}
            _ = timer => {
                if timer_armed {
                    timer_armed = false;
                    if !d.relay_connected {
                        d.dial_relay(&mut swarm);
                    } else if !d.circuit_listening {
                        d.listen_circuit(&mut swarm);
                    }
                }
                timer = futures_timer::Delay::new(Duration::from_secs(3600)).fuse();
            }
        }
    }
    for (_, reply) in d.pending.drain() {
        let _ = reply.send(Err(RequestError::Stopped));
    }
    if let Some(link) = d.link.take() {
        for (_, reply) in link.pending {
            let _ = reply.send(Err(RequestError::Stopped));
        }
    }
    Ok(())
}

impl Driver {
    fn dial_relay(&mut self, swarm: &mut Swarm<NodeBehaviour>) {
        tracing::info!(relay = %self.relay_addr, attempt = self.attempt, "dialling relay");
        if let Err(e) = swarm.dial(self.relay_addr.clone()) {
            tracing::warn!("dial relay: {e}");
        }
    }

    fn listen_circuit(&mut self, swarm: &mut Swarm<NodeBehaviour>) {
        let addr = self.relay_addr.clone().with(Protocol::P2pCircuit);
        match swarm.listen_on(addr) {
            Ok(_) => self.circuit_listening = true,
            Err(e) => tracing::warn!("listen on circuit: {e}"),
        }
    }

    fn register(&mut self, swarm: &mut Swarm<NodeBehaviour>) {
        if !self.registering.ask() {
            return;
        }
        let request = Request::Register(Box::new(self.capabilities.clone()));
        // The answer is an Ack; nobody waits for it, failures are logged.
        // Over the link when it is up: a register over request-response
        // tells the relay this node has no link (it opens one).
        if let Some(id) = self.notify(swarm, request) {
            self.registering.sent_over_rpc(id);
        }
    }

    /// Sends `request` to the relay, whose answer nobody waits for: as a
    /// notice over the link when it is up, else over request-response (the
    /// answer is dropped; failures are logged), returning its id there.
    fn notify(
        &mut self,
        swarm: &mut Swarm<NodeBehaviour>,
        request: Request,
    ) -> Option<OutboundRequestId> {
        let request = match &self.link {
            Some(link) => match link.out.notify(request) {
                Ok(()) => return None,
                Err(refused) => refused.request,
            },
            None => request,
        };
        Some(
            swarm
                .behaviour_mut()
                .rpc
                .send_request(&self.relay_peer, request),
        )
    }

    /// `peer` in base58.
    fn peer_text(&self, peer: PeerId) -> String {
        if peer == self.relay_peer {
            self.relay_text.clone()
        } else {
            peer.to_string()
        }
    }

    fn circuit_addr(&self, peer: PeerId) -> Multiaddr {
        self.relay_addr
            .clone()
            .with(Protocol::P2pCircuit)
            .with(Protocol::P2p(peer))
    }

    fn on_command(&mut self, swarm: &mut Swarm<NodeBehaviour>, command: Command) {
        match command {
            Command::Request {
                peer,
                request,
                reply,
            } => {
                if !self.relay_connected {
                    let _ = reply.send(Err(RequestError::NotConnected));
                    return;
                }
                let peer = peer.unwrap_or(self.relay_peer);
                let (request, reply) = if peer == self.relay_peer {
                    match self.send_on_link(request, reply) {
                        None => return,
                        Some(back) => back,
                    }
                } else {
                    (request, reply)
                };
                if peer != self.relay_peer && !swarm.is_connected(&peer) {
                    let opts = DialOpts::peer_id(peer)
                        .addresses(vec![self.circuit_addr(peer)])
                        .build();
                    if let Err(e) = swarm.dial(opts) {
                        tracing::debug!("dial {peer}: {e}");
                    }
                }
                let id = swarm.behaviour_mut().rpc.send_request(&peer, request);
                self.pending.insert(id, reply);
            }
            Command::Notify(request) => {
                if self.relay_connected {
                    let _ = self.notify(swarm, request);
                } else {
                    tracing::debug!("not connected: dropped a {} for the relay", request.name());
                }
            }
            Command::Respond { id, response } => match self.inbound.remove(&id) {
                Some(responder) => {
                    if !self.respond(swarm, responder, response) {
                        tracing::warn!("the requester of inbound request {id} is gone");
                    }
                }
                None => tracing::warn!("no inbound request {id} to answer"),
            },
            Command::SetCapabilities(caps) => {
                self.capabilities = caps;
                if self.relay_connected {
                    self.register(swarm);
                }
            }
            Command::Shutdown => {}
        }
    }

    /// Handles one swarm event; returns a delay when a timer must be armed.
    fn on_event(
        &mut self,
        swarm: &mut Swarm<NodeBehaviour>,
        event: SwarmEvent<NodeBehaviourEvent>,
        emit: &mut Emit<'_>,
    ) -> Option<Duration> {
        match event {
            SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } if peer_id == self.relay_peer => {
                if !self.relay_connected {
                    self.relay_connected = true;
                    self.attempt = 0;
                    let addr = match &endpoint {
                        ConnectedPoint::Dialer { address, .. } => address,
                        ConnectedPoint::Listener { send_back_addr, .. } => send_back_addr,
                    };
                    emit(NodeEvent::RelayConnected {
                        transport: transport_name(addr).to_string(),
                    });
                    self.register(swarm);
                    if !self.circuit_listening {
                        self.listen_circuit(swarm);
                    }
                }
                None
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                cause,
                ..
            } if peer_id == self.relay_peer => {
                self.relay_connected = false;
                // The next connection registers afresh.
                self.registering = Registering::default();
                self.drop_link("the relay connection closed");
                self.relay_lost(cause.map(|c| c.to_string()), emit)
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. }
                if peer_id == Some(self.relay_peer) || peer_id.is_none() =>
            {
                if self.relay_connected {
                    tracing::debug!("dial failed: {error}");
                    return None;
                }
                self.relay_lost(Some(error.to_string()), emit)
            }
            SwarmEvent::ListenerClosed {
                addresses, reason, ..
            } if addresses.is_empty()
                || addresses.iter().any(|a| transport_name(a) == "p2p-circuit") =>
            {
                // A circuit listener ends when its relay connection does, or
                // when the reservation is refused or cannot be renewed.
                self.circuit_listening = false;
                tracing::info!("circuit listener closed: {reason:?}");
                if self.relay_connected {
                    Some(backoff(self.attempt, self.max_backoff))
                } else {
                    None
                }
            }
            SwarmEvent::NewListenAddr { address, .. } => {
                if transport_name(&address) == "p2p-circuit" {
                    emit(NodeEvent::Reachable {
                        addr: address.to_string(),
                    });
                }
                None
            }
            SwarmEvent::Behaviour(NodeBehaviourEvent::RelayClient(
                relay::client::Event::ReservationReqAccepted { renewal, .. },
            )) => {
                tracing::info!(renewal, "circuit reservation accepted");
                None
            }
            SwarmEvent::Behaviour(NodeBehaviourEvent::Ping(ping::Event {
                peer,
                connection,
                result: Err(e),
            })) if peer == self.relay_peer => {
                tracing::info!("ping to the relay failed ({e}); closing the connection");
                swarm.close_connection(connection);
                None
            }
            SwarmEvent::Behaviour(NodeBehaviourEvent::Rpc(event)) => {
                self.on_rpc(swarm, event, emit);
                None
            }
            _ => None,
        }
    }

    /// Answers an inbound request itself, or hands it to the owner.
    fn on_request(
        &mut self,
        swarm: &mut Swarm<NodeBehaviour>,
        peer: PeerId,
        request: Request,
        responder: Responder,
        emit: &mut Emit<'_>,
    ) {
        let Some(response) = answer(peer, self.relay_peer, &request) else {
            // Forget the requests whose requester gave up or whose link broke.
            let link = self.link.as_ref().map(|l| l.number);
            self.inbound.retain(|_, r| match r {
                Responder::Rpc(c) => c.is_open(),
                Responder::Link { link: n, .. } => Some(*n) == link,
                Responder::Nobody => true,
            });
            let id = self.next_inbound;
            self.next_inbound += 1;
            self.inbound.insert(id, responder);
            emit(NodeEvent::Request {
                id,
                peer: self.peer_text(peer),
                request,
            });
            return;
        };
        let bytes = match &request {
            Request::Echo(p) => p.len(),
            _ => 0,
        };
        if self.respond(swarm, responder, response) {
            emit(NodeEvent::Served {
                peer: self.peer_text(peer),
                bytes,
            });
        }
    }

    /// Sends an answer the way its request came; false if that is gone.
    fn respond(
        &mut self,
        swarm: &mut Swarm<NodeBehaviour>,
        responder: Responder,
        response: Response,
    ) -> bool {
        match responder {
            Responder::Rpc(channel) => swarm
                .behaviour_mut()
                .rpc
                .send_response(channel, response)
                .is_ok(),
            Responder::Link { link, id } => match &self.link {
                Some(l) if l.number == link => l.out.answer(id, &response).is_ok(),
                _ => false,
            },
            Responder::Nobody => true,
        }
    }

    /// Sends a request for the relay over the link; gives it back when no
    /// link is up.
    fn send_on_link(&mut self, request: Request, reply: Reply) -> Option<(Request, Reply)> {
        let Some(link) = &mut self.link else {
            return Some((request, reply));
        };
        let id = link.next_id;
        link.next_id += 1;
        match link.out.request(id, request) {
            Ok(()) => {
                link.pending.insert(id, reply);
                None
            }
            // Too large for any stream: request-response would refuse it too.
            Err(Refused {
                error: SendError::Encode(e),
                ..
            }) => {
                let _ = reply.send(Err(RequestError::Failed {
                    peer: self.relay_peer.to_string(),
                    reason: e.to_string(),
                }));
                None
            }
            Err(Refused { request, .. }) => Some((request, reply)),
        }
    }

    /// A link stream arrived: from the relay it replaces the link (the
    /// returned task runs it), from anyone else it is dropped.
    fn link_opened(
        &mut self,
        peer: PeerId,
        stream: libp2p::Stream,
    ) -> Option<BoxFuture<'static, ()>> {
        if peer != self.relay_peer {
            tracing::warn!("dropped a link opened by {peer}: only the relay opens links");
            return None;
        }
        self.drop_link("the relay opened another");
        self.links_opened += 1;
        let number = self.links_opened;
        let (out, outgoing) = crate::link::outbox(MAX_MESSAGE);
        self.link = Some(Link {
            number,
            since: web_time::Instant::now(),
            out,
            pending: HashMap::new(),
            next_id: 0,
        });
        tracing::debug!(link = number, "link to the relay up");
        let frames = self.link_frames.clone();
        Some(
            async move {
                let end = crate::link::run(stream, MAX_MESSAGE, outgoing, |frame| {
                    let _ = frames.unbounded_send((number, LinkEvent::Frame(frame)));
                    Ok(())
                })
                .await;
                // Through the same channel: handled after the last frame.
                let _ = frames.unbounded_send((number, LinkEvent::Ended(end)));
            }
            .boxed(),
        )
    }

    /// The link `number` ended: its unanswered requests fail; one that
    /// lasted is asked for again while the relay is connected.
    fn link_ended(
        &mut self,
        swarm: &mut Swarm<NodeBehaviour>,
        number: u64,
        end: std::io::Result<()>,
    ) {
        let Some(since) = self
            .link
            .as_ref()
            .filter(|l| l.number == number)
            .map(|l| l.since)
        else {
            return;
        };
        let why = match end {
            Ok(()) => "the relay closed the link".to_string(),
            Err(e) => format!("the link to the relay broke: {e}"),
        };
        self.drop_link(&why);
        if self.relay_connected && since.elapsed() >= LINK_WORTH_REOPENING {
            self.register(swarm);
        }
    }

    /// Forgets the link; its unanswered requests fail with `why`.
    fn drop_link(&mut self, why: &str) {
        if let Some(link) = self.link.take() {
            tracing::debug!(link = link.number, "link to the relay down: {why}");
            for (_, reply) in link.pending {
                let _ = reply.send(Err(RequestError::Failed {
                    peer: self.relay_peer.to_string(),
                    reason: why.to_string(),
                }));
            }
        }
    }

    /// A frame read from link `number`.
    fn on_frame(
        &mut self,
        swarm: &mut Swarm<NodeBehaviour>,
        number: u64,
        frame: Frame,
        emit: &mut Emit<'_>,
    ) {
        if self.link.as_ref().map(|l| l.number) != Some(number) {
            return;
        }
        match frame {
            Frame::Request { id, request } => {
                let relay = self.relay_peer;
                self.on_request(
                    swarm,
                    relay,
                    request,
                    Responder::Link { link: number, id },
                    emit,
                );
            }
            Frame::Response { id, response } => {
                if let Some(reply) = self.link.as_mut().and_then(|l| l.pending.remove(&id)) {
                    let _ = reply.send(Ok(response));
                }
            }
            Frame::Notice { request } => {
                let relay = self.relay_peer;
                self.on_request(swarm, relay, request, Responder::Nobody, emit);
            }
        }
    }

    fn relay_lost(&mut self, reason: Option<String>, emit: &mut Emit<'_>) -> Option<Duration> {
        let retry_in = backoff(self.attempt, self.max_backoff);
        self.attempt = self.attempt.saturating_add(1);
        let reason = reason.unwrap_or_else(|| "closed".into());
        tracing::info!("relay lost ({reason}); retrying in {retry_in:?}");
        emit(NodeEvent::RelayDisconnected {
            reason,
            retry_in_ms: retry_in.as_millis() as u64,
        });
        Some(retry_in)
    }

    fn on_rpc(
        &mut self,
        swarm: &mut Swarm<NodeBehaviour>,
        event: request_response::Event<Request, Response>,
        emit: &mut Emit<'_>,
    ) {
        use request_response::{Event, Message};
        match event {
            Event::Message {
                peer,
                message:
                    Message::Request {
                        request, channel, ..
                    },
                ..
            } => {
                self.on_request(swarm, peer, request, Responder::Rpc(channel), emit);
            }
            Event::Message {
                message:
                    Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                if let Some(reply) = self.pending.remove(&request_id) {
                    let _ = reply.send(Ok(response));
                }
                if self.registering.answered(request_id) {
                    self.register(swarm);
                }
            }
            Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                tracing::warn!("request {request_id} to {peer} failed: {error}");
                if let Some(reply) = self.pending.remove(&request_id) {
                    let _ = reply.send(Err(RequestError::Failed {
                        peer: peer.to_string(),
                        reason: error.to_string(),
                    }));
                }
                if self.registering.answered(request_id) && self.relay_connected {
                    self.register(swarm);
                }
            }
            Event::InboundFailure { peer, error, .. } => {
                tracing::warn!("closed a stream from {peer}: {error}");
                emit(NodeEvent::ProtocolError {
                    peer: peer.to_string(),
                    error: error.to_string(),
                });
            }
            Event::ResponseSent { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_registration_asked_while_one_is_in_flight_over_request_response_waits_for_its_answer() {
        let mut r = super::Registering::<u64>::default();
        // Over the link: nothing to wait for.
        assert!(r.ask());
        assert!(r.ask());
        // Over request-response: the next ones wait, and make one.
        r.sent_over_rpc(1);
        assert!(!r.ask());
        assert!(!r.ask());
        // Another request's answer changes nothing.
        assert!(!r.answered(7));
        assert!(r.answered(1), "one registration is due");
        assert!(r.ask());
        // Answered with none asked meanwhile: nothing due.
        r.sent_over_rpc(2);
        assert!(!r.answered(2));
        assert!(r.ask());
    }

    use super::*;

    #[test]
    fn transport_names() {
        let cases = [
            ("/ip4/127.0.0.1/tcp/4001", "tcp"),
            ("/ip4/127.0.0.1/udp/4001/quic-v1", "quic"),
            ("/ip4/127.0.0.1/udp/4002/webrtc-direct", "webrtc-direct"),
            ("/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN/p2p-circuit", "p2p-circuit"),
        ];
        for (addr, name) in cases {
            let addr: Multiaddr = addr.parse().expect("valid multiaddr");
            assert_eq!(transport_name(&addr), name, "{addr}");
        }
    }

    #[test]
    fn peer_suffix() {
        let id = PeerId::random();
        let addr: Multiaddr = format!("/ip4/127.0.0.1/tcp/1/p2p/{id}")
            .parse()
            .expect("addr");
        assert_eq!(peer_of(&addr), Some(id));
        let bare: Multiaddr = "/ip4/127.0.0.1/tcp/1".parse().expect("addr");
        assert_eq!(peer_of(&bare), None);
    }
}
