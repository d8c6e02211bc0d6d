//! The [`AsyncResource`] trait and its impls for containers.

use std::future::Future;

use crate::error::ResourceError;
use crate::step;

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
            Some(inner) => step::enter_or_close(inner).await,
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
        step::enter_or_close(&mut **self)
    }

    fn close(&mut self) -> impl Future<Output = Result<(), ResourceError>> + Send {
        (**self).close()
    }
}

/// A borrowed resource: entering (by the enter rule above) and closing go to the
/// owner's value.
impl<T: AsyncResource + ?Sized> AsyncResource for &mut T {
    fn enter(&mut self) -> impl Future<Output = Result<(), ResourceError>> + Send {
        step::enter_or_close(&mut **self)
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
        step::enter_each("Vec", self).await
    }

    async fn close(&mut self) -> Result<(), ResourceError> {
        step::close_each_rev("Vec", self).await
    }
}
