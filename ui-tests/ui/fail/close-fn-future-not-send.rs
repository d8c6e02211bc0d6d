use std::rc::Rc;

use resource_runtime::AsyncResource;

struct Foreign;

async fn close_foreign(_: &mut Foreign) -> std::io::Result<()> {
    let rc = Rc::new(1);
    tokio::task::yield_now().await;
    drop(rc);
    Ok(())
}

#[derive(AsyncResource)]
struct Holder {
    #[resource(close = close_foreign)]
    foreign: Foreign,
}

fn main() {}
