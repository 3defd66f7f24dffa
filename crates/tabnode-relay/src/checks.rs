//! Spot-checked inference (issue #16): after a request completes, the
//! relay draws whether to check it (`CheckConfig::rate`, more for a node
//! with few requests behind it, every request of a node with a strike) and
//! has another node (one that scores, never the node itself nor, unless a
//! test allows it, one at the same address) read the prompt and the
//! delivered tokens in one teacher-forced pass
//! ([`tabnode_core::check`]). A failed check is a strike: the request's
//! credit is taken back (an idempotent debit in the ledger) and, at
//! `CheckConfig::strikes_to_exclude`, the node is excluded from work and
//! points (`Registry::exclude`). A failure is confirmed by a second
//! checker where one exists (one that passes the tokens makes the check
//! disputed, not a strike). A conclusive check earns the checker points.
//! Each check is recorded (`GET /api/checks`); strikes are durable as the
//! ledger's clawbacks (one per strike, zero points for a request that
//! earned none), from which a restarted relay restores them.
//!
//! Only requests served whole by one node are checked (a failover's
//! segments would need the blame split).

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use serde::Serialize;
use tabnode_core::check::{judge, CheckPolicy, Closeness, ScoreRequest, Verdict};
use tabnode_core::infer::GenerateRequest;
use tabnode_core::{Request, Response};

use crate::inference::InferContext;
use crate::ledger::Credit;
use crate::now_ms;

/// How requests are spot-checked.
#[derive(Debug, Clone)]
pub struct CheckConfig {
    /// The share of an established node's requests checked.
    pub rate: f64,
    /// The share checked while a node has served fewer than
    /// `new_node_requests`.
    pub new_node_rate: f64,
    /// Requests after which a node is established.
    pub new_node_requests: u64,
    /// Failed checks after which a node is excluded.
    pub strikes_to_exclude: u32,
    /// What a check accepts.
    pub policy: CheckPolicy,
    /// How long a checker may take.
    pub timeout: Duration,
    /// Lets a node at the served node's address check it (tests on one
    /// machine only: otherwise one person's two nodes could vouch for each
    /// other).
    pub same_address: bool,
}

impl Default for CheckConfig {
    fn default() -> Self {
        Self {
            rate: 0.03,
            new_node_rate: 0.25,
            new_node_requests: 20,
            strikes_to_exclude: 3,
            policy: CheckPolicy::default(),
            timeout: Duration::from_secs(60),
            same_address: false,
        }
    }
}

/// A node's spot-check record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CheckStanding {
    /// Its completed single-node requests seen.
    pub requests: u64,
    /// Checks of its tokens passed.
    pub passed: u32,
    /// Checks failed (strikes).
    pub failed: u32,
    /// Whether it is excluded from work and points.
    pub excluded: bool,
    /// Checks it ran for others.
    pub checked_for_others: u32,
}

/// How a check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Every token plausible.
    Passed,
    /// A token implausible: a strike.
    Failed,
    /// The checker did not answer properly (not the served node's fault).
    Inconclusive,
}

/// One check, as `/api/checks` lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckRecord {
    /// When it ended, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The checked request.
    pub request_id: u64,
    /// Its catalog model.
    pub model: String,
    /// The node it counts for: the one that delivered the first
    /// implausible token of a failed request, else the first that served.
    pub served_by: String,
    /// Every node that delivered a part of it, in order (more than one
    /// after a failover).
    pub nodes: Vec<String>,
    /// The node that checked it.
    pub checker: String,
    /// Tokens checked.
    pub tokens: usize,
    /// How it ended.
    pub outcome: Outcome,
    /// The first implausible token's place, for a failed check.
    pub position: Option<usize>,
    /// How near the completion came to the limits (the first checker's
    /// scores; none for an inconclusive check).
    pub closeness: Option<Closeness>,
    /// Why it failed or was inconclusive.
    pub reason: Option<String>,
    /// The second checker that confirmed a failure (none where no other
    /// node could).
    pub confirmed_by: Option<String>,
    /// Milliseconds the checkers took.
    pub ms: u64,
}

/// How many checks `/api/checks` keeps.
const RECENT: usize = 1000;

#[derive(Debug, Default)]
struct Inner {
    nodes: HashMap<PeerId, CheckStanding>,
    recent: VecDeque<CheckRecord>,
}

/// The relay's spot checks: each node's record and the recent checks.
#[derive(Debug, Default)]
pub struct Checks {
    inner: Mutex<Inner>,
}

impl Checks {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a completed request of `peer` and draws whether to check it
    /// (public for the detection benchmark, which runs the relay's own
    /// draws).
    pub fn draw(&self, peer: PeerId, config: &CheckConfig) -> bool {
        let mut g = self.lock();
        let s = g.nodes.entry(peer).or_default();
        s.requests += 1;
        let rate = if s.failed > 0 {
            1.0
        } else if s.requests <= config.new_node_requests {
            config.new_node_rate
        } else {
            config.rate
        };
        rand::random::<f64>() < rate
    }

    /// Records `r` for the nodes it counts for (`served`: every node that
    /// delivered a part of a passed request; the blamed node of a failed
    /// one): the most strikes one of them has after it.
    pub fn record(&self, served: &[PeerId], checker: PeerId, r: CheckRecord) -> u32 {
        let mut g = self.lock();
        let mut strikes = 0;
        for peer in served {
            let s = g.nodes.entry(*peer).or_default();
            match r.outcome {
                Outcome::Passed => s.passed += 1,
                Outcome::Failed => s.failed += 1,
                Outcome::Inconclusive => {}
            }
            strikes = strikes.max(s.failed);
        }
        if r.outcome != Outcome::Inconclusive {
            g.nodes.entry(checker).or_default().checked_for_others += 1;
        }
        g.recent.push_back(r);
        while g.recent.len() > RECENT {
            g.recent.pop_front();
        }
        strikes
    }

    fn mark_excluded(&self, peer: PeerId) {
        self.lock().nodes.entry(peer).or_default().excluded = true;
    }

    /// A node's strikes as a previous run of the relay left them (the
    /// ledger's clawbacks), excluded at `strikes_to_exclude`.
    pub fn restore(&self, peer: PeerId, strikes: u32, strikes_to_exclude: u32) {
        let mut g = self.lock();
        let s = g.nodes.entry(peer).or_default();
        s.failed = s.failed.max(strikes);
        s.excluded |= s.failed >= strikes_to_exclude;
    }

    /// Every node's record, by peer id.
    pub fn standings(&self) -> HashMap<String, CheckStanding> {
        self.lock()
            .nodes
            .iter()
            .map(|(p, s)| (p.to_string(), s.clone()))
            .collect()
    }

    /// One node's record (if it has one) and its failed checks among the
    /// recent ones, newest first: its strikes as `/api/ledger/{peer}`
    /// shows them.
    pub fn of(&self, peer: &PeerId) -> (Option<CheckStanding>, Vec<CheckRecord>) {
        let g = self.lock();
        let id = peer.to_string();
        let strikes = g
            .recent
            .iter()
            .rev()
            .filter(|r| r.served_by == id && r.outcome == Outcome::Failed)
            .cloned()
            .collect();
        (g.nodes.get(peer).cloned(), strikes)
    }

    /// The newest `limit` checks, newest first.
    pub fn recent(&self, limit: usize) -> Vec<CheckRecord> {
        self.lock()
            .recent
            .iter()
            .rev()
            .take(limit)
            .cloned()
            .collect()
    }
}

/// A completed request as a check needs it: the whole completion and
/// which node delivered which part (more than one after a failover).
#[derive(Debug, Clone)]
pub(crate) struct Served {
    pub request_id: u64,
    /// The catalog id and the name nodes know the model by.
    pub model_id: String,
    pub model_name: String,
    /// The request as the first node got it.
    pub request: GenerateRequest,
    /// What the nodes delivered, in order.
    pub tokens: Vec<u32>,
    /// Who delivered them: parts in order, each from its first token on.
    pub parts: Vec<Part>,
}

/// The tokens one node delivered of a request.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Part {
    pub peer: PeerId,
    /// The place of its first token in the completion.
    pub from: usize,
    /// Its credit (id and tokens credited), if it earned one.
    pub credit: Option<(String, u64)>,
}

impl Served {
    /// The nodes that delivered tokens, each once, in order.
    fn peers(&self) -> Vec<PeerId> {
        let mut peers: Vec<PeerId> = Vec::new();
        for p in &self.parts {
            if !peers.contains(&p.peer) {
                peers.push(p.peer);
            }
        }
        peers
    }

    /// The part that delivered the token at `position`.
    fn part_at(&self, position: usize) -> Option<&Part> {
        self.parts.iter().rev().find(|p| p.from <= position)
    }
}

/// Draws whether to check `served` and, if so, checks it in a task of its
/// own. Every node that delivered part of it counts the request; it is
/// checked if any of their draws says so (a node under suspicion is
/// checked every time, alone or with others).
pub(crate) fn after_request(ctx: &InferContext, served: Served) {
    if served.tokens.is_empty() || served.parts.is_empty() {
        return;
    }
    // Every node draws (each counts the request), not only up to the
    // first that says yes.
    let mut drawn = false;
    for p in served.peers() {
        drawn |= ctx.state.checks.draw(p, &ctx.config.checks);
    }
    if drawn {
        tokio::spawn(check(ctx.clone(), served));
    }
}

/// A checker's reading of `served`: who, its verdict (or why it gave
/// none), and how long it took; `None` when no checker other than
/// `others` could be had within the check's time limit.
async fn score_on(
    ctx: &InferContext,
    served: &Served,
    others: &[PeerId],
) -> Option<(PeerId, Result<(Verdict, Closeness), String>, u64)> {
    let config = &ctx.config.checks;
    let state = &ctx.state;
    // A checker, waiting (at most the check's time limit) for one to be
    // free.
    let served_by = served.peers();
    let slot = state
        .registry
        .take_within(config.timeout, |r| {
            r.reserve_checker(&served.model_id, &served_by, others, config.same_address)
        })
        .await
        .ok()?;
    let checker = slot.peer;
    let started = Instant::now();
    let request = Request::Score(Box::new(ScoreRequest {
        request_id: served.request_id,
        model: served.model_name.clone(),
        request: served.request.clone(),
        tokens: served.tokens.clone(),
    }));
    let answer = ctx.client.request(checker, request, config.timeout).await;
    let verdict = match answer {
        Ok(Response::Scored(scores)) if scores.len() == served.tokens.len() => {
            state.registry.release(slot, true);
            Ok((
                judge(&served.request, &served.tokens, &scores, &config.policy),
                Closeness::of(&served.request, &served.tokens, &scores),
            ))
        }
        Ok(Response::Scored(scores)) => {
            state.registry.release(slot, false);
            Err(format!(
                "the checker scored {} of {} tokens",
                scores.len(),
                served.tokens.len()
            ))
        }
        Ok(other) => {
            state.registry.release(slot, false);
            Err(format!("the checker answered {other:?}"))
        }
        Err(e) => {
            state.registry.release(slot, false);
            Err(format!("the checker did not answer: {e}"))
        }
    };
    let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    Some((checker, verdict, ms))
}

/// Checks `served` on another node, and acts on the verdict. A failure is
/// confirmed by a second checker where there is one (a checker that lies
/// cannot strike an honest node alone); where the second passes the
/// tokens, the check is disputed and counts as inconclusive.
async fn check(ctx: InferContext, served: Served) {
    let config = &ctx.config.checks;
    let state = &ctx.state;
    let Some((checker, verdict, mut ms)) = score_on(&ctx, &served, &[]).await else {
        tracing::info!(
            "request {} not checked: no other node scored {} in time",
            served.request_id,
            served.model_id
        );
        return;
    };
    let mut confirmed_by = None;
    let closeness = verdict.as_ref().ok().map(|(_, c)| *c);
    let mut verdict = verdict.map(|(v, _)| v);
    if let Ok(Verdict::Fail { .. }) = &verdict {
        if let Some((second, again, more)) = score_on(&ctx, &served, &[checker]).await {
            ms += more;
            match again.map(|(v, _)| v) {
                Ok(Verdict::Fail { .. }) => confirmed_by = Some(second.to_string()),
                Ok(Verdict::Pass) => {
                    verdict = Err(format!(
                        "disputed: {second} passed the tokens {checker} failed"
                    ));
                }
                // The second checker broke down: the first's word stands.
                Err(_) => {}
            }
        }
    }
    let (outcome, position, reason) = match &verdict {
        Ok(Verdict::Pass) => (Outcome::Passed, None, None),
        Ok(Verdict::Fail { position, reason }) => {
            (Outcome::Failed, Some(*position), Some(reason.clone()))
        }
        Err(why) => (Outcome::Inconclusive, None, Some(why.clone())),
    };
    // A failure is the fault of the node that delivered the first
    // implausible token; a pass clears every node that delivered a part.
    let peers = served.peers();
    let blamed = position.and_then(|p| served.part_at(p)).cloned();
    let counted: Vec<PeerId> = match (&blamed, outcome) {
        (Some(part), Outcome::Failed) => vec![part.peer],
        _ => peers.clone(),
    };
    let Some(&served_by) = counted.first() else {
        return;
    };
    let record = CheckRecord {
        at_ms: now_ms(),
        request_id: served.request_id,
        model: served.model_id.clone(),
        served_by: served_by.to_string(),
        nodes: peers.iter().map(PeerId::to_string).collect(),
        checker: checker.to_string(),
        tokens: served.tokens.len(),
        outcome,
        position,
        closeness: closeness.filter(|_| outcome != Outcome::Inconclusive),
        reason: reason.clone(),
        confirmed_by,
        ms,
    };
    // The ledger first (the checker's credit, the clawback), then the
    // record: what `/api/checks` lists is already paid and taken back.
    let mut credits = Vec::new();
    if outcome != Outcome::Inconclusive && state.proof_valid(&checker) {
        credits.push(Credit::check(
            format!("check:{}:{served_by}", served.request_id),
            checker.to_string(),
            served.tokens.len() as u64,
        ));
    }
    let struck = blamed.filter(|_| outcome == Outcome::Failed);
    if let Some(part) = &struck {
        // The strike is recorded in the ledger either way (a request that
        // earned nothing is debited nothing): a restarted relay counts the
        // node's strikes from there.
        let (id, tokens) = part.credit.clone().unwrap_or_else(|| {
            (
                format!(
                    "uncredited:{}:{}:{}",
                    served.request_id, part.peer, part.from
                ),
                0,
            )
        });
        credits.push(Credit::clawback(&id, part.peer.to_string(), tokens));
    }
    if !credits.is_empty() {
        if let Some(ledger) = state.ledger() {
            if let Err(e) = ledger.apply(credits).await {
                tracing::error!("recording the check of request {}: {e}", served.request_id);
            }
        }
    }
    let strikes = state.checks.record(&counted, checker, record);
    state.metrics.record_check(outcome);
    if let Some(part) = struck {
        let peer = part.peer;
        tracing::warn!(
            %peer,
            "request {} failed its spot check (strike {strikes}): {}",
            served.request_id,
            reason.unwrap_or_default()
        );
        if strikes >= config.strikes_to_exclude {
            tracing::warn!(%peer, "excluded after {strikes} failed spot checks");
            state.registry.exclude(peer);
            state.checks.mark_excluded(peer);
        }
    }
}
