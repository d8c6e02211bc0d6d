//! What `AsyncExecutor` costs a task and a shutdown, against tokio's own ways to run many
//! tasks. Run: `cargo bench -p resource-benches --bench executor_overhead`.
//!
//! Every row is interleaved paired rounds (ours, peer, ours, peer, ... the order
//! alternating); a ratio is the median of the per-round ratios, printed with its spread.
//! Every workload runs as a task on a worker of one multi-thread runtime (2 workers
//! here), and only that task's run is timed.
//!
//! - `spawn_200k_c64_*`: 200 000 trivial tasks (each returns its index), at most 64 in
//!   flight, all completed before the clock stops; one run of each side a round (0.1
//!   to 0.3 s each here, with the machine shared). The peer of every row is
//!   `tracker_semaphore`: `TaskTracker` + `Arc<Semaphore>(64)`, `acquire_owned` before
//!   each spawn, the permit moved into the task, handles dropped, then `close` and
//!   `wait`: the floor for a bounded executor (docs/design.md, "Reference points").
//!   - `shutdown_vs_tracker_semaphore`: `AsyncExecutor::new(64)`, `spawn(fut).await`
//!     for each (waits for a slot), the handles dropped, then `close()` waits for
//!     every task: the like-for-like row. Target: ≤ 1.10. `TARGET_ROUNDS` (31) rounds,
//!     the other rows `ROUNDS` (21).
//!   - `await_vs_tracker_semaphore`: the same with every handle kept, awaited at the
//!     end and the outputs summed. Reported.
//!   - `joinset_vs_tracker_semaphore`: a `JoinSet`, `join_next` whenever 64 are in it,
//!     drained at the end (the row's "ours" is the `JoinSet`). Reported.
//!   - `tokio_spawn_vs_tracker_semaphore`: unbounded `tokio::spawn`, every handle kept
//!     and awaited (the row's "ours" is `tokio::spawn`). Reported.
//! - `close_10k_vs_tracker_token`: the time `close()` takes on an `AsyncExecutor` with
//!   10 000 tasks in flight, each asleep for an hour, with a shutdown deadline of zero
//!   (so all are aborted at once), against a `TaskTracker` whose tasks select on a
//!   `CancellationToken` (`cancel`, `close`, `wait`). Only the close is timed; every
//!   task has started (and is asleep) before it. A round's figure is the median of
//!   `CLOSES` closes of each side (a close takes a few milliseconds, and one
//!   preemption on a shared machine is as long). Reported.
//!
//! Memory per in-flight task is in `executor_memory`, a binary of its own because its
//! counting global allocator would slow every allocation measured here.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use resource_benches::{ROUNDS, Results, Target, median, paired, selected};
use resource_runtime::executor::AsyncExecutor;
use tokio::runtime::Runtime;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Tasks in one run of a `spawn_200k_c64` row.
const TASKS: u64 = 200_000;
const CONCURRENCY: usize = 64;
/// Rounds of the row with a target: more than the others, since it is judged.
const TARGET_ROUNDS: usize = 31;
/// Tasks in flight when a `close_10k` row closes.
const IN_FLIGHT: usize = 10_000;
/// Closes of each side in one `close_10k` round.
const CLOSES: usize = 5;
/// The counts of the smoke run under `cargo test --benches`.
const SMOKE_TASKS: u64 = 1_000;
const SMOKE_IN_FLIGHT: usize = 100;
const HOUR: Duration = Duration::from_secs(3600);

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a multi-thread runtime")
}

/// What the outputs of `tasks` trivial tasks add up to.
fn sum_of(tasks: u64) -> u64 {
    tasks * (tasks - 1) / 2
}

/// A trivial task.
async fn trivial(i: u64) -> u64 {
    black_box(i)
}

async fn async_executor_await(tasks: u64) {
    let executor = AsyncExecutor::new(CONCURRENCY).unwrap();
    let mut handles = Vec::with_capacity(tasks as usize);
    for i in 0..tasks {
        handles.push(executor.spawn(trivial(i)).await.expect("an open executor"));
    }
    let mut sum = 0;
    for handle in handles {
        sum += handle.await.expect("a task that completes");
    }
    assert_eq!(sum, sum_of(tasks));
}

async fn async_executor_shutdown(tasks: u64) {
    let executor = AsyncExecutor::new(CONCURRENCY).unwrap();
    for i in 0..tasks {
        drop(executor.spawn(trivial(i)).await.expect("an open executor"));
    }
    executor.close().await.expect("a clean shutdown");
    assert_eq!(executor.in_flight(), 0);
}

async fn tracker_semaphore(tasks: u64) {
    let tracker = TaskTracker::new();
    let permits = Arc::new(Semaphore::new(CONCURRENCY));
    for i in 0..tasks {
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
    assert!(tracker.is_empty());
}

async fn joinset_drain(tasks: u64) {
    let mut set = JoinSet::new();
    let mut sum = 0;
    for i in 0..tasks {
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
    assert_eq!(sum, sum_of(tasks));
}

async fn tokio_spawn(tasks: u64) {
    let handles: Vec<_> = (0..tasks).map(|i| tokio::spawn(trivial(i))).collect();
    let mut sum = 0;
    for handle in handles {
        sum += handle.await.expect("a task that completes");
    }
    assert_eq!(sum, sum_of(tasks));
}

/// Milliseconds `work` takes, run as a task on a worker of `rt`.
fn ms_on_worker(rt: &Runtime, work: impl Future<Output = ()> + Send + 'static) -> f64 {
    rt.block_on(rt.spawn(async move {
        let start = Instant::now();
        work.await;
        start.elapsed()
    }))
    .expect("the workload panicked")
    .as_secs_f64()
        * 1e3
}

/// Waits until `started` reaches `n`: every task has been polled and is asleep.
async fn all_started(started: &AtomicUsize, n: usize) {
    while started.load(Ordering::Acquire) < n {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Starts `n` sleeping tasks on an executor, then times its shutdown.
async fn close_executor(n: usize) -> Duration {
    let executor = AsyncExecutor::builder(n)
        .shutdown_timeout(Duration::ZERO)
        .build()
        .unwrap();
    let started = Arc::new(AtomicUsize::new(0));
    for _ in 0..n {
        let started = started.clone();
        let task = executor.spawn(async move {
            started.fetch_add(1, Ordering::AcqRel);
            tokio::time::sleep(HOUR).await;
        });
        drop(task.await.expect("an open executor"));
    }
    all_started(&started, n).await;
    assert_eq!(executor.in_flight(), n);
    let start = Instant::now();
    let outcome = executor.close().await;
    let elapsed = start.elapsed();
    assert!(
        outcome.is_err(),
        "every task is aborted, and that is reported"
    );
    assert_eq!(executor.in_flight(), 0);
    elapsed
}

/// The same with a `TaskTracker`, a `Semaphore` and a `CancellationToken`.
async fn close_tracker(n: usize) -> Duration {
    let tracker = TaskTracker::new();
    let permits = Arc::new(Semaphore::new(n));
    let cancel = CancellationToken::new();
    let started = Arc::new(AtomicUsize::new(0));
    for _ in 0..n {
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
    all_started(&started, n).await;
    assert_eq!(tracker.len(), n);
    let start = Instant::now();
    cancel.cancel();
    tracker.close();
    tracker.wait().await;
    let elapsed = start.elapsed();
    assert!(tracker.is_empty());
    elapsed
}

/// The median, in milliseconds, of `CLOSES` closes timed by `close`, each run as a task
/// on a worker of `rt`.
fn close_round<Fut>(rt: &Runtime, close: impl Fn() -> Fut) -> f64
where
    Fut: Future<Output = Duration> + Send + 'static,
{
    let mut closes: Vec<f64> = (0..CLOSES)
        .map(|_| {
            rt.block_on(rt.spawn(close()))
                .expect("the close panicked")
                .as_secs_f64()
                * 1e3
        })
        .collect();
    median(&mut closes)
}

fn main() {
    let rt = runtime();
    if !selected("executor_overhead") {
        // `cargo test --benches`: one short pass over every operation.
        ms_on_worker(&rt, async_executor_shutdown(SMOKE_TASKS));
        ms_on_worker(&rt, async_executor_await(SMOKE_TASKS));
        ms_on_worker(&rt, tracker_semaphore(SMOKE_TASKS));
        ms_on_worker(&rt, joinset_drain(SMOKE_TASKS));
        ms_on_worker(&rt, tokio_spawn(SMOKE_TASKS));
        rt.block_on(rt.spawn(close_executor(SMOKE_IN_FLIGHT)))
            .expect("the close panicked");
        rt.block_on(rt.spawn(close_tracker(SMOKE_IN_FLIGHT)))
            .expect("the close panicked");
        return;
    }
    let mut results = Results::new("executor_overhead");
    let peer = || ms_on_worker(&rt, tracker_semaphore(TASKS));
    let peer_label = "TaskTracker + Semaphore(64)";
    // One unmeasured run of each, so that no side pays for the runtime's first growth.
    ms_on_worker(&rt, async_executor_shutdown(TASKS));
    ms_on_worker(&rt, async_executor_await(TASKS));
    peer();
    ms_on_worker(&rt, joinset_drain(TASKS));
    ms_on_worker(&rt, tokio_spawn(TASKS));

    results.paired(
        "spawn_200k_c64_shutdown_vs_tracker_semaphore",
        peer_label,
        "ms/run",
        Target::AtMost(1.10),
        paired(
            TARGET_ROUNDS,
            || ms_on_worker(&rt, async_executor_shutdown(TASKS)),
            peer,
        ),
    );
    results.paired(
        "spawn_200k_c64_await_vs_tracker_semaphore",
        peer_label,
        "ms/run",
        Target::Report,
        paired(
            ROUNDS,
            || ms_on_worker(&rt, async_executor_await(TASKS)),
            peer,
        ),
    );
    results.paired(
        "spawn_200k_c64_joinset_vs_tracker_semaphore",
        peer_label,
        "ms/run",
        Target::Report,
        paired(ROUNDS, || ms_on_worker(&rt, joinset_drain(TASKS)), peer),
    );
    results.paired(
        "spawn_200k_c64_tokio_spawn_vs_tracker_semaphore",
        peer_label,
        "ms/run",
        Target::Report,
        paired(ROUNDS, || ms_on_worker(&rt, tokio_spawn(TASKS)), peer),
    );

    close_round(&rt, || close_executor(IN_FLIGHT));
    close_round(&rt, || close_tracker(IN_FLIGHT));
    results.paired(
        "close_10k_vs_tracker_token",
        "TaskTracker + CancellationToken",
        "ms/close",
        Target::Report,
        paired(
            ROUNDS,
            || close_round(&rt, || close_executor(IN_FLIGHT)),
            || close_round(&rt, || close_tracker(IN_FLIGHT)),
        ),
    );
    results.write();
}
