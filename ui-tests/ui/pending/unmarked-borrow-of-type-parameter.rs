// Valid: an unmarked field `&'a T`. Rejected with E0309 "the parameter type `T` may not
// live long enough", spanned at the derive: the unmarked-field check is a free function
// generic over `'a, T` with no argument of the struct's type, so it lacks the implied
// bound `T: 'a` that the struct itself has.
use resource_runtime::AsyncResource;
use tokio_util::sync::CancellationToken;

#[derive(AsyncResource)]
struct View<'a, T> {
    #[resource]
    stop: CancellationToken,
    data: &'a T,
}

fn main() {
    let _ = View { stop: CancellationToken::new(), data: &1 }.data;
}
