#![allow(dead_code, non_camel_case_types)]

use ::resource_runtime::AsyncResource;
use ::tokio_util::sync::CancellationToken;

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
struct __T;
mod core {}
mod std {}
mod tokio {}
mod resource_runtime {}

struct Foreign;

async fn close_foreign(_: &mut Foreign) -> ::core::result::Result<(), ::std::io::Error> {
    ::core::result::Result::Ok(())
}

#[derive(AsyncResource)]
#[resource(timeout = "1s", before_close = drain, after_enter = ready)]
struct Hostile<T: AsyncResource> {
    #[resource(group = "g")]
    a: CancellationToken,
    #[resource(group = "g", timeout = "10ms")]
    b: CancellationToken,
    #[resource(close = close_foreign)]
    foreign: Foreign,
    #[resource]
    generic: T,
    #[resource(skip)]
    note: u8,
    unmarked: u8,
}

impl<T: AsyncResource> Hostile<T> {
    async fn drain(&mut self) -> ::core::result::Result<(), ::std::io::Error> {
        ::core::result::Result::Ok(())
    }

    async fn ready(&mut self) -> ::core::result::Result<(), ::std::io::Error> {
        ::core::result::Result::Ok(())
    }
}

#[derive(AsyncResource)]
#[resource(concurrent)]
enum HostileEnum {
    A(#[resource] CancellationToken),
    B {
        #[resource]
        x: CancellationToken,
        #[resource]
        y: CancellationToken,
    },
}

// No prelude at all: every name the expansion, and any macro it calls, relies on must
// be written out in full.
mod bare {
    #![no_implicit_prelude]

    use ::tokio_util::sync::CancellationToken;

    pub struct Foreign;

    async fn shut(_: &mut Foreign) -> ::core::result::Result<(), ::std::io::Error> {
        ::core::result::Result::Ok(())
    }

    #[derive(::resource_runtime::AsyncResource)]
    #[resource(timeout = "1s", before_close = drain, after_enter = ready)]
    pub struct Paired {
        #[resource(group = "pair")]
        pub a: CancellationToken,
        #[resource(group = "pair", timeout = "10ms")]
        pub b: CancellationToken,
        #[resource(boxed)]
        pub alone: ::std::boxed::Box<CancellationToken>,
        #[resource(close = shut)]
        pub foreign: Foreign,
        pub note: u8,
    }

    impl Paired {
        async fn drain(&mut self) -> ::core::result::Result<(), ::std::io::Error> {
            ::core::result::Result::Ok(())
        }

        async fn ready(&mut self) -> ::core::result::Result<(), ::std::io::Error> {
            ::core::result::Result::Ok(())
        }
    }

    #[derive(::resource_runtime::AsyncResource)]
    #[resource(concurrent)]
    pub struct AllAtOnce<T: ::resource_runtime::AsyncResource> {
        #[resource]
        pub x: CancellationToken,
        #[resource]
        pub y: T,
    }

    #[derive(::resource_runtime::AsyncResource)]
    #[resource(concurrent)]
    pub enum Either {
        A(#[resource] CancellationToken, #[resource] CancellationToken),
        B,
    }
}

fn main() {
    let rt = ::tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut hostile = Hostile {
        a: CancellationToken::new(),
        b: CancellationToken::new(),
        foreign: Foreign,
        generic: CancellationToken::new(),
        note: 0,
        unmarked: 0,
    };
    let mut e = HostileEnum::B { x: CancellationToken::new(), y: CancellationToken::new() };
    let mut paired = bare::Paired {
        a: CancellationToken::new(),
        b: CancellationToken::new(),
        alone: ::std::boxed::Box::new(CancellationToken::new()),
        foreign: bare::Foreign,
        note: 0,
    };
    let mut all = bare::AllAtOnce { x: CancellationToken::new(), y: CancellationToken::new() };
    let mut either = bare::Either::A(CancellationToken::new(), CancellationToken::new());
    rt.block_on(async {
        paired.enter().await.unwrap();
        paired.close().await.unwrap();
        all.enter().await.unwrap();
        all.close().await.unwrap();
        either.close().await.unwrap();
        hostile.enter().await.unwrap();
        hostile.close().await.unwrap();
        e.enter().await.unwrap();
        e.close().await.unwrap();
    });
    assert!(hostile.a.is_cancelled() && hostile.b.is_cancelled() && hostile.generic.is_cancelled());
    let HostileEnum::B { x, y } = &e else { panic!() };
    assert!(x.is_cancelled() && y.is_cancelled());
    let _ = HostileEnum::A(CancellationToken::new());
    assert!(paired.a.is_cancelled() && paired.b.is_cancelled() && paired.alone.is_cancelled());
    assert!(all.x.is_cancelled() && all.y.is_cancelled());
    let bare::Either::A(p, q) = &either else { panic!() };
    assert!(p.is_cancelled() && q.is_cancelled());
    let _ = bare::Either::B;
}
