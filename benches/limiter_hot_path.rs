//! What a `try_acquire` costs when it passes and when it is rejected, on one thread and
//! on two threads sharing one limiter, against the peers a user would reach for. Run:
//! `cargo bench -p resource-benches --bench limiter_hot_path`.
//!
//! - `try_acquire_pass`: every call is admitted. A GCRA limiter admits forever when a
//!   token takes 1 ns (`RateLimiter::new(1_000_000_000, 1 s).unwrap()`, governor's
//!   `Quota::with_period(1 ns)`), since no call is faster than a token; the burst is
//!   `u32::MAX` anyway. leaky-bucket starts with a balance of `isize::MAX` tokens that no
//!   run can spend. The semaphore has `MAX_PERMITS` and the permit is dropped at once.
//! - `try_acquire_reject`: every call is refused. One token an hour, burst 1, the token
//!   taken before the measurement; leaky-bucket starts empty with an hour's refill
//!   interval; the semaphore has 0 permits.
//! - `1t/...` is one thread calling in a loop; `2t/...` is two threads calling the same
//!   limiter at once, reported as wall time over the calls of both threads (time per
//!   call of the pair, so contention shows as a figure above `1t`'s halved).
//! - `clock`: the clock read each limiter makes. Our limiter and leaky-bucket read
//!   `tokio::time::Instant::now()`; governor (default features) reads the TSC through
//!   `quanta`.
//!
//! Peers' configuration, to read the figures right:
//! - governor 0.10, `RateLimiter::direct` (an in-memory atomic state, `QuantaClock`,
//!   no middleware): `check()` is a compare-and-swap loop on one `AtomicU64`, no lock.
//! - leaky-bucket 1.1 with its default `fair(true)`: `try_acquire` then always takes its
//!   `parking_lot` mutex and reads the clock (the lock-free fast path is used only by
//!   an unfair limiter). Our `RateLimiter` takes a `std` mutex on every call too: both
//!   keep waiters in FIFO order, which governor does not.
//! - tokio's `Semaphore::try_acquire` is not a rate limiter: it is the floor for "one
//!   atomic admission decision" (a compare-and-swap, plus the waiters' lock on release).
//!
//! tokio's `test-util` feature (on in this crate's dev-dependencies, so on in this
//! binary) routes `tokio::time::Instant::now()` through a check for a paused clock. In
//! tokio 1.54 that check is one atomic load of a process-wide "was a clock ever paused"
//! flag until some runtime pauses its clock; after that every call looks up the current
//! runtime in a thread-local. `clock/tokio_instant_now` against `clock/std_instant_now`
//! is what the unpaused check costs; the `after_pause` group, run last because pausing
//! cannot be undone in a process, is what it costs once a clock was paused (only tests
//! ever do that; a release build without `test-util` has neither cost).

use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{
    BenchmarkGroup, Criterion, criterion_group, criterion_main, measurement::WallTime,
};
use governor::clock::{Clock as _, QuantaClock};
use governor::{Quota, RateLimiter as Governor};
use resource_runtime::limiter::RateLimiter;
use tokio::sync::Semaphore;

const HOUR: Duration = Duration::from_secs(3600);

/// One thread calls `op` in a loop; every call must give `expect`.
fn one_thread(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    expect: bool,
    op: impl Fn() -> bool,
) {
    group.bench_function(format!("1t/{name}"), |b| {
        b.iter(|| assert_eq!(black_box(op()), expect))
    });
}

/// Two threads call `op` at once, `iters` times each; the time reported for `iters`
/// calls is the wall time from the first thread's start to the last thread's end over
/// the `2 * iters` calls made, times `iters`: wall time per call of the pair.
fn two_threads(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    expect: bool,
    op: impl Fn() -> bool + Sync,
) {
    group.bench_function(format!("2t/{name}"), |b| {
        b.iter_custom(|iters| {
            let barrier = Barrier::new(2);
            let spans: Vec<(Instant, Instant)> = std::thread::scope(|s| {
                let workers: Vec<_> = (0..2)
                    .map(|_| {
                        s.spawn(|| {
                            barrier.wait();
                            let start = Instant::now();
                            for _ in 0..iters {
                                assert_eq!(black_box(op()), expect);
                            }
                            (start, Instant::now())
                        })
                    })
                    .collect();
                workers
                    .into_iter()
                    .map(|w| w.join().expect("a bench thread panicked"))
                    .collect()
            });
            let start = spans.iter().map(|s| s.0).min().expect("two spans");
            let end = spans.iter().map(|s| s.1).max().expect("two spans");
            (end - start) / 2
        })
    });
}

fn both(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    expect: bool,
    op: impl Fn() -> bool + Sync,
) {
    one_thread(group, name, expect, &op);
    two_threads(group, name, expect, &op);
}

/// Ours: one token a nanosecond, never runs out.
fn ours_open() -> RateLimiter {
    RateLimiter::builder(1_000_000_000, Duration::from_secs(1))
        .burst(u32::MAX)
        .build()
        .unwrap()
}

/// Ours: one token an hour, already taken.
fn ours_drained() -> RateLimiter {
    let limiter = RateLimiter::builder(1, HOUR).burst(1).build().unwrap();
    assert!(limiter.try_acquire(1).expect("a valid limiter"));
    limiter
}

type Direct = governor::DefaultDirectRateLimiter;

fn governor_open() -> Direct {
    let quota = Quota::with_period(Duration::from_nanos(1))
        .expect("a non-zero period")
        .allow_burst(NonZeroU32::MAX);
    Governor::direct(quota)
}

fn governor_drained() -> Direct {
    let limiter = Governor::direct(Quota::per_hour(NonZeroU32::MIN));
    assert!(limiter.check().is_ok());
    limiter
}

fn leaky_open() -> leaky_bucket::RateLimiter {
    let balance = isize::MAX as usize;
    leaky_bucket::RateLimiter::builder()
        .max(balance)
        .initial(balance)
        .refill(1)
        .interval(Duration::from_millis(1))
        .build()
}

fn leaky_drained() -> leaky_bucket::RateLimiter {
    leaky_bucket::RateLimiter::builder()
        .max(1)
        .initial(0)
        .refill(1)
        .interval(HOUR)
        .build()
}

fn pass(c: &mut Criterion) {
    let mut group = c.benchmark_group("try_acquire_pass");
    let ours = ours_open();
    both(&mut group, "resource_runtime", true, || {
        ours.try_acquire(1).expect("a valid limiter")
    });
    let governor = governor_open();
    both(&mut group, "governor", true, || governor.check().is_ok());
    let leaky = leaky_open();
    both(&mut group, "leaky_bucket", true, || leaky.try_acquire(1));
    let semaphore = Semaphore::new(Semaphore::MAX_PERMITS);
    both(&mut group, "tokio_semaphore", true, || {
        semaphore.try_acquire().map(drop).is_ok()
    });
    group.finish();
}

fn reject(c: &mut Criterion) {
    let mut group = c.benchmark_group("try_acquire_reject");
    let ours = ours_drained();
    both(&mut group, "resource_runtime", false, || {
        ours.try_acquire(1).expect("a valid limiter")
    });
    let governor = governor_drained();
    both(&mut group, "governor", false, || governor.check().is_ok());
    let leaky = leaky_drained();
    both(&mut group, "leaky_bucket", false, || leaky.try_acquire(1));
    let semaphore = Semaphore::new(0);
    both(&mut group, "tokio_semaphore", false, || {
        semaphore.try_acquire().map(drop).is_ok()
    });
    group.finish();
}

fn clock(c: &mut Criterion) {
    let mut group = c.benchmark_group("clock");
    group.bench_function("std_instant_now", |b| b.iter(|| black_box(Instant::now())));
    group.bench_function("tokio_instant_now", |b| {
        b.iter(|| black_box(tokio::time::Instant::now()))
    });
    let quanta = QuantaClock::default();
    group.bench_function("quanta_now", |b| b.iter(|| black_box(quanta.now())));
    group.finish();
}

/// Run last: once a runtime paused its clock, tokio's `test-util` takes its slower path
/// for the rest of the process.
fn after_pause(c: &mut Criterion) {
    let mut group = c.benchmark_group("after_pause");
    let pause = || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("a current-thread runtime");
        drop(rt);
    };
    group.bench_function("tokio_instant_now", |b| {
        pause();
        b.iter(|| black_box(tokio::time::Instant::now()))
    });
    let ours = ours_open();
    group.bench_function("1t/resource_runtime_pass", |b| {
        pause();
        b.iter(|| assert!(black_box(ours.try_acquire(1).expect("a valid limiter"))))
    });
    group.finish();
}

criterion_group!(benches, clock, pass, reject, after_pause);
criterion_main!(benches);
