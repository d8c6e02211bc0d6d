//! [`AsyncResource`] for tokio types whose drop loses something a close would keep.
//!
//! These close what dropping cannot do well (flush a buffer, tell the peer, stop a
//! task); the file descriptor or socket itself is released when the value is dropped.
//! Wrap the field in an `Option` to release it at close too: `Option<T>` closes and
//! then drops its value.

use std::io;

use tokio::io::{AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::AsyncResource;
use crate::error::ResourceError;

/// A second shutdown of a socket reports "not connected"; the close contract wants
/// closing a closed resource to succeed.
fn shutdown_result(result: io::Result<()>) -> Result<(), ResourceError> {
    match result {
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
        other => other.map_err(ResourceError::other),
    }
}

/// Flushes the buffer, then shuts the inner writer down. Dropping a `BufWriter` loses
/// whatever it still buffers.
///
/// ```
/// use resource_runtime::AsyncResource;
/// use tokio::io::{AsyncWriteExt, BufWriter};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let path = std::env::temp_dir().join(format!("bufwriter-doc-{}.log", std::process::id()));
/// let mut log = BufWriter::new(tokio::fs::File::create(&path).await?);
/// log.write_all(b"kept, not lost\n").await?;
/// log.close().await?;
/// assert_eq!(tokio::fs::read_to_string(&path).await?, "kept, not lost\n");
/// # tokio::fs::remove_file(&path).await?;
/// # Ok(())
/// # }
/// ```
impl<W: AsyncWrite + Unpin + Send> AsyncResource for BufWriter<W> {
    async fn close(&mut self) -> Result<(), ResourceError> {
        self.flush().await.map_err(ResourceError::other)?;
        shutdown_result(self.shutdown().await)
    }
}

/// Flushes what tokio's file still holds in its write buffer, then syncs data and
/// metadata to disk (`fsync`).
impl AsyncResource for tokio::fs::File {
    async fn close(&mut self) -> Result<(), ResourceError> {
        self.flush().await.map_err(ResourceError::other)?;
        self.sync_all().await.map_err(ResourceError::other)
    }
}

/// Shuts the write half down, so the peer reads end-of-file instead of a reset.
impl AsyncResource for tokio::net::TcpStream {
    async fn close(&mut self) -> Result<(), ResourceError> {
        shutdown_result(self.shutdown().await)
    }
}

/// Aborts the task and waits until it has stopped, so nothing it owns outlives the
/// close. A task that panics while the close waits for it reports the panic; one that
/// was cancelled closes cleanly.
///
/// A task that had already finished before the close is not polled again: tokio
/// panics when a handle whose output was taken is polled, and a handle cannot tell
/// whether it was. Its output, a panic included, is dropped; await the handle yourself
/// to see it.
///
/// ```
/// use resource_runtime::AsyncResource;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), resource_runtime::ResourceError> {
/// let mut ticker = tokio::spawn(async {
///     loop {
///         tokio::time::sleep(std::time::Duration::from_millis(10)).await;
///     }
/// });
/// ticker.close().await?;
/// assert!(ticker.is_finished());
/// # Ok(())
/// # }
/// ```
impl<T: Send + 'static> AsyncResource for JoinHandle<T> {
    async fn close(&mut self) -> Result<(), ResourceError> {
        self.abort();
        // A finished handle may already have handed its output out, and polling it again
        // would panic; an unfinished one has not.
        if self.is_finished() {
            return Ok(());
        }
        match self.await {
            Ok(_) => Ok(()),
            Err(e) if e.is_cancelled() => Ok(()),
            Err(e) => match e.try_into_panic() {
                Ok(payload) => Err(ResourceError::from_panic(payload)),
                Err(e) => Err(ResourceError::other(e)),
            },
        }
    }
}

/// Cancels the token, so every task watching it (or a child token) stops.
impl AsyncResource for CancellationToken {
    async fn close(&mut self) -> Result<(), ResourceError> {
        self.cancel();
        Ok(())
    }
}
