//! Who is on the network: connected nodes, what they registered, their
//! Proof-of-FLOPS standing, the generations they run and how reliably.
//!
//! One plain struct behind one lock, and one [`Notify`] that fires whenever
//! who can be given work changes (a slot freed, a registration, a
//! departure, a proof result). Matchmaking reserves a slot under the same
//! lock that sees the node, so a slot is never taken on (or given back to)
//! a node that already left, and a request waiting for a node wakes on the
//! event that makes one usable instead of polling.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use tabnode_core::{Capabilities, NodeKind, PeerSummary, PofRecord, PofStanding};
use tokio::sync::futures::Notified;
use tokio::sync::Notify;

/// How many Proof-of-FLOPS results are kept per node.
pub const POF_HISTORY: usize = 100;

/// Outcomes remembered per node for its reliability.
const RECENT: usize = 20;

/// Generations a node runs now and its recent outcomes.
#[derive(Debug, Clone, Default)]
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
    /// The catalog ids of its models (resolved once, at registration).
    pub model_ids: Vec<String>,
    /// The IP address of its first connection.
    pub ip: Option<IpAddr>,
    /// Its peer id as text, encoded once (the live figures list every node
    /// every sample).
    pub id: std::sync::Arc<str>,
    load: Load,
    /// What matchmaking ranks of its proof, copied from its history when it
    /// connects and at every result (no lookup per request and node).
    proof: ProofRank,
    /// The rank it is filed under in [`Inner::usable`] (for each model it
    /// serves), if it is usable.
    filed: Option<Rank>,
    /// Which of its connections' stays this is (a node that leaves and
    /// comes back gets a new one): slots taken in an earlier stay are not
    /// given back to this one.
    stay: u64,
}

/// A slot taken on a node by [`Registry::reserve`]: give it back with
/// [`Registry::release`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    /// The node.
    pub peer: PeerId,
    /// Its id as text (kept by the registry, not encoded per request).
    pub id: std::sync::Arc<str>,
    /// The stay it was taken in.
    stay: u64,
}

/// Matchmaking's order: smaller is better (see [`Candidate::rank`]).
type Rank = (u8, u64, u64, std::cmp::Reverse<u64>);

/// The part of a node's Proof-of-FLOPS standing matchmaking ranks by.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct ProofRank {
    /// `Some(true)` if its last proof passed, `Some(false)` if it failed
    /// (or its standing is negative), `None` before its first proof.
    last_proof: Option<bool>,
    /// GFLOP/s of its last passed proof.
    gflops: f64,
}

impl ProofRank {
    fn of(history: Option<&PofHistory>) -> Self {
        let standing = history.map(|h| &h.standing);
        Self {
            // Once proved, a node is usable only while its last proof
            // passed and its standing is not negative.
            last_proof: standing.filter(|s| s.last.is_some()).map(|s| s.valid),
            gflops: standing.and_then(|s| s.matmul_gflops).unwrap_or(0.0),
        }
    }
}

/// What the live figures and the dashboard read of a connected node: its
/// registration's gist, without copying its capabilities.
#[derive(Debug, Clone)]
pub struct NodeView {
    /// The node.
    pub peer: PeerId,
    /// Its peer id as text.
    pub id: std::sync::Arc<str>,
    /// Browser or native.
    pub kind: NodeKind,
    /// The backend its engine runs on, if it serves a model.
    pub backend: Option<&'static str>,
    /// The catalog ids it serves.
    pub model_ids: Vec<String>,
    /// Holds a circuit reservation.
    pub reachable: bool,
    /// When it connected, ms since the Unix epoch.
    pub since_ms: u64,
    /// Its Proof-of-FLOPS standing.
    pub pof: PofStanding,
    /// Generations it runs now.
    pub active: u32,
}

impl NodeEntry {
    /// The ids it is filed under in [`Inner::usable`]: its models, and
    /// [`PYTHON`] if it runs Python.
    fn filed_under(&self) -> impl Iterator<Item = &str> {
        let python = self.capabilities.as_ref().is_some_and(|c| c.python);
        self.model_ids
            .iter()
            .map(String::as_str)
            .chain(python.then_some(PYTHON))
    }

    fn kind(&self) -> NodeKind {
        match &self.capabilities {
            Some(c) => c.kind,
            None if self.transport.starts_with("webrtc") => NodeKind::Browser,
            None => NodeKind::Native,
        }
    }
}

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
    pub departed: Option<Instant>,
}

impl PofHistory {
    /// Adds `record`: a pass counts +1, a failure −5; the node may serve and
    /// earn while its last proof passed and the sum is not negative.
    fn push(&mut self, record: PofRecord) {
        let s = &mut self.standing;
        if record.passed {
            s.passed += 1;
            s.standing += 1;
            s.matmul_gflops = Some(record.matmul_gflops);
        } else {
            s.failed += 1;
            s.standing -= 5;
        }
        s.valid = record.passed && s.standing >= 0;
        s.last = Some(record.clone());
        self.records.push_back(record);
        while self.records.len() > POF_HISTORY {
            self.records.pop_front();
        }
    }
}

/// A node as matchmaking ranks it.
#[derive(Debug, Clone, PartialEq)]
struct Candidate {
    peer: PeerId,
    slots: u32,
    active: u32,
    failure_rate: f64,
    /// `Some(true)` if its last proof passed, `Some(false)` if it failed,
    /// `None` before its first proof.
    last_proof: Option<bool>,
    /// GFLOP/s of its last passed proof.
    gflops: f64,
}

impl Candidate {
    /// A serving node as matchmaking ranks it.
    fn of(peer: &PeerId, e: &NodeEntry, slots: u32) -> Self {
        Self {
            peer: *peer,
            slots,
            active: e.load.active,
            failure_rate: e.load.failure_rate(),
            last_proof: e.proof.last_proof,
            gflops: e.proof.gflops,
        }
    }

    /// Usable now: not failing its proof, a slot free, not tried already.
    fn usable(&self, exclude: &HashSet<PeerId>) -> bool {
        self.last_proof != Some(false) && self.active < self.slots && !tried(exclude, &self.peer)
    }

    /// Smaller is better: verified before unverified, then least loaded
    /// (as a fraction of the slots), most reliable, fastest.
    fn rank(&self) -> Rank {
        (
            u8::from(self.last_proof != Some(true)),
            u64::from(self.active) * 1000 / u64::from(self.slots.max(1)),
            (self.failure_rate * 1000.0) as u64,
            std::cmp::Reverse((self.gflops * 1000.0) as u64),
        )
    }
}

/// Whether `peer` is in `exclude` (not hashed when the set is empty, as it
/// is for a request's first node).
fn tried(exclude: &HashSet<PeerId>, peer: &PeerId) -> bool {
    !exclude.is_empty() && exclude.contains(peer)
}

/// Why no node could be reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NoNode {
    /// No connected node serves the model.
    #[error("no node serves this model")]
    UnknownModel,
    /// Nodes serve it, but none is usable now (busy, failed its proof, or
    /// already tried).
    #[error("no node for this model is free")]
    Unavailable,
}

/// How a closed connection changed the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Departure {
    /// The node has other connections.
    Stays,
    /// Its last connection closed: it left.
    Left,
    /// It was never admitted (refused at [`Registry::connected`]).
    Unknown,
}

/// Uptime minutes counted for a node and not yet written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UptimeSpan {
    /// The node.
    pub peer: PeerId,
    /// Its first minute in this span (minutes since the Unix epoch).
    pub first: u64,
    /// Minutes counted.
    pub minutes: u64,
}

/// Counts for the gauges of `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Connected browser nodes.
    pub browsers: usize,
    /// Connected native nodes.
    pub natives: usize,
    /// Nodes holding a circuit reservation.
    pub reachable: usize,
}

#[derive(Debug, Default)]
struct Inner {
    nodes: HashMap<PeerId, NodeEntry>,
    pof: HashMap<PeerId, PofHistory>,
    /// Uptime minutes counted and not yet written: first minute, minutes.
    uptime: HashMap<PeerId, (u64, u64)>,
    /// Nodes that failed too many spot checks: never given work or points
    /// again (by peer id, across reconnections).
    excluded: HashSet<PeerId>,
    /// The usable nodes (registered, a slot free, not failing their proof,
    /// not excluded) of each model id (and [`PYTHON`]), best first: what
    /// [`Registry::reserve`] takes from without scanning every node. Kept
    /// by [`Inner::unfile`] and [`Inner::file`] around every change of a
    /// node.
    usable: HashMap<String, std::collections::BTreeSet<(Rank, PeerId)>>,
    /// The last node stay numbered.
    stays: u64,
}

impl Inner {
    /// The registered nodes serving `model_id` and not excluded, with their
    /// slots: what can be told without looking up anything else.
    fn serving<'a>(
        &'a self,
        model_id: &'a str,
    ) -> impl Iterator<Item = (&'a PeerId, &'a NodeEntry, u32)> + 'a {
        self.nodes.iter().filter_map(move |(peer, e)| {
            let caps = e.capabilities.as_ref()?;
            let serves = if model_id == PYTHON {
                caps.python
            } else {
                e.model_ids.iter().any(|m| m == model_id)
            };
            let excluded = !self.excluded.is_empty() && self.excluded.contains(peer);
            (serves && !excluded).then_some((peer, e, caps.slots))
        })
    }

    fn candidates<'a>(&'a self, model_id: &'a str) -> impl Iterator<Item = Candidate> + 'a {
        self.serving(model_id)
            .map(|(peer, e, slots)| Candidate::of(peer, e, slots))
    }

    /// Counts one more generation on `peer`.
    fn take_slot(&mut self, peer: &PeerId) -> Slot {
        self.unfile(peer);
        let (stay, id) = match self.nodes.get_mut(peer) {
            Some(e) => {
                e.load.active += 1;
                (e.stay, e.id.clone())
            }
            None => (0, peer.to_string().into()),
        };
        self.file(peer);
        Slot {
            peer: *peer,
            id,
            stay,
        }
    }

    /// Takes `peer` out of [`Inner::usable`] (before anything about it
    /// changes).
    fn unfile(&mut self, peer: &PeerId) {
        let Inner { nodes, usable, .. } = self;
        let Some(e) = nodes.get_mut(peer) else {
            return;
        };
        let Some(rank) = e.filed.take() else {
            return;
        };
        for model in e.filed_under() {
            if let Some(set) = usable.get_mut(model) {
                set.remove(&(rank, *peer));
            }
        }
    }

    /// Files `peer` in [`Inner::usable`] under its rank now, if it is
    /// usable (after it changed).
    fn file(&mut self, peer: &PeerId) {
        let Inner {
            nodes,
            usable,
            excluded,
            ..
        } = self;
        let Some(e) = nodes.get_mut(peer) else {
            return;
        };
        debug_assert!(e.filed.is_none(), "filed twice");
        let Some(slots) = e.capabilities.as_ref().map(|c| c.slots) else {
            return;
        };
        let c = Candidate::of(peer, e, slots);
        if !c.usable(&HashSet::new()) || excluded.contains(peer) {
            return;
        }
        let rank = c.rank();
        for model in e.filed_under() {
            // Sets stay when they empty (one per catalog id ever served):
            // no allocation per request.
            match usable.get_mut(model) {
                Some(set) => {
                    set.insert((rank, *peer));
                }
                None => {
                    usable.insert(model.to_string(), [(rank, *peer)].into());
                }
            }
        }
        e.filed = Some(rank);
    }
}

/// What [`Registry::reserve`] takes for "a tab that runs flows' Python
/// steps for others" (registered `python: true`) in place of a model id:
/// the same ranking, slots and waiting as a model's nodes.
pub const PYTHON: &str = "python";

/// The registry: one lock, one wake-up for whoever waits for a node.
#[derive(Debug, Default)]
pub struct Registry {
    inner: Mutex<Inner>,
    changed: Notify,
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A future that completes at the next change of who can be given work.
    /// Create it *before* looking (then a change in between is not missed).
    pub fn changed(&self) -> Notified<'_> {
        self.changed.notified()
    }

    /// Takes what `take` finds (a slot), waiting while it finds every
    /// candidate busy ([`NoNode::Unavailable`]) for the next change of who
    /// can be given work, for at most `wait`.
    ///
    /// # Errors
    /// [`NoNode::UnknownModel`] as soon as `take` says so;
    /// [`NoNode::Unavailable`] once `wait` has passed.
    pub async fn take_within<T>(
        &self,
        wait: Duration,
        mut take: impl FnMut(&Self) -> Result<T, NoNode>,
    ) -> Result<T, NoNode> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Created before looking: a change in between is not missed.
            let woken = self.changed();
            match take(self) {
                Err(NoNode::Unavailable) => {
                    let now = tokio::time::Instant::now();
                    if now >= deadline {
                        return Err(NoNode::Unavailable);
                    }
                    let _ = tokio::time::timeout(deadline - now, woken).await;
                }
                taken => return taken,
            }
        }
    }

    fn wake(&self) {
        self.changed.notify_waiters();
    }

    /// Records a new connection from `peer` at `ip`. Returns false (and
    /// records nothing) when `max_per_ip` other identities are connected
    /// from that address already: the caller closes the connection.
    pub fn connected(
        &self,
        peer: PeerId,
        transport: &str,
        ip: Option<IpAddr>,
        max_per_ip: usize,
        now_ms: u64,
    ) -> bool {
        let mut g = self.lock();
        if let Some(e) = g.nodes.get_mut(&peer) {
            e.connections += 1;
            return true;
        }
        let same_ip = ip.map_or(0, |ip| {
            g.nodes.values().filter(|e| e.ip == Some(ip)).count()
        });
        if same_ip >= max_per_ip {
            return false;
        }
        let proof = ProofRank::of(g.pof.get(&peer));
        g.stays += 1;
        let stay = g.stays;
        g.nodes.insert(
            peer,
            NodeEntry {
                transport: transport.to_string(),
                connected_since_ms: now_ms,
                connections: 1,
                reachable: false,
                capabilities: None,
                model_ids: Vec::new(),
                ip,
                id: peer.to_string().into(),
                load: Load::default(),
                proof,
                filed: None,
                stay,
            },
        );
        if let Some(h) = g.pof.get_mut(&peer) {
            h.departed = None;
        }
        true
    }

    /// Records a closed connection (`remaining`: the node's connections
    /// left); the node leaves with its last one, and so do its slots.
    pub fn disconnected(&self, peer: PeerId, remaining: u32) -> Departure {
        let mut g = self.lock();
        if remaining > 0 {
            return match g.nodes.get_mut(&peer) {
                Some(e) => {
                    e.connections = remaining as usize;
                    Departure::Stays
                }
                None => Departure::Unknown,
            };
        }
        g.unfile(&peer);
        if g.nodes.remove(&peer).is_none() {
            return Departure::Unknown;
        }
        if let Some(h) = g.pof.get_mut(&peer) {
            h.departed = Some(Instant::now());
        }
        drop(g);
        self.wake();
        Departure::Left
    }

    /// Records a reservation change for `peer`.
    pub fn set_reachable(&self, peer: PeerId, reachable: bool) {
        if let Some(e) = self.lock().nodes.get_mut(&peer) {
            e.reachable = reachable;
        }
    }

    /// Stores what `peer` registered and the catalog ids of its models.
    /// Returns false if the peer is not connected (a stale request).
    pub fn register(&self, peer: PeerId, caps: Capabilities, model_ids: Vec<String>) -> bool {
        let mut g = self.lock();
        g.unfile(&peer);
        let Some(e) = g.nodes.get_mut(&peer) else {
            return false;
        };
        e.model_ids = model_ids;
        e.capabilities = Some(caps);
        g.file(&peer);
        drop(g);
        self.wake();
        true
    }

    /// Records a Proof-of-FLOPS result for `peer` (connected or not: a
    /// result may land just after the node left) and returns its standing.
    pub fn record_pof(&self, peer: PeerId, record: PofRecord) -> PofStanding {
        let mut g = self.lock();
        let departed = !g.nodes.contains_key(&peer);
        let h = g.pof.entry(peer).or_default();
        if departed && h.departed.is_none() {
            h.departed = Some(Instant::now());
        }
        h.push(record);
        let standing = h.standing.clone();
        let proof = ProofRank::of(Some(h));
        g.unfile(&peer);
        if let Some(e) = g.nodes.get_mut(&peer) {
            e.proof = proof;
        }
        g.file(&peer);
        drop(g);
        // Who may be given work changed.
        self.wake();
        standing
    }

    /// Takes a slot of the best usable node for the catalog model
    /// `model_id` that is not in `exclude`.
    ///
    /// # Errors
    /// [`NoNode`] when there is none.
    pub fn reserve(&self, model_id: &str, exclude: &HashSet<PeerId>) -> Result<Slot, NoNode> {
        let mut g = self.lock();
        // The best usable node not tried yet, from the index: no scan.
        let best = g.usable.get(model_id).and_then(|set| {
            set.iter()
                .map(|(_, peer)| *peer)
                .find(|peer| !tried(exclude, peer))
        });
        let Some(peer) = best else {
            // Rare (every node busy or tried): tell unknown from busy.
            return Err(if g.serving(model_id).next().is_some() {
                NoNode::Unavailable
            } else {
                NoNode::UnknownModel
            });
        };
        Ok(g.take_slot(&peer))
    }

    /// Gives back `slot`, recording whether its work succeeded. A node that
    /// left has no slots to give back, also after it came back (its new
    /// stay's slots are not this one).
    pub fn release(&self, slot: Slot, ok: bool) {
        let peer = slot.peer;
        let mut g = self.lock();
        if g.nodes.get(&peer).is_none_or(|e| e.stay != slot.stay) {
            return;
        }
        g.unfile(&peer);
        if let Some(l) = g.nodes.get_mut(&peer).map(|e| &mut e.load) {
            l.active = l.active.saturating_sub(1);
            l.recent.push_back(ok);
            while l.recent.len() > RECENT {
                l.recent.pop_front();
            }
        }
        g.file(&peer);
        drop(g);
        self.wake();
    }

    /// Generations `peer` runs now, and its failure rate.
    pub fn load_of(&self, peer: &PeerId) -> (u32, f64) {
        self.lock()
            .nodes
            .get(peer)
            .map_or((0, 0.0), |e| (e.load.active, e.load.failure_rate()))
    }

    /// The registered nodes serving the catalog model `model_id`.
    pub fn serving(&self, model_id: &str) -> Vec<PeerId> {
        self.lock().candidates(model_id).map(|c| c.peer).collect()
    }

    /// Whether `peer`'s last proof passed: what earning points requires.
    pub fn proof_valid(&self, peer: &PeerId) -> bool {
        let g = self.lock();
        !g.excluded.contains(peer) && g.pof.get(peer).is_some_and(|h| h.standing.valid)
    }

    /// Excludes `peer` from work and points for good (it failed too many
    /// spot checks).
    pub fn exclude(&self, peer: PeerId) {
        let mut g = self.lock();
        g.unfile(&peer);
        g.excluded.insert(peer);
        drop(g);
        self.wake();
    }

    /// Whether `peer` is excluded.
    pub fn is_excluded(&self, peer: &PeerId) -> bool {
        self.lock().excluded.contains(peer)
    }

    /// Takes a slot of the best node to spot-check the tokens the nodes
    /// `served` delivered of the catalog model `model_id`: usable, scoring
    /// ([`Capabilities::scores`]), none of `served` nor of `others` (a
    /// first checker) and, unless `same_address` allows it, at none of
    /// their IP addresses.
    ///
    /// # Errors
    /// [`NoNode::UnknownModel`] when no such node is connected,
    /// [`NoNode::Unavailable`] when they are all busy.
    pub fn reserve_checker(
        &self,
        model_id: &str,
        served: &[PeerId],
        others: &[PeerId],
        same_address: bool,
    ) -> Result<Slot, NoNode> {
        let mut g = self.lock();
        let ip_of = |g: &Inner, p: &PeerId| g.nodes.get(p).and_then(|e| e.ip);
        let served_ips: Vec<_> = served.iter().map(|p| ip_of(&g, p)).collect();
        let mut any = false;
        let best = g
            .candidates(model_id)
            .filter(|c| {
                !served.contains(&c.peer)
                    && !others.contains(&c.peer)
                    && c.last_proof != Some(false)
            })
            .filter(|c| {
                let e = g.nodes.get(&c.peer);
                let scores = e
                    .and_then(|e| e.capabilities.as_ref())
                    .is_some_and(|caps| caps.scores);
                let ip = ip_of(&g, &c.peer);
                let apart = same_address
                    || served_ips
                        .iter()
                        .all(|s| matches!((s, ip), (Some(a), Some(b)) if *a != b));
                scores && apart
            })
            .inspect(|_| any = true)
            .filter(|c| c.usable(&HashSet::new()))
            .min_by_key(Candidate::rank)
            .map(|c| c.peer);
        let Some(best) = best else {
            return Err(if any {
                NoNode::Unavailable
            } else {
                NoNode::UnknownModel
            });
        };
        Ok(g.take_slot(&best))
    }

    /// The Proof-of-FLOPS history of `peer`.
    pub fn pof_history(&self, peer: &PeerId) -> Option<PofHistory> {
        self.lock().pof.get(peer).cloned()
    }

    /// The matmul rate `peer`'s proofs stand at (GFLOP/s), without copying
    /// its history.
    pub fn proven_gflops(&self, peer: &PeerId) -> Option<f64> {
        self.lock()
            .pof
            .get(peer)
            .and_then(|h| h.standing.matmul_gflops)
    }

    /// Nodes with a proof history (connected or recently departed).
    pub fn pof_tracked(&self) -> usize {
        self.lock().pof.len()
    }

    /// Drops the proof history of nodes that left more than `after` ago.
    pub fn evict_departed(&self, after: Duration) {
        self.lock()
            .pof
            .retain(|_, h| h.departed.is_none_or(|t| t.elapsed() < after));
    }

    /// What `peer` registered, if it is connected.
    pub fn capabilities(&self, peer: &PeerId) -> Option<Capabilities> {
        self.lock()
            .nodes
            .get(peer)
            .and_then(|e| e.capabilities.clone())
    }

    /// The peers that registered and are still connected.
    pub fn registered_peers(&self) -> Vec<PeerId> {
        self.lock()
            .nodes
            .iter()
            .filter(|(_, e)| e.capabilities.is_some())
            .map(|(p, _)| *p)
            .collect()
    }

    /// When `peer`'s connection started (ms since the epoch), if connected.
    pub fn connected_since(&self, peer: &PeerId) -> Option<u64> {
        self.lock().nodes.get(peer).map(|e| e.connected_since_ms)
    }

    /// Every connected node's view, in no particular order (one lock).
    pub fn views(&self) -> Vec<NodeView> {
        let g = self.lock();
        g.nodes
            .iter()
            .map(|(peer, e)| NodeView {
                peer: *peer,
                id: e.id.clone(),
                kind: e.kind(),
                backend: e
                    .capabilities
                    .as_ref()
                    .and_then(|c| c.engine.as_ref())
                    .map(|engine| engine.backend.name()),
                model_ids: e.model_ids.clone(),
                reachable: e.reachable,
                since_ms: e.connected_since_ms,
                pof: g
                    .pof
                    .get(peer)
                    .map(|h| h.standing.clone())
                    .unwrap_or_default(),
                active: e.load.active,
            })
            .collect()
    }

    /// Every connected node, oldest first.
    pub fn summaries(&self) -> Vec<PeerSummary> {
        let g = self.lock();
        let mut out: Vec<PeerSummary> = g
            .nodes
            .iter()
            .map(|(id, e)| PeerSummary {
                peer_id: id.to_string(),
                kind: e.kind(),
                transport: e.transport.clone(),
                connected_since_ms: e.connected_since_ms,
                reachable: e.reachable,
                capabilities: e.capabilities.clone(),
                pof: g
                    .pof
                    .get(id)
                    .map(|h| h.standing.clone())
                    .unwrap_or_default(),
            })
            .collect();
        drop(g);
        out.sort_by(|a, b| {
            (a.connected_since_ms, &a.peer_id).cmp(&(b.connected_since_ms, &b.peer_id))
        });
        out
    }

    /// Per catalog model id served now: nodes and slots, sorted by id
    /// (excluded nodes left out).
    pub fn served_models(&self) -> Vec<(String, usize, u64)> {
        let g = self.lock();
        let mut out: Vec<(String, usize, u64)> = Vec::new();
        for (peer, e) in &g.nodes {
            let Some(caps) = e.capabilities.as_ref() else {
                continue;
            };
            if g.excluded.contains(peer) {
                continue;
            }
            for id in &e.model_ids {
                match out.iter_mut().find(|(m, _, _)| m == id) {
                    Some((_, nodes, slots)) => {
                        *nodes += 1;
                        *slots += u64::from(caps.slots);
                    }
                    None => out.push((id.clone(), 1, u64::from(caps.slots))),
                }
            }
        }
        drop(g);
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Counts a minute of uptime (`minute`: minutes since the Unix epoch)
    /// for every registered node that holds a reservation (can be given
    /// work) and whose proof is valid. Every `period` minutes returns the
    /// counted spans and starts new ones: one ledger credit per node and
    /// period, not a row per node and minute.
    pub fn count_uptime(&self, minute: u64, period: u64) -> Vec<UptimeSpan> {
        let mut g = self.lock();
        let Inner {
            nodes, pof, uptime, ..
        } = &mut *g;
        for (peer, e) in nodes.iter() {
            let eligible = e.capabilities.is_some()
                && e.reachable
                && pof.get(peer).is_some_and(|h| h.standing.valid);
            if eligible {
                let (first, minutes) = uptime.entry(*peer).or_insert((minute, 0));
                if *minutes == 0 {
                    *first = minute;
                }
                *minutes += 1;
            }
        }
        if !(minute + 1).is_multiple_of(period.max(1)) {
            return Vec::new();
        }
        uptime
            .drain()
            .filter(|(_, (_, m))| *m > 0)
            .map(|(peer, (first, minutes))| UptimeSpan {
                peer,
                first,
                minutes,
            })
            .collect()
    }

    /// Counts for the gauges of `/metrics`.
    pub fn counts(&self) -> Counts {
        let g = self.lock();
        let mut c = Counts::default();
        for e in g.nodes.values() {
            match e.kind() {
                NodeKind::Browser => c.browsers += 1,
                _ => c.natives += 1,
            }
            c.reachable += usize::from(e.reachable);
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODEL: &str = "m";
    const IP: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));

    fn record(round: u64, passed: bool, gflops: f64) -> PofRecord {
        PofRecord {
            at_ms: 1_000 + round,
            round,
            n: 2048,
            sized_by: "cpu".into(),
            device_class: tabnode_core::DeviceClass::Cpu,
            commit_ms: 10,
            rtt_ms: 1.0,
            deadline_ms: 10_000,
            matmul_gflops: gflops,
            passed,
            reason: (!passed).then(|| "wrong".into()),
        }
    }

    /// `reserve`'s node.
    fn pick(r: &Registry, model: &str, exclude: &HashSet<PeerId>) -> Result<PeerId, NoNode> {
        r.reserve(model, exclude).map(|s| s.peer)
    }

    /// A slot of `peer`'s current stay (what `reserve` gave out).
    fn slot_of(r: &Registry, peer: PeerId) -> Slot {
        let stay = r.lock().nodes.get(&peer).map_or(0, |e| e.stay);
        Slot {
            peer,
            id: peer.to_string().into(),
            stay,
        }
    }

    /// A connected node serving [`MODEL`] with `slots`, and a proof result
    /// if `proof` says so.
    fn node(r: &Registry, slots: u32, proof: Option<(bool, f64)>) -> PeerId {
        let peer = PeerId::random();
        assert!(r.connected(peer, "tcp", IP, 100, 0));
        let mut caps = Capabilities::new(NodeKind::Native, "n");
        caps.slots = slots;
        assert!(r.register(peer, caps, vec![MODEL.into()]));
        if let Some((passed, gflops)) = proof {
            r.record_pof(peer, record(1, passed, gflops));
        }
        peer
    }

    /// The index [`Registry::reserve`] takes from holds exactly the usable
    /// nodes of each model under their current rank, whatever happens to
    /// them: checked against a scan of every node after each of 3,000
    /// random changes.
    #[test]
    fn the_index_always_holds_what_a_scan_of_every_node_finds() {
        let r = Registry::default();
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let models = ["a", "b", PYTHON];
        let register = |r: &Registry, peer: PeerId, pick: u64| {
            let mut caps = Capabilities::new(NodeKind::Native, "n");
            caps.slots = 1 + (pick % 3) as u32;
            caps.python = pick.is_multiple_of(4);
            let ids = match pick % 3 {
                0 => vec!["a".to_string()],
                1 => vec!["b".to_string()],
                _ => vec!["a".to_string(), "b".to_string()],
            };
            r.register(peer, caps, ids)
        };
        let peers: Vec<PeerId> = (0..12).map(|_| PeerId::random()).collect();
        let mut held: Vec<Slot> = Vec::new();
        for round in 0..3_000u64 {
            let peer = peers[next(peers.len() as u64) as usize];
            match next(9) {
                0 => {
                    r.connected(peer, "tcp", IP, 100, 0);
                    register(&r, peer, next(12));
                }
                1 => {
                    r.disconnected(peer, 0);
                }
                2 => {
                    r.record_pof(peer, record(round, next(5) > 0, next(100) as f64));
                }
                3 if next(20) == 0 => r.exclude(peer),
                4 | 5 => {
                    let model = models[next(3) as usize];
                    let tried: HashSet<PeerId> =
                        (next(4) == 0).then_some(peer).into_iter().collect();
                    if let Ok(slot) = r.reserve(model, &tried) {
                        assert!(!tried.contains(&slot.peer), "a tried node was given work");
                        held.push(slot);
                    }
                }
                _ => {
                    if !held.is_empty() {
                        let p = held.swap_remove(next(held.len() as u64) as usize);
                        r.release(p, next(4) > 0);
                    }
                }
            }
            let g = r.lock();
            for model in models {
                let scanned: std::collections::BTreeSet<(Rank, PeerId)> = g
                    .candidates(model)
                    .filter(|c| c.usable(&HashSet::new()))
                    .map(|c| (c.rank(), c.peer))
                    .collect();
                let indexed = g.usable.get(model).cloned().unwrap_or_default();
                assert_eq!(indexed, scanned, "round {round}, model {model}");
            }
        }
    }

    #[test]
    fn verified_and_least_loaded_first_never_a_failed_prover() {
        let r = Registry::default();
        let _failed = node(&r, 4, Some((false, 100.0)));
        let fresh = node(&r, 1, None);
        let slow = node(&r, 2, Some((true, 5.0)));
        let fast = node(&r, 2, Some((true, 50.0)));
        let none = HashSet::new();
        // Verified and fastest first; then load spreads work.
        assert_eq!(pick(&r, MODEL, &none), Ok(fast));
        assert_eq!(pick(&r, MODEL, &none), Ok(slow));
        assert_eq!(pick(&r, MODEL, &none), Ok(fast));
        assert_eq!(pick(&r, MODEL, &none), Ok(slow));
        // Verified nodes full: the unverified one; never the failed one.
        assert_eq!(pick(&r, MODEL, &none), Ok(fresh));
        assert_eq!(pick(&r, MODEL, &none), Err(NoNode::Unavailable));
        r.release(slot_of(&r, slow), true);
        assert_eq!(pick(&r, MODEL, &none), Ok(slow));
        assert_eq!(pick(&r, "other", &none), Err(NoNode::UnknownModel));
        assert_eq!(r.load_of(&fast), (2, 0.0));
    }

    #[test]
    fn unreliable_nodes_come_after_reliable_ones_and_tried_ones_are_skipped() {
        let r = Registry::default();
        let a = node(&r, 8, Some((true, 10.0)));
        let b = node(&r, 8, Some((true, 10.0)));
        let first = pick(&r, MODEL, &HashSet::new()).expect("a node");
        r.release(slot_of(&r, first), false);
        let other = if first == a { b } else { a };
        assert_eq!(pick(&r, MODEL, &HashSet::new()), Ok(other));
        r.release(slot_of(&r, other), true);
        let exclude: HashSet<PeerId> = [other].into();
        assert_eq!(pick(&r, MODEL, &exclude), Ok(first));
    }

    #[test]
    fn a_node_that_left_gets_no_slot_back_and_is_never_reserved() {
        let r = Registry::default();
        let a = node(&r, 1, Some((true, 1.0)));
        let old = r.reserve(MODEL, &HashSet::new()).expect("a's slot");
        assert_eq!(old.peer, a);
        assert_eq!(r.disconnected(a, 0), Departure::Left);
        r.release(old.clone(), false);
        assert_eq!(r.load_of(&a), (0, 0.0));
        assert!(r.lock().nodes.is_empty(), "entry re-created");
        assert_eq!(pick(&r, MODEL, &HashSet::new()), Err(NoNode::UnknownModel));
        // Back with a new connection: a fresh entry with no load, the same
        // proof history.
        assert!(r.connected(a, "tcp", IP, 100, 5));
        assert!(r.pof_history(&a).is_some_and(|h| h.departed.is_none()));
        assert_eq!(r.load_of(&a), (0, 0.0));
        // Its one slot taken in the new stay: the old request's late release
        // gives nothing back (the node stays full, its record clean).
        let mut caps = Capabilities::new(NodeKind::Native, "n");
        caps.slots = 1;
        assert!(r.register(a, caps, vec![MODEL.into()]));
        let new = r.reserve(MODEL, &HashSet::new()).expect("a's new slot");
        r.release(old, false);
        assert_eq!(r.load_of(&a), (1, 0.0));
        assert_eq!(pick(&r, MODEL, &HashSet::new()), Err(NoNode::Unavailable));
        r.release(new, true);
        assert_eq!(r.load_of(&a), (0, 0.0));
    }

    #[test]
    fn one_failure_outweighs_a_later_pass() {
        let r = Registry::default();
        let p = node(&r, 1, Some((true, 5.0)));
        assert!(r.proof_valid(&p));
        r.record_pof(p, record(2, false, 0.0));
        assert!(!r.proof_valid(&p));
        // +1 −5 +1 = −3: still excluded from serving.
        r.record_pof(p, record(3, true, 5.0));
        assert!(!r.proof_valid(&p), "one pass erased a failure");
        assert_eq!(pick(&r, MODEL, &HashSet::new()), Err(NoNode::Unavailable));
        for round in 4..7 {
            r.record_pof(p, record(round, true, 5.0));
        }
        let h = r.pof_history(&p).expect("history");
        assert_eq!((h.standing.standing, h.standing.valid), (0, true));
        assert_eq!(pick(&r, MODEL, &HashSet::new()), Ok(p));
    }

    #[tokio::test]
    async fn waiters_wake_on_a_proof_a_release_a_registration_and_a_departure() {
        let r = std::sync::Arc::new(Registry::default());
        let p = node(&r, 1, None);
        let wakes = |f: &dyn Fn(&Registry)| {
            let woken = r.changed();
            f(&r);
            woken
        };
        let until = Duration::from_secs(5);
        let w = wakes(&|r| {
            r.record_pof(p, record(1, true, 1.0));
        });
        tokio::time::timeout(until, w).await.expect("proof wakes");
        let w = wakes(&|r| r.release(slot_of(r, p), true));
        tokio::time::timeout(until, w).await.expect("release wakes");
        let q = PeerId::random();
        assert!(r.connected(q, "tcp", IP, 100, 0));
        let w = wakes(&|r| {
            r.register(
                q,
                Capabilities::new(NodeKind::Native, "q"),
                vec![MODEL.into()],
            );
        });
        tokio::time::timeout(until, w)
            .await
            .expect("registration wakes");
        let w = wakes(&|r| {
            r.disconnected(q, 0);
        });
        tokio::time::timeout(until, w)
            .await
            .expect("departure wakes");
        // A reachability change does not make anyone usable: no wake-up.
        let w = wakes(&|r| r.set_reachable(p, true));
        assert!(tokio::time::timeout(Duration::from_millis(50), w)
            .await
            .is_err());
    }

    #[tokio::test]
    async fn a_taker_waits_for_a_free_slot_and_no_longer_than_it_may() {
        let r = std::sync::Arc::new(Registry::default());
        let reserve = |r: &Registry| r.reserve(MODEL, &HashSet::new());
        // Nobody serves the model: at once, whatever the wait.
        let t = std::time::Instant::now();
        let unknown = r.take_within(Duration::from_secs(30), reserve).await;
        assert_eq!(unknown.map(|s| s.peer), Err(NoNode::UnknownModel));
        assert!(t.elapsed() < Duration::from_secs(5));
        // Its one slot taken: the next taker gets it when it is given back.
        let p = node(&r, 1, Some((true, 1.0)));
        let held = r.take_within(Duration::ZERO, reserve).await.expect("free");
        let waiter = {
            let r = r.clone();
            tokio::spawn(async move {
                r.take_within(Duration::from_secs(30), |r| {
                    r.reserve(MODEL, &HashSet::new())
                })
                .await
                .map(|s| s.peer)
            })
        };
        tokio::task::yield_now().await;
        r.release(held, true);
        let got = tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("woken by the release")
            .expect("joined");
        assert_eq!(got, Ok(p));
        // Still taken: given up after the wait, not before.
        let t = std::time::Instant::now();
        let busy = r.take_within(Duration::from_millis(200), reserve).await;
        assert_eq!(busy.map(|s| s.peer), Err(NoNode::Unavailable));
        assert!(t.elapsed() >= Duration::from_millis(200));
    }

    #[test]
    fn identities_per_address_are_limited_and_departures_are_counted() {
        let r = Registry::default();
        let (a, b) = (PeerId::random(), PeerId::random());
        assert!(r.connected(a, "webrtc-direct", IP, 2, 10));
        assert!(r.connected(b, "tcp", IP, 2, 20));
        assert!(r.connected(b, "tcp", IP, 2, 30), "a second connection");
        let c = PeerId::random();
        assert!(!r.connected(c, "tcp", IP, 2, 40));
        assert_eq!(r.disconnected(c, 0), Departure::Unknown);
        assert_eq!(r.disconnected(b, 1), Departure::Stays);
        r.set_reachable(b, true);
        assert_eq!(
            r.counts(),
            Counts {
                browsers: 1,
                natives: 1,
                reachable: 1
            }
        );
        assert_eq!(r.disconnected(b, 0), Departure::Left);
        assert_eq!(r.counts().reachable, 0);
        assert!(!r.register(b, Capabilities::new(NodeKind::Native, "b"), Vec::new()));
    }

    #[test]
    fn a_proof_that_lands_after_its_node_left_is_evicted_with_it() {
        let r = Registry::default();
        let p = node(&r, 1, None);
        assert_eq!(r.disconnected(p, 0), Departure::Left);
        r.record_pof(p, record(1, true, 1.0));
        assert_eq!(r.pof_tracked(), 1);
        r.evict_departed(Duration::ZERO);
        assert_eq!(r.pof_tracked(), 0, "history of a departed node kept");
    }
}
