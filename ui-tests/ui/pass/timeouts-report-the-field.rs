use std::time::Duration;

use resource_runtime::{AsyncResource, ResourceError};
use tokio_util::sync::CancellationToken;

struct Hangs;

impl AsyncResource for Hangs {
    async fn close(&mut self) -> Result<(), ResourceError> {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Ok(())
    }
}

#[derive(AsyncResource)]
struct Service {
    #[resource]
    stop: CancellationToken,
    #[resource(timeout = "50ms", name = "stuck")]
    hangs: Hangs,
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut service = Service { stop: CancellationToken::new(), hangs: Hangs };
    let err = rt.block_on(async { service.close().await.unwrap_err() });
    assert!(err.is_timeout());
    assert_eq!(err.failures().next().unwrap().path(), Some("stuck"));
    assert!(service.stop.is_cancelled());
}
