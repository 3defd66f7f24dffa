//! The quantized CPU model split between shards (as a tab splits it
//! between its workers) gives the same bits as the whole model, follows
//! shard 0's sessions, and refuses what does not fit. The shards meet here
//! through threads; in a tab through a `SharedArrayBuffer`.

mod common;

use std::sync::{Arc, Barrier, Mutex};
use std::thread;

use common::model_bytes;
use tabnode_infer::cpu::{CpuError, CpuModel};
use tabnode_infer::shard::{Exchange, ExchangeError, Receive, CHUNK};

/// Shards as threads: each round every shard drops its values in its slot
/// (two sets, alternating, so a fast shard's next round cannot overwrite
/// what a slow one still reads) and waits at the barrier for the others.
struct Threads {
    index: usize,
    count: usize,
    capacity: usize,
    slots: Arc<[Mutex<Vec<Vec<f32>>>; 2]>,
    barrier: Arc<Barrier>,
    round: Mutex<usize>,
}

fn threads(count: usize, capacity: usize) -> Vec<Threads> {
    let slots = Arc::new([
        Mutex::new(vec![Vec::new(); count]),
        Mutex::new(vec![Vec::new(); count]),
    ]);
    let barrier = Arc::new(Barrier::new(count));
    (0..count)
        .map(|index| Threads {
            index,
            count,
            capacity,
            slots: Arc::clone(&slots),
            barrier: Arc::clone(&barrier),
            round: Mutex::new(0),
        })
        .collect()
}

impl Exchange for Threads {
    fn index(&self) -> usize {
        self.index
    }

    fn count(&self) -> usize {
        self.count
    }

    fn capacity(&self) -> usize {
        self.capacity
    }

    fn all_gather(
        &self,
        mine: &[f32],
        _idle: bool,
        theirs: &mut Receive<'_>,
    ) -> Result<(), ExchangeError> {
        if mine.len() > self.capacity {
            return Err(ExchangeError::TooLarge {
                len: mine.len(),
                capacity: self.capacity,
            });
        }
        let mut round = self.round.lock().expect("round");
        let slot = &self.slots[*round % 2];
        *round += 1;
        slot.lock().expect("slot")[self.index] = mine.to_vec();
        self.barrier.wait();
        let values = slot.lock().expect("slot").clone();
        for (s, v) in values.iter().enumerate() {
            if s != self.index {
                theirs(s, v)?;
            }
        }
        Ok(())
    }
}

/// Shard 0 of `count` over `bytes`, with the other shards serving on
/// threads until it is dropped (their results come back from the handles).
fn split(
    bytes: Vec<u8>,
    count: usize,
) -> (CpuModel, Vec<thread::JoinHandle<Result<(), CpuError>>>) {
    let mut model = CpuModel::from_bytes(bytes).expect("model");
    let mut exchanges = threads(count, model.exchange_capacity()).into_iter();
    let lead = exchanges.next().expect("shard 0");
    let mut helpers = Vec::new();
    for (s, ex) in (1..count).zip(exchanges) {
        let (spec, blob) = model.shard_spec(s, count).expect("spec");
        helpers.push(thread::spawn(move || {
            CpuModel::from_shard(spec, blob, Box::new(ex))?.serve()
        }));
    }
    model.split(Box::new(lead)).expect("split");
    (model, helpers)
}

/// The logits of a prompt longer than a chunk, then of a few steps.
fn run(model: &CpuModel, prompt: &[u32], steps: &[u32]) -> Vec<Vec<f32>> {
    let mut s = model.session();
    let mut out = vec![s.prefill(prompt).expect("prefill")];
    for &t in steps {
        out.push(s.step(t).expect("step"));
    }
    out
}

#[test]
fn split_models_give_the_whole_models_bits() {
    let bytes = model_bytes();
    let prompt: Vec<u32> = (0..CHUNK as u32 + 9).map(|i| 100 + i * 37).collect();
    let steps = [28, 4018, 253, 9];
    let whole = CpuModel::from_bytes(bytes.clone()).expect("model");
    let want = run(&whole, &prompt, &steps);
    drop(whole);
    for count in [2, 3] {
        let (model, helpers) = split(bytes.clone(), count);
        assert_eq!(model.shard_count(), count);
        let got = run(&model, &prompt, &steps);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let same = g.iter().zip(w).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(
                same && g.len() == w.len(),
                "{count} shards, forward {i}: logits differ"
            );
        }
        // A second sequence on the same shards starts from an empty cache.
        let again = run(&model, &prompt[..5], &steps[..1]);
        let whole = CpuModel::from_bytes(bytes.clone()).expect("model");
        assert_eq!(again, run(&whole, &prompt[..5], &steps[..1]));
        drop(model);
        for h in helpers {
            h.join()
                .expect("helper thread")
                .expect("helper served until stopped");
        }
    }
}

#[test]
fn a_session_superseded_on_the_shards_is_refused() {
    let (model, helpers) = split(model_bytes(), 2);
    let mut a = model.session();
    a.prefill(&[1, 2, 3]).expect("a");
    let mut b = model.session();
    b.prefill(&[4, 5]).expect("b");
    let err = a.step(6).expect_err("a's cache is gone from the shards");
    assert!(err.to_string().contains("another session"), "{err}");
    // b goes on; a fresh session works.
    b.step(6).expect("b continues");
    model.session().prefill(&[7]).expect("fresh session");
    drop(model);
    for h in helpers {
        h.join().expect("thread").expect("served");
    }
}

#[test]
fn bad_shards_are_refused() {
    let model = CpuModel::from_bytes(model_bytes()).expect("model");
    let cap = model.exchange_capacity();
    // No shard 0 or beyond the count from shard_spec.
    assert!(matches!(
        model.shard_spec(0, 2),
        Err(CpuError::Shard { .. })
    ));
    assert!(matches!(
        model.shard_spec(2, 2),
        Err(CpuError::Shard { .. })
    ));
    let (spec, blob) = model.shard_spec(1, 2).expect("spec");
    let ex = || Box::new(threads(2, cap).remove(1));
    // Cut bytes.
    let cut = blob[..blob.len() / 2].to_vec();
    assert!(CpuModel::from_shard(spec.clone(), cut, ex()).is_err());
    // The spec of another place than the exchange's.
    let other = Box::new(threads(3, cap).remove(1));
    assert!(matches!(
        CpuModel::from_shard(spec.clone(), blob.clone(), other),
        Err(CpuError::Shard { .. })
    ));
    // An exchange too small for a chunk of the prompt.
    let small = Box::new(threads(2, cap - 1).remove(1));
    assert!(matches!(
        CpuModel::from_shard(spec.clone(), blob.clone(), small),
        Err(CpuError::Exchange(ExchangeError::TooLarge { .. }))
    ));
    // A serve on a whole model, and a split of shard 1.
    assert!(model.serve().is_err());
    let mut whole = CpuModel::from_bytes(model_bytes()).expect("model");
    assert!(whole.split(ex()).is_err());
    // The intact parts load.
    let shard = CpuModel::from_shard(spec, blob, ex()).expect("shard 1");
    assert_eq!(shard.shard_count(), 2);
}
