//! The endpoint's retry policy against a real HTTP server on 127.0.0.1: what is
//! retried and what is not, the waits a server asks for, idempotency keys, the call's
//! deadline, and the limiter a server's wait pauses.
//!
//! Real clock (reqwest's timers): a wait is checked from below only. The exact delays
//! of the loop are checked on tokio's paused clock by the unit tests of
//! `resource-runtime/src/http/retry.rs`.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use resource_runtime::{
    AsyncResource, ResourceError,
    http::{
        CallErrorKind, CallOptions, Endpoint, EndpointConfig, Method, RetryDecision, RetryPolicy,
    },
    limiter::RateLimiter,
};
use resource_tests::server::{Reply, TestServer, entered};
use serde_json::{Value, json};

const SOCKETS: Duration = Duration::from_secs(5);

/// Short backoffs, so that the tests spend their time on what they check.
fn fast() -> RetryPolicy {
    RetryPolicy::default()
        .max_attempts(3)
        .initial_delay(Duration::from_millis(5))
        .max_delay(Duration::from_millis(20))
}

fn config(url: &str) -> EndpointConfig {
    EndpointConfig::new(url)
        .name("retry")
        .path("v1/echo")
        .retry(fast())
        .request_timeout(Duration::from_secs(5))
        .close_timeout(Duration::from_secs(5))
}

/// The value of `name` in every request the server received, in order.
fn sent(server: &TestServer, name: &str) -> Vec<Option<String>> {
    server
        .received()
        .iter()
        .map(|r| r.header(name).map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn a_post_that_could_not_connect_is_retried_and_arrives_once_the_server_is_up() {
    // Held, not listening: refused, and no other test can be given the port.
    let port = TestServer::reserve();
    let addr = port.addr();
    let endpoint = entered(
        config(&format!("http://{addr}")).retry(
            RetryPolicy::default()
                .max_attempts(100)
                .initial_delay(Duration::from_millis(20))
                .multiplier(1.0),
        ),
    )
    .await;
    let call = {
        let endpoint = endpoint.clone();
        tokio::spawn(async move {
            endpoint
                .call_with::<_, Value>(&json!({"create": 1}), &CallOptions::new())
                .await
        })
    };
    // A POST, refused: nothing was sent, so it is tried again.
    let started = Instant::now();
    while endpoint.stats().retries_connection == 0 {
        assert!(
            started.elapsed() < SOCKETS,
            "no retry after a refused connection"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let server = port.start();
    let answer = call.await.unwrap().unwrap();
    assert_eq!(answer.body()["echo"], json!({"create": 1}));
    assert!(answer.meta().attempts() >= 2, "{:?}", answer.meta());
    assert_eq!(server.requests(), 1, "the POST reached the server once");
    endpoint.close().await.unwrap();
}

#[tokio::test]
async fn a_post_whose_connection_was_reset_after_sending_is_not_retried() {
    let server = TestServer::start().await;
    server.push(Reply::reset());
    let endpoint = entered(config(server.url())).await;
    let error = endpoint.call::<_, Value>(&json!(1)).await.unwrap_err();
    assert_eq!(error.kind(), CallErrorKind::Interrupted, "{error}");
    assert!(!error.is_retryable(), "{error:?}");
    assert_eq!(error.attempts(), 1);
    assert_eq!(server.requests(), 1, "the server got the request once");
    endpoint.close().await.unwrap();
}

#[tokio::test]
async fn a_post_that_timed_out_after_sending_is_not_retried() {
    let server = TestServer::start().await;
    server.push(Reply::hang());
    let endpoint = entered(config(server.url())).await;
    // The call's own timeout, in place of the configured 5 s.
    let options = CallOptions::new().timeout(Duration::from_millis(200));
    let started = Instant::now();
    let error = endpoint
        .call_with::<_, Value>(&json!(1), &options)
        .await
        .unwrap_err();
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(error.kind(), CallErrorKind::Timeout, "{error}");
    assert!(error.is_timeout() && !error.is_retryable(), "{error:?}");
    assert!(error.to_string().contains("within 200ms"), "{error}");
    assert_eq!(server.requests(), 1);
    endpoint.close().await.unwrap();
}

#[tokio::test]
async fn idempotent_methods_are_retried_after_a_reset_or_a_timeout() {
    let server = TestServer::start().await;
    let endpoint = entered(config(server.url()).retry(fast().max_attempts(4))).await;
    let options = CallOptions::new().timeout(Duration::from_millis(200));
    for method in [Method::PUT, Method::GET, Method::DELETE] {
        let before = server.requests();
        server.push_many([Reply::reset(), Reply::hang()]);
        let answer = endpoint
            .request_with::<_, Value>(method.clone(), "v1/item", Some(&json!(7)), &options)
            .await
            .unwrap();
        assert_eq!(answer.meta().attempts(), 3, "{method}");
        assert_eq!(server.requests() - before, 3, "{method}");
    }
    let stats = endpoint.stats();
    assert_eq!((stats.retries_connection, stats.retries_timeout), (3, 3));
    endpoint.close().await.unwrap();
}

#[tokio::test]
async fn an_idempotency_key_goes_with_every_attempt_and_lets_a_post_be_retried() {
    let server = TestServer::start().await;
    server.push_many([
        Reply::reset(),
        Reply::hang(),
        Reply::status(503),
        Reply::echo(),
    ]);
    let endpoint = entered(config(server.url()).retry(fast().max_attempts(4))).await;
    let options = CallOptions::new()
        .idempotency_key("order-42")
        .timeout(Duration::from_millis(200));
    let answer = endpoint
        .call_with::<_, Value>(&json!({"order": 42}), &options)
        .await
        .unwrap();
    assert_eq!(answer.meta().attempts(), 4);
    assert_eq!(
        sent(&server, "idempotency-key"),
        vec![Some("order-42".to_owned()); 4],
        "the server saw the same key on every attempt"
    );
    endpoint.close().await.unwrap();
}

#[tokio::test]
async fn a_fresh_key_is_the_same_on_every_attempt_of_a_call_and_new_for_the_next() {
    let server = TestServer::start().await;
    server.push_many([Reply::reset(), Reply::echo(), Reply::echo()]);
    let endpoint = entered(config(server.url())).await;
    let options = CallOptions::new().fresh_idempotency_key();
    for n in 0..2 {
        let _: Value = endpoint
            .call_with(&json!(n), &options)
            .await
            .unwrap()
            .into_body();
    }
    let keys: Vec<String> = sent(&server, "idempotency-key")
        .into_iter()
        .map(|key| key.expect("every attempt carries a key"))
        .collect();
    assert_eq!(keys.len(), 3);
    assert_eq!(keys[0], keys[1], "one call, one key");
    assert_ne!(keys[1], keys[2], "each call its own key");
    endpoint.close().await.unwrap();
}

#[tokio::test]
async fn retry_after_ms_is_obeyed() {
    let server = TestServer::start().await;
    server.push(Reply::retry_after_ms(429, 400));
    let endpoint = entered(config(server.url())).await;
    let started = Instant::now();
    let _: Value = endpoint.call(&json!(1)).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(server.requests(), 2);
    assert_eq!(endpoint.stats().retries_throttled, 1);
    endpoint.close().await.unwrap();
}

#[tokio::test]
async fn a_retry_after_date_is_obeyed() {
    let server = TestServer::start().await;
    // A date is kept to the second: three seconds ahead is at least two away.
    let date = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(3));
    server.push(Reply::retry_after_date(503, &date));
    let endpoint = entered(config(server.url())).await;
    let started = Instant::now();
    let _: Value = endpoint.call(&json!(1)).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(1_500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(server.requests(), 2);
    endpoint.close().await.unwrap();
}

#[tokio::test]
async fn a_retry_after_longer_than_the_backoff_ceiling_is_obeyed_up_to_the_cap() {
    let server = TestServer::start().await;
    server.push(Reply::retry_after(503, 1));
    // The backoff never waits more than 20 ms; the server's second is obeyed anyway.
    let endpoint =
        entered(config(server.url()).retry(fast().max_retry_after(Duration::from_secs(5)))).await;
    let started = Instant::now();
    let _: Value = endpoint.call(&json!(1)).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    endpoint.close().await.unwrap();
}

#[tokio::test]
async fn a_retry_after_past_the_cap_fails_at_once_saying_how_long_the_server_asked() {
    let server = TestServer::start().await;
    server.push(Reply::retry_after(429, 120));
    let endpoint =
        entered(config(server.url()).retry(fast().max_retry_after(Duration::from_secs(10)))).await;
    let error = endpoint.call::<_, Value>(&json!(1)).await.unwrap_err();
    assert_eq!(server.requests(), 1, "no second attempt");
    assert_eq!(error.status(), Some(429));
    assert_eq!(error.retry_after(), Some(Duration::from_secs(120)));
    assert!(error.is_retryable(), "worth trying again, later: {error:?}");
    let shown = error.to_string();
    assert!(
        shown.contains("asked to wait 120s") && shown.contains("10s"),
        "{shown}"
    );
    endpoint.close().await.unwrap();
}

#[tokio::test]
async fn x_should_retry_is_the_servers_word() {
    let server = TestServer::start().await;
    let endpoint = entered(config(server.url())).await;

    server.push(Reply::should_retry(503, false));
    let error = endpoint.call::<_, Value>(&json!(1)).await.unwrap_err();
    assert_eq!((server.requests(), error.status()), (1, Some(503)));
    assert!(!error.is_retryable(), "{error:?}");

    server.push(Reply::should_retry(400, true));
    let _: Value = endpoint.call(&json!(2)).await.unwrap();
    assert_eq!(server.requests(), 3, "the 400 was retried");
    endpoint.close().await.unwrap();
}

#[tokio::test]
async fn a_spent_quota_fails_at_once_and_the_providers_error_is_readable() {
    let server = TestServer::start().await;
    server.push(Reply::insufficient_quota());
    let endpoint = entered(config(server.url())).await;
    let error = endpoint.call::<_, Value>(&json!(1)).await.unwrap_err();
    assert_eq!(server.requests(), 1);
    assert_eq!(error.status(), Some(429));
    assert!(!error.is_retryable(), "{error:?}");
    let body: Value = error.body_json().unwrap();
    assert_eq!(body["error"]["type"], "insufficient_quota");
    // A 429 that only asks to slow down is retried.
    server.push(Reply::json(429, json!({"error": {"type": "requests"}})));
    let _: Value = endpoint.call(&json!(2)).await.unwrap();
    assert_eq!(server.requests(), 3);
    endpoint.close().await.unwrap();
}

#[tokio::test]
async fn the_retried_statuses_are_configurable() {
    let server = TestServer::start().await;
    let endpoint = entered(config(server.url()).retry(fast().statuses([418, 503]))).await;
    server.push(Reply::status(500));
    let error = endpoint.call::<_, Value>(&json!(1)).await.unwrap_err();
    assert_eq!((server.requests(), error.status()), (1, Some(500)));
    server.push_many([Reply::status(418), Reply::status(503)]);
    let _: Value = endpoint.call(&json!(2)).await.unwrap();
    assert_eq!(server.requests(), 4);
    endpoint.close().await.unwrap();
}

#[tokio::test]
async fn a_classifier_decides_from_the_status_the_headers_and_the_body() {
    let server = TestServer::start().await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let policy = fast().classifier(move |reply| {
        record.lock().unwrap().push(reply.status());
        let body = String::from_utf8_lossy(reply.body());
        if reply.header("x-fatal").is_some() {
            Some(RetryDecision::Fail)
        } else if body.contains("model_loading") {
            Some(RetryDecision::RetryAfter(Duration::from_millis(50)))
        } else {
            None
        }
    });
    let endpoint = entered(config(server.url()).retry(policy)).await;
    server.push(Reply::json(
        400,
        json!({"error": {"code": "model_loading"}}),
    ));
    let started = Instant::now();
    let _: Value = endpoint.call(&json!(1)).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(50));
    assert_eq!(server.requests(), 2, "the 400 was retried");

    server.push(Reply::status(503).with_header("x-fatal", "1"));
    let error = endpoint.call::<_, Value>(&json!(2)).await.unwrap_err();
    assert_eq!((server.requests(), error.status()), (3, Some(503)));
    assert_eq!(*seen.lock().unwrap(), [400, 200, 503]);
    endpoint.close().await.unwrap();
}

#[tokio::test]
async fn the_deadline_bounds_the_whole_call() {
    let server = TestServer::start().await;
    // Busy, come back in 200 ms: at 0, 200 and 400 ms; the next would start past the
    // deadline, so it is not made.
    server.set_default(Reply::retry_after_ms(503, 200));
    let endpoint = entered(config(server.url()).retry(fast().max_attempts(1_000))).await;
    let options = CallOptions::new().deadline(Duration::from_millis(500));
    let started = Instant::now();
    let error = endpoint
        .call_with::<_, Value>(&json!(1), &options)
        .await
        .unwrap_err();
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert!(
        error.is_deadline_exceeded() && error.is_timeout(),
        "{error:?}"
    );
    assert!(error.is_retryable());
    assert_eq!(error.status(), Some(503), "the last reply: {error:?}");
    assert!((2..=3).contains(&error.attempts()), "{error:?}");
    assert!(error.to_string().contains("deadline"), "{error}");

    // A hung attempt is cut by what is left of the deadline, not its own 5 s.
    server.set_default(Reply::echo());
    server.push(Reply::hang());
    let options = CallOptions::new().deadline(Duration::from_millis(300));
    let started = Instant::now();
    let error = endpoint
        .call_with::<_, Value>(&json!(2), &options)
        .await
        .unwrap_err();
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(error.kind(), CallErrorKind::Timeout, "{error}");
    assert!(error.is_deadline_exceeded(), "{error:?}");
    endpoint.close().await.unwrap();
}

#[tokio::test]
async fn retry_after_ms_pauses_every_caller_of_an_attached_limiter() {
    let server = TestServer::start().await;
    server.push(Reply::retry_after_ms(429, 800));
    let limiter = RateLimiter::new(1_000_000, Duration::from_secs(1)).unwrap();
    let mut endpoint = Endpoint::builder(config(server.url()))
        .limiter(limiter.clone())
        .build()
        .unwrap();
    endpoint.enter().await.unwrap();
    let call = {
        let endpoint = endpoint.clone();
        tokio::spawn(async move { endpoint.call::<_, Value>(&json!(1)).await })
    };
    let noticed = Instant::now();
    while limiter.try_acquire(1).unwrap() {
        assert!(noticed.elapsed() < SOCKETS, "the limiter was never paused");
        tokio::task::yield_now().await;
    }
    let other = Instant::now();
    limiter.acquire(1).await.unwrap();
    assert!(
        other.elapsed() >= Duration::from_millis(400),
        "{:?}",
        other.elapsed()
    );
    call.await.unwrap().unwrap();
    assert_eq!(server.requests(), 2);
    endpoint.close().await.unwrap();
}

#[tokio::test]
async fn retries_are_counted_by_cause() {
    let server = TestServer::start().await;
    server.push_many([
        Reply::retry_after(429, 0),
        Reply::status(503),
        Reply::status(408),
        Reply::reset(),
        Reply::echo(),
    ]);
    let endpoint = entered(config(server.url()).retry(fast().max_attempts(6))).await;
    let _: Value = endpoint
        .request(Method::PUT, "v1/item", Some(&json!(1)))
        .await
        .unwrap();
    let stats = endpoint.stats();
    assert_eq!(
        (
            stats.retries_throttled,
            stats.retries_server_error,
            stats.retries_other_status,
            stats.retries_connection,
            stats.retries_timeout,
        ),
        (1, 1, 1, 1, 0)
    );
    assert_eq!((stats.retries(), stats.attempts, stats.calls), (4, 5, 1));
    endpoint.close().await.unwrap();
}

#[tokio::test]
async fn every_attempt_of_a_call_sends_the_same_request() {
    let server = TestServer::start().await;
    server.push_many([Reply::status(500), Reply::status(502)]);
    let endpoint = entered(config(server.url())).await;
    let options = CallOptions::new().header("x-trace", "t-1");
    let _: Value = endpoint
        .call_with(&json!({"same": true}), &options)
        .await
        .unwrap()
        .into_body();
    let received = server.received();
    assert_eq!(received.len(), 3);
    let distinct: BTreeSet<_> = received
        .iter()
        .map(|r| {
            (
                r.method.clone(),
                r.path.clone(),
                r.body.clone(),
                r.header("x-trace").map(str::to_owned),
            )
        })
        .collect();
    assert_eq!(distinct.len(), 1, "{received:?}");
    endpoint.close().await.unwrap();
}

#[tokio::test]
async fn a_closed_limiter_fails_the_call_before_anything_is_sent() {
    let server = TestServer::start().await;
    let limiter = RateLimiter::new(100, Duration::from_secs(1)).unwrap();
    let mut endpoint = Endpoint::builder(config(server.url()))
        .limiter(limiter.clone())
        .build()
        .unwrap();
    endpoint.enter().await.unwrap();
    limiter.close().await.unwrap();
    let error = endpoint.call::<_, Value>(&json!(1)).await.unwrap_err();
    assert_eq!(error.kind(), CallErrorKind::Limiter, "{error}");
    assert_eq!(error.attempts(), 0);
    let source = std::error::Error::source(&error).expect("the limiter's error");
    let refused = source
        .downcast_ref::<ResourceError>()
        .expect("a ResourceError");
    assert!(refused.is_closed(), "{refused}");
    assert_eq!(server.requests(), 0);
    endpoint.close().await.unwrap();
}
