//! A provider client that derives `AsyncResource`: a buffered log file, a background
//! task and a vendor SDK client, entered, used and closed. It prints every enter and
//! close step as it finishes: which field, in which order, how long, and the outcome.
//!
//! Run it with `cargo run --example quickstart`.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use resource_runtime::{
    AsyncExecutor, AsyncResource, Managed, RateLimitedExecutor, RateLimiter, ResourceError, scope,
    wait_detached,
};
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::layer::SubscriberExt;

/// A stand-in for a vendor SDK's client: a foreign type with async connect and
/// disconnect functions of its own, and no `AsyncResource` impl.
struct SdkClient {
    connected: bool,
    sent: u64,
    /// How long `disconnect` takes; the second provider's client hangs.
    disconnect_takes: Duration,
}

impl SdkClient {
    async fn connect(&mut self) -> io::Result<()> {
        tokio::time::sleep(Duration::from_millis(15)).await;
        self.connected = true;
        Ok(())
    }

    async fn send(&mut self, prompt: &str) -> io::Result<String> {
        if !self.connected {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "client is closed",
            ));
        }
        self.sent += 1;
        Ok(format!("echo: {prompt}"))
    }

    async fn disconnect(&mut self) -> io::Result<()> {
        if !self.connected {
            return Ok(());
        }
        tokio::time::sleep(self.disconnect_takes).await;
        self.connected = false;
        Ok(())
    }
}

// The functions `#[resource(enter = ..., close = ...)]` name: `async fn(&mut T) -> Result<(), E>`.
async fn connect(client: &mut SdkClient) -> io::Result<()> {
    client.connect().await
}

async fn disconnect(client: &mut SdkClient) -> io::Result<()> {
    client.disconnect().await
}

/// Fields close in reverse declaration order: the client first, the log last, so the
/// log still takes what the others write while closing.
#[derive(AsyncResource)]
#[resource(timeout = "5s", before_close = write_summary)]
struct Provider {
    #[resource(timeout = "2s")]
    log: BufWriter<tokio::fs::File>,
    #[resource]
    heartbeat: JoinHandle<()>,
    #[resource]
    stop: CancellationToken,
    /// Background jobs: at most 4 at once, 100 a second in bursts of 5.
    #[resource]
    jobs: RateLimitedExecutor,
    #[resource(enter = connect, close = disconnect, timeout = "300ms")]
    client: SdkClient,
    #[resource(skip)]
    beats: Arc<AtomicU64>,
}

impl Provider {
    async fn open(path: &std::path::Path, disconnect_takes: Duration) -> io::Result<Self> {
        let stop = CancellationToken::new();
        let beats = Arc::new(AtomicU64::new(0));
        let heartbeat = tokio::spawn({
            let (stop, beats) = (stop.clone(), beats.clone());
            async move {
                let mut tick = tokio::time::interval(Duration::from_millis(5));
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tick.tick() => { beats.fetch_add(1, Ordering::Relaxed); }
                    }
                }
            }
        });
        Ok(Provider {
            log: BufWriter::new(tokio::fs::File::create(path).await?),
            heartbeat,
            stop,
            jobs: RateLimitedExecutor::new(
                RateLimiter::new(100, Duration::from_secs(1)).with_burst(5),
                AsyncExecutor::new(4),
            ),
            client: SdkClient {
                connected: false,
                sent: 0,
                disconnect_takes,
            },
            beats,
        })
    }

    async fn ask(&mut self, prompt: &str) -> io::Result<String> {
        let answer = self.client.send(prompt).await?;
        self.log
            .write_all(format!("{prompt} -> {answer}\n").as_bytes())
            .await?;
        Ok(answer)
    }

    /// `before_close`: runs before any field closes, while the log is still open. It
    /// runs on every close, so it does nothing once the client is gone: a derived
    /// close is idempotent when its hooks and its fields' closes are.
    async fn write_summary(&mut self) -> io::Result<()> {
        if !self.client.connected {
            return Ok(());
        }
        let line = format!(
            "sent {} requests, {} heartbeats\n",
            self.client.sent,
            self.beats.load(Ordering::Relaxed)
        );
        self.log.write_all(line.as_bytes()).await
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let steps = StepLog::default();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(steps.clone()))?;

    let dir = std::env::temp_dir().join(format!("resource-quickstart-{}", std::process::id()));
    tokio::fs::create_dir_all(&dir).await?;
    let path = dir.join("provider.log");

    println!("== a provider used in a scope: entered, used, closed on the way out");
    let provider = Provider::open(&path, Duration::from_millis(20)).await?;
    let asked = scope(provider, async |provider: &mut Provider| {
        for prompt in ["hello", "how are you", "bye"] {
            provider.ask(prompt).await?;
        }
        // 20 jobs submitted at once run under the provider's rate limit.
        let started = tokio::time::Instant::now();
        let jobs: Vec<_> = (0..20_u64)
            .map(|i| {
                let executor = provider.jobs.clone();
                tokio::spawn(async move { executor.execute(async move { i * i }).await })
            })
            .collect();
        let mut done = 0;
        for job in jobs {
            if matches!(job.await, Ok(Ok(_))) {
                done += 1;
            }
        }
        println!(
            "{done} jobs at 100/s in bursts of 5 took {:.0?} (the rate allows 150 ms)",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(30)).await;
        Ok::<_, io::Error>(provider.client.sent)
    })
    .await;
    steps.print();
    match &asked {
        Ok(sent) => println!("scope: ok, the body's result: {sent:?}"),
        Err(e) => println!("scope: close failed\n{e}"),
    }
    let log = tokio::fs::read_to_string(&path).await?;
    println!(
        "the log file holds {} lines, none lost in a buffer:",
        log.lines().count()
    );
    for line in log.lines() {
        println!("    {line}");
    }
    asked??;

    println!("\n== a managed provider whose SDK client hangs on disconnect");
    let provider = Managed::enter(Provider::open(&path, Duration::from_secs(3600)).await?).await?;
    let mut provider = provider;
    provider.ask("one more").await?;
    let beats = provider.beats.clone();
    let closed = provider.close().await;
    steps.print();
    println!("close: {}", outcome(&closed));
    let error = closed.expect_err("the hung client is reported");
    for failure in error.failures() {
        println!(
            "    failed field: {:?}, timeout: {}",
            failure.path(),
            failure.is_timeout()
        );
    }
    let stopped_at = beats.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(20)).await;
    println!(
        "heartbeat stopped: {}, log flushed: {}",
        beats.load(Ordering::Relaxed) == stopped_at,
        tokio::fs::read_to_string(&path).await?.contains("one more")
    );

    println!("\n== a provider dropped without close, and shutdown");
    let forgotten = Managed::enter(Provider::open(&path, Duration::from_millis(20)).await?).await?;
    drop(forgotten); // a warning, and the close runs in the background
    // Before exiting, wait for every close that was left to the background.
    wait_detached(Duration::from_secs(5)).await?;
    steps.print();
    println!("every detached close finished");

    tokio::fs::remove_dir_all(&dir).await?;
    Ok(())
}

fn outcome(result: &Result<(), ResourceError>) -> String {
    match result {
        Ok(()) => "ok".to_owned(),
        Err(e) => format!("error\n{e}"),
    }
}

/// A `tracing` layer that keeps the steps the derive reports (the `resource.enter`
/// and `resource.close` spans) in the order they finish.
#[derive(Clone, Default)]
struct StepLog {
    rows: Arc<Mutex<Vec<String>>>,
}

impl StepLog {
    fn print(&self) {
        let rows = std::mem::take(&mut *self.rows.lock().unwrap_or_else(|p| p.into_inner()));
        println!(
            "    {:<3} {:<6} {:<20} {:<10} {:>10}  outcome",
            "#", "step", "type", "field", "took"
        );
        for (i, row) in rows.iter().enumerate() {
            println!("    {:<3} {row}", i + 1);
        }
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    resource: String,
    path: String,
    elapsed_us: u64,
    outcome: String,
}

impl tracing::field::Visit for Fields {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        match field.name() {
            "resource" => self.resource = value.to_owned(),
            "outcome" => self.outcome = value.to_owned(),
            _ => {}
        }
    }

    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        if field.name() == "elapsed_us" {
            self.elapsed_us = value;
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "path" => self.path = format!("{value:?}"),
            "message" => self.message = format!("{value:?}"),
            _ => {}
        }
    }
}

impl<S> tracing_subscriber::Layer<S> for StepLog
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if !attrs.metadata().name().starts_with("resource.") {
            return;
        }
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(fields);
        }
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: tracing_subscriber::layer::Context<'_, S>) {
        if *event.metadata().level() <= tracing::Level::WARN {
            let mut fields = Fields::default();
            event.record(&mut fields);
            let row = format!("{}: {}", event.metadata().level(), fields.message);
            self.rows
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(row);
            return;
        }
        let Some(span) = ctx.event_span(event) else {
            return;
        };
        let name = span.name();
        let Some(step) = name
            .strip_prefix("resource.")
            .filter(|s| *s == "enter" || *s == "close")
        else {
            return;
        };
        let mut done = Fields::default();
        event.record(&mut done);
        let extensions = span.extensions();
        let Some(fields) = extensions.get::<Fields>() else {
            return;
        };
        let took = match done.elapsed_us {
            us @ 0..1_000 => format!("{us} µs"),
            us => format!("{:.1} ms", us as f64 / 1_000.0),
        };
        let row = format!(
            "{step:<6} {:<20} {:<10} {took:>10}  {}",
            fields.resource, fields.path, done.outcome
        );
        self.rows
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(row);
    }
}
