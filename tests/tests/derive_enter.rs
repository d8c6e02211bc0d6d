//! What a derived `enter` does: declaration order, rollback of a failed enter, and the
//! `after_enter` hook.

use resource_runtime::{AsyncResource, Failure, Operation};
use resource_tests::{Counter, Log, Probe, ProbeError, StartsThenPanics, paths, strings};

#[derive(AsyncResource)]
struct Five {
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
}

impl Five {
    fn new(log: &Log) -> Self {
        Five {
            a: log.probe("a"),
            b: log.probe("b"),
            c: log.probe("c"),
            d: log.probe("d"),
            e: log.probe("e"),
        }
    }

    fn counters(&self) -> [(Counter, Counter); 5] {
        [&self.a, &self.b, &self.c, &self.d, &self.e]
            .map(|p| (p.enter_counter(), p.close_counter()))
    }
}

fn counts(counters: &[(Counter, Counter)]) -> Vec<(usize, usize)> {
    counters.iter().map(|(e, c)| (e.get(), c.get())).collect()
}

#[tokio::test]
async fn fields_enter_in_declaration_order() {
    let log = Log::new();
    let mut five = Five::new(&log);
    five.enter().await.unwrap();
    assert_eq!(
        log.entries(),
        strings(&["enter a", "enter b", "enter c", "enter d", "enter e"])
    );
}

#[tokio::test]
async fn a_failed_enter_closes_earlier_fields_in_reverse_and_never_enters_later_ones() {
    let log = Log::new();
    let mut five = Five {
        c: log.probe("c").fail_enter(),
        ..Five::new(&log)
    };
    let counters = five.counters();
    let err = five.enter().await.unwrap_err();

    assert_eq!(
        log.entries(),
        strings(&["enter a", "enter b", "enter c", "close b", "close a"])
    );
    // (enters, closes) per field: the failed field is not closed by the rollback, the
    // later ones are never touched.
    assert_eq!(counts(&counters), [(1, 1), (1, 1), (1, 0), (0, 0), (0, 0)]);
    assert_eq!(err.failures().len(), 1);
    assert_eq!(err.path(), Some("c"));
    assert_eq!(err.operation(), Some(Operation::Enter));
    assert!(!err.is_rollback());
    assert_eq!(
        err.downcast_ref::<ProbeError>(),
        Some(&ProbeError {
            name: "c".into(),
            op: "enter"
        })
    );
}

#[tokio::test]
async fn a_failure_at_the_first_field_closes_nothing() {
    let log = Log::new();
    let mut five = Five {
        a: log.probe("a").fail_enter(),
        ..Five::new(&log)
    };
    let err = five.enter().await.unwrap_err();
    assert_eq!(log.entries(), strings(&["enter a"]));
    assert_eq!(paths(&err), ["a"]);
}

#[tokio::test]
async fn rollback_failures_follow_the_enter_failure() {
    let log = Log::new();
    let mut five = Five {
        a: log.probe("a").fail_close(),
        b: log.probe("b").fail_close(),
        d: log.probe("d").fail_enter(),
        ..Five::new(&log)
    };
    let err = five.enter().await.unwrap_err();
    assert_eq!(
        log.entries()[4..],
        strings(&["close c", "close b", "close a"])
    );
    assert_eq!(paths(&err), ["d", "b", "a"]);
    let kinds: Vec<(Option<Operation>, bool)> = err
        .failures()
        .map(|f| (f.operation(), f.is_rollback()))
        .collect();
    assert_eq!(
        kinds,
        [
            (Some(Operation::Enter), false),
            (Some(Operation::Close), true),
            (Some(Operation::Close), true),
        ]
    );
    assert_eq!(
        err.to_string(),
        "3 failures:\n  enter `d`: probe d failed to enter\n  \
         close `b` during rollback of a failed enter: probe b failed to close\n  \
         close `a` during rollback of a failed enter: probe a failed to close"
    );
}

#[tokio::test]
async fn a_struct_whose_enter_failed_can_be_entered_again() {
    let log = Log::new();
    let mut five = Five {
        e: log.probe("e").fail_enter(),
        ..Five::new(&log)
    };
    five.enter().await.unwrap_err();
    five.e = log.probe("e");
    log.clear();
    five.enter().await.unwrap();
    five.close().await.unwrap();
    assert_eq!(log.entries().len(), 10);
}

#[derive(AsyncResource)]
struct Inner {
    #[resource]
    db: Probe,
    #[resource]
    cache: Probe,
}

#[derive(AsyncResource)]
struct Outer {
    #[resource]
    first: Probe,
    #[resource]
    inner: Inner,
    #[resource]
    last: Probe,
}

#[tokio::test]
async fn a_nested_enter_failure_is_rolled_back_at_both_levels_with_dotted_paths() {
    let log = Log::new();
    let mut outer = Outer {
        first: log.probe("first").fail_close(),
        inner: Inner {
            db: log.probe("db").fail_close(),
            cache: log.probe("cache").fail_enter(),
        },
        last: log.probe("last"),
    };
    let err = outer.enter().await.unwrap_err();
    assert_eq!(
        log.entries(),
        strings(&[
            "enter first",
            "enter db",
            "enter cache",
            "close db",
            "close first"
        ])
    );
    assert_eq!(paths(&err), ["inner.cache", "inner.db", "first"]);
    let rollbacks: Vec<bool> = err.failures().map(Failure::is_rollback).collect();
    assert_eq!(rollbacks, [false, true, true]);
    assert_eq!(
        err.failures().next().unwrap().operation(),
        Some(Operation::Enter)
    );
}

async fn shut(flag: &mut Log) -> Result<(), std::io::Error> {
    flag.push("shut");
    Ok(())
}

#[derive(AsyncResource)]
struct CloseOnly {
    #[resource(close = shut)]
    handle: Log,
    #[resource]
    probe: Probe,
}

#[tokio::test]
async fn a_field_with_only_a_close_function_counts_as_entered_and_is_rolled_back() {
    let log = Log::new();
    let mut value = CloseOnly {
        handle: log.clone(),
        probe: log.probe("probe").fail_enter(),
    };
    let err = value.enter().await.unwrap_err();
    assert_eq!(log.entries(), strings(&["enter probe", "shut"]));
    assert_eq!(paths(&err), ["probe"]);
}

#[derive(AsyncResource)]
#[resource(after_enter = warm_up)]
struct Hooked {
    #[resource]
    a: Probe,
    #[resource]
    b: Probe,
    #[resource(skip)]
    log: Log,
    #[resource(skip)]
    warm_up_fails: bool,
}

impl Hooked {
    fn new(log: &Log, warm_up_fails: bool) -> Self {
        Hooked {
            a: log.probe("a"),
            b: log.probe("b"),
            log: log.clone(),
            warm_up_fails,
        }
    }

    async fn warm_up(&mut self) -> Result<(), &'static str> {
        self.log.push("warm up");
        if self.warm_up_fails {
            return Err("cache cold");
        }
        Ok(())
    }
}

#[tokio::test]
async fn after_enter_runs_once_every_field_is_entered() {
    let log = Log::new();
    let mut value = Hooked::new(&log, false);
    value.enter().await.unwrap();
    assert_eq!(log.entries(), strings(&["enter a", "enter b", "warm up"]));
}

#[tokio::test]
async fn a_failing_after_enter_rolls_back_every_field() {
    let log = Log::new();
    let mut value = Hooked::new(&log, true);
    let err = value.enter().await.unwrap_err();
    assert_eq!(
        log.entries(),
        strings(&["enter a", "enter b", "warm up", "close b", "close a"])
    );
    assert_eq!(err.failures().len(), 1);
    assert_eq!(err.hook(), Some("after_enter"));
    assert_eq!(err.operation(), Some(Operation::Enter));
    assert_eq!(err.path(), None);
    assert!(!err.is_rollback());
    assert_eq!(err.to_string(), "enter (after_enter): cache cold");
}

#[tokio::test]
async fn after_enter_does_not_run_when_a_field_fails_to_enter() {
    let log = Log::new();
    let mut value = Hooked {
        b: log.probe("b").fail_enter(),
        ..Hooked::new(&log, false)
    };
    let err = value.enter().await.unwrap_err();
    assert_eq!(log.entries(), strings(&["enter a", "enter b", "close a"]));
    assert_eq!(paths(&err), ["b"]);
    assert_eq!(err.hook(), None);
}

#[tokio::test]
async fn rollback_failures_after_a_failing_after_enter_are_reported_too() {
    let log = Log::new();
    let mut value = Hooked {
        a: log.probe("a").fail_close(),
        ..Hooked::new(&log, true)
    };
    let err = value.enter().await.unwrap_err();
    let hooks: Vec<Option<&str>> = err.failures().map(Failure::hook).collect();
    assert_eq!(hooks, [Some("after_enter"), None]);
    let rollback = err.failures().nth(1).unwrap();
    assert_eq!(rollback.path(), Some("a"));
    assert!(rollback.is_rollback());
    assert_eq!(rollback.operation(), Some(Operation::Close));
}

#[derive(AsyncResource)]
struct Holder {
    #[resource]
    first: tokio_util::sync::CancellationToken,
    #[resource]
    second: StartsThenPanics,
}

/// The enter rule: a field whose enter panics after starting something is closed by
/// the rollback, like the fields entered before it.
#[tokio::test]
async fn a_field_whose_enter_panics_is_closed_by_the_rollback() {
    let second = StartsThenPanics::default();
    let first = tokio_util::sync::CancellationToken::new();
    let mut holder = Holder {
        first: first.clone(),
        second: second.clone(),
    };
    let err = holder.enter().await.unwrap_err();
    assert!(err.is_panic(), "{err}");
    assert_eq!(paths(&err), ["second"]);
    assert!(!second.is_running(), "the panicking field was left running");
    assert!(
        first.is_cancelled(),
        "the field entered before it was not closed"
    );
}

/// The same through `Option` and `Box` fields, which enter what they hold.
#[derive(AsyncResource)]
struct Wrapped {
    #[resource]
    optional: Option<StartsThenPanics>,
    #[resource]
    boxed: Box<StartsThenPanics>,
}

#[tokio::test]
async fn option_and_box_close_what_a_panicking_enter_started() {
    let inside = StartsThenPanics::default();
    let mut optional = Some(inside.clone());
    let err = optional.enter().await.unwrap_err();
    assert!(err.is_panic(), "{err}");
    assert!(!inside.is_running(), "Option left its value running");

    let inside = StartsThenPanics::default();
    let mut boxed = Box::new(inside.clone());
    assert!(boxed.enter().await.unwrap_err().is_panic());
    assert!(!inside.is_running(), "Box left its value running");

    let (a, b) = (StartsThenPanics::default(), StartsThenPanics::default());
    let mut wrapped = Wrapped {
        optional: Some(a.clone()),
        boxed: Box::new(b.clone()),
    };
    let err = wrapped.enter().await.unwrap_err();
    assert_eq!(paths(&err), ["optional"]);
    assert!(!a.is_running() && !b.is_running());
}
