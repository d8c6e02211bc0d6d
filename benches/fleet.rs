//! A fleet of processes held to one quota by the `RateLimiter` whose schedule is in
//! Redis, beside the fixed-window counter most projects write, against one
//! `redis-server` this bench starts itself. Run:
//!
//! ```sh
//! cargo bench -p resource-benches --bench fleet
//! ```
//!
//! The bench starts `redis-server` from PATH on a free loopback port (no persistence, a
//! temporary directory of its own) and runs copies of itself as the fleet's processes
//! (`FLEET_BENCH_CHILD` marks a copy), each on a current-thread tokio runtime, since
//! the fleet shares the machine's cores. Each copy connects, says it is ready, and is
//! told one wall-clock instant at which every copy starts its waiters, and the span in
//! which every copy records its admissions: one `SystemTime` reading (Unix
//! microseconds) right after each `acquire` returns. The limiter does not hand out the
//! server's `TIME` of an admission; the processes and the server run on one machine,
//! so they read one clock. The rows, all in one run:
//!
//! 1. Fleet accuracy and fairness: 4 processes × 16 waiters, each waiter looping
//!    `acquire(1)` on `RateLimiter::builder(rate, 1 s).burst(burst).redis(..)`, for
//!    rate ∈ {100, 1000}/s × burst ∈ {1, 10}; 0.5 s of warm-up (which spends the
//!    initial burst), then 3 s measured. Per configuration: the fleet's admissions
//!    over the span against the rate (target ≥ 0.98), the most admissions in any
//!    closed window of 10 ms, 100 ms and 1 s against the limiter's bound
//!    `burst + 1 + floor(w × rate)` (the `+ 1` for a timer's tick), and Jain's fairness
//!    index over the 4 processes' counts, `(Σx)² / (n·Σx²)` (target ≥ 0.99). Beside
//!    them, the `(booked)` line: the instants the server booked, rebuilt from its
//!    `MONITOR` feed (each script's `TIME` and the `tat` it wrote), checked against
//!    GCRA's own bound `burst + floor(w × rate)`, and how long after its booked
//!    instant each admission was recorded (median, p99, most; each process matched to
//!    the connection whose bookings its admissions follow): the way from the booking
//!    to the waiter, through the reply, the timer and the scheduler.
//! 2. The peer, same load and rates: a fixed window of 1 s, `INCR {prefix}:{unix
//!    second}` and `EXPIRE` 2 s in one pipeline; admitted when the count is at most the
//!    rate, otherwise the waiter sleeps until the next window and tries again. Its
//!    measured span starts half-way through a window, so it holds exactly 3 windows.
//!    It keeps the rate per window, but admits a window's whole quota at its start:
//!    its windows are shown against `rate × w`, and its worst 1 s window against the
//!    limit.
//! 3. Cost: the round trips per admitted token of one uncontended waiter (rate and
//!    burst 1 000 000, so it never waits): the commands the client sent, from
//!    `MONITOR` (target 1.0), beside `INFO commandstats` deltas (`EVALSHA`, and the
//!    commands the script runs inside the server); the latency of an uncontended
//!    `acquire(1)` on the Redis limiter and on the local one
//!    (`RateLimiter::new(1_000_000, 1 s)`), 20 interleaved rounds of 200, median and
//!    p99; and the most admissions per second the fleet (4 × 16) gets from one server
//!    (rate and burst 1 000 000, 2 s measured) beside
//!    `redis-benchmark -n 100000 -c 4 EVALSHA` of the limiter's own acquisition script
//!    (the arguments of those acquisitions) and of `return 1`.
//!
//! The figures are printed and written to `target/bench-results/fleet.json`, a flat
//! object of row → number, with the machine's 1-minute load average before and after.
//! Run as a test (`cargo test --benches`, no `--bench` argument), it only checks one
//! short configuration of each limiter, and skips when `redis-server` is not on PATH.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use resource_runtime::limiter::{RateLimiter, RedisConfig};

/// Set in a child process: which limiter it runs (`limiter` or `fixed_window`).
const CHILD: &str = "FLEET_BENCH_CHILD";
/// The child's settings: `url prefix rate burst waiters`.
const CHILD_SETTINGS: &str = "FLEET_BENCH_SETTINGS";

/// The acquisition script of the Redis-backed limiter, for `redis-benchmark`.
const ACQUIRE_LUA: &str = include_str!("../resource-runtime/src/limiter/acquire.lua");

type Error = Box<dyn std::error::Error + Send + Sync>;

fn main() -> ExitCode {
    let outcome = match std::env::var(CHILD) {
        Ok(kind) => child(&kind),
        Err(_) => parent(),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fleet: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The two limiters a fleet can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// `RateLimiter` with its schedule in Redis.
    Limiter,
    /// `INCR` + `EXPIRE` on a key per 1 s window.
    FixedWindow,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Limiter => "limiter",
            Kind::FixedWindow => "fixed_window",
        }
    }

    fn parse(name: &str) -> Result<Kind, Error> {
        match name {
            "limiter" => Ok(Kind::Limiter),
            "fixed_window" => Ok(Kind::FixedWindow),
            other => Err(format!("{CHILD}={other}: not a limiter of this bench").into()),
        }
    }
}

/// The spans of one fleet run.
#[derive(Clone, Copy, Debug)]
struct Timing {
    warm_up: Duration,
    measure: Duration,
}

// ---------------------------------------------------------------------------------
// The child: one process of the fleet.
// ---------------------------------------------------------------------------------

fn child(kind: &str) -> Result<(), Error> {
    let kind = Kind::parse(kind)?;
    let settings = std::env::var(CHILD_SETTINGS).map_err(|e| format!("{CHILD_SETTINGS}: {e}"))?;
    let fields: Vec<&str> = settings.split(' ').collect();
    let [url, prefix, rate, burst, waiters] = fields[..] else {
        return Err(
            format!("{CHILD_SETTINGS}={settings:?}: not `url prefix rate burst waiters`").into(),
        );
    };
    let (rate, burst, waiters): (u32, u32, usize) =
        (rate.parse()?, burst.parse()?, waiters.parse()?);
    // One thread a process: the fleet's processes share the machine's cores.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;

    // Connect first; then say so, and wait for the instants every process shares.
    enum Ready {
        Limiter(RateLimiter),
        FixedWindow(redis::aio::MultiplexedConnection),
    }
    let ready = rt.block_on(async {
        Ok::<_, Error>(match kind {
            Kind::Limiter => {
                let limiter = RateLimiter::builder(rate, Duration::from_secs(1))
                    .burst(burst)
                    .redis(RedisConfig::new(url, prefix))
                    .build()?;
                limiter.enter().await?;
                Ready::Limiter(limiter)
            }
            Kind::FixedWindow => {
                let client = redis::Client::open(url)?;
                Ready::FixedWindow(client.get_multiplexed_async_connection().await?)
            }
        })
    })?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready")?;
    out.flush()?;
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    let instants: Vec<u64> = line
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let [go, start, end] = instants[..] else {
        return Err(format!("the parent sent {line:?}, not `go start end`").into());
    };
    if unix_us() > go {
        eprintln!(
            "fleet: a process was told to start {} µs ago",
            unix_us() - go
        );
    }
    let times = rt.block_on(async {
        match ready {
            Ready::Limiter(limiter) => run_limiter(limiter, waiters, go, start, end).await,
            Ready::FixedWindow(conn) => {
                run_fixed_window(conn, prefix, u64::from(rate), waiters, go, start, end).await
            }
        }
    })?;
    for time in times {
        writeln!(out, "{time}")?;
    }
    out.flush()?;
    Ok(())
}

/// `waiters` tasks loop on `acquire(1)` from `go` until `end`; the admissions in
/// `[start, end)`, as Unix microseconds.
async fn run_limiter(
    limiter: RateLimiter,
    waiters: usize,
    go: u64,
    start: u64,
    end: u64,
) -> Result<Vec<u64>, Error> {
    sleep_until_unix(go).await;
    let tasks: Vec<_> = (0..waiters)
        .map(|_| {
            let limiter = limiter.clone();
            tokio::spawn(async move {
                let mut times = Vec::new();
                loop {
                    match limiter.acquire(1).await {
                        Ok(()) => {}
                        // Closed at the end of the span.
                        Err(e) if e.is_closed() => return Ok(times),
                        Err(e) => return Err(e),
                    }
                    let now = unix_us();
                    if now >= end {
                        return Ok(times);
                    }
                    if now >= start {
                        times.push(now);
                    }
                }
            })
        })
        .collect();
    sleep_until_unix(end).await;
    limiter.close().await?;
    let mut times = Vec::new();
    for task in tasks {
        times.extend(task.await??);
    }
    Ok(times)
}

/// The fixed-window counter: `waiters` tasks loop from `go` until `end`, each
/// `INCR`ing the key of the current 1 s window (and setting its expiry) and going when
/// the count is at most `limit`, or sleeping until the next window otherwise.
async fn run_fixed_window(
    conn: redis::aio::MultiplexedConnection,
    prefix: &str,
    limit: u64,
    waiters: usize,
    go: u64,
    start: u64,
    end: u64,
) -> Result<Vec<u64>, Error> {
    sleep_until_unix(go).await;
    let tasks: Vec<_> = (0..waiters)
        .map(|_| {
            let mut conn = conn.clone();
            let prefix = prefix.to_owned();
            tokio::spawn(async move {
                let mut times = Vec::new();
                loop {
                    let now = unix_us();
                    if now >= end {
                        return Ok::<_, redis::RedisError>(times);
                    }
                    let window = now / 1_000_000;
                    let key = format!("{prefix}:{window}");
                    let (count,): (u64,) = redis::pipe()
                        .cmd("INCR")
                        .arg(&key)
                        .cmd("EXPIRE")
                        .arg(&key)
                        .arg(2)
                        .ignore()
                        .query_async(&mut conn)
                        .await?;
                    if count <= limit {
                        let now = unix_us();
                        if now >= end {
                            return Ok(times);
                        }
                        if now >= start {
                            times.push(now);
                        }
                    } else {
                        sleep_until_unix(((window + 1) * 1_000_000).min(end)).await;
                    }
                }
            })
        })
        .collect();
    let mut times = Vec::new();
    for task in tasks {
        times.extend(task.await??);
    }
    Ok(times)
}

fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

async fn sleep_until_unix(at_us: u64) {
    let left = at_us.saturating_sub(unix_us());
    if left > 0 {
        tokio::time::sleep(Duration::from_micros(left)).await;
    }
}

// ---------------------------------------------------------------------------------
// The parent: the server, the fleets, the figures.
// ---------------------------------------------------------------------------------

/// A process this bench started: killed and reaped when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        // It may have exited already; either way `wait` reaps it.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `redis-server` on a free loopback port with a temporary directory; stopped and
/// its directory removed when dropped.
struct Server {
    port: u16,
    dir: PathBuf,
    process: Process,
}

impl Server {
    fn start() -> Result<Server, Error> {
        let dir =
            std::env::temp_dir().join(format!("resource-benches-fleet-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        // A free port can be taken by someone else before the server binds it: then
        // another one.
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            let log = std::fs::File::create(dir.join("redis.log"))?;
            let child = Command::new("redis-server")
                .arg("--port")
                .arg(port.to_string())
                .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(&dir)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .map_err(|e| format!("redis-server could not be started from PATH: {e}"))?;
            let mut process = Process(child);
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if process.0.try_wait()?.is_some() {
                    break;
                }
                if answers_ping(port) {
                    return Ok(Server { port, dir, process });
                }
                if Instant::now() > deadline {
                    return Err(
                        format!("redis-server on port {port} did not answer PING in 10 s").into(),
                    );
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        Err(format!(
            "redis-server could not bind a free port in 5 tries; its log:\n{}",
            std::fs::read_to_string(dir.join("redis.log")).unwrap_or_default()
        )
        .into())
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn connection(&self) -> Result<redis::Connection, Error> {
        Ok(redis::Client::open(self.url())?.get_connection_with_timeout(Duration::from_secs(2))?)
    }

    /// `INFO commandstats`: calls per command.
    fn command_calls(&self) -> Result<BTreeMap<String, u64>, Error> {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut self.connection()?)?;
        let mut calls = BTreeMap::new();
        for line in info.lines() {
            let Some((name, stats)) = line
                .strip_prefix("cmdstat_")
                .and_then(|l| l.split_once(':'))
            else {
                continue;
            };
            let count = stats
                .split(',')
                .find_map(|field| field.strip_prefix("calls="))
                .ok_or_else(|| format!("INFO commandstats: no calls in {line:?}"))?;
            calls.insert(name.to_owned(), count.parse()?);
        }
        Ok(calls)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // The process field is dropped after this: stop it before removing its files.
        let _ = self.process.0.kill();
        let _ = self.process.0.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn answers_ping(port: u16) -> bool {
    let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{port}/")) else {
        return false;
    };
    let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_millis(200)) else {
        return false;
    };
    redis::cmd("PING")
        .query::<String>(&mut conn)
        .is_ok_and(|pong| pong == "PONG")
}

/// What one fleet run admitted: each process's admission instants (Unix µs) within
/// the measured span, and the span.
struct Fleet {
    processes: Vec<Vec<u64>>,
    span: Duration,
    /// With `watch`: the instants the server booked in the span, in order, and how
    /// long after its booked instant each admission was recorded (µs, sorted).
    booked: Option<(Vec<u64>, Vec<u64>)>,
}

/// Runs `processes` copies of this binary, each with `waiters` waiters on the limiter
/// `kind` of `rate` per second with `burst`, under `prefix`. With `watch`, the
/// limiter's scripts are followed with `MONITOR` too, for the instants the server
/// booked.
#[allow(clippy::too_many_arguments)]
fn run_fleet(
    server: &Server,
    kind: Kind,
    prefix: &str,
    rate: u32,
    burst: u32,
    processes: usize,
    waiters: usize,
    timing: Timing,
    watch: bool,
) -> Result<Fleet, Error> {
    let watching = if watch {
        let watching = monitor(server)?;
        echo(server, MONITOR_START)?;
        Some(watching)
    } else {
        None
    };
    let exe = std::env::current_exe()?;
    let settings = format!("{} {prefix} {rate} {burst} {waiters}", server.url());
    let mut children = Vec::with_capacity(processes);
    for _ in 0..processes {
        let child = Command::new(&exe)
            .env(CHILD, kind.name())
            .env(CHILD_SETTINGS, &settings)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        children.push(Process(child));
    }
    // Every process connected: now the instants.
    let mut outputs: Vec<BufReader<ChildStdout>> = Vec::with_capacity(processes);
    for (index, child) in children.iter_mut().enumerate() {
        let stdout = child.0.stdout.take().ok_or("a child's stdout")?;
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        reader.read_line(&mut line)?;
        if line.trim() != "ready" {
            return Err(format!("process {index} did not get ready: {:?}", line.trim()).into());
        }
        outputs.push(reader);
    }
    let go = unix_us() + 50_000;
    let mut start = go + u64::try_from(timing.warm_up.as_micros())?;
    if kind == Kind::FixedWindow {
        // Half-way through a window, so the span holds whole windows.
        start = start.div_ceil(1_000_000) * 1_000_000 + 500_000;
    }
    let measure = u64::try_from(timing.measure.as_micros())?;
    let end = start + measure;
    for child in &mut children {
        let stdin = child.0.stdin.as_mut().ok_or("a child's stdin")?;
        writeln!(stdin, "{go} {start} {end}")?;
        stdin.flush()?;
    }
    let mut admitted = Vec::with_capacity(processes);
    for (index, (child, mut reader)) in children.iter_mut().zip(outputs).enumerate() {
        let mut text = String::new();
        reader.read_to_string(&mut text)?;
        let status = child.0.wait()?;
        if !status.success() {
            return Err(format!(
                "process {index} of the {} fleet failed: {status}",
                kind.name()
            )
            .into());
        }
        let times: Vec<u64> = text.lines().map(str::parse).collect::<Result<_, _>>()?;
        admitted.push(times);
    }
    let booked = match watching {
        Some(watching) => {
            echo(server, MONITOR_END)?;
            let lines = watching
                .join()
                .map_err(|_| "the MONITOR thread panicked")??;
            let key = format!("{{{prefix}}}:gcra");
            let mut by_client = bookings(&lines, &key, rate, burst)?;
            for booked in by_client.values_mut() {
                booked.sort_unstable();
            }
            let mut booked: Vec<u64> = by_client
                .values()
                .flatten()
                .copied()
                .filter(|t| (start..end).contains(t))
                .collect();
            booked.sort_unstable();
            // Each process is the connection whose bookings its admissions follow
            // most closely.
            let mut late = Vec::new();
            for times in &mut admitted {
                times.sort_unstable();
                let closest = by_client
                    .values()
                    .map(|booked| {
                        let mut delays = delays(times, booked);
                        delays.sort_unstable();
                        delays
                    })
                    .filter(|delays| delays.len() == times.len())
                    .min_by_key(|delays| delays.get(delays.len() / 2).copied());
                late.extend(closest.unwrap_or_default());
            }
            late.sort_unstable();
            Some((booked, late))
        }
        None => None,
    };
    Ok(Fleet {
        processes: admitted,
        span: timing.measure,
        booked,
    })
}

/// The instants (Unix µs) the server booked for one token each on the limiter's hash
/// `key`, per client connection (its address), in order, from the `MONITOR` lines of
/// its scripts: each run's `TIME` is its `now`, and its `HSET` the schedule's end after
/// the booking, `tat` whole µs and `frac` of `1000 × rate`. The booking goes at
/// `tat - burst` tokens, rounded up to a whole µs, and never before `now` (what
/// `acquire.lua` computes; the bench sets no pause).
fn bookings(
    lines: &[String],
    key: &str,
    rate: u32,
    burst: u32,
) -> Result<BTreeMap<String, Vec<u64>>, Error> {
    let denom = 1000 * i128::from(rate);
    // A token is 1 s (in ns) in units of `1 / denom` µs.
    let token = 1_000_000_000_i128;
    let mut now = None;
    let mut client = String::new();
    let mut booked: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for line in lines {
        // `+1700000000.000000 [0 127.0.0.1:5000] "EVALSHA" ...`, or `[0 lua]` for the
        // commands a script runs.
        let Some((head, rest)) = line.split_once(" [") else {
            continue;
        };
        let Some((who, _)) = rest.split_once("] ") else {
            continue;
        };
        if !who.ends_with(" lua") {
            client = who.to_owned();
        }
        // The quoted words: the command and its arguments.
        let words: Vec<&str> = line.split('"').skip(1).step_by(2).collect();
        match words[..] {
            ["TIME"] => {
                let (secs, micros) = head
                    .trim_start_matches('+')
                    .split_once('.')
                    .ok_or_else(|| format!("MONITOR: no time in {line:?}"))?;
                now = Some(secs.parse::<i128>()? * 1_000_000 + micros.parse::<i128>()?);
            }
            ["HSET", hash, "tat", tat, "frac", frac] if hash == key => {
                let now = now
                    .take()
                    .ok_or_else(|| format!("MONITOR: no TIME before {line:?}"))?;
                let end = tat.parse::<i128>()? * denom + frac.parse::<i128>()?;
                let at = end - i128::from(burst) * token;
                let at = at.div_euclid(denom) + i128::from(at.rem_euclid(denom) > 0);
                booked
                    .entry(client.clone())
                    .or_default()
                    .push(u64::try_from(at.max(now))?);
            }
            _ => {}
        }
    }
    Ok(booked)
}

/// How long after its booked instant each admission of `admitted` (one process's,
/// sorted) was recorded, when the process's bookings are `booked` (sorted): a process
/// books one token at a time, after its previous admission, so an admission's own
/// booking is the last one booked at or before it.
fn delays(admitted: &[u64], booked: &[u64]) -> Vec<u64> {
    admitted
        .iter()
        .filter_map(|&at| {
            let before = booked.partition_point(|&b| b <= at);
            before.checked_sub(1).map(|i| at - booked[i])
        })
        .collect()
}

/// Jain's fairness index of `counts`.
fn jain(counts: &[u64]) -> f64 {
    let sum: f64 = counts.iter().map(|&x| x as f64).sum();
    let squares: f64 = counts.iter().map(|&x| (x as f64) * (x as f64)).sum();
    if squares == 0.0 {
        return 0.0;
    }
    sum * sum / (counts.len() as f64 * squares)
}

/// The admissions of one fleet in windows of one length.
#[derive(Clone, Copy)]
struct Window {
    /// The most admissions in any closed window `[t, t + w]` that starts at one.
    worst: u64,
    /// The limiter's bound `burst + 1 + floor(w × rate)`, or the fixed window's
    /// `rate × w`.
    bound: u64,
    /// How many admissions start a window that holds more than the bound.
    over: u64,
}

/// `sorted` (µs) in closed windows of length `w`, against `bound`.
fn window(sorted: &[u64], w: Duration, bound: u64) -> Window {
    let w = u64::try_from(w.as_micros()).unwrap_or(u64::MAX);
    let (mut worst, mut over) = (0, 0);
    let mut j = 0;
    for (i, &t) in sorted.iter().enumerate() {
        j = j.max(i);
        while j < sorted.len() && sorted[j] <= t.saturating_add(w) {
            j += 1;
        }
        let count = (j - i) as u64;
        worst = worst.max(count);
        over += u64::from(count > bound);
    }
    Window { worst, bound, over }
}

/// The windows checked on every fleet's admissions.
const WINDOWS: [(Duration, &str); 3] = [
    (Duration::from_millis(10), "10ms"),
    (Duration::from_millis(100), "100ms"),
    (Duration::from_secs(1), "1s"),
];

/// The figures of one fleet run.
struct Row {
    kind: Kind,
    rate: u32,
    burst: u32,
    achieved: f64,
    ratio: f64,
    jain: f64,
    counts: Vec<u64>,
    /// Per length of `WINDOWS`.
    windows: Vec<Window>,
    /// The instants the server booked: how many, and per length of `WINDOWS` against
    /// GCRA's own bound `burst + floor(w × rate)`.
    booked: Option<Booked>,
}

/// What the server booked in a fleet run, from its `MONITOR` feed.
struct Booked {
    count: u64,
    /// Per length of `WINDOWS`, against `burst + floor(w × rate)`.
    windows: Vec<Window>,
    /// How long after its booked instant an admission was recorded, in µs: the
    /// median, the 99th percentile and the most, over the admissions matched.
    delay: (u64, u64, u64),
}

impl Row {
    fn from_fleet(kind: Kind, rate: u32, burst: u32, fleet: &Fleet) -> Row {
        let counts: Vec<u64> = fleet.processes.iter().map(|p| p.len() as u64).collect();
        let mut all: Vec<u64> = fleet.processes.iter().flatten().copied().collect();
        all.sort_unstable();
        let achieved = all.len() as f64 / fleet.span.as_secs_f64();
        let tokens = |w: Duration| {
            u64::try_from(w.as_micros() * u128::from(rate) / 1_000_000).unwrap_or(u64::MAX)
        };
        let windows = WINDOWS
            .iter()
            .map(|&(w, _)| {
                let bound = match kind {
                    Kind::Limiter => u64::from(burst) + 1 + tokens(w),
                    Kind::FixedWindow => tokens(w),
                };
                window(&all, w, bound)
            })
            .collect();
        let booked = fleet.booked.as_ref().map(|(booked, late)| {
            let windows = WINDOWS
                .iter()
                .map(|&(w, _)| window(booked, w, u64::from(burst) + tokens(w)))
                .collect();
            let at = |q: f64| {
                let index = ((late.len().saturating_sub(1)) as f64 * q).round() as usize;
                late.get(index).copied().unwrap_or(0)
            };
            Booked {
                count: booked.len() as u64,
                windows,
                delay: (at(0.5), at(0.99), late.last().copied().unwrap_or(0)),
            }
        });
        Row {
            kind,
            rate,
            burst,
            achieved,
            ratio: achieved / f64::from(rate),
            jain: jain(&counts),
            counts,
            windows,
            booked,
        }
    }

    fn name(&self) -> String {
        match self.kind {
            Kind::Limiter => format!("limiter_{}_b{}", self.rate, self.burst),
            Kind::FixedWindow => format!("fixed_window_{}", self.rate),
        }
    }

    fn within_bounds(&self) -> bool {
        self.windows.iter().all(|w| w.worst <= w.bound)
    }

    fn print(&self) {
        let windows: Vec<String> = self
            .windows
            .iter()
            .map(|w| format!("{}/{}", w.worst, w.bound))
            .collect();
        let verdict = match self.kind {
            Kind::Limiter => {
                let over: Vec<String> = WINDOWS
                    .iter()
                    .zip(&self.windows)
                    .filter(|(_, w)| w.over > 0)
                    .map(|((_, label), w)| format!("{} {label} windows over", w.over))
                    .collect();
                format!(
                    "ratio {}, windows {}{}, jain {}",
                    yes(self.ratio >= 0.98),
                    yes(self.within_bounds()),
                    if over.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", over.join(", "))
                    },
                    yes(self.jain >= 0.99)
                )
            }
            Kind::FixedWindow => {
                let w = self.windows[2];
                format!(
                    "worst 1 s window {:.2}× the limit",
                    w.worst as f64 / w.bound as f64
                )
            }
        };
        println!(
            "{:<13} {:>5} {:>5} {:>10.1} {:>6.3} {:>6.3} {:>10} {:>10} {:>11}  {:<20} {verdict}",
            match self.kind {
                Kind::Limiter => "redis limiter",
                Kind::FixedWindow => "fixed window",
            },
            self.rate,
            match self.kind {
                Kind::Limiter => self.burst.to_string(),
                Kind::FixedWindow => "-".into(),
            },
            self.achieved,
            self.ratio,
            self.jain,
            windows[0],
            windows[1],
            windows[2],
            self.counts
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join("/"),
        );
    }

    /// The instants the server booked, when they were followed.
    fn print_booked(&self) {
        let Some(Booked {
            count,
            windows,
            delay,
        }) = &self.booked
        else {
            return;
        };
        let shown: Vec<String> = windows
            .iter()
            .map(|w| format!("{}/{}", w.worst, w.bound))
            .collect();
        println!(
            "{:<13} {:>5} {:>5} {:>10} {:>6} {:>6} {:>10} {:>10} {:>11}  {:<20} windows {}; booked -> admitted {} / {} / {} µs (median / p99 / max)",
            "  (booked)",
            "",
            "",
            count,
            "",
            "",
            shown[0],
            shown[1],
            shown[2],
            "",
            yes(windows.iter().all(|w| w.worst <= w.bound)),
            delay.0,
            delay.1,
            delay.2,
        );
    }

    fn record(&self, json: &mut serde_json::Map<String, serde_json::Value>) {
        let name = self.name();
        if let Some(booked) = &self.booked {
            json.insert(format!("{name}.booked"), booked.count.into());
            for (&(_, label), w) in WINDOWS.iter().zip(&booked.windows) {
                json.insert(format!("{name}.booked_worst_{label}"), w.worst.into());
                json.insert(format!("{name}.booked_bound_{label}"), w.bound.into());
            }
            json.insert(
                format!("{name}.booked_to_admitted_p50_us"),
                booked.delay.0.into(),
            );
            json.insert(
                format!("{name}.booked_to_admitted_p99_us"),
                booked.delay.1.into(),
            );
            json.insert(
                format!("{name}.booked_to_admitted_max_us"),
                booked.delay.2.into(),
            );
        }
        json.insert(format!("{name}.achieved_per_s"), self.achieved.into());
        json.insert(format!("{name}.ratio"), self.ratio.into());
        json.insert(format!("{name}.jain"), self.jain.into());
        for (&(_, label), w) in WINDOWS.iter().zip(&self.windows) {
            json.insert(format!("{name}.worst_{label}"), w.worst.into());
            json.insert(format!("{name}.bound_{label}"), w.bound.into());
            json.insert(format!("{name}.over_{label}"), w.over.into());
        }
    }
}

fn yes(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}

/// The median and the 99th percentile of `samples`, in µs.
fn percentiles(samples: &mut [Duration]) -> (f64, f64) {
    samples.sort_unstable();
    let at = |q: f64| {
        let index = ((samples.len() - 1) as f64 * q).round() as usize;
        samples[index].as_secs_f64() * 1e6
    };
    (at(0.5), at(0.99))
}

/// The uncontended figures of one process: round trips per token and latencies.
struct Uncontended {
    tokens: u64,
    /// `cmdstat_evalsha` calls a token.
    evalsha_per_token: f64,
    /// Calls a token of every other command in `INFO commandstats` but `INFO`: the
    /// commands the script runs on the server (`TIME`, `HMGET`, `HSET`, `PEXPIRE`).
    in_script_per_token: f64,
    /// Commands the client sent a token, from `MONITOR`, and their names.
    sent_per_token: f64,
    sent: BTreeMap<String, u64>,
    redis: (f64, f64),
    local: (f64, f64),
}

/// The marker commands between which `MONITOR` lines are counted.
const MONITOR_START: &str = "fleet-bench-monitor-start";
const MONITOR_END: &str = "fleet-bench-monitor-end";

/// Starts `MONITOR` on a connection of its own; the thread returns every line between
/// the `ECHO`s of `MONITOR_START` and `MONITOR_END`.
fn monitor(server: &Server) -> Result<std::thread::JoinHandle<Result<Vec<String>, Error>>, Error> {
    let mut stream = TcpStream::connect(("127.0.0.1", server.port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(b"MONITOR\r\n")?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    if line.trim_end() != "+OK" {
        return Err(format!("MONITOR answered {line:?}").into());
    }
    Ok(std::thread::spawn(move || {
        let mut lines = Vec::new();
        let mut started = false;
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                return Err("MONITOR: the server closed the connection".into());
            }
            if line.contains(MONITOR_END) {
                return Ok(lines);
            }
            if line.contains(MONITOR_START) {
                started = true;
            } else if started {
                lines.push(line.trim_end().to_owned());
            }
        }
    }))
}

/// The command of a `MONITOR` line, `+1700000000.000000 [0 127.0.0.1:5000] "EVALSHA" ..`,
/// or `None` for a command a script ran (`[0 lua]`).
fn monitored_command(line: &str) -> Option<String> {
    let (client, rest) = line.split_once("] ")?;
    if client.ends_with(" lua") {
        return None;
    }
    rest.split('"').nth(1).map(str::to_lowercase)
}

fn echo(server: &Server, marker: &str) -> Result<(), Error> {
    let _: String = redis::cmd("ECHO")
        .arg(marker)
        .query(&mut server.connection()?)?;
    Ok(())
}

fn uncontended(server: &Server, rounds: usize, per_round: usize) -> Result<Uncontended, Error> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let redis_limiter = RateLimiter::builder(1_000_000, Duration::from_secs(1))
            .burst(1_000_000)
            .redis(RedisConfig::new(server.url(), "fleet-bench-uncontended"))
            .build()?;
        redis_limiter.enter().await?;
        let local = RateLimiter::new(1_000_000, Duration::from_secs(1))?;

        // Round trips a token: `INFO commandstats` before and after, and `MONITOR`
        // between two markers.
        let tokens = 2_000_u64;
        let watching = monitor(server)?;
        echo(server, MONITOR_START)?;
        let before = server.command_calls()?;
        for _ in 0..tokens {
            redis_limiter.acquire(1).await?;
        }
        let after = server.command_calls()?;
        echo(server, MONITOR_END)?;
        let lines = watching
            .join()
            .map_err(|_| "the MONITOR thread panicked")??;
        let mut sent = BTreeMap::new();
        for command in lines.iter().filter_map(|line| monitored_command(line)) {
            // The `INFO` that counts the commands is not the limiter's.
            if command != "info" {
                *sent.entry(command).or_insert(0_u64) += 1;
            }
        }
        let delta = |name: &str| {
            after.get(name).copied().unwrap_or(0) - before.get(name).copied().unwrap_or(0)
        };
        let in_script: u64 = after
            .keys()
            .filter(|name| !["info", "evalsha", "echo", "monitor"].contains(&name.as_str()))
            .map(|name| delta(name))
            .sum();
        let evalsha = delta("evalsha");

        // Latency, in interleaved rounds (each round alternates which goes first).
        let mut redis_samples = Vec::with_capacity(rounds * per_round);
        let mut local_samples = Vec::with_capacity(rounds * per_round);
        for round in 0..rounds {
            for side in 0..2 {
                let (limiter, samples) = if (round + side) % 2 == 0 {
                    (&redis_limiter, &mut redis_samples)
                } else {
                    (&local, &mut local_samples)
                };
                for _ in 0..per_round {
                    let started = Instant::now();
                    limiter.acquire(1).await?;
                    samples.push(started.elapsed());
                }
            }
        }
        redis_limiter.close().await?;
        Ok(Uncontended {
            tokens,
            evalsha_per_token: evalsha as f64 / tokens as f64,
            in_script_per_token: in_script as f64 / tokens as f64,
            sent_per_token: sent.values().sum::<u64>() as f64 / tokens as f64,
            sent,
            redis: percentiles(&mut redis_samples),
            local: percentiles(&mut local_samples),
        })
    })
}

/// `redis-benchmark -n requests -c 4 EVALSHA sha args`: requests per second, or why
/// there is no figure.
fn redis_benchmark(
    server: &Server,
    requests: u64,
    script: &str,
    args: &[String],
) -> Result<f64, String> {
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(script)
        .query(&mut server.connection().map_err(|e| e.to_string())?)
        .map_err(|e| format!("SCRIPT LOAD: {e}"))?;
    let output = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p"])
        .arg(server.port.to_string())
        .arg("-n")
        .arg(requests.to_string())
        .args(["-c", "4", "--csv", "EVALSHA"])
        .arg(&sha)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("redis-benchmark could not be run from PATH: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "redis-benchmark failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    // `"test","rps",...` then `"EVALSHA ...","44052.86",...`
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .filter(|line| line.starts_with("\"EVALSHA"))
        .find_map(|line| line.split("\",\"").nth(1))
        .and_then(|rps| rps.trim_matches('"').parse().ok())
        .ok_or_else(|| format!("redis-benchmark printed no rate: {text:?}"))
}

/// The arguments `acquire.lua` gets for one token of `rate` per second with `burst`:
/// book, the token and `burst - 1` tokens as whole µs and a fraction of `1000 × rate`,
/// the fraction's denominator, the expiry margin (1000 ms).
fn acquire_args(key: &str, rate: u32, burst: u32) -> Vec<String> {
    let denom = 1000 * u128::from(rate);
    let period_ns = 1_000_000_000_u128;
    let span = |n: u32| {
        let total = u128::from(n) * period_ns;
        (total / denom, total % denom)
    };
    let (whole, part) = span(1);
    let (ahead_whole, ahead_part) = span(burst - 1);
    vec![
        "1".into(),
        key.into(),
        "1".into(),
        whole.to_string(),
        part.to_string(),
        ahead_whole.to_string(),
        ahead_part.to_string(),
        denom.to_string(),
        "1000".into(),
    ]
}

fn results_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("bench-results")
}

/// The 1-minute load average (Linux), to show how busy the machine was.
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn parent() -> Result<(), Error> {
    // `cargo bench` passes `--bench`; `cargo test` does not.
    let as_test = !std::env::args().any(|a| a == "--bench");
    let found = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok();
    if !found {
        if as_test {
            println!("fleet: redis-server is not on PATH; skipped");
            return Ok(());
        }
        return Err("redis-server is not on PATH, and this bench needs a real one: install it \
                    (`apt-get install redis-server` on Debian and Ubuntu, `brew install redis` on macOS)"
            .into());
    }
    let started = Instant::now();
    let load_before = load_average();
    let server = Server::start()?;
    let (processes, waiters, timing, configs, peer_rates) = if as_test {
        let timing = Timing {
            warm_up: Duration::from_millis(100),
            // A whole window of the fixed-window peer.
            measure: Duration::from_secs(1),
        };
        (2, 2, timing, vec![(1000, 1)], vec![1000])
    } else {
        let timing = Timing {
            warm_up: Duration::from_millis(500),
            measure: Duration::from_secs(3),
        };
        (
            4,
            16,
            timing,
            vec![(100, 1), (100, 10), (1000, 1), (1000, 10)],
            vec![100, 1000],
        )
    };
    println!(
        "fleet: redis-server on port {}, {processes} processes × {waiters} waiters, warm-up {:?}, measured {:?}{}",
        server.port,
        timing.warm_up,
        timing.measure,
        if as_test { " (test mode)" } else { "" }
    );
    println!("admission instants: SystemTime after each admission (one machine, one clock)");
    println!(
        "{:<13} {:>5} {:>5} {:>10} {:>6} {:>6} {:>10} {:>10} {:>11}  {:<20} targets",
        "limiter",
        "rate",
        "burst",
        "achieved/s",
        "ratio",
        "jain",
        "10ms/bound",
        "100ms/bnd",
        "1s/bound",
        "per process"
    );
    let mut json = serde_json::Map::new();
    let mut rows = Vec::new();
    let mut fleet_run = 0;
    let mut run = |kind: Kind, rate: u32, burst: u32| -> Result<Row, Error> {
        fleet_run += 1;
        let prefix = format!("fleet-bench-{}-{fleet_run}", std::process::id());
        let fleet = run_fleet(
            &server,
            kind,
            &prefix,
            rate,
            burst,
            processes,
            waiters,
            timing,
            kind == Kind::Limiter,
        )?;
        let row = Row::from_fleet(kind, rate, burst, &fleet);
        row.print();
        row.print_booked();
        Ok(row)
    };
    for &peer_rate in &peer_rates {
        for &(rate, burst) in configs.iter().filter(|(rate, _)| *rate == peer_rate) {
            rows.push(run(Kind::Limiter, rate, burst)?);
        }
        rows.push(run(Kind::FixedWindow, peer_rate, peer_rate)?);
    }
    for row in &rows {
        row.record(&mut json);
    }
    if as_test {
        if let Some(row) = rows.iter().find(|row| row.counts.iter().sum::<u64>() == 0) {
            return Err(format!("the {} fleet admitted nothing", row.name()).into());
        }
        return Ok(());
    }
    let limiter_rows: Vec<&Row> = rows.iter().filter(|r| r.kind == Kind::Limiter).collect();
    let worst_ratio = limiter_rows
        .iter()
        .map(|r| r.ratio)
        .fold(f64::INFINITY, f64::min);
    let worst_jain = limiter_rows
        .iter()
        .map(|r| r.jain)
        .fold(f64::INFINITY, f64::min);
    let within = limiter_rows.iter().filter(|r| r.within_bounds()).count();
    println!(
        "limiter: lowest ratio {worst_ratio:.3} (≥ 0.98 {}), lowest Jain {worst_jain:.3} (≥ 0.99 {}), windows within the bound {within}/{}",
        yes(worst_ratio >= 0.98),
        yes(worst_jain >= 0.99),
        limiter_rows.len()
    );
    json.insert("limiter.lowest_ratio".into(), worst_ratio.into());
    json.insert("limiter.lowest_jain".into(), worst_jain.into());
    json.insert("limiter.rows_within_bound".into(), (within as u64).into());
    json.insert("limiter.rows".into(), (limiter_rows.len() as u64).into());

    // Cost.
    println!();
    let cost = uncontended(&server, 20, 200)?;
    let sent: Vec<String> = cost
        .sent
        .iter()
        .map(|(name, calls)| format!("{name} {calls}"))
        .collect();
    println!(
        "uncontended, 1 process, 1 waiter, {} tokens: {:.3} round trips a token (MONITOR: {}; target 1.0: {}); \
         INFO commandstats: {:.3} EVALSHA a token, {:.3} commands run inside the script a token",
        cost.tokens,
        cost.sent_per_token,
        sent.join(", "),
        yes(cost.sent_per_token == 1.0),
        cost.evalsha_per_token,
        cost.in_script_per_token,
    );
    println!(
        "acquire(1) uncontended: redis limiter median {:.1} µs, p99 {:.1} µs; local limiter median {:.2} µs, p99 {:.2} µs; median ratio {:.0}",
        cost.redis.0,
        cost.redis.1,
        cost.local.0,
        cost.local.1,
        cost.redis.0 / cost.local.0
    );
    json.insert(
        "cost.evalsha_per_token".into(),
        cost.evalsha_per_token.into(),
    );
    json.insert(
        "cost.round_trips_per_token".into(),
        cost.sent_per_token.into(),
    );
    json.insert(
        "cost.in_script_commands_per_token".into(),
        cost.in_script_per_token.into(),
    );
    json.insert("cost.redis_acquire_p50_us".into(), cost.redis.0.into());
    json.insert("cost.redis_acquire_p99_us".into(), cost.redis.1.into());
    json.insert("cost.local_acquire_p50_us".into(), cost.local.0.into());
    json.insert("cost.local_acquire_p99_us".into(), cost.local.1.into());

    let most = 1_000_000;
    fleet_run += 1;
    let prefix = format!("fleet-bench-{}-{fleet_run}", std::process::id());
    let throughput_timing = Timing {
        warm_up: Duration::from_millis(500),
        measure: Duration::from_secs(2),
    };
    let fleet = run_fleet(
        &server,
        Kind::Limiter,
        &prefix,
        most,
        most,
        processes,
        waiters,
        throughput_timing,
        false,
    )?;
    let fleet_rate =
        fleet.processes.iter().map(Vec::len).sum::<usize>() as f64 / fleet.span.as_secs_f64();
    println!(
        "most admissions/s, {processes} × {waiters} on one redis-server (rate and burst {most}): {fleet_rate:.0}"
    );
    json.insert("throughput.fleet_per_s".into(), fleet_rate.into());
    let key = format!("{{fleet-bench-{}-benchmark}}:gcra", std::process::id());
    let benchmarks = [
        ("acquire.lua", ACQUIRE_LUA, acquire_args(&key, most, most)),
        ("return 1", "return 1", vec!["0".to_owned()]),
    ];
    for (name, script, args) in benchmarks {
        match redis_benchmark(&server, 100_000, script, &args) {
            Ok(rps) => {
                println!(
                    "redis-benchmark -n 100000 -c 4 EVALSHA ({name}): {rps:.0}/s; fleet / it: {:.2}",
                    fleet_rate / rps
                );
                let slug = if name == "return 1" {
                    "trivial"
                } else {
                    "acquire"
                };
                json.insert(
                    format!("throughput.redis_benchmark_{slug}_per_s"),
                    rps.into(),
                );
                json.insert(
                    format!("throughput.fleet_over_{slug}"),
                    (fleet_rate / rps).into(),
                );
            }
            Err(why) => println!("redis-benchmark EVALSHA ({name}): no figure: {why}"),
        }
    }

    let load_after = load_average();
    for (name, load) in [("before", load_before), ("after", load_after)] {
        if let Some(load) = load {
            json.insert(format!("machine.load_average_1m_{name}"), load.into());
        }
    }
    let dir = results_dir();
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("fleet.json");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&serde_json::Value::Object(json))?,
    )?;
    println!();
    let shown = |load: Option<f64>| load.map_or("?".into(), |l| format!("{l:.1}"));
    println!(
        "fleet: {:.1} s, 1-minute load average {} before and {} after ({} cores); figures in {}",
        started.elapsed().as_secs_f64(),
        shown(load_before),
        shown(load_after),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        path.display()
    );
    Ok(())
}
