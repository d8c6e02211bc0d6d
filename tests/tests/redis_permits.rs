//! `AsyncExecutor` with fleet permits in Redis (`AsyncExecutorBuilder::redis_permits`):
//! a cap on the tasks in flight across processes, leases released on every way out,
//! lost by a killed process after their time to live, and an outage reported as
//! unavailable.
//!
//! Each test starts a real `redis-server` of its own (`resource_tests::redis_server`),
//! on the real clock. Run with
//! `cargo test -p resource-tests --features redis --test redis_permits`.
#![cfg(feature = "redis")]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use resource_runtime::executor::{AsyncExecutor, RedisPermits};
use resource_tests::Gauge;
use resource_tests::redis_server::RedisServer;
use tokio::time::{Instant, sleep, timeout};

/// How long a step promised to end "within its timeout" may take before the test calls
/// it a hang: far above every configured timeout, so a loaded machine cannot fail the
/// test, while a step that waits forever still does.
const HANG_GUARD: Duration = Duration::from_secs(10);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A lease that no test outlives.
const LONG_TTL: Duration = Duration::from_secs(600);

/// An entered executor of `slots` local slots under `limit` fleet permits named
/// `prefix`, with leases of `ttl`.
async fn executor(
    url: &str,
    prefix: &str,
    limit: u32,
    slots: usize,
    ttl: Duration,
) -> AsyncExecutor {
    let executor = AsyncExecutor::builder(slots)
        .shutdown_timeout(Duration::from_secs(3))
        .redis_permits(
            RedisPermits::new(url, prefix, limit)
                .lease_ttl(ttl)
                .timeout(ms(200))
                .connect_timeout(ms(1000))
                .max_backoff(ms(50)),
        )
        .build()
        .unwrap();
    executor.enter().await.unwrap();
    executor
}

/// How many leases the fleet `prefix` holds in Redis.
fn leases(server: &RedisServer, prefix: &str) -> i64 {
    server.query(redis::cmd("ZCARD").arg(format!("{{{prefix}}}:permits")))
}

/// Waits until the fleet holds `n` leases (a release is one round trip in a task).
async fn leases_become(server: &RedisServer, prefix: &str, n: i64) {
    let start = Instant::now();
    while leases(server, prefix) != n {
        assert!(
            start.elapsed() < HANG_GUARD,
            "the fleet holds {} leases, not {n}",
            leases(server, prefix)
        );
        sleep(ms(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_sharing_a_prefix_never_run_more_than_the_fleet_limit() {
    let server = RedisServer::start();
    let url = server.url();
    let a = executor(&url, "fleet", 3, 4, ms(2000)).await;
    let b = executor(&url, "fleet", 3, 4, ms(2000)).await;
    let gauge = Gauge::new();
    let mut callers = Vec::new();
    for i in 0..16 {
        let executor = if i % 2 == 0 { a.clone() } else { b.clone() };
        let gauge = gauge.clone();
        callers.push(tokio::spawn(async move {
            executor
                .execute(async move {
                    let _inside = gauge.enter();
                    sleep(ms(40)).await;
                })
                .await
        }));
    }
    for caller in callers {
        caller.await.unwrap().unwrap();
    }
    // Never more than 3 at once across both, and the cap was reached.
    assert_eq!(gauge.max(), 3);
    assert_eq!(gauge.current(), 0);
    leases_become(&server, "fleet", 0).await;
    assert_eq!(a.fleet_permits_held() + b.fleet_permits_held(), 0);
    a.close().await.unwrap();
    b.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_way_out_releases_the_permit() {
    let server = RedisServer::start();
    let url = server.url();
    // One permit for the fleet: each step below runs only if the one before gave it
    // back.
    // Leases outlive the test: a permit comes back only by its release, never by
    // expiring, so the waits below need no bound but a hang guard.
    let executor = executor(&url, "ways", 1, 4, LONG_TTL).await;
    let within = |what: &'static str| {
        let executor = executor.clone();
        async move {
            timeout(HANG_GUARD, executor.execute(async { 7 }))
                .await
                .unwrap_or_else(|_| panic!("the permit was not released after {what}"))
                .unwrap()
        }
    };

    // Completion.
    assert_eq!(executor.execute(async { 1 }).await.unwrap(), 1);
    leases_become(&server, "ways", 0).await;
    assert_eq!(within("completion").await, 7);

    // An error returned by the task.
    let failed = executor
        .execute(async { Err::<(), &str>("no") })
        .await
        .unwrap();
    assert_eq!(failed, Err("no"));
    leases_become(&server, "ways", 0).await;
    assert_eq!(within("an error").await, 7);

    // A panic.
    let panicked = executor
        .execute(async { panic!("the task panicked") })
        .await
        .unwrap_err();
    assert!(panicked.is_panic(), "{panicked}");
    leases_become(&server, "ways", 0).await;
    assert_eq!(within("a panic").await, 7);

    // The caller cancelled while its task runs: the task goes on, holding the permit,
    // and releases it when it ends.
    let cancelled = timeout(ms(100), executor.execute(sleep(ms(400)))).await;
    assert!(cancelled.is_err());
    assert_eq!(leases(&server, "ways"), 1);
    assert_eq!(executor.fleet_permits_held(), 1);
    let start = Instant::now();
    assert_eq!(within("a cancelled caller's task ended").await, 7);
    assert!(start.elapsed() >= ms(200), "{:?}", start.elapsed());

    // A caller cancelled while it waits for the permit leaves no lease behind.
    let holder = executor.spawn(sleep(ms(300))).await.unwrap();
    let waiting = timeout(ms(100), executor.execute(async {})).await;
    assert!(waiting.is_err());
    holder.await.unwrap();
    leases_become(&server, "ways", 0).await;
    assert_eq!(within("a cancelled waiter").await, 7);

    // A task aborted through its handle.
    let aborted = executor
        .spawn(sleep(Duration::from_secs(60)))
        .await
        .unwrap();
    aborted.abort();
    assert!(aborted.await.is_err());
    leases_become(&server, "ways", 0).await;
    assert_eq!(within("an abort").await, 7);

    executor.close().await.unwrap();
    assert_eq!(leases(&server, "ways"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_wakes_the_waiters_and_releases_the_leases() {
    let server = RedisServer::start();
    let url = server.url();
    // Leases outlive the test: b gets the permit only when a's close releases it.
    let a = executor(&url, "closing", 1, 4, LONG_TTL).await;
    let b = executor(&url, "closing", 1, 4, LONG_TTL).await;
    let running = a.spawn(sleep(ms(400))).await.unwrap();
    let waiter_a = tokio::spawn({
        let a = a.clone();
        async move { a.execute(async {}).await }
    });
    let waiter_b = tokio::spawn({
        let b = b.clone();
        async move { b.execute(async { "b ran" }).await }
    });
    sleep(ms(50)).await;
    assert_eq!(a.waiting() + b.waiting(), 2);

    let start = Instant::now();
    let closing = tokio::spawn({
        let a = a.clone();
        async move { a.close().await }
    });
    // The waiter of the closing executor leaves at once with a closed error.
    let woken = timeout(HANG_GUARD, waiter_a).await.unwrap().unwrap();
    assert!(woken.unwrap_err().is_closed());
    assert!(start.elapsed() < HANG_GUARD, "{:?}", start.elapsed());
    // The running task keeps its permit until it ends; then the close releases
    // everything and the other process gets the permit.
    closing.await.unwrap().unwrap();
    running.await.unwrap();
    assert!(start.elapsed() >= ms(300), "{:?}", start.elapsed());
    assert_eq!(a.fleet_permits_held(), 0);
    let ran = timeout(HANG_GUARD, waiter_b).await.unwrap().unwrap();
    assert_eq!(ran.unwrap(), "b ran");
    assert!(a.execute(async {}).await.unwrap_err().is_closed());
    b.close().await.unwrap();
    assert_eq!(leases(&server, "closing"), 0);
}

/// The environment variables that make this test binary a permit-holding helper.
const HELPER_URL: &str = "REDIS_PERMITS_HELPER_URL";
const HELPER_PREFIX: &str = "REDIS_PERMITS_HELPER_PREFIX";
/// What the helper prints once it holds its permits.
const HOLDING: &str = "HELPER HOLDS 2 PERMITS";

/// Not a test: the child process of `a_killed_process_loses_its_permits_after_the_ttl`.
/// It takes 2 fleet permits, says so on stdout, and hangs until it is killed.
#[test]
#[ignore = "a helper process, run by a_killed_process_loses_its_permits_after_the_ttl"]
fn helper_holds_two_permits_until_killed() {
    let (Ok(url), Ok(prefix)) = (std::env::var(HELPER_URL), std::env::var(HELPER_PREFIX)) else {
        panic!("run only by a_killed_process_loses_its_permits_after_the_ttl");
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let executor = executor(&url, &prefix, 3, 2, ms(500)).await;
        let mut held = Vec::new();
        for _ in 0..2 {
            held.push(executor.spawn(std::future::pending::<()>()).await.unwrap());
        }
        while executor.fleet_permits_held() < 2 {
            sleep(ms(5)).await;
        }
        println!("{HOLDING}");
        std::future::pending::<()>().await;
    });
}

/// Kills the helper when a test fails half-way.
struct Helper(Child);

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_process_loses_its_permits_after_the_ttl() {
    let server = RedisServer::start();
    let url = server.url();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "helper_holds_two_permits_until_killed",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HELPER_URL, &url)
        .env(HELPER_PREFIX, "killed")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut helper = Helper(child);
    let (said, heard) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if line.contains(HOLDING) {
                let _ = said.send(());
                return;
            }
        }
    });
    heard
        .recv_timeout(Duration::from_secs(10))
        .expect("the helper process took its permits");
    // Leases of 500 ms, held for 1 s: the helper renews them.
    sleep(ms(1000)).await;
    assert_eq!(leases(&server, "killed"), 2);

    let parent = executor(&url, "killed", 3, 4, ms(500)).await;
    helper.0.kill().unwrap();
    helper.0.wait().unwrap();
    let killed = Instant::now();
    // Killed, not released: its leases are still there.
    assert_eq!(leases(&server, "killed"), 2);
    // Three tasks that can only finish together: they need all three permits.
    let barrier = Arc::new(tokio::sync::Barrier::new(3));
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let barrier = barrier.clone();
        let parent = parent.clone();
        tasks.push(tokio::spawn(async move {
            parent
                .execute(async move {
                    barrier.wait().await;
                })
                .await
        }));
    }
    for task in tasks {
        timeout(Duration::from_secs(3), task)
            .await
            .expect("the killed process's permits came free")
            .unwrap()
            .unwrap();
    }
    let took = killed.elapsed();
    // The last renewal was at most a third of the lease before the kill; the permits
    // came free once it expired, within one backoff.
    assert!(took >= ms(250), "the permits came free after {took:?}");
    assert!(took < HANG_GUARD, "the permits came free after {took:?}");
    parent.close().await.unwrap();
    assert_eq!(leases(&server, "killed"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_stopped_mid_run_fails_the_callers_as_unavailable_in_bounded_time() {
    let mut server = RedisServer::start();
    let url = server.url();
    let executor = executor(&url, "outage", 1, 4, ms(1000)).await;
    executor.execute(async {}).await.unwrap();
    leases_become(&server, "outage", 0).await;
    server.stop();

    let start = Instant::now();
    let first = tokio::spawn({
        let executor = executor.clone();
        async move { executor.execute(async {}).await }
    });
    let second = tokio::spawn({
        let executor = executor.clone();
        async move { executor.execute(async {}).await }
    });
    for caller in [first, second] {
        let err = timeout(HANG_GUARD, caller)
            .await
            .expect("an outage is reported in bounded time")
            .unwrap()
            .unwrap_err();
        assert!(err.is_unavailable(), "{err}");
        assert!(err.to_string().contains("fleet permits"), "{err}");
    }
    assert!(start.elapsed() < HANG_GUARD, "{:?}", start.elapsed());
    assert_eq!(executor.fleet_permits_held(), 0);
    let closing = Instant::now();
    timeout(HANG_GUARD, executor.close())
        .await
        .expect("the close is bounded while Redis is gone")
        .unwrap();
    assert!(closing.elapsed() < HANG_GUARD, "{:?}", closing.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_executor_enters_its_permits_and_rolls_back_when_they_fail() {
    use resource_runtime::AsyncResource;
    use resource_runtime::executor::RateLimitedExecutor;
    use resource_runtime::limiter::RateLimiter;

    let server = RedisServer::start();
    let limiter = RateLimiter::new(100, Duration::from_secs(1)).unwrap();
    let executor = AsyncExecutor::builder(2)
        .redis_permits(RedisPermits::new(server.url(), "limited", 1).lease_ttl(ms(2000)))
        .build()
        .unwrap();
    let mut limited = RateLimitedExecutor::new(limiter, executor);
    limited.enter().await.unwrap();
    assert_eq!(limited.execute(async { 5 }).await.unwrap(), 5);
    limited.close().await.unwrap();
    assert_eq!(leases(&server, "limited"), 0);

    // Permits on a port nobody listens on: the enter fails as unavailable, and the
    // limiter it entered first is closed again.
    let reserved = resource_tests::server::TestServer::reserve();
    let port = reserved.addr().port();
    let limiter = RateLimiter::new(100, Duration::from_secs(1)).unwrap();
    let executor = AsyncExecutor::builder(2)
        .redis_permits(
            RedisPermits::new(format!("redis://127.0.0.1:{port}/"), "limited", 1)
                .connect_timeout(ms(300)),
        )
        .build()
        .unwrap();
    let mut limited = RateLimitedExecutor::new(limiter.clone(), executor);
    let start = Instant::now();
    let err = limited.enter().await.unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    assert!(start.elapsed() < HANG_GUARD, "{:?}", start.elapsed());
    assert!(limiter.acquire(1).await.unwrap_err().is_closed());
    // The executor was never entered: its tasks cannot take a permit.
    assert!(
        limited
            .execute(async {})
            .await
            .unwrap_err()
            .is_not_entered()
    );
}
