use resource_runtime::AsyncResource;
use tokio_util::sync::CancellationToken;

#[derive(AsyncResource)]
struct Worker {
    #[resource(tokio::timeout = "1s")]
    stop: CancellationToken,
}

fn main() {}
