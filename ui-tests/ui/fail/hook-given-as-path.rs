use resource_runtime::AsyncResource;
use tokio_util::sync::CancellationToken;

#[derive(AsyncResource)]
#[resource(before_close = Self::drain)]
struct Worker {
    #[resource]
    stop: CancellationToken,
}

impl Worker {
    async fn drain(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn main() {}
