//! The relay's libp2p side: transports, behaviour and event loop.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use libp2p::{
    core::{muxing::StreamMuxerBox, ConnectedPoint},
    identify, identity,
    multiaddr::Protocol,
    noise, ping, relay, request_response,
    swarm::{NetworkBehaviour, SwarmEvent},
    tcp, yamux, Multiaddr, PeerId, Swarm, Transport,
};
use libp2p_webrtc::tokio::Certificate;
use tabnode_core::{
    driver::transport_name,
    node::{rpc_behaviour, IDENTIFY_PROTOCOL},
    ErrorCode, Request, Response, TabnodeCodec,
};

use crate::client::{SendError, SwarmCommand};
use crate::metrics::{outcome, Direction};
use crate::now_ms;
use crate::{state::RelayState, Bootstrap, RelayConfig, RelayError};

/// How often the relay pings each connection.
const PING_INTERVAL: Duration = Duration::from_secs(4);
/// A ping unanswered this long closes the connection.
const PING_TIMEOUT: Duration = Duration::from_secs(5);

/// The relay's behaviour.
#[derive(NetworkBehaviour)]
pub(crate) struct RelayBehaviour {
    relay: relay::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    rpc: request_response::Behaviour<TabnodeCodec>,
    link: libp2p_stream::Behaviour,
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> RelayError {
    let path = path.to_path_buf();
    move |source| RelayError::Io { what, path, source }
}

/// Loads the identity key from `dir`, creating it on first start.
fn load_identity(dir: &Path) -> Result<identity::Keypair, RelayError> {
    let path = dir.join("identity.key");
    match std::fs::read(&path) {
        Ok(bytes) => identity::Keypair::from_protobuf_encoding(&bytes)
            .map_err(|e| RelayError::BadKey(path, e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = identity::Keypair::generate_ed25519();
            let bytes = key
                .to_protobuf_encoding()
                .map_err(|e| RelayError::BadKey(path.clone(), e.to_string()))?;
            std::fs::write(&path, bytes).map_err(io_err("writing the identity key", &path))?;
            Ok(key)
        }
        Err(e) => Err(io_err("reading the identity key", &path)(e)),
    }
}

/// Loads the WebRTC certificate from `dir`, creating it on first start, so
/// that the certhash browsers dial stays the same across restarts.
fn load_certificate(dir: &Path) -> Result<Certificate, RelayError> {
    let path = dir.join("webrtc-cert.pem");
    match std::fs::read_to_string(&path) {
        Ok(pem) => Certificate::from_pem(&pem).map_err(|e| RelayError::Certificate(e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let cert = Certificate::generate(&mut rand::thread_rng())
                .map_err(|e| RelayError::Certificate(e.to_string()))?;
            std::fs::write(&path, cert.serialize_pem())
                .map_err(io_err("writing the WebRTC certificate", &path))?;
            Ok(cert)
        }
        Err(e) => Err(io_err("reading the WebRTC certificate", &path)(e)),
    }
}

fn relay_config(config: &RelayConfig) -> relay::Config {
    let l = &config.limits;
    let per = |n: u32| NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
    relay::Config {
        max_reservations: l.max_reservations,
        max_reservations_per_peer: 4,
        reservation_duration: l.reservation_duration,
        reservation_rate_limiters: Vec::new(),
        max_circuits: l.max_circuits,
        max_circuits_per_peer: l.max_circuits_per_peer,
        max_circuit_duration: l.max_circuit_duration,
        max_circuit_bytes: l.max_circuit_bytes,
        circuit_src_rate_limiters: Vec::new(),
    }
    // Generous per-peer and per-IP rates: many tabs share one IP (NAT,
    // loopback tests) and reconnect after every relay restart.
    .reservation_rate_per_peer(per(60), Duration::from_secs(60))
    .reservation_rate_per_ip(per(1200), Duration::from_secs(60))
    .circuit_src_per_peer(per(600), Duration::from_secs(60))
    .circuit_src_per_ip(per(6000), Duration::from_secs(60))
}

/// Builds the swarm and waits until all three listeners are bound.
pub(crate) async fn build(
    config: &RelayConfig,
    codec: TabnodeCodec,
) -> Result<(Swarm<RelayBehaviour>, Bootstrap), RelayError> {
    // webrtc-rs pulls in both ring and aws-lc-rs; rustls must be told which.
    let _ = rustls::crypto::ring::default_provider().install_default();
    std::fs::create_dir_all(&config.data_dir)
        .map_err(io_err("creating the data directory", &config.data_dir))?;
    let key = load_identity(&config.data_dir)?;
    let cert = load_certificate(&config.data_dir)?;
    let relay_cfg = relay_config(config);
    let lp = |e: &dyn std::fmt::Display| RelayError::Libp2p(e.to_string());

    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| lp(&e))?
        .with_quic()
        .with_other_transport(|key| {
            libp2p_webrtc::tokio::Transport::new(key.clone(), cert)
                .map(|(peer, conn), _| (peer, StreamMuxerBox::new(conn)))
        })
        .map_err(|e| lp(&e))?
        .with_behaviour(|key| RelayBehaviour {
            relay: relay::Behaviour::new(key.public().to_peer_id(), relay_cfg),
            identify: identify::Behaviour::new(
                identify::Config::new(IDENTIFY_PROTOCOL.into(), key.public())
                    .with_agent_version(format!("tabnode-relay/{}", env!("CARGO_PKG_VERSION"))),
            ),
            ping: ping::Behaviour::new(
                ping::Config::new()
                    .with_interval(PING_INTERVAL)
                    .with_timeout(PING_TIMEOUT),
            ),
            rpc: rpc_behaviour(codec),
            link: libp2p_stream::Behaviour::new(),
        })
        .map_err(|e| lp(&e))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
        .build();

    for ip in &config.listen_ips {
        let base = Multiaddr::empty().with(match ip {
            std::net::IpAddr::V4(ip) => Protocol::Ip4(*ip),
            std::net::IpAddr::V6(ip) => Protocol::Ip6(*ip),
        });
        let listens = [
            base.clone().with(Protocol::Tcp(config.tcp_port)),
            base.clone()
                .with(Protocol::Udp(config.quic_port))
                .with(Protocol::QuicV1),
            base.with(Protocol::Udp(config.webrtc_port))
                .with(Protocol::WebRTCDirect),
        ];
        for addr in listens {
            swarm.listen_on(addr).map_err(|e| lp(&e))?;
        }
    }

    let peer_id = *swarm.local_peer_id();
    let mut boot = Bootstrap {
        peer_id: peer_id.to_string(),
        webrtc_direct: Vec::new(),
        tcp: Vec::new(),
        quic: Vec::new(),
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut listening: Vec<Multiaddr> = Vec::new();
    while boot.tcp.is_empty() || boot.quic.is_empty() || boot.webrtc_direct.is_empty() {
        let event = tokio::time::timeout_at(deadline, swarm.select_next_some())
            .await
            .map_err(|_| {
                RelayError::ListenTimeout(if boot.tcp.is_empty() {
                    "tcp"
                } else if boot.quic.is_empty() {
                    "quic"
                } else {
                    "webrtc-direct"
                })
            })?;
        if let SwarmEvent::NewListenAddr { address, .. } = event {
            let full = address.clone().with(Protocol::P2p(peer_id)).to_string();
            tracing::info!("listening on {full}");
            match transport_name(&address) {
                "tcp" => boot.tcp.push(full),
                "quic" => boot.quic.push(full),
                "webrtc-direct" => boot.webrtc_direct.push(full),
                _ => {}
            }
            listening.push(address);
        }
    }
    // What peers are told: the external addresses when there are any (they
    // go first in the bootstrap, before the listen addresses that local
    // nodes may still use), else the listen addresses.
    if config.external_addresses.is_empty() {
        for address in listening {
            swarm.add_external_address(address);
        }
    } else {
        let mut announced: Vec<Multiaddr> = Vec::new();
        for ext in &config.external_addresses {
            for listen in &listening {
                if let Some(addr) = ext.announce(listen) {
                    if !announced.contains(&addr) {
                        announced.push(addr);
                    }
                }
            }
        }
        for address in announced.into_iter().rev() {
            tracing::info!("announcing {address}");
            swarm.add_external_address(address.clone());
            let full = address.clone().with(Protocol::P2p(peer_id)).to_string();
            match transport_name(&address) {
                "tcp" => boot.tcp.insert(0, full),
                "quic" => boot.quic.insert(0, full),
                "webrtc-direct" => boot.webrtc_direct.insert(0, full),
                _ => {}
            }
        }
    }
    Ok((swarm, boot))
}

/// The IP address an address starts with.
fn ip_of(addr: &Multiaddr) -> Option<std::net::IpAddr> {
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(ip.into()),
        Protocol::Ip6(ip) => Some(ip.into()),
        _ => None,
    })
}

/// The relay's event loop.
pub(crate) async fn run(
    mut swarm: Swarm<RelayBehaviour>,
    state: Arc<RelayState>,
    mut commands: tokio::sync::mpsc::Receiver<SwarmCommand>,
    joined: tokio::sync::mpsc::Sender<PeerId>,
    max_peers_per_ip: usize,
    links: Arc<crate::links::Links>,
) {
    let m = &state.metrics;
    let control = swarm.behaviour().link.new_control();
    let mut pending: HashMap<
        request_response::OutboundRequestId,
        tokio::sync::oneshot::Sender<Result<Response, SendError>>,
    > = HashMap::new();
    loop {
        let event = tokio::select! {
            event = swarm.select_next_some() => event,
            command = commands.recv() => {
                match command {
                    Some(SwarmCommand::Request { peer, request, reply }) => {
                        let id = swarm.behaviour_mut().rpc.send_request(&peer, request);
                        pending.insert(id, reply);
                    }
                    Some(SwarmCommand::Disconnect { peer }) => {
                        // Not connected (any more): nothing to close.
                        let _ = swarm.disconnect_peer_id(peer);
                    }
                    None => break,
                }
                continue;
            }
        };
        m.record(&event);
        match event {
            SwarmEvent::ConnectionEstablished {
                peer_id,
                endpoint,
                connection_id,
                ..
            } => {
                let addr = match &endpoint {
                    ConnectedPoint::Dialer { address, .. } => address,
                    ConnectedPoint::Listener { send_back_addr, .. } => send_back_addr,
                };
                tracing::debug!("connected: {peer_id} via {addr}");
                let ip = ip_of(addr);
                let admitted = state.connected(
                    peer_id,
                    transport_name(addr),
                    ip,
                    max_peers_per_ip,
                    now_ms(),
                );
                if !admitted {
                    tracing::warn!(
                        "refused {peer_id}: {max_peers_per_ip} identities already connected from {ip:?}"
                    );
                    swarm.close_connection(connection_id);
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established,
                cause,
                ..
            } => {
                tracing::debug!("disconnected: {peer_id} ({cause:?})");
                state.disconnected(peer_id, num_established);
            }
            SwarmEvent::Behaviour(RelayBehaviourEvent::Relay(e)) => {
                on_relay_event(&state, e);
            }
            SwarmEvent::Behaviour(RelayBehaviourEvent::Identify(e)) => m.record(&e),
            SwarmEvent::Behaviour(RelayBehaviourEvent::Ping(e)) => {
                m.record(&e);
                // A peer that stopped answering (a closed or crashed tab,
                // a machine gone from the network) is dropped now, not
                // when the transport notices: it leaves matchmaking and
                // the dashboard within seconds. A peer without ping keeps
                // its connection.
                if let Err(ping::Failure::Timeout | ping::Failure::Other { .. }) = &e.result {
                    tracing::info!(peer = %e.peer, "ping failed ({:?}); closing the connection", e.result);
                    swarm.close_connection(e.connection);
                }
            }
            SwarmEvent::Behaviour(RelayBehaviourEvent::Rpc(e)) => match e {
                request_response::Event::Message {
                    peer,
                    message:
                        request_response::Message::Request {
                            request, channel, ..
                        },
                    ..
                } => {
                    let registered = matches!(request, Request::Register(_));
                    let response = on_request(&state, &joined, peer, request);
                    if registered && response == Response::Ack {
                        // From now on, over a link of its own (a node with
                        // a working link registers over it, not here).
                        links.open(&control, peer, state.clone(), joined.clone());
                    }
                    if swarm
                        .behaviour_mut()
                        .rpc
                        .send_response(channel, response)
                        .is_ok()
                    {
                        answered(&state);
                    }
                }
                request_response::Event::InboundFailure { peer, error, .. } => {
                    m.protocol_errors.inc();
                    tracing::warn!("closed a stream from {peer}: {error}");
                }
                request_response::Event::Message {
                    message:
                        request_response::Message::Response {
                            request_id,
                            response,
                        },
                    ..
                } => {
                    if let Some(reply) = pending.remove(&request_id) {
                        let _ = reply.send(Ok(response));
                    }
                }
                request_response::Event::OutboundFailure {
                    request_id, error, ..
                } => {
                    if let Some(reply) = pending.remove(&request_id) {
                        let _ = reply.send(Err(SendError::Outbound(error)));
                    }
                }
                _ => {}
            },
            _ => {}
        }
    }
}

/// Answers a node's request (over request-response or its link).
pub(crate) fn on_request(
    state: &RelayState,
    joined: &tokio::sync::mpsc::Sender<PeerId>,
    peer: PeerId,
    request: Request,
) -> Response {
    state
        .metrics
        .messages
        .get_or_create(&Direction { direction: "in" })
        .inc();
    let registered = matches!(request, Request::Register(_));
    let response = answer(state, peer, request);
    if registered && response == Response::Ack {
        // The challenger decides whether a proof is due.
        let _ = joined.try_send(peer);
    }
    response
}

/// Counts an answer sent.
pub(crate) fn answered(state: &RelayState) {
    state
        .metrics
        .messages
        .get_or_create(&Direction { direction: "out" })
        .inc();
}

fn answer(state: &RelayState, peer: PeerId, request: Request) -> Response {
    // Chunks answer the relay's own requests (their sessions check them);
    // anything else a peer sends is limited.
    if !matches!(request, Request::InferChunk(_)) {
        if let Err(retry) = state.control.check(peer) {
            state.metrics.control_refused.inc();
            return Response::Error {
                code: ErrorCode::Busy,
                message: format!(
                    "more than {} requests a minute; retry in {retry} s",
                    crate::limiter::CONTROL_PER_MINUTE
                ),
            };
        }
    }
    match request {
        Request::Register(caps) => {
            if state.register(peer, *caps) {
                Response::Ack
            } else {
                Response::Error {
                    code: ErrorCode::Invalid,
                    message: "not connected".into(),
                }
            }
        }
        Request::ListPeers => Response::Peers(state.summaries()),
        Request::Echo(payload) => Response::Echo(payload),
        Request::PofChallenge(_) | Request::PofOpen { .. } => Response::Error {
            code: ErrorCode::Unsupported,
            message: "the relay issues challenges; it does not take them".into(),
        },
        Request::InferChunk(chunk) => state.sessions.on_chunk(peer, chunk),
        Request::Infer(_) | Request::InferCancel { .. } => Response::Error {
            code: ErrorCode::Unsupported,
            message: "ask the relay's HTTP API (/v1/chat/completions) for generations".into(),
        },
        Request::Embed(_) => Response::Error {
            code: ErrorCode::Unsupported,
            message: "ask the relay's HTTP API (/v1/embeddings) for embeddings".into(),
        },
        Request::ApiKeys(command) => match &state.accounts {
            Some(store) => match store.apply(&peer.to_string(), &command) {
                Ok(list) => Response::ApiKeys(list),
                Err(crate::accounts::AccountError::Invalid(message)) => Response::Error {
                    code: ErrorCode::Invalid,
                    message,
                },
                Err(e) => {
                    tracing::error!("API keys of {peer}: {e}");
                    Response::Error {
                        code: ErrorCode::Busy,
                        message: "the relay could not read or write its keys".into(),
                    }
                }
            },
            None => Response::Error {
                code: ErrorCode::Unsupported,
                message: "this relay keeps no accounts".into(),
            },
        },
        Request::Score(_) => Response::Error {
            code: ErrorCode::Unsupported,
            message: "the relay asks for spot checks; it does not run them".into(),
        },
        Request::Python(_) => Response::Error {
            code: ErrorCode::Unsupported,
            message: "ask the relay's HTTP API (/v1/flows/run) to run Python".into(),
        },
    }
}

fn on_relay_event(state: &RelayState, e: relay::Event) {
    let m = &state.metrics;
    m.record(&e);
    let count = |name| m.reservation_events.get_or_create(&outcome(name)).inc();
    let circuit = |name| m.circuit_events.get_or_create(&outcome(name)).inc();
    match e {
        relay::Event::ReservationReqAccepted { src_peer_id, .. } => {
            count("accepted");
            state.set_reachable(src_peer_id, true);
        }
        relay::Event::ReservationReqDenied { src_peer_id, .. } => {
            count("denied");
            tracing::warn!("reservation denied for {src_peer_id}");
        }
        relay::Event::ReservationTimedOut { src_peer_id }
        | relay::Event::ReservationClosed { src_peer_id } => {
            count("timed_out");
            state.set_reachable(src_peer_id, false);
        }
        relay::Event::CircuitReqAccepted {
            src_peer_id,
            dst_peer_id,
        } => {
            circuit("opened");
            m.circuits.inc();
            tracing::debug!("circuit {src_peer_id} -> {dst_peer_id}");
        }
        relay::Event::CircuitReqDenied {
            src_peer_id,
            dst_peer_id,
            status,
        } => {
            circuit("denied");
            tracing::warn!("circuit {src_peer_id} -> {dst_peer_id} denied: {status:?}");
        }
        relay::Event::CircuitClosed {
            src_peer_id,
            dst_peer_id,
            error,
        } => {
            circuit("closed");
            m.circuits.dec();
            match error {
                Some(e) => tracing::warn!("circuit {src_peer_id} -> {dst_peer_id} failed: {e}"),
                None => tracing::debug!("circuit {src_peer_id} -> {dst_peer_id} closed"),
            }
        }
        #[allow(deprecated)]
        other => {
            tracing::warn!("relay: {other:?}");
        }
    }
}
