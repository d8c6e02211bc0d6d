//! The runtime's `AsyncResource` impls for tokio types and containers, observed from
//! outside: bytes on disk, a peer's end-of-file, a task that stops, a token cancelled.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use resource_runtime::{AsyncResource, Operation, ResourceError};
use resource_tests::{Log, Probe, StartsThenPanics, paths, strings};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A fresh path in the temp directory, unique to this process and `name`; removed when
/// dropped.
struct TempPath(PathBuf);

impl TempPath {
    fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "resource-tests-adapters-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&path);
        TempPath(path)
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[derive(AsyncResource)]
struct Logger {
    #[resource]
    out: BufWriter<tokio::fs::File>,
}

impl Logger {
    async fn create(path: &TempPath) -> Self {
        Logger {
            out: BufWriter::new(tokio::fs::File::create(&path.0).await.unwrap()),
        }
    }
}

const LINE: &[u8] = b"request sent\n";

#[tokio::test]
async fn closing_a_buf_writer_field_keeps_the_buffered_bytes() {
    let path = TempPath::new("bufwriter-closed");
    let mut logger = Logger::create(&path).await;
    logger.out.write_all(LINE).await.unwrap();
    assert_eq!(
        logger.out.buffer(),
        LINE,
        "the bytes must still be buffered"
    );
    logger.close().await.unwrap();
    assert_eq!(std::fs::read(&path.0).unwrap(), LINE);
    // A second close finds nothing to flush and succeeds.
    logger.close().await.unwrap();
    drop(logger);
    assert_eq!(std::fs::read(&path.0).unwrap(), LINE);
}

#[tokio::test]
async fn dropping_a_buf_writer_without_close_loses_the_buffered_bytes() {
    // The control for the test above: without close, the same bytes never reach the
    // file, so the close is what kept them.
    let path = TempPath::new("bufwriter-dropped");
    let mut logger = Logger::create(&path).await;
    logger.out.write_all(LINE).await.unwrap();
    assert_eq!(logger.out.buffer(), LINE);
    drop(logger);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(std::fs::read(&path.0).unwrap(), b"");
}

#[tokio::test]
async fn closing_a_tokio_file_writes_everything_out() {
    let path = TempPath::new("file");
    let mut file = tokio::fs::File::create(&path.0).await.unwrap();
    let data = vec![7_u8; 64 * 1024];
    file.write_all(&data).await.unwrap();
    file.close().await.unwrap();
    assert_eq!(std::fs::read(&path.0).unwrap(), data);
    file.close().await.unwrap();
}

#[derive(AsyncResource)]
struct Connection {
    #[resource]
    stream: TcpStream,
}

async fn connected_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    (client.unwrap(), accepted.unwrap().0)
}

/// Reads until end-of-file, with a generous bound so a missing EOF fails instead of
/// hanging.
async fn read_to_eof(server: &mut TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), server.read_to_end(&mut received))
        .await
        .expect("the peer never saw end-of-file")
        .unwrap();
    received
}

#[tokio::test]
async fn closing_a_tcp_stream_field_sends_end_of_file_to_the_peer() {
    let (client, mut server) = connected_pair().await;
    let mut conn = Connection { stream: client };
    conn.stream.write_all(b"bye").await.unwrap();

    // While the client is open, the server has nothing more to read but no EOF either.
    let mut buf = [0_u8; 16];
    server.readable().await.unwrap();
    assert_eq!(server.try_read(&mut buf).unwrap(), 3);
    let pending = server.try_read(&mut buf).unwrap_err();
    assert_eq!(pending.kind(), std::io::ErrorKind::WouldBlock);

    conn.close().await.unwrap();
    // `conn` is still alive: the EOF comes from the close, not from a drop.
    assert_eq!(read_to_eof(&mut server).await, b"");
    assert_eq!(server.read(&mut buf).await.unwrap(), 0);

    // A second close of a shut-down stream succeeds.
    conn.close().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn closing_a_join_handle_stops_a_looping_task_and_a_second_close_is_ok() {
    let ticks = Arc::new(AtomicUsize::new(0));
    let owned = Arc::new(());
    let mut handle: JoinHandle<()> = tokio::spawn({
        let ticks = ticks.clone();
        let owned = owned.clone();
        async move {
            let _owned = owned;
            loop {
                ticks.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(55)).await;
    assert!(ticks.load(Ordering::SeqCst) > 0);
    assert_eq!(Arc::strong_count(&owned), 2);

    handle.close().await.unwrap();
    assert!(handle.is_finished());
    // Nothing the task owned outlives the close.
    assert_eq!(Arc::strong_count(&owned), 1);
    let after_close = ticks.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(ticks.load(Ordering::SeqCst), after_close);

    handle.close().await.unwrap();
}

#[tokio::test]
async fn closing_a_join_handle_of_a_finished_task_is_ok() {
    let mut handle = tokio::spawn(async { 5 });
    while !handle.is_finished() {
        tokio::task::yield_now().await;
    }
    handle.close().await.unwrap();
    handle.close().await.unwrap();
}

#[derive(AsyncResource)]
struct Worker {
    #[resource]
    task: JoinHandle<()>,
}

#[tokio::test]
async fn closing_a_join_handle_of_a_task_that_already_panicked_is_ok_and_does_not_poll_it() {
    // A finished handle may have handed its output out already, and tokio panics when
    // it is polled again; the close cannot tell, so it never polls a finished handle.
    // The panic was reported by the panic hook when it happened.
    let mut worker = Worker {
        task: tokio::spawn(async { panic!("worker crashed") }),
    };
    while !worker.task.is_finished() {
        tokio::task::yield_now().await;
    }
    worker.close().await.unwrap();
    // Its output taken by the user first: still no second poll, no panic.
    let mut handle = tokio::spawn(async { 7 });
    assert_eq!((&mut handle).await.unwrap(), 7);
    handle.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_a_join_handle_whose_task_is_panicking_reports_the_panic() {
    // The task panics while the close is waiting for it (it cannot be aborted while it
    // is being polled), so the panic reaches the close.
    let started = Arc::new(tokio::sync::Notify::new());
    let mut worker = Worker {
        task: tokio::spawn({
            let started = started.clone();
            async move {
                started.notify_one();
                std::thread::sleep(Duration::from_millis(500));
                panic!("worker crashed late");
            }
        }),
    };
    started.notified().await;
    let err = worker
        .close()
        .await
        .expect_err("the panic must not be lost");
    assert!(err.is_panic(), "{err:?}");
    assert_eq!(err.panic_message(), Some("worker crashed late"));
}

#[derive(AsyncResource)]
struct Service {
    #[resource]
    stop: CancellationToken,
}

#[tokio::test]
async fn closing_a_cancellation_token_cancels_it_and_its_children() {
    let token = CancellationToken::new();
    let child = token.child_token();
    let watcher = tokio::spawn({
        let child = child.clone();
        async move { child.cancelled().await }
    });
    let mut service = Service { stop: token };
    assert!(!child.is_cancelled());
    service.close().await.unwrap();
    assert!(service.stop.is_cancelled());
    assert!(child.is_cancelled());
    tokio::time::timeout(Duration::from_secs(10), watcher)
        .await
        .expect("the watcher was not woken")
        .unwrap();
    service.close().await.unwrap();
}

#[tokio::test]
async fn closing_an_option_closes_the_value_then_sets_none() {
    let log = Log::new();
    let probe = log.probe("inner");
    let closes = probe.close_counter();
    let mut option = Some(probe);
    option.enter().await.unwrap();
    option.close().await.unwrap();
    assert!(option.is_none());
    option.close().await.unwrap();
    assert_eq!(closes.get(), 1);
    assert_eq!(log.entries(), strings(&["enter inner", "close inner"]));

    let mut empty: Option<Probe> = None;
    empty.enter().await.unwrap();
    empty.close().await.unwrap();
}

#[tokio::test]
async fn an_option_is_emptied_even_when_its_close_fails() {
    let log = Log::new();
    let mut option = Some(log.probe("inner").fail_close());
    let err = option.close().await.unwrap_err();
    assert!(option.is_none());
    assert_eq!(err.failures().len(), 1);
}

/// Never finishes its close.
struct Hangs(Log);

impl AsyncResource for Hangs {
    async fn close(&mut self) -> Result<(), ResourceError> {
        self.0.push("hang started");
        std::future::pending::<()>().await;
        Ok(())
    }
}

#[tokio::test]
async fn an_option_is_empty_after_its_close_was_cancelled() {
    let log = Log::new();
    let mut value: Option<Hangs> = Some(Hangs(log.clone()));
    let cut = tokio::time::timeout(Duration::from_millis(5), value.close()).await;
    assert!(cut.is_err());
    assert_eq!(log.entries(), ["hang started"]);
    assert!(value.is_none());
}

#[derive(AsyncResource)]
struct Fleet {
    #[resource]
    first: Probe,
    #[resource]
    items: Vec<Probe>,
}

#[tokio::test]
async fn a_vec_closes_every_element_in_reverse_with_index_paths() {
    let log = Log::new();
    let mut items = vec![
        log.probe("v0"),
        log.probe("v1").fail_close(),
        log.probe("v2"),
        log.probe("v3").fail_close(),
    ];
    items.enter().await.unwrap();
    log.clear();
    let err = items.close().await.unwrap_err();
    assert_eq!(
        log.entries(),
        strings(&["close v3", "close v2", "close v1", "close v0"])
    );
    assert_eq!(paths(&err), ["3", "1"]);

    let mut fleet = Fleet {
        first: log.probe("first"),
        items: vec![log.probe("f0").fail_close(), log.probe("f1")],
    };
    let err = fleet.close().await.unwrap_err();
    assert_eq!(paths(&err), ["items.0"]);
    assert_eq!(err.to_string(), "close `items.0`: probe f0 failed to close");
}

#[tokio::test]
async fn a_vec_rolls_back_the_entered_elements_when_one_fails_to_enter() {
    let log = Log::new();
    let mut items = vec![
        log.probe("v0"),
        log.probe("v1").fail_close(),
        log.probe("v2").fail_enter(),
        log.probe("v3"),
    ];
    let v3_enters = items[3].enter_counter();
    let err = items.enter().await.unwrap_err();
    assert_eq!(
        log.entries(),
        strings(&["enter v0", "enter v1", "enter v2", "close v1", "close v0"])
    );
    assert_eq!(v3_enters.get(), 0);
    assert_eq!(paths(&err), ["2", "1"]);
    let kinds: Vec<_> = err
        .failures()
        .map(|f| (f.operation(), f.is_rollback()))
        .collect();
    assert_eq!(
        kinds,
        [
            (Some(Operation::Enter), false),
            (Some(Operation::Close), true)
        ]
    );

    let mut fleet = Fleet {
        first: log.probe("first"),
        items: vec![log.probe("f0"), log.probe("f1").fail_enter()],
    };
    log.clear();
    let err = fleet.enter().await.unwrap_err();
    assert_eq!(paths(&err), ["items.1"]);
    // The Vec rolled back its own element; the struct rolled back `first`.
    assert_eq!(
        log.entries(),
        strings(&[
            "enter first",
            "enter f0",
            "enter f1",
            "close f0",
            "close first"
        ])
    );
}

#[tokio::test(start_paused = true)]
async fn a_vec_keeps_closing_after_an_element_panics() {
    let log = Log::new();
    let mut items = vec![
        log.probe("v0"),
        log.probe("v1").panic_on_close(),
        log.probe("v2"),
    ];
    let err = items.close().await.unwrap_err();
    assert_eq!(
        log.entries(),
        strings(&["close v2", "close v1", "close v0"])
    );
    assert_eq!(paths(&err), ["1"]);
    assert!(err.is_panic());
}

/// `Vec` enters its elements in order; one whose enter panics is closed with the ones
/// entered before it (the enter rule).
#[tokio::test]
async fn a_vec_closes_the_element_whose_enter_panicked_and_the_ones_before() {
    let log = Log::new();
    let panics = StartsThenPanics::default();
    let mut items = vec![
        Element::Probe(log.probe("0")),
        Element::Panics(panics.clone()),
        Element::Probe(log.probe("2")),
    ];
    let err = items.enter().await.unwrap_err();
    assert!(err.is_panic(), "{err}");
    assert_eq!(paths(&err), ["1.Panics.0"]);
    assert!(
        !panics.is_running(),
        "the element whose enter panicked is still running"
    );
    assert_eq!(log.entries(), strings(&["enter 0", "close 0"]));

    let same = StartsThenPanics::default();
    let mut all_alike = vec![same.clone()];
    assert!(all_alike.enter().await.unwrap_err().is_panic());
    assert!(!same.is_running());
}

/// A probe or the panicking enter, so one `Vec` holds both.
#[derive(AsyncResource)]
enum Element {
    Probe(#[resource] Probe),
    Panics(#[resource] StartsThenPanics),
}
