//! The [`AsyncResource`] trait and its impls for containers.

use std::future::Future;

use crate::error::{Operation, ResourceError};
use crate::step::{Call, Label, NoDeadline, Step, catch_panic, tracing_on};

/// A value that must be brought up and released with `.await`: the async `Drop` Rust
/// does not have.
///
/// Derive it with [`#[derive(AsyncResource)]`](derive@crate::AsyncResource) to close
/// a struct field by field, or implement it by hand for a type that owns something
/// external.
///
/// # The close contract
///
/// - When `close` returns, the resource holds nothing any more, whether it returns
///   `Ok` or `Err`. An `Err` means "not released gracefully" (a buffer lost, a peer not
///   told), never "still open".
/// - `close` is idempotent: closing a closed resource returns `Ok(())` at once and does
///   nothing.
/// - Closing a resource that was never entered is `Ok(())`.
/// - After `close`, the resource's operations return an error for which
///   [`ResourceError::is_closed`] is true.
///
/// `enter` brings the resource up (opens a client, starts workers); the default does
/// nothing.
///
/// # The enter rule
///
/// - An `enter` that returns `Err` leaves nothing behind: it closes what it had
///   brought up before it returns, and is not closed again.
/// - An `enter` that panics cannot have done that. Wherever this crate enters a value
///   (a derived struct's fields, the elements of a `Vec`, `Option`, `Box`, [`scope`],
///   [`Managed`], [`ResourceStack`]) the panic is caught, the value whose enter
///   panicked is closed, the values entered before it are closed in reverse order,
///   and the panic comes back as an error for which [`ResourceError::is_panic`] is
///   true. So a `close` must cope with a half-entered value, as it copes with a value
///   that was never entered.
///
/// [`scope`]: crate::scope()
/// [`Managed`]: crate::Managed
/// [`ResourceStack`]: crate::ResourceStack
///
/// # Example
///
/// ```
/// use resource_runtime::{AsyncResource, ResourceError};
///
/// struct Connection {
///     open: bool,
///     sent_goodbye: bool,
/// }
///
/// impl AsyncResource for Connection {
///     async fn enter(&mut self) -> Result<(), ResourceError> {
///         self.open = true;
///         Ok(())
///     }
///
///     async fn close(&mut self) -> Result<(), ResourceError> {
///         if !self.open {
///             return Ok(()); // idempotent, and fine when never entered
///         }
///         self.open = false;
///         self.sent_goodbye = true;
///         Ok(())
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), ResourceError> {
/// let mut conn = Connection { open: false, sent_goodbye: false };
/// conn.enter().await?;
/// conn.close().await?;
/// conn.close().await?; // a second close does nothing
/// assert!(conn.sent_goodbye);
/// # Ok(())
/// # }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an async resource",
    label = "`{Self}` does not implement `AsyncResource`",
    note = "derive it with `#[derive(AsyncResource)]` on `{Self}`, or implement `AsyncResource` for it by hand",
    note = "for a foreign type, name an async close function on the field: `#[resource(close = path::to::close_fn)]`",
    note = "if the field needs no cleanup, mark it `#[resource(skip)]` instead of `#[resource]`"
)]
pub trait AsyncResource: Send {
    /// Brings the resource up. The default does nothing and returns `Ok(())`.
    fn enter(&mut self) -> impl Future<Output = Result<(), ResourceError>> + Send {
        async { Ok(()) }
    }

    /// Releases everything the resource holds; see the close contract above.
    fn close(&mut self) -> impl Future<Output = Result<(), ResourceError>> + Send;
}

/// `Some` is entered (by the enter rule above) and closed; the value is taken out of the option before its close
/// starts, so after `close` the option is `None` even when the close failed, timed out,
/// panicked or was cancelled, and a second close does nothing. This is how a field is
/// dropped at its deadline: wrap it in an `Option`.
impl<T: AsyncResource> AsyncResource for Option<T> {
    async fn enter(&mut self) -> Result<(), ResourceError> {
        match self {
            Some(inner) => enter_or_close(inner).await,
            None => Ok(()),
        }
    }

    async fn close(&mut self) -> Result<(), ResourceError> {
        // Taken first: the close future owns the value, so a close that times out,
        // panics or is cancelled still drops it.
        let Some(mut inner) = self.take() else {
            return Ok(());
        };
        inner.close().await
    }
}

/// Enters and closes the boxed value; an enter that panics is caught and the value
/// closed (the enter rule above).
impl<T: AsyncResource + ?Sized> AsyncResource for Box<T> {
    fn enter(&mut self) -> impl Future<Output = Result<(), ResourceError>> + Send {
        enter_or_close(&mut **self)
    }

    fn close(&mut self) -> impl Future<Output = Result<(), ResourceError>> + Send {
        (**self).close()
    }
}

/// A borrowed resource: entering (by the enter rule above) and closing go to the
/// owner's value.
impl<T: AsyncResource + ?Sized> AsyncResource for &mut T {
    fn enter(&mut self) -> impl Future<Output = Result<(), ResourceError>> + Send {
        enter_or_close(&mut **self)
    }

    fn close(&mut self) -> impl Future<Output = Result<(), ResourceError>> + Send {
        (**self).close()
    }
}

/// Elements are entered in order and closed in reverse. If one fails to enter, the
/// ones before it are closed again. Every element is closed even when others fail,
/// and each failure's path is the element's index.
impl<T: AsyncResource> AsyncResource for Vec<T> {
    async fn enter(&mut self) -> Result<(), ResourceError> {
        enter_each("Vec", self).await
    }

    async fn close(&mut self) -> Result<(), ResourceError> {
        close_each_rev("Vec", self).await
    }
}

/// Enters one value by the crate's enter rule (see
/// [`AsyncResource`](crate::AsyncResource)): a panic is caught and returned as an error,
/// and the value whose enter panicked is closed, since it may hold what it brought up
/// before the panic. An enter that returned an error is not closed again.
pub(crate) async fn enter_or_close<R>(resource: &mut R) -> Result<(), ResourceError>
where
    R: crate::AsyncResource + ?Sized,
{
    let entered = catch_panic(async { resource.enter().await }).await;
    match entered {
        Err(error) if error.is_panic() => {
            match catch_panic(async { resource.close().await }).await {
                Ok(()) => Err(error),
                Err(close) => Err(error.combine(close.in_rollback())),
            }
        }
        other => other,
    }
}

/// Closes every element of a sequence in reverse, whatever the others do.
pub(crate) async fn close_each_rev<R: crate::AsyncResource>(
    ty: &'static str,
    items: &mut [R],
) -> Result<(), ResourceError> {
    let mut error = None;
    let traced = tracing_on().then_some(ty);
    for (index, item) in items.iter_mut().enumerate().rev() {
        let step = Step::new(
            traced,
            Operation::Close,
            Label::Index(index),
            NoDeadline,
            Call(R::close, item),
        );
        if let Err(e) = step.await {
            ResourceError::push(&mut error, e);
        }
    }
    error.map_or(Ok(()), Err)
}

/// Enters every element of a sequence in order; on a failure, closes the entered ones
/// in reverse and returns the failure with the rollback's.
pub(crate) async fn enter_each<R: crate::AsyncResource>(
    ty: &'static str,
    items: &mut [R],
) -> Result<(), ResourceError> {
    let traced = tracing_on().then_some(ty);
    let mut failure = None;
    for (index, item) in items.iter_mut().enumerate() {
        let step = Step::new(
            traced,
            Operation::Enter,
            Label::Index(index),
            NoDeadline,
            Call(R::enter, item),
        );
        if let Err(e) = step.await {
            failure = Some((index, e));
            break;
        }
    }
    let Some((failed_at, mut error)) = failure else {
        return Ok(());
    };
    // The element whose enter panicked may hold what it brought up: it is closed too.
    let rolled_back = if error.is_panic() {
        failed_at + 1
    } else {
        failed_at
    };
    if let Err(rollback) = close_each_rev(ty, &mut items[..rolled_back]).await {
        error = error.combine(rollback.in_rollback());
    }
    Err(error)
}
