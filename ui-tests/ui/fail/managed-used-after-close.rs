// `close` takes the guard by value: nothing can reach the resource once it is closed.
use resource_runtime::{Managed, ResourceError};
use tokio_util::sync::CancellationToken;

async fn run() -> Result<(), ResourceError> {
    let token = Managed::enter(CancellationToken::new()).await?;
    token.close().await?;
    let _ = token.is_cancelled();
    Ok(())
}

fn main() {
    let _ = run;
}
