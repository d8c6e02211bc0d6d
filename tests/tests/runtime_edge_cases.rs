//! Edge cases of the executor and the limiter found by review.

use std::future::Future;
use std::task::{Context, Waker};
use std::time::Duration;

use resource_runtime::{AsyncExecutor, AsyncResource, RateLimitedExecutor, RateLimiter};

#[tokio::test(start_paused = true)]
async fn a_close_past_its_deadline_does_not_wait_for_a_waiter_nobody_polls() {
    let mut executor = AsyncExecutor::new(1).with_shutdown_timeout(Duration::from_millis(100));
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
    let limiter = RateLimiter::new(10, Duration::from_secs(1));
    let shown = format!("{limiter:?}");
    assert!(shown.contains("waiting: 0"), "{shown}");
    let executor = RateLimitedExecutor::new(limiter.clone(), AsyncExecutor::new(2));
    let shown = format!("{executor:?}");
    assert!(shown.contains("RateLimiter"), "{shown}");
    // The limiter still works afterwards.
    assert!(limiter.try_acquire(1).unwrap());
}
