//! `RateLimiter` (docs/design.md, "Runtime types"): `rate` per `period` with a `burst`,
//! scheduled from ideal arrival times (GCRA), FIFO between waiters, on tokio's clock.
//!
//! Every test runs on tokio's paused clock: the instants recorded are virtual and
//! exact, so the schedule itself is asserted, never a wall-clock duration.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use resource_runtime::limiter::{LimiterError, RateLimiter};
use resource_runtime::{ConfigError, ResourceError};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, sleep_until};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

const SECOND: Duration = Duration::from_secs(1);
const HOUR: Duration = Duration::from_secs(3600);

/// Awaits `fut`, which must finish without any time passing: a future that waits on
/// the clock (or forever) is cut off after an hour of virtual time and fails the test.
async fn at_once<T>(fut: impl Future<Output = T>) -> T {
    let start = Instant::now();
    let out = tokio::time::timeout(HOUR, fut)
        .await
        .expect("the call waited instead of returning at once");
    assert_eq!(start.elapsed(), Duration::ZERO, "the call waited");
    out
}

/// One admission in a contended run.
#[derive(Debug, Clone, Copy)]
struct Admitted {
    waiter: usize,
    ticket: usize,
    tokens: u32,
    at: Instant,
}

/// What a contended run saw: the tickets in the order they joined the queue, and the
/// admissions in the order they happened.
#[derive(Debug)]
struct Run {
    queued: Vec<usize>,
    admitted: Vec<Admitted>,
}

/// `waiters` tasks loop taking tickets until `total` are handed out; for each ticket a
/// task records that it queues, acquires `weight(ticket)` tokens, and records the
/// admission with its instant.
async fn contend(
    limiter: &RateLimiter,
    waiters: usize,
    total: usize,
    weight: fn(usize) -> u32,
) -> Run {
    let next = Arc::new(AtomicUsize::new(0));
    let queued = Arc::new(Mutex::new(Vec::with_capacity(total)));
    let admitted = Arc::new(Mutex::new(Vec::with_capacity(total)));
    let mut tasks = JoinSet::new();
    for waiter in 0..waiters {
        let (limiter, next) = (limiter.clone(), next.clone());
        let (queued, admitted) = (queued.clone(), admitted.clone());
        tasks.spawn(async move {
            loop {
                let ticket = next.fetch_add(1, Ordering::SeqCst);
                if ticket >= total {
                    break;
                }
                let tokens = weight(ticket);
                // Nothing between this push and the acquire's first poll: the push
                // order is the order of arrival at the limiter.
                queued.lock().unwrap().push(ticket);
                limiter.acquire(tokens).await.unwrap();
                admitted.lock().unwrap().push(Admitted {
                    waiter,
                    ticket,
                    tokens,
                    at: Instant::now(),
                });
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let queued = queued.lock().unwrap().clone();
    let admitted = admitted.lock().unwrap().clone();
    assert_eq!(admitted.len(), total);
    Run { queued, admitted }
}

/// The most tokens admitted in any closed window `[t, t + w]`, over windows starting
/// at an admission (the worst window always does).
fn most_tokens_in_window(admitted: &[Admitted], w: Duration) -> u64 {
    let mut most = 0;
    let mut end = 0;
    let mut tokens = 0_u64;
    for start in 0..admitted.len() {
        while end < admitted.len() && admitted[end].at <= admitted[start].at + w {
            tokens += u64::from(admitted[end].tokens);
            end += 1;
        }
        most = most.max(tokens);
        tokens -= u64::from(admitted[start].tokens);
    }
    most
}

/// The GCRA bound: at most `burst + rate * w / period` tokens in a window of length `w`.
fn window_bound(rate: u32, period: Duration, burst: u32, w: Duration) -> u64 {
    u64::from(burst) + (u128::from(rate) * w.as_nanos() / period.as_nanos()) as u64
}

fn check_every_window(admitted: &[Admitted], rate: u32, period: Duration, burst: u32) {
    let interval = period / rate;
    let windows = [
        Duration::ZERO,
        interval,
        interval * 3 + interval / 2,
        period,
        period * 3 + period / 3,
        period * 10,
        period * 37,
    ];
    for w in windows {
        let most = most_tokens_in_window(admitted, w);
        let bound = window_bound(rate, period, burst, w);
        assert!(
            most <= bound,
            "{most} tokens admitted within {w:?}: more than burst {burst} + {rate} per {period:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_cold_limiter_admits_exactly_the_burst_at_once() {
    let limiter = RateLimiter::builder(10, SECOND).burst(4).build().unwrap();
    assert_eq!(limiter.burst(), 4);
    for i in 0..4 {
        assert!(limiter.try_acquire(1).unwrap(), "token {i} of the burst");
    }
    assert!(!limiter.try_acquire(1).unwrap(), "a token past the burst");

    // The default burst is the rate; `acquire` gets the burst at once too.
    let limiter = RateLimiter::new(5, SECOND).unwrap();
    assert_eq!(limiter.burst(), 5);
    for _ in 0..5 {
        at_once(limiter.acquire(1)).await.unwrap();
    }
    assert!(!limiter.try_acquire(1).unwrap());
    // Then one token per interval (200 ms).
    let start = Instant::now();
    limiter.acquire(1).await.unwrap();
    assert_eq!(start.elapsed(), ms(200));
}

#[tokio::test(start_paused = true)]
async fn every_window_stays_within_burst_plus_rate() {
    let (rate, period, burst) = (50, SECOND, 5);
    let limiter = RateLimiter::builder(rate, period)
        .burst(burst)
        .build()
        .unwrap();
    let run = contend(&limiter, 16, 2000, |_| 1).await;
    check_every_window(&run.admitted, rate, period, burst);
    // The bound is reached, so the check above could fail: a burst at the start.
    assert_eq!(most_tokens_in_window(&run.admitted, Duration::ZERO), 5);
}

#[tokio::test(start_paused = true)]
async fn every_window_stays_within_burst_plus_rate_with_weighted_requests() {
    let (rate, period, burst) = (50, SECOND, 5);
    let limiter = RateLimiter::builder(rate, period)
        .burst(burst)
        .build()
        .unwrap();
    let run = contend(&limiter, 16, 1500, |ticket| (ticket % 3) as u32 + 1).await;
    check_every_window(&run.admitted, rate, period, burst);
}

#[tokio::test(start_paused = true)]
async fn keeps_the_configured_rate_at_burst_1_with_16_waiters() {
    // 30 per second: an interval of 33.3 ms, not a whole number of timer ticks, so
    // rounding must not accumulate into a slower rate.
    let (rate, total) = (30_u32, 2000_usize);
    let limiter = RateLimiter::builder(rate, SECOND).burst(1).build().unwrap();
    let run = contend(&limiter, 16, total, |_| 1).await;
    let first = run.admitted[0].at;
    let last = run.admitted[total - 1].at;
    let achieved = (total - 1) as f64 / (last - first).as_secs_f64();
    assert!(
        achieved >= 0.98 * f64::from(rate),
        "achieved {achieved:.3} per second of {rate}"
    );
    assert!(
        achieved <= f64::from(rate) * 1.000_001,
        "achieved {achieved:.3} per second: above the rate of {rate}"
    );
    check_every_window(&run.admitted, rate, SECOND, 1);
}

#[tokio::test(start_paused = true)]
async fn contended_admissions_follow_the_ideal_schedule_exactly() {
    // 50 per second at burst 1: one admission every 20 ms, from the first one on.
    let limiter = RateLimiter::builder(50, SECOND).burst(1).build().unwrap();
    let start = Instant::now();
    let run = contend(&limiter, 16, 300, |_| 1).await;
    for (k, a) in run.admitted.iter().enumerate() {
        assert_eq!(a.at - start, ms(20) * k as u32, "admission {k}");
    }
}

#[tokio::test(start_paused = true)]
async fn looping_waiters_get_equal_shares() {
    let limiter = RateLimiter::builder(100, SECOND).burst(1).build().unwrap();
    // Drained first, so that every waiter's first call queues: the shares then show
    // how the queue serves them, not which task the runtime happened to poll first.
    assert!(limiter.try_acquire(1).unwrap());
    let run = contend(&limiter, 16, 2000 + 7, |_| 1).await;
    let mut shares = [0_usize; 16];
    for a in &run.admitted {
        shares[a.waiter] += 1;
    }
    let (least, most) = (shares.iter().min().unwrap(), shares.iter().max().unwrap());
    assert!(most - least <= 1, "unfair shares: {shares:?}");
}

#[tokio::test(start_paused = true)]
async fn a_waiter_is_never_overtaken_whatever_the_weights() {
    let limiter = RateLimiter::builder(40, SECOND).burst(3).build().unwrap();
    let run = contend(&limiter, 16, 1200, |ticket| (ticket * 7 % 3) as u32 + 1).await;
    let admitted: Vec<usize> = run.admitted.iter().map(|a| a.ticket).collect();
    assert_eq!(
        admitted, run.queued,
        "admissions out of the order of arrival"
    );
}

#[tokio::test(start_paused = true)]
async fn a_heavy_head_is_not_overtaken_by_a_light_request_or_try_acquire() {
    let limiter = RateLimiter::builder(10, SECOND).burst(3).build().unwrap();
    let start = Instant::now();
    limiter.acquire(3).await.unwrap(); // the whole burst
    let order = Arc::new(Mutex::new(Vec::new()));
    let heavy = {
        let (limiter, order) = (limiter.clone(), order.clone());
        tokio::spawn(async move {
            limiter.acquire(3).await.unwrap();
            order.lock().unwrap().push(("heavy", start.elapsed()));
        })
    };
    sleep(ms(150)).await;
    // One token is free by now (100 ms), but the heavy waiter is first in line.
    assert!(
        !limiter.try_acquire(1).unwrap(),
        "try_acquire jumped the queue"
    );
    let light = {
        let (limiter, order) = (limiter.clone(), order.clone());
        tokio::spawn(async move {
            limiter.acquire(1).await.unwrap();
            order.lock().unwrap().push(("light", start.elapsed()));
        })
    };
    heavy.await.unwrap();
    light.await.unwrap();
    assert_eq!(
        *order.lock().unwrap(),
        [("heavy", ms(300)), ("light", ms(400))]
    );
}

#[tokio::test(start_paused = true)]
async fn more_than_the_burst_is_an_error_at_once() {
    let limiter = RateLimiter::builder(10, SECOND).burst(3).build().unwrap();
    let err = at_once(limiter.acquire(4)).await.unwrap_err();
    assert!(!err.is_closed());
    let message = err.to_string();
    assert!(
        message.contains('4') && message.contains("burst"),
        "an unclear error: {message}"
    );
    assert_eq!(
        limiter.waiting(),
        0,
        "a refused request stayed in the queue"
    );
    assert!(limiter.try_acquire(4).is_err());
    assert!(limiter.try_acquire(u32::MAX).is_err());
    // Nothing was consumed: the whole burst is still there.
    assert!(limiter.try_acquire(3).unwrap());
}

async fn record_acquire(
    limiter: &RateLimiter,
    name: &'static str,
    log: &Arc<Mutex<Vec<(&'static str, Instant)>>>,
) -> tokio::task::JoinHandle<()> {
    let (limiter, log) = (limiter.clone(), log.clone());
    let task = tokio::spawn(async move {
        limiter.acquire(1).await.unwrap();
        log.lock().unwrap().push((name, Instant::now()));
    });
    // Let it reach the queue before the next one.
    tokio::task::yield_now().await;
    task
}

#[tokio::test(start_paused = true)]
async fn cancelled_acquires_do_not_wedge_the_queue() {
    let limiter = RateLimiter::builder(10, SECOND).burst(1).build().unwrap(); // one per 100 ms
    let t0 = Instant::now();
    limiter.acquire(1).await.unwrap(); // the next token comes at 100 ms
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for name in ["a", "b", "c", "d", "e", "f"] {
        tasks.push(record_acquire(&limiter, name, &log).await);
    }
    assert_eq!(limiter.waiting(), 6);
    sleep(ms(10)).await;
    // Cancel the head (sleeping for its token), one in the middle and the last one.
    for i in [0, 2, 5] {
        tasks[i].abort();
    }
    sleep(ms(10)).await;
    assert_eq!(
        limiter.waiting(),
        3,
        "a cancelled waiter stayed in the queue"
    );
    for (i, task) in tasks.into_iter().enumerate() {
        match i {
            0 | 2 | 5 => assert!(task.await.unwrap_err().is_cancelled()),
            _ => task.await.unwrap(),
        }
    }
    let seen: Vec<(&str, Duration)> = log
        .lock()
        .unwrap()
        .iter()
        .map(|(name, at)| (*name, *at - t0))
        .collect();
    // The rest take the slots in order, on time: the cancelled ones took no tokens.
    assert_eq!(seen, [("b", ms(100)), ("d", ms(200)), ("e", ms(300))]);
    assert_eq!(limiter.waiting(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_head_that_gives_up_passes_its_turn_on() {
    let limiter = RateLimiter::builder(10, SECOND).burst(1).build().unwrap();
    let t0 = Instant::now();
    limiter.acquire(1).await.unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    // The head gives up after 50 ms (its future is dropped by the timeout).
    let quitter = {
        let limiter = limiter.clone();
        tokio::spawn(async move { tokio::time::timeout(ms(50), limiter.acquire(1)).await })
    };
    tokio::task::yield_now().await;
    let next = record_acquire(&limiter, "next", &log).await;
    assert_eq!(limiter.waiting(), 2);
    assert!(
        quitter.await.unwrap().is_err(),
        "the head was admitted early"
    );
    assert_eq!(limiter.waiting(), 1);
    next.await.unwrap();
    let seen: Vec<(&str, Duration)> = log
        .lock()
        .unwrap()
        .iter()
        .map(|(name, at)| (*name, *at - t0))
        .collect();
    assert_eq!(seen, [("next", ms(100))]);
}

#[tokio::test(start_paused = true)]
async fn close_wakes_every_waiter_with_a_closed_error_and_later_calls_fail() {
    let limiter = RateLimiter::builder(1, SECOND).burst(1).build().unwrap();
    limiter.acquire(1).await.unwrap();
    let mut waiters = Vec::new();
    for _ in 0..5 {
        let limiter = limiter.clone();
        waiters.push(tokio::spawn(async move {
            let out = limiter.acquire(1).await;
            (out, Instant::now())
        }));
    }
    sleep(ms(10)).await;
    assert_eq!(limiter.waiting(), 5);
    let closed_at = Instant::now();
    let closer = limiter.clone();
    at_once(closer.close()).await.unwrap();
    for waiter in waiters {
        let (out, at) = waiter.await.unwrap();
        let err = out.unwrap_err();
        assert!(err.is_closed(), "a waiter's error: {err}");
        assert_eq!(at, closed_at, "a waiter woke late");
    }
    assert_eq!(limiter.waiting(), 0);
    // Later calls fail the same way, even once tokens would be there again.
    sleep(ms(5000)).await;
    let err = at_once(limiter.acquire(1)).await.unwrap_err();
    assert!(err.is_closed(), "{err}");
    assert!(limiter.try_acquire(1).unwrap_err().is_closed());
    // Closing again does nothing.
    at_once(closer.close()).await.unwrap();
    limiter.close().await.unwrap();
    assert!(limiter.try_acquire(1).unwrap_err().is_closed());
}

/// khive's token bucket never consumed tokens after a wait: waiters released together
/// all went through. Here the bucket is drained, time passes, and 50 waiters arrive at
/// once: they are admitted one interval apart, `rate` per period.
#[tokio::test(start_paused = true)]
async fn waiters_released_together_after_a_drain_do_not_overshoot() {
    let limiter = RateLimiter::builder(10, SECOND).burst(1).build().unwrap();
    assert!(limiter.try_acquire(1).unwrap());
    assert!(!limiter.try_acquire(1).unwrap());
    sleep(ms(5000)).await;
    let t1 = Instant::now();
    let mut waiters = JoinSet::new();
    for _ in 0..50 {
        let limiter = limiter.clone();
        waiters.spawn(async move {
            limiter.acquire(1).await.unwrap();
            Instant::now()
        });
    }
    let mut at = waiters.join_all().await;
    at.sort();
    let mut per_period = [0; 5];
    for (k, t) in at.iter().enumerate() {
        assert_eq!(*t - t1, ms(100) * k as u32, "admission {k}");
        per_period[((*t - t1).as_millis() / 1000) as usize] += 1;
    }
    assert_eq!(per_period, [10; 5]);
}

/// The same with a burst: after the wait only the burst is available again, not the
/// whole time's worth of tokens.
#[tokio::test(start_paused = true)]
async fn waiters_released_together_get_the_burst_then_the_rate() {
    let limiter = RateLimiter::new(10, SECOND).unwrap(); // burst 10
    for _ in 0..10 {
        assert!(limiter.try_acquire(1).unwrap());
    }
    assert!(!limiter.try_acquire(1).unwrap());
    sleep(ms(5000)).await;
    let t1 = Instant::now();
    let mut waiters = JoinSet::new();
    for _ in 0..50 {
        let limiter = limiter.clone();
        waiters.spawn(async move {
            limiter.acquire(1).await.unwrap();
            Instant::now()
        });
    }
    let mut at = waiters.join_all().await;
    at.sort();
    for (k, t) in at.iter().enumerate() {
        let expected = if k < 10 { 0 } else { 100 * (k as u64 - 9) };
        assert_eq!(*t - t1, ms(expected), "admission {k}");
    }
    // After the first period, exactly `rate` per period.
    for p in 1..4_u64 {
        let from = t1 + SECOND * p as u32;
        let n = at
            .iter()
            .filter(|t| **t >= from && **t < from + SECOND)
            .count();
        assert_eq!(n, 10, "period {p}");
    }
}

#[tokio::test(start_paused = true)]
async fn pause_until_holds_try_acquire_until_the_instant() {
    let limiter = RateLimiter::builder(10, SECOND).burst(5).build().unwrap();
    let t0 = Instant::now();
    limiter.pause_until(t0 + SECOND);
    assert!(
        !limiter.try_acquire(1).unwrap(),
        "admitted during the pause"
    );
    sleep_until(t0 + ms(999)).await;
    assert!(
        !limiter.try_acquire(1).unwrap(),
        "admitted during the pause"
    );
    sleep_until(t0 + SECOND).await;
    assert!(
        limiter.try_acquire(1).unwrap(),
        "not admitted after the pause"
    );
}

#[tokio::test(start_paused = true)]
async fn pause_until_holds_waiters_including_one_already_waiting_for_its_token() {
    let limiter = RateLimiter::builder(10, SECOND).burst(1).build().unwrap();
    let t0 = Instant::now();
    limiter.acquire(1).await.unwrap();
    // This waiter's token comes at 100 ms; it is sleeping for it.
    let waiter = {
        let limiter = limiter.clone();
        tokio::spawn(async move {
            limiter.acquire(1).await.unwrap();
            Instant::now()
        })
    };
    sleep(ms(50)).await;
    limiter.pause_until(t0 + ms(1000));
    assert_eq!(waiter.await.unwrap() - t0, ms(1000));
    // A caller arriving later, after the pause, waits for the rate again.
    limiter.acquire(1).await.unwrap();
    assert_eq!(t0.elapsed(), ms(1100));
}

#[tokio::test(start_paused = true)]
async fn an_earlier_pause_does_not_shorten_a_later_one() {
    let limiter = RateLimiter::builder(10, SECOND).burst(5).build().unwrap();
    let t0 = Instant::now();
    limiter.pause_until(t0 + ms(2000));
    limiter.pause_until(t0 + ms(500));
    sleep_until(t0 + ms(1000)).await;
    assert!(!limiter.try_acquire(1).unwrap(), "the pause was shortened");
    limiter.acquire(1).await.unwrap();
    assert_eq!(t0.elapsed(), ms(2000));
}

#[tokio::test(start_paused = true)]
async fn weighted_acquires_take_their_tokens_worth_of_time() {
    // 10 per second (100 ms a token), burst 5.
    let limiter = RateLimiter::builder(10, SECOND).burst(5).build().unwrap();
    let t0 = Instant::now();
    let mut at = Vec::new();
    for _ in 0..5 {
        limiter.acquire(3).await.unwrap();
        at.push(t0.elapsed());
    }
    // 3 of the burst at once; 2 left, so the next 3 need one more token (100 ms);
    // after that every request waits for 3 tokens: 300 ms.
    assert_eq!(at, [0, 100, 400, 700, 1000].map(ms));
    // A single token after them costs 100 ms.
    limiter.acquire(1).await.unwrap();
    assert_eq!(t0.elapsed(), ms(1100));
}

#[tokio::test(start_paused = true)]
async fn clones_share_one_limiter() {
    let limiter = RateLimiter::builder(10, SECOND).burst(2).build().unwrap();
    let clone = limiter.clone();
    assert!(limiter.try_acquire(2).unwrap());
    assert!(
        !clone.try_acquire(1).unwrap(),
        "the clone has its own bucket"
    );
    let waiter = {
        let limiter = limiter.clone();
        tokio::spawn(async move { limiter.acquire(1).await })
    };
    sleep(ms(10)).await;
    assert_eq!(clone.waiting(), 1);
    clone.close().await.unwrap();
    assert!(waiter.await.unwrap().unwrap_err().is_closed());
    assert!(limiter.try_acquire(1).unwrap_err().is_closed());
}

fn assert_clear_config_error(err: &ResourceError, mentions: &str) {
    assert!(
        !err.is_closed(),
        "a configuration error reads as closed: {err}"
    );
    assert!(
        err.to_string().contains(mentions),
        "the error does not mention {mentions:?}: {err}"
    );
}

#[test]
fn a_rate_of_zero_a_zero_period_or_a_burst_of_zero_are_refused_when_built() {
    let cases = [
        (RateLimiter::new(0, SECOND).unwrap_err(), "rate"),
        (
            RateLimiter::builder(0, SECOND)
                .burst(5)
                .build()
                .unwrap_err(),
            "rate",
        ),
        (RateLimiter::new(10, Duration::ZERO).unwrap_err(), "period"),
        (
            RateLimiter::builder(10, SECOND)
                .burst(0)
                .build()
                .unwrap_err(),
            "burst",
        ),
    ];
    for (err, setting) in cases {
        assert_clear_config_error(&err, setting);
        let config = err
            .downcast_ref::<ConfigError>()
            .expect("a typed configuration error");
        assert_eq!(config.handle(), "RateLimiter");
        assert_eq!(config.setting(), setting);
    }
}

/// A runtime that wakes timers late (a busy one) must not let lateness stack up into a
/// burst: one task loops `acquire`, another arrives with `try_acquire` between clock
/// steps, and the clock moves `lateness` at a time, so every wake-up is up to that
/// late. A call is counted as on time up to a grace `g = max(0, 2 ms − (burst − 1)·T)`
/// after its token's due time: in every window `w`, at most `burst + floor((w + g) × rate)`
/// are admitted, two more than the strict bound at burst 1 and none more at burst 10.
#[tokio::test(start_paused = true)]
async fn late_wake_ups_never_admit_more_than_the_grace_over_the_schedule() {
    let rate = 1000;
    for burst in [1_u32, 10] {
        // floor((w + g) / T) - floor(w / T), at most: g is 2 ms at burst 1, 0 at 10.
        let owed = if burst == 1 { 2 } else { 0 };
        for lateness_us in [1500_u64, 2300, 3700, 5000, 7000] {
            let lateness = Duration::from_micros(lateness_us);
            let limiter = RateLimiter::builder(rate, SECOND)
                .burst(burst)
                .build()
                .unwrap();
            let admitted = Arc::new(Mutex::new(Vec::new()));
            let looping = {
                let (limiter, admitted) = (limiter.clone(), admitted.clone());
                tokio::spawn(async move {
                    for _ in 0..300 {
                        limiter.acquire(1).await.unwrap();
                        admitted.lock().unwrap().push(Instant::now());
                    }
                })
            };
            while !looping.is_finished() {
                tokio::time::advance(lateness).await;
                for _ in 0..4 {
                    tokio::task::yield_now().await;
                }
                if limiter.try_acquire(1).unwrap() {
                    admitted.lock().unwrap().push(Instant::now());
                }
            }
            looping.await.unwrap();
            let mut at = admitted.lock().unwrap().clone();
            at.sort();
            for i in 0..at.len() {
                for j in i..at.len() {
                    let w = at[j] - at[i];
                    let count = (j - i + 1) as u64;
                    let bound = window_bound(rate, SECOND, burst, w) + owed;
                    assert!(
                        count <= bound,
                        "burst {burst}, wake-ups up to {lateness:?} late: {count} admitted within {w:?}, more than {bound}"
                    );
                }
            }
            // The lateness is not made up beyond the grace: over the whole run, the
            // schedule is never more than the grace ahead of the configured rate.
            let span = at[at.len() - 1] - at[0];
            assert!(
                (at.len() as u64) <= window_bound(rate, SECOND, burst, span) + owed,
                "{} admitted in {span:?}",
                at.len()
            );
        }
    }
}

/// A call up to 2 ms after its token's due time is counted as on time: the schedule
/// goes on from the due time, so the lateness is made up (two tokens at once after a
/// call 1.9 ms late, at 1000/s). A call later than that finds the limiter idle: the
/// schedule starts again from it, and a burst stays `burst` tokens.
#[tokio::test(start_paused = true)]
async fn a_call_within_the_grace_keeps_the_schedule_and_a_later_one_finds_it_idle() {
    // `advance`, not `sleep`: a timer would round its instant up to the next tick.
    let start = Instant::now();
    let at = |us: u64| async move {
        let target = start + Duration::from_micros(us);
        tokio::time::advance(target - Instant::now()).await;
    };
    let limiter = RateLimiter::builder(1_000, SECOND)
        .burst(1)
        .build()
        .unwrap();
    assert!(limiter.try_acquire(1).unwrap());
    // Due at 1 ms, called at 1.5 ms: on time, so the next is due at 2 ms, not 2.5 ms.
    at(1_500).await;
    assert!(limiter.try_acquire(1).unwrap());
    assert!(!limiter.try_acquire(1).unwrap());
    at(2_000).await;
    assert!(limiter.try_acquire(1).unwrap());
    // Due at 3 ms, called at 4.9 ms: within the grace, the 3 ms and 4 ms tokens are
    // both there; the 5 ms one is not.
    at(4_900).await;
    assert!(limiter.try_acquire(1).unwrap());
    assert!(limiter.try_acquire(1).unwrap());
    assert!(!limiter.try_acquire(1).unwrap());
    // Due at 5 ms, called at 7.1 ms: past the grace, the limiter was idle. One token
    // (the burst), and the next is due 1 ms after this call.
    at(7_100).await;
    assert!(limiter.try_acquire(1).unwrap());
    assert!(!limiter.try_acquire(1).unwrap());
    at(8_000).await;
    assert!(!limiter.try_acquire(1).unwrap());
    at(8_100).await;
    assert!(limiter.try_acquire(1).unwrap());

    // At 100/s a token is 10 ms: a call 2 ms late still keeps the schedule, but never
    // makes two tokens at once.
    let slow = RateLimiter::builder(100, SECOND).burst(1).build().unwrap();
    assert!(slow.try_acquire(1).unwrap());
    at(20_100).await;
    assert!(slow.try_acquire(1).unwrap());
    assert!(!slow.try_acquire(1).unwrap());
    at(28_000).await;
    assert!(!slow.try_acquire(1).unwrap());
    at(28_100).await;
    assert!(slow.try_acquire(1).unwrap());
    assert!(!slow.try_acquire(1).unwrap());

    // A new limiter is idle: its first calls get the burst, not the burst and the
    // grace, however soon after it was built.
    let fresh = RateLimiter::builder(1_000, SECOND)
        .burst(1)
        .build()
        .unwrap();
    tokio::time::advance(Duration::from_micros(1_900)).await;
    assert!(fresh.try_acquire(1).unwrap());
    assert!(!fresh.try_acquire(1).unwrap());
    // A burst of 10 absorbs lateness by itself: no grace, so a call 12 ms after the
    // burst was spent finds the limiter idle and gets 10 tokens, not 12.
    let ten = RateLimiter::builder(1_000, SECOND)
        .burst(10)
        .build()
        .unwrap();
    assert!(ten.try_acquire(10).unwrap());
    tokio::time::advance(ms(12)).await;
    let mut taken = 0;
    while ten.try_acquire(1).unwrap() {
        taken += 1;
    }
    assert_eq!(taken, 10);
}

/// The timer fires a whole tick late for a deadline between ticks; a limiter created
/// 0.4 ms after a tick has all its ideal times between ticks. It catches up the lost
/// time (so it keeps its rate), which can put two admissions at one instant: never more
/// than one token ahead of the ideal schedule.
#[tokio::test(start_paused = true)]
async fn a_limiter_started_off_the_timer_grid_stays_within_one_token_of_the_ideal_schedule() {
    tokio::time::advance(Duration::from_micros(400)).await;
    let limiter = RateLimiter::builder(1_000, SECOND)
        .burst(1)
        .build()
        .unwrap();
    let run = contend(&limiter, 4, 400, |_| 1).await;
    let mut times: Vec<Instant> = run.admitted.iter().map(|a| a.at).collect();
    times.sort();
    let first = times[0];
    for (i, t) in times.iter().enumerate() {
        // By the ideal schedule, at most 1 + elapsed·rate tokens by now.
        let ideal = 1 + (*t - first).as_micros() / 1_000;
        assert!(
            (i as u128) <= ideal,
            "admission {i} at {:?} is ahead",
            *t - first
        );
    }
    // And the rate holds: 400 admissions take about 400 ms, not 800.
    let span = *times.last().unwrap() - first;
    assert!(span <= ms(410), "{span:?}");
}

/// On a runtime without timers, a caller that would have to wait is told why instead of
/// panicking in its task; a caller admitted at once needs no timer.
#[test]
fn a_waiter_on_a_runtime_without_timers_gets_an_error_not_a_panic() {
    let runtime = resource_tests::runtime_without_timers();
    runtime.block_on(async {
        let limiter = RateLimiter::builder(1, SECOND).burst(1).build().unwrap();
        limiter.acquire(1).await.unwrap();
        let err = limiter.acquire(1).await.unwrap_err();
        assert!(err.to_string().contains("enable_time"), "{err}");
        assert!(!err.is_closed());
        assert_eq!(limiter.waiting(), 0);
    });
}

/// The calls a limiter of either kind answers (the local one here; the one in Redis in
/// tests/redis_*.rs): `enter` makes a local limiter ready at once, and
/// `try_acquire_async` is its `try_acquire`, queue and burst included.
#[tokio::test(start_paused = true)]
async fn the_calls_shared_with_a_limiter_in_redis_answer_at_once_for_a_local_one() {
    let limiter = RateLimiter::builder(10, SECOND).burst(2).build().unwrap();
    at_once(limiter.enter()).await.unwrap();
    let mut entered = limiter.clone();
    at_once(resource_runtime::AsyncResource::enter(&mut entered))
        .await
        .unwrap();
    assert!(at_once(limiter.try_acquire_async(2)).await.unwrap());
    assert!(!at_once(limiter.try_acquire_async(1)).await.unwrap());
    let err = at_once(limiter.try_acquire_async(3)).await.unwrap_err();
    assert!(matches!(
        err.downcast_ref::<LimiterError>(),
        Some(LimiterError::ExceedsBurst {
            requested: 3,
            burst: 2
        })
    ));
    // A waiter keeps its turn: after its token's time, `try_acquire_async` does not
    // take the token from it.
    let waiter = {
        let limiter = limiter.clone();
        tokio::spawn(async move { limiter.acquire(1).await })
    };
    sleep(ms(10)).await;
    assert_eq!(limiter.waiting(), 1);
    assert!(!at_once(limiter.try_acquire_async(1)).await.unwrap());
    waiter.await.unwrap().unwrap();
    limiter.close().await.unwrap();
    assert!(
        at_once(limiter.try_acquire_async(1))
            .await
            .unwrap_err()
            .is_closed()
    );
}

/// `is_unavailable` is true only for a shared schedule's store that did not answer,
/// wherever the failure sits in an aggregated error; nothing a local limiter says is.
#[tokio::test(start_paused = true)]
async fn only_an_unreachable_store_is_unavailable() {
    let limiter = RateLimiter::builder(10, SECOND).burst(1).build().unwrap();
    let exceeds = limiter.acquire(2).await.unwrap_err();
    assert!(!exceeds.is_unavailable());
    limiter.close().await.unwrap();
    let closed = limiter.acquire(1).await.unwrap_err();
    assert!(closed.is_closed() && !closed.is_unavailable());

    let unavailable = LimiterError::Unavailable {
        prefix: "myorg:openai".into(),
        url: "redis://:***@10.0.0.5:6379/".into(),
        reason: "connection refused".into(),
    };
    assert!(unavailable.is_unavailable());
    assert!(
        !LimiterError::Store {
            prefix: "myorg:openai".into(),
            url: "redis://10.0.0.5:6379/".into(),
            reason: "WRONGTYPE".into(),
        }
        .is_unavailable()
    );
    assert!(!LimiterError::NoTimer.is_unavailable());
    let err = closed.combine(ResourceError::other(unavailable));
    assert!(err.is_unavailable() && err.is_closed());
    assert_eq!(
        err.failures().nth(1).unwrap().to_string(),
        "RateLimiter `myorg:openai`: Redis at redis://:***@10.0.0.5:6379/ is unavailable: connection refused"
    );
}

#[tokio::test(start_paused = true)]
async fn a_settle_gives_back_to_the_waiting_head_at_once_and_a_charge_delays_everyone() {
    // 100 tokens a second: one every 10 ms.
    let limiter = RateLimiter::builder(100, Duration::from_secs(1))
        .burst(100)
        .build()
        .unwrap();
    let start = Instant::now();
    limiter.acquire(80).await.unwrap();
    let waiter = tokio::spawn({
        let limiter = limiter.clone();
        async move {
            limiter.acquire(60).await.unwrap();
            start.elapsed()
        }
    });
    // 20 left: the waiter needs 40 more, 400 ms away, until 50 of the 80 come back.
    sleep(ms(100)).await;
    assert_eq!(limiter.waiting(), 1);
    limiter.settle(80, 30);
    assert_eq!(
        waiter.await.unwrap(),
        ms(100),
        "admitted when the tokens came back"
    );

    // The schedule is 80 tokens ahead of now (30 + 60 taken, 10 refilled in 100 ms);
    // 50 charged after the fact make it 130: a full burst is 1.3 s away, not 0.8 s.
    let charged = Instant::now();
    limiter.settle(0, 50);
    limiter.acquire(100).await.unwrap();
    assert_eq!(charged.elapsed(), ms(1_300));
    // A closed limiter ignores a settle.
    limiter.close().await.unwrap();
    limiter.settle(0, 1_000);
}
