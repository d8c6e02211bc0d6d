//! Edge cases of the generated code: panics before a close's first `.await`, fields
//! dropped at their deadline, recursive and generic shapes, runtimes without timers,
//! and user names that look like the expansion's own.

use std::future::Future;
use std::time::Duration;

use resource_runtime::{AsyncResource, ResourceError};
use resource_tests::{Log, Probe, YieldsThenCancels, paths};
use tokio_util::sync::CancellationToken;

/// A resource whose `close` panics while making its future, before any `.await`.
struct PanicsEagerly;

impl AsyncResource for PanicsEagerly {
    #[allow(clippy::manual_async_fn, unreachable_code)]
    fn close(&mut self) -> impl Future<Output = Result<(), ResourceError>> + Send {
        panic!("panicked before returning a future");
        async { Ok(()) }
    }

    #[allow(clippy::manual_async_fn, unreachable_code)]
    fn enter(&mut self) -> impl Future<Output = Result<(), ResourceError>> + Send {
        panic!("panicked before returning an enter future");
        async { Ok(()) }
    }
}

#[derive(AsyncResource)]
struct EagerPanic {
    #[resource]
    first: Probe,
    #[resource]
    second: PanicsEagerly,
}

#[tokio::test]
async fn a_close_that_panics_before_returning_its_future_is_caught_and_the_rest_close() {
    let log = Log::new();
    let mut value = EagerPanic {
        first: log.probe("first"),
        second: PanicsEagerly,
    };
    let err = value.close().await.unwrap_err();
    assert!(err.is_panic(), "{err}");
    assert_eq!(err.path(), Some("second"));
    assert_eq!(
        err.panic_message(),
        Some("panicked before returning a future")
    );
    assert!(
        log.entries().contains(&"close first".to_owned()),
        "{:?}",
        log.entries()
    );
}

#[tokio::test]
async fn an_enter_that_panics_before_returning_its_future_rolls_back() {
    let log = Log::new();
    let mut value = EagerPanic {
        first: log.probe("first"),
        second: PanicsEagerly,
    };
    let err = value.enter().await.unwrap_err();
    let failures: Vec<_> = err.failures().collect();
    assert!(failures[0].is_panic(), "{err}");
    assert_eq!(failures[0].path(), Some("second"));
    assert_eq!(log.entries(), ["enter first", "close first"]);
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

#[derive(AsyncResource)]
struct WithOptional {
    #[resource(timeout = "10ms")]
    hangs: Option<Hangs>,
    #[resource]
    panics: Option<PanicsEagerly>,
}

#[tokio::test(start_paused = true)]
async fn an_option_field_is_empty_after_its_close_timed_out_or_panicked() {
    let log = Log::new();
    let mut value = WithOptional {
        hangs: Some(Hangs(log.clone())),
        panics: Some(PanicsEagerly),
    };
    let err = value.close().await.unwrap_err();
    assert_eq!(paths(&err), ["panics", "hangs"]);
    // Dropped at the deadline and after the panic: the struct holds nothing any more.
    assert!(value.hangs.is_none());
    assert!(value.panics.is_none());
    value.close().await.unwrap();
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

/// A generic tree: the field that contains the type itself gets no inferred bound.
#[derive(AsyncResource)]
struct Tree<T> {
    #[resource]
    value: T,
    #[resource]
    children: Vec<Tree<T>>,
}

#[tokio::test]
async fn a_generic_recursive_type_closes_every_node_depth_first_in_reverse() {
    let log = Log::new();
    let mut tree = Tree {
        value: log.probe("root"),
        children: vec![
            Tree {
                value: log.probe("a"),
                children: vec![Tree {
                    value: log.probe("a1"),
                    children: Vec::new(),
                }],
            },
            Tree {
                value: log.probe("b").fail_close(),
                children: Vec::new(),
            },
        ],
    };
    let err = tree.close().await.unwrap_err();
    assert_eq!(paths(&err), ["children.1.value"]);
    let closes: Vec<_> = log
        .entries()
        .into_iter()
        .filter(|e| e.starts_with("close") && !e.ends_with("finished"))
        .collect();
    assert_eq!(closes, ["close b", "close a1", "close a", "close root"]);
}

#[derive(AsyncResource)]
#[resource(timeout = "1s")]
struct Bounded {
    #[resource]
    stop: YieldsThenCancels,
}

#[test]
fn a_whole_close_deadline_without_a_timer_still_closes_and_says_why() {
    // A runtime built without `enable_time`: the deadline cannot be set.
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let stop = CancellationToken::new();
    let mut value = Bounded {
        stop: YieldsThenCancels(stop.clone()),
    };
    let err = rt.block_on(value.close()).unwrap_err();
    assert!(stop.is_cancelled());
    assert_eq!(err.hook(), Some("close deadline"));
    assert!(err.is_unenforced_deadline(), "{err}");
    assert!(!err.is_panic(), "{err}");
    assert_eq!(err.deadline(), Some(Duration::from_secs(1)));
    assert!(err.to_string().contains("enable_time"), "{err}");
}

/// A user function whose name is one of the expansion's locals: the locals have
/// mixed-site hygiene, so the path in `close = __field0` still means this function.
/// (A unit struct or `const` with such a name would still clash with a `let` of the
/// expansion, as with every derive; the names are all `__`-prefixed for that reason.)
#[allow(non_snake_case)]
async fn __field0(token: &mut CancellationToken) -> std::io::Result<()> {
    token.cancel();
    Ok(())
}

#[derive(AsyncResource)]
struct LookAlike {
    #[resource(close = __field0)]
    token: CancellationToken,
}

#[tokio::test]
async fn user_items_named_like_the_expansion_locals_are_the_users() {
    let token = CancellationToken::new();
    let mut value = LookAlike {
        token: token.clone(),
    };
    value.close().await.unwrap();
    assert!(token.is_cancelled());
}

/// A foreign connection generic over its codec, closed by a function.
struct Conn<C> {
    codec: C,
    open: bool,
}

async fn close_conn<C>(conn: &mut Conn<C>) -> std::io::Result<()> {
    tokio::task::yield_now().await;
    conn.open = false;
    Ok(())
}

#[derive(AsyncResource)]
struct Client<C> {
    #[resource(close = close_conn)]
    conn: Conn<C>,
}

#[tokio::test]
async fn a_generic_field_closed_by_a_function_is_bounded_send() {
    let mut client = Client {
        conn: Conn {
            codec: String::from("json"),
            open: true,
        },
    };
    client.close().await.unwrap();
    assert!(!client.conn.open);
    assert_eq!(client.conn.codec, "json");
}

#[allow(non_camel_case_types)]
#[derive(AsyncResource)]
enum r#Kind {
    r#match {
        #[resource]
        r#type: Probe,
    },
}

#[tokio::test]
async fn raw_identifiers_are_unraw_in_paths() {
    let log = Log::new();
    let mut value = Kind::r#match {
        r#type: log.probe("t").fail_close(),
    };
    let err = value.close().await.unwrap_err();
    assert_eq!(err.path(), Some("match.type"));
}

/// Two types that contain each other: the recursion goes through another type, so the
/// derive cannot see it; `boxed` asks for the boxed futures.
#[derive(AsyncResource)]
struct Ping {
    #[resource]
    probe: Probe,
    #[resource(boxed)]
    pong: Option<Box<Pong>>,
}

#[derive(AsyncResource)]
struct Pong {
    #[resource]
    probe: Probe,
    #[resource(boxed)]
    ping: Option<Box<Ping>>,
}

#[tokio::test]
async fn mutually_recursive_types_close_with_boxed_fields() {
    let log = Log::new();
    let mut ping = Ping {
        probe: log.probe("ping"),
        pong: Some(Box::new(Pong {
            probe: log.probe("pong"),
            ping: Some(Box::new(Ping {
                probe: log.probe("inner ping").fail_close(),
                pong: None,
            })),
        })),
    };
    let err = ping.close().await.unwrap_err();
    assert_eq!(paths(&err), ["pong.ping.probe"]);
    let closes: Vec<_> = log
        .entries()
        .into_iter()
        .filter(|e| e.starts_with("close") && !e.ends_with("finished"))
        .collect();
    assert_eq!(closes, ["close inner ping", "close pong", "close ping"]);
    assert!(ping.pong.is_none());
}

macro_rules! wide {
    ($($f:ident)*) => {
        #[derive(AsyncResource)]
        #[resource(concurrent)]
        struct Wide { $(#[resource] $f: Probe,)* }

        fn wide(log: &Log) -> Wide {
            Wide { $($f: log.probe(stringify!($f)).close_delay(100),)* }
        }
    };
}

wide!(
    a0 a1 a2 a3 a4 a5 a6 a7 a8 a9 b0 b1 b2 b3 b4 b5 b6 b7 b8 b9
    c0 c1 c2 c3 c4 c5 c6 c7 c8 c9 d0 d1 d2 d3 d4 d5 d6 d7 d8 d9
    e0 e1 e2 e3 e4 e5 e6 e7 e8 e9 f0 f1 f2 f3 f4 f5 f6 f7 f8 f9
    g0 g1 g2 g3 g4 g5 g6 g7 g8 g9 h0 h1 h2 h3 h4 h5 h6 h7 h8 h9
    i0 i1 i2 i3 i4 i5 i6 i7 i8 i9 j0 j1 j2 j3 j4 j5 j6 j7 j8 j9
    k0 k1 k2 k3 k4 k5 k6 k7 k8 k9 l0 l1 l2 l3 l4 l5 l6 l7 l8 l9
    m0 m1 m2 m3 m4 m5 m6 m7
);

#[tokio::test(start_paused = true)]
async fn a_concurrent_step_of_128_fields_closes_them_all_at_once() {
    let log = Log::new();
    let mut value = wide(&log);
    let started = tokio::time::Instant::now();
    value.close().await.unwrap();
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(100) && elapsed < Duration::from_millis(200),
        "{elapsed:?}"
    );
    let finished = log
        .entries()
        .iter()
        .filter(|e| e.ends_with("finished"))
        .count();
    assert_eq!(finished, 128);
}
