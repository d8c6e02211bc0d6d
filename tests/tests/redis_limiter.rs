//! `RateLimiter` with its schedule in Redis (`RedisConfig`): the same type and calls as
//! the local one, one quota for every process that names the same key prefix.
//!
//! Each test starts a real `redis-server` of its own (`resource_tests::redis_server`)
//! and runs on the real clock: Redis keeps the schedule on its own clock. Two
//! `RateLimiter` values built apart, with the same prefix, stand for two processes:
//! they share nothing but the server. Run with
//! `cargo test -p resource-tests --features redis --test 'redis_*'`.
#![cfg(feature = "redis")]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use resource_runtime::limiter::{LimiterError, RateLimiter, RedisConfig};
use resource_runtime::{AsyncResource, scope};
use resource_tests::redis_server::RedisServer;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, timeout};

/// How long a step promised to end "within its timeout" may take before the test calls
/// it a hang: far above every configured timeout, so a loaded machine cannot fail the
/// test, while a step that waits forever still does.
const HANG_GUARD: Duration = Duration::from_secs(10);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A limiter of `rate` per second with `burst`, in `server` under `prefix`; not
/// entered.
fn shared(server: &RedisServer, prefix: &str, rate: u32, burst: u32) -> RateLimiter {
    RateLimiter::builder(rate, Duration::from_secs(1))
        .burst(burst)
        .redis(RedisConfig::new(server.url(), prefix))
        .build()
        .unwrap()
}

/// `shared`, entered.
async fn entered(server: &RedisServer, prefix: &str, rate: u32, burst: u32) -> RateLimiter {
    let limiter = shared(server, prefix, rate, burst);
    limiter.enter().await.unwrap();
    limiter
}

/// The most admissions in any closed window `[t, t + w]`, over windows starting at an
/// admission (the worst window always does); `times` sorted.
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

/// Polls `check` every 10 ms until it holds, for at most `limit`.
async fn eventually(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        sleep(ms(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn it_is_entered_before_use_and_closed_after() {
    let server = RedisServer::start();
    let url = format!("redis://:s3cret@127.0.0.1:{}/", server.port());
    let limiter = RateLimiter::builder(10, Duration::from_secs(1))
        .redis(RedisConfig::new(url, "entry"))
        .build()
        .unwrap();
    assert!(!format!("{limiter:?}").contains("s3cret"), "{limiter:?}");
    assert_eq!(limiter.burst(), 10);

    // Before enter: nothing reaches Redis.
    let err = limiter.acquire(1).await.unwrap_err();
    assert!(err.is_not_entered(), "{err}");
    let err = limiter.try_acquire_async(1).await.unwrap_err();
    assert!(err.is_not_entered(), "{err}");
    // More than the burst is refused before anything else.
    let err = limiter.acquire(11).await.unwrap_err();
    assert!(matches!(
        err.downcast_ref::<LimiterError>(),
        Some(LimiterError::ExceedsBurst {
            requested: 11,
            burst: 10
        })
    ));
    // `try_acquire` never waits, so it cannot ask Redis: it says what to call instead.
    let err = limiter.try_acquire(1).unwrap_err();
    assert!(
        matches!(err.downcast_ref::<LimiterError>(), Some(LimiterError::NotLocal { prefix }) if prefix == "entry")
    );
    assert!(err.to_string().contains("try_acquire_async"), "{err}");

    // The server has no password: the login fails, and says so without showing it.
    let err = limiter.enter().await.unwrap_err();
    assert!(!err.is_unavailable(), "{err}");
    assert!(
        matches!(
            err.downcast_ref::<LimiterError>(),
            Some(LimiterError::Store { .. })
        ),
        "{err:?}"
    );
    assert!(!err.to_string().contains("s3cret"), "{err}");
    assert!(err.to_string().contains(":***@127.0.0.1"), "{err}");

    // The right URL: `scope` enters it, and closes it on the way out.
    let limiter = shared(&server, "entry", 10, 10);
    let clone = limiter.clone();
    let took = scope(limiter, async |l: &mut RateLimiter| {
        l.acquire(3).await?;
        l.try_acquire_async(7).await
    })
    .await
    .unwrap()
    .unwrap();
    assert!(took);
    let err = clone.acquire(1).await.unwrap_err();
    assert!(err.is_closed(), "{err}");
    assert!(clone.enter().await.unwrap_err().is_closed());
    // The close contract: a second close does nothing.
    clone.close().await.unwrap();
    let mut again = clone.clone();
    AsyncResource::close(&mut again).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_one_rate_and_its_bound() {
    const RATE: u32 = 50;
    const BURST: u32 = 5;
    const RUN: Duration = Duration::from_secs(2);
    let server = RedisServer::start();
    let processes = [
        entered(&server, "shared", RATE, BURST).await,
        entered(&server, "shared", RATE, BURST).await,
    ];
    let admitted = Arc::new(Mutex::new(Vec::new()));
    let start = Instant::now();
    let end = start + RUN;
    let mut tasks = JoinSet::new();
    for (process, limiter) in processes.iter().enumerate() {
        for _ in 0..4 {
            let (limiter, admitted) = (limiter.clone(), admitted.clone());
            tasks.spawn(async move {
                while Instant::now() < end {
                    limiter.acquire(1).await.unwrap();
                    admitted.lock().unwrap().push((Instant::now(), process));
                }
            });
        }
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let mut admitted: Vec<(Instant, usize)> = admitted
        .lock()
        .unwrap()
        .iter()
        .copied()
        .filter(|(at, _)| *at <= end)
        .collect();
    admitted.sort();
    let times: Vec<Instant> = admitted.iter().map(|(at, _)| *at).collect();

    // A waiter goes at its booked instant plus the reply's way back and its timer's
    // lateness, both far below a token's 20 ms: one more than the GCRA bound at most.
    let interval = Duration::from_secs(1) / RATE;
    for w in [
        Duration::ZERO,
        interval / 2,
        interval,
        interval * 3,
        interval * 10,
        Duration::from_secs(1),
        RUN,
    ] {
        let bound = u64::from(BURST) + (w.as_nanos() / interval.as_nanos()) as u64 + 1;
        let most = most_in_window(&times, w);
        assert!(
            most <= bound,
            "{most} admitted within {w:?}; the bound is {bound}"
        );
    }
    // The rate is kept: beyond the first burst, at least 0.95 of 50 a second.
    let beyond_burst = times.len() as f64 - f64::from(BURST);
    let achieved = beyond_burst / RUN.as_secs_f64();
    assert!(
        achieved >= 0.95 * f64::from(RATE),
        "{achieved:.1} a second achieved against {RATE}"
    );
    // Both processes were served from the one schedule.
    for process in 0..2 {
        let theirs = admitted.iter().filter(|(_, p)| *p == process).count();
        assert!(
            theirs * 4 >= admitted.len(),
            "process {process} had {theirs} of {}",
            admitted.len()
        );
    }
    for limiter in &processes {
        limiter.close().await.unwrap();
    }
}

#[tokio::test(flavor = "current_thread")]
async fn waiters_of_a_process_go_in_arrival_order_one_round_trip_each() {
    let server = RedisServer::start();
    let limiter = entered(&server, "fifo", 100, 1).await;
    let before = server.calls("evalsha");
    // The burst is spent: everyone after this waits.
    limiter.acquire(1).await.unwrap();
    let queued = Arc::new(Mutex::new(Vec::new()));
    let admitted = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = JoinSet::new();
    for ticket in 0..12 {
        let (limiter, queued, admitted) = (limiter.clone(), queued.clone(), admitted.clone());
        tasks.spawn(async move {
            // One thread: nothing runs between this push and the acquire's first
            // poll, so the push order is the order of arrival at the limiter.
            queued.lock().unwrap().push(ticket);
            limiter.acquire(1).await.unwrap();
            admitted.lock().unwrap().push(ticket);
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    assert_eq!(*admitted.lock().unwrap(), *queued.lock().unwrap());
    // Nothing polls: 13 acquisitions, 13 runs of the script, whatever the waiting.
    assert_eq!(server.calls("evalsha") - before, 13);
    limiter.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_from_one_process_holds_the_other() {
    let server = RedisServer::start();
    let pausing = entered(&server, "pause", 100, 10).await;
    let other = entered(&server, "pause", 100, 10).await;
    // Before the pause the schedule admits at once.
    other.acquire(1).await.unwrap();

    let until = Instant::now() + ms(500);
    pausing.pause_until(until);
    // It holds this process at once...
    assert!(!pausing.try_acquire_async(1).await.unwrap());
    // ...and reaches Redis in the background.
    eventually(ms(400), "the pause in Redis", || {
        let pause: Option<i64> = server.query(redis::cmd("HGET").arg("{pause}:gcra").arg("pause"));
        pause.is_some()
    })
    .await;
    other.acquire(1).await.unwrap();
    let admitted = Instant::now();
    // The deadline was set on the server's clock from the delay left when it was sent:
    // never before `until` (1 ms for the two clocks' ticks), and not much after.
    assert!(
        admitted + ms(1) >= until,
        "admitted {:?} early",
        until - admitted
    );
    assert!(
        admitted <= until + HANG_GUARD,
        "admitted {:?} late",
        admitted - until
    );
    // After the pause, a full burst again.
    for _ in 0..8 {
        assert!(other.try_acquire_async(1).await.unwrap());
    }
    pausing.close().await.unwrap();
    other.close().await.unwrap();
}

/// Polls `try_acquire_async(n)` (which books nothing when it fails) until it admits.
async fn admitted_eventually(limiter: &RateLimiter, n: u32, what: &str) {
    let start = Instant::now();
    while !limiter.try_acquire_async(n).await.unwrap() {
        assert!(
            start.elapsed() < HANG_GUARD,
            "{what}: not within {HANG_GUARD:?}"
        );
        sleep(ms(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settle_in_one_process_gives_back_or_charges_for_every_process() {
    let server = RedisServer::start();
    // A thousand tokens a day: no refill blurs the arithmetic while the test runs.
    let day = Duration::from_secs(86_400);
    let limiter = |server: &RedisServer| {
        RateLimiter::builder(1_000, day)
            .redis(RedisConfig::new(server.url(), "tpm"))
            .build()
            .unwrap()
    };
    let (one, other) = (limiter(&server), limiter(&server));
    one.enter().await.unwrap();
    other.enter().await.unwrap();

    one.acquire(600).await.unwrap();
    assert!(!other.try_acquire_async(401).await.unwrap());
    // The answer used 100: 500 come back, for the other process too.
    one.settle(600, 100);
    admitted_eventually(&other, 900, "the 500 given back").await;
    assert!(!other.try_acquire_async(1).await.unwrap());

    // 300 more found after the fact: the schedule is in debt, and a full burst is
    // 300 tokens further away for everyone.
    one.settle(0, 300);
    eventually(HANG_GUARD, "the debt in Redis", || {
        let tat: Option<i64> = server.query(redis::cmd("HGET").arg("{tpm}:gcra").arg("tat"));
        let now_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros();
        // The schedule ends 1 300 tokens of 86.4 s each after the first acquisition
        // (1 000 before the charge): more than 1 299 ahead of now.
        tat.is_some_and(|tat| u128::try_from(tat).unwrap() > now_us + 1_299 * 86_400_000)
    })
    .await;
    assert!(!one.try_acquire_async(1).await.unwrap());
    one.close().await.unwrap();
    other.close().await.unwrap();
    let ttl: i64 = server.query(redis::cmd("PTTL").arg("{tpm}:gcra"));
    assert!(
        ttl > 0,
        "the debt's hash expires when the schedule ends: {ttl}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_set_before_enter_reaches_redis_when_it_enters() {
    let server = RedisServer::start();
    let pausing = shared(&server, "early", 100, 10);
    let until = Instant::now() + ms(400);
    pausing.pause_until(until);
    pausing.enter().await.unwrap();
    let other = entered(&server, "early", 100, 10).await;
    eventually(ms(300), "the pause in Redis", || {
        let pause: Option<i64> = server.query(redis::cmd("HGET").arg("{early}:gcra").arg("pause"));
        pause.is_some()
    })
    .await;
    other.acquire(1).await.unwrap();
    let admitted = Instant::now();
    assert!(
        admitted + ms(1) >= until,
        "admitted {:?} early",
        until - admitted
    );
    pausing.close().await.unwrap();
    other.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_waiter_gives_its_place_back_unless_someone_booked_after_it() {
    // One token every 250 ms.
    let server = RedisServer::start();
    let first = entered(&server, "cancel", 4, 1).await;
    let second = entered(&server, "cancel", 4, 1).await;
    let calls = || server.calls("evalsha");

    let schedule =
        || -> Option<String> { server.query(redis::cmd("HGET").arg("{cancel}:gcra").arg("tat")) };
    let start = Instant::now();
    first.acquire(1).await.unwrap();
    let before = schedule();
    assert!(before.is_some(), "the first acquisition set the schedule");
    // A waiter books 250 ms ahead and leaves before its time.
    let booked = calls();
    let waiter = first.clone();
    let cancelled = tokio::spawn(async move { waiter.acquire(1).await });
    eventually(HANG_GUARD, "the booking", || calls() == booked + 1).await;
    // Redis counts the run before its reply reaches the waiter: a waiter cancelled
    // in between does not know its booking (its tokens stay spent), so give the reply
    // time to arrive, well within the 250 ms the waiter sleeps.
    sleep(ms(50)).await;
    cancelled.abort();
    // Nobody booked after it: its place is given back (one more script run).
    eventually(HANG_GUARD, "the place given back", || calls() == booked + 2).await;
    // The schedule ends where it ended before the booking: the place is free again.
    assert_eq!(schedule(), before, "the booking was not given back");
    second.acquire(1).await.unwrap();
    let at = start.elapsed();
    assert!(
        at >= ms(245),
        "the place after the cancelled one went at {at:?}, before 250 ms"
    );

    // Again, but another process books after the cancelled waiter: the schedule moved,
    // so its tokens stay spent, and the next one goes a token later (bounded by them).
    let booked = calls();
    let waiter = first.clone();
    let cancelled = tokio::spawn(async move { waiter.acquire(1).await });
    eventually(HANG_GUARD, "the booking", || calls() == booked + 1).await;
    let behind = second.clone();
    let after = tokio::spawn(async move {
        behind.acquire(1).await.unwrap();
        Instant::now()
    });
    eventually(HANG_GUARD, "the booking after it", || calls() == booked + 2).await;
    sleep(ms(50)).await;
    cancelled.abort();
    eventually(HANG_GUARD, "the attempt to give it back", || {
        calls() == booked + 3
    })
    .await;
    // Given back, the waiter behind would go at 500 ms: it goes a token later.
    let at = after.await.unwrap() - start;
    assert!(
        at >= ms(745),
        "the waiter behind went at {at:?}: the cancelled waiter's tokens were given back although someone booked after it"
    );
    first.close().await.unwrap();
    second.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_wakes_every_waiter_and_leaves_only_expiring_keys() {
    let server = RedisServer::start();
    eventually(ms(1000), "no client", || server.clients() == 0).await;
    let limiter = entered(&server, "close", 1, 1).await;
    assert_eq!(server.clients(), 1);
    limiter.acquire(1).await.unwrap();
    let mut waiters = JoinSet::new();
    for _ in 0..5 {
        let limiter = limiter.clone();
        waiters.spawn(async move { limiter.acquire(1).await });
    }
    eventually(ms(500), "5 waiters", || limiter.waiting() == 5).await;
    limiter.pause_until(Instant::now() + ms(1500));

    let start = Instant::now();
    limiter.close().await.unwrap();
    let woken = timeout(HANG_GUARD, async {
        while let Some(done) = waiters.join_next().await {
            let err = done.unwrap().unwrap_err();
            assert!(err.is_closed(), "{err}");
        }
    })
    .await;
    assert!(woken.is_ok(), "a waiter was not woken by close");
    assert!(start.elapsed() < HANG_GUARD);
    assert_eq!(limiter.waiting(), 0);

    // The connection is released...
    eventually(ms(1000), "the connection closed", || server.clients() == 0).await;
    // ...and every key the limiter wrote is its own (one hash tag) and expires a
    // little past the end of its schedule (2 s) and of the pause (1.5 s).
    let keys = server.keys_with_ttl();
    assert!(!keys.is_empty());
    for (key, ttl) in keys {
        assert!(key.starts_with("{close}:"), "{key}");
        assert!(ttl > 0 && ttl <= 3_000, "{key} expires in {ttl} ms");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_limiter_leaves_nothing_behind() {
    let server = RedisServer::start();
    let limiter = entered(&server, "idle", 20, 2).await;
    let start = Instant::now();
    limiter.acquire(2).await.unwrap();
    // The schedule ends 100 ms from now; the hash a second after that.
    let keys = server.keys_with_ttl();
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert!(keys[0].1 > 0 && keys[0].1 <= 1_101, "{keys:?}");
    eventually(ms(1_600), "the hash expired", || {
        server.keys_with_ttl().is_empty()
    })
    .await;
    assert!(start.elapsed() >= ms(1_000));
    // An expired schedule is a fresh one: a full burst.
    assert!(limiter.try_acquire_async(2).await.unwrap());
    assert!(!limiter.try_acquire_async(1).await.unwrap());
    limiter.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_schedules_and_pauses_expire_when_they_end() {
    // One token an hour: a burst of 2 books two hours of schedule.
    let server = RedisServer::start();
    let limiter = RateLimiter::builder(1, Duration::from_secs(3_600))
        .burst(2)
        .redis(RedisConfig::new(server.url(), "long"))
        .build()
        .unwrap();
    limiter.enter().await.unwrap();
    limiter.acquire(2).await.unwrap();
    let ttl = |server: &RedisServer| {
        let keys = server.keys_with_ttl();
        assert_eq!(keys.len(), 1, "{keys:?}");
        keys[0].1
    };
    let hours = 2 * 3_600_000;
    let left = ttl(&server);
    assert!(
        (hours..=hours + 1_001).contains(&left),
        "expires in {left} ms"
    );
    // A pause of 30 days keeps the schedule that long, and no longer.
    let days = 30 * 24 * 3_600_000;
    limiter.pause_until(Instant::now() + Duration::from_secs(30 * 24 * 3_600));
    eventually(ms(500), "the pause in Redis", || {
        ttl(&server) > hours + 1_001
    })
    .await;
    let left = ttl(&server);
    assert!(
        (days - 1_000..=days + 1_001).contains(&left),
        "expires in {left} ms"
    );
    limiter.close().await.unwrap();
}
