//! Support for the behaviour tests of `#[derive(AsyncResource)]` and its runtime.
//!
//! The tests observe the generated code through [`Probe`], a resource implemented by
//! hand that writes what happens to it into a shared [`Log`] and can be told to
//! misbehave: fail to enter, fail to close, panic while closing, or take a while to
//! close. Every test asserts on the log, the probe's counters and the paths of the
//! returned [`ResourceError`], never on the derive's internals.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

#[cfg(feature = "redis")]
pub mod redis_server;
pub mod server;

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use resource_runtime::{AsyncResource, ResourceError};

/// A shared record of what resources did, in order: `"enter NAME"`, `"close NAME"`,
/// `"close NAME finished"` (see [`Probe`]).
///
/// Clones share one record.
#[derive(Debug, Clone, Default)]
pub struct Log {
    entries: Arc<Mutex<Vec<String>>>,
}

impl Log {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends one entry.
    pub fn push(&self, entry: impl Into<String>) {
        self.lock().push(entry.into());
    }

    /// A copy of every entry so far, oldest first.
    pub fn entries(&self) -> Vec<String> {
        self.lock().clone()
    }

    /// Forgets every entry so far (to look at one phase of a test alone).
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// A probe named `name` writing into this log; see [`Probe`].
    pub fn probe(&self, name: &str) -> Probe {
        Probe::new(name, self)
    }

    fn lock(&self) -> MutexGuard<'_, Vec<String>> {
        // A probe that panics on purpose never holds the lock, but a failed assertion
        // elsewhere must not turn into a second, confusing panic here.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What a [`Probe`] failed to do, as the source error of its [`ResourceError`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeError {
    /// The probe's name.
    pub name: String,
    /// `"enter"` or `"close"`.
    pub op: &'static str,
}

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "probe {} failed to {}", self.name, self.op)
    }
}

impl std::error::Error for ProbeError {}

/// A resource implemented by hand that records what is done to it.
///
/// - `enter` writes `"enter NAME"` to the log and counts the call, then panics if built
///   with [`panic_on_enter`](Self::panic_on_enter) and fails if built with
///   [`fail_enter`](Self::fail_enter).
/// - `close` writes `"close NAME"` and counts the call (every call: a probe is not
///   idempotent by itself, so a test sees each close the derive runs; wrap it in an
///   `Option` for an idempotent field). Then, in this order: it panics if built with
///   [`panic_on_close`](Self::panic_on_close); it sleeps on tokio's clock if built
///   with [`close_delay`](Self::close_delay) and writes `"close NAME finished"` once
///   the sleep is over (a close dropped at a deadline never writes it); it fails if
///   built with [`fail_close`](Self::fail_close).
///
/// Failures are [`ProbeError`]s wrapped with [`ResourceError::other`].
#[derive(Debug)]
pub struct Probe {
    name: String,
    log: Log,
    closes: Arc<AtomicUsize>,
    enters: Arc<AtomicUsize>,
    fail_enter: bool,
    panic_on_enter: bool,
    fail_close: bool,
    panic_on_close: bool,
    close_delay: Option<Duration>,
}

impl Probe {
    /// A probe that enters and closes cleanly, writing into `log`.
    pub fn new(name: &str, log: &Log) -> Self {
        Probe {
            name: name.to_owned(),
            log: log.clone(),
            closes: Arc::new(AtomicUsize::new(0)),
            enters: Arc::new(AtomicUsize::new(0)),
            fail_enter: false,
            panic_on_enter: false,
            fail_close: false,
            panic_on_close: false,
            close_delay: None,
        }
    }

    /// Makes `enter` return an error (after logging it).
    #[must_use]
    pub fn fail_enter(mut self) -> Self {
        self.fail_enter = true;
        self
    }

    /// Makes `enter` panic with the message `"probe NAME panicked in enter"`.
    #[must_use]
    pub fn panic_on_enter(mut self) -> Self {
        self.panic_on_enter = true;
        self
    }

    /// Makes `close` return an error (after logging it and any delay).
    #[must_use]
    pub fn fail_close(mut self) -> Self {
        self.fail_close = true;
        self
    }

    /// Makes `close` panic with the message `"probe NAME panicked in close"`.
    #[must_use]
    pub fn panic_on_close(mut self) -> Self {
        self.panic_on_close = true;
        self
    }

    /// Makes `close` sleep `millis` ms of tokio time before it finishes.
    #[must_use]
    pub fn close_delay(mut self, millis: u64) -> Self {
        self.close_delay = Some(Duration::from_millis(millis));
        self
    }

    /// A counter of this probe's `close` calls, readable after the probe is moved into
    /// the resource under test (or dropped).
    pub fn close_counter(&self) -> Counter {
        Counter(self.closes.clone())
    }

    /// A counter of this probe's `enter` calls.
    pub fn enter_counter(&self) -> Counter {
        Counter(self.enters.clone())
    }

    /// The probe's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// A shared count of calls, taken from a [`Probe`] before it is moved away.
#[derive(Debug, Clone)]
pub struct Counter(Arc<AtomicUsize>);

impl Counter {
    /// The number of calls so far.
    pub fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

impl AsyncResource for Probe {
    async fn enter(&mut self) -> Result<(), ResourceError> {
        self.enters.fetch_add(1, Ordering::SeqCst);
        self.log.push(format!("enter {}", self.name));
        if self.panic_on_enter {
            panic!("probe {} panicked in enter", self.name);
        }
        if self.fail_enter {
            return Err(ResourceError::other(ProbeError {
                name: self.name.clone(),
                op: "enter",
            }));
        }
        Ok(())
    }

    async fn close(&mut self) -> Result<(), ResourceError> {
        self.closes.fetch_add(1, Ordering::SeqCst);
        self.log.push(format!("close {}", self.name));
        if self.panic_on_close {
            panic!("probe {} panicked in close", self.name);
        }
        if let Some(delay) = self.close_delay {
            tokio::time::sleep(delay).await;
            self.log.push(format!("close {} finished", self.name));
        }
        if self.fail_close {
            return Err(ResourceError::other(ProbeError {
                name: self.name.clone(),
                op: "close",
            }));
        }
        Ok(())
    }
}

/// The paths of every failure of `error`, in order (`"?"` for a failure without one).
pub fn paths(error: &ResourceError) -> Vec<String> {
    error
        .failures()
        .map(|f| f.path().unwrap_or("?").to_owned())
        .collect()
}

/// Shorthand for building the expected log: `strings(&["enter a", "close a"])`.
pub fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// What happened to the [`Tracked`] resources sharing one [`Tracker`], as counts.
///
/// `close_done` is bumped by the close's last line, so a close that was cancelled
/// half-way (its future dropped) counts in `close_started` but not in `close_done`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tally {
    /// `enter` calls that started.
    pub enter_started: usize,
    /// `enter` calls that ran to their end.
    pub enter_done: usize,
    /// `close` calls that started.
    pub close_started: usize,
    /// `close` calls that ran to their end.
    pub close_done: usize,
    /// Values dropped (their `Drop` ran).
    pub dropped: usize,
}

#[derive(Debug)]
struct TrackerState {
    enter_started: AtomicUsize,
    enter_done: AtomicUsize,
    close_started: AtomicUsize,
    close_done: AtomicUsize,
    dropped: AtomicUsize,
    gate: tokio::sync::watch::Sender<bool>,
}

/// The shared counters of [`Tracked`] resources, and the gate their gated closes wait
/// for. Clones share one state.
#[derive(Debug, Clone)]
pub struct Tracker(Arc<TrackerState>);

impl Default for Tracker {
    fn default() -> Self {
        Self::new()
    }
}

impl Tracker {
    /// Counters at zero and a closed gate.
    pub fn new() -> Self {
        Tracker(Arc::new(TrackerState {
            enter_started: AtomicUsize::new(0),
            enter_done: AtomicUsize::new(0),
            close_started: AtomicUsize::new(0),
            close_done: AtomicUsize::new(0),
            dropped: AtomicUsize::new(0),
            gate: tokio::sync::watch::channel(false).0,
        }))
    }

    /// A copy of the counters now.
    pub fn tally(&self) -> Tally {
        let s = &self.0;
        Tally {
            enter_started: s.enter_started.load(Ordering::SeqCst),
            enter_done: s.enter_done.load(Ordering::SeqCst),
            close_started: s.close_started.load(Ordering::SeqCst),
            close_done: s.close_done.load(Ordering::SeqCst),
            dropped: s.dropped.load(Ordering::SeqCst),
        }
    }

    /// Opens the gate: every gated close waiting for it (now or later) goes on.
    pub fn release(&self) {
        self.0.gate.send_replace(true);
    }
}

/// A resource implemented by hand whose enter and close have await points, counted in
/// a [`Tracker`].
///
/// `Tag` only gives each test its own type, so the process-wide counts of
/// `resource_runtime::testing` and the type named in logs and errors are the test's
/// own: `Tracked<MyTestTag>`.
///
/// - `enter` counts its start, yields to the runtime `enter_yields` times
///   ([`tokio::task::yield_now`]), then counts its end.
/// - `close` counts its start, yields `close_yields` times, waits for
///   [`Tracker::release`] if built [`gated`](Self::gated) (forever if it never comes),
///   then counts its end. Every call counts: it is not idempotent by itself.
/// - `Drop` counts too.
pub struct Tracked<Tag: 'static = ()> {
    tracker: Tracker,
    enter_yields: usize,
    close_yields: usize,
    gated: bool,
    _tag: std::marker::PhantomData<fn() -> Tag>,
}

impl<Tag: 'static> fmt::Debug for Tracked<Tag> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct(std::any::type_name::<Self>())
            .field("enter_yields", &self.enter_yields)
            .field("close_yields", &self.close_yields)
            .field("gated", &self.gated)
            .finish()
    }
}

impl<Tag: 'static> Tracked<Tag> {
    /// A resource counted in `tracker`, without await points.
    pub fn new(tracker: &Tracker) -> Self {
        Tracked {
            tracker: tracker.clone(),
            enter_yields: 0,
            close_yields: 0,
            gated: false,
            _tag: std::marker::PhantomData,
        }
    }

    /// Makes `enter` yield `n` times before it finishes.
    #[must_use]
    pub fn enter_yields(mut self, n: usize) -> Self {
        self.enter_yields = n;
        self
    }

    /// Makes `close` yield `n` times before it finishes.
    #[must_use]
    pub fn close_yields(mut self, n: usize) -> Self {
        self.close_yields = n;
        self
    }

    /// Makes `close` wait for [`Tracker::release`] before it finishes.
    #[must_use]
    pub fn gated(mut self) -> Self {
        self.gated = true;
        self
    }
}

impl<Tag: 'static> Drop for Tracked<Tag> {
    fn drop(&mut self) {
        self.tracker.0.dropped.fetch_add(1, Ordering::SeqCst);
    }
}

impl<Tag: 'static> AsyncResource for Tracked<Tag> {
    async fn enter(&mut self) -> Result<(), ResourceError> {
        self.tracker.0.enter_started.fetch_add(1, Ordering::SeqCst);
        for _ in 0..self.enter_yields {
            tokio::task::yield_now().await;
        }
        self.tracker.0.enter_done.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    async fn close(&mut self) -> Result<(), ResourceError> {
        self.tracker.0.close_started.fetch_add(1, Ordering::SeqCst);
        for _ in 0..self.close_yields {
            tokio::task::yield_now().await;
        }
        if self.gated {
            let mut gate = self.tracker.0.gate.subscribe();
            // The sender lives in the tracker this resource holds: it cannot be dropped.
            let _ = gate.wait_for(|open| *open).await;
        }
        self.tracker.0.close_done.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// One `tracing` event seen by [`Events`].
#[derive(Debug, Clone)]
pub struct Event {
    /// Its level.
    pub level: tracing::Level,
    /// Its message (the `message` field), formatted.
    pub message: String,
    /// Its other fields, formatted.
    pub fields: std::collections::BTreeMap<String, String>,
}

impl Event {
    /// Whether the message or any field mentions `needle`.
    pub fn mentions(&self, needle: &str) -> bool {
        self.message.contains(needle) || self.fields.values().any(|v| v.contains(needle))
    }
}

/// A `tracing` layer that keeps every event, installed as the thread's default
/// subscriber: events emitted on this thread (a drop on the test thread, a task polled
/// by a current-thread runtime) are captured.
#[derive(Debug, Clone, Default)]
pub struct Events {
    seen: Arc<Mutex<Vec<Event>>>,
}

struct EventFields<'a>(&'a mut Event);

impl tracing::field::Visit for EventFields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        let value = format!("{value:?}");
        if field.name() == "message" {
            self.0.message = value;
        } else {
            self.0.fields.insert(field.name().to_owned(), value);
        }
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            self.0.message = value.to_owned();
        } else {
            self.0
                .fields
                .insert(field.name().to_owned(), value.to_owned());
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Events {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let mut seen = Event {
            level: *event.metadata().level(),
            message: String::new(),
            fields: std::collections::BTreeMap::new(),
        };
        event.record(&mut EventFields(&mut seen));
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(seen);
    }
}

impl Events {
    /// Installs a capture as this thread's default subscriber until the guard drops.
    pub fn install() -> (Events, tracing::subscriber::DefaultGuard) {
        use tracing_subscriber::layer::SubscriberExt;
        let events = Events::default();
        let subscriber = tracing_subscriber::registry().with(events.clone());
        (events, tracing::subscriber::set_default(subscriber))
    }

    /// Every event so far, oldest first.
    pub fn all(&self) -> Vec<Event> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The events at `level` that mention `needle` (see [`Event::mentions`]).
    pub fn at(&self, level: tracing::Level, needle: &str) -> Vec<Event> {
        self.all()
            .into_iter()
            .filter(|e| e.level == level && e.mentions(needle))
            .collect()
    }
}

/// How many tasks are inside a section at once, and the most ever seen: each task
/// holds a [`GaugeGuard`] from [`Gauge::enter`] while it is inside. Clones share one
/// gauge.
#[derive(Debug, Clone, Default)]
pub struct Gauge {
    now: Arc<AtomicUsize>,
    max: Arc<AtomicUsize>,
}

impl Gauge {
    /// A gauge at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one more inside until the guard drops, and updates the maximum.
    pub fn enter(&self) -> GaugeGuard {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(now, Ordering::SeqCst);
        GaugeGuard(self.clone())
    }

    /// How many are inside now.
    pub fn current(&self) -> usize {
        self.now.load(Ordering::SeqCst)
    }

    /// The most that were ever inside at once.
    pub fn max(&self) -> usize {
        self.max.load(Ordering::SeqCst)
    }
}

/// One task inside a [`Gauge`]'s section; leaves it when dropped.
#[derive(Debug)]
pub struct GaugeGuard(Gauge);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A shared counter, for tasks to bump.
pub fn counter() -> Arc<AtomicUsize> {
    Arc::new(AtomicUsize::new(0))
}

/// The value of a counter.
pub fn get(c: &AtomicUsize) -> usize {
    c.load(Ordering::SeqCst)
}

/// Awaits `fut`, which must finish without any time passing (on tokio's paused clock):
/// a future that waits on the clock, or forever, is cut off after an hour of virtual
/// time and fails the test.
pub async fn at_once<T>(fut: impl std::future::Future<Output = T>) -> T {
    let start = tokio::time::Instant::now();
    let out = tokio::time::timeout(Duration::from_secs(3600), fut)
        .await
        .expect("the call waited instead of returning at once");
    assert_eq!(start.elapsed(), Duration::ZERO, "the call waited");
    out
}

/// Polls `fut` to its end on this thread, outside any tokio runtime: what a caller
/// with no runtime (a plain `main`, a blocking thread) does.
pub fn block_on_without_runtime<F: std::future::Future>(fut: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    loop {
        if let std::task::Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::park();
    }
}

/// A current-thread runtime built without `enable_time`: it has no timer, so no
/// deadline can be set on it.
pub fn runtime_without_timers() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .expect("a current-thread runtime")
}

/// A resource that yields once in its close and then cancels its token: its close is
/// still running when a deadline's timer is first needed.
#[derive(Debug)]
pub struct YieldsThenCancels(pub tokio_util::sync::CancellationToken);

impl AsyncResource for YieldsThenCancels {
    async fn close(&mut self) -> Result<(), ResourceError> {
        tokio::task::yield_now().await;
        self.0.cancel();
        Ok(())
    }
}

/// A resource whose `enter` starts something (`running` becomes true) and then
/// panics; its close stops it.
#[derive(Debug, Clone, Default)]
pub struct StartsThenPanics {
    /// Whether what the enter started is still running.
    pub running: Arc<std::sync::atomic::AtomicBool>,
}

impl StartsThenPanics {
    /// Whether the resource still holds what its enter started.
    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::SeqCst)
    }
}

impl AsyncResource for StartsThenPanics {
    async fn enter(&mut self) -> Result<(), ResourceError> {
        self.running.store(true, Ordering::SeqCst);
        tokio::task::yield_now().await;
        panic!("enter panicked after starting its work");
    }

    async fn close(&mut self) -> Result<(), ResourceError> {
        self.running.store(false, Ordering::SeqCst);
        Ok(())
    }
}
