//! Matchmaking and network inference.
//!
//! [`Matchmaker`] keeps, per node, the generations it runs and its recent
//! outcomes; with the registry in [`RelayState`] (models, slots, proofs) it
//! picks the node for a request: never a node whose last proof failed,
//! verified before unverified, then least loaded, most reliable, fastest.
//! `run_request` carries one request from a requester to the end: it
//! reserves a node, sends [`Request::Infer`], reassembles the node's
//! [`InferChunk`]s into one stream, and when the node disappears, stalls,
//! fails or breaks the protocol, continues on another node from the tokens
//! already delivered (the new node gets them as
//! [`GenerateRequest::resume`]), so the requester sees one stream with
//! nothing lost or repeated. Tokens are credited to the nodes that produced
//! them, once per request and node, before the requester is told the
//! request is done.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use libp2p::PeerId;
use tabnode_core::infer::{FinishReason, GenerateRequest};
use tabnode_core::{ErrorCode, InferChunk, InferEnd, InferRequest, Request, Response};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::Instant;

use crate::ledger::Credit;
use crate::metrics::Outcome;
use crate::state::RelayState;
use crate::swarm::RelayCommand;

/// Settings of network inference.
#[derive(Debug, Clone)]
pub struct InferConfig {
    /// How long a node may take to accept a request.
    pub accept_timeout: Duration,
    /// How long a node may take to its first token (prefill; slow on
    /// software WebGPU).
    pub first_token_timeout: Duration,
    /// Longest silence between two chunks before the node counts as stalled.
    pub stall_timeout: Duration,
    /// How long a request waits for a free node.
    pub queue_timeout: Duration,
    /// Nodes tried per request (the first included).
    pub max_attempts: u32,
    /// Requests per minute per client address on the HTTP API (0: no limit).
    pub rate_limit_per_minute: u32,
    /// Largest request body on the HTTP API.
    pub max_body_bytes: usize,
}

impl Default for InferConfig {
    fn default() -> Self {
        Self {
            accept_timeout: Duration::from_secs(30),
            first_token_timeout: Duration::from_secs(300),
            stall_timeout: Duration::from_secs(60),
            queue_timeout: Duration::from_secs(30),
            max_attempts: 3,
            rate_limit_per_minute: 600,
            max_body_bytes: 1 << 20,
        }
    }
}

/// Outcomes remembered per node for its reliability.
const RECENT: usize = 20;

#[derive(Debug, Default)]
struct Load {
    active: u32,
    recent: VecDeque<bool>,
}

impl Load {
    fn failure_rate(&self) -> f64 {
        if self.recent.is_empty() {
            return 0.0;
        }
        self.recent.iter().filter(|ok| !**ok).count() as f64 / self.recent.len() as f64
    }
}

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

/// A node as matchmaking sees it.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The node.
    pub peer: PeerId,
    /// Generations it runs at once.
    pub slots: u32,
    /// `Some(true)` if its last proof passed, `Some(false)` if it failed,
    /// `None` before its first proof.
    pub last_proof: Option<bool>,
    /// GFLOP/s of its last passed proof.
    pub gflops: f64,
}

/// Per-node load and reliability, and the requests in flight.
#[derive(Debug)]
pub struct Matchmaker {
    loads: Mutex<HashMap<PeerId, Load>>,
    running: Mutex<HashMap<u64, Running>>,
    freed: Notify,
    /// Random per relay run (hex): with the run's request counter it makes
    /// credit ids that no other request, in this run or any other, shares.
    pub epoch: String,
    next_request: AtomicU64,
}

impl Default for Matchmaker {
    fn default() -> Self {
        Self {
            loads: Mutex::default(),
            running: Mutex::default(),
            freed: Notify::new(),
            epoch: format!("{:016x}", rand::random::<u64>()),
            next_request: AtomicU64::new(1),
        }
    }
}

/// Why no node could be reserved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoNode {
    /// No connected node serves the model.
    UnknownModel,
    /// Nodes serve it, but none is usable now (busy, failed its proof, or
    /// already tried).
    Unavailable,
}

impl Matchmaker {
    /// A request id unique in this relay run (credit ids add the epoch).
    pub fn next_request_id(&self) -> u64 {
        self.next_request.fetch_add(1, Ordering::Relaxed)
    }

    /// Picks the best node for `model` among `candidates`, not in
    /// `exclude`, and takes one of its slots.
    ///
    /// # Errors
    /// [`NoNode`] when there is none.
    pub fn reserve(
        &self,
        candidates: &[Candidate],
        exclude: &HashSet<PeerId>,
    ) -> Result<PeerId, NoNode> {
        if candidates.is_empty() {
            return Err(NoNode::UnknownModel);
        }
        let mut loads = self.loads.lock().unwrap_or_else(|p| p.into_inner());
        let key = |c: &Candidate, l: Option<&Load>| {
            let active = l.map_or(0, |l| l.active);
            (
                u8::from(c.last_proof != Some(true)),
                // Load as a fraction of the slots, in thousandths.
                u64::from(active) * 1000 / u64::from(c.slots.max(1)),
                (l.map_or(0.0, Load::failure_rate) * 1000.0) as u64,
                std::cmp::Reverse((c.gflops * 1000.0) as u64),
            )
        };
        let best = candidates
            .iter()
            .filter(|c| c.last_proof != Some(false) && !exclude.contains(&c.peer))
            .filter(|c| loads.get(&c.peer).map_or(0, |l| l.active) < c.slots)
            .min_by_key(|c| key(c, loads.get(&c.peer)))
            .ok_or(NoNode::Unavailable)?;
        loads.entry(best.peer).or_default().active += 1;
        Ok(best.peer)
    }

    /// Gives back a slot of `peer`, recording whether its work succeeded.
    pub fn release(&self, peer: PeerId, ok: bool) {
        let mut loads = self.loads.lock().unwrap_or_else(|p| p.into_inner());
        // A node that left has no entry any more; none is made for it.
        if let Some(l) = loads.get_mut(&peer) {
            l.active = l.active.saturating_sub(1);
            l.recent.push_back(ok);
            while l.recent.len() > RECENT {
                l.recent.pop_front();
            }
        }
        drop(loads);
        self.freed.notify_waiters();
    }

    /// Wakes requests waiting for a node (a slot freed, a node registered).
    pub fn wake(&self) {
        self.freed.notify_waiters();
    }

    /// Generations `peer` runs now, and its failure rate.
    pub fn load_of(&self, peer: &PeerId) -> (u32, f64) {
        let loads = self.loads.lock().unwrap_or_else(|p| p.into_inner());
        loads
            .get(peer)
            .map_or((0, 0.0), |l| (l.active, l.failure_rate()))
    }

    fn track(
        &self,
        request_id: u64,
        peer: PeerId,
        attempt: u32,
    ) -> mpsc::UnboundedReceiver<StreamEvent> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(request_id, Running { peer, attempt, tx });
        rx
    }

    fn untrack(&self, request_id: u64) {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&request_id);
    }

    /// A chunk from `peer`: handed to its request if `peer` is the node
    /// that request runs on now. The answer tells the node to go on (`Ack`)
    /// or to stop.
    pub(crate) fn on_chunk(&self, peer: PeerId, chunk: Box<InferChunk>) -> Response {
        let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
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
        for r in self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|r| r.peer == peer)
        {
            let _ = r.tx.send(StreamEvent::Gone);
        }
        self.loads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&peer);
        self.freed.notify_waiters();
    }
}

fn stop(message: &str) -> Response {
    Response::Error {
        code: ErrorCode::Invalid,
        message: message.into(),
    }
}

/// A request from the HTTP API.
#[derive(Debug, Clone)]
pub struct ApiRequest {
    /// The model (id or name).
    pub model: String,
    /// What to generate.
    pub request: GenerateRequest,
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiFailure {
    /// The request is invalid (prompt, sampling values).
    BadRequest(String),
    /// The prompt does not fit the model's context.
    TooLarge(String),
    /// No node serves the model.
    UnknownModel(String),
    /// No node could take or finish the request.
    NoNode(String),
}

/// Figures of a finished request.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Usage {
    /// Prompt tokens.
    pub prompt_tokens: u32,
    /// Generated tokens delivered.
    pub completion_tokens: u32,
    /// Milliseconds from the request to its first token.
    pub ttft_ms: f64,
    /// Generated tokens per second after the first.
    pub tokens_per_s: f64,
    /// The nodes that served it, in order.
    pub nodes: Vec<String>,
    /// Times it moved to another node.
    pub failovers: u32,
}

/// What a request reports, in order: `Started`, any number of `Text`,
/// then `Done` or `Failed`.
#[derive(Debug, Clone, PartialEq)]
pub enum ApiEvent {
    /// A node accepted it.
    Started {
        /// The relay's id of the request.
        request_id: u64,
        /// The node.
        node: String,
        /// Prompt tokens.
        prompt_tokens: u32,
    },
    /// More of the answer.
    Text {
        /// The text.
        text: String,
        /// Tokens it came with.
        tokens: u32,
        /// The node that produced it.
        node: String,
    },
    /// The answer is complete (and its tokens are credited).
    Done {
        /// Why it ended.
        finish: FinishReason,
        /// Figures.
        usage: Usage,
    },
    /// It failed.
    Failed(ApiFailure),
}

/// What a request needs from the relay.
#[derive(Debug, Clone)]
pub(crate) struct InferContext {
    pub state: Arc<RelayState>,
    pub commands: mpsc::Sender<RelayCommand>,
    pub config: InferConfig,
}

async fn send(
    ctx: &InferContext,
    peer: PeerId,
    request: Request,
) -> Result<Response, crate::swarm::SendError> {
    crate::swarm::request(&ctx.commands, peer, request, ctx.config.accept_timeout).await
}

fn cancel(ctx: &InferContext, peer: PeerId, request_id: u64) {
    let (reply, _) = oneshot::channel();
    let _ = ctx.commands.try_send(RelayCommand::Request {
        peer,
        request: Request::InferCancel { request_id },
        reply,
    });
}

/// Waits for a node for `model`, at most the queue timeout.
async fn acquire(
    ctx: &InferContext,
    model: &str,
    exclude: &HashSet<PeerId>,
) -> Result<PeerId, NoNode> {
    let deadline = Instant::now() + ctx.config.queue_timeout;
    let mm = &ctx.state.matchmaker;
    loop {
        let woken = mm.freed.notified();
        match mm.reserve(&ctx.state.candidates(model), exclude) {
            Ok(p) => return Ok(p),
            Err(NoNode::UnknownModel) if exclude.is_empty() => return Err(NoNode::UnknownModel),
            Err(e) => {
                let now = Instant::now();
                if now >= deadline {
                    return Err(e);
                }
                // Woken by whatever changes who is usable: a freed slot, a
                // registration, a departure, a proof result.
                let _ = tokio::time::timeout(deadline - now, woken).await;
            }
        }
    }
}

/// How one node's part of a request ended.
enum Segment {
    /// Generation finished.
    Done(FinishReason),
    /// The node left the network (a tab closed, a process died): continue
    /// elsewhere; what it delivered before is credited.
    Left(String),
    /// The node stalled or reported a failure: continue elsewhere, credit
    /// nothing for this attempt.
    Failed(String),
    /// The node broke the protocol: continue elsewhere, credit nothing.
    Cheated(String),
    /// The requester left.
    Abandoned,
}

/// Carries `api` to its end, reporting on `events`. Never panics; every
/// outcome ends with `Done` or `Failed`.
pub(crate) async fn run_request(
    ctx: InferContext,
    api: ApiRequest,
    events: mpsc::Sender<ApiEvent>,
) {
    let mm = &ctx.state.matchmaker;
    let metrics = &ctx.state.metrics;
    let request_id = mm.next_request_id();
    let Some(entry) = ctx.state.catalog.find(&api.model).cloned() else {
        metrics
            .inference_requests
            .get_or_create(&Outcome { outcome: "failed" })
            .inc();
        let _ = events
            .send(ApiEvent::Failed(ApiFailure::UnknownModel(
                api.model.clone(),
            )))
            .await;
        return;
    };
    let model = entry.id.clone();
    let started = Instant::now();
    let max_tokens = api.request.max_tokens;
    let mut delivered: Vec<u32> = Vec::new();
    let mut exclude = HashSet::new();
    let mut credits = Vec::new();
    let mut usage = Usage::default();
    let mut first_token: Option<Instant> = None;
    let mut told_started = false;
    let mut outcome: Result<FinishReason, ApiFailure> =
        Err(ApiFailure::NoNode("no node could serve the request".into()));
    for attempt in 0..ctx.config.max_attempts.max(1) {
        let peer = match acquire(&ctx, &model, &exclude).await {
            Ok(p) => p,
            Err(NoNode::UnknownModel) => {
                outcome = Err(ApiFailure::UnknownModel(api.model.clone()));
                break;
            }
            Err(NoNode::Unavailable) => {
                outcome = Err(ApiFailure::NoNode(if attempt == 0 {
                    format!("no node for {model} is free; try again later")
                } else {
                    format!(
                        "the nodes serving this request failed after {} tokens",
                        delivered.len()
                    )
                }));
                break;
            }
        };
        exclude.insert(peer);
        let node = peer.to_string();
        let mut request = api.request.clone();
        request.resume = delivered.clone();
        let mut rx = mm.track(request_id, peer, attempt);
        let infer = InferRequest {
            request_id,
            attempt,
            model: model.clone(),
            request,
        };
        match send(&ctx, peer, Request::Infer(Box::new(infer))).await {
            Ok(Response::InferAccepted { prompt_tokens }) => {
                if !told_started {
                    told_started = true;
                    usage.prompt_tokens = prompt_tokens;
                    let started = ApiEvent::Started {
                        request_id,
                        node: node.clone(),
                        prompt_tokens,
                    };
                    if events.send(started).await.is_err() {
                        mm.untrack(request_id);
                        cancel(&ctx, peer, request_id);
                        mm.release(peer, true);
                        return;
                    }
                }
            }
            Ok(Response::Error { code, message }) => {
                mm.untrack(request_id);
                mm.release(peer, true);
                match code {
                    // The request itself is bad: no node will take it.
                    ErrorCode::Invalid if delivered.is_empty() => {
                        outcome = Err(ApiFailure::BadRequest(message));
                        break;
                    }
                    ErrorCode::TooLarge if delivered.is_empty() => {
                        outcome = Err(ApiFailure::TooLarge(message));
                        break;
                    }
                    _ => {
                        tracing::info!(%peer, "refused request {request_id}: {message}");
                        outcome = Err(ApiFailure::NoNode(format!("a node refused: {message}")));
                        continue;
                    }
                }
            }
            Ok(other) => {
                mm.untrack(request_id);
                mm.release(peer, false);
                tracing::warn!(%peer, "unexpected answer to Infer: {other:?}");
                outcome = Err(ApiFailure::NoNode("a node answered out of protocol".into()));
                continue;
            }
            Err(e) => {
                mm.untrack(request_id);
                mm.release(peer, false);
                tracing::info!(%peer, "Infer failed: {e}");
                outcome = Err(ApiFailure::NoNode(format!(
                    "a node could not be reached: {e}"
                )));
                continue;
            }
        }
        usage.nodes.push(node.clone());
        let from = delivered.len();
        let segment_started = Instant::now();
        let segment = stream_segment(
            &ctx,
            &mut rx,
            &events,
            &node,
            &mut delivered,
            max_tokens,
            &mut first_token,
        )
        .await;
        mm.untrack(request_id);
        let served = delivered.len() - from;
        // Stalls, reported failures and protocol violations earn nothing.
        let honest = !matches!(segment, Segment::Cheated(_) | Segment::Failed(_));
        // Only a node whose last proof passed earns points for tokens.
        let verified = ctx.state.proof_valid(&peer);
        if served > 0 && honest && !verified {
            tracing::info!(%peer, "{served} tokens not credited: no valid proof");
        }
        if served > 0 && honest && verified {
            // No faster than the node's proven matmul rate makes plausible.
            let gflops = ctx
                .state
                .pof_history(&peer)
                .and_then(|h| h.standing.matmul_gflops)
                .unwrap_or(0.0);
            let secs = segment_started.elapsed().as_secs_f64();
            let creditable = entry.creditable(served as u64, secs, gflops);
            if creditable < served as u64 {
                tracing::warn!(
                    %peer,
                    "{served} tokens in {secs:.3} s exceed the plausible rate at {gflops:.2} GFLOP/s; crediting {creditable}"
                );
            }
            credits.push(Credit::tokens(
                format!("tokens:{}-{request_id}:{attempt}", mm.epoch),
                node.clone(),
                creditable,
            ));
        }
        match segment {
            Segment::Done(finish) => {
                mm.release(peer, true);
                outcome = Ok(finish);
                break;
            }
            Segment::Abandoned => {
                mm.release(peer, true);
                cancel(&ctx, peer, request_id);
                outcome = Err(ApiFailure::NoNode("the requester left".into()));
                break;
            }
            Segment::Left(why) | Segment::Failed(why) | Segment::Cheated(why) => {
                mm.release(peer, false);
                cancel(&ctx, peer, request_id);
                metrics.failovers.inc();
                usage.failovers += 1;
                tracing::warn!(%peer, "request {request_id} leaves its node after {} tokens: {why}", delivered.len());
                outcome = Err(ApiFailure::NoNode(format!(
                    "the nodes serving this request failed after {} tokens: {why}",
                    delivered.len()
                )));
            }
        }
    }
    usage.completion_tokens = u32::try_from(delivered.len()).unwrap_or(u32::MAX);
    metrics.tokens.inc_by(delivered.len() as u64);
    if let Some(first) = first_token {
        usage.ttft_ms = (first - started).as_secs_f64() * 1e3;
        let after = delivered.len().saturating_sub(1) as f64;
        let secs = first.elapsed().as_secs_f64();
        usage.tokens_per_s = if secs > 0.0 { after / secs } else { 0.0 };
    }
    // Durable before the requester hears "done".
    if !credits.is_empty() {
        if let Some(ledger) = ctx.state.ledger() {
            if let Err(e) = ledger.apply(credits).await {
                tracing::error!("crediting request {request_id}: {e}");
            }
        }
    }
    let last = match outcome {
        Ok(finish) => {
            metrics
                .inference_requests
                .get_or_create(&Outcome {
                    outcome: "completed",
                })
                .inc();
            ApiEvent::Done { finish, usage }
        }
        Err(f) => {
            metrics
                .inference_requests
                .get_or_create(&Outcome { outcome: "failed" })
                .inc();
            ApiEvent::Failed(f)
        }
    };
    let _ = events.send(last).await;
}

/// Streams one node's chunks to the requester until the node finishes,
/// fails, stalls, vanishes or cheats.
async fn stream_segment(
    ctx: &InferContext,
    rx: &mut mpsc::UnboundedReceiver<StreamEvent>,
    events: &mpsc::Sender<ApiEvent>,
    node: &str,
    delivered: &mut Vec<u32>,
    max_tokens: u32,
    first_token: &mut Option<Instant>,
) -> Segment {
    let mut got_any = false;
    loop {
        let wait = if got_any {
            ctx.config.stall_timeout
        } else {
            ctx.config.first_token_timeout
        };
        let event = tokio::select! {
            e = tokio::time::timeout(wait, rx.recv()) => e,
            () = events.closed() => return Segment::Abandoned,
        };
        let chunk = match event {
            Err(_) => return Segment::Failed(format!("no tokens for {} s", wait.as_secs())),
            Ok(None) | Ok(Some(StreamEvent::Gone)) => return Segment::Left("the node left".into()),
            Ok(Some(StreamEvent::Chunk(c))) => c,
        };
        got_any = true;
        if chunk.offset as usize != delivered.len() {
            return Segment::Cheated(format!(
                "chunk at offset {} after {} tokens",
                chunk.offset,
                delivered.len()
            ));
        }
        if delivered.len() + chunk.tokens.len() > max_tokens as usize {
            return Segment::Cheated(format!("more than the {max_tokens} tokens asked for"));
        }
        if !chunk.tokens.is_empty() && first_token.is_none() {
            *first_token = Some(Instant::now());
        }
        if !chunk.text.is_empty() || !chunk.tokens.is_empty() {
            let text = ApiEvent::Text {
                text: chunk.text,
                tokens: u32::try_from(chunk.tokens.len()).unwrap_or(u32::MAX),
                node: node.to_string(),
            };
            // Tokens count as delivered (and are credited) only once they
            // reached the requester.
            if events.send(text).await.is_err() {
                return Segment::Abandoned;
            }
        }
        delivered.extend_from_slice(&chunk.tokens);
        match chunk.end {
            None => {}
            Some(InferEnd::Done(d)) => return Segment::Done(d.finish),
            Some(InferEnd::Failed(why)) => return Segment::Failed(why),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(slots: u32, last_proof: Option<bool>, gflops: f64) -> Candidate {
        Candidate {
            peer: PeerId::random(),
            slots,
            last_proof,
            gflops,
        }
    }

    #[test]
    fn verified_and_least_loaded_first_never_a_failed_prover() {
        let m = Matchmaker::default();
        let failed = cand(4, Some(false), 100.0);
        let fresh = cand(1, None, 0.0);
        let slow = cand(2, Some(true), 5.0);
        let fast = cand(2, Some(true), 50.0);
        let all = vec![failed.clone(), fresh.clone(), slow.clone(), fast.clone()];
        let none = HashSet::new();
        // Verified and fastest first; then load spreads work.
        assert_eq!(m.reserve(&all, &none), Ok(fast.peer));
        assert_eq!(m.reserve(&all, &none), Ok(slow.peer));
        assert_eq!(m.reserve(&all, &none), Ok(fast.peer));
        assert_eq!(m.reserve(&all, &none), Ok(slow.peer));
        // Verified nodes full: the unverified one; never the failed one.
        assert_eq!(m.reserve(&all, &none), Ok(fresh.peer));
        assert_eq!(m.reserve(&all, &none), Err(NoNode::Unavailable));
        m.release(slow.peer, true);
        assert_eq!(m.reserve(&all, &none), Ok(slow.peer));
        assert_eq!(m.reserve(&[], &none), Err(NoNode::UnknownModel));
    }

    #[test]
    fn unreliable_nodes_come_after_reliable_ones_and_tried_ones_are_skipped() {
        let m = Matchmaker::default();
        let a = cand(8, Some(true), 10.0);
        let b = cand(8, Some(true), 10.0);
        let all = vec![a.clone(), b.clone()];
        let first = m.reserve(&all, &HashSet::new()).expect("a node");
        m.release(first, false);
        let other = if first == a.peer { b.peer } else { a.peer };
        assert_eq!(m.reserve(&all, &HashSet::new()), Ok(other));
        m.release(other, true);
        let exclude: HashSet<PeerId> = [other].into();
        assert_eq!(m.reserve(&all, &exclude), Ok(first));
    }

    #[test]
    fn a_node_that_left_gets_no_slot_back() {
        let m = Matchmaker::default();
        let a = cand(1, Some(true), 1.0);
        let peer = m
            .reserve(std::slice::from_ref(&a), &HashSet::new())
            .expect("a");
        m.node_gone(peer);
        m.release(peer, false);
        assert_eq!(m.load_of(&peer), (0, 0.0));
        assert!(m.loads.lock().expect("lock").is_empty(), "entry re-created");
    }

    #[test]
    fn chunks_reach_only_the_current_node_of_a_request() {
        let m = Matchmaker::default();
        let (a, b) = (PeerId::random(), PeerId::random());
        let mut rx = m.track(7, a, 1);
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
        assert_eq!(m.on_chunk(a, chunk(1)), Response::Ack);
        assert!(matches!(rx.try_recv(), Ok(StreamEvent::Chunk(_))));
        assert!(
            matches!(m.on_chunk(b, chunk(1)), Response::Error { .. }),
            "wrong node"
        );
        assert!(
            matches!(m.on_chunk(a, chunk(0)), Response::Error { .. }),
            "old attempt"
        );
        m.node_gone(a);
        assert!(matches!(rx.try_recv(), Ok(StreamEvent::Gone)));
        m.untrack(7);
        assert!(
            matches!(m.on_chunk(a, chunk(1)), Response::Error { .. }),
            "finished"
        );
    }
}
