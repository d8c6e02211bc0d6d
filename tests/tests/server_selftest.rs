//! The loopback test server (`resource_tests::server`) itself works: every fault mode
//! does what the `Endpoint` tests rely on, observed through a real `reqwest` client.
//!
//! Timing assertions are lower bounds only (a slow reply takes at least its delay); the
//! `wait_for_*` deadlines are generous and only bound how long a broken test hangs.

use std::error::Error as _;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use resource_tests::server::{Reply, Sse, TestServer};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;

const WAIT: Duration = Duration::from_secs(5);

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("build the reqwest client")
}

/// The error and all its sources, for messages and for matching on the cause.
fn chain(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[tokio::test]
async fn default_reply_echoes_the_request_and_records_it() {
    let server = TestServer::start().await;
    let client = client();

    let response = client
        .post(format!("{}/v1/chat?model=m", server.url()))
        .bearer_auth("secret-key")
        .header("x-api-key", "k2")
        .json(&json!({"prompt": "hi", "max": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/json",
        "the echo is JSON"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body, json!({"echo": {"prompt": "hi", "max": 3}, "n": 1}));

    // No body, or a body that is not JSON, echoes null.
    let body: Value = client
        .get(format!("{}/health", server.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body, json!({"echo": null, "n": 2}));

    assert_eq!(server.requests(), 2);
    let received = server.received();
    assert_eq!(received.len(), 2);
    let first = &received[0];
    assert_eq!(first.n, 1);
    assert_eq!(first.method, "POST");
    assert_eq!(first.path, "/v1/chat");
    assert_eq!(first.query.as_deref(), Some("model=m"));
    assert_eq!(first.header("Authorization"), Some("Bearer secret-key"));
    assert_eq!(first.header("x-api-key"), Some("k2"));
    assert_eq!(first.header("content-type"), Some("application/json"));
    assert_eq!(first.json(), Some(json!({"prompt": "hi", "max": 3})));
    assert!(
        first
            .headers
            .iter()
            .any(|(name, value)| name == "authorization" && value == "Bearer secret-key"),
        "headers are listed with lower-case names: {:?}",
        first.headers
    );
    let second = &received[1];
    assert_eq!((second.n, second.method.as_str()), (2, "GET"));
    assert_eq!(
        (second.path.as_str(), second.query.as_deref()),
        ("/health", None)
    );
    assert!(second.body.is_empty());
    assert_eq!(second.json(), None);
}

#[tokio::test]
async fn scripted_replies_are_used_in_order_then_the_default() {
    let server = TestServer::start().await;
    server.push(Reply::status(503));
    server.push_many([
        Reply::json(201, json!({"id": 7})),
        Reply::text(418, "teapot"),
        Reply::status(400).with_header("x-trace", "abc"),
        Reply::echo(),
    ]);
    assert_eq!(server.pending(), 5);
    let client = client();
    let url = format!("{}/x", server.url());

    let r = client.post(&url).json(&json!(1)).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({}));

    let r = client.post(&url).json(&json!(2)).send().await.unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"id": 7}));

    let r = client.post(&url).json(&json!(3)).send().await.unwrap();
    assert_eq!(r.status(), 418);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    assert_eq!(r.text().await.unwrap(), "teapot");

    let r = client.post(&url).json(&json!(4)).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.headers()["x-trace"], "abc");

    let r = client.post(&url).json(&json!(5)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"echo": 5, "n": 5}));
    assert_eq!(server.pending(), 0);

    // The queue is empty: the default reply, and a replaced default.
    let r = client.post(&url).json(&json!(6)).send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"echo": 6, "n": 6}));
    server.set_default(Reply::status(500));
    for _ in 0..2 {
        let r = client.post(&url).send().await.unwrap();
        assert_eq!(r.status(), 500);
    }
    assert_eq!(server.requests(), 8);
}

#[tokio::test]
async fn retry_after_headers_are_sent() {
    let server = TestServer::start().await;
    let date = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(30));
    server.push_many([
        Reply::retry_after(429, 7),
        Reply::retry_after_date(503, &date),
        Reply::slow(
            Duration::from_millis(1),
            Reply::retry_after(429, 2).with_header("x-extra", "1"),
        ),
    ]);
    let client = client();

    let r = client.get(server.url()).send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "7");
    assert_eq!(r.json::<Value>().await.unwrap(), json!({}));

    let r = client.get(server.url()).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], date.as_str());

    let r = client.get(server.url()).send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "2");
    assert_eq!(
        r.headers()["x-extra"],
        "1",
        "with_header reaches through slow"
    );
}

#[tokio::test]
async fn provider_style_retry_replies_are_sent() {
    let server = TestServer::start().await;
    server.push_many([
        Reply::retry_after_ms(429, 1500),
        Reply::should_retry(503, false),
        Reply::should_retry(400, true),
        Reply::insufficient_quota(),
    ]);
    let client = client();

    let r = client.post(server.url()).send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after-ms"], "1500");
    assert_eq!(r.json::<Value>().await.unwrap(), json!({}));

    let r = client.post(server.url()).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["x-should-retry"], "false");

    let r = client.post(server.url()).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.headers()["x-should-retry"], "true");

    let r = client.post(server.url()).send().await.unwrap();
    assert_eq!(r.status(), 429);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["type"], "insufficient_quota");
    assert_eq!(body["error"]["code"], "insufficient_quota");
}

/// A reserved port refuses connections until the server starts on it.
#[tokio::test]
async fn a_server_can_start_on_a_port_reserved_before() {
    let port = TestServer::reserve();
    let addr = port.addr();
    let refused = client()
        .get(format!("http://{addr}/"))
        .send()
        .await
        .unwrap_err();
    assert!(refused.is_connect(), "{}", chain(&refused));
    let server = port.start();
    assert_eq!(server.addr(), addr);
    assert_eq!(server.url(), format!("http://{addr}"));
    let r = client()
        .get(format!("{}/up", server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(server.requests(), 1);
}

/// A `Retry-After` date reaches the client as sent and parses back to the instant it
/// was built from (HTTP dates have whole seconds).
#[tokio::test]
async fn a_retry_after_date_round_trips() {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let at = UNIX_EPOCH + Duration::from_secs(now.as_secs() + 30);
    let date = httpdate::fmt_http_date(at);
    let server = TestServer::start().await;
    server.push(Reply::retry_after_date(503, &date));

    let r = client().get(server.url()).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let sent = r.headers()["retry-after"].to_str().unwrap();
    assert_eq!(sent, date);
    assert_eq!(httpdate::parse_http_date(sent).unwrap(), at);
}

#[tokio::test]
async fn a_slow_reply_arrives_after_its_delay() {
    let server = TestServer::start().await;
    let delay = Duration::from_millis(300);
    server.push(Reply::slow(delay, Reply::json(200, json!({"late": true}))));
    let client = client();

    let started = Instant::now();
    let call = tokio::spawn({
        let client = client.clone();
        let url = server.url().to_owned();
        async move { client.get(url).send().await?.json::<Value>().await }
    });
    assert!(server.wait_for_requests(1, WAIT).await);
    assert_eq!(server.in_flight(), 1, "the slow request is in flight");
    let body = call.await.unwrap().unwrap();
    assert!(
        started.elapsed() >= delay,
        "arrived after {:?}",
        started.elapsed()
    );
    assert_eq!(body, json!({"late": true}));
    assert_eq!(server.in_flight(), 0);
}

#[tokio::test]
async fn a_hung_reply_times_the_client_out_and_its_connection_closes() {
    let server = TestServer::start().await;
    server.push(Reply::hang());
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();

    let error = client.get(server.url()).send().await.unwrap_err();
    assert!(error.is_timeout(), "expected a timeout: {}", chain(&error));
    assert_eq!(server.requests(), 1);
    // reqwest drops the in-flight request and, with it, the connection: the server sees
    // the close while the client is still alive.
    assert!(
        server.wait_for_open(0, WAIT).await,
        "the hung connection stays open: {server:?}"
    );
    assert_eq!(
        server.in_flight(),
        0,
        "the hung handler ended with its connection"
    );

    // The client works again, on a new connection.
    let r = client.get(server.url()).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(server.accepted(), 2);
}

#[tokio::test]
async fn a_reset_fails_the_call_and_closes_the_connection() {
    let server = TestServer::start().await;
    server.push(Reply::reset());
    let client = client();

    let error = client.get(server.url()).send().await.unwrap_err();
    assert!(!error.is_timeout());
    let text = chain(&error).to_lowercase();
    assert!(
        text.contains("reset") || text.contains("closed"),
        "expected a reset or closed connection: {text}"
    );
    assert!(server.wait_for_open(0, WAIT).await, "{server:?}");
    assert_eq!(server.in_flight(), 0);

    // The next call gets a new connection and the default reply.
    let r = client.get(server.url()).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(server.accepted(), 2);
    assert_eq!(server.requests(), 2);
}

#[tokio::test]
async fn a_reset_on_a_reused_connection_fails_only_that_call() {
    let server = TestServer::start().await;
    server.push_many([Reply::echo(), Reply::reset()]);
    let client = client();

    let r = client.get(server.url()).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    // Sent on the pooled connection, which the server then resets.
    let error = client.get(server.url()).send().await.unwrap_err();
    assert!(!error.is_timeout(), "{}", chain(&error));
    assert_eq!(server.requests(), 2, "reqwest does not resend the request");
    assert_eq!(server.accepted(), 1);
    assert!(server.wait_for_open(0, WAIT).await, "{server:?}");
}

#[tokio::test]
async fn malformed_json_fails_to_decode() {
    let server = TestServer::start().await;
    server.push(Reply::malformed_json());

    let r = client().get(server.url()).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    let error = r.json::<Value>().await.unwrap_err();
    assert!(
        error.is_decode(),
        "expected a decode error: {}",
        chain(&error)
    );
}

#[tokio::test]
async fn sequential_calls_reuse_one_connection_until_the_client_is_dropped() {
    let server = TestServer::start().await;
    let client = client();

    for i in 0..20 {
        let r = client
            .post(format!("{}/n", server.url()))
            .json(&json!(i))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        // Read the body to the end, so the connection goes back to the pool.
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["echo"], json!(i));
    }
    assert_eq!(server.requests(), 20);
    assert_eq!(server.accepted(), 1, "keep-alive: one connection for all");
    assert_eq!(server.open(), 1, "the pooled connection stays open");

    drop(client);
    assert!(
        server.wait_for_open(0, WAIT).await,
        "dropping the client closes its pooled connection: {server:?}"
    );
    assert_eq!(server.accepted(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_open_one_connection_each_and_keep_them() {
    let server = TestServer::start().await;
    let delay = Duration::from_millis(200);
    server.set_default(Reply::slow(delay, Reply::echo()));
    let client = client();

    let calls: Vec<_> = (0..4)
        .map(|_| {
            let client = client.clone();
            let url = server.url().to_owned();
            tokio::spawn(async move { client.get(url).send().await?.bytes().await })
        })
        .collect();
    assert!(server.wait_for_requests(4, WAIT).await);
    assert_eq!(server.in_flight(), 4);
    for call in calls {
        call.await.unwrap().unwrap();
    }
    assert_eq!(
        server.accepted(),
        4,
        "HTTP/1.1: one connection per concurrent call"
    );

    // All four went back to the pool: later calls reuse them.
    server.set_default(Reply::echo());
    for _ in 0..8 {
        client
            .get(server.url())
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
    }
    assert_eq!(server.accepted(), 4);
    assert_eq!(server.open(), 4);
    drop(client);
    assert!(server.wait_for_open(0, WAIT).await, "{server:?}");
}

#[tokio::test]
async fn dropping_the_server_closes_its_connections() {
    let server = TestServer::start().await;
    let addr = server.addr();

    // An idle raw connection.
    let mut raw = tokio::net::TcpStream::connect(addr).await.unwrap();
    // A call the server never answers, without a client timeout.
    server.push(Reply::hang());
    let call = tokio::spawn({
        let client = client();
        let url = server.url().to_owned();
        async move { client.get(url).send().await }
    });
    assert!(server.wait_for_requests(1, WAIT).await);
    assert_eq!(server.accepted(), 2);

    drop(server);

    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(WAIT, raw.read(&mut buf))
        .await
        .expect("the raw connection is closed, not left open");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let error = tokio::time::timeout(WAIT, call)
        .await
        .expect("the hung call ends when the server goes")
        .unwrap()
        .unwrap_err();
    assert!(!error.is_timeout(), "{}", chain(&error));

    // Nothing listens any more.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn shutdown_closes_everything_before_it_returns() {
    let server = TestServer::start().await;
    let client = client();
    client
        .get(server.url())
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    server.push(Reply::hang());
    let call = tokio::spawn({
        let client = client.clone();
        let url = server.url().to_owned();
        async move { client.get(url).send().await }
    });
    assert!(server.wait_for_requests(2, WAIT).await);
    // The hung call went out on the first call's pooled connection.
    assert_eq!((server.accepted(), server.open()), (1, 1), "{server:?}");

    server.shutdown().await;
    assert_eq!(server.open(), 0);
    assert_eq!(server.in_flight(), 0);
    assert!(call.await.unwrap().is_err());
    assert!(
        tokio::net::TcpStream::connect(server.addr()).await.is_err(),
        "the port is closed"
    );
    // The record outlives the shutdown, and a second shutdown does nothing.
    assert_eq!(server.requests(), 2);
    server.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_slow_reply_follows_a_paused_clock() {
    let server = TestServer::start().await;
    // An hour of tokio time: the paused clock skips it while the runtime is idle.
    server.push(Reply::slow(Duration::from_secs(3600), Reply::status(202)));
    let client = client();

    let started = tokio::time::Instant::now();
    let r = client.get(server.url()).send().await.unwrap();
    assert_eq!(r.status(), 202);
    assert!(started.elapsed() >= Duration::from_secs(3600));
}

#[tokio::test]
async fn an_sse_reply_writes_its_parts_as_they_come_and_ends_as_scripted() {
    let server = TestServer::start().await;
    let client = client();
    let url = format!("{}/v1/chat", server.url());

    // Written part by part, a pause between them; then the body ends.
    server.push(Reply::sse_data(["a", "b"], Duration::from_millis(50)));
    let started = Instant::now();
    let mut response = client.post(&url).send().await.unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let first = response.chunk().await.unwrap().unwrap();
    assert_eq!(&first[..], b"data: a\n\n");
    assert_eq!(server.streams(), 1);
    let mut rest = Vec::new();
    while let Some(chunk) = response.chunk().await.unwrap() {
        rest.extend_from_slice(&chunk);
    }
    assert_eq!(rest, b"data: b\n\ndata: [DONE]\n\n");
    assert!(started.elapsed() >= Duration::from_millis(50));
    assert!(server.wait_for_streams(0, WAIT).await);

    // A reset after the first part: the body breaks off with an error.
    server.push(Reply::sse([
        Sse::Text("data: a\n\n".to_owned()),
        Sse::Pause(Duration::from_millis(100)),
        Sse::Reset,
    ]));
    let mut response = client.post(&url).send().await.unwrap();
    assert_eq!(
        &response.chunk().await.unwrap().unwrap()[..],
        b"data: a\n\n"
    );
    let broke = response.chunk().await.unwrap_err();
    assert!(broke.is_body() || broke.is_decode(), "{}", chain(&broke));
    assert!(server.wait_for_streams(0, WAIT).await);

    // Stopped: the connection stays open, silent, until the client lets go of it.
    server.push(Reply::sse([
        Sse::Raw(bytes::Bytes::from_static(b"\xFF\n")),
        Sse::Stop,
    ]));
    let mut response = client.post(&url).send().await.unwrap();
    assert_eq!(&response.chunk().await.unwrap().unwrap()[..], b"\xFF\n");
    let silent = tokio::time::timeout(Duration::from_millis(200), response.chunk()).await;
    assert!(silent.is_err(), "nothing more comes");
    assert_eq!(server.streams(), 1);
    drop(response);
    drop(client);
    assert!(
        server.wait_for_open(0, WAIT).await,
        "open: {}",
        server.open()
    );
    assert!(server.wait_for_streams(0, WAIT).await);
}
