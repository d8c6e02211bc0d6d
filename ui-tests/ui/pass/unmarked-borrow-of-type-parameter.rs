// An unmarked field `&'a T`: the unmarked-field check lives in an inherent impl of the
// type, so it has the type's implied bound `T: 'a`.
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
