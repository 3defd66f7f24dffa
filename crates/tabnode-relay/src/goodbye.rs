//! `POST /api/goodbye`: a node's signed goodbye (a closing tab's beacon,
//! see `tabnode_core::goodbye`) closes its connection now, so it leaves
//! matchmaking and the dashboard at once instead of when pings fail.
//!
//! A goodbye must name the node's current connection (by when it started)
//! and is good once: the signatures accepted are kept as long as a goodbye
//! stays fresh, so the same goodbye replayed (after a reload) is refused
//! even when the two connections started within the tolerance.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use axum::{
    body::Bytes,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
    Json,
};
use libp2p::PeerId;
use tabnode_core::goodbye::{Goodbye, GoodbyeError, MAX_SKEW_MS, START_TOLERANCE_MS};

use crate::{client::SwarmClient, now_ms, state::RelayState};

/// Why a goodbye was not acted on.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refused {
    /// The body is not a goodbye.
    #[error("not a goodbye: {0}")]
    Body(#[from] serde_json::Error),
    /// It does not verify.
    #[error(transparent)]
    Invalid(#[from] GoodbyeError),
    /// The node is not connected.
    #[error("{0} is not connected")]
    NotConnected(PeerId),
    /// The node is connected, but not by the connection the goodbye names
    /// (a goodbye replayed after it connected again).
    #[error("{peer}'s connection started at {since_ms} ms, not at {named_ms} ms (±{START_TOLERANCE_MS} ms)")]
    OtherConnection {
        peer: PeerId,
        since_ms: u64,
        named_ms: u64,
    },
    /// This very goodbye was acted on already.
    #[error("this goodbye was already used")]
    Used,
    /// The swarm task has stopped.
    #[error("the relay is stopping")]
    Stopping,
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            Refused::Body(_) => (StatusCode::BAD_REQUEST, "invalid_goodbye"),
            Refused::Invalid(GoodbyeError::BadSignature(_)) => {
                (StatusCode::UNAUTHORIZED, "bad_signature")
            }
            Refused::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_goodbye"),
            Refused::NotConnected(_) => (StatusCode::NOT_FOUND, "not_connected"),
            Refused::OtherConnection { .. } => (StatusCode::CONFLICT, "other_connection"),
            Refused::Used => (StatusCode::CONFLICT, "already_used"),
            Refused::Stopping => (StatusCode::SERVICE_UNAVAILABLE, "stopping"),
        };
        (
            status,
            Json(serde_json::json!({ "error": self.to_string(), "code": code })),
        )
            .into_response()
    }
}

/// The route's state: the relay's, the swarm, and the goodbyes used.
#[derive(Clone)]
pub(crate) struct Desk {
    state: Arc<RelayState>,
    swarm: SwarmClient,
    /// Signatures acted on, with when they go stale (relay clock, ms).
    used: Arc<Mutex<HashMap<String, u64>>>,
}

impl Desk {
    pub(crate) fn new(state: Arc<RelayState>, swarm: SwarmClient) -> Self {
        Self {
            state,
            swarm,
            used: Arc::default(),
        }
    }

    /// Checks `body` and names the node to drop; marks the goodbye used.
    fn accept(&self, body: &[u8], now_ms: u64) -> Result<PeerId, Refused> {
        let goodbye: Goodbye = serde_json::from_slice(body)?;
        let verified = goodbye.verify(now_ms)?;
        let peer = verified.peer;
        let since_ms = self
            .state
            .registry
            .connected_since(&peer)
            .ok_or(Refused::NotConnected(peer))?;
        if since_ms.abs_diff(verified.connected_at_ms) > START_TOLERANCE_MS {
            return Err(Refused::OtherConnection {
                peer,
                since_ms,
                named_ms: verified.connected_at_ms,
            });
        }
        let mut used = self.used.lock().unwrap_or_else(PoisonError::into_inner);
        // Forget what can no longer verify (at most the goodbyes of the last
        // few minutes' departures are kept).
        used.retain(|_, stale_at| *stale_at > now_ms);
        if used
            .insert(goodbye.signature, now_ms + 2 * MAX_SKEW_MS)
            .is_some()
        {
            return Err(Refused::Used);
        }
        Ok(peer)
    }
}

/// The handler. The body is read as bytes whatever its content type:
/// `sendBeacon` posts a string as `text/plain`.
pub(crate) async fn goodbye(State(desk): State<Desk>, body: Bytes) -> Result<StatusCode, Refused> {
    let peer = desk.accept(&body, now_ms())?;
    desk.swarm
        .disconnect(peer)
        .await
        .map_err(|_| Refused::Stopping)?;
    tracing::info!(%peer, "said goodbye; closing its connection");
    Ok(StatusCode::NO_CONTENT)
}
