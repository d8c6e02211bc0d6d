use resource_runtime::AsyncResource;
use tokio_util::sync::CancellationToken;

#[derive(AsyncResource)]
struct Inner {
    #[resource]
    stop: CancellationToken,
}

#[derive(AsyncResource)]
struct Borrowing<'a> {
    #[resource]
    inner: &'a mut Inner,
    #[resource]
    own: CancellationToken,
    #[resource(skip)]
    name: &'a str,
}

/// A borrowed resource of a generic type, alone: the inferred bound is
/// `&'a mut T: AsyncResource`.
#[derive(AsyncResource)]
struct GenericBorrow<'a, T: AsyncResource> {
    #[resource]
    inner: &'a mut T,
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut inner = Inner { stop: CancellationToken::new() };
    let mut borrowing = Borrowing { inner: &mut inner, own: CancellationToken::new(), name: "b" };
    let mut token = CancellationToken::new();
    let mut generic = GenericBorrow { inner: &mut token };
    rt.block_on(async {
        borrowing.enter().await.unwrap();
        borrowing.close().await.unwrap();
        generic.enter().await.unwrap();
        generic.close().await.unwrap();
    });
    assert_eq!(borrowing.name, "b");
    assert!(borrowing.own.is_cancelled());
    assert!(inner.stop.is_cancelled());
    assert!(token.is_cancelled());
}
