// Valid: an unmarked field whose type names `Self` (a parent link in a tree).
// Rejected with E0411 "cannot find type `Self` in this scope": the unmarked-field check
// is expanded into a free function, where `Self` does not exist.
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
