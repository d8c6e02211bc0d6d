// A resource field whose type contains the type itself (a tree of workers). The
// generated close of such a field is boxed, so the close future does not contain
// itself; every node is still closed, children before their parent's earlier fields.
use resource_runtime::AsyncResource;
use tokio_util::sync::CancellationToken;

#[derive(AsyncResource)]
struct Tree {
    #[resource]
    stop: CancellationToken,
    #[resource]
    children: Vec<Tree>,
    #[resource]
    parent_link: Option<Box<Self>>,
}

fn leaf(token: &CancellationToken) -> Tree {
    Tree { stop: token.child_token(), children: Vec::new(), parent_link: None }
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let root_token = CancellationToken::new();
        let grandchild = CancellationToken::new();
        let mut tree = Tree {
            stop: root_token.clone(),
            children: vec![
                leaf(&CancellationToken::new()),
                Tree { stop: CancellationToken::new(), children: vec![Tree { stop: grandchild.clone(), children: Vec::new(), parent_link: None }], parent_link: None },
            ],
            parent_link: None,
        };
        tree.enter().await.unwrap();
        tree.close().await.unwrap();
        assert!(root_token.is_cancelled());
        assert!(grandchild.is_cancelled());
    });
}
