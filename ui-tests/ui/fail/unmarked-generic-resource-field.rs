#![deny(deprecated)]
use resource_runtime::AsyncResource;
use tokio_util::sync::CancellationToken;

#[derive(AsyncResource)]
struct Wrapper<T: AsyncResource> {
    #[resource]
    x: CancellationToken,
    inner: T,
}

fn main() {}
