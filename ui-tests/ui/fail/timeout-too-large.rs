use resource_runtime::AsyncResource;
use tokio_util::sync::CancellationToken;

#[derive(AsyncResource)]
#[resource(timeout = "18446744073709551615h")]
struct Worker {
    #[resource]
    stop: CancellationToken,
}

fn main() {}
