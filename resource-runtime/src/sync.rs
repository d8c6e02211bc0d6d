//! The crate's small concurrency chores, each done one way: locking a mutex whatever a
//! panic did to it, and catching a panic.

use std::any::Any;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll};

/// Locks `mutex`. Every critical section in the crate is a few assignments that
/// cannot panic half-way, so a poisoned lock still guards consistent state.
pub(crate) fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// The mutable contents of `mutex`, poisoned or not (see [`lock`]).
pub(crate) fn get_mut<T: ?Sized>(mutex: &mut Mutex<T>) -> &mut T {
    mutex.get_mut().unwrap_or_else(|p| p.into_inner())
}

/// What a caught panic carries.
pub(crate) type Payload = Box<dyn Any + Send + 'static>;

/// Runs `f`, turning a panic into its payload: the one place the crate catches an
/// unwind.
#[inline]
pub(crate) fn caught<T>(f: impl FnOnce() -> T) -> Result<T, Payload> {
    catch_unwind(AssertUnwindSafe(f))
}

pin_project_lite::pin_project! {
    /// Polls a future with every poll's panic turned into its payload; the future is
    /// not polled again after it panicked.
    pub(crate) struct CatchUnwind<F> {
        #[pin]
        fut: Option<F>,
    }
}

impl<F> CatchUnwind<F> {
    pub(crate) fn new(fut: F) -> Self {
        CatchUnwind { fut: Some(fut) }
    }
}

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Payload>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let Some(fut) = this.fut.as_mut().as_pin_mut() else {
            return Poll::Ready(Err(Box::new("a future polled after it panicked")));
        };
        match caught(|| fut.poll(cx)) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(out)) => Poll::Ready(Ok(out)),
            Err(payload) => {
                this.fut.set(None);
                Poll::Ready(Err(payload))
            }
        }
    }
}
