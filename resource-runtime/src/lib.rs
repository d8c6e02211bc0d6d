//! Async resource cleanup for Rust, derived, uniform and correct.
//!
//! Rust has no async `Drop`. A struct that owns an HTTP client, a background task and a
//! buffered log file must be closed by hand, field by field, with `.await`, and every
//! hand-written close gets something wrong: the order, what happens when one field
//! fails, a panic half-way, a close that hangs, a field someone forgot.
//!
//! [`AsyncResource`] is the async `Drop`: `enter` brings a value up, `close` releases
//! it. `#[derive(AsyncResource)]` writes both for a struct or enum, field by field:
//!
//! ```
//! use std::time::Duration;
//! use resource_runtime::{AsyncResource, ResourceError};
//! use tokio::io::{AsyncWriteExt, BufWriter};
//! use tokio_util::sync::CancellationToken;
//!
//! /// A vendor SDK's client: a foreign type with an async shutdown of its own.
//! struct SdkClient { open: bool }
//! impl SdkClient {
//!     async fn shutdown(&mut self) -> std::io::Result<()> {
//!         self.open = false;
//!         Ok(())
//!     }
//! }
//! async fn shutdown_sdk(client: &mut SdkClient) -> std::io::Result<()> {
//!     client.shutdown().await
//! }
//!
//! #[derive(AsyncResource)]
//! struct Provider {
//!     // Closed last: the log keeps what the others report while closing.
//!     #[resource(timeout = "2s")]
//!     log: BufWriter<tokio::fs::File>,
//!     #[resource]
//!     stop: CancellationToken,
//!     #[resource(close = shutdown_sdk)]
//!     client: SdkClient,
//!     #[resource(skip)]
//!     model: String,
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! # let path = std::env::temp_dir().join(format!("lib-doc-{}.log", std::process::id()));
//! let mut provider = Provider {
//!     log: BufWriter::new(tokio::fs::File::create(&path).await?),
//!     stop: CancellationToken::new(),
//!     client: SdkClient { open: true },
//!     model: "small".into(),
//! };
//! provider.enter().await?;
//! provider.log.write_all(b"request sent\n").await?;
//! // Closes `client`, then `stop`, then `log`: every field, whatever the others do.
//! provider.close().await?;
//! assert!(!provider.client.open);
//! assert!(provider.stop.is_cancelled());
//! assert_eq!(tokio::fs::read_to_string(&path).await?, "request sent\n");
//! # tokio::fs::remove_file(&path).await?;
//! # Ok(())
//! # }
//! ```
//!
//! A failed close returns one [`ResourceError`] holding every failure with its field
//! path; panics in a field's close are caught and reported, and a field past its
//! deadline is dropped and reported as a timeout. The attributes are described on the
//! [derive](derive@AsyncResource).
//!
//! To use a resource so that it is closed on every way out, take one of:
//!
//! - [`scope()`]: enter, run a body, close — also when the body panics, and as a
//!   detached task when the scope's future is dropped half-way;
//! - [`Managed`]: a guard that derefs to the resource, closed with
//!   [`close`](Managed::close), and closed in the background if dropped;
//! - [`ResourceStack`]: resources known only at run time, closed last-in first-out.
//!
//! Before a program exits, [`wait_detached`] waits for the closes left to the
//! background.
//!
//! The runtime types an API client is made of are built the same way, each a cheap
//! `Clone` handle whose `close` closes it for every clone:
//!
//! - [`AsyncExecutor`](executor::AsyncExecutor): at most `max_concurrency` tasks at once, backpressure on
//!   submission, a task's panic returned to its caller, and a shutdown that stops new
//!   work, drains, then aborts and counts what is left;
//! - [`RateLimiter`](limiter::RateLimiter): `rate` per `period` with a `burst`, first come first served, on
//!   tokio's clock, with [`pause_until`](limiter::RateLimiter::pause_until) for `Retry-After`;
//! - [`RateLimitedExecutor`](executor::RateLimitedExecutor): both;
//! - [`Endpoint`](http::Endpoint): an HTTP API on reqwest, configured by an [`EndpointConfig`](http::EndpointConfig) (serde),
//!   with retries, backoff and `Retry-After`, and a close that lets in-flight calls
//!   finish, cuts the rest and releases every pooled connection. Providers are written
//!   against [`ResourceClient`](http::ResourceClient) and [`Executor`](executor::Executor), so an SDK-style client of your own
//!   fits beside it.
//!
//! [`AsyncResource`] is implemented for `Option<T>`, `Box<T>`, `&mut T` and `Vec<T>`,
//! and for the tokio types whose drop loses something: `BufWriter<W>` (flush and
//! shutdown), `tokio::fs::File` (flush and sync), `TcpStream` (shutdown),
//! `JoinHandle<T>` (abort and wait) and `CancellationToken` (cancel).

#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod adapters;
mod detached;
mod error;
#[cfg(feature = "executor")]
#[cfg_attr(docsrs, doc(cfg(feature = "executor")))]
pub mod executor;
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub mod http;
#[cfg(feature = "limiter")]
#[cfg_attr(docsrs, doc(cfg(feature = "limiter")))]
pub mod limiter;
#[cfg(feature = "report")]
#[cfg_attr(docsrs, doc(cfg(feature = "report")))]
pub mod report;
mod resource;
mod scope;
mod stack;
mod step;
mod sync;
#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;
#[cfg(not(feature = "testing"))]
mod testing {
    //! Without the `testing` feature nothing is counted, and counting costs nothing.
    pub(crate) fn opened<R: 'static>() {}
    pub(crate) fn closed<R: 'static>() {}
}

#[doc(hidden)]
pub mod __private;

pub use crate::detached::{detached_in_flight, wait_detached};
pub use crate::error::{BoxError, ConfigError, Failure, Operation, ResourceError};
pub use crate::resource::AsyncResource;
pub use crate::scope::{Managed, scope};
pub use crate::stack::{ResourceStack, StackSlot};

#[cfg(feature = "derive")]
pub use resource_derive::AsyncResource;

/// The README's examples, compiled and run as doctests.
#[cfg(all(
    doctest,
    feature = "derive",
    feature = "executor",
    feature = "limiter",
    feature = "http"
))]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
