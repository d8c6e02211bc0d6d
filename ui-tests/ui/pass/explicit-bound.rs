use resource_runtime::AsyncResource;
use tokio_util::sync::CancellationToken;

trait Factory: Send {
    type Output: AsyncResource;
}

struct TokenFactory;

impl Factory for TokenFactory {
    type Output = CancellationToken;
}

#[derive(AsyncResource)]
#[resource(bound = "F: Factory")]
struct Built<F: Factory> {
    #[resource]
    product: F::Output,
    #[resource(skip)]
    factory: F,
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut built = Built::<TokenFactory> { product: CancellationToken::new(), factory: TokenFactory };
    rt.block_on(async {
        built.enter().await.unwrap();
        built.close().await.unwrap();
    });
    assert!(built.product.is_cancelled());
    let _ = &built.factory;
}
