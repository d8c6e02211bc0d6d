use resource_runtime::AsyncResource;

#[derive(AsyncResource)]
#[resource(bound = "T AsyncResource")]
struct Holder<T> {
    #[resource]
    inner: T,
}

fn main() {}
