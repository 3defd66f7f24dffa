//! Portable core of tabnode: everything that both the native binaries and the
//! browser build share.
//!
//! * [`protocol`]: the `/tabnode/1.0.0` request-response messages,
//! * [`codec`]: the length-prefixed codec that never hands the transport a
//!   write larger than [`codec::MAX_FRAME`] (8 KiB; see `shared/FACTS.md` on
//!   the WebRTC data-channel bug),
//! * [`caps`]: what a node reports about itself (GPU adapter, limits, pledge),
//! * [`worker`]: the typed messages between the page and its compute worker,
//! * [`node`]: the libp2p behaviour every node (tab or native) runs, and the
//!   sans-I/O handling of its events (only the relay may command a node),
//! * [`goodbye`]: the signed goodbye a closing tab sends the relay,
//! * [`pof`]: the node's side of Proof-of-FLOPS (size checks, one commitment
//!   per round); backends supply the matmul.
//!
//! This crate has no `web-sys` and no tokio: it builds for
//! `wasm32-unknown-unknown` and natively.

pub mod caps;
pub mod check;
pub mod chunked;
pub mod codec;
pub mod download;
pub mod driver;
pub mod goodbye;
pub mod infer;
pub mod link;
// The `NetworkBehaviour` derive generates an event enum without docs.
#[allow(missing_docs)]
pub mod node;
pub mod pof;
pub mod protocol;
pub mod worker;

pub use caps::{Capabilities, DeviceClass, GpuInfo, GpuLimits, NodeKind};
pub use codec::{CodecError, CodecStats, TabnodeCodec, MAX_FRAME, MAX_MESSAGE};
pub use infer::{
    model_id, ChunkStreamer, EmbedInput, EmbedRequest, EmbedResult, InferChunk, InferDone,
    InferEnd, InferRequest,
};
pub use protocol::{
    ApiKeyCommand, ApiKeyInfo, ApiKeyList, ErrorCode, PeerSummary, PofChallenge, PofRecord,
    PofStanding, PythonJob, PythonOutcome, Request, Response, PROTOCOL,
};
