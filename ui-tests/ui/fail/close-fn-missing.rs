use resource_runtime::AsyncResource;

struct Foreign;

#[derive(AsyncResource)]
struct Holder {
    #[resource(close = close_foreign)]
    foreign: Foreign,
}

fn main() {}
