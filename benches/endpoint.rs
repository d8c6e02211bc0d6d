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
//! - `latency`: one call at a time, `to_async` on the runtime (the call is polled on
//!   the bench thread, the sockets on the workers); the endpoint is entered once and
//!   reused, the client built once, each with its connection pooled by the warm-up.
//!   Target: endpoint / reqwest <= 1.05 (medians).
//! - `throughput_c64`: 6 400 calls, 64 tasks each making 100 calls one after another,
//!   so 64 in flight at once over 64 pooled connections; timed until the last call is
//!   answered. Requests/s is 6 400 over the time. Target: endpoint >= 0.95 of reqwest.
//! - `paired`: criterion runs one row after the other, so a load that comes and goes on
//!   a shared machine can favour either side. After the criterion rows of `latency` and
//!   `throughput_c64`, the bench also prints the same measures taken in interleaved
//!   rounds (endpoint then reqwest, then reqwest then endpoint, ...): the median of
//!   each side and the median of the per-round ratios. Only under `cargo bench`, and
//!   skipped when a filter given on the command line is not part of the group's name.
//! - `close_0_idle`, `close_64_idle`: `close()` of an entered endpoint that was never
//!   called, and of one whose pool holds 64 idle connections (64 concurrent calls,
//!   which the server holds until all 64 have arrived, so each has a connection of its
//!   own, all answered before the clock starts). Only the close is timed
//!   (`iter_custom`); building, entering and warming the endpoint are not, nor the wait
//!   afterwards until the server has seen every connection close. The peer,
//!   `reqwest_drop`, is dropping a plain client in the same state: close does that
//!   and more (stop new calls, wait for in-flight ones under a deadline timer). No
//!   target: reported. The connections close in the runtime's background tasks after
//!   `close` returns; the bench checks that they all do, within 5 s, untimed.

use std::convert::Infallible;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use reqwest::Url;
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
/// Calls in one `throughput_c64` iteration.
const BURST: u64 = (CONCURRENCY * CALLS_PER_TASK) as u64;
/// How long the untimed waits on the server's connection count may take.
const SETTLE: Duration = Duration::from_secs(5);

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a multi-thread runtime")
}

/// Whether to print the paired rounds of `group`: under `cargo bench` (not `cargo test
/// --benches`), with no filter or one that is part of the group's name (a plain
/// substring test, not criterion's regex).
fn paired_selected(group: &str) -> bool {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        return false;
    }
    let mut filters = args.iter().filter(|a| !a.starts_with('-')).peekable();
    filters.peek().is_none() || filters.any(|f| group.contains(f.as_str()))
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    }
}

/// Runs `endpoint` and `reqwest` (each returning the time it took) in `rounds`
/// interleaved rounds, alternating which goes first; returns the median time of each
/// side and the median of the per-round ratios endpoint / reqwest.
fn paired(
    rounds: usize,
    mut endpoint: impl FnMut() -> Duration,
    mut reqwest: impl FnMut() -> Duration,
) -> (f64, f64, f64) {
    let (mut e, mut r, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let (te, tr) = if round.is_multiple_of(2) {
            let te = endpoint();
            (te, reqwest())
        } else {
            let tr = reqwest();
            (endpoint(), tr)
        };
        e.push(te.as_secs_f64());
        r.push(tr.as_secs_f64());
        ratio.push(te.as_secs_f64() / tr.as_secs_f64());
    }
    (median(&mut e), median(&mut r), median(&mut ratio))
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

fn latency(c: &mut Criterion) {
    let rt = runtime();
    let server = Server::start(&rt);
    let mut endpoint = server.endpoint("echo");
    rt.block_on(endpoint.enter()).expect("the endpoint enters");
    let client = plain_client();
    let url = Url::parse(endpoint.url()).expect("the endpoint's URL");
    let body = request_body();
    let (endpoint_ref, client, url, body) = (&endpoint, &client, &url, &body);
    assert_eq!(rt.block_on(endpoint_call(endpoint_ref, body)), *body);
    assert_eq!(rt.block_on(plain_call(client, url, body)), *body);

    let mut group = c.benchmark_group("latency");
    group.sample_size(50);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(4));
    group.bench_function("endpoint", |b| {
        b.to_async(&rt)
            .iter(|| async move { black_box(endpoint_call(endpoint_ref, body).await) })
    });
    group.bench_function("reqwest", |b| {
        b.to_async(&rt)
            .iter(|| async move { black_box(plain_call(client, url, body).await) })
    });
    group.finish();

    if paired_selected("latency") {
        const CALLS: u32 = 1_000;
        let (e, r, ratio) = paired(
            15,
            || {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..CALLS {
                        black_box(endpoint_call(endpoint_ref, body).await);
                    }
                    start.elapsed() / CALLS
                })
            },
            || {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..CALLS {
                        black_box(plain_call(client, url, body).await);
                    }
                    start.elapsed() / CALLS
                })
            },
        );
        println!(
            "latency paired (15 rounds of {CALLS} calls, interleaved): endpoint {:.2} µs, \
             reqwest {:.2} µs (medians); endpoint / reqwest {ratio:.3} (median of rounds)\n",
            e * 1e6,
            r * 1e6
        );
    }
    rt.block_on(endpoint.close()).expect("a clean close");
}

/// `CONCURRENCY` tasks, each making `CALLS_PER_TASK` calls through `endpoint`.
async fn endpoint_burst(endpoint: Endpoint, body: Arc<Value>) {
    let mut tasks = JoinSet::new();
    for _ in 0..CONCURRENCY {
        let (endpoint, body) = (endpoint.clone(), body.clone());
        tasks.spawn(async move {
            for _ in 0..CALLS_PER_TASK {
                black_box(endpoint_call(&endpoint, &body).await);
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("a task that completes");
    }
}

/// The same with the plain client.
async fn plain_burst(client: reqwest::Client, url: Url, body: Arc<Value>) {
    let mut tasks = JoinSet::new();
    for _ in 0..CONCURRENCY {
        let (client, url, body) = (client.clone(), url.clone(), body.clone());
        tasks.spawn(async move {
            for _ in 0..CALLS_PER_TASK {
                black_box(plain_call(&client, &url, &body).await);
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("a task that completes");
    }
}

fn throughput(c: &mut Criterion) {
    let rt = runtime();
    let server = Server::start(&rt);
    let mut endpoint = server.endpoint("echo");
    rt.block_on(endpoint.enter()).expect("the endpoint enters");
    let client = plain_client();
    let url = Url::parse(endpoint.url()).expect("the endpoint's URL");
    let body = Arc::new(request_body());

    let mut group = c.benchmark_group("throughput_c64");
    group.throughput(Throughput::Elements(BURST));
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(4));
    group.bench_function("endpoint", |b| {
        b.to_async(&rt)
            .iter(|| endpoint_burst(endpoint.clone(), body.clone()))
    });
    group.bench_function("reqwest", |b| {
        b.to_async(&rt)
            .iter(|| plain_burst(client.clone(), url.clone(), body.clone()))
    });
    group.finish();

    if paired_selected("throughput_c64") {
        let (e, r, ratio) = paired(
            15,
            || timed(&rt, endpoint_burst(endpoint.clone(), body.clone())),
            || timed(&rt, plain_burst(client.clone(), url.clone(), body.clone())),
        );
        println!(
            "throughput_c64 paired (15 rounds of {BURST} calls, interleaved): endpoint {:.0} \
             requests/s, reqwest {:.0} requests/s (medians); endpoint / reqwest {:.3} \
             (median of rounds)\n",
            BURST as f64 / e,
            BURST as f64 / r,
            1.0 / ratio
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

fn close(c: &mut Criterion) {
    let rt = runtime();
    let server = Server::start(&rt);
    let server = &server;
    for (name, idle, budget) in [
        ("close_0_idle", 0, Duration::from_secs(1)),
        ("close_64_idle", CONCURRENCY, Duration::from_secs(3)),
    ] {
        let mut group = c.benchmark_group(name);
        group.sampling_mode(SamplingMode::Flat);
        group.sample_size(20);
        // Criterion sizes its samples on the warm-up's wall clock, setup included, so
        // this is the time the group runs, not the time spent closing.
        group.warm_up_time(Duration::from_millis(500));
        group.measurement_time(budget);
        group.bench_function("endpoint", |b| {
            b.to_async(&rt).iter_custom(|iters| async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += close_endpoint(server, idle).await;
                }
                total
            })
        });
        group.bench_function("reqwest_drop", |b| {
            b.to_async(&rt).iter_custom(|iters| async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += drop_client(server, idle).await;
                }
                total
            })
        });
        group.finish();
    }
}

criterion_group!(benches, latency, throughput, close);
criterion_main!(benches);
