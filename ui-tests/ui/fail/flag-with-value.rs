use resource_runtime::AsyncResource;
use tokio_util::sync::CancellationToken;

#[derive(AsyncResource)]
#[resource(concurrent = true)]
struct Worker {
    #[resource]
    stop: CancellationToken,
}

fn main() {}
