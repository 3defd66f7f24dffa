//! The relay's metrics: one `prometheus-client` registry holding the
//! relay's own counters and gauges, the codec's refusals (a collector read
//! at each scrape) and libp2p's recorders (swarm, identify, ping, relay),
//! served as OpenMetrics text on `/metrics`.

use std::fmt;
use std::sync::Arc;

use libp2p::metrics::Recorder;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tabnode_core::codec::CodecStats;

/// The content type of [`Metrics::encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A `kind` label (`browser`, `native`, ...).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Kind {
    /// The value.
    pub kind: &'static str,
}

/// An `event` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Event {
    /// The value.
    pub event: &'static str,
}

/// An `outcome` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    /// The value.
    pub outcome: &'static str,
}

/// A `direction` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Direction {
    /// The value.
    pub direction: &'static str,
}

/// A `backend` label (`cpu`, `webgpu`, `none`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabel {
    /// The value.
    pub backend: &'static str,
}

/// A `model` label (a catalog id).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabel {
    /// The value.
    pub model: String,
}

/// Request durations' buckets: 10 ms to about 80 s, doubling.
fn seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 14))
}

/// `outcome = name`.
pub fn outcome(name: &'static str) -> Outcome {
    Outcome { outcome: name }
}

/// Every metric the relay exports. The handles are cheap clones of what
/// the registry holds: update them anywhere, without locks.
pub struct Metrics {
    registry: Registry,
    libp2p: libp2p::metrics::Metrics,
    /// Nodes connected now, by kind (set at each scrape).
    pub nodes: Family<Kind, Gauge>,
    /// Connections `opened` and `closed`.
    pub connections: Family<Event, Counter>,
    /// Identities turned away: too many from one address.
    pub identities_refused: Counter,
    /// Circuit reservations held now (set at each scrape).
    pub reservations: Gauge,
    /// Reservation requests: `accepted`, `denied`, `timed_out`.
    pub reservation_events: Family<Outcome, Counter>,
    /// Relayed circuits open now.
    pub circuits: Gauge,
    /// Circuit requests: `opened`, `closed`, `denied`.
    pub circuit_events: Family<Outcome, Counter>,
    /// Protocol messages, `in` and `out`.
    pub messages: Family<Direction, Counter>,
    /// Inbound protocol streams that failed after being read.
    pub protocol_errors: Counter,
    /// Peers' requests other than token chunks refused for their rate (120
    /// a minute per peer).
    pub control_refused: Counter,
    /// Nodes with a link up (`tabnode_core::link`).
    pub links: Gauge,
    /// Frames over the nodes' links, `in` and `out`.
    pub link_frames: Family<Direction, Counter>,
    /// Links asked whether they still work when their node registered
    /// without them: `alive` (kept) or `replaced`.
    pub link_checks: Family<Outcome, Counter>,
    /// What the codec refused (malformed, oversized, truncated).
    pub codec: Arc<CodecStats>,
    /// Proof-of-FLOPS results: `passed`, `failed`.
    pub pof: Family<Outcome, Counter>,
    /// Chat requests: `completed`, `failed`.
    pub inference_requests: Family<Outcome, Counter>,
    /// Times a request moved to another node.
    pub failovers: Counter,
    /// Generated tokens delivered to requesters.
    pub tokens: Counter,
    /// Texts embedded for requesters.
    pub embeddings: Counter,
    /// Nodes connected now by the backend of their engine (set at each
    /// stats sample).
    pub nodes_by_backend: Family<BackendLabel, Gauge>,
    /// Different nodes seen in the last 24 hours (set at each sample).
    pub unique_nodes_24h: Gauge,
    /// Nodes serving each catalog model (set at each sample).
    pub model_nodes: Family<ModelLabel, Gauge>,
    /// Generated tokens of completed requests, by model.
    pub model_tokens: Family<ModelLabel, Counter>,
    /// Time to the first token of completed requests, seconds.
    pub ttft_seconds: Histogram,
    /// Whole time of completed requests, seconds.
    pub request_seconds: Histogram,
    /// Spot checks: `passed`, `failed`, `inconclusive`.
    pub spot_checks: Family<Outcome, Counter>,
    /// Seconds spent closing stats samples and updating the node roster.
    pub stats_sample_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
    /// Seconds spent writing the stats stream's events for subscribers.
    pub stats_stream_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// The codec's refusals, read at each scrape.
#[derive(Debug)]
struct Malformed(Arc<CodecStats>);

impl Collector for Malformed {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let counter = ConstCounter::new(self.0.rejected());
        let metric = encoder.encode_descriptor(
            "tabnode_malformed_messages",
            "Inbound messages the codec refused (malformed, oversized, truncated).",
            None,
            counter.metric_type(),
        )?;
        counter.encode(metric)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let libp2p = libp2p::metrics::Metrics::new(&mut registry);
        let m = Self {
            libp2p,
            nodes: Family::default(),
            connections: Family::default(),
            identities_refused: Counter::default(),
            reservations: Gauge::default(),
            reservation_events: Family::default(),
            circuits: Gauge::default(),
            circuit_events: Family::default(),
            messages: Family::default(),
            protocol_errors: Counter::default(),
            control_refused: Counter::default(),
            links: Gauge::default(),
            link_frames: Family::default(),
            link_checks: Family::default(),
            codec: Arc::default(),
            pof: Family::default(),
            inference_requests: Family::default(),
            failovers: Counter::default(),
            tokens: Counter::default(),
            embeddings: Counter::default(),
            stats_sample_seconds: Counter::default(),
            stats_stream_seconds: Counter::default(),
            nodes_by_backend: Family::default(),
            unique_nodes_24h: Gauge::default(),
            model_nodes: Family::default(),
            model_tokens: Family::default(),
            ttft_seconds: seconds_histogram(),
            request_seconds: seconds_histogram(),
            spot_checks: Family::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "tabnode_nodes",
            "Nodes connected to the relay.",
            m.nodes.clone(),
        );
        r.register(
            "tabnode_connections",
            "Connections opened and closed.",
            m.connections.clone(),
        );
        r.register(
            "tabnode_identities_refused",
            "Connections closed: too many identities from one address.",
            m.identities_refused.clone(),
        );
        r.register(
            "tabnode_reservations",
            "Active circuit reservations.",
            m.reservations.clone(),
        );
        r.register(
            "tabnode_reservation_events",
            "Reservation requests by outcome.",
            m.reservation_events.clone(),
        );
        r.register(
            "tabnode_circuits",
            "Open relayed circuits.",
            m.circuits.clone(),
        );
        r.register(
            "tabnode_circuit_events",
            "Circuit requests by outcome.",
            m.circuit_events.clone(),
        );
        r.register(
            "tabnode_messages",
            "Protocol messages handled by the relay.",
            m.messages.clone(),
        );
        r.register(
            "tabnode_protocol_errors",
            "Inbound protocol streams that failed after being read.",
            m.protocol_errors.clone(),
        );
        r.register(
            "tabnode_control_refused",
            "Peers' requests other than token chunks refused for their rate (per peer).",
            m.control_refused.clone(),
        );
        r.register(
            "tabnode_links",
            "Nodes with a link (one long-lived stream for their requests) up.",
            m.links.clone(),
        );
        r.register(
            "tabnode_link_frames",
            "Frames over the nodes' links.",
            m.link_frames.clone(),
        );
        r.register(
            "tabnode_link_checks",
            "Links asked whether they still work when their node registered without them, by outcome (alive: kept, replaced).",
            m.link_checks.clone(),
        );
        r.register_collector(Box::new(Malformed(m.codec.clone())));
        r.register(
            "tabnode_pof",
            "Proof-of-FLOPS challenges by outcome.",
            m.pof.clone(),
        );
        r.register(
            "tabnode_inference_requests",
            "Chat requests by outcome.",
            m.inference_requests.clone(),
        );
        r.register(
            "tabnode_inference_failovers",
            "Times a request moved to another node.",
            m.failovers.clone(),
        );
        r.register(
            "tabnode_inference_tokens",
            "Generated tokens delivered to requesters.",
            m.tokens.clone(),
        );
        r.register(
            "tabnode_embeddings",
            "Texts embedded for requesters.",
            m.embeddings.clone(),
        );
        r.register(
            "tabnode_stats_sample_seconds",
            "Seconds spent closing live-figure samples and updating the node roster.",
            m.stats_sample_seconds.clone(),
        );
        r.register(
            "tabnode_stats_stream_seconds",
            "Seconds spent writing the stats stream's events for its subscribers.",
            m.stats_stream_seconds.clone(),
        );
        r.register(
            "tabnode_spot_checks",
            "Spot checks of served tokens by outcome.",
            m.spot_checks.clone(),
        );
        r.register(
            "tabnode_nodes_by_backend",
            "Nodes connected by the backend of their engine.",
            m.nodes_by_backend.clone(),
        );
        r.register(
            "tabnode_unique_nodes_24h",
            "Different nodes seen in the last 24 hours.",
            m.unique_nodes_24h.clone(),
        );
        r.register(
            "tabnode_model_nodes",
            "Nodes serving each catalog model.",
            m.model_nodes.clone(),
        );
        r.register(
            "tabnode_model_tokens",
            "Generated tokens of completed requests by model.",
            m.model_tokens.clone(),
        );
        r.register(
            "tabnode_request_ttft_seconds",
            "Time to the first token of completed generation requests.",
            m.ttft_seconds.clone(),
        );
        r.register(
            "tabnode_request_seconds",
            "Whole time of completed generation requests.",
            m.request_seconds.clone(),
        );
        Self { registry, ..m }
    }
}

impl Metrics {
    /// Counts a spot check's outcome.
    pub fn record_check(&self, outcome: crate::checks::Outcome) {
        let outcome = match outcome {
            crate::checks::Outcome::Passed => "passed",
            crate::checks::Outcome::Failed => "failed",
            crate::checks::Outcome::Inconclusive => "inconclusive",
        };
        self.spot_checks.get_or_create(&Outcome { outcome }).inc();
    }

    /// Records a libp2p event (swarm, identify, ping or relay) with
    /// libp2p's own recorders.
    pub fn record<E>(&self, event: &E)
    where
        libp2p::metrics::Metrics: Recorder<E>,
    {
        self.libp2p.record(event);
    }

    /// The OpenMetrics text of every metric ([`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!("encoding metrics: {e}");
        }
        out
    }
}
