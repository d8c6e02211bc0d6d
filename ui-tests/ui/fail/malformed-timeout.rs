use resource_runtime::AsyncResource;
use tokio_util::sync::CancellationToken;

#[derive(AsyncResource)]
struct Worker {
    #[resource(timeout = "2 fortnights")]
    stop: CancellationToken,
}

fn main() {}
