//! [`RetryPolicy`]: which failed attempts are tried again and after how long. One
//! attempt's outcome goes through [`RetryPolicy::classify`], which says `Done`,
//! `RetryAfter(delay)` or `Fail`; [`Attempts::run`] is the loop around it.

use std::fmt;
use std::future::{Future, poll_fn};
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::task::Poll;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use reqwest::header::HeaderMap;
use serde::Deserialize;
use tokio::time::Instant;

use super::call::Method;
use super::config::duration;
use crate::BoxError;
use crate::error::ResourceError;
use crate::limiter::RateLimiter;

/// A user's rule for a reply: see [`RetryPolicy::classifier`].
pub type Classifier = Arc<dyn Fn(&RetryInput<'_>) -> Option<RetryDecision> + Send + Sync>;

/// When a failed attempt is tried again, and after how long.
///
/// **What is retried.** A reply is retried when its status is one of
/// [`statuses`](Self::statuses) (by default `408`, `409`, `429`, `500`, `502`, `503`,
/// `504`), with these exceptions, in this order:
///
/// 1. a [`classifier`](Self::classifier) that returns a decision has the last word;
/// 2. a success (`2xx`) is the answer;
/// 3. `x-should-retry: true` retries the reply and `x-should-retry: false` fails it,
///    whatever its status;
/// 4. a `429` whose body says the quota is spent (`insufficient_quota` as the error's
///    `type` or `code`, as OpenAI sends it) fails at once: waiting does not refill it.
///
/// A failure without a reply depends on whether the request may have reached the
/// server. A connection that could not be made sent nothing, so it is retried, whatever
/// the method. A connection that broke after the request was sent (a reset, a body cut
/// short) or an attempt that timed out is retried only when the request is idempotent:
/// by its method (`GET`, `HEAD`, `PUT`, `DELETE`, `OPTIONS`, `TRACE`) or because it
/// carries an `Idempotency-Key` header (see
/// [`CallOptions::idempotency_key`](super::CallOptions::idempotency_key)), which is the
/// same on every attempt of one call.
///
/// **How long to wait.** A server that says how long to wait is obeyed: `retry-after-ms`
/// (milliseconds), else `Retry-After` (seconds, or an HTTP date). Its wait may be longer
/// than [`max_delay`](Self::max_delay), up to [`max_retry_after`](Self::max_retry_after);
/// past that the call fails at once, and the error says how long the server asked for
/// ([`CallError::retry_after`](super::CallError::retry_after)). With a limiter on the
/// endpoint, the server's wait pauses the limiter, so every caller sharing it waits too.
/// Otherwise the delay before retry `k` (from 0) is drawn at random between zero and
/// `min(max_delay, initial_delay × multiplier^k)` (exponential backoff with full
/// jitter).
///
/// Retries end after [`max_attempts`](Self::max_attempts) attempts, or when a call's
/// deadline ([`CallOptions::deadline`](super::CallOptions::deadline)) leaves no time for
/// the next one.
///
/// In a configuration file every field is optional (durations in the grammar of
/// [`EndpointConfig`](super::EndpointConfig)); the classifier is set in code only:
///
/// ```
/// use std::time::Duration;
/// use resource_runtime::http::{EndpointConfig, RetryDecision, RetryPolicy};
///
/// let config: EndpointConfig = serde_json::from_str(r#"{
///     "base_url": "https://api.example.com/v1",
///     "retry": {
///         "max_attempts": 5,
///         "initial_delay": "200ms",
///         "max_delay": "10s",
///         "multiplier": 3.0,
///         "max_retry_after": "2m",
///         "statuses": [429, 503]
///     }
/// }"#).unwrap();
/// assert_eq!(config.retry.initial_delay, Duration::from_millis(200));
///
/// // The same in code, with a rule of its own: an overloaded server that answers 529.
/// let policy = RetryPolicy::default()
///     .max_attempts(5)
///     .initial_delay(Duration::from_millis(200))
///     .max_delay(Duration::from_secs(10))
///     .multiplier(3.0)
///     .max_retry_after(Duration::from_secs(120))
///     .statuses([429, 503])
///     .classifier(|reply| (reply.status() == 529).then_some(RetryDecision::Retry));
/// assert_eq!(policy.statuses, config.retry.statuses);
/// ```
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Attempts in all, the first included (default 3; 1 means no retry; 0 is refused
    /// when the endpoint is built).
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// The backoff's first delay (default 250 ms).
    #[serde(default = "default_initial_delay", deserialize_with = "duration")]
    pub initial_delay: Duration,
    /// The longest backoff delay (default 30 s). A server's own wait is bounded by
    /// [`max_retry_after`](Self::max_retry_after) instead.
    #[serde(default = "default_max_delay", deserialize_with = "duration")]
    pub max_delay: Duration,
    /// How much the backoff grows from one retry to the next (default 2; at least 1,
    /// checked when the endpoint is built).
    #[serde(default = "default_multiplier")]
    pub multiplier: f64,
    /// The longest wait a server may ask for with `Retry-After` or `retry-after-ms`
    /// (default 60 s); a call asked to wait longer fails at once.
    #[serde(default = "default_max_retry_after", deserialize_with = "duration")]
    pub max_retry_after: Duration,
    /// The statuses that are retried (default `408`, `409`, `429`, `500`, `502`, `503`,
    /// `504`).
    #[serde(default = "default_statuses")]
    pub statuses: Vec<u16>,
    /// A rule of the caller's own for a reply, consulted first for every reply (a
    /// success too) with its status, headers and the start of its body. `None` from it
    /// means "the default rules decide". Not read from configuration files. A panic in
    /// it unwinds out of the call.
    #[serde(skip)]
    pub classifier: Option<Classifier>,
}

/// What a [`RetryPolicy::classifier`] decides for a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RetryDecision {
    /// The reply is the call's answer, whatever its status: its body is decoded as a
    /// success (of a reply that is not a `2xx`, the body kept is at most
    /// [`EndpointConfig::error_body_limit`](super::EndpointConfig::error_body_limit)).
    Done,
    /// Try again after the server's `retry-after-ms` or `Retry-After` if it sent one
    /// (bounded by [`RetryPolicy::max_retry_after`]), else after the backoff.
    Retry,
    /// Try again after this delay.
    RetryAfter(Duration),
    /// Do not try again: the call fails with this reply.
    Fail,
}

/// One reply, as a [`RetryPolicy::classifier`] sees it.
#[derive(Debug)]
pub struct RetryInput<'a> {
    pub(crate) status: u16,
    pub(crate) headers: &'a HeaderMap,
    pub(crate) body: &'a [u8],
    pub(crate) method: &'a Method,
    pub(crate) attempt: u32,
    pub(crate) idempotent: bool,
}

impl RetryInput<'_> {
    /// The status, e.g. `503`.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The first value of the header `name` (any case), if it is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body: all of it for a success, at most
    /// [`EndpointConfig::error_body_limit`](super::EndpointConfig::error_body_limit)
    /// bytes for any other status.
    pub fn body(&self) -> &[u8] {
        self.body
    }

    /// The request's method.
    pub fn method(&self) -> &Method {
        self.method
    }

    /// Which attempt of the call this reply answers, from 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Whether the request may be sent twice: its method is idempotent or it carries an
    /// `Idempotency-Key`.
    pub fn is_idempotent(&self) -> bool {
        self.idempotent
    }
}

impl fmt::Debug for RetryPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryPolicy")
            .field("max_attempts", &self.max_attempts)
            .field("initial_delay", &self.initial_delay)
            .field("max_delay", &self.max_delay)
            .field("multiplier", &self.multiplier)
            .field("max_retry_after", &self.max_retry_after)
            .field("statuses", &self.statuses)
            .field("classifier", &self.classifier.as_ref().map(|_| "<fn>"))
            .finish()
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: default_attempts(),
            initial_delay: default_initial_delay(),
            max_delay: default_max_delay(),
            multiplier: default_multiplier(),
            max_retry_after: default_max_retry_after(),
            statuses: default_statuses(),
            classifier: None,
        }
    }
}

fn default_attempts() -> u32 {
    3
}
fn default_initial_delay() -> Duration {
    Duration::from_millis(250)
}
fn default_max_delay() -> Duration {
    Duration::from_secs(30)
}
fn default_multiplier() -> f64 {
    2.0
}
fn default_max_retry_after() -> Duration {
    Duration::from_secs(60)
}
fn default_statuses() -> Vec<u16> {
    vec![408, 409, 429, 500, 502, 503, 504]
}

impl RetryPolicy {
    /// One attempt, no retry.
    ///
    /// ```
    /// use resource_runtime::http::RetryPolicy;
    ///
    /// assert_eq!(RetryPolicy::none().max_attempts, 1);
    /// ```
    pub fn none() -> Self {
        RetryPolicy::default().max_attempts(1)
    }

    /// Attempts in all, the first included.
    #[must_use]
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// The backoff's first delay.
    #[must_use]
    pub fn initial_delay(mut self, delay: Duration) -> Self {
        self.initial_delay = delay;
        self
    }

    /// The longest backoff delay.
    #[must_use]
    pub fn max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = delay;
        self
    }

    /// How much the backoff grows from one retry to the next.
    #[must_use]
    pub fn multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = multiplier;
        self
    }

    /// The longest wait a server may ask for.
    #[must_use]
    pub fn max_retry_after(mut self, wait: Duration) -> Self {
        self.max_retry_after = wait;
        self
    }

    /// The statuses that are retried, in place of the default ones.
    #[must_use]
    pub fn statuses(mut self, statuses: impl IntoIterator<Item = u16>) -> Self {
        self.statuses = statuses.into_iter().collect();
        self
    }

    /// A rule of the caller's own, consulted first for every reply; `None` from it
    /// leaves the reply to the default rules.
    ///
    /// ```
    /// use resource_runtime::http::{RetryDecision, RetryPolicy};
    ///
    /// // Retry a 400 whose body says the model is loading; leave the rest to the
    /// // default rules.
    /// let policy = RetryPolicy::default().classifier(|reply| {
    ///     let loading = reply.status() == 400
    ///         && reply.body().windows(7).any(|w| w == b"loading");
    ///     loading.then_some(RetryDecision::Retry)
    /// });
    /// assert!(policy.classifier.is_some());
    /// ```
    #[must_use]
    pub fn classifier(
        mut self,
        classifier: impl Fn(&RetryInput<'_>) -> Option<RetryDecision> + Send + Sync + 'static,
    ) -> Self {
        self.classifier = Some(Arc::new(classifier));
        self
    }

    /// What is wrong with the policy, as the field and why; checked once, when the
    /// endpoint is built.
    pub(crate) fn check(&self) -> Result<(), (&'static str, String)> {
        if self.max_attempts == 0 {
            return Err((
                "retry.max_attempts",
                "is 0, so no attempt would be made: give at least 1".to_owned(),
            ));
        }
        if !self.multiplier.is_finite() || self.multiplier < 1.0 {
            return Err((
                "retry.multiplier",
                format!(
                    "is {}, so the backoff would not grow: give a number of at least 1",
                    self.multiplier
                ),
            ));
        }
        if let Some(bad) = self.statuses.iter().find(|s| !(100..=599).contains(*s)) {
            return Err((
                "retry.statuses",
                format!("holds {bad}, which is not an HTTP status (100 to 599)"),
            ));
        }
        Ok(())
    }

    /// The backoff before retry `retry` (from 0): full jitter under
    /// `min(max_delay, initial_delay × multiplier^retry)`.
    pub(crate) fn backoff(&self, retry: u32) -> Duration {
        let cap = backoff_cap(self, retry);
        let nanos = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(if nanos == 0 {
            0
        } else {
            fastrand::u64(0..=nanos)
        })
    }

    /// What to do after attempt `attempt` (from 1) ended with `outcome`.
    pub(crate) fn classify(
        &self,
        outcome: &Outcome,
        attempt: u32,
        method: &Method,
        idempotent: bool,
    ) -> Verdict {
        let backoff = || Verdict::RetryAfter {
            delay: self.backoff(attempt.saturating_sub(1)),
            server: false,
        };
        let reply = match outcome {
            Outcome::Failed(failed) => {
                return match failed.sent {
                    Sent::No => backoff(),
                    Sent::Maybe if idempotent => backoff(),
                    Sent::Maybe | Sent::Fatal => Verdict::Fail {
                        retryable: false,
                        asked: None,
                    },
                };
            }
            Outcome::Answered(reply) => reply,
        };
        let fail = Verdict::Fail {
            retryable: false,
            asked: None,
        };
        if let Some(classifier) = &self.classifier {
            let input = RetryInput {
                status: reply.status,
                headers: &reply.headers,
                body: &reply.body,
                method,
                attempt,
                idempotent,
            };
            match classifier(&input) {
                Some(RetryDecision::Done) => return Verdict::Done,
                Some(RetryDecision::Retry) => return self.retry(reply, attempt),
                Some(RetryDecision::RetryAfter(delay)) => {
                    return Verdict::RetryAfter {
                        delay,
                        server: false,
                    };
                }
                Some(RetryDecision::Fail) => return fail,
                None => {}
            }
        }
        if (200..300).contains(&reply.status) {
            return Verdict::Done;
        }
        match should_retry(&reply.headers) {
            Some(true) => return self.retry(reply, attempt),
            Some(false) => return fail,
            None => {}
        }
        if reply.status == 429 && quota_spent(&reply.body) {
            return fail;
        }
        if self.statuses.contains(&reply.status) {
            self.retry(reply, attempt)
        } else {
            fail
        }
    }

    /// A retry of `reply`: after the server's wait if it gave one and it is not too
    /// long, else after the backoff.
    fn retry(&self, reply: &Answer, attempt: u32) -> Verdict {
        match server_wait(&reply.headers) {
            Some(wait) if wait > self.max_retry_after => Verdict::Fail {
                retryable: true,
                asked: Some(wait),
            },
            Some(wait) => Verdict::RetryAfter {
                delay: wait,
                server: true,
            },
            None => Verdict::RetryAfter {
                delay: self.backoff(attempt.saturating_sub(1)),
                server: false,
            },
        }
    }
}

/// The ceiling of the backoff before retry `retry`.
fn backoff_cap(policy: &RetryPolicy, retry: u32) -> Duration {
    if policy.initial_delay.is_zero() {
        return Duration::ZERO;
    }
    let growth = policy
        .multiplier
        .powi(i32::try_from(retry).unwrap_or(i32::MAX));
    let seconds = policy.initial_delay.as_secs_f64() * growth;
    Duration::try_from_secs_f64(seconds)
        .unwrap_or(policy.max_delay)
        .min(policy.max_delay)
}

/// What to do after an attempt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Verdict {
    /// The attempt is the call's answer.
    Done,
    /// Try again after `delay`; `server` when the server asked for that wait.
    RetryAfter { delay: Duration, server: bool },
    /// The call fails with this attempt's outcome. `retryable`: the failure is of a
    /// kind worth trying again later; `asked`: the server's wait, when it was longer
    /// than the policy allows.
    Fail {
        retryable: bool,
        asked: Option<Duration>,
    },
}

/// How one attempt ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// The server answered.
    Answered(Answer),
    /// No usable answer came.
    Failed(Failed),
}

/// A reply: its status, headers and body (all of a success's, the start of any other's).
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

/// An attempt without a usable answer.
#[derive(Debug)]
pub(crate) struct Failed {
    pub(crate) sent: Sent,
    /// It ran out of time.
    pub(crate) timeout: bool,
    /// The status and headers, when the answer broke off in its body.
    pub(crate) head: Option<(u16, HeaderMap)>,
    pub(crate) source: BoxError,
}

/// Whether a failed attempt may have reached the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sent {
    /// No connection was made: nothing was sent.
    No,
    /// The request may have reached the server (a reset, a timeout, a body cut short).
    Maybe,
    /// A failure no retry can mend (too many redirects, say).
    Fatal,
}

/// `x-should-retry: true|false`, the server's own word on a retry.
fn should_retry(headers: &HeaderMap) -> Option<bool> {
    let value = headers.get("x-should-retry")?.to_str().ok()?.trim();
    if value.eq_ignore_ascii_case("true") {
        Some(true)
    } else if value.eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        None
    }
}

/// Whether a body says the account's quota is spent: `insufficient_quota` as the
/// error's `type` or `code` (`{"error": {"type": "insufficient_quota", ...}}`).
pub(crate) fn quota_spent(body: &[u8]) -> bool {
    const MARK: &[u8] = b"insufficient_quota";
    if !body.windows(MARK.len()).any(|w| w == MARK) {
        return false;
    }
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return false;
    };
    let error = &value["error"];
    [&error["type"], &error["code"]]
        .iter()
        .any(|field| field.as_str() == Some("insufficient_quota"))
}

/// The wait a server asks for: `retry-after-ms` (milliseconds), else `Retry-After`
/// (seconds, or an HTTP date; a date in the past is no wait). Malformed values are
/// ignored.
pub(crate) fn server_wait(headers: &HeaderMap) -> Option<Duration> {
    server_wait_at(headers, SystemTime::now())
}

/// [`server_wait`] for a reply that came at `received`.
pub(crate) fn server_wait_at(headers: &HeaderMap, received: SystemTime) -> Option<Duration> {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(ms) = text("retry-after-ms").and_then(|t| t.parse::<f64>().ok())
        && ms >= 0.0
        && let Ok(wait) = Duration::try_from_secs_f64(ms / 1000.0)
    {
        return Some(wait);
    }
    let value = text("retry-after")?;
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    if let Ok(seconds) = value.parse::<f64>() {
        return (seconds >= 0.0)
            .then(|| Duration::try_from_secs_f64(seconds).ok())
            .flatten();
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(received).unwrap_or(Duration::ZERO))
}

/// What an endpoint has counted so far; read by [`Endpoint::stats`](super::Endpoint::stats).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) calls: AtomicU64,
    pub(crate) attempts: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) retries_throttled: AtomicU64,
    pub(crate) retries_server_error: AtomicU64,
    pub(crate) retries_other_status: AtomicU64,
    pub(crate) retries_timeout: AtomicU64,
    pub(crate) retries_connection: AtomicU64,
    pub(crate) streams_cut: AtomicU64,
}

impl Counters {
    /// Counts a retry under its cause: what the attempt before it ended with.
    fn count_retry(&self, outcome: &Outcome) -> &'static str {
        let (counter, cause) = match outcome {
            Outcome::Answered(reply) if reply.status == 429 => (&self.retries_throttled, "429"),
            Outcome::Answered(reply) if reply.status >= 500 => {
                (&self.retries_server_error, "server error")
            }
            Outcome::Answered(_) => (&self.retries_other_status, "status"),
            Outcome::Failed(failed) if failed.timeout => (&self.retries_timeout, "timeout"),
            Outcome::Failed(_) => (&self.retries_connection, "connection"),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        cause
    }
}

/// The attempts of one call: the policy, the limiter, the time each attempt may take,
/// and the call's deadline.
/// What an attempt takes before it is sent: from one limiter, or from both.
enum Either<'a> {
    One((&'a RateLimiter, u32)),
    Both((&'a RateLimiter, u32), (&'a RateLimiter, u32)),
}

/// Takes `first.1` tokens from `first.0` and `second.1` from `second.0` at one instant
/// (within a timer tick), so that what both count goes out when both admit it: taken
/// one after the other, the first's tokens would be counted from before a wait for
/// the second, and a window at the server could see more than the first allows.
///
/// The callers of one endpoint take their turns one at a time (`admission`, first come
/// first served). The turn's holder takes from the first; then from the second; if
/// that waited, the first's tokens, taken too early, are given back and taken again,
/// now (at once, unless someone outside the endpoint took them meanwhile: then the
/// second's are given back, and so on, until both are taken without a wait between).
async fn take_together(
    first: (&RateLimiter, u32),
    second: (&RateLimiter, u32),
    admission: &tokio::sync::Mutex<()>,
) -> Result<(), ResourceError> {
    /// Timers run on a 1 ms tick: a wait shorter than that is no wait.
    const TICK: Duration = Duration::from_millis(1);
    let _turn = admission.lock().await;
    let (mut held, mut other) = (first, second);
    held.0.acquire(held.1).await?;
    loop {
        let asked = Instant::now();
        if let Err(error) = other.0.acquire(other.1).await {
            held.0.settle(held.1, 0);
            return Err(error);
        }
        if asked.elapsed() < TICK {
            return Ok(());
        }
        held.0.settle(held.1, 0);
        std::mem::swap(&mut held, &mut other);
    }
}

pub(crate) struct Attempts<'a> {
    pub(crate) endpoint: &'a str,
    pub(crate) policy: &'a RetryPolicy,
    pub(crate) method: &'a Method,
    pub(crate) idempotent: bool,
    pub(crate) limiter: Option<&'a RateLimiter>,
    /// Whether the first attempt takes a token too (retries always do).
    pub(crate) first_attempt_takes_token: bool,
    /// The limiter of tokens, and the call's estimate, taken before its first attempt.
    pub(crate) token_limiter: Option<&'a RateLimiter>,
    pub(crate) tokens: u32,
    /// The endpoint's turn for taking from both limiters at one instant.
    pub(crate) admission: &'a tokio::sync::Mutex<()>,
    /// The time one attempt may take.
    pub(crate) attempt_timeout: Duration,
    /// When the whole call must be over.
    pub(crate) deadline: Option<Instant>,
    pub(crate) counters: &'a Counters,
    /// Attempts started, readable while the loop runs (by a call cut half-way).
    pub(crate) started: &'a AtomicU32,
}

/// How the attempts of a call ended: the answer, or why they stopped.
pub(crate) type Ended = Result<Answer, Stopped>;

/// Why the attempts of a call stopped without an answer.
#[derive(Debug)]
pub(crate) struct Stopped {
    /// The last attempt's outcome; `None` when the call stopped before its first
    /// attempt could be made.
    pub(crate) last: Option<Outcome>,
    /// The failure is of a kind worth trying again later.
    pub(crate) retryable: bool,
    /// The server's wait, when it was longer than the policy allows.
    pub(crate) asked: Option<Duration>,
    /// The call's deadline ended it.
    pub(crate) deadline_passed: bool,
    /// The limiter failed (it was closed, say).
    pub(crate) limiter: Option<ResourceError>,
    /// The time the last attempt was given, when it ran out.
    pub(crate) timed_out_after: Option<Duration>,
}

impl Stopped {
    fn new(last: Option<Outcome>) -> Self {
        Stopped {
            last,
            retryable: false,
            asked: None,
            deadline_passed: false,
            limiter: None,
            timed_out_after: None,
        }
    }
}

impl Attempts<'_> {
    /// Runs attempts with `send` (given the time the attempt may take) until one is
    /// done, the policy gives up, the attempts run out or the deadline passes.
    pub(crate) async fn run<F, Fut>(&self, mut send: F) -> Ended
    where
        F: FnMut(Duration) -> Fut,
        Fut: Future<Output = Outcome>,
    {
        let max_attempts = self.policy.max_attempts.max(1);
        let mut last: Option<Outcome> = None;
        let mut attempt = 0_u32;
        loop {
            attempt += 1;
            // The call's tokens once, and a request's token for each attempt.
            let tokens = self
                .token_limiter
                .filter(|_| attempt == 1 && self.tokens > 0)
                .map(|limiter| (limiter, self.tokens));
            let request = self
                .limiter
                .filter(|_| attempt > 1 || self.first_attempt_takes_token)
                .map(|limiter| (limiter, 1));
            let taken = match (tokens, request) {
                (Some(tokens), Some(request)) => Some(Either::Both(tokens, request)),
                (Some(one), None) | (None, Some(one)) => Some(Either::One(one)),
                (None, None) => None,
            };
            if let Some(taken) = taken {
                let take = async {
                    match taken {
                        Either::One((limiter, n)) => limiter.acquire(n).await,
                        Either::Both(first, second) => {
                            take_together(first, second, self.admission).await
                        }
                    }
                };
                match self.before_deadline(take).await {
                    None => {
                        let mut stopped = Stopped::new(last);
                        stopped.deadline_passed = true;
                        stopped.retryable = true;
                        return Err(stopped);
                    }
                    Some(Err(error)) => {
                        let mut stopped = Stopped::new(last);
                        stopped.limiter = Some(error);
                        return Err(stopped);
                    }
                    Some(Ok(())) => {}
                }
            }
            let (timeout, cut_by_deadline) = match self.deadline {
                None => (self.attempt_timeout, false),
                Some(at) => {
                    let left = at.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        let mut stopped = Stopped::new(last);
                        stopped.deadline_passed = true;
                        stopped.retryable = true;
                        return Err(stopped);
                    }
                    (self.attempt_timeout.min(left), left < self.attempt_timeout)
                }
            };
            self.started.store(attempt, Ordering::Relaxed);
            self.counters.attempts.fetch_add(1, Ordering::Relaxed);
            let outcome = send(timeout).await;
            let timed_out = matches!(&outcome, Outcome::Failed(f) if f.timeout);
            match self
                .policy
                .classify(&outcome, attempt, self.method, self.idempotent)
            {
                Verdict::Done => {
                    return match outcome {
                        Outcome::Answered(answer) => Ok(answer),
                        // `classify` is done with replies only.
                        failed @ Outcome::Failed(_) => Err(Stopped::new(Some(failed))),
                    };
                }
                Verdict::Fail { retryable, asked } => {
                    let mut stopped = Stopped::new(Some(outcome));
                    stopped.retryable = retryable;
                    stopped.asked = asked;
                    stopped.deadline_passed = timed_out && cut_by_deadline;
                    stopped.timed_out_after = timed_out.then_some(timeout);
                    return Err(stopped);
                }
                Verdict::RetryAfter { delay, server } => {
                    let resume = Instant::now().checked_add(delay);
                    let out_of_time = self
                        .deadline
                        .is_some_and(|at| resume.is_none_or(|resume| resume >= at));
                    if attempt >= max_attempts || out_of_time {
                        let mut stopped = Stopped::new(Some(outcome));
                        stopped.retryable = true;
                        stopped.deadline_passed = out_of_time || (timed_out && cut_by_deadline);
                        stopped.timed_out_after = timed_out.then_some(timeout);
                        return Err(stopped);
                    }
                    let cause = self.counters.count_retry(&outcome);
                    tracing::debug!(
                        endpoint = %self.endpoint,
                        attempt,
                        cause,
                        delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                        server_asked = server,
                        "retrying"
                    );
                    last = Some(outcome);
                    if let (Some(limiter), Some(resume)) = (self.token_limiter, resume)
                        && server
                    {
                        limiter.pause_until(resume);
                    }
                    match (self.limiter, resume) {
                        // The pause holds every caller of the limiter, this one too: its
                        // next attempt takes a token, which waits the pause out.
                        (Some(limiter), Some(resume)) if server => limiter.pause_until(resume),
                        _ => sleep(delay).await,
                    }
                }
            }
        }
    }

    /// Runs `fut` until the call's deadline; `None` if the deadline came first.
    async fn before_deadline<T>(&self, fut: impl Future<Output = T>) -> Option<T> {
        let Some(at) = self.deadline else {
            return Some(fut.await);
        };
        let mut fut = pin!(fut);
        // Without a timer the deadline cannot be kept: the wait runs to its end.
        let mut timer = crate::step::try_sleep_until(at).map(Box::pin);
        poll_fn(|cx| {
            if let Poll::Ready(value) = fut.as_mut().poll(cx) {
                return Poll::Ready(Some(value));
            }
            if let Some(timer) = timer.as_mut()
                && timer.as_mut().poll(cx).is_ready()
            {
                return Poll::Ready(None);
            }
            Poll::Pending
        })
        .await
    }
}

/// Sleeps on tokio's clock; without a timer there is nothing to wait with, and the
/// retry goes at once.
async fn sleep(delay: Duration) {
    if delay.is_zero() {
        return;
    }
    if let Some(timer) = crate::step::try_sleep(delay) {
        timer.await;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use reqwest::header::HeaderValue;

    use super::*;

    fn reply(status: u16, headers: &[(&'static str, &str)], body: &str) -> Outcome {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        Outcome::Answered(Answer {
            status,
            headers: map,
            body: Bytes::from(body.to_owned()),
        })
    }

    fn failed(sent: Sent, timeout: bool) -> Outcome {
        Outcome::Failed(Failed {
            sent,
            timeout,
            head: None,
            source: "no answer".into(),
        })
    }

    /// A policy without jitter's randomness in the way: a backoff of zero.
    fn policy() -> RetryPolicy {
        RetryPolicy::default()
            .initial_delay(Duration::ZERO)
            .max_delay(Duration::ZERO)
    }

    fn verdict(policy: &RetryPolicy, outcome: &Outcome, method: Method, keyed: bool) -> Verdict {
        let idempotent = method.is_idempotent() || keyed;
        policy.classify(outcome, 1, &method, idempotent)
    }

    const RETRY: Verdict = Verdict::RetryAfter {
        delay: Duration::ZERO,
        server: false,
    };
    const FAIL: Verdict = Verdict::Fail {
        retryable: false,
        asked: None,
    };

    #[test]
    fn the_default_statuses_are_retried_and_the_others_fail() {
        let policy = policy();
        for status in [408, 409, 429, 500, 502, 503, 504] {
            assert_eq!(
                verdict(&policy, &reply(status, &[], ""), Method::POST, false),
                RETRY,
                "{status}"
            );
        }
        for status in [400, 401, 403, 404, 422, 501, 302] {
            assert_eq!(
                verdict(&policy, &reply(status, &[], ""), Method::POST, false),
                FAIL,
                "{status}"
            );
        }
        for status in [200, 201, 204] {
            assert_eq!(
                verdict(&policy, &reply(status, &[], ""), Method::POST, false),
                Verdict::Done
            );
        }
        let custom = policy.statuses([418]);
        assert_eq!(
            verdict(&custom, &reply(418, &[], ""), Method::POST, false),
            RETRY
        );
        assert_eq!(
            verdict(&custom, &reply(503, &[], ""), Method::POST, false),
            FAIL
        );
    }

    #[test]
    fn the_server_says_whether_to_retry() {
        let policy = policy();
        let no = reply(503, &[("x-should-retry", "false")], "");
        assert_eq!(verdict(&policy, &no, Method::GET, false), FAIL);
        let yes = reply(400, &[("x-should-retry", "True")], "");
        assert_eq!(verdict(&policy, &yes, Method::POST, false), RETRY);
        let garbage = reply(400, &[("x-should-retry", "maybe")], "");
        assert_eq!(verdict(&policy, &garbage, Method::POST, false), FAIL);
    }

    #[test]
    fn a_spent_quota_fails_at_once_and_other_429s_are_retried() {
        let policy = policy();
        let by_type = r#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","param":null,"code":null}}"#;
        let by_code = r#"{"error":{"type":"requests","code":"insufficient_quota"}}"#;
        for body in [by_type, by_code] {
            assert_eq!(
                verdict(&policy, &reply(429, &[], body), Method::POST, false),
                FAIL
            );
        }
        let mention = r#"{"error":{"message":"not insufficient_quota","type":"requests"}}"#;
        assert_eq!(
            verdict(&policy, &reply(429, &[], mention), Method::POST, false),
            RETRY
        );
        // Only a 429 is read this way.
        assert_eq!(
            verdict(&policy, &reply(503, &[], by_type), Method::POST, false),
            RETRY
        );
    }

    #[test]
    fn a_failure_without_an_answer_is_retried_only_when_nothing_or_an_idempotent_request_was_sent()
    {
        let policy = policy();
        for method in [Method::POST, Method::PATCH, Method::GET] {
            assert_eq!(
                verdict(&policy, &failed(Sent::No, false), method.clone(), false),
                RETRY
            );
            assert_eq!(
                verdict(&policy, &failed(Sent::Maybe, true), method.clone(), true),
                RETRY
            );
        }
        for method in [Method::POST, Method::PATCH] {
            assert_eq!(
                verdict(&policy, &failed(Sent::Maybe, false), method.clone(), false),
                FAIL
            );
            assert_eq!(
                verdict(&policy, &failed(Sent::Maybe, true), method.clone(), false),
                FAIL
            );
        }
        for method in [
            Method::GET,
            Method::HEAD,
            Method::PUT,
            Method::DELETE,
            Method::OPTIONS,
        ] {
            assert_eq!(
                verdict(&policy, &failed(Sent::Maybe, false), method, false),
                RETRY
            );
        }
        assert_eq!(
            verdict(&policy, &failed(Sent::Fatal, false), Method::GET, true),
            FAIL
        );
    }

    #[test]
    fn the_servers_wait_is_obeyed_up_to_the_cap_then_the_call_fails() {
        let policy = policy().max_retry_after(Duration::from_secs(60));
        let asked = |headers: &[(&'static str, &str)]| {
            verdict(&policy, &reply(429, headers, ""), Method::POST, false)
        };
        let waits = |delay| Verdict::RetryAfter {
            delay,
            server: true,
        };
        assert_eq!(
            asked(&[("retry-after", "7")]),
            waits(Duration::from_secs(7))
        );
        assert_eq!(
            asked(&[("retry-after", "1.5")]),
            waits(Duration::from_millis(1_500))
        );
        assert_eq!(
            asked(&[("retry-after-ms", "250"), ("retry-after", "7")]),
            waits(Duration::from_millis(250))
        );
        assert_eq!(
            asked(&[("retry-after-ms", "12.5")]),
            waits(Duration::from_micros(12_500))
        );
        // Longer than the backoff's own ceiling (zero here), within the cap: obeyed.
        assert_eq!(
            asked(&[("retry-after", "60")]),
            waits(Duration::from_secs(60))
        );
        assert_eq!(
            asked(&[("retry-after", "3600")]),
            Verdict::Fail {
                retryable: true,
                asked: Some(Duration::from_secs(3600))
            }
        );
        // Garbage is ignored: the backoff decides.
        for garbage in ["soon", "-3", "NaN"] {
            assert_eq!(asked(&[("retry-after", garbage)]), RETRY, "{garbage}");
            assert_eq!(asked(&[("retry-after-ms", garbage)]), RETRY, "{garbage}");
        }
    }

    #[test]
    fn retry_after_reads_seconds_and_dates_and_ignores_garbage() {
        let mut headers = HeaderMap::new();
        assert_eq!(server_wait(&headers), None);
        headers.insert("retry-after", HeaderValue::from_static("7"));
        assert_eq!(server_wait(&headers), Some(Duration::from_secs(7)));
        headers.insert("retry-after", HeaderValue::from_static("soon"));
        assert_eq!(server_wait(&headers), None);
        let past = httpdate::fmt_http_date(std::time::UNIX_EPOCH + Duration::from_secs(1));
        headers.insert("retry-after", HeaderValue::from_str(&past).unwrap());
        assert_eq!(server_wait(&headers), Some(Duration::ZERO));
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(120));
        headers.insert("retry-after", HeaderValue::from_str(&later).unwrap());
        let wait = server_wait(&headers).unwrap();
        assert!(
            wait > Duration::from_secs(100) && wait <= Duration::from_secs(120),
            "{wait:?}"
        );
    }

    #[test]
    fn the_classifier_decides_first_and_none_leaves_the_default_rules() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let policy = policy().classifier(move |reply| {
            record.lock().unwrap().push((
                reply.status(),
                reply.header("X-Kind").map(str::to_owned),
                String::from_utf8_lossy(reply.body()).into_owned(),
                reply.attempt(),
                reply.is_idempotent(),
                reply.method().as_str().to_owned(),
            ));
            match reply.header("x-kind") {
                Some("retry") => Some(RetryDecision::Retry),
                Some("wait") => Some(RetryDecision::RetryAfter(Duration::from_secs(3))),
                Some("fail") => Some(RetryDecision::Fail),
                Some("done") => Some(RetryDecision::Done),
                _ => None,
            }
        });
        let check = |status, kind: &str, want: Verdict| {
            let outcome = reply(status, &[("x-kind", kind)], "start of the body");
            assert_eq!(
                verdict(&policy, &outcome, Method::POST, false),
                want,
                "{status} {kind}"
            );
        };
        check(400, "retry", RETRY);
        check(
            200,
            "wait",
            Verdict::RetryAfter {
                delay: Duration::from_secs(3),
                server: false,
            },
        );
        check(503, "fail", FAIL);
        check(404, "done", Verdict::Done);
        check(503, "other", RETRY);
        check(404, "other", FAIL);
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 6);
        assert_eq!(
            seen[0],
            (
                400,
                Some("retry".to_owned()),
                "start of the body".to_owned(),
                1,
                false,
                "POST".to_owned()
            )
        );
    }

    #[test]
    fn a_classifiers_retry_still_obeys_the_servers_wait() {
        let policy = policy().classifier(|_| Some(RetryDecision::Retry));
        let outcome = reply(400, &[("retry-after", "2")], "");
        assert_eq!(
            verdict(&policy, &outcome, Method::POST, false),
            Verdict::RetryAfter {
                delay: Duration::from_secs(2),
                server: true
            }
        );
    }

    #[test]
    fn the_backoff_grows_by_the_multiplier_under_its_ceiling_with_full_jitter() {
        let policy = RetryPolicy::default()
            .initial_delay(Duration::from_millis(100))
            .multiplier(3.0)
            .max_delay(Duration::from_secs(2));
        let caps = [100, 300, 900, 2_000, 2_000];
        for (retry, cap) in caps.into_iter().enumerate() {
            let retry = u32::try_from(retry).unwrap();
            assert_eq!(backoff_cap(&policy, retry), Duration::from_millis(cap));
            let draws: Vec<Duration> = (0..200).map(|_| policy.backoff(retry)).collect();
            assert!(draws.iter().all(|d| *d <= Duration::from_millis(cap)));
            // Full jitter: the draws spread over the whole range, not just near the top.
            assert!(draws.iter().any(|d| *d < Duration::from_millis(cap / 2)));
        }
        assert_eq!(backoff_cap(&policy, u32::MAX), Duration::from_secs(2));
        let flat = policy.clone().multiplier(1.0);
        assert_eq!(backoff_cap(&flat, 10), Duration::from_millis(100));
        let none = policy.initial_delay(Duration::ZERO);
        assert_eq!(backoff_cap(&none, u32::MAX), Duration::ZERO);
    }

    #[test]
    fn a_policy_that_cannot_work_is_refused_with_its_field() {
        assert_eq!(
            RetryPolicy::default()
                .max_attempts(0)
                .check()
                .unwrap_err()
                .0,
            "retry.max_attempts"
        );
        for bad in [0.5, f64::NAN, f64::INFINITY] {
            assert_eq!(
                RetryPolicy::default()
                    .multiplier(bad)
                    .check()
                    .unwrap_err()
                    .0,
                "retry.multiplier"
            );
        }
        assert_eq!(
            RetryPolicy::default()
                .statuses([429, 42])
                .check()
                .unwrap_err()
                .0,
            "retry.statuses"
        );
        assert!(RetryPolicy::default().check().is_ok());
        assert!(RetryPolicy::none().check().is_ok());
    }

    // The loop, on tokio's paused clock: every delay is exact.

    /// Attempts that answer from a script, recording when each was made.
    struct Script {
        outcomes: Mutex<VecDeque<Outcome>>,
        at: Mutex<Vec<(Duration, Duration)>>,
        start: Instant,
    }

    impl Script {
        fn new(outcomes: impl IntoIterator<Item = Outcome>) -> Self {
            Script {
                outcomes: Mutex::new(outcomes.into_iter().collect()),
                at: Mutex::new(Vec::new()),
                start: Instant::now(),
            }
        }

        async fn send(&self, timeout: Duration) -> Outcome {
            self.at
                .lock()
                .unwrap()
                .push((self.start.elapsed(), timeout));
            let next = self.outcomes.lock().unwrap().pop_front();
            match next {
                Some(outcome) => outcome,
                None => {
                    // No answer: the attempt runs out of time.
                    tokio::time::sleep(timeout).await;
                    failed(Sent::Maybe, true)
                }
            }
        }

        /// When each attempt started, from the start.
        fn starts(&self) -> Vec<Duration> {
            self.at.lock().unwrap().iter().map(|(at, _)| *at).collect()
        }

        fn timeouts(&self) -> Vec<Duration> {
            self.at.lock().unwrap().iter().map(|(_, t)| *t).collect()
        }
    }

    struct Harness {
        policy: RetryPolicy,
        counters: Counters,
        started: AtomicU32,
        limiter: Option<RateLimiter>,
        deadline: Option<Instant>,
        idempotent: bool,
        admission: tokio::sync::Mutex<()>,
    }

    impl Harness {
        fn new(policy: RetryPolicy) -> Self {
            Harness {
                policy,
                counters: Counters::default(),
                started: AtomicU32::new(0),
                limiter: None,
                deadline: None,
                idempotent: false,
                admission: tokio::sync::Mutex::new(()),
            }
        }

        async fn run(&self, script: &Script) -> Ended {
            Attempts {
                endpoint: "test",
                policy: &self.policy,
                method: &Method::POST,
                idempotent: self.idempotent,
                limiter: self.limiter.as_ref(),
                first_attempt_takes_token: false,
                token_limiter: None,
                tokens: 0,
                admission: &self.admission,
                attempt_timeout: Duration::from_secs(10),
                deadline: self.deadline,
                counters: &self.counters,
                started: &self.started,
            }
            .run(|timeout| script.send(timeout))
            .await
        }
    }

    fn secs(s: &[u64]) -> Vec<Duration> {
        s.iter().map(|s| Duration::from_secs(*s)).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn the_loop_waits_what_the_server_asks_then_answers() {
        let harness = Harness::new(policy().max_attempts(4));
        let script = Script::new([
            reply(429, &[("retry-after", "7")], ""),
            reply(503, &[("retry-after-ms", "1500")], ""),
            reply(200, &[], "{}"),
        ]);
        let answer = harness.run(&script).await.unwrap();
        assert_eq!(answer.status, 200);
        assert_eq!(
            script.starts(),
            [0, 7_000, 8_500].map(Duration::from_millis)
        );
        let counters = &harness.counters;
        assert_eq!(counters.attempts.load(Ordering::Relaxed), 3);
        assert_eq!(counters.retries_throttled.load(Ordering::Relaxed), 1);
        assert_eq!(counters.retries_server_error.load(Ordering::Relaxed), 1);
        assert_eq!(harness.started.load(Ordering::Relaxed), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn the_loop_stops_after_max_attempts_and_says_the_failure_is_retryable() {
        let harness = Harness::new(policy().max_attempts(3));
        let script = Script::new([
            reply(500, &[], ""),
            reply(502, &[], ""),
            reply(503, &[], "busy"),
        ]);
        let stopped = harness.run(&script).await.unwrap_err();
        assert!(stopped.retryable && !stopped.deadline_passed);
        assert!(matches!(
            stopped.last,
            Some(Outcome::Answered(Answer { status: 503, .. }))
        ));
        assert_eq!(script.starts().len(), 3);
        assert_eq!(
            harness
                .counters
                .retries_server_error
                .load(Ordering::Relaxed),
            2
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_past_the_cap_fails_at_once_with_what_was_asked() {
        let harness = Harness::new(policy().max_retry_after(Duration::from_secs(30)));
        let script = Script::new([reply(429, &[("retry-after", "31")], "")]);
        let start = Instant::now();
        let stopped = harness.run(&script).await.unwrap_err();
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(stopped.asked, Some(Duration::from_secs(31)));
        assert!(stopped.retryable);
        assert_eq!(script.starts().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_backoff_is_slept_between_attempts() {
        let harness = Harness::new(
            RetryPolicy::default()
                .max_attempts(4)
                .initial_delay(Duration::from_secs(1))
                .multiplier(2.0)
                .max_delay(Duration::from_secs(3)),
        );
        let script = Script::new([
            failed(Sent::No, false),
            failed(Sent::No, false),
            failed(Sent::No, false),
            reply(200, &[], "{}"),
        ]);
        harness.run(&script).await.unwrap();
        let starts = script.starts();
        let gaps: Vec<Duration> = starts.windows(2).map(|w| w[1] - w[0]).collect();
        for (gap, cap) in gaps.iter().zip(secs(&[1, 2, 3])) {
            assert!(*gap <= cap, "{gaps:?}");
        }
        assert_eq!(
            harness.counters.retries_connection.load(Ordering::Relaxed),
            3
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_bounds_the_attempts_and_the_waits_between_them() {
        // An attempt gets what is left of the deadline when that is less than its own
        // timeout, and a wait that would end past the deadline is not begun.
        let mut harness = Harness::new(policy().max_attempts(10));
        harness.idempotent = true;
        harness.deadline = Some(Instant::now() + Duration::from_secs(15));
        let script = Script::new([reply(503, &[("retry-after", "2")], "")]);
        let stopped = harness.run(&script).await.unwrap_err();
        // 0: 503, wait 2 s; 2: no answer for 10 s; 12: 3 s left, no answer.
        assert_eq!(script.starts(), secs(&[0, 2, 12]));
        assert_eq!(script.timeouts(), secs(&[10, 10, 3]));
        assert!(stopped.deadline_passed && stopped.retryable);
        assert_eq!(stopped.timed_out_after, Some(Duration::from_secs(3)));

        let mut harness = Harness::new(policy().max_attempts(10));
        harness.deadline = Some(Instant::now() + Duration::from_secs(5));
        let script = Script::new([reply(503, &[("retry-after", "6")], "")]);
        let start = Instant::now();
        let stopped = harness.run(&script).await.unwrap_err();
        assert_eq!(start.elapsed(), Duration::ZERO, "no wait past the deadline");
        assert!(stopped.deadline_passed && stopped.retryable);
        assert!(matches!(
            stopped.last,
            Some(Outcome::Answered(Answer { status: 503, .. }))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn the_servers_wait_pauses_the_limiter_for_every_caller() {
        let limiter = RateLimiter::new(1_000, Duration::from_secs(1)).unwrap();
        let mut harness = Harness::new(policy());
        harness.limiter = Some(limiter.clone());
        let script = Script::new([
            reply(429, &[("retry-after", "4")], ""),
            reply(200, &[], "{}"),
        ]);
        let other = {
            let limiter = limiter.clone();
            async move {
                // Another caller, after the 429: held back until the pause ends.
                tokio::time::sleep(Duration::from_secs(1)).await;
                let asked = Instant::now();
                limiter.acquire(1).await.unwrap();
                asked.elapsed()
            }
        };
        let (ended, other_waited) = tokio::join!(harness.run(&script), other);
        ended.unwrap();
        assert_eq!(script.starts(), secs(&[0, 4]));
        assert_eq!(other_waited, Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_that_passes_while_waiting_for_a_token_stops_the_call() {
        let limiter = RateLimiter::new(1, Duration::from_secs(3600)).unwrap();
        assert!(limiter.try_acquire(1).unwrap());
        let mut harness = Harness::new(policy());
        harness.limiter = Some(limiter);
        harness.deadline = Some(Instant::now() + Duration::from_secs(2));
        let script = Script::new([reply(503, &[], "")]);
        let start = Instant::now();
        let stopped = harness.run(&script).await.unwrap_err();
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        assert!(stopped.deadline_passed);
        assert!(matches!(
            stopped.last,
            Some(Outcome::Answered(Answer { status: 503, .. }))
        ));
    }
}
