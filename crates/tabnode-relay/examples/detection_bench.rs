//! The detection curve of spot checks (issue #16): simulated cheaters
//! (a fraction `f` of their requests wrong, every wrong one caught when
//! checked) go through the relay's own draws and strike counting
//! (`Checks::draw`, `Checks::record`, the default `CheckConfig`) until
//! excluded; the mean and 95th percentile of the requests that takes, next
//! to the exact expectation of the same model (a recursion over
//! requests) and the closed form for an established node,
//! `1/(f·r) + (k−1)/f`.
//!
//! `cargo run -p tabnode-relay --example detection_bench -- [trials]`

use libp2p::PeerId;
use tabnode_relay::checks::{CheckConfig, CheckRecord, Checks, Outcome};

/// Requests until exclusion of one simulated cheater.
fn simulate(f: f64, config: &CheckConfig) -> u64 {
    let checks = Checks::default();
    let (peer, checker) = (PeerId::random(), PeerId::random());
    let mut n = 0u64;
    loop {
        n += 1;
        let wrong = rand::random::<f64>() < f;
        if !checks.draw(peer, config) {
            continue;
        }
        let outcome = if wrong {
            Outcome::Failed
        } else {
            Outcome::Passed
        };
        let strikes = checks.record(
            &[peer],
            checker,
            CheckRecord {
                at_ms: 0,
                request_id: n,
                model: String::new(),
                served_by: String::new(),
                nodes: Vec::new(),
                checker: String::new(),
                tokens: 0,
                outcome,
                position: None,
                closeness: None,
                reason: None,
                confirmed_by: None,
                ms: 0,
            },
        );
        if strikes >= config.strikes_to_exclude {
            return n;
        }
    }
}

/// The expected requests until exclusion, and the probability of
/// surviving `horizon` requests, by recursion over requests: the chance
/// of a strike per request is `f` times the rate the relay checks at
/// (the new-node rate for the first requests, every request after a
/// strike).
fn exact(f: f64, config: &CheckConfig, horizon: u64) -> (f64, f64) {
    let k = config.strikes_to_exclude as usize;
    let mut p = vec![0f64; k];
    p[0] = 1.0;
    let (mut expected, mut survive_horizon) = (0f64, 1f64);
    for n in 1..=10_000_000u64 {
        let alive: f64 = p.iter().sum();
        expected += alive;
        if n <= horizon + 1 {
            survive_horizon = alive;
        }
        if alive < 1e-12 {
            break;
        }
        let mut next = vec![0f64; k];
        for (s, &mass) in p.iter().enumerate() {
            let rate = if s > 0 {
                1.0
            } else if n <= config.new_node_requests {
                config.new_node_rate
            } else {
                config.rate
            };
            let q = f * rate;
            next[s] += mass * (1.0 - q);
            if s + 1 < k {
                next[s + 1] += mass * q;
            }
        }
        p = next;
    }
    (expected, survive_horizon)
}

fn main() {
    let trials: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2000);
    let config = CheckConfig::default();
    let k = f64::from(config.strikes_to_exclude);
    println!(
        "rate {} (new nodes {} for {} requests), {} strikes, {trials} cheaters per f",
        config.rate, config.new_node_rate, config.new_node_requests, config.strikes_to_exclude
    );
    println!("f      simulated mean  p95     exact mean  closed form  P(survive 1000)");
    for f in [0.02, 0.05, 0.1, 0.25, 0.5, 1.0] {
        let mut runs: Vec<u64> = (0..trials).map(|_| simulate(f, &config)).collect();
        runs.sort_unstable();
        let mean = runs.iter().sum::<u64>() as f64 / trials as f64;
        let p95 = runs[(trials * 95 / 100).min(trials - 1)];
        let (expected, survive) = exact(f, &config, 1000);
        let closed = 1.0 / (f * config.rate) + (k - 1.0) / f;
        println!("{f:<6} {mean:>14.1} {p95:>6} {expected:>12.1} {closed:>12.1} {survive:>16.3e}");
    }
}
