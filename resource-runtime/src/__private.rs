//! What the derive's expansion calls: the close and enter protocol of a derived
//! resource, on top of the step runner. Not public API: names and signatures here
//! change without notice.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

pub use crate::step::{Deadline, DeadlineOutcome, NoDeadline, Timed, within_deadline};

use std::sync::Mutex;
use std::time::Duration;

use tracing::Instrument;

use crate::AsyncResource;
use crate::error::{BoxError, Operation, ResourceError};
pub use crate::step::Slot;
use crate::step::{Call, CallInto, Label, Make, Step, catch_panic, tracing_on};
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

/// The boxed close of a field whose type contains the type being closed: one function
/// a field type, like [`Resource::close`] itself.
fn close_boxed<'f, R: Resource + 'f>(
    field: R,
) -> Pin<Box<dyn Future<Output = Result<(), ResourceError>> + Send + 'f>> {
    boxed(field.close())
}

/// The boxed enter of such a field.
fn enter_boxed<'f, R: Resource + 'f>(
    field: R,
) -> Pin<Box<dyn Future<Output = Result<(), ResourceError>> + Send + 'f>> {
    boxed(field.enter())
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

/// A resource field as the step helpers see it: its enter and close. The expansion
/// passes every field through [`resource`], whose bound is where a field type that is
/// not an `AsyncResource` is reported, once; the helpers, generic over this trait,
/// add no error of their own.
pub trait Resource: Send {
    /// The field's enter.
    fn enter(self) -> impl Future<Output = Result<(), ResourceError>> + Send;
    /// The field's close.
    fn close(self) -> impl Future<Output = Result<(), ResourceError>> + Send;
}

/// A resource field for a step helper (see [`Resource`]): one type per field type, so
/// that the fields of one type, in any number of structs, share every instantiation of
/// the helpers.
#[inline]
pub fn resource<T: AsyncResource>(field: &mut T) -> impl Resource {
    FieldRef(field)
}

struct FieldRef<'a, T>(&'a mut T);

impl<T: AsyncResource> Resource for FieldRef<'_, T> {
    #[inline]
    fn enter(self) -> impl Future<Output = Result<(), ResourceError>> + Send {
        AsyncResource::enter(self.0)
    }

    #[inline]
    fn close(self) -> impl Future<Output = Result<(), ResourceError>> + Send {
        AsyncResource::close(self.0)
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
    /// Where a close under a whole-close deadline is: kept only by such a close, the
    /// one that reads it, so that every other close carries one null pointer.
    progress: Option<Box<Progress>>,
    error: Option<ResourceError>,
    /// What the members of a running [`Group`] report as they finish, concurrently:
    /// made by the first group.
    group: Option<Box<Mutex<GroupState>>>,
}

/// How far a close under a whole-close deadline has got.
#[derive(Debug)]
struct Progress {
    /// Field labels in close order, a group's members side by side.
    plan: &'static [&'static str],
    /// Index in `plan` of the next field to start.
    next: usize,
    current: Current,
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
            progress: None,
            error: None,
            group: None,
        }
    }

    /// Notes the step that starts, under a whole-close deadline: it is `current`, and
    /// `started` more fields of the plan have started.
    #[inline]
    fn starts(&mut self, started: usize, current: Current) {
        if let Some(progress) = &mut self.progress {
            progress.next += started;
            progress.current = current;
        }
    }

    /// Declares the fields this close will close, in order: the expansion calls it
    /// only under a whole-close deadline, which names the fields it never reached.
    pub fn plan(&mut self, plan: &'static [&'static str]) {
        self.progress = Some(Box::new(Progress {
            plan,
            next: 0,
            current: Current::Idle,
        }));
    }

    /// Starts the step of one field; its outcome is kept when it ends.
    #[inline]
    fn start<K: Make<F>, F, D>(
        &mut self,
        label: &'static str,
        deadline: D,
        make: K,
    ) -> Recorded<K, F, D, Closing<'_>> {
        self.starts(1, Current::Field(label));
        let step = Step::new(
            self.trace.then_some(self.ty),
            Operation::Close,
            Label::Static(label),
            deadline,
            make,
        );
        Recorded::new(step, Closing(self))
    }

    /// Closes one field through its own close, within its `deadline` if it has one,
    /// and keeps its failure; the close future is made inside the step's panic guard.
    /// Generic over the field's type alone: every field of one type, in any number of
    /// structs, shares this code.
    #[inline]
    pub fn field<R: Resource, D: Deadline>(
        &mut self,
        label: &'static str,
        deadline: D,
        field: R,
    ) -> impl Future<Output = ()> {
        self.start(label, deadline, Call(R::close, field))
    }

    /// [`field`](Self::field) for a field whose type contains the type being closed:
    /// its close future is boxed, so that the enclosing future does not contain itself.
    #[inline]
    pub fn field_boxed<'f, R: Resource + 'f, D: Deadline>(
        &mut self,
        label: &'static str,
        deadline: D,
        field: R,
    ) -> impl Future<Output = ()> {
        self.start(label, deadline, Call(close_boxed::<'f, R>, field))
    }

    /// Closes one field with a user's close function: `make` applied to the field
    /// makes the future and puts it in the step's [`Slot`]. A function pointer (the
    /// expansion's closure takes no capture), so that every field of one type closed
    /// by one function, in any number of structs, shares this code, as
    /// [`field`](Self::field) does.
    #[inline]
    pub fn field_fn<A, F, D>(
        &mut self,
        label: &'static str,
        deadline: D,
        make: for<'s> fn(A, Slot<'s, A, F>),
        field: A,
    ) -> impl Future<Output = ()>
    where
        F: Future<Output = Result<(), ResourceError>>,
        D: Deadline,
    {
        self.start(label, deadline, CallInto(make, field))
    }

    /// Keeps the failure of a finished step.
    #[inline]
    fn record(&mut self, outcome: Result<(), ResourceError>) {
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
        self.starts(0, Current::Hook(name));
        let outcome = run_hook(self.ty, Operation::Close, name, make).await;
        self.record(outcome);
    }

    /// Starts a step of fields that close concurrently; `members` are their labels, and
    /// each is closed with [`Group::field`] and its index in `members`, the futures
    /// awaited together by [`join`]. The expansion calls [`end_group`](Self::end_group)
    /// once they have all finished.
    pub fn group(&mut self, members: &'static [&'static str]) -> Group<'_> {
        self.starts(members.len(), Current::Group(members));
        let state = self.group.get_or_insert_default();
        *get_mut(state) = GroupState::default();
        Group {
            ty: self.ty,
            trace: self.trace,
            members,
            state,
        }
    }

    /// Takes the failures of the finished group, in the order they happened.
    pub fn end_group(&mut self) {
        let Some(state) = &mut self.group else {
            return;
        };
        if let Some(e) = get_mut(state).error.take() {
            ResourceError::push(&mut self.error, e);
        }
    }

    /// Records that the deadline of the whole close passed: the step in progress timed
    /// out (every unfinished member, for a group), and the fields after it were not
    /// closed.
    pub fn deadline_passed(&mut self, deadline: Duration) {
        // Without a plan the closer kept no track: nothing to name but the deadline.
        let (unreached, current) = match &self.progress {
            Some(p) => (p.plan.get(p.next..).unwrap_or(&[]), p.current),
            None => (&[][..], Current::Idle),
        };
        let timeout =
            |label: &'static str| ResourceError::timeout(deadline).within(&label, Operation::Close);
        let mut cut = Vec::new();
        match current {
            Current::Idle => {}
            Current::Hook(name) => {
                cut.push(ResourceError::timeout(deadline).in_hook(name, Operation::Close));
            }
            Current::Field(label) => cut.push(timeout(label)),
            Current::Group(members) => {
                // The members that finished before the deadline have reported already.
                self.end_group();
                let done = self.group.as_deref().map_or(0, |state| lock(state).done);
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

impl<'c> Group<'c> {
    /// Starts the step of the member at `index` of the group.
    #[inline]
    fn start<K: Make<F>, F, D>(
        &self,
        index: usize,
        deadline: D,
        make: K,
    ) -> Recorded<K, F, D, Member<'c>> {
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
        Recorded::new(step, member)
    }

    /// Closes the member at `index` of the group through its own close: like
    /// [`Closer::field`], generic over the field's type alone.
    #[inline]
    pub fn field<R: Resource, D: Deadline>(
        &self,
        index: usize,
        deadline: D,
        field: R,
    ) -> impl Future<Output = ()> + use<'c, R, D> {
        self.start(index, deadline, Call(R::close, field))
    }

    /// [`field`](Self::field) with the close future boxed (see [`Closer::field_boxed`]).
    #[inline]
    pub fn field_boxed<'f, R: Resource + 'f, D: Deadline>(
        &self,
        index: usize,
        deadline: D,
        field: R,
    ) -> impl Future<Output = ()> + use<'c, 'f, R, D> {
        self.start(index, deadline, Call(close_boxed::<'f, R>, field))
    }

    /// Closes the member at `index` with a user's close function (see
    /// [`Closer::field_fn`]).
    #[inline]
    pub fn field_fn<A, F, D>(
        &self,
        index: usize,
        deadline: D,
        make: for<'s> fn(A, Slot<'s, A, F>),
        field: A,
    ) -> impl Future<Output = ()> + use<'c, A, F, D>
    where
        F: Future<Output = Result<(), ResourceError>>,
        D: Deadline,
    {
        self.start(index, deadline, CallInto(make, field))
    }
}

/// Awaits the futures of a group's members concurrently: every poll polls the
/// unfinished ones, starting one further along each time so that none is always
/// polled last. One function for every group of every type; a group has at most 128
/// members.
pub fn join<'a, 'f>(
    members: &'a mut [Pin<&'f mut (dyn Future<Output = ()> + Send + 'f)>],
) -> Join<'a, 'f> {
    Join {
        members,
        done: 0,
        first: 0,
    }
}

/// The future of [`join`].
pub struct Join<'a, 'f> {
    members: &'a mut [Pin<&'f mut (dyn Future<Output = ()> + Send + 'f)>],
    /// Bit `i` is set once member `i` has finished.
    done: u128,
    /// The member the next poll starts with.
    first: usize,
}

impl std::fmt::Debug for Join<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Join")
            .field("members", &self.members.len())
            .field("done", &self.done)
            .finish()
    }
}

impl Future for Join<'_, '_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        let count = this.members.len().min(128);
        let mut pending = false;
        for at in this.first..this.first + count {
            let at = at % count;
            let bit = 1u128 << at;
            if this.done & bit == 0 {
                if this.members[at].as_mut().poll(cx).is_ready() {
                    this.done |= bit;
                } else {
                    pending = true;
                }
            }
        }
        if pending {
            this.first = (this.first + 1) % count;
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    }
}

/// Where a group member records its end.
#[derive(Debug)]
struct Member<'g> {
    state: &'g Mutex<GroupState>,
    index: usize,
}

/// What a field's step hands its outcome to when it ends.
trait Record {
    type Output;
    fn record(&mut self, outcome: Result<(), ResourceError>) -> Self::Output;
}

/// A field of a close: its failure is kept.
struct Closing<'c>(&'c mut Closer);

impl Record for Closing<'_> {
    type Output = ();

    #[inline]
    fn record(&mut self, outcome: Result<(), ResourceError>) {
        self.0.record(outcome);
    }
}

impl Record for Member<'_> {
    type Output = ();

    /// Records a group member's end, the same code for every member.
    fn record(&mut self, outcome: Result<(), ResourceError>) {
        let mut state = lock(self.state);
        if self.index < 128 {
            state.done |= 1 << self.index;
        }
        if let Err(e) = outcome {
            ResourceError::push(&mut state.error, e);
        }
    }
}

/// A field entering: counted, or the failure kept; `false` when entering must stop.
struct Entering<'e>(&'e mut Enterer);

impl Record for Entering<'_> {
    type Output = bool;

    #[inline]
    fn record(&mut self, outcome: Result<(), ResourceError>) -> bool {
        self.0.entered(outcome)
    }
}

/// An entered field closing to roll back a failed enter: its failure kept as a
/// rollback failure.
struct RollingBack<'e>(&'e mut Enterer);

impl Record for RollingBack<'_> {
    type Output = ();

    #[inline]
    fn record(&mut self, outcome: Result<(), ResourceError>) {
        if let Err(e) = outcome {
            ResourceError::push(&mut self.0.error, e.in_rollback());
        }
    }
}

pin_project_lite::pin_project! {
    /// A step, then its outcome handed to its context: the one future of a field's
    /// enter, close, rollback and group member. A field's own enter and close are made
    /// by `Call(R::enter, field)` and `Call(R::close, field)`, so the step is generic
    /// over the field's type, its deadline and the few kinds of context alone: every
    /// field of one type shares its compiled code, in any number of structs.
    struct Recorded<K, F, D, C> {
        #[pin]
        step: Step<K, F, D>,
        context: C,
    }
}

impl<K, F, D, C> Recorded<K, F, D, C> {
    #[inline]
    fn new(step: Step<K, F, D>, context: C) -> Self {
        Recorded { step, context }
    }
}

impl<K, F, D, C> Future for Recorded<K, F, D, C>
where
    K: Make<F>,
    F: Future<Output = Result<(), ResourceError>>,
    D: Deadline,
    C: Record,
{
    type Output = C::Output;

    /// Polled again after it ended (which `.await` and [`join`] never do), the step
    /// answers that it had ended, and that is recorded as a failure.
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        let this = self.project();
        let outcome = std::task::ready!(this.step.poll(cx));
        Poll::Ready(this.context.record(outcome))
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

    /// Starts the enter step of one field.
    #[inline]
    fn start<K: Make<F>, F>(
        &mut self,
        label: &'static str,
        make: K,
    ) -> Recorded<K, F, NoDeadline, Entering<'_>> {
        let step = Step::new(
            self.trace.then_some(self.ty),
            Operation::Enter,
            Label::Static(label),
            NoDeadline,
            make,
        );
        Recorded::new(step, Entering(self))
    }

    /// Enters one field through its own enter; `false` when it failed and entering
    /// must stop. Generic over the field's type alone.
    #[inline]
    pub fn field<R: Resource>(
        &mut self,
        label: &'static str,
        field: R,
    ) -> impl Future<Output = bool> {
        self.start(label, Call(R::enter, field))
    }

    /// [`field`](Self::field) with the enter future boxed (see
    /// [`Closer::field_boxed`]).
    #[inline]
    pub fn field_boxed<'f, R: Resource + 'f>(
        &mut self,
        label: &'static str,
        field: R,
    ) -> impl Future<Output = bool> {
        self.start(label, Call(enter_boxed::<'f, R>, field))
    }

    /// Enters one field with a user's enter function (see [`Closer::field_fn`]).
    #[inline]
    pub fn field_fn<A, F>(
        &mut self,
        label: &'static str,
        make: for<'s> fn(A, Slot<'s, A, F>),
        field: A,
    ) -> impl Future<Output = bool>
    where
        F: Future<Output = Result<(), ResourceError>>,
    {
        self.start(label, CallInto(make, field))
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
    /// whose enter panicked (see the enter rule on [`AsyncResource`]).
    pub fn needs_rollback(&self, index: usize) -> bool {
        self.error.is_some()
            && (index < self.entered || (self.failed_panicked && index == self.entered))
    }

    /// Starts the rollback close of one entered field.
    #[inline]
    fn start_rollback<K: Make<F>, F, D>(
        &mut self,
        label: &'static str,
        deadline: D,
        make: K,
    ) -> Recorded<K, F, D, RollingBack<'_>> {
        let step = Step::new(
            self.trace.then_some(self.ty),
            Operation::Close,
            Label::Static(label),
            deadline,
            make,
        );
        Recorded::new(step, RollingBack(self))
    }

    /// Closes one entered field through its own close to roll back the failed enter.
    #[inline]
    pub fn rollback<R: Resource, D: Deadline>(
        &mut self,
        label: &'static str,
        deadline: D,
        field: R,
    ) -> impl Future<Output = ()> {
        self.start_rollback(label, deadline, Call(R::close, field))
    }

    /// [`rollback`](Self::rollback) with the close future boxed (see
    /// [`Closer::field_boxed`]).
    #[inline]
    pub fn rollback_boxed<'f, R: Resource + 'f, D: Deadline>(
        &mut self,
        label: &'static str,
        deadline: D,
        field: R,
    ) -> impl Future<Output = ()> {
        self.start_rollback(label, deadline, Call(close_boxed::<'f, R>, field))
    }

    /// Rolls back one entered field with a user's close function (see
    /// [`Closer::field_fn`]).
    #[inline]
    pub fn rollback_fn<A, F, D>(
        &mut self,
        label: &'static str,
        deadline: D,
        make: for<'s> fn(A, Slot<'s, A, F>),
        field: A,
    ) -> impl Future<Output = ()>
    where
        F: Future<Output = Result<(), ResourceError>>,
        D: Deadline,
    {
        self.start_rollback(label, deadline, CallInto(make, field))
    }

    /// The outcome of the whole enter.
    pub fn finish(self) -> Result<(), ResourceError> {
        match self.error {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }
}
