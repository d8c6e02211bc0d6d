use resource_runtime::AsyncResource;
use tokio_util::sync::CancellationToken;

#[derive(AsyncResource)]
#[resource(timeout = "1m 30s")]
struct Service {
    #[resource(timeout = "2 s")]
    a: CancellationToken,
    #[resource(timeout = "1.5s")]
    b: CancellationToken,
    #[resource(timeout = "2000us")]
    c: CancellationToken,
    #[resource(timeout = "1 hour")]
    d: CancellationToken,
    #[resource(timeout = "1h 2min 3s 4ms")]
    e: CancellationToken,
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut service = Service {
        a: CancellationToken::new(),
        b: CancellationToken::new(),
        c: CancellationToken::new(),
        d: CancellationToken::new(),
        e: CancellationToken::new(),
    };
    rt.block_on(async { service.close().await.unwrap() });
    assert!(service.a.is_cancelled() && service.e.is_cancelled());
}
