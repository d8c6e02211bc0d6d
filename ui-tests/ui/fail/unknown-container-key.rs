use resource_runtime::AsyncResource;
use tokio_util::sync::CancellationToken;

#[derive(AsyncResource)]
#[resource(parallel)]
struct Worker {
    #[resource]
    stop: CancellationToken,
}

fn main() {}
