//! Cancellation and misuse at the edges of `ResourceStack`, `Managed` and
//! `wait_detached`. One test in this binary waits on the process-wide detached
//! registry, so each test uses its own resource type.

use std::future::Future;
use std::task::{Context, Waker};
use std::time::Duration;

use resource_runtime::{AsyncResource, Managed, ResourceError, ResourceStack, testing};
use resource_tests::{Tracked, Tracker};

/// Polls `fut` once and reports whether it is still pending (then it is dropped by the
/// caller: a cancellation at its first await point).
fn pending_after_one_poll<F: Future>(fut: F) -> bool {
    let mut fut = std::pin::pin!(fut);
    fut.as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
        .is_pending()
}

struct StackCloseTag;

#[tokio::test]
async fn a_stack_close_cancelled_half_way_still_closes_the_entry_it_was_closing() {
    let tracker = Tracker::new();
    let mut stack = ResourceStack::new();
    stack.push(Tracked::<StackCloseTag>::new(&tracker).close_yields(1));
    stack.push(Tracked::<StackCloseTag>::new(&tracker).close_yields(20));
    // Cut while the top entry (20 yields) is closing.
    assert!(pending_after_one_poll(stack.close()));
    assert_eq!(
        stack.len(),
        2,
        "the entry being closed is still on the stack"
    );
    drop(stack); // closes what is left in the background
    resource_runtime::wait_detached(Duration::from_secs(10))
        .await
        .unwrap();
    let tally = tracker.tally();
    assert_eq!(tally.close_done, 2, "{tally:?}");
    assert_eq!(tally.dropped, 2, "{tally:?}");
}

struct StackEnterTag;

#[tokio::test]
async fn a_stack_enter_cancelled_half_way_closes_the_resource_in_the_background() {
    let tracker = Tracker::new();
    let mut stack = ResourceStack::new();
    let resource = Tracked::<StackEnterTag>::new(&tracker).enter_yields(20);
    assert!(pending_after_one_poll(stack.enter(resource)));
    assert!(stack.is_empty());
    resource_runtime::wait_detached(Duration::from_secs(10))
        .await
        .unwrap();
    let tally = tracker.tally();
    assert_eq!(tally.close_done, 1, "{tally:?}");
    assert_eq!(tally.dropped, 1, "{tally:?}");
}

/// Panics in `enter`, after which its close must still run.
struct PanicsInEnter(Tracker);

impl AsyncResource for PanicsInEnter {
    async fn enter(&mut self) -> Result<(), ResourceError> {
        panic!("enter exploded")
    }

    async fn close(&mut self) -> Result<(), ResourceError> {
        let _ = Tracked::<()>::new(&self.0).close().await;
        Ok(())
    }
}

#[tokio::test]
async fn a_stack_enter_that_panics_returns_an_error_and_pushes_nothing() {
    let tracker = Tracker::new();
    let mut stack = ResourceStack::new();
    let err = stack
        .enter(PanicsInEnter(tracker.clone()))
        .await
        .unwrap_err();
    assert!(err.is_panic(), "{err}");
    assert_eq!(err.panic_message(), Some("enter exploded"));
    assert!(stack.is_empty());
    assert_eq!(tracker.tally().close_done, 1, "closed once after the panic");
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

#[tokio::test]
async fn wait_detached_takes_any_timeout() {
    resource_runtime::wait_detached(Duration::MAX)
        .await
        .unwrap();
    resource_runtime::wait_detached(Duration::ZERO)
        .await
        .unwrap();
}
