//! `Endpoint::stream` against a real HTTP server on 127.0.0.1 that writes server-sent
//! events and counts its TCP connections and the streams it is writing. Real clock;
//! assertions never bound a duration from above, and sockets are awaited with a
//! generous deadline.

use std::future::Future;
use std::task::Poll;
use std::time::Duration;

use resource_runtime::{
    AsyncResource,
    http::{
        CallError, CallErrorKind, CallOptions, Endpoint, EndpointConfig, Event, EventStream,
        RetryPolicy,
    },
    limiter::RateLimiter,
};
use resource_tests::server::{Reply, Sse, TestServer, entered};
use serde_json::json;

/// The bound on waiting for sockets to close and for items to come: a hang guard.
const HANG: Duration = Duration::from_secs(10);

fn config(server: &TestServer) -> EndpointConfig {
    EndpointConfig::new(server.url())
        .name("stream")
        .path("v1/chat")
        .retry(
            RetryPolicy::default()
                .max_attempts(3)
                .initial_delay(Duration::from_millis(10))
                .max_delay(Duration::from_millis(50)),
        )
        .request_timeout(Duration::from_secs(5))
        .close_timeout(Duration::from_secs(30))
}

/// The next item, or a failed test if none comes within [`HANG`].
async fn next(stream: &mut EventStream) -> Option<Result<Event, CallError>> {
    tokio::time::timeout(HANG, stream.next())
        .await
        .expect("the stream hung")
}

async fn event(stream: &mut EventStream) -> Event {
    match next(stream).await {
        Some(Ok(event)) => event,
        other => panic!("expected an event, got {other:?}"),
    }
}

async fn error(stream: &mut EventStream) -> CallError {
    match next(stream).await {
        Some(Err(error)) => error,
        other => panic!("expected an error, got {other:?}"),
    }
}

/// The server sees no connection open and writes no stream.
async fn assert_released(server: &TestServer) {
    assert!(
        server.wait_for_open(0, HANG).await,
        "open: {}",
        server.open()
    );
    assert!(
        server.wait_for_streams(0, HANG).await,
        "streams still written: {}",
        server.streams()
    );
}

/// A stream whose events keep coming, slowly, for far longer than any test.
fn endless() -> Reply {
    let mut parts = vec![Sse::Text("data: first\n\n".to_owned())];
    for i in 0..10_000 {
        parts.push(Sse::Pause(Duration::from_millis(50)));
        parts.push(Sse::Text(format!("data: {i}\n\n")));
    }
    Reply::sse(parts)
}

#[tokio::test]
async fn a_stream_delivers_parsed_events_and_done_ends_it() {
    let server = TestServer::start().await;
    let endpoint = entered(config(&server)).await;
    server.push(Reply::sse([
        Sse::Text(": keep-alive\n\n".to_owned()),
        Sse::Text("event: delta\nid: 1\ndata: {\"t\":\"Hel\"}\n\n".to_owned()),
        Sse::Text("data: line one\ndata: line".to_owned()),
        Sse::Pause(Duration::from_millis(20)),
        Sse::Text(" two\r\n\r\ndata: [DONE]\n\ndata: after done\n\n".to_owned()),
    ]));
    let mut stream = endpoint.stream(&json!({"prompt": "hi"})).await.unwrap();
    assert_eq!(stream.meta().status(), 200);
    let first = event(&mut stream).await;
    assert_eq!(
        (first.event(), first.data(), first.id()),
        ("delta", "{\"t\":\"Hel\"}", Some("1"))
    );
    assert_eq!(first.json::<serde_json::Value>().unwrap()["t"], "Hel");
    let second = event(&mut stream).await;
    assert_eq!(
        (second.event(), second.data(), second.id()),
        ("message", "line one\nline two", Some("1"))
    );
    assert!(next(&mut stream).await.is_none(), "[DONE] ends the stream");
    assert!(next(&mut stream).await.is_none());
    let received = server.received();
    assert_eq!(received[0].header("accept"), Some("text/event-stream"));
    assert_eq!(received[0].json(), Some(json!({"prompt": "hi"})));
    drop(stream);
    endpoint.close().await.unwrap();
    assert_released(&server).await;
}

#[tokio::test]
async fn a_stream_dropped_or_closed_half_way_releases_its_connection() {
    let server = TestServer::start().await;
    let endpoint = entered(config(&server)).await;

    server.push(endless());
    let mut stream = endpoint.stream(&json!({})).await.unwrap();
    assert_eq!(event(&mut stream).await.data(), "first");
    assert_eq!(server.open(), 1);
    drop(stream);
    // The endpoint is still open: only the stream let go of the connection.
    assert_released(&server).await;
    assert_eq!(endpoint.in_flight(), 0);

    server.push(endless());
    let mut stream = endpoint.stream(&json!({})).await.unwrap();
    assert_eq!(event(&mut stream).await.data(), "first");
    assert_eq!(server.streams(), 1);
    stream.close().await.unwrap();
    assert_eq!(
        endpoint.in_flight(),
        0,
        "close returns once the stream has let go of its connection"
    );
    assert!(next(&mut stream).await.is_none());
    assert_released(&server).await;
    assert_eq!(server.accepted(), 2, "the broken connection was not reused");
    endpoint.close().await.unwrap();
}

#[tokio::test]
async fn the_endpoints_close_cuts_every_open_stream_and_returns_once_they_are_released() {
    let server = TestServer::start().await;
    let endpoint = entered(config(&server)).await;
    let mut streams = Vec::new();
    for _ in 0..3 {
        server.push(Reply::sse([
            Sse::Text("data: first\n\n".to_owned()),
            Sse::Stop,
        ]));
        let mut stream = endpoint.stream(&json!({})).await.unwrap();
        assert_eq!(event(&mut stream).await.data(), "first");
        streams.push(stream);
    }
    assert_eq!(endpoint.in_flight(), 3);
    assert_eq!(server.open(), 3);
    // One caller is waiting for its next event on a task of its own: the close wakes it.
    let mut waiting = streams.pop().unwrap();
    let (polled, was_polled) = tokio::sync::oneshot::channel();
    let waiter = tokio::spawn(async move {
        let mut next = std::pin::pin!(waiting.next());
        let first = std::future::poll_fn(|cx| Poll::Ready(Future::poll(next.as_mut(), cx))).await;
        assert!(first.is_pending(), "{first:?}");
        polled.send(()).unwrap();
        next.await
    });
    was_polled.await.unwrap();
    // The close deadline is 30 s: the close cuts the streams rather than wait for them.
    tokio::time::timeout(HANG, endpoint.close())
        .await
        .expect("the close hung")
        .unwrap();
    assert_eq!(endpoint.in_flight(), 0);
    assert_eq!(endpoint.stats().streams_cut, 3);
    let woken = tokio::time::timeout(HANG, waiter)
        .await
        .expect("the close did not wake the waiting caller")
        .unwrap()
        .expect("an item")
        .unwrap_err();
    assert!(woken.is_closed(), "{woken:?}");
    for stream in &mut streams {
        let cut = error(stream).await;
        assert!(cut.is_closed(), "{cut:?}");
        assert_eq!(cut.kind(), CallErrorKind::Closed);
        assert!(next(stream).await.is_none());
    }
    assert_released(&server).await;
    let refused = endpoint.stream(&json!({})).await.unwrap_err();
    assert!(refused.is_closed());
}

#[tokio::test]
async fn a_reset_mid_stream_ends_it_with_an_error() {
    let server = TestServer::start().await;
    let endpoint = entered(config(&server)).await;
    server.push(Reply::sse([
        Sse::Text("data: first\n\n".to_owned()),
        Sse::Pause(Duration::from_millis(200)),
        Sse::Reset,
    ]));
    let mut stream = endpoint.stream(&json!({})).await.unwrap();
    assert_eq!(event(&mut stream).await.data(), "first");
    let broke = error(&mut stream).await;
    assert_eq!(broke.kind(), CallErrorKind::Interrupted, "{broke:?}");
    assert!(next(&mut stream).await.is_none());
    assert_eq!(
        server.requests(),
        1,
        "nothing is retried once an event came"
    );
    assert_eq!(endpoint.in_flight(), 0);
    assert_released(&server).await;
    endpoint.close().await.unwrap();
}

#[tokio::test]
async fn a_malformed_event_ends_the_stream_with_an_error() {
    let server = TestServer::start().await;
    let endpoint = entered(config(&server).stream_line_limit(64)).await;

    server.push(Reply::sse([
        Sse::Text("data: ok\n\n".to_owned()),
        Sse::Text(format!("data: {}\n\n", "x".repeat(100))),
        Sse::Stop,
    ]));
    let mut stream = endpoint.stream(&json!({})).await.unwrap();
    assert_eq!(event(&mut stream).await.data(), "ok");
    let long = error(&mut stream).await;
    assert_eq!(long.kind(), CallErrorKind::Stream);
    assert!(
        long.to_string()
            .contains("longer than the limit of 64 bytes"),
        "{long}"
    );
    assert!(next(&mut stream).await.is_none());
    assert_released(&server).await;

    server.push(Reply::sse([
        Sse::Raw(bytes_of(b"data: \xFF\xFE\n\n")),
        Sse::Stop,
    ]));
    let mut stream = endpoint.stream(&json!({})).await.unwrap();
    let invalid = error(&mut stream).await;
    assert_eq!(invalid.kind(), CallErrorKind::Stream);
    assert!(invalid.to_string().contains("not UTF-8"), "{invalid}");
    assert!(next(&mut stream).await.is_none());
    assert_released(&server).await;
    endpoint.close().await.unwrap();
}

fn bytes_of(raw: &'static [u8]) -> bytes::Bytes {
    bytes::Bytes::from_static(raw)
}

#[tokio::test]
async fn a_server_that_stops_sending_ends_the_stream_at_the_idle_timeout() {
    let server = TestServer::start().await;
    let stops = || Reply::sse([Sse::Text("data: first\n\n".to_owned()), Sse::Stop]);
    // From the configuration.
    let endpoint = entered(config(&server).stream_idle_timeout(Duration::from_millis(300))).await;
    server.push(stops());
    let mut stream = endpoint.stream(&json!({})).await.unwrap();
    assert_eq!(event(&mut stream).await.data(), "first");
    let silent = error(&mut stream).await;
    assert!(silent.is_timeout(), "{silent:?}");
    assert_eq!(silent.kind(), CallErrorKind::Timeout);
    assert!(next(&mut stream).await.is_none());
    assert_released(&server).await;
    endpoint.close().await.unwrap();

    // From the call, in place of the default 60 s.
    let endpoint = entered(config(&server)).await;
    server.push(stops());
    let options = CallOptions::new().stream_idle_timeout(Duration::from_millis(300));
    let mut stream = endpoint.stream_with(&json!({}), &options).await.unwrap();
    assert_eq!(event(&mut stream).await.data(), "first");
    assert!(error(&mut stream).await.is_timeout());
    assert_released(&server).await;

    // The silence counts from the caller's first wait, not from the answer's head: a
    // caller busy for longer than the timeout before it reads is not told off for it.
    server.push(Reply::sse([
        Sse::Pause(Duration::from_millis(500)),
        Sse::Text("data: late\n\n".to_owned()),
    ]));
    let mut stream = endpoint.stream_with(&json!({}), &options).await.unwrap();
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(event(&mut stream).await.data(), "late");
    assert!(next(&mut stream).await.is_none());
    drop(stream);

    // A timeout too long for the clock means no idle limit, and no panic once events
    // have reset the timer.
    server.push(Reply::sse([
        Sse::Text("data: one\n\n".to_owned()),
        Sse::Pause(Duration::from_millis(50)),
        Sse::Text("data: two\n\n".to_owned()),
    ]));
    let unbounded = CallOptions::new().stream_idle_timeout(Duration::MAX);
    let mut stream = endpoint.stream_with(&json!({}), &unbounded).await.unwrap();
    assert_eq!(event(&mut stream).await.data(), "one");
    assert_eq!(event(&mut stream).await.data(), "two");
    assert!(next(&mut stream).await.is_none());
    // Ended streams gave their connections back to the pool: the close releases them.
    endpoint.close().await.unwrap();
    assert_released(&server).await;
}

#[tokio::test]
async fn a_stream_is_in_flight_and_holds_the_limiters_token_it_took() {
    let server = TestServer::start().await;
    // One token an hour: the stream's is the only one.
    let limiter = RateLimiter::new(1, Duration::from_secs(3600)).unwrap();
    let mut endpoint = Endpoint::builder(config(&server))
        .limiter(limiter.clone())
        .build()
        .unwrap();
    endpoint.enter().await.unwrap();
    server.push(endless());
    let mut stream = endpoint.stream(&json!({})).await.unwrap();
    assert_eq!(event(&mut stream).await.data(), "first");
    assert_eq!(endpoint.in_flight(), 1);
    assert!(!limiter.try_acquire(1).unwrap(), "the stream took it");
    assert_eq!(endpoint.stats().calls, 1);
    drop(stream);
    let deadline = tokio::time::Instant::now() + HANG;
    while endpoint.in_flight() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        endpoint.in_flight(),
        0,
        "a dropped stream is no longer in flight"
    );
    assert_released(&server).await;
    endpoint.close().await.unwrap();
}

#[tokio::test]
async fn retries_apply_before_the_first_event_and_not_after() {
    let server = TestServer::start().await;
    let endpoint = entered(config(&server)).await;
    server.push_many([
        Reply::retry_after(429, 0),
        Reply::status(503),
        Reply::sse_data(["a", "b"], Duration::ZERO),
    ]);
    let mut stream = endpoint.stream(&json!({})).await.unwrap();
    assert_eq!(stream.meta().attempts(), 3);
    assert_eq!(event(&mut stream).await.data(), "a");
    assert_eq!(event(&mut stream).await.data(), "b");
    assert!(next(&mut stream).await.is_none());
    let stats = endpoint.stats();
    assert_eq!(
        (stats.retries_throttled, stats.retries_server_error),
        (1, 1)
    );

    // A status the policy does not retry fails the call itself, with its body.
    server.push(Reply::json(400, json!({"error": {"message": "bad"}})));
    let refused = endpoint.stream(&json!({})).await.unwrap_err();
    assert_eq!(refused.status(), Some(400));
    assert_eq!(server.requests(), 4);

    // Once an event came, a broken connection ends the stream: no new request.
    server.push(Reply::sse([
        Sse::Text("data: a\n\n".to_owned()),
        Sse::Pause(Duration::from_millis(200)),
        Sse::Reset,
    ]));
    let mut stream = endpoint.stream(&json!({})).await.unwrap();
    assert_eq!(event(&mut stream).await.data(), "a");
    assert!(error(&mut stream).await.kind() == CallErrorKind::Interrupted);
    assert!(next(&mut stream).await.is_none());
    assert_eq!(server.requests(), 5);
    assert_eq!(endpoint.stats().retries(), 2);
    drop(stream);
    endpoint.close().await.unwrap();
    assert_released(&server).await;
}
