//! The testing aid (`resource_runtime::testing`): every resource entered through
//! `scope` or `Managed` counts as open until its close has run, and
//! `assert_closed::<T>` fails, naming the type and the count, while any is left open.
//!
//! Counts are process-wide per type and the tests of this binary run in parallel, so
//! each test has resource types of its own.

use std::any::type_name;
use std::time::Duration;

use resource_runtime::{Managed, ResourceError, scope, testing};
use resource_tests::{Tracked, Tracker, paths};

const WAIT: Duration = Duration::from_secs(10);

/// How many resources `error` reports left open, as the typed value it carries.
fn left_open(error: &ResourceError) -> Option<usize> {
    error
        .downcast_ref::<testing::LeftOpen>()
        .map(|left| left.count)
}

struct LifeTag;

#[tokio::test]
async fn open_count_is_one_while_a_managed_lives_and_zero_after_its_close() {
    type R = Tracked<LifeTag>;
    let tracker = Tracker::new();
    assert_eq!(testing::open_count::<R>(), 0);
    let managed = Managed::enter(R::new(&tracker).enter_yields(1).close_yields(2))
        .await
        .unwrap();
    assert_eq!(testing::open_count::<R>(), 1);
    managed.close().await.unwrap();
    assert_eq!(testing::open_count::<R>(), 0);

    // Dropped instead: open until the background close has run.
    let managed = Managed::enter(R::new(&tracker).close_yields(2))
        .await
        .unwrap();
    assert_eq!(testing::open_count::<R>(), 1);
    drop(managed);
    assert_eq!(
        testing::open_count::<R>(),
        1,
        "on a current-thread runtime the background close has not run yet"
    );
    testing::assert_closed::<R>(WAIT).await.unwrap();
    assert_eq!(testing::open_count::<R>(), 0);
    assert_eq!(tracker.tally().close_done, 2);
}

struct ProperTag;

#[tokio::test]
async fn assert_closed_passes_after_proper_closes() {
    type R = Tracked<ProperTag>;
    let tracker = Tracker::new();
    testing::assert_closed::<R>(WAIT).await.unwrap();
    scope(R::new(&tracker), async |_: &mut R| {}).await.unwrap();
    Managed::enter(R::new(&tracker))
        .await
        .unwrap()
        .close()
        .await
        .unwrap();
    drop(Managed::enter(R::new(&tracker)).await.unwrap());
    testing::assert_closed::<R>(WAIT).await.unwrap();
    let tally = tracker.tally();
    assert_eq!(
        (tally.enter_done, tally.close_done, tally.dropped),
        (3, 3, 3)
    );
}

struct LeftOpenTag;

#[tokio::test]
async fn assert_closed_fails_naming_the_type_and_count_while_something_is_open() {
    type R = Tracked<LeftOpenTag>;
    let tracker = Tracker::new();
    let first = Managed::enter(R::new(&tracker)).await.unwrap();
    let second = Managed::enter(R::new(&tracker)).await.unwrap();

    let error = testing::assert_closed::<R>(WAIT)
        .await
        .expect_err("two are left open");
    assert_eq!(paths(&error), [type_name::<R>()]);
    let text = error.to_string();
    assert!(text.contains(type_name::<R>()), "{text}");
    assert_eq!(left_open(&error), Some(2), "{error:?}");

    first.close().await.unwrap();
    let error = testing::assert_closed::<R>(WAIT)
        .await
        .expect_err("one is left open");
    assert_eq!(left_open(&error), Some(1), "{error:?}");

    second.close().await.unwrap();
    testing::assert_closed::<R>(WAIT).await.unwrap();
}

struct OpenTag;
struct OtherTag;

#[tokio::test]
async fn assert_closed_looks_at_its_own_type_only() {
    let tracker = Tracker::new();
    let open = Managed::enter(Tracked::<OpenTag>::new(&tracker))
        .await
        .unwrap();
    testing::assert_closed::<Tracked<OtherTag>>(WAIT)
        .await
        .unwrap();
    assert!(
        testing::open_resources()
            .iter()
            .any(|(name, n)| *name == type_name::<Tracked<OpenTag>>() && *n == 1),
        "{:?}",
        testing::open_resources()
    );
    open.close().await.unwrap();
    testing::assert_closed::<Tracked<OpenTag>>(WAIT)
        .await
        .unwrap();
}
