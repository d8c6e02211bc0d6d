//! [`CallError`]: why a call failed, with what the server said.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use serde::de::DeserializeOwned;

use super::call::{Method, ResponseMeta};
use crate::BoxError;
use crate::error::ResourceError;

/// What kind of failure a [`CallError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CallErrorKind {
    /// The server answered with a status the retry policy did not accept, after any
    /// retries ([`CallError::status`] says which).
    Status,
    /// An attempt did not finish in time: its timeout, or what was left of the call's
    /// deadline.
    Timeout,
    /// No connection could be made: nothing was sent.
    Connect,
    /// The exchange broke off after the request was sent: a connection reset or
    /// closed before the answer, a body cut short.
    Interrupted,
    /// The answer was not the JSON the caller asked for.
    Decode,
    /// The request could not be made: a body that does not serialize, a path outside
    /// the base URL, an invalid header or key in the [`CallOptions`](super::CallOptions).
    /// Nothing was sent.
    InvalidRequest,
    /// The server redirected more than 10 times.
    Redirect,
    /// The endpoint's rate limiter refused to hand out a token (it was closed, say).
    Limiter,
    /// The call was still running when the endpoint's close deadline passed.
    Cut,
    /// A streamed answer broke the event-stream format: a line longer than
    /// [`EndpointConfig::stream_line_limit`](super::EndpointConfig::stream_line_limit),
    /// or a line that is not UTF-8.
    Stream,
    /// The endpoint is closed: the call was refused, or the stream was cut by the
    /// endpoint's close.
    Closed,
    /// The endpoint was never entered.
    NotEntered,
}

/// Why a call of an [`Endpoint`](super::Endpoint) failed.
///
/// It answers what a caller decides on: [`status`](Self::status),
/// [`is_timeout`](Self::is_timeout), [`is_retryable`](Self::is_retryable) (worth
/// trying again later), [`attempts`](Self::attempts), [`retry_after`](Self::retry_after)
/// (the server's own word), [`request_id`](Self::request_id) (to quote to the
/// provider), and it keeps the start of the reply's body (up to
/// [`EndpointConfig::error_body_limit`](super::EndpointConfig::error_body_limit)) so
/// the provider's JSON error can be read with [`body_json`](Self::body_json). The
/// underlying error (the HTTP client's, or the JSON decoder's) is its
/// [`source`](std::error::Error::source). Neither `Display` nor `Debug` shows the key.
///
/// It converts into a [`ResourceError`] (for code written against
/// [`ResourceClient`](super::ResourceClient)): a call refused because the endpoint is
/// closed or was not entered becomes [`ResourceError::closed`] or
/// [`ResourceError::not_entered`]; any other stays reachable with
/// `downcast_ref::<CallError>()`.
///
/// ```
/// use resource_runtime::{scope, http::{CallErrorKind, Endpoint, EndpointConfig}};
/// use serde_json::{Value, json};
/// # use tokio::io::{AsyncReadExt, AsyncWriteExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// # // An API on 127.0.0.1 whose account has spent its quota.
/// # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// # let base_url = format!("http://{}/v1", listener.local_addr()?);
/// # tokio::spawn(async move {
/// #     let Ok((mut socket, _)) = listener.accept().await else { return };
/// #     let mut request = vec![0; 8192];
/// #     let _ = socket.read(&mut request).await;
/// #     let body = r#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota"}}"#;
/// #     let head = "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\n\
/// #         x-request-id: req_9\r\n";
/// #     let reply = format!("{head}content-length: {}\r\n\r\n{body}", body.len());
/// #     let _ = socket.write_all(reply.as_bytes()).await;
/// # });
/// let api = Endpoint::new(EndpointConfig::new(base_url).path("chat"))?;
/// let failed = scope(api, async |api: &mut Endpoint| {
///     api.call::<_, Value>(&json!({"prompt": "hi"})).await
/// })
/// .await?;
/// let error = failed.unwrap_err();
/// assert_eq!(error.kind(), CallErrorKind::Status);
/// assert_eq!(error.status(), Some(429));
/// assert!(!error.is_retryable()); // a spent quota: failed at once, not retried
/// assert_eq!((error.attempts(), error.request_id()), (1, Some("req_9")));
/// let said: Value = error.body_json().unwrap();
/// assert_eq!(said["error"]["type"], "insufficient_quota");
/// # Ok(())
/// # }
/// ```
pub struct CallError {
    inner: Box<Inner>,
}

struct Inner {
    kind: CallErrorKind,
    endpoint: String,
    method: Method,
    url: String,
    attempts: u32,
    /// The last reply's status and headers, if one came.
    meta: Option<ResponseMeta>,
    body: Option<Bytes>,
    retryable: bool,
    /// The last attempt ran out of time (connecting, or waiting for the answer).
    timed_out: bool,
    deadline_exceeded: bool,
    /// The server's wait that was longer than the policy allows, and that limit.
    asked: Option<(Duration, Duration)>,
    /// The time the last attempt was given, when it ran out.
    timed_out_after: Option<Duration>,
    /// What was wrong with a request that could not be made.
    detail: Option<String>,
    source: Option<BoxError>,
}

impl CallError {
    pub(crate) fn new(kind: CallErrorKind, endpoint: &str, method: &Method, url: &str) -> Self {
        CallError {
            inner: Box::new(Inner {
                kind,
                endpoint: endpoint.to_owned(),
                method: method.clone(),
                url: url.to_owned(),
                attempts: 0,
                meta: None,
                body: None,
                retryable: false,
                timed_out: false,
                deadline_exceeded: false,
                asked: None,
                timed_out_after: None,
                detail: None,
                source: None,
            }),
        }
    }

    pub(crate) fn attempts_made(mut self, attempts: u32) -> Self {
        self.inner.attempts = attempts;
        self
    }

    pub(crate) fn reply(mut self, meta: ResponseMeta, body: Option<Bytes>) -> Self {
        self.inner.meta = Some(meta);
        self.inner.body = body;
        self
    }

    pub(crate) fn retryable(mut self, retryable: bool) -> Self {
        self.inner.retryable = retryable;
        self
    }

    pub(crate) fn deadline_exceeded(mut self, exceeded: bool) -> Self {
        self.inner.deadline_exceeded = exceeded;
        self
    }

    pub(crate) fn asked_too_long(mut self, asked: Duration, limit: Duration) -> Self {
        self.inner.asked = Some((asked, limit));
        self
    }

    pub(crate) fn timed_out(mut self, timed_out: bool, after: Option<Duration>) -> Self {
        self.inner.timed_out = timed_out;
        self.inner.timed_out_after = after;
        self
    }

    pub(crate) fn detail(mut self, detail: impl Into<String>) -> Self {
        self.inner.detail = Some(detail.into());
        self
    }

    pub(crate) fn caused_by(mut self, source: impl Into<BoxError>) -> Self {
        self.inner.source = Some(source.into());
        self
    }

    /// What kind of failure it is.
    pub fn kind(&self) -> CallErrorKind {
        self.inner.kind
    }

    /// The status of the last reply, if one came (a [`Status`](CallErrorKind::Status)
    /// error always has one; a [`Decode`](CallErrorKind::Decode) error has the
    /// success's).
    pub fn status(&self) -> Option<u16> {
        self.inner.meta.as_ref().map(ResponseMeta::status)
    }

    /// Whether time ran out: the last attempt's timeout (waiting for the answer, or
    /// connecting), or the call's deadline.
    pub fn is_timeout(&self) -> bool {
        self.inner.kind == CallErrorKind::Timeout
            || self.inner.timed_out
            || self.inner.deadline_exceeded
    }

    /// Whether the call's deadline ([`CallOptions::deadline`](super::CallOptions::deadline))
    /// ended it: it cut an attempt or a wait for the limiter, or left no time for the
    /// next attempt.
    pub fn is_deadline_exceeded(&self) -> bool {
        self.inner.deadline_exceeded
    }

    /// Whether the failure is of a kind the retry policy retries: it failed because the
    /// attempts or the deadline ran out, or because the server asked to wait longer
    /// than the policy waits. Trying again later may succeed. False for a failure no
    /// retry mends (a `400`, a spent quota, `x-should-retry: false`, a request that
    /// may have reached the server and is not idempotent, a closed endpoint).
    pub fn is_retryable(&self) -> bool {
        self.inner.retryable
    }

    /// Whether the call was refused because the endpoint is closed, or the stream was
    /// cut by the endpoint's close.
    pub fn is_closed(&self) -> bool {
        self.inner.kind == CallErrorKind::Closed
    }

    /// Whether the call was refused because the endpoint was never entered.
    pub fn is_not_entered(&self) -> bool {
        self.inner.kind == CallErrorKind::NotEntered
    }

    /// The attempts made, from 0 (refused before any) up.
    pub fn attempts(&self) -> u32 {
        self.inner.attempts
    }

    /// How long the server asked to wait before trying again, on its last reply
    /// (`retry-after-ms`, else `Retry-After`), if it said. When that was longer than
    /// [`RetryPolicy::max_retry_after`](super::RetryPolicy::max_retry_after) the call
    /// failed at once, and this says how long the server wanted.
    pub fn retry_after(&self) -> Option<Duration> {
        match self.inner.asked {
            Some((asked, _)) => Some(asked),
            None => self.inner.meta.as_ref()?.retry_after(),
        }
    }

    /// The provider's id of the request, from the last reply's headers (see
    /// [`ResponseMeta::request_id`]).
    pub fn request_id(&self) -> Option<&str> {
        self.inner.meta.as_ref()?.request_id()
    }

    /// The last reply's status, headers and rate limits, if one came.
    pub fn meta(&self) -> Option<&ResponseMeta> {
        self.inner.meta.as_ref()
    }

    /// The start of the last reply's body, up to
    /// [`EndpointConfig::error_body_limit`](super::EndpointConfig::error_body_limit)
    /// bytes, if a reply came.
    pub fn body(&self) -> Option<&[u8]> {
        self.inner.body.as_deref()
    }

    /// The body read as JSON into `T` (the provider's error object, say), or `None`
    /// when there is no body or it is not a `T`.
    pub fn body_json<T: DeserializeOwned>(&self) -> Option<T> {
        serde_json::from_slice(self.body()?).ok()
    }

    /// The endpoint's name.
    pub fn endpoint(&self) -> &str {
        &self.inner.endpoint
    }

    /// The method of the request.
    pub fn method(&self) -> &Method {
        &self.inner.method
    }

    /// The URL of the request.
    pub fn url(&self) -> &str {
        &self.inner.url
    }
}

/// At most this much of a body goes into the message.
const EXCERPT: usize = 512;

/// The start of a body, on one line, for a message.
fn excerpt(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(EXCERPT)]);
    let mut line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if bytes.len() > EXCERPT {
        line.push('…');
    }
    line
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = &*self.inner;
        let request = format_args!("{} {}", e.method, e.url);
        write!(f, "endpoint `{}`: ", e.endpoint)?;
        match e.kind {
            CallErrorKind::Status => {
                write!(f, "{request} answered {}", self.status().unwrap_or(0))?;
                if let Some(reason) = e.meta.as_ref().and_then(ResponseMeta::reason) {
                    write!(f, " {reason}")?;
                }
            }
            // The deadline passed before the first attempt could take its token.
            CallErrorKind::Timeout if e.attempts == 0 => {
                write!(f, "{request} waited for the rate limiter")?;
            }
            CallErrorKind::Timeout => {
                write!(f, "{request} did not answer")?;
                if let Some(after) = e.timed_out_after {
                    write!(f, " within {after:?}")?;
                }
                if let Some(detail) = &e.detail {
                    write!(f, " ({detail})")?;
                }
            }
            CallErrorKind::Connect => write!(f, "could not connect to send {request}")?,
            CallErrorKind::Interrupted => write!(
                f,
                "the exchange of {request} broke off after the request was sent"
            )?,
            CallErrorKind::Decode => {
                write!(f, "the answer to {request} is not the expected JSON")?;
            }
            CallErrorKind::InvalidRequest => {
                write!(f, "{request} could not be made")?;
                if let Some(detail) = &e.detail {
                    write!(f, ": {detail}")?;
                }
            }
            CallErrorKind::Redirect => {
                write!(f, "{request} was redirected more than 10 times")?;
            }
            CallErrorKind::Limiter => write!(f, "the rate limiter gave no token for {request}")?,
            CallErrorKind::Cut => write!(f, "{request} was cut when the endpoint closed")?,
            CallErrorKind::Stream => {
                write!(f, "the event stream answering {request} is malformed")?;
                if let Some(detail) = &e.detail {
                    write!(f, ": {detail}")?;
                }
            }
            CallErrorKind::Closed => return write!(f, "the endpoint is closed"),
            CallErrorKind::NotEntered => {
                return write!(
                    f,
                    "the endpoint was never entered (enter it, or use it through `scope` or `Managed`)"
                );
            }
        }
        if e.attempts > 1 {
            write!(f, ", after {} attempts", e.attempts)?;
        }
        if let Some((asked, limit)) = e.asked {
            write!(
                f,
                "; the server asked to wait {asked:?}, longer than the {limit:?} the retry policy waits"
            )?;
        } else if e.deadline_exceeded {
            write!(f, "; the call's deadline passed")?;
        }
        if e.kind == CallErrorKind::Status
            && let Some(body) = e.body.as_deref().filter(|b| !b.is_empty())
        {
            write!(f, ": {}", excerpt(body))?;
        }
        Ok(())
    }
}

impl fmt::Debug for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = &*self.inner;
        f.debug_struct("CallError")
            .field("kind", &e.kind)
            .field("endpoint", &e.endpoint)
            .field("method", &e.method)
            .field("url", &e.url)
            .field("status", &self.status())
            .field("attempts", &e.attempts)
            .field("retryable", &e.retryable)
            .field("deadline_exceeded", &e.deadline_exceeded)
            .field("retry_after", &self.retry_after())
            .field("request_id", &self.request_id())
            .field("body", &e.body.as_deref().map(excerpt))
            .field("detail", &e.detail)
            .field("source", &e.source)
            .finish()
    }
}

impl StdError for CallError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.inner
            .source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}

impl From<CallError> for ResourceError {
    /// A call refused because the endpoint is closed or was not entered becomes
    /// [`ResourceError::closed`] or [`ResourceError::not_entered`]; any other is
    /// wrapped with [`ResourceError::other`], reachable with
    /// `downcast_ref::<CallError>()`.
    fn from(error: CallError) -> Self {
        match error.kind() {
            CallErrorKind::Closed => {
                ResourceError::closed(format!("Endpoint `{}`", error.endpoint()))
            }
            CallErrorKind::NotEntered => {
                ResourceError::not_entered(format!("Endpoint `{}`", error.endpoint()))
            }
            _ => ResourceError::other(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use reqwest::header::{HeaderMap, HeaderValue};

    use super::*;

    fn error(kind: CallErrorKind) -> CallError {
        CallError::new(kind, "chat", &Method::POST, "http://127.0.0.1:1/v1/chat")
    }

    fn reply(status: u16, headers: &[(&'static str, &str)]) -> ResponseMeta {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        ResponseMeta::new(status, map, 1)
    }

    #[test]
    fn every_error_names_the_endpoint_the_request_and_what_happened() {
        let cases = [
            (
                error(CallErrorKind::Status)
                    .reply(reply(400, &[]), Some(Bytes::from_static(b"bad\n  prompt"))),
                "POST http://127.0.0.1:1/v1/chat answered 400 Bad Request: bad prompt",
            ),
            (
                error(CallErrorKind::Timeout)
                    .attempts_made(1)
                    .timed_out(true, Some(Duration::from_millis(200))),
                "POST http://127.0.0.1:1/v1/chat did not answer within 200ms",
            ),
            (
                error(CallErrorKind::Timeout).deadline_exceeded(true),
                "POST http://127.0.0.1:1/v1/chat waited for the rate limiter; the call's deadline passed",
            ),
            (
                error(CallErrorKind::Connect).attempts_made(3),
                "could not connect to send POST http://127.0.0.1:1/v1/chat, after 3 attempts",
            ),
            (
                error(CallErrorKind::Interrupted),
                "broke off after the request was sent",
            ),
            (
                error(CallErrorKind::Decode).reply(reply(200, &[]), None),
                "the answer to POST http://127.0.0.1:1/v1/chat is not the expected JSON",
            ),
            (
                error(CallErrorKind::InvalidRequest).detail("`x y` is not a valid header name"),
                "could not be made: `x y` is not a valid header name",
            ),
            (
                error(CallErrorKind::Cut),
                "was cut when the endpoint closed",
            ),
            (
                error(CallErrorKind::Stream).detail("a line is not UTF-8"),
                "the event stream answering POST http://127.0.0.1:1/v1/chat is malformed: a line is not UTF-8",
            ),
            (
                error(CallErrorKind::Timeout)
                    .attempts_made(1)
                    .timed_out(true, None)
                    .detail("the server sent nothing for 1s"),
                "POST http://127.0.0.1:1/v1/chat did not answer (the server sent nothing for 1s)",
            ),
            (
                error(CallErrorKind::Status)
                    .reply(reply(429, &[("retry-after", "3600")]), None)
                    .asked_too_long(Duration::from_secs(3600), Duration::from_secs(60))
                    .retryable(true),
                "answered 429 Too Many Requests; the server asked to wait 3600s, longer than the 60s the retry policy waits",
            ),
            (
                error(CallErrorKind::Status)
                    .reply(reply(503, &[]), None)
                    .attempts_made(2)
                    .deadline_exceeded(true),
                "answered 503 Service Unavailable, after 2 attempts; the call's deadline passed",
            ),
        ];
        for (error, expected) in cases {
            let shown = error.to_string();
            assert!(shown.starts_with("endpoint `chat`: "), "{shown}");
            assert!(shown.contains(expected), "{shown}");
        }
    }

    #[test]
    fn the_accessors_answer_from_the_last_reply() {
        let e = error(CallErrorKind::Status)
            .reply(
                reply(429, &[("retry-after", "3"), ("x-request-id", "req_1")]),
                Some(Bytes::from_static(
                    br#"{"error":{"type":"insufficient_quota","message":"spent"}}"#,
                )),
            )
            .attempts_made(1);
        assert_eq!(e.status(), Some(429));
        assert_eq!(e.retry_after(), Some(Duration::from_secs(3)));
        assert_eq!(e.request_id(), Some("req_1"));
        assert!(!e.is_retryable() && !e.is_timeout());
        let body: serde_json::Value = e.body_json().unwrap();
        assert_eq!(body["error"]["type"], "insufficient_quota");
        assert_eq!(e.body_json::<Vec<u8>>(), None);
        assert_eq!(error(CallErrorKind::Connect).body(), None);
        assert!(error(CallErrorKind::Timeout).is_timeout());
        assert!(
            error(CallErrorKind::Status)
                .deadline_exceeded(true)
                .is_timeout()
        );
    }

    #[test]
    fn the_source_is_kept_and_a_long_body_is_cut_in_the_message() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
        let e = error(CallErrorKind::Interrupted).caused_by(io);
        let source = e.source().unwrap();
        assert!(source.downcast_ref::<std::io::Error>().is_some());
        assert!(!e.to_string().contains("reset by peer"), "not flattened");

        let long = Bytes::from(vec![b'x'; 2_000]);
        let e = error(CallErrorKind::Status).reply(reply(500, &[]), Some(long));
        let shown = e.to_string();
        assert!(shown.ends_with('…') && shown.len() < 700, "{}", shown.len());
        assert_eq!(e.body().map(<[u8]>::len), Some(2_000));
    }

    #[test]
    fn into_a_resource_error_keeps_closed_and_not_entered_and_the_rest_by_downcast() {
        let closed = ResourceError::from(error(CallErrorKind::Closed));
        assert!(closed.is_closed());
        let early = ResourceError::from(error(CallErrorKind::NotEntered));
        assert!(early.is_not_entered());
        let status = ResourceError::from(error(CallErrorKind::Status).reply(reply(502, &[]), None));
        let inner = status.downcast_ref::<CallError>().unwrap();
        assert_eq!(inner.status(), Some(502));
    }
}
