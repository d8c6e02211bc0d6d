//! [`ResourceStack`]: Python's `AsyncExitStack`, for resources known only at run time.

use std::any::Any;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::AsyncResource;
use crate::error::{BoxError, Operation, ResourceError};
use crate::scope::{DropNotice, Guard};
use crate::step::{Label, NoDeadline, Step, Timed, tracing_on, user_result};

type BoxFuture<'a> = Pin<Box<dyn Future<Output = Result<(), ResourceError>> + Send + 'a>>;

/// A resource with its type erased, so that one stack holds many types.
trait Erased: Send + 'static {
    fn close_boxed(&mut self) -> BoxFuture<'_>;
    fn as_any(&self) -> &dyn Any;
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

impl<R: AsyncResource + 'static> Erased for R {
    fn close_boxed(&mut self) -> BoxFuture<'_> {
        Box::pin(self.close())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

enum Entry {
    Resource {
        ty: &'static str,
        resource: Box<dyn Erased>,
    },
    /// A cleanup step: runs once, at its place in the LIFO order.
    Defer { step: Option<BoxFuture<'static>> },
}

static NEXT_STACK: AtomicU64 = AtomicU64::new(0);

/// A typed handle to a resource in a [`ResourceStack`], to reach it again with
/// [`get`](ResourceStack::get) and [`get_mut`](ResourceStack::get_mut).
pub struct StackSlot<R> {
    stack: u64,
    index: usize,
    _type: PhantomData<fn() -> R>,
}

impl<R> Clone for StackSlot<R> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<R> Copy for StackSlot<R> {}

impl<R> std::fmt::Debug for StackSlot<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StackSlot")
            .field("type", &std::any::type_name::<R>())
            .field("index", &self.index)
            .finish()
    }
}

/// A stack of entered resources and cleanup steps, closed last-in first-out.
///
/// For setups whose shape is known only at run time (one client per configured
/// provider, a plugin list): [`enter`](Self::enter) each resource as it comes, and one
/// [`close`](Self::close) releases them all in reverse, with the derive's semantics:
/// every entry is closed whatever the others do, panics are caught, each entry can
/// have a deadline, and all failures come back in one [`ResourceError`] whose paths are
/// the entries' positions.
///
/// If building the setup fails half-way, dropping the stack (or closing it) releases
/// what was entered; once the setup is complete, [`pop_all`](Self::pop_all) hands the
/// whole stack over to its owner. A stack is itself an [`AsyncResource`], so it can be
/// a field of a derived struct. Dropped without `close`, it warns and closes its
/// entries as a detached task, as [`Managed`](crate::Managed) does.
///
/// ```
/// use resource_runtime::{AsyncResource, ResourceError, ResourceStack};
/// use tokio_util::sync::CancellationToken;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), ResourceError> {
/// let mut stack = ResourceStack::new();
/// let first = stack.enter(CancellationToken::new()).await?;
/// let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
/// let seen = log.clone();
/// stack.defer(async move {
///     seen.lock().unwrap().push("deferred step ran");
///     Ok::<(), std::io::Error>(())
/// });
/// assert!(!stack.get(&first).unwrap().is_cancelled());
/// let token = stack.get(&first).unwrap().clone();
/// stack.close().await?; // the deferred step, then the token
/// assert!(token.is_cancelled());
/// assert_eq!(*log.lock().unwrap(), ["deferred step ran"]);
/// # Ok(())
/// # }
/// ```
pub struct ResourceStack {
    id: u64,
    entries: Vec<Entry>,
    step_timeout: Option<Duration>,
}

impl Default for ResourceStack {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for ResourceStack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let entries: Vec<&str> = self
            .entries
            .iter()
            .map(|e| match e {
                Entry::Resource { ty, .. } => ty,
                Entry::Defer { .. } => "deferred step",
            })
            .collect();
        f.debug_struct("ResourceStack")
            .field("entries", &entries)
            .field("step_timeout", &self.step_timeout)
            .finish()
    }
}

impl ResourceStack {
    /// An empty stack.
    pub fn new() -> Self {
        ResourceStack {
            id: NEXT_STACK.fetch_add(1, Ordering::Relaxed),
            entries: Vec::new(),
            step_timeout: None,
        }
    }

    /// Gives every entry's close this deadline: one past it is dropped and reported as a
    /// timeout, and the rest still close.
    #[must_use]
    pub fn with_step_timeout(mut self, deadline: Duration) -> Self {
        self.step_timeout = Some(deadline);
        self
    }

    /// Enters `resource` and pushes it. A failed enter returns its error and pushes
    /// nothing (the enter has closed what it brought up; a panicking enter is caught and
    /// closed too). If this future is dropped while the resource enters, the resource is
    /// closed in the background.
    pub async fn enter<R: AsyncResource + 'static>(
        &mut self,
        resource: R,
    ) -> Result<StackSlot<R>, ResourceError> {
        let mut guard = Guard::new(
            resource,
            DropNotice {
                owner: "ResourceStack::enter",
                open_is_a_bug: false,
            },
        );
        guard.enter().await?;
        match guard.take() {
            Some(resource) => Ok(self.push(resource)),
            None => Err(ResourceError::other(
                "the resource was taken while it entered",
            )),
        }
    }

    /// Pushes a resource that is already entered.
    pub fn push<R: AsyncResource + 'static>(&mut self, resource: R) -> StackSlot<R> {
        let index = self.entries.len();
        self.entries.push(Entry::Resource {
            ty: std::any::type_name::<R>(),
            resource: Box::new(resource),
        });
        StackSlot {
            stack: self.id,
            index,
            _type: PhantomData,
        }
    }

    /// Pushes a cleanup step, run at its place when the stack closes.
    pub fn defer<F, E>(&mut self, step: F)
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<BoxError>,
    {
        self.entries.push(Entry::Defer {
            step: Some(Box::pin(async move { user_result(step.await) })),
        });
    }

    fn entry<R: 'static>(&self, slot: &StackSlot<R>) -> Option<&dyn Erased> {
        if slot.stack != self.id {
            return None;
        }
        match self.entries.get(slot.index)? {
            Entry::Resource { resource, .. } => Some(&**resource),
            Entry::Defer { .. } => None,
        }
    }

    /// The resource `slot` was given for; `None` if it is from another stack or the
    /// stack has been closed or handed over.
    pub fn get<R: 'static>(&self, slot: &StackSlot<R>) -> Option<&R> {
        self.entry(slot)?.as_any().downcast_ref()
    }

    /// The resource `slot` was given for, mutably.
    pub fn get_mut<R: 'static>(&mut self, slot: &StackSlot<R>) -> Option<&mut R> {
        if slot.stack != self.id {
            return None;
        }
        match self.entries.get_mut(slot.index)? {
            Entry::Resource { resource, .. } => resource.as_any_mut().downcast_mut(),
            Entry::Defer { .. } => None,
        }
    }

    /// How many resources and steps the stack holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the stack holds nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Moves every entry into a new stack and leaves this one empty: the way to keep a
    /// setup that was built successfully, while a failure half-way would have closed
    /// it. Slots keep working on the new stack.
    #[must_use = "the returned stack holds the resources; close it"]
    pub fn pop_all(&mut self) -> ResourceStack {
        let taken = ResourceStack {
            id: self.id,
            entries: std::mem::take(&mut self.entries),
            step_timeout: self.step_timeout,
        };
        self.id = NEXT_STACK.fetch_add(1, Ordering::Relaxed);
        taken
    }

    /// Closes every entry, last in first out, whatever the others do. Every entry is
    /// removed, so a second close does nothing, and the slots given so far reach nothing
    /// any more.
    pub async fn close(&mut self) -> Result<(), ResourceError> {
        // Slots given so far stop reaching anything, even entries pushed after the close.
        self.id = NEXT_STACK.fetch_add(1, Ordering::Relaxed);
        let traced = tracing_on().then_some("ResourceStack");
        let step_timeout = self.step_timeout;
        let mut error = None;
        // Each entry is closed where it stands and removed once its step has ended: if
        // this future is dropped half-way, the entry being closed is still on the stack,
        // and the stack's drop closes it with the rest.
        while let Some(index) = self.entries.len().checked_sub(1) {
            let Some(entry) = self.entries.last_mut() else {
                break;
            };
            let outcome = match entry {
                Entry::Resource { resource, .. } => {
                    run_entry(traced, step_timeout, index, || resource.close_boxed()).await
                }
                Entry::Defer { step } => {
                    let run = || async move {
                        match step {
                            Some(step) => step.as_mut().await,
                            None => Ok(()),
                        }
                    };
                    run_entry(traced, step_timeout, index, run).await
                }
            };
            self.entries.pop();
            if let Err(e) = outcome {
                ResourceError::push(&mut error, e);
            }
        }
        error.map_or(Ok(()), Err)
    }
}

/// One entry's close, with the stack's deadline if it has one.
async fn run_entry<M, F>(
    traced: Option<&'static str>,
    step_timeout: Option<Duration>,
    index: usize,
    make: M,
) -> Result<(), ResourceError>
where
    M: FnOnce() -> F,
    F: Future<Output = Result<(), ResourceError>>,
{
    let label = Label::Index(index);
    match step_timeout {
        None => Step::new(traced, Operation::Close, label, NoDeadline, make).await,
        Some(d) => Step::new(traced, Operation::Close, label, Timed::after(d), make).await,
    }
}

impl AsyncResource for ResourceStack {
    async fn close(&mut self) -> Result<(), ResourceError> {
        ResourceStack::close(self).await
    }
}

/// The entries of a stack dropped with entries left, closed in the background.
struct Orphaned(ResourceStack);

impl Drop for Orphaned {
    fn drop(&mut self) {
        // Reached when the detached close could not run (no runtime, or the runtime shut
        // down first): the entries are dropped, and the inner stack must not try to
        // detach them again.
        self.0.entries.clear();
    }
}

impl AsyncResource for Orphaned {
    async fn close(&mut self) -> Result<(), ResourceError> {
        self.0.close().await
    }
}

impl Drop for ResourceStack {
    fn drop(&mut self) {
        if self.entries.is_empty() {
            return;
        }
        tracing::warn!(
            entries = self.entries.len(),
            "`ResourceStack` dropped without `close().await`: closing its entries in the background"
        );
        let orphaned = Orphaned(self.pop_all());
        crate::detached::detach(orphaned, "ResourceStack", false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn debug_lists_the_entries_and_slots_their_type() {
        let mut stack = ResourceStack::new().with_step_timeout(Duration::from_secs(1));
        let slot = stack.push(Vec::<ResourceStack>::new());
        stack.defer(async { Ok::<(), std::io::Error>(()) });
        let shown = format!("{stack:?}");
        assert!(
            shown.contains("alloc::vec::Vec") && shown.contains("deferred step"),
            "{shown}"
        );
        assert!(format!("{slot:?}").contains("index: 0"));
        let copy = slot;
        assert_eq!(stack.len(), 2);
        assert!(!stack.is_empty());
        assert!(stack.get(&copy).is_some());
        stack.close().await.unwrap();
        assert!(stack.get(&copy).is_none());
        assert!(stack.is_empty());
    }
}
