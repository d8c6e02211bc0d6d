//! What the derive's expansion calls. Not public API: names and signatures here change
//! without notice.

use std::future::Future;
use std::marker::PhantomData;

pub use crate::step::{
    Closer, Deadline, Enterer, Group, NoDeadline, Step, Timed, user_step, within_deadline,
};
pub use ::tokio;

use crate::error::BoxError;

/// The future of a function named by `#[resource(close = ...)]` or
/// `#[resource(enter = ...)]`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not the future of an async close or enter function",
    label = "this must be an `async fn(&mut FieldType) -> Result<(), E>`",
    note = "`#[resource(close = path)]` and `#[resource(enter = path)]` take an `async fn(&mut FieldType) -> Result<(), E>` where `E` converts into `Box<dyn Error + Send + Sync>`; make the function `async` and return a `Result`",
    note = "the future must be `Send`: hold no `Rc` or `RefCell` borrow across an `.await`"
)]
pub trait UserStep: Future<Output = Result<(), Self::Error>> + Send {
    /// The function's error.
    type Error: Into<BoxError>;
}

impl<F, E> UserStep for F
where
    F: Future<Output = Result<(), E>> + Send,
    E: Into<BoxError>,
{
    type Error = E;
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
