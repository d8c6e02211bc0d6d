//! What `Endpoint::stream` costs a server-sent event stream, and what `close()` costs
//! with 64 streams open, against plain `reqwest` (`bytes_stream()`) read through the
//! `eventsource-stream` parser. Run: `cargo bench -p resource-benches --bench stream`.
//!
//! Both sides read from the same HTTP/1.1 server, started by the bench on 127.0.0.1
//! (hyper 1, keep-alive, `TCP_NODELAY`), on one multi-thread tokio runtime (2 workers on
//! this machine) that also runs the readers: each stream is read by a task spawned on
//! it, as a service reading a model's answer would.
//!
//! - `POST /v1/chat` answers `text/event-stream`: 1 000 OpenAI-like chunks
//!   (`data: {"id":…,"object":"chat.completion.chunk",…,"delta":{"content":…}}`), each
//!   its own body frame (one HTTP chunk), then `data: [DONE]`, then the end.
//! - `POST /v1/hold` answers 3 events, then keeps the stream open and sends nothing.
//!
//! The peer is `reqwest::Client::builder()` with the request and connect timeouts that
//! `Endpoint::enter` gives its own client under the default `EndpointConfig` (60 s,
//! 10 s), as in the `endpoint` bench. A stream on each side posts the same JSON body:
//! `endpoint.stream(&body)` and `next()` until `None`; and
//! `client.post(url).header(ACCEPT, "text/event-stream").json(&body).send()`,
//! `error_for_status()`, `bytes_stream().eventsource()`, `next()` until `[DONE]`.
//!
//! - `time_to_first_event_us` and `events_per_second`: interleaved paired rounds (ours
//!   then peer, then peer then ours, ...), each side reading 30 streams one after
//!   another in a round, each after an untimed 1 ms pause (so that it starts on an
//!   idle pooled connection). Time to first event: from the request's start to the
//!   first event in hand, the median of the round's streams. Events per second: the
//!   round's events over the time its streams took, request to end. The ratio is
//!   formed per round (ours / peer, so higher is better for events per second); the
//!   median and the min–max of the rounds are reported. Targets: time to first event
//!   <= 1.05 of the peer, events per second >= 0.95.
//! - `time_to_head_us`, to tell the request's share of the first event from the
//!   stream's: from the request's start until `stream()` (ours) or `send()` (peer)
//!   returned the answer's head, the median of the round's streams. No target.
//! - `close_64_streams_us`: 64 streams to `/v1/hold` open at once (each has read its 3
//!   events; the server holds 64 connections). Ours: `endpoint.close()` until it
//!   returns. Peer: dropping the 64 streams and the client (what releases them).
//!   `close_64_streams_until_server_closed_us`: from the same start until the server
//!   saw the last of the 64 sockets close (it notes the instant its count of live
//!   connections falls to 0). Paired rounds too; no target. After each, the bench
//!   checks, untimed, that the server holds no connection within 5 s.
//!
//! Each row is printed and written to `target/bench-results/stream.json` with
//! `resource_benches::Results`, its target with it, for the `summary` bench. Under
//! `cargo test --benches` (no `--bench` argument) the bench runs one short round of
//! each and writes nothing.

use std::convert::Infallible;
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use reqwest::Url;
use resource_benches::{Paired, Results, Target, interleaved, median, selected};
use resource_runtime::{
    AsyncResource,
    http::{Endpoint, EndpointConfig, EventStream},
};
use serde_json::{Value, json};
use tokio::runtime::Runtime;

/// Events in a `/v1/chat` stream, `[DONE]` not counted.
const EVENTS: usize = 1_000;
/// Events `/v1/hold` sends before it pauses.
const HELD_EVENTS: usize = 3;
/// Streams open at once in `close_64_streams`.
const OPEN: usize = 64;
/// The untimed pause before each stream of a round.
const PAUSE: Duration = Duration::from_millis(1);
/// How long the untimed waits on the server's connection count may take.
const SETTLE: Duration = Duration::from_secs(5);

/// The sizes of one run: a full one under `cargo bench`, a smoke test otherwise.
struct Plan {
    stream_rounds: usize,
    streams_per_round: usize,
    close_rounds: usize,
}

const FULL: Plan = Plan {
    stream_rounds: 25,
    streams_per_round: 30,
    close_rounds: 21,
};

const SMOKE: Plan = Plan {
    stream_rounds: 1,
    streams_per_round: 2,
    close_rounds: 1,
};

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a multi-thread runtime")
}

/// The figures of one row over the paired rounds.
#[derive(Debug)]
struct Row {
    name: &'static str,
    unit: &'static str,
    target: Target,
    ours: Vec<f64>,
    peer: Vec<f64>,
}

impl Row {
    fn new(name: &'static str, unit: &'static str, target: Target) -> Self {
        Row {
            name,
            unit,
            target,
            ours: Vec::new(),
            peer: Vec::new(),
        }
    }
}

/// Runs `ours` and `peer` in `rounds` interleaved rounds (`resource_benches::interleaved`);
/// each returns one figure per row for its round, since a round measures several rows
/// at once.
fn paired(
    rounds: usize,
    rows: &mut [Row],
    ours: impl FnMut() -> Vec<f64>,
    peer: impl FnMut() -> Vec<f64>,
) {
    for (o, p) in interleaved(rounds, ours, peer) {
        for (row, (o, p)) in rows.iter_mut().zip(o.into_iter().zip(p)) {
            row.ours.push(o);
            row.peer.push(p);
        }
    }
}

/// The bench's HTTP/1.1 server on 127.0.0.1.
struct Server {
    base_url: String,
    /// Connections the server holds open now.
    live: Arc<AtomicUsize>,
    /// Connections accepted so far.
    accepted: Arc<AtomicUsize>,
    /// When the count of live connections last fell to 0.
    emptied: Arc<Mutex<Option<Instant>>>,
}

/// Decrements the live connection count when a connection's task ends, and notes the
/// instant when it falls to 0.
struct Live {
    live: Arc<AtomicUsize>,
    emptied: Arc<Mutex<Option<Instant>>>,
}

impl Drop for Live {
    fn drop(&mut self) {
        if self.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            *self.emptied.lock().expect("an unpoisoned lock") = Some(Instant::now());
        }
    }
}

/// The frames of a `/v1/chat` answer, made once and shared (a reference count per
/// frame, not a copy, for each stream).
fn chat_events() -> Arc<Vec<Bytes>> {
    let mut events: Vec<Bytes> = (0..EVENTS)
        .map(|i| {
            let chunk = json!({
                "id": "chatcmpl-bench",
                "object": "chat.completion.chunk",
                "created": 1_767_225_600,
                "model": "gpt-bench",
                "choices": [{
                    "index": 0,
                    "delta": { "content": format!("token{i} ") },
                    "finish_reason": null,
                }],
            });
            Bytes::from(format!("data: {chunk}\n\n"))
        })
        .collect();
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    Arc::new(events)
}

type SseBody = StreamBody<BoxStream<'static, Result<Frame<Bytes>, Infallible>>>;

impl Server {
    fn start(rt: &Runtime) -> Server {
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("a port on 127.0.0.1");
        let base_url = format!(
            "http://{}/v1",
            listener.local_addr().expect("a bound address")
        );
        let live = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::new(AtomicUsize::new(0));
        let emptied = Arc::new(Mutex::new(None));
        let events = chat_events();
        let (counted, total, noted) = (live.clone(), accepted.clone(), emptied.clone());
        rt.spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                stream.set_nodelay(true).expect("TCP_NODELAY");
                counted.fetch_add(1, Ordering::AcqRel);
                total.fetch_add(1, Ordering::AcqRel);
                let live = Live {
                    live: counted.clone(),
                    emptied: noted.clone(),
                };
                let events = events.clone();
                tokio::spawn(async move {
                    let _live = live;
                    let service =
                        hyper::service::service_fn(move |request| answer(request, events.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Server {
            base_url,
            live,
            accepted,
            emptied,
        }
    }

    fn live(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Acquire)
    }

    /// Forgets when the server last held no connection.
    fn reset_emptied(&self) {
        *self.emptied.lock().expect("an unpoisoned lock") = None;
    }

    /// When the server last came to hold no connection.
    fn emptied(&self) -> Option<Instant> {
        *self.emptied.lock().expect("an unpoisoned lock")
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

    fn url(&self, path: &str) -> Url {
        format!("{}/{path}", self.base_url)
            .parse()
            .expect("a valid URL")
    }

    fn endpoint(&self, path: &str) -> Endpoint {
        Endpoint::new(EndpointConfig::new(self.base_url.clone()).path(path))
            .expect("a valid endpoint config")
    }
}

/// Reads the request, then answers a stream of events: all of `/v1/chat`'s, or the
/// first of `/v1/hold`'s and then nothing, until the client goes.
async fn answer(
    request: Request<Incoming>,
    events: Arc<Vec<Bytes>>,
) -> Result<Response<SseBody>, Infallible> {
    let held = request.uri().path().ends_with("/hold");
    let _ = request.into_body().collect().await;
    let frames = futures_util::stream::iter(
        (0..events.len()).map(move |i| Ok::<_, Infallible>(Frame::data(events[i].clone()))),
    );
    let body: BoxStream<'static, _> = if held {
        frames
            .take(HELD_EVENTS)
            .chain(futures_util::stream::pending())
            .boxed()
    } else {
        frames.boxed()
    };
    let mut response = Response::new(StreamBody::new(body));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/event-stream"),
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

/// The request body of every stream.
fn request_body() -> Value {
    json!({
        "model": "gpt-bench",
        "stream": true,
        "messages": [{ "role": "user", "content": "Count to a thousand." }],
    })
}

/// What one stream took: to the answer's head, to its first event, and to its end.
struct Timing {
    head: Duration,
    first: Duration,
    total: Duration,
}

/// One `/v1/chat` stream through the endpoint, read to its end.
async fn endpoint_stream(endpoint: &Endpoint, body: &Value) -> Timing {
    let start = Instant::now();
    let mut events = endpoint
        .stream(body)
        .await
        .expect("a stream from the endpoint");
    let head = start.elapsed();
    let first = events
        .next()
        .await
        .expect("a first event")
        .expect("an event, not an error");
    let first_at = start.elapsed();
    black_box(first.data());
    let mut count = 1;
    while let Some(event) = events.next().await {
        black_box(event.expect("an event, not an error").data());
        count += 1;
    }
    let total = start.elapsed();
    assert_eq!(count, EVENTS);
    Timing {
        head,
        first: first_at,
        total,
    }
}

/// The plain request of a stream.
async fn plain_request(client: &reqwest::Client, url: &Url, body: &Value) -> reqwest::Response {
    client
        .post(url.clone())
        .header(reqwest::header::ACCEPT, "text/event-stream")
        .json(body)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .expect("an answer from reqwest")
}

/// The same stream with plain reqwest and `eventsource-stream`, read to `[DONE]`.
async fn plain_stream(client: &reqwest::Client, url: &Url, body: &Value) -> Timing {
    let start = Instant::now();
    let mut events = plain_request(client, url, body)
        .await
        .bytes_stream()
        .eventsource();
    let head = start.elapsed();
    let first = events
        .next()
        .await
        .expect("a first event")
        .expect("an event, not an error");
    let first_at = start.elapsed();
    black_box(&first.data);
    let mut count = 1;
    while let Some(event) = events.next().await {
        let event = event.expect("an event, not an error");
        if event.data == "[DONE]" {
            break;
        }
        black_box(&event.data);
        count += 1;
    }
    let total = start.elapsed();
    assert_eq!(count, EVENTS);
    Timing {
        head,
        first: first_at,
        total,
    }
}

/// A round of `n` streams, one after another, on a task of the runtime: the median
/// time to first event in µs, the events per second over the round, and the median
/// time to the answer's head in µs.
fn round<F>(rt: &Runtime, n: usize, one: impl Fn() -> F + Send + 'static) -> Vec<f64>
where
    F: Future<Output = Timing> + Send + 'static,
{
    let timings: Vec<Timing> = rt
        .block_on(rt.spawn(async move {
            let mut timings = Vec::with_capacity(n);
            for _ in 0..n {
                // Untimed: the last stream's connection goes back to the pool, so that
                // each stream starts on an idle connection, as a new request would.
                tokio::time::sleep(PAUSE).await;
                timings.push(one().await);
            }
            timings
        }))
        .expect("a round that completes");
    let micros = |d: Duration| d.as_secs_f64() * 1e6;
    let mut firsts: Vec<f64> = timings.iter().map(|t| micros(t.first)).collect();
    let mut heads: Vec<f64> = timings.iter().map(|t| micros(t.head)).collect();
    let total: f64 = timings.iter().map(|t| t.total.as_secs_f64()).sum();
    vec![
        median(&mut firsts),
        (n * EVENTS) as f64 / total,
        median(&mut heads),
    ]
}

fn streams(rt: &Runtime, server: &Server, plan: &Plan) -> (Vec<Row>, f64, f64) {
    let mut endpoint = server.endpoint("chat");
    rt.block_on(endpoint.enter()).expect("the endpoint enters");
    let client = plain_client();
    let url = server.url("chat");
    let body = Arc::new(request_body());

    // Each makes the reader of one stream, for a round's task.
    let ours = || {
        let (endpoint, body) = (endpoint.clone(), body.clone());
        move || {
            let (endpoint, body) = (endpoint.clone(), body.clone());
            async move { endpoint_stream(&endpoint, &body).await }
        }
    };
    let peer = || {
        let (client, url, body) = (client.clone(), url.clone(), body.clone());
        move || {
            let (client, url, body) = (client.clone(), url.clone(), body.clone());
            async move { plain_stream(&client, &url, &body).await }
        }
    };
    // Warm-up: connections, allocations, the parser's buffers.
    round(rt, 5, ours());
    round(rt, 5, peer());

    let mut rows = vec![
        Row::new("time_to_first_event_us", "µs", Target::AtMost(1.05)),
        Row::new("events_per_second", "events/s", Target::AtLeast(0.95)),
        Row::new("time_to_head_us", "µs", Target::Report),
    ];
    let n = plan.streams_per_round;
    let (mut ours_accepted, mut peer_accepted) = (0, 0);
    paired(
        plan.stream_rounds,
        &mut rows,
        || {
            let before = server.accepted();
            let figures = round(rt, n, ours());
            ours_accepted += server.accepted() - before;
            figures
        },
        || {
            let before = server.accepted();
            let figures = round(rt, n, peer());
            peer_accepted += server.accepted() - before;
            figures
        },
    );
    rt.block_on(endpoint.close()).expect("a clean close");
    let streams = (plan.stream_rounds * n) as f64;
    (
        rows,
        ours_accepted as f64 / streams,
        peer_accepted as f64 / streams,
    )
}

/// Opens `OPEN` streams to `/v1/hold` through a new endpoint, closes it, and returns
/// the time `close()` took and the time until the server saw the last socket close.
async fn close_endpoint(server: &Server) -> (Duration, Duration) {
    server.settle(0).await;
    let mut endpoint = server.endpoint("hold");
    endpoint.enter().await.expect("the endpoint enters");
    let body = request_body();
    let mut open: Vec<EventStream> = Vec::with_capacity(OPEN);
    for _ in 0..OPEN {
        let mut events = endpoint.stream(&body).await.expect("a stream");
        for _ in 0..HELD_EVENTS {
            let event = events.next().await.expect("an event").expect("no error");
            black_box(event);
        }
        open.push(events);
    }
    assert_eq!(server.live(), OPEN, "one connection for each open stream");
    server.reset_emptied();
    let start = Instant::now();
    endpoint.close().await.expect("a clean close");
    let took = start.elapsed();
    server.settle(0).await;
    let emptied = server.emptied().expect("the server saw the last close");
    drop(open);
    (took, emptied - start)
}

/// The same with a plain client: the 64 streams and the client dropped.
async fn drop_plain(server: &Server) -> (Duration, Duration) {
    server.settle(0).await;
    let client = plain_client();
    let url = server.url("hold");
    let body = request_body();
    let mut open = Vec::with_capacity(OPEN);
    for _ in 0..OPEN {
        let mut events = plain_request(&client, &url, &body)
            .await
            .bytes_stream()
            .eventsource();
        for _ in 0..HELD_EVENTS {
            let event = events.next().await.expect("an event").expect("no error");
            black_box(event);
        }
        open.push(events);
    }
    assert_eq!(server.live(), OPEN, "one connection for each open stream");
    server.reset_emptied();
    let start = Instant::now();
    drop(black_box(open));
    drop(black_box(client));
    let took = start.elapsed();
    server.settle(0).await;
    let emptied = server.emptied().expect("the server saw the last close");
    (took, emptied - start)
}

fn close(rt: &Runtime, server: &Server, plan: &Plan) -> Vec<Row> {
    let mut rows = vec![
        Row::new("close_64_streams_us", "µs", Target::Report),
        Row::new(
            "close_64_streams_until_server_closed_us",
            "µs",
            Target::Report,
        ),
    ];
    let figures = |(took, emptied): (Duration, Duration)| {
        vec![took.as_secs_f64() * 1e6, emptied.as_secs_f64() * 1e6]
    };
    // Warm-up.
    rt.block_on(close_endpoint(server));
    rt.block_on(drop_plain(server));
    paired(
        plan.close_rounds,
        &mut rows,
        || figures(rt.block_on(close_endpoint(server))),
        || figures(rt.block_on(drop_plain(server))),
    );
    rows
}

fn main() {
    // `cargo test --benches` runs every bench binary once: a smoke run there.
    let full = selected("stream");
    let plan = if full { &FULL } else { &SMOKE };
    let rt = runtime();
    let server = Server::start(&rt);
    let (mut rows, ours_conns, peer_conns) = streams(&rt, &server, plan);
    rows.extend(close(&rt, &server, plan));
    println!(
        "stream: {} rounds of {} streams of {EVENTS} events per side, {} rounds of closing \
         {OPEN} open streams; new connections per stream: endpoint {ours_conns:.2}, \
         reqwest {peer_conns:.2}",
        plan.stream_rounds, plan.streams_per_round, plan.close_rounds
    );
    let mut results = Results::new("stream");
    for row in &rows {
        results.paired(
            row.name,
            "reqwest bytes_stream() + eventsource-stream",
            row.unit,
            row.target,
            Paired::from_rounds(&row.ours, &row.peer),
        );
    }
    if full {
        results.write();
    }
}
