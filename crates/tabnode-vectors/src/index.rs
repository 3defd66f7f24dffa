//! Indexes: the exact scan and the HNSW graph, behind [`VectorIndex`].
//!
//! Points live in slots (`u32`, in insertion order). Both indexes hold unit
//! vectors and score by their dot product, the cosine similarity. The
//! store decides which slots a search may return (live ones, passing the
//! filter) through `allow`.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use hnsw_rs::prelude::Distance;

/// A point found: its slot and cosine similarity to the query.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    /// The slot.
    pub slot: u32,
    /// Cosine similarity, from −1 to 1.
    pub score: f32,
}

/// What a collection searches with. The store keeps an [`Exact`] for every
/// collection and adds an [`Hnsw`] above a size; a deployment that
/// outgrows one relay would implement this over a Qdrant collection (see
/// `ARCHITECTURE.md` for the mapping).
pub trait VectorIndex: Send + Sync {
    /// A name for logs and `GET /v1/vectors/{collection}`.
    fn kind(&self) -> &'static str;
    /// The `k` slots with the highest scores among those `allow` accepts,
    /// best first. `effort` is the HNSW search width (ignored by the exact
    /// scan).
    fn search(
        &self,
        query: &[f32],
        k: usize,
        effort: usize,
        allow: &dyn Fn(u32) -> bool,
    ) -> Vec<Hit>;
}

/// The dot product, in eight lanes so the compiler vectorises it.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// A score ordered totally (NaN cannot occur: vectors are finite and unit).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Scored(f32, u32);

impl Eq for Scored {}

impl Ord for Scored {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0
            .total_cmp(&other.0)
            // Ties: the earlier slot ranks higher.
            .then_with(|| other.1.cmp(&self.1))
    }
}

impl PartialOrd for Scored {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The `k` best hits seen, kept in a min-heap of size `k`.
#[derive(Debug)]
pub(crate) struct TopK {
    k: usize,
    heap: BinaryHeap<Reverse<Scored>>,
}

impl TopK {
    pub(crate) fn new(k: usize) -> Self {
        Self {
            k,
            heap: BinaryHeap::with_capacity(k + 1),
        }
    }

    pub(crate) fn push(&mut self, hit: Hit) {
        let s = Scored(hit.score, hit.slot);
        if self.heap.len() < self.k {
            self.heap.push(Reverse(s));
        } else if self.heap.peek().is_some_and(|Reverse(min)| s > *min) {
            self.heap.pop();
            self.heap.push(Reverse(s));
        }
    }

    /// Best first.
    pub(crate) fn into_hits(self) -> Vec<Hit> {
        let mut v: Vec<Scored> = self.heap.into_iter().map(|Reverse(s)| s).collect();
        v.sort_by(|a, b| b.cmp(a));
        v.into_iter()
            .map(|Scored(score, slot)| Hit { slot, score })
            .collect()
    }
}

/// Every vector, in slot order: the exact scan and the store's copy of the
/// vectors.
#[derive(Debug, Clone)]
pub struct Exact {
    dims: usize,
    vectors: Vec<f32>,
}

impl Exact {
    /// An empty index of `dims`-dimensional vectors.
    pub fn new(dims: usize) -> Self {
        Self {
            dims,
            vectors: Vec::new(),
        }
    }

    /// The vectors' dimensions.
    pub fn dims(&self) -> usize {
        self.dims
    }

    /// Slots held (live or not).
    pub fn len(&self) -> usize {
        self.vectors.len() / self.dims.max(1)
    }

    /// Whether it holds no slot.
    pub fn is_empty(&self) -> bool {
        self.vectors.is_empty()
    }

    /// Adds a unit vector of the index's dimensions in the next slot.
    pub(crate) fn push(&mut self, v: &[f32]) -> u32 {
        debug_assert_eq!(v.len(), self.dims);
        let slot = u32::try_from(self.len()).unwrap_or(u32::MAX);
        self.vectors.extend_from_slice(v);
        slot
    }

    /// The vector in `slot`.
    pub fn vector(&self, slot: u32) -> &[f32] {
        let at = slot as usize * self.dims;
        self.vectors.get(at..at + self.dims).unwrap_or(&[])
    }

    /// The exact scan over slots `from..`.
    pub fn search_from(
        &self,
        from: u32,
        query: &[f32],
        k: usize,
        allow: &dyn Fn(u32) -> bool,
    ) -> Vec<Hit> {
        let mut top = TopK::new(k);
        for (slot, v) in (0u32..)
            .zip(self.vectors.chunks_exact(self.dims.max(1)))
            .skip(from as usize)
        {
            if allow(slot) {
                top.push(Hit {
                    slot,
                    score: dot(query, v),
                });
            }
        }
        top.into_hits()
    }
}

impl VectorIndex for Exact {
    fn kind(&self) -> &'static str {
        "exact"
    }

    fn search(&self, query: &[f32], k: usize, _: usize, allow: &dyn Fn(u32) -> bool) -> Vec<Hit> {
        self.search_from(0, query, k, allow)
    }
}

/// `1 − cos` of unit vectors, never below zero (`hnsw_rs`'s own `DistDot`
/// asserts it is, which rounding breaks for a vector and itself).
#[derive(Debug, Clone, Copy, Default)]
pub struct UnitCosine;

impl Distance<f32> for UnitCosine {
    fn eval(&self, a: &[f32], b: &[f32]) -> f32 {
        (1.0 - dot(a, b)).max(0.0)
    }
}

/// How the HNSW graph is built and searched. The defaults (24, 200, 128)
/// are conservative: with 16 links, 100 and 64 one planted sentence among
/// 10,000 near-duplicates was unreachable (`hnsw_rs` adds reverse links by
/// distance only); BENCHMARKS.md has the latency and recall of each width.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HnswParams {
    /// Links per point and layer (HNSW's M).
    pub links: usize,
    /// Search width while inserting.
    pub ef_construction: usize,
    /// Search width of a query, at least its `limit`.
    pub ef_search: usize,
}

impl Default for HnswParams {
    fn default() -> Self {
        Self {
            links: 24,
            ef_construction: 200,
            ef_search: 128,
        }
    }
}

/// An HNSW graph over some slots (`hnsw_rs`).
pub struct Hnsw {
    graph: hnsw_rs::hnsw::Hnsw<'static, f32, UnitCosine>,
    params: HnswParams,
}

impl std::fmt::Debug for Hnsw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hnsw")
            .field("points", &self.len())
            .field("params", &self.params)
            .finish()
    }
}

impl Hnsw {
    /// An empty graph sized for about `capacity` points.
    pub fn new(params: HnswParams, capacity: usize) -> Self {
        // hnsw_rs exits the process above 256 links.
        let links = params.links.clamp(4, 256);
        let graph = hnsw_rs::hnsw::Hnsw::new(
            links,
            capacity.max(1024),
            16,
            params.ef_construction.max(links),
            UnitCosine,
        );
        Self { graph, params }
    }

    /// Points in the graph.
    pub fn len(&self) -> usize {
        self.graph.get_nb_point()
    }

    /// Whether the graph is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds unit vectors by slot, one after the other. Not in parallel:
    /// points inserted at the same moment on two threads do not see each
    /// other, and a batch's points (one upsert of related texts) are often
    /// each other's nearest neighbours; measured on the integration test's
    /// data (9,990 alike texts and 10 planted ones inserted together), a
    /// parallel build left a planted point unreachable at any search width
    /// and a serial one did not (nor was it much slower on two cores: 1.9 s
    /// against 1.4 s for 10,000 points). `hnsw_rs`'s `keep_pruned` made it
    /// worse (the whole planted group unreachable): not used.
    ///
    /// Not to be called while the graph is searched (`hnsw_rs` does not
    /// support both at once): the store holds its lock exclusively
    /// meanwhile.
    pub fn insert(&mut self, batch: &[(&[f32], u32)]) {
        for &(v, s) in batch {
            self.graph.insert_slice((v, s as usize));
        }
    }
}

impl VectorIndex for Hnsw {
    fn kind(&self) -> &'static str {
        "hnsw"
    }

    fn search(
        &self,
        query: &[f32],
        k: usize,
        effort: usize,
        allow: &dyn Fn(u32) -> bool,
    ) -> Vec<Hit> {
        // Searched without hnsw_rs's filter, then filtered here: with a
        // filter, hnsw_rs never takes the search's early exit and walks
        // most of the graph (measured at 100,000 points: slower than the
        // exact scan). The store sends filters that keep most points (a
        // selective one is answered by a scan), so asking for a few more
        // than `k` suffices; when too few pass, ask for four times as many.
        let mut want = k;
        loop {
            let ef = effort.max(self.params.ef_search).max(want);
            let found = self.graph.search(query, want, ef);
            let exhausted = found.len() < want;
            let hits: Vec<Hit> = found
                .into_iter()
                .filter_map(|n| {
                    let slot = u32::try_from(n.d_id).ok()?;
                    allow(slot).then_some(Hit {
                        slot,
                        score: 1.0 - n.distance,
                    })
                })
                .take(k)
                .collect();
            if hits.len() >= k || exhausted || want >= MAX_WANT {
                return hits;
            }
            want = (want * 4).min(MAX_WANT);
        }
    }
}

/// The most neighbours one graph search asks for.
const MAX_WANT: usize = 4096;

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn unit(rng: &mut impl Rng, dims: usize) -> Vec<f32> {
        let v: Vec<f32> = (0..dims).map(|_| rng.gen_range(-1.0..1.0)).collect();
        crate::point::normalized(v, &"t").expect("non-zero")
    }

    #[test]
    fn dot_equals_the_plain_sum() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for n in [0, 1, 7, 8, 9, 384, 385] {
            let a: Vec<f32> = (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let b: Vec<f32> = (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let plain: f64 = a
                .iter()
                .zip(&b)
                .map(|(x, y)| f64::from(*x) * f64::from(*y))
                .sum();
            assert!((f64::from(dot(&a, &b)) - plain).abs() < 1e-4, "n = {n}");
        }
    }

    #[test]
    fn top_k_keeps_the_best_in_order_and_breaks_ties_by_slot() {
        let mut t = TopK::new(3);
        for (slot, score) in [(0, 0.1), (1, 0.9), (2, 0.5), (3, 0.9), (4, -1.0), (5, 0.7)] {
            t.push(Hit { slot, score });
        }
        let got: Vec<(u32, f32)> = t.into_hits().iter().map(|h| (h.slot, h.score)).collect();
        assert_eq!(got, [(1, 0.9), (3, 0.9), (5, 0.7)]);
        assert!(TopK::new(0).into_hits().is_empty());
    }

    #[test]
    fn the_exact_scan_is_a_sort_of_every_allowed_score() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let mut e = Exact::new(16);
        let vs: Vec<Vec<f32>> = (0..500).map(|_| unit(&mut rng, 16)).collect();
        for v in &vs {
            e.push(v);
        }
        let q = unit(&mut rng, 16);
        let allow = |s: u32| !s.is_multiple_of(3);
        let got = e.search(&q, 10, 0, &allow);
        let mut want: Vec<(u32, f32)> = (0u32..500)
            .filter(|&s| allow(s))
            .map(|s| (s, dot(&q, &vs[s as usize])))
            .collect();
        want.sort_by(|a, b| b.1.total_cmp(&a.1));
        assert_eq!(
            got.iter().map(|h| h.slot).collect::<Vec<_>>(),
            want[..10].iter().map(|w| w.0).collect::<Vec<_>>()
        );
        let tail = e.search_from(490, &q, 100, &|_| true);
        assert_eq!(tail.len(), 10);
        assert!(tail.iter().all(|h| h.slot >= 490));
        assert_eq!(e.vector(499), vs[499].as_slice());
        assert!(e.vector(500).is_empty());
    }

    #[test]
    fn hnsw_finds_what_the_exact_scan_finds_and_honours_allow() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let dims = 24;
        let n = 3000u32;
        let mut exact = Exact::new(dims);
        let vs: Vec<Vec<f32>> = (0..n).map(|_| unit(&mut rng, dims)).collect();
        for v in &vs {
            exact.push(v);
        }
        let mut h = Hnsw::new(HnswParams::default(), n as usize);
        let batch: Vec<(&[f32], u32)> =
            vs.iter().zip(0..).map(|(v, s)| (v.as_slice(), s)).collect();
        h.insert(&batch);
        assert_eq!(h.len(), n as usize);
        let (mut found, mut asked) = (0, 0);
        for _ in 0..50 {
            let q = unit(&mut rng, dims);
            let allow = |s: u32| s.is_multiple_of(2);
            let want = exact.search(&q, 10, 0, &allow);
            let got = h.search(&q, 10, 0, &allow);
            assert!(got.iter().all(|g| g.slot % 2 == 0), "a slot allow refused");
            for g in &got {
                let e = dot(&q, &vs[g.slot as usize]);
                assert!((g.score - e).abs() < 1e-5, "score {} vs {e}", g.score);
            }
            found += got
                .iter()
                .filter(|g| want.iter().any(|w| w.slot == g.slot))
                .count();
            asked += want.len();
        }
        let recall = found as f64 / asked as f64;
        assert!(recall >= 0.9, "recall@10 {recall}");
        // The exact vector itself is its own nearest neighbour.
        let top = h.search(&vs[42], 1, 0, &|_| true);
        assert_eq!(top.first().map(|h| h.slot), Some(42));
        assert!(top[0].score > 0.9999);
    }

    #[test]
    fn a_tight_cluster_inserted_last_is_found_whole() {
        // Ten near-duplicates among thousands of others, inserted together
        // at the end (as one upsert of related texts is): the graph must
        // reach every one of them, not only the first few.
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        let dims = 32;
        // The others are alike too (as texts of one template are), and the
        // cluster is not far from them.
        let background = unit(&mut rng, dims);
        let mut vs: Vec<Vec<f32>> = (0..6000)
            .map(|_| {
                let v: Vec<f32> = background
                    .iter()
                    .map(|c| c + rng.gen_range(-0.25..0.25))
                    .collect();
                crate::point::normalized(v, &"t").expect("non-zero")
            })
            .collect();
        let centre: Vec<f32> = background
            .iter()
            .map(|c| c + rng.gen_range(-0.3..0.3))
            .collect();
        let centre = crate::point::normalized(centre, &"t").expect("non-zero");
        for _ in 0..10 {
            let v: Vec<f32> = centre
                .iter()
                .map(|c| c + rng.gen_range(-0.08..0.08))
                .collect();
            vs.push(crate::point::normalized(v, &"t").expect("non-zero"));
        }
        let mut h = Hnsw::new(HnswParams::default(), vs.len());
        for chunk in (0u32..).zip(&vs).collect::<Vec<_>>().chunks(1024) {
            let batch: Vec<(&[f32], u32)> = chunk.iter().map(|(s, v)| (v.as_slice(), *s)).collect();
            h.insert(&batch);
        }
        let found = h.search(&centre, 10, 0, &|_| true);
        let mut slots: Vec<u32> = found.iter().map(|f| f.slot).collect();
        slots.sort_unstable();
        assert_eq!(slots, (6000..6010).collect::<Vec<u32>>());
    }
}
