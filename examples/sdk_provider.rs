//! A provider type of your own around a vendor's SDK client.
//!
//! The vendor SDK (faked in `vendor_sdk` below, so nothing leaves the machine) has the
//! usual shape: `Client::new` builds a client without I/O, `connect().await` opens the
//! connection and starts a keep-alive task, `send` makes a request, and
//! `shutdown().await` stops the keep-alive task and closes the connection. A client
//! dropped without `shutdown` leaves its keep-alive task running.
//!
//! `ChatProvider` wraps that client and derives `AsyncResource`:
//!
//! - `#[resource(enter = ..., close = ..., timeout = "1s")]` on the SDK field calls the
//!   SDK's own `connect` and `shutdown`, with a deadline on the shutdown;
//! - `#[resource(before_close = drain)]` stops new calls and waits for the calls still in
//!   flight before the SDK is shut down under them;
//! - `#[resource(skip)]` marks the configuration as plain data.
//!
//! It implements `ResourceClient<Prompt, Answer>`, so code written against that trait
//! (`ask_each` and `ask_in_background` below) uses it as it would any other client. The
//! provider lives inside `scope`, which closes it when the body returns.
//!
//! ```sh
//! cargo run --example sdk_provider
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use resource_runtime::{AsyncResource, ResourceError, http::ResourceClient, scope, wait_detached};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// A vendor's SDK, as it comes: a client type we cannot change, with its own error
/// type, an async connect, a request method and an async shutdown. It owns a
/// background keep-alive task. Everything is simulated in memory.
mod vendor_sdk {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use tokio::task::JoinHandle;

    /// What the SDK needs to connect.
    #[derive(Debug, Clone)]
    pub(crate) struct ClientOptions {
        pub(crate) endpoint: String,
        pub(crate) keep_alive: Duration,
    }

    /// The SDK's error type.
    #[derive(Debug)]
    pub(crate) enum SdkError {
        NotConnected,
    }

    impl std::fmt::Display for SdkError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            match self {
                SdkError::NotConnected => f.write_str("the client is not connected"),
            }
        }
    }

    impl std::error::Error for SdkError {}

    /// A request, in the SDK's own shape.
    #[derive(Debug)]
    pub(crate) struct Request {
        pub(crate) model: String,
        pub(crate) input: String,
        pub(crate) max_tokens: u32,
    }

    /// A response, in the SDK's own shape.
    #[derive(Debug)]
    pub(crate) struct Response {
        pub(crate) output: String,
        pub(crate) tokens: u32,
    }

    /// The SDK's client: a cheap handle, every clone the same connection.
    #[derive(Debug, Clone)]
    pub(crate) struct Client {
        inner: Arc<Inner>,
    }

    #[derive(Debug)]
    struct Inner {
        options: ClientOptions,
        /// The keep-alive task while connected.
        keep_alive: Mutex<Option<JoinHandle<()>>>,
        pings: Arc<AtomicU64>,
        requests: AtomicU64,
    }

    impl Client {
        /// Builds a client; nothing connects yet.
        pub(crate) fn new(options: ClientOptions) -> Client {
            Client {
                inner: Arc::new(Inner {
                    options,
                    keep_alive: Mutex::new(None),
                    pings: Arc::new(AtomicU64::new(0)),
                    requests: AtomicU64::new(0),
                }),
            }
        }

        fn keep_alive(&self) -> std::sync::MutexGuard<'_, Option<JoinHandle<()>>> {
            self.inner
                .keep_alive
                .lock()
                .unwrap_or_else(|p| p.into_inner())
        }

        /// Opens the connection (a simulated handshake) and starts the keep-alive task.
        pub(crate) async fn connect(&mut self) -> Result<(), SdkError> {
            if self.keep_alive().is_some() {
                return Ok(());
            }
            println!(
                "   [vendor-sdk] connecting to {} (simulated, no network)",
                self.inner.options.endpoint
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
            let (pings, every) = (self.inner.pings.clone(), self.inner.options.keep_alive);
            let task = tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    pings.fetch_add(1, Ordering::Relaxed);
                }
            });
            *self.keep_alive() = Some(task);
            println!("   [vendor-sdk] connected; keep-alive task pings every {every:?}");
            Ok(())
        }

        /// Sends one request; the simulated latency grows with `max_tokens`.
        pub(crate) async fn send(&self, request: Request) -> Result<Response, SdkError> {
            if self.keep_alive().is_none() {
                return Err(SdkError::NotConnected);
            }
            self.inner.requests.fetch_add(1, Ordering::Relaxed);
            let tokens = request.max_tokens.min(12 + request.input.len() as u32);
            tokio::time::sleep(Duration::from_millis(
                10 + u64::from(request.max_tokens) / 4,
            ))
            .await;
            Ok(Response {
                output: format!("[{}] an answer to '{}'", request.model, request.input),
                tokens,
            })
        }

        /// Stops the keep-alive task, then closes the connection. Does nothing on a
        /// client that is not connected.
        pub(crate) async fn shutdown(&mut self) -> Result<(), SdkError> {
            let Some(task) = self.keep_alive().take() else {
                return Ok(());
            };
            task.abort();
            let _ = task.await;
            println!(
                "   [vendor-sdk] keep-alive task stopped after {} pings",
                self.pings()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
            println!(
                "   [vendor-sdk] connection to {} closed",
                self.inner.options.endpoint
            );
            Ok(())
        }

        pub(crate) fn pings(&self) -> u64 {
            self.inner.pings.load(Ordering::Relaxed)
        }

        pub(crate) fn requests(&self) -> u64 {
            self.inner.requests.load(Ordering::Relaxed)
        }
    }
}

/// The request our code speaks, whatever the vendor.
#[derive(Debug, Clone)]
struct Prompt {
    text: String,
    max_tokens: u32,
}

impl Prompt {
    fn new(text: &str, max_tokens: u32) -> Prompt {
        Prompt {
            text: text.to_owned(),
            max_tokens,
        }
    }
}

/// The answer our code expects, whatever the vendor.
#[derive(Debug)]
struct Answer {
    text: String,
    tokens: u32,
    took: Duration,
}

/// Plain configuration: not a resource.
#[derive(Debug, Clone)]
struct ProviderConfig {
    model: String,
    drain_timeout: Duration,
}

/// Our provider. Entering it connects the SDK; closing it drains the calls in flight
/// (`before_close`), then shuts the SDK down, all within 5 s. A cheap handle, like the
/// SDK client: every clone is the same provider.
#[derive(AsyncResource, Debug, Clone)]
#[resource(before_close = drain, timeout = "5s")]
struct ChatProvider {
    #[resource(
        enter = vendor_sdk::Client::connect,
        close = vendor_sdk::Client::shutdown,
        timeout = "1s"
    )]
    sdk: vendor_sdk::Client,
    #[resource(skip)]
    config: ProviderConfig,
    #[resource(skip)]
    calls: Arc<InFlight>,
}

impl ChatProvider {
    fn new(sdk: vendor_sdk::ClientOptions, config: ProviderConfig) -> ChatProvider {
        ChatProvider {
            sdk: vendor_sdk::Client::new(sdk),
            config,
            calls: Arc::default(),
        }
    }

    /// The `before_close` hook: refuses new calls, then waits for the ones in flight.
    /// On a second close there is nothing left to do, and it does nothing.
    async fn drain(&mut self) -> Result<(), ResourceError> {
        if self.calls.closing.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let started = Instant::now();
        let pending = self.calls.count.load(Ordering::SeqCst);
        println!("   [provider] drain: new calls refused from now on; {pending} call(s) in flight");
        if tokio::time::timeout(self.config.drain_timeout, self.calls.idle())
            .await
            .is_err()
        {
            let left = self.calls.count.load(Ordering::SeqCst);
            return Err(ResourceError::other(format!(
                "{left} call(s) still in flight after {:?}",
                self.config.drain_timeout
            )));
        }
        println!(
            "   [provider] drain: every call finished, after {} ms",
            started.elapsed().as_millis()
        );
        Ok(())
    }
}

impl ResourceClient<Prompt, Answer> for ChatProvider {
    async fn call(&self, prompt: &Prompt) -> Result<Answer, ResourceError> {
        let _in_flight = self.calls.start()?;
        let started = Instant::now();
        let request = vendor_sdk::Request {
            model: self.config.model.clone(),
            input: prompt.text.clone(),
            max_tokens: prompt.max_tokens,
        };
        let response = self.sdk.send(request).await.map_err(ResourceError::other)?;
        Ok(Answer {
            text: response.output,
            tokens: response.tokens,
            took: started.elapsed(),
        })
    }
}

/// Counts the calls in flight, so that `drain` can wait for them.
#[derive(Debug, Default)]
struct InFlight {
    count: AtomicUsize,
    closing: AtomicBool,
    idle: Notify,
}

impl InFlight {
    /// Counts a call in, or refuses it once the provider is closing.
    fn start(self: &Arc<Self>) -> Result<CallGuard, ResourceError> {
        // Counted before the check: `drain` sets `closing` before it reads the count, so
        // either it waits for this call or this call sees `closing`.
        self.count.fetch_add(1, Ordering::SeqCst);
        let guard = CallGuard(self.clone());
        if self.closing.load(Ordering::SeqCst) {
            return Err(ResourceError::closed("ChatProvider"));
        }
        Ok(guard)
    }

    /// Returns once no call is in flight.
    async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if self.count.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// One call in flight; counted out when dropped.
struct CallGuard(Arc<InFlight>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Written against the trait, not the provider: it works the same with an `Endpoint`,
/// a test double, or any other client. Asks each question in turn.
async fn ask_each<C>(client: &C, questions: &[&str]) -> Result<usize, ResourceError>
where
    C: ResourceClient<Prompt, Answer>,
{
    for (i, question) in questions.iter().enumerate() {
        let answer = client.call(&Prompt::new(question, 64)).await?;
        println!(
            "   call {}: {} ({} tokens, {} ms)",
            i + 1,
            answer.text,
            answer.tokens,
            answer.took.as_millis()
        );
    }
    Ok(questions.len())
}

/// Also generic: starts a call on a task of its own, with a clone of the client.
fn ask_in_background<C>(client: &C, prompt: Prompt) -> JoinHandle<Result<Answer, ResourceError>>
where
    C: ResourceClient<Prompt, Answer> + Clone + 'static,
{
    let client = client.clone();
    tokio::spawn(async move { client.call(&prompt).await })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let provider = ChatProvider::new(
        vendor_sdk::ClientOptions {
            endpoint: "wss://api.vendor.example/v2".to_owned(),
            keep_alive: Duration::from_millis(40),
        },
        ProviderConfig {
            model: "vendor-small".to_owned(),
            drain_timeout: Duration::from_secs(2),
        },
    );
    // A clone kept outside the scope, to look at the provider once it is closed.
    let handle = provider.clone();
    println!("1. provider built; nothing is connected yet");

    println!("2. scope: entering the provider");
    let background = scope(provider, async |provider: &mut ChatProvider| {
        println!("   entered; the body runs with it");
        println!("3. one long call in the background, four calls in turn meanwhile");
        let long = ask_in_background(provider, Prompt::new("summarize the whole report", 800));
        let asked = ask_each(
            provider,
            &["hello", "what is the capital of France?", "2 + 2", "thanks"],
        )
        .await;
        println!(
            "4. the body returns with the long call still in flight; the scope closes the provider:"
        );
        (asked, long)
    })
    .await?;
    let (asked, long) = background;
    let asked = asked?;
    println!("   closed");

    let long = long.await??;
    println!(
        "5. the long call finished during the drain, not cut: {} ({} tokens, {} ms)",
        long.text,
        long.tokens,
        long.took.as_millis()
    );

    let refused = match handle.call(&Prompt::new("one more?", 16)).await {
        Ok(_) => return Err("a call after close was answered".into()),
        Err(e) => e,
    };
    println!(
        "6. a call after the close is refused: {refused} (is_closed: {})",
        refused.is_closed()
    );

    println!("\nsummary:");
    println!("  entered: SDK connected, keep-alive task started");
    println!(
        "  calls: {} answered ({asked} in turn, 1 in the background), 1 refused after close",
        handle.sdk.requests()
    );
    println!(
        "  closed in order: drain (before_close), then the SDK: keep-alive task ({} pings), then connection",
        handle.sdk.pings()
    );

    wait_detached(Duration::from_secs(5)).await?;
    Ok(())
}
