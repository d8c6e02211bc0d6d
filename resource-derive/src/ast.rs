//! A borrowed model of the derive input, with the attributes parsed.

use proc_macro2::Span;
use syn::spanned::Spanned;
use syn::{DeriveInput, Generics, Ident, Member, Path, Type};

use crate::attr::{self, ContainerAttrs, FieldAttrs};
use crate::ctxt::Ctxt;

pub(crate) struct Input<'a> {
    /// The `packed` of a `#[repr(packed)]`, whose fields cannot be borrowed.
    pub(crate) packed: Option<Span>,
    pub(crate) ident: &'a Ident,
    pub(crate) generics: &'a Generics,
    pub(crate) attrs: ContainerAttrs,
    pub(crate) data: Data<'a>,
}

pub(crate) enum Data<'a> {
    Struct(Vec<Field<'a>>),
    Enum(Vec<Variant<'a>>),
    /// The span of the `union` keyword.
    Union(Span),
}

pub(crate) struct Variant<'a> {
    pub(crate) ident: &'a Ident,
    pub(crate) fields: Vec<Field<'a>>,
}

pub(crate) struct Field<'a> {
    pub(crate) member: Member,
    pub(crate) ty: &'a Type,
    pub(crate) attrs: FieldAttrs,
    pub(crate) original: &'a syn::Field,
}

/// How a field is entered or closed.
pub(crate) enum Step<'a> {
    /// Through its `AsyncResource` impl.
    Trait,
    /// Through the user's async function.
    Custom(&'a Path),
    /// Not at all.
    Nothing,
}

impl<'a> Input<'a> {
    pub(crate) fn from_syn(input: &'a DeriveInput, cx: &Ctxt) -> Input<'a> {
        let attrs = attr::container_attrs(cx, &input.attrs);
        let data = match &input.data {
            syn::Data::Struct(data) => Data::Struct(fields(cx, &data.fields)),
            syn::Data::Enum(data) => Data::Enum(
                data.variants
                    .iter()
                    .map(|v| {
                        attr::reject(
                            cx,
                            &v.attrs,
                            "`#[resource]` goes on the fields of a variant, not on the variant itself",
                        );
                        Variant {
                            ident: &v.ident,
                            fields: fields(cx, &v.fields),
                        }
                    })
                    .collect(),
            ),
            syn::Data::Union(data) => {
                for field in &data.fields.named {
                    attr::reject(
                        cx,
                        &field.attrs,
                        "`#[resource]` on a union field: a union does not know which of its fields holds a value, so none can be closed",
                    );
                }
                Data::Union(data.union_token.span())
            }
        };
        Input {
            packed: packed(&input.attrs),
            ident: &input.ident,
            generics: &input.generics,
            attrs,
            data,
        }
    }

    /// Every field of every variant.
    pub(crate) fn all_fields(&self) -> Box<dyn Iterator<Item = &Field<'a>> + '_> {
        match &self.data {
            Data::Struct(fields) => Box::new(fields.iter()),
            Data::Enum(variants) => Box::new(variants.iter().flat_map(|v| v.fields.iter())),
            Data::Union(_) => Box::new(std::iter::empty()),
        }
    }
}

fn packed(attrs: &[syn::Attribute]) -> Option<Span> {
    let mut found = None;
    for attr in attrs.iter().filter(|a| a.path().is_ident("repr")) {
        // Other repr arguments (`C`, `align(8)`) are none of this derive's business.
        let _ = attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("packed") {
                found.get_or_insert(meta.path.span());
            }
            if meta.input.peek(syn::token::Paren) {
                let _content;
                syn::parenthesized!(_content in meta.input);
            }
            Ok(())
        });
    }
    found
}

fn fields<'a>(cx: &Ctxt, fields: &'a syn::Fields) -> Vec<Field<'a>> {
    fields
        .iter()
        .enumerate()
        .map(|(i, field)| Field {
            member: match &field.ident {
                Some(ident) => Member::Named(ident.clone()),
                None => Member::Unnamed(syn::Index {
                    index: u32::try_from(i).unwrap_or(u32::MAX),
                    span: field.ty.span(),
                }),
            },
            ty: &field.ty,
            attrs: attr::field_attrs(cx, &field.attrs),
            original: field,
        })
        .collect()
}

impl Field<'_> {
    /// Entered and closed with the container.
    pub(crate) fn is_resource(&self) -> bool {
        self.attrs.marker.is_some() && self.attrs.skip.is_none()
    }

    /// Carries no `#[resource...]` attribute at all.
    pub(crate) fn is_unmarked(&self) -> bool {
        self.attrs.marker.is_none()
    }

    /// The label in paths and spans: `name = "..."`, else the field name or index.
    pub(crate) fn label(&self) -> String {
        match (&self.attrs.name, &self.member) {
            (Some(name), _) => name.value(),
            (None, Member::Named(ident)) => {
                let s = ident.to_string();
                s.strip_prefix("r#").map(str::to_owned).unwrap_or(s)
            }
            (None, Member::Unnamed(index)) => index.index.to_string(),
        }
    }

    /// A span on the field for generated code and messages.
    pub(crate) fn span(&self) -> Span {
        match &self.original.ident {
            Some(ident) => ident.span(),
            None => self.ty.span(),
        }
    }

    /// The span of the field's type.
    pub(crate) fn ty_span(&self) -> Span {
        self.ty.span()
    }

    pub(crate) fn enter_step(&self) -> Step<'_> {
        match &self.attrs.enter {
            Some(path) => Step::Custom(path),
            // A foreign type closed by a function has nothing to enter.
            None if self.attrs.close.is_some() => Step::Nothing,
            None => Step::Trait,
        }
    }

    pub(crate) fn close_step(&self) -> Step<'_> {
        match &self.attrs.close {
            Some(path) => Step::Custom(path),
            None => Step::Trait,
        }
    }

    /// Needs `FieldType: AsyncResource`.
    pub(crate) fn uses_trait(&self) -> bool {
        self.is_resource()
            && (matches!(self.enter_step(), Step::Trait)
                || matches!(self.close_step(), Step::Trait))
    }
}
