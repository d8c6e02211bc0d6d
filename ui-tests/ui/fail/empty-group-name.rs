use resource_runtime::AsyncResource;
use tokio_util::sync::CancellationToken;

#[derive(AsyncResource)]
struct Worker {
    #[resource(group = "")]
    stop: CancellationToken,
}

fn main() {}
