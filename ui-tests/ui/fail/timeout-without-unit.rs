use resource_runtime::AsyncResource;
use tokio_util::sync::CancellationToken;

#[derive(AsyncResource)]
struct Worker {
    #[resource(timeout = "30")]
    stop: CancellationToken,
}

fn main() {}
