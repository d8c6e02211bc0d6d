//! Edge cases of the executor and the limiter found by review.

use std::future::Future;
use std::task::{Context, Waker};
use std::time::Duration;

use resource_runtime::{
    executor::{AsyncExecutor, RateLimitedExecutor},
    limiter::RateLimiter,
};

#[tokio::test(start_paused = true)]
async fn a_close_past_its_deadline_does_not_wait_for_a_waiter_nobody_polls() {
    let executor = AsyncExecutor::builder(1)
        .shutdown_timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let _running = executor.spawn(std::future::pending::<()>()).await.unwrap();
    // A caller that started waiting for a slot, then was never polled again.
    let other = executor.clone();
    let mut stuck = Box::pin(async move { other.spawn(async {}).await });
    assert!(
        stuck
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
            .is_pending()
    );
    assert_eq!(executor.waiting(), 1);
    let started = tokio::time::Instant::now();
    let error = executor.close().await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    // The running task and the waiter.
    assert!(error.to_string().contains(": 2 task(s)"), "{error}");
    drop(stuck);
}

#[tokio::test]
async fn debug_of_a_limiter_and_a_rate_limited_executor_does_not_deadlock() {
    let limiter = RateLimiter::new(10, Duration::from_secs(1)).unwrap();
    let shown = format!("{limiter:?}");
    assert!(shown.contains("waiting: 0"), "{shown}");
    let executor = RateLimitedExecutor::new(limiter.clone(), AsyncExecutor::new(2).unwrap());
    let shown = format!("{executor:?}");
    assert!(shown.contains("RateLimiter"), "{shown}");
    // The limiter still works afterwards.
    assert!(limiter.try_acquire(1).unwrap());
}

/// Admission instants of `n` acquires by 4 looping waiters.
async fn admissions(limiter: &RateLimiter, n: usize) -> Vec<tokio::time::Instant> {
    let times = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let waiters: Vec<_> = (0..4)
        .map(|_| {
            let (limiter, times) = (limiter.clone(), times.clone());
            tokio::spawn(async move {
                loop {
                    if limiter.acquire(1).await.is_err() {
                        return;
                    }
                    let mut times = times.lock().unwrap();
                    if times.len() >= n {
                        return;
                    }
                    times.push(tokio::time::Instant::now());
                }
            })
        })
        .collect();
    for waiter in waiters {
        waiter.await.unwrap();
    }
    let mut times = times.lock().unwrap().clone();
    times.sort();
    times
}

#[tokio::test(start_paused = true)]
async fn a_limiter_started_off_the_timer_grid_stays_within_one_token_of_the_ideal_schedule() {
    // The timer fires a whole tick late for a deadline between ticks; a limiter created
    // 0.4 ms after a tick has all its ideal times between ticks. It catches up the
    // lost time (so it keeps its rate), which can put two admissions at one instant:
    // never more than one token ahead of the ideal schedule.
    tokio::time::advance(Duration::from_micros(400)).await;
    let limiter = RateLimiter::builder(1_000, Duration::from_secs(1))
        .burst(1)
        .build()
        .unwrap();
    let times = admissions(&limiter, 400).await;
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
    assert!(span <= Duration::from_millis(410), "{span:?}");
}
