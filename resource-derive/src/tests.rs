//! Unit tests of the expansion on `parse_quote!` inputs: one per attribute, and a
//! corpus of mangled inputs the macro must survive without panicking.

use proc_macro2::{Delimiter, Spacing, TokenStream, TokenTree};
use quote::ToTokens;
use syn::{DeriveInput, Ident, Type, WherePredicate};

use crate::ast::Input;
use crate::bound;
use crate::ctxt::Ctxt;
use crate::expand::derive;

fn expand(input: DeriveInput) -> String {
    squash(&derive(&input).to_string())
}

/// Token strings without whitespace, so assertions do not depend on token spacing.
fn squash(s: &str) -> String {
    s.chars().filter(|c| !c.is_whitespace()).collect()
}

fn has(out: &str, needle: &str) -> bool {
    out.contains(&squash(needle))
}

fn errors(out: &str) -> usize {
    out.matches("compile_error!").count()
}

#[test]
fn bare_resource_marks_a_field_for_enter_and_close() {
    let out = expand(syn::parse_quote! {
        struct S { #[resource] a: A, b: B }
    });
    assert!(
        has(&out, "::resource_runtime::AsyncResource::enter(__field0)"),
        "{out}"
    );
    assert!(
        has(&out, "::resource_runtime::AsyncResource::close(__field0)"),
        "{out}"
    );
    assert!(
        !has(&out, "__field1"),
        "an unmarked field is not closed: {out}"
    );
    assert!(has(&out, "#[automatically_derived]"));
    assert!(has(&out, "const _: () ="));
}

#[test]
fn close_path_calls_the_function_with_the_field() {
    let out = expand(syn::parse_quote! {
        struct S { #[resource(close = sdk::shutdown)] a: A }
    });
    assert!(
        has(
            &out,
            "let __user_future = sdk::shutdown(__field0); let __user_call = ::resource_runtime::__private::UserCall(__user_future); __user_call.user_step()"
        ),
        "{out}"
    );
    assert!(!has(&out, "AsyncResource::close(__field0)"), "{out}");
    // A foreign type closed by a function has nothing to enter.
    assert!(has(&out, "__enter.pass()"), "{out}");
}

#[test]
fn enter_path_calls_the_function_with_the_field() {
    let out = expand(syn::parse_quote! {
        struct S { #[resource(enter = connect, close = disconnect)] a: A }
    });
    assert!(has(&out, "__enter.field(\"a\", move || {"), "{out}");
    assert!(has(&out, "let __user_future = connect(__field0);"), "{out}");
    assert!(
        has(&out, "let __user_future = disconnect(__field0);"),
        "{out}"
    );
}

#[test]
fn field_timeout_becomes_the_step_deadline() {
    let out = expand(syn::parse_quote! {
        struct S { #[resource(timeout = "2s")] a: A, #[resource(timeout = "250ms")] b: B }
    });
    assert!(
        has(
            &out,
            "__closer.field(\"a\", ::resource_runtime::__private::Timed::after(::core::time::Duration::from_millis(2000u64))"
        ),
        "{out}"
    );
    assert!(has(&out, "from_millis(250u64)"), "{out}");
}

#[test]
fn group_joins_its_fields_in_one_step() {
    let out = expand(syn::parse_quote! {
        struct S {
            #[resource(group = "io")] a: A,
            #[resource] b: B,
            #[resource(group = "io")] c: C,
        }
    });
    let join = "let __group = __closer.group(&[\"c\", \"a\"]);";
    assert!(has(&out, join), "{out}");
    assert!(
        has(
            &out,
            "let mut __member0 = ::core::pin::pin!(__group.field(0usize"
        ),
        "{out}"
    );
    assert!(has(&out, "__closer.plan(&[\"c\", \"a\", \"b\"]);"), "{out}");
    // The group stands where its last-declared field (`c`) stands: before `b`.
    let group_at = out.find(&squash(join)).unwrap();
    let b_at = out.find(&squash("__closer.field(\"b\"")).unwrap();
    assert!(group_at < b_at, "{out}");
}

#[test]
fn name_relabels_the_field() {
    let out = expand(syn::parse_quote! {
        struct S { #[resource(name = "database")] db: A }
    });
    assert!(has(&out, "__closer.field(\"database\""), "{out}");
    assert!(!has(&out, "\"db\""), "{out}");
}

#[test]
fn skip_is_never_touched_and_not_checked() {
    let out = expand(syn::parse_quote! {
        struct S { #[resource(skip)] a: A, #[resource] b: B }
    });
    assert!(!has(&out, "__field0"), "{out}");
    assert!(has(&out, "__field1"), "{out}");
    assert!(!has(&out, "__unmarked_resource_fields"), "{out}");
}

#[test]
fn unmarked_fields_get_the_deprecation_probe_naming_them() {
    let out = expand(syn::parse_quote! {
        struct Provider { client: Client }
    });
    assert!(
        has(&out, "#[deprecated(note = \"field `client` of `Provider`"),
        "{out}"
    );
    assert!(has(&out, "Probe::<Client>::new()"), "{out}");
}

#[test]
fn concurrent_closes_every_field_in_one_step() {
    let out = expand(syn::parse_quote! {
        #[resource(concurrent)]
        struct S { #[resource] a: A, #[resource] b: B }
    });
    assert!(has(&out, "__closer.group(&[\"b\", \"a\"])"), "{out}");
    assert!(
        has(
            &out,
            "let mut __member1 = ::core::pin::pin!(__group.field(1usize"
        ),
        "{out}"
    );
    assert!(!has(&out, "__closer.field("), "{out}");
}

#[test]
fn container_timeout_bounds_the_whole_close() {
    let out = expand(syn::parse_quote! {
        #[resource(timeout = "5s")]
        struct S { #[resource] a: A }
    });
    assert!(
        has(
            &out,
            "let __deadline = ::core::time::Duration::from_millis(5000u64);"
        ),
        "{out}"
    );
    assert!(has(&out, "within_deadline(__deadline"), "{out}");
    assert!(
        has(&out, "__closer.deadline_outcome(__deadline, __outcome)"),
        "{out}"
    );
}

#[test]
fn before_close_runs_before_the_fields() {
    let out = expand(syn::parse_quote! {
        #[resource(before_close = drain)]
        struct S { #[resource] a: A }
    });
    let hook = squash(
        "let __this = &mut *self; __closer.hook(\"before_close\", move || { #[allow(unused_imports)] use ::resource_runtime::__private::{ViaCheck as _, ViaFuture as _}; let __user_future = Self::drain(__this);",
    );
    let hook_at = out.find(&hook).expect(&out);
    assert!(hook_at < out.find(&squash("__closer.field(\"a\"")).unwrap());
}

#[test]
fn after_enter_runs_once_every_field_is_entered() {
    let out = expand(syn::parse_quote! {
        #[resource(after_enter = warm_up)]
        struct S { #[resource] a: A }
    });
    let hook = squash(
        "if !__enter.failed() { let __this = &mut *self; __enter.hook(\"after_enter\", move || { #[allow(unused_imports)] use ::resource_runtime::__private::{ViaCheck as _, ViaFuture as _}; let __user_future = Self::warm_up(__this);",
    );
    let hook_at = out.find(&hook).expect(&out);
    assert!(out.find(&squash("__enter.field(\"a\"")).unwrap() < hook_at);
}

#[test]
fn bounds_are_inferred_for_parameters_in_resource_fields() {
    let out = expand(syn::parse_quote! {
        struct S<T, U> { #[resource] a: Vec<T>, #[resource(skip)] b: U }
    });
    assert!(
        has(&out, "Vec<T>: ::resource_runtime::AsyncResource"),
        "{out}"
    );
    assert!(!has(&out, "U: ::resource_runtime::AsyncResource"), "{out}");
    assert!(has(&out, "S<T, U>: ::core::marker::Send"), "{out}");
}

#[test]
fn bound_replaces_the_inferred_predicates() {
    let out = expand(syn::parse_quote! {
        #[resource(bound = "T: Clone + Send + Sync")]
        struct S<T> { #[resource] a: Wrapper<T> }
    });
    assert!(has(&out, "whereT:Clone+Send+Sync"), "{out}");
    assert!(
        !has(&out, "Wrapper<T>: ::resource_runtime::AsyncResource"),
        "{out}"
    );
}

#[test]
fn crate_path_replaces_every_runtime_path() {
    let out = expand(syn::parse_quote! {
        #[resource(crate = "my::rt")]
        struct S { #[resource] a: A, #[resource(group = "g")] b: B, c: C }
    });
    assert!(has(&out, "my::rt::AsyncResource"), "{out}");
    assert!(has(&out, "my::rt::__private::Closer::new"), "{out}");
    assert!(!has(&out, "resource_runtime"), "{out}");
}

#[test]
fn enums_close_the_active_variant_with_variant_paths() {
    let out = expand(syn::parse_quote! {
        enum E { A { #[resource] x: X }, B(#[resource] Y), C }
    });
    assert!(
        has(
            &out,
            "let Self::A { x: __field0, .. } = &mut *self else { break '__fields };"
        ),
        "{out}"
    );
    assert!(has(&out, "__closer.field(\"A.x\""), "{out}");
    assert!(has(&out, "let Self::B { 0: __field0, .. }"), "{out}");
    assert!(has(&out, "__closer.field(\"B.0\""), "{out}");
}

#[test]
fn tuple_and_unit_structs() {
    let out =
        expand(syn::parse_quote! { struct T(#[resource] A, #[resource(skip)] B, #[resource] C); });
    assert!(
        has(
            &out,
            "let Self { 0: __field0, 2: __field2, .. } = &mut *self;"
        ),
        "{out}"
    );
    let out = expand(syn::parse_quote! { struct U; });
    assert!(
        has(&out, "async move { ::core::result::Result::Ok(()) }"),
        "{out}"
    );
    assert_eq!(errors(&out), 0);
}

#[test]
fn union_is_rejected_with_a_stub_impl() {
    let out = expand(syn::parse_quote! { union U { a: u32, b: f32 } });
    assert_eq!(errors(&out), 1, "{out}");
    assert!(has(&out, "cannot be derived for a union"), "{out}");
    assert!(
        has(&out, "impl ::resource_runtime::AsyncResource for U"),
        "{out}"
    );
}

#[test]
fn every_attribute_error_is_reported_at_once() {
    let out = expand(syn::parse_quote! {
        #[resource(timeout = "forever", concurent)]
        struct S {
            #[resource(timout = "2s")] a: A,
            #[resource(skip, close = shut)] b: B,
            #[resource(close = "shut")] c: C,
            #[resource(name = "x")] d: D,
            #[resource(name = "x", name = "y")] e: E,
        }
    });
    assert_eq!(errors(&out), 7, "{out}");
    for message in [
        "malformed timeout `forever`",
        "did you mean `concurrent`?",
        "did you mean `timeout`?",
        "`skip` cannot be combined with `close`",
        "write `close = shut` without quotes",
        "two fields are labelled `x`",
        "duplicate key `name`",
    ] {
        assert!(
            out.contains(&squash(message)),
            "missing {message:?} in {out}"
        );
    }
}

#[test]
fn boxed_and_self_containing_fields_get_boxed_futures() {
    let out = expand(syn::parse_quote! {
        struct Node { #[resource(boxed)] peer: Option<Box<Peer>>, #[resource] kids: Vec<Node>, #[resource] plain: A }
    });
    assert!(
        has(
            &out,
            "move || ::resource_runtime::__private::boxed(::resource_runtime::AsyncResource::close(__field0))"
        ),
        "{out}"
    );
    assert!(
        has(
            &out,
            "move || ::resource_runtime::__private::boxed(::resource_runtime::AsyncResource::close(__field1))"
        ),
        "{out}"
    );
    assert!(
        has(
            &out,
            "move || ::resource_runtime::AsyncResource::close(__field2)"
        ),
        "{out}"
    );
}

/// The predicates of the generated impl's where-clause, as (bounded type, bounds).
fn predicates(input: &DeriveInput) -> Vec<(String, String)> {
    let cx = Ctxt::new();
    let model = Input::from_syn(input, &cx);
    let krate: syn::Path = syn::parse_quote!(::resource_runtime);
    let clause = bound::where_clause(&model, &krate);
    cx.check().expect("a valid input");
    let Some(clause) = clause else {
        return Vec::new();
    };
    clause
        .predicates
        .iter()
        .map(|predicate| match predicate {
            WherePredicate::Type(p) => (
                squash(&p.bounded_ty.to_token_stream().to_string()),
                squash(&p.bounds.to_token_stream().to_string()),
            ),
            other => panic!("unexpected predicate {}", other.to_token_stream()),
        })
        .collect()
}

fn predicate(ty: &str, bounds: &str) -> (String, String) {
    (squash(ty), squash(bounds))
}

/// Whether `tokens` start with the path `segments`, joined by `::`.
fn path_at(tokens: &[TokenTree], segments: &[&str]) -> bool {
    let mut rest = tokens;
    for (n, segment) in segments.iter().enumerate() {
        if n > 0 {
            match rest {
                [TokenTree::Punct(a), TokenTree::Punct(b), tail @ ..]
                    if a.as_char() == ':' && b.as_char() == ':' =>
                {
                    rest = tail;
                }
                _ => return false,
            }
        }
        match rest {
            [TokenTree::Ident(ident), tail @ ..] if ident == segment => rest = tail,
            _ => return false,
        }
    }
    true
}

/// How many times the path `segments` occurs in `stream`, at any depth.
fn path_count(stream: TokenStream, segments: &[&str]) -> usize {
    let tokens: Vec<TokenTree> = stream.into_iter().collect();
    let nested: usize = tokens
        .iter()
        .map(|tt| match tt {
            TokenTree::Group(g) => path_count(g.stream(), segments),
            _ => 0,
        })
        .sum();
    nested
        + (0..tokens.len())
            .filter(|&i| path_at(&tokens[i..], segments))
            .count()
}

/// Visits every token list of `stream`, at any depth.
fn each_level(stream: TokenStream, visit: &mut impl FnMut(&[TokenTree])) {
    let tokens: Vec<TokenTree> = stream.into_iter().collect();
    visit(&tokens);
    for tt in &tokens {
        if let TokenTree::Group(g) = tt {
            each_level(g.stream(), visit);
        }
    }
}

/// Whether the two tokens before the end of `before` are `::`.
fn after_path_sep(before: &[TokenTree]) -> bool {
    matches!(before, [.., TokenTree::Punct(a), TokenTree::Punct(b)]
        if a.as_char() == ':' && a.spacing() == Spacing::Joint && b.as_char() == ':')
}

#[test]
fn the_type_itself_is_its_bare_name_or_self_never_a_longer_path() {
    let node = Ident::new("Node", proc_macro2::Span::call_site());
    let cases: Vec<(Type, bool)> = vec![
        (syn::parse_quote!(Node), true),
        (syn::parse_quote!(Node<T>), true),
        (syn::parse_quote!(Vec<Node>), true),
        (syn::parse_quote!(Option<Box<Node<u8>>>), true),
        (syn::parse_quote!(self::Node), true),
        (syn::parse_quote!(Vec<self::Node<T>>), true),
        (syn::parse_quote!(Self), true),
        (syn::parse_quote!(Option<Box<Self>>), true),
        (syn::parse_quote!(r#Node), true),
        (syn::parse_quote!([Node; 2]), true),
        (syn::parse_quote!((u8, Node)), true),
        (syn::parse_quote!(<Node as Trait>::Assoc), true),
        (syn::parse_quote!(sdk::Client<Node>), true),
        (syn::parse_quote!(Box<dyn Iterator<Item = Node>>), true),
        (syn::parse_quote!(sdk::Node), false),
        (syn::parse_quote!(sdk::Node<T>), false),
        (syn::parse_quote!(::node::Node), false),
        (syn::parse_quote!(crate::x::Node), false),
        (syn::parse_quote!(crate::Node), false),
        (syn::parse_quote!(super::Node), false),
        (syn::parse_quote!(Vec<sdk::Node>), false),
        (syn::parse_quote!(<T as Trait>::Node), false),
        (syn::parse_quote!(Box<dyn Tr<Node = u8>>), false),
        (syn::parse_quote!(&'Node mut u8), false),
        (syn::parse_quote!(NodeList), false),
        (syn::parse_quote!(MyNode<T>), false),
    ];
    for (ty, expected) in cases {
        assert_eq!(
            bound::mentions_self(&ty, &node),
            expected,
            "`{}`",
            ty.to_token_stream()
        );
    }
}

#[test]
fn a_field_of_another_type_with_the_same_name_gets_its_bound_and_no_box() {
    let input: DeriveInput = syn::parse_quote! {
        pub struct Client<T> { #[resource] inner: sdk::Client<T> }
    };
    assert_eq!(
        predicates(&input),
        [
            predicate("sdk::Client<T>", "::resource_runtime::AsyncResource"),
            predicate("Client<T>", "::core::marker::Send"),
        ]
    );
    // Entered, closed and rolled back through its own impl, unboxed.
    let out = derive(&input);
    assert_eq!(path_count(out.clone(), &["__private", "boxed"]), 0, "{out}");
    assert_eq!(path_count(out.clone(), &["AsyncResource", "enter"]), 1);
    assert_eq!(path_count(out.clone(), &["AsyncResource", "close"]), 2);

    // The same through a leading `::`, a longer path, and nested in another type.
    let input: DeriveInput = syn::parse_quote! {
        pub struct Client<T, U, V> {
            #[resource] a: ::sdk::Client<T>,
            #[resource] b: crate::vendor::Client<U>,
            #[resource] c: Vec<sdk::Client<V>>,
        }
    };
    let found = predicates(&input);
    for ty in [
        "::sdk::Client<T>",
        "crate::vendor::Client<U>",
        "Vec<sdk::Client<V>>",
    ] {
        assert!(
            found.contains(&predicate(ty, "::resource_runtime::AsyncResource")),
            "{ty} in {found:?}"
        );
    }
    assert_eq!(path_count(derive(&input), &["__private", "boxed"]), 0);
}

#[test]
fn a_field_naming_the_type_itself_gets_no_bound_and_a_box() {
    let input: DeriveInput = syn::parse_quote! {
        struct Node<T> {
            #[resource] leaf: T,
            #[resource] kids: Vec<Node<T>>,
            #[resource] up: Option<Box<self::Node<T>>>,
            #[resource] back: Option<Box<Self>>,
        }
    };
    assert_eq!(
        predicates(&input),
        [
            predicate("T", "::resource_runtime::AsyncResource"),
            predicate("Node<T>", "::core::marker::Send"),
        ]
    );
    // Three fields, each with a boxed enter, close and rollback close.
    assert_eq!(path_count(derive(&input), &["__private", "boxed"]), 9);
}

#[test]
fn a_group_is_joined_without_a_macro_that_needs_the_prelude() {
    for input in [
        syn::parse_quote! {
            struct S { #[resource(group = "g")] a: A, #[resource(group = "g", timeout = "1s")] b: B }
        },
        syn::parse_quote! {
            #[resource(concurrent, timeout = "5s")]
            enum E { X(#[resource] A, #[resource] B), Y { #[resource] c: C } }
        },
    ] {
        let input: DeriveInput = input;
        let out = derive(&input);
        let mut macros = Vec::new();
        each_level(out.clone(), &mut |tokens| {
            for (i, window) in tokens.windows(3).enumerate() {
                if let [
                    TokenTree::Ident(name),
                    TokenTree::Punct(bang),
                    TokenTree::Group(_),
                ] = window
                    && bang.as_char() == '!'
                {
                    let qualified = path_at(&tokens[i.saturating_sub(6)..], &["core", "pin"])
                        && i >= 6
                        && after_path_sep(&tokens[..i]);
                    macros.push((name.to_string(), qualified));
                }
            }
        });
        assert!(!macros.is_empty(), "{out}");
        assert!(
            macros
                .iter()
                .all(|(name, qualified)| name == "pin" && *qualified),
            "{macros:?}"
        );
    }
}

#[test]
fn the_expansion_names_prelude_items_only_by_full_path() {
    const PRELUDE: &[&str] = &[
        "Option",
        "Some",
        "None",
        "Result",
        "Ok",
        "Err",
        "Box",
        "Vec",
        "String",
        "ToString",
        "ToOwned",
        "Send",
        "Sync",
        "Sized",
        "Unpin",
        "Default",
        "Drop",
        "Fn",
        "FnMut",
        "FnOnce",
        "Clone",
        "Copy",
        "Into",
        "From",
        "TryInto",
        "TryFrom",
        "Iterator",
        "IntoIterator",
        "Extend",
        "PartialEq",
        "Eq",
        "PartialOrd",
        "Ord",
        "AsRef",
        "AsMut",
        "Future",
        "IntoFuture",
        "drop",
    ];
    let inputs: Vec<DeriveInput> = vec![
        syn::parse_quote! {
            #[resource(timeout = "5s", before_close = drain, after_enter = warm)]
            struct S<T> {
                #[resource(timeout = "2s", name = "first")] a: A,
                #[resource(group = "io")] b: B<T>,
                #[resource(group = "io", close = shut, enter = open)] c: C,
                #[resource(boxed)] d: D,
                #[resource] e: Vec2<S<T>>,
                #[resource(skip)] f: F,
                g: G,
            }
        },
        syn::parse_quote! {
            #[resource(concurrent)]
            enum E<'a, T> { X { #[resource] x: &'a mut T }, Y(#[resource(close = f)] U, #[resource] T), Z }
        },
        syn::parse_quote! { struct Unit; },
        syn::parse_quote! { #[resource(timeout = "1s")] struct Bare(#[resource(skip)] A); },
    ];
    for input in inputs {
        let out = derive(&input);
        let mut bare = Vec::new();
        each_level(out.clone(), &mut |tokens| {
            for (i, tt) in tokens.iter().enumerate() {
                if let TokenTree::Ident(ident) = tt
                    && PRELUDE.iter().any(|p| ident == p)
                    && !after_path_sep(&tokens[..i])
                {
                    bare.push(ident.to_string());
                }
            }
        });
        assert!(bare.is_empty(), "bare {bare:?} in {out}");
    }
}

#[test]
fn large_groups_are_joined_in_one_step_and_capped() {
    let fields: Vec<syn::Field> = (0..40)
        .map(|i| {
            let name = quote::format_ident!("f{i}");
            syn::parse_quote!(#[resource] #name: A)
        })
        .collect();
    let out = expand(syn::parse_quote! {
        #[resource(concurrent)]
        struct Wide { #(#fields),* }
    });
    // 40 members: one join, with one pinned future and one poll arm each.
    assert_eq!(out.matches("::core::future::poll_fn(").count(), 1, "{out}");
    assert_eq!(out.matches("::core::pin::pin!(").count(), 40, "{out}");
    assert!(has(&out, "let mut __done = [false; 40usize];"), "{out}");
    assert!(
        has(&out, "39usize => ::core::future::Future::poll("),
        "{out}"
    );
    let fields: Vec<syn::Field> = (0..129)
        .map(|i| {
            let name = quote::format_ident!("f{i}");
            syn::parse_quote!(#[resource] #name: A)
        })
        .collect();
    let out = expand(syn::parse_quote! {
        #[resource(concurrent)]
        struct Wider { #(#fields),* }
    });
    assert!(
        has(&out, "closes more than 128 fields in one concurrent step"),
        "{out}"
    );
}

#[test]
fn concurrent_with_group_is_rejected() {
    let out = expand(syn::parse_quote! {
        #[resource(concurrent)]
        struct S { #[resource(group = "a")] a: A }
    });
    assert_eq!(errors(&out), 1, "{out}");
}

// ---------------------------------------------------------------------------------
// The macro never panics: a corpus of mangled inputs.

/// A small deterministic generator (xorshift64*), so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const SEEDS: &[&str] = &[
    r#"#[resource(timeout = "5s", before_close = drain, after_enter = warm)]
       struct Provider<T: Clone, const N: usize> where T: Send {
           #[resource(timeout = "2s", name = "log")] log: BufWriter<File>,
           #[resource(group = "io")] a: Vec<T>,
           #[resource(group = "io", close = shut, enter = open)] b: [u8; N],
           #[resource(skip)] c: String,
           d: Client,
       }"#,
    r#"#[resource(concurrent, crate = "my::rt", bound = "T: Send")]
       enum E<'a, T> { A { #[resource] x: &'a mut T }, B(#[resource(close = f)] u8, #[resource] T), C }"#,
    r#"struct T(#[resource] A, #[resource(skip)] B, C);"#,
    r#"union U { #[resource] a: u32, b: f32 }"#,
    r#"#[resource] struct S { #[resource(timeout = 2)] a: A, #[resource = "x"] b: B }"#,
    r#"struct G<T: ?Sized + 'static, U = u8> where for<'x> &'x T: Send { #[resource] a: Box<T>, #[resource] u: Option<U> }"#,
];

const LITERALS: &[&str] = &[
    "\"2s\"",
    "\"0ms\"",
    "\"\"",
    "\"a.b\"",
    "\"T:\"",
    "\"::\"",
    "\"99999999999999999999h\"",
    "2",
    "2.5",
    "true",
    "'c'",
    "b\"x\"",
    "\"T: for<'a> Fn(&'a u8)\"",
    "\"1 s\"",
];

const WORDS: &[&str] = &[
    "resource",
    "skip",
    "close",
    "enter",
    "timeout",
    "group",
    "name",
    "concurrent",
    "before_close",
    "after_enter",
    "bound",
    "crate",
    "self",
    "Self",
    "T",
    "r#type",
    "=",
    ",",
    "::",
    "#",
    ":",
    "<",
    ">",
    "'a",
    "where",
    "struct",
    "enum",
    "union",
    "_",
    "+",
    "?",
];

/// Token texts with a `(`/`)`-style marker for group boundaries, so groups can be
/// mangled too (an unbalanced result just fails to parse).
fn flatten(stream: TokenStream, out: &mut Vec<String>) {
    for tt in stream {
        match tt {
            TokenTree::Group(g) => {
                let (open, close) = match g.delimiter() {
                    Delimiter::Parenthesis => ("(", ")"),
                    Delimiter::Brace => ("{", "}"),
                    Delimiter::Bracket => ("[", "]"),
                    Delimiter::None => ("", ""),
                };
                out.push(open.to_owned());
                flatten(g.stream(), out);
                out.push(close.to_owned());
            }
            TokenTree::Punct(p) => {
                // Keep joint punctuation (`::`, `=>`) together.
                let text = p.as_char().to_string();
                match (p.spacing(), out.last_mut()) {
                    (_, Some(last)) if last.ends_with('\u{1}') => {
                        last.pop();
                        last.push_str(&text);
                    }
                    _ => out.push(text),
                }
                if p.spacing() == proc_macro2::Spacing::Joint
                    && let Some(last) = out.last_mut()
                {
                    last.push('\u{1}');
                }
            }
            other => match out.last_mut() {
                // A lifetime is a joint `'` followed by an identifier.
                Some(last) if last.ends_with("'\u{1}") => {
                    last.pop();
                    last.push_str(&other.to_string());
                }
                _ => out.push(other.to_string()),
            },
        }
    }
}

fn mutate(rng: &mut Rng, tokens: &mut Vec<String>) {
    if tokens.is_empty() {
        return;
    }
    let at = rng.below(tokens.len());
    match rng.below(7) {
        0 => {
            tokens.remove(at);
        }
        1 => tokens.truncate(at.max(1)),
        2 => {
            let copy = tokens[at].clone();
            tokens.insert(at, copy);
        }
        3 => {
            let other = rng.below(tokens.len());
            tokens.swap(at, other);
        }
        4 => tokens.insert(at, LITERALS[rng.below(LITERALS.len())].to_owned()),
        5 => tokens[at] = WORDS[rng.below(WORDS.len())].to_owned(),
        _ => {
            // Replace a literal with one of another kind.
            if let Some(lit) = tokens.iter().position(|t| t.starts_with('"')) {
                tokens[lit] = LITERALS[rng.below(LITERALS.len())].to_owned();
            }
        }
    }
}

#[test]
fn expand_never_panics_on_mangled_input() {
    let seeds: Vec<Vec<String>> = SEEDS
        .iter()
        .map(|s| {
            let mut out = Vec::new();
            flatten(s.parse().expect("seed tokenizes"), &mut out);
            out
        })
        .collect();
    let mut rng = Rng(0x0005_EED0_FA11_u64);
    let (mut parsed, mut tried) = (0_usize, 0_usize);
    while parsed < 4_000 && tried < 200_000 {
        tried += 1;
        let mut tokens = seeds[rng.below(seeds.len())].clone();
        for _ in 0..=rng.below(4) {
            mutate(&mut rng, &mut tokens);
        }
        let text = tokens.join(" ").replace('\u{1}', "");
        let Ok(stream) = text.parse::<TokenStream>() else {
            continue;
        };
        let Ok(input) = syn::parse2::<DeriveInput>(stream) else {
            continue;
        };
        parsed += 1;
        let result = std::panic::catch_unwind(|| derive(&input));
        assert!(result.is_ok(), "derive panicked on input #{tried}:\n{text}");
    }
    assert!(
        parsed >= 4_000,
        "only {parsed} of {tried} mangled inputs parsed"
    );
}
