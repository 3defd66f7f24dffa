//! The node roster the dashboard lists: one compact row per connected node
//! (`GET /api/nodes`), and what changed at each sample on the stats stream
//! (event `nodes`), so a page watching a thousand nodes receives the few
//! rows that changed instead of the whole `/api/network` (hundreds of KB)
//! every sample. Each node's measured speed and its recent requests are
//! kept here too, from the requests it served (`GET /api/nodes/{peer}`).
//!
//! Peer ids are public (the network's listing names them); addresses are
//! never in a row.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use libp2p::PeerId;
use serde::Serialize;
use tabnode_core::NodeKind;
use tokio::sync::broadcast;

use crate::registry::NodeView;
use crate::state::RelayState;

/// Requests kept per node for its detail view.
pub const RECENT: usize = 20;
/// Weight of the newest request in a node's measured speed.
const SPEED_WEIGHT: f64 = 0.3;

/// One node as the dashboard lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeRow {
    /// Its peer id.
    pub peer_id: Arc<str>,
    /// Browser or native.
    pub kind: NodeKind,
    /// The backend its engine runs on (`cpu`, `webgpu`), if it serves.
    pub backend: Option<&'static str>,
    /// The catalog ids it serves.
    pub models: Vec<String>,
    /// Whether it holds a circuit reservation (can be given work).
    pub reachable: bool,
    /// When it connected, ms since the Unix epoch.
    pub since_ms: u64,
    /// Its last passed proof's speed, GFLOP/s.
    pub gflops: Option<f64>,
    /// Its Proof-of-FLOPS standing.
    pub standing: i64,
    /// Whether it may serve and earn now.
    pub valid: bool,
    /// Whether its last proof failed.
    pub proof_failed: bool,
    /// Measured generation speed over its recent requests (tokens a second,
    /// first token included), once it served one.
    pub tok_s: Option<f64>,
    /// Requests it serves now.
    pub active: u32,
    /// Tokens it has been credited for, ever.
    pub tokens: u64,
    /// Its points.
    pub points: u64,
}

/// What changed since the previous sample (or everything, `full`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodesDelta {
    /// When, ms since the Unix epoch.
    pub at_ms: u64,
    /// Whether `rows` is every node (then `gone` is empty).
    pub full: bool,
    /// New and changed rows (every row when `full`).
    pub rows: Vec<NodeRow>,
    /// Peer ids no longer connected.
    pub gone: Vec<Arc<str>>,
}

/// A request a node served (part of it, when the request failed over).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServedRequest {
    /// When it ended, ms since the Unix epoch.
    pub at_ms: u64,
    /// The relay's request id.
    pub request_id: u64,
    /// The catalog id of the model.
    pub model: String,
    /// Tokens this node delivered.
    pub tokens: u64,
    /// Seconds from sending it the request to its last token.
    pub seconds: f64,
    /// `completed`, `failed over` (it failed, another node went on),
    /// `abandoned` (the requester left).
    pub outcome: &'static str,
}

/// A node's detail: its row (none once gone), what it runs on, and its
/// recent requests.
#[derive(Debug, Clone, Serialize)]
pub struct NodeDetail {
    /// Its row, while connected.
    pub row: Option<NodeRow>,
    /// Its software (a tab: the browser's user agent), while connected.
    pub agent: Option<String>,
    /// The device its engine runs on and why it was chosen.
    pub device: Option<String>,
    /// Its newest requests first.
    pub recent: Vec<ServedRequest>,
}

/// Everything is keyed by the peer id as text: rows are listed by it, and
/// encoding a thousand ids every sample would cost more than the rest.
#[derive(Debug, Default)]
struct Inner {
    rows: BTreeMap<Arc<str>, NodeRow>,
    /// Measured speed per node (exponentially weighted).
    speed: HashMap<String, f64>,
    recent: HashMap<String, VecDeque<ServedRequest>>,
    /// Tokens and points per node, as last read from the ledger (read
    /// again when the ledger says an account changed).
    balances: HashMap<String, (u64, u64)>,
}

/// The roster and its subscribers.
#[derive(Debug)]
pub struct Roster {
    inner: Mutex<Inner>,
    /// Each sample's delta as JSON, serialised once for every subscriber.
    deltas: broadcast::Sender<Arc<str>>,
}

impl Default for Roster {
    fn default() -> Self {
        Self {
            inner: Mutex::default(),
            deltas: broadcast::channel(16).0,
        }
    }
}

impl Roster {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `peer` served `request` (its part of it): its speed and recent list.
    pub fn served(&self, peer: &str, request: ServedRequest) {
        let mut g = self.lock();
        if request.tokens > 0 && request.seconds > 0.0 {
            let now = request.tokens as f64 / request.seconds;
            match g.speed.get_mut(peer) {
                Some(s) => *s += SPEED_WEIGHT * (now - *s),
                None => {
                    g.speed.insert(peer.to_string(), now);
                }
            }
        }
        let list = match g.recent.get_mut(peer) {
            Some(list) => list,
            None => g.recent.entry(peer.to_string()).or_default(),
        };
        list.push_front(request);
        list.truncate(RECENT);
    }

    /// Tokens and points of the nodes in `views`: those of accounts the
    /// ledger changed and of new nodes read again (in one transaction),
    /// the rest as last read. A ledger that fails (or none) shows zeros
    /// rather than no roster.
    fn balances(&self, state: &RelayState, views: &[NodeView]) -> HashMap<String, (u64, u64)> {
        let mut known = std::mem::take(&mut self.lock().balances);
        let now: HashSet<&str> = views.iter().map(|v| &*v.id).collect();
        known.retain(|id, _| now.contains(id.as_str()));
        let Some(ledger) = state.ledger() else {
            return known;
        };
        let changed = ledger.take_changed();
        let read: Vec<String> = views
            .iter()
            .filter(|v| changed.contains(&*v.id) || !known.contains_key(&*v.id))
            .map(|v| v.id.to_string())
            .collect();
        if !read.is_empty() {
            match ledger.balances_of(&read) {
                Ok(b) => known.extend(b.into_iter().map(|b| (b.peer_id, (b.tokens, b.points)))),
                Err(e) => tracing::warn!("the roster could not read points: {e}"),
            }
        }
        known
    }

    /// The rows of the nodes in `views` now.
    fn rows(&self, state: &RelayState, views: &[NodeView]) -> BTreeMap<Arc<str>, NodeRow> {
        let balances = self.balances(state, views);
        let mut g = self.lock();
        let rows = views
            .iter()
            .map(|v| {
                let (tokens, points) = balances.get(&*v.id).copied().unwrap_or_default();
                let row = NodeRow {
                    peer_id: v.id.clone(),
                    kind: v.kind,
                    backend: v.backend,
                    models: v.model_ids.clone(),
                    reachable: v.reachable,
                    since_ms: v.since_ms,
                    gflops: v.pof.matmul_gflops,
                    standing: v.pof.standing,
                    valid: v.pof.valid,
                    proof_failed: v.pof.last.as_ref().is_some_and(|l| !l.passed),
                    tok_s: g.speed.get(&*v.id).copied(),
                    active: v.active,
                    tokens,
                    points,
                };
                (v.id.clone(), row)
            })
            .collect();
        g.balances = balances;
        rows
    }

    /// Takes the nodes of `views` as the roster now and sends subscribers
    /// what changed (nothing when nothing did). Speeds and recent requests
    /// of nodes gone are forgotten.
    pub fn tick(&self, state: &RelayState, views: &[NodeView], at_ms: u64) -> NodesDelta {
        let rows = self.rows(state, views);
        let mut g = self.lock();
        let gone: Vec<Arc<str>> = g
            .rows
            .keys()
            .filter(|id| !rows.contains_key(*id))
            .cloned()
            .collect();
        let changed: Vec<NodeRow> = rows
            .values()
            .filter(|r| g.rows.get(&r.peer_id) != Some(*r))
            .cloned()
            .collect();
        g.speed.retain(|p, _| rows.contains_key(p.as_str()));
        g.recent.retain(|p, _| rows.contains_key(p.as_str()));
        g.rows = rows;
        drop(g);
        let delta = NodesDelta {
            at_ms,
            full: false,
            rows: changed,
            gone,
        };
        if !delta.rows.is_empty() || !delta.gone.is_empty() {
            if let Ok(json) = serde_json::to_string(&delta) {
                // No subscriber is not an error.
                let _ = self.deltas.send(json.into());
            }
        }
        delta
    }

    /// Every row (a new subscriber's start, `GET /api/nodes`).
    pub fn full(&self, at_ms: u64) -> NodesDelta {
        NodesDelta {
            at_ms,
            full: true,
            rows: self.lock().rows.values().cloned().collect(),
            gone: Vec::new(),
        }
    }

    /// `peer`'s row and recent requests (none for a node it never listed).
    pub fn detail(&self, state: &RelayState, peer: &PeerId) -> Option<NodeDetail> {
        let caps = state.registry.capabilities(peer);
        let agent = caps.as_ref().map(|c| c.agent.clone());
        let device = caps
            .and_then(|c| c.engine)
            .map(|e| format!("{} ({})", e.device, e.reason));
        let peer = peer.to_string();
        let g = self.lock();
        let row = g.rows.get(peer.as_str()).cloned();
        let recent: Vec<ServedRequest> = g
            .recent
            .get(&peer)
            .map(|r| r.iter().cloned().collect())
            .unwrap_or_default();
        (row.is_some() || !recent.is_empty()).then_some(NodeDetail {
            row,
            agent,
            device,
            recent,
        })
    }

    /// The deltas as they are sent (JSON).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<str>> {
        self.deltas.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tabnode_core::PofStanding;

    fn view(peer: &PeerId, since: u64) -> NodeView {
        NodeView {
            peer: *peer,
            id: peer.to_string().into(),
            kind: NodeKind::Native,
            backend: Some("cpu"),
            model_ids: vec!["m".into()],
            reachable: true,
            since_ms: since,
            pof: PofStanding::default(),
            active: 0,
        }
    }

    fn served(tokens: u64, seconds: f64) -> ServedRequest {
        ServedRequest {
            at_ms: 1,
            request_id: 7,
            model: "m".into(),
            tokens,
            seconds,
            outcome: "completed",
        }
    }

    #[test]
    fn a_tick_sends_only_what_changed_and_who_left() {
        let state = RelayState::default();
        let roster = Roster::default();
        let mut rx = roster.subscribe();
        let (a, b) = (PeerId::random(), PeerId::random());
        let first = roster.tick(&state, &[view(&a, 1), view(&b, 2)], 10);
        assert_eq!(first.rows.len(), 2);
        assert!(rx.try_recv().is_ok());
        // Nothing changed: nothing sent.
        let same = roster.tick(&state, &[view(&a, 1), view(&b, 2)], 20);
        assert!(same.rows.is_empty() && same.gone.is_empty());
        assert!(rx.try_recv().is_err());
        // `a` served a request (its speed changes); `b` left.
        roster.served(&a.to_string(), served(10, 2.0));
        let d = roster.tick(&state, &[view(&a, 1)], 30);
        assert_eq!(d.gone, vec![Arc::from(b.to_string())]);
        assert_eq!(d.rows.len(), 1);
        assert_eq!(d.rows[0].tok_s, Some(5.0));
        let json: serde_json::Value =
            serde_json::from_str(&rx.try_recv().expect("a delta")).expect("json");
        assert_eq!(json["gone"][0], b.to_string());
        assert_eq!(roster.full(40).rows.len(), 1);
    }

    #[test]
    fn speed_is_weighted_towards_recent_requests_and_the_list_is_bounded() {
        let state = RelayState::default();
        let roster = Roster::default();
        let a = PeerId::random();
        roster.tick(&state, &[view(&a, 1)], 1);
        roster.served(&a.to_string(), served(10, 1.0));
        roster.served(&a.to_string(), served(20, 1.0));
        // A request without tokens does not move the speed.
        roster.served(&a.to_string(), served(0, 1.0));
        for _ in 0..RECENT {
            roster.served(&a.to_string(), served(10, 1.0));
        }
        let d = roster.detail(&state, &a).expect("detail");
        assert_eq!(d.recent.len(), RECENT);
        let speed = roster.lock().speed[&a.to_string()];
        let expected = (0..RECENT).fold(10.0 + 0.3 * 10.0, |s, _| s + 0.3 * (10.0 - s));
        assert!((speed - expected).abs() < 1e-9, "{speed} vs {expected}");
        // Gone: forgotten.
        roster.tick(&state, &[], 2);
        assert!(roster.detail(&state, &a).is_none());
        assert!(roster.detail(&state, &PeerId::random()).is_none());
    }
}
