//! Live figures of the network for the dashboard: `GET /api/stats` (the
//! latest sample and the history) and `GET /api/stats/stream` (server-sent
//! events: the history once, then a sample each interval).
//!
//! A sampler task ([`run`]) closes a sample every [`INTERVAL`]: nodes
//! online by kind and backend (from the registry), unique nodes seen in the
//! last 24 hours, the rates of the relay's own counters over the interval
//! (requests, tokens, embedded inputs, Proof-of-FLOPS outcomes, spot-check
//! outcomes: the same counters `/metrics` exports), the latencies that
//! [`Stats::observe`] collected (time to first token and whole request,
//! p50 and p95), and per model its nodes and throughput. Samples go into
//! two rings: the last hour at the interval and the last 24 hours a
//! minute each (a minute's own accumulator, so its percentiles are exact).
//! A sample holds counts, never a node's id or address.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::registry::NodeView;
use libp2p::PeerId;
use serde::Serialize;
use tokio::sync::broadcast;

use crate::metrics::Metrics;
use crate::state::RelayState;

/// How often a sample closes.
pub const INTERVAL: Duration = Duration::from_secs(2);
/// Samples of the fine ring: an hour at [`INTERVAL`].
const FINE: usize = 1800;
/// The coarse ring's resolution.
const COARSE_SPAN: Duration = Duration::from_secs(60);
/// Samples of the coarse ring: 24 hours of minutes.
const COARSE: usize = 1440;
/// How long a node counts as seen.
const DAY: Duration = Duration::from_secs(86_400);
/// Latencies kept per accumulator (the newest; a busier relay's
/// percentiles come from the last this many requests of the span).
const MAX_LATENCIES: usize = 10_000;

/// The 50th and 95th percentiles of the requests a sample saw.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Percentiles {
    /// Requests measured.
    pub n: u32,
    /// Median, milliseconds (`null` with no request).
    pub p50: Option<f64>,
    /// 95th percentile, milliseconds.
    pub p95: Option<f64>,
}

impl Percentiles {
    fn of(mut v: Vec<f64>) -> Self {
        v.retain(|x| x.is_finite());
        v.sort_by(f64::total_cmp);
        let at = |q: f64| {
            // Nearest rank (none of nothing).
            let rank = (q * v.len() as f64).ceil() as usize;
            v.get(rank.max(1) - 1).copied()
        };
        Self {
            n: u32::try_from(v.len()).unwrap_or(u32::MAX),
            p50: at(0.5),
            p95: at(0.95),
        }
    }
}

/// Nodes online in a sample.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct NodeCounts {
    /// Connected now.
    pub online: u32,
    /// By kind (`browser`, `native`).
    pub by_kind: BTreeMap<String, u32>,
    /// By the backend their engine runs on (`cpu`, `webgpu`; `none` for
    /// nodes that serve no model).
    pub by_backend: BTreeMap<String, u32>,
    /// Different nodes seen in the last 24 hours (while this relay ran).
    pub unique_24h: u32,
}

/// Outcomes counted in a sample's span.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Outcomes {
    /// Passed.
    pub passed: u64,
    /// Failed.
    pub failed: u64,
    /// Neither (spot checks whose checker did not answer properly).
    pub inconclusive: u64,
}

/// A model in a sample.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelStats {
    /// Its catalog id.
    pub id: String,
    /// Nodes serving it.
    pub nodes: u32,
    /// Requests completed per second over the span.
    pub requests_per_s: f64,
    /// Tokens generated per second over the span.
    pub tokens_per_s: f64,
}

/// The network over one span.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sample {
    /// When the span ended, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// Its length in seconds.
    pub seconds: f64,
    /// Nodes online at its end.
    pub nodes: NodeCounts,
    /// Generation requests completed per second.
    pub requests_per_s: f64,
    /// Generation requests failed per second.
    pub failed_per_s: f64,
    /// Generated tokens delivered per second.
    pub tokens_per_s: f64,
    /// Texts embedded per second.
    pub embeddings_per_s: f64,
    /// Time to the first token of the requests that completed in it.
    pub ttft_ms: Percentiles,
    /// Whole-request time of the requests that completed in it.
    pub latency_ms: Percentiles,
    /// Proof-of-FLOPS challenges that ended in it.
    pub pof: Outcomes,
    /// Spot checks that ended in it.
    pub checks: Outcomes,
    /// Per model of the catalog served now or in the span.
    pub models: Vec<ModelStats>,
}

/// The relay's counters, read at a span's ends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counters {
    completed: u64,
    failed: u64,
    tokens: u64,
    embeddings: u64,
    pof: [u64; 2],
    checks: [u64; 3],
}

impl Counters {
    fn read(m: &Metrics) -> Self {
        let outcome =
            |f: &prometheus_client::metrics::family::Family<
                crate::metrics::Outcome,
                prometheus_client::metrics::counter::Counter,
            >,
             name| f.get_or_create(&crate::metrics::outcome(name)).get();
        Self {
            completed: outcome(&m.inference_requests, "completed"),
            failed: outcome(&m.inference_requests, "failed"),
            tokens: m.tokens.get(),
            embeddings: m.embeddings.get(),
            pof: [outcome(&m.pof, "passed"), outcome(&m.pof, "failed")],
            checks: [
                outcome(&m.spot_checks, "passed"),
                outcome(&m.spot_checks, "failed"),
                outcome(&m.spot_checks, "inconclusive"),
            ],
        }
    }
}

/// What a span collects until it closes.
#[derive(Debug)]
struct Span {
    started: Instant,
    counters: Counters,
    ttft: Vec<f64>,
    latency: Vec<f64>,
    /// Per model id: requests completed and tokens.
    per_model: HashMap<String, (u64, u64)>,
}

impl Span {
    fn new(counters: Counters, now: Instant) -> Self {
        Self {
            started: now,
            counters,
            ttft: Vec::new(),
            latency: Vec::new(),
            per_model: HashMap::new(),
        }
    }

    fn observe(&mut self, model: &str, ttft_ms: Option<f64>, latency_ms: f64, tokens: u64) {
        if self.latency.len() < MAX_LATENCIES {
            self.latency.push(latency_ms);
            self.ttft.extend(ttft_ms);
        }
        let e = self.per_model.entry(model.to_owned()).or_default();
        e.0 += 1;
        e.1 += tokens;
    }

    /// The sample of this span, ended `now` with `counters` and `nodes`;
    /// `serving`: nodes per model id now.
    fn close(
        self,
        counters: Counters,
        now: Instant,
        at_ms: u64,
        nodes: NodeCounts,
        serving: &[(String, u32)],
    ) -> Sample {
        let seconds = now.duration_since(self.started).as_secs_f64().max(1e-3);
        let rate = |a: u64, b: u64| b.saturating_sub(a) as f64 / seconds;
        let d = |a: u64, b: u64| b.saturating_sub(a);
        let (c0, c1) = (self.counters, counters);
        let mut models: Vec<ModelStats> = serving
            .iter()
            .map(|(id, n)| {
                let (r, t) = self.per_model.get(id).copied().unwrap_or_default();
                ModelStats {
                    id: id.clone(),
                    nodes: *n,
                    requests_per_s: r as f64 / seconds,
                    tokens_per_s: t as f64 / seconds,
                }
            })
            .collect();
        for (id, (r, t)) in &self.per_model {
            if !models.iter().any(|m| m.id == *id) {
                models.push(ModelStats {
                    id: id.clone(),
                    nodes: 0,
                    requests_per_s: *r as f64 / seconds,
                    tokens_per_s: *t as f64 / seconds,
                });
            }
        }
        models.sort_by(|a, b| a.id.cmp(&b.id));
        Sample {
            at_ms,
            seconds,
            nodes,
            requests_per_s: rate(c0.completed, c1.completed),
            failed_per_s: rate(c0.failed, c1.failed),
            tokens_per_s: rate(c0.tokens, c1.tokens),
            embeddings_per_s: rate(c0.embeddings, c1.embeddings),
            ttft_ms: Percentiles::of(self.ttft),
            latency_ms: Percentiles::of(self.latency),
            pof: Outcomes {
                passed: d(c0.pof[0], c1.pof[0]),
                failed: d(c0.pof[1], c1.pof[1]),
                inconclusive: 0,
            },
            checks: Outcomes {
                passed: d(c0.checks[0], c1.checks[0]),
                failed: d(c0.checks[1], c1.checks[1]),
                inconclusive: d(c0.checks[2], c1.checks[2]),
            },
            models,
        }
    }
}

#[derive(Debug)]
struct Inner {
    fine_span: Span,
    coarse_span: Span,
    fine: VecDeque<Arc<Sample>>,
    coarse: VecDeque<Arc<Sample>>,
    /// When each node was last seen online.
    seen: HashMap<PeerId, Instant>,
}

/// What subscribers receive as the sampler closes a sample: the sample,
/// and the minute's when that closed with it.
#[derive(Debug, Clone)]
pub struct Closed {
    /// The fine sample.
    pub sample: Arc<Sample>,
    /// The coarse (minute) sample, when one closed.
    pub minute: Option<Arc<Sample>>,
}

/// The relay's live figures and their history.
#[derive(Debug)]
pub struct Stats {
    inner: Mutex<Inner>,
    samples: broadcast::Sender<Closed>,
}

impl Default for Stats {
    fn default() -> Self {
        let now = Instant::now();
        let (samples, _) = broadcast::channel(16);
        Self {
            inner: Mutex::new(Inner {
                fine_span: Span::new(Counters::default(), now),
                coarse_span: Span::new(Counters::default(), now),
                fine: VecDeque::new(),
                coarse: VecDeque::new(),
                seen: HashMap::new(),
            }),
            samples,
        }
    }
}

/// The history `GET /api/stats` answers.
#[derive(Debug, Clone, Serialize)]
pub struct History {
    /// Seconds between fine samples.
    pub interval_s: f64,
    /// The newest sample (`null` before the first closes).
    pub latest: Option<Arc<Sample>>,
    /// The last hour, oldest first.
    pub fine: Vec<Arc<Sample>>,
    /// The last 24 hours a minute each, oldest first.
    pub coarse: Vec<Arc<Sample>>,
}

impl Stats {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A generation request that completed: its model's catalog id, time
    /// to first token (none when it delivered none), whole time and tokens
    /// (also into `metrics`' histograms and per-model counter).
    pub fn observe(
        &self,
        metrics: &Metrics,
        model: &str,
        ttft_ms: Option<f64>,
        latency_ms: f64,
        tokens: u64,
    ) {
        if let Some(t) = ttft_ms {
            metrics.ttft_seconds.observe(t / 1e3);
        }
        metrics.request_seconds.observe(latency_ms / 1e3);
        metrics
            .model_tokens
            .get_or_create(&crate::metrics::ModelLabel {
                model: model.to_owned(),
            })
            .inc_by(tokens);
        let mut g = self.lock();
        g.fine_span.observe(model, ttft_ms, latency_ms, tokens);
        g.coarse_span.observe(model, ttft_ms, latency_ms, tokens);
    }

    /// Samples as they close (the stream's source).
    pub fn subscribe(&self) -> broadcast::Receiver<Closed> {
        self.samples.subscribe()
    }

    /// The latest sample and the history (`history`: with the rings).
    pub fn history(&self, history: bool) -> History {
        let g = self.lock();
        History {
            interval_s: INTERVAL.as_secs_f64(),
            latest: g.fine.back().cloned(),
            fine: if history {
                g.fine.iter().cloned().collect()
            } else {
                Vec::new()
            },
            coarse: if history {
                g.coarse.iter().cloned().collect()
            } else {
                Vec::new()
            },
        }
    }

    /// Closes the fine span (and the coarse one when a minute has passed)
    /// with the relay's state now (`nodes`: its nodes now), and sends the
    /// sample to subscribers.
    pub fn sample(&self, state: &RelayState, views: &[NodeView], at_ms: u64) -> Arc<Sample> {
        let now = Instant::now();
        let counters = Counters::read(&state.metrics);
        let serving: Vec<(String, u32)> = state
            .models()
            .into_iter()
            .map(|m| (m.id, u32::try_from(m.nodes).unwrap_or(u32::MAX)))
            .collect();
        let mut nodes = NodeCounts {
            online: u32::try_from(views.len()).unwrap_or(u32::MAX),
            ..NodeCounts::default()
        };
        for v in views {
            let kind = match v.kind {
                tabnode_core::NodeKind::Browser => "browser",
                tabnode_core::NodeKind::Native => "native",
            };
            *nodes.by_kind.entry(kind.into()).or_default() += 1;
            *nodes
                .by_backend
                .entry(v.backend.unwrap_or("none").into())
                .or_default() += 1;
        }
        let mut g = self.lock();
        for v in views {
            g.seen.insert(v.peer, now);
        }
        g.seen.retain(|_, t| now.duration_since(*t) < DAY);
        nodes.unique_24h = u32::try_from(g.seen.len()).unwrap_or(u32::MAX);
        let m = &state.metrics;
        m.unique_nodes_24h.set(i64::from(nodes.unique_24h));
        for backend in ["cpu", "webgpu", "none"] {
            let n = nodes.by_backend.get(backend).copied().unwrap_or(0);
            m.nodes_by_backend
                .get_or_create(&crate::metrics::BackendLabel { backend })
                .set(i64::from(n));
        }
        for model in &state.catalog.models {
            let n = serving
                .iter()
                .find(|(id, _)| *id == model.id)
                .map_or(0, |(_, n)| *n);
            m.model_nodes
                .get_or_create(&crate::metrics::ModelLabel {
                    model: model.id.clone(),
                })
                .set(i64::from(n));
        }
        let fine = std::mem::replace(&mut g.fine_span, Span::new(counters, now));
        let sample = Arc::new(fine.close(counters, now, at_ms, nodes.clone(), &serving));
        g.fine.push_back(sample.clone());
        while g.fine.len() > FINE {
            g.fine.pop_front();
        }
        let mut minute = None;
        if now.duration_since(g.coarse_span.started) >= COARSE_SPAN {
            let coarse = std::mem::replace(&mut g.coarse_span, Span::new(counters, now));
            let closed = Arc::new(coarse.close(counters, now, at_ms, nodes, &serving));
            g.coarse.push_back(closed.clone());
            while g.coarse.len() > COARSE {
                g.coarse.pop_front();
            }
            minute = Some(closed);
        }
        drop(g);
        // No subscriber is not an error.
        let _ = self.samples.send(Closed {
            sample: sample.clone(),
            minute,
        });
        sample
    }

    /// Starts the spans at the counters' present values (the relay's start:
    /// the first sample counts from here, not from zero).
    pub fn start(&self, metrics: &Metrics) {
        let now = Instant::now();
        let counters = Counters::read(metrics);
        let mut g = self.lock();
        g.fine_span = Span::new(counters, now);
        g.coarse_span = Span::new(counters, now);
    }
}

/// Closes a sample of the relay now and updates the node roster (both read
/// one listing of the nodes).
pub fn tick(state: &RelayState) -> (Arc<Sample>, crate::roster::NodesDelta) {
    let started = Instant::now();
    let at_ms = crate::now_ms();
    let views = state.registry.views();
    let sample = state.stats.sample(state, &views, at_ms);
    let delta = state.roster.tick(state, &views, at_ms);
    state
        .metrics
        .stats_sample_seconds
        .inc_by(started.elapsed().as_secs_f64());
    (sample, delta)
}

/// Samples the relay every `interval` (a task of the relay's, stopped with
/// it).
pub async fn run(state: Arc<RelayState>, interval: Duration) {
    state.stats.start(&state.metrics);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate: the span has just begun.
    tick.tick().await;
    loop {
        tick.tick().await;
        self::tick(&state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let p = Percentiles::of((1..=100).map(f64::from).collect());
        assert_eq!((p.n, p.p50, p.p95), (100, Some(50.0), Some(95.0)));
        let one = Percentiles::of(vec![7.0]);
        assert_eq!((one.p50, one.p95), (Some(7.0), Some(7.0)));
        let none = Percentiles::of(vec![f64::NAN]);
        assert_eq!((none.n, none.p50), (0, None));
        assert_eq!(Percentiles::of(Vec::new()), Percentiles::default());
    }

    #[test]
    fn a_span_turns_counter_deltas_into_rates() {
        let t0 = Instant::now();
        let mut span = Span::new(
            Counters {
                completed: 10,
                tokens: 100,
                ..Counters::default()
            },
            t0,
        );
        span.observe("m", Some(20.0), 100.0, 8);
        span.observe("m", None, 50.0, 0);
        let end = Counters {
            completed: 14,
            failed: 1,
            tokens: 140,
            embeddings: 6,
            pof: [2, 1],
            checks: [3, 0, 1],
        };
        let s = span.close(
            end,
            t0 + Duration::from_secs(2),
            1,
            NodeCounts::default(),
            &[("m".into(), 2), ("idle".into(), 1)],
        );
        assert_eq!(s.requests_per_s, 2.0);
        assert_eq!(s.failed_per_s, 0.5);
        assert_eq!(s.tokens_per_s, 20.0);
        assert_eq!(s.embeddings_per_s, 3.0);
        assert_eq!((s.pof.passed, s.pof.failed), (2, 1));
        assert_eq!((s.checks.passed, s.checks.inconclusive), (3, 1));
        assert_eq!(s.latency_ms.n, 2);
        assert_eq!(s.ttft_ms.p95, Some(20.0));
        assert_eq!(s.models.len(), 2);
        let m = s.models.iter().find(|m| m.id == "m").expect("m");
        assert_eq!((m.nodes, m.requests_per_s, m.tokens_per_s), (2, 1.0, 4.0));
    }
}
