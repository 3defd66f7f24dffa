//! Text generation over any model that decodes one token at a time:
//! prefill, then sample (greedy, temperature, top-k, top-p, seeded), stream
//! text to a callback, stop on EOS, stop strings or the token limit, and
//! honour cancellation.

use crate::tokenizer::{StreamDecoder, Tokenizer};

/// A model session that takes one token and returns the next-token logits.
pub trait Decoder {
    /// Longest sequence (prompt + generated) the session can hold.
    fn context_len(&self) -> usize;
    /// Feeds `token`; returns the logits for the next position.
    ///
    /// # Errors
    /// [`GenerateError::Device`] when the device fails.
    fn step(&mut self, token: u32) -> Result<Vec<f32>, GenerateError>;
    /// Feeds several tokens (the prompt); returns the logits after the last.
    ///
    /// # Errors
    /// [`GenerateError::Device`] when the device fails.
    fn prefill(&mut self, tokens: &[u32]) -> Result<Vec<f32>, GenerateError> {
        let mut logits = Vec::new();
        for &t in tokens {
            logits = self.step(t)?;
        }
        Ok(logits)
    }
}

impl Decoder for crate::reference::Session<'_> {
    fn context_len(&self) -> usize {
        self.context()
    }
    fn step(&mut self, token: u32) -> Result<Vec<f32>, GenerateError> {
        Ok(crate::reference::Session::step(self, token))
    }
}

/// Why generation could not run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GenerateError {
    /// Nothing to condition on.
    #[error("the prompt is empty")]
    EmptyPrompt,
    /// The prompt does not fit the context.
    #[error("the prompt has {prompt} tokens; the context holds {context}")]
    PromptTooLong {
        /// Prompt tokens.
        prompt: usize,
        /// Context length.
        context: usize,
    },
    /// A sampling parameter is out of range.
    #[error("invalid sampling parameter: {0}")]
    Sampling(String),
    /// The device running the model failed.
    #[error("the model's device failed: {0}")]
    Device(String),
    /// The tokens to resume after cannot be continued.
    #[error("cannot resume: {0}")]
    Resume(String),
}

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

/// Picks tokens from logits.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: Sampling,
    rng: Rng,
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
        })
    }

    /// Advances the random stream as if `n` tokens had been sampled, so a
    /// generation resumed after `n` tokens draws what the uninterrupted one
    /// would have drawn.
    pub fn skip(&mut self, n: usize) {
        if !(self.params.temperature == 0.0 || self.params.top_k == 1) {
            for _ in 0..n {
                self.rng.next_f32();
            }
        }
    }

    /// The next token.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let p = &self.params;
        if p.temperature == 0.0 || p.top_k == 1 {
            return crate::reference::argmax(logits);
        }
        let mut cand: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, l)| l.is_finite())
            .map(|(i, &l)| (i as u32, l / p.temperature))
            .collect();
        if cand.is_empty() {
            return 0;
        }
        cand.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if p.top_k > 0 {
            cand.truncate(p.top_k);
        }
        let max = cand[0].1;
        let mut probs: Vec<f32> = cand.iter().map(|c| libm::expf(c.1 - max)).collect();
        let sum: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|q| *q /= sum);
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            let mut keep = probs.len();
            for (i, q) in probs.iter().enumerate() {
                acc += q;
                if acc >= p.top_p {
                    keep = i + 1;
                    break;
                }
            }
            probs.truncate(keep);
            let s: f32 = probs.iter().sum();
            probs.iter_mut().for_each(|q| *q /= s);
        }
        let r = self.rng.next_f32();
        let mut acc = 0.0;
        for (i, q) in probs.iter().enumerate() {
            acc += q;
            if r < acc {
                return cand[i].0;
            }
        }
        cand[probs.len() - 1].0
    }
}

/// Limits and stop conditions of one generation.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Generation ends before any of these strings; they are not returned.
    pub stop: Vec<String>,
    /// Sampling.
    pub sampling: Sampling,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// `max_tokens` reached (or the context is full).
    Length,
    /// The model produced its end-of-sequence token.
    Eos,
    /// A stop string was produced.
    Stop,
    /// The caller cancelled.
    Cancelled,
}

/// The result of one generation.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    /// Tokens generated (EOS excluded).
    pub tokens: Vec<u32>,
    /// Their text, cut before a stop string.
    pub text: String,
    /// Why it ended.
    pub finish: Finish,
}

/// One generation in progress, as a state machine: feed it the logits of
/// the next position, it picks the token to feed back (or says it is done).
/// [`generate`] drives it over a synchronous [`Decoder`]; the browser worker
/// drives it over the GPU, awaiting each read back.
#[derive(Debug)]
pub struct Generation<'t> {
    tokenizer: &'t Tokenizer,
    options: GenerateOptions,
    sampler: Sampler,
    utf8: StreamDecoder,
    text: String,
    /// Bytes of `text` already given to `on_text`.
    sent: usize,
    tokens: Vec<u32>,
    /// Longest stop string: text that could still be the start of one is held back.
    hold: usize,
    room: usize,
    finish: Option<Finish>,
}

impl<'t> Generation<'t> {
    /// Checks the prompt against the context and the sampling values.
    ///
    /// # Errors
    /// An empty prompt, a prompt that leaves no room in `context`, bad
    /// sampling values.
    pub fn new(
        tokenizer: &'t Tokenizer,
        prompt_len: usize,
        context: usize,
        options: &GenerateOptions,
    ) -> Result<Self, GenerateError> {
        if prompt_len == 0 {
            return Err(GenerateError::EmptyPrompt);
        }
        if prompt_len >= context {
            return Err(GenerateError::PromptTooLong {
                prompt: prompt_len,
                context,
            });
        }
        Ok(Self {
            tokenizer,
            sampler: Sampler::new(options.sampling.clone())?,
            hold: options.stop.iter().map(String::len).max().unwrap_or(0),
            options: options.clone(),
            utf8: StreamDecoder::default(),
            text: String::new(),
            sent: 0,
            tokens: Vec::new(),
            room: context - prompt_len,
            finish: None,
        })
    }

    /// Tokens generated so far.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Whether generation has ended (no more logits are needed).
    pub fn ended(&self) -> bool {
        self.finish.is_some()
    }

    /// Takes `prefix` as already generated and delivered by someone else:
    /// the state (text, what was delivered, the sampler's stream, the
    /// token budget) becomes what it was after them, and nothing of them is
    /// emitted again. Call before the first [`Generation::next`].
    ///
    /// # Errors
    /// [`GenerateError::Resume`] for a token outside the vocabulary, an EOS
    /// or a prefix that already holds a stop string (it should have ended).
    pub fn resume(&mut self, prefix: &[u32]) -> Result<(), GenerateError> {
        if !self.tokens.is_empty() {
            return Err(GenerateError::Resume("generation already started".into()));
        }
        let vocab = self.tokenizer.vocab_size();
        for &t in prefix {
            if t as usize >= vocab {
                return Err(GenerateError::Resume(format!(
                    "token {t} is outside the vocabulary of {vocab}"
                )));
            }
            if t == self.tokenizer.eos {
                return Err(GenerateError::Resume(
                    "the tokens end with end-of-sequence".into(),
                ));
            }
            self.tokens.push(t);
            let piece = self.utf8.push(self.tokenizer.token_bytes(t));
            self.text.push_str(&piece);
        }
        if self
            .options
            .stop
            .iter()
            .any(|s| !s.is_empty() && self.text.contains(s.as_str()))
        {
            return Err(GenerateError::Resume(
                "the tokens already contain a stop string".into(),
            ));
        }
        self.sent = floor_boundary(
            &self.text,
            self.text.len().saturating_sub(self.hold.saturating_sub(1)),
        );
        self.sampler.skip(prefix.len());
        if self.tokens.len() >= self.options.max_tokens || self.tokens.len() >= self.room {
            self.finish = Some(Finish::Length);
        }
        Ok(())
    }

    /// Takes the logits of the next position and returns the token to feed
    /// the model, or `None` when generation has ended (EOS, a stop string,
    /// the token limit, the context, or `cancelled`). `on_text` receives the
    /// text that became final: never a split character, never part of a
    /// stop string.
    pub fn next(
        &mut self,
        logits: &[f32],
        cancelled: bool,
        on_text: &mut dyn FnMut(&str),
    ) -> Option<u32> {
        self.next_by(&mut |sampler| sampler.sample(logits), cancelled, on_text)
    }

    /// Whether every token is the most likely one (temperature 0 or
    /// top-k 1): then a device may pick it itself ([`Generation::next_greedy`]).
    pub fn is_greedy(&self) -> bool {
        let p = &self.sampler.params;
        p.temperature == 0.0 || p.top_k == 1
    }

    /// [`Generation::next`] for a greedy generation given the most likely
    /// token (the first of the largest logits, as [`crate::reference::argmax`]
    /// picks it) instead of the logits.
    pub fn next_greedy(
        &mut self,
        best: u32,
        cancelled: bool,
        on_text: &mut dyn FnMut(&str),
    ) -> Option<u32> {
        debug_assert!(self.is_greedy());
        self.next_by(&mut |_| best, cancelled, on_text)
    }

    fn next_by(
        &mut self,
        pick: &mut dyn FnMut(&mut Sampler) -> u32,
        cancelled: bool,
        on_text: &mut dyn FnMut(&str),
    ) -> Option<u32> {
        if self.finish.is_some() {
            return None;
        }
        if self.tokens.len() >= self.options.max_tokens || self.tokens.len() >= self.room {
            self.finish = Some(Finish::Length);
            return None;
        }
        if cancelled {
            self.finish = Some(Finish::Cancelled);
            return None;
        }
        let next = pick(&mut self.sampler);
        if next == self.tokenizer.eos {
            self.finish = Some(Finish::Eos);
            return None;
        }
        self.tokens.push(next);
        let piece = self.utf8.push(self.tokenizer.token_bytes(next));
        self.text.push_str(&piece);
        // A stop string can only end in the new text; it can start in the
        // held-back tail.
        let text = &self.text;
        let from = floor_boundary(text, self.sent.saturating_sub(self.hold));
        if let Some(at) = self
            .options
            .stop
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| text[from..].find(s.as_str()))
            .min()
            .map(|i| i + from)
        {
            self.text.truncate(at);
            self.finish = Some(Finish::Stop);
            return None;
        }
        // Everything but a possible stop-string prefix is final.
        let safe = floor_boundary(text, text.len().saturating_sub(self.hold.saturating_sub(1)));
        if safe > self.sent {
            on_text(&text[self.sent..safe]);
            self.sent = safe;
        }
        if self.tokens.len() >= self.options.max_tokens || self.tokens.len() >= self.room {
            // No logits are needed for a token that will not be sampled.
            self.finish = Some(Finish::Length);
            return None;
        }
        Some(next)
    }

    /// Flushes the remaining text to `on_text` and returns the result.
    pub fn finish(mut self, on_text: &mut dyn FnMut(&str)) -> Generated {
        let finish = self.finish.unwrap_or(Finish::Length);
        if finish != Finish::Stop {
            let tail = self.utf8.finish();
            self.text.push_str(&tail);
        }
        if self.text.len() > self.sent {
            on_text(&self.text[self.sent..]);
        }
        Generated {
            tokens: self.tokens,
            text: self.text,
            finish,
        }
    }
}

/// Generates from `prompt` (token ids): prefill, then sample up to
/// `max_tokens`. `on_text` receives the text as it becomes final (never a
/// split character, never part of a stop string); `cancelled` is polled
/// before every token.
///
/// # Errors
/// An empty prompt, a prompt longer than the context, bad sampling values.
pub fn generate(
    model: &mut impl Decoder,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    options: &GenerateOptions,
    cancelled: &dyn Fn() -> bool,
    on_text: &mut dyn FnMut(&str),
) -> Result<Generated, GenerateError> {
    let mut g = Generation::new(tokenizer, prompt.len(), model.context_len(), options)?;
    let mut logits = model.prefill(prompt)?;
    while let Some(token) = g.next(&logits, cancelled(), on_text) {
        logits = model.step(token)?;
    }
    Ok(g.finish(on_text))
}

/// The largest char boundary of `s` at or before `i`.
fn floor_boundary(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
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
