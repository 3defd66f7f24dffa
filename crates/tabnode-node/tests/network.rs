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
use tabnode_core::{Capabilities, NodeKind, Request, Response, MAX_MESSAGE, PROTOCOL};
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
    let ok =
        tabnode_core::codec::encode(&Request::Echo(vec![1, 2, 3]), MAX_MESSAGE).expect("encode");
    let body = send_raw(&mut bad, relay.peer_id, ok)
        .await
        .expect("well-formed request answered");
    let answer: Response = tabnode_core::codec::decode(&body[4..]).expect("decodes");
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
