//! Relay + native nodes on loopback, no browser.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::{
    multiaddr::Protocol,
    noise,
    request_response::{self, ProtocolSupport},
    swarm::SwarmEvent,
    tcp, yamux, Multiaddr, PeerId, StreamProtocol, Swarm,
};
use tabnode_core::{Capabilities, ErrorCode, NodeKind, Request, Response, MAX_MESSAGE, PROTOCOL};
use tabnode_node::{spawn, NodeConfig, NodeHandle};
use tabnode_relay::{RelayConfig, RelayHandle};

const WAIT: Duration = Duration::from_secs(30);

async fn relay(dir: &tempfile::TempDir) -> RelayHandle {
    let cfg = RelayConfig::ephemeral(dir.path().join("relay"), PathBuf::from("."));
    tabnode_relay::start(cfg).await.expect("relay starts")
}

fn node(relay: Multiaddr, name: &str) -> NodeHandle {
    let mut caps = Capabilities::new(NodeKind::Native, name);
    caps.pledged_vram_mib = 512;
    spawn(NodeConfig {
        relay,
        key: None,
        capabilities: caps,
        max_backoff: Duration::from_millis(500),
        handler: std::sync::Arc::new(tabnode_node::prover::PofProver::new(
            tabnode_node::prover::Backend::Cpu,
        )),
        server: None,
        embedder: None,
    })
    .expect("node starts")
}

fn payload(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 11) as u8)
        .collect()
}

async fn wait_until<F: Fn() -> bool>(what: &str, f: F) {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tick.tick().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_mib_round_trip_through_the_relay_circuit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = relay(&dir).await;
    let a = node(relay.tcp_addr().expect("tcp"), "a");
    let b = node(relay.quic_addr().expect("quic"), "b");
    a.wait_reachable(WAIT).await.expect("a reachable");
    b.wait_reachable(WAIT).await.expect("b reachable");

    let data = payload(1 << 20, 7);
    let answer = a
        .request(Some(b.peer_id), Request::Echo(data.clone()))
        .await
        .expect("echo through the circuit");
    match answer {
        Response::Echo(back) => assert!(back == data, "echo differs from what was sent"),
        other => panic!("unexpected answer {other:?}"),
    }
    // (The relay's round-trip probes before each challenge are echoes too.)
    assert!(b.counters.served.load(Ordering::Relaxed) >= 1);
    let opened = tabnode_relay::metrics::outcome("opened");
    assert!(
        relay
            .state
            .metrics
            .circuit_events
            .get_or_create(&opened)
            .get()
            >= 1
    );

    // The registry lists both with what they registered.
    wait_until("both registered", || {
        relay
            .state
            .summaries()
            .iter()
            .filter(|p| p.capabilities.is_some())
            .count()
            == 2
    })
    .await;
    let Response::Peers(peers) = a.request(None, Request::ListPeers).await.expect("list") else {
        panic!("ListPeers must answer Peers");
    };
    let mut transports: Vec<_> = peers.iter().map(|p| p.transport.as_str()).collect();
    transports.sort();
    assert_eq!(transports, ["quic", "tcp"]);
    assert!(peers
        .iter()
        .all(|p| p.kind == NodeKind::Native && p.reachable));
    assert!(peers
        .iter()
        .all(|p| p.capabilities.as_ref().map(|c| c.pledged_vram_mib) == Some(512)));
}

/// Writes raw bytes on the tabnode protocol: the misbehaving peer.
#[derive(Clone, Default)]
struct RawCodec;

#[async_trait]
impl request_response::Codec for RawCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Vec<u8>> {
        let mut v = Vec::new();
        io.read_to_end(&mut v).await?;
        Ok(v)
    }
    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        p: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Vec<u8>> {
        let v = self.read_request(p, io).await?;
        if v.is_empty() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(v)
    }
    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> io::Result<()> {
        io.write_all(&req).await
    }
    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Vec<u8>,
    ) -> io::Result<()> {
        io.write_all(&res).await
    }
}

#[derive(libp2p::swarm::NetworkBehaviour)]
struct Rogue {
    relay_client: libp2p::relay::client::Behaviour,
    rpc: request_response::Behaviour<RawCodec>,
    link: libp2p_stream::Behaviour,
}

fn rogue() -> Swarm<Rogue> {
    libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )
        .expect("tcp")
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .expect("relay client")
        .with_behaviour(|_, relay_client| Rogue {
            relay_client,
            rpc: request_response::Behaviour::new(
                [(PROTOCOL, ProtocolSupport::Outbound)],
                request_response::Config::default().with_request_timeout(Duration::from_secs(10)),
            ),
            link: libp2p_stream::Behaviour::new(),
        })
        .expect("behaviour")
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build()
}

/// Sends `bytes` raw to `peer` and returns whether it got any answer.
async fn send_raw(
    swarm: &mut Swarm<Rogue>,
    peer: PeerId,
    bytes: Vec<u8>,
) -> Result<Vec<u8>, String> {
    let id = swarm.behaviour_mut().rpc.send_request(&peer, bytes);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let ev = tokio::time::timeout_at(deadline, swarm.select_next_some())
            .await
            .expect("rogue request finishes");
        match ev {
            SwarmEvent::Behaviour(RogueEvent::Rpc(request_response::Event::Message {
                message:
                    request_response::Message::Response {
                        request_id,
                        response,
                    },
                ..
            })) if request_id == id => return Ok(response),
            SwarmEvent::Behaviour(RogueEvent::Rpc(request_response::Event::OutboundFailure {
                request_id,
                error,
                ..
            })) if request_id == id => return Err(error.to_string()),
            _ => {}
        }
    }
}

/// Sends a well-formed `request` the rogue's raw way; its answer.
async fn request_well_formed(
    swarm: &mut Swarm<Rogue>,
    peer: PeerId,
    request: &Request,
) -> Response {
    let bytes = tabnode_core::codec::encode(request, MAX_MESSAGE).expect("encode");
    let body = send_raw(swarm, peer, bytes)
        .await
        .expect("well-formed request answered");
    tabnode_core::codec::decode(&body[4..]).expect("decodes")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_messages_close_the_stream_and_others_keep_being_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = relay(&dir).await;
    let good = node(relay.tcp_addr().expect("tcp"), "good");
    let server = node(relay.tcp_addr().expect("tcp"), "server");
    good.wait_reachable(WAIT).await.expect("good reachable");
    server.wait_reachable(WAIT).await.expect("server reachable");

    let relay_addr = relay.tcp_addr().expect("tcp");
    let mut bad = rogue();
    bad.dial(relay_addr.clone()).expect("dial relay");

    let garbage = {
        let mut v = 5u32.to_be_bytes().to_vec();
        v.extend_from_slice(&[0xee; 5]);
        v
    };
    let oversized = ((MAX_MESSAGE as u32) + 1).to_be_bytes().to_vec();
    let truncated = {
        let mut v = 1000u32.to_be_bytes().to_vec();
        v.extend_from_slice(&[2, 1, 2, 3]);
        v
    };

    // Against the relay, directly.
    for (name, bytes) in [
        ("garbage", &garbage),
        ("oversized", &oversized),
        ("truncated", &truncated),
    ] {
        let before = relay.state.protocol_errors();
        let got = send_raw(&mut bad, relay.peer_id, bytes.clone()).await;
        assert!(
            got.is_err(),
            "{name}: the relay must not answer, got {got:?}"
        );
        wait_until("the relay to count the error", || {
            relay.state.protocol_errors() > before
        })
        .await;
    }

    // Against a node, through the circuit.
    let circuit = relay_addr
        .with(Protocol::P2pCircuit)
        .with(Protocol::P2p(server.peer_id));
    bad.dial(circuit).expect("dial circuit");
    for bytes in [&garbage, &oversized] {
        let before = server.counters.protocol_errors();
        let got = send_raw(&mut bad, server.peer_id, bytes.clone()).await;
        assert!(got.is_err(), "the node must not answer, got {got:?}");
        wait_until("the node to count the error", || {
            server.counters.protocol_errors() > before
        })
        .await;
    }

    // A well-formed request still works, through the relay and the node.
    let data = payload(100_000, 3);
    let r = good
        .request(Some(server.peer_id), Request::Echo(data.clone()))
        .await
        .expect("echo");
    assert_eq!(r, Response::Echo(data));
    let r = good
        .request(None, Request::Echo(vec![9; 10]))
        .await
        .expect("relay echo");
    assert_eq!(r, Response::Echo(vec![9; 10]));

    // And the rogue's own well-formed request is answered too: only the bad
    // streams were closed, not its connection or the protocol.
    let answer = request_well_formed(&mut bad, relay.peer_id, &Request::Echo(vec![1, 2, 3])).await;
    assert_eq!(answer, Response::Echo(vec![1, 2, 3]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_reconnect_after_a_relay_restart_with_the_same_identities() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = relay(&dir).await;
    let relay_id = first.peer_id;
    let tcp = first.tcp_addr().expect("tcp");
    let a = node(tcp.clone(), "a");
    let b = node(tcp.clone(), "b");
    a.wait_reachable(WAIT).await.expect("a reachable");
    b.wait_reachable(WAIT).await.expect("b reachable");

    // Restart on the same ports and data directory.
    let ports: Vec<u16> = [
        &first.bootstrap.tcp[0],
        &first.bootstrap.quic[0],
        &first.bootstrap.webrtc_direct[0],
    ]
    .iter()
    .map(|a| {
        let m: Multiaddr = a.parse().expect("addr");
        m.iter()
            .find_map(|p| match p {
                Protocol::Tcp(p) | Protocol::Udp(p) => Some(p),
                _ => None,
            })
            .expect("port")
    })
    .collect();
    drop(first);
    a.wait_for("relay loss", WAIT, |s| !s.relay_connected)
        .await
        .expect("a sees the loss");
    let mut cfg = RelayConfig::ephemeral(dir.path().join("relay"), PathBuf::from("."));
    (cfg.tcp_port, cfg.quic_port, cfg.webrtc_port) = (ports[0], ports[1], ports[2]);
    let second = tabnode_relay::start(cfg).await.expect("relay restarts");
    assert_eq!(second.peer_id, relay_id, "the relay identity is persisted");

    for n in [&a, &b] {
        n.wait_for("reconnect", WAIT, |s| s.connects >= 2 && s.reachable)
            .await
            .expect("node reconnects on its own");
    }
    let data = payload(20_000, 1);
    let r = a
        .request(Some(b.peer_id), Request::Echo(data.clone()))
        .await
        .expect("echo after restart");
    assert_eq!(r, Response::Echo(data));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identities_per_address_are_limited_and_a_freed_place_is_taken() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = RelayConfig::ephemeral(dir.path().join("relay"), PathBuf::from("."));
    cfg.limits.max_peers_per_ip = 2;
    let relay = tabnode_relay::start(cfg).await.expect("relay starts");
    let addr = relay.tcp_addr().expect("tcp");
    let a = node(addr.clone(), "a");
    let b = node(addr.clone(), "b");
    a.wait_reachable(WAIT).await.expect("a reachable");
    b.wait_reachable(WAIT).await.expect("b reachable");
    // A third identity from the same machine is turned away, again and again.
    let c = node(addr, "c");
    wait_until("the third identity to be refused twice", || {
        relay.state.metrics.identities_refused.get() >= 2
    })
    .await;
    let listed = |p: PeerId| {
        relay
            .state
            .summaries()
            .iter()
            .any(|s| s.peer_id == p.to_string())
    };
    assert!(listed(a.peer_id) && listed(b.peer_id) && !listed(c.peer_id));
    // One leaves: the third gets its place on its next attempt.
    drop(b);
    c.wait_reachable(WAIT)
        .await
        .expect("c admitted once b left");
    assert!(listed(c.peer_id));
    assert_eq!(relay.state.summaries().len(), 2);
}

// ---- The node–relay link (tabnode_core::link) ----

fn link_frames_in(relay: &RelayHandle) -> u64 {
    relay
        .state
        .metrics
        .link_frames
        .get_or_create(&tabnode_relay::metrics::Direction { direction: "in" })
        .get()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_floods_the_relay_with_requests_is_refused_and_others_are_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = relay(&dir).await;
    let tcp = relay.tcp_addr().expect("tcp");
    let (flooder, other) = (node(tcp.clone(), "flooder"), node(tcp, "other"));
    flooder.wait_reachable(WAIT).await.expect("reachable");
    other.wait_reachable(WAIT).await.expect("reachable");
    // Each asks the relay to list its peers, as fast as it answers (over
    // the link): the first ones are answered, then the rest refused.
    let (mut listed, mut refused) = (0, 0);
    for _ in 0..200 {
        match flooder
            .request(None, Request::ListPeers)
            .await
            .expect("an answer")
        {
            Response::Peers(_) => listed += 1,
            Response::Error {
                code: ErrorCode::Busy,
                message,
            } => {
                assert!(message.contains("requests a minute"), "{message}");
                refused += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // At most a minute's allowance (and what refilled while it asked).
    assert!((100..=130).contains(&listed), "{listed} answered");
    assert_eq!(listed + refused, 200);
    let counted = relay.state.metrics.control_refused.get();
    assert_eq!(counted, refused as u64);
    // The other peer is still served; the flooder stays refused within the
    // minute, whatever it asks.
    let Response::Peers(peers) = other.request(None, Request::ListPeers).await.expect("list")
    else {
        panic!("the other peer is refused");
    };
    assert_eq!(peers.len(), 2);
    assert!(matches!(
        flooder
            .request(None, Request::Echo(vec![1]))
            .await
            .expect("an answer"),
        Response::Error {
            code: ErrorCode::Busy,
            ..
        }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_and_its_relay_talk_over_one_link() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = relay(&dir).await;
    let n = node(relay.tcp_addr().expect("tcp"), "linked");
    n.wait_reachable(WAIT).await.expect("reachable");
    let links = &relay.state.metrics.links;
    wait_until("the relay to open a link", || links.get() == 1).await;
    // The join's proof is over (its frames counted) before measuring.
    wait_until("the node's first proof", || {
        relay
            .state
            .pof_history(&n.peer_id)
            .is_some_and(|h| !h.records.is_empty())
    })
    .await;
    for i in 0..3u8 {
        let before = link_frames_in(&relay);
        let r = n
            .request(None, Request::Echo(vec![i; 100]))
            .await
            .expect("echo");
        assert_eq!(r, Response::Echo(vec![i; 100]));
        assert_eq!(
            link_frames_in(&relay),
            before + 1,
            "request {i} came over the link"
        );
    }
    // The node leaves: its link goes with its connection.
    drop(n);
    wait_until("the link to close", || links.get() == 0).await;
}

/// Connects `swarm` to `addr`, driving it until the connection is up.
async fn connect(swarm: &mut Swarm<Rogue>, addr: Multiaddr) {
    swarm.dial(addr).expect("dial");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let ev = tokio::time::timeout_at(deadline, swarm.select_next_some())
            .await
            .expect("connected in time");
        if let SwarmEvent::ConnectionEstablished { .. } = ev {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_opened_by_another_peer_than_the_relay_is_dropped_unanswered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = relay(&dir).await;
    let relay_addr = relay.tcp_addr().expect("tcp");
    let victim = node(relay_addr.clone(), "victim");
    victim.wait_reachable(WAIT).await.expect("reachable");
    let mut bad = rogue();
    connect(&mut bad, relay_addr.clone()).await;
    connect(
        &mut bad,
        relay_addr
            .with(Protocol::P2pCircuit)
            .with(Protocol::P2p(victim.peer_id)),
    )
    .await;
    let mut control = bad.behaviour().link.new_control();
    let driver = tokio::spawn(async move {
        loop {
            bad.select_next_some().await;
        }
    });
    let mut stream = control
        .open_stream(victim.peer_id, tabnode_core::link::LINK_PROTOCOL)
        .await
        .expect("the node speaks the link protocol");
    // A challenge, as the relay would send it.
    let challenge = tabnode_core::link::Frame::Request {
        id: 1,
        request: Request::PofChallenge(tabnode_core::protocol::PofChallenge {
            round: 1,
            n: 8,
            seed: [7; 32],
            deadline_ms: 10_000,
        }),
    };
    let bytes = tabnode_core::codec::encode(&challenge, MAX_MESSAGE + 16).expect("encode");
    // The write may already fail: the node drops the stream when it arrives.
    let _ = stream.write_all(&bytes).await;
    let _ = stream.flush().await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(WAIT, stream.read_to_end(&mut answer))
        .await
        .expect("the node closes the stream");
    assert!(answer.is_empty(), "the node answered {answer:?} ({read:?})");
    driver.abort();
}

/// The next link the relay opens to the rogue (driving its swarm meanwhile).
async fn next_link(
    swarm: &mut Swarm<Rogue>,
    incoming: &mut libp2p_stream::IncomingStreams,
) -> (PeerId, libp2p::Stream) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        tokio::select! {
            _ = swarm.select_next_some() => {}
            s = incoming.next() => return s.expect("a link"),
            () = tokio::time::sleep_until(deadline) => panic!("no link opened"),
        }
    }
}

/// A rogue registered with `relay` under `name`: its swarm, the links the
/// relay opens to it, its registration and the first link.
async fn registered_rogue(
    relay: &RelayHandle,
    name: &str,
) -> (
    Swarm<Rogue>,
    libp2p_stream::IncomingStreams,
    Request,
    libp2p::Stream,
) {
    let mut bad = rogue();
    let mut incoming = bad
        .behaviour()
        .link
        .new_control()
        .accept(tabnode_core::link::LINK_PROTOCOL)
        .expect("accept links");
    connect(&mut bad, relay.tcp_addr().expect("tcp")).await;
    let register = Request::Register(Box::new(Capabilities::new(NodeKind::Native, name)));
    assert_eq!(
        request_well_formed(&mut bad, relay.peer_id, &register).await,
        Response::Ack
    );
    // The relay opens a link to the newly registered node.
    let (peer, link) = next_link(&mut bad, &mut incoming).await;
    assert_eq!(peer, relay.peer_id);
    (bad, incoming, register, link)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_frame_closes_a_link_and_the_node_is_still_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = relay(&dir).await;
    let (mut bad, mut incoming, register, mut first) = registered_rogue(&relay, "rogue").await;
    let links = &relay.state.metrics.links;
    wait_until("the link to be up", || links.get() == 1).await;
    // A node registers over request-response only when it has no link (its
    // side broke, or the link is on a connection it left): the relay asks
    // over the link it has and, with no answer, replaces it and closes it.
    assert_eq!(
        request_well_formed(&mut bad, relay.peer_id, &register).await,
        Response::Ack
    );
    next_check(&mut first).await;
    let (_, mut stream) = next_link(&mut bad, &mut incoming).await;
    assert_eq!(link_checks(&relay, "replaced"), 1);
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, first.read_to_end(&mut rest))
        .await
        .expect("the replaced link closes")
        .expect("closed cleanly");
    assert!(rest.is_empty(), "{rest:?}");
    wait_until("one link up", || links.get() == 1).await;
    let before = relay.state.protocol_errors();
    let mut garbage = 5u32.to_be_bytes().to_vec();
    garbage.extend_from_slice(&[0xee; 5]);
    stream.write_all(&garbage).await.expect("write");
    stream.flush().await.expect("flush");
    wait_until("the relay to count the error", || {
        relay.state.protocol_errors() > before
    })
    .await;
    wait_until("the link to close", || links.get() == 0).await;
    // The connection and request-response are untouched.
    let answer = request_well_formed(&mut bad, relay.peer_id, &Request::Echo(vec![1, 2, 3])).await;
    assert_eq!(answer, Response::Echo(vec![1, 2, 3]));
}

/// The next frame the relay sends over `link`.
async fn next_frame(link: &mut libp2p::Stream) -> tabnode_core::link::Frame {
    tokio::time::timeout(
        WAIT,
        tabnode_core::codec::read_message(link, MAX_MESSAGE + 16),
    )
    .await
    .expect("a frame in time")
    .expect("a well-formed frame")
}

/// The relay's check of `link` (an echo request): its id and payload. The
/// challenge of the node's first proof may come first over the link; it is
/// left unanswered.
async fn next_check(link: &mut libp2p::Stream) -> (u64, Vec<u8>) {
    use tabnode_core::link::Frame;
    loop {
        match next_frame(link).await {
            Frame::Request {
                id,
                request: Request::Echo(payload),
            } => return (id, payload),
            Frame::Request {
                request: Request::PofChallenge(_),
                ..
            } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Links the relay checked, by outcome (`alive`, `replaced`).
fn link_checks(relay: &RelayHandle, outcome: &'static str) -> u64 {
    relay
        .state
        .metrics
        .link_checks
        .get_or_create(&tabnode_relay::metrics::Outcome { outcome })
        .get()
}

/// A node registers as soon as it connects, over request-response, and
/// again when its capabilities change; the second registration can leave
/// before the link the first one made the relay open has reached the node.
/// The relay keeps a link that answers: replacing it would fail what it
/// already sent over it (the node's first proof among them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_registers_again_before_its_link_arrives_keeps_the_link() {
    use tabnode_core::link::Frame;
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = relay(&dir).await;
    let (mut bad, mut incoming, register, mut first) = registered_rogue(&relay, "early").await;
    let links = &relay.state.metrics.links;
    wait_until("the link to be up", || links.get() == 1).await;
    assert_eq!(
        request_well_formed(&mut bad, relay.peer_id, &register).await,
        Response::Ack
    );
    // The relay asks over the link, and the node answers.
    let (id, payload) = next_check(&mut first).await;
    let answer = Frame::Response {
        id,
        response: Response::Echo(payload),
    };
    tabnode_core::codec::write_message(&mut first, &answer, MAX_MESSAGE + 16)
        .await
        .expect("answer");
    wait_until("the relay to keep the link", || {
        link_checks(&relay, "alive") == 1
    })
    .await;
    assert_eq!(link_checks(&relay, "replaced"), 0);
    assert_eq!(links.get(), 1);
    // The link still serves the node's requests, and no other was opened.
    let ask = Frame::Request {
        id: 9,
        request: Request::Echo(vec![4, 5]),
    };
    tabnode_core::codec::write_message(&mut first, &ask, MAX_MESSAGE + 16)
        .await
        .expect("ask");
    let back = loop {
        match next_frame(&mut first).await {
            Frame::Response { id: 9, response } => break response,
            Frame::Request { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(back, Response::Echo(vec![4, 5]));
    assert!(futures::FutureExt::now_or_never(incoming.next()).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_does_not_read_its_answers_loses_its_link() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = relay(&dir).await;
    let (mut bad, _incoming, _, mut stream) = registered_rogue(&relay, "deaf").await;
    let links = &relay.state.metrics.links;
    wait_until("the link to be up", || links.get() == 1).await;
    let before = relay.state.protocol_errors();
    // Large echoes, never reading the answers: they pile up at the relay
    // until it gives up on the link instead of holding them all.
    let echo = tabnode_core::link::Frame::Request {
        id: 0,
        request: Request::Echo(vec![7; MAX_MESSAGE - 64]),
    };
    let bytes = tabnode_core::codec::encode(&echo, MAX_MESSAGE + 16).expect("encode");
    let writer = tokio::spawn(async move {
        for _ in 0..2 * tabnode_core::link::MAX_BACKLOG / MAX_MESSAGE {
            if stream.write_all(&bytes).await.is_err() {
                break;
            }
        }
        stream
    });
    let driver = tokio::spawn(async move {
        loop {
            bad.select_next_some().await;
        }
    });
    wait_until("the relay to give up on the link", || {
        relay.state.protocol_errors() > before && links.get() == 0
    })
    .await;
    writer.abort();
    driver.abort();
}
