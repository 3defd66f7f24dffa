//! The handle other tasks use to talk to nodes through the swarm.
//!
//! The swarm task owns the libp2p swarm; the challenger and request
//! sessions hold a cloneable [`SwarmClient`] and send it commands over a
//! channel (the shape of rust-libp2p's file-sharing example), so none of
//! them touches the swarm or imports its event loop. A request to a node
//! whose link is up ([`crate::links`]) goes over the link instead, without
//! the swarm task.

use std::sync::Arc;
use std::time::Duration;

use libp2p::{request_response, PeerId};
use tabnode_core::{Request, Response};

use crate::links::{Links, Unsent};
use tokio::sync::{mpsc, oneshot};

/// Why a request to a node got no answer.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The relay's swarm task has stopped.
    #[error("the relay is stopping")]
    Stopped,
    /// The node did not answer in time.
    #[error("no answer within {0} ms")]
    Timeout(u128),
    /// The node's link broke before it answered.
    #[error("the link to the node closed before it answered")]
    LinkClosed,
    /// The request is too large to send.
    #[error(transparent)]
    TooLarge(#[from] tabnode_core::CodecError),
    /// libp2p could not deliver the request or read the answer.
    #[error(transparent)]
    Outbound(#[from] request_response::OutboundFailure),
}

/// Something the relay's other tasks ask of the swarm.
#[derive(Debug)]
pub(crate) enum SwarmCommand {
    /// Send `request` to `peer`; the outcome goes to `reply`.
    Request {
        peer: PeerId,
        request: Request,
        reply: oneshot::Sender<Result<Response, SendError>>,
    },
    /// Close every connection of `peer` (it said goodbye).
    Disconnect { peer: PeerId },
}

/// A cloneable handle to the swarm task.
#[derive(Debug, Clone)]
pub(crate) struct SwarmClient {
    commands: mpsc::Sender<SwarmCommand>,
    links: Arc<Links>,
}

impl SwarmClient {
    /// A client and the receiver the swarm task reads its commands from.
    pub(crate) fn channel(
        capacity: usize,
        links: Arc<Links>,
    ) -> (Self, mpsc::Receiver<SwarmCommand>) {
        let (commands, rx) = mpsc::channel(capacity);
        (Self { commands, links }, rx)
    }

    /// Sends `request` to `peer` and waits at most `timeout` for the answer.
    pub(crate) async fn request(
        &self,
        peer: PeerId,
        request: Request,
        timeout: Duration,
    ) -> Result<Response, SendError> {
        let request = match self.links.send(&peer, request, true) {
            Ok(Some(mut sent)) => {
                // `sent` forgets the request when dropped (answered, timed
                // out, or its waiter gone).
                return match tokio::time::timeout(timeout, &mut sent.answer).await {
                    Err(_) => Err(SendError::Timeout(timeout.as_millis())),
                    Ok(Err(_)) => Err(SendError::LinkClosed),
                    Ok(Ok(r)) => Ok(r),
                };
            }
            Ok(None) => return Err(SendError::LinkClosed),
            Err(Unsent::TooLarge(e)) => return Err(e.into()),
            Err(Unsent::NoLink(request)) => request,
        };
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(SwarmCommand::Request {
                peer,
                request,
                reply,
            })
            .await
            .map_err(|_| SendError::Stopped)?;
        match tokio::time::timeout(timeout, rx).await {
            Err(_) => Err(SendError::Timeout(timeout.as_millis())),
            Ok(Err(_)) => Err(SendError::Stopped),
            Ok(Ok(r)) => r,
        }
    }

    /// Closes every connection of `peer`.
    ///
    /// # Errors
    /// [`SendError::Stopped`] when the swarm task has stopped.
    pub(crate) async fn disconnect(&self, peer: PeerId) -> Result<(), SendError> {
        self.commands
            .send(SwarmCommand::Disconnect { peer })
            .await
            .map_err(|_| SendError::Stopped)
    }

    /// Sends `request` to `peer` without waiting for (or reading) the
    /// answer; dropped if the swarm's queue is full.
    pub(crate) fn notify(&self, peer: PeerId, request: Request) {
        let request = match self.links.send(&peer, request, false) {
            Err(Unsent::NoLink(request)) => request,
            Err(Unsent::TooLarge(e)) => {
                tracing::warn!(%peer, "not sent: {e}");
                return;
            }
            Ok(_) => return,
        };
        let (reply, _) = oneshot::channel();
        let _ = self.commands.try_send(SwarmCommand::Request {
            peer,
            request,
            reply,
        });
    }
}
