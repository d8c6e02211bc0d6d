// An unmarked field whose type names `Self` (a parent link in a tree): the
// unmarked-field check lives in an inherent impl of the type, where `Self` exists.
use resource_runtime::AsyncResource;
use tokio_util::sync::CancellationToken;

#[derive(AsyncResource)]
struct Node {
    #[resource]
    stop: CancellationToken,
    parent: Option<std::sync::Arc<Self>>,
}

fn main() {
    let _ = Node { stop: CancellationToken::new(), parent: None }.parent;
}
