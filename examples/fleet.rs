//! A fleet of processes held to one rate limit: the `RateLimiter` whose schedule is in
//! Redis.
//!
//! The example starts `redis-server` from PATH on a free loopback port (unless one is
//! given with `--redis URL`), then runs `--processes N` copies of itself. Each copy
//! takes tokens from one shared quota (`--rate` per second, burst 1) in a local work
//! loop for `--seconds`, all in the same window, and reports how many it took. The
//! parent prints each process's share and the fleet's achieved rate against the
//! configured one, then stops its children and its redis-server.
//!
//! ```sh
//! cargo run --example fleet -- --processes 4
//! cargo run --example fleet -- --processes 4 --redis redis://127.0.0.1:6379/ --rate 100
//! ```

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use resource_runtime::limiter::{RateLimiter, RedisConfig};

/// Set in a child (to its index); the rest of its settings come in the variables below.
const CHILD: &str = "FLEET_CHILD";
const CHILD_REDIS: &str = "FLEET_REDIS";
const CHILD_PREFIX: &str = "FLEET_PREFIX";
const CHILD_RATE: &str = "FLEET_RATE";
/// The window, as Unix milliseconds: start and end.
const CHILD_WINDOW: &str = "FLEET_WINDOW";

type Error = Box<dyn std::error::Error + Send + Sync>;

fn main() -> ExitCode {
    let outcome = match std::env::var(CHILD) {
        Ok(_) => child(),
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

struct Args {
    processes: usize,
    redis: Option<String>,
    rate: u32,
    seconds: u64,
}

fn args() -> Result<Args, Error> {
    let mut args = Args {
        processes: 4,
        redis: None,
        rate: 50,
        seconds: 3,
    };
    let mut given = std::env::args().skip(1);
    while let Some(flag) = given.next() {
        let mut value = || given.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--processes" => args.processes = value()?.parse()?,
            "--redis" => args.redis = Some(value()?),
            "--rate" => args.rate = value()?.parse()?,
            "--seconds" => args.seconds = value()?.parse()?,
            other => {
                return Err(format!(
                    "unknown argument {other}: use --processes N, --redis URL, --rate PER_SECOND, --seconds S"
                )
                .into());
            }
        }
    }
    if args.processes == 0 || args.rate == 0 || args.seconds == 0 {
        return Err("--processes, --rate and --seconds must be at least 1".into());
    }
    Ok(args)
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
    let args = args()?;
    let (_server, url) = match &args.redis {
        Some(url) => (None, url.clone()),
        None => {
            let (server, url) = start_redis()?;
            println!("started redis-server at {url}");
            (Some(server), url)
        }
    };
    let prefix = format!("fleet-example-{}", std::process::id());
    // Every child works in the same window, from a moment they have all started by.
    let start = unix_ms() + 1_000;
    let end = start + args.seconds * 1_000;
    let mut children = Vec::with_capacity(args.processes);
    for index in 0..args.processes {
        let child = Command::new(std::env::current_exe()?)
            .env(CHILD, index.to_string())
            .env(CHILD_REDIS, &url)
            .env(CHILD_PREFIX, &prefix)
            .env(CHILD_RATE, args.rate.to_string())
            .env(CHILD_WINDOW, format!("{start},{end}"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()?;
        children.push(Process(child));
    }
    println!(
        "{} processes share {} requests/s (burst 1) under `{prefix}` for {} s",
        args.processes, args.rate, args.seconds
    );
    let mut counts = Vec::with_capacity(children.len());
    for (index, child) in children.iter_mut().enumerate() {
        let mut out = String::new();
        if let Some(stdout) = child.0.stdout.as_mut() {
            stdout.read_to_string(&mut out)?;
        }
        let status = child.0.wait()?;
        if !status.success() {
            return Err(format!("process {index} failed: {status}").into());
        }
        let count: u64 = out
            .trim()
            .parse()
            .map_err(|e| format!("process {index} reported {out:?}: {e}"))?;
        counts.push(count);
    }
    let total: u64 = counts.iter().sum();
    println!();
    println!("  process   requests   share");
    for (index, count) in counts.iter().enumerate() {
        let share = if total == 0 {
            0.0
        } else {
            100.0 * *count as f64 / total as f64
        };
        println!("  {index:>7}   {count:>8}   {share:>4.1} %");
    }
    let achieved = total as f64 / args.seconds as f64;
    println!();
    println!(
        "fleet: {total} requests in {} s, {achieved:.1} requests/s achieved against {} configured ({:.0} %)",
        args.seconds,
        args.rate,
        100.0 * achieved / f64::from(args.rate)
    );
    Ok(())
}

#[tokio::main]
async fn child() -> Result<(), Error> {
    let var = |name: &str| std::env::var(name).map_err(|e| format!("{name}: {e}"));
    let url = var(CHILD_REDIS)?;
    let prefix = var(CHILD_PREFIX)?;
    let rate: u32 = var(CHILD_RATE)?.parse()?;
    let window = var(CHILD_WINDOW)?;
    let (start, end) = window.split_once(',').ok_or("a window of start,end")?;
    let (start, end): (u64, u64) = (start.parse()?, end.parse()?);

    let limiter = RateLimiter::builder(rate, Duration::from_secs(1))
        .burst(1)
        .redis(RedisConfig::new(url, prefix))
        .build()?;
    limiter.enter().await?;
    tokio::time::sleep(Duration::from_millis(start.saturating_sub(unix_ms()))).await;
    let mut taken = 0_u64;
    let outcome = async {
        loop {
            let left = end.saturating_sub(unix_ms());
            if left == 0 {
                return Ok::<_, Error>(());
            }
            // The work loop: one token per request; a token booked past the window's
            // end is not counted.
            match tokio::time::timeout(Duration::from_millis(left), limiter.acquire(1)).await {
                Ok(acquired) => acquired?,
                Err(_) => return Ok(()),
            }
            if unix_ms() < end {
                taken += 1;
            }
        }
    }
    .await;
    limiter.close().await?;
    outcome?;
    println!("{taken}");
    Ok(())
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Starts `redis-server` from PATH on a free loopback port, without persistence, and
/// waits until it answers `PING`.
fn start_redis() -> Result<(Process, String), Error> {
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let dir = std::env::temp_dir();
    let child = Command::new("redis-server")
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
