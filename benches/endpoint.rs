//! What `Endpoint` costs a request, a burst of requests and a close, against a plain
//! `reqwest::Client` doing the same. Run: `cargo bench -p resource-benches --bench endpoint`.
//!
//! Both sides call the same HTTP/1.1 server, started by the bench on 127.0.0.1 (hyper 1,
//! keep-alive, `TCP_NODELAY`): it answers every `POST` at once with the request's own
//! body, `{"ok":true}`, as `application/json`. The server and both clients share one
//! multi-thread tokio runtime (2 workers on this machine).
//!
//! The peer is `reqwest::Client::builder()` with the request and connect timeouts that
//! `Endpoint::enter` gives its own client under the default `EndpointConfig` (60 s,
//! 10 s), so that only the endpoint's own work differs. A call on each side serialises
//! the same `serde_json::Value`, sends it as a `POST` with `Content-Type:
//! application/json`, checks the status and decodes the answer as a `Value`:
//! `client.post(url).json(&body).send()`, `error_for_status()`, `.json::<Value>()`.
//!
//! Every row is interleaved paired rounds (endpoint, reqwest, endpoint, reqwest, ...
//! the order alternating); a ratio is the median of the per-round ratios endpoint /
//! reqwest, printed with its spread.
//!
//! - `latency_vs_reqwest`: one call at a time, polled on the bench thread by
//!   `block_on` (the sockets on the workers); the endpoint is entered once and reused,
//!   the client built once, each with its connection pooled by the warm-up. A round is
//!   `LATENCY_CALLS` calls of each side; the figure is µs per call. Target: endpoint /
//!   reqwest ≤ 1.05.
//! - `throughput_c64_vs_reqwest`: bursts of 6 400 calls, 64 tasks each making 100
//!   calls one after another, so 64 in flight at once over 64 pooled connections;
//!   timed until the last call is answered. A round is `BURSTS` bursts of each side;
//!   the figure is calls per second, so the ratio endpoint / reqwest is a rate, higher
//!   is better. Target: ≥ 0.95.
//! - `close_0_idle_vs_reqwest_drop`, `close_64_idle_vs_reqwest_drop`: `close()` of an
//!   entered endpoint that was never called, and of one whose pool holds 64 idle
//!   connections (64 concurrent calls, which the server holds until all 64 have
//!   arrived, so each has a connection of its own, all answered before the clock
//!   starts). Only the close is timed; building, entering and warming the endpoint are
//!   not, nor the wait afterwards until the server has seen every connection close.
//!   The peer is dropping a plain client in the same state: close does that and more
//!   (stop new calls, wait for in-flight ones under a deadline timer). A round's
//!   figure is the median of `CLOSES` closes of each side (a close takes micro-
//!   seconds, less than one preemption on a shared machine). Reported. The
//!   connections close in the runtime's background tasks after `close` returns; the
//!   bench checks that they all do, within 5 s, untimed.

use std::convert::Infallible;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use reqwest::Url;
use resource_benches::{ROUNDS, Results, Target, median, paired, selected};
use resource_runtime::{
    AsyncResource,
    http::{Endpoint, EndpointConfig},
};
use serde_json::{Value, json};
use tokio::runtime::Runtime;
use tokio::sync::Barrier;
use tokio::task::JoinSet;

/// Tasks in flight at once in `throughput_c64`, and idle connections in `close_64_idle`.
const CONCURRENCY: usize = 64;
/// Calls each task makes one after another in `throughput_c64`.
const CALLS_PER_TASK: usize = 100;
/// Calls in one `throughput_c64` burst.
const BURST: u64 = (CONCURRENCY * CALLS_PER_TASK) as u64;
/// Bursts of each side in one `throughput_c64` round.
const BURSTS: u32 = 2;
/// Calls of each side in one `latency` round.
const LATENCY_CALLS: u32 = 5_000;
/// Closes of each side in one `close_*` round.
const CLOSES: usize = 21;
/// How long the untimed waits on the server's connection count may take.
const SETTLE: Duration = Duration::from_secs(5);

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a multi-thread runtime")
}

/// Runs `work` to completion on `rt` and returns the time it took.
fn timed(rt: &Runtime, work: impl Future<Output = ()>) -> Duration {
    rt.block_on(async {
        let start = Instant::now();
        work.await;
        start.elapsed()
    })
}

/// The request body of every call, and the server's answer.
fn request_body() -> Value {
    json!({ "ok": true })
}

/// The bench's HTTP/1.1 server on 127.0.0.1.
struct Server {
    base_url: String,
    /// Connections the server holds open now.
    live: Arc<AtomicUsize>,
}

/// Decrements the live connection count when a connection's task ends.
struct Live(Arc<AtomicUsize>);

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Server {
    /// Starts the server on `rt`. `/v1/echo` answers at once; `/v1/gate` answers once
    /// `CONCURRENCY` requests to it are waiting.
    fn start(rt: &Runtime) -> Server {
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("a port on 127.0.0.1");
        let base_url = format!(
            "http://{}/v1",
            listener.local_addr().expect("a bound address")
        );
        let live = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(Barrier::new(CONCURRENCY));
        let counted = live.clone();
        rt.spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                stream.set_nodelay(true).expect("TCP_NODELAY");
                counted.fetch_add(1, Ordering::AcqRel);
                let live = Live(counted.clone());
                let gate = gate.clone();
                tokio::spawn(async move {
                    let _live = live;
                    let service =
                        hyper::service::service_fn(move |request| answer(request, gate.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Server { base_url, live }
    }

    fn live(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }

    /// Waits until the server holds exactly `n` connections; panics after `SETTLE`.
    async fn settle(&self, n: usize) {
        let start = Instant::now();
        while self.live() != n {
            assert!(
                start.elapsed() < SETTLE,
                "the server holds {} connections, {n} expected",
                self.live()
            );
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }

    fn endpoint(&self, path: &str) -> Endpoint {
        Endpoint::new(EndpointConfig::new(self.base_url.clone()).path(path))
            .expect("a valid endpoint config")
    }
}

/// Echoes the request's body as JSON.
async fn answer(
    request: Request<Incoming>,
    gate: Arc<Barrier>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let gated = request.uri().path().ends_with("/gate");
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if gated {
        gate.wait().await;
    }
    let mut response = Response::new(Full::new(body));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

/// The peer: the client `Endpoint::enter` builds under the default config.
fn plain_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .connect_timeout(Duration::from_secs(10))
        .build()
        .expect("a reqwest client")
}

/// One call through `Endpoint`.
async fn endpoint_call(endpoint: &Endpoint, body: &Value) -> Value {
    endpoint
        .call::<_, Value>(body)
        .await
        .expect("an answer from the endpoint")
}

/// The same call with the plain client.
async fn plain_call(client: &reqwest::Client, url: &Url, body: &Value) -> Value {
    client
        .post(url.clone())
        .json(body)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .expect("an answer from reqwest")
        .json::<Value>()
        .await
        .expect("a JSON answer from reqwest")
}

/// Microseconds per call of `calls` calls made one after another by `call`, polled on
/// the bench thread.
fn us_per_call<Fut>(rt: &Runtime, calls: u32, call: impl Fn() -> Fut) -> f64
where
    Fut: Future<Output = Value>,
{
    let took = timed(rt, async {
        for _ in 0..calls {
            black_box(call().await);
        }
    });
    took.as_secs_f64() * 1e6 / f64::from(calls)
}

fn latency(rt: &Runtime, results: &mut Results, smoke: bool) {
    let server = Server::start(rt);
    let mut endpoint = server.endpoint("echo");
    rt.block_on(endpoint.enter()).expect("the endpoint enters");
    let client = plain_client();
    let url = Url::parse(endpoint.url()).expect("the endpoint's URL");
    let body = request_body();
    let (endpoint_ref, client, url, body) = (&endpoint, &client, &url, &body);
    assert_eq!(rt.block_on(endpoint_call(endpoint_ref, body)), *body);
    assert_eq!(rt.block_on(plain_call(client, url, body)), *body);
    if !smoke {
        let ours = || us_per_call(rt, LATENCY_CALLS, || endpoint_call(endpoint_ref, body));
        let peer = || us_per_call(rt, LATENCY_CALLS, || plain_call(client, url, body));
        // Warm-up: both pools hold their connection, both sides have run.
        ours();
        peer();
        results.paired(
            "latency_vs_reqwest",
            "reqwest::Client",
            "µs/call",
            Target::AtMost(1.05),
            paired(ROUNDS, ours, peer),
        );
    }
    rt.block_on(endpoint.close()).expect("a clean close");
}

/// `CONCURRENCY` tasks, each making `CALLS_PER_TASK` calls through `endpoint`.
async fn endpoint_burst(endpoint: Endpoint, body: Arc<Value>, calls_per_task: usize) {
    let mut tasks = JoinSet::new();
    for _ in 0..CONCURRENCY {
        let (endpoint, body) = (endpoint.clone(), body.clone());
        tasks.spawn(async move {
            for _ in 0..calls_per_task {
                black_box(endpoint_call(&endpoint, &body).await);
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("a task that completes");
    }
}

/// The same with the plain client.
async fn plain_burst(client: reqwest::Client, url: Url, body: Arc<Value>, calls_per_task: usize) {
    let mut tasks = JoinSet::new();
    for _ in 0..CONCURRENCY {
        let (client, url, body) = (client.clone(), url.clone(), body.clone());
        tasks.spawn(async move {
            for _ in 0..calls_per_task {
                black_box(plain_call(&client, &url, &body).await);
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("a task that completes");
    }
}

fn throughput(rt: &Runtime, results: &mut Results, smoke: bool) {
    let server = Server::start(rt);
    let mut endpoint = server.endpoint("echo");
    rt.block_on(endpoint.enter()).expect("the endpoint enters");
    let client = plain_client();
    let url = Url::parse(endpoint.url()).expect("the endpoint's URL");
    let body = Arc::new(request_body());
    if smoke {
        timed(rt, endpoint_burst(endpoint.clone(), body.clone(), 1));
        timed(rt, plain_burst(client, url, body, 1));
    } else {
        // Calls per second over `BURSTS` bursts.
        let rate = |burst: &dyn Fn() -> Duration| {
            let took: Duration = (0..BURSTS).map(|_| burst()).sum();
            (BURST * u64::from(BURSTS)) as f64 / took.as_secs_f64()
        };
        let ours = || {
            rate(&|| {
                timed(
                    rt,
                    endpoint_burst(endpoint.clone(), body.clone(), CALLS_PER_TASK),
                )
            })
        };
        let peer = || {
            rate(&|| {
                timed(
                    rt,
                    plain_burst(client.clone(), url.clone(), body.clone(), CALLS_PER_TASK),
                )
            })
        };
        // Warm-up: 64 pooled connections on each side.
        ours();
        peer();
        results.paired(
            "throughput_c64_vs_reqwest",
            "reqwest::Client",
            "calls/s",
            Target::AtLeast(0.95),
            paired(ROUNDS, ours, peer),
        );
    }
    rt.block_on(endpoint.close()).expect("a clean close");
}

/// Leaves `idle` idle connections in the pool of an entered endpoint (or plain client)
/// by making `idle` concurrent calls to `/v1/gate`, which answers them only once all
/// have arrived, so that each holds a connection of its own.
async fn warm(server: &Server, idle: usize, call: impl Fn() -> tokio::task::JoinHandle<Value>) {
    server.settle(0).await;
    if idle == 0 {
        return;
    }
    assert_eq!(
        idle, CONCURRENCY,
        "the gate opens at {CONCURRENCY} requests"
    );
    let calls: Vec<_> = (0..idle).map(|_| call()).collect();
    for answer in calls {
        let answer = tokio::time::timeout(SETTLE, answer)
            .await
            .expect("the gated calls are answered")
            .expect("a call that completes");
        assert_eq!(answer, request_body());
    }
    assert_eq!(server.live(), idle, "one connection for each gated call");
    // The pool takes a connection back in a background task once its answer is read.
    tokio::time::sleep(Duration::from_millis(1)).await;
}

/// Times `close()` of an entered endpoint with `idle` idle pooled connections.
async fn close_endpoint(server: &Server, idle: usize) -> Duration {
    let mut endpoint = server.endpoint("gate");
    endpoint.enter().await.expect("the endpoint enters");
    warm(server, idle, || {
        let (endpoint, body) = (endpoint.clone(), request_body());
        tokio::spawn(async move { endpoint_call(&endpoint, &body).await })
    })
    .await;
    let start = Instant::now();
    endpoint.close().await.expect("a clean close");
    let took = start.elapsed();
    server.settle(0).await;
    took
}

/// Times dropping a plain client with `idle` idle pooled connections.
async fn drop_client(server: &Server, idle: usize) -> Duration {
    let client = plain_client();
    let url: Url = format!("{}/gate", server.base_url)
        .parse()
        .expect("a valid URL");
    warm(server, idle, || {
        let (client, url, body) = (client.clone(), url.clone(), request_body());
        tokio::spawn(async move { plain_call(&client, &url, &body).await })
    })
    .await;
    let start = Instant::now();
    drop(black_box(client));
    let took = start.elapsed();
    server.settle(0).await;
    took
}

/// The median, in microseconds, of `closes` closes timed by `close`.
fn close_round<Fut>(rt: &Runtime, closes: usize, close: impl Fn() -> Fut) -> f64
where
    Fut: Future<Output = Duration>,
{
    let mut took: Vec<f64> = (0..closes)
        .map(|_| rt.block_on(close()).as_secs_f64() * 1e6)
        .collect();
    median(&mut took)
}

fn close(rt: &Runtime, results: &mut Results, smoke: bool) {
    let server = Server::start(rt);
    let server = &server;
    for (row, idle) in [
        ("close_0_idle_vs_reqwest_drop", 0),
        ("close_64_idle_vs_reqwest_drop", CONCURRENCY),
    ] {
        let closes = if smoke { 1 } else { CLOSES };
        let ours = || close_round(rt, closes, || close_endpoint(server, idle));
        let peer = || close_round(rt, closes, || drop_client(server, idle));
        ours();
        peer();
        if !smoke {
            results.paired(
                row,
                "dropping a reqwest::Client",
                "µs/close",
                Target::Report,
                paired(ROUNDS, ours, peer),
            );
        }
    }
}

fn main() {
    let rt = runtime();
    let smoke = !selected("endpoint");
    // `cargo test --benches` (`smoke`): one short pass over every operation.
    let mut results = Results::new("endpoint");
    latency(&rt, &mut results, smoke);
    throughput(&rt, &mut results, smoke);
    close(&rt, &mut results, smoke);
    if !smoke {
        results.write();
    }
}
