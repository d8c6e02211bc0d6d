//! Streamed answers: [`Endpoint::stream`] sends a request whose answer is a stream of
//! server-sent events (`text/event-stream`), and returns an [`EventStream`] of parsed
//! [`Event`]s, itself a resource whose `close` releases its connection.

use std::borrow::Cow;
use std::collections::HashMap;
use std::collections::VecDeque;
use std::fmt;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use http_body::Body as _;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::task::task_tracker::TaskTrackerToken;

use super::usage::Settle;
use super::{CallError, CallErrorKind, CallOptions, Endpoint, Method, ResponseMeta};
use crate::AsyncResource;
use crate::error::ResourceError;
use crate::sync::lock;

/// One server-sent event: its name, its data, the last event id the stream set, and
/// the reconnection time it gave, if any.
///
/// ```
/// # use resource_runtime::http::Event;
/// # fn demo(event: &Event) -> Result<(), serde_json::Error> {
/// if event.event() == "message" {
///     let chunk: serde_json::Value = event.json()?;
///     print!("{}", chunk["choices"][0]["delta"]["content"].as_str().unwrap_or(""));
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Borrowed for the default name, so most events allocate nothing for it.
    event: Cow<'static, str>,
    data: String,
    id: Option<String>,
    retry: Option<Duration>,
}

impl Event {
    /// The event's name: its `event:` field, or `"message"` when it had none.
    pub fn event(&self) -> &str {
        &self.event
    }

    /// The event's data: its `data:` fields joined with `\n`.
    pub fn data(&self) -> &str {
        &self.data
    }

    /// The last event id the stream set (an `id:` field in this event or an earlier
    /// one), if any.
    pub fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    /// The reconnection time this event's `retry:` field gave, if it had one.
    pub fn retry(&self) -> Option<Duration> {
        self.retry
    }

    /// The data read as JSON into `T`.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(&self.data)
    }
}

/// What breaks the event-stream format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FormatError {
    /// A line longer than the limit, in bytes.
    LineTooLong(usize),
    /// A line that is not UTF-8.
    InvalidUtf8,
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FormatError::LineTooLong(limit) => {
                write!(f, "a line is longer than the limit of {limit} bytes")
            }
            FormatError::InvalidUtf8 => f.write_str("a line is not UTF-8"),
        }
    }
}

/// An incremental parser of `text/event-stream`: fed byte chunks as they arrive, it
/// yields each event when the blank line that ends it is read.
#[derive(Debug)]
pub(crate) struct Parser {
    /// The line read so far.
    line: Vec<u8>,
    max_line: usize,
    /// The current line went past the limit: the rest of it is dropped.
    skipping: bool,
    /// The last byte ended a line with `\r`: a `\n` next belongs to it.
    after_cr: bool,
    /// The first line was read (a byte order mark is stripped from it only).
    started: bool,
    event: String,
    data: String,
    has_data: bool,
    id: Option<String>,
    retry: Option<Duration>,
}

/// The byte order mark, stripped from the start of a stream.
const BOM: &[u8] = "\u{feff}".as_bytes();

impl Parser {
    pub(crate) fn new(max_line: usize) -> Self {
        Parser {
            line: Vec::new(),
            max_line,
            skipping: false,
            after_cr: false,
            started: false,
            event: String::new(),
            data: String::new(),
            has_data: false,
            id: None,
            retry: None,
        }
    }

    /// Reads `bytes`, pushing every event (or format error) they complete onto `out`.
    pub(crate) fn feed(&mut self, bytes: &[u8], out: &mut VecDeque<Result<Event, FormatError>>) {
        let mut rest = bytes;
        if self.after_cr && !rest.is_empty() {
            self.after_cr = false;
            if rest[0] == b'\n' {
                rest = &rest[1..];
            }
        }
        while !rest.is_empty() {
            match rest.iter().position(|&b| b == b'\n' || b == b'\r') {
                None => {
                    self.take(rest, out);
                    return;
                }
                Some(end) => {
                    self.take(&rest[..end], out);
                    self.end_line(out);
                    if rest[end] == b'\r' {
                        match rest.get(end + 1) {
                            Some(b'\n') => rest = &rest[end + 2..],
                            Some(_) => rest = &rest[end + 1..],
                            None => {
                                self.after_cr = true;
                                return;
                            }
                        }
                    } else {
                        rest = &rest[end + 1..];
                    }
                }
            }
        }
    }

    /// Adds `part` to the current line, within the limit.
    fn take(&mut self, part: &[u8], out: &mut VecDeque<Result<Event, FormatError>>) {
        if self.skipping || part.is_empty() {
            return;
        }
        if self.line.len() + part.len() > self.max_line {
            self.skipping = true;
            self.line.clear();
            out.push_back(Err(FormatError::LineTooLong(self.max_line)));
            return;
        }
        self.line.extend_from_slice(part);
    }

    fn end_line(&mut self, out: &mut VecDeque<Result<Event, FormatError>>) {
        let first = !self.started;
        self.started = true;
        if self.skipping {
            self.skipping = false;
            return;
        }
        let line = std::mem::take(&mut self.line);
        let mut bytes = &line[..];
        if first && bytes.starts_with(BOM) {
            bytes = &bytes[BOM.len()..];
        }
        let Ok(text) = std::str::from_utf8(bytes) else {
            out.push_back(Err(FormatError::InvalidUtf8));
            self.line = line;
            self.line.clear();
            return;
        };
        if text.is_empty() {
            self.dispatch(out);
        } else if !text.starts_with(':') {
            let (field, value) = match text.split_once(':') {
                Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
                None => (text, ""),
            };
            match field {
                "event" => value.clone_into(&mut self.event),
                "data" => {
                    if self.has_data {
                        self.data.push('\n');
                    }
                    self.data.push_str(value);
                    self.has_data = true;
                }
                "id" if !value.contains('\0') => self.id = Some(value.to_owned()),
                "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                    if let Ok(ms) = value.parse::<u64>() {
                        self.retry = Some(Duration::from_millis(ms));
                    }
                }
                _ => {}
            }
        }
        // The allocation is kept for the next line.
        self.line = line;
        self.line.clear();
    }

    /// A blank line: the event read so far, if it has data.
    fn dispatch(&mut self, out: &mut VecDeque<Result<Event, FormatError>>) {
        let event = std::mem::take(&mut self.event);
        let retry = self.retry.take();
        if !self.has_data {
            return;
        }
        self.has_data = false;
        out.push_back(Ok(Event {
            event: if event.is_empty() {
                Cow::Borrowed("message")
            } else {
                Cow::Owned(event)
            },
            data: std::mem::take(&mut self.data),
            id: self.id.clone(),
            retry,
        }));
    }
}

/// What a stream's poll hands over: an event, or the error that ends the stream.
type Item = Result<Event, CallError>;

/// What an open stream holds until it ends: its connection, its place among the
/// endpoint's calls in flight, and its tokens to settle.
struct Connection {
    body: reqwest::Body,
    /// The call's tokens, settled from its events' `usage` when the stream lets go of
    /// the connection, however it ends.
    tokens: Option<Settle>,
    /// The stream counts as a call in flight while this is held.
    _call: TaskTrackerToken,
}

/// The connection while the stream holds it, and the task waiting to read it.
struct Held {
    connection: Option<Connection>,
    /// Woken when the endpoint's close takes the connection.
    waker: Option<Waker>,
}

/// The part of a stream its endpoint reaches: its close takes the connection (so that
/// it is released however far the caller has read, and whether or not it still reads)
/// and sets `cut`, so that the stream's next item says the endpoint closed.
pub(crate) struct Open {
    cut: AtomicBool,
    held: Mutex<Held>,
}

impl Open {
    /// Cuts the stream: its connection is released before this returns. True if it
    /// still held one.
    pub(crate) fn cut(&self) -> bool {
        self.cut.store(true, Ordering::Release);
        let (connection, waker) = {
            let mut held = lock(&self.held);
            (held.connection.take(), held.waker.take())
        };
        let held_one = connection.is_some();
        drop(connection);
        if let Some(waker) = waker {
            waker.wake();
        }
        held_one
    }

    /// Lets go of the connection: the stream ended, or its caller closed it.
    fn release(&self) {
        let connection = lock(&self.held).connection.take();
        drop(connection);
    }
}

/// The open streams of an endpoint, which its close cuts.
#[derive(Default)]
pub(crate) struct OpenStreams {
    next: u64,
    open: HashMap<u64, Weak<Open>>,
}

impl OpenStreams {
    fn add(&mut self, open: &Arc<Open>) -> u64 {
        let id = self.next;
        self.next += 1;
        self.open.insert(id, Arc::downgrade(open));
        id
    }

    fn remove(&mut self, id: u64) {
        self.open.remove(&id);
    }

    /// Every stream still open, taken out of the set.
    pub(crate) fn take(&mut self) -> Vec<Arc<Open>> {
        self.open
            .drain()
            .filter_map(|(_, open)| open.upgrade())
            .collect()
    }
}

/// The events of a streamed answer, from [`Endpoint::stream`]: a
/// [`Stream`](futures_core::Stream) of `Result<Event, CallError>`, also read with
/// [`next`](Self::next).
///
/// - The OpenAI `data: [DONE]` event ends the stream; no item is made for it.
/// - An error ends the stream: the connection broke (`Interrupted`), the server sent
///   nothing for the idle timeout ([`CallError::is_timeout`]), the stream broke the
///   event-stream format ([`CallErrorKind::Stream`]), or the endpoint closed
///   ([`CallError::is_closed`]: its close cuts every open stream).
/// - It counts as a call in flight of its endpoint until it ends or is dropped.
/// - Dropped or closed ([`AsyncResource::close`]) half-way, it releases its connection
///   at once: nothing reads from it any more.
///
/// The stream is read by the task that polls it, as a plain `reqwest` body would be:
/// no task of its own sits between the connection and the caller, so an event costs
/// its parsing and nothing more. The idle timeout runs while the caller waits for the
/// next event.
pub struct EventStream {
    open: Arc<Open>,
    /// Its key among the endpoint's open streams.
    id: u64,
    endpoint: Endpoint,
    method: Method,
    url: String,
    meta: ResponseMeta,
    parser: Parser,
    /// Events parsed from the chunks read so far, not yet handed over.
    parsed: VecDeque<Result<Event, FormatError>>,
    idle: Duration,
    /// Fires after `idle` without a byte from the server; `None` on a runtime without
    /// timers.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Bytes came (or the stream began) since the timer was last set.
    fresh: bool,
    ended: bool,
}

impl fmt::Debug for EventStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventStream")
            .field("endpoint", &self.endpoint.inner.name)
            .field("url", &self.url)
            .field("status", &self.meta.status())
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl EventStream {
    /// The next event; `None` once the stream has ended (after its last event, or
    /// after the error that ended it).
    pub async fn next(&mut self) -> Option<Result<Event, CallError>> {
        poll_fn(|cx| self.poll_item(cx)).await
    }

    /// The reply's status, headers and attempts.
    pub fn meta(&self) -> &ResponseMeta {
        &self.meta
    }

    fn error(&self, kind: CallErrorKind) -> CallError {
        CallError::new(kind, &self.endpoint.inner.name, &self.method, &self.url)
            .attempts_made(self.meta.attempts())
    }

    /// Ends the stream with `error`, counted as a failed call.
    fn fail(&mut self, error: CallError) -> Poll<Option<Item>> {
        let counters = &self.endpoint.inner.counters;
        counters.failed.fetch_add(1, Ordering::Relaxed);
        self.end();
        Poll::Ready(Some(Err(error)))
    }

    /// Ends the stream: no more items, and the connection is let go.
    fn end(&mut self) {
        self.ended = true;
        self.parsed.clear();
        self.open.release();
    }

    fn poll_item(&mut self, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        loop {
            if self.ended {
                return Poll::Ready(None);
            }
            if self.open.cut.load(Ordering::Acquire) {
                let error = self.error(CallErrorKind::Closed);
                self.end();
                return Poll::Ready(Some(Err(error)));
            }
            match self.parsed.pop_front() {
                Some(Ok(event)) if event.data() == "[DONE]" => {
                    self.end();
                    return Poll::Ready(None);
                }
                Some(Ok(event)) => return Poll::Ready(Some(Ok(event))),
                Some(Err(format)) => {
                    let error = self.error(CallErrorKind::Stream).detail(format.to_string());
                    return self.fail(error);
                }
                None => {}
            }
            // Nothing parsed is left: read the connection.
            let mut held = lock(&self.open.held);
            let Some(connection) = held.connection.as_mut() else {
                // Only a cut (since the check above) or the stream's end lets go of the
                // connection: the next turn says which.
                if !self.open.cut.load(Ordering::Acquire) {
                    self.ended = true;
                }
                continue;
            };
            match Pin::new(&mut connection.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(bytes) = frame.into_data() {
                        let before = self.parsed.len();
                        self.parser.feed(&bytes, &mut self.parsed);
                        self.fresh = true;
                        // Usage is read as events are parsed, not as they are handed
                        // over: a caller that stops at the answer's last words still
                        // settles the usage that came in the same chunks.
                        if let Some(tokens) = connection.tokens.as_mut() {
                            for event in self.parsed.iter().skip(before).flatten() {
                                tokens.read(event.data().as_bytes());
                            }
                        }
                    }
                    drop(held);
                }
                // The end: an event not ended by a blank line is dropped.
                Poll::Ready(None) => {
                    drop(held);
                    self.end();
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Err(e))) => {
                    drop(held);
                    let error = self.error(CallErrorKind::Interrupted).caused_by(e);
                    return self.fail(error);
                }
                Poll::Pending => {
                    // The close that cuts the stream wakes this task.
                    match &mut held.waker {
                        Some(waker) if waker.will_wake(cx.waker()) => {}
                        waker => *waker = Some(cx.waker().clone()),
                    }
                    drop(held);
                    return self.poll_idle(cx);
                }
            }
        }
    }

    /// The connection has nothing to read: the stream fails if the server has been
    /// silent for the idle timeout. The timer is set again only when bytes came since
    /// it was last set, so a burst of chunks costs one reset.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        let Some(timer) = self.timer.as_mut() else {
            return Poll::Pending;
        };
        if self.fresh {
            self.fresh = false;
            // An idle timeout too long for the clock (`Duration::MAX` for "none")
            // leaves the timer where it was, as far off as the clock goes.
            if let Some(deadline) = tokio::time::Instant::now().checked_add(self.idle) {
                timer.as_mut().reset(deadline);
            }
        }
        if timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        let error = self
            .error(CallErrorKind::Timeout)
            .timed_out(true, None)
            .detail(format!("the server sent nothing for {:?}", self.idle));
        self.fail(error)
    }
}

impl futures_core::Stream for EventStream {
    type Item = Result<Event, CallError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_item(cx)
    }
}

impl AsyncResource for EventStream {
    /// A stream is open from the start: nothing to do.
    async fn enter(&mut self) -> Result<(), ResourceError> {
        Ok(())
    }

    /// Stops reading and releases the connection before it returns. Later items: none.
    async fn close(&mut self) -> Result<(), ResourceError> {
        self.end();
        Ok(())
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        lock(&self.endpoint.inner.streams).remove(self.id);
        // The connection goes with `open`, unless the endpoint's close holds it for a
        // moment: it then drops it itself.
        self.open.release();
    }
}

/// The accept header of a streamed request.
const EVENT_STREAM: &str = "text/event-stream";

impl Endpoint {
    /// Sends `request` as JSON with the configured method to the configured path and
    /// returns its answer as a stream of server-sent events.
    ///
    /// Failures before the answer's head (a `429`, a `503`, a connection that could
    /// not be made) are retried as the [`RetryPolicy`](super::RetryPolicy) says, as
    /// for [`call`](Self::call); once the server has answered with a success, nothing
    /// is retried: an error ends the stream.
    ///
    /// ```no_run
    /// use resource_runtime::http::Endpoint;
    /// use serde_json::json;
    ///
    /// # async fn demo(api: &Endpoint) -> Result<(), resource_runtime::http::CallError> {
    /// let mut events = api.stream(&json!({"prompt": "hi", "stream": true})).await?;
    /// while let Some(event) = events.next().await {
    ///     println!("{}", event?.data());
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn stream<Req>(&self, request: &Req) -> Result<EventStream, CallError>
    where
        Req: Serialize + ?Sized,
    {
        self.stream_with(request, &CallOptions::new()).await
    }

    /// Like [`stream`](Self::stream), with `options` for this call (its
    /// [`stream_idle_timeout`](CallOptions::stream_idle_timeout) among them).
    pub async fn stream_with<Req>(
        &self,
        request: &Req,
        options: &CallOptions,
    ) -> Result<EventStream, CallError>
    where
        Req: Serialize + ?Sized,
    {
        let inner = &*self.inner;
        let method = &inner.method;
        let url = &inner.url;
        let body = self.encode(method, url.as_str(), request)?;
        let slot = std::sync::Mutex::new(None);
        let (answer, attempts, call) = self
            .send(method, url, Some(body), options, Some(&slot))
            .await?;
        let taken = lock(&slot).take();
        let meta = ResponseMeta::new(answer.status, answer.headers, attempts);
        let Some(response) = taken else {
            inner.counters.failed.fetch_add(1, Ordering::Relaxed);
            return Err(CallError::new(
                CallErrorKind::Interrupted,
                &inner.name,
                method,
                url.as_str(),
            )
            .reply(meta, None)
            .attempts_made(attempts));
        };
        let idle = options
            .stream_idle_timeout
            .unwrap_or(inner.config.stream_idle_timeout);
        let tokens = inner
            .token_limiter
            .as_ref()
            .map(|limiter| Settle::new(limiter.clone(), options.tokens.unwrap_or(0)));
        let open = Arc::new(Open {
            cut: AtomicBool::new(false),
            held: Mutex::new(Held {
                connection: Some(Connection {
                    body: reqwest::Body::from(response),
                    tokens,
                    _call: call,
                }),
                waker: None,
            }),
        });
        let id = lock(&inner.streams).add(&open);
        // A close that began before the stream was listed has not seen it: it is cut
        // here, as that close would have cut it.
        if inner.streams_cut.is_cancelled() && open.cut() {
            inner.counters.streams_cut.fetch_add(1, Ordering::Relaxed);
        }
        Ok(EventStream {
            open,
            id,
            endpoint: self.clone(),
            method: method.clone(),
            url: url.as_str().to_owned(),
            meta,
            parser: Parser::new(inner.config.stream_line_limit),
            parsed: VecDeque::new(),
            idle,
            // Without a timer (a runtime built without one) the silence is not
            // bounded; everything else works.
            timer: crate::step::try_sleep(idle).map(Box::pin),
            // The silence is counted from the caller's first wait, not from here.
            fresh: true,
            ended: false,
        })
    }
}

pub(crate) fn accept_header() -> reqwest::header::HeaderValue {
    reqwest::header::HeaderValue::from_static(EVENT_STREAM)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(chunks: &[&[u8]], limit: usize) -> Vec<Result<Event, FormatError>> {
        let mut parser = Parser::new(limit);
        let mut out = VecDeque::new();
        for chunk in chunks {
            parser.feed(chunk, &mut out);
        }
        out.into_iter().collect()
    }

    fn event(name: &str, data: &str, id: Option<&str>) -> Result<Event, FormatError> {
        Ok(Event {
            event: Cow::Owned(name.to_owned()),
            data: data.to_owned(),
            id: id.map(str::to_owned),
            retry: None,
        })
    }

    #[test]
    fn fields_lines_and_dispatch_follow_the_event_stream_format() {
        let text = b"\xEF\xBB\xBFdata: one\n\n: a comment\nevent: delta\ndata:two\ndata:  three\nid: 7\n\nretry: 1500\ndata\n\ndata: x\r\n\r\ndata: y\r\rid\n\nevent: none\n\nunknown: field\ndata: partial";
        let events = parse(&[text], 1024);
        let mut with_retry = event("message", "", Some("7")).unwrap();
        with_retry.retry = Some(Duration::from_millis(1500));
        assert_eq!(
            events,
            vec![
                event("message", "one", None),
                event("delta", "two\n three", Some("7")),
                Ok(with_retry),
                event("message", "x", Some("7")),
                event("message", "y", Some("7")),
            ]
        );
        // The id set to empty in the last event applies to the next one.
        let after = parse(&[b"id: 1\ndata: a\n\nid\ndata: b\n\n"], 64);
        assert_eq!(
            after,
            vec![
                event("message", "a", Some("1")),
                event("message", "b", Some(""))
            ]
        );
    }

    #[test]
    fn a_long_line_and_a_line_that_is_not_utf8_are_errors_and_the_stream_goes_on() {
        let events = parse(&[b"data: 0123456789\n\ndata: \xFF\n\ndata: ok\n\n"], 8);
        assert_eq!(
            events,
            vec![
                Err(FormatError::LineTooLong(8)),
                Err(FormatError::InvalidUtf8),
                event("message", "ok", None),
            ]
        );
        // A byte order mark only counts at the very start.
        let late = parse(&[b"\n\xEF\xBB\xBFdata: a\n\n"], 64);
        assert_eq!(late, vec![]);
    }

    /// Texts to mangle: the shapes OpenAI's and Anthropic's streams take, and the edges
    /// of the format.
    const SEEDS: &[&[u8]] = &[
        b"data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\ndata: [DONE]\n\n",
        b"event: message_start\ndata: {\"type\":\"message_start\"}\n\nevent: ping\ndata: {}\n\n",
        b"\xEF\xBB\xBF: keep-alive\r\nid: 3\r\nretry: 10\r\ndata: a\r\ndata: b\r\n\r\n",
        b"data:x\rdata:y\r\revent:\n\ndata\n\nid: \x00\ndata: z\n\n",
        b"data: \xE2\x82\xAC and \xF0\x9F\x98\x80\n\n: \xFF\n\n",
    ];

    /// One mangled input: a seed with bytes inserted, removed, repeated, cut.
    fn mangle(rng: &mut fastrand::Rng) -> Vec<u8> {
        const BYTES: &[u8] = b"\n\r\r\n: datavenidrty\x00\xEF\xBB\xBF\xFF\xC3\x28x";
        let mut input = SEEDS[rng.usize(..SEEDS.len())].to_vec();
        for _ in 0..rng.usize(0..8) {
            let at = rng.usize(..=input.len());
            match rng.u8(..5) {
                0 => input.insert(at, BYTES[rng.usize(..BYTES.len())]),
                1 if at < input.len() => {
                    input.remove(at);
                }
                2 => {
                    let end = rng.usize(at..=input.len());
                    let copy = input[at..end].to_vec();
                    input.splice(at..at, copy);
                }
                3 => input.truncate(at),
                _ => {
                    let seed = SEEDS[rng.usize(..SEEDS.len())];
                    input.splice(at..at, seed.iter().copied());
                }
            }
        }
        input
    }

    #[test]
    fn mangled_inputs_never_panic_and_any_split_into_chunks_gives_the_same_events() {
        let mut rng = fastrand::Rng::with_seed(0x5e5e_2026);
        let (mut events, mut errors) = (0, 0);
        for case in 0..3_000 {
            let input = mangle(&mut rng);
            let limit = rng.usize(4..64);
            let whole = parse(&[&input], limit);
            for _ in 0..4 {
                let mut cuts: Vec<usize> = (0..rng.usize(0..6))
                    .map(|_| rng.usize(..=input.len()))
                    .collect();
                cuts.sort_unstable();
                let mut chunks: Vec<&[u8]> = Vec::new();
                let mut from = 0;
                for cut in cuts {
                    chunks.push(&input[from..cut]);
                    from = cut;
                }
                chunks.push(&input[from..]);
                assert_eq!(
                    parse(&chunks, limit),
                    whole,
                    "case {case}: {:?} split as {chunks:?}",
                    String::from_utf8_lossy(&input)
                );
            }
            // Byte by byte too.
            let bytes: Vec<&[u8]> = input.chunks(1).collect();
            assert_eq!(parse(&bytes, limit), whole, "case {case}, byte by byte");
            for item in &whole {
                match item {
                    Ok(event) => {
                        assert!(!event.event().is_empty());
                        events += 1;
                    }
                    Err(_) => errors += 1,
                }
            }
        }
        // The corpus reaches both sides of the parser.
        assert!(
            events > 1_000 && errors > 100,
            "{events} events, {errors} errors"
        );
    }
}
