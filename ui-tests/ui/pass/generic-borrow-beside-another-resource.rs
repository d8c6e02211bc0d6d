// A borrowed generic resource (`&'a mut T`) next to a second resource field. The
// inferred bound is on the referent (`T: AsyncResource`), so no lifetime of the borrow
// enters the where-clause.
use resource_runtime::AsyncResource;
use tokio_util::sync::CancellationToken;

#[derive(AsyncResource)]
struct Borrowed<'a, T: AsyncResource> {
    #[resource]
    inner: &'a mut T,
    #[resource]
    stop: CancellationToken,
}

fn main() {
    let mut inner = CancellationToken::new();
    let _ = Borrowed { inner: &mut inner, stop: CancellationToken::new() }.stop;
}
