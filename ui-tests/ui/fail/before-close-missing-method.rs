use resource_runtime::AsyncResource;
use tokio_util::sync::CancellationToken;

#[derive(AsyncResource)]
#[resource(before_close = drain)]
struct Worker {
    #[resource]
    stop: CancellationToken,
}

fn main() {}
