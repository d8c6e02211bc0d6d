//! [`AsyncExecutor`]: bounded concurrency with a graceful shutdown, the [`Executor`]
//! protocol, and [`RateLimitedExecutor`].

use std::cell::Cell;
use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{Semaphore, TryAcquireError};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::AsyncResource;
use crate::error::{ConfigError, ResourceError};
#[cfg(feature = "limiter")]
use crate::limiter::RateLimiter;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use crate::limiter::permits::RedisPermits;
#[cfg(feature = "redis")]
use crate::limiter::permits::{Lease, Permits};
use crate::step::DeadlineOutcome;

/// Something that runs futures: a provider written against it works with any executor.
///
/// # What an implementation must guarantee
///
/// - `execute` runs the future to its end or says why it did not: the output, or an
///   error for which [`ResourceError::is_closed`] is true when the executor is closed
///   (also when it was stopped by a shutdown), or [`ResourceError::is_panic`] when the
///   future panicked. It never drops a future silently and never panics itself.
/// - The returned future is `Send`, and dropping it before it finishes does not leak
///   the work's slot or keep the executor from closing.
/// - As an [`AsyncResource`], `close` keeps the close contract for every clone: when it
///   returns, no task of the executor is running and later calls fail as closed.
///
/// ```
/// use resource_runtime::{ResourceError, executor::{AsyncExecutor, Executor}};
///
/// async fn double<E: Executor>(executor: &E, x: u32) -> Result<u32, ResourceError> {
///     executor.execute(async move { x * 2 }).await
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), ResourceError> {
/// assert_eq!(double(&AsyncExecutor::new(4)?, 21).await?, 42);
/// # Ok(())
/// # }
/// ```
pub trait Executor: AsyncResource {
    /// Runs `fut` and returns its output, or an error: the executor is closed, the task
    /// was aborted at shutdown, or it panicked.
    fn execute<F>(&self, fut: F) -> impl Future<Output = Result<F::Output, ResourceError>> + Send
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static;
}

/// Runs futures as tokio tasks, at most `max_concurrency` at once, and shuts down
/// without losing or leaking work. A cheap handle: every clone shares one executor.
///
/// - [`execute`](Self::execute) waits for a slot, runs the future as a task and returns
///   its output; [`spawn`](Self::spawn) returns a handle once a slot is free, so a
///   producer is held back while the executor is full; [`map`](Self::map) runs a
///   function over many items and keeps their order.
/// - A task's panic reaches its caller as an error for which
///   [`ResourceError::is_panic`] is true.
/// - [`close`](Self::close) stops new work at once (a closed error), lets running
///   tasks and callers already waiting for a slot finish up to the shutdown deadline,
///   then aborts the rest and reports how many it aborted ([`ExecutorError::Aborted`]).
///   Concurrent closes, from any clone and on any runtime, drive the same shutdown
///   and return its outcome; a close whose caller stopped waiting leaves nothing half
///   done, since the next close takes over where it stopped.
/// - Nothing of a task outlives it: the executor keeps counts, not a set of handles.
/// - It is configured once, when it is built ([`builder`](Self::builder)).
///
/// ```
/// use std::time::Duration;
/// use resource_runtime::executor::AsyncExecutor;
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), resource_runtime::ResourceError> {
/// let executor = AsyncExecutor::builder(8)
///     .shutdown_timeout(Duration::from_secs(5))
///     .build()?;
/// let squares = executor.map(1..=4_u64, |x| async move { x * x }).await;
/// let squares: Vec<u64> = squares.into_iter().collect::<Result<_, _>>()?;
/// assert_eq!(squares, [1, 4, 9, 16]);
/// executor.close().await?;
/// assert!(executor.execute(async {}).await.unwrap_err().is_closed());
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct AsyncExecutor {
    inner: Arc<Exec>,
}

/// Configures an [`AsyncExecutor`] before it exists, so that every clone shares one
/// configuration; from [`AsyncExecutor::builder`].
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct AsyncExecutorBuilder {
    max_concurrency: usize,
    shutdown_timeout: Duration,
    #[cfg(feature = "redis")]
    redis_permits: Option<RedisPermits>,
}

impl AsyncExecutorBuilder {
    /// How long a close lets running and waiting work finish before it aborts the
    /// rest (default 30 s). Zero aborts at once.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// Takes a fleet-wide permit from Redis for every task, in addition to its local
    /// slot: every process whose executor names the same prefix on the same Redis
    /// runs at most the permits' limit of tasks together. See [`RedisPermits`].
    ///
    /// - The executor must then be entered ([`AsyncExecutor::enter`], or
    ///   [`AsyncResource::enter`]) before use: it connects and starts the renewal of
    ///   this process's leases; a call before that fails with an error for which
    ///   [`ResourceError::is_not_entered`] is true.
    /// - A caller takes its local slot first, then the permit (so this process never
    ///   holds more leases than `max_concurrency`); the permit is released when the
    ///   task ends, however it ends (output, error, panic, abort, shutdown), and when
    ///   the caller is cancelled before its task starts.
    /// - [`close`](AsyncExecutor::close) wakes the callers still waiting for a permit
    ///   with a closed error at once (unlike callers waiting for a local slot, which
    ///   still run), lets running tasks finish as usual, then releases every lease of
    ///   this process.
    /// - A Redis that does not answer fails the caller with an error for which
    ///   [`ResourceError::is_unavailable`] is true, within the permits' timeout.
    ///
    /// With a [`RateLimitedExecutor`] the order is: slot, permit, tokens.
    ///
    /// ```
    /// use resource_runtime::executor::{AsyncExecutor, RedisPermits};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), resource_runtime::ResourceError> {
    /// let executor = AsyncExecutor::builder(8)
    ///     .redis_permits(RedisPermits::new("redis://127.0.0.1:6379/", "myorg:openai", 20))
    ///     .build()?;
    /// // Nothing is connected until it is entered (`executor.enter().await?`).
    /// assert!(executor.execute(async {}).await.unwrap_err().is_not_entered());
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn redis_permits(mut self, permits: RedisPermits) -> Self {
        self.redis_permits = Some(permits);
        self
    }

    /// Builds the executor; fails when `max_concurrency` is 0 (a [`ConfigError`]
    /// inside the error), or when the fleet permits' configuration cannot work.
    pub fn build(self) -> Result<AsyncExecutor, ResourceError> {
        if self.max_concurrency == 0 {
            return Err(ConfigError::new(
                "AsyncExecutor",
                "max_concurrency",
                "is 0, so no task could ever run: give at least 1",
            )
            .into());
        }
        let permits = self.max_concurrency.min(Semaphore::MAX_PERMITS);
        #[cfg(feature = "redis")]
        let fleet = match self.redis_permits {
            Some(config) => Some(Arc::new(Permits::new(config)?)),
            None => None,
        };
        Ok(AsyncExecutor {
            inner: Arc::new(Exec {
                max_concurrency: self.max_concurrency,
                shutdown_timeout: self.shutdown_timeout,
                slots: OwnLine(Slots {
                    permits: Semaphore::new(permits),
                    tasks: Count::default(),
                }),
                abort: CancellationToken::new(),
                waiters: OwnLine(Count::default()),
                aborted: AtomicUsize::new(0),
                lifecycle: Mutex::new(Lifecycle::Open),
                closing: AtomicBool::new(false),
                stragglers_counted: AtomicBool::new(false),
                aborting: AtomicBool::new(false),
                #[cfg(feature = "redis")]
                fleet,
            }),
        })
    }
}

/// Why an [`AsyncExecutor`] refused or cut work: inside the [`ResourceError`] its
/// calls return (reach it with [`ResourceError::downcast_ref`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExecutorError {
    /// The shutdown deadline passed with work still running or waiting for a slot:
    /// `count` tasks and waiting callers were aborted.
    Aborted {
        /// How many tasks and waiting callers were aborted.
        count: usize,
        /// The shutdown deadline that passed.
        deadline: Duration,
    },
    /// `close` was called from a task of the executor itself, which cannot wait for
    /// a shutdown that waits for it. The shutdown goes on in the background.
    CloseFromOwnTask,
}

impl std::fmt::Display for ExecutorError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExecutorError::Aborted { count, deadline } => write!(
                f,
                "the shutdown deadline of {deadline:?} passed: {count} task(s) still running or waiting for a slot were aborted"
            ),
            ExecutorError::CloseFromOwnTask => f.write_str(
                "a task of an AsyncExecutor cannot wait for its own executor's shutdown: the shutdown goes on in the background; close the executor from outside its tasks to wait for it",
            ),
        }
    }
}

impl std::error::Error for ExecutorError {}

struct Exec {
    max_concurrency: usize,
    shutdown_timeout: Duration,
    /// The slots and the tasks running in them, on cache lines of their own: every
    /// task's start and end writes both, and nothing else does.
    slots: OwnLine<Slots>,
    /// Fired when the shutdown deadline passes: running tasks and slot waiters stop.
    abort: CancellationToken,
    /// Callers waiting for a slot, counted from before their open check until their
    /// task is counted in `slots.tasks`.
    waiters: OwnLine<Count>,
    /// Tasks and waiters stopped by the deadline.
    aborted: AtomicUsize,
    lifecycle: Mutex<Lifecycle>,
    /// Set once the executor stops accepting work: read on every submission without
    /// taking the lifecycle lock.
    closing: AtomicBool,
    /// Set once the shutdown has counted the waiters that did not leave in time.
    stragglers_counted: AtomicBool,
    /// Set just before `abort` is cancelled: what every submission and every task's
    /// start reads, one atomic load instead of the token's lock.
    aborting: AtomicBool,
    /// The fleet-wide permits, when configured.
    #[cfg(feature = "redis")]
    fleet: Option<Arc<Permits>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lifecycle {
    Open,
    /// Shutting down: every close drives the shutdown towards this deadline (`None`
    /// when it lies past what the clock can hold).
    Closing {
        deadline: Option<Instant>,
    },
    /// Shut down; how many tasks and waiters the deadline stopped.
    Closed {
        aborted: usize,
    },
}

/// How long a shutdown past its deadline waits for slot-waiters to wake and leave
/// before it counts the rest itself.
const STRAGGLER_GRACE: Duration = Duration::from_millis(100);

/// The default shutdown deadline.
const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

thread_local! {
    /// The executor whose task this thread is polling (the address of its state; 0 for
    /// none), so that a task closing its own executor is told instead of waiting for
    /// itself. A plain cell, set and restored around each poll: a task-local would
    /// keep the value in every task and move it in and out of its key on every poll.
    static RUNNING_IN: Cell<usize> = const { Cell::new(0) };
}

pin_project_lite::pin_project! {
    /// A task of the executor: its future, run until it ends or the shutdown deadline
    /// aborts it, in the slot it holds. Each poll runs with `RUNNING_IN` set to its
    /// executor. A hand-written future rather than an `async` block, so that the task
    /// holds what it needs and no copies of references to it.
    struct Task<F> {
        #[pin]
        fut: F,
        // The wait on the abort token, made (and boxed) only once the future waits:
        // a task that finishes at its first poll never touches the token, and the
        // task's own allocation has no room for the wait.
        aborted: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
        started: bool,
        // Dropped after the future (fields drop in order): gives the permit back.
        slot: Slot,
    }
}

impl<F: Future> Future for Task<F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let exec = &*this.slot.exec;
        if !*this.started {
            *this.started = true;
            // Aborted before it started: it never runs.
            if exec.aborting.load(Ordering::Acquire) {
                exec.aborted.fetch_add(1, Ordering::Relaxed);
                return Poll::Ready(None);
            }
        }
        let _running = Running(RUNNING_IN.replace(exec.id()));
        // The task's own future first.
        if let Poll::Ready(output) = this.fut.poll(cx) {
            return Poll::Ready(Some(output));
        }
        let wait = this
            .aborted
            .get_or_insert_with(|| Box::pin(exec.abort.clone().cancelled_owned()));
        if wait.as_mut().poll(cx).is_ready() {
            exec.aborted.fetch_add(1, Ordering::Relaxed);
            return Poll::Ready(None);
        }
        Poll::Pending
    }
}

/// Puts the executor that was running back, also when the poll unwinds.
struct Running(usize);

impl Drop for Running {
    #[inline]
    fn drop(&mut self) {
        RUNNING_IN.set(self.0);
    }
}

impl std::fmt::Debug for AsyncExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut debug = f.debug_struct("AsyncExecutor");
        debug
            .field("max_concurrency", &self.inner.max_concurrency)
            .field("shutdown_timeout", &self.inner.shutdown_timeout)
            .field("in_flight", &self.in_flight())
            .field("lifecycle", &*self.inner.lifecycle());
        #[cfg(feature = "redis")]
        if let Some(fleet) = &self.inner.fleet {
            debug
                .field("fleet_prefix", &fleet.prefix())
                .field("fleet_limit", &fleet.limit())
                .field("fleet_permits_held", &fleet.held());
        }
        debug.finish()
    }
}

impl AsyncExecutor {
    /// An executor running at most `max_concurrency` tasks at once, with a shutdown
    /// deadline of 30 s. Fails when `max_concurrency` is 0.
    pub fn new(max_concurrency: usize) -> Result<Self, ResourceError> {
        Self::builder(max_concurrency).build()
    }

    /// An executor of at most `max_concurrency` tasks at once, to configure before it
    /// is built.
    pub fn builder(max_concurrency: usize) -> AsyncExecutorBuilder {
        AsyncExecutorBuilder {
            max_concurrency,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            #[cfg(feature = "redis")]
            redis_permits: None,
        }
    }

    /// Makes the executor ready for every clone: with fleet permits
    /// (`AsyncExecutorBuilder::redis_permits`, with the `redis` feature), connects to Redis within the
    /// permits' connect timeout and starts renewing this process's leases; otherwise
    /// nothing. Entering an entered executor does nothing; a failed enter leaves
    /// nothing open and may be tried again. The [`AsyncResource::enter`] of the
    /// executor calls it.
    pub async fn enter(&self) -> Result<(), ResourceError> {
        #[cfg(feature = "redis")]
        if let Some(fleet) = &self.inner.fleet {
            return Box::pin(fleet.enter()).await;
        }
        Ok(())
    }

    /// How many fleet permits this process holds now (0 without fleet permits).
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn fleet_permits_held(&self) -> usize {
        self.inner.fleet.as_ref().map_or(0, |fleet| fleet.held())
    }

    /// How many tasks are running now.
    pub fn in_flight(&self) -> usize {
        self.inner.slots.tasks.len()
    }

    /// How many callers are waiting for a slot.
    pub fn waiting(&self) -> usize {
        self.inner.waiters.len()
    }

    /// The most tasks that run at once.
    pub fn max_concurrency(&self) -> usize {
        self.inner.max_concurrency
    }

    /// The shutdown deadline.
    pub fn shutdown_timeout(&self) -> Duration {
        self.inner.shutdown_timeout
    }

    /// Waits for a slot, then starts `fut` as a task and returns its handle; the handle
    /// resolves to the output. Waiting here is the executor's backpressure.
    pub async fn spawn<F>(&self, fut: F) -> Result<TaskHandle<F::Output>, ResourceError>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        Ok(self.reserve().await?.start(fut))
    }

    /// Waits for a slot and holds it, counted as a waiting caller, until a task is
    /// started in it.
    pub(crate) async fn reserve(&self) -> Result<Reserved<'_>, ResourceError> {
        let exec = &*self.inner;
        // Counted as waiting before the open check and until its task is counted: a
        // shutdown sets `closing` and then looks at the count, so either it sees this
        // caller or this caller sees `closing`.
        let waiting = exec.waiters.enter();
        exec.check_open()?;
        let permit = match exec.slots.permits.try_acquire() {
            Ok(permit) => permit,
            Err(TryAcquireError::Closed) => return Err(ResourceError::closed("AsyncExecutor")),
            // The shutdown deadline closes the permits: that ends this wait too, so it
            // needs no watch on the abort token.
            Err(TryAcquireError::NoPermits) => match exec.slots.permits.acquire().await {
                Ok(permit) => permit,
                Err(_) => {
                    exec.count_stopped_waiter();
                    return Err(ResourceError::closed("AsyncExecutor"));
                }
            },
        };
        // From here the slot gives its permit back when dropped, on every path.
        permit.forget();
        let slot = Slot {
            exec: self.inner.clone(),
            task: false,
        };
        if exec.aborting.load(Ordering::Acquire) {
            exec.count_stopped_waiter();
            return Err(ResourceError::closed("AsyncExecutor"));
        }
        #[cfg(feature = "redis")]
        let lease = match &exec.fleet {
            None => None,
            Some(fleet) => match exec.unless_aborted(Box::pin(fleet.acquire())).await {
                Some(Ok(lease)) => Some(lease),
                Some(Err(e)) => return Err(e),
                None => {
                    exec.count_stopped_waiter();
                    return Err(ResourceError::closed("AsyncExecutor"));
                }
            },
        };
        Ok(Reserved {
            executor: self,
            slot,
            _waiting: waiting,
            #[cfg(feature = "redis")]
            lease,
        })
    }

    fn start<F>(&self, mut slot: Slot, fut: F) -> TaskHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        // Counted before it is spawned, while its caller is still counted as waiting,
        // so that a shutdown waiting for both counts never sees neither. The slot is
        // the task's one reference to the executor's state, and leaves the count when
        // the task ends.
        self.inner.slots.tasks.add();
        slot.task = true;
        let handle = tokio::spawn(Task {
            fut,
            aborted: None,
            started: false,
            slot,
        });
        TaskHandle { handle }
    }

    /// Runs `fut` as a task once a slot is free and returns its output.
    pub async fn execute<F>(&self, fut: F) -> Result<F::Output, ResourceError>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.spawn(fut).await?.await
    }

    /// Runs `f` over every item, as many at once as the executor allows, and returns
    /// the outputs in the order of the items. Each output is the task's result, so one
    /// failure loses none of the others.
    pub async fn map<I, F, Fut>(
        &self,
        items: I,
        mut f: F,
    ) -> Vec<Result<Fut::Output, ResourceError>>
    where
        I: IntoIterator,
        F: FnMut(I::Item) -> Fut,
        Fut: Future + Send + 'static,
        Fut::Output: Send + 'static,
    {
        let mut started = Vec::new();
        for item in items {
            started.push(self.spawn(f(item)).await);
        }
        let mut outputs = Vec::with_capacity(started.len());
        for task in started {
            outputs.push(match task {
                Ok(handle) => handle.await,
                Err(e) => Err(e),
            });
        }
        outputs
    }

    /// Shuts the executor down for every clone; see the type's documentation.
    ///
    /// Every close drives the one shutdown: closes made while it runs, from any clone
    /// and on any runtime, take part in it and return its outcome, and a close made
    /// after it ended returns `Ok(())` at once. A close whose caller stops waiting
    /// (dropped, timed out, its runtime gone) leaves the shutdown where it was, and
    /// the next close carries it on within the same deadline. On a runtime without
    /// timers the deadline cannot be enforced: the close waits for every task and says
    /// so ([`ResourceError::is_unenforced_deadline`]). Called from one of the
    /// executor's own tasks, it starts the shutdown in the background and returns
    /// [`ExecutorError::CloseFromOwnTask`] at once.
    pub async fn close(&self) -> Result<(), ResourceError> {
        let exec = &*self.inner;
        let deadline = {
            let mut lifecycle = exec.lifecycle();
            match *lifecycle {
                Lifecycle::Open => {
                    let deadline = Instant::now().checked_add(exec.shutdown_timeout);
                    *lifecycle = Lifecycle::Closing { deadline };
                    exec.closing.store(true, Ordering::SeqCst);
                    #[cfg(feature = "redis")]
                    if let Some(fleet) = &exec.fleet {
                        fleet.stop_waiters();
                    }
                    deadline
                }
                Lifecycle::Closing { deadline } => deadline,
                // The close contract: closing a closed executor is `Ok` at once.
                Lifecycle::Closed { .. } => return Ok(()),
            }
        };
        if RUNNING_IN.with(Cell::get) == exec.id() {
            // Waiting here would wait for this very task. The shutdown still keeps its
            // deadline: it runs as a task of its own, and any later close joins it.
            let runner = self.inner.clone();
            tokio::spawn(async move { runner.drive_shutdown(deadline).await });
            return Err(ResourceError::other(ExecutorError::CloseFromOwnTask));
        }
        exec.drive_shutdown(deadline).await
    }
}

/// A value on cache lines of its own: what one thread writes often does not share a
/// line with what the others read or write.
#[derive(Debug)]
#[repr(align(128))]
struct OwnLine<T>(T);

impl<T> std::ops::Deref for OwnLine<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

/// The semaphore of the slots and the count of the tasks running in them, side by side:
/// a task's start takes a permit and counts the task, its end gives both back, so the
/// two share one cache line's trips between cores.
#[derive(Debug)]
struct Slots {
    permits: Semaphore,
    tasks: Count,
}

/// A count of callers waiting for a slot, or of running tasks, and the shutdown's wait
/// for it to reach zero. A plain counter rather than a `TaskTracker`: a tracker's token
/// clones the tracker's `Arc` for every task, which the executor's hot path would pay
/// on top of the slot's own reference.
///
/// The waiters' count is kept on a cache line of its own (`OwnLine`): the caller that
/// submits writes it twice a task, while the tasks ending on other threads write the
/// slots, and sharing a line made each of those writes move it between cores.
#[derive(Debug, Default)]
struct Count {
    count: AtomicUsize,
    /// Set once the shutdown waits for the count to reach zero.
    closed: AtomicBool,
    empty: tokio::sync::Notify,
}

impl Count {
    fn enter(&self) -> Counted<'_> {
        self.add();
        Counted(self)
    }

    /// One more in the count, which `leave` takes back.
    fn add(&self) {
        self.count.fetch_add(1, Ordering::SeqCst);
    }

    /// One leaves the count; the last one wakes the shutdown's wait, if it waits.
    fn leave(&self) {
        if self.count.fetch_sub(1, Ordering::SeqCst) == 1 && self.closed.load(Ordering::SeqCst) {
            self.empty.notify_waiters();
        }
    }

    fn len(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// Returns when the count is zero, and from then on every last one to leave wakes
    /// such a wait. The shutdown calls it once nothing new can be counted: no new
    /// caller once the executor is closing, no new task once no caller waits. Past the
    /// deadline a caller that nobody polls may still wait when the shutdown moves on to
    /// the tasks: should it start a task later, that task ends at its first poll
    /// without running its future (`aborting`), as a task that started after the
    /// deadline always does.
    async fn wait(&self) {
        self.closed.store(true, Ordering::SeqCst);
        loop {
            let empty = self.empty.notified();
            let mut empty = pin!(empty);
            // Registered before the count is read, so a last caller leaving in between
            // still wakes this wait.
            empty.as_mut().enable();
            if self.count.load(Ordering::SeqCst) == 0 {
                return;
            }
            empty.await;
        }
    }
}

/// One caller counted as waiting for a slot, until it is dropped.
struct Counted<'a>(&'a Count);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.leave();
    }
}

/// A slot of the executor: a permit of its semaphore, given back when dropped, and once
/// a task runs in it (`task`), that task's place in the count of running tasks.
struct Slot {
    exec: Arc<Exec>,
    task: bool,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let slots = &self.exec.slots;
        // The permit first: once the shutdown sees no task, every permit is back.
        slots.permits.add_permits(1);
        if self.task {
            slots.tasks.leave();
        }
    }
}

/// A slot held for a task that is not started yet.
pub(crate) struct Reserved<'a> {
    executor: &'a AsyncExecutor,
    slot: Slot,
    _waiting: Counted<'a>,
    /// The fleet permit, moved into the task and released when it ends.
    #[cfg(feature = "redis")]
    lease: Option<Lease>,
}

impl Reserved<'_> {
    /// Runs `fut` (a limiter's acquisition, say) while holding the slot; the shutdown
    /// deadline stops it like any caller waiting for a slot.
    #[cfg_attr(
        not(feature = "limiter"),
        allow(dead_code, reason = "used by the rate-limited executor")
    )]
    pub(crate) async fn wait_for<F, T>(&self, fut: F) -> Result<T, ResourceError>
    where
        F: Future<Output = Result<T, ResourceError>>,
    {
        let exec = &*self.executor.inner;
        match exec.unless_aborted(fut).await {
            Some(out) => out,
            None => {
                exec.count_stopped_waiter();
                Err(ResourceError::closed("AsyncExecutor"))
            }
        }
    }

    /// Starts `fut` as a task in the held slot.
    pub(crate) fn start<F>(self, fut: F) -> TaskHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        // `_waiting` leaves the count only once the task is counted in `slots.tasks`.
        #[cfg(feature = "redis")]
        if let Some(lease) = self.lease {
            return self.executor.start(self.slot, async move {
                // Dropped with the task's future, however it ends.
                let _lease = lease;
                fut.await
            });
        }
        self.executor.start(self.slot, fut)
    }
}

impl Exec {
    fn lifecycle(&self) -> MutexGuard<'_, Lifecycle> {
        // One assignment at a time: a poisoned lock still holds a valid state.
        crate::sync::lock(&self.lifecycle)
    }

    /// Names this executor for the check that a task is closing its own executor.
    fn id(&self) -> usize {
        std::ptr::from_ref(self) as usize
    }

    /// Runs `fut` until the shutdown deadline aborts the waiting; `None` then.
    async fn unless_aborted<F: Future>(&self, fut: F) -> Option<F::Output> {
        let mut fut = pin!(fut);
        let mut aborted = pin!(None);
        // The wait first, and the abort's wait made only once it waits: one that ends
        // at once never touches the abort token.
        poll_fn(|cx| {
            if let Poll::Ready(output) = fut.as_mut().poll(cx) {
                return Poll::Ready(Some(output));
            }
            if aborted.is_none() {
                aborted.set(Some(self.abort.cancelled()));
            }
            if let Some(wait) = aborted.as_mut().as_pin_mut()
                && wait.poll(cx).is_ready()
            {
                return Poll::Ready(None);
            }
            Poll::Pending
        })
        .await
    }

    /// A caller waiting for a slot stopped by the shutdown deadline.
    fn count_stopped_waiter(&self) {
        if !self.stragglers_counted.load(Ordering::SeqCst) {
            self.aborted.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn check_open(&self) -> Result<(), ResourceError> {
        if self.closing.load(Ordering::SeqCst) {
            return Err(ResourceError::closed("AsyncExecutor"));
        }
        Ok(())
    }

    /// Returns once no caller is waiting for a slot (nobody new can start waiting once
    /// the executor is closing).
    async fn no_waiters(&self) {
        self.waiters.wait().await;
    }

    /// Drives the shutdown to its end. Every step can be taken again by another close
    /// (they wait for conditions, and the one-time steps are guarded), so whoever polls
    /// a close makes progress, and no close waits on a task that may be gone.
    async fn drive_shutdown(&self, deadline: Option<Instant>) -> Result<(), ResourceError> {
        let drain = async {
            // Callers already waiting for a slot still run.
            self.no_waiters().await;
            self.slots.tasks.wait().await;
        };
        let drained = if self.shutdown_timeout.is_zero() {
            DeadlineOutcome::Expired
        } else {
            match deadline {
                Some(at) => crate::step::within_deadline_at(at, self.shutdown_timeout, drain).await,
                // Past what the clock can hold: no deadline to keep.
                None => {
                    drain.await;
                    DeadlineOutcome::InTime
                }
            }
        };
        let unenforced = match drained {
            DeadlineOutcome::InTime => None,
            DeadlineOutcome::Unbounded(why) => Some(why),
            DeadlineOutcome::Expired => {
                self.abort_the_rest().await;
                None
            }
        };
        // Every task has ended: the fleet permits are released.
        #[cfg(feature = "redis")]
        if let Some(fleet) = &self.fleet {
            fleet.finish().await;
        }
        let aborted = self.finish_shutdown();
        match (self.outcome(aborted), unenforced) {
            (Ok(()), None) => Ok(()),
            (Ok(()), Some(why)) => Err(why),
            (Err(e), None) => Err(e),
            (Err(e), Some(why)) => Err(e.combine(why)),
        }
    }

    /// Past the deadline: stops the running tasks and the callers waiting for a slot.
    async fn abort_the_rest(&self) {
        self.aborting.store(true, Ordering::Release);
        self.abort.cancel();
        self.slots.permits.close();
        // Callers waiting for a slot wake, count themselves and leave. One whose
        // future nobody polls would hold the close forever, so after a short grace
        // the ones still there are counted here instead, once.
        let _ = crate::step::within_deadline(STRAGGLER_GRACE, self.no_waiters()).await;
        if !self.stragglers_counted.swap(true, Ordering::SeqCst) {
            self.aborted
                .fetch_add(self.waiters.len(), Ordering::Relaxed);
        }
        self.slots.tasks.wait().await;
    }

    /// Marks the executor closed (once) and returns how many were aborted.
    fn finish_shutdown(&self) -> usize {
        self.slots.permits.close();
        let mut lifecycle = self.lifecycle();
        match *lifecycle {
            Lifecycle::Closed { aborted } => aborted,
            _ => {
                let aborted = self.aborted.load(Ordering::Relaxed);
                *lifecycle = Lifecycle::Closed { aborted };
                aborted
            }
        }
    }

    fn outcome(&self, aborted: usize) -> Result<(), ResourceError> {
        if aborted == 0 {
            return Ok(());
        }
        Err(ResourceError::other(ExecutorError::Aborted {
            count: aborted,
            deadline: self.shutdown_timeout,
        }))
    }
}

/// A task started by [`AsyncExecutor::spawn`]: resolves to its output, or to an error if
/// it panicked or was aborted at shutdown.
#[derive(Debug)]
pub struct TaskHandle<T> {
    handle: JoinHandle<Option<T>>,
}

impl<T> TaskHandle<T> {
    /// Stops the task at its next await point; awaiting the handle then gives an error.
    pub fn abort(&self) {
        self.handle.abort();
    }
}

impl<T> Future for TaskHandle<T> {
    type Output = Result<T, ResourceError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.handle)
            .poll(cx)
            .map(|joined| match joined {
                Ok(Some(output)) => Ok(output),
                Ok(None) => Err(ResourceError::closed("AsyncExecutor")),
                Err(e) if e.is_panic() => Err(ResourceError::from_panic(e.into_panic())),
                Err(e) => Err(ResourceError::other(e)),
            })
    }
}

impl AsyncResource for AsyncExecutor {
    /// Makes the executor ready; see [`enter`](AsyncExecutor::enter).
    async fn enter(&mut self) -> Result<(), ResourceError> {
        AsyncExecutor::enter(self).await
    }

    /// Shuts the executor down for every clone; see [`close`](AsyncExecutor::close).
    async fn close(&mut self) -> Result<(), ResourceError> {
        AsyncExecutor::close(self).await
    }
}

impl Executor for AsyncExecutor {
    fn execute<F>(&self, fut: F) -> impl Future<Output = Result<F::Output, ResourceError>> + Send
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        AsyncExecutor::execute(self, fut)
    }
}

#[cfg(feature = "limiter")]
/// An [`AsyncExecutor`] whose every task first takes tokens from a [`RateLimiter`]:
/// bounded concurrency under a provider's rate limit.
///
/// Closing it closes the limiter first, so callers still waiting for tokens wake with a
/// closed error, then shuts the executor down.
///
/// ```
/// use std::time::Duration;
/// use resource_runtime::{executor::{AsyncExecutor, RateLimitedExecutor}, limiter::RateLimiter};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), resource_runtime::ResourceError> {
/// let executor = RateLimitedExecutor::new(
///     RateLimiter::builder(10, Duration::from_secs(1)).burst(1).build()?,
///     AsyncExecutor::new(4)?,
/// );
/// let start = tokio::time::Instant::now();
/// for i in 0..3 {
///     assert_eq!(executor.execute(async move { i }).await?, i);
/// }
/// assert_eq!(start.elapsed(), Duration::from_millis(200));
/// executor.close().await?;
/// # Ok(())
/// # }
/// ```
#[cfg(feature = "limiter")]
#[derive(Clone, Debug)]
pub struct RateLimitedExecutor {
    executor: AsyncExecutor,
    limiter: RateLimiter,
}

#[cfg(feature = "limiter")]
impl AsyncResource for RateLimitedExecutor {
    /// Enters the limiter, then the executor (a limiter whose schedule is in Redis,
    /// and an executor with fleet permits, connect here; local ones have nothing to
    /// do). When the executor fails to enter, the limiter is closed again.
    async fn enter(&mut self) -> Result<(), ResourceError> {
        self.limiter.enter().await?;
        if let Err(e) = self.executor.enter().await {
            // The enter rule: what this enter brought up is closed again.
            return Err(match self.limiter.close().await {
                Ok(()) => e,
                Err(closed) => e.combine(closed),
            });
        }
        Ok(())
    }

    /// Closes the limiter, then the executor; see [`close`](RateLimitedExecutor::close).
    async fn close(&mut self) -> Result<(), ResourceError> {
        RateLimitedExecutor::close(self).await
    }
}

#[cfg(feature = "limiter")]
impl RateLimitedExecutor {
    /// Runs every task of `executor` under `limiter`.
    pub fn new(limiter: RateLimiter, executor: AsyncExecutor) -> Self {
        RateLimitedExecutor { executor, limiter }
    }

    /// The limiter, to pause it (`pause_until`) or read it.
    pub fn limiter(&self) -> &RateLimiter {
        &self.limiter
    }

    /// The executor underneath.
    pub fn executor(&self) -> &AsyncExecutor {
        &self.executor
    }

    /// Takes one token, then runs `fut` like [`AsyncExecutor::execute`].
    pub async fn execute<F>(&self, fut: F) -> Result<F::Output, ResourceError>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.execute_weighted(1, fut).await
    }

    /// Takes `tokens` tokens (a request that costs more), then runs `fut`.
    ///
    /// The slot is taken first and the tokens second, so a task starts the moment its
    /// tokens are admitted: starts follow the limiter's schedule (at most
    /// `burst + floor(w × rate / period)` in any window `w`, and one more after a late
    /// timer wake-up) even while the executor is saturated.
    pub async fn execute_weighted<F>(&self, tokens: u32, fut: F) -> Result<F::Output, ResourceError>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let slot = self.executor.reserve().await?;
        slot.wait_for(self.limiter.acquire(tokens)).await?;
        slot.start(fut).await
    }

    /// Closes the limiter (waiters wake with a closed error), then shuts the executor
    /// down; for every clone.
    pub async fn close(&self) -> Result<(), ResourceError> {
        let limiter = self.limiter.close().await;
        let executor = self.executor.close().await;
        match (limiter, executor) {
            (Ok(()), Ok(())) => Ok(()),
            (Err(e), Ok(())) | (Ok(()), Err(e)) => Err(e),
            (Err(a), Err(b)) => Err(a.combine(b)),
        }
    }
}

#[cfg(feature = "limiter")]
impl Executor for RateLimitedExecutor {
    fn execute<F>(&self, fut: F) -> impl Future<Output = Result<F::Output, ResourceError>> + Send
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        RateLimitedExecutor::execute(self, fut)
    }
}
