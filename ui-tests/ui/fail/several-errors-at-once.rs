use resource_runtime::AsyncResource;
use tokio_util::sync::CancellationToken;

#[derive(AsyncResource)]
#[resource(timeout = "soon")]
struct Worker {
    #[resource(timout = "1s")]
    stop: CancellationToken,
    #[resource(skip, name = "label")]
    name: String,
}

fn main() {}
