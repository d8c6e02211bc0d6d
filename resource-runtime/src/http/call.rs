//! One call: its [`Method`] and [`CallOptions`], the request made from them, its
//! attempts on the wire, and the answer with its metadata ([`Response`],
//! [`ResponseMeta`], [`RateLimits`]).

use std::fmt;
use std::future::{Future, poll_fn};
use std::pin::pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::task::Poll;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use reqwest::Url;
use reqwest::header::{ACCEPT, HeaderMap, HeaderName, HeaderValue};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::task::task_tracker::TaskTrackerToken;

use super::retry::{Answer, Attempts, Failed, Outcome, Sent, Stopped, server_wait_at};
use super::usage::Settle;
use super::{CallError, CallErrorKind, Endpoint};

/// An HTTP method.
///
/// ```
/// use resource_runtime::http::Method;
///
/// assert_eq!(Method::GET.as_str(), "GET");
/// assert!(Method::PUT.is_idempotent());
/// assert!(!Method::POST.is_idempotent());
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Method(reqwest::Method);

impl Method {
    /// `GET`.
    pub const GET: Method = Method(reqwest::Method::GET);
    /// `HEAD`.
    pub const HEAD: Method = Method(reqwest::Method::HEAD);
    /// `POST`.
    pub const POST: Method = Method(reqwest::Method::POST);
    /// `PUT`.
    pub const PUT: Method = Method(reqwest::Method::PUT);
    /// `DELETE`.
    pub const DELETE: Method = Method(reqwest::Method::DELETE);
    /// `PATCH`.
    pub const PATCH: Method = Method(reqwest::Method::PATCH);
    /// `OPTIONS`.
    pub const OPTIONS: Method = Method(reqwest::Method::OPTIONS);

    /// The method's name, e.g. `"POST"`.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// Whether sending the request twice does what sending it once does (RFC 9110):
    /// `GET`, `HEAD`, `PUT`, `DELETE`, `OPTIONS` and `TRACE` are; `POST` and `PATCH`
    /// are not. A request that is not may still be retried after it may have reached
    /// the server when it carries an idempotency key.
    pub fn is_idempotent(&self) -> bool {
        matches!(
            self.0,
            reqwest::Method::GET
                | reqwest::Method::HEAD
                | reqwest::Method::PUT
                | reqwest::Method::DELETE
                | reqwest::Method::OPTIONS
                | reqwest::Method::TRACE
        )
    }

    /// The method named `name` (any valid token, e.g. from a configuration file).
    pub(crate) fn from_name(name: &str) -> Option<Method> {
        reqwest::Method::from_bytes(name.as_bytes())
            .ok()
            .map(Method)
    }

    pub(crate) fn as_reqwest(&self) -> &reqwest::Method {
        &self.0
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The header that carries an idempotency key.
pub(crate) const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// What one call adds to the endpoint's configuration: headers, a timeout per attempt,
/// a deadline for the whole call, an idempotency key. Given to
/// [`Endpoint::call_with`](super::Endpoint::call_with) and
/// [`Endpoint::request_with`](super::Endpoint::request_with); one value can serve many
/// calls.
///
/// A header or key that is not valid is reported by the call it is given to, before
/// anything is sent.
///
/// ```
/// use std::time::Duration;
/// use resource_runtime::http::CallOptions;
///
/// let options = CallOptions::new()
///     .header("OpenAI-Organization", "org-123")
///     .timeout(Duration::from_secs(20)) // each attempt
///     .deadline(Duration::from_secs(60)) // the whole call, retries and waits included
///     .fresh_idempotency_key(); // a new key for each call, the same on its retries
/// # let _ = options;
/// ```
#[derive(Clone, Default)]
pub struct CallOptions {
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) deadline: Option<Duration>,
    pub(crate) stream_idle_timeout: Option<Duration>,
    pub(crate) key: Key,
    /// The tokens this call is estimated to use, for the endpoint's token limiter.
    pub(crate) tokens: Option<u32>,
    /// What was not valid, for the call to report.
    pub(crate) invalid: Option<String>,
}

/// The idempotency key of a call.
#[derive(Clone, Debug, Default)]
pub(crate) enum Key {
    #[default]
    None,
    Given(HeaderValue),
    /// A new key for each call.
    Fresh,
}

impl fmt::Debug for CallOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Header values may be keys: names only.
        let names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("CallOptions")
            .field("headers", &names)
            .field("timeout", &self.timeout)
            .field("deadline", &self.deadline)
            .field("stream_idle_timeout", &self.stream_idle_timeout)
            .field(
                "idempotency_key",
                &match self.key {
                    Key::None => "none",
                    Key::Given(_) => "given",
                    Key::Fresh => "fresh for each call",
                },
            )
            .field("tokens", &self.tokens)
            .field("invalid", &self.invalid)
            .finish()
    }
}

impl CallOptions {
    /// No options: the endpoint's configuration alone.
    pub fn new() -> Self {
        CallOptions::default()
    }

    fn refuse(&mut self, why: String) {
        self.invalid.get_or_insert(why);
    }

    /// A header for this call, beside the configured ones; it replaces a configured
    /// header (or the key's header) of the same name.
    #[must_use]
    pub fn header(mut self, name: &str, value: &str) -> Self {
        let Ok(header) = HeaderName::from_bytes(name.as_bytes()) else {
            self.refuse(format!("`{name}` is not a valid header name"));
            return self;
        };
        match HeaderValue::from_str(value) {
            Ok(value) => self.headers.push((header, value)),
            Err(_) => self.refuse(format!("the value of `{name}` is not a valid header value")),
        }
        self
    }

    /// The time each attempt of this call may take, from connect to the last byte, in
    /// place of [`EndpointConfig::request_timeout`](super::EndpointConfig::request_timeout).
    /// Zero is refused: it would cut every attempt at once.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        if timeout.is_zero() {
            self.refuse("a zero timeout would cut every attempt at once".to_owned());
        }
        self.timeout = Some(timeout);
        self
    }

    /// The time the whole call may take, counted from its start: waits for the
    /// limiter, every attempt and the delays between them. An attempt gets what is
    /// left when that is less than its timeout, and a retry whose delay would end past
    /// the deadline is not made: the call fails with the last attempt's error, for
    /// which [`CallError::is_deadline_exceeded`](super::CallError::is_deadline_exceeded)
    /// is true. Zero is refused.
    #[must_use]
    pub fn deadline(mut self, deadline: Duration) -> Self {
        if deadline.is_zero() {
            self.refuse("a zero deadline would end the call before it starts".to_owned());
        }
        self.deadline = Some(deadline);
        self
    }

    /// How long a streamed answer ([`Endpoint::stream_with`](super::Endpoint::stream_with))
    /// may send nothing while its caller waits for the next event before it ends with
    /// a timeout error, in place of
    /// [`EndpointConfig::stream_idle_timeout`](super::EndpointConfig::stream_idle_timeout).
    /// Zero is refused; `Duration::MAX` puts no limit on the silence.
    #[must_use]
    pub fn stream_idle_timeout(mut self, timeout: Duration) -> Self {
        if timeout.is_zero() {
            self.refuse("a zero idle timeout would end every stream at once".to_owned());
        }
        self.stream_idle_timeout = Some(timeout);
        self
    }

    /// Sends `Idempotency-Key: key` with every attempt of the call, so that a request
    /// that is not idempotent by its method (a `POST`) may be retried after it may
    /// have reached the server: the server does what the key names once. Give each
    /// call a key of its own: these options send the same key with every call made
    /// with them (see [`fresh_idempotency_key`](Self::fresh_idempotency_key)).
    #[must_use]
    pub fn idempotency_key(mut self, key: &str) -> Self {
        match HeaderValue::from_str(key) {
            Ok(value) if !key.is_empty() => self.key = Key::Given(value),
            _ => self.refuse("the idempotency key is not a valid header value".to_owned()),
        }
        self
    }

    /// The tokens this call is estimated to use (the prompt's and the most the answer
    /// may take): taken from the endpoint's
    /// [`token_limiter`](super::EndpointBuilder::token_limiter) before the first attempt,
    /// and settled from the answer's `usage`. Without a token limiter it does nothing.
    /// An estimate above the token limiter's burst could never be admitted: the call
    /// fails at once with a limiter error that says so.
    #[must_use]
    pub fn tokens(mut self, estimate: u32) -> Self {
        self.tokens = Some(estimate);
        self
    }

    /// Sends an `Idempotency-Key` made at random (a version 4 UUID: 122 random bits)
    /// for each call made with these options, the same on every attempt of that call.
    #[must_use]
    pub fn fresh_idempotency_key(mut self) -> Self {
        self.key = Key::Fresh;
        self
    }
}

/// A new random idempotency key: a version 4 UUID. Hex digits and dashes are always a
/// valid header value; were one refused, the call would go without a key (and so not
/// be retried once it may have reached the server), never with a key shared by calls.
pub(crate) fn fresh_key() -> Option<HeaderValue> {
    let bits = fastrand::u128(..);
    // Version 4, variant 1.
    let bits = (bits & !(0xf << 76) | (0x4 << 76)) & !(0x3 << 62) | (0x2 << 62);
    let hex = format!("{bits:032x}");
    let uuid = format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    );
    HeaderValue::from_str(&uuid).ok()
}

// The calls of an endpoint: the request made, its attempts run, its answer decoded.
impl Endpoint {
    /// Sends `request` as JSON with the configured method to the configured path, and
    /// decodes the JSON answer.
    ///
    /// An empty body is decoded as JSON `null`, so `()` or an `Option` accepts a
    /// `204 No Content`.
    pub async fn call<Req, Resp>(&self, request: &Req) -> Result<Resp, CallError>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        self.call_with(request, &CallOptions::new())
            .await
            .map(Response::into_body)
    }

    /// Like [`call`](Self::call), with `options` for this call, and with the reply's
    /// metadata beside the answer.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use resource_runtime::http::{CallOptions, Endpoint};
    /// use serde_json::{Value, json};
    ///
    /// # async fn demo(api: &Endpoint) -> Result<(), resource_runtime::http::CallError> {
    /// let options = CallOptions::new()
    ///     .fresh_idempotency_key()
    ///     .deadline(Duration::from_secs(30));
    /// let answer = api.call_with::<_, Value>(&json!({"prompt": "hi"}), &options).await?;
    /// println!("{} after {} attempt(s)", answer.status(), answer.meta().attempts());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn call_with<Req, Resp>(
        &self,
        request: &Req,
        options: &CallOptions,
    ) -> Result<Response<Resp>, CallError>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        let inner = &*self.inner;
        let body = self.encode(&inner.method, inner.url.as_str(), request)?;
        self.exchange(&inner.method, &inner.url, Some(body), options)
            .await
    }

    /// Sends `body` (as JSON, if any) with `method` to `path` under the base URL, and
    /// decodes the JSON answer. The path stays under the base URL: an absolute URL, a
    /// `//host` path or a `..` that leaves the base is refused.
    ///
    /// ```no_run
    /// use resource_runtime::http::{Endpoint, Method};
    /// use serde_json::Value;
    ///
    /// # async fn demo(api: &Endpoint) -> Result<(), resource_runtime::http::CallError> {
    /// let models: Value = api.request(Method::GET, "models", None::<&()>).await?;
    /// # let _ = models;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn request<Req, Resp>(
        &self,
        method: Method,
        path: &str,
        body: Option<&Req>,
    ) -> Result<Resp, CallError>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        self.request_with(method, path, body, &CallOptions::new())
            .await
            .map(Response::into_body)
    }

    /// Like [`request`](Self::request), with `options` for this call, and with the
    /// reply's metadata beside the answer.
    pub async fn request_with<Req, Resp>(
        &self,
        method: Method,
        path: &str,
        body: Option<&Req>,
        options: &CallOptions,
    ) -> Result<Response<Resp>, CallError>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        let base = &self.inner.base;
        // A path stays under the base URL: an absolute URL or `//host` would send the
        // key to another host, and a leading `/` would drop the base's own path.
        let relative = path.trim_start_matches('/');
        let Some(url) = base.join(relative).ok().filter(|url| {
            !path.contains("://")
                && !path.starts_with("//")
                && url.origin() == base.origin()
                && url.path().starts_with(base.path())
        }) else {
            return Err(
                CallError::new(CallErrorKind::InvalidRequest, &self.inner.name, &method, path)
                    .detail(format!(
                        "the path `{path}` is not under {base}: give a relative path such as `models` or `chat/completions`"
                    )),
            );
        };
        let body = match body {
            Some(body) => Some(self.encode(&method, url.as_str(), body)?),
            None => None,
        };
        self.exchange(&method, &url, body, options).await
    }

    /// The request body as JSON.
    pub(super) fn encode<Req: Serialize + ?Sized>(
        &self,
        method: &Method,
        url: &str,
        request: &Req,
    ) -> Result<Bytes, CallError> {
        serde_json::to_vec(request).map(Bytes::from).map_err(|e| {
            CallError::new(CallErrorKind::InvalidRequest, &self.inner.name, method, url)
                .detail("the body does not serialize to JSON")
                .caused_by(e)
        })
    }

    /// One call: its attempts, then its answer decoded.
    async fn exchange<Resp: DeserializeOwned>(
        &self,
        method: &Method,
        url: &Url,
        body: Option<Bytes>,
        options: &CallOptions,
    ) -> Result<Response<Resp>, CallError> {
        let inner = &*self.inner;
        let (answer, attempts, _call) = self.send(method, url, body, options, None).await?;
        if let Some(limiter) = &inner.token_limiter {
            let mut settle = Settle::new(limiter.clone(), options.tokens.unwrap_or(0));
            settle.read(&answer.body);
        }
        let meta = ResponseMeta::new(answer.status, answer.headers, attempts);
        let text: &[u8] = if answer.body.is_empty() {
            b"null"
        } else {
            &answer.body
        };
        match serde_json::from_slice(text) {
            Ok(decoded) => Ok(Response::new(decoded, meta)),
            Err(e) => {
                inner.counters.failed.fetch_add(1, Ordering::Relaxed);
                let kept = answer
                    .body
                    .slice(..answer.body.len().min(inner.config.error_body_limit));
                Err(
                    CallError::new(CallErrorKind::Decode, &inner.name, method, url.as_str())
                        .reply(meta, Some(kept))
                        .attempts_made(attempts)
                        .caused_by(e),
                )
            }
        }
    }

    /// Registers a call, runs its attempts, and cuts it if the close deadline passes.
    /// Returns the answer, the attempts it took, and the call's place among those in
    /// flight.
    ///
    /// With `stream`, the call is a stream's: a success's body is not read, its
    /// response is left in `stream`; the attempt's timeout bounds the wait for the
    /// answer's head only, and the endpoint's close cuts it at once.
    pub(super) async fn send(
        &self,
        method: &Method,
        url: &Url,
        body: Option<Bytes>,
        options: &CallOptions,
        stream: Option<&Mutex<Option<reqwest::Response>>>,
    ) -> Result<(Answer, u32, TaskTrackerToken), CallError> {
        let inner = &*self.inner;
        let error = |kind| CallError::new(kind, &inner.name, method, url.as_str());
        if let Some(why) = &options.invalid {
            return Err(error(CallErrorKind::InvalidRequest).detail(why.clone()));
        }
        let (client, call) = {
            let state = inner.lock();
            if state.closing || state.closed {
                return Err(error(CallErrorKind::Closed));
            }
            let Some(client) = state.client.clone() else {
                return Err(error(CallErrorKind::NotEntered));
            };
            // Counted under the lock: a close that saw no call sees none start.
            (client, inner.calls_in_flight.token())
        };
        inner.counters.calls.fetch_add(1, Ordering::Relaxed);
        // Only what this call adds: a client made at `enter` has the rest as defaults.
        let mut headers = client.headers.as_deref().cloned().unwrap_or_default();
        if stream.is_some() && !inner.headers.contains_key(ACCEPT) {
            headers.insert(ACCEPT, super::stream::accept_header());
        }
        for (name, value) in &options.headers {
            headers.insert(name.clone(), value.clone());
        }
        match &options.key {
            Key::None => {}
            Key::Given(key) => {
                headers.insert(IDEMPOTENCY_KEY, key.clone());
            }
            Key::Fresh => {
                if let Some(key) = fresh_key() {
                    headers.insert(IDEMPOTENCY_KEY, key);
                }
            }
        }
        let started = AtomicU32::new(0);
        let attempts = Attempts {
            endpoint: &inner.name,
            policy: &inner.config.retry,
            method,
            idempotent: method.is_idempotent() || headers.contains_key(IDEMPOTENCY_KEY),
            limiter: inner.limiter.as_ref(),
            first_attempt_takes_token: inner.first_attempt_takes_token,
            token_limiter: inner.token_limiter.as_ref(),
            tokens: options.tokens.unwrap_or(0),
            admission: &inner.admission,
            attempt_timeout: options.timeout.unwrap_or(inner.config.request_timeout),
            deadline: options
                .deadline
                .and_then(|d| tokio::time::Instant::now().checked_add(d)),
            counters: &inner.counters,
            started: &started,
        };
        let limit = inner.config.error_body_limit;
        // A client made at `enter` has the configured timeout already.
        let own_timeout = client
            .headers
            .is_none()
            .then_some(inner.config.request_timeout);
        let run = attempts.run(|timeout| {
            let mut request = client
                .http
                .request(method.as_reqwest().clone(), url.clone())
                .headers(headers.clone());
            if stream.is_some() {
                // A stream has no overall timeout: its head has the attempt's, and the
                // silence between its events the idle timeout.
                request = request.timeout(STREAM_TIMEOUT);
            } else if own_timeout != Some(timeout) {
                request = request.timeout(timeout);
            }
            if let Some(body) = &body {
                // A reference count, not a copy, for each attempt.
                request = request.body(body.clone());
            }
            async move {
                match stream {
                    Some(slot) => stream_attempt(request, limit, timeout, slot).await,
                    None => attempt(request, limit).await,
                }
            }
        });
        let mut run = pin!(run);
        let mut cut = pin!(inner.cut.cancelled());
        let mut streams_cut = pin!(inner.streams_cut.cancelled());
        let ended = poll_fn(|cx| {
            if let Poll::Ready(ended) = run.as_mut().poll(cx) {
                return Poll::Ready(Ok(ended));
            }
            if cut.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(CallErrorKind::Cut));
            }
            if stream.is_some() && streams_cut.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(CallErrorKind::Closed));
            }
            Poll::Pending
        })
        .await;
        let made = started.load(Ordering::Relaxed);
        let result = match ended {
            Ok(Ok(answer)) => Ok((answer, made, call)),
            Ok(Err(stopped)) => Err(stopped_error(
                error,
                stopped,
                made,
                inner.config.retry.max_retry_after,
            )),
            Err(kind) => Err(error(kind).attempts_made(made)),
        };
        result.inspect_err(|_| {
            inner.counters.failed.fetch_add(1, Ordering::Relaxed);
        })
    }
}

/// The error of a call whose attempts stopped without an answer.
fn stopped_error(
    error: impl Fn(CallErrorKind) -> CallError,
    stopped: Stopped,
    attempts: u32,
    max_retry_after: Duration,
) -> CallError {
    let Stopped {
        last,
        retryable,
        asked,
        deadline_passed,
        limiter,
        timed_out_after,
    } = stopped;
    let mut timed_out = false;
    let mut failure = match (limiter, last) {
        (Some(refused), _) => error(CallErrorKind::Limiter).caused_by(refused),
        // The deadline passed before an attempt could be made.
        (None, None) => error(CallErrorKind::Timeout),
        (None, Some(Outcome::Answered(answer))) => error(CallErrorKind::Status).reply(
            ResponseMeta::new(answer.status, answer.headers, attempts),
            Some(answer.body),
        ),
        (None, Some(Outcome::Failed(failed))) => {
            timed_out = failed.timeout;
            let reqwest = failed.source.downcast_ref::<reqwest::Error>();
            let kind = match reqwest {
                Some(e) if e.is_builder() => CallErrorKind::InvalidRequest,
                Some(e) if e.is_redirect() => CallErrorKind::Redirect,
                _ if failed.sent == Sent::No => CallErrorKind::Connect,
                _ if failed.timeout => CallErrorKind::Timeout,
                _ => CallErrorKind::Interrupted,
            };
            let mut failure = error(kind);
            if let Some((status, headers)) = failed.head {
                failure = failure.reply(ResponseMeta::new(status, headers, attempts), None);
            }
            failure.caused_by(failed.source)
        }
    };
    if let Some(asked) = asked {
        failure = failure.asked_too_long(asked, max_retry_after);
    }
    failure
        .attempts_made(attempts)
        .retryable(retryable)
        .deadline_exceeded(deadline_passed)
        .timed_out(timed_out, timed_out_after)
}

/// A decoded answer and the reply's metadata; from
/// [`Endpoint::call_with`](super::Endpoint::call_with).
///
/// ```
/// use resource_runtime::{scope, http::{CallOptions, Endpoint, EndpointConfig}};
/// use serde_json::{Value, json};
/// # use tokio::io::{AsyncReadExt, AsyncWriteExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// # // An API on 127.0.0.1 that answers one request.
/// # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// # let base_url = format!("http://{}/v1", listener.local_addr()?);
/// # tokio::spawn(async move {
/// #     let Ok((mut socket, _)) = listener.accept().await else { return };
/// #     let mut request = vec![0; 8192];
/// #     let _ = socket.read(&mut request).await;
/// #     let body = r#"{"answer":42}"#;
/// #     let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
/// #         x-request-id: req_7\r\nx-ratelimit-remaining-requests: 99\r\n\
/// #         x-ratelimit-reset-requests: 600ms\r\n";
/// #     let reply = format!("{head}content-length: {}\r\n\r\n{body}", body.len());
/// #     let _ = socket.write_all(reply.as_bytes()).await;
/// # });
/// let api = Endpoint::new(EndpointConfig::new(base_url).path("ask"))?;
/// let answer = scope(api, async |api: &mut Endpoint| {
///     api.call_with::<_, Value>(&json!({"question": 6 * 7}), &CallOptions::new()).await
/// })
/// .await??;
/// assert_eq!(answer.status(), 200);
/// assert_eq!(answer.request_id(), Some("req_7"));
/// assert_eq!(answer.rate_limits().remaining_requests, Some(99));
/// assert_eq!(answer.rate_limits().reset_requests.map(|d| d.as_millis()), Some(600));
/// assert_eq!(answer.into_body()["answer"], 42);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Response<T> {
    body: T,
    meta: ResponseMeta,
}

impl<T> Response<T> {
    pub(crate) fn new(body: T, meta: ResponseMeta) -> Self {
        Response { body, meta }
    }

    /// The decoded body.
    pub fn body(&self) -> &T {
        &self.body
    }

    /// The decoded body, without the metadata.
    pub fn into_body(self) -> T {
        self.body
    }

    /// The status, headers and attempts of the reply.
    pub fn meta(&self) -> &ResponseMeta {
        &self.meta
    }

    /// The body and the metadata.
    pub fn into_parts(self) -> (T, ResponseMeta) {
        (self.body, self.meta)
    }

    /// The status, e.g. `200`.
    pub fn status(&self) -> u16 {
        self.meta.status()
    }

    /// The first value of the header `name` (any case), if it is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.meta.header(name)
    }

    /// The provider's id of this request; see [`ResponseMeta::request_id`].
    pub fn request_id(&self) -> Option<&str> {
        self.meta.request_id()
    }

    /// The rate-limit headers; see [`RateLimits`].
    pub fn rate_limits(&self) -> &RateLimits {
        self.meta.rate_limits()
    }
}

/// The headers a provider's request id is read from, in this order: `x-request-id`
/// (OpenAI and most OpenAI-compatible servers), `request-id` (Anthropic),
/// `x-amzn-requestid` (AWS), `apim-request-id` (Azure API Management).
pub const REQUEST_ID_HEADERS: [&str; 4] = [
    "x-request-id",
    "request-id",
    "x-amzn-requestid",
    "apim-request-id",
];

/// What a reply said besides its body: the status, the headers, and what the headers
/// mean to a client (the request id, the rate limits).
///
/// Header names are matched in any case. A value that is not text (bytes outside
/// visible ASCII) is not returned by [`header`](Self::header) and is left out of
/// [`headers`](Self::headers).
#[derive(Debug, Clone)]
pub struct ResponseMeta {
    status: u16,
    headers: HeaderMap,
    attempts: u32,
    /// When the reply came: the instant its resets and waits count from.
    received: SystemTime,
    /// Read from the headers when first asked for.
    rate_limits: OnceLock<RateLimits>,
}

impl ResponseMeta {
    pub(crate) fn new(status: u16, headers: HeaderMap, attempts: u32) -> Self {
        ResponseMeta {
            status,
            headers,
            attempts,
            received: SystemTime::now(),
            rate_limits: OnceLock::new(),
        }
    }

    /// The status, e.g. `200`.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The status's standard reason, e.g. `"Too Many Requests"` for `429`.
    pub fn reason(&self) -> Option<&'static str> {
        reqwest::StatusCode::from_u16(self.status)
            .ok()
            .and_then(|s| s.canonical_reason())
    }

    /// The first value of the header `name`, if it is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Every value of the header `name` that is text, in the order received.
    pub fn header_values<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .get_all(name)
            .into_iter()
            .filter_map(|v| v.to_str().ok())
    }

    /// Every header whose value is text, as `(name, value)`, names in lower case.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.headers
            .iter()
            .filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?)))
    }

    /// The provider's id of this request, to quote to its support: the first of
    /// [`REQUEST_ID_HEADERS`] the reply has.
    pub fn request_id(&self) -> Option<&str> {
        REQUEST_ID_HEADERS.iter().find_map(|name| self.header(name))
    }

    /// The rate-limit headers; a reset or wait given as an instant counts from when
    /// the reply came.
    pub fn rate_limits(&self) -> &RateLimits {
        self.rate_limits
            .get_or_init(|| rate_limits(&self.headers, self.received))
    }

    /// How long the server asked to wait before the next request, if it said
    /// (`retry-after-ms`, else `Retry-After`).
    pub fn retry_after(&self) -> Option<Duration> {
        self.rate_limits().retry_after
    }

    /// The attempts the call took, this one included.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }
}

/// The rate-limit headers of a reply, each `None` when absent or malformed.
///
/// | field | header (OpenAI) | header (Anthropic) |
/// |---|---|---|
/// | `limit_requests` | `x-ratelimit-limit-requests` | `anthropic-ratelimit-requests-limit` |
/// | `remaining_requests` | `x-ratelimit-remaining-requests` | `anthropic-ratelimit-requests-remaining` |
/// | `reset_requests` | `x-ratelimit-reset-requests` | `anthropic-ratelimit-requests-reset` |
/// | `limit_tokens` | `x-ratelimit-limit-tokens` | `anthropic-ratelimit-tokens-limit` |
/// | `remaining_tokens` | `x-ratelimit-remaining-tokens` | `anthropic-ratelimit-tokens-remaining` |
/// | `reset_tokens` | `x-ratelimit-reset-tokens` | `anthropic-ratelimit-tokens-reset` |
/// | `retry_after` | `retry-after-ms`, else `retry-after` | `retry-after` |
///
/// A reset is the time until the limit is back: OpenAI writes it as a duration
/// (`"1s"`, `"6m0s"`, `"20ms"`), Anthropic as an RFC 3339 instant, read as the time
/// from when the reply came to that instant (zero if it is past). `retry-after` is
/// seconds or an HTTP date; `retry-after-ms` milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RateLimits {
    /// Requests allowed in the window.
    pub limit_requests: Option<u64>,
    /// Requests left in the window.
    pub remaining_requests: Option<u64>,
    /// Until the request limit is back.
    pub reset_requests: Option<Duration>,
    /// Tokens allowed in the window.
    pub limit_tokens: Option<u64>,
    /// Tokens left in the window.
    pub remaining_tokens: Option<u64>,
    /// Until the token limit is back.
    pub reset_tokens: Option<Duration>,
    /// How long the server asked to wait before the next request.
    pub retry_after: Option<Duration>,
}

/// The rate-limit headers of a reply that came at `received`.
fn rate_limits(headers: &HeaderMap, received: SystemTime) -> RateLimits {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let number = |names: [&str; 2]| {
        names
            .iter()
            .find_map(|name| text(name).and_then(|t| t.parse::<u64>().ok()))
    };
    let reset = |names: [&str; 2]| {
        names
            .iter()
            .find_map(|name| text(name).and_then(|t| parse_reset(t, received)))
    };
    RateLimits {
        limit_requests: number([
            "x-ratelimit-limit-requests",
            "anthropic-ratelimit-requests-limit",
        ]),
        remaining_requests: number([
            "x-ratelimit-remaining-requests",
            "anthropic-ratelimit-requests-remaining",
        ]),
        reset_requests: reset([
            "x-ratelimit-reset-requests",
            "anthropic-ratelimit-requests-reset",
        ]),
        limit_tokens: number([
            "x-ratelimit-limit-tokens",
            "anthropic-ratelimit-tokens-limit",
        ]),
        remaining_tokens: number([
            "x-ratelimit-remaining-tokens",
            "anthropic-ratelimit-tokens-remaining",
        ]),
        reset_tokens: reset([
            "x-ratelimit-reset-tokens",
            "anthropic-ratelimit-tokens-reset",
        ]),
        retry_after: server_wait_at(headers, received),
    }
}

/// A reset header: a number of seconds, a duration (`"6m0s"`, `"1m30.5s"`, `"20ms"`),
/// or an RFC 3339 instant (the time from `received` until then).
fn parse_reset(text: &str, received: SystemTime) -> Option<Duration> {
    if let Ok(seconds) = text.parse::<f64>() {
        return (seconds >= 0.0)
            .then(|| Duration::try_from_secs_f64(seconds).ok())
            .flatten();
    }
    if let Ok(duration) = humantime::parse_duration(text) {
        return Some(duration);
    }
    let at = parse_rfc3339(text)?;
    Some(at.duration_since(received).unwrap_or(Duration::ZERO))
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`, at or after 1970.
fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let bytes = text.as_bytes();
    let number = |at: usize, len: usize| -> Option<i64> {
        let digits = text.get(at..at + len)?;
        if digits.bytes().all(|b| b.is_ascii_digit()) {
            digits.parse().ok()
        } else {
            None
        }
    };
    let separators = [(4, b'-'), (7, b'-'), (13, b':'), (16, b':')];
    if bytes.len() < 20
        || separators.iter().any(|(at, c)| bytes.get(*at) != Some(c))
        || !matches!(bytes.get(10), Some(b'T' | b't' | b' '))
    {
        return None;
    }
    let (year, month, day) = (number(0, 4)?, number(5, 2)?, number(8, 2)?);
    let (hour, minute, second) = (number(11, 2)?, number(14, 2)?, number(17, 2)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut rest = text.get(19..)?;
    let mut nanos = 0_u32;
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let kept = &fraction[..digits.min(9)];
        nanos = kept.parse::<u32>().ok()? * 10_u32.pow(9 - u32::try_from(kept.len()).ok()?);
        rest = &fraction[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            if rest.len() != 6 || rest.as_bytes()[3] != b':' {
                return None;
            }
            let hours: i64 = rest.get(1..3)?.parse().ok()?;
            let minutes: i64 = rest.get(4..6)?.parse().ok()?;
            sign * (hours * 3_600 + minutes * 60)
        }
    };
    // A leap second is read as the second before it.
    let second = second.min(59);
    let seconds =
        days_from_civil(year, month, day) * 86_400 + hour * 3_600 + minute * 60 + second - offset;
    Some(UNIX_EPOCH + Duration::new(u64::try_from(seconds).ok()?, nanos))
}

/// Days from 1970-01-01 to a date of the proleptic Gregorian calendar.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The timeout given to a stream's request: none to speak of.
const STREAM_TIMEOUT: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// Makes one attempt with `request` and reads its answer: all of a success's body, at
/// most `limit` bytes of any other.
pub(crate) async fn attempt(request: reqwest::RequestBuilder, limit: usize) -> Outcome {
    let mut response = match request.send().await {
        Ok(response) => response,
        Err(error) => return Outcome::Failed(failed(error, None)),
    };
    let status = response.status().as_u16();
    let headers = std::mem::take(response.headers_mut());
    if response.status().is_success() {
        return match response.bytes().await {
            Ok(body) => Outcome::Answered(Answer {
                status,
                headers,
                body,
            }),
            Err(error) => Outcome::Failed(failed(error, Some((status, headers)))),
        };
    }
    failure_answer(response, status, headers, limit).await
}

/// One attempt of a stream: the answer's head within `timeout`; a success's response
/// is left in `slot`, its body unread, and any other is read as [`attempt`] reads it.
async fn stream_attempt(
    request: reqwest::RequestBuilder,
    limit: usize,
    timeout: Duration,
    slot: &Mutex<Option<reqwest::Response>>,
) -> Outcome {
    let mut send = pin!(request.send());
    // Without a timer the head's wait cannot be bounded; it runs to its end.
    let mut timer = crate::step::try_sleep(timeout).map(Box::pin);
    let sent = poll_fn(|cx| {
        if let Poll::Ready(sent) = send.as_mut().poll(cx) {
            return Poll::Ready(Some(sent));
        }
        if let Some(timer) = timer.as_mut()
            && timer.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(None);
        }
        Poll::Pending
    })
    .await;
    let mut response = match sent {
        Some(Ok(response)) => response,
        Some(Err(error)) => return Outcome::Failed(failed(error, None)),
        None => {
            return Outcome::Failed(Failed {
                sent: Sent::Maybe,
                timeout: true,
                head: None,
                source: Box::new(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {timeout:?}"),
                )),
            });
        }
    };
    let status = response.status().as_u16();
    let headers = std::mem::take(response.headers_mut());
    if response.status().is_success() {
        *crate::sync::lock(slot) = Some(response);
        return Outcome::Answered(Answer {
            status,
            headers,
            body: Bytes::new(),
        });
    }
    failure_answer(response, status, headers, limit).await
}

/// A reply that is not a success, with at most `limit` bytes of its body.
async fn failure_answer(
    mut response: reqwest::Response,
    status: u16,
    headers: HeaderMap,
    limit: usize,
) -> Outcome {
    let expected = response
        .content_length()
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(0);
    let mut body = Vec::with_capacity(expected.min(limit));
    // The status decides what happens next; a body that breaks off keeps its start.
    while body.len() < limit {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = limit - body.len();
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Ok(None) | Err(_) => break,
        }
    }
    Outcome::Answered(Answer {
        status,
        headers,
        body: Bytes::from(body),
    })
}

/// An attempt that got no usable answer, and whether its request may have been sent.
fn failed(error: reqwest::Error, head: Option<(u16, HeaderMap)>) -> Failed {
    let sent = if error.is_connect() {
        Sent::No
    } else if error.is_builder() || error.is_redirect() {
        Sent::Fatal
    } else {
        Sent::Maybe
    };
    Failed {
        sent,
        timeout: error.is_timeout(),
        head,
        source: Box::new(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_headers_are_read_from_openai_and_anthropic_replies() {
        let headers = |pairs: &[(&'static str, &str)]| {
            let mut map = HeaderMap::new();
            for (name, value) in pairs {
                map.insert(*name, HeaderValue::from_str(value).unwrap());
            }
            map
        };
        let openai = ResponseMeta::new(
            200,
            headers(&[
                ("x-ratelimit-limit-requests", "5000"),
                ("x-ratelimit-remaining-requests", "4999"),
                ("x-ratelimit-reset-requests", "12ms"),
                ("x-ratelimit-limit-tokens", "160000"),
                ("x-ratelimit-remaining-tokens", "159000"),
                ("x-ratelimit-reset-tokens", "1m30.5s"),
                ("retry-after-ms", "40"),
                ("x-request-id", "req_123"),
            ]),
            1,
        );
        let limits = openai.rate_limits();
        assert_eq!(limits.limit_requests, Some(5_000));
        assert_eq!(limits.remaining_requests, Some(4_999));
        assert_eq!(limits.reset_requests, Some(Duration::from_millis(12)));
        assert_eq!(limits.limit_tokens, Some(160_000));
        assert_eq!(limits.remaining_tokens, Some(159_000));
        assert_eq!(limits.reset_tokens, Some(Duration::from_millis(90_500)));
        assert_eq!(limits.retry_after, Some(Duration::from_millis(40)));
        assert_eq!(openai.request_id(), Some("req_123"));

        let anthropic = ResponseMeta::new(
            429,
            headers(&[
                ("anthropic-ratelimit-requests-limit", "50"),
                ("anthropic-ratelimit-requests-remaining", "0"),
                ("anthropic-ratelimit-requests-reset", "2999-01-01T00:00:00Z"),
                ("anthropic-ratelimit-tokens-limit", "40000"),
                ("anthropic-ratelimit-tokens-remaining", "39000"),
                ("anthropic-ratelimit-tokens-reset", "2001-01-01T00:00:00Z"),
                ("retry-after", "12"),
                ("request-id", "req_abc"),
            ]),
            2,
        );
        let limits = anthropic.rate_limits();
        assert_eq!(limits.limit_requests, Some(50));
        assert_eq!(limits.remaining_requests, Some(0));
        assert!(limits.reset_requests.unwrap() > Duration::from_secs(900 * 365 * 86_400));
        assert_eq!(limits.limit_tokens, Some(40_000));
        assert_eq!(limits.remaining_tokens, Some(39_000));
        assert_eq!(
            limits.reset_tokens,
            Some(Duration::ZERO),
            "a reset in the past"
        );
        assert_eq!(limits.retry_after, Some(Duration::from_secs(12)));
        assert_eq!(anthropic.request_id(), Some("req_abc"));
        assert_eq!(anthropic.reason(), Some("Too Many Requests"));
        assert_eq!(anthropic.attempts(), 2);

        let garbage = ResponseMeta::new(
            200,
            headers(&[
                ("x-ratelimit-limit-requests", "many"),
                ("x-ratelimit-reset-requests", "soon"),
                ("x-ratelimit-reset-tokens", "-1"),
            ]),
            1,
        );
        assert_eq!(*garbage.rate_limits(), RateLimits::default());
    }

    #[test]
    fn rfc3339_instants_are_read_with_fractions_and_offsets() {
        let secs = |text: &str| {
            parse_rfc3339(text).map(|t| t.duration_since(UNIX_EPOCH).unwrap().as_secs_f64())
        };
        assert_eq!(secs("1970-01-01T00:00:00Z"), Some(0.0));
        assert_eq!(secs("2000-03-01T00:00:00Z"), Some(951_868_800.0));
        assert_eq!(secs("2024-02-29T12:34:56.5+02:00"), Some(1_709_202_896.5));
        assert_eq!(secs("2024-02-29T08:34:56.5-02:00"), Some(1_709_202_896.5));
        assert_eq!(
            secs("2024-02-29 10:34:56.500000000001z"),
            Some(1_709_202_896.5)
        );
        for bad in [
            "",
            "2024-02-29",
            "2024-13-01T00:00:00Z",
            "2024-02-29T25:00:00Z",
            "2024-02-29T10:34:56",
            "2024-02-29T10:34:56.Z",
            "2024-02-29T10:34:56+0200",
            "1969-12-31T23:59:59Z",
            "２０２４-02-29T10:34:56Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn options_keep_the_first_invalid_setting_and_never_show_header_values() {
        let options = CallOptions::new()
            .header("authorization", "Bearer sk-per-call-secret")
            .header("bad header", "x")
            .header("x-ok", "bad\nvalue");
        assert_eq!(
            options.invalid.as_deref(),
            Some("`bad header` is not a valid header name")
        );
        let shown = format!("{options:?}");
        assert!(!shown.contains("sk-per-call-secret"), "{shown}");
        assert!(shown.contains("authorization"), "{shown}");
        for refused in [
            CallOptions::new().timeout(Duration::ZERO),
            CallOptions::new().deadline(Duration::ZERO),
            CallOptions::new().idempotency_key(""),
            CallOptions::new().idempotency_key("line\nbreak"),
        ] {
            assert!(refused.invalid.is_some(), "{refused:?}");
        }
        assert!(CallOptions::new().idempotency_key("k-1").invalid.is_none());
    }

    #[test]
    fn fresh_keys_are_uuids_and_differ() {
        let a = fresh_key().unwrap();
        let b = fresh_key().unwrap();
        assert_ne!(a, b);
        let text = a.to_str().unwrap();
        assert_eq!(text.len(), 36);
        let groups: Vec<usize> = text.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12]);
        assert_eq!(&text[14..15], "4", "{text}");
        assert!(matches!(&text[19..20], "8" | "9" | "a" | "b"), "{text}");
    }

    #[test]
    fn methods_know_whether_they_are_idempotent() {
        for method in [
            Method::GET,
            Method::HEAD,
            Method::PUT,
            Method::DELETE,
            Method::OPTIONS,
        ] {
            assert!(method.is_idempotent(), "{method}");
        }
        for method in [Method::POST, Method::PATCH] {
            assert!(!method.is_idempotent(), "{method}");
        }
        assert!(Method::from_name("TRACE").unwrap().is_idempotent());
        assert_eq!(Method::from_name("PROPFIND").unwrap().as_str(), "PROPFIND");
        assert_eq!(Method::from_name("GE T"), None);
        assert_eq!(format!("{:?} {}", Method::POST, Method::GET), "POST GET");
    }
}
