//! What a derived `close` does: order, aggregation, paths, labels (raw identifiers
//! included), skipped fields, idempotence, hooks, custom close functions, the error's
//! `Display`, and deadlines on a runtime without timers.

use resource_runtime::{AsyncResource, Failure, Operation, ResourceError};
use resource_tests::{
    Log, Probe, ProbeError, YieldsThenCancels, paths, runtime_without_timers, strings,
};

#[derive(AsyncResource)]
struct Three {
    #[resource]
    a: Probe,
    #[resource]
    b: Probe,
    #[resource]
    c: Probe,
}

impl Three {
    fn new(log: &Log) -> Self {
        Three {
            a: log.probe("a"),
            b: log.probe("b"),
            c: log.probe("c"),
        }
    }
}

fn probe_error(failure: &Failure) -> &ProbeError {
    failure
        .downcast_ref::<ProbeError>()
        .unwrap_or_else(|| panic!("not a probe's failure: {failure:?}"))
}

#[tokio::test]
async fn fields_close_in_reverse_declaration_order() {
    let log = Log::new();
    let mut three = Three::new(&log);
    three.enter().await.unwrap();
    three.close().await.unwrap();
    assert_eq!(
        log.entries(),
        strings(&[
            "enter a", "enter b", "enter c", "close c", "close b", "close a"
        ])
    );
}

#[tokio::test]
async fn every_field_is_closed_when_some_fail_and_all_failures_are_returned_in_order() {
    let log = Log::new();
    let mut three = Three {
        a: log.probe("a").fail_close(),
        b: log.probe("b"),
        c: log.probe("c").fail_close(),
    };
    let counters = [
        three.a.close_counter(),
        three.b.close_counter(),
        three.c.close_counter(),
    ];
    three.enter().await.unwrap();
    let err = three.close().await.unwrap_err();

    for counter in &counters {
        assert_eq!(counter.get(), 1);
    }
    assert_eq!(
        log.entries()[3..],
        strings(&["close c", "close b", "close a"])
    );
    assert_eq!(err.failures().len(), 2);
    assert_eq!(paths(&err), ["c", "a"]);
    for failure in err.failures() {
        assert_eq!(failure.operation(), Some(Operation::Close));
        assert!(!failure.is_rollback());
        assert_eq!(failure.hook(), None);
    }
    let names: Vec<&str> = err
        .failures()
        .map(|f| probe_error(f).name.as_str())
        .collect();
    assert_eq!(names, ["c", "a"]);
    // On an aggregate, the accessors of one failure answer for the first.
    assert_eq!(err.path(), Some("c"));
    assert!(!err.is_timeout());
    assert!(!err.is_panic());
    assert!(!err.is_closed());
}

#[tokio::test]
async fn a_single_failure_is_one_leaf_carrying_the_field_path() {
    let log = Log::new();
    let mut three = Three {
        b: log.probe("b").fail_close(),
        ..Three::new(&log)
    };
    let err = three.close().await.unwrap_err();
    assert_eq!(err.failures().len(), 1);
    assert_eq!(err.path(), Some("b"));
    assert_eq!(err.operation(), Some(Operation::Close));
    assert_eq!(
        probe_error(err.failures().next().unwrap()),
        &ProbeError {
            name: "b".into(),
            op: "close"
        }
    );
}

#[derive(AsyncResource)]
struct Inner {
    #[resource]
    db: Probe,
    #[resource]
    cache: Probe,
}

#[derive(AsyncResource)]
struct Outer {
    #[resource]
    first: Probe,
    #[resource]
    inner: Inner,
    #[resource]
    last: Probe,
}

#[tokio::test]
async fn nested_derives_give_dotted_paths() {
    let log = Log::new();
    let mut outer = Outer {
        first: log.probe("first"),
        inner: Inner {
            db: log.probe("db").fail_close(),
            cache: log.probe("cache").fail_close(),
        },
        last: log.probe("last").fail_close(),
    };
    outer.enter().await.unwrap();
    log.clear();
    let err = outer.close().await.unwrap_err();
    assert_eq!(
        log.entries(),
        strings(&["close last", "close cache", "close db", "close first"])
    );
    assert_eq!(paths(&err), ["last", "inner.cache", "inner.db"]);
    let names: Vec<&str> = err
        .failures()
        .map(|f| probe_error(f).name.as_str())
        .collect();
    assert_eq!(names, ["last", "cache", "db"]);
}

#[derive(AsyncResource)]
struct Pair(#[resource] Probe, #[resource(skip)] u32, #[resource] Probe);

#[tokio::test]
async fn tuple_struct_fields_are_labelled_by_their_index() {
    let log = Log::new();
    let mut pair = Pair(
        log.probe("zero").fail_close(),
        7,
        log.probe("two").fail_close(),
    );
    pair.enter().await.unwrap();
    let err = pair.close().await.unwrap_err();
    assert_eq!(paths(&err), ["2", "0"]);
    assert_eq!(pair.1, 7);
    assert_eq!(
        log.entries(),
        strings(&["enter zero", "enter two", "close two", "close zero"])
    );
}

#[derive(AsyncResource)]
struct Renamed {
    #[resource(name = "database")]
    db: Probe,
    #[resource(name = "svc")]
    inner: Inner,
}

#[tokio::test]
async fn name_attribute_replaces_the_label_in_paths() {
    let log = Log::new();
    let mut renamed = Renamed {
        db: log.probe("db").fail_close(),
        inner: Inner {
            db: log.probe("inner db").fail_close(),
            cache: log.probe("cache"),
        },
    };
    let err = renamed.close().await.unwrap_err();
    assert_eq!(paths(&err), ["svc.db", "database"]);
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

#[derive(AsyncResource)]
struct WithSkipped {
    #[resource]
    used: Probe,
    #[resource(skip)]
    spare: Probe,
}

#[tokio::test]
async fn skipped_fields_are_never_entered_or_closed() {
    let log = Log::new();
    let mut value = WithSkipped {
        used: log.probe("used"),
        spare: log.probe("spare").fail_enter().fail_close(),
    };
    let spare_enters = value.spare.enter_counter();
    let spare_closes = value.spare.close_counter();
    value.enter().await.unwrap();
    value.close().await.unwrap();
    assert_eq!(spare_enters.get(), 0);
    assert_eq!(spare_closes.get(), 0);
    assert_eq!(log.entries(), strings(&["enter used", "close used"]));
}

#[derive(AsyncResource)]
struct Optional {
    #[resource]
    a: Option<Probe>,
    #[resource]
    b: Option<Probe>,
}

#[tokio::test]
async fn a_second_close_is_ok_and_closes_nothing_more() {
    let log = Log::new();
    let a = log.probe("a");
    let b = log.probe("b");
    let counters = [a.close_counter(), b.close_counter()];
    let mut value = Optional {
        a: Some(a),
        b: Some(b),
    };
    value.enter().await.unwrap();
    value.close().await.unwrap();
    assert!(value.a.is_none() && value.b.is_none());
    value.close().await.unwrap();
    assert_eq!(counters[0].get(), 1);
    assert_eq!(counters[1].get(), 1);
    assert_eq!(
        log.entries(),
        strings(&["enter a", "enter b", "close b", "close a"])
    );
}

#[tokio::test]
async fn a_close_after_a_failed_close_is_ok_and_closes_nothing_more() {
    let log = Log::new();
    let a = log.probe("a").fail_close();
    let counter = a.close_counter();
    let mut value = Optional {
        a: Some(a),
        b: Some(log.probe("b")),
    };
    value.enter().await.unwrap();
    let err = value.close().await.unwrap_err();
    assert_eq!(paths(&err), ["a"]);
    // An Err means "not released gracefully", never "still open".
    assert!(value.a.is_none());
    value.close().await.unwrap();
    assert_eq!(counter.get(), 1);
}

#[tokio::test]
async fn closing_a_never_entered_struct_is_ok() {
    let log = Log::new();
    let mut value = Optional {
        a: Some(log.probe("a")),
        b: None,
    };
    value.close().await.unwrap();
    assert!(value.a.is_none());
    assert!(log.entries().iter().all(|e| !e.starts_with("enter")));
}

#[derive(AsyncResource)]
#[resource(before_close = drain)]
struct Drained {
    #[resource]
    a: Probe,
    #[resource]
    b: Probe,
    #[resource(skip)]
    log: Log,
    #[resource(skip)]
    drain_fails: bool,
}

impl Drained {
    async fn drain(&mut self) -> Result<(), std::io::Error> {
        self.log.push("drain");
        if self.drain_fails {
            return Err(std::io::Error::other("queue stuck"));
        }
        Ok(())
    }
}

#[tokio::test]
async fn before_close_runs_before_every_field() {
    let log = Log::new();
    let mut value = Drained {
        a: log.probe("a"),
        b: log.probe("b"),
        log: log.clone(),
        drain_fails: false,
    };
    value.enter().await.unwrap();
    log.clear();
    value.close().await.unwrap();
    assert_eq!(log.entries(), strings(&["drain", "close b", "close a"]));
}

#[tokio::test]
async fn a_failing_before_close_is_reported_and_every_field_still_closes() {
    let log = Log::new();
    let mut value = Drained {
        a: log.probe("a").fail_close(),
        b: log.probe("b"),
        log: log.clone(),
        drain_fails: true,
    };
    value.enter().await.unwrap();
    log.clear();
    let err = value.close().await.unwrap_err();
    assert_eq!(log.entries(), strings(&["drain", "close b", "close a"]));
    assert_eq!(err.failures().len(), 2);
    let hook = err.failures().next().unwrap();
    assert_eq!(hook.hook(), Some("before_close"));
    assert_eq!(hook.path(), None);
    assert_eq!(hook.operation(), Some(Operation::Close));
    assert_eq!(
        hook.downcast_ref::<std::io::Error>()
            .map(ToString::to_string),
        Some("queue stuck".to_owned())
    );
    let field = err.failures().nth(1).unwrap();
    assert_eq!(field.path(), Some("a"));
    assert_eq!(field.hook(), None);
}

/// A foreign type with its own async open and shutdown, closed through functions named
/// on the field.
#[derive(Debug)]
struct Socket {
    log: Log,
    open: bool,
    fail_shutdown: bool,
}

async fn open_socket(socket: &mut Socket) -> Result<(), std::io::Error> {
    socket.log.push("open socket");
    socket.open = true;
    Ok(())
}

async fn shut_socket(socket: &mut Socket) -> Result<(), String> {
    socket.log.push("shut socket");
    socket.open = false;
    if socket.fail_shutdown {
        return Err("peer reset".to_owned());
    }
    Ok(())
}

#[derive(AsyncResource)]
struct WithForeign {
    #[resource]
    before: Probe,
    #[resource(enter = open_socket, close = shut_socket)]
    socket: Socket,
    #[resource(close = shut_socket)]
    close_only: Socket,
    #[resource]
    after: Probe,
}

fn socket(log: &Log, fail_shutdown: bool) -> Socket {
    Socket {
        log: log.clone(),
        open: false,
        fail_shutdown,
    }
}

#[tokio::test]
async fn custom_enter_and_close_functions_are_called_with_the_field_in_order() {
    let log = Log::new();
    let mut value = WithForeign {
        before: log.probe("before"),
        socket: socket(&log, false),
        close_only: Socket {
            open: true,
            ..socket(&log, false)
        },
        after: log.probe("after"),
    };
    value.enter().await.unwrap();
    assert!(value.socket.open);
    value.close().await.unwrap();
    assert!(!value.socket.open);
    assert!(!value.close_only.open);
    // `close_only` has a close function and no enter function: nothing to enter.
    assert_eq!(
        log.entries(),
        strings(&[
            "enter before",
            "open socket",
            "enter after",
            "close after",
            "shut socket",
            "shut socket",
            "close before",
        ])
    );
}

#[tokio::test]
async fn a_custom_close_function_error_is_reported_at_its_field() {
    let log = Log::new();
    let mut value = WithForeign {
        before: log.probe("before"),
        socket: socket(&log, true),
        close_only: socket(&log, false),
        after: log.probe("after"),
    };
    let err = value.close().await.unwrap_err();
    assert_eq!(paths(&err), ["socket"]);
    assert_eq!(err.operation(), Some(Operation::Close));
    assert_eq!(err.to_string(), "close `socket`: peer reset");
    // The fields after it in close order were still closed.
    assert_eq!(
        log.entries().last().map(String::as_str),
        Some("close before")
    );
}

async fn close_with_resource_error(_: &mut u8) -> Result<(), ResourceError> {
    Err(ResourceError::timeout(std::time::Duration::from_secs(3)))
}

#[derive(AsyncResource)]
struct CustomResourceError {
    #[resource(close = close_with_resource_error)]
    handle: u8,
}

#[tokio::test]
async fn a_custom_close_returning_resource_error_keeps_its_cause() {
    let mut value = CustomResourceError { handle: 0 };
    let err = value.close().await.unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(err.path(), Some("handle"));
    assert_eq!(err.deadline(), Some(std::time::Duration::from_secs(3)));
}

#[tokio::test]
async fn display_prints_every_failure_on_its_own_line_with_its_path() {
    let log = Log::new();
    let mut outer = Outer {
        first: log.probe("first"),
        inner: Inner {
            db: log.probe("db").fail_close(),
            cache: log.probe("cache"),
        },
        last: log.probe("last").fail_close(),
    };
    let err = outer.close().await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "2 failures:\n  close `last`: probe last failed to close\n  close `inner.db`: probe db failed to close"
    );

    let mut three = Three {
        b: log.probe("b").fail_close(),
        ..Three::new(&log)
    };
    let err = three.close().await.unwrap_err();
    assert_eq!(err.to_string(), "close `b`: probe b failed to close");
}

#[tokio::test]
async fn display_names_the_hook_that_failed() {
    let log = Log::new();
    let mut value = Drained {
        a: log.probe("a"),
        b: log.probe("b"),
        log: log.clone(),
        drain_fails: true,
    };
    let err = value.close().await.unwrap_err();
    assert_eq!(err.to_string(), "close (before_close): queue stuck");
}

#[derive(AsyncResource)]
struct Grouped {
    #[resource(group = "io")]
    a: Probe,
    #[resource]
    b: Probe,
    #[resource(group = "io")]
    c: Probe,
    #[resource]
    d: Probe,
}

#[tokio::test]
async fn a_group_closes_at_the_place_of_its_last_declared_field() {
    let log = Log::new();
    let mut value = Grouped {
        a: log.probe("a"),
        b: log.probe("b"),
        c: log.probe("c"),
        d: log.probe("d"),
    };
    value.enter().await.unwrap();
    log.clear();
    value.close().await.unwrap();
    let entries = log.entries();
    assert_eq!(entries.first().map(String::as_str), Some("close d"));
    // `a` and `c` close as one step in `c`'s place, so both before `b`.
    let mut middle = entries[1..3].to_vec();
    middle.sort();
    assert_eq!(middle, strings(&["close a", "close c"]));
    assert_eq!(entries.get(3).map(String::as_str), Some("close b"));
    assert_eq!(entries.len(), 4);
}

#[tokio::test]
async fn a_struct_without_resource_fields_closes_ok() {
    #[derive(AsyncResource)]
    struct Plain {
        #[resource(skip)]
        _name: String,
    }
    let mut plain = Plain { _name: "x".into() };
    plain.enter().await.unwrap();
    plain.close().await.unwrap();
}

#[derive(AsyncResource)]
#[resource(timeout = "1s")]
struct WholeDeadline {
    #[resource]
    stop: YieldsThenCancels,
}

/// The whole-close deadline on a runtime without timers: the deadline cannot be set, so
/// the close runs to its end and says why.
#[test]
fn a_whole_close_deadline_without_a_timer_still_closes_and_says_why() {
    let stop = tokio_util::sync::CancellationToken::new();
    let mut value = WholeDeadline {
        stop: YieldsThenCancels(stop.clone()),
    };
    let err = runtime_without_timers()
        .block_on(value.close())
        .unwrap_err();
    assert!(stop.is_cancelled());
    assert_eq!(err.hook(), Some("close deadline"));
    assert!(err.is_unenforced_deadline(), "{err}");
    assert!(!err.is_panic(), "{err}");
    assert_eq!(err.deadline(), Some(std::time::Duration::from_secs(1)));
    assert!(err.to_string().contains("enable_time"), "{err}");
}

#[derive(AsyncResource)]
struct FieldDeadline {
    #[resource(timeout = "1s")]
    stop: YieldsThenCancels,
}

/// A field's deadline on a runtime without timers: the field's close is not dropped
/// half-way (the resource would stay open); it runs to its end and the close says why,
/// as the whole-close deadline does.
#[test]
fn a_field_deadline_without_a_timer_runs_the_close_to_its_end_and_says_why() {
    let stop = tokio_util::sync::CancellationToken::new();
    let mut value = FieldDeadline {
        stop: YieldsThenCancels(stop.clone()),
    };
    let err = runtime_without_timers()
        .block_on(value.close())
        .unwrap_err();
    assert!(
        stop.is_cancelled(),
        "the field's close was dropped half-way"
    );
    assert!(err.is_unenforced_deadline(), "{err}");
    assert!(!err.is_panic(), "{err}");
    assert_eq!(paths(&err), ["stop"]);
    assert_eq!(err.deadline(), Some(std::time::Duration::from_secs(1)));
    assert!(err.to_string().contains("enable_time"), "{err}");
}
