//! Support for the behaviour tests of `#[derive(AsyncResource)]` and its runtime.
//!
//! The tests observe the generated code through [`Probe`], a resource implemented by
//! hand that writes what happens to it into a shared [`Log`] and can be told to
//! misbehave: fail to enter, fail to close, panic while closing, or take a while to
//! close. Every test asserts on the log, the probe's counters and the paths of the
//! returned [`ResourceError`], never on the derive's internals.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

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
