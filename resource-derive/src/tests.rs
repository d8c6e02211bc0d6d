//! Unit tests of the expansion on `parse_quote!` inputs: one per attribute, and a
//! corpus of mangled inputs the macro must survive without panicking.
//!
//! The expansion is parsed back with syn and checked by its structure: the impl and its
//! where-clause, the runtime helpers each method calls, with which labels, deadlines
//! and futures, and in which order.

use std::fmt;

use proc_macro2::{Delimiter, Spacing, TokenStream, TokenTree};
use quote::ToTokens;
use syn::punctuated::Punctuated;
use syn::visit::{self, Visit};
use syn::{
    DeriveInput, Expr, ExprCall, ExprIf, ExprMatch, ExprMethodCall, Ident, ImplItem, ImplItemFn,
    Item, ItemImpl, ItemTrait, Lit, LitStr, Local, Member, Pat, Stmt, Token, TraitItem, Type,
    TypeParamBound, UnOp, UseTree, WherePredicate,
};

use crate::bound;
use crate::expand::derive;

/// The runtime crate's path in an expansion without `crate = "..."`.
const RT: &str = "::resource_runtime";

/// A derive's output, parsed back as items.
struct Expansion {
    tokens: TokenStream,
    file: syn::File,
}

impl fmt::Display for Expansion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.tokens.fmt(f)
    }
}

fn expand(input: DeriveInput) -> Expansion {
    let tokens = derive(&input);
    let file = syn::parse2(tokens.clone())
        .unwrap_or_else(|e| panic!("the expansion is not a list of items ({e}): {tokens}"));
    Expansion { tokens, file }
}

impl Expansion {
    /// The messages of the top-level `::core::compile_error! { ... }`s, in order.
    fn errors(&self) -> Vec<String> {
        self.file
            .items
            .iter()
            .filter_map(|item| match item {
                Item::Macro(m) if path_text(&m.mac.path) == "::core::compile_error" => {
                    Some(m.mac.parse_body::<LitStr>().expect("a message").value())
                }
                _ => None,
            })
            .collect()
    }

    /// The impls, which sit in one `const _: () = { ... };`.
    fn impls(&self) -> Vec<&ItemImpl> {
        let scopes: Vec<&syn::ItemConst> = self
            .file
            .items
            .iter()
            .filter_map(|item| match item {
                Item::Const(c) => Some(c),
                _ => None,
            })
            .collect();
        let [scope] = scopes[..] else {
            panic!("expected one `const _: () = {{ ... }};` in {self}");
        };
        assert_eq!(scope.ident, "_", "{self}");
        assert!(
            matches!(&*scope.ty, Type::Tuple(t) if t.elems.is_empty()),
            "{self}"
        );
        let Expr::Block(block) = &*scope.expr else {
            panic!("the const's value is not a block: {self}");
        };
        block
            .block
            .stmts
            .iter()
            .filter_map(|stmt| match stmt {
                Stmt::Item(Item::Impl(item)) => Some(item),
                _ => None,
            })
            .collect()
    }

    /// The `impl AsyncResource for ...`.
    fn trait_impl(&self) -> &ItemImpl {
        let impls: Vec<&ItemImpl> = self
            .impls()
            .into_iter()
            .filter(|i| i.trait_.is_some())
            .collect();
        let [item] = impls[..] else {
            panic!("expected one trait impl in {self}");
        };
        item
    }

    /// The inherent impl that holds the unmarked-field probes, if any.
    fn probe_impl(&self) -> Option<&ItemImpl> {
        let impls: Vec<&ItemImpl> = self
            .impls()
            .into_iter()
            .filter(|i| i.trait_.is_none())
            .collect();
        assert!(impls.len() <= 1, "{self}");
        impls.first().copied()
    }

    /// The path of the implemented trait.
    fn trait_path(&self) -> String {
        let (path, _) = self.trait_impl().trait_.as_ref().expect("a trait impl");
        path_text(path)
    }

    fn method_fn(&self, name: &str) -> &ImplItemFn {
        impl_fn(self.trait_impl(), name)
    }

    /// What the trait impl's method `name` does.
    fn method(&self, name: &str) -> Walk {
        let method = self.method_fn(name);
        Walk::new(|w| w.visit_impl_item_fn(method))
    }

    /// The whole expansion.
    fn walk(&self) -> Walk {
        Walk::new(|w| w.visit_file(&self.file))
    }

    /// The where-clause predicates of the trait impl, as (bounded type, bounds), each
    /// printed from its parsed form.
    fn predicates(&self) -> Vec<(String, String)> {
        let Some(clause) = &self.trait_impl().generics.where_clause else {
            return Vec::new();
        };
        clause
            .predicates
            .iter()
            .map(|predicate| match predicate {
                WherePredicate::Type(p) => {
                    assert!(p.attrs.is_empty() && p.lifetimes.is_none(), "{self}");
                    (
                        p.bounded_ty.to_token_stream().to_string(),
                        p.bounds.to_token_stream().to_string(),
                    )
                }
                other => panic!("unexpected predicate {}", other.to_token_stream()),
            })
            .collect()
    }
}

/// A predicate as `Expansion::predicates` gives it.
fn predicate(ty: &str, bounds: &str) -> (String, String) {
    let ty: Type = syn::parse_str(ty).expect("a type");
    let bounds = syn::parse::Parser::parse_str(
        Punctuated::<TypeParamBound, Token![+]>::parse_separated_nonempty,
        bounds,
    )
    .expect("bounds");
    (
        ty.to_token_stream().to_string(),
        bounds.to_token_stream().to_string(),
    )
}

/// A type as syn prints it once parsed.
fn type_text(ty: &str) -> String {
    syn::parse_str::<Type>(ty)
        .expect("a type")
        .to_token_stream()
        .to_string()
}

fn impl_fn<'i>(item: &'i ItemImpl, name: &str) -> &'i ImplItemFn {
    item.items
        .iter()
        .find_map(|i| match i {
            ImplItem::Fn(f) if f.sig.ident == name => Some(f),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no fn `{name}` in {}", item.to_token_stream()))
}

/// The nodes of a part of the expansion that the tests look at, in source order. The
/// body of a macro that parses as an expression (`::core::pin::pin!(...)`) is walked
/// too.
#[derive(Default)]
struct Walk {
    nodes: Vec<Node>,
}

enum Node {
    Call(ExprCall),
    MethodCall(ExprMethodCall),
    Local(Local),
    If(ExprIf),
    Match(ExprMatch),
    Macro(syn::Macro),
    Trait(ItemTrait),
    Str(String),
}

impl<'ast> Visit<'ast> for Walk {
    fn visit_expr_call(&mut self, node: &'ast ExprCall) {
        self.nodes.push(Node::Call(node.clone()));
        visit::visit_expr_call(self, node);
    }

    fn visit_expr_method_call(&mut self, node: &'ast ExprMethodCall) {
        self.nodes.push(Node::MethodCall(node.clone()));
        visit::visit_expr_method_call(self, node);
    }

    fn visit_local(&mut self, node: &'ast Local) {
        self.nodes.push(Node::Local(node.clone()));
        visit::visit_local(self, node);
    }

    fn visit_expr_if(&mut self, node: &'ast ExprIf) {
        self.nodes.push(Node::If(node.clone()));
        visit::visit_expr_if(self, node);
    }

    fn visit_expr_match(&mut self, node: &'ast ExprMatch) {
        self.nodes.push(Node::Match(node.clone()));
        visit::visit_expr_match(self, node);
    }

    fn visit_item_trait(&mut self, node: &'ast ItemTrait) {
        self.nodes.push(Node::Trait(node.clone()));
        visit::visit_item_trait(self, node);
    }

    fn visit_lit_str(&mut self, node: &'ast LitStr) {
        self.nodes.push(Node::Str(node.value()));
    }

    fn visit_macro(&mut self, node: &'ast syn::Macro) {
        self.nodes.push(Node::Macro(node.clone()));
        if let Ok(body) = node.parse_body::<Expr>() {
            Visit::visit_expr(self, &body);
        }
    }
}

impl Walk {
    fn new(visit: impl FnOnce(&mut Walk)) -> Walk {
        let mut walk = Walk::default();
        visit(&mut walk);
        walk
    }

    /// Every `receiver.method(...)`, with its place in the walk.
    fn method_calls(&self, receiver: &str, method: &str) -> Vec<(usize, &ExprMethodCall)> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(at, node)| match node {
                Node::MethodCall(call)
                    if call.method == method
                        && ident_of(&call.receiver).as_deref() == Some(receiver) =>
                {
                    Some((at, call))
                }
                _ => None,
            })
            .collect()
    }

    /// Every step `receiver.method(...)`, `receiver.method_boxed(...)` and
    /// `receiver.method_fn(...)`, with its place in the walk.
    fn step_calls(&self, receiver: &str, method: &str) -> Vec<(usize, &ExprMethodCall)> {
        let family = [
            method.to_owned(),
            format!("{method}_boxed"),
            format!("{method}_fn"),
        ];
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(at, node)| match node {
                Node::MethodCall(call)
                    if family.iter().any(|m| call.method == m)
                        && ident_of(&call.receiver).as_deref() == Some(receiver) =>
                {
                    Some((at, call))
                }
                _ => None,
            })
            .collect()
    }

    /// The steps run through `receiver.method(label, [deadline,] field)` and its
    /// `_boxed` and `_fn` (a closure of the field, and the field) forms.
    fn steps(&self, receiver: &str, method: &str) -> Vec<Step> {
        self.step_calls(receiver, method)
            .into_iter()
            .map(|(_, call)| self.resolved(parse_step(call)))
            .collect()
    }

    /// A step with the field its binding is bound to: a struct's step binds
    /// `let __fieldN = &mut self.member;` just before it, read here as `self.member`.
    /// A variant's binding, bound by a destructuring, stays as it is.
    fn resolved(&self, mut step: Step) -> Step {
        let bound: Vec<String> = self
            .locals()
            .filter(|(_, local)| bound_name(&local.pat).as_deref() == Some(&*step.fut.arg))
            .filter_map(|(_, local)| match &*local.init.as_ref()?.expr {
                // Not `__this = &mut *self` of a hook.
                Expr::Reference(_) => field_of(&local.init.as_ref()?.expr),
                _ => None,
            })
            .collect();
        if let Some(first) = bound.first() {
            assert!(
                bound.iter().all(|b| b == first),
                "`{}` is bound to {bound:?}",
                step.fut.arg
            );
            step.fut.arg = first.clone();
        }
        step
    }

    /// The place in the walk of the step `receiver.method(label, ...)`.
    fn at(&self, receiver: &str, method: &str, label: &str) -> usize {
        self.step_calls(receiver, method)
            .into_iter()
            .find(|(_, call)| call.args.first().map(label_of).as_deref() == Some(label))
            .unwrap_or_else(|| panic!("no `{receiver}.{method}({label:?}, ...)`"))
            .0
    }

    /// The label lists passed to `receiver.method(&[...])`.
    fn label_lists(&self, receiver: &str, method: &str) -> Vec<Vec<String>> {
        self.method_calls(receiver, method)
            .into_iter()
            .map(|(_, call)| {
                strings_of(only_arg(&call.args))
                    .unwrap_or_else(|| panic!("not a list of labels: {}", call.to_token_stream()))
            })
            .collect()
    }

    /// The calls of the function at `path` (generic arguments aside).
    fn calls(&self, path: &str) -> Vec<&ExprCall> {
        self.nodes
            .iter()
            .filter_map(|node| match node {
                Node::Call(call) if calls_path(call, path) => Some(call),
                _ => None,
            })
            .collect()
    }

    fn locals(&self) -> impl Iterator<Item = (usize, &Local)> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(at, node)| match node {
                Node::Local(local) => Some((at, local)),
                _ => None,
            })
    }

    /// The value of the one `let name = ...;`, and its place in the walk.
    fn local(&self, name: &str) -> (usize, &Expr) {
        let found: Vec<(usize, &Expr)> = self
            .locals()
            .filter(|(_, local)| bound_name(&local.pat).as_deref() == Some(name))
            .map(|(at, local)| (at, &*local.init.as_ref().expect("a value").expr))
            .collect();
        let [found] = found[..] else {
            panic!("expected one `let {name} = ...`, found {}", found.len());
        };
        found
    }

    /// The `let Self... { member: binding, .. } = &mut *self ...;` destructurings.
    fn bindings(&self) -> Vec<Binding> {
        self.locals()
            .filter_map(|(_, local)| {
                let Pat::Struct(pat) = &local.pat else {
                    return None;
                };
                let init = local.init.as_ref()?;
                if !is_self_mut(&init.expr) {
                    return None;
                }
                assert!(
                    pat.rest.is_some(),
                    "the other fields are left unbound by `..`"
                );
                Some(Binding {
                    pattern: path_text(&pat.path),
                    fields: pat
                        .fields
                        .iter()
                        .map(|f| {
                            let member = match &f.member {
                                Member::Named(ident) => ident.to_string(),
                                Member::Unnamed(index) => index.index.to_string(),
                            };
                            (member, bound_name(&f.pat).expect("a binding"))
                        })
                        .collect(),
                    otherwise: init.diverge.as_ref().map(|(_, e)| break_label(e)),
                })
            })
            .collect()
    }

    /// The members of each `__private::join(&mut [::core::pin::pin!(__group.field(...)),
    /// ...])`, in order.
    fn joins(&self) -> Vec<Vec<Step>> {
        self.nodes
            .iter()
            .filter_map(|node| match node {
                Node::Call(call)
                    if callee(call).is_some_and(|c| c.ends_with("::__private::join")) =>
                {
                    Some(call)
                }
                _ => None,
            })
            .map(|call| {
                let Expr::Reference(members) = only_arg(&call.args) else {
                    panic!("not `&mut [...]`: {}", call.to_token_stream());
                };
                assert!(members.mutability.is_some(), "{}", call.to_token_stream());
                let Expr::Array(members) = &*members.expr else {
                    panic!("not an array: {}", call.to_token_stream());
                };
                members
                    .elems
                    .iter()
                    .map(|member| {
                        let Expr::Macro(mac) = member else {
                            panic!("not pinned: {}", member.to_token_stream());
                        };
                        assert_eq!(path_text(&mac.mac.path), "::core::pin::pin");
                        let body = mac.mac.parse_body::<Expr>();
                        // `{ let __fieldN = &mut self.member; __group.field(...) }` in a
                        // struct, the call alone in a variant.
                        let step = match &body {
                            Ok(Expr::Block(block)) => match block.block.stmts.last() {
                                Some(Stmt::Expr(Expr::MethodCall(step), None)) => Some(step),
                                _ => None,
                            },
                            Ok(Expr::MethodCall(step)) => Some(step),
                            _ => None,
                        };
                        let Some(step) = step else {
                            panic!("not a method call: {}", mac.to_token_stream());
                        };
                        assert_eq!(ident_of(&step.receiver).as_deref(), Some("__group"));
                        assert!(step.method.to_string().starts_with("field"));
                        self.resolved(parse_step(step))
                    })
                    .collect()
            })
            .collect()
    }

    fn strings(&self) -> Vec<&str> {
        self.nodes
            .iter()
            .filter_map(|node| match node {
                Node::Str(s) => Some(s.as_str()),
                _ => None,
            })
            .collect()
    }

    fn macros(&self) -> Vec<&syn::Macro> {
        self.nodes
            .iter()
            .filter_map(|node| match node {
                Node::Macro(m) => Some(m),
                _ => None,
            })
            .collect()
    }

    fn ifs(&self) -> Vec<(usize, &ExprIf)> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(at, node)| match node {
                Node::If(e) => Some((at, e)),
                _ => None,
            })
            .collect()
    }

    fn matches(&self) -> Vec<&ExprMatch> {
        self.nodes
            .iter()
            .filter_map(|node| match node {
                Node::Match(m) => Some(m),
                _ => None,
            })
            .collect()
    }

    fn traits(&self) -> Vec<&ItemTrait> {
        self.nodes
            .iter()
            .filter_map(|node| match node {
                Node::Trait(t) => Some(t),
                _ => None,
            })
            .collect()
    }
}

/// A path without its generic arguments, as written: `::core::pin::pin`.
fn path_text(path: &syn::Path) -> String {
    let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
    let root = if path.leading_colon.is_some() {
        "::"
    } else {
        ""
    };
    format!("{root}{}", segments.join("::"))
}

/// The path of the function a call calls.
fn callee(call: &ExprCall) -> Option<String> {
    match &*call.func {
        Expr::Path(p) if p.qself.is_none() => Some(path_text(&p.path)),
        _ => None,
    }
}

fn calls_path(call: &ExprCall, path: &str) -> bool {
    callee(call).as_deref() == Some(path)
}

fn only_arg(args: &Punctuated<Expr, Token![,]>) -> &Expr {
    assert_eq!(args.len(), 1, "one argument: {}", args.to_token_stream());
    &args[0]
}

/// Parentheses and invisible groups removed.
fn peel(expr: &Expr) -> &Expr {
    match expr {
        Expr::Paren(e) => peel(&e.expr),
        Expr::Group(e) => peel(&e.expr),
        other => other,
    }
}

/// The name of a local used as an expression.
fn ident_of(expr: &Expr) -> Option<String> {
    match peel(expr) {
        Expr::Path(p) if p.qself.is_none() => p.path.get_ident().map(Ident::to_string),
        _ => None,
    }
}

/// What a step takes its field by: a variant's binding (`__field0`), or a struct's
/// `&mut self.member`, as `self.member`.
fn field_of(expr: &Expr) -> Option<String> {
    match peel(expr) {
        Expr::Reference(r) if r.mutability.is_some() => match peel(&r.expr) {
            Expr::Field(f) if ident_of(&f.base).as_deref() == Some("self") => {
                Some(match &f.member {
                    Member::Named(ident) => format!("self.{ident}"),
                    Member::Unnamed(index) => format!("self.{}", index.index),
                })
            }
            _ => None,
        },
        other => ident_of(other),
    }
}

fn bound_name(pat: &Pat) -> Option<String> {
    match pat {
        Pat::Ident(p) if p.subpat.is_none() => Some(p.ident.to_string()),
        _ => None,
    }
}

fn lit_of(expr: &Expr) -> Option<&Lit> {
    match peel(expr) {
        Expr::Lit(e) => Some(&e.lit),
        _ => None,
    }
}

fn int_of(expr: &Expr) -> Option<u64> {
    match lit_of(expr)? {
        Lit::Int(i) => i.base10_parse().ok(),
        _ => None,
    }
}

/// A step's label: a string, or the index of a group member.
fn label_of(expr: &Expr) -> String {
    match lit_of(expr) {
        Some(Lit::Str(s)) => s.value(),
        Some(Lit::Int(i)) => i.base10_digits().to_owned(),
        _ => panic!("not a label: {}", expr.to_token_stream()),
    }
}

/// `&["a", "b"]`.
fn strings_of(expr: &Expr) -> Option<Vec<String>> {
    let Expr::Reference(r) = peel(expr) else {
        return None;
    };
    let Expr::Array(array) = peel(&r.expr) else {
        return None;
    };
    array
        .elems
        .iter()
        .map(|e| match lit_of(e)? {
            Lit::Str(s) => Some(s.value()),
            _ => None,
        })
        .collect()
}

/// `&mut *self`.
fn is_self_mut(expr: &Expr) -> bool {
    match peel(expr) {
        Expr::Reference(r) if r.mutability.is_some() => matches!(
            peel(&r.expr),
            Expr::Unary(u) if matches!(u.op, UnOp::Deref(_)) && ident_of(&u.expr).as_deref() == Some("self")
        ),
        _ => false,
    }
}

/// The label of `{ break 'label }`.
fn break_label(expr: &Expr) -> String {
    match peel(expr) {
        Expr::Block(block) => match &block.block.stmts[..] {
            [Stmt::Expr(Expr::Break(b), _)] if b.expr.is_none() => {
                b.label.as_ref().expect("a label").ident.to_string()
            }
            _ => panic!("not a break: {}", expr.to_token_stream()),
        },
        other => panic!("not a block: {}", other.to_token_stream()),
    }
}

/// The `Duration::from_millis(n)` of a deadline, in milliseconds.
fn duration_ms(expr: &Expr) -> u64 {
    match peel(expr) {
        Expr::Call(call) if calls_path(call, "::core::time::Duration::from_millis") => {
            int_of(only_arg(&call.args)).expect("a whole number of milliseconds")
        }
        other => panic!("not a duration: {}", other.to_token_stream()),
    }
}

#[derive(Debug, PartialEq)]
enum Deadline {
    /// `__private::NoDeadline`.
    Unbounded,
    /// `__private::Timed::after(Duration::from_millis(n))`.
    Millis(u64),
}

fn deadline(expr: &Expr) -> Deadline {
    match peel(expr) {
        Expr::Path(p) if path_text(&p.path) == format!("{RT}::__private::NoDeadline") => {
            Deadline::Unbounded
        }
        Expr::Call(call) if calls_path(call, &format!("{RT}::__private::Timed::after")) => {
            Deadline::Millis(duration_ms(only_arg(&call.args)))
        }
        other => panic!("not a deadline: {}", other.to_token_stream()),
    }
}

/// What a step runs: the field's own `enter` or `close` (`via_trait`, the field passed
/// to a step helper generic over its type), or the future a `move ||` closure makes
/// (`via_user`); which binding, and whether the future is boxed.
#[derive(Debug, PartialEq)]
struct Fut {
    callee: String,
    arg: String,
    /// Called through `__private::UserCall(...).user_step()`.
    user: bool,
    boxed: bool,
}

/// `AsyncResource::<method>(binding)`.
fn via_trait(method: &str, binding: &str) -> Fut {
    Fut {
        callee: format!("{RT}::AsyncResource::{method}"),
        arg: binding.to_owned(),
        user: false,
        boxed: false,
    }
}

/// The user's function at `path`, called with `binding`.
fn via_user(path: &str, binding: &str) -> Fut {
    Fut {
        callee: path.to_owned(),
        arg: binding.to_owned(),
        user: true,
        boxed: false,
    }
}

impl Fut {
    fn boxed(self) -> Fut {
        Fut {
            boxed: true,
            ..self
        }
    }
}

/// A hook's `move || future`.
fn future(expr: &Expr) -> Fut {
    let Expr::Closure(closure) = peel(expr) else {
        panic!("a step takes a closure, found {}", expr.to_token_stream());
    };
    assert!(
        closure.capture.is_some() && closure.asyncness.is_none() && closure.inputs.is_empty(),
        "not a `move ||` closure: {}",
        closure.to_token_stream()
    );
    body_future(&closure.body)
}

/// A user function's step: `|binding, slot| slot.put(future), binding`, a closure
/// without captures that takes the field it is given and puts the future in the step's
/// slot. The future's argument is the binding given, which a struct's step binds just
/// before it.
fn user_fn(closure: &Expr, field: &Expr) -> Fut {
    let Expr::Closure(closure) = peel(closure) else {
        panic!(
            "a user step takes a closure, found {}",
            closure.to_token_stream()
        );
    };
    let field = ident_of(field).expect("a user step gives its closure a binding");
    let (param, slot) = match closure.inputs.iter().collect::<Vec<_>>()[..] {
        [Pat::Ident(param), Pat::Ident(slot)] => (param.ident.to_string(), slot.ident.to_string()),
        _ => panic!(
            "not a closure of a binding and a slot: {}",
            closure.to_token_stream()
        ),
    };
    assert!(
        closure.capture.is_none() && closure.asyncness.is_none() && param == field,
        "not `|{field}, slot| slot.put(future)`: {}",
        closure.to_token_stream()
    );
    let Expr::MethodCall(put) = peel(&closure.body) else {
        panic!("not `slot.put(future)`: {}", closure.body.to_token_stream());
    };
    assert!(
        put.method == "put" && ident_of(&put.receiver).as_deref() == Some(slot.as_str()),
        "the future is not put in the closure's own slot: {}",
        closure.body.to_token_stream()
    );
    let fut = body_future(only_arg(&put.args));
    assert_eq!(
        fut.arg, param,
        "the closure's future takes its own parameter"
    );
    fut
}

/// The future an expression makes: a call of the field's close or enter, or the user
/// step's block, boxed or not.
fn body_future(body: &Expr) -> Fut {
    let (boxed, body) = match peel(body) {
        Expr::Call(call) if calls_path(call, &format!("{RT}::__private::boxed")) => {
            (true, only_arg(&call.args))
        }
        body => (false, body),
    };
    let (callee, arg, user) = match peel(body) {
        Expr::Call(call) => (
            callee(call).expect("a function path"),
            ident_of(only_arg(&call.args)).expect("a binding"),
            false,
        ),
        Expr::Block(block) => {
            let (callee, arg) = user_step(&block.block);
            (callee, arg, true)
        }
        other => panic!("not a future: {}", other.to_token_stream()),
    };
    Fut {
        callee,
        arg,
        user,
        boxed,
    }
}

/// The names a `use` tree imports, as `path as name`.
fn imports(tree: &UseTree, prefix: &str, out: &mut Vec<String>) {
    match tree {
        UseTree::Path(p) => imports(&p.tree, &format!("{prefix}{}::", p.ident), out),
        UseTree::Name(n) => out.push(format!("{prefix}{}", n.ident)),
        UseTree::Rename(r) => out.push(format!("{prefix}{} as {}", r.ident, r.rename)),
        UseTree::Glob(_) => out.push(format!("{prefix}*")),
        UseTree::Group(g) => g.items.iter().for_each(|t| imports(t, prefix, out)),
    }
}

/// A call of a user function:
/// `{ use __private::{ViaCheck as _, ViaFuture as _}; let __user_future = path(arg);
/// let __user_call = __private::UserCall(__user_future); __user_call.user_step() }`.
fn user_step(block: &syn::Block) -> (String, String) {
    let [
        Stmt::Item(Item::Use(import)),
        Stmt::Local(future),
        Stmt::Local(call),
        Stmt::Expr(Expr::MethodCall(step), None),
    ] = &block.stmts[..]
    else {
        panic!("not a user step: {}", block.to_token_stream());
    };
    assert!(
        import.attrs.iter().any(|a| a.path().is_ident("allow")
            && a.parse_args::<Ident>().is_ok_and(|i| i == "unused_imports")),
        "{}",
        import.to_token_stream()
    );
    let mut names = Vec::new();
    imports(&import.tree, "", &mut names);
    assert!(import.leading_colon.is_some());
    assert_eq!(
        names,
        [
            "resource_runtime::__private::ViaCheck as _",
            "resource_runtime::__private::ViaFuture as _",
        ]
    );
    assert_eq!(bound_name(&future.pat).as_deref(), Some("__user_future"));
    let Expr::Call(user) = &*future.init.as_ref().expect("a value").expr else {
        panic!("not a call: {}", future.to_token_stream());
    };
    assert_eq!(bound_name(&call.pat).as_deref(), Some("__user_call"));
    let Expr::Call(wrap) = &*call.init.as_ref().expect("a value").expr else {
        panic!("not a call: {}", call.to_token_stream());
    };
    assert_eq!(callee(wrap), Some(format!("{RT}::__private::UserCall")));
    assert_eq!(
        ident_of(only_arg(&wrap.args)).as_deref(),
        Some("__user_future")
    );
    assert_eq!(ident_of(&step.receiver).as_deref(), Some("__user_call"));
    assert_eq!(step.method, "user_step");
    assert!(step.args.is_empty());
    (
        callee(user).expect("a function path"),
        ident_of(only_arg(&user.args)).expect("a binding"),
    )
}

/// One `receiver.method(label, [deadline,] move || future)`.
#[derive(Debug, PartialEq)]
struct Step {
    label: String,
    /// `None` for a step that takes no deadline (enter, hooks).
    deadline: Option<Deadline>,
    fut: Fut,
}

fn step(label: &str, fut: Fut) -> Step {
    Step {
        label: label.to_owned(),
        deadline: None,
        fut,
    }
}

fn timed(label: &str, deadline: Deadline, fut: Fut) -> Step {
    Step {
        label: label.to_owned(),
        deadline: Some(deadline),
        fut,
    }
}

/// `receiver.method(label, [deadline,] field)`, the field entered (`__enter.field`)
/// or closed through its own impl; `method_boxed(...)` with the future boxed;
/// `method_fn(label, [deadline,] |binding| future, binding)` for a user function; or a
/// hook.
fn parse_step(call: &ExprMethodCall) -> Step {
    let args: Vec<&Expr> = call.args.iter().collect();
    let method = call.method.to_string();
    if method.ends_with("_fn") {
        let (label, deadline, closure, field) = match args[..] {
            [label, closure, field] => (label, None, closure, field),
            [label, limit, closure, field] => (label, Some(deadline(limit)), closure, field),
            _ => panic!("not a step: {}", call.to_token_stream()),
        };
        return Step {
            label: label_of(label),
            deadline,
            fut: user_fn(closure, field),
        };
    }
    let (label, deadline, last) = match args[..] {
        [label, last] => (label, None, last),
        [label, limit, last] => (label, Some(deadline(limit)), last),
        _ => panic!("not a step: {}", call.to_token_stream()),
    };
    let fut = if method == "hook" {
        future(last)
    } else {
        // `__private::resource(binding)`.
        let binding = match peel(last) {
            Expr::Call(wrap)
                if callee(wrap).is_some_and(|c| c.ends_with("::__private::resource")) =>
            {
                field_of(only_arg(&wrap.args))
            }
            _ => None,
        }
        .unwrap_or_else(|| panic!("not a field: {}", call.to_token_stream()));
        let op = if ident_of(&call.receiver).as_deref() == Some("__enter")
            && method.starts_with("field")
        {
            "enter"
        } else {
            "close"
        };
        let fut = via_trait(op, &binding);
        match method.strip_suffix("_boxed") {
            Some(_) => fut.boxed(),
            None => fut,
        }
    };
    Step {
        label: label_of(label),
        deadline,
        fut,
    }
}

/// A destructuring of `&mut *self`: `let Self::V { a: __field0, .. } = &mut *self else
/// { break 'label };`.
#[derive(Debug, PartialEq)]
struct Binding {
    pattern: String,
    fields: Vec<(String, String)>,
    /// The label broken to when another variant is active.
    otherwise: Option<String>,
}

fn binding(pattern: &str, fields: &[(&str, &str)], otherwise: Option<&str>) -> Binding {
    Binding {
        pattern: pattern.to_owned(),
        fields: fields
            .iter()
            .map(|(m, b)| ((*m).to_owned(), (*b).to_owned()))
            .collect(),
        otherwise: otherwise.map(str::to_owned),
    }
}

/// Whether the identifier `name` occurs anywhere in `tokens`.
fn mentions_ident(tokens: TokenStream, name: &str) -> bool {
    tokens.into_iter().any(|tt| match tt {
        TokenTree::Ident(ident) => ident == name,
        TokenTree::Group(g) => mentions_ident(g.stream(), name),
        _ => false,
    })
}

/// Whether a method's body is `async [move] { ::core::result::Result::Ok(()) }`.
fn resolves_at_once(method: &ImplItemFn) -> bool {
    let [Stmt::Expr(Expr::Async(body), None)] = &method.block.stmts[..] else {
        return false;
    };
    matches!(
        &body.block.stmts[..],
        [Stmt::Expr(Expr::Call(call), None)]
            if calls_path(call, "::core::result::Result::Ok")
                && matches!(only_arg(&call.args), Expr::Tuple(t) if t.elems.is_empty())
    )
}

/// The types `T` of `(&__private::Probe::<T>::new()).field_is_a_resource_but_unmarked()`.
fn probed_types(walk: &Walk) -> Vec<String> {
    walk.nodes
        .iter()
        .filter_map(|node| match node {
            Node::MethodCall(call) if call.method == "field_is_a_resource_but_unmarked" => {
                Some(call)
            }
            _ => None,
        })
        .map(|call| {
            let Expr::Reference(r) = peel(&call.receiver) else {
                panic!("not `&Probe`: {}", call.to_token_stream());
            };
            let Expr::Call(new) = peel(&r.expr) else {
                panic!("not `Probe::new()`: {}", call.to_token_stream());
            };
            assert!(calls_path(new, &format!("{RT}::__private::Probe::new")));
            assert!(new.args.is_empty());
            let Expr::Path(path) = &*new.func else {
                unreachable!()
            };
            let syn::PathArguments::AngleBracketed(args) = &path.path.segments[2].arguments else {
                panic!("`Probe` without its type: {}", call.to_token_stream());
            };
            match args.args.iter().collect::<Vec<_>>()[..] {
                [syn::GenericArgument::Type(ty)] => ty.to_token_stream().to_string(),
                _ => panic!("{}", call.to_token_stream()),
            }
        })
        .collect()
}

/// The `note` of the `#[deprecated(note = "...")]` on the method `name` of `item`.
fn deprecation_note(item: &ItemTrait, name: &str) -> Option<String> {
    item.items.iter().find_map(|i| match i {
        TraitItem::Fn(f) if f.sig.ident == name => f
            .attrs
            .iter()
            .filter(|a| a.path().is_ident("deprecated"))
            .find_map(|a| a.parse_args::<syn::MetaNameValue>().ok())
            .filter(|nv| nv.path.is_ident("note"))
            .and_then(|nv| match lit_of(&nv.value) {
                Some(Lit::Str(s)) => Some(s.value()),
                _ => None,
            }),
        _ => None,
    })
}

#[test]
fn bare_resource_marks_a_field_for_enter_and_close() {
    let out = expand(syn::parse_quote! {
        struct S { #[resource] a: A, b: B }
    });
    let enter = out.method("enter");
    let close = out.method("close");
    assert_eq!(
        enter.steps("__enter", "field"),
        [step("a", via_trait("enter", "self.a"))],
        "{out}"
    );
    assert_eq!(
        enter.steps("__enter", "rollback"),
        [timed(
            "a",
            Deadline::Unbounded,
            via_trait("close", "self.a")
        )],
        "{out}"
    );
    assert_eq!(
        close.steps("__closer", "field"),
        [timed(
            "a",
            Deadline::Unbounded,
            via_trait("close", "self.a")
        )],
        "{out}"
    );
    // An unmarked field is not bound, so it is neither entered nor closed.
    // A struct's steps take their field through `self`: no destructuring, and the
    // unmarked field is never named.
    assert!(out.walk().bindings().is_empty(), "{out}");
    assert!(!mentions_ident(out.tokens.clone(), "b"), "{out}");
    assert_eq!(out.trait_path(), format!("{RT}::AsyncResource"));
    assert!(
        out.trait_impl()
            .attrs
            .iter()
            .any(|a| a.path().is_ident("automatically_derived")),
        "{out}"
    );
}

#[test]
fn close_path_calls_the_function_with_the_field() {
    let out = expand(syn::parse_quote! {
        struct S { #[resource(close = sdk::shutdown)] a: A }
    });
    let close = out.method("close");
    assert_eq!(
        close.steps("__closer", "field"),
        [timed(
            "a",
            Deadline::Unbounded,
            via_user("sdk::shutdown", "self.a")
        )],
        "{out}"
    );
    // The closure takes the field, bound just before it, and not `self`, which the
    // other steps still need.
    let (_, field) = close.local("__field0");
    assert_eq!(field_of(field).as_deref(), Some("self.a"), "{out}");
    assert!(
        out.walk()
            .calls(&format!("{RT}::AsyncResource::close"))
            .is_empty(),
        "{out}"
    );
    // A foreign type closed by a function has nothing to enter.
    let enter = out.method("enter");
    assert!(enter.steps("__enter", "field").is_empty(), "{out}");
    assert_eq!(enter.method_calls("__enter", "pass").len(), 1, "{out}");
}

#[test]
fn enter_path_calls_the_function_with_the_field() {
    let out = expand(syn::parse_quote! {
        struct S { #[resource(enter = connect, close = disconnect)] a: A }
    });
    assert_eq!(
        out.method("enter").steps("__enter", "field"),
        [step("a", via_user("connect", "self.a"))],
        "{out}"
    );
    assert_eq!(
        out.method("close").steps("__closer", "field"),
        [timed(
            "a",
            Deadline::Unbounded,
            via_user("disconnect", "self.a")
        )],
        "{out}"
    );
}

#[test]
fn field_timeout_becomes_the_step_deadline() {
    let out = expand(syn::parse_quote! {
        struct S { #[resource(timeout = "2s")] a: A, #[resource(timeout = "250ms")] b: B }
    });
    assert_eq!(
        out.method("close").steps("__closer", "field"),
        [
            timed("b", Deadline::Millis(250), via_trait("close", "self.b")),
            timed("a", Deadline::Millis(2000), via_trait("close", "self.a")),
        ],
        "{out}"
    );
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
    let close = out.method("close");
    assert_eq!(
        close.label_lists("__closer", "group"),
        [vec!["c", "a"]],
        "{out}"
    );
    assert_eq!(
        close.joins(),
        [vec![
            timed("0", Deadline::Unbounded, via_trait("close", "self.c")),
            timed("1", Deadline::Unbounded, via_trait("close", "self.a")),
        ]],
        "{out}"
    );
    assert_eq!(
        close.steps("__closer", "field"),
        [timed(
            "b",
            Deadline::Unbounded,
            via_trait("close", "self.b")
        )],
        "{out}"
    );
    // Without a whole-close deadline nothing reads the plan.
    assert!(close.method_calls("__closer", "plan").is_empty(), "{out}");
    // The group stands where its last-declared field (`c`) stands: before `b`.
    let (group_at, _) = close.method_calls("__closer", "group")[0];
    assert!(group_at < close.at("__closer", "field", "b"), "{out}");

    // Under a whole-close deadline the plan lists the fields in close order, the
    // group's members side by side.
    let out = expand(syn::parse_quote! {
        #[resource(timeout = "5s")]
        struct S {
            #[resource(group = "io")] a: A,
            #[resource] b: B,
            #[resource(group = "io")] c: C,
        }
    });
    let close = out.method("close");
    assert_eq!(
        close.label_lists("__closer", "plan"),
        [vec!["c", "a", "b"]],
        "{out}"
    );
    let (plan_at, _) = close.method_calls("__closer", "plan")[0];
    let (group_at, _) = close.method_calls("__closer", "group")[0];
    assert!(plan_at < group_at, "{out}");
}

#[test]
fn name_relabels_the_field() {
    let out = expand(syn::parse_quote! {
        struct S { #[resource(name = "database")] db: A }
    });
    let close = out.method("close");
    assert_eq!(
        close.steps("__closer", "field"),
        [timed(
            "database",
            Deadline::Unbounded,
            via_trait("close", "self.db")
        )],
        "{out}"
    );
    assert_eq!(
        out.method("enter").steps("__enter", "field")[0].label,
        "database"
    );
    let out = expand(syn::parse_quote! {
        #[resource(timeout = "1s")]
        struct S { #[resource(name = "database")] db: A }
    });
    assert_eq!(
        out.method("close").label_lists("__closer", "plan"),
        [vec!["database"]],
        "{out}"
    );
    assert!(!out.walk().strings().contains(&"db"), "{out}");
}

#[test]
fn skip_is_never_touched_and_not_checked() {
    let out = expand(syn::parse_quote! {
        struct S { #[resource(skip)] a: A, #[resource] b: B }
    });
    assert!(out.walk().bindings().is_empty(), "{out}");
    assert_eq!(
        all_steps(&out)
            .into_iter()
            .map(|s| s.fut.arg)
            .collect::<Vec<_>>(),
        ["self.b", "self.b", "self.b"],
        "{out}"
    );
    assert!(!mentions_ident(out.tokens.clone(), "a"), "{out}");
    assert!(out.probe_impl().is_none(), "{out}");
}

#[test]
fn unmarked_fields_get_the_deprecation_probe_naming_them() {
    let out = expand(syn::parse_quote! {
        struct Provider { client: Client }
    });
    let probe = out.probe_impl().expect("an impl with the probes");
    assert_eq!(
        probe.self_ty.to_token_stream().to_string(),
        type_text("Provider")
    );
    let probes = impl_fn(probe, "__unmarked_resource_fields");
    let walk = Walk::new(|w| w.visit_impl_item_fn(probes));
    let marked: Vec<&ItemTrait> = walk
        .traits()
        .into_iter()
        .filter(|t| t.ident == "__Marked")
        .collect();
    let [marked] = marked[..] else {
        panic!("one `__Marked` trait in {out}");
    };
    let note = deprecation_note(marked, "field_is_a_resource_but_unmarked").expect("a note");
    assert!(
        note.starts_with("field `client` of `Provider` implements `AsyncResource`"),
        "{note}"
    );
    assert_eq!(probed_types(&walk), [type_text("Client")]);
    // Nothing to enter or close.
    assert!(resolves_at_once(out.method_fn("enter")), "{out}");
    assert!(resolves_at_once(out.method_fn("close")), "{out}");
}

#[test]
fn concurrent_closes_every_field_in_one_step() {
    let out = expand(syn::parse_quote! {
        #[resource(concurrent)]
        struct S { #[resource] a: A, #[resource] b: B }
    });
    let close = out.method("close");
    assert_eq!(
        close.label_lists("__closer", "group"),
        [vec!["b", "a"]],
        "{out}"
    );
    assert_eq!(
        close.joins(),
        [vec![
            timed("0", Deadline::Unbounded, via_trait("close", "self.b")),
            timed("1", Deadline::Unbounded, via_trait("close", "self.a")),
        ]],
        "{out}"
    );
    assert!(close.step_calls("__closer", "field").is_empty(), "{out}");
}

#[test]
fn container_timeout_bounds_the_whole_close() {
    let out = expand(syn::parse_quote! {
        #[resource(timeout = "5s")]
        struct S { #[resource] a: A }
    });
    let close = out.method("close");
    let (_, limit) = close.local("__deadline");
    assert_eq!(duration_ms(limit), 5000, "{out}");
    let within = close.calls(&format!("{RT}::__private::within_deadline"));
    let [within] = within[..] else {
        panic!("one `within_deadline` in {out}");
    };
    let [limit, Expr::Async(fields)] = &within.args.iter().collect::<Vec<_>>()[..] else {
        panic!("`within_deadline(deadline, async move {{ ... }})` in {out}");
    };
    assert_eq!(ident_of(limit).as_deref(), Some("__deadline"));
    assert!(fields.capture.is_some(), "{out}");
    // The fields close inside the deadline.
    let inside = Walk::new(|w| w.visit_expr_async(fields));
    assert_eq!(
        inside.steps("__closer", "field"),
        [timed(
            "a",
            Deadline::Unbounded,
            via_trait("close", "self.a")
        )],
        "{out}"
    );
    let outcome = close.method_calls("__closer", "deadline_outcome");
    let [(_, outcome)] = outcome[..] else {
        panic!("one `deadline_outcome` in {out}");
    };
    let args: Vec<Option<String>> = outcome.args.iter().map(ident_of).collect();
    assert_eq!(
        args,
        [Some("__deadline".to_owned()), Some("__outcome".to_owned())]
    );
}

#[test]
fn before_close_runs_before_the_fields() {
    let out = expand(syn::parse_quote! {
        #[resource(before_close = drain)]
        struct S { #[resource] a: A }
    });
    let close = out.method("close");
    assert_eq!(
        close.steps("__closer", "hook"),
        [step("before_close", via_user("Self::drain", "__this"))],
        "{out}"
    );
    let (this_at, this) = close.local("__this");
    assert!(is_self_mut(this), "{out}");
    let hook_at = close.at("__closer", "hook", "before_close");
    assert!(this_at < hook_at, "{out}");
    assert!(hook_at < close.at("__closer", "field", "a"), "{out}");
}

#[test]
fn after_enter_runs_once_every_field_is_entered() {
    let out = expand(syn::parse_quote! {
        #[resource(after_enter = warm_up)]
        struct S { #[resource] a: A }
    });
    let enter = out.method("enter");
    assert_eq!(
        enter.steps("__enter", "hook"),
        [step("after_enter", via_user("Self::warm_up", "__this"))],
        "{out}"
    );
    // Only when no field failed: in `if !__enter.failed() { ... }`.
    let guarded: Vec<usize> = enter
        .ifs()
        .into_iter()
        .filter(|(_, e)| {
            matches!(&*e.cond, Expr::Unary(u) if matches!(u.op, UnOp::Not(_))
                && matches!(peel(&u.expr), Expr::MethodCall(m)
                    if m.method == "failed" && ident_of(&m.receiver).as_deref() == Some("__enter")))
        })
        .filter(|(_, e)| {
            let then = Walk::new(|w| w.visit_block(&e.then_branch));
            then.method_calls("__enter", "hook").len() == 1
        })
        .map(|(at, _)| at)
        .collect();
    let [guard_at] = guarded[..] else {
        panic!("one `if !__enter.failed()` around the hook in {out}");
    };
    assert!(enter.at("__enter", "field", "a") < guard_at, "{out}");
}

#[test]
fn bounds_are_inferred_for_parameters_in_resource_fields() {
    let out = expand(syn::parse_quote! {
        struct S<T, U> { #[resource] a: Vec<T>, #[resource(skip)] b: U }
    });
    // No `U: AsyncResource`: `b` is skipped.
    assert_eq!(
        out.predicates(),
        [
            predicate("Vec<T>", "::resource_runtime::AsyncResource"),
            predicate("S<T, U>", "::core::marker::Send"),
        ],
        "{out}"
    );
}

#[test]
fn bound_replaces_the_inferred_predicates() {
    let out = expand(syn::parse_quote! {
        #[resource(bound = "T: Clone + Send + Sync")]
        struct S<T> { #[resource] a: Wrapper<T> }
    });
    assert_eq!(
        out.predicates(),
        [predicate("T", "Clone + Send + Sync")],
        "{out}"
    );
}

#[test]
fn crate_path_replaces_every_runtime_path() {
    let out = expand(syn::parse_quote! {
        #[resource(crate = "my::rt")]
        struct S { #[resource] a: A, #[resource(group = "g")] b: B, c: C }
    });
    assert_eq!(out.trait_path(), "my::rt::AsyncResource");
    let walk = out.walk();
    assert_eq!(
        walk.calls("my::rt::__private::Closer::new").len(),
        1,
        "{out}"
    );
    assert_eq!(
        walk.calls("my::rt::__private::Enterer::new").len(),
        1,
        "{out}"
    );
    // `a` and `b` each closed once in a rollback and once in the close, `b` in a join.
    assert_eq!(walk.step_calls("__enter", "rollback").len(), 2, "{out}");
    assert_eq!(walk.step_calls("__closer", "field").len(), 1, "{out}");
    assert_eq!(walk.step_calls("__group", "field").len(), 1, "{out}");
    assert_eq!(walk.calls("my::rt::__private::join").len(), 1, "{out}");
    assert_eq!(
        walk.calls("my::rt::__private::Probe::new").len(),
        1,
        "{out}"
    );
    assert!(
        !mentions_ident(out.tokens.clone(), "resource_runtime"),
        "{out}"
    );
}

#[test]
fn enums_close_the_active_variant_with_variant_paths() {
    let out = expand(syn::parse_quote! {
        enum E { A { #[resource] x: X }, B(#[resource] Y), C }
    });
    let close = out.method("close");
    assert_eq!(
        close.bindings(),
        [
            binding("Self::A", &[("x", "__field0")], Some("__fields")),
            binding("Self::B", &[("0", "__field0")], Some("__fields")),
        ],
        "{out}"
    );
    let labels: Vec<String> = close
        .steps("__closer", "field")
        .into_iter()
        .map(|s| s.label)
        .collect();
    assert_eq!(labels, ["A.x", "B.0"], "{out}");
}

#[test]
fn tuple_and_unit_structs() {
    let out =
        expand(syn::parse_quote! { struct T(#[resource] A, #[resource(skip)] B, #[resource] C); });
    assert!(out.walk().bindings().is_empty(), "{out}");
    assert_eq!(
        out.method("close").steps("__closer", "field"),
        [
            timed("2", Deadline::Unbounded, via_trait("close", "self.2")),
            timed("0", Deadline::Unbounded, via_trait("close", "self.0")),
        ],
        "{out}"
    );
    let out = expand(syn::parse_quote! { struct U; });
    assert!(resolves_at_once(out.method_fn("enter")), "{out}");
    assert!(resolves_at_once(out.method_fn("close")), "{out}");
    assert_eq!(out.errors(), Vec::<String>::new());
}

#[test]
fn union_is_rejected_with_a_stub_impl() {
    let out = expand(syn::parse_quote! { union U { a: u32, b: f32 } });
    let errors = out.errors();
    assert_eq!(errors.len(), 1, "{out}");
    assert!(
        errors[0].contains("cannot be derived for a union"),
        "{errors:?}"
    );
    assert_eq!(out.trait_path(), format!("{RT}::AsyncResource"));
    assert_eq!(
        out.trait_impl().self_ty.to_token_stream().to_string(),
        type_text("U")
    );
    assert!(resolves_at_once(out.method_fn("close")), "{out}");
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
    let errors = out.errors();
    assert_eq!(errors.len(), 7, "{errors:#?}");
    for message in [
        "`forever` is not a duration",
        "did you mean `concurrent`?",
        "did you mean `timeout`?",
        "`skip` cannot be combined with `close`",
        "write `close = shut` without quotes",
        "two fields are labelled `x`",
        "duplicate key `name`",
    ] {
        assert!(
            errors.iter().any(|e| e.contains(message)),
            "missing {message:?} in {errors:#?}"
        );
    }
}

#[test]
fn boxed_and_self_containing_fields_get_boxed_futures() {
    let out = expand(syn::parse_quote! {
        struct Node { #[resource(boxed)] peer: Option<Box<Peer>>, #[resource] kids: Vec<Node>, #[resource] plain: A }
    });
    assert_eq!(
        out.method("close").steps("__closer", "field"),
        [
            timed(
                "plain",
                Deadline::Unbounded,
                via_trait("close", "self.plain")
            ),
            timed(
                "kids",
                Deadline::Unbounded,
                via_trait("close", "self.kids").boxed()
            ),
            timed(
                "peer",
                Deadline::Unbounded,
                via_trait("close", "self.peer").boxed()
            ),
        ],
        "{out}"
    );
    assert_eq!(
        out.method("enter").steps("__enter", "field"),
        [
            step("peer", via_trait("enter", "self.peer").boxed()),
            step("kids", via_trait("enter", "self.kids").boxed()),
            step("plain", via_trait("enter", "self.plain")),
        ],
        "{out}"
    );
}

/// Every step of the expansion: enters, rollbacks and closes.
fn all_steps(out: &Expansion) -> Vec<Step> {
    let enter = out.method("enter");
    let close = out.method("close");
    let mut steps = enter.steps("__enter", "field");
    steps.extend(enter.steps("__enter", "rollback"));
    steps.extend(close.steps("__closer", "field"));
    steps.extend(close.joins().into_iter().flatten());
    steps
}

#[test]
fn a_field_of_another_type_with_the_same_name_gets_its_bound_and_no_box() {
    let out = expand(syn::parse_quote! {
        pub struct Client<T> { #[resource] inner: sdk::Client<T> }
    });
    assert_eq!(
        out.predicates(),
        [
            predicate("sdk::Client<T>", "::resource_runtime::AsyncResource"),
            predicate("Client<T>", "::core::marker::Send"),
        ]
    );
    // Entered, closed and rolled back through its own impl, unboxed.
    assert_eq!(
        all_steps(&out),
        [
            step("inner", via_trait("enter", "self.inner")),
            timed(
                "inner",
                Deadline::Unbounded,
                via_trait("close", "self.inner")
            ),
            timed(
                "inner",
                Deadline::Unbounded,
                via_trait("close", "self.inner")
            ),
        ],
        "{out}"
    );
    let walk = out.walk();
    assert!(
        walk.calls(&format!("{RT}::__private::boxed")).is_empty(),
        "{out}"
    );
    assert_eq!(walk.step_calls("__enter", "field").len(), 1, "{out}");
    assert_eq!(walk.step_calls("__enter", "rollback").len(), 1, "{out}");
    assert_eq!(walk.step_calls("__closer", "field").len(), 1, "{out}");

    // The same through a leading `::`, a longer path, and nested in another type.
    let out = expand(syn::parse_quote! {
        pub struct Client<T, U, V> {
            #[resource] a: ::sdk::Client<T>,
            #[resource] b: crate::vendor::Client<U>,
            #[resource] c: Vec<sdk::Client<V>>,
        }
    });
    let found = out.predicates();
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
    let steps = all_steps(&out);
    assert_eq!(steps.len(), 9, "{out}");
    assert!(steps.iter().all(|s| !s.fut.boxed), "{steps:#?}");
    assert!(
        out.walk()
            .calls(&format!("{RT}::__private::boxed"))
            .is_empty()
    );
}

#[test]
fn a_field_naming_the_type_itself_gets_no_bound_and_a_box() {
    let out = expand(syn::parse_quote! {
        struct Node<T> {
            #[resource] leaf: T,
            #[resource] kids: Vec<Node<T>>,
            #[resource] up: Option<Box<self::Node<T>>>,
            #[resource] back: Option<Box<Self>>,
        }
    });
    assert_eq!(
        out.predicates(),
        [
            predicate("T", "::resource_runtime::AsyncResource"),
            predicate("Node<T>", "::core::marker::Send"),
        ]
    );
    // Three fields, each with a boxed enter, close and rollback close.
    let steps = all_steps(&out);
    assert_eq!(steps.len(), 12, "{out}");
    for s in &steps {
        assert_eq!(s.fut.boxed, s.label != "leaf", "{s:?}");
    }
    // Through the `_boxed` steps, which box the field's own future.
    let walk = out.walk();
    assert!(
        walk.calls(&format!("{RT}::__private::boxed")).is_empty(),
        "{out}"
    );
    let boxed_steps = walk
        .nodes
        .iter()
        .filter(|n| matches!(n, Node::MethodCall(c) if c.method.to_string().ends_with("_boxed")))
        .count();
    assert_eq!(boxed_steps, 9, "{out}");

    // A user function's future for such a field is boxed around the user's call.
    let out = expand(syn::parse_quote! {
        struct Node { #[resource(close = shut)] kids: Vec<Node> }
    });
    assert_eq!(
        out.method("close").steps("__closer", "field"),
        [timed(
            "kids",
            Deadline::Unbounded,
            via_user("shut", "self.kids").boxed()
        )],
        "{out}"
    );
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
        let out = expand(input);
        let walk = out.walk();
        let macros = walk.macros();
        assert!(!macros.is_empty(), "{out}");
        for mac in macros {
            assert_eq!(path_text(&mac.path), "::core::pin::pin", "{out}");
            // Its body is walked too, so no macro hides in it.
            assert!(mac.parse_body::<Expr>().is_ok(), "{out}");
        }
        // Each join closes its members by their index in the group, in order.
        let joins = walk.joins();
        assert!(!joins.is_empty(), "{out}");
        for members in joins {
            for (index, member) in members.iter().enumerate() {
                assert_eq!(member.label, index.to_string(), "{out}");
            }
        }
    }
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
    let close = out.method("close");
    // 40 members: one join of the runtime, with one pinned future each.
    let joins = close.joins();
    let [members] = &joins[..] else {
        panic!("one join in {out}");
    };
    assert_eq!(members.len(), 40, "{out}");
    for (index, member) in members.iter().enumerate() {
        assert_eq!(member.label, index.to_string());
        assert_eq!(
            member.fut,
            via_trait("close", &format!("self.f{}", 39 - index))
        );
    }
    assert!(close.calls("::core::future::poll_fn").is_empty(), "{out}");
    assert!(close.matches().is_empty(), "{out}");

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
    let errors = out.errors();
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0].contains("closes more than 128 fields in one concurrent step"),
        "{errors:#?}"
    );
}

#[test]
fn concurrent_with_group_is_rejected() {
    let out = expand(syn::parse_quote! {
        #[resource(concurrent)]
        struct S { #[resource(group = "a")] a: A }
    });
    let errors = out.errors();
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0].contains("`group` cannot be used with `#[resource(concurrent)]`"),
        "{errors:#?}"
    );
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

// ---------------------------------------------------------------------------------
// The macro never panics: a corpus of mangled inputs.

/// A seeded generator, so a failure can be replayed.
struct Rng(fastrand::Rng);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0.usize(..n)
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
    let mut rng = Rng(fastrand::Rng::with_seed(0x0005_EED0_FA11));
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
