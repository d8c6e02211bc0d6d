//! Code generation, and nothing else. The logic of a step (deadline, panic capture,
//! span, aggregation) lives in the runtime's `__private` helpers; the expansion only
//! calls them in the right order.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::{DeriveInput, Ident, LitStr, Member, Path};

use crate::ast::{Data, Field, Input, Step};
use crate::ctxt::Ctxt;
use crate::{bound, valid};

/// The whole derive: parse, validate, generate. Never panics; an invalid input gives
/// `compile_error!`s next to a stub impl.
pub(crate) fn derive(input: &DeriveInput) -> TokenStream {
    let cx = Ctxt::new();
    let model = Input::from_syn(input, &cx);
    valid::check(&model, &cx);
    match cx.check() {
        Ok(()) => generate(&model),
        Err(errors) => {
            let mut out = errors.to_compile_error();
            out.extend(fallback(&model));
            out
        }
    }
}

fn default_krate() -> Path {
    syn::parse_quote!(::resource_runtime)
}

fn krate(input: &Input<'_>) -> Path {
    input.attrs.krate.clone().unwrap_or_else(default_krate)
}

/// A stub impl so that one attribute error is not followed by a cascade of "trait not
/// implemented" errors where the type is used.
fn fallback(input: &Input<'_>) -> TokenStream {
    let krate = krate(input);
    let ident = input.ident;
    let (impl_generics, ty_generics, _) = input.generics.split_for_impl();
    // The trait requires `Send`; without the bound a generic type would draw a second,
    // unrelated error.
    let mut where_clause =
        input
            .generics
            .where_clause
            .clone()
            .unwrap_or_else(|| syn::WhereClause {
                where_token: Default::default(),
                predicates: Default::default(),
            });
    if input.generics.type_params().next().is_some() {
        where_clause
            .predicates
            .push(syn::parse_quote!(#ident #ty_generics: ::core::marker::Send));
    }
    quote! {
        const _: () = {
            #[automatically_derived]
            impl #impl_generics #krate::AsyncResource for #ident #ty_generics #where_clause {
                fn close(&mut self) -> impl ::core::future::Future<
                    Output = ::core::result::Result<(), #krate::ResourceError>,
                > + ::core::marker::Send {
                    async { ::core::result::Result::Ok(()) }
                }
            }
        };
    }
}

/// One of the expansion's own locals. Mixed-site hygiene: no user name can reach it,
/// and it shadows no user name, so `close = __field0` or a user's `__closer` function
/// still mean the user's items.
fn local(name: &str) -> Ident {
    Ident::new(name, Span::mixed_site())
}

/// The label of the block a non-matching variant breaks out of.
fn fields_label() -> syn::Lifetime {
    syn::Lifetime {
        apostrophe: Span::mixed_site(),
        ident: local("__fields"),
    }
}

/// One field as the expansion sees it: how a step reaches it, how it is labelled.
struct Slot<'f, 'a> {
    field: &'f Field<'a>,
    /// In a variant, the local the field is bound to in a destructuring pattern.
    binding: Ident,
    /// In a struct, what the binding is bound to for the field's step alone:
    /// `&mut self.member`. `None` in a variant, whose destructuring binds it once.
    access: Option<TokenStream>,
    /// The label in error paths, `Variant.field` in an enum.
    label: LitStr,
    /// The field's type contains the type itself.
    recursive: bool,
}

fn slots<'f, 'a>(
    ident: &Ident,
    variant: Option<&Ident>,
    fields: &'f [Field<'a>],
) -> Vec<Slot<'f, 'a>> {
    fields
        .iter()
        .enumerate()
        .filter(|(_, f)| f.is_resource())
        .map(|(i, field)| {
            // Spanned at the field's type, so a type error in the generated call points
            // at the field.
            let binding = Ident::new(
                &format!("__field{i}"),
                field.ty_span().resolved_at(Span::mixed_site()),
            );
            // `self` at the derive: a value captured through it is reported there.
            let member = &field.member;
            let access = variant.is_none().then(|| quote!(&mut self.#member));
            Slot {
                field,
                binding,
                access,
                label: LitStr::new(&field_label(variant, field), field.span()),
                recursive: field.attrs.boxed.is_some() || bound::mentions_self(field.ty, ident),
            }
        })
        .collect()
}

fn field_label(variant: Option<&Ident>, field: &Field<'_>) -> String {
    match variant {
        Some(v) => format!("{}.{}", syn::ext::IdentExt::unraw(v), field.label()),
        None => field.label(),
    }
}

/// `let Self { a: __field0, 1: __field1, .. } = &mut *self;`, or for a variant a
/// `let ... else` that leaves the variant's labelled block when another one is active.
fn bind(variant: Option<&Ident>, slots: &[Slot<'_, '_>]) -> TokenStream {
    let l_fields = fields_label();
    // A struct's steps reach their fields through `self` (see `Slot::access`).
    let Some(v) = variant else {
        return quote!();
    };
    let members = slots.iter().map(|s| {
        let member: &Member = &s.field.member;
        let binding = &s.binding;
        quote!(#member: #binding)
    });
    quote!(let Self::#v { #(#members,)* .. } = &mut *self else { break #l_fields };)
}

/// A field's own deadline: a type of its own only when it has one, so that the steps
/// of untimed fields carry no timer (fields of one type share at most two
/// instantiations of the runtime's step).
fn deadline(krate: &Path, millis: Option<u64>) -> TokenStream {
    match millis {
        Some(ms) => {
            quote!(#krate::__private::Timed::after(::core::time::Duration::from_millis(#ms)))
        }
        None => quote!(#krate::__private::NoDeadline),
    }
}

/// A call to a user function: the future goes through `UserStep`, whose message is
/// the compile error for a function of the wrong shape, spanned at the path alone.
fn user_call(krate: &Path, path: &Path, arg: TokenStream) -> TokenStream {
    let span = path
        .segments
        .last()
        .map_or_else(Span::call_site, |s| s.ident.span());
    // Call-site hygiene here, unlike the other locals: rustc reports a mixed-site span
    // at the derive, and these two must point at the user's path. They are bound after
    // the path is resolved, so they cannot capture it.
    let fut = Ident::new("__user_future", span);
    let call = Ident::new("__user_call", span);
    quote_spanned! {span=>
        {
            #[allow(unused_imports)]
            use #krate::__private::{ViaCheck as _, ViaFuture as _};
            let #fut = #path(#arg);
            let #call = #krate::__private::UserCall(#fut);
            #call.user_step()
        }
    }
}

/// A field's future, boxed when the field's type contains the type itself, since the
/// generated future would otherwise contain itself.
fn maybe_boxed(krate: &Path, slot: &Slot<'_, '_>, fut: TokenStream) -> TokenStream {
    if slot.recursive {
        quote!(#krate::__private::boxed(#fut))
    } else {
        fut
    }
}

/// The call of a runtime step helper for one field: through the field's own impl,
/// `receiver.method(args.., __private::resource(field))`, generic over the field's type
/// alone so that fields of one type share every instantiation (`method_boxed` when the
/// future must be boxed), or, for a user function, `method_fn(args.., |field, slot|
/// slot.put(future), field)`: a closure without captures, seen as a function pointer,
/// so that the step is generic over the field's and the future's types alone and shared
/// as well. The closure puts the future in the step's slot itself: returned through the
/// pointer, it would be copied once more after the call.
fn step_call(
    krate: &Path,
    slot: &Slot<'_, '_>,
    custom: Option<&Path>,
    receiver: &Ident,
    method: &str,
    args: TokenStream,
) -> TokenStream {
    let binding = &slot.binding;
    let call = match custom {
        None => {
            let method = if slot.recursive {
                format_ident!("{method}_boxed")
            } else {
                format_ident!("{method}")
            };
            quote!(#receiver.#method(#args #krate::__private::resource(#binding)))
        }
        Some(path) => {
            let fut = maybe_boxed(krate, slot, user_call(krate, path, quote!(#binding)));
            let method = format_ident!("{method}_fn");
            let put = Ident::new("__step_slot", Span::mixed_site());
            quote!(#receiver.#method(#args |#binding, #put| #put.put(#fut), #binding))
        }
    };
    match &slot.access {
        None => call,
        // A struct's field is bound for its step alone, so that the close's future
        // holds no reference a field across its awaits, and a closure takes the field,
        // not `self`, which the other steps use. The binding is spanned at the field's
        // type, where a field that is not a resource is reported.
        Some(access) => quote!({ let #binding = #access; #call }),
    }
}

/// A field's enter step, or `None` when it has nothing to enter.
fn enter_call(
    krate: &Path,
    slot: &Slot<'_, '_>,
    receiver: &Ident,
    args: TokenStream,
) -> Option<TokenStream> {
    let custom = match slot.field.enter_step() {
        Step::Trait => None,
        Step::Custom(path) => Some(path),
        Step::Nothing => return None,
    };
    Some(step_call(krate, slot, custom, receiver, "field", args))
}

/// A field's close step through `receiver.method`.
fn close_call(
    krate: &Path,
    slot: &Slot<'_, '_>,
    receiver: &Ident,
    method: &str,
    args: TokenStream,
) -> TokenStream {
    let custom = match slot.field.close_step() {
        Step::Custom(path) => Some(path),
        Step::Trait | Step::Nothing => None,
    };
    step_call(krate, slot, custom, receiver, method, args)
}

/// A hook method's future, spanned at the method name.
fn hook_call(krate: &Path, hook: &Ident, receiver: TokenStream) -> TokenStream {
    let path: Path = syn::parse_quote!(Self::#hook);
    let path = Path {
        leading_colon: None,
        segments: path
            .segments
            .into_iter()
            .map(|mut seg| {
                if seg.ident == "Self" {
                    seg.ident.set_span(hook.span());
                }
                seg
            })
            .collect(),
    };
    user_call(krate, &path, receiver)
}

/// The enter of one struct or variant: fields in declaration order, stopping at the
/// first failure.
fn enter_fields(krate: &Path, variant: Option<&Ident>, slots: &[Slot<'_, '_>]) -> TokenStream {
    let l_enter = local("__enter");
    if slots.is_empty() {
        return quote!();
    }
    let bind = bind(variant, slots);
    let steps = slots.iter().map(|slot| {
        let label = &slot.label;
        match enter_call(krate, slot, &l_enter, quote!(#label,)) {
            Some(call) => quote!(#call.await),
            None => quote!(#l_enter.pass()),
        }
    });
    quote! {
        #bind
        let _ = #(#steps)&&*;
    }
}

/// The rollback of one struct or variant: entered fields closed in reverse.
fn rollback_fields(krate: &Path, variant: Option<&Ident>, slots: &[Slot<'_, '_>]) -> TokenStream {
    let l_enter = local("__enter");
    if slots.is_empty() {
        return quote!();
    }
    let bind = bind(variant, slots);
    let steps = slots.iter().enumerate().rev().map(|(index, slot)| {
        let label = &slot.label;
        let deadline = deadline(krate, slot.field.attrs.timeout.map(|t| t.millis));
        let call = close_call(
            krate,
            slot,
            &l_enter,
            "rollback",
            quote!(#label, #deadline,),
        );
        quote! {
            if #l_enter.needs_rollback(#index) {
                #call.await;
            }
        }
    });
    quote! {
        #bind
        #(#steps)*
    }
}

/// The most fields one concurrent step closes (the runtime tracks them in a `u128`).
pub(crate) const MAX_GROUP: usize = 128;

/// One step of a close: a field alone, or the fields of a group closed concurrently.
enum CloseStep<'s, 'f, 'a> {
    Single(&'s Slot<'f, 'a>),
    Group(Vec<&'s Slot<'f, 'a>>),
}

/// The close steps of one struct or variant, in reverse declaration order; the fields
/// of a group (or all of them under `concurrent`) make one step, placed where its
/// last-declared field stands.
fn close_order<'s, 'f, 'a>(
    concurrent: bool,
    slots: &'s [Slot<'f, 'a>],
) -> Vec<CloseStep<'s, 'f, 'a>> {
    let group_of = |slot: &Slot<'_, '_>| -> Option<String> {
        if concurrent {
            Some(String::new())
        } else {
            slot.field.attrs.group.as_ref().map(LitStr::value)
        }
    };
    let mut done_groups: Vec<String> = Vec::new();
    let mut steps = Vec::new();
    for slot in slots.iter().rev() {
        match group_of(slot) {
            None => steps.push(CloseStep::Single(slot)),
            Some(group) if done_groups.contains(&group) => {}
            Some(group) => {
                let members = slots
                    .iter()
                    .rev()
                    .filter(|s| group_of(s).as_deref() == Some(group.as_str()))
                    .collect();
                steps.push(CloseStep::Group(members));
                done_groups.push(group);
            }
        }
    }
    steps
}

/// Tells the closer which fields the close will close, in order, so that a whole-close
/// deadline can name the ones it never reached, and the hook it cut: emitted even with
/// no field to close, since the closer tracks its steps only once it has a plan.
fn close_plan(concurrent: bool, variant: Option<&Ident>, slots: &[Slot<'_, '_>]) -> TokenStream {
    let l_fields = fields_label();
    let l_closer = local("__closer");
    let labels = close_order(concurrent, slots)
        .into_iter()
        .flat_map(|step| match step {
            CloseStep::Single(slot) => vec![&slot.label],
            CloseStep::Group(members) => members.into_iter().map(|s| &s.label).collect(),
        });
    let check = match variant {
        Some(v) => quote!(let Self::#v { .. } = &*self else { break #l_fields };),
        None => quote!(),
    };
    quote! {
        #check
        #l_closer.plan(&[#(#labels),*]);
    }
}

/// Awaits `futures` (of output `()`) concurrently through the runtime's `join`, one
/// function for every group: each future is pinned in a temporary that lives to the end
/// of the statement, and seen as a `dyn Future`.
fn join(krate: &Path, futures: impl Iterator<Item = TokenStream>) -> TokenStream {
    let pins = futures.map(|fut| quote!(::core::pin::pin!(#fut)));
    quote! {
        #krate::__private::join(&mut [#(#pins),*]).await;
    }
}

/// The close of one struct or variant.
fn close_fields(
    krate: &Path,
    concurrent: bool,
    variant: Option<&Ident>,
    slots: &[Slot<'_, '_>],
) -> TokenStream {
    let l_closer = local("__closer");
    let l_group = local("__group");
    if slots.is_empty() {
        return quote!();
    }
    let bind = bind(variant, slots);
    let steps = close_order(concurrent, slots)
        .into_iter()
        .map(|step| match step {
            CloseStep::Single(slot) => {
                let label = &slot.label;
                let deadline = deadline(krate, slot.field.attrs.timeout.map(|t| t.millis));
                let call = close_call(krate, slot, &l_closer, "field", quote!(#label, #deadline,));
                quote!(#call.await;)
            }
            CloseStep::Group(members) => {
                let labels = members.iter().map(|s| &s.label);
                let join = join(
                    krate,
                    members.iter().enumerate().map(|(index, s)| {
                        let deadline = deadline(krate, s.field.attrs.timeout.map(|t| t.millis));
                        close_call(krate, s, &l_group, "field", quote!(#index, #deadline,))
                    }),
                );
                quote! {
                    {
                        let #l_group = #l_closer.group(&[#(#labels),*]);
                        #join
                    }
                    #l_closer.end_group();
                }
            }
        });
    quote! {
        #bind
        #(#steps)*
    }
}

/// Runs `per_variant` for the struct or for each variant, inside a labelled block the
/// `let ... else` of a non-matching variant breaks out of.
fn each_variant(
    input: &Input<'_>,
    mut per_variant: impl FnMut(Option<&Ident>, &[Slot<'_, '_>]) -> TokenStream,
) -> TokenStream {
    let l_fields = fields_label();
    let bodies: Vec<TokenStream> = match &input.data {
        Data::Struct(fields) => vec![per_variant(None, &slots(input.ident, None, fields))],
        Data::Enum(variants) => variants
            .iter()
            .map(|v| per_variant(Some(v.ident), &slots(input.ident, Some(v.ident), &v.fields)))
            .collect(),
        Data::Union(_) => Vec::new(),
    };
    let bodies = bodies.into_iter().filter(|b| !b.is_empty());
    quote! { #( #l_fields: { #bodies } )* }
}

fn has_resource_fields(input: &Input<'_>) -> bool {
    input.all_fields().any(Field::is_resource)
}

/// Per unmarked field, a call that resolves to a `#[deprecated]` method only when the
/// field's type implements `AsyncResource` (autoref specialisation), so the warning
/// names the field. It sits in an inherent impl of the type, where `Self` and the
/// type's implied bounds are in scope.
fn unmarked_check(input: &Input<'_>, krate: &Path) -> TokenStream {
    let ident = input.ident;
    let fields: Vec<(Option<&Ident>, &Field<'_>)> = match &input.data {
        Data::Struct(fields) => fields.iter().map(|f| (None, f)).collect(),
        Data::Enum(variants) => variants
            .iter()
            .flat_map(|v| v.fields.iter().map(move |f| (Some(v.ident), f)))
            .collect(),
        Data::Union(_) => Vec::new(),
    };
    let checks: Vec<TokenStream> = fields
        .into_iter()
        .filter(|(_, f)| f.is_unmarked())
        .map(|(variant, field)| {
            let ty = field.ty;
            let note = format!(
                "field `{}` of `{ident}` implements `AsyncResource` but has no `#[resource]` attribute, so it is never entered or closed: mark it `#[resource]` to close it with `{ident}`, or `#[resource(skip)]` if it is closed elsewhere",
                field_label(variant, field)
            );
            let method = Ident::new("field_is_a_resource_but_unmarked", field.span());
            quote! {
                {
                    trait __Marked {
                        #[deprecated(note = #note)]
                        fn #method(&self) {}
                    }
                    impl<__T: #krate::AsyncResource> __Marked for #krate::__private::Probe<__T> {}
                    trait __Unmarked {
                        fn #method(&self) {}
                    }
                    impl<__T: ?::core::marker::Sized> __Unmarked for &#krate::__private::Probe<__T> {}
                    (&#krate::__private::Probe::<#ty>::new()).#method();
                }
            }
        })
        .collect();
    if checks.is_empty() {
        return quote!();
    }
    let (impl_generics, ty_generics, _) = input.generics.split_for_impl();
    let where_clause = bound::original(input.generics);
    quote! {
        impl #impl_generics #ident #ty_generics #where_clause {
            #[doc(hidden)]
            #[allow(dead_code, non_snake_case, clippy::all)]
            fn __unmarked_resource_fields() {
                #(#checks)*
            }
        }
    }
}

/// The impl for a valid input.
pub(crate) fn generate(input: &Input<'_>) -> TokenStream {
    let krate = krate(input);
    let ident = input.ident;
    let type_name = ident.to_string();
    let (impl_generics, ty_generics, _) = input.generics.split_for_impl();
    let where_clause = bound::where_clause(input, &krate);
    let attrs = &input.attrs;
    let concurrent = attrs.concurrent.is_some();
    let active = has_resource_fields(input);

    let l_enter = local("__enter");
    let l_closer = local("__closer");
    let l_this = local("__this");
    let enter_body = if active || attrs.after_enter.is_some() {
        let enter = each_variant(input, |v, s| enter_fields(&krate, v, s));
        let rollback = each_variant(input, |v, s| rollback_fields(&krate, v, s));
        let after_enter = attrs.after_enter.as_ref().map(|hook| {
            let call = hook_call(&krate, hook, quote!(#l_this));
            quote! {
                if !#l_enter.failed() {
                    let #l_this = &mut *self;
                    #l_enter.hook("after_enter", move || #call).await;
                }
            }
        });
        quote! {
            let mut #l_enter = #krate::__private::Enterer::new(#type_name);
            #enter
            #after_enter
            if #l_enter.failed() {
                #rollback
            }
            #l_enter.finish()
        }
    } else {
        quote!(::core::result::Result::Ok(()))
    };

    let close_body = if active || attrs.before_close.is_some() {
        let before_close = attrs.before_close.as_ref().map(|hook| {
            let call = hook_call(&krate, hook, quote!(#l_this));
            quote! {
                {
                    let #l_this = &mut *self;
                    #l_closer.hook("before_close", move || #call).await;
                }
            }
        });
        let fields = each_variant(input, |v, s| close_fields(&krate, concurrent, v, s));
        let run = match attrs.timeout {
            None => quote! {
                {
                    let #l_closer = &mut #l_closer;
                    #before_close
                    #fields
                }
            },
            Some(timeout) => {
                // Only a whole-close deadline reads the plan: it names the fields it
                // never reached.
                let plan = each_variant(input, |v, s| close_plan(concurrent, v, s));
                let ms = timeout.millis;
                let l_deadline = local("__deadline");
                let l_outcome = local("__outcome");
                quote! {
                    let #l_deadline = ::core::time::Duration::from_millis(#ms);
                    let #l_outcome = {
                        let #l_closer = &mut #l_closer;
                        #plan
                        #krate::__private::within_deadline(#l_deadline, async move {
                            #before_close
                            #fields
                        })
                        .await
                    };
                    #l_closer.deadline_outcome(#l_deadline, #l_outcome);
                }
            }
        };
        quote! {
            let mut #l_closer = #krate::__private::Closer::new(#type_name);
            #run
            #l_closer.finish()
        }
    } else {
        quote!(::core::result::Result::Ok(()))
    };

    let unmarked = unmarked_check(input, &krate);

    quote! {
        #[allow(non_upper_case_globals, unused_qualifications, unused_labels, clippy::all)]
        const _: () = {
            #[automatically_derived]
            impl #impl_generics #krate::AsyncResource for #ident #ty_generics #where_clause {
                fn enter(&mut self) -> impl ::core::future::Future<
                    Output = ::core::result::Result<(), #krate::ResourceError>,
                > + ::core::marker::Send {
                    async move { #enter_body }
                }

                fn close(&mut self) -> impl ::core::future::Future<
                    Output = ::core::result::Result<(), #krate::ResourceError>,
                > + ::core::marker::Send {
                    async move { #close_body }
                }
            }

            #unmarked
        };
    }
}
