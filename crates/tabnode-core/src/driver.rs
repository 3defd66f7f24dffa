//! The event loop of a node, shared by the browser tab and the native node.
//!
//! [`run`] owns the [`Swarm`] and drives it: it dials the relay, reserves a
//! circuit slot, registers the node's capabilities, answers requests, runs
//! requests for its caller and reconnects with [`backoff`] when the relay goes
//! away. It is executor-agnostic (timers from `futures-timer`), so the same
//! code runs under tokio and under `wasm-bindgen-futures`.

use std::collections::HashMap;
use std::time::Duration;

use futures::{channel::mpsc, channel::oneshot, FutureExt, StreamExt};
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
    node::{answer, backoff, NodeBehaviour, NodeBehaviourEvent},
    protocol::{Request, Response},
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
        reply: oneshot::Sender<Result<Response, RequestError>>,
    },
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

struct Driver {
    relay_addr: Multiaddr,
    relay_peer: PeerId,
    capabilities: Capabilities,
    max_backoff: Duration,
    relay_connected: bool,
    circuit_listening: bool,
    attempt: u32,
    pending: HashMap<OutboundRequestId, oneshot::Sender<Result<Response, RequestError>>>,
    inbound: HashMap<u64, request_response::ResponseChannel<Response>>,
    next_inbound: u64,
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
    let mut d = Driver {
        relay_addr: config.relay,
        relay_peer,
        capabilities: config.capabilities,
        max_backoff: config.max_backoff,
        relay_connected: false,
        circuit_listening: false,
        attempt: 0,
        pending: HashMap::new(),
        inbound: HashMap::new(),
        next_inbound: 0,
    };
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
        let request = Request::Register(Box::new(self.capabilities.clone()));
        // The answer is an Ack; nobody waits for it, failures are logged.
        swarm
            .behaviour_mut()
            .rpc
            .send_request(&self.relay_peer, request);
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
            Command::Respond { id, response } => match self.inbound.remove(&id) {
                Some(channel) => {
                    if swarm
                        .behaviour_mut()
                        .rpc
                        .send_response(channel, response)
                        .is_err()
                    {
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
                let Some(response) = answer(peer, self.relay_peer, &request) else {
                    // Forget channels whose requester gave up.
                    self.inbound.retain(|_, c| c.is_open());
                    let id = self.next_inbound;
                    self.next_inbound += 1;
                    self.inbound.insert(id, channel);
                    emit(NodeEvent::Request {
                        id,
                        peer: peer.to_string(),
                        request,
                    });
                    return;
                };
                let bytes = match &request {
                    Request::Echo(p) => p.len(),
                    _ => 0,
                };
                if swarm
                    .behaviour_mut()
                    .rpc
                    .send_response(channel, response)
                    .is_ok()
                {
                    emit(NodeEvent::Served {
                        peer: peer.to_string(),
                        bytes,
                    });
                }
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
