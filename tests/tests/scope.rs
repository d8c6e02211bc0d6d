//! `scope(resource, body)` (docs/design.md, "Using a resource"): enter, run the body, close,
//! whatever happens. A panic in the body resumes after the close; a close that fails or
//! panics returns its error instead of the body's value; a failed enter never runs the
//! body.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use resource_runtime::{AsyncResource, ResourceError, scope, testing};
use resource_tests::{Log, Probe, ProbeError, StartsThenPanics, Tracked, Tracker, paths, strings};

/// A counter the body bumps, to prove whether it ran.
fn body_counter() -> Arc<AtomicUsize> {
    Arc::new(AtomicUsize::new(0))
}

#[tokio::test]
async fn body_runs_between_enter_and_close_and_its_value_is_returned() {
    let log = Log::new();
    let probe = log.probe("a");
    let (enters, closes) = (probe.enter_counter(), probe.close_counter());
    let seen = log.clone();
    let value = scope(probe, async move |p: &mut Probe| {
        seen.push(format!("body with {}", p.name()));
        7
    })
    .await
    .unwrap();
    assert_eq!(value, 7);
    assert_eq!(
        log.entries(),
        strings(&["enter a", "body with a", "close a"])
    );
    assert_eq!((enters.get(), closes.get()), (1, 1));
}

struct CountedTag;

#[tokio::test]
async fn the_resource_counts_as_open_only_inside_the_scope() {
    let tracker = Tracker::new();
    type R = Tracked<CountedTag>;
    assert_eq!(testing::open_count::<R>(), 0);
    let inside = scope(R::new(&tracker), async |_: &mut R| {
        testing::open_count::<R>()
    })
    .await
    .unwrap();
    assert_eq!(inside, 1);
    assert_eq!(testing::open_count::<R>(), 0);
    let tally = tracker.tally();
    assert_eq!(
        (tally.enter_done, tally.close_done, tally.dropped),
        (1, 1, 1)
    );
}

#[tokio::test]
async fn a_panic_in_the_body_resumes_after_the_resource_is_closed() {
    let log = Log::new();
    let probe = log.probe("a");
    let closes = probe.close_counter();
    let seen = log.clone();
    let task = tokio::spawn(async move {
        scope(probe, async move |_: &mut Probe| -> u32 {
            seen.push("body");
            tokio::task::yield_now().await;
            panic!("body blew up");
        })
        .await
    });
    let error = task.await.expect_err("the panic must resume out of scope");
    assert!(error.is_panic(), "{error:?}");
    let payload = error.into_panic();
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"body blew up"));
    // Closed before the panic resumed, exactly once, and not again in the background.
    assert_eq!(closes.get(), 1);
    assert_eq!(log.entries(), strings(&["enter a", "body", "close a"]));
    resource_runtime::wait_detached(std::time::Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(closes.get(), 1);
}

#[tokio::test]
async fn a_panic_in_the_body_resumes_even_when_the_close_fails_too() {
    let log = Log::new();
    let probe = log.probe("a").fail_close();
    let closes = probe.close_counter();
    let task = tokio::spawn(scope(probe, async |_: &mut Probe| -> u32 {
        panic!("body blew up");
    }));
    let error = task
        .await
        .expect_err("the body's panic wins over the close error");
    assert!(error.is_panic());
    assert_eq!(closes.get(), 1);
}

#[tokio::test]
async fn a_panic_in_close_is_returned_as_an_error_and_the_close_runs_once() {
    let log = Log::new();
    let probe = log.probe("a").panic_on_close();
    let closes = probe.close_counter();
    let ran = body_counter();
    let ran_in = ran.clone();
    let task = tokio::spawn(scope(probe, async move |_: &mut Probe| {
        ran_in.fetch_add(1, Ordering::SeqCst);
        "body value"
    }));
    let outcome = task.await;
    // Let any background close run, so a second close would be counted.
    resource_runtime::wait_detached(std::time::Duration::from_secs(10))
        .await
        .unwrap();
    let closes = closes.get();
    let returned_panic_error = matches!(&outcome, Ok(Err(e)) if e.is_panic());
    assert!(
        returned_panic_error && closes == 1,
        "expected Ok(Err(panic error)) and exactly one close; got {outcome:?} and {closes} closes"
    );
    let error = outcome.unwrap().unwrap_err();
    let message = error.failures().find_map(|f| f.panic_message());
    assert_eq!(message, Some("probe a panicked in close"), "{error:?}");
    assert_eq!(ran.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_close_error_is_returned_and_the_body_value_discarded() {
    let log = Log::new();
    let probe = log.probe("a").fail_close();
    let closes = probe.close_counter();
    let ran = body_counter();
    let ran_in = ran.clone();
    let result = scope(probe, async move |_: &mut Probe| {
        ran_in.fetch_add(1, Ordering::SeqCst);
        "body value"
    })
    .await;
    let error = result.expect_err("the close error replaces the body's value");
    assert_eq!(
        error.downcast_ref::<ProbeError>(),
        Some(&ProbeError {
            name: "a".into(),
            op: "close"
        })
    );
    assert_eq!(error.failures().count(), 1);
    assert_eq!(ran.load(Ordering::SeqCst), 1);
    assert_eq!(closes.get(), 1);
    assert_eq!(log.entries(), strings(&["enter a", "close a"]));
}

#[tokio::test]
async fn the_body_own_result_stays_inside_the_value() {
    let log = Log::new();
    let result: Result<Result<u32, String>, ResourceError> =
        scope(log.probe("a"), async |_: &mut Probe| {
            Err("body failed".to_owned())
        })
        .await;
    assert_eq!(result.unwrap(), Err("body failed".to_owned()));
    assert_eq!(log.entries(), strings(&["enter a", "close a"]));
}

#[tokio::test]
async fn a_failed_enter_never_runs_the_body_nor_closes() {
    let log = Log::new();
    let probe = log.probe("a").fail_enter();
    let (enters, closes) = (probe.enter_counter(), probe.close_counter());
    let ran = body_counter();
    let ran_in = ran.clone();
    let result = scope(probe, async move |_: &mut Probe| {
        ran_in.fetch_add(1, Ordering::SeqCst);
    })
    .await;
    let error = result.expect_err("the enter error is returned");
    assert_eq!(
        error.downcast_ref::<ProbeError>().map(|e| e.op),
        Some("enter")
    );
    assert_eq!(ran.load(Ordering::SeqCst), 0, "the body must not run");
    assert_eq!((enters.get(), closes.get()), (1, 0));
    resource_runtime::wait_detached(std::time::Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(
        closes.get(),
        0,
        "nothing closes it in the background either"
    );
}

/// A derived resource whose second field fails to enter: its enter rolls back the
/// first, and `scope` must not close anything again.
#[derive(AsyncResource)]
struct Pair {
    #[resource]
    first: Probe,
    #[resource]
    second: Probe,
}

#[tokio::test]
async fn a_failed_enter_is_rolled_back_by_the_enter_alone() {
    let log = Log::new();
    let pair = Pair {
        first: log.probe("first"),
        second: log.probe("second").fail_enter(),
    };
    let first_closes = pair.first.close_counter();
    let second_closes = pair.second.close_counter();
    let ran = body_counter();
    let ran_in = ran.clone();
    let error = scope(pair, async move |_: &mut Pair| {
        ran_in.fetch_add(1, Ordering::SeqCst);
    })
    .await
    .expect_err("the enter fails");
    assert_eq!(paths(&error), ["second"]);
    assert_eq!(ran.load(Ordering::SeqCst), 0);
    resource_runtime::wait_detached(std::time::Duration::from_secs(10))
        .await
        .unwrap();
    // The rollback closed `first` once; nobody closed anything after it.
    assert_eq!((first_closes.get(), second_closes.get()), (1, 0));
    assert_eq!(
        log.entries(),
        strings(&["enter first", "enter second", "close first"])
    );
    assert_eq!(testing::open_count::<Pair>(), 0);
}

#[tokio::test]
async fn a_panic_in_enter_is_returned_as_an_error_and_the_body_never_runs() {
    let log = Log::new();
    let probe = log.probe("a").panic_on_enter();
    let closes = probe.close_counter();
    let ran = body_counter();
    let ran_in = ran.clone();
    let outcome = tokio::spawn(scope(probe, async move |_: &mut Probe| {
        ran_in.fetch_add(1, Ordering::SeqCst);
    }))
    .await;
    resource_runtime::wait_detached(std::time::Duration::from_secs(10))
        .await
        .unwrap();
    let error = outcome
        .expect("a panic in enter comes back as an error, not an unwind")
        .expect_err("the enter failed");
    assert!(error.is_panic(), "{error:?}");
    let message = error.failures().find_map(|f| f.panic_message());
    assert_eq!(message, Some("probe a panicked in enter"));
    assert_eq!(ran.load(Ordering::SeqCst), 0, "the body must not run");
    // A panicking enter may have opened something before it panicked: it is closed
    // once (closing what was never entered is fine by the close contract).
    assert_eq!(closes.get(), 1, "a panicked enter is closed once");
}

/// The enter rule in `scope`: the body never runs, and what the panicking enter
/// started is closed.
#[tokio::test]
async fn a_scope_closes_a_resource_whose_enter_panicked() {
    let resource = StartsThenPanics::default();
    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    let err = scope(resource.clone(), async move |_: &mut StartsThenPanics| {
        r.fetch_add(1, Ordering::SeqCst);
    })
    .await
    .unwrap_err();
    assert!(err.is_panic(), "{err}");
    assert_eq!(ran.load(Ordering::SeqCst), 0);
    assert!(!resource.is_running());
}
