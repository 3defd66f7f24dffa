//! The relay's state, a composition of owned services: the registry of
//! nodes (one lock, one wake-up), the requests in flight, the ledger, the
//! catalog and the metrics. Each service owns its data; this type only
//! wires them together (a departure reaches both the registry and the
//! sessions, a proof result both the registry and the ledger) and counts
//! what `/metrics` shows.

use std::sync::{Arc, Weak};

use libp2p::PeerId;
use serde::Serialize;
use tabnode_core::{Capabilities, PeerSummary, PofRecord};

use crate::catalog::Catalog;
use crate::ledger::{Credit, CreditKind, Ledger, POINTS_PER_PROOF_GFLOP};
use crate::metrics::{outcome, Event, Kind};
use crate::registry::{Departure, PofHistory, Registry};
use crate::sessions::Sessions;

/// Uptime minutes are written to the ledger once per this many minutes.
pub const UPTIME_PERIOD_MINUTES: u64 = 15;

/// Shared state between the swarm task, the challenger, request sessions
/// and the HTTP server.
#[derive(Debug, Default)]
pub struct RelayState {
    /// Connected nodes, their proofs and load; matchmaking.
    pub registry: Registry,
    /// The requests in flight.
    pub sessions: Sessions,
    /// Everything `/metrics` exports.
    pub metrics: crate::metrics::Metrics,
    /// The flops-points ledger (absent in unit tests). The relay's handle
    /// owns it: when the relay stops, the database closes even while
    /// stragglers still hold the state.
    ledger: Option<Weak<Ledger>>,
    /// The models requests may name and nodes are credited for.
    pub catalog: Catalog,
    /// Spot checks of served tokens: each node's record, the recent
    /// checks.
    pub checks: crate::checks::Checks,
    /// Accounts' API keys (absent in unit tests).
    pub accounts: Option<Arc<crate::accounts::KeyStore>>,
    /// Live figures and their history (`/api/stats`).
    pub stats: crate::stats::Stats,
    /// The dashboard's node rows, measured speeds and recent requests.
    pub roster: crate::roster::Roster,
    /// Peers' requests other than token chunks, limited per peer.
    pub(crate) control: crate::limiter::ControlLimit,
    /// Set when the relay is told to stop: `/readyz` turns 503, new API
    /// requests are refused, event streams end, and the requests in
    /// progress finish.
    stopping: tokio::sync::watch::Sender<bool>,
}

/// A model available on the network now.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NetworkModel {
    /// Its catalog id (what requests name).
    pub id: String,
    /// Its name as nodes register it.
    pub name: String,
    /// The catalog's title for people (the name when it has none).
    pub title: String,
    /// Context length in tokens (0 when the catalog does not say).
    pub context: u32,
    /// The file's size in bytes (0 when the catalog does not say).
    pub bytes: u64,
    /// Nodes serving it.
    pub nodes: usize,
    /// Generations they run at once, together.
    pub slots: u64,
    /// Whether it is an instruction model with a chat template (else a
    /// base model: `/v1/completions` only).
    pub chat: bool,
}

/// `/api/network` body.
#[derive(Debug, Serialize)]
pub struct NetworkView {
    /// The relay's peer id.
    pub relay: String,
    /// Every connected node.
    pub nodes: Vec<PeerSummary>,
}

impl RelayState {
    /// State that routes the models of `catalog` and credits points to
    /// `ledger`.
    pub fn new(ledger: &Arc<Ledger>, catalog: Catalog) -> Self {
        Self {
            ledger: Some(Arc::downgrade(ledger)),
            catalog,
            ..Self::default()
        }
    }

    /// This state with the accounts' API keys kept in `keys`.
    pub fn with_accounts(self, keys: Arc<crate::accounts::KeyStore>) -> Self {
        Self {
            accounts: Some(keys),
            ..self
        }
    }

    /// Starts stopping (see `stopping`).
    pub fn stop(&self) {
        self.stopping.send_replace(true);
    }

    /// Whether the relay is stopping.
    pub fn is_stopping(&self) -> bool {
        *self.stopping.borrow()
    }

    /// Resolves once the relay is stopping.
    pub fn stopped(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.stopping.subscribe();
        async move {
            // An error: the state is gone, which is stopping too.
            let _ = rx.wait_for(|stopping| *stopping).await;
        }
    }

    /// The ledger, while the relay runs.
    pub fn ledger(&self) -> Option<Arc<Ledger>> {
        self.ledger.as_ref().and_then(Weak::upgrade)
    }

    /// The registered nodes serving `model` (an id or a name of the
    /// catalog; none for anything else).
    pub fn serving(&self, model: &str) -> Vec<PeerId> {
        self.catalog
            .find(model)
            .map_or_else(Vec::new, |m| self.registry.serving(&m.id))
    }

    /// The catalog's models registered nodes serve now, by id (the
    /// generative ones: embedding models are listed apart).
    pub fn models(&self) -> Vec<NetworkModel> {
        self.registry
            .served_models()
            .into_iter()
            .filter(|(id, _, _)| !self.catalog.embeddings.iter().any(|e| e.id == *id))
            .map(|(id, nodes, slots)| {
                let entry = self.catalog.find(&id);
                NetworkModel {
                    name: entry.map_or_else(|| id.clone(), |m| m.name.clone()),
                    title: entry.map_or_else(|| id.clone(), |m| m.title.clone()),
                    context: entry.map_or(0, |m| m.context),
                    bytes: entry.map_or(0, |m| m.bytes),
                    chat: entry.is_none_or(|m| m.chat),
                    id,
                    nodes,
                    slots,
                }
            })
            .collect()
    }

    /// Whether `peer`'s last proof passed: what earning points requires.
    pub fn proof_valid(&self, peer: &PeerId) -> bool {
        self.registry.proof_valid(peer)
    }

    /// The Proof-of-FLOPS history of `peer`.
    pub fn pof_history(&self, peer: &PeerId) -> Option<PofHistory> {
        self.registry.pof_history(peer)
    }

    /// Every connected node, oldest first.
    pub fn summaries(&self) -> Vec<PeerSummary> {
        self.registry.summaries()
    }

    /// Generations `peer` runs now, and its failure rate.
    pub fn load_of(&self, peer: &PeerId) -> (u32, f64) {
        self.registry.load_of(peer)
    }

    /// Counts a minute of uptime for every registered node that holds a
    /// reservation (can be given work) and whose proof is valid (`minute`:
    /// minutes since the Unix epoch). Minutes are written to the ledger
    /// aggregated: one credit per node every `UPTIME_PERIOD_MINUTES` (15)
    /// (`uptime:<peer>:<first minute>`), not a row per node and minute.
    pub fn credit_uptime(&self, minute: u64) {
        let credits: Vec<Credit> = self
            .registry
            .count_uptime(minute, UPTIME_PERIOD_MINUTES)
            .into_iter()
            .map(|s| Credit {
                id: format!("uptime:{}:{}", s.peer, s.first),
                peer_id: s.peer.to_string(),
                kind: CreditKind::Uptime,
                amount: s.minutes,
                points: s.minutes * crate::ledger::POINTS_PER_UPTIME_MINUTE,
            })
            .collect();
        if let Some(ledger) = self.ledger() {
            if !credits.is_empty() {
                ledger.submit(credits);
            }
        }
    }

    /// Inbound protocol streams closed for any error.
    pub fn protocol_errors(&self) -> u64 {
        self.metrics.protocol_errors.get() + self.metrics.codec.rejected()
    }

    /// Records a new connection from `peer` at `ip`. Returns false (and
    /// records nothing) when `max_per_ip` other identities are connected
    /// from that address already: the caller closes the connection.
    pub fn connected(
        &self,
        peer: PeerId,
        transport: &str,
        ip: Option<std::net::IpAddr>,
        max_per_ip: usize,
        now_ms: u64,
    ) -> bool {
        if !self
            .registry
            .connected(peer, transport, ip, max_per_ip, now_ms)
        {
            self.metrics.identities_refused.inc();
            return false;
        }
        self.metrics
            .connections
            .get_or_create(&Event { event: "opened" })
            .inc();
        true
    }

    /// Records a closed connection; the node leaves when it has none left,
    /// and its requests move on.
    pub fn disconnected(&self, peer: PeerId, remaining: u32) {
        match self.registry.disconnected(peer, remaining) {
            // A connection refused at `connected`.
            Departure::Unknown => return,
            Departure::Left => self.sessions.node_gone(peer),
            Departure::Stays => {}
        }
        self.metrics
            .connections
            .get_or_create(&Event { event: "closed" })
            .inc();
    }

    /// Records a reservation change for `peer`.
    pub fn set_reachable(&self, peer: PeerId, reachable: bool) {
        self.registry.set_reachable(peer, reachable);
    }

    /// Stores what `peer` registered; only its catalog models count.
    /// Returns false if the peer is not connected (a stale request).
    pub fn register(&self, peer: PeerId, caps: Capabilities) -> bool {
        let model_ids = caps
            .models
            .iter()
            .filter_map(|m| match self.catalog.find(m) {
                Some(entry) => Some(entry.id.clone()),
                None if self.catalog.embeddings.iter().any(|e| e.id == *m) => Some(m.clone()),
                None => {
                    tracing::info!(%peer, "ignoring {m:?}: not in the catalog");
                    None
                }
            })
            .collect();
        self.registry.register(peer, caps, model_ids)
    }

    /// Records a Proof-of-FLOPS result for `peer`. A pass credits points in
    /// proportion to the work proven ([`POINTS_PER_PROOF_GFLOP`] per
    /// GFLOP of `2n³`), once (the credit id names the round).
    pub fn record_pof(&self, peer: PeerId, record: PofRecord) {
        let passed = record.passed;
        let credit = passed.then(|| Credit {
            id: format!("pof:{peer}:{}:{}", record.at_ms, record.round),
            peer_id: peer.to_string(),
            kind: CreditKind::Proof,
            amount: 1,
            points: (tabnode_pof::flops(record.n) / 1e9 * POINTS_PER_PROOF_GFLOP as f64).round()
                as u64,
        });
        self.registry.record_pof(peer, record);
        let name = if passed { "passed" } else { "failed" };
        self.metrics.pof.get_or_create(&outcome(name)).inc();
        if let (Some(credit), Some(ledger)) = (credit, self.ledger()) {
            ledger.submit(vec![credit]);
        }
    }

    /// The OpenMetrics text of every metric: the gauges read from the
    /// registry now, then everything the registry holds.
    pub fn render_metrics(&self) -> String {
        let m = &self.metrics;
        let c = self.registry.counts();
        let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        m.nodes
            .get_or_create(&Kind { kind: "browser" })
            .set(gauge(c.browsers));
        m.nodes
            .get_or_create(&Kind { kind: "native" })
            .set(gauge(c.natives));
        m.reservations.set(gauge(c.reachable));
        m.encode()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tabnode_core::NodeKind;

    #[test]
    fn nodes_come_and_go() {
        let s = RelayState::default();
        let (a, b) = (PeerId::random(), PeerId::random());
        let ip = Some(std::net::IpAddr::from([127, 0, 0, 1]));
        assert!(s.connected(a, "webrtc-direct", ip, 2, 10));
        assert!(s.connected(b, "tcp", ip, 2, 20));
        assert!(s.connected(b, "tcp", ip, 2, 30));
        // A third identity from the same address is refused.
        assert!(!s.connected(PeerId::random(), "tcp", ip, 2, 40));
        assert!(s.register(a, Capabilities::new(NodeKind::Browser, "tab")));
        assert!(!s.register(PeerId::random(), Capabilities::new(NodeKind::Native, "x")));
        s.set_reachable(b, true);
        let list = s.summaries();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].peer_id, a.to_string());
        assert_eq!(list[0].kind, NodeKind::Browser);
        assert_eq!(list[1].kind, NodeKind::Native);
        assert!(list[1].reachable);
        s.disconnected(b, 1);
        assert_eq!(s.summaries().len(), 2);
        s.disconnected(b, 0);
        assert_eq!(s.summaries().len(), 1);
        let text = s.render_metrics();
        assert!(text.contains("tabnode_nodes{kind=\"browser\"} 1"), "{text}");
        assert!(
            text.contains("tabnode_connections_total{event=\"opened\"} 3"),
            "{text}"
        );
        assert!(text.contains("tabnode_reservations 0"), "{text}");
        assert!(
            text.contains("tabnode_identities_refused_total 1"),
            "{text}"
        );
        // OpenMetrics: libp2p's recorders share the registry.
        assert!(
            text.contains("# TYPE libp2p_swarm_connections_incoming counter"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    fn record(round: u64, n: u32, passed: bool) -> PofRecord {
        PofRecord {
            at_ms: 1_000 + round,
            round,
            n,
            sized_by: "cpu".into(),
            device_class: tabnode_core::DeviceClass::Cpu,
            commit_ms: 10,
            rtt_ms: 1.0,
            deadline_ms: 10_000,
            matmul_gflops: 5.0,
            passed,
            reason: (!passed).then(|| "wrong".into()),
        }
    }

    #[tokio::test]
    async fn standing_gates_work_points_follow_the_work_and_uptime_is_aggregated() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ledger = Arc::new(Ledger::open(&dir.path().join("l.redb")).expect("ledger"));
        let s = RelayState::new(&ledger, Catalog::builtin());
        let ip = Some(std::net::IpAddr::from([10, 0, 0, 1]));
        let (p, q) = (PeerId::random(), PeerId::random());
        for peer in [p, q] {
            assert!(s.connected(peer, "tcp", ip, 8, 0));
            assert!(s.register(peer, Capabilities::new(NodeKind::Native, "n")));
            s.record_pof(peer, record(1, 2048, true));
        }
        // Only p holds a reservation (can be given work).
        s.set_reachable(p, true);
        assert!(s.proof_valid(&p));
        // One failure outweighs one later pass: the standing decides.
        s.record_pof(p, record(2, 2048, false));
        s.record_pof(p, record(3, 2048, true));
        assert!(!s.proof_valid(&p), "one pass erased a failure");
        // +1 −5 +1 = −3: two more passes are not enough, the third is.
        for round in 4..6 {
            s.record_pof(p, record(round, 2048, true));
            assert!(!s.proof_valid(&p));
        }
        s.record_pof(p, record(6, 2048, true));
        let h = s.pof_history(&p).expect("history");
        assert_eq!((h.standing.standing, h.standing.valid), (0, true));
        // Uptime: counted each minute, written once per period, only for
        // the reachable node with a valid proof.
        for minute in 0..UPTIME_PERIOD_MINUTES {
            s.credit_uptime(minute);
        }
        ledger.apply(Vec::new()).await.expect("flush");
        let bp = ledger.balance(&p.to_string()).expect("p");
        let bq = ledger.balance(&q.to_string()).expect("q");
        assert_eq!((bp.uptime_minutes, bq.uptime_minutes), (15, 0));
        assert!(ledger.has_credit(&format!("uptime:{p}:0")).expect("lookup"));
        // Proof points follow the work: 2·2048³ ≈ 17.2 GFLOP → 17 points
        // for each of p's 5 passes; none for a failure.
        assert_eq!(bp.proofs, 5);
        assert_eq!(bp.points, 5 * 17 + 15);
        // A departed node's history goes after the interval, not before.
        s.disconnected(p, 0);
        s.registry
            .evict_departed(std::time::Duration::from_secs(3600));
        assert!(s.pof_history(&p).is_some());
        s.registry.evict_departed(std::time::Duration::ZERO);
        assert!(s.pof_history(&p).is_none());
        assert!(
            s.pof_history(&q).is_some(),
            "a connected node keeps its history"
        );
    }
}
