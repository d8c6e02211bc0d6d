#![deny(deprecated)]
use resource_runtime::AsyncResource;
use tokio_util::sync::CancellationToken;

#[derive(AsyncResource)]
enum State {
    A(CancellationToken),
    B { #[resource] x: CancellationToken },
}

fn main() {}
