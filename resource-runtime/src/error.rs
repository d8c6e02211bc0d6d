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
/// Every failure (a *leaf*) carries
/// - the field path it happened at (`"endpoint.client"`, `"0"` for a tuple field,
///   `"Variant.field"` in an enum), or none for a resource's own error;
/// - the [`Operation`], and whether it was a close run to roll back a failed enter;
/// - the cause: a source error, a timeout with its deadline, a caught panic with its
///   message, or "the resource is closed".
///
/// A close that fails at several fields returns one `ResourceError` holding every
/// failure; [`failures`](Self::failures) yields them flattened, in the order they
/// happened. An enter failure is followed by the failures of its rollback.
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
    Leaf(Leaf),
    /// Two or more leaves, flattened, in the order they happened.
    Many(Vec<ResourceError>),
}

struct Leaf {
    path: Option<String>,
    op: Option<Operation>,
    rollback: bool,
    /// A lifecycle hook (`before_close`, `after_enter`) rather than a field.
    hook: Option<&'static str>,
    cause: Cause,
}

enum Cause {
    Closed(Cow<'static, str>),
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

impl ResourceError {
    fn leaf(cause: Cause) -> Self {
        ResourceError {
            repr: Box::new(Repr::Leaf(Leaf {
                path: None,
                op: None,
                rollback: false,
                hook: None,
                cause,
            })),
        }
    }

    /// Wraps any error (or a message: `&str` and `String` convert too) as a leaf.
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
        Self::leaf(Cause::Source(error.into()))
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
        Self::leaf(Cause::Closed(what.into()))
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
        Self::leaf(Cause::Timeout(deadline))
    }

    /// A field the whole-close deadline passed before its turn came.
    pub(crate) fn not_reached(deadline: Duration) -> Self {
        Self::leaf(Cause::NotReached(deadline))
    }

    /// A detached close that had not finished after `waited`.
    pub(crate) fn still_running(waited: Duration) -> Self {
        Self::leaf(Cause::StillRunning(waited))
    }

    /// A deadline that could not be set because the tokio runtime has no timer (it was
    /// built without `enable_time`): the step it bounds ran to its end, unbounded.
    pub(crate) fn unenforced(deadline: Duration) -> Self {
        Self::leaf(Cause::Unenforced(deadline))
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
        Self::leaf(Cause::Panic(message))
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
        let mut leaves = match *self.repr {
            Repr::Many(leaves) => leaves,
            leaf @ Repr::Leaf(_) => vec![ResourceError {
                repr: Box::new(leaf),
            }],
        };
        match *other.repr {
            Repr::Many(more) => leaves.extend(more),
            leaf @ Repr::Leaf(_) => leaves.push(ResourceError {
                repr: Box::new(leaf),
            }),
        }
        ResourceError {
            repr: Box::new(Repr::Many(leaves)),
        }
    }

    /// Adds `error` to an optional accumulated error.
    pub(crate) fn push(acc: &mut Option<ResourceError>, error: ResourceError) {
        *acc = Some(match acc.take() {
            None => error,
            Some(prev) => prev.combine(error),
        });
    }

    fn leaves_mut(&mut self) -> &mut [ResourceError] {
        if matches!(*self.repr, Repr::Leaf(_)) {
            return std::slice::from_mut(self);
        }
        match &mut *self.repr {
            Repr::Many(leaves) => leaves,
            Repr::Leaf(_) => &mut [],
        }
    }

    fn as_leaf(&self) -> Option<&Leaf> {
        match &*self.repr {
            Repr::Leaf(leaf) => Some(leaf),
            Repr::Many(_) => None,
        }
    }

    /// Places every failure under the field `label` and marks the ones that do not know
    /// their operation yet with `op`.
    pub(crate) fn within(mut self, label: &dyn fmt::Display, op: Operation) -> Self {
        for leaf in self.leaves_mut() {
            if let Repr::Leaf(leaf) = &mut *leaf.repr {
                leaf.path = Some(match leaf.path.take() {
                    None => label.to_string(),
                    Some(inner) => format!("{label}.{inner}"),
                });
                leaf.op.get_or_insert(op);
            }
        }
        self
    }

    /// Marks every failure as the failure of the hook `name` during `op`.
    pub(crate) fn in_hook(mut self, name: &'static str, op: Operation) -> Self {
        for leaf in self.leaves_mut() {
            if let Repr::Leaf(leaf) = &mut *leaf.repr {
                leaf.hook.get_or_insert(name);
                leaf.op.get_or_insert(op);
            }
        }
        self
    }

    /// Marks every failure as part of the rollback of a failed enter.
    pub(crate) fn in_rollback(mut self) -> Self {
        for leaf in self.leaves_mut() {
            if let Repr::Leaf(leaf) = &mut *leaf.repr {
                leaf.rollback = true;
                leaf.op.get_or_insert(Operation::Close);
            }
        }
        self
    }

    /// Every leaf failure, flattened, in the order they happened. A single failure
    /// yields itself.
    pub fn failures(&self) -> impl ExactSizeIterator<Item = &ResourceError> + '_ {
        match &*self.repr {
            Repr::Leaf(_) => std::slice::from_ref(self).iter(),
            Repr::Many(leaves) => leaves.iter(),
        }
    }

    /// The field path of a single failure (`"client.pool"`); `None` for a resource's own
    /// error and for an aggregate (use [`failures`](Self::failures)).
    pub fn path(&self) -> Option<&str> {
        self.as_leaf()?.path.as_deref()
    }

    /// The operation of a single failure; `None` for an aggregate or an error raised
    /// outside enter and close (a call on a closed resource).
    pub fn operation(&self) -> Option<Operation> {
        self.as_leaf()?.op
    }

    /// The lifecycle hook (`"before_close"`, `"after_enter"`) a single failure came from.
    pub fn hook(&self) -> Option<&'static str> {
        self.as_leaf()?.hook
    }

    /// Whether this single failure happened while closing the fields of a failed enter.
    pub fn is_rollback(&self) -> bool {
        self.as_leaf().is_some_and(|l| l.rollback)
    }

    fn any_leaf(&self, pred: impl Fn(&Cause) -> bool) -> bool {
        self.failures()
            .any(|f| f.as_leaf().is_some_and(|l| pred(&l.cause)))
    }

    /// Whether any failure is an operation refused because the resource is closed.
    pub fn is_closed(&self) -> bool {
        self.any_leaf(|c| matches!(c, Cause::Closed(_)))
    }

    /// Whether any failure is a step that missed its deadline, or a field a whole-close
    /// deadline left unclosed.
    pub fn is_timeout(&self) -> bool {
        self.any_leaf(|c| {
            matches!(
                c,
                Cause::Timeout(_) | Cause::NotReached(_) | Cause::StillRunning(_)
            )
        })
    }

    /// Whether any failure is a deadline that could not be enforced because the tokio
    /// runtime has no timer (built without `enable_time`). The step it bounded ran to
    /// its end: nothing was left open, but nothing bounded how long that took.
    pub fn is_unenforced_deadline(&self) -> bool {
        self.any_leaf(|c| matches!(c, Cause::Unenforced(_)))
    }

    /// Whether any failure is a caught panic.
    pub fn is_panic(&self) -> bool {
        self.any_leaf(|c| matches!(c, Cause::Panic(_)))
    }

    /// The deadline of a single timeout failure, or of a deadline that could not be
    /// enforced.
    pub fn deadline(&self) -> Option<Duration> {
        match self.as_leaf()?.cause {
            Cause::Timeout(d)
            | Cause::NotReached(d)
            | Cause::StillRunning(d)
            | Cause::Unenforced(d) => Some(d),
            _ => None,
        }
    }

    /// The message of a single caught panic.
    pub fn panic_message(&self) -> Option<&str> {
        match &self.as_leaf()?.cause {
            Cause::Panic(m) => Some(m),
            _ => None,
        }
    }

    /// The error a single failure wraps (from [`other`](Self::other) or a field's close
    /// function), to inspect it.
    pub fn get_ref(&self) -> Option<&(dyn StdError + Send + Sync + 'static)> {
        match &self.as_leaf()?.cause {
            Cause::Source(e) => Some(&**e),
            _ => None,
        }
    }

    /// The wrapped error of a single failure, if it is an `E`.
    pub fn downcast_ref<E: StdError + 'static>(&self) -> Option<&E> {
        self.get_ref()?.downcast_ref::<E>()
    }
}

impl fmt::Display for Leaf {
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

impl fmt::Display for ResourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &*self.repr {
            Repr::Leaf(leaf) => leaf.fmt(f),
            Repr::Many(leaves) => {
                write!(f, "{} failures:", leaves.len())?;
                for leaf in leaves {
                    write!(f, "\n  {leaf}")?;
                }
                Ok(())
            }
        }
    }
}

impl fmt::Debug for ResourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &*self.repr {
            Repr::Leaf(leaf) => {
                let mut d = f.debug_struct("ResourceError");
                d.field("path", &leaf.path)
                    .field("op", &leaf.op)
                    .field("rollback", &leaf.rollback)
                    .field("hook", &leaf.hook);
                match &leaf.cause {
                    Cause::Closed(what) => d.field("closed", what),
                    Cause::Timeout(deadline) => d.field("timeout", deadline),
                    Cause::NotReached(deadline) => d.field("not_reached", deadline),
                    Cause::StillRunning(waited) => d.field("still_running", waited),
                    Cause::Panic(message) => d.field("panic", message),
                    Cause::Source(source) => d.field("source", source),
                    Cause::Unenforced(deadline) => d.field("unenforced", deadline),
                };
                d.finish()
            }
            Repr::Many(leaves) => f.debug_list().entries(leaves).finish(),
        }
    }
}

impl StdError for ResourceError {
    /// The wrapped error's own source: its message is already part of `Display`, so a
    /// reporter walking the chain prints it once.
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match &self.as_leaf()?.cause {
            Cause::Source(e) => e.source(),
            _ => None,
        }
    }
}

/// A configuration that cannot work, refused when the handle is built: a rate of 0,
/// an executor with no slot, a zero period. Returned inside a [`ResourceError`]; reach
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
    handle: &'static str,
    setting: &'static str,
    why: Cow<'static, str>,
}

impl ConfigError {
    #[cfg_attr(
        not(any(feature = "executor", feature = "limiter")),
        allow(dead_code, reason = "used by the executor and the limiter")
    )]
    pub(crate) fn new(
        handle: &'static str,
        setting: &'static str,
        why: impl Into<Cow<'static, str>>,
    ) -> Self {
        ConfigError {
            handle,
            setting,
            why: why.into(),
        }
    }

    /// The type being configured (`"RateLimiter"`).
    pub fn handle(&self) -> &'static str {
        self.handle
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
        assert_eq!(outer.path(), None);
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
