use resource_runtime::AsyncResource;
use tokio_util::sync::CancellationToken;

fn start(_: &mut CancellationToken) -> std::io::Result<()> {
    Ok(())
}

#[derive(AsyncResource)]
struct Worker {
    #[resource(enter = start)]
    stop: CancellationToken,
}

fn main() {}
