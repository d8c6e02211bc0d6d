//! [`Endpoint`]: an HTTP API endpoint on reqwest that retries what a provider's API
//! asks to be retried, reports what it said, and closes cleanly.
//!
//! - [`Endpoint`] and its lifecycle: built from an [`EndpointConfig`] (checked once,
//!   when it is built), entered (the client is made), called by any number of tasks at
//!   once, closed (in-flight calls finish up to a deadline, the rest are cut, every
//!   pooled connection closes).
//! - One call: [`Endpoint::call`] for the answer alone, [`Endpoint::call_with`] for
//!   per-call [`CallOptions`] and the answer's [`ResponseMeta`] (status, headers,
//!   request id, [`RateLimits`]).
//! - A streamed answer: [`Endpoint::stream`] returns an [`EventStream`] of server-sent
//!   [`Event`]s, a resource of its own whose close releases its connection.
//! - [`RetryPolicy`]: which failures are retried and after how long.
//! - [`CallError`]: why a call failed, with the server's status, headers and body.
//!
//! Nothing of reqwest's is part of this API, except
//! [`EndpointBuilder::client`], which hands the endpoint a `reqwest::Client` of the
//! caller's own.

mod call;
mod config;
mod error;
mod retry;
mod stream;
mod usage;

use std::fmt;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use reqwest::Url;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use self::call::{CallOptions, Method, REQUEST_ID_HEADERS, RateLimits, Response, ResponseMeta};
pub use self::config::{Auth, EndpointConfig, Secret};
pub use self::error::{CallError, CallErrorKind};
use self::retry::Counters;
pub use self::retry::{Classifier, RetryDecision, RetryInput, RetryPolicy};
pub use self::stream::{Event, EventStream};
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

/// The failures of an [`Endpoint`] itself, beside those of its calls ([`CallError`]),
/// inside a [`ResourceError`] (`error.downcast_ref::<EndpointError>()`).
#[derive(Debug)]
#[non_exhaustive]
pub enum EndpointError {
    /// The close of an endpoint cut the calls still running at its deadline.
    CutAtClose {
        /// The endpoint's name.
        endpoint: String,
        /// How many calls were cut.
        count: usize,
        /// The close deadline that passed.
        deadline: Duration,
    },
}

impl fmt::Display for EndpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
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

/// An HTTP API endpoint: one `reqwest` client, shared by every concurrent call, made
/// at `enter` and dropped at `close` so that every pooled connection closes.
///
/// - [`call`](Self::call) sends a JSON body with the configured method to the
///   configured path and decodes the JSON answer; [`call_with`](Self::call_with) takes
///   [`CallOptions`] and returns the answer with its [`ResponseMeta`].
///   [`request`](Self::request) and [`request_with`](Self::request_with) take the
///   method and the path for the call.
/// - Failures are retried as the [`RetryPolicy`] says: the statuses it names, a
///   server's `x-should-retry`, connections that could not be made, and (for
///   idempotent requests) connections that broke or timed out after the request was
///   sent, with exponential backoff and full jitter or after the wait the server asks
///   for (`retry-after-ms`, `Retry-After`). With a [`RateLimiter`] attached
///   ([`EndpointBuilder::limiter`]) a server's wait holds every caller back.
/// - A failed call is a [`CallError`]: the status, whether it is worth retrying, the
///   server's wait, the request id, the body.
/// - Entering twice keeps the one client. Calls before `enter` or after `close` fail
///   at once.
/// - [`stream`](Self::stream) returns the answer as an [`EventStream`] of server-sent
///   events.
/// - Close: no new calls (a closed error), open streams are cut at once, in-flight
///   calls finish up to the close deadline, the rest are cut, then the client is
///   dropped. The error names how many calls were cut.
///
/// The configuration is checked once, when the endpoint is built; a call checks only
/// what it brings itself (its body, its path, its options).
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
    /// The `Content-Type` of request bodies and the configured headers (the key is
    /// added at `enter`).
    headers: HeaderMap,
    /// The key's header, its secret, and what goes before the key.
    auth: Option<(HeaderName, Secret, &'static str)>,
    config: EndpointConfig,
    limiter: Option<RateLimiter>,
    /// Whether every attempt takes a token (`limiter`), or only retries do
    /// (`pausing_limiter`, for calls that already took one outside).
    first_attempt_takes_token: bool,
    /// The limiter of tokens (a tokens-per-minute quota), if any.
    token_limiter: Option<RateLimiter>,
    /// The turn of a call taking from both limiters at one instant.
    admission: tokio::sync::Mutex<()>,
    state: Mutex<State>,
    /// The calls in flight, one token each; closed at the first close, so that waiting
    /// for it to empty can end.
    calls_in_flight: TaskTracker,
    cut: CancellationToken,
    /// Cancelled when the endpoint starts to close: every open stream is cut at once.
    streams_cut: CancellationToken,
    /// The open streams, which the close cuts.
    streams: Mutex<stream::OpenStreams>,
    counters: Counters,
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
    /// Retries after a `429 Too Many Requests`.
    pub retries_throttled: u64,
    /// Retries after a `5xx`.
    pub retries_server_error: u64,
    /// Retries after another status (`408`, `409`, a status the policy or the server's
    /// `x-should-retry` or the classifier said to retry).
    pub retries_other_status: u64,
    /// Retries after an attempt that timed out.
    pub retries_timeout: u64,
    /// Retries after a connection that could not be made or that broke.
    pub retries_connection: u64,
    /// Streams cut because the endpoint closed while they were open.
    pub streams_cut: u64,
}

impl EndpointStats {
    /// Retries of every cause.
    pub fn retries(&self) -> u64 {
        self.retries_throttled
            + self.retries_server_error
            + self.retries_other_status
            + self.retries_timeout
            + self.retries_connection
    }
}

#[derive(Default)]
struct State {
    client: Option<Client>,
    /// A client handed over with [`EndpointBuilder::client`], until `enter` takes it.
    provided: Option<reqwest::Client>,
    closing: bool,
    closed: bool,
}

/// The client the calls share.
#[derive(Clone)]
struct Client {
    http: reqwest::Client,
    /// The headers every request carries that the client does not add itself (the
    /// content type, the configured headers and the key): `None` for a client made at
    /// `enter`, which has them as defaults (and the request timeout too).
    headers: Option<Arc<HeaderMap>>,
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
#[must_use = "a builder does nothing until `build` is called"]
pub struct EndpointBuilder {
    config: EndpointConfig,
    /// The limiter, and whether first attempts take a token from it.
    limiter: Option<(RateLimiter, bool)>,
    token_limiter: Option<RateLimiter>,
    client: Option<reqwest::Client>,
}

impl fmt::Debug for EndpointBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A client's own default headers may hold a key: not shown.
        f.debug_struct("EndpointBuilder")
            .field("config", &self.config)
            .field("limiter", &self.limiter)
            .field("token_limiter", &self.token_limiter)
            .field("client", &self.client.as_ref().map(|_| "a reqwest::Client"))
            .finish()
    }
}

impl EndpointBuilder {
    /// Every attempt first takes a token from `limiter`, and a server's wait
    /// (`Retry-After`, `retry-after-ms`) pauses it, so every caller sharing it waits,
    /// not only the one that was asked to.
    ///
    /// The endpoint shares the limiter; it does not own it: it neither enters nor
    /// closes it. A limiter whose schedule is in Redis is entered (connected) and
    /// closed by its owner, for instance a `RateLimitedExecutor` holding it, or the
    /// code that built it.
    pub fn limiter(mut self, limiter: RateLimiter) -> Self {
        self.limiter = Some((limiter, true));
        self
    }

    /// Like [`limiter`](Self::limiter) for calls that already run under `limiter`
    /// (through a [`RateLimitedExecutor`](crate::executor::RateLimitedExecutor) that shares it):
    /// a first attempt takes no token of its own, retries do, and a server's wait
    /// pauses the limiter for every caller.
    pub fn pausing_limiter(mut self, limiter: RateLimiter) -> Self {
        self.limiter = Some((limiter, false));
        self
    }

    /// A second limiter, counted in tokens (a provider's tokens-per-minute quota,
    /// beside the requests-per-minute one of [`limiter`](Self::limiter)).
    ///
    /// - A call given an estimate ([`CallOptions::tokens`]) takes that many tokens
    ///   from it before its first attempt, within its deadline; retries take none.
    /// - When the answer says what it used (its `usage`: `total_tokens`, or
    ///   `prompt_tokens` + `completion_tokens`, or Anthropic's `input_tokens` (cache
    ///   tokens included) + `output_tokens`), the difference is settled
    ///   ([`RateLimiter::settle`]): charged when the answer used more, given back
    ///   when it used less. A call without an estimate is charged its usage. A
    ///   stream settles when it ends, however it ends, from the `usage` its events
    ///   carried (an OpenAI stream has one when the request asks for it with
    ///   `"stream_options": {"include_usage": true}`).
    /// - A call that fails, or whose answer has no `usage`, keeps its estimate: the
    ///   client cannot know what the provider counted.
    /// - A server's wait (`Retry-After`) pauses it too.
    ///
    /// Like [`limiter`](Self::limiter), it is shared, not owned: the endpoint neither
    /// enters nor closes it.
    ///
    /// ```
    /// use std::time::Duration;
    /// use resource_runtime::http::{CallOptions, Endpoint, EndpointConfig};
    /// use resource_runtime::limiter::RateLimiter;
    ///
    /// # fn main() -> Result<(), resource_runtime::ResourceError> {
    /// let minute = Duration::from_secs(60);
    /// let endpoint = Endpoint::builder(EndpointConfig::new("https://api.example.com/v1"))
    ///     .limiter(RateLimiter::new(500, minute)?) // requests per minute
    ///     .token_limiter(RateLimiter::new(30_000, minute)?) // tokens per minute
    ///     .build()?;
    /// // Each call: the prompt's tokens and the most the answer may take.
    /// let options = CallOptions::new().tokens(1_200 + 512);
    /// # let _ = (endpoint, options);
    /// # Ok(())
    /// # }
    /// ```
    pub fn token_limiter(mut self, limiter: RateLimiter) -> Self {
        self.token_limiter = Some(limiter);
        self
    }

    /// Sends with `client` instead of a client made at `enter`: for a proxy, a custom
    /// root certificate, client certificates, or any other setting of reqwest's.
    ///
    /// The endpoint adds to each request what its configuration says (the
    /// `Content-Type`, the configured headers, the key) and gives each
    /// attempt its timeout. What the client was built with stays its own: its connect
    /// timeout (not [`EndpointConfig::connect_timeout`]), its default headers, and its
    /// redirect policy. The endpoint's own client follows redirects only within the
    /// origin, so the key never goes to another host; reqwest's default policy drops
    /// `Authorization` on a redirect to another host but not a key in a header of its
    /// own ([`Auth::Header`]): give such a client `redirect::Policy::none()`.
    ///
    /// Close drops the endpoint's clone of the client. A reqwest client's connections
    /// are pooled by all its clones together, so they close only when the last clone
    /// is gone: keep no other clone if the endpoint's close must release them.
    ///
    /// ```
    /// use std::time::Duration;
    /// use resource_runtime::http::{Endpoint, EndpointConfig};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = reqwest::Client::builder()
    ///     .connect_timeout(Duration::from_secs(3))
    ///     .redirect(reqwest::redirect::Policy::none())
    ///     .build()?;
    /// let endpoint = Endpoint::builder(EndpointConfig::new("https://api.example.com/v1"))
    ///     .client(client) // moved: the endpoint holds the only clone
    ///     .build()?;
    /// # let _ = endpoint;
    /// # Ok(())
    /// # }
    /// ```
    pub fn client(mut self, client: reqwest::Client) -> Self {
        self.client = Some(client);
        self
    }

    /// Checks the configuration and builds the endpoint.
    pub fn build(self) -> Result<Endpoint, ResourceError> {
        Endpoint::build(self)
    }
}

impl Endpoint {
    /// Checks `config` (the URL parses, the method, header names and values are valid,
    /// the retry policy can work) and builds the endpoint, without a limiter. Nothing
    /// connects until [`enter`](AsyncResource::enter).
    pub fn new(config: EndpointConfig) -> Result<Endpoint, ResourceError> {
        Self::builder(config).build()
    }

    /// An endpoint for `config`, to give a limiter or a client before it is built:
    /// they are part of the endpoint from the start, so every clone shares them.
    pub fn builder(config: EndpointConfig) -> EndpointBuilder {
        EndpointBuilder {
            config,
            limiter: None,
            token_limiter: None,
            client: None,
        }
    }

    fn build(builder: EndpointBuilder) -> Result<Endpoint, ResourceError> {
        let EndpointBuilder {
            config,
            limiter,
            token_limiter,
            client,
        } = builder;
        let name = config.name.clone();
        let mut base = Url::parse(&config.base_url).map_err(|e| {
            invalid(
                &name,
                "base_url",
                format_args!("`{}` is not a URL: {e}", config.base_url),
            )
        })?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(invalid(
                &name,
                "base_url",
                format_args!("`{}` is not an http or https URL", config.base_url),
            ));
        }
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
        let method = Method::from_name(&config.method).ok_or_else(|| {
            invalid(
                &name,
                "method",
                format_args!("`{}` is not an HTTP method", config.method),
            )
        })?;
        let content_type = HeaderValue::from_str(&config.content_type)
            .map_err(|_| invalid(&name, "content_type", "is not a valid header value"))?;
        let mut headers = HeaderMap::new();
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
        let auth = match &config.auth {
            None => None,
            Some(Auth::Bearer(secret)) => {
                Some((reqwest::header::AUTHORIZATION, secret.clone(), "Bearer "))
            }
            Some(Auth::Header { name: header, key }) => {
                let header = HeaderName::from_bytes(header.as_bytes()).map_err(|_| {
                    invalid(
                        &name,
                        "auth.header.name",
                        format_args!("`{header}` is not a valid header name"),
                    )
                })?;
                Some((header, key.clone(), ""))
            }
        };
        config
            .retry
            .check()
            .map_err(|(field, why)| invalid(&name, field, why))?;
        if config.stream_idle_timeout.is_zero() {
            return Err(invalid(
                &name,
                "stream_idle_timeout",
                "is zero, which would end every stream at once",
            ));
        }
        if config.stream_line_limit == 0 {
            return Err(invalid(
                &name,
                "stream_line_limit",
                "is zero, which would refuse every line of a stream",
            ));
        }
        Ok(Endpoint {
            inner: Arc::new(Inner {
                name,
                base,
                url,
                method,
                headers,
                auth,
                config,
                first_attempt_takes_token: limiter.as_ref().is_none_or(|(_, first)| *first),
                limiter: limiter.map(|(limiter, _)| limiter),
                token_limiter,
                admission: tokio::sync::Mutex::new(()),
                state: Mutex::new(State {
                    provided: client,
                    ..State::default()
                }),
                calls_in_flight: TaskTracker::new(),
                cut: CancellationToken::new(),
                streams_cut: CancellationToken::new(),
                streams: Mutex::default(),
                counters: Counters::default(),
            }),
        })
    }

    /// Stops new calls, cuts every open [`EventStream`] (its next item is an error for
    /// which [`CallError::is_closed`] is true) and waits until each has released its
    /// connection, lets in-flight calls finish up to the close deadline, cuts the
    /// rest, and drops the client, so every pooled connection closes; for every clone.
    /// On a runtime without timers the deadline cannot be enforced: the close waits
    /// for every call and says so ([`ResourceError::is_unenforced_deadline`]).
    pub async fn close(&self) -> Result<(), ResourceError> {
        self.inner.close().await
    }

    /// The endpoint's name, from its configuration.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The URL [`call`](Self::call) sends to.
    pub fn url(&self) -> &str {
        self.inner.url.as_str()
    }

    /// How many calls are running now, open [`EventStream`]s included.
    pub fn in_flight(&self) -> usize {
        self.inner.calls_in_flight.len()
    }

    /// Calls, attempts, failures and retries so far.
    pub fn stats(&self) -> EndpointStats {
        let c = &self.inner.counters;
        let get = |n: &std::sync::atomic::AtomicU64| n.load(Ordering::Relaxed);
        EndpointStats {
            calls: get(&c.calls),
            attempts: get(&c.attempts),
            failed: get(&c.failed),
            retries_throttled: get(&c.retries_throttled),
            retries_server_error: get(&c.retries_server_error),
            retries_other_status: get(&c.retries_other_status),
            retries_timeout: get(&c.retries_timeout),
            retries_connection: get(&c.retries_connection),
            streams_cut: get(&c.streams_cut),
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Each update is a few assignments: a poisoned lock still guards a valid state.
        crate::sync::lock(&self.state)
    }

    /// Reads the key and makes the client (or takes the one handed over); a second
    /// enter keeps the first client.
    fn enter(&self) -> Result<(), ResourceError> {
        let mut state = self.lock();
        if state.closing || state.closed {
            return Err(ResourceError::closed(format!("Endpoint `{}`", self.name)));
        }
        if state.client.is_some() {
            return Ok(());
        }
        let mut headers = self.headers.clone();
        if let Some((header, secret, prefix)) = &self.auth {
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
            headers.insert(header.clone(), value);
        }
        let client = match state.provided.take() {
            Some(http) => Client {
                http,
                headers: Some(Arc::new(headers)),
            },
            None => Client {
                http: self.own_client(headers)?,
                headers: None,
            },
        };
        state.client = Some(client);
        Ok(())
    }

    /// The client the endpoint makes when none was handed over: `headers` as defaults,
    /// the request and connect timeouts, and redirects within the origin only.
    fn own_client(&self, headers: HeaderMap) -> Result<reqwest::Client, ResourceError> {
        reqwest::Client::builder()
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
            .map_err(|e| invalid(&self.name, "client", e))
    }

    async fn close(&self) -> Result<(), ResourceError> {
        let already_closed = {
            let mut state = self.lock();
            if !state.closed {
                state.closing = true;
                // No new call can take the client now; the running ones hold their clones.
                state.client = None;
                state.provided = None;
            }
            state.closed
        };
        // A stream has no end of its own to wait for: every open one is cut now, and
        // its connection released before the close goes on.
        self.streams_cut.cancel();
        let open = crate::sync::lock(&self.streams).take();
        for stream in open {
            if stream.cut() {
                self.counters.streams_cut.fetch_add(1, Ordering::Relaxed);
            }
        }
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
    /// Reads the key and makes the client. Entering again keeps the same client.
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
    /// [`Endpoint::call`], its [`CallError`] turned into a [`ResourceError`].
    async fn call(&self, request: &Req) -> Result<Resp, ResourceError> {
        Ok(Endpoint::call(self, request).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cut_at_close_error_names_the_endpoint_the_count_and_the_deadline() {
        let error = EndpointError::CutAtClose {
            endpoint: "chat".to_owned(),
            count: 2,
            deadline: Duration::from_millis(200),
        };
        assert_eq!(
            error.to_string(),
            "endpoint `chat`: 2 call(s) still running at the close deadline of 200ms were cut"
        );
    }

    #[test]
    fn a_configuration_is_checked_once_when_the_endpoint_is_built() {
        let refused = |config: EndpointConfig| {
            let error = Endpoint::new(config).unwrap_err();
            error
                .downcast_ref::<ConfigError>()
                .map(|e| e.setting())
                .unwrap_or_default()
        };
        let base = || EndpointConfig::new("http://127.0.0.1:1/v1");
        assert_eq!(refused(EndpointConfig::new("not a url")), "base_url");
        assert_eq!(refused(EndpointConfig::new("ftp://host/")), "base_url");
        assert_eq!(refused(base().method("GE T")), "method");
        assert_eq!(refused(base().content_type("a\nb")), "content_type");
        assert_eq!(refused(base().header("bad header", "x")), "headers");
        assert_eq!(refused(base().header("x-ok", "bad\nvalue")), "headers");
        assert_eq!(
            refused(base().api_key_header("bad header", Secret::value("k"))),
            "auth.header.name"
        );
        assert_eq!(
            refused(base().retry(RetryPolicy::default().max_attempts(0))),
            "retry.max_attempts"
        );
        assert_eq!(
            refused(base().retry(RetryPolicy::default().multiplier(0.5))),
            "retry.multiplier"
        );
        assert_eq!(
            refused(base().retry(RetryPolicy::default().statuses([1000]))),
            "retry.statuses"
        );
        assert_eq!(
            refused(base().stream_idle_timeout(Duration::ZERO)),
            "stream_idle_timeout"
        );
        assert_eq!(refused(base().stream_line_limit(0)), "stream_line_limit");
        let endpoint = Endpoint::new(base().path("chat").method("PUT")).unwrap();
        assert_eq!(endpoint.url(), "http://127.0.0.1:1/v1/chat");
        assert_eq!(endpoint.inner.method, Method::PUT);
    }
}
