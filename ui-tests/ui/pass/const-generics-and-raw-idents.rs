use resource_runtime::AsyncResource;
use tokio_util::sync::CancellationToken;

#[derive(AsyncResource)]
struct Ring<const N: usize> {
    #[resource]
    r#type: CancellationToken,
    slots: [u8; N],
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut ring = Ring::<4> { r#type: CancellationToken::new(), slots: [0; 4] };
    rt.block_on(async {
        ring.enter().await.unwrap();
        ring.close().await.unwrap();
    });
    assert!(ring.r#type.is_cancelled());
    assert_eq!(ring.slots.len(), 4);
}
