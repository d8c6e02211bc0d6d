//! Does a limiter hold its configured rate, and does it share it fairly between waiters?
//! On the real clock, on a multi-thread tokio runtime. Run:
//!
//! ```sh
//! cargo bench -p resource-benches --bench limiter_accuracy             # 1 s warm-up, 3 s measured
//! cargo bench -p resource-benches --bench limiter_accuracy -- --quick  # 0.2 s + 0.5 s, a smoke run
//! ```
//!
//! (`LIMITER_ACCURACY_QUICK=1` does the same as `--quick`.) For each rate in {100, 1000}
//! per second, burst in {1, 10} and waiters in {1, 16}, each limiter gets `waiters`
//! tasks that loop acquiring one token and counting. After the warm-up (which also
//! spends the initial burst) the counts are read, and read again after the measured
//! span: the row reports the tokens taken in that span over the configured rate, and
//! Jain's fairness index over the waiters' counts, `(Σx)² / (n·Σx²)` (1 when every
//! waiter got the same share, 1/n when one got everything); `per waiter` is the fewest
//! and the most tokens one waiter took. Fairness needs counts well above 1 a waiter:
//! at 100/s, `--quick` gives 16 waiters about 3 tokens each, so its Jain is coarse.
//!
//! The limiters, configured for `rate` per second with `burst`:
//! - `resource_runtime`: `RateLimiter::builder(rate, 1 s).burst(burst).build().unwrap()`, `acquire(1)`.
//! - `resource_runtime_quanta`: the same on the CPU's counter
//!   (`.clock(LimiterClock::Quanta)`, entered first so that it is calibrated): the
//!   schedule reads the counter, each waiter sleeps on tokio's timer.
//! - `governor` 0.10: `RateLimiter::direct(Quota::with_period(1 s / rate).allow_burst(burst))`
//!   (the default `QuantaClock`), `until_ready()`: no jitter. It sleeps on
//!   `futures-timer`'s own timer thread, not on tokio's timer.
//! - `leaky_bucket` 1.1: `builder().max(burst).initial(burst).refill(1)
//!   .interval(1 s / rate)` (10 ms at 100/s, 1 ms at 1000/s; the crate counts its
//!   interval in whole milliseconds), default `fair(true)`, `acquire_one()`. Refilling
//!   more than one token per longer interval would need `max` above the burst.
//!
//! Run as a test (`cargo test --benches`, no `--bench` argument), it only checks that
//! every limiter runs, with one short configuration.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use resource_runtime::limiter::{LimiterClock, RateLimiter};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    ResourceRuntime,
    ResourceRuntimeQuanta,
    Governor,
    LeakyBucket,
}

impl Kind {
    const ALL: [Kind; 4] = [
        Kind::ResourceRuntime,
        Kind::ResourceRuntimeQuanta,
        Kind::Governor,
        Kind::LeakyBucket,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::ResourceRuntime => "resource_runtime",
            Kind::ResourceRuntimeQuanta => "resource_runtime_quanta",
            Kind::Governor => "governor",
            Kind::LeakyBucket => "leaky_bucket",
        }
    }
}

/// One limiter of any kind, shared by the waiters.
#[derive(Clone)]
enum Limiter {
    Ours(RateLimiter),
    Governor(Arc<governor::DefaultDirectRateLimiter>),
    Leaky(Arc<leaky_bucket::RateLimiter>),
}

impl Limiter {
    async fn new(kind: Kind, rate: u32, burst: u32) -> Self {
        let interval = Duration::from_secs(1) / rate;
        let ours = |clock| {
            RateLimiter::builder(rate, Duration::from_secs(1))
                .burst(burst)
                .clock(clock)
                .build()
                .unwrap()
        };
        match kind {
            Kind::ResourceRuntime => Limiter::Ours(ours(LimiterClock::Tokio)),
            Kind::ResourceRuntimeQuanta => {
                let limiter = ours(LimiterClock::Quanta);
                limiter.enter().await.expect("a local limiter enters");
                Limiter::Ours(limiter)
            }
            Kind::Governor => {
                let burst = NonZeroU32::new(burst).expect("a burst of at least 1");
                let quota = governor::Quota::with_period(interval)
                    .expect("a non-zero period")
                    .allow_burst(burst);
                Limiter::Governor(Arc::new(governor::RateLimiter::direct(quota)))
            }
            Kind::LeakyBucket => {
                let burst = usize::try_from(burst).expect("a small burst");
                Limiter::Leaky(Arc::new(
                    leaky_bucket::RateLimiter::builder()
                        .max(burst)
                        .initial(burst)
                        .refill(1)
                        .interval(interval)
                        .build(),
                ))
            }
        }
    }

    async fn acquire_one(&self) {
        match self {
            Limiter::Ours(l) => l.acquire(1).await.expect("an open limiter"),
            Limiter::Governor(l) => l.until_ready().await,
            Limiter::Leaky(l) => l.acquire_one().await,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Timing {
    warm_up: Duration,
    measure: Duration,
}

#[derive(Debug)]
struct Row {
    kind: Kind,
    rate: u32,
    burst: u32,
    waiters: usize,
    achieved: f64,
    ratio: f64,
    jain: f64,
    /// The fewest and the most tokens one waiter took in the measured span.
    min: u64,
    max: u64,
}

impl Row {
    fn meets(&self) -> bool {
        self.ratio >= 0.98 && self.jain >= 0.99
    }
}

/// Jain's fairness index of `counts`.
fn jain(counts: &[u64]) -> f64 {
    let sum: f64 = counts.iter().map(|&x| x as f64).sum();
    let squares: f64 = counts.iter().map(|&x| (x as f64) * (x as f64)).sum();
    if squares == 0.0 {
        return 0.0;
    }
    sum * sum / (counts.len() as f64 * squares)
}

async fn run(kind: Kind, rate: u32, burst: u32, waiters: usize, timing: Timing) -> Row {
    let limiter = Limiter::new(kind, rate, burst).await;
    let counts: Arc<Vec<AtomicU64>> = Arc::new((0..waiters).map(|_| AtomicU64::new(0)).collect());
    let tasks: Vec<_> = (0..waiters)
        .map(|i| {
            let limiter = limiter.clone();
            let counts = counts.clone();
            tokio::spawn(async move {
                loop {
                    limiter.acquire_one().await;
                    counts[i].fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let snapshot = || -> Vec<u64> { counts.iter().map(|c| c.load(Ordering::Relaxed)).collect() };

    tokio::time::sleep(timing.warm_up).await;
    let (before, start) = (snapshot(), Instant::now());
    tokio::time::sleep(timing.measure).await;
    let (after, end) = (snapshot(), Instant::now());
    for task in &tasks {
        task.abort();
    }
    for task in tasks {
        let _ = task.await;
    }

    let taken: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    let achieved = taken.iter().sum::<u64>() as f64 / (end - start).as_secs_f64();
    Row {
        kind,
        rate,
        burst,
        waiters,
        achieved,
        ratio: achieved / f64::from(rate),
        jain: jain(&taken),
        min: taken.iter().copied().min().unwrap_or(0),
        max: taken.iter().copied().max().unwrap_or(0),
    }
}

fn print_row(row: &Row) {
    println!(
        "{:<23} {:>5} {:>5} {:>7} {:>10.1} {:>8.3} {:>7.3} {:>13}  {}",
        row.kind.name(),
        row.rate,
        row.burst,
        row.waiters,
        row.achieved,
        row.ratio,
        row.jain,
        format!("{}..{}", row.min, row.max),
        if row.meets() { "yes" } else { "no" },
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo bench` passes `--bench`; `cargo test` does not.
    let as_test = !args.iter().any(|a| a == "--bench");
    let quick = args.iter().any(|a| a == "--quick")
        || std::env::var_os("LIMITER_ACCURACY_QUICK").is_some_and(|v| v != "0");

    let (timing, configs): (Timing, Vec<(u32, u32, usize)>) = if as_test {
        let timing = Timing {
            warm_up: Duration::from_millis(20),
            measure: Duration::from_millis(50),
        };
        (timing, vec![(1000, 1, 2)])
    } else {
        let timing = if quick {
            Timing {
                warm_up: Duration::from_millis(200),
                measure: Duration::from_millis(500),
            }
        } else {
            Timing {
                warm_up: Duration::from_secs(1),
                measure: Duration::from_secs(3),
            }
        };
        let mut configs = Vec::new();
        for rate in [100, 1000] {
            for burst in [1, 10] {
                for waiters in [1, 16] {
                    configs.push((rate, burst, waiters));
                }
            }
        }
        (timing, configs)
    };

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a multi-thread runtime");
    println!(
        "limiter_accuracy: warm-up {:?}, measured {:?}, {} worker threads{}",
        timing.warm_up,
        timing.measure,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        if as_test { " (test mode)" } else { "" },
    );
    println!(
        "{:<23} {:>5} {:>5} {:>7} {:>10} {:>8} {:>7} {:>13}  meets",
        "limiter", "rate", "burst", "waiters", "achieved/s", "ratio", "jain", "per waiter"
    );
    let mut rows = Vec::new();
    for &(rate, burst, waiters) in &configs {
        for kind in Kind::ALL {
            // Each row runs in a task on a worker, as a caller in a service would.
            let row = rt
                .block_on(rt.spawn(run(kind, rate, burst, waiters, timing)))
                .expect("the measuring task panicked");
            print_row(&row);
            rows.push(row);
        }
    }

    println!();
    println!("summary: rows with ratio >= 0.98 and Jain >= 0.99");
    for kind in Kind::ALL {
        let mine: Vec<&Row> = rows.iter().filter(|r| r.kind == kind).collect();
        let met = mine.iter().filter(|r| r.meets()).count();
        let missed: Vec<String> = mine
            .iter()
            .filter(|r| !r.meets())
            .map(|r| format!("{}/s b{} w{}", r.rate, r.burst, r.waiters))
            .collect();
        println!(
            "  {:<23} {met}/{} met{}",
            kind.name(),
            mine.len(),
            if missed.is_empty() {
                String::new()
            } else {
                format!("; missed: {}", missed.join(", "))
            }
        );
    }
    if as_test {
        return;
    }
    let mut results = resource_benches::Results::new("limiter_accuracy");
    for kind in Kind::ALL {
        let mine: Vec<&Row> = rows.iter().filter(|r| r.kind == kind).collect();
        let met = mine.iter().filter(|r| r.meets()).count();
        results.figure(
            &format!("rows_met_{}", kind.name()),
            &format!(
                "of {} rows at >= 0.98 of the rate and Jain >= 0.99",
                mine.len()
            ),
            met as f64,
        );
        let worst = mine.iter().map(|r| r.ratio).fold(f64::INFINITY, f64::min);
        results.figure(
            &format!("worst_rate_ratio_{}", kind.name()),
            "achieved / configured",
            worst,
        );
    }
    results.write();
}
