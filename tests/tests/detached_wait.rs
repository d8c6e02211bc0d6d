//! `wait_detached` (docs/design.md, "Using a resource"): it takes any timeout, from zero to
//! `Duration::MAX`, waits for every detached close in the process, names the type of
//! each one still running when its timeout passes, and returns Ok once they have all
//! finished.
//!
//! One test alone in its binary, running its scenarios one after another, each on a
//! runtime of its own: the detached registry is process-wide, and the scenarios leave
//! closes hanging on purpose.

use std::any::type_name;
use std::time::Duration;

use resource_runtime::{
    AsyncResource, Managed, ResourceError, detached_in_flight, scope, testing, wait_detached,
};
use resource_tests::{Tracked, Tracker, paths, runtime_without_timers};
use tokio::time::{Instant, sleep};

struct HungManaged;
struct HungScope;
struct Quick;

#[test]
fn wait_detached_scenarios() {
    let paused = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap()
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(takes_any_timeout());
    paused().block_on(names_each_hung_close_and_is_ok_once_they_finish());
    paused().block_on(closes_started_after_the_call_are_not_waited_for());
    runtime_without_timers().block_on(without_a_timer_it_waits_for_every_close_and_says_why());
    assert_eq!(detached_in_flight(), 0);
}

async fn takes_any_timeout() {
    wait_detached(Duration::MAX).await.unwrap();
    wait_detached(Duration::ZERO).await.unwrap();
    // With a close pending, a deadline as far off as `Duration::MAX` still waits for it.
    detach(Yields).await;
    wait_detached(Duration::MAX).await.unwrap();
    assert_eq!(detached_in_flight(), 0);
    wait_detached(Duration::ZERO).await.unwrap();
}

async fn names_each_hung_close_and_is_ok_once_they_finish() {
    let tracker = Tracker::new();
    let quick = Tracker::new();
    assert_eq!(detached_in_flight(), 0);
    wait_detached(Duration::from_secs(1)).await.unwrap();

    // A Managed dropped without close, whose close waits for the gate.
    let managed = Managed::enter(Tracked::<HungManaged>::new(&tracker).gated())
        .await
        .unwrap();
    drop(managed);
    // A scope cancelled half-way through its body, whose close waits for the gate.
    tokio::select! {
        biased;
        _ = scope(Tracked::<HungScope>::new(&tracker).gated(), async |_: &mut Tracked<HungScope>| {
            std::future::pending::<()>().await;
        }) => unreachable!("the body never ends"),
        () = tokio::task::yield_now() => {}
    }
    // A detached close that finishes at once.
    drop(Managed::enter(Tracked::<Quick>::new(&quick)).await.unwrap());
    assert_eq!(detached_in_flight(), 3);

    let error = wait_detached(Duration::from_secs(1))
        .await
        .expect_err("two closes hang");
    let mut named = paths(&error);
    named.sort();
    let mut expected = vec![
        type_name::<Tracked<HungManaged>>().to_owned(),
        type_name::<Tracked<HungScope>>().to_owned(),
    ];
    expected.sort();
    assert_eq!(named, expected, "{error}");
    for failure in error.failures() {
        assert!(failure.is_timeout(), "{failure:?}");
        assert_eq!(failure.deadline(), Some(Duration::from_secs(1)));
    }
    let text = error.to_string();
    assert!(text.contains(type_name::<Tracked<HungManaged>>()), "{text}");
    assert_eq!(detached_in_flight(), 2);
    assert_eq!(quick.tally().close_done, 1);
    assert_eq!(tracker.tally().close_done, 0);
    let left = testing::assert_closed::<Tracked<HungManaged>>(Duration::from_secs(1))
        .await
        .expect_err("still open while its close hangs");
    assert_eq!(
        left.downcast_ref::<testing::LeftOpen>().map(|l| l.count),
        Some(1),
        "{left:?}"
    );

    tracker.release();
    wait_detached(Duration::from_secs(1)).await.unwrap();
    assert_eq!(detached_in_flight(), 0);
    let tally = tracker.tally();
    assert_eq!((tally.close_done, tally.dropped), (2, 2), "{tally:?}");
    testing::assert_all_closed(Duration::from_secs(1))
        .await
        .unwrap();
}

/// A resource whose close takes `0` (on tokio's clock).
struct SlowClose(Duration);

impl AsyncResource for SlowClose {
    async fn close(&mut self) -> Result<(), ResourceError> {
        sleep(self.0).await;
        Ok(())
    }
}

/// Hands `resource` to a detached close (a `Managed` dropped without `close`).
async fn detach(resource: impl AsyncResource + 'static) {
    drop(Managed::enter(resource).await.unwrap());
}

async fn closes_started_after_the_call_are_not_waited_for() {
    let ms = Duration::from_millis;
    // Pending at the call: done at 100 ms.
    detach(SlowClose(ms(100))).await;
    // Then a stream of later closes: one every 50 ms, 300 ms each.
    let stream = tokio::spawn(async move {
        for _ in 0..40 {
            sleep(ms(50)).await;
            detach(SlowClose(ms(300))).await;
        }
    });
    tokio::task::yield_now().await;
    let start = Instant::now();
    wait_detached(Duration::from_secs(2)).await.unwrap();
    assert_eq!(start.elapsed(), ms(100), "waited for closes started later");
    assert!(
        detached_in_flight() > 0,
        "the later closes are still running"
    );
    stream.await.unwrap();
    wait_detached(Duration::from_secs(10)).await.unwrap();
    assert_eq!(detached_in_flight(), 0);
}

/// Yields a few times in its close: no timer needed, but not done at once either.
struct Yields;

impl AsyncResource for Yields {
    async fn close(&mut self) -> Result<(), ResourceError> {
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        Ok(())
    }
}

async fn without_a_timer_it_waits_for_every_close_and_says_why() {
    // Nothing pending: no timer is needed, and it is Ok.
    wait_detached(Duration::from_secs(1)).await.unwrap();
    detach(Yields).await;
    let err = wait_detached(Duration::from_secs(1)).await.unwrap_err();
    assert!(err.is_unenforced_deadline(), "{err}");
    assert_eq!(err.deadline(), Some(Duration::from_secs(1)));
    assert_eq!(
        detached_in_flight(),
        0,
        "it returned before the close finished"
    );
}
