#![deny(unused_must_use)]

use resource_runtime::AsyncResource;
use tokio_util::sync::CancellationToken;

#[derive(AsyncResource)]
struct Worker {
    #[resource]
    stop: CancellationToken,
}

async fn shut_down(mut worker: Worker) {
    worker.close();
}

fn main() {
    let _ = shut_down;
}
