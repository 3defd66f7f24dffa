//! Spot checks of served tokens (issue #16): the relay has another node
//! read a finished request's prompt and delivered tokens in one
//! teacher-forced pass ([`crate::Request::Score`]); the checker answers
//! each delivered token's standing under its own model ([`TokenScore`]),
//! and [`judge`] decides. A greedy request's token must be the checker's
//! first choice or within [`CheckPolicy::greedy_margin`] logits of it (two
//! honest backends can rank near ties differently). A sampled request is
//! judged twice. Per token: it may not lie in the checker's least likely
//! tokens that together hold less than [`CheckPolicy::min_tail`] of the
//! probability (an honest sampler draws from that tail with at most that
//! probability, whatever the distribution's shape). Over the sequence: the
//! evidence `Σ_t (−ln p_t(x_t))/2 − ln E[p_t^−1/2]` (the second term from
//! the checker's distribution after the request's temperature, top-k and
//! top-p) may not reach `ln(1/δ)`, `δ` =
//! [`CheckPolicy::sequence_false_rate`]: under honest sampling
//! `exp(evidence)` is a martingale of mean 1, so by Ville's inequality the
//! running evidence ever reaches `ln(1/δ)` with probability at most `δ`,
//! while tokens chosen without the model (each far less likely than the
//! distribution's typical token) pile it up in a few positions. Portable:
//! the checker's engine and the relay's judgement share it.

use serde::{Deserialize, Serialize};

use crate::infer::GenerateRequest;

/// Relay → node: score `tokens`, delivered for `request` by another node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreRequest {
    /// The checked request's id (for logs).
    pub request_id: u64,
    /// The catalog model (or its GGUF name) it was served with.
    pub model: String,
    /// The request as the serving node got it, without resume tokens.
    pub request: GenerateRequest,
    /// The completion's token ids, as delivered (resumed ones included).
    pub tokens: Vec<u32>,
}

/// Most tokens one [`ScoreRequest`] may carry (a completion's longest).
pub const MAX_SCORED_TOKENS: usize = 4096;

/// One delivered token under the checker's model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TokenScore {
    /// The delivered token's logit.
    pub logit: f32,
    /// The checker's first choice at that position.
    pub top_token: u32,
    /// Its logit.
    pub top_logit: f32,
    /// The delivered token's log-probability at the request's temperature
    /// (1 for a greedy request).
    pub logprob: f32,
    /// The probability, at that temperature, of all the tokens no more
    /// likely than the delivered one (itself included).
    pub tail: f32,
    /// `ln E[p^−1/2]` of the honest sampler at this position: `ln Σ_K
    /// √p_i − ln Σ_K p_i` over the tokens `K` its top-k and top-p keep
    /// (the sequence test's compensator; 0 for a greedy request).
    pub log_mgf: f32,
}

/// The sampling a checked request asked for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// 0: greedy.
    pub temperature: f32,
    /// 0: all tokens.
    pub top_k: u32,
    /// 1: off.
    pub top_p: f32,
}

impl Sampling {
    /// `request`'s.
    pub fn of(request: &GenerateRequest) -> Self {
        Self {
            temperature: request.temperature,
            top_k: request.top_k,
            top_p: request.top_p,
        }
    }
}

impl TokenScore {
    /// The standing of `token` in `logits` (a position's) under
    /// `sampling` (its log-probability at temperature 1 when greedy).
    pub fn of(logits: &[f32], token: u32, sampling: Sampling) -> Self {
        let greedy = sampling.temperature <= 0.0;
        let t = if greedy { 1.0 } else { sampling.temperature };
        let (mut top_token, mut top_logit) = (0u32, f32::NEG_INFINITY);
        for (i, &l) in logits.iter().enumerate() {
            if l > top_logit {
                (top_token, top_logit) = (i as u32, l);
            }
        }
        let logit = logits
            .get(token as usize)
            .copied()
            .unwrap_or(f32::NEG_INFINITY);
        // Σ exp((l - max) / t), and the part of it no more likely than the
        // token, in f64 for the long sums.
        let (mut sum, mut below) = (0f64, 0f64);
        for &l in logits {
            let e = f64::from((l - top_logit) / t).exp();
            sum += e;
            if l <= logit {
                below += e;
            }
        }
        let logprob = f64::from((logit - top_logit) / t) - sum.ln();
        let log_mgf = if greedy {
            0.0
        } else {
            kept_log_mgf(logits, top_logit, t, sum, sampling)
        };
        Self {
            logit,
            top_token,
            top_logit,
            logprob: logprob as f32,
            tail: (below / sum) as f32,
            log_mgf: log_mgf as f32,
        }
    }
}

/// `ln Σ_K √p_i − ln Σ_K p_i` over the tokens `K` that top-k and top-p
/// keep (all of them when neither is set), `p` the softmax at `t` whose
/// normaliser (with `top` subtracted) is `sum`.
fn kept_log_mgf(logits: &[f32], top: f32, t: f32, sum: f64, s: Sampling) -> f64 {
    let p = |l: f32| f64::from((l - top) / t).exp() / sum;
    let truncated = (s.top_k > 0 && (s.top_k as usize) < logits.len()) || s.top_p < 1.0;
    if !truncated {
        return logits.iter().map(|&l| p(l).sqrt()).sum::<f64>().ln();
    }
    let mut probs: Vec<f64> = logits.iter().map(|&l| p(l)).collect();
    probs.sort_unstable_by(|a, b| b.total_cmp(a));
    if s.top_k > 0 {
        probs.truncate(s.top_k as usize);
    }
    let (mut mass, mut roots, mut kept) = (0f64, 0f64, 0usize);
    for &q in &probs {
        if kept > 0 && mass >= f64::from(s.top_p) {
            break;
        }
        mass += q;
        roots += q.sqrt();
        kept += 1;
    }
    roots.ln() - mass.ln()
}

/// What a check accepts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CheckPolicy {
    /// A greedy request's token may trail the checker's first choice by
    /// this many logits.
    pub greedy_margin: f32,
    /// A sampled request's token may not lie in a tail of the checker's
    /// distribution (at the request's temperature) holding less than this
    /// probability: the chance of a false strike per honest token.
    pub min_tail: f32,
    /// The sequence test's `δ`: the chance that an honest sampled
    /// completion fails it.
    pub sequence_false_rate: f64,
}

impl Default for CheckPolicy {
    fn default() -> Self {
        Self {
            // Measured: the GPU engine's greedy tokens trail the CPU
            // checker's first choice by up to 0.34 logits (9 of 149 tokens
            // not its first choice; `tabnode-infer/tests/check_margin.rs`):
            // three times that.
            greedy_margin: 1.0,
            min_tail: 1e-7,
            sequence_false_rate: 1e-7,
        }
    }
}

/// A check's outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Verdict {
    /// Every token is plausible.
    Pass,
    /// The first implausible token.
    Fail {
        /// Its place in the completion.
        position: usize,
        /// Why, in words.
        reason: String,
    },
}

/// How close a completion came to the check's limits, whatever the
/// verdict: what the relay records so the margins between backends are
/// measured on live traffic, not guessed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Closeness {
    /// Delivered tokens that were not the checker's first choice.
    pub not_first: usize,
    /// Greedy: the most logits a delivered token trailed the checker's
    /// first choice by (0 when every token was its first choice).
    pub greedy_gap: Option<f32>,
    /// Sampled: the smallest tail probability of a delivered token.
    pub smallest_tail: Option<f32>,
}

impl Closeness {
    /// The figures of `delivered` for `request` by the checker's `scores`.
    pub fn of(request: &GenerateRequest, delivered: &[u32], scores: &[TokenScore]) -> Self {
        let pairs = || delivered.iter().zip(scores);
        let not_first = pairs().filter(|(t, s)| **t != s.top_token).count();
        if request.temperature <= 0.0 {
            let gap = pairs()
                .filter(|(t, s)| **t != s.top_token)
                .map(|(_, s)| s.top_logit - s.logit)
                .fold(0f32, f32::max);
            Self {
                not_first,
                greedy_gap: Some(gap),
                smallest_tail: None,
            }
        } else {
            Self {
                not_first,
                greedy_gap: None,
                smallest_tail: scores.iter().map(|s| s.tail).reduce(f32::min),
            }
        }
    }
}

/// Whether a sampled token's tail holds enough probability (NaN: no).
fn plausible(s: &TokenScore, policy: &CheckPolicy) -> bool {
    s.tail >= policy.min_tail
}

/// Judges `delivered` for `request` by the checker's `scores` (one per
/// delivered token; a checker that answers another count fails the check
/// of nothing: the caller treats that as the checker's fault).
pub fn judge(
    request: &GenerateRequest,
    delivered: &[u32],
    scores: &[TokenScore],
    policy: &CheckPolicy,
) -> Verdict {
    let greedy = request.temperature <= 0.0;
    let bound = (1.0 / policy.sequence_false_rate).ln();
    let mut evidence = 0f64;
    for (position, (token, s)) in delivered.iter().zip(scores).enumerate() {
        if greedy {
            let behind = s.top_logit - s.logit;
            // Written so that NaN fails.
            let near = behind <= policy.greedy_margin;
            if *token != s.top_token && !near {
                return Verdict::Fail {
                    position,
                    reason: format!(
                        "greedy token {token} trails the checker's {} by {behind:.3} logits (at most {} allowed)",
                        s.top_token, policy.greedy_margin
                    ),
                };
            }
        } else {
            if !plausible(s, policy) {
                return Verdict::Fail {
                    position,
                    reason: format!(
                        "sampled token {token} lies in a tail of probability {:.3e} at temperature {} (at least {:e} allowed; its log-probability {:.2})",
                        s.tail, request.temperature, policy.min_tail, s.logprob
                    ),
                };
            }
            evidence += f64::from(-s.logprob) / 2.0 - f64::from(s.log_mgf);
            // Written so that NaN fails.
            let within = evidence < bound;
            if !within {
                return Verdict::Fail {
                    position,
                    reason: format!(
                        "the sampled tokens up to here are too unlikely together: evidence {evidence:.1} reaches ln(1/{:e}) = {bound:.1}",
                        policy.sequence_false_rate
                    ),
                };
            }
        }
    }
    Verdict::Pass
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infer::Prompt;

    fn greedy() -> Sampling {
        at(0.0)
    }

    fn at(temperature: f32) -> Sampling {
        Sampling {
            temperature,
            top_k: 0,
            top_p: 1.0,
        }
    }

    #[test]
    fn the_sequence_test_bounds_honest_failures_and_catches_unlikely_runs() {
        // A distribution with a long flat tail, sampled honestly: the
        // share of completions failing stays under δ; the same number of
        // tokens drawn uniformly from the vocabulary fails.
        let mut logits = vec![0f32; 2000];
        for (i, l) in logits.iter_mut().enumerate().take(20) {
            *l = 12.0 - i as f32 * 0.5;
        }
        let mut r = GenerateRequest::new(Prompt::Text("x".into()));
        r.temperature = 1.0;
        let policy = CheckPolicy {
            sequence_false_rate: 1e-3,
            ..CheckPolicy::default()
        };
        let p: Vec<f64> = {
            let z: f64 = logits.iter().map(|&l| f64::from(l).exp()).sum();
            logits.iter().map(|&l| f64::from(l).exp() / z).collect()
        };
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut uniform = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 11) as f64 / (1u64 << 53) as f64
        };
        let draw = |u: f64| {
            let mut acc = 0.0;
            p.iter()
                .position(|&q| {
                    acc += q;
                    acc >= u
                })
                .unwrap_or(p.len() - 1) as u32
        };
        let (mut honest_failed, trials) = (0, 2000);
        for _ in 0..trials {
            let tokens: Vec<u32> = (0..32).map(|_| draw(uniform())).collect();
            let scores: Vec<TokenScore> = tokens
                .iter()
                .map(|&t| TokenScore::of(&logits, t, Sampling::of(&r)))
                .collect();
            if judge(&r, &tokens, &scores, &policy) != Verdict::Pass {
                honest_failed += 1;
            }
        }
        assert!(
            honest_failed <= 2,
            "{honest_failed} of {trials} honest completions failed"
        );
        let random: Vec<u32> = (0..32).map(|_| (uniform() * 2000.0) as u32).collect();
        let scores: Vec<TokenScore> = random
            .iter()
            .map(|&t| TokenScore::of(&logits, t, Sampling::of(&r)))
            .collect();
        match judge(&r, &random, &scores, &policy) {
            Verdict::Fail { reason, .. } => {
                assert!(reason.contains("too unlikely together"), "{reason}")
            }
            Verdict::Pass => panic!("random tokens passed"),
        }
        // Top-k changes the compensator: with one token kept, the sampler
        // always gives it, and E[p^-1/2] is its own p^-1/2.
        let top = TokenScore::of(
            &logits,
            0,
            Sampling {
                temperature: 1.0,
                top_k: 1,
                top_p: 1.0,
            },
        );
        let want = -0.5 * f64::from(top.logprob);
        assert!((f64::from(top.log_mgf) - want).abs() < 1e-5, "{top:?}");
    }

    #[test]
    fn scores_read_the_logits() {
        let logits = [1.0, 3.0, 2.0, -1.0];
        let s = TokenScore::of(&logits, 2, greedy());
        assert_eq!((s.top_token, s.top_logit, s.logit), (1, 3.0, 2.0));
        let z: f64 = logits.iter().map(|&l| f64::from(l).exp()).sum();
        assert!((f64::from(s.logprob) - (2.0 - z.ln())).abs() < 1e-5);
        // A lower temperature sharpens: the runner-up gets less likely.
        assert!(TokenScore::of(&logits, 2, at(0.5)).logprob < s.logprob);
        // Its tail: itself and the two less likely tokens.
        let want = (1f64.exp() + 2f64.exp() + (-1f64).exp()) / z;
        assert!((f64::from(s.tail) - want).abs() < 1e-6, "{s:?}");
        assert!((TokenScore::of(&logits, 1, at(1.0)).tail - 1.0).abs() < 1e-6);
        // A token outside the vocabulary is impossible.
        let out = TokenScore::of(&logits, 9, at(1.0));
        assert_eq!((out.logprob, out.tail), (f32::NEG_INFINITY, 0.0));
    }

    #[test]
    fn greedy_tokens_must_be_first_or_a_near_tie() {
        let r = GenerateRequest::new(Prompt::Text("x".into()));
        let policy = CheckPolicy::default();
        let logits = [0.0, 5.0, 4.8, 1.0];
        let scores: Vec<TokenScore> = [1, 2, 3]
            .iter()
            .map(|&t| TokenScore::of(&logits, t, greedy()))
            .collect();
        assert_eq!(judge(&r, &[1, 2], &scores[..2], &policy), Verdict::Pass);
        match judge(&r, &[1, 2, 3], &scores, &policy) {
            Verdict::Fail { position, reason } => {
                assert_eq!(position, 2);
                assert!(
                    reason.contains("trails the checker's 1 by 4.000"),
                    "{reason}"
                );
            }
            v => panic!("{v:?}"),
        }
        // NaN scores never pass.
        let nan = TokenScore {
            logit: f32::NAN,
            top_token: 0,
            top_logit: 1.0,
            logprob: f32::NAN,
            tail: f32::NAN,
            log_mgf: f32::NAN,
        };
        assert!(matches!(
            judge(&r, &[5], &[nan], &policy),
            Verdict::Fail { .. }
        ));
    }

    #[test]
    fn closeness_measures_the_gap_and_the_tail() {
        let logits = [0.0, 5.0, 4.8, 1.0];
        let r = GenerateRequest::new(Prompt::Text("x".into()));
        let scores: Vec<TokenScore> = [1, 2, 3]
            .iter()
            .map(|&t| TokenScore::of(&logits, t, greedy()))
            .collect();
        let c = Closeness::of(&r, &[1, 2], &scores[..2]);
        assert_eq!(c.not_first, 1);
        assert!((c.greedy_gap.expect("greedy") - 0.2).abs() < 1e-5, "{c:?}");
        assert_eq!(c.smallest_tail, None);
        assert_eq!(Closeness::of(&r, &[1], &scores[..1]).greedy_gap, Some(0.0));
        let mut sampled = r.clone();
        sampled.temperature = 1.0;
        let scores: Vec<TokenScore> = [1, 3]
            .iter()
            .map(|&t| TokenScore::of(&logits, t, at(1.0)))
            .collect();
        let c = Closeness::of(&sampled, &[1, 3], &scores);
        assert_eq!((c.not_first, c.greedy_gap), (1, None));
        assert_eq!(c.smallest_tail, Some(scores[1].tail));
    }

    #[test]
    fn sampled_tokens_must_be_plausible() {
        let mut r = GenerateRequest::new(Prompt::Text("x".into()));
        r.temperature = 0.8;
        let policy = CheckPolicy::default();
        let mut logits = vec![0.0f32; 1000];
        logits[7] = 10.0;
        logits[8] = -20.0;
        // One of the 999 flat tokens: unlikely alone, but together they
        // hold a fair share; the one far below them is implausible.
        let ok = TokenScore::of(&logits, 3, Sampling::of(&r));
        assert!(ok.logprob < -12.0 && ok.tail > 1e-3, "{ok:?}");
        assert_eq!(judge(&r, &[3], &[ok], &policy), Verdict::Pass, "{ok:?}");
        let bad = TokenScore::of(&logits, 8, Sampling::of(&r));
        assert!(bad.tail < 1e-15, "{bad:?}");
        assert!(matches!(
            judge(&r, &[8], &[bad], &policy),
            Verdict::Fail { position: 0, .. }
        ));
    }
}
