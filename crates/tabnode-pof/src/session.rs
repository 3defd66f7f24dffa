//! The prover's side of the protocol, kept between a commitment and its
//! opening: one [`Prover`] per round, and the size limit the node
//! advertised. Every node (native, tab) uses this; only the matmul differs.

use std::collections::VecDeque;

use crate::{elements, Answer, Hash, PofError, Prover, Query};

/// Commitments kept at once. The relay has one challenge in flight per node;
/// a second round's commitment never replaces the first one's before it is
/// opened, and old ones are dropped oldest first.
pub const KEPT_ROUNDS: usize = 2;

/// Commitments by round, and the largest `n` this node accepts.
#[derive(Debug)]
pub struct Commitments {
    max_n: u32,
    rounds: VecDeque<(u64, Prover)>,
}

impl Commitments {
    /// A prover that accepts challenges up to `max_n` (what the node
    /// advertises: what its memory and device hold).
    pub fn new(max_n: u32) -> Self {
        Self {
            max_n,
            rounds: VecDeque::new(),
        }
    }

    /// The largest `n` accepted.
    pub fn max_n(&self) -> u32 {
        self.max_n
    }

    /// Checks a challenge size before anything is allocated.
    ///
    /// # Errors
    /// [`PofError::AboveAdvertised`] above `max_n`, [`PofError::BadSize`] or
    /// [`PofError::TooLarge`] for sizes no node can hold.
    pub fn admit(&self, n: u32) -> Result<(), PofError> {
        if n > self.max_n {
            return Err(PofError::AboveAdvertised { n, max: self.max_n });
        }
        elements(n).map(|_| ())
    }

    /// Commits to `C` (row-major `n × n`) for `round` and returns the root.
    ///
    /// # Errors
    /// As [`Commitments::admit`] and [`Prover::new`].
    pub fn commit(&mut self, round: u64, n: u32, c: &[f32]) -> Result<Hash, PofError> {
        self.admit(n)?;
        let prover = Prover::new(n, c)?;
        let root = prover.root();
        self.rounds.retain(|(r, _)| *r != round);
        while self.rounds.len() >= KEPT_ROUNDS {
            self.rounds.pop_front();
        }
        self.rounds.push_back((round, prover));
        Ok(root)
    }

    /// Opens the commitment of `round`. It stays kept: the same query gets
    /// the same answer.
    ///
    /// # Errors
    /// [`PofError::NotCommitted`] when nothing was committed for `round`.
    pub fn open(&self, round: u64, query: &Query) -> Result<Answer, PofError> {
        self.rounds
            .iter()
            .find(|(r, _)| *r == round)
            .map(|(_, p)| p.answer(query))
            .ok_or(PofError::NotCommitted(round))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{derive_seed, expand, matmul_cpu, verify, MAX_N};

    fn product(round: u64, n: u32) -> (Hash, Vec<f32>) {
        let seed = derive_seed(&[3; 32], b"peer", round, n);
        let (a, b) = expand(&seed, n).expect("expand");
        (seed, matmul_cpu(&a, &b, n as usize))
    }

    #[test]
    fn sizes_above_the_advertised_limit_are_refused_before_allocating() {
        let c = Commitments::new(64);
        assert!(c.admit(64).is_ok());
        assert_eq!(
            c.admit(65),
            Err(PofError::AboveAdvertised { n: 65, max: 64 })
        );
        assert_eq!(c.admit(0), Err(PofError::BadSize(0)));
        // Even a node that advertises everything refuses the impossible.
        let all = Commitments::new(u32::MAX);
        assert_eq!(all.admit(MAX_N + 1), Err(PofError::BadSize(MAX_N + 1)));
    }

    #[test]
    fn each_round_keeps_its_own_commitment() {
        let mut c = Commitments::new(64);
        let (seed1, c1) = product(1, 32);
        let (seed2, c2) = product(2, 16);
        let root1 = c.commit(1, 32, &c1).expect("commit 1");
        // A second challenge between round 1's commit and its opening.
        let root2 = c.commit(2, 16, &c2).expect("commit 2");
        let q = Query {
            nonce: [9; 32],
            k: 8,
        };
        let a1 = c.open(1, &q).expect("round 1 still open");
        let a2 = c.open(2, &q).expect("round 2 open");
        assert!(verify(&seed1, 32, &root1, &q, &a1).is_ok());
        assert!(verify(&seed2, 16, &root2, &q, &a2).is_ok());
        assert_eq!(c.open(7, &q), Err(PofError::NotCommitted(7)));
        // Only KEPT_ROUNDS are kept, oldest dropped first.
        let (_, c3) = product(3, 16);
        c.commit(3, 16, &c3).expect("commit 3");
        assert_eq!(c.open(1, &q), Err(PofError::NotCommitted(1)));
        assert!(c.open(2, &q).is_ok() && c.open(3, &q).is_ok());
    }

    #[test]
    fn a_wrong_length_is_an_error_not_a_panic() {
        let mut c = Commitments::new(64);
        assert!(matches!(
            c.commit(1, 8, &[0.0; 63]),
            Err(PofError::WrongLength { .. })
        ));
        assert!(matches!(
            c.commit(1, 100, &[0.0; 4]),
            Err(PofError::AboveAdvertised { .. })
        ));
    }
}
