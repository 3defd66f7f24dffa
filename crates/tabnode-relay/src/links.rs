//! The relay's links to its nodes ([`tabnode_core::link`]): one long-lived
//! stream per node that carries both sides' requests and answers.
//!
//! The relay opens a link to a node when the node registers and it has none;
//! [`Links`] is the one owner of which links are up. While a node's link is
//! up, [`crate::client::SwarmClient`] sends the relay's requests to it over
//! the link, and the node sends its own (token chunks, registrations) the
//! same way; the link's task answers them without passing through the swarm
//! task. When the link breaks, its unanswered requests fail and both sides
//! use request-response until the next registration opens a new one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use futures::channel::mpsc;
use libp2p::PeerId;
use tabnode_core::link::{Frame, LINK_PROTOCOL};
use tabnode_core::{Request, Response, MAX_MESSAGE};
use tokio::sync::oneshot;

use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge};

use crate::metrics::Direction;
use crate::state::RelayState;

/// One node's link while it is up.
#[derive(Debug)]
pub(crate) struct LinkHandle {
    /// Frames to send.
    out: mpsc::UnboundedSender<Frame>,
    /// The relay's requests sent over it, by frame id.
    pending: Mutex<HashMap<u64, oneshot::Sender<Response>>>,
    next_id: AtomicU64,
}

impl LinkHandle {
    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<Response>>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Forgets request `id` (its requester stopped waiting).
    pub(crate) fn forget(&self, id: u64) {
        self.pending().remove(&id);
    }
}

#[derive(Debug)]
enum Slot {
    /// Being opened.
    Opening,
    /// Up.
    Open(Arc<LinkHandle>),
}

/// A request sent over a link: its answer, and how to forget it.
pub(crate) struct Sent {
    pub(crate) link: Arc<LinkHandle>,
    pub(crate) id: u64,
    /// Closed without an answer when the link breaks.
    pub(crate) answer: oneshot::Receiver<Response>,
}

/// The links that are up (or being opened), by node.
#[derive(Debug)]
pub(crate) struct Links {
    links: Mutex<HashMap<PeerId, Slot>>,
    /// Links up (the metric).
    up: Gauge,
    /// Frames in and out (the metric).
    frames: Family<Direction, Counter>,
}

impl Links {
    /// No links yet; counted in `metrics`.
    pub(crate) fn new(metrics: &crate::metrics::Metrics) -> Self {
        Self {
            links: Mutex::default(),
            up: metrics.links.clone(),
            frames: metrics.link_frames.clone(),
        }
    }

    fn count(&self, direction: &'static str) {
        self.frames.get_or_create(&Direction { direction }).inc();
    }

    fn links(&self) -> std::sync::MutexGuard<'_, HashMap<PeerId, Slot>> {
        self.links.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends `request` to `peer` over its link (`reply`: whether the answer
    /// is wanted); gives the request back when `peer` has no link up.
    pub(crate) fn send(
        &self,
        peer: &PeerId,
        request: Request,
        reply: bool,
    ) -> Result<Option<Sent>, Request> {
        let link = match self.links().get(peer) {
            Some(Slot::Open(link)) => link.clone(),
            _ => return Err(request),
        };
        let id = link.next_id.fetch_add(1, Ordering::Relaxed);
        let sent = reply.then(|| {
            let (tx, answer) = oneshot::channel();
            link.pending().insert(id, tx);
            Sent {
                link: link.clone(),
                id,
                answer,
            }
        });
        match link.out.unbounded_send(Frame::Request { id, request }) {
            Ok(()) => {
                self.count("out");
                Ok(sent)
            }
            Err(e) => {
                link.forget(id);
                match e.into_inner() {
                    Frame::Request { request, .. } => Err(request),
                    Frame::Response { .. } => Ok(None),
                }
            }
        }
    }

    /// Opens a link to `peer` unless it has one or one is being opened, and
    /// serves it until it breaks (a task of its own).
    pub(crate) fn open(
        self: &Arc<Self>,
        control: &libp2p_stream::Control,
        peer: PeerId,
        state: Arc<RelayState>,
        joined: tokio::sync::mpsc::Sender<PeerId>,
    ) {
        {
            let mut links = self.links();
            if links.contains_key(&peer) {
                return;
            }
            links.insert(peer, Slot::Opening);
        }
        let links = self.clone();
        let mut control = control.clone();
        tokio::spawn(async move {
            let stream = match control.open_stream(peer, LINK_PROTOCOL).await {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::debug!(%peer, "no link: {e}");
                    links.links().remove(&peer);
                    return;
                }
            };
            let (out, rx) = mpsc::unbounded();
            let link = Arc::new(LinkHandle {
                out: out.clone(),
                pending: Mutex::default(),
                next_id: AtomicU64::new(0),
            });
            links.links().insert(peer, Slot::Open(link.clone()));
            links.up.inc();
            tracing::debug!(%peer, "link up");
            let end = tabnode_core::link::run(stream, MAX_MESSAGE, rx, |frame| {
                links.count("in");
                match frame {
                    Frame::Request { id, request } => {
                        let response = crate::swarm::on_request(&state, &joined, peer, request);
                        if out.unbounded_send(Frame::Response { id, response }).is_ok() {
                            links.count("out");
                            crate::swarm::answered(&state);
                        }
                    }
                    Frame::Response { id, response } => {
                        if let Some(reply) = link.pending().remove(&id) {
                            let _ = reply.send(response);
                        }
                    }
                }
            })
            .await;
            links.up.dec();
            match &end {
                Ok(()) => tracing::debug!(%peer, "link closed"),
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                    state.metrics.protocol_errors.inc();
                    tracing::warn!(%peer, "closed a link: {e}");
                }
                Err(e) => tracing::debug!(%peer, "link broke: {e}"),
            }
            {
                let mut map = links.links();
                if matches!(map.get(&peer), Some(Slot::Open(l)) if Arc::ptr_eq(l, &link)) {
                    map.remove(&peer);
                }
            }
            // Unanswered requests fail now (their senders are dropped).
            link.pending().clear();
        });
    }
}
