//! The behaviour every tabnode node runs, tab or native, and the sans-I/O
//! part of its event handling.
//!
//! A node connects to one relay, reserves a `/p2p-circuit` slot there so
//! that other peers can dial it, registers its [`Capabilities`](crate::Capabilities), and answers
//! [`Request`]s. Transports and the executor differ between the browser and
//! native builds; this module is what they share.

use std::time::Duration;

use libp2p::{
    identify, ping, relay,
    request_response::{self, ProtocolSupport},
    swarm::NetworkBehaviour,
    PeerId,
};

use crate::{
    codec::TabnodeCodec,
    protocol::{ErrorCode, Request, Response, PROTOCOL},
};

/// How long a request may take before it fails with a timeout.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// How often a node pings its relay. A WebRTC connection whose peer vanished
/// is only noticed by a failed ping (the browser reports nothing for a long
/// time), so a failed ping to the relay closes the connection and starts the
/// reconnect: a dead relay is noticed within about two intervals.
pub const PING_INTERVAL: Duration = Duration::from_secs(4);

/// The identify protocol string shared by all tabnode peers.
pub const IDENTIFY_PROTOCOL: &str = "/tabnode/id/1.0.0";

/// The node behaviour: relay client, identify, ping and the tabnode protocol.
#[derive(NetworkBehaviour)]
pub struct NodeBehaviour {
    /// Circuit relay v2 client: reservations and relayed dials.
    pub relay_client: relay::client::Behaviour,
    /// Identify (tells the relay our listen addresses and agent).
    pub identify: identify::Behaviour,
    /// Keep-alive and round-trip measurement.
    pub ping: ping::Behaviour,
    /// The `/tabnode/1.0.0` request-response protocol.
    pub rpc: request_response::Behaviour<TabnodeCodec>,
    /// The link the relay opens ([`crate::link`]).
    pub link: libp2p_stream::Behaviour,
}

impl NodeBehaviour {
    /// Builds the behaviour around a relay client obtained from the swarm
    /// builder.
    pub fn new(
        key: &libp2p::identity::Keypair,
        relay_client: relay::client::Behaviour,
        agent: String,
        codec: TabnodeCodec,
    ) -> Self {
        Self {
            relay_client,
            identify: identify::Behaviour::new(
                identify::Config::new(IDENTIFY_PROTOCOL.into(), key.public())
                    .with_agent_version(agent),
            ),
            ping: ping::Behaviour::new(
                ping::Config::new()
                    .with_interval(PING_INTERVAL)
                    .with_timeout(PING_INTERVAL),
            ),
            rpc: rpc_behaviour(codec),
            link: libp2p_stream::Behaviour::new(),
        }
    }
}

/// The request-response behaviour with tabnode's settings.
pub fn rpc_behaviour(codec: TabnodeCodec) -> request_response::Behaviour<TabnodeCodec> {
    request_response::Behaviour::with_codec(
        codec,
        [(PROTOCOL, ProtocolSupport::Full)],
        request_response::Config::default()
            .with_request_timeout(REQUEST_TIMEOUT)
            .with_max_concurrent_streams(256),
    )
}

/// How a plain node (not the relay) answers a request from `peer` by itself;
/// `relay` is the relay this node joined.
///
/// Nodes answer `Echo` from anyone and refuse the registry's requests.
/// Commands (Proof-of-FLOPS challenges and openings, generations and their
/// cancellation) are obeyed only when libp2p authenticated the sender as
/// the node's own relay: from any other peer they are refused with
/// [`ErrorCode::Forbidden`] (otherwise anyone could outsource their proofs
/// to this node, overwrite its commitments or crash it with a huge
/// challenge). `None` means the request needs the node's owner (a challenge
/// needs the GPU, a generation the model): the driver hands it over as
/// [`crate::driver::NodeEvent::Request`].
pub fn answer(peer: PeerId, relay: PeerId, request: &Request) -> Option<Response> {
    match request {
        Request::Echo(payload) => Some(Response::Echo(payload.clone())),
        Request::Register(_) | Request::ListPeers | Request::ApiKeys(_) => Some(Response::Error {
            code: ErrorCode::Unsupported,
            message: "only the relay keeps the node registry and the accounts".into(),
        }),
        Request::InferChunk(_) => Some(Response::Error {
            code: ErrorCode::Unsupported,
            message: "only the relay takes generated tokens".into(),
        }),
        Request::PofChallenge(_)
        | Request::PofOpen { .. }
        | Request::Infer(_)
        | Request::InferCancel { .. }
        | Request::Embed(_)
        | Request::Python(_)
        | Request::Score(_) => {
            if peer == relay {
                None
            } else {
                Some(Response::Error {
                    code: ErrorCode::Forbidden,
                    message: format!("{} is obeyed only from this node's relay", request.name()),
                })
            }
        }
    }
}

/// Delay before reconnect attempt `attempt` (0-based): 0.5 s doubling up to
/// `max`, so a restarted relay is found again quickly without hammering a
/// dead one.
pub fn backoff(attempt: u32, max: Duration) -> Duration {
    let ms = 500u64.saturating_mul(1u64 << attempt.min(16));
    Duration::from_millis(ms).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let max = Duration::from_secs(8);
        let delays: Vec<_> = (0..8).map(|a| backoff(a, max)).collect();
        assert_eq!(delays[0], Duration::from_millis(500));
        assert_eq!(delays[1], Duration::from_secs(1));
        assert!(delays.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(delays[7], max);
        assert_eq!(backoff(u32::MAX, max), max);
    }

    #[test]
    fn nodes_echo_and_refuse_registry_requests() {
        let (peer, relay) = (PeerId::random(), PeerId::random());
        assert_eq!(
            answer(peer, relay, &Request::Echo(vec![1, 2, 3])),
            Some(Response::Echo(vec![1, 2, 3]))
        );
        assert!(matches!(
            answer(peer, relay, &Request::ListPeers),
            Some(Response::Error {
                code: ErrorCode::Unsupported,
                ..
            })
        ));
    }

    #[test]
    fn commands_are_obeyed_only_from_the_relay() {
        let (peer, relay) = (PeerId::random(), PeerId::random());
        let commands = [
            Request::PofOpen {
                round: 1,
                query: crate::protocol::PofQuery {
                    nonce: [0; 32],
                    k: 1,
                },
            },
            Request::PofChallenge(crate::protocol::PofChallenge {
                round: 1,
                n: 8,
                seed: [0; 32],
                deadline_ms: 1,
            }),
            Request::InferCancel { request_id: 1 },
            Request::Embed(Box::new(crate::infer::EmbedRequest {
                request_id: 1,
                model: "all-minilm-l6-v2".into(),
                inputs: vec![crate::infer::EmbedInput::Text("hi".into())],
            })),
            Request::Python(Box::new(crate::protocol::PythonJob {
                job: "j".into(),
                code: "print(1)".into(),
                inputs_json: "{}".into(),
                timeout_ms: 1000,
            })),
        ];
        for request in &commands {
            assert_eq!(answer(relay, relay, request), None, "{request:?}");
            assert!(
                matches!(
                    answer(peer, relay, request),
                    Some(Response::Error { code: ErrorCode::Forbidden, ref message })
                        if message.contains("only from this node's relay")
                ),
                "{request:?}"
            );
        }
    }
}
