use resource_runtime::AsyncResource;
use tokio_util::sync::CancellationToken;

#[derive(AsyncResource)]
struct Worker {
    #[resource(timout = "1s")]
    stop: CancellationToken,
}

async fn shut_down(mut worker: Worker) {
    let _ = worker.close().await;
}

fn main() {
    let _ = shut_down;
}
