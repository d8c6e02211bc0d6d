//! `RateLimitedExecutor` (docs/design.md, "Runtime types"): an `AsyncExecutor` under a
//! `RateLimiter`. Tasks start at the limiter's rate and never above the executor's
//! concurrency; `execute_weighted` takes more tokens; close covers callers waiting on
//! the limiter and drains running tasks; it works through the `Executor` protocol and
//! as a field of a user's derived resource.
//!
//! Time is tokio's paused clock: durations are virtual and exact.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use resource_runtime::{
    AsyncResource, ResourceError,
    executor::{AsyncExecutor, Executor, ExecutorError, RateLimitedExecutor},
    limiter::RateLimiter,
};
use resource_tests::{Gauge, Log, Probe, at_once, counter, get};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, sleep};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

const SECOND: Duration = Duration::from_secs(1);
const HOUR: Duration = Duration::from_secs(3600);

/// 10 tokens per second at burst 1 (one every 100 ms), over `max_concurrency` slots.
fn ten_per_second(max_concurrency: usize) -> RateLimitedExecutor {
    RateLimitedExecutor::new(
        RateLimiter::builder(10, SECOND).burst(1).build().unwrap(),
        AsyncExecutor::new(max_concurrency).unwrap(),
    )
}

/// Starts `n` callers at once, each running a task that records its start instant,
/// holds `gauge` and runs for `work`; returns the sorted start instants.
async fn start_many(
    executor: &RateLimitedExecutor,
    n: usize,
    work: Duration,
    gauge: &Gauge,
) -> Vec<Instant> {
    let starts = Arc::new(Mutex::new(Vec::new()));
    let mut callers = JoinSet::new();
    for i in 0..n {
        let (executor, starts, gauge) = (executor.clone(), starts.clone(), gauge.clone());
        callers.spawn(async move {
            let out = executor
                .execute(async move {
                    let _inside = gauge.enter();
                    starts.lock().unwrap().push(Instant::now());
                    sleep(work).await;
                    i
                })
                .await;
            assert_eq!(out.unwrap(), i);
        });
    }
    while let Some(done) = callers.join_next().await {
        done.unwrap();
    }
    let mut starts = starts.lock().unwrap().clone();
    starts.sort();
    assert_eq!(starts.len(), n);
    starts
}

/// Starts a caller whose task sleeps for `work`, then counts one in `done`.
fn spawn_counted(
    executor: &RateLimitedExecutor,
    work: Duration,
    done: &Arc<AtomicUsize>,
) -> JoinHandle<Result<(), ResourceError>> {
    let (executor, done) = (executor.clone(), done.clone());
    tokio::spawn(async move {
        executor
            .execute(async move {
                sleep(work).await;
                done.fetch_add(1, Ordering::SeqCst);
            })
            .await
    })
}

#[tokio::test(start_paused = true)]
async fn short_tasks_start_at_the_limiters_rate() {
    let executor = ten_per_second(8);
    let gauge = Gauge::new();
    let t0 = Instant::now();
    let starts = start_many(&executor, 20, ms(10), &gauge).await;
    for (k, at) in starts.iter().enumerate() {
        assert_eq!(*at - t0, ms(100) * k as u32, "start {k}");
    }
    // Short tasks never overlap at this rate.
    assert_eq!(gauge.max(), 1);
}

#[tokio::test(start_paused = true)]
async fn long_tasks_never_run_above_the_executors_concurrency() {
    let executor = ten_per_second(2);
    let gauge = Gauge::new();
    let starts = start_many(&executor, 12, ms(350), &gauge).await;
    assert_eq!(gauge.max(), 2, "most tasks running at once");
    // And still never two starts closer than the rate allows.
    for pair in starts.windows(2) {
        assert!(
            pair[1] - pair[0] >= ms(100),
            "two starts {:?} apart",
            pair[1] - pair[0]
        );
    }
    assert_eq!(executor.executor().in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn execute_weighted_takes_its_tokens_worth_of_time() {
    // 100 ms a token, burst 5.
    let executor = RateLimitedExecutor::new(
        RateLimiter::builder(10, SECOND).burst(5).build().unwrap(),
        AsyncExecutor::new(4).unwrap(),
    );
    let t0 = Instant::now();
    let mut starts = Vec::new();
    for i in 0..5_u32 {
        let out = executor
            .execute_weighted(3, async move { (i, Instant::now()) })
            .await
            .unwrap();
        assert_eq!(out.0, i);
        starts.push(out.1 - t0);
    }
    assert_eq!(starts, [0, 100, 400, 700, 1000].map(ms));
    // One more token after them: 100 ms.
    executor.execute(async {}).await.unwrap();
    assert_eq!(t0.elapsed(), ms(1100));

    // More than the burst is an error at once, and runs nothing.
    let ran = counter();
    let r = ran.clone();
    let err = at_once(executor.execute_weighted(6, async move {
        r.fetch_add(1, Ordering::SeqCst);
    }))
    .await
    .unwrap_err();
    assert!(!err.is_closed());
    assert!(err.to_string().contains("burst"), "{err}");
    assert_eq!(get(&ran), 0);
}

#[tokio::test(start_paused = true)]
async fn close_wakes_callers_waiting_on_the_limiter_and_drains_running_tasks() {
    let limiter = RateLimiter::builder(1, SECOND).burst(1).build().unwrap();
    // A slot for the running task and one for each waiter: a caller takes its slot
    // before its token, so all four wait on the limiter, holding their slots.
    let executor = RateLimitedExecutor::new(
        limiter,
        AsyncExecutor::builder(5)
            .shutdown_timeout(ms(10_000))
            .build()
            .unwrap(),
    );
    let ran = Log::new();
    let first = {
        let (executor, ran) = (executor.clone(), ran.clone());
        tokio::spawn(async move {
            executor
                .execute(async move {
                    sleep(ms(500)).await;
                    ran.push("first");
                    "first"
                })
                .await
        })
    };
    sleep(ms(1)).await;
    // The next token comes at 1 s: these callers wait on the limiter.
    let mut waiters = Vec::new();
    for i in 0..4 {
        let (executor, ran) = (executor.clone(), ran.clone());
        waiters.push(tokio::spawn(async move {
            let out = executor
                .execute(async move {
                    ran.push(format!("waiter {i}"));
                })
                .await;
            (out, Instant::now())
        }));
    }
    sleep(ms(1)).await;
    assert_eq!(executor.limiter().waiting(), 4);
    assert_eq!(executor.executor().in_flight(), 1);

    let closed_at = Instant::now();
    executor.close().await.unwrap();
    // The close waited for the running task (498 ms left), and only for it.
    assert_eq!(closed_at.elapsed(), ms(498));
    assert_eq!(ran.entries(), ["first"]);
    assert_eq!(first.await.unwrap().unwrap(), "first");
    for waiter in waiters {
        let (out, at) = waiter.await.unwrap();
        let err = out.unwrap_err();
        assert!(err.is_closed(), "a limiter waiter's error: {err}");
        assert_eq!(at, closed_at, "a limiter waiter was not woken by the close");
    }
    assert_eq!(executor.limiter().waiting(), 0);

    // Everything refuses work afterwards, at once.
    assert!(
        at_once(executor.execute(async {}))
            .await
            .unwrap_err()
            .is_closed()
    );
    assert!(
        at_once(executor.execute_weighted(1, async {}))
            .await
            .unwrap_err()
            .is_closed()
    );
    assert!(executor.limiter().try_acquire(1).unwrap_err().is_closed());
    assert!(
        at_once(executor.executor().execute(async {}))
            .await
            .unwrap_err()
            .is_closed()
    );
    sleep(ms(5000)).await;
    assert_eq!(ran.entries(), ["first"], "a closed caller's task ran");
}

#[tokio::test(start_paused = true)]
async fn close_past_the_deadline_aborts_running_tasks_and_wakes_limiter_waiters() {
    let executor = RateLimitedExecutor::new(
        RateLimiter::builder(1, SECOND).burst(1).build().unwrap(),
        AsyncExecutor::builder(4)
            .shutdown_timeout(ms(100))
            .build()
            .unwrap(),
    );
    let woke = counter();
    let running = spawn_counted(&executor, HOUR, &woke);
    sleep(ms(1)).await;
    let waiter = {
        let executor = executor.clone();
        tokio::spawn(async move { executor.execute(async {}).await })
    };
    sleep(ms(1)).await;
    let start = Instant::now();
    let err = executor.close().await.unwrap_err();
    let elapsed = start.elapsed();
    assert!(
        elapsed >= ms(100) && elapsed <= ms(101),
        "close took {elapsed:?}"
    );
    assert!(
        err.failures()
            .filter_map(|f| f.downcast_ref::<ExecutorError>())
            .any(|e| matches!(e, ExecutorError::Aborted { count: 1, .. })),
        "one task was aborted: {err}"
    );
    assert!(running.await.unwrap().unwrap_err().is_closed());
    assert!(waiter.await.unwrap().unwrap_err().is_closed());
    sleep(2 * HOUR).await;
    assert_eq!(get(&woke), 0);
}

/// Generic code written against the protocol alone.
/// The executor's own close (the limiter stays open) waits for a caller that holds its
/// slot while it waits for its tokens: that caller is counted as waiting until its task
/// is counted as running, so the shutdown lets it in and does not return before its
/// task ran.
#[tokio::test(start_paused = true)]
async fn closing_the_executor_waits_for_a_caller_between_its_slot_and_its_task() {
    let executor = ten_per_second(1);
    // The burst's one token goes to this call; the next caller waits 100 ms for its own.
    executor.execute(async {}).await.unwrap();
    let ran = counter();
    let caller = spawn_counted(&executor, ms(50), &ran);
    // The caller takes the one slot and waits for its token in it.
    tokio::task::yield_now().await;
    assert_eq!(executor.executor().waiting(), 1);
    let start = Instant::now();
    executor.executor().close().await.unwrap();
    assert_eq!(
        get(&ran),
        1,
        "the close returned before the caller's task ran"
    );
    // 100 ms for the token, then 50 ms of the task.
    assert_eq!(start.elapsed(), ms(150));
    caller.await.unwrap().unwrap();
    assert!(executor.execute(async {}).await.unwrap_err().is_closed());
}

async fn run_three<E: Executor>(executor: &E) -> Result<Vec<Instant>, ResourceError> {
    let mut at = Vec::new();
    for _ in 0..3 {
        at.push(executor.execute(async { Instant::now() }).await?);
    }
    Ok(at)
}

async fn close_generic<E: Executor>(executor: &mut E) -> Result<(), ResourceError> {
    executor.close().await
}

#[tokio::test(start_paused = true)]
async fn usable_through_the_executor_trait() {
    let mut executor = ten_per_second(2);
    let t0 = Instant::now();
    let at = run_three(&executor).await.unwrap();
    let at: Vec<Duration> = at.into_iter().map(|t| t - t0).collect();
    assert_eq!(at, [0, 100, 200].map(ms), "the limiter was bypassed");
    // The protocol's futures are `Send`.
    let e = executor.clone();
    assert_eq!(
        tokio::spawn(async move { run_three(&e).await.map(|v| v.len()) })
            .await
            .unwrap()
            .unwrap(),
        3
    );
    close_generic(&mut executor).await.unwrap();
    assert!(run_three(&executor).await.unwrap_err().is_closed());
}

/// A user's provider holding a rate-limited executor as a field.
#[derive(Debug, AsyncResource)]
struct Provider {
    #[resource]
    executor: RateLimitedExecutor,
    #[resource]
    log: Probe,
    #[resource(skip)]
    name: String,
}

#[tokio::test(start_paused = true)]
async fn a_field_of_a_derived_resource_closes_with_it() {
    let log = Log::new();
    let mut provider = Provider {
        executor: ten_per_second(2),
        log: log.probe("log"),
        name: "provider".into(),
    };
    provider.enter().await.unwrap();
    assert_eq!(provider.name, "provider");
    assert_eq!(provider.executor.execute(async { 1 }).await.unwrap(), 1);

    // A handle kept elsewhere: one task running, one caller waiting on the limiter.
    let handle = provider.executor.clone();
    let done = counter();
    let running = spawn_counted(&handle, ms(300), &done);
    sleep(ms(150)).await; // the running task got the token of 100 ms
    // The next token comes at 200 ms: this caller waits on the limiter.
    let waiter = {
        let (handle, done) = (handle.clone(), done.clone());
        tokio::spawn(async move {
            handle
                .execute(async move {
                    done.fetch_add(10, Ordering::SeqCst);
                })
                .await
        })
    };
    sleep(ms(1)).await;
    assert_eq!(handle.limiter().waiting(), 1);
    assert_eq!(handle.executor().in_flight(), 1);

    let start = Instant::now();
    provider.close().await.unwrap();
    assert_eq!(log.entries(), ["enter log", "close log"]);
    // The running task (until 400 ms) was drained before the close returned.
    assert_eq!(start.elapsed(), ms(249));
    assert_eq!(get(&done), 1);
    running.await.unwrap().unwrap();
    assert!(waiter.await.unwrap().unwrap_err().is_closed());
    sleep(SECOND).await;
    assert_eq!(
        get(&done),
        1,
        "the limiter waiter's task ran after the close"
    );
    assert!(
        at_once(handle.execute(async {}))
            .await
            .unwrap_err()
            .is_closed()
    );
    assert!(
        at_once(provider.executor.execute(async {}))
            .await
            .unwrap_err()
            .is_closed()
    );
}

/// Callers take their slot before their tokens: while the executor is saturated, a task
/// starts the moment its tokens come, so starts never bunch up when slots free.
#[tokio::test(start_paused = true)]
async fn starts_follow_the_limiter_while_the_executor_is_saturated() {
    for (burst, slots) in [(1_u32, 2_usize), (2, 3), (1, 8)] {
        let executor = RateLimitedExecutor::new(
            RateLimiter::builder(10, SECOND)
                .burst(burst)
                .build()
                .unwrap(),
            AsyncExecutor::new(slots).unwrap(),
        );
        let gauge = Gauge::new();
        // Tasks longer than the token interval, and not a multiple of it.
        let starts = start_many(&executor, 24, ms(350), &gauge).await;
        assert!(gauge.max() <= slots);
        for i in 0..starts.len() {
            for j in i..starts.len() {
                let w = starts[j] - starts[i];
                let count = (j - i + 1) as u128;
                let bound = u128::from(burst) + 10 * w.as_nanos() / SECOND.as_nanos();
                assert!(
                    count <= bound,
                    "burst {burst}, {slots} slots: {count} starts within {w:?}, more than {bound}"
                );
            }
        }
        executor.close().await.unwrap();
    }
}

/// Formatting the executor formats its limiter: neither holds a lock the other takes.
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
