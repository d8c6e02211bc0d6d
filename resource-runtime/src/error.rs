//! [`ResourceError`]: one error type for every failed enter and close step.

use std::borrow::Cow;
use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

/// A boxed error that can cross threads, as accepted by [`ResourceError::other`].
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// The lifecycle operation during which a failure happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Operation {
    /// [`AsyncResource::enter`](crate::AsyncResource::enter).
    Enter,
    /// [`AsyncResource::close`](crate::AsyncResource::close).
    Close,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Operation::Enter => "enter",
            Operation::Close => "close",
        })
    }
}

/// The error of a resource operation: one failure, or several aggregated into one.
///
/// Every failure is a [`Failure`], which carries
/// - the field path it happened at (`"endpoint.client"`, `"0"` for a tuple field,
///   `"Variant.field"` in an enum), or none for a resource's own error;
/// - the [`Operation`], and whether it was a close run to roll back a failed enter;
/// - the cause: a source error, a timeout with its deadline, a caught panic with its
///   message, a deadline the runtime could not enforce, "the resource is closed", or
///   "the resource was not entered".
///
/// A close that fails at several fields returns one `ResourceError` holding every
/// failure; [`failures`](Self::failures) yields them flattened, in the order they
/// happened. An enter failure is followed by the failures of its rollback.
///
/// The accessors of `ResourceError` itself answer for the whole error:
/// - the predicates (`is_closed`, `is_timeout`, `is_panic`, ...) are true when **any**
///   failure is of that kind;
/// - [`downcast_ref`](Self::downcast_ref) finds the first failure whose source is of
///   the type asked for;
/// - the rest (`path`, `operation`, `hook`, `is_rollback`, `deadline`,
///   `panic_message`, `get_ref`) describe the **first** failure (of an enter, the one
///   that stopped it; of a close, the first step that failed), or for `deadline` and
///   `panic_message` the first failure that has one. A single failure is its own first.
///
/// `Display` prints every failure on its own line with its path, so one log line tells
/// which field failed and why:
///
/// ```
/// use resource_runtime::ResourceError;
///
/// let err = ResourceError::other("disk full").combine(ResourceError::closed("Endpoint"));
/// assert_eq!(err.failures().count(), 2);
/// assert!(err.is_closed());
/// assert_eq!(err.to_string(), "2 failures:\n  disk full\n  `Endpoint` is closed");
/// ```
///
/// The type is one pointer wide, so `Result<(), ResourceError>` costs nothing on the
/// success path.
pub struct ResourceError {
    repr: Box<Repr>,
}

enum Repr {
    One(Failure),
    /// Two or more failures, flattened, in the order they happened.
    Many(Vec<Failure>),
}

/// One failure of a [`ResourceError`]: where it happened and why. Every accessor
/// answers for this failure alone.
///
/// ```
/// use std::time::Duration;
/// use resource_runtime::{AsyncResource, ResourceError};
///
/// struct Stuck;
/// impl AsyncResource for Stuck {
///     async fn close(&mut self) -> Result<(), ResourceError> {
///         std::future::pending().await
///     }
/// }
///
/// #[derive(AsyncResource)]
/// struct Pair {
///     #[resource(timeout = "1s")]
///     stuck: Stuck,
///     #[resource(close = refuse)]
///     other: u8,
/// }
/// async fn refuse(_: &mut u8) -> std::io::Result<()> {
///     Err(std::io::Error::other("refused"))
/// }
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let err = Pair { stuck: Stuck, other: 0 }.close().await.unwrap_err();
/// let failures: Vec<_> = err.failures().collect();
/// assert_eq!(failures[0].path(), Some("other"));
/// assert!(failures[0].downcast_ref::<std::io::Error>().is_some());
/// assert_eq!(failures[1].path(), Some("stuck"));
/// assert_eq!(failures[1].deadline(), Some(Duration::from_secs(1)));
/// # }
/// ```
pub struct Failure {
    path: Option<String>,
    op: Option<Operation>,
    rollback: bool,
    /// A lifecycle hook (`before_close`, `after_enter`) rather than a field.
    hook: Option<&'static str>,
    cause: Cause,
}

enum Cause {
    Closed(Cow<'static, str>),
    NotEntered(Cow<'static, str>),
    Timeout(Duration),
    /// Never started: the whole-close deadline passed before its turn.
    NotReached(Duration),
    /// A detached close still running when [`wait_detached`](crate::wait_detached) gave up.
    StillRunning(Duration),
    Panic(String),
    Source(BoxError),
    /// A deadline the runtime could not enforce (it has no timer): the step ran to its
    /// end.
    Unenforced(Duration),
}

impl Failure {
    /// The field path (`"client.pool"`), or `None` for the resource's own failure
    /// (its hook, its whole-close deadline, or an error it returned itself).
    pub fn path(&self) -> Option<&str> {
        self.path.as_deref()
    }

    /// The operation it happened in, or `None` for a failure raised outside enter
    /// and close (a call refused because the resource is closed, say).
    pub fn operation(&self) -> Option<Operation> {
        self.op
    }

    /// The lifecycle hook (`"before_close"`, `"after_enter"`, `"close deadline"`) it
    /// came from, or `None` for a field's failure.
    pub fn hook(&self) -> Option<&'static str> {
        self.hook
    }

    /// Whether it happened while closing the fields of a failed enter.
    pub fn is_rollback(&self) -> bool {
        self.rollback
    }

    /// Whether it is an operation refused because the resource is closed.
    pub fn is_closed(&self) -> bool {
        matches!(self.cause, Cause::Closed(_))
    }

    /// Whether it is an operation refused because the resource was never entered.
    pub fn is_not_entered(&self) -> bool {
        matches!(self.cause, Cause::NotEntered(_))
    }

    /// Whether it is a step that missed its deadline, a field a whole-close deadline
    /// left unclosed, or a detached close still running when the wait gave up.
    pub fn is_timeout(&self) -> bool {
        matches!(
            self.cause,
            Cause::Timeout(_) | Cause::NotReached(_) | Cause::StillRunning(_)
        )
    }

    /// Whether it is a deadline that could not be enforced because the tokio runtime
    /// has no timer: the step ran to its end.
    pub fn is_unenforced_deadline(&self) -> bool {
        matches!(self.cause, Cause::Unenforced(_))
    }

    /// Whether it is a caught panic.
    pub fn is_panic(&self) -> bool {
        matches!(self.cause, Cause::Panic(_))
    }

    /// The deadline, for a timeout or a deadline that could not be enforced; `None`
    /// for any other failure.
    pub fn deadline(&self) -> Option<Duration> {
        match self.cause {
            Cause::Timeout(d)
            | Cause::NotReached(d)
            | Cause::StillRunning(d)
            | Cause::Unenforced(d) => Some(d),
            _ => None,
        }
    }

    /// The panic's message, for a caught panic; `None` for any other failure.
    pub fn panic_message(&self) -> Option<&str> {
        match &self.cause {
            Cause::Panic(m) => Some(m),
            _ => None,
        }
    }

    /// The error it wraps (from [`ResourceError::other`] or a field's close function);
    /// `None` when the cause is one of the kinds above.
    pub fn get_ref(&self) -> Option<&(dyn StdError + Send + Sync + 'static)> {
        match &self.cause {
            Cause::Source(e) => Some(&**e),
            _ => None,
        }
    }

    /// The wrapped error, if it is an `E`.
    pub fn downcast_ref<E: StdError + 'static>(&self) -> Option<&E> {
        self.get_ref()?.downcast_ref::<E>()
    }
}

impl ResourceError {
    fn one(cause: Cause) -> Self {
        ResourceError {
            repr: Box::new(Repr::One(Failure {
                path: None,
                op: None,
                rollback: false,
                hook: None,
                cause,
            })),
        }
    }

    /// Wraps any error (or a message: `&str` and `String` convert too) as one failure.
    ///
    /// ```
    /// use resource_runtime::ResourceError;
    ///
    /// let io = std::io::Error::new(std::io::ErrorKind::BrokenPipe, "peer went away");
    /// let err = ResourceError::other(io);
    /// assert_eq!(err.to_string(), "peer went away");
    /// assert!(err.downcast_ref::<std::io::Error>().is_some());
    /// ```
    pub fn other<E>(error: E) -> Self
    where
        E: Into<BoxError>,
    {
        Self::one(Cause::Source(error.into()))
    }

    /// The error an operation on a closed resource returns; `what` names the resource.
    ///
    /// ```
    /// use resource_runtime::ResourceError;
    ///
    /// let err = ResourceError::closed("AsyncExecutor");
    /// assert!(err.is_closed());
    /// assert_eq!(err.to_string(), "`AsyncExecutor` is closed");
    /// ```
    pub fn closed(what: impl Into<Cow<'static, str>>) -> Self {
        Self::one(Cause::Closed(what.into()))
    }

    /// The error an operation on a resource that was never entered returns; `what`
    /// names the resource.
    ///
    /// ```
    /// use resource_runtime::ResourceError;
    ///
    /// let err = ResourceError::not_entered("Endpoint `chat`");
    /// assert!(err.is_not_entered());
    /// assert!(err.to_string().contains("enter"));
    /// ```
    pub fn not_entered(what: impl Into<Cow<'static, str>>) -> Self {
        Self::one(Cause::NotEntered(what.into()))
    }

    /// A step that did not finish before its deadline.
    ///
    /// ```
    /// use std::time::Duration;
    /// use resource_runtime::ResourceError;
    ///
    /// let err = ResourceError::timeout(Duration::from_secs(2));
    /// assert!(err.is_timeout());
    /// assert_eq!(err.deadline(), Some(Duration::from_secs(2)));
    /// ```
    pub fn timeout(deadline: Duration) -> Self {
        Self::one(Cause::Timeout(deadline))
    }

    /// A field the whole-close deadline passed before its turn came.
    pub(crate) fn not_reached(deadline: Duration) -> Self {
        Self::one(Cause::NotReached(deadline))
    }

    /// A detached close that had not finished after `waited`.
    pub(crate) fn still_running(waited: Duration) -> Self {
        Self::one(Cause::StillRunning(waited))
    }

    /// A deadline that could not be set because the tokio runtime has no timer (it was
    /// built without `enable_time`): the step it bounds ran to its end, unbounded.
    pub(crate) fn unenforced(deadline: Duration) -> Self {
        Self::one(Cause::Unenforced(deadline))
    }

    /// A step that panicked, from the payload `catch_unwind` returned.
    pub(crate) fn from_panic(payload: Box<dyn std::any::Any + Send>) -> Self {
        let message = if let Some(s) = payload.downcast_ref::<&'static str>() {
            (*s).to_owned()
        } else if let Some(s) = payload.downcast_ref::<String>() {
            s.clone()
        } else {
            "a panic with a non-string payload".to_owned()
        };
        Self::one(Cause::Panic(message))
    }

    /// Joins two errors into one holding the failures of both, `self`'s first.
    ///
    /// ```
    /// use resource_runtime::ResourceError;
    ///
    /// let err = ResourceError::other("first").combine(ResourceError::other("second"));
    /// let messages: Vec<String> = err.failures().map(|f| f.to_string()).collect();
    /// assert_eq!(messages, ["first", "second"]);
    /// ```
    #[must_use]
    pub fn combine(self, other: ResourceError) -> ResourceError {
        let mut failures = match *self.repr {
            Repr::Many(failures) => failures,
            Repr::One(failure) => vec![failure],
        };
        match *other.repr {
            Repr::Many(more) => failures.extend(more),
            Repr::One(failure) => failures.push(failure),
        }
        ResourceError {
            repr: Box::new(Repr::Many(failures)),
        }
    }

    /// Adds `error` to an optional accumulated error: the one failure accumulator every
    /// close and enter in the crate uses.
    pub(crate) fn push(acc: &mut Option<ResourceError>, error: ResourceError) {
        *acc = Some(match acc.take() {
            None => error,
            Some(prev) => prev.combine(error),
        });
    }

    fn failures_mut(&mut self) -> &mut [Failure] {
        match &mut *self.repr {
            Repr::One(failure) => std::slice::from_mut(failure),
            Repr::Many(failures) => failures,
        }
    }

    /// The first failure: a `ResourceError` always holds at least one.
    fn first(&self) -> &Failure {
        match &*self.repr {
            Repr::One(failure) => failure,
            // Built only by `combine`, which always leaves two or more.
            Repr::Many(failures) => &failures[0],
        }
    }

    /// Places every failure under the field `label` and marks the ones that do not know
    /// their operation yet with `op`.
    pub(crate) fn within(mut self, label: &dyn fmt::Display, op: Operation) -> Self {
        for failure in self.failures_mut() {
            failure.path = Some(match failure.path.take() {
                None => label.to_string(),
                Some(inner) => format!("{label}.{inner}"),
            });
            failure.op.get_or_insert(op);
        }
        self
    }

    /// Marks every failure as the failure of the hook `name` during `op`.
    pub(crate) fn in_hook(mut self, name: &'static str, op: Operation) -> Self {
        for failure in self.failures_mut() {
            failure.hook.get_or_insert(name);
            failure.op.get_or_insert(op);
        }
        self
    }

    /// Marks every failure as part of the rollback of a failed enter.
    pub(crate) fn in_rollback(mut self) -> Self {
        for failure in self.failures_mut() {
            failure.rollback = true;
            failure.op.get_or_insert(Operation::Close);
        }
        self
    }

    /// Every failure, flattened, in the order they happened; at least one.
    pub fn failures(&self) -> impl ExactSizeIterator<Item = &Failure> + '_ {
        match &*self.repr {
            Repr::One(failure) => std::slice::from_ref(failure).iter(),
            Repr::Many(failures) => failures.iter(),
        }
    }

    /// The first failure's field path (`"client.pool"`); `None` when the first failure
    /// is the resource's own. See [`failures`](Self::failures) for every path.
    pub fn path(&self) -> Option<&str> {
        self.first().path()
    }

    /// The first failure's operation; `None` when it was raised outside enter and close.
    pub fn operation(&self) -> Option<Operation> {
        self.first().operation()
    }

    /// The lifecycle hook the first failure came from, if it came from one.
    pub fn hook(&self) -> Option<&'static str> {
        self.first().hook()
    }

    /// Whether the first failure happened while rolling back a failed enter.
    pub fn is_rollback(&self) -> bool {
        self.first().is_rollback()
    }

    /// Whether any failure is an operation refused because the resource is closed.
    pub fn is_closed(&self) -> bool {
        self.failures().any(Failure::is_closed)
    }

    /// Whether any failure is an operation refused because the resource was never
    /// entered.
    pub fn is_not_entered(&self) -> bool {
        self.failures().any(Failure::is_not_entered)
    }

    /// Whether any failure is a step that missed its deadline, or a field a whole-close
    /// deadline left unclosed.
    pub fn is_timeout(&self) -> bool {
        self.failures().any(Failure::is_timeout)
    }

    /// Whether any failure is a deadline that could not be enforced because the tokio
    /// runtime has no timer (built without `enable_time`). The step it bounded ran to
    /// its end: nothing was left open, but nothing bounded how long that took.
    pub fn is_unenforced_deadline(&self) -> bool {
        self.failures().any(Failure::is_unenforced_deadline)
    }

    /// Whether any failure is a caught panic.
    pub fn is_panic(&self) -> bool {
        self.failures().any(Failure::is_panic)
    }

    /// The deadline of the first failure that has one (a timeout, or a deadline that
    /// could not be enforced).
    pub fn deadline(&self) -> Option<Duration> {
        self.failures().find_map(Failure::deadline)
    }

    /// The message of the first caught panic.
    pub fn panic_message(&self) -> Option<&str> {
        self.failures().find_map(Failure::panic_message)
    }

    /// The error the first failure wraps (from [`other`](Self::other) or a field's close
    /// function), to inspect it; `None` when the first failure has another cause.
    pub fn get_ref(&self) -> Option<&(dyn StdError + Send + Sync + 'static)> {
        self.first().get_ref()
    }

    /// The first wrapped error, over every failure, that is an `E`.
    pub fn downcast_ref<E: StdError + 'static>(&self) -> Option<&E> {
        self.failures().find_map(Failure::downcast_ref::<E>)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut prefixed = false;
        if let Some(op) = self.op {
            write!(f, "{op}")?;
            prefixed = true;
        }
        if let Some(path) = &self.path {
            write!(f, "{}`{path}`", if prefixed { " " } else { "" })?;
            prefixed = true;
        }
        if let Some(hook) = self.hook {
            write!(f, "{}({hook})", if prefixed { " " } else { "" })?;
            prefixed = true;
        }
        if self.rollback {
            f.write_str(" during rollback of a failed enter")?;
        }
        if prefixed {
            f.write_str(": ")?;
        }
        match &self.cause {
            Cause::Closed(what) => write!(f, "`{what}` is closed"),
            Cause::NotEntered(what) => write!(
                f,
                "`{what}` was not entered: call `enter().await` (or use it in a `scope` or `Managed`) first"
            ),
            Cause::Timeout(d) => write!(f, "timed out after {d:?}; the step was dropped"),
            Cause::NotReached(d) => write!(
                f,
                "not closed: the close deadline of {d:?} passed before its turn"
            ),
            Cause::StillRunning(d) => write!(f, "detached close still running after {d:?}"),
            Cause::Panic(m) => write!(f, "panicked: {m}"),
            Cause::Source(e) => write!(f, "{e}"),
            Cause::Unenforced(d) => write!(
                f,
                "its deadline of {d:?} was not enforced: the tokio runtime has no timer (build it with `enable_time` or `enable_all`); the step ran to its end"
            ),
        }
    }
}

impl fmt::Debug for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Failure");
        d.field("path", &self.path)
            .field("op", &self.op)
            .field("rollback", &self.rollback)
            .field("hook", &self.hook);
        match &self.cause {
            Cause::Closed(what) => d.field("closed", what),
            Cause::NotEntered(what) => d.field("not_entered", what),
            Cause::Timeout(deadline) => d.field("timeout", deadline),
            Cause::NotReached(deadline) => d.field("not_reached", deadline),
            Cause::StillRunning(waited) => d.field("still_running", waited),
            Cause::Panic(message) => d.field("panic", message),
            Cause::Source(source) => d.field("source", source),
            Cause::Unenforced(deadline) => d.field("unenforced", deadline),
        };
        d.finish()
    }
}

impl fmt::Display for ResourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &*self.repr {
            Repr::One(failure) => failure.fmt(f),
            Repr::Many(failures) => {
                write!(f, "{} failures:", failures.len())?;
                for failure in failures {
                    write!(f, "\n  {failure}")?;
                }
                Ok(())
            }
        }
    }
}

impl fmt::Debug for ResourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &*self.repr {
            Repr::One(failure) => failure.fmt(f),
            Repr::Many(failures) => f.debug_list().entries(failures).finish(),
        }
    }
}

impl StdError for ResourceError {
    /// The first failure's wrapped error's own source: its message is already part of
    /// `Display`, so a reporter walking the chain prints it once.
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match &self.first().cause {
            Cause::Source(e) => e.source(),
            _ => None,
        }
    }
}

/// A configuration that cannot work, refused when the handle is built: a rate of 0,
/// an executor with no slot, a zero period, an endpoint URL that does not parse. Returned inside a [`ResourceError`]; reach
/// it with [`ResourceError::downcast_ref`].
///
/// ```
/// use resource_runtime::{ConfigError, executor::AsyncExecutor};
///
/// let err = AsyncExecutor::new(0).unwrap_err();
/// let config = err.downcast_ref::<ConfigError>().unwrap();
/// assert_eq!(config.setting(), "max_concurrency");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    handle: Cow<'static, str>,
    setting: &'static str,
    why: Cow<'static, str>,
}

impl ConfigError {
    #[cfg_attr(
        not(any(feature = "executor", feature = "limiter", feature = "http")),
        allow(
            dead_code,
            reason = "used by the executor, the limiter and the endpoint"
        )
    )]
    pub(crate) fn new(
        handle: impl Into<Cow<'static, str>>,
        setting: &'static str,
        why: impl Into<Cow<'static, str>>,
    ) -> Self {
        ConfigError {
            handle: handle.into(),
            setting,
            why: why.into(),
        }
    }

    /// What is being configured (`"RateLimiter"`, ``"Endpoint `chat`"``).
    pub fn handle(&self) -> &str {
        &self.handle
    }

    /// The setting that is wrong (`"burst"`).
    pub fn setting(&self) -> &'static str {
        self.setting
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: `{}` {}", self.handle, self.setting, self.why)
    }
}

impl StdError for ConfigError {}

impl From<ConfigError> for ResourceError {
    fn from(error: ConfigError) -> Self {
        ResourceError::other(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_paths_join_with_dots_and_keep_order() {
        let inner = ResourceError::other("reset")
            .within(&"pool", Operation::Close)
            .combine(
                ResourceError::timeout(Duration::from_millis(500))
                    .within(&"cache", Operation::Close),
            );
        let outer = inner.within(&"client", Operation::Close);
        let paths: Vec<_> = outer
            .failures()
            .map(|f| f.path().unwrap().to_owned())
            .collect();
        assert_eq!(paths, ["client.pool", "client.cache"]);
        assert_eq!(
            outer.to_string(),
            "2 failures:\n  close `client.pool`: reset\n  close `client.cache`: timed out after 500ms; the step was dropped"
        );
        assert!(outer.is_timeout());
        assert!(!outer.is_panic());
        // On an aggregate, the first failure answers.
        assert_eq!(outer.path(), Some("client.pool"));
        assert_eq!(outer.deadline(), Some(Duration::from_millis(500)));
    }

    #[test]
    fn operation_is_set_once_by_the_innermost_step() {
        let e = ResourceError::other("x")
            .within(&"a", Operation::Enter)
            .within(&"b", Operation::Close);
        assert_eq!(e.operation(), Some(Operation::Enter));
        assert_eq!(e.path(), Some("b.a"));
    }

    #[test]
    fn panic_payloads_of_both_string_kinds_are_kept() {
        let e = ResourceError::from_panic(Box::new("static"));
        assert_eq!(e.panic_message(), Some("static"));
        let e = ResourceError::from_panic(Box::new(String::from("owned")));
        assert_eq!(e.panic_message(), Some("owned"));
        let e = ResourceError::from_panic(Box::new(7_u8));
        assert!(e.is_panic());
    }

    #[test]
    fn source_skips_the_wrapped_error_already_displayed() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl fmt::Display for Outer {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("outer")
            }
        }
        impl StdError for Outer {
            fn source(&self) -> Option<&(dyn StdError + 'static)> {
                Some(&self.0)
            }
        }
        let e = ResourceError::other(Outer(std::io::Error::other("inner")));
        assert_eq!(e.to_string(), "outer");
        assert_eq!(e.source().unwrap().to_string(), "inner");
    }

    #[test]
    fn rollback_and_hook_are_displayed() {
        let e = ResourceError::other("boom").in_hook("before_close", Operation::Close);
        assert_eq!(e.to_string(), "close (before_close): boom");
        let e = ResourceError::other("gone")
            .within(&"log", Operation::Close)
            .in_rollback();
        assert!(e.is_rollback());
        assert_eq!(
            e.to_string(),
            "close `log` during rollback of a failed enter: gone"
        );
    }

    #[test]
    fn is_one_pointer_wide() {
        assert_eq!(
            std::mem::size_of::<Result<(), ResourceError>>(),
            std::mem::size_of::<usize>()
        );
    }
}
