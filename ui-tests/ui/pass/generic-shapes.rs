#![deny(warnings)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use resource_runtime::{AsyncResource, ResourceError};
use tokio_util::sync::CancellationToken;

/// A `?Sized` parameter behind a `Box`: the generated bound is `Box<T>: AsyncResource`,
/// and the `?Sized` relaxation is kept.
#[derive(AsyncResource)]
struct Boxed<T: AsyncResource + ?Sized> {
    #[resource]
    boxed: Box<T>,
}

/// A default type parameter, and a `Drop` impl on the type itself.
#[derive(AsyncResource)]
struct Defaulted<T = CancellationToken> {
    #[resource]
    value: T,
    #[resource(skip)]
    dropped: Arc<AtomicBool>,
}

impl<T> Drop for Defaulted<T> {
    fn drop(&mut self) {
        self.dropped.store(true, Ordering::SeqCst);
    }
}

macro_rules! token_type {
    () => {
        CancellationToken
    };
}

/// A field type written with a macro, and unmarked fields of non-resource types.
#[derive(AsyncResource)]
struct Odd {
    #[resource]
    token: token_type!(),
    callback: Box<dyn Fn() -> u8 + Send>,
    text: &'static str,
}

/// `AsyncResource` returns `impl Future`, so it has no trait objects: `Boxed` is used
/// with a sized type here.
struct Flag(Arc<AtomicBool>);

impl AsyncResource for Flag {
    async fn close(&mut self) -> Result<(), ResourceError> {
        self.0.store(true, Ordering::SeqCst);
        Ok(())
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let closed = Arc::new(AtomicBool::new(false));
    let dropped = Arc::new(AtomicBool::new(false));
    let mut boxed = Boxed { boxed: Box::new(Flag(closed.clone())) };
    let mut defaulted: Defaulted = Defaulted { value: CancellationToken::new(), dropped: dropped.clone() };
    let mut odd = Odd { token: CancellationToken::new(), callback: Box::new(|| 7), text: "odd" };
    rt.block_on(async {
        boxed.close().await.unwrap();
        defaulted.close().await.unwrap();
        odd.close().await.unwrap();
    });
    assert!(closed.load(Ordering::SeqCst));
    assert!(defaulted.value.is_cancelled());
    drop(defaulted);
    assert!(dropped.load(Ordering::SeqCst));
    assert!(odd.token.is_cancelled());
    assert_eq!(((odd.callback)(), odd.text), (7, "odd"));
}
