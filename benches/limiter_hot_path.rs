//! What a `try_acquire` costs when it passes and when it is rejected, against the floor
//! it cannot go below (one read of tokio's clock) on one thread, and against governor on
//! two threads sharing one limiter. Run:
//! `cargo bench -p resource-benches --bench limiter_hot_path`.
//!
//! Every row is interleaved paired rounds (ours, peer, ours, peer, ... the order
//! alternating), each side timing a loop of calls; a ratio is the median of the
//! per-round ratios, printed with its spread.
//!
//! - pass: every call is admitted. A GCRA limiter admits forever when a token takes
//!   1 ns (`RateLimiter::builder(1_000_000_000, 1 s)`, governor's
//!   `Quota::with_period(1 ns)`), since no call is faster than a token; the burst is
//!   `u32::MAX` anyway.
//! - reject: every call is refused: one token an hour, burst 1, taken before.
//! - 1 thread: against `tokio::time::Instant::now()`, the clock the limiter reads (it
//!   keeps tokio's clock so that `tokio::time::pause` drives it in tests). This crate
//!   does not enable tokio's `test-util`, so the clock measured is the one users get.
//! - 2 threads: two threads call the same limiter at once; the figure is wall time
//!   over the calls of both. Against governor 0.10's `RateLimiter::direct` (a
//!   compare-and-swap loop on one `AtomicU64`, read on `quanta`'s TSC clock), which
//!   keeps no waiters: ours keeps them in FIFO order, and takes its lock only while
//!   someone waits. The target rows build ours on the same clock
//!   (`LimiterClock::Quanta`, calibrated before the rounds start), so that the ratio is
//!   the limiter's and not the clock's; the rows on tokio's clock, the default, are
//!   reported beside them.
//! - report rows: governor on one thread, against ours on either clock; leaky-bucket
//!   1.1 (fair, the default, which locks on every call); tokio's
//!   `Semaphore::try_acquire`, not a rate limiter but the floor of "one atomic
//!   admission decision"; and the counter's calibration, from the first limiter built
//!   on it to the return of its `enter`.

use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::Barrier;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use governor::{Quota, RateLimiter as Governor};
use resource_benches::{ROUNDS, Results, Target, ns_per_call, paired, selected};
use resource_runtime::limiter::{LimiterClock, RateLimiter};
use tokio::sync::Semaphore;

const HOUR: Duration = Duration::from_secs(3600);
/// Calls per side per round on one thread.
const CALLS: u64 = 1_000_000;
/// Calls per thread per side per round on two threads.
const CALLS_2T: u64 = 500_000;

/// Ours: one token a nanosecond, never runs out.
fn ours_open(clock: LimiterClock) -> RateLimiter {
    let limiter = RateLimiter::builder(1_000_000_000, Duration::from_secs(1))
        .burst(u32::MAX)
        .clock(clock)
        .build()
        .unwrap();
    on_its_clock(&limiter);
    limiter
}

/// Ours: one token an hour, already taken.
fn ours_drained(clock: LimiterClock) -> RateLimiter {
    let limiter = RateLimiter::builder(1, HOUR)
        .burst(1)
        .clock(clock)
        .build()
        .unwrap();
    on_its_clock(&limiter);
    assert!(limiter.try_acquire(1).expect("a valid limiter"));
    limiter
}

/// Waits until the limiter reads the clock it was built with (the counter's
/// calibration, once a process), so that no round measures tokio's clock in its place.
fn on_its_clock(limiter: &RateLimiter) {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime")
        .block_on(limiter.enter())
        .expect("a local limiter enters");
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

/// Nanoseconds per call, one thread, every call giving `expect`.
fn one_thread(expect: bool, op: impl Fn() -> bool) -> f64 {
    ns_per_call(CALLS, || assert_eq!(black_box(op()), expect))
}

/// Nanoseconds of wall time per call when two threads call `op` at once.
fn two_threads(expect: bool, op: impl Fn() -> bool + Sync) -> f64 {
    let barrier = Barrier::new(2);
    let spans: Vec<(Instant, Instant)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    let start = Instant::now();
                    for _ in 0..CALLS_2T {
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
    (end - start).as_nanos() as f64 / (2 * CALLS_2T) as f64
}

fn main() {
    if !selected("limiter_hot_path") {
        // `cargo test --benches`: one short pass over every operation.
        for clock in [LimiterClock::Tokio, LimiterClock::Quanta] {
            assert!(ours_open(clock).try_acquire(1).unwrap());
            assert!(!ours_drained(clock).try_acquire(1).unwrap());
        }
        return;
    }
    let mut results = Results::new("limiter_hot_path");
    // The counter's calibration, once a process: from the first limiter built on it
    // until its `enter` returns (the calibrating thread is done).
    let start = Instant::now();
    ours_open(LimiterClock::Quanta);
    results.figure(
        "quanta_calibration_ms",
        "ms, once a process, off the runtime's workers",
        start.elapsed().as_secs_f64() * 1e3,
    );
    let clock = || {
        black_box(tokio::time::Instant::now());
        true
    };
    let ns = "ns/call";

    let (tokio_clock, counter) = (LimiterClock::Tokio, LimiterClock::Quanta);
    for (case, expect, ours, ours_counter, governor) in [
        (
            "pass",
            true,
            ours_open(tokio_clock),
            ours_open(counter),
            governor_open(),
        ),
        (
            "reject",
            false,
            ours_drained(tokio_clock),
            ours_drained(counter),
            governor_drained(),
        ),
    ] {
        let ours_op = || ours.try_acquire(1).expect("a valid limiter");
        let counter_op = || ours_counter.try_acquire(1).expect("a valid limiter");
        let governor_op = || governor.check().is_ok();
        results.paired(
            &format!("try_acquire_{case}_1t_vs_clock"),
            "tokio::time::Instant::now()",
            ns,
            Target::AtMost(1.4),
            paired(
                ROUNDS,
                || one_thread(expect, ours_op),
                || one_thread(true, clock),
            ),
        );
        results.paired(
            &format!("try_acquire_{case}_2t_vs_governor"),
            "governor check(), 2 threads (both on quanta's clock)",
            ns,
            Target::AtMost(1.5),
            paired(
                ROUNDS,
                || two_threads(expect, counter_op),
                || two_threads(expect, governor_op),
            ),
        );
        results.paired(
            &format!("try_acquire_{case}_2t_tokio_clock_vs_governor"),
            "governor check(), 2 threads (ours on tokio's clock)",
            ns,
            Target::Report,
            paired(
                ROUNDS,
                || two_threads(expect, ours_op),
                || two_threads(expect, governor_op),
            ),
        );
        results.paired(
            &format!("try_acquire_{case}_1t_vs_governor"),
            "governor check() (both on quanta's clock)",
            ns,
            Target::Report,
            paired(
                ROUNDS,
                || one_thread(expect, counter_op),
                || one_thread(expect, governor_op),
            ),
        );
        results.paired(
            &format!("try_acquire_{case}_1t_tokio_clock_vs_governor"),
            "governor check() (ours on tokio's clock)",
            ns,
            Target::Report,
            paired(
                ROUNDS,
                || one_thread(expect, ours_op),
                || one_thread(expect, governor_op),
            ),
        );
        results.paired(
            &format!("try_acquire_{case}_1t_quanta_vs_clock"),
            "tokio::time::Instant::now() (ours on quanta's clock)",
            ns,
            Target::Report,
            paired(
                ROUNDS,
                || one_thread(expect, counter_op),
                || one_thread(true, clock),
            ),
        );
    }

    let (leaky_pass, leaky_reject) = (leaky_open(), leaky_drained());
    let ours_pass = ours_open(tokio_clock);
    results.paired(
        "try_acquire_pass_1t_vs_leaky_bucket",
        "leaky-bucket try_acquire (fair)",
        ns,
        Target::Report,
        paired(
            ROUNDS,
            || one_thread(true, || ours_pass.try_acquire(1).unwrap()),
            || one_thread(true, || leaky_pass.try_acquire(1)),
        ),
    );
    let ours_reject = ours_drained(tokio_clock);
    results.paired(
        "try_acquire_reject_1t_vs_leaky_bucket",
        "leaky-bucket try_acquire (fair)",
        ns,
        Target::Report,
        paired(
            ROUNDS,
            || one_thread(false, || ours_reject.try_acquire(1).unwrap()),
            || one_thread(false, || leaky_reject.try_acquire(1)),
        ),
    );
    // The floors. A pass cannot cost less than a clock read and one compare-and-swap
    // on the schedule's word: the peer here is exactly that, the minimal GCRA step
    // (read the clock, count it from an epoch, load, compare, swap). A reject on two
    // threads cannot cost less than each thread's clock read.
    let epoch = tokio::time::Instant::now();
    let word = AtomicU64::new(0);
    let clock_and_cas = || {
        let now = tokio::time::Instant::now();
        let ns = now.saturating_duration_since(epoch).as_nanos() as u64;
        let current = word.load(Ordering::Acquire);
        word.compare_exchange_weak(
            current,
            current.max(ns) + 1,
            Ordering::AcqRel,
            Ordering::Acquire,
        )
        .is_ok()
    };
    results.paired(
        "try_acquire_pass_1t_vs_clock_and_cas",
        "clock read + one compare-and-swap",
        ns,
        Target::Report,
        paired(
            ROUNDS,
            || one_thread(true, || ours_pass.try_acquire(1).unwrap()),
            || one_thread(true, clock_and_cas),
        ),
    );
    results.paired(
        "try_acquire_reject_2t_vs_clock_2t",
        "tokio::time::Instant::now(), 2 threads",
        ns,
        Target::Report,
        paired(
            ROUNDS,
            || two_threads(false, || ours_reject.try_acquire(1).unwrap()),
            || two_threads(true, clock),
        ),
    );
    let semaphore = Semaphore::new(Semaphore::MAX_PERMITS);
    results.paired(
        "try_acquire_pass_1t_vs_semaphore",
        "tokio Semaphore::try_acquire",
        ns,
        Target::Report,
        paired(
            ROUNDS,
            || one_thread(true, || ours_pass.try_acquire(1).unwrap()),
            || one_thread(true, || semaphore.try_acquire().map(drop).is_ok()),
        ),
    );
    results.write();
}
