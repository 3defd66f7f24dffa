//! The requests in flight: which node each runs on now, and the channel
//! its chunks go to.
//!
//! The swarm hands every [`InferChunk`] here; only the node a request runs
//! on now (and its current attempt) reaches the request, everything else is
//! told to stop. A node that leaves ends its requests' current segments, so
//! they move on to another node at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use libp2p::PeerId;
use tabnode_core::{ErrorCode, InferChunk, Response};
use tokio::sync::mpsc;

/// What the swarm hands a running request.
#[derive(Debug)]
pub(crate) enum StreamEvent {
    Chunk(Box<InferChunk>),
    Gone,
}

#[derive(Debug)]
struct Running {
    peer: PeerId,
    attempt: u32,
    tx: mpsc::UnboundedSender<StreamEvent>,
}

/// The requests in flight.
#[derive(Debug)]
pub struct Sessions {
    running: Mutex<HashMap<u64, Running>>,
    /// Random per relay run (hex): with the run's request counter it makes
    /// credit ids that no other request, in this run or any other, shares.
    pub epoch: String,
    next_request: AtomicU64,
}

impl Default for Sessions {
    fn default() -> Self {
        Self {
            running: Mutex::default(),
            epoch: format!("{:016x}", rand::random::<u64>()),
            next_request: AtomicU64::new(1),
        }
    }
}

fn stop(message: &str) -> Response {
    Response::Error {
        code: ErrorCode::Invalid,
        message: message.into(),
    }
}

impl Sessions {
    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Running>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A request id unique in this relay run (credit ids add the epoch).
    pub fn next_request_id(&self) -> u64 {
        self.next_request.fetch_add(1, Ordering::Relaxed)
    }

    /// Request `request_id` runs on `peer` now, as its `attempt`: its
    /// chunks arrive on the returned receiver.
    pub(crate) fn track(
        &self,
        request_id: u64,
        peer: PeerId,
        attempt: u32,
    ) -> mpsc::UnboundedReceiver<StreamEvent> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.running()
            .insert(request_id, Running { peer, attempt, tx });
        rx
    }

    /// Request `request_id` runs on no node now.
    pub(crate) fn untrack(&self, request_id: u64) {
        self.running().remove(&request_id);
    }

    /// A chunk from `peer`: handed to its request if `peer` is the node
    /// that request runs on now. The answer tells the node to go on (`Ack`)
    /// or to stop.
    pub(crate) fn on_chunk(&self, peer: PeerId, chunk: Box<InferChunk>) -> Response {
        let running = self.running();
        match running.get(&chunk.request_id) {
            Some(r) if r.peer == peer && r.attempt == chunk.attempt => {
                if r.tx.send(StreamEvent::Chunk(chunk)).is_ok() {
                    Response::Ack
                } else {
                    stop("the requester is gone")
                }
            }
            _ => stop("no such request on this node (finished, cancelled or moved)"),
        }
    }

    /// `peer` left the network: its requests move on.
    pub(crate) fn node_gone(&self, peer: PeerId) {
        for r in self.running().values().filter(|r| r.peer == peer) {
            let _ = r.tx.send(StreamEvent::Gone);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_reach_only_the_current_node_of_a_request() {
        let s = Sessions::default();
        let (a, b) = (PeerId::random(), PeerId::random());
        let mut rx = s.track(7, a, 1);
        let chunk = |attempt| {
            Box::new(InferChunk {
                request_id: 7,
                attempt,
                offset: 0,
                tokens: vec![1],
                text: "x".into(),
                end: None,
            })
        };
        assert_eq!(s.on_chunk(a, chunk(1)), Response::Ack);
        assert!(matches!(rx.try_recv(), Ok(StreamEvent::Chunk(_))));
        assert!(
            matches!(s.on_chunk(b, chunk(1)), Response::Error { .. }),
            "wrong node"
        );
        assert!(
            matches!(s.on_chunk(a, chunk(0)), Response::Error { .. }),
            "old attempt"
        );
        s.node_gone(a);
        assert!(matches!(rx.try_recv(), Ok(StreamEvent::Gone)));
        s.untrack(7);
        assert!(
            matches!(s.on_chunk(a, chunk(1)), Response::Error { .. }),
            "finished"
        );
    }

    #[test]
    fn request_ids_are_unique_and_epochs_differ_between_runs() {
        let s = Sessions::default();
        let ids: std::collections::HashSet<u64> = (0..1000).map(|_| s.next_request_id()).collect();
        assert_eq!(ids.len(), 1000);
        assert_ne!(s.epoch, Sessions::default().epoch);
    }
}
