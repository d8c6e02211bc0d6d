use resource_runtime::AsyncResource;
use tokio_util::sync::CancellationToken;

#[derive(AsyncResource)]
struct Worker {
    #[resource(timeout = "1s", timeout = "2s")]
    stop: CancellationToken,
}

fn main() {}
