//! For a user's own tests: did everything that was entered get closed? Enabled by the
//! `testing` feature:
//!
//! ```toml
//! [dev-dependencies]
//! resource-runtime = { version = "0.1", features = ["testing"] }
//! ```
//!
//! Every resource entered through [`scope`](crate::scope()) or
//! [`Managed`](crate::Managed) counts as open until its close has run, explicitly, at
//! the end of the scope, or as a detached close after a drop. A test asserts that its
//! count is back to zero:
//!
//! ```
//! use std::time::Duration;
//! use resource_runtime::{AsyncResource, Managed, ResourceError, testing};
//!
//! struct Connection;
//! impl AsyncResource for Connection {
//!     async fn close(&mut self) -> Result<(), ResourceError> {
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), ResourceError> {
//! let conn = Managed::enter(Connection).await?;
//! assert_eq!(testing::open_count::<Connection>(), 1);
//! drop(conn); // forgot to close: it is closed in the background...
//! // ...and the test proves it, or names what was left open.
//! testing::assert_closed::<Connection>(Duration::from_secs(1)).await?;
//! # Ok(())
//! # }
//! ```
//!
//! Counts are per type and process-wide: tests running in parallel in one binary see
//! each other's resources of the same type, so give each such test its own resource
//! type, or use [`assert_all_closed`] in a test binary of its own.

use std::any::TypeId;
use std::collections::BTreeMap;
use std::sync::{LazyLock, Mutex, MutexGuard};
use std::time::Duration;

use crate::error::{Operation, ResourceError};

static OPEN: LazyLock<Mutex<BTreeMap<TypeId, (&'static str, usize)>>> =
    LazyLock::new(|| Mutex::new(BTreeMap::new()));

fn open() -> MutexGuard<'static, BTreeMap<TypeId, (&'static str, usize)>> {
    // Each update is one counter change: a poisoned map is still consistent.
    crate::sync::lock(&OPEN)
}

/// Counts one more `R` entered and not yet closed.
pub(crate) fn opened<R: 'static>() {
    open()
        .entry(TypeId::of::<R>())
        .or_insert((std::any::type_name::<R>(), 0))
        .1 += 1;
}

/// Counts one `R` closed.
pub(crate) fn closed<R: 'static>() {
    if let Some((_, count)) = open().get_mut(&TypeId::of::<R>()) {
        *count = count.saturating_sub(1);
    }
}

/// How many `R` entered through `scope` or `Managed` are not closed yet.
pub fn open_count<R: 'static>() -> usize {
    open().get(&TypeId::of::<R>()).map_or(0, |(_, n)| *n)
}

/// Every type with resources not closed yet, and how many of each.
pub fn open_resources() -> Vec<(&'static str, usize)> {
    open()
        .values()
        .filter(|(_, n)| *n > 0)
        .map(|(name, n)| (*name, *n))
        .collect()
}

fn left_open(types: Vec<(&'static str, usize)>) -> Result<(), ResourceError> {
    let mut error = None;
    for (name, count) in types {
        let leaf = ResourceError::other(LeftOpen { count }).within(&name, Operation::Close);
        ResourceError::push(&mut error, leaf);
    }
    error.map_or(Ok(()), Err)
}

/// Resources of one type still open when a check expected none, at the path of the
/// type's name; reach it with [`Failure::downcast_ref`](crate::Failure::downcast_ref).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeftOpen {
    /// How many are still open.
    pub count: usize,
}

impl std::fmt::Display for LeftOpen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} left open", self.count)
    }
}

impl std::error::Error for LeftOpen {}

/// Waits up to `timeout` for detached closes, then fails if any `R` is still open,
/// with the count in the error.
pub async fn assert_closed<R: 'static>(timeout: Duration) -> Result<(), ResourceError> {
    // Unfinished closes of other types do not concern this check.
    let _ = crate::wait_detached(timeout).await;
    match open_count::<R>() {
        0 => Ok(()),
        n => left_open(vec![(std::any::type_name::<R>(), n)]),
    }
}

/// Waits up to `timeout` for detached closes, then fails if any resource of any type
/// is still open, naming each type.
pub async fn assert_all_closed(timeout: Duration) -> Result<(), ResourceError> {
    let _ = crate::wait_detached(timeout).await;
    left_open(open_resources())
}
