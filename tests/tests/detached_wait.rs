//! `wait_detached` (DESIGN.md, "Using a resource"): it waits for every detached close in
//! the process, names the type of each one still running when its timeout passes, and
//! returns Ok once they have all finished.
//!
//! One test alone in its binary: the detached registry is process-wide, and this test
//! leaves closes hanging on purpose.

use std::any::type_name;
use std::time::Duration;

use resource_runtime::{Managed, detached_in_flight, scope, testing, wait_detached};
use resource_tests::{Tracked, Tracker, paths};

struct HungManaged;
struct HungScope;
struct Quick;

#[tokio::test(start_paused = true)]
async fn wait_detached_names_each_hung_close_and_is_ok_once_they_finish() {
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
    assert!(left.to_string().contains("1 left open"), "{left}");

    tracker.release();
    wait_detached(Duration::from_secs(1)).await.unwrap();
    assert_eq!(detached_in_flight(), 0);
    let tally = tracker.tally();
    assert_eq!((tally.close_done, tally.dropped), (2, 2), "{tally:?}");
    testing::assert_all_closed(Duration::from_secs(1))
        .await
        .unwrap();
}
