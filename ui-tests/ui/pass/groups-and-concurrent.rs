use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use resource_runtime::{AsyncResource, ResourceError};
use tokio::sync::Barrier;
use tokio_util::sync::CancellationToken;

/// Closes only once every member of its barrier is closing: closed one after the
/// other, these would wait for ever, so finishing proves the closes ran concurrently.
struct Rendezvous(Arc<Barrier>);

impl AsyncResource for Rendezvous {
    async fn close(&mut self) -> Result<(), ResourceError> {
        self.0.wait().await;
        Ok(())
    }
}

#[derive(AsyncResource)]
struct Grouped {
    #[resource(group = "io")]
    a: Rendezvous,
    #[resource]
    alone: CancellationToken,
    #[resource(group = "io")]
    b: Rendezvous,
}

#[derive(AsyncResource)]
#[resource(concurrent, timeout = "10s")]
struct AllAtOnce {
    #[resource]
    a: Rendezvous,
    #[resource]
    b: Rendezvous,
    #[resource]
    c: Rendezvous,
}

/// Spends its task's whole coop budget on every poll until `Modest` has closed.
struct Greedy(Arc<AtomicBool>);

impl AsyncResource for Greedy {
    async fn close(&mut self) -> Result<(), ResourceError> {
        while !self.0.load(Ordering::SeqCst) {
            tokio::task::consume_budget().await;
        }
        Ok(())
    }
}

/// Needs one unit of budget to close.
struct Modest(Arc<AtomicBool>);

impl AsyncResource for Modest {
    async fn close(&mut self) -> Result<(), ResourceError> {
        tokio::task::consume_budget().await;
        self.0.store(true, Ordering::SeqCst);
        Ok(())
    }
}

/// `greedy`, declared last, is the first member of the step: polled first on every
/// poll, it would leave `modest` no budget, and the close would never end.
#[derive(AsyncResource)]
#[resource(concurrent)]
struct Unequal {
    #[resource]
    modest: Modest,
    #[resource]
    greedy: Greedy,
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let limit = Duration::from_secs(10);
        let two = Arc::new(Barrier::new(2));
        let mut grouped = Grouped {
            a: Rendezvous(two.clone()),
            alone: CancellationToken::new(),
            b: Rendezvous(two),
        };
        tokio::time::timeout(limit, grouped.close()).await.expect("the group closed one by one").unwrap();
        assert!(grouped.alone.is_cancelled());

        let three = Arc::new(Barrier::new(3));
        let mut all = AllAtOnce {
            a: Rendezvous(three.clone()),
            b: Rendezvous(three.clone()),
            c: Rendezvous(three),
        };
        tokio::time::timeout(limit, all.close()).await.expect("`concurrent` closed one by one").unwrap();

        let done = Arc::new(AtomicBool::new(false));
        let mut unequal = Unequal { modest: Modest(done.clone()), greedy: Greedy(done) };
        tokio::time::timeout(limit, unequal.close()).await.expect("a member was starved").unwrap();
    });
}
