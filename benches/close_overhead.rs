//! What the derive costs against the same close written by hand, and what a concurrent
//! group buys. Run: `cargo bench -p resource-benches --bench close_overhead`.
//!
//! - `sequential_16`: the derived close of a 16-field struct against the close a careful
//!   user writes by hand (reverse order, every field closed, first error kept). Every
//!   field completes at once, so the future is polled once with a no-op waker: this
//!   measures the generated code alone, not a runtime: the worst case for the derive,
//!   since the hand-written close of such a field compiles to a few stores.
//! - `tokens_16`: the same with `CancellationToken` fields, whose close does real
//!   work (lock, flag, wake). Target: derived / hand <= 1.05. `hand_written_guarded`
//!   is the same close as the derive's written by hand (a panic guard on every poll,
//!   every failure kept), to show what the guarantees cost apart from the derive.
//! - `sleep_1ms_x16`: 16 fields whose close sleeps 1 ms, closed as one concurrent
//!   group against closed one after another. Target: >= 10x faster.

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use resource_runtime::{AsyncResource, ResourceError};
use tokio_util::sync::CancellationToken;

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

        impl $name {
            #[allow(dead_code)]
            fn fields(&mut self) -> [&mut $field; 16] {
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

sixteen!(#[derive(AsyncResource)] Derived, Leaf, #[resource]);
sixteen!(Hand, Leaf);

impl Hand {
    /// The close a careful user writes without the derive.
    async fn close(&mut self) -> Result<(), ResourceError> {
        let mut first: Option<ResourceError> = None;
        macro_rules! close {
            ($($f:ident)*) => {$(
                if let Err(e) = self.$f.close().await {
                    first.get_or_insert(e);
                }
            )*};
        }
        close!(f15 f14 f13 f12 f11 f10 f09 f08 f07 f06 f05 f04 f03 f02 f01 f00);
        first.map_or(Ok(()), Err)
    }
}

fn reopen(fields: [&mut Leaf; 16]) {
    for f in fields {
        f.open = true;
    }
}

/// Polls a future that completes at once; panics if it does not.
fn poll_once<F: Future>(fut: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(fut).poll(&mut cx) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("the close was expected to complete without waiting"),
    }
}

fn sequential(c: &mut Criterion) {
    let mut group = c.benchmark_group("sequential_16");
    let mut derived = Derived::default();
    group.bench_function("derived", |b| {
        b.iter(|| {
            reopen(derived.fields());
            black_box(poll_once(black_box(&mut derived).close())).unwrap();
        })
    });
    let mut hand = Hand::default();
    group.bench_function("hand_written", |b| {
        b.iter(|| {
            reopen(hand.fields());
            black_box(poll_once(black_box(&mut hand).close())).unwrap();
        })
    });
    group.finish();
    // Every field closed once per iteration (all zero when a filter skipped the run).
    for counts in [closes(derived.fields()), closes(hand.fields())] {
        assert!(counts.iter().all(|&c| c == counts[0]), "{counts:?}");
    }
}

fn closes(fields: [&mut Leaf; 16]) -> Vec<u64> {
    fields.iter().map(|f| f.closes).collect()
}

sixteen!(#[derive(AsyncResource)] DerivedTokens, CancellationToken, #[resource]);
sixteen!(HandTokens, CancellationToken);

impl HandTokens {
    async fn close(&mut self) -> Result<(), ResourceError> {
        let mut first: Option<ResourceError> = None;
        for token in self.fields().into_iter().rev() {
            if let Err(e) = token.close().await {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }
}

impl HandTokens {
    /// The same close as the derive's, written by hand: every field closed in reverse,
    /// each poll guarded against panics, every failure kept.
    async fn close_guarded(&mut self) -> Result<(), Vec<String>> {
        let mut failures = Vec::new();
        for token in self.fields().into_iter().rev() {
            let mut close = pin!(token.close());
            let outcome = std::future::poll_fn(|cx| {
                match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    close.as_mut().poll(cx)
                })) {
                    Ok(Poll::Pending) => Poll::Pending,
                    Ok(Poll::Ready(result)) => Poll::Ready(result.map_err(|e| e.to_string())),
                    Err(_) => Poll::Ready(Err("panicked".to_owned())),
                }
            })
            .await;
            if let Err(e) = outcome {
                failures.push(e);
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(failures)
        }
    }
}

/// Fields with a real close: `CancellationToken::cancel` takes the token's lock, flips
/// its state and wakes its waiters. The tokens are made outside the measurement.
fn tokens(c: &mut Criterion) {
    let mut group = c.benchmark_group("tokens_16");
    group.bench_function("derived", |b| {
        b.iter_batched_ref(
            DerivedTokens::default,
            |s| black_box(poll_once(s.close())).unwrap(),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("hand_written", |b| {
        b.iter_batched_ref(
            HandTokens::default,
            |s| black_box(poll_once(s.close())).unwrap(),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("hand_written_guarded", |b| {
        b.iter_batched_ref(
            HandTokens::default,
            |s| black_box(poll_once(s.close_guarded())).unwrap(),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

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

fn grouped(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime");
    let mut group = c.benchmark_group("sleep_1ms_x16");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(4));
    group.bench_function("group", |b| {
        b.to_async(&rt).iter(|| async {
            let mut s = SlowGroup::default();
            s.close().await.unwrap();
        })
    });
    group.bench_function("sequential", |b| {
        b.to_async(&rt).iter(|| async {
            let mut s = SlowSequential::default();
            s.close().await.unwrap();
        })
    });
    group.finish();
}

criterion_group!(benches, sequential, tokens, grouped);
criterion_main!(benches);
