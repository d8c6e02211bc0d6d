#![doc = include_str!("../../README.md")]
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
