//! The derive on every shape it accepts: enums, generics (inferred and explicit bounds,
//! lifetimes, const parameters, generic fields closed by a function), recursive and
//! mutually recursive types, boxed fields, unit and tuple structs.

use std::time::Duration;

use resource_runtime::{AsyncResource, Operation};
use resource_tests::{Log, Probe, paths, strings};

#[derive(AsyncResource)]
enum Backend {
    Local {
        #[resource]
        file: Probe,
        #[resource(skip)]
        _root: String,
        #[resource]
        index: Probe,
    },
    Remote(#[resource(skip)] String, #[resource] Probe),
    Off,
}

#[tokio::test]
async fn an_enum_enters_and_closes_the_fields_of_its_active_variant() {
    let log = Log::new();
    let mut local = Backend::Local {
        file: log.probe("file"),
        _root: "/srv".into(),
        index: log.probe("index"),
    };
    local.enter().await.unwrap();
    local.close().await.unwrap();
    assert_eq!(
        log.entries(),
        strings(&["enter file", "enter index", "close index", "close file"])
    );

    log.clear();
    let mut remote = Backend::Remote("https://example.invalid".into(), log.probe("conn"));
    remote.enter().await.unwrap();
    remote.close().await.unwrap();
    assert_eq!(log.entries(), strings(&["enter conn", "close conn"]));
    // The skipped field is left as it was.
    let Backend::Remote(url, _) = &remote else {
        panic!("the variant changed");
    };
    assert_eq!(url, "https://example.invalid");
}

#[tokio::test]
async fn enum_failures_are_labelled_variant_dot_field() {
    let log = Log::new();
    let mut local = Backend::Local {
        file: log.probe("file").fail_close(),
        _root: String::new(),
        index: log.probe("index").fail_close(),
    };
    let err = local.close().await.unwrap_err();
    assert_eq!(paths(&err), ["Local.index", "Local.file"]);
    assert_eq!(
        err.to_string(),
        "2 failures:\n  close `Local.index`: probe index failed to close\n  close `Local.file`: probe file failed to close"
    );

    let mut remote = Backend::Remote(String::new(), log.probe("conn").fail_close());
    let err = remote.close().await.unwrap_err();
    assert_eq!(paths(&err), ["Remote.1"]);
}

#[tokio::test]
async fn an_enum_enter_failure_rolls_back_the_variant_fields() {
    let log = Log::new();
    let mut local = Backend::Local {
        file: log.probe("file").fail_close(),
        _root: String::new(),
        index: log.probe("index").fail_enter(),
    };
    let err = local.enter().await.unwrap_err();
    assert_eq!(
        log.entries(),
        strings(&["enter file", "enter index", "close file"])
    );
    assert_eq!(paths(&err), ["Local.index", "Local.file"]);
    assert_eq!(
        err.failures().next().unwrap().operation(),
        Some(Operation::Enter)
    );
    assert!(err.failures().nth(1).unwrap().is_rollback());
}

#[tokio::test]
async fn a_unit_variant_enters_and_closes_ok() {
    let mut off = Backend::Off;
    off.enter().await.unwrap();
    off.close().await.unwrap();
}

#[derive(AsyncResource)]
enum Grouped {
    Pair {
        #[resource(group = "io")]
        a: Probe,
        #[resource(group = "io")]
        b: Probe,
    },
}

#[tokio::test(start_paused = true)]
async fn a_group_inside_an_enum_variant_closes_concurrently() {
    let log = Log::new();
    let mut value = Grouped::Pair {
        a: log.probe("a").close_delay(100),
        b: log.probe("b").close_delay(100).fail_close(),
    };
    let started = tokio::time::Instant::now();
    let err = value.close().await.unwrap_err();
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(100) && elapsed < Duration::from_millis(200),
        "{elapsed:?}"
    );
    assert_eq!(paths(&err), ["Pair.b"]);
}

#[derive(AsyncResource)]
struct Pool<T> {
    #[resource]
    items: Vec<T>,
    #[resource(skip)]
    name: &'static str,
}

#[tokio::test]
async fn a_generic_struct_infers_its_bounds_from_the_resource_fields() {
    let log = Log::new();
    let mut pool = Pool {
        items: vec![
            log.probe("p0"),
            log.probe("p1").fail_close(),
            log.probe("p2"),
        ],
        name: "probes",
    };
    pool.enter().await.unwrap();
    let err = pool.close().await.unwrap_err();
    assert_eq!(paths(&err), ["items.1"]);
    assert_eq!(pool.name, "probes");
    assert_eq!(
        log.entries(),
        strings(&[
            "enter p0", "enter p1", "enter p2", "close p2", "close p1", "close p0"
        ])
    );
}

#[derive(AsyncResource)]
struct Wrapper<T, U> {
    #[resource]
    inner: T,
    #[resource(skip)]
    tag: U,
}

#[tokio::test]
async fn a_type_parameter_used_directly_and_one_held_by_a_skipped_field() {
    let log = Log::new();
    let mut wrapped = Wrapper {
        inner: Some(log.probe("inner")),
        tag: 42_u64,
    };
    wrapped.close().await.unwrap();
    assert!(wrapped.inner.is_none());
    assert_eq!(wrapped.tag, 42);
    assert_eq!(log.entries(), strings(&["close inner"]));

    let mut nested = Wrapper {
        inner: Wrapper {
            inner: log.probe("deep").fail_close(),
            tag: (),
        },
        tag: "outer",
    };
    let err = nested.close().await.unwrap_err();
    assert_eq!(paths(&err), ["inner.inner"]);
    assert_eq!(nested.tag, "outer");
}

/// A backend whose connection type is an associated type: the inferred bound would
/// name `B::Conn`; here the user states the bound on `B` instead.
trait Connector: Send {
    type Conn: AsyncResource;
}

struct ProbeConnector;

impl Connector for ProbeConnector {
    type Conn = Probe;
}

#[derive(AsyncResource)]
#[resource(bound = "B: Connector")]
struct Client<B: Connector> {
    #[resource]
    conn: B::Conn,
    #[resource(skip)]
    retries: u32,
}

#[tokio::test]
async fn an_explicit_bound_replaces_the_inferred_one() {
    let log = Log::new();
    let mut client: Client<ProbeConnector> = Client {
        conn: log.probe("conn").fail_close(),
        retries: 3,
    };
    client.enter().await.unwrap();
    let err = client.close().await.unwrap_err();
    assert_eq!(paths(&err), ["conn"]);
    assert_eq!(client.retries, 3);
    assert_eq!(log.entries(), strings(&["enter conn", "close conn"]));
}

#[derive(AsyncResource)]
struct Borrowing<'a, T> {
    #[resource]
    target: &'a mut T,
}

#[tokio::test]
async fn a_field_borrowing_a_resource_closes_the_owner_value() {
    let log = Log::new();
    let mut owned = Some(log.probe("owned"));
    {
        let mut borrowing = Borrowing { target: &mut owned };
        borrowing.enter().await.unwrap();
        borrowing.close().await.unwrap();
    }
    assert!(owned.is_none());
    assert_eq!(log.entries(), strings(&["enter owned", "close owned"]));
}

#[derive(AsyncResource)]
struct Buffered<const N: usize> {
    #[resource]
    sink: Probe,
    #[resource(skip)]
    buf: [u8; N],
}

#[tokio::test]
async fn a_const_generic_struct_closes_its_fields() {
    let log = Log::new();
    let mut value = Buffered::<4> {
        sink: log.probe("sink"),
        buf: [1; 4],
    };
    value.close().await.unwrap();
    assert_eq!(value.buf, [1; 4]);
    assert_eq!(log.entries(), strings(&["close sink"]));
}

#[derive(AsyncResource)]
struct Unit;

#[derive(AsyncResource)]
struct EmptyTuple();

#[derive(AsyncResource)]
struct EmptyNamed {}

#[derive(AsyncResource)]
enum Never {}

fn is_resource<T: AsyncResource>() {}

#[tokio::test]
async fn shapes_without_fields_enter_and_close_ok() {
    Unit.enter().await.unwrap();
    Unit.close().await.unwrap();
    EmptyTuple().close().await.unwrap();
    EmptyNamed {}.close().await.unwrap();
    is_resource::<Never>();
}

#[derive(AsyncResource)]
struct Boxed {
    #[resource]
    inner: Box<Probe>,
}

#[tokio::test]
async fn a_boxed_field_is_entered_and_closed_through_the_box() {
    let log = Log::new();
    let mut value = Boxed {
        inner: Box::new(log.probe("boxed").fail_close()),
    };
    value.enter().await.unwrap();
    let err = value.close().await.unwrap_err();
    assert_eq!(paths(&err), ["inner"]);
    assert_eq!(log.entries(), strings(&["enter boxed", "close boxed"]));
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

/// A foreign connection generic over its codec, closed by a function.
struct CodecConn<C> {
    codec: C,
    open: bool,
}

async fn close_conn<C>(conn: &mut CodecConn<C>) -> std::io::Result<()> {
    tokio::task::yield_now().await;
    conn.open = false;
    Ok(())
}

#[derive(AsyncResource)]
struct CodecClient<C> {
    #[resource(close = close_conn)]
    conn: CodecConn<C>,
}

#[tokio::test]
async fn a_generic_field_closed_by_a_function_is_bounded_send() {
    let mut client = CodecClient {
        conn: CodecConn {
            codec: String::from("json"),
            open: true,
        },
    };
    client.close().await.unwrap();
    assert!(!client.conn.open);
    assert_eq!(client.conn.codec, "json");
}

#[derive(AsyncResource)]
#[resource(before_close = announce)]
enum Hooked {
    On {
        #[resource]
        probe: Probe,
        #[resource(skip)]
        log: Log,
    },
}

impl Hooked {
    async fn announce(&mut self) -> Result<(), std::io::Error> {
        let Hooked::On { log, .. } = self;
        log.push("announce");
        Ok(())
    }
}

#[tokio::test]
async fn an_enum_runs_its_before_close_hook_first() {
    let log = Log::new();
    let mut value = Hooked::On {
        probe: log.probe("probe"),
        log: log.clone(),
    };
    value.close().await.unwrap();
    assert_eq!(log.entries(), strings(&["announce", "close probe"]));
}

mod renamed_runtime {
    //! `#[resource(crate = "...")]` for a runtime reached through a re-export.
    pub(crate) mod reexport {
        pub(crate) use resource_runtime as rt;
    }

    use resource_tests::{Log, Probe, paths};

    #[derive(resource_runtime::AsyncResource)]
    #[resource(crate = "crate::renamed_runtime::reexport::rt")]
    struct ViaReexport {
        #[resource]
        probe: Probe,
    }

    #[tokio::test]
    async fn the_crate_attribute_points_the_expansion_at_a_reexport() {
        use reexport::rt::AsyncResource as _;
        let log = Log::new();
        let mut value = ViaReexport {
            probe: log.probe("probe").fail_close(),
        };
        let err = value.close().await.unwrap_err();
        assert_eq!(paths(&err), ["probe"]);
    }
}

#[derive(AsyncResource)]
struct WithWhere<T>
where
    T: Default,
{
    #[resource]
    items: Vec<T>,
}

#[tokio::test]
async fn a_where_clause_on_the_type_is_kept_beside_the_inferred_bounds() {
    let log = Log::new();
    let mut value: WithWhere<Option<Probe>> = WithWhere {
        items: vec![Some(log.probe("p0").fail_close()), None],
    };
    let err = value.close().await.unwrap_err();
    assert_eq!(paths(&err), ["items.0"]);
    assert_eq!(value.items.iter().filter(|p| p.is_some()).count(), 0);
}

/// A resource that is `Send` but not `Sync`: the trait asks only for `Send`.
#[derive(Debug, Default)]
struct Tally(std::cell::Cell<u32>);

impl AsyncResource for Tally {
    async fn close(&mut self) -> Result<(), resource_runtime::ResourceError> {
        tokio::task::yield_now().await;
        self.0.set(self.0.get() + 1);
        Ok(())
    }
}

#[derive(AsyncResource)]
#[resource(before_close = noop)]
struct NotSync {
    #[resource(group = "g")]
    a: Tally,
    #[resource(group = "g")]
    b: Tally,
    #[resource(timeout = "1s")]
    c: Tally,
    #[resource(skip)]
    _local: std::cell::Cell<bool>,
}

impl NotSync {
    async fn noop(&mut self) -> Result<(), std::io::Error> {
        Ok(())
    }
}

#[tokio::test]
async fn fields_that_are_send_but_not_sync_are_supported() {
    let mut value = NotSync {
        a: Tally::default(),
        b: Tally::default(),
        c: Tally::default(),
        _local: std::cell::Cell::new(false),
    };
    // The close future must be `Send` to be spawned.
    let value = tokio::spawn(async move {
        value.close().await.unwrap();
        value
    })
    .await
    .unwrap();
    assert_eq!(
        [value.a.0.get(), value.b.0.get(), value.c.0.get()],
        [1, 1, 1]
    );
}

/// A vendor client the crate knows nothing of, closed by a function of the user's.
struct VendorSdk {
    closed: u32,
}

async fn close_vendor(sdk: &mut VendorSdk) -> std::io::Result<()> {
    sdk.closed += 1;
    Ok(())
}

/// The function takes `&mut VendorSdk`; the fields are a `Box` of it and a reference
/// to one: the call coerces the field as any call does.
#[derive(AsyncResource)]
struct CoercedAtTheCall<'a> {
    #[resource(close = close_vendor)]
    boxed: Box<VendorSdk>,
    #[resource(close = close_vendor)]
    borrowed: &'a mut VendorSdk,
}

#[tokio::test]
async fn a_user_function_gets_its_field_through_the_calls_own_coercions() {
    let mut outside = VendorSdk { closed: 0 };
    let mut holder = CoercedAtTheCall {
        boxed: Box::new(VendorSdk { closed: 0 }),
        borrowed: &mut outside,
    };
    holder.close().await.unwrap();
    assert_eq!(holder.boxed.closed, 1);
    assert_eq!(holder.borrowed.closed, 1);
}
