use std::rc::Rc;

use resource_runtime::AsyncResource;
use tokio_util::sync::CancellationToken;

#[derive(AsyncResource)]
struct Shared {
    #[resource]
    stop: CancellationToken,
    #[resource(skip)]
    counter: Rc<u32>,
}

fn main() {}
