//! The generated close of a struct of sequential fields allocates nothing when every
//! field closes cleanly (docs/design.md, "The derive"). Its own test binary, because it
//! installs a counting global allocator.

// A `#[global_allocator]` needs an `unsafe impl GlobalAlloc`; the impl below only
// forwards to `System` and counts. The crate denies `unsafe_code` (see Cargo.toml), and
// this is the one file that allows it.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use resource_runtime::{AsyncResource, ResourceError};

/// Forwards to the system allocator and counts the allocations made on a thread while
/// that thread has counting switched on, so tests running in parallel on other threads
/// do not disturb the count.
struct Counting;

thread_local! {
    // Const-initialised and without destructors: reading them allocates nothing and
    // registers nothing, so the allocator can use them.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

fn record() {
    let _ = COUNTING.try_with(|on| {
        if on.get() {
            let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        }
    });
}

// SAFETY: every method forwards its arguments unchanged to `System`, which upholds the
// `GlobalAlloc` contract; counting touches only const thread-locals and never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record();
        // SAFETY: the caller's guarantees about `layout` are passed on as they are.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record();
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record();
        // SAFETY: `ptr` was allocated by `System` (through this allocator) with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` (through this allocator) with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f` and returns how many allocations it made on this thread.
fn allocations_during<R>(f: impl FnOnce() -> R) -> (usize, R) {
    ALLOCATIONS.with(|n| n.set(0));
    COUNTING.with(|on| on.set(true));
    let result = f();
    COUNTING.with(|on| on.set(false));
    (ALLOCATIONS.with(Cell::get), result)
}

/// Polls `fut` once with a waker that does nothing: the resources below never wait, so
/// one poll runs the whole close without any runtime (whose own bookkeeping would be
/// counted too).
fn poll_once<F: Future>(fut: F) -> Poll<F::Output> {
    let mut fut = pin!(fut);
    fut.as_mut().poll(&mut Context::from_waker(Waker::noop()))
}

/// The cheapest possible resource: a flag, and optionally a failure on close.
#[derive(Debug, Default)]
struct Flag {
    open: bool,
    fail_close: bool,
}

impl AsyncResource for Flag {
    async fn enter(&mut self) -> Result<(), ResourceError> {
        self.open = true;
        Ok(())
    }

    async fn close(&mut self) -> Result<(), ResourceError> {
        let was_open = std::mem::replace(&mut self.open, false);
        if was_open && self.fail_close {
            return Err(ResourceError::other("flag refused to close"));
        }
        Ok(())
    }
}

#[derive(AsyncResource, Default)]
struct Sixteen {
    #[resource]
    f00: Flag,
    #[resource]
    f01: Flag,
    #[resource]
    f02: Flag,
    #[resource]
    f03: Flag,
    #[resource]
    f04: Flag,
    #[resource]
    f05: Flag,
    #[resource]
    f06: Flag,
    #[resource]
    f07: Flag,
    #[resource]
    f08: Flag,
    #[resource]
    f09: Flag,
    #[resource]
    f10: Flag,
    #[resource]
    f11: Flag,
    #[resource]
    f12: Flag,
    #[resource]
    f13: Flag,
    #[resource]
    f14: Flag,
    #[resource]
    f15: Flag,
}

impl Sixteen {
    fn flags(&self) -> [&Flag; 16] {
        [
            &self.f00, &self.f01, &self.f02, &self.f03, &self.f04, &self.f05, &self.f06, &self.f07,
            &self.f08, &self.f09, &self.f10, &self.f11, &self.f12, &self.f13, &self.f14, &self.f15,
        ]
    }

    fn entered() -> Self {
        let mut value = Sixteen::default();
        assert!(matches!(poll_once(value.enter()), Poll::Ready(Ok(()))));
        assert!(value.flags().iter().all(|f| f.open));
        value
    }
}

#[test]
fn the_counter_sees_allocations() {
    let (count, v) = allocations_during(|| std::hint::black_box(vec![1_u8; 32]));
    assert_eq!(v.len(), 32);
    assert!(count >= 1, "a Vec allocation was not counted");
}

#[test]
fn a_clean_close_of_sixteen_sequential_fields_allocates_nothing() {
    let mut value = Sixteen::entered();
    let (count, poll) = allocations_during(|| poll_once(value.close()));
    assert!(
        matches!(poll, Poll::Ready(Ok(()))),
        "the close did not finish cleanly in one poll: {poll:?}"
    );
    assert!(
        value.flags().iter().all(|f| !f.open),
        "the close did not run"
    );
    assert_eq!(count, 0, "the happy-path close allocated {count} times");
}

#[test]
fn a_second_clean_close_allocates_nothing_either() {
    let mut value = Sixteen::entered();
    assert!(poll_once(value.close()).is_ready());
    let (count, poll) = allocations_during(|| poll_once(value.close()));
    assert!(matches!(poll, Poll::Ready(Ok(()))));
    assert_eq!(count, 0);
}

#[test]
fn a_failing_close_is_counted_so_the_happy_path_measurement_can_fail() {
    // The same struct, one field failing: the error is built on the heap, and the
    // counter must see it through the derived code.
    let mut value = Sixteen::entered();
    value.f07.fail_close = true;
    let (count, poll) = allocations_during(|| poll_once(value.close()));
    let Poll::Ready(Err(err)) = poll else {
        panic!("expected a finished, failed close: {poll:?}");
    };
    assert_eq!(err.path(), Some("f07"));
    assert!(count > 0);
}
