//! Token-weighted limits: an endpoint with a requests limiter and a tokens limiter side
//! by side, against a real HTTP server on 127.0.0.1 whose answers report a `usage`.
//!
//! The loads run on tokio's paused clock: the limiters' waits are skipped, and the
//! server records each request's arrival on the same clock, so every window is checked
//! exactly. The stream test runs on the real clock against a quota that refills one
//! token a day, so no refill can blur its arithmetic.

use std::time::Duration;

use resource_runtime::http::{CallOptions, Endpoint, EndpointConfig, EventStream};
use resource_runtime::limiter::RateLimiter;
use resource_tests::server::{Received, Reply, Sse, TestServer};
use serde_json::{Value, json};
use tokio::time::Instant;

const HANG: Duration = Duration::from_secs(10);

/// Requests: 1 a second, bursts of 2.
const RPM: (u32, u32) = (1, 2);
/// Tokens: 100 a second, bursts of 1 000: at least twice the largest estimate, so a
/// refund never meets the floor of a full burst while callers wait.
const TPM: (u32, u32) = (100, 1_000);
const LARGEST_ESTIMATE: u32 = 400;

async fn endpoint(server: &TestServer, requests: &RateLimiter, tokens: &RateLimiter) -> Endpoint {
    let config = EndpointConfig::new(server.url())
        .name("tokens")
        .path("v1/chat")
        .request_timeout(Duration::from_secs(3600))
        .close_timeout(Duration::from_secs(30));
    let mut endpoint = Endpoint::builder(config)
        .limiter(requests.clone())
        .token_limiter(tokens.clone())
        .build()
        .expect("a valid endpoint");
    resource_runtime::AsyncResource::enter(&mut endpoint)
        .await
        .expect("the endpoint enters");
    endpoint
}

/// A requests limiter of `(rate, burst)` a second, and the tokens limiter [`TPM`].
fn limiters(rpm: (u32, u32)) -> (RateLimiter, RateLimiter) {
    let second = Duration::from_secs(1);
    let requests = RateLimiter::builder(rpm.0, second)
        .burst(rpm.1)
        .build()
        .unwrap();
    let tokens = RateLimiter::builder(TPM.0, second)
        .burst(TPM.1)
        .build()
        .unwrap();
    (requests, tokens)
}

/// `calls` calls from `workers` callers at once, each with an estimate and the usage its
/// answer reports, drawn from `seed`: the usage is `estimate × factor`, the factor
/// drawn from `factor` (in hundredths). Returns what the server received.
async fn load(
    endpoint: &Endpoint,
    server: &TestServer,
    seed: u64,
    calls: usize,
    workers: usize,
    factor: std::ops::Range<u32>,
) -> Vec<(u32, u32)> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let plan: Vec<(u32, u32)> = (0..calls)
        .map(|_| {
            let estimate = rng.u32(10..=LARGEST_ESTIMATE);
            let used = (estimate * rng.u32(factor.clone()) / 100).max(1);
            (estimate, used)
        })
        .collect();
    let queue = std::sync::Arc::new(std::sync::Mutex::new(plan.clone().into_iter()));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let endpoint = endpoint.clone();
        let queue = queue.clone();
        tasks.spawn(async move {
            loop {
                let next = queue.lock().unwrap().next();
                let Some((estimate, used)) = next else { break };
                let options = CallOptions::new().tokens(estimate);
                let request = json!({"estimate": estimate, "usage": {"total_tokens": used}});
                let answer = endpoint
                    .call_with::<_, Value>(&request, &options)
                    .await
                    .expect("every call succeeds");
                assert_eq!(answer.body()["usage"]["total_tokens"], used);
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("a caller panicked");
    }
    assert_eq!(server.requests(), calls);
    plan
}

/// Each request's arrival and the tokens its answer reported, in arrival order.
fn arrivals(received: &[Received]) -> Vec<(Instant, u64)> {
    let mut arrivals: Vec<(Instant, u64)> = received
        .iter()
        .map(|r| {
            let used = r.json().expect("a JSON request")["usage"]["total_tokens"]
                .as_u64()
                .expect("a usage");
            (r.at, used)
        })
        .collect();
    arrivals.sort_by_key(|(at, _)| *at);
    arrivals
}

#[tokio::test(start_paused = true)]
async fn requests_and_tokens_stay_within_both_limits_in_every_window() {
    let server = TestServer::start().await;
    server.set_default(Reply::usage_from_request());
    let (requests, tokens) = limiters(RPM);
    let endpoint = endpoint(&server, &requests, &tokens).await;
    // Estimates as clients make them: the prompt and the most the answer may take, so
    // an answer uses from 30 % to all of its estimate; the difference is given back.
    let plan = load(&endpoint, &server, 7, 80, 8, 30..101).await;
    let arrivals = arrivals(&server.received());
    let estimated: u64 = plan.iter().map(|(e, _)| u64::from(*e)).sum();
    let used: u64 = plan.iter().map(|(_, u)| u64::from(*u)).sum();
    assert!(used * 10 < estimated * 8, "the load gives back tokens");

    let second = Duration::from_secs(1).as_nanos();
    let (mut worst_requests, mut worst_tokens) = (0_i128, 0_i128);
    for i in 0..arrivals.len() {
        let mut in_window = 0_u64;
        for j in i..arrivals.len() {
            let w = (arrivals[j].0 - arrivals[i].0).as_nanos();
            in_window += arrivals[j].1;
            let count = u128::try_from(j - i + 1).unwrap();
            // The limiter's bound: burst + 1 + floor(w × rate).
            let request_bound = u128::from(RPM.1) + 1 + w * u128::from(RPM.0) / second;
            let token_bound = u128::from(TPM.1) + 1 + w * u128::from(TPM.0) / second;
            assert!(
                count <= request_bound,
                "{count} requests within {w} ns: more than {request_bound}"
            );
            assert!(
                u128::from(in_window) <= token_bound,
                "{in_window} tokens within {w} ns: more than {token_bound}"
            );
            let over = |seen: u128, bound: u128| {
                i128::try_from(seen).unwrap() - i128::try_from(bound).unwrap()
            };
            worst_requests = worst_requests.max(over(count, request_bound));
            worst_tokens = worst_tokens.max(over(u128::from(in_window), token_bound));
        }
    }
    eprintln!(
        "{} calls: closest to the bounds: requests {worst_requests}, tokens {worst_tokens}; used {used} of {estimated} estimated tokens",
        arrivals.len()
    );
    // Both limits were reached, so both were in force: the requests limiter
    // within a request of its bound, the tokens limiter within one estimate.
    assert!(worst_requests >= -1, "requests never near their bound");
    assert!(
        worst_tokens >= -i128::from(LARGEST_ESTIMATE),
        "tokens never near their bound ({worst_tokens})"
    );
    // Without the refunds the same load takes at least its estimates' time.
    let took = arrivals.last().unwrap().0 - arrivals[0].0;
    eprintln!("the load took {took:?}");
    let estimates_time = Duration::from_secs_f64(
        (estimated.saturating_sub(u64::from(TPM.1))) as f64 / f64::from(TPM.0),
    );
    assert!(
        took < estimates_time,
        "{took:?}: no faster than charging the estimates ({estimates_time:?})"
    );
}

/// How many tokens the limiter has charged since `start`, full then, if it was never
/// idle since: its schedule ends that many tokens' time after `start`, and that is
/// when a full burst is admitted again.
async fn charged_since(tokens: &RateLimiter, start: Instant) -> f64 {
    tokens.acquire(TPM.1).await.unwrap();
    (start.elapsed().as_secs_f64() * f64::from(TPM.0)).round()
}

#[tokio::test(start_paused = true)]
async fn settling_from_usage_keeps_the_token_quota_within_one_call() {
    let server = TestServer::start().await;
    server.set_default(Reply::usage_from_request());
    // Requests never wait here: the tokens limiter alone holds the callers, and it is
    // never idle from the first call to the last.
    let (requests, tokens) = limiters((100, 100));
    let endpoint = endpoint(&server, &requests, &tokens).await;
    let start = Instant::now();
    // Estimates off both ways: answers use from half to 1.6 times their estimate.
    let plan = load(&endpoint, &server, 11, 60, 6, 50..161).await;
    let estimated: f64 = plan.iter().map(|(e, _)| f64::from(*e)).sum();
    let used: f64 = plan.iter().map(|(_, u)| f64::from(*u)).sum();
    let charged = charged_since(&tokens, start).await;
    eprintln!("charged {charged} tokens for {used} used ({estimated} estimated)");
    assert!(
        (charged - used).abs() <= f64::from(LARGEST_ESTIMATE),
        "charged {charged} tokens for {used} used (estimated {estimated})"
    );
    assert!(
        (charged - estimated).abs() > f64::from(LARGEST_ESTIMATE),
        "the load's estimates ({estimated}) are too close to its usage ({used}) to show a settle"
    );
}

/// A stream whose events report a usage settles when it ends: `estimate` taken, what
/// the events said charged. The caller reads at most `read` events, then drops the
/// stream. Real clock; the quota refills a token a day.
async fn stream_settles(events: Vec<Sse>, estimate: u32, expected_use: u32, read: usize) {
    let server = TestServer::start().await;
    server.push(Reply::sse(events));
    let day = Duration::from_secs(86_400);
    let requests = RateLimiter::new(100, Duration::from_secs(1)).unwrap();
    let tokens = RateLimiter::new(1_000, day).unwrap();
    let endpoint = endpoint(&server, &requests, &tokens).await;
    let options = CallOptions::new().tokens(estimate);
    let mut stream: EventStream = endpoint
        .stream_with(&json!({"stream": true}), &options)
        .await
        .unwrap();
    let mut seen = 0;
    while seen < read
        && let Some(event) = tokio::time::timeout(HANG, stream.next())
            .await
            .expect("the stream hung")
    {
        event.unwrap();
        seen += 1;
    }
    assert!(seen >= 2);
    drop(stream);
    // The stream settles as it lets go of its connection; wait for the settle itself:
    // the estimate given back (or the debt charged) shows in what a try takes.
    let left = 1_000 - expected_use;
    let settled = tokio::time::timeout(HANG, async {
        loop {
            if tokens.try_acquire(left).unwrap() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(settled.is_ok(), "{left} tokens never came back");
    assert!(
        !tokens.try_acquire(1).unwrap(),
        "more than {left} tokens were left"
    );
}

#[tokio::test]
async fn an_openai_stream_settles_from_its_final_usage_chunk() {
    let chunk = |text: &str| {
        Sse::Text(format!(
            "data: {}\n\n",
            json!({"choices": [{"delta": {"content": text}}], "usage": null})
        ))
    };
    stream_settles(
        vec![
            chunk("Hel"),
            chunk("lo"),
            Sse::Text(format!(
                "data: {}\n\n",
                json!({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}})
            )),
            Sse::Text("data: [DONE]\n\n".into()),
        ],
        500,
        12,
        usize::MAX,
    )
    .await;
}

/// A caller that stops reading at the answer's last words, as soon as it has them,
/// still settles the usage that came in the same chunk after them.
#[tokio::test]
async fn a_stream_dropped_after_its_last_words_settles_the_usage_sent_with_them() {
    let chunk = |text: &str| {
        format!(
            "data: {}\n\n",
            json!({"choices": [{"delta": {"content": text}}], "usage": null})
        )
    };
    let usage = format!(
        "data: {}\n\n",
        json!({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}})
    );
    stream_settles(
        vec![
            Sse::Text(chunk("Hel")),
            // One chunk on the wire: the last words, the usage, the end.
            Sse::Text(format!("{}{usage}data: [DONE]\n\n", chunk("lo"))),
        ],
        500,
        12,
        2,
    )
    .await;
}

#[tokio::test]
async fn an_anthropic_stream_settles_from_its_start_and_delta_usage() {
    let event = |name: &str, data: Value| Sse::Text(format!("event: {name}\ndata: {data}\n\n"));
    stream_settles(
        vec![
            event(
                "message_start",
                json!({"type": "message_start", "message": {"usage": {"input_tokens": 40, "output_tokens": 1}}}),
            ),
            event(
                "content_block_delta",
                json!({"type": "content_block_delta", "delta": {"text": "hi"}}),
            ),
            event(
                "message_delta",
                json!({"type": "message_delta", "usage": {"output_tokens": 700}}),
            ),
            event("message_stop", json!({"type": "message_stop"})),
        ],
        100,
        740,
        usize::MAX,
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn an_estimate_above_the_token_burst_fails_at_once_and_a_call_without_usage_keeps_it() {
    let server = TestServer::start().await;
    let (requests, tokens) = limiters(RPM);
    let endpoint = endpoint(&server, &requests, &tokens).await;
    let error = endpoint
        .call_with::<_, Value>(&json!({}), &CallOptions::new().tokens(TPM.1 + 1))
        .await
        .unwrap_err();
    let why = std::error::Error::source(&error).map(ToString::to_string);
    assert!(
        why.as_deref().is_some_and(|why| why.contains("burst")),
        "{error}: {why:?}"
    );
    assert_eq!(server.requests(), 0, "nothing was sent");
    // The echo has no `usage`: the estimate stands.
    endpoint
        .call_with::<_, Value>(&json!({}), &CallOptions::new().tokens(600))
        .await
        .unwrap();
    assert!(tokens.try_acquire(400).unwrap());
    assert!(!tokens.try_acquire(1).unwrap());
}
