//! The `/tabnode/1.0.0` request-response protocol.
//!
//! Every message is a [`Request`] answered by exactly one [`Response`]. The
//! protocol version is part of the protocol name: a peer that speaks another
//! version fails negotiation instead of misreading bytes. Encoding and size
//! limits are in [`crate::codec`].

use libp2p::StreamProtocol;
use serde::{Deserialize, Serialize};

use crate::caps::{Capabilities, NodeKind};
use crate::infer::{InferChunk, InferRequest};
pub use tabnode_pof::{Answer as PofAnswer, Query as PofQuery};

/// The protocol name, with its version.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/tabnode/1.0.0");

/// A request from one peer to another (or to the relay).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Node → relay: announce or update this node's capabilities.
    Register(Box<Capabilities>),
    /// Node → relay: which nodes are online now.
    ListPeers,
    /// Any → any: send the payload back unchanged (liveness, latency and
    /// large-message checks).
    Echo(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Relay → node: a Proof-of-FLOPS challenge. Answer with
    /// [`Response::PofCommit`] before the deadline.
    PofChallenge(PofChallenge),
    /// Relay → node: open the committed result ([`Response::PofOpening`]).
    PofOpen {
        /// The challenge's round.
        round: u64,
        /// The random vector and rows to open.
        query: PofQuery,
    },
    /// Relay → node: generate for a requester. The node checks the request
    /// (model, prompt size, sampling values), answers
    /// [`Response::InferAccepted`] or an error, then streams the tokens back
    /// as [`Request::InferChunk`]s.
    Infer(Box<InferRequest>),
    /// Node → relay: the next tokens of a generation (one chunk in flight at
    /// a time; the next is sent when this one is acknowledged). An error
    /// answer means "stop generating": the requester is gone or the request
    /// moved to another node.
    InferChunk(Box<InferChunk>),
    /// Relay → node: stop generating `request_id` (the requester left).
    InferCancel {
        /// The request.
        request_id: u64,
    },
    /// Relay → node: embed a batch of inputs; answered with
    /// [`Response::Embedded`] or an error.
    Embed(Box<crate::infer::EmbedRequest>),
    /// Relay → tab: run a flow's Python step in the tab's sandbox (a tab
    /// whose visitor opted in, [`Capabilities::python`]); answered with
    /// [`Response::Python`] or an error.
    Python(Box<PythonJob>),
    /// Relay → node: score the tokens another node delivered (a spot
    /// check, [`crate::check`]); answered with [`Response::Scored`] or an
    /// error.
    Score(Box<crate::check::ScoreRequest>),
    /// Node → relay: manage the API keys of this node's account (the
    /// account is the peer id the connection authenticates); answered
    /// with [`Response::ApiKeys`].
    ApiKeys(ApiKeyCommand),
}

impl Request {
    /// The request's name, for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Register(_) => "Register",
            Request::ListPeers => "ListPeers",
            Request::Echo(_) => "Echo",
            Request::PofChallenge(_) => "PofChallenge",
            Request::PofOpen { .. } => "PofOpen",
            Request::Infer(_) => "Infer",
            Request::InferChunk(_) => "InferChunk",
            Request::InferCancel { .. } => "InferCancel",
            Request::Embed(_) => "Embed",
            Request::Python(_) => "Python",
            Request::Score(_) => "Score",
            Request::ApiKeys(_) => "ApiKeys",
        }
    }
}

/// A Proof-of-FLOPS challenge (see the `tabnode-pof` crate).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PofChallenge {
    /// Unique per challenge.
    pub round: u64,
    /// Matrix size.
    pub n: u32,
    /// Seed of `A` and `B`, revealed only now.
    pub seed: [u8; 32],
    /// Milliseconds the node has to commit.
    pub deadline_ms: u64,
}

/// A flow's Python step for a tab's sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PythonJob {
    /// The job's id (the run's, for the tab's log).
    pub job: String,
    /// The code.
    pub code: String,
    /// Its variables, as a JSON object (names → values).
    pub inputs_json: String,
    /// Milliseconds the code may run (Pyodide's loading not counted).
    pub timeout_ms: u64,
}

/// How a [`PythonJob`] ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PythonOutcome {
    /// What the code printed (stdout and stderr, capped by the sandbox).
    Printed(String),
    /// The code failed: the exception's last line, or the time limit.
    Failed(String),
}

/// What to do with an account's API keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApiKeyCommand {
    /// Make a key (its secret is answered once, never again).
    Create {
        /// A name for people (at most 64 characters).
        label: String,
    },
    /// Revoke the key with this id: it stops working at once.
    Revoke {
        /// [`ApiKeyInfo::id`].
        id: String,
    },
    /// List the keys.
    List,
}

/// An API key as its account sees it (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyInfo {
    /// Its id (the start of its hash).
    pub id: String,
    /// Its label.
    pub label: String,
    /// When it was made, milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// Whether it was revoked.
    pub revoked: bool,
}

/// The answer to a [`Request::ApiKeys`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyList {
    /// The secret of a key just made (shown once).
    pub created: Option<String>,
    /// The account's keys, oldest first.
    pub keys: Vec<ApiKeyInfo>,
}

/// The answer to a [`Request`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// The request was accepted.
    Ack,
    /// The nodes online, answer to [`Request::ListPeers`].
    Peers(Vec<PeerSummary>),
    /// The payload of a [`Request::Echo`].
    Echo(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The Merkle root of `C` for a [`Request::PofChallenge`].
    PofCommit {
        /// The challenge's round.
        round: u64,
        /// Merkle root over the rows of `C`.
        root: [u8; 32],
    },
    /// `C·r` and the opened rows, answer to [`Request::PofOpen`].
    PofOpening(Box<PofAnswer>),
    /// The node took a [`Request::Infer`]; chunks follow.
    InferAccepted {
        /// Tokens in the prompt (chat template applied).
        prompt_tokens: u32,
    },
    /// The vectors of a [`Request::Embed`].
    Embedded(Box<crate::infer::EmbedResult>),
    /// The outcome of a [`Request::Python`].
    Python(PythonOutcome),
    /// One score per token of a [`Request::Score`].
    Scored(Vec<crate::check::TokenScore>),
    /// The account's API keys after a [`Request::ApiKeys`].
    ApiKeys(ApiKeyList),
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
    /// The node is busy with other work; try another node.
    Busy,
    /// The node does not serve the requested model.
    UnknownModel,
    /// The prompt does not fit the model's context, or a challenge is
    /// larger than the node advertised.
    TooLarge,
    /// The sender may not make this request (a command from a peer that is
    /// not the node's relay).
    Forbidden,
}

/// One node as the relay lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// Its Proof-of-FLOPS record.
    pub pof: PofStanding,
}

/// A node's Proof-of-FLOPS record as the relay keeps it.
///
/// What a passed proof shows: whoever held the seed computed an exact
/// small-integer f32 matmul of size `n` at this rate (round trip
/// subtracted). It does not show who computed it (a consenting helper can
/// compute for a node) nor anything about the node's tokens.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PofStanding {
    /// Exact small-integer matmul throughput of the last passed proof, in
    /// GFLOP/s (2n³ over the time from challenge to commitment, less the
    /// measured round trip).
    pub matmul_gflops: Option<f64>,
    /// Proofs passed.
    pub passed: u32,
    /// Proofs failed.
    pub failed: u32,
    /// Passed minus five times failed. A node earns points and is given
    /// work only while its last proof passed and this is not negative.
    pub standing: i64,
    /// Whether the node may serve and earn now (last proof passed and
    /// standing not negative).
    pub valid: bool,
    /// The most recent result.
    pub last: Option<PofRecord>,
}

/// One Proof-of-FLOPS result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PofRecord {
    /// When the challenge was sent, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The challenge's round.
    pub round: u64,
    /// Matrix size.
    pub n: u32,
    /// Where the size came from: the claimed device class, or `history`
    /// (the node's previous proven rate).
    pub sized_by: String,
    /// The device class the node claimed.
    pub device_class: crate::caps::DeviceClass,
    /// Milliseconds from challenge to commit.
    pub commit_ms: u64,
    /// The round trip to the node measured just before, in milliseconds.
    pub rtt_ms: f64,
    /// The deadline, in milliseconds.
    pub deadline_ms: u64,
    /// `2n³ / (commit time − round trip)`, in GFLOP/s.
    pub matmul_gflops: f64,
    /// Whether every check passed.
    pub passed: bool,
    /// Why it failed.
    pub reason: Option<String>,
}
