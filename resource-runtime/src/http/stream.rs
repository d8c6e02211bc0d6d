//! Streamed answers: [`Endpoint::stream`] sends a request whose answer is a stream of
//! server-sent events (`text/event-stream`), and returns an [`EventStream`] of parsed
//! [`Event`]s, itself a resource whose `close` releases its connection.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::fmt;
use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::task_tracker::TaskTrackerToken;

use super::usage::Settle;
use super::{CallError, CallErrorKind, CallOptions, Endpoint, Method, ResponseMeta};
use crate::AsyncResource;
use crate::error::ResourceError;

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

/// What a stream's reader hands over: an event, or the error that ends the stream.
type Item = Result<Event, CallError>;

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
/// - Dropped or closed ([`AsyncResource::close`]) half-way, it releases its connection:
///   nothing reads from it any more.
pub struct EventStream {
    rx: mpsc::Receiver<Item>,
    reader: Option<JoinHandle<()>>,
    cut: Arc<AtomicBool>,
    meta: ResponseMeta,
    ended: bool,
    endpoint: String,
    method: Method,
    url: String,
}

impl fmt::Debug for EventStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventStream")
            .field("endpoint", &self.endpoint)
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

    fn closed_error(&self) -> CallError {
        CallError::new(
            CallErrorKind::Closed,
            &self.endpoint,
            &self.method,
            &self.url,
        )
        .attempts_made(self.meta.attempts())
    }

    fn poll_item(&mut self, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        if self.ended {
            return Poll::Ready(None);
        }
        if self.cut.load(Ordering::SeqCst) {
            self.ended = true;
            return Poll::Ready(Some(Err(self.closed_error())));
        }
        match self.rx.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(item)) => {
                if item.is_err() {
                    self.ended = true;
                }
                Poll::Ready(Some(item))
            }
            Poll::Ready(None) => {
                self.ended = true;
                if self.cut.load(Ordering::SeqCst) {
                    Poll::Ready(Some(Err(self.closed_error())))
                } else {
                    Poll::Ready(None)
                }
            }
        }
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

    /// Stops reading and releases the connection; returns once the reader has let go
    /// of it. Later items: none.
    async fn close(&mut self) -> Result<(), ResourceError> {
        self.ended = true;
        self.rx.close();
        if let Some(reader) = self.reader.take() {
            reader.abort();
            // The reader holds the connection: once it is gone, so is the connection.
            let _ = reader.await;
        }
        Ok(())
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        if let Some(reader) = &self.reader {
            reader.abort();
        }
    }
}

/// Events a stream's reader may parse ahead of its caller.
const STREAM_BUFFER: usize = 16;

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
        let error = |kind| CallError::new(kind, &inner.name, method, url.as_str());
        let taken = crate::sync::lock(&slot).take();
        let meta = ResponseMeta::new(answer.status, answer.headers, attempts);
        let Some(response) = taken else {
            inner
                .counters
                .failed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Err(error(CallErrorKind::Interrupted)
                .reply(meta, None)
                .attempts_made(attempts));
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Err(error(CallErrorKind::InvalidRequest)
                .detail("a stream is read on a tokio runtime, and none is running")
                .attempts_made(attempts));
        };
        // Room for a few events: the reader parses ahead while the caller handles one.
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let cut = Arc::new(AtomicBool::new(false));
        let reader = Reader {
            endpoint: self.clone(),
            method: method.clone(),
            url: url.as_str().to_owned(),
            attempts,
            idle: options
                .stream_idle_timeout
                .unwrap_or(inner.config.stream_idle_timeout),
            parser: Parser::new(inner.config.stream_line_limit),
            cut: cut.clone(),
            tokens: inner
                .token_limiter
                .as_ref()
                .map(|limiter| Settle::new(limiter.clone(), options.tokens.unwrap_or(0))),
            _call: call,
        };
        let reader = runtime.spawn(reader.run(response, tx, inner.streams_cut.clone()));
        Ok(EventStream {
            rx,
            reader: Some(reader),
            cut,
            meta,
            ended: false,
            endpoint: inner.name.clone(),
            method: method.clone(),
            url: url.as_str().to_owned(),
        })
    }
}

pub(crate) fn accept_header() -> reqwest::header::HeaderValue {
    reqwest::header::HeaderValue::from_static(EVENT_STREAM)
}

/// The task that reads a stream's connection: it owns the response, so that the
/// connection is released when it ends, whoever ends it.
struct Reader {
    endpoint: Endpoint,
    method: Method,
    url: String,
    attempts: u32,
    idle: Duration,
    parser: Parser,
    cut: Arc<AtomicBool>,
    /// The call's tokens, settled from its events' `usage` when the reader ends.
    tokens: Option<Settle>,
    /// The stream counts as a call in flight while this is held.
    _call: TaskTrackerToken,
}

/// What woke the reader.
enum Woken<T> {
    Cut,
    Dropped,
    Idle,
    Ready(T),
}

impl Reader {
    fn error(&self, kind: CallErrorKind) -> CallError {
        CallError::new(kind, &self.endpoint.inner.name, &self.method, &self.url)
            .attempts_made(self.attempts)
    }

    fn fail(&self, error: CallError) -> CallError {
        let counters = &self.endpoint.inner.counters;
        counters.failed.fetch_add(1, Ordering::Relaxed);
        error
    }

    fn cut_now(&self) {
        self.cut.store(true, Ordering::SeqCst);
        let counters = &self.endpoint.inner.counters;
        counters.streams_cut.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads the connection until the stream ends, handing each event over.
    ///
    /// The futures that watch for a cut, a dropped stream and the idle timeout are made
    /// once and polled again for every chunk and event (the timer is reset, not made
    /// anew), and an event goes into the channel without waiting while it has room:
    /// per event, the reader does the parsing and little else.
    async fn run(
        mut self,
        mut response: reqwest::Response,
        tx: mpsc::Sender<Item>,
        streams_cut: CancellationToken,
    ) {
        let mut watch = Watch {
            cut: pin!(streams_cut.cancelled()),
            dropped: pin!(tx.closed()),
            // Without a timer (a runtime built without one) the silence is not
            // bounded; everything else works.
            idle: crate::step::try_sleep(self.idle).map(Box::pin),
        };
        let mut parsed: VecDeque<Result<Event, FormatError>> = VecDeque::new();
        loop {
            while let Some(next) = parsed.pop_front() {
                let item = match next {
                    Ok(event) if event.data() == "[DONE]" => return,
                    Ok(event) => {
                        if let Some(tokens) = &mut self.tokens {
                            tokens.read(event.data().as_bytes());
                        }
                        Ok(event)
                    }
                    Err(format) => Err(self.fail(
                        self.error(CallErrorKind::Stream)
                            .detail(FormatError::to_string(&format)),
                    )),
                };
                let last = item.is_err();
                let item = match tx.try_reserve() {
                    Ok(permit) => {
                        permit.send(item);
                        None
                    }
                    Err(mpsc::error::TrySendError::Full(())) => Some(item),
                    Err(mpsc::error::TrySendError::Closed(())) => return,
                };
                if let Some(item) = item {
                    match watch.wait(tx.send(item), false).await {
                        Woken::Cut => return self.cut_now(),
                        Woken::Ready(Ok(())) => {}
                        _ => return,
                    }
                }
                if last {
                    return;
                }
            }
            if let Some(idle) = watch.idle.as_mut() {
                idle.as_mut().reset(tokio::time::Instant::now() + self.idle);
            }
            let chunk = match watch.wait(response.chunk(), true).await {
                Woken::Cut => return self.cut_now(),
                Woken::Dropped => return,
                Woken::Idle => {
                    let error = self.fail(
                        self.error(CallErrorKind::Timeout)
                            .timed_out(true, None)
                            .detail(format!("the server sent nothing for {:?}", self.idle)),
                    );
                    return self.deliver(error, &tx, &mut watch).await;
                }
                Woken::Ready(chunk) => chunk,
            };
            match chunk {
                Ok(Some(bytes)) => self.parser.feed(&bytes, &mut parsed),
                // The end: an event not ended by a blank line is dropped.
                Ok(None) => return,
                Err(e) => {
                    let error = self.fail(self.error(CallErrorKind::Interrupted).caused_by(e));
                    return self.deliver(error, &tx, &mut watch).await;
                }
            }
        }
    }

    /// Hands over the error that ends the stream.
    async fn deliver<C, D>(
        &self,
        error: CallError,
        tx: &mpsc::Sender<Item>,
        watch: &mut Watch<'_, C, D>,
    ) where
        C: Future<Output = ()>,
        D: Future<Output = ()>,
    {
        if let Woken::Cut = watch.wait(tx.send(Err(error)), false).await {
            self.cut_now();
        }
    }
}

/// What a reader watches while it waits: the endpoint's cut, the stream dropped, and
/// (while it waits for the server) the idle timeout.
struct Watch<'a, C, D> {
    cut: Pin<&'a mut C>,
    dropped: Pin<&'a mut D>,
    idle: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<C, D> Watch<'_, C, D>
where
    C: Future<Output = ()>,
    D: Future<Output = ()>,
{
    /// Runs `fut` until it is done, the endpoint cuts its streams, the stream is
    /// dropped, or (with `idle`) the idle timeout passes.
    async fn wait<T>(&mut self, fut: impl Future<Output = T>, idle: bool) -> Woken<T> {
        let mut fut = pin!(fut);
        poll_fn(|cx| {
            if self.cut.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Woken::Cut);
            }
            if self.dropped.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Woken::Dropped);
            }
            if let Poll::Ready(value) = fut.as_mut().poll(cx) {
                return Poll::Ready(Woken::Ready(value));
            }
            if idle
                && let Some(timer) = self.idle.as_mut()
                && timer.as_mut().poll(cx).is_ready()
            {
                return Poll::Ready(Woken::Idle);
            }
            Poll::Pending
        })
        .await
    }
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
