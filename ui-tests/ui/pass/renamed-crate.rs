mod reexport {
    pub use resource_runtime as rt;
}

use reexport::rt::AsyncResource;
use tokio_util::sync::CancellationToken;

#[derive(AsyncResource)]
#[resource(crate = "crate::reexport::rt", timeout = "1s")]
struct Worker {
    #[resource(group = "tokens")]
    stop: CancellationToken,
    #[resource(group = "tokens", timeout = "500ms")]
    halt: CancellationToken,
    #[resource(skip)]
    name: String,
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut worker = Worker {
        stop: CancellationToken::new(),
        halt: CancellationToken::new(),
        name: "w".into(),
    };
    rt.block_on(async {
        worker.enter().await.unwrap();
        worker.close().await.unwrap();
    });
    assert!(worker.stop.is_cancelled());
    assert!(worker.halt.is_cancelled());
    assert_eq!(worker.name, "w");
}
