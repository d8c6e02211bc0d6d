use resource_runtime::AsyncResource;

#[derive(AsyncResource)]
struct Nothing;

#[derive(AsyncResource)]
struct Empty {}

#[derive(AsyncResource)]
struct EmptyTuple();

#[derive(AsyncResource)]
enum NoVariants {}

/// An enum without variants has no value to close, but the impl still compiles.
async fn close_never(n: &mut NoVariants) {
    n.close().await.unwrap();
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut nothing = Nothing;
        nothing.enter().await.unwrap();
        nothing.close().await.unwrap();
        Empty {}.close().await.unwrap();
        EmptyTuple().close().await.unwrap();
    });
    let _ = close_never;
}
