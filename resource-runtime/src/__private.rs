//! What the derive's expansion calls. Not public API: names and signatures here change
//! without notice.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

pub use crate::step::{
    Closer, Deadline, DeadlineOutcome, Enterer, Group, NoDeadline, Step, Timed, within_deadline,
};

use crate::error::{BoxError, ResourceError};

/// The future of a user function the derive calls: `close = path`, `enter = path`,
/// `before_close = method`, `after_enter = method`. Its on-unimplemented text is the
/// compile error a user sees when the function has the wrong shape; when the bound
/// fails, `Fut` becomes an error type and rustc reports nothing more about it.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not the future of an async fn returning `Result<(), E>`",
    label = "this must be an `async fn` returning `Result<(), E>`",
    note = "`#[resource(close = path)]` and `#[resource(enter = path)]` take an `async fn(&mut FieldType) -> Result<(), E>`; `before_close` and `after_enter` take an `async fn(&mut self) -> Result<(), E>`",
    note = "`E` is any error that converts into `Box<dyn Error + Send + Sync>`, and the future must be `Send`"
)]
pub trait UserStep {
    /// The future the derive awaits.
    type Fut: Future<Output = Result<(), ResourceError>> + Send;
    /// Wraps the user's future.
    fn into_step(self) -> Self::Fut;
}

/// The output of a user function the derive calls.
#[diagnostic::on_unimplemented(
    message = "the function returns `{Self}`, not `Result<(), E>` with an error type `E`",
    label = "this function must return `Result<(), E>` where `E` converts into `Box<dyn Error + Send + Sync>`",
    note = "return `Ok(())` when the step succeeds, and an error such as `std::io::Error` when it fails"
)]
pub trait UserOutput {
    /// Turns the function's result into the step's.
    fn into_result(self) -> Result<(), ResourceError>;
}

impl<E: Into<BoxError>> UserOutput for Result<(), E> {
    fn into_result(self) -> Result<(), ResourceError> {
        crate::step::user_result(self)
    }
}

impl<F> UserStep for F
where
    F: Future + Send,
    F::Output: UserOutput,
{
    type Fut = UserStepFuture<F>;

    fn into_step(self) -> Self::Fut {
        UserStepFuture { fut: self }
    }
}

pin_project_lite::pin_project! {
    /// A user function's future with its result turned into the step's.
    #[derive(Debug)]
    pub struct UserStepFuture<F> {
        #[pin]
        fut: F,
    }
}

impl<F> Future for UserStepFuture<F>
where
    F: Future,
    F::Output: UserOutput,
{
    type Output = Result<(), ResourceError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().fut.poll(cx).map(UserOutput::into_result)
    }
}

/// The future of a user function (`close = path`, `before_close = method`), on its way
/// to becoming a step. The expansion calls `UserCall(fut).user_step()`: a future of the
/// right shape resolves to [`ViaFuture`]; any other value falls through to
/// [`ViaCheck`], whose `Self::Inner: UserStep` bound is the one compile error the user
/// sees, and whose return type is concrete, so no further error follows from it.
#[derive(Debug)]
pub struct UserCall<F>(pub F);

/// A user future of the right shape.
pub trait ViaFuture {
    /// The step's future.
    type Fut: Future<Output = Result<(), ResourceError>> + Send;
    /// Wraps the user's future.
    fn user_step(self) -> Self::Fut;
}

impl<F: UserStep> ViaFuture for UserCall<F> {
    type Fut = F::Fut;

    fn user_step(self) -> Self::Fut {
        self.0.into_step()
    }
}

/// Anything else: reports the shape error.
pub trait ViaCheck {
    /// The value the user function returned.
    type Inner;
    /// Never runs: the bound fails to compile.
    fn user_step(self) -> std::future::Ready<Result<(), ResourceError>>
    where
        Self::Inner: UserStep;
}

impl<F> ViaCheck for &UserCall<F> {
    type Inner = F;

    fn user_step(self) -> std::future::Ready<Result<(), ResourceError>>
    where
        F: UserStep,
    {
        std::future::ready(Ok(()))
    }
}

/// The close or enter of a field whose type contains the type itself (a tree), boxed
/// so that the generated future does not contain itself.
pub fn boxed<'a, F>(fut: F) -> Pin<Box<dyn Future<Output = Result<(), ResourceError>> + Send + 'a>>
where
    F: Future<Output = Result<(), ResourceError>> + Send + 'a,
{
    Box::pin(fut)
}

/// A type witness for the unmarked-field check: the expansion calls a method on
/// `&Probe<FieldType>` that resolves to a `#[deprecated]` one only when the field's type
/// implements `AsyncResource`.
pub struct Probe<T: ?Sized>(PhantomData<fn() -> PhantomData<T>>);

impl<T: ?Sized> Probe<T> {
    /// A witness for `T`.
    pub const fn new() -> Self {
        Probe(PhantomData)
    }
}

impl<T: ?Sized> Default for Probe<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: ?Sized> std::fmt::Debug for Probe<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Probe")
    }
}
