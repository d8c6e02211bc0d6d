//! Where-clause inference: like serde, a type parameter used in a resource field makes
//! that field's type `AsyncResource`; `#[resource(bound = "...")]` replaces the
//! inference.

use proc_macro2::{Spacing, TokenStream, TokenTree};
use quote::{ToTokens, quote};
use syn::ext::IdentExt;
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

/// Whether the type `ty` refers to the type being derived, named `ident`: through
/// `Self`, or through a path whose first segment is `ident` (`Node`, `Node<T>`,
/// `Vec<Node>`), optionally written `self::Node`. A path that reaches `ident` through
/// other segments (`sdk::Node`, `::sdk::Node`, `crate::x::Node`) names another type.
pub(crate) fn mentions_self(ty: &Type, ident: &Ident) -> bool {
    names_self(ty.to_token_stream(), &ident.unraw())
}

fn names_self(tokens: TokenStream, own: &Ident) -> bool {
    let tokens: Vec<TokenTree> = tokens.into_iter().collect();
    tokens.iter().enumerate().any(|(i, tt)| match tt {
        TokenTree::Group(group) => names_self(group.stream(), own),
        TokenTree::Ident(ident) if ident == "Self" => true,
        TokenTree::Ident(ident) if ident.unraw() == *own => {
            starts_path(&tokens[..i]) && !names_associated_item(&tokens[i + 1..])
        }
        _ => false,
    })
}

/// Whether an identifier preceded by `before` is the first segment of a path: not
/// after `::` (except in `self::`), and not the name of a lifetime.
fn starts_path(before: &[TokenTree]) -> bool {
    match before {
        [.., TokenTree::Punct(quote)] if quote.as_char() == '\'' => false,
        [rest @ .., TokenTree::Punct(a), TokenTree::Punct(b)]
            if a.as_char() == ':' && a.spacing() == Spacing::Joint && b.as_char() == ':' =>
        {
            matches!(rest, [.., TokenTree::Ident(s)] if s == "self")
                && starts_path(&rest[..rest.len() - 1])
        }
        _ => true,
    }
}

/// Whether an identifier followed by `after` names an associated item in a binding or
/// a constraint (`Item = T`, `Item: Send`), not a type.
fn names_associated_item(after: &[TokenTree]) -> bool {
    matches!(
        after.first(),
        Some(TokenTree::Punct(p))
            if (p.as_char() == '=' || p.as_char() == ':') && p.spacing() == Spacing::Alone
    )
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
            for field in input.all_fields().filter(|f| f.is_resource()) {
                // A type that contains itself would make the bound circular; its impl is
                // the one being written.
                if !mentions(field.ty.to_token_stream(), &params)
                    || mentions_self(field.ty, input.ident)
                {
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
