#![deny(warnings)]

// A generic type that contains itself through a path other than its bare name
// (`crate::Tree<T>`): such a field is another type as far as the derive can tell, so it
// is marked `boxed`, and `bound` replaces the inferred predicate, which would require
// the impl being derived.
use resource_runtime::AsyncResource;
use tokio_util::sync::CancellationToken;

#[derive(AsyncResource)]
#[resource(bound = "T: AsyncResource")]
struct Tree<T> {
    #[resource]
    leaf: T,
    #[resource(boxed)]
    children: Vec<crate::Tree<T>>,
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let grandchild = CancellationToken::new();
        let mut tree = Tree {
            leaf: CancellationToken::new(),
            children: vec![Tree {
                leaf: CancellationToken::new(),
                children: vec![Tree { leaf: grandchild.clone(), children: Vec::new() }],
            }],
        };
        tree.enter().await.unwrap();
        tree.close().await.unwrap();
        assert!(tree.leaf.is_cancelled());
        assert!(grandchild.is_cancelled());
    });
}
