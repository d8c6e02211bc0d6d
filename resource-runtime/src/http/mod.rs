//! [`Endpoint`]: an HTTP API endpoint on reqwest that closes cleanly.

mod config;

use std::fmt;
use std::future::{Future, poll_fn};
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use self::config::{Auth, EndpointConfig, RetryPolicy, Secret};
use crate::AsyncResource;
use crate::error::{ConfigError, ResourceError};
use crate::limiter::RateLimiter;

/// A client of an external API: called with a request, it returns the decoded
/// response or an error. [`Endpoint`] implements it; so can a user's own client that
/// wraps a vendor SDK and derives [`AsyncResource`].
///
/// # What an implementation must guarantee
///
/// - `call` before `enter` fails with an error for which
///   [`ResourceError::is_not_entered`] is true, and after `close` with one for which
///   [`ResourceError::is_closed`] is true; it never panics on a bad request or reply.
/// - Concurrent calls are allowed, through `&self`, and share whatever connection the
///   client holds; a call never replaces that connection under another call.
/// - A call dropped half-way releases what it held (its slot, its connection's use).
/// - `close` keeps the close contract: when it returns, no call is running and every
///   connection the client opened is released.
pub trait ResourceClient<Req: ?Sized, Resp>: AsyncResource {
    /// Sends `request` and returns the decoded response.
    fn call(&self, request: &Req) -> impl Future<Output = Result<Resp, ResourceError>> + Send;
}

/// The errors of an [`Endpoint`] call, inside a [`ResourceError`]
/// (`error.downcast_ref::<EndpointError>()`). They name the URL, never the key.
#[derive(Debug)]
#[non_exhaustive]
pub enum EndpointError {
    /// The API answered with a status that is not a success, after any retries.
    Status {
        /// The URL called.
        url: String,
        /// The status.
        status: StatusCode,
        /// The start of the response body (at most 512 bytes).
        body: String,
    },
    /// An attempt did not finish within the request timeout, after any retries.
    Timeout {
        /// The URL called.
        url: String,
    },
    /// The connection could not be made or broke, after any retries.
    Connect {
        /// The URL called.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// The response was not the JSON the caller expected.
    Decode {
        /// The URL called.
        url: String,
        /// What the decoder said.
        message: String,
    },
    /// The call was still running when the endpoint's close deadline passed.
    Cut {
        /// The URL called.
        url: String,
    },
    /// The close of an endpoint cut the calls still running at its deadline.
    CutAtClose {
        /// The endpoint's name.
        endpoint: String,
        /// How many calls were cut.
        count: usize,
        /// The close deadline that passed.
        deadline: std::time::Duration,
    },
}

impl fmt::Display for EndpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndpointError::Status { url, status, body } => {
                write!(f, "{url} answered {status}")?;
                if !body.is_empty() {
                    write!(f, ": {body}")?;
                }
                Ok(())
            }
            EndpointError::Timeout { url } => {
                write!(f, "{url} did not answer within the request timeout")
            }
            EndpointError::Connect { url, message } => {
                write!(f, "could not reach {url}: {message}")
            }
            EndpointError::Decode { url, message } => {
                write!(
                    f,
                    "the response of {url} is not the expected JSON: {message}"
                )
            }
            EndpointError::Cut { url } => {
                write!(f, "the call to {url} was cut when the endpoint closed")
            }
            EndpointError::CutAtClose {
                endpoint,
                count,
                deadline,
            } => write!(
                f,
                "endpoint `{endpoint}`: {count} call(s) still running at the close deadline of {deadline:?} were cut"
            ),
        }
    }
}

impl std::error::Error for EndpointError {}

impl EndpointError {
    /// The HTTP status, for a status error.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            EndpointError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// An HTTP API endpoint: one `reqwest` client, shared by every concurrent call, built
/// at `enter` and dropped at `close` so that every pooled connection closes.
///
/// - [`call`](Self::call) sends a JSON body with the configured method and path and
///   decodes the JSON response; [`request`](Self::request) is the general case.
/// - Connect errors, timeouts, `429` and `5xx` are retried with backoff and full
///   jitter; `Retry-After` (seconds or an HTTP date) is honoured, and with a
///   [`RateLimiter`] attached it holds every caller back. Other `4xx` fail at once.
/// - Entering twice keeps the one client. Calls before `enter` or after `close` fail
///   at once.
/// - Close: no new calls (a closed error), in-flight calls finish up to the close
///   deadline, the rest are cut, then the client is dropped. The error names how many
///   calls were cut.
///
/// A cheap handle: every clone is the same endpoint.
///
/// ```no_run
/// use resource_runtime::{ResourceError, scope, http::{Endpoint, EndpointConfig, Secret}};
/// use serde_json::{Value, json};
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), ResourceError> {
/// let config = EndpointConfig::new("https://api.example.com/v1")
///     .path("chat/completions")
///     .bearer(Secret::env("EXAMPLE_API_KEY"));
/// let answer: Value = scope(Endpoint::new(config)?, async |api: &mut Endpoint| {
///     api.call(&json!({ "prompt": "hello" })).await
/// })
/// .await??;
/// println!("{answer}");
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Endpoint {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    /// The base URL, ending in `/`.
    base: Url,
    /// The base URL joined with the configured path: where `call` sends.
    url: Url,
    method: Method,
    headers: HeaderMap,
    auth: Option<Auth>,
    config: EndpointConfig,
    limiter: Option<RateLimiter>,
    /// Whether every attempt takes a token (`limiter`), or only retries do
    /// (`pausing_limiter`, for calls that already took one outside).
    first_attempt_takes_token: bool,
    state: Mutex<State>,
    /// The calls in flight, one token each; closed at the first close, so that waiting
    /// for it to empty can end.
    calls_in_flight: TaskTracker,
    cut: CancellationToken,
    calls: AtomicU64,
    attempts: AtomicU64,
    failed: AtomicU64,
}

/// What an [`Endpoint`] has done so far, from [`Endpoint::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EndpointStats {
    /// Calls started (refused ones not counted).
    pub calls: u64,
    /// HTTP attempts sent, retries included.
    pub attempts: u64,
    /// Calls that ended in an error.
    pub failed: u64,
}

impl EndpointStats {
    /// Attempts beyond the first of each call.
    pub fn retries(&self) -> u64 {
        self.attempts.saturating_sub(self.calls)
    }
}

#[derive(Default)]
struct State {
    /// Built at `enter` with every header (the key's marked sensitive) as defaults, so
    /// a request carries no per-call header copies.
    client: Option<reqwest::Client>,
    closing: bool,
    closed: bool,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("name", &self.inner.name)
            .field("url", &self.inner.url.as_str())
            .field("method", &self.inner.method)
            .field("in_flight", &self.inner.calls_in_flight.len())
            .finish_non_exhaustive()
    }
}

fn invalid(name: &str, field: &'static str, why: impl fmt::Display) -> ResourceError {
    ConfigError::new(format!("Endpoint `{name}`"), field, why.to_string()).into()
}

/// Configures an [`Endpoint`] before it exists; from [`Endpoint::builder`].
#[derive(Debug)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct EndpointBuilder {
    config: EndpointConfig,
    /// The limiter, and whether first attempts take a token from it.
    limiter: Option<(RateLimiter, bool)>,
}

impl EndpointBuilder {
    /// Every attempt first takes a token from `limiter`, and a `429` with
    /// `Retry-After` pauses it, so every caller sharing it waits, not only the one
    /// that got the `429`.
    pub fn limiter(mut self, limiter: RateLimiter) -> Self {
        self.limiter = Some((limiter, true));
        self
    }

    /// Like [`limiter`](Self::limiter) for calls that already run under `limiter`
    /// (through a [`RateLimitedExecutor`](crate::executor::RateLimitedExecutor) that shares it):
    /// a first attempt takes no token of its own, retries do, and a `429` with
    /// `Retry-After` pauses the limiter for every caller.
    pub fn pausing_limiter(mut self, limiter: RateLimiter) -> Self {
        self.limiter = Some((limiter, false));
        self
    }

    /// Checks the configuration and builds the endpoint.
    pub fn build(self) -> Result<Endpoint, ResourceError> {
        Endpoint::build(self.config, self.limiter)
    }
}

impl Endpoint {
    /// Checks `config` (the URL parses, the method and header names are valid) and
    /// builds the endpoint, without a limiter. Nothing connects until
    /// [`enter`](AsyncResource::enter).
    pub fn new(config: EndpointConfig) -> Result<Endpoint, ResourceError> {
        Self::builder(config).build()
    }

    /// An endpoint for `config`, to give a limiter before it is built: the limiter is
    /// part of the endpoint from the start, so every clone shares it.
    pub fn builder(config: EndpointConfig) -> EndpointBuilder {
        EndpointBuilder {
            config,
            limiter: None,
        }
    }

    fn build(
        config: EndpointConfig,
        limiter: Option<(RateLimiter, bool)>,
    ) -> Result<Endpoint, ResourceError> {
        let name = config.name.clone();
        let mut base = Url::parse(&config.base_url).map_err(|e| {
            invalid(
                &name,
                "base_url",
                format_args!("`{}` is not a URL: {e}", config.base_url),
            )
        })?;
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let url = base
            .join(config.path.trim_start_matches('/'))
            .map_err(|e| {
                invalid(
                    &name,
                    "path",
                    format_args!("`{}` does not join the base URL: {e}", config.path),
                )
            })?;
        let method = Method::from_bytes(config.method.as_bytes()).map_err(|_| {
            invalid(
                &name,
                "method",
                format_args!("`{}` is not an HTTP method", config.method),
            )
        })?;
        let mut headers = HeaderMap::new();
        let content_type = HeaderValue::from_str(&config.content_type)
            .map_err(|_| invalid(&name, "content_type", "is not a valid header value"))?;
        headers.insert(reqwest::header::CONTENT_TYPE, content_type);
        for (key, value) in &config.headers {
            let header = HeaderName::from_bytes(key.as_bytes()).map_err(|_| {
                invalid(
                    &name,
                    "headers",
                    format_args!("`{key}` is not a valid header name"),
                )
            })?;
            let value = HeaderValue::from_str(value).map_err(|_| {
                invalid(
                    &name,
                    "headers",
                    format_args!("the value of `{key}` is not a valid header value"),
                )
            })?;
            headers.insert(header, value);
        }
        if let Some(Auth::Header { name: header, .. }) = &config.auth {
            HeaderName::from_bytes(header.as_bytes()).map_err(|_| {
                invalid(
                    &name,
                    "auth.header.name",
                    format_args!("`{header}` is not a valid header name"),
                )
            })?;
        }
        Ok(Endpoint {
            inner: Arc::new(Inner {
                name,
                base,
                url,
                method,
                headers,
                auth: config.auth.clone(),
                config,
                first_attempt_takes_token: limiter.as_ref().is_none_or(|(_, first)| *first),
                limiter: limiter.map(|(limiter, _)| limiter),
                state: Mutex::new(State::default()),
                calls_in_flight: TaskTracker::new(),
                cut: CancellationToken::new(),
                calls: AtomicU64::new(0),
                attempts: AtomicU64::new(0),
                failed: AtomicU64::new(0),
            }),
        })
    }

    /// Stops new calls, lets in-flight ones finish up to the close deadline, cuts the
    /// rest, and drops the client, so every pooled connection closes; for every clone.
    /// On a runtime without timers the deadline cannot be enforced: the close waits
    /// for every call and says so ([`ResourceError::is_unenforced_deadline`]).
    pub async fn close(&self) -> Result<(), ResourceError> {
        self.inner.close().await
    }

    /// The URL `call` sends to.
    pub fn url(&self) -> &Url {
        &self.inner.url
    }

    /// How many calls are running now.
    pub fn in_flight(&self) -> usize {
        self.inner.calls_in_flight.len()
    }

    /// Calls, attempts and failures so far.
    pub fn stats(&self) -> EndpointStats {
        let inner = &self.inner;
        EndpointStats {
            calls: inner.calls.load(Ordering::Relaxed),
            attempts: inner.attempts.load(Ordering::Relaxed),
            failed: inner.failed.load(Ordering::Relaxed),
        }
    }

    /// Sends `request` as JSON with the configured method to the configured path, and
    /// decodes the JSON response.
    pub async fn call<Req, Resp>(&self, request: &Req) -> Result<Resp, ResourceError>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        let body = Bytes::from(serde_json::to_vec(request).map_err(ResourceError::other)?);
        let url = self.inner.url.clone();
        let bytes = self
            .send(self.inner.method.clone(), url.clone(), Some(body))
            .await?;
        decode(&url, &bytes)
    }

    /// Sends `body` (as JSON, if any) with `method` to `path` under the base URL, and
    /// decodes the JSON response.
    pub async fn request<Req, Resp>(
        &self,
        method: Method,
        path: &str,
        body: Option<&Req>,
    ) -> Result<Resp, ResourceError>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        let base = &self.inner.base;
        // A path stays under the base URL: an absolute URL or `//host` would send the
        // key to another host, and a leading `/` would drop the base's own path.
        let relative = path.trim_start_matches('/');
        let url = base
            .join(relative)
            .ok()
            .filter(|url| {
                !path.contains("://")
                    && !path.starts_with("//")
                    && url.origin() == base.origin()
                    && url.path().starts_with(base.path())
            })
            .ok_or_else(|| {
                invalid(
                    &self.inner.name,
                    "path",
                    format_args!("`{path}` is not a path under {base}: give a relative path such as `models` or `chat/completions`"),
                )
            })?;
        let body = body
            .map(serde_json::to_vec)
            .transpose()
            .map_err(ResourceError::other)?
            .map(Bytes::from);
        let bytes = self.send(method, url.clone(), body).await?;
        decode(&url, &bytes)
    }

    /// Registers a call, runs its attempts, and cuts it if the close deadline passes.
    async fn send(
        &self,
        method: Method,
        url: Url,
        body: Option<Bytes>,
    ) -> Result<Bytes, ResourceError> {
        let inner = &*self.inner;
        let client = {
            let state = inner.lock();
            if state.closing || state.closed {
                return Err(ResourceError::closed(format!("Endpoint `{}`", inner.name)));
            }
            let Some(client) = state.client.clone() else {
                return Err(ResourceError::not_entered(format!(
                    "Endpoint `{}`",
                    inner.name
                )));
            };
            // Counted under the lock: a close that saw no call sees none start.
            (client, inner.calls_in_flight.token())
        };
        let (client, _call) = client;
        inner.calls.fetch_add(1, Ordering::Relaxed);
        let attempts = inner.attempts(&client, method, &url, body);
        let mut attempts = pin!(attempts);
        let mut cut = pin!(inner.cut.cancelled());
        poll_fn(|cx| {
            if let Poll::Ready(outcome) = attempts.as_mut().poll(cx) {
                return Poll::Ready(outcome);
            }
            if cut.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(ResourceError::other(EndpointError::Cut {
                    url: url.to_string(),
                })));
            }
            Poll::Pending
        })
        .await
        .inspect_err(|_| {
            inner.failed.fetch_add(1, Ordering::Relaxed);
        })
    }
}

fn decode<Resp: DeserializeOwned>(url: &Url, bytes: &[u8]) -> Result<Resp, ResourceError> {
    serde_json::from_slice(bytes).map_err(|e| {
        ResourceError::other(EndpointError::Decode {
            url: url.to_string(),
            message: e.to_string(),
        })
    })
}

/// The start of a body, for an error message.
fn excerpt(bytes: &[u8]) -> String {
    const MAX: usize = 512;
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX)]).into_owned();
    if bytes.len() > MAX {
        format!("{text}…")
    } else {
        text
    }
}

/// The delay a `Retry-After` header asks for: seconds, or an HTTP date.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Each update is a few assignments: a poisoned lock still guards a valid state.
        crate::sync::lock(&self.state)
    }

    async fn attempts(
        &self,
        client: &reqwest::Client,
        method: Method,
        url: &Url,
        body: Option<Bytes>,
    ) -> Result<Bytes, ResourceError> {
        let policy = &self.config.retry;
        let attempts = policy.max_attempts.max(1);
        let mut attempt = 0;
        loop {
            if let Some(limiter) = &self.limiter
                && (attempt > 0 || self.first_attempt_takes_token)
            {
                limiter.acquire(1).await?;
            }
            let mut request = client.request(method.clone(), url.clone());
            if let Some(body) = &body {
                // A reference count, not a copy, for each attempt.
                request = request.body(body.clone());
            }
            self.attempts.fetch_add(1, Ordering::Relaxed);
            let (error, wait) = match request.send().await {
                Ok(response) => {
                    let status = response.status();
                    let headers = response.headers().clone();
                    let bytes = match response.bytes().await {
                        Ok(bytes) => bytes,
                        Err(e) => {
                            let error = transport_error(url, &e);
                            // The server answered: only a status that is retried anyway
                            // allows another attempt (a 2xx may have had its effect).
                            let retryable =
                                status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error();
                            attempt += 1;
                            if !retryable || attempt >= attempts {
                                return Err(error);
                            }
                            tokio::time::sleep(policy.backoff(attempt - 1)).await;
                            continue;
                        }
                    };
                    if status.is_success() {
                        return Ok(bytes);
                    }
                    let error = ResourceError::other(EndpointError::Status {
                        url: url.to_string(),
                        status,
                        body: excerpt(&bytes),
                    });
                    let retryable =
                        status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error();
                    if !retryable {
                        return Err(error);
                    }
                    let asked = retry_after(&headers).map(|d| d.min(policy.max_delay));
                    if let (Some(delay), Some(limiter)) = (asked, &self.limiter) {
                        let now = tokio::time::Instant::now();
                        limiter
                            .pause_until(now.checked_add(delay).unwrap_or(
                                now + policy.max_delay.min(Duration::from_secs(86_400)),
                            ));
                    }
                    (error, asked)
                }
                // A refused connection, no answer in time, or a connection that broke
                // (reset) before an answer came. A broken connection may have carried
                // the request already, so a retried call must be one the API can take
                // twice: calls that create things should carry an idempotency key.
                Err(e) if e.is_timeout() || e.is_connect() || e.is_request() => {
                    (transport_error(url, &e), None)
                }
                Err(e) => return Err(transport_error(url, &e)),
            };
            attempt += 1;
            if attempt >= attempts {
                return Err(error);
            }
            let delay = wait.unwrap_or_else(|| policy.backoff(attempt - 1));
            tracing::debug!(
                endpoint = %self.name,
                attempt,
                delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                %error,
                "retrying"
            );
            // With a limiter the pause holds this caller too; without one, sleep here.
            if self.limiter.is_none() || wait.is_none() {
                tokio::time::sleep(delay).await;
            }
        }
    }

    /// Reads the key and builds the client; a second enter keeps the first client.
    fn enter(&self) -> Result<(), ResourceError> {
        let mut state = self.lock();
        if state.closing || state.closed {
            return Err(ResourceError::closed(format!("Endpoint `{}`", self.name)));
        }
        if state.client.is_some() {
            return Ok(());
        }
        let mut headers = self.headers.clone();
        if let Some(auth) = &self.auth {
            let (header, secret, prefix) = match auth {
                Auth::Bearer(secret) => (reqwest::header::AUTHORIZATION, secret, "Bearer "),
                Auth::Header { name, key } => (
                    HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                        invalid(&self.name, "auth.header.name", "is not a valid header name")
                    })?,
                    key,
                    "",
                ),
            };
            let key = match secret {
                Secret::Value(key) => key.clone(),
                Secret::Env(var) => std::env::var(var).map_err(|_| {
                    invalid(
                        &self.name,
                        "auth",
                        format_args!(
                            "reads its key from the environment variable `{var}`, which is not set"
                        ),
                    )
                })?,
            };
            let mut value = HeaderValue::from_str(&format!("{prefix}{key}")).map_err(|_| {
                invalid(
                    &self.name,
                    "auth",
                    "holds a key that is not a valid header value",
                )
            })?;
            value.set_sensitive(true);
            headers.insert(header, value);
        }
        let client = reqwest::Client::builder()
            .default_headers(headers)
            // The key must not follow a redirect to another origin (reqwest only strips
            // `Authorization` and cookies): redirects within the origin are followed.
            .redirect(reqwest::redirect::Policy::custom(|attempt| {
                let same_origin = attempt
                    .previous()
                    .first()
                    .is_some_and(|first| first.origin() == attempt.url().origin());
                if attempt.previous().len() > 10 {
                    attempt.error("more than 10 redirects")
                } else if same_origin {
                    attempt.follow()
                } else {
                    attempt.stop()
                }
            }))
            .timeout(self.config.request_timeout)
            .connect_timeout(self.config.connect_timeout)
            .build()
            .map_err(|e| invalid(&self.name, "client", e))?;
        state.client = Some(client);
        Ok(())
    }

    async fn close(&self) -> Result<(), ResourceError> {
        let already_closed = {
            let mut state = self.lock();
            if !state.closed {
                state.closing = true;
                // No new call can take the client now; the running ones hold their clones.
                state.client = None;
            }
            state.closed
        };
        if already_closed {
            // A close that was itself cut short has cut the calls; they may still be
            // letting go of the client. Nothing is held once this returns.
            let _ = crate::step::within_deadline(CUT_GRACE, self.no_calls()).await;
            return Ok(());
        }
        // If this close is itself dropped half-way, the running calls are cut and the
        // endpoint ends closed, so the pool does not outlive it.
        let finish = FinishClose(self);
        let drained =
            crate::step::within_deadline(self.config.close_timeout, self.no_calls()).await;
        let cut = self.calls_in_flight.len();
        drop(finish);
        if cut > 0 {
            // The cut calls drop their clients as they wake; wait a little for that, so
            // that the pool is gone when close returns.
            let _ = crate::step::within_deadline(CUT_GRACE, self.no_calls()).await;
        }
        match drained {
            crate::step::DeadlineOutcome::Unbounded(why) => Err(why),
            crate::step::DeadlineOutcome::Expired if cut > 0 => {
                Err(ResourceError::other(EndpointError::CutAtClose {
                    endpoint: self.name.clone(),
                    count: cut,
                    deadline: self.config.close_timeout,
                }))
            }
            _ => Ok(()),
        }
    }

    /// Returns once no call is in flight (none can start once the endpoint closes).
    async fn no_calls(&self) {
        self.calls_in_flight.close();
        self.calls_in_flight.wait().await;
    }
}

/// How long a close waits for cut calls to let go of the client.
const CUT_GRACE: Duration = Duration::from_secs(1);

/// Ends a close however it ends: the calls still running are cut and the endpoint is
/// closed.
struct FinishClose<'a>(&'a Inner);

impl Drop for FinishClose<'_> {
    fn drop(&mut self) {
        if !self.0.calls_in_flight.is_empty() {
            self.0.cut.cancel();
        }
        self.0.lock().closed = true;
    }
}

impl AsyncResource for Endpoint {
    /// Reads the key and builds the client. Entering again keeps the same client.
    async fn enter(&mut self) -> Result<(), ResourceError> {
        self.inner.enter()
    }

    /// Closes the endpoint for every clone; see [`close`](Endpoint::close).
    async fn close(&mut self) -> Result<(), ResourceError> {
        Endpoint::close(self).await
    }
}

impl<Req, Resp> ResourceClient<Req, Resp> for Endpoint
where
    Req: Serialize + Sync + ?Sized,
    Resp: DeserializeOwned,
{
    fn call(&self, request: &Req) -> impl Future<Output = Result<Resp, ResourceError>> + Send {
        Endpoint::call(self, request)
    }
}

fn transport_error(url: &Url, error: &reqwest::Error) -> ResourceError {
    let url = url.to_string();
    if error.is_timeout() {
        return ResourceError::other(EndpointError::Timeout { url });
    }
    // reqwest's message names the URL; the key is only ever in a sensitive header.
    let mut message = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    ResourceError::other(EndpointError::Connect { url, message })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_names_the_url_and_what_happened() {
        let url = "http://127.0.0.1:1/v1/chat".to_owned();
        let cases = [
            (
                EndpointError::Status {
                    url: url.clone(),
                    status: StatusCode::BAD_REQUEST,
                    body: "bad prompt".into(),
                },
                "answered 400 Bad Request: bad prompt",
            ),
            (
                EndpointError::Timeout { url: url.clone() },
                "did not answer within",
            ),
            (
                EndpointError::Connect {
                    url: url.clone(),
                    message: "refused".into(),
                },
                "could not reach",
            ),
            (
                EndpointError::Decode {
                    url: url.clone(),
                    message: "eof".into(),
                },
                "not the expected JSON: eof",
            ),
            (
                EndpointError::Cut { url: url.clone() },
                "was cut when the endpoint closed",
            ),
        ];
        for (error, expected) in cases {
            let shown = error.to_string();
            assert!(shown.contains(&url) && shown.contains(expected), "{shown}");
        }
        let empty_body = EndpointError::Status {
            url: url.clone(),
            status: StatusCode::BAD_GATEWAY,
            body: String::new(),
        };
        assert!(empty_body.to_string().ends_with("502 Bad Gateway"));
        assert_eq!(empty_body.status(), Some(StatusCode::BAD_GATEWAY));
        assert_eq!(EndpointError::Cut { url }.status(), None);
    }

    #[test]
    fn an_excerpt_is_bounded() {
        assert_eq!(excerpt(b"short"), "short");
        let long = vec![b'x'; 2_000];
        let shown = excerpt(&long);
        assert!(shown.ends_with('…') && shown.len() < 600, "{}", shown.len());
    }

    #[test]
    fn retry_after_reads_seconds_and_dates_and_ignores_garbage() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(reqwest::header::RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        headers.insert(
            reqwest::header::RETRY_AFTER,
            HeaderValue::from_static("soon"),
        );
        assert_eq!(retry_after(&headers), None);
        let past = httpdate::fmt_http_date(std::time::UNIX_EPOCH + Duration::from_secs(1));
        headers.insert(
            reqwest::header::RETRY_AFTER,
            HeaderValue::from_str(&past).unwrap(),
        );
        assert_eq!(retry_after(&headers), Some(Duration::ZERO));
        let later =
            httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(120));
        headers.insert(
            reqwest::header::RETRY_AFTER,
            HeaderValue::from_str(&later).unwrap(),
        );
        let wait = retry_after(&headers).unwrap();
        assert!(
            wait > Duration::from_secs(100) && wait <= Duration::from_secs(120),
            "{wait:?}"
        );
    }
}
