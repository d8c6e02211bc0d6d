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
//! cargo run --example quickstart -- --stream --stop-after 40   # stopped mid-stream
//! cargo run --example quickstart -- --help
//! ```

use std::collections::BTreeMap;
use std::error::Error;
use std::io::Write as _;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use resource_runtime::{
    AsyncResource, Operation, ResourceError,
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
#[path = "output.rs"]
mod output;
use output::{say, say_part};

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
    /// Stop at this answer: close the jobs and the endpoint, mid-stream.
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
                   first answer's tokens are printed as they arrive, then a line for
                   each of the others as it ends
  --stop-after N   stop at the N-th answer, while other answers are still streaming:
                   the jobs and the endpoint close, no other request is sent, the
                   streams are cut, and the output says how many of each and that
                   every connection was released
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
            say!("{USAGE}");
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
    /// Requests the run was asked to send.
    pub(crate) requests: u64,
    /// Requests sent: answered, or failed after the endpoint took them.
    pub(crate) sent: u64,
    pub(crate) answered: u64,
    /// Requests sent that ended without their answer.
    pub(crate) failed: u64,
    /// Requests never sent: the stop came before they started, or the endpoint was
    /// closed when they came to it.
    pub(crate) not_sent: u64,
    /// Streams the close cut after they had delivered at least one event.
    pub(crate) cut_mid_answer: u64,
    pub(crate) retries: u64,
    /// The endpoint's counts, retries by cause among them.
    pub(crate) stats: EndpointStats,
    /// Why requests failed or were not sent, with how many so (`"503 Service
    /// Unavailable"`, `"cut mid-answer by the close"`, ...).
    pub(crate) failures: Vec<(String, u64)>,
    /// The close steps, one row each (`close  Provider  jobs  106 µs  ok`).
    pub(crate) closed: Vec<String>,
    /// Requests that failed or were not sent because `--stop-after` closed the jobs and
    /// the endpoint.
    pub(crate) stopped: u64,
    /// Answers that completed after the one that triggered `--stop-after`, while the
    /// close took effect.
    pub(crate) answered_after_stop: u64,
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

/// A call that failed, and how many events its stream had delivered before.
struct CallFailed {
    error: CallError,
    events: usize,
}

/// Reads a streamed answer, printing each token as it comes when `live`.
async fn read_stream(api: &Endpoint, request: &Value, live: bool) -> Result<Answered, CallFailed> {
    let started = Instant::now();
    let mut events = api
        .stream(request)
        .await
        .map_err(|error| CallFailed { error, events: 0 })?;
    let mut answer = Answered {
        text: String::new(),
        tokens: 0,
        took: Duration::ZERO,
    };
    let mut delivered = 0;
    while let Some(event) = events.next().await {
        let event = event.map_err(|error| CallFailed {
            error,
            events: delivered,
        })?;
        delivered += 1;
        let chunk: Value = event.json().unwrap_or(Value::Null);
        if let Some(token) = chunk["choices"][0]["delta"]["content"].as_str() {
            answer.tokens += 1;
            answer.text.push_str(token);
            if live {
                say_part!("{token}");
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
) -> Result<Answered, CallFailed> {
    let mut request = json!({
        "model": model,
        "messages": [{ "role": "user", "content": format!("question {i}") }],
    });
    if stream {
        request["stream"] = json!(true);
        return read_stream(api, &request, live).await;
    }
    let started = Instant::now();
    let answer = api
        .call::<_, Value>(&request)
        .await
        .map_err(|error| CallFailed { error, events: 0 })?;
    Ok(Answered {
        text: answer["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or("?")
            .to_owned(),
        tokens: 0,
        took: started.elapsed(),
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
        (CallErrorKind::Cut, _) => "cut at the close deadline".to_owned(),
        (CallErrorKind::Closed, _) => "the endpoint was closed".to_owned(),
        (CallErrorKind::Stream, _) => "a malformed event stream".to_owned(),
        (CallErrorKind::Limiter, _) => "the rate limiter refused".to_owned(),
        _ => error.to_string(),
    }
}

/// What kind of end a request that got no answer came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Sent, and failed for a reason of its own (a status, a connection error, ...).
    Failed,
    /// Sent, and its stream cut by the stop's close after at least one event.
    CutMidAnswer,
    /// Sent, and ended by the stop's close before any of its answer came.
    CutBeforeAnswer,
    /// Never sent: the stop came before it started, or the endpoint was closed when
    /// it came to it.
    NotSent,
}

/// A request that got no answer: its class, a few words to count it by, and the
/// error in full.
struct Failure {
    class: Class,
    kind: String,
    full: String,
}

impl Failure {
    /// A request the stop kept from starting.
    fn not_started() -> Self {
        Failure {
            class: Class::NotSent,
            kind: "stopped before it started".to_owned(),
            full: "not sent: the run was stopped before it started".to_owned(),
        }
    }

    /// A call that failed; `stopped` says whether the stop had closed the jobs and the
    /// endpoint by then (the close's errors are then the stop's doing).
    fn of_call(failed: &CallFailed, stopped: bool) -> Self {
        let CallFailed { error, events } = failed;
        let full = with_causes(error);
        let by_close = matches!(error.kind(), CallErrorKind::Closed | CallErrorKind::Cut)
            || (stopped && error.kind() == CallErrorKind::Limiter);
        let (class, kind) = if !by_close {
            (Class::Failed, failure_kind(error))
        } else if *events > 0 {
            (
                Class::CutMidAnswer,
                "cut mid-answer by the close".to_owned(),
            )
        } else if error.attempts() > 0 {
            (
                Class::CutBeforeAnswer,
                "cut by the close before any of its answer came".to_owned(),
            )
        } else {
            (
                Class::NotSent,
                "refused: the endpoint was closed".to_owned(),
            )
        };
        Failure { class, kind, full }
    }

    /// A request the executor did not run.
    fn refused(refused: &ResourceError) -> Self {
        if refused.is_closed() {
            return Failure::not_started();
        }
        Failure {
            class: Class::Failed,
            kind: refused.to_string(),
            full: with_causes(refused),
        }
    }
}

/// The failures of the requests, counted by kind, and the first one in full.
#[derive(Default)]
struct Failures {
    by_kind: BTreeMap<String, (Class, u64)>,
    first: Option<String>,
}

impl Failures {
    fn add(&mut self, failure: &Failure) {
        self.by_kind
            .entry(failure.kind.clone())
            .or_insert((failure.class, 0))
            .1 += 1;
        if failure.class != Class::NotSent {
            self.first.get_or_insert_with(|| failure.full.clone());
        }
    }

    /// Every kind, most frequent first.
    fn counted(&self) -> Vec<(String, u64)> {
        self.counted_where(|_| true)
    }

    /// The kinds whose class passes `keep`, most frequent first.
    fn counted_where(&self, keep: impl Fn(Class) -> bool) -> Vec<(String, u64)> {
        let mut counted: Vec<(String, u64)> = self
            .by_kind
            .iter()
            .filter(|(_, (class, _))| keep(*class))
            .map(|(k, (_, n))| (k.clone(), *n))
            .collect();
        counted.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        counted
    }

    /// How many requests of the classes `keep` passes.
    fn count_where(&self, keep: impl Fn(Class) -> bool) -> u64 {
        self.by_kind
            .values()
            .filter(|(class, _)| keep(*class))
            .map(|(_, n)| n)
            .sum()
    }
}

/// `12 × cut mid-answer by the close, 5 × ...`.
fn counted_line(counted: &[(String, u64)]) -> String {
    let why: Vec<String> = counted
        .iter()
        .map(|(kind, n)| format!("{n} × {kind}"))
        .collect();
    why.join(", ")
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

/// A request's time, always in milliseconds: `981.4 ms`, `1043.0 ms`.
fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// A time of the whole run, always in seconds: `0.31 s`, `5.82 s`.
fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// `1st`, `2nd`, `3rd`, `11th`, `22nd`.
fn nth(n: u64) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

/// The run's counts, shared by the request tasks.
struct Counts {
    answered: AtomicU64,
    /// Requests sent that failed.
    failed: AtomicU64,
    not_sent: AtomicU64,
    /// When the first and the last request went to the endpoint, in microseconds
    /// since the run started.
    first_sent: AtomicU64,
    last_sent: AtomicU64,
    started: Instant,
}

impl Counts {
    fn new(started: Instant) -> Self {
        Counts {
            answered: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            not_sent: AtomicU64::new(0),
            first_sent: AtomicU64::new(u64::MAX),
            last_sent: AtomicU64::new(0),
            started,
        }
    }

    /// Notes that a request goes to the endpoint now.
    fn sending(&self) {
        let now = u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.first_sent.fetch_min(now, Ordering::Relaxed);
        self.last_sent.fetch_max(now, Ordering::Relaxed);
    }

    /// The time from the first request sent to the last, if any was.
    fn sending_window(&self) -> Option<Duration> {
        let first = self.first_sent.load(Ordering::Relaxed);
        let last = self.last_sent.load(Ordering::Relaxed);
        (first <= last).then(|| Duration::from_micros(last - first))
    }

    /// Counts a request's end; returns how many were answered with this one.
    fn ended(&self, outcome: &Result<Answered, Failure>) -> u64 {
        let count = match outcome {
            Ok(_) => return self.answered.fetch_add(1, Ordering::SeqCst) + 1,
            Err(failure) if failure.class == Class::NotSent => &self.not_sent,
            Err(_) => &self.failed,
        };
        count.fetch_add(1, Ordering::SeqCst);
        self.answered.load(Ordering::SeqCst)
    }

    /// `  288/300 answered, 0 failed,  16.0 s`, and the requests not sent if any.
    fn progress(&self, total: u64) -> String {
        let answered = self.answered.load(Ordering::SeqCst);
        let failed = self.failed.load(Ordering::SeqCst);
        let mut line = format!("  {answered:>5}/{total} answered, {failed} failed");
        let not_sent = self.not_sent.load(Ordering::SeqCst);
        if not_sent > 0 {
            line.push_str(&format!(", {not_sent} not sent"));
        }
        line.push_str(&format!(
            ", {:>5.1} s",
            self.started.elapsed().as_secs_f64()
        ));
        line
    }
}

/// `--stop-after N`: the task whose answer is the N-th closes the jobs and the
/// endpoint at once, so no request starts after it and the open streams are cut.
struct Stop {
    after: u64,
    /// Set the moment the stop begins: a request that sees it is not submitted.
    fired: AtomicBool,
    jobs: RateLimitedExecutor,
    api: Endpoint,
    stopped: Mutex<Option<Stopped>>,
}

/// How the stop went.
struct Stopped {
    /// When it began, since the run started.
    at: Duration,
    /// The answer that stopped the run: the N-th.
    answered: u64,
    /// Calls running on the endpoint when it began, open streams included.
    in_flight: usize,
    /// The close of the jobs and of the endpoint, each as text if it failed.
    jobs: Result<(), String>,
    api: Result<(), String>,
}

impl Stop {
    fn fired(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
    }

    /// Stops the run at its `answered`-th answer; only the first call does anything.
    async fn now(&self, answered: u64, counts: &Counts) {
        if self.fired.swap(true, Ordering::SeqCst) {
            return;
        }
        let at = counts.started.elapsed();
        let in_flight = self.api.in_flight();
        // Both closes at once: the jobs' refuses every request not started yet (alone it
        // would wait for the running ones to finish), the endpoint's cuts every open
        // stream and releases its connection.
        let (jobs, api) = tokio::join!(self.jobs.close(), self.api.close());
        let stopped = Stopped {
            at,
            answered,
            in_flight,
            jobs: jobs.map_err(|e| with_causes(&e)),
            api: api.map_err(|e| with_causes(&e)),
        };
        *self.stopped.lock().unwrap_or_else(|p| p.into_inner()) = Some(stopped);
    }

    /// Stops the run if `answered` is the N-th answer.
    async fn answered(&self, answered: u64, counts: &Counts) {
        if answered == self.after {
            self.now(answered, counts).await;
        }
    }

    fn take(&self) -> Option<Stopped> {
        self.stopped
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }
}

/// How a streamed request ended, for its line (`request 7: ...`).
fn ending(outcome: &Result<Answered, Failure>, events: Option<usize>) -> String {
    match (outcome, events) {
        (Ok(a), _) => format!(
            "{} tokens, {} characters, in {}",
            a.tokens,
            a.text.chars().count(),
            ms(a.took)
        ),
        (Err(f), Some(events)) if f.class == Class::CutMidAnswer => {
            format!("{} (after {events} event(s)): {}", f.kind, f.full)
        }
        (Err(f), _) if f.class == Class::Failed => format!("failed ({}): {}", f.kind, f.full),
        (Err(f), _) => format!("{}: {}", f.kind, f.full),
    }
}

/// Whether `--stop-after` has stopped the run.
fn fired(stop: &Option<Arc<Stop>>) -> bool {
    stop.as_ref().is_some_and(|stop| stop.fired())
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
    say!("API: {base_url}");
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
    let burst = options.rate.clamp(1, 10);
    let limiter = RateLimiter::builder(options.rate, Duration::from_secs(1))
        .burst(burst)
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
    let counts = Arc::new(Counts::new(started));
    let failures = Arc::new(Mutex::new(Failures::default()));
    let finished = scope(provider, async |provider: &mut Provider| {
        let stream = options.stream;
        let stop = options.stop_after.map(|after| {
            Arc::new(Stop {
                after,
                fired: AtomicBool::new(false),
                jobs: provider.jobs.clone(),
                api: provider.api.clone(),
                stopped: Mutex::new(None),
            })
        });
        if let Some(stop) = stop.as_ref().filter(|stop| stop.after == 0) {
            stop.now(0, &counts).await;
        }
        // Streamed, the first answer is read alone, its tokens printed as they come.
        let mut first = None;
        if stream && total > 0 {
            let outcome = if fired(&stop) {
                Err(Failure::not_started())
            } else {
                say_part!("request 0: ");
                let _ = std::io::stdout().flush();
                counts.sending();
                let answer = ask(&provider.api, &provider.model, 0, true, true).await;
                let mut events = None;
                let outcome = answer.map_err(|failed| {
                    events = Some(failed.events);
                    Failure::of_call(&failed, fired(&stop))
                });
                match (&outcome, events) {
                    (Ok(a), _) => say!(
                        "  ({} tokens, {} characters, in {})",
                        a.tokens,
                        a.text.chars().count(),
                        ms(a.took)
                    ),
                    // Its first tokens are on the line: the failure goes on a line of its own.
                    (Err(_), Some(n)) if n > 0 => {
                        say!();
                        say!("request 0: {}", ending(&outcome, events));
                    }
                    (Err(_), _) => say!("{}", ending(&outcome, events)),
                }
                outcome
            };
            if let Err(failure) = &outcome {
                failures
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .add(failure);
            }
            let answered = counts.ended(&outcome);
            if let (Some(stop), Ok(_)) = (&stop, &outcome) {
                stop.answered(answered, &counts).await;
            }
            first = Some(outcome);
        }
        // The line rewritten in place is for a terminal; piped, only its last state prints.
        let live = !stream && std::io::IsTerminal::is_terminal(&std::io::stdout());
        let progress = live.then(|| tokio::spawn(progress_line(total, counts.clone())));
        let skip = u64::from(first.is_some());
        let calls: Vec<_> = (skip..total)
            .map(|i| {
                let (api, jobs, model) = (
                    provider.api.clone(),
                    provider.jobs.clone(),
                    provider.model.clone(),
                );
                let (counts, failures, stop) = (counts.clone(), failures.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut events = None;
                    let outcome = if fired(&stop) {
                        Err(Failure::not_started())
                    } else {
                        let (sending, job_stop) = (counts.clone(), stop.clone());
                        let answer = jobs
                            .execute(async move {
                                // Its turn may come just as the stop begins: then it is
                                // not sent.
                                if fired(&job_stop) {
                                    return None;
                                }
                                sending.sending();
                                Some(ask(&api, &model, i, stream, false).await)
                            })
                            .await;
                        match answer {
                            Ok(None) => Err(Failure::not_started()),
                            Ok(Some(Ok(answer))) => Ok(answer),
                            Ok(Some(Err(failed))) => {
                                events = Some(failed.events);
                                Err(Failure::of_call(&failed, fired(&stop)))
                            }
                            Err(refused) => Err(Failure::refused(&refused)),
                        }
                    };
                    if let Err(failure) = &outcome {
                        failures
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .add(failure);
                    }
                    let answered = counts.ended(&outcome);
                    // Streamed, each request says how it went as it ends (the ones never
                    // sent are counted in the summary).
                    let never_sent = matches!(&outcome, Err(f) if f.class == Class::NotSent);
                    if stream && !never_sent {
                        // A closed stdout (the output piped to `head`) ends no request.
                        let line = ending(&outcome, events);
                        let _ = writeln!(std::io::stdout(), "request {i}: {line}");
                    }
                    if let (Some(stop), Ok(_)) = (&stop, &outcome) {
                        stop.answered(answered, &counts).await;
                    }
                    (i, outcome)
                })
            })
            .collect();
        let mut answers = Vec::new();
        if let Some(first) = first {
            answers.push((0, first));
        }
        for call in calls {
            match call.await {
                Ok(answer) => answers.push(answer),
                Err(e) => eprintln!("a request's task failed: {e}"),
            }
        }
        if let Some(progress) = progress {
            progress.abort();
            let _ = progress.await;
            // The last count, not the last tick's.
            say!("\r{}", counts.progress(total));
        } else if !stream {
            say!("{}", counts.progress(total));
        }
        for (i, answer) in answers {
            let line = match &answer {
                Ok(answer) => format!("{i}: {:?}\n", answer.text),
                Err(f) if f.class == Class::NotSent => format!("{i}: not sent: {}\n", f.kind),
                Err(f) => format!("{i}: failed: {}\n", f.full),
            };
            if let Err(e) = provider.log.write_all(line.as_bytes()).await {
                eprintln!("could not write the log: {e}");
            }
        }
        let stopped = stop.as_ref().and_then(|stop| stop.take());
        (provider.api.stats(), stopped)
    })
    .await;
    let (stats, stopped) = match finished {
        Ok(outcome) => outcome,
        Err(error) => {
            // Nothing is left behind, whatever went wrong.
            let _ = tokio::fs::remove_dir_all(&dir).await;
            return Err(error.into());
        }
    };
    let elapsed = started.elapsed();
    let ok = counts.answered.load(Ordering::SeqCst);
    let failed = counts.failed.load(Ordering::SeqCst);
    let not_sent = counts.not_sent.load(Ordering::SeqCst);
    // The embedded API counts its open connections: once the provider is closed, every
    // one of them is released (the server sees each close shortly after the client's).
    let open_after_close = match &demo {
        Some(demo) => Some(demo.wait_for_no_connections(Duration::from_secs(5)).await),
        None => None,
    };

    let mut report = steps.take();
    report.retain(|step| step.operation == Operation::Close);
    say!("\nclose report (every step as it finished):\n{report}");
    let closed: Vec<String> = report.iter().map(ToString::to_string).collect();
    let failures = std::mem::take(&mut *failures.lock().unwrap_or_else(|p| p.into_inner()));
    let counted = failures.counted();
    // Sent: handed to the endpoint, and not refused or stopped before an attempt.
    let sent = ok + failed;
    if not_sent == 0 {
        say_part!("\nrequests: {sent} sent, {ok} answered, {failed} failed");
    } else {
        say_part!("\nrequests: {sent} of {total} sent, {ok} answered, {failed} failed");
    }
    let failed_why = failures.counted_where(|class| class != Class::NotSent);
    if failed_why.is_empty() {
        say!();
    } else {
        say!(" ({})", counted_line(&failed_why));
    }
    if not_sent > 0 {
        let why = failures.counted_where(|class| class == Class::NotSent);
        say!("not sent: {not_sent} ({})", counted_line(&why));
    }
    if let Some(first) = &failures.first {
        say!("first failure: {first}");
    }
    let cut_mid_answer = failures.count_where(|class| class == Class::CutMidAnswer);
    let by_stop = failures.count_where(|class| class != Class::Failed);
    let mut answered_after_stop = 0;
    match (&stopped, options.stop_after) {
        (Some(stop), Some(after)) => {
            let how = match (&stop.jobs, &stop.api) {
                (Ok(()), Ok(())) => "both closed cleanly".to_owned(),
                (jobs, api) => {
                    let failed: Vec<String> = [("the jobs", jobs), ("the endpoint", api)]
                        .into_iter()
                        .filter_map(|(what, closed)| {
                            closed.as_ref().err().map(|e| format!("{what}: {e}"))
                        })
                        .collect();
                    format!("the close failed: {}", failed.join("; "))
                }
            };
            let by = match after {
                0 => "the stop, before the first request,".to_owned(),
                n => format!("the {} answer", nth(n)),
            };
            say!(
                "--stop-after {after}: {by} closed the jobs and the endpoint at {}, with {} call(s) in flight; {how}",
                secs(stop.at),
                stop.in_flight,
            );
            answered_after_stop = ok.saturating_sub(stop.answered);
            let more = match answered_after_stop {
                0 => "no answer completed after it".to_owned(),
                1 => "1 more answer completed before the close took effect".to_owned(),
                n => format!("{n} more answers completed before the close took effect"),
            };
            say!(
                "--stop-after {after}: {more}; {} stream(s) were cut ({cut_mid_answer} mid-answer); {not_sent} request(s) never sent",
                stats.streams_cut,
            );
        }
        (None, Some(after)) => say!(
            "--stop-after {after}: not reached ({ok} answered); the endpoint closed with the provider"
        ),
        _ => {}
    }
    match open_after_close {
        Some(0) => {
            say!("connections: every connection to the API was released (0 open at the server)");
        }
        Some(open) => say!("connections: {open} still open at the API after the close"),
        None => {}
    }
    say!("attempts: {} ({})", stats.attempts, retries_line(&stats));
    // The rate of what really went out: the requests the endpoint sent, over the time
    // from the first to the last (a stop ends that time early).
    let window = counts.sending_window().unwrap_or_default();
    let when = if stopped.is_some() {
        ", before the stop"
    } else {
        ""
    };
    if sent > 1 && !window.is_zero() {
        let achieved = sent as f64 / window.as_secs_f64();
        say_part!(
            "rate: {achieved:.1} requests/s achieved against {} configured: {sent} requests sent in {}, from the first to the last{when}",
            options.rate,
            secs(window),
        );
        if achieved > f64::from(options.rate) {
            say_part!(" (above it: the limiter lets bursts of up to {burst} through)");
        }
    } else {
        say_part!(
            "rate: {sent} request(s) sent{when}, too few to measure a rate against {} configured",
            options.rate,
        );
    }
    if stats.retries_throttled > 0 {
        say!(" (each 429 paused every caller for its Retry-After)");
    } else {
        say!();
    }
    say!("time: {} in all, the close included", secs(elapsed));
    let lines = tokio::fs::read_to_string(&log_path).await?.lines().count();
    say!(
        "log: {lines} lines in {}, none lost in a buffer",
        log_path.display()
    );

    // Nothing was left to the background here; a service calls this before exiting.
    wait_detached(Duration::from_secs(5)).await?;
    tokio::fs::remove_dir_all(&dir).await?;
    if let Some(open) = open_after_close.filter(|open| *open > 0) {
        return Err(format!("{open} connection(s) still open at the API after the close").into());
    }
    // With --stop-after, the requests the stop cut or kept from being sent are
    // expected; any other failure is not.
    let stopped_by_close = if stopped.is_some() { by_stop } else { 0 };
    if let Some(stop) = &stopped
        && let (Err(e), _) | (_, Err(e)) = (&stop.jobs, &stop.api)
    {
        return Err(format!("the stop's close failed: {e}").into());
    }
    if failed + not_sent > stopped_by_close {
        return Err(format!(
            "{} of {total} requests got no answer: {}",
            failed + not_sent,
            counted_line(&counted)
        )
        .into());
    }
    Ok(Report {
        requests: total,
        sent,
        answered: ok,
        failed,
        not_sent,
        cut_mid_answer,
        retries: stats.retries(),
        stats,
        failures: counted,
        closed,
        stopped: stopped_by_close,
        answered_after_stop,
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

/// Rewrites the progress line four times a second until aborted.
async fn progress_line(total: u64, counts: Arc<Counts>) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        say_part!("\r{}", counts.progress(total));
        let _ = std::io::stdout().flush();
    }
}
