//! What a caller learns from a call, against a real HTTP server on 127.0.0.1: the
//! answer's metadata (status, headers, request id, rate limits), the per-call options
//! that go on the wire, the call error (status, body, source chain, conversion into a
//! `ResourceError`), and an endpoint over a `reqwest::Client` of the caller's own.

use std::error::Error as _;
use std::time::Duration;

use resource_runtime::{
    AsyncResource, ResourceError,
    http::{
        CallError, CallErrorKind, CallOptions, Endpoint, EndpointConfig, RateLimits,
        ResourceClient, RetryPolicy, Secret,
    },
};
use resource_tests::server::{Reply, TestServer, entered};
use serde_json::{Value, json};

const SOCKETS: Duration = Duration::from_secs(5);

fn config(url: &str) -> EndpointConfig {
    EndpointConfig::new(url)
        .name("meta")
        .path("v1/chat")
        .retry(
            RetryPolicy::default()
                .max_attempts(2)
                .initial_delay(Duration::from_millis(5))
                .max_delay(Duration::from_millis(20)),
        )
        .request_timeout(Duration::from_secs(5))
        .close_timeout(Duration::from_secs(5))
}

#[tokio::test]
async fn an_answer_comes_with_its_status_headers_request_id_and_rate_limits() {
    let server = TestServer::start().await;
    server.push(
        Reply::json(201, json!({"id": "chatcmpl-1"}))
            .with_header("x-request-id", "req_openai_1")
            .with_header("x-ratelimit-limit-requests", "10000")
            .with_header("x-ratelimit-remaining-requests", "9999")
            .with_header("x-ratelimit-reset-requests", "6ms")
            .with_header("x-ratelimit-limit-tokens", "2000000")
            .with_header("x-ratelimit-remaining-tokens", "1999000")
            .with_header("x-ratelimit-reset-tokens", "1m30s")
            .with_header("x-extra", "one")
            .with_header("x-extra", "two"),
    );
    let endpoint = entered(config(server.url())).await;
    let answer = endpoint
        .call_with::<_, Value>(&json!({"prompt": "hi"}), &CallOptions::new())
        .await
        .unwrap();
    assert_eq!(answer.body()["id"], "chatcmpl-1");
    assert_eq!(answer.status(), 201);
    assert_eq!(answer.request_id(), Some("req_openai_1"));
    assert_eq!(answer.header("Content-Type"), Some("application/json"));
    let meta = answer.meta();
    assert_eq!(meta.reason(), Some("Created"));
    assert_eq!(meta.attempts(), 1);
    assert_eq!(
        meta.header_values("x-extra").collect::<Vec<_>>(),
        ["one", "two"]
    );
    assert!(
        meta.headers()
            .any(|(name, value)| name == "x-extra" && value == "two")
    );
    let limits: &RateLimits = answer.rate_limits();
    assert_eq!(
        (
            limits.limit_requests,
            limits.remaining_requests,
            limits.reset_requests
        ),
        (Some(10_000), Some(9_999), Some(Duration::from_millis(6)))
    );
    assert_eq!(
        (
            limits.limit_tokens,
            limits.remaining_tokens,
            limits.reset_tokens
        ),
        (
            Some(2_000_000),
            Some(1_999_000),
            Some(Duration::from_secs(90))
        )
    );
    assert_eq!(limits.retry_after, None);
    let (body, meta) = answer.into_parts();
    assert_eq!(body["id"], "chatcmpl-1");
    assert_eq!(meta.retry_after(), None);
    endpoint.close().await.unwrap();
}

#[tokio::test]
async fn an_anthropic_style_reply_gives_its_request_id_and_rate_limits() {
    let server = TestServer::start().await;
    server.push(
        Reply::json(200, json!({"type": "message"}))
            .with_header("request-id", "req_anthropic_1")
            .with_header("anthropic-ratelimit-requests-limit", "50")
            .with_header("anthropic-ratelimit-requests-remaining", "49")
            .with_header("anthropic-ratelimit-requests-reset", "2999-01-01T00:00:00Z")
            .with_header("anthropic-ratelimit-tokens-limit", "40000")
            .with_header("anthropic-ratelimit-tokens-remaining", "39500"),
    );
    let endpoint = entered(config(server.url()).path("v1/messages")).await;
    let answer = endpoint
        .call_with::<_, Value>(&json!({"max_tokens": 1}), &CallOptions::new())
        .await
        .unwrap();
    assert_eq!(answer.request_id(), Some("req_anthropic_1"));
    let limits = answer.rate_limits();
    assert_eq!(
        (limits.limit_requests, limits.remaining_requests),
        (Some(50), Some(49))
    );
    assert!(
        limits
            .reset_requests
            .is_some_and(|d| d > Duration::from_secs(86_400))
    );
    assert_eq!(
        (limits.limit_tokens, limits.remaining_tokens),
        (Some(40_000), Some(39_500))
    );
    endpoint.close().await.unwrap();
}

#[tokio::test]
async fn per_call_headers_go_with_the_request_and_replace_configured_ones() {
    let server = TestServer::start().await;
    let endpoint = entered(
        config(server.url())
            .header("x-team", "configured")
            .bearer(Secret::value("sk-configured")),
    )
    .await;
    let options = CallOptions::new()
        .header("X-Team", "per-call")
        .header("x-trace", "t-9")
        .header("authorization", "Bearer sk-tenant-2");
    let _: Value = endpoint
        .call_with(&json!(1), &options)
        .await
        .unwrap()
        .into_body();
    let _: Value = endpoint.call(&json!(2)).await.unwrap();
    let received = server.received();
    assert_eq!(received[0].header("x-team"), Some("per-call"));
    assert_eq!(received[0].header("x-trace"), Some("t-9"));
    assert_eq!(
        received[0].header("authorization"),
        Some("Bearer sk-tenant-2")
    );
    assert_eq!(received[0].header("idempotency-key"), None);
    assert_eq!(received[1].header("x-team"), Some("configured"));
    assert_eq!(received[1].header("x-trace"), None);
    assert_eq!(
        received[1].header("authorization"),
        Some("Bearer sk-configured")
    );
    endpoint.close().await.unwrap();
}

#[tokio::test]
async fn invalid_options_fail_before_anything_is_sent() {
    let server = TestServer::start().await;
    let endpoint = entered(config(server.url())).await;
    for options in [
        CallOptions::new().header("bad header", "x"),
        CallOptions::new().header("x-ok", "line\nbreak"),
        CallOptions::new().idempotency_key("line\nbreak"),
        CallOptions::new().timeout(Duration::ZERO),
    ] {
        let error = endpoint
            .call_with::<_, Value>(&json!(1), &options)
            .await
            .unwrap_err();
        assert_eq!(error.kind(), CallErrorKind::InvalidRequest, "{error}");
        assert_eq!(error.attempts(), 0);
        assert!(!error.is_retryable());
    }
    assert_eq!(server.requests(), 0);
    endpoint.close().await.unwrap();
}

#[tokio::test]
async fn a_failed_call_keeps_the_status_the_headers_and_the_providers_json_error() {
    let server = TestServer::start().await;
    server.push(
        Reply::json(
            400,
            json!({"error": {"message": "max_tokens is too large", "type": "invalid_request_error"}}),
        )
        .with_header("x-request-id", "req_bad_1")
        .with_header("x-ratelimit-remaining-requests", "12"),
    );
    let endpoint = entered(config(server.url())).await;
    let error = endpoint.call::<_, Value>(&json!(1)).await.unwrap_err();
    assert_eq!(error.kind(), CallErrorKind::Status);
    assert_eq!(error.status(), Some(400));
    assert_eq!(error.request_id(), Some("req_bad_1"));
    assert_eq!(error.attempts(), 1);
    assert!(!error.is_retryable() && !error.is_timeout());
    assert_eq!(error.retry_after(), None);
    let meta = error.meta().unwrap();
    assert_eq!(meta.rate_limits().remaining_requests, Some(12));
    let said: Value = error.body_json().unwrap();
    assert_eq!(said["error"]["message"], "max_tokens is too large");
    assert_eq!(said["error"]["type"], "invalid_request_error");
    assert_eq!(
        (error.endpoint(), error.method().as_str()),
        ("meta", "POST")
    );
    assert_eq!(error.url(), format!("{}/v1/chat", server.url()));
    endpoint.close().await.unwrap();
}

#[tokio::test]
async fn the_body_kept_is_bounded_by_the_configured_limit() {
    let server = TestServer::start().await;
    let long = "x".repeat(100_000);
    server.push_many([
        Reply::text(500, long.clone()),
        Reply::text(500, long.clone()),
        Reply::text(400, long.clone()),
    ]);
    let endpoint = entered(config(server.url())).await;
    // The default: 64 KiB.
    let error = endpoint.call::<_, Value>(&json!(1)).await.unwrap_err();
    assert_eq!(error.body().map(<[u8]>::len), Some(64 * 1024));
    assert_eq!(error.attempts(), 2);
    assert!(error.is_retryable(), "the attempts ran out: {error:?}");
    endpoint.close().await.unwrap();

    let endpoint = entered(config(server.url()).error_body_limit(16)).await;
    let error = endpoint.call::<_, Value>(&json!(1)).await.unwrap_err();
    assert_eq!(error.body(), Some(&long.as_bytes()[..16]));
    assert!(error.to_string().ends_with(&"x".repeat(16)), "{error}");
    endpoint.close().await.unwrap();
}

#[tokio::test]
async fn a_call_error_keeps_its_source_chain() {
    // Refused: the port is held, and nothing listens on it.
    let port = TestServer::reserve();
    let addr = port.addr();
    let endpoint = entered(config(&format!("http://{addr}"))).await;
    let error = endpoint.call::<_, Value>(&json!(1)).await.unwrap_err();
    assert_eq!(error.kind(), CallErrorKind::Connect, "{error}");
    assert_eq!(error.attempts(), 2, "a POST that sent nothing is retried");
    assert!(error.is_retryable());
    assert_eq!(error.status(), None);
    let source = error.source().expect("the HTTP client's error");
    let reqwest = source
        .downcast_ref::<reqwest::Error>()
        .expect("a reqwest::Error");
    assert!(reqwest.is_connect(), "{reqwest:?}");
    let mut chain = Vec::new();
    let mut cause = error.source();
    while let Some(next) = cause {
        chain.push(next.to_string());
        cause = next.source();
    }
    assert!(chain.len() >= 2, "{chain:?}");
    assert!(
        !error.to_string().contains(&chain[chain.len() - 1]),
        "{error}"
    );
    endpoint.close().await.unwrap();

    // A body that is not the JSON asked for: the decoder's error.
    let server = TestServer::start().await;
    server.push(Reply::malformed_json());
    let endpoint = entered(config(server.url())).await;
    let error = endpoint.call::<_, Value>(&json!(1)).await.unwrap_err();
    assert_eq!(error.kind(), CallErrorKind::Decode);
    assert_eq!(error.status(), Some(200));
    assert_eq!(error.body(), Some(&br#"{"malformed": tru"#[..]));
    assert!(
        error
            .source()
            .and_then(|s| s.downcast_ref::<serde_json::Error>())
            .is_some()
    );
    endpoint.close().await.unwrap();
}

#[tokio::test]
async fn a_call_error_converts_into_a_resource_error_for_the_resource_client_protocol() {
    let server = TestServer::start().await;
    server.push(Reply::status(404));
    let mut endpoint = Endpoint::new(config(server.url())).unwrap();
    let early = ResourceClient::<Value, Value>::call(&endpoint, &json!(0))
        .await
        .unwrap_err();
    assert!(early.is_not_entered(), "{early}");
    endpoint.enter().await.unwrap();
    let error: ResourceError = ResourceClient::<Value, Value>::call(&endpoint, &json!(1))
        .await
        .unwrap_err();
    let call = error.downcast_ref::<CallError>().expect("the call error");
    assert_eq!(call.status(), Some(404));
    endpoint.close().await.unwrap();
    let late = ResourceClient::<Value, Value>::call(&endpoint, &json!(2))
        .await
        .unwrap_err();
    assert!(late.is_closed(), "{late}");
    // `?` converts too.
    async fn through_question_mark(endpoint: &Endpoint) -> Result<Value, ResourceError> {
        Ok(endpoint.call(&json!(3)).await?)
    }
    assert!(
        through_question_mark(&endpoint)
            .await
            .unwrap_err()
            .is_closed()
    );
}

#[tokio::test]
async fn an_empty_body_decodes_as_null() {
    let server = TestServer::start().await;
    server.push_many([Reply::text(200, ""), Reply::text(200, "")]);
    let endpoint = entered(config(server.url())).await;
    let (): () = endpoint.call(&json!(1)).await.unwrap();
    let nothing: Option<Value> = endpoint.call(&json!(2)).await.unwrap();
    assert_eq!(nothing, None);
    endpoint.close().await.unwrap();
}

#[tokio::test]
async fn an_endpoint_over_its_own_reqwest_client_adds_its_headers_and_drops_only_its_clone() {
    let server = TestServer::start().await;
    let mut defaults = reqwest::header::HeaderMap::new();
    defaults.insert("x-from-client", "yes".parse().unwrap());
    let client = reqwest::Client::builder()
        .default_headers(defaults)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let kept = client.clone();
    let mut endpoint = Endpoint::builder(
        config(server.url())
            .header("x-configured", "1")
            .api_key_header("x-api-key", Secret::value("sk-own-client")),
    )
    .client(client)
    .build()
    .unwrap();
    endpoint.enter().await.unwrap();
    let answer: Value = endpoint.call(&json!({"via": "own client"})).await.unwrap();
    assert_eq!(answer["echo"]["via"], "own client");
    let received = &server.received()[0];
    assert_eq!(received.header("x-from-client"), Some("yes"));
    assert_eq!(received.header("x-configured"), Some("1"));
    assert_eq!(received.header("x-api-key"), Some("sk-own-client"));
    assert_eq!(received.header("content-type"), Some("application/json"));
    assert_eq!(server.open(), 1);

    // The endpoint's close drops its clone; the pool lives on in the caller's clone.
    endpoint.close().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        server.open(),
        1,
        "the caller's clone still pools the connection"
    );
    let again = kept
        .post(format!("{}/v1/chat", server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 200);
    assert_eq!(server.accepted(), 1, "the same pooled connection");
    // The last clone gone, the connection closes.
    drop(again);
    drop(kept);
    assert!(
        server.wait_for_open(0, SOCKETS).await,
        "open: {}",
        server.open()
    );
}

#[tokio::test]
async fn an_own_reqwest_client_gets_the_configured_request_timeout_on_each_attempt() {
    let server = TestServer::start().await;
    server.push(Reply::hang());
    let mut endpoint =
        Endpoint::builder(config(server.url()).request_timeout(Duration::from_millis(200)))
            .client(reqwest::Client::new())
            .build()
            .unwrap();
    endpoint.enter().await.unwrap();
    let error = endpoint.call::<_, Value>(&json!(1)).await.unwrap_err();
    assert_eq!(error.kind(), CallErrorKind::Timeout, "{error}");
    assert!(error.to_string().contains("within 200ms"), "{error}");
    endpoint.close().await.unwrap();
    assert!(
        server.wait_for_open(0, SOCKETS).await,
        "open: {}",
        server.open()
    );
}
