use resource_runtime::AsyncResource;
use tokio_util::sync::CancellationToken;

#[derive(AsyncResource)]
struct Worker {
    #[resource(name = "stop")]
    #[resource(name = "halt")]
    stop: CancellationToken,
}

fn main() {}
