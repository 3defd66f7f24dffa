//! A model's rows split between workers that run one forward together.
//!
//! The tab's wasm has one thread (wasm threads need std rebuilt with
//! atomics), so a tab uses its cores as several Web Workers, each with its
//! own wasm memory. Each worker (a *shard*) holds its part of the rows of
//! every matrix and computes those; after each matmul the shards swap
//! their rows ([`Exchange::all_gather`]) so every shard holds the whole
//! output and runs the cheap rest of the layer (norms, RoPE, attention
//! over its own copy of the KV cache, SiLU·mul) itself. A row's dot
//! product does not depend on which rows share its pass, so a split model
//! gives the same bits as a whole one. Shard 0 holds the embedding, runs
//! the sessions and tells the others what to do; they wait in
//! [`crate::cpu::CpuModel::serve`].
//!
//! How the shards meet is the caller's: the worker crate's exchange uses a
//! `SharedArrayBuffer` and `Atomics` (cross-origin isolated pages); the
//! tests use threads.

use std::ops::Range;

/// Why the shards of a model could not work together.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ExchangeError {
    /// A shard did not take its part in time (gone, or stuck).
    #[error("shard {shard} did not answer within {ms} ms")]
    Timeout {
        /// The shard waited for.
        shard: usize,
        /// How long.
        ms: u32,
    },
    /// More values than the exchange was made for.
    #[error("{len} values do not fit the exchange's {capacity} per shard")]
    TooLarge {
        /// Values to send.
        len: usize,
        /// What one shard can send in a round.
        capacity: usize,
    },
    /// A shard sent a part of the wrong size (out of step).
    #[error("shard {shard} sent {actual} values where {expected} were expected")]
    Length {
        /// The sender.
        shard: usize,
        /// Values expected.
        expected: usize,
        /// Values received.
        actual: usize,
    },
    /// A command shard 0 sent that this shard cannot follow.
    #[error("shard 0 asked for {0:?}, which this shard cannot follow")]
    Command(Vec<f32>),
    /// A shard's KV cache is not where the command says the sequence is.
    #[error("shard at position {have}, asked to continue at {asked}")]
    OutOfStep {
        /// This shard's position.
        have: usize,
        /// The command's.
        asked: usize,
    },
    /// Another session has run on the shards since this one's last step
    /// (they hold one KV cache).
    #[error("another session has used the model's shards since this one's last step")]
    Superseded,
    /// An earlier exchange failed, so the shards are out of step for good.
    #[error("the model's shards are out of step after an earlier failure")]
    Broken,
    /// The transport failed (a browser exception, as text).
    #[error("exchange: {0}")]
    Transport(String),
}

#[cfg(not(target_arch = "wasm32"))]
mod bounds {
    /// Natively a model is shared between threads: its exchange too.
    pub trait Bounds: Send + Sync {}
    impl<T: Send + Sync> Bounds for T {}
}
#[cfg(target_arch = "wasm32")]
mod bounds {
    /// A wasm worker has one thread: browser handles (not `Send`) will do.
    pub trait Bounds {}
    impl<T> Bounds for T {}
}

/// What receives each other shard's values in a round: `(shard, values)`.
pub type Receive<'a> = dyn FnMut(usize, &[f32]) -> Result<(), ExchangeError> + 'a;

/// How the shards of one model swap values: every shard calls
/// [`Exchange::all_gather`] the same number of times, in the same order.
pub trait Exchange: bounds::Bounds {
    /// This shard's place (0 runs the sessions).
    fn index(&self) -> usize;
    /// Shards in all.
    fn count(&self) -> usize;
    /// Values one shard can send in a round.
    fn capacity(&self) -> usize;
    /// One round: sends `mine` to every other shard and hands each other
    /// shard's values to `theirs(shard, values)`, in shard order. `idle`:
    /// waiting for shard 0's next command, with no time limit.
    ///
    /// # Errors
    /// A shard that does not answer in time, values over
    /// [`Exchange::capacity`], a failing transport, or what `theirs`
    /// returns.
    fn all_gather(
        &self,
        mine: &[f32],
        idle: bool,
        theirs: &mut Receive<'_>,
    ) -> Result<(), ExchangeError>;
}

/// Rows `part(rows, count, s)` of a matrix belong to shard `s`: contiguous,
/// in whole groups of 4 (the SIMD kernels' row groups), as even as that
/// allows, together all of `0..rows`.
pub fn part(rows: usize, count: usize, s: usize) -> Range<usize> {
    let count = count.max(1);
    let groups = rows.div_ceil(4);
    let at = |s: usize| (groups * s / count * 4).min(rows);
    at(s)..at(s + 1)
}

/// Prompt tokens one forward of a split model takes at most (a longer
/// prompt runs in chunks, the same bits): bounds what a round carries.
pub const CHUNK: usize = 64;

/// What shard 0 tells the others at the start of each forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Run a forward of `tokens` tokens at position `pos` (the embedded
    /// tokens follow in the next round); position 0 starts a new sequence.
    Forward {
        /// Where the sequence is.
        pos: usize,
        /// Tokens in this forward.
        tokens: usize,
    },
    /// Leave [`crate::cpu::CpuModel::serve`].
    Stop,
}

impl Command {
    /// As sent (small integers are exact in f32; positions stay under the
    /// context, far below 2^24).
    pub fn encode(self) -> Vec<f32> {
        match self {
            Command::Forward { pos, tokens } => vec![1.0, pos as f32, tokens as f32],
            Command::Stop => vec![2.0],
        }
    }

    /// Reads a sent command.
    ///
    /// # Errors
    /// [`ExchangeError::Command`] for anything else.
    pub fn decode(v: &[f32]) -> Result<Self, ExchangeError> {
        let int = |x: f32| {
            (x >= 0.0 && x < (1u32 << 24) as f32 && x.fract() == 0.0).then_some(x as usize)
        };
        match v {
            [op, pos, tokens] if *op == 1.0 => match (int(*pos), int(*tokens)) {
                (Some(pos), Some(tokens)) if (1..=CHUNK).contains(&tokens) => {
                    Ok(Command::Forward { pos, tokens })
                }
                _ => Err(ExchangeError::Command(v.to_vec())),
            },
            [op] if *op == 2.0 => Ok(Command::Stop),
            _ => Err(ExchangeError::Command(v.to_vec())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_cover_the_rows_in_groups_of_four() {
        for rows in [1, 3, 4, 5, 64, 192, 576, 1536, 49152, 151936] {
            for count in 1..=8 {
                let parts: Vec<_> = (0..count).map(|s| part(rows, count, s)).collect();
                assert_eq!(parts[0].start, 0);
                assert_eq!(parts[count - 1].end, rows);
                for w in parts.windows(2) {
                    assert_eq!(w[0].end, w[1].start, "{rows} rows, {count} shards");
                }
                for p in &parts[..count - 1] {
                    assert_eq!(p.start % 4, 0);
                    assert_eq!(p.end % 4, 0);
                }
                let sizes: Vec<_> = parts.iter().map(|p| p.len()).collect();
                let (lo, hi) = (sizes.iter().min(), sizes.iter().max());
                assert!(hi.zip(lo).is_some_and(|(h, l)| h - l <= 4), "{sizes:?}");
            }
        }
    }

    #[test]
    fn commands_round_trip_and_bad_ones_are_refused() {
        for c in [
            Command::Forward { pos: 0, tokens: 1 },
            Command::Forward {
                pos: 32767,
                tokens: CHUNK,
            },
            Command::Stop,
        ] {
            assert_eq!(Command::decode(&c.encode()), Ok(c));
        }
        for bad in [
            &[][..],
            &[1.0, 0.0, 0.0],
            &[1.0, 0.0, (CHUNK + 1) as f32],
            &[1.0, -1.0, 1.0],
            &[1.0, 0.5, 1.0],
            &[1.0, f32::NAN, 1.0],
            &[3.0],
            &[2.0, 0.0],
        ] {
            assert!(
                matches!(Command::decode(bad), Err(ExchangeError::Command(_))),
                "{bad:?}"
            );
        }
    }
}
