//! `Endpoint` against a real HTTP server on 127.0.0.1 that counts its TCP
//! connections. Real clock (reqwest's timers); assertions never bound a duration
//! from above, and sockets are awaited with a generous deadline.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use resource_runtime::{
    AsyncResource, ResourceError,
    executor::AsyncExecutor,
    http::{
        CallErrorKind, CallOptions, Endpoint, EndpointConfig, EndpointError, Method,
        ResourceClient, RetryPolicy, Secret,
    },
    limiter::RateLimiter,
    scope,
};
use resource_tests::server::{Reply, TestServer, entered};
use serde_json::{Value, json};

const SOCKETS: Duration = Duration::from_secs(5);

fn config(server: &TestServer) -> EndpointConfig {
    EndpointConfig::new(server.url())
        .name("test")
        .path("v1/echo")
        .retry(
            RetryPolicy::default()
                .max_attempts(3)
                .initial_delay(Duration::from_millis(10))
                .max_delay(Duration::from_millis(50)),
        )
        .request_timeout(Duration::from_secs(5))
        .close_timeout(Duration::from_secs(5))
}

/// Waits (a few seconds at most) until the server sees no open connection, and fails
/// the test with the count if it still does.
async fn assert_no_open_connections(server: &TestServer) {
    assert!(
        server.wait_for_open(0, SOCKETS).await,
        "open: {}",
        server.open()
    );
}

fn endpoint_error(error: &ResourceError) -> &EndpointError {
    error
        .failures()
        .find_map(|f| f.downcast_ref::<EndpointError>())
        .unwrap_or_else(|| panic!("not an endpoint error: {error:?}"))
}

#[tokio::test]
async fn a_call_sends_json_and_decodes_the_reply() {
    let server = TestServer::start().await;
    let endpoint = entered(config(&server)).await;
    let reply: Value = endpoint.call(&json!({"prompt": "hi"})).await.unwrap();
    assert_eq!(reply["echo"], json!({"prompt": "hi"}));
    let received = server.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].method, "POST");
    assert_eq!(received[0].path, "/v1/echo");
    assert_eq!(received[0].header("content-type"), Some("application/json"));
    endpoint.close().await.unwrap();
    assert_no_open_connections(&server).await;
}

#[tokio::test]
async fn concurrent_calls_share_one_client_and_few_connections() {
    let server = TestServer::start().await;
    let endpoint = entered(config(&server)).await;
    let executor = AsyncExecutor::new(8).unwrap();
    let calls = executor
        .map(0..64_u32, |i| {
            let endpoint = endpoint.clone();
            async move { endpoint.call::<_, Value>(&json!({ "i": i })).await }
        })
        .await;
    for (i, call) in calls.into_iter().enumerate() {
        let reply = call.unwrap().unwrap();
        assert_eq!(reply["echo"]["i"], json!(i));
    }
    assert_eq!(server.requests(), 64);
    // At most 8 at once: the pool reuses its connections instead of opening 64.
    assert!(server.accepted() <= 8, "accepted {}", server.accepted());
    eprintln!("64 calls, 8 at a time: {} connections", server.accepted());
    executor.close().await.unwrap();
    endpoint.close().await.unwrap();
    assert_no_open_connections(&server).await;
}

#[tokio::test]
async fn a_5xx_is_retried_then_the_call_succeeds() {
    let server = TestServer::start().await;
    server.push_many([Reply::status(500), Reply::status(503)]);
    let endpoint = entered(config(&server)).await;
    let reply: Value = endpoint.call(&json!(1)).await.unwrap();
    assert_eq!(reply["echo"], json!(1));
    assert_eq!(server.requests(), 3);
    let stats = endpoint.stats();
    assert_eq!(
        (stats.calls, stats.attempts, stats.retries(), stats.failed),
        (1, 3, 2, 0)
    );
    assert_eq!(stats.retries_server_error, 2);
    endpoint.close().await.unwrap();
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let server = TestServer::start().await;
    server.push(Reply::retry_after(429, 1));
    let endpoint = entered(
        config(&server).retry(
            RetryPolicy::default()
                .initial_delay(Duration::from_millis(1))
                .max_delay(Duration::from_secs(5)),
        ),
    )
    .await;
    let started = Instant::now();
    let _: Value = endpoint.call(&json!(1)).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(server.requests(), 2);
    endpoint.close().await.unwrap();
}

#[tokio::test]
async fn retry_after_pauses_every_caller_of_an_attached_limiter() {
    let server = TestServer::start().await;
    server.push(Reply::retry_after(429, 1));
    let limiter = RateLimiter::new(1_000_000, Duration::from_secs(1)).unwrap();
    let mut endpoint = Endpoint::builder(
        config(&server).retry(
            RetryPolicy::default()
                .initial_delay(Duration::from_millis(1))
                .max_delay(Duration::from_secs(5)),
        ),
    )
    .limiter(limiter.clone())
    .build()
    .unwrap();
    endpoint.enter().await.unwrap();
    let call = {
        let endpoint = endpoint.clone();
        tokio::spawn(async move { endpoint.call::<_, Value>(&json!(1)).await })
    };
    // Another caller of the same limiter, which never talked to the server: once the
    // 429 has paused the limiter, it is held back too.
    let noticed = Instant::now();
    while limiter.try_acquire(1).unwrap() {
        assert!(noticed.elapsed() < SOCKETS, "the limiter was never paused");
        tokio::task::yield_now().await;
    }
    let other = Instant::now();
    limiter.acquire(1).await.unwrap();
    assert!(
        other.elapsed() >= Duration::from_millis(500),
        "{:?}",
        other.elapsed()
    );
    call.await.unwrap().unwrap();
    assert_eq!(server.requests(), 2);
    endpoint.close().await.unwrap();
}

#[tokio::test]
async fn a_4xx_is_not_retried_and_its_status_and_body_are_visible() {
    let server = TestServer::start().await;
    server.push(Reply::json(400, json!({"error": "bad prompt"})));
    let endpoint = entered(config(&server)).await;
    let error = endpoint.call::<_, Value>(&json!(1)).await.unwrap_err();
    assert_eq!(server.requests(), 1);
    assert_eq!(error.kind(), CallErrorKind::Status);
    assert_eq!(error.status(), Some(400));
    assert!(!error.is_retryable());
    assert!(error.to_string().contains("bad prompt"), "{error}");
    assert!(error.to_string().contains(server.url()), "{error}");
    endpoint.close().await.unwrap();
}

/// A call that may be sent twice: the key makes a `POST` safe to retry after it may
/// have reached the server.
fn keyed() -> CallOptions {
    CallOptions::new().idempotency_key("test-call-1")
}

#[tokio::test]
async fn timeouts_are_retried_then_reported() {
    let server = TestServer::start().await;
    server.push_many([Reply::hang(), Reply::hang()]);
    let endpoint = entered(
        config(&server)
            .request_timeout(Duration::from_millis(200))
            .retry(
                RetryPolicy::default()
                    .max_attempts(2)
                    .initial_delay(Duration::from_millis(1))
                    .max_delay(Duration::from_millis(5)),
            ),
    )
    .await;
    let error = endpoint
        .call_with::<_, Value>(&json!(1), &keyed())
        .await
        .unwrap_err();
    assert_eq!(error.kind(), CallErrorKind::Timeout, "{error}");
    assert!(error.is_timeout() && error.is_retryable(), "{error:?}");
    assert_eq!(error.attempts(), 2);
    assert_eq!(server.requests(), 2);
    endpoint.close().await.unwrap();
    assert_no_open_connections(&server).await;
}

#[tokio::test]
async fn resets_are_retried_then_reported() {
    let server = TestServer::start().await;
    server.push_many([Reply::reset(), Reply::reset(), Reply::reset()]);
    let endpoint = entered(config(&server)).await;
    let error = endpoint
        .call_with::<_, Value>(&json!(1), &keyed())
        .await
        .unwrap_err();
    assert_eq!(error.kind(), CallErrorKind::Interrupted, "{error}");
    assert!(error.is_retryable() && !error.is_timeout(), "{error:?}");
    assert_eq!(server.requests(), 3);
    endpoint.close().await.unwrap();
    assert_no_open_connections(&server).await;
}

#[tokio::test]
async fn malformed_json_is_a_decode_error() {
    let server = TestServer::start().await;
    server.push(Reply::malformed_json());
    let endpoint = entered(config(&server)).await;
    let error = endpoint.call::<_, Value>(&json!(1)).await.unwrap_err();
    assert_eq!(error.kind(), CallErrorKind::Decode, "{error}");
    assert_eq!(error.status(), Some(200));
    assert_eq!(server.requests(), 1);
    endpoint.close().await.unwrap();
}

#[tokio::test]
async fn calls_before_enter_and_after_close_fail_at_once() {
    let server = TestServer::start().await;
    let mut endpoint = Endpoint::new(config(&server)).unwrap();
    let early = endpoint.call::<_, Value>(&json!(1)).await.unwrap_err();
    assert!(early.is_not_entered(), "{early}");
    assert!(early.to_string().contains("never entered"), "{early}");
    endpoint.enter().await.unwrap();
    endpoint.close().await.unwrap();
    let late = endpoint.call::<_, Value>(&json!(1)).await.unwrap_err();
    assert!(late.is_closed(), "{late}");
    assert_eq!(server.requests(), 0);
    // A second close is a no-op.
    endpoint.close().await.unwrap();
}

#[tokio::test]
async fn close_waits_for_an_in_flight_call_then_every_connection_closes() {
    let server = TestServer::start().await;
    server.push(Reply::slow(Duration::from_millis(300), Reply::echo()));
    let endpoint = entered(config(&server)).await;
    let call = {
        let endpoint = endpoint.clone();
        tokio::spawn(async move { endpoint.call::<_, Value>(&json!("slow")).await })
    };
    assert!(server.wait_for_requests(1, SOCKETS).await);
    endpoint.close().await.unwrap();
    let reply = call.await.unwrap().unwrap();
    assert_eq!(reply["echo"], json!("slow"));
    assert_no_open_connections(&server).await;
}

#[tokio::test]
async fn close_cuts_a_hung_call_at_its_deadline_and_releases_every_connection() {
    let server = TestServer::start().await;
    server.push(Reply::hang());
    let endpoint = entered(
        config(&server)
            .request_timeout(Duration::from_secs(600))
            .close_timeout(Duration::from_millis(200)),
    )
    .await;
    let call = {
        let endpoint = endpoint.clone();
        tokio::spawn(async move { endpoint.call::<_, Value>(&json!("hung")).await })
    };
    assert!(server.wait_for_requests(1, SOCKETS).await);
    let error = endpoint.close().await.unwrap_err();
    assert!(
        matches!(
            endpoint_error(&error),
            EndpointError::CutAtClose { count: 1, deadline, .. }
                if *deadline == Duration::from_millis(200)
        ),
        "{error:?}"
    );
    let cut = call.await.unwrap().unwrap_err();
    assert_eq!(cut.kind(), CallErrorKind::Cut, "{cut}");
    assert_no_open_connections(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_racing_with_close_succeed_or_are_closed_and_no_connection_stays_open() {
    let server = TestServer::start().await;
    let endpoint = entered(config(&server)).await;
    let calls: Vec<_> = (0..32)
        .map(|i| {
            let endpoint = endpoint.clone();
            tokio::spawn(async move { endpoint.call::<_, Value>(&json!(i)).await })
        })
        .collect();
    tokio::task::yield_now().await;
    endpoint.close().await.unwrap();
    for call in calls {
        match call.await.unwrap() {
            Ok(reply) => assert!(reply["echo"].is_number()),
            Err(e) => assert!(e.is_closed(), "{e}"),
        }
    }
    assert_no_open_connections(&server).await;
}

#[tokio::test]
async fn entering_twice_keeps_one_client() {
    let server = TestServer::start().await;
    let mut endpoint = entered(config(&server)).await;
    let _: Value = endpoint.call(&json!(1)).await.unwrap();
    endpoint.enter().await.unwrap();
    let _: Value = endpoint.call(&json!(2)).await.unwrap();
    // The second call reused the first call's pooled connection.
    assert_eq!(server.accepted(), 1);
    endpoint.close().await.unwrap();
    assert_no_open_connections(&server).await;
}

/// Records every `tracing` event and span field as text.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<String>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap()
            .push_str(&String::from_utf8_lossy(buf));
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn the_key_never_appears_in_debug_display_or_logs() {
    const KEY: &str = "sk-test-4f1c2a-never-print-me";
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let server = TestServer::start().await;
    server.push_many([
        Reply::status(500),
        Reply::json(401, json!({"error": "denied"})),
    ]);
    let config = config(&server).bearer(Secret::value(KEY));
    let endpoint = entered(config.clone()).await;
    let error = endpoint.call::<_, Value>(&json!(1)).await.unwrap_err();
    endpoint.close().await.unwrap();

    // The key was sent...
    assert_eq!(
        server.received()[0].header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
    // ...and shown nowhere.
    for shown in [
        format!("{config:?}"),
        format!("{endpoint:?}"),
        format!("{error}"),
        format!("{error:?}"),
        capture.0.lock().unwrap().clone(),
    ] {
        assert!(!shown.contains(KEY), "the key leaked into: {shown}");
    }
}

#[tokio::test]
async fn a_missing_environment_variable_is_a_clear_error_at_enter() {
    let server = TestServer::start().await;
    let mut endpoint =
        Endpoint::new(config(&server).bearer(Secret::env("RESOURCE_TESTS_SURELY_UNSET_API_KEY")))
            .unwrap();
    let error = endpoint.enter().await.unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains("RESOURCE_TESTS_SURELY_UNSET_API_KEY"),
        "{message}"
    );
    assert!(message.contains("`auth`"), "{message}");
}

#[test]
fn invalid_configuration_is_a_clear_error_naming_the_field() {
    let bad_url = Endpoint::new(EndpointConfig::new("not a url")).unwrap_err();
    assert!(bad_url.to_string().contains("`base_url`"), "{bad_url}");
    let bad_header =
        Endpoint::new(EndpointConfig::new("http://127.0.0.1:1").header("bad header", "x"))
            .unwrap_err();
    assert!(bad_header.to_string().contains("`headers`"), "{bad_header}");
    let bad_method =
        Endpoint::new(EndpointConfig::new("http://127.0.0.1:1").method("GE T")).unwrap_err();
    assert!(bad_method.to_string().contains("`method`"), "{bad_method}");
}

/// A vendor-style SDK client: a foreign connection type closed by a function, wrapped
/// in a user type that derives `AsyncResource` and implements `ResourceClient`.
struct VendorSdk {
    endpoint: Endpoint,
    closes: Arc<Mutex<u32>>,
}

async fn shut_sdk(sdk: &mut VendorSdk) -> Result<(), ResourceError> {
    *sdk.closes.lock().unwrap() += 1;
    sdk.endpoint.close().await
}

async fn open_sdk(sdk: &mut VendorSdk) -> Result<(), ResourceError> {
    sdk.endpoint.enter().await
}

#[derive(AsyncResource)]
struct SdkClient {
    #[resource(enter = open_sdk, close = shut_sdk)]
    sdk: VendorSdk,
}

impl ResourceClient<Value, Value> for SdkClient {
    async fn call(&self, request: &Value) -> Result<Value, ResourceError> {
        Ok(self.sdk.endpoint.call(request).await?)
    }
}

async fn ask<C: ResourceClient<Value, Value>>(client: &C, n: u32) -> Result<Value, ResourceError> {
    client.call(&json!({ "n": n })).await
}

#[tokio::test]
async fn an_endpoint_and_an_sdk_client_side_by_side_through_one_executor() {
    let server = TestServer::start().await;
    let closes = Arc::new(Mutex::new(0));
    let sdk = SdkClient {
        sdk: VendorSdk {
            endpoint: Endpoint::new(config(&server).name("sdk")).unwrap(),
            closes: closes.clone(),
        },
    };
    let endpoint = Endpoint::new(config(&server)).unwrap();
    let executor = AsyncExecutor::new(4).unwrap();
    let answered = scope(sdk, async |sdk: &mut SdkClient| {
        scope(endpoint, async |endpoint: &mut Endpoint| {
            let mut answers = 0;
            for n in 0..8 {
                let (a, b) = (endpoint.clone(), ask(&*sdk, n));
                let direct = executor
                    .execute(async move { ask(&a, n).await })
                    .await
                    .unwrap()
                    .unwrap();
                let via_sdk = b.await.unwrap();
                assert_eq!(direct["echo"], via_sdk["echo"]);
                answers += 2;
            }
            answers
        })
        .await
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(answered, 16);
    assert_eq!(server.requests(), 16);
    assert_eq!(
        *closes.lock().unwrap(),
        1,
        "the SDK client closed exactly once"
    );
    assert_no_open_connections(&server).await;
}

#[tokio::test]
async fn several_endpoints_share_one_executor_and_each_closes_its_connections() {
    let first = TestServer::start().await;
    let second = TestServer::start().await;
    let a = entered(config(&first).name("a")).await;
    let b = entered(config(&second).name("b")).await;
    let executor = AsyncExecutor::new(4).unwrap();
    let calls = executor
        .map(0..40_u32, |i| {
            let endpoint = if i % 2 == 0 { a.clone() } else { b.clone() };
            async move { endpoint.call::<_, Value>(&json!(i)).await }
        })
        .await;
    assert!(calls.into_iter().all(|c| matches!(c, Ok(Ok(_)))));
    assert_eq!((first.requests(), second.requests()), (20, 20));
    executor.close().await.unwrap();
    a.close().await.unwrap();
    // Closing one endpoint releases its connections only.
    assert_no_open_connections(&first).await;
    assert!(second.open() > 0, "b's pooled connections are still there");
    b.close().await.unwrap();
    assert_no_open_connections(&second).await;
}

#[tokio::test]
async fn a_pausing_limiter_takes_tokens_only_for_retries() {
    let server = TestServer::start().await;
    server.push(Reply::status(503));
    // A burst of 3 and a very slow refill: the tokens taken are visible.
    let limiter = RateLimiter::builder(1, Duration::from_secs(3600))
        .burst(3)
        .build()
        .unwrap();
    let mut endpoint = Endpoint::builder(config(&server))
        .pausing_limiter(limiter.clone())
        .build()
        .unwrap();
    endpoint.enter().await.unwrap();
    let _: Value = endpoint.call(&json!(1)).await.unwrap(); // 503, then a retry: 1 token
    let _: Value = endpoint.call(&json!(2)).await.unwrap(); // first attempt only: 0 tokens
    assert_eq!(server.requests(), 3);
    assert!(
        limiter.try_acquire(2).unwrap(),
        "two of the three tokens are left"
    );
    assert!(!limiter.try_acquire(1).unwrap());
    endpoint.close().await.unwrap();
}

#[tokio::test]
async fn the_key_does_not_follow_a_redirect_to_another_host() {
    let server = TestServer::start().await;
    let elsewhere = TestServer::start().await;
    server.push(Reply::status(302).with_header("location", &format!("{}/steal", elsewhere.url())));
    let endpoint = entered(config(&server).bearer(Secret::value("sk-redirect-test"))).await;
    let error = endpoint.call::<_, Value>(&json!(1)).await.unwrap_err();
    assert_eq!(error.status(), Some(302));
    assert_eq!(
        elsewhere.requests(),
        0,
        "the redirect was followed to another host"
    );
    endpoint.close().await.unwrap();
}

#[tokio::test]
async fn request_paths_stay_under_the_base_url() {
    let server = TestServer::start().await;
    let elsewhere = TestServer::start().await;
    let endpoint = entered(config(&server).bearer(Secret::value("sk-path-test"))).await;
    let other_host = format!("{}/x", elsewhere.url());
    let protocol_relative = format!("//{}/x", elsewhere.addr());
    for path in [other_host.as_str(), protocol_relative.as_str()] {
        let error = endpoint
            .request::<Value, Value>(Method::GET, path, None)
            .await
            .unwrap_err();
        assert_eq!(error.kind(), CallErrorKind::InvalidRequest, "{error}");
        assert!(error.to_string().contains("is not under"), "{error}");
    }
    assert_eq!(elsewhere.requests(), 0);
    // A leading slash stays under the base path.
    let _: Value = endpoint
        .request::<Value, Value>(Method::GET, "/models", None)
        .await
        .unwrap();
    assert_eq!(server.received()[0].path, "/models");
    endpoint.close().await.unwrap();
}

#[tokio::test]
async fn a_close_dropped_half_way_still_cuts_the_calls_and_closes_the_endpoint() {
    let server = TestServer::start().await;
    server.push(Reply::hang());
    let endpoint = entered(config(&server).request_timeout(Duration::from_secs(600))).await;
    let call = {
        let endpoint = endpoint.clone();
        tokio::spawn(async move { endpoint.call::<_, Value>(&json!("hung")).await })
    };
    assert!(server.wait_for_requests(1, SOCKETS).await);
    // The close is given up on at once (its caller's own deadline, say).
    let gave_up = tokio::time::timeout(Duration::from_millis(50), endpoint.close()).await;
    assert!(gave_up.is_err());
    // Closing again returns only once the cut call has let go of the client.
    endpoint.close().await.unwrap();
    assert_eq!(endpoint.in_flight(), 0);
    let cut = call.await.unwrap().unwrap_err();
    assert_eq!(cut.kind(), CallErrorKind::Cut, "{cut}");
    assert!(
        endpoint
            .call::<_, Value>(&json!(1))
            .await
            .unwrap_err()
            .is_closed()
    );
    assert_no_open_connections(&server).await;
}

/// The endpoint's close deadline on a runtime without timers: a call in flight (on
/// another runtime) is not cut at a deadline nobody can keep; the close waits for it,
/// says why, and every connection is still released.
#[test]
fn a_close_without_a_timer_waits_for_the_call_in_flight_and_says_why() {
    let workers = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (server, endpoint) = workers.block_on(async {
        let server = TestServer::start().await;
        server.push(Reply::slow(Duration::from_millis(300), Reply::echo()));
        let endpoint = entered(config(&server).close_timeout(Duration::from_millis(10))).await;
        (server, endpoint)
    });
    let call = {
        let endpoint = endpoint.clone();
        workers.spawn(async move { endpoint.call::<_, Value>(&json!("slow")).await })
    };
    workers.block_on(async {
        while server.in_flight() == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    let err = resource_tests::runtime_without_timers()
        .block_on(endpoint.close())
        .unwrap_err();
    assert!(err.is_unenforced_deadline(), "{err}");
    assert_eq!(err.deadline(), Some(Duration::from_millis(10)));
    let answered = workers.block_on(call).unwrap().unwrap();
    assert_eq!(answered["echo"], json!("slow"), "the call was cut");
    assert_eq!(endpoint.in_flight(), 0);
    workers.block_on(assert_no_open_connections(&server));
}
