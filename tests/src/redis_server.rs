//! A real `redis-server` for the tests of the Redis-backed `RateLimiter`.
//!
//! [`RedisServer::start`] runs `redis-server` from PATH on a free loopback port, with a
//! temporary directory of its own and no persistence (`--save ""`, `--appendonly no`),
//! and returns once it answers `PING`. [`stop`](RedisServer::stop) kills it the way a
//! crash would, and [`restart`](RedisServer::restart) starts it again on the same port,
//! empty: what a Redis that crashed and came back without its data looks like to a
//! client. Dropping the value (also while a test panics) stops the server and removes
//! its directory.
//!
//! Every method blocks the calling thread for as long as the server takes to start or
//! stop (milliseconds); the tests that call them from a runtime run on several workers
//! or accept the pause.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long a start may take before the test fails.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A `redis-server` process of one test; stopped when dropped.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server on a free loopback port.
    ///
    /// # Panics
    ///
    /// When `redis-server` is not on PATH (the message says how to install it), or it
    /// does not answer within 10 s.
    pub fn start() -> RedisServer {
        static SERVERS: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "resource-tests-redis-{}-{}",
            std::process::id(),
            SERVERS.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).expect("a temporary directory for redis-server");
        let mut server = RedisServer {
            port: 0,
            dir,
            child: None,
        };
        // A free port can be taken by someone else before the server binds it: then
        // another one.
        for _ in 0..5 {
            server.port = free_port();
            if server.launch() {
                return server;
            }
        }
        panic!(
            "redis-server could not bind a free port in 5 tries; its log:\n{}",
            server.log()
        );
    }

    /// The loopback port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Whether the server process is running (it was not stopped).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the server (`SIGKILL`, as a crash would) and waits until it is gone: its
    /// connections are closed and its port refuses connections.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // It may have exited already; either way `wait` reaps it.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Suspends the server (`SIGSTOP`): it keeps its connections and its port accepts
    /// new ones, but nothing is answered until [`thaw`](Self::thaw): a Redis that
    /// hangs.
    ///
    /// # Panics
    ///
    /// When the server is stopped, or `kill` fails.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Resumes a server suspended by [`freeze`](Self::freeze) (`SIGCONT`).
    ///
    /// # Panics
    ///
    /// When the server is stopped, or `kill` fails.
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("a running redis-server");
        let status = Command::new("kill")
            .arg(signal)
            .arg(child.id().to_string())
            .status()
            .expect("`kill` to signal redis-server");
        assert!(status.success(), "kill {signal} {}: {status}", child.id());
    }

    /// Starts the server again on the same port, with no data (nothing is persisted).
    ///
    /// # Panics
    ///
    /// When it does not answer within 10 s.
    pub fn restart(&mut self) {
        self.stop();
        assert!(
            self.launch(),
            "redis-server could not start again on port {}; its log:\n{}",
            self.port,
            self.log()
        );
    }

    /// A new plain client connection to the server, to look at what a test left there.
    ///
    /// # Panics
    ///
    /// When the server does not accept it.
    pub fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .and_then(|client| client.get_connection_with_timeout(Duration::from_secs(2)))
            .unwrap_or_else(|e| panic!("a connection to the test redis-server: {e}"))
    }

    /// Runs one command on a new connection and returns its reply.
    ///
    /// # Panics
    ///
    /// When the command fails or its reply is not a `T`.
    pub fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> T {
        cmd.query(&mut self.connection())
            .unwrap_or_else(|e| panic!("{cmd:?} on the test redis-server: {e}"))
    }

    /// Every key on the server with its remaining time to live in milliseconds (`-1`
    /// for a key without an expiry).
    pub fn keys_with_ttl(&self) -> Vec<(String, i64)> {
        let mut conn = self.connection();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("*")
            .query(&mut conn)
            .expect("KEYS on the test redis-server");
        keys.into_iter()
            .map(|key| {
                let ttl: i64 = redis::cmd("PTTL")
                    .arg(&key)
                    .query(&mut conn)
                    .expect("PTTL on the test redis-server");
                (key, ttl)
            })
            .collect()
    }

    /// How many clients are connected, not counting the connection that asks.
    pub fn clients(&self) -> usize {
        let list: String = self.query(redis::cmd("CLIENT").arg("LIST"));
        list.lines()
            .filter(|client| !client.contains("cmd=client"))
            .count()
    }

    /// How many times `command` ran since the server started (`INFO commandstats`).
    pub fn calls(&self, command: &str) -> u64 {
        let info: String = self.query(redis::cmd("INFO").arg("commandstats"));
        let prefix = format!("cmdstat_{}:calls=", command.to_lowercase());
        info.lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |calls| {
                calls.parse().expect("a count in INFO commandstats")
            })
    }

    /// Starts the process on `self.port`; `false` when it exited at once (its port
    /// was taken).
    fn launch(&mut self) -> bool {
        let log = std::fs::File::create(self.log_path()).expect("redis-server's log file");
        let spawned = Command::new("redis-server")
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("redis-server's log file"))
            .stderr(log)
            .spawn();
        let child = match spawned {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "redis-server is not on PATH, and the Redis tests need a real one: install it \
                 (`apt-get install redis-server` on Debian and Ubuntu, `brew install redis` on \
                 macOS), or run the tests without `--features redis`"
            ),
            Err(e) => panic!("redis-server could not be started: {e}"),
        };
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = &mut self.child
                && let Ok(Some(_)) = child.try_wait()
            {
                self.child = None;
                return false;
            }
            if self.answers_ping() {
                return true;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer PING within {START_TIMEOUT:?}; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn answers_ping(&self) -> bool {
        let Ok(client) = redis::Client::open(self.url()) else {
            return false;
        };
        let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_millis(200)) else {
            return false;
        };
        redis::cmd("PING")
            .query::<String>(&mut conn)
            .is_ok_and(|pong| pong == "PONG")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("redis.log")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        // A leftover temporary directory fails nothing; the server is gone already.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A loopback port nobody listens on now (another process may take it before the
/// server does: [`RedisServer::start`] tries again then). A test that needs a port
/// that stays refused holds a `server::TestServer::reserve()` instead.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free loopback port")
}
