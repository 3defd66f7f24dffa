//! Picking the next token from a position's logits: greedy, temperature,
//! top-k, top-p, seeded.
//!
//! A vocabulary has 49k–262k tokens, and sorting all of them for every
//! sampled token cost more than a decode step of a small model (2.1 ms for
//! SmolLM2's 49,152 logits, 5.7 ms for Qwen's 151,936). The sampler works
//! on [`Top`]: the most likely tokens, sorted, the softmax's normaliser over
//! all of them, and whether anything was left out. Most draws are decided
//! there; a draw that falls in the tail sorts everything, with the same
//! random number. A GPU builds [`Top`] itself and reads back a few KB
//! instead of the logits (`gpu::model::GpuSession::step_top`).
//!
//! Probabilities: `e = exp(v − v_max)` with `v = logit / temperature` and
//! [`crate::quant::scalar::exp`]; without top-k the normaliser is the sum over every
//! finite logit (in index order), with top-k the sum over the kept ones (in
//! rank order); top-p keeps the shortest prefix whose mass reaches `top_p`;
//! the token is the first whose running sum passes `r · mass`. Ranks:
//! larger `v` first, then the lower token id.

use crate::generate::GenerateError;
use crate::quant::scalar::exp;

/// How to pick the next token.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampling {
    /// 0 means greedy.
    pub temperature: f32,
    /// Keep the `top_k` most likely tokens (0: all).
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches `top_p` (1: all).
    pub top_p: f32,
    /// Seed of the sampler's random stream.
    pub seed: u64,
}

impl Sampling {
    /// Always the most likely token.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
        }
    }

    fn check(&self) -> Result<(), GenerateError> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(GenerateError::Sampling(format!(
                "temperature {}",
                self.temperature
            )));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(GenerateError::Sampling(format!("top_p {}", self.top_p)));
        }
        Ok(())
    }
}

/// SplitMix64: small, fast, and the same on every platform.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next_f32(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// Candidates [`Top::of`] keeps for a draw before it sorts everything.
pub const KEEP: usize = 64;

/// The most likely tokens of one position, for a draw.
#[derive(Debug, Clone, PartialEq)]
pub struct Top {
    /// `(token, logit / temperature)` in rank order: every token ranked
    /// above all the tokens left out.
    pub best: Vec<(u32, f32)>,
    /// Whether `best` holds every token with a finite logit.
    pub complete: bool,
    /// `Σ exp(v − best[0].1)` over every finite scaled logit `v`.
    pub total: f32,
}

/// Candidates one part of a vocabulary ranked ([`Top::merge`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    /// Its best `(token, logit / temperature)` in rank order.
    pub best: Vec<(u32, f32)>,
    /// Every value it left out is at most this (`NEG_INFINITY`: none).
    pub floor: f32,
    /// `Σ exp(v − best[0].1)` over its finite values.
    pub total: f32,
}

/// `b` ranks before `a` (larger value, then lower id).
fn ranks_before(a: (u32, f32), b: (u32, f32)) -> std::cmp::Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

impl Top {
    /// The `keep` best of `logits` scaled by `1 / temperature` (non-finite
    /// ones ignored), and their normaliser: one pass keeping a sorted list,
    /// a second for the sum when `with_total`.
    pub fn of(logits: &[f32], temperature: f32, keep: usize, with_total: bool) -> Self {
        let keep = keep.max(1);
        let mut best: Vec<(u32, f32)> = Vec::with_capacity(keep + 1);
        // The largest value left out.
        let mut floor = f32::NEG_INFINITY;
        let mut left_out = false;
        for (i, &l) in logits.iter().enumerate() {
            if !l.is_finite() {
                continue;
            }
            let v = l / temperature;
            if best.len() == keep && v <= best[keep - 1].1 {
                floor = floor.max(v);
                left_out = true;
                continue;
            }
            // After every kept value ≥ v: ids ascend as the scan goes.
            let at = best.partition_point(|c| c.1 >= v);
            best.insert(at, (i as u32, v));
            if best.len() > keep {
                if let Some(out) = best.pop() {
                    floor = floor.max(out.1);
                    left_out = true;
                }
            }
        }
        // Another chunk's (a GPU's) or a later token could tie the floor:
        // only values above it are certainly in rank order.
        if left_out {
            best.retain(|c| c.1 > floor);
        }
        let total = match (with_total, best.first()) {
            (true, Some(&(_, max))) => scaled_total(logits, temperature, max),
            _ => 0.0,
        };
        Self {
            best,
            complete: !left_out,
            total,
        }
    }

    /// Every finite logit, ranked, with `total` as the normaliser.
    fn all(logits: &[f32], temperature: f32, total: f32) -> Self {
        let mut best: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, l)| l.is_finite())
            .map(|(i, &l)| (i as u32, l / temperature))
            .collect();
        best.sort_unstable_by(|a, b| ranks_before(*a, *b));
        Self {
            best,
            complete: true,
            total,
        }
    }

    /// Merges the parts of one vocabulary that each ranked their own.
    pub fn merge(parts: &[Part]) -> Self {
        let floor = parts
            .iter()
            .map(|p| p.floor)
            .fold(f32::NEG_INFINITY, f32::max);
        let mut best: Vec<(u32, f32)> = parts
            .iter()
            .flat_map(|p| p.best.iter().copied())
            .filter(|c| c.1 > floor)
            .collect();
        best.sort_unstable_by(|a, b| ranks_before(*a, *b));
        let total = match best.first() {
            Some(&(_, max)) => parts
                .iter()
                .filter_map(|p| p.best.first().map(|f| p.total * exp(f.1 - max)))
                .sum(),
            None => 0.0,
        };
        Self {
            best,
            complete: floor == f32::NEG_INFINITY,
            total,
        }
    }
}

/// `Σ exp(l / temperature − max)` over the finite logits, in index order,
/// with the crate's vector `exp` in chunks.
fn scaled_total(logits: &[f32], temperature: f32, max: f32) -> f32 {
    let kernels = crate::quant::simd::best();
    let mut buf = [0f32; 256];
    let mut total = 0.0;
    for chunk in logits.chunks(buf.len()) {
        let buf = &mut buf[..chunk.len()];
        for (b, &l) in buf.iter_mut().zip(chunk) {
            // exp clamps: a non-finite logit adds about 1e-38.
            *b = if l.is_finite() {
                l / temperature
            } else {
                f32::NEG_INFINITY
            };
        }
        (kernels.f32_exp)(buf, max);
        total += buf.iter().sum::<f32>();
    }
    total
}

/// Picks tokens from logits.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: Sampling,
    rng: Rng,
    /// A draw [`Sampler::sample_top`] could not decide, and the normaliser
    /// it used: [`Sampler::sample`] finishes it.
    pending: Option<(f32, f32)>,
}

impl Sampler {
    /// A sampler with `params`.
    ///
    /// # Errors
    /// [`GenerateError::Sampling`] for a negative or NaN temperature or a
    /// `top_p` outside `(0, 1]`.
    pub fn new(params: Sampling) -> Result<Self, GenerateError> {
        params.check()?;
        Ok(Self {
            rng: Rng(params.seed),
            params,
            pending: None,
        })
    }

    /// Whether every token is the most likely one (temperature 0 or top-k 1).
    pub fn is_greedy(&self) -> bool {
        self.params.temperature == 0.0 || self.params.top_k == 1
    }

    /// The temperature the logits are scaled by (0: greedy).
    pub fn temperature(&self) -> f32 {
        self.params.temperature
    }

    /// Advances the random stream as if `n` tokens had been sampled, so a
    /// generation resumed after `n` tokens draws what the uninterrupted one
    /// would have drawn.
    pub fn skip(&mut self, n: usize) {
        if !self.is_greedy() {
            for _ in 0..n {
                self.rng.next_f32();
            }
        }
    }

    /// The next token.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.is_greedy() {
            return crate::reference::argmax(logits);
        }
        let t = self.params.temperature;
        let (r, total) = match self.pending.take() {
            Some(pending) => pending,
            None => {
                let r = self.rng.next_f32();
                let top = Top::of(logits, t, self.keep(), self.params.top_k == 0);
                if let Some(token) = self.pick(&top, r) {
                    return token;
                }
                (r, top.total)
            }
        };
        self.pick(&Top::all(logits, t, total), r).unwrap_or(0)
    }

    /// The next token from candidates a device ranked (built with this
    /// sampler's temperature); `None` when the draw falls outside them: then
    /// [`Sampler::sample`] with the whole logits finishes the same draw.
    pub fn sample_top(&mut self, top: &Top) -> Option<u32> {
        if self.is_greedy() {
            return top.best.first().map(|c| c.0);
        }
        let r = self.rng.next_f32();
        let token = self.pick(top, r);
        if token.is_none() {
            self.pending = Some((r, top.total));
        }
        token
    }

    /// Candidates worth ranking before sorting everything.
    pub fn keep(&self) -> usize {
        match self.params.top_k {
            0 => KEEP,
            k => k.min(4 * KEEP),
        }
    }

    /// The token the draw `r` picks among `top`, if `top` decides it.
    fn pick(&self, top: &Top, r: f32) -> Option<u32> {
        let p = &self.params;
        let Some(&(_, max)) = top.best.first() else {
            return top.complete.then_some(0);
        };
        let e = |c: &(u32, f32)| exp(c.1 - max);
        // What top-k keeps, and whether it is all the draw can reach.
        let (kept, total, whole) = if p.top_k > 0 {
            if top.best.len() < p.top_k && !top.complete {
                return None;
            }
            let kept = &top.best[..p.top_k.min(top.best.len())];
            (kept, kept.iter().map(e).sum::<f32>(), true)
        } else {
            (&top.best[..], top.total, top.complete)
        };
        // Top-p: the shortest prefix reaching `top_p` of the mass.
        let (kept, mass, whole) = if p.top_p < 1.0 {
            let goal = p.top_p * total;
            let mut acc = 0.0;
            let mut n = None;
            for (i, c) in kept.iter().enumerate() {
                acc += e(c);
                if acc >= goal {
                    n = Some(i + 1);
                    break;
                }
            }
            match n {
                Some(n) => (&kept[..n], acc, true),
                None if whole => (kept, acc, true),
                None => return None,
            }
        } else {
            (kept, total, whole)
        };
        let target = r * mass;
        let mut acc = 0.0;
        for c in kept {
            acc += e(c);
            if target < acc {
                return Some(c.0);
            }
        }
        // Rounding left the draw past the last kept token.
        whole.then(|| kept.last().map_or(0, |c| c.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_and_top_k_1_take_the_argmax() {
        let logits = [0.1, 3.0, 2.9, -1.0];
        let mut s = Sampler::new(Sampling::greedy()).expect("greedy");
        assert_eq!(s.sample(&logits), 1);
        let mut s = Sampler::new(Sampling {
            temperature: 5.0,
            top_k: 1,
            top_p: 1.0,
            seed: 3,
        })
        .expect("top-k 1");
        assert_eq!(s.sample(&logits), 1);
    }

    #[test]
    fn seeded_sampling_is_reproducible_and_follows_the_distribution() {
        let logits = [0.0f32, 1.0, 2.0, 3.0];
        let params = Sampling {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            seed: 42,
        };
        let draw = |p: &Sampling| {
            let mut s = Sampler::new(p.clone()).expect("sampler");
            (0..4000).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        let a = draw(&params);
        assert_eq!(a, draw(&params), "same seed, same stream");
        assert_ne!(
            a,
            draw(&Sampling {
                seed: 43,
                ..params.clone()
            })
        );
        // softmax([0,1,2,3]) = [0.032, 0.087, 0.237, 0.644]
        let share = |t: u32| a.iter().filter(|&&x| x == t).count() as f64 / a.len() as f64;
        assert!((share(3) - 0.644).abs() < 0.03, "{}", share(3));
        assert!((share(0) - 0.032).abs() < 0.015, "{}", share(0));
    }

    #[test]
    fn top_k_and_top_p_cut_the_tail() {
        let logits = [0.0f32, 1.0, 2.0, 3.0];
        let mut s = Sampler::new(Sampling {
            temperature: 1.0,
            top_k: 2,
            top_p: 1.0,
            seed: 1,
        })
        .expect("top-k");
        assert!((0..500).all(|_| s.sample(&logits) >= 2));
        // top_p 0.6: only token 3 (0.644) is needed.
        let mut s = Sampler::new(Sampling {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.6,
            seed: 1,
        })
        .expect("top-p");
        assert!((0..500).all(|_| s.sample(&logits) == 3));
    }

    /// Logits with a few likely tokens, a long tail, and ties (values on a
    /// grid of 1/8).
    fn peaked(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = Rng(seed);
        (0..n)
            .map(|_| {
                let u = rng.next_f32();
                let l = if u < 0.002 {
                    8.0 + 8.0 * rng.next_f32()
                } else {
                    6.0 * rng.next_f32() - 3.0
                };
                (l * 8.0).round() / 8.0
            })
            .collect()
    }

    #[test]
    fn the_best_few_decide_the_draws_the_whole_sort_would() {
        let mut decided = 0;
        let mut undecided = 0;
        for seed in 0..6 {
            let logits = peaked(5000, seed);
            for t in [0.3f32, 1.0, 2.0] {
                for top_k in [0usize, 1, 3, 64, 100, 300] {
                    for top_p in [1.0f32, 0.9, 0.5] {
                        let s = Sampler::new(Sampling {
                            temperature: t,
                            top_k,
                            top_p,
                            seed,
                        })
                        .expect("sampler");
                        let top = Top::of(&logits, t, s.keep(), top_k == 0);
                        let all = Top::all(&logits, t, top.total);
                        assert_eq!(top.best, all.best[..top.best.len()], "a ranked prefix");
                        for i in 0..50 {
                            let r = i as f32 / 50.0;
                            let whole = s.pick(&all, r);
                            assert!(whole.is_some(), "the whole list decides every draw");
                            match s.pick(&top, r) {
                                Some(token) => {
                                    decided += 1;
                                    assert_eq!(
                                        Some(token),
                                        whole,
                                        "t {t} k {top_k} p {top_p} r {r}"
                                    );
                                }
                                None => undecided += 1,
                            }
                        }
                    }
                }
            }
        }
        // Both paths ran.
        assert!(decided > 1000 && undecided > 1000, "{decided} {undecided}");
    }

    #[test]
    fn parts_merged_rank_as_the_whole() {
        let logits = peaked(9001, 5);
        let t = 0.7;
        let whole = Top::of(&logits, t, 10_000, true);
        assert!(whole.complete);
        for (chunk, keep) in [(1000, 16), (128, 4), (9001, 64), (700, 1)] {
            let parts: Vec<_> = logits
                .chunks(chunk)
                .enumerate()
                .map(|(c, l)| {
                    let part = Top::of(l, t, keep, true);
                    let best: Vec<_> = part
                        .best
                        .iter()
                        .map(|&(i, v)| (i + (c * chunk) as u32, v))
                        .collect();
                    // What a part left out: at most its last kept value
                    // (or the largest value left out, whichever is larger).
                    let out = l
                        .iter()
                        .enumerate()
                        .filter(|&(i, _)| !best.iter().any(|b| b.0 as usize == i + c * chunk))
                        .map(|(_, &x)| x / t)
                        .fold(f32::NEG_INFINITY, f32::max);
                    Part {
                        best,
                        floor: out,
                        total: part.total,
                    }
                })
                .collect();
            let merged = Top::merge(&parts);
            assert!(!merged.best.is_empty(), "{chunk}");
            assert_eq!(
                merged.best,
                whole.best[..merged.best.len()],
                "{chunk} {keep}"
            );
            assert_eq!(merged.complete, keep >= chunk);
            let rel = (merged.total - whole.total).abs() / whole.total;
            assert!(rel < 1e-5, "{chunk}: {} vs {}", merged.total, whole.total);
        }
    }

    #[test]
    fn a_draw_left_undecided_is_finished_with_the_logits() {
        // Flat logits: the best 64 of 4096 hold little of the mass.
        let logits: Vec<f32> = (0..4096).map(|i| (i % 7) as f32 * 0.01).collect();
        let params = Sampling {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            seed: 11,
        };
        let mut a = Sampler::new(params.clone()).expect("sampler");
        let mut b = Sampler::new(params).expect("sampler");
        let mut undecided = 0;
        for _ in 0..200 {
            let top = Top::of(&logits, 1.0, KEEP, true);
            let via_top = match a.sample_top(&top) {
                Some(t) => t,
                None => {
                    undecided += 1;
                    a.sample(&logits)
                }
            };
            assert_eq!(via_top, b.sample(&logits));
        }
        assert!(undecided > 150, "{undecided}");
    }

    #[test]
    fn the_normaliser_is_the_whole_softmax_sum() {
        for (t, seed) in [(1.0f32, 1u64), (0.3, 2), (2.0, 3)] {
            let mut logits = peaked(50_000, seed);
            // A long tail far below the best (skipped by the sum).
            logits.iter_mut().step_by(3).for_each(|l| *l -= 60.0);
            logits[7] = f32::NAN;
            logits[8] = f32::NEG_INFINITY;
            let top = Top::of(&logits, t, KEEP, true);
            let max = top.best[0].1;
            let want: f64 = logits
                .iter()
                .filter(|l| l.is_finite())
                .map(|&l| (f64::from(l / t) - f64::from(max)).exp())
                .sum();
            let rel = (f64::from(top.total) - want).abs() / want;
            assert!(rel < 1e-5, "t {t}: {} against {want}", top.total);
        }
    }

    #[test]
    fn bad_parameters_are_refused() {
        for (t, p) in [(-1.0, 1.0), (f32::NAN, 1.0), (1.0, 0.0), (1.0, 1.5)] {
            let r = Sampler::new(Sampling {
                temperature: t,
                top_k: 0,
                top_p: p,
                seed: 0,
            });
            assert!(matches!(r, Err(GenerateError::Sampling(_))), "{t} {p}");
        }
    }
}
