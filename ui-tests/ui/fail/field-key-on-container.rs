use resource_runtime::AsyncResource;
use tokio_util::sync::CancellationToken;

#[derive(AsyncResource)]
#[resource(skip)]
struct Worker {
    #[resource]
    stop: CancellationToken,
}

fn main() {}
