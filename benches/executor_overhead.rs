//! What `AsyncExecutor` costs a task and a shutdown, against tokio's own ways to run many
//! tasks. Run: `cargo bench -p resource-benches --bench executor_overhead`.
//!
//! - `spawn_200k_c64`: 200 000 trivial tasks (each returns its index), at most 64 in
//!   flight, started from inside a task on a multi-thread runtime (2 workers here) and
//!   all completed before the clock stops:
//!   - `async_executor_await`: `AsyncExecutor::new(64).unwrap()`, `spawn(fut).await` for each
//!     (waits for a slot), every handle kept and awaited at the end, outputs summed;
//!   - `async_executor_shutdown`: the same with the handles dropped, then `shutdown()`
//!     waits for every task: the like-for-like of the tracker row;
//!   - `tracker_semaphore`: `TaskTracker` + `Arc<Semaphore>(64)`: `acquire_owned` before
//!     each spawn, the permit moved into the task, handles dropped, then `close` and
//!     `wait`: the floor for a bounded executor (docs/design.md, "Reference points"), and the peer of the ratios;
//!   - `joinset_drain`: a `JoinSet`, `join_next` whenever 64 are in it, drained at the end;
//!   - `tokio_spawn`: unbounded `tokio::spawn`, every handle kept and awaited.
//! - `close_10k`: the time `shutdown()` takes on an `AsyncExecutor` with 10 000 tasks
//!   in flight, each asleep for an hour, with a shutdown deadline of zero (so all are
//!   aborted at once): against a `TaskTracker` whose tasks select on a
//!   `CancellationToken` (`cancel`, `close`, `wait`). Only the close is timed; every
//!   task has started (and is asleep) before it. tokio's timer has a 1 ms resolution,
//!   and the executor's deadline is a tokio timer: the deadline itself may cost up to
//!   a millisecond of the figure.
//!
//! Memory per in-flight task is in `executor_memory`, a binary of its own because its
//! counting global allocator would slow every allocation measured here.

use std::future::Future;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, SamplingMode, criterion_group, criterion_main};
use resource_runtime::executor::AsyncExecutor;
use tokio::runtime::Runtime;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const TASKS: u64 = 200_000;
const CONCURRENCY: usize = 64;
/// What the tasks' outputs add up to.
const SUM: u64 = TASKS * (TASKS - 1) / 2;
const IN_FLIGHT: usize = 10_000;
const HOUR: Duration = Duration::from_secs(3600);

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a multi-thread runtime")
}

/// A trivial task.
async fn trivial(i: u64) -> u64 {
    black_box(i)
}

async fn async_executor_await() {
    let executor = AsyncExecutor::new(CONCURRENCY).unwrap();
    let mut handles = Vec::with_capacity(TASKS as usize);
    for i in 0..TASKS {
        handles.push(executor.spawn(trivial(i)).await.expect("an open executor"));
    }
    let mut sum = 0;
    for handle in handles {
        sum += handle.await.expect("a task that completes");
    }
    assert_eq!(sum, SUM);
}

async fn async_executor_shutdown() {
    let executor = AsyncExecutor::new(CONCURRENCY).unwrap();
    for i in 0..TASKS {
        drop(executor.spawn(trivial(i)).await.expect("an open executor"));
    }
    executor.close().await.expect("a clean shutdown");
}

async fn tracker_semaphore() {
    let tracker = TaskTracker::new();
    let permits = Arc::new(Semaphore::new(CONCURRENCY));
    for i in 0..TASKS {
        let permit = permits
            .clone()
            .acquire_owned()
            .await
            .expect("an open semaphore");
        drop(tracker.spawn(async move {
            let _permit = permit;
            trivial(i).await
        }));
    }
    tracker.close();
    tracker.wait().await;
}

async fn joinset_drain() {
    let mut set = JoinSet::new();
    let mut sum = 0;
    for i in 0..TASKS {
        while set.len() >= CONCURRENCY {
            sum += set
                .join_next()
                .await
                .expect("a task")
                .expect("a task that completes");
        }
        set.spawn(trivial(i));
    }
    while let Some(output) = set.join_next().await {
        sum += output.expect("a task that completes");
    }
    assert_eq!(sum, SUM);
}

async fn tokio_spawn() {
    let handles: Vec<_> = (0..TASKS).map(|i| tokio::spawn(trivial(i))).collect();
    let mut sum = 0;
    for handle in handles {
        sum += handle.await.expect("a task that completes");
    }
    assert_eq!(sum, SUM);
}

/// Times `workload`, run as a task on a worker of `rt`, `iters` times.
fn bench_on_worker<F, Fut>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    rt: &Runtime,
    workload: F,
) where
    F: Fn() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let run = workload();
                total += rt
                    .block_on(rt.spawn(async move {
                        let start = Instant::now();
                        run.await;
                        start.elapsed()
                    }))
                    .expect("the workload panicked");
            }
            total
        })
    });
}

fn spawn_200k(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("spawn_200k_c64");
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(4));
    bench_on_worker(
        &mut group,
        "async_executor_await",
        &rt,
        async_executor_await,
    );
    bench_on_worker(
        &mut group,
        "async_executor_shutdown",
        &rt,
        async_executor_shutdown,
    );
    bench_on_worker(&mut group, "tracker_semaphore", &rt, tracker_semaphore);
    bench_on_worker(&mut group, "joinset_drain", &rt, joinset_drain);
    bench_on_worker(&mut group, "tokio_spawn", &rt, tokio_spawn);
    group.finish();
}

/// Waits until `started` reaches `n`: every task has been polled and is asleep.
async fn all_started(started: &AtomicUsize, n: usize) {
    while started.load(Ordering::Acquire) < n {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Starts 10 000 sleeping tasks on an executor, then times its shutdown.
async fn close_executor() -> Duration {
    let executor = AsyncExecutor::builder(IN_FLIGHT)
        .shutdown_timeout(Duration::ZERO)
        .build()
        .unwrap();
    let started = Arc::new(AtomicUsize::new(0));
    for _ in 0..IN_FLIGHT {
        let started = started.clone();
        let task = executor.spawn(async move {
            started.fetch_add(1, Ordering::AcqRel);
            tokio::time::sleep(HOUR).await;
        });
        drop(task.await.expect("an open executor"));
    }
    all_started(&started, IN_FLIGHT).await;
    assert_eq!(executor.in_flight(), IN_FLIGHT);
    let start = Instant::now();
    let outcome = executor.close().await;
    let elapsed = start.elapsed();
    assert!(
        outcome.is_err(),
        "every task is aborted, and that is reported"
    );
    elapsed
}

/// The same with a `TaskTracker`, a `Semaphore` and a `CancellationToken`.
async fn close_tracker() -> Duration {
    let tracker = TaskTracker::new();
    let permits = Arc::new(Semaphore::new(IN_FLIGHT));
    let cancel = CancellationToken::new();
    let started = Arc::new(AtomicUsize::new(0));
    for _ in 0..IN_FLIGHT {
        let permit = permits
            .clone()
            .acquire_owned()
            .await
            .expect("an open semaphore");
        let (started, cancel) = (started.clone(), cancel.clone());
        drop(tracker.spawn(async move {
            let _permit = permit;
            started.fetch_add(1, Ordering::AcqRel);
            tokio::select! {
                () = cancel.cancelled() => {}
                () = tokio::time::sleep(HOUR) => {}
            }
        }));
    }
    all_started(&started, IN_FLIGHT).await;
    assert_eq!(tracker.len(), IN_FLIGHT);
    let start = Instant::now();
    cancel.cancel();
    tracker.close();
    tracker.wait().await;
    start.elapsed()
}

/// Times the closes `close` measures, each run as a task on a worker of `rt`.
fn bench_close<F, Fut>(group: &mut BenchmarkGroup<'_, WallTime>, name: &str, rt: &Runtime, close: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Duration> + Send + 'static,
{
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| rt.block_on(rt.spawn(close())).expect("the close panicked"))
                .sum()
        })
    });
}

fn close_10k(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("close_10k");
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(300));
    // Only the close is timed, and each iteration first starts 10 000 tasks: keep the
    // timed total short, or the untimed setup makes the run long.
    group.measurement_time(Duration::from_millis(500));
    bench_close(&mut group, "async_executor", &rt, close_executor);
    bench_close(&mut group, "tracker_token", &rt, close_tracker);
    group.finish();
}

criterion_group!(benches, spawn_200k, close_10k);
criterion_main!(benches);
