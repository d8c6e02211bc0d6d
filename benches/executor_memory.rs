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
//! - `tokio_spawn`: `tokio::spawn`, unbounded: the floor;
//! - `tracker_semaphore`: `TaskTracker` + `Arc<Semaphore>`, the permit moved into the
//!   task: the peer of the ratio;
//! - `tracker_semaphore_token`: the same, the task also selecting on a
//!   `CancellationToken` (what a bounded executor needs to abort at shutdown);
//! - `async_executor`: `AsyncExecutor::new(10_000).unwrap().spawn(...)`.
//!
//! Each row is measured 3 times, after one unmeasured round that lets the runtime make
//! whatever it makes lazily; the median is reported. A separate binary from
//! `executor_overhead` because the counting allocator slows every allocation.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use resource_runtime::executor::AsyncExecutor;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, Stats, StatsAlloc};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

const IN_FLIGHT: usize = 10_000;
const HOUR: Duration = Duration::from_secs(3600);
const ROUNDS: usize = 3;

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
    for kind in Kind::ALL {
        run(kind);
    }

    println!("executor_memory: heap bytes per in-flight task ({IN_FLIGHT} tasks asleep)");
    println!(
        "{:<24} {:>10} {:>12}  rounds",
        "row", "bytes/task", "vs tracker"
    );
    let mut floor = None;
    let mut results = Vec::new();
    for kind in Kind::ALL {
        let mut rounds: Vec<isize> = (0..ROUNDS).map(|_| run(kind)).collect();
        rounds.sort_unstable();
        let per_task = rounds[ROUNDS / 2] as f64 / IN_FLIGHT as f64;
        if kind == Kind::TrackerSemaphore {
            floor = Some(per_task);
        }
        results.push((kind, per_task, rounds));
    }
    let floor = floor.expect("the tracker row ran");
    for (kind, per_task, rounds) in results {
        println!(
            "{:<24} {:>10.1} {:>12.3}  {:?}",
            kind.name(),
            per_task,
            per_task / floor,
            rounds
        );
    }
}
