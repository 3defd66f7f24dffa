//! The relay's view of the network: who is connected, how, with what
//! capabilities; and its Prometheus counters.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};

use libp2p::PeerId;
use serde::Serialize;
use tabnode_core::{
    model_id, Capabilities, CodecStats, NodeKind, PeerSummary, PofRecord, PofStanding,
};

use crate::inference::{Candidate, Matchmaker};
use crate::ledger::{Credit, CreditKind, Ledger};

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

/// Counters exported on `/metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Connections opened since start.
    pub connections_opened: AtomicU64,
    /// Connections closed since start.
    pub connections_closed: AtomicU64,
    /// Reservations accepted (including renewals).
    pub reservations_accepted: AtomicU64,
    /// Reservations denied or failed.
    pub reservations_denied: AtomicU64,
    /// Reservations that timed out (the holder left).
    pub reservations_closed: AtomicU64,
    /// Circuits accepted.
    pub circuits_opened: AtomicU64,
    /// Circuits closed.
    pub circuits_closed: AtomicU64,
    /// Circuit requests denied or failed.
    pub circuits_denied: AtomicU64,
    /// Protocol requests received.
    pub requests_in: AtomicU64,
    /// Protocol responses sent.
    pub responses_out: AtomicU64,
    /// Inbound requests that failed after being read (timeouts, omissions).
    pub protocol_errors: AtomicU64,
    /// Inbound messages the codec refused (malformed, oversized, truncated).
    pub codec: Arc<CodecStats>,
    /// Proof-of-FLOPS challenges passed.
    pub pof_passed: AtomicU64,
    /// Proof-of-FLOPS challenges failed.
    pub pof_failed: AtomicU64,
}

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
}

/// Shared state between the swarm task and the HTTP server.
#[derive(Debug, Default)]
pub struct RelayState {
    nodes: RwLock<HashMap<PeerId, NodeEntry>>,
    pof: RwLock<HashMap<PeerId, PofHistory>>,
    reservations: RwLock<HashMap<PeerId, ()>>,
    /// Counters.
    pub metrics: Metrics,
    /// Load and reliability per node; requests in flight.
    pub matchmaker: Matchmaker,
    /// The flops-points ledger (absent in unit tests). The relay's handle
    /// owns it: when the relay stops, the database closes even while
    /// stragglers still hold the state.
    ledger: Option<Weak<Ledger>>,
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

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl RelayState {
    /// State that credits points to `ledger`.
    pub fn with_ledger(ledger: &Arc<Ledger>) -> Self {
        Self {
            ledger: Some(Arc::downgrade(ledger)),
            ..Self::default()
        }
    }

    /// The ledger, while the relay runs.
    pub fn ledger(&self) -> Option<Arc<Ledger>> {
        self.ledger.as_ref().and_then(Weak::upgrade)
    }

    /// The registered nodes serving `model` (an id or a name), with what
    /// matchmaking needs.
    pub fn candidates(&self, model: &str) -> Vec<Candidate> {
        let want = model_id(model);
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
                    last_proof: standing.and_then(|s| s.last.as_ref()).map(|r| r.passed),
                    gflops: standing.and_then(|s| s.verified_gflops).unwrap_or(0.0),
                })
            })
            .collect()
    }

    /// The models registered nodes serve now, by id.
    pub fn models(&self) -> Vec<NetworkModel> {
        let nodes = self.nodes.read().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<NetworkModel> = Vec::new();
        for caps in nodes.values().filter_map(|e| e.capabilities.as_ref()) {
            for name in &caps.models {
                let id = model_id(name);
                match out.iter_mut().find(|m| m.id == id) {
                    Some(m) => {
                        m.nodes += 1;
                        m.slots += u64::from(caps.slots);
                    }
                    None => out.push(NetworkModel {
                        id,
                        name: name.clone(),
                        nodes: 1,
                        slots: u64::from(caps.slots),
                    }),
                }
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// Credits a minute of uptime to every registered node whose last proof
    /// passed (`minute`: minutes since the Unix epoch; once per node and
    /// minute).
    pub fn credit_uptime(&self, minute: u64) {
        let Some(ledger) = self.ledger() else { return };
        let pof = self.pof.read().unwrap_or_else(|p| p.into_inner());
        let nodes = self.nodes.read().unwrap_or_else(|p| p.into_inner());
        let credits: Vec<Credit> = nodes
            .iter()
            .filter(|(_, e)| e.capabilities.is_some())
            .filter(|(peer, _)| {
                pof.get(peer)
                    .and_then(|h| h.standing.last.as_ref())
                    .is_some_and(|r| r.passed)
            })
            .map(|(peer, _)| Credit {
                id: format!("uptime:{peer}:{minute}"),
                peer_id: peer.to_string(),
                kind: CreditKind::Uptime,
                amount: 1,
            })
            .collect();
        if !credits.is_empty() {
            ledger.submit(credits);
        }
    }

    /// Inbound protocol streams closed for any error.
    pub fn protocol_errors(&self) -> u64 {
        self.metrics.protocol_errors.load(Ordering::Relaxed) + self.metrics.codec.rejected()
    }

    /// Records a new connection from `peer`.
    pub fn connected(&self, peer: PeerId, transport: &str, now_ms: u64) {
        bump(&self.metrics.connections_opened);
        let mut nodes = self.nodes.write().unwrap_or_else(|p| p.into_inner());
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
            });
    }

    /// Records a closed connection; the node leaves when it has none left.
    pub fn disconnected(&self, peer: PeerId, remaining: u32) {
        bump(&self.metrics.connections_closed);
        if remaining == 0 {
            self.nodes
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&peer);
            self.reservations
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&peer);
            self.matchmaker.node_gone(peer);
        } else if let Some(e) = self
            .nodes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&peer)
        {
            e.connections = remaining as usize;
        }
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
                e.model_ids = caps.models.iter().map(|m| model_id(m)).collect();
                e.capabilities = Some(caps);
                self.matchmaker.wake();
                true
            }
            None => false,
        }
    }

    /// Records a Proof-of-FLOPS result for `peer`.
    pub fn record_pof(&self, peer: PeerId, record: PofRecord) {
        let mut all = self.pof.write().unwrap_or_else(|p| p.into_inner());
        let h = all.entry(peer).or_default();
        let s = &mut h.standing;
        if record.passed {
            if let Some(ledger) = self.ledger() {
                ledger.submit(vec![Credit {
                    id: format!("pof:{peer}:{}:{}", record.at_ms, record.round),
                    peer_id: peer.to_string(),
                    kind: CreditKind::Proof,
                    amount: 1,
                }]);
            }
            self.metrics.pof_passed.fetch_add(1, Ordering::Relaxed);
            s.passed += 1;
            s.standing += 1;
            s.verified_gflops = Some(record.gflops);
        } else {
            self.metrics.pof_failed.fetch_add(1, Ordering::Relaxed);
            s.failed += 1;
            s.standing -= 5;
        }
        s.last = Some(record.clone());
        h.records.push_back(record);
        while h.records.len() > POF_HISTORY {
            h.records.pop_front();
        }
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

    /// Prometheus text exposition of the counters and gauges.
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
        let reservations = self
            .reservations
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .len();
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let opened = load(&m.circuits_opened);
        let closed = load(&m.circuits_closed);
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, v) in samples {
                let _ = writeln!(out, "{name}{labels} {v}");
            }
        };
        metric(
            "tabnode_nodes",
            "gauge",
            "Nodes connected to the relay.",
            &[
                ("{kind=\"browser\"}", browsers as u64),
                ("{kind=\"native\"}", natives as u64),
            ],
        );
        metric(
            "tabnode_connections_total",
            "counter",
            "Connections opened and closed.",
            &[
                ("{event=\"opened\"}", load(&m.connections_opened)),
                ("{event=\"closed\"}", load(&m.connections_closed)),
            ],
        );
        metric(
            "tabnode_reservations",
            "gauge",
            "Active circuit reservations.",
            &[("", reservations as u64)],
        );
        metric(
            "tabnode_reservation_events_total",
            "counter",
            "Reservation requests by outcome.",
            &[
                ("{outcome=\"accepted\"}", load(&m.reservations_accepted)),
                ("{outcome=\"denied\"}", load(&m.reservations_denied)),
                ("{outcome=\"timed_out\"}", load(&m.reservations_closed)),
            ],
        );
        metric(
            "tabnode_circuits",
            "gauge",
            "Open relayed circuits.",
            &[("", opened.saturating_sub(closed))],
        );
        metric(
            "tabnode_circuit_events_total",
            "counter",
            "Circuit requests by outcome.",
            &[
                ("{outcome=\"opened\"}", opened),
                ("{outcome=\"closed\"}", closed),
                ("{outcome=\"denied\"}", load(&m.circuits_denied)),
            ],
        );
        metric(
            "tabnode_messages_total",
            "counter",
            "Protocol messages handled by the relay.",
            &[
                ("{direction=\"in\"}", load(&m.requests_in)),
                ("{direction=\"out\"}", load(&m.responses_out)),
            ],
        );
        metric(
            "tabnode_errors_total",
            "counter",
            "Inbound protocol streams closed for errors.",
            &[
                ("{kind=\"malformed\"}", m.codec.rejected()),
                ("{kind=\"failed\"}", load(&m.protocol_errors)),
            ],
        );
        let im = &self.matchmaker.metrics;
        metric(
            "tabnode_inference_requests_total",
            "counter",
            "Chat requests by outcome.",
            &[
                ("{outcome=\"completed\"}", load(&im.completed)),
                ("{outcome=\"failed\"}", load(&im.failed)),
            ],
        );
        metric(
            "tabnode_inference_failovers_total",
            "counter",
            "Times a request moved to another node.",
            &[("", load(&im.failovers))],
        );
        metric(
            "tabnode_inference_tokens_total",
            "counter",
            "Generated tokens delivered to requesters.",
            &[("", load(&im.tokens))],
        );
        metric(
            "tabnode_pof_total",
            "counter",
            "Proof-of-FLOPS challenges by outcome.",
            &[
                ("{outcome=\"passed\"}", load(&m.pof_passed)),
                ("{outcome=\"failed\"}", load(&m.pof_failed)),
            ],
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_come_and_go() {
        let s = RelayState::default();
        let (a, b) = (PeerId::random(), PeerId::random());
        s.connected(a, "webrtc-direct", 10);
        s.connected(b, "tcp", 20);
        s.connected(b, "tcp", 30);
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
    }
}
