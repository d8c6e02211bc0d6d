//! The step and deadline primitives every enter and close goes through: the derive's
//! protocol (in `__private`), the container impls, the stack and the scopes. Deadline,
//! panic capture, the tracing span and the path of a failure are decided here and
//! nowhere else, so their semantics cannot drift between callers.

use std::fmt;
use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tracing::level_filters::LevelFilter;

use crate::error::{BoxError, Operation, ResourceError};
use crate::sync::{CatchUnwind, caught};

/// The label of a step in a path: a field name, a tuple index, or a position in a `Vec`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Label {
    /// A name known at compile time.
    Static(&'static str),
    /// A position.
    Index(usize),
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Label::Static(s) => f.write_str(s),
            Label::Index(i) => write!(f, "{i}"),
        }
    }
}

/// Polls `fut`, turning a panic in any poll into an error instead of unwinding through
/// the caller. The future is not polled again after it panicked.
pub(crate) async fn catch_panic<F>(fut: F) -> Result<(), ResourceError>
where
    F: Future<Output = Result<(), ResourceError>>,
{
    CatchUnwind::new(fut)
        .await
        .unwrap_or_else(|payload| Err(ResourceError::from_panic(payload)))
}

/// The deadline of a step: none, or a duration counted from the step's first poll.
pub trait Deadline {
    /// `Ready(deadline)` once the deadline has passed.
    fn poll_expired(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Duration>;

    /// The deadline, if it could not be enforced because the runtime has no timer: the
    /// step then runs to its end and reports why it was not bounded.
    fn unenforced(&self) -> Option<Duration> {
        None
    }
}

/// A timer for `after` from now, or `None` on a runtime built without `enable_time`,
/// where tokio panics instead of making one.
pub(crate) fn try_sleep(after: Duration) -> Option<tokio::time::Sleep> {
    caught(|| tokio::time::sleep(after)).ok()
}

/// A timer until `at`, or `None` on a runtime without timers.
#[cfg_attr(
    not(any(feature = "executor", feature = "limiter")),
    allow(dead_code, reason = "used by the executor and the limiter")
)]
pub(crate) fn try_sleep_until(at: tokio::time::Instant) -> Option<tokio::time::Sleep> {
    caught(|| tokio::time::sleep_until(at)).ok()
}

/// A step without a deadline; costs nothing.
#[derive(Debug, Clone, Copy)]
pub struct NoDeadline;

impl Deadline for NoDeadline {
    fn poll_expired(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Duration> {
        Poll::Pending
    }
}

pin_project! {
    /// A step that must finish within `after` of its first poll.
    #[derive(Debug)]
    pub struct Timed {
        after: Duration,
        // Set once the runtime turned out to have no timer.
        unenforced: bool,
        #[pin]
        sleep: Option<tokio::time::Sleep>,
    }
}

impl Timed {
    /// A deadline of `after`.
    pub fn after(after: Duration) -> Self {
        Timed {
            after,
            unenforced: false,
            sleep: None,
        }
    }
}

impl Deadline for Timed {
    fn poll_expired(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Duration> {
        let mut this = self.project();
        if this.sleep.is_none() && !*this.unenforced {
            // Made on first poll. Without a timer the step is not cut half-way (that
            // would leave the resource open): it runs to its end, and says why.
            match try_sleep(*this.after) {
                Some(sleep) => this.sleep.set(Some(sleep)),
                None => *this.unenforced = true,
            }
        }
        match this.sleep.as_pin_mut() {
            Some(sleep) => sleep.poll(cx).map(|()| *this.after),
            None => Poll::Pending,
        }
    }

    fn unenforced(&self) -> Option<Duration> {
        self.unenforced.then_some(self.after)
    }
}

/// How a step makes its future `F`, at its first poll and inside its panic guard: into
/// the step's state, which is ended (`Done`) until it does.
pub(crate) trait Make<F>: Sized {
    /// Makes it and puts it in `state`.
    fn make_into(self, state: Pin<&mut State<Self, F>>);
}

/// A closure makes the future: the step is then generic over the closure.
impl<M, F> Make<F> for M
where
    M: FnOnce() -> F,
{
    #[inline]
    fn make_into(self, mut state: Pin<&mut State<Self, F>>) {
        state.set(State::Run { fut: self() });
    }
}

/// A function applied to a value makes the future. With a generic function's item
/// (`Resource::close` of a field type), the step is generic over the value's type
/// alone: every step of a field of one type shares its compiled code, whichever
/// close, group or rollback makes it.
pub(crate) struct Call<M, A>(pub(crate) M, pub(crate) A);

impl<M, A, F> Make<F> for Call<M, A>
where
    M: FnOnce(A) -> F,
{
    #[inline]
    fn make_into(self, mut state: Pin<&mut State<Self, F>>) {
        state.set(State::Run {
            fut: (self.0)(self.1),
        });
    }
}

/// A function pointer applied to a value makes the future and puts it in the step's
/// state itself ([`Slot::put`]). The step is generic over the value's and the future's
/// types alone, as with [`Call`], whatever function the pointer names. The future is
/// written where it stays: a future returned through the pointer would come back in a
/// slot of the caller's and be copied into the state right after the call, with wide
/// loads over the callee's narrower stores that wait for them to retire.
pub(crate) struct CallInto<A, F>(pub(crate) for<'s> fn(A, Slot<'s, A, F>), pub(crate) A);

impl<A, F> Make<F> for CallInto<A, F> {
    #[inline]
    fn make_into(self, state: Pin<&mut State<Self, F>>) {
        (self.0)(self.1, Slot(state));
    }
}

/// Where a user function's step keeps its future: the function the derive passes puts
/// the future it made here.
pub struct Slot<'s, A, F>(Pin<&'s mut State<CallInto<A, F>, F>>);

impl<A, F> Slot<'_, A, F> {
    /// Puts the step's future in its place.
    #[inline]
    pub fn put(mut self, fut: F) {
        self.0.set(State::Run { fut });
    }
}

impl<A, F> fmt::Debug for Slot<'_, A, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Slot")
    }
}

pin_project! {
    /// Where a step is: its future still to make, running, or ended.
    #[project = StateProj]
    #[project_replace = StateTaken]
    pub(crate) enum State<K, F> {
        Make { make: K },
        Run { #[pin] fut: F },
        // Ended, or making or polling it panicked.
        Done,
    }
}

pin_project! {
    /// One step: a span named for the operation with the resource type and label, panic
    /// capture on every poll, the deadline, and the label prepended to the path of every
    /// failure. The step's future is made by `make` at the first poll, inside the same
    /// panic guard as every poll, so a close that panics before it returns a future at
    /// all is caught like any other. Allocates nothing when the step succeeds.
    pub struct Step<K, F, D> {
        #[pin]
        state: State<K, F>,
        #[pin]
        deadline: D,
        op: Operation,
        label: Label,
        // Boxed so that a step without a DEBUG subscriber carries one null pointer and
        // drops nothing: the span is the largest part of a step, and the most costly
        // to move and drop.
        trace: TraceSlot,
    }
}

impl<K: Make<F>, F, D> Step<K, F, D> {
    /// A step; `traced` is the resource type when a subscriber wants DEBUG spans.
    #[inline]
    pub(crate) fn new(
        traced: Option<&'static str>,
        op: Operation,
        label: Label,
        deadline: D,
        make: K,
    ) -> Self {
        let trace = match traced {
            Some(ty) => step_span(ty, op, label),
            None => None,
        };
        Step {
            state: State::Make { make },
            deadline,
            op,
            label,
            trace: TraceSlot(trace),
        }
    }
}

/// A step's trace, whose drop is a check inline and the rest out of line.
struct TraceSlot(Option<Box<Trace>>);

impl Drop for TraceSlot {
    #[inline]
    fn drop(&mut self) {
        if let Some(trace) = self.0.take() {
            drop_trace(trace);
        }
    }
}

#[cold]
#[inline(never)]
fn drop_trace(trace: Box<Trace>) {
    drop(trace);
}

/// The span of a step and when it started, kept only while a subscriber wants them.
struct Trace {
    span: tracing::Span,
    started: tokio::time::Instant,
}

#[cold]
#[inline(never)]
fn step_span(ty: &'static str, op: Operation, label: Label) -> Option<Box<Trace>> {
    let span = match op {
        Operation::Enter => tracing::debug_span!(
            "resource.enter",
            resource = ty,
            path = %label,
            elapsed_us = tracing::field::Empty,
            outcome = tracing::field::Empty,
        ),
        Operation::Close => tracing::debug_span!(
            "resource.close",
            resource = ty,
            path = %label,
            elapsed_us = tracing::field::Empty,
            outcome = tracing::field::Empty,
        ),
    };
    if span.is_disabled() {
        return None;
    }
    Some(Box::new(Trace {
        span,
        started: tokio::time::Instant::now(),
    }))
}

impl<K, F, D> Future for Step<K, F, D>
where
    K: Make<F>,
    F: Future<Output = Result<(), ResourceError>>,
    D: Deadline,
{
    type Output = Result<(), ResourceError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let entered = this.trace.0.as_ref().map(|t| t.span.enter());
        let (mut state, deadline) = (this.state, this.deadline);
        let polled = caught(|| {
            if let StateProj::Make { .. } = state.as_mut().project() {
                // Taken before it runs: a panic in it leaves the step ended.
                if let StateTaken::Make { make } = state.as_mut().project_replace(State::Done) {
                    make.make_into(state.as_mut());
                }
            }
            let StateProj::Run { fut } = state.as_mut().project() else {
                // Polled again after it ended or panicked: it stays failed.
                return Poll::Ready(Err(ResourceError::other("a step polled after it ended")));
            };
            match fut.poll(cx) {
                Poll::Ready(result) => Poll::Ready(with_unenforced(result, deadline.unenforced())),
                Poll::Pending => deadline
                    .poll_expired(cx)
                    .map(|after| Err(ResourceError::timeout(after))),
            }
        });
        let result = match polled {
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(result)) => result,
            Err(payload) => Err(ResourceError::from_panic(payload)),
        };
        // Ended: the future is dropped now, as a plain `.await` would drop it.
        state.set(State::Done);
        drop(entered);
        match (result, this.trace.0.as_deref()) {
            // The common end reads nothing more of the step: the label was written as
            // the step was made, and reading it back at once costs a stalled load.
            (Ok(()), None) => Poll::Ready(Ok(())),
            (result, trace) => Poll::Ready(finish(result, trace, this.label, *this.op)),
        }
    }
}

/// A step's result with the deadline it could not enforce, if any.
#[inline]
fn with_unenforced(
    result: Result<(), ResourceError>,
    unenforced: Option<Duration>,
) -> Result<(), ResourceError> {
    match unenforced {
        None => result,
        Some(after) => {
            let unenforced = ResourceError::unenforced(after);
            match result {
                Ok(()) => Err(unenforced),
                Err(e) => Err(e.combine(unenforced)),
            }
        }
    }
}

/// The end of a step that failed or is traced, the same code for all of them: the
/// span's record, and the label on a failure's path.
#[cold]
#[inline(never)]
fn finish(
    result: Result<(), ResourceError>,
    trace: Option<&Trace>,
    label: &Label,
    op: Operation,
) -> Result<(), ResourceError> {
    if let Some(trace) = trace {
        report(&trace.span, op, trace.started.elapsed(), &result);
    }
    match result {
        Ok(()) => Ok(()),
        Err(e) => Err(e.within(label, op)),
    }
}

/// Records the duration and outcome of a step on its span, and emits one event.
#[cold]
fn report(
    span: &tracing::Span,
    op: Operation,
    elapsed: Duration,
    result: &Result<(), ResourceError>,
) {
    let elapsed_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
    let outcome = match result {
        Ok(()) => "ok",
        Err(e) if e.is_timeout() => "timeout",
        Err(e) if e.is_unenforced_deadline() => "unenforced deadline",
        Err(e) if e.is_panic() => "panic",
        Err(_) => "error",
    };
    span.record("elapsed_us", elapsed_us);
    span.record("outcome", outcome);
    match result {
        Ok(()) => tracing::debug!(parent: span, elapsed_us, outcome, "{op} done"),
        Err(error) => tracing::debug!(parent: span, elapsed_us, outcome, %error, "{op} failed"),
    }
}

/// Whether a subscriber wants the steps' DEBUG spans: one load of tracing's global
/// maximum level, so that a disabled span costs nothing more.
pub(crate) fn tracing_on() -> bool {
    LevelFilter::current() >= LevelFilter::DEBUG
}

/// Turns the result of a user's async function (`close = path`, `before_close = method`)
/// into a step result.
pub(crate) fn user_result<E: Into<BoxError>>(result: Result<(), E>) -> Result<(), ResourceError> {
    result.map_err(|e| {
        let boxed: BoxError = e.into();
        // An error that already is a ResourceError keeps its paths and causes.
        match boxed.downcast::<ResourceError>() {
            Ok(own) => *own,
            Err(other) => ResourceError::other(other),
        }
    })
}

/// How a close bounded by a whole-close deadline ended.
#[derive(Debug)]
pub enum DeadlineOutcome {
    /// Every step finished in time.
    InTime,
    /// The deadline passed and the remaining steps were dropped.
    Expired,
    /// The deadline could not be set (a runtime without timers): every step ran to its
    /// end, and this is why the deadline was not enforced.
    Unbounded(ResourceError),
}

/// Runs `fut` with a deadline of `deadline` from its first poll. On a runtime built
/// without `enable_time` the steps still run, unbounded, and the reason is reported.
pub async fn within_deadline<F: Future<Output = ()>>(
    deadline: Duration,
    fut: F,
) -> DeadlineOutcome {
    within(fut, || try_sleep(deadline), deadline).await
}

/// Runs `fut` until the instant `at`; `deadline` is the duration reported when the
/// timer cannot be made.
#[cfg_attr(
    not(feature = "executor"),
    allow(dead_code, reason = "used by the executor")
)]
pub(crate) async fn within_deadline_at<F: Future<Output = ()>>(
    at: tokio::time::Instant,
    deadline: Duration,
    fut: F,
) -> DeadlineOutcome {
    within(fut, || try_sleep_until(at), deadline).await
}

async fn within<F, T>(fut: F, timer: T, deadline: Duration) -> DeadlineOutcome
where
    F: Future<Output = ()>,
    T: FnOnce() -> Option<tokio::time::Sleep>,
{
    let mut fut = pin!(fut);
    let mut make = Some(timer);
    let mut sleep = pin!(None::<tokio::time::Sleep>);
    let mut unenforced = false;
    poll_fn(|cx| {
        if fut.as_mut().poll(cx).is_ready() {
            return Poll::Ready(if unenforced {
                DeadlineOutcome::Unbounded(ResourceError::unenforced(deadline))
            } else {
                DeadlineOutcome::InTime
            });
        }
        // The timer is made lazily, only when the work did not finish at once.
        if let Some(make) = make.take() {
            match make() {
                Some(timer) => sleep.set(Some(timer)),
                None => unenforced = true,
            }
        }
        if let Some(timer) = sleep.as_mut().as_pin_mut()
            && timer.poll(cx).is_ready()
        {
            return Poll::Ready(DeadlineOutcome::Expired);
        }
        Poll::Pending
    })
    .await
}
