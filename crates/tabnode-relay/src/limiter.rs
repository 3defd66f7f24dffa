//! Token buckets: how often one client address (the HTTP API) or one peer
//! (its control messages) may ask.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Instant;

/// A token bucket per key: `count` requests a `period_secs`, in bursts of
/// up to `count` (0: no limit).
#[derive(Debug)]
pub(crate) struct RateLimiter<K> {
    count: u32,
    period_secs: u64,
    buckets: Mutex<HashMap<K, (f64, Instant)>>,
}

impl<K: Hash + Eq> RateLimiter<K> {
    pub(crate) fn new(count: u32, period_secs: u64) -> Self {
        Self {
            count,
            period_secs: period_secs.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// `Ok` to go ahead, or the seconds until a request is allowed.
    pub(crate) fn check(&self, key: K) -> Result<(), u64> {
        if self.count == 0 {
            return Ok(());
        }
        let cap = f64::from(self.count);
        let rate = cap / self.period_secs as f64;
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() > 100_000 {
            let period = self.period_secs;
            buckets.retain(|_, (_, t)| now.duration_since(*t).as_secs() < period);
        }
        let (tokens, last) = buckets.entry(key).or_insert((cap, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * rate).min(cap);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *tokens) / rate).ceil() as u64)
        }
    }
}

/// How many requests other than token chunks (registrations, peer lists,
/// API keys, echoes) one peer may send a minute, in bursts of as many: far
/// more than a node or a tab needs (they register when they join or
/// change, list peers when someone looks), far fewer than a flood that
/// would have the relay list its nodes or write its keys at line rate.
pub(crate) const CONTROL_PER_MINUTE: u32 = 120;

/// The limit on peers' control requests ([`CONTROL_PER_MINUTE`]).
#[derive(Debug)]
pub(crate) struct ControlLimit(RateLimiter<libp2p::PeerId>);

impl Default for ControlLimit {
    fn default() -> Self {
        Self(RateLimiter::new(CONTROL_PER_MINUTE, 60))
    }
}

impl ControlLimit {
    /// `Ok` when `peer` may send another control request, else the
    /// seconds until it may.
    pub(crate) fn check(&self, peer: libp2p::PeerId) -> Result<(), u64> {
        self.0.check(peer)
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;

    #[test]
    fn the_rate_limiter_lets_a_burst_through_then_refuses() {
        let l = RateLimiter::new(3, 60);
        let ip = IpAddr::from([10, 0, 0, 1]);
        assert!((0..3).all(|_| l.check(ip).is_ok()));
        let retry = l.check(ip).expect_err("limited");
        assert!((1..=20).contains(&retry), "{retry}");
        assert!(l.check(IpAddr::from([10, 0, 0, 2])).is_ok(), "per address");
        assert!(RateLimiter::new(0, 60).check(ip).is_ok(), "0 = unlimited");
        // An hour's allowance: the next request in 36 s (100 an hour).
        let hourly = RateLimiter::new(100, 3600);
        assert!((0..100).all(|_| hourly.check(ip).is_ok()));
        let retry = hourly.check(ip).expect_err("used up");
        assert!((1..=36).contains(&retry), "{retry}");
    }
}
