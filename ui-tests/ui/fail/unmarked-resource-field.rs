#![deny(deprecated)]

use resource_runtime::AsyncResource;
use tokio_util::sync::CancellationToken;

#[derive(AsyncResource)]
struct Worker {
    #[resource]
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

fn main() {}
