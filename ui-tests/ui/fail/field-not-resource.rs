use resource_runtime::AsyncResource;

struct Plain;

#[derive(AsyncResource)]
struct Holder {
    #[resource]
    plain: Plain,
}

fn main() {}
