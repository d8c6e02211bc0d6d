// An executor is configured before it exists: once built, every clone shares it, and
// no call can give one clone another shutdown deadline.
use std::time::Duration;

use resource_runtime::executor::AsyncExecutor;

fn main() {
    let executor = AsyncExecutor::new(4).unwrap();
    let _quick = executor.with_shutdown_timeout(Duration::from_millis(10));
}
