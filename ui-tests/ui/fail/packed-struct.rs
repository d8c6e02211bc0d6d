use resource_runtime::AsyncResource;
use tokio_util::sync::CancellationToken;

#[derive(AsyncResource)]
#[repr(packed)]
struct Packed {
    #[resource]
    stop: CancellationToken,
}

fn main() {}
