//! Faults during a derived close: panics (also before a close or enter has made its
//! future), per-field and whole-close deadlines, `Option` fields emptied by either, and
//! concurrent groups up to 128 fields wide, measured on tokio's paused clock.

use std::time::Duration;

use resource_runtime::{AsyncResource, Operation, ResourceError};
use resource_tests::{Log, Probe, paths, strings};
use tokio::time::Instant;

fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

/// Asserts `elapsed` lies in `[low, high)`.
#[track_caller]
fn assert_between(elapsed: Duration, low: u64, high: u64) {
    assert!(
        elapsed >= ms(low) && elapsed < ms(high),
        "elapsed {elapsed:?}, expected at least {low}ms and under {high}ms"
    );
}

#[derive(AsyncResource)]
struct Three {
    #[resource]
    a: Probe,
    #[resource]
    b: Probe,
    #[resource]
    c: Probe,
}

#[tokio::test(start_paused = true)]
async fn a_panicking_field_close_is_caught_and_the_other_fields_still_close() {
    let log = Log::new();
    let mut three = Three {
        a: log.probe("a"),
        b: log.probe("b").panic_on_close(),
        c: log.probe("c"),
    };
    three.enter().await.unwrap();
    log.clear();
    let err = three.close().await.unwrap_err();
    assert_eq!(log.entries(), strings(&["close c", "close b", "close a"]));
    assert_eq!(err.failures().len(), 1);
    assert!(err.is_panic());
    assert_eq!(err.path(), Some("b"));
    assert_eq!(err.operation(), Some(Operation::Close));
    assert_eq!(err.panic_message(), Some("probe b panicked in close"));
    assert_eq!(
        err.to_string(),
        "close `b`: panicked: probe b panicked in close"
    );
}

#[derive(AsyncResource)]
struct Inner {
    #[resource]
    db: Probe,
}

#[derive(AsyncResource)]
struct Outer {
    #[resource]
    inner: Inner,
    #[resource]
    tail: Probe,
}

#[tokio::test(start_paused = true)]
async fn a_panic_deep_in_a_nested_struct_is_reported_at_its_full_path() {
    let log = Log::new();
    let mut outer = Outer {
        inner: Inner {
            db: log.probe("db").panic_on_close(),
        },
        tail: log.probe("tail").fail_close(),
    };
    let err = outer.close().await.unwrap_err();
    assert_eq!(paths(&err), ["tail", "inner.db"]);
    let panics: Vec<bool> = err.failures().map(|f| f.is_panic()).collect();
    assert_eq!(panics, [false, true]);
}

#[derive(AsyncResource)]
struct WithSlowField {
    #[resource]
    a: Probe,
    #[resource(timeout = "100ms")]
    slow: Probe,
    #[resource]
    c: Probe,
}

#[tokio::test(start_paused = true)]
async fn a_field_close_past_its_timeout_is_dropped_and_reported_and_the_rest_still_close() {
    let log = Log::new();
    let mut value = WithSlowField {
        a: log.probe("a"),
        slow: log.probe("slow").close_delay(10_000),
        c: log.probe("c"),
    };
    value.enter().await.unwrap();
    log.clear();
    let started = Instant::now();
    let err = value.close().await.unwrap_err();
    assert_between(started.elapsed(), 100, 150);
    assert_eq!(
        log.entries(),
        strings(&["close c", "close slow", "close a"])
    );
    assert_eq!(err.failures().len(), 1);
    assert!(err.is_timeout());
    assert_eq!(err.path(), Some("slow"));
    assert_eq!(err.deadline(), Some(ms(100)));
    assert_eq!(err.operation(), Some(Operation::Close));
    assert_eq!(
        err.to_string(),
        "close `slow`: timed out after 100ms; the step was dropped"
    );

    // The slow close was dropped, not left running: it never finishes.
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert!(!log.entries().contains(&"close slow finished".to_owned()));
}

#[tokio::test(start_paused = true)]
async fn a_field_close_within_its_timeout_succeeds() {
    let log = Log::new();
    let mut value = WithSlowField {
        a: log.probe("a"),
        slow: log.probe("slow").close_delay(60),
        c: log.probe("c"),
    };
    let started = Instant::now();
    value.close().await.unwrap();
    assert_between(started.elapsed(), 60, 100);
    assert!(log.entries().contains(&"close slow finished".to_owned()));
}

#[derive(AsyncResource)]
struct RollbackWithDeadline {
    #[resource(timeout = "100ms")]
    slow: Probe,
    #[resource]
    bad: Probe,
}

#[tokio::test(start_paused = true)]
async fn a_rollback_close_honours_the_field_timeout() {
    let log = Log::new();
    let mut value = RollbackWithDeadline {
        slow: log.probe("slow").close_delay(10_000),
        bad: log.probe("bad").fail_enter(),
    };
    let started = Instant::now();
    let err = value.enter().await.unwrap_err();
    assert_between(started.elapsed(), 100, 150);
    assert_eq!(paths(&err), ["bad", "slow"]);
    let rollback = err.failures().nth(1).unwrap();
    assert!(rollback.is_rollback());
    assert_eq!(rollback.deadline(), Some(ms(100)));
}

#[derive(AsyncResource)]
#[resource(timeout = "1s")]
struct SlowWhole {
    #[resource]
    a: Probe,
    #[resource]
    b: Probe,
    #[resource]
    c: Probe,
}

#[tokio::test(start_paused = true)]
async fn the_whole_close_deadline_stops_the_close_and_reports_a_timeout() {
    let log = Log::new();
    let mut value = SlowWhole {
        a: log.probe("a").close_delay(400),
        b: log.probe("b").close_delay(400),
        c: log.probe("c").close_delay(400),
    };
    value.enter().await.unwrap();
    log.clear();
    let started = Instant::now();
    let err = value.close().await.unwrap_err();
    assert_between(started.elapsed(), 1_000, 1_050);
    assert!(err.is_timeout(), "{err:?}");
    let timeout = err
        .failures()
        .find(|f| f.is_timeout())
        .expect("a timeout failure");
    assert_eq!(timeout.deadline(), Some(ms(1_000)));
    // `a` was being closed when the deadline passed.
    assert_eq!(timeout.path(), Some("a"));
    assert_eq!(
        log.entries(),
        strings(&[
            "close c",
            "close c finished",
            "close b",
            "close b finished",
            "close a",
        ])
    );
}

#[tokio::test(start_paused = true)]
async fn a_close_that_beats_the_whole_deadline_is_ok() {
    let log = Log::new();
    let mut value = SlowWhole {
        a: log.probe("a").close_delay(300),
        b: log.probe("b").close_delay(300),
        c: log.probe("c").close_delay(300),
    };
    let started = Instant::now();
    value.close().await.unwrap();
    assert_between(started.elapsed(), 900, 950);
}

#[derive(AsyncResource)]
#[resource(timeout = "100ms", before_close = hang)]
struct HangingHook {
    #[resource]
    a: Probe,
}

impl HangingHook {
    async fn hang(&mut self) -> Result<(), std::io::Error> {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn a_hanging_before_close_is_cut_by_the_whole_close_deadline() {
    let log = Log::new();
    let mut value = HangingHook { a: log.probe("a") };
    let started = Instant::now();
    let err = value.close().await.unwrap_err();
    assert_between(started.elapsed(), 100, 150);
    assert!(err.is_timeout());
    let failures: Vec<_> = err.failures().collect();
    assert_eq!(failures.len(), 2, "{err}");
    // The hook is the resource's own step, not a field: reported like every other hook
    // failure, with the hook's name and no field path.
    assert_eq!(failures[0].hook(), Some("before_close"));
    assert_eq!(failures[0].path(), None);
    assert_eq!(failures[0].deadline(), Some(ms(100)));
    // The field the deadline never reached is named, not silently left open.
    assert_eq!(failures[1].path(), Some("a"));
    assert!(failures[1].is_timeout());
    assert!(
        failures[1].to_string().contains("passed before its turn"),
        "{err}"
    );
    assert!(
        !log.entries().iter().any(|e| e == "close a"),
        "{:?}",
        log.entries()
    );
}

#[derive(AsyncResource)]
struct Pool {
    #[resource]
    before: Probe,
    #[resource(group = "workers")]
    w0: Probe,
    #[resource(group = "workers")]
    w1: Probe,
    #[resource(group = "workers")]
    w2: Probe,
    #[resource(group = "workers")]
    w3: Probe,
    #[resource(group = "workers")]
    w4: Probe,
    #[resource(group = "workers")]
    w5: Probe,
    #[resource(group = "workers")]
    w6: Probe,
    #[resource(group = "workers")]
    w7: Probe,
    #[resource]
    after: Probe,
}

fn workers(log: &Log, make: impl Fn(&str) -> Probe) -> Pool {
    Pool {
        before: log.probe("before"),
        w0: make("w0"),
        w1: make("w1"),
        w2: make("w2"),
        w3: make("w3"),
        w4: make("w4"),
        w5: make("w5"),
        w6: make("w6"),
        w7: make("w7"),
        after: log.probe("after"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_group_of_eight_slow_fields_closes_in_the_time_of_one() {
    let log = Log::new();
    let mut pool = workers(&log, |name| log.probe(name).close_delay(100));
    pool.enter().await.unwrap();
    log.clear();
    let started = Instant::now();
    pool.close().await.unwrap();
    assert_between(started.elapsed(), 100, 200);

    let entries = log.entries();
    assert_eq!(entries.len(), 2 + 8 * 2);
    assert_eq!(entries.first().map(String::as_str), Some("close after"));
    assert_eq!(entries.last().map(String::as_str), Some("close before"));
    // Every worker's close started before any finished.
    let group = &entries[1..entries.len() - 1];
    assert!(
        group[..8].iter().all(|e| !e.ends_with("finished")),
        "{group:?}"
    );
    assert!(
        group[8..].iter().all(|e| e.ends_with("finished")),
        "{group:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failure_in_a_group_reports_only_that_field_and_the_rest_close() {
    let log = Log::new();
    let mut pool = workers(&log, |name| {
        let probe = log.probe(name).close_delay(10);
        if name == "w5" {
            probe.fail_close()
        } else {
            probe
        }
    });
    let counters: Vec<_> = [
        &pool.w0, &pool.w1, &pool.w2, &pool.w3, &pool.w4, &pool.w5, &pool.w6, &pool.w7,
    ]
    .map(Probe::close_counter)
    .to_vec();
    let err = pool.close().await.unwrap_err();
    assert_eq!(paths(&err), ["w5"]);
    assert_eq!(err.operation(), Some(Operation::Close));
    assert!(counters.iter().all(|c| c.get() == 1));
    assert_eq!(
        log.entries().last().map(String::as_str),
        Some("close before")
    );
}

#[derive(AsyncResource)]
struct MixedGroup {
    #[resource(group = "g")]
    fine: Probe,
    #[resource(group = "g", timeout = "100ms")]
    slow: Probe,
    #[resource(group = "g")]
    boom: Probe,
    #[resource(group = "g")]
    late: Probe,
}

#[tokio::test(start_paused = true)]
async fn a_group_member_that_times_out_or_panics_does_not_stop_the_others() {
    let log = Log::new();
    let mut value = MixedGroup {
        fine: log.probe("fine").close_delay(50),
        slow: log.probe("slow").close_delay(10_000),
        boom: log.probe("boom").panic_on_close(),
        late: log.probe("late").close_delay(80),
    };
    let started = Instant::now();
    let err = value.close().await.unwrap_err();
    assert_between(started.elapsed(), 100, 150);
    let mut failures: Vec<(String, bool, bool)> = err
        .failures()
        .map(|f| (f.path().unwrap().to_owned(), f.is_timeout(), f.is_panic()))
        .collect();
    failures.sort();
    assert_eq!(
        failures,
        [
            ("boom".to_owned(), false, true),
            ("slow".to_owned(), true, false)
        ]
    );
    let entries = log.entries();
    assert!(entries.contains(&"close fine finished".to_owned()));
    assert!(entries.contains(&"close late finished".to_owned()));
    assert!(!entries.contains(&"close slow finished".to_owned()));
}

#[derive(AsyncResource)]
#[resource(concurrent)]
struct AllAtOnce {
    #[resource]
    a: Probe,
    #[resource]
    b: Probe,
    #[resource]
    c: Probe,
    #[resource]
    d: Probe,
    #[resource]
    e: Probe,
    #[resource]
    f: Probe,
    #[resource]
    g: Probe,
    #[resource]
    h: Probe,
}

#[tokio::test(start_paused = true)]
async fn a_concurrent_struct_closes_every_field_at_once() {
    let log = Log::new();
    let p = |name: &str| log.probe(name).close_delay(100);
    let mut value = AllAtOnce {
        a: p("a"),
        b: p("b"),
        c: p("c").fail_close(),
        d: p("d"),
        e: p("e"),
        f: p("f"),
        g: p("g"),
        h: p("h"),
    };
    value.enter().await.unwrap();
    log.clear();
    let started = Instant::now();
    let err = value.close().await.unwrap_err();
    assert_between(started.elapsed(), 100, 200);
    assert_eq!(paths(&err), ["c"]);
    let entries = log.entries();
    assert_eq!(entries.len(), 16);
    assert!(
        entries[..8].iter().all(|e| !e.ends_with("finished")),
        "{entries:?}"
    );
}

macro_rules! wide {
    ($($f:ident)*) => {
        #[derive(AsyncResource)]
        #[resource(concurrent)]
        struct Wide { $(#[resource] $f: Probe,)* }

        fn wide(log: &Log) -> Wide {
            Wide { $($f: log.probe(stringify!($f)).close_delay(100),)* }
        }
    };
}

wide!(
    a0 a1 a2 a3 a4 a5 a6 a7 a8 a9 b0 b1 b2 b3 b4 b5 b6 b7 b8 b9
    c0 c1 c2 c3 c4 c5 c6 c7 c8 c9 d0 d1 d2 d3 d4 d5 d6 d7 d8 d9
    e0 e1 e2 e3 e4 e5 e6 e7 e8 e9 f0 f1 f2 f3 f4 f5 f6 f7 f8 f9
    g0 g1 g2 g3 g4 g5 g6 g7 g8 g9 h0 h1 h2 h3 h4 h5 h6 h7 h8 h9
    i0 i1 i2 i3 i4 i5 i6 i7 i8 i9 j0 j1 j2 j3 j4 j5 j6 j7 j8 j9
    k0 k1 k2 k3 k4 k5 k6 k7 k8 k9 l0 l1 l2 l3 l4 l5 l6 l7 l8 l9
    m0 m1 m2 m3 m4 m5 m6 m7
);

#[tokio::test(start_paused = true)]
async fn a_concurrent_step_of_128_fields_closes_them_all_at_once() {
    let log = Log::new();
    let mut value = wide(&log);
    let started = Instant::now();
    value.close().await.unwrap();
    assert_between(started.elapsed(), 100, 200);
    let finished = log
        .entries()
        .iter()
        .filter(|e| e.ends_with("finished"))
        .count();
    assert_eq!(finished, 128);
}

#[derive(AsyncResource)]
#[resource(before_close = explode)]
struct PanickingHook {
    #[resource]
    a: Probe,
}

impl PanickingHook {
    async fn explode(&mut self) -> Result<(), std::io::Error> {
        panic!("hook exploded")
    }
}

#[tokio::test(start_paused = true)]
async fn a_panic_in_before_close_is_caught_and_the_fields_still_close() {
    let log = Log::new();
    let mut value = PanickingHook { a: log.probe("a") };
    let err = value.close().await.unwrap_err();
    assert_eq!(log.entries(), strings(&["close a"]));
    assert!(err.is_panic());
    assert_eq!(err.hook(), Some("before_close"));
    assert_eq!(err.panic_message(), Some("hook exploded"));
}

#[tokio::test(start_paused = true)]
async fn a_panic_while_entering_a_field_is_caught_and_rolls_back() {
    let log = Log::new();
    let mut three = Three {
        a: log.probe("a"),
        b: log.probe("b").panic_on_enter(),
        c: log.probe("c"),
    };
    let err = three.enter().await.unwrap_err();
    // The enter rule: the field whose enter panicked is closed too, before the ones
    // entered earlier.
    assert_eq!(
        log.entries(),
        strings(&["enter a", "enter b", "close b", "close a"])
    );
    assert_eq!(paths(&err), ["b"]);
    assert!(err.is_panic());
    assert_eq!(err.operation(), Some(Operation::Enter));
    assert_eq!(err.panic_message(), Some("probe b panicked in enter"));
}

async fn explode_on_close(_: &mut u8) -> Result<(), std::io::Error> {
    panic!("custom close exploded")
}

#[derive(AsyncResource)]
struct PanickingCustomClose {
    #[resource]
    a: Probe,
    #[resource(close = explode_on_close)]
    handle: u8,
}

#[tokio::test(start_paused = true)]
async fn a_panic_in_a_custom_close_function_is_caught_at_its_field() {
    let log = Log::new();
    let mut value = PanickingCustomClose {
        a: log.probe("a"),
        handle: 0,
    };
    let err = value.close().await.unwrap_err();
    assert_eq!(log.entries(), strings(&["close a"]));
    assert_eq!(err.path(), Some("handle"));
    assert_eq!(err.panic_message(), Some("custom close exploded"));
}

#[derive(AsyncResource)]
#[resource(after_enter = explode)]
struct PanickingAfterEnter {
    #[resource]
    a: Probe,
}

impl PanickingAfterEnter {
    async fn explode(&mut self) -> Result<(), std::io::Error> {
        panic!("after_enter exploded")
    }
}

#[tokio::test(start_paused = true)]
async fn a_panic_in_after_enter_is_caught_and_rolls_back_every_field() {
    let log = Log::new();
    let mut value = PanickingAfterEnter { a: log.probe("a") };
    let err = value.enter().await.unwrap_err();
    assert_eq!(log.entries(), strings(&["enter a", "close a"]));
    assert_eq!(err.hook(), Some("after_enter"));
    assert_eq!(err.panic_message(), Some("after_enter exploded"));
}

/// A resource whose `close` and `enter` panic while making their futures, before any
/// `.await`.
struct PanicsEagerly;

impl AsyncResource for PanicsEagerly {
    #[allow(clippy::manual_async_fn, unreachable_code)]
    fn close(&mut self) -> impl Future<Output = Result<(), ResourceError>> + Send {
        panic!("panicked before returning a future");
        async { Ok(()) }
    }

    #[allow(clippy::manual_async_fn, unreachable_code)]
    fn enter(&mut self) -> impl Future<Output = Result<(), ResourceError>> + Send {
        panic!("panicked before returning an enter future");
        async { Ok(()) }
    }
}

#[derive(AsyncResource)]
struct EagerPanic {
    #[resource]
    first: Probe,
    #[resource]
    second: PanicsEagerly,
}

#[tokio::test]
async fn a_close_that_panics_before_returning_its_future_is_caught_and_the_rest_close() {
    let log = Log::new();
    let mut value = EagerPanic {
        first: log.probe("first"),
        second: PanicsEagerly,
    };
    let err = value.close().await.unwrap_err();
    assert!(err.is_panic(), "{err}");
    assert_eq!(err.path(), Some("second"));
    assert_eq!(
        err.panic_message(),
        Some("panicked before returning a future")
    );
    assert!(
        log.entries().contains(&"close first".to_owned()),
        "{:?}",
        log.entries()
    );
}

#[tokio::test]
async fn an_enter_that_panics_before_returning_its_future_rolls_back() {
    let log = Log::new();
    let mut value = EagerPanic {
        first: log.probe("first"),
        second: PanicsEagerly,
    };
    let err = value.enter().await.unwrap_err();
    let failures: Vec<_> = err.failures().collect();
    assert!(failures[0].is_panic(), "{err}");
    assert_eq!(failures[0].path(), Some("second"));
    assert_eq!(log.entries(), ["enter first", "close first"]);
}

/// Never finishes its close.
struct Hangs(Log);

impl AsyncResource for Hangs {
    async fn close(&mut self) -> Result<(), ResourceError> {
        self.0.push("hang started");
        std::future::pending::<()>().await;
        Ok(())
    }
}

#[derive(AsyncResource)]
struct WithOptional {
    #[resource(timeout = "10ms")]
    hangs: Option<Hangs>,
    #[resource]
    panics: Option<PanicsEagerly>,
}

#[tokio::test(start_paused = true)]
async fn an_option_field_is_empty_after_its_close_timed_out_or_panicked() {
    let log = Log::new();
    let mut value = WithOptional {
        hangs: Some(Hangs(log.clone())),
        panics: Some(PanicsEagerly),
    };
    let err = value.close().await.unwrap_err();
    assert_eq!(paths(&err), ["panics", "hangs"]);
    // Dropped at the deadline and after the panic: the struct holds nothing any more.
    assert!(value.hangs.is_none());
    assert!(value.panics.is_none());
    value.close().await.unwrap();
}

#[derive(AsyncResource)]
#[resource(timeout = "1s")]
struct DeadlineAfterFailure {
    #[resource]
    stuck: Probe,
    #[resource]
    broken: Probe,
}

#[tokio::test(start_paused = true)]
async fn failures_before_the_whole_close_deadline_are_kept_beside_the_timeout() {
    let log = Log::new();
    let mut value = DeadlineAfterFailure {
        stuck: log.probe("stuck").close_delay(3_600_000),
        broken: log.probe("broken").fail_close(),
    };
    let started = Instant::now();
    let err = value.close().await.unwrap_err();
    assert_between(started.elapsed(), 1_000, 1_050);
    assert_eq!(paths(&err), ["broken", "stuck"]);
    let timeouts: Vec<bool> = err.failures().map(|f| f.is_timeout()).collect();
    assert_eq!(timeouts, [false, true]);
}

#[derive(AsyncResource)]
#[resource(timeout = "1s")]
struct DeadlineInGroup {
    #[resource(group = "io")]
    broken: Probe,
    #[resource(group = "io")]
    stuck: Probe,
}

#[tokio::test(start_paused = true)]
async fn a_group_member_failure_is_kept_when_the_whole_close_deadline_cuts_the_group() {
    // `broken` fails at once; `stuck` never finishes, so the whole-close deadline ends
    // the group. The failure that already happened must not be lost with it.
    let log = Log::new();
    let mut value = DeadlineInGroup {
        broken: log.probe("broken").fail_close(),
        stuck: log.probe("stuck").close_delay(3_600_000),
    };
    let started = Instant::now();
    let err = value.close().await.unwrap_err();
    assert_between(started.elapsed(), 1_000, 1_050);
    assert!(err.is_timeout(), "{err:?}");
    assert!(
        err.failures()
            .any(|f| f.path() == Some("broken") && !f.is_timeout()),
        "the failure of `broken` was lost: {err}"
    );
}

#[derive(AsyncResource)]
struct Staggered {
    #[resource(group = "io")]
    late: Probe,
    #[resource(group = "io")]
    early: Probe,
    #[resource(group = "io")]
    middle: Probe,
}

#[tokio::test(start_paused = true)]
async fn a_group_reports_its_failures_in_the_order_they_happened() {
    let log = Log::new();
    let mut value = Staggered {
        late: log.probe("late").close_delay(300).fail_close(),
        early: log.probe("early").close_delay(100).fail_close(),
        middle: log.probe("middle").close_delay(200).fail_close(),
    };
    let err = value.close().await.unwrap_err();
    assert_eq!(paths(&err), ["early", "middle", "late"]);
}

async fn slow_shutdown(_: &mut u8) -> Result<(), std::io::Error> {
    tokio::time::sleep(Duration::from_secs(3600)).await;
    Ok(())
}

#[derive(AsyncResource)]
struct SlowCustomClose {
    #[resource(close = slow_shutdown, timeout = "250ms")]
    handle: u8,
}

#[tokio::test(start_paused = true)]
async fn a_field_timeout_also_bounds_a_custom_close_function() {
    let mut value = SlowCustomClose { handle: 0 };
    let started = Instant::now();
    let err = value.close().await.unwrap_err();
    assert_between(started.elapsed(), 250, 300);
    assert_eq!(err.path(), Some("handle"));
    assert_eq!(err.deadline(), Some(ms(250)));
}
