//! Where-clause inference: like serde, a type parameter used in a resource field makes
//! that field's type `AsyncResource`; `#[resource(bound = "...")]` replaces the
//! inference.

use proc_macro2::{Span, TokenStream, TokenTree};
use quote::{ToTokens, quote};
use syn::{Generics, Ident, Type, WhereClause, WherePredicate};

use crate::ast::Input;

/// Whether `tokens` mention one of `params` as an identifier.
fn mentions(tokens: TokenStream, params: &[&Ident]) -> bool {
    tokens.into_iter().any(|tt| match tt {
        TokenTree::Ident(ident) => params.iter().any(|p| **p == ident),
        TokenTree::Group(group) => mentions(group.stream(), params),
        _ => false,
    })
}

/// Whether the type `ty` mentions one of `idents`.
pub(crate) fn mentions_any(ty: &Type, idents: &[&Ident]) -> bool {
    mentions(ty.to_token_stream(), idents)
}

/// The type that must implement `AsyncResource` for a field of type `ty`: for a
/// `&mut T` field, `T` itself, so no lifetime of the borrow enters the bound.
fn resource_type(ty: &Type) -> &Type {
    match ty {
        Type::Reference(r) if r.mutability.is_some() => resource_type(&r.elem),
        Type::Paren(p) => resource_type(&p.elem),
        Type::Group(g) => resource_type(&g.elem),
        other => other,
    }
}

/// The where-clause of the generated impl.
pub(crate) fn where_clause(input: &Input<'_>, krate: &syn::Path) -> Option<WhereClause> {
    let generics: &Generics = input.generics;
    let mut clause = generics
        .where_clause
        .clone()
        .unwrap_or_else(|| WhereClause {
            where_token: Default::default(),
            predicates: Default::default(),
        });
    let params: Vec<&Ident> = generics.type_params().map(|p| &p.ident).collect();
    match &input.attrs.bound {
        Some(bound) => clause.predicates.extend(bound.iter().cloned()),
        None if !params.is_empty() => {
            let mut seen: Vec<String> = Vec::new();
            let own: [&Ident; 2] = [input.ident, &Ident::new("Self", Span::call_site())];
            for field in input.all_fields().filter(|f| f.is_resource()) {
                // A type that contains itself would make the bound circular; its impl is
                // the one being written.
                if !mentions(field.ty.to_token_stream(), &params) || mentions_any(field.ty, &own) {
                    continue;
                }
                let ty = resource_type(field.ty);
                let key = ty.to_token_stream().to_string();
                if seen.contains(&key) {
                    continue;
                }
                seen.push(key);
                let predicate: WherePredicate = if field.uses_trait() {
                    syn::parse_quote!(#ty: #krate::AsyncResource)
                } else {
                    // Closed by a user function: the close future holds `&mut FieldType`
                    // across its awaits, so the field must be `Send`.
                    syn::parse_quote!(#ty: ::core::marker::Send)
                };
                clause.predicates.push(predicate);
            }
            // The trait requires `Send`; a parameter held by a skipped field needs it too.
            let ident = input.ident;
            let (_, ty_generics, _) = generics.split_for_impl();
            let send: WherePredicate = syn::parse_quote!(#ident #ty_generics: ::core::marker::Send);
            clause.predicates.push(send);
        }
        None => {}
    }
    if clause.predicates.is_empty() {
        None
    } else {
        Some(clause)
    }
}

/// The where-clause of the original type, for code that must not add bounds.
pub(crate) fn original(generics: &Generics) -> TokenStream {
    let clause = &generics.where_clause;
    quote!(#clause)
}
