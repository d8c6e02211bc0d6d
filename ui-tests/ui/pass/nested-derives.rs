use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use resource_runtime::{AsyncResource, ResourceError};

/// Records the order of closes in a shared log.
struct Probe {
    id: usize,
    log: Arc<std::sync::Mutex<Vec<usize>>>,
    closes: Arc<AtomicUsize>,
}

impl AsyncResource for Probe {
    async fn close(&mut self) -> Result<(), ResourceError> {
        self.closes.fetch_add(1, Ordering::SeqCst);
        self.log.lock().unwrap().push(self.id);
        Ok(())
    }
}

#[derive(AsyncResource)]
struct Inner {
    #[resource]
    a: Probe,
    #[resource]
    b: Probe,
}

#[derive(AsyncResource)]
struct Outer {
    #[resource]
    first: Probe,
    #[resource]
    inner: Inner,
    #[resource]
    boxed: Box<Inner>,
}

fn main() {
    let log = Arc::new(std::sync::Mutex::new(Vec::new()));
    let closes = Arc::new(AtomicUsize::new(0));
    let probe = |id| Probe { id, log: log.clone(), closes: closes.clone() };
    let mut outer = Outer {
        first: probe(1),
        inner: Inner { a: probe(2), b: probe(3) },
        boxed: Box::new(Inner { a: probe(4), b: probe(5) }),
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        outer.enter().await.unwrap();
        outer.close().await.unwrap();
    });
    assert_eq!(closes.load(Ordering::SeqCst), 5);
    assert_eq!(*log.lock().unwrap(), [5, 4, 3, 2, 1]);
}
