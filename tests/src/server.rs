//! A loopback HTTP server for the `Endpoint` tests, with fault modes.
//!
//! [`TestServer::start`] binds `127.0.0.1:0` and runs an accept loop of its own on the
//! current tokio runtime, so the tests can count the TCP connections a client opens and
//! closes ([`TestServer::accepted`], [`TestServer::open`], [`TestServer::wait_for_open`])
//! as well as the requests it sends ([`TestServer::received`]).
//!
//! What the server answers is scripted: every request takes the next [`Reply`] from a
//! FIFO queue ([`TestServer::push`], [`TestServer::push_many`]); when the queue is empty
//! it uses the default reply, which echoes the request: `200` with the JSON body
//! `{"echo": <the request body as JSON, or null>, "n": <the request's number, from 1>}`.
//! Besides ordinary responses a reply can be slow ([`Reply::slow`]), never come
//! ([`Reply::hang`]), reset the connection ([`Reply::reset`]) or carry a body that is
//! not JSON ([`Reply::malformed_json`]). What a provider's API says about retries has
//! constructors of its own: [`Reply::retry_after`], [`Reply::retry_after_date`],
//! [`Reply::retry_after_ms`], [`Reply::should_retry`], [`Reply::insufficient_quota`];
//! any other header goes on with [`Reply::with_header`]. Every request's headers are
//! recorded ([`Received::header`]).
//!
//! A reply can also be a stream of server-sent events (`text/event-stream`,
//! [`Reply::sse`], [`Reply::sse_data`]): its parts are written as they come, with
//! pauses between them ([`Sse::Pause`]), and it may end by resetting the connection
//! ([`Sse::Reset`]) or by keeping it open and sending nothing more ([`Sse::Stop`]).
//! [`TestServer::streams`] counts the streams being written.
//!
//! [`TestServer::reserve`] holds a port that refuses connections until a server starts
//! on it, so a test can point a client at an address before a server listens there.
//!
//! Connections are HTTP/1.1 with keep-alive (or HTTP/2 if the client speaks it with
//! prior knowledge), served by hyper. Dropping the server, or
//! [`TestServer::shutdown`], stops the accept loop and closes every connection.
//!
//! ```no_run
//! # async fn demo() {
//! use resource_tests::server::{Reply, TestServer};
//!
//! let server = TestServer::start().await;
//! server.push(Reply::retry_after(429, 1));
//! // ...point a client at server.url() and call it twice: the first call gets the 429,
//! // the second the default echo.
//! assert!(server.wait_for_open(0, std::time::Duration::from_secs(5)).await);
//! # }
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderName, HeaderValue, RETRY_AFTER};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

/// How often the `wait_for_*` methods look at the counters again.
const POLL_INTERVAL: Duration = Duration::from_millis(5);

/// What the server does with one request: see the constructors.
///
/// A reply is consumed by exactly one request. Headers added with
/// [`with_header`](Self::with_header) go on the response (for [`slow`](Self::slow), on
/// the inner reply's response; [`hang`](Self::hang) and [`reset`](Self::reset) send no
/// response, so they ignore them).
#[derive(Debug, Clone)]
pub struct Reply {
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
    Respond(Respond),
    Events(Vec<(HeaderName, HeaderValue)>, Vec<Sse>),
    Slow(Duration, Box<Kind>),
    Hang,
    Reset,
}

#[derive(Debug, Clone)]
struct Respond {
    status: StatusCode,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: ReplyBody,
}

#[derive(Debug, Clone)]
enum ReplyBody {
    Fixed(Bytes),
    /// `{"echo": <request JSON or null>, "n": <request number>}`.
    Echo,
    /// `{"usage": <the request's `usage` field>, "n": <request number>}`.
    Usage,
}

fn status_code(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or_else(|_| panic!("{code} is not an HTTP status code"))
}

impl Reply {
    fn respond(status: u16, content_type: &'static str, body: ReplyBody) -> Self {
        Reply {
            kind: Kind::Respond(Respond {
                status: status_code(status),
                headers: vec![(CONTENT_TYPE, HeaderValue::from_static(content_type))],
                body,
            }),
        }
    }

    /// The default reply: `200` with `{"echo": <request body as JSON, or null>, "n":
    /// <request number>}` (`null` too when the body is not JSON). Push it to script an
    /// ordinary success between faults.
    pub fn echo() -> Self {
        Self::respond(200, "application/json", ReplyBody::Echo)
    }

    /// `200` with `{"usage": <the request body's `usage` field, or null>, "n": <request
    /// number>}`: a request says what its answer reports it used, as a provider's
    /// `usage` does (set it as the default reply for a load of such requests).
    pub fn usage_from_request() -> Self {
        Self::respond(200, "application/json", ReplyBody::Usage)
    }

    /// `status` with `body` as JSON (`content-type: application/json`).
    ///
    /// # Panics
    ///
    /// If `status` is not a valid status code (100 to 999).
    pub fn json(status: u16, body: serde_json::Value) -> Self {
        Self::respond(
            status,
            "application/json",
            ReplyBody::Fixed(Bytes::from(body.to_string())),
        )
    }

    /// `status` with the empty JSON object `{}` as body.
    ///
    /// # Panics
    ///
    /// If `status` is not a valid status code.
    pub fn status(status: u16) -> Self {
        Self::json(status, serde_json::json!({}))
    }

    /// `status` (meant for 429 or 503, but any code goes) with `Retry-After: seconds`
    /// and the body `{}`.
    ///
    /// # Panics
    ///
    /// If `status` is not a valid status code.
    pub fn retry_after(status: u16, seconds: u64) -> Self {
        Self::status(status).with_header(RETRY_AFTER.as_str(), &seconds.to_string())
    }

    /// `status` with `Retry-After: <date>` and the body `{}`; `date` is sent as given,
    /// so it may also be malformed on purpose. `httpdate::fmt_http_date` builds a valid
    /// one.
    ///
    /// # Panics
    ///
    /// If `status` is not a valid status code or `date` is not a valid header value.
    pub fn retry_after_date(status: u16, date: impl AsRef<str>) -> Self {
        Self::status(status).with_header(RETRY_AFTER.as_str(), date.as_ref())
    }

    /// `status` with `retry-after-ms: ms` (the milliseconds OpenAI's API sends beside
    /// `Retry-After`) and the body `{}`.
    ///
    /// # Panics
    ///
    /// If `status` is not a valid status code.
    pub fn retry_after_ms(status: u16, ms: u64) -> Self {
        Self::status(status).with_header("retry-after-ms", &ms.to_string())
    }

    /// `status` with `x-should-retry: true` or `false` (the server's own word on a
    /// retry) and the body `{}`.
    ///
    /// # Panics
    ///
    /// If `status` is not a valid status code.
    pub fn should_retry(status: u16, retry: bool) -> Self {
        Self::status(status).with_header("x-should-retry", if retry { "true" } else { "false" })
    }

    /// `429` with the body OpenAI's API sends when the account's quota is spent:
    /// `{"error": {"message": ..., "type": "insufficient_quota", "param": null, "code":
    /// "insufficient_quota"}}`.
    pub fn insufficient_quota() -> Self {
        Self::json(
            429,
            serde_json::json!({
                "error": {
                    "message": "You exceeded your current quota, please check your plan and billing details.",
                    "type": "insufficient_quota",
                    "param": null,
                    "code": "insufficient_quota",
                }
            }),
        )
    }

    /// `status` with `body` as `text/plain; charset=utf-8`.
    ///
    /// # Panics
    ///
    /// If `status` is not a valid status code.
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Self::respond(
            status,
            "text/plain; charset=utf-8",
            ReplyBody::Fixed(Bytes::from(body.into())),
        )
    }

    /// `200` with `content-type: application/json` and a body that is not valid JSON
    /// (a truncated object).
    pub fn malformed_json() -> Self {
        Self::respond(
            200,
            "application/json",
            ReplyBody::Fixed(Bytes::from_static(br#"{"malformed": tru"#)),
        )
    }

    /// Waits `delay` (with [`tokio::time::sleep`], so a paused clock drives it), then
    /// does what `inner` does. The request counts as received before the wait.
    pub fn slow(delay: Duration, inner: Reply) -> Self {
        Reply {
            kind: Kind::Slow(delay, Box::new(inner.kind)),
        }
    }

    /// Never answers: the request stays in flight and its connection open until the
    /// client gives up (closes the connection) or the server is dropped or shut down.
    pub fn hang() -> Self {
        Reply { kind: Kind::Hang }
    }

    /// Closes the request's TCP connection abruptly, without a response: the socket is
    /// given `SO_LINGER` 0 before it is closed, so the client receives a TCP RST
    /// ("connection reset by peer"), not a clean end of stream. Over HTTP/2 this ends
    /// every stream of the connection.
    pub fn reset() -> Self {
        Reply { kind: Kind::Reset }
    }

    /// `200` with `content-type: text/event-stream` and a body written part by part
    /// from `parts`; the body ends after the last part (unless it is [`Sse::Reset`] or
    /// [`Sse::Stop`]).
    pub fn sse(parts: impl IntoIterator<Item = Sse>) -> Self {
        Reply {
            kind: Kind::Events(
                vec![(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"))],
                parts.into_iter().collect(),
            ),
        }
    }

    /// [`sse`](Self::sse) of one event `data: <d>` for each of `data`, `pause` before
    /// each but the first, then `data: [DONE]`.
    pub fn sse_data<S: AsRef<str>>(data: impl IntoIterator<Item = S>, pause: Duration) -> Self {
        let mut parts = Vec::new();
        for (i, d) in data.into_iter().enumerate() {
            if i > 0 && !pause.is_zero() {
                parts.push(Sse::Pause(pause));
            }
            parts.push(Sse::Text(format!("data: {}\n\n", d.as_ref())));
        }
        parts.push(Sse::Text("data: [DONE]\n\n".to_owned()));
        Self::sse(parts)
    }

    /// Adds a response header (after the ones the constructor set; a second
    /// `content-type` is sent as a second header line, not a replacement).
    ///
    /// # Panics
    ///
    /// If `name` or `value` is not a valid header name or value.
    #[must_use]
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        let name = HeaderName::from_bytes(name.as_bytes())
            .unwrap_or_else(|e| panic!("invalid header name {name:?}: {e}"));
        let value = HeaderValue::from_str(value)
            .unwrap_or_else(|e| panic!("invalid header value {value:?}: {e}"));
        let mut kind = &mut self.kind;
        while let Kind::Slow(_, inner) = kind {
            kind = inner;
        }
        match kind {
            Kind::Respond(respond) => respond.headers.push((name, value)),
            Kind::Events(headers, _) => headers.push((name, value)),
            _ => {}
        }
        self
    }
}

/// A part of a stream of server-sent events ([`Reply::sse`]).
#[derive(Debug, Clone)]
pub enum Sse {
    /// Text written as it is, e.g. `"data: hello\n\n"` (one event), or half of one.
    Text(String),
    /// Bytes written as they are (not UTF-8, say).
    Raw(Bytes),
    /// A wait before the next part ([`tokio::time::sleep`]).
    Pause(Duration),
    /// Resets the connection (a TCP RST, as [`Reply::reset`]); parts after it are not
    /// sent.
    Reset,
    /// Sends nothing more and keeps the connection open until the client closes it (or
    /// the server shuts down); parts after it are not sent.
    Stop,
}

/// One request as the server received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// Its number, counting from 1 in the order the server finished reading requests.
    pub n: usize,
    /// The method, e.g. `"POST"`.
    pub method: String,
    /// The path without the query, e.g. `"/v1/chat"`.
    pub path: String,
    /// The query string without `?`, if there was one.
    pub query: Option<String>,
    /// Every header in the order received, names in lower case, values decoded as
    /// UTF-8 (lossily).
    pub headers: Vec<(String, String)>,
    /// The body, complete.
    pub body: Bytes,
    /// When the server finished reading it, on tokio's clock (paused in a test that
    /// pauses it).
    pub at: tokio::time::Instant,
}

impl Received {
    /// The value of the first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON, or `None` when it is empty or not JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// The script and the record, under one lock so that a request's number and its reply
/// are taken together.
#[derive(Debug)]
struct Script {
    queue: VecDeque<Reply>,
    default: Reply,
    received: Vec<Received>,
}

#[derive(Debug)]
struct State {
    accepted: AtomicUsize,
    open: AtomicUsize,
    in_flight: AtomicUsize,
    streams: AtomicUsize,
    script: Mutex<Script>,
}

impl State {
    fn script(&self) -> MutexGuard<'_, Script> {
        // A failed assertion elsewhere must not turn into a second, confusing panic here.
        self.script.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a complete request and takes its reply.
    fn record(&self, parts: &hyper::http::request::Parts, body: Bytes) -> (usize, Reply) {
        let mut script = self.script();
        let n = script.received.len() + 1;
        script.received.push(Received {
            n,
            at: tokio::time::Instant::now(),
            method: parts.method.as_str().to_owned(),
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().map(str::to_owned),
            headers: parts
                .headers
                .iter()
                .map(|(name, value)| {
                    (
                        name.as_str().to_owned(),
                        String::from_utf8_lossy(value.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body,
        });
        let reply = match script.queue.pop_front() {
            Some(reply) => reply,
            None => script.default.clone(),
        };
        (n, reply)
    }
}

/// Decrements a counter when dropped, however the owning task ends (returns, panics
/// or is aborted).
struct CountGuard<'a>(&'a AtomicUsize);

impl Drop for CountGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Counts one open connection until dropped; owned by the connection's task.
struct OpenGuard(Arc<State>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A loopback HTTP server for tests; see the [module docs](self).
///
/// Dropping it stops the accept loop and closes every connection (shortly after, on
/// the runtime: use [`shutdown`](Self::shutdown) to wait for it).
pub struct TestServer {
    addr: SocketAddr,
    url: String,
    state: Arc<State>,
    stop: CancellationToken,
    accept_loop: Mutex<Option<JoinHandle<()>>>,
}

impl fmt::Debug for TestServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestServer")
            .field("addr", &self.addr)
            .field("accepted", &self.accepted())
            .field("open", &self.open())
            .field("requests", &self.requests())
            .field("in_flight", &self.in_flight())
            .field("pending", &self.pending())
            .finish()
    }
}

/// A loopback port bound but not listening, from [`TestServer::reserve`].
#[derive(Debug)]
pub struct ReservedPort {
    socket: tokio::net::TcpSocket,
    addr: SocketAddr,
}

impl ReservedPort {
    /// The address; a connection to it is refused until [`start`](Self::start).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Starts the test server on this very socket: no moment in which the port is free.
    pub fn start(self) -> TestServer {
        let listener = self
            .socket
            .listen(1024)
            .expect("listen on the reserved port");
        TestServer::serve(listener)
    }
}

impl TestServer {
    /// Binds `127.0.0.1:0` and spawns the accept loop on the current tokio runtime.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, or if the port cannot be bound.
    pub async fn start() -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the test server to 127.0.0.1:0");
        Self::serve(listener)
    }

    /// Holds a loopback port for a server that is not listening yet: connections to it
    /// are refused, and no other test can be given the port meanwhile.
    pub fn reserve() -> ReservedPort {
        let socket = tokio::net::TcpSocket::new_v4().expect("a TCP socket");
        socket
            .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .expect("bind 127.0.0.1:0");
        let addr = socket.local_addr().expect("the bound address");
        ReservedPort { socket, addr }
    }

    fn serve(listener: TcpListener) -> TestServer {
        let addr = listener.local_addr().expect("the test server's address");
        let state = Arc::new(State {
            accepted: AtomicUsize::new(0),
            open: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            streams: AtomicUsize::new(0),
            script: Mutex::new(Script {
                queue: VecDeque::new(),
                default: Reply::echo(),
                received: Vec::new(),
            }),
        });
        let stop = CancellationToken::new();
        let accept_loop = tokio::spawn(accept_loop(listener, state.clone(), stop.clone()));
        TestServer {
            addr,
            url: format!("http://{addr}"),
            state,
            stop,
            accept_loop: Mutex::new(Some(accept_loop)),
        }
    }

    /// The base URL, `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// TCP connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.state.accepted.load(Ordering::SeqCst)
    }

    /// TCP connections open now: accepted and not yet closed by either side. A
    /// connection counts as closed once the server has dropped its socket, however the
    /// connection ended.
    pub fn open(&self) -> usize {
        self.state.open.load(Ordering::SeqCst)
    }

    /// Waits until [`open`](Self::open) is `n` or `deadline` (real time) has passed, and
    /// says whether `open() == n`. For waiting on sockets to close; not a speed test.
    pub async fn wait_for_open(&self, n: usize, deadline: Duration) -> bool {
        self.wait_until(deadline, || self.open() == n).await
    }

    /// Requests received so far (complete, body read).
    pub fn requests(&self) -> usize {
        self.state.script().received.len()
    }

    /// Waits until at least `n` requests have been received or `deadline` (real time)
    /// has passed, and says whether they have.
    pub async fn wait_for_requests(&self, n: usize, deadline: Duration) -> bool {
        self.wait_until(deadline, || self.requests() >= n).await
    }

    /// Requests whose head has arrived and whose reply has not been handed back yet
    /// (including slow and hung ones, and resets until the connection is gone).
    pub fn in_flight(&self) -> usize {
        self.state.in_flight.load(Ordering::SeqCst)
    }

    /// Streams of events ([`Reply::sse`]) being written now: started, and neither
    /// finished nor ended by their connection's close.
    pub fn streams(&self) -> usize {
        self.state.streams.load(Ordering::SeqCst)
    }

    /// Waits until [`streams`](Self::streams) is `n` or `deadline` (real time) has
    /// passed, and says whether `streams() == n`.
    pub async fn wait_for_streams(&self, n: usize, deadline: Duration) -> bool {
        self.wait_until(deadline, || self.streams() == n).await
    }

    /// Every request received so far, in order.
    pub fn received(&self) -> Vec<Received> {
        self.state.script().received.clone()
    }

    /// Queues a reply for a later request (FIFO).
    pub fn push(&self, reply: Reply) {
        self.state.script().queue.push_back(reply);
    }

    /// Queues replies for later requests, in order.
    pub fn push_many(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state.script().queue.extend(replies);
    }

    /// Scripted replies not yet used.
    pub fn pending(&self) -> usize {
        self.state.script().queue.len()
    }

    /// Replaces the reply used when the queue is empty (initially [`Reply::echo`]).
    pub fn set_default(&self, reply: Reply) {
        self.state.script().default = reply;
    }

    /// Stops the accept loop (the port no longer accepts connections) and closes every
    /// connection, then returns: afterwards [`open`](Self::open) is 0. The counters and
    /// the record stay readable. Calling it again does nothing.
    pub async fn shutdown(&self) {
        self.stop.cancel();
        let task = self
            .accept_loop
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(task) = task {
            // A panic in the accept loop would be a bug here; surface it.
            if let Err(e) = task.await
                && e.is_panic()
            {
                std::panic::resume_unwind(e.into_panic());
            }
        }
    }

    async fn wait_until(&self, deadline: Duration, done: impl Fn() -> bool) -> bool {
        let end = Instant::now() + deadline;
        loop {
            if done() {
                return true;
            }
            if Instant::now() >= end {
                return false;
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<State>, stop: CancellationToken) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    state.accepted.fetch_add(1, Ordering::SeqCst);
                    state.open.fetch_add(1, Ordering::SeqCst);
                    // Created before the spawn: a task aborted before its first poll still
                    // drops it.
                    let open = OpenGuard(state.clone());
                    connections.spawn(serve_connection(stream, state.clone(), open));
                }
                // A transient failure (e.g. too many open files): try again.
                Err(_) => tokio::task::yield_now().await,
            },
        }
    }
    drop(listener);
    // Aborts every connection task and waits for them: their sockets are dropped.
    connections.shutdown().await;
}

/// What a connection's request handlers can do to the connection.
#[derive(Debug, Default)]
struct ConnControl {
    /// Set by a reset reply: the socket gets `SO_LINGER` 0 when dropped.
    reset: AtomicBool,
    /// Wakes the connection task to drop the connection at once.
    reset_now: Notify,
    /// Cancelled when the connection task ends: ends hung handlers (HTTP/2 runs them as
    /// tasks of their own).
    closed: CancellationToken,
}

/// The accepted socket, which resets the connection when dropped if a reply asked to.
struct ServerIo {
    stream: TcpStream,
    control: Arc<ConnControl>,
}

impl Drop for ServerIo {
    fn drop(&mut self) {
        if self.control.reset.load(Ordering::SeqCst) {
            // SO_LINGER 0: the close below sends RST instead of FIN.
            let _ = self.stream.set_zero_linger();
        }
    }
}

impl AsyncRead for ServerIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for ServerIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

async fn serve_connection(stream: TcpStream, state: Arc<State>, open: OpenGuard) {
    // Loopback tests should not wait on Nagle's algorithm.
    let _ = stream.set_nodelay(true);
    let control = Arc::new(ConnControl::default());
    let closed = control.closed.clone().drop_guard();
    let io = TokioIo::new(ServerIo {
        stream,
        control: control.clone(),
    });
    let service = {
        let control = control.clone();
        hyper::service::service_fn(move |request| handle(request, state.clone(), control.clone()))
    };
    let builder = auto::Builder::new(TokioExecutor::new());
    let connection = builder.serve_connection(io, service);
    tokio::select! {
        // Ends when the client closes, on a protocol error, or (HTTP/1) when a request
        // asks for `Connection: close`. Errors are the client's business.
        _ = connection => {}
        () = control.reset_now.notified() => {}
    }
    // The connection (and with it the socket) is gone; now end hung handlers, then stop
    // counting the connection as open.
    drop(closed);
    drop(open);
}

async fn handle(
    request: Request<Incoming>,
    state: Arc<State>,
    control: Arc<ConnControl>,
) -> Result<Response<Body>, io::Error> {
    state.in_flight.fetch_add(1, Ordering::SeqCst);
    let _in_flight = CountGuard(&state.in_flight);
    let (parts, body) = request.into_parts();
    let body = body.collect().await.map_err(io::Error::other)?.to_bytes();
    let (n, reply) = state.record(&parts, body.clone());
    let mut kind = reply.kind;
    loop {
        match kind {
            Kind::Slow(delay, inner) => {
                tokio::time::sleep(delay).await;
                kind = *inner;
            }
            Kind::Respond(respond) => return Ok(response(respond, n, &body)),
            Kind::Events(headers, parts) => {
                let (tx, rx) = tokio::sync::mpsc::channel(1);
                state.streams.fetch_add(1, Ordering::SeqCst);
                let counted = StreamGuard(state.clone());
                tokio::spawn(write_events(parts, tx, control.clone(), counted));
                let mut response = Response::new(Body::Stream(rx));
                for (name, value) in headers {
                    response.headers_mut().append(name, value);
                }
                return Ok(response);
            }
            Kind::Hang => {
                control.closed.cancelled().await;
                return Err(io::Error::other("hung reply: connection closed"));
            }
            Kind::Reset => {
                control.reset.store(true, Ordering::SeqCst);
                control.reset_now.notify_one();
                control.closed.cancelled().await;
                return Err(io::Error::other("reset reply: connection reset"));
            }
        }
    }
}

/// Counts one stream being written until dropped.
struct StreamGuard(Arc<State>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.streams.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Writes a stream's parts into its body, until the last part or the connection's end.
async fn write_events(
    parts: Vec<Sse>,
    tx: tokio::sync::mpsc::Sender<Bytes>,
    control: Arc<ConnControl>,
    _counted: StreamGuard,
) {
    for part in parts {
        let bytes = match part {
            Sse::Text(text) => Bytes::from(text),
            Sse::Raw(bytes) => bytes,
            Sse::Pause(delay) => {
                tokio::select! {
                    () = tokio::time::sleep(delay) => continue,
                    () = control.closed.cancelled() => return,
                }
            }
            Sse::Reset => {
                control.reset.store(true, Ordering::SeqCst);
                control.reset_now.notify_one();
                // The sender lives until the connection is gone: dropped earlier, it
                // would end the body cleanly first.
                control.closed.cancelled().await;
                return;
            }
            Sse::Stop => {
                // The body stays open, empty, as long as the sender lives.
                control.closed.cancelled().await;
                return;
            }
        };
        tokio::select! {
            sent = tx.send(bytes) => if sent.is_err() {
                // The body was dropped: the client went away.
                return;
            },
            () = control.closed.cancelled() => return,
        }
    }
}

/// A response body: fixed, or written part by part through a channel.
#[derive(Debug)]
enum Body {
    Full(Full<Bytes>),
    Stream(tokio::sync::mpsc::Receiver<Bytes>),
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, io::Error>>> {
        match self.get_mut() {
            Body::Full(full) => Pin::new(full)
                .poll_frame(cx)
                .map_err(|never| match never {}),
            Body::Stream(rx) => rx
                .poll_recv(cx)
                .map(|part| part.map(|bytes| Ok(hyper::body::Frame::data(bytes)))),
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

fn response(respond: Respond, n: usize, request_body: &Bytes) -> Response<Body> {
    let body = match respond.body {
        ReplyBody::Fixed(body) => body,
        ReplyBody::Echo => {
            let echo = serde_json::from_slice::<serde_json::Value>(request_body).ok();
            Bytes::from(serde_json::json!({ "echo": echo, "n": n }).to_string())
        }
        ReplyBody::Usage => {
            let usage = serde_json::from_slice::<serde_json::Value>(request_body)
                .ok()
                .and_then(|request| request.get("usage").cloned());
            Bytes::from(serde_json::json!({ "usage": usage, "n": n }).to_string())
        }
    };
    let mut response = Response::new(Body::Full(Full::new(body)));
    *response.status_mut() = respond.status;
    for (name, value) in respond.headers {
        response.headers_mut().append(name, value);
    }
    response
}

/// An endpoint built from `config` and entered, for a test to call this server with.
///
/// # Panics
///
/// If the configuration is invalid or the endpoint cannot be entered.
pub async fn entered(
    config: resource_runtime::http::EndpointConfig,
) -> resource_runtime::http::Endpoint {
    let mut endpoint =
        resource_runtime::http::Endpoint::new(config).expect("a valid endpoint configuration");
    resource_runtime::AsyncResource::enter(&mut endpoint)
        .await
        .expect("the endpoint enters");
    endpoint
}
