//! A small service that shuts down gracefully: on Ctrl-C, or after `--for` seconds.
//!
//! The service holds five resources in one struct that derives `AsyncResource`, with a
//! deadline for the whole close:
//!
//! - an `AsyncExecutor` running a periodic job every 200 ms, at most two at once;
//! - a `RateLimiter` the jobs take a token from: 4 a second for 5 jobs a second, so
//!   the jobs queue up a little;
//! - a buffered log file (`BufWriter<tokio::fs::File>` in the temp dir) with a line per
//!   job;
//! - a background worker printing a heartbeat, with its `JoinHandle`, and the
//!   `CancellationToken` that tells it to stop.
//!
//! On shutdown the fields close in reverse declaration order: the token (the worker is
//! told to stop), the worker (it gets a moment to finish on its own), the executor
//! (no new jobs; running ones finish), the limiter, and the log (flushed, so no line is
//! lost). The library's close report (`resource_runtime::report`) records each field's
//! close, printed as a table. Before it exits, the program waits for any close left to
//! the background (`wait_detached`).
//!
//! ```sh
//! cargo run --example graceful_shutdown                     # runs 2 s, then shuts down
//! cargo run --example graceful_shutdown -- --for 5          # runs 5 s; Ctrl-C stops it sooner
//! cargo run --example graceful_shutdown -- --until-ctrl-c   # runs until Ctrl-C
//! ```
//!
//! The default is a 2-second run whether or not stdin is a terminal, so that a plain
//! `cargo run` ends by itself in CI and in scripts.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use resource_runtime::{
    AsyncResource, Managed, Operation, ResourceError, executor::AsyncExecutor,
    limiter::RateLimiter, report::CloseRecorder, wait_detached,
};
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;

/// The service: declared in the order it is built, closed in reverse, all of it within
/// 5 s.
#[derive(AsyncResource)]
#[resource(timeout = "5s")]
struct Service {
    /// Closed last: flushed, then shut down.
    #[resource(timeout = "2s")]
    log: BufWriter<tokio::fs::File>,
    /// Closed after the jobs, so that no running job loses its token source.
    #[resource]
    limiter: RateLimiter,
    /// Stops taking jobs; the running ones finish (up to its 1 s shutdown deadline).
    #[resource(timeout = "3s")]
    jobs: AsyncExecutor,
    /// Closed right after the token that asked it to stop.
    #[resource(close = finish_worker, timeout = "1s")]
    worker: JoinHandle<()>,
    /// Closed first: cancelling it tells the worker to stop.
    #[resource]
    stop: CancellationToken,
    #[resource(skip)]
    log_path: PathBuf,
}

/// Closes the worker. The token, closed just before, asked it to stop, so it gets up
/// to 500 ms to return on its own; if it is still running then, the `JoinHandle`
/// adapter aborts it and waits until it has stopped.
async fn finish_worker(worker: &mut JoinHandle<()>) -> Result<(), ResourceError> {
    if worker.is_finished() {
        return worker.close().await;
    }
    match tokio::time::timeout(Duration::from_millis(500), &mut *worker).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(ResourceError::other(e)),
        Err(_) => worker.close().await,
    }
}

/// How long to run: `None` runs until Ctrl-C.
fn run_for() -> Result<Option<Duration>, String> {
    let mut run_for = Some(Duration::from_secs(2));
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--for" => {
                let secs: f64 = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|s: &f64| s.is_finite() && *s >= 0.0)
                    .ok_or("--for takes a number of seconds")?;
                run_for = Some(Duration::from_secs_f64(secs));
            }
            "--until-ctrl-c" => run_for = None,
            other => {
                return Err(format!(
                    "unknown argument `{other}`: use --for <seconds> or --until-ctrl-c"
                ));
            }
        }
    }
    Ok(run_for)
}

/// Resolves when the service should stop, with the reason.
async fn shutdown_signal(run_for: Option<Duration>) -> String {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            eprintln!("cannot listen for Ctrl-C ({e}); only --for stops the service");
            std::future::pending::<()>().await;
        }
    };
    let elapsed = async {
        match run_for {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = ctrl_c => "Ctrl-C".to_owned(),
        () = elapsed => format!("--for {:.1}s elapsed", run_for.unwrap_or_default().as_secs_f64()),
    }
}

/// One periodic job: takes a token from the limiter, then works for 120 ms, and sends
/// the line the service logs.
async fn job(n: u32, limiter: RateLimiter, results: mpsc::UnboundedSender<String>) {
    let asked = Instant::now();
    let line = match limiter.acquire(1).await {
        Ok(()) => {
            let waited = asked.elapsed();
            tokio::time::sleep(Duration::from_millis(120)).await;
            format!(
                "job {n:>2}: cache refreshed (waited {:>3} ms for a token)",
                waited.as_millis()
            )
        }
        Err(e) => format!("job {n:>2}: no token: {e}"),
    };
    let _ = results.send(line);
}

/// The background worker: a heartbeat every 500 ms until the token is cancelled.
async fn heartbeat(stop: CancellationToken, jobs: AsyncExecutor, limiter: RateLimiter) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.tick().await;
    let mut beats = 0;
    loop {
        tokio::select! {
            () = stop.cancelled() => {
                println!("  [worker] stop requested: returning after {beats} heartbeats");
                return;
            }
            _ = tick.tick() => {
                beats += 1;
                println!(
                    "  [worker] heartbeat {beats}: {} job(s) in flight, {} waiting for a token",
                    jobs.in_flight(),
                    limiter.waiting()
                );
            }
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let run_for = run_for()?;
    // Warnings and up on stderr, and the close report, which traces the library's
    // steps at DEBUG for itself alone.
    let steps = CloseRecorder::new();
    let subscriber = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(LevelFilter::WARN),
        )
        .with(steps.layer());
    tracing::subscriber::set_global_default(subscriber)?;

    let log_path = std::env::temp_dir().join(format!(
        "resource-graceful-shutdown-{}.log",
        std::process::id()
    ));
    let stop = CancellationToken::new();
    let limiter = RateLimiter::builder(4, Duration::from_secs(1))
        .burst(1)
        .build()?;
    let jobs = AsyncExecutor::builder(2)
        .shutdown_timeout(Duration::from_secs(1))
        .build()?;
    let worker = tokio::spawn(heartbeat(stop.clone(), jobs.clone(), limiter.clone()));
    let mut service = Managed::enter(Service {
        log: BufWriter::new(tokio::fs::File::create(&log_path).await?),
        limiter,
        jobs,
        worker,
        stop,
        log_path: log_path.clone(),
    })
    .await?;
    match run_for {
        Some(d) => println!(
            "service up: a job every 200 ms; stops after {:.1}s or on Ctrl-C",
            d.as_secs_f64()
        ),
        None => println!("service up: a job every 200 ms; press Ctrl-C to stop it"),
    }
    println!("log: {}", service.log_path.display());

    let (results, mut finished) = mpsc::unbounded_channel::<String>();
    let shutdown = shutdown_signal(run_for);
    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let (mut started, mut logged) = (0_u32, 0_u32);
    let reason = loop {
        tokio::select! {
            reason = &mut shutdown => break reason,
            Some(line) = finished.recv() => {
                service.log.write_all(format!("{line}\n").as_bytes()).await?;
                logged += 1;
                println!("  {line}");
            }
            _ = tick.tick() => {
                started += 1;
                let next = job(started, service.limiter.clone(), results.clone());
                // Waits for a free slot (the executor's backpressure). The job reports
                // through the channel, so its handle is dropped: the task runs on.
                drop(service.jobs.spawn(next).await?);
            }
        }
    };

    println!("\nshutdown: {reason}");
    println!(
        "  {} job(s) in flight ({} of them waiting for a token); closing the service:",
        service.jobs.in_flight(),
        service.limiter.waiting()
    );
    println!("  stop -> worker -> jobs -> limiter -> log (reverse declaration order, 5 s in all)");
    let closing = Instant::now();
    let closed = service.close().await;
    let took = closing.elapsed();
    drop(results);
    let mut during_close = 0;
    while let Some(line) = finished.recv().await {
        during_close += 1;
        println!("  {line}   <- finished while the executor shut down");
    }

    let mut report = steps.take();
    report.retain(|step| step.operation == Operation::Close);
    println!("\nclose report (every field, in the order it closed):\n{report}");
    match &closed {
        Ok(()) => println!("whole close: ok in {} ms", took.as_millis()),
        Err(e) => println!("whole close: failed in {} ms:\n{e}", took.as_millis()),
    }

    let lines = tokio::fs::read_to_string(&log_path).await?.lines().count();
    println!(
        "\njobs: {started} started, {logged} logged while running, {during_close} finished during the shutdown"
    );
    println!("log: {lines} of {logged} lines on disk (the close flushed the buffer)");
    tokio::fs::remove_file(&log_path).await?;

    // Closes left to the background (a dropped `Managed`, a cancelled `scope`) end with
    // the runtime: wait for them before exiting.
    wait_detached(Duration::from_secs(5)).await?;
    println!("wait_detached: no close left in the background; exiting");
    closed?;
    Ok(())
}
