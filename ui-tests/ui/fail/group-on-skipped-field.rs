use resource_runtime::AsyncResource;
use tokio_util::sync::CancellationToken;

#[derive(AsyncResource)]
struct Worker {
    #[resource(group = "io")]
    stop: CancellationToken,
    #[resource(skip, group = "io")]
    name: String,
}

fn main() {}
