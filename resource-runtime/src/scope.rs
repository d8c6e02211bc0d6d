//! Using a resource: [`scope`] (enter, body, close, whatever happens) and [`Managed`]
//! (a guard that derefs to the resource and closes it when told to, or in the
//! background when dropped).

use std::ops::{Deref, DerefMut};
use std::panic::resume_unwind;

use crate::AsyncResource;
use crate::detached::detach;
use crate::error::ResourceError;
use crate::step::catch_panic;
use crate::sync::CatchUnwind;
use crate::testing;

/// What a guard logs when it is dropped before its resource closed; its owner says.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DropNotice {
    /// How the owner is named in the message (`"Managed"`, `"scope"`).
    pub(crate) owner: &'static str,
    /// Whether dropping it while open is a bug of the caller (a warning), rather than
    /// the cancellation that is normal in async Rust (a debug message).
    pub(crate) open_is_a_bug: bool,
}

/// Where the guard's resource is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Entering,
    Open,
    Closing,
    /// Closed: the guard holds the closed value, and its drop has nothing to do.
    Closed,
}

/// Owns a resource between enter and close; dropped before the close finished, it
/// hands the resource to a detached close.
pub(crate) struct Guard<R: AsyncResource + 'static> {
    /// `None` only once the resource was handed back (`take`).
    resource: Option<R>,
    /// Counted as open by [`testing`] (entered, not yet closed).
    counted: bool,
    notice: DropNotice,
    phase: Phase,
}

impl<R: AsyncResource + 'static> Guard<R> {
    pub(crate) fn new(resource: R, notice: DropNotice) -> Self {
        Guard {
            resource: Some(resource),
            counted: false,
            notice,
            phase: Phase::Entering,
        }
    }

    fn get(&self) -> &R {
        // `resource` is `None` only after `take`, which consumes the guard's owner, so
        // no caller can reach this with it empty.
        self.resource
            .as_ref()
            .unwrap_or_else(|| unreachable!("guard used after its resource was taken"))
    }

    fn get_mut(&mut self) -> &mut R {
        self.resource
            .as_mut()
            .unwrap_or_else(|| unreachable!("guard used after its resource was taken"))
    }

    /// The resource is entered: counted as open, and closed by the guard from now on.
    fn opened(&mut self) {
        testing::opened::<R>();
        self.counted = true;
        self.phase = Phase::Open;
    }

    fn uncount(&mut self) {
        if std::mem::take(&mut self.counted) {
            testing::closed::<R>();
        }
    }

    /// Enters the resource by the enter rule: on failure nothing is left open.
    pub(crate) async fn enter(&mut self) -> Result<(), ResourceError> {
        // The enter rule: a panicking enter is caught and followed by a close.
        let result = crate::resource::enter_or_close(self.get_mut()).await;
        match result {
            Ok(()) => {
                self.opened();
                Ok(())
            }
            Err(e) => {
                self.phase = Phase::Closed;
                self.resource = None;
                Err(e)
            }
        }
    }

    /// Closes the resource and keeps the closed value. If this future is dropped
    /// half-way, the guard is still armed and its drop finishes the close in the
    /// background. Closing a closed guard does nothing.
    pub(crate) async fn close(&mut self) -> Result<(), ResourceError> {
        if self.phase == Phase::Closed || self.resource.is_none() {
            return Ok(());
        }
        self.phase = Phase::Closing;
        let resource = self.get_mut();
        // A panicking close is reported like a failed one, and the caller gets the
        // error instead of the unwind.
        let result = catch_panic(async { resource.close().await }).await;
        self.phase = Phase::Closed;
        self.uncount();
        result
    }

    /// Hands the resource back, disarmed.
    pub(crate) fn take(&mut self) -> Option<R> {
        self.uncount();
        self.resource.take()
    }
}

impl<R: AsyncResource + 'static> Drop for Guard<R> {
    #[inline]
    fn drop(&mut self) {
        if self.phase != Phase::Closed {
            self.close_in_background();
        }
    }
}

impl<R: AsyncResource + 'static> Guard<R> {
    /// Dropped before its close finished: the resource goes to a detached close.
    #[cold]
    fn close_in_background(&mut self) {
        let Some(resource) = self.resource.take() else {
            return;
        };
        let ty = std::any::type_name::<R>();
        let owner = self.notice.owner;
        match self.phase {
            Phase::Open if self.notice.open_is_a_bug => tracing::warn!(
                resource = ty,
                "`{owner}<{ty}>` dropped without `close().await`: closing it in the background; call `close` to see its outcome"
            ),
            Phase::Entering => tracing::debug!(
                resource = ty,
                "the enter of `{ty}` in `{owner}` was cancelled: closing what it entered in the background"
            ),
            Phase::Closing => tracing::debug!(
                resource = ty,
                "the close of `{ty}` in `{owner}` was cancelled: finishing it in the background"
            ),
            Phase::Open | Phase::Closed => tracing::debug!(
                resource = ty,
                "`{owner}` over `{ty}` dropped before it finished: closing it in the background"
            ),
        }
        detach(resource, ty, std::mem::take(&mut self.counted));
    }
}

/// Enters `resource`, runs `body` with it, and closes it, whatever happens: Python's
/// `async with`, with the cases Python leaves open closed too.
///
/// - A failed enter never runs the body: its error is returned (the enter has already
///   closed what it brought up).
/// - When the body returns, the resource is closed; a close error (a panic in the close
///   included, caught) is returned instead of the body's value. The body's own `Result`
///   stays inside `T`.
/// - When the body panics, the resource is closed (the outcome is logged), then the
///   panic resumes.
/// - When the future of `scope` is dropped half-way (a `select!`, a timeout, a
///   cancelled task), the resource is closed as a detached task on the current runtime;
///   [`wait_detached`](crate::wait_detached) waits for such closes.
///
/// The resource is owned by the scope, and so must be `'static`: a detached close can
/// outlive the caller's stack frame, and could not if it borrowed from it.
///
/// ```
/// use resource_runtime::{AsyncResource, ResourceError, scope};
/// use tokio_util::sync::CancellationToken;
///
/// #[derive(AsyncResource)]
/// struct Worker {
///     #[resource]
///     stop: CancellationToken,
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), ResourceError> {
/// let stop = CancellationToken::new();
/// let answer = scope(Worker { stop: stop.clone() }, async |worker: &mut Worker| {
///     assert!(!worker.stop.is_cancelled());
///     42
/// })
/// .await?;
/// assert_eq!(answer, 42);
/// assert!(stop.is_cancelled()); // closed on the way out
/// # Ok(())
/// # }
/// ```
pub async fn scope<R, F, T>(resource: R, body: F) -> Result<T, ResourceError>
where
    R: AsyncResource + 'static, // 'static: if the scope is dropped, a detached close outlives the caller
    F: AsyncFnOnce(&mut R) -> T,
{
    let mut guard = Guard::new(
        resource,
        DropNotice {
            owner: "scope",
            open_is_a_bug: false,
        },
    );
    // Enter, body and close run under one panic guard (a guard per step costs each
    // poll its own); a panic is routed by the phase it stopped in.
    let run = CatchUnwind::new(async {
        let entered = guard.get_mut().enter().await;
        if let Err(error) = entered {
            // The enter rule: an enter that returned `Err` is not closed again.
            guard.phase = Phase::Closed;
            guard.resource = None;
            return Err(error);
        }
        guard.opened();
        let value = body(guard.get_mut()).await;
        guard.phase = Phase::Closing;
        let closed = guard.get_mut().close().await;
        guard.phase = Phase::Closed;
        guard.uncount();
        closed.map(|()| value)
    })
    .await;
    let panic = match run {
        Ok(result) => return result,
        Err(panic) => panic,
    };
    match guard.phase {
        // The enter rule: a value whose enter panicked is closed.
        Phase::Entering => {
            let error = ResourceError::from_panic(panic);
            let rollback = catch_panic(async { guard.get_mut().close().await }).await;
            guard.phase = Phase::Closed;
            guard.resource = None;
            Err(match rollback {
                Ok(()) => error,
                Err(close) => error.combine(close.in_rollback()),
            })
        }
        // A panicking close is reported like a failed one.
        Phase::Closing | Phase::Closed => {
            guard.phase = Phase::Closed;
            guard.uncount();
            Err(ResourceError::from_panic(panic))
        }
        Phase::Open => {
            let closed = guard.close().await;
            let ty = std::any::type_name::<R>();
            match &closed {
                Ok(()) => tracing::error!(
                    resource = ty,
                    "the body of a scope over `{ty}` panicked; the resource was closed"
                ),
                Err(error) => tracing::error!(
                    resource = ty,
                    %error,
                    "the body of a scope over `{ty}` panicked; closing the resource failed too: {error}"
                ),
            }
            resume_unwind(panic)
        }
    }
}

/// A guard over an entered resource: derefs to it, and is closed with
/// [`close`](Managed::close).
///
/// Dropped without `close`, it logs a warning naming the type and closes the resource
/// as a detached task on the current tokio runtime ([`wait_detached`](crate::wait_detached)
/// waits for it); without a runtime it logs an error and the resource is dropped. It
/// never blocks a runtime thread to close.
///
/// ```
/// use resource_runtime::{AsyncResource, Managed, ResourceError};
/// use tokio_util::sync::CancellationToken;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), ResourceError> {
/// let stop = CancellationToken::new();
/// let token = Managed::enter(stop.clone()).await?;
/// assert!(!token.is_cancelled()); // derefs to the resource
/// token.close().await?;
/// assert!(stop.is_cancelled());
/// # Ok(())
/// # }
/// ```
pub struct Managed<R: AsyncResource + 'static> {
    guard: Guard<R>,
}

impl<R: AsyncResource + 'static> Managed<R> {
    /// Enters `resource` and guards it. A failed enter returns its error and leaves
    /// nothing open.
    pub async fn enter(resource: R) -> Result<Self, ResourceError> {
        let mut guard = Guard::new(
            resource,
            DropNotice {
                owner: "Managed",
                open_is_a_bug: true,
            },
        );
        guard.enter().await?;
        Ok(Managed { guard })
    }

    /// Closes the resource. If this future is dropped before it finishes, the close is
    /// run again from the start in the background (a resource's close must allow that,
    /// as it must allow a second close).
    pub async fn close(mut self) -> Result<(), ResourceError> {
        self.guard.close().await
    }

    /// Disarms the guard and hands the resource back, still entered: closing it is the
    /// caller's job again, and the `testing` leak counter no longer counts it.
    pub fn into_inner(mut self) -> R {
        self.guard
            .take()
            .unwrap_or_else(|| unreachable!("a Managed always holds its resource"))
    }
}

/// A `Managed` field of a derived struct closes with the struct. The closed value stays
/// inside, so the guard still derefs to it (its operations then fail as closed ones do);
/// a second close does nothing, and the guard's drop has nothing left to do.
impl<R: AsyncResource + 'static> AsyncResource for Managed<R> {
    async fn close(&mut self) -> Result<(), ResourceError> {
        self.guard.close().await
    }
}

impl<R: AsyncResource + 'static> Deref for Managed<R> {
    type Target = R;

    fn deref(&self) -> &R {
        self.guard.get()
    }
}

impl<R: AsyncResource + 'static> DerefMut for Managed<R> {
    fn deref_mut(&mut self) -> &mut R {
        self.guard.get_mut()
    }
}

impl<R: AsyncResource + std::fmt::Debug + 'static> std::fmt::Debug for Managed<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Managed").field(self.guard.get()).finish()
    }
}
