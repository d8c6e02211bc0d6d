// A scope owns its resource so that, if the scope's future is dropped half-way, the
// close can finish as a detached task; a resource borrowing from the caller's stack
// frame could not outlive it, so it must be `'static`.
use resource_runtime::{AsyncResource, ResourceError, scope};

struct Borrowing<'a> {
    counter: &'a mut u32,
}

impl AsyncResource for Borrowing<'_> {
    async fn close(&mut self) -> Result<(), ResourceError> {
        *self.counter += 1;
        Ok(())
    }
}

async fn run() {
    let mut closes = 0;
    let _ = scope(Borrowing { counter: &mut closes }, async |_b: &mut Borrowing<'_>| ()).await;
}

fn main() {
    let _ = run;
}
