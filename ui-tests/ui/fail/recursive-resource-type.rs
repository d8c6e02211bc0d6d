use resource_runtime::AsyncResource;
use tokio_util::sync::CancellationToken;

#[derive(AsyncResource)]
struct Tree {
    #[resource]
    stop: CancellationToken,
    #[resource]
    children: Vec<Tree>,
}

fn main() {}
