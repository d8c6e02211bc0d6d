use resource_runtime::AsyncResource;
use tokio_util::sync::CancellationToken;

#[derive(AsyncResource)]
struct Worker {
    #[resource(timeout = 2)]
    stop: CancellationToken,
}

fn main() {}
