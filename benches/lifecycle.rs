//! What `scope` and `ResourceStack` cost. Run: `cargo bench -p resource-benches --bench lifecycle`.
//!
//! - `scope_worker`: `scope(resource, body)` around a trivial body against the same
//!   enter, body and close written by hand, for a derived resource of two
//!   `CancellationToken`s. Target: scope / hand <= 1.10. `scope` does the same for a
//!   resource whose enter and close only flip a flag: the worst case, reported.
//! - `stack_16`: 16 resources entered into a `ResourceStack` and closed, against a
//!   derived struct of the same 16 fields entered and closed. The stack boxes each
//!   resource and each close future; the ratio says what that costs per resource.
//!
//! Every future here completes without waiting, so each is polled once with a no-op
//! waker: the figures are the code's own cost, not a runtime's.

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use resource_runtime::{AsyncResource, ResourceError, ResourceStack, scope};
use tokio_util::sync::CancellationToken;

/// A resource whose enter and close do the least a real one does.
#[derive(Default)]
struct Leaf {
    open: bool,
}

impl AsyncResource for Leaf {
    async fn enter(&mut self) -> Result<(), ResourceError> {
        self.open = true;
        Ok(())
    }

    async fn close(&mut self) -> Result<(), ResourceError> {
        self.open = false;
        Ok(())
    }
}

fn poll_once<F: Future>(fut: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(fut).poll(&mut cx) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("expected to complete without waiting"),
    }
}

async fn body(leaf: &mut Leaf) -> bool {
    black_box(leaf.open)
}

/// The same enter, body and close, written by hand.
async fn by_hand(mut leaf: Leaf) -> Result<bool, ResourceError> {
    leaf.enter().await?;
    let value = body(&mut leaf).await;
    leaf.close().await?;
    Ok(value)
}

fn scopes(c: &mut Criterion) {
    let mut group = c.benchmark_group("scope");
    group.bench_function("scope", |b| {
        b.iter(|| {
            let out = poll_once(scope(Leaf::default(), async |leaf: &mut Leaf| {
                body(leaf).await
            }));
            assert!(black_box(out).unwrap());
        })
    });
    group.bench_function("hand_written", |b| {
        b.iter(|| {
            let out = poll_once(by_hand(Leaf::default()));
            assert!(black_box(out).unwrap());
        })
    });
    group.finish();
}

/// A resource with a real close: two `CancellationToken`s (lock, flag, wake each).
#[derive(AsyncResource, Default)]
struct Worker {
    #[resource]
    stop: CancellationToken,
    #[resource]
    jobs: CancellationToken,
}

async fn worker_body(worker: &mut Worker) -> bool {
    black_box(worker.stop.is_cancelled())
}

async fn worker_by_hand(mut worker: Worker) -> Result<bool, ResourceError> {
    worker.enter().await?;
    let value = worker_body(&mut worker).await;
    worker.close().await?;
    Ok(value)
}

fn worker_scopes(c: &mut Criterion) {
    let mut group = c.benchmark_group("scope_worker");
    group.bench_function("scope", |b| {
        b.iter_batched(
            Worker::default,
            |worker| {
                let out = poll_once(scope(worker, async |w: &mut Worker| worker_body(w).await));
                assert!(!black_box(out).unwrap());
            },
            BatchSize::SmallInput,
        )
    });
    group.bench_function("hand_written", |b| {
        b.iter_batched(
            Worker::default,
            |worker| {
                let out = poll_once(worker_by_hand(worker));
                assert!(!black_box(out).unwrap());
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

macro_rules! sixteen {
    ($($f:ident)*) => {
        #[derive(AsyncResource, Default)]
        struct Sixteen { $(#[resource] $f: Leaf,)* }
    };
}

sixteen!(f00 f01 f02 f03 f04 f05 f06 f07 f08 f09 f10 f11 f12 f13 f14 f15);

fn stacks(c: &mut Criterion) {
    let mut group = c.benchmark_group("stack_16");
    group.bench_function("resource_stack", |b| {
        b.iter(|| {
            poll_once(async {
                let mut stack = ResourceStack::new();
                for _ in 0..16 {
                    stack.enter(Leaf::default()).await.unwrap();
                }
                stack.close().await.unwrap();
            })
        })
    });
    group.bench_function("derived", |b| {
        b.iter_batched_ref(
            Sixteen::default,
            |s| {
                poll_once(async {
                    s.enter().await.unwrap();
                    s.close().await.unwrap();
                })
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, scopes, worker_scopes, stacks);
criterion_main!(benches);
