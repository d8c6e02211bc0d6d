use resource_runtime::AsyncResource;
use tokio_util::sync::CancellationToken;

#[derive(AsyncResource)]
#[resource(after_enter = ready)]
struct Worker {
    #[resource]
    stop: CancellationToken,
}

impl Worker {
    async fn ready(self) -> std::io::Result<()> {
        Ok(())
    }
}

fn main() {}
