//! The `/tabnode/1.0.0` request-response protocol.
//!
//! Every message is a [`Request`] answered by exactly one [`Response`]. The
//! protocol version is part of the protocol name: a peer that speaks another
//! version fails negotiation instead of misreading bytes. Encoding and size
//! limits are in [`crate::codec`].

use libp2p::StreamProtocol;
use serde::{Deserialize, Serialize};

use crate::caps::{Capabilities, NodeKind};

/// The protocol name, with its version.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/tabnode/1.0.0");

/// A request from one peer to another (or to the relay).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Node → relay: announce or update this node's capabilities.
    Register(Box<Capabilities>),
    /// Node → relay: which nodes are online now.
    ListPeers,
    /// Any → any: send the payload back unchanged (liveness, latency and
    /// large-message checks).
    Echo(#[serde(with = "serde_bytes")] Vec<u8>),
}

/// The answer to a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// The request was accepted.
    Ack,
    /// The nodes online, answer to [`Request::ListPeers`].
    Peers(Vec<PeerSummary>),
    /// The payload of a [`Request::Echo`].
    Echo(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The request was understood but refused.
    Error {
        /// What kind of failure.
        code: ErrorCode,
        /// A human-readable reason.
        message: String,
    },
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// This peer does not serve that request (e.g. `ListPeers` to a node).
    Unsupported,
    /// The request was well-formed but its content is not acceptable.
    Invalid,
}

/// One node as the relay lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerSummary {
    /// The node's peer id (base58).
    pub peer_id: String,
    /// Browser or native.
    pub kind: NodeKind,
    /// How the node reaches the relay (`webrtc-direct`, `tcp`, `quic`).
    pub transport: String,
    /// When the node connected, milliseconds since the Unix epoch.
    pub connected_since_ms: u64,
    /// Whether the node holds a circuit reservation (can be dialled).
    pub reachable: bool,
    /// What the node registered, if it did.
    pub capabilities: Option<Capabilities>,
}
