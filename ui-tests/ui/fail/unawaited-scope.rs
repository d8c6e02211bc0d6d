// A scope that is not awaited never enters, runs or closes anything.
#![deny(unused_must_use)]
use resource_runtime::scope;
use tokio_util::sync::CancellationToken;

async fn run() {
    scope(CancellationToken::new(), async |_token: &mut CancellationToken| ());
}

fn main() {
    let _ = run;
}
