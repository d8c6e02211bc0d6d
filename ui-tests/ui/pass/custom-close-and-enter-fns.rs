use std::fmt;

use resource_runtime::AsyncResource;

/// A vendor SDK's client: a foreign type with async methods of its own.
#[derive(Default)]
struct SdkClient {
    connected: bool,
    closed: bool,
}

#[derive(Debug)]
struct SdkError;

impl fmt::Display for SdkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sdk error")
    }
}

impl std::error::Error for SdkError {}

mod sdk {
    pub async fn connect(client: &mut super::SdkClient) -> Result<(), super::SdkError> {
        client.connected = true;
        Ok(())
    }
}

impl SdkClient {
    /// A method path works as well as a free function.
    async fn disconnect(&mut self) -> Result<(), SdkError> {
        self.connected = false;
        Ok(())
    }
}

async fn shutdown(client: &mut SdkClient) -> std::io::Result<()> {
    client.closed = true;
    Ok(())
}

async fn fail_close(_: &mut SdkClient) -> Result<(), String> {
    Err("refused".to_owned())
}

#[derive(AsyncResource)]
#[resource(before_close = drain, after_enter = warm_up)]
struct Provider {
    #[resource(enter = sdk::connect, close = shutdown, timeout = "1s")]
    client: SdkClient,
    #[resource(close = fail_close, name = "backup")]
    spare: SdkClient,
    #[resource(enter = sdk::connect, close = SdkClient::disconnect)]
    third: SdkClient,
    #[resource(skip)]
    events: Vec<&'static str>,
}

impl Provider {
    async fn warm_up(&mut self) -> Result<(), SdkError> {
        self.events.push("warm_up");
        Ok(())
    }

    async fn drain(&mut self) -> Result<(), std::io::Error> {
        self.events.push("drain");
        Ok(())
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut provider = Provider {
        client: SdkClient::default(),
        spare: SdkClient::default(),
        third: SdkClient::default(),
        events: Vec::new(),
    };
    let err = rt.block_on(async {
        provider.enter().await.unwrap();
        provider.close().await.unwrap_err()
    });
    assert!(provider.client.connected);
    assert!(provider.client.closed);
    assert!(!provider.spare.connected);
    assert!(!provider.third.connected, "disconnect ran");
    assert_eq!(provider.events, ["warm_up", "drain"]);
    assert_eq!(err.failures().count(), 1);
    assert_eq!(err.failures().next().unwrap().path(), Some("backup"));
}
