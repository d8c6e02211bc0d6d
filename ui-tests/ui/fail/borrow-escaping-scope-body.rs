// The body gets `&mut R` for the scope's duration only: keeping the borrow past the
// body would outlive the close.
use resource_runtime::scope;
use tokio_util::sync::CancellationToken;

async fn run() {
    let mut leaked: Option<&CancellationToken> = None;
    let _ = scope(CancellationToken::new(), async |token: &mut CancellationToken| {
        leaked = Some(token);
    })
    .await;
    let _ = leaked;
}

fn main() {
    let _ = run;
}
