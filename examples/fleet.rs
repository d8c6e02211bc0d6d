//! A fleet of processes held to one rate limit: the `RateLimiter` whose schedule is in
//! Redis, in front of an API that every process calls.
//!
//! The example starts `redis-server` from PATH on a free loopback port (unless one is
//! given with `--redis URL`) and an embedded chat API on 127.0.0.1, then runs
//! `--processes N` copies of itself. Each copy makes its calls through an `Endpoint`
//! built on the shared limiter (`--rate` per second, burst 1), so the limiter is the
//! fleet's quota: every attempt of every process takes a token from it. They all call
//! for `--seconds`, in the same window.
//!
//! A third of the way in, the API answers one request `429 Too Many Requests` with a
//! wait (`--retry-after`, 1000 ms by default, sent as `Retry-After: 1`; a wait of no
//! whole seconds goes as `retry-after-ms`; no `429` with `--no-429`). The endpoint that
//! got it pauses the shared limiter, and through Redis every process stops until the
//! wait is over, not only the one that was told.
//!
//! The parent prints each process's share of the requests the API received in the
//! window, the fleet's achieved rate against the configured one (and against the
//! configured one less the pause), which process got the `429` and how long each
//! process and the whole fleet were silent after it, and the close report each process
//! sends back (its endpoint, then its limiter). Then it stops its children, its API and
//! its redis-server.
//!
//! ```sh
//! cargo run --example fleet -- --processes 4
//! cargo run --example fleet -- --processes 4 --redis redis://127.0.0.1:6379/ --rate 100
//! cargo run --example fleet -- --processes 3 --seconds 6 --retry-after 2500
//! cargo run --example fleet -- --no-429
//! cargo run --example fleet -- --help
//! ```

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper::{HeaderMap, StatusCode};
use resource_runtime::{
    AsyncResource, Operation,
    http::{CallErrorKind, Endpoint, EndpointConfig, RetryPolicy},
    limiter::{RateLimiter, RedisConfig},
    report::CloseRecorder,
    scope,
};
use serde_json::{Value, json};
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;

#[path = "embedded_api.rs"]
mod embedded_api;
#[path = "output.rs"]
mod output;
use output::say;

/// Set in a child (to its index); the rest of its settings come in the variables below.
const CHILD: &str = "FLEET_CHILD";
const CHILD_REDIS: &str = "FLEET_REDIS";
const CHILD_PREFIX: &str = "FLEET_PREFIX";
const CHILD_RATE: &str = "FLEET_RATE";
const CHILD_API: &str = "FLEET_API";
/// The window, as Unix milliseconds: start and end.
const CHILD_WINDOW: &str = "FLEET_WINDOW";

/// The header that tells the API which process a request comes from.
const PROCESS_HEADER: &str = "x-fleet-process";
/// How many calls each process keeps going at once, so that the API's latency never
/// holds a process below its share of the rate.
const CALLERS: usize = 4;

type Error = Box<dyn std::error::Error + Send + Sync>;

fn main() -> ExitCode {
    let (who, outcome) = match std::env::var(CHILD) {
        Ok(index) => (format!("fleet process {index}"), child(&index)),
        Err(_) => ("fleet".to_owned(), parent()),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{who}: {}", with_causes(&*e));
            ExitCode::FAILURE
        }
    }
}

/// An error's message followed by each of its causes.
fn with_causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(next) = cause {
        text.push_str(": ");
        text.push_str(&next.to_string());
        cause = next.source();
    }
    text
}

const USAGE: &str = "\
usage: fleet [--processes N] [--redis URL] [--rate N] [--seconds S]
             [--retry-after MS | --no-429]

N processes share one rate limit kept in Redis, each calling an API embedded in this
one through an endpoint on that limiter. A third of the way in, the API answers one
request 429 with a wait: the whole fleet pauses for it. Each process's share, the
fleet's rate, the pause and each process's close report are printed.

options:
  --processes N     how many processes, up to 256 (default: 4)
  --redis URL       a Redis server to keep the schedule in (default: a
                    redis-server started from PATH on a free loopback port)
  --rate N          requests a second for the whole fleet, burst 1 (default: 50)
  --seconds S       how long the fleet calls the API, up to 3600 (default: 3)
  --retry-after MS  how long the 429 asks the fleet to wait, in milliseconds
                    (default: 1000); it must end before the window does
  --no-429          no 429: the fleet calls at the full rate throughout
  -h, --help        print this text";

/// The most processes and the longest window the example runs.
const MAX_PROCESSES: usize = 256;
const MAX_SECONDS: u64 = 3_600;

struct Args {
    processes: usize,
    redis: Option<String>,
    rate: u32,
    seconds: u64,
    /// The wait the one `429` asks for; `None` with `--no-429`.
    retry_after: Option<Duration>,
}

fn number<T: std::str::FromStr>(flag: &str, text: &str, what: &str) -> Result<T, String> {
    text.parse()
        .map_err(|_| format!("{flag} takes {what}, not `{text}`"))
}

/// The command line's settings, or `None` for `--help`.
fn args() -> Result<Option<Args>, Error> {
    let mut args = Args {
        processes: 4,
        redis: None,
        rate: 50,
        seconds: 3,
        retry_after: Some(Duration::from_secs(1)),
    };
    let mut no_429 = false;
    let mut given = std::env::args().skip(1);
    while let Some(flag) = given.next() {
        let mut value = || given.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--processes" => {
                args.processes = number(&flag, &value()?, "a number of processes")?;
            }
            "--redis" => args.redis = Some(value()?),
            "--rate" => args.rate = number(&flag, &value()?, "a number of requests a second")?,
            "--seconds" => args.seconds = number(&flag, &value()?, "a number of seconds")?,
            "--retry-after" => {
                let ms: u64 = number(&flag, &value()?, "a number of milliseconds")?;
                args.retry_after = Some(Duration::from_millis(ms));
            }
            "--no-429" => no_429 = true,
            other => return Err(format!("unknown argument `{other}` (see --help)").into()),
        }
    }
    if no_429 {
        args.retry_after = None;
    }
    if args.processes == 0 || args.rate == 0 || args.seconds == 0 {
        return Err("--processes, --rate and --seconds must be at least 1".into());
    }
    if args.processes > MAX_PROCESSES {
        return Err(format!("--processes is at most {MAX_PROCESSES} on one machine").into());
    }
    if args.seconds > MAX_SECONDS {
        return Err(format!("--seconds is at most {MAX_SECONDS} (an hour)").into());
    }
    if let Some(wait) = args.retry_after {
        if wait.is_zero() {
            return Err("--retry-after must be at least 1 ms (or use --no-429)".into());
        }
        // The 429 comes a third of the way in; its pause must end inside the window.
        if wait.as_millis() * 3 >= u128::from(args.seconds) * 2_000 {
            return Err(format!(
                "a pause of {} ms a third of the way into a {} s window would outlast it: give a longer --seconds, a shorter --retry-after, or --no-429",
                wait.as_millis(),
                args.seconds
            )
            .into());
        }
    }
    Ok(Some(args))
}

/// A process of this example: stopped (killed and reaped) when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        // It may have exited already; either way `wait` reaps it.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn parent() -> Result<(), Error> {
    let Some(args) = args()? else {
        say!("{USAGE}");
        return Ok(());
    };
    let (_server, url) = match &args.redis {
        Some(url) => (None, url.clone()),
        None => {
            let (server, url) = start_redis()?;
            say!("started redis-server at {url}");
            (Some(server), url)
        }
    };
    // The API serves on this runtime's threads while the children run.
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(fleet(&args, &url))
}

/// One request as the API saw it.
#[derive(Debug, Clone, Copy)]
struct Arrival {
    /// When it arrived, in Unix microseconds.
    at: u64,
    process: usize,
    status: StatusCode,
}

/// What a child sent back on its stdout.
#[derive(Default)]
struct Reported {
    /// When it was connected and ready, in Unix milliseconds.
    ready: u64,
    /// Calls answered within the window.
    answered: u64,
    /// Attempts answered `429` that the endpoint retried.
    throttled: u64,
    /// Calls that failed, with why.
    failed: Vec<String>,
    /// Its close report, line by line.
    closed: Vec<String>,
    /// Whether every step of its close was ok.
    closed_ok: bool,
}

fn parse_report(index: usize, out: &str) -> Result<Reported, Error> {
    let mut reported = Reported::default();
    let mut verdict = None;
    for line in out.lines() {
        let (key, rest) = line.split_once(' ').unwrap_or((line, ""));
        let count = |rest: &str| -> Result<u64, Error> {
            rest.parse()
                .map_err(|_| format!("process {index} reported `{line}`, not a count").into())
        };
        match key {
            "ready" => reported.ready = count(rest)?,
            "answered" => reported.answered = count(rest)?,
            "throttled" => reported.throttled = count(rest)?,
            "failed" => reported.failed.push(rest.to_owned()),
            "close" => reported.closed.push(rest.to_owned()),
            "closed" => verdict = Some(rest == "ok"),
            _ => {
                return Err(format!(
                    "process {index} reported `{line}`, which is not a report line"
                )
                .into());
            }
        }
    }
    reported.closed_ok =
        verdict.ok_or(format!("process {index} ended without its close report"))?;
    Ok(reported)
}

async fn fleet(args: &Args, redis: &str) -> Result<(), Error> {
    let prefix = format!("fleet-example-{}", std::process::id());
    // Every child works in the same window, from a moment they have all started by.
    let start = unix_ms() + 1_000;
    let end = start + args.seconds * 1_000;
    // The one 429 goes to the first request a third of the way in.
    let throttle_at = (start + args.seconds * 1_000 / 3) * 1_000;
    let arrivals = Arc::new(Mutex::new(Vec::<Arrival>::new()));
    let api = {
        let arrivals = arrivals.clone();
        let retry_after = args.retry_after;
        let thrown = AtomicBool::new(false);
        embedded_api::start(move |_, headers: &HeaderMap| {
            let at = unix_us();
            let verdict = match retry_after {
                Some(wait) if at >= throttle_at && !thrown.swap(true, Ordering::SeqCst) => {
                    embedded_api::Verdict {
                        status: StatusCode::TOO_MANY_REQUESTS,
                        retry_after: Some(wait),
                    }
                }
                _ => embedded_api::Verdict::answer(),
            };
            let process = headers
                .get(PROCESS_HEADER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok());
            if let Some(process) = process {
                let mut arrivals = arrivals.lock().unwrap_or_else(|p| p.into_inner());
                arrivals.push(Arrival {
                    at,
                    process,
                    status: verdict.status,
                });
            }
            verdict
        })
        .await?
    };
    match args.retry_after {
        Some(wait) => say!(
            "embedded API at {}: one 429 a third of the way in, asking to wait {} ms",
            api.url,
            wait.as_millis()
        ),
        None => say!("embedded API at {}: no 429 (--no-429)", api.url),
    }

    let mut children = Vec::with_capacity(args.processes);
    for index in 0..args.processes {
        let child = std::process::Command::new(std::env::current_exe()?)
            .env(CHILD, index.to_string())
            .env(CHILD_REDIS, redis)
            .env(CHILD_PREFIX, &prefix)
            .env(CHILD_RATE, args.rate.to_string())
            .env(CHILD_API, &api.url)
            .env(CHILD_WINDOW, format!("{start},{end}"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()?;
        children.push(Process(child));
    }
    say!(
        "{} processes share {} requests/s (burst 1) under `{prefix}` for {} s",
        args.processes,
        args.rate,
        args.seconds
    );
    let mut reports = Vec::with_capacity(children.len());
    for (index, child) in children.into_iter().enumerate() {
        // Read on a blocking thread: the API answers on this runtime meanwhile.
        let (out, status) = tokio::task::spawn_blocking(move || {
            let mut child = child;
            let mut out = String::new();
            let read = match child.0.stdout.as_mut() {
                Some(stdout) => stdout.read_to_string(&mut out).map(|_| ()),
                None => Ok(()),
            };
            read.and_then(|()| child.0.wait())
                .map(|status| (out, status))
        })
        .await??;
        if !status.success() {
            return Err(format!("process {index} failed ({status}); its error is above").into());
        }
        reports.push(parse_report(index, &out)?);
    }
    // Every child has closed its endpoint: the API should have no connection left.
    let open_after_close = api.wait_for_no_connections(Duration::from_secs(5)).await;
    let mut arrivals = std::mem::take(&mut *arrivals.lock().unwrap_or_else(|p| p.into_inner()));
    arrivals.sort_by_key(|a| a.at);

    let (start_us, end_us) = (start * 1_000, end * 1_000);
    let in_window = |a: &&Arrival| a.at >= start_us && a.at < end_us;
    let mut counts = vec![0_u64; args.processes];
    for arrival in arrivals.iter().filter(in_window) {
        if let Some(count) = counts.get_mut(arrival.process) {
            *count += 1;
        }
    }
    let total: u64 = counts.iter().sum();
    say!();
    say!("  process   requests   share   answered   429s");
    for (index, (count, reported)) in counts.iter().zip(&reports).enumerate() {
        let share = if total == 0 {
            0.0
        } else {
            100.0 * *count as f64 / total as f64
        };
        say!(
            "  {index:>7}   {count:>8}   {share:>4.1} %   {:>8}   {:>4}",
            reported.answered,
            reported.throttled
        );
    }
    for (index, reported) in reports.iter().enumerate() {
        if reported.ready > start {
            say!(
                "  (process {index} was ready only {} ms into the window)",
                reported.ready - start
            );
        }
    }
    let achieved = total as f64 / args.seconds as f64;
    say!();
    say!(
        "fleet: {total} requests in {} s, {achieved:.1} requests/s achieved against {} configured ({:.0} %)",
        args.seconds,
        args.rate,
        100.0 * achieved / f64::from(args.rate)
    );

    let mut problems = Vec::new();
    let throttled = arrivals
        .iter()
        .find(|a| a.status == StatusCode::TOO_MANY_REQUESTS)
        .copied();
    match (args.retry_after, throttled) {
        (Some(wait), Some(throttled)) => {
            let unpaused = args.seconds as f64 - wait.as_secs_f64();
            let expected = f64::from(args.rate) * unpaused;
            say!(
                "       less the {:.1} s pause, {} requests/s × {unpaused:.1} s = {expected:.0} requests expected: {total} made ({:.0} %), the 429 and the requests booked before the pause among them",
                wait.as_secs_f64(),
                args.rate,
                100.0 * total as f64 / expected
            );
            problems.extend(print_pause(args, &arrivals, throttled, wait, start_us));
        }
        (Some(_), None) => {
            say!("no request reached the API after the moment of its 429, so nobody paused");
            problems.push("the 429 was never answered".to_owned());
        }
        (None, _) => say!("no 429 (--no-429): the fleet called at the full rate throughout"),
    }

    for (index, reported) in reports.iter().enumerate() {
        say!();
        say!("process {index}: close report (every step as it finished):");
        for line in &reported.closed {
            say!("{line}");
        }
        if !reported.closed_ok {
            problems.push(format!("process {index} did not close cleanly"));
        }
        if let Some(first) = reported.failed.first() {
            say!(
                "  {} call(s) failed; the first: {first}",
                reported.failed.len()
            );
            problems.push(format!(
                "{} call(s) of process {index} failed",
                reported.failed.len()
            ));
        }
    }
    say!();
    if open_after_close == 0 {
        say!("connections: every connection to the API was released (0 open at the server)");
    } else {
        say!("connections: {open_after_close} still open at the API after every process closed");
        problems.push(format!(
            "{open_after_close} connection(s) still open at the API"
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; ").into())
    }
}

/// Prints who got the 429 and how long each process, and the fleet, were silent
/// around the pause it asked for; returns what went against the pause.
fn print_pause(
    args: &Args,
    arrivals: &[Arrival],
    throttled: Arrival,
    wait: Duration,
    start_us: u64,
) -> Vec<String> {
    let wait_us = u64::try_from(wait.as_micros()).unwrap_or(u64::MAX);
    let (from, until) = (throttled.at, throttled.at.saturating_add(wait_us));
    let ms = |us: u64| us as f64 / 1_000.0;
    let after = |at: u64| format!("+{:.0} ms", ms(at.saturating_sub(from)));
    say!();
    say!(
        "429: to process {} at {:.3} s into the window, asking for {} ms: no process may call before {:.3} s",
        throttled.process,
        ms(from.saturating_sub(start_us)) / 1_000.0,
        wait.as_millis(),
        ms(until.saturating_sub(start_us)) / 1_000.0,
    );
    // Each process may still send the one request it booked before the pause reached
    // Redis: the schedule holds at most one booking per process, so those go within
    // a token's interval for each process (and a little for the machine's timers).
    let interval_us = 1_000_000 / u64::from(args.rate);
    let booked_us = (args.processes as u64 + 1) * interval_us + 50_000;
    say!(
        "  (requests booked before the pause keep their time: up to one per process, within {:.0} ms)",
        ms(booked_us)
    );
    say!("  process   last request   next request   silent for   paused");
    let mut problems = Vec::new();
    let mut silent_all = true;
    for index in 0..args.processes {
        let mine: Vec<u64> = arrivals
            .iter()
            .filter(|a| a.process == index)
            .map(|a| a.at)
            .collect();
        let last = mine.iter().rev().find(|at| **at < until).copied();
        let next = mine.iter().find(|at| **at >= until).copied();
        // Silent through the pause: nothing after the bookings it held until the end.
        let paused = last.is_none_or(|last| last < from.saturating_add(booked_us));
        let show = |at: Option<u64>| at.map_or_else(|| "-".to_owned(), after);
        let silent = match (last, next) {
            (Some(last), Some(next)) => format!("{:.0} ms", ms(next - last)),
            _ => "-".to_owned(),
        };
        say!(
            "  {index:>7}   {:>12}   {:>12}   {silent:>10}   {}",
            show(last),
            show(next),
            if paused { "yes" } else { "NO" }
        );
        if !paused {
            silent_all = false;
            problems.push(format!("process {index} called during the pause"));
        }
    }
    let last = arrivals.iter().rev().find(|a| a.at < until).map(|a| a.at);
    let next = arrivals.iter().find(|a| a.at >= until).map(|a| a.at);
    if let (Some(last), Some(next)) = (last, next) {
        say!(
            "  fleet: no request reached the API from {} to {} after the 429 ({:.0} ms)",
            after(last),
            after(next),
            ms(next - last)
        );
    }
    if silent_all {
        say!(
            "  every process stopped for the pause, not only process {}",
            throttled.process
        );
    }
    problems
}

/// The settings a child reads from its environment.
struct ChildSettings {
    index: usize,
    redis: String,
    prefix: String,
    rate: u32,
    api: String,
    start: u64,
    end: u64,
}

impl ChildSettings {
    fn from_env(index: &str) -> Result<Self, Error> {
        let var = |name: &str| {
            std::env::var(name).map_err(|e| format!("{name}: {e} (set by the parent process)"))
        };
        let window = var(CHILD_WINDOW)?;
        let (start, end) = window
            .split_once(',')
            .ok_or(format!("{CHILD_WINDOW} is `{window}`, not start,end"))?;
        Ok(ChildSettings {
            index: number(CHILD, index, "a process index")?,
            redis: var(CHILD_REDIS)?,
            prefix: var(CHILD_PREFIX)?,
            rate: number(CHILD_RATE, &var(CHILD_RATE)?, "a rate")?,
            api: var(CHILD_API)?,
            start: number(CHILD_WINDOW, start, "Unix milliseconds")?,
            end: number(CHILD_WINDOW, end, "Unix milliseconds")?,
        })
    }
}

/// What a child holds: declared in the order it is built and entered, closed in
/// reverse. The endpoint closes first (its calls end, its connections go), then the
/// quota (its connection to Redis goes, after any pause still on its way).
#[derive(AsyncResource)]
#[resource(timeout = "20s")]
struct Caller {
    #[resource(timeout = "5s")]
    quota: RateLimiter,
    #[resource(timeout = "10s")]
    api: Endpoint,
}

fn child(index: &str) -> Result<(), Error> {
    let settings = ChildSettings::from_env(index)?;
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
    let lines = runtime.block_on(calls(settings, steps))?;
    let mut stdout = std::io::stdout().lock();
    for line in lines {
        writeln!(stdout, "{line}")?;
    }
    stdout.flush()?;
    Ok(())
}

/// A child's work: calls through the endpoint on the fleet's quota for the window,
/// then the close; returns its report, line by line.
async fn calls(settings: ChildSettings, steps: CloseRecorder) -> Result<Vec<String>, Error> {
    let ChildSettings {
        index,
        redis,
        prefix,
        rate,
        api,
        start,
        end,
    } = settings;
    let quota = RateLimiter::builder(rate, Duration::from_secs(1))
        .burst(1)
        .redis(RedisConfig::new(redis, prefix))
        .build()?;
    let config = EndpointConfig::new(api)
        .name("chat")
        .path("chat/completions")
        .header(PROCESS_HEADER, index.to_string())
        .request_timeout(Duration::from_secs(10))
        .retry(
            RetryPolicy::default()
                .max_attempts(5)
                .initial_delay(Duration::from_millis(50))
                .max_delay(Duration::from_secs(1)),
        );
    let caller = Caller {
        api: Endpoint::builder(config).limiter(quota.clone()).build()?,
        quota,
    };
    let answered = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(Mutex::new(Vec::new()));
    // `scope` enters the caller (connects to Redis, makes the client), runs the calls
    // and closes it, whatever happened.
    let (ready, throttled) = scope(caller, async |caller: &mut Caller| {
        let ready = unix_ms();
        tokio::time::sleep(Duration::from_millis(start.saturating_sub(ready))).await;
        let workers: Vec<_> = (0..CALLERS)
            .map(|worker| {
                let api = caller.api.clone();
                let (answered, failed) = (answered.clone(), failed.clone());
                tokio::spawn(async move {
                    let mut question = 0_u64;
                    loop {
                        let left = end.saturating_sub(unix_ms());
                        if left == 0 {
                            return;
                        }
                        question += 1;
                        let request = json!({
                            "model": "fleet-model",
                            "messages": [{
                                "role": "user",
                                "content": format!("process {index}, caller {worker}, question {question}"),
                            }],
                        });
                        // A call still waiting for its token, or still on the wire,
                        // when the window ends is dropped, and not counted.
                        let call = api.call::<_, Value>(&request);
                        match tokio::time::timeout(Duration::from_millis(left), call).await {
                            Err(_) => return,
                            Ok(Ok(_)) => {
                                if unix_ms() < end {
                                    answered.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            Ok(Err(error)) => {
                                let stop = matches!(
                                    error.kind(),
                                    CallErrorKind::Closed | CallErrorKind::Limiter
                                );
                                failed
                                    .lock()
                                    .unwrap_or_else(|p| p.into_inner())
                                    .push(with_causes(&error));
                                if stop {
                                    return;
                                }
                            }
                        }
                    }
                })
            })
            .collect();
        for worker in workers {
            if let Err(e) = worker.await {
                failed
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(format!("a caller stopped: {e}"));
            }
        }
        (ready, caller.api.stats().retries_throttled)
    })
    .await?;

    let mut report = steps.take();
    report.retain(|step| step.operation == Operation::Close);
    let closed_ok = report.failures().count() == 0;
    let mut lines = vec![
        format!("ready {ready}"),
        format!("answered {}", answered.load(Ordering::Relaxed)),
        format!("throttled {throttled}"),
    ];
    let failed = std::mem::take(&mut *failed.lock().unwrap_or_else(|p| p.into_inner()));
    lines.extend(
        failed
            .iter()
            .map(|f| format!("failed {}", f.replace('\n', " "))),
    );
    lines.extend(
        report
            .to_string()
            .lines()
            .map(|line| format!("close {line}")),
    );
    lines.push(format!(
        "closed {}",
        if closed_ok { "ok" } else { "failed" }
    ));
    Ok(lines)
}

fn unix_ms() -> u64 {
    unix_us() / 1_000
}

fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Starts `redis-server` from PATH on a free loopback port, without persistence, and
/// waits until it answers `PING`.
fn start_redis() -> Result<(Process, String), Error> {
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let dir = std::env::temp_dir();
    let child = std::process::Command::new("redis-server")
        .arg("--port")
        .arg(port.to_string())
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| {
            format!(
                "redis-server could not be started from PATH ({e}): install it, or give one with --redis URL"
            )
        })?;
    let server = Process(child);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !answers_ping(port) {
        if std::time::Instant::now() > deadline {
            return Err(format!("redis-server on port {port} did not answer PING in 10 s").into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok((server, format!("redis://127.0.0.1:{port}/")))
}

fn answers_ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let mut reply = [0_u8; 7];
    stream.write_all(b"PING\r\n").is_ok()
        && stream.read_exact(&mut reply).is_ok()
        && &reply == b"+PONG\r\n"
}
