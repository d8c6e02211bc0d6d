use resource_runtime::AsyncResource;
use tokio_util::sync::CancellationToken;

#[derive(AsyncResource)]
struct Worker {
    #[resource(name = "stop")]
    first: CancellationToken,
    #[resource(name = "stop")]
    second: CancellationToken,
}

fn main() {}
