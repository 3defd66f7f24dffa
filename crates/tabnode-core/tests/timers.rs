//! The patched `futures-timer` (third_party/futures-timer): its helper
//! thread is woken only when a new deadline comes before the one it sleeps
//! to, so these check that no timer is ever late because of a wake-up that
//! was skipped: a short timer behind long ones, timers set and cancelled
//! from many threads at once while others fire, and resets.

use std::time::{Duration, Instant};

use futures::executor::block_on;
use futures_timer::Delay;

/// Far more than any timer here waits; a timer this late was missed.
const MISSED: Duration = Duration::from_secs(5);

/// How long the timer `make` sets took to fire (timed from before it is
/// set), waited for on another thread; `None` when it had not fired after
/// [`MISSED`] (its wake-up was lost).
fn fired_after(make: impl FnOnce() -> Delay + Send + 'static) -> Option<Duration> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let t = Instant::now();
        block_on(make());
        let _ = tx.send(t.elapsed());
    });
    rx.recv_timeout(MISSED).ok()
}

#[test]
fn a_short_timer_behind_long_ones_fires_on_time() {
    // The helper sleeps towards the long timers' deadline...
    let long: Vec<Delay> = (0..4)
        .map(|_| Delay::new(Duration::from_secs(600)))
        .collect();
    std::thread::sleep(Duration::from_millis(20));
    // ...and must be woken for the earlier one.
    let took = fired_after(|| Delay::new(Duration::from_millis(30))).expect("a 30 ms timer fired");
    assert!(took >= Duration::from_millis(30), "fired early: {took:?}");
    drop(long);
}

#[test]
fn a_timer_reset_earlier_fires_at_its_new_deadline() {
    let _long = Delay::new(Duration::from_secs(600));
    let mut d = Delay::new(Duration::from_secs(300));
    std::thread::sleep(Duration::from_millis(10));
    let took = fired_after(move || {
        d.reset(Duration::from_millis(20));
        d
    })
    .expect("the reset timer fired");
    assert!(took >= Duration::from_millis(20), "fired early: {took:?}");
}

#[test]
fn timers_set_and_cancelled_from_many_threads_all_fire() {
    let threads: Vec<_> = (0..8u64)
        .map(|k| {
            std::thread::spawn(move || {
                let mut late = 0;
                for i in 0..300u64 {
                    // Cancelled timers (more than the deferred-cancel bound
                    // in all) interleaved with ones that must fire.
                    let cancelled: Vec<Delay> = (0..20)
                        .map(|j| Delay::new(Duration::from_secs(60 + j)))
                        .collect();
                    drop(cancelled);
                    let wait = Duration::from_micros(200 + (k * 131 + i * 17) % 3000);
                    match fired_after(move || Delay::new(wait)) {
                        Some(took) => assert!(took >= wait, "fired early: {took:?} < {wait:?}"),
                        None => late += 1,
                    }
                }
                late
            })
        })
        .collect();
    let late: usize = threads
        .into_iter()
        .map(|t| t.join().expect("a timer thread"))
        .sum();
    assert_eq!(late, 0, "timers missed their wake-up");
}
