//! What the derive's expansion calls: the close and enter protocol of a derived
//! resource, on top of the step runner. Not public API: names and signatures here
//! change without notice.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

pub use crate::step::{Deadline, DeadlineOutcome, NoDeadline, Step, Timed, within_deadline};

use std::sync::Mutex;
use std::time::Duration;

use tracing::Instrument;

use crate::error::{BoxError, Operation, ResourceError};
use crate::step::{Label, catch_panic, tracing_on};
use crate::sync::{get_mut, lock};

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
    pub fn field<M, F, D>(&mut self, label: &'static str, deadline: D, make: M) -> Step<F, D>
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
        *get_mut(&mut self.group) = GroupState::default();
        Group {
            ty: self.ty,
            trace: self.trace,
            members,
            state: &self.group,
        }
    }

    /// Takes the failures of the finished group, in the order they happened.
    pub fn end_group(&mut self) {
        let state = get_mut(&mut self.group);
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
    #[inline]
    pub fn field<M, F, D>(&self, index: usize, deadline: D, make: M) -> GroupField<'_, F, D>
    where
        M: FnOnce() -> F,
    {
        let label = self.members.get(index).copied().unwrap_or("?");
        let step = Step::new(
            self.trace.then_some(self.ty),
            Operation::Close,
            Label::Static(label),
            deadline,
            make,
        );
        let member = Member {
            state: self.state,
            index,
        };
        Recorded::new(step, member, group_done)
    }
}

/// A member of a group closing: its step, then its outcome recorded in the group.
pub type GroupField<'g, F, D> = Recorded<F, D, Member<'g>, ()>;

/// Where a group member records its end.
#[derive(Debug)]
pub struct Member<'g> {
    state: &'g Mutex<GroupState>,
    index: usize,
}

pin_project_lite::pin_project! {
    /// A step, then its outcome handed to `record` with the context it needs: the one
    /// future of a field's enter, rollback and group member. Generic over the step's
    /// future and deadline (and the few kinds of context), not over the closure that
    /// made the step, so every field of one type shares its compiled code.
    pub struct Recorded<F, D, C, O> {
        #[pin]
        step: Step<F, D>,
        // Taken when the step ends.
        context: Option<C>,
        record: fn(C, Result<(), ResourceError>) -> O,
    }
}

impl<F, D, C, O> Recorded<F, D, C, O> {
    fn new(step: Step<F, D>, context: C, record: fn(C, Result<(), ResourceError>) -> O) -> Self {
        Recorded {
            step,
            context: Some(context),
            record,
        }
    }
}

impl<F, D, C, O> Future for Recorded<F, D, C, O>
where
    F: Future<Output = Result<(), ResourceError>>,
    D: Deadline,
{
    type Output = O;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<O> {
        let this = self.project();
        let outcome = std::task::ready!(this.step.poll(cx));
        match this.context.take() {
            Some(context) => Poll::Ready((this.record)(context, outcome)),
            // Polled again after it ended: the outcome was recorded already.
            None => Poll::Pending,
        }
    }
}

/// Records a group member's end, the same code for every member.
fn group_done(member: Member<'_>, outcome: Result<(), ResourceError>) {
    let mut state = lock(member.state);
    if member.index < 128 {
        state.done |= 1 << member.index;
    }
    if let Err(e) = outcome {
        ResourceError::push(&mut state.error, e);
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
    #[inline]
    pub fn field<M, F>(&mut self, label: &'static str, make: M) -> EnterField<'_, F>
    where
        M: FnOnce() -> F,
    {
        let step = Step::new(
            self.trace.then_some(self.ty),
            Operation::Enter,
            Label::Static(label),
            NoDeadline,
            make,
        );
        Recorded::new(step, self, Enterer::entered)
    }

    fn entered(&mut self, outcome: Result<(), ResourceError>) -> bool {
        match outcome {
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
    #[inline]
    pub fn rollback<M, F, D>(
        &mut self,
        label: &'static str,
        deadline: D,
        make: M,
    ) -> Rollback<'_, F, D>
    where
        M: FnOnce() -> F,
    {
        let step = Step::new(
            self.trace.then_some(self.ty),
            Operation::Close,
            Label::Static(label),
            deadline,
            make,
        );
        Recorded::new(step, self, Enterer::rolled_back)
    }

    fn rolled_back(&mut self, outcome: Result<(), ResourceError>) {
        if let Err(e) = outcome {
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

/// One field entering: its step, then its outcome recorded.
pub type EnterField<'e, F> = Recorded<F, NoDeadline, &'e mut Enterer, bool>;

/// One entered field closing to roll back a failed enter.
pub type Rollback<'e, F, D> = Recorded<F, D, &'e mut Enterer, ()>;
