//! The main job: a provider client that derives `AsyncResource` over an HTTP
//! `Endpoint`, a `RateLimitedExecutor` and a buffered log file sends a few hundred
//! requests at a set rate, rides out the 429s and 5xx the API throws, then closes and
//! reports every field's close and the request statistics.
//!
//! ```sh
//! cargo run --example quickstart                      # against an embedded API on 127.0.0.1
//! cargo run --example quickstart -- --requests 500 --rate 200
//! OPENAI_API_KEY=... cargo run --example quickstart -- --url https://api.openai.com/v1 --model gpt-4o-mini
//! cargo run --example quickstart -- --stream                   # answers streamed as server-sent events
//! cargo run --example quickstart -- --stream --stop-after 40   # the endpoint closed mid-stream
//! cargo run --example quickstart -- --help
//! ```

use std::collections::BTreeMap;
use std::error::Error;
use std::io::Write as _;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use resource_runtime::{
    AsyncResource, Operation,
    executor::{AsyncExecutor, RateLimitedExecutor},
    http::{
        CallError, CallErrorKind, Endpoint, EndpointConfig, EndpointStats, RetryPolicy, Secret,
    },
    limiter::RateLimiter,
    report::CloseRecorder,
    scope, wait_detached,
};
use serde_json::{Value, json};
use tokio::io::{AsyncWriteExt, BufWriter};
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;

#[path = "embedded_api.rs"]
mod embedded_api;

/// The provider: declared in the order it is built, closed in reverse. The jobs close
/// first (no new work; the running calls finish), then the endpoint (its client and
/// every pooled connection go), then the log (flushed, so no line is lost).
#[derive(AsyncResource)]
#[resource(timeout = "30s")]
struct Provider {
    #[resource(timeout = "2s")]
    log: BufWriter<tokio::fs::File>,
    #[resource(timeout = "10s")]
    api: Endpoint,
    #[resource]
    jobs: RateLimitedExecutor,
    #[resource(skip)]
    model: String,
}

pub(crate) struct Options {
    pub(crate) url: Option<String>,
    pub(crate) model: String,
    pub(crate) requests: u64,
    pub(crate) rate: u32,
    /// Ask for every answer as a stream of server-sent events.
    pub(crate) stream: bool,
    /// Close the endpoint once this many requests were answered, mid-stream.
    pub(crate) stop_after: Option<u64>,
}

/// What the command line asks for.
pub(crate) enum Command {
    Run(Options),
    Help,
}

pub(crate) const USAGE: &str = "\
usage: quickstart [--url URL] [--model NAME] [--requests N] [--rate N] [--stream]
                  [--stop-after N]

A provider (an HTTP endpoint, a rate-limited executor and a log file) sends chat
requests at a set rate, rides out the 429s and 5xx the API answers, then closes every
field in order and reports how each close went.

options:
  --url URL        an OpenAI-compatible API, its key in OPENAI_API_KEY
                   (default: an API embedded on 127.0.0.1 that throttles and fails
                   now and then)
  --model NAME     the model to ask (default: demo-model)
  --requests N     how many requests to send (default: 300)
  --rate N         requests a second (default: 100)
  --stream         ask for every answer as a stream of server-sent events: the
                   first answer's tokens are printed as they arrive, then one line
                   for each of the others
  --stop-after N   close the endpoint once N requests were answered, while other
                   answers are still streaming: the streams are cut, and the output
                   says how many and that every connection was released
  -h, --help       print this text";

pub(crate) fn options(args: impl IntoIterator<Item = String>) -> Result<Command, String> {
    let mut options = Options {
        url: None,
        model: "demo-model".to_owned(),
        requests: 300,
        rate: 100,
        stream: false,
        stop_after: None,
    };
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "--url" => options.url = Some(value("--url")?),
            "--model" => options.model = value("--model")?,
            "--requests" => {
                let text = value("--requests")?;
                options.requests = text
                    .parse()
                    .map_err(|_| format!("--requests takes a number, not `{text}`"))?;
            }
            "--rate" => {
                let text = value("--rate")?;
                options.rate = text.parse().map_err(|_| {
                    format!("--rate takes a number of requests a second, not `{text}`")
                })?;
            }
            "--stream" => options.stream = true,
            "--stop-after" => {
                let text = value("--stop-after")?;
                options.stop_after = Some(text.parse().map_err(|_| {
                    format!("--stop-after takes a number of answered requests, not `{text}`")
                })?);
            }
            other => return Err(format!("unknown argument `{other}` (see --help)")),
        }
    }
    Ok(Command::Run(options))
}

/// Runs the quickstart and prints any error as text, with its causes: the exit code is
/// 1 when it fails.
fn main() -> ExitCode {
    match quickstart() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", with_causes(&*error));
            ExitCode::FAILURE
        }
    }
}

/// An error's message followed by each of its causes.
pub(crate) fn with_causes(error: &(dyn Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(next) = cause {
        text.push_str(": ");
        text.push_str(&next.to_string());
        cause = next.source();
    }
    text
}

fn quickstart() -> Result<(), Box<dyn Error + Send + Sync>> {
    let options = match options(std::env::args().skip(1))? {
        Command::Help => {
            println!("{USAGE}");
            return Ok(());
        }
        Command::Run(options) => options,
    };
    let steps = CloseRecorder::new();
    // Warnings and up on stderr, and the close report, which traces the library's
    // steps at DEBUG for itself alone.
    let subscriber = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(LevelFilter::WARN),
        )
        .with(steps.layer());
    tracing::subscriber::set_global_default(subscriber)?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(run(options, steps))?;
    Ok(())
}

/// Where `run` reads the steps of the close from: the library's recorder, installed by
/// the caller (`main`, or the end-to-end test on a subscriber of its own).
pub(crate) type StepLog = CloseRecorder;

/// The statistics `run` ends with (printed as it goes; the end-to-end test in
/// `tests/tests/quickstart.rs` reads them).
#[derive(Debug)]
#[allow(dead_code)]
pub(crate) struct Report {
    pub(crate) sent: u64,
    pub(crate) answered: u64,
    pub(crate) failed: u64,
    pub(crate) retries: u64,
    /// The endpoint's counts, retries by cause among them.
    pub(crate) stats: EndpointStats,
    /// Why calls failed, with how many failed so (`"503 Service Unavailable"`, ...).
    pub(crate) failures: Vec<(String, u64)>,
    /// The close steps, one row each (`close  Provider  jobs  106 µs  ok`).
    pub(crate) closed: Vec<String>,
    /// Requests that did not complete because `--stop-after` closed the endpoint.
    pub(crate) stopped: u64,
    /// Connections the embedded API still had open after the close (`None` for
    /// another API, whose connections it cannot count).
    pub(crate) open_after_close: Option<usize>,
}

/// One answer: its text, and for a streamed one its tokens and the time it took.
struct Answered {
    text: String,
    tokens: usize,
    took: Duration,
}

/// Reads a streamed answer, printing each token as it comes when `live`.
async fn read_stream(api: &Endpoint, request: &Value, live: bool) -> Result<Answered, CallError> {
    let started = Instant::now();
    let mut events = api.stream(request).await?;
    let mut answer = Answered {
        text: String::new(),
        tokens: 0,
        took: Duration::ZERO,
    };
    while let Some(event) = events.next().await {
        let chunk: Value = event?.json().unwrap_or(Value::Null);
        if let Some(token) = chunk["choices"][0]["delta"]["content"].as_str() {
            answer.tokens += 1;
            answer.text.push_str(token);
            if live {
                print!("{token}");
                let _ = std::io::stdout().flush();
            }
        }
    }
    answer.took = started.elapsed();
    Ok(answer)
}

/// Sends request `i` and reads its answer, whole or streamed.
async fn ask(
    api: &Endpoint,
    model: &str,
    i: u64,
    stream: bool,
    live: bool,
) -> Result<Answered, CallError> {
    let mut request = json!({
        "model": model,
        "messages": [{ "role": "user", "content": format!("question {i}") }],
    });
    if stream {
        request["stream"] = json!(true);
        return read_stream(api, &request, live).await;
    }
    let answer = api.call::<_, Value>(&request).await?;
    Ok(Answered {
        text: answer["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or("?")
            .to_owned(),
        tokens: 0,
        took: Duration::ZERO,
    })
}

/// Why a call failed, in a few words to count by: its status, or what went wrong with
/// the connection.
fn failure_kind(error: &CallError) -> String {
    match (error.kind(), error.meta()) {
        (CallErrorKind::Status, Some(meta)) => {
            format!("{} {}", meta.status(), meta.reason().unwrap_or(""))
                .trim_end()
                .to_owned()
        }
        (CallErrorKind::Connect, _) => "could not connect".to_owned(),
        (CallErrorKind::Interrupted, _) => "connection broke off".to_owned(),
        (CallErrorKind::Timeout, _) => "timed out".to_owned(),
        (CallErrorKind::Decode, _) => "answer not the expected JSON".to_owned(),
        (CallErrorKind::Cut, _) => "cut at close".to_owned(),
        (CallErrorKind::Closed, _) => "stopped: the endpoint closed".to_owned(),
        (CallErrorKind::Stream, _) => "a malformed event stream".to_owned(),
        _ => error.to_string(),
    }
}

/// The failures of the calls, counted by kind, and the first one in full.
#[derive(Default)]
struct Failures {
    by_kind: BTreeMap<String, u64>,
    first: Option<String>,
}

impl Failures {
    fn add(&mut self, kind: String, full: String) {
        *self.by_kind.entry(kind).or_default() += 1;
        self.first.get_or_insert(full);
    }

    /// Most frequent first.
    fn counted(&self) -> Vec<(String, u64)> {
        let mut counted: Vec<(String, u64)> =
            self.by_kind.iter().map(|(k, n)| (k.clone(), *n)).collect();
        counted.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        counted
    }
}

/// `6 retries: 4 after 429, 2 after 5xx`, naming only the causes that happened.
fn retries_line(stats: &EndpointStats) -> String {
    let causes = [
        (stats.retries_throttled, "429"),
        (stats.retries_server_error, "5xx"),
        (stats.retries_other_status, "another status"),
        (stats.retries_timeout, "a timeout"),
        (stats.retries_connection, "a connection error"),
    ];
    let named: Vec<String> = causes
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, cause)| format!("{n} after {cause}"))
        .collect();
    match stats.retries() {
        0 => "no retries".to_owned(),
        1 => format!("1 retry: {}", named.join(", ")),
        n => format!("{n} retries: {}", named.join(", ")),
    }
}

/// The whole job; `main` only reads the arguments and installs the subscriber.
pub(crate) async fn run(
    options: Options,
    steps: StepLog,
) -> Result<Report, Box<dyn Error + Send + Sync>> {
    let (base_url, auth, demo) = match &options.url {
        Some(url) => (url.clone(), Secret::env("OPENAI_API_KEY"), None),
        None => {
            let demo = embedded_api::start(demo_rule).await?;
            (demo.url.clone(), Secret::value("demo-key"), Some(demo))
        }
    };
    println!("API: {base_url}");
    let config = EndpointConfig::new(base_url)
        .name("chat")
        .path("chat/completions")
        .bearer(auth)
        .request_timeout(Duration::from_secs(30))
        .retry(
            RetryPolicy::default()
                .max_attempts(5)
                .initial_delay(Duration::from_millis(50))
                .max_delay(Duration::from_secs(5)),
        );

    // A directory of this run's own (one process may run several, as the tests do).
    static RUNS: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "resource-quickstart-{}-{}",
        std::process::id(),
        RUNS.fetch_add(1, Ordering::Relaxed)
    ));
    tokio::fs::create_dir_all(&dir).await?;
    let log_path = dir.join("answers.log");
    let limiter = RateLimiter::builder(options.rate, Duration::from_secs(1))
        .burst(options.rate.clamp(1, 10))
        .build()?;
    let provider = Provider {
        log: BufWriter::new(tokio::fs::File::create(&log_path).await?),
        api: Endpoint::builder(config)
            .pausing_limiter(limiter.clone())
            .build()?,
        jobs: RateLimitedExecutor::new(limiter, AsyncExecutor::new(16)?),
        model: options.model.clone(),
    };

    let total = options.requests;
    let started = Instant::now();
    let failures = Arc::new(Mutex::new(Failures::default()));
    let finished = scope(provider, async |provider: &mut Provider| {
        let done = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let stream = options.stream;
        // Streamed, the first answer is read alone, its tokens printed as they come.
        let mut first = None;
        if stream && total > 0 {
            print!("request 0: ");
            let answer = ask(&provider.api, &provider.model, 0, true, true).await;
            println!();
            match &answer {
                Ok(_) => done.fetch_add(1, Ordering::Relaxed),
                Err(error) => {
                    let mut failures = failures.lock().unwrap_or_else(|p| p.into_inner());
                    failures.add(failure_kind(error), with_causes(error));
                    failed.fetch_add(1, Ordering::Relaxed)
                }
            };
            first = Some(answer.map_err(|e| with_causes(&e)));
        }
        // With --stop-after, the endpoint closes once that many answers came.
        let stopper = options.stop_after.map(|n| {
            let (api, done, failed) = (provider.api.clone(), done.clone(), failed.clone());
            tokio::spawn(async move {
                while done.load(Ordering::Relaxed) < n
                    && done.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) < total
                {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                let in_flight = api.in_flight();
                let closed = api.close().await;
                (in_flight, closed)
            })
        });
        let progress = (!stream)
            .then(|| tokio::spawn(progress_line(total, done.clone(), failed.clone(), started)));
        let skip = u64::from(first.is_some());
        let calls: Vec<_> = (skip..total)
            .map(|i| {
                let (api, jobs, model) = (
                    provider.api.clone(),
                    provider.jobs.clone(),
                    provider.model.clone(),
                );
                let (done, failed, failures) = (done.clone(), failed.clone(), failures.clone());
                tokio::spawn(async move {
                    let answer = jobs
                        .execute(async move { ask(&api, &model, i, stream, false).await })
                        .await;
                    let answer: Result<Answered, String> = match answer {
                        Ok(Ok(answer)) => Ok(answer),
                        Ok(Err(error)) => {
                            let full = with_causes(&error);
                            let mut failures = failures.lock().unwrap_or_else(|p| p.into_inner());
                            failures.add(failure_kind(&error), full.clone());
                            Err(full)
                        }
                        Err(refused) => {
                            let full = with_causes(&refused);
                            let mut failures = failures.lock().unwrap_or_else(|p| p.into_inner());
                            failures.add(refused.to_string(), full.clone());
                            Err(full)
                        }
                    };
                    match &answer {
                        Ok(_) => done.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                    };
                    (i, answer)
                })
            })
            .collect();
        let mut answers = Vec::new();
        if let Some(first) = first {
            answers.push((0, first));
        }
        for call in calls {
            if let Ok(answer) = call.await {
                answers.push(answer);
            }
        }
        for (i, answer) in answers {
            let line = match &answer {
                Ok(answer) => format!("{i}: {:?}\n", answer.text),
                Err(e) => format!("{i}: failed: {e}\n"),
            };
            if stream && i > 0 {
                match &answer {
                    Ok(a) => println!(
                        "request {i}: {} tokens, {} characters, in {:.0?}",
                        a.tokens,
                        a.text.chars().count(),
                        a.took
                    ),
                    Err(e) => println!("request {i}: failed: {e}"),
                }
            }
            if let Err(e) = provider.log.write_all(line.as_bytes()).await {
                eprintln!("could not write the log: {e}");
            }
        }
        if let Some(progress) = progress {
            progress.abort();
            let _ = progress.await;
            println!();
        }
        let stopped = match stopper {
            Some(stopper) => match stopper.await {
                Ok((in_flight, closed)) => Some((in_flight, closed.map_err(|e| e.to_string()))),
                Err(e) => Some((0, Err(e.to_string()))),
            },
            None => None,
        };
        (
            done.load(Ordering::Relaxed),
            failed.load(Ordering::Relaxed),
            provider.api.stats(),
            stopped,
        )
    })
    .await;
    let (ok, failed, stats, stopped) = match finished {
        Ok(counts) => counts,
        Err(error) => {
            // Nothing is left behind, whatever went wrong.
            let _ = tokio::fs::remove_dir_all(&dir).await;
            return Err(error.into());
        }
    };
    let elapsed = started.elapsed();
    // The embedded API counts its open connections: once the provider is closed, every
    // one of them is released (the server sees each close shortly after the client's).
    let open_after_close = match &demo {
        Some(demo) => Some(demo.wait_for_no_connections(Duration::from_secs(5)).await),
        None => None,
    };

    let mut report = steps.take();
    report.retain(|step| step.operation == Operation::Close);
    println!("\nclose report (every step as it finished):\n{report}");
    let closed: Vec<String> = report.iter().map(ToString::to_string).collect();
    let failures = std::mem::take(&mut *failures.lock().unwrap_or_else(|p| p.into_inner()));
    let counted = failures.counted();
    print!("\nrequests: {total} sent, {ok} answered, {failed} failed");
    if counted.is_empty() {
        println!();
    } else {
        let why: Vec<String> = counted
            .iter()
            .map(|(kind, n)| format!("{n} × {kind}"))
            .collect();
        println!(" ({})", why.join(", "));
    }
    if let Some(first) = &failures.first {
        println!("first failure: {first}");
    }
    if let Some((in_flight, closed)) = &stopped {
        let how = match closed {
            Ok(()) => "it closed cleanly".to_owned(),
            Err(e) => format!("its close failed: {e}"),
        };
        println!(
            "--stop-after {}: the endpoint closed with {in_flight} call(s) in flight; {} stream(s) were cut mid-answer; {how}",
            options.stop_after.unwrap_or(0),
            stats.streams_cut
        );
    }
    match open_after_close {
        Some(0) => {
            println!(
                "connections: every connection to the API was released (0 open at the server)"
            );
        }
        Some(open) => println!("connections: {open} still open at the API after the close"),
        None => {}
    }
    println!("attempts: {} ({})", stats.attempts, retries_line(&stats));
    print!(
        "rate: {:.1} requests/s achieved against {} configured, in {elapsed:.1?}",
        total as f64 / elapsed.as_secs_f64(),
        options.rate
    );
    if stats.retries_throttled > 0 {
        println!(" (each 429 paused every caller for its Retry-After)");
    } else {
        println!();
    }
    let lines = tokio::fs::read_to_string(&log_path).await?.lines().count();
    println!(
        "log: {lines} lines in {}, none lost in a buffer",
        log_path.display()
    );

    // Nothing was left to the background here; a service calls this before exiting.
    wait_detached(Duration::from_secs(5)).await?;
    tokio::fs::remove_dir_all(&dir).await?;
    if let Some(open) = open_after_close.filter(|open| *open > 0) {
        return Err(format!("{open} connection(s) still open at the API after the close").into());
    }
    // With --stop-after, the requests the close stopped are expected; any other failure
    // is not.
    let stopped_by_close = counted
        .iter()
        .filter(|(kind, _)| stopped.is_some() && kind.starts_with("stopped"))
        .map(|(_, n)| n)
        .sum::<u64>();
    if let Some((_, Err(e))) = &stopped {
        return Err(format!("the endpoint's close failed: {e}").into());
    }
    if failed > stopped_by_close {
        let why: Vec<String> = counted
            .iter()
            .map(|(kind, n)| format!("{n} × {kind}"))
            .collect();
        return Err(format!("{failed} of {total} requests failed: {}", why.join(", ")).into());
    }
    Ok(Report {
        sent: total,
        answered: ok,
        failed,
        retries: stats.retries(),
        stats,
        failures: counted,
        closed,
        stopped: stopped_by_close,
        open_after_close,
    })
}

/// The embedded API's rule for the quickstart: it asks every 100th caller to come back
/// later (429 with `Retry-After: 1`, which pauses every caller for a second) and fails
/// every 75th (503, retried after a short backoff); it answers the others.
fn demo_rule(n: u64, _: &hyper::HeaderMap) -> embedded_api::Verdict {
    use hyper::StatusCode;
    if n.is_multiple_of(100) {
        embedded_api::Verdict {
            status: StatusCode::TOO_MANY_REQUESTS,
            retry_after: Some(Duration::from_secs(1)),
        }
    } else if n.is_multiple_of(75) {
        embedded_api::Verdict {
            status: StatusCode::SERVICE_UNAVAILABLE,
            retry_after: None,
        }
    } else {
        embedded_api::Verdict::answer()
    }
}

async fn progress_line(total: u64, done: Arc<AtomicU64>, failed: Arc<AtomicU64>, started: Instant) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        let (done, failed) = (done.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
        print!(
            "\r  {done:>5}/{total} answered, {failed} failed, {:>5.1}s",
            started.elapsed().as_secs_f64()
        );
        let _ = std::io::stdout().flush();
    }
}
