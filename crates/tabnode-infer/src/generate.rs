//! Text generation over any model that decodes one token at a time:
//! prefill, then sample (greedy, temperature, top-k, top-p, seeded), stream
//! text to a callback, stop on EOS, stop strings or the token limit, and
//! honour cancellation.

pub use crate::sample::{Sampler, Sampling, Top};
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

/// A draw that the candidates a device ranked do not decide: the logits
/// are needed ([`Generation::next_top`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Undecided;

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
        self.next_by(
            &mut |sampler| Some(sampler.sample(logits)),
            cancelled,
            on_text,
        )
        .unwrap_or_default()
    }

    /// [`Generation::next`] given a device's candidates, ranked with
    /// [`Sampler::temperature`] and at least [`Sampler::keep`] of them
    /// ([`Generation::sampler`]). [`Undecided`] when the draw falls outside
    /// them: then [`Generation::next`] with the logits finishes the same draw.
    ///
    /// # Errors
    /// [`Undecided`].
    pub fn next_top(
        &mut self,
        top: &Top,
        cancelled: bool,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Option<u32>, Undecided> {
        self.next_by(&mut |sampler| sampler.sample_top(top), cancelled, on_text)
    }

    /// The sampler's parameters (what a device ranking candidates needs).
    pub fn sampler(&self) -> &Sampler {
        &self.sampler
    }

    /// Whether every token is the most likely one (temperature 0 or
    /// top-k 1): then a device may pick it itself ([`Generation::next_greedy`]).
    pub fn is_greedy(&self) -> bool {
        self.sampler.is_greedy()
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
        self.next_by(&mut |_| Some(best), cancelled, on_text)
            .unwrap_or_default()
    }

    fn next_by(
        &mut self,
        pick: &mut dyn FnMut(&mut Sampler) -> Option<u32>,
        cancelled: bool,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Option<u32>, Undecided> {
        if self.finish.is_some() {
            return Ok(None);
        }
        if self.tokens.len() >= self.options.max_tokens || self.tokens.len() >= self.room {
            self.finish = Some(Finish::Length);
            return Ok(None);
        }
        if cancelled {
            self.finish = Some(Finish::Cancelled);
            return Ok(None);
        }
        let next = pick(&mut self.sampler).ok_or(Undecided)?;
        if next == self.tokenizer.eos {
            self.finish = Some(Finish::Eos);
            return Ok(None);
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
            return Ok(None);
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
            return Ok(None);
        }
        Ok(Some(next))
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
