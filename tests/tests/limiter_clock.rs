//! A `RateLimiter` on the CPU's counter (`LimiterClock::Quanta`, the `quanta` feature)
//! instead of tokio's clock: the schedule reads the counter, while pauses and a
//! waiter's sleep stay on tokio's clock.
//!
//! The tests on tokio's paused clock show what the counter does not follow; the one on
//! the real clock shows waiters admitted in order. None asserts a wall-clock duration.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use resource_runtime::limiter::{LimiterClock, RateLimiter};

const HOUR: Duration = Duration::from_secs(3600);

fn on(clock: LimiterClock, rate: u32, period: Duration, burst: u32) -> RateLimiter {
    RateLimiter::builder(rate, period)
        .burst(burst)
        .clock(clock)
        .build()
        .expect("a valid limiter")
}

#[tokio::test(start_paused = true)]
async fn the_counter_does_not_follow_tokio_pause_and_tokios_clock_does() {
    let counter = on(LimiterClock::Quanta, 1, HOUR, 1);
    let tokio_clock = on(LimiterClock::Tokio, 1, HOUR, 1);
    // Entering waits for the counter's calibration: from here on the schedule reads
    // it.
    counter.enter().await.unwrap();
    tokio_clock.enter().await.unwrap();
    assert_eq!(counter.clock(), LimiterClock::Quanta);
    assert_eq!(tokio_clock.clock(), LimiterClock::Tokio);
    assert!(
        format!("{counter:?}").contains(r#"clock: "quanta""#),
        "{counter:?}"
    );
    assert!(format!("{tokio_clock:?}").contains(r#"clock: "tokio""#));

    for limiter in [&counter, &tokio_clock] {
        assert!(limiter.try_acquire(1).unwrap());
        assert!(!limiter.try_acquire(1).unwrap());
    }
    // Two hours of tokio's paused clock: the token an hour is back on tokio's clock,
    // not on the counter, which moved by the test's few real microseconds.
    tokio::time::advance(2 * HOUR).await;
    assert!(tokio_clock.try_acquire(1).unwrap());
    assert!(!counter.try_acquire(1).unwrap());
}

#[tokio::test(start_paused = true)]
async fn a_pause_on_the_counter_is_held_on_tokios_clock() {
    let limiter = on(LimiterClock::Quanta, 10, HOUR, 10);
    limiter.enter().await.unwrap();
    let start = tokio::time::Instant::now();
    limiter.pause_until(start + HOUR);
    assert!(!limiter.try_acquire(1).unwrap());
    // A waiter sleeps on tokio's clock until the pause ends, and is admitted then: the
    // burst is whole on the counter.
    let waiter = tokio::spawn({
        let limiter = limiter.clone();
        async move {
            limiter.acquire(1).await.unwrap();
            tokio::time::Instant::now()
        }
    });
    let admitted = waiter.await.unwrap();
    assert_eq!(admitted - start, HOUR);
    assert!(limiter.try_acquire(9).unwrap());
    assert!(!limiter.try_acquire(1).unwrap());
}

#[tokio::test(start_paused = true)]
async fn a_request_past_the_burst_or_a_closed_limiter_fail_the_same_on_the_counter() {
    let limiter = on(LimiterClock::Quanta, 5, HOUR, 2);
    assert!(limiter.try_acquire(3).is_err());
    assert!(limiter.acquire(3).await.is_err());
    limiter.close().await.unwrap();
    assert!(limiter.try_acquire(1).unwrap_err().is_closed());
    assert!(limiter.acquire(1).await.unwrap_err().is_closed());
}

/// Waiters on the real clock: each sleeps on tokio's timer for a wait computed on the
/// counter, and they are admitted one by one, in the order they came.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_on_the_counter_are_admitted_in_order_on_the_real_clock() {
    // 50 a second, burst 1: a token every 20 ms.
    let limiter = on(LimiterClock::Quanta, 50, Duration::from_secs(1), 1);
    limiter.enter().await.unwrap();
    assert!(limiter.try_acquire(1).unwrap());
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut waiters = Vec::new();
    for i in 0..5 {
        let (waiter, admitted) = (limiter.clone(), Arc::clone(&order));
        waiters.push(tokio::spawn(async move {
            waiter.acquire(1).await.unwrap();
            admitted.lock().unwrap().push(i);
        }));
        // The next one comes only once this one is in the queue (or, on a slow
        // machine, already admitted).
        while limiter.waiting() + order.lock().unwrap().len() < i + 1 {
            tokio::task::yield_now().await;
        }
    }
    // A guard against a hang, not a measure: the five need 100 ms.
    tokio::time::timeout(Duration::from_secs(60), async {
        for waiter in waiters {
            waiter.await.unwrap();
        }
    })
    .await
    .expect("the waiters on the counter were never admitted");
    assert_eq!(*order.lock().unwrap(), [0, 1, 2, 3, 4]);
    assert_eq!(limiter.waiting(), 0);
}
