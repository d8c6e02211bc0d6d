use resource_runtime::AsyncResource;
use tokio_util::sync::CancellationToken;

#[derive(AsyncResource)]
struct Worker {
    #[resource(timout = "2s")]
    stop: CancellationToken,
}

fn main() {}
