use resource_runtime::AsyncResource;

#[derive(AsyncResource)]
#[resource(bound = "T: Send")]
struct Holder<T> {
    #[resource]
    inner: T,
}

fn main() {}
