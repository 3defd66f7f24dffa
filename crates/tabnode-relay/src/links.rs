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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use libp2p::PeerId;
use tabnode_core::link::{Frame, Outbox, Refused, SendError, LINK_PROTOCOL};
use tabnode_core::{CodecError, Request, Response, MAX_MESSAGE};
use tokio::sync::oneshot;

use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge};

use crate::metrics::{Direction, Outcome};
use crate::state::RelayState;

/// One node's link while it is up.
#[derive(Debug)]
pub(crate) struct LinkHandle {
    /// Frames to send.
    out: Outbox,
    /// The relay's requests sent over it, by frame id.
    pending: Mutex<HashMap<u64, oneshot::Sender<Response>>>,
    next_id: AtomicU64,
    /// Ends the link's task (when a new link replaces it).
    close: Mutex<Option<oneshot::Sender<()>>>,
    /// Whether [`Links::check`] is asking it now.
    checking: AtomicBool,
}

impl LinkHandle {
    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<Response>>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Forgets request `id` (its requester stopped waiting).
    pub(crate) fn forget(&self, id: u64) {
        self.pending().remove(&id);
    }

    /// Closes the link.
    fn close(&self) {
        let close = self
            .close
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(close) = close {
            let _ = close.send(());
        }
    }
}

#[derive(Debug)]
enum Slot {
    /// Being opened.
    Opening,
    /// Up.
    Open(Arc<LinkHandle>),
}

/// How long opening a link may take before the relay gives up on it (the
/// node keeps request-response).
const OPEN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A request sent over a link: its answer. Dropping it forgets the request
/// (a late answer is ignored).
pub(crate) struct Sent {
    link: Arc<LinkHandle>,
    id: u64,
    /// Closed without an answer when the link breaks.
    pub(crate) answer: oneshot::Receiver<Response>,
}

impl Drop for Sent {
    fn drop(&mut self) {
        self.link.forget(self.id);
    }
}

/// Why a request did not go over a link.
#[derive(Debug)]
pub(crate) enum Unsent {
    /// No link is up (or it is not reading): request-response takes it.
    NoLink(Request),
    /// Too large for any stream.
    TooLarge(CodecError),
}

/// Why the link did not take a request.
fn unsent(refused: Refused) -> Unsent {
    match refused {
        Refused {
            error: SendError::Encode(e),
            ..
        } => Unsent::TooLarge(e),
        Refused { request, .. } => Unsent::NoLink(request),
    }
}

/// A link's place in [`Links`] while its task runs: dropped when the task
/// ends, however it ends (a panic in a request's handling included), it
/// takes the link out of the map, unless a newer link replaced it, and fails
/// its unanswered requests, so the node's next requests go over
/// request-response instead of into a link nobody serves.
struct Up {
    links: Arc<Links>,
    peer: PeerId,
    link: Arc<LinkHandle>,
}

impl Up {
    fn new(links: Arc<Links>, peer: PeerId, link: Arc<LinkHandle>) -> Self {
        links.links().insert(peer, Slot::Open(link.clone()));
        links.up.inc();
        Self { links, peer, link }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        self.links.up.dec();
        {
            let mut map = self.links.links();
            if matches!(map.get(&self.peer), Some(Slot::Open(l)) if Arc::ptr_eq(l, &self.link)) {
                map.remove(&self.peer);
            }
        }
        // Unanswered requests fail now (their senders are dropped).
        self.link.pending().clear();
    }
}

/// The links that are up (or being opened), by node.
#[derive(Debug)]
pub(crate) struct Links {
    links: Mutex<HashMap<PeerId, Slot>>,
    /// Links up (the metric).
    up: Gauge,
    /// Frames in and out (the metric).
    frames: Family<Direction, Counter>,
    /// Links checked (the metric): `alive` or `replaced`.
    checks: Family<Outcome, Counter>,
}

impl Links {
    /// No links yet; counted in `metrics`.
    pub(crate) fn new(metrics: &crate::metrics::Metrics) -> Self {
        Self {
            links: Mutex::default(),
            up: metrics.links.clone(),
            frames: metrics.link_frames.clone(),
            checks: metrics.link_checks.clone(),
        }
    }

    fn count(&self, direction: &'static str) {
        self.frames.get_or_create(&Direction { direction }).inc();
    }

    fn links(&self) -> std::sync::MutexGuard<'_, HashMap<PeerId, Slot>> {
        self.links.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends `request` to `peer` over its link (`reply`: whether the answer
    /// is wanted, else it goes as a notice); gives the request back when
    /// `peer` has no link up.
    pub(crate) fn send(
        &self,
        peer: &PeerId,
        request: Request,
        reply: bool,
    ) -> Result<Option<Sent>, Unsent> {
        let link = match self.links().get(peer) {
            Some(Slot::Open(link)) => link.clone(),
            _ => return Err(Unsent::NoLink(request)),
        };
        if !reply {
            return match link.out.notify(request) {
                Ok(()) => {
                    self.count("out");
                    Ok(None)
                }
                Err(refused) => Err(unsent(refused)),
            };
        }
        self.ask(link, request).map(Some)
    }

    /// Sends `request` over `link`; its answer comes to the [`Sent`].
    fn ask(&self, link: Arc<LinkHandle>, request: Request) -> Result<Sent, Unsent> {
        let id = link.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, answer) = oneshot::channel();
        link.pending().insert(id, tx);
        let out = link.out.clone();
        let sent = Sent { link, id, answer };
        match out.request(id, request) {
            Ok(()) => {
                self.count("out");
                Ok(sent)
            }
            // `sent`, dropped, forgets the request.
            Err(refused) => Err(unsent(refused)),
        }
    }

    /// Gives `peer`, which registered over request-response, a link: opens
    /// one unless one is being opened or is up.
    ///
    /// A node registers over request-response only while it has no link,
    /// so a link the relay holds then is either one the node has not seen
    /// yet (opened moments ago, its stream still on its way: the node
    /// registered again meanwhile) or one whose node side is gone (it broke
    /// there, or it is on a connection the node left). [`Links::check`]
    /// tells them apart: a link that answers stays, one that does not is
    /// replaced.
    pub(crate) fn open(
        self: &Arc<Self>,
        control: &libp2p_stream::Control,
        peer: PeerId,
        state: Arc<RelayState>,
        joined: tokio::sync::mpsc::Sender<PeerId>,
    ) {
        {
            let mut links = self.links();
            match links.get(&peer) {
                Some(Slot::Opening) => return,
                Some(Slot::Open(link)) => {
                    let link = link.clone();
                    drop(links);
                    self.check(link, control, peer, state, joined);
                    return;
                }
                None => {
                    links.insert(peer, Slot::Opening);
                }
            }
        }
        self.spawn_link(control.clone(), peer, state, joined);
    }

    /// Asks `peer`'s `link` for an echo; when none comes within
    /// [`OPEN_TIMEOUT`] (as long as opening a link may take), closes it and
    /// opens another. One check at a time per link; requests keep going
    /// over it meanwhile.
    fn check(
        self: &Arc<Self>,
        link: Arc<LinkHandle>,
        control: &libp2p_stream::Control,
        peer: PeerId,
        state: Arc<RelayState>,
        joined: tokio::sync::mpsc::Sender<PeerId>,
    ) {
        if link.checking.swap(true, Ordering::AcqRel) {
            return;
        }
        let links = self.clone();
        let control = control.clone();
        tokio::spawn(async move {
            // Any answer over the link is the node reading and answering it.
            let alive = match links.ask(link.clone(), Request::Echo(Vec::new())) {
                Ok(mut sent) => matches!(
                    tokio::time::timeout(OPEN_TIMEOUT, &mut sent.answer).await,
                    Ok(Ok(_))
                ),
                Err(_) => false,
            };
            link.checking.store(false, Ordering::Release);
            let count = |outcome| links.checks.get_or_create(&Outcome { outcome }).inc();
            if alive {
                count("alive");
                tracing::debug!(%peer, "the node registered before its link reached it; kept");
                return;
            }
            {
                let mut map = links.links();
                match map.get(&peer) {
                    // Still this link, or none (it ended meanwhile): the
                    // node has no working link.
                    Some(Slot::Open(l)) if Arc::ptr_eq(l, &link) => {}
                    None => {}
                    // Replaced meanwhile.
                    Some(_) => return,
                }
                map.insert(peer, Slot::Opening);
            }
            count("replaced");
            tracing::debug!(%peer, "the link did not answer; replaced");
            link.close();
            links.spawn_link(control, peer, state, joined);
        });
    }

    /// Opens a link to `peer` (its slot is [`Slot::Opening`]) in a task
    /// that then serves it until it ends.
    fn spawn_link(
        self: &Arc<Self>,
        mut control: libp2p_stream::Control,
        peer: PeerId,
        state: Arc<RelayState>,
        joined: tokio::sync::mpsc::Sender<PeerId>,
    ) {
        let links = self.clone();
        tokio::spawn(async move {
            let opened =
                tokio::time::timeout(OPEN_TIMEOUT, control.open_stream(peer, LINK_PROTOCOL)).await;
            let stream = match opened {
                Ok(Ok(stream)) => stream,
                failed => {
                    match failed {
                        Ok(Err(e)) => tracing::debug!(%peer, "no link: {e}"),
                        _ => tracing::debug!(%peer, "no link within {OPEN_TIMEOUT:?}"),
                    }
                    let mut map = links.links();
                    if matches!(map.get(&peer), Some(Slot::Opening)) {
                        map.remove(&peer);
                    }
                    return;
                }
            };
            let (out, outgoing) = tabnode_core::link::outbox(MAX_MESSAGE);
            let (close, closed) = oneshot::channel();
            let link = Arc::new(LinkHandle {
                out: out.clone(),
                pending: Mutex::default(),
                next_id: AtomicU64::new(0),
                close: Mutex::new(Some(close)),
                checking: AtomicBool::new(false),
            });
            let up = Up::new(links.clone(), peer, link.clone());
            tracing::debug!(%peer, "link up");
            let served = tabnode_core::link::run(stream, MAX_MESSAGE, outgoing, |frame| {
                links.count("in");
                match frame {
                    Frame::Request { id, request } => {
                        let response = crate::swarm::on_request(&state, &joined, peer, request);
                        match out.answer(id, &response) {
                            Ok(()) => {
                                links.count("out");
                                crate::swarm::answered(&state);
                            }
                            // It keeps asking and does not read the answers.
                            Err(SendError::Backlog(n)) => {
                                return Err(std::io::Error::new(
                                    std::io::ErrorKind::InvalidData,
                                    format!("the node left {n} bytes of answers unread"),
                                ))
                            }
                            Err(_) => {}
                        }
                    }
                    Frame::Response { id, response } => {
                        if let Some(reply) = link.pending().remove(&id) {
                            let _ = reply.send(response);
                        }
                    }
                    // Handled like a request; the answer goes nowhere.
                    Frame::Notice { request } => {
                        let name = request.name();
                        if let Response::Error { message, .. } =
                            crate::swarm::on_request(&state, &joined, peer, request)
                        {
                            tracing::debug!(%peer, "refused a {name} notice: {message}");
                        }
                    }
                }
                Ok(())
            });
            let end = tokio::select! {
                end = served => end,
                _ = closed => Ok(()),
            };
            match &end {
                Ok(()) => tracing::debug!(%peer, "link closed"),
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                    state.metrics.protocol_errors.inc();
                    tracing::warn!(%peer, "closed a link: {e}");
                }
                Err(e) => tracing::debug!(%peer, "link broke: {e}"),
            }
            drop(up);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle() -> Arc<LinkHandle> {
        let (out, _outgoing) = tabnode_core::link::outbox(MAX_MESSAGE);
        Arc::new(LinkHandle {
            out,
            pending: Mutex::default(),
            next_id: AtomicU64::new(0),
            close: Mutex::new(None),
            checking: AtomicBool::new(false),
        })
    }

    #[tokio::test]
    async fn a_link_task_that_panics_leaves_no_link_behind() {
        let metrics = crate::metrics::Metrics::default();
        let links = Arc::new(Links::new(&metrics));
        let peer = PeerId::random();
        let link = handle();
        let (tx, answer) = oneshot::channel();
        link.pending().insert(7, tx);
        let task = {
            let (links, link) = (links.clone(), link.clone());
            tokio::spawn(async move {
                let _up = Up::new(links.clone(), peer, link);
                assert!(matches!(links.links().get(&peer), Some(Slot::Open(_))));
                assert_eq!(links.up.get(), 1);
                panic!("a bug while answering a frame");
            })
        };
        assert!(task.await.expect_err("it panicked").is_panic());
        assert!(links.links().get(&peer).is_none(), "the link is gone");
        assert_eq!(links.up.get(), 0);
        // Its unanswered request failed instead of waiting forever.
        assert!(answer.await.is_err());
        // A request for the node now goes over request-response.
        let sent = links.send(&peer, Request::ListPeers, true);
        assert!(matches!(sent, Err(Unsent::NoLink(Request::ListPeers))));
    }

    #[tokio::test]
    async fn an_ending_link_leaves_its_replacement_in_place() {
        let metrics = crate::metrics::Metrics::default();
        let links = Arc::new(Links::new(&metrics));
        let peer = PeerId::random();
        let old = Up::new(links.clone(), peer, handle());
        let new = handle();
        let _new = Up::new(links.clone(), peer, new.clone());
        drop(old);
        assert!(matches!(links.links().get(&peer), Some(Slot::Open(l)) if Arc::ptr_eq(l, &new)));
        assert_eq!(links.up.get(), 1);
    }
}
