//! What the derive costs against the same close written by hand, and what a concurrent
//! group buys. Run: `cargo bench -p resource-benches --bench close_overhead`.
//!
//! Every row is interleaved paired rounds (derived, by hand, derived, by hand, ... the
//! order alternating); a ratio is the median of the per-round ratios, printed with its
//! spread. In the fast rows a side's figure for a round is the median of `SLICES`
//! timed slices of about 250 µs each (10 000 closes of fresh structs, or about 250 µs
//! of calls calibrated per side): on a shared machine a preemption inflates the slice
//! it lands in, not the round's median, and both sides' slices, being about as long,
//! are hit about as often. Every close here completes at once, so its future is polled
//! once with a no-op waker: the figures are the code's own cost, not a runtime's.
//!
//! Two closes by hand are the peers, each over the same 16 fields, in reverse order:
//!
//! - guarded: the derive's guarantees written by hand. Each field's close future is
//!   made and polled inside `catch_unwind` (as the derive's step does, so a close that
//!   panics before its first `.await` is caught too), a panic becomes an error, and
//!   every failure is kept (`ResourceError::combine`). It does not name the field in a
//!   failure, which only costs when a close fails.
//! - plain: the close a careful user writes without the derive: every field closed,
//!   the first error kept, no panic guard (a panicking field unwinds through the caller
//!   and leaves the fields after it open).
//!
//! Rows:
//!
//! - `tokens_16`: 16 `CancellationToken` fields, whose close does real work (lock,
//!   flag, wake). A slice closes `BATCH` fresh structs, made before it and dropped
//!   after it. Target: derived / guarded ≤ 1.02. Against plain: reported, with the
//!   derive's cost a field, the median over the same rounds of the per-round
//!   difference (derived − plain) / 16.
//! - `sequential_16`: 16 fields whose close only checks and flips a flag: the worst
//!   case for the derive, since the plain close of such a field is a few stores. Each
//!   side reopens and closes one struct over and over (the reopen, 16 stores, is timed
//!   on both sides). The same three figures, reported.
//! - `sequential_16_fn_vs_impl`: the same 16 fields closed by `close = close_leaf`, a
//!   function that awaits the field's own close, against closed through their impl,
//!   both derived: what a user function's step (a function pointer, its result
//!   converted) costs over the field's own. Reported.
//! - `sleep_1ms_x16`: 16 fields whose close sleeps 1 ms, closed as one concurrent
//!   group against the same 16 closed one after another, on a current-thread tokio
//!   runtime, `SLOW_CLOSES` closes a side a round. Each side is a rate (closes a
//!   second), so the ratio group / sequential is how many times faster the group is.
//!   Target: ≥ 10.

use std::future::{Future, poll_fn};
use std::hint::black_box;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::{Pin, pin};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use resource_benches::{Paired, ROUNDS, Results, Target, median, ns_per_call, paired, selected};
use resource_runtime::{AsyncResource, ResourceError};
use tokio_util::sync::CancellationToken;

/// Fields in every struct here.
const FIELDS: usize = 16;
/// Rounds of the fast rows: more than the default, since a round is short (about
/// 10 ms a side) and the `tokens_16` target is tight.
const FAST_ROUNDS: usize = 61;
/// Slices per side per round of the fast rows; a round's figure is their median.
const SLICES: usize = 40;
/// About how long a slice of `Leaf` closes takes, in ns: each side's calls a slice are
/// calibrated to it, so both sides' slices are equally exposed to preemption.
const SLICE_NS: f64 = 250_000.0;
/// Fresh `CancellationToken` structs in a slice, made before it and dropped after it
/// (4 000 tokens; 10 000 closes a round).
const BATCH: usize = 250;
/// Closes of the 1 ms structs per side per round.
const SLOW_CLOSES: u32 = 5;

/// A resource whose close does the least a real one does: check, flip, count.
#[derive(Default)]
struct Leaf {
    open: bool,
    closes: u64,
}

impl AsyncResource for Leaf {
    async fn close(&mut self) -> Result<(), ResourceError> {
        if !self.open {
            return Ok(());
        }
        self.open = false;
        self.closes += 1;
        Ok(())
    }
}

/// `Leaf`'s close as a function of the crate's own, for `close = close_leaf`: the same
/// work through a user function's step.
async fn close_leaf(leaf: &mut Leaf) -> Result<(), ResourceError> {
    leaf.close().await
}

/// A struct of 16 fields of one type.
trait Sixteen: Default {
    type Field;
    fn fields(&mut self) -> [&mut Self::Field; FIELDS];
}

macro_rules! sixteen {
    ($(#[$attr:meta])* $name:ident, $field:ty $(, #[$fattr:meta])?) => {
        $(#[$attr])*
        #[derive(Default)]
        struct $name {
            $(#[$fattr])? f00: $field, $(#[$fattr])? f01: $field, $(#[$fattr])? f02: $field,
            $(#[$fattr])? f03: $field, $(#[$fattr])? f04: $field, $(#[$fattr])? f05: $field,
            $(#[$fattr])? f06: $field, $(#[$fattr])? f07: $field, $(#[$fattr])? f08: $field,
            $(#[$fattr])? f09: $field, $(#[$fattr])? f10: $field, $(#[$fattr])? f11: $field,
            $(#[$fattr])? f12: $field, $(#[$fattr])? f13: $field, $(#[$fattr])? f14: $field,
            $(#[$fattr])? f15: $field,
        }

        impl Sixteen for $name {
            type Field = $field;

            fn fields(&mut self) -> [&mut $field; FIELDS] {
                [
                    &mut self.f00, &mut self.f01, &mut self.f02, &mut self.f03,
                    &mut self.f04, &mut self.f05, &mut self.f06, &mut self.f07,
                    &mut self.f08, &mut self.f09, &mut self.f10, &mut self.f11,
                    &mut self.f12, &mut self.f13, &mut self.f14, &mut self.f15,
                ]
            }
        }
    };
}

/// The two closes by hand of a `sixteen!` struct, one statement a field as a user
/// writes them (the derive's expansion is one statement a field too).
macro_rules! by_hand {
    ($name:ident) => {
        impl $name {
            /// Every field in reverse, the first error kept, no panic guard.
            async fn close(&mut self) -> Result<(), ResourceError> {
                let mut first: Option<ResourceError> = None;
                by_hand!(@plain self first f15 f14 f13 f12 f11 f10 f09 f08 f07 f06 f05 f04 f03 f02 f01 f00);
                first.map_or(Ok(()), Err)
            }

            /// Every field in reverse, each close made and polled inside a panic guard,
            /// every failure kept.
            async fn close_guarded(&mut self) -> Result<(), ResourceError> {
                let mut failures: Option<ResourceError> = None;
                by_hand!(@guarded self failures f15 f14 f13 f12 f11 f10 f09 f08 f07 f06 f05 f04 f03 f02 f01 f00);
                failures.map_or(Ok(()), Err)
            }
        }
    };
    (@plain $this:ident $first:ident $($f:ident)*) => {$(
        if let Err(e) = AsyncResource::close(&mut $this.$f).await {
            $first.get_or_insert(e);
        }
    )*};
    (@guarded $this:ident $failures:ident $($f:ident)*) => {$(
        {
            let field = &mut $this.$f;
            // Moves `field` into the close (an `FnOnce`, like the derive's).
            let mut make = Some(move || {
                let field = field;
                AsyncResource::close(field)
            });
            let mut running = pin!(None);
            let outcome = poll_fn(|cx| poll_guarded(&mut make, running.as_mut(), cx)).await;
            if let Err(e) = outcome {
                $failures = Some(match $failures.take() {
                    None => e,
                    Some(before) => before.combine(e),
                });
            }
        }
    )*};
}

/// One poll of a field's close under a panic guard: the future is made on the first
/// poll, inside the guard, and a panic in making or polling it becomes an error.
#[inline]
fn poll_guarded<M, F>(
    make: &mut Option<M>,
    mut running: Pin<&mut Option<F>>,
    cx: &mut Context<'_>,
) -> Poll<Result<(), ResourceError>>
where
    M: FnOnce() -> F,
    F: Future<Output = Result<(), ResourceError>>,
{
    let polled = catch_unwind(AssertUnwindSafe(|| {
        if let Some(make) = make.take() {
            running.set(Some(make()));
        }
        match running.as_mut().as_pin_mut() {
            Some(fut) => fut.poll(cx),
            None => Poll::Ready(Err(ResourceError::other(
                "a close polled after it panicked",
            ))),
        }
    }));
    match polled {
        Ok(poll) => poll,
        Err(payload) => {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a close panicked".to_owned());
            Poll::Ready(Err(ResourceError::other(message)))
        }
    }
}

sixteen!(#[derive(AsyncResource)] DerivedLeaves, Leaf, #[resource]);
sixteen!(#[derive(AsyncResource)] DerivedLeafFns, Leaf, #[resource(close = close_leaf)]);
sixteen!(HandLeaves, Leaf);
by_hand!(HandLeaves);

sixteen!(#[derive(AsyncResource)] DerivedTokens, CancellationToken, #[resource]);
sixteen!(HandTokens, CancellationToken);
by_hand!(HandTokens);

/// A resource whose close takes 1 ms.
#[derive(Default)]
struct Slow;

impl AsyncResource for Slow {
    async fn close(&mut self) -> Result<(), ResourceError> {
        tokio::time::sleep(Duration::from_millis(1)).await;
        Ok(())
    }
}

sixteen!(#[derive(AsyncResource)] #[resource(concurrent)] SlowGroup, Slow, #[resource]);
sixteen!(#[derive(AsyncResource)] SlowSequential, Slow, #[resource]);

/// Polls a future that completes at once; panics if it does not.
fn poll_once<F: Future>(fut: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(fut).poll(&mut cx) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("the close was expected to complete without waiting"),
    }
}

/// The median of `slices` figures of `slice`: a round's figure. On a shared machine a
/// preemption inflates the slice it lands in, not the median, as long as a slice is
/// short against the scheduler's time slice (a few ms) and both sides' slices are
/// about as long, so that both are hit as often.
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

/// Reopens and closes `s`.
fn reopen_close<S, C>(s: &mut S, close: &C)
where
    S: Sixteen<Field = Leaf>,
    C: Fn(&mut S) -> Result<(), ResourceError>,
{
    for f in s.fields() {
        f.open = true;
    }
    black_box(close(black_box(&mut *s))).expect("a leaf closes");
}

/// A round of reopen-and-close calls of `s`: nanoseconds a call, the median of
/// `slices` slices of `calls` calls.
fn leaf_closes<S, C>(slices: usize, calls: u64, s: &mut S, close: &C) -> f64
where
    S: Sixteen<Field = Leaf>,
    C: Fn(&mut S) -> Result<(), ResourceError>,
{
    sliced(slices, || ns_per_call(calls, || reopen_close(s, close)))
}

/// How many times each field of `s` was closed, checked to be the same for all.
fn leaf_count<S: Sixteen<Field = Leaf>>(s: &mut S) -> u64 {
    let counts: Vec<u64> = s.fields().iter().map(|f| f.closes).collect();
    assert!(counts.iter().all(|&c| c == counts[0]), "{counts:?}");
    counts[0]
}

/// Nanoseconds per close of a fresh struct of tokens: the median of `slices` batches
/// of `batch` structs, each made before and dropped after its timed closes. Checks
/// that every token was cancelled.
fn token_closes<S, C>(slices: usize, batch: usize, close: C) -> f64
where
    S: Sixteen<Field = CancellationToken>,
    C: Fn(&mut S) -> Result<(), ResourceError>,
{
    sliced(slices, || {
        let mut structs: Vec<S> = (0..batch).map(|_| S::default()).collect();
        let start = Instant::now();
        for s in &mut structs {
            black_box(close(black_box(s))).expect("a token closes");
        }
        let elapsed = start.elapsed();
        for s in &mut structs {
            assert!(
                s.fields().iter().all(|t| t.is_cancelled()),
                "a token left open"
            );
        }
        elapsed.as_nanos() as f64 / batch as f64
    })
}

/// Closes a struct of 1 ms fields `closes` times on `rt`; returns closes a second.
fn slow_rate<S: AsyncResource + Default>(rt: &tokio::runtime::Runtime, closes: u32) -> f64 {
    rt.block_on(async {
        let start = Instant::now();
        for _ in 0..closes {
            S::default().close().await.expect("a slow close succeeds");
        }
        f64::from(closes) / start.elapsed().as_secs_f64()
    })
}

/// [`paired`], and the median and spread (min, max) of the per-round differences
/// ours − peer.
fn paired_with_difference(
    ours: impl FnMut() -> f64,
    peer: impl FnMut() -> f64,
) -> (Paired, f64, f64, f64) {
    let (mut ours, mut peer) = (ours, peer);
    let (mut o, mut p) = (Vec::new(), Vec::new());
    let measured = paired(
        FAST_ROUNDS,
        || {
            let v = ours();
            o.push(v);
            v
        },
        || {
            let v = peer();
            p.push(v);
            v
        },
    );
    let mut differences: Vec<f64> = o.iter().zip(&p).map(|(a, b)| a - b).collect();
    let mid = median(&mut differences);
    (
        measured,
        mid,
        differences[0],
        differences[differences.len() - 1],
    )
}

/// The three rows of one field type: derived against guarded, derived against plain,
/// and the derive's cost a field over the plain close.
fn rows(
    results: &mut Results,
    name: &str,
    guarded_target: Target,
    mut derived: impl FnMut() -> f64,
    mut guarded: impl FnMut() -> f64,
    mut plain: impl FnMut() -> f64,
) {
    let ns = "ns/close";
    results.paired(
        &format!("{name}_derived_vs_guarded"),
        "hand-written close with a panic guard a field, every failure kept",
        ns,
        guarded_target,
        paired(FAST_ROUNDS, &mut derived, &mut guarded),
    );
    let (measured, per_close, min, max) = paired_with_difference(&mut derived, &mut plain);
    results.paired(
        &format!("{name}_derived_vs_plain"),
        "hand-written close, first error kept, no panic guard",
        ns,
        Target::Report,
        measured,
    );
    let field = FIELDS as f64;
    results.figure(
        &format!("{name}_derive_cost_per_field"),
        "ns/field",
        per_close / field,
    );
    println!(
        "close_overhead/{name}_derive_cost_per_field: (derived − plain) / {FIELDS}, median of {FAST_ROUNDS} rounds; spread {:.3}–{:.3} ns/field",
        min / field,
        max / field,
    );
}

/// `cargo test --benches`: every close once, and the guard of the guarded peer.
fn smoke() {
    let (mut derived, mut hand) = (DerivedLeaves::default(), HandLeaves::default());
    reopen_close(&mut derived, &|s: &mut DerivedLeaves| poll_once(s.close()));
    reopen_close(&mut hand, &|s: &mut HandLeaves| poll_once(s.close()));
    reopen_close(&mut hand, &|s: &mut HandLeaves| {
        poll_once(s.close_guarded())
    });
    let mut fns = DerivedLeafFns::default();
    reopen_close(&mut fns, &|s: &mut DerivedLeafFns| poll_once(s.close()));
    assert_eq!(leaf_count(&mut derived), 1);
    assert_eq!(leaf_count(&mut hand), 2);
    assert_eq!(leaf_count(&mut fns), 1);
    token_closes::<DerivedTokens, _>(1, 2, |s| poll_once(s.close()));
    token_closes::<HandTokens, _>(1, 2, |s| poll_once(s.close()));
    token_closes::<HandTokens, _>(1, 2, |s| poll_once(s.close_guarded()));
    // The guard catches a panic in making the future and in polling it.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut cx = Context::from_waker(Waker::noop());
    let mut make = Some(|| -> std::future::Ready<Result<(), ResourceError>> { panic!("made") });
    let made = poll_guarded(&mut make, pin!(None).as_mut(), &mut cx);
    let mut make = Some(|| async {
        if black_box(true) {
            panic!("polled");
        }
        Ok(())
    });
    let polled = poll_guarded(&mut make, pin!(None).as_mut(), &mut cx);
    std::panic::set_hook(hook);
    for (poll, message) in [(made, "made"), (polled, "polled")] {
        match poll {
            Poll::Ready(Err(e)) => assert_eq!(e.to_string(), message),
            other => panic!("the guard let {other:?} through"),
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime");
    slow_rate::<SlowGroup>(&rt, 1);
    slow_rate::<SlowSequential>(&rt, 1);
}

fn main() {
    if !selected("close_overhead") {
        smoke();
        return;
    }
    let mut results = Results::new("close_overhead");

    // Fields with a real close: `CancellationToken::cancel` takes the token's lock,
    // flips its state and wakes its waiters.
    rows(
        &mut results,
        "tokens_16",
        Target::AtMost(1.02),
        || token_closes::<DerivedTokens, _>(SLICES, BATCH, |s| poll_once(s.close())),
        || token_closes::<HandTokens, _>(SLICES, BATCH, |s| poll_once(s.close_guarded())),
        || token_closes::<HandTokens, _>(SLICES, BATCH, |s| poll_once(s.close())),
    );

    let derived_close = |s: &mut DerivedLeaves| poll_once(s.close());
    let guarded_close = |s: &mut HandLeaves| poll_once(s.close_guarded());
    let plain_close = |s: &mut HandLeaves| poll_once(s.close());
    let mut derived = DerivedLeaves::default();
    let (mut guarded, mut plain) = (HandLeaves::default(), HandLeaves::default());
    let derived_calls = calibrate(|| reopen_close(&mut derived, &derived_close));
    let guarded_calls = calibrate(|| reopen_close(&mut guarded, &guarded_close));
    let plain_calls = calibrate(|| reopen_close(&mut plain, &plain_close));
    rows(
        &mut results,
        "sequential_16",
        Target::Report,
        || leaf_closes(SLICES, derived_calls, &mut derived, &derived_close),
        || leaf_closes(SLICES, guarded_calls, &mut guarded, &guarded_close),
        || leaf_closes(SLICES, plain_calls, &mut plain, &plain_close),
    );
    // Every reopen closed every field once: 5 trials of 1 000 calls to calibrate, then
    // the rounds (the derived side's in both rows).
    let calls =
        |per_slice: u64, rows: u64| 5_000 + rows * (FAST_ROUNDS * SLICES) as u64 * per_slice;
    assert_eq!(leaf_count(&mut derived), calls(derived_calls, 2));
    assert_eq!(leaf_count(&mut guarded), calls(guarded_calls, 1));
    assert_eq!(leaf_count(&mut plain), calls(plain_calls, 1));

    let fn_close = |s: &mut DerivedLeafFns| poll_once(s.close());
    let mut fns = DerivedLeafFns::default();
    let fn_calls = calibrate(|| reopen_close(&mut fns, &fn_close));
    let impl_calls = calibrate(|| reopen_close(&mut derived, &derived_close));
    results.paired(
        "sequential_16_fn_vs_impl",
        "the same fields closed through their impl, derived",
        "ns/close",
        Target::Report,
        paired(
            FAST_ROUNDS,
            || leaf_closes(SLICES, fn_calls, &mut fns, &fn_close),
            || leaf_closes(SLICES, impl_calls, &mut derived, &derived_close),
        ),
    );
    assert_eq!(
        leaf_count(&mut fns),
        5_000 + (FAST_ROUNDS * SLICES) as u64 * fn_calls
    );

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime");
    results.paired(
        "sleep_1ms_x16_group_vs_sequential",
        "the same 16 closed in sequence",
        "closes/s",
        Target::AtLeast(10.0),
        paired(
            ROUNDS,
            || slow_rate::<SlowGroup>(&rt, SLOW_CLOSES),
            || slow_rate::<SlowSequential>(&rt, SLOW_CLOSES),
        ),
    );
    results.write();
}
