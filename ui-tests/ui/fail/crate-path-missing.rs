use resource_runtime::AsyncResource;
use tokio_util::sync::CancellationToken;

#[derive(AsyncResource)]
#[resource(crate = "does_not_exist")]
struct Worker {
    #[resource]
    stop: CancellationToken,
}

fn main() {}
