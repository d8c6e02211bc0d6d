use std::rc::Rc;

use resource_runtime::AsyncResource;

#[derive(AsyncResource)]
struct Holder {
    #[resource]
    shared: Rc<Vec<tokio_util::sync::CancellationToken>>,
}

fn main() {}
