//! Heap bytes an in-flight task costs on `AsyncExecutor`, against the tokio ways to run
//! it. Run: `cargo bench -p resource-benches --bench executor_memory`.
//!
//! A counting global allocator (`stats_alloc`, which needs no `unsafe` here: the
//! workspace forbids it) counts every byte allocated and freed in the process. For each
//! way to run tasks, 10 000 tasks are started from inside a task on a multi-thread
//! runtime, each asleep for an hour; once every one has been polled, the net bytes
//! allocated since just before the first spawn, over 10 000, is the row's figure. The
//! executor, the tracker and the vector that keeps the handles (to stop the tasks
//! afterwards) are made before the count starts, so only the tasks are counted. The
//! user's future is the same in every row (count, then sleep); what a row adds to
//! `tokio_spawn` is what that way of running tasks wraps around it:
//!
//! - `bytes_per_task_async_executor_vs_tracker_semaphore`: `AsyncExecutor` (built for
//!   10 000 at once) against `TaskTracker` + `Arc<Semaphore>`, the permit moved into the
//!   task: a paired row (`ROUNDS` interleaved rounds, each side measuring its 10 000
//!   tasks once a round; the ratio is the median of the per-round ratios, with its
//!   spread). The counts do not depend on timing, so the spread shows whether anything
//!   but the tasks was counted. Reported.
//! - `bytes_per_task_tokio_spawn`: `tokio::spawn`, unbounded: the floor. A figure (the
//!   median of 5 measures).
//! - `bytes_per_task_tracker_semaphore_token`: the tracker and semaphore, the task also
//!   selecting on a `CancellationToken` (what a bounded executor needs to abort at
//!   shutdown). A figure (the median of 5 measures).
//!
//! Every way is measured once, unrecorded, before the rows, so that what the runtime
//! makes lazily is not counted. A separate binary from `executor_overhead` because the
//! counting allocator slows every allocation.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use resource_benches::{ROUNDS, Results, Target, median, paired, selected};
use resource_runtime::executor::AsyncExecutor;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, Stats, StatsAlloc};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

const IN_FLIGHT: usize = 10_000;
const HOUR: Duration = Duration::from_secs(3600);
/// Rounds of a row recorded as a figure of its own (the median is recorded).
const FIGURE_ROUNDS: usize = 5;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    TokioSpawn,
    TrackerSemaphore,
    TrackerSemaphoreToken,
    AsyncExecutor,
}

impl Kind {
    const ALL: [Kind; 4] = [
        Kind::TokioSpawn,
        Kind::TrackerSemaphore,
        Kind::TrackerSemaphoreToken,
        Kind::AsyncExecutor,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::TokioSpawn => "tokio_spawn",
            Kind::TrackerSemaphore => "tracker_semaphore",
            Kind::TrackerSemaphoreToken => "tracker_semaphore_token",
            Kind::AsyncExecutor => "async_executor",
        }
    }
}

/// Net bytes still allocated: allocated, grown by reallocation, minus freed.
fn net(stats: Stats) -> isize {
    stats.bytes_allocated as isize + stats.bytes_reallocated - stats.bytes_deallocated as isize
}

/// The user's task: the same in every row.
async fn sleeper(started: Arc<AtomicUsize>) {
    started.fetch_add(1, Ordering::AcqRel);
    tokio::time::sleep(HOUR).await;
}

async fn all_started(started: &AtomicUsize) {
    while started.load(Ordering::Acquire) < IN_FLIGHT {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Starts `IN_FLIGHT` sleeping tasks the `kind` way and returns the net bytes allocated
/// while they are all in flight; stops them before returning.
async fn measure(kind: Kind) -> isize {
    let started = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::with_capacity(IN_FLIGHT);
    let mut executor_handles = Vec::with_capacity(IN_FLIGHT);
    let tracker = TaskTracker::new();
    let permits = Arc::new(Semaphore::new(IN_FLIGHT));
    let cancel = CancellationToken::new();
    let executor = AsyncExecutor::builder(IN_FLIGHT)
        .shutdown_timeout(Duration::ZERO)
        .build()
        .unwrap();

    let region = Region::new(GLOBAL);
    for _ in 0..IN_FLIGHT {
        let started = started.clone();
        match kind {
            Kind::TokioSpawn => handles.push(tokio::spawn(sleeper(started))),
            Kind::TrackerSemaphore => {
                let permit = permits.clone().acquire_owned().await.expect("a permit");
                handles.push(tracker.spawn(async move {
                    let _permit = permit;
                    sleeper(started).await;
                }));
            }
            Kind::TrackerSemaphoreToken => {
                let permit = permits.clone().acquire_owned().await.expect("a permit");
                let cancel = cancel.clone();
                handles.push(tracker.spawn(async move {
                    let _permit = permit;
                    tokio::select! {
                        () = cancel.cancelled() => {}
                        () = sleeper(started) => {}
                    }
                }));
            }
            Kind::AsyncExecutor => executor_handles.push(
                executor
                    .spawn(sleeper(started))
                    .await
                    .expect("an open executor"),
            ),
        }
    }
    all_started(&started).await;
    let bytes = net(region.change());

    cancel.cancel();
    for handle in &handles {
        handle.abort();
    }
    for handle in handles {
        let _ = handle.await;
    }
    // Aborted at once: the deadline is zero.
    let _ = executor.close().await;
    drop(executor_handles);
    tracker.close();
    tracker.wait().await;
    bytes
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a multi-thread runtime");
    let run = |kind| {
        rt.block_on(rt.spawn(measure(kind)))
            .expect("the measuring task panicked")
    };
    let bytes_per_task = |kind| run(kind) as f64 / IN_FLIGHT as f64;
    if !selected("executor_memory") {
        // `cargo test --benches`: one pass over every way to run the tasks.
        for kind in Kind::ALL {
            assert!(run(kind) > 0, "{} allocates", kind.name());
        }
        return;
    }
    // One unmeasured round of each: the runtime makes some of its own state lazily.
    for kind in Kind::ALL {
        run(kind);
    }
    let mut results = Results::new("executor_memory");
    let unit = "bytes/task";
    results.paired(
        "bytes_per_task_async_executor_vs_tracker_semaphore",
        "TaskTracker + Semaphore",
        unit,
        Target::Report,
        paired(
            ROUNDS,
            || bytes_per_task(Kind::AsyncExecutor),
            || bytes_per_task(Kind::TrackerSemaphore),
        ),
    );
    for kind in [Kind::TokioSpawn, Kind::TrackerSemaphoreToken] {
        let mut rounds: Vec<f64> = (0..FIGURE_ROUNDS).map(|_| bytes_per_task(kind)).collect();
        results.figure(
            &format!("bytes_per_task_{}", kind.name()),
            unit,
            median(&mut rounds),
        );
    }
    results.write();
}
