//! The one step runner every enter and close goes through: the derive's expansion, the
//! blanket impls, and later the stack and scopes. Deadline, panic capture, the tracing
//! span and the path of a failure are decided here and nowhere else, so their semantics
//! cannot drift between callers.

use std::fmt;
use std::future::{Future, poll_fn};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::{Pin, pin};
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tracing::Instrument;
use tracing::level_filters::LevelFilter;

use crate::error::{BoxError, Operation, ResourceError};

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
    let mut fut = pin!(fut);
    poll_fn(
        |cx| match catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(cx))) {
            Ok(poll) => poll,
            Err(payload) => Poll::Ready(Err(ResourceError::from_panic(payload))),
        },
    )
    .await
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
    catch_unwind(|| tokio::time::sleep(after)).ok()
}

/// A timer until `at`, or `None` on a runtime without timers.
#[cfg_attr(
    not(any(feature = "executor", feature = "limiter")),
    allow(dead_code, reason = "used by the executor and the limiter")
)]
pub(crate) fn try_sleep_until(at: tokio::time::Instant) -> Option<tokio::time::Sleep> {
    catch_unwind(|| tokio::time::sleep_until(at)).ok()
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

pin_project! {
    /// One step: a span named for the operation with the resource type and label, panic
    /// capture on every poll, the deadline, and the label prepended to the path of every
    /// failure. The step's future is made by `make` on the first poll, inside the panic
    /// guard, so a close that panics before its first `.await` (or before it returns a
    /// future at all) is caught like any other. Allocates nothing when the step
    /// succeeds.
    pub struct Step<M, F, D> {
        make: Option<M>,
        #[pin]
        fut: Option<F>,
        #[pin]
        deadline: D,
        op: Operation,
        label: Label,
        // Boxed so that a step without a DEBUG subscriber carries one null pointer and
        // drops nothing: the span is the largest part of a step, and the most costly
        // to move and drop.
        trace: Option<Box<Trace>>,
    }
}

impl<M, F, D> Step<M, F, D>
where
    M: FnOnce() -> F,
{
    /// A step; `traced` is the resource type when a subscriber wants DEBUG spans.
    #[inline]
    pub(crate) fn new(
        traced: Option<&'static str>,
        op: Operation,
        label: Label,
        deadline: D,
        make: M,
    ) -> Self {
        let trace = match traced {
            Some(ty) => step_span(ty, op, label),
            None => None,
        };
        Step {
            make: Some(make),
            fut: None,
            deadline,
            op,
            label,
            trace,
        }
    }
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

impl<M, F, D> Future for Step<M, F, D>
where
    M: FnOnce() -> F,
    F: Future<Output = Result<(), ResourceError>>,
    D: Deadline,
{
    type Output = Result<(), ResourceError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let entered = this.trace.as_ref().map(|t| t.span.enter());
        let (make, mut fut, deadline) = (this.make, this.fut, this.deadline);
        let polled = catch_unwind(AssertUnwindSafe(|| {
            if let Some(make) = make.take() {
                fut.set(Some(make()));
            }
            let Some(running) = fut.as_mut().as_pin_mut() else {
                // Polled again after it panicked: it stays failed.
                return Poll::Ready(Err(ResourceError::other("a step polled after it failed")));
            };
            match running.poll(cx) {
                Poll::Ready(result) => Poll::Ready(match deadline.unenforced() {
                    None => result,
                    Some(after) => {
                        let unenforced = ResourceError::unenforced(after);
                        match result {
                            Ok(()) => Err(unenforced),
                            Err(e) => Err(e.combine(unenforced)),
                        }
                    }
                }),
                Poll::Pending => deadline
                    .poll_expired(cx)
                    .map(|after| Err(ResourceError::timeout(after))),
            }
        }));
        let result = match polled {
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(result)) => result,
            Err(payload) => Err(ResourceError::from_panic(payload)),
        };
        drop(entered);
        if let Some(trace) = this.trace.as_ref() {
            report(&trace.span, *this.op, trace.started.elapsed(), &result);
        }
        let (label, op) = (*this.label, *this.op);
        Poll::Ready(result.map_err(|e| e.within(&label, op)))
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

/// Collects the failures of a close, step by step, and knows which fields are still to
/// be closed, so that a whole-close deadline can name every field it cut or never
/// reached.
#[derive(Debug)]
pub struct Closer {
    ty: &'static str,
    /// Whether steps build spans: decided once for the whole close.
    trace: bool,
    /// Field labels in close order, a group's members side by side.
    plan: &'static [&'static str],
    /// Index in `plan` of the next field to start.
    next: usize,
    current: Current,
    error: Option<ResourceError>,
    /// What the members of a running [`Group`] report as they finish, concurrently.
    group: Mutex<GroupState>,
}

#[derive(Debug, Default)]
struct GroupState {
    error: Option<ResourceError>,
    /// Bit `i` is set once member `i` has finished.
    done: u128,
}

/// The step in progress.
#[derive(Debug, Default, Clone, Copy)]
enum Current {
    #[default]
    Idle,
    Hook(&'static str),
    Field(&'static str),
    Group(&'static [&'static str]),
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding it cannot leave the state half-written: each update is one
    // assignment or one push.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether a subscriber wants the steps' DEBUG spans: one load of tracing's global
/// maximum level, so that a disabled span costs nothing more.
pub(crate) fn tracing_on() -> bool {
    LevelFilter::current() >= LevelFilter::DEBUG
}

impl Closer {
    /// A collector for closing a value of type `ty`.
    pub fn new(ty: &'static str) -> Self {
        Closer {
            ty,
            trace: tracing_on(),
            plan: &[],
            next: 0,
            current: Current::Idle,
            error: None,
            group: Mutex::new(GroupState::default()),
        }
    }

    /// Declares the fields this close will close, in order.
    pub fn plan(&mut self, plan: &'static [&'static str]) {
        self.plan = plan;
        self.next = 0;
    }

    /// Starts closing one field: `make` makes its close future, `deadline` is its own. The
    /// expansion awaits the step and hands its outcome to [`record`](Self::record).
    #[inline]
    pub fn field<M, F, D>(&mut self, label: &'static str, deadline: D, make: M) -> Step<M, F, D>
    where
        M: FnOnce() -> F,
    {
        self.next += 1;
        self.current = Current::Field(label);
        Step::new(
            self.trace.then_some(self.ty),
            Operation::Close,
            Label::Static(label),
            deadline,
            make,
        )
    }

    /// Keeps the failure of a finished step.
    #[inline]
    pub fn record(&mut self, outcome: Result<(), ResourceError>) {
        if let Err(e) = outcome {
            ResourceError::push(&mut self.error, e);
        }
    }

    /// Runs a hook of the resource itself (`before_close`).
    pub async fn hook<M, F>(&mut self, name: &'static str, make: M)
    where
        M: FnOnce() -> F,
        F: Future<Output = Result<(), ResourceError>>,
    {
        self.current = Current::Hook(name);
        let outcome = run_hook(self.ty, Operation::Close, name, make).await;
        self.record(outcome);
    }

    /// Starts a step of fields that close concurrently; `members` are their labels, and
    /// each is closed with [`Group::field`] and its index in `members`. The expansion
    /// calls [`end_group`](Self::end_group) once they have all finished.
    pub fn group(&mut self, members: &'static [&'static str]) -> Group<'_> {
        self.next += members.len();
        self.current = Current::Group(members);
        *self.group.get_mut().unwrap_or_else(|p| p.into_inner()) = GroupState::default();
        Group {
            ty: self.ty,
            trace: self.trace,
            members,
            state: &self.group,
        }
    }

    /// Takes the failures of the finished group, in the order they happened.
    pub fn end_group(&mut self) {
        let state = self.group.get_mut().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = state.error.take() {
            ResourceError::push(&mut self.error, e);
        }
    }

    /// Records that the deadline of the whole close passed: the step in progress timed
    /// out (every unfinished member, for a group), and the fields after it were not
    /// closed.
    pub fn deadline_passed(&mut self, deadline: Duration) {
        let unreached = self.plan.get(self.next..).unwrap_or(&[]);
        let timeout =
            |label: &'static str| ResourceError::timeout(deadline).within(&label, Operation::Close);
        let mut cut = Vec::new();
        match self.current {
            Current::Idle => {}
            Current::Hook(name) => {
                cut.push(ResourceError::timeout(deadline).in_hook(name, Operation::Close));
            }
            Current::Field(label) => cut.push(timeout(label)),
            Current::Group(members) => {
                // The members that finished before the deadline have reported already.
                self.end_group();
                let done = lock(&self.group).done;
                for (i, label) in members.iter().enumerate() {
                    if i >= 128 || done & (1 << i) == 0 {
                        cut.push(timeout(label));
                    }
                }
            }
        }
        cut.extend(
            unreached
                .iter()
                .map(|label| ResourceError::not_reached(deadline).within(label, Operation::Close)),
        );
        if cut.is_empty() {
            cut.push(ResourceError::timeout(deadline).in_hook("close deadline", Operation::Close));
        }
        for e in cut {
            ResourceError::push(&mut self.error, e);
        }
    }

    /// Records how a close bounded by a whole-close deadline ended.
    pub fn deadline_outcome(&mut self, deadline: Duration, outcome: DeadlineOutcome) {
        match outcome {
            DeadlineOutcome::InTime => {}
            DeadlineOutcome::Expired => self.deadline_passed(deadline),
            DeadlineOutcome::Unbounded(e) => {
                let e = e.in_hook("close deadline", Operation::Close);
                self.record(Err(e));
            }
        }
    }

    /// The outcome of the whole close.
    pub fn finish(self) -> Result<(), ResourceError> {
        match self.error {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }
}

/// The fields of one concurrent close step; each records its outcome in the closer as
/// it finishes, so a deadline that cuts the group loses none of them.
#[derive(Debug)]
pub struct Group<'c> {
    ty: &'static str,
    trace: bool,
    members: &'static [&'static str],
    state: &'c Mutex<GroupState>,
}

impl Group<'_> {
    /// Closes the member at `index` of the group.
    pub async fn field<M, F, D>(&self, index: usize, deadline: D, make: M)
    where
        M: FnOnce() -> F,
        F: Future<Output = Result<(), ResourceError>>,
        D: Deadline,
    {
        let label = self.members.get(index).copied().unwrap_or("?");
        let step = Step::new(
            self.trace.then_some(self.ty),
            Operation::Close,
            Label::Static(label),
            deadline,
            make,
        );
        let outcome = step.await;
        let mut state = lock(self.state);
        if index < 128 {
            state.done |= 1 << index;
        }
        if let Err(e) = outcome {
            ResourceError::push(&mut state.error, e);
        }
    }
}

async fn run_hook<M, F>(
    ty: &'static str,
    op: Operation,
    name: &'static str,
    make: M,
) -> Result<(), ResourceError>
where
    M: FnOnce() -> F,
    F: Future<Output = Result<(), ResourceError>>,
{
    let span = tracing::debug_span!("resource.hook", resource = ty, hook = name);
    // The hook's future is made inside the panic guard, like a field's.
    catch_panic(async move { make().await })
        .instrument(span)
        .await
        .map_err(|e| e.in_hook(name, op))
}

/// Collects the outcome of an enter: how many fields are entered, and the failure and
/// rollback failures if one failed.
#[derive(Debug)]
pub struct Enterer {
    ty: &'static str,
    trace: bool,
    entered: usize,
    /// The field that failed panicked: it is closed with the entered ones.
    failed_panicked: bool,
    error: Option<ResourceError>,
}

impl Enterer {
    /// A collector for entering a value of type `ty`.
    pub fn new(ty: &'static str) -> Self {
        Enterer {
            ty,
            trace: tracing_on(),
            entered: 0,
            failed_panicked: false,
            error: None,
        }
    }

    /// Enters one field; `false` when it failed and entering must stop.
    pub async fn field<M, F>(&mut self, label: &'static str, make: M) -> bool
    where
        M: FnOnce() -> F,
        F: Future<Output = Result<(), ResourceError>>,
    {
        let step = Step::new(
            self.trace.then_some(self.ty),
            Operation::Enter,
            Label::Static(label),
            NoDeadline,
            make,
        );
        match step.await {
            Ok(()) => {
                self.entered += 1;
                true
            }
            Err(e) => {
                self.failed_panicked = e.is_panic();
                ResourceError::push(&mut self.error, e);
                false
            }
        }
    }

    /// Counts a field that has nothing to enter (it only has a close).
    pub fn pass(&mut self) -> bool {
        self.entered += 1;
        true
    }

    /// Runs a hook of the resource itself (`after_enter`) once every field is entered.
    pub async fn hook<M, F>(&mut self, name: &'static str, make: M)
    where
        M: FnOnce() -> F,
        F: Future<Output = Result<(), ResourceError>>,
    {
        if let Err(e) = run_hook(self.ty, Operation::Enter, name, make).await {
            ResourceError::push(&mut self.error, e);
        }
    }

    /// Whether the enter failed and the entered fields must be closed.
    pub fn failed(&self) -> bool {
        self.error.is_some()
    }

    /// Whether the field at `index` (counting resource fields in declaration order)
    /// needs a rollback close: it was entered before the failure, or it is the field
    /// whose enter panicked (see the enter rule on [`AsyncResource`](crate::AsyncResource)).
    pub fn needs_rollback(&self, index: usize) -> bool {
        self.error.is_some()
            && (index < self.entered || (self.failed_panicked && index == self.entered))
    }

    /// Closes one entered field to roll back the failed enter.
    pub async fn rollback<M, F, D>(&mut self, label: &'static str, deadline: D, make: M)
    where
        M: FnOnce() -> F,
        F: Future<Output = Result<(), ResourceError>>,
        D: Deadline,
    {
        let step = Step::new(
            self.trace.then_some(self.ty),
            Operation::Close,
            Label::Static(label),
            deadline,
            make,
        );
        if let Err(e) = step.await {
            ResourceError::push(&mut self.error, e.in_rollback());
        }
    }

    /// The outcome of the whole enter.
    pub fn finish(self) -> Result<(), ResourceError> {
        match self.error {
            None => Ok(()),
            Some(e) => Err(e),
        }
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
            move || item.close(),
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
            move || item.enter(),
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
