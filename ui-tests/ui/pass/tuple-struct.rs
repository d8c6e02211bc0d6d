use resource_runtime::AsyncResource;
use tokio_util::sync::CancellationToken;

#[derive(AsyncResource)]
struct Pair(#[resource] CancellationToken, #[resource(skip)] &'static str, #[resource] Option<CancellationToken>);

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let first = CancellationToken::new();
    let last = CancellationToken::new();
    let mut pair = Pair(first.clone(), "pair", Some(last.clone()));
    rt.block_on(async {
        pair.enter().await.unwrap();
        pair.close().await.unwrap();
    });
    assert!(first.is_cancelled());
    assert!(last.is_cancelled());
    assert!(pair.2.is_none());
    assert_eq!(pair.1, "pair");
}
