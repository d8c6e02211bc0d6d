//! `Managed<R>` (docs/design.md, "Using a resource"): a guard that derefs to an entered
//! resource, closes it on `close().await`, and, dropped without close, warns naming the
//! type and closes it in the background on the current runtime (without a runtime: an
//! error log, and the resource is dropped). `into_inner` disarms it. As a field of a
//! derived struct it closes with the struct, once.

use std::any::type_name;
use std::time::Duration;

use resource_runtime::{AsyncResource, Managed, testing, wait_detached};
use resource_tests::{Events, Log, Probe, ProbeError, StartsThenPanics, Tracked, Tracker, strings};
use tracing::Level;

async fn wait() {
    wait_detached(Duration::from_secs(10))
        .await
        .expect("detached closes finish");
}

struct CloseTag;

#[tokio::test]
async fn close_closes_once_and_derefs_reach_the_resource() {
    type R = Tracked<CloseTag>;
    let tracker = Tracker::new();
    let (events, _guard) = Events::install();
    let mut managed = Managed::enter(R::new(&tracker)).await.unwrap();
    let _: &mut R = &mut managed; // DerefMut
    assert!(format!("{managed:?}").starts_with("Managed("));
    assert_eq!(tracker.tally().enter_done, 1);
    assert_eq!(testing::open_count::<R>(), 1);
    managed.close().await.unwrap();
    let tally = tracker.tally();
    assert_eq!((tally.close_done, tally.dropped), (1, 1));
    assert_eq!(testing::open_count::<R>(), 0);
    wait().await;
    assert_eq!(tracker.tally().close_started, 1, "no second close");
    assert!(events.at(Level::WARN, type_name::<R>()).is_empty());
}

#[tokio::test]
async fn close_returns_the_close_error() {
    let log = Log::new();
    let managed = Managed::enter(log.probe("a").fail_close()).await.unwrap();
    let closes = managed.close_counter();
    let error = managed.close().await.expect_err("the close fails");
    assert_eq!(
        error.downcast_ref::<ProbeError>().map(|e| e.op),
        Some("close")
    );
    wait().await;
    assert_eq!(closes.get(), 1);
}

#[tokio::test]
async fn a_close_that_panics_returns_a_panic_error_and_runs_once() {
    let log = Log::new();
    let managed = Managed::enter(log.probe("a").panic_on_close())
        .await
        .unwrap();
    let closes = managed.close_counter();
    let outcome = tokio::spawn(managed.close()).await;
    wait().await;
    let closes = closes.get();
    let returned_panic_error = matches!(&outcome, Ok(Err(e)) if e.is_panic());
    assert!(
        returned_panic_error && closes == 1,
        "expected Ok(Err(panic error)) and exactly one close; got {outcome:?} and {closes} closes"
    );
}

#[tokio::test]
async fn a_failed_enter_leaves_nothing_open_and_nothing_to_close() {
    let (events, _guard) = Events::install();
    let log = Log::new();
    let probe = log.probe("a").fail_enter();
    let closes = probe.close_counter();
    let error = Managed::enter(probe).await.expect_err("the enter fails");
    assert_eq!(
        error.downcast_ref::<ProbeError>().map(|e| e.op),
        Some("enter")
    );
    wait().await;
    assert_eq!(closes.get(), 0);
    assert_eq!(log.entries(), strings(&["enter a"]));
    assert!(events.at(Level::WARN, type_name::<Probe>()).is_empty());
}

#[tokio::test]
async fn a_panic_in_enter_is_returned_as_an_error() {
    let (events, _guard) = Events::install();
    let log = Log::new();
    let probe = log.probe("a").panic_on_enter();
    let closes = probe.close_counter();
    let outcome = tokio::spawn(Managed::enter(probe)).await;
    wait().await;
    let error = outcome
        .expect("a panic in enter comes back as an error, not an unwind")
        .expect_err("the enter failed");
    assert!(error.is_panic(), "{error:?}");
    // A panicking enter may have opened something before it panicked: it is closed
    // once (closing what was never entered is fine by the close contract).
    assert_eq!(closes.get(), 1);
    assert!(events.at(Level::WARN, type_name::<Probe>()).is_empty());
}

/// Drops an entered `Managed` on the test thread, with the capture installed there, and
/// checks the warning and the background close.
async fn drop_without_close_warns_and_closes_in_the_background<Tag: 'static>() {
    let tracker = Tracker::new();
    let (events, _guard) = Events::install();
    let managed = Managed::enter(Tracked::<Tag>::new(&tracker).close_yields(3))
        .await
        .unwrap();
    assert_eq!(testing::open_count::<Tracked<Tag>>(), 1);
    drop(managed);
    let ty = type_name::<Tracked<Tag>>();
    let warnings = events.at(Level::WARN, ty);
    assert_eq!(
        warnings.len(),
        1,
        "one warning naming `{ty}`: {:?}",
        events.all()
    );
    assert!(
        warnings[0].message.contains("without `close().await`"),
        "{warnings:?}"
    );
    wait().await;
    let tally = tracker.tally();
    assert_eq!(
        (tally.close_started, tally.close_done, tally.dropped),
        (1, 1, 1),
        "{tally:?}"
    );
    assert_eq!(testing::open_count::<Tracked<Tag>>(), 0);
    assert!(events.at(Level::ERROR, ty).is_empty(), "{:?}", events.all());
}

struct CurrentThreadTag;

#[tokio::test]
async fn dropped_without_close_on_a_current_thread_runtime_warns_and_closes_in_background() {
    drop_without_close_warns_and_closes_in_the_background::<CurrentThreadTag>().await;
}

struct MultiThreadTag;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_without_close_on_a_multi_thread_runtime_warns_and_closes_in_background() {
    drop_without_close_warns_and_closes_in_the_background::<MultiThreadTag>().await;
}

struct NoRuntimeTag;

#[test]
fn dropped_outside_any_runtime_logs_an_error_and_drops_the_resource() {
    type R = Tracked<NoRuntimeTag>;
    let tracker = Tracker::new();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let managed = rt.block_on(Managed::enter(R::new(&tracker))).unwrap();
    drop(rt);
    assert!(tokio::runtime::Handle::try_current().is_err());
    assert_eq!(testing::open_count::<R>(), 1);
    let (events, guard) = Events::install();
    drop(managed); // must not panic
    drop(guard);
    let ty = type_name::<R>();
    let errors = events.at(Level::ERROR, ty);
    assert_eq!(
        errors.len(),
        1,
        "one error naming `{ty}`: {:?}",
        events.all()
    );
    let tally = tracker.tally();
    assert_eq!(tally.dropped, 1, "the resource is dropped: {tally:?}");
    assert_eq!(tally.close_started, 0, "nothing could close it: {tally:?}");
    // It was never closed: the leak counter keeps counting it, so a test sees the leak.
    assert_eq!(testing::open_count::<R>(), 1);
}

struct IntoInnerTag;

#[tokio::test]
async fn into_inner_disarms_the_guard() {
    type R = Tracked<IntoInnerTag>;
    let tracker = Tracker::new();
    let (events, _guard) = Events::install();
    let managed = Managed::enter(R::new(&tracker)).await.unwrap();
    let mut resource = managed.into_inner();
    wait().await;
    let tally = tracker.tally();
    assert_eq!(
        (tally.enter_done, tally.close_started, tally.dropped),
        (1, 0, 0),
        "handed back entered, not closed: {tally:?}"
    );
    assert!(
        events
            .all()
            .iter()
            .all(|e| e.level > Level::WARN || !e.mentions("Tracked"))
    );
    // Closing is the caller's job again, and the leak counter no longer tracks it.
    assert_eq!(testing::open_count::<R>(), 0);
    resource_runtime::AsyncResource::close(&mut resource)
        .await
        .unwrap();
    drop(resource);
    wait().await;
    let tally = tracker.tally();
    assert_eq!((tally.close_done, tally.dropped), (1, 1));
}

struct FieldTag;

#[derive(AsyncResource)]
struct HoldsManaged {
    #[resource]
    conn: Managed<Tracked<FieldTag>>,
}

#[tokio::test]
async fn a_managed_field_closes_with_its_struct_and_once() {
    let tracker = Tracker::new();
    let conn = Managed::enter(Tracked::<FieldTag>::new(&tracker))
        .await
        .unwrap();
    let mut holder = HoldsManaged { conn };
    assert_eq!(testing::open_count::<Tracked<FieldTag>>(), 1);
    holder.close().await.unwrap();
    holder.close().await.unwrap();
    assert_eq!(tracker.tally().close_done, 1);
    assert_eq!(testing::open_count::<Tracked<FieldTag>>(), 0);
    drop(holder); // closed already: no warning, no second close
    assert_eq!(tracker.tally().close_done, 1);
}

struct HalfClosedTag;

#[tokio::test]
async fn a_close_cancelled_half_way_finishes_in_the_background() {
    type R = Tracked<HalfClosedTag>;
    let tracker = Tracker::new();
    let managed = Managed::enter(R::new(&tracker).close_yields(2).gated())
        .await
        .unwrap();
    tokio::select! {
        biased;
        _ = managed.close() => panic!("the close waits for the gate"),
        () = tokio::task::yield_now() => {}
    }
    let tally = tracker.tally();
    assert_eq!((tally.close_started, tally.close_done), (1, 0), "{tally:?}");
    assert_eq!(testing::open_count::<R>(), 1, "still open while it closes");
    tracker.release();
    wait().await;
    let tally = tracker.tally();
    assert_eq!((tally.close_done, tally.dropped), (1, 1), "{tally:?}");
    assert_eq!(testing::open_count::<R>(), 0);
}

/// The enter rule in `Managed::enter`, for a derived struct whose second field panics.
#[derive(Debug, AsyncResource)]
struct Holder {
    #[resource]
    first: tokio_util::sync::CancellationToken,
    #[resource]
    second: StartsThenPanics,
}

#[tokio::test]
async fn managed_enter_closes_what_a_panicking_enter_started() {
    let resource = StartsThenPanics::default();
    let err = Managed::enter(resource.clone()).await.unwrap_err();
    assert!(err.is_panic(), "{err}");
    assert!(!resource.is_running());

    let (first, second) = (
        tokio_util::sync::CancellationToken::new(),
        StartsThenPanics::default(),
    );
    let err = Managed::enter(Holder {
        first: first.clone(),
        second: second.clone(),
    })
    .await
    .unwrap_err();
    assert!(err.is_panic(), "{err}");
    assert!(first.is_cancelled() && !second.is_running());
}
