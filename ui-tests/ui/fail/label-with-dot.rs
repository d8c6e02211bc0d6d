use resource_runtime::AsyncResource;
use tokio_util::sync::CancellationToken;

#[derive(AsyncResource)]
struct Worker {
    #[resource(name = "stop.token")]
    stop: CancellationToken,
}

fn main() {}
