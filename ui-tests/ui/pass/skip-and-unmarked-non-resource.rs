#![deny(warnings)]

use resource_runtime::AsyncResource;
use tokio_util::sync::CancellationToken;

#[derive(AsyncResource)]
struct Worker<T> {
    #[resource]
    stop: CancellationToken,
    #[resource(skip)]
    also_token: CancellationToken,
    name: String,
    count: u32,
    generic: T,
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut worker = Worker {
        stop: CancellationToken::new(),
        also_token: CancellationToken::new(),
        name: "w".into(),
        count: 1,
        generic: 2u8,
    };
    rt.block_on(async {
        worker.enter().await.unwrap();
        worker.close().await.unwrap();
    });
    assert!(worker.stop.is_cancelled());
    assert!(!worker.also_token.is_cancelled());
    assert_eq!((worker.name.as_str(), worker.count, worker.generic), ("w", 1, 2));
}
