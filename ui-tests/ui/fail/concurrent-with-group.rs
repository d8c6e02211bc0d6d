use resource_runtime::AsyncResource;
use tokio_util::sync::CancellationToken;

#[derive(AsyncResource)]
#[resource(concurrent)]
struct Worker {
    #[resource(group = "io")]
    stop: CancellationToken,
    #[resource]
    other: CancellationToken,
}

fn main() {}
