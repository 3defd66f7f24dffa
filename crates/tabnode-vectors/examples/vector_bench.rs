//! The vector store at scale: `N` points of 384 dimensions upserted through
//! [`VectorStore`] (durable, in batches of 2,048), the HNSW graph built in
//! the background, then `Q` queries answered by the graph and by the exact
//! scan (the reference, same run, same store): latency of each and the
//! graph's recall@10 against the scan; then the time to reopen the store.
//!
//! The vectors are synthetic but shaped like sentence embeddings (whose
//! intrinsic dimension is far below 384): clusters in a 48-dimensional
//! latent space, mapped to 384 dimensions by a fixed random matrix, plus
//! noise. Uniform random vectors in 384 dimensions would be the worst case
//! for any graph index and unlike real embeddings.
//!
//! `cargo run -p tabnode-vectors --example vector_bench -- [N] [Q]`

use std::time::{Duration, Instant};

use rand::{rngs::StdRng, Rng, SeedableRng};
use tabnode_vectors::{IndexKind, NewPoint, PointId, Query, StoreConfig, VectorStore};

const DIMS: usize = 384;
const LATENT: usize = 48;
const CLUSTERS: usize = 2000;

fn gauss(rng: &mut StdRng) -> f32 {
    // Box–Muller.
    let u: f32 = rng.gen_range(f32::EPSILON..1.0);
    let v: f32 = rng.gen();
    (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
}

struct Shape {
    map: Vec<f32>,
    centres: Vec<Vec<f32>>,
}

impl Shape {
    fn new(rng: &mut StdRng) -> Self {
        Self {
            map: (0..DIMS * LATENT).map(|_| gauss(rng)).collect(),
            centres: (0..CLUSTERS)
                .map(|_| (0..LATENT).map(|_| gauss(rng)).collect())
                .collect(),
        }
    }

    fn sample(&self, rng: &mut StdRng) -> Vec<f32> {
        let c = &self.centres[rng.gen_range(0..CLUSTERS)];
        let z: Vec<f32> = c.iter().map(|&x| x + 0.6 * gauss(rng)).collect();
        (0..DIMS)
            .map(|i| {
                let row = &self.map[i * LATENT..(i + 1) * LATENT];
                row.iter().zip(&z).map(|(a, b)| a * b).sum::<f32>() + 0.5 * gauss(rng)
            })
            .collect()
    }
}

fn percentile(mut v: Vec<Duration>, p: f64) -> f64 {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1e3
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map_or(Ok(100_000), |a| a.parse())?;
    let queries: usize = args.next().map_or(Ok(1000), |a| a.parse())?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("vectors.redb");
    let config = StoreConfig::default();
    // Each search width is measured by asking for it (`hnsw_ef`); the
    // default is the one queries get.
    let widths = [16, 32, 64, 128, 256];
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    println!(
        "vector store: {n} points × {DIMS} dims, {queries} queries, {threads} threads, graph from {} points, HNSW links {} ef_construction {} ef_search {}",
        config.hnsw_threshold, config.hnsw.links, config.hnsw.ef_construction, config.hnsw.ef_search
    );
    let mut rng = StdRng::seed_from_u64(42);
    let shape = Shape::new(&mut rng);
    let store = VectorStore::open(
        &path,
        StoreConfig {
            hnsw: tabnode_vectors::HnswParams {
                ef_search: 16,
                ..config.hnsw
            },
            ..config.clone()
        },
    )?;
    store.create("bench", "synthetic", DIMS)?;
    let started = Instant::now();
    let mut next = 0u64;
    while (next as usize) < n {
        let batch: Vec<NewPoint> = (0..2048.min(n - next as usize))
            .map(|_| {
                next += 1;
                NewPoint {
                    id: PointId::Num(next),
                    vector: shape.sample(&mut rng),
                    text: None,
                    payload: None,
                }
            })
            .collect();
        store.upsert("bench", batch)?;
    }
    let upserted = started.elapsed();
    let wait_graph = |store: &VectorStore| -> Result<(), Box<dyn std::error::Error>> {
        loop {
            let info = store.info("bench")?;
            if info.index == IndexKind::Hnsw && info.unindexed == 0 {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_graph(&store)?;
    let indexed = started.elapsed();
    println!(
        "upsert (fsync per batch of 2,048): {:.1} s = {:.0} points/s; graph complete {:.1} s after the first upsert",
        upserted.as_secs_f64(),
        n as f64 / upserted.as_secs_f64(),
        indexed.as_secs_f64()
    );
    let qs: Vec<Vec<f32>> = (0..queries).map(|_| shape.sample(&mut rng)).collect();
    let ask = |v: &Vec<f32>,
               exact: bool,
               effort: usize|
     -> Result<(Vec<PointId>, Duration), Box<dyn std::error::Error>> {
        let t = Instant::now();
        let found = store.query(
            "bench",
            &Query {
                vector: v.clone(),
                limit: 10,
                filter: None,
                exact,
                effort,
            },
        )?;
        Ok((found.into_iter().map(|f| f.id).collect(), t.elapsed()))
    };
    let mut exact_t = Vec::new();
    let mut want = Vec::new();
    for v in &qs {
        let (w, t) = ask(v, true, 0)?;
        exact_t.push(t);
        want.push(w);
    }
    let e50 = percentile(exact_t.clone(), 0.5);
    println!(
        "exact scan (reference): p50 {e50:.2} ms, p99 {:.2} ms",
        percentile(exact_t, 0.99)
    );
    for ef in widths {
        let (mut graph_t, mut hits) = (Vec::new(), 0usize);
        for (v, w) in qs.iter().zip(&want) {
            let (got, t) = ask(v, false, ef)?;
            graph_t.push(t);
            hits += got.iter().filter(|g| w.contains(g)).count();
        }
        let recall = hits as f64 / (queries * 10) as f64;
        let g50 = percentile(graph_t.clone(), 0.5);
        println!(
            "HNSW ef {ef}{}: p50 {g50:.3} ms, p99 {:.3} ms = {:.1}x the scan's speed at p50; recall@10 {recall:.4}",
            if ef == config.hnsw.ef_search { " (default)" } else { "" },
            percentile(graph_t, 0.99),
            e50 / g50
        );
    }
    drop(store);
    let t = Instant::now();
    let store = VectorStore::open(&path, config)?;
    let opened = t.elapsed();
    let (_, first) = ask_on(&store, &qs[0])?;
    wait_graph(&store)?;
    println!(
        "reopen: {:.1} s to load {n} points (queries answered by the scan at once: {:.1} ms), graph rebuilt {:.1} s after opening",
        opened.as_secs_f64(),
        first.as_secs_f64() * 1e3,
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

fn ask_on(store: &VectorStore, v: &[f32]) -> Result<(usize, Duration), Box<dyn std::error::Error>> {
    let t = Instant::now();
    let found = store.query(
        "bench",
        &Query {
            vector: v.to_vec(),
            limit: 10,
            filter: None,
            exact: false,
            effort: 0,
        },
    )?;
    Ok((found.len(), t.elapsed()))
}
