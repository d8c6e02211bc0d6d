use resource_runtime::AsyncResource;
use tokio_util::sync::CancellationToken;

#[derive(AsyncResource)]
#[resource(timeout = "1500us")]
struct Worker {
    #[resource(timeout = "250us")]
    stop: CancellationToken,
}

fn main() {}
