//! Rules that span several attributes or fields.

use crate::ast::{Data, Field, Input};
use crate::ctxt::Ctxt;
use crate::expand::MAX_GROUP;

pub(crate) fn check(input: &Input<'_>, cx: &Ctxt) {
    match &input.data {
        Data::Union(span) => cx.error_at(
            *span,
            "`AsyncResource` cannot be derived for a union: a union does not know which of its fields holds a value\nuse an enum, whose active variant's fields are closed, or implement `AsyncResource` by hand",
        ),
        Data::Struct(fields) => check_fields(input, fields.iter(), cx),
        Data::Enum(variants) => {
            for variant in variants {
                check_fields(input, variant.fields.iter(), cx);
            }
        }
    }
    if let Some(span) = input.packed
        && input.all_fields().any(|f| f.is_resource())
    {
        cx.error_at(
            span,
            "`AsyncResource` cannot be derived for a `#[repr(packed)]` type: its fields may be unaligned, and closing a field needs a `&mut` to it\nremove `packed`, or implement `AsyncResource` by hand",
        );
    }
    for field in input.all_fields() {
        check_field(field, cx);
    }
}

fn check_field(field: &Field<'_>, cx: &Ctxt) {
    let attrs = &field.attrs;
    if attrs.skip.is_some() {
        for (key, span) in attrs.keys.iter().filter(|(k, _)| *k != "skip") {
            cx.error_at(
                *span,
                format!(
                    "`skip` cannot be combined with `{key}`: a skipped field is never entered or closed\nremove `skip` to close the field, or remove `{key}`"
                ),
            );
        }
    }
    if let Some(group) = &attrs.group
        && group.value().trim().is_empty()
    {
        cx.error_spanned_by(group, "a group needs a name, like `group = \"io\"`");
    }
    if let Some(name) = &attrs.name {
        let value = name.value();
        if value.is_empty() || value.contains('.') || value.chars().any(char::is_whitespace) {
            cx.error_spanned_by(
                name,
                format!("`name = \"{value}\"` cannot label a field: use a non-empty name without dots or spaces, since labels are joined with dots into paths"),
            );
        }
    }
}

fn check_fields<'f, 'a: 'f>(
    input: &Input<'a>,
    fields: impl Iterator<Item = &'f Field<'a>>,
    cx: &Ctxt,
) {
    let fields: Vec<&Field<'a>> = fields.filter(|f| f.is_resource()).collect();
    let mut groups: Vec<(String, usize)> = Vec::new();
    for field in &fields {
        let name = match (&input.attrs.concurrent, &field.attrs.group) {
            (Some(_), _) => "`concurrent`".to_owned(),
            (None, Some(group)) => format!("group `{}`", group.value()),
            (None, None) => continue,
        };
        match groups.iter_mut().find(|(n, _)| *n == name) {
            Some((_, count)) => {
                *count += 1;
                if *count == MAX_GROUP + 1 {
                    cx.error_at(
                        field.span(),
                        format!("{name} closes more than {MAX_GROUP} fields in one concurrent step: split them into several groups"),
                    );
                }
            }
            None => groups.push((name, 1)),
        }
    }
    let mut labels: Vec<String> = Vec::new();
    for field in fields {
        if let (Some(_), Some(group)) = (input.attrs.concurrent, &field.attrs.group) {
            cx.error_spanned_by(
                group,
                "`group` cannot be used with `#[resource(concurrent)]`, where every field already closes in one concurrent step\nremove `group` here, or `concurrent` on the container",
            );
        }
        let label = field.label();
        if labels.contains(&label) {
            cx.error_at(
                field.span(),
                format!("two fields are labelled `{label}`, so their failures could not be told apart: give one a different `name`"),
            );
        } else {
            labels.push(label);
        }
    }
}
