//! Closes started from a `Drop`: a guard or a scope dropped before its resource was
//! closed hands the resource here, and it is closed as a task on the current tokio
//! runtime. Every such close is registered process-wide, so [`wait_detached`] can wait
//! for all of them before the program exits and name the ones that did not finish.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tracing::Instrument;

use crate::AsyncResource;
use crate::error::{Operation, ResourceError};
use crate::step::{DeadlineOutcome, catch_panic, within_deadline};
use crate::testing;

struct Registry {
    next_id: AtomicU64,
    /// Closes in flight, by id: the type each one closes.
    pending: Mutex<BTreeMap<u64, &'static str>>,
    /// Woken whenever a close leaves `pending`.
    changed: Notify,
}

static REGISTRY: LazyLock<Registry> = LazyLock::new(|| Registry {
    next_id: AtomicU64::new(0),
    pending: Mutex::new(BTreeMap::new()),
    changed: Notify::new(),
});

fn pending() -> std::sync::MutexGuard<'static, BTreeMap<u64, &'static str>> {
    // Every update is one insert or one remove: a poisoned map is still consistent.
    crate::sync::lock(&REGISTRY.pending)
}

/// Takes a close out of the registry when its task ends, however it ends: finished,
/// panicked, or dropped by a runtime shutting down, which is logged as the loss it is.
struct Registered {
    id: u64,
    ty: &'static str,
    finished: bool,
}

impl Drop for Registered {
    fn drop(&mut self) {
        if !self.finished {
            let ty = self.ty;
            tracing::error!(
                resource = ty,
                "the runtime shut down before the detached close of `{ty}` finished: it is dropped without being closed; call `wait_detached` before the runtime ends"
            );
        }
        pending().remove(&self.id);
        REGISTRY.changed.notify_waiters();
    }
}

/// Closes `resource` as a detached task on the current tokio runtime. Without a
/// runtime the resource can only be dropped, and that is logged as an error.
/// `counted` says whether [`testing`] counts it as open until this close ends.
pub(crate) fn detach<R: AsyncResource + 'static>(mut resource: R, ty: &'static str, counted: bool) {
    let handle = match tokio::runtime::Handle::try_current() {
        Ok(handle) => handle,
        Err(_) => {
            tracing::error!(
                resource = ty,
                "no tokio runtime to close `{ty}` on: it is dropped without being closed"
            );
            // Not closed: the `testing` counter keeps counting it as open.
            drop(resource);
            let _ = counted;
            return;
        }
    };
    // Numbered under the registry's lock, so `wait_detached` sees every close numbered
    // below its mark in the map.
    let id = {
        let mut pending = pending();
        let id = REGISTRY.next_id.fetch_add(1, Ordering::Relaxed);
        pending.insert(id, ty);
        id
    };
    let mut registered = Registered {
        id,
        ty,
        finished: false,
    };
    let span = tracing::debug_span!("resource.detached_close", resource = ty);
    let task = async move {
        // The close is made inside the panic guard, so a panic before its first await
        // is caught too.
        let outcome = catch_panic(async { resource.close().await }).await;
        registered.finished = true;
        match outcome {
            Ok(()) => tracing::debug!(resource = ty, "detached close of `{ty}` finished"),
            Err(error) => tracing::error!(
                resource = ty,
                %error,
                "detached close of `{ty}` failed: {error}"
            ),
        }
        drop(resource);
        if counted {
            testing::closed::<R>();
        }
        drop(registered);
    };
    handle.spawn(task.instrument(span));
}

/// Waits until every detached close in the process has finished, for at most
/// `timeout`.
///
/// A [`Managed`](crate::Managed) guard dropped without `close`, or a
/// [`scope`](crate::scope()) whose future was dropped half-way, closes its resource as a
/// task of its own. Call this before the program exits (after the work that could
/// leave such closes behind), so that none is cut short with the runtime:
///
/// ```
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// // ... the service runs, then shuts down ...
/// if let Err(unfinished) = resource_runtime::wait_detached(Duration::from_secs(5)).await {
///     eprintln!("cleanup did not finish: {unfinished}");
/// }
/// # }
/// ```
///
/// Closes started after the call are not waited for. The error holds one timeout
/// failure for each close still running, at the path of the type it closes; those
/// closes go on as long as the runtime runs. On a runtime without timers the timeout
/// cannot be enforced: it waits for every such close, then returns an error for which
/// [`ResourceError::is_unenforced_deadline`] is true.
pub async fn wait_detached(timeout: Duration) -> Result<(), ResourceError> {
    // Ids only grow: the closes pending now are the ones below this mark.
    let mark = {
        let _pending = pending();
        REGISTRY.next_id.load(Ordering::Relaxed)
    };
    let earlier_pending = || pending().range(..mark).next().is_some();
    let all_done = async {
        loop {
            let changed = REGISTRY.changed.notified();
            let mut changed = std::pin::pin!(changed);
            // Registered before the check, so a close that ends in between is not missed.
            changed.as_mut().enable();
            if !earlier_pending() {
                return;
            }
            changed.await;
        }
    };
    // The timer is made lazily and guarded: a runtime without timers waits without a
    // deadline, and says why once every close has finished.
    match within_deadline(timeout, all_done).await {
        DeadlineOutcome::InTime => return Ok(()),
        DeadlineOutcome::Unbounded(why) => return Err(why),
        DeadlineOutcome::Expired => {}
    }
    let unfinished: Vec<&'static str> = pending().range(..mark).map(|(_, ty)| *ty).collect();
    let mut error: Option<ResourceError> = None;
    for ty in unfinished {
        let leaf = ResourceError::still_running(timeout).within(&ty, Operation::Close);
        ResourceError::push(&mut error, leaf);
    }
    error.map_or(Ok(()), Err)
}

/// How many detached closes are running now.
pub fn detached_in_flight() -> usize {
    pending().len()
}
