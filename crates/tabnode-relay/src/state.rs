//! The relay's view of the network: who is connected, how, with what
//! capabilities; and its Prometheus counters.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, RwLock, Weak};

use libp2p::PeerId;
use serde::Serialize;
use tabnode_core::{Capabilities, NodeKind, PeerSummary, PofRecord, PofStanding};

use crate::catalog::Catalog;
use crate::inference::{Candidate, Matchmaker};
use crate::ledger::{Credit, CreditKind, Ledger, POINTS_PER_PROOF_GFLOP};
use crate::metrics::{outcome, Event, Kind};

/// One connected node.
#[derive(Debug, Clone)]
pub struct NodeEntry {
    /// Transport of its first connection.
    pub transport: String,
    /// Milliseconds since the Unix epoch.
    pub connected_since_ms: u64,
    /// Open connections to the relay.
    pub connections: usize,
    /// Holds a circuit reservation.
    pub reachable: bool,
    /// What it registered.
    pub capabilities: Option<Capabilities>,
    /// The ids of its models (computed once, at registration).
    pub model_ids: Vec<String>,
    /// The IP address of its first connection.
    pub ip: Option<std::net::IpAddr>,
}

impl NodeEntry {
    fn kind(&self) -> NodeKind {
        match &self.capabilities {
            Some(c) => c.kind,
            None if self.transport.starts_with("webrtc") => NodeKind::Browser,
            None => NodeKind::Native,
        }
    }
}

/// Uptime minutes are written to the ledger once per this many minutes.
pub const UPTIME_PERIOD_MINUTES: u64 = 15;

/// How many Proof-of-FLOPS results are kept per node.
pub const POF_HISTORY: usize = 100;

/// A node's Proof-of-FLOPS standing and its recent results (kept while the
/// relay runs, across reconnects).
#[derive(Debug, Clone, Default)]
pub struct PofHistory {
    /// The summary `/api/network` shows.
    pub standing: PofStanding,
    /// Newest last.
    pub records: VecDeque<PofRecord>,
    /// When the node left (no connection left), if it did; its history is
    /// dropped an interval later unless it comes back.
    pub departed: Option<std::time::Instant>,
}

/// Shared state between the swarm task and the HTTP server.
#[derive(Debug, Default)]
pub struct RelayState {
    nodes: RwLock<HashMap<PeerId, NodeEntry>>,
    pof: RwLock<HashMap<PeerId, PofHistory>>,
    reservations: RwLock<HashMap<PeerId, ()>>,
    /// Uptime minutes counted and not yet written: first minute, minutes.
    uptime: std::sync::Mutex<HashMap<PeerId, (u64, u64)>>,
    /// Everything `/metrics` exports.
    pub metrics: crate::metrics::Metrics,
    /// Load and reliability per node; requests in flight.
    pub matchmaker: Matchmaker,
    /// The flops-points ledger (absent in unit tests). The relay's handle
    /// owns it: when the relay stops, the database closes even while
    /// stragglers still hold the state.
    ledger: Option<Weak<Ledger>>,
    /// The models requests may name and nodes are credited for.
    pub catalog: Catalog,
}

/// A model available on the network now.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NetworkModel {
    /// Its id ([`tabnode_core::model_id`]).
    pub id: String,
    /// Its name as nodes register it.
    pub name: String,
    /// Nodes serving it.
    pub nodes: usize,
    /// Generations they run at once, together.
    pub slots: u64,
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

    /// The ledger, while the relay runs.
    pub fn ledger(&self) -> Option<Arc<Ledger>> {
        self.ledger.as_ref().and_then(Weak::upgrade)
    }

    /// The registered nodes serving `model` (an id or a name of the
    /// catalog; none for anything else), with what matchmaking needs.
    pub fn candidates(&self, model: &str) -> Vec<Candidate> {
        let Some(want) = self.catalog.find(model).map(|m| m.id.clone()) else {
            return Vec::new();
        };
        let pof = self.pof.read().unwrap_or_else(|p| p.into_inner());
        let nodes = self.nodes.read().unwrap_or_else(|p| p.into_inner());
        nodes
            .iter()
            .filter_map(|(peer, e)| {
                let caps = e.capabilities.as_ref()?;
                if !e.model_ids.contains(&want) {
                    return None;
                }
                let standing = pof.get(peer).map(|h| &h.standing);
                Some(Candidate {
                    peer: *peer,
                    slots: caps.slots,
                    // Once proved, a node is usable only while its last
                    // proof passed and its standing is not negative.
                    last_proof: standing.filter(|s| s.last.is_some()).map(|s| s.valid),
                    gflops: standing.and_then(|s| s.matmul_gflops).unwrap_or(0.0),
                })
            })
            .collect()
    }

    /// The catalog's models registered nodes serve now, by id.
    pub fn models(&self) -> Vec<NetworkModel> {
        let nodes = self.nodes.read().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<NetworkModel> = Vec::new();
        for e in nodes.values() {
            let Some(caps) = e.capabilities.as_ref() else {
                continue;
            };
            for id in &e.model_ids {
                match out.iter_mut().find(|m| &m.id == id) {
                    Some(m) => {
                        m.nodes += 1;
                        m.slots += u64::from(caps.slots);
                    }
                    None => out.push(NetworkModel {
                        id: id.clone(),
                        name: self
                            .catalog
                            .find(id)
                            .map_or_else(|| id.clone(), |m| m.name.clone()),
                        nodes: 1,
                        slots: u64::from(caps.slots),
                    }),
                }
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// Whether `peer`'s last proof passed: what earning points requires.
    pub fn proof_valid(&self, peer: &PeerId) -> bool {
        self.pof
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(peer)
            .is_some_and(|h| h.standing.valid)
    }

    /// The peers that registered and are still connected.
    pub fn registered_peers(&self) -> Vec<PeerId> {
        self.nodes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, e)| e.capabilities.is_some())
            .map(|(p, _)| *p)
            .collect()
    }

    /// Drops the proof history of nodes that left more than `after` ago.
    pub fn evict_departed(&self, after: std::time::Duration) {
        self.pof
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, h| h.departed.is_none_or(|t| t.elapsed() < after));
    }

    /// Nodes with a proof history (connected or recently departed).
    pub fn pof_tracked(&self) -> usize {
        self.pof.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Counts a minute of uptime for every registered node that holds a
    /// reservation (can be given work) and whose proof is valid (`minute`:
    /// minutes since the Unix epoch). Minutes are written to the ledger
    /// aggregated: one credit per node every `UPTIME_PERIOD_MINUTES` (15)
    /// (`uptime:<peer>:<first minute>`), not a row per node and minute.
    pub fn credit_uptime(&self, minute: u64) {
        let eligible: Vec<PeerId> = {
            let pof = self.pof.read().unwrap_or_else(|p| p.into_inner());
            let nodes = self.nodes.read().unwrap_or_else(|p| p.into_inner());
            nodes
                .iter()
                .filter(|(_, e)| e.capabilities.is_some() && e.reachable)
                .filter(|(peer, _)| pof.get(peer).is_some_and(|h| h.standing.valid))
                .map(|(peer, _)| *peer)
                .collect()
        };
        let mut pending = self.uptime.lock().unwrap_or_else(|p| p.into_inner());
        for peer in eligible {
            let (first, minutes) = pending.entry(peer).or_insert((minute, 0));
            if *minutes == 0 {
                *first = minute;
            }
            *minutes += 1;
        }
        if !(minute + 1).is_multiple_of(UPTIME_PERIOD_MINUTES) {
            return;
        }
        let credits: Vec<Credit> = pending
            .drain()
            .filter(|(_, (_, m))| *m > 0)
            .map(|(peer, (first, minutes))| Credit {
                id: format!("uptime:{peer}:{first}"),
                peer_id: peer.to_string(),
                kind: CreditKind::Uptime,
                amount: minutes,
                points: minutes * crate::ledger::POINTS_PER_UPTIME_MINUTE,
            })
            .collect();
        drop(pending);
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
        let mut nodes = self.nodes.write().unwrap_or_else(|p| p.into_inner());
        if !nodes.contains_key(&peer) {
            let same_ip = ip.map_or(0, |ip| nodes.values().filter(|e| e.ip == Some(ip)).count());
            if same_ip >= max_per_ip {
                self.metrics.identities_refused.inc();
                return false;
            }
        }
        self.metrics
            .connections
            .get_or_create(&Event { event: "opened" })
            .inc();
        nodes
            .entry(peer)
            .and_modify(|e| e.connections += 1)
            .or_insert_with(|| NodeEntry {
                transport: transport.to_string(),
                connected_since_ms: now_ms,
                connections: 1,
                reachable: false,
                capabilities: None,
                model_ids: Vec::new(),
                ip,
            });
        drop(nodes);
        if let Some(h) = self
            .pof
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&peer)
        {
            h.departed = None;
        }
        true
    }

    /// Records a closed connection; the node leaves when it has none left.
    pub fn disconnected(&self, peer: PeerId, remaining: u32) {
        if remaining == 0 {
            let known = self
                .nodes
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&peer)
                .is_some();
            if !known {
                // A connection refused at `connected`.
                return;
            }
            self.reservations
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&peer);
            if let Some(h) = self
                .pof
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .get_mut(&peer)
            {
                h.departed = Some(std::time::Instant::now());
            }
            self.matchmaker.node_gone(peer);
        } else if let Some(e) = self
            .nodes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&peer)
        {
            e.connections = remaining as usize;
        }
        self.metrics
            .connections
            .get_or_create(&Event { event: "closed" })
            .inc();
    }

    /// Records a reservation change for `peer`.
    pub fn set_reachable(&self, peer: PeerId, reachable: bool) {
        if reachable {
            self.reservations
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(peer, ());
        } else {
            self.reservations
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&peer);
        }
        if let Some(e) = self
            .nodes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&peer)
        {
            e.reachable = reachable;
        }
    }

    /// Stores what `peer` registered. Returns false if the peer is not
    /// connected (a stale request).
    pub fn register(&self, peer: PeerId, caps: Capabilities) -> bool {
        match self
            .nodes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&peer)
        {
            Some(e) => {
                // Only catalog models mean anything; the rest is ignored.
                e.model_ids = caps
                    .models
                    .iter()
                    .filter_map(|m| match self.catalog.find(m) {
                        Some(entry) => Some(entry.id.clone()),
                        None => {
                            tracing::info!(%peer, "ignoring {m:?}: not in the catalog");
                            None
                        }
                    })
                    .collect();
                e.capabilities = Some(caps);
                self.matchmaker.wake();
                true
            }
            None => false,
        }
    }

    /// Records a Proof-of-FLOPS result for `peer`. A pass credits points in
    /// proportion to the work proven ([`POINTS_PER_PROOF_GFLOP`] per
    /// GFLOP of `2n³`), once (the credit id names the round).
    pub fn record_pof(&self, peer: PeerId, record: PofRecord) {
        let mut all = self.pof.write().unwrap_or_else(|p| p.into_inner());
        let h = all.entry(peer).or_default();
        let s = &mut h.standing;
        if record.passed {
            if let Some(ledger) = self.ledger() {
                let gflop = tabnode_pof::flops(record.n) / 1e9;
                ledger.submit(vec![Credit {
                    id: format!("pof:{peer}:{}:{}", record.at_ms, record.round),
                    peer_id: peer.to_string(),
                    kind: CreditKind::Proof,
                    amount: 1,
                    points: (gflop * POINTS_PER_PROOF_GFLOP as f64).round() as u64,
                }]);
            }
            self.metrics.pof.get_or_create(&outcome("passed")).inc();
            s.passed += 1;
            s.standing += 1;
            s.matmul_gflops = Some(record.matmul_gflops);
        } else {
            self.metrics.pof.get_or_create(&outcome("failed")).inc();
            s.failed += 1;
            s.standing -= 5;
        }
        s.valid = record.passed && s.standing >= 0;
        s.last = Some(record.clone());
        h.records.push_back(record);
        while h.records.len() > POF_HISTORY {
            h.records.pop_front();
        }
        drop(all);
        // Who may be given work changed.
        self.matchmaker.wake();
    }

    /// The Proof-of-FLOPS history of `peer`.
    pub fn pof_history(&self, peer: &PeerId) -> Option<PofHistory> {
        self.pof
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(peer)
            .cloned()
    }

    /// What `peer` registered, if it is connected.
    pub fn capabilities(&self, peer: &PeerId) -> Option<Capabilities> {
        self.nodes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(peer)
            .and_then(|e| e.capabilities.clone())
    }

    /// Every connected node, oldest first.
    pub fn summaries(&self) -> Vec<PeerSummary> {
        let pof = self.pof.read().unwrap_or_else(|p| p.into_inner());
        let nodes = self.nodes.read().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<PeerSummary> = nodes
            .iter()
            .map(|(id, e)| PeerSummary {
                peer_id: id.to_string(),
                kind: e.kind(),
                transport: e.transport.clone(),
                connected_since_ms: e.connected_since_ms,
                reachable: e.reachable,
                capabilities: e.capabilities.clone(),
                pof: pof.get(id).map(|h| h.standing.clone()).unwrap_or_default(),
            })
            .collect();
        out.sort_by(|a, b| {
            (a.connected_since_ms, &a.peer_id).cmp(&(b.connected_since_ms, &b.peer_id))
        });
        out
    }

    /// The OpenMetrics text of every metric: the gauges read from the
    /// registry now, then everything the registry holds.
    pub fn render_metrics(&self) -> String {
        let m = &self.metrics;
        let (browsers, natives) = {
            let nodes = self.nodes.read().unwrap_or_else(|p| p.into_inner());
            let b = nodes
                .values()
                .filter(|e| e.kind() == NodeKind::Browser)
                .count();
            (b, nodes.len() - b)
        };
        let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        m.nodes
            .get_or_create(&Kind { kind: "browser" })
            .set(gauge(browsers));
        m.nodes
            .get_or_create(&Kind { kind: "native" })
            .set(gauge(natives));
        let reservations = self
            .reservations
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .len();
        m.reservations.set(gauge(reservations));
        m.encode()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        s.evict_departed(std::time::Duration::from_secs(3600));
        assert!(s.pof_history(&p).is_some());
        s.evict_departed(std::time::Duration::ZERO);
        assert!(s.pof_history(&p).is_none());
        assert!(
            s.pof_history(&q).is_some(),
            "a connected node keeps its history"
        );
    }
}
