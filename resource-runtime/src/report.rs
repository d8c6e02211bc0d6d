//! The close report: every enter and close step, in the order the steps finished, with
//! the type and field of each, how long it took and how it ended.
//!
//! Every step the derive, the blanket impls and [`ResourceStack`](crate::ResourceStack)
//! run is traced: a DEBUG span named `resource.enter` or `resource.close` (fields
//! `resource`, `path`, and once the step is over `elapsed_us` and `outcome`), and an
//! event when the step ends. A [`CloseRecorder`] turns those into a [`CloseReport`]: a
//! list of [`CloseStep`]s with typed fields, and a `Display` that prints them as a
//! table.
//!
//! # Installing it
//!
//! [`CloseRecorder::layer`] is a [`tracing_subscriber::Layer`] with a per-layer filter
//! of its own ([`StepFilter`]): it sees the library's steps at DEBUG, and nothing else.
//! Add it to a [`Registry`](tracing_subscriber::Registry) next to your own layers, each
//! with its own filter, for example a `fmt` layer at INFO:
//!
//! ```text
//! let recorder = CloseRecorder::new();
//! tracing_subscriber::registry()
//!     .with(tracing_subscriber::fmt::layer().with_filter(LevelFilter::INFO))
//!     .with(recorder.layer())
//!     .init();
//! ```
//!
//! The steps only build their spans while the subscriber's maximum level is DEBUG or
//! more. The recorder's filter tells the subscriber so; the `fmt` layer above still
//! prints INFO and up, and no other crate's DEBUG callsite is enabled for it. A filter
//! on the *whole* subscriber (a `LevelFilter` or `EnvFilter` added with `.with(...)`
//! rather than `.with_filter(...)`, or `fmt().with_max_level(...)`) turns the steps off
//! for every layer, this one included: give such a filter to the layers it is meant
//! for, or let it pass `resource_runtime=debug`.
//!
//! The recorder is also a plain `Layer` itself (unfiltered), for a subscriber that holds
//! it alone or with layers that have no per-layer filter.
//!
//! # Reading it
//!
//! [`CloseRecorder::take`] returns the steps recorded so far and starts afresh;
//! [`CloseRecorder::snapshot`] copies them. The recorder keeps the steps of every
//! close the subscriber sees (all tasks, all resources), up to a limit (see
//! [`CloseRecorder::with_limit`]).
//!
//! ```
//! use resource_runtime::{AsyncResource, Operation};
//! use resource_runtime::report::{CloseRecorder, StepOutcome};
//! use tokio_util::sync::CancellationToken;
//! use tracing_subscriber::layer::SubscriberExt;
//!
//! #[derive(AsyncResource)]
//! struct Worker {
//!     #[resource]
//!     stop: CancellationToken,
//!     #[resource(timeout = "1s")]
//!     jobs: Vec<CancellationToken>,
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let recorder = CloseRecorder::new();
//! let subscriber = tracing_subscriber::registry().with(recorder.layer());
//! let _guard = tracing::subscriber::set_default(subscriber);
//!
//! let mut worker = Worker {
//!     stop: CancellationToken::new(),
//!     jobs: vec![CancellationToken::new(), CancellationToken::new()],
//! };
//! worker.close().await?;
//!
//! let report = recorder.take();
//! println!("{report}");
//! //     #   step   type                 field            took  outcome
//! //     1   close  Vec                  jobs.1           3 µs  ok
//! //     2   close  Vec                  jobs.0           1 µs  ok
//! //     3   close  Worker               jobs            25 µs  ok
//! //     4   close  Worker               stop             2 µs  ok
//!
//! // Fields close in reverse declaration order; a `Vec`'s elements last to first.
//! let closed: Vec<(&str, &str)> = report
//!     .iter()
//!     .map(|step| (step.resource.as_str(), step.path.as_str()))
//!     .collect();
//! assert_eq!(
//!     closed,
//!     [("Vec", "jobs.1"), ("Vec", "jobs.0"), ("Worker", "jobs"), ("Worker", "stop")]
//! );
//! assert!(report.iter().all(|step| step.operation == Operation::Close));
//! assert!(report.iter().all(|step| step.outcome == StepOutcome::Ok));
//! assert_eq!(report.failures().count(), 0);
//! # Ok(())
//! # }
//! ```

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::filter::{Filtered, LevelFilter};
use tracing_subscriber::layer::{Context, Filter, Layer};
use tracing_subscriber::registry::LookupSpan;

use crate::Operation;

/// The span names of the steps, and of the spans that frame them.
const ENTER: &str = "resource.enter";
const CLOSE: &str = "resource.close";
const DETACHED: &str = "resource.detached_close";

/// The most steps a recorder keeps by default.
const DEFAULT_LIMIT: usize = 10_000;

/// How one step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StepOutcome {
    /// It finished without a failure.
    Ok,
    /// It returned an error ([`CloseStep::error`] says which).
    Error,
    /// It ran past its deadline and was dropped.
    Timeout,
    /// It panicked; the panic was caught.
    Panic,
    /// Its deadline could not be enforced (the tokio runtime has no timer): it ran to
    /// its end, unbounded. A step that reports this among its failures, with the
    /// outcome `error`, is an [`Error`](Self::Error) whose error gives the reason.
    UnenforcedDeadline,
    /// It never finished: it was dropped half-way, because a deadline of the close it
    /// was part of passed, or because the future running it was dropped.
    Dropped,
}

impl StepOutcome {
    /// Whether the step finished without a failure.
    pub fn is_ok(self) -> bool {
        self == StepOutcome::Ok
    }

    /// The outcome a step reports in its `outcome` field.
    fn from_field(outcome: &str) -> Self {
        match outcome {
            "ok" => StepOutcome::Ok,
            "timeout" => StepOutcome::Timeout,
            "panic" => StepOutcome::Panic,
            unenforced if unenforced.starts_with("unenforced") => StepOutcome::UnenforcedDeadline,
            _ => StepOutcome::Error,
        }
    }
}

impl fmt::Display for StepOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StepOutcome::Ok => "ok",
            StepOutcome::Error => "error",
            StepOutcome::Timeout => "timeout",
            StepOutcome::Panic => "panic",
            StepOutcome::UnenforcedDeadline => "unenforced deadline",
            StepOutcome::Dropped => "dropped",
        })
    }
}

/// One step: a field of a resource entered or closed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CloseStep {
    /// Enter, or close (a close that rolls back a failed enter is a close too).
    pub operation: Operation,
    /// The type whose field this is: `"Provider"` for a derived struct, `"Vec"` for an
    /// element of a `Vec`, `"ResourceStack"` for an entry of a stack.
    pub resource: String,
    /// The field's label: its name (or `name = "..."`), a tuple index, or an element's
    /// position.
    pub field: String,
    /// The labels of the steps this one ran inside, outermost first, and its own,
    /// joined by dots: `"jobs.limiter"` for the `limiter` of the field `jobs`.
    pub path: String,
    /// How long the step took, from its start to its end (to the moment it was dropped,
    /// for a step that never finished).
    pub elapsed: Duration,
    /// How it ended.
    pub outcome: StepOutcome,
    /// The step's error, as the step reported it (one line per failure after the
    /// first), when it failed.
    pub error: Option<String>,
    /// Whether the step ran in a close left to the background (a dropped
    /// [`Managed`](crate::Managed), a cancelled [`scope`](crate::scope())).
    pub detached: bool,
}

impl CloseStep {
    /// The outcome column of the table: the outcome, then the first line of the error.
    fn outcome_text(&self) -> String {
        let mut text = self.outcome.to_string();
        if !self.outcome.is_ok()
            && let Some(error) = &self.error
        {
            let first = error.lines().next().unwrap_or_default().trim_end();
            let first = first.strip_suffix(':').unwrap_or(first);
            if !first.is_empty() {
                text.push_str(": ");
                text.push_str(first);
            }
        }
        if self.detached {
            text.push_str(" (detached)");
        }
        text
    }

    fn write_row(&self, f: &mut fmt::Formatter<'_>, widths: Widths) -> fmt::Result {
        write!(
            f,
            "{:<6} {:<tw$} {:<fw$} {:>10}  {}",
            self.operation.to_string(),
            self.resource,
            self.path,
            took(self.elapsed),
            self.outcome_text(),
            tw = widths.resource,
            fw = widths.path,
        )
    }
}

/// One row of the table, without its number: operation, type, field path, time,
/// outcome (with the first line of the error when the step failed).
impl fmt::Display for CloseStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_row(f, Widths::MIN)
    }
}

/// The widths of the type and field columns.
#[derive(Clone, Copy)]
struct Widths {
    resource: usize,
    path: usize,
}

impl Widths {
    const MIN: Widths = Widths {
        resource: 20,
        path: 10,
    };
}

/// A duration as the table shows it: µs below a millisecond, ms below a second, then s.
fn took(elapsed: Duration) -> String {
    match elapsed.as_micros() {
        us @ 0..1_000 => format!("{us} µs"),
        1_000..1_000_000 => format!("{:.1} ms", elapsed.as_secs_f64() * 1_000.0),
        _ => format!("{:.2} s", elapsed.as_secs_f64()),
    }
}

/// The steps a [`CloseRecorder`] saw, in the order they finished.
///
/// Its `Display` is a table, one numbered row per step:
///
/// ```text
///     #   step   type                 field            took  outcome
///     1   close  Provider             jobs           106 µs  ok
///     2   close  Provider             api            223 µs  ok
///     3   close  Provider             log            2.00 s  timeout: timed out after 2s; the step was dropped
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CloseReport {
    steps: Vec<CloseStep>,
    skipped: usize,
}

impl CloseReport {
    /// The steps, in the order they finished.
    pub fn steps(&self) -> &[CloseStep] {
        &self.steps
    }

    /// The steps, owned.
    pub fn into_steps(self) -> Vec<CloseStep> {
        self.steps
    }

    /// An iterator over the steps, in the order they finished.
    pub fn iter(&self) -> std::slice::Iter<'_, CloseStep> {
        self.steps.iter()
    }

    /// The number of steps.
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    /// Whether no step was recorded.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// The steps that did not end [`Ok`](StepOutcome::Ok).
    pub fn failures(&self) -> impl Iterator<Item = &CloseStep> + '_ {
        self.steps.iter().filter(|step| !step.outcome.is_ok())
    }

    /// Keeps only the steps for which `keep` returns `true` (only the closes, say).
    pub fn retain(&mut self, keep: impl FnMut(&CloseStep) -> bool) {
        self.steps.retain(keep);
    }

    /// How many steps finished before these but were not kept, because the recorder
    /// held as many as its limit.
    pub fn skipped(&self) -> usize {
        self.skipped
    }
}

impl fmt::Display for CloseReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let widths = Widths {
            resource: self
                .steps
                .iter()
                .map(|s| s.resource.chars().count())
                .fold(Widths::MIN.resource, usize::max),
            path: self
                .steps
                .iter()
                .map(|s| s.path.chars().count())
                .fold(Widths::MIN.path, usize::max),
        };
        let number = self.steps.len().to_string().len().max(3);
        write!(
            f,
            "    {:<number$} {:<6} {:<tw$} {:<fw$} {:>10}  outcome",
            "#",
            "step",
            "type",
            "field",
            "took",
            tw = widths.resource,
            fw = widths.path,
        )?;
        if self.skipped > 0 {
            write!(f, "\n    ({} earlier steps not kept)", self.skipped)?;
        }
        if self.steps.is_empty() {
            f.write_str("\n    (no steps recorded)")?;
        }
        for (i, step) in self.steps.iter().enumerate() {
            write!(f, "\n    {:<number$} ", i + 1)?;
            step.write_row(f, widths)?;
        }
        Ok(())
    }
}

impl IntoIterator for CloseReport {
    type Item = CloseStep;
    type IntoIter = std::vec::IntoIter<CloseStep>;

    fn into_iter(self) -> Self::IntoIter {
        self.steps.into_iter()
    }
}

impl<'a> IntoIterator for &'a CloseReport {
    type Item = &'a CloseStep;
    type IntoIter = std::slice::Iter<'a, CloseStep>;

    fn into_iter(self) -> Self::IntoIter {
        self.steps.iter()
    }
}

/// Records the library's enter and close steps from their `tracing` spans; clones share
/// one record.
///
/// Add [`layer`](Self::layer) to the subscriber, then read the steps with
/// [`take`](Self::take) or [`snapshot`](Self::snapshot). See the [module](self) for how
/// it fits next to other layers.
///
/// `CloseRecorder` is also a `Layer` on its own, without a filter: for a subscriber that
/// holds it alone, or only layers without per-layer filters (per-layer filters that
/// all reject a callsite disable it for unfiltered layers too).
#[derive(Clone)]
pub struct CloseRecorder {
    shared: Arc<Shared>,
}

struct Shared {
    limit: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The steps whose span is open, by span id.
    open: HashMap<u64, Open>,
    steps: VecDeque<CloseStep>,
    skipped: usize,
}

/// A step whose span is open.
struct Open {
    operation: Operation,
    resource: String,
    field: String,
    path: String,
    detached: bool,
    started: tokio::time::Instant,
    finished: bool,
}

impl Open {
    fn step(&self, elapsed: Duration, outcome: StepOutcome, error: Option<String>) -> CloseStep {
        CloseStep {
            operation: self.operation,
            resource: self.resource.clone(),
            field: self.field.clone(),
            path: self.path.clone(),
            elapsed,
            outcome,
            error,
            detached: self.detached,
        }
    }
}

impl State {
    fn push(&mut self, step: CloseStep, limit: usize) {
        if limit == 0 {
            self.skipped += 1;
            return;
        }
        if self.steps.len() >= limit {
            self.steps.pop_front();
            self.skipped += 1;
        }
        self.steps.push_back(step);
    }
}

impl Default for CloseRecorder {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for CloseRecorder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("CloseRecorder")
            .field("steps", &state.steps.len())
            .field("running", &state.open.len())
            .field("skipped", &state.skipped)
            .field("limit", &self.shared.limit)
            .finish()
    }
}

impl CloseRecorder {
    /// A recorder that keeps up to 10 000 steps (see [`with_limit`](Self::with_limit)).
    pub fn new() -> Self {
        Self::with_limit(DEFAULT_LIMIT)
    }

    /// A recorder that keeps the last `limit` steps: when one more finishes, the
    /// oldest is let go and counted in [`CloseReport::skipped`]. A service that never
    /// calls [`take`](Self::take) holds at most `limit` steps.
    pub fn with_limit(limit: usize) -> Self {
        CloseRecorder {
            shared: Arc::new(Shared {
                limit,
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// The layer to add to a subscriber: this recorder, behind [`StepFilter`], so that
    /// it enables the library's steps at DEBUG and nothing else, whatever the levels of
    /// the other layers.
    pub fn layer<S>(&self) -> CloseReportLayer<S>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        self.clone().with_filter(StepFilter)
    }

    /// The steps recorded so far; the recorder starts afresh.
    pub fn take(&self) -> CloseReport {
        let mut state = self.lock();
        CloseReport {
            steps: std::mem::take(&mut state.steps).into(),
            skipped: std::mem::take(&mut state.skipped),
        }
    }

    /// A copy of the steps recorded so far; the recorder keeps them.
    pub fn snapshot(&self) -> CloseReport {
        let state = self.lock();
        CloseReport {
            steps: state.steps.iter().cloned().collect(),
            skipped: state.skipped,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update is one insert, one remove or one push: a poisoned lock still
        // guards a consistent record.
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The layer [`CloseRecorder::layer`] returns: the recorder behind its [`StepFilter`].
pub type CloseReportLayer<S> = Filtered<CloseRecorder, StepFilter, S>;

/// The per-layer filter of [`CloseReportLayer`]: the spans and events of
/// `resource_runtime` at DEBUG and above, which the steps are made of. Its level hint
/// (DEBUG) is what lets the steps build their spans under a subscriber whose other
/// layers want INFO.
#[derive(Debug, Clone, Copy, Default)]
pub struct StepFilter;

impl StepFilter {
    fn wants(meta: &Metadata<'_>) -> bool {
        ours(meta)
            && *meta.level() <= Level::DEBUG
            && (meta.is_event() || meta.name().starts_with("resource."))
    }
}

impl<S> Filter<S> for StepFilter {
    fn enabled(&self, meta: &Metadata<'_>, _: &Context<'_, S>) -> bool {
        Self::wants(meta)
    }

    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> Interest {
        if Self::wants(meta) {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(LevelFilter::DEBUG)
    }
}

/// The fields of a step's span and of the event that ends it.
#[derive(Default)]
struct Fields {
    resource: Option<String>,
    path: Option<String>,
    elapsed_us: Option<u64>,
    outcome: Option<String>,
    error: Option<String>,
}

impl Fields {
    fn set(&mut self, field: &Field, value: String) {
        match field.name() {
            "resource" => self.resource = Some(value),
            "path" => self.path = Some(value),
            "outcome" => self.outcome = Some(value),
            "error" => self.error = Some(value),
            _ => {}
        }
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.set(field, value.to_owned());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if field.name() == "elapsed_us" {
            self.elapsed_us = Some(value);
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if field.name() == "elapsed_us" {
            self.elapsed_us = u64::try_from(value).ok();
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.set(field, value.to_string());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // `path = %label` and `%error` arrive here, formatted with their `Display`.
        if field.name() != "message" {
            self.set(field, format!("{value:?}"));
        }
    }
}

/// Whether a callsite is this crate's.
fn ours(meta: &Metadata<'_>) -> bool {
    meta.target()
        .strip_prefix(env!("CARGO_CRATE_NAME"))
        .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
}

/// The operation of a step's span; `None` for any other span.
fn is_step(meta: &Metadata<'_>) -> Option<Operation> {
    if !ours(meta) {
        return None;
    }
    match meta.name() {
        ENTER => Some(Operation::Enter),
        CLOSE => Some(Operation::Close),
        _ => None,
    }
}

impl<S> Layer<S> for CloseRecorder
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(operation) = is_step(attrs.metadata()) else {
            return;
        };
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        // The nearest step this one runs inside gives the start of its path; a detached
        // close starts a path of its own.
        let mut outer = None;
        let mut detached = false;
        if let Some(scope) = ctx.span_scope(id) {
            for ancestor in scope.skip(1) {
                let meta = ancestor.metadata();
                if meta.name() == DETACHED && ours(meta) {
                    detached = true;
                    break;
                }
                if is_step(meta).is_some() {
                    outer = Some(ancestor.id().into_u64());
                    break;
                }
            }
        }
        let field = fields.path.unwrap_or_default();
        let mut state = self.lock();
        let (path, detached) = match outer.and_then(|outer| state.open.get(&outer)) {
            Some(outer) => (format!("{}.{field}", outer.path), outer.detached),
            None => (field.clone(), detached),
        };
        state.open.insert(
            id.into_u64(),
            Open {
                operation,
                resource: fields.resource.unwrap_or_default(),
                field,
                path,
                detached,
                started: tokio::time::Instant::now(),
                finished: false,
            },
        );
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        if !ours(event.metadata()) {
            return;
        }
        let Some(span) = ctx.event_span(event) else {
            return;
        };
        if is_step(span.metadata()).is_none() {
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        // Only the event that ends the step carries its outcome.
        let Some(outcome) = fields.outcome else {
            return;
        };
        let limit = self.shared.limit;
        let mut state = self.lock();
        let Some(open) = state.open.get_mut(&span.id().into_u64()) else {
            return;
        };
        if std::mem::replace(&mut open.finished, true) {
            return;
        }
        let elapsed = fields
            .elapsed_us
            .map_or_else(|| open.started.elapsed(), Duration::from_micros);
        let outcome = StepOutcome::from_field(&outcome);
        let error = if outcome.is_ok() { None } else { fields.error };
        let step = open.step(elapsed, outcome, error);
        state.push(step, limit);
    }

    fn on_close(&self, id: Id, _: Context<'_, S>) {
        let limit = self.shared.limit;
        let mut state = self.lock();
        let Some(open) = state.open.remove(&id.into_u64()) else {
            return;
        };
        if !open.finished {
            let step = open.step(open.started.elapsed(), StepOutcome::Dropped, None);
            state.push(step, limit);
        }
    }
}
