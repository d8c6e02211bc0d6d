//! The expansion compiles beside user types that shadow the prelude (`Result`, `Ok`,
//! `Option`, `Box`, `Vec`, and more) and a `mod core {}`, on every shape and attribute
//! that changes what is generated, and beside a user function named like one of the
//! expansion's locals. The test bodies use fully qualified paths because the prelude
//! names are taken.

#![allow(dead_code, non_camel_case_types)]

struct Result;
struct Ok;
struct Err;
struct Option;
struct Some;
struct None;
struct Box;
struct Vec;
struct String;
struct Send;
struct Sized;
struct Future;
struct Duration;
struct AsyncResource;
struct ResourceError;
mod core {}
mod std {}
mod tokio {}
mod resource_runtime {}

type Probe = ::resource_tests::Probe;

async fn shut(probe: &mut Probe) -> ::core::result::Result<(), ::std::io::Error> {
    ::resource_runtime::AsyncResource::close(probe)
        .await
        .map_err(::std::io::Error::other)
}

#[derive(::resource_runtime::AsyncResource)]
#[resource(before_close = drain, after_enter = warm, timeout = "5s")]
struct Named {
    #[resource]
    a: Probe,
    #[resource(timeout = "1s", name = "bee")]
    b: Probe,
    #[resource(group = "pair")]
    c: Probe,
    #[resource(group = "pair", close = shut)]
    d: Probe,
    #[resource(skip)]
    e: u8,
    // Unmarked and not a resource: exercises the unmarked-field check's expansion.
    f: ::std::string::String,
}

impl Named {
    async fn drain(&mut self) -> ::core::result::Result<(), &'static str> {
        ::core::result::Result::Ok(())
    }

    async fn warm(&mut self) -> ::core::result::Result<(), &'static str> {
        ::core::result::Result::Ok(())
    }
}

#[derive(::resource_runtime::AsyncResource)]
struct Tuple(#[resource] Probe, #[resource(skip)] u8);

#[derive(::resource_runtime::AsyncResource)]
struct Unit;

#[derive(::resource_runtime::AsyncResource)]
#[resource(concurrent)]
struct Concurrent {
    #[resource]
    a: Probe,
    #[resource]
    b: Probe,
}

#[derive(::resource_runtime::AsyncResource)]
enum Shape {
    Named {
        #[resource]
        a: Probe,
    },
    Tuple(#[resource] Probe),
    Unit,
}

#[derive(::resource_runtime::AsyncResource)]
struct Generic<T> {
    #[resource]
    items: ::std::vec::Vec<T>,
    // Unmarked: the check is generated over the type's own generics.
    spare: ::core::option::Option<T>,
}

#[derive(::resource_runtime::AsyncResource)]
#[resource(bound = "T: ::resource_runtime::AsyncResource")]
struct Bounded<T> {
    #[resource]
    inner: T,
}

// tokio's own macro names `tokio` unqualified by default; point it at the crate.
#[::tokio::test(crate = "::tokio")]
async fn derives_beside_shadowing_names_enter_and_close_every_field() {
    use ::resource_runtime::AsyncResource as _;

    let log = ::resource_tests::Log::new();
    let mut named = Named {
        a: log.probe("a"),
        b: log.probe("b"),
        c: log.probe("c"),
        d: log.probe("d"),
        e: 0,
        f: ::std::string::String::new(),
    };
    named.enter().await.unwrap();
    named.close().await.unwrap();
    let mut entries = log.entries();
    // `c` and `d` close as one concurrent step: compare them as a set.
    entries[3..5].sort();
    ::std::assert_eq!(
        entries,
        [
            "enter a", "enter b", "enter c", "close c", "close d", "close b", "close a"
        ]
    );

    log.clear();
    let mut tuple = Tuple(log.probe("t").fail_close(), 1);
    let err = tuple.close().await.unwrap_err();
    ::std::assert_eq!(err.path(), ::core::option::Option::Some("0"));

    Unit.close().await.unwrap();

    let mut concurrent = Concurrent {
        a: log.probe("ca"),
        b: log.probe("cb").fail_close(),
    };
    let err = concurrent.close().await.unwrap_err();
    ::std::assert_eq!(err.path(), ::core::option::Option::Some("b"));

    let mut shapes = [
        Shape::Named {
            a: log.probe("sa").fail_close(),
        },
        Shape::Tuple(log.probe("st").fail_close()),
        Shape::Unit,
    ];
    let mut found = ::std::vec::Vec::new();
    for shape in &mut shapes {
        found.push(
            shape
                .close()
                .await
                .err()
                .and_then(|e| e.path().map(::std::borrow::ToOwned::to_owned)),
        );
    }
    ::std::assert_eq!(
        found,
        [
            ::core::option::Option::Some("Named.a".to_owned()),
            ::core::option::Option::Some("Tuple.0".to_owned()),
            ::core::option::Option::None,
        ]
    );

    let mut generic = Generic {
        items: ::std::vec![log.probe("g0"), log.probe("g1").fail_close()],
        spare: ::core::option::Option::None,
    };
    let err = generic.close().await.unwrap_err();
    ::std::assert_eq!(err.path(), ::core::option::Option::Some("items.1"));

    let mut bounded = Bounded {
        inner: log.probe("bounded").fail_close(),
    };
    let err = bounded.close().await.unwrap_err();
    ::std::assert_eq!(err.path(), ::core::option::Option::Some("inner"));
}

/// A user function whose name is one of the expansion's locals: the locals have
/// mixed-site hygiene, so the path in `close = __field0` still means this function.
/// (A unit struct or `const` with such a name would still clash with a `let` of the
/// expansion, as with every derive; the names are all `__`-prefixed for that reason.)
#[allow(non_snake_case)]
async fn __field0(token: &mut ::tokio_util::sync::CancellationToken) -> ::std::io::Result<()> {
    token.cancel();
    ::core::result::Result::Ok(())
}

#[derive(::resource_runtime::AsyncResource)]
struct LookAlike {
    #[resource(close = __field0)]
    token: ::tokio_util::sync::CancellationToken,
}

#[::tokio::test(crate = "::tokio")]
async fn user_items_named_like_the_expansion_locals_are_the_users() {
    use ::resource_runtime::AsyncResource as _;

    let token = ::tokio_util::sync::CancellationToken::new();
    let mut value = LookAlike {
        token: token.clone(),
    };
    value.close().await.unwrap();
    ::std::assert!(token.is_cancelled());
}
