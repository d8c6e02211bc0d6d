//! `close = path` and `enter = path` wherever a field can be: in an enum's variant, in a
//! group, on a field whose type contains the type itself, on a field with a lifetime,
//! and through a path with generic arguments.

use std::marker::PhantomData;

use resource_runtime::{AsyncResource, ResourceError};

#[derive(Default)]
struct SdkClient {
    closed: bool,
}

async fn shutdown(client: &mut SdkClient) -> std::io::Result<()> {
    client.closed = true;
    Ok(())
}

/// A handle with a lifetime, closed by a function.
struct Lease<'a> {
    owner: &'a str,
    released: bool,
}

async fn release(lease: &mut Lease<'_>) -> std::io::Result<()> {
    assert!(!lease.owner.is_empty());
    lease.released = true;
    Ok(())
}

/// A typed handle closed by a generic function named with its type argument.
struct Typed<T> {
    closed: bool,
    _of: PhantomData<T>,
}

async fn close_typed<T: Send>(typed: &mut Typed<T>) -> std::io::Result<()> {
    typed.closed = true;
    Ok(())
}

#[derive(AsyncResource)]
enum Backend {
    Sdk {
        #[resource(close = shutdown)]
        client: SdkClient,
    },
    Nothing,
}

#[derive(AsyncResource)]
struct Grouped<'a> {
    #[resource(group = "io", close = shutdown)]
    a: SdkClient,
    #[resource(group = "io", close = release)]
    lease: Lease<'a>,
}

#[derive(AsyncResource)]
struct Holder<T: Send + Sync + 'static> {
    #[resource(close = close_typed::<T>)]
    typed: Typed<T>,
}

/// A tree whose children are closed by a function of the crate's own.
#[derive(AsyncResource)]
struct Tree {
    #[resource(close = close_children)]
    children: Vec<Tree>,
    #[resource(close = shutdown)]
    client: SdkClient,
}

async fn close_children(children: &mut Vec<Tree>) -> Result<(), ResourceError> {
    for child in children.iter_mut() {
        Box::pin(child.close()).await?;
    }
    Ok(())
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut backend = Backend::Sdk { client: SdkClient::default() };
        backend.close().await.unwrap();
        assert!(matches!(backend, Backend::Sdk { client: SdkClient { closed: true } }));
        Backend::Nothing.close().await.unwrap();

        let owner = String::from("worker-1");
        let mut grouped = Grouped {
            a: SdkClient::default(),
            lease: Lease { owner: &owner, released: false },
        };
        grouped.enter().await.unwrap();
        grouped.close().await.unwrap();
        assert!(grouped.a.closed && grouped.lease.released);

        let mut holder = Holder::<u8> { typed: Typed { closed: false, _of: PhantomData } };
        holder.close().await.unwrap();
        assert!(holder.typed.closed);

        let leaf = || Tree { children: Vec::new(), client: SdkClient::default() };
        let mut tree = Tree { children: vec![leaf(), leaf()], client: SdkClient::default() };
        tree.close().await.unwrap();
        assert!(tree.client.closed);
        assert!(tree.children.iter().all(|child| child.client.closed));
    });
}
