use resource_runtime::AsyncResource;

#[derive(AsyncResource)]
struct Holder<T> {
    #[resource(timout = "1s")]
    inner: T,
}

fn main() {}
