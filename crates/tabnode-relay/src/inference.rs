//! Matchmaking and network inference.
//!
//! The [`Registry`](crate::registry::Registry) picks the node for a request
//! (never a node whose last proof failed; verified before unverified, then
//! least loaded, most reliable, fastest) and wakes waiting requests when
//! one becomes usable. `run_request` carries one request from a requester to the end: it
//! reserves a node, sends [`Request::Infer`], reassembles the node's
//! [`InferChunk`](tabnode_core::InferChunk)s into one stream, and when the node disappears, stalls,
//! fails or breaks the protocol, continues on another node from the tokens
//! already delivered (the new node gets them as
//! [`GenerateRequest::resume`]), so the requester sees one stream with
//! nothing lost or repeated. Tokens are credited to the nodes that produced
//! them, once per request and node, before the requester is told the
//! request is done.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use libp2p::PeerId;
use tabnode_core::infer::{FinishReason, GenerateRequest};
use tabnode_core::{ErrorCode, InferEnd, InferRequest, Request, Response};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::client::{SendError, SwarmClient};
use crate::ledger::Credit;
use crate::metrics::Outcome;
use crate::registry::NoNode;
use crate::sessions::StreamEvent;
use crate::state::RelayState;

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
    /// Generation, embedding and flow requests an hour per address without
    /// an API key (0: no limit).
    pub anonymous_per_hour: u32,
    /// Largest request body on the HTTP API.
    pub max_body_bytes: usize,
    /// Spot checks of served tokens.
    pub checks: crate::checks::CheckConfig,
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
            anonymous_per_hour: 100,
            max_body_bytes: 1 << 20,
            checks: crate::checks::CheckConfig::default(),
        }
    }
}

/// A request from the HTTP API.
#[derive(Debug, Clone)]
pub struct ApiRequest {
    /// The model (id or name).
    pub model: String,
    /// What to generate.
    pub request: GenerateRequest,
    /// The account paying (a request made with its API key); none for an
    /// anonymous request.
    pub account: Option<String>,
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
    /// The paying account has no points left.
    NoPoints(String),
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
    pub client: SwarmClient,
    pub config: InferConfig,
}

async fn send(ctx: &InferContext, peer: PeerId, request: Request) -> Result<Response, SendError> {
    ctx.client
        .request(peer, request, ctx.config.accept_timeout)
        .await
}

fn cancel(ctx: &InferContext, peer: PeerId, request_id: u64) {
    ctx.client.notify(peer, Request::InferCancel { request_id });
}

/// Who waits for a request: its events as they come, or only its end.
pub(crate) enum Requester {
    /// Every [`ApiEvent`], in order (a streamed answer, a flow's step).
    Events(mpsc::Sender<ApiEvent>),
    /// The whole answer at the end: the text is gathered here and sent
    /// once with the end, so the requester is woken once, not per event.
    Whole {
        /// The request's id (from `Started`).
        request_id: u64,
        /// The text so far.
        text: String,
        /// Taken when the end is sent.
        answer: Option<oneshot::Sender<Whole>>,
    },
}

/// A request's whole answer ([`Requester::Whole`]).
#[derive(Debug)]
pub(crate) struct Whole {
    /// The relay's id of the request (0 when it failed before a node took
    /// it).
    pub request_id: u64,
    /// The text delivered.
    pub text: String,
    /// How it ended (what `Done` or `Failed` carries).
    pub end: Result<(FinishReason, Usage), ApiFailure>,
}

/// The requester stopped waiting.
#[derive(Debug)]
struct Gone;

impl Requester {
    /// A requester of the whole answer, and where it arrives.
    pub(crate) fn whole() -> (Self, oneshot::Receiver<Whole>) {
        let (tx, rx) = oneshot::channel();
        let requester = Requester::Whole {
            request_id: 0,
            text: String::new(),
            answer: Some(tx),
        };
        (requester, rx)
    }

    /// Tells the requester `event`.
    async fn tell(&mut self, event: ApiEvent) -> Result<(), Gone> {
        match self {
            Requester::Events(tx) => tx.send(event).await.map_err(|_| Gone),
            Requester::Whole {
                request_id,
                text,
                answer,
            } => {
                let end = match event {
                    ApiEvent::Started { request_id: id, .. } => {
                        *request_id = id;
                        None
                    }
                    ApiEvent::Text { text: t, .. } => {
                        text.push_str(&t);
                        None
                    }
                    ApiEvent::Done { finish, usage } => Some(Ok((finish, usage))),
                    ApiEvent::Failed(f) => Some(Err(f)),
                };
                let Some(end) = end else {
                    return match answer {
                        Some(a) if !a.is_closed() => Ok(()),
                        _ => Err(Gone),
                    };
                };
                let whole = Whole {
                    request_id: *request_id,
                    text: std::mem::take(text),
                    end,
                };
                answer.take().ok_or(Gone)?.send(whole).map_err(|_| Gone)
            }
        }
    }

    /// Resolves when the requester stops waiting.
    async fn closed(&mut self) {
        match self {
            Requester::Events(tx) => tx.closed().await,
            Requester::Whole {
                answer: Some(a), ..
            } => a.closed().await,
            Requester::Whole { answer: None, .. } => {}
        }
    }
}

/// Waits for a node for the catalog model `model`, at most the queue
/// timeout.
pub(crate) async fn acquire(
    ctx: &InferContext,
    model: &str,
    exclude: &HashSet<PeerId>,
) -> Result<crate::registry::Slot, NoNode> {
    let registry = &ctx.state.registry;
    registry
        .take_within(ctx.config.queue_timeout, |r| {
            match r.reserve(model, exclude) {
                // The nodes tried have left and no other serves the model
                // now: one may join (or come back) before the wait is over.
                Err(NoNode::UnknownModel) if !exclude.is_empty() => Err(NoNode::Unavailable),
                taken => taken,
            }
        })
        .await
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

/// Carries `api` to its end, reporting to `requester`. Never panics; every
/// outcome ends with `Done` or `Failed`.
pub(crate) async fn run_request(ctx: InferContext, api: ApiRequest, mut requester: Requester) {
    let sessions = &ctx.state.sessions;
    let registry = &ctx.state.registry;
    let metrics = &ctx.state.metrics;
    let request_id = sessions.next_request_id();
    let Some(entry) = ctx.state.catalog.find(&api.model) else {
        metrics
            .inference_requests
            .get_or_create(&Outcome { outcome: "failed" })
            .inc();
        let failed = ApiEvent::Failed(ApiFailure::UnknownModel(api.model.clone()));
        let _ = requester.tell(failed).await;
        return;
    };
    let model = entry.id.clone();
    // A paying account needs points to start.
    if let Some(why) = api
        .account
        .as_deref()
        .and_then(|a| crate::accounts::broke(&ctx.state, a))
    {
        let failed = ApiEvent::Failed(ApiFailure::NoPoints(why));
        let _ = requester.tell(failed).await;
        return;
    }
    let started = Instant::now();
    let max_tokens = api.request.max_tokens;
    let mut delivered: Vec<u32> = Vec::new();
    let mut exclude = HashSet::new();
    let mut credits = Vec::new();
    // Who delivered which tokens (and the credit each part earned), for a
    // spot check of the whole completion.
    let mut parts: Vec<crate::checks::Part> = Vec::new();
    let mut usage = Usage::default();
    let mut first_token: Option<Instant> = None;
    let mut told_started = false;
    let mut outcome: Result<FinishReason, ApiFailure> =
        Err(ApiFailure::NoNode("no node could serve the request".into()));
    for attempt in 0..ctx.config.max_attempts.max(1) {
        let slot = match acquire(&ctx, &model, &exclude).await {
            Ok(s) => s,
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
        let peer = slot.peer;
        exclude.insert(peer);
        let node = slot.id.to_string();
        let mut request = api.request.clone();
        request.resume = delivered.clone();
        let mut rx = sessions.track(request_id, peer, attempt);
        // Nodes know their models by name (the catalog's ids are the
        // relay's).
        let infer = InferRequest {
            request_id,
            attempt,
            model: entry.name.clone(),
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
                    if requester.tell(started).await.is_err() {
                        sessions.untrack(request_id);
                        cancel(&ctx, peer, request_id);
                        registry.release(slot, true);
                        return;
                    }
                }
            }
            Ok(Response::Error { code, message }) => {
                sessions.untrack(request_id);
                registry.release(slot, true);
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
                sessions.untrack(request_id);
                registry.release(slot, false);
                tracing::warn!(%peer, "unexpected answer to Infer: {other:?}");
                outcome = Err(ApiFailure::NoNode("a node answered out of protocol".into()));
                continue;
            }
            Err(e) => {
                sessions.untrack(request_id);
                registry.release(slot, false);
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
            &mut requester,
            &node,
            &mut delivered,
            max_tokens,
            &mut first_token,
        )
        .await;
        sessions.untrack(request_id);
        let served = delivered.len() - from;
        if served > 0 {
            parts.push(crate::checks::Part {
                peer,
                from,
                credit: None,
            });
        }
        // Stalls, reported failures and protocol violations earn nothing.
        let honest = !matches!(segment, Segment::Cheated(_) | Segment::Failed(_));
        // Only a node whose last proof passed earns points for tokens.
        let verified = ctx.state.proof_valid(&peer);
        if served > 0 && honest && !verified {
            tracing::info!(%peer, "{served} tokens not credited: no valid proof");
        }
        if served > 0 && honest && verified {
            // No faster than the node's proven matmul rate makes plausible.
            let gflops = ctx.state.registry.proven_gflops(&peer).unwrap_or(0.0);
            let secs = segment_started.elapsed().as_secs_f64();
            let creditable = entry.creditable(served as u64, secs, gflops);
            if creditable < served as u64 {
                tracing::warn!(
                    %peer,
                    "{served} tokens in {secs:.3} s exceed the plausible rate at {gflops:.2} GFLOP/s; crediting {creditable}"
                );
            }
            let id = format!("tokens:{}-{request_id}:{attempt}", sessions.epoch);
            if let Some(part) = parts.last_mut() {
                part.credit = Some((id.clone(), creditable));
            }
            credits.push(Credit::tokens(id, node.clone(), creditable));
        }
        ctx.state.roster.served(
            &node,
            crate::roster::ServedRequest {
                at_ms: crate::now_ms(),
                request_id,
                model: model.clone(),
                tokens: served as u64,
                seconds: segment_started.elapsed().as_secs_f64(),
                outcome: match segment {
                    Segment::Done(_) => "completed",
                    Segment::Abandoned => "abandoned",
                    Segment::Left(_) | Segment::Failed(_) | Segment::Cheated(_) => "failed",
                },
            },
        );
        match segment {
            Segment::Done(finish) => {
                registry.release(slot, true);
                outcome = Ok(finish);
                break;
            }
            Segment::Abandoned => {
                registry.release(slot, true);
                cancel(&ctx, peer, request_id);
                outcome = Err(ApiFailure::NoNode("the requester left".into()));
                break;
            }
            Segment::Left(why) | Segment::Failed(why) | Segment::Cheated(why) => {
                registry.release(slot, false);
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
    if outcome.is_ok() {
        ctx.state.stats.observe(
            &ctx.state.metrics,
            &model,
            first_token.map(|_| usage.ttft_ms),
            started.elapsed().as_secs_f64() * 1e3,
            delivered.len() as u64,
        );
    }
    // The paying account is charged what it got.
    if let (Some(account), Ok(_)) = (&api.account, &outcome) {
        credits.push(Credit::spend(
            format!("spend:{}-{request_id}", sessions.epoch),
            account.clone(),
            u64::from(usage.prompt_tokens) + delivered.len() as u64,
            entry
                .price
                .of(u64::from(usage.prompt_tokens), delivered.len() as u64),
        ));
    }
    // A completed request may be spot-checked, failed over or not (a node
    // that fails on purpose after lying is checked all the same).
    let checkable = outcome.is_ok().then(|| crate::checks::Served {
        request_id,
        model_id: model,
        model_name: entry.name.clone(),
        request: api.request,
        tokens: delivered,
        parts,
    });
    // Durable before the requester hears "done".
    if !credits.is_empty() {
        if let Some(ledger) = ctx.state.ledger() {
            if let Err(e) = ledger.apply(credits).await {
                tracing::error!("crediting request {request_id}: {e}");
            }
        }
    }
    if let Some(served) = checkable {
        crate::checks::after_request(&ctx, served);
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
    let _ = requester.tell(last).await;
}

/// Streams one node's chunks to the requester until the node finishes,
/// fails, stalls, vanishes or cheats.
async fn stream_segment(
    ctx: &InferContext,
    rx: &mut mpsc::UnboundedReceiver<StreamEvent>,
    requester: &mut Requester,
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
            () = requester.closed() => return Segment::Abandoned,
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
            if requester.tell(text).await.is_err() {
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
