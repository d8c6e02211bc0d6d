#![deny(warnings)]

// A type that wraps a vendor's type of the same name: `sdk::Client<T>` is another type,
// so its bound is inferred like any other field's (`sdk::Client<T>: AsyncResource`,
// which holds only when `T: AsyncResource`), and its futures are not boxed.
use resource_runtime::{AsyncResource, ResourceError};
use tokio_util::sync::CancellationToken;

mod sdk {
    use resource_runtime::{AsyncResource, ResourceError};

    pub struct Client<T> {
        pub transport: T,
        pub closed: bool,
    }

    impl<T: AsyncResource> AsyncResource for Client<T> {
        async fn enter(&mut self) -> Result<(), ResourceError> {
            self.transport.enter().await
        }

        async fn close(&mut self) -> Result<(), ResourceError> {
            self.closed = true;
            self.transport.close().await
        }
    }
}

#[derive(AsyncResource)]
pub struct Client<T> {
    #[resource]
    inner: sdk::Client<T>,
}

/// The same type through a `crate::` path, nested in a `Vec`.
#[derive(AsyncResource)]
pub struct Pool<T> {
    #[resource]
    clients: Vec<crate::sdk::Client<T>>,
}

async fn run<T: AsyncResource>(client: &mut Client<T>) -> Result<(), ResourceError> {
    client.enter().await?;
    client.close().await
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let transport = CancellationToken::new();
        let mut client = Client {
            inner: sdk::Client { transport: transport.clone(), closed: false },
        };
        run(&mut client).await.unwrap();
        assert!(client.inner.closed);
        assert!(transport.is_cancelled());

        let mut pool = Pool {
            clients: vec![sdk::Client { transport: CancellationToken::new(), closed: false }],
        };
        pool.enter().await.unwrap();
        pool.close().await.unwrap();
        assert!(pool.clients.iter().all(|c| c.closed && c.transport.is_cancelled()));
    });
}
