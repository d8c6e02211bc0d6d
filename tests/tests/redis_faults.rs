//! `RateLimiter` with its schedule in Redis, when Redis fails: unreachable at enter,
//! hanging, killed mid-run, back without its data; the configured fallback.
//!
//! Each test starts, stops, suspends and restarts a real `redis-server` of its own
//! (`resource_tests::redis_server`), on the real clock. Run with
//! `cargo test -p resource-tests --features redis --test 'redis_*'`.
#![cfg(feature = "redis")]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use resource_runtime::limiter::{Fallback, LimiterError, RateLimiter, RedisConfig};
use resource_tests::Events;
use resource_tests::redis_server::RedisServer;
use resource_tests::server::TestServer;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, timeout};

/// How long a step promised to end "within its timeout" may take before the test calls
/// it a hang: far above every configured timeout, so a loaded machine cannot fail the
/// test, while a step that waits forever still does.
const HANG_GUARD: Duration = Duration::from_secs(10);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A limiter of `rate` per second with `burst` under `prefix`, with `config`'s other
/// settings; not entered.
fn limiter(config: RedisConfig, rate: u32, burst: u32) -> RateLimiter {
    RateLimiter::builder(rate, Duration::from_secs(1))
        .burst(burst)
        .redis(config)
        .build()
        .unwrap()
}

/// The most admissions in any closed window `[t, t + w]`; `times` sorted.
fn most_in_window(times: &[Instant], w: Duration) -> u64 {
    let mut most = 0;
    let mut end = 0;
    for start in 0..times.len() {
        while end < times.len() && times[end] <= times[start] + w {
            end += 1;
        }
        most = most.max((end - start) as u64);
    }
    most
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_redis_fails_enter_naming_the_url_without_its_password() {
    // Bound and not listening for the whole test: refused, and no other test's
    // server can be given the port meanwhile.
    let reserved = TestServer::reserve();
    let port = reserved.addr().port();
    let config = RedisConfig::new(
        format!("redis://reader:s3cret@127.0.0.1:{port}/"),
        "unreachable",
    )
    .connect_timeout(ms(1000));
    let limiter = limiter(config, 10, 1);
    let start = Instant::now();
    let err = limiter.enter().await.unwrap_err();
    assert!(start.elapsed() < HANG_GUARD, "took {:?}", start.elapsed());
    assert!(err.is_unavailable(), "{err}");
    let text = err.to_string();
    assert!(
        text.contains(&format!("redis://reader:***@127.0.0.1:{port}/")),
        "{text}"
    );
    assert!(!text.contains("s3cret"), "{text}");
    assert!(
        matches!(err.downcast_ref::<LimiterError>(), Some(LimiterError::Unavailable { url, .. }) if !url.contains("s3cret"))
    );
    // A failed enter left nothing open: the limiter is still not entered, and may be
    // entered again.
    assert!(limiter.acquire(1).await.unwrap_err().is_not_entered());
    let server = RedisServer::start();
    let config = RedisConfig::new(server.url(), "unreachable");
    let later = self::limiter(config, 10, 1);
    later.enter().await.unwrap();
    later.acquire(1).await.unwrap();
    later.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_redis_fails_enter_within_the_connect_timeout() {
    let server = RedisServer::start();
    // It accepts connections and answers nothing.
    server.freeze();
    let config = RedisConfig::new(server.url(), "hanging").connect_timeout(ms(300));
    let limiter = limiter(config, 10, 1);
    let start = Instant::now();
    let err = limiter.enter().await.unwrap_err();
    let took = start.elapsed();
    assert!(took >= ms(290) && took < HANG_GUARD, "took {took:?}");
    assert!(err.is_unavailable(), "{err}");
    assert!(err.to_string().contains("connect timeout"), "{err}");
    server.thaw();
    limiter.enter().await.unwrap();
    limiter.acquire(1).await.unwrap();
    limiter.close().await.unwrap();
}

/// `waiters` tasks acquire one token at a time from `limiter` until one fails; each
/// returns its error and when it came.
fn until_failure(
    limiter: &RateLimiter,
    waiters: usize,
) -> JoinSet<(resource_runtime::ResourceError, Instant)> {
    let mut tasks = JoinSet::new();
    for _ in 0..waiters {
        let limiter = limiter.clone();
        tasks.spawn(async move {
            loop {
                if let Err(err) = limiter.acquire(1).await {
                    return (err, Instant::now());
                }
            }
        });
    }
    tasks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_killed_mid_run_fails_every_waiter_and_one_back_serves_again() {
    let mut server = RedisServer::start();
    let config = RedisConfig::new(server.url(), "killed").timeout(ms(300));
    let limiter = limiter(config, 50, 1);
    limiter.enter().await.unwrap();
    let mut waiters = until_failure(&limiter, 16);
    sleep(ms(300)).await;
    server.stop();
    let stopped = Instant::now();
    // Every waiter is told, none hangs: the one booked sleeps out its 20 ms, the one
    // whose turn it is learns at once that the connection is gone, and everyone
    // queued behind it fails with it.
    let all = timeout(HANG_GUARD, async {
        let mut failed = 0;
        while let Some(done) = waiters.join_next().await {
            let (err, at) = done.unwrap();
            assert!(err.is_unavailable(), "{err}");
            // Within the timeout: a hang guard far above it, so a loaded machine
            // cannot fail the test while a waiter that waits forever does.
            assert!(
                at - stopped < HANG_GUARD,
                "failed {:?} after the stop",
                at - stopped
            );
            failed += 1;
        }
        failed
    })
    .await
    .expect("a waiter still waits 10 s after Redis was killed");
    assert_eq!(all, 16);
    assert_eq!(limiter.waiting(), 0);
    // While it is down, each call fails fast.
    let start = Instant::now();
    assert!(limiter.acquire(1).await.unwrap_err().is_unavailable());
    assert!(start.elapsed() < HANG_GUARD);

    // Back, empty: the same limiter goes on, without another enter.
    server.restart();
    timeout(HANG_GUARD, limiter.acquire(1))
        .await
        .expect("the first acquisition after the restart hung")
        .unwrap();
    limiter.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_redis_fails_every_waiter_within_the_timeout() {
    let server = RedisServer::start();
    let config = RedisConfig::new(server.url(), "frozen").timeout(ms(250));
    let limiter = limiter(config, 50, 1);
    limiter.enter().await.unwrap();
    let mut waiters = until_failure(&limiter, 8);
    sleep(ms(200)).await;
    server.freeze();
    let frozen = Instant::now();
    let all = timeout(HANG_GUARD, async {
        let mut failed = 0;
        while let Some(done) = waiters.join_next().await {
            let (err, at) = done.unwrap();
            assert!(err.is_unavailable(), "{err}");
            assert!(err.to_string().contains("timeout"), "{err}");
            // The booked waiter's 20 ms, then the head's timeout.
            assert!(
                at - frozen < HANG_GUARD,
                "failed {:?} after the freeze",
                at - frozen
            );
            failed += 1;
        }
        failed
    })
    .await
    .expect("a waiter still waits 10 s after Redis stopped answering");
    assert_eq!(all, 8);
    server.thaw();
    limiter.acquire(1).await.unwrap();
    limiter.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_back_without_its_data_admits_at_most_one_extra_burst() {
    const RATE: u32 = 20;
    const BURST: u32 = 4;
    let mut server = RedisServer::start();
    let processes: Vec<RateLimiter> = (0..2)
        .map(|_| {
            let config = RedisConfig::new(server.url(), "restart").timeout(ms(200));
            limiter(config, RATE, BURST)
        })
        .collect();
    for process in &processes {
        process.enter().await.unwrap();
    }
    let admitted = Arc::new(Mutex::new(Vec::new()));
    let failures = Arc::new(Mutex::new(0_usize));
    let start = Instant::now();
    let end = start + ms(2_300);
    let mut tasks = JoinSet::new();
    for process in &processes {
        for _ in 0..3 {
            let (limiter, admitted, failures) =
                (process.clone(), admitted.clone(), failures.clone());
            tasks.spawn(async move {
                while Instant::now() < end {
                    match limiter.acquire(1).await {
                        Ok(()) => admitted.lock().unwrap().push(Instant::now()),
                        Err(err) => {
                            assert!(err.is_unavailable(), "{err}");
                            *failures.lock().unwrap() += 1;
                            sleep(ms(20)).await;
                        }
                    }
                }
            });
        }
    }
    sleep(ms(1_000)).await;
    server.stop();
    let stopped = Instant::now();
    sleep(ms(300)).await;
    let restarting = Instant::now();
    server.restart();
    let restarted = Instant::now();
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let mut times = admitted.lock().unwrap().clone();
    times.sort();
    assert!(*failures.lock().unwrap() > 0, "nobody saw Redis down");
    // Nobody went while it was down, beyond the bookings made before (one a process).
    let while_down = times
        .iter()
        .filter(|at| **at > stopped + ms(150) && **at < restarting)
        .count();
    assert_eq!(while_down, 0);
    // It serves again at its rate: 1 s after the restart, at least 0.9 of 20.
    let after = times.iter().filter(|at| **at >= restarted).count();
    assert!(
        after >= 18,
        "{after} admitted in the second after the restart"
    );
    // The schedule was lost, so the limiter started again with a full burst: one
    // more burst than the bound at most, in any window (and 1 for the wake-ups).
    let interval = Duration::from_secs(1) / RATE;
    for w in [
        Duration::ZERO,
        interval,
        interval * 5,
        ms(500),
        ms(1_000),
        ms(2_300),
    ] {
        let bound = 2 * u64::from(BURST) + (w.as_nanos() / interval.as_nanos()) as u64 + 1;
        let most = most_in_window(&times, w);
        assert!(
            most <= bound,
            "{most} admitted within {w:?}; the bound is {bound}"
        );
    }
    for process in &processes {
        process.close().await.unwrap();
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_configured_fallback_goes_on_at_its_share_and_comes_back() {
    const RATE: u32 = 40;
    let (events, _guard) = Events::install();
    let mut server = RedisServer::start();
    let config = RedisConfig::new(server.url(), "fallback")
        .timeout(ms(200))
        .probe_interval(ms(300))
        .fallback(Fallback::Local { share: 0.5 });
    let limiter = limiter(config, RATE, 1);
    limiter.enter().await.unwrap();
    let admitted = Arc::new(Mutex::new(Vec::new()));
    let start = Instant::now();
    let end = start + ms(2_600);
    let mut tasks = JoinSet::new();
    for _ in 0..2 {
        let (limiter, admitted) = (limiter.clone(), admitted.clone());
        tasks.spawn(async move {
            while Instant::now() < end {
                // No call fails: the fallback takes over.
                limiter.acquire(1).await.unwrap();
                admitted.lock().unwrap().push(Instant::now());
            }
        });
    }
    sleep(ms(400)).await;
    assert!(events.at(tracing::Level::WARN, "falling back").is_empty());
    server.stop();
    let stopped = Instant::now();
    sleep(ms(1_000)).await;
    server.restart();
    let restarted = Instant::now();
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let times = admitted.lock().unwrap().clone();
    let count =
        |from: Instant, to: Instant| times.iter().filter(|at| **at >= from && **at < to).count();
    // Falling back, at half the rate: 20 a second (and 1 for a wake-up), not 40.
    let fallen = count(stopped + ms(200), stopped + ms(900));
    assert!(
        (10..=16).contains(&fallen),
        "{fallen} admitted in 700 ms of falling back at 20 a second"
    );
    // Back on the shared schedule within a probe and a round trip, at the full rate.
    let back = count(restarted + ms(500), end);
    assert!(
        back >= 20,
        "{back} admitted in the last 650 ms at 40 a second"
    );
    // The switch out was logged once, as a warning, and the way back.
    assert_eq!(
        events.at(tracing::Level::WARN, "falling back").len(),
        1,
        "{:?}",
        events.all()
    );
    assert_eq!(
        events
            .at(tracing::Level::INFO, "back on the schedule in Redis")
            .len(),
        1,
        "{:?}",
        events.all()
    );
    limiter.close().await.unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn a_pause_that_cannot_reach_redis_is_logged() {
    let (events, _guard) = Events::install();
    let mut server = RedisServer::start();
    let config = RedisConfig::new(server.url(), "lost-pause").timeout(ms(200));
    let limiter = limiter(config, 10, 1);
    limiter.enter().await.unwrap();
    server.stop();
    limiter.pause_until(Instant::now() + ms(500));
    // It holds this process at once, whatever Redis does.
    assert!(!limiter.try_acquire_async(1).await.unwrap());
    let start = Instant::now();
    let err = limiter.acquire(1).await.unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    assert!(start.elapsed() >= ms(490), "went during the pause");
    let warned = events.at(tracing::Level::WARN, "did not reach Redis");
    assert_eq!(warned.len(), 1, "{:?}", events.all());
    assert!(warned[0].mentions("lost-pause"));
    limiter.close().await.unwrap();
}
