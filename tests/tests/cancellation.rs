//! Cancellation at every await point (docs/design.md, "Using a resource"): a `scope`, or a
//! `Managed` and its `close`, dropped after any number of polls leaves its resource
//! closed exactly once, in the background if need be, and nothing counted as open.
//!
//! The harness polls a fresh future exactly `n` times with a no-op waker, drops it,
//! waits for the detached closes, and checks the resource's counters, for every `n`
//! from 0 up to the number of polls the future needs to complete. The resources yield
//! to the runtime (`yield_now`) at every await point, so each poll moves exactly one
//! await point on and the count of polls is deterministic.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use resource_runtime::{Managed, ResourceError, scope, testing, wait_detached};
use resource_tests::{Tally, Tracked, Tracker};

const ENTER_YIELDS: usize = 2;
const BODY_YIELDS: usize = 3;
const CLOSE_YIELDS: usize = 3;

/// Polls `fut` up to `n` times with a no-op waker; its output if it completed.
fn poll_n_times<F: Future + ?Sized>(mut fut: Pin<&mut F>, n: usize) -> Option<F::Output> {
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..n {
        if let Poll::Ready(output) = fut.as_mut().poll(&mut cx) {
            return Some(output);
        }
    }
    None
}

/// Where a future was when it was dropped, from the counters.
#[derive(Debug, Default)]
struct Phases {
    never_polled: usize,
    in_enter: usize,
    in_body: usize,
    in_close: usize,
    completed: usize,
}

/// The state after a drop and `wait_detached`: the resource was entered at most once,
/// closed (to its end) exactly once if its enter started, dropped once, and nothing of
/// type `R` counts as open.
async fn check_cleaned_up<R: 'static>(n: usize, tracker: &Tracker) {
    wait_detached(Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("n = {n}: detached closes did not finish: {e}"));
    let tally_after: Tally = tracker.tally();
    assert!(tally_after.enter_started <= 1, "n = {n}: {tally_after:?}");
    let expected_closes = usize::from(tally_after.enter_started == 1);
    assert_eq!(
        tally_after.close_done, expected_closes,
        "n = {n}: the resource must be closed exactly once if its enter started: {tally_after:?}"
    );
    assert_eq!(tally_after.dropped, 1, "n = {n}: {tally_after:?}");
    assert_eq!(
        testing::open_count::<R>(),
        0,
        "n = {n}: left counted as open"
    );
}

struct ScopeTag;
type ScopeRes = Tracked<ScopeTag>;

#[tokio::test]
async fn scope_dropped_after_any_number_of_polls_closes_the_resource_exactly_once() {
    let mut phases = Phases::default();
    let mut polls_to_complete = None;
    for n in 0.. {
        let tracker = Tracker::new();
        let resource = ScopeRes::new(&tracker)
            .enter_yields(ENTER_YIELDS)
            .close_yields(CLOSE_YIELDS);
        let body_finished = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let finished = body_finished.clone();
        let mut fut: Pin<Box<dyn Future<Output = Result<u32, ResourceError>>>> =
            Box::pin(scope(resource, async move |_: &mut ScopeRes| {
                for _ in 0..BODY_YIELDS {
                    tokio::task::yield_now().await;
                }
                assert_eq!(testing::open_count::<ScopeRes>(), 1);
                finished.store(true, std::sync::atomic::Ordering::SeqCst);
                42
            }));
        let output = poll_n_times(fut.as_mut(), n);
        let before = tracker.tally();
        // While the future is alive, the resource counts as open between the end of its
        // enter and the end of its close.
        assert_eq!(
            testing::open_count::<ScopeRes>(),
            before.enter_done - before.close_done,
            "n = {n}: {before:?}"
        );
        let body_ran = body_finished.load(std::sync::atomic::Ordering::SeqCst);
        match &output {
            Some(result) => {
                assert_eq!(result.as_ref().ok(), Some(&42), "n = {n}");
                assert!(body_ran);
                assert_eq!(before.close_done, 1, "n = {n}: {before:?}");
                phases.completed += 1;
            }
            None if before.enter_started == 0 => phases.never_polled += 1,
            None if before.enter_done == 0 => phases.in_enter += 1,
            None if !body_ran => {
                assert_eq!(before.close_started, 0, "n = {n}: {before:?}");
                phases.in_body += 1;
            }
            None => {
                assert_eq!(before.close_done, 0, "n = {n}: {before:?}");
                phases.in_close += 1;
            }
        }
        drop(fut);
        check_cleaned_up::<ScopeRes>(n, &tracker).await;
        if output.is_some() {
            polls_to_complete = Some(n);
            break;
        }
        assert!(n < 100, "the scope never completed");
    }
    let polls = polls_to_complete.unwrap();
    eprintln!("scope harness: n = 0..={polls}, {phases:?}");
    // Every await point was a place of cancellation: the enter's, the body's and the
    // close's.
    assert!(polls > ENTER_YIELDS + BODY_YIELDS + CLOSE_YIELDS, "{polls}");
    assert_eq!(phases.never_polled, 1, "{phases:?}");
    assert!(phases.in_enter >= ENTER_YIELDS, "{phases:?}");
    assert!(phases.in_body >= BODY_YIELDS, "{phases:?}");
    assert!(phases.in_close >= CLOSE_YIELDS, "{phases:?}");
    assert_eq!(phases.completed, 1, "{phases:?}");
}

struct ManagedTag;
type ManagedRes = Tracked<ManagedTag>;

#[tokio::test]
async fn managed_enter_work_close_dropped_after_any_number_of_polls_closes_exactly_once() {
    let mut phases = Phases::default();
    let mut polls_to_complete = None;
    for n in 0.. {
        let tracker = Tracker::new();
        let resource = ManagedRes::new(&tracker)
            .enter_yields(ENTER_YIELDS)
            .close_yields(CLOSE_YIELDS);
        let worked = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let worked_in = worked.clone();
        let mut fut: Pin<Box<dyn Future<Output = Result<(), ResourceError>>>> =
            Box::pin(async move {
                let managed = Managed::enter(resource).await?;
                for _ in 0..BODY_YIELDS {
                    tokio::task::yield_now().await;
                }
                let _ = &*managed;
                worked_in.store(true, std::sync::atomic::Ordering::SeqCst);
                managed.close().await
            });
        let output = poll_n_times(fut.as_mut(), n);
        let before = tracker.tally();
        assert_eq!(
            testing::open_count::<ManagedRes>(),
            before.enter_done - before.close_done,
            "n = {n}: {before:?}"
        );
        let work_done = worked.load(std::sync::atomic::Ordering::SeqCst);
        match &output {
            Some(result) => {
                assert!(result.is_ok(), "n = {n}: {result:?}");
                assert_eq!(before.close_done, 1, "n = {n}: {before:?}");
                phases.completed += 1;
            }
            None if before.enter_started == 0 => phases.never_polled += 1,
            None if before.enter_done == 0 => phases.in_enter += 1,
            None if !work_done => phases.in_body += 1,
            None => {
                assert_eq!(before.close_done, 0, "n = {n}: {before:?}");
                phases.in_close += 1;
            }
        }
        drop(fut);
        check_cleaned_up::<ManagedRes>(n, &tracker).await;
        if output.is_some() {
            polls_to_complete = Some(n);
            break;
        }
        assert!(n < 100, "the future never completed");
    }
    let polls = polls_to_complete.unwrap();
    eprintln!("Managed enter+work+close harness: n = 0..={polls}, {phases:?}");
    assert!(polls > ENTER_YIELDS + BODY_YIELDS + CLOSE_YIELDS, "{polls}");
    assert_eq!(phases.never_polled, 1, "{phases:?}");
    assert!(phases.in_enter >= ENTER_YIELDS, "{phases:?}");
    assert!(phases.in_body >= BODY_YIELDS, "{phases:?}");
    assert!(phases.in_close >= CLOSE_YIELDS, "{phases:?}");
}

struct CloseTag;
type CloseRes = Tracked<CloseTag>;

#[tokio::test]
async fn managed_close_dropped_after_any_number_of_polls_finishes_in_the_background() {
    let mut cancelled_mid_close = 0;
    let mut polls_to_complete = None;
    for n in 0.. {
        let tracker = Tracker::new();
        let managed = Managed::enter(
            CloseRes::new(&tracker)
                .enter_yields(ENTER_YIELDS)
                .close_yields(CLOSE_YIELDS),
        )
        .await
        .unwrap();
        assert_eq!(testing::open_count::<CloseRes>(), 1, "n = {n}");
        let mut close = Box::pin(managed.close());
        let output = poll_n_times(close.as_mut(), n);
        let before = tracker.tally();
        match &output {
            Some(result) => {
                assert!(result.is_ok(), "n = {n}: {result:?}");
                assert_eq!(before.close_done, 1, "n = {n}: {before:?}");
                assert_eq!(testing::open_count::<CloseRes>(), 0, "n = {n}");
            }
            None => {
                assert_eq!(before.close_done, 0, "n = {n}: {before:?}");
                assert_eq!(testing::open_count::<CloseRes>(), 1, "n = {n}");
                if before.close_started > 0 {
                    cancelled_mid_close += 1;
                }
            }
        }
        drop(close);
        check_cleaned_up::<CloseRes>(n, &tracker).await;
        if output.is_some() {
            polls_to_complete = Some(n);
            break;
        }
        assert!(n < 100, "the close never completed");
    }
    let polls = polls_to_complete.unwrap();
    eprintln!("Managed::close harness: n = 0..={polls}, {cancelled_mid_close} cancelled mid-close");
    assert!(polls > CLOSE_YIELDS, "{polls}");
    assert!(cancelled_mid_close >= CLOSE_YIELDS, "{cancelled_mid_close}");
}
