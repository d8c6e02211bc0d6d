use resource_runtime::AsyncResource;
use tokio_util::sync::CancellationToken;

#[derive(AsyncResource)]
enum State {
    #[resource]
    Running(CancellationToken),
    Stopped,
}

fn main() {}
