// Valid: a borrowed generic resource next to a second resource field. Rejected with
// "lifetime may not live long enough: `'a` must outlive `'static`" and "implementation
// of `Send` is not general enough", both spanned at the derive. The trigger is the
// inferred predicate `&'a mut T: AsyncResource`: with `#[resource(bound = "T:
// AsyncResource")]` the same struct compiles, and so does a struct with only the
// `&'a mut T` field.
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
