//! What `scope` and `ResourceStack` cost. Run: `cargo bench -p resource-benches --bench lifecycle`.
//!
//! Every row is interleaved paired rounds (ours, by hand, ours, by hand, ... the order
//! alternating). A round's figure for a side is the median of `SLICES` short timed
//! slices of calls: on a shared machine a preemption inflates the slice it lands in,
//! not the median, as long as a slice is short against the scheduler's time slice and
//! both sides' slices are about as long (each side's calls a slice are calibrated to
//! `SLICE_NS`). A ratio is the median of the per-round ratios, printed with its spread.
//! Every future here completes without waiting, so each is polled once with a no-op
//! waker: the figures are the code's own cost, not a runtime's.
//!
//! - `scope_worker`: `scope(worker, body)` around a trivial body against the same
//!   enter, body and close written by hand, for a derived resource of two
//!   `CancellationToken`s. The workers are made before a slice and moved into the
//!   calls one by one, the same way on both sides. Target: scope / hand ≤ 1.10.
//!   `scope_worker_vs_guarded` (reported) is against the same by hand with the
//!   guarantees `scope` gives: the enter, the body and the close each polled under a
//!   panic guard, the body's panic resumed after the close. It shows what of the cost
//!   is the guards rather than `scope`'s own bookkeeping.
//! - `scope_leaf`: the same for a resource whose enter and close only flip a flag:
//!   the worst case, reported.
//! - `stack_16`: 16 resources entered into a `ResourceStack` and closed, against a
//!   derived struct of the same 16 fields made, entered and closed. The stack boxes
//!   each resource and each close future; the ratio says what that costs. Reported.

use std::any::Any;
use std::future::{Future, poll_fn};
use std::hint::black_box;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use resource_benches::{Results, Target, median, ns_per_call, paired, selected};
use resource_runtime::{AsyncResource, ResourceError, ResourceStack, scope};
use tokio_util::sync::CancellationToken;

/// Rounds of every row: more than the default, since a round is short (about 10 ms a
/// side).
const ROUNDS: usize = 41;
/// Slices per side per round; a round's figure is their median.
const SLICES: usize = 40;
/// About how long a slice takes, in ns.
const SLICE_NS: f64 = 250_000.0;
/// Workers made for a slice of `scope_worker` (about `SLICE_NS` of calls).
const WORKERS: usize = 1_000;

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

/// The median of `slices` figures of `slice`.
fn sliced(slices: usize, mut slice: impl FnMut() -> f64) -> f64 {
    let mut figures: Vec<f64> = (0..slices).map(|_| slice()).collect();
    median(&mut figures)
}

/// How many calls of `op` take about `SLICE_NS`, from the fastest of a few trials.
fn calibrate(mut op: impl FnMut()) -> u64 {
    let fastest = (0..5)
        .map(|_| ns_per_call(1_000, &mut op))
        .fold(f64::INFINITY, f64::min);
    ((SLICE_NS / fastest) as u64).clamp(100, 1_000_000)
}

/// A round of `calls` calls of `op` a slice: nanoseconds a call, the median of the
/// slices.
fn round(calls: u64, mut op: impl FnMut()) -> f64 {
    sliced(SLICES, || ns_per_call(calls, &mut op))
}

async fn body(leaf: &mut Leaf) -> bool {
    black_box(leaf.open)
}

/// The same enter, body and close as `scope`'s, written by hand.
async fn by_hand(mut leaf: Leaf) -> Result<bool, ResourceError> {
    leaf.enter().await?;
    let value = body(&mut leaf).await;
    leaf.close().await?;
    Ok(value)
}

fn leaf_scope() {
    let out = poll_once(scope(Leaf::default(), async |leaf: &mut Leaf| {
        body(leaf).await
    }));
    assert!(black_box(out).expect("a leaf scope succeeds"));
}

fn leaf_by_hand() {
    let out = poll_once(by_hand(Leaf::default()));
    assert!(black_box(out).expect("a leaf closes"));
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

fn worker_scope(worker: Worker) {
    let out = poll_once(scope(worker, async |w: &mut Worker| worker_body(w).await));
    assert!(!black_box(out).expect("a worker scope succeeds"));
}

fn worker_hand(worker: Worker) {
    let out = poll_once(worker_by_hand(worker));
    assert!(!black_box(out).expect("a worker closes"));
}

/// Polls `fut` with every poll inside `catch_unwind`, as the runtime's panic guard
/// does: a panic becomes its payload.
async fn caught<F: Future>(fut: F) -> Result<F::Output, Box<dyn Any + Send>> {
    let mut fut = pin!(fut);
    poll_fn(
        |cx| match catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(cx))) {
            Ok(Poll::Ready(value)) => Poll::Ready(Ok(value)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(payload) => Poll::Ready(Err(payload)),
        },
    )
    .await
}

/// An enter or close under a panic guard, a panic reported as an error.
async fn step(fut: impl Future<Output = Result<(), ResourceError>>) -> Result<(), ResourceError> {
    caught(fut)
        .await
        .unwrap_or_else(|_| Err(ResourceError::other("the step panicked")))
}

/// The same enter, body and close by hand, each under its own panic guard as in
/// `scope` (a body that panics is resumed once the worker is closed).
async fn worker_guarded(mut worker: Worker) -> Result<bool, ResourceError> {
    step(async { worker.enter().await }).await?;
    let value = caught(worker_body(&mut worker)).await;
    let closed = step(async { worker.close().await }).await;
    match value {
        Ok(value) => closed.map(|()| value),
        Err(payload) => resume_unwind(payload),
    }
}

fn worker_hand_guarded(worker: Worker) {
    let out = poll_once(worker_guarded(worker));
    assert!(!black_box(out).expect("a worker closes"));
}

/// Nanoseconds a call of `run` on fresh workers: the median of `SLICES` slices of
/// `workers` workers, made before each slice (and dropped by `run`, as by a user).
fn worker_round(slices: usize, workers: usize, run: fn(Worker)) -> f64 {
    sliced(slices, || {
        let made: Vec<Worker> = (0..workers).map(|_| Worker::default()).collect();
        let start = Instant::now();
        for worker in made {
            run(black_box(worker));
        }
        start.elapsed().as_nanos() as f64 / workers as f64
    })
}

/// Checks that `run` closes both tokens of a worker.
fn worker_closed(run: fn(Worker)) {
    let worker = Worker::default();
    let tokens = [worker.stop.clone(), worker.jobs.clone()];
    run(worker);
    assert!(
        tokens.iter().all(CancellationToken::is_cancelled),
        "a worker left open"
    );
}

macro_rules! sixteen {
    ($($f:ident)*) => {
        #[derive(AsyncResource, Default)]
        struct Sixteen { $(#[resource] $f: Leaf,)* }

        impl Sixteen {
            fn any_open(&self) -> bool {
                false $(|| self.$f.open)*
            }
        }
    };
}

sixteen!(f00 f01 f02 f03 f04 f05 f06 f07 f08 f09 f10 f11 f12 f13 f14 f15);

/// 16 leaves entered into a stack, then the stack closed.
fn stack_16() {
    poll_once(async {
        let mut stack = ResourceStack::new();
        for _ in 0..16 {
            stack.enter(Leaf::default()).await.expect("a leaf enters");
        }
        black_box(&mut stack);
        stack.close().await.expect("the stack closes");
    });
}

/// A derived struct of 16 leaves made, entered and closed.
fn derived_16() {
    poll_once(async {
        let mut s = Sixteen::default();
        s.enter().await.expect("the struct enters");
        black_box(&mut s);
        s.close().await.expect("the struct closes");
        assert!(!s.any_open());
    });
}

fn main() {
    if !selected("lifecycle") {
        // `cargo test --benches`: every operation once.
        leaf_scope();
        leaf_by_hand();
        worker_closed(worker_scope);
        worker_closed(worker_hand);
        worker_closed(worker_hand_guarded);
        worker_round(1, 2, worker_scope);
        worker_round(1, 2, worker_hand);
        stack_16();
        derived_16();
        return;
    }
    let mut results = Results::new("lifecycle");
    let ns = "ns/call";

    results.paired(
        "scope_worker",
        "the same enter, body and close by hand",
        ns,
        Target::AtMost(1.10),
        paired(
            ROUNDS,
            || worker_round(SLICES, WORKERS, worker_scope),
            || worker_round(SLICES, WORKERS, worker_hand),
        ),
    );

    results.paired(
        "scope_worker_vs_guarded",
        "the same by hand with a panic guard around enter, body and close",
        ns,
        Target::Report,
        paired(
            ROUNDS,
            || worker_round(SLICES, WORKERS, worker_scope),
            || worker_round(SLICES, WORKERS, worker_hand_guarded),
        ),
    );

    let (scope_calls, hand_calls) = (calibrate(leaf_scope), calibrate(leaf_by_hand));
    results.paired(
        "scope_leaf",
        "the same enter, body and close by hand",
        ns,
        Target::Report,
        paired(
            ROUNDS,
            || round(scope_calls, leaf_scope),
            || round(hand_calls, leaf_by_hand),
        ),
    );

    let (stack_calls, derived_calls) = (calibrate(stack_16), calibrate(derived_16));
    results.paired(
        "stack_16",
        "a derived struct of the same 16 fields, made, entered and closed",
        ns,
        Target::Report,
        paired(
            ROUNDS,
            || round(stack_calls, stack_16),
            || round(derived_calls, derived_16),
        ),
    );
    results.write();
}
