use resource_runtime::AsyncResource;
use tokio_util::sync::CancellationToken;

#[derive(AsyncResource)]
struct Pool<T, M>
where
    M: Clone,
{
    #[resource]
    members: Vec<T>,
    #[resource(skip)]
    meta: M,
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let token = CancellationToken::new();
    let mut pool = Pool { members: vec![token.clone()], meta: String::from("m") };
    rt.block_on(async {
        pool.enter().await.unwrap();
        pool.close().await.unwrap();
    });
    assert!(token.is_cancelled());
    assert_eq!(pool.meta, "m");
}
