use resource_runtime::AsyncResource;
use tokio_util::sync::CancellationToken;

#[derive(AsyncResource)]
enum Connection {
    Idle,
    Open(#[resource] CancellationToken, #[resource(skip)] u32),
    Draining {
        #[resource]
        stop: CancellationToken,
        #[resource(name = "drain_token")]
        drain: CancellationToken,
    },
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let open = CancellationToken::new();
    let stop = CancellationToken::new();
    let drain = CancellationToken::new();
    let mut states = vec![
        Connection::Idle,
        Connection::Open(open.clone(), 7),
        Connection::Draining { stop: stop.clone(), drain: drain.clone() },
    ];
    rt.block_on(async {
        states.enter().await.unwrap();
        states.close().await.unwrap();
    });
    assert!(open.is_cancelled());
    assert!(stop.is_cancelled());
    assert!(drain.is_cancelled());
}
