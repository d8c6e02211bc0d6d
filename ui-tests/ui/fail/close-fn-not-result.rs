use resource_runtime::AsyncResource;

struct Foreign;

async fn close_foreign(_: &mut Foreign) {}

#[derive(AsyncResource)]
struct Holder {
    #[resource(close = close_foreign)]
    foreign: Foreign,
}

fn main() {}
