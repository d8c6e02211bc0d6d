//! An OpenAI-style chat API on 127.0.0.1, so an example needs nothing else: it answers
//! every request after a few milliseconds, with the status a rule of the example's
//! chooses for it (a `429` with a wait, a `503`, or an answer). A request with
//! `"stream": true` is answered as server-sent events, one token at a time, ended by
//! `data: [DONE]`. It counts its open connections.
//!
//! Shared by the examples that call it (`quickstart`, `fleet`), each of which includes
//! it with `#[path = "embedded_api.rs"] mod embedded_api;`.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::header::HeaderValue;
use hyper::{HeaderMap, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// How the API answers one request: with `status` (`200` answers the question; any
/// other status is an error), and, when `retry_after` is given, a wait the caller is
/// asked to honour before it tries again (`Retry-After` in whole seconds, otherwise
/// `retry-after-ms`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Verdict {
    pub(crate) status: StatusCode,
    pub(crate) retry_after: Option<Duration>,
}

impl Verdict {
    /// The question answered.
    pub(crate) fn answer() -> Self {
        Verdict {
            status: StatusCode::OK,
            retry_after: None,
        }
    }
}

/// Chooses the verdict on a request from its number (the first request is 1) and its
/// headers; called as each request arrives, before the API's few milliseconds of work.
pub(crate) type Rule = dyn Fn(u64, &HeaderMap) -> Verdict + Send + Sync;

/// The running API: where it listens, and how many connections it has open.
pub(crate) struct Demo {
    pub(crate) url: String,
    open: Arc<AtomicUsize>,
}

impl Demo {
    /// Waits until no connection is open, up to `deadline`; returns how many are.
    pub(crate) async fn wait_for_no_connections(&self, deadline: Duration) -> usize {
        let end = Instant::now() + deadline;
        while self.open.load(Ordering::SeqCst) > 0 && Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.open.load(Ordering::SeqCst)
    }
}

/// Counts a connection as open until dropped.
struct Open(Arc<AtomicUsize>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Starts the API on a free port of 127.0.0.1, on the current runtime, answering each
/// request as `rule` says; it serves until the runtime ends.
pub(crate) async fn start(
    rule: impl Fn(u64, &HeaderMap) -> Verdict + Send + Sync + 'static,
) -> std::io::Result<Demo> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/v1", listener.local_addr()?);
    let rule: Arc<Rule> = Arc::new(rule);
    let count = Arc::new(AtomicU64::new(0));
    let open = Arc::new(AtomicUsize::new(0));
    let counter = open.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (count, rule) = (count.clone(), rule.clone());
            counter.fetch_add(1, Ordering::SeqCst);
            let open = Open(counter.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    answer(request, count.clone(), rule.clone())
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                drop(open);
            });
        }
    });
    Ok(Demo { url, open })
}

/// A body: whole, or written token by token.
pub(crate) enum Body {
    Full(Full<Bytes>),
    Stream(mpsc::Receiver<Bytes>),
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Body::Full(full) => Pin::new(full).poll_frame(cx),
            Body::Stream(rx) => rx
                .poll_recv(cx)
                .map(|part| part.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Full(full) => full.is_end_stream(),
            Body::Stream(_) => false,
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            Body::Full(full) => full.size_hint(),
            Body::Stream(_) => hyper::body::SizeHint::default(),
        }
    }
}

/// Writes `content` as events, a word at a time, 15 ms apart; stops when the client
/// goes away.
async fn write_tokens(content: String, tx: mpsc::Sender<Bytes>) {
    let words: Vec<&str> = content.split_inclusive(' ').collect();
    for word in words {
        let chunk = json!({ "choices": [{ "delta": { "content": word } }] });
        if tx
            .send(Bytes::from(format!("data: {chunk}\n\n")))
            .await
            .is_err()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    let _ = tx.send(Bytes::from_static(b"data: [DONE]\n\n")).await;
}

async fn answer(
    request: Request<Incoming>,
    count: Arc<AtomicU64>,
    rule: Arc<Rule>,
) -> Result<Response<Body>, Infallible> {
    let n = count.fetch_add(1, Ordering::Relaxed) + 1;
    let verdict = rule(n, request.headers());
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let question: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let content = format!(
        "echo: {}, streamed or not",
        question["messages"][0]["content"].as_str().unwrap_or("?")
    );
    let reply = match verdict.status {
        StatusCode::OK if question["stream"] == json!(true) => {
            let (tx, rx) = mpsc::channel(1);
            tokio::spawn(write_tokens(content, tx));
            let mut response = Response::new(Body::Stream(rx));
            response.headers_mut().insert(
                "content-type",
                HeaderValue::from_static("text/event-stream"),
            );
            return Ok(response);
        }
        StatusCode::OK => {
            json!({ "choices": [{ "message": { "role": "assistant", "content": content } }] })
        }
        StatusCode::TOO_MANY_REQUESTS => json!({ "error": "slow down" }),
        StatusCode::SERVICE_UNAVAILABLE => json!({ "error": "try again" }),
        other => json!({ "error": other.canonical_reason().unwrap_or("failed") }),
    };
    let mut response = Response::new(Body::Full(Full::new(Bytes::from(reply.to_string()))));
    *response.status_mut() = verdict.status;
    response
        .headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    if let Some(wait) = verdict.retry_after {
        let (name, value) = if wait.subsec_nanos() == 0 {
            ("retry-after", wait.as_secs().to_string())
        } else {
            ("retry-after-ms", wait.as_millis().to_string())
        };
        if let Ok(value) = HeaderValue::from_str(&value) {
            response.headers_mut().insert(name, value);
        }
    }
    Ok(response)
}
