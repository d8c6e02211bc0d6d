use resource_runtime::AsyncResource;

struct Foreign;

#[derive(AsyncResource)]
struct Holder {
    #[resource(close)]
    foreign: Foreign,
}

fn main() {}
